//! WAV reading and writing through `hound`. Samples are interleaved `f32` in [-1, 1]; integer PCM
//! of b bits is scaled by 2^-(b-1) (8-bit WAV is unsigned on disk; hound recentres it).

use std::io::{Read, Seek};
use std::path::Path;

use super::{AudioError, Result};

/// Decoded audio: interleaved samples (frame-major), the rate and the channel count.
#[derive(Debug, Clone, PartialEq)]
pub struct WavAudio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: u16,
}

impl WavAudio {
    /// Number of frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / self.sample_rate.max(1) as f64
    }
}

/// On-disk sample format for [`write_wav`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit signed PCM (values clamped to [-1, 1] and rounded).
    Pcm16,
    /// 32-bit IEEE float.
    Float32,
}

/// Reads a WAV file: PCM 8/16/24/32-bit integer or 32-bit float, any channel count.
pub fn read_wav(path: impl AsRef<Path>) -> Result<WavAudio> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_wav_from(std::io::BufReader::new(file), &path.display().to_string())
}

/// Reads WAV data from any reader; `source_name` names it in errors.
pub fn read_wav_from<R: Read + Seek>(reader: R, source_name: &str) -> Result<WavAudio> {
    let wav_err = |e: hound::Error| match e {
        hound::Error::Unsupported => AudioError::UnsupportedFormat {
            source_name: source_name.to_string(),
            message: "hound does not support this encoding".into(),
        },
        other => AudioError::Wav {
            source_name: source_name.to_string(),
            message: other.to_string(),
        },
    };
    let reader = hound::WavReader::new(reader).map_err(wav_err)?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(AudioError::Wav {
            source_name: source_name.into(),
            message: "header declares 0 channels".into(),
        });
    }
    if spec.sample_rate == 0 {
        return Err(AudioError::Wav {
            source_name: source_name.into(),
            message: "header declares a sample rate of 0 Hz".into(),
        });
    }
    let declared = reader.len() as usize;
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<std::result::Result<_, _>>()
            .map_err(wav_err)?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| (v as f64 * scale) as f32))
                .collect::<std::result::Result<_, _>>()
                .map_err(wav_err)?
        }
        (format, bits) => {
            return Err(AudioError::UnsupportedFormat {
                source_name: source_name.into(),
                message: format!("{bits}-bit {format:?} samples"),
            })
        }
    };
    if samples.len() != declared {
        return Err(AudioError::Wav {
            source_name: source_name.into(),
            message: format!(
                "truncated: header declares {declared} samples, found {}",
                samples.len()
            ),
        });
    }
    if !samples.len().is_multiple_of(spec.channels as usize) {
        return Err(AudioError::Wav {
            source_name: source_name.into(),
            message: format!(
                "truncated: {} samples is not a whole number of {}-channel frames",
                samples.len(),
                spec.channels
            ),
        });
    }
    Ok(WavAudio {
        samples,
        sample_rate: spec.sample_rate,
        channels: spec.channels,
    })
}

/// Writes interleaved samples as a WAV file.
pub fn write_wav(
    path: impl AsRef<Path>,
    samples: &[f32],
    sample_rate: u32,
    channels: u16,
    format: WavFormat,
) -> Result<()> {
    let path = path.as_ref();
    if channels == 0 || sample_rate == 0 {
        return Err(AudioError::InvalidInput(format!(
            "cannot write {}: {channels} channels at {sample_rate} Hz",
            path.display()
        )));
    }
    if !samples.len().is_multiple_of(channels as usize) {
        return Err(AudioError::InvalidInput(format!(
            "cannot write {}: {} samples is not a whole number of {channels}-channel frames",
            path.display(),
            samples.len()
        )));
    }
    let spec = hound::WavSpec {
        channels,
        sample_rate,
        bits_per_sample: match format {
            WavFormat::Pcm16 => 16,
            WavFormat::Float32 => 32,
        },
        sample_format: match format {
            WavFormat::Pcm16 => hound::SampleFormat::Int,
            WavFormat::Float32 => hound::SampleFormat::Float,
        },
    };
    let err = |e: hound::Error| match e {
        hound::Error::IoError(source) => AudioError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => AudioError::Wav {
            source_name: path.display().to_string(),
            message: other.to_string(),
        },
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in samples {
        match format {
            WavFormat::Pcm16 => {
                let s = if s.is_finite() { s } else { 0.0 };
                let v = (s.clamp(-1.0, 1.0) * 32768.0)
                    .round()
                    .clamp(-32768.0, 32767.0);
                writer.write_sample(v as i16).map_err(err)?
            }
            WavFormat::Float32 => writer.write_sample(s).map_err(err)?,
        }
    }
    writer.finalize().map_err(err)
}
