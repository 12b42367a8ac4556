//! The output folder of a training run: crash-safe checkpoints and logs.
//!
//! A checkpoint is written into `checkpoints/step-NNNNNNN.tmp`, renamed to
//! `checkpoints/step-NNNNNNN`, and only then named by the `latest` file (itself written to a
//! temporary name and renamed): a crash at any moment leaves the previous checkpoint in use.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

/// The command-line flags every recipe-driven training command takes (`sft`, `preference`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunFlags {
    /// Recipe file (TOML; see `training/recipes/`).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override `run.out`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override `run.device` (cpu, cuda, cuda:N).
    #[arg(long)]
    pub device: Option<String>,
    /// Start from scratch even when the output folder has a checkpoint.
    #[arg(long)]
    pub restart: bool,
    /// Stop after this many steps of this invocation (the run stays resumable); for tests.
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
}

impl RunFlags {
    /// Applies `--out` and `--device` to a recipe's run section.
    pub fn apply(&self, run: &mut crate::sft::recipe::RunSection) {
        if let Some(o) = &self.out {
            run.out = o.clone();
        }
        if let Some(d) = &self.device {
            run.device = d.clone();
        }
    }
}

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

/// The checkpoint `latest` names, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let latest = out.join("latest");
    match std::fs::read_to_string(&latest) {
        Ok(name) => Ok(Some(out.join("checkpoints").join(name.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&latest)(e)),
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
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

/// A training run's progress: a bar on a terminal, plain lines on stderr otherwise (logs, CI).
pub struct StepProgress {
    bar: ProgressBar,
    tty: bool,
}

impl StepProgress {
    /// `total` optimizer steps, `done` of them already (a resumed run).
    pub fn new(total: u64, done: u64) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_position(done);
            b
        } else {
            ProgressBar::hidden()
        };
        Self { bar, tty }
    }

    pub fn set_step(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// The running figures: the bar's message, or a `step i/n ...` line without a terminal.
    pub fn figures(&self, step: u64, total: u64, msg: String) {
        if !self.tty {
            eprintln!("step {step}/{total} {msg}");
        }
        self.bar.set_message(msg);
    }

    /// A line that stays (evaluations), above the bar.
    pub fn line(&self, line: String) {
        if self.tty {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
