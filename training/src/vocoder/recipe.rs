//! The vocoder recipe: a TOML file with `[data]`, `[model]` and `[train]` sections. Unknown keys
//! are errors (a misspelt setting must not silently fall back to its default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tolk_models::vocoder::{DurationPredictorConfig, ResBlockKind, VocoderConfig};

use crate::toolkit::recipe::{parse_recipe, read_recipe, CheckedRecipe, RecipeError};
use crate::toolkit::schedule::step_decay;

type Result<T> = std::result::Result<T, RecipeError>;

fn invalid<T>(message: String) -> Result<T> {
    Err(RecipeError::Invalid(message))
}

/// A whole recipe file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub model: ModelSection,
    pub train: TrainSection,
}

/// Where the audio and units come from. Relative paths resolve against the working directory;
/// each can be given (or overridden) on the command line.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// JSONL manifest (`tolk_training::corpus::manifest`).
    pub manifest: Option<PathBuf>,
    /// Units file of that manifest's audio (`tolk_training::units::file`, raw 50 Hz units).
    pub units: Option<PathBuf>,
    /// The vocoder's language: `target_audio` of entries with this `target_language` and `audio`
    /// of entries with this `language` are its training speech.
    pub language: Option<String>,
    /// Only speech whose manifest voice (`voice` / `target_voice`) starts with this, e.g.
    /// `pico:` for the kiosk's output voice; none: every voice.
    #[serde(default)]
    pub voice: Option<String>,
    /// Use at most this many audio files (0: all), in manifest order.
    #[serde(default)]
    pub max_files: usize,
    /// Files held out for the evaluation mel loss and the sample WAVs.
    #[serde(default = "default_eval_files")]
    pub eval_files: usize,
}

fn default_eval_files() -> usize {
    4
}

/// The generator's shape: a preset, then any field overridden. `num_embeddings` always comes
/// from the units file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `mhubert` (fairseq's mHuBERT vocoder, 512 channels) or `mhubert_small` (128 channels).
    #[serde(default = "default_preset")]
    pub preset: String,
    pub embedding_dim: Option<i64>,
    pub upsample_rates: Option<Vec<i64>>,
    pub upsample_kernel_sizes: Option<Vec<i64>>,
    pub upsample_initial_channel: Option<i64>,
    /// "1" or "2" (HiFi-GAN's ResBlock1 / ResBlock2).
    pub resblock: Option<String>,
    pub resblock_kernel_sizes: Option<Vec<i64>>,
    pub resblock_dilation_sizes: Option<Vec<Vec<i64>>>,
    /// Train a duration predictor (needed to speak deduplicated units).
    #[serde(default = "yes")]
    pub duration_predictor: bool,
    pub duration_hidden_dim: Option<i64>,
    pub duration_dropout: Option<f64>,
}

fn default_preset() -> String {
    "mhubert_small".into()
}

fn yes() -> bool {
    true
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: default_preset(),
            embedding_dim: None,
            upsample_rates: None,
            upsample_kernel_sizes: None,
            upsample_initial_channel: None,
            resblock: None,
            resblock_kernel_sizes: None,
            resblock_dilation_sizes: None,
            duration_predictor: true,
            duration_hidden_dim: None,
            duration_dropout: None,
        }
    }
}

impl ModelSection {
    /// The generator config for a unit vocabulary of `num_units`.
    pub fn vocoder_config(&self, num_units: i64) -> Result<VocoderConfig> {
        let base = match self.preset.as_str() {
            "mhubert" => VocoderConfig::mhubert(),
            "mhubert_small" => VocoderConfig::mhubert_small(),
            p => {
                return invalid(format!(
                    "model.preset {p:?}: expected \"mhubert\" or \"mhubert_small\""
                ))
            }
        };
        let embedding_dim = self.embedding_dim.unwrap_or(base.embedding_dim);
        let resblock = match self.resblock.as_deref() {
            None => base.resblock,
            Some("1") => ResBlockKind::One,
            Some("2") => ResBlockKind::Two,
            Some(r) => return invalid(format!("model.resblock {r:?}: expected \"1\" or \"2\"")),
        };
        let base_dp = base.duration_predictor.clone();
        let duration_predictor = if self.duration_predictor {
            let d = base_dp.unwrap_or(DurationPredictorConfig {
                encoder_embed_dim: embedding_dim,
                var_pred_hidden_dim: embedding_dim,
                var_pred_kernel_size: 3,
                var_pred_dropout: 0.5,
            });
            Some(DurationPredictorConfig {
                encoder_embed_dim: embedding_dim,
                var_pred_hidden_dim: self.duration_hidden_dim.unwrap_or(d.var_pred_hidden_dim),
                var_pred_kernel_size: d.var_pred_kernel_size,
                var_pred_dropout: self.duration_dropout.unwrap_or(d.var_pred_dropout),
            })
        } else {
            None
        };
        let cfg = VocoderConfig {
            num_embeddings: num_units,
            embedding_dim,
            model_in_dim: embedding_dim,
            upsample_rates: self.upsample_rates.clone().unwrap_or(base.upsample_rates),
            upsample_kernel_sizes: self
                .upsample_kernel_sizes
                .clone()
                .unwrap_or(base.upsample_kernel_sizes),
            upsample_initial_channel: self
                .upsample_initial_channel
                .unwrap_or(base.upsample_initial_channel),
            resblock,
            resblock_kernel_sizes: self
                .resblock_kernel_sizes
                .clone()
                .unwrap_or(base.resblock_kernel_sizes),
            resblock_dilation_sizes: self
                .resblock_dilation_sizes
                .clone()
                .unwrap_or(base.resblock_dilation_sizes),
            sampling_rate: base.sampling_rate,
            duration_predictor,
            speaker: None,
        };
        cfg.validate(Path::new("[model]"))
            .map_err(|e| RecipeError::Invalid(format!("[model]: {e}")))?;
        Ok(cfg)
    }
}

/// Optimisation and bookkeeping.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Total optimizer steps (a resumed run continues up to this step).
    pub steps: u64,
    pub batch_size: usize,
    /// Unit frames per training segment (`segment_frames * hop_length` samples).
    pub segment_frames: usize,
    /// Steps with the mel (and duration) loss only, before the discriminators start
    /// (a CPU shortcut; 0 trains the full HiFi-GAN objective from the start).
    #[serde(default)]
    pub mel_only_steps: u64,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_b1")]
    pub adam_b1: f64,
    #[serde(default = "default_b2")]
    pub adam_b2: f64,
    /// AdamW decoupled weight decay (torch.optim.AdamW's default, as HiFi-GAN uses it).
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// The learning rate is multiplied by `lr_decay` every `lr_decay_every` steps (HiFi-GAN:
    /// 0.999 per epoch).
    #[serde(default = "default_decay")]
    pub lr_decay: f64,
    #[serde(default = "default_decay_every")]
    pub lr_decay_every: u64,
    /// Weight of the mel L1 loss (HiFi-GAN: 45).
    #[serde(default = "default_mel_weight")]
    pub mel_weight: f64,
    /// Weight of the duration loss (fairseq `dur_prediction_weight`: 1).
    #[serde(default = "default_one")]
    pub duration_weight: f64,
    /// Channel divisor of the discriminators (1: HiFi-GAN's MPD and MSD; 4 or 8 for CPU runs).
    #[serde(default = "default_disc_div")]
    pub discriminator_channel_divisor: i64,
    #[serde(default)]
    pub seed: u64,
    /// Torch intra-op threads (default: libtorch's choice).
    pub threads: Option<i32>,
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: u64,
    #[serde(default = "default_log")]
    pub log_every: u64,
    /// Evaluate (mel L1 on the held-out files, sample WAV) every N steps (0: only at the end).
    #[serde(default = "default_eval")]
    pub eval_every: u64,
}

fn default_lr() -> f64 {
    2e-4
}
fn default_b1() -> f64 {
    0.8
}
fn default_b2() -> f64 {
    0.99
}
fn default_wd() -> f64 {
    0.01
}
fn default_decay() -> f64 {
    0.999
}
fn default_decay_every() -> u64 {
    1000
}
fn default_mel_weight() -> f64 {
    tolk_models::vocoder::losses::MEL_LOSS_WEIGHT
}
fn default_one() -> f64 {
    1.0
}
fn default_disc_div() -> i64 {
    1
}
fn default_ckpt() -> u64 {
    500
}
fn default_log() -> u64 {
    50
}
fn default_eval() -> u64 {
    500
}

impl Recipe {
    /// Parses and checks a recipe's text; errors name `origin` and the offending key.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        parse_recipe(text).map_err(|e| e.in_file(origin))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        read_recipe(path)
    }

    /// The learning rate at `step` (0-based).
    pub fn learning_rate(&self, step: u64) -> f64 {
        let t = &self.train;
        step_decay(step, t.learning_rate, t.lr_decay, t.lr_decay_every)
    }
}

impl CheckedRecipe for Recipe {
    fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.batch_size == 0 || t.segment_frames == 0 {
            return invalid("train.batch_size and train.segment_frames must be >= 1".into());
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            return invalid("train.learning_rate must be a positive number".into());
        }
        if !(0.0..1.0).contains(&t.adam_b1) || !(0.0..1.0).contains(&t.adam_b2) {
            return invalid("train.adam_b1 and train.adam_b2 must be in [0, 1)".into());
        }
        if !(t.lr_decay > 0.0 && t.lr_decay <= 1.0) || t.lr_decay_every == 0 {
            return invalid(
                "train.lr_decay must be in (0, 1] and train.lr_decay_every >= 1".into(),
            );
        }
        if ![1, 2, 4, 8].contains(&t.discriminator_channel_divisor) {
            return invalid("train.discriminator_channel_divisor must be 1, 2, 4 or 8".into());
        }
        if t.checkpoint_every == 0 || t.log_every == 0 {
            return invalid("train.checkpoint_every and train.log_every must be >= 1".into());
        }
        // The preset and overrides must make a valid generator (any vocabulary size).
        self.model.vocoder_config(2)?;
        Ok(())
    }
}
