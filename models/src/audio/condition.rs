//! Conditioning of arbitrary input audio to what the front end expects: 16 kHz, mono, finite
//! `f32` in [-1, 1]. Problems are repaired where that is safe and always reported.

use super::resample::StreamResampler;
use super::{AudioError, Result, SAMPLE_RATE};
use crate::stream::Streaming;

/// Samples at or beyond this magnitude count as clipped.
pub const CLIP_LEVEL: f32 = 0.999;
/// |mean| above this is reported as a DC offset worth noting.
pub const DC_WARN_LEVEL: f32 = 0.01;

/// What conditioning found in (and did to) the input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConditionReport {
    pub input_rate: u32,
    pub input_channels: u16,
    /// Frames (samples per channel) in the input.
    pub input_frames: usize,
    /// Samples in the output (16 kHz mono).
    pub output_samples: usize,
    /// NaN or ±Inf input samples; each was replaced by 0.
    pub non_finite: usize,
    /// Input samples with |x| >= [`CLIP_LEVEL`] (values beyond ±1 were clamped to ±1).
    pub clipped: usize,
    /// Mean of the mono signal before resampling (not removed unless asked).
    pub dc_offset: f32,
    /// Largest |x| of the mono signal.
    pub peak: f32,
    /// Whether the DC offset was subtracted.
    pub dc_removed: bool,
}

impl ConditionReport {
    /// True when nothing needed attention.
    pub fn is_clean(&self) -> bool {
        self.non_finite == 0 && self.clipped == 0 && self.dc_offset.abs() <= DC_WARN_LEVEL
    }
}

/// Options of [`condition`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConditionConfig {
    pub target_rate: u32,
    /// Subtract the signal's mean (the features already remove DC per frame).
    pub remove_dc: bool,
}

impl Default for ConditionConfig {
    fn default() -> Self {
        Self {
            target_rate: SAMPLE_RATE,
            remove_dc: false,
        }
    }
}

/// Interleaved samples at any rate and channel count -> 16 kHz mono, with a report.
pub fn to_mono_16k(
    samples: &[f32],
    sample_rate: u32,
    channels: u16,
) -> Result<(Vec<f32>, ConditionReport)> {
    condition(samples, sample_rate, channels, ConditionConfig::default())
}

/// [`to_mono_16k`] with explicit options.
pub fn condition(
    samples: &[f32],
    sample_rate: u32,
    channels: u16,
    config: ConditionConfig,
) -> Result<(Vec<f32>, ConditionReport)> {
    if channels == 0 {
        return Err(AudioError::InvalidInput("0 channels".into()));
    }
    if sample_rate == 0 || config.target_rate == 0 {
        return Err(AudioError::InvalidInput(format!(
            "sample rate must be positive (input {sample_rate} Hz, target {} Hz)",
            config.target_rate
        )));
    }
    let ch = channels as usize;
    if !samples.len().is_multiple_of(ch) {
        return Err(AudioError::InvalidInput(format!(
            "{} samples is not a whole number of {channels}-channel frames",
            samples.len()
        )));
    }
    let mut report = ConditionReport {
        input_rate: sample_rate,
        input_channels: channels,
        input_frames: samples.len() / ch,
        ..Default::default()
    };
    let mut mono = Vec::with_capacity(samples.len() / ch);
    let mut sum = 0f64;
    downmix(samples, ch, &mut report, &mut sum, &mut mono);
    if !mono.is_empty() {
        report.dc_offset = (sum / mono.len() as f64) as f32;
    }
    if config.remove_dc && report.dc_offset != 0.0 {
        for s in &mut mono {
            *s -= report.dc_offset;
        }
        report.dc_removed = true;
    }
    let out = if sample_rate == config.target_rate {
        mono
    } else {
        let mut r = StreamResampler::new(sample_rate, config.target_rate)?;
        let mut out = r.push(&mono)?;
        out.extend(r.finish()?);
        out
    };
    report.output_samples = out.len();
    if !report.is_clean() {
        tracing::warn!(
            non_finite = report.non_finite,
            clipped = report.clipped,
            dc_offset = report.dc_offset,
            "input audio needed conditioning"
        );
    }
    Ok((out, report))
}

/// Channel average of whole frames with NaN/Inf -> 0 and clamping to [-1, 1], counted in `report`.
fn downmix(
    samples: &[f32],
    ch: usize,
    report: &mut ConditionReport,
    sum: &mut f64,
    mono: &mut Vec<f32>,
) {
    for frame in samples.chunks_exact(ch) {
        let mut acc = 0f32;
        for &s in frame {
            let s = if s.is_finite() {
                s
            } else {
                report.non_finite += 1;
                0.0
            };
            if s.abs() >= CLIP_LEVEL {
                report.clipped += 1;
            }
            acc += s.clamp(-1.0, 1.0);
        }
        let m = acc / ch as f32;
        *sum += m as f64;
        report.peak = report.peak.max(m.abs());
        mono.push(m);
    }
}

/// Streaming [`to_mono_16k`] for live input: interleaved chunks of any size (a partial frame is
/// kept for the next push) to 16 kHz mono, with a running report. The output equals
/// [`to_mono_16k`] on the concatenated input (DC is reported as a running mean, never removed).
pub struct StreamConditioner {
    channels: usize,
    resampler: StreamResampler,
    partial: Vec<f32>,
    report: ConditionReport,
    sum: f64,
    mono: Vec<f32>,
}

impl StreamConditioner {
    pub fn new(sample_rate: u32, channels: u16) -> Result<Self> {
        if channels == 0 {
            return Err(AudioError::InvalidInput("0 channels".into()));
        }
        Ok(Self {
            channels: channels as usize,
            resampler: StreamResampler::new(sample_rate, SAMPLE_RATE)?,
            partial: Vec::new(),
            report: ConditionReport {
                input_rate: sample_rate,
                input_channels: channels,
                ..Default::default()
            },
            sum: 0.0,
            mono: Vec::new(),
        })
    }

    /// The report so far.
    pub fn report(&self) -> &ConditionReport {
        &self.report
    }
}

impl Streaming for StreamConditioner {
    type Input = [f32];
    type Output = Vec<f32>;
    type Error = AudioError;

    /// Conditions `samples` and returns the 16 kHz output completed so far.
    fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>> {
        self.mono.clear();
        let mut rest = samples;
        if !self.partial.is_empty() {
            let take = (self.channels - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() == self.channels {
                let frame = std::mem::take(&mut self.partial);
                downmix(
                    &frame,
                    self.channels,
                    &mut self.report,
                    &mut self.sum,
                    &mut self.mono,
                );
            }
        }
        let whole = rest.len() / self.channels * self.channels;
        downmix(
            &rest[..whole],
            self.channels,
            &mut self.report,
            &mut self.sum,
            &mut self.mono,
        );
        self.partial.extend_from_slice(&rest[whole..]);
        self.report.input_frames += self.mono.len();
        if self.report.input_frames > 0 {
            self.report.dc_offset = (self.sum / self.report.input_frames as f64) as f32;
        }
        let out = self.resampler.push(&self.mono)?;
        self.report.output_samples += out.len();
        Ok(out)
    }

    /// Flushes the resampler; a dangling partial frame is an error (the input was cut mid-frame).
    /// The report stays readable until `reset`.
    fn finish(&mut self) -> Result<Vec<f32>> {
        if !self.partial.is_empty() {
            let n = self.partial.len();
            self.partial.clear();
            return Err(AudioError::InvalidInput(format!(
                "stream ended inside a frame ({n} of {} channel samples)",
                self.channels
            )));
        }
        let out = self.resampler.finish()?;
        self.report.output_samples += out.len();
        Ok(out)
    }

    /// Starts a new stream (same rate and channels).
    fn reset(&mut self) {
        self.resampler.reset();
        self.partial.clear();
        self.sum = 0.0;
        self.report = ConditionReport {
            input_rate: self.report.input_rate,
            input_channels: self.report.input_channels,
            ..Default::default()
        };
    }
}
