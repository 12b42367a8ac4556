//! The kiosk's firmware configuration and the signed model-bundle format.
//!
//! - [`Config`]: device identity, language directions, audio, VAD, model slots, MQTT, OTA policy,
//!   metrics and logging, read from one TOML file. [`Config::validate`] reports every problem at
//!   once with its field path. Fields read on the real-time audio path (device names, language
//!   codes, VAD parameters) are fixed-capacity `heapless` values: reading them never allocates.
//! - [`bundle`]: the model-bundle manifest, its Ed25519 signatures and their verification. This is
//!   the one definition used by the device (`tolk ota`) and the host (`tolk-train bundle sign`).
//! - [`protocol`]: the MQTT topic tree, job documents, status reports and the block codec of the
//!   data plane, shared by the device agent and the host publisher.
//! - [`fsutil`]: the durable file-system steps (atomic replace with fsync of the file and its
//!   folder, fsync of trees) that bundles, slots and checkpoints are written with.

pub mod bundle;
pub mod fsutil;
pub mod protocol;

/// The device runtime's version, compared with a bundle's `min_runtime` (the workspace version,
/// shared by the runtime, the OTA agent and the exporter that writes the default `min_runtime`).
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Short fixed-capacity string used on the real-time path.
pub type Name = heapless::String<64>;
/// Audio device name (cpal) or similar label.
pub type DeviceName = heapless::String<128>;
/// BCP-47-ish language code ("en", "fr", "pt-BR").
pub type LangCode = heapless::String<16>;

/// Most language directions one kiosk serves.
pub const MAX_DIRECTIONS: usize = 8;
/// Most trusted OTA signing keys.
pub const MAX_TRUSTED_KEYS: usize = 8;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: DeviceSection,
    /// Language directions, e.g. en -> fr and fr -> en.
    pub translation: heapless::Vec<Direction, MAX_DIRECTIONS>,
    pub audio: AudioSection,
    #[serde(default)]
    pub vad: VadConfig,
    #[serde(default)]
    pub pipeline: PipelineSection,
    pub models: ModelsSection,
    pub mqtt: MqttSection,
    pub ota: OtaPolicy,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub display: DisplaySection,
    #[serde(default)]
    pub logging: LoggingSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// Unique device id; also the MQTT client id and topic segment.
    pub id: Name,
    /// Free-form site label ("gare-du-nord-hall-2").
    #[serde(default)]
    pub site: Name,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Direction {
    pub source: LangCode,
    pub target: LangCode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSection {
    pub input: AudioEndpoint,
    pub output: AudioEndpoint,
}

/// One audio endpoint: a cpal device name, or a GStreamer pipeline string (which wins when set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioEndpoint {
    #[serde(default = "default_audio_device")]
    pub device: DeviceName,
    /// GStreamer pipeline (e.g. `alsasrc device=hw:1 ! audioconvert ! audioresample`); not read on
    /// the real-time path, so it may allocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    pub sample_rate: u32,
    #[serde(default = "one")]
    pub channels: u16,
    /// Frames per callback period.
    #[serde(default = "default_period")]
    pub period_frames: u32,
}

fn default_audio_device() -> DeviceName {
    fixed("default")
}
fn one() -> u16 {
    1
}
fn default_period() -> u32 {
    320
}

/// Voice activity detection and endpointing (all plain numbers: read by the audio thread).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VadConfig {
    /// Speech probability above which a frame counts as speech.
    pub threshold: f32,
    /// Shortest speech run that opens an utterance.
    pub min_speech_ms: u32,
    /// Silence that closes an utterance (the endpoint).
    pub min_silence_ms: u32,
    /// How far before the detected start the speech onset is looked for (a start decided late
    /// on a soft onset is caught inside it).
    pub pre_roll_ms: u32,
    /// An utterance is cut at this length.
    pub max_utterance_ms: u32,
    /// Audio before the speech onset given to the translator.
    pub lead_ms: u32,
    /// Audio after the end of speech given to the translator, at most `min_silence_ms` (the
    /// endpointer already holds that much when it ends the utterance, so it adds no latency).
    /// Absent: [`DEFAULT_TAIL_MS`], cut to `min_silence_ms` (so that configurations written
    /// before this key, with a shorter `min_silence_ms`, stay valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_ms: Option<u32>,
}

/// `vad.tail_ms` when absent: about the silence after the speech in the corpus clips.
pub const DEFAULT_TAIL_MS: u32 = 300;

impl VadConfig {
    /// The tail the front end uses: `tail_ms`, or the default cut to `min_silence_ms`.
    pub fn effective_tail_ms(&self) -> u32 {
        self.tail_ms
            .unwrap_or(DEFAULT_TAIL_MS.min(self.min_silence_ms))
    }
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 600,
            pre_roll_ms: 200,
            max_utterance_ms: 15_000,
            // The framing of the training clips (espeak-ng: from the first sample of speech, with
            // about 0.3 s of silence after it); measured on the demo model (README). The 10 ms
            // lead covers the rise of a sound before it clears the onset detector's margin.
            lead_ms: 10,
            tail_ms: None,
        }
    }
}

/// Decoding mode names accepted in `pipeline.mode`.
pub const PIPELINE_MODES: &[&str] = &["auto", "com", "s2st", "s2tt", "asr"];

/// The translation pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// `auto` (the model's own: chain of modality for a CoM model), `com`, `s2st`, `s2tt`, `asr`.
    pub mode: String,
    /// Utterances waiting for the model before the oldest is dropped (overload policy).
    pub max_queued_utterances: u32,
    /// Silero VAD TorchScript file; absent: the built-in energy VAD.
    pub vad_model: Option<PathBuf>,
    /// Translator folder used while no OTA slot holds an active model.
    pub fallback_model: PathBuf,
    /// Utterances translated with a decoder confidence below this (0 to 1: the geometric-mean
    /// probability of the text tokens) are answered "please repeat" instead of spoken; 0 = off.
    pub min_confidence: f32,
}

impl Default for PipelineSection {
    fn default() -> Self {
        Self {
            mode: "auto".into(),
            max_queued_utterances: 4,
            vad_model: None,
            fallback_model: PathBuf::from("/usr/share/tolk/models/demo"),
            min_confidence: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// Root of the A/B model slots, the staging area and the OTA state file.
    pub slot_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: String,
    /// CA certificate (PEM) for `mqtts://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS; both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// File with `username:password` on one line (kept out of the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    /// Root of the topic tree (`<prefix>/<device id>/...`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
}

fn default_keep_alive() -> u16 {
    30
}
fn default_topic_prefix() -> String {
    protocol::DEFAULT_PREFIX.to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaPolicy {
    /// Trusted Ed25519 public keys, `ed25519:<64 hex digits>`. Rotation = add the new key, sign
    /// with it, then remove the old one: bundles signed only by a removed key are rejected.
    pub trusted_keys: heapless::Vec<heapless::String<80>, MAX_TRUSTED_KEYS>,
    /// Hardware/software compatibility string a bundle must match exactly.
    pub compatible: Name,
    /// Allowed clock skew when checking manifest expiry.
    #[serde(default = "default_skew")]
    pub max_clock_skew_s: u32,
    /// Trial attempts of a new model (each counted before it starts) before giving up.
    #[serde(default = "default_attempts")]
    pub trial_attempts: u32,
    /// Latency budget of the health probe.
    #[serde(default = "default_probe_budget")]
    pub probe_latency_budget_ms: u32,
    /// Largest bundle accepted (sum of file sizes).
    #[serde(default = "default_max_bundle")]
    pub max_bundle_bytes: u64,
    /// Size of one MQTT data-plane block.
    #[serde(default = "default_block")]
    pub block_size: u32,
    /// A transfer with no progress for this long is retried (missing blocks requested again).
    #[serde(default = "default_stall")]
    pub stall_timeout_s: u32,
}

fn default_skew() -> u32 {
    300
}
fn default_attempts() -> u32 {
    3
}
fn default_probe_budget() -> u32 {
    5_000
}
fn default_max_bundle() -> u64 {
    8 << 30
}
fn default_block() -> u32 {
    64 * 1024
}
fn default_stall() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Prometheus endpoint; loopback by default (never 0.0.0.0 unless asked).
    pub bind: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:9464".into(),
        }
    }
}

/// The kiosk's screen (`tolk run`): the visitor's subtitle page at `/`, the operator's status
/// page at `/operator`, live events at `/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplaySection {
    /// Serve the pages at all.
    pub enabled: bool,
    /// Address of the pages; loopback by default (the kiosk browser runs on the device).
    pub bind: String,
    /// File holding the operator token (one line). Without it the operator page is read-only;
    /// with it, requests carrying `Authorization: Bearer <token>` may act (pause listening,
    /// switch direction for the operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token_file: Option<PathBuf>,
    /// Most browsers connected to the live event stream at once; further ones get 503.
    pub max_clients: u32,
    /// Exchanges kept on the subtitle page.
    pub history: u32,
}

/// Most `display.max_clients` (each live client costs one connection and a channel cursor).
pub const MAX_DISPLAY_CLIENTS: u32 = 256;

impl Default for DisplaySection {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: "127.0.0.1:8080".into(),
            operator_token_file: None,
            max_clients: 16,
            history: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// `tracing` filter ("info", "tolk=debug,rumqttc=warn").
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {problems}")]
    Invalid {
        path: PathBuf,
        problems: ValidationErrors,
    },
}

/// One problem: field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Every problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<Problem>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s)", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  {}: {}", p.path, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

struct Collector(Vec<Problem>);

impl Collector {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    fn check(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.err(path, message());
        }
    }
}

fn fixed<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn valid_lang(code: &str) -> bool {
    let mut parts = code.split('-');
    let first = parts.next().unwrap_or("");
    (2..=3).contains(&first.len())
        && first.chars().all(|c| c.is_ascii_lowercase())
        && parts
            .all(|p| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Config {
    /// Parses TOML text (syntax and types only; call [`Config::validate`] for the rules).
    pub fn from_toml_str(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::from_toml_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })?;
        Ok(cfg)
    }

    /// Checks every rule and reports all problems at once, each with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut c = Collector(Vec::new());
        let id = self.device.id.as_str();
        c.check(!id.is_empty(), "device.id", || "must not be empty".into());
        c.check(
            id.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            "device.id",
            || format!("{id:?} may only hold ASCII letters, digits, '-' and '_' (it is an MQTT topic segment)"),
        );

        c.check(!self.translation.is_empty(), "translation", || {
            "at least one language direction is needed".into()
        });
        for (i, d) in self.translation.iter().enumerate() {
            for (name, code) in [("source", &d.source), ("target", &d.target)] {
                c.check(
                    valid_lang(code),
                    &format!("translation[{i}].{name}"),
                    || format!("{code:?} is not a language code like \"en\" or \"pt-BR\""),
                );
            }
            c.check(d.source != d.target, &format!("translation[{i}]"), || {
                format!("source and target are both {:?}", d.source.as_str())
            });
        }

        for (name, ep) in [("input", &self.audio.input), ("output", &self.audio.output)] {
            let p = format!("audio.{name}");
            if ep.sample_rate < 8000 {
                c.err(
                    format!("{p}.sample_rate"),
                    format!("{} is below 8000", ep.sample_rate),
                );
            } else if ep.sample_rate > 192_000 {
                c.err(
                    format!("{p}.sample_rate"),
                    format!("{} is above 192000", ep.sample_rate),
                );
            }
            c.check(
                (1..=8).contains(&ep.channels),
                &format!("{p}.channels"),
                || format!("{} is outside 1..=8", ep.channels),
            );
            c.check(
                (16..=16_384).contains(&ep.period_frames),
                &format!("{p}.period_frames"),
                || format!("{} is outside 16..=16384", ep.period_frames),
            );
            match &ep.pipeline {
                Some(pl) if pl.trim().is_empty() => c.err(
                    format!("{p}.pipeline"),
                    "is empty; remove it to use `device`",
                ),
                None if ep.device.is_empty() => c.err(
                    format!("{p}.device"),
                    "is empty and no pipeline is set: name a device (\"default\") or a pipeline",
                ),
                _ => {}
            }
        }

        let v = &self.vad;
        c.check(
            v.threshold.is_finite() && v.threshold > 0.0 && v.threshold < 1.0,
            "vad.threshold",
            || format!("{} is not inside (0, 1)", v.threshold),
        );
        c.check(v.min_speech_ms >= 10, "vad.min_speech_ms", || {
            format!("{} is below 10", v.min_speech_ms)
        });
        c.check(v.min_silence_ms >= 50, "vad.min_silence_ms", || {
            format!("{} is below 50", v.min_silence_ms)
        });
        c.check(v.pre_roll_ms <= 2000, "vad.pre_roll_ms", || {
            format!("{} is above 2000", v.pre_roll_ms)
        });
        c.check(v.lead_ms <= 1000, "vad.lead_ms", || {
            format!("{} is above 1000", v.lead_ms)
        });
        if let Some(tail) = v.tail_ms {
            c.check(tail <= v.min_silence_ms, "vad.tail_ms", || {
                format!(
                    "{tail} exceeds min_silence_ms ({}): no more audio after the speech is held \
                     when the utterance ends",
                    v.min_silence_ms
                )
            });
        }
        c.check(
            v.max_utterance_ms > v.min_speech_ms + v.min_silence_ms,
            "vad.max_utterance_ms",
            || {
                format!(
                    "{} must exceed min_speech_ms + min_silence_ms ({})",
                    v.max_utterance_ms,
                    v.min_speech_ms + v.min_silence_ms
                )
            },
        );

        let p = &self.pipeline;
        c.check(
            PIPELINE_MODES.contains(&p.mode.as_str()),
            "pipeline.mode",
            || format!("{:?} is not one of {PIPELINE_MODES:?}", p.mode),
        );
        c.check(
            (1..=64).contains(&p.max_queued_utterances),
            "pipeline.max_queued_utterances",
            || format!("{} is not in 1..=64", p.max_queued_utterances),
        );
        c.check(
            (0.0..1.0).contains(&p.min_confidence),
            "pipeline.min_confidence",
            || format!("{} is not in [0, 1)", p.min_confidence),
        );

        c.check(
            self.models.slot_dir.is_absolute(),
            "models.slot_dir",
            || format!("{:?} must be an absolute path", self.models.slot_dir),
        );

        let m = &self.mqtt;
        let scheme = m.broker.split("://").next().unwrap_or("");
        match protocol::BrokerUrl::parse(&m.broker) {
            Err(e) => c.err("mqtt.broker", e),
            Ok(u) => {
                if u.tls && m.ca.is_none() {
                    c.err("mqtt.ca", "is required with an mqtts:// broker");
                }
                if !u.tls && (m.client_cert.is_some() || m.ca.is_some()) {
                    c.err(
                        "mqtt.broker",
                        format!("uses {scheme}:// but TLS files are set: use mqtts://"),
                    );
                }
            }
        }
        if m.client_cert.is_some() != m.client_key.is_some() {
            c.err(
                "mqtt.client_key",
                "client_cert and client_key must be given together",
            );
        }
        c.check(m.keep_alive_s >= 5, "mqtt.keep_alive_s", || {
            format!("{} is below 5", m.keep_alive_s)
        });
        c.check(
            !m.topic_prefix.is_empty()
                && !m.topic_prefix.contains(['#', '+'])
                && !m.topic_prefix.ends_with('/'),
            "mqtt.topic_prefix",
            || {
                format!(
                    "{:?} must be non-empty, without wildcards or trailing '/'",
                    m.topic_prefix
                )
            },
        );

        let o = &self.ota;
        c.check(!o.trusted_keys.is_empty(), "ota.trusted_keys", || {
            "at least one trusted key is needed".into()
        });
        for (i, k) in o.trusted_keys.iter().enumerate() {
            if k.strip_prefix("ed25519:")
                .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b == b'0'))
            {
                c.err(
                    format!("ota.trusted_keys[{i}]"),
                    "is the placeholder: put the public key printed by `tolk ota keygen` here",
                );
            } else if let Err(e) = bundle::PublicKey::parse(k) {
                c.err(format!("ota.trusted_keys[{i}]"), e.to_string());
            }
        }
        c.check(!o.compatible.is_empty(), "ota.compatible", || {
            "must not be empty".into()
        });
        c.check(o.max_clock_skew_s <= 86_400, "ota.max_clock_skew_s", || {
            format!("{} is above one day", o.max_clock_skew_s)
        });
        c.check(
            (1..=20).contains(&o.trial_attempts),
            "ota.trial_attempts",
            || format!("{} is outside 1..=20", o.trial_attempts),
        );
        c.check(
            o.probe_latency_budget_ms >= 10,
            "ota.probe_latency_budget_ms",
            || format!("{} is below 10", o.probe_latency_budget_ms),
        );
        c.check(
            (1024..=protocol::MAX_BLOCK_SIZE).contains(&o.block_size),
            "ota.block_size",
            || {
                format!(
                    "{} is outside 1024..={} (brokers cap packets near 128 KiB)",
                    o.block_size,
                    protocol::MAX_BLOCK_SIZE
                )
            },
        );
        c.check(o.stall_timeout_s >= 1, "ota.stall_timeout_s", || {
            "must be at least 1".into()
        });

        if self.metrics.bind.parse::<std::net::SocketAddr>().is_err() {
            c.err(
                "metrics.bind",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.metrics.bind
                ),
            );
        }
        let d = &self.display;
        if d.bind.parse::<std::net::SocketAddr>().is_err() {
            c.err(
                "display.bind",
                format!("{:?} is not an address like 127.0.0.1:8080", d.bind),
            );
        }
        c.check(
            (1..=MAX_DISPLAY_CLIENTS).contains(&d.max_clients),
            "display.max_clients",
            || format!("{} is outside 1..={MAX_DISPLAY_CLIENTS}", d.max_clients),
        );
        c.check((1..=20).contains(&d.history), "display.history", || {
            format!("{} is outside 1..=20", d.history)
        });
        if let Some(p) = &d.operator_token_file {
            c.check(p.is_absolute(), "display.operator_token_file", || {
                format!("{} is not an absolute path", p.display())
            });
        }
        c.check(
            matches!(self.logging.format.as_str(), "text" | "json"),
            "logging.format",
            || format!("{:?} is not \"text\" or \"json\"", self.logging.format),
        );
        c.check(!self.logging.level.is_empty(), "logging.level", || {
            "must not be empty".into()
        });

        if c.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.0))
        }
    }

    /// The parsed trusted keys (validated configs only hold valid ones).
    pub fn trusted_keys(&self) -> Vec<bundle::PublicKey> {
        self.ota
            .trusted_keys
            .iter()
            .filter_map(|k| bundle::PublicKey::parse(k).ok())
            .collect()
    }
}

/// A commented default configuration (valid except for the placeholder trusted key, which
/// `tolk ota keygen` replaces).
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Config {
        let text = DEFAULT_CONFIG.replace(
            "ed25519:0000000000000000000000000000000000000000000000000000000000000000",
            &bundle::SigningKey::generate().public().to_string(),
        );
        Config::from_toml_str(&text).unwrap()
    }

    #[test]
    fn default_config_parses_and_only_the_placeholder_key_is_flagged() {
        let cfg = Config::from_toml_str(DEFAULT_CONFIG).unwrap();
        let errs = cfg.validate().unwrap_err();
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].path, "ota.trusted_keys[0]");
        example().validate().unwrap();
    }

    #[test]
    fn committed_example_config_is_valid() {
        let text = include_str!("../../deploy/tolk.example.toml");
        Config::from_toml_str(text).unwrap().validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut cfg = example();
        cfg.audio.input.sample_rate = 7000;
        cfg.audio.output.channels = 0;
        cfg.vad.threshold = f32::NAN;
        cfg.device.id = fixed("kiosk/1");
        cfg.metrics.bind = "everywhere".into();
        cfg.display.max_clients = 0;
        cfg.display.operator_token_file = Some("token".into());
        cfg.ota.block_size = 1 << 20;
        cfg.mqtt.client_key = None;
        cfg.pipeline.mode = "fast".into();
        cfg.pipeline.max_queued_utterances = 0;
        cfg.pipeline.min_confidence = f32::NAN;
        cfg.vad.lead_ms = 5000;
        cfg.vad.tail_ms = Some(cfg.vad.min_silence_ms + 1);
        let errs = cfg.validate().unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "audio.input.sample_rate",
            "audio.output.channels",
            "vad.threshold",
            "vad.lead_ms",
            "vad.tail_ms",
            "device.id",
            "metrics.bind",
            "display.max_clients",
            "display.operator_token_file",
            "ota.block_size",
            "mqtt.client_key",
            "pipeline.mode",
            "pipeline.max_queued_utterances",
            "pipeline.min_confidence",
        ] {
            assert!(paths.contains(&want), "{want} missing from {errs}");
        }
        let text = errs.to_string();
        assert!(
            text.contains("audio.input.sample_rate: 7000 is below 8000"),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_and_overlong_names_are_parse_errors() {
        let text = DEFAULT_CONFIG.replace("[vad]", "[vad]\nthreshhold = 0.4");
        let e = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.contains("threshhold"), "{e}");
        let long = "x".repeat(65);
        let text = DEFAULT_CONFIG.replace("id = \"kiosk-0001\"", &format!("id = \"{long}\""));
        assert!(Config::from_toml_str(&text).is_err());
    }

    #[test]
    fn tail_defaults_to_what_the_endpoint_silence_allows() {
        // A configuration from before the key, with a short endpoint silence, stays valid.
        let text = DEFAULT_CONFIG
            .replace("min_silence_ms = 600", "min_silence_ms = 250")
            .replace("tail_ms = 300", "");
        let cfg = Config::from_toml_str(&text).unwrap();
        assert_eq!(cfg.vad.tail_ms, None);
        assert_eq!(cfg.vad.effective_tail_ms(), 250);
        assert_eq!(VadConfig::default().effective_tail_ms(), DEFAULT_TAIL_MS);
        let mut cfg = example();
        assert_eq!(
            cfg.vad.tail_ms,
            Some(300),
            "default.toml spells the default out"
        );
        cfg.vad.tail_ms = Some(cfg.vad.min_silence_ms);
        cfg.validate().unwrap();
        cfg.vad.tail_ms = Some(cfg.vad.min_silence_ms + 1);
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("vad.tail_ms: 601 exceeds min_silence_ms (600)"),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = example();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(Config::from_toml_str(&text).unwrap(), cfg);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Hostile TOML: arbitrary text and mutated copies of the default never panic the parser
        /// or the validator.
        #[test]
        fn config_parser_never_panics(s in ".{0,400}", cut in 0usize..4000, junk in ".{0,40}") {
            if let Ok(cfg) = Config::from_toml_str(&s) { let _ = cfg.validate(); }
            let mut text = DEFAULT_CONFIG.to_string();
            let mut at = cut.min(text.len());
            while !text.is_char_boundary(at) { at -= 1; }
            text.insert_str(at, &junk);
            if let Ok(cfg) = Config::from_toml_str(&text) { let _ = cfg.validate(); }
        }

        #[test]
        fn numeric_fields_are_range_checked(rate in 0u32..300_000, ch in 0u16..20, thr in -2.0f32..2.0) {
            let mut cfg = example();
            cfg.audio.input.sample_rate = rate;
            cfg.audio.input.channels = ch;
            cfg.vad.threshold = thr;
            let ok = (8000..=192_000).contains(&rate) && (1..=8).contains(&ch) && thr > 0.0 && thr < 1.0;
            proptest::prop_assert_eq!(cfg.validate().is_ok(), ok);
        }
    }
}
