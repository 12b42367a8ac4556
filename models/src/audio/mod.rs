//! The speech front end's signal side: WAV I/O, conditioning to 16 kHz mono, resampling, Kaldi
//! features, voice activity and endpointing.
//!
//! - [`wav`]: [`wav::read_wav`] / [`wav::write_wav`] (any PCM 8/16/24/32-bit integer or 32-bit
//!   float WAV, any channel count; samples as interleaved `f32` in [-1, 1]);
//! - [`condition`]: [`condition::to_mono_16k`] turns any rate and channel count into 16 kHz mono
//!   `f32` and reports NaN/Inf, clipping and DC offset in a [`condition::ConditionReport`];
//!   [`condition::StreamConditioner`] does the same chunk by chunk for live input;
//! - [`resample`]: a band-limited (FFT, `rubato`) resampler that streams chunks of any size;
//! - [`features`]: Kaldi-compatible log-mel filterbank and MFCC (torchaudio
//!   `compliance.kaldi.fbank` / `mfcc` defaults), offline and streaming; input samples are floats
//!   in [-1, 1] scaled by 32768 (the int16 convention Kaldi and torchaudio users apply);
//! - [`vad`]: Silero VAD (the real TorchScript model from the `silero-vad` package) and an energy
//!   fallback, both on 512-sample windows at 16 kHz;
//! - [`endpoint`]: speech start/end events with sample-accurate timestamps, streaming.

pub mod condition;
pub mod endpoint;
pub mod features;
pub mod resample;
pub mod vad;
pub mod wav;

use std::path::PathBuf;

/// Sample rate of everything downstream of conditioning (features, VAD, units).
pub const SAMPLE_RATE: u32 = 16_000;

pub type Result<T, E = AudioError> = std::result::Result<T, E>;

/// Typed errors of the audio front end; each names the file or argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name}: not a readable WAV file: {message}")]
    Wav {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: unsupported WAV format: {message}")]
    UnsupportedFormat {
        source_name: String,
        message: String,
    },
    #[error("invalid audio input: {0}")]
    InvalidInput(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("resampler: {0}")]
    Resample(String),
    #[error("{path}: cannot load VAD model: {message}")]
    Model { path: PathBuf, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Index and value of the first non-finite sample, if any.
pub(crate) fn first_non_finite(samples: &[f32]) -> Option<(usize, f32)> {
    samples
        .iter()
        .position(|x| !x.is_finite())
        .map(|i| (i, samples[i]))
}
