//! The pipeline's audio side: source-rate mono chunks in, endpointed utterances (with their
//! source units already extracted) out.
//!
//! Units are extracted *during* speech (`Session::push_audio`), so only decoding is left at the
//! endpoint. The endpointer reports the end of speech up to `min_silence_ms` (+ one VAD window)
//! after it happened, so the front end feeds the unit extractor with a lag of that much: at the
//! endpoint the utterance's units are exactly those of the samples `[start - pre_roll, end)`,
//! the same as offline extraction on that segment. When a maximum-length cut lands further back
//! (at the longest pause), the segment is re-extracted from the history.

use std::sync::Arc;
use std::time::Instant;

use tolk_models::audio::condition::StreamConditioner;
use tolk_models::audio::endpoint::{EndReason, Endpointer, SpeechEvent};
use tolk_models::audio::vad::{EnergyVad, EnergyVadConfig, SileroVad, VoiceActivity, WINDOW};
use tolk_models::audio::SAMPLE_RATE;
use tolk_models::sampling::SamplingConfig;
use tolk_models::translator::{Session, Translator};

use super::{PipelineOptions, Result};
use crate::events::EndCause;

/// Which voice activity detector the front end uses.
#[derive(Clone)]
pub enum VadKind {
    /// Log-energy detector with an adaptive noise floor (no model file needed).
    Energy(EnergyVadConfig),
    /// The Silero VAD model (`silero_vad.jit`), one module instance per stream.
    Silero(SileroVad),
}

impl VadKind {
    pub fn energy() -> Self {
        Self::Energy(EnergyVadConfig::default())
    }

    fn detector(&self) -> Result<Box<dyn VoiceActivity>> {
        Ok(match self {
            Self::Energy(c) => Box::new(EnergyVad::new(*c)),
            Self::Silero(s) => Box::new(s.stream()?),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Energy(_) => "energy",
            Self::Silero(_) => "silero",
        }
    }
}

/// One endpointed utterance, ready for the decoder.
#[derive(Debug, Clone)]
pub struct Utterance {
    /// Sequence number within the pipeline (from 1).
    pub id: u64,
    /// First sample (pre-roll included) and end sample, 16 kHz, since the start of the stream.
    pub start_sample: u64,
    pub end_sample: u64,
    /// Raw 50 Hz source units of `[start_sample, end_sample)`.
    pub units: Vec<u32>,
    /// When the endpoint was detected: latencies count from here.
    pub ended_at: Instant,
    pub cause: EndCause,
    /// Seconds spent extracting this utterance's units.
    pub extract_s: f64,
}

impl Utterance {
    /// Speech duration in seconds.
    pub fn duration_s(&self) -> f64 {
        (self.end_sample - self.start_sample) as f64 / SAMPLE_RATE as f64
    }

    pub fn start_s(&self) -> f64 {
        self.start_sample as f64 / SAMPLE_RATE as f64
    }

    pub fn end_s(&self) -> f64 {
        self.end_sample as f64 / SAMPLE_RATE as f64
    }
}

/// What one push produced.
#[derive(Debug, Clone)]
pub enum FrontEvent {
    /// Speech started (confirmed); `start_s` is the detected start, pre-roll excluded, and
    /// `sample` the same start in 16 kHz samples since the start of the stream.
    Start { id: u64, start_s: f64, sample: u64 },
    /// Speech ended: the utterance to translate.
    Utterance(Utterance),
}

/// The open segment.
struct Open {
    id: u64,
    /// First sample of the utterance (pre-roll included).
    start: u64,
    /// Samples up to here are in the session.
    pushed_to: u64,
    extract_s: f64,
}

/// Conditioning + VAD/endpointing + streaming unit extraction for one audio stream.
pub struct FrontEnd {
    conditioner: StreamConditioner,
    endpointer: Endpointer<Box<dyn VoiceActivity>>,
    /// Unit extraction only (its KV cache is a stub).
    session: Session,
    /// Recent conditioned audio; `history[0]` is sample `history_start`.
    history: Vec<f32>,
    history_start: u64,
    /// Conditioned samples so far (equals the endpointer's count).
    total: u64,
    open: Option<Open>,
    next_id: u64,
    pre_roll: u64,
    /// Extraction lag behind the newest sample.
    hold_back: u64,
    /// History kept beyond what an open segment needs.
    keep: usize,
    non_finite_reported: usize,
    input_rate: u32,
}

impl FrontEnd {
    /// A front end for a mono source at `input_rate` Hz.
    pub fn new(
        translator: Arc<Translator>,
        vad: &VadKind,
        opts: &PipelineOptions,
        input_rate: u32,
    ) -> Result<Self> {
        opts.validate()?;
        let session = Session::with_options(translator, SamplingConfig::greedy(), 8)?;
        let endpointer = Endpointer::new(vad.detector()?, opts.endpoint)?;
        let sr = SAMPLE_RATE as f64;
        let pre_roll = (sr * opts.pre_roll_ms as f64 / 1000.0) as u64;
        let hold_back =
            (sr * opts.endpoint.min_silence_ms / 1000.0).ceil() as u64 + 2 * WINDOW as u64;
        // A start is confirmed at most min_speech + min_silence (+ windows) after it happened.
        let min_speech = (sr * opts.endpoint.min_speech_ms / 1000.0).ceil() as usize;
        let keep = (pre_roll + hold_back) as usize + min_speech + 4 * WINDOW;
        Ok(Self {
            conditioner: StreamConditioner::new(input_rate, 1)?,
            endpointer,
            session,
            history: Vec::new(),
            history_start: 0,
            total: 0,
            open: None,
            next_id: 1,
            pre_roll,
            hold_back,
            keep,
            non_finite_reported: 0,
            input_rate,
        })
    }

    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Whether an utterance is open.
    pub fn in_speech(&self) -> bool {
        self.open.is_some()
    }

    /// Conditioned (16 kHz) samples seen in this stream.
    pub fn samples(&self) -> u64 {
        self.total
    }

    /// Input samples that were NaN or infinite (replaced by 0) in this stream.
    pub fn non_finite_samples(&self) -> usize {
        self.conditioner.report().non_finite
    }

    /// Input samples at or beyond full scale (clamped) in this stream.
    pub fn clipped_samples(&self) -> usize {
        self.conditioner.report().clipped
    }

    /// Source-rate mono samples in; start events and finished utterances out, in order.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<FrontEvent>> {
        let x = {
            let _s = tracing::debug_span!("condition", n = samples.len()).entered();
            self.conditioner.push(samples)?
        };
        let nf = self.conditioner.report().non_finite;
        if nf > self.non_finite_reported {
            tracing::warn!(
                total = nf,
                "input held {} NaN/infinite samples; replaced by silence",
                nf - self.non_finite_reported
            );
            self.non_finite_reported = nf;
        }
        self.process(&x, false)
    }

    /// End of the stream (source finished or lost): an open utterance ends at the last sample
    /// (cause `source_ended`); the front end is then ready for a new stream.
    pub fn finish(&mut self) -> Result<Vec<FrontEvent>> {
        let tail = self.conditioner.finish().unwrap_or_else(|e| {
            tracing::warn!("front end: {e}");
            Vec::new()
        });
        let out = self.process(&tail, true);
        self.reset_stream();
        out
    }

    /// Forgets the current stream (a new source starts from sample 0).
    pub fn reset_stream(&mut self) {
        self.conditioner.reset();
        let _ = self.endpointer.reset();
        self.session.reset();
        self.history.clear();
        self.history_start = 0;
        self.total = 0;
        self.open = None;
        self.non_finite_reported = 0;
    }

    fn process(&mut self, x: &[f32], finish: bool) -> Result<Vec<FrontEvent>> {
        self.history.extend_from_slice(x);
        self.total += x.len() as u64;
        let mut events = {
            let _s = tracing::debug_span!("vad_endpoint", n = x.len()).entered();
            self.endpointer.push(x)?.events
        };
        if finish {
            events.extend(self.endpointer.finish()?.events);
        }
        let mut out = Vec::new();
        for ev in events {
            match ev {
                SpeechEvent::Start { sample } => {
                    let start = sample.saturating_sub(self.pre_roll).max(self.history_start);
                    let id = self.next_id;
                    self.next_id += 1;
                    self.open = Some(Open {
                        id,
                        start,
                        pushed_to: start,
                        extract_s: 0.0,
                    });
                    out.push(FrontEvent::Start {
                        id,
                        start_s: sample as f64 / SAMPLE_RATE as f64,
                        sample,
                    });
                }
                SpeechEvent::End { sample, reason } => {
                    if let Some(u) = self.close(sample, reason)? {
                        out.push(FrontEvent::Utterance(u));
                    }
                }
            }
        }
        // Feed the extractor up to the lag.
        let safe = self.total.saturating_sub(self.hold_back);
        self.extract_to(safe)?;
        self.trim();
        Ok(out)
    }

    fn slice(&self, from: u64, to: u64) -> &[f32] {
        let a = (from.max(self.history_start) - self.history_start) as usize;
        let b =
            ((to.max(self.history_start) - self.history_start) as usize).min(self.history.len());
        &self.history[a.min(b)..b]
    }

    fn extract_to(&mut self, to: u64) -> Result<()> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        if to <= open.pushed_to {
            return Ok(());
        }
        let from = open.pushed_to;
        let t0 = Instant::now();
        {
            let _s = tracing::debug_span!("unit_extract", samples = to - from).entered();
            let a = (from - self.history_start) as usize;
            let b = (to - self.history_start) as usize;
            self.session.push_audio(&self.history[a..b])?;
        }
        if let Some(open) = self.open.as_mut() {
            open.pushed_to = to;
            open.extract_s += t0.elapsed().as_secs_f64();
        }
        Ok(())
    }

    fn close(&mut self, end: u64, reason: EndReason) -> Result<Option<Utterance>> {
        let Some(open) = self.open.as_ref() else {
            return Ok(None);
        };
        let (id, start) = (open.id, open.start);
        let t0 = Instant::now();
        let units = {
            let _s = tracing::debug_span!("unit_extract_end", id).entered();
            if open.pushed_to > end {
                // The cut lies behind what was extracted: redo the segment from the history.
                self.session.reset();
                let seg = self.slice(start, end).to_vec();
                self.session.push_audio(&seg)?;
            } else {
                let rest = self.slice(open.pushed_to, end).to_vec();
                self.session.push_audio(&rest)?;
            }
            self.session.end_utterance()?
        };
        let extract_s = self.open.take().map_or(0.0, |o| o.extract_s) + t0.elapsed().as_secs_f64();
        let cause = match reason {
            EndReason::Silence => EndCause::Silence,
            EndReason::MaxLengthAtPause | EndReason::MaxLengthForced => EndCause::MaxLength,
            EndReason::EndOfStream => EndCause::SourceEnded,
        };
        Ok(Some(Utterance {
            id,
            start_sample: start,
            end_sample: end,
            units,
            ended_at: Instant::now(),
            cause,
            extract_s,
        }))
    }

    /// Drops history nobody can need any more (bounded memory).
    fn trim(&mut self) {
        let need_from = match &self.open {
            Some(o) => o.start,
            None => self.total.saturating_sub(self.keep as u64),
        };
        let drop = need_from.saturating_sub(self.history_start) as usize;
        // Drain in large steps only (amortized O(1) per sample).
        if drop > self.keep.max(16_000) {
            self.history.drain(..drop);
            self.history_start += drop as u64;
        }
    }
}
