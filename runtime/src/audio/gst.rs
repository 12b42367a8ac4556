//! GStreamer pipelines as audio sources and sinks (`gst-launch-1.0` syntax).
//!
//! Capture: the pipeline string either ends in `appsink name=sink` or we append
//! `! audioconvert ! audioresample ! appsink name=sink`; either way the appsink's caps are fixed
//! to mono F32LE at the endpoint's rate, e.g. `alsasrc device=hw:1 ! audioconvert` or
//! `filesrc location=a.wav ! wavparse`. A puller thread moves samples from the appsink into the
//! capture ring: a live pipeline (one that does not preroll, like `alsasrc`) drops and counts what
//! does not fit; a file pipeline waits for room (no loss, faster than real time).
//!
//! Playback: unless the string contains an `appsrc`, we prepend `appsrc name=src !`, e.g.
//! `audioconvert ! audioresample ! alsasink` or `wavenc ! filesink location=out.wav`. A feeder
//! thread moves frames from the playback ring into the appsrc, timestamped back to back while
//! audio flows and at the pipeline's running time after a gap. Closing the sink plays out the
//! ring, sends EOS and waits (bounded) for it to reach the sink, so `wavenc` writes its header.
//!
//! Errors and EOS on the bus end the stream (lost / finished) instead of panicking; every wait
//! has a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_audio as gst_audio;

use super::ring::{capture_ring, playback_ring, CaptureWriter, PlaybackReader};
use super::{AudioIoError, AudioSink, AudioSource, Backend, Result, RingOptions};

fn gst_err(pipeline: &str, message: impl Into<String>) -> AudioIoError {
    AudioIoError::Gstreamer {
        pipeline: pipeline.into(),
        message: message.into(),
    }
}

fn init(pipeline: &str) -> Result<()> {
    gst::init().map_err(|e| gst_err(pipeline, format!("cannot initialize GStreamer: {e}")))
}

fn mono_f32_caps(rate: u32) -> gst::Caps {
    gst_audio::AudioCapsBuilder::new_interleaved()
        .format(gst_audio::AudioFormat::F32le)
        .channels(1)
        .rate(rate as i32)
        .build()
}

/// The capture pipeline string actually launched for `pipeline`.
pub fn capture_description(pipeline: &str) -> String {
    if pipeline.contains("appsink") {
        pipeline.to_string()
    } else {
        format!("{pipeline} ! audioconvert ! audioresample ! appsink name=sink")
    }
}

/// The playback pipeline string actually launched for `pipeline`.
pub fn playback_description(pipeline: &str) -> String {
    if pipeline.contains("appsrc") {
        pipeline.to_string()
    } else {
        format!("appsrc name=src ! {pipeline}")
    }
}

fn launch(desc: &str, user: &str) -> Result<gst::Pipeline> {
    let element =
        gst::parse::launch(desc).map_err(|e| gst_err(user, format!("cannot parse: {e}")))?;
    element
        .downcast::<gst::Pipeline>()
        .map_err(|_| gst_err(user, "the description is a single element, not a pipeline"))
}

/// The text of a bus error message: element path, error and debug detail.
fn describe_error(err: &gst::message::Error) -> String {
    let src = err
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_else(|| "pipeline".into());
    match err.debug() {
        Some(d) => format!("{src}: {} ({d})", err.error()),
        None => format!("{src}: {}", err.error()),
    }
}

/// The first error waiting on the bus, if any.
fn pending_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(describe_error(e));
        }
    }
    None
}

/// Sets `state`, turning a failure into an error carrying the bus's explanation.
fn set_state(
    pipeline: &gst::Pipeline,
    state: gst::State,
    user: &str,
) -> Result<gst::StateChangeSuccess> {
    pipeline.set_state(state).map_err(|_| {
        let why = pending_error(pipeline).unwrap_or_else(|| "no detail on the bus".into());
        let _ = pipeline.set_state(gst::State::Null);
        gst_err(user, format!("cannot go to {state:?}: {why}"))
    })
}

pub(super) fn open_source(pipeline: &str, rate: u32, ring: RingOptions) -> Result<AudioSource> {
    if rate == 0 {
        return Err(gst_err(pipeline, "sample rate 0"));
    }
    init(pipeline)?;
    let desc = capture_description(pipeline);
    let pipe = launch(&desc, pipeline)?;
    let appsink = pipe
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| {
            gst_err(
                pipeline,
                "a capture pipeline that names an appsink must end with `appsink name=sink`",
            )
        })?;
    appsink.set_caps(Some(&mono_f32_caps(rate)));
    // Pull as fast as the pipeline produces (files run faster than real time); keep the
    // appsink's own queue short so memory stays bounded (it blocks upstream when full).
    appsink.set_sync(false);
    appsink.set_max_buffers(8);
    appsink.set_drop(false);

    let live =
        set_state(&pipe, gst::State::Paused, pipeline)? == gst::StateChangeSuccess::NoPreroll;
    set_state(&pipe, gst::State::Playing, pipeline)?;

    let (writer, reader) = capture_ring(ring.capacity_frames(rate), 1, ring.scratch_frames);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let pipe2 = pipe.clone();
    let handle = std::thread::Builder::new()
        .name("tolk-gst-src".into())
        .spawn(move || pull(pipe2, appsink, writer, live, &stop2))
        .map_err(|e| gst_err(pipeline, format!("cannot start the puller thread: {e}")))?;
    tracing::info!(pipeline = %desc, live, "GStreamer capture started");
    Ok(AudioSource::new(
        reader,
        rate,
        pipeline.to_string(),
        Box::new(GstBackend {
            pipeline: pipe,
            stop,
            closing: None,
            handle: Some(handle),
        }),
    ))
}

fn pull(
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    mut writer: CaptureWriter,
    live: bool,
    stop: &AtomicBool,
) {
    let mut scratch: Vec<f32> = Vec::with_capacity(4096);
    let stats = writer.stats().clone();
    loop {
        if stop.load(Ordering::Acquire) {
            stats.finish();
            break;
        }
        if let Some(why) = pending_error(&pipeline) {
            stats.lose(why);
            break;
        }
        match appsink.try_pull_sample(gst::ClockTime::from_mseconds(50)) {
            Some(sample) => {
                let Some(buffer) = sample.buffer() else {
                    continue;
                };
                let Ok(map) = buffer.map_readable() else {
                    stats.lose("cannot map a buffer from the appsink");
                    break;
                };
                scratch.clear();
                scratch.extend(
                    map.as_slice()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                );
                drop(map);
                if live {
                    writer.push_mono(&scratch);
                } else if !writer.push_mono_wait(&scratch, stop) {
                    // Stopped or the reader went away.
                    stats.finish();
                    break;
                }
            }
            None => {
                if appsink.is_eos() {
                    // Elements that fail post the error before pushing EOS downstream.
                    match pending_error(&pipeline) {
                        Some(why) => stats.lose(why),
                        None => stats.finish(),
                    }
                    break;
                }
            }
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
}

pub(super) fn open_sink(pipeline: &str, rate: u32, ring: RingOptions) -> Result<AudioSink> {
    if rate == 0 {
        return Err(gst_err(pipeline, "sample rate 0"));
    }
    init(pipeline)?;
    let desc = playback_description(pipeline);
    let pipe = launch(&desc, pipeline)?;
    let appsrc = pipe
        .by_name("src")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| {
            gst_err(
                pipeline,
                "a playback pipeline that names an appsrc must start with `appsrc name=src`",
            )
        })?;
    appsrc.set_caps(Some(&mono_f32_caps(rate)));
    appsrc.set_format(gst::Format::Time);
    appsrc.set_is_live(false);
    // Never block in push_buffer (a dead downstream would hang us): the feeder watches the
    // queued level itself.
    appsrc.set_block(false);
    set_state(&pipe, gst::State::Playing, pipeline)?;

    let (writer, reader) = playback_ring(ring.capacity_frames(rate), 1, ring.scratch_frames);
    let stop = Arc::new(AtomicBool::new(false));
    let closing = Arc::new(AtomicBool::new(false));
    let (stop2, closing2, pipe2) = (stop.clone(), closing.clone(), pipe.clone());
    let drain_limit = Duration::from_secs_f32(ring.capacity_s.max(0.01) + 5.0);
    let handle = std::thread::Builder::new()
        .name("tolk-gst-sink".into())
        .spawn(move || feed(pipe2, appsrc, reader, rate, &stop2, &closing2, drain_limit))
        .map_err(|e| gst_err(pipeline, format!("cannot start the feeder thread: {e}")))?;
    tracing::info!(pipeline = %desc, "GStreamer playback started");
    Ok(AudioSink::new(
        writer,
        rate,
        pipeline.to_string(),
        Box::new(GstBackend {
            pipeline: pipe,
            stop,
            closing: Some(closing),
            handle: Some(handle),
        }),
    ))
}

fn feed(
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    mut reader: PlaybackReader,
    rate: u32,
    stop: &AtomicBool,
    closing: &AtomicBool,
    drain_limit: Duration,
) {
    let stats = reader.stats().clone();
    // About 20 ms per buffer; at most ~200 ms queued inside appsrc.
    let chunk = (rate as usize / 50).max(64);
    let max_level = (rate as u64 / 5).max(1024) * 4;
    let mut buf = vec![0.0f32; chunk];
    let mut next_pts = gst::ClockTime::ZERO;
    let mut closing_since: Option<Instant> = None;
    let frame_time = |n: u64| gst::ClockTime::from_nseconds(n * 1_000_000_000 / rate as u64);
    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if let Some(why) = pending_error(&pipeline) {
            stats.lose(why);
            break;
        }
        if closing_since.is_none() && closing.load(Ordering::Acquire) {
            closing_since = Some(Instant::now());
        }
        if appsrc.current_level_bytes() >= max_level {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let n = reader.read(&mut buf);
        if n == 0 {
            if let Some(t0) = closing_since {
                if reader.available() == 0 || t0.elapsed() > drain_limit {
                    finish_stream(&pipeline, &appsrc, &stats);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let mut bytes = Vec::with_capacity(n * 4);
        for s in &buf[..n] {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        let mut buffer = gst::Buffer::from_mut_slice(bytes);
        // Back to back while audio flows; after a gap, at the current running time.
        let pts = match pipeline.current_running_time() {
            Some(now) if now > next_pts => now,
            _ => next_pts,
        };
        let duration = frame_time(n as u64);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(pts);
            b.set_duration(duration);
        }
        next_pts = pts + duration;
        if let Err(e) = appsrc.push_buffer(buffer) {
            stats.lose(
                pending_error(&pipeline)
                    .unwrap_or_else(|| format!("appsrc refused a buffer: {e:?}")),
            );
            break;
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
}

/// Sends EOS and waits (bounded) for it to reach the sinks, so muxers finalize their files.
fn finish_stream(pipeline: &gst::Pipeline, appsrc: &gst_app::AppSrc, stats: &super::StreamStats) {
    if appsrc.end_of_stream().is_err() {
        stats.lose("appsrc refused EOS");
        return;
    }
    let Some(bus) = pipeline.bus() else {
        stats.finish();
        return;
    };
    match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(10),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => stats.lose(describe_error(e)),
            _ => stats.finish(),
        },
        None => stats.lose("EOS did not reach the sink within 10 s"),
    }
}

struct GstBackend {
    pipeline: gst::Pipeline,
    stop: Arc<AtomicBool>,
    /// Playback only: asks the feeder to drain the ring and send EOS.
    closing: Option<Arc<AtomicBool>>,
    handle: Option<JoinHandle<()>>,
}

impl Backend for GstBackend {
    fn stop(&mut self) -> Result<()> {
        match &self.closing {
            Some(c) => c.store(true, Ordering::Release),
            None => self.stop.store(true, Ordering::Release),
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        Ok(())
    }
}
