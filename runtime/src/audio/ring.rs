//! The lock-free hand-off between audio callbacks and the pipeline thread: bounded SPSC rings of
//! mono `f32` frames (`ringbuf`), with the device-side halves written for real-time callbacks.
//!
//! Device side ([`CaptureWriter::push_interleaved`], [`PlaybackReader::fill_interleaved`]): no
//! allocation, no lock, no wait. Conversion and downmix go through a scratch buffer allocated up
//! front; a callback bigger than the scratch is processed in scratch-sized pieces. What does not
//! fit (capture) or is missing (playback) is counted as an xrun in [`StreamStats`] atomics.
//!
//! Pipeline side ([`CaptureReader`], [`PlaybackWriter`]): ordinary threads that may sleep briefly
//! while waiting for frames or room; they never hold a lock the device side needs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cpal::{FromSample, Sample};
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb, Obs};

/// Where a stream is in its life. Read with [`StreamStats::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Delivering (capture) or accepting (playback) frames.
    Running,
    /// Ended normally: end of file, GStreamer EOS, or closed by us.
    Finished,
    /// Failed: device gone, pipeline error. The reason is in [`StreamStats::lost_reason`].
    Lost,
}

const RUNNING: u8 = 0;
const FINISHED: u8 = 1;
const LOST: u8 = 2;

/// Counters shared by the two ends of one stream; every field is an atomic so the device side
/// updates them without locking. `lost_reason` is only written off the real-time path (error
/// callbacks, GStreamer bus) and read by the pipeline.
#[derive(Debug)]
pub struct StreamStats {
    /// Frames moved by the device side (captured into the ring / played out of it).
    frames: AtomicU64,
    /// Callbacks that could not move all their frames (capture overflow / playback underflow).
    xruns: AtomicU64,
    /// Frames dropped (capture) or replaced by silence (playback) in those callbacks.
    xrun_frames: AtomicU64,
    /// Milliseconds since `epoch` of the last device-side activity.
    last_activity_ms: AtomicU64,
    state: AtomicU8,
    epoch: Instant,
    lost_reason: Mutex<Option<String>>,
}

impl StreamStats {
    pub(crate) fn new() -> Self {
        Self {
            frames: AtomicU64::new(0),
            xruns: AtomicU64::new(0),
            xrun_frames: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
            epoch: Instant::now(),
            lost_reason: Mutex::new(None),
        }
    }

    /// Frames moved by the device side so far.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Overflow (capture) or underflow (playback) events so far.
    pub fn xruns(&self) -> u64 {
        self.xruns.load(Ordering::Relaxed)
    }

    /// Frames lost to overflow or padded with silence on underflow.
    pub fn xrun_frames(&self) -> u64 {
        self.xrun_frames.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> StreamState {
        match self.state.load(Ordering::Acquire) {
            RUNNING => StreamState::Running,
            FINISHED => StreamState::Finished,
            _ => StreamState::Lost,
        }
    }

    /// Why the stream was lost, once it is.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Time since the device side last moved frames (or since the stream was created).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Counts an xrun reported by the backend itself (e.g. cpal's `ErrorKind::Xrun`).
    pub(crate) fn count_backend_xrun(&self) {
        self.xruns.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the stream finished unless it was already lost.
    pub(crate) fn finish(&self) {
        let _ = self
            .state
            .compare_exchange(RUNNING, FINISHED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks the stream lost with a reason (first reason wins). Not for the real-time path.
    pub(crate) fn lose(&self, reason: impl Into<String>) {
        let mut slot = self.lost_reason.lock().unwrap_or_else(|e| e.into_inner());
        if self.state.load(Ordering::Acquire) != LOST {
            *slot = Some(reason.into());
            self.state.store(LOST, Ordering::Release);
        }
    }

    fn touch(&self) {
        // `Instant::now` is a vDSO clock read: no allocation, no lock.
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }
}

/// How a capture stream ended, returned by [`CaptureReader::read_timeout`] once the ring is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEnd {
    /// End of file or GStreamer EOS.
    Finished,
    /// Device unplugged, pipeline error, ...: the reason.
    Lost(String),
}

impl std::fmt::Display for SourceEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceEnd::Finished => f.write_str("finished"),
            SourceEnd::Lost(why) => write!(f, "lost: {why}"),
        }
    }
}

/// A capture ring of `capacity` mono frames; the writer downmixes `channels`-channel interleaved
/// callbacks through a scratch of `scratch_frames` frames (allocated here, once).
pub fn capture_ring(
    capacity: usize,
    channels: u16,
    scratch_frames: usize,
) -> (CaptureWriter, CaptureReader) {
    let (prod, cons) = HeapRb::<f32>::new(capacity.max(1)).split();
    let stats = Arc::new(StreamStats::new());
    (
        CaptureWriter {
            prod,
            scratch: vec![0.0; scratch_frames.max(1)].into_boxed_slice(),
            channels: channels.max(1) as usize,
            stats: stats.clone(),
        },
        CaptureReader { cons, stats },
    )
}

/// Device side of a capture ring (owned by the audio callback or a feeder thread).
pub struct CaptureWriter {
    prod: HeapProd<f32>,
    scratch: Box<[f32]>,
    channels: usize,
    stats: Arc<StreamStats>,
}

impl CaptureWriter {
    /// Real-time safe: converts interleaved samples of any cpal sample type to `f32`, averages
    /// the channels to mono and pushes the frames. Frames that do not fit are dropped (newest
    /// first) and counted as one xrun for this call. A trailing partial frame is ignored.
    /// Returns the number of frames accepted.
    pub fn push_interleaved<T: Sample>(&mut self, data: &[T]) -> usize
    where
        f32: FromSample<T>,
    {
        let ch = self.channels;
        let frames = data.len() / ch;
        let scale = 1.0 / ch as f32;
        let mut accepted = 0;
        let mut done = 0;
        while done < frames {
            let n = (frames - done).min(self.scratch.len());
            let src = &data[done * ch..(done + n) * ch];
            if ch == 1 {
                for (d, s) in self.scratch[..n].iter_mut().zip(src) {
                    *d = s.to_sample::<f32>();
                }
            } else {
                for (d, frame) in self.scratch[..n].iter_mut().zip(src.chunks_exact(ch)) {
                    let mut acc = 0.0f32;
                    for s in frame {
                        acc += s.to_sample::<f32>();
                    }
                    *d = acc * scale;
                }
            }
            accepted += self.prod.push_slice(&self.scratch[..n]);
            done += n;
        }
        self.account(frames, accepted);
        accepted
    }

    /// Pushes mono frames; what does not fit is dropped and counted (the live-source policy).
    pub fn push_mono(&mut self, mono: &[f32]) -> usize {
        let accepted = self.prod.push_slice(mono);
        self.account(mono.len(), accepted);
        accepted
    }

    /// Pushes all of `mono`, waiting for room while the reader catches up (the file-source
    /// policy: back-pressure instead of loss). Not for real-time callbacks. Returns false when
    /// `stop` was raised or the reader was dropped before everything was pushed.
    pub fn push_mono_wait(&mut self, mut mono: &[f32], stop: &AtomicBool) -> bool {
        while !mono.is_empty() {
            let n = self.prod.push_slice(mono);
            if n > 0 {
                self.stats.frames.fetch_add(n as u64, Ordering::Relaxed);
                self.stats.touch();
                mono = &mono[n..];
                continue;
            }
            if stop.load(Ordering::Acquire) || !self.prod.read_is_held() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Whether the reader still exists.
    pub fn reader_alive(&self) -> bool {
        self.prod.read_is_held()
    }

    /// Free room in the ring, in frames.
    pub fn vacant(&self) -> usize {
        self.prod.vacant_len()
    }

    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }

    fn account(&self, offered: usize, accepted: usize) {
        self.stats
            .frames
            .fetch_add(accepted as u64, Ordering::Relaxed);
        if accepted < offered {
            self.stats.xruns.fetch_add(1, Ordering::Relaxed);
            self.stats
                .xrun_frames
                .fetch_add((offered - accepted) as u64, Ordering::Relaxed);
        }
        self.stats.touch();
    }
}

/// Pipeline side of a capture ring.
pub struct CaptureReader {
    cons: HeapCons<f32>,
    stats: Arc<StreamStats>,
}

impl CaptureReader {
    /// Moves up to `out.len()` frames out of the ring without waiting; returns how many.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        self.cons.pop_slice(out)
    }

    /// Frames waiting in the ring (the capture queue depth).
    pub fn available(&self) -> usize {
        self.cons.occupied_len()
    }

    /// Ring capacity in frames.
    pub fn capacity(&self) -> usize {
        self.cons.capacity().get()
    }

    /// A handle that reads the queue depth from another thread.
    pub fn queue_probe(&self) -> QueueProbe {
        QueueProbe(self.cons.observe())
    }

    /// Waits up to `timeout` for frames. `Ok(n)` with `n > 0`: frames read; `Ok(0)`: timed out
    /// with the stream still running; `Err(end)`: the stream finished or was lost and every
    /// frame it delivered has been read.
    pub fn read_timeout(&mut self, out: &mut [f32], timeout: Duration) -> Result<usize, SourceEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.cons.pop_slice(out);
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            match self.stats.state() {
                StreamState::Running => {}
                end => {
                    // The writer may have pushed its last frames just before changing state.
                    let n = self.cons.pop_slice(out);
                    if n > 0 {
                        return Ok(n);
                    }
                    return Err(match end {
                        StreamState::Lost => SourceEnd::Lost(
                            self.stats
                                .lost_reason()
                                .unwrap_or_else(|| "unknown error".into()),
                        ),
                        _ => SourceEnd::Finished,
                    });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
        }
    }

    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }
}

/// A playback ring of `capacity` mono frames; the reader upmixes into `channels`-channel
/// interleaved device buffers through a scratch of `scratch_frames` frames.
pub fn playback_ring(
    capacity: usize,
    channels: u16,
    scratch_frames: usize,
) -> (PlaybackWriter, PlaybackReader) {
    let (prod, cons) = HeapRb::<f32>::new(capacity.max(1)).split();
    let stats = Arc::new(StreamStats::new());
    let draining = Arc::new(AtomicBool::new(false));
    (
        PlaybackWriter {
            prod,
            stats: stats.clone(),
            draining: draining.clone(),
        },
        PlaybackReader {
            cons,
            scratch: vec![0.0; scratch_frames.max(1)].into_boxed_slice(),
            channels: channels.max(1) as usize,
            stats,
            draining,
            active: false,
        },
    )
}

/// Pipeline side of a playback ring.
pub struct PlaybackWriter {
    prod: HeapProd<f32>,
    stats: Arc<StreamStats>,
    draining: Arc<AtomicBool>,
}

impl PlaybackWriter {
    /// Queues as many mono frames as fit, without waiting; returns how many.
    pub fn write(&mut self, mono: &[f32]) -> usize {
        if !mono.is_empty() {
            self.draining.store(false, Ordering::Release);
        }
        self.prod.push_slice(mono)
    }

    /// Queues all of `mono`, waiting for room (the device plays at its own pace). Returns the
    /// frames queued: less than `mono.len()` when `timeout` passed or the stream stopped.
    pub fn write_all(&mut self, mut mono: &[f32], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let total = mono.len();
        while !mono.is_empty() {
            let n = self.write(mono);
            mono = &mono[n..];
            if mono.is_empty() {
                break;
            }
            if self.stats.state() != StreamState::Running || !self.prod.read_is_held() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(1)));
        }
        total - mono.len()
    }

    /// Says that no more audio follows for now (end of an utterance): the short last period and
    /// the silence after it are not underruns.
    pub fn end_of_audio(&mut self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Frames waiting to be played (the playback queue depth).
    pub fn queued(&self) -> usize {
        self.prod.occupied_len()
    }

    /// Ring capacity in frames.
    pub fn capacity(&self) -> usize {
        self.prod.capacity().get()
    }

    /// A handle that reads the queue depth from another thread (for metrics, drain on close).
    pub fn queue_probe(&self) -> QueueProbe {
        QueueProbe(self.prod.observe())
    }

    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }
}

/// Reads a ring's fill level from any thread.
pub struct QueueProbe(Obs<Arc<HeapRb<f32>>>);

impl QueueProbe {
    /// Frames in the ring.
    pub fn occupied(&self) -> usize {
        self.0.occupied_len()
    }
}

/// Device side of a playback ring.
pub struct PlaybackReader {
    cons: HeapCons<f32>,
    scratch: Box<[f32]>,
    channels: usize,
    stats: Arc<StreamStats>,
    draining: Arc<AtomicBool>,
    /// The previous call had audio to play: an empty or short ring now is an underrun.
    active: bool,
}

impl PlaybackReader {
    /// Real-time safe: fills an interleaved device buffer of any cpal sample type, copying each
    /// mono frame to every channel. Missing frames become silence; while audio was playing and
    /// the writer did not call [`PlaybackWriter::end_of_audio`], that is an underrun (counted
    /// once per call). Returns the frames taken from the ring.
    pub fn fill_interleaved<T: Sample + FromSample<f32>>(&mut self, out: &mut [T]) -> usize {
        let ch = self.channels;
        let frames = out.len() / ch;
        let mut got = 0;
        let mut done = 0;
        while done < frames {
            let n = (frames - done).min(self.scratch.len());
            let k = self.cons.pop_slice(&mut self.scratch[..n]);
            let dst = &mut out[done * ch..(done + n) * ch];
            for (frame, &s) in dst.chunks_exact_mut(ch).zip(&self.scratch[..k]) {
                let v = T::from_sample(s);
                for d in frame {
                    *d = v;
                }
            }
            for d in &mut dst[k * ch..] {
                *d = T::EQUILIBRIUM;
            }
            got += k;
            done += n;
            if k < n {
                // Ring empty: pad the rest of the callback with silence.
                for d in &mut out[done * ch..] {
                    *d = T::EQUILIBRIUM;
                }
                break;
            }
        }
        for d in &mut out[frames * ch..] {
            *d = T::EQUILIBRIUM;
        }
        self.account(frames, got);
        got
    }

    /// Moves up to `out.len()` mono frames out of the ring (for feeder threads: WAV writer,
    /// GStreamer appsrc); no underrun accounting.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        let n = self.cons.pop_slice(out);
        if n > 0 {
            self.stats.frames.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.touch();
        }
        n
    }

    /// Frames waiting in the ring.
    pub fn available(&self) -> usize {
        self.cons.occupied_len()
    }

    /// Whether the writer still exists.
    pub fn writer_alive(&self) -> bool {
        self.cons.write_is_held()
    }

    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }

    fn account(&mut self, wanted: usize, got: usize) {
        self.stats.frames.fetch_add(got as u64, Ordering::Relaxed);
        self.stats.touch();
        let short = got < wanted;
        if short && (self.active || got > 0) && !self.draining.load(Ordering::Acquire) {
            self.stats.xruns.fetch_add(1, Ordering::Relaxed);
            self.stats
                .xrun_frames
                .fetch_add((wanted - got) as u64, Ordering::Relaxed);
        }
        self.active = !short;
    }
}
