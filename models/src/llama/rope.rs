//! Rotary position embeddings in the rotate-half layout of Hugging Face checkpoints.
//! Frequencies follow transformers' `modeling_rope_utils.py` (`_compute_default_rope_parameters`,
//! `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`), computed in f32 as
//! there so that angles agree bit for bit at long positions.

use super::config::{LlamaConfig, RopeScaling};
use crate::Result;
use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// cos/sin tables `[max_positions, head_dim]`, precomputed once per model.
#[derive(Debug)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
    max_positions: i64,
}

/// Inverse frequencies `[head_dim / 2]` (f32) after the configured scaling.
pub fn inverse_frequencies(cfg: &LlamaConfig) -> Result<Tensor> {
    let dim = cfg.head_dim;
    let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))?
        .f_to_kind(Kind::Float)?
        / dim as f64;
    let inv = Tensor::f_pow_scalar(cfg.rope_theta, &exponents)?.f_reciprocal()?;
    Ok(match &cfg.rope_scaling {
        RopeScaling::Default | RopeScaling::Linear { .. } => inv,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            let wavelen = inv.reciprocal() * (2.0 * PI);
            let low = wavelen.gt(low_freq_wavelen);
            let inv_scaled = inv.where_self(&low.logical_not(), &(&inv / *factor));
            let smooth = (wavelen.reciprocal() * *old_ctx - *low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed =
                (smooth.ones_like() - &smooth) * &inv_scaled / *factor + &smooth * &inv_scaled;
            let medium = wavelen
                .lt(high_freq_wavelen)
                .logical_not()
                .logical_and(&low.logical_not());
            smoothed.where_self(&medium, &inv_scaled)
        }
    })
}

impl RotaryTables {
    pub fn new(cfg: &LlamaConfig, max_positions: i64, kind: Kind, device: Device) -> Result<Self> {
        let inv = inverse_frequencies(cfg)?;
        let mut positions = Tensor::f_arange(max_positions, (Kind::Float, Device::Cpu))?;
        if let RopeScaling::Linear { factor } = cfg.rope_scaling {
            positions /= factor;
        }
        let freqs = positions.unsqueeze(1) * inv.unsqueeze(0);
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok(Self {
            cos: emb.cos().to_kind(kind).to_device(device),
            sin: emb.sin().to_kind(kind).to_device(device),
            max_positions,
        })
    }

    pub fn max_positions(&self) -> i64 {
        self.max_positions
    }

    /// The cos and sin tables `[max_positions, head_dim]` (the halves repeat: `emb = [f, f]`).
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Applies the rotation to `x` `[B, heads, T, D]` at positions `start..start + T`.
    pub fn apply(&self, x: &Tensor, start: i64) -> Result<Tensor> {
        let t = x.size()[2];
        let cos = self.cos.f_narrow(0, start, t)?;
        let sin = self.sin.f_narrow(0, start, t)?;
        let half = x.size()[3] / 2;
        let x1 = x.f_narrow(-1, 0, half)?;
        let x2 = x.f_narrow(-1, half, half)?;
        let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
        Ok(x.f_mul(&cos)?.f_add(&rotated.f_mul(&sin)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn llama3_frequencies_follow_the_reference_formula() {
        let v = json!({"vocab_size": 8, "hidden_size": 256, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 128,
            "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let cfg = LlamaConfig::from_json(&v, Path::new("c")).unwrap();
        let inv = Vec::<f32>::try_from(inverse_frequencies(&cfg).unwrap()).unwrap();
        for (i, got) in inv.iter().enumerate() {
            let base = 1.0 / 500000f64.powf((2 * i) as f64 / 128.0);
            let lambda = 2.0 * PI / base;
            let want = if lambda < 8192.0 / 4.0 {
                base
            } else if lambda > 8192.0 {
                base / 32.0
            } else {
                let s = (8192.0 / lambda - 1.0) / 3.0;
                (1.0 - s) * base / 32.0 + s * base
            };
            assert!(
                ((*got as f64) - want).abs() <= 1e-6 * want,
                "{i}: {got} vs {want}"
            );
        }
    }
}
