//! What the recipe files of every trainer share: reading and checking a TOML recipe with errors
//! that name the file and the key, the `[run]` section of the SFT and preference recipes with the
//! command-line flags that override it, and the AdamW defaults and checks of their `[optim]`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A recipe that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a missing one, a value of the wrong type.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value out of range, or settings that do not go together.
    #[error("{0}")]
    Invalid(String),
    #[error("recipe {path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<RecipeError>,
    },
}

impl RecipeError {
    /// The same error, said to be in the recipe file `path`.
    pub fn in_file(self, path: &Path) -> Self {
        RecipeError::InFile {
            path: path.to_path_buf(),
            source: Box::new(self),
        }
    }
}

/// A recipe type whose values can be checked beyond what deserializing checks.
pub trait CheckedRecipe: DeserializeOwned {
    fn validate(&self) -> Result<(), RecipeError>;
}

/// Parses and checks a recipe from its text.
pub fn parse_recipe<R: CheckedRecipe>(text: &str) -> Result<R, RecipeError> {
    let r: R = toml::from_str(text)?;
    r.validate()?;
    Ok(r)
}

/// Reads and checks a recipe file; errors name the file and the offending key.
pub fn read_recipe<R: CheckedRecipe>(path: &Path) -> Result<R, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_recipe(&text).map_err(|e| e.in_file(path))
}

/// The `[run]` section: where the run writes, on what, and how often it logs, evaluates and
/// checkpoints.
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

impl RunSection {
    /// The intervals are positive.
    pub fn check_intervals(&self) -> Result<(), RecipeError> {
        if self.eval_every == 0 || self.checkpoint_every == 0 || self.log_every == 0 {
            return Err(RecipeError::Invalid(
                "run.eval_every, checkpoint_every and log_every must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The command-line flags every recipe-driven training command takes (`sft`, `preference`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunFlags {
    /// Recipe file (TOML; see `training/recipes/`).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override `run.out`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override `run.device` (cpu, cuda, cuda:N).
    #[arg(long)]
    pub device: Option<String>,
    /// Start from scratch even when the output folder has a checkpoint.
    #[arg(long)]
    pub restart: bool,
    /// Stop after this many steps of this invocation (the run stays resumable); for tests.
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
}

impl RunFlags {
    /// Applies `--out` and `--device` to a recipe's run section.
    pub fn apply(&self, run: &mut RunSection) {
        if let Some(o) = &self.out {
            run.out = o.clone();
        }
        if let Some(d) = &self.device {
            run.device = d.clone();
        }
    }
}

/// torch.optim.AdamW's default betas.
pub fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

/// torch.optim.AdamW's default epsilon.
pub fn default_eps() -> f64 {
    1e-8
}

/// Checks the AdamW settings of an `[optim]` section.
pub fn check_adamw(
    lr: f64,
    betas: [f64; 2],
    eps: f64,
    grad_clip: f64,
    weight_decay: f64,
) -> Result<(), RecipeError> {
    let invalid = |m: String| Err(RecipeError::Invalid(m));
    if !(lr > 0.0 && lr.is_finite()) {
        return invalid(format!("optim.lr must be positive, got {lr}"));
    }
    if !betas.iter().all(|b| (0.0..1.0).contains(b)) || eps <= 0.0 {
        return invalid("optim.betas must be in [0, 1) and optim.eps positive".into());
    }
    if grad_clip < 0.0 || weight_decay < 0.0 {
        return invalid("optim.grad_clip and optim.weight_decay must not be negative".into());
    }
    Ok(())
}
