//! One decoding stream over a shared [`Translator`]: its KV cache, sampler and unit vocoder
//! streams. Source units come from a unit stream the caller owns ([`Translator::unit_stream`]:
//! the front end extracts them while the visitor speaks); a decode session turns one
//! utterance's units into subtitle text deltas and, for speaking modes, PCM chunks as the
//! target units are decoded.

use super::decode::{decode, Confidence, Event, Mode, TranslationOutput};
use super::manifest::Direction;
use super::{tensor_to_pcm, Translator};
use crate::llama::KvCache;
use crate::prompt::Lang;
use crate::sampling::{Sampler, SamplingConfig};
use crate::stream::Streaming;
use crate::units::UnitId;
use crate::vocoder::VocoderStream;
use crate::{ModelError, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// Target units handed to the vocoder at a time by default (80 ms of 50 Hz units).
pub const DEFAULT_VOCODER_CHUNK_UNITS: usize = 4;

/// What a decode session reports while it translates one utterance.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<'a> {
    /// More subtitle text (the deltas of one utterance concatenate to its text).
    Text { delta: &'a str },
    /// The text is complete. `understood` is false when the decoder's confidence
    /// ([`Confidence::score`]) is below the session's minimum: no speech follows.
    TextEnd {
        text: &'a str,
        confidence: Confidence,
        understood: bool,
    },
    /// A PCM chunk (mono, at the translator's sample rate) starting `offset` samples into the
    /// utterance's speech.
    Audio { pcm: &'a [f32], offset: u64 },
}

/// The result of one utterance through [`DecodeSession::translate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub output: TranslationOutput,
    /// PCM samples produced.
    pub samples_out: u64,
    /// False when the confidence was below the minimum (no speech was produced).
    pub understood: bool,
}

/// Per-stream decoding state. Sessions are independent and may run on different threads over
/// the same `Arc<Translator>`.
pub struct DecodeSession {
    translator: Arc<Translator>,
    cache: KvCache,
    sampler: Sampler,
    /// One vocoder stream per target language, made on first use.
    vocoders: HashMap<Lang, VocoderStream>,
    chunk_units: usize,
    min_confidence: f64,
}

impl DecodeSession {
    /// A greedy session with the translator's default cache capacity.
    pub fn new(translator: Arc<Translator>) -> Result<Self> {
        let capacity = translator.default_cache_capacity();
        Self::with_options(translator, SamplingConfig::greedy(), capacity)
    }

    /// A session with its own sampling settings and cache capacity (positions: prompt + output).
    pub fn with_options(
        translator: Arc<Translator>,
        sampling: SamplingConfig,
        cache_capacity: i64,
    ) -> Result<Self> {
        let cache = translator.new_cache(cache_capacity)?;
        let sampler = Sampler::new(sampling)?;
        Ok(Self {
            translator,
            cache,
            sampler,
            vocoders: HashMap::new(),
            chunk_units: DEFAULT_VOCODER_CHUNK_UNITS,
            min_confidence: 0.0,
        })
    }

    /// Target units handed to the vocoder at a time (at least 1).
    pub fn with_vocoder_chunk(mut self, units: usize) -> Self {
        self.chunk_units = units.max(1);
        self
    }

    /// Utterances whose text confidence is below `min` get no speech (0 turns the check off).
    pub fn with_min_confidence(mut self, min: f64) -> Self {
        self.min_confidence = min;
        self
    }

    pub fn translator(&self) -> &Arc<Translator> {
        &self.translator
    }

    /// Decodes source units (raw or deduplicated) into text and target units, calling
    /// `on_event` as tokens come; no speech is synthesized.
    pub fn decode_units(
        &mut self,
        src_units: &[UnitId],
        direction: Direction,
        mode: Mode,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<TranslationOutput> {
        decode(
            &self.translator,
            &mut self.cache,
            &mut self.sampler,
            src_units,
            direction,
            mode,
            &mut on_event,
        )
    }

    /// Translates one utterance's source units: text deltas as they are decoded and, when the
    /// mode speaks, PCM chunks as the vocoder makes them final (every `chunk_units` target
    /// units, the rest at the end), all through `on`.
    pub fn translate(
        &mut self,
        src_units: &[UnitId],
        direction: Direction,
        mode: Mode,
        on: &mut dyn FnMut(Output<'_>),
    ) -> Result<Translation> {
        let tgt = direction.tgt();
        let mut vocoder = if mode.has_units() {
            let mut v = match self.vocoders.remove(&tgt) {
                Some(v) => v,
                None => self.translator.vocoder_stream(tgt)?,
            };
            v.reset();
            Some(v)
        } else {
            None
        };
        let mut speech = Speech {
            pending: Vec::with_capacity(self.chunk_units),
            chunk: self.chunk_units,
            samples_out: 0,
            understood: true,
            error: None,
        };
        let min_confidence = self.min_confidence;
        let result = decode(
            &self.translator,
            &mut self.cache,
            &mut self.sampler,
            src_units,
            direction,
            mode,
            &mut |ev| {
                if speech.error.is_some() {
                    return;
                }
                match ev {
                    Event::Text { delta } => on(Output::Text { delta }),
                    Event::TextEnd { text, confidence } => {
                        speech.understood = confidence.score() >= min_confidence;
                        on(Output::TextEnd {
                            text,
                            confidence,
                            understood: speech.understood,
                        });
                    }
                    // Not understood: the units are decoded but never spoken.
                    Event::Unit(_) if !speech.understood => {}
                    Event::Unit(u) => {
                        if let Some(v) = vocoder.as_mut() {
                            speech.unit(v, u, on);
                        }
                    }
                }
            },
        );
        let output = match (result, speech.error.take()) {
            (Err(e), _) | (Ok(_), Some(e)) => {
                if let Some(v) = vocoder {
                    self.vocoders.insert(tgt, v);
                }
                return Err(e);
            }
            (Ok(o), None) => o,
        };
        if let Some(mut v) = vocoder {
            if speech.understood {
                speech.flush(&mut v, on)?;
            }
            v.reset();
            self.vocoders.insert(tgt, v);
        }
        Ok(Translation {
            output,
            samples_out: speech.samples_out,
            understood: speech.understood,
        })
    }
}

/// The speech side of one utterance: target units gathered into vocoder chunks.
struct Speech {
    pending: Vec<UnitId>,
    chunk: usize,
    samples_out: u64,
    understood: bool,
    /// The first vocoder error; decoding stops reporting after it.
    error: Option<ModelError>,
}

impl Speech {
    fn unit(&mut self, v: &mut VocoderStream, u: UnitId, on: &mut dyn FnMut(Output<'_>)) {
        self.pending.push(u);
        if self.pending.len() >= self.chunk {
            let units = std::mem::take(&mut self.pending);
            if let Err(e) = self.vocode(v, &units, false, on) {
                self.error = Some(e);
            }
        }
    }

    fn flush(&mut self, v: &mut VocoderStream, on: &mut dyn FnMut(Output<'_>)) -> Result<()> {
        let units = std::mem::take(&mut self.pending);
        self.vocode(v, &units, true, on)
    }

    fn vocode(
        &mut self,
        v: &mut VocoderStream,
        units: &[UnitId],
        finish: bool,
        on: &mut dyn FnMut(Output<'_>),
    ) -> Result<()> {
        let pcm = {
            let _s = tracing::debug_span!("vocoder", units = units.len(), finish).entered();
            let mut pcm = if units.is_empty() {
                Vec::new()
            } else {
                tensor_to_pcm(&v.push(units)?)?
            };
            if finish {
                pcm.extend(tensor_to_pcm(&v.finish()?)?);
            }
            pcm
        };
        if !pcm.is_empty() {
            on(Output::Audio {
                pcm: &pcm,
                offset: self.samples_out,
            });
            self.samples_out += pcm.len() as u64;
        }
        Ok(())
    }
}
