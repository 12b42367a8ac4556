//! Live audio devices through `cpal` (the ALSA host on Linux). The device is chosen by the
//! config's name: its ALSA PCM id (`default`, `hw:CARD=0,DEV=0`, a PCM defined in an asoundrc)
//! or its description. The stream runs on a thread of its own that owns the cpal stream (which
//! is not `Send` on every platform); the data callbacks only call
//! [`CaptureWriter::push_interleaved`] / [`PlaybackReader::fill_interleaved`], which neither
//! allocate, lock nor wait. Device errors go to the stream's [`super::StreamStats`]: cpal xruns
//! are counted, anything else (device unplugged, ...) marks the stream lost.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{BufferSize, SampleFormat, StreamConfig, SupportedStreamConfigRange};
use tolk_config::AudioEndpoint;

use super::ring::{capture_ring, playback_ring, CaptureWriter, PlaybackReader, StreamStats};
use super::{AudioIoError, AudioSink, AudioSource, Backend, Result, RingOptions};

/// Sample formats we can convert, in order of preference.
const FORMATS: [SampleFormat; 6] = [
    SampleFormat::F32,
    SampleFormat::I16,
    SampleFormat::I32,
    SampleFormat::U16,
    SampleFormat::I8,
    SampleFormat::U8,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Input,
    Output,
}

impl Dir {
    fn word(self) -> &'static str {
        match self {
            Dir::Input => "input",
            Dir::Output => "output",
        }
    }
}

/// Names of the devices cpal's default host offers for input (`true`) or output: the PCM id and,
/// when different, its description.
pub fn list_devices(input: bool) -> Result<Vec<String>> {
    let host = cpal::default_host();
    let devices = if input {
        host.input_devices().map(|d| d.collect::<Vec<_>>())
    } else {
        host.output_devices().map(|d| d.collect::<Vec<_>>())
    }
    .map_err(|e| AudioIoError::Device {
        name: "(enumeration)".into(),
        message: e.to_string(),
    })?;
    Ok(devices.iter().map(label).collect())
}

fn label(d: &cpal::Device) -> String {
    let id = d.id().map(|i| i.id().to_string()).unwrap_or_default();
    let desc = d
        .description()
        .map(|x| x.name().to_string())
        .unwrap_or_default();
    if desc.is_empty() || desc == id {
        id
    } else {
        format!("{id} ({desc})")
    }
}

fn find_device(name: &str, dir: Dir) -> Result<cpal::Device> {
    let host = cpal::default_host();
    if name == "default" {
        let d = match dir {
            Dir::Input => host.default_input_device(),
            Dir::Output => host.default_output_device(),
        };
        if let Some(d) = d {
            return Ok(d);
        }
    }
    let devices: Vec<cpal::Device> = match dir {
        Dir::Input => host.input_devices().map(|d| d.collect()),
        Dir::Output => host.output_devices().map(|d| d.collect()),
    }
    .map_err(|e| AudioIoError::Device {
        name: name.into(),
        message: format!("cannot list {} devices: {e}", dir.word()),
    })?;
    let by_id = devices
        .iter()
        .position(|d| d.id().map(|i| i.id() == name).unwrap_or(false));
    let by_desc = || {
        devices
            .iter()
            .position(|d| d.description().map(|x| x.name() == name).unwrap_or(false))
    };
    match by_id.or_else(by_desc) {
        Some(i) => Ok(devices.into_iter().nth(i).expect("index from position")),
        None => Err(AudioIoError::DeviceNotFound {
            name: name.into(),
            direction: dir.word(),
            available: devices.iter().map(label).collect(),
        }),
    }
}

/// Picks a supported (format, config) at the requested rate and channel count.
fn choose_config(
    device: &cpal::Device,
    endpoint: &AudioEndpoint,
    dir: Dir,
) -> Result<(SampleFormat, StreamConfig)> {
    let name = endpoint.device.as_str();
    let ranges: Vec<SupportedStreamConfigRange> = match dir {
        Dir::Input => device.supported_input_configs().map(|c| c.collect()),
        Dir::Output => device.supported_output_configs().map(|c| c.collect()),
    }
    .map_err(|e| AudioIoError::Device {
        name: name.into(),
        message: format!("cannot query {} configurations: {e}", dir.word()),
    })?;
    let rate = endpoint.sample_rate;
    for fmt in FORMATS {
        let hit = ranges.iter().find(|r| {
            r.sample_format() == fmt
                && r.channels() == endpoint.channels
                && r.min_sample_rate() <= rate
                && rate <= r.max_sample_rate()
        });
        if hit.is_some() {
            let buffer_size = if endpoint.period_frames > 0 {
                BufferSize::Fixed(endpoint.period_frames)
            } else {
                BufferSize::Default
            };
            return Ok((
                fmt,
                StreamConfig {
                    channels: endpoint.channels,
                    sample_rate: rate,
                    buffer_size,
                },
            ));
        }
    }
    let offered: Vec<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "{:?} {}ch {}-{} Hz",
                r.sample_format(),
                r.channels(),
                r.min_sample_rate(),
                r.max_sample_rate()
            )
        })
        .collect();
    Err(AudioIoError::Device {
        name: name.into(),
        message: format!(
            "no supported {} configuration for {} channel(s) at {rate} Hz in formats {FORMATS:?}; \
             the device offers: {}",
            dir.word(),
            endpoint.channels,
            if offered.is_empty() {
                "nothing".into()
            } else {
                offered.join(", ")
            }
        ),
    })
}

fn error_callback(stats: std::sync::Arc<StreamStats>) -> impl FnMut(cpal::Error) + Send + 'static {
    move |e: cpal::Error| {
        if e.kind() == cpal::ErrorKind::Xrun {
            stats.count_backend_xrun();
        } else {
            stats.lose(e.to_string());
        }
    }
}

fn build_input(
    device: &cpal::Device,
    fmt: SampleFormat,
    config: StreamConfig,
    mut w: CaptureWriter,
) -> std::result::Result<cpal::Stream, cpal::Error> {
    let err = error_callback(w.stats().clone());
    macro_rules! build {
        ($t:ty) => {
            device.build_input_stream::<$t, _, _>(
                config,
                move |data: &[$t], _| {
                    w.push_interleaved(data);
                },
                err,
                None,
            )
        };
    }
    match fmt {
        SampleFormat::F32 => build!(f32),
        SampleFormat::I16 => build!(i16),
        SampleFormat::I32 => build!(i32),
        SampleFormat::U16 => build!(u16),
        SampleFormat::I8 => build!(i8),
        _ => build!(u8),
    }
}

fn build_output(
    device: &cpal::Device,
    fmt: SampleFormat,
    config: StreamConfig,
    mut r: PlaybackReader,
) -> std::result::Result<cpal::Stream, cpal::Error> {
    let err = error_callback(r.stats().clone());
    macro_rules! build {
        ($t:ty) => {
            device.build_output_stream::<$t, _, _>(
                config,
                move |data: &mut [$t], _| {
                    r.fill_interleaved(data);
                },
                err,
                None,
            )
        };
    }
    match fmt {
        SampleFormat::F32 => build!(f32),
        SampleFormat::I16 => build!(i16),
        SampleFormat::I32 => build!(i32),
        SampleFormat::U16 => build!(u16),
        SampleFormat::I8 => build!(i8),
        _ => build!(u8),
    }
}

/// Owns the cpal stream on its own thread; dropping the stream stops the device.
struct DeviceBackend {
    stop_tx: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    stats: std::sync::Arc<StreamStats>,
    /// Output only: how long `stop` lets queued audio play out.
    drain: Option<(Box<dyn Fn() -> usize + Send>, Duration)>,
}

impl Backend for DeviceBackend {
    fn stop(&mut self) -> Result<()> {
        if let Some((queued, limit)) = &self.drain {
            let t0 = std::time::Instant::now();
            while queued() > 0
                && t0.elapsed() < *limit
                && self.stats.state() == super::StreamState::Running
            {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(self.stop_tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.stats.finish();
        Ok(())
    }
}

/// Starts a stream on a dedicated thread: `build` runs there, the result of `play` comes back.
fn spawn_stream<F>(
    name: &str,
    stats: std::sync::Arc<StreamStats>,
    build: F,
) -> Result<DeviceBackend>
where
    F: FnOnce() -> Result<cpal::Stream> + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let dev_name = name.to_string();
    let handle = std::thread::Builder::new()
        .name("tolk-audio-dev".into())
        .spawn(move || {
            let stream = match build().and_then(|s| {
                s.play().map_err(|e| AudioIoError::Device {
                    name: dev_name.clone(),
                    message: format!("cannot start: {e}"),
                })?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Park until stopped (sender dropped); the stream lives until then.
            let _ = stop_rx.recv();
            drop(stream);
        })
        .map_err(|e| AudioIoError::Device {
            name: name.into(),
            message: format!("cannot start the stream thread: {e}"),
        })?;
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(DeviceBackend {
            stop_tx: Some(stop_tx),
            handle: Some(handle),
            stats,
            drain: None,
        }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(AudioIoError::Device {
            name: name.into(),
            message: "the device did not start within 10 s".into(),
        }),
    }
}

fn validate(endpoint: &AudioEndpoint) -> Result<()> {
    if endpoint.sample_rate == 0 || endpoint.channels == 0 {
        return Err(AudioIoError::Config(format!(
            "device {:?}: {} channel(s) at {} Hz",
            endpoint.device.as_str(),
            endpoint.channels,
            endpoint.sample_rate
        )));
    }
    Ok(())
}

pub(super) fn open_source(endpoint: &AudioEndpoint, ring: RingOptions) -> Result<AudioSource> {
    validate(endpoint)?;
    let name = endpoint.device.as_str().to_string();
    let device = find_device(&name, Dir::Input)?;
    let (fmt, config) = choose_config(&device, endpoint, Dir::Input)?;
    let scratch = ring.scratch_frames.max(endpoint.period_frames as usize);
    let (writer, reader) = capture_ring(
        ring.capacity_frames(endpoint.sample_rate),
        endpoint.channels,
        scratch,
    );
    let n2 = name.clone();
    let backend = spawn_stream(&name, reader.stats().clone(), move || {
        build_input(&device, fmt, config, writer).map_err(|e| AudioIoError::Device {
            name: n2,
            message: format!("cannot open for input ({fmt:?}, {config:?}): {e}"),
        })
    })?;
    tracing::info!(device = %name, ?fmt, ?config, "audio input started");
    Ok(AudioSource::new(
        reader,
        endpoint.sample_rate,
        name,
        Box::new(backend),
    ))
}

pub(super) fn open_sink(endpoint: &AudioEndpoint, ring: RingOptions) -> Result<AudioSink> {
    validate(endpoint)?;
    let name = endpoint.device.as_str().to_string();
    let device = find_device(&name, Dir::Output)?;
    let (fmt, config) = choose_config(&device, endpoint, Dir::Output)?;
    let scratch = ring.scratch_frames.max(endpoint.period_frames as usize);
    let (writer, reader) = playback_ring(
        ring.capacity_frames(endpoint.sample_rate),
        endpoint.channels,
        scratch,
    );
    let n2 = name.clone();
    let mut backend = spawn_stream(&name, reader.stats().clone(), move || {
        build_output(&device, fmt, config, reader).map_err(|e| AudioIoError::Device {
            name: n2,
            message: format!("cannot open for output ({fmt:?}, {config:?}): {e}"),
        })
    })?;
    // Let queued audio play out on finish (at most the ring's length plus a margin).
    let queued = writer_queue_probe(&writer);
    let limit = Duration::from_secs_f32(ring.capacity_s.max(0.01) + 1.0);
    backend.drain = Some((queued, limit));
    tracing::info!(device = %name, ?fmt, ?config, "audio output started");
    Ok(AudioSink::new(
        writer,
        endpoint.sample_rate,
        name,
        Box::new(backend),
    ))
}

/// A probe of the playback queue usable from the backend without owning the writer: played
/// frames are counted in the stats, written frames are not, so the backend compares against the
/// writer's count kept in a shared atomic.
fn writer_queue_probe(writer: &super::PlaybackWriter) -> Box<dyn Fn() -> usize + Send> {
    let q = writer.queue_probe();
    Box::new(move || q.occupied())
}
