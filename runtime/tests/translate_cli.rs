//! `tolk translate`, `tolk bench` and `--tracing` end to end on a tiny random translator.

use std::process::Command;

use tolk_models::audio::wav::read_wav;
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_runtime::events::{Event, EventRecord};

fn espeak(path: &std::path::Path, text: &str) {
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(path)
        .arg(text)
        .status()
        .expect("espeak-ng is installed");
    assert!(st.success());
}

#[test]
fn translate_writes_a_finite_16k_wav_through_the_streaming_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_random_translator(&model, &TinyTranslatorSpec::default()).unwrap();
    // Two sentences with a pause: two utterances, two translations.
    let a = dir.path().join("a.wav");
    let b = dir.path().join("b.wav");
    espeak(&a, "Where is the train station?");
    espeak(&b, "Thank you, have a nice day.");
    let (wa, wb) = (read_wav(&a).unwrap(), read_wav(&b).unwrap());
    let mut samples = wa.samples.clone();
    samples.extend(vec![0.0; wa.sample_rate as usize]);
    samples.extend(&wb.samples);
    samples.extend(vec![0.0; wa.sample_rate as usize / 2]);
    let input = dir.path().join("in.wav");
    tolk_models::audio::wav::write_wav(
        &input,
        &samples,
        wa.sample_rate,
        1,
        tolk_models::audio::wav::WavFormat::Pcm16,
    )
    .unwrap();
    let out = dir.path().join("out.wav");
    let trace = dir.path().join("trace.json");
    let o = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .arg("translate")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(&model)
        .args([
            "--direction",
            "en-fr",
            "--mode",
            "com",
            "--events",
            "--tracing",
        ])
        .arg(&trace)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let events: Vec<Event> = stdout
        .lines()
        .map(|l| EventRecord::from_json(l).unwrap().event)
        .collect();
    let finals = events
        .iter()
        .filter(|e| matches!(e, Event::SubtitleFinal { .. }))
        .count();
    assert_eq!(finals, 2, "{stdout}");
    assert!(events.iter().any(|e| matches!(e, Event::AudioChunk { .. })));
    let w = read_wav(&out).unwrap();
    assert_eq!(w.sample_rate, 16_000);
    assert_eq!(w.channels, 1);
    assert!(!w.samples.is_empty());
    assert!(w.samples.iter().all(|x| x.is_finite()));
    let chunk_samples: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::AudioChunk { samples, .. } => Some(*samples),
            _ => None,
        })
        .sum();
    assert_eq!(w.samples.len() as u64, chunk_samples);
    // The Chrome trace holds the pipeline stages.
    let t = std::fs::read_to_string(&trace).unwrap();
    for span in [
        "unit_extract",
        "decode",
        "vocoder",
        "utterance",
        "translate",
    ] {
        assert!(
            t.contains(&format!("\"{span}\"")),
            "no {span} span in the trace"
        );
    }

    // Plain output: one line of text per utterance.
    let o = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .arg("translate")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);

    // tolk bench on the same file: a JSON summary on the last line.
    let o = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .arg("bench")
        .arg("--model")
        .arg(&model)
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{stdout}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["streaming"]["rtf"]["n"], 1);
    assert!(j["streaming"]["first_audio_s"]["p95"].as_f64().unwrap() > 0.0);
    assert_eq!(j["utterances"][0]["streaming_utterances"], 2);

    // A missing model folder is a clear error.
    let o = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .arg("translate")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .arg("--model")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
}

/// `tolk translate --events` on the demo model: each final subtitle carries the decoder's
/// confidence, and a minimum above it turns the utterance into `not_understood` with no speech.
#[test]
fn low_confidence_utterances_are_not_understood_and_not_spoken() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |min: &str, out: &std::path::Path| -> Vec<Event> {
        let o = Command::new(env!("CARGO_BIN_EXE_tolk"))
            .arg("translate")
            .arg(repo.join("models/demo/samples/fr.wav"))
            .arg("-o")
            .arg(out)
            .arg("--model")
            .arg(repo.join("models/demo"))
            .args(["--direction", "fr-en", "--events", "--min-confidence", min])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| EventRecord::from_json(l).unwrap().event)
            .collect()
    };
    let open = run("0", &dir.path().join("open.wav"));
    let confidences: Vec<f64> = open
        .iter()
        .filter_map(|e| match e {
            Event::SubtitleFinal { confidence, .. } => Some(*confidence),
            _ => None,
        })
        .collect();
    assert_eq!(confidences.len(), 2, "{open:?}");
    assert!(
        confidences.iter().all(|c| *c > 0.0 && *c <= 1.0),
        "{confidences:?}"
    );
    assert!(open.iter().any(|e| matches!(e, Event::AudioChunk { .. })));

    // Just above the more confident of the two: both refused, nothing spoken.
    let min = confidences.iter().cloned().fold(0.0, f64::max) + 1e-6;
    let closed = run(&format!("{min}"), &dir.path().join("closed.wav"));
    let refused: Vec<(String, f64)> = closed
        .iter()
        .filter_map(|e| match e {
            Event::NotUnderstood {
                text, confidence, ..
            } => Some((text.clone(), *confidence)),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 2, "{closed:?}");
    assert!(refused.iter().all(|(t, c)| !t.is_empty() && *c < min));
    assert!(!closed
        .iter()
        .any(|e| matches!(e, Event::SubtitleFinal { .. } | Event::AudioChunk { .. })));
    assert!(read_wav(dir.path().join("closed.wav"))
        .unwrap()
        .samples
        .is_empty());

    // Out of range: a clear error.
    let o = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .arg("translate")
        .arg(repo.join("models/demo/samples/fr.wav"))
        .arg("-o")
        .arg(dir.path().join("bad.wav"))
        .arg("--model")
        .arg(repo.join("models/demo"))
        .args(["--direction", "fr-en", "--min-confidence", "1.5"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("minimum confidence"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
