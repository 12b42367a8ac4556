//! Voice activity on 512-sample windows at 16 kHz.
//!
//! [`SileroVad`] runs the real Silero VAD v6 TorchScript model (`silero_vad.jit` from the PyPI
//! package `silero-vad==6.2.3`, `silero_vad/data/`). The model's `forward(x, sr)` keeps its own
//! recurrent state and 64-sample context between calls and `reset_states()` clears them; we call
//! it exactly as the package's `get_speech_timestamps` does (`silero_vad/utils_vad.py`): reset,
//! then one call per 512-sample window, the last partial window zero-padded. Each stream owns its
//! own module instance (loaded from bytes held once in memory), so streams never share state.
//!
//! Per-window inference is tiny, so libtorch's intra-op parallelism only costs synchronisation:
//! the Python package runs it with `torch.set_num_threads(1)`. Measured on the 2-core dev host
//! under load (tests/tests/silero_vad.rs): real-time factor 0.02 on one thread, 0.16 on two. The
//! thread count is process-wide in libtorch, so the caller (the runtime) chooses it.
//!
//! [`EnergyVad`] is the fallback when no model is configured: a log-energy detector with an
//! adaptive noise floor, giving a pseudo-probability on the same windows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{CModule, IValue, Tensor};

use super::{first_non_finite, AudioError, Result, SAMPLE_RATE};

/// Window size in samples at 16 kHz (Silero's only supported size at this rate).
pub const WINDOW: usize = 512;

/// A per-stream voice activity detector: one speech probability per [`WINDOW`] samples.
pub trait VoiceActivity: Send {
    /// Speech probability of the next window (exactly [`WINDOW`] finite samples).
    fn window_probability(&mut self, window: &[f32]) -> Result<f32>;
    /// Clears the recurrent state (start of a new stream).
    fn reset(&mut self) -> Result<()>;
}

fn check_window(window: &[f32]) -> Result<()> {
    if window.len() != WINDOW {
        return Err(AudioError::InvalidInput(format!(
            "VAD window has {} samples, expected {WINDOW}",
            window.len()
        )));
    }
    if let Some((i, v)) = first_non_finite(window) {
        return Err(AudioError::InvalidInput(format!(
            "VAD window sample {i} is {v}; condition the audio first"
        )));
    }
    Ok(())
}

/// The Silero VAD model, shared and immutable; [`SileroVad::stream`] gives per-stream detectors.
#[derive(Clone)]
pub struct SileroVad {
    path: PathBuf,
    bytes: Arc<Vec<u8>>,
}

impl SileroVad {
    /// Loads `silero_vad.jit` and checks that it runs on a window of silence.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| AudioError::Io {
            path: path.clone(),
            source,
        })?;
        let vad = Self {
            path,
            bytes: Arc::new(bytes),
        };
        let mut probe = vad.stream()?;
        probe.window_probability(&[0.0; WINDOW])?;
        Ok(vad)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh detector with its own module instance and zeroed state.
    pub fn stream(&self) -> Result<SileroStream> {
        let module =
            CModule::load_data(&mut std::io::Cursor::new(&self.bytes[..])).map_err(|e| {
                AudioError::Model {
                    path: self.path.clone(),
                    message: e.to_string(),
                }
            })?;
        let mut s = SileroStream {
            module,
            path: self.path.clone(),
        };
        s.reset()?;
        Ok(s)
    }
}

/// One stream's Silero detector (module instance with its recurrent state and context).
pub struct SileroStream {
    module: CModule,
    path: PathBuf,
}

impl VoiceActivity for SileroStream {
    fn window_probability(&mut self, window: &[f32]) -> Result<f32> {
        check_window(window)?;
        let x = Tensor::from_slice(window).view([1, WINDOW as i64]);
        let out = tch::no_grad(|| {
            self.module
                .forward_is(&[IValue::Tensor(x), IValue::Int(SAMPLE_RATE as i64)])
        })?;
        match out {
            IValue::Tensor(t) if t.numel() == 1 => Ok(t.double_value(&[]) as f32),
            other => Err(AudioError::Model {
                path: self.path.clone(),
                message: format!("forward returned {other:?}, expected a [1, 1] tensor"),
            }),
        }
    }

    fn reset(&mut self) -> Result<()> {
        self.module.method_is::<IValue>("reset_states", &[])?;
        Ok(())
    }
}

/// Options of the energy fallback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyVadConfig {
    /// Level above the noise floor (dB) at which the probability is 0.5.
    pub margin_db: f32,
    /// dB per logistic unit around the margin.
    pub slope_db: f32,
    /// Windows quieter than this (dBFS) are never speech.
    pub min_level_dbfs: f32,
    /// Noise floor assumed at the start of a stream (dBFS); the first window lowers it if quieter.
    pub initial_floor_dbfs: f32,
    /// How fast the floor rises towards louder windows (per window, 0..1); it falls at once.
    pub floor_rise: f32,
}

impl Default for EnergyVadConfig {
    fn default() -> Self {
        Self {
            margin_db: 12.0,
            slope_db: 2.0,
            min_level_dbfs: -55.0,
            initial_floor_dbfs: -60.0,
            floor_rise: 0.02,
        }
    }
}

/// Energy-based detector: logistic in (window level - noise floor).
#[derive(Debug, Clone)]
pub struct EnergyVad {
    config: EnergyVadConfig,
    floor_db: Option<f32>,
}

impl EnergyVad {
    pub fn new(config: EnergyVadConfig) -> Self {
        Self {
            config,
            floor_db: None,
        }
    }

    /// Current noise floor estimate (dBFS), once a window has been seen.
    pub fn noise_floor_dbfs(&self) -> Option<f32> {
        self.floor_db
    }
}

impl Default for EnergyVad {
    fn default() -> Self {
        Self::new(EnergyVadConfig::default())
    }
}

impl VoiceActivity for EnergyVad {
    fn window_probability(&mut self, window: &[f32]) -> Result<f32> {
        check_window(window)?;
        let mean = window.iter().map(|&v| v as f64).sum::<f64>() / WINDOW as f64;
        let power = window
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / WINDOW as f64;
        let db = (10.0 * (power + 1e-12).log10()) as f32;
        let c = self.config;
        let db = db.max(-100.0);
        let floor = *self.floor_db.get_or_insert(db.min(c.initial_floor_dbfs));
        let p = if db < c.min_level_dbfs {
            0.0
        } else {
            1.0 / (1.0 + (-(db - floor - c.margin_db) / c.slope_db).exp())
        };
        self.floor_db = Some(if db < floor {
            db
        } else {
            floor + c.floor_rise * (db - floor)
        });
        Ok(p)
    }

    fn reset(&mut self) -> Result<()> {
        self.floor_db = None;
        Ok(())
    }
}

/// Probabilities for a whole signal, one per window, the last partial window zero-padded (as the
/// package's `get_speech_timestamps`). Resets the detector first.
pub fn probabilities(vad: &mut dyn VoiceActivity, samples: &[f32]) -> Result<Vec<f32>> {
    vad.reset()?;
    let mut out = Vec::with_capacity(samples.len().div_ceil(WINDOW));
    let mut padded = [0f32; WINDOW];
    for chunk in samples.chunks(WINDOW) {
        let window = if chunk.len() == WINDOW {
            chunk
        } else {
            padded[..chunk.len()].copy_from_slice(chunk);
            padded[chunk.len()..].fill(0.0);
            &padded[..]
        };
        out.push(vad.window_probability(window)?);
    }
    Ok(out)
}
