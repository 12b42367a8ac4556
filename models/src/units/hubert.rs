//! HuBERT-family speech encoder (Hugging Face `HubertModel` layout), returning the hidden states of
//! one transformer layer. Matches transformers `models/hubert/modeling_hubert.py` (v5):
//! `hidden_states[0]` is the input of the first encoder layer, `hidden_states[L]` the output of
//! layer L (1-based). The final encoder layer norm of the pre-LN ("stable layer norm") variant only
//! enters `last_hidden_state`, never `hidden_states[L]`, so it is not applied here.
//!
//! Architecture (Hsu et al. 2021, fairseq `fairseq/models/hubert/hubert.py`): a stack of strided 1-D
//! convolutions on the raw waveform (group norm on the first layer, or layer norm on every layer),
//! a feature projection (layer norm + linear), a grouped positional convolution (weight norm folded
//! at load), then Transformer encoder layers in post-LN or pre-LN form.

use crate::checkpoint::{checkpoint_files, load_checked, TensorSpec};
use crate::{ModelError, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Normalisation inside the convolutional feature extractor (`feat_extract_norm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatExtractNorm {
    /// Group norm with one group per channel after the first convolution only (HuBERT base).
    Group,
    /// Layer norm over channels after every convolution (HuBERT large / XLarge).
    Layer,
}

/// Activation functions named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(path: &Path, field: &str, s: &str) -> Result<Self> {
        match s {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            _ => Err(ModelError::config(
                path,
                field,
                format!("unsupported activation `{s}`"),
            )),
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => x.f_gelu("none")?,
            Self::GeluTanh => x.f_gelu("tanh")?,
            Self::Relu => x.f_relu()?,
        })
    }
}

/// The HuBERT config, as the model uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct HubertConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: Activation,
    pub feat_extract_norm: FeatExtractNorm,
    pub feat_extract_activation: Activation,
    pub conv_dim: Vec<i64>,
    pub conv_stride: Vec<i64>,
    pub conv_kernel: Vec<i64>,
    pub conv_bias: bool,
    pub num_conv_pos_embeddings: i64,
    pub num_conv_pos_embedding_groups: i64,
    pub do_stable_layer_norm: bool,
    pub feat_proj_layer_norm: bool,
    pub layer_norm_eps: f64,
}

/// `config.json` keys that change the computation (others, such as dropouts and masking
/// probabilities, only matter in training).
#[derive(Debug, Deserialize)]
struct HfHubertConfig {
    model_type: Option<String>,
    hidden_size: i64,
    num_hidden_layers: usize,
    num_attention_heads: i64,
    intermediate_size: i64,
    #[serde(default = "default_gelu")]
    hidden_act: String,
    #[serde(default = "default_group")]
    feat_extract_norm: String,
    #[serde(default = "default_gelu")]
    feat_extract_activation: String,
    conv_dim: Vec<i64>,
    conv_stride: Vec<i64>,
    conv_kernel: Vec<i64>,
    #[serde(default)]
    conv_bias: bool,
    num_conv_pos_embeddings: i64,
    num_conv_pos_embedding_groups: i64,
    #[serde(default)]
    do_stable_layer_norm: bool,
    #[serde(default = "default_true")]
    feat_proj_layer_norm: bool,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    conv_pos_batch_norm: bool,
    #[serde(default)]
    adapter_attn_dim: Option<i64>,
}

fn default_gelu() -> String {
    "gelu".into()
}
fn default_group() -> String {
    "group".into()
}
fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-5
}

impl HubertConfig {
    /// mHuBERT base (VoxPopuli en/es/fr), the HuBERT-base shape: 12 layers of width 768.
    pub fn mhubert_base() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            feat_extract_norm: FeatExtractNorm::Group,
            feat_extract_activation: Activation::Gelu,
            conv_dim: vec![512; 7],
            conv_stride: vec![5, 2, 2, 2, 2, 2, 2],
            conv_kernel: vec![10, 3, 3, 3, 3, 2, 2],
            conv_bias: false,
            num_conv_pos_embeddings: 128,
            num_conv_pos_embedding_groups: 16,
            do_stable_layer_norm: false,
            feat_proj_layer_norm: true,
            layer_norm_eps: 1e-5,
        }
    }

    /// Reads a transformers `config.json` (HubertModel) and validates it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let hf: HfHubertConfig = crate::checkpoint::read_json(path)?;
        if let Some(t) = &hf.model_type {
            if t != "hubert" {
                return Err(ModelError::config(
                    path,
                    "model_type",
                    format!("`{t}` is not a HuBERT model"),
                ));
            }
        }
        if hf.conv_pos_batch_norm {
            return Err(ModelError::config(
                path,
                "conv_pos_batch_norm",
                "batch-norm positional convolution is not supported",
            ));
        }
        if hf.adapter_attn_dim.is_some() {
            return Err(ModelError::config(
                path,
                "adapter_attn_dim",
                "attention adapters are not supported",
            ));
        }
        let feat_extract_norm = match hf.feat_extract_norm.as_str() {
            "group" => FeatExtractNorm::Group,
            "layer" => FeatExtractNorm::Layer,
            s => {
                return Err(ModelError::config(
                    path,
                    "feat_extract_norm",
                    format!("`{s}` is neither `group` nor `layer`"),
                ))
            }
        };
        let cfg = Self {
            hidden_size: hf.hidden_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            hidden_act: Activation::parse(path, "hidden_act", &hf.hidden_act)?,
            feat_extract_norm,
            feat_extract_activation: Activation::parse(
                path,
                "feat_extract_activation",
                &hf.feat_extract_activation,
            )?,
            conv_dim: hf.conv_dim,
            conv_stride: hf.conv_stride,
            conv_kernel: hf.conv_kernel,
            conv_bias: hf.conv_bias,
            num_conv_pos_embeddings: hf.num_conv_pos_embeddings,
            num_conv_pos_embedding_groups: hf.num_conv_pos_embedding_groups,
            do_stable_layer_norm: hf.do_stable_layer_norm,
            feat_proj_layer_norm: hf.feat_proj_layer_norm,
            layer_norm_eps: hf.layer_norm_eps,
        };
        cfg.validate()
            .map_err(|(f, m)| ModelError::config(path, f, m))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let n = self.conv_dim.len();
        if n == 0 || self.conv_stride.len() != n || self.conv_kernel.len() != n {
            return Err((
                "conv_dim",
                format!(
                    "conv_dim, conv_stride and conv_kernel must be non-empty and of equal length \
                     (got {}, {}, {})",
                    n,
                    self.conv_stride.len(),
                    self.conv_kernel.len()
                ),
            ));
        }
        if self
            .conv_stride
            .iter()
            .chain(&self.conv_kernel)
            .any(|&v| v < 1)
        {
            return Err(("conv_kernel", "strides and kernels must be >= 1".into()));
        }
        if self.num_attention_heads < 1 || self.hidden_size % self.num_attention_heads != 0 {
            return Err((
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.num_conv_pos_embedding_groups < 1
            || self.hidden_size % self.num_conv_pos_embedding_groups != 0
        {
            return Err((
                "num_conv_pos_embedding_groups",
                "must divide hidden_size".into(),
            ));
        }
        Ok(())
    }

    /// Samples between two output frames (320 for HuBERT: 50 Hz at 16 kHz).
    pub fn frame_shift(&self) -> i64 {
        self.conv_stride.iter().product()
    }

    /// Samples that one output frame sees (400 for HuBERT).
    pub fn receptive_field(&self) -> i64 {
        let mut rf = 1;
        let mut jump = 1;
        for (k, s) in self.conv_kernel.iter().zip(&self.conv_stride) {
            rf += (k - 1) * jump;
            jump *= s;
        }
        rf
    }

    /// Output frames for `samples` input samples (0 when shorter than one frame).
    pub fn num_frames(&self, samples: i64) -> i64 {
        let mut t = samples;
        for (k, s) in self.conv_kernel.iter().zip(&self.conv_stride) {
            if t < *k {
                return 0;
            }
            t = (t - k) / s + 1;
        }
        t
    }
}

/// How to load the encoder.
#[derive(Debug, Clone, Copy)]
pub struct HubertLoadOptions {
    pub device: Device,
    pub dtype: Kind,
}

impl Default for HubertLoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: Kind::Float,
        }
    }
}

#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
}

#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    /// Layer norm over the last dimension.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = *x.size().last().unwrap_or(&0);
        Ok(x.f_layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, false)?)
    }
}

#[derive(Debug)]
struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    /// Group norm (one group per channel) or layer norm over channels, eps 1e-5 (torch default).
    norm: Option<(FeatExtractNorm, Norm)>,
}

#[derive(Debug)]
struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm: Norm,
    intermediate_dense: Linear,
    output_dense: Linear,
    final_layer_norm: Norm,
}

/// A HuBERT encoder cut after layer `layer` (weights of later layers are not loaded).
#[derive(Debug)]
pub struct Hubert {
    cfg: HubertConfig,
    layer: usize,
    device: Device,
    dtype: Kind,
    convs: Vec<ConvLayer>,
    proj_layer_norm: Option<Norm>,
    projection: Linear,
    pos_conv_weight: Tensor,
    pos_conv_bias: Tensor,
    /// Post-LN only: applied after adding the positional embedding.
    encoder_layer_norm: Option<Norm>,
    layers: Vec<EncoderLayer>,
}

// SAFETY: the weights are written once in `from_tensors` and only read afterwards (every method
// takes `&self` and no operation is in place); libtorch allows concurrent reads of a tensor, as
// tch's own `CModule` relies on. This lets streams on several threads share one `Arc<Hubert>`.
unsafe impl Sync for Hubert {}

const POS_G_PARAM: &str = "encoder.pos_conv_embed.conv.parametrizations.weight.original0";
const POS_V_PARAM: &str = "encoder.pos_conv_embed.conv.parametrizations.weight.original1";
const POS_G_OLD: &str = "encoder.pos_conv_embed.conv.weight_g";
const POS_V_OLD: &str = "encoder.pos_conv_embed.conv.weight_v";

fn layer_prefix(i: usize) -> String {
    format!("encoder.layers.{i}")
}

impl Hubert {
    /// The tensors needed to compute `hidden_states[layer]`; `old_weight_norm` picks the
    /// `weight_g`/`weight_v` names of transformers < 4.40 instead of the parametrization names.
    pub fn tensor_specs(
        cfg: &HubertConfig,
        layer: usize,
        old_weight_norm: bool,
    ) -> Vec<TensorSpec> {
        let mut s = Vec::new();
        let mut cin = 1;
        for (i, (&cout, &k)) in cfg.conv_dim.iter().zip(&cfg.conv_kernel).enumerate() {
            let p = format!("feature_extractor.conv_layers.{i}");
            s.push(TensorSpec::new(format!("{p}.conv.weight"), &[cout, cin, k]));
            if cfg.conv_bias {
                s.push(TensorSpec::new(format!("{p}.conv.bias"), &[cout]));
            }
            if cfg.feat_extract_norm == FeatExtractNorm::Layer || i == 0 {
                s.push(TensorSpec::new(format!("{p}.layer_norm.weight"), &[cout]));
                s.push(TensorSpec::new(format!("{p}.layer_norm.bias"), &[cout]));
            }
            cin = cout;
        }
        let h = cfg.hidden_size;
        if cfg.feat_proj_layer_norm {
            s.push(TensorSpec::new(
                "feature_projection.layer_norm.weight",
                &[cin],
            ));
            s.push(TensorSpec::new(
                "feature_projection.layer_norm.bias",
                &[cin],
            ));
        }
        s.push(TensorSpec::new(
            "feature_projection.projection.weight",
            &[h, cin],
        ));
        s.push(TensorSpec::new("feature_projection.projection.bias", &[h]));
        let k = cfg.num_conv_pos_embeddings;
        let (g, v) = if old_weight_norm {
            (POS_G_OLD, POS_V_OLD)
        } else {
            (POS_G_PARAM, POS_V_PARAM)
        };
        s.push(TensorSpec::new(g, &[1, 1, k]));
        s.push(TensorSpec::new(
            v,
            &[h, h / cfg.num_conv_pos_embedding_groups, k],
        ));
        s.push(TensorSpec::new("encoder.pos_conv_embed.conv.bias", &[h]));
        if !cfg.do_stable_layer_norm {
            s.push(TensorSpec::new("encoder.layer_norm.weight", &[h]));
            s.push(TensorSpec::new("encoder.layer_norm.bias", &[h]));
        }
        let f = cfg.intermediate_size;
        for i in 0..layer {
            let p = layer_prefix(i);
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                s.push(TensorSpec::new(
                    format!("{p}.attention.{n}.weight"),
                    &[h, h],
                ));
                s.push(TensorSpec::new(format!("{p}.attention.{n}.bias"), &[h]));
            }
            for n in ["layer_norm", "final_layer_norm"] {
                s.push(TensorSpec::new(format!("{p}.{n}.weight"), &[h]));
                s.push(TensorSpec::new(format!("{p}.{n}.bias"), &[h]));
            }
            s.push(TensorSpec::new(
                format!("{p}.feed_forward.intermediate_dense.weight"),
                &[f, h],
            ));
            s.push(TensorSpec::new(
                format!("{p}.feed_forward.intermediate_dense.bias"),
                &[f],
            ));
            s.push(TensorSpec::new(
                format!("{p}.feed_forward.output_dense.weight"),
                &[h, f],
            ));
            s.push(TensorSpec::new(
                format!("{p}.feed_forward.output_dense.bias"),
                &[h],
            ));
        }
        s
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` (or shards) for `hidden_states[layer]`.
    pub fn load(dir: &Path, layer: usize, opts: HubertLoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("hubert_load", dir = %dir.display(), layer).entered();
        let cfg_path = dir.join("config.json");
        let cfg = HubertConfig::from_file(&cfg_path)?;
        if layer > cfg.num_hidden_layers {
            return Err(ModelError::config(
                &cfg_path,
                "num_hidden_layers",
                format!(
                    "layer {layer} requested but the model has {} layers",
                    cfg.num_hidden_layers
                ),
            ));
        }
        let old = uses_old_weight_norm(dir)?;
        let specs = Self::tensor_specs(&cfg, layer, old);
        let n_layers = cfg.num_hidden_layers;
        let stable = cfg.do_stable_layer_norm;
        let ignorable = move |name: &str| -> bool {
            if name == "masked_spec_embed" || (stable && name.starts_with("encoder.layer_norm.")) {
                return true;
            }
            // Layers after the requested one are skipped.
            name.strip_prefix("encoder.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= layer && i < n_layers)
        };
        let tensors = load_checked(dir, &specs, &ignorable, opts.dtype, opts.device)?;
        Self::from_tensors(cfg, layer, tensors, old, opts)
    }

    /// Builds the encoder from named tensors (the names of [`Hubert::tensor_specs`]).
    pub fn from_tensors(
        cfg: HubertConfig,
        layer: usize,
        mut t: HashMap<String, Tensor>,
        old_weight_norm: bool,
        opts: HubertLoadOptions,
    ) -> Result<Self> {
        let mut take = |name: &str| -> Result<Tensor> {
            t.remove(name).ok_or_else(|| {
                ModelError::InvalidArgument(format!("HuBERT tensor `{name}` is missing"))
            })
        };
        let eps = cfg.layer_norm_eps;
        let mut convs = Vec::new();
        for (i, &stride) in cfg.conv_stride.iter().enumerate() {
            let p = format!("feature_extractor.conv_layers.{i}");
            let weight = take(&format!("{p}.conv.weight"))?;
            let bias = if cfg.conv_bias {
                Some(take(&format!("{p}.conv.bias"))?)
            } else {
                None
            };
            let norm = if cfg.feat_extract_norm == FeatExtractNorm::Layer || i == 0 {
                Some((
                    cfg.feat_extract_norm,
                    Norm {
                        weight: take(&format!("{p}.layer_norm.weight"))?,
                        bias: take(&format!("{p}.layer_norm.bias"))?,
                        eps: 1e-5,
                    },
                ))
            } else {
                None
            };
            convs.push(ConvLayer {
                weight,
                bias,
                stride,
                norm,
            });
        }
        let proj_layer_norm = if cfg.feat_proj_layer_norm {
            Some(Norm {
                weight: take("feature_projection.layer_norm.weight")?,
                bias: take("feature_projection.layer_norm.bias")?,
                eps,
            })
        } else {
            None
        };
        let projection = Linear {
            weight: take("feature_projection.projection.weight")?,
            bias: take("feature_projection.projection.bias")?,
        };
        let (gn, vn) = if old_weight_norm {
            (POS_G_OLD, POS_V_OLD)
        } else {
            (POS_G_PARAM, POS_V_PARAM)
        };
        let g = take(gn)?;
        let v = take(vn)?;
        // Weight norm over dim 2 (torch `weight_norm(conv, dim=2)`): w = g * v / |v|, the norm
        // taken over every dimension except the kernel position.
        let vnorm = v
            .f_pow_tensor_scalar(2)?
            .f_sum_dim_intlist([0i64, 1].as_slice(), true, Kind::Float)?
            .f_sqrt()?;
        let pos_conv_weight = (&v * &g / vnorm).f_to_kind(opts.dtype)?;
        let pos_conv_bias = take("encoder.pos_conv_embed.conv.bias")?;
        let encoder_layer_norm = if cfg.do_stable_layer_norm {
            None
        } else {
            Some(Norm {
                weight: take("encoder.layer_norm.weight")?,
                bias: take("encoder.layer_norm.bias")?,
                eps,
            })
        };
        let mut layers = Vec::with_capacity(layer);
        for i in 0..layer {
            let p = layer_prefix(i);
            let mut lin = |n: &str| -> Result<Linear> {
                Ok(Linear {
                    weight: take(&format!("{p}.{n}.weight"))?,
                    bias: take(&format!("{p}.{n}.bias"))?,
                })
            };
            let q_proj = lin("attention.q_proj")?;
            let k_proj = lin("attention.k_proj")?;
            let v_proj = lin("attention.v_proj")?;
            let out_proj = lin("attention.out_proj")?;
            let intermediate_dense = lin("feed_forward.intermediate_dense")?;
            let output_dense = lin("feed_forward.output_dense")?;
            let ln = lin("layer_norm")?;
            let fln = lin("final_layer_norm")?;
            layers.push(EncoderLayer {
                q_proj,
                k_proj,
                v_proj,
                out_proj,
                layer_norm: Norm {
                    weight: ln.weight,
                    bias: ln.bias,
                    eps,
                },
                intermediate_dense,
                output_dense,
                final_layer_norm: Norm {
                    weight: fln.weight,
                    bias: fln.bias,
                    eps,
                },
            });
        }
        Ok(Self {
            cfg,
            layer,
            device: opts.device,
            dtype: opts.dtype,
            convs,
            proj_layer_norm,
            projection,
            pos_conv_weight,
            pos_conv_bias,
            encoder_layer_norm,
            layers,
        })
    }

    /// An encoder with random weights (seeded), for benchmarks of the shape only.
    pub fn random(
        cfg: HubertConfig,
        layer: usize,
        seed: i64,
        opts: HubertLoadOptions,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|(f, m)| ModelError::InvalidArgument(format!("{f}: {m}")))?;
        let layer = layer.min(cfg.num_hidden_layers);
        tch::manual_seed(seed);
        let mut t = HashMap::new();
        for spec in Self::tensor_specs(&cfg, layer, false) {
            let fan_in = if spec.shape.len() >= 2 {
                spec.shape[1..].iter().product::<i64>()
            } else {
                1
            };
            // Drawn on the CPU: a seed gives the same encoder on every device.
            let cpu = (Kind::Float, Device::Cpu);
            let x = if spec.name.ends_with("norm.weight") || spec.name == POS_G_PARAM {
                Tensor::f_ones(spec.shape.as_slice(), cpu)?
            } else if spec.shape.len() == 1 {
                Tensor::f_zeros(spec.shape.as_slice(), cpu)?
            } else {
                Tensor::f_randn(spec.shape.as_slice(), cpu)? * (1.0 / (fan_in as f64).sqrt())
            };
            t.insert(
                spec.name,
                x.f_to_device(opts.device)?.f_to_kind(opts.dtype)?,
            );
        }
        Self::from_tensors(cfg, layer, t, false, opts)
    }

    pub fn config(&self) -> &HubertConfig {
        &self.cfg
    }

    /// The layer whose hidden states [`Hubert::forward`] returns.
    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `hidden_states[layer]` for a batch of waveforms `[B, S]` (or one `[S]`), as `[B, T, D]`
    /// (or `[T, D]`). The waveform must cover at least one frame (the receptive field).
    pub fn forward(&self, wave: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("hubert_forward").entered();
        let single = wave.dim() == 1;
        if wave.dim() != 1 && wave.dim() != 2 {
            return Err(ModelError::InvalidArgument(format!(
                "HuBERT input must be [samples] or [batch, samples], got shape {:?}",
                wave.size()
            )));
        }
        let samples = *wave.size().last().unwrap_or(&0);
        if self.cfg.num_frames(samples) < 1 {
            return Err(ModelError::InvalidArgument(format!(
                "audio of {samples} samples is shorter than HuBERT's receptive field of {} samples",
                self.cfg.receptive_field()
            )));
        }
        let x = if single {
            wave.f_unsqueeze(0)?
        } else {
            wave.shallow_clone()
        };
        let x = x.f_to_device(self.device)?.f_to_kind(self.dtype)?;
        let mut h = self.features(&x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("hubert_layer", layer = i).entered();
            h = self.encoder_layer(layer, &h)?;
        }
        Ok(if single { h.f_squeeze_dim(0)? } else { h })
    }

    /// Conv feature extractor, projection and positional embedding: `hidden_states[0]`.
    fn features(&self, wave: &Tensor) -> Result<Tensor> {
        let act = self.cfg.feat_extract_activation;
        let mut x = wave.f_unsqueeze(1)?;
        for conv in &self.convs {
            x = x.f_conv1d(&conv.weight, conv.bias.as_ref(), [conv.stride], [0], [1], 1)?;
            if let Some((kind, norm)) = &conv.norm {
                x = match kind {
                    FeatExtractNorm::Group => {
                        let c = x.size()[1];
                        x.f_group_norm(c, Some(&norm.weight), Some(&norm.bias), norm.eps, false)?
                    }
                    FeatExtractNorm::Layer => {
                        norm.forward(&x.f_transpose(1, 2)?)?.f_transpose(1, 2)?
                    }
                };
            }
            x = act.apply(&x)?;
        }
        let mut h = x.f_transpose(1, 2)?;
        if let Some(ln) = &self.proj_layer_norm {
            h = ln.forward(&h)?;
        }
        let h = self.projection.forward(&h)?;
        // Positional convolution: same padding (one frame trimmed for an even kernel), GELU.
        let k = self.cfg.num_conv_pos_embeddings;
        let t = h.size()[1];
        let pos = h.f_transpose(1, 2)?.f_conv1d(
            &self.pos_conv_weight,
            Some(&self.pos_conv_bias),
            [1],
            [k / 2],
            [1],
            self.cfg.num_conv_pos_embedding_groups,
        )?;
        let pos = pos.f_narrow(2, 0, t)?;
        let pos = self
            .cfg
            .feat_extract_activation
            .apply(&pos)?
            .f_transpose(1, 2)?;
        let h = h + pos;
        match &self.encoder_layer_norm {
            Some(ln) => ln.forward(&h),
            None => Ok(h),
        }
    }

    fn attention(&self, l: &EncoderLayer, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.size3()?;
        let nh = self.cfg.num_attention_heads;
        let hd = d / nh;
        let heads =
            |y: Tensor| -> Result<Tensor> { Ok(y.f_view([b, t, nh, hd])?.f_transpose(1, 2)?) };
        let q = heads(l.q_proj.forward(x)? * (1.0 / (hd as f64).sqrt()))?;
        let k = heads(l.k_proj.forward(x)?)?;
        let v = heads(l.v_proj.forward(x)?)?;
        let w = q
            .f_matmul(&k.f_transpose(2, 3)?)?
            .f_softmax(-1, None::<Kind>)?;
        let o = w.f_matmul(&v)?.f_transpose(1, 2)?.f_reshape([b, t, d])?;
        l.out_proj.forward(&o)
    }

    fn feed_forward(&self, l: &EncoderLayer, x: &Tensor) -> Result<Tensor> {
        let y = self
            .cfg
            .hidden_act
            .apply(&l.intermediate_dense.forward(x)?)?;
        l.output_dense.forward(&y)
    }

    fn encoder_layer(&self, l: &EncoderLayer, x: &Tensor) -> Result<Tensor> {
        if self.cfg.do_stable_layer_norm {
            let h = x + self.attention(l, &l.layer_norm.forward(x)?)?;
            let f = self.feed_forward(l, &l.final_layer_norm.forward(&h)?)?;
            Ok(h + f)
        } else {
            let h = l.layer_norm.forward(&(x + self.attention(l, x)?))?;
            let f = self.feed_forward(l, &h)?;
            l.final_layer_norm.forward(&(h + f))
        }
    }
}

/// Whether the checkpoint stores the positional conv weight norm as `weight_g`/`weight_v`
/// (transformers < 4.40, and our fairseq converter's input) rather than parametrizations.
fn uses_old_weight_norm(dir: &Path) -> Result<bool> {
    for file in checkpoint_files(dir)? {
        let f = std::fs::File::open(&file).map_err(|e| ModelError::io(&file, e))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(&file, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
            ModelError::Safetensors {
                path: file.clone(),
                message: e.to_string(),
            }
        })?;
        if meta.tensors().contains_key(POS_G_OLD) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {

    /// The mHuBERT-base layout at toy widths, for fast tests here and in `extractor`.
    pub(crate) fn tiny_test_config() -> HubertConfig {
        let mut c = HubertConfig::mhubert_base();
        c.hidden_size = 32;
        c.num_attention_heads = 4;
        c.intermediate_size = 64;
        c.conv_dim = vec![16; 7];
        c.num_conv_pos_embeddings = 16;
        c.num_conv_pos_embedding_groups = 4;
        c
    }
    use super::*;

    #[test]
    fn frame_arithmetic_of_mhubert() {
        let c = HubertConfig::mhubert_base();
        assert_eq!(c.frame_shift(), 320);
        assert_eq!(c.receptive_field(), 400);
        assert_eq!(c.num_frames(399), 0);
        assert_eq!(c.num_frames(400), 1);
        assert_eq!(c.num_frames(16000), 49);
        // num_frames agrees with the closed form for a 400/320 encoder.
        for s in [400, 719, 720, 12345, 32000] {
            assert_eq!(c.num_frames(s), (s - 400) / 320 + 1, "{s}");
        }
    }

    #[test]
    fn short_audio_is_an_error_not_a_panic() {
        let c = tiny_test_config();
        let m = Hubert::random(c, 2, 0, HubertLoadOptions::default()).unwrap();
        for n in [0i64, 1, 399] {
            let w = Tensor::zeros([n], (Kind::Float, Device::Cpu));
            let e = m.forward(&w).unwrap_err().to_string();
            assert!(e.contains("receptive field"), "{e}");
        }
        let w = Tensor::randn([800], (Kind::Float, Device::Cpu));
        assert_eq!(m.forward(&w).unwrap().size(), vec![2, 32]);
    }
}
