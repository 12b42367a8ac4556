//! Files in the output folder of a training run: I/O errors that name the path, files written
//! atomically, JSON-lines logs.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct RunDirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub type Result<T> = std::result::Result<T, RunDirError>;

/// Attaches `path` to an I/O error.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunDirError + '_ {
    move |source| RunDirError {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: [`tolk_config::fsutil::atomic_write`] (synced temporary
/// file, rename, synced folder), the error naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    tolk_config::fsutil::atomic_write(path, bytes).map_err(io(path))
}

/// Appends one JSON line to `path`.
pub fn append_jsonl(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    writeln!(f, "{value}").map_err(io(path))
}
