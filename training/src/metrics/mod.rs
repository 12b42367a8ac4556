//! Evaluation metrics with the reference definitions of `method.md` section 4, each matching a
//! reference package on the same inputs (`training/tests/metrics_parity.rs`):
//!
//! - [`bleu`]: sacreBLEU 2.6.0 `BLEU` defaults (13a tokenizer, exp smoothing) and `sentence_bleu`;
//! - [`chrf`]: sacreBLEU 2.6.0 `CHRF` defaults (chrF2, character order 6, no word n-grams);
//! - [`meteor`]: nltk 3.10.4 `meteor_score` without WordNet (exact + Porter stem matching);
//! - [`wer`]: jiwer 4.0.0 `wer` with its default transform;
//! - [`mcd`]: mel-cepstral distortion with DTW (definition in `tests/reference/metrics.py`);
//! - [`score`]: the `tolk-train score` subcommand over two line-aligned text files.

pub mod bleu;
pub mod chrf;
pub mod mcd;
pub mod meteor;
pub mod score;
pub mod wer;

/// The version label in metric signatures (sacreBLEU puts its own version there).
pub const SIGNATURE_VERSION: &str = concat!("tolk-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("{0} hypotheses but {1} references: the two sides must be line-aligned")]
    LengthMismatch(usize, usize),
    #[error("{hyp:?} has {hyp_lines} lines but {reference:?} has {ref_lines}: the files must be line-aligned")]
    FileLengths {
        hyp: std::path::PathBuf,
        hyp_lines: usize,
        reference: std::path::PathBuf,
        ref_lines: usize,
    },
    #[error("cannot read {0:?}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error("{0:?} is not UTF-8 text (invalid byte at offset {1})")]
    NotUtf8(std::path::PathBuf, usize),
    #[error("MCD: {0}")]
    Mcd(String),
    #[error(transparent)]
    Audio(#[from] tolk_models::audio::AudioError),
    #[error("MCD features: {0}")]
    Tensor(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, MetricError>;

/// Python's `str.isspace` for one character: Unicode White_Space plus the ASCII information
/// separators U+001C..U+001F, which Python also treats as whitespace (`str.split()`).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` without arguments.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_space).filter(|w| !w.is_empty())
}

pub(crate) fn check_lengths(hyps: usize, refs: usize) -> Result<()> {
    if hyps != refs {
        return Err(MetricError::LengthMismatch(hyps, refs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_split() {
        let words: Vec<&str> = py_split(" a\u{1f}b\tc\u{a0}d  e\n").collect();
        assert_eq!(words, ["a", "b", "c", "d", "e"]);
        assert_eq!(py_split("  ").count(), 0);
    }
}
