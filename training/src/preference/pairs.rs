//! `tolk-train pairs`: preference pairs without humans, by self-sampling and back-translation
//! (PROST-LLM arXiv 2601.16618 section 2.2; `../shared/reference/method.md` section 1 item 2).
//!
//! For every source utterance of a manifest (its units from a units file):
//!
//! 1. **Candidates**: `--candidates` chain-of-modality translations (target text, then target
//!    units) sampled in one batch ([`Translator::translate_units_batch`]) with temperature /
//!    top-k / top-p; candidate `k` draws from a ChaCha8 RNG seeded by [`candidate_seed`] of the
//!    utterance seed ([`utterance_seed`]: the run's `--seed` mixed with the utterance id), so a
//!    result never depends on sharding or order.
//! 2. **Back-translation** (`--judge-against back-translation`): the candidate's target units
//!    are vocoded ([`Translator::synthesize`]), source-side units are re-extracted from that
//!    speech ([`Translator::extract_units`]) (`--back-from units` feeds the candidate units
//!    directly), and the same model translates them back greedily: the text phase of the
//!    chain-of-modality prompt (mode S2TT) for the text judges; for MCD the whole reverse chain,
//!    whose units are vocoded and compared with the source audio.
//! 3. **Judge**: BLEU/100 (sacreBLEU `sentence_bleu`), METEOR (nltk, no WordNet), WER (jiwer,
//!    capped at 1) of the back-translation against the source text, or MCD (dB) of the
//!    back-translated speech against the source speech; `--judge-against reference` scores the
//!    candidate itself against the manifest's `target_text` / `target_audio` (paired S2ST data).
//!    The source text is the manifest's `text`; an entry without one is transcribed with
//!    PocketSphinx (English) under `--transcribe`, and then both sides are normalized as for
//!    ASR-BLEU before scoring.
//! 4. **Pairs**: candidates are ranked best first (higher BLEU/METEOR, lower WER/MCD); a
//!    candidate that never emitted `<|end|>` (length cap, full cache) or whose back-translation
//!    (or, against the reference, own text) is empty is *invalid*: it gets the worst score of
//!    the scale (0 for BLEU/METEOR, 1 for WER, `--mcd-worst` dB for MCD) and ranks below every
//!    valid candidate, so it can be rejected but never chosen. The best and the worst make a
//!    pair when they are not identical, the best is valid and the margin (>= 0, in the judge's
//!    units) exceeds `--delta`. Every drop is counted by reason.
//!
//! Output (`--out`): `pairs.jsonl` (the shared format of `/work/notes/issue7-plan.md`: TRL's
//! `prompt` / `chosen` / `rejected` strings, the token ids the trainer uses, scores and
//! metadata), `utterances.jsonl` (every utterance with all its candidates, for merging and
//! inspection), `summary.json` and `margins.png`. `--shard i/n` processes entries `i, i+n, ...`
//! of the selected list; `--merge SHARD_DIR...` concatenates shard folders in entry order and
//! rebuilds the summary and the plot, giving what one unsharded run gives.
//!
//! Token strings: the text part of a completion is stored in its canonical tokenization
//! (`encode(decode(ids))`; a sampled non-canonical split of the same text is re-split, counted
//! as `retokenized_candidates`), so that tokenizing `prompt`, `chosen` and `rejected` with the
//! translator's `tokenizer.json` (no added special tokens) gives exactly `prompt_ids`,
//! `chosen_ids` and `rejected_ids` (`tests/reference/pairs_trl.py` checks it, also through
//! TRL's DPO dataset processing).

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use tolk_models::audio::features::MfccConfig;
use tolk_models::audio::wav::{write_wav, WavFormat};
use tolk_models::device::{available_device, parse_dtype};
use tolk_models::prompt::{PromptFormat, SpecialToken, Task};
use tolk_models::sampling::{Sampler, SamplingConfig};
use tolk_models::translator::{Direction, Mode, Stop, TranslationOutput, Translator};
use tolk_models::ModelError;

use super::pairs_plot::write_margin_plot;
use crate::corpus::manifest::{ManifestEntry, ManifestError};
use crate::eval::{asr, entries_for, file_stem, read_16k};
use crate::metrics::{bleu, mcd, meteor, wer};
use crate::units::{read_units, UnitsTable};

/// What scores a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Judge {
    /// Sentence BLEU / 100 (sacreBLEU defaults, effective order); higher is better.
    Bleu,
    /// Sentence METEOR (nltk, exact + stem); higher is better.
    Meteor,
    /// Word error rate (jiwer), capped at 1; lower is better.
    Wer,
    /// Mel-cepstral distortion in dB (DTW), capped at `--mcd-worst`; lower is better.
    Mcd,
}

impl Judge {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bleu => "bleu",
            Self::Meteor => "meteor",
            Self::Wer => "wer",
            Self::Mcd => "mcd",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Bleu | Self::Meteor)
    }

    /// The worst value of the judge's scale: the score of an invalid candidate.
    pub fn worst(self, mcd_worst: f64) -> f64 {
        match self {
            Self::Bleu | Self::Meteor => 0.0,
            Self::Wer => 1.0,
            Self::Mcd => mcd_worst,
        }
    }

    /// The text score of `hypothesis` against `reference` (not for MCD).
    pub fn text_score(self, hypothesis: &str, reference: &str) -> f64 {
        match self {
            Self::Bleu => bleu::sentence_bleu(hypothesis, reference).score / 100.0,
            Self::Meteor => meteor::sentence_meteor(hypothesis, reference),
            Self::Wer => wer::sentence_counts(hypothesis, reference).wer().min(1.0),
            Self::Mcd => f64::NAN,
        }
    }

    /// `a - b` oriented so that a positive value means `a` is better.
    pub fn advantage(self, a: f64, b: f64) -> f64 {
        if self.higher_is_better() {
            a - b
        } else {
            b - a
        }
    }
}

/// What the candidates are scored against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeAgainst {
    /// The candidate translated back to the source language, against the source.
    BackTranslation,
    /// The candidate itself against the manifest's target side (paired S2ST data).
    Reference,
}

/// What the back-translation starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackFrom {
    /// The candidate's units vocoded, then source-side units re-extracted from that speech.
    Speech,
    /// The candidate's units fed to the reverse direction as they are.
    Units,
}

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

/// `i/n`: entries `i, i + n, i + 2n, ...` of the selected list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard `{s}` is not i/n (for example 0/4)"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("shard `{s}`: `{i}` is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("shard `{s}`: `{n}` is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard `{s}`: need 0 <= i < n"));
        }
        Ok(Self { index, count })
    }
}

fn parse_direction(s: &str) -> std::result::Result<Direction, String> {
    Direction::parse(s).map_err(|e| e.to_string())
}

/// Arguments of `tolk-train pairs`.
#[derive(Debug, Clone, clap::Args)]
pub struct PairsArgs {
    /// Translator folder (a chain-of-modality model translating both ways).
    #[arg(long, required_unless_present = "merge")]
    pub model: Option<PathBuf>,
    /// JSONL manifest of source utterances (monolingual, or paired for --judge-against
    /// reference); `text` may be empty with --transcribe.
    #[arg(long, required_unless_present = "merge")]
    pub manifest: Option<PathBuf>,
    /// Units file covering the manifest's `audio` (tolk-train units).
    #[arg(long, required_unless_present = "merge")]
    pub units: Option<PathBuf>,
    /// en-fr or fr-en (source -> target of the candidates).
    #[arg(long, value_parser = parse_direction, required_unless_present = "merge")]
    pub direction: Option<Direction>,
    /// Output folder (pairs.jsonl, utterances.jsonl, summary.json, margins.png).
    #[arg(long)]
    pub out: PathBuf,
    /// Candidates sampled per utterance (the best is paired with the worst).
    #[arg(long, default_value_t = 2)]
    pub candidates: usize,
    /// Sampling temperature (0 is greedy: every candidate identical).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus (top-p) cut, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Top-k cut (0: none).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Run seed; each utterance's sampling seed mixes it with the utterance id.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The metric judging candidates: bleu (BLEU/100), meteor, wer (capped at 1), mcd (dB).
    #[arg(long, value_enum, default_value_t = Judge::Bleu)]
    pub judge: Judge,
    /// back-translation (monolingual speech) or reference (the manifest's target side).
    #[arg(long, value_enum, default_value_t = JudgeAgainst::BackTranslation)]
    pub judge_against: JudgeAgainst,
    /// Back-translate from the candidate's vocoded speech or from its units.
    #[arg(long, value_enum, default_value_t = BackFrom::Speech)]
    pub back_from: BackFrom,
    /// Keep a pair when its margin exceeds delta: on the 0-1 scale for bleu, meteor and wer
    /// (BLEU/100), in dB for mcd.
    #[arg(long, default_value_t = 0.1)]
    pub delta: f64,
    /// MCD judge: the score, in dB, of an invalid candidate and the cap of every MCD score
    /// (Kaldi-MFCC MCDs of the demo model are around 300 dB).
    #[arg(long, default_value_t = 1000.0)]
    pub mcd_worst: f64,
    /// Transcribe sources without text with PocketSphinx (English only).
    #[arg(long)]
    pub transcribe: bool,
    /// Python with pocketsphinx for --transcribe (default: $TOLK_PYTHON, else the .venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Process shard i of n (entries i, i+n, ...); merge the shard folders with --merge.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Use the first N entries of the direction only (before sharding).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Intra-op threads of libtorch.
    #[arg(long)]
    pub threads: Option<i32>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Merge these shard folders into --out instead of generating.
    #[arg(long, num_args = 1.., value_name = "SHARD_DIR")]
    pub merge: Vec<PathBuf>,
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

/// One line of `pairs.jsonl` (format of `/work/notes/issue7-plan.md`).
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

/// The seed of an utterance: FNV-1a of its id mixed with the run seed by SplitMix64, cut to
/// 53 bits (exact in any JSON reader).
pub fn utterance_seed(seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(seed ^ splitmix64(h)) & ((1 << 53) - 1)
}

/// The sampler seed of candidate `k` of an utterance.
pub fn candidate_seed(utterance_seed: u64, k: usize) -> u64 {
    splitmix64(utterance_seed.wrapping_add((k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn reverse(d: Direction) -> Direction {
    match d {
        Direction::EnFr => Direction::FrEn,
        Direction::FrEn => Direction::EnFr,
    }
}

/// One selected source utterance.
#[derive(Debug, Clone)]
struct Source {
    index: usize,
    entry: ManifestEntry,
}

/// Reads a manifest allowing an empty or missing `text` (unlabelled speech); other fields as
/// `corpus::manifest` requires (non-empty `id` and `language`, unique ids).
fn read_sources_manifest(path: &Path) -> Result<Vec<ManifestEntry>> {
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
fn select(
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

/// Everything one utterance needs.
struct Ctx<'a> {
    tr: &'a Translator,
    settings: &'a PairsSettings,
    direction: Direction,
    manifest_dir: PathBuf,
    table: &'a UnitsTable,
    units_path: &'a Path,
    /// Seconds per stage of the current utterance.
    stages: std::cell::RefCell<BTreeMap<String, f64>>,
}

impl Ctx<'_> {
    /// Runs `f`, adding its wall time to `stage`.
    fn timed<T>(&self, stage: &str, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        *self
            .stages
            .borrow_mut()
            .entry(stage.to_string())
            .or_default() += t0.elapsed().as_secs_f64();
        out
    }
}

/// The completion ids of a candidate (canonical text ids) and whether the text was re-split.
fn completion_ids(tr: &Translator, out: &TranslationOutput) -> Result<(Vec<u32>, bool)> {
    let f: &PromptFormat = tr.format();
    let tok = tr.tokenizer();
    let mut text_ids = tok.encode(&tok.decode(&out.text_ids, false)?, false)?;
    if text_ids.iter().any(|&t| t >= f.text_vocab) {
        // The text spells an added token: keep the ids as sampled.
        text_ids = out.text_ids.clone();
    }
    let retokenized = text_ids != out.text_ids;
    let ids = if out.stop == Stop::End {
        f.target(Task::ChainOfModality, &text_ids, &out.units)?
    } else {
        let mut ids = text_ids;
        // Stopped by a cap: the ids as generated, without <|end|>. A chain stopped on the
        // unit cap always reached the unit phase; one stopped by the cache without units is
        // taken to have stopped in its text phase.
        if out.stop == Stop::MaxTokens || !out.units.is_empty() {
            ids.push(f.id(SpecialToken::Units));
            for &u in &out.units {
                ids.push(f.unit_id(u)?);
            }
        }
        ids
    };
    Ok((ids, retokenized))
}

/// The reverse decode of a candidate: its text and (MCD) its speech in the source language.
enum Back {
    Done { text: String, speech: Vec<f32> },
    Empty,
    TooLong,
}

fn back_translate(ctx: &Ctx<'_>, out: &TranslationOutput) -> Result<Back> {
    let _span = tracing::debug_span!("back_translate", units = out.units.len()).entered();
    let tr = ctx.tr;
    let src_side: Vec<u32> = match ctx.settings.back_from {
        BackFrom::Units => out.units.clone(),
        BackFrom::Speech => {
            if out.units.is_empty() {
                Vec::new()
            } else {
                let pcm = ctx.timed("vocode", || tr.synthesize(&out.units, ctx.direction.tgt()))?;
                ctx.timed("extract", || tr.extract_units(&pcm))?
            }
        }
    };
    if src_side.is_empty() {
        return Ok(Back::Empty);
    }
    let mcd = ctx.settings.judge == Judge::Mcd;
    let mode = if mcd {
        Mode::ChainOfModality
    } else {
        Mode::S2tt
    };
    let back = match ctx.timed("back-decode", || {
        tr.translate_units(&src_side, reverse(ctx.direction), mode)
    }) {
        Ok(b) => b,
        Err(ModelError::CacheFull { .. }) => return Ok(Back::TooLong),
        Err(e) => return Err(e.into()),
    };
    let speech = if mcd && !back.units.is_empty() {
        ctx.timed("vocode", || tr.synthesize(&back.units, ctx.direction.src()))?
    } else {
        Vec::new()
    };
    if (mcd && speech.is_empty()) || (!mcd && back.text.trim().is_empty()) {
        return Ok(Back::Empty);
    }
    Ok(Back::Done {
        text: back.text,
        speech,
    })
}

/// The MCD of `speech` against `reference`, or None when one is shorter than a frame.
fn mcd_score(reference: &[f32], speech: &[f32]) -> Option<f64> {
    match mcd::mcd_from_audio(reference, speech, MfccConfig::default()) {
        Ok(m) => Some(m.mcd),
        Err(e) => {
            tracing::warn!("no MCD: {e}");
            None
        }
    }
}

/// Scores one candidate.
fn score_candidate(
    ctx: &Ctx<'_>,
    out: &TranslationOutput,
    source_text: &str,
    normalize: bool,
    reference_audio: Option<&[f32]>,
    entry: &ManifestEntry,
) -> Result<CandidateRecord> {
    let s = ctx.settings;
    let judge = s.judge;
    let (ids, retokenized) = completion_ids(ctx.tr, out)?;
    let mut record = CandidateRecord {
        text: out.text.clone(),
        ids,
        units: out.units.len(),
        stop: out.stop.into(),
        text_truncated: out.text_truncated,
        retokenized,
        back: None,
        score: judge.worst(s.mcd_worst_db),
        invalid: None,
    };
    let norm = |t: &str| {
        if normalize {
            asr::normalize_for_asr_bleu(t)
        } else {
            t.to_string()
        }
    };
    let invalid = match out.stop {
        Stop::MaxTokens => Some(Invalid::MaxTokens),
        Stop::CacheFull => Some(Invalid::CacheFull),
        Stop::End => None,
    };
    let score: std::result::Result<f64, Invalid> = if let Some(why) = invalid {
        Err(why)
    } else {
        match s.judged_against {
            JudgeAgainst::Reference => {
                let target = entry.target_text.as_deref().unwrap_or_default();
                if judge == Judge::Mcd {
                    let reference = reference_audio.unwrap_or_default();
                    if out.units.is_empty() {
                        Err(Invalid::EmptyCandidate)
                    } else {
                        let speech = ctx.timed("vocode", || {
                            ctx.tr.synthesize(&out.units, ctx.direction.tgt())
                        })?;
                        ctx.timed("judge", || mcd_score(reference, &speech))
                            .ok_or(Invalid::EmptyCandidate)
                    }
                } else if out.text.trim().is_empty() {
                    Err(Invalid::EmptyCandidate)
                } else {
                    Ok(ctx.timed("judge", || judge.text_score(&out.text, target)))
                }
            }
            JudgeAgainst::BackTranslation => match back_translate(ctx, out)? {
                Back::Empty => Err(Invalid::EmptyBackTranslation),
                Back::TooLong => Err(Invalid::BackTranslationTooLong),
                Back::Done { text, speech } => {
                    record.back = Some(text.clone());
                    if judge == Judge::Mcd {
                        let reference = reference_audio.unwrap_or_default();
                        ctx.timed("judge", || mcd_score(reference, &speech))
                            .ok_or(Invalid::EmptyBackTranslation)
                    } else {
                        Ok(ctx.timed("judge", || {
                            judge.text_score(&norm(&text), &norm(source_text))
                        }))
                    }
                }
            },
        }
    };
    match score {
        Ok(v) if v.is_finite() => {
            record.score = if judge == Judge::Mcd {
                v.min(s.mcd_worst_db)
            } else {
                v
            };
        }
        Ok(_) => record.invalid = Some(Invalid::NonFiniteScore),
        Err(why) => record.invalid = Some(why),
    }
    Ok(record)
}

/// Ranks candidates best first (valid before invalid, then by score, then by index) and
/// decides on the pair.
fn decide(
    judge: Judge,
    delta: f64,
    cands: &[CandidateRecord],
) -> (Decision, Option<usize>, Option<usize>, Option<f64>) {
    if cands.windows(2).all(|w| w[0].ids == w[1].ids) {
        return (Decision::Identical, None, None, None);
    }
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&cands[a], &cands[b]);
        ca.invalid
            .is_some()
            .cmp(&cb.invalid.is_some())
            .then_with(|| {
                // Better first.
                judge
                    .advantage(cb.score, ca.score)
                    .partial_cmp(&0.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .then(a.cmp(&b))
    });
    let (best, worst) = (order[0], order[order.len() - 1]);
    let margin = judge
        .advantage(cands[best].score, cands[worst].score)
        .max(0.0);
    let decision = if cands[best].invalid.is_some() {
        Decision::NoValidCandidate
    } else if margin > delta {
        Decision::Kept
    } else {
        Decision::BelowDelta
    };
    (decision, Some(best), Some(worst), Some(margin))
}

/// Processes one utterance: its record and, when kept, its pair.
fn process(
    ctx: &Ctx<'_>,
    src: &Source,
    source_text: &str,
    transcribed: bool,
) -> Result<(UtteranceRecord, Option<PairRecord>)> {
    let e = &src.entry;
    let _span = tracing::info_span!("pairs_utterance", id = %e.id).entered();
    let t0 = Instant::now();
    let s = ctx.settings;
    let tr = ctx.tr;
    let audio = e
        .audio
        .as_deref()
        .with_context(|| format!("entry {}: no audio", e.id))?;
    let units = ctx.table.get(audio).with_context(|| {
        format!(
            "entry {}: {audio} has no units in {}",
            e.id,
            ctx.units_path.display()
        )
    })?;
    let seed = utterance_seed(s.seed, &e.id);
    let mut samplers = (0..s.candidates)
        .map(|k| {
            Sampler::new(SamplingConfig {
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: candidate_seed(seed, k),
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    ctx.stages.borrow_mut().clear();
    let outs = ctx
        .timed("sample", || {
            tr.translate_units_batch(units, ctx.direction, Mode::ChainOfModality, &mut samplers)
        })
        .with_context(|| format!("sampling candidates of entry {}", e.id))?;

    // The audio the MCD judge compares with: the source speech, or the reference target speech.
    let reference_audio = if s.judge == Judge::Mcd {
        let a = match s.judged_against {
            JudgeAgainst::BackTranslation => audio,
            JudgeAgainst::Reference => e
                .target_audio
                .as_deref()
                .with_context(|| format!("entry {}: the MCD judge needs target_audio", e.id))?,
        };
        let p = if Path::new(a).is_absolute() {
            PathBuf::from(a)
        } else {
            ctx.manifest_dir.join(a)
        };
        Some(read_16k(&p).with_context(|| format!("entry {}", e.id))?)
    } else {
        None
    };
    let mut cands = Vec::with_capacity(outs.len());
    for out in &outs {
        let c = score_candidate(
            ctx,
            out,
            source_text,
            transcribed,
            reference_audio.as_deref(),
            e,
        )
        .with_context(|| format!("judging a candidate of entry {}", e.id))?;
        cands.push(c);
    }
    let (decision, best, worst, margin) = decide(s.judge, s.delta, &cands);
    let pair = if decision == Decision::Kept {
        let (b, w) = (best.unwrap_or(0), worst.unwrap_or(0));
        let (c, r) = (&cands[b], &cands[w]);
        let f = tr.format();
        let mut src_units = units.to_vec();
        if tr.manifest().dedup_source_units {
            src_units.dedup();
        }
        let prompt_ids = f.prompt(
            Task::ChainOfModality,
            ctx.direction.src(),
            ctx.direction.tgt(),
            &src_units,
        )?;
        let tok = tr.tokenizer();
        Some(PairRecord {
            prompt: tok.decode(&prompt_ids, false)?,
            chosen: tok.decode(&c.ids, false)?,
            rejected: tok.decode(&r.ids, false)?,
            prompt_ids,
            chosen_ids: c.ids.clone(),
            rejected_ids: r.ids.clone(),
            id: e.id.clone(),
            direction: s.direction.clone(),
            judge: s.judge,
            judged_against: s.judged_against,
            source_text: source_text.to_string(),
            chosen_score: c.score,
            rejected_score: r.score,
            margin: margin.unwrap_or(0.0),
            chosen_text: c.text.clone(),
            rejected_text: r.text.clone(),
            chosen_back: c.back.clone(),
            rejected_back: r.back.clone(),
            chosen_stop: c.stop,
            rejected_stop: r.stop,
            seed,
        })
    } else {
        None
    };
    let rec = UtteranceRecord {
        index: src.index,
        id: e.id.clone(),
        seed,
        source_text: source_text.to_string(),
        transcribed,
        candidates: cands,
        decision,
        best,
        worst,
        margin,
        seconds: t0.elapsed().as_secs_f64(),
        stage_seconds: ctx.stages.borrow().clone(),
    };
    Ok((rec, pair))
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

/// Writes `text` to `path` through a synced temporary file (never half-written).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    Ok(crate::run_dir::write_atomic(path, text.as_bytes())?)
}

fn jsonl<T: Serialize>(rows: &[T]) -> Result<String> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes the four outputs of a run (or a merge) into `out`.
fn write_outputs(
    out: &Path,
    utterances: &[UtteranceRecord],
    pairs_text: &str,
    summary: &PairsSummary,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join("pairs.jsonl"), pairs_text)?;
    write_atomic(&out.join("utterances.jsonl"), &jsonl(utterances)?)?;
    write_atomic(
        &out.join("summary.json"),
        &(serde_json::to_string_pretty(summary)? + "\n"),
    )?;
    let margins: Vec<f64> = utterances.iter().filter_map(|u| u.margin).collect();
    let unit = if summary.settings.judge == Judge::Mcd {
        "dB"
    } else {
        "0-1 scale"
    };
    write_margin_plot(
        &out.join("margins.png"),
        &margins,
        summary.settings.delta,
        &format!(
            "best-vs-worst margins, {} judge ({unit}), {} of {} kept",
            summary.settings.judge.as_str(),
            summary.pairs_kept,
            utterances.len()
        ),
    )
    .map_err(|e| anyhow::anyhow!("writing margins.png: {e}"))?;
    Ok(())
}

fn settings_of(args: &PairsArgs) -> Result<PairsSettings> {
    let (Some(model), Some(manifest), Some(units), Some(direction)) =
        (&args.model, &args.manifest, &args.units, args.direction)
    else {
        bail!("--model, --manifest, --units and --direction are required (unless --merge)");
    };
    ensure!(
        args.candidates >= 2,
        "--candidates {} must be at least 2",
        args.candidates
    );
    ensure!(
        args.delta.is_finite() && args.delta >= 0.0,
        "--delta {} must be a non-negative number",
        args.delta
    );
    ensure!(
        args.mcd_worst.is_finite() && args.mcd_worst > 0.0,
        "--mcd-worst {} must be a positive number of dB",
        args.mcd_worst
    );
    SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: 0,
    }
    .validate()?;
    Ok(PairsSettings {
        model: model.display().to_string(),
        manifest: manifest.display().to_string(),
        units: units.display().to_string(),
        direction: direction.as_str().to_string(),
        judge: args.judge,
        judged_against: args.judge_against,
        back_from: args.back_from,
        delta: args.delta,
        mcd_worst_db: args.mcd_worst,
        candidates: args.candidates,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        limit: args.limit,
        transcribe: args.transcribe,
    })
}

/// Runs `tolk-train pairs` (or the merge with `--merge`).
pub fn run_pairs(args: &PairsArgs) -> Result<PairsSummary> {
    if !args.merge.is_empty() {
        return merge_shards(&args.merge, &args.out);
    }
    let settings = settings_of(args)?;
    let direction = args.direction.context("--direction is required")?;
    let (model, manifest_path, units_path) = (
        args.model.as_deref().context("--model is required")?,
        args.manifest.as_deref().context("--manifest is required")?,
        args.units.as_deref().context("--units is required")?,
    );
    if let Some(n) = args.threads {
        ensure!(n > 0, "--threads {n} must be positive");
        tch::set_num_threads(n);
    }
    let t0 = Instant::now();
    let device = available_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let tr = Translator::load(model, device, dtype)
        .with_context(|| format!("loading the translator {}", model.display()))?;
    Mode::ChainOfModality
        .task_for(tr.manifest().strategy)
        .with_context(|| {
            format!(
                "{}: preference pairs need a chain-of-modality model",
                model.display()
            )
        })?;
    for d in [direction, reverse(direction)] {
        if !tr.manifest().supports_direction(d) {
            bail!(
                "{} does not translate {d} (pairs need {direction} and its back-translation)",
                model.display()
            );
        }
    }
    let table = read_units(units_path)?;
    let k = tr.format().num_units;
    ensure!(
        table.num_units == k,
        "{}: units file has num_units {} but the model has {k} units",
        units_path.display(),
        table.num_units
    );
    let entries = read_sources_manifest(manifest_path)?;
    let (mut selected, skipped) = select(&entries, direction, args.judge_against);
    if let Some(n) = args.limit {
        selected.truncate(n);
    }
    if selected.is_empty() {
        bail!(
            "{} has no {} entries{}",
            manifest_path.display(),
            direction,
            if args.judge_against == JudgeAgainst::Reference {
                " with a target side (--judge-against reference needs paired entries)"
            } else {
                ""
            }
        );
    }
    let sources: Vec<Source> = selected
        .into_iter()
        .enumerate()
        .filter(|(i, _)| args.shard.is_none_or(|s| i % s.count == s.index))
        .map(|(index, entry)| Source { index, entry })
        .collect();

    // Source texts: the manifest's, or a transcription (only the text judges against the
    // back-translation compare with the source text).
    let needs_text =
        args.judge_against == JudgeAgainst::BackTranslation && args.judge != Judge::Mcd;
    let untranscribed: Vec<&Source> = sources
        .iter()
        .filter(|s| s.entry.text.trim().is_empty())
        .collect();
    let mut transcripts: HashMap<usize, String> = HashMap::new();
    if needs_text && !untranscribed.is_empty() {
        let first = &untranscribed[0].entry;
        if !args.transcribe {
            bail!(
                "entry {} has no text: give the source text in the manifest, or pass \
                 --transcribe to recognize it (English)",
                first.id
            );
        }
        if let Some(s) = untranscribed.iter().find(|s| s.entry.language != "en") {
            bail!(
                "entry {} has no text and is in `{}`: --transcribe recognizes English only \
                 (PocketSphinx en-us)",
                s.entry.id,
                s.entry.language
            );
        }
        let work = args.out.join(".asr");
        std::fs::create_dir_all(work.join("source"))?;
        let mut wavs = Vec::new();
        for s in &untranscribed {
            let a = s
                .entry
                .audio
                .as_deref()
                .with_context(|| format!("entry {}: no audio to transcribe", s.entry.id))?;
            let p = manifest_path.parent().unwrap_or(Path::new("")).join(a);
            let pcm = read_16k(&p).with_context(|| format!("entry {}", s.entry.id))?;
            let w = work
                .join("source")
                .join(format!("{}.wav", file_stem(&s.entry.id)));
            write_wav(&w, &pcm, 16_000, 1, WavFormat::Pcm16)?;
            wavs.push(w);
        }
        let mut rec = asr::PocketSphinx::new(asr::find_python(args.python.as_deref())?)?;
        let texts = rec.transcribe(&wavs, &work)?;
        for (s, t) in untranscribed.iter().zip(texts) {
            transcripts.insert(s.index, t);
        }
    }

    let ctx = Ctx {
        tr: &tr,
        settings: &settings,
        direction,
        manifest_dir: manifest_path
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf(),
        table: &table,
        units_path,
        stages: Default::default(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let pb = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(sources.len() as u64)
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "pairs {bar:30} {pos}/{len} {elapsed}<{eta} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut utterances = Vec::with_capacity(sources.len());
    let mut pairs_text = String::new();
    let mut kept = 0;
    for src in &sources {
        let (text, transcribed) = match transcripts.get(&src.index) {
            Some(t) => (t.clone(), true),
            None => (src.entry.text.clone(), false),
        };
        let (rec, pair) = process(&ctx, src, &text, transcribed)?;
        if let Some(p) = pair {
            pairs_text.push_str(&serde_json::to_string(&p)?);
            pairs_text.push('\n');
            kept += 1;
        }
        utterances.push(rec);
        pb.set_message(format!("{kept} pairs"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let summary = summarize(
        &settings,
        args.shard.map(|s| s.to_string()).into_iter().collect(),
        &utterances,
        skipped,
        t0.elapsed().as_secs_f64(),
    );
    write_outputs(&args.out, &utterances, &pairs_text, &summary)?;
    Ok(summary)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(ids: &[u32], score: f64, invalid: Option<Invalid>) -> CandidateRecord {
        CandidateRecord {
            text: String::new(),
            ids: ids.to_vec(),
            units: 0,
            stop: if invalid == Some(Invalid::MaxTokens) {
                StopReason::MaxTokens
            } else {
                StopReason::End
            },
            text_truncated: false,
            retokenized: false,
            back: None,
            score,
            invalid,
        }
    }

    #[test]
    fn ranking_and_decisions() {
        // BLEU: higher is better; best with worst among three.
        let c = [
            cand(&[1], 0.3, None),
            cand(&[2], 0.7, None),
            cand(&[3], 0.1, None),
        ];
        let (d, b, w, m) = decide(Judge::Bleu, 0.1, &c);
        assert_eq!((d, b, w), (Decision::Kept, Some(1), Some(2)));
        assert!((m.unwrap() - 0.6).abs() < 1e-12);
        // WER: lower is better.
        let (d, b, w, _) = decide(Judge::Wer, 0.1, &c);
        assert_eq!((d, b, w), (Decision::Kept, Some(2), Some(1)));
        // A truncated candidate with the worst score is never chosen, even when the valid one
        // is no better: no valid candidate wins over it, the margin is 0.
        let c = [
            cand(&[1], 0.0, Some(Invalid::MaxTokens)),
            cand(&[2], 0.0, None),
        ];
        let (d, b, w, m) = decide(Judge::Bleu, 0.1, &c);
        assert_eq!(
            (d, b, w, m),
            (Decision::BelowDelta, Some(1), Some(0), Some(0.0))
        );
        let c = [
            cand(&[1], 0.0, Some(Invalid::MaxTokens)),
            cand(&[2], 0.5, None),
        ];
        assert_eq!(decide(Judge::Bleu, 0.1, &c).0, Decision::Kept);
        let c = [
            cand(&[1], 0.0, Some(Invalid::MaxTokens)),
            cand(&[2], 0.0, Some(Invalid::EmptyBackTranslation)),
        ];
        assert_eq!(decide(Judge::Bleu, 0.1, &c).0, Decision::NoValidCandidate);
        // Identical ids: no pair, no margin.
        let c = [cand(&[4, 5], 0.2, None), cand(&[4, 5], 0.2, None)];
        assert_eq!(
            decide(Judge::Bleu, 0.1, &c),
            (Decision::Identical, None, None, None)
        );
        // Exactly delta is not enough.
        let c = [cand(&[1], 0.25, None), cand(&[2], 0.5, None)];
        assert_eq!(decide(Judge::Meteor, 0.25, &c).0, Decision::BelowDelta);
        // MCD in dB: lower is better.
        let c = [cand(&[1], 7.5, None), cand(&[2], 9.0, None)];
        let (d, b, _, m) = decide(Judge::Mcd, 1.0, &c);
        assert_eq!((d, b), (Decision::Kept, Some(0)));
        assert!((m.unwrap() - 1.5).abs() < 1e-12);
    }

    #[test]
    fn judge_scales() {
        assert!((Judge::Bleu.text_score("a b c d", "a b c d") - 1.0).abs() < 1e-12);
        assert_eq!(Judge::Bleu.text_score("", "a b c d"), 0.0);
        assert_eq!(Judge::Wer.text_score("", "a b"), 1.0);
        // 4 insertions against 1 word: jiwer says 4, the judge caps it at the worst value, 1.
        assert_eq!(Judge::Wer.text_score("a b c d e", "a"), 1.0);
        assert_eq!(Judge::Wer.text_score("a c", "a b"), 0.5);
        assert_eq!(Judge::Meteor.text_score("", "a b"), 0.0);
        assert_eq!(Judge::Mcd.worst(40.0), 40.0);
        assert!(Judge::Bleu.higher_is_better() && !Judge::Wer.higher_is_better());
    }

    #[test]
    fn seeds_and_shards() {
        let a = utterance_seed(0, "mono-en-000001");
        assert_eq!(a, utterance_seed(0, "mono-en-000001"));
        assert_ne!(a, utterance_seed(1, "mono-en-000001"));
        assert_ne!(a, utterance_seed(0, "mono-en-000002"));
        assert!(a < 1 << 53);
        assert_ne!(candidate_seed(a, 0), candidate_seed(a, 1));
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!((s.index, s.count), (1, 4));
        assert_eq!(s.to_string(), "1/4");
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

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
