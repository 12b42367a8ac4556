//! Next-token selection: greedy, or temperature -> top-k -> top-p sampling (the order of
//! transformers' logits processors) from a seeded RNG, restricted to an allowed-token mask.

use crate::{ModelError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::InvalidArgument(format!(
                "temperature {} must be finite and >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::InvalidArgument(format!(
                "top_p {} must lie in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self::greedy()
    }
}

/// Which token ids a step may produce.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum TokenMask {
    #[default]
    All,
    /// The union of these id ranges.
    Ranges(Vec<Range<u32>>),
}

impl TokenMask {
    pub fn range(r: Range<u32>) -> Self {
        Self::Ranges(vec![r])
    }

    /// Adds a range (for example a separator or end token next to the unit tokens).
    pub fn with(self, r: Range<u32>) -> Self {
        match self {
            Self::All => Self::All,
            Self::Ranges(mut v) => {
                v.push(r);
                Self::Ranges(v)
            }
        }
    }

    pub fn allows(&self, id: u32) -> bool {
        match self {
            Self::All => true,
            Self::Ranges(v) => v.iter().any(|r| r.contains(&id)),
        }
    }

    /// The smallest id range covering every allowed id within `0..vocab`: only these logits need
    /// computing.
    pub fn span(&self, vocab: u32) -> Range<u32> {
        match self {
            Self::All => 0..vocab,
            Self::Ranges(v) => {
                let start = v.iter().map(|r| r.start).min().unwrap_or(0).min(vocab);
                let end = v.iter().map(|r| r.end).max().unwrap_or(0).min(vocab);
                start..end.max(start)
            }
        }
    }
}

/// Per-stream sampler state (the RNG).
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(cfg: SamplingConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Ok(Self { cfg, rng })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.cfg
    }

    /// Picks a token from `logits`, whose first entry is token id `offset`.
    pub fn sample(&mut self, logits: &[f32], offset: u32, mask: &TokenMask) -> Result<u32> {
        let allowed = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (offset + i as u32, l))
            .filter(|&(id, l)| mask.allows(id) && !l.is_nan());
        if self.cfg.temperature == 0.0 {
            let mut best: Option<(u32, f32)> = None;
            for (id, l) in allowed {
                // The first of equal maxima wins, as torch.argmax.
                if best.is_none_or(|(_, b)| l > b) {
                    best = Some((id, l));
                }
            }
            return best.map(|(id, _)| id).ok_or_else(no_candidate);
        }
        let t = self.cfg.temperature;
        let mut cand: Vec<(u32, f32)> = allowed.map(|(id, l)| (id, l / t)).collect();
        if cand.is_empty() {
            return Err(no_candidate());
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 && self.cfg.top_k < cand.len() {
            cand.truncate(self.cfg.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|&(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
        }
        let mut u: f32 = self.rng.random();
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return Ok(cand[i].0);
            }
            u -= p;
        }
        Ok(cand[probs.len() - 1].0)
    }
}

fn no_candidate() -> ModelError {
    ModelError::InvalidArgument(
        "no token can be sampled: every allowed logit is NaN or the mask is empty".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> Sampler {
        Sampler::new(SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn greedy_respects_mask_and_offset() {
        let logits = [0.1, 5.0, 0.3, 2.0];
        let mut s = sampler(0.0, 0, 1.0, 0);
        assert_eq!(s.sample(&logits, 0, &TokenMask::All).unwrap(), 1);
        assert_eq!(s.sample(&logits, 10, &TokenMask::All).unwrap(), 11);
        assert_eq!(s.sample(&logits, 0, &TokenMask::range(2..4)).unwrap(), 3);
        assert!(s.sample(&logits, 0, &TokenMask::range(7..9)).is_err());
        assert!(s.sample(&[f32::NAN; 3], 0, &TokenMask::All).is_err());
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let mut s = sampler(1.0, 1, 1.0, 3);
        let mut g = sampler(0.0, 0, 1.0, 0);
        assert_eq!(
            s.sample(&logits, 0, &TokenMask::All).unwrap(),
            g.sample(&logits, 0, &TokenMask::All).unwrap()
        );
        let draw = |seed| {
            let mut s = sampler(1.0, 0, 0.9, seed);
            (0..20)
                .map(|_| s.sample(&logits, 0, &TokenMask::All).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn frequencies_follow_softmax_and_top_p_cuts_the_tail() {
        // p = softmax([ln 6, ln 3, ln 1]) = [0.6, 0.3, 0.1]
        let logits = [6f32.ln(), 3f32.ln(), 0.0];
        let mut s = sampler(1.0, 0, 1.0, 1);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits, 0, &TokenMask::All).unwrap() as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.6, 0.3, 0.1]) {
            assert!((*c as f64 / n as f64 - p).abs() < 0.015, "{counts:?}");
        }
        // top_p 0.8: the nucleus is {0, 1} (0.6 + 0.3 >= 0.8); token 2 never appears.
        let mut s = sampler(1.0, 0, 0.8, 1);
        for _ in 0..2000 {
            assert_ne!(s.sample(&logits, 0, &TokenMask::All).unwrap(), 2);
        }
    }

    #[test]
    fn mask_span() {
        let m = TokenMask::range(100..200).with(5..6);
        assert_eq!(m.span(1000), 5..200);
        assert!(m.allows(5) && !m.allows(6) && m.allows(150));
        assert_eq!(TokenMask::All.span(10), 0..10);
        assert!(SamplingConfig {
            top_p: 0.0,
            ..SamplingConfig::greedy()
        }
        .validate()
        .is_err());
    }
}
