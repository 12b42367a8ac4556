//! End to end on the built-in demo model (`models/demo`, committed): held-out sentences of the
//! synthetic corpus's test split (`models/demo/heldout.jsonl`; never seen in training), spoken
//! by espeak-ng at test time with the voice, speed and pitch the corpus used, joined with
//! silence and pushed through the streaming kiosk pipeline (VAD, endpointing, streaming unit
//! extraction, chain-of-modality decoding, chunked vocoding), in both directions; then the same
//! with white noise under everything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tolk_models::audio::resample::resample;
use tolk_models::audio::wav::read_wav;
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_runtime::audio::{AudioSource, Pacing, RingOptions};
use tolk_runtime::events::Collect;
use tolk_runtime::metrics::Metrics;
use tolk_runtime::pipeline::{FeedEnd, MemoryOut, Pipeline, PipelineOptions, VadKind};

const SR: u32 = 16_000;
/// Sentence-level exact matches (case and punctuation aside) the test demands per direction.
/// Through this live path the demo model gets 6/12 in both directions (so did the model before
/// noise training; offline on the whole clips it got 5/12 and 6/12). It got 3/12 and 4/12 when the front end handed it 200 ms of pre-roll
/// and cut at the endpoint, a framing it never saw in training (the corpus clips start at the
/// first sample of speech and end with about 0.3 s of silence); the front end now refines the
/// endpointer's boundaries and adds `[vad] lead_ms` / `tail_ms` (README's demo section,
/// `runtime/src/pipeline/frontend.rs`). 5/12 leaves one sentence of margin for another
/// machine's floating point (decoding is greedy) and still fails the old framing.
const MIN_EXACT: f64 = 0.4;

/// White noise under the whole input of the noisy run (RMS, dBFS), and what that run demands.
/// The demo model, trained with noisy, padded copies of its corpus (`tolk-train augment`), gets
/// 5/12 and 4/12 here; the same recipe without them got 2/12 and 2/12 (README, "Noise and
/// silence"). 3/12 keeps a sentence of margin and fails a model that never heard noise.
const NOISE_DBFS: f64 = -60.0;
const MIN_EXACT_NOISY: f64 = 0.25;

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// espeak-ng with a corpus voice description (`en-us s134 p69`), at 16 kHz.
fn speak(text: &str, voice: &str, dir: &Path) -> Vec<f32> {
    let mut parts = voice.split_whitespace();
    let name = parts.next().unwrap();
    let mut cmd = Command::new("espeak-ng");
    cmd.args(["-v", name]);
    for p in parts {
        let (flag, value) = p.split_at(1);
        cmd.args([format!("-{flag}"), value.to_string()]);
    }
    let wav = dir.join("s.wav");
    let st = cmd
        .arg("-w")
        .arg(&wav)
        .arg("--")
        .arg(text)
        .status()
        .expect("espeak-ng is installed (deploy/host/setup.sh)");
    assert!(st.success());
    let a = read_wav(&wav).unwrap();
    resample(&a.samples, a.sample_rate, SR).unwrap()
}

fn normalise(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Adds seeded white noise at `dbfs` (RMS relative to full scale) to `audio`.
fn add_white_noise(audio: &mut [f32], dbfs: f64, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sigma = 10f64.powf(dbfs / 20.0);
    for x in audio.iter_mut() {
        // Box-Muller.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        *x = (*x as f64 + sigma * g).clamp(-1.0, 1.0) as f32;
    }
}

/// The held-out sentences of `direction` through the live pipeline, with white noise at
/// `noise_dbfs` over everything when given; demands `min_exact` of them exact.
fn run_direction(
    tr: &Arc<Translator>,
    direction: Direction,
    noise_dbfs: Option<f64>,
    min_exact: f64,
) {
    let t = tempfile::tempdir().unwrap();
    let held: Vec<serde_json::Value> = std::fs::read_to_string(demo_dir().join("heldout.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (src, src_voice, tgt) = match direction {
        Direction::EnFr => ("text", "voice", "target_text"),
        Direction::FrEn => ("target_text", "target_voice", "text"),
    };
    let mut audio = vec![0.0f32; SR as usize / 2];
    for h in &held {
        audio.extend(speak(
            h[src].as_str().unwrap(),
            h[src_voice].as_str().unwrap(),
            t.path(),
        ));
        audio.extend(std::iter::repeat_n(0.0, SR as usize));
    }
    if let Some(dbfs) = noise_dbfs {
        add_white_noise(&mut audio, dbfs, 7);
    }
    let seconds = audio.len() as f64 / SR as f64;
    let mut opts = PipelineOptions::new(
        direction,
        Mode::ChainOfModality,
        &tolk_config::VadConfig::default(),
    );
    // The kiosk's defaults (pre-roll search, lead, tail) are what this test measures.
    assert_eq!(
        (opts.pre_roll_ms, opts.lead_ms, opts.tail_ms),
        (200, 10, 300)
    );
    // Audio arrives faster than real time here: keep every utterance (a live kiosk drops the
    // oldest beyond the limit instead; tests/pipeline.rs checks that policy).
    opts.queue_limit = usize::MAX;
    let mut p = Pipeline::start(
        tr.clone(),
        VadKind::energy(),
        opts,
        MemoryOut::default(),
        Arc::new(Collect::default()),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let mut source = AudioSource::memory(audio, SR, Pacing::Fast, RingOptions::default());
    assert_eq!(
        p.feed(&mut source, &AtomicBool::new(false)).unwrap(),
        FeedEnd::Finished
    );
    let mut sum = p.finish(true);
    sum.reports.sort_by_key(|r| r.id);
    assert!(sum.failed.is_empty(), "{:?}", sum.failed);
    assert_eq!(
        sum.reports.len(),
        held.len(),
        "one translation per sentence ({seconds:.1} s of audio)"
    );
    let mut exact = 0;
    for (r, h) in sum.reports.iter().zip(&held) {
        let want = h[tgt].as_str().unwrap();
        let ok = normalise(&r.text) == normalise(want);
        exact += ok as usize;
        println!(
            "{direction} {} {:>5} | {} | ref: {want} (first audio {:.0} ms)",
            h["id"].as_str().unwrap(),
            if ok { "exact" } else { "" },
            r.text,
            r.first_audio_s.unwrap_or(f64::NAN) * 1e3
        );
        assert!(!r.units.is_empty(), "no speech units for {}", h["id"]);
        assert!(r.samples_out > 0);
    }
    let frac = exact as f64 / held.len() as f64;
    println!(
        "{direction} (noise {noise_dbfs:?} dBFS): {exact}/{} exact",
        held.len()
    );
    assert!(
        frac >= min_exact,
        "{direction} (noise {noise_dbfs:?} dBFS): {exact}/{} exact matches",
        held.len()
    );
    let pcm = sum.output.samples();
    assert_eq!(tr.sample_rate(), SR as i64);
    assert!(pcm.iter().all(|x| x.is_finite()));
    let rms = (pcm.iter().map(|x| x * x).sum::<f32>() / pcm.len() as f32).sqrt();
    assert!(rms > 0.01, "translated speech is silent (RMS {rms})");
}

#[test]
fn held_out_sentences_both_directions() {
    let tr = Arc::new(Translator::load(&demo_dir(), tch::Device::Cpu, tch::Kind::Float).unwrap());
    run_direction(&tr, Direction::EnFr, None, MIN_EXACT);
    run_direction(&tr, Direction::FrEn, None, MIN_EXACT);
}

#[test]
fn held_out_sentences_in_white_noise() {
    let tr = Arc::new(Translator::load(&demo_dir(), tch::Device::Cpu, tch::Kind::Float).unwrap());
    run_direction(&tr, Direction::EnFr, Some(NOISE_DBFS), MIN_EXACT_NOISY);
    run_direction(&tr, Direction::FrEn, Some(NOISE_DBFS), MIN_EXACT_NOISY);
}
