//! Bad checkpoints, configs, tokenizers and prompts give clear errors naming the file and the
//! field or tensor at fault; never a panic.

use std::path::{Path, PathBuf};
use tch::Tensor;
use tolk_models::generate::{generate, GenerateOptions};
use tolk_models::llama::{Llama, LoadOptions};
use tolk_models::sampling::{Sampler, SamplingConfig};
use tolk_models::tokenizer::Tokenizer;
use tolk_models::ModelError;
use tolk_tests::{read_tensors, reference_dir};

/// A writable copy of the tiny tied model.
fn tiny_copy() -> (tempfile::TempDir, PathBuf) {
    let src = reference_dir("llama_tiny")
        .join("llama32_tied")
        .join("model");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

fn load_err(dir: &Path) -> String {
    let e = Llama::load(dir, LoadOptions::default()).unwrap_err();
    println!("{e}");
    e.to_string()
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors: Vec<(String, Tensor)> = read_tensors(&path).into_iter().collect();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let (_tmp, dir) = tiny_copy();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    // A header cut short.
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert!(load_err(&dir).contains("model.safetensors"));
}

#[test]
fn shape_missing_and_unexpected_tensors_are_all_reported() {
    let (_tmp, dir) = tiny_copy();
    rewrite_weights(&dir, |t| {
        t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
        for (n, w) in t.iter_mut() {
            if n == "model.layers.0.self_attn.k_proj.weight" {
                *w = w.narrow(0, 0, 32).contiguous();
            }
        }
        t.push((
            "model.layers.0.self_attn.extra.weight".into(),
            Tensor::zeros([2], tch::kind::FLOAT_CPU),
        ));
    });
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor `model.layers.1.mlp.up_proj.weight`"),
        "{e}"
    );
    assert!(
        e.contains("`model.layers.0.self_attn.k_proj.weight`")
            && e.contains("[32, 128]")
            && e.contains("[64, 128]"),
        "{e}"
    );
    assert!(
        e.contains("unexpected tensor `model.layers.0.self_attn.extra.weight`"),
        "{e}"
    );
}

#[test]
fn config_errors_name_file_and_field() {
    let (_tmp, dir) = tiny_copy();
    edit_config(&dir, |v| v["rope_parameters"]["rope_type"] = "yarn".into());
    let e = load_err(&dir);
    assert!(
        e.contains("config.json") && e.contains("rope_parameters.rope_type") && e.contains("yarn"),
        "{e}"
    );

    let (_tmp, dir) = tiny_copy();
    edit_config(&dir, |v| v["sliding_window"] = 4096.into());
    let e = load_err(&dir);
    assert!(e.contains("`sliding_window`: unknown key"), "{e}");

    let (_tmp, dir) = tiny_copy();
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    assert!(load_err(&dir).contains("`num_hidden_layers`: missing required key"));

    let (_tmp, dir) = tiny_copy();
    edit_config(&dir, |v| v["hidden_size"] = "wide".into());
    assert!(load_err(&dir).contains("`hidden_size`"));

    let (_tmp, dir) = tiny_copy();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(load_err(&dir).contains("invalid JSON"));

    let (_tmp, dir) = tiny_copy();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_err(&dir).contains("config.json"));

    let (_tmp, dir) = tiny_copy();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(load_err(&dir).contains("model.safetensors"));
}

#[test]
fn tokenizer_larger_than_vocab_is_rejected() {
    let (_tmp, dir) = tiny_copy();
    let smol = reference_dir("smollm2")
        .join("model")
        .join("tokenizer.json");
    std::fs::copy(smol, dir.join("tokenizer.json")).unwrap();
    let err = Tokenizer::for_model(&dir, 512).err().expect("must fail");
    let e = err.to_string();
    println!("{e}");
    assert!(
        e.contains("tokenizer.json") && e.contains("49152") && e.contains("512"),
        "{e}"
    );
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    assert!(Tokenizer::for_model(&dir, 512).is_err());
}

#[test]
fn prompts_longer_than_the_cache_and_bad_ids_are_errors() {
    let (_tmp, dir) = tiny_copy();
    let model = Llama::load(&dir, LoadOptions::default()).unwrap();
    let mut cache = model.new_cache(1, 8).unwrap();
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let opts = GenerateOptions::new(4, vec![]);
    let prompt: Vec<u32> = (3..13).collect();
    let e = generate(&model, &mut cache, &mut sampler, &prompt, &opts, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::CacheFull {
                needed: 10,
                capacity: 8
            }
        ),
        "{e}"
    );
    // A prompt that fits but leaves no room stops at the cache's end instead of failing.
    let g = generate(
        &model,
        &mut cache,
        &mut sampler,
        &prompt[..7],
        &opts,
        |_| {},
    )
    .unwrap();
    assert_eq!(g.tokens.len(), 2);
    // Token ids outside the vocabulary.
    let e = model
        .forward(&Tensor::from_slice(&[1i64, 512]).view([1, 2]), None)
        .unwrap_err();
    assert!(e.to_string().contains("0..512"), "{e}");
    let e = model
        .forward(&Tensor::from_slice(&[-1i64]).view([1, 1]), None)
        .unwrap_err();
    assert!(e.to_string().contains("-1"), "{e}");
    assert!(model.new_cache(1, 1 << 40).is_err());
    assert!(generate(&model, &mut cache, &mut sampler, &[], &opts, |_| {}).is_err());
}
