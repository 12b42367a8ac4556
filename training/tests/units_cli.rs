//! `tolk-train units` and `tolk-train tokenizer` end to end on a tiny espeak-ng corpus: every
//! audio file gets 50 Hz units with the frame count its length implies, runs are deterministic
//! with the seed, saved centroids reproduce the fitted run, corrupt or missing audio is skipped
//! and counted, and the tokenizer round-trips the corpus' French.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::read_wav;
use tolk_training::corpus::manifest::{read_manifest, ReadOptions};
use tolk_training::units::read_units;

fn tolk_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .args(args)
        .output()
        .expect("running tolk-train")
}

fn ok(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "tolk-train failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary on stdout")
}

/// A tiny corpus plus `extra.jsonl` naming a corrupt WAV and a missing one.
fn corpus(dir: &Path) {
    let d = dir.to_str().unwrap();
    ok(tolk_train(&[
        "synth-corpus",
        "--out",
        d,
        "--seed",
        "1",
        "--pairs",
        "6",
        "--dev",
        "2",
        "--test",
        "2",
        "--mono",
        "2",
    ]));
    std::fs::write(
        dir.join("bad.wav"),
        b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not a header",
    )
    .unwrap();
    std::fs::write(
        dir.join("extra.jsonl"),
        "{\"id\":\"x1\",\"language\":\"en\",\"text\":\"broken\",\"audio\":\"bad.wav\"}\n\
         {\"id\":\"x2\",\"language\":\"en\",\"text\":\"gone\",\"audio\":\"missing.wav\"}\n",
    )
    .unwrap();
}

/// A fitted MFCC run over `manifests`.
fn units_args(manifests: &[&str], out: &str, seed: &str, km: &str) -> Vec<String> {
    let mut a = vec!["units".to_string()];
    for m in manifests {
        a.extend(["--manifest".to_string(), m.to_string()]);
    }
    let rest = [
        "--extractor",
        "mfcc",
        "--fit-kmeans",
        "16",
        "--fit-frames",
        "3000",
        "--seed",
        seed,
        "--save-kmeans",
        km,
        "--out",
        out,
        "--quiet",
    ];
    a.extend(rest.iter().map(|s| s.to_string()));
    a
}

fn run_strings(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    tolk_train(&refs)
}

#[test]
fn units_and_tokenizer_on_a_tiny_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    corpus(dir);
    let train = dir.join("train.jsonl");
    let mono = dir.join("mono-fr.jsonl");
    let extra = dir.join("extra.jsonl");
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (train_s, mono_s, extra_s) = (
        train.to_str().unwrap(),
        mono.to_str().unwrap(),
        extra.to_str().unwrap(),
    );

    // Fitted run, with a corrupt and a missing file among the inputs.
    let (out1, km1) = (p("u1.jsonl"), p("km1.safetensors"));
    let run = run_strings(&units_args(&[train_s, mono_s, extra_s], &out1, "7", &km1));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    let summary = ok(run);
    println!("{summary:#}");
    assert_eq!(summary["skipped"], 2, "{summary}");
    assert!(
        stderr.contains("bad.wav"),
        "no warning naming bad.wav: {stderr}"
    );
    assert!(stderr.contains("missing.wav"), "{stderr}");
    let skipped: BTreeSet<&str> = summary["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(skipped, BTreeSet::from(["bad.wav", "missing.wav"]));

    // Every audio file of the manifests has units, as many as its 50 Hz frames.
    let table = read_units(Path::new(&out1)).unwrap();
    assert_eq!(table.num_units, 16);
    assert!(table.extractor.contains("mfcc"), "{}", table.extractor);
    let mut keys = BTreeSet::new();
    for m in [&train, &mono] {
        let manifest = read_manifest(m, ReadOptions::default()).unwrap();
        for e in &manifest.entries {
            for a in [e.audio.as_ref(), e.target_audio.as_ref()]
                .into_iter()
                .flatten()
            {
                keys.insert(a.clone());
                let wav = read_wav(manifest.resolve(a)).unwrap();
                let (mono16, _) = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels).unwrap();
                // 25 ms windows every 20 ms.
                let expected = (mono16.len() - 400) / 320 + 1;
                let units = table.get(a).unwrap_or_else(|| panic!("no units for {a}"));
                assert_eq!(units.len(), expected, "{a}");
                let per_s = units.len() as f64 / wav.duration_s();
                assert!((48.0..=50.5).contains(&per_s), "{a}: {per_s} units/s");
                assert!(units.iter().all(|&u| u < 16));
            }
        }
    }
    assert_eq!(table.len(), keys.len());
    assert_eq!(summary["extracted"], keys.len());
    assert_eq!(summary["frames"], table.total_units());
    // The units use the codebook, not one cluster.
    let used: BTreeSet<u32> = table.iter().flat_map(|(_, u)| u.iter().copied()).collect();
    assert!(used.len() >= 8, "only {} of 16 units used", used.len());

    // Same seed: identical units and centroids; another seed: other centroids.
    let (out2, km2) = (p("u2.jsonl"), p("km2.safetensors"));
    ok(run_strings(&units_args(
        &[train_s, mono_s, extra_s],
        &out2,
        "7",
        &km2,
    )));
    let same = |a: &str, b: &str| std::fs::read(a).unwrap() == std::fs::read(b).unwrap();
    assert!(same(&out1, &out2), "same seed, different units");
    assert!(same(&km1, &km2), "same seed, different centroids");
    let (out3, km3) = (p("u3.jsonl"), p("km3.safetensors"));
    ok(run_strings(&units_args(
        &[train_s, mono_s, extra_s],
        &out3,
        "8",
        &km3,
    )));
    assert!(!same(&km1, &km3), "the seed does not change the centroids");

    // Saved centroids reproduce the fitted run's units.
    let out4 = p("u4.jsonl");
    let s4 = ok(tolk_train(&[
        "units",
        "--manifest",
        train_s,
        "--manifest",
        mono_s,
        "--extractor",
        "mfcc",
        "--kmeans",
        &km1,
        "--out",
        &out4,
        "--quiet",
        "--jobs",
        "1",
    ]));
    assert_eq!(s4["fit_frames"], 0);
    assert!(
        read_units(Path::new(&out4)).unwrap() == table,
        "loaded centroids give other units"
    );

    // --reuse: the train manifest's units come from u4 (checked on one file), mono's are
    // extracted; the result equals extracting everything.
    let only_train = p("u-train.jsonl");
    ok(tolk_train(&[
        "units",
        "--manifest",
        train_s,
        "--extractor",
        "mfcc",
        "--kmeans",
        &km1,
        "--out",
        &only_train,
        "--quiet",
    ]));
    let reuse_out = p("u-reused.jsonl");
    let sr = ok(tolk_train(&[
        "units",
        "--manifest",
        train_s,
        "--manifest",
        mono_s,
        "--extractor",
        "mfcc",
        "--kmeans",
        &km1,
        "--reuse",
        &only_train,
        "--out",
        &reuse_out,
        "--quiet",
    ]));
    let train_files = read_units(Path::new(&only_train)).unwrap().len();
    assert_eq!(sr["reused"], train_files, "{sr}");
    assert_eq!(sr["extracted"], table.len(), "{sr}");
    assert!(read_units(Path::new(&reuse_out)).unwrap() == table);
    // Units of other centroids are refused, naming the file that disagrees.
    let other = tolk_train(&[
        "units",
        "--manifest",
        train_s,
        "--extractor",
        "mfcc",
        "--kmeans",
        &km3,
        "--reuse",
        &only_train,
        "--out",
        &p("u-bad.jsonl"),
        "--quiet",
    ]);
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("other centroids") && err.contains("u-train.jsonl"),
        "{err}"
    );
    assert!(!Path::new(&p("u-bad.jsonl")).exists());

    // Neither centroids nor a fit asked for: a clear error.
    let bad = tolk_train(&[
        "units",
        "--manifest",
        train_s,
        "--extractor",
        "mfcc",
        "--out",
        &p("u5.jsonl"),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--fit-kmeans"));

    // Tokenizer on the same manifests: vocabulary size honoured, French round-trips.
    let tok_path = p("tokenizer.json");
    let ts = ok(tolk_train(&[
        "tokenizer",
        "--manifest",
        train_s,
        "--manifest",
        mono_s,
        "--vocab-size",
        "280",
        "--min-frequency",
        "1",
        "--out",
        &tok_path,
    ]));
    assert_eq!(ts["vocab_size"], 280);
    let tok = tokenizers::Tokenizer::from_file(&tok_path).unwrap();
    assert_eq!(tok.get_vocab_size(true), 280);
    let manifest = read_manifest(&train, ReadOptions::default()).unwrap();
    let mut accents = 0;
    for e in &manifest.entries {
        for t in [Some(&e.text), e.target_text.as_ref()]
            .into_iter()
            .flatten()
        {
            accents += t.chars().filter(|c| !c.is_ascii()).count();
            let ids = tok.encode(t.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(tok.decode(&ids, false).unwrap(), *t);
        }
    }
    assert!(accents > 0, "the corpus sample has no accented letters");
    let text = "Où est l'hôpital ? Ça coûte douze euros, très bien.";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

/// `--extractor hubert` on a tiny random-weight HuBERT folder (no pretrained weights here): the
/// units follow the model's own frame count, and a layer beyond the model is a clear error.
#[test]
fn units_with_a_tiny_random_hubert() {
    use tolk_models::units::{Hubert, HubertConfig};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = dir.join("hubert-tiny");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        r#"{"model_type": "hubert", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [16, 16, 16],
            "conv_stride": [5, 8, 8], "conv_kernel": [10, 8, 8],
            "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}"#,
    )
    .unwrap();
    let cfg = HubertConfig::from_file(&model.join("config.json")).unwrap();
    tch::manual_seed(0);
    let tensors: Vec<(String, tch::Tensor)> = Hubert::tensor_specs(&cfg, 2, false)
        .into_iter()
        .map(|s| {
            let t =
                tch::Tensor::randn(s.shape.as_slice(), (tch::Kind::Float, tch::Device::Cpu)) * 0.2;
            (s.name, t)
        })
        .collect();
    tolk_models::checkpoint::save_safetensors(&model.join("model.safetensors"), &tensors).unwrap();

    // Three WAVs of different lengths and rates (one 8 kHz stereo, conditioned to 16 kHz mono).
    let mut lines = String::new();
    let mut lengths = Vec::new();
    for (i, (secs, rate, ch)) in [(0.7, 16_000u32, 1u16), (1.3, 16_000, 1), (1.0, 8_000, 2)]
        .into_iter()
        .enumerate()
    {
        let n = (secs * rate as f64) as usize;
        let samples: Vec<f32> = (0..n * ch as usize)
            .map(|j| 0.3 * ((j / ch as usize) as f32 * (0.05 + 0.02 * i as f32)).sin())
            .collect();
        let name = format!("a{i}.wav");
        tolk_models::audio::wav::write_wav(
            dir.join(&name),
            &samples,
            rate,
            ch,
            tolk_models::audio::wav::WavFormat::Pcm16,
        )
        .unwrap();
        lines.push_str(&format!(
            "{{\"id\":\"u{i}\",\"language\":\"en\",\"text\":\"t\",\"audio\":\"{name}\"}}\n"
        ));
        lengths.push((name, (secs * 16_000.0).round() as usize));
    }
    let manifest = dir.join("m.jsonl");
    std::fs::write(&manifest, lines).unwrap();
    let out = dir.join("u.jsonl");
    let run = |layer: &str| {
        tolk_train(&[
            "units",
            "--manifest",
            manifest.to_str().unwrap(),
            "--extractor",
            "hubert",
            "--hubert",
            model.to_str().unwrap(),
            "--layer",
            layer,
            "--fit-kmeans",
            "4",
            "--fit-frames",
            "500",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ])
    };
    let summary = ok(run("2"));
    println!("{summary:#}");
    let table = read_units(&out).unwrap();
    assert_eq!(table.num_units, 4);
    assert!(
        table.extractor.starts_with("hubert:hubert-tiny:layer2"),
        "{}",
        table.extractor
    );
    for (name, samples) in &lengths {
        let units = table
            .get(name)
            .unwrap_or_else(|| panic!("no units for {name}"));
        assert_eq!(
            units.len() as i64,
            cfg.num_frames(*samples as i64),
            "{name}"
        );
    }
    let bad = run("5");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("layer 5"), "{err}");
}
