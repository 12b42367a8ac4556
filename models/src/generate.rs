//! The generation loop: one batched prefill of the prompt, then one decode step per token into
//! the caller's cache, with timings for the benchmark and the CLI.

use crate::llama::{KvCache, Llama};
use crate::sampling::{Sampler, TokenMask};
use crate::{ModelError, Result};
use std::time::Instant;
use tch::{Kind, Tensor};

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

/// Logits of the allowed span for hidden states `[1, hidden]`, as f32 on the host, and the id of
/// their first entry.
pub fn step_logits(model: &Llama, hidden: &Tensor, mask: &TokenMask) -> Result<(Vec<f32>, u32)> {
    let span = mask.span(model.config().vocab_size as u32);
    let logits = if span.start == 0 && span.end as i64 == model.config().vocab_size {
        model.logits(hidden)?
    } else {
        model.logits_range(hidden, span.start as i64, (span.end - span.start) as i64)?
    };
    let host = logits
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?
        .f_view([-1])?;
    Ok((Vec::<f32>::try_from(&host)?, span.start))
}

/// Generates up to `opts.max_new_tokens` after `prompt`, calling `on_token` with each new token.
/// The cache is reset first and holds prompt and output afterwards.
pub fn generate(
    model: &Llama,
    cache: &mut KvCache,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
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
    cache.reset();
    let start = Instant::now();
    let hidden = model.forward_hidden_ids(prompt, cache)?;
    let last = hidden.f_select(1, hidden.size()[1] - 1)?;
    let mut mask = &opts.mask;
    let (logits, offset) = step_logits(model, &last, mask)?;
    let mut next = sampler.sample(&logits, offset, mask)?;
    let prefill_secs = start.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(opts.max_new_tokens);
    let decode_start = Instant::now();
    let stop = loop {
        if opts.max_new_tokens == 0 {
            break StopReason::MaxTokens;
        }
        out.push(next);
        on_token(next);
        if opts.stop_tokens.contains(&next) {
            break StopReason::StopToken;
        }
        if out.len() >= opts.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() >= cache.capacity() {
            break StopReason::CacheFull;
        }
        let hidden = model.forward_hidden_ids(&[next], cache)?;
        if let Some((switch, next_mask)) = &opts.phase_switch {
            if next == *switch {
                mask = next_mask;
            }
        }
        let (logits, offset) = step_logits(model, &hidden.f_select(1, 0)?, mask)?;
        next = sampler.sample(&logits, offset, mask)?;
    };
    Ok(Generation {
        tokens: out,
        stop,
        prompt_tokens: prompt.len(),
        prefill_secs,
        decode_secs: decode_start.elapsed().as_secs_f64(),
    })
}
