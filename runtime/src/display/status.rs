//! What the operator page shows: the device, the model it runs (and where from), the OTA
//! state, the audio and utterance counters and the latency percentiles, assembled per request
//! from the metrics (atomics) and the OTA state file (written by the agent, another process).

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tolk_config::bundle::{Manifest, Signatures, MANIFEST_FILE, SIGNATURE_FILE};
use tolk_config::protocol::StatusReport;

use super::hub::{DisplayHub, KioskState};
use crate::metrics::{Histogram, Metrics};

/// Where the running model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelOrigin {
    /// The active OTA slot.
    OtaSlot,
    /// `pipeline.fallback_model` (no slot active).
    Fallback,
    /// `tolk run --model`.
    CommandLine,
}

/// The model loaded at start (fixed for the life of the process: a new model is loaded on the
/// next start).
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub dir: PathBuf,
    pub origin: ModelOrigin,
    /// The bundle's name, else the folder's.
    pub name: String,
    pub version: Option<u64>,
    /// `a` or `b` for an OTA slot.
    pub slot: Option<String>,
    /// Ids of the keys that signed the bundle.
    pub key_ids: Vec<String>,
    /// When the bundle's manifest was written into the slot (Unix seconds).
    pub installed_unix_s: Option<u64>,
    pub strategy: String,
    pub units: String,
    pub directions: Vec<String>,
}

impl ModelInfo {
    /// Reads what a model folder says of itself: the signed bundle's manifest and signatures
    /// when it is an installed bundle, the translator's manifest in any case.
    pub fn describe(
        dir: &Path,
        origin: ModelOrigin,
        manifest: &tolk_models::translator::ModelManifest,
    ) -> Self {
        let bundle = std::fs::read(dir.join(MANIFEST_FILE))
            .ok()
            .and_then(|b| Manifest::parse(&b).ok());
        let key_ids = std::fs::read(dir.join(SIGNATURE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Signatures>(&b).ok())
            .map(|s| s.signatures.into_iter().map(|e| e.keyid).collect())
            .unwrap_or_default();
        let installed_unix_s = std::fs::metadata(dir.join(MANIFEST_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let slot = (origin == ModelOrigin::OtaSlot).then(|| folder.clone());
        Self {
            dir: dir.to_path_buf(),
            origin,
            name: bundle.as_ref().map_or(folder, |m| m.name.clone()),
            version: bundle.as_ref().map(|m| m.version),
            slot,
            key_ids,
            installed_unix_s,
            strategy: format!("{:?}", manifest.strategy),
            units: manifest.units.extractor_name().into(),
            directions: manifest
                .directions
                .iter()
                .map(|d| d.as_str().to_string())
                .collect(),
        }
    }
}

/// The operator page's sources.
pub struct StatusSource {
    pub device_id: String,
    pub site: String,
    pub model: ModelInfo,
    /// `models.slot_dir`: its `state.json` is read per request.
    pub slot_dir: PathBuf,
    pub metrics: std::sync::Arc<Metrics>,
    pub started: Instant,
    /// Whether an operator token is configured (the page says whether actions are possible).
    pub token_configured: bool,
}

/// p50 / p90 / p99 of a latency histogram, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Percentiles {
    fn of(h: &Histogram) -> Self {
        let ms = |q| h.quantile(q).map(|s| s * 1000.0);
        Self {
            count: h.count(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
        }
    }
}

/// The OTA side as the agent last wrote it.
#[derive(Debug, Clone, Serialize)]
pub struct OtaView {
    /// `None` when no state file exists yet (no bundle was ever installed).
    pub highest_version: Option<u64>,
    pub active_slot: Option<String>,
    pub pending_job: Option<String>,
    pub last_job: Option<StatusReport>,
    pub stale: bool,
    /// Why the state could not be read, if it could not.
    pub error: Option<String>,
}

impl OtaView {
    fn read(slot_dir: &Path) -> Self {
        let path = slot_dir.join("state.json");
        let empty = |error| Self {
            highest_version: None,
            active_slot: None,
            pending_job: None,
            last_job: None,
            stale: false,
            error,
        };
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty(None),
            Err(e) => empty(Some(format!("{}: {e}", path.display()))),
            Ok(bytes) => match serde_json::from_slice::<tolk_ota::State>(&bytes) {
                Err(e) => empty(Some(format!("{}: {e}", path.display()))),
                Ok(s) => Self {
                    highest_version: Some(s.highest_version),
                    active_slot: s.active.map(|a| a.slot),
                    pending_job: s.pending.map(|p| p.job_id),
                    last_job: s.last_job,
                    stale: s.stale,
                    error: None,
                },
            },
        }
    }
}

/// The operator page's document (`GET /api/status`).
#[derive(Debug, Clone, Serialize)]
pub struct OperatorStatus {
    pub device_id: String,
    pub site: String,
    pub runtime_version: &'static str,
    pub uptime_s: u64,
    pub now_unix_s: u64,
    pub model: ModelInfo,
    pub ota: OtaView,
    pub direction: String,
    pub offered: Vec<String>,
    pub listening: bool,
    pub state: KioskState,
    pub input_level_dbfs: f64,
    pub input_xruns: u64,
    pub output_xruns: u64,
    pub utterances: u64,
    pub dropped: u64,
    pub not_understood: u64,
    pub first_text: Percentiles,
    pub first_audio: Percentiles,
    pub rtf_last: f64,
    pub display_clients: usize,
    pub token_configured: bool,
}

impl StatusSource {
    pub fn report(&self, hub: &DisplayHub) -> OperatorStatus {
        let m = &self.metrics;
        let snap = hub.snapshot();
        OperatorStatus {
            device_id: self.device_id.clone(),
            site: self.site.clone(),
            runtime_version: tolk_config::RUNTIME_VERSION,
            uptime_s: self.started.elapsed().as_secs(),
            now_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: self.model.clone(),
            ota: OtaView::read(&self.slot_dir),
            direction: snap.direction,
            offered: snap.offered,
            listening: snap.listening,
            state: snap.state,
            input_level_dbfs: m.input_level_dbfs.get(),
            input_xruns: m.input_xruns_total(),
            output_xruns: m.output_xruns_total(),
            utterances: m.utterances.get(),
            dropped: m.utterances_dropped.get(),
            not_understood: m.not_understood.get(),
            first_text: Percentiles::of(&m.first_text_latency),
            first_audio: Percentiles::of(&m.first_audio_latency),
            rtf_last: m.rtf_last.get(),
            display_clients: hub.clients(),
            token_configured: self.token_configured,
        }
    }
}
