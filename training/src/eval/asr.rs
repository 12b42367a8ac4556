//! The independent English recognizer of ASR-BLEU: PocketSphinx (PyPI `pocketsphinx`, pinned in
//! `tests/reference/requirements.txt`, with the en-us model it ships) run by
//! `training/scripts/asr_pocketsphinx.py` through the project's Python.
//!
//! The script is compiled into the binary and written next to the report, so `tolk-train eval`
//! only needs a Python with `pocketsphinx` installed: `--python`, else `$TOLK_PYTHON`, else the
//! first `.venv/bin/python` found above the working directory or the executable.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

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
        let s = w
            .to_str()
            .with_context(|| format!("{} is not UTF-8", w.display()))?;
        if s.contains('\n') {
            bail!("{s:?}: a path with a newline cannot be listed");
        }
        text.push_str(s);
        text.push('\n');
    }
    std::fs::write(list, text).with_context(|| format!("writing {}", list.display()))
}

/// Checks that `python` imports `modules`, or says which package and set-up step is missing.
pub(crate) fn check_imports(python: &Path, modules: &str, what: &str) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{what} needs the Python packages {modules}, but {} cannot import them ({}); run \
             deploy/host/setup.sh (it installs tests/reference/requirements*.txt into .venv)",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim(),
        );
    }
    Ok(())
}

/// Runs an embedded measurement script: writes `source` to `work/name`, runs it with `python`
/// and `args`, and returns the bytes of the JSON file it wrote at `work/out_name`. `what` names
/// the tool in errors.
pub(crate) fn run_script(
    python: &Path,
    work: &Path,
    (name, source): (&str, &str),
    args: &[&std::ffi::OsStr],
    out_name: &str,
    what: &str,
) -> Result<Vec<u8>> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let script = work.join(name);
    std::fs::write(&script, source)?;
    let out_json = work.join(out_name);
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .arg("--out")
        .arg(&out_json)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::read(&out_json).with_context(|| format!("reading {}", out_json.display()))
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
    let mut starts = vec![std::env::current_dir()?];
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
    bail!(
        "no Python for the PocketSphinx recognizer: pass --python, set TOLK_PYTHON, or create \
         the project venv (deploy/host/setup.sh); --no-asr skips ASR-BLEU"
    )
}

impl PocketSphinx {
    /// Checks that `python` imports `pocketsphinx`.
    pub fn new(python: PathBuf) -> Result<Self> {
        let out = Command::new(&python)
            .args(["-c", "import pocketsphinx"])
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !out.status.success() {
            bail!(
                "ASR-BLEU needs PocketSphinx, but {} cannot import pocketsphinx ({}); install it \
                 with `{} -m pip install -r tests/reference/requirements.txt`, or pass --no-asr",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                python.display()
            );
        }
        Ok(Self { python, name: None })
    }

    /// Transcribes 16-bit mono 16 kHz WAV files (in order); `work` holds the script and lists.
    pub fn transcribe(&mut self, wavs: &[PathBuf], work: &Path) -> Result<Vec<String>> {
        std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        let list = work.join("wavs.txt");
        write_list(wavs, &list)?;
        let json = run_script(
            &self.python,
            work,
            ("asr_pocketsphinx.py", SCRIPT),
            &["--list".as_ref(), list.as_os_str()],
            "transcripts.json",
            "PocketSphinx recognizer",
        )?;
        let parsed: Output = serde_json::from_slice(&json)
            .with_context(|| format!("parsing {}", work.join("transcripts.json").display()))?;
        if parsed.transcripts.len() != wavs.len() {
            bail!(
                "the recognizer returned {} transcripts for {} files",
                parsed.transcripts.len(),
                wavs.len()
            );
        }
        for (t, w) in parsed.transcripts.iter().zip(wavs) {
            if Path::new(&t.wav) != w.as_path() {
                bail!(
                    "the recognizer answered for {} instead of {}",
                    t.wav,
                    w.display()
                );
            }
        }
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
