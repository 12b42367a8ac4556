//! Preference-optimization recipe files (TOML): pairs, base translator, LoRA, loss, optimizer
//! and run settings, every key checked. Defaults follow the paper where it says (LoRA r 8 on all
//! linear layers but the LM head, 2 epochs, lr 2e-5; `../shared/reference/method.md` section 1)
//! and trl elsewhere (DPO beta 0.1; SimPO beta 2.0 and gamma = 0.5 beta, method.md section 2).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lora::LoraConfig;
use crate::sft::recipe::RunSection;

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
    #[serde(default = "betas")]
    pub betas: [f64; 2],
    #[serde(default = "eps")]
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
            betas: betas(),
            eps: eps(),
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
fn betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn eps() -> f64 {
    1e-8
}
fn clip() -> f64 {
    1.0
}

impl PreferenceRecipe {
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
        if self.data.pairs.is_empty() {
            return Err("data.pairs must name at least one pairs.jsonl".into());
        }
        if self.data.dev_percent >= 100 {
            return Err("data.dev_percent must be below 100".into());
        }
        self.lora.validate().map_err(|e| format!("[lora]: {e}"))?;
        let l = &self.loss;
        if !(l.beta() > 0.0 && l.beta().is_finite()) {
            return Err(format!("loss.beta must be positive, got {}", l.beta()));
        }
        if !l.gamma().is_finite() {
            return Err("loss.gamma must be finite".into());
        }
        if l.kind == LossKind::Dpo && l.gamma.is_some() {
            return Err("loss.gamma is a SimPO setting; DPO has none".into());
        }
        if !(0.0..0.5).contains(&l.label_smoothing) {
            return Err("loss.label_smoothing must be in [0, 0.5)".into());
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(format!("optim.lr must be positive, got {}", o.lr));
        }
        if o.epochs == 0 || o.batch_pairs == 0 {
            return Err("optim.epochs and optim.batch_pairs must be positive".into());
        }
        if !(0.0..1.0).contains(&o.warmup_ratio) || !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return Err("optim.warmup_ratio must be in [0, 1), min_lr_ratio in [0, 1]".into());
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) || o.eps <= 0.0 {
            return Err("optim.betas must be in [0, 1) and optim.eps positive".into());
        }
        if o.grad_clip < 0.0 || o.weight_decay < 0.0 {
            return Err("optim.grad_clip and optim.weight_decay must not be negative".into());
        }
        if self.run.precision != "f32" {
            return Err(format!(
                "run.precision must be `f32` for preference training (the adapters are small; \
                 got `{}`)",
                self.run.precision
            ));
        }
        if self.run.eval_every == 0 || self.run.checkpoint_every == 0 || self.run.log_every == 0 {
            return Err("run.eval_every, checkpoint_every and log_every must be positive".into());
        }
        Ok(())
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
        let e =
            PreferenceRecipe::parse(&MINIMAL.replace("[loss]", "[loss]\nbeat = 1")).unwrap_err();
        assert!(e.contains("beat"), "{e}");
        let e =
            PreferenceRecipe::parse(&MINIMAL.replace("simpo\"", "dpo\"\ngamma = 1")).unwrap_err();
        assert!(e.contains("gamma"), "{e}");
        let e = PreferenceRecipe::parse(&format!("{MINIMAL}\n[lora]\nr = 0\n")).unwrap_err();
        assert!(e.contains("[lora]"), "{e}");
        let e = PreferenceRecipe::parse(&MINIMAL.replace("[run]", "[optim]\nepochs = 0\n[run]"))
            .unwrap_err();
        assert!(e.contains("epochs"), "{e}");
    }
}
