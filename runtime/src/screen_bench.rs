//! `tolk bench --screen`: the kiosk's screen attached while the bench translates, to measure
//! what it costs the pipeline. The display server runs as in `tolk run` and a headless
//! Chromium shows the subtitle page, fed with the bench's own events (subtitle deltas, finals,
//! audio chunks), so the page renders every token on the same CPU as the decoder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tolk_models::translator::{Direction, Output};
use tolk_runtime::display::{
    DisplayHub, DisplayOptions, DisplayServer, ModelInfo, ModelOrigin, StatusSource,
};
use tolk_runtime::events::{Event, EventRecord, EventSink};
use tolk_runtime::metrics::Metrics;
use tolk_runtime::pipeline::{PipelineControl, StreamEvent};

/// The Chromium binary: `explicit`, else the first one on the usual paths.
pub fn find_browser(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/snap/bin/chromium",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .context("--screen needs Chromium: install Debian's `chromium` package or pass --browser")
}

/// A display server with a headless Chromium on its subtitle page.
pub struct ScreenLoad {
    hub: Arc<DisplayHub>,
    _server: DisplayServer,
    browser: Child,
    profile: PathBuf,
}

impl ScreenLoad {
    pub fn start(
        model: &Path,
        manifest: &tolk_models::translator::ModelManifest,
        direction: Direction,
        browser: &Path,
    ) -> Result<Self> {
        let control = Arc::new(PipelineControl::new(
            direction,
            &[],
            Arc::new(tolk_runtime::events::LateSink::default()),
        ));
        let hub = Arc::new(DisplayHub::new("bench", "bench", control, 4, 4));
        let status = StatusSource {
            device_id: "bench".into(),
            site: String::new(),
            model: ModelInfo::describe(model, ModelOrigin::CommandLine, manifest),
            slot_dir: std::env::temp_dir(),
            metrics: Arc::new(Metrics::new()),
            started: Instant::now(),
            token_configured: false,
        };
        let opts = DisplayOptions {
            bind: "127.0.0.1:0".into(),
            operator_token: None,
            max_connections: 8,
        };
        let server = DisplayServer::start(opts, hub.clone(), status)?;
        let profile =
            std::env::temp_dir().join(format!("tolk-bench-browser-{}", std::process::id()));
        std::fs::create_dir_all(&profile)?;
        let url = format!("http://{}/", server.local_addr());
        // As on the kiosk (deploy/systemd/tolk-browser.service: CPUSchedulingPolicy=idle): the
        // browser gets only the CPU the translator leaves.
        let child = Command::new("chrt")
            .args(["--idle", "0"])
            .arg(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--no-first-run",
                "--window-size=1080,1920",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", browser.display()))?;
        let mut load = Self {
            hub,
            _server: server,
            browser: child,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while load.hub.clients() == 0 {
            if let Some(st) = load.browser.try_wait()? {
                bail!("{} exited ({st}) before loading {url}", browser.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not connect to {url} within 60 s", browser.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(load)
    }

    /// Forwards one of the bench's stream events to the page, as the pipeline would.
    pub fn forward(&self, ev: &StreamEvent<'_>, direction: Direction, text: &mut String) {
        let d = direction.as_str().to_string();
        let event = match ev {
            StreamEvent::Start { id, start_s } => {
                text.clear();
                Event::UtteranceStart {
                    utterance: *id,
                    direction: d,
                    start_s: *start_s,
                }
            }
            StreamEvent::End(u) => Event::UtteranceEnd {
                utterance: u.id,
                direction: d,
                start_s: u.start_s(),
                end_s: u.end_s(),
                cause: u.cause,
            },
            StreamEvent::Output(u, Output::Text { delta }) => {
                text.push_str(delta);
                Event::SubtitlePartial {
                    utterance: u.id,
                    direction: d,
                    text: text.clone(),
                    latency_ms: 0.0,
                }
            }
            StreamEvent::Output(
                u,
                Output::TextEnd {
                    text: t,
                    confidence,
                    ..
                },
            ) => Event::SubtitleFinal {
                utterance: u.id,
                direction: d,
                text: t.to_string(),
                first_text_ms: 0.0,
                latency_ms: 0.0,
                confidence: confidence.score(),
            },
            StreamEvent::Output(u, Output::Audio { pcm, offset }) => Event::AudioChunk {
                utterance: u.id,
                direction: d,
                offset: *offset,
                samples: pcm.len() as u64,
                sample_rate: 16_000,
                latency_ms: 0.0,
            },
            StreamEvent::Done(u, r) => Event::UtteranceDone {
                utterance: u.id,
                direction: d,
                rtf: r.rtf,
                first_audio_ms: r.first_audio_s.map(|s| s * 1000.0),
            },
            StreamEvent::Failed(..) => return,
        };
        self.hub.emit(&EventRecord::now(event));
    }
}

impl Drop for ScreenLoad {
    fn drop(&mut self) {
        let _ = self.browser.kill();
        let _ = self.browser.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
