//! Errors of `tolk-train eval` and of the Python recognizers and scorers it runs (PocketSphinx,
//! Whisper, DNSMOS); each names the file, entry or tool concerned.

use std::path::PathBuf;
use std::process::ExitStatus;

use tolk_models::audio::AudioError;
use tolk_models::translator::Direction;
use tolk_models::ModelError;

use crate::corpus::manifest::ManifestError;
use crate::metrics::MetricError;
use crate::toolkit::run_dir::RunDirError;
use crate::units::UnitsFileError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("running {program}: {source}")]
    Run {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not UTF-8")]
    NotUtf8(PathBuf),
    #[error("{0:?}: a path with a newline cannot be listed")]
    NewlineInPath(String),
    #[error(
        "{what} needs the Python packages {modules}, but {python} cannot import them ({stderr}); \
         run deploy/host/setup.sh (it installs tests/reference/requirements*.txt into .venv)"
    )]
    MissingPackages {
        what: &'static str,
        modules: String,
        python: PathBuf,
        stderr: String,
    },
    #[error(
        "ASR-BLEU needs PocketSphinx, but {python} cannot import pocketsphinx ({stderr}); \
         install it with `{python} -m pip install -r tests/reference/requirements.txt`, or pass \
         --no-asr"
    )]
    NoPocketSphinx { python: PathBuf, stderr: String },
    #[error(
        "no Python for the PocketSphinx recognizer: pass --python, set TOLK_PYTHON, or create \
         the project venv (deploy/host/setup.sh); --no-asr skips ASR-BLEU"
    )]
    NoPython,
    #[error("{what} failed ({status}): {stderr}")]
    ScriptFailed {
        what: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A tool's answer does not match its inputs one to one.
    #[error("{tool} returned {got} {items} for {expected} {inputs}")]
    WrongCount {
        tool: &'static str,
        got: usize,
        items: &'static str,
        expected: usize,
        inputs: &'static str,
    },
    #[error("{tool} answered for {answered} instead of {expected}")]
    WrongFile {
        tool: &'static str,
        answered: String,
        expected: PathBuf,
    },
    #[error("reading {path}: {source}")]
    ReadAudio {
        path: PathBuf,
        #[source]
        source: AudioError,
    },
    #[error("converting {path} to 16 kHz mono: {source}")]
    ConvertAudio {
        path: PathBuf,
        #[source]
        source: AudioError,
    },
    #[error("writing {path}: {source}")]
    WriteAudio {
        path: PathBuf,
        #[source]
        source: AudioError,
    },
    #[error("loading the translator {path}: {source}")]
    LoadTranslator {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{model} does not translate {direction} (its directions: {directions:?})")]
    UnsupportedDirection {
        model: PathBuf,
        direction: Direction,
        directions: Vec<&'static str>,
    },
    #[error("{path}: units file has num_units {file} but the model has {model} units")]
    UnitCount {
        path: PathBuf,
        file: u32,
        model: u32,
    },
    #[error("{manifest} has no paired {direction} entries")]
    NoEntries {
        manifest: PathBuf,
        direction: Direction,
    },
    #[error(
        "PocketSphinx recognizes English only, and {direction} speaks {language}: use --asr \
         whisper"
    )]
    PocketSphinxEnglishOnly {
        direction: Direction,
        language: &'static str,
    },
    /// An entry without the audio (`audio` or `target audio`) the evaluation needs.
    #[error("entry {id}: no {field}")]
    NoAudio { id: String, field: &'static str },
    #[error("entry {id}: {audio} has no units in {units}")]
    NoUnits {
        id: String,
        audio: String,
        units: PathBuf,
    },
    #[error("decoding entry {id}: {source}")]
    Decode {
        id: String,
        #[source]
        source: ModelError,
    },
    #[error("asr is not a translation mode (expected com, s2st or s2tt)")]
    NotATranslationMode,
    #[error("serializing the report: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Units(#[from] UnitsFileError),
    #[error(transparent)]
    Metric(#[from] MetricError),
}

impl EvalError {
    /// The error of starting `program`.
    pub(crate) fn run(program: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let program = program.into();
        move |source| Self::Run { program, source }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
