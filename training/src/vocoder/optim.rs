//! AdamW over named variables with its state in a safetensors file, so a checkpoint resumes
//! exactly (tch's optimizer keeps its moments inside libtorch where they cannot be saved).
//!
//! Update as torch.optim.AdamW (decoupled weight decay, bias-corrected moments, eps outside the
//! square root): `p -= lr * wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//! p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Tensor;

#[derive(Debug)]
pub struct AdamW {
    pub b1: f64,
    pub b2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates done so far (torch's per-parameter `step`, the same for all here).
    pub t: i64,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// Optimizes the trainable (requires-grad) tensors of `vars`.
    pub fn new(vars: HashMap<String, Tensor>, b1: f64, b2: f64, weight_decay: f64) -> Self {
        let mut params: Vec<(String, Tensor)> = vars
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self {
            b1,
            b2,
            eps: 1e-8,
            weight_decay,
            t: 0,
            params,
            m,
            v,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the accumulated gradients.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _g = tch::no_grad_guard();
        self.t += 1;
        let bc1 = 1.0 - self.b1.powi(self.t as i32);
        let bc2 = 1.0 - self.b2.powi(self.t as i32);
        for ((_, p), (m, v)) in self
            .params
            .iter_mut()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            if self.weight_decay > 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * self.weight_decay)?;
            }
            let _ = m
                .f_mul_scalar_(self.b1)?
                .f_add_(&g.f_mul_scalar(1.0 - self.b1)?)?;
            let _ = v
                .f_mul_scalar_(self.b2)?
                .f_add_(&g.f_square()?.f_mul_scalar(1.0 - self.b2)?)?;
            let denom = v.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(self.eps)?;
            let upd = m.f_div(&denom)?.f_mul_scalar(lr / bc1)?;
            let _ = p.f_sub_(&upd)?;
        }
        Ok(())
    }

    /// Writes the moments and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        for ((n, _), (m, v)) in self.params.iter().zip(self.m.iter().zip(&self.v)) {
            named.push((format!("m.{n}"), m.shallow_clone()));
            named.push((format!("v.{n}"), v.shallow_clone()));
        }
        named.push(("t".into(), Tensor::from_slice(&[self.t])));
        Tensor::write_safetensors(&named, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Restores what [`Self::save`] wrote; every moment must be there with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let t: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading {}", path.display()))?
            .into_iter()
            .collect();
        let _g = tch::no_grad_guard();
        for ((n, _), (m, v)) in self
            .params
            .iter()
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            for (prefix, dst) in [("m", m), ("v", v)] {
                let key = format!("{prefix}.{n}");
                match t.get(&key) {
                    Some(src) if src.size() == dst.size() => {
                        dst.f_copy_(src)?;
                    }
                    Some(src) => bail!(
                        "{}: `{key}` has shape {:?}, expected {:?}",
                        path.display(),
                        src.size(),
                        dst.size()
                    ),
                    None => bail!("{}: `{key}` is missing", path.display()),
                }
            }
        }
        self.t = t
            .get("t")
            .with_context(|| format!("{}: step count `t` is missing", path.display()))?
            .int64_value(&[0]);
        Ok(())
    }
}
