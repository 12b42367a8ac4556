//! HiFi-GAN training losses: log-mel L1 reconstruction (weight 45 in HiFi-GAN), feature matching
//! (2 * sum of mean |D_l(y) - D_l(G(z))|) and least-squares adversarial losses
//! (D: sum mean (1 - D(y))^2 + mean D(G(z))^2; G: sum mean (1 - D(G(z)))^2).
//!
//! Reference: jik876/hifi-gan `models.py` (feature_loss, discriminator_loss, generator_loss),
//! `meldataset.py` (mel_spectrogram: reflect padding of (n_fft - hop) / 2, STFT without
//! centering, magnitude sqrt(re^2 + im^2 + 1e-9), Slaney mel filterbank as librosa's default,
//! log(clamp(x, 1e-5))).

use crate::{ModelError, Result};
use tch::{Device, Kind, Reduction, Tensor};

/// HiFi-GAN's weight of the mel L1 loss in the generator objective.
pub const MEL_LOSS_WEIGHT: f64 = 45.0;

/// Feature-matching loss over sub-discriminators and layers: `2 * sum mean |r - g|`.
pub fn feature_loss(real: &[Vec<Tensor>], fake: &[Vec<Tensor>]) -> Result<Tensor> {
    check_len(real.len(), fake.len(), "feature maps")?;
    let mut loss: Option<Tensor> = None;
    for (dr, dg) in real.iter().zip(fake) {
        check_len(dr.len(), dg.len(), "layers")?;
        for (r, g) in dr.iter().zip(dg) {
            let l = r.f_sub(g)?.f_abs()?.f_mean(Kind::Float)?;
            loss = Some(match loss {
                Some(x) => x.f_add(&l)?,
                None => l,
            });
        }
    }
    let loss = loss.ok_or_else(|| ModelError::InvalidArgument("no feature maps".into()))?;
    Ok(loss.f_mul_scalar(2.0)?)
}

/// Least-squares discriminator loss; also returns each sub-discriminator's real and fake parts.
pub fn discriminator_loss(
    real: &[Tensor],
    fake: &[Tensor],
) -> Result<(Tensor, Vec<f64>, Vec<f64>)> {
    check_len(real.len(), fake.len(), "scores")?;
    if real.is_empty() {
        return Err(ModelError::InvalidArgument(
            "no discriminator scores".into(),
        ));
    }
    let mut total: Option<Tensor> = None;
    let (mut rs, mut gs) = (Vec::new(), Vec::new());
    for (dr, dg) in real.iter().zip(fake) {
        let r = dr
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_square()?
            .f_mean(Kind::Float)?;
        let g = dg.f_square()?.f_mean(Kind::Float)?;
        rs.push(r.f_double_value(&[])?);
        gs.push(g.f_double_value(&[])?);
        let l = r.f_add(&g)?;
        total = Some(match total {
            Some(t) => t.f_add(&l)?,
            None => l,
        });
    }
    Ok((total.expect("non-empty"), rs, gs))
}

/// Least-squares generator (adversarial) loss: `sum mean (1 - D(G(z)))^2`.
pub fn generator_loss(fake: &[Tensor]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for dg in fake {
        let l = dg
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_square()?
            .f_mean(Kind::Float)?;
        total = Some(match total {
            Some(t) => t.f_add(&l)?,
            None => l,
        });
    }
    total.ok_or_else(|| ModelError::InvalidArgument("no discriminator scores".into()))
}

fn check_len(a: usize, b: usize, what: &str) -> Result<()> {
    if a != b {
        return Err(ModelError::InvalidArgument(format!(
            "{what}: {a} real against {b} generated"
        )));
    }
    Ok(())
}

/// Mel-spectrogram settings of the HiFi-GAN loss.
#[derive(Debug, Clone, PartialEq)]
pub struct MelConfig {
    pub sampling_rate: i64,
    pub n_fft: i64,
    pub num_mels: i64,
    pub hop_size: i64,
    pub win_size: i64,
    pub fmin: f64,
    pub fmax: f64,
}

impl MelConfig {
    /// The fairseq/speech-resynthesis unit vocoders' loss (16 kHz; `fmax_for_loss` null means
    /// the Nyquist frequency).
    pub fn unit_vocoder_16k() -> Self {
        Self {
            sampling_rate: 16000,
            n_fft: 1024,
            num_mels: 80,
            hop_size: 256,
            win_size: 1024,
            fmin: 0.0,
            fmax: 8000.0,
        }
    }
}

// Slaney mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(f: f64) -> f64 {
    if f >= MIN_LOG_HZ {
        MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / log_step()
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (m - MIN_LOG_MEL)).exp()
    } else {
        m * F_SP
    }
}

/// Slaney-normalised triangular mel filters (n_mels, n_fft / 2 + 1), as librosa.filters.mel
/// with its defaults (and torchaudio's melscale_fbanks with norm and mel_scale "slaney").
pub fn mel_filterbank(
    sampling_rate: i64,
    n_fft: i64,
    n_mels: i64,
    fmin: f64,
    fmax: f64,
) -> Vec<Vec<f64>> {
    let n_freqs = (n_fft / 2 + 1) as usize;
    let nyquist = sampling_rate as f64 / 2.0;
    let fft: Vec<f64> = (0..n_freqs)
        .map(|i| nyquist * i as f64 / (n_freqs - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(fmin), hz_to_mel(fmax));
    let n = n_mels as usize;
    let pts: Vec<f64> = (0..n + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n + 1) as f64))
        .collect();
    (0..n)
        .map(|m| {
            let (f0, f1, f2) = (pts[m], pts[m + 1], pts[m + 2]);
            let enorm = 2.0 / (f2 - f0);
            fft.iter()
                .map(|&f| {
                    let lower = (f - f0) / (f1 - f0);
                    let upper = (f2 - f) / (f2 - f1);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// HiFi-GAN's log-mel spectrogram.
#[derive(Debug)]
pub struct MelSpectrogram {
    config: MelConfig,
    basis: Tensor,
    window: Tensor,
}

impl MelSpectrogram {
    pub fn new(config: MelConfig, device: Device) -> Result<Self> {
        if config.n_fft < config.win_size || config.hop_size < 1 || config.num_mels < 1 {
            return Err(ModelError::InvalidArgument(format!(
                "mel settings {config:?}: need n_fft >= win_size, hop_size >= 1, num_mels >= 1"
            )));
        }
        let fb = mel_filterbank(
            config.sampling_rate,
            config.n_fft,
            config.num_mels,
            config.fmin,
            config.fmax,
        );
        let flat: Vec<f32> = fb.iter().flatten().map(|&x| x as f32).collect();
        let basis = Tensor::from_slice(&flat)
            .f_view([config.num_mels, config.n_fft / 2 + 1])?
            .f_to_device(device)?;
        let window = Tensor::f_hann_window(config.win_size, (Kind::Float, device))?;
        Ok(Self {
            config,
            basis,
            window,
        })
    }

    /// Waveforms (batch, time) or (batch, 1, time) -> log-mel (batch, num_mels, frames).
    pub fn forward(&self, y: &Tensor) -> Result<Tensor> {
        let y = if y.dim() == 3 {
            y.f_squeeze_dim(1)?
        } else {
            y.shallow_clone()
        };
        let c = &self.config;
        let pad = (c.n_fft - c.hop_size) / 2;
        if y.dim() != 2 || y.size()[1] <= pad {
            return Err(ModelError::InvalidArgument(format!(
                "mel spectrogram: waveform of shape {:?}, need (batch, time > {pad})",
                y.size()
            )));
        }
        let y = y
            .f_unsqueeze(1)?
            .f_pad([pad, pad], "reflect", None)?
            .f_squeeze_dim(1)?;
        let spec = y.f_stft(
            c.n_fft,
            c.hop_size,
            c.win_size,
            Some(&self.window),
            false,
            true,
            true,
            false,
        )?;
        let mag = spec.f_view_as_real()?.f_square()?.f_sum_dim_intlist(
            [-1i64].as_slice(),
            false,
            Kind::Float,
        )?;
        let mag = mag.f_add_scalar(1e-9)?.f_sqrt()?;
        Ok(self.basis.f_matmul(&mag)?.f_clamp_min(1e-5)?.f_log()?)
    }
}

/// L1 distance of the log-mel spectrograms of real and generated waveforms (unweighted; the
/// generator objective multiplies it by [`MEL_LOSS_WEIGHT`]).
pub fn mel_l1_loss(mel: &MelSpectrogram, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
    Ok(mel
        .forward(real)?
        .f_l1_loss(&mel.forward(fake)?, Reduction::Mean)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).view([1, -1])
    }

    #[test]
    fn least_squares_losses_by_hand() {
        // D(y) = [1, 0.5], [0]; D(G(z)) = [0, 1], [2].
        let real = [t(&[1.0, 0.5]), t(&[0.0])];
        let fake = [t(&[0.0, 1.0]), t(&[2.0])];
        let (d, rs, gs) = discriminator_loss(&real, &fake).unwrap();
        // real parts: mean(0, 0.25) = 0.125, 1; fake parts: mean(0, 1) = 0.5, 4.
        assert_eq!(rs, vec![0.125, 1.0]);
        assert_eq!(gs, vec![0.5, 4.0]);
        assert!((d.double_value(&[]) - 5.625).abs() < 1e-6);
        // G: mean(1, 0) = 0.5, (1 - 2)^2 = 1.
        assert!((generator_loss(&fake).unwrap().double_value(&[]) - 1.5).abs() < 1e-6);
        assert!(discriminator_loss(&real, &fake[..1]).is_err());
    }

    #[test]
    fn feature_loss_by_hand() {
        let real = vec![vec![t(&[1.0, 2.0]), t(&[0.0])], vec![t(&[3.0])]];
        let fake = vec![vec![t(&[0.0, 2.0]), t(&[-1.0])], vec![t(&[1.0])]];
        // 2 * (mean(1, 0) + 1 + 2) = 7.
        let l = feature_loss(&real, &fake).unwrap().double_value(&[]);
        assert!((l - 7.0).abs() < 1e-6);
    }

    #[test]
    fn slaney_mel_scale_and_filters() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-9); // 15 + ln(6.4) / (ln(6.4) / 27)
        assert!((mel_to_hz(hz_to_mel(3210.0)) - 3210.0).abs() < 1e-9);
        let fb = mel_filterbank(16000, 1024, 80, 0.0, 8000.0);
        assert_eq!((fb.len(), fb[0].len()), (80, 513));
        // Slaney norm: each filter's area (in Hz) is 1, i.e. sum(w) * 15.625 Hz per bin ~ 1.
        for row in &fb[10..] {
            let area: f64 = row.iter().sum::<f64>() * 8000.0 / 512.0;
            assert!((area - 1.0).abs() < 0.05, "{area}");
        }
    }

    #[test]
    fn mel_of_a_sine_peaks_at_its_band() {
        let mel = MelSpectrogram::new(MelConfig::unit_vocoder_16k(), Device::Cpu).unwrap();
        let n = 8000;
        let y = (Tensor::arange(n, (Kind::Float, Device::Cpu))
            * (2.0 * std::f64::consts::PI * 440.0 / 16000.0))
            .sin()
            .view([1, -1]);
        let m = mel.forward(&y).unwrap();
        assert_eq!(m.size(), vec![1, 80, (n + 2 * 384 - 1024) / 256 + 1]);
        let peak = m
            .mean_dim([2i64].as_slice(), false, Kind::Float)
            .argmax(1, false)
            .int64_value(&[0]);
        // 440 Hz is mel 6.6 (linear part); 80 filters over mel 0..45.25 (8 kHz) have centres
        // (m + 1) * 45.25 / 81 = 0.559 (m + 1): the nearest is m = 10.8, so band 11 (or 10).
        assert!((10..=11).contains(&peak), "peak band {peak}");
        let zero = mel_l1_loss(&mel, &y, &y).unwrap().double_value(&[]);
        assert_eq!(zero, 0.0);
    }
}
