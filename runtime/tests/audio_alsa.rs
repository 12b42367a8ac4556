//! cpal through a real ALSA PCM without hardware: a test asoundrc defines PCMs made of alsa-lib's
//! `file` plugin (reading a raw capture file, writing a raw playback file) over the `null`
//! plugin, behind a `linear` plugin that only accepts integer formats, so our sample-format
//! conversion and stereo downmix/upmix run for real. `ALSA_CONFIG_PATH` must be set before alsa-lib
//! is first used in the process, so this file holds a single test (one process).

use std::time::{Duration, Instant};

use tolk_config::AudioEndpoint;
use tolk_runtime::audio::{AudioIoError, AudioSink, AudioSource, RingOptions};

fn endpoint(device: &str, rate: u32, channels: u16) -> AudioEndpoint {
    serde_json::from_value(serde_json::json!({
        "device": device,
        "sample_rate": rate,
        "channels": channels,
        "period_frames": 320,
    }))
    .unwrap()
}

#[test]
fn cpal_captures_and_plays_through_alsa_file_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rate = 16_000u32;
    let frames = 8_000usize;
    // Stereo S16 input: different tones left and right.
    let (l, r): (Vec<i16>, Vec<i16>) = (0..frames)
        .map(|i| {
            let t = i as f32 / rate as f32;
            (
                (9000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16,
                (7000.0 * (2.0 * std::f32::consts::PI * 130.0 * t + 1.0).sin()) as i16,
            )
        })
        .unzip();
    let mut raw = Vec::with_capacity(frames * 4);
    for (a, b) in l.iter().zip(&r) {
        raw.extend_from_slice(&a.to_le_bytes());
        raw.extend_from_slice(&b.to_le_bytes());
    }
    std::fs::write(d.join("in.raw"), &raw).unwrap();
    let asoundrc = format!(
        r#"
pcm.tolk_cap_file {{ type file slave.pcm "null" file "/dev/null" infile "{dir}/in.raw" format "raw" }}
pcm.tolk_cap {{
  type linear
  slave {{ pcm "tolk_cap_file" format S16_LE }}
  hint {{ show on description "Tolk test capture" }}
}}
pcm.tolk_play_file {{ type file slave.pcm "null" file "{dir}/out.raw" format "raw" }}
pcm.tolk_play {{
  type linear
  slave {{ pcm "tolk_play_file" format S16_LE }}
  hint {{ show on description "Tolk test playback" }}
}}
"#,
        dir = d.display()
    );
    std::fs::write(d.join("asoundrc"), asoundrc).unwrap();
    // The system configuration first, then ours (alsa-lib reads a ':'-separated list). Only
    // this test runs in this process, before any alsa-lib use.
    std::env::set_var(
        "ALSA_CONFIG_PATH",
        format!("/usr/share/alsa/alsa.conf:{}/asoundrc", d.display()),
    );

    // A name that does not exist: the error lists the devices, ours among them.
    let err = AudioSource::cpal(&endpoint("no_such_pcm", rate, 2), RingOptions::default())
        .err()
        .expect("unknown device must fail");
    match &err {
        AudioIoError::DeviceNotFound { available, .. } => {
            assert!(available.iter().any(|d| d.contains("tolk_cap")), "{err}")
        }
        other => panic!("wrong error: {other}"),
    }
    println!("{err}");

    // Capture: the null plugin runs faster than real time, so the ring fills and overflows
    // after the file's frames; the first frames must be the file's, downmixed.
    let ring = RingOptions {
        capacity_s: 1.0,
        scratch_frames: 512,
    };
    let mut src = AudioSource::cpal(&endpoint("tolk_cap", rate, 2), ring).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0.0f32; 1024];
    let t0 = Instant::now();
    while got.len() < frames && t0.elapsed() < Duration::from_secs(10) {
        let n = src
            .read_timeout(&mut buf, Duration::from_millis(50))
            .unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    src.stop().unwrap();
    assert!(got.len() >= frames, "captured only {} frames", got.len());
    let want: Vec<f32> = l
        .iter()
        .zip(&r)
        .map(|(&a, &b)| (a as f32 + b as f32) / 2.0 / 32768.0)
        .collect();
    // The null plugin produces capture periods faster than real time, so ALSA itself overruns
    // (cpal reports those as xruns) and skips periods of the file. What we deliver must be the
    // file's frames, downmixed and converted exactly, in order: a subsequence of whole runs.
    assert!(
        (got[0] - want[0]).abs() < 1e-6,
        "capture does not start at the file's start"
    );
    let (mut i, mut j, mut skipped, mut matched) = (0usize, 0usize, 0usize, 0usize);
    while i + 4 <= got.len() && j + 4 <= want.len() {
        if (got[i] - want[j]).abs() < 1e-6 {
            i += 1;
            j += 1;
            matched += 1;
            continue;
        }
        let next = (j + 1..want.len() - 4)
            .find(|&k| (0..4).all(|t| (got[i + t] - want[k + t]).abs() < 1e-6));
        match next {
            Some(k) => {
                skipped += k - j;
                j = k;
            }
            None => break,
        }
    }
    println!(
        "ALSA capture through cpal: {matched} frames matched the file exactly (downmix of S16 \
         stereo), {skipped} skipped by ALSA overruns, input xruns {}",
        src.stats().xruns()
    );
    assert!(
        j + 4 > want.len() || i + 4 > got.len(),
        "frame {i} is not from the file"
    );
    assert!(matched >= 1000, "only {matched} frames matched");

    // Playback: a tone written to the sink comes out in out.raw, on both channels, as S16.
    let tone: Vec<f32> = (0..4000)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / rate as f32 + 0.7).sin())
        .collect();
    let mut sink = AudioSink::cpal(&endpoint("tolk_play", rate, 2), ring).unwrap();
    sink.write_all(&tone, Duration::from_secs(5)).unwrap();
    sink.finish().unwrap();
    let out = std::fs::read(d.join("out.raw")).unwrap();
    let samples: Vec<i16> = out
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let first = samples
        .iter()
        .position(|&s| s != 0)
        .expect("the tone reached the playback file");
    let first = first - first % 2;
    let played = &samples[first..first + 2 * tone.len()];
    let mut worst = 0.0f32;
    for (i, &t) in tone.iter().enumerate() {
        assert_eq!(
            played[2 * i],
            played[2 * i + 1],
            "channels differ at frame {i}"
        );
        worst = worst.max((played[2 * i] as f32 / 32768.0 - t).abs());
    }
    println!(
        "ALSA playback through cpal: worst difference {worst:e} ({} bytes written)",
        out.len()
    );
    assert!(worst <= 1.5 / 32768.0, "worst {worst}");
}
