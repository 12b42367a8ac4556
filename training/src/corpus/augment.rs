//! Noisy, padded copies of a manifest's source speech (`tolk-train augment`).
//!
//! A kiosk hears speech with room noise and an unpredictable amount of silence around it; the
//! synthetic corpus has neither (clips start at the first sample of speech and end in digital
//! silence). Each augmented copy of an entry gets, on its source side only:
//!
//! - a random gain (`gain_db`, uniform);
//! - random leading and trailing silence (`lead_ms`, `tail_ms`, uniform, added to what is there);
//! - unless the copy is drawn clean (`clean_fraction`), stationary noise over the whole clip at a
//!   uniform RMS level in `noise_dbfs` (dB relative to a full-scale RMS of 1), of a colour drawn
//!   from `colours`: white (flat spectrum) or brown (white through a one-pole low-pass at about
//!   50 Hz: fan and traffic rumble).
//!
//! The target side (text, audio) is kept: the model learns to map noisy input to clean output.
//! Each copy's `augmentation` field says what was done, and such an entry is never reversed (its
//! noisy audio must not become a target): augment each direction's source side separately, e.g.
//! the English side of en->fr pairs and the French side of their reversed copies
//! (`--reverse`).
//! Every draw comes from a generator seeded by `(seed, id, copy)`, so the output is the same
//! whatever the order or the number of workers. Audio is written as 16 kHz mono 16-bit WAV under
//! `audio/<manifest stem>/` beside the output manifest; `augment.jsonl` records each copy's draws.

use super::perturb::rms;
use std::path::{Component, Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
use tolk_models::audio::SAMPLE_RATE;

use super::manifest::{
    read_manifest, refuse_test_only, write_manifest, ManifestEntry, ManifestError, ReadOptions,
};

/// Errors of [`augment`]; each names the file or entry.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("entry {id:?}: {message}")]
    Entry { id: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid augmentation options: {0}")]
    Config(String),
}

/// A closed range `lo..=hi` drawn uniformly (`lo == hi`: a constant).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Span {
    pub lo: f64,
    pub hi: f64,
}

impl Span {
    fn draw(&self, rng: &mut ChaCha8Rng) -> f64 {
        if self.hi > self.lo {
            rng.random_range(self.lo..=self.hi)
        } else {
            self.lo
        }
    }
}

/// Why a range argument is not `A:B` or `A`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0:?}: the lower bound is above the upper bound")]
    Reversed(String),
}

impl std::str::FromStr for Span {
    type Err = SpanError;

    /// `A:B` or a single value `A`.
    fn from_str(s: &str) -> Result<Self, SpanError> {
        let num = |t: &str| {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| SpanError::NotANumber(t.to_string()))
        };
        let (lo, hi) = match s.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(s)?, num(s)?),
        };
        if lo > hi {
            return Err(SpanError::Reversed(s.to_string()));
        }
        Ok(Span { lo, hi })
    }
}

/// Options of [`augment`].
#[derive(Debug, Clone, Serialize)]
pub struct AugmentConfig {
    pub seed: u64,
    /// Augmented copies per entry.
    pub copies: usize,
    /// Fraction of the entries that get copies, drawn per entry id from the seed (1 = all).
    pub entry_fraction: f64,
    pub lead_ms: Span,
    pub tail_ms: Span,
    pub noise_dbfs: Span,
    pub gain_db: Span,
    /// Probability that a copy gets no noise (silence and gain only).
    pub clean_fraction: f64,
    /// Noise colours drawn from (uniformly) for a noisy copy.
    pub colours: Vec<Noise>,
    /// Augment the reversed entries (the target side becomes the noisy source).
    pub reverse: bool,
    pub workers: usize,
    /// Speed, pitch, room and babble perturbations (all off by default).
    pub perturb: PerturbConfig,
}

/// Perturbations for voices and rooms the corpus voices do not cover ([`super::perturb`]). Each
/// is applied to a copy with its probability (`*_fraction`, 0 = never), its amount drawn from
/// its span; they come from a generator of their own, so that turning them on leaves every other
/// draw of a copy as it was.
#[derive(Debug, Clone, Serialize)]
pub struct PerturbConfig {
    /// Speed factor (tempo and pitch together).
    pub speed: Span,
    pub speed_fraction: f64,
    /// Pitch shift at constant tempo, semitones.
    pub pitch_semitones: Span,
    pub pitch_fraction: f64,
    /// Reverberation time (s) and direct-to-reverberant ratio (dB) of a synthetic room.
    pub rt60_s: Span,
    pub drr_db: Span,
    pub reverb_fraction: f64,
    /// Background talkers (other entries of the manifest) and their level under the speech.
    pub babble_snr_db: Span,
    pub babble_talkers: usize,
    pub babble_fraction: f64,
}

impl Default for PerturbConfig {
    fn default() -> Self {
        Self {
            speed: Span { lo: 0.9, hi: 1.1 },
            speed_fraction: 0.0,
            pitch_semitones: Span { lo: -2.0, hi: 2.0 },
            pitch_fraction: 0.0,
            rt60_s: Span { lo: 0.2, hi: 0.8 },
            drr_db: Span { lo: 0.0, hi: 10.0 },
            reverb_fraction: 0.0,
            babble_snr_db: Span { lo: 5.0, hi: 20.0 },
            babble_talkers: 3,
            babble_fraction: 0.0,
        }
    }
}

impl PerturbConfig {
    fn check(&self) -> Result<(), AugmentError> {
        let bad = |m: String| Err(AugmentError::Config(m));
        for (name, f) in [
            ("speed_fraction", self.speed_fraction),
            ("pitch_fraction", self.pitch_fraction),
            ("reverb_fraction", self.reverb_fraction),
            ("babble_fraction", self.babble_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("{name} {f} is not a probability"));
            }
        }
        if self.speed.lo < 0.5 || self.speed.hi > 2.0 {
            return bad("speed lies within 0.5..2".into());
        }
        if self.pitch_semitones.lo < -12.0 || self.pitch_semitones.hi > 12.0 {
            return bad("pitch_semitones lies within -12..12".into());
        }
        if self.rt60_s.lo < 0.05 || self.rt60_s.hi > 3.0 {
            return bad("rt60_s lies within 0.05..3".into());
        }
        if self.babble_fraction > 0.0 && !(1..=16).contains(&self.babble_talkers) {
            return bad("babble_talkers lies within 1..=16".into());
        }
        Ok(())
    }
}

/// What one copy's perturbations drew.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Perturbation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pitch_semitones: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rt60_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drr_db: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub babble_snr_db: Option<f64>,
    /// Entry indices of the background talkers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub babble_from: Vec<usize>,
}

impl Perturbation {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.speed {
            parts.push(format!("speed x{v:.3}"));
        }
        if let Some(v) = self.pitch_semitones {
            parts.push(format!("pitch {v:+.2} st"));
        }
        if let (Some(t), Some(d)) = (self.rt60_s, self.drr_db) {
            parts.push(format!("room RT60 {t:.2} s DRR {d:.1} dB"));
        }
        if let Some(v) = self.babble_snr_db {
            parts.push(format!(
                "babble of {} at {v:.1} dB SNR",
                self.babble_from.len()
            ));
        }
        parts.join(", ")
    }
}

/// The perturbations of copy `copy` of entry `index` (id `id`) among `entries` entries, and the
/// generator that continues them (room impulse and babble offsets).
pub fn draw_perturbation(
    cfg: &PerturbConfig,
    seed: u64,
    id: &str,
    copy: usize,
    index: usize,
    entries: usize,
) -> (Perturbation, ChaCha8Rng) {
    let h = super::stable_hash(seed, &["perturb", id, &copy.to_string()]);
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let mut p = Perturbation::default();
    let with = |f: f64, rng: &mut ChaCha8Rng| f > 0.0 && rng.random::<f64>() < f;
    if with(cfg.speed_fraction, &mut rng) {
        p.speed = Some(cfg.speed.draw(&mut rng));
    }
    if with(cfg.pitch_fraction, &mut rng) {
        p.pitch_semitones = Some(cfg.pitch_semitones.draw(&mut rng));
    }
    if with(cfg.reverb_fraction, &mut rng) {
        p.rt60_s = Some(cfg.rt60_s.draw(&mut rng));
        p.drr_db = Some(cfg.drr_db.draw(&mut rng));
    }
    if entries > 1 && with(cfg.babble_fraction, &mut rng) {
        p.babble_snr_db = Some(cfg.babble_snr_db.draw(&mut rng));
        p.babble_from = (0..cfg.babble_talkers)
            .map(|_| {
                // Any entry but this one.
                let j = rng.random_range(0..entries - 1);
                if j >= index {
                    j + 1
                } else {
                    j
                }
            })
            .collect();
    }
    (p, rng)
}

/// Speed, pitch and room applied to the speech itself (before padding, gain and noise).
pub fn perturb_speech(speech: &[f32], p: &Perturbation, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x = speech.to_vec();
    if let Some(f) = p.speed {
        x = super::perturb::speed(&x, f);
    }
    if let Some(st) = p.pitch_semitones {
        x = super::perturb::pitch_shift(&x, st);
    }
    if let (Some(t), Some(d)) = (p.rt60_s, p.drr_db) {
        let h = super::perturb::room_impulse(t, d, rng);
        // The reverberant tail beyond the speech is kept up to 300 ms: a room rings on.
        let keep = x.len() + (SAMPLE_RATE as usize * 3 / 10).min(h.len() - 1);
        x = super::perturb::convolve(&x, &h);
        x.truncate(keep);
    }
    x
}

/// Adds babble at `p.babble_snr_db` under the speech level `speech_rms` to the whole copy.
fn add_babble(
    out: &mut [f32],
    speech_rms: f64,
    p: &Perturbation,
    talkers: &[Vec<f32>],
    rng: &mut ChaCha8Rng,
) {
    let Some(snr) = p.babble_snr_db else { return };
    let b = super::perturb::babble(out.len(), talkers, rng);
    let scale = (speech_rms * 10f64.powf(-snr / 20.0)) as f32;
    for (o, v) in out.iter_mut().zip(b) {
        *o = (*o + v * scale).clamp(-1.0, 1.0);
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            copies: 1,
            entry_fraction: 1.0,
            lead_ms: Span { lo: 0.0, hi: 600.0 },
            tail_ms: Span { lo: 0.0, hi: 600.0 },
            noise_dbfs: Span {
                lo: -75.0,
                hi: -35.0,
            },
            gain_db: Span { lo: -6.0, hi: 6.0 },
            clean_fraction: 0.2,
            colours: vec![Noise::White, Noise::Brown],
            reverse: false,
            workers: 2,
            perturb: PerturbConfig::default(),
        }
    }
}

impl AugmentConfig {
    fn check(&self) -> Result<(), AugmentError> {
        let bad = |m: String| Err(AugmentError::Config(m));
        if self.copies == 0 || self.workers == 0 {
            return bad("copies and workers must be at least 1".into());
        }
        if !(self.entry_fraction > 0.0 && self.entry_fraction <= 1.0) {
            return bad(format!(
                "entry_fraction {} is not in (0, 1]",
                self.entry_fraction
            ));
        }
        if self.lead_ms.lo < 0.0 || self.tail_ms.lo < 0.0 {
            return bad("lead_ms and tail_ms cannot be negative".into());
        }
        if self.lead_ms.hi > 60_000.0 || self.tail_ms.hi > 60_000.0 {
            return bad("lead_ms and tail_ms are at most 60,000".into());
        }
        if self.noise_dbfs.hi > 0.0 {
            return bad(format!(
                "noise_dbfs up to {} dB: above full scale",
                self.noise_dbfs.hi
            ));
        }
        if self.gain_db.lo < -60.0 || self.gain_db.hi > 20.0 {
            return bad("gain_db lies within -60..20".into());
        }
        if self.colours.is_empty() || self.colours.contains(&Noise::None) {
            return bad("noise colours: white and/or brown (use clean_fraction for none)".into());
        }
        if !(0.0..=1.0).contains(&self.clean_fraction) {
            return bad(format!(
                "clean_fraction {} is not a probability",
                self.clean_fraction
            ));
        }
        self.perturb.check()
    }
}

/// Noise colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Noise {
    None,
    White,
    Brown,
}

/// What one copy drew (a line of `augment.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyDraws {
    pub id: String,
    pub source_id: String,
    pub lead_ms: f64,
    pub tail_ms: f64,
    pub gain_db: f64,
    pub noise: Noise,
    /// RMS level of the noise (dBFS); `None` for a clean copy.
    pub noise_dbfs: Option<f64>,
    /// Speed, pitch, room and babble, when any was drawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perturb: Option<Perturbation>,
}

impl CopyDraws {
    /// One line for the manifest's `augmentation` field.
    pub fn describe(&self) -> String {
        let noise = match (self.noise, self.noise_dbfs) {
            (Noise::None, _) | (_, None) => "no noise".to_string(),
            (Noise::White, Some(l)) => format!("white noise {l:.1} dBFS"),
            (Noise::Brown, Some(l)) => format!("brown noise {l:.1} dBFS"),
        };
        let perturb = self
            .perturb
            .as_ref()
            .map(|p| format!(", {}", p.describe()))
            .unwrap_or_default();
        format!(
            "lead {} ms, tail {} ms, gain {:+.1} dB, {noise}{perturb}",
            self.lead_ms, self.tail_ms, self.gain_db
        )
    }
}

/// Whether entry `id` is among the `entry_fraction` of entries that get copies: a draw of its
/// own per id, so the subset does not depend on the manifest's order or length.
pub fn takes_copies(cfg: &AugmentConfig, id: &str) -> bool {
    if cfg.entry_fraction >= 1.0 {
        return true;
    }
    let h = super::stable_hash(cfg.seed, &["augment-entry", id]);
    ChaCha8Rng::seed_from_u64(h).random::<f64>() < cfg.entry_fraction
}

/// The draws of copy `copy` of entry `id`: a function of the seed, the id and the copy only.
pub fn draw_copy(cfg: &AugmentConfig, id: &str, copy: usize) -> (CopyDraws, ChaCha8Rng) {
    let h = super::stable_hash(cfg.seed, &["augment", id, &copy.to_string()]);
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let gain_db = cfg.gain_db.draw(&mut rng);
    let lead_ms = cfg.lead_ms.draw(&mut rng).round();
    let tail_ms = cfg.tail_ms.draw(&mut rng).round();
    let clean = rng.random::<f64>() < cfg.clean_fraction;
    let colour = cfg.colours[rng.random_range(0..cfg.colours.len().max(1))];
    let level = cfg.noise_dbfs.draw(&mut rng);
    let (noise, noise_dbfs) = if clean {
        (Noise::None, None)
    } else {
        (colour, Some(level))
    };
    let draws = CopyDraws {
        id: format!("{id}+aug{copy}"),
        source_id: id.to_string(),
        lead_ms,
        tail_ms,
        gain_db,
        noise,
        noise_dbfs,
        perturb: None,
    };
    (draws, rng)
}

/// Applies `d` to 16 kHz mono `speech`; `rng` continues the copy's generator (noise samples).
pub fn apply(speech: &[f32], d: &CopyDraws, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let ms = |v: f64| (v * SAMPLE_RATE as f64 / 1000.0).round() as usize;
    let (lead, tail) = (ms(d.lead_ms), ms(d.tail_ms));
    let gain = 10f32.powf(d.gain_db as f32 / 20.0);
    let mut out = vec![0.0f32; lead + speech.len() + tail];
    for (o, s) in out[lead..].iter_mut().zip(speech) {
        *o = s * gain;
    }
    if let Some(dbfs) = d.noise_dbfs {
        let noise = noise(d.noise, out.len(), rng);
        let rms = (noise.iter().map(|x| x * x).sum::<f64>() / noise.len().max(1) as f64).sqrt();
        let scale = if rms > 0.0 {
            10f64.powf(dbfs / 20.0) / rms
        } else {
            0.0
        };
        for (o, n) in out.iter_mut().zip(noise) {
            *o += (n * scale) as f32;
        }
    }
    for o in &mut out {
        *o = o.clamp(-1.0, 1.0);
    }
    out
}

/// `n` samples of unit-variance-ish noise of colour `kind` (scaled to the level by the caller).
fn noise(kind: Noise, n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    // Gaussian by Box-Muller from the copy's generator.
    let mut gauss = || {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    match kind {
        Noise::None => vec![0.0; n],
        Noise::White => (0..n).map(|_| gauss()).collect(),
        Noise::Brown => {
            // One-pole low-pass, cut-off about 50 Hz at 16 kHz: a = exp(-2 pi 50 / 16000).
            let a = (-std::f64::consts::TAU * 50.0 / SAMPLE_RATE as f64).exp();
            let mut y = 0.0;
            let mut v: Vec<f64> = (0..n)
                .map(|_| {
                    y = a * y + (1.0 - a) * gauss();
                    y
                })
                .collect();
            // No DC: the features remove it per frame, but the level should be the noise's.
            let mean = v.iter().sum::<f64>() / n.max(1) as f64;
            v.iter_mut().for_each(|x| *x -= mean);
            v
        }
    }
}

/// `path` relative to the folder `base` (both made absolute first).
pub(crate) fn relative_to(path: &Path, base: &Path) -> std::io::Result<PathBuf> {
    let norm = |p: &Path| -> std::io::Result<Vec<PathBuf>> {
        let abs = std::path::absolute(p)?;
        let mut parts: Vec<PathBuf> = Vec::new();
        for c in abs.components() {
            match c {
                Component::ParentDir => {
                    parts.pop();
                }
                Component::CurDir => {}
                c => parts.push(PathBuf::from(c.as_os_str())),
            }
        }
        Ok(parts)
    };
    let (p, b) = (norm(path)?, norm(base)?);
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &p[common..] {
        rel.push(c);
    }
    Ok(rel)
}

/// Summary of [`augment`] (printed as JSON by the command).
#[derive(Debug, Clone, Serialize)]
pub struct AugmentSummary {
    pub manifest: PathBuf,
    pub entries: usize,
    pub copies: usize,
    pub audio_seconds: f64,
    pub clean: usize,
    pub white: usize,
    pub brown: usize,
    pub config: AugmentConfig,
}

/// One augmented copy: its manifest entry and its draws.
type Done = (ManifestEntry, CopyDraws);

/// Writes `copies` augmented copies of every entry of `input` to the manifest `out`.
pub fn augment(
    input: &Path,
    out: &Path,
    cfg: &AugmentConfig,
) -> Result<AugmentSummary, AugmentError> {
    cfg.check()?;
    let mut m = read_manifest(input, ReadOptions::default())?;
    // Augmented copies are training data.
    refuse_test_only(&m, "augmented training data")?;
    if cfg.reverse {
        m.entries = m
            .entries
            .iter()
            .map(|e| {
                e.reversed().ok_or_else(|| AugmentError::Entry {
                    id: e.id.clone(),
                    message: "--reverse needs paired, unaugmented entries".into(),
                })
            })
            .collect::<Result<_, _>>()?;
    }
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let stem = out
        .file_stem()
        .ok_or_else(|| AugmentError::Config(format!("{}: not a file name", out.display())))?
        .to_string_lossy()
        .into_owned();
    let audio_rel = PathBuf::from("audio").join(&stem);
    let audio_dir = out_dir.join(&audio_rel);
    std::fs::create_dir_all(&audio_dir).map_err(|source| AugmentError::Io {
        path: audio_dir.clone(),
        source,
    })?;
    let jobs: Vec<(usize, usize)> = (0..m.entries.len())
        .filter(|&i| takes_copies(cfg, &m.entries[i].id))
        .flat_map(|i| (0..cfg.copies).map(move |k| (i, k)))
        .collect();
    // Entry `i`'s audio as 16 kHz mono, or why not.
    let load = |i: usize| -> Result<Vec<f32>, String> {
        let e = &m.entries[i];
        let audio = e.audio.as_deref().ok_or("no audio to augment")?;
        let wav = read_wav(m.resolve(audio)).map_err(|x| x.to_string())?;
        let (speech, report) =
            to_mono_16k(&wav.samples, wav.sample_rate, wav.channels).map_err(|x| x.to_string())?;
        if report.non_finite > 0 {
            return Err(format!("{audio}: {} non-finite samples", report.non_finite));
        }
        Ok(speech)
    };
    let one = |&(i, k): &(usize, usize)| -> Result<Done, AugmentError> {
        let e = &m.entries[i];
        let err = |message: String| AugmentError::Entry {
            id: e.id.clone(),
            message,
        };
        let speech = load(i).map_err(err)?;
        let (mut draws, mut rng) = draw_copy(cfg, &e.id, k);
        let (p, mut prng) = draw_perturbation(&cfg.perturb, cfg.seed, &e.id, k, i, m.entries.len());
        let speech = perturb_speech(&speech, &p, &mut prng);
        let mut samples = apply(&speech, &draws, &mut rng);
        if p.babble_snr_db.is_some() {
            let talkers = p
                .babble_from
                .iter()
                .map(|&j| load(j))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let gain = 10f64.powf(draws.gain_db / 20.0);
            add_babble(&mut samples, rms(&speech) * gain, &p, &talkers, &mut prng);
        }
        if !p.is_empty() {
            draws.perturb = Some(p);
        }
        let rel = audio_rel.join(format!("{}.wav", draws.id));
        write_wav(
            out_dir.join(&rel),
            &samples,
            SAMPLE_RATE,
            1,
            WavFormat::Pcm16,
        )
        .map_err(|x| err(x.to_string()))?;
        let mut a = e.clone();
        a.id = draws.id.clone();
        a.audio = Some(rel.to_string_lossy().into_owned());
        a.duration = Some(samples.len() as f64 / SAMPLE_RATE as f64);
        a.augmentation = Some(draws.describe());
        if let Some(t) = &e.target_audio {
            let p = relative_to(&m.resolve(t), &out_dir).map_err(|x| err(x.to_string()))?;
            a.target_audio = Some(p.to_string_lossy().into_owned());
        }
        Ok((a, draws))
    };
    // Workers take every `workers`-th job; results are put back in manifest order.
    let mut results: Vec<Option<Done>> = vec![None; jobs.len()];
    std::thread::scope(|s| -> Result<(), AugmentError> {
        let handles: Vec<_> = (0..cfg.workers)
            .map(|w| {
                let jobs = &jobs;
                let one = &one;
                s.spawn(move || -> Result<Vec<(usize, Done)>, AugmentError> {
                    jobs.iter()
                        .enumerate()
                        .skip(w)
                        .step_by(cfg.workers)
                        .map(|(j, job)| one(job).map(|r| (j, r)))
                        .collect()
                })
            })
            .collect();
        for h in handles {
            for (j, r) in h.join().expect("augmentation worker panicked")? {
                results[j] = Some(r);
            }
        }
        Ok(())
    })?;
    let (entries, draws): (Vec<ManifestEntry>, Vec<CopyDraws>) = results
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .unzip();
    write_manifest(out, &entries)?;
    let log = out_dir.join(format!("{stem}.augment.jsonl"));
    let lines: String = draws
        .iter()
        .map(|d| serde_json::to_string(d).expect("draws serialize") + "\n")
        .collect();
    std::fs::write(&log, lines).map_err(|source| AugmentError::Io { path: log, source })?;
    let count = |n: Noise| draws.iter().filter(|d| d.noise == n).count();
    Ok(AugmentSummary {
        manifest: out.to_path_buf(),
        entries: m.entries.len(),
        copies: entries.len(),
        audio_seconds: entries.iter().filter_map(|e| e.duration).sum(),
        clean: count(Noise::None),
        white: count(Noise::White),
        brown: count(Noise::Brown),
        config: cfg.clone(),
    })
}

/// Arguments of `tolk-train augment`.
#[derive(Debug, Clone, clap::Args)]
pub struct AugmentArgs {
    /// Input manifest (its source audio is augmented; the target side is kept).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output manifest; audio goes to `audio/<its stem>/` beside it, the draws to
    /// `<stem>.augment.jsonl`.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Augmented copies per entry.
    #[arg(long, default_value_t = 1)]
    pub copies: usize,
    /// Fraction of the entries that get copies (a seeded draw per entry id; 1 = every entry).
    #[arg(long, default_value_t = 1.0)]
    pub entry_fraction: f64,
    /// Leading silence added, ms (`A:B` uniform, or one value).
    #[arg(long, default_value = "0:600")]
    pub lead_ms: Span,
    /// Trailing silence added, ms.
    #[arg(long, default_value = "0:600")]
    pub tail_ms: Span,
    /// Noise RMS level, dBFS.
    #[arg(long, default_value = "-75:-35", allow_hyphen_values = true)]
    pub noise_dbfs: Span,
    /// Gain applied to the speech, dB.
    #[arg(long, default_value = "-6:6", allow_hyphen_values = true)]
    pub gain_db: Span,
    /// Fraction of copies without noise.
    #[arg(long, default_value_t = 0.2)]
    pub clean_fraction: f64,
    /// Noise colours to draw from, comma separated (white, brown).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "white,brown")]
    pub noise: Vec<Noise>,
    /// Augment the entries reversed (e.g. the French side of en->fr pairs, for fr->en).
    #[arg(long)]
    pub reverse: bool,
    /// Parallel workers (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Speed perturbation factor (tempo and pitch together).
    #[arg(long, default_value = "0.9:1.1")]
    pub speed: Span,
    /// Fraction of copies speed-perturbed.
    #[arg(long, default_value_t = 0.0)]
    pub speed_fraction: f64,
    /// Pitch shift at constant tempo, semitones.
    #[arg(long, default_value = "-2:2", allow_hyphen_values = true)]
    pub pitch_semitones: Span,
    /// Fraction of copies pitch-shifted.
    #[arg(long, default_value_t = 0.0)]
    pub pitch_fraction: f64,
    /// Reverberation time of the simulated room, seconds.
    #[arg(long, default_value = "0.2:0.8")]
    pub rt60_s: Span,
    /// Direct-to-reverberant ratio of the simulated room, dB.
    #[arg(long, default_value = "0:10", allow_hyphen_values = true)]
    pub drr_db: Span,
    /// Fraction of copies in a simulated room.
    #[arg(long, default_value_t = 0.0)]
    pub reverb_fraction: f64,
    /// Babble level under the speech, dB SNR.
    #[arg(long, default_value = "5:20", allow_hyphen_values = true)]
    pub babble_snr_db: Span,
    /// Background talkers per babble.
    #[arg(long, default_value_t = 3)]
    pub babble_talkers: usize,
    /// Fraction of copies with babble (other entries of the manifest talking behind).
    #[arg(long, default_value_t = 0.0)]
    pub babble_fraction: f64,
}

impl AugmentArgs {
    pub fn config(&self) -> AugmentConfig {
        AugmentConfig {
            seed: self.seed,
            copies: self.copies,
            entry_fraction: self.entry_fraction,
            lead_ms: self.lead_ms,
            tail_ms: self.tail_ms,
            noise_dbfs: self.noise_dbfs,
            gain_db: self.gain_db,
            clean_fraction: self.clean_fraction,
            colours: self.noise.clone(),
            reverse: self.reverse,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            perturb: PerturbConfig {
                speed: self.speed,
                speed_fraction: self.speed_fraction,
                pitch_semitones: self.pitch_semitones,
                pitch_fraction: self.pitch_fraction,
                rt60_s: self.rt60_s,
                drr_db: self.drr_db,
                reverb_fraction: self.reverb_fraction,
                babble_snr_db: self.babble_snr_db,
                babble_talkers: self.babble_talkers,
                babble_fraction: self.babble_fraction,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbfs(x: &[f32]) -> f64 {
        let ms = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
        10.0 * ms.log10()
    }

    #[test]
    fn spans_parse_and_refuse_nonsense() {
        assert_eq!(
            "-75:-35".parse::<Span>().unwrap(),
            Span {
                lo: -75.0,
                hi: -35.0
            }
        );
        assert_eq!("5".parse::<Span>().unwrap(), Span { lo: 5.0, hi: 5.0 });
        assert!("3:1".parse::<Span>().is_err());
        assert!("a:1".parse::<Span>().is_err());
        assert!("nan".parse::<Span>().is_err());
    }

    #[test]
    fn padding_gain_and_noise_level_are_as_drawn() {
        let speech: Vec<f32> = (0..16_000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        for kind in [Noise::White, Noise::Brown] {
            let d = CopyDraws {
                id: "x+aug0".into(),
                source_id: "x".into(),
                lead_ms: 250.0,
                tail_ms: 500.0,
                gain_db: -6.0,
                noise: kind,
                noise_dbfs: Some(-50.0),
                perturb: None,
            };
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let out = apply(&speech, &d, &mut rng);
            assert_eq!(out.len(), 4_000 + 16_000 + 8_000);
            // The padding holds the noise alone, at the drawn level (whole-clip RMS scaling;
            // 12,000 samples of it measure within half a dB, brown noise within 1.5).
            let pad: Vec<f32> = out[..4_000].iter().chain(&out[20_000..]).copied().collect();
            let tol = if kind == Noise::White { 0.5 } else { 1.5 };
            assert!((dbfs(&pad) + 50.0).abs() < tol, "{kind:?}: {}", dbfs(&pad));
            // The speech is there at -6 dB (noise 40 dB below it).
            let gained = dbfs(&out[4_000..20_000]) - dbfs(&speech);
            assert!((gained + 6.0).abs() < 0.05, "{gained}");
        }
    }

    #[test]
    fn draws_depend_on_seed_id_and_copy_only() {
        let cfg = AugmentConfig::default();
        let a = draw_copy(&cfg, "u1", 0).0;
        assert_eq!(a, draw_copy(&cfg, "u1", 0).0);
        assert_ne!(a, draw_copy(&cfg, "u1", 1).0);
        assert_ne!(a, draw_copy(&cfg, "u2", 0).0);
        let other = AugmentConfig {
            seed: 9,
            ..cfg.clone()
        };
        assert_ne!(a, draw_copy(&other, "u1", 0).0);
        let draws: Vec<CopyDraws> = (0..2000)
            .map(|i| draw_copy(&cfg, &format!("u{i}"), 0).0)
            .collect();
        let clean = draws.iter().filter(|d| d.noise == Noise::None).count();
        assert!((300..500).contains(&clean), "{clean} clean of 2000");
        assert!(draws
            .iter()
            .all(|d| (0.0..=600.0).contains(&d.lead_ms) && (-6.0..=6.0).contains(&d.gain_db)));
        assert!(draws
            .iter()
            .filter_map(|d| d.noise_dbfs)
            .all(|l| (-75.0..=-35.0).contains(&l)));
    }

    #[test]
    fn perturbations_are_off_by_default_and_drawn_apart_from_the_rest() {
        let cfg = AugmentConfig::default();
        for i in 0..200 {
            let (p, _) = draw_perturbation(&cfg.perturb, 0, &format!("u{i}"), 0, i, 1000);
            assert!(p.is_empty());
        }
        let on = PerturbConfig {
            speed_fraction: 1.0,
            pitch_fraction: 0.5,
            reverb_fraction: 0.5,
            babble_fraction: 0.5,
            ..PerturbConfig::default()
        };
        let draws: Vec<Perturbation> = (0..2000)
            .map(|i| draw_perturbation(&on, 0, &format!("u{i}"), 0, 7, 10).0)
            .collect();
        assert!(draws
            .iter()
            .all(|p| p.speed.is_some_and(|s| (0.9..=1.1).contains(&s))));
        let n = |f: &dyn Fn(&Perturbation) -> bool| draws.iter().filter(|p| f(p)).count();
        for (what, count) in [
            ("pitch", n(&|p| p.pitch_semitones.is_some())),
            ("room", n(&|p| p.rt60_s.is_some())),
            ("babble", n(&|p| p.babble_snr_db.is_some())),
        ] {
            assert!((850..1150).contains(&count), "{what}: {count} of 2000");
        }
        // Talkers are other entries, never the copy's own.
        assert!(draws
            .iter()
            .flat_map(|p| &p.babble_from)
            .all(|&j| j != 7 && j < 10));
        assert!(draws.iter().any(|p| p.babble_from.len() == 3));
        let bad = PerturbConfig {
            speed: Span { lo: 0.1, hi: 1.0 },
            ..PerturbConfig::default()
        };
        assert!(bad.check().is_err());
        let bad = PerturbConfig {
            reverb_fraction: 1.5,
            ..PerturbConfig::default()
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn a_perturbed_copy_is_faster_reverberant_and_has_babble() {
        let speech: Vec<f32> = (0..16_000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        let p = Perturbation {
            speed: Some(1.1),
            pitch_semitones: Some(1.0),
            rt60_s: Some(0.4),
            drr_db: Some(5.0),
            babble_snr_db: Some(10.0),
            babble_from: vec![1, 2],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x = perturb_speech(&speech, &p, &mut rng);
        let sped = (16_000.0f64 / 1.1).round() as usize;
        assert!(
            (x.len() as i64 - (sped + 4_800) as i64).abs() < 40,
            "{} samples",
            x.len()
        );
        let mut out = x.clone();
        let talkers = vec![vec![0.1f32; 500], vec![-0.2f32; 700]];
        add_babble(&mut out, rms(&x), &p, &talkers, &mut rng);
        let diff: Vec<f32> = out.iter().zip(&x).map(|(a, b)| a - b).collect();
        let snr = 20.0 * (rms(&x) / rms(&diff)).log10();
        assert!((snr - 10.0).abs() < 0.5, "{snr} dB");
        assert!(out.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
        assert!(Perturbation::describe(&p).contains("babble of 2 at 10.0 dB SNR"));
    }

    #[test]
    fn augment_applies_every_perturbation_to_a_manifest() {
        let d = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        for i in 0..3 {
            let tone: Vec<f32> = (0..8_000)
                .map(|t| 0.2 * (t as f32 * 0.03 * (i + 1) as f32).sin())
                .collect();
            write_wav(
                d.path().join(format!("{i}.wav")),
                &tone,
                16_000,
                1,
                WavFormat::Pcm16,
            )
            .unwrap();
            let mut e = ManifestEntry::new(format!("u{i}"), "en", "Hello.");
            e.audio = Some(format!("{i}.wav"));
            entries.push(e);
        }
        write_manifest(d.path().join("in.jsonl"), &entries).unwrap();
        let cfg = AugmentConfig {
            copies: 2,
            perturb: PerturbConfig {
                speed_fraction: 1.0,
                pitch_fraction: 1.0,
                reverb_fraction: 1.0,
                babble_fraction: 1.0,
                ..PerturbConfig::default()
            },
            ..Default::default()
        };
        let out = d.path().join("out.jsonl");
        augment(&d.path().join("in.jsonl"), &out, &cfg).unwrap();
        let m = read_manifest(&out, ReadOptions::default()).unwrap();
        assert_eq!(m.entries.len(), 6);
        for e in &m.entries {
            let text = e.augmentation.as_deref().unwrap();
            for part in ["speed x", "pitch ", "room RT60", "babble of 3"] {
                assert!(text.contains(part), "{text}");
            }
            let w = read_wav(m.resolve(e.audio.as_deref().unwrap())).unwrap();
            assert!(w.samples.iter().all(|v| v.is_finite()));
        }
        let log = std::fs::read_to_string(d.path().join("out.augment.jsonl")).unwrap();
        assert!(log.lines().all(|l| l.contains("\"babble_from\"")), "{log}");
    }

    #[test]
    fn an_entry_fraction_picks_the_same_entries_whatever_their_order() {
        let cfg = AugmentConfig {
            entry_fraction: 0.5,
            seed: 3,
            ..Default::default()
        };
        let ids: Vec<String> = (0..2_000).map(|i| format!("u{i}")).collect();
        let kept: Vec<&String> = ids.iter().filter(|id| takes_copies(&cfg, id)).collect();
        assert!((900..1_100).contains(&kept.len()), "{} of 2000", kept.len());
        let reversed: Vec<&String> = ids
            .iter()
            .rev()
            .filter(|id| takes_copies(&cfg, id))
            .collect();
        assert_eq!(kept, reversed.into_iter().rev().collect::<Vec<_>>());
        let other_seed = AugmentConfig {
            seed: 4,
            ..cfg.clone()
        };
        assert!(ids
            .iter()
            .any(|id| takes_copies(&cfg, id) != takes_copies(&other_seed, id)));
        assert!(ids
            .iter()
            .all(|id| takes_copies(&AugmentConfig::default(), id)));
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let c = AugmentConfig {
                entry_fraction: bad,
                ..Default::default()
            };
            assert!(c.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_climb_out_of_the_output_folder() {
        let r = relative_to(Path::new("/a/b/audio/x.wav"), Path::new("/a/c")).unwrap();
        assert_eq!(r, PathBuf::from("../b/audio/x.wav"));
        let r = relative_to(Path::new("/a/b/x.wav"), Path::new("/a/b")).unwrap();
        assert_eq!(r, PathBuf::from("x.wav"));
    }

    #[test]
    fn a_manifest_is_augmented_and_bad_options_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let corpus = d.path().join("corpus");
        std::fs::create_dir_all(&corpus).unwrap();
        let tone: Vec<f32> = (0..8_000).map(|i| 0.2 * (i as f32 * 0.1).sin()).collect();
        write_wav(corpus.join("a.wav"), &tone, 16_000, 1, WavFormat::Pcm16).unwrap();
        write_wav(corpus.join("b.wav"), &tone, 8_000, 1, WavFormat::Pcm16).unwrap();
        let mut e = ManifestEntry::new("u1", "en", "Hello.");
        e.audio = Some("a.wav".into());
        e.target_language = Some("fr".into());
        e.target_text = Some("Bonjour.".into());
        e.target_audio = Some("b.wav".into());
        write_manifest(corpus.join("train.jsonl"), &[e]).unwrap();
        let cfg = AugmentConfig {
            copies: 3,
            ..Default::default()
        };
        let out = d.path().join("aug").join("train-aug.jsonl");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let s = augment(&corpus.join("train.jsonl"), &out, &cfg).unwrap();
        assert_eq!((s.entries, s.copies), (1, 3));
        let m = read_manifest(&out, ReadOptions::default()).unwrap();
        let ids: Vec<&str> = m.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["u1+aug0", "u1+aug1", "u1+aug2"]);
        for (k, e) in m.entries.iter().enumerate() {
            assert_eq!(e.target_audio.as_deref(), Some("../corpus/b.wav"));
            assert_eq!(e.target_text.as_deref(), Some("Bonjour."));
            let w = read_wav(m.resolve(e.audio.as_deref().unwrap())).unwrap();
            assert_eq!(w.sample_rate, 16_000);
            let (dr, _) = draw_copy(&cfg, "u1", k);
            let want = 8_000 + ((dr.lead_ms + dr.tail_ms) * 16.0) as usize;
            assert_eq!(w.samples.len(), want);
        }
        assert!(m.entries[0]
            .augmentation
            .as_deref()
            .unwrap()
            .contains("lead "));
        assert!(
            m.entries[0].reversed().is_none(),
            "noisy audio is no target"
        );
        // --reverse: the French side becomes the noisy source, the English one the target.
        let rev = d.path().join("aug").join("rev.jsonl");
        augment(
            &corpus.join("train.jsonl"),
            &rev,
            &AugmentConfig {
                reverse: true,
                ..cfg.clone()
            },
        )
        .unwrap();
        let r = read_manifest(&rev, ReadOptions::default()).unwrap();
        assert_eq!(r.entries[0].id, "u1-rev+aug0");
        assert_eq!(
            (r.entries[0].language.as_str(), r.entries[0].text.as_str()),
            ("fr", "Bonjour.")
        );
        assert_eq!(
            r.entries[0].target_audio.as_deref(),
            Some("../corpus/a.wav")
        );
        let w = read_wav(r.resolve(r.entries[0].audio.as_deref().unwrap())).unwrap();
        let (dr, _) = draw_copy(&cfg, "u1-rev", 0);
        assert_eq!(
            w.samples.len(),
            16_000 + ((dr.lead_ms + dr.tail_ms) * 16.0) as usize,
            "the French side (1 s at 8 kHz) was resampled"
        );
        // The same seed gives the same files; one worker or two.
        let again = d.path().join("aug").join("again.jsonl");
        augment(
            &corpus.join("train.jsonl"),
            &again,
            &AugmentConfig {
                workers: 1,
                ..cfg.clone()
            },
        )
        .unwrap();
        for k in 0..3 {
            let a = std::fs::read(d.path().join(format!("aug/audio/train-aug/u1+aug{k}.wav")));
            let b = std::fs::read(d.path().join(format!("aug/audio/again/u1+aug{k}.wav")));
            assert_eq!(a.unwrap(), b.unwrap());
        }
        let bad = |c: AugmentConfig| {
            augment(&corpus.join("train.jsonl"), &out, &c)
                .unwrap_err()
                .to_string()
        };
        let e = bad(AugmentConfig {
            noise_dbfs: Span { lo: -10.0, hi: 3.0 },
            ..cfg.clone()
        });
        assert!(e.contains("full scale"), "{e}");
        let e = bad(AugmentConfig {
            clean_fraction: 1.5,
            ..cfg.clone()
        });
        assert!(e.contains("clean_fraction"), "{e}");
        // A corrupt source names its entry.
        std::fs::write(corpus.join("a.wav"), b"RIFF????WAVEjunk").unwrap();
        let e = bad(cfg);
        assert!(e.contains("u1"), "{e}");
    }
}
