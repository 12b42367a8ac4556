//! `tolk-train eval` end to end on a tiny random translator folder (`tolk_training::eval::tiny`)
//! with a 3-entry espeak-ng manifest, its bad inputs, and the PocketSphinx recognizer behind
//! ASR-BLEU on espeak-ng English.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Device, Kind};
use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
use tolk_models::translator::Translator;
use tolk_training::eval::asr::{find_python, normalize_for_asr_bleu, PocketSphinx};
use tolk_training::eval::tiny::{write_random_translator, TinyTranslatorSpec};
use tolk_training::metrics::wer::corpus_wer;
use tolk_training::units::{write_units, UnitsTable};

const PAIRS: &[(&str, &str)] = &[
    ("Where is the train station?", "Où est la gare ?"),
    (
        "Platform three is on the left.",
        "Le quai trois est à gauche.",
    ),
    ("Thank you, have a nice day.", "Merci, bonne journée."),
];

/// espeak-ng speech of `text` as 16-bit 16 kHz mono at `path`.
fn speak(text: &str, voice: &str, path: &Path) {
    let raw = path.with_extension("raw.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng must be installed (deploy/host/setup.sh)");
    assert!(st.success());
    let w = read_wav(&raw).unwrap();
    let (s, _) = to_mono_16k(&w.samples, w.sample_rate, w.channels).unwrap();
    write_wav(path, &s, 16_000, 1, WavFormat::Pcm16).unwrap();
    std::fs::remove_file(raw).unwrap();
}

fn tolk_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .args(args)
        .output()
        .expect("running tolk-train")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The model folder, a manifest of en->fr pairs with audio, and their units file.
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = root.join("model");
    write_random_translator(&model, &TinyTranslatorSpec::default()).unwrap();
    let tr = Translator::load(&model, Device::Cpu, Kind::Float).unwrap();
    let audio = root.join("audio");
    std::fs::create_dir_all(&audio).unwrap();
    let mut lines = String::new();
    let mut table = UnitsTable::new(16, "mfcc+kmeans16");
    for (i, (en, fr)) in PAIRS.iter().enumerate() {
        let (a, b) = (format!("audio/{i}-en.wav"), format!("audio/{i}-fr.wav"));
        speak(en, "en-us", &root.join(&a));
        speak(fr, "fr", &root.join(&b));
        for p in [&a, &b] {
            let w = read_wav(root.join(p)).unwrap();
            table
                .insert(p.as_str(), tr.extract_units(&w.samples).unwrap())
                .unwrap();
        }
        let e = serde_json::json!({
            "id": format!("utt{i}"), "language": "en", "text": en, "audio": a,
            "target_language": "fr", "target_text": fr, "target_audio": b,
        });
        lines.push_str(&format!("{e}\n"));
    }
    let manifest = root.join("test.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    let units = root.join("units.jsonl");
    write_units(&units, &table).unwrap();
    (model, manifest, units)
}

fn finite_in(v: &serde_json::Value, key: &str, lo: f64, hi: f64) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is missing or not a number: {v}"));
    assert!(x.is_finite() && x >= lo && x <= hi + 1e-9, "{key} = {x}");
    x
}

#[test]
fn eval_end_to_end_and_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (model, manifest, units) = setup(root);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // fr-en (entries reversed), chain of modality, English speech: every figure incl. ASR-BLEU.
    let out = root.join("report-fr-en");
    let o = tolk_train(&[
        "eval",
        "--model",
        &s(&model),
        "--manifest",
        &s(&manifest),
        "--units",
        &s(&units),
        "--direction",
        "fr-en",
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| S2TT BLEU (text phase) |") && md.contains("ASR-BLEU"),
        "{md}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["utterances"], 3);
    assert_eq!(r["mode"], "chain-of-modality");
    let bleu = finite_in(&r, "bleu", 0.0, 100.0);
    finite_in(&r, "meteor", 0.0, 1.0);
    let uer = finite_in(&r, "unit_error_rate", 0.0, 10.0);
    let mcd = finite_in(&r, "mcd", 0.0, 1000.0);
    let asr = finite_in(&r, "asr_bleu", 0.0, 100.0);
    let ceiling = finite_in(&r, "asr_bleu_reference", 0.0, 100.0);
    finite_in(&r, "asr_chrf", 0.0, 100.0);
    finite_in(&r, "asr_chrf_reference", 0.0, 100.0);
    assert!(
        r["asr_recognizer"]
            .as_str()
            .unwrap()
            .starts_with("whisper-base"),
        "{}",
        r["asr_recognizer"]
    );
    assert_eq!(r["no_speech"], 0);
    for u in r["per_utterance"].as_array().unwrap() {
        let c = u["confidence"].as_f64().unwrap();
        assert!(c > 0.0 && c <= 1.0, "confidence {c}");
    }
    println!(
        "fr-en: BLEU {bleu:.2} UER {uer:.3} MCD {mcd:.2} ASR-BLEU {asr:.2} ceiling {ceiling:.2}"
    );
    // The reversed entries: references are the English texts.
    let refs = std::fs::read_to_string(out.join("refs.txt")).unwrap();
    assert_eq!(
        refs.lines().collect::<Vec<_>>(),
        PAIRS.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("hyps.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert_eq!(
        std::fs::read_to_string(out.join("asr_refs.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    for i in 0..3 {
        let w = read_wav(out.join(format!("wavs/utt{i}-rev.wav"))).unwrap();
        assert_eq!((w.sample_rate, w.channels), (16_000, 1));
        assert!(!w.samples.is_empty() && w.samples.iter().all(|x| x.is_finite()));
    }

    // en-fr chain of modality, French speech: Whisper in French and DNSMOS of both sides.
    let out_fr = root.join("report-en-fr-com");
    let o = tolk_train(&[
        "eval",
        "--model",
        &s(&model),
        "--manifest",
        &s(&manifest),
        "--units",
        &s(&units),
        "--direction",
        "en-fr",
        "--limit",
        "2",
        "--dnsmos",
        "--out",
        &s(&out_fr),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_fr.join("report.json")).unwrap())
            .unwrap();
    finite_in(&r, "asr_bleu", 0.0, 100.0);
    finite_in(&r, "asr_chrf_reference", 0.0, 100.0);
    assert!(r["asr_recognizer"]
        .as_str()
        .unwrap()
        .contains("language fr"));
    finite_in(&r, "dnsmos_reference", 1.0, 5.0);
    // PocketSphinx cannot judge French speech: refused before any decoding.
    let o = tolk_train(&[
        "eval",
        "--model",
        &s(&model),
        "--manifest",
        &s(&manifest),
        "--units",
        &s(&units),
        "--direction",
        "en-fr",
        "--asr",
        "pocketsphinx",
        "--out",
        &s(&root.join("refused")),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("English only"), "{}", stderr(&o));

    // en-fr text only, 2 entries: no speech figures.
    let out2 = root.join("report-en-fr");
    let o = tolk_train(&[
        "eval",
        "--model",
        &s(&model),
        "--manifest",
        &s(&manifest),
        "--units",
        &s(&units),
        "--direction",
        "en-fr",
        "--mode",
        "s2tt",
        "--limit",
        "2",
        "--out",
        &s(&out2),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["utterances"], 2);
    finite_in(&r, "bleu", 0.0, 100.0);
    assert!(r["mcd"].is_null() && r["asr_bleu"].is_null() && r["unit_error_rate"].is_null());

    // Bad inputs: clear errors.
    let run = |model: &Path, units: &Path| {
        tolk_train(&[
            "eval",
            "--model",
            &s(model),
            "--manifest",
            &s(&manifest),
            "--units",
            &s(units),
            "--direction",
            "en-fr",
            "--out",
            &s(&root.join("bad")),
        ])
    };
    // A unit id outside the file's vocabulary.
    let bad_units = root.join("bad-units.jsonl");
    let text = std::fs::read_to_string(&units).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = lines[1].replacen("\"units\":[", "\"units\":[16,", 1);
    std::fs::write(&bad_units, lines.join("\n") + "\n").unwrap();
    let o = run(&model, &bad_units);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unit 16") && stderr(&o).contains("16 units"),
        "{}",
        stderr(&o)
    );
    // A units file made for another unit count.
    let other = root.join("other-units.jsonl");
    std::fs::write(
        &other,
        text.replacen("\"num_units\":16", "\"num_units\":32", 1),
    )
    .unwrap();
    let o = run(&model, &other);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("num_units 32"), "{}", stderr(&o));
    // A model file missing.
    std::fs::remove_file(model.join("vocoder-fr/model.safetensors")).unwrap();
    let o = run(&model, &units);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("vocoder-fr"), "{}", stderr(&o));
}

/// PocketSphinx on espeak-ng English: the recognizer behind ASR-BLEU works. Robotic espeak-ng
/// speech is hard for PocketSphinx's en-us model: measured WER 0.625 on these sentences
/// (pocketsphinx 5.1.1, espeak-ng en-us at 150 wpm), so the bound is 0.75; a broken pipeline
/// (wrong sample rate, silence, garbage) gives about 1.0.
#[test]
fn pocketsphinx_recognizes_espeak_english() {
    let sentences = [
        "Where is the train station?",
        "The next bus leaves at ten past four.",
        "A ticket to the airport costs twelve euros.",
        "Thank you, have a nice day.",
        "Platform three is on the left.",
        "Can you help me find the exit?",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let wavs: Vec<PathBuf> = sentences
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p = tmp.path().join(format!("{i}.wav"));
            speak(t, "en-us", &p);
            p
        })
        .collect();
    let mut ps = PocketSphinx::new(find_python(None).unwrap()).unwrap();
    let hyps = ps.transcribe(&wavs, &tmp.path().join("asr")).unwrap();
    let refs: Vec<String> = sentences
        .iter()
        .map(|s| normalize_for_asr_bleu(s))
        .collect();
    let hyps: Vec<String> = hyps.iter().map(|s| normalize_for_asr_bleu(s)).collect();
    for (h, r) in hyps.iter().zip(&refs) {
        println!("{r:45} -> {h}");
    }
    let wer = corpus_wer(&hyps, &refs).unwrap();
    println!(
        "{} on espeak-ng en-us: {wer}",
        ps.name.as_deref().unwrap_or("?")
    );
    assert!(wer.wer < 0.75, "{wer}");

    // A Python without pocketsphinx is a clear error.
    let e = PocketSphinx::new(PathBuf::from("/usr/bin/python3"))
        .map(|_| ())
        .err();
    if let Some(e) = e {
        assert!(e.to_string().contains("pocketsphinx"), "{e}");
    }
}
