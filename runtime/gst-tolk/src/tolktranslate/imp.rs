//! The `tolktranslate` element.
//!
//! ```text
//!            streaming thread (sink pad)                         src pad task (worker)
//! buffers -> tolk_runtime FrontEnd: VAD +   --Job-->  tolk_runtime UtteranceTranslator: decode
//!            endpointing + unit extraction  bounded    (text deltas -> messages, final text ->
//!            (per 512-sample window)        queue      tag event), units -> chunked vocoder ->
//!                                                      buffers (SrcOut)
//! ```
//!
//! The speech front end and the decoder are the kiosk pipeline's (`tolk_runtime::pipeline`);
//! the element adds the GStreamer side: input timestamps, the job queue, messages and buffers.
//! The sink pad's chain function only runs the cheap per-window work (VAD, MFCC/HuBERT units of
//! the open utterance, fed with a short lag so that the hangover after the endpoint is not
//! extracted). At the endpoint the utterance's units go into a bounded job queue; the src pad's
//! task (a GStreamer-owned thread) decodes them and pushes PCM as the vocoder produces it.
//! Serialized events (stream-start, caps, segment, tags, EOS) travel through the same queue, so
//! they stay in order with the audio (which is why the element keeps its own job queue rather
//! than the runtime's utterance-only `UtteranceQueue`).
//!
//! Overload policy (`overload` property): with `drop-oldest` a full queue (`queue-size`
//! utterances waiting) drops its oldest utterance, posting a warning and a `tolk-dropped`
//! element message; with `block` the streaming thread waits for room (no loss, upstream slows
//! down); `auto` (default) drops when upstream is live and blocks otherwise (files).
//!
//! Output timestamps lie on the input timeline: an utterance's audio starts at the input time of
//! its end of speech, or right after the previous output if that is later; within an utterance
//! buffers are back to back. Timestamps never go backwards.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;
use gstreamer_audio as gst_audio;

use tch::Kind;
use tolk_models::audio::endpoint::EndpointConfig;
use tolk_models::audio::vad::SileroVad;
use tolk_models::stream::Streaming;
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_runtime::pipeline::{
    FrontEnd, FrontEvent as RtFrontEvent, Output as WorkerOutput, PcmOut, PipelineError,
    PipelineOptions, Utterance as RtUtterance, UtteranceTranslator, VadKind, MAX_UTTERANCE_S,
};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "tolktranslate",
        gst::DebugColorFlags::empty(),
        Some("Tolk speech translator"),
    )
});

/// Sample rate of both pads (the units, the VAD and the vocoders work at 16 kHz).
const RATE: u32 = 16_000;
/// Target units handed to the vocoder at a time (100 ms of 50 Hz units before durations).
const VOCODE_CHUNK_UNITS: usize = 5;
/// Shortest speech that opens an utterance (Silero's default).
const MIN_SPEECH_MS: f64 = 250.0;

fn samples_to_time(samples: u64) -> gst::ClockTime {
    gst::ClockTime::from_nseconds(
        samples
            .mul_div_floor(gst::ClockTime::SECOND.nseconds(), RATE as u64)
            .unwrap_or(u64::MAX),
    )
}

trait MulDiv {
    fn mul_div_floor(self, num: u64, den: u64) -> Option<u64>;
}

impl MulDiv for u64 {
    fn mul_div_floor(self, num: u64, den: u64) -> Option<u64> {
        u64::try_from(self as u128 * num as u128 / den as u128).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstTolkDirection")]
pub enum DirectionProp {
    #[enum_value(name = "English to French", nick = "en-fr")]
    EnFr = 0,
    #[enum_value(name = "French to English", nick = "fr-en")]
    FrEn = 1,
}

impl From<DirectionProp> for Direction {
    fn from(d: DirectionProp) -> Self {
        match d {
            DirectionProp::EnFr => Direction::EnFr,
            DirectionProp::FrEn => Direction::FrEn,
        }
    }
}

#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstTolkMode")]
pub enum ModeProp {
    #[enum_value(
        name = "The model's default (com for a chain-of-modality model)",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Chain of modality: text, then speech", nick = "com")]
    Com = 1,
    #[enum_value(name = "Direct speech to speech", nick = "s2st")]
    S2st = 2,
    #[enum_value(name = "Speech to text (no audio out)", nick = "s2tt")]
    S2tt = 3,
    #[enum_value(name = "Recognition of the source (no audio out)", nick = "asr")]
    Asr = 4,
}

#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstTolkOverload")]
pub enum OverloadProp {
    #[enum_value(
        name = "drop-oldest when upstream is live, block otherwise",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(
        name = "Drop the oldest waiting utterance (warning)",
        nick = "drop-oldest"
    )]
    DropOldest = 1,
    #[enum_value(
        name = "Block the streaming thread until there is room",
        nick = "block"
    )]
    Block = 2,
}

#[derive(Debug, Clone)]
struct Settings {
    model: Option<PathBuf>,
    direction: DirectionProp,
    mode: ModeProp,
    vad_model: Option<PathBuf>,
    vad_threshold: f32,
    min_silence_ms: u32,
    max_utterance_ms: u32,
    device: String,
    queue_size: u32,
    overload: OverloadProp,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            direction: DirectionProp::EnFr,
            mode: ModeProp::Auto,
            vad_model: None,
            vad_threshold: 0.5,
            min_silence_ms: 600,
            max_utterance_ms: 15_000,
            device: "cpu".into(),
            queue_size: 2,
            overload: OverloadProp::Auto,
        }
    }
}

fn resolve_mode(mode: ModeProp, translator: &Translator) -> Result<Mode, String> {
    let m = match mode {
        ModeProp::Auto => translator.default_mode(),
        ModeProp::Com => Mode::ChainOfModality,
        ModeProp::S2st => Mode::S2st,
        ModeProp::S2tt => Mode::S2tt,
        ModeProp::Asr => Mode::Asr,
    };
    m.task_for(translator.manifest().strategy)
        .map_err(|e| e.to_string())?;
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Loaded models

/// What READY -> PAUSED loads; kept while the inputs stay the same.
struct Engine {
    key: (PathBuf, String, Option<PathBuf>),
    translator: Arc<Translator>,
    silero: Option<SileroVad>,
}

// ---------------------------------------------------------------------------------------------
// Streaming-thread side: the runtime's speech front end (VAD, endpointing, unit extraction)

/// One finished utterance, waiting for the decoder.
struct Utterance {
    /// The front end's utterance (with the element's id): units, end cause, and when the
    /// endpoint was detected (latencies count from there).
    utt: RtUtterance,
    /// Stream times of the speech start and end (input timeline).
    start: gst::ClockTime,
    end: gst::ClockTime,
    direction: Direction,
    mode: Mode,
}

/// What the front end reports, on the input timeline.
enum FrontEvent {
    Start {
        id: u64,
        at: gst::ClockTime,
    },
    /// `utt.id` is the element's utterance id.
    End {
        start: gst::ClockTime,
        end: gst::ClockTime,
        utt: RtUtterance,
    },
}

/// [`FrontEnd`] of `tolk-runtime` (the kiosk's front end: VAD + endpointer, streaming unit
/// extraction lagging by the endpointer's delay, so that an utterance's units are exactly the
/// offline units of its segment) plus what the element adds: input timestamps, the liveness of
/// upstream and the element-wide utterance numbering.
struct Front {
    inner: FrontEnd,
    /// Element utterance id of the open segment, with the front end's id it maps to.
    open: Option<(u64, u64)>,
    /// Input time of sample 0.
    base: Option<gst::ClockTime>,
    /// Whether upstream is live (asked once per stream).
    live: Option<bool>,
}

impl Front {
    fn new(engine: &Engine, s: &Settings) -> Result<Self, String> {
        let vad = match &engine.silero {
            Some(v) => VadKind::Silero(v.clone()),
            None => VadKind::energy(),
        };
        let kiosk = PipelineOptions::default();
        let opts = PipelineOptions {
            direction: s.direction.into(),
            mode: engine.translator.default_mode(),
            endpoint: EndpointConfig {
                threshold: s.vad_threshold,
                min_speech_ms: MIN_SPEECH_MS,
                min_silence_ms: s.min_silence_ms as f64,
                // The runtime's limit (a session's cache holds 30 s of source units).
                max_speech_s: (s.max_utterance_ms as f64 / 1000.0).min(MAX_UTTERANCE_S),
                ..EndpointConfig::default()
            },
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
        let inner = FrontEnd::new(engine.translator.clone(), &vad, &opts, RATE)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            inner,
            open: None,
            base: None,
            live: None,
        })
    }

    fn time_of(&self, sample: u64) -> gst::ClockTime {
        self.base.unwrap_or(gst::ClockTime::ZERO) + samples_to_time(sample)
    }

    /// Input samples that were NaN or infinite (replaced by 0) in this stream.
    fn non_finite(&self) -> usize {
        self.inner.non_finite_samples()
    }

    fn convert(&mut self, events: Vec<RtFrontEvent>, next_id: &AtomicU64) -> Vec<FrontEvent> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            match ev {
                RtFrontEvent::Start { id, sample, .. } => {
                    let el = next_id.fetch_add(1, Ordering::Relaxed);
                    self.open = Some((id, el));
                    out.push(FrontEvent::Start {
                        id: el,
                        at: self.time_of(sample),
                    });
                }
                RtFrontEvent::Utterance(mut u) => {
                    u.id = match self.open.take() {
                        Some((fid, el)) if fid == u.id => el,
                        _ => next_id.fetch_add(1, Ordering::Relaxed),
                    };
                    out.push(FrontEvent::End {
                        start: self.time_of(u.speech_start),
                        end: self.time_of(u.speech_end.max(u.speech_start)),
                        utt: u,
                    });
                }
            }
        }
        out
    }

    /// Consumes 16 kHz samples (non-finite ones are replaced by 0).
    fn push(&mut self, samples: &[f32], next_id: &AtomicU64) -> Result<Vec<FrontEvent>, String> {
        let ev = self.inner.push(samples).map_err(|e| e.to_string())?;
        Ok(self.convert(ev, next_id))
    }

    /// End of stream: closes an open utterance, then starts over (a new stream follows a flush).
    fn finish(&mut self, next_id: &AtomicU64) -> Result<Vec<FrontEvent>, String> {
        let res = self.inner.finish().map_err(|e| e.to_string());
        let out = res.map(|ev| self.convert(ev, next_id));
        self.reset();
        out
    }

    fn reset(&mut self) {
        self.inner.reset();
        self.open = None;
        self.base = None;
        self.live = None;
    }
}
// ---------------------------------------------------------------------------------------------
// Worker side: the job queue and the decoder

enum Job {
    Utterance(Utterance),
    Event(gst::Event),
    Eos,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Set while flushing or stopped: the task pauses, waits end.
    flushing: bool,
    /// The last downstream flow error, returned upstream by the chain function.
    flow: Option<gst::FlowError>,
    /// Output timeline to restart (after a flush).
    reset_output: bool,
}

impl Queue {
    fn waiting_utterances(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| matches!(j, Job::Utterance(_)))
            .count()
    }
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    cond: Condvar,
    /// Mirrors `Queue::flushing` for the decode callback (no lock per token).
    flushing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_flushing(&self, flushing: bool) {
        let mut q = self.lock();
        q.flushing = flushing;
        self.flushing.store(flushing, Ordering::SeqCst);
        if flushing {
            q.jobs.clear();
        } else {
            q.flow = None;
        }
        self.cond.notify_all();
    }
}

/// Decoder state, used by the src pad task only.
struct Worker {
    /// The runtime's decoder: units in, text deltas and vocoded PCM out.
    translator: UtteranceTranslator,
    out: Output,
}

/// The output timeline.
#[derive(Debug, Clone, Copy)]
struct Output {
    /// End of the last output buffer.
    next_pts: Option<gst::ClockTime>,
    /// Output samples so far (buffer offsets).
    offset: u64,
    discont: bool,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            next_pts: None,
            offset: 0,
            discont: true,
        }
    }
}

/// The src pad as the decoder's [`PcmOut`]: one buffer per PCM chunk, back to back within an
/// utterance, from `pts` on. A refused push is kept in `flow` and ends the utterance's audio.
struct SrcOut<'a> {
    imp: &'a TolkTranslate,
    out: &'a mut Output,
    pts: gst::ClockTime,
    flow: Option<gst::FlowError>,
}

impl PcmOut for SrcOut<'_> {
    fn write(&mut self, pcm: &[f32]) -> tolk_runtime::pipeline::Result<()> {
        if self.imp.shared.flushing.load(Ordering::Relaxed) {
            self.flow.get_or_insert(gst::FlowError::Flushing);
        }
        if let Some(f) = self.flow {
            return Err(PipelineError::Output(format!("{f:?}")));
        }
        if pcm.is_empty() {
            return Ok(());
        }
        let out = &mut *self.out;
        let n = pcm.len() as u64;
        let mut bytes = Vec::with_capacity(pcm.len() * 4);
        for x in pcm {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        let dur = samples_to_time(out.offset + n) - samples_to_time(out.offset);
        {
            let b = buffer.get_mut().expect("a new buffer is writable");
            b.set_pts(self.pts);
            b.set_duration(dur);
            b.set_offset(out.offset);
            b.set_offset_end(out.offset + n);
            if out.discont {
                b.set_flags(gst::BufferFlags::DISCONT);
                out.discont = false;
            }
        }
        self.pts += dur;
        out.offset += n;
        out.next_pts = Some(self.pts);
        if let Err(f) = self.imp.srcpad.push(buffer) {
            self.flow = Some(f);
            return Err(PipelineError::Output(format!("{f:?}")));
        }
        Ok(())
    }

    fn end_of_utterance(&mut self) -> tolk_runtime::pipeline::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The element

pub struct TolkTranslate {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    engine: Mutex<Option<Engine>>,
    front: Mutex<Option<Front>>,
    worker: Mutex<Option<Worker>>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn src_caps() -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::F32le)
        .channels(1)
        .rate(RATE as i32)
        .build()
}

impl TolkTranslate {
    // --- state changes ------------------------------------------------------------------------

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let s = lock(&self.settings).clone();
        let Some(model) = s.model.clone() else {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("the `model` property is not set (a translator folder is needed)")
            ));
        };
        let device = tolk_models::device::available_device(&s.device)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        let key = (model.clone(), s.device.clone(), s.vad_model.clone());
        let mut engine = lock(&self.engine);
        if engine.as_ref().is_none_or(|e| e.key != key) {
            *engine = None;
            gst::info!(CAT, imp = self, "loading translator {}", model.display());
            let t0 = Instant::now();
            let translator = Translator::load(&model, device, Kind::Float).map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::OpenRead,
                    ("cannot load the translator {}: {}", model.display(), e)
                )
            })?;
            if translator.sample_rate() != RATE as i64 {
                return Err(gst::error_msg!(
                    gst::ResourceError::Settings,
                    (
                        "{}: the vocoders speak at {} Hz, the element needs {RATE} Hz",
                        model.display(),
                        translator.sample_rate()
                    )
                ));
            }
            let silero = match &s.vad_model {
                Some(p) => Some(SileroVad::load(p).map_err(|e| {
                    gst::error_msg!(
                        gst::ResourceError::OpenRead,
                        ("cannot load the VAD model {}: {}", p.display(), e)
                    )
                })?),
                None => None,
            };
            gst::info!(
                CAT,
                imp = self,
                "loaded in {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            *engine = Some(Engine {
                key,
                translator: Arc::new(translator),
                silero,
            });
        }
        let engine = engine.as_ref().expect("loaded above");
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
        let mode = resolve_mode(s.mode, t)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        let front = Front::new(engine, &s)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
        let translator = UtteranceTranslator::new(t.clone(), direction, mode, VOCODE_CHUNK_UNITS)
            .map_err(|e| {
            gst::error_msg!(gst::LibraryError::Init, ("cannot create a session: {}", e))
        })?;
        *lock(&self.front) = Some(front);
        *lock(&self.worker) = Some(Worker {
            translator,
            out: Output::default(),
        });
        Ok(())
    }

    fn stop(&self) {
        self.shared.set_flushing(true);
        *lock(&self.front) = None;
        *lock(&self.worker) = None;
    }

    // --- pads ------------------------------------------------------------------------------

    fn src_activatemode(&self, active: bool) -> Result<(), gst::LoggableError> {
        if active {
            self.shared.set_flushing(false);
            self.lock_reset_output();
            self.start_task()
        } else {
            self.shared.set_flushing(true);
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {}", e))
        }
    }

    fn lock_reset_output(&self) {
        self.shared.lock().reset_output = true;
    }

    fn start_task(&self) -> Result<(), gst::LoggableError> {
        let weak = self.obj().downgrade();
        self.srcpad
            .start_task(move || {
                if let Some(obj) = weak.upgrade() {
                    obj.imp().task_iteration();
                }
            })
            .map_err(|e| gst::loggable_error!(CAT, "cannot start the task: {}", e))
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {:?}", event.type_());
        match event.view() {
            EventView::FlushStart(_) => {
                self.shared.set_flushing(true);
                let ok = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                ok
            }
            EventView::FlushStop(_) => {
                if let Some(f) = lock(&self.front).as_mut() {
                    f.reset();
                }
                self.shared.set_flushing(false);
                self.lock_reset_output();
                let ok = self.srcpad.push_event(event);
                ok && self.start_task().is_ok()
            }
            EventView::Caps(_) => {
                // The template fixes the input format; the output caps are ours.
                self.enqueue_event(gst::event::Caps::new(&src_caps()));
                true
            }
            EventView::Segment(seg) => {
                let out = if seg.segment().format() == gst::Format::Time {
                    event.clone()
                } else {
                    gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new())
                };
                if let Some(f) = lock(&self.front).as_mut() {
                    f.base = None;
                }
                self.enqueue_event(out);
                true
            }
            EventView::Eos(_) => {
                let events = {
                    let mut front = lock(&self.front);
                    match front.as_mut().map(|f| f.finish(&self.next_id)) {
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => {
                            gst::element_imp_error!(
                                self,
                                gst::StreamError::Failed,
                                ("speech front end failed at EOS: {}", e)
                            );
                            Vec::new()
                        }
                        None => Vec::new(),
                    }
                };
                let _ = self.handle_front_events(events);
                let mut q = self.shared.lock();
                q.jobs.push_back(Job::Eos);
                self.shared.cond.notify_all();
                true
            }
            // Our output has its own timeline: gaps of the input mean nothing downstream.
            EventView::Gap(_) => true,
            _ => {
                if event.is_serialized() {
                    self.enqueue_event(event);
                    true
                } else {
                    gst::Pad::event_default(pad, Some(&*self.obj()), event)
                }
            }
        }
    }

    fn enqueue_event(&self, event: gst::Event) {
        let mut q = self.shared.lock();
        if q.flushing {
            return;
        }
        q.jobs.push_back(Job::Event(event));
        self.shared.cond.notify_all();
    }

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if let Some(flow) = self.shared.lock().flow {
            return Err(flow);
        }
        let samples = {
            let map = buffer.map_readable().map_err(|_| {
                gst::element_imp_error!(self, gst::CoreError::Failed, ("cannot map a buffer"));
                gst::FlowError::Error
            })?;
            map.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<f32>>()
        };
        let live_unknown = lock(&self.front).as_ref().is_some_and(|f| f.live.is_none());
        let live = if live_unknown {
            let mut q = gst::query::Latency::new();
            Some(self.sinkpad.peer_query(&mut q) && q.result().0)
        } else {
            None
        };
        let events = {
            let mut front = lock(&self.front);
            let Some(front) = front.as_mut() else {
                return Err(gst::FlowError::Flushing);
            };
            if let Some(live) = live {
                front.live = Some(live);
            }
            if front.base.is_none() {
                front.base = Some(buffer.pts().unwrap_or(gst::ClockTime::ZERO));
            }
            let before = front.non_finite();
            let ev = front.push(&samples, &self.next_id).map_err(|e| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("speech front end failed: {}", e)
                );
                gst::FlowError::Error
            })?;
            if before == 0 && front.non_finite() > 0 {
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Format,
                    ("non-finite input samples replaced by silence")
                );
            }
            ev
        };
        self.handle_front_events(events)
    }

    fn handle_front_events(
        &self,
        events: Vec<FrontEvent>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        for ev in events {
            match ev {
                FrontEvent::Start { id, at } => {
                    self.post(
                        gst::Structure::builder("tolk-speech")
                            .field("event", "start")
                            .field("utterance", id)
                            .field("stream-time", at.nseconds())
                            .build(),
                    );
                }
                FrontEvent::End { start, end, utt } => {
                    self.post(
                        gst::Structure::builder("tolk-speech")
                            .field("event", "end")
                            .field("utterance", utt.id)
                            .field("stream-time", end.nseconds())
                            .field("speech-start", start.nseconds())
                            .field("reason", utt.cause.as_str())
                            .field("units", utt.units.len() as u32)
                            .build(),
                    );
                    if utt.units.is_empty() {
                        continue;
                    }
                    let u = {
                        let s = lock(&self.settings).clone();
                        let engine = lock(&self.engine);
                        let Some(e) = engine.as_ref() else {
                            return Err(gst::FlowError::Flushing);
                        };
                        let mode = resolve_mode(s.mode, &e.translator).map_err(|msg| {
                            gst::element_imp_error!(self, gst::LibraryError::Settings, ("{}", msg));
                            gst::FlowError::Error
                        })?;
                        Utterance {
                            utt,
                            start,
                            end,
                            direction: s.direction.into(),
                            mode,
                        }
                    };
                    self.enqueue_utterance(u)?;
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn enqueue_utterance(&self, u: Utterance) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (limit, policy) = {
            let s = lock(&self.settings);
            (s.queue_size.max(1) as usize, s.overload)
        };
        let live = lock(&self.front)
            .as_ref()
            .and_then(|f| f.live)
            .unwrap_or(false);
        let drop_oldest = match policy {
            OverloadProp::Auto => live,
            OverloadProp::DropOldest => true,
            OverloadProp::Block => false,
        };
        let mut dropped = None;
        {
            let mut q = self.shared.lock();
            loop {
                if q.flushing {
                    return Err(gst::FlowError::Flushing);
                }
                if let Some(flow) = q.flow {
                    return Err(flow);
                }
                if q.waiting_utterances() < limit {
                    break;
                }
                if drop_oldest {
                    let i = q
                        .jobs
                        .iter()
                        .position(|j| matches!(j, Job::Utterance(_)))
                        .expect("the queue holds utterances");
                    if let Some(Job::Utterance(old)) = q.jobs.remove(i) {
                        dropped = Some(old);
                    }
                    break;
                }
                q = self.shared.cond.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            q.jobs.push_back(Job::Utterance(u));
            self.shared.cond.notify_all();
        }
        if let Some(old) = dropped {
            gst::element_imp_warning!(
                self,
                gst::CoreError::TooLazy,
                (
                    "decoder overloaded: dropped utterance {} ({} waiting at most)",
                    old.utt.id,
                    limit
                )
            );
            self.post(
                gst::Structure::builder("tolk-dropped")
                    .field("utterance", old.utt.id)
                    .field("direction", old.direction.as_str())
                    .field("speech-start", old.start.nseconds())
                    .field("speech-end", old.end.nseconds())
                    .build(),
            );
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn post(&self, s: gst::Structure) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    // --- the src pad task ------------------------------------------------------------------

    fn task_iteration(&self) {
        let (job, reset) = {
            let mut q = self.shared.lock();
            loop {
                if q.flushing {
                    drop(q);
                    let _ = self.srcpad.pause_task();
                    return;
                }
                if let Some(j) = q.jobs.pop_front() {
                    break (j, std::mem::take(&mut q.reset_output));
                }
                q = self.shared.cond.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // Room in the queue for a blocked streaming thread.
        self.shared.cond.notify_all();
        if reset {
            if let Some(w) = lock(&self.worker).as_mut() {
                w.out.next_pts = None;
                w.out.discont = true;
            }
        }
        let res = match job {
            Job::Event(ev) => {
                if self.srcpad.push_event(ev) {
                    Ok(())
                } else {
                    gst::debug!(CAT, imp = self, "downstream refused an event");
                    Ok(())
                }
            }
            Job::Eos => {
                self.srcpad.push_event(gst::event::Eos::new());
                Err(gst::FlowError::Eos)
            }
            Job::Utterance(u) => {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| self.translate(u)));
                match r {
                    Ok(r) => r,
                    Err(_) => {
                        gst::element_imp_error!(
                            self,
                            gst::LibraryError::Failed,
                            ("the decoder panicked")
                        );
                        Err(gst::FlowError::Error)
                    }
                }
            }
        };
        if let Err(flow) = res {
            let mut q = self.shared.lock();
            if flow != gst::FlowError::Eos {
                q.flow = Some(flow);
            }
            self.shared.cond.notify_all();
            drop(q);
            if flow == gst::FlowError::Eos {
                return; // keep waiting: a flush may restart the stream
            }
            gst::debug!(CAT, imp = self, "pausing task: {:?}", flow);
            if flow != gst::FlowError::Flushing {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("internal data stream error: {:?}", flow)
                );
                self.srcpad.push_event(gst::event::Eos::new());
            }
            let _ = self.srcpad.pause_task();
        }
    }

    /// Decodes one utterance with the runtime's [`UtteranceTranslator`]: subtitles as messages,
    /// the final text as a tag event, audio as it is vocoded.
    fn translate(&self, u: Utterance) -> Result<(), gst::FlowError> {
        let mut guard = lock(&self.worker);
        let Some(w) = guard.as_mut() else {
            return Err(gst::FlowError::Flushing);
        };
        let Worker { translator, out } = w;
        let t0 = Instant::now();
        let since_end = |at: Instant| at.duration_since(u.utt.ended_at).as_secs_f64() * 1000.0;
        let queued_ms = since_end(t0);
        translator
            .set_task(u.direction, u.mode)
            .map_err(|e| self.decode_error(&e))?;
        // Output timeline: at the end of speech, never before the previous output.
        let pts = match out.next_pts {
            Some(p) if p >= u.end => p,
            prev => {
                out.discont = true;
                u.end.max(prev.unwrap_or(gst::ClockTime::ZERO))
            }
        };
        let mut src = SrcOut {
            imp: self,
            out,
            pts,
            flow: None,
        };
        let mut text = String::new();
        let mut first_text_ms: Option<f64> = None;
        let mut final_posted = false;

        let post_subtitle = |text: &str, delta: &str, is_final: bool, first_ms: Option<f64>| {
            let mut b = gst::Structure::builder("tolk-subtitle")
                .field("utterance", u.utt.id)
                .field("direction", u.direction.as_str())
                .field("mode", u.mode.as_str())
                .field("text", text)
                .field("delta", delta)
                .field("final", is_final)
                .field("speech-start", u.start.nseconds())
                .field("speech-end", u.end.nseconds())
                .field("latency-ms", since_end(Instant::now()));
            if let Some(f) = first_ms {
                b = b.field("first-text-ms", f);
            }
            self.post(b.build());
        };

        let report = translator.translate(&u.utt, &mut src, &mut |o| {
            if self.shared.flushing.load(Ordering::Relaxed) {
                return;
            }
            match o {
                WorkerOutput::Text { delta } => {
                    text.push_str(delta);
                    let first = *first_text_ms.get_or_insert_with(|| since_end(Instant::now()));
                    post_subtitle(&text, delta, false, Some(first));
                }
                WorkerOutput::TextEnd { text: full, .. } => {
                    final_posted = true;
                    let rest = full.strip_prefix(text.as_str()).unwrap_or("").to_string();
                    text = full.to_string();
                    post_subtitle(&text, &rest, true, first_text_ms);
                    self.push_text_tag(&text, u.direction);
                }
                // Already pushed downstream by `SrcOut`.
                WorkerOutput::Audio { .. } => {}
            }
        });
        let flow = src.flow;
        let report = report.map_err(|e| self.decode_error(&e))?;
        if let Some(f) = flow {
            return Err(f);
        }
        if self.shared.flushing.load(Ordering::Relaxed) {
            return Err(gst::FlowError::Flushing);
        }
        if u.mode.has_text() && !final_posted {
            let rest = report
                .text
                .strip_prefix(text.as_str())
                .unwrap_or("")
                .to_string();
            post_subtitle(&report.text, &rest, true, first_text_ms);
            self.push_text_tag(&report.text, u.direction);
        }
        let mut b = gst::Structure::builder("tolk-utterance-done")
            .field("utterance", u.utt.id)
            .field("direction", u.direction.as_str())
            .field("mode", u.mode.as_str())
            .field("reason", u.utt.cause.as_str())
            .field("source-units", u.utt.units.len() as u32)
            .field("target-units", report.units.len() as u32)
            .field("samples", report.samples_out)
            .field("stop", format!("{:?}", report.stop).to_lowercase())
            .field("queued-ms", queued_ms)
            .field("decode-ms", t0.elapsed().as_secs_f64() * 1000.0)
            .field("latency-ms", since_end(Instant::now()));
        if let Some(f) = report.first_audio_s {
            b = b.field("first-audio-ms", f * 1000.0);
        }
        self.post(b.build());
        Ok(())
    }

    fn push_text_tag(&self, text: &str, direction: Direction) {
        if text.is_empty() {
            return;
        }
        let mut tags = gst::TagList::new();
        {
            let t = tags.get_mut().expect("a new tag list is writable");
            t.add::<gst::tags::Comment>(&text, gst::TagMergeMode::Replace);
            t.add::<gst::tags::LanguageCode>(&direction.tgt().code(), gst::TagMergeMode::Replace);
        }
        self.srcpad.push_event(gst::event::Tag::new(tags));
    }

    fn decode_error(&self, e: &dyn std::fmt::Display) -> gst::FlowError {
        gst::element_imp_error!(
            self,
            gst::StreamError::Decode,
            ("translation failed: {}", e)
        );
        gst::FlowError::Error
    }
}

#[glib::object_subclass]
impl ObjectSubclass for TolkTranslate {
    const NAME: &'static str = "GstTolkTranslate";
    type Type = super::TolkTranslate;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let templ = klass.pad_template("sink").expect("sink template");
        let sinkpad = gst::Pad::builder_from_template(&templ)
            .chain_function(|_pad, parent, buffer| {
                TolkTranslate::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(buffer),
                )
            })
            .event_function(|pad, parent, event| {
                TolkTranslate::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .activatemode_function(|_pad, parent, _mode, active| {
                TolkTranslate::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "panic in activation")),
                    |imp| {
                        if !active {
                            // Wake a streaming thread blocked on a full queue.
                            imp.shared.set_flushing(true);
                        }
                        Ok(())
                    },
                )
            })
            .build();
        let templ = klass.pad_template("src").expect("src template");
        let srcpad = gst::Pad::builder_from_template(&templ)
            .activatemode_function(|_pad, parent, mode, active| {
                TolkTranslate::catch_panic_pad_function(
                    parent,
                    || Err(gst::loggable_error!(CAT, "panic in activation")),
                    |imp| {
                        if mode != gst::PadMode::Push {
                            return Err(gst::loggable_error!(CAT, "only push mode"));
                        }
                        imp.src_activatemode(active)
                    },
                )
            })
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            engine: Mutex::new(None),
            front: Mutex::new(None),
            worker: Mutex::new(None),
            shared: Arc::new(Shared::default()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl ObjectImpl for TolkTranslate {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            let d = Settings::default();
            vec![
                glib::ParamSpecString::builder("model")
                    .nick("Model")
                    .blurb("Translator folder (tolk-model.json + llm/ + units/ + vocoder-*/)")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("direction", d.direction)
                    .nick("Direction")
                    .blurb("Translation direction (applies from the next utterance)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("mode", d.mode)
                    .nick("Mode")
                    .blurb("What to decode (applies from the next utterance)")
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("vad-model")
                    .nick("VAD model")
                    .blurb("silero_vad.jit for the Silero VAD; unset: the energy VAD")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecFloat::builder("vad-threshold")
                    .nick("VAD threshold")
                    .blurb("Speech probability that opens an utterance")
                    .minimum(0.01)
                    .maximum(0.99)
                    .default_value(d.vad_threshold)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("min-silence-ms")
                    .nick("Minimum silence")
                    .blurb("Silence that ends an utterance (the endpoint), in ms")
                    .minimum(50)
                    .maximum(5000)
                    .default_value(d.min_silence_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-utterance-ms")
                    .nick("Maximum utterance")
                    .blurb("Utterances are cut at this length (at the longest pause), in ms")
                    .minimum(1000)
                    .maximum(30_000)
                    .default_value(d.max_utterance_ms)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("Where the models run: cpu, cuda or cuda:N")
                    .default_value(Some("cpu"))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("queue-size")
                    .nick("Queue size")
                    .blurb("Utterances that may wait for the decoder")
                    .minimum(1)
                    .maximum(64)
                    .default_value(d.queue_size)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("overload", d.overload)
                    .nick("Overload policy")
                    .blurb("What a full queue does")
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut s = lock(&self.settings);
        let path = |v: &glib::Value| {
            v.get::<Option<String>>()
                .ok()
                .flatten()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        match pspec.name() {
            "model" => s.model = path(value),
            "direction" => s.direction = value.get().expect("type checked upstream"),
            "mode" => s.mode = value.get().expect("type checked upstream"),
            "vad-model" => s.vad_model = path(value),
            "vad-threshold" => s.vad_threshold = value.get().expect("type checked upstream"),
            "min-silence-ms" => s.min_silence_ms = value.get().expect("type checked upstream"),
            "max-utterance-ms" => s.max_utterance_ms = value.get().expect("type checked upstream"),
            "device" => {
                s.device = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "cpu".into())
            }
            "queue-size" => s.queue_size = value.get().expect("type checked upstream"),
            "overload" => s.overload = value.get().expect("type checked upstream"),
            other => gst::warning!(CAT, imp = self, "unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let s = lock(&self.settings);
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        match pspec.name() {
            "model" => path(&s.model).to_value(),
            "direction" => s.direction.to_value(),
            "mode" => s.mode.to_value(),
            "vad-model" => path(&s.vad_model).to_value(),
            "vad-threshold" => s.vad_threshold.to_value(),
            "min-silence-ms" => s.min_silence_ms.to_value(),
            "max-utterance-ms" => s.max_utterance_ms.to_value(),
            "device" => s.device.to_value(),
            "queue-size" => s.queue_size.to_value(),
            "overload" => s.overload.to_value(),
            _ => None::<String>.to_value(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        obj.add_pad(&self.sinkpad).expect("adding the sink pad");
        obj.add_pad(&self.srcpad).expect("adding the src pad");
    }
}

impl GstObjectImpl for TolkTranslate {}

impl ElementImpl for TolkTranslate {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "Tolk speech translator",
                "Filter/Audio",
                "Translates speech (English <-> French): raw speech in, translated speech out, \
                 subtitles as tolk-subtitle element messages and comment tags",
                "Tolk",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = src_caps();
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("sink template"),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("src template"),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        gst::debug!(CAT, imp = self, "state change {:?}", transition);
        if transition == gst::StateChange::ReadyToPaused {
            if let Err(msg) = self.start() {
                self.post_error_message(msg);
                return Err(gst::StateChangeError);
            }
        }
        let res = self.parent_change_state(transition)?;
        match transition {
            gst::StateChange::PausedToReady => self.stop(),
            gst::StateChange::ReadyToNull => *lock(&self.engine) = None,
            _ => {}
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    //! The streaming front end against offline extraction: the same segments and units for
    //! every chunk size, and units equal to `UnitExtractor::extract` of each segment.

    use super::*;
    use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};

    fn engine(dir: &std::path::Path) -> Engine {
        let model = dir.join("model");
        write_random_translator(&model, &TinyTranslatorSpec::default()).unwrap();
        let translator = Translator::load(&model, tch::Device::Cpu, Kind::Float).unwrap();
        Engine {
            key: (model, "cpu".into(), None),
            translator: Arc::new(translator),
            silero: None,
        }
    }

    fn speech(dir: &std::path::Path, text: &str) -> Vec<f32> {
        let wav = dir.join("s.wav");
        let st = std::process::Command::new("espeak-ng")
            .args(["-v", "en-us", "-w"])
            .arg(&wav)
            .arg(text)
            .status()
            .expect("espeak-ng runs");
        assert!(st.success());
        let w = tolk_models::audio::wav::read_wav(&wav).unwrap();
        assert_eq!(w.channels, 1);
        tolk_models::audio::resample::resample(&w.samples, w.sample_rate, RATE).unwrap()
    }

    /// Speech start and end (from the element's timestamps, in samples), the samples given to
    /// the translator (the speech with the front end's lead and tail) and their units.
    type Segment = (u64, u64, (u64, u64), Vec<u32>);

    fn run(engine: &Engine, s: &Settings, audio: &[f32], chunk: usize) -> Vec<Segment> {
        let mut front = Front::new(engine, s).unwrap();
        front.base = Some(gst::ClockTime::ZERO);
        let ids = AtomicU64::new(0);
        let mut events = Vec::new();
        for c in audio.chunks(chunk) {
            events.extend(front.push(c, &ids).unwrap());
        }
        events.extend(front.finish(&ids).unwrap());
        let ns = |t: gst::ClockTime| t.nseconds() / 62_500; // 1 sample = 62.5 us
        events
            .into_iter()
            .filter_map(|e| match e {
                FrontEvent::End { start, end, utt } => Some((
                    ns(start),
                    ns(end),
                    (utt.start_sample, utt.end_sample),
                    utt.units,
                )),
                FrontEvent::Start { .. } => None,
            })
            .collect()
    }

    fn check(engine: &Engine, s: &Settings, audio: &[f32]) -> Vec<Segment> {
        let reference = run(engine, s, audio, 320);
        for (start, end, (from, to), units) in &reference {
            // Timestamps are the speech; the translator got it with the lead and the tail.
            assert!(from <= start && start < end && end <= to, "{reference:?}");
            let offline: Vec<u32> = engine
                .translator
                .extract_units(&audio[*from as usize..*to as usize])
                .unwrap();
            assert_eq!(
                units, &offline,
                "segment {from}..{to}: streaming vs offline units"
            );
        }
        for chunk in [160, 512, 1000, 16_000] {
            assert_eq!(run(engine, s, audio, chunk), reference, "chunks of {chunk}");
        }
        reference
    }

    #[test]
    fn segments_and_units_match_offline_for_any_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let a = speech(dir.path(), "Where is the train station?");
        let b = speech(dir.path(), "Thank you, have a nice day.");
        let mut audio = vec![0.0f32; 8000];
        audio.extend(&a);
        audio.extend(vec![0.0f32; 16_000]);
        audio.extend(&b);
        audio.extend(vec![0.0f32; 16_000]);
        let s = Settings {
            min_silence_ms: 400,
            ..Settings::default()
        };
        let segs = check(&e, &s, &audio);
        println!(
            "segments: {:?}",
            segs.iter()
                .map(|x| (x.0, x.1, x.2, x.3.len()))
                .collect::<Vec<_>>()
        );
        assert_eq!(segs.len(), 2, "two utterances");
        assert!(segs[0].1 <= 8000 + a.len() as u64 + 512);
        assert!(segs[1].0 >= 8000 + a.len() as u64);
    }

    #[test]
    fn long_speech_is_cut_at_max_length_with_the_same_units() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let audio = speech(
            dir.path(),
            "The next bus leaves at ten past four and a ticket to Lyon costs twelve euros",
        );
        let s = Settings {
            min_silence_ms: 400,
            max_utterance_ms: 1000,
            ..Settings::default()
        };
        let segs = check(&e, &s, &audio);
        println!(
            "segments: {:?}",
            segs.iter()
                .map(|x| (x.0, x.1, x.2, x.3.len()))
                .collect::<Vec<_>>()
        );
        assert!(
            segs.len() >= 3,
            "{} s of speech cut into 1 s pieces",
            audio.len() / 16_000
        );
        for (start, end, _, _) in &segs {
            assert!(
                end - start <= 16_000 + 512,
                "{start}..{end} exceeds the maximum"
            );
        }
    }
}
