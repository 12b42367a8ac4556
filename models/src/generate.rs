//! The decode loop: after a prefill, one step per token for `B` rows in lockstep, each row under
//! its own [`RowRules`] (what it may produce next, what a token does to it). Plain generation
//! ([`generate`]), the translator's chain-of-modality decoding of one utterance and its batched
//! sampling of candidates (`translator::decode`, `translator::batch`) all run through
//! [`decode_rows`].
//!
//! A step computes the logits of the allowed vocabulary slices only (narrow matrix products
//! instead of the full LM head when a phase is constrained), picks every row's token with its
//! own sampler, and feeds all rows at once as `[B, 1]` tokens. A finished row keeps its slot (it
//! is fed a padding token and its logits are never read), so all rows share one cache length.

use crate::llama::{KvCache, Llama};
use crate::sampling::{Sampler, TokenMask};
use crate::{ModelError, Result};
use std::ops::Range;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What a row does at the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Sample among the vocabulary slices `ranges[i]` of [`decode_rows`].
    Sample(usize),
    /// Take this token without sampling (a budget forced a phase switch).
    Force(u32),
    /// The row is finished.
    Done,
}

/// The decoding rules of one row.
pub trait RowRules {
    /// The row's choice for the next token.
    fn next(&mut self) -> Result<Choice>;
    /// The row's sampler.
    fn sampler(&mut self) -> &mut Sampler;
    /// The token taken, with its log-probability under the slice's softmax when it was sampled
    /// (None when forced). Returns true when the row is finished (the token is not fed).
    fn accept(&mut self, token: u32, logprob: Option<f64>) -> Result<bool>;
    /// The cache filled up while the row was still running.
    fn cache_full(&mut self);
}

/// Runs the rows to completion. `last` holds each row's last hidden state `[B, hidden]` after
/// the prefill, `cache` the rows' keys and values (`B` rows), `ranges` the vocabulary slices the
/// rows' [`Choice::Sample`] refer to, and `pad` the token fed to finished rows.
pub fn decode_rows<R: RowRules>(
    llm: &Llama,
    cache: &mut KvCache,
    mut last: Tensor,
    ranges: &[Vec<Range<u32>>],
    rows: &mut [R],
    pad: u32,
) -> Result<()> {
    let b = rows.len();
    if b == 0 {
        return Err(ModelError::InvalidArgument(
            "a decode needs at least one row".into(),
        ));
    }
    let device = llm.device();
    let mut done = vec![false; b];
    let mut next: Vec<Option<(u32, Option<f64>)>> = vec![None; b];
    let mut want: Vec<Vec<usize>> = vec![Vec::new(); ranges.len()];
    loop {
        next.iter_mut().for_each(|n| *n = None);
        want.iter_mut().for_each(Vec::clear);
        for (i, row) in rows.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match row.next()? {
                Choice::Done => done[i] = true,
                Choice::Force(t) => next[i] = Some((t, None)),
                Choice::Sample(k) => want
                    .get_mut(k)
                    .ok_or_else(|| {
                        ModelError::InvalidArgument(format!("no vocabulary slice set {k}"))
                    })?
                    .push(i),
            }
        }
        for (k, who) in want.iter().enumerate() {
            if who.is_empty() {
                continue;
            }
            let hidden = if who.len() == b {
                last.shallow_clone()
            } else {
                let idx: Vec<i64> = who.iter().map(|&i| i as i64).collect();
                last.f_index_select(0, &Tensor::from_slice(&idx).f_to_device(device)?)?
            };
            let logits = sliced_logits(llm, &hidden, &ranges[k])?;
            let width: usize = ranges[k].iter().map(|r| (r.end - r.start) as usize).sum();
            for (j, &i) in who.iter().enumerate() {
                let row_logits = &logits[j * width..(j + 1) * width];
                let tok = pick_from_logits(rows[i].sampler(), row_logits, &ranges[k])?;
                next[i] = Some((tok, Some(token_logprob(row_logits, &ranges[k], tok))));
            }
        }
        for (i, row) in rows.iter_mut().enumerate() {
            if let Some((tok, lp)) = next[i] {
                if row.accept(tok, lp)? {
                    done[i] = true;
                }
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(());
        }
        if cache.len() >= cache.capacity() {
            for (row, _) in rows.iter_mut().zip(&done).filter(|(_, &d)| !d) {
                row.cache_full();
            }
            return Ok(());
        }
        let step: Vec<u32> = next
            .iter()
            .zip(&done)
            .map(|(n, &d)| match (n, d) {
                (Some((t, _)), false) => *t,
                _ => pad,
            })
            .collect();
        let h = if b == 1 {
            llm.forward_hidden_ids(&step, cache)?
        } else {
            let ids: Vec<i64> = step.iter().map(|&t| i64::from(t)).collect();
            let tokens = Tensor::from_slice(&ids)
                .f_to_device(device)?
                .f_view([b as i64, 1])?;
            llm.forward_hidden(&tokens, Some(cache), None)?
        };
        last = h.f_select(1, 0)?;
    }
}

/// The vocabulary slices a mask allows, clipped to `vocab` (ascending, disjoint).
pub fn mask_ranges(mask: &TokenMask, vocab: u32) -> Vec<Range<u32>> {
    match mask {
        TokenMask::All => std::iter::once(0..vocab).collect(),
        TokenMask::Ranges(v) => v
            .iter()
            .map(|r| r.start.min(vocab)..r.end.min(vocab))
            .filter(|r| !r.is_empty())
            .collect(),
    }
}

/// Logits of `ranges` only for hidden states `[n, hidden]`, concatenated per row, as f32 on the
/// host (`n` rows of `sum of range lengths` values).
pub fn sliced_logits(llm: &Llama, hidden: &Tensor, ranges: &[Range<u32>]) -> Result<Vec<f32>> {
    let vocab = llm.config().vocab_size;
    let parts = ranges
        .iter()
        .map(|r| {
            if r.start == 0 && i64::from(r.end) == vocab {
                llm.logits(hidden)
            } else {
                llm.logits_range(hidden, r.start as i64, (r.end - r.start) as i64)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let all = if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_else(Tensor::new)
    } else {
        Tensor::f_cat(&parts, -1)?
    };
    let host = all
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&host)?)
}

/// Picks the next token from `logits` of the concatenated `ranges` (ascending, disjoint): the
/// sampler sees the slices in id order, so greedy ties and sampling draws are those of the full
/// masked vocabulary.
pub fn pick_from_logits(
    sampler: &mut Sampler,
    logits: &[f32],
    ranges: &[Range<u32>],
) -> Result<u32> {
    let mut i = sampler.sample(logits, 0, &TokenMask::All)?;
    for r in ranges {
        let n = r.end - r.start;
        if i < n {
            return Ok(r.start + i);
        }
        i -= n;
    }
    Err(ModelError::InvalidArgument(
        "sampled index outside the allowed ranges".into(),
    ))
}

/// Log-probability of `token` under the softmax of `logits` (the concatenated `ranges`).
pub fn token_logprob(logits: &[f32], ranges: &[Range<u32>], token: u32) -> f64 {
    let mut offset = 0usize;
    let mut index = None;
    for r in ranges {
        if r.contains(&token) {
            index = Some(offset + (token - r.start) as usize);
            break;
        }
        offset += (r.end - r.start) as usize;
    }
    let Some(i) = index.filter(|&i| i < logits.len()) else {
        return f64::NEG_INFINITY;
    };
    let max = logits
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return f64::NEG_INFINITY;
    }
    let lse = max
        + logits
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits[i] as f64 - lse
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation ends after any of these (the stop token is included in the output).
    pub stop_tokens: Vec<u32>,
    pub mask: TokenMask,
    /// Constrained phases: once this token is produced, later steps use this mask (chain of
    /// modality: `<|units|>` ends the text phase and starts the unit phase).
    pub phase_switch: Option<(u32, TokenMask)>,
}

impl GenerateOptions {
    /// Unconstrained generation of up to `max_new_tokens`, ending at any of `stop_tokens`.
    pub fn new(max_new_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            stop_tokens,
            mask: TokenMask::All,
            phase_switch: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    MaxTokens,
    CacheFull,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prefill of the prompt up to the first sampled token.
    pub prefill_secs: f64,
    /// Time of the decode steps after the first sampled token.
    pub decode_secs: f64,
}

impl Generation {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        (self.tokens.len().saturating_sub(1)) as f64 / self.decode_secs.max(1e-9)
    }
}

/// The rules of plain generation: one mask (switched once by `phase_switch`), stop tokens and
/// a token budget.
struct GenerateRow<'a, F: FnMut(u32)> {
    opts: &'a GenerateOptions,
    sampler: &'a mut Sampler,
    /// Which of the two slice sets (0: `mask`, 1: the switched mask) is in force.
    phase: usize,
    tokens: Vec<u32>,
    stop: StopReason,
    first_token_at: Option<Instant>,
    on_token: F,
}

impl<F: FnMut(u32)> RowRules for GenerateRow<'_, F> {
    fn next(&mut self) -> Result<Choice> {
        Ok(if self.opts.max_new_tokens == 0 {
            self.stop = StopReason::MaxTokens;
            Choice::Done
        } else {
            Choice::Sample(self.phase)
        })
    }

    fn sampler(&mut self) -> &mut Sampler {
        self.sampler
    }

    fn accept(&mut self, token: u32, _logprob: Option<f64>) -> Result<bool> {
        self.first_token_at.get_or_insert_with(Instant::now);
        self.tokens.push(token);
        (self.on_token)(token);
        if self.opts.stop_tokens.contains(&token) {
            self.stop = StopReason::StopToken;
            return Ok(true);
        }
        if self.tokens.len() >= self.opts.max_new_tokens {
            self.stop = StopReason::MaxTokens;
            return Ok(true);
        }
        if matches!(&self.opts.phase_switch, Some((switch, _)) if *switch == token) {
            self.phase = 1;
        }
        Ok(false)
    }

    fn cache_full(&mut self) {
        self.stop = StopReason::CacheFull;
    }
}

/// Generates up to `opts.max_new_tokens` after `prompt`, calling `on_token` with each new token.
/// The cache is reset first and holds prompt and output afterwards.
pub fn generate(
    model: &Llama,
    cache: &mut KvCache,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32),
) -> Result<Generation> {
    let _span = tracing::debug_span!("generate", prompt = prompt.len()).entered();
    if prompt.is_empty() {
        return Err(ModelError::InvalidArgument("empty prompt".into()));
    }
    if prompt.len() as i64 > cache.capacity() {
        return Err(ModelError::CacheFull {
            needed: prompt.len(),
            capacity: cache.capacity() as usize,
        });
    }
    let vocab = model.config().vocab_size as u32;
    let mut ranges = vec![mask_ranges(&opts.mask, vocab)];
    if let Some((_, switched)) = &opts.phase_switch {
        ranges.push(mask_ranges(switched, vocab));
    }
    cache.reset();
    let start = Instant::now();
    let hidden = model.forward_hidden_ids(prompt, cache)?;
    let last = hidden.f_select(1, hidden.size()[1] - 1)?;
    let mut row = [GenerateRow {
        opts,
        sampler,
        phase: 0,
        tokens: Vec::with_capacity(opts.max_new_tokens),
        stop: StopReason::MaxTokens,
        first_token_at: None,
        on_token,
    }];
    let pad = opts.stop_tokens.first().copied().unwrap_or(0);
    decode_rows(model, cache, last, &ranges, &mut row, pad)?;
    let [row] = row;
    let first = row.first_token_at.unwrap_or_else(Instant::now);
    Ok(Generation {
        tokens: row.tokens,
        stop: row.stop,
        prompt_tokens: prompt.len(),
        prefill_secs: first.duration_since(start).as_secs_f64(),
        decode_secs: first.elapsed().as_secs_f64(),
    })
}
