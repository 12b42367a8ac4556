//! chrF as sacreBLEU 2.6.0 computes it with its defaults (`sacrebleu/metrics/chrf.py`,
//! `metrics/helpers.py`): character n-grams of orders 1..=6 over the segment with whitespace
//! removed, no word n-grams, beta 2, case-sensitive, precision and recall averaged over the
//! orders that have both hypothesis and reference n-grams (no epsilon smoothing). Corpus chrF
//! sums the statistics over segments. One reference per hypothesis.

use super::{check_lengths, py_space, Result, SIGNATURE_VERSION};
use std::collections::HashMap;

pub const CHAR_ORDER: usize = 6;
pub const BETA: u32 = 2;

/// Per order: hypothesis n-grams (0 when the reference has none), reference n-grams, matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChrfStats(pub [[usize; 3]; CHAR_ORDER]);

impl std::ops::AddAssign for ChrfStats {
    fn add_assign(&mut self, o: Self) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            for k in 0..3 {
                a[k] += b[k];
            }
        }
    }
}

fn char_ngrams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut counts = HashMap::new();
    for w in chars.windows(n) {
        *counts.entry(w).or_insert(0) += 1;
    }
    counts
}

/// Statistics of one hypothesis against its reference.
pub fn segment_stats(hypothesis: &str, reference: &str) -> ChrfStats {
    let hyp: Vec<char> = hypothesis.chars().filter(|&c| !py_space(c)).collect();
    let reference: Vec<char> = reference.chars().filter(|&c| !py_space(c)).collect();
    let mut stats = ChrfStats::default();
    for n in 1..=CHAR_ORDER {
        let h = char_ngrams(&hyp, n);
        let r = char_ngrams(&reference, n);
        let mut hyp_count = 0;
        let mut matches = 0;
        for (gram, count) in &h {
            hyp_count += count;
            if let Some(rc) = r.get(gram) {
                matches += (*count).min(*rc);
            }
        }
        let ref_count: usize = r.values().sum();
        stats.0[n - 1] = [if r.is_empty() { 0 } else { hyp_count }, ref_count, matches];
    }
    stats
}

/// `CHRF._compute_f_score` without epsilon smoothing, on 0-100.
pub fn compute_chrf(stats: &ChrfStats) -> f64 {
    let factor = (BETA * BETA) as f64;
    let (mut avg_prec, mut avg_rec, mut effective) = (0.0f64, 0.0f64, 0usize);
    for &[n_hyp, n_ref, n_match] in &stats.0 {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            effective += 1;
        }
    }
    if effective == 0 {
        return 0.0;
    }
    avg_prec /= effective as f64;
    avg_rec /= effective as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    let mut score = (1.0 + factor) * avg_prec * avg_rec;
    score /= factor * avg_prec + avg_rec;
    100.0 * score
}

/// A chrF score (0-100).
#[derive(Debug, Clone, PartialEq)]
pub struct ChrfScore {
    pub score: f64,
    pub stats: ChrfStats,
}

impl ChrfScore {
    pub fn signature(&self) -> String {
        format!("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:{SIGNATURE_VERSION}")
    }
}

impl std::fmt::Display for ChrfScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chrF2|{} = {:.2}", self.signature(), self.score)
    }
}

/// Corpus chrF (`sacrebleu.corpus_chrf(hyps, [refs])`).
pub fn corpus_chrf<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<ChrfScore> {
    check_lengths(hypotheses.len(), references.len())?;
    let mut stats = ChrfStats::default();
    for (h, r) in hypotheses.iter().zip(references) {
        stats += segment_stats(h.as_ref(), r.as_ref());
    }
    Ok(ChrfScore {
        score: compute_chrf(&stats),
        stats,
    })
}

/// Sentence chrF (`sacrebleu.sentence_chrf(hyp, [ref])`).
pub fn sentence_chrf(hypothesis: &str, reference: &str) -> ChrfScore {
    let stats = segment_stats(hypothesis, reference);
    ChrfScore {
        score: compute_chrf(&stats),
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_chrf() {
        // "ab" vs "abc": order 1: P 2/2, R 2/3; order 2: P 1/1, R 1/2; orders 3..6 have no
        // hypothesis n-grams and are left out. avgP = 1, avgR = 7/12.
        let s = sentence_chrf("a b", "abc");
        assert_eq!(s.stats.0[0], [2, 3, 2]);
        assert_eq!(s.stats.0[1], [1, 2, 1]);
        let (p, r) = (1.0f64, 7.0f64 / 12.0);
        let want = 100.0 * 5.0 * p * r / (4.0 * p + r);
        assert!((s.score - want).abs() < 1e-9, "{} vs {want}", s.score);
        assert!((sentence_chrf("same text", "same text").score - 100.0).abs() < 1e-9);
        assert_eq!(sentence_chrf("", "abc").score, 0.0);
        assert_eq!(sentence_chrf("xyz", "abc").score, 0.0);
    }

    #[test]
    fn corpus_sums_statistics() {
        let c = corpus_chrf(&["a b", "xyz"], &["abc", "abc"]).unwrap();
        let mut s = segment_stats("a b", "abc");
        s += segment_stats("xyz", "abc");
        assert_eq!(c.stats, s);
        assert!(corpus_chrf(&["a"], &["a", "b"]).is_err());
    }
}
