//! Silero VAD (the real silero_vad.jit from silero-vad==6.2.3) vs the Python package
//! (tests/reference/silero.py): per-window probabilities and speech segments; streaming vs
//! offline; the energy fallback; CPU real-time factor.
//!
//! Segments: the reference runs the package's own `get_speech_timestamps` with `speech_pad_ms=0`
//! for several configs; Tolk's endpointer implements the same rules causally, so the segments
//! must be equal to the sample. Python's segments come from its own probabilities, ours from
//! ours (equal within 1e-4), so a probability sitting within 1e-4 of a threshold could in
//! principle flip a decision; the test would then fail and say so.

use std::time::Instant;

use tolk_models::audio::endpoint::{
    segments, EndpointConfig, EndpointDetector, EndpointOutput, Endpointer, SpeechEvent,
};
use tolk_models::audio::vad::{probabilities, EnergyVad, SileroVad, VoiceActivity, WINDOW};
use tolk_models::stream::testing::assert_chunked_eq_offline_exact;
use tolk_models::stream::Streaming;
use tolk_tests::{read_tensors, reference_dir};

const PROB_TOLERANCE: f64 = 1e-4;

struct Reference {
    vad: SileroVad,
    audio: Vec<f32>,
    probs: Vec<f32>,
    meta: serde_json::Value,
}

fn reference() -> Reference {
    let dir = reference_dir("silero");
    let t = read_tensors(&dir.join("reference.safetensors"));
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    Reference {
        vad: SileroVad::load(dir.join("silero_vad.jit")).unwrap(),
        audio: Vec::<f32>::try_from(&t["audio"]).unwrap(),
        probs: Vec::<f32>::try_from(&t["probs"]).unwrap(),
        meta,
    }
}

/// get_speech_timestamps keyword arguments -> our options (same defaults).
fn config(kwargs: &serde_json::Value) -> EndpointConfig {
    let mut c = EndpointConfig::default();
    for (k, v) in kwargs.as_object().unwrap() {
        let v = v.as_f64().unwrap();
        match k.as_str() {
            "threshold" => c.threshold = v as f32,
            "min_speech_duration_ms" => c.min_speech_ms = v,
            "min_silence_duration_ms" => c.min_silence_ms = v,
            "max_speech_duration_s" => c.max_speech_s = v,
            other => panic!("silero reference uses unsupported option {other}"),
        }
    }
    c
}

fn detect(probs: &[f32], n: u64, cfg: EndpointConfig) -> Vec<SpeechEvent> {
    let mut d = EndpointDetector::new(cfg).unwrap();
    let mut ev = Vec::new();
    for (i, &p) in probs.iter().enumerate() {
        d.push_probability(p, n.min((i as u64 + 1) * WINDOW as u64), &mut ev);
    }
    d.finish(n, &mut ev);
    ev
}

fn python_segments(meta: &serde_json::Value, name: &str) -> Vec<(u64, u64)> {
    meta["configs"][name]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        .collect()
}

#[test]
fn silero_probabilities_and_segments_match_python() {
    let r = reference();
    let mut stream = r.vad.stream().unwrap();
    let t = Instant::now();
    let probs = probabilities(&mut stream, &r.audio).unwrap();
    let seconds = r.audio.len() as f64 / 16000.0;
    let rtf = t.elapsed().as_secs_f64() / seconds;
    assert_eq!(probs.len(), r.probs.len(), "window count");
    let worst = probs
        .iter()
        .zip(&r.probs)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max);
    // Per-window inference is tiny: libtorch's intra-op threads only add synchronisation (the
    // Python package sets torch.set_num_threads(1) on import). Time it on one thread too; this
    // changes the thread count of this test process only.
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let t = Instant::now();
    let probs_1t = probabilities(&mut stream, &r.audio).unwrap();
    let rtf_1t = t.elapsed().as_secs_f64() / seconds;
    assert_eq!(probs_1t.len(), probs.len());
    println!(
        "silero: {} windows over {seconds:.1} s, worst |tolk - python| = {worst:.3e}; CPU RTF \
         {rtf:.4} ({threads} threads), {rtf_1t:.4} (1 thread)",
        probs.len()
    );
    assert!(
        worst <= PROB_TOLERANCE,
        "worst probability difference {worst:.3e}"
    );
    // Sanity on the data itself: the speech was detected somewhere, silence somewhere.
    assert!(probs.iter().any(|&p| p > 0.9) && probs.iter().any(|&p| p < 0.1));

    let n = r.audio.len() as u64;
    let configs = r.meta["configs"].as_object().unwrap();
    assert!(configs.len() >= 4);
    for (name, c) in configs {
        let expected = python_segments(&r.meta, name);
        let got = segments(&detect(&probs, n, config(&c["kwargs"])));
        println!(
            "endpoints {name}: {} segments, python {}",
            got.len(),
            expected.len()
        );
        assert_eq!(
            got, expected,
            "{name}: segments differ from get_speech_timestamps"
        );
    }
}

#[test]
fn silero_streaming_equals_offline() {
    let r = reference();
    let audio = &r.audio[..r.audio.len().min(16000 * 6 + 123)];
    let offline = probabilities(&mut r.vad.stream().unwrap(), audio).unwrap();
    let cfg = EndpointConfig {
        max_speech_s: 2.0,
        ..Default::default()
    };
    let offline_events = detect(&offline, audio.len() as u64, cfg);
    assert!(!offline_events.is_empty());
    let want = EndpointOutput {
        probabilities: offline.clone(),
        events: offline_events.clone(),
    };
    // Every Start is emitted before its End, no overlaps.
    let segs = segments(&offline_events);
    assert!(segs.windows(2).all(|w| w[0].1 <= w[1].0));
    assert_chunked_eq_offline_exact(
        || Endpointer::new(r.vad.stream().unwrap(), cfg).unwrap(),
        audio,
        &want,
        &[1, 160, 511, 512, 513, 1000, 4097],
    );
    println!(
        "silero streaming == offline (chunks 1..4097, fresh, reused and reset): {} events",
        offline_events.len()
    );
}

#[test]
fn energy_fallback_finds_the_speech() {
    let r = reference();
    let mut energy = EnergyVad::default();
    let p_energy = probabilities(&mut energy, &r.audio).unwrap();
    let agree = p_energy
        .iter()
        .zip(&r.probs)
        .filter(|(a, b)| (**a >= 0.5) == (**b >= 0.5))
        .count() as f64
        / p_energy.len() as f64;
    let n = r.audio.len() as u64;
    let segs = segments(&detect(&p_energy, n, EndpointConfig::default()));
    let silero = python_segments(&r.meta, "default");
    // Every Silero segment overlaps an energy segment.
    let covered = silero
        .iter()
        .filter(|(s, e)| segs.iter().any(|(a, b)| a < e && s < b))
        .count();
    println!(
        "energy VAD: window agreement with Silero {:.1} %, {} segments, covers {covered}/{} Silero segments",
        100.0 * agree,
        segs.len(),
        silero.len()
    );
    assert!(agree >= 0.8, "agreement {agree}");
    assert_eq!(covered, silero.len());
    // Digital silence and steady low noise: no speech.
    let mut e = EnergyVad::default();
    assert!(probabilities(&mut e, &vec![0.0; 32000])
        .unwrap()
        .iter()
        .all(|&p| p < 0.5));
    let mut s = 1u64;
    let noise: Vec<f32> = (0..48000)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.01
        })
        .collect();
    let p = probabilities(&mut e, &noise).unwrap();
    assert!(p.iter().all(|&p| p < 0.5), "noise detected as speech");
}

#[test]
fn bad_vad_input_is_an_error_not_a_panic() {
    let r = reference();
    let mut s = r.vad.stream().unwrap();
    assert!(s.window_probability(&[0.0; 100]).is_err());
    let mut w = vec![0.0f32; WINDOW];
    w[3] = f32::NAN;
    assert!(s.window_probability(&w).is_err());
    let mut ep = Endpointer::new(EnergyVad::default(), EndpointConfig::default()).unwrap();
    assert!(ep.push(&w).is_err());
    // Empty stream and a single sample.
    assert_eq!(probabilities(&mut s, &[]).unwrap().len(), 0);
    assert_eq!(probabilities(&mut s, &[0.5]).unwrap().len(), 1);
    let mut ep = Endpointer::new(r.vad.stream().unwrap(), EndpointConfig::default()).unwrap();
    assert!(ep.push(&[]).unwrap().events.is_empty());
    assert!(ep.finish().unwrap().events.is_empty());
    // Missing or corrupt model file: typed error.
    assert!(SileroVad::load("/nonexistent/silero_vad.jit").is_err());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jit");
    std::fs::write(&bad, b"not a torchscript archive").unwrap();
    let err = SileroVad::load(&bad)
        .err()
        .expect("corrupt model must fail");
    println!("corrupt model: {err}");
}
