//! Low-rank adapters (LoRA, Hu et al. 2021) applied in the Llama forward pass, as huggingface/peft
//! `tuners/lora/layer.py` (`Linear.forward`): `y = W x + B (A dropout(x)) * scaling`, with A
//! `[r, in]`, B `[out, r]`.
//!
//! The model keeps its weights; the adapters are owned by the caller (the training crate keeps them
//! in their own `VarStore`) and passed to [`super::Llama::forward_hidden_lora`]. Passing `None`
//! runs the base model with no extra work, which is how DPO gets its reference model from the same
//! weights. The model fuses q/k/v and gate/up into one matrix each; the adapters stay per
//! projection (as peft has them): the fused product is computed once and the low-rank terms of
//! the parts are concatenated and added to it. That costs `r (in + out)` multiply-adds per token
//! and projection, against `in * out` for adding a merged `B A` to the weights on every step,
//! and keeps the gradient of A and B exactly peft's (each projection with its own dropout mask).

use super::config::LlamaConfig;
use crate::{ModelError, Result};
use tch::Tensor;

/// The seven linear layers of a Llama decoder layer that can carry an adapter (peft's
/// `target_modules` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The module name (`q_proj`, ...), as in `target_modules`.
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The module path inside a decoder layer (`self_attn.q_proj`, `mlp.down_proj`, ...).
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `(out_features, in_features)` of the projection under `cfg`.
    pub fn shape(self, cfg: &LlamaConfig) -> (i64, i64) {
        let h = cfg.hidden_size;
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let i = cfg.intermediate_size;
        match self {
            LoraTarget::Q => (q, h),
            LoraTarget::K | LoraTarget::V => (kv, h),
            LoraTarget::O => (h, q),
            LoraTarget::Gate | LoraTarget::Up => (i, h),
            LoraTarget::Down => (h, i),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One adapter: `a` `[r, in]`, `b` `[out, r]`.
#[derive(Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

impl LoraPair {
    /// `B (A dropout(x)) * scaling`. Like peft, the input is cast to the adapters' dtype (f32
    /// adapters on a half-precision model) and the result back to the input's.
    fn delta(&self, x: &Tensor, dropout: f64, training: bool, scaling: f64) -> Result<Tensor> {
        let x = if training && dropout > 0.0 {
            x.f_dropout(dropout, true)?
        } else {
            x.shallow_clone()
        };
        let kind = x.kind();
        let x = if self.a.kind() != kind {
            x.f_to_kind(self.a.kind())?
        } else {
            x
        };
        let low = x.f_linear::<&Tensor>(&self.a, None)?;
        let out = low
            .f_linear::<&Tensor>(&self.b, None)?
            .f_mul_scalar(scaling)?;
        Ok(if out.kind() != kind {
            out.f_to_kind(kind)?
        } else {
            out
        })
    }
}

/// Adapters for every decoder layer (`layers[i][target]`, `None` where a projection has none).
#[derive(Debug)]
pub struct LoraAdapters {
    /// `alpha / r` (or `alpha / sqrt(r)` for rsLoRA).
    pub scaling: f64,
    /// Dropout probability on the adapter input (training only).
    pub dropout: f64,
    /// Whether dropout is active.
    pub training: bool,
    pub layers: Vec<[Option<LoraPair>; 7]>,
}

impl LoraAdapters {
    pub fn get(&self, layer: usize, target: LoraTarget) -> Option<&LoraPair> {
        self.layers.get(layer)?[target.index()].as_ref()
    }

    /// Checks that the adapters fit a model with config `cfg`: layer count, and A `[r, in]` / B
    /// `[out, r]` with the projection's dimensions. The error names the first tensor at fault.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<()> {
        if self.layers.len() as i64 != cfg.num_hidden_layers {
            return Err(ModelError::InvalidArgument(format!(
                "LoRA adapters cover {} layers, the model has {}",
                self.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for t in LoraTarget::ALL {
                let Some(p) = &layer[t.index()] else { continue };
                let (out, inp) = t.shape(cfg);
                let (sa, sb) = (p.a.size(), p.b.size());
                let r = sa.first().copied().unwrap_or(-1);
                if sa.len() != 2 || sa[1] != inp || sb != [out, r] {
                    return Err(ModelError::InvalidArgument(format!(
                        "LoRA adapter of layer {l} {}: A is {sa:?} and B is {sb:?}, the model \
                         needs A [r, {inp}] and B [{out}, r]",
                        t.module_path()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The adapter term of one projection, if it has one.
    pub(crate) fn delta(
        &self,
        layer: usize,
        target: LoraTarget,
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        match self.get(layer, target) {
            None => Ok(None),
            Some(p) => Ok(Some(p.delta(
                x,
                self.dropout,
                self.training,
                self.scaling,
            )?)),
        }
    }

    /// The adapter term of a fused projection (parts concatenated along the output), or `None`
    /// when no part has an adapter. `sizes` are the parts' output sizes.
    pub(crate) fn fused_delta(
        &self,
        layer: usize,
        parts: &[(LoraTarget, i64)],
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        if parts.iter().all(|(t, _)| self.get(layer, *t).is_none()) {
            return Ok(None);
        }
        let mut pieces = Vec::with_capacity(parts.len());
        for &(t, out) in parts {
            pieces.push(match self.delta(layer, t, x)? {
                Some(d) => d,
                None => {
                    let mut shape = x.size();
                    *shape.last_mut().unwrap() = out;
                    Tensor::f_zeros(shape.as_slice(), (x.kind(), x.device()))?
                }
            });
        }
        Ok(Some(Tensor::f_cat(&pieces, -1)?))
    }
}
