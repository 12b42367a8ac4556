//! DPO and SimPO with LoRA on a tiny random translator: the reward margin rises on held-out pairs,
//! a resumed run ends bit-identical to an uninterrupted one, a NaN loss stops the run with a
//! clear error, and the merged translator loads and translates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use tch::{Device, Kind};
use tolk_models::checkpoint::read_safetensors;
use tolk_models::prompt::{Lang, Task};
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_training::eval::tiny::{write_random_translator, TinyTranslatorSpec};
use tolk_training::preference::{train_preference, PreferenceRecipe, PreferenceSummary};

/// libtorch's global RNG is seeded by the trainer: runs in this file go one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// `n` pairs whose chosen completions use units 0..8 and rejected ones units 8..16: a preference
/// the adapters can learn and that holds on the dev share too.
fn write_pairs(model: &Path, path: &Path, n: usize) {
    let tr = Translator::load(model, Device::Cpu, Kind::Float).unwrap();
    let f = tr.format();
    let tok = tr.tokenizer();
    let text = tok.encode("Le quai trois", false).unwrap();
    let mut s = 11u64;
    let mut lines = String::new();
    for i in 0..n {
        let src: Vec<u32> = (0..6 + i % 5).map(|_| (lcg(&mut s) % 16) as u32).collect();
        let prompt = f
            .prompt(Task::ChainOfModality, Lang::En, Lang::Fr, &src)
            .unwrap();
        let good: Vec<u32> = (0..5).map(|_| (lcg(&mut s) % 8) as u32).collect();
        let bad: Vec<u32> = (0..5).map(|_| 8 + (lcg(&mut s) % 8) as u32).collect();
        let chosen = f.target(Task::ChainOfModality, &text, &good).unwrap();
        let rejected = f.target(Task::ChainOfModality, &text, &bad).unwrap();
        let dec = |ids: &[u32]| tok.decode(ids, false).unwrap();
        let v = serde_json::json!({
            "id": format!("utt-{i:03}"), "direction": "en-fr",
            "prompt": dec(&prompt), "chosen": dec(&chosen), "rejected": dec(&rejected),
            "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
        });
        lines.push_str(&format!("{v}\n"));
    }
    std::fs::write(path, lines).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    pairs: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = root.join("base");
    write_random_translator(&model, &TinyTranslatorSpec::default()).unwrap();
    let pairs = root.join("pairs.jsonl");
    write_pairs(&model, &pairs, 48);
    Fixture {
        _dir: dir,
        root,
        model,
        pairs,
    }
}

fn recipe(fx: &Fixture, kind: &str, out: &str, extra_loss: &str) -> PreferenceRecipe {
    let text = format!(
        r#"
[data]
pairs = ["{pairs}"]
dev_percent = 25
[model]
translator = "{model}"
[lora]
r = 4
alpha = 8
dropout = 0.1
[loss]
kind = "{kind}"
{extra_loss}
[optim]
lr = 1e-2
epochs = 3
batch_pairs = 6
warmup_ratio = 0.1
[run]
out = "{out}"
seed = 3
threads = 1
log_every = 1
eval_every = 4
checkpoint_every = 3
"#,
        pairs = fx.pairs.display(),
        model = fx.model.display(),
        out = fx.root.join(out).display(),
    );
    PreferenceRecipe::parse(&text).unwrap()
}

fn assert_learns(s: &PreferenceSummary, what: &str) {
    let (before, after) = (s.dev_before.unwrap(), s.dev_after.unwrap());
    let (first, last) = (s.first_train.unwrap(), s.last_train.unwrap());
    println!(
        "{what}: {} steps, dev margin {:.4} -> {:.4}, dev accuracy {:.2} -> {:.2}, dev loss \
         {:.4} -> {:.4}; train margin {:.4} -> {:.4}",
        s.steps,
        before.reward_margin,
        after.reward_margin,
        before.reward_accuracy,
        after.reward_accuracy,
        before.loss,
        after.loss,
        first.reward_margin,
        last.reward_margin
    );
    assert!(s.dev_pairs > 0 && s.train_pairs > 0);
    assert!(
        after.reward_margin > before.reward_margin + 0.05,
        "{what}: the dev reward margin did not rise"
    );
    assert!(
        after.loss < before.loss,
        "{what}: the dev loss did not fall"
    );
    assert!(
        after.reward_accuracy >= 0.9,
        "{what}: dev accuracy {}",
        after.reward_accuracy
    );
    assert!(
        last.reward_margin > first.reward_margin,
        "{what}: train margin"
    );
}

#[test]
fn dpo_raises_the_margin_resumes_exactly_and_merges() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture();
    let full = train_preference(&recipe(&fx, "dpo", "dpo-full", ""), false, None).unwrap();
    assert_learns(&full, "DPO");
    // LoRA r 4 on the tiny model: 7 projections per layer.
    assert!(full.trainable_parameters > 0);
    // DPO's reward is 0 for every pair before training (adapter B = 0: policy = reference).
    let before = full.dev_before.unwrap();
    assert!(
        before.reward_margin.abs() < 1e-6 && (before.loss - std::f64::consts::LN_2).abs() < 1e-5
    );

    // Interrupted after 4 steps (checkpoint at step 3), then resumed: the same adapters.
    let r = recipe(&fx, "dpo", "dpo-resumed", "");
    let part = train_preference(&r, false, Some(4)).unwrap();
    assert_eq!(part.steps, 4);
    assert!(part.adapter.is_none());
    let rest = train_preference(&r, false, None).unwrap();
    assert_eq!(rest.resumed_from, Some(3));
    assert_eq!(rest.steps, full.steps);
    let load = |s: &PreferenceSummary| {
        let p = s
            .adapter
            .as_ref()
            .unwrap()
            .join("adapter_model.safetensors");
        read_safetensors(&p, Kind::Float, Device::Cpu, |_| true)
            .unwrap()
            .0
    };
    let (a, b) = (load(&full), load(&rest));
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for ((na, ta), (nb, tb)) in a.iter().zip(b.iter()) {
        assert_eq!(na, nb);
        worst = worst.max((ta - tb).abs().max().double_value(&[]));
    }
    println!("resumed vs uninterrupted adapters: max diff {worst:e}");
    assert_eq!(worst, 0.0);

    // The merged translator loads, differs from the base and translates.
    let merged = full.merged_translator.as_ref().unwrap();
    let tr = Translator::load(merged, Device::Cpu, Kind::Float).unwrap();
    let base = Translator::load(&fx.model, Device::Cpu, Kind::Float).unwrap();
    let src = [1u32, 5, 9, 2, 7];
    let out = tr
        .translate_units(&src, Direction::EnFr, Mode::ChainOfModality)
        .unwrap();
    assert!(!out.units.is_empty());
    // The learnt preference shows up in greedy decoding: units from 0..8 dominate.
    let low = out.units.iter().filter(|&&u| u < 8).count();
    let base_out = base
        .translate_units(&src, Direction::EnFr, Mode::ChainOfModality)
        .unwrap();
    let base_low = base_out.units.iter().filter(|&&u| u < 8).count();
    println!(
        "greedy units in 0..8: base {base_low}/{}, DPO {low}/{}",
        base_out.units.len(),
        out.units.len()
    );
    assert!(
        low as f64 / out.units.len() as f64 > base_low as f64 / base_out.units.len().max(1) as f64
    );
    // `tolk-train merge` of the final adapter gives the same weights as the run's own merge.
    let merged_again = fx.root.join("merged-cli");
    let out = Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .args(["merge", "--translator"])
        .arg(&fx.model)
        .arg("--adapter")
        .arg(full.adapter.as_ref().unwrap())
        .arg("--out")
        .arg(&merged_again)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weights = |dir: &Path| {
        read_safetensors(
            &dir.join("llm/model.safetensors"),
            Kind::Float,
            Device::Cpu,
            |_| true,
        )
        .unwrap()
        .0
    };
    let (w1, w2) = (weights(merged), weights(&merged_again));
    assert_eq!(w1.len(), w2.len());
    for ((n1, t1), (n2, t2)) in w1.iter().zip(w2.iter()) {
        assert_eq!(n1, n2);
        assert!(t1.equal(t2), "{n1} differs");
    }
    assert!(fx.root.join("dpo-full/loss.png").exists());
    assert!(fx.root.join("dpo-full/rewards.png").exists());
    let metrics = std::fs::read_to_string(fx.root.join("dpo-full/metrics.jsonl")).unwrap();
    assert!(metrics.contains("reward_margin") && metrics.contains("dev_reward_accuracy"));
}

#[test]
fn simpo_raises_the_margin() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture();
    let s = train_preference(
        &recipe(&fx, "simpo", "simpo", "beta = 2.0\ngamma = 0.5"),
        false,
        None,
    )
    .unwrap();
    assert_learns(&s, "SimPO");
    assert!(s
        .merged_translator
        .unwrap()
        .join("tolk-model.json")
        .exists());
}

#[test]
fn cli_reports_nan_losses_and_bad_pairs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture();
    let r = recipe(&fx, "dpo", "nan", "");
    let recipe_path = fx.root.join("dpo.toml");
    std::fs::write(&recipe_path, toml::to_string(&r).unwrap()).unwrap();
    let bin = env!("CARGO_BIN_EXE_tolk-train");
    let out = Command::new(bin)
        .args(["preference", "--recipe"])
        .arg(&recipe_path)
        .env("TOLK_PREF_FAULT_NAN_STEP", "5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("diverged at step 5") && err.contains("step-0000003"),
        "{err}"
    );

    // Pairs from another model: a token outside the vocabulary, named with its line.
    let text = std::fs::read_to_string(&fx.pairs).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut v: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    v["chosen_ids"][0] = serde_json::json!(99_999);
    lines[2] = v.to_string();
    let bad = fx.root.join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let out = Command::new(bin)
        .args(["preference", "--restart", "--recipe"])
        .arg(&recipe_path)
        .arg("--pairs")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 3") && err.contains("99999"), "{err}");
}
