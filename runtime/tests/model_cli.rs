//! The `tolk model` commands on the real SmolLM2 weights, as a user runs them.

use std::process::Command;
use tolk_tests::reference_dir;

fn tolk(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .args(args)
        // The binary finds libtorch through its rpath alone.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("tolk runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_logits_and_generate() {
    let dir = reference_dir("smollm2").join("model");
    let dir = dir.to_str().unwrap();

    let (ok, out, err) = tolk(&["model", "inspect", dir]);
    assert!(ok, "{err}");
    assert!(out.contains("parameters       134515008"), "{out}");
    assert!(out.contains("layers           30"), "{out}");

    let (ok, out, err) = tolk(&[
        "model",
        "logits",
        dir,
        "--prompt",
        "The capital of France is",
        "--json",
        "--top-k",
        "5",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["prompt_ids"],
        serde_json::json!([504, 3575, 282, 4649, 314])
    );
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    let logits: Vec<f64> = top.iter().map(|t| t["logit"].as_f64().unwrap()).collect();
    assert!(logits.windows(2).all(|w| w[0] >= w[1]), "{logits:?}");
    assert_eq!(top[0]["token"], "ĠParis");

    let (ok, out, err) = tolk(&[
        "--threads",
        "2",
        "model",
        "generate",
        dir,
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "8",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("The capital of France is Paris"), "{out}");
    assert!(err.contains("decode") && err.contains("tokens/s"), "{err}");

    // Seeded sampling repeats itself.
    let args = [
        "model",
        "generate",
        dir,
        "--prompt",
        "Tickets please",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "42",
    ];
    let (ok1, a, _) = tolk(&args);
    let (ok2, b, _) = tolk(&args);
    assert!(ok1 && ok2 && a == b, "{a} vs {b}");

    // The benchmark on random weights of a config (the path used for Llama-3.2-3B on a GPU).
    let cfg = reference_dir("llama_tiny").join("llama32_tied/model/config.json");
    let (ok, out, err) = tolk(&[
        "model",
        "bench",
        "--random-config",
        cfg.to_str().unwrap(),
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "8",
        "--repeats",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("decode") && out.contains("bandwidth ceiling"),
        "{out}"
    );

    // Bad input: a clear message and a failure status, not a panic.
    let (ok, _, err) = tolk(&["model", "inspect", "/nonexistent"]);
    assert!(
        !ok && err.contains("/nonexistent/config.json") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = tolk(&[
        "model",
        "generate",
        dir,
        "--prompt",
        "x",
        "--max-new-tokens",
        "5000",
        "--max-len",
        "64",
    ]);
    assert!(!ok && err.contains("--max-len"), "{err}");
}

/// `tolk model import-gguf` on the tiny Llama 3-shaped GGUF of tests/reference/gguf_import.py: the
/// folder it writes runs under `inspect`, `logits` and `bench`; a bad file fails with the file
/// and the reason named.
#[test]
fn import_gguf_then_run_the_folder() {
    let refs = reference_dir("gguf");
    let gguf = refs.join("tiny-llama3.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let out_s = out.to_str().unwrap();
    let (ok, stdout, err) = tolk(&[
        "model",
        "import-gguf",
        gguf.to_str().unwrap(),
        "--out",
        out_s,
        "--dtype",
        "bf16",
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("layers 2,") && stdout.contains("Llama3") && stdout.contains("bf16"),
        "{stdout}"
    );
    assert!(stdout.contains("tokenizer.json rebuilt"), "{stdout}");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).exists(), "{f} written");
    }
    let (ok, stdout, err) = tolk(&["model", "inspect", out_s]);
    assert!(
        ok && stdout.contains("tied embeddings  false"),
        "{err}{stdout}"
    );
    let (ok, stdout, err) = tolk(&[
        "model", "logits", out_s, "--prompt", "Hello", "--json", "--top-k", "2",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("\"prompt_ids\":[1,"), "BOS first: {stdout}");
    let (ok, stdout, err) = tolk(&[
        "model",
        "bench",
        out_s,
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
    ]);
    assert!(ok && stdout.contains("decode"), "{err}{stdout}");

    // A second import into the same folder, and a file of another architecture.
    let (ok, _, err) = tolk(&[
        "model",
        "import-gguf",
        gguf.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");
    let bad = refs.join("bad-arch.gguf");
    let (ok, _, err) = tolk(&[
        "model",
        "import-gguf",
        bad.to_str().unwrap(),
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("bad-arch.gguf") && err.contains("qwen2") && !err.contains("panicked"),
        "{err}"
    );
}
