//! AdamW with global gradient-norm clipping, for every trainer (SFT, preference, vocoder).
//!
//! AdamW follows `torch.optim.AdamW` (PyTorch `torch/optim/adamw.py`, single-tensor path,
//! `amsgrad=False`): decoupled decay `p *= 1 - lr * wd`, moments `m = b1 m + (1 - b1) g`,
//! `v = b2 v + (1 - b2) g^2`, then `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
//! Clipping follows `torch.nn.utils.clip_grad_norm_` (total 2-norm, `max / (norm + 1e-6)`).
//! The state is plain named tensors in a safetensors file (tch's own optimizer keeps its moments
//! inside libtorch where they cannot be saved), so a checkpoint resumes exactly.
//!
//! Weight decay goes on the matrices only ([`DecayScope::Matrices`], as Hugging Face's Trainer:
//! no decay for norm weights and biases) or on every tensor ([`DecayScope::All`],
//! `torch.optim.AdamW` over `model.parameters()`, as HiFi-GAN is trained).
//!
//! Mixed precision: when a model tensor is not f32 (bf16 training on a GPU), the optimizer keeps
//! an f32 master copy, updates it from the f32-cast gradient and writes it back rounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tolk_models::checkpoint::{read_safetensors, save_safetensors};

/// Errors of the optimizer: its state file, or libtorch during an update.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("{path}: optimizer state has no `{key}`")]
    MissingState { path: PathBuf, key: String },
    #[error("{path}: optimizer state `{key}` has shape {found:?}, the parameter {expected:?}")]
    StateShape {
        path: PathBuf,
        key: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("{path}: optimizer state has an unknown tensor `{key}`")]
    UnknownState { path: PathBuf, key: String },
    #[error(transparent)]
    File(#[from] tolk_models::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

type Result<T> = std::result::Result<T, OptimError>;

/// Which tensors weight decay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecayScope {
    /// Tensors of two or more dimensions (not norm weights, not biases).
    Matrices,
    /// Every trained tensor.
    All,
}

/// AdamW's hyper-parameters (the learning rate is given at each step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub decay: DecayScope,
}

/// One trained tensor and its optimizer state.
pub struct Param {
    pub name: String,
    /// The model's tensor (gradients arrive here).
    pub tensor: Tensor,
    /// f32 master weights when `tensor` is half precision.
    pub master: Option<Tensor>,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Weight decay applies.
    pub decay: bool,
}

/// AdamW over named parameters.
pub struct AdamW {
    pub params: Vec<Param>,
    pub config: AdamWConfig,
    /// Optimizer steps taken.
    pub step: u64,
}

/// The trainable (requires-grad) variables of `vs`, sorted by name.
pub fn trainable_variables(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The key of the step count in the state file.
const STEP_KEY: &str = "step";

impl AdamW {
    /// Takes the model's parameter tensors (they are switched to `requires_grad`).
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
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
                    decay: match config.decay {
                        DecayScope::Matrices => tensor.dim() >= 2,
                        DecayScope::All => true,
                    },
                    name,
                    tensor,
                }
            })
            .collect();
        Self {
            params,
            config,
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
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let AdamWConfig {
            betas: [b1, b2],
            eps,
            weight_decay,
            ..
        } = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let g = g.f_to_kind(Kind::Float)?;
            let w = match &mut p.master {
                Some(m) => m,
                None => &mut p.tensor,
            };
            if p.decay && weight_decay != 0.0 {
                let _ = w.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let _ = p.exp_avg.f_lerp_(&g, 1.0 - b1)?;
            let _ = p.exp_avg_sq.f_mul_scalar_(b2)?;
            let _ = p.exp_avg_sq.f_addcmul_(&g, &g.f_mul_scalar(1.0 - b2)?)?;
            let denom = p
                .exp_avg_sq
                .f_sqrt()?
                .f_div_scalar(bc2_sqrt)?
                .f_add_scalar(eps)?;
            let _ = w.f_addcdiv_(&p.exp_avg.f_mul_scalar(-lr / bc1)?, &denom)?;
            if let Some(m) = &p.master {
                p.tensor.f_copy_(m)?;
            }
        }
        Ok(())
    }

    /// The state as named tensors: `exp_avg.<name>`, `exp_avg_sq.<name>`, `master.<name>` of
    /// half-precision parameters, and the step count.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2 + 1);
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
        out.push((STEP_KEY.into(), Tensor::from_slice(&[self.step as i64])));
        out
    }

    /// Writes the state to `path` (safetensors, through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        Ok(save_safetensors(path, &self.state_tensors())?)
    }

    /// Restores what [`Self::save`] wrote: every parameter's state with its shape, the step
    /// count, and nothing else.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let (tensors, _) = read_safetensors(path, Kind::Float, Device::Cpu, |_| true)?;
        let mut state: HashMap<String, Tensor> = tensors.into_iter().collect();
        let missing = |key: &str| OptimError::MissingState {
            path: path.to_path_buf(),
            key: key.to_string(),
        };
        let _guard = tch::no_grad_guard();
        for p in &mut self.params {
            for (key, dst) in [
                (format!("exp_avg.{}", p.name), &mut p.exp_avg),
                (format!("exp_avg_sq.{}", p.name), &mut p.exp_avg_sq),
            ] {
                let src = state.remove(&key).ok_or_else(|| missing(&key))?;
                if src.size() != dst.size() {
                    return Err(OptimError::StateShape {
                        path: path.to_path_buf(),
                        key,
                        found: src.size(),
                        expected: dst.size(),
                    });
                }
                dst.f_copy_(&src.f_to_kind(dst.kind())?.f_to_device(dst.device())?)?;
            }
            if let Some(m) = &mut p.master {
                let key = format!("master.{}", p.name);
                let src = state.remove(&key).ok_or_else(|| missing(&key))?;
                m.f_copy_(&src.f_to_device(m.device())?)?;
                p.tensor.f_copy_(m)?;
            }
        }
        let step = state.remove(STEP_KEY).ok_or_else(|| missing(STEP_KEY))?;
        if let Some(key) = state.into_keys().next() {
            return Err(OptimError::UnknownState {
                path: path.to_path_buf(),
                key,
            });
        }
        self.step = step.f_int64_value(&[0])? as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(eps: f64, weight_decay: f64, decay: DecayScope) -> AdamWConfig {
        AdamWConfig {
            betas: [0.9, 0.999],
            eps,
            weight_decay,
            decay,
        }
    }

    #[test]
    fn adamw_matches_the_closed_form_first_steps() {
        // f(p) = sum(p^2) / 2: the gradient is p. After one step with bias correction the
        // update is lr * sign(g) (|m / sqrt(v)| = 1), minus decoupled decay.
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).view([1, 3]);
        let mut opt = AdamW::new(
            vec![("w".into(), p)],
            config(0.0, 0.1, DecayScope::Matrices),
        );
        let loss = (&opt.params[0].tensor * &opt.params[0].tensor).sum(Kind::Float) * 0.5;
        loss.backward();
        opt.step(0.01).unwrap();
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
    fn decay_scope_picks_the_decayed_tensors() {
        let params = || {
            vec![
                ("bias".to_string(), Tensor::from_slice(&[1.0f32, 2.0])),
                (
                    "weight".to_string(),
                    Tensor::ones([2, 2], tch::kind::FLOAT_CPU),
                ),
            ]
        };
        let decayed = |scope| -> Vec<bool> {
            let opt = AdamW::new(params(), config(1e-8, 0.01, scope));
            opt.params.iter().map(|p| p.decay).collect()
        };
        assert_eq!(decayed(DecayScope::Matrices), vec![false, true]);
        assert_eq!(decayed(DecayScope::All), vec![true, true]);
        // With a zero gradient only the decay moves a weight.
        let mut opt = AdamW::new(params(), config(1e-8, 0.5, DecayScope::All));
        for p in &opt.params {
            (&p.tensor * 0.0).sum(Kind::Float).backward();
        }
        opt.step(0.1).unwrap();
        let bias = Vec::<f32>::try_from(opt.params[0].tensor.detach()).unwrap();
        assert!(
            (bias[0] - 0.95).abs() < 1e-6 && (bias[1] - 1.9).abs() < 1e-6,
            "{bias:?}"
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]);
        let mut opt = AdamW::new(
            vec![("b".into(), p)],
            config(1e-8, 0.0, DecayScope::Matrices),
        );
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

    #[test]
    fn saved_state_resumes_exactly_and_mismatches_are_named() {
        let params = || vec![("w".to_string(), Tensor::from_slice(&[1.0f32, -2.0]))];
        let cfg = config(1e-8, 0.0, DecayScope::All);
        let mut straight = AdamW::new(params(), cfg);
        let run = |opt: &mut AdamW, steps: usize| {
            for _ in 0..steps {
                opt.zero_grad();
                (&opt.params[0].tensor * &opt.params[0].tensor)
                    .sum(Kind::Float)
                    .backward();
                opt.step(0.1).unwrap();
            }
        };
        run(&mut straight, 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let mut first = AdamW::new(params(), cfg);
        run(&mut first, 2);
        first.save(&path).unwrap();
        let mut resumed = AdamW::new(params(), cfg);
        {
            let _g = tch::no_grad_guard();
            resumed.params[0].tensor.copy_(&first.params[0].tensor);
        }
        resumed.load(&path).unwrap();
        assert_eq!(resumed.step, 2);
        run(&mut resumed, 2);
        let d = (&straight.params[0].tensor - &resumed.params[0].tensor)
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(d, 0.0);
        // Another parameter set does not load.
        let mut other = AdamW::new(
            vec![("v".to_string(), Tensor::zeros([2], tch::kind::FLOAT_CPU))],
            cfg,
        );
        let e = other.load(&path).unwrap_err().to_string();
        assert!(e.contains("has no `exp_avg.v`"), "{e}");
    }
}
