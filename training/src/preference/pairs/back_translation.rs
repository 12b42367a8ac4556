//! Back-translation of a candidate: its units (or their vocoded speech) translated back to the
//! source language by the same model.

use serde::{Deserialize, Serialize};
use tolk_models::translator::{Direction, Mode, TranslationOutput};
use tolk_models::{ModelError, Result};

use super::judging::Judge;
use super::sampling::Ctx;

/// What the back-translation starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackFrom {
    /// The candidate's units vocoded, then source-side units re-extracted from that speech.
    Speech,
    /// The candidate's units fed to the reverse direction as they are.
    Units,
}
pub(super) fn reverse(d: Direction) -> Direction {
    match d {
        Direction::EnFr => Direction::FrEn,
        Direction::FrEn => Direction::EnFr,
    }
}
/// The reverse decode of a candidate: its text and (MCD) its speech in the source language.
pub(super) enum Back {
    Done { text: String, speech: Vec<f32> },
    Empty,
    TooLong,
}

pub(super) fn back_translate(ctx: &Ctx<'_>, out: &TranslationOutput) -> Result<Back> {
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
        Err(e) => return Err(e),
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
