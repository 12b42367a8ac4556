//! Errors of `tolk-train pairs` and of its merge; each names the argument, entry, file or shard
//! that is wrong.

use std::path::PathBuf;

use tolk_models::translator::Direction;
use tolk_models::ModelError;

use super::plot::PlotError;
use super::records::PairsSettings;
use crate::corpus::manifest::ManifestError;
use crate::eval::EvalError;
use crate::toolkit::run_dir::RunDirError;
use crate::units::UnitsFileError;

#[derive(Debug, thiserror::Error)]
pub enum PairsError {
    #[error("--model, --manifest, --units and --direction are required (unless --merge)")]
    MissingArguments,
    #[error("--candidates {0} must be at least 2")]
    TooFewCandidates(usize),
    #[error("--delta {0} must be a non-negative number")]
    BadDelta(f64),
    #[error("--mcd-worst {0} must be a positive number of dB")]
    BadMcdWorst(f64),
    #[error("--threads {0} must be positive")]
    BadThreads(i32),
    #[error("loading the translator {path}: {source}")]
    LoadTranslator {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{model}: preference pairs need a chain-of-modality model: {source}")]
    NotChainOfModality {
        model: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error(
        "{model} does not translate {missing} (pairs need {direction} and its back-translation)"
    )]
    UnsupportedDirection {
        model: PathBuf,
        missing: Direction,
        direction: Direction,
    },
    #[error(
        "{manifest} has no {direction} entries{}",
        if *against_reference {
            " with a target side (--judge-against reference needs paired entries)"
        } else {
            ""
        }
    )]
    NoEntries {
        manifest: PathBuf,
        direction: Direction,
        against_reference: bool,
    },
    #[error(
        "entry {0} has no text: give the source text in the manifest, or pass --transcribe to \
         recognize it (English)"
    )]
    NoText(String),
    #[error(
        "entry {id} has no text and is in `{language}`: --transcribe recognizes English only \
         (PocketSphinx en-us)"
    )]
    NotEnglish { id: String, language: String },
    #[error("entry {0}: no audio")]
    NoAudio(String),
    #[error("entry {0}: no audio to transcribe")]
    NoAudioToTranscribe(String),
    #[error("entry {id}: {audio} has no units in {units}")]
    NoUnits {
        id: String,
        audio: String,
        units: PathBuf,
    },
    #[error("entry {0}: the MCD judge needs target_audio")]
    NoTargetAudio(String),
    #[error("entry {id}: {source}")]
    Audio {
        id: String,
        #[source]
        source: Box<EvalError>,
    },
    #[error("transcribing the sources: {0}")]
    Transcribe(#[source] Box<EvalError>),
    #[error("sampling candidates of entry {id}: {source}")]
    Sampling {
        id: String,
        #[source]
        source: ModelError,
    },
    #[error("judging a candidate of entry {id}: {source}")]
    Judging {
        id: String,
        #[source]
        source: ModelError,
    },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading {path} (not a pairs folder?): {source}")]
    NotAPairsFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: {source}")]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{dir} was made with other settings than {first_dir}: {settings:?} vs {first:?}")]
    OtherSettings {
        dir: PathBuf,
        first_dir: PathBuf,
        settings: Box<PairsSettings>,
        first: Box<PairsSettings>,
    },
    #[error("{0} is an unsharded run: nothing to merge it with")]
    Unsharded(PathBuf),
    #[error("shard {shard} appears twice (again in {dir})")]
    DuplicateShard { shard: String, dir: PathBuf },
    #[error("pair {id} appears twice (again in {path})")]
    DuplicatePair { id: String, path: PathBuf },
    #[error("no shard folders to merge")]
    NothingToMerge,
    #[error("shards of different splits cannot be merged: {0:?}")]
    MixedSplits(Vec<String>),
    #[error("entry {index} ({id}) is in two shards")]
    EntryInTwoShards { index: usize, id: String },
    #[error("utterance {0} was kept but has no pair line")]
    KeptWithoutPair(String),
    #[error("utterance {0} was dropped but has a pair line")]
    DroppedWithPair(String),
    #[error("pair {0} has no utterance record")]
    PairWithoutUtterance(String),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Eval(Box<EvalError>),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Units(#[from] UnitsFileError),
}

// The evaluation's errors are boxed: they would make every result of the command large.
impl From<EvalError> for PairsError {
    fn from(e: EvalError) -> Self {
        Self::Eval(Box::new(e))
    }
}

impl PairsError {
    /// The error of transcribing the sources.
    pub(super) fn transcribe(e: EvalError) -> Self {
        Self::Transcribe(Box::new(e))
    }
}

pub type Result<T, E = PairsError> = std::result::Result<T, E>;
