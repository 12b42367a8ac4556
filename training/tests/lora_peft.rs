//! Parity of Tolk's LoRA (`tolk_training::toolkit::lora` + `Llama::forward_hidden_lora`) with
//! huggingface/peft on a tiny random Llama (reference from `tests/reference/lora_peft.py`):
//! peft-written adapters give peft's logits, merging gives the same logits, disabling the adapters
//! gives the base model, and an adapter written by Tolk loads in peft with the same logits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{Device, Tensor};
use tolk_models::llama::{Llama, LoadOptions};
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};
use tolk_training::toolkit::lora::{count_parameters, Lora, LoraConfig};

const BOUND: f64 = 1e-4;

fn adapter_logits(model: &Llama, lora: Option<&Lora>, ids: &Tensor) -> Tensor {
    let h = model
        .forward_hidden_lora(ids, None, None, lora.map(|l| l.adapters()))
        .unwrap();
    model.logits(&h).unwrap()
}

#[test]
fn peft_adapters_match_peft_logits_merged_and_disabled() {
    let dir = reference_dir("lora_peft");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let reference = read_tensors(&dir.join("reference.safetensors"));
    let ids = &reference["input_ids"];
    let model = Llama::load(&dir.join("base"), LoadOptions::default()).unwrap();
    let base = adapter_logits(&model, None, ids);
    let d = max_abs_diff(&base, &reference["logits_base"]);
    println!("base model: max |logit difference| = {d:.3e}");
    assert!(d <= BOUND, "base logits differ by {d}");
    let adapters = meta["adapters"].as_object().unwrap();
    assert_eq!(adapters.len(), 2);
    let mut worst: f64 = 0.0;
    for (name, m) in adapters {
        let lora = Lora::load_peft(
            &dir.join("adapters").join(name),
            model.config(),
            Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(lora.num_parameters(), m["trainable"].as_i64().unwrap());
        assert_eq!(
            count_parameters(model.config(), lora.config()).unwrap().1,
            m["trainable"].as_i64().unwrap()
        );
        let ours = adapter_logits(&model, Some(&lora), ids);
        let expected = &reference[&format!("logits_{name}")];
        // The adapters must matter, or the comparison would prove nothing.
        let effect = max_abs_diff(expected, &reference["logits_base"]);
        assert!(
            effect > 0.1,
            "{name}: adapters change the logits by only {effect}"
        );
        let d = max_abs_diff(&ours, expected);
        println!("{name}: adapter logits vs peft: max |difference| = {d:.3e} (adapter effect {effect:.3})");
        worst = worst.max(d);

        let off = adapter_logits(&model, None, ids);
        let d_off = max_abs_diff(&off, &reference[&format!("logits_{name}_disabled")]);
        println!("{name}: adapters disabled vs peft disable_adapter(): {d_off:.3e}");
        worst = worst.max(d_off);

        let merged: HashMap<String, Tensor> =
            lora.merged_tensors(&model).unwrap().into_iter().collect();
        let mm =
            Llama::from_tensors(model.config().clone(), merged, LoadOptions::default()).unwrap();
        let merged_logits = adapter_logits(&mm, None, ids);
        let d_m = max_abs_diff(&merged_logits, &reference[&format!("logits_{name}_merged")]);
        let d_self = max_abs_diff(&merged_logits, &ours);
        println!(
            "{name}: merged vs peft merge_and_unload: {d_m:.3e}; merged vs our adapter logits: \
             {d_self:.3e}"
        );
        worst = worst.max(d_m).max(d_self);
    }
    println!("LoRA parity worst difference: {worst:.3e} (bound {BOUND:e})");
    assert!(worst <= BOUND, "worst logit difference {worst}");
}

#[test]
fn peft_adapter_on_a_different_base_is_a_named_error() {
    let dir = reference_dir("lora_peft");
    let model = Llama::load(&dir.join("base"), LoadOptions::default()).unwrap();
    let mut deeper = model.config().clone();
    deeper.num_hidden_layers += 1;
    let e = Lora::load_peft(&dir.join("adapters/all"), &deeper, Device::Cpu)
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.contains("covers layers 0..=1 only, the base model has 3 layers"),
        "{e}"
    );
    let mut wider = model.config().clone();
    wider.intermediate_size *= 2;
    let e = Lora::load_peft(&dir.join("adapters/all"), &wider, Device::Cpu)
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(
        e.contains("mlp.gate_proj.lora_B.weight` has shape [96, 4]") && e.contains("[192, 4]"),
        "{e}"
    );
}

fn python() -> PathBuf {
    std::env::var_os("TOLK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/lora_peft.py")
}

#[test]
fn tolk_written_adapter_loads_in_peft() {
    let dir = reference_dir("lora_peft");
    let model = Llama::load(&dir.join("base"), LoadOptions::default()).unwrap();
    let cfg = LoraConfig {
        r: 3,
        alpha: 6.0,
        target_modules: vec![
            "k_proj".into(),
            "o_proj".into(),
            "up_proj".into(),
            "q_proj".into(),
        ],
        ..Default::default()
    };
    let lora = Lora::new(model.config(), cfg, Device::Cpu, 11).unwrap();
    tch::manual_seed(12);
    {
        let _g = tch::no_grad_guard();
        for (name, mut t) in lora.named_parameters() {
            if name.contains("lora_B") {
                t.copy_(&(Tensor::randn(t.size(), (tch::Kind::Float, Device::Cpu)) * 0.2));
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    lora.save_peft(&adapter, &dir.join("base").display().to_string())
        .unwrap();
    let reference = read_tensors(&dir.join("reference.safetensors"));
    let ids = &reference["input_ids"];
    let io = tmp.path().join("io.safetensors");
    Tensor::write_safetensors(&[("input_ids", ids)], &io).unwrap();
    let out = std::process::Command::new(python())
        .arg(script())
        .args([
            "check".as_ref(),
            dir.join("base").as_os_str(),
            adapter.as_os_str(),
            io.as_os_str(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run `make setup`)", python().display()));
    assert!(
        out.status.success(),
        "peft could not load the Tolk adapter:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peft_logits = &read_tensors(&io)["logits"];
    let ours = adapter_logits(&model, Some(&lora), ids);
    let effect = max_abs_diff(&ours, &reference["logits_base"]);
    let d = max_abs_diff(&ours, peft_logits);
    println!("Tolk-written adapter in peft: max |logit difference| = {d:.3e} (adapter effect {effect:.3})");
    assert!(
        effect > 0.1,
        "the adapter changes the logits by only {effect}"
    );
    assert!(d <= BOUND, "logits differ by {d}");
}
