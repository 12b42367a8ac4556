//! Whisper-encoder units on the training side: `tolk-train units --extractor whisper` (offline
//! and `--streamed`, the kiosk's own unit stream) on espeak-ng speech, and `units-probe` across
//! two voice families. The encoder is the real Whisper base folder that `make reference`
//! converts (`$TOLK_REFERENCE_DIR/whisper/model`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_models::translator::{Direction, Translator, UnitsSpec};
use tolk_models::units::{KMeans, UnitExtractor, Whisper, WhisperFeaturizer, WhisperLoadOptions};
use tolk_tests::reference_dir;
use tolk_training::corpus::manifest::{write_manifest, ManifestEntry};
use tolk_training::package::{package, PackageArgs};
use tolk_training::units::{read_units, run_probe, run_units, ExtractorKind, ProbeArgs, UnitsArgs};

const SENTENCES: [&str; 4] = [
    "Where is the train station?",
    "The museum opens at nine.",
    "I would like a coffee, please.",
    "How much is a ticket to the airport?",
];

fn whisper_dir() -> PathBuf {
    reference_dir("whisper").join("model")
}

/// The sentences spoken by one espeak-ng voice into `root/NAME.jsonl` + `root/NAME/*.wav`.
fn render(root: &Path, name: &str, voice: &str, speed: &str) -> PathBuf {
    std::fs::create_dir_all(root.join(name)).unwrap();
    let mut entries = Vec::new();
    for (i, text) in SENTENCES.iter().enumerate() {
        let raw = root.join(format!("{name}-raw{i}.wav"));
        let st = Command::new("espeak-ng")
            .args(["-v", voice, "-s", speed, "-w"])
            .arg(&raw)
            .arg(text)
            .status()
            .expect("espeak-ng must be installed (deploy/host/setup.sh)");
        assert!(st.success());
        let w = read_wav(&raw).unwrap();
        let (s16, _) = to_mono_16k(&w.samples, w.sample_rate, w.channels).unwrap();
        let rel = format!("{name}/{i}.wav");
        write_wav(root.join(&rel), &s16, 16000, 1, WavFormat::Pcm16).unwrap();
        let mut e = ManifestEntry::new(format!("{name}-{i}"), "en", *text);
        e.audio = Some(rel);
        entries.push(e);
    }
    let manifest = root.join(format!("{name}.jsonl"));
    write_manifest(&manifest, &entries).unwrap();
    manifest
}

fn units_args(manifest: &Path, out: &Path, streamed: bool) -> UnitsArgs {
    UnitsArgs {
        manifests: vec![manifest.to_path_buf()],
        extractor: ExtractorKind::Whisper,
        hubert: None,
        whisper: Some(whisper_dir()),
        layer: Some(5),
        streamed,
        kmeans: None,
        fit_kmeans: Some(20),
        fit_frames: 2000,
        fit_steps: 50,
        seed: 0,
        save_kmeans: Some(out.with_extension("safetensors")),
        device: "cpu".into(),
        jobs: None,
        reuse: None,
        out: out.to_path_buf(),
        quiet: true,
    }
}

/// Offline units are the extractor's; `--streamed` units are exactly what the kiosk's unit stream
/// gives for the same file (20 ms pushes), and differ from offline only in a minority of frames.
#[test]
fn whisper_units_offline_and_as_the_kiosk_streams_them() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = render(dir.path(), "us", "en-us", "150");
    let off_path = dir.path().join("offline.jsonl");
    let s = run_units(&units_args(&manifest, &off_path, false)).unwrap();
    assert_eq!(s.extracted, SENTENCES.len());
    assert!(
        s.extractor.starts_with("whisper:model:layer5+kmeans20"),
        "{}",
        s.extractor
    );
    assert!(
        (s.units_per_audio_second - 50.0).abs() < 1.0,
        "{}",
        s.units_per_audio_second
    );
    let offline = read_units(&off_path).unwrap();

    // The same centroids, streamed.
    let mut a = units_args(&manifest, &dir.path().join("streamed.jsonl"), true);
    a.kmeans = Some(off_path.with_extension("safetensors"));
    a.fit_kmeans = None;
    a.save_kmeans = None;
    run_units(&a).unwrap();
    let streamed = read_units(&dir.path().join("streamed.jsonl")).unwrap();

    let model = Whisper::load(&whisper_dir(), 5, WhisperLoadOptions::default()).unwrap();
    let km = KMeans::load(
        &off_path.with_extension("safetensors"),
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .unwrap();
    let ex = Arc::new(
        UnitExtractor::new(Arc::new(WhisperFeaturizer::new(Arc::new(model))), km).unwrap(),
    );
    let (mut same, mut total) = (0usize, 0usize);
    for i in 0..SENTENCES.len() {
        let key = format!("us/{i}.wav");
        let w = read_wav(dir.path().join(&key)).unwrap();
        let mut stream = ex.stream(ex.featurizer().stream_options());
        let kiosk = tolk_models::stream::run_chunked(&mut stream, &w.samples, 320).unwrap();
        let got = streamed.get(&key).unwrap();
        assert_eq!(
            got,
            &kiosk[..],
            "{key}: --streamed must be the kiosk's units"
        );
        let off = offline.get(&key).unwrap();
        assert_eq!(off, &ex.extract(&w.samples).unwrap()[..], "{key}");
        assert_eq!(got.len(), off.len(), "{key}");
        same += got.iter().zip(off).filter(|(a, b)| a == b).count();
        total += got.len();
    }
    let pct = 100.0 * same as f64 / total as f64;
    println!("whisper L5 K20: streamed units equal offline on {pct:.1} % of {total} frames");
    assert!(pct >= 70.0, "{pct}");

    // A folder without weights is an error naming the path.
    let mut bad = units_args(&manifest, &dir.path().join("bad.jsonl"), false);
    bad.whisper = Some(dir.path().join("no-whisper-here"));
    let e = format!("{:#}", run_units(&bad).unwrap_err());
    assert!(e.contains("no-whisper-here"), "{e}");
    bad.whisper = None;
    let e = format!("{:#}", run_units(&bad).unwrap_err());
    assert!(e.contains("--whisper DIR"), "{e}");
}

/// The probe across two espeak-ng voice families: Whisper units find the same sentence in the
/// other voice far above chance (1 in 4 here), and the report covers each layer asked for.
#[test]
fn units_probe_compares_layers_across_voice_families() {
    let dir = tempfile::tempdir().unwrap();
    let a = render(dir.path(), "us", "en-us", "150");
    let b = render(dir.path(), "gb", "en-gb+f3", "175");
    let args = ProbeArgs {
        manifests: vec![a.clone(), b.clone()],
        extractor: ExtractorKind::Whisper,
        whisper: Some(whisper_dir()),
        hubert: None,
        layers: vec![1, 5],
        clusters: 20,
        fit_frames: 2000,
        seed: 0,
        streamed: false,
        device: "cpu".into(),
        out: Some(dir.path().join("probe.json")),
    };
    let r = run_probe(&args).unwrap();
    print!("{r}");
    assert_eq!(r.utterances, 2 * SENTENCES.len());
    assert_eq!(r.families, vec!["us".to_string(), "gb".to_string()]);
    assert!((r.chance_pct - 25.0).abs() < 1e-9);
    assert_eq!(
        r.layers.iter().map(|l| l.layer).collect::<Vec<_>>(),
        vec![1, 5]
    );
    let l5 = &r.layers[1];
    assert!(l5.retrieval_pct >= 75.0, "{l5:?}");
    assert!(l5.same_text_distance < l5.other_text_distance, "{l5:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("probe.json")).unwrap())
            .unwrap();
    assert_eq!(json["layers"].as_array().unwrap().len(), 2);
    // One family is nothing to compare across.
    let e = run_probe(&ProbeArgs {
        manifests: vec![a],
        ..args
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least two"), "{e}");
}

/// `tolk-train package --extractor whisper`: the encoder goes into the translator folder, the
/// manifest names it, and the packaged translator extracts exactly the units `tolk-train units`
/// wrote for the same audio (so a model trained on them hears what it was trained on).
#[test]
fn a_translator_packaged_with_whisper_units_extracts_the_units_it_was_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = render(dir.path(), "us", "en-us", "150");
    let units_path = dir.path().join("units.jsonl");
    let spec = TinyTranslatorSpec::default();
    let mut a = units_args(&manifest, &units_path, false);
    a.fit_kmeans = Some(spec.num_units as i64);
    run_units(&a).unwrap();
    let table = read_units(&units_path).unwrap();

    // A random translator stands in for the SFT output and the vocoders.
    let rand = dir.path().join("rand");
    write_random_translator(&rand, &spec).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rand.join("tolk-model.json")).unwrap()).unwrap();
    let sft = serde_json::json!({
        "strategy": m["strategy"],
        "directions": m["directions"],
        "num_units": m["num_units"],
        "dedup_source_units": m["dedup_source_units"],
        "dedup_target_units": m["dedup_target_units"],
    });
    std::fs::write(rand.join("llm/sft.json"), sft.to_string()).unwrap();
    let vocoders: Vec<String> = m["vocoders"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(lang, d)| format!("{lang}={}", rand.join(d.as_str().unwrap()).display()))
        .collect();
    let out = dir.path().join("translator");
    let args = PackageArgs {
        llm: rand.join("llm"),
        kmeans: units_path.with_extension("safetensors"),
        extractor: ExtractorKind::Whisper,
        encoder: Some(whisper_dir()),
        layer: Some(5),
        vocoders,
        out: out.clone(),
        dtype: "f32".into(),
        max_text_tokens: spec.max_text_tokens,
        max_target_units: spec.max_target_units,
    };
    let summary = package(&args).unwrap();
    assert!(summary
        .files
        .contains_key("units/whisper/model.safetensors"));
    // Only the layers below 5, in float16 (lossless for these weights): the folder carries
    // what the extractor reads and no more.
    let packed = out.join("units/whisper/model.safetensors");
    let stored = tch::Tensor::read_safetensors(&packed).unwrap();
    assert!(stored.iter().all(|(_, t)| t.kind() == tch::Kind::Half));
    assert!(stored
        .iter()
        .any(|(n, _)| n.starts_with("encoder.layers.4.")));
    assert!(!stored
        .iter()
        .any(|(n, _)| n.starts_with("encoder.layers.5.") || n.starts_with("encoder.layer_norm.")));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = size(&packed) / size(&whisper_dir().join("model.safetensors"));
    assert!(
        (0.35..0.45).contains(&ratio),
        "packed / source size {ratio}"
    );
    let tr = Translator::load(&out, tch::Device::Cpu, tch::Kind::Float).unwrap();
    assert_eq!(
        tr.manifest().units,
        UnitsSpec::Whisper {
            whisper: "units/whisper".into(),
            layer: 5,
            kmeans: "units/kmeans.safetensors".into(),
        }
    );
    for i in 0..SENTENCES.len() {
        let key = format!("us/{i}.wav");
        let w = read_wav(dir.path().join(&key)).unwrap();
        assert_eq!(
            &tr.extract_units(&w.samples).unwrap()[..],
            table.get(&key).unwrap(),
            "{key}"
        );
    }
    let w = read_wav(dir.path().join("us/0.wav")).unwrap();
    tr.translate_audio(&w.samples, Direction::EnFr, tr.default_mode())
        .unwrap();

    // Bad input names what is wrong.
    let mut bad = args.clone();
    bad.encoder = None;
    let e = package(&bad).unwrap_err().to_string();
    assert!(e.contains("--extractor whisper needs --encoder"), "{e}");
    bad.encoder = Some(dir.path().join("us"));
    let e = package(&bad).unwrap_err().to_string();
    assert!(e.contains("no config.json"), "{e}");
    bad.extractor = ExtractorKind::Mfcc;
    let e = package(&bad).unwrap_err().to_string();
    assert!(e.contains("only for --extractor hubert or whisper"), "{e}");
    // A folder naming an encoder whose weights went missing does not load, naming the file.
    std::fs::remove_file(out.join("units/whisper/model.safetensors")).unwrap();
    let e = Translator::load(&out, tch::Device::Cpu, tch::Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}
