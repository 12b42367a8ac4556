//! BLEU as sacreBLEU 2.6.0 computes it with its defaults (`sacrebleu/metrics/bleu.py`,
//! `tokenizers/tokenizer_13a.py`, `tokenizers/tokenizer_re.py`): 13a tokenizer, case-sensitive,
//! n-grams up to 4, `exp` smoothing (mteval-v13a), corpus statistics summed over segments and a
//! brevity penalty. One reference per hypothesis.

use super::{check_lengths, py_space, py_split, Result, SIGNATURE_VERSION};
use std::collections::HashMap;

pub const MAX_ORDER: usize = 4;

/// The mteval-v13a tokenizer of sacreBLEU (`Tokenizer13a` followed by `TokenizerRegexp`).
/// The caller strips trailing whitespace first (sacreBLEU's `_preprocess_segment` does).
pub fn tokenize_13a(line: &str) -> String {
    let mut s = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if s.contains('&') {
        s = s
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let padded: Vec<char> = format!(" {s} ").chars().collect();
    // 1. Pad every ASCII symbol of the class [{-~ [-` space-& (-+ :-@ /] with spaces.
    let mut a = Vec::with_capacity(padded.len() * 2);
    for c in padded {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            a.extend([' ', c, ' ']);
        } else {
            a.push(c);
        }
    }
    let digit = |c: char| c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // 2. `([^0-9])([\.,])` -> `\1 \2 ` (left-to-right, non-overlapping as `re.sub`).
    let b = sub_pairs(
        &a,
        |x, y| !digit(x) && period_comma(y),
        |x, y| vec![x, ' ', y, ' '],
    );
    // 3. `([\.,])([^0-9])` -> ` \1 \2`.
    let c = sub_pairs(
        &b,
        |x, y| period_comma(x) && !digit(y),
        |x, y| vec![' ', x, ' ', y],
    );
    // 4. `([0-9])(-)` -> `\1 \2 `.
    let d = sub_pairs(&c, |x, y| digit(x) && y == '-', |x, y| vec![x, ' ', y, ' ']);
    let joined: String = d.into_iter().collect();
    py_split(&joined).collect::<Vec<_>>().join(" ")
}

/// Replaces non-overlapping two-character matches scanning left to right, as Python's `re.sub`
/// does for a pattern of two single-character groups.
fn sub_pairs(
    s: &[char],
    hit: impl Fn(char, char) -> bool,
    repl: impl Fn(char, char) -> Vec<char>,
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 2);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && hit(s[i], s[i + 1]) {
            out.extend(repl(s[i], s[i + 1]));
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's segment preprocessing: `tokenize_13a(sent.rstrip())`.
fn preprocess(sent: &str) -> String {
    tokenize_13a(sent.trim_end_matches(py_space))
}

/// Sufficient statistics of one or more segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BleuStats {
    pub hyp_len: usize,
    pub ref_len: usize,
    pub correct: [usize; MAX_ORDER],
    pub total: [usize; MAX_ORDER],
}

impl std::ops::AddAssign for BleuStats {
    fn add_assign(&mut self, o: Self) {
        self.hyp_len += o.hyp_len;
        self.ref_len += o.ref_len;
        for n in 0..MAX_ORDER {
            self.correct[n] += o.correct[n];
            self.total[n] += o.total[n];
        }
    }
}

fn ngrams(tokens: &[&str]) -> HashMap<Vec<String>, usize> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *counts
                .entry(w.iter().map(|t| t.to_string()).collect())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Statistics of one (untokenized) hypothesis against its reference.
pub fn segment_stats(hypothesis: &str, reference: &str) -> BleuStats {
    let (hyp, reference) = (preprocess(hypothesis), preprocess(reference));
    let hyp_tokens: Vec<&str> = hyp.split(' ').filter(|t| !t.is_empty()).collect();
    let ref_tokens: Vec<&str> = reference.split(' ').filter(|t| !t.is_empty()).collect();
    let ref_counts = ngrams(&ref_tokens);
    let mut stats = BleuStats {
        hyp_len: hyp_tokens.len(),
        ref_len: ref_tokens.len(),
        ..Default::default()
    };
    for (gram, count) in ngrams(&hyp_tokens) {
        let n = gram.len() - 1;
        stats.total[n] += count;
        if let Some(r) = ref_counts.get(&gram) {
            stats.correct[n] += count.min(*r);
        }
    }
    stats
}

/// A BLEU score (0-100) with what it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    pub score: f64,
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub stats: BleuStats,
    pub effective_order: bool,
}

impl BleuScore {
    /// sacreBLEU's signature with our version label.
    pub fn signature(&self) -> String {
        let eff = if self.effective_order { "yes" } else { "no" };
        format!("nrefs:1|case:mixed|eff:{eff}|tok:13a|smooth:exp|version:{SIGNATURE_VERSION}")
    }
}

impl std::fmt::Display for BleuScore {
    /// sacreBLEU's text format: `BLEU|<signature> = 34.12 60.0/40.0/30.0/20.0 (BP = ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        let ratio = if self.stats.ref_len > 0 {
            self.stats.hyp_len as f64 / self.stats.ref_len as f64
        } else {
            0.0
        };
        write!(
            f,
            "BLEU|{} = {:.2} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.signature(),
            self.score,
            p.join("/"),
            self.bp,
            ratio,
            self.stats.hyp_len,
            self.stats.ref_len
        )
    }
}

/// sacreBLEU's `my_log`: log, with log(0) floored to -9999999999.
fn floored_log(x: f64) -> f64 {
    if x == 0.0 {
        -9_999_999_999.0
    } else {
        x.ln()
    }
}

/// `BLEU.compute_bleu` with `smooth_method='exp'`.
pub fn compute_bleu(stats: BleuStats, effective_order: bool) -> BleuScore {
    let (sys, reference) = (stats.hyp_len, stats.ref_len);
    let mut bp = 1.0;
    if sys < reference {
        bp = if sys > 0 {
            (1.0 - reference as f64 / sys as f64).exp()
        } else {
            0.0
        };
    }
    let mut precisions = [0.0; MAX_ORDER];
    let mut out = BleuScore {
        score: 0.0,
        precisions,
        bp,
        stats,
        effective_order,
    };
    if stats.correct.iter().all(|&c| c == 0) {
        return out;
    }
    let mut smooth = 1.0f64;
    let mut eff_order = MAX_ORDER;
    for (n, p) in precisions.iter_mut().enumerate() {
        let (correct, total) = (stats.correct[n], stats.total[n]);
        if total == 0 {
            break;
        }
        if effective_order {
            eff_order = n + 1;
        }
        *p = if correct == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total as f64)
        } else {
            100.0 * correct as f64 / total as f64
        };
    }
    let log_sum: f64 = precisions[..eff_order]
        .iter()
        .fold(0.0, |acc, &p| acc + floored_log(p));
    out.score = bp * (log_sum / eff_order as f64).exp();
    out.precisions = precisions;
    out
}

/// Corpus BLEU (`sacrebleu.corpus_bleu(hyps, [refs])`).
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<BleuScore> {
    check_lengths(hypotheses.len(), references.len())?;
    let mut stats = BleuStats::default();
    for (h, r) in hypotheses.iter().zip(references) {
        stats += segment_stats(h.as_ref(), r.as_ref());
    }
    Ok(compute_bleu(stats, false))
}

/// Sentence BLEU with effective order (`sacrebleu.sentence_bleu(hyp, [ref])`).
pub fn sentence_bleu(hypothesis: &str, reference: &str) -> BleuScore {
    compute_bleu(segment_stats(hypothesis, reference), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_13a_cases() {
        assert_eq!(tokenize_13a("Hello, world."), "Hello , world .");
        // Periods and commas between digits stay; a dash after a digit is split.
        assert_eq!(
            tokenize_13a("It costs 3.50, or 1,000 (12-15)"),
            "It costs 3.50 , or 1,000 ( 12 - 15 )"
        );
        assert_eq!(
            tokenize_13a("&quot;l'hôtel&quot; &amp; café"),
            "\" l'hôtel \" & café"
        );
        assert_eq!(tokenize_13a("a..b"), "a . . b");
        assert_eq!(tokenize_13a("<skipped>x-\ny"), "xy");
    }

    #[test]
    fn hand_worked_corpus_bleu() {
        // hyp "the cat sat on the mat" vs ref "the cat is on the mat": 1-grams 5/6, 2-grams 3/5,
        // 3-grams 1/4, 4-grams 0/3 -> exp smoothing p4 = 100 / (2 * 3); same length, BP 1.
        let s = corpus_bleu(&["the cat sat on the mat"], &["the cat is on the mat"]).unwrap();
        assert_eq!(s.stats.correct, [5, 3, 1, 0]);
        assert_eq!(s.stats.total, [6, 5, 4, 3]);
        let want =
            (((500.0f64 / 6.0).ln() + 60f64.ln() + 25f64.ln() + (100.0f64 / 6.0).ln()) / 4.0).exp();
        assert!((s.score - want).abs() < 1e-9, "{} vs {want}", s.score);
        assert_eq!(s.bp, 1.0);
        // Identical sentences score 100; no match at all scores 0.
        assert!((corpus_bleu(&["a b c d e"], &["a b c d e"]).unwrap().score - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&["x y"], &["a b c"]).unwrap().score, 0.0);
    }

    #[test]
    fn brevity_penalty_and_effective_order() {
        // "a b" vs "a b c d": 1-grams 2/2, 2-grams 1/1, BP exp(1 - 4/2).
        let s = sentence_bleu("a b", "a b c d");
        assert!((s.bp - (-1.0f64).exp()).abs() < 1e-12);
        assert!((s.score - 100.0 * (-1.0f64).exp()).abs() < 1e-9);
        // Without effective order the missing 3- and 4-grams zero the corpus score.
        assert_eq!(corpus_bleu(&["a b"], &["a b c d"]).unwrap().score, 0.0);
        assert!(s
            .signature()
            .starts_with("nrefs:1|case:mixed|eff:yes|tok:13a|smooth:exp|version:tolk-"));
    }

    #[test]
    fn mismatched_lengths_error() {
        assert!(corpus_bleu(&["a"], &["a", "b"]).is_err());
    }
}
