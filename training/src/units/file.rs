//! The units file: speech units for every audio file of one or more manifests.
//!
//! JSONL. The first line is a header, `{"tolk_units": 1, "num_units": K, "extractor": "..."}`;
//! every further line is `{"audio": "<path exactly as written in the manifest>", "units": [..]}`
//! with the raw 50 Hz unit sequence (not deduplicated: collapsing repeats is a training option).
//! Unit ids are checked against `num_units` when read, so a model never sees an id outside its
//! vocabulary.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Format version written in the header's `tolk_units` field.
pub const UNITS_FORMAT_VERSION: u32 = 1;

/// Errors reading or writing a units file; content errors name the file and the line (1-based).
#[derive(Debug, thiserror::Error)]
pub enum UnitsFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: empty file, expected a header line {{\"tolk_units\": 1, ...}}")]
    MissingHeader { path: PathBuf },
    #[error("{path}:{line}: not a units header (expected {{\"tolk_units\": 1, \"num_units\": K, \"extractor\": \"...\"}}): {message}")]
    BadHeader {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: not a valid units line: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: audio {audio:?} has unit {unit} at position {position}, outside the vocabulary of {num_units} units")]
    UnitOutOfRange {
        path: PathBuf,
        line: usize,
        audio: String,
        unit: u32,
        position: usize,
        num_units: u32,
    },
    #[error("{path}:{line}: audio {audio:?} appears twice (first on line {first_line})")]
    DuplicateAudio {
        path: PathBuf,
        line: usize,
        audio: String,
        first_line: usize,
    },
    #[error(
        "units table: audio {audio:?} has unit {unit}, outside the vocabulary of {num_units} units"
    )]
    InsertOutOfRange {
        audio: String,
        unit: u32,
        num_units: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    tolk_units: u32,
    num_units: u32,
    extractor: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    audio: std::borrow::Cow<'a, str>,
    units: std::borrow::Cow<'a, [u32]>,
}

/// Units of many audio files, keyed by the audio path as written in the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitsTable {
    /// Vocabulary size: every unit id is `< num_units`.
    pub num_units: u32,
    /// What produced the units, e.g. `mfcc+kmeans16` (free text, for humans and checks).
    pub extractor: String,
    units: HashMap<String, Vec<u32>>,
}

impl UnitsTable {
    pub fn new(num_units: u32, extractor: impl Into<String>) -> Self {
        Self {
            num_units,
            extractor: extractor.into(),
            units: HashMap::new(),
        }
    }

    /// The units of one audio file (the key is the manifest's `audio` or `target_audio` string).
    pub fn get(&self, audio: &str) -> Option<&[u32]> {
        self.units.get(audio).map(Vec::as_slice)
    }

    /// Add (or replace) the units of one audio file; rejects ids outside the vocabulary.
    pub fn insert(
        &mut self,
        audio: impl Into<String>,
        units: Vec<u32>,
    ) -> Result<Option<Vec<u32>>, UnitsFileError> {
        let audio = audio.into();
        if let Some(&unit) = units.iter().find(|&&u| u >= self.num_units) {
            return Err(UnitsFileError::InsertOutOfRange {
                audio,
                unit,
                num_units: self.num_units,
            });
        }
        Ok(self.units.insert(audio, units))
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Audio keys and their units, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u32])> {
        self.units.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Total number of units over all files.
    pub fn total_units(&self) -> usize {
        self.units.values().map(Vec::len).sum()
    }
}

/// Read a units file, checking the header, every unit id and that no audio key repeats.
pub fn read_units(path: &Path) -> Result<UnitsTable, UnitsFileError> {
    let io = |source| UnitsFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let reader = std::io::BufReader::new(file);
    let mut table: Option<UnitsTable> = None;
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let Some(t) = table.as_mut() else {
            let h: Header = serde_json::from_str(&line).map_err(|e| UnitsFileError::BadHeader {
                path: path.to_path_buf(),
                line: line_no,
                message: e.to_string(),
            })?;
            if h.tolk_units != UNITS_FORMAT_VERSION {
                return Err(UnitsFileError::BadHeader {
                    path: path.to_path_buf(),
                    line: line_no,
                    message: format!(
                        "format version {} is not supported (this build reads {UNITS_FORMAT_VERSION})",
                        h.tolk_units
                    ),
                });
            }
            if h.num_units == 0 {
                return Err(UnitsFileError::BadHeader {
                    path: path.to_path_buf(),
                    line: line_no,
                    message: "num_units must be at least 1".into(),
                });
            }
            table = Some(UnitsTable::new(h.num_units, h.extractor));
            continue;
        };
        let l: Line = serde_json::from_str(&line).map_err(|e| UnitsFileError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message: e.to_string(),
        })?;
        if let Some((position, &unit)) = l.units.iter().enumerate().find(|(_, &u)| u >= t.num_units)
        {
            return Err(UnitsFileError::UnitOutOfRange {
                path: path.to_path_buf(),
                line: line_no,
                audio: l.audio.into_owned(),
                unit,
                position,
                num_units: t.num_units,
            });
        }
        let audio = l.audio.into_owned();
        if let Some(&first) = first_line.get(&audio) {
            return Err(UnitsFileError::DuplicateAudio {
                path: path.to_path_buf(),
                line: line_no,
                audio,
                first_line: first,
            });
        }
        first_line.insert(audio.clone(), line_no);
        t.units.insert(audio, l.units.into_owned());
    }
    table.ok_or_else(|| UnitsFileError::MissingHeader {
        path: path.to_path_buf(),
    })
}

/// Write a units file atomically (a temporary file in the same folder, then a rename), lines
/// sorted by audio key so the same table always gives the same bytes.
pub fn write_units(path: &Path, table: &UnitsTable) -> Result<(), UnitsFileError> {
    let io = |source| UnitsFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "units.jsonl".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
        let header = Header {
            tolk_units: UNITS_FORMAT_VERSION,
            num_units: table.num_units,
            extractor: table.extractor.clone(),
        };
        serde_json::to_writer(&mut w, &header)?;
        w.write_all(b"\n")?;
        let mut keys: Vec<&String> = table.units.keys().collect();
        keys.sort();
        for k in keys {
            let line = Line {
                audio: k.as_str().into(),
                units: table.units[k].as_slice().into(),
            };
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")?;
        }
        drop(w.into_inner().map_err(|e| e.into_error())?);
        tolk_config::fsutil::commit_file(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("u.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = UnitsTable::new(16, "mfcc+kmeans16");
        t.insert("audio/a.wav", vec![0, 0, 3, 15, 15, 2]).unwrap();
        t.insert("/abs/é b.wav", vec![]).unwrap();
        t.insert("b.wav", vec![7]).unwrap();
        let p = dir.path().join("units.jsonl");
        write_units(&p, &t).unwrap();
        let back = read_units(&p).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.get("audio/a.wav"), Some(&[0, 0, 3, 15, 15, 2][..]));
        assert_eq!(back.get("missing.wav"), None);
        assert_eq!(back.total_units(), 7);
        // Deterministic bytes, and no temporary file left behind.
        let bytes = std::fs::read(&p).unwrap();
        write_units(&p, &back).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let first = String::from_utf8(bytes).unwrap();
        assert!(
            first.starts_with("{\"tolk_units\":1,\"num_units\":16,"),
            "{first}"
        );
    }

    #[test]
    fn insert_rejects_out_of_range() {
        let mut t = UnitsTable::new(4, "x");
        let e = t.insert("a.wav", vec![1, 4]).unwrap_err();
        assert!(
            matches!(e, UnitsFileError::InsertOutOfRange { unit: 4, .. }),
            "{e}"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn missing_header() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_units(&write(dir.path(), "")).unwrap_err();
        assert!(matches!(e, UnitsFileError::MissingHeader { .. }), "{e}");
        assert!(e.to_string().contains("u.jsonl"), "{e}");
        // A units line where the header should be.
        let e =
            read_units(&write(dir.path(), "{\"audio\":\"a.wav\",\"units\":[1]}\n")).unwrap_err();
        assert!(
            matches!(e, UnitsFileError::BadHeader { line: 1, .. }),
            "{e}"
        );
        let e = read_units(&write(
            dir.path(),
            "{\"tolk_units\":2,\"num_units\":4,\"extractor\":\"x\"}\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn bad_json_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"tolk_units\":1,\"num_units\":4,\"extractor\":\"x\"}\n\
                    {\"audio\":\"a.wav\",\"units\":[1,2]}\n\
                    {\"audio\":\"b.wav\",\"units\":[1,-2]}\n";
        let e = read_units(&write(dir.path(), text)).unwrap_err();
        assert!(matches!(e, UnitsFileError::Json { line: 3, .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("u.jsonl:3:"), "{msg}");
    }

    #[test]
    fn unit_out_of_range_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"tolk_units\":1,\"num_units\":4,\"extractor\":\"x\"}\n\
                    {\"audio\":\"a.wav\",\"units\":[1,2]}\n\
                    \n\
                    {\"audio\":\"b.wav\",\"units\":[3,4]}\n";
        let e = read_units(&write(dir.path(), text)).unwrap_err();
        assert!(
            matches!(
                e,
                UnitsFileError::UnitOutOfRange {
                    line: 4,
                    unit: 4,
                    position: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("u.jsonl:4:"), "{e}");
    }

    #[test]
    fn duplicate_audio_names_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"tolk_units\":1,\"num_units\":4,\"extractor\":\"x\"}\n\
                    {\"audio\":\"a.wav\",\"units\":[1]}\n\
                    {\"audio\":\"b.wav\",\"units\":[2]}\n\
                    {\"audio\":\"a.wav\",\"units\":[3]}\n";
        let e = read_units(&write(dir.path(), text)).unwrap_err();
        assert!(
            matches!(
                e,
                UnitsFileError::DuplicateAudio {
                    line: 4,
                    first_line: 2,
                    ..
                }
            ),
            "{e}"
        );
    }
}
