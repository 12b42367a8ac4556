//! Vocoder training data: the speech of one language from a manifest, with its raw 50 Hz units,
//! cut into random fixed-length segments (`segment_frames` units and the `segment_frames *
//! hop_length` samples they cover, as fairseq/speech-resynthesis `CodeDataset` crops
//! `segment_size` samples aligned to `code_hop_size`).
//!
//! A file without units, that fails to decode, whose unit count does not match its length, or
//! that is shorter than one segment is skipped with a warning and counted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::Tensor;
use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::read_wav;
use tolk_models::audio::AudioError;

use crate::corpus::manifest::{read_manifest, refuse_test_only, ManifestError, ReadOptions};
use crate::units::file::{read_units, UnitsFileError};

/// Why the training speech cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum VocoderDataError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Units(#[from] UnitsFileError),
    #[error(
        "{manifest}: no audio in language {language:?} (no entry has it as language with audio or \
         as target_language with target_audio){voice}"
    )]
    NoAudio {
        manifest: PathBuf,
        language: String,
        /// Empty, or the voice filter that left nothing.
        voice: String,
    },
    #[error(
        "{manifest}: no usable training audio in language {language:?} ({files} files, {skipped} \
         skipped)"
    )]
    NoUsableAudio {
        manifest: PathBuf,
        language: String,
        files: usize,
        skipped: usize,
    },
}

/// Why one audio file is skipped.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("no units for this file in the units file")]
    NoUnits,
    #[error("unreadable audio: {0}")]
    Unreadable(#[source] AudioError),
    #[error("the vocoder's rate is {0} Hz; only 16 kHz is supported")]
    Rate(u32),
    #[error("cannot convert to 16 kHz mono: {0}")]
    Convert(#[source] AudioError),
    #[error("audio holds NaN or Inf samples")]
    NotFinite,
    #[error(
        "{units} units for {seconds:.2} s of audio (expected about {expected:.0} at {hop} samples \
         per unit)"
    )]
    UnitCount {
        units: usize,
        seconds: f64,
        expected: f64,
        hop: usize,
    },
    #[error("{units} units, shorter than one segment of {segment}")]
    TooShort { units: usize, segment: usize },
}

/// One utterance: raw units and the 16 kHz waveform.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub key: String,
    pub units: Vec<i64>,
    pub audio: Vec<f32>,
}

/// The loaded training speech.
#[derive(Debug)]
pub struct VocoderData {
    pub train: Vec<Utterance>,
    pub eval: Vec<Utterance>,
    pub num_units: u32,
    /// Audio files of the language named by the manifest.
    pub files: usize,
    /// `(audio key, reason)` of each skipped file.
    pub skipped: Vec<(String, String)>,
    pub train_seconds: f64,
}

/// What to load.
#[derive(Debug, Clone)]
pub struct DataOptions<'a> {
    pub manifest: &'a Path,
    pub units: &'a Path,
    pub language: &'a str,
    /// Prefix of the voice settings to keep (`pico:`); none: all.
    pub voice: Option<&'a str>,
    pub hop_length: usize,
    pub sampling_rate: u32,
    pub segment_frames: usize,
    pub max_files: usize,
    pub eval_files: usize,
}

/// Reads the manifest, the units and the audio of `language`; the last `eval_files` usable
/// files are held out for evaluation.
pub fn load(o: &DataOptions) -> Result<VocoderData, VocoderDataError> {
    let _span = tracing::info_span!("vocoder_data", manifest = %o.manifest.display()).entered();
    let manifest = read_manifest(o.manifest, ReadOptions { check_audio: false })?;
    refuse_test_only(&manifest, "vocoder training")?;
    let table = read_units(o.units)?;
    let mut keys: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let voice_ok = |v: &Option<String>| {
        o.voice
            .is_none_or(|want| v.as_deref().is_some_and(|v| v.starts_with(want)))
    };
    for e in &manifest.entries {
        if e.target_language.as_deref() == Some(o.language) && voice_ok(&e.target_voice) {
            if let Some(a) = &e.target_audio {
                if seen.insert(a.clone()) {
                    keys.push(a.clone());
                }
            }
        }
        if e.language == o.language && voice_ok(&e.voice) {
            if let Some(a) = &e.audio {
                if seen.insert(a.clone()) {
                    keys.push(a.clone());
                }
            }
        }
    }
    if keys.is_empty() {
        return Err(VocoderDataError::NoAudio {
            manifest: o.manifest.to_path_buf(),
            language: o.language.to_string(),
            voice: o
                .voice
                .map(|v| format!(" from a voice {v:?}..."))
                .unwrap_or_default(),
        });
    }
    if o.max_files > 0 {
        keys.truncate(o.max_files);
    }
    let files = keys.len();
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for key in keys {
        match load_one(&manifest.resolve(&key), &key, &table, o) {
            Ok(u) => usable.push(u),
            Err(why) => {
                tracing::warn!("skipping {key}: {why}");
                skipped.push((key, why.to_string()));
            }
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "warning: skipped {} of {files} audio files (first: {}: {})",
            skipped.len(),
            skipped[0].0,
            skipped[0].1
        );
    }
    let n_eval = o.eval_files.min(usable.len().saturating_sub(1));
    let eval = usable.split_off(usable.len() - n_eval);
    if usable.is_empty() {
        return Err(VocoderDataError::NoUsableAudio {
            manifest: o.manifest.to_path_buf(),
            language: o.language.to_string(),
            files,
            skipped: skipped.len(),
        });
    }
    let train_seconds =
        usable.iter().map(|u| u.audio.len()).sum::<usize>() as f64 / o.sampling_rate as f64;
    Ok(VocoderData {
        train: usable,
        eval,
        num_units: table.num_units,
        files,
        skipped,
        train_seconds,
    })
}

fn load_one(
    path: &Path,
    key: &str,
    table: &crate::units::file::UnitsTable,
    o: &DataOptions,
) -> Result<Utterance, Unusable> {
    let units = table.get(key).ok_or(Unusable::NoUnits)?;
    let wav = read_wav(path).map_err(Unusable::Unreadable)?;
    if o.sampling_rate != 16_000 {
        return Err(Unusable::Rate(o.sampling_rate));
    }
    let (audio, _) =
        to_mono_16k(&wav.samples, wav.sample_rate, wav.channels).map_err(Unusable::Convert)?;
    if audio.iter().any(|x| !x.is_finite()) {
        return Err(Unusable::NotFinite);
    }
    // 50 Hz units of n samples: about n / hop frames (Kaldi framing drops a partial window).
    let expected = audio.len() as f64 / o.hop_length as f64;
    if (units.len() as f64 - expected).abs() > 3.0 {
        return Err(Unusable::UnitCount {
            units: units.len(),
            seconds: audio.len() as f64 / o.sampling_rate as f64,
            expected,
            hop: o.hop_length,
        });
    }
    if units.len() < o.segment_frames {
        return Err(Unusable::TooShort {
            units: units.len(),
            segment: o.segment_frames,
        });
    }
    Ok(Utterance {
        key: key.to_string(),
        units: units.iter().map(|&u| u as i64).collect(),
        audio,
    })
}

/// One training batch: unit rows (batch, frames) and their waveforms (batch, 1, samples).
#[derive(Debug)]
pub struct Batch {
    pub unit_rows: Vec<Vec<i64>>,
    pub units: Tensor,
    pub audio: Tensor,
}

/// Draws `batch` random segments (utterance uniformly, then a start frame uniformly); audio past
/// the end of the file is zero.
pub fn sample_batch(
    data: &[Utterance],
    batch: usize,
    frames: usize,
    hop: usize,
    rng: &mut ChaCha8Rng,
) -> Batch {
    let seg = frames * hop;
    let mut rows = Vec::with_capacity(batch);
    let mut audio = vec![0f32; batch * seg];
    for b in 0..batch {
        let u = &data[rng.random_range(0..data.len())];
        let start = rng.random_range(0..=u.units.len() - frames);
        rows.push(u.units[start..start + frames].to_vec());
        let a0 = (start * hop).min(u.audio.len());
        let a1 = ((start + frames) * hop).min(u.audio.len());
        audio[b * seg..b * seg + (a1 - a0)].copy_from_slice(&u.audio[a0..a1]);
    }
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Batch {
        units: Tensor::from_slice(&flat).view([batch as i64, frames as i64]),
        audio: Tensor::from_slice(&audio).view([batch as i64, 1, seg as i64]),
        unit_rows: rows,
    }
}
