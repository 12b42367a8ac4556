//! The four outputs of a run or a merge: `pairs.jsonl`, `utterances.jsonl`, `summary.json` and
//! `margins.png`.

use std::path::Path;

use serde::Serialize;

use super::error::{PairsError, Result};
use super::judging::Judge;
use super::plot::write_margin_plot;
use super::records::{PairsSummary, UtteranceRecord};
use crate::toolkit::run_dir::io;

/// Writes `text` to `path` through a synced temporary file (never half-written).
pub(super) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    Ok(crate::toolkit::run_dir::write_atomic(
        path,
        text.as_bytes(),
    )?)
}

fn jsonl<T: Serialize>(rows: &[T], what: &'static str) -> Result<String> {
    let mut s = String::new();
    for r in rows {
        s.push_str(&to_json(r, what)?);
        s.push('\n');
    }
    Ok(s)
}

/// One compact JSON line of `row` (`what` names it in errors).
pub(super) fn to_json<T: Serialize>(row: &T, what: &'static str) -> Result<String> {
    serde_json::to_string(row).map_err(|source| PairsError::Serialize { what, source })
}

/// Writes the four outputs of a run (or a merge) into `out`.
pub(super) fn write_outputs(
    out: &Path,
    utterances: &[UtteranceRecord],
    pairs_text: &str,
    summary: &PairsSummary,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_atomic(&out.join("pairs.jsonl"), pairs_text)?;
    write_atomic(
        &out.join("utterances.jsonl"),
        &jsonl(utterances, "an utterance record")?,
    )?;
    let summary_text =
        serde_json::to_string_pretty(summary).map_err(|source| PairsError::Serialize {
            what: "the summary",
            source,
        })?;
    write_atomic(&out.join("summary.json"), &(summary_text + "\n"))?;
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
    )?;
    Ok(())
}
