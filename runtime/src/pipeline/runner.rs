//! [`Pipeline`]: the front end on the calling ("pipeline") thread, a bounded utterance queue,
//! model worker thread(s), an output, events and metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tolk_models::translator::Translator;

use super::control::PipelineControl;
use super::frontend::{FrontEnd, FrontEvent, Utterance, VadKind};
use super::output::PcmOut;
use super::queue::UtteranceQueue;
use super::worker::{check_task, UtteranceReport, UtteranceTranslator};
use super::{PipelineOptions, Result};
use crate::audio::{AudioSource, SourceEnd};
use crate::events::{Event, EventRecord, EventSink};
use crate::metrics::{rms_dbfs, Metrics};
use tolk_models::stream::Streaming;
use tolk_models::translator::{Direction, Output};

/// Why [`Pipeline::feed`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEnd {
    /// End of file / EOS (an open utterance was closed and queued).
    Finished,
    /// The source disappeared (device unplugged, pipeline error): the reason.
    Lost(String),
    /// The stop flag was set (an open utterance was discarded).
    Stopped,
}

/// What a pipeline did, returned by [`Pipeline::finish`].
pub struct PipelineSummary<O> {
    /// Translated utterances in completion order.
    pub reports: Vec<UtteranceReport>,
    /// Utterances dropped by the overload policy (or discarded at shutdown).
    pub dropped: Vec<u64>,
    /// Utterances whose translation failed, with the error.
    pub failed: Vec<(u64, String)>,
    pub output: O,
}

struct Shared<O> {
    queue: UtteranceQueue,
    events: Arc<dyn EventSink>,
    metrics: Arc<Metrics>,
    out: Mutex<O>,
    reports: Mutex<Vec<UtteranceReport>>,
    failed: Mutex<Vec<(u64, String)>>,
    dropped: Mutex<Vec<u64>>,
    control: Arc<PipelineControl>,
    /// Extra sleep per utterance in the workers (tests of the overload policy).
    worker_delay_ms: AtomicU64,
    /// Highest resident set size seen by the workers (KiB), for the soak test.
    max_rss_kib: AtomicU64,
}

impl<O> Shared<O> {
    fn direction_of(&self, u: &Utterance) -> Direction {
        u.direction.unwrap_or_else(|| self.control.direction())
    }

    fn emit(&self, event: Event) {
        self.events.emit(&EventRecord::now(event));
    }

    fn drop_utterance(&self, u: &Utterance, reason: &str) {
        self.metrics.utterances_dropped.inc();
        self.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(u.id);
        tracing::warn!(utterance = u.id, reason, "utterance dropped");
        self.emit(Event::UtteranceDropped {
            utterance: u.id,
            direction: self.direction_of(u).as_str().into(),
            reason: reason.into(),
            queue_depth: self.queue.len() as u64,
        });
    }
}

/// The running pipeline. Feed it from one source at a time ([`Pipeline::feed`]); translations
/// run on the worker threads meanwhile.
pub struct Pipeline<O: PcmOut + 'static> {
    translator: Arc<Translator>,
    vad: VadKind,
    opts: PipelineOptions,
    shared: Arc<Shared<O>>,
    workers: Vec<JoinHandle<()>>,
    front: Option<FrontEnd>,
}

fn ms(s: f64) -> f64 {
    s * 1000.0
}

/// Resident set size of this process in KiB (`VmRSS` of `/proc/self/status`), if readable.
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl<O: PcmOut + 'static> Pipeline<O> {
    /// Starts the worker threads. `out` receives the translated speech (16 kHz).
    pub fn start(
        translator: Arc<Translator>,
        vad: VadKind,
        opts: PipelineOptions,
        out: O,
        events: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        opts.validate()?;
        // The configuration may list directions this model lacks: those are not offered.
        let offered: Vec<Direction> = opts
            .also_offered
            .iter()
            .copied()
            .filter(|&d| match check_task(&translator, d, opts.mode) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(direction = %d, "not offered: {e}");
                    false
                }
            })
            .collect();
        let control = Arc::new(PipelineControl::new(
            opts.direction,
            &offered,
            events.clone(),
        ));
        let shared = Arc::new(Shared {
            queue: UtteranceQueue::new(opts.queue_limit),
            events,
            metrics,
            out: Mutex::new(out),
            reports: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            control,
            worker_delay_ms: AtomicU64::new(0),
            max_rss_kib: AtomicU64::new(0),
        });
        let mut workers = Vec::new();
        for i in 0..opts.workers {
            let worker = UtteranceTranslator::new(
                translator.clone(),
                opts.direction,
                opts.mode,
                opts.vocoder_chunk_units,
            )?
            .with_min_confidence(opts.min_confidence);
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("tolk-model-{i}"))
                .spawn(move || worker_loop(worker, &sh))
                .map_err(|e| super::PipelineError::Options(format!("spawning a worker: {e}")))?;
            workers.push(h);
        }
        Ok(Self {
            translator,
            vad,
            opts,
            shared,
            workers,
            front: None,
        })
    }

    /// Makes every worker sleep this long before each utterance (tests of the overload policy).
    pub fn set_worker_delay(&self, d: Duration) {
        self.shared
            .worker_delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// The run-time switches (direction of the next utterances, listening).
    pub fn control(&self) -> Arc<PipelineControl> {
        self.shared.control.clone()
    }

    /// Utterances waiting for a worker.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// Highest RSS the workers saw after an utterance (KiB).
    pub fn max_rss_kib(&self) -> u64 {
        self.shared.max_rss_kib.load(Ordering::Relaxed)
    }

    fn front_for(&mut self, rate: u32) -> Result<&mut FrontEnd> {
        if self.front.as_ref().is_none_or(|f| f.input_rate() != rate) {
            self.front = Some(FrontEnd::new(
                self.translator.clone(),
                &self.vad,
                &self.opts,
                rate,
            )?);
        }
        Ok(self.front.as_mut().expect("set above"))
    }

    /// Reads `source` until it ends, is lost, or `stop` is set; utterances go to the queue as
    /// they end. Never blocks on the model.
    pub fn feed(&mut self, source: &mut AudioSource, stop: &AtomicBool) -> Result<FeedEnd> {
        let rate = source.sample_rate();
        let name = source.name().to_string();
        let shared = self.shared.clone();
        let front = self.front_for(rate)?;
        front.reset();
        // 20 ms reads.
        let mut buf = vec![0f32; (rate as usize / 50).max(1)];
        // The direction chosen when the open utterance started.
        let mut open: Option<(u64, Direction)> = None;
        let mut paused = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                front.reset();
                return Ok(FeedEnd::Stopped);
            }
            // Paused by the operator: audio is read (the ring never overflows) and dropped, and
            // an open utterance is abandoned.
            let listening = shared.control.listening();
            if paused == listening {
                paused = !listening;
                front.reset();
                // An utterance heard in part is reported, not silently lost.
                if let Some((id, direction)) = open.take() {
                    shared.metrics.utterances_dropped.inc();
                    shared.emit(Event::UtteranceDropped {
                        utterance: id,
                        direction: direction.as_str().into(),
                        reason: "listening paused by the operator".into(),
                        queue_depth: shared.queue.len() as u64,
                    });
                }
            }
            let read = {
                let _s = tracing::debug_span!("capture_read").entered();
                source.read_timeout(&mut buf, Duration::from_millis(100))
            };
            shared
                .metrics
                .queue_depth
                .capture_frames
                .set(source.queued() as f64);
            match read {
                Ok(0) => continue,
                Ok(n) => {
                    shared.metrics.input_level_dbfs.set(rms_dbfs(&buf[..n]));
                    if paused {
                        continue;
                    }
                    let evs = front.push(&buf[..n])?;
                    handle(&shared, evs, &mut open);
                }
                Err(SourceEnd::Finished) => {
                    let evs = front.finish()?;
                    handle(&shared, evs, &mut open);
                    shared.emit(Event::SourceEnded { source: name });
                    return Ok(FeedEnd::Finished);
                }
                Err(SourceEnd::Lost(reason)) => {
                    let evs = front.finish()?;
                    handle(&shared, evs, &mut open);
                    tracing::warn!(source = %name, "audio source lost: {reason}");
                    shared.emit(Event::SourceLost {
                        source: name,
                        reason: reason.clone(),
                    });
                    return Ok(FeedEnd::Lost(reason));
                }
            }
        }
    }

    /// Stops the pipeline. With `drain`, the workers translate what is queued first; without,
    /// waiting utterances are discarded (reported as dropped with reason `shutdown`).
    pub fn finish(mut self, drain: bool) -> PipelineSummary<O> {
        if !drain {
            for u in self.shared.queue.clear() {
                self.shared.drop_utterance(&u, "shutdown");
            }
        }
        self.shared.queue.close();
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!("a model worker panicked");
            }
        }
        self.front = None;
        let shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            Err(_) => unreachable!("workers joined, no other owner"),
        };
        PipelineSummary {
            reports: shared
                .reports
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
            dropped: shared
                .dropped
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
            failed: shared
                .failed
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
            output: shared.out.into_inner().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Front-end events: start/end events, then the utterance into the queue (drop-oldest). An
/// utterance keeps the direction that was current when it started (`open`).
fn handle<O>(sh: &Shared<O>, evs: Vec<FrontEvent>, open: &mut Option<(u64, Direction)>) {
    for ev in evs {
        match ev {
            FrontEvent::Start { id, start_s, .. } => {
                let direction = sh.control.direction();
                *open = Some((id, direction));
                sh.emit(Event::UtteranceStart {
                    utterance: id,
                    direction: direction.as_str().into(),
                    start_s,
                })
            }
            FrontEvent::Utterance(mut u) => {
                u.direction = Some(match open.take() {
                    Some((id, d)) if id == u.id => d,
                    _ => sh.control.direction(),
                });
                sh.emit(Event::UtteranceEnd {
                    utterance: u.id,
                    direction: sh.direction_of(&u).as_str().into(),
                    start_s: u.start_s(),
                    end_s: u.end_s(),
                    cause: u.cause,
                });
                sh.metrics.utterances.inc();
                for old in sh.queue.push(u) {
                    sh.drop_utterance(&old, "queue full: oldest waiting utterance dropped");
                }
                sh.metrics.queue_depth.utterances.set(sh.queue.len() as f64);
            }
        }
    }
}

fn worker_loop<O: PcmOut>(mut worker: UtteranceTranslator, sh: &Shared<O>) {
    loop {
        let u = {
            let _s = tracing::debug_span!("queue_wait").entered();
            match sh.queue.pop_timeout(Duration::from_millis(200)) {
                Err(()) => return,
                Ok(None) => continue,
                Ok(Some(u)) => u,
            }
        };
        sh.metrics.queue_depth.utterances.set(sh.queue.len() as f64);
        let delay = sh.worker_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let direction = sh.direction_of(&u);
        if let Err(e) = worker.set_task(direction, worker.mode()) {
            tracing::warn!(utterance = u.id, "cannot translate in {direction}: {e}");
            sh.failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((u.id, e.to_string()));
            continue;
        }
        let dir = direction.as_str().to_string();
        let mut text = String::new();
        let mut first_text: Option<Instant> = None;
        let since_end = |t: Instant| ms(t.duration_since(u.ended_at).as_secs_f64());
        let mut out = sh.out.lock().unwrap_or_else(|e| e.into_inner());
        let res = worker.translate(&u, &mut *out, &mut |o| match o {
            Output::Text { delta } => {
                let now = Instant::now();
                first_text.get_or_insert(now);
                text.push_str(delta);
                sh.emit(Event::SubtitlePartial {
                    utterance: u.id,
                    direction: dir.clone(),
                    text: text.clone(),
                    latency_ms: since_end(now),
                });
            }
            Output::TextEnd {
                text: full,
                confidence,
                understood,
            } => {
                let now = Instant::now();
                let confidence = confidence.score();
                if understood {
                    sh.emit(Event::SubtitleFinal {
                        utterance: u.id,
                        direction: dir.clone(),
                        text: full.to_string(),
                        first_text_ms: since_end(first_text.unwrap_or(now)),
                        latency_ms: since_end(now),
                        confidence,
                    });
                } else {
                    sh.metrics.not_understood.inc();
                    sh.emit(Event::NotUnderstood {
                        utterance: u.id,
                        direction: dir.clone(),
                        text: full.to_string(),
                        confidence,
                        latency_ms: since_end(now),
                    });
                }
            }
            Output::Audio { pcm, offset } => sh.emit(Event::AudioChunk {
                utterance: u.id,
                direction: dir.clone(),
                offset,
                samples: pcm.len() as u64,
                sample_rate: 16_000,
                latency_ms: since_end(Instant::now()),
            }),
        });
        drop(out);
        match res {
            Ok(r) => {
                if let Some(t) = r.first_text_s {
                    sh.metrics.first_text_latency.observe(t);
                }
                if let Some(t) = r.first_audio_s {
                    sh.metrics.first_audio_latency.observe(t);
                }
                sh.metrics.rtf.observe(r.rtf);
                sh.metrics.rtf_last.set(r.rtf);
                if r.output_error.is_some() {
                    sh.metrics.output_xruns.inc();
                }
                sh.emit(Event::UtteranceDone {
                    utterance: u.id,
                    direction: dir,
                    rtf: r.rtf,
                    first_audio_ms: r.first_audio_s.map(ms),
                });
                sh.reports.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            }
            Err(e) => {
                tracing::warn!(utterance = u.id, "translation failed: {e}");
                sh.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((u.id, e.to_string()));
            }
        }
        if let Some(kib) = rss_kib() {
            sh.max_rss_kib.fetch_max(kib, Ordering::Relaxed);
        }
    }
}
