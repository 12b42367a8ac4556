//! Audio input and output of the kiosk: sources deliver mono `f32`
//! frames at their own rate into a bounded lock-free ring read by the pipeline thread; sinks take
//! mono `f32` frames from the pipeline through another ring.
//!
//! - [`ring`]: the rings, their real-time-safe device halves and the xrun counters;
//! - [`wav`]: WAV files (`hound`), read as fast as the pipeline takes them or paced at real time;
//! - [`device`]: live devices through `cpal` (ALSA on Linux), chosen by name;
//! - [`gst`]: GStreamer pipeline strings through `appsink` / `appsrc`.
//!
//! The pipeline thread uses [`AudioSource::read_timeout`] and [`AudioSink::write_all`]; xruns
//! and stream state are in [`StreamStats`] ([`AudioSource::stats`], [`AudioSink::stats`]). A
//! device that disappears or a pipeline error ends a source with [`SourceEnd::Lost`]; nothing
//! panics and nothing waits forever.

pub mod device;
pub mod gst;
pub mod ring;
pub mod wav;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tolk_config::AudioEndpoint;

pub use ring::{
    capture_ring, playback_ring, CaptureReader, CaptureWriter, PlaybackReader, PlaybackWriter,
    QueueProbe, SourceEnd, StreamState, StreamStats,
};
pub use wav::Pacing;

/// Typed errors of audio I/O; each names the file, device or pipeline at fault.
#[derive(Debug, thiserror::Error)]
pub enum AudioIoError {
    #[error("{path}: {message}")]
    Wav { path: PathBuf, message: String },
    /// Reading a WAV file failed (the message names the file).
    #[error(transparent)]
    WavRead(#[from] tolk_models::audio::AudioError),
    #[error(
        "audio device {name:?} not found; {direction} devices: {}",
        list_or_none(available)
    )]
    DeviceNotFound {
        name: String,
        direction: &'static str,
        available: Vec<String>,
    },
    #[error("audio device {name:?}: {message}")]
    Device { name: String, message: String },
    #[error("GStreamer pipeline {pipeline:?}: {message}")]
    Gstreamer { pipeline: String, message: String },
    #[error("invalid audio configuration: {0}")]
    Config(String),
    #[error("audio stream {name:?} stopped: {message}")]
    Stopped { name: String, message: String },
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

pub type Result<T, E = AudioIoError> = std::result::Result<T, E>;

/// Ring sizes: capacity in seconds of audio, scratch in frames (the largest callback handled in
/// one piece; larger callbacks are split).
#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    pub capacity_s: f32,
    pub scratch_frames: usize,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            capacity_s: 2.0,
            scratch_frames: 4096,
        }
    }
}

impl RingOptions {
    pub(crate) fn capacity_frames(&self, rate: u32) -> usize {
        ((self.capacity_s.max(0.01) as f64) * rate as f64).ceil() as usize
    }
}

/// What keeps a stream's device, thread or pipeline alive; `stop` ends it and waits for its
/// threads (bounded waits only).
pub(crate) trait Backend: Send {
    fn stop(&mut self) -> Result<()>;
}

/// A capture stream: mono `f32` frames at [`AudioSource::sample_rate`].
pub struct AudioSource {
    reader: CaptureReader,
    sample_rate: u32,
    name: String,
    backend: Option<Box<dyn Backend>>,
}

impl AudioSource {
    pub(crate) fn new(
        reader: CaptureReader,
        sample_rate: u32,
        name: String,
        backend: Box<dyn Backend>,
    ) -> Self {
        Self {
            reader,
            sample_rate,
            name,
            backend: Some(backend),
        }
    }

    /// Opens the configured input: the GStreamer pipeline when set, else the cpal device.
    pub fn open(endpoint: &AudioEndpoint, ring: RingOptions) -> Result<Self> {
        match &endpoint.pipeline {
            Some(p) => gst::open_source(p, endpoint.sample_rate, ring),
            None => device::open_source(endpoint, ring),
        }
    }

    /// A WAV file source (any PCM/float WAV; channels are averaged to mono).
    pub fn wav(path: impl Into<PathBuf>, pacing: Pacing, ring: RingOptions) -> Result<Self> {
        wav::open_source(path.into(), pacing, ring)
    }

    /// In-memory mono samples, delivered like a file.
    pub fn memory(samples: Vec<f32>, sample_rate: u32, pacing: Pacing, ring: RingOptions) -> Self {
        wav::memory_source(samples, sample_rate, pacing, ring, "memory".into())
    }

    /// A cpal input device by name (see [`device`]).
    pub fn cpal(endpoint: &AudioEndpoint, ring: RingOptions) -> Result<Self> {
        device::open_source(endpoint, ring)
    }

    /// A GStreamer capture pipeline (see [`gst`]).
    pub fn gstreamer(pipeline: &str, sample_rate: u32, ring: RingOptions) -> Result<Self> {
        gst::open_source(pipeline, sample_rate, ring)
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// File path, device name or pipeline string.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Non-blocking read of up to `out.len()` frames.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        self.reader.read(out)
    }

    /// See [`CaptureReader::read_timeout`]: `Ok(0)` on timeout, `Err` once the stream ended and
    /// the ring is empty.
    pub fn read_timeout(&mut self, out: &mut [f32], timeout: Duration) -> Result<usize, SourceEnd> {
        self.reader.read_timeout(out, timeout)
    }

    /// Frames waiting in the capture ring.
    pub fn queued(&self) -> usize {
        self.reader.available()
    }

    /// Reads the capture-ring depth from another thread (metrics).
    pub fn queue_probe(&self) -> QueueProbe {
        self.reader.queue_probe()
    }

    /// Frames, input xruns, state, loss reason.
    pub fn stats(&self) -> Arc<StreamStats> {
        self.reader.stats().clone()
    }

    /// Stops capture and releases the device; frames already in the ring stay readable.
    pub fn stop(&mut self) -> Result<()> {
        match self.backend.take() {
            Some(mut b) => b.stop(),
            None => Ok(()),
        }
    }
}

impl Drop for AudioSource {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(source = %self.name, "stopping audio source: {e}");
        }
    }
}

/// A playback stream: takes mono `f32` frames at [`AudioSink::sample_rate`].
pub struct AudioSink {
    writer: PlaybackWriter,
    sample_rate: u32,
    name: String,
    backend: Option<Box<dyn Backend>>,
}

impl AudioSink {
    pub(crate) fn new(
        writer: PlaybackWriter,
        sample_rate: u32,
        name: String,
        backend: Box<dyn Backend>,
    ) -> Self {
        Self {
            writer,
            sample_rate,
            name,
            backend: Some(backend),
        }
    }

    /// Opens the configured output: the GStreamer pipeline when set, else the cpal device.
    pub fn open(endpoint: &AudioEndpoint, ring: RingOptions) -> Result<Self> {
        match &endpoint.pipeline {
            Some(p) => gst::open_sink(p, endpoint.sample_rate, ring),
            None => device::open_sink(endpoint, ring),
        }
    }

    /// A mono 16-bit WAV file written as frames arrive; finalized by [`AudioSink::finish`].
    pub fn wav(path: impl Into<PathBuf>, sample_rate: u32, ring: RingOptions) -> Result<Self> {
        wav::open_sink(path.into(), sample_rate, ring)
    }

    /// A cpal output device by name.
    pub fn cpal(endpoint: &AudioEndpoint, ring: RingOptions) -> Result<Self> {
        device::open_sink(endpoint, ring)
    }

    /// A GStreamer playback pipeline fed by `appsrc` (see [`gst`]).
    pub fn gstreamer(pipeline: &str, sample_rate: u32, ring: RingOptions) -> Result<Self> {
        gst::open_sink(pipeline, sample_rate, ring)
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues what fits without waiting; returns the frames queued.
    pub fn write(&mut self, mono: &[f32]) -> usize {
        self.writer.write(mono)
    }

    /// Queues all of `mono`, waiting for room up to `timeout`; an error when not everything
    /// could be queued (timeout, or the stream stopped or was lost).
    pub fn write_all(&mut self, mono: &[f32], timeout: Duration) -> Result<()> {
        let n = self.writer.write_all(mono, timeout);
        if n == mono.len() {
            return Ok(());
        }
        let stats = self.writer.stats();
        let message = match stats.state() {
            StreamState::Lost => stats.lost_reason().unwrap_or_else(|| "lost".into()),
            StreamState::Finished => "closed".into(),
            StreamState::Running => format!(
                "queued {n} of {} frames within {timeout:?} (output not draining)",
                mono.len()
            ),
        };
        Err(AudioIoError::Stopped {
            name: self.name.clone(),
            message,
        })
    }

    /// End of an utterance: the silence that follows is not an underrun.
    pub fn end_of_audio(&mut self) {
        self.writer.end_of_audio();
    }

    /// Frames waiting to be played.
    pub fn queued(&self) -> usize {
        self.writer.queued()
    }

    /// Reads the playback-ring depth from another thread (metrics).
    pub fn queue_probe(&self) -> QueueProbe {
        self.writer.queue_probe()
    }

    /// Frames played, output xruns, state, loss reason.
    pub fn stats(&self) -> Arc<StreamStats> {
        self.writer.stats().clone()
    }

    /// Plays out what is queued (bounded wait), then closes the output: finalizes a WAV file,
    /// sends EOS through a GStreamer pipeline.
    pub fn finish(mut self) -> Result<()> {
        self.writer.end_of_audio();
        if let Some(mut b) = self.backend.take() {
            b.stop()?;
        }
        let stats = self.writer.stats();
        match stats.state() {
            StreamState::Lost => Err(AudioIoError::Stopped {
                name: self.name.clone(),
                message: stats.lost_reason().unwrap_or_else(|| "lost".into()),
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for AudioSink {
    fn drop(&mut self) {
        if let Some(mut b) = self.backend.take() {
            if let Err(e) = b.stop() {
                tracing::warn!(sink = %self.name, "closing audio sink: {e}");
            }
        }
    }
}
