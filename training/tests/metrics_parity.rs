//! Metric parity: Tolk's BLEU, chrF, METEOR, WER and MCD (`tolk_training::metrics`) against
//! sacrebleu 2.6.0, nltk 3.10.4 (no WordNet), jiwer 4.0.0 and the numpy MCD of
//! `tests/reference/metrics.py`, on the same inputs. Prints the worst differences.

use serde::Deserialize;
use std::collections::BTreeMap;
use tolk_training::metrics::{bleu, chrf, mcd, meteor, wer};

#[derive(Deserialize)]
struct Pair {
    hyp: String,
    #[serde(rename = "ref")]
    reference: String,
    sentence_bleu: f64,
    sentence_chrf: f64,
    meteor: f64,
    /// jiwer's value as Python's `repr`, parsed exactly here.
    wer: String,
}

#[derive(Deserialize)]
struct Corpus {
    bleu: f64,
    bleu_counts: Vec<usize>,
    bleu_totals: Vec<usize>,
    bleu_sys_len: usize,
    bleu_ref_len: usize,
    chrf: f64,
    wer: String,
    meteor_mean: f64,
}

#[derive(Deserialize)]
struct McdCase {
    reference: Vec<Vec<f64>>,
    synthesized: Vec<Vec<f64>>,
    mcd: f64,
    path_len: usize,
}

#[derive(Deserialize)]
struct Reference {
    pairs: Vec<Pair>,
    corpus: Corpus,
    stems: BTreeMap<String, String>,
    mcd: Vec<McdCase>,
}

fn load() -> Reference {
    let path = tolk_tests::reference_dir("metrics").join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make reference`", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Tracks the worst absolute difference and where it happened.
struct Worst(&'static str, f64, String);

impl Worst {
    fn new(name: &'static str) -> Self {
        Self(name, 0.0, String::new())
    }
    fn see(&mut self, ours: f64, theirs: f64, what: impl FnOnce() -> String) {
        let d = (ours - theirs).abs();
        if d > self.1 || d.is_nan() {
            self.1 = d;
            self.2 = format!("{} (tolk {ours}, reference {theirs})", what());
        }
    }
    fn check(&self, tol: f64) {
        println!("{}: worst difference {:.3e} at {}", self.0, self.1, self.2);
        assert!(
            self.1 <= tol,
            "{} differs by {} > {tol}: {}",
            self.0,
            self.1,
            self.2
        );
    }
}

fn pairs(r: &Reference) -> (Vec<&str>, Vec<&str>) {
    (
        r.pairs.iter().map(|p| p.hyp.as_str()).collect(),
        r.pairs.iter().map(|p| p.reference.as_str()).collect(),
    )
}

#[test]
fn bleu_matches_sacrebleu() {
    let r = load();
    let (hyps, refs) = pairs(&r);
    let c = bleu::corpus_bleu(&hyps, &refs).unwrap();
    assert_eq!(c.stats.correct.to_vec(), r.corpus.bleu_counts);
    assert_eq!(c.stats.total.to_vec(), r.corpus.bleu_totals);
    assert_eq!(
        (c.stats.hyp_len, c.stats.ref_len),
        (r.corpus.bleu_sys_len, r.corpus.bleu_ref_len)
    );
    let mut corpus = Worst::new("corpus BLEU");
    corpus.see(c.score, r.corpus.bleu, || format!("{} pairs", hyps.len()));
    corpus.check(0.01);
    let mut sentence = Worst::new("sentence BLEU");
    for p in &r.pairs {
        let s = bleu::sentence_bleu(&p.hyp, &p.reference);
        sentence.see(s.score, p.sentence_bleu, || {
            format!("{:?} vs {:?}", p.hyp, p.reference)
        });
    }
    sentence.check(0.01);
    println!("{c}");
}

#[test]
fn chrf_matches_sacrebleu() {
    let r = load();
    let (hyps, refs) = pairs(&r);
    let mut corpus = Worst::new("corpus chrF");
    corpus.see(
        chrf::corpus_chrf(&hyps, &refs).unwrap().score,
        r.corpus.chrf,
        String::new,
    );
    corpus.check(0.01);
    let mut sentence = Worst::new("sentence chrF");
    for p in &r.pairs {
        let s = chrf::sentence_chrf(&p.hyp, &p.reference).score;
        sentence.see(s, p.sentence_chrf, || {
            format!("{:?} vs {:?}", p.hyp, p.reference)
        });
    }
    sentence.check(0.01);
}

#[test]
fn porter_stems_match_nltk() {
    let r = load();
    let wrong: Vec<String> = r
        .stems
        .iter()
        .filter(|(w, s)| meteor::porter::stem(w) != **s)
        .map(|(w, s)| format!("{w}: tolk {} nltk {s}", meteor::porter::stem(w)))
        .collect();
    println!("Porter: {} of {} words differ", wrong.len(), r.stems.len());
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn meteor_matches_nltk() {
    let r = load();
    let mut worst = Worst::new("METEOR");
    for p in &r.pairs {
        let s = meteor::sentence_meteor(&p.hyp, &p.reference);
        worst.see(s, p.meteor, || format!("{:?} vs {:?}", p.hyp, p.reference));
    }
    worst.check(1e-4);
    let (hyps, refs) = pairs(&r);
    let mut mean = Worst::new("mean METEOR");
    mean.see(
        meteor::corpus_meteor(&hyps, &refs).unwrap().score,
        r.corpus.meteor_mean,
        String::new,
    );
    mean.check(1e-4);
}

#[test]
fn wer_matches_jiwer_exactly() {
    let r = load();
    let mut mismatches = Vec::new();
    for p in &r.pairs {
        let w = wer::sentence_counts(&p.hyp, &p.reference).wer();
        let theirs: f64 = p.wer.parse().expect("jiwer WER");
        if w != theirs {
            mismatches.push(format!(
                "{:?} vs {:?}: tolk {w} jiwer {}",
                p.hyp, p.reference, p.wer
            ));
        }
    }
    let (hyps, refs) = pairs(&r);
    let c = wer::corpus_wer(&hyps, &refs).unwrap();
    println!(
        "WER: {} of {} sentence WERs differ; corpus tolk {} jiwer {}",
        mismatches.len(),
        r.pairs.len(),
        c.wer,
        r.corpus.wer
    );
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert_eq!(
        c.wer,
        r.corpus.wer.parse::<f64>().expect("jiwer corpus WER")
    );
}

#[test]
fn mcd_matches_numpy_dtw() {
    let r = load();
    let mut worst = Worst::new("MCD");
    for (i, case) in r.mcd.iter().enumerate() {
        let m = mcd::mcd(&case.reference, &case.synthesized).unwrap();
        assert_eq!(m.path_len, case.path_len, "case {i}: DTW path length");
        worst.see(m.mcd, case.mcd, || {
            format!(
                "case {i} ({} x {} frames)",
                case.reference.len(),
                case.synthesized.len()
            )
        });
    }
    worst.check(1e-4);
}
