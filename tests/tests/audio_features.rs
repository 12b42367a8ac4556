//! Kaldi filterbank and MFCC vs torchaudio.compliance.kaldi (reference from
//! tests/reference/audio_features.py), streaming vs offline, and a CPU real-time factor.

use std::time::Instant;

use tch::{Kind, Tensor};
use tolk_models::audio::features::{Fbank, FbankConfig, Mfcc, MfccConfig, WindowType};
use tolk_models::stream::testing::assert_chunked_eq_offline;
use tolk_models::stream::Streaming;
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

const TOLERANCE: f64 = 1e-3;

enum Extractor {
    Fbank(Fbank),
    Mfcc(Mfcc),
}

impl Extractor {
    fn compute(&self, x: &[f32]) -> Tensor {
        match self {
            Extractor::Fbank(f) => f.compute(x).unwrap(),
            Extractor::Mfcc(m) => m.compute(x).unwrap(),
        }
    }

    /// Asserts chunked streaming equals offline bit for bit at `sizes`.
    fn assert_streaming_exact(&self, name: &str, x: &[f32], sizes: &[usize]) {
        let offline = self.compute(x);
        let exact = |chunk: usize, got: &Tensor, want: &Tensor| {
            assert!(
                got.equal(want),
                "{name}: chunk {chunk} differs from offline (max {:.3e})",
                max_abs_diff(got, want)
            )
        };
        match self {
            Extractor::Fbank(f) => {
                assert_chunked_eq_offline(|| f.stream(), x, &offline, sizes, exact)
            }
            Extractor::Mfcc(m) => {
                assert_chunked_eq_offline(|| m.stream(), x, &offline, sizes, exact)
            }
        }
    }
}

/// The configs of audio_features.py, by name.
fn extractor(name: &str) -> Extractor {
    let fb = FbankConfig::default();
    match name {
        "fbank_default" => Extractor::Fbank(Fbank::new(fb).unwrap()),
        "mfcc_default" => Extractor::Mfcc(Mfcc::new(MfccConfig::default()).unwrap()),
        "fbank_80" => Extractor::Fbank(
            Fbank::new(FbankConfig {
                num_mel_bins: 80,
                ..fb
            })
            .unwrap(),
        ),
        "fbank_energy" => Extractor::Fbank(
            Fbank::new(FbankConfig {
                use_energy: true,
                ..fb
            })
            .unwrap(),
        ),
        "mfcc_energy_hamming" => Extractor::Mfcc(
            Mfcc::new(MfccConfig {
                fbank: FbankConfig {
                    use_energy: true,
                    window_type: WindowType::Hamming,
                    ..fb
                },
                ..MfccConfig::default()
            })
            .unwrap(),
        ),
        other => panic!("audio_features reference has unknown config {other}"),
    }
}

fn waveform() -> (Vec<f32>, std::collections::HashMap<String, Tensor>) {
    let dir = reference_dir("audio_features");
    let t = read_tensors(&dir.join("reference.safetensors"));
    let w = Vec::<f32>::try_from(&t["waveform"]).unwrap();
    (w, t)
}

#[test]
fn kaldi_features_match_torchaudio() {
    let (wave, reference) = waveform();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir("audio_features").join("reference.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<String> = meta["configs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(names.len() >= 5);
    for name in names {
        // `name`: torchaudio on float64 input (Kaldi's arithmetic, no f32 rounding).
        let expected = &reference[&name];
        let got = extractor(&name).compute(&wave);
        assert_eq!(got.size(), expected.size(), "{name}: shape");
        let diff = max_abs_diff(&got, expected);
        // `name_f32`: torchaudio on float32 input. Its own rounding shifts quiet mel bins by up
        // to ~0.2 from the exact result, so each element may differ from ours by that gap plus
        // the tolerance, and no more.
        let f32_ref = &reference[&format!("{name}_f32")];
        let f32_diff = max_abs_diff(&got, f32_ref);
        let gap = (f32_ref.to_kind(Kind::Double) - expected.to_kind(Kind::Double)).abs();
        let excess = ((got.to_kind(Kind::Double) - f32_ref.to_kind(Kind::Double)).abs() - gap)
            .max()
            .double_value(&[]);
        let within = (got.to_kind(Kind::Double) - f32_ref.to_kind(Kind::Double))
            .abs()
            .le(TOLERANCE)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        println!(
            "{name}: {:?}, worst |tolk - torchaudio(f64)| = {diff:.3e}; vs torchaudio(f32): \
             worst {f32_diff:.3e}, {:.2} % of values within {TOLERANCE:e}, worst excess over \
             torchaudio's own f32-vs-f64 gap {excess:.3e}",
            got.size(),
            100.0 * within
        );
        assert!(diff <= TOLERANCE, "{name}: worst difference {diff:.3e}");
        assert!(excess <= TOLERANCE, "{name}: f32 excess {excess:.3e}");
    }
}

#[test]
fn streaming_features_equal_offline_exactly() {
    let (wave, _) = waveform();
    let wave = &wave[..48_000];
    for name in ["fbank_default", "mfcc_default", "fbank_energy"] {
        let ex = extractor(name);
        ex.assert_streaming_exact(name, wave, &[1, 100, 160, 320, 512, 641, 16000]);
        println!("{name}: streaming == offline for chunks 1..16000");
    }
}

#[test]
fn features_real_time_factor_cpu() {
    let (wave, _) = waveform();
    let seconds = wave.len() as f64 / 16000.0;
    let mfcc = Mfcc::new(MfccConfig::default()).unwrap();
    let fbank = Fbank::new(FbankConfig {
        num_mel_bins: 80,
        ..FbankConfig::default()
    })
    .unwrap();
    let t = Instant::now();
    let m = mfcc.compute(&wave).unwrap();
    let rtf_mfcc = t.elapsed().as_secs_f64() / seconds;
    let t = Instant::now();
    let mut s = mfcc.stream();
    let n: i64 = wave.chunks(320).map(|c| s.push(c).unwrap().size()[0]).sum();
    let rtf_stream = t.elapsed().as_secs_f64() / seconds;
    let t = Instant::now();
    let f = fbank.compute(&wave).unwrap();
    let rtf_fbank = t.elapsed().as_secs_f64() / seconds;
    assert_eq!(n, m.size()[0]);
    assert_eq!(f.size()[0], n);
    println!(
        "CPU RTF over {seconds:.1} s ({} build): MFCC offline {rtf_mfcc:.4}, MFCC streaming \
         (20 ms pushes) {rtf_stream:.4}, fbank-80 offline {rtf_fbank:.4}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert!(
        rtf_mfcc < 1.0 && rtf_stream < 1.0,
        "features slower than real time"
    );
}
