//! Prometheus metrics of the kiosk: latency from end of speech to first text
//! and to first audio, real-time factor, queue depths, utterance counters and audio xruns,
//! served in the text exposition format (version 0.0.4) by a small HTTP/1.1 server on a
//! loopback address by default (`[metrics] bind`).
//!
//! Every metric is a set of atomics: recording never locks or allocates, so the pipeline and the
//! model threads update them freely. Audio streams are attached once
//! ([`Metrics::attach_source`], [`Metrics::attach_sink`]) and their xrun counters and ring fill
//! levels are read at scrape time, never written by the metrics side.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::audio::{AudioSink, AudioSource, QueueProbe, StreamStats};

/// The level reported for digital silence (dBFS).
pub const SILENCE_DBFS: f64 = -120.0;

/// RMS level of `samples` in dBFS (full scale = 1.0), at least [`SILENCE_DBFS`].
pub fn rms_dbfs(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return SILENCE_DBFS;
    }
    let energy: f64 = samples
        .iter()
        .map(|&x| {
            if x.is_finite() {
                (x as f64).powi(2)
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / samples.len() as f64;
    (10.0 * energy.log10()).max(SILENCE_DBFS)
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as `f64` bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A histogram with fixed upper bounds (`le`), lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; the last slot is `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

/// Latency buckets in seconds (10 ms .. 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];
/// Real-time-factor buckets (processing time / audio duration).
pub const RTF_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one observation; NaN is ignored.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self.sum_bits.compare_exchange_weak(
                cur,
                new,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }

    /// The `q`-quantile (0..=1) estimated from the buckets as Prometheus' `histogram_quantile`
    /// does: linear within the bucket that holds it, the highest finite bound for the `+Inf`
    /// bucket. `None` before the first observation.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let Some(&hi) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                return Some(lo + (hi - lo) * ((rank - below as f64) / c as f64).clamp(0.0, 1.0));
            }
            below += c;
        }
        self.bounds.last().copied()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(v) => fmt_f64(*v),
                None => "+Inf".into(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum {}", fmt_f64(self.sum()));
        // The count is the +Inf bucket, so the exposition is self-consistent mid-update.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Queue-depth gauges: the capture and playback rings (frames, filled from attached streams
/// when set) and the utterances waiting for the model.
#[derive(Debug, Default)]
pub struct QueueDepths {
    pub capture_frames: Gauge,
    pub utterances: Gauge,
    pub playback_frames: Gauge,
}

#[derive(Default)]
struct Attached {
    inputs: Vec<(Arc<StreamStats>, QueueProbe)>,
    outputs: Vec<(Arc<StreamStats>, QueueProbe)>,
}

/// All metrics of one runtime. Share it as `Arc<Metrics>`.
pub struct Metrics {
    /// End of speech (endpoint) to the first subtitle text, seconds.
    pub first_text_latency: Histogram,
    /// End of speech to the first translated audio chunk, seconds.
    pub first_audio_latency: Histogram,
    /// Per-utterance real-time factor (processing time / utterance duration).
    pub rtf: Histogram,
    /// The last utterance's real-time factor.
    pub rtf_last: Gauge,
    pub queue_depth: QueueDepths,
    /// Utterances detected and queued for translation.
    pub utterances: Counter,
    /// Utterances dropped by the overload policy.
    pub utterances_dropped: Counter,
    /// Utterances below the minimum confidence (answered "please repeat", no speech).
    pub not_understood: Counter,
    /// Xruns reported by the pipeline itself (added to the attached streams' counters).
    pub input_xruns: Counter,
    pub output_xruns: Counter,
    /// Level of the last 20 ms of input (RMS, dBFS; -120 for digital silence), set by the
    /// pipeline thread, read by the operator page's meter.
    pub input_level_dbfs: Gauge,
    /// Only touched by `attach_*` and scrapes, never on the audio or model path.
    attached: Mutex<Attached>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            first_text_latency: Histogram::new(LATENCY_BUCKETS),
            first_audio_latency: Histogram::new(LATENCY_BUCKETS),
            rtf: Histogram::new(RTF_BUCKETS),
            rtf_last: Gauge::default(),
            queue_depth: QueueDepths::default(),
            utterances: Counter::default(),
            utterances_dropped: Counter::default(),
            not_understood: Counter::default(),
            input_xruns: Counter::default(),
            output_xruns: Counter::default(),
            input_level_dbfs: {
                let g = Gauge::default();
                g.set(SILENCE_DBFS);
                g
            },
            attached: Mutex::new(Attached::default()),
        }
    }

    /// Reports this source's xruns and capture-ring depth at every scrape.
    pub fn attach_source(&self, source: &AudioSource) {
        self.lock()
            .inputs
            .push((source.stats(), source.queue_probe()));
    }

    /// Reports this sink's xruns and playback-ring depth at every scrape.
    pub fn attach_sink(&self, sink: &AudioSink) {
        self.lock().outputs.push((sink.stats(), sink.queue_probe()));
    }

    /// Forgets attached streams (before re-opening a lost device).
    pub fn detach_audio(&self) {
        *self.lock() = Attached::default();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attached> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Total input xruns: the pipeline's own plus the attached sources'.
    pub fn input_xruns_total(&self) -> u64 {
        self.input_xruns.get()
            + self
                .lock()
                .inputs
                .iter()
                .map(|(s, _)| s.xruns())
                .sum::<u64>()
    }

    /// Total output xruns: the pipeline's own plus the attached sinks'.
    pub fn output_xruns_total(&self) -> u64 {
        self.output_xruns.get()
            + self
                .lock()
                .outputs
                .iter()
                .map(|(s, _)| s.xruns())
                .sum::<u64>()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.first_text_latency.render(
            &mut out,
            "tolk_first_text_latency_seconds",
            "End of speech to the first subtitle text.",
        );
        self.first_audio_latency.render(
            &mut out,
            "tolk_first_audio_latency_seconds",
            "End of speech to the first translated audio chunk.",
        );
        self.rtf.render(
            &mut out,
            "tolk_real_time_factor",
            "Per-utterance processing time divided by the utterance duration.",
        );
        header(
            &mut out,
            "tolk_real_time_factor_last",
            "Real-time factor of the last utterance.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "tolk_real_time_factor_last {}",
            fmt_f64(self.rtf_last.get())
        );

        header(
            &mut out,
            "tolk_input_level_dbfs",
            "RMS level of the last 20 ms of input audio, dBFS.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "tolk_input_level_dbfs {}",
            fmt_f64(self.input_level_dbfs.get())
        );

        let (capture, playback, in_x, out_x) = {
            let a = self.lock();
            let cap: Option<usize> =
                (!a.inputs.is_empty()).then(|| a.inputs.iter().map(|(_, q)| q.occupied()).sum());
            let play: Option<usize> =
                (!a.outputs.is_empty()).then(|| a.outputs.iter().map(|(_, q)| q.occupied()).sum());
            let ix: u64 = a.inputs.iter().map(|(s, _)| s.xruns()).sum();
            let ox: u64 = a.outputs.iter().map(|(s, _)| s.xruns()).sum();
            (cap, play, ix, ox)
        };
        header(
            &mut out,
            "tolk_queue_depth",
            "Items waiting per queue (audio rings in frames, utterances in utterances).",
            "gauge",
        );
        let cap = capture.map_or(self.queue_depth.capture_frames.get(), |v| v as f64);
        let play = playback.map_or(self.queue_depth.playback_frames.get(), |v| v as f64);
        let _ = writeln!(
            out,
            "tolk_queue_depth{{queue=\"capture\"}} {}",
            fmt_f64(cap)
        );
        let _ = writeln!(
            out,
            "tolk_queue_depth{{queue=\"utterances\"}} {}",
            fmt_f64(self.queue_depth.utterances.get())
        );
        let _ = writeln!(
            out,
            "tolk_queue_depth{{queue=\"playback\"}} {}",
            fmt_f64(play)
        );

        counter(
            &mut out,
            "tolk_utterances_total",
            "Utterances detected and queued for translation.",
            self.utterances.get(),
        );
        counter(
            &mut out,
            "tolk_utterances_dropped_total",
            "Utterances dropped by the overload policy.",
            self.utterances_dropped.get(),
        );
        counter(
            &mut out,
            "tolk_utterances_not_understood_total",
            "Utterances whose translation confidence was below pipeline.min_confidence.",
            self.not_understood.get(),
        );
        header(
            &mut out,
            "tolk_audio_xruns_total",
            "Audio ring overflows (input) and underruns (output).",
            "counter",
        );
        let _ = writeln!(
            out,
            "tolk_audio_xruns_total{{direction=\"input\"}} {}",
            self.input_xruns.get() + in_x
        );
        let _ = writeln!(
            out,
            "tolk_audio_xruns_total{{direction=\"output\"}} {}",
            self.output_xruns.get() + out_x
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

/// Prometheus float syntax (`+Inf`, `-Inf`, `NaN`, else Rust's shortest round-trip form).
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The HTTP endpoint: `GET /metrics` (or `/`) returns [`Metrics::render`]. One connection at a
/// time, each closed after its response; stopped on drop.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics bind address {bind:?}: {source}")]
    Bind {
        bind: String,
        #[source]
        source: std::io::Error,
    },
}

impl MetricsServer {
    /// Binds `bind` (e.g. `127.0.0.1:9464`; port 0 picks a free port) and serves in a thread.
    pub fn start(bind: &str, metrics: Arc<Metrics>) -> Result<Self, MetricsError> {
        let err = |source| MetricsError::Bind {
            bind: bind.into(),
            source,
        };
        let addrs: Vec<SocketAddr> = bind.to_socket_addrs().map_err(err)?.collect();
        let listener = TcpListener::bind(&addrs[..]).map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "metrics endpoint is not on loopback; firewall it");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("tolk-metrics".into())
            .spawn(move || serve(listener, metrics, &stop2))
            .map_err(err)?;
        tracing::info!(%addr, "metrics endpoint listening");
        Ok(Self {
            addr,
            stop,
            handle: Some(handle),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(stream) => {
                if let Err(e) = respond(stream, &metrics) {
                    tracing::debug!("metrics request: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn respond(stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read (and ignore) the headers up to the blank line, bounded.
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics" | "/") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
