//! The element's properties: [`Settings`], their `DEFAULT_*` values and the latency they imply.
//!
//! The endpointing defaults are the kiosk's (`tolk_runtime::pipeline::PipelineOptions::default()`,
//! built from the firmware configuration's `[vad]` defaults), so the element and the kiosk cut
//! speech the same way unless told otherwise.

use std::path::PathBuf;
use std::sync::LazyLock;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use tolk_models::audio::endpoint::EndpointConfig;
use tolk_models::audio::vad::WINDOW;
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_runtime::pipeline::{PipelineOptions, MAX_UTTERANCE_S};

use super::output::samples_to_time;

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

pub const DEFAULT_DIRECTION: DirectionProp = DirectionProp::EnFr;
pub const DEFAULT_MODE: ModeProp = ModeProp::Auto;
pub const DEFAULT_DEVICE: &str = "cpu";
/// Waiting utterances: fewer than the kiosk's `DEFAULT_QUEUE_LIMIT`, so that an overloaded
/// live pipeline drops sooner rather than falling further behind the speaker.
pub const DEFAULT_QUEUE_SIZE: u32 = 2;
pub const DEFAULT_OVERLOAD: OverloadProp = OverloadProp::Auto;
/// Time allowed from the endpoint to the first translated audio: twice the kiosk's goal for
/// end of speech to first audio (250 ms at the 95th percentile, README "Performance"), room for
/// a loaded machine.
pub const DEFAULT_DECODE_LATENCY_MS: u32 = 500;
/// The kiosk's endpointing: threshold, minimum speech and silence, maximum length.
pub static DEFAULT_ENDPOINT: LazyLock<EndpointConfig> =
    LazyLock::new(|| PipelineOptions::default().endpoint);

/// The property values, read at READY -> PAUSED (the model, the VAD and the endpointing) or per
/// utterance (direction, mode, queue size, overload policy).
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: Option<PathBuf>,
    pub direction: DirectionProp,
    pub mode: ModeProp,
    pub vad_model: Option<PathBuf>,
    pub vad_threshold: f32,
    pub min_silence_ms: u32,
    pub max_utterance_ms: u32,
    pub device: String,
    pub queue_size: u32,
    pub overload: OverloadProp,
    pub decode_latency_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        let endpoint = &*DEFAULT_ENDPOINT;
        Self {
            model: None,
            direction: DEFAULT_DIRECTION,
            mode: DEFAULT_MODE,
            vad_model: None,
            vad_threshold: endpoint.threshold,
            min_silence_ms: endpoint.min_silence_ms as u32,
            max_utterance_ms: (endpoint.max_speech_s * 1000.0).round() as u32,
            device: DEFAULT_DEVICE.into(),
            queue_size: DEFAULT_QUEUE_SIZE,
            overload: DEFAULT_OVERLOAD,
            decode_latency_ms: DEFAULT_DECODE_LATENCY_MS,
        }
    }
}

impl Settings {
    /// The endpointer's configuration: the kiosk's, with this element's threshold, silence and
    /// maximum length (at most the runtime's limit: a session's cache holds 30 s of source
    /// units).
    pub fn endpoint(&self) -> EndpointConfig {
        EndpointConfig {
            threshold: self.vad_threshold,
            min_silence_ms: self.min_silence_ms as f64,
            max_speech_s: (self.max_utterance_ms as f64 / 1000.0).min(MAX_UTTERANCE_S),
            ..*DEFAULT_ENDPOINT
        }
    }

    /// How far behind the input an utterance ends, at most, in 16 kHz samples: the endpointer
    /// calls the end at the window where `min-silence-ms` of silence is complete (whole
    /// 512-sample VAD windows, each decided once all of it has arrived), and the end of speech
    /// the front end reports may lie up to one window before the endpointer's.
    pub fn endpoint_delay_samples(&self) -> u64 {
        let window = WINDOW as u64;
        let silence = (tolk_models::audio::SAMPLE_RATE as u64 * self.min_silence_ms as u64)
            .div_ceil(1000)
            .div_ceil(window);
        (silence + 2) * window
    }

    /// The element's own latency: from an end of speech (the timestamp its translation starts
    /// at) to the time its first audio may leave, the endpoint delay plus the time allowed for
    /// decoding.
    pub fn latency(&self) -> gst::ClockTime {
        samples_to_time(self.endpoint_delay_samples())
            + gst::ClockTime::from_mseconds(self.decode_latency_ms as u64)
    }

    /// The mode to decode `mode` as with this translator; an error names a mode the model was
    /// not trained for.
    pub fn resolve_mode(mode: ModeProp, translator: &Translator) -> Result<Mode, String> {
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

    /// The element's properties (nick, blurb, range, default, when they may change).
    pub fn properties() -> Vec<glib::ParamSpec> {
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
                .default_value(Some(DEFAULT_DEVICE))
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
            glib::ParamSpecUInt::builder("decode-latency-ms")
                .nick("Decode latency")
                .blurb(
                    "Time allowed from the endpoint to the first translated audio, in ms \
                     (part of the latency the element reports)",
                )
                .maximum(60_000)
                .default_value(d.decode_latency_ms)
                .mutable_playing()
                .build(),
        ]
    }

    /// Sets the property `name` (type-checked by GObject). Returns whether the element's
    /// latency changed.
    pub fn set(&mut self, name: &str, value: &glib::Value) -> Result<bool, String> {
        let before = self.latency();
        let path = |v: &glib::Value| {
            v.get::<Option<String>>()
                .ok()
                .flatten()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        let checked = "type checked by GObject";
        match name {
            "model" => self.model = path(value),
            "direction" => self.direction = value.get().expect(checked),
            "mode" => self.mode = value.get().expect(checked),
            "vad-model" => self.vad_model = path(value),
            "vad-threshold" => self.vad_threshold = value.get().expect(checked),
            "min-silence-ms" => self.min_silence_ms = value.get().expect(checked),
            "max-utterance-ms" => self.max_utterance_ms = value.get().expect(checked),
            "device" => {
                self.device = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| DEFAULT_DEVICE.into())
            }
            "queue-size" => self.queue_size = value.get().expect(checked),
            "overload" => self.overload = value.get().expect(checked),
            "decode-latency-ms" => self.decode_latency_ms = value.get().expect(checked),
            other => return Err(format!("unknown property {other}")),
        }
        Ok(self.latency() != before)
    }

    /// The value of the property `name`.
    pub fn get(&self, name: &str) -> Result<glib::Value, String> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        Ok(match name {
            "model" => path(&self.model).to_value(),
            "direction" => self.direction.to_value(),
            "mode" => self.mode.to_value(),
            "vad-model" => path(&self.vad_model).to_value(),
            "vad-threshold" => self.vad_threshold.to_value(),
            "min-silence-ms" => self.min_silence_ms.to_value(),
            "max-utterance-ms" => self.max_utterance_ms.to_value(),
            "device" => self.device.to_value(),
            "queue-size" => self.queue_size.to_value(),
            "overload" => self.overload.to_value(),
            "decode-latency-ms" => self.decode_latency_ms.to_value(),
            other => return Err(format!("unknown property {other}")),
        })
    }
}
