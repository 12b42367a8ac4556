//! `tolk-train pairs --merge`: shard folders merged into what one unsharded run gives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{PairsError, Result};
use super::output::write_outputs;
use super::records::{
    summarize, Decision, PairRecord, PairsSettings, PairsSummary, UtteranceRecord,
};
use super::shards::Shard;
use crate::toolkit::run_dir::io;

/// The records of a JSONL file, each with its line as written (blank lines skipped).
fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<(T, String)>> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let record = serde_json::from_str(l).map_err(|source| PairsError::Json {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?;
            Ok((record, l.to_string()))
        })
        .collect()
}

/// Merges shard folders into `out`: utterances and pairs in entry order, the summary and the
/// plot rebuilt. The shards must come from the same settings and must not overlap.
pub fn merge_shards(dirs: &[PathBuf], out: &Path) -> Result<PairsSummary> {
    let mut settings: Option<(PairsSettings, PathBuf)> = None;
    let mut shards = Vec::new();
    let mut utterances: Vec<UtteranceRecord> = Vec::new();
    let mut pair_lines: HashMap<String, String> = HashMap::new();
    let (mut seconds, mut skipped) = (0.0, None);
    for d in dirs {
        let spath = d.join("summary.json");
        let text =
            std::fs::read_to_string(&spath).map_err(|source| PairsError::NotAPairsFolder {
                path: spath.clone(),
                source,
            })?;
        let s: PairsSummary = serde_json::from_str(&text).map_err(|source| PairsError::Parse {
            path: spath.clone(),
            source,
        })?;
        match &settings {
            None => settings = Some((s.settings.clone(), d.clone())),
            Some((first, from)) if *first != s.settings => {
                return Err(PairsError::OtherSettings {
                    dir: d.clone(),
                    first_dir: from.clone(),
                    settings: Box::new(s.settings),
                    first: Box::new(first.clone()),
                })
            }
            Some(_) => {}
        }
        if s.shards.is_empty() {
            return Err(PairsError::Unsharded(d.clone()));
        }
        for sh in &s.shards {
            if shards.contains(sh) {
                return Err(PairsError::DuplicateShard {
                    shard: sh.clone(),
                    dir: d.clone(),
                });
            }
            shards.push(sh.clone());
        }
        seconds += s.seconds;
        skipped = Some(s.entries_skipped);
        utterances.extend(
            read_jsonl::<UtteranceRecord>(&d.join("utterances.jsonl"))?
                .into_iter()
                .map(|(u, _)| u),
        );
        let ppath = d.join("pairs.jsonl");
        for (p, line) in read_jsonl::<PairRecord>(&ppath)? {
            if pair_lines.insert(p.id.clone(), line).is_some() {
                return Err(PairsError::DuplicatePair {
                    id: p.id,
                    path: ppath,
                });
            }
        }
    }
    let (settings, _) = settings.ok_or(PairsError::NothingToMerge)?;
    let counts: Vec<usize> = shards
        .iter()
        .filter_map(|s| s.parse::<Shard>().ok().map(|s| s.count))
        .collect();
    if let Some(&n) = counts.first() {
        if counts.iter().any(|&c| c != n) {
            return Err(PairsError::MixedSplits(shards));
        }
        if shards.len() != n {
            tracing::warn!("merging {} of {n} shards: {shards:?}", shards.len());
        }
    }
    utterances.sort_by_key(|u| u.index);
    if let Some(w) = utterances.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(PairsError::EntryInTwoShards {
            index: w[0].index,
            id: w[0].id.clone(),
        });
    }
    let mut pairs_text = String::new();
    for u in &utterances {
        match (u.decision == Decision::Kept, pair_lines.remove(&u.id)) {
            (true, Some(line)) => {
                pairs_text.push_str(&line);
                pairs_text.push('\n');
            }
            (true, None) => return Err(PairsError::KeptWithoutPair(u.id.clone())),
            (false, Some(_)) => return Err(PairsError::DroppedWithPair(u.id.clone())),
            (false, None) => {}
        }
    }
    if let Some(id) = pair_lines.keys().next() {
        return Err(PairsError::PairWithoutUtterance(id.clone()));
    }
    shards.sort_by_key(|s| s.parse::<Shard>().map(|s| s.index).unwrap_or(usize::MAX));
    let summary = summarize(
        &settings,
        shards,
        &utterances,
        skipped.unwrap_or(0),
        seconds,
    );
    write_outputs(out, &utterances, &pairs_text, &summary)?;
    Ok(summary)
}
