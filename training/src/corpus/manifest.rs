//! JSONL speech manifests: one utterance per line.
//!
//! Required fields: `id`, `language` (`en`, `fr`, ...), `text` (the transcript of `audio`).
//! Optional: `audio` (path relative to the manifest's folder, or absolute), `duration` (seconds),
//! and for paired (translation) sets `target_language`, `target_text`, `target_audio`,
//! `target_duration`. The synthetic corpus adds `template`, `voice` and `target_voice`. Unknown
//! fields are kept out of the way (ignored), so converted real corpora may carry their own.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub id: String,
    pub language: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_audio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_duration: Option<f64>,
    /// Grammar template the pair came from (synthetic corpus only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Synthesis settings of `audio`, e.g. `en-gb+f3 s160 p45` (synthetic corpus only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_voice: Option<String>,
    /// What was done to `audio` (`tolk-train augment`: silence, gain, noise). Augmented audio is
    /// never a target, so such an entry has no [`ManifestEntry::reversed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmentation: Option<String>,
    /// The target side was spoken again in the kiosk's output voice (`tolk-train revoice`): it
    /// is only ever a target, so such an entry has no [`ManifestEntry::reversed`] either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_target: bool,
    /// Audio that may never be trained on: human recordings, voices whose licence allows test
    /// use only (`tolk-train voices`). Every training command refuses such an entry
    /// ([`refuse_test_only`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_only: bool,
    /// The recording the audio was converted from, and the SHA-256 of its bytes (human sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
}

impl ManifestEntry {
    /// A source-only entry.
    pub fn new(
        id: impl Into<String>,
        language: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            language: language.into(),
            text: text.into(),
            audio: None,
            duration: None,
            target_language: None,
            target_text: None,
            target_audio: None,
            target_duration: None,
            template: None,
            voice: None,
            target_voice: None,
            augmentation: None,
            fixed_target: false,
            test_only: false,
            source_file: None,
            source_sha256: None,
        }
    }

    /// Whether the entry has a target side.
    pub fn is_paired(&self) -> bool {
        self.target_language.is_some()
    }

    /// The same pair in the other direction (source and target sides swapped); `None` for a
    /// source-only entry and for one whose source audio is augmented. The id gets a `-rev`
    /// suffix.
    pub fn reversed(&self) -> Option<Self> {
        if self.augmentation.is_some() || self.fixed_target {
            return None;
        }
        let target_language = self.target_language.clone()?;
        Some(Self {
            id: format!("{}-rev", self.id),
            language: target_language,
            text: self.target_text.clone().unwrap_or_default(),
            audio: self.target_audio.clone(),
            duration: self.target_duration,
            target_language: Some(self.language.clone()),
            target_text: Some(self.text.clone()),
            target_audio: self.audio.clone(),
            target_duration: self.duration,
            template: self.template.clone(),
            voice: self.target_voice.clone(),
            target_voice: self.voice.clone(),
            augmentation: None,
            fixed_target: false,
            test_only: self.test_only,
            // The source recording was the source side; the reversed entry's target.
            source_file: None,
            source_sha256: None,
        })
    }
}

/// A manifest read from disk; audio paths resolve against `dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Absolute (or cwd-relative) path of a manifest-relative audio path.
    pub fn resolve(&self, audio: &str) -> PathBuf {
        resolve(&self.dir, audio)
    }
}

fn resolve(dir: &Path, audio: &str) -> PathBuf {
    let p = Path::new(audio);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Errors reading or writing a manifest; each names the file and, for content, the line.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a valid manifest line: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: entry {id:?} has an empty {field}")]
    EmptyField {
        path: PathBuf,
        line: usize,
        id: String,
        field: &'static str,
    },
    #[error("{path}:{line}: entry {id:?}: {field} file {audio} does not exist")]
    MissingAudio {
        path: PathBuf,
        line: usize,
        id: String,
        field: &'static str,
        audio: PathBuf,
    },
    #[error("{path}:{line}: entry {id:?}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        id: String,
        message: String,
    },
    #[error("{path}: duplicate id {id:?} (lines {first} and {line})")]
    DuplicateId {
        path: PathBuf,
        id: String,
        first: usize,
        line: usize,
    },
}

/// How much [`read_manifest`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Every `audio`/`target_audio` named must exist on disk.
    pub check_audio: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { check_audio: true }
    }
}

/// Reads and validates a JSONL manifest: blank lines are skipped; a line that is not a JSON
/// entry, an empty `id`/`language`/`text` (or target text of a paired entry), a duplicate id, a
/// negative or non-finite duration and (with `check_audio`) a missing audio file are errors
/// naming the file and line.
pub fn read_manifest(
    path: impl AsRef<Path>,
    options: ReadOptions,
) -> Result<Manifest, ManifestError> {
    read(path.as_ref(), options, Transcripts::Required)
}

/// Reads a manifest of possibly unlabelled speech: as [`read_manifest`], except that `text` may
/// be empty, null or missing (read as empty).
pub fn read_unlabelled_manifest(
    path: impl AsRef<Path>,
    options: ReadOptions,
) -> Result<Manifest, ManifestError> {
    read(path.as_ref(), options, Transcripts::Optional)
}

/// Whether every entry must carry its transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transcripts {
    Required,
    Optional,
}

/// One entry of a manifest line; with optional transcripts a null or missing `text` is empty.
fn parse_entry(line: &str, transcripts: Transcripts) -> Result<ManifestEntry, serde_json::Error> {
    if transcripts == Transcripts::Required {
        return serde_json::from_str(line);
    }
    let mut v: serde_json::Value = serde_json::from_str(line)?;
    if let Some(obj) = v.as_object_mut() {
        if obj.get("text").is_none_or(|t| t.is_null()) {
            obj.insert("text".into(), serde_json::Value::String(String::new()));
        }
    }
    serde_json::from_value(v)
}

fn read(
    path: &Path,
    options: ReadOptions,
    transcripts: Transcripts,
) -> Result<Manifest, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut entries = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let e = parse_entry(&line, transcripts).map_err(|err| ManifestError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message: err.to_string(),
        })?;
        validate(path, &dir, line_no, &e, options, transcripts)?;
        if let Some(first) = seen.insert(e.id.clone(), line_no) {
            return Err(ManifestError::DuplicateId {
                path: path.to_path_buf(),
                id: e.id,
                first,
                line: line_no,
            });
        }
        entries.push(e);
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        dir,
        entries,
    })
}

fn validate(
    path: &Path,
    dir: &Path,
    line: usize,
    e: &ManifestEntry,
    options: ReadOptions,
    transcripts: Transcripts,
) -> Result<(), ManifestError> {
    let empty = |field| ManifestError::EmptyField {
        path: path.to_path_buf(),
        line,
        id: e.id.clone(),
        field,
    };
    if e.id.trim().is_empty() {
        return Err(empty("id"));
    }
    if e.language.trim().is_empty() {
        return Err(empty("language"));
    }
    if transcripts == Transcripts::Required && e.text.trim().is_empty() {
        return Err(empty("text"));
    }
    if e.target_language.is_some() {
        if e.target_text.as_deref().is_none_or(|t| t.trim().is_empty()) {
            return Err(empty("target_text"));
        }
    } else if e.target_text.is_some() || e.target_audio.is_some() {
        return Err(ManifestError::Invalid {
            path: path.to_path_buf(),
            line,
            id: e.id.clone(),
            message: "target_text/target_audio given without target_language".into(),
        });
    }
    for (field, d) in [
        ("duration", e.duration),
        ("target_duration", e.target_duration),
    ] {
        if let Some(d) = d {
            if !d.is_finite() || d < 0.0 {
                return Err(ManifestError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    id: e.id.clone(),
                    message: format!("{field} {d} is not a non-negative number of seconds"),
                });
            }
        }
    }
    if options.check_audio {
        for (field, audio) in [("audio", &e.audio), ("target_audio", &e.target_audio)] {
            if let Some(a) = audio {
                let p = resolve(dir, a);
                if !p.is_file() {
                    return Err(ManifestError::MissingAudio {
                        path: path.to_path_buf(),
                        line,
                        id: e.id.clone(),
                        field,
                        audio: p,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Refuses a manifest with a test-only entry for `purpose` (e.g. "SFT training"): held-out human
/// recordings and test-only voices never reach a training set.
pub fn refuse_test_only(manifest: &Manifest, purpose: &str) -> Result<(), ManifestError> {
    match manifest.entries.iter().position(|e| e.test_only) {
        None => Ok(()),
        Some(i) => {
            let e = &manifest.entries[i];
            Err(ManifestError::Invalid {
                path: manifest.path.clone(),
                line: i + 1,
                id: e.id.clone(),
                message: format!(
                    "test-only audio ({}) cannot be used for {purpose}",
                    e.voice.as_deref().unwrap_or("test_only")
                ),
            })
        }
    }
}

/// Writes entries as JSONL (one compact JSON object per line).
pub fn write_manifest(
    path: impl AsRef<Path>,
    entries: &[ManifestEntry],
) -> Result<(), ManifestError> {
    let path = path.as_ref();
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for e in entries {
        let line = serde_json::to_string(e).map_err(|err| ManifestError::Json {
            path: path.to_path_buf(),
            line: 0,
            message: err.to_string(),
        })?;
        writeln!(w, "{line}").map_err(io)?;
    }
    w.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn round_trip_and_reverse() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.wav"), b"x").unwrap();
        std::fs::write(d.path().join("b.wav"), b"x").unwrap();
        let mut e = ManifestEntry::new("u1", "en", "Hello.");
        e.audio = Some("a.wav".into());
        e.duration = Some(0.5);
        e.target_language = Some("fr".into());
        e.target_text = Some("Bonjour.".into());
        e.target_audio = Some("b.wav".into());
        let p = d.path().join("m.jsonl");
        write_manifest(&p, std::slice::from_ref(&e)).unwrap();
        let m = read_manifest(&p, ReadOptions::default()).unwrap();
        assert_eq!(m.entries, vec![e.clone()]);
        assert_eq!(m.resolve("a.wav"), d.path().join("a.wav"));
        let r = e.reversed().unwrap();
        assert_eq!((r.language.as_str(), r.text.as_str()), ("fr", "Bonjour."));
        assert_eq!(r.target_audio.as_deref(), Some("a.wav"));
        assert_eq!(r.reversed().unwrap().text, "Hello.");
    }

    #[test]
    fn missing_manifest_names_the_file() {
        let err = read_manifest("/nonexistent/m.jsonl", ReadOptions::default()).unwrap_err();
        assert!(matches!(err, ManifestError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/m.jsonl"), "{err}");
    }

    #[test]
    fn bad_json_names_the_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "m.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"Hi.\"}\n\n{\"id\": \"b\", oops\n",
        );
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, ManifestError::Json { line: 3, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("m.jsonl:3"), "{err}");
        // A missing required field is also a JSON error on its line.
        let p = write(d.path(), "n.jsonl", "{\"id\":\"a\",\"language\":\"en\"}\n");
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("missing field `text`"), "{err}");
    }

    #[test]
    fn unlabelled_manifests_allow_empty_or_missing_text_only() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "u.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"\"}\n{\"id\":\"b\",\"language\":\"en\"}\n{\"id\":\"c\",\"language\":\"en\",\"text\":null}\n",
        );
        let m = read_unlabelled_manifest(&p, ReadOptions { check_audio: false }).unwrap();
        assert_eq!(m.entries.len(), 3);
        assert!(m.entries.iter().all(|e| e.text.is_empty()));
        assert!(read_manifest(&p, ReadOptions { check_audio: false }).is_err());
        // The other checks still hold: an empty language, a duplicate id.
        let p = write(d.path(), "l.jsonl", "{\"id\":\"a\",\"language\":\" \"}\n");
        let err = read_unlabelled_manifest(&p, ReadOptions { check_audio: false }).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::EmptyField {
                    field: "language",
                    ..
                }
            ),
            "{err:?}"
        );
        let p = write(
            d.path(),
            "d.jsonl",
            "{\"id\":\"a\",\"language\":\"en\"}\n{\"id\":\"a\",\"language\":\"en\"}\n",
        );
        let err = read_unlabelled_manifest(&p, ReadOptions { check_audio: false }).unwrap_err();
        assert!(
            matches!(err, ManifestError::DuplicateId { line: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn empty_transcripts_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "m.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"Hi.\"}\n{\"id\":\"b\",\"language\":\"en\",\"text\":\"  \"}\n",
        );
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, ManifestError::EmptyField { line: 2, field: "text", ref id, .. } if id == "b"),
            "{err:?}"
        );
        let p = write(
            d.path(),
            "t.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"Hi.\",\"target_language\":\"fr\",\"target_text\":\"\"}\n",
        );
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::EmptyField {
                    field: "target_text",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_audio_duplicates_and_bad_durations() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "m.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"Hi.\",\"audio\":\"gone.wav\"}\n",
        );
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(
            matches!(err, ManifestError::MissingAudio { line: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("gone.wav"), "{err}");
        assert!(read_manifest(&p, ReadOptions { check_audio: false }).is_ok());
        let p = write(
            d.path(),
            "dup.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"Hi.\"}\n{\"id\":\"a\",\"language\":\"en\",\"text\":\"Yo.\"}\n",
        );
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::DuplicateId {
                    first: 1,
                    line: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        let p = write(
            d.path(),
            "neg.jsonl",
            "{\"id\":\"a\",\"language\":\"en\",\"text\":\"Hi.\",\"duration\":-1.0}\n",
        );
        let err = read_manifest(&p, ReadOptions::default()).unwrap_err();
        assert!(matches!(err, ManifestError::Invalid { .. }), "{err:?}");
    }
}
