//! METEOR as nltk 3.10.4 computes it (`nltk/translate/meteor_score.py`): alpha 0.9, beta 3,
//! gamma 0.5; words aligned by exact match, then Porter-stem match (nltk's `PorterStemmer` in
//! its default NLTK_EXTENSIONS mode, `nltk/stem/porter.py`), then WordNet synonyms. No WordNet
//! corpus is available here, so this is the no-WordNet variant: it equals nltk's
//! `meteor_score(..., wordnet=W)` with a `W` whose `synsets` are always empty (the synonym
//! stage then only re-tries exact matches, and none are left after the exact stage).
//! Input is pre-tokenized (split on whitespace) and lower-cased, as nltk's `str.lower`.

use super::{check_lengths, py_split, Result, SIGNATURE_VERSION};
use std::collections::HashMap;

pub const ALPHA: f64 = 0.9;
pub const BETA: f64 = 3.0;
pub const GAMMA: f64 = 0.5;

/// nltk's Porter stemmer, NLTK_EXTENSIONS mode.
pub mod porter {
    /// Per character: is it a consonant? `y` is a consonant at the start or after a vowel.
    fn consonants(w: &[char]) -> Vec<bool> {
        let mut flags: Vec<bool> = Vec::with_capacity(w.len());
        for (i, &c) in w.iter().enumerate() {
            let f = match c {
                'a' | 'e' | 'i' | 'o' | 'u' => false,
                'y' => i == 0 || !flags[i - 1],
                _ => true,
            };
            flags.push(f);
        }
        flags
    }

    /// Porter's m: the number of vowel-consonant transitions.
    fn measure(w: &[char]) -> usize {
        let f = consonants(w);
        f.windows(2).filter(|p| !p[0] && p[1]).count()
    }

    fn contains_vowel(w: &[char]) -> bool {
        consonants(w).iter().any(|&c| !c)
    }

    fn ends_double_consonant(w: &[char]) -> bool {
        let n = w.len();
        n >= 2 && w[n - 1] == w[n - 2] && consonants(w)[n - 1]
    }

    /// Condition *o (with nltk's two-letter extension).
    fn ends_cvc(w: &[char]) -> bool {
        let n = w.len();
        let f = consonants(w);
        (n >= 3 && f[n - 3] && !f[n - 2] && f[n - 1] && !matches!(w[n - 1], 'w' | 'x' | 'y'))
            || (n == 2 && !f[0] && f[1])
    }

    fn ends(w: &[char], suffix: &str) -> bool {
        let s: Vec<char> = suffix.chars().collect();
        w.ends_with(&s)
    }

    fn cat(stem: &[char], tail: &str) -> Vec<char> {
        let mut out = stem.to_vec();
        out.extend(tail.chars());
        out
    }

    type Cond<'a> = &'a dyn Fn(&[char]) -> bool;

    /// One suffix rule: `suffix` ("*d" is the double-consonant rule), replacement, condition.
    type Rule<'a> = (&'a str, String, Option<Cond<'a>>);

    /// `_apply_rule_list`: the first rule whose suffix matches decides (applied or not).
    fn apply_rules(w: &[char], rules: &[Rule<'_>]) -> Vec<char> {
        for (suffix, repl, cond) in rules {
            if *suffix == "*d" && ends_double_consonant(w) {
                let stem = &w[..w.len() - 2];
                return if cond.is_none_or(|c| c(stem)) {
                    cat(stem, repl)
                } else {
                    w.to_vec()
                };
            }
            // nltk also tests the literal suffix "*d" here (a word ending in "*d").
            if ends(w, suffix) {
                let stem = &w[..w.len() - suffix.chars().count()];
                return if cond.is_none_or(|c| c(stem)) {
                    cat(stem, repl)
                } else {
                    w.to_vec()
                };
            }
        }
        w.to_vec()
    }

    fn rules<'a>(list: &[(&'a str, &str)], cond: Option<Cond<'a>>) -> Vec<Rule<'a>> {
        list.iter()
            .map(|(s, r)| (*s, r.to_string(), cond))
            .collect()
    }

    fn step1a(w: &[char]) -> Vec<char> {
        if ends(w, "ies") && w.len() == 4 {
            return cat(&w[..1], "ie");
        }
        apply_rules(
            w,
            &rules(
                &[("sses", "ss"), ("ies", "i"), ("ss", "ss"), ("s", "")],
                None,
            ),
        )
    }

    fn step1b(w: &[char]) -> Vec<char> {
        if ends(w, "ied") {
            let stem = &w[..w.len() - 3];
            return cat(stem, if w.len() == 4 { "ie" } else { "i" });
        }
        if ends(w, "eed") {
            let stem = &w[..w.len() - 3];
            return if measure(stem) > 0 {
                cat(stem, "ee")
            } else {
                w.to_vec()
            };
        }
        let mut inter = None;
        for suffix in ["ed", "ing"] {
            if ends(w, suffix) {
                let stem = &w[..w.len() - suffix.len()];
                if contains_vowel(stem) {
                    inter = Some(stem);
                    break;
                }
            }
        }
        let Some(stem) = inter else {
            return w.to_vec();
        };
        let last = *stem.last().expect("a stem with a vowel is not empty");
        let not_lsz = move |_: &[char]| !matches!(last, 'l' | 's' | 'z');
        let m1_cvc = |s: &[char]| measure(s) == 1 && ends_cvc(s);
        apply_rules(
            stem,
            &[
                ("at", "ate".into(), None),
                ("bl", "ble".into(), None),
                ("iz", "ize".into(), None),
                ("*d", last.to_string(), Some(&not_lsz)),
                ("", "e".into(), Some(&m1_cvc)),
            ],
        )
    }

    fn step1c(w: &[char]) -> Vec<char> {
        let cond = |s: &[char]| s.len() > 1 && consonants(s)[s.len() - 1];
        apply_rules(w, &[("y", "i".into(), Some(&cond))])
    }

    fn positive(s: &[char]) -> bool {
        measure(s) > 0
    }

    fn step2(w: &[char]) -> Vec<char> {
        if ends(w, "alli") && positive(&w[..w.len() - 4]) {
            return step2(&cat(&w[..w.len() - 4], "al"));
        }
        let mut list = rules(
            &[
                ("ational", "ate"),
                ("tional", "tion"),
                ("enci", "ence"),
                ("anci", "ance"),
                ("izer", "ize"),
                ("bli", "ble"),
                ("alli", "al"),
                ("entli", "ent"),
                ("eli", "e"),
                ("ousli", "ous"),
                ("ization", "ize"),
                ("ation", "ate"),
                ("ator", "ate"),
                ("alism", "al"),
                ("iveness", "ive"),
                ("fulness", "ful"),
                ("ousness", "ous"),
                ("aliti", "al"),
                ("iviti", "ive"),
                ("biliti", "ble"),
                ("fulli", "ful"),
            ],
            Some(&positive),
        );
        // nltk tests the measure of the word minus "ogi" (the stem plus its "l").
        let logi = |_: &[char]| w.len() >= 3 && positive(&w[..w.len() - 3]);
        list.push(("logi", "log".into(), Some(&logi)));
        apply_rules(w, &list)
    }

    fn step3(w: &[char]) -> Vec<char> {
        apply_rules(
            w,
            &rules(
                &[
                    ("icate", "ic"),
                    ("ative", ""),
                    ("alize", "al"),
                    ("iciti", "ic"),
                    ("ical", "ic"),
                    ("ful", ""),
                    ("ness", ""),
                ],
                Some(&positive),
            ),
        )
    }

    fn step4(w: &[char]) -> Vec<char> {
        let gt1 = |s: &[char]| measure(s) > 1;
        let ion = |s: &[char]| measure(s) > 1 && matches!(s.last(), Some('s' | 't'));
        let mut list = rules(
            &[
                ("al", ""),
                ("ance", ""),
                ("ence", ""),
                ("er", ""),
                ("ic", ""),
                ("able", ""),
                ("ible", ""),
                ("ant", ""),
                ("ement", ""),
                ("ment", ""),
                ("ent", ""),
            ],
            Some(&gt1),
        );
        list.push(("ion", String::new(), Some(&ion)));
        list.extend(rules(
            &[
                ("ou", ""),
                ("ism", ""),
                ("ate", ""),
                ("iti", ""),
                ("ous", ""),
                ("ive", ""),
                ("ize", ""),
            ],
            Some(&gt1),
        ));
        apply_rules(w, &list)
    }

    fn step5a(w: &[char]) -> Vec<char> {
        if ends(w, "e") {
            let stem = &w[..w.len() - 1];
            let m = measure(stem);
            if m > 1 || (m == 1 && !ends_cvc(stem)) {
                return stem.to_vec();
            }
        }
        w.to_vec()
    }

    fn step5b(w: &[char]) -> Vec<char> {
        let cond = |_: &[char]| !w.is_empty() && measure(&w[..w.len() - 1]) > 1;
        apply_rules(w, &[("ll", "l".into(), Some(&cond))])
    }

    /// `PorterStemmer().stem(word)` (lower-cases first).
    pub fn stem(word: &str) -> String {
        let lower = word.to_lowercase();
        let irregular = match lower.as_str() {
            "sky" | "skies" => Some("sky"),
            "dying" => Some("die"),
            "lying" => Some("lie"),
            "tying" => Some("tie"),
            "news" => Some("news"),
            "innings" | "inning" => Some("inning"),
            "outings" | "outing" => Some("outing"),
            "cannings" | "canning" => Some("canning"),
            "howe" => Some("howe"),
            "proceed" => Some("proceed"),
            "exceed" => Some("exceed"),
            "succeed" => Some("succeed"),
            _ => None,
        };
        if let Some(s) = irregular {
            return s.to_string();
        }
        // nltk compares the length of the word as given, before lower-casing.
        if word.chars().count() <= 2 {
            return lower;
        }
        let mut w: Vec<char> = lower.chars().collect();
        for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
            w = step(&w);
        }
        w.into_iter().collect()
    }
}

/// nltk's `_match_enums`: from the last hypothesis word backwards, each takes the last
/// still-free reference position holding the same string. Returns (hyp index, ref index) pairs
/// of the original positions and removes the matched words from both lists.
fn match_enums(
    hyp: &mut Vec<(usize, String)>,
    reference: &mut Vec<(usize, String)>,
) -> Vec<(usize, usize)> {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, (_, w)) in reference.iter().enumerate() {
        positions.entry(w.as_str()).or_default().push(j);
    }
    let mut matches = Vec::new();
    let mut hyp_used = vec![false; hyp.len()];
    let mut ref_used = vec![false; reference.len()];
    for i in (0..hyp.len()).rev() {
        if let Some(j) = positions.get_mut(hyp[i].1.as_str()).and_then(|p| p.pop()) {
            hyp_used[i] = true;
            ref_used[j] = true;
            matches.push((hyp[i].0, reference[j].0));
        }
    }
    let mut k = 0;
    hyp.retain(|_| {
        k += 1;
        !hyp_used[k - 1]
    });
    let mut k = 0;
    reference.retain(|_| {
        k += 1;
        !ref_used[k - 1]
    });
    matches
}

/// nltk's `_count_chunks` over matches sorted by hypothesis position.
fn count_chunks(matches: &[(usize, usize)]) -> usize {
    1 + matches
        .windows(2)
        .filter(|p| !(p[1].0 == p[0].0 + 1 && p[1].1 == p[0].1 + 1))
        .count()
}

/// `single_meteor_score(reference, hypothesis, wordnet=<no synsets>)` on pre-tokenized words
/// (lower-cased here).
pub fn meteor_tokens<H: AsRef<str>, R: AsRef<str>>(reference: &[R], hypothesis: &[H]) -> f64 {
    let mut hyp: Vec<(usize, String)> = hypothesis
        .iter()
        .map(|w| w.as_ref().to_lowercase())
        .enumerate()
        .collect();
    let mut refs: Vec<(usize, String)> = reference
        .iter()
        .map(|w| w.as_ref().to_lowercase())
        .enumerate()
        .collect();
    let (translation_length, reference_length) = (hyp.len(), refs.len());
    let mut matches = match_enums(&mut hyp, &mut refs);
    // Stem stage on what is left, keeping the original positions.
    let mut hyp_stems: Vec<(usize, String)> =
        hyp.iter().map(|(i, w)| (*i, porter::stem(w))).collect();
    let mut ref_stems: Vec<(usize, String)> =
        refs.iter().map(|(j, w)| (*j, porter::stem(w))).collect();
    matches.extend(match_enums(&mut hyp_stems, &mut ref_stems));
    matches.sort_by_key(|m| m.0);
    let m = matches.len();
    if m == 0 || translation_length == 0 || reference_length == 0 {
        return 0.0;
    }
    let precision = m as f64 / translation_length as f64;
    let recall = m as f64 / reference_length as f64;
    let fmean = (precision * recall) / (ALPHA * precision + (1.0 - ALPHA) * recall);
    let frag = count_chunks(&matches) as f64 / m as f64;
    let penalty = GAMMA * frag.powf(BETA);
    (1.0 - penalty) * fmean
}

/// Sentence METEOR (0-1) of two strings split on whitespace (Python's `str.split()`).
pub fn sentence_meteor(hypothesis: &str, reference: &str) -> f64 {
    let h: Vec<&str> = py_split(hypothesis).collect();
    let r: Vec<&str> = py_split(reference).collect();
    meteor_tokens(&r, &h)
}

/// Corpus METEOR: the mean of the sentence scores (nltk has no corpus-level METEOR).
#[derive(Debug, Clone, PartialEq)]
pub struct MeteorScore {
    pub score: f64,
    pub sentences: usize,
}

impl MeteorScore {
    pub fn signature(&self) -> String {
        format!(
            "nrefs:1|case:lc|tok:whitespace|match:exact+porter|wordnet:no|alpha:0.9|beta:3|gamma:0.5|version:{SIGNATURE_VERSION}"
        )
    }
}

impl std::fmt::Display for MeteorScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "METEOR|{} = {:.4} (mean of {} sentences)",
            self.signature(),
            self.score,
            self.sentences
        )
    }
}

pub fn corpus_meteor<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[R],
) -> Result<MeteorScore> {
    check_lengths(hypotheses.len(), references.len())?;
    let sum: f64 = hypotheses
        .iter()
        .zip(references)
        .map(|(h, r)| sentence_meteor(h.as_ref(), r.as_ref()))
        .sum();
    let n = hypotheses.len();
    Ok(MeteorScore {
        score: if n == 0 { 0.0 } else { sum / n as f64 },
        sentences: n,
    })
}

#[cfg(test)]
mod tests {
    use super::porter::stem;
    use super::*;

    #[test]
    fn porter_examples_from_the_paper() {
        // Porter (1980) examples, as nltk's NLTK_EXTENSIONS mode stems them.
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("dying", "die"),
            ("controll", "control"),
            ("is", "is"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }

    #[test]
    fn hand_worked_meteor() {
        // 3 of 4 words match in one chunk: P = 3/4, R = 3/4, Fmean = 3/4,
        // penalty = 0.5 * (1/3)^3.
        let s = sentence_meteor("the cat sat", "the cat sat down");
        let p = 3.0 / 3.0;
        let r = 3.0 / 4.0;
        let fmean = p * r / (ALPHA * p + (1.0 - ALPHA) * r);
        let want = (1.0 - 0.5 * (1.0f64 / 3.0).powi(3)) * fmean;
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
        // Stem match: "cats" ~ "cat"; swapped order gives two chunks.
        let s = sentence_meteor("Sat cats", "cat sat");
        let want = (1.0 - 0.5 * 1.0f64.powi(3)) * 1.0;
        assert!((s - want).abs() < 1e-12, "{s} vs {want}");
        assert_eq!(sentence_meteor("", "a b"), 0.0);
        assert_eq!(sentence_meteor("x y", "a b"), 0.0);
    }
}
