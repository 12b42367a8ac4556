//! Machine-readable events of the kiosk, one JSON object per line on stdout
//! with `--events` (and the same records for MQTT when configured): utterance start and end,
//! partial and final subtitles with their direction and timings, audio chunks, dropped
//! utterances and lost sources.
//!
//! A line looks like
//! `{"ts_ms":1764108000123,"event":"subtitle_final","utterance":3,"direction":"en-fr",...}`:
//! `ts_ms` is the wall-clock time (Unix milliseconds) the event was emitted, `event` names the
//! variant, the other fields are the variant's. Times within the audio stream (`*_s`) count from
//! the start of the source; latencies (`*_ms`) count from the end of speech.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tolk_models::audio::endpoint::EndReason;

/// One event. `direction` is `"<source>-<target>"`, e.g. `"en-fr"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Speech started (the detected start, pre-roll excluded).
    UtteranceStart {
        utterance: u64,
        direction: String,
        /// Stream time of the start, seconds.
        start_s: f64,
    },
    /// Speech ended: the endpoint from which latencies count.
    UtteranceEnd {
        utterance: u64,
        direction: String,
        start_s: f64,
        end_s: f64,
        cause: EndReason,
    },
    /// Text so far (grows as the decoder emits tokens).
    SubtitlePartial {
        utterance: u64,
        direction: String,
        text: String,
        /// Since the end of speech.
        latency_ms: f64,
    },
    /// The complete translated text.
    SubtitleFinal {
        utterance: u64,
        direction: String,
        text: String,
        /// End of speech to the first text token.
        first_text_ms: f64,
        /// End of speech to the complete text.
        latency_ms: f64,
        /// The decoder's certainty in (0, 1]: the geometric-mean probability of the text
        /// tokens (`tolk_models::translator::Confidence::score`).
        confidence: f64,
    },
    /// The decoder was not sure enough of its translation (confidence below
    /// `pipeline.min_confidence`): the kiosk shows "please repeat" and speaks nothing. `text` is
    /// what it would have said, for the operator's log.
    NotUnderstood {
        utterance: u64,
        direction: String,
        text: String,
        confidence: f64,
        latency_ms: f64,
    },
    /// A chunk of translated speech handed to the sink.
    AudioChunk {
        utterance: u64,
        direction: String,
        /// Position of the chunk within the utterance's output, in samples.
        offset: u64,
        samples: u64,
        sample_rate: u32,
        latency_ms: f64,
    },
    /// Everything for one utterance is out.
    UtteranceDone {
        utterance: u64,
        direction: String,
        /// Processing time / speech duration.
        rtf: f64,
        first_audio_ms: Option<f64>,
    },
    /// Dropped by the overload policy (queue full: the oldest goes).
    UtteranceDropped {
        utterance: u64,
        direction: String,
        reason: String,
        queue_depth: u64,
    },
    /// The audio source disappeared (device unplugged, pipeline error).
    SourceLost { source: String, reason: String },
    /// The audio source ended normally (end of file, EOS).
    SourceEnded { source: String },
    /// The next utterances are translated in `direction`; `by` is `visitor` (the subtitle
    /// page), `operator` (the operator page) or `mqtt` (the control topic).
    DirectionChanged { direction: String, by: String },
    /// A direction switch the kiosk cannot do (unknown, or not offered by the model and the
    /// configuration).
    DirectionRefused {
        requested: String,
        reason: String,
        by: String,
    },
    /// The operator paused (`false`) or resumed (`true`) listening.
    ListeningChanged { listening: bool, by: String },
}

/// An event with the wall-clock time it was emitted: one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

impl EventRecord {
    /// Stamps `event` with the current time.
    pub fn now(event: Event) -> Self {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self { ts_ms, event }
    }

    /// The JSON line, without the newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events contain only serializable fields")
    }

    /// Parses one line.
    pub fn from_json(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Where events go (stdout with `--events`, MQTT, a test collector). Not for the audio path:
/// implementations may lock and allocate.
pub trait EventSink: Send + Sync {
    fn emit(&self, record: &EventRecord);
}

/// Writes one JSON line per event and flushes, so a reader sees each event at once.
pub struct JsonLines<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl JsonLines<std::io::Stdout> {
    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn emit(&self, record: &EventRecord) {
        let mut line = record.to_json();
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            tracing::warn!("cannot write an event: {e}");
        }
    }
}

/// Keeps events in memory (tests, `tolk translate` summaries).
#[derive(Default)]
pub struct Collect(Mutex<Vec<EventRecord>>);

impl Collect {
    pub fn take(&self) -> Vec<EventRecord> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl EventSink for Collect {
    fn emit(&self, record: &EventRecord) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record.clone());
    }
}

/// Several sinks at once, in order.
pub struct Tee(pub Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, r: &EventRecord) {
        self.0.iter().for_each(|s| s.emit(r));
    }
}

/// A sink set once, after the pipeline that emits into it has started (the kiosk's screen
/// needs the pipeline's control to be built); events before that are not kept.
#[derive(Default)]
pub struct LateSink(OnceLock<Arc<dyn EventSink>>);

impl LateSink {
    /// Sets the sink; a second call is ignored and returns `false`.
    pub fn set(&self, sink: Arc<dyn EventSink>) -> bool {
        self.0.set(sink).is_ok()
    }
}

impl EventSink for LateSink {
    fn emit(&self, r: &EventRecord) {
        if let Some(s) = self.0.get() {
            s.emit(r);
        }
    }
}
