//! SFT recipe files (TOML): data, backbone, optimizer and run settings, every key checked.
//!
//! Paths inside a recipe are relative to the directory the command runs in (the repository
//! root for the recipes in `training/recipes/`); `tolk-train sft --set` style overrides are given
//! as flags (`--out`, `--steps`, `--device`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::{Direction, Strategy};

/// A whole recipe file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftRecipe {
    pub data: DataSection,
    pub model: ModelSection,
    pub optim: OptimSection,
    pub run: RunSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Paired training manifests (JSONL, `tolk-train synth-corpus` layout).
    pub train: Vec<PathBuf>,
    /// Paired manifest for the periodic evaluation (dev loss and accuracy).
    pub dev: PathBuf,
    /// Units JSONL of every audio file of the manifests (`tolk-train units`).
    pub units: PathBuf,
    pub strategy: Strategy,
    pub directions: Vec<Direction>,
    #[serde(default = "yes")]
    pub dedup_source: bool,
    #[serde(default = "yes")]
    pub dedup_target: bool,
    /// Longest sequence kept (longer ones are skipped and counted).
    pub max_len: usize,
    /// Use at most this many dev entries for the periodic evaluation (0 = all).
    #[serde(default)]
    pub dev_limit: usize,
}

impl DataSection {
    /// How the examples of this recipe are built.
    pub fn example_config(&self) -> super::data::SftDataConfig {
        super::data::SftDataConfig {
            strategy: self.strategy,
            directions: self.directions.clone(),
            dedup_source: self.dedup_source,
            dedup_target: self.dedup_target,
            max_len: self.max_len,
        }
    }
}

fn yes() -> bool {
    true
}

/// The backbone: a pretrained Hugging Face Llama folder, or a Llama from scratch over a
/// tokenizer (`tolk-train tokenizer`). Both are extended with the unit and task tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    pub pretrained: Option<PathBuf>,
    /// tokenizer.json of a model trained from scratch.
    pub tokenizer: Option<PathBuf>,
    /// Shape of a model trained from scratch.
    pub scratch: Option<ScratchShape>,
    /// Seed of a from-scratch initialisation.
    #[serde(default = "one")]
    pub init_seed: i64,
}

fn one() -> i64 {
    1
}

/// A Llama shape for training from scratch (Llama 3 style: RMSNorm, SwiGLU, RoPE, GQA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScratchShape {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub max_position_embeddings: i64,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn rope_theta() -> f64 {
    10_000.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine floor).
    #[serde(default)]
    pub min_lr_ratio: f64,
    pub warmup_steps: u64,
    /// Optimizer steps in all.
    pub steps: u64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "betas")]
    pub betas: [f64; 2],
    #[serde(default = "eps")]
    pub eps: f64,
    /// Global gradient-norm clip (0 = none).
    #[serde(default)]
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    #[serde(default = "one_u")]
    pub grad_accum: usize,
    /// Padded tokens per micro-batch.
    pub max_tokens: usize,
    /// Examples per micro-batch.
    pub max_examples: usize,
}

fn betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn eps() -> f64 {
    1e-8
}

fn one_u() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Output folder: checkpoints/, final/, metrics.jsonl, loss.png.
    pub out: PathBuf,
    #[serde(default = "one_u64")]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "cpu")]
    pub device: String,
    /// `f32`, or `bf16` (autocast on CUDA; master weights and optimizer state stay f32).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Intra-op threads (0 = libtorch's default).
    #[serde(default)]
    pub threads: i32,
    #[serde(default = "hundred")]
    pub eval_every: u64,
    #[serde(default = "hundred")]
    pub checkpoint_every: u64,
    /// Checkpoints kept (oldest deleted first; the newest is never deleted).
    #[serde(default = "three")]
    pub keep_checkpoints: usize,
    #[serde(default = "ten")]
    pub log_every: u64,
}

fn one_u64() -> u64 {
    1
}
fn cpu() -> String {
    "cpu".into()
}
fn f32_name() -> String {
    "f32".into()
}
fn hundred() -> u64 {
    100
}
fn three() -> usize {
    3
}
fn ten() -> u64 {
    10
}

impl SftRecipe {
    /// Reads and checks a recipe; errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read recipe {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("recipe {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let r: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), String> {
        let m = &self.model;
        match (&m.pretrained, &m.tokenizer, &m.scratch) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return Err(
                    "[model] needs either `pretrained`, or `tokenizer` and [model.scratch]".into(),
                )
            }
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(format!("optim.lr must be positive, got {}", o.lr));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return Err("optim.min_lr_ratio must be in [0, 1]".into());
        }
        if o.steps == 0 || o.warmup_steps > o.steps {
            return Err("optim.steps must be positive and at least optim.warmup_steps".into());
        }
        if o.grad_accum == 0 || o.max_examples == 0 || o.max_tokens == 0 {
            return Err("optim.grad_accum, max_examples and max_tokens must be positive".into());
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) || o.eps <= 0.0 {
            return Err("optim.betas must be in [0, 1) and optim.eps positive".into());
        }
        if o.grad_clip < 0.0 || o.weight_decay < 0.0 {
            return Err("optim.grad_clip and optim.weight_decay must not be negative".into());
        }
        if !matches!(self.run.precision.as_str(), "f32" | "bf16") {
            return Err(format!(
                "run.precision must be `f32` or `bf16`, got `{}`",
                self.run.precision
            ));
        }
        if self.run.eval_every == 0 || self.run.checkpoint_every == 0 || self.run.log_every == 0 {
            return Err("run.eval_every, checkpoint_every and log_every must be positive".into());
        }
        if self.data.train.is_empty() || self.data.directions.is_empty() {
            return Err("data.train and data.directions must not be empty".into());
        }
        Ok(())
    }
}
