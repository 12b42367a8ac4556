//! Health probe of a model before it becomes active (ota-threats.md row 12).
//!
//! The translation engine will implement [`HealthProbe`] with a built-in utterance; until then
//! [`LlamaProbe`] loads the Llama decoder of the bundle beside the running one, runs a short
//! prompt and checks shapes, finiteness and latency.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};
use tolk_models::llama::{Llama, LoadOptions};

/// What a passing probe measured.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub latency: Duration,
    pub summary: String,
}

/// Loads the model of a slot folder and decides whether it is healthy. The error is the reason
/// reported with FAILED.
pub trait HealthProbe: Send {
    fn probe(&self, slot: &Path) -> Result<ProbeReport, String>;
}

/// Probes the Llama decoder found in the slot (`config.json` + safetensors at the slot root or
/// in `model/`).
pub struct LlamaProbe {
    pub budget: Duration,
    pub prompt_len: i64,
}

impl LlamaProbe {
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            prompt_len: 8,
        }
    }

    fn model_dir(slot: &Path) -> Result<PathBuf, String> {
        [slot.to_path_buf(), slot.join("model")]
            .into_iter()
            .find(|d| d.join("config.json").is_file())
            .ok_or_else(|| "no config.json at the bundle root or in model/".to_string())
    }
}

impl HealthProbe for LlamaProbe {
    fn probe(&self, slot: &Path) -> Result<ProbeReport, String> {
        let dir = Self::model_dir(slot)?;
        let start = Instant::now();
        let model = Llama::load(
            &dir,
            LoadOptions {
                max_positions: 64,
                ..Default::default()
            },
        )
        .map_err(|e| format!("health probe: load: {e}"))?;
        let vocab = model.config().vocab_size;
        let n = self.prompt_len.min(vocab.max(1));
        let tokens = Tensor::arange(n, (Kind::Int64, model.device())).unsqueeze(0);
        let logits = model
            .forward(&tokens, None)
            .map_err(|e| format!("health probe: forward: {e}"))?;
        let latency = start.elapsed();
        if logits.size() != [1, n, vocab] {
            return Err(format!(
                "health probe: logits shape {:?}, expected [1, {n}, {vocab}]",
                logits.size()
            ));
        }
        let finite = logits.isfinite().all().int64_value(&[]) == 1;
        if !finite {
            return Err("health probe: logits hold NaN or infinity".into());
        }
        if latency > self.budget {
            return Err(format!(
                "health probe: latency {} ms above the budget of {} ms",
                latency.as_millis(),
                self.budget.as_millis()
            ));
        }
        Ok(ProbeReport {
            latency,
            summary: format!(
                "logits [1, {n}, {vocab}] finite in {} ms",
                latency.as_millis()
            ),
        })
    }
}
