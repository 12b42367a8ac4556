//! Llama weights and forward pass. Tensor names follow the checkpoint keys
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...); at load the q/k/v and gate/up projections
//! are fused into one matrix each (the per-projection tensors stay as views of it), which halves
//! the number of matrix-vector products in a decode step.

use super::config::LlamaConfig;
use super::kv_cache::KvCache;
use super::lora::{LoraAdapters, LoraTarget};
use super::quant::{self, PackedLinear, QuantConfig, QuantRuntime};
use super::rope::RotaryTables;
use crate::checkpoint::{
    load_checked, load_checked_typed, read_json, save_safetensors, TensorSpec,
};
use crate::{ModelError, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// How to load a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype; weights are converted at load.
    pub dtype: Kind,
    /// Longest sequence the RoPE tables cover (capped by `max_position_embeddings`).
    pub max_positions: i64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: Kind::Float,
            max_positions: 4096,
        }
    }
}

/// A linear layer's weight: a float matrix `[out, in]`, or integers run by libtorch's packed
/// kernels ([`QuantRuntime::Packed`]).
#[derive(Debug)]
enum Weight {
    Dense(Tensor),
    Packed(PackedLinear),
}

#[derive(Debug)]
struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) => Ok(x.f_linear(w, self.bias.as_ref())?),
            Weight::Packed(p) => {
                let y = p.forward(x)?;
                match &self.bias {
                    Some(b) => Ok(y.f_add(b)?),
                    None => Ok(y),
                }
            }
        }
    }

    fn out_features(&self) -> i64 {
        match &self.weight {
            Weight::Dense(w) => w.size()[0],
            Weight::Packed(p) => p.out_features(),
        }
    }

    /// One linear layer computing all of `parts` (concatenated outputs); each part becomes a
    /// view into the fused weight so no memory is duplicated. The parts are all float or all
    /// packed.
    fn fuse(parts: &mut [&mut Linear]) -> Result<Linear> {
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
            Some(Tensor::f_cat(&biases, 0)?)
        } else {
            None
        };
        let sizes: Vec<i64> = parts.iter().map(|p| p.out_features()).collect();
        let weight = if parts.iter().all(|p| matches!(p.weight, Weight::Dense(_))) {
            let weights: Vec<&Tensor> = parts
                .iter()
                .filter_map(|p| match &p.weight {
                    Weight::Dense(w) => Some(w),
                    Weight::Packed(_) => None,
                })
                .collect();
            let weight = Tensor::f_cat(&weights, 0)?;
            let mut start = 0;
            for (p, &n) in parts.iter_mut().zip(&sizes) {
                p.weight = Weight::Dense(weight.f_narrow(0, start, n)?);
                start += n;
            }
            Weight::Dense(weight)
        } else {
            let mut packed: Vec<&mut PackedLinear> = parts
                .iter_mut()
                .filter_map(|p| match &mut p.weight {
                    Weight::Packed(q) => Some(q),
                    Weight::Dense(_) => None,
                })
                .collect();
            if packed.len() != sizes.len() {
                return Err(ModelError::InvalidArgument(
                    "internal: cannot fuse packed and float projections".into(),
                ));
            }
            Weight::Packed(PackedLinear::fuse(&mut packed)?)
        };
        if let Some(b) = &bias {
            let mut start = 0;
            for (p, &n) in parts.iter_mut().zip(&sizes) {
                p.bias = Some(b.f_narrow(0, start, n)?);
                start += n;
            }
        }
        Ok(Linear { weight, bias })
    }

    /// Builds the packed kernel operands (no-op for a float weight).
    fn prepare(&mut self, kind: Kind) -> Result<()> {
        match &mut self.weight {
            Weight::Packed(p) => p.prepare(kind),
            Weight::Dense(_) => Ok(()),
        }
    }

    fn packed(&self) -> Option<&PackedLinear> {
        match &self.weight {
            Weight::Packed(p) => Some(p),
            Weight::Dense(_) => None,
        }
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    /// q, k and v stacked (inference).
    qkv: Linear,
    /// gate and up stacked (inference).
    gate_up: Linear,
}

/// The float tensors of one decoder layer as the forward pass reads them
/// ([`Llama::layer_tensors`]): weights `[out, in]`, q/k/v stacked into `qkv`
/// `[(heads + 2 * kv_heads) * head_dim, hidden]` and gate/up into `gate_up`
/// `[2 * intermediate, hidden]`.
#[derive(Debug, Clone, Copy)]
pub struct LayerTensors<'a> {
    pub input_layernorm: &'a Tensor,
    pub post_attention_layernorm: &'a Tensor,
    pub qkv: &'a Tensor,
    pub qkv_bias: Option<&'a Tensor>,
    pub o_proj: &'a Tensor,
    pub o_bias: Option<&'a Tensor>,
    pub gate_up: &'a Tensor,
    pub gate_up_bias: Option<&'a Tensor>,
    pub down_proj: &'a Tensor,
    pub down_bias: Option<&'a Tensor>,
}

/// A loaded Llama model. Immutable after load: many sessions may share it (each with its own
/// [`KvCache`]).
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: Tensor,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    rope: RotaryTables,
    dtype: Kind,
    device: Device,
    /// The `quantization_config` of the checkpoint, if it was quantized.
    quantization: Option<QuantConfig>,
    /// The projections kept as integers (packed runtime), if any.
    packed: Option<QuantConfig>,
}

// SAFETY: the model's tensors are never mutated after construction (all forward operations create
// new tensors; cache writes go to the caller's KvCache). libtorch tensors may be read from
// several threads at once.
unsafe impl Sync for Llama {}

fn layer_prefix(i: i64) -> String {
    format!("model.layers.{i}")
}

impl Llama {
    /// Names and shapes of every tensor the config calls for, as in the checkpoint.
    pub fn tensor_specs(cfg: &LlamaConfig) -> Vec<TensorSpec> {
        let h = cfg.hidden_size;
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        let i = cfg.intermediate_size;
        let mut specs = vec![TensorSpec::new(
            "model.embed_tokens.weight",
            &[cfg.vocab_size, h],
        )];
        for l in 0..cfg.num_hidden_layers {
            let p = layer_prefix(l);
            specs.push(TensorSpec::new(format!("{p}.input_layernorm.weight"), &[h]));
            specs.push(TensorSpec::new(
                format!("{p}.post_attention_layernorm.weight"),
                &[h],
            ));
            for (name, out, inp) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h)] {
                specs.push(TensorSpec::new(
                    format!("{p}.self_attn.{name}.weight"),
                    &[out, inp],
                ));
                if cfg.attention_bias {
                    specs.push(TensorSpec::new(
                        format!("{p}.self_attn.{name}.bias"),
                        &[out],
                    ));
                }
            }
            specs.push(TensorSpec::new(
                format!("{p}.self_attn.o_proj.weight"),
                &[h, q],
            ));
            if cfg.attention_bias {
                specs.push(TensorSpec::new(format!("{p}.self_attn.o_proj.bias"), &[h]));
            }
            for (name, out, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
                specs.push(TensorSpec::new(
                    format!("{p}.mlp.{name}.weight"),
                    &[out, inp],
                ));
                if cfg.mlp_bias {
                    specs.push(TensorSpec::new(format!("{p}.mlp.{name}.bias"), &[out]));
                }
            }
        }
        specs.push(TensorSpec::new("model.norm.weight", &[h]));
        if !cfg.tie_word_embeddings {
            specs.push(TensorSpec::new("lm_head.weight", &[cfg.vocab_size, h]));
        }
        specs
    }

    /// Loads `dir/config.json` and the safetensors weights of `dir`. A quantized checkpoint
    /// (`quantization_config`, see [`super::quant`]) is dequantized to `opts.dtype` on
    /// `opts.device`.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        Self::load_with(dir, opts, QuantRuntime::Dequantize)
    }

    /// [`Self::load`] choosing how a quantized checkpoint runs (a float checkpoint ignores
    /// `runtime`). Quantized tensors are checked for name, shape, stored dtype and finite,
    /// non-negative scales; every error names the tensor. With [`QuantRuntime::Packed`] (CPU
    /// only) a fused group (q/k/v, gate/up) stays packed when all its projections are quantized
    /// and is dequantized otherwise.
    pub fn load_with(dir: &Path, opts: LoadOptions, runtime: QuantRuntime) -> Result<Self> {
        let _span = tracing::info_span!("llama_load", dir = %dir.display()).entered();
        let cfg_path = dir.join("config.json");
        let value: serde_json::Value = read_json(&cfg_path)?;
        let cfg = LlamaConfig::from_json(&value, &cfg_path)?;
        let tied = cfg.tie_word_embeddings;
        // Tied checkpoints sometimes carry a copy of the head; old ones carry RoPE buffers.
        let ignorable = |name: &str| {
            (tied && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq")
        };
        let Some(qc) = QuantConfig::from_config_json(&value, &cfg_path)? else {
            let specs = Self::tensor_specs(&cfg);
            let tensors = load_checked(dir, &specs, &ignorable, opts.dtype, opts.device)?;
            return Self::from_tensors(cfg, tensors, opts);
        };
        qc.check(&cfg, &cfg_path)?;
        if runtime == QuantRuntime::Packed && opts.device != Device::Cpu {
            return Err(ModelError::InvalidArgument(format!(
                "the packed quantized runtime runs on the CPU only, not {:?}; use \
                 QuantRuntime::Dequantize",
                opts.device
            )));
        }
        let specs = quant::quantized_specs(&cfg, &qc);
        let mut tensors = load_checked_typed(dir, &specs, &ignorable, opts.dtype, opts.device)?;
        let keep_packed = |m: LoraTarget| {
            use LoraTarget::*;
            let group: &[LoraTarget] = match m {
                Q | K | V => &[Q, K, V],
                Gate | Up => &[Gate, Up],
                O => &[O],
                Down => &[Down],
            };
            runtime == QuantRuntime::Packed && group.iter().all(|g| qc.modules.contains(g))
        };
        let mut packed = HashMap::new();
        for l in 0..cfg.num_hidden_layers {
            for &m in &qc.modules {
                let base = quant::module_name(l, m);
                let mut take = |suffix: &str| {
                    let name = format!("{base}.{suffix}");
                    tensors.remove(&name).ok_or_else(|| {
                        ModelError::InvalidArgument(format!("internal: {name} was not loaded"))
                    })
                };
                let (q, s) = (take("qweight")?, take("scales")?);
                quant::check_scales_tensor(&format!("{base}.scales"), &s, dir)?;
                if keep_packed(m) {
                    packed.insert(base, PackedLinear::new(qc.scheme, q, s));
                } else {
                    let w = quant::dequantize_tensor(&q, &s, qc.scheme, opts.dtype)?;
                    tensors.insert(format!("{base}.weight"), w);
                }
            }
        }
        let kept: Vec<LoraTarget> = qc
            .modules
            .iter()
            .copied()
            .filter(|&m| keep_packed(m))
            .collect();
        let mut model = Self::assemble(cfg, tensors, packed, opts)?;
        if !kept.is_empty() {
            model.packed = Some(QuantConfig {
                scheme: qc.scheme,
                modules: kept,
            });
        }
        model.quantization = Some(qc);
        Ok(model)
    }

    /// Builds the model from named tensors (checkpoint names). Norms, embeddings, o/down
    /// projections and the LM head keep the given storage; q/k/v and gate/up are concatenated
    /// into fused matrices (the per-projection tensors become views of them). A training loop
    /// therefore trains [`Self::trainable_parameters`], not the tensors it passed in.
    pub fn from_tensors(
        cfg: LlamaConfig,
        tensors: HashMap<String, Tensor>,
        opts: LoadOptions,
    ) -> Result<Self> {
        Self::assemble(cfg, tensors, HashMap::new(), opts)
    }

    /// [`Self::from_tensors`] where the projections named in `packed` (module names,
    /// `model.layers.{i}.self_attn.q_proj`) are integer layers instead of `.weight` tensors.
    fn assemble(
        cfg: LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        mut packed: HashMap<String, PackedLinear>,
        opts: LoadOptions,
    ) -> Result<Self> {
        let mut take = |name: &str| {
            tensors.remove(name).ok_or_else(|| {
                ModelError::InvalidArgument(format!("tensor `{name}` was not provided"))
            })
        };
        let mut linear = |take: &mut dyn FnMut(&str) -> Result<Tensor>,
                          name: &str,
                          bias: bool|
         -> Result<Linear> {
            let weight = match packed.remove(name) {
                Some(p) => Weight::Packed(p),
                None => Weight::Dense(take(&format!("{name}.weight"))?),
            };
            Ok(Linear {
                weight,
                bias: if bias {
                    Some(take(&format!("{name}.bias"))?)
                } else {
                    None
                },
            })
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for l in 0..cfg.num_hidden_layers {
            let p = layer_prefix(l);
            let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
            let mut q_proj = linear(&mut take, &format!("{p}.self_attn.q_proj"), ab)?;
            let mut k_proj = linear(&mut take, &format!("{p}.self_attn.k_proj"), ab)?;
            let mut v_proj = linear(&mut take, &format!("{p}.self_attn.v_proj"), ab)?;
            let mut o_proj = linear(&mut take, &format!("{p}.self_attn.o_proj"), ab)?;
            let mut gate_proj = linear(&mut take, &format!("{p}.mlp.gate_proj"), mb)?;
            let mut up_proj = linear(&mut take, &format!("{p}.mlp.up_proj"), mb)?;
            let mut down_proj = linear(&mut take, &format!("{p}.mlp.down_proj"), mb)?;
            let mut qkv = Linear::fuse(&mut [&mut q_proj, &mut k_proj, &mut v_proj])?;
            let mut gate_up = Linear::fuse(&mut [&mut gate_proj, &mut up_proj])?;
            // Only the layers the forward pass runs get kernel operands.
            for run in [&mut qkv, &mut o_proj, &mut gate_up, &mut down_proj] {
                run.prepare(opts.dtype)?;
            }
            layers.push(DecoderLayer {
                input_layernorm: take(&format!("{p}.input_layernorm.weight"))?,
                post_attention_layernorm: take(&format!("{p}.post_attention_layernorm.weight"))?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate_proj,
                up_proj,
                down_proj,
                qkv,
                gate_up,
            });
        }
        let embed_tokens = take("model.embed_tokens.weight")?;
        let norm = take("model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight")?)
        };
        let max_positions = opts.max_positions.min(cfg.max_position_embeddings);
        let rope = RotaryTables::new(&cfg, max_positions, opts.dtype, opts.device)?;
        Ok(Self {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            dtype: opts.dtype,
            device: opts.device,
            quantization: None,
            packed: None,
        })
    }

    /// A model with random weights (normal, std 0.02; norms at 1) for benchmarks and tests of
    /// shapes that have no public checkpoint here.
    /// The weights are drawn in f32 on the CPU, then converted and moved: a seed gives the same
    /// model on every device and in every dtype.
    pub fn random(cfg: LlamaConfig, opts: LoadOptions, seed: i64) -> Result<Self> {
        tch::manual_seed(seed);
        let mut tensors = HashMap::new();
        let cpu = (Kind::Float, Device::Cpu);
        for spec in Self::tensor_specs(&cfg) {
            let t = if spec.shape.len() == 1 && spec.name.ends_with("norm.weight") {
                Tensor::f_ones(spec.shape.as_slice(), cpu)?
            } else {
                Tensor::f_randn(spec.shape.as_slice(), cpu)? * 0.02
            };
            tensors.insert(
                spec.name,
                t.f_to_device(opts.device)?.f_to_kind(opts.dtype)?,
            );
        }
        Self::from_tensors(cfg, tensors, opts)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dtype(&self) -> Kind {
        self.dtype
    }

    /// Longest sequence this model instance can process (RoPE table length).
    pub fn max_positions(&self) -> i64 {
        self.rope.max_positions()
    }

    /// A cache for `batch` sequences of up to `capacity` positions, in the model's dtype and device.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        if capacity > self.max_positions() {
            return Err(ModelError::InvalidArgument(format!(
                "cache capacity {capacity} exceeds the model's {} positions",
                self.max_positions()
            )));
        }
        KvCache::new(&self.cfg, batch, capacity, self.dtype, self.device)
    }

    /// The `quantization_config` of the checkpoint this model was loaded from, if quantized.
    pub fn quantization(&self) -> Option<&QuantConfig> {
        self.quantization.as_ref()
    }

    /// The projections this model keeps as integers ([`QuantRuntime::Packed`]), if any.
    pub fn packed_quantization(&self) -> Option<&QuantConfig> {
        self.packed.as_ref()
    }

    /// The token embedding `[vocab, hidden]` (also the LM head when tied).
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// The final RMSNorm weight `[hidden]`.
    pub fn final_norm(&self) -> &Tensor {
        &self.norm
    }

    /// The tensors the forward pass reads in decoder layer `index`, with the q/k/v and gate/up
    /// projections fused, for engines outside libtorch ([`super::native`]). Fails for a layer
    /// whose projections are kept packed ([`QuantRuntime::Packed`]).
    pub fn layer_tensors(&self, index: usize) -> Result<LayerTensors<'_>> {
        let l = self.layers.get(index).ok_or_else(|| {
            ModelError::InvalidArgument(format!(
                "layer {index} of a {}-layer model",
                self.layers.len()
            ))
        })?;
        fn dense<'a>(lin: &'a Linear, index: usize, name: &str) -> Result<&'a Tensor> {
            match &lin.weight {
                Weight::Dense(w) => Ok(w),
                Weight::Packed(_) => Err(ModelError::InvalidArgument(format!(
                    "layer {index} {name} is packed (QuantRuntime::Packed); load with \
                     QuantRuntime::Dequantize"
                ))),
            }
        }
        Ok(LayerTensors {
            input_layernorm: &l.input_layernorm,
            post_attention_layernorm: &l.post_attention_layernorm,
            qkv: dense(&l.qkv, index, "qkv_proj")?,
            qkv_bias: l.qkv.bias.as_ref(),
            o_proj: dense(&l.o_proj, index, "o_proj")?,
            o_bias: l.o_proj.bias.as_ref(),
            gate_up: dense(&l.gate_up, index, "gate_up_proj")?,
            gate_up_bias: l.gate_up.bias.as_ref(),
            down_proj: dense(&l.down_proj, index, "down_proj")?,
            down_bias: l.down_proj.bias.as_ref(),
        })
    }

    /// The LM head matrix `[vocab, hidden]`.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Bytes of weight data read to produce one token at batch 1 (every matrix once; the tied
    /// embedding counts once, as the LM head).
    pub fn weight_bytes_per_token(&self) -> i64 {
        let elems = self.cfg.num_parameters()
            - if self.cfg.tie_word_embeddings {
                0
            } else {
                // An untied input embedding only reads one row per token.
                self.cfg.vocab_size * self.cfg.hidden_size
            };
        let mut bytes = elems * self.dtype.elt_size_in_bytes() as i64;
        // Packed projections read their integers and scales instead.
        for l in &self.layers {
            for lin in [&l.qkv, &l.o_proj, &l.gate_up, &l.down_proj] {
                if let Some(p) = lin.packed() {
                    let (out, inp) = (p.out_features(), p.in_features());
                    bytes += p.kernel_bytes() - out * inp * self.dtype.elt_size_in_bytes() as i64;
                }
            }
        }
        bytes
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let h = self.cfg.hidden_size;
        if self.dtype == Kind::Float {
            // One fused ATen op; in f32 it is the same formula as below.
            return Ok(x.f_rms_norm([h], Some(weight), self.cfg.rms_norm_eps)?);
        }
        // Half precision as transformers' LlamaRMSNorm: normalize in f32, cast back, then scale.
        let x32 = x.f_to_kind(Kind::Float)?;
        let var = x32.f_square()?.f_mean_dim(-1, true, Kind::Float)?;
        let normed = x32.f_mul(&(var + self.cfg.rms_norm_eps).f_rsqrt()?)?;
        Ok(weight.f_mul(&normed.f_to_kind(self.dtype)?)?)
    }

    /// Hidden states after the final norm, `[B, T, hidden]`, for `tokens` `[B, T]` (i64).
    ///
    /// With a cache, the tokens continue the cached sequence and their keys and values are
    /// written to it. Without one, `tokens` is a whole sequence (training, scoring).
    /// `padding_mask` `[B, S]` (true = real token, S = cached + new positions) hides padded
    /// positions from attention.
    pub fn forward_hidden(
        &self,
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        padding_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_hidden_lora(tokens, cache, padding_mask, None)
    }

    /// [`Self::forward_hidden`] with low-rank adapters added to the projections they cover
    /// (see [`super::lora`]); `None` is the base model, at no extra cost.
    pub fn forward_hidden_lora(
        &self,
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        padding_mask: Option<&Tensor>,
        lora: Option<&LoraAdapters>,
    ) -> Result<Tensor> {
        if let Some(l) = lora {
            l.check(&self.cfg)?;
        }
        let vocab = self.cfg.vocab_size;
        let (min, max) = (
            tokens.f_min()?.int64_value(&[]),
            tokens.f_max()?.int64_value(&[]),
        );
        if min < 0 || max >= vocab {
            return Err(ModelError::InvalidArgument(format!(
                "token ids must lie in 0..{vocab}, got {min}..={max}"
            )));
        }
        self.forward_checked_ids(tokens, cache, padding_mask, lora)
    }

    /// Hidden states `[1, T, hidden]` for one sequence of host-side ids continuing `cache`: the
    /// ids are checked on the host, so a decode step needs no device reduction or sync for it.
    pub fn forward_hidden_ids(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let vocab = self.cfg.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t as i64 >= vocab) {
            return Err(ModelError::InvalidArgument(format!(
                "token ids must lie in 0..{vocab}, got {bad}"
            )));
        }
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::from_slice(&ids)
            .f_to_device(self.device)?
            .f_view([1, -1])?;
        self.forward_checked_ids(&tokens, Some(cache), None, None)
    }

    /// [`Self::forward_hidden`] for token ids already known to be in range.
    fn forward_checked_ids(
        &self,
        tokens: &Tensor,
        mut cache: Option<&mut KvCache>,
        padding_mask: Option<&Tensor>,
        lora: Option<&LoraAdapters>,
    ) -> Result<Tensor> {
        let size = tokens.size();
        let [b, t] = size[..] else {
            return Err(ModelError::InvalidArgument(format!(
                "tokens must be [batch, time], got {size:?}"
            )));
        };
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_ref() {
            c.check_room(t)?;
            if c.batch() != b {
                return Err(ModelError::InvalidArgument(format!(
                    "batch {b} does not match the cache's batch {}",
                    c.batch()
                )));
            }
        }
        if past + t > self.max_positions() {
            return Err(ModelError::CacheFull {
                needed: (past + t) as usize,
                capacity: self.max_positions() as usize,
            });
        }
        let mask = self.attention_mask(b, t, past, padding_mask)?;
        let mut x = Tensor::f_embedding(&self.embed_tokens, tokens, -1, false, false)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("llama_layer", layer = i).entered();
            let h = self.rms_norm(&x, &layer.input_layernorm)?;
            let h = self.attention(
                layer,
                i,
                &h,
                past,
                cache.as_deref_mut(),
                mask.as_ref(),
                lora,
            )?;
            x = x.f_add(&h)?;
            let h = self.rms_norm(&x, &layer.post_attention_layernorm)?;
            let inter = self.cfg.intermediate_size;
            let mut gu = layer.gate_up.forward(&h)?;
            if let Some(l) = lora {
                let parts = [(LoraTarget::Gate, inter), (LoraTarget::Up, inter)];
                if let Some(d) = l.fused_delta(i, &parts, &h)? {
                    gu = gu.f_add(&d)?;
                }
            }
            let gate = gu.f_narrow(-1, 0, inter)?;
            let up = gu.f_narrow(-1, inter, inter)?;
            let act = gate.f_silu()?.f_mul(&up)?;
            let mut h = layer.down_proj.forward(&act)?;
            if let Some(Some(d)) = lora
                .map(|l| l.delta(i, LoraTarget::Down, &act))
                .transpose()?
            {
                h = h.f_add(&d)?;
            }
            x = x.f_add(&h)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        self.rms_norm(&x, &self.norm)
    }

    /// Additive mask `[B or 1, 1, T, S]` (0 or -inf), or `None` when nothing is masked
    /// (one new token without padding).
    fn attention_mask(
        &self,
        b: i64,
        t: i64,
        past: i64,
        padding: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        let s = past + t;
        let mut blocked: Option<Tensor> = None;
        if t > 1 {
            // Query t (absolute position past + t) sees keys 0..=past + t.
            let q = Tensor::f_arange(t, (Kind::Int64, self.device))?.f_add_scalar(past)?;
            let k = Tensor::f_arange(s, (Kind::Int64, self.device))?;
            blocked = Some(
                k.unsqueeze(0)
                    .f_gt_tensor(&q.unsqueeze(1))?
                    .f_view([1, 1, t, s])?,
            );
        }
        if let Some(p) = padding {
            if p.size() != [b, s] {
                return Err(ModelError::InvalidArgument(format!(
                    "padding mask must be [{b}, {s}], got {:?}",
                    p.size()
                )));
            }
            let pad = p
                .f_to_kind(Kind::Bool)?
                .f_logical_not()?
                .f_view([b, 1, 1, s])?;
            blocked = Some(match blocked {
                Some(m) => m.f_logical_or(&pad)?,
                None => pad,
            });
        }
        Ok(match blocked {
            None => None,
            Some(m) => Some(
                Tensor::f_zeros(m.size(), (self.dtype, self.device))?
                    .f_masked_fill(&m, f64::NEG_INFINITY)?,
            ),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &DecoderLayer,
        index: usize,
        x: &Tensor,
        past: i64,
        cache: Option<&mut KvCache>,
        mask: Option<&Tensor>,
        lora: Option<&LoraAdapters>,
    ) -> Result<Tensor> {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (nh, nkv, d) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let mut qkv = layer.qkv.forward(x)?;
        if let Some(l) = lora {
            let parts = [
                (LoraTarget::Q, nh * d),
                (LoraTarget::K, nkv * d),
                (LoraTarget::V, nkv * d),
            ];
            if let Some(delta) = l.fused_delta(index, &parts, x)? {
                qkv = qkv.f_add(&delta)?;
            }
        }
        // q and k are adjacent in the fused output: rotate them in one pass.
        let qk = qkv
            .f_narrow(-1, 0, (nh + nkv) * d)?
            .f_view([b, t, nh + nkv, d])?
            .f_transpose(1, 2)?;
        let qk = self.rope.apply(&qk, past)?;
        let q = qk.f_narrow(1, 0, nh)?;
        let k = qk.f_narrow(1, nh, nkv)?;
        let v = qkv
            .f_narrow(-1, (nh + nkv) * d, nkv * d)?
            .f_view([b, t, nkv, d])?
            .f_transpose(1, 2)?;
        let (k, v) = match cache {
            Some(c) => c.write(index, &k, &v)?,
            None => (k, v),
        };
        // Grouped-query attention (query head h reads key/value head h / (nh / nkv)), softmax
        // in f32, scale 1/sqrt(d): transformers' sdpa path.
        let out =
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask, 0.0, false, None, nkv != nh)?;
        let out = out.f_transpose(1, 2)?.f_reshape([b, t, nh * d])?;
        let y = layer.o_proj.forward(&out)?;
        match lora
            .map(|l| l.delta(index, LoraTarget::O, &out))
            .transpose()?
        {
            Some(Some(delta)) => Ok(y.f_add(&delta)?),
            _ => Ok(y),
        }
    }

    /// Logits `[.., vocab]` for hidden states from [`Self::forward_hidden`].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.f_linear::<&Tensor>(self.lm_head_weight(), None)?)
    }

    /// Logits of the vocabulary slice `start..start + len` only (constrained decoding phases).
    pub fn logits_range(&self, hidden: &Tensor, start: i64, len: i64) -> Result<Tensor> {
        let w = self.lm_head_weight().f_narrow(0, start, len)?;
        Ok(hidden.f_linear::<&Tensor>(&w, None)?)
    }

    /// Full logits `[B, T, vocab]`.
    pub fn forward(&self, tokens: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.forward_hidden(tokens, cache, None)?;
        self.logits(&h)
    }

    /// Logits of the last position only, `[B, vocab]`: what a generation step needs.
    pub fn forward_last(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let h = self.forward_hidden(tokens, Some(cache), None)?;
        let t = h.size()[1];
        self.logits(&h.f_select(1, t - 1)?)
    }

    /// Adds `n` rows to the vocabulary. New embedding rows (and LM-head rows when untied) are the
    /// mean of the existing rows, as transformers' `resize_token_embeddings(mean_resizing=True)`
    /// (which samples around that mean with a negligible 1e-9-scaled covariance).
    pub fn extend_vocab(&mut self, n: i64) -> Result<()> {
        if n < 0 {
            return Err(ModelError::InvalidArgument(format!(
                "cannot add {n} tokens"
            )));
        }
        let grow = |w: &Tensor| -> Result<Tensor> {
            let mean = w
                .f_to_kind(Kind::Float)?
                .f_mean_dim(0, true, Kind::Float)?
                .f_to_kind(w.kind())?;
            let rows = mean.f_expand([n, w.size()[1]], false)?;
            Ok(Tensor::f_cat(&[w, &rows], 0)?)
        };
        self.embed_tokens = grow(&self.embed_tokens)?;
        if let Some(head) = &self.lm_head {
            self.lm_head = Some(grow(head)?);
        }
        self.cfg.vocab_size += n;
        Ok(())
    }

    /// The distinct parameter tensors the forward pass reads (fused q/k/v and gate/up as one
    /// tensor each), named after the checkpoint keys with `qkv_proj` / `gate_up_proj` for the
    /// fused ones. They alias the model's storage: updating them in place (under `no_grad`)
    /// updates the model and what [`Self::named_tensors`] / [`Self::save`] see. Projections of
    /// the packed quantized runtime appear as their stored `qweight` / `scales` (inference
    /// only: not trainable).
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        self.collect_tensors(true)
    }

    /// Named tensors in the checkpoint layout (the un-fused projections; `qweight` / `scales`
    /// for projections kept packed).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.collect_tensors(false)
    }

    fn collect_tensors(&self, fused: bool) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.shallow_clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = layer_prefix(i as i64);
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.shallow_clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.shallow_clone(),
            ));
            let linears: Vec<(&str, &Linear)> = if fused {
                vec![
                    ("self_attn.qkv_proj", &l.qkv),
                    ("self_attn.o_proj", &l.o_proj),
                    ("mlp.gate_up_proj", &l.gate_up),
                    ("mlp.down_proj", &l.down_proj),
                ]
            } else {
                vec![
                    ("self_attn.q_proj", &l.q_proj),
                    ("self_attn.k_proj", &l.k_proj),
                    ("self_attn.v_proj", &l.v_proj),
                    ("self_attn.o_proj", &l.o_proj),
                    ("mlp.gate_proj", &l.gate_proj),
                    ("mlp.up_proj", &l.up_proj),
                    ("mlp.down_proj", &l.down_proj),
                ]
            };
            for (name, lin) in linears {
                match &lin.weight {
                    Weight::Dense(w) => {
                        out.push((format!("{p}.{name}.weight"), w.shallow_clone()));
                    }
                    Weight::Packed(q) => out.extend(q.named(&format!("{p}.{name}"))),
                }
                if let Some(bias) = &lin.bias {
                    out.push((format!("{p}.{name}.bias"), bias.shallow_clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.shallow_clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.shallow_clone()));
        }
        out
    }

    /// Writes `config.json` and `model.safetensors` (Hugging Face layout) into `dir`. A model
    /// holding packed projections writes them quantized, with their `quantization_config`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let cfg_path = dir.join("config.json");
        let mut json = self.cfg.to_json();
        if let Some(qc) = &self.packed {
            json["quantization_config"] = qc.to_json();
        }
        let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Json {
            path: cfg_path.clone(),
            source: e,
        })?;
        std::fs::write(&cfg_path, text).map_err(|e| ModelError::io(&cfg_path, e))?;
        save_safetensors(&dir.join("model.safetensors"), &self.named_tensors())
    }
}
