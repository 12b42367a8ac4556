//! The SFT loop end to end through `tolk-train sft`: a short chain-of-modality run on a toy
//! corpus whose loss falls, exact resume, divergence handling and recipe errors.
//!
//! The toy corpus: kiosk sentences from the grammar (`synth-corpus --no-audio`), with "speech
//! units" derived from the characters of each sentence (a learnable stand-in for audio, so the
//! test needs no synthesis and runs in seconds).

use std::path::{Path, PathBuf};
use std::process::Command;

use tolk_models::checkpoint::read_safetensors;
use tolk_training::corpus::manifest::{read_manifest, write_manifest, ReadOptions};
use tolk_training::corpus::{build_corpus, CorpusConfig};
use tolk_training::units::file::{write_units, UnitsTable};

const NUM_UNITS: u32 = 50;

fn tolk_train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tolk-train"))
}

/// Units of a sentence: each character becomes one or two units.
fn fake_units(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for b in text.bytes() {
        let u = (b as u32 * 7) % NUM_UNITS;
        out.push(u);
        if b % 3 == 0 {
            out.push(u);
        }
    }
    out
}

/// Writes train/dev manifests, units and a tokenizer into `dir`.
fn toy_data(dir: &Path) {
    let mut cfg = CorpusConfig::new(dir.join("text"), 7);
    cfg.train = 120;
    cfg.dev = 12;
    cfg.test = 4;
    cfg.mono = 0;
    cfg.audio = false;
    build_corpus(&cfg).unwrap();
    let mut units = UnitsTable::new(NUM_UNITS, "characters");
    for set in ["train", "dev"] {
        let m = read_manifest(
            dir.join("text").join(format!("{set}.jsonl")),
            ReadOptions::default(),
        )
        .unwrap();
        let entries: Vec<_> = m
            .entries
            .into_iter()
            .map(|mut e| {
                let (a, b) = (format!("a/{}.en.wav", e.id), format!("a/{}.fr.wav", e.id));
                units.insert(&a, fake_units(&e.text)).unwrap();
                units
                    .insert(&b, fake_units(e.target_text.as_deref().unwrap()))
                    .unwrap();
                e.audio = Some(a);
                e.target_audio = Some(b);
                e
            })
            .collect();
        write_manifest(dir.join(format!("{set}.jsonl")), &entries).unwrap();
    }
    write_units(&dir.join("units.jsonl"), &units).unwrap();
    let out = tolk_train()
        .args(["tokenizer", "--manifest"])
        .arg(dir.join("train.jsonl"))
        .args(["--vocab-size", "320", "--out"])
        .arg(dir.join("tokenizer.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn recipe(dir: &Path, out: &str, steps: u64, extra: &str) -> PathBuf {
    let d = dir.display();
    let text = format!(
        r#"# test recipe
[data]
train = ["{d}/train.jsonl"]
dev = "{d}/dev.jsonl"
units = "{d}/units.jsonl"
strategy = "chain-of-modality"
directions = ["en-fr", "fr-en"]
max_len = 512

[model]
tokenizer = "{d}/tokenizer.json"

[model.scratch]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 2
max_position_embeddings = 1024

[optim]
lr = 3e-3
warmup_steps = 4
steps = {steps}
min_lr_ratio = 0.1
weight_decay = 0.01
grad_clip = 1.0
grad_accum = 2
max_tokens = 2048
max_examples = 8
{extra}
[run]
out = "{d}/{out}"
threads = 1
eval_every = 10
checkpoint_every = 4
keep_checkpoints = 2
log_every = 2
"#
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(recipe: &Path, args: &[&str]) -> std::process::Output {
    tolk_train()
        .arg("sft")
        .arg("--recipe")
        .arg(recipe)
        .args(args)
        .output()
        .unwrap()
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "sft failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let (mut t, _) = read_safetensors(
        &dir.join("model.safetensors"),
        tch::Kind::Float,
        tch::Device::Cpu,
        |_| true,
    )
    .unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn short_run_learns_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    toy_data(dir);

    // An 80-step run: the loss falls, everything is written.
    let straight = recipe(dir, "straight", 80, "");
    let s = summary(&run(&straight, &[]));
    let (first, last) = (
        s["first_loss"].as_f64().unwrap(),
        s["last_loss"].as_f64().unwrap(),
    );
    let dev = s["dev_loss"].as_f64().unwrap();
    println!("80 steps: loss {first:.3} -> {last:.3}, dev {dev:.3}, {s}");
    assert!(last < 0.65 * first, "loss did not fall: {first} -> {last}");
    assert!(dev < 0.7 * first, "dev loss {dev} vs first {first}");
    let out = dir.join("straight");
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().any(|l| l.contains("dev_loss")));
    assert_eq!(metrics.lines().filter(|l| l.contains("\"lr\"")).count(), 40);
    // The final folder is a loadable Hugging Face model with the extended tokenizer.
    let final_dir = out.join("final");
    let model = tolk_models::llama::Llama::load(&final_dir, Default::default()).unwrap();
    let tok =
        tolk_models::tokenizer::Tokenizer::from_file(&final_dir.join("tokenizer.json")).unwrap();
    tolk_models::prompt::PromptFormat::from_tokenizer(&tok, NUM_UNITS).unwrap();
    assert_eq!(model.config().vocab_size as usize, tok.vocab_size());
    // Only the newest checkpoints are kept.
    let kept = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
    assert_eq!(kept, 2);

    // A 40-step run, and the same recipe interrupted after 18 steps then resumed: identical
    // weights.
    summary(&run(&recipe(dir, "whole", 40, ""), &[]));
    let whole_dir = dir.join("whole/final");
    let split = recipe(dir, "split", 40, "");
    let a = summary(&run(&split, &["--stop-after", "18"]));
    assert_eq!(a["steps"], 18);
    assert!(!dir.join("split/final").exists());
    // The checkpoint of step 16 is the newest: the resumed run redoes steps 17 and 18.
    let b = summary(&run(&split, &[]));
    assert_eq!(b["resumed_from"], 16);
    assert_eq!(b["steps"], 40);
    let (wa, wb) = (weights(&whole_dir), weights(&dir.join("split/final")));
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0.0f64;
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        worst = worst.max((ta - tb).abs().max().double_value(&[]));
    }
    println!("resumed vs straight: max |diff| {worst:e}");
    assert!(worst <= 1e-6, "resume is not exact: {worst}");

    // A changed optimizer setting refuses to resume.
    let changed = recipe(dir, "split", 40, "eps = 1e-6\n");
    let out = run(&changed, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed since this checkpoint"));
}

#[test]
fn divergence_stops_with_the_last_good_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    toy_data(dir);
    let r = recipe(dir, "nan", 20, "");
    let out = tolk_train()
        .args(["sft", "--recipe"])
        .arg(&r)
        .env("TOLK_SFT_FAULT_NAN_STEP", "7")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("diverged at step 7"), "{err}");
    assert!(err.contains("step-0000004"), "{err}");
    // The checkpoint of step 4 is intact and resumable.
    let latest = std::fs::read_to_string(dir.join("nan/latest")).unwrap();
    assert_eq!(latest.trim(), "step-0000004");
    let s = summary(&run(&r, &["--stop-after", "2"]));
    assert_eq!(s["resumed_from"], 4);
}

#[test]
fn bad_recipes_and_data_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    toy_data(dir);
    let check = |recipe: &Path, want: &str| {
        let out = run(recipe, &[]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "expected {want:?} in: {err}");
    };
    check(&recipe(dir, "a", 10, "momentum = 0.9\n"), "momentum");
    let r = recipe(dir, "b", 10, "");
    let text = std::fs::read_to_string(&r).unwrap();
    std::fs::write(&r, text.replace("units.jsonl", "missing.jsonl")).unwrap();
    check(&r, "missing.jsonl");
    let r = recipe(dir, "c", 10, "");
    let text = std::fs::read_to_string(&r).unwrap();
    std::fs::write(&r, text.replace("lr = 3e-3", "lr = -1.0")).unwrap();
    check(&r, "optim.lr");
    // Units outside the vocabulary are skipped and counted, not trained on.
    let mut units = UnitsTable::new(NUM_UNITS, "characters");
    let m = read_manifest(dir.join("train.jsonl"), ReadOptions { check_audio: false }).unwrap();
    for e in &m.entries {
        let src = fake_units(&e.text);
        units.insert(e.audio.as_deref().unwrap(), src).unwrap();
    }
    // Every target missing: all examples skipped -> a clear error.
    write_units(&dir.join("units-src-only.jsonl"), &units).unwrap();
    let r = recipe(dir, "d", 10, "");
    let text = std::fs::read_to_string(&r).unwrap();
    std::fs::write(&r, text.replace("units.jsonl", "units-src-only.jsonl")).unwrap();
    check(&r, "no training example could be built");
}

/// The SFT step (loss over target tokens, gradients through the fused projections, clipping,
/// AdamW, schedule) against transformers' LlamaForCausalLM + torch.optim.AdamW on the same
/// initial weights and batches (`tolk-train sft-bench`).
#[test]
fn sft_steps_match_pytorch() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    toy_data(dir);
    let r = recipe(dir, "bench", 40, "");
    let out = tolk_train()
        .args(["sft-bench", "--recipe"])
        .arg(&r)
        .args(["--steps", "5", "--warmup", "1", "--threads", "1"])
        .output()
        .unwrap();
    let rep = summary(&out);
    let (dl, dw) = (
        rep["max_loss_diff"].as_f64().unwrap(),
        rep["max_weight_diff"].as_f64().unwrap(),
    );
    println!(
        "tolk vs PyTorch over 5 steps: loss diff {dl:e}, weight diff {dw:e}; losses {} / {}",
        rep["tolk_losses"], rep["torch_losses"]
    );
    assert_eq!(rep["torch_losses"].as_array().unwrap().len(), 5);
    assert!(dl < 1e-4, "loss differs from PyTorch by {dl}");
    assert!(dw < 1e-4, "weights differ from PyTorch by {dw}");
}
