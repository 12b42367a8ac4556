//! Measuring the translator as a visitor hears it: Whisper on the demo model's real output
//! speech, the visitor test sets of `tolk-train voices`, and the rule that test-only audio
//! (human recordings, MBROLA voices) never reaches a training command.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::read_wav;
use tolk_models::prompt::Lang;
use tolk_models::translator::Direction;
use tolk_training::corpus::manifest::{read_manifest, ReadOptions};
use tolk_training::eval::asr::find_python;
use tolk_training::eval::whisper::Whisper;
use tolk_training::metrics::chrf::sentence_chrf;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tolk_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .args(args)
        .output()
        .expect("running tolk-train")
}

/// The demo model's subtitles and speech for a sample, through the kiosk's own pipeline:
/// `tolk translate --events` (the kiosk binary, which `cargo test --workspace` builds beside
/// `tolk-train`; the trainer's crate does not link the runtime).
fn translate_sample(sample: &str, direction: Direction, out: &Path) -> (Vec<String>, Vec<f32>) {
    let tolk = Path::new(env!("CARGO_BIN_EXE_tolk-train")).with_file_name("tolk");
    assert!(
        tolk.exists(),
        "the kiosk binary {} is missing: `cargo build -p tolk-runtime --bin tolk`",
        tolk.display()
    );
    let run = Command::new(&tolk)
        .arg("translate")
        .arg(repo().join("models/demo/samples").join(sample))
        .arg("-o")
        .arg(out)
        .arg("--model")
        .arg(repo().join("models/demo"))
        .args(["--direction", direction.as_str(), "--events"])
        .output()
        .expect("running tolk translate");
    assert!(
        run.status.success(),
        "tolk translate failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let texts = String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "subtitle_final")
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect();
    let w = read_wav(out).unwrap();
    let (pcm, _) = to_mono_16k(&w.samples, w.sample_rate, w.channels).unwrap();
    (texts, pcm)
}

#[test]
fn whisper_hears_the_demo_models_english_output_and_french_speech() {
    let tmp = tempfile::tempdir().unwrap();
    let mut whisper = Whisper::new(find_python(None).unwrap()).unwrap();

    // fr -> en: the English speech the kiosk says is what its subtitles say.
    let wav = tmp.path().join("fr-to-en.wav");
    let (texts, _) = translate_sample("fr.wav", Direction::FrEn, &wav);
    assert_eq!(texts.len(), 2, "{texts:?}");
    let subtitles = texts.join(" ");
    let t = whisper
        .transcribe(
            std::slice::from_ref(&wav),
            Lang::En,
            std::slice::from_ref(&subtitles),
            &tmp.path().join("asr-en"),
        )
        .unwrap();
    let c = sentence_chrf(&t.normalized[0], &t.references[0]).score;
    println!(
        "English output: subtitles {:?}, Whisper {:?}, chrF {c:.1}",
        t.references[0], t.normalized[0]
    );
    assert!(
        c >= 60.0,
        "Whisper heard {:?} for {:?}",
        t.raw[0],
        subtitles
    );

    // French: the recognizer itself, on a clear French voice (SVOX Pico).
    let pico = tmp.path().join("pico.wav");
    let text = "Où est la plage la plus proche ?";
    let st = Command::new("pico2wave")
        .args(["-l", "fr-FR", "-w"])
        .arg(&pico)
        .arg(text)
        .status()
        .expect("pico2wave (Debian libttspico-utils) must be installed: deploy/host/setup.sh");
    assert!(st.success());
    let t = whisper
        .transcribe(
            std::slice::from_ref(&pico),
            Lang::Fr,
            &[text.to_string()],
            &tmp.path().join("asr-fr"),
        )
        .unwrap();
    let c = sentence_chrf(&t.normalized[0], &t.references[0]).score;
    println!("French (Pico): Whisper {:?}, chrF {c:.1}", t.normalized[0]);
    assert!(c >= 80.0, "Whisper heard {:?}", t.raw[0]);
    assert!(whisper.name.as_deref().unwrap().contains("language fr"));

    // en -> fr: the demo model's French speech gets a French transcript (its intelligibility
    // is what the README's visitor table reports; here the path is checked end to end).
    let wav = tmp.path().join("en-to-fr.wav");
    let (texts, pcm) = translate_sample("en.wav", Direction::EnFr, &wav);
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(!pcm.is_empty(), "no French speech");
    let t = whisper
        .transcribe(
            std::slice::from_ref(&wav),
            Lang::Fr,
            &texts,
            &tmp.path().join("asr-fr-out"),
        )
        .unwrap();
    println!(
        "French output: subtitles {:?}, Whisper {:?}",
        t.references, t.normalized
    );
    assert_eq!(t.references.len(), 2);
    assert!(!t.raw[0].is_empty(), "no transcript of the French output");
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn voices_sets_are_well_formed_and_test_only_audio_never_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let sentences = root.join("sentences.jsonl");
    std::fs::write(
        &sentences,
        "{\"id\":\"test-000001\",\"language\":\"en\",\"text\":\"Where is the nearest beach?\",\
         \"target_language\":\"fr\",\"target_text\":\"Où est la plage la plus proche ?\"}\n\
         {\"id\":\"test-000002\",\"language\":\"en\",\"text\":\"The museum opens at nine.\",\
         \"target_language\":\"fr\",\"target_text\":\"Le musée ouvre à neuf heures.\"}\n",
    )
    .unwrap();
    let sets = root.join("sets");
    let o = tolk_train(&[
        "voices",
        "--sentences",
        &s(&sentences),
        "--out",
        &s(&sets),
        "--set",
        "all",
        "--limit",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut human_hashes = HashSet::new();
    let mut human_ids = HashSet::new();
    for set in tolk_training::corpus::voices::SETS {
        let m = read_manifest(
            sets.join(format!("{set}.jsonl")),
            ReadOptions { check_audio: true },
        )
        .unwrap();
        let per_pair = if *set == "piper" { 1 } else { 2 };
        let want = if set.starts_with("human") {
            2
        } else {
            2 * per_pair
        };
        assert_eq!(m.entries.len(), want, "{set}");
        for e in &m.entries {
            assert!(e.id.starts_with(set), "{set}: {}", e.id);
            assert!(e.target_text.as_deref().is_some_and(|t| !t.is_empty()));
            assert_ne!(Some(e.language.as_str()), e.target_language.as_deref());
            let w = read_wav(m.resolve(e.audio.as_deref().unwrap())).unwrap();
            assert_eq!((w.sample_rate, w.channels), (16_000, 1), "{}", e.id);
            let secs = w.samples.len() as f64 / 16_000.0;
            assert!(secs > 0.2, "{}: {secs} s", e.id);
            assert!((e.duration.unwrap() - secs).abs() < 1e-3, "{}", e.id);
            let peak = w.samples.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!(peak > 0.01, "{}: silent", e.id);
            assert_eq!(
                e.test_only,
                set.starts_with("human") || *set == "mbrola",
                "{}",
                e.id
            );
            if set.starts_with("human") {
                let src = PathBuf::from(e.source_file.as_deref().unwrap());
                assert_eq!(e.source_sha256.as_deref(), Some(sha256(&src).as_str()));
                human_hashes.insert(e.source_sha256.clone().unwrap());
                human_hashes.insert(sha256(&m.resolve(e.audio.as_deref().unwrap())));
                human_ids.insert(e.id.clone());
            }
            if set.starts_with("room") || set.contains("db") {
                assert!(e.augmentation.is_some(), "{}", e.id);
            }
            if *set == "kokoro" {
                // "kokoro PACK speed S": one of the five Japanese voice packs, speed 0.9-1.1.
                let desc = e.voice.as_deref().unwrap_or_default();
                let words: Vec<&str> = desc.split(' ').collect();
                let packs = [
                    "jf_alpha",
                    "jf_gongitsune",
                    "jf_nezumi",
                    "jf_tebukuro",
                    "jm_kumo",
                ];
                assert!(
                    words.len() == 4 && words[0] == "kokoro" && words[2] == "speed",
                    "{}: {desc:?}",
                    e.id
                );
                assert!(packs.contains(&words[1]), "{}: {desc:?}", e.id);
                let speed: f64 = words[3].parse().unwrap();
                assert!((0.9..=1.1).contains(&speed), "{}: {desc:?}", e.id);
            }
        }
    }
    assert_eq!(human_ids.len(), 4);

    // Every training command that takes audio refuses the human set.
    let human = sets.join("human-fr.jsonl");
    let o = tolk_train(&[
        "augment",
        "--manifest",
        &s(&human),
        "--out",
        &s(&root.join("aug.jsonl")),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("test-only"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!root.join("aug.jsonl").exists());
    let m = read_manifest(&human, ReadOptions::default()).unwrap();
    let err = tolk_training::corpus::manifest::refuse_test_only(&m, "training").unwrap_err();
    assert!(err.to_string().contains("test-only"), "{err}");

    // The text-only set holds every text pair the human recordings say (no audio, not
    // test-only); synth-corpus refuses the human set itself as extra pairs.
    let o = tolk_train(&["voices", "--out", &s(&sets), "--set", "human-texts"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let texts = read_manifest(sets.join("human-texts.jsonl"), ReadOptions::default()).unwrap();
    assert!(texts.entries.len() > 700, "{}", texts.entries.len());
    assert!(texts
        .entries
        .iter()
        .all(|e| e.audio.is_none() && !e.test_only));
    let text_pairs: HashSet<(String, String)> = texts
        .entries
        .iter()
        .map(|e| (e.text.clone(), e.target_text.clone().unwrap()))
        .collect();
    let mut human_pairs = Vec::new();
    for set in ["human-fr", "human-en"] {
        let m = read_manifest(sets.join(format!("{set}.jsonl")), ReadOptions::default()).unwrap();
        for e in &m.entries {
            let (t, tt) = (e.text.clone(), e.target_text.clone().unwrap());
            let pair = if e.language == "en" { (t, tt) } else { (tt, t) };
            assert!(text_pairs.contains(&pair), "{set} {}: {pair:?}", e.id);
            human_pairs.push(pair);
        }
    }
    let o = tolk_train(&[
        "synth-corpus",
        "--out",
        &s(&root.join("refused")),
        "--seed",
        "1",
        "--pairs",
        "3",
        "--dev",
        "1",
        "--test",
        "1",
        "--mono",
        "1",
        "--voices",
        "en-us,fr-fr",
        "--extra-pairs",
        &s(&human),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("test_only"));
    // Those pairs alone as extra pairs (a few, to keep the synthesis short).
    let extra = root.join("extra.jsonl");
    let lines: Vec<String> = texts
        .entries
        .iter()
        .filter(|e| human_pairs.contains(&(e.text.clone(), e.target_text.clone().unwrap())))
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(&extra, lines.join("\n") + "\n").unwrap();

    // A training corpus made the way the demo's is, with the human texts, holds none of the
    // human ids or audio, and does hold their texts.
    let corpus = root.join("corpus");
    let o = tolk_train(&[
        "synth-corpus",
        "--out",
        &s(&corpus),
        "--seed",
        "1",
        "--pairs",
        "3",
        "--dev",
        "1",
        "--test",
        "1",
        "--mono",
        "1",
        "--voices",
        "en-us,fr-fr,pico:fr-FR",
        "--extra-pairs",
        &s(&extra),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let train = read_manifest(corpus.join("train.jsonl"), ReadOptions::default()).unwrap();
    for pair in &human_pairs {
        assert!(
            train
                .entries
                .iter()
                .any(|e| (&e.text, e.target_text.as_ref()) == (&pair.0, Some(&pair.1))),
            "{pair:?} not in the training split"
        );
    }
    let mut checked = 0;
    for f in std::fs::read_dir(&corpus).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            let m = read_manifest(&p, ReadOptions::default()).unwrap();
            for e in &m.entries {
                assert!(!human_ids.contains(&e.id) && !e.test_only);
                for a in e.audio.iter().chain(e.target_audio.iter()) {
                    assert!(!human_hashes.contains(&sha256(&m.resolve(a))));
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}
