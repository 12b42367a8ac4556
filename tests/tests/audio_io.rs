//! WAV reading/writing, conditioning to 16 kHz mono, the streaming resampler, and bad input
//! (empty, one sample, ten minutes, NaN, stereo 44.1 kHz, 8/24-bit PCM, float WAV, corrupt and
//! truncated files): correct handling or a typed error, never a panic.
//!
//! WAV files are built byte by byte here (an independent writer), not with the reader's library.

use std::f64::consts::PI;
use std::time::Instant;
use tolk_models::stream::testing::assert_chunked_eq_offline_exact;
use tolk_models::stream::{run_chunked, Streaming};

use tolk_models::audio::condition::{condition, to_mono_16k, ConditionConfig, StreamConditioner};
use tolk_models::audio::endpoint::{EndpointConfig, Endpointer};
use tolk_models::audio::features::{Mfcc, MfccConfig};
use tolk_models::audio::resample::{resample, StreamResampler};
use tolk_models::audio::vad::EnergyVad;
use tolk_models::audio::wav::{read_wav, read_wav_from, write_wav, WavFormat};
use tolk_models::audio::AudioError;

/// A canonical WAV file: format 1 (PCM) or 3 (IEEE float), little-endian samples in `data`.
fn wav_bytes(format: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = channels as u32 * bits as u32 / 8;
    let mut b = Vec::new();
    b.extend(b"RIFF");
    b.extend((36 + data.len() as u32).to_le_bytes());
    b.extend(b"WAVEfmt ");
    b.extend(16u32.to_le_bytes());
    b.extend(format.to_le_bytes());
    b.extend(channels.to_le_bytes());
    b.extend(rate.to_le_bytes());
    b.extend((rate * block).to_le_bytes());
    b.extend((block as u16).to_le_bytes());
    b.extend(bits.to_le_bytes());
    b.extend(b"data");
    b.extend((data.len() as u32).to_le_bytes());
    b.extend(data);
    b
}

fn read(bytes: Vec<u8>) -> Result<tolk_models::audio::wav::WavAudio, AudioError> {
    read_wav_from(std::io::Cursor::new(bytes), "test.wav")
}

fn sine(freq: f64, amp: f64, rate: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (amp * (2.0 * PI * freq * i as f64 / rate as f64).sin()) as f32)
        .collect()
}

/// Least-squares amplitude of a `freq` sinusoid in `x` and the relative residual.
fn fit_sine(x: &[f32], freq: f64, rate: u32) -> (f64, f64) {
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let ph = 2.0 * PI * freq * i as f64 / rate as f64;
        let (s, c) = ph.sin_cos();
        ss += s * s;
        sc += s * c;
        cc += c * c;
        xs += v as f64 * s;
        xc += v as f64 * c;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    let energy: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
    let residual: f64 = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ph = 2.0 * PI * freq * i as f64 / rate as f64;
            (v as f64 - a * ph.sin() - b * ph.cos()).powi(2)
        })
        .sum();
    ((a * a + b * b).sqrt(), (residual / energy).sqrt())
}

#[test]
fn reads_every_pcm_width_and_float() {
    // 8-bit: unsigned on disk, 128 is zero.
    let w = read(wav_bytes(1, 1, 8000, 8, &[128, 255, 0, 192])).unwrap();
    assert_eq!(w.samples, vec![0.0, 127.0 / 128.0, -1.0, 0.5]);
    assert_eq!((w.sample_rate, w.channels), (8000, 1));
    // 16-bit.
    let d: Vec<u8> = [0i16, 16384, -32768, 32767]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = read(wav_bytes(1, 2, 16000, 16, &d)).unwrap();
    assert_eq!(w.samples, vec![0.0, 0.5, -1.0, 32767.0 / 32768.0]);
    assert_eq!(w.frames(), 2);
    // 24-bit.
    let d: Vec<u8> = [0i32, 1 << 22, -(1 << 23), -1]
        .iter()
        .flat_map(|v| v.to_le_bytes()[..3].to_vec())
        .collect();
    let w = read(wav_bytes(1, 1, 48000, 24, &d)).unwrap();
    assert_eq!(w.samples, vec![0.0, 0.5, -1.0, -1.0 / (1 << 23) as f32]);
    // 32-bit integer.
    let d: Vec<u8> = [1i32 << 30, i32::MIN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = read(wav_bytes(1, 1, 16000, 32, &d)).unwrap();
    assert_eq!(w.samples, vec![0.5, -1.0]);
    // 32-bit float, values beyond ±1 kept as they are (conditioning clamps and reports them).
    let d: Vec<u8> = [0.25f32, -1.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let w = read(wav_bytes(3, 1, 22050, 32, &d)).unwrap();
    assert_eq!(w.samples, vec![0.25, -1.5]);
    // Six channels.
    let d: Vec<u8> = (0..12i16).flat_map(|v| (v * 1000).to_le_bytes()).collect();
    let w = read(wav_bytes(1, 6, 16000, 16, &d)).unwrap();
    assert_eq!((w.channels, w.frames()), (6, 2));
}

#[test]
fn write_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let x = sine(440.0, 0.7, 44100, 4410);
    let stereo: Vec<f32> = x.iter().flat_map(|&v| [v, -v]).collect();
    let p = dir.path().join("f.wav");
    write_wav(&p, &stereo, 44100, 2, WavFormat::Float32).unwrap();
    let w = read_wav(&p).unwrap();
    assert_eq!((w.sample_rate, w.channels), (44100, 2));
    assert_eq!(w.samples, stereo);
    let p = dir.path().join("i.wav");
    write_wav(&p, &x, 16000, 1, WavFormat::Pcm16).unwrap();
    let w = read_wav(&p).unwrap();
    let worst = w
        .samples
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 0.5 / 32768.0 + 1e-7, "16-bit round trip {worst}");
    assert!(write_wav(&p, &[0.0; 3], 16000, 2, WavFormat::Pcm16).is_err());
    assert!(write_wav(&p, &[0.0; 2], 0, 1, WavFormat::Pcm16).is_err());
}

#[test]
fn corrupt_truncated_and_unsupported_files_are_typed_errors() {
    let good = wav_bytes(1, 1, 16000, 16, &[0u8; 200]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty file", vec![]),
        (
            "random bytes",
            (0..100u8).map(|i| i.wrapping_mul(37)).collect(),
        ),
        (
            "RIFF without WAVE",
            b"RIFF\x10\0\0\0JUNKJUNKJUNKJUNK".to_vec(),
        ),
        ("truncated header", good[..20].to_vec()),
        ("header only (data declared, absent)", good[..44].to_vec()),
        ("truncated data", good[..100].to_vec()),
        ("odd byte of 16-bit data", good[..45].to_vec()),
        ("zero channels", wav_bytes(1, 0, 16000, 16, &[0; 4])),
        ("64-bit float", wav_bytes(3, 1, 16000, 64, &[0; 16])),
        ("12-bit PCM", wav_bytes(1, 1, 16000, 12, &[0; 4])),
        ("A-law", wav_bytes(6, 1, 8000, 8, &[0; 4])),
    ];
    for (what, bytes) in cases {
        match read(bytes) {
            Err(e @ (AudioError::Wav { .. } | AudioError::UnsupportedFormat { .. })) => {
                println!("{what}: {e}")
            }
            Err(other) => panic!("{what}: unexpected error kind {other:?}"),
            Ok(w) => panic!("{what}: accepted as {} samples", w.samples.len()),
        }
    }
    // A valid file with no samples is fine.
    assert!(read(wav_bytes(1, 1, 16000, 16, &[]))
        .unwrap()
        .samples
        .is_empty());
    let e = read_wav("/nonexistent/dir/x.wav").unwrap_err();
    assert!(matches!(e, AudioError::Io { .. }), "{e:?}");
}

#[test]
fn conditioning_reports_nan_clipping_and_dc() {
    let mut x = sine(300.0, 0.5, 16000, 16000);
    x[10] = f32::NAN;
    x[20] = f32::INFINITY;
    x[30] = f32::NEG_INFINITY;
    x[40] = 1.7;
    x[50] = -1.2;
    let with_dc: Vec<f32> = x.iter().map(|v| v + 0.05).collect();
    let (y, report) = to_mono_16k(&with_dc, 16000, 1).unwrap();
    assert_eq!(report.non_finite, 3);
    assert!(report.clipped >= 2, "{report:?}");
    assert!((report.dc_offset - 0.05).abs() < 1e-3, "{report:?}");
    assert!(!report.is_clean());
    assert!(y.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    assert_eq!(y[10], 0.0);
    let (y, report) = condition(
        &with_dc,
        16000,
        1,
        ConditionConfig {
            remove_dc: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.dc_removed);
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
    assert!(mean.abs() < 1e-6, "mean after DC removal {mean}");
    // Clean input reports clean.
    let (_, report) = to_mono_16k(&sine(300.0, 0.5, 16000, 1600), 16000, 1).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn stereo_44k1_becomes_16k_mono_with_the_sine_preserved() {
    let n = 44100;
    let l = sine(1000.0, 0.6, 44100, n);
    let r = sine(1000.0, 0.2, 44100, n);
    let stereo: Vec<f32> = l.iter().zip(&r).flat_map(|(a, b)| [*a, *b]).collect();
    let (y, report) = to_mono_16k(&stereo, 44100, 2).unwrap();
    assert_eq!(y.len(), 16000);
    assert_eq!((report.input_frames, report.output_samples), (n, 16000));
    // Away from the edges: a 1 kHz sine of amplitude (0.6 + 0.2) / 2.
    let (amp, residual) = fit_sine(&y[800..15200], 1000.0, 16000);
    println!(
        "44.1 kHz stereo -> 16 kHz: 1 kHz amplitude {amp:.5} (want 0.4), residual {residual:.2e}"
    );
    assert!((amp - 0.4).abs() < 1e-3, "amplitude {amp}");
    assert!(residual < 1e-3, "residual {residual}");
    // A 10 kHz tone is above the new Nyquist: filtered out, not aliased to 6 kHz.
    let (y, _) = to_mono_16k(&sine(10000.0, 0.5, 44100, n), 44100, 1).unwrap();
    let rms = (y[800..15200]
        .iter()
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        / 14400.0)
        .sqrt();
    println!("10 kHz tone after 44.1 -> 16 kHz: rms {rms:.2e} (input 0.354)");
    assert!(rms < 3e-3, "aliasing: rms {rms}");
}

#[test]
fn streaming_resampler_equals_offline_for_any_chunking() {
    for (from, to) in [
        (44100, 16000),
        (48000, 16000),
        (8000, 16000),
        (22050, 16000),
    ] {
        let x: Vec<f32> = sine(440.0, 0.5, from, from as usize * 3 / 2 + 17)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.1 * ((i * 7919 % 101) as f32 / 101.0 - 0.5))
            .collect();
        let offline = resample(&x, from, to).unwrap();
        let expect_len = (x.len() as u64 * to as u64 + from as u64 / 2) / from as u64;
        assert_eq!(offline.len() as u64, expect_len, "{from}->{to}");
        assert_chunked_eq_offline_exact(
            || StreamResampler::new(from, to).unwrap(),
            &x,
            &offline,
            &[1, 37, 160, 1024, 4410, x.len()],
        );
    }
    assert!(StreamResampler::new(0, 16000).is_err());
    assert_eq!(resample(&[], 44100, 16000).unwrap().len(), 0);
    assert_eq!(resample(&[0.3], 8000, 16000).unwrap().len(), 2);
}

#[test]
fn empty_one_sample_nan_and_ten_minutes() {
    let mfcc = Mfcc::new(MfccConfig::default()).unwrap();
    // Empty.
    let (y, report) = to_mono_16k(&[], 44100, 2).unwrap();
    assert!(y.is_empty() && report.output_samples == 0);
    assert_eq!(mfcc.compute(&y).unwrap().size(), [0, 13]);
    // One sample.
    let (y, _) = to_mono_16k(&[0.5], 16000, 1).unwrap();
    assert_eq!(y.len(), 1);
    assert_eq!(mfcc.compute(&y).unwrap().size(), [0, 13]);
    let (y, _) = to_mono_16k(&[0.5, -0.5], 44100, 2).unwrap();
    assert!(y.len() <= 1);
    // Misaligned interleaving and zero channels/rate: errors.
    assert!(to_mono_16k(&[0.0; 3], 16000, 2).is_err());
    assert!(to_mono_16k(&[0.0; 3], 16000, 0).is_err());
    assert!(to_mono_16k(&[0.0; 3], 0, 1).is_err());
    // NaN goes through conditioning as zeros; straight into features it is an error.
    let mut x = vec![0.1f32; 1000];
    x[123] = f32::NAN;
    assert!(mfcc.compute(&x).is_err());
    let (y, report) = to_mono_16k(&x, 16000, 1).unwrap();
    assert_eq!(report.non_finite, 1);
    assert_eq!(mfcc.compute(&y).unwrap().size(), [4, 13]);
    // Ten minutes at 22.05 kHz (synthesized): conditioning and energy endpointing.
    let t = Instant::now();
    let n = 22050 * 600;
    let long: Vec<f32> = (0..n)
        .map(|i| {
            let s = i / 22050;
            if s % 10 < 6 {
                (0.3 * (2.0 * PI * 220.0 * i as f64 / 22050.0).sin()) as f32
            } else {
                0.0
            }
        })
        .collect();
    let (y, report) = to_mono_16k(&long, 22050, 1).unwrap();
    assert_eq!(y.len(), 16000 * 600);
    assert!(report.is_clean());
    let mut ep = Endpointer::new(
        EnergyVad::default(),
        EndpointConfig {
            max_speech_s: 30.0,
            ..Default::default()
        },
    )
    .unwrap();
    let events = run_chunked(&mut ep, &y, 16000).unwrap().events;
    let segs = tolk_models::audio::endpoint::segments(&events);
    println!(
        "ten minutes: {} segments, {:.1} s",
        segs.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(segs.len(), 60, "one segment per 6 s tone burst");
}

/// Files written by sox (WAVE_FORMAT_EXTENSIBLE headers for 24-bit stereo and float), read and
/// conditioned to a 16 kHz sine of the right amplitude. sox comes from deploy/host/setup.sh.
#[test]
fn sox_written_files_read_and_condition() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], f64); 3] = [
        ("s24.wav", &["-r", "44100", "-c", "2", "-b", "24"], 1000.0),
        (
            "u8.wav",
            &["-r", "8000", "-c", "1", "-b", "8", "-e", "unsigned-integer"],
            440.0,
        ),
        (
            "f32.wav",
            &["-r", "48000", "-c", "1", "-b", "32", "-e", "floating-point"],
            1000.0,
        ),
    ];
    for (name, args, freq) in cases {
        let path = dir.path().join(name);
        let status = std::process::Command::new("sox")
            .arg("-n")
            .args(args)
            .arg(&path)
            .args(["synth", "1", "sine", &freq.to_string(), "vol", "0.5"])
            .status()
            .expect("sox is needed (deploy/host/setup.sh installs it)");
        assert!(status.success());
        let w = read_wav(&path).unwrap();
        let (y, report) = to_mono_16k(&w.samples, w.sample_rate, w.channels).unwrap();
        assert_eq!(y.len(), 16000, "{name}");
        let (amp, residual) = fit_sine(&y[1000..15000], freq, 16000);
        println!(
            "sox {name}: {} Hz x{} -> 16 kHz, amplitude {amp:.4}, residual {residual:.1e}",
            w.sample_rate, w.channels
        );
        // 8-bit quantisation noise is about 1e-2 of a half-scale sine.
        let tol = if name == "u8.wav" { 2e-2 } else { 1e-3 };
        assert!((amp - 0.5).abs() < tol && residual < tol, "{name}");
        assert_eq!(report.non_finite, 0);
    }
}

#[test]
fn streaming_conditioner_equals_offline() {
    let n = 44100 + 77;
    let mut x: Vec<f32> = sine(700.0, 0.5, 44100, n)
        .iter()
        .flat_map(|&v| [v, 0.5 * v + 0.01])
        .collect();
    x[1001] = f32::NAN;
    x[5000] = 1.3;
    let (offline, report) = to_mono_16k(&x, 44100, 2).unwrap();
    let sizes = [1usize, 3, 441, 882, 10001];
    assert_chunked_eq_offline_exact(
        || StreamConditioner::new(44100, 2).unwrap(),
        &x,
        &offline,
        &sizes,
    );
    // The running report of one stream equals the offline one.
    let mut s = StreamConditioner::new(44100, 2).unwrap();
    for chunk in sizes {
        assert_eq!(run_chunked(&mut s, &x, chunk).unwrap(), offline);
        let r = s.report();
        assert_eq!(
            (r.non_finite, r.clipped, r.input_frames, r.output_samples),
            (
                report.non_finite,
                report.clipped,
                report.input_frames,
                report.output_samples
            )
        );
        assert!((r.dc_offset - report.dc_offset).abs() < 1e-6);
        s.reset();
    }
    // A stream cut inside a stereo frame is reported, not silently dropped.
    s.push(&[0.1, 0.2, 0.3]).unwrap();
    assert!(s.finish().is_err());
}
