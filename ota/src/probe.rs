//! Health probe of a model before it becomes active (threat row 12 of deploy/README.md).
//!
//! [`ModelProbe`] picks by content: a translator bundle gets [`TranslatorProbe`] (the whole
//! speech-to-speech chain on a built-in signal), a bare Llama decoder [`LlamaProbe`] (a short
//! prompt; shapes, finiteness, latency).

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

/// Why a model failed its health probe; the message, which includes the underlying error, is the
/// reason reported with FAILED.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no config.json at the bundle root or in model/")]
    NoModel,
    #[error("health probe: load: {0}")]
    Load(tolk_models::ModelError),
    #[error("health probe: forward: {0}")]
    Forward(tolk_models::ModelError),
    #[error("health probe: logits shape {got:?}, expected {expected:?}")]
    LogitsShape { got: Vec<i64>, expected: Vec<i64> },
    #[error("health probe: logits hold NaN or infinity")]
    NotFinite,
    #[error("health probe: {direction}: {error}")]
    Translate {
        direction: String,
        error: tolk_models::ModelError,
    },
    #[error("health probe: {direction}: vocoder: {error}")]
    Vocoder {
        direction: String,
        error: tolk_models::ModelError,
    },
    #[error("health probe: {direction}: the vocoder output is empty or not finite")]
    BadSpeech { direction: String },
    #[error("health probe: latency {} ms above the budget of {} ms", latency.as_millis(), budget.as_millis())]
    TooSlow { latency: Duration, budget: Duration },
}

fn within_budget(latency: Duration, budget: Duration) -> Result<(), ProbeError> {
    if latency > budget {
        return Err(ProbeError::TooSlow { latency, budget });
    }
    Ok(())
}

/// Loads the model of a slot folder and decides whether it is healthy.
pub trait HealthProbe: Send {
    fn probe(&self, slot: &Path) -> Result<ProbeReport, ProbeError>;
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

    fn model_dir(slot: &Path) -> Result<PathBuf, ProbeError> {
        [slot.to_path_buf(), slot.join("model")]
            .into_iter()
            .find(|d| d.join("config.json").is_file())
            .ok_or(ProbeError::NoModel)
    }
}

impl HealthProbe for LlamaProbe {
    fn probe(&self, slot: &Path) -> Result<ProbeReport, ProbeError> {
        let dir = Self::model_dir(slot)?;
        let start = Instant::now();
        let model = Llama::load(
            &dir,
            LoadOptions {
                max_positions: 64,
                ..Default::default()
            },
        )
        .map_err(ProbeError::Load)?;
        let vocab = model.config().vocab_size;
        let n = self.prompt_len.min(vocab.max(1));
        let tokens = Tensor::arange(n, (Kind::Int64, model.device())).unsqueeze(0);
        let logits = model.forward(&tokens, None).map_err(ProbeError::Forward)?;
        let latency = start.elapsed();
        if logits.size() != [1, n, vocab] {
            return Err(ProbeError::LogitsShape {
                got: logits.size(),
                expected: vec![1, n, vocab],
            });
        }
        let finite = logits.isfinite().all().int64_value(&[]) == 1;
        if !finite {
            return Err(ProbeError::NotFinite);
        }
        within_budget(latency, self.budget)?;
        Ok(ProbeReport {
            latency,
            summary: format!(
                "logits [1, {n}, {vocab}] finite in {} ms",
                latency.as_millis()
            ),
        })
    }
}

/// Probes a translator bundle (`tolk-model.json` at the slot root): loads the whole translator
/// (extractor, decoder, vocoders) beside the running one, translates a built-in one-second test
/// signal in every direction of its manifest, and checks that decoding ends or stops at its caps
/// and that the synthesized speech is finite, within the latency budget.
pub struct TranslatorProbe {
    pub budget: Duration,
}

impl TranslatorProbe {
    /// A one-second 16 kHz signal with speech-like energy: a vowel-ish harmonic stack whose pitch
    /// glides, so the extractor yields varied units.
    fn test_signal() -> Vec<f32> {
        (0..16_000)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let f0 = 120.0 + 60.0 * t;
                (1..=8)
                    .map(|h| (std::f32::consts::TAU * f0 * h as f32 * t).sin() / h as f32)
                    .sum::<f32>()
                    * 0.2
            })
            .collect()
    }
}

impl HealthProbe for TranslatorProbe {
    fn probe(&self, slot: &Path) -> Result<ProbeReport, ProbeError> {
        use tolk_models::translator::Translator;
        let start = Instant::now();
        let tr = Translator::load(slot, tch::Device::Cpu, Kind::Float).map_err(ProbeError::Load)?;
        let signal = Self::test_signal();
        let mut parts = Vec::new();
        for &dir in &tr.manifest().directions {
            let out = tr
                .translate_audio(&signal, dir, tr.default_mode())
                .map_err(|error| ProbeError::Translate {
                    direction: dir.to_string(),
                    error,
                })?;
            if !out.units.is_empty() {
                let pcm =
                    tr.synthesize(&out.units, dir.tgt())
                        .map_err(|error| ProbeError::Vocoder {
                            direction: dir.to_string(),
                            error,
                        })?;
                if pcm.is_empty() || pcm.iter().any(|x| !x.is_finite()) {
                    return Err(ProbeError::BadSpeech {
                        direction: dir.to_string(),
                    });
                }
            }
            parts.push(format!(
                "{dir}: {} text tokens, {} units",
                out.text_ids.len(),
                out.units.len()
            ));
        }
        let latency = start.elapsed();
        within_budget(latency, self.budget)?;
        Ok(ProbeReport {
            latency,
            summary: format!("{} in {} ms", parts.join("; "), latency.as_millis()),
        })
    }
}

/// The probe for whatever a bundle holds: a translator folder (`tolk-model.json`) gets
/// [`TranslatorProbe`], a bare Llama decoder [`LlamaProbe`].
pub struct ModelProbe {
    pub budget: Duration,
}

impl ModelProbe {
    pub fn new(budget: Duration) -> Self {
        Self { budget }
    }
}

impl HealthProbe for ModelProbe {
    fn probe(&self, slot: &Path) -> Result<ProbeReport, ProbeError> {
        if slot.join(tolk_models::translator::MANIFEST_FILE).is_file() {
            TranslatorProbe {
                budget: self.budget,
            }
            .probe(slot)
        } else {
            LlamaProbe::new(self.budget).probe(slot)
        }
    }
}
