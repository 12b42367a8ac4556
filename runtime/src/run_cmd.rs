//! `tolk run --config FILE`: the kiosk daemon. Source and sink from `[audio]` (cpal device or
//! GStreamer pipeline string), the streaming pipeline, the metrics endpoint, events on stdout
//! (`--events`) and over MQTT (`<prefix>/<device>/subtitles`). SIGINT/SIGTERM stop it cleanly;
//! a source that cannot be opened or disappears is reported and retried with back-off.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use rumqttc::QoS;
use tolk_config::Config;
use tolk_models::translator::{Direction, Mode};
use tolk_ota::mqtt::{options, spawn_event_pump, BrokerSettings};
use tolk_ota::{ModelProbe, Settings, Updater};
use tolk_runtime::audio::{AudioSink, AudioSource, RingOptions};
use tolk_runtime::events::{Event, EventRecord, EventSink, JsonLines};
use tolk_runtime::metrics::{Metrics, MetricsServer};
use tolk_runtime::pipeline::{FeedEnd, NullOut, PcmOut, Pipeline, PipelineOptions, SinkOut};

use crate::translate_cmd::{load_translator, parse_vad};

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value = "/etc/tolk/tolk.toml")]
    config: PathBuf,
    /// Translator folder (default: the active OTA slot, else models/demo).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Direction (default: the first `[[translation]]` of the config).
    #[arg(long)]
    direction: Option<String>,
    /// com, s2st, s2tt or asr (default: the model's own mode).
    #[arg(long)]
    mode: Option<String>,
    /// Events as JSON lines on stdout.
    #[arg(long)]
    events: bool,
    /// Waiting utterances before the oldest is dropped.
    #[arg(long)]
    queue: Option<usize>,
    /// `energy`, or the path of silero_vad.jit.
    #[arg(long)]
    vad: Option<String>,
    /// Do not publish events over MQTT.
    #[arg(long)]
    no_mqtt: bool,
    /// Exit when the source finishes (EOS, end of file) instead of reopening it.
    #[arg(long)]
    once: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Several sinks at once.
struct Tee(Vec<Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, r: &EventRecord) {
        self.0.iter().for_each(|s| s.emit(r));
    }
}

/// Publishes subtitles and alerts (not audio chunks) on `<prefix>/<device>/subtitles`, QoS 0,
/// without ever blocking the pipeline (a full request queue drops the event).
struct MqttEvents {
    client: rumqttc::Client,
    topic: String,
}

impl EventSink for MqttEvents {
    fn emit(&self, r: &EventRecord) {
        if matches!(r.event, Event::AudioChunk { .. }) {
            return;
        }
        if let Err(e) = self
            .client
            .try_publish(&self.topic, QoS::AtMostOnce, false, r.to_json())
        {
            tracing::debug!("MQTT event not sent: {e}");
        }
    }
}

fn mqtt_events(cfg: &Config, stop: Arc<AtomicBool>) -> Result<Arc<dyn EventSink>> {
    let settings = BrokerSettings::from_config(&cfg.mqtt);
    let id = format!("{}-subtitles", cfg.device.id);
    let opts = options(&settings, &id, None)?;
    let (client, connection) = rumqttc::Client::new(opts, 64);
    let (rx, _h) = spawn_event_pump(connection, Some(stop))?;
    // Drain the pump's channel (connection state only matters for logs).
    std::thread::Builder::new()
        .name("mqtt-events".into())
        .spawn(move || {
            for ev in rx {
                tracing::debug!("mqtt: {ev:?}");
            }
        })?;
    let topic = format!("{}/{}/subtitles", cfg.mqtt.topic_prefix, cfg.device.id);
    Ok(Arc::new(MqttEvents { client, topic }))
}

fn model_dir(args: &RunArgs, cfg: &Config) -> PathBuf {
    if let Some(m) = &args.model {
        return m.clone();
    }
    let probe = ModelProbe::new(Duration::from_millis(
        cfg.ota.probe_latency_budget_ms as u64,
    ));
    match Updater::open(
        &cfg.models.slot_dir,
        Settings::from_config(cfg),
        Box::new(probe),
    ) {
        Ok(u) => u
            .active_dir()
            .unwrap_or_else(|| cfg.pipeline.fallback_model.clone()),
        Err(e) => {
            let fallback = cfg.pipeline.fallback_model.clone();
            tracing::warn!("model slots: {e}; using {}", fallback.display());
            fallback
        }
    }
}

/// `--vad`, else the config's `pipeline.vad_model`, else the energy VAD.
fn vad_choice(args: &RunArgs, cfg: &Config) -> String {
    match (&args.vad, &cfg.pipeline.vad_model) {
        (Some(v), _) => v.clone(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "energy".into(),
    }
}

/// Sleeps up to `d`, waking early on a stop request.
fn nap(d: Duration) {
    let end = std::time::Instant::now() + d;
    while !STOP.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let dir = model_dir(&args, &cfg);
    let tr = load_translator(&dir)?;
    let direction = match &args.direction {
        Some(d) => Direction::parse(d)?,
        None => {
            let d = cfg
                .translation
                .first()
                .context("the config has no [[translation]] direction")?;
            Direction::parse(&format!("{}-{}", d.source, d.target))?
        }
    };
    let mode = match args.mode.as_deref().unwrap_or(cfg.pipeline.mode.as_str()) {
        "auto" => tr.default_mode(),
        m => Mode::parse(m)?,
    };
    let mut opts = PipelineOptions::new(direction, mode, &cfg.vad);
    opts.queue_limit = args
        .queue
        .unwrap_or(cfg.pipeline.max_queued_utterances as usize);
    opts.min_confidence = cfg.pipeline.min_confidence as f64;

    let metrics = Arc::new(Metrics::new());
    let _server = match MetricsServer::start(&cfg.metrics.bind, metrics.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("metrics endpoint disabled: {e}");
            None
        }
    };
    let mqtt_stop = Arc::new(AtomicBool::new(false));
    let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
    if args.events {
        sinks.push(Arc::new(JsonLines::stdout()));
    }
    if !args.no_mqtt {
        match mqtt_events(&cfg, mqtt_stop.clone()) {
            Ok(s) => sinks.push(s),
            Err(e) => tracing::error!("MQTT events disabled: {e}"),
        }
    }
    let ring = RingOptions::default();
    let out: Box<dyn PcmOut> = match AudioSink::open(&cfg.audio.output, ring) {
        Ok(sink) => {
            metrics.attach_sink(&sink);
            Box::new(SinkOut::new(
                sink,
                tr.sample_rate() as u32,
                Duration::from_secs(2),
            )?)
        }
        Err(e) => {
            tracing::error!("audio output unavailable, subtitles only: {e}");
            Box::new(NullOut)
        }
    };
    let events: Arc<dyn EventSink> = Arc::new(Tee(sinks));
    let mut p = Pipeline::start(
        tr,
        parse_vad(&vad_choice(&args, &cfg))?,
        opts,
        out,
        events.clone(),
        metrics.clone(),
    )?;
    tracing::info!(model = %dir.display(), %direction, mode = mode.as_str(), "tolk run: listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut backoff = Duration::from_millis(500);
    while !STOP.load(Ordering::Relaxed) {
        let name = cfg
            .audio
            .input
            .pipeline
            .clone()
            .unwrap_or_else(|| cfg.audio.input.device.to_string());
        match AudioSource::open(&cfg.audio.input, ring) {
            Ok(mut src) => {
                metrics.attach_source(&src);
                let end = p.feed(&mut src, &STOP);
                metrics.detach_audio();
                match end {
                    Ok(FeedEnd::Stopped) => break,
                    Ok(FeedEnd::Finished) if args.once => break,
                    Ok(FeedEnd::Finished) => backoff = Duration::from_millis(500),
                    Ok(FeedEnd::Lost(_)) => {}
                    Err(e) => tracing::error!("pipeline: {e}; restarting the source"),
                }
            }
            Err(e) => {
                tracing::warn!("audio input {name:?}: {e}; retrying in {backoff:?}");
                events.emit(&EventRecord::now(Event::SourceLost {
                    source: name,
                    reason: e.to_string(),
                }));
                if args.once {
                    break;
                }
            }
        }
        nap(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    tracing::info!("tolk run: stopping");
    let drain = !STOP.load(Ordering::Relaxed);
    let sum = p.finish(drain);
    mqtt_stop.store(true, Ordering::Relaxed);
    drop(sum.output);
    eprintln!(
        "tolk run: {} utterance(s) translated, {} dropped",
        sum.reports.len(),
        sum.dropped.len()
    );
    Ok(())
}
