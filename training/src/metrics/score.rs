//! `tolk-train score`: one metric over two line-aligned text files (hypotheses, references),
//! printed with a sacreBLEU-style signature.

use super::{bleu, chrf, meteor, wer, MetricError, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Corpus BLEU, sacreBLEU defaults (0-100).
    Bleu,
    /// Corpus chrF2, sacreBLEU defaults (0-100).
    Chrf,
    /// Mean sentence METEOR, nltk without WordNet (0-1).
    Meteor,
    /// Corpus word error rate, jiwer (0 = perfect).
    Wer,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    #[arg(long, value_enum)]
    pub metric: Metric,
    /// Hypotheses, one segment per line.
    #[arg(long)]
    pub hyp: PathBuf,
    /// References, line-aligned with the hypotheses.
    #[arg(long = "ref")]
    pub reference: PathBuf,
}

/// The lines of a UTF-8 text file (a final newline does not add an empty segment).
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| MetricError::Io(path.to_path_buf(), e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| MetricError::NotUtf8(path.to_path_buf(), e.utf8_error().valid_up_to()))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Scores the two files; returns the printable result line.
pub fn score_files(args: &ScoreArgs) -> Result<String> {
    let hyps = read_lines(&args.hyp)?;
    let refs = read_lines(&args.reference)?;
    if hyps.len() != refs.len() {
        return Err(MetricError::FileLengths {
            hyp: args.hyp.clone(),
            hyp_lines: hyps.len(),
            reference: args.reference.clone(),
            ref_lines: refs.len(),
        });
    }
    Ok(match args.metric {
        Metric::Bleu => bleu::corpus_bleu(&hyps, &refs)?.to_string(),
        Metric::Chrf => chrf::corpus_chrf(&hyps, &refs)?.to_string(),
        Metric::Meteor => meteor::corpus_meteor(&hyps, &refs)?.to_string(),
        Metric::Wer => wer::corpus_wer(&hyps, &refs)?.to_string(),
    })
}
