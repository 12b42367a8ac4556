//! Preference-optimization recipe files (TOML): pairs, base translator, LoRA, loss, optimizer
//! and run settings, every key checked. Defaults follow the paper where it says (LoRA r 8 on all
//! linear layers but the LM head, 2 epochs, lr 2e-5; arXiv 2601.16618)
//! and trl elsewhere (DPO beta 0.1; SimPO beta 2.0 and gamma = 0.5 beta, method.md section 2).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::toolkit::lora::LoraConfig;
use crate::toolkit::recipe::{
    check_adamw, default_betas, default_eps, parse_recipe, read_recipe, CheckedRecipe, RecipeError,
    RunSection,
};

/// A whole recipe file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceRecipe {
    pub data: PairsSection,
    pub model: BaseSection,
    #[serde(default)]
    pub lora: LoraConfig,
    pub loss: LossSection,
    #[serde(default)]
    pub optim: PreferenceOptim,
    pub run: RunSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairsSection {
    /// `pairs.jsonl` files from `tolk-train pairs`.
    pub pairs: Vec<PathBuf>,
    /// Share of pairs (percent, by a hash of the utterance id) held out for the dev figures.
    #[serde(default = "five")]
    pub dev_percent: u32,
    /// Longest prompt + completion kept (longer pairs are skipped and counted).
    #[serde(default = "max_len")]
    pub max_len: usize,
}

fn five() -> u32 {
    5
}
fn max_len() -> usize {
    1024
}

/// The model being improved: a translator folder (its `llm/` is the base; the rest is copied
/// into the merged output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSection {
    pub translator: PathBuf,
}

/// Which objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    Dpo,
    Simpo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossSection {
    pub kind: LossKind,
    /// DPO: 0.1 by default; SimPO: 2.0.
    pub beta: Option<f64>,
    /// SimPO target margin (default 0.5 beta); not used by DPO.
    pub gamma: Option<f64>,
    /// Conservative label smoothing (0 = plain DPO / SimPO).
    #[serde(default)]
    pub label_smoothing: f64,
}

impl LossSection {
    pub fn beta(&self) -> f64 {
        self.beta.unwrap_or(match self.kind {
            LossKind::Dpo => 0.1,
            LossKind::Simpo => 2.0,
        })
    }

    pub fn gamma(&self) -> f64 {
        self.gamma.unwrap_or(0.5 * self.beta())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceOptim {
    #[serde(default = "lr")]
    pub lr: f64,
    #[serde(default = "two")]
    pub epochs: u64,
    /// Pairs per optimizer step.
    #[serde(default = "eight")]
    pub batch_pairs: usize,
    /// Linear warm-up share of all steps, then cosine decay to `min_lr_ratio`.
    #[serde(default = "warmup")]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "clip")]
    pub grad_clip: f64,
}

impl Default for PreferenceOptim {
    fn default() -> Self {
        Self {
            lr: lr(),
            epochs: two(),
            batch_pairs: eight(),
            warmup_ratio: warmup(),
            min_lr_ratio: 0.0,
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            grad_clip: clip(),
        }
    }
}

fn lr() -> f64 {
    2e-5
}
fn two() -> u64 {
    2
}
fn eight() -> usize {
    8
}
fn warmup() -> f64 {
    0.1
}
fn clip() -> f64 {
    1.0
}

impl PreferenceRecipe {
    /// Reads and checks a recipe; errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        read_recipe(path)
    }

    pub fn parse(text: &str) -> Result<Self, RecipeError> {
        parse_recipe(text)
    }
}

impl CheckedRecipe for PreferenceRecipe {
    fn validate(&self) -> Result<(), RecipeError> {
        let invalid = |m: &str| Err(RecipeError::Invalid(m.into()));
        if self.data.pairs.is_empty() {
            return invalid("data.pairs must name at least one pairs.jsonl");
        }
        if self.data.dev_percent >= 100 {
            return invalid("data.dev_percent must be below 100");
        }
        self.lora
            .validate()
            .map_err(|e| RecipeError::Invalid(format!("[lora]: {e}")))?;
        let l = &self.loss;
        if !(l.beta() > 0.0 && l.beta().is_finite()) {
            return Err(RecipeError::Invalid(format!(
                "loss.beta must be positive, got {}",
                l.beta()
            )));
        }
        if !l.gamma().is_finite() {
            return invalid("loss.gamma must be finite");
        }
        if l.kind == LossKind::Dpo && l.gamma.is_some() {
            return invalid("loss.gamma is a SimPO setting; DPO has none");
        }
        if !(0.0..0.5).contains(&l.label_smoothing) {
            return invalid("loss.label_smoothing must be in [0, 0.5)");
        }
        let o = &self.optim;
        check_adamw(o.lr, o.betas, o.eps, o.grad_clip, o.weight_decay)?;
        if o.epochs == 0 || o.batch_pairs == 0 {
            return invalid("optim.epochs and optim.batch_pairs must be positive");
        }
        if !(0.0..1.0).contains(&o.warmup_ratio) || !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return invalid("optim.warmup_ratio must be in [0, 1), min_lr_ratio in [0, 1]");
        }
        if self.run.precision != "f32" {
            return Err(RecipeError::Invalid(format!(
                "run.precision must be `f32` for preference training (the adapters are small; \
                 got `{}`)",
                self.run.precision
            )));
        }
        self.run.check_intervals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[data]
pairs = ["p.jsonl"]
[model]
translator = "models/demo"
[loss]
kind = "simpo"
[run]
out = "runs/x"
"#;

    #[test]
    fn defaults_are_the_papers_and_trls() {
        let r = PreferenceRecipe::parse(MINIMAL).unwrap();
        assert_eq!(r.lora.r, 8);
        assert_eq!(r.lora.target_modules.len(), 7);
        assert_eq!((r.optim.lr, r.optim.epochs), (2e-5, 2));
        assert_eq!((r.loss.beta(), r.loss.gamma()), (2.0, 1.0));
        let dpo = PreferenceRecipe::parse(&MINIMAL.replace("simpo", "dpo")).unwrap();
        assert_eq!(dpo.loss.beta(), 0.1);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let e = PreferenceRecipe::parse(&MINIMAL.replace("[loss]", "[loss]\nbeat = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("beat"), "{e}");
        let e = PreferenceRecipe::parse(&MINIMAL.replace("simpo\"", "dpo\"\ngamma = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gamma"), "{e}");
        let e = PreferenceRecipe::parse(&format!("{MINIMAL}\n[lora]\nr = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[lora]"), "{e}");
        let e = PreferenceRecipe::parse(&MINIMAL.replace("[run]", "[optim]\nepochs = 0\n[run]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("epochs"), "{e}");
    }
}
