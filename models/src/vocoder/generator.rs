//! The unit HiFi-GAN generator (fairseq CodeHiFiGAN): unit embedding `dict`, optional duration
//! predictor and speaker embedding, `conv_pre` (k7), per upsampling stage a leaky ReLU (0.1), a
//! ConvTranspose1d `ups.i` and the mean of the multi-receptive-field residual blocks
//! `resblocks.{i*K+j}`, then a leaky ReLU with slope 0.01, `conv_post` (k7) and tanh.
//! Tensor names are fairseq's with weight norm folded (see `models/convert/fairseq_vocoder.py`).
//!
//! Reference: fairseq `fairseq/models/text_to_speech/hifigan.py` (Generator, ResBlock1/2),
//! `codehifigan.py` (CodeGenerator), `vocoder.py` (CodeHiFiGANVocoder: negative codes dropped);
//! HiFi-GAN, Kong et al. 2020.

use super::config::{ResBlockKind, SpeakerConditioning, VocoderConfig};
use super::duration::{durations_from_log, VariancePredictor};
use super::layers::{leaky_relu, Conv1d, ConvTranspose1d, ResBlock, LRELU_SLOPE, LRELU_SLOPE_POST};
use crate::checkpoint::{load_checked, TensorSpec};
use crate::{ModelError, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The speaker of a multi-speaker vocoder.
#[derive(Debug, Clone, PartialEq)]
pub enum Speaker {
    /// A row of the `spkr.weight` table (`SpeakerConditioning::Table`).
    Id(i64),
    /// An external speaker vector of `embedder_dim` values (`SpeakerConditioning::Embedder`).
    Vector(Vec<f32>),
}

#[derive(Debug)]
enum SpeakerLayer {
    Table(Tensor),
    Embedder { weight: Tensor, bias: Tensor },
}

/// How to synthesise.
#[derive(Debug, Default)]
pub struct SynthesisOptions {
    /// Units are deduplicated and the duration predictor says how many frames each lasts
    /// (fairseq `dur_prediction=True`). Without it every unit is one frame.
    pub dur_prediction: bool,
    /// Required by multi-speaker vocoders, refused by the others.
    pub speaker: Option<Speaker>,
}

/// A unit vocoder's weights (shared by any number of streams, see [`super::VocoderStream`]).
#[derive(Debug)]
pub struct CodeHiFiGan {
    config: VocoderConfig,
    device: Device,
    kind: Kind,
    pub(crate) dict: Tensor,
    speaker: Option<SpeakerLayer>,
    pub(crate) dur_predictor: Option<VariancePredictor>,
    pub(crate) conv_pre: Conv1d,
    pub(crate) ups: Vec<ConvTranspose1d>,
    pub(crate) resblocks: Vec<ResBlock>,
    pub(crate) conv_post: Conv1d,
}

// SAFETY: the weights are never mutated after construction (synthesis and streaming create new
// tensors; stream buffers belong to each VocoderStream). libtorch tensors may be read from several
// threads at once.
unsafe impl Sync for CodeHiFiGan {}

/// The tensors a config implies, with fairseq's names and shapes (weight norm folded).
pub fn tensor_specs(cfg: &VocoderConfig) -> Vec<TensorSpec> {
    let mut s = vec![TensorSpec::new(
        "dict.weight",
        &[cfg.num_embeddings, cfg.embedding_dim],
    )];
    match cfg.speaker {
        Some(SpeakerConditioning::Table { num_speakers }) => s.push(TensorSpec::new(
            "spkr.weight",
            &[num_speakers, cfg.embedding_dim],
        )),
        Some(SpeakerConditioning::Embedder { embedder_dim }) => {
            s.push(TensorSpec::new(
                "spkr.weight",
                &[cfg.embedding_dim, embedder_dim],
            ));
            s.push(TensorSpec::new("spkr.bias", &[cfg.embedding_dim]));
        }
        None => {}
    }
    if let Some(dp) = &cfg.duration_predictor {
        s.extend(VariancePredictor::specs(dp, "dur_predictor"));
    }
    let c0 = cfg.upsample_initial_channel;
    s.push(TensorSpec::new(
        "conv_pre.weight",
        &[c0, cfg.model_in_dim, 7],
    ));
    s.push(TensorSpec::new("conv_pre.bias", &[c0]));
    for (i, k) in cfg.upsample_kernel_sizes.iter().enumerate() {
        let (cin, cout) = (c0 >> i, cfg.stage_channels(i));
        s.push(TensorSpec::new(format!("ups.{i}.weight"), &[cin, cout, *k]));
        s.push(TensorSpec::new(format!("ups.{i}.bias"), &[cout]));
    }
    let nk = cfg.resblock_kernel_sizes.len();
    for i in 0..cfg.upsample_rates.len() {
        let ch = cfg.stage_channels(i);
        for (j, k) in cfg.resblock_kernel_sizes.iter().enumerate() {
            let b = i * nk + j;
            let groups: &[&str] = match cfg.resblock {
                ResBlockKind::One => &["convs1", "convs2"],
                ResBlockKind::Two => &["convs"],
            };
            let n = match cfg.resblock {
                ResBlockKind::One => 3,
                ResBlockKind::Two => 2,
            };
            for g in groups {
                for m in 0..n {
                    s.push(TensorSpec::new(
                        format!("resblocks.{b}.{g}.{m}.weight"),
                        &[ch, ch, *k],
                    ));
                    s.push(TensorSpec::new(
                        format!("resblocks.{b}.{g}.{m}.bias"),
                        &[ch],
                    ));
                }
            }
        }
    }
    let last = cfg.stage_channels(cfg.upsample_rates.len() - 1);
    s.push(TensorSpec::new("conv_post.weight", &[1, last, 7]));
    s.push(TensorSpec::new("conv_post.bias", &[1]));
    s
}

impl CodeHiFiGan {
    /// Loads `dir/config.json` (fairseq's vocoder config) and `dir/model.safetensors`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = VocoderConfig::from_file(&dir.join("config.json"))?;
        Self::load_with_config(dir, config, device, kind)
    }

    /// Loads the weights of `dir` for `config`; every missing, unexpected or mis-shaped tensor
    /// is reported by name (a config that does not match the checkpoint fails here).
    pub fn load_with_config(
        dir: &Path,
        config: VocoderConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let _span = tracing::info_span!("vocoder_load", dir = %dir.display()).entered();
        config.validate(&dir.join("config.json"))?;
        let specs = tensor_specs(&config);
        let tensors = load_checked(dir, &specs, &|_| false, kind, device)?;
        Self::from_tensors(config, tensors, device, kind)
    }

    /// Builds the model from tensors named and shaped as [`tensor_specs`] says.
    pub fn from_tensors(
        config: VocoderConfig,
        mut t: HashMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let specs = tensor_specs(&config);
        for spec in &specs {
            match t.get(&spec.name) {
                Some(x) if x.size() == spec.shape => {}
                Some(x) => {
                    return Err(ModelError::InvalidArgument(format!(
                        "tensor `{}` has shape {:?}, expected {:?}",
                        spec.name,
                        x.size(),
                        spec.shape
                    )))
                }
                None => {
                    return Err(ModelError::InvalidArgument(format!(
                        "tensor `{}` is missing",
                        spec.name
                    )))
                }
            }
        }
        let mut take = |n: &str| t.remove(n).expect("checked above");
        let speaker = match config.speaker {
            Some(SpeakerConditioning::Table { .. }) => {
                Some(SpeakerLayer::Table(take("spkr.weight")))
            }
            Some(SpeakerConditioning::Embedder { .. }) => Some(SpeakerLayer::Embedder {
                weight: take("spkr.weight"),
                bias: take("spkr.bias"),
            }),
            None => None,
        };
        let dict = take("dict.weight");
        let conv_pre = Conv1d::new(take("conv_pre.weight"), Some(take("conv_pre.bias")), 1, 3);
        let mut ups = Vec::new();
        for (i, (u, k)) in config
            .upsample_rates
            .iter()
            .zip(&config.upsample_kernel_sizes)
            .enumerate()
        {
            ups.push(ConvTranspose1d {
                weight: take(&format!("ups.{i}.weight")),
                bias: take(&format!("ups.{i}.bias")),
                stride: *u,
                padding: (k - u) / 2,
            });
        }
        let nk = config.resblock_kernel_sizes.len();
        let mut resblocks = Vec::new();
        for i in 0..config.upsample_rates.len() {
            for (j, (k, ds)) in config
                .resblock_kernel_sizes
                .iter()
                .zip(&config.resblock_dilation_sizes)
                .enumerate()
            {
                let b = i * nk + j;
                let mut conv = |g: &str, m: usize, d: i64| {
                    Conv1d::new(
                        take(&format!("resblocks.{b}.{g}.{m}.weight")),
                        Some(take(&format!("resblocks.{b}.{g}.{m}.bias"))),
                        d,
                        d * (k - 1) / 2,
                    )
                };
                resblocks.push(match config.resblock {
                    ResBlockKind::One => {
                        let convs1 = (0..3).map(|m| conv("convs1", m, ds[m])).collect();
                        let convs2 = (0..3).map(|m| conv("convs2", m, 1)).collect();
                        ResBlock::One { convs1, convs2 }
                    }
                    ResBlockKind::Two => ResBlock::Two {
                        convs: (0..2).map(|m| conv("convs", m, ds[m])).collect(),
                    },
                });
            }
        }
        let conv_post = Conv1d::new(take("conv_post.weight"), Some(take("conv_post.bias")), 1, 3);
        let dur_predictor = config
            .duration_predictor
            .as_ref()
            .map(|dp| VariancePredictor::from_tensors(dp, "dur_predictor", &mut t));
        Ok(Self {
            config,
            device,
            kind,
            dict,
            speaker,
            dur_predictor,
            conv_pre,
            ups,
            resblocks,
            conv_post,
        })
    }

    pub fn config(&self) -> &VocoderConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Output samples per frame (320 for the mHuBERT vocoders).
    pub fn hop_length(&self) -> i64 {
        self.config.hop_length()
    }

    pub fn sampling_rate(&self) -> i64 {
        self.config.sampling_rate
    }

    pub fn has_duration_predictor(&self) -> bool {
        self.dur_predictor.is_some()
    }

    /// Drops negative ids (padding, as fairseq's vocoder does) and checks the others are in
    /// range. Returns the kept ids.
    pub fn clean_units(&self, units: &[i64]) -> Result<Vec<i64>> {
        let n = self.config.num_embeddings;
        let mut kept = Vec::with_capacity(units.len());
        for (i, &u) in units.iter().enumerate() {
            if u >= n {
                return Err(ModelError::InvalidArgument(format!(
                    "unit id {u} at position {i} is out of range: this vocoder has {n} units (0..{})",
                    n - 1
                )));
            }
            if u >= 0 {
                kept.push(u);
            }
        }
        Ok(kept)
    }

    /// Unit embeddings (1, embedding_dim, T) of in-range ids.
    pub(crate) fn embed(&self, ids: &[i64]) -> Result<Tensor> {
        let idx = Tensor::from_slice(ids).f_to_device(self.device)?;
        Ok(self
            .dict
            .f_index_select(0, &idx)?
            .f_transpose(0, 1)?
            .f_unsqueeze(0)?)
    }

    /// The speaker vector (1, embedding_dim, 1), checked against the config.
    pub(crate) fn speaker_vector(&self, speaker: Option<&Speaker>) -> Result<Option<Tensor>> {
        let v = match (&self.speaker, speaker) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return Err(ModelError::InvalidArgument(
                    "a speaker was given but this vocoder is single-speaker".into(),
                ))
            }
            (Some(_), None) => {
                return Err(ModelError::InvalidArgument(
                    "this vocoder is multi-speaker: a speaker is required".into(),
                ))
            }
            (Some(SpeakerLayer::Table(table)), Some(Speaker::Id(id))) => {
                let n = table.size()[0];
                if *id < 0 || *id >= n {
                    return Err(ModelError::InvalidArgument(format!(
                        "speaker id {id} is out of range 0..{}",
                        n - 1
                    )));
                }
                table.f_get(*id)?
            }
            (Some(SpeakerLayer::Embedder { weight, bias }), Some(Speaker::Vector(v))) => {
                let dim = weight.size()[1];
                if v.len() as i64 != dim {
                    return Err(ModelError::InvalidArgument(format!(
                        "speaker vector has {} values, the vocoder's embedder takes {dim}",
                        v.len()
                    )));
                }
                Tensor::from_slice(v)
                    .f_to_device(self.device)?
                    .f_to_kind(self.kind)?
                    .f_linear(weight, Some(bias))?
            }
            (Some(SpeakerLayer::Table(_)), Some(Speaker::Vector(_))) => {
                return Err(ModelError::InvalidArgument(
                    "this vocoder takes a speaker id, not a speaker vector".into(),
                ))
            }
            (Some(SpeakerLayer::Embedder { .. }), Some(Speaker::Id(_))) => {
                return Err(ModelError::InvalidArgument(
                    "this vocoder takes a speaker vector, not a speaker id".into(),
                ))
            }
        };
        Ok(Some(v.f_view([1, -1, 1])?))
    }

    /// Appends the speaker vector to every frame: (1, E, T) -> (1, 2E, T).
    pub(crate) fn add_speaker(x: &Tensor, spk: Option<&Tensor>) -> Result<Tensor> {
        match spk {
            None => Ok(x.shallow_clone()),
            Some(s) => {
                let t = x.size()[2];
                let s = s.f_expand([1, -1, t], false)?;
                Ok(Tensor::f_cat(&[x, &s], 1)?)
            }
        }
    }

    /// Waveform (1-D, `hop_length` samples per frame) of a unit sequence. Negative ids are
    /// dropped; an empty sequence gives an empty waveform; ids >= num_embeddings are an error.
    pub fn synthesize(&self, units: &[i64], opts: &SynthesisOptions) -> Result<Tensor> {
        Ok(self.synthesize_with_durations(units, opts)?.0)
    }

    /// As [`Self::synthesize`], also returning the frames per unit (all 1 without duration
    /// prediction).
    pub fn synthesize_with_durations(
        &self,
        units: &[i64],
        opts: &SynthesisOptions,
    ) -> Result<(Tensor, Vec<i64>)> {
        let _span = tracing::info_span!("vocoder_synthesize", units = units.len()).entered();
        let _guard = tch::no_grad_guard();
        if opts.dur_prediction && self.dur_predictor.is_none() {
            return Err(ModelError::InvalidArgument(
                "duration prediction was asked for but this vocoder has no duration predictor"
                    .into(),
            ));
        }
        let spk = self.speaker_vector(opts.speaker.as_ref())?;
        let ids = self.clean_units(units)?;
        if ids.is_empty() {
            let empty = Tensor::f_zeros([0], (self.kind, self.device))?;
            return Ok((empty, Vec::new()));
        }
        let mut x = self.embed(&ids)?;
        let durations = match (&self.dur_predictor, opts.dur_prediction) {
            (Some(dp), true) => {
                let d = durations_from_log(&dp.forward(&x)?)?.f_view([-1])?;
                x = x.f_repeat_interleave_self_tensor(&d, 2, None)?;
                Vec::<i64>::try_from(&d.f_to_device(Device::Cpu)?)?
            }
            _ => vec![1; ids.len()],
        };
        let x = Self::add_speaker(&x, spk.as_ref())?;
        let wav = self.forward_frames(&x)?;
        Ok((wav.f_view([-1])?, durations))
    }

    /// The generator proper on frame features (batch, model_in_dim, frames) -> waveform
    /// (batch, 1, frames * hop_length). Differentiable if the weights require grad.
    pub fn forward_frames(&self, x: &Tensor) -> Result<Tensor> {
        let nk = self.config.resblock_kernel_sizes.len();
        let mut x = self.conv_pre.forward(x)?;
        for (i, up) in self.ups.iter().enumerate() {
            x = up.forward(&leaky_relu(&x, LRELU_SLOPE)?)?;
            let mut xs = self.resblocks[i * nk].forward(&x)?;
            for j in 1..nk {
                xs = xs.f_add(&self.resblocks[i * nk + j].forward(&x)?)?;
            }
            x = xs.f_div_scalar(nk as f64)?;
        }
        let x = self.conv_post.forward(&leaky_relu(&x, LRELU_SLOPE_POST)?)?;
        Ok(x.f_tanh()?)
    }
}
