//! `tolk-train pairs`: preference pairs without humans, by self-sampling and back-translation
//! (PROST-LLM arXiv 2601.16618 section 2.2).
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
//! Output (`--out`): `pairs.jsonl` (the format `tolk-train preference` reads: TRL's
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
//!
//! The parts: `sources` (the manifest's source utterances, their transcription), `seeding`
//! (sampler seeds), `shards` (`--shard i/n`), `sampling` (one utterance from its candidates to
//! its pair), `back_translation`, `judging` (the judge's scale, scores and the decision),
//! `records` (the output records and the summary), `output` and `plot` (the files written),
//! `merge` (`--merge`), `error`; this file holds the command's arguments and its run.

mod back_translation;
mod error;
mod judging;
mod merge;
mod output;
mod plot;
mod records;
mod sampling;
mod seeding;
mod shards;
mod sources;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tolk_models::device::{available_device, parse_dtype};
use tolk_models::sampling::SamplingConfig;
use tolk_models::translator::{Direction, Mode, Translator};

use crate::eval::check_num_units;
use crate::toolkit::run_dir::io;
use crate::units::read_units;
use back_translation::reverse;
use output::{to_json, write_outputs};
use sampling::{process, Ctx};
use sources::{read_sources_manifest, select, transcribe_sources, Source};

pub use back_translation::BackFrom;
pub use error::PairsError;
use error::Result;
pub use judging::{Judge, JudgeAgainst};
pub use merge::merge_shards;
pub use plot::PlotError;
pub use records::{
    summarize, CandidateRecord, Decision, Invalid, PairRecord, PairsSettings, PairsSummary,
    StopReason, UtteranceRecord,
};
pub use seeding::{candidate_seed, utterance_seed};
pub use shards::{Shard, ShardError};

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
    #[arg(long, required_unless_present = "merge")]
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
fn settings_of(args: &PairsArgs) -> Result<PairsSettings> {
    let (Some(model), Some(manifest), Some(units), Some(direction)) =
        (&args.model, &args.manifest, &args.units, args.direction)
    else {
        return Err(PairsError::MissingArguments);
    };
    if args.candidates < 2 {
        return Err(PairsError::TooFewCandidates(args.candidates));
    }
    if !(args.delta.is_finite() && args.delta >= 0.0) {
        return Err(PairsError::BadDelta(args.delta));
    }
    if !(args.mcd_worst.is_finite() && args.mcd_worst > 0.0) {
        return Err(PairsError::BadMcdWorst(args.mcd_worst));
    }
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
    let (Some(model), Some(manifest_path), Some(units_path), Some(direction)) = (
        args.model.as_deref(),
        args.manifest.as_deref(),
        args.units.as_deref(),
        args.direction,
    ) else {
        return Err(PairsError::MissingArguments);
    };
    if let Some(n) = args.threads {
        if n <= 0 {
            return Err(PairsError::BadThreads(n));
        }
        tch::set_num_threads(n);
    }
    let t0 = Instant::now();
    let device = available_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let tr =
        Translator::load(model, device, dtype).map_err(|source| PairsError::LoadTranslator {
            path: model.to_path_buf(),
            source,
        })?;
    Mode::ChainOfModality
        .task_for(tr.manifest().strategy)
        .map_err(|source| PairsError::NotChainOfModality {
            model: model.to_path_buf(),
            source,
        })?;
    for d in [direction, reverse(direction)] {
        if !tr.manifest().supports_direction(d) {
            return Err(PairsError::UnsupportedDirection {
                model: model.to_path_buf(),
                missing: d,
                direction,
            });
        }
    }
    let table = read_units(units_path)?;
    check_num_units(&table, units_path, tr.format().num_units)?;
    let entries = read_sources_manifest(manifest_path)?;
    let (mut selected, skipped) = select(&entries, direction, args.judge_against);
    if let Some(n) = args.limit {
        selected.truncate(n);
    }
    if selected.is_empty() {
        return Err(PairsError::NoEntries {
            manifest: manifest_path.to_path_buf(),
            direction,
            against_reference: args.judge_against == JudgeAgainst::Reference,
        });
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
    let transcripts = if needs_text {
        transcribe_sources(
            &sources,
            manifest_path,
            args.transcribe,
            args.python.as_deref(),
            &args.out.join(".asr"),
        )?
    } else {
        HashMap::new()
    };

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
    std::fs::create_dir_all(&args.out).map_err(io(&args.out))?;
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
            pairs_text.push_str(&to_json(&p, "a pair record")?);
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
