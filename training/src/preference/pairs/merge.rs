//! `tolk-train pairs --merge`: shard folders merged into what one unsharded run gives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::output::write_outputs;
use super::records::{
    summarize, Decision, PairRecord, PairsSettings, PairsSummary, UtteranceRecord,
};
use super::shards::Shard;

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
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
        let s: PairsSummary = serde_json::from_str(
            &std::fs::read_to_string(&spath)
                .with_context(|| format!("reading {} (not a pairs folder?)", spath.display()))?,
        )
        .with_context(|| format!("parsing {}", spath.display()))?;
        match &settings {
            None => settings = Some((s.settings.clone(), d.clone())),
            Some((first, from)) if *first != s.settings => bail!(
                "{} was made with other settings than {}: {:?} vs {:?}",
                d.display(),
                from.display(),
                s.settings,
                first
            ),
            Some(_) => {}
        }
        if s.shards.is_empty() {
            bail!(
                "{} is an unsharded run: nothing to merge it with",
                d.display()
            );
        }
        for sh in &s.shards {
            if shards.contains(sh) {
                bail!("shard {sh} appears twice (again in {})", d.display());
            }
            shards.push(sh.clone());
        }
        seconds += s.seconds;
        skipped = Some(s.entries_skipped);
        utterances.extend(read_jsonl::<UtteranceRecord>(&d.join("utterances.jsonl"))?);
        let ppath = d.join("pairs.jsonl");
        let text = std::fs::read_to_string(&ppath)
            .with_context(|| format!("reading {}", ppath.display()))?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let p: PairRecord = serde_json::from_str(line)
                .with_context(|| format!("{}:{}", ppath.display(), i + 1))?;
            if pair_lines.insert(p.id.clone(), line.to_string()).is_some() {
                bail!("pair {} appears twice (again in {})", p.id, ppath.display());
            }
        }
    }
    let (settings, _) = settings.context("no shard folders to merge")?;
    let counts: Vec<usize> = shards
        .iter()
        .filter_map(|s| s.parse::<Shard>().ok().map(|s| s.count))
        .collect();
    if let Some(&n) = counts.first() {
        if counts.iter().any(|&c| c != n) {
            bail!("shards of different splits cannot be merged: {shards:?}");
        }
        if shards.len() != n {
            tracing::warn!("merging {} of {n} shards: {shards:?}", shards.len());
        }
    }
    utterances.sort_by_key(|u| u.index);
    if let Some(w) = utterances.windows(2).find(|w| w[0].index == w[1].index) {
        bail!("entry {} ({}) is in two shards", w[0].index, w[0].id);
    }
    let mut pairs_text = String::new();
    for u in &utterances {
        match (u.decision == Decision::Kept, pair_lines.remove(&u.id)) {
            (true, Some(line)) => {
                pairs_text.push_str(&line);
                pairs_text.push('\n');
            }
            (true, None) => bail!("utterance {} was kept but has no pair line", u.id),
            (false, Some(_)) => bail!("utterance {} was dropped but has a pair line", u.id),
            (false, None) => {}
        }
    }
    if let Some(id) = pair_lines.keys().next() {
        bail!("pair {id} has no utterance record");
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
