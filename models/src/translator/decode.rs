//! Constrained decoding of one utterance in any mode, with events as tokens come.
//!
//! Chain of modality (PROST-LLM arXiv 2601.16618 section 2): after the prompt, a text phase
//! restricted to the text vocabulary and `<|units|>`, then a unit phase restricted to the unit
//! tokens and `<|end|>`. Direct S2ST runs the unit phase only; S2TT and ASR the text phase only
//! (ending at `<|end|>`). Each step computes the logits of the allowed vocabulary slices only
//! (two narrow matrix products instead of the full LM head), and the KV cache carries the whole
//! sequence, so a step costs one token.

use super::manifest::{Direction, Strategy};
use super::Translator;
use crate::llama::KvCache;
use crate::prompt::{SpecialToken, Task};
use crate::sampling::{Sampler, TokenMask};
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use serde::Serialize;
use std::ops::Range;
use std::time::Instant;
use tch::{Kind, Tensor};

/// What to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Target text, then target units (chain of modality).
    ChainOfModality,
    /// Target units directly.
    S2st,
    /// Target text only.
    S2tt,
    /// Source text (recognition).
    Asr,
}

impl Mode {
    /// `com`, `s2st`, `s2tt` or `asr` (as the CLIs spell them).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "com" | "chain-of-modality" => Ok(Self::ChainOfModality),
            "s2st" => Ok(Self::S2st),
            "s2tt" => Ok(Self::S2tt),
            "asr" => Ok(Self::Asr),
            _ => Err(ModelError::InvalidArgument(format!(
                "unknown mode `{s}` (expected com, s2st, s2tt or asr)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChainOfModality => "com",
            Self::S2st => "s2st",
            Self::S2tt => "s2tt",
            Self::Asr => "asr",
        }
    }

    /// Whether the mode produces units (speech).
    pub fn has_units(self) -> bool {
        matches!(self, Self::ChainOfModality | Self::S2st)
    }

    /// Whether the mode produces text.
    pub fn has_text(self) -> bool {
        !matches!(self, Self::S2st)
    }

    /// The mode a model trained with `strategy` speaks with by default.
    pub fn default_for(strategy: Strategy) -> Self {
        match strategy {
            Strategy::ChainOfModality => Self::ChainOfModality,
            Strategy::Vanilla | Strategy::TriTask => Self::S2st,
        }
    }

    /// The task whose prompt this mode uses with a model trained with `strategy`, or an error
    /// when that model never learnt it. A chain-of-modality model does S2TT through its own
    /// prompt, stopping after the text phase.
    pub fn task_for(self, strategy: Strategy) -> Result<Task> {
        let task = match (self, strategy) {
            (Self::ChainOfModality, Strategy::ChainOfModality) => Task::ChainOfModality,
            (Self::S2tt, Strategy::ChainOfModality) => Task::ChainOfModality,
            (Self::S2st, Strategy::Vanilla | Strategy::TriTask) => Task::S2st,
            (Self::S2tt, Strategy::TriTask) => Task::S2tt,
            (Self::Asr, Strategy::TriTask) => Task::Asr,
            _ => {
                return Err(ModelError::InvalidArgument(format!(
                    "mode {} is not available: the model was trained with the {strategy:?} \
                     strategy",
                    self.as_str()
                )))
            }
        };
        Ok(task)
    }
}

/// What the decoder reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// New subtitle text: the decoded text prefix grew by `delta` (never empty). The deltas of
    /// one utterance concatenate to [`TranslationOutput::text`].
    Text { delta: &'a str },
    /// The text phase is over; `text` is the whole text, `confidence` the decoder's certainty
    /// so far (the text phase's figures are final).
    TextEnd {
        text: &'a str,
        confidence: Confidence,
    },
    /// One target unit (0..num_units), in order: feed it to a `VocoderStream`.
    Unit(u32),
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stop {
    /// `<|end|>` (or, for S2TT through a chain-of-modality prompt, `<|units|>`).
    End,
    /// `max_target_units` units (or `max_text_tokens` text tokens for a text-only mode).
    MaxTokens,
    /// The session's cache is full.
    CacheFull,
}

/// Wall times of one utterance, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Unit extraction (audio input only).
    pub extract_s: f64,
    pub prompt_tokens: usize,
    /// Prefill of the prompt up to the first sampled token.
    pub prefill_s: f64,
    /// From the start of decoding to the first text delta / first unit (None if none came).
    pub first_text_s: Option<f64>,
    pub first_unit_s: Option<f64>,
    /// Decoding only (prefill included), from the prompt to the last token.
    pub decode_s: f64,
    pub text_tokens: usize,
    pub unit_tokens: usize,
}

/// The result of one utterance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranslationOutput {
    pub direction: Direction,
    pub mode: Mode,
    /// Target text (source text for ASR); empty for S2ST.
    pub text: String,
    /// Its token ids (text vocabulary only).
    pub text_ids: Vec<u32>,
    /// Target units (0..num_units; deduplicated when the manifest says so); empty without speech.
    pub units: Vec<u32>,
    pub stop: Stop,
    /// Whether a forced `<|units|>` ended the text phase at `max_text_tokens`.
    pub text_truncated: bool,
    /// How sure the decoder was of what it produced (see [`Confidence`]).
    pub confidence: Confidence,
    pub timings: Timings,
}

/// The decoder's own certainty about one utterance: the mean natural log-probability of the
/// tokens it chose in each phase, every probability taken over that phase's allowed vocabulary
/// (the softmax of the sliced logits, at temperature 1 whatever the sampler did). The token that
/// closes a phase (`<|units|>` or `<|end|>`) counts in it; a token forced by a budget does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Confidence {
    /// Mean log-probability of the text phase's tokens (None without a text phase).
    pub text_logprob: Option<f64>,
    /// Mean log-probability of the unit phase's tokens (None without a unit phase).
    pub unit_logprob: Option<f64>,
    /// The least probable text token's log-probability.
    pub text_min_logprob: Option<f64>,
}

impl Confidence {
    /// One number in (0, 1]: the geometric-mean probability of the text tokens, or of the unit
    /// tokens for a mode without text; 0 when nothing was chosen.
    pub fn score(&self) -> f64 {
        self.text_logprob
            .or(self.unit_logprob)
            .map_or(0.0, |lp| lp.exp())
    }
}

/// Sums the log-probabilities of the chosen tokens per phase while decoding.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfidenceSum {
    text: (f64, usize),
    units: (f64, usize),
    text_min: Option<f64>,
}

impl ConfidenceSum {
    pub(crate) fn add(&mut self, phase: Phase, logprob: f64) {
        match phase {
            Phase::Text => {
                self.text.0 += logprob;
                self.text.1 += 1;
                self.text_min = Some(self.text_min.map_or(logprob, |m| m.min(logprob)));
            }
            Phase::Units => {
                self.units.0 += logprob;
                self.units.1 += 1;
            }
        }
    }

    pub(crate) fn finish(&self) -> Confidence {
        let mean = |(s, n): (f64, usize)| (n > 0).then(|| s / n as f64);
        Confidence {
            text_logprob: mean(self.text),
            unit_logprob: mean(self.units),
            text_min_logprob: self.text_min,
        }
    }
}

/// Log-probability of `token` under the softmax of `logits` (the concatenated `ranges`).
pub(crate) fn token_logprob(logits: &[f32], ranges: &[Range<u32>], token: u32) -> f64 {
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

/// Incremental detokenization for subtitles: decodes the whole prefix after every token and
/// emits the new suffix, holding it back while it ends in an incomplete UTF-8 sequence (U+FFFD
/// from a byte-level token that splits a character).
pub struct TextStreamer<'t> {
    tokenizer: &'t Tokenizer,
    ids: Vec<u32>,
    emitted: String,
}

impl<'t> TextStreamer<'t> {
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: String::new(),
        }
    }

    /// Adds a token; returns the new text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || !text.starts_with(&self.emitted) {
            return Ok(String::new());
        }
        let delta = text[self.emitted.len()..].to_string();
        self.emitted = text;
        Ok(delta)
    }

    /// The full text and what was not emitted yet. If decoding a longer prefix ever rewrote
    /// text already emitted (no tokenizer here does), the rest is emitted after what was shown.
    pub fn finish(&mut self) -> Result<(String, String)> {
        let text = self.tokenizer.decode(&self.ids, true)?;
        let rest = match text.strip_prefix(self.emitted.as_str()) {
            Some(rest) => rest.to_string(),
            None => {
                let common = self
                    .emitted
                    .char_indices()
                    .zip(text.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(self.emitted.len().min(text.len()), |((i, _), _)| i);
                text.get(common..).unwrap_or("").to_string()
            }
        };
        self.emitted = text.clone();
        Ok((text, rest))
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// The vocabulary slices a phase may produce.
pub(crate) fn phase_ranges(mask: &TokenMask, vocab: u32) -> Vec<Range<u32>> {
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
pub(crate) fn sliced_logits(
    tr: &Translator,
    hidden: &Tensor,
    ranges: &[Range<u32>],
) -> Result<Vec<f32>> {
    let llm = tr.llm();
    let parts = ranges
        .iter()
        .map(|r| llm.logits_range(hidden, r.start as i64, (r.end - r.start) as i64))
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
pub(crate) fn pick_from_logits(
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

/// Picks the next token among `ranges` for hidden state `[1, hidden]`, with its log-probability.
fn pick(
    tr: &Translator,
    sampler: &mut Sampler,
    hidden: &Tensor,
    ranges: &[Range<u32>],
) -> Result<(u32, f64)> {
    let logits = sliced_logits(tr, hidden, ranges)?;
    let token = pick_from_logits(sampler, &logits, ranges)?;
    Ok((token, token_logprob(&logits, ranges, token)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Text,
    Units,
}

/// What one utterance decodes: the checked and prepared inputs shared by [`decode`] and the
/// batched decoder.
pub(crate) struct Plan {
    pub(crate) task: Task,
    pub(crate) prompt: Vec<u32>,
    pub(crate) text_ranges: Vec<Range<u32>>,
    pub(crate) unit_ranges: Vec<Range<u32>>,
    pub(crate) units_tok: u32,
    pub(crate) end_tok: u32,
    /// S2TT through a chain-of-modality prompt ends at the switch to units.
    pub(crate) text_only: bool,
}

impl Plan {
    /// The phase decoding starts in.
    pub(crate) fn first_phase(&self) -> Phase {
        if self.task == Task::S2st {
            Phase::Units
        } else {
            Phase::Text
        }
    }
}

/// Checks the direction, mode and source units (deduplicated here when the manifest says so)
/// and builds the prompt and the phase vocabularies.
pub(crate) fn plan(
    tr: &Translator,
    src_units: &[u32],
    direction: Direction,
    mode: Mode,
) -> Result<Plan> {
    let m = tr.manifest();
    if !m.supports_direction(direction) {
        return Err(ModelError::InvalidArgument(format!(
            "direction {direction} is not one of the model's directions {:?}",
            m.directions.iter().map(|d| d.as_str()).collect::<Vec<_>>()
        )));
    }
    let task = mode.task_for(m.strategy)?;
    let f = tr.format();
    if let Some((i, &u)) = src_units
        .iter()
        .enumerate()
        .find(|(_, &u)| u >= f.num_units)
    {
        return Err(ModelError::InvalidArgument(format!(
            "source unit {u} at position {i} is outside 0..{}",
            f.num_units
        )));
    }
    let src: Vec<u32> = if m.dedup_source_units {
        let mut v = src_units.to_vec();
        v.dedup();
        v
    } else {
        src_units.to_vec()
    };
    if src.is_empty() {
        return Err(ModelError::InvalidArgument(
            "no source units (is the audio shorter than one frame?)".into(),
        ));
    }
    let prompt = f.prompt(task, direction.src(), direction.tgt(), &src)?;
    let vocab = tr.llm().config().vocab_size as u32;
    Ok(Plan {
        task,
        prompt,
        text_ranges: phase_ranges(&f.text_phase(task), vocab),
        unit_ranges: phase_ranges(&f.unit_phase(), vocab),
        units_tok: f.id(SpecialToken::Units),
        end_tok: f.id(SpecialToken::End),
        text_only: !mode.has_units(),
    })
}

/// Decodes one utterance from source units (raw or deduplicated 50 Hz units; deduplicated here
/// when the manifest says so). Resets `cache` first.
pub(crate) fn decode(
    tr: &Translator,
    cache: &mut KvCache,
    sampler: &mut Sampler,
    src_units: &[u32],
    direction: Direction,
    mode: Mode,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<TranslationOutput> {
    let _span = tracing::info_span!(
        "translate",
        direction = direction.as_str(),
        mode = mode.as_str(),
        units = src_units.len()
    )
    .entered();
    let m = tr.manifest();
    let f = tr.format();
    let p = plan(tr, src_units, direction, mode)?;
    let first_phase = p.first_phase();
    let Plan {
        prompt,
        text_ranges,
        unit_ranges,
        units_tok,
        end_tok,
        text_only,
        ..
    } = p;
    if prompt.len() as i64 >= cache.capacity() {
        return Err(ModelError::CacheFull {
            needed: prompt.len() + 1,
            capacity: cache.capacity() as usize,
        });
    }

    let start = Instant::now();
    cache.reset();
    let _g = tch::no_grad_guard();
    let hidden = tr.llm().forward_hidden_ids(&prompt, cache)?;
    let mut last = hidden.f_select(1, hidden.size()[1] - 1)?;
    let mut timings = Timings {
        prompt_tokens: prompt.len(),
        ..Timings::default()
    };
    let mut phase = first_phase;
    let mut streamer = TextStreamer::new(tr.tokenizer());
    let mut text = String::new();
    let mut units = Vec::new();
    let mut text_truncated = false;
    let mut first = true;
    let mut confidence = ConfidenceSum::default();
    let stop = loop {
        let next = match phase {
            Phase::Text if streamer.ids().len() >= m.max_text_tokens => {
                if text_only {
                    break Stop::MaxTokens;
                }
                // Out of text budget: switch to units rather than lose the speech.
                text_truncated = true;
                units_tok
            }
            Phase::Text => {
                let (t, lp) = pick(tr, sampler, &last, &text_ranges)?;
                confidence.add(Phase::Text, lp);
                t
            }
            Phase::Units if units.len() >= m.max_target_units => break Stop::MaxTokens,
            Phase::Units => {
                let (t, lp) = pick(tr, sampler, &last, &unit_ranges)?;
                confidence.add(Phase::Units, lp);
                t
            }
        };
        if first {
            timings.prefill_s = start.elapsed().as_secs_f64();
            first = false;
        }
        match phase {
            Phase::Text if next == units_tok || next == end_tok => {
                let (full, rest) = streamer.finish()?;
                if !rest.is_empty() {
                    timings
                        .first_text_s
                        .get_or_insert(start.elapsed().as_secs_f64());
                    on_event(Event::Text { delta: &rest });
                }
                text = full;
                on_event(Event::TextEnd {
                    text: &text,
                    confidence: confidence.finish(),
                });
                if next == end_tok || text_only {
                    break Stop::End;
                }
                phase = Phase::Units;
            }
            Phase::Text => {
                let delta = streamer.push(next)?;
                if !delta.is_empty() {
                    timings
                        .first_text_s
                        .get_or_insert(start.elapsed().as_secs_f64());
                    on_event(Event::Text { delta: &delta });
                }
            }
            Phase::Units if next == end_tok => break Stop::End,
            Phase::Units => {
                let u = next - f.unit_base;
                units.push(u);
                timings
                    .first_unit_s
                    .get_or_insert(start.elapsed().as_secs_f64());
                on_event(Event::Unit(u));
            }
        }
        if cache.len() >= cache.capacity() {
            break Stop::CacheFull;
        }
        let h = tr.llm().forward_hidden_ids(&[next], cache)?;
        last = h.f_select(1, 0)?;
    };
    // A text-only mode that stopped on its budget still reports its text.
    if phase == Phase::Text && text.is_empty() && !streamer.ids().is_empty() {
        let (full, rest) = streamer.finish()?;
        if !rest.is_empty() {
            on_event(Event::Text { delta: &rest });
        }
        text = full;
        on_event(Event::TextEnd {
            text: &text,
            confidence: confidence.finish(),
        });
    }
    timings.decode_s = start.elapsed().as_secs_f64();
    timings.text_tokens = streamer.ids().len();
    timings.unit_tokens = units.len();
    Ok(TranslationOutput {
        direction,
        mode,
        text,
        text_ids: streamer.ids().to_vec(),
        units,
        stop,
        text_truncated,
        confidence: confidence.finish(),
        timings,
    })
}
