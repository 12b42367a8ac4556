//! WAV file source and sink. The source decodes the whole file up front (through
//! `tolk_models::audio::wav`, which names the file and the fault on a bad header or truncated
//! data), averages the channels to mono and feeds the ring from its own thread, either as fast as
//! the reader takes frames (back-pressure, nothing dropped) or paced like a live device. The sink
//! writes 16-bit mono PCM from its own thread and finalizes the header on
//! [`super::AudioSink::finish`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ring::{capture_ring, playback_ring, CaptureWriter, PlaybackReader};
use super::{AudioIoError, AudioSink, AudioSource, Backend, Result, RingOptions};

/// How a file source delivers its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// As fast as the reader takes them; the feeder waits when the ring is full (no loss).
    Fast,
    /// Like a live device: `period_frames` frames every period; frames that do not fit in the
    /// ring are dropped and counted as xruns.
    RealTime { period_frames: u32 },
}

pub(super) fn open_source(path: PathBuf, pacing: Pacing, ring: RingOptions) -> Result<AudioSource> {
    let audio = tolk_models::audio::wav::read_wav(&path)?;
    let ch = audio.channels.max(1) as usize;
    let mono: Vec<f32> = if ch == 1 {
        audio.samples
    } else {
        audio
            .samples
            .chunks_exact(ch)
            .map(|f| f.iter().sum::<f32>() / ch as f32)
            .collect()
    };
    Ok(memory_source(
        mono,
        audio.sample_rate,
        pacing,
        ring,
        path.display().to_string(),
    ))
}

pub(super) fn memory_source(
    samples: Vec<f32>,
    sample_rate: u32,
    pacing: Pacing,
    ring: RingOptions,
    name: String,
) -> AudioSource {
    let (writer, reader) = capture_ring(ring.capacity_frames(sample_rate), 1, ring.scratch_frames);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("tolk-wav-src".into())
        .spawn(move || feed(writer, samples, sample_rate, pacing, &stop2));
    let backend = match thread {
        Ok(handle) => ThreadBackend {
            stop,
            handle: Some(handle),
        },
        Err(e) => {
            reader
                .stats()
                .lose(format!("cannot start feeder thread: {e}"));
            ThreadBackend { stop, handle: None }
        }
    };
    AudioSource::new(reader, sample_rate, name, Box::new(backend))
}

fn feed(
    mut writer: CaptureWriter,
    samples: Vec<f32>,
    sample_rate: u32,
    pacing: Pacing,
    stop: &AtomicBool,
) {
    match pacing {
        Pacing::Fast => {
            for chunk in samples.chunks(4096) {
                if !writer.push_mono_wait(chunk, stop) {
                    break;
                }
            }
        }
        Pacing::RealTime { period_frames } => {
            let period = period_frames.max(1) as usize;
            let dt = Duration::from_secs_f64(period as f64 / sample_rate.max(1) as f64);
            let start = Instant::now();
            for (i, chunk) in samples.chunks(period).enumerate() {
                if stop.load(Ordering::Acquire) || !writer.reader_alive() {
                    break;
                }
                let due = start + dt * (i as u32 + 1);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                writer.push_mono(chunk);
            }
        }
    }
    writer.stats().finish();
}

/// A feeder or writer thread with a stop flag; `stop` joins it.
struct ThreadBackend {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Backend for ThreadBackend {
    fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        Ok(())
    }
}

pub(super) fn open_sink(path: PathBuf, sample_rate: u32, ring: RingOptions) -> Result<AudioSink> {
    if sample_rate == 0 {
        return Err(AudioIoError::Config(format!(
            "{}: sample rate 0",
            path.display()
        )));
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let file = hound::WavWriter::create(&path, spec).map_err(|e| AudioIoError::Wav {
        path: path.clone(),
        message: format!("cannot create: {e}"),
    })?;
    let (writer, reader) = playback_ring(ring.capacity_frames(sample_rate), 1, ring.scratch_frames);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let path2 = path.clone();
    let handle = std::thread::Builder::new()
        .name("tolk-wav-sink".into())
        .spawn(move || drain_to_file(reader, file, &stop2, &path2))
        .map_err(|e| AudioIoError::Wav {
            path: path.clone(),
            message: format!("cannot start writer thread: {e}"),
        })?;
    Ok(AudioSink::new(
        writer,
        sample_rate,
        path.display().to_string(),
        Box::new(WavSinkBackend {
            stop,
            handle: Some(handle),
            path,
        }),
    ))
}

type WavFile = hound::WavWriter<std::io::BufWriter<std::fs::File>>;

fn drain_to_file(
    mut reader: PlaybackReader,
    mut file: WavFile,
    stop: &AtomicBool,
    path: &std::path::Path,
) -> std::result::Result<(), String> {
    let mut buf = vec![0.0f32; 4096];
    let result = (|| -> std::result::Result<(), hound::Error> {
        loop {
            let n = reader.read(&mut buf);
            for &s in &buf[..n] {
                let s = if s.is_finite() { s } else { 0.0 };
                let v = (s.clamp(-1.0, 1.0) * 32768.0)
                    .round()
                    .clamp(-32768.0, 32767.0);
                file.write_sample(v as i16)?;
            }
            if n == 0 {
                // Stop only once the ring is empty, so every queued frame reaches the file.
                if stop.load(Ordering::Acquire) || !reader.writer_alive() {
                    if reader.available() == 0 {
                        break;
                    }
                    continue;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        file.finalize()
    })();
    match result {
        Ok(()) => {
            reader.stats().finish();
            Ok(())
        }
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            reader.stats().lose(msg.clone());
            Err(msg)
        }
    }
}

struct WavSinkBackend {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<std::result::Result<(), String>>>,
    path: PathBuf,
}

impl Backend for WavSinkBackend {
    fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.handle.take().map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(message))) => Err(AudioIoError::Wav {
                path: self.path.clone(),
                message,
            }),
            Some(Err(_)) => Err(AudioIoError::Wav {
                path: self.path.clone(),
                message: "writer thread panicked".into(),
            }),
        }
    }
}
