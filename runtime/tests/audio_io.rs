//! Audio I/O of the kiosk runtime: WAV and GStreamer sources and sinks, the lock-free rings and
//! their xrun accounting, and the real-time callbacks' freedom from allocation. (The cpal path
//! through a real ALSA PCM is in `audio_alsa.rs`: it sets `ALSA_CONFIG_PATH` and needs a process
//! of its own.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
use tolk_runtime::audio::{
    capture_ring, playback_ring, AudioSink, AudioSource, Pacing, RingOptions, SourceEnd,
    StreamState,
};

// Counts allocations per thread, so tests running in parallel do not disturb each other.
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations made on this thread while running `f`.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCS.with(|c| c.get());
    let r = f();
    (r, ALLOCS.with(|c| c.get()) - before)
}

fn tone(n: usize, rate: u32, freq: f32, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32 + 0.3).sin())
        .collect()
}

/// Reads a source to its end (bounded by `limit`).
fn drain(src: &mut AudioSource, limit: Duration) -> (Vec<f32>, SourceEnd) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0.0f32; 777];
    loop {
        assert!(t0.elapsed() < limit, "source did not end within {limit:?}");
        match src.read_timeout(&mut buf, Duration::from_millis(50)) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(end) => return (out, end),
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn wav_sink_then_source_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.wav");
    let rate = 16_000;
    let x = tone(8_000, rate, 440.0, 0.5);
    let mut sink = AudioSink::wav(&path, rate, RingOptions::default()).unwrap();
    // Written in uneven chunks, as a vocoder would.
    for chunk in x.chunks(333) {
        sink.write_all(chunk, Duration::from_secs(5)).unwrap();
    }
    sink.finish().unwrap();

    let mut src = AudioSource::wav(&path, Pacing::Fast, RingOptions::default()).unwrap();
    assert_eq!(src.sample_rate(), rate);
    let (y, end) = drain(&mut src, Duration::from_secs(10));
    assert_eq!(end, SourceEnd::Finished);
    assert_eq!(y.len(), x.len());
    let worst = max_diff(&x, &y);
    println!("WAV round trip: worst difference {worst:e} (16-bit quantization)");
    assert!(worst <= 1.0 / 32768.0 + 1e-7, "worst {worst}");
    assert_eq!(src.stats().xruns(), 0, "a fast file source never drops");
}

#[test]
fn wav_source_downmixes_and_fast_source_never_drops_with_a_small_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stereo.wav");
    let l = tone(5_000, 8_000, 300.0, 0.4);
    let r = tone(5_000, 8_000, 700.0, 0.4);
    let inter: Vec<f32> = l.iter().zip(&r).flat_map(|(a, b)| [*a, *b]).collect();
    write_wav(&path, &inter, 8_000, 2, WavFormat::Float32).unwrap();
    // A ring of 0.05 s (400 frames) for 5000 frames: the feeder must wait, not drop.
    let ring = RingOptions {
        capacity_s: 0.05,
        scratch_frames: 64,
    };
    let mut src = AudioSource::wav(&path, Pacing::Fast, ring).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (y, _) = drain(&mut src, Duration::from_secs(10));
    let want: Vec<f32> = l.iter().zip(&r).map(|(a, b)| (a + b) / 2.0).collect();
    assert_eq!(y.len(), want.len());
    assert!(max_diff(&y, &want) < 1e-6);
    assert_eq!(src.stats().xruns(), 0);
}

#[test]
fn wav_source_bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"RIFF\x10\0\0\0not a wave file at all").unwrap();
    let err = AudioSource::wav(&garbage, Pacing::Fast, RingOptions::default())
        .err()
        .expect("garbage must not open")
        .to_string();
    assert!(err.contains("garbage.wav"), "{err}");

    let missing = dir.path().join("missing.wav");
    let err = AudioSource::wav(&missing, Pacing::Fast, RingOptions::default())
        .err()
        .expect("a missing file must not open")
        .to_string();
    assert!(err.contains("missing.wav"), "{err}");

    // Truncated data: a valid header that promises more samples than the file holds.
    let good = dir.path().join("good.wav");
    write_wav(
        &good,
        &tone(1000, 16_000, 200.0, 0.3),
        16_000,
        1,
        WavFormat::Pcm16,
    )
    .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.wav");
    std::fs::write(&cut, &bytes[..bytes.len() - 501]).unwrap();
    let err = AudioSource::wav(&cut, Pacing::Fast, RingOptions::default())
        .err()
        .expect("a truncated file must not open")
        .to_string();
    assert!(
        err.contains("cut.wav") && (err.contains("truncated") || err.contains("enough bytes")),
        "{err}"
    );
}

#[test]
fn paced_source_runs_at_real_time() {
    let rate = 16_000;
    let x = tone(3_200, rate, 440.0, 0.5); // 0.2 s
    let mut src = AudioSource::memory(
        x.clone(),
        rate,
        Pacing::RealTime { period_frames: 320 },
        RingOptions::default(),
    );
    let t0 = Instant::now();
    let (y, end) = drain(&mut src, Duration::from_secs(5));
    let took = t0.elapsed();
    assert_eq!(end, SourceEnd::Finished);
    assert_eq!(y, x);
    assert!(
        took >= Duration::from_millis(180),
        "0.2 s of audio paced at real time took only {took:?}"
    );
}

#[test]
fn capture_ring_overflow_counts_xruns_and_never_blocks() {
    let (mut w, mut r) = capture_ring(100, 1, 32);
    let data: Vec<i16> = (0..250).map(|i| i as i16 * 100).collect();
    let t0 = Instant::now();
    let accepted = w.push_interleaved(&data);
    let again = w.push_interleaved(&data[..10]);
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "push must not wait"
    );
    assert_eq!(accepted, 100);
    assert_eq!(again, 0);
    let stats = w.stats().clone();
    assert_eq!(stats.xruns(), 2);
    assert_eq!(stats.xrun_frames(), 150 + 10);
    assert_eq!(stats.frames(), 100);
    // The oldest 100 frames are kept, in order.
    let mut out = vec![0.0f32; 200];
    assert_eq!(r.read(&mut out), 100);
    for (i, v) in out[..100].iter().enumerate() {
        assert!((v - (i as f32 * 100.0) / 32768.0).abs() < 1e-6);
    }
    // Room again: no further xrun.
    assert_eq!(w.push_interleaved(&data[..50]), 50);
    assert_eq!(stats.xruns(), 2);
}

#[test]
fn playback_ring_underflow_counts_xruns_only_while_playing() {
    let (mut w, mut r) = playback_ring(1000, 2, 16);
    let mut out = vec![1.0f32; 2 * 64];
    // Idle device: silence, not an xrun.
    assert_eq!(r.fill_interleaved(&mut out), 0);
    assert!(out.iter().all(|&v| v == 0.0));
    assert_eq!(r.stats().xruns(), 0);
    // Audio that runs out mid-callback: one xrun, the rest padded with silence.
    let x = tone(100, 16_000, 440.0, 0.5);
    assert_eq!(w.write(&x), 100);
    assert_eq!(r.fill_interleaved(&mut out), 64);
    assert_eq!(r.fill_interleaved(&mut out), 36);
    assert_eq!(r.stats().xruns(), 1);
    assert_eq!(r.stats().xrun_frames(), 28);
    for f in 0..36 {
        assert_eq!(out[2 * f], x[64 + f]);
        assert_eq!(out[2 * f + 1], x[64 + f]);
    }
    assert!(out[72..].iter().all(|&v| v == 0.0));
    // The writer said the utterance is over: the short last period is not an xrun.
    w.write(&x[..10]);
    w.end_of_audio();
    r.fill_interleaved(&mut out);
    assert_eq!(r.stats().xruns(), 1);
    // Writing never waits when full: it returns what fitted.
    let big = vec![0.1f32; 5000];
    let t0 = Instant::now();
    assert_eq!(w.write(&big), 1000);
    assert!(t0.elapsed() < Duration::from_millis(50));
}

#[test]
fn realtime_callbacks_do_not_allocate() {
    let (mut w, mut r) = capture_ring(48_000, 2, 256);
    // Larger than the scratch (processed in pieces), stereo i16 and u8, f32 mono.
    let stereo: Vec<i16> = (0..2 * 1000).map(|i| (i as i16).wrapping_mul(37)).collect();
    let bytes: Vec<u8> = (0..2 * 300).map(|i| i as u8).collect();
    let (_, n) = allocations_in(|| {
        w.push_interleaved(&stereo);
        w.push_interleaved(&bytes);
        w.push_interleaved(&stereo[..2]);
    });
    assert_eq!(n, 0, "capture callback allocated {n} times");
    let mut got = vec![0.0f32; 1000];
    assert_eq!(r.read(&mut got), 1000);
    let want0 = (stereo[0] as f32 + stereo[1] as f32) / 2.0 / 32768.0;
    assert!((got[0] - want0).abs() < 1e-6);

    let (mut pw, mut pr) = playback_ring(48_000, 2, 256);
    pw.write(&tone(3000, 48_000, 440.0, 0.5));
    let mut out_i16 = vec![0i16; 2 * 1024];
    let mut out_u16 = vec![0u16; 2 * 700];
    let mut out_f32 = vec![0f32; 2 * 2000];
    let (_, n) = allocations_in(|| {
        pr.fill_interleaved(&mut out_i16);
        pr.fill_interleaved(&mut out_u16);
        pr.fill_interleaved(&mut out_f32); // runs dry: the underrun path too
    });
    assert_eq!(n, 0, "playback callback allocated {n} times");
    assert_eq!(pr.stats().xruns(), 1);
    // Sanity check of the guard itself: it does see allocations.
    let (_, n) = allocations_in(|| vec![0u8; 10]);
    assert!(n > 0);
}

#[test]
fn gstreamer_filesrc_matches_direct_wav_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("speech.wav");
    let rate = 16_000;
    let x = tone(16_000, rate, 523.0, 0.4);
    write_wav(&path, &x, rate, 1, WavFormat::Pcm16).unwrap();
    let direct = read_wav(&path).unwrap().samples;

    // Same rate: only the 16-bit to float conversion, which is exact.
    let p = format!("filesrc location={} ! wavparse", path.display());
    let mut src = AudioSource::gstreamer(&p, rate, RingOptions::default()).unwrap();
    let (y, end) = drain(&mut src, Duration::from_secs(20));
    assert_eq!(end, SourceEnd::Finished);
    assert_eq!(y.len(), direct.len());
    let worst = max_diff(&y, &direct);
    println!("GStreamer filesrc vs direct read: worst difference {worst:e}");
    assert!(worst < 1e-6);

    // 16 kHz file captured at 8 kHz: a 523 Hz tone survives audioresample.
    let mut src = AudioSource::gstreamer(&p, 8_000, RingOptions::default()).unwrap();
    let (y, _) = drain(&mut src, Duration::from_secs(20));
    assert!((y.len() as i64 - 8_000).abs() <= 64, "{} frames", y.len());
    let want = tone(y.len(), 8_000, 523.0, 0.4);
    // Away from the edges (filter start-up), within the resampler's tolerance.
    let worst = max_diff(&y[200..y.len() - 200], &want[200..y.len() - 200]);
    println!("GStreamer 16 kHz -> 8 kHz vs analytic tone: worst difference {worst:e}");
    assert!(worst < 0.02, "worst {worst}");
}

#[test]
fn gstreamer_audiotestsrc_ends_with_eos() {
    // 5 buffers of 1600 samples at 16 kHz (0.5 s), user pipeline with its own appsink.
    let p = "audiotestsrc num-buffers=5 samplesperbuffer=1600 wave=sine freq=440 \
             ! audio/x-raw,rate=16000 ! audioconvert ! appsink name=sink";
    let mut src = AudioSource::gstreamer(p, 16_000, RingOptions::default()).unwrap();
    let (y, end) = drain(&mut src, Duration::from_secs(20));
    assert_eq!(end, SourceEnd::Finished);
    assert_eq!(y.len(), 8_000);
    let peak = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(peak > 0.1 && peak <= 1.0, "peak {peak}");
}

#[test]
fn gstreamer_sink_writes_wav_through_wavenc() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wav");
    let rate = 24_000;
    let x = tone(12_000, rate, 300.0, 0.5);
    let p = format!(
        "audioconvert ! audio/x-raw,format=S16LE ! wavenc ! filesink location={}",
        out.display()
    );
    let mut sink = AudioSink::gstreamer(&p, rate, RingOptions::default()).unwrap();
    for chunk in x.chunks(1000) {
        sink.write_all(chunk, Duration::from_secs(5)).unwrap();
    }
    sink.finish().unwrap();
    let got = read_wav(&out).unwrap();
    assert_eq!(got.sample_rate, rate);
    assert_eq!(got.channels, 1);
    assert_eq!(got.samples.len(), x.len());
    let worst = max_diff(&got.samples, &x);
    println!("GStreamer wavenc sink: worst difference {worst:e}");
    assert!(worst < 2.0 / 32768.0, "worst {worst}");
}

#[test]
fn gstreamer_failures_are_errors_or_lost_events() {
    let ring = RingOptions::default();
    let err = AudioSource::gstreamer("this_element_does_not_exist ! fakesink", 16_000, ring)
        .err()
        .expect("an unknown element must not open")
        .to_string();
    assert!(err.contains("this_element_does_not_exist"), "{err}");

    let err = AudioSource::gstreamer(
        "filesrc location=/nonexistent/x.wav ! wavparse",
        16_000,
        ring,
    )
    .err()
    .expect("a missing file must not open")
    .to_string();
    assert!(err.contains("x.wav") || err.contains("filesrc"), "{err}");

    // A corrupt file fails once streaming: the source ends as lost, never a panic or a hang.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, vec![0x5au8; 20_000]).unwrap();
    match AudioSource::gstreamer(
        &format!("filesrc location={} ! wavparse", bad.display()),
        16_000,
        ring,
    ) {
        Err(e) => assert!(e.to_string().contains("bad.wav") || e.to_string().contains("wavparse")),
        Ok(mut src) => {
            let (_, end) = drain(&mut src, Duration::from_secs(20));
            assert!(matches!(end, SourceEnd::Lost(_)), "{end:?}");
            assert_eq!(src.stats().state(), StreamState::Lost);
        }
    }
}
