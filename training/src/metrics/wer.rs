//! Word error rate as jiwer 4.0.0 computes it (`jiwer/process.py`, `jiwer/transformations.py`):
//! `(S + D + I) / (H + S + D)` with the counts summed over all sentence pairs (not a mean of
//! sentence WERs). S + D + I is the word-level Levenshtein distance and H + S + D the number of
//! reference words, so the rate does not depend on how ties between alignments are broken.
//!
//! jiwer's default transform (`wer_default`) is reproduced: runs of two or more whitespace
//! characters become one space, the ends are stripped, then words are split on the space
//! character only (a single tab does not separate words). No lower-casing, no punctuation removal.

use super::{check_lengths, py_space, Result, SIGNATURE_VERSION};

/// `wer_default`: RemoveMultipleSpaces, Strip, ReduceToListOfListOfWords.
pub fn jiwer_words(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut collapsed = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let mut j = i;
        while j < chars.len() && py_space(chars[j]) {
            j += 1;
        }
        if j - i >= 2 {
            collapsed.push(' ');
            i = j;
        } else {
            collapsed.push(chars[i]);
            i += 1;
        }
    }
    collapsed
        .trim_matches(py_space)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Edit counts. `errors` (S + D + I) is the Levenshtein distance; the split into S, D and I
/// follows one optimal alignment (substitutions preferred) and may differ from jiwer's in ties.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WerCounts {
    pub hits: usize,
    pub substitutions: usize,
    pub deletions: usize,
    pub insertions: usize,
}

impl WerCounts {
    pub fn errors(&self) -> usize {
        self.substitutions + self.deletions + self.insertions
    }

    pub fn reference_words(&self) -> usize {
        self.hits + self.substitutions + self.deletions
    }

    /// jiwer's WER; with no reference words at all jiwer returns the insertion count.
    pub fn wer(&self) -> f64 {
        let n = self.reference_words();
        if n == 0 {
            return self.insertions as f64;
        }
        self.errors() as f64 / n as f64
    }
}

impl std::ops::AddAssign for WerCounts {
    fn add_assign(&mut self, o: Self) {
        self.hits += o.hits;
        self.substitutions += o.substitutions;
        self.deletions += o.deletions;
        self.insertions += o.insertions;
    }
}

/// Levenshtein alignment of two word sequences.
pub fn align<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> WerCounts {
    let (n, m) = (reference.len(), hypothesis.len());
    // d[i][j]: distance between reference[..i] and hypothesis[..j].
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = d[i - 1][j - 1] + usize::from(reference[i - 1] != hypothesis[j - 1]);
            d[i][j] = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
        }
    }
    let mut c = WerCounts::default();
    let (mut i, mut j) = (n, m);
    while i > 0 || j > 0 {
        if i > 0 && j > 0 {
            let same = reference[i - 1] == hypothesis[j - 1];
            if d[i][j] == d[i - 1][j - 1] + usize::from(!same) {
                if same {
                    c.hits += 1;
                } else {
                    c.substitutions += 1;
                }
                i -= 1;
                j -= 1;
                continue;
            }
        }
        if i > 0 && d[i][j] == d[i - 1][j] + 1 {
            c.deletions += 1;
            i -= 1;
        } else {
            c.insertions += 1;
            j -= 1;
        }
    }
    c
}

/// Counts of one sentence pair after jiwer's default transform.
pub fn sentence_counts(hypothesis: &str, reference: &str) -> WerCounts {
    align(&jiwer_words(reference), &jiwer_words(hypothesis))
}

/// A corpus WER (a rate, 0 = perfect; may exceed 1).
#[derive(Debug, Clone, PartialEq)]
pub struct WerScore {
    pub wer: f64,
    pub counts: WerCounts,
}

impl WerScore {
    pub fn signature(&self) -> String {
        format!("nrefs:1|case:mixed|tok:space|transform:jiwer-default|version:{SIGNATURE_VERSION}")
    }
}

impl std::fmt::Display for WerScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counts;
        write!(
            f,
            "WER|{} = {:.4} (errors = {} ref_words = {} S = {} D = {} I = {})",
            self.signature(),
            self.wer,
            c.errors(),
            c.reference_words(),
            c.substitutions,
            c.deletions,
            c.insertions
        )
    }
}

/// Corpus WER (`jiwer.wer(refs, hyps)`): counts summed over the pairs.
pub fn corpus_wer<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<WerScore> {
    check_lengths(hypotheses.len(), references.len())?;
    let mut counts = WerCounts::default();
    for (h, r) in hypotheses.iter().zip(references) {
        counts += sentence_counts(h.as_ref(), r.as_ref());
    }
    Ok(WerScore {
        wer: counts.wer(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_wer() {
        // ref "a b c d", hyp "a x c d e": one substitution, one insertion -> 2/4.
        let c = sentence_counts("a x c d e", "a b c d");
        assert_eq!(
            (c.hits, c.substitutions, c.deletions, c.insertions),
            (3, 1, 0, 1)
        );
        assert_eq!(c.wer(), 0.5);
        // Corpus: (2 + 2) / (4 + 2), not the mean of 0.5 and 1.0.
        let s = corpus_wer(&["a x c d e", ""], &["a b c d", "p q"]).unwrap();
        assert_eq!(s.wer, 4.0 / 6.0);
        // No reference words: jiwer returns the insertion count.
        assert_eq!(corpus_wer(&["x y"], &[""]).unwrap().wer, 2.0);
    }

    #[test]
    fn jiwer_default_transform() {
        assert_eq!(jiwer_words("  a  b\tc \n"), ["a", "b\tc"]);
        assert_eq!(jiwer_words("a\t\tb"), ["a", "b"]);
        assert!(jiwer_words(" ").is_empty());
        // Case and punctuation count: "Hello," vs "hello" is one substitution.
        assert_eq!(sentence_counts("Hello, world", "hello world").errors(), 1);
    }
}
