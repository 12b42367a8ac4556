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
use crate::generate::{decode_rows, mask_ranges, Choice, RowRules};
use crate::llama::KvCache;
use crate::prompt::{SpecialToken, Task};
use crate::sampling::Sampler;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use serde::Serialize;
use std::ops::Range;
use std::time::Instant;

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

impl std::str::FromStr for Mode {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
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
    /// The text phase's slices ([`TEXT_RANGES`]) and the unit phase's ([`UNIT_RANGES`]).
    pub(crate) ranges: Vec<Vec<Range<u32>>>,
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
        ranges: vec![
            mask_ranges(&f.text_phase(task), vocab),
            mask_ranges(&f.unit_phase(), vocab),
        ],
        units_tok: f.id(SpecialToken::Units),
        end_tok: f.id(SpecialToken::End),
        text_only: !mode.has_units(),
    })
}

/// Where a streaming row reports its events.
type EventSink<'a> = &'a mut dyn FnMut(Event<'_>);

/// The chain-of-modality rules of one row: a text phase over the text vocabulary and
/// `<|units|>` (forced when the text budget runs out, unless the mode is text-only), then a unit
/// phase over the unit tokens and `<|end|>`. With an event sink the text is detokenized as it
/// comes and every delta, the end of the text and every unit are reported.
pub(crate) struct ChainRow<'a> {
    pub(crate) sampler: &'a mut Sampler,
    plan: &'a Plan,
    max_text_tokens: usize,
    max_target_units: usize,
    unit_base: u32,
    start: Instant,
    phase: Phase,
    streamer: Option<(TextStreamer<'a>, EventSink<'a>)>,
    pub(crate) text_ids: Vec<u32>,
    /// The text, once the text phase has ended (streaming rows only).
    pub(crate) text: Option<String>,
    pub(crate) units: Vec<u32>,
    pub(crate) text_truncated: bool,
    pub(crate) confidence: ConfidenceSum,
    pub(crate) stop: Option<Stop>,
    pub(crate) first_token_s: Option<f64>,
    pub(crate) first_text_s: Option<f64>,
    pub(crate) first_unit_s: Option<f64>,
    pub(crate) decode_s: f64,
}

impl<'a> ChainRow<'a> {
    pub(crate) fn new(
        tr: &'a Translator,
        plan: &'a Plan,
        sampler: &'a mut Sampler,
        start: Instant,
        events: Option<&'a mut dyn FnMut(Event<'_>)>,
    ) -> Self {
        let m = tr.manifest();
        Self {
            sampler,
            plan,
            max_text_tokens: m.max_text_tokens,
            max_target_units: m.max_target_units,
            unit_base: tr.format().unit_base,
            start,
            phase: plan.first_phase(),
            streamer: events.map(|e| (TextStreamer::new(tr.tokenizer()), e)),
            text_ids: Vec::new(),
            text: None,
            units: Vec::new(),
            text_truncated: false,
            confidence: ConfidenceSum::default(),
            stop: None,
            first_token_s: None,
            first_text_s: None,
            first_unit_s: None,
            decode_s: 0.0,
        }
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn finish(&mut self, stop: Stop) {
        self.stop = Some(stop);
        self.decode_s = self.elapsed();
    }

    /// Ends the text phase: the last delta and the whole text to the event sink.
    fn end_text(&mut self) -> Result<()> {
        let now = self.elapsed();
        let confidence = self.confidence.finish();
        if let Some((streamer, on)) = self.streamer.as_mut() {
            let (full, rest) = streamer.finish()?;
            if !rest.is_empty() {
                self.first_text_s.get_or_insert(now);
                on(Event::Text { delta: &rest });
            }
            on(Event::TextEnd {
                text: &full,
                confidence,
            });
            self.text = Some(full);
        }
        Ok(())
    }

    /// After the loop: a text phase cut short by a budget or a full cache still ends its text.
    pub(crate) fn close(&mut self) -> Result<()> {
        if self.phase == Phase::Text && self.text.is_none() && !self.text_ids.is_empty() {
            self.end_text()?;
        }
        Ok(())
    }
}

impl RowRules for ChainRow<'_> {
    fn next(&mut self) -> Result<Choice> {
        if self.stop.is_some() {
            return Ok(Choice::Done);
        }
        Ok(match self.phase {
            Phase::Text if self.text_ids.len() >= self.max_text_tokens => {
                if self.plan.text_only {
                    self.finish(Stop::MaxTokens);
                    Choice::Done
                } else {
                    // Out of text budget: switch to units rather than lose the speech.
                    self.text_truncated = true;
                    Choice::Force(self.plan.units_tok)
                }
            }
            Phase::Text => Choice::Sample(TEXT_RANGES),
            Phase::Units if self.units.len() >= self.max_target_units => {
                self.finish(Stop::MaxTokens);
                Choice::Done
            }
            Phase::Units => Choice::Sample(UNIT_RANGES),
        })
    }

    fn sampler(&mut self) -> &mut Sampler {
        self.sampler
    }

    fn accept(&mut self, token: u32, logprob: Option<f64>) -> Result<bool> {
        if let Some(lp) = logprob {
            self.confidence.add(self.phase, lp);
        }
        let now = self.elapsed();
        self.first_token_s.get_or_insert(now);
        let p = self.plan;
        match self.phase {
            Phase::Text if token == p.units_tok || token == p.end_tok => {
                self.end_text()?;
                if token == p.end_tok || p.text_only {
                    self.finish(Stop::End);
                    return Ok(true);
                }
                self.phase = Phase::Units;
            }
            Phase::Text => {
                self.text_ids.push(token);
                match self.streamer.as_mut() {
                    Some((streamer, on)) => {
                        let delta = streamer.push(token)?;
                        if !delta.is_empty() {
                            self.first_text_s.get_or_insert(now);
                            on(Event::Text { delta: &delta });
                        }
                    }
                    None => {
                        self.first_text_s.get_or_insert(now);
                    }
                }
            }
            Phase::Units if token == p.end_tok => {
                self.finish(Stop::End);
                return Ok(true);
            }
            Phase::Units => {
                let u = token - self.unit_base;
                self.units.push(u);
                self.first_unit_s.get_or_insert(now);
                if let Some((_, on)) = self.streamer.as_mut() {
                    on(Event::Unit(u));
                }
            }
        }
        Ok(false)
    }

    fn cache_full(&mut self) {
        self.finish(Stop::CacheFull);
    }
}

/// Index of the text phase's slices in [`Plan::ranges`].
pub(crate) const TEXT_RANGES: usize = 0;
/// Index of the unit phase's slices in [`Plan::ranges`].
pub(crate) const UNIT_RANGES: usize = 1;

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
    let p = plan(tr, src_units, direction, mode)?;
    if p.prompt.len() as i64 >= cache.capacity() {
        return Err(ModelError::CacheFull {
            needed: p.prompt.len() + 1,
            capacity: cache.capacity() as usize,
        });
    }
    let start = Instant::now();
    cache.reset();
    let _g = tch::no_grad_guard();
    let hidden = tr.llm().forward_hidden_ids(&p.prompt, cache)?;
    let last = hidden.f_select(1, hidden.size()[1] - 1)?;
    let mut rows = [ChainRow::new(tr, &p, sampler, start, Some(on_event))];
    decode_rows(tr.llm(), cache, last, &p.ranges, &mut rows, p.end_tok)?;
    let [mut row] = rows;
    row.close()?;
    let text = row.text.take().unwrap_or_default();
    let decode_s = start.elapsed().as_secs_f64();
    Ok(row.into_output(direction, mode, text, p.prompt.len(), decode_s))
}

impl ChainRow<'_> {
    /// The row's result; `prefill_s` is the time to its first token.
    pub(crate) fn into_output(
        self,
        direction: Direction,
        mode: Mode,
        text: String,
        prompt_tokens: usize,
        decode_s: f64,
    ) -> TranslationOutput {
        TranslationOutput {
            direction,
            mode,
            text,
            timings: Timings {
                extract_s: 0.0,
                prompt_tokens,
                prefill_s: self.first_token_s.unwrap_or(0.0),
                first_text_s: self.first_text_s,
                first_unit_s: self.first_unit_s,
                decode_s,
                text_tokens: self.text_ids.len(),
                unit_tokens: self.units.len(),
            },
            text_ids: self.text_ids,
            units: self.units,
            stop: self.stop.unwrap_or(Stop::CacheFull),
            text_truncated: self.text_truncated,
            confidence: self.confidence.finish(),
        }
    }
}
