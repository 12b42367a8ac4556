//! SFT recipe files (TOML): data, backbone, optimizer and run settings, every key checked.
//!
//! Paths inside a recipe are relative to the directory the command runs in (the repository
//! root for the recipes in `training/recipes/`); `tolk-train sft --set` style overrides are given
//! as flags (`--out`, `--steps`, `--device`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::data::{Direction, Strategy};
use crate::toolkit::recipe::{
    check_adamw, default_betas, default_eps, parse_recipe, read_recipe, CheckedRecipe, RecipeError,
    RunSection,
};

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
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
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

fn one_u() -> usize {
    1
}

impl SftRecipe {
    /// Reads and checks a recipe; errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        read_recipe(path)
    }

    pub fn parse(text: &str) -> Result<Self, RecipeError> {
        parse_recipe(text)
    }
}

impl CheckedRecipe for SftRecipe {
    fn validate(&self) -> Result<(), RecipeError> {
        let invalid = |m: &str| Err(RecipeError::Invalid(m.into()));
        let m = &self.model;
        match (&m.pretrained, &m.tokenizer, &m.scratch) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => {
                return invalid(
                    "[model] needs either `pretrained`, or `tokenizer` and [model.scratch]",
                )
            }
        }
        let o = &self.optim;
        check_adamw(o.lr, o.betas, o.eps, o.grad_clip, o.weight_decay)?;
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return invalid("optim.min_lr_ratio must be in [0, 1]");
        }
        if o.steps == 0 || o.warmup_steps > o.steps {
            return invalid("optim.steps must be positive and at least optim.warmup_steps");
        }
        if o.grad_accum == 0 || o.max_examples == 0 || o.max_tokens == 0 {
            return invalid("optim.grad_accum, max_examples and max_tokens must be positive");
        }
        if !matches!(self.run.precision.as_str(), "f32" | "bf16") {
            return Err(RecipeError::Invalid(format!(
                "run.precision must be `f32` or `bf16`, got `{}`",
                self.run.precision
            )));
        }
        self.run.check_intervals()?;
        if self.data.train.is_empty() || self.data.directions.is_empty() {
            return invalid("data.train and data.directions must not be empty");
        }
        Ok(())
    }
}
