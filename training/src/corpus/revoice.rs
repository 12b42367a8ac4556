//! `tolk-train revoice`: the target side of a paired manifest spoken again in one voice, the
//! kiosk's output voice. Chain-of-modality decoding learns to write the target speech's units;
//! when a corpus draws each side's voice at random, those units change with a voice the model
//! cannot know from the source, and the vocoder (trained on one voice) is fed a mixture. A
//! revoiced entry keeps its source audio (any voice, later noisy copies of it) and gets the
//! target sentence rendered by the given voice at its neutral speed and pitch.
//!
//! Such an entry trains its own direction only: its target is the output voice, never a
//! source, so it has no [`ManifestEntry::reversed`] (`fixed_target`). `--reverse` revoices the
//! reversed entries, for the other direction.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::augment::relative_to;
use super::manifest::{read_manifest, refuse_test_only, write_manifest, ReadOptions};
use super::synth::SynthJob;
use super::{voice_language, CorpusError, SynthProgramArgs};

/// espeak-ng's default rate and pitch (`-s 175 -p 50`; SVOX Pico's 100 % speed and pitch).
const NEUTRAL_SPEED: u32 = 175;
const NEUTRAL_PITCH: u32 = 50;

/// Arguments of `tolk-train revoice`.
#[derive(Debug, Clone, clap::Args)]
pub struct RevoiceArgs {
    /// Paired input manifest (e.g. a corpus's train.jsonl).
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output manifest; the new target audio goes to `audio/<its stem>/` beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// The output voice of the target language (`pico:fr-FR`, `pico:en-US` or an espeak-ng
    /// voice).
    #[arg(long)]
    pub voice: String,
    /// Revoice the reversed entries (the French side of en->fr pairs becomes the source).
    #[arg(long)]
    pub reverse: bool,
    #[command(flatten)]
    pub programs: SynthProgramArgs,
}

/// What a run wrote; printed as JSON by the CLI.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RevoiceSummary {
    pub entries: usize,
    pub voice: String,
    pub target_language: String,
    /// Seconds of target speech synthesized.
    pub audio_seconds: f64,
}

/// Writes `args.out`: the entries of `args.manifest` (reversed with `--reverse`), their target
/// sentences spoken by `args.voice`.
pub fn revoice(args: &RevoiceArgs) -> Result<RevoiceSummary, CorpusError> {
    let m = read_manifest(&args.manifest, ReadOptions::default())?;
    refuse_test_only(&m, "revoiced training data")?;
    let language = voice_language(&args.voice).to_string();
    let mut entries = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        let e = if args.reverse {
            e.reversed().ok_or_else(|| {
                CorpusError::Config(format!(
                    "{}: --reverse needs paired entries that are neither augmented nor revoiced",
                    e.id
                ))
            })?
        } else {
            e.clone()
        };
        match (e.target_language.as_deref(), e.target_text.as_deref()) {
            (Some(l), Some(t)) if l == language && !t.trim().is_empty() => {}
            (Some(l), Some(_)) if l != language => {
                return Err(CorpusError::Config(format!(
                    "{}: its target is {l}, the voice {} speaks {language}",
                    e.id, args.voice
                )))
            }
            _ => {
                return Err(CorpusError::Config(format!(
                    "{}: no target sentence to speak",
                    e.id
                )))
            }
        }
        entries.push(e);
    }
    if entries.is_empty() {
        return Err(CorpusError::Config(format!(
            "{}: no entries",
            args.manifest.display()
        )));
    }
    let out_dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let stem = args
        .out
        .file_stem()
        .ok_or_else(|| CorpusError::Config(format!("{}: not a file name", args.out.display())))?
        .to_string_lossy()
        .into_owned();
    let audio_rel = PathBuf::from("audio").join(&stem);
    let audio_dir = out_dir.join(&audio_rel);
    std::fs::create_dir_all(&audio_dir).map_err(|source| CorpusError::Io {
        path: audio_dir.clone(),
        source,
    })?;
    let synth = args.programs.synthesizers();
    synth.check_voices(std::slice::from_ref(&args.voice), &audio_dir)?;
    let jobs: Vec<SynthJob> = entries
        .iter()
        .map(|e| SynthJob {
            text: e.target_text.clone().unwrap_or_default(),
            voice: args.voice.clone(),
            speed: NEUTRAL_SPEED,
            pitch: NEUTRAL_PITCH,
            out: audio_dir.join(format!("{}.{language}.wav", e.id)),
        })
        .collect();
    let durations = synth.synthesize_all(&jobs, args.programs.workers())?;
    let mut audio_seconds = 0.0;
    for ((e, job), d) in entries.iter_mut().zip(&jobs).zip(durations) {
        if let Some(a) = &e.audio {
            // The source audio stays where it is, addressed from the output's folder.
            let p = relative_to(&m.resolve(a), &out_dir).map_err(|source| CorpusError::Io {
                path: m.resolve(a),
                source,
            })?;
            e.audio = Some(p.to_string_lossy().into_owned());
        }
        let name = job.out.file_name().unwrap_or_default().to_string_lossy();
        e.target_audio = Some(audio_rel.join(name.as_ref()).to_string_lossy().into_owned());
        e.target_duration = Some(d);
        e.target_voice = Some(job.settings());
        e.fixed_target = true;
        audio_seconds += d;
    }
    write_manifest(&args.out, &entries)?;
    Ok(RevoiceSummary {
        entries: entries.len(),
        voice: args.voice.clone(),
        target_language: language,
        audio_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::manifest::ManifestEntry;
    use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};

    fn corpus(dir: &Path) -> PathBuf {
        let tone: Vec<f32> = (0..8_000).map(|i| 0.2 * (i as f32 * 0.05).sin()).collect();
        let mut entries = Vec::new();
        for (i, (en, fr)) in [
            ("Where is the station?", "Où est la gare ?"),
            ("Good evening.", "Bonsoir."),
        ]
        .iter()
        .enumerate()
        {
            for l in ["en", "fr"] {
                write_wav(
                    dir.join(format!("p{i}.{l}.wav")),
                    &tone,
                    16_000,
                    1,
                    WavFormat::Pcm16,
                )
                .unwrap();
            }
            let mut e = ManifestEntry::new(format!("p{i}"), "en", *en);
            e.audio = Some(format!("p{i}.en.wav"));
            e.target_language = Some("fr".into());
            e.target_text = Some((*fr).into());
            e.target_audio = Some(format!("p{i}.fr.wav"));
            entries.push(e);
        }
        let path = dir.join("train.jsonl");
        write_manifest(&path, &entries).unwrap();
        path
    }

    fn args(manifest: PathBuf, out: PathBuf, voice: &str, reverse: bool) -> RevoiceArgs {
        RevoiceArgs {
            manifest,
            out,
            voice: voice.into(),
            reverse,
            programs: SynthProgramArgs {
                workers: Some(2),
                espeak: "espeak-ng".into(),
                pico: "pico2wave".into(),
            },
        }
    }

    #[test]
    fn targets_are_spoken_in_one_voice_and_never_become_sources() {
        let d = tempfile::tempdir().unwrap();
        let input = corpus(d.path());
        let out = d.path().join("kiosk").join("train-en-fr.jsonl");
        let s = revoice(&args(input.clone(), out.clone(), "fr-fr", false)).unwrap();
        assert_eq!((s.entries, s.target_language.as_str()), (2, "fr"));
        assert!(s.audio_seconds > 0.5, "{s:?}");
        let m = read_manifest(&out, ReadOptions::default()).unwrap();
        for e in &m.entries {
            assert!(e.fixed_target && e.reversed().is_none());
            assert_eq!(e.target_voice.as_deref(), Some("fr-fr s175 p50"));
            assert!(e
                .target_audio
                .as_deref()
                .unwrap()
                .starts_with("audio/train-en-fr/"));
            // The source stays the original recording, addressed from the new folder.
            let src = m
                .resolve(e.audio.as_deref().unwrap())
                .canonicalize()
                .unwrap();
            let want = d
                .path()
                .join(format!("{}.en.wav", e.id))
                .canonicalize()
                .unwrap();
            assert_eq!(src, want);
            let w = read_wav(m.resolve(e.target_audio.as_deref().unwrap())).unwrap();
            assert_eq!(w.sample_rate, 16_000);
            assert!(w.samples.len() > 4_000);
        }
        // The other direction: French sources, English targets in the English voice.
        let back = d.path().join("train-fr-en.jsonl");
        revoice(&args(input.clone(), back.clone(), "en-us", true)).unwrap();
        let m = read_manifest(&back, ReadOptions::default()).unwrap();
        assert!(m.entries.iter().all(|e| e.language == "fr"
            && e.target_language.as_deref() == Some("en")
            && e.audio.as_deref().unwrap().ends_with(".fr.wav")));
        // A voice of the wrong language, and revoicing a revoiced manifest the other way.
        let bad = revoice(&args(input, d.path().join("x.jsonl"), "en-us", false)).unwrap_err();
        assert!(bad.to_string().contains("speaks en"), "{bad}");
        let twice = revoice(&args(out, d.path().join("y.jsonl"), "en-us", true)).unwrap_err();
        assert!(
            twice.to_string().contains("neither augmented nor revoiced"),
            "{twice}"
        );
    }
}
