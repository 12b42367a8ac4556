//! AdamW, the warm-up + cosine learning-rate schedule and global gradient-norm clipping.
//!
//! AdamW follows `torch.optim.AdamW` (PyTorch `torch/optim/adamw.py`, single-tensor path,
//! `amsgrad=False`): decoupled decay `p *= 1 - lr * wd`, moments `m = b1 m + (1 - b1) g`,
//! `v = b2 v + (1 - b2) g^2`, then `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
//! Clipping follows `torch.nn.utils.clip_grad_norm_` (total 2-norm, `max / (norm + 1e-6)`).
//! The state is plain named tensors so a checkpoint saves and restores it exactly.
//!
//! Mixed precision: when a model tensor is not f32 (bf16 training on a GPU), the optimizer keeps
//! an f32 master copy, updates it from the f32-cast gradient and writes it back rounded.

use std::collections::HashMap;

use tch::{Kind, Tensor};

/// One trained tensor and its optimizer state.
pub struct Param {
    pub name: String,
    /// The model's tensor (gradients arrive here).
    pub tensor: Tensor,
    /// f32 master weights when `tensor` is half precision.
    pub master: Option<Tensor>,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Weight decay applies (matrices; not norms, biases).
    pub decay: bool,
}

/// AdamW over named parameters.
pub struct AdamW {
    pub params: Vec<Param>,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Optimizer steps taken.
    pub step: u64,
}

impl AdamW {
    /// Takes the model's parameter tensors (they are switched to `requires_grad`); decay is
    /// applied to tensors of two or more dimensions, as Hugging Face's Trainer does (no decay
    /// for norm weights and biases).
    pub fn new(
        params: Vec<(String, Tensor)>,
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
    ) -> Self {
        let params = params
            .into_iter()
            .map(|(name, t)| {
                let tensor = t.set_requires_grad(true);
                let master =
                    (tensor.kind() != Kind::Float).then(|| tensor.detach().to_kind(Kind::Float));
                let like = master.as_ref().unwrap_or(&tensor);
                Param {
                    exp_avg: like.zeros_like().set_requires_grad(false),
                    exp_avg_sq: like.zeros_like().set_requires_grad(false),
                    master,
                    decay: tensor.dim() >= 2,
                    name,
                    tensor,
                }
            })
            .collect();
        Self {
            params,
            betas,
            eps,
            weight_decay,
            step: 0,
        }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Total gradient 2-norm; with `max_norm > 0` scales the gradients down to it first-order
    /// as `clip_grad_norm_`. Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .map(|g| g.to_kind(Kind::Float).norm())
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        if max_norm > 0.0 && total.is_finite() {
            let coef = (max_norm / (total + 1e-6)).min(1.0);
            if coef < 1.0 {
                for p in &self.params {
                    let mut g = p.tensor.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
        }
        total
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let [b1, b2] = self.betas;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let w = match &mut p.master {
                Some(m) => m,
                None => &mut p.tensor,
            };
            if p.decay && self.weight_decay != 0.0 {
                let _ = w.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = p.exp_avg.lerp_(&g, 1.0 - b1);
            let _ = p.exp_avg_sq.g_mul_scalar_(b2);
            let _ = p.exp_avg_sq.addcmul_(&g, &g.g_mul_scalar(1.0 - b2));
            let denom = p.exp_avg_sq.sqrt() / bc2_sqrt + self.eps;
            let _ = w.addcdiv_(&(&p.exp_avg * (-lr / bc1)), &denom);
            if let Some(m) = &p.master {
                p.tensor.copy_(m);
            }
        }
    }

    /// The state as named tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            if let Some(m) = &p.master {
                out.push((format!("master.{}", p.name), m.shallow_clone()));
            }
        }
        out
    }

    /// Restores the moments saved by [`Self::state_tensors`]; every parameter must be present
    /// with its shape.
    pub fn load_state(
        &mut self,
        mut state: HashMap<String, Tensor>,
        step: u64,
    ) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        for p in &mut self.params {
            for (key, dst) in [
                (format!("exp_avg.{}", p.name), &mut p.exp_avg),
                (format!("exp_avg_sq.{}", p.name), &mut p.exp_avg_sq),
            ] {
                let src = state
                    .remove(&key)
                    .ok_or_else(|| format!("optimizer state has no `{key}`"))?;
                if src.size() != dst.size() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, the parameter {:?}",
                        src.size(),
                        dst.size()
                    ));
                }
                dst.copy_(&src.to_kind(dst.kind()).to_device(dst.device()));
            }
            if let Some(m) = &mut p.master {
                let key = format!("master.{}", p.name);
                let src = state
                    .remove(&key)
                    .ok_or_else(|| format!("optimizer state has no `{key}`"))?;
                m.copy_(&src.to_device(m.device()));
                p.tensor.copy_(m);
            }
        }
        if let Some(k) = state.keys().next() {
            return Err(format!("optimizer state has an unknown tensor `{k}`"));
        }
        self.step = step;
        Ok(())
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to
/// `peak * min_ratio` at `total` steps (`step` counts from 1).
pub fn learning_rate(step: u64, peak: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| learning_rate(s, 1.0, 10, 110, 0.1);
        assert!((lr(1) - 0.1).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-12);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!((lr(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_the_closed_form_first_steps() {
        // f(p) = sum(p^2) / 2: the gradient is p. After one step with bias correction the
        // update is lr * sign(g) (|m / sqrt(v)| = 1), minus decoupled decay.
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).view([1, 3]);
        let mut opt = AdamW::new(vec![("w".into(), p)], [0.9, 0.999], 0.0, 0.1);
        let loss = (&opt.params[0].tensor * &opt.params[0].tensor).sum(Kind::Float) * 0.5;
        loss.backward();
        opt.step(0.01);
        let got = Vec::<f32>::try_from(opt.params[0].tensor.detach().view([-1])).unwrap();
        let want: Vec<f32> = [1.0f32, -2.0, 0.5]
            .iter()
            .map(|&x| x * (1.0 - 0.01 * 0.1) - 0.01 * x.signum())
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]);
        let mut opt = AdamW::new(vec![("b".into(), p)], [0.9, 0.999], 1e-8, 0.0);
        (&opt.params[0].tensor * &opt.params[0].tensor)
            .sum(Kind::Float)
            .backward();
        // grad = 2p = (6, 8), norm 10.
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 10.0).abs() < 1e-5);
        let g = Vec::<f32>::try_from(opt.params[0].tensor.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
    }
}
