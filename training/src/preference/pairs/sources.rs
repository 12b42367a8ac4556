//! The source utterances of `tolk-train pairs`: the manifest read allowing unlabelled speech,
//! and the entries usable in a direction.

use std::collections::HashMap;
use std::path::Path;

use tolk_models::translator::Direction;

use super::error::{PairsError, Result};
use super::judging::JudgeAgainst;
use crate::corpus::manifest::{
    read_unlabelled_manifest, refuse_test_only, ManifestEntry, ManifestError, ReadOptions,
};
use crate::eval::{asr, entries_for, file_stem, read_16k, write_16k};
use crate::toolkit::run_dir::io;

/// One selected source utterance.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub(super) index: usize,
    pub(super) entry: ManifestEntry,
}

/// Reads the manifest of source utterances: `text` may be empty or missing (unlabelled speech),
/// and test-only audio is refused.
pub(super) fn read_sources_manifest(path: &Path) -> Result<Vec<ManifestEntry>, ManifestError> {
    let manifest = read_unlabelled_manifest(path, ReadOptions { check_audio: false })?;
    refuse_test_only(&manifest, "preference pairs")?;
    Ok(manifest.entries)
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

/// The transcripts (by selection index) of the `sources` without text, recognized by
/// PocketSphinx in `work` when `transcribe` allows it; English speech only.
pub(super) fn transcribe_sources(
    sources: &[Source],
    manifest_path: &Path,
    transcribe: bool,
    python: Option<&Path>,
    work: &Path,
) -> Result<HashMap<usize, String>> {
    let untranscribed: Vec<&Source> = sources
        .iter()
        .filter(|s| s.entry.text.trim().is_empty())
        .collect();
    let mut transcripts = HashMap::new();
    let Some(first) = untranscribed.first() else {
        return Ok(transcripts);
    };
    if !transcribe {
        return Err(PairsError::NoText(first.entry.id.clone()));
    }
    if let Some(s) = untranscribed.iter().find(|s| s.entry.language != "en") {
        return Err(PairsError::NotEnglish {
            id: s.entry.id.clone(),
            language: s.entry.language.clone(),
        });
    }
    let wav_dir = work.join("source");
    std::fs::create_dir_all(&wav_dir).map_err(io(&wav_dir))?;
    let mut wavs = Vec::new();
    for s in &untranscribed {
        let id = &s.entry.id;
        let a = s
            .entry
            .audio
            .as_deref()
            .ok_or_else(|| PairsError::NoAudioToTranscribe(id.clone()))?;
        let p = manifest_path.parent().unwrap_or(Path::new("")).join(a);
        let pcm = read_16k(&p).map_err(|source| PairsError::Audio {
            id: id.clone(),
            source: Box::new(source),
        })?;
        let w = wav_dir.join(format!("{}.wav", file_stem(id)));
        write_16k(&w, &pcm).map_err(PairsError::transcribe)?;
        wavs.push(w);
    }
    let python = asr::find_python(python).map_err(PairsError::transcribe)?;
    let mut rec = asr::PocketSphinx::new(python).map_err(PairsError::transcribe)?;
    let texts = rec
        .transcribe(&wavs, work)
        .map_err(PairsError::transcribe)?;
    for (s, t) in untranscribed.iter().zip(texts) {
        transcripts.insert(s.index, t);
    }
    Ok(transcripts)
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
