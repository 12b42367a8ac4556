//! Parity of `tolk_models::units::Hubert` with transformers' `HubertModel` (random weights:
//! mHuBERT-base shape at layer 11, tiny post-LN/group-norm and pre-LN/layer-norm models), and of
//! the fairseq converter (`models/convert/fairseq_hubert.py`) whose output must load to the same
//! hidden states. References from `tests/reference/hubert.py` (`make reference`).

use serde_json::Value;
use std::path::Path;
use tch::Tensor;
use tolk_models::units::{Hubert, HubertLoadOptions};
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

const TOL: f64 = 1e-4;

fn meta() -> Value {
    let p = reference_dir("hubert").join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// hidden_states[L] of the model in `model_dir` on the reference input; returns the worst
/// difference.
fn worst(name: &str, model_dir: &Path) -> f64 {
    let dir = reference_dir("hubert").join(name);
    let layer = meta()["configs"][name]["layer"].as_u64().unwrap() as usize;
    let r = read_tensors(&dir.join("reference.safetensors"));
    let model = Hubert::load(model_dir, layer, HubertLoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()));
    let h = tch::no_grad(|| model.forward(&r["input"])).unwrap();
    max_abs_diff(&h, &r["hidden"])
}

#[test]
fn hidden_states_match_transformers() {
    for name in ["tiny_post", "tiny_stable", "mhubert_base"] {
        let dir = reference_dir("hubert").join(name);
        let d = worst(name, &dir.join("model"));
        println!("hubert {name}: hidden_states[L] max |diff| vs transformers = {d:.3e}");
        assert!(d <= TOL, "{name}: {d}");
    }
}

#[test]
fn fairseq_converter_output_loads_to_the_same_hidden_states() {
    for name in ["tiny_post", "tiny_stable", "mhubert_base"] {
        let dir = reference_dir("hubert").join(name).join("converted");
        assert!(
            dir.join("model.safetensors").exists(),
            "{} missing: run `make reference`",
            dir.display()
        );
        let d = worst(name, &dir);
        println!("hubert {name}: fairseq -> converter -> tolk max |diff| = {d:.3e}");
        assert!(d <= TOL, "{name}: {d}");
    }
}

/// transformers < 4.40 wrote the positional weight norm as `weight_g` / `weight_v`.
#[test]
fn old_weight_norm_names_load_too() {
    let src = reference_dir("hubert").join("tiny_post").join("model");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let n = n
                .replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v");
            (n, t)
        })
        .collect();
    assert!(tensors.iter().any(|(n, _)| n.ends_with("weight_g")));
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let d = worst("tiny_post", tmp.path());
    println!("hubert tiny_post with weight_g/weight_v names: max |diff| = {d:.3e}");
    assert!(d <= TOL);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let src = reference_dir("hubert").join("tiny_post").join("model");
    // A layer beyond the model.
    let e = Hubert::load(&src, 9, HubertLoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 9") && e.contains("4 layers"), "{e}");
    // A missing tensor and a mis-shaped one are named.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(src.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "encoder.layers.1.attention.q_proj.weight")
        .map(|(n, t)| {
            if n == "feature_projection.projection.bias" {
                (n, t.narrow(0, 0, 3))
            } else {
                (n, t)
            }
        })
        .collect();
    Tensor::write_safetensors(&tensors, tmp.path().join("model.safetensors")).unwrap();
    let e = Hubert::load(tmp.path(), 2, HubertLoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensor `encoder.layers.1.attention.q_proj.weight`"),
        "{e}"
    );
    assert!(e.contains("feature_projection.projection.bias"), "{e}");
    // Layer 1 does not need the missing tensor of layer 2 (only layers up to L are loaded).
    assert!(Hubert::load(tmp.path(), 1, HubertLoadOptions::default()).is_err());
    // A config that is not HuBERT.
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 8}"#,
    )
    .unwrap();
    let e = Hubert::load(tmp.path(), 1, HubertLoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
}
