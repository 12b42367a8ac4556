//! The records of `tolk-train pairs`: `pairs.jsonl`, `utterances.jsonl`, `summary.json`, and
//! the summary of a set of utterance records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tolk_models::translator::Stop;

use super::back_translation::BackFrom;
use super::judging::{Judge, JudgeAgainst};

/// Why decoding a candidate stopped (the `*_stop` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    End,
    MaxTokens,
    CacheFull,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::End => "end",
            Self::MaxTokens => "max-tokens",
            Self::CacheFull => "cache-full",
        }
    }
}

impl From<Stop> for StopReason {
    fn from(s: Stop) -> Self {
        match s {
            Stop::End => Self::End,
            Stop::MaxTokens => Self::MaxTokens,
            Stop::CacheFull => Self::CacheFull,
        }
    }
}

/// Why a candidate cannot be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invalid {
    /// Stopped by `max_target_units` without `<|end|>`.
    MaxTokens,
    /// Stopped by a full cache without `<|end|>`.
    CacheFull,
    /// The back-translation is empty (no text for the text judges, no speech for MCD).
    EmptyBackTranslation,
    /// The back-translation's source units did not fit the cache.
    BackTranslationTooLong,
    /// Judged against the reference: the candidate has no text (text judges) or no speech
    /// (MCD).
    EmptyCandidate,
    /// The judge returned a non-finite value.
    NonFiniteScore,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max-tokens",
            Self::CacheFull => "cache-full",
            Self::EmptyBackTranslation => "empty-back-translation",
            Self::BackTranslationTooLong => "back-translation-too-long",
            Self::EmptyCandidate => "empty-candidate",
            Self::NonFiniteScore => "non-finite-score",
        }
    }

    const ALL: [Invalid; 6] = [
        Self::MaxTokens,
        Self::CacheFull,
        Self::EmptyBackTranslation,
        Self::BackTranslationTooLong,
        Self::EmptyCandidate,
        Self::NonFiniteScore,
    ];
}

/// What became of an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Kept,
    /// Every candidate has the same token ids.
    Identical,
    /// No candidate can be chosen (all invalid).
    NoValidCandidate,
    /// The margin does not exceed `--delta`.
    BelowDelta,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kept => "kept",
            Self::Identical => "identical",
            Self::NoValidCandidate => "no-valid-candidate",
            Self::BelowDelta => "below-delta",
        }
    }

    const DROPS: [Decision; 3] = [Self::Identical, Self::NoValidCandidate, Self::BelowDelta];
}
/// The settings of a run, stored in `summary.json`; shards merge only when these agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairsSettings {
    pub model: String,
    pub manifest: String,
    pub units: String,
    pub direction: String,
    pub judge: Judge,
    pub judged_against: JudgeAgainst,
    pub back_from: BackFrom,
    pub delta: f64,
    pub mcd_worst_db: f64,
    pub candidates: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub seed: u64,
    pub limit: Option<usize>,
    pub transcribe: bool,
}

/// One line of `pairs.jsonl`: TRL's `prompt` / `chosen` / `rejected` strings, their token ids
/// and the scores and metadata of the pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
    pub id: String,
    pub direction: String,
    pub judge: Judge,
    pub judged_against: JudgeAgainst,
    pub source_text: String,
    pub chosen_score: f64,
    pub rejected_score: f64,
    pub margin: f64,
    pub chosen_text: String,
    pub rejected_text: String,
    pub chosen_back: Option<String>,
    pub rejected_back: Option<String>,
    pub chosen_stop: StopReason,
    pub rejected_stop: StopReason,
    pub seed: u64,
}

/// One candidate in `utterances.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// Target text (special tokens skipped).
    pub text: String,
    /// Completion ids (canonical text ids, `<|units|>`, units, `<|end|>` when it ended).
    pub ids: Vec<u32>,
    pub units: usize,
    pub stop: StopReason,
    /// The text phase hit `max_text_tokens` and was switched to units.
    pub text_truncated: bool,
    /// The sampled text ids were not the canonical tokenization of their text.
    pub retokenized: bool,
    /// Back-translated source-language text (None against the reference or when invalid
    /// before back-translation).
    pub back: Option<String>,
    /// The judge's score (the worst of the scale when invalid).
    pub score: f64,
    pub invalid: Option<Invalid>,
}

/// One line of `utterances.jsonl`: every utterance processed, kept or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UtteranceRecord {
    /// Position in the selected entry list (the merge order).
    pub index: usize,
    pub id: String,
    pub seed: u64,
    pub source_text: String,
    /// The source text is a PocketSphinx transcription.
    pub transcribed: bool,
    pub candidates: Vec<CandidateRecord>,
    pub decision: Decision,
    /// Candidate indices of the best and the worst (None when all are identical).
    pub best: Option<usize>,
    pub worst: Option<usize>,
    /// Best-vs-worst margin (>= 0) when compared.
    pub margin: Option<f64>,
    pub seconds: f64,
    /// Wall seconds by stage: sample (the batched candidates), vocode, extract, back-decode,
    /// judge.
    #[serde(default)]
    pub stage_seconds: BTreeMap<String, f64>,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairsSummary {
    #[serde(flatten)]
    pub settings: PairsSettings,
    /// The shards this summary covers (`i/n`), empty for an unsharded run.
    pub shards: Vec<String>,
    pub entries_seen: usize,
    /// Manifest entries not in the direction (or, against the reference, unpaired).
    pub entries_skipped: usize,
    pub candidates_total: usize,
    pub candidate_stops: BTreeMap<String, usize>,
    pub invalid_candidates: BTreeMap<String, usize>,
    pub retokenized_candidates: usize,
    pub transcribed_sources: usize,
    pub pairs_kept: usize,
    pub dropped: BTreeMap<String, usize>,
    /// Mean margin of the kept pairs.
    pub mean_margin: Option<f64>,
    /// Mean margin of every compared utterance (kept or not).
    pub mean_margin_compared: Option<f64>,
    pub mean_chosen_score: Option<f64>,
    pub mean_rejected_score: Option<f64>,
    pub seconds: f64,
    pub utterances_per_second: f64,
    /// Wall seconds by stage, summed over utterances (model loading and transcription aside).
    pub stage_seconds: BTreeMap<String, f64>,
}
fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    (n > 0).then(|| s / n as f64)
}

/// The summary of a set of utterance records.
pub fn summarize(
    settings: &PairsSettings,
    shards: Vec<String>,
    utterances: &[UtteranceRecord],
    entries_skipped: usize,
    seconds: f64,
) -> PairsSummary {
    let mut stops: BTreeMap<String, usize> = [
        StopReason::End,
        StopReason::MaxTokens,
        StopReason::CacheFull,
    ]
    .iter()
    .map(|s| (s.as_str().to_string(), 0))
    .collect();
    let mut invalid: BTreeMap<String, usize> = Invalid::ALL
        .iter()
        .map(|i| (i.as_str().to_string(), 0))
        .collect();
    let mut dropped: BTreeMap<String, usize> = Decision::DROPS
        .iter()
        .map(|d| (d.as_str().to_string(), 0))
        .collect();
    let mut candidates = 0;
    let mut retokenized = 0;
    for u in utterances {
        for c in &u.candidates {
            candidates += 1;
            *stops.entry(c.stop.as_str().to_string()).or_default() += 1;
            if let Some(i) = c.invalid {
                *invalid.entry(i.as_str().to_string()).or_default() += 1;
            }
            retokenized += c.retokenized as usize;
        }
        if u.decision != Decision::Kept {
            *dropped.entry(u.decision.as_str().to_string()).or_default() += 1;
        }
    }
    let kept: Vec<&UtteranceRecord> = utterances
        .iter()
        .filter(|u| u.decision == Decision::Kept)
        .collect();
    let score = |u: &UtteranceRecord, i: Option<usize>| u.candidates[i.unwrap_or(0)].score;
    PairsSummary {
        settings: settings.clone(),
        shards,
        entries_seen: utterances.len(),
        entries_skipped,
        candidates_total: candidates,
        candidate_stops: stops,
        invalid_candidates: invalid,
        retokenized_candidates: retokenized,
        transcribed_sources: utterances.iter().filter(|u| u.transcribed).count(),
        pairs_kept: kept.len(),
        dropped,
        mean_margin: mean(kept.iter().filter_map(|u| u.margin)),
        mean_margin_compared: mean(utterances.iter().filter_map(|u| u.margin)),
        mean_chosen_score: mean(kept.iter().map(|u| score(u, u.best))),
        mean_rejected_score: mean(kept.iter().map(|u| score(u, u.worst))),
        seconds,
        utterances_per_second: if seconds > 0.0 {
            utterances.len() as f64 / seconds
        } else {
            0.0
        },
        stage_seconds: utterances.iter().fold(BTreeMap::new(), |mut acc, u| {
            for (k, v) in &u.stage_seconds {
                *acc.entry(k.clone()).or_default() += v;
            }
            acc
        }),
    }
}
