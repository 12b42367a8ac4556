//! One utterance of `tolk-train pairs`: its candidates sampled in one batch, scored, and the
//! pair made of the best and the worst.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tolk_models::prompt::{PromptFormat, SpecialToken, Task};
use tolk_models::sampling::{Sampler, SamplingConfig};
use tolk_models::translator::{Direction, Mode, Stop, TranslationOutput, Translator};

use super::error::{PairsError, Result};
use super::judging::{decide, score_candidate, Judge, JudgeAgainst};
use super::records::{Decision, PairRecord, PairsSettings, UtteranceRecord};
use super::seeding::{candidate_seed, utterance_seed};
use super::sources::Source;
use crate::eval::read_16k;
use crate::units::UnitsTable;

/// Everything one utterance needs.
pub(super) struct Ctx<'a> {
    pub(super) tr: &'a Translator,
    pub(super) settings: &'a PairsSettings,
    pub(super) direction: Direction,
    pub(super) manifest_dir: PathBuf,
    pub(super) table: &'a UnitsTable,
    pub(super) units_path: &'a Path,
    /// Seconds per stage of the current utterance.
    pub(super) stages: std::cell::RefCell<BTreeMap<String, f64>>,
}

impl Ctx<'_> {
    /// Runs `f`, adding its wall time to `stage`.
    pub(super) fn timed<T>(&self, stage: &str, f: impl FnOnce() -> T) -> T {
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
pub(super) fn completion_ids(
    tr: &Translator,
    out: &TranslationOutput,
) -> tolk_models::Result<(Vec<u32>, bool)> {
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
/// Processes one utterance: its record and, when kept, its pair.
pub(super) fn process(
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
        .ok_or_else(|| PairsError::NoAudio(e.id.clone()))?;
    let units = ctx.table.get(audio).ok_or_else(|| PairsError::NoUnits {
        id: e.id.clone(),
        audio: audio.to_string(),
        units: ctx.units_path.to_path_buf(),
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
        .map_err(|source| PairsError::Sampling {
            id: e.id.clone(),
            source,
        })?;

    // The audio the MCD judge compares with: the source speech, or the reference target speech.
    let reference_audio = if s.judge == Judge::Mcd {
        let a = match s.judged_against {
            JudgeAgainst::BackTranslation => audio,
            JudgeAgainst::Reference => e
                .target_audio
                .as_deref()
                .ok_or_else(|| PairsError::NoTargetAudio(e.id.clone()))?,
        };
        let p = if Path::new(a).is_absolute() {
            PathBuf::from(a)
        } else {
            ctx.manifest_dir.join(a)
        };
        Some(read_16k(&p).map_err(|source| PairsError::Audio {
            id: e.id.clone(),
            source: Box::new(source),
        })?)
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
        .map_err(|source| PairsError::Judging {
            id: e.id.clone(),
            source,
        })?;
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
