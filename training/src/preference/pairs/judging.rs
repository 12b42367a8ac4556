//! Judging the candidates of `tolk-train pairs`: the judge's scale, the score of one candidate
//! and the best-vs-worst decision.

use tolk_models::audio::features::MfccConfig;
use tolk_models::translator::{Stop, TranslationOutput};
use tolk_models::Result;

use serde::{Deserialize, Serialize};

use super::back_translation::{back_translate, Back};
use super::records::{CandidateRecord, Decision, Invalid};
use super::sampling::{completion_ids, Ctx};
use crate::corpus::manifest::ManifestEntry;
use crate::eval::asr;
use crate::metrics::{bleu, mcd, meteor, wer};

/// What scores a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Judge {
    /// Sentence BLEU / 100 (sacreBLEU defaults, effective order); higher is better.
    Bleu,
    /// Sentence METEOR (nltk, exact + stem); higher is better.
    Meteor,
    /// Word error rate (jiwer), capped at 1; lower is better.
    Wer,
    /// Mel-cepstral distortion in dB (DTW), capped at `--mcd-worst`; lower is better.
    Mcd,
}

impl Judge {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bleu => "bleu",
            Self::Meteor => "meteor",
            Self::Wer => "wer",
            Self::Mcd => "mcd",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Bleu | Self::Meteor)
    }

    /// The worst value of the judge's scale: the score of an invalid candidate.
    pub fn worst(self, mcd_worst: f64) -> f64 {
        match self {
            Self::Bleu | Self::Meteor => 0.0,
            Self::Wer => 1.0,
            Self::Mcd => mcd_worst,
        }
    }

    /// The text score of `hypothesis` against `reference` (not for MCD).
    pub fn text_score(self, hypothesis: &str, reference: &str) -> f64 {
        match self {
            Self::Bleu => bleu::sentence_bleu(hypothesis, reference).score / 100.0,
            Self::Meteor => meteor::sentence_meteor(hypothesis, reference),
            Self::Wer => wer::sentence_counts(hypothesis, reference).wer().min(1.0),
            Self::Mcd => f64::NAN,
        }
    }

    /// `a - b` oriented so that a positive value means `a` is better.
    pub fn advantage(self, a: f64, b: f64) -> f64 {
        if self.higher_is_better() {
            a - b
        } else {
            b - a
        }
    }
}

/// What the candidates are scored against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JudgeAgainst {
    /// The candidate translated back to the source language, against the source.
    BackTranslation,
    /// The candidate itself against the manifest's target side (paired S2ST data).
    Reference,
}
/// The MCD of `speech` against `reference`, or None when one is shorter than a frame.
fn mcd_score(reference: &[f32], speech: &[f32]) -> Option<f64> {
    match mcd::mcd_from_audio(reference, speech, MfccConfig::default()) {
        Ok(m) => Some(m.mcd),
        Err(e) => {
            tracing::warn!("no MCD: {e}");
            None
        }
    }
}

/// Scores one candidate.
pub(super) fn score_candidate(
    ctx: &Ctx<'_>,
    out: &TranslationOutput,
    source_text: &str,
    normalize: bool,
    reference_audio: Option<&[f32]>,
    entry: &ManifestEntry,
) -> Result<CandidateRecord> {
    let s = ctx.settings;
    let judge = s.judge;
    let (ids, retokenized) = completion_ids(ctx.tr, out)?;
    let mut record = CandidateRecord {
        text: out.text.clone(),
        ids,
        units: out.units.len(),
        stop: out.stop.into(),
        text_truncated: out.text_truncated,
        retokenized,
        back: None,
        score: judge.worst(s.mcd_worst_db),
        invalid: None,
    };
    let norm = |t: &str| {
        if normalize {
            asr::normalize_for_asr_bleu(t)
        } else {
            t.to_string()
        }
    };
    let invalid = match out.stop {
        Stop::MaxTokens => Some(Invalid::MaxTokens),
        Stop::CacheFull => Some(Invalid::CacheFull),
        Stop::End => None,
    };
    let score: std::result::Result<f64, Invalid> = if let Some(why) = invalid {
        Err(why)
    } else {
        match s.judged_against {
            JudgeAgainst::Reference => {
                let target = entry.target_text.as_deref().unwrap_or_default();
                if judge == Judge::Mcd {
                    let reference = reference_audio.unwrap_or_default();
                    if out.units.is_empty() {
                        Err(Invalid::EmptyCandidate)
                    } else {
                        let speech = ctx.timed("vocode", || {
                            ctx.tr.synthesize(&out.units, ctx.direction.tgt())
                        })?;
                        ctx.timed("judge", || mcd_score(reference, &speech))
                            .ok_or(Invalid::EmptyCandidate)
                    }
                } else if out.text.trim().is_empty() {
                    Err(Invalid::EmptyCandidate)
                } else {
                    Ok(ctx.timed("judge", || judge.text_score(&out.text, target)))
                }
            }
            JudgeAgainst::BackTranslation => match back_translate(ctx, out)? {
                Back::Empty => Err(Invalid::EmptyBackTranslation),
                Back::TooLong => Err(Invalid::BackTranslationTooLong),
                Back::Done { text, speech } => {
                    record.back = Some(text.clone());
                    if judge == Judge::Mcd {
                        let reference = reference_audio.unwrap_or_default();
                        ctx.timed("judge", || mcd_score(reference, &speech))
                            .ok_or(Invalid::EmptyBackTranslation)
                    } else {
                        Ok(ctx.timed("judge", || {
                            judge.text_score(&norm(&text), &norm(source_text))
                        }))
                    }
                }
            },
        }
    };
    match score {
        Ok(v) if v.is_finite() => {
            record.score = if judge == Judge::Mcd {
                v.min(s.mcd_worst_db)
            } else {
                v
            };
        }
        Ok(_) => record.invalid = Some(Invalid::NonFiniteScore),
        Err(why) => record.invalid = Some(why),
    }
    Ok(record)
}

/// Ranks candidates best first (valid before invalid, then by score, then by index) and
/// decides on the pair.
pub(super) fn decide(
    judge: Judge,
    delta: f64,
    cands: &[CandidateRecord],
) -> (Decision, Option<usize>, Option<usize>, Option<f64>) {
    if cands.windows(2).all(|w| w[0].ids == w[1].ids) {
        return (Decision::Identical, None, None, None);
    }
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&cands[a], &cands[b]);
        ca.invalid
            .is_some()
            .cmp(&cb.invalid.is_some())
            .then_with(|| {
                // Better first.
                judge
                    .advantage(cb.score, ca.score)
                    .partial_cmp(&0.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .then(a.cmp(&b))
    });
    let (best, worst) = (order[0], order[order.len() - 1]);
    let margin = judge
        .advantage(cands[best].score, cands[worst].score)
        .max(0.0);
    let decision = if cands[best].invalid.is_some() {
        Decision::NoValidCandidate
    } else if margin > delta {
        Decision::Kept
    } else {
        Decision::BelowDelta
    };
    (decision, Some(best), Some(worst), Some(margin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::pairs::records::StopReason;

    fn cand(ids: &[u32], score: f64, invalid: Option<Invalid>) -> CandidateRecord {
        CandidateRecord {
            text: String::new(),
            ids: ids.to_vec(),
            units: 0,
            stop: if invalid == Some(Invalid::MaxTokens) {
                StopReason::MaxTokens
            } else {
                StopReason::End
            },
            text_truncated: false,
            retokenized: false,
            back: None,
            score,
            invalid,
        }
    }

    #[test]
    fn ranking_and_decisions() {
        // BLEU: higher is better; best with worst among three.
        let c = [
            cand(&[1], 0.3, None),
            cand(&[2], 0.7, None),
            cand(&[3], 0.1, None),
        ];
        let (d, b, w, m) = decide(Judge::Bleu, 0.1, &c);
        assert_eq!((d, b, w), (Decision::Kept, Some(1), Some(2)));
        assert!((m.unwrap() - 0.6).abs() < 1e-12);
        // WER: lower is better.
        let (d, b, w, _) = decide(Judge::Wer, 0.1, &c);
        assert_eq!((d, b, w), (Decision::Kept, Some(2), Some(1)));
        // A truncated candidate with the worst score is never chosen, even when the valid one
        // is no better: no valid candidate wins over it, the margin is 0.
        let c = [
            cand(&[1], 0.0, Some(Invalid::MaxTokens)),
            cand(&[2], 0.0, None),
        ];
        let (d, b, w, m) = decide(Judge::Bleu, 0.1, &c);
        assert_eq!(
            (d, b, w, m),
            (Decision::BelowDelta, Some(1), Some(0), Some(0.0))
        );
        let c = [
            cand(&[1], 0.0, Some(Invalid::MaxTokens)),
            cand(&[2], 0.5, None),
        ];
        assert_eq!(decide(Judge::Bleu, 0.1, &c).0, Decision::Kept);
        let c = [
            cand(&[1], 0.0, Some(Invalid::MaxTokens)),
            cand(&[2], 0.0, Some(Invalid::EmptyBackTranslation)),
        ];
        assert_eq!(decide(Judge::Bleu, 0.1, &c).0, Decision::NoValidCandidate);
        // Identical ids: no pair, no margin.
        let c = [cand(&[4, 5], 0.2, None), cand(&[4, 5], 0.2, None)];
        assert_eq!(
            decide(Judge::Bleu, 0.1, &c),
            (Decision::Identical, None, None, None)
        );
        // Exactly delta is not enough.
        let c = [cand(&[1], 0.25, None), cand(&[2], 0.5, None)];
        assert_eq!(decide(Judge::Meteor, 0.25, &c).0, Decision::BelowDelta);
        // MCD in dB: lower is better.
        let c = [cand(&[1], 7.5, None), cand(&[2], 9.0, None)];
        let (d, b, _, m) = decide(Judge::Mcd, 1.0, &c);
        assert_eq!((d, b), (Decision::Kept, Some(0)));
        assert!((m.unwrap() - 1.5).abs() < 1e-12);
    }

    #[test]
    fn judge_scales() {
        assert!((Judge::Bleu.text_score("a b c d", "a b c d") - 1.0).abs() < 1e-12);
        assert_eq!(Judge::Bleu.text_score("", "a b c d"), 0.0);
        assert_eq!(Judge::Wer.text_score("", "a b"), 1.0);
        // 4 insertions against 1 word: jiwer says 4, the judge caps it at the worst value, 1.
        assert_eq!(Judge::Wer.text_score("a b c d e", "a"), 1.0);
        assert_eq!(Judge::Wer.text_score("a c", "a b"), 0.5);
        assert_eq!(Judge::Meteor.text_score("", "a b"), 0.0);
        assert_eq!(Judge::Mcd.worst(40.0), 40.0);
        assert!(Judge::Bleu.higher_is_better() && !Judge::Wer.higher_is_better());
    }
}
