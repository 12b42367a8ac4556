//! One translation stream over a shared [`Translator`]: its KV cache, sampler and streaming
//! unit extraction (units are extracted while the person speaks, so only decoding is left at
//! the endpoint).

use super::decode::{decode, Event, Mode, TranslationOutput};
use super::manifest::{Direction, UnitsSpec};
use super::Translator;
use crate::llama::KvCache;
use crate::sampling::{Sampler, SamplingConfig};
use crate::units::{StreamOptions, UnitExtractor, UnitStream};
use crate::Result;
use std::sync::Arc;
use std::time::Instant;

/// Per-stream state. Create one per audio stream (kiosk microphone, GStreamer element, test);
/// sessions are independent and may run on different threads over the same `Arc<Translator>`.
pub struct Session {
    translator: Arc<Translator>,
    cache: KvCache,
    sampler: Sampler,
    units: UnitStream<Arc<UnitExtractor>>,
    /// Units of the current utterance so far.
    pending: Vec<u32>,
    /// Seconds spent extracting units for the current utterance.
    extract_s: f64,
}

impl Session {
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
        let opts = match translator.manifest().units {
            UnitsSpec::Mfcc { .. } => StreamOptions::frame_local(),
            // Both 50 Hz encoders: 2 s left context, 100 ms look-ahead, 200 ms steps.
            UnitsSpec::Hubert { .. } | UnitsSpec::Whisper { .. } => StreamOptions::hubert_default(),
        };
        let units = translator.extractor().stream(opts);
        Ok(Self {
            translator,
            cache,
            sampler,
            units,
            pending: Vec::new(),
            extract_s: 0.0,
        })
    }

    pub fn translator(&self) -> &Arc<Translator> {
        &self.translator
    }

    /// Adds 16 kHz mono samples of the current utterance (any count); returns how many units
    /// the utterance has so far.
    pub fn push_audio(&mut self, samples_16k: &[f32]) -> Result<usize> {
        let t0 = Instant::now();
        let u = self.units.push(samples_16k)?;
        self.pending.extend(u.into_iter().map(|u| u as u32));
        self.extract_s += t0.elapsed().as_secs_f64();
        Ok(self.pending.len())
    }

    /// Ends the utterance: its raw units (the audio state is reset for the next one).
    pub fn end_utterance(&mut self) -> Result<Vec<u32>> {
        let t0 = Instant::now();
        let rest = self.units.finish()?;
        self.units.reset();
        let mut units = std::mem::take(&mut self.pending);
        units.extend(rest.into_iter().map(|u| u as u32));
        self.extract_s += t0.elapsed().as_secs_f64();
        Ok(units)
    }

    /// Drops the current utterance's audio and units.
    pub fn reset(&mut self) {
        self.units.reset();
        self.pending.clear();
        self.extract_s = 0.0;
        self.cache.reset();
    }

    /// Translates source units (raw or deduplicated), calling `on_event` with subtitle text and
    /// units as they are decoded.
    pub fn translate_units(
        &mut self,
        src_units: &[u32],
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

    /// Ends the utterance pushed with [`Self::push_audio`] and translates it.
    pub fn translate_utterance(
        &mut self,
        direction: Direction,
        mode: Mode,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<TranslationOutput> {
        let units = self.end_utterance()?;
        let extract_s = std::mem::take(&mut self.extract_s);
        let mut out = self.translate_units(&units, direction, mode, on_event)?;
        out.timings.extract_s = extract_s;
        Ok(out)
    }
}
