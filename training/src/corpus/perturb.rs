//! Signal perturbations of training speech for voices and rooms the corpus voices do not cover
//! (`tolk-train augment`): speed perturbation (tempo and pitch together, as Kaldi's
//! `perturb_data_dir_speed.sh` does by resampling), pitch shift at constant tempo (resampling,
//! then a WSOLA time stretch back to the original length), reverberation by a synthetic room
//! impulse response (a direct path plus an exponentially decaying Gaussian tail of a drawn RT60
//! and direct-to-reverberant ratio, convolved by FFT), and babble (other corpus utterances summed
//! as background talkers). All on 16 kHz mono `f32`; randomness comes from the caller's
//! generator, so a copy is a function of its seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use realfft::RealFftPlanner;
use tolk_models::audio::resample::resample;
use tolk_models::audio::SAMPLE_RATE;

/// Speed perturbation by `factor` (> 1 is faster and higher): the samples are resampled as if
/// recorded at `factor * 16 kHz`, so the output is `len / factor` long.
pub fn speed(x: &[f32], factor: f64) -> Vec<f32> {
    let from = (SAMPLE_RATE as f64 * factor).round() as u32;
    if from == SAMPLE_RATE || x.is_empty() {
        return x.to_vec();
    }
    resample(x, from, SAMPLE_RATE).expect("16 kHz-range rates are accepted by the resampler")
}

/// WSOLA time stretch of `x` to `out_len` samples (tempo changes, pitch does not): 40 ms Hann
/// frames written every 20 ms, each taken from near its nominal input position where it best
/// continues the previous frame (search +-10 ms).
pub fn stretch(x: &[f32], out_len: usize) -> Vec<f32> {
    const FRAME: usize = 640;
    const HOP: usize = FRAME / 2;
    const SEARCH: usize = 160;
    if x.len() < FRAME + 2 * SEARCH || out_len == 0 {
        // Too short to stretch by frames: linear interpolation keeps the length contract.
        return (0..out_len)
            .map(|i| {
                let p = i as f64 * (x.len().max(1) - 1) as f64 / (out_len.max(2) - 1) as f64;
                let (j, f) = (p.floor() as usize, p.fract() as f32);
                let a = x.get(j).copied().unwrap_or(0.0);
                let b = x.get(j + 1).copied().unwrap_or(a);
                a + (b - a) * f
            })
            .collect();
    }
    let window: Vec<f32> = (0..FRAME)
        .map(|i| {
            let t = std::f32::consts::TAU * i as f32 / FRAME as f32;
            0.5 - 0.5 * t.cos()
        })
        .collect();
    let rate = x.len() as f64 / out_len as f64;
    let mut out = vec![0f32; out_len + FRAME];
    let mut norm = vec![0f32; out_len + FRAME];
    // Where the previous frame's natural continuation starts in the input.
    let mut prev: Option<usize> = None;
    let last_start = x.len() - FRAME;
    let mut k = 0;
    while k * HOP < out_len {
        let nominal = ((k * HOP) as f64 * rate).round() as usize;
        let start = match prev {
            None => nominal.min(last_start),
            Some(next) => {
                let lo = nominal.saturating_sub(SEARCH).min(last_start);
                let hi = (nominal + SEARCH).min(last_start);
                let target = &x[next.min(last_start)..next.min(last_start) + HOP];
                (lo..=hi)
                    .max_by(|&a, &b| {
                        let c = |s: usize| -> f32 {
                            x[s..s + HOP].iter().zip(target).map(|(u, v)| u * v).sum()
                        };
                        c(a).total_cmp(&c(b))
                    })
                    .unwrap_or(nominal.min(last_start))
            }
        };
        let o = k * HOP;
        for i in 0..FRAME {
            out[o + i] += x[start + i] * window[i];
            norm[o + i] += window[i];
        }
        prev = Some(start + HOP);
        k += 1;
    }
    out.truncate(out_len);
    for (y, n) in out.iter_mut().zip(&norm) {
        if *n > 1e-3 {
            *y /= n;
        }
    }
    out
}

/// Pitch shift by `semitones` at constant length and tempo.
pub fn pitch_shift(x: &[f32], semitones: f64) -> Vec<f32> {
    if semitones == 0.0 || x.is_empty() {
        return x.to_vec();
    }
    let factor = 2f64.powf(semitones / 12.0);
    stretch(&speed(x, factor), x.len())
}

/// A synthetic room impulse response: 1 at t = 0 (the direct path), then Gaussian noise under
/// an envelope falling 60 dB in `rt60_s`, from 2.5 ms on, scaled so that the direct path holds
/// `drr_db` more energy than the tail. At most 1 s long.
pub fn room_impulse(rt60_s: f64, drr_db: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    let len = ((rt60_s * 1.2).clamp(0.05, 1.0) * sr) as usize;
    let onset = (0.0025 * sr) as usize;
    let decay = 6.9078 / (rt60_s.max(0.01) * sr); // ln(1000) per RT60: 60 dB in amplitude^2
    let mut tail: Vec<f64> = (0..len)
        .map(|i| {
            if i < onset {
                return 0.0;
            }
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            g * (-decay * i as f64).exp()
        })
        .collect();
    let energy: f64 = tail.iter().map(|v| v * v).sum();
    let scale = if energy > 0.0 {
        (10f64.powf(-drr_db / 10.0) / energy).sqrt()
    } else {
        0.0
    };
    tail.iter_mut().for_each(|v| *v *= scale);
    tail[0] = 1.0;
    tail.into_iter().map(|v| v as f32).collect()
}

/// RMS of `x` (0 for an empty slice).
pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// `x` convolved with `h` (FFT), cut to `x.len() + h.len() - 1` samples and rescaled to the RMS
/// of `x` (a room changes the timbre, not the level the gain draw chose).
pub fn convolve(x: &[f32], h: &[f32]) -> Vec<f32> {
    if x.is_empty() || h.is_empty() {
        return x.to_vec();
    }
    let n = (x.len() + h.len() - 1).next_power_of_two();
    let mut planner = RealFftPlanner::<f32>::new();
    let fwd = planner.plan_fft_forward(n);
    let inv = planner.plan_fft_inverse(n);
    let spectrum = |v: &[f32]| {
        let mut buf = vec![0f32; n];
        buf[..v.len()].copy_from_slice(v);
        let mut s = fwd.make_output_vec();
        fwd.process(&mut buf, &mut s).expect("sizes from the plan");
        s
    };
    let (a, b) = (spectrum(x), spectrum(h));
    let mut prod: Vec<_> = a.iter().zip(&b).map(|(p, q)| p * q).collect();
    let mut y = inv.make_output_vec();
    inv.process(&mut prod, &mut y).expect("sizes from the plan");
    y.truncate(x.len() + h.len() - 1);
    let rms =
        |v: &[f32]| (v.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let (rx, ry) = (rms(x), rms(&y));
    let scale = if ry > 0.0 { (rx / ry) as f32 } else { 0.0 };
    y.iter_mut().for_each(|v| *v *= scale);
    y
}

/// `len` samples of babble: every talker starts at a random point of its utterance and loops,
/// summed and scaled to unit RMS (the caller sets the level against the speech).
pub fn babble(len: usize, talkers: &[Vec<f32>], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut mix = vec![0f64; len];
    for t in talkers.iter().filter(|t| !t.is_empty()) {
        let offset = rng.random_range(0..t.len());
        for (i, m) in mix.iter_mut().enumerate() {
            *m += t[(offset + i) % t.len()] as f64;
        }
    }
    let rms = (mix.iter().map(|v| v * v).sum::<f64>() / len.max(1) as f64).sqrt();
    let scale = if rms > 0.0 { 1.0 / rms } else { 0.0 };
    mix.into_iter().map(|v| (v * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tone(hz: f64, seconds: f64) -> Vec<f32> {
        (0..(seconds * SAMPLE_RATE as f64) as usize)
            .map(|i| {
                (0.5 * (std::f64::consts::TAU * hz * i as f64 / SAMPLE_RATE as f64).sin()) as f32
            })
            .collect()
    }

    /// The dominant frequency by zero crossings (a clean tone).
    fn frequency(x: &[f32]) -> f64 {
        let mid = &x[x.len() / 4..3 * x.len() / 4];
        let crossings = mid
            .windows(2)
            .filter(|w| (w[0] <= 0.0) != (w[1] <= 0.0))
            .count();
        crossings as f64 / 2.0 / (mid.len() as f64 / SAMPLE_RATE as f64)
    }

    #[test]
    fn speed_changes_length_and_pitch_together() {
        let x = tone(200.0, 1.0);
        let y = speed(&x, 1.1);
        assert!((y.len() as f64 - 16000.0 / 1.1).abs() < 40.0, "{}", y.len());
        assert!((frequency(&y) - 220.0).abs() < 3.0, "{}", frequency(&y));
        assert_eq!(speed(&x, 1.0), x);
    }

    #[test]
    fn pitch_shift_keeps_the_length_and_moves_the_pitch() {
        let x = tone(200.0, 1.0);
        for (st, want) in [
            (2.0, 200.0 * 2f64.powf(2.0 / 12.0)),
            (-2.0, 200.0 * 2f64.powf(-2.0 / 12.0)),
        ] {
            let y = pitch_shift(&x, st);
            assert_eq!(y.len(), x.len());
            let f = frequency(&y);
            assert!(
                (f - want).abs() < 0.03 * want,
                "{st} st: {f} Hz, want {want}"
            );
            assert!(y.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
        }
        // Shorter than a frame still gives the asked length.
        assert_eq!(stretch(&[0.1, 0.2, 0.3], 5).len(), 5);
    }

    #[test]
    fn room_impulse_has_the_drawn_ratio_and_decay() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let h = room_impulse(0.5, 3.0, &mut rng);
        assert_eq!(h[0], 1.0);
        let tail: f64 = h[1..].iter().map(|v| (*v as f64).powi(2)).sum();
        assert!((10.0 * (1.0 / tail).log10() - 3.0).abs() < 1e-3);
        // 60 dB of energy decay over RT60: compare 50 ms windows 0.25 s apart (30 dB).
        let e = |t: f64| -> f64 {
            let s = (t * 16000.0) as usize;
            h[s..s + 800].iter().map(|v| (*v as f64).powi(2)).sum()
        };
        let db = 10.0 * (e(0.05) / e(0.30)).log10();
        assert!((db - 30.0).abs() < 4.0, "{db} dB");
    }

    #[test]
    fn convolution_matches_the_direct_sum_and_keeps_the_level() {
        let x: Vec<f32> = (0..300)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0)
            .collect();
        let h = [1.0, 0.5, -0.25, 0.125];
        let y = convolve(&x, &h);
        let mut direct = vec![0f32; x.len() + h.len() - 1];
        for (i, a) in x.iter().enumerate() {
            for (j, b) in h.iter().enumerate() {
                direct[i + j] += a * b;
            }
        }
        let rms = |v: &[f32]| {
            (v.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let scale = (rms(&x) / rms(&direct)) as f32;
        for (a, b) in y.iter().zip(&direct) {
            assert!((a - b * scale).abs() < 1e-4, "{a} vs {}", b * scale);
        }
        assert!((rms(&y) - rms(&x)).abs() < 1e-6);
    }

    #[test]
    fn babble_loops_its_talkers_to_unit_level() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let talkers = vec![tone(150.0, 0.3), tone(230.0, 0.5), Vec::new()];
        let b = babble(16000, &talkers, &mut rng);
        assert_eq!(b.len(), 16000);
        let rms = (b.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 16000.0).sqrt();
        assert!((rms - 1.0).abs() < 1e-6);
        assert!(babble(100, &[], &mut rng).iter().all(|v| *v == 0.0));
    }
}
