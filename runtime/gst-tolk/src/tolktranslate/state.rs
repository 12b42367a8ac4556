//! The streaming state: the loaded models, the speech front end of the running stream and the
//! decoder, all in the element's one `Mutex<State>`.
//!
//! The sink pad's chain function holds the state while the front end consumes a buffer (the
//! cheap per-window work: VAD, endpointing, units of the open utterance) and releases it before
//! it enqueues the finished utterances. The src pad task takes the [`Decoder`] out of the state
//! for the length of one utterance and puts it back, so that decoding never holds the lock the
//! streaming thread needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use gstreamer as gst;
use tch::Kind;

use tolk_models::audio::vad::SileroVad;
use tolk_models::audio::SAMPLE_RATE;
use tolk_models::stream::Streaming;
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_runtime::pipeline::{
    FrontEnd, FrontEvent as RtFrontEvent, PipelineOptions, Utterance as RtUtterance,
    UtteranceTranslator, VadKind,
};

use super::decoder::Decoder;
use super::imp::CAT;
use super::output::{samples_to_time, Timeline};
use super::settings::Settings;

/// Target units handed to the vocoder at a time (100 ms of 50 Hz units before durations).
pub const VOCODE_CHUNK_UNITS: usize = 5;

/// Everything the element holds besides its settings.
#[derive(Default)]
pub struct State {
    /// The loaded models: kept from one READY -> PAUSED to the next while `model`, `device` and
    /// `vad-model` stay the same, dropped at READY -> NULL.
    pub engine: Option<Engine>,
    /// The front end of the running stream (READY -> PAUSED to PAUSED -> READY).
    pub front: Option<Front>,
    /// The src task's decoder, here while the task is not decoding with it.
    pub decoder: Option<Decoder>,
    /// Element-wide utterance numbering (messages name utterances by it).
    pub next_id: u64,
}

impl State {
    /// READY -> PAUSED: loads the models (unless loaded with the same inputs), checks the
    /// direction and mode against the model, builds the front end and the decoder.
    pub fn start(
        &mut self,
        s: &Settings,
        obj: &super::TolkTranslate,
    ) -> Result<(), gst::ErrorMessage> {
        let Some(model) = s.model.clone() else {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("the `model` property is not set (a translator folder is needed)")
            ));
        };
        let device = tolk_models::device::available_device(&s.device)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        let key = (model.clone(), s.device.clone(), s.vad_model.clone());
        if self.engine.as_ref().is_none_or(|e| e.key != key) {
            self.engine = None;
            gst::info!(CAT, obj = obj, "loading translator {}", model.display());
            let t0 = Instant::now();
            self.engine = Some(Engine::load(key, device)?);
            gst::info!(
                CAT,
                obj = obj,
                "loaded in {:.2} s",
                t0.elapsed().as_secs_f64()
            );
        }
        let engine = self.engine.as_ref().expect("loaded above");
        let t = &engine.translator;
        let direction = Direction::from(s.direction);
        if !t.manifest().supports_direction(direction) {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                (
                    "direction {} is not one of the model's ({:?})",
                    direction,
                    t.manifest().directions
                )
            ));
        }
        let mode = Settings::resolve_mode(s.mode, t)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        let front = Front::new(engine, s)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        let translator = UtteranceTranslator::new(t.clone(), direction, mode, VOCODE_CHUNK_UNITS)
            .map_err(|e| {
            gst::error_msg!(gst::LibraryError::Init, ("cannot create a session: {}", e))
        })?;
        self.front = Some(front);
        self.decoder = Some(Decoder {
            translator,
            timeline: Timeline::default(),
        });
        Ok(())
    }

    /// PAUSED -> READY: the stream's front end and decoder go, the models stay.
    pub fn stop(&mut self) {
        self.front = None;
        self.decoder = None;
    }
}

/// What READY -> PAUSED loads; kept while the inputs stay the same.
pub struct Engine {
    /// The model folder, the device and the VAD model it was loaded from.
    pub key: (PathBuf, String, Option<PathBuf>),
    pub translator: Arc<Translator>,
    pub silero: Option<SileroVad>,
}

impl Engine {
    /// Loads the translator (which must speak at 16 kHz) and the Silero VAD if one is named.
    fn load(
        key: (PathBuf, String, Option<PathBuf>),
        device: tch::Device,
    ) -> Result<Self, gst::ErrorMessage> {
        let (model, _, vad_model) = &key;
        let translator = Translator::load(model, device, Kind::Float).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::OpenRead,
                ("cannot load the translator {}: {}", model.display(), e)
            )
        })?;
        if translator.sample_rate() != SAMPLE_RATE as i64 {
            return Err(gst::error_msg!(
                gst::ResourceError::Settings,
                (
                    "{}: the vocoders speak at {} Hz, the element needs {SAMPLE_RATE} Hz",
                    model.display(),
                    translator.sample_rate()
                )
            ));
        }
        let silero = match vad_model {
            Some(p) => Some(SileroVad::load(p).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("cannot load the VAD model {}: {}", p.display(), e)
                )
            })?),
            None => None,
        };
        Ok(Self {
            key,
            translator: Arc::new(translator),
            silero,
        })
    }
}

/// One finished utterance, waiting for the decoder.
pub struct Utterance {
    /// The front end's utterance (with the element's id): units, end cause, and when the
    /// endpoint was detected (latencies count from there).
    pub utt: RtUtterance,
    /// Stream times of the speech start and end (input timeline).
    pub start: gst::ClockTime,
    pub end: gst::ClockTime,
    /// The earliest timestamp of its audio: the end of speech, or for an end found far behind
    /// the input (a maximum-length cut at an earlier pause) the input time less the endpoint
    /// delay, so that the audio is not late by more than the latency the element reports.
    pub output_from: gst::ClockTime,
    pub direction: Direction,
    pub mode: Mode,
}

/// What the front end reports, on the input timeline.
pub enum FrontEvent {
    Start {
        id: u64,
        at: gst::ClockTime,
    },
    /// `utt.id` is the element's utterance id.
    End {
        start: gst::ClockTime,
        end: gst::ClockTime,
        output_from: gst::ClockTime,
        utt: RtUtterance,
    },
}

/// [`FrontEnd`] of `tolk-runtime` (the kiosk's front end: VAD + endpointer, streaming unit
/// extraction lagging by the endpointer's delay, so that an utterance's units are exactly the
/// offline units of its segment) plus what the element adds: input timestamps, the liveness of
/// upstream and the element-wide utterance numbering.
pub struct Front {
    inner: FrontEnd,
    /// Element utterance id of the open segment, with the front end's id it maps to.
    open: Option<(u64, u64)>,
    /// How far behind the input an end of speech is found, at most (samples).
    endpoint_delay: u64,
    /// Input time of sample 0.
    pub base: Option<gst::ClockTime>,
    /// Whether upstream is live (asked once per stream).
    pub live: Option<bool>,
}

impl Front {
    pub fn new(engine: &Engine, s: &Settings) -> Result<Self, String> {
        let vad = match &engine.silero {
            Some(v) => VadKind::Silero(v.clone()),
            None => VadKind::energy(),
        };
        let kiosk = PipelineOptions::default();
        let opts = PipelineOptions {
            direction: s.direction.into(),
            // The element's direction is a property, switched by the application.
            also_offered: Vec::new(),
            mode: engine.translator.default_mode(),
            endpoint: s.endpoint(),
            // The kiosk's framing of what the translator gets (onset search over the pre-roll,
            // lead and tail; runtime `pipeline::frontend`); the tail cannot exceed the silence
            // that ends an utterance.
            pre_roll_ms: kiosk.pre_roll_ms,
            lead_ms: kiosk.lead_ms,
            tail_ms: kiosk.tail_ms.min(s.min_silence_ms),
            queue_limit: s.queue_size.max(1) as usize,
            vocoder_chunk_units: VOCODE_CHUNK_UNITS,
            workers: 1,
            min_confidence: kiosk.min_confidence,
        };
        let inner = FrontEnd::new(engine.translator.clone(), &vad, &opts, SAMPLE_RATE)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            inner,
            open: None,
            endpoint_delay: s.endpoint_delay_samples(),
            base: None,
            live: None,
        })
    }

    fn time_of(&self, sample: u64) -> gst::ClockTime {
        self.base.unwrap_or(gst::ClockTime::ZERO) + samples_to_time(sample)
    }

    /// Input samples that were NaN or infinite (replaced by 0) in this stream.
    pub fn non_finite(&self) -> usize {
        self.inner.non_finite_samples()
    }

    /// The front end's events of a push that began at sample `pushed_from`, with element ids
    /// and input times.
    fn convert(
        &mut self,
        events: Vec<RtFrontEvent>,
        pushed_from: u64,
        next_id: &mut u64,
    ) -> Vec<FrontEvent> {
        let mut new_id = || {
            let id = *next_id;
            *next_id += 1;
            id
        };
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            match ev {
                RtFrontEvent::Start { id, sample, .. } => {
                    let el = new_id();
                    self.open = Some((id, el));
                    out.push(FrontEvent::Start {
                        id: el,
                        at: self.time_of(sample),
                    });
                }
                RtFrontEvent::Utterance(mut u) => {
                    u.id = match self.open.take() {
                        Some((fid, el)) if fid == u.id => el,
                        _ => new_id(),
                    };
                    let end = u.speech_end.max(u.speech_start);
                    // The end was decided inside this push; an end of speech after silence
                    // is never more than the endpoint delay before it.
                    let earliest = pushed_from.saturating_sub(self.endpoint_delay);
                    out.push(FrontEvent::End {
                        start: self.time_of(u.speech_start),
                        end: self.time_of(end),
                        output_from: self.time_of(end.max(earliest)),
                        utt: u,
                    });
                }
            }
        }
        out
    }

    /// Consumes 16 kHz samples (non-finite ones are replaced by 0).
    pub fn push(&mut self, samples: &[f32], next_id: &mut u64) -> Result<Vec<FrontEvent>, String> {
        let from = self.inner.samples();
        let ev = self.inner.push(samples).map_err(|e| e.to_string())?;
        Ok(self.convert(ev, from, next_id))
    }

    /// End of stream: closes an open utterance, then starts over (a new stream follows a flush).
    pub fn finish(&mut self, next_id: &mut u64) -> Result<Vec<FrontEvent>, String> {
        let from = self.inner.samples();
        let res = self.inner.finish().map_err(|e| e.to_string());
        let out = res.map(|ev| self.convert(ev, from, next_id));
        self.reset();
        out
    }

    pub fn reset(&mut self) {
        self.inner.reset();
        self.open = None;
        self.base = None;
        self.live = None;
    }
}
