//! Kaldi-compatible log-mel filterbank and MFCC, matching torchaudio's
//! `torchaudio/compliance/kaldi.py` (`fbank`, `mfcc`), itself a port of Kaldi's
//! `feat/feature-window.cc`, `feature-fbank.cc`, `feature-mfcc.cc` and `mel-computations.cc`.
//!
//! Defaults are torchaudio's: 25 ms frames every 10 ms with `snip_edges` (frame i covers samples
//! `[i*shift, i*shift + length)`, only whole frames), per-frame DC removal, pre-emphasis 0.97,
//! Povey window, zero-padding to a power of two (512 at 16 kHz), power spectrum, 23 triangular
//! mel bins from 20 Hz to Nyquist, log floored at `f32::EPSILON`, no dither; MFCC: 13 cepstra from
//! an orthonormal DCT-II (C0 weighted sqrt(1/num_mel_bins)) with cepstral lifter 22.
//!
//! **Input scale**: samples are floats in [-1, 1] and are multiplied by `input_scale` (default
//! 32768) before analysis, i.e. features equal torchaudio's on `waveform * 32768`, the int16 range
//! Kaldi models are trained on.
//!
//! Every frame depends only on its own samples, so [`FbankStream`] / [`MfccStream`] give exactly
//! the offline result for any chunking. Arithmetic is in f64 (torchaudio uses f32).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use tch::Tensor;

use super::{first_non_finite, AudioError, Result};
use crate::stream::Streaming;

/// Kaldi's analysis windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowType {
    Povey,
    Hanning,
    Hamming,
    Rectangular,
    Blackman,
}

/// Options of the log-mel filterbank (torchaudio `compliance.kaldi.fbank` names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct FbankConfig {
    pub sample_frequency: f64,
    pub frame_length_ms: f64,
    pub frame_shift_ms: f64,
    pub num_mel_bins: usize,
    pub low_freq: f64,
    /// <= 0 means an offset from Nyquist.
    pub high_freq: f64,
    pub preemphasis_coefficient: f64,
    pub remove_dc_offset: bool,
    pub window_type: WindowType,
    pub blackman_coeff: f64,
    pub round_to_power_of_two: bool,
    /// Prepend the log frame energy as an extra first column.
    pub use_energy: bool,
    /// Energy measured before pre-emphasis and windowing.
    pub raw_energy: bool,
    pub energy_floor: f64,
    /// Multiplier applied to the input samples (32768: [-1, 1] floats to the int16 range).
    pub input_scale: f64,
}

impl Default for FbankConfig {
    fn default() -> Self {
        Self {
            sample_frequency: 16000.0,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
            num_mel_bins: 23,
            low_freq: 20.0,
            high_freq: 0.0,
            preemphasis_coefficient: 0.97,
            remove_dc_offset: true,
            window_type: WindowType::Povey,
            blackman_coeff: 0.42,
            round_to_power_of_two: true,
            use_energy: false,
            raw_energy: true,
            energy_floor: 1.0,
            input_scale: 32768.0,
        }
    }
}

/// Options of the MFCC (torchaudio `compliance.kaldi.mfcc` names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct MfccConfig {
    /// The filterbank underneath (its `use_energy` replaces C0 by the log energy).
    pub fbank: FbankConfig,
    pub num_ceps: usize,
    pub cepstral_lifter: f64,
}

impl Default for MfccConfig {
    fn default() -> Self {
        Self {
            fbank: FbankConfig::default(),
            num_ceps: 13,
            cepstral_lifter: 22.0,
        }
    }
}

/// The shared per-frame analysis: window, FFT plan and mel weights.
struct Analyzer {
    cfg: FbankConfig,
    window_size: usize,
    window_shift: usize,
    padded: usize,
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
    /// Per mel bin: first FFT bin and its consecutive non-zero weights.
    mel: Vec<(usize, Vec<f64>)>,
}

impl Analyzer {
    fn new(cfg: FbankConfig) -> Result<Self> {
        let bad = |m: String| Err(AudioError::Config(m));
        if cfg.sample_frequency.is_nan() || cfg.sample_frequency <= 0.0 {
            return bad(format!(
                "sample_frequency must be > 0, got {}",
                cfg.sample_frequency
            ));
        }
        if !(cfg.frame_length_ms.is_finite() && cfg.frame_shift_ms.is_finite()) {
            return bad(format!(
                "frame length/shift must be finite ({} ms / {} ms)",
                cfg.frame_length_ms, cfg.frame_shift_ms
            ));
        }
        // Same truncation as torchaudio: int(sample_frequency * ms * 0.001).
        let window_shift = (cfg.sample_frequency * cfg.frame_shift_ms * 0.001) as usize;
        let window_size = (cfg.sample_frequency * cfg.frame_length_ms * 0.001) as usize;
        if window_size < 2 {
            return bad(format!("frame of {window_size} samples is shorter than 2"));
        }
        if window_size > 1 << 22 {
            return bad(format!(
                "frame of {window_size} samples is unreasonably long"
            ));
        }
        if window_shift == 0 {
            return bad("frame shift must be at least one sample".into());
        }
        let padded = if cfg.round_to_power_of_two {
            window_size.next_power_of_two()
        } else {
            window_size
        };
        if padded % 2 != 0 {
            return bad(format!(
                "padded frame of {padded} samples is odd; use round_to_power_of_two"
            ));
        }
        if !(0.0..=1.0).contains(&cfg.preemphasis_coefficient) {
            return bad(format!(
                "preemphasis_coefficient {} is outside [0, 1]",
                cfg.preemphasis_coefficient
            ));
        }
        if cfg.num_mel_bins <= 3 {
            return bad(format!(
                "num_mel_bins must be > 3, got {}",
                cfg.num_mel_bins
            ));
        }
        if !(cfg.input_scale.is_finite() && cfg.input_scale > 0.0) {
            return bad(format!("input_scale must be > 0, got {}", cfg.input_scale));
        }
        let nyquist = 0.5 * cfg.sample_frequency;
        let high = if cfg.high_freq <= 0.0 {
            cfg.high_freq + nyquist
        } else {
            cfg.high_freq
        };
        if !(0.0 <= cfg.low_freq && cfg.low_freq < nyquist && 0.0 < high && high <= nyquist)
            || cfg.low_freq >= high
        {
            return bad(format!(
                "low_freq {} / high_freq {} do not fit below Nyquist {nyquist}",
                cfg.low_freq, cfg.high_freq
            ));
        }
        let window = window_function(cfg.window_type, window_size, cfg.blackman_coeff);
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(padded);
        let mel = mel_banks(
            cfg.num_mel_bins,
            padded,
            cfg.sample_frequency,
            cfg.low_freq,
            high,
        );
        Ok(Self {
            cfg,
            window_size,
            window_shift,
            padded,
            window,
            fft,
            mel,
        })
    }

    /// Frames `snip_edges` framing yields for `n` samples.
    fn num_frames(&self, n: usize) -> usize {
        if n < self.window_size {
            0
        } else {
            1 + (n - self.window_size) / self.window_shift
        }
    }

    fn width(&self) -> usize {
        self.cfg.num_mel_bins + usize::from(self.cfg.use_energy)
    }

    /// Log-mel energies of one frame (`window_size` samples) into `out` (energy first when
    /// `use_energy`).
    fn frame(&self, samples: &[f32], scratch: &mut Scratch, out: &mut Vec<f64>) {
        let eps = f32::EPSILON as f64;
        let cfg = &self.cfg;
        let n = self.window_size;
        let x = &mut scratch.frame;
        x.clear();
        x.extend(samples[..n].iter().map(|&s| s as f64 * cfg.input_scale));
        if cfg.remove_dc_offset {
            let mean = x.iter().sum::<f64>() / n as f64;
            x.iter_mut().for_each(|v| *v -= mean);
        }
        let log_energy = |x: &[f64]| {
            let e = x.iter().map(|v| v * v).sum::<f64>().max(eps).ln();
            if cfg.energy_floor > 0.0 {
                e.max(cfg.energy_floor.ln())
            } else {
                e
            }
        };
        let mut energy = if cfg.raw_energy { log_energy(x) } else { 0.0 };
        let c = cfg.preemphasis_coefficient;
        if c != 0.0 {
            for j in (1..n).rev() {
                x[j] -= c * x[j - 1];
            }
            x[0] -= c * x[0];
        }
        for (v, w) in x.iter_mut().zip(&self.window) {
            *v *= w;
        }
        x.resize(self.padded, 0.0);
        if !cfg.raw_energy {
            energy = log_energy(x);
        }
        self.fft
            .process_with_scratch(x, &mut scratch.spectrum, &mut scratch.fft)
            .expect("FFT buffers are sized by the plan");
        out.clear();
        if cfg.use_energy {
            out.push(energy);
        }
        for (start, weights) in &self.mel {
            let e: f64 = weights
                .iter()
                .zip(&scratch.spectrum[*start..])
                .map(|(w, z)| w * z.norm_sqr())
                .sum();
            out.push(e.max(eps).ln());
        }
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            frame: Vec::with_capacity(self.padded),
            spectrum: self.fft.make_output_vec(),
            fft: self.fft.make_scratch_vec(),
            row: Vec::with_capacity(self.width()),
        }
    }
}

struct Scratch {
    frame: Vec<f64>,
    spectrum: Vec<realfft::num_complex::Complex<f64>>,
    fft: Vec<realfft::num_complex::Complex<f64>>,
    row: Vec<f64>,
}

fn window_function(kind: WindowType, n: usize, blackman_coeff: f64) -> Vec<f64> {
    let a = 2.0 * std::f64::consts::PI / (n - 1) as f64;
    (0..n)
        .map(|i| {
            let i = i as f64;
            let hann = 0.5 - 0.5 * (a * i).cos();
            match kind {
                WindowType::Hanning => hann,
                WindowType::Povey => hann.powf(0.85),
                WindowType::Hamming => 0.54 - 0.46 * (a * i).cos(),
                WindowType::Rectangular => 1.0,
                WindowType::Blackman => {
                    blackman_coeff - 0.5 * (a * i).cos()
                        + (0.5 - blackman_coeff) * (2.0 * a * i).cos()
                }
            }
        })
        .collect()
}

fn mel_scale(f: f64) -> f64 {
    1127.0 * (1.0 + f / 700.0).ln()
}

/// Triangular mel filters over FFT bins 0..padded/2 (the Nyquist bin gets weight 0), as Kaldi's
/// `MelBanks` without VTLN. torchaudio's `get_mel_banks` evaluates the triangles in float32
/// (default dtype) even for float64 input; the weights are computed the same way here so that
/// tones on a filter's slope match it closely.
fn mel_banks(
    num_bins: usize,
    padded: usize,
    sample_freq: f64,
    low: f64,
    high: f64,
) -> Vec<(usize, Vec<f64>)> {
    let bin_width = (sample_freq / padded as f64) as f32;
    let (mel_low, mel_high) = (mel_scale(low), mel_scale(high));
    let delta = ((mel_high - mel_low) / (num_bins + 1) as f64) as f32;
    let mel_low = mel_low as f32;
    let fft_mel: Vec<f32> = (0..padded / 2)
        .map(|i| 1127.0f32 * (1.0f32 + bin_width * i as f32 / 700.0f32).ln())
        .collect();
    (0..num_bins)
        .map(|b| {
            let left = mel_low + b as f32 * delta;
            let center = mel_low + (b as f32 + 1.0) * delta;
            let right = mel_low + (b as f32 + 2.0) * delta;
            let weights: Vec<(usize, f64)> = fft_mel
                .iter()
                .enumerate()
                .filter_map(|(i, &m)| {
                    let w = ((m - left) / (center - left)).min((right - m) / (right - center));
                    (w > 0.0).then_some((i, w as f64))
                })
                .collect();
            let start = weights.first().map_or(0, |&(i, _)| i);
            let mut dense = vec![0.0; weights.last().map_or(0, |&(i, _)| i + 1 - start)];
            for (i, w) in weights {
                dense[i - start] = w;
            }
            (start, dense)
        })
        .collect()
}

fn check_finite(samples: &[f32]) -> Result<()> {
    match first_non_finite(samples) {
        Some((i, v)) => Err(AudioError::InvalidInput(format!(
            "sample {i} is {v}; condition the audio (condition::to_mono_16k) first"
        ))),
        None => Ok(()),
    }
}

fn to_tensor(data: Vec<f32>, cols: usize) -> Tensor {
    let rows = (data.len() / cols) as i64;
    Tensor::from_slice(&data).view([rows, cols as i64])
}

/// A frame-wise transform of log-mel rows (identity for fbank, DCT + lifter for MFCC).
trait RowMap: Send + Sync {
    fn cols(&self) -> usize;
    fn map(&self, logmel: &[f64], out: &mut Vec<f32>);
}

struct Identity(usize);

impl RowMap for Identity {
    fn cols(&self) -> usize {
        self.0
    }
    fn map(&self, logmel: &[f64], out: &mut Vec<f32>) {
        out.extend(logmel.iter().map(|&v| v as f32));
    }
}

struct Cepstra {
    num_ceps: usize,
    use_energy: bool,
    /// `dct[k * num_mel + n]`, liftered.
    dct: Vec<f64>,
    num_mel: usize,
}

impl RowMap for Cepstra {
    fn cols(&self) -> usize {
        self.num_ceps
    }
    fn map(&self, row: &[f64], out: &mut Vec<f32>) {
        let (energy, logmel) = if self.use_energy {
            (Some(row[0]), &row[1..])
        } else {
            (None, row)
        };
        for k in 0..self.num_ceps {
            let c = if let (0, Some(e)) = (k, energy) {
                e
            } else {
                let basis = &self.dct[k * self.num_mel..(k + 1) * self.num_mel];
                basis.iter().zip(logmel).map(|(a, b)| a * b).sum()
            };
            out.push(c as f32);
        }
    }
}

/// A featurizer: analysis plus a per-row map. Cheap to clone (shared, immutable).
#[derive(Clone)]
struct Featurizer {
    analyzer: Arc<Analyzer>,
    map: Arc<dyn RowMap>,
}

impl Featurizer {
    fn compute(&self, samples: &[f32]) -> Result<Tensor> {
        check_finite(samples)?;
        let a = &self.analyzer;
        let frames = a.num_frames(samples.len());
        let mut data = Vec::with_capacity(frames * self.map.cols());
        let mut scratch = a.scratch();
        let mut row = std::mem::take(&mut scratch.row);
        for i in 0..frames {
            let start = i * a.window_shift;
            a.frame(
                &samples[start..start + a.window_size],
                &mut scratch,
                &mut row,
            );
            self.map.map(&row, &mut data);
        }
        Ok(to_tensor(data, self.map.cols()))
    }

    fn stream(&self) -> FeatureStream {
        FeatureStream {
            featurizer: self.clone(),
            buffer: Vec::new(),
            scratch: self.analyzer.scratch(),
            frames_emitted: 0,
        }
    }
}

/// Streaming state shared by [`FbankStream`] and [`MfccStream`].
struct FeatureStream {
    featurizer: Featurizer,
    buffer: Vec<f32>,
    scratch: Scratch,
    frames_emitted: u64,
}

impl FeatureStream {
    fn push(&mut self, samples: &[f32]) -> Result<Tensor> {
        check_finite(samples)?;
        self.buffer.extend_from_slice(samples);
        let a = self.featurizer.analyzer.clone();
        let cols = self.featurizer.map.cols();
        let frames = a.num_frames(self.buffer.len());
        let mut data = Vec::with_capacity(frames * cols);
        let mut row = std::mem::take(&mut self.scratch.row);
        for i in 0..frames {
            let start = i * a.window_shift;
            a.frame(
                &self.buffer[start..start + a.window_size],
                &mut self.scratch,
                &mut row,
            );
            self.featurizer.map.map(&row, &mut data);
        }
        self.scratch.row = row;
        self.buffer.drain(..frames * a.window_shift);
        self.frames_emitted += frames as u64;
        Ok(to_tensor(data, cols))
    }

    fn reset(&mut self) {
        self.buffer.clear();
        self.frames_emitted = 0;
    }

    fn no_frames(&self) -> Tensor {
        to_tensor(Vec::new(), self.featurizer.map.cols())
    }
}

/// Kaldi log-mel filterbank (torchaudio `compliance.kaldi.fbank`).
#[derive(Clone)]
pub struct Fbank {
    inner: Featurizer,
    config: FbankConfig,
}

impl Fbank {
    pub fn new(config: FbankConfig) -> Result<Self> {
        let analyzer = Arc::new(Analyzer::new(config.clone())?);
        let cols = analyzer.width();
        Ok(Self {
            inner: Featurizer {
                analyzer,
                map: Arc::new(Identity(cols)),
            },
            config,
        })
    }

    pub fn config(&self) -> &FbankConfig {
        &self.config
    }

    /// Output columns (num_mel_bins, plus one with `use_energy`).
    pub fn num_features(&self) -> usize {
        self.inner.map.cols()
    }

    /// Frame length and shift in samples.
    pub fn frame_geometry(&self) -> (usize, usize) {
        (
            self.inner.analyzer.window_size,
            self.inner.analyzer.window_shift,
        )
    }

    /// f32 `[num_frames, num_features]` on the CPU; fewer samples than one frame give 0 rows.
    pub fn compute(&self, samples: &[f32]) -> Result<Tensor> {
        self.inner.compute(samples)
    }

    pub fn stream(&self) -> FbankStream {
        FbankStream(self.inner.stream())
    }
}

/// Streaming filterbank: `push` returns the frames completed by the new samples.
pub struct FbankStream(FeatureStream);

impl Streaming for FbankStream {
    type Input = [f32];
    type Output = Tensor;
    type Error = AudioError;

    /// New complete frames `[n, D]` (n may be 0).
    fn push(&mut self, samples: &[f32]) -> Result<Tensor> {
        self.0.push(samples)
    }

    /// A partial last frame is dropped (`snip_edges`, as offline): no frames, and a new stream.
    fn finish(&mut self) -> Result<Tensor> {
        self.0.reset();
        Ok(self.0.no_frames())
    }

    /// Forgets buffered samples (start of a new utterance).
    fn reset(&mut self) {
        self.0.reset()
    }
}

impl FbankStream {
    /// Frames emitted since the last reset.
    pub fn frames_emitted(&self) -> u64 {
        self.0.frames_emitted
    }
}

/// Kaldi MFCC (torchaudio `compliance.kaldi.mfcc`).
#[derive(Clone)]
pub struct Mfcc {
    inner: Featurizer,
    config: MfccConfig,
}

impl Mfcc {
    pub fn new(config: MfccConfig) -> Result<Self> {
        let num_mel = config.fbank.num_mel_bins;
        if config.num_ceps == 0 || config.num_ceps > num_mel {
            return Err(AudioError::Config(format!(
                "num_ceps must be in 1..={num_mel} (num_mel_bins), got {}",
                config.num_ceps
            )));
        }
        let analyzer = Arc::new(Analyzer::new(config.fbank.clone())?);
        // Orthonormal DCT-II with C0 at sqrt(1/N) (torchaudio `_get_dct_matrix`), times the
        // lifter 1 + L/2 sin(pi k / L) (`_get_lifter_coeffs`). torchaudio builds both in float32
        // whatever the input dtype; the same f32 coefficients are used here.
        let n32 = num_mel as f32;
        let pi_over_n = (std::f64::consts::PI / num_mel as f64) as f32;
        let ortho = (2.0 / num_mel as f64).sqrt() as f32;
        let mut dct = Vec::with_capacity(config.num_ceps * num_mel);
        for k in 0..config.num_ceps {
            let lifter = if config.cepstral_lifter != 0.0 {
                let l = config.cepstral_lifter;
                let arg = (std::f64::consts::PI as f32 * k as f32) / l as f32;
                (1.0f32 + (0.5 * l) as f32 * arg.sin()) as f64
            } else {
                1.0
            };
            for j in 0..num_mel {
                let basis = if k == 0 {
                    (1.0 / n32 as f64).sqrt() as f32
                } else {
                    (pi_over_n * (j as f32 + 0.5) * k as f32).cos() * ortho
                };
                dct.push(basis as f64 * lifter);
            }
        }
        let map = Cepstra {
            num_ceps: config.num_ceps,
            use_energy: config.fbank.use_energy,
            dct,
            num_mel,
        };
        Ok(Self {
            inner: Featurizer {
                analyzer,
                map: Arc::new(map),
            },
            config,
        })
    }

    pub fn config(&self) -> &MfccConfig {
        &self.config
    }

    pub fn num_ceps(&self) -> usize {
        self.config.num_ceps
    }

    /// Frame length and shift in samples.
    pub fn frame_geometry(&self) -> (usize, usize) {
        (
            self.inner.analyzer.window_size,
            self.inner.analyzer.window_shift,
        )
    }

    /// f32 `[num_frames, num_ceps]` on the CPU; fewer samples than one frame give 0 rows.
    pub fn compute(&self, samples: &[f32]) -> Result<Tensor> {
        self.inner.compute(samples)
    }

    pub fn stream(&self) -> MfccStream {
        MfccStream(self.inner.stream())
    }
}

/// Streaming MFCC: `push` returns the frames completed by the new samples.
pub struct MfccStream(FeatureStream);

impl Streaming for MfccStream {
    type Input = [f32];
    type Output = Tensor;
    type Error = AudioError;

    /// New complete frames `[n, D]` (n may be 0).
    fn push(&mut self, samples: &[f32]) -> Result<Tensor> {
        self.0.push(samples)
    }

    /// A partial last frame is dropped (`snip_edges`, as offline): no frames, and a new stream.
    fn finish(&mut self) -> Result<Tensor> {
        self.0.reset();
        Ok(self.0.no_frames())
    }

    /// Forgets buffered samples (start of a new utterance).
    fn reset(&mut self) {
        self.0.reset()
    }
}

impl MfccStream {
    /// Frames emitted since the last reset.
    pub fn frames_emitted(&self) -> u64 {
        self.0.frames_emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn streaming_equals_offline_exactly() {
        let x = noise(16000, 1);
        let mfcc = Mfcc::new(MfccConfig::default()).unwrap();
        let offline = mfcc.compute(&x).unwrap();
        assert_eq!(offline.size(), [98, 13]);
        crate::stream::testing::assert_chunked_eq_offline(
            || mfcc.stream(),
            &x,
            &offline,
            &[1, 7, 160, 320, 333, 4000],
            |chunk, got, want| assert!(got.equal(want), "chunk {chunk}"),
        );
        let mut s = mfcc.stream();
        assert_eq!(s.push(&x).unwrap().size()[0], 98);
        assert_eq!(s.frames_emitted(), 98);
    }

    #[test]
    fn short_input_gives_no_frames_and_nan_is_an_error() {
        let fbank = Fbank::new(FbankConfig::default()).unwrap();
        assert_eq!(fbank.compute(&[]).unwrap().size(), [0, 23]);
        assert_eq!(fbank.compute(&[0.1]).unwrap().size(), [0, 23]);
        assert_eq!(fbank.compute(&[0.0; 400]).unwrap().size(), [1, 23]);
        let mut x = vec![0.0f32; 1000];
        x[500] = f32::NAN;
        let err = fbank.compute(&x).unwrap_err().to_string();
        assert!(err.contains("sample 500"), "{err}");
    }

    #[test]
    fn bad_configs_are_rejected() {
        let c = MfccConfig {
            num_ceps: 40,
            ..Default::default()
        };
        assert!(Mfcc::new(c).is_err());
        let f = FbankConfig {
            num_mel_bins: 2,
            ..Default::default()
        };
        assert!(Fbank::new(f).is_err());
        let f = FbankConfig {
            low_freq: 9000.0,
            ..Default::default()
        };
        assert!(Fbank::new(f).is_err());
        let f = FbankConfig {
            sample_frequency: f64::NAN,
            ..Default::default()
        };
        assert!(Fbank::new(f).is_err());
    }
}
