//! Training checkpoints, the same way for every trainer (SFT, preference, vocoder).
//!
//! A checkpoint is written into `checkpoints/step-NNNNNNN.tmp`, renamed to
//! `checkpoints/step-NNNNNNN`, and only then named by the `latest` file (itself written to a
//! temporary name and renamed): a crash at any moment leaves the previous checkpoint in use.
//! Inside it, the trainer's state is a JSON file ([`write_state`] / [`read_state`]) and each
//! optimizer's a safetensors file ([`super::optim::AdamW::save`] / [`load_optimizer`]); the
//! model files are the trainer's own.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::optim::{AdamW, OptimError};
use super::run_dir::{io, write_atomic, RunDirError};

type Result<T> = std::result::Result<T, RunDirError>;

/// Why a run cannot resume from its checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot resume from {checkpoint}: {file}: {source}")]
    Read {
        checkpoint: PathBuf,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resume from {checkpoint}: {file}: {source}")]
    Parse {
        checkpoint: PathBuf,
        file: String,
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint belongs to another configuration (the message says which and what to do).
    #[error("cannot resume from {checkpoint}: {message}")]
    Mismatch {
        checkpoint: PathBuf,
        message: String,
    },
    #[error("cannot resume from {checkpoint}: {source}")]
    Optimizer {
        checkpoint: PathBuf,
        #[source]
        source: OptimError,
    },
}

/// The checkpoint `latest` names, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let latest = out.join("latest");
    match std::fs::read_to_string(&latest) {
        Ok(name) => Ok(Some(out.join("checkpoints").join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&latest)(e)),
    }
}

/// Writes the checkpoint of `step`: `fill` writes its files into an empty temporary folder,
/// which is then renamed into place and named by `latest`. Then the oldest complete checkpoints
/// beyond `keep` are removed (never the new one), and so are any of later steps than the new
/// one: they belong to a run abandoned by a restart. Returns the checkpoint's folder.
pub fn commit_checkpoint<E: From<RunDirError>>(
    out: &Path,
    step: u64,
    keep: usize,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<PathBuf, E> {
    let root = out.join("checkpoints");
    let name = format!("step-{step:07}");
    let dir = root.join(&name);
    let tmp = root.join(format!("{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    write_atomic(&out.join("latest"), name.as_bytes())?;
    let mut all: Vec<String> = std::fs::read_dir(&root)
        .map_err(io(&root))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    // Half-written folders of a crashed run.
    for t in all.iter().filter(|n| n.ends_with(".tmp")) {
        let p = root.join(t);
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    all.retain(|n| !n.ends_with(".tmp"));
    // Zero-padded steps: names sort like the steps.
    all.retain(|n| *n != name);
    all.sort();
    let older = all.iter().filter(|n| **n < name).count();
    let stale = all
        .iter()
        .take(older.saturating_sub(keep.max(1) - 1))
        .chain(&all[older..]);
    for old in stale {
        let p = root.join(old);
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(dir)
}

/// Writes a trainer's state as pretty JSON to `dir/file`, atomically.
pub fn write_state<T: Serialize>(dir: &Path, file: &str, state: &T) -> Result<()> {
    let json = serde_json::to_vec_pretty(state).expect("trainer state serializes");
    write_atomic(&dir.join(file), &json)
}

/// Reads back what [`write_state`] wrote into `checkpoint/file`.
pub fn read_state<T: DeserializeOwned>(
    checkpoint: &Path,
    file: &str,
) -> std::result::Result<T, CheckpointError> {
    let bytes = std::fs::read(checkpoint.join(file)).map_err(|source| CheckpointError::Read {
        checkpoint: checkpoint.to_path_buf(),
        file: file.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Parse {
        checkpoint: checkpoint.to_path_buf(),
        file: file.to_string(),
        source,
    })
}

/// Restores `opt` from `checkpoint/file` (written by [`AdamW::save`]).
pub fn load_optimizer(
    checkpoint: &Path,
    file: &str,
    opt: &mut AdamW,
) -> std::result::Result<(), CheckpointError> {
    opt.load(&checkpoint.join(file))
        .map_err(|source| CheckpointError::Optimizer {
            checkpoint: checkpoint.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_state_round_trips_and_a_missing_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        write_state(d.path(), "trainer.json", &serde_json::json!({"step": 3})).unwrap();
        let v: serde_json::Value = read_state(d.path(), "trainer.json").unwrap();
        assert_eq!(v["step"], 3);
        let e = read_state::<serde_json::Value>(d.path(), "state.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot resume from") && e.contains("state.json"),
            "{e}"
        );
    }

    #[test]
    fn checkpoints_rotate_and_latest_follows() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(latest_checkpoint(d.path()).unwrap(), None);
        for step in 1..=4 {
            let dir = commit_checkpoint::<RunDirError>(d.path(), step, 2, |tmp| {
                write_atomic(&tmp.join("x"), step.to_string().as_bytes())
            })
            .unwrap();
            assert_eq!(latest_checkpoint(d.path()).unwrap(), Some(dir));
        }
        assert_eq!(names(d.path()), vec!["step-0000003", "step-0000004"]);
        // A failing writer leaves the previous checkpoint in use.
        let e = commit_checkpoint::<RunDirError>(d.path(), 5, 2, |tmp| {
            Err(io(tmp)(std::io::Error::other("disk full")))
        });
        assert!(e.is_err());
        assert_eq!(names(d.path()), vec!["step-0000003", "step-0000004"]);
        assert_eq!(
            latest_checkpoint(d.path()).unwrap(),
            Some(d.path().join("checkpoints/step-0000004"))
        );
        // A restarted run: its first checkpoint replaces those of the abandoned one (and a
        // crash's leftovers).
        std::fs::create_dir(d.path().join("checkpoints/step-0000009.tmp")).unwrap();
        commit_checkpoint::<RunDirError>(d.path(), 1, 2, |_| Ok(())).unwrap();
        assert_eq!(names(d.path()), vec!["step-0000001"]);
        commit_checkpoint::<RunDirError>(d.path(), 2, 2, |_| Ok(())).unwrap();
        assert_eq!(names(d.path()), vec!["step-0000001", "step-0000002"]);
    }

    fn names(out: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}
