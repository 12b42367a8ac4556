//! The streaming translation pipeline of the kiosk:
//!
//! ```text
//! AudioSource ring --> pipeline thread: FrontEnd                       (frontend.rs)
//!                        conditioning/resampling to 16 kHz mono (NaN/Inf -> 0, clamped)
//!                        VAD (Silero or energy) + endpointer
//!                        during speech: the unit stream (streaming unit extraction)
//!                      at the endpoint: Utterance{units} --> UtteranceQueue (queue.rs)
//!                                                          bounded, drop-oldest
//! model worker thread(s): UtteranceTranslator                        (worker.rs)
//!                        DecodeSession (chain of modality by default): text deltas -> subtitle
//!                        events; units -> VocoderStream as they come -> PCM chunks -> PcmOut
//! ```
//!
//! **Overload policy.** The utterance queue holds at most [`PipelineOptions::queue_limit`]
//! waiting utterances (default 4). When a new utterance arrives at a full queue the *oldest*
//! waiting one is dropped, with an `utterance_dropped` event and the
//! `tolk_utterances_dropped_total` metric. The capture side never blocks on the model: pushing
//! to the queue is O(1) under a short lock, and memory is bounded by the queue limit, the
//! front end's history (at most `max_utterance + pre-roll + lead + 2 s` of 16 kHz audio) and
//! the rings.
//!
//! Reusable parts (no cpal or GStreamer inside): [`FrontEnd`] (audio in, utterances out),
//! [`UtteranceTranslator`] (utterance in, text and PCM out) and [`Translating`], the two
//! composed synchronously for hosts that bring their own threads (the GStreamer element).
//! [`Pipeline`] wires them to an [`AudioSource`](crate::audio::AudioSource), the queue, worker
//! threads, an output, [`events`](crate::events) and [`metrics`](crate::metrics).
//!
//! Every stage runs inside a `tracing` span (`capture_read`, `condition`, `vad_endpoint`,
//! `unit_extract`, `queue_wait`, `utterance`, `decode`, `vocoder`, `sink_write`; the decoder's
//! own `translate` span and the vocoder's `vocoder_step` spans nest inside), so a Chrome trace
//! (`--tracing FILE`) shows the timeline.

pub mod bounds;
pub mod control;
pub mod frontend;
pub mod output;
pub mod queue;
pub mod runner;

pub mod worker;

pub use control::{ControlError, PipelineControl, Requester};
pub use frontend::{FrontEnd, FrontEvent, Utterance, VadKind};
pub use output::{MemoryOut, NullOut, PcmOut, SinkOut};
pub use queue::UtteranceQueue;
pub use runner::{rss_kib, FeedEnd, Pipeline, PipelineSummary};

pub use tolk_models::translator::Output;
pub use worker::{StreamEvent, Translating, UtteranceReport, UtteranceTranslator};

use tolk_models::audio::endpoint::EndpointConfig;
use tolk_models::translator::{Direction, Mode};

/// Typed errors of the pipeline; each names the stage at fault.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("audio front end: {0}")]
    Audio(#[from] tolk_models::audio::AudioError),
    #[error("model: {0}")]
    Model(#[from] tolk_models::ModelError),
    #[error("audio output: {0}")]
    Output(String),
    #[error("invalid pipeline options: {0}")]
    Options(String),
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Longest utterance the pipeline accepts (seconds): a session's default cache holds 30 s of
/// source units, and the front end's history is sized from this.
pub const MAX_UTTERANCE_S: f64 = 28.0;

/// Default number of waiting utterances before the oldest is dropped.
pub const DEFAULT_QUEUE_LIMIT: usize = 4;

/// How the pipeline segments and translates.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The direction at start.
    pub direction: Direction,
    /// Further directions a run-time switch may choose ([`PipelineControl`]); each must be one
    /// the model translates in `mode`.
    pub also_offered: Vec<Direction>,
    pub mode: Mode,
    /// Endpointing (threshold, minimum speech and silence, maximum length).
    pub endpoint: EndpointConfig,
    /// How far before the endpointer's start the speech onset is looked for (ms): a start
    /// decided late, on a soft onset, is caught inside it.
    pub pre_roll_ms: u32,
    /// Audio before the speech onset given to the translator (ms).
    pub lead_ms: u32,
    /// Audio after the end of speech given to the translator (ms); at most
    /// `endpoint.min_silence_ms`, the hangover the endpointer already holds at the endpoint.
    pub tail_ms: u32,
    /// Waiting utterances before the oldest is dropped.
    pub queue_limit: usize,
    /// Units handed to the vocoder at a time (1 = every unit as it comes).
    pub vocoder_chunk_units: usize,
    /// Model worker threads (each with its own session).
    pub workers: usize,
    /// Below this decoder confidence an utterance is "not understood" and gets no speech
    /// (`pipeline.min_confidence`; 0 = off).
    pub min_confidence: f64,
}

impl PipelineOptions {
    /// Options from the kiosk's `[vad]` section.
    pub fn new(direction: Direction, mode: Mode, vad: &tolk_config::VadConfig) -> Self {
        Self {
            direction,
            also_offered: Vec::new(),
            mode,
            endpoint: EndpointConfig {
                threshold: vad.threshold,
                min_speech_ms: vad.min_speech_ms as f64,
                min_silence_ms: vad.min_silence_ms as f64,
                max_speech_s: (vad.max_utterance_ms as f64 / 1000.0).min(MAX_UTTERANCE_S),
                ..EndpointConfig::default()
            },
            pre_roll_ms: vad.pre_roll_ms,
            lead_ms: vad.lead_ms,
            tail_ms: vad.effective_tail_ms(),
            queue_limit: DEFAULT_QUEUE_LIMIT,
            vocoder_chunk_units: 4,
            workers: 1,
            min_confidence: 0.0,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.queue_limit == 0 {
            return Err(PipelineError::Options(
                "queue limit must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.min_confidence) {
            return Err(PipelineError::Options(format!(
                "minimum confidence {} is outside [0, 1)",
                self.min_confidence
            )));
        }
        if self.workers == 0 {
            return Err(PipelineError::Options("at least one worker".into()));
        }
        if self.tail_ms as f64 > self.endpoint.min_silence_ms {
            return Err(PipelineError::Options(format!(
                "tail of {} ms is longer than the {} ms of silence that ends an utterance",
                self.tail_ms, self.endpoint.min_silence_ms
            )));
        }
        if !(self.endpoint.max_speech_s > 0.0 && self.endpoint.max_speech_s <= MAX_UTTERANCE_S) {
            return Err(PipelineError::Options(format!(
                "maximum utterance length {} s is outside (0, {MAX_UTTERANCE_S}]",
                self.endpoint.max_speech_s
            )));
        }
        Ok(())
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self::new(
            Direction::EnFr,
            Mode::ChainOfModality,
            &tolk_config::VadConfig::default(),
        )
    }
}
