//! The independent English recognizer of ASR-BLEU: PocketSphinx (PyPI `pocketsphinx`, pinned in
//! `tests/reference/requirements.txt`, with the en-us model it ships) run by
//! `training/scripts/asr_pocketsphinx.py` through the project's Python.
//!
//! The script is compiled into the binary and written next to the report, so `tolk-train eval`
//! only needs a Python with `pocketsphinx` installed: `--python`, else `$TOLK_PYTHON`, else the
//! first `.venv/bin/python` found above the working directory or the executable.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::error::{EvalError, Result};
use crate::toolkit::run_dir::io;

/// The recognizer script (`training/scripts/asr_pocketsphinx.py`).
pub const SCRIPT: &str = include_str!("../../scripts/asr_pocketsphinx.py");

#[derive(Debug, Deserialize)]
struct Output {
    recognizer: String,
    transcripts: Vec<Transcript>,
}

#[derive(Debug, Deserialize)]
struct Transcript {
    wav: String,
    text: String,
}

/// Writes `paths` one per line (none may hold a newline).
pub(crate) fn write_list(paths: &[PathBuf], list: &Path) -> Result<()> {
    let mut text = String::new();
    for w in paths {
        let s = w.to_str().ok_or_else(|| EvalError::NotUtf8(w.clone()))?;
        if s.contains('\n') {
            return Err(EvalError::NewlineInPath(s.to_string()));
        }
        text.push_str(s);
        text.push('\n');
    }
    Ok(std::fs::write(list, text).map_err(io(list))?)
}

/// Checks that `python` imports `modules`, or says which package and set-up step is missing.
pub(crate) fn check_imports(python: &Path, modules: &str, what: &'static str) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map_err(EvalError::run(python))?;
    if !out.status.success() {
        return Err(EvalError::MissingPackages {
            what,
            modules: modules.to_string(),
            python: python.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string(),
        });
    }
    Ok(())
}

/// Runs an embedded measurement script: writes `source` to `work/name`, runs it with `python`
/// and `args`, and returns the JSON file it wrote at `work/out_name`, parsed. `what` names the
/// tool in errors.
pub(crate) fn run_script<T: for<'de> Deserialize<'de>>(
    python: &Path,
    work: &Path,
    (name, source): (&str, &str),
    args: &[&std::ffi::OsStr],
    out_name: &str,
    what: &'static str,
) -> Result<T> {
    std::fs::create_dir_all(work).map_err(io(work))?;
    let script = work.join(name);
    std::fs::write(&script, source).map_err(io(&script))?;
    let out_json = work.join(out_name);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .arg("--out")
        .arg(&out_json)
        .output()
        .map_err(EvalError::run(python))?;
    if !out.status.success() {
        return Err(EvalError::ScriptFailed {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let json = std::fs::read(&out_json).map_err(io(&out_json))?;
    serde_json::from_slice(&json).map_err(|source| EvalError::Parse {
        path: out_json,
        source,
    })
}

/// The name the PocketSphinx and Whisper recognizers go by in errors.
pub(crate) const TOOL: &str = "the recognizer";

/// Checks that `tool` returned one of `items` per input.
pub(crate) fn check_count(
    tool: &'static str,
    got: usize,
    items: &'static str,
    expected: usize,
    inputs: &'static str,
) -> Result<()> {
    if got == expected {
        return Ok(());
    }
    Err(EvalError::WrongCount {
        tool,
        got,
        items,
        expected,
        inputs,
    })
}

/// Checks that `tool` answered once for each of `wavs`, in order (`items` names its answers).
pub(crate) fn check_answers<'a>(
    tool: &'static str,
    items: &'static str,
    answered: impl ExactSizeIterator<Item = &'a str>,
    wavs: &[PathBuf],
) -> Result<()> {
    check_count(tool, answered.len(), items, wavs.len(), "files")?;
    for (a, w) in answered.zip(wavs) {
        if Path::new(a) != w.as_path() {
            return Err(EvalError::WrongFile {
                tool,
                answered: a.to_string(),
                expected: w.clone(),
            });
        }
    }
    Ok(())
}

/// A Python that can run PocketSphinx.
#[derive(Debug, Clone)]
pub struct PocketSphinx {
    pub python: PathBuf,
    /// e.g. `pocketsphinx 5.1.1 (en-us)`, known after the first run.
    pub name: Option<String>,
}

/// The Python to use: `explicit`, `$TOLK_PYTHON`, or a `.venv/bin/python` above the working
/// directory or the executable.
pub fn find_python(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TOLK_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().map_err(io(Path::new(".")))?;
    let mut starts = vec![cwd];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for s in starts {
        for dir in s.ancestors() {
            let p = dir.join(".venv/bin/python");
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(EvalError::NoPython)
}

impl PocketSphinx {
    /// Checks that `python` imports `pocketsphinx`.
    pub fn new(python: PathBuf) -> Result<Self> {
        let out = Command::new(&python)
            .args(["-c", "import pocketsphinx"])
            .output()
            .map_err(EvalError::run(&python))?;
        if !out.status.success() {
            return Err(EvalError::NoPocketSphinx {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                python,
            });
        }
        Ok(Self { python, name: None })
    }

    /// Transcribes 16-bit mono 16 kHz WAV files (in order); `work` holds the script and lists.
    pub fn transcribe(&mut self, wavs: &[PathBuf], work: &Path) -> Result<Vec<String>> {
        std::fs::create_dir_all(work).map_err(io(work))?;
        let list = work.join("wavs.txt");
        write_list(wavs, &list)?;
        let parsed: Output = run_script(
            &self.python,
            work,
            ("asr_pocketsphinx.py", SCRIPT),
            &["--list".as_ref(), list.as_os_str()],
            "transcripts.json",
            "PocketSphinx recognizer",
        )?;
        check_answers(
            TOOL,
            "transcripts",
            parsed.transcripts.iter().map(|t| t.wav.as_str()),
            wavs,
        )?;
        self.name = Some(parsed.recognizer);
        Ok(parsed.transcripts.into_iter().map(|t| t.text).collect())
    }
}

/// The normalisation applied to both sides before ASR-BLEU (and to the ceiling): Unicode
/// lower-case; every character that is neither alphanumeric nor an apostrophe becomes a space
/// (punctuation, symbols, hyphens); apostrophes are dropped when they are not between two
/// letters; whitespace is collapsed. Numbers written in digits are left as digits (the
/// recognizer writes words), which costs the system and the ceiling alike.
pub fn normalize_for_asr_bleu(text: &str) -> String {
    let lower = text.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut out = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let keep = if c == '\'' || c == '\u{2019}' {
            let prev = i > 0 && chars[i - 1].is_alphabetic();
            let next = chars.get(i + 1).is_some_and(|n| n.is_alphabetic());
            if prev && next {
                Some('\'')
            } else {
                None
            }
        } else if c.is_alphanumeric() {
            Some(c)
        } else {
            None
        };
        out.push(keep.unwrap_or(' '));
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_for_asr_bleu("Where's the Train-Station?  It's 'here'."),
            "where's the train station it's here"
        );
        assert_eq!(normalize_for_asr_bleu("  "), "");
        assert_eq!(normalize_for_asr_bleu("À 14h20, ok!"), "à 14h20 ok");
    }
}
