//! Mel-cepstral distortion with dynamic time warping (`method.md` section 4):
//!
//! `d(x, y) = (10 / ln 10) * sqrt(2 * sum_{k>=1} (x_k - y_k)^2)` between two frames of
//! mel-cepstra (coefficient 0, the energy, is left out); the frames of the two utterances are
//! aligned by DTW with steps (1,1), (1,0), (0,1) and unit weights, minimising the summed `d`;
//! MCD is the mean of `d` over the frame pairs on that path. Ties between predecessors go to
//! the diagonal, then (i-1, j), then (i, j-1). `tests/reference/metrics.py` computes the same
//! definition with numpy, with the same order of floating-point operations.

use super::{MetricError, Result};
use tolk_models::audio::features::{Mfcc, MfccConfig};

/// MCD of two utterances with their DTW path length.
#[derive(Debug, Clone, PartialEq)]
pub struct McdResult {
    /// Mean distortion in dB over the aligned frame pairs.
    pub mcd: f64,
    /// Number of frame pairs on the DTW path.
    pub path_len: usize,
}

fn check(name: &str, frames: &[Vec<f64>]) -> Result<usize> {
    let dim = frames
        .first()
        .ok_or_else(|| MetricError::Mcd(format!("{name} has no frames")))?
        .len();
    if dim < 2 {
        return Err(MetricError::Mcd(format!(
            "{name} frames need c0 and at least one more coefficient, got {dim}"
        )));
    }
    if let Some((i, f)) = frames.iter().enumerate().find(|(_, f)| f.len() != dim) {
        return Err(MetricError::Mcd(format!(
            "{name} frame {i} has {} coefficients, frame 0 has {dim}",
            f.len()
        )));
    }
    if frames.iter().flatten().any(|v| !v.is_finite()) {
        return Err(MetricError::Mcd(format!(
            "{name} holds NaN or infinite values"
        )));
    }
    Ok(dim)
}

/// MCD between reference and synthesized mel-cepstra, one `Vec` per frame holding c0..cK
/// (c0 is skipped).
pub fn mcd(reference: &[Vec<f64>], synthesized: &[Vec<f64>]) -> Result<McdResult> {
    let dr = check("reference", reference)?;
    let ds = check("synthesized", synthesized)?;
    if dr != ds {
        return Err(MetricError::Mcd(format!(
            "reference has {dr} coefficients per frame, synthesized {ds}"
        )));
    }
    let (n, m) = (reference.len(), synthesized.len());
    let k = 10.0 / std::f64::consts::LN_10;
    let mut cost = vec![0.0f64; n * m];
    for (i, x) in reference.iter().enumerate() {
        for (j, y) in synthesized.iter().enumerate() {
            let mut acc = 0.0f64;
            for d in 1..dr {
                let diff = x[d] - y[d];
                acc += diff * diff;
            }
            cost[i * m + j] = k * (2.0 * acc).sqrt();
        }
    }
    // Accumulated cost and the chosen predecessor (0 diagonal, 1 up, 2 left).
    let mut acc = vec![0.0f64; n * m];
    let mut from = vec![0u8; n * m];
    for i in 0..n {
        for j in 0..m {
            let c = cost[i * m + j];
            if i == 0 && j == 0 {
                acc[0] = c;
                continue;
            }
            let mut best = f64::INFINITY;
            let mut step = 0u8;
            if i > 0 && j > 0 && acc[(i - 1) * m + j - 1] < best {
                best = acc[(i - 1) * m + j - 1];
                step = 0;
            }
            if i > 0 && acc[(i - 1) * m + j] < best {
                best = acc[(i - 1) * m + j];
                step = 1;
            }
            if j > 0 && acc[i * m + j - 1] < best {
                best = acc[i * m + j - 1];
                step = 2;
            }
            acc[i * m + j] = c + best;
            from[i * m + j] = step;
        }
    }
    let (mut i, mut j) = (n - 1, m - 1);
    let mut total = cost[i * m + j];
    let mut len = 1usize;
    while i > 0 || j > 0 {
        match from[i * m + j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
        total += cost[i * m + j];
        len += 1;
    }
    Ok(McdResult {
        mcd: total / len as f64,
        path_len: len,
    })
}

/// MCD between two waveforms, with Kaldi MFCCs (`tolk_models::audio::features::Mfcc`, the
/// torchaudio `compliance.kaldi.mfcc` definition) as the mel-cepstra. Both waveforms are mono
/// at the config's sample frequency (16 kHz by default). c0 is dropped, so a global gain does
/// not change the result and waveforms in [-1, 1] or on the int16 scale give the same MCD.
/// Kaldi MFCCs are liftered DCTs of log mel energies, not SPTK mel-generalized cepstra: use
/// the values to compare systems measured the same way, not against figures computed with SPTK.
pub fn mcd_from_audio(
    reference: &[f32],
    synthesized: &[f32],
    config: MfccConfig,
) -> Result<McdResult> {
    let mfcc = Mfcc::new(config)?;
    let frames = |name: &str, samples: &[f32]| -> Result<Vec<Vec<f64>>> {
        let t = mfcc.compute(samples)?;
        let (rows, cols) = (t.size()[0] as usize, t.size()[1] as usize);
        if rows == 0 {
            return Err(MetricError::Mcd(format!(
                "{name} audio ({} samples) is shorter than one analysis frame",
                samples.len()
            )));
        }
        let flat: Vec<f32> = Vec::<f32>::try_from(t.flatten(0, -1))?;
        Ok(flat
            .chunks(cols)
            .take(rows)
            .map(|r| r.iter().map(|&v| v as f64).collect())
            .collect())
    };
    mcd(
        &frames("reference", reference)?,
        &frames("synthesized", synthesized)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_mcd() {
        let k = 10.0 / std::f64::consts::LN_10;
        // Same frames: 0. c0 differences are ignored.
        let a = vec![vec![5.0, 1.0, 2.0], vec![0.0, 3.0, 4.0]];
        let b = vec![vec![-5.0, 1.0, 2.0], vec![9.0, 3.0, 4.0]];
        assert_eq!(mcd(&a, &b).unwrap().mcd, 0.0);
        // One frame against two: path (0,0), (0,1).
        let x = vec![vec![0.0, 0.0]];
        let y = vec![vec![0.0, 1.0], vec![0.0, 3.0]];
        let r = mcd(&x, &y).unwrap();
        assert_eq!(r.path_len, 2);
        let want = k * ((2.0f64).sqrt() + (18.0f64).sqrt()) / 2.0;
        assert!((r.mcd - want).abs() < 1e-12);
        // A repeated frame is absorbed by the warping: [a, a, b] vs [a, b] costs 0.
        let p = vec![vec![0.0, 1.0], vec![0.0, 1.0], vec![0.0, 2.0]];
        let q = vec![vec![0.0, 1.0], vec![0.0, 2.0]];
        let r = mcd(&p, &q).unwrap();
        assert_eq!((r.mcd, r.path_len), (0.0, 3));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(mcd(&[], &[vec![0.0, 1.0]]).is_err());
        assert!(mcd(&[vec![0.0]], &[vec![0.0]]).is_err());
        assert!(mcd(&[vec![0.0, 1.0]], &[vec![0.0, 1.0, 2.0]]).is_err());
        assert!(mcd(&[vec![0.0, f64::NAN]], &[vec![0.0, 1.0]]).is_err());
        assert!(mcd_from_audio(&[0.0; 10], &[0.0; 16000], MfccConfig::default()).is_err());
    }

    #[test]
    fn audio_gain_does_not_change_mcd() {
        // Two tones; scaling one waveform only moves c0.
        let tone = |f: f32, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| 0.3 * (2.0 * std::f32::consts::PI * f * i as f32 / 16000.0).sin())
                .collect()
        };
        let a = tone(440.0, 8000);
        let b = tone(660.0, 9600);
        let r1 = mcd_from_audio(&a, &b, MfccConfig::default()).unwrap();
        let louder: Vec<f32> = b.iter().map(|v| v * 2.0).collect();
        let r2 = mcd_from_audio(&a, &louder, MfccConfig::default()).unwrap();
        assert!(r1.mcd > 1.0);
        assert!(
            (r1.mcd - r2.mcd).abs() < 1e-3 * r1.mcd,
            "{} vs {}",
            r1.mcd,
            r2.mcd
        );
        assert_eq!(
            mcd_from_audio(&a, &a, MfccConfig::default()).unwrap().mcd,
            0.0
        );
    }
}
