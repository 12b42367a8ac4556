//! The source utterances of `tolk-train pairs`: the manifest read allowing unlabelled speech,
//! and the entries usable in a direction.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};
use tolk_models::translator::Direction;

use super::judging::JudgeAgainst;
use crate::corpus::manifest::{ManifestEntry, ManifestError};
use crate::eval::entries_for;

/// One selected source utterance.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) index: usize,
    pub(super) entry: ManifestEntry,
}

/// Reads a manifest allowing an empty or missing `text` (unlabelled speech); other fields as
/// `corpus::manifest` requires (non-empty `id` and `language`, unique ids).
pub(super) fn read_sources_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut entries = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ManifestError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let mut v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        if obj.get("text").is_none_or(|t| t.is_null()) {
            obj.insert("text".into(), serde_json::Value::String(String::new()));
        }
        let e: ManifestEntry = serde_json::from_value(v).map_err(|e| bad(e.to_string()))?;
        for (field, value) in [("id", &e.id), ("language", &e.language)] {
            if value.trim().is_empty() {
                return Err(ManifestError::EmptyField {
                    path: path.to_path_buf(),
                    line: line_no,
                    id: e.id.clone(),
                    field,
                }
                .into());
            }
        }
        if let Some(first) = seen.insert(e.id.clone(), line_no) {
            return Err(ManifestError::DuplicateId {
                path: path.to_path_buf(),
                id: e.id,
                first,
                line: line_no,
            }
            .into());
        }
        if e.test_only {
            return Err(ManifestError::Invalid {
                path: path.to_path_buf(),
                line: line_no,
                id: e.id,
                message: "test-only audio cannot be a source of preference pairs".into(),
            }
            .into());
        }
        entries.push(e);
    }
    Ok(entries)
}

/// The entries usable as sources in `direction`: against the back-translation, every entry in
/// the source language (a paired entry the other way round is reversed); against the
/// reference, the paired entries of [`entries_for`].
pub(super) fn select(
    entries: &[ManifestEntry],
    direction: Direction,
    against: JudgeAgainst,
) -> (Vec<ManifestEntry>, usize) {
    if against == JudgeAgainst::Reference {
        return entries_for(entries, direction);
    }
    let (src, tgt) = (direction.src().code(), direction.tgt().code());
    let mut out = Vec::new();
    let mut skipped = 0;
    for e in entries {
        let fits = |e: &ManifestEntry| {
            e.language == src && e.target_language.as_deref().is_none_or(|t| t == tgt)
        };
        if fits(e) {
            out.push(e.clone());
        } else if let Some(r) = e.reversed().filter(|r| fits(r) && r.is_paired()) {
            out.push(r);
        } else {
            skipped += 1;
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_of_sources() {
        let mono = ManifestEntry::new("m1", "en", "Hello.");
        let fr = ManifestEntry::new("m2", "fr", "Bonjour.");
        let mut paired = ManifestEntry::new("p1", "fr", "Merci.");
        paired.target_language = Some("en".into());
        paired.target_text = Some("Thank you.".into());
        paired.audio = Some("a.wav".into());
        paired.target_audio = Some("b.wav".into());
        let all = [mono, fr, paired];
        let (s, skipped) = select(&all, Direction::EnFr, JudgeAgainst::BackTranslation);
        assert_eq!(
            s.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["m1", "p1-rev"]
        );
        assert_eq!(skipped, 1);
        assert_eq!(s[1].audio.as_deref(), Some("b.wav"));
        let (s, skipped) = select(&all, Direction::EnFr, JudgeAgainst::Reference);
        assert_eq!((s.len(), skipped), (1, 2));
        assert_eq!(s[0].target_text.as_deref(), Some("Merci."));
    }
}
