//! Where speech really begins and ends inside the endpointer's coarse boundaries.
//!
//! The endpointer works on 32 ms VAD windows: its start is the first window judged speech, which
//! can begin up to a window before the first sound, or after it when a soft onset (a fricative,
//! an aspirated stop) stayed under the threshold; its end is the first window judged silence, so
//! a decaying last phoneme can be cut, or up to a window of silence kept. Translators trained on
//! clips cut at the speech onset (every espeak-ng corpus here) are sensitive to both: the unit
//! frame grid follows the first sample, and the last units stand for the end of the sentence.
//!
//! These functions place the boundaries on a 2 ms grid by energy alone: a frame is *active* when
//! its level is more than [`MARGIN_DB`] above the noise floor, estimated as the quietest frame of
//! audio the endpointer judged silent (the pre-roll before a start, the hangover after an end),
//! and never under [`MIN_FLOOR_DBFS`].
//! From the speech the VAD found, the boundary moves outwards over active frames, bridging quiet
//! gaps of up to [`MAX_GAP_FRAMES`] (a stop closure, a breath between a weak fricative and the
//! vowel), and stops at the first longer quiet stretch or at the end of the audio given. This is
//! the classic energy-based endpoint refinement after a coarse detector (Rabiner & Sambur, "An
//! algorithm for determining the endpoints of isolated utterances", BSTJ 54(2), 1975, which
//! refines the energy boundaries the same way, with zero-crossing counts we do without), here
//! with the VAD as the coarse detector. Pure functions of the samples given, so a segment's
//! boundaries do not depend on how the stream was chunked.

use tolk_models::audio::vad::WINDOW;

/// Frame length (samples at 16 kHz): 2 ms.
pub const FRAME: usize = 32;
/// Level above the noise floor at which a frame is active (dB). The floor is the minimum of
/// short frames, a few dB under the mean noise level; 32-sample frames of steady noise vary by
/// about 1 dB, so 10 dB stays clear of the noise and well under speech.
pub const MARGIN_DB: f32 = 10.0;
/// The floor is taken as at least this (dBFS): digital silence (a file, a muted input) would
/// otherwise make resampler ringing and dither count as sound. Any microphone's noise is above
/// it; 16-bit quantisation noise is near -101 dBFS.
pub const MIN_FLOOR_DBFS: f32 = -80.0;
/// Quiet frames bridged inside speech (10 x 2 ms = 20 ms).
pub const MAX_GAP_FRAMES: usize = 10;

fn level_db(x: &[f32]) -> f32 {
    crate::metrics::rms_dbfs(x) as f32
}

/// Frame levels on a grid anchored at `at`: frames `[at + k FRAME, at + (k + 1) FRAME)` for every
/// whole frame inside `x`, returned with the index `k` of the first.
fn grid(x: &[f32], at: usize) -> (isize, Vec<f32>) {
    let at = at.min(x.len());
    let before = at / FRAME;
    let after = (x.len() - at) / FRAME;
    let first = at - before * FRAME;
    let levels = (0..before + after)
        .map(|i| level_db(&x[first + i * FRAME..first + (i + 1) * FRAME]))
        .collect();
    (-(before as isize), levels)
}

/// The speech onset in `x`, as an index. `x[..at]` is the look-back the endpointer judged silent
/// (the pre-roll) and `x[at..]` starts with the first speech window. Returns `at` when no frame
/// of the first speech window stands out of the floor, or when there is no look-back to measure
/// the floor on.
pub fn onset(x: &[f32], at: usize) -> usize {
    let (k0, lv) = grid(x, at);
    let before = (-k0) as usize;
    if before == 0 {
        return at;
    }
    let thr = lv[..before]
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(MIN_FLOOR_DBFS)
        + MARGIN_DB;
    // The first active frame of the first speech window seeds the search.
    let window_frames = (WINDOW / FRAME).min(lv.len() - before);
    let Some(seed) = (before..before + window_frames).find(|&i| lv[i] > thr) else {
        return at;
    };
    let mut earliest = seed;
    let mut gap = 0;
    for i in (0..seed).rev() {
        if lv[i] > thr {
            earliest = i;
            gap = 0;
        } else {
            gap += 1;
            if gap > MAX_GAP_FRAMES {
                break;
            }
        }
    }
    let idx = (k0 + earliest as isize) * FRAME as isize + at as isize;
    idx as usize
}

/// The end of speech in `x`, as an index. `x[..at]` ends with the last speech window and
/// `x[at..]` is the hangover the endpointer judged silent. Returns `at` when the last speech
/// window has no active frame or there is no hangover to measure the floor on.
pub fn offset(x: &[f32], at: usize) -> usize {
    let (k0, lv) = grid(x, at);
    let before = (-k0) as usize;
    if before == lv.len() {
        return at;
    }
    let thr = lv[before..]
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min)
        .max(MIN_FLOOR_DBFS)
        + MARGIN_DB;
    let window_frames = (WINDOW / FRAME).min(before);
    let Some(seed) = (before - window_frames..before)
        .rev()
        .find(|&i| lv[i] > thr)
    else {
        return at;
    };
    let mut latest = seed;
    let mut gap = 0;
    for (i, &l) in lv.iter().enumerate().skip(seed + 1) {
        if l > thr {
            latest = i;
            gap = 0;
        } else {
            gap += 1;
            if gap > MAX_GAP_FRAMES {
                break;
            }
        }
    }
    let idx = (k0 + latest as isize + 1) * FRAME as isize + at as isize;
    idx as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` samples of uniform noise at about `db` dBFS.
    fn noise(rng: &mut rand::rngs::StdRng, n: usize, db: f32) -> Vec<f32> {
        // Uniform in [-a, a] has power a^2 / 3.
        let a = (3.0 * 10f32.powf(db / 10.0)).sqrt();
        (0..n).map(|_| rng.random_range(-a..a)).collect()
    }

    fn tone(n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|i| amp * (i as f32 * 2.0 * std::f32::consts::PI * 220.0 / 16_000.0).sin())
            .collect()
    }

    fn add(x: &mut [f32], at: usize, y: &[f32]) {
        for (a, b) in x[at..].iter_mut().zip(y) {
            *a += b;
        }
    }

    #[test]
    fn onset_moves_back_to_a_soft_start_and_forward_over_leading_silence() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // 200 ms of -60 dBFS noise, speech from sample 2000: a -40 dBFS "fricative" for 60 ms
        // (under the VAD threshold, say) then a loud vowel.
        let mut x = noise(&mut rng, 6400, -60.0);
        add(&mut x, 2000, &noise(&mut rng, 960, -40.0));
        add(&mut x, 2960, &tone(3000, 0.3));
        // The VAD started at the vowel (late): the onset is the fricative's start, within a frame.
        let on = onset(&x, 2960);
        assert!((1968..=2000).contains(&on), "late start refined to {on}");
        // The VAD started a window early (digital silence before the speech).
        let mut y = vec![0.0; 4000];
        y.extend(tone(3000, 0.3));
        let on = onset(&y, 4000 - 300);
        assert!((3968..=4000).contains(&on), "early start refined to {on}");
        // A gap longer than the bridge stops the search: an earlier click is not speech.
        let mut z = noise(&mut rng, 6400, -60.0);
        add(&mut z, 500, &noise(&mut rng, 64, -20.0));
        add(&mut z, 3000, &tone(3000, 0.3));
        let on = onset(&z, 3000);
        assert!((2968..=3000).contains(&on), "click bridged: {on}");
        // Nothing to measure the floor on: unchanged.
        assert_eq!(onset(&y[3700..], 0), 0);
        // The first window holds no energy above the floor (a VAD false start): unchanged.
        assert_eq!(onset(&[0.0; 4000], 3000), 3000);
    }

    #[test]
    fn offset_follows_a_decay_and_drops_trailing_silence() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // Speech until 5000, then a -45 dBFS tail to 5800 (the VAD called it silence), then noise.
        let mut x = noise(&mut rng, 16_000, -65.0);
        add(&mut x, 1000, &tone(4000, 0.3));
        add(&mut x, 5000, &noise(&mut rng, 800, -45.0));
        let off = offset(&x, 5120);
        assert!((5800..=5832).contains(&off), "decay followed to {off}");
        // The last speech window ends in silence: the end comes back to the last sound.
        let mut y = tone(3000, 0.3);
        y.extend(vec![0.0; 10_000]);
        let off = offset(&y, 3300);
        assert!(
            (3000..=3032).contains(&off),
            "trailing silence dropped: {off}"
        );
        // No hangover given: unchanged.
        assert_eq!(offset(&y[..3300], 3300), 3300);
        assert_eq!(offset(&[0.0; 4000], 1000), 1000);
    }
}
