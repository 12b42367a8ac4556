//! The `tolktranslate` element: pads, events, state changes and the src pad task.
//!
//! ```text
//!            streaming thread (sink pad)                         src pad task
//! buffers -> tolk_runtime FrontEnd: VAD +   --Job-->  tolk_runtime UtteranceTranslator: decode
//!            endpointing + unit extraction  bounded    (text deltas -> messages, final text ->
//!            (per 512-sample window)        queue      tag event), units -> chunked vocoder ->
//!            state.rs                       queue.rs   buffers (decoder.rs, output.rs)
//! ```
//!
//! ```sh
//! gst-launch-1.0 -m filesrc location=in.wav ! wavparse ! audioconvert ! audioresample ! \
//!   tolktranslate model=models/demo direction=en-fr ! audioconvert ! wavenc ! filesink location=out.wav
//! ```
//!
//! The speech front end and the decoder are the kiosk pipeline's (`tolk_runtime::pipeline`);
//! the element adds the GStreamer side: input timestamps, the job queue, messages and buffers.
//! The sink pad's chain function only runs the cheap per-window work (VAD, MFCC/HuBERT units of
//! the open utterance, fed with a short lag so that the hangover after the endpoint is not
//! extracted). At the endpoint the utterance's units go into a bounded job queue; the src pad's
//! task (a GStreamer-owned thread) decodes them and pushes PCM as the vocoder produces it.
//!
//! Locks: one `Mutex<Settings>` (settings.rs), one `Mutex<State>` (state.rs) and the job
//! queue's mutex and condition variable; queue.rs states the order they are taken in.
//!
//! Overload policy (`overload` property): with `drop-oldest` a full queue (`queue-size`
//! utterances waiting) drops its oldest utterance, posting a warning and a `tolk-dropped`
//! element message; with `block` the streaming thread waits for room (no loss, upstream slows
//! down); `auto` (default) drops when upstream is live and blocks otherwise (files).
//!
//! Latency: an utterance's audio is timestamped at its end of speech (output.rs), which the
//! endpointer can only call `min-silence-ms` (in whole VAD windows) later, and decoding takes
//! time after that. The LATENCY query on the src pad answers upstream's latency plus
//! [`Settings::latency`] (the endpoint delay plus `decode-latency-ms`), so a live sink that
//! synchronises plays the translation on time.

use std::panic::AssertUnwindSafe;
use std::sync::{LazyLock, Mutex, MutexGuard};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer::subclass::prelude::*;
use gstreamer_audio as gst_audio;

use tolk_models::audio::SAMPLE_RATE;

use super::queue::{Job, JobQueue};
use super::settings::{OverloadProp, Settings};
use super::state::{FrontEvent, State, Utterance};

pub static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "tolktranslate",
        gst::DebugColorFlags::empty(),
        Some("Tolk speech translator"),
    )
});

/// The caps of both pads: 16 kHz mono float (the units, the VAD and the vocoders work at 16 kHz).
fn caps() -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::F32le)
        .channels(1)
        .rate(SAMPLE_RATE as i32)
        .build()
}

pub struct TolkTranslate {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    queue: JobQueue,
}

impl TolkTranslate {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn srcpad(&self) -> &gst::Pad {
        &self.srcpad
    }

    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Posts an element message.
    pub fn post(&self, s: gst::Structure) {
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    // --- state changes ------------------------------------------------------------------------

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let s = self.settings().clone();
        self.state().start(&s, &self.obj())
    }

    fn stop(&self) {
        self.queue.set_flushing(true);
        self.state().stop();
    }

    // --- pads ------------------------------------------------------------------------------

    fn src_activatemode(&self, active: bool) -> Result<(), gst::LoggableError> {
        if active {
            self.queue.set_flushing(false);
            self.queue.restart_timeline();
            self.start_task()
        } else {
            self.queue.set_flushing(true);
            self.srcpad
                .stop_task()
                .map_err(|e| gst::loggable_error!(CAT, "cannot stop the task: {}", e))
        }
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

    /// The LATENCY query: upstream's latency plus the element's own (see the module doc). The
    /// element can hold back any amount of input (its queue is counted in utterances, and with
    /// `drop-oldest` upstream never waits), so there is no maximum.
    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        match query.view_mut() {
            gst::QueryViewMut::Latency(q) => {
                let mut upstream = gst::query::Latency::new();
                if !self.sinkpad.peer_query(&mut upstream) {
                    return false;
                }
                let (live, min, _) = upstream.result();
                let ours = self.settings().latency();
                gst::debug!(
                    CAT,
                    imp = self,
                    "latency: upstream {min} + ours {ours} (live: {live})"
                );
                q.set(live, min + ours, gst::ClockTime::NONE);
                true
            }
            _ => gst::Pad::query_default(pad, Some(&*self.obj()), query),
        }
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        use gst::EventView;
        gst::log!(CAT, obj = pad, "event {:?}", event.type_());
        match event.view() {
            EventView::FlushStart(_) => {
                self.queue.set_flushing(true);
                let ok = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                ok
            }
            EventView::FlushStop(_) => {
                if let Some(f) = self.state().front.as_mut() {
                    f.reset();
                }
                self.queue.set_flushing(false);
                self.queue.restart_timeline();
                let ok = self.srcpad.push_event(event);
                ok && self.start_task().is_ok()
            }
            EventView::Caps(_) => {
                // The template fixes the input format; the output caps are ours.
                self.queue.push_event(gst::event::Caps::new(&caps()));
                true
            }
            EventView::Segment(seg) => {
                let out = if seg.segment().format() == gst::Format::Time {
                    event.clone()
                } else {
                    gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new())
                };
                if let Some(f) = self.state().front.as_mut() {
                    f.base = None;
                }
                self.queue.push_event(out);
                true
            }
            EventView::Eos(_) => {
                let events = {
                    let mut state = self.state();
                    let State { front, next_id, .. } = &mut *state;
                    match front.as_mut().map(|f| f.finish(next_id)) {
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
                self.queue.push_eos();
                true
            }
            // Our output has its own timeline: gaps of the input mean nothing downstream.
            EventView::Gap(_) => true,
            _ => {
                if event.is_serialized() {
                    self.queue.push_event(event);
                    true
                } else {
                    gst::Pad::event_default(pad, Some(&*self.obj()), event)
                }
            }
        }
    }

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if let Some(flow) = self.queue.flow() {
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
        let live_unknown = self
            .state()
            .front
            .as_ref()
            .is_some_and(|f| f.live.is_none());
        let live = if live_unknown {
            let mut q = gst::query::Latency::new();
            Some(self.sinkpad.peer_query(&mut q) && q.result().0)
        } else {
            None
        };
        let events = {
            let mut state = self.state();
            let State { front, next_id, .. } = &mut *state;
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
            let ev = front.push(&samples, next_id).map_err(|e| {
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

    /// Posts the front end's `tolk-speech` messages and queues the utterances (State is not
    /// held here: queueing may wait for room).
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
                FrontEvent::End {
                    start,
                    end,
                    output_from,
                    utt,
                } => {
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
                    let (direction, mode) = {
                        let s = self.settings();
                        (s.direction, s.mode)
                    };
                    let Some(translator) =
                        self.state().engine.as_ref().map(|e| e.translator.clone())
                    else {
                        return Err(gst::FlowError::Flushing);
                    };
                    let mode = Settings::resolve_mode(mode, &translator).map_err(|msg| {
                        gst::element_imp_error!(self, gst::LibraryError::Settings, ("{}", msg));
                        gst::FlowError::Error
                    })?;
                    self.enqueue_utterance(Utterance {
                        utt,
                        start,
                        end,
                        output_from,
                        direction: direction.into(),
                        mode,
                    })?;
                }
            }
        }
        Ok(gst::FlowSuccess::Ok)
    }

    fn enqueue_utterance(&self, u: Utterance) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (limit, policy) = {
            let s = self.settings();
            (s.queue_size.max(1) as usize, s.overload)
        };
        let live = self
            .state()
            .front
            .as_ref()
            .and_then(|f| f.live)
            .unwrap_or(false);
        let drop_oldest = match policy {
            OverloadProp::Auto => live,
            OverloadProp::DropOldest => true,
            OverloadProp::Block => false,
        };
        if let Some(old) = self.queue.push_utterance(u, limit, drop_oldest)? {
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

    // --- the src pad task ------------------------------------------------------------------

    fn task_iteration(&self) {
        let Some((job, restart)) = self.queue.pop() else {
            let _ = self.srcpad.pause_task();
            return;
        };
        if restart {
            if let Some(d) = self.state().decoder.as_mut() {
                d.timeline.restart();
            }
        }
        let res = match job {
            Job::Event(ev) => {
                if !self.srcpad.push_event(ev) {
                    gst::debug!(CAT, imp = self, "downstream refused an event");
                }
                Ok(())
            }
            Job::Eos => {
                self.srcpad.push_event(gst::event::Eos::new());
                Err(gst::FlowError::Eos)
            }
            Job::Utterance(u) => self.decode(u),
        };
        if let Err(flow) = res {
            self.queue.job_failed(flow);
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

    /// Decodes one utterance with the decoder taken out of the state (put back after), so the
    /// streaming thread keeps running meanwhile.
    fn decode(&self, u: Utterance) -> Result<(), gst::FlowError> {
        let Some(mut decoder) = self.state().decoder.take() else {
            return Err(gst::FlowError::Flushing);
        };
        let res = std::panic::catch_unwind(AssertUnwindSafe(|| decoder.translate(u, self)));
        self.state().decoder = Some(decoder);
        res.unwrap_or_else(|_| {
            gst::element_imp_error!(self, gst::LibraryError::Failed, ("the decoder panicked"));
            Err(gst::FlowError::Error)
        })
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
                            imp.queue.set_flushing(true);
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
            .query_function(|pad, parent, query| {
                TolkTranslate::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.src_query(pad, query),
                )
            })
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
            queue: JobQueue::default(),
        }
    }
}

impl ObjectImpl for TolkTranslate {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(Settings::properties);
        PROPS.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let latency_changed = self.settings().set(pspec.name(), value);
        match latency_changed {
            // Posted without the settings lock: the bin answers with a LATENCY query.
            Ok(true) => {
                let obj = self.obj();
                let _ = obj.post_message(gst::message::Latency::builder().src(&*obj).build());
            }
            Ok(false) => {}
            Err(e) => gst::warning!(CAT, imp = self, "{e}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        self.settings().get(pspec.name()).unwrap_or_else(|e| {
            gst::warning!(CAT, imp = self, "{e}");
            None::<String>.to_value()
        })
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
            let caps = caps();
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
            // The pads are inactive by now: the src task has stopped.
            gst::StateChange::PausedToReady => self.stop(),
            gst::StateChange::ReadyToNull => self.state().engine = None,
            _ => {}
        }
        Ok(res)
    }
}
