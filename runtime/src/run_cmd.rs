//! `tolk run --config FILE`: the kiosk daemon. Source and sink from `[audio]` (cpal device or
//! GStreamer pipeline string), the streaming pipeline, the metrics endpoint, the kiosk's screen
//! (`[display]`: subtitle and operator pages), events on stdout (`--events`), over MQTT
//! (`<prefix>/<device>/subtitles`) and to the pages, all from one event stream; operator
//! commands on `<prefix>/<device>/control`. SIGINT/SIGTERM stop it cleanly; a source that
//! cannot be opened or disappears is reported and retried with back-off.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rumqttc::QoS;
use tolk_config::protocol::{ControlCommand, Topics};
use tolk_config::Config;
use tolk_models::translator::{Direction, Mode};
use tolk_ota::mqtt::{options, spawn_event_pump, BrokerSettings, MqttEvent};
use tolk_ota::{ModelProbe, Settings, Updater};
use tolk_runtime::audio::{AudioSink, AudioSource, RingOptions};
use tolk_runtime::display::{
    DisplayHub, DisplayOptions, DisplayServer, ModelInfo, ModelOrigin, StatusSource,
};
use tolk_runtime::events::{Event, EventRecord, EventSink, JsonLines, LateSink, Tee};
use tolk_runtime::metrics::{Metrics, MetricsServer};
use tolk_runtime::pipeline::{
    FeedEnd, NullOut, PcmOut, Pipeline, PipelineControl, PipelineOptions, Requester, SinkOut,
};

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

/// The MQTT side of the kiosk: events out on `subtitles`, operator commands in on `control`
/// (applied once the pipeline, which owns the switches, has started and set `control`).
fn mqtt_events(
    cfg: &Config,
    stop: Arc<AtomicBool>,
    control: Arc<OnceLock<Arc<PipelineControl>>>,
) -> Result<Arc<dyn EventSink>> {
    let settings = BrokerSettings::from_config(&cfg.mqtt);
    let id = format!("{}-subtitles", cfg.device.id);
    let opts = options(&settings, &id, None)?;
    let (client, connection) = rumqttc::Client::new(opts, 64);
    let (rx, _h) = spawn_event_pump(connection, Some(stop))?;
    let topics = Topics::new(&cfg.mqtt.topic_prefix, &cfg.device.id);
    let subscriber = client.clone();
    let control_topic = topics.control.clone();
    std::thread::Builder::new()
        .name("mqtt-events".into())
        .spawn(move || {
            for ev in rx {
                match ev {
                    // Clean sessions lose subscriptions: subscribe on every connection.
                    MqttEvent::Connected => {
                        if let Err(e) =
                            subscriber.try_subscribe(control_topic.as_str(), QoS::AtLeastOnce)
                        {
                            tracing::warn!(topic = %control_topic, "subscribe failed: {e}");
                        }
                    }
                    MqttEvent::Publish(topic, payload) if topic == control_topic => {
                        apply_command(control.get(), &payload)
                    }
                    other => tracing::debug!("mqtt: {other:?}"),
                }
            }
        })?;
    Ok(Arc::new(MqttEvents {
        client,
        topic: topics.subtitles,
    }))
}

/// One operator command from the control topic; a malformed one is logged and dropped.
fn apply_command(control: Option<&Arc<PipelineControl>>, payload: &[u8]) {
    let Some(control) = control else {
        tracing::warn!("control command before the pipeline started: ignored");
        return;
    };
    match ControlCommand::parse(payload) {
        Ok(ControlCommand::Direction { direction }) => {
            // A refusal is announced on the event stream by the control itself.
            let _ = control.set_direction(&direction, Requester::Mqtt);
        }
        Ok(ControlCommand::Listening { listening }) => {
            control.set_listening(listening, Requester::Mqtt)
        }
        Err(e) => tracing::warn!("control topic: {e}"),
    }
}

fn model_dir(args: &RunArgs, cfg: &Config) -> (PathBuf, ModelOrigin) {
    if let Some(m) = &args.model {
        return (m.clone(), ModelOrigin::CommandLine);
    }
    let fallback = || (cfg.pipeline.fallback_model.clone(), ModelOrigin::Fallback);
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
            .map_or_else(fallback, |d| (d, ModelOrigin::OtaSlot)),
        Err(e) => {
            let fallback = fallback();
            tracing::warn!("model slots: {e}; using {}", fallback.0.display());
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

/// The kiosk's screen; a failure leaves the kiosk running without it (logged).
fn start_display(
    cfg: &Config,
    control: Arc<PipelineControl>,
    model: ModelInfo,
    metrics: Arc<Metrics>,
    started: Instant,
    screen: &LateSink,
) -> Option<DisplayServer> {
    let d = &cfg.display;
    let opts = DisplayOptions::from_config(d).unwrap_or_else(|e| {
        tracing::error!("{e}; the operator page is read-only");
        DisplayOptions {
            bind: d.bind.clone(),
            operator_token: None,
            max_connections: d.max_clients as usize + 16,
        }
    });
    let hub = Arc::new(DisplayHub::new(
        &cfg.device.id,
        &model.name,
        control,
        d.history as usize,
        d.max_clients as usize,
    ));
    let status = StatusSource {
        device_id: cfg.device.id.to_string(),
        site: cfg.device.site.to_string(),
        model,
        slot_dir: cfg.models.slot_dir.clone(),
        metrics,
        started,
        token_configured: opts.operator_token.is_some(),
    };
    match DisplayServer::start(opts, hub.clone(), status) {
        Ok(s) => {
            screen.set(hub);
            Some(s)
        }
        Err(e) => {
            tracing::error!("kiosk screen disabled: {e}");
            None
        }
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
    let started = Instant::now();
    let (dir, origin) = model_dir(&args, &cfg);
    let tr = load_translator(&dir)?;
    // Every configured direction this runtime knows; the pipeline keeps those the model has.
    let configured: Vec<Direction> = cfg
        .translation
        .iter()
        .filter_map(|d| {
            let name = format!("{}-{}", d.source, d.target);
            Direction::parse(&name)
                .map_err(|e| tracing::warn!("[[translation]] {name}: {e}"))
                .ok()
        })
        .collect();
    let direction = match &args.direction {
        Some(d) => Direction::parse(d)?,
        None => *configured
            .first()
            .context("the config has no [[translation]] direction this runtime knows")?,
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
    opts.also_offered = configured;

    let metrics = Arc::new(Metrics::new());
    let _server = match MetricsServer::start(&cfg.metrics.bind, metrics.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("metrics endpoint disabled: {e}");
            None
        }
    };
    let mqtt_stop = Arc::new(AtomicBool::new(false));
    let control_slot = Arc::new(OnceLock::new());
    let screen = Arc::new(LateSink::default());
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![screen.clone()];
    if args.events {
        sinks.push(Arc::new(JsonLines::stdout()));
    }
    if !args.no_mqtt {
        match mqtt_events(&cfg, mqtt_stop.clone(), control_slot.clone()) {
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
    let model = ModelInfo::describe(&dir, origin, tr.manifest());
    let mut p = Pipeline::start(
        tr,
        parse_vad(&vad_choice(&args, &cfg))?,
        opts,
        out,
        events.clone(),
        metrics.clone(),
    )?;
    let control = p.control();
    let _ = control_slot.set(control.clone());
    let _display = if cfg.display.enabled {
        start_display(&cfg, control, model, metrics.clone(), started, &screen)
    } else {
        None
    };
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
