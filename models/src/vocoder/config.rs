//! Vocoder configuration: fairseq's CodeHiFiGAN `config.json` (as shipped next to the
//! `g_00500000` checkpoints), turned into a plain [`VocoderConfig`] with every default resolved.
//! Keys that only matter for training are ignored; keys that enable features we do not implement
//! (f0 conditioning, quantised f0, extra conditioning streams) and unknown keys are errors: a
//! vocoder we do not understand must not load silently.
//!
//! Reference: fairseq `fairseq/models/text_to_speech/{hifigan,codehifigan}.py`.

use crate::{ModelError, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

/// Keys of the fairseq/speech-resynthesis training configs that do not change inference.
const TRAINING_KEYS: &[&str] = &[
    "num_gpus",
    "batch_size",
    "learning_rate",
    "adam_b1",
    "adam_b2",
    "lr_decay",
    "seed",
    "segment_size",
    "code_hop_size",
    "num_mels",
    "num_freq",
    "n_fft",
    "hop_size",
    "win_size",
    "fmin",
    "fmax",
    "fmax_for_loss",
    "num_workers",
    "dist_config",
    "dur_prediction_weight",
    "training_epochs",
    "stdout_interval",
    "checkpoint_interval",
    "summary_interval",
    "validation_interval",
    "fine_tuning",
    "input_training_file",
    "input_validation_file",
    "multispkr_count",
    "pad",
    "f0_stats",
    "f0_normalize",
    "f0_feats",
    "f0_median",
    "f0_interp",
    "f0_vq_params",
    "code_vq_params",
    "lambda_commit",
    "vqvae",
];

/// Which residual block the multi-receptive-field fusion uses (HiFi-GAN "1" or "2").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResBlockKind {
    /// Pairs of (dilated conv, conv), three per block.
    One,
    /// Single dilated convs, two per block.
    Two,
}

/// fairseq `dur_predictor_params` (FastSpeech 2 VariancePredictor).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DurationPredictorConfig {
    pub encoder_embed_dim: i64,
    pub var_pred_hidden_dim: i64,
    pub var_pred_kernel_size: i64,
    /// Training only (dropout is off at inference).
    #[serde(default)]
    pub var_pred_dropout: f64,
}

/// How a multi-speaker vocoder gets its speaker vector (`spkr.*` tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeakerConditioning {
    /// `spkr.weight` is an embedding table of `num_speakers` rows; the input is a speaker id.
    Table { num_speakers: i64 },
    /// `spkr.{weight,bias}` is a linear map from an external speaker vector of `embedder_dim`.
    Embedder { embedder_dim: i64 },
}

/// What the model code needs.
#[derive(Debug, Clone, PartialEq)]
pub struct VocoderConfig {
    pub num_embeddings: i64,
    pub embedding_dim: i64,
    pub model_in_dim: i64,
    pub upsample_rates: Vec<i64>,
    pub upsample_kernel_sizes: Vec<i64>,
    pub upsample_initial_channel: i64,
    pub resblock: ResBlockKind,
    pub resblock_kernel_sizes: Vec<i64>,
    pub resblock_dilation_sizes: Vec<Vec<i64>>,
    pub sampling_rate: i64,
    pub duration_predictor: Option<DurationPredictorConfig>,
    pub speaker: Option<SpeakerConditioning>,
}

impl Default for VocoderConfig {
    fn default() -> Self {
        Self::mhubert()
    }
}

/// The keys of fairseq's config.json that shape the generator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FairseqVocoderConfig {
    resblock: Option<Value>,
    upsample_rates: Option<Vec<i64>>,
    upsample_kernel_sizes: Option<Vec<i64>>,
    upsample_initial_channel: Option<i64>,
    resblock_kernel_sizes: Option<Vec<i64>>,
    resblock_dilation_sizes: Option<Vec<Vec<i64>>>,
    num_embeddings: Option<i64>,
    embedding_dim: Option<i64>,
    model_in_dim: Option<i64>,
    sampling_rate: Option<i64>,
    dur_predictor_params: Option<DurationPredictorConfig>,
    multispkr: Option<Value>,
    num_speakers: Option<i64>,
    embedder_params: Option<Value>,
    embedder_dim: Option<i64>,
    f0: Option<bool>,
    f0_quant_num_bin: Option<i64>,
    multistyle: Option<Value>,
}

impl VocoderConfig {
    /// fairseq's mHuBERT (vp_en_es_fr, layer 11, k-means 1000) unit vocoders: 320 samples per
    /// unit at 16 kHz, with a duration predictor.
    pub fn mhubert() -> Self {
        Self {
            num_embeddings: 1000,
            embedding_dim: 128,
            model_in_dim: 128,
            upsample_rates: vec![5, 4, 4, 2, 2],
            upsample_kernel_sizes: vec![11, 8, 8, 4, 4],
            upsample_initial_channel: 512,
            resblock: ResBlockKind::One,
            resblock_kernel_sizes: vec![3, 7, 11],
            resblock_dilation_sizes: vec![vec![1, 3, 5]; 3],
            sampling_rate: 16000,
            duration_predictor: Some(DurationPredictorConfig {
                encoder_embed_dim: 128,
                var_pred_hidden_dim: 128,
                var_pred_kernel_size: 3,
                var_pred_dropout: 0.5,
            }),
            speaker: None,
        }
    }

    /// The mHuBERT vocoder with fewer channels (`upsample_initial_channel` 128): a cheap model
    /// for benchmarks and training experiments.
    pub fn mhubert_small() -> Self {
        Self {
            upsample_initial_channel: 128,
            ..Self::mhubert()
        }
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = crate::checkpoint::read_json(path)?;
        Self::from_json(&value, path)
    }

    /// Parses a fairseq vocoder `config.json`; missing keys take the mHuBERT vocoder's values.
    /// `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| ModelError::config(path, "<root>", "not a JSON object"))?;
        let model: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !TRAINING_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let raw: FairseqVocoderConfig =
            serde_json::from_value(Value::Object(model)).map_err(|e| {
                ModelError::config(
                    path,
                    "<model keys>",
                    format!("{e} (not a CodeHiFiGAN config?)"),
                )
            })?;
        let d = Self::mhubert();
        let resblock = match &raw.resblock {
            None => d.resblock,
            Some(v) => match v
                .as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
            {
                Some(s) if s == "1" => ResBlockKind::One,
                Some(s) if s == "2" => ResBlockKind::Two,
                _ => {
                    return Err(ModelError::config(
                        path,
                        "resblock",
                        format!("{v} is not \"1\" or \"2\""),
                    ))
                }
            },
        };
        if raw.f0 == Some(true) {
            return Err(ModelError::config(
                path,
                "f0",
                "f0-conditioned vocoders are not supported",
            ));
        }
        if raw.f0_quant_num_bin.unwrap_or(0) > 0 {
            return Err(ModelError::config(
                path,
                "f0_quant_num_bin",
                "quantised f0 is not supported",
            ));
        }
        if truthy(raw.multistyle.as_ref()) {
            return Err(ModelError::config(
                path,
                "multistyle",
                "style conditioning is not supported",
            ));
        }
        let embedding_dim = raw.embedding_dim.unwrap_or(d.embedding_dim);
        let speaker = if truthy(raw.multispkr.as_ref()) {
            if truthy(raw.embedder_params.as_ref()) {
                Some(SpeakerConditioning::Embedder {
                    embedder_dim: raw.embedder_dim.unwrap_or(256),
                })
            } else {
                // fairseq's default table size.
                Some(SpeakerConditioning::Table {
                    num_speakers: raw.num_speakers.unwrap_or(200),
                })
            }
        } else {
            None
        };
        let cfg = Self {
            num_embeddings: raw.num_embeddings.unwrap_or(d.num_embeddings),
            embedding_dim,
            // fairseq's Generator defaults model_in_dim to 80 (mel input); a unit vocoder always
            // sets it, so the unit default is the embedding (plus speaker) width.
            model_in_dim: raw.model_in_dim.unwrap_or(if speaker.is_some() {
                2 * embedding_dim
            } else {
                embedding_dim
            }),
            upsample_rates: raw.upsample_rates.unwrap_or(d.upsample_rates),
            upsample_kernel_sizes: raw.upsample_kernel_sizes.unwrap_or(d.upsample_kernel_sizes),
            upsample_initial_channel: raw
                .upsample_initial_channel
                .unwrap_or(d.upsample_initial_channel),
            resblock,
            resblock_kernel_sizes: raw.resblock_kernel_sizes.unwrap_or(d.resblock_kernel_sizes),
            resblock_dilation_sizes: raw
                .resblock_dilation_sizes
                .unwrap_or(d.resblock_dilation_sizes),
            sampling_rate: raw.sampling_rate.unwrap_or(d.sampling_rate),
            duration_predictor: raw.dur_predictor_params,
            speaker,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// fairseq's `config.json` for this config (the keys [`Self::from_json`] reads back to an
    /// equal config): what a trained vocoder folder holds beside `model.safetensors`.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "resblock": match self.resblock {
                ResBlockKind::One => "1",
                ResBlockKind::Two => "2",
            },
            "upsample_rates": self.upsample_rates,
            "upsample_kernel_sizes": self.upsample_kernel_sizes,
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": self.resblock_kernel_sizes,
            "resblock_dilation_sizes": self.resblock_dilation_sizes,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "model_in_dim": self.model_in_dim,
            "sampling_rate": self.sampling_rate,
            "code_hop_size": self.hop_length(),
            "f0": false,
        });
        let obj = v.as_object_mut().expect("an object");
        if let Some(dp) = &self.duration_predictor {
            obj.insert(
                "dur_predictor_params".into(),
                serde_json::json!({
                    "encoder_embed_dim": dp.encoder_embed_dim,
                    "var_pred_hidden_dim": dp.var_pred_hidden_dim,
                    "var_pred_kernel_size": dp.var_pred_kernel_size,
                    "var_pred_dropout": dp.var_pred_dropout,
                }),
            );
        }
        match self.speaker {
            Some(SpeakerConditioning::Table { num_speakers }) => {
                obj.insert("multispkr".into(), Value::Bool(true));
                obj.insert("num_speakers".into(), num_speakers.into());
            }
            Some(SpeakerConditioning::Embedder { embedder_dim }) => {
                obj.insert("multispkr".into(), Value::Bool(true));
                obj.insert(
                    "embedder_params".into(),
                    serde_json::json!({"embedder_dim": embedder_dim}),
                );
                obj.insert("embedder_dim".into(), embedder_dim.into());
            }
            None => {}
        }
        v
    }

    /// Checks that the numbers describe a generator we can build and stream.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Err(ModelError::config(path, field, msg));
        if self.num_embeddings < 1 || self.embedding_dim < 1 {
            return bad(
                "num_embeddings",
                "num_embeddings and embedding_dim must be >= 1".into(),
            );
        }
        let want_in = self.embedding_dim * if self.speaker.is_some() { 2 } else { 1 };
        if self.model_in_dim != want_in {
            return bad(
                "model_in_dim",
                format!(
                    "{} but the unit embedding (and speaker) give {want_in}",
                    self.model_in_dim
                ),
            );
        }
        if self.upsample_rates.is_empty()
            || self.upsample_rates.len() != self.upsample_kernel_sizes.len()
        {
            return bad(
                "upsample_rates",
                "upsample_rates and upsample_kernel_sizes must be non-empty and of equal length"
                    .into(),
            );
        }
        for (u, k) in self.upsample_rates.iter().zip(&self.upsample_kernel_sizes) {
            if *u < 1 || k < u || (k - u) % 2 != 0 {
                return bad(
                    "upsample_kernel_sizes",
                    format!("kernel {k} with rate {u}: need kernel >= rate and kernel - rate even"),
                );
            }
        }
        let n = self.upsample_rates.len() as u32;
        if self.upsample_initial_channel < 1 || self.upsample_initial_channel % 2i64.pow(n) != 0 {
            return bad(
                "upsample_initial_channel",
                format!(
                    "{} is not divisible by 2^{n}",
                    self.upsample_initial_channel
                ),
            );
        }
        if self.resblock_kernel_sizes.is_empty()
            || self.resblock_kernel_sizes.len() != self.resblock_dilation_sizes.len()
        {
            return bad(
                "resblock_kernel_sizes",
                "resblock_kernel_sizes and resblock_dilation_sizes must be non-empty and of equal length"
                    .into(),
            );
        }
        let per_block = match self.resblock {
            ResBlockKind::One => 3,
            ResBlockKind::Two => 2,
        };
        for (k, ds) in self
            .resblock_kernel_sizes
            .iter()
            .zip(&self.resblock_dilation_sizes)
        {
            if k % 2 == 0 || *k < 1 {
                return bad("resblock_kernel_sizes", format!("kernel {k} is not odd"));
            }
            if ds.len() < per_block || ds.iter().any(|d| *d < 1) {
                return bad(
                    "resblock_dilation_sizes",
                    format!("{ds:?}: resblock {per_block} needs {per_block} dilations >= 1"),
                );
            }
        }
        if let Some(dp) = &self.duration_predictor {
            if dp.encoder_embed_dim != self.embedding_dim {
                return bad(
                    "dur_predictor_params.encoder_embed_dim",
                    format!(
                        "{} but embedding_dim is {}",
                        dp.encoder_embed_dim, self.embedding_dim
                    ),
                );
            }
            if dp.var_pred_kernel_size % 2 == 0 || dp.var_pred_hidden_dim < 1 {
                return bad(
                    "dur_predictor_params.var_pred_kernel_size",
                    format!("kernel {} must be odd", dp.var_pred_kernel_size),
                );
            }
        }
        if self.sampling_rate < 1 {
            return bad("sampling_rate", format!("{}", self.sampling_rate));
        }
        Ok(())
    }

    /// Output samples per input frame (the product of the upsampling rates).
    pub fn hop_length(&self) -> i64 {
        self.upsample_rates.iter().product()
    }

    /// Channels after upsampling stage `i` (0-based).
    pub fn stage_channels(&self, i: usize) -> i64 {
        self.upsample_initial_channel >> (i + 1)
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mhubert_config_json_parses_to_the_preset() {
        let v = json!({
            "resblock": "1", "num_gpus": 0, "batch_size": 16, "learning_rate": 0.0002,
            "upsample_rates": [5, 4, 4, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4],
            "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "num_embeddings": 1000, "embedding_dim": 128, "model_in_dim": 128,
            "segment_size": 8960, "code_hop_size": 320, "f0": false, "num_mels": 80,
            "dur_prediction_weight": 1.0,
            "dur_predictor_params": {"encoder_embed_dim": 128, "var_pred_hidden_dim": 128,
                                     "var_pred_kernel_size": 3, "var_pred_dropout": 0.5},
            "sampling_rate": 16000, "fmin": 0, "fmax": 8000, "fmax_for_loss": null,
            "dist_config": {"dist_backend": "nccl"}
        });
        let cfg = VocoderConfig::from_json(&v, Path::new("config.json")).unwrap();
        assert_eq!(cfg, VocoderConfig::mhubert());
        assert_eq!(cfg.hop_length(), 320);
    }

    #[test]
    fn rejects_unknown_and_unsupported_keys() {
        let p = Path::new("config.json");
        let e = VocoderConfig::from_json(&json!({"upsample_ratez": [2]}), p).unwrap_err();
        assert!(e.to_string().contains("upsample_ratez"), "{e}");
        let e = VocoderConfig::from_json(&json!({"f0": true}), p).unwrap_err();
        assert!(e.to_string().contains("f0"), "{e}");
        let e = VocoderConfig::from_json(&json!({"model_in_dim": 80}), p).unwrap_err();
        assert!(e.to_string().contains("model_in_dim"), "{e}");
        let e = VocoderConfig::from_json(&json!({"upsample_kernel_sizes": [10, 8, 8, 4, 4]}), p)
            .unwrap_err();
        assert!(e.to_string().contains("kernel 10"), "{e}");
    }

    #[test]
    fn to_json_round_trips() {
        let p = Path::new("config.json");
        for cfg in [
            VocoderConfig::mhubert(),
            VocoderConfig {
                resblock: ResBlockKind::Two,
                duration_predictor: None,
                speaker: Some(SpeakerConditioning::Table { num_speakers: 3 }),
                model_in_dim: 256,
                ..VocoderConfig::mhubert_small()
            },
        ] {
            assert_eq!(VocoderConfig::from_json(&cfg.to_json(), p).unwrap(), cfg);
        }
    }

    #[test]
    fn speaker_conditioning() {
        let p = Path::new("config.json");
        let cfg = VocoderConfig::from_json(
            &json!({"multispkr": true, "num_speakers": 4, "model_in_dim": 256}),
            p,
        )
        .unwrap();
        assert_eq!(
            cfg.speaker,
            Some(SpeakerConditioning::Table { num_speakers: 4 })
        );
        let cfg = VocoderConfig::from_json(
            &json!({"multispkr": true, "embedder_params": {"x": 1}, "embedder_dim": 64}),
            p,
        )
        .unwrap();
        assert_eq!(
            cfg.speaker,
            Some(SpeakerConditioning::Embedder { embedder_dim: 64 })
        );
        assert_eq!(cfg.model_in_dim, 256);
    }
}
