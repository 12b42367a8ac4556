//! Parity of `tolk_models::llama` with transformers' LlamaForCausalLM, on the real SmolLM2-135M
//! weights and on tiny random Llama-3.2-shaped models (references from
//! `tests/reference/smollm2.py` and `tests/reference/llama_tiny.py`).

use serde_json::Value;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use tolk_models::generate::{generate, GenerateOptions, StopReason};
use tolk_models::llama::{Llama, LoadOptions};
use tolk_models::sampling::{Sampler, SamplingConfig, TokenMask};
use tolk_models::tokenizer::Tokenizer;
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn load(dir: &Path) -> Llama {
    Llama::load(dir, LoadOptions::default()).unwrap()
}

fn greedy(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(1, (prompt.len() + n) as i64).unwrap();
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let opts = GenerateOptions::new(n, vec![]);
    let g = generate(model, &mut cache, &mut sampler, prompt, &opts, |_| {}).unwrap();
    assert_eq!(g.stop, StopReason::MaxTokens);
    g.tokens
}

fn full_logits(model: &Llama, ids: &[u32]) -> Tensor {
    let t: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    model
        .forward(&Tensor::from_slice(&t).view([1, -1]), None)
        .unwrap()
        .squeeze_dim(0)
}

#[test]
fn smollm2_logits_match_transformers() {
    let dir = reference_dir("smollm2");
    let model = load(&dir.join("model"));
    let tok = Tokenizer::for_model(&dir.join("model"), model.config().vocab_size).unwrap();
    let meta = json(&dir.join("reference.json"));
    let reference = read_tensors(&dir.join("reference.safetensors"));
    let mut worst: f64 = 0.0;
    for (i, p) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        let expected_ids = ids(&p["ids"]);
        let got_ids = tok.encode(p["text"].as_str().unwrap(), true).unwrap();
        assert_eq!(got_ids, expected_ids, "tokenizer differs on prompt {i}");
        let diff = max_abs_diff(
            &full_logits(&model, &got_ids),
            &reference[&format!("logits_{i}")],
        );
        println!("smollm2 prompt {i}: max |logit difference| = {diff:.3e}");
        worst = worst.max(diff);
    }
    println!("smollm2 worst logit difference over all prompts: {worst:.3e} (bound 1e-3)");
    assert!(worst <= 1e-3, "worst logit difference {worst}");
}

#[test]
fn smollm2_greedy_continuation_matches_transformers() {
    let dir = reference_dir("smollm2");
    let model = load(&dir.join("model"));
    let tok = Tokenizer::for_model(&dir.join("model"), model.config().vocab_size).unwrap();
    let meta = json(&dir.join("reference.json"));
    let g = &meta["greedy"];
    let prompt = tok.encode(g["text"].as_str().unwrap(), true).unwrap();
    assert_eq!(prompt, ids(&g["ids"]));
    let expected = ids(&g["continuation"]);
    assert_eq!(expected.len(), 64);
    let got = greedy(&model, &prompt, expected.len());
    println!("smollm2 greedy: {}", tok.decode(&got, true).unwrap());
    assert_eq!(got, expected, "64-token greedy continuation differs");
}

#[test]
fn tiny_models_match_transformers() {
    let root = reference_dir("llama_tiny");
    let meta = json(&root.join("reference.json"));
    for name in ["llama32_tied", "untied_bias"] {
        let dir = root.join(name);
        let model = load(&dir.join("model"));
        let reference = read_tensors(&dir.join("reference.safetensors"));
        let logits = model.forward(&reference["input_ids"], None).unwrap();
        let diff = max_abs_diff(&logits, &reference["logits"]);
        println!("{name}: batch-2 logits max |difference| = {diff:.3e} (bound 1e-4)");
        assert!(diff <= 1e-4, "{name}: {diff}");
        let m = &meta[name];
        let got = greedy(&model, &ids(&m["prompt"]), ids(&m["greedy"]).len());
        assert_eq!(
            got,
            ids(&m["greedy"]),
            "{name}: greedy continuation differs"
        );
    }
}

/// Prefill of part of a sequence, then one token at a time, must reproduce the full forward at
/// every position.
fn check_cached_steps(model: &Llama, seq: &[u32], prefill: usize, label: &str) {
    let full = full_logits(model, seq);
    let mut cache = model.new_cache(1, seq.len() as i64).unwrap();
    let ids: Vec<i64> = seq.iter().map(|&i| i as i64).collect();
    let mut worst: f64 = 0.0;
    let first = model
        .forward(
            &Tensor::from_slice(&ids[..prefill]).view([1, -1]),
            Some(&mut cache),
        )
        .unwrap()
        .squeeze_dim(0);
    worst = worst.max(max_abs_diff(&first, &full.narrow(0, 0, prefill as i64)));
    for (pos, &id) in ids.iter().enumerate().skip(prefill) {
        let step = model
            .forward(&Tensor::from_slice(&[id]).view([1, 1]), Some(&mut cache))
            .unwrap()
            .squeeze_dim(0);
        worst = worst.max(max_abs_diff(&step, &full.narrow(0, pos as i64, 1)));
    }
    assert_eq!(cache.len(), seq.len() as i64);
    println!("{label}: cached decoding vs full forward, worst |difference| = {worst:.3e}");
    assert!(worst <= 1e-4, "{label}: {worst}");
}

#[test]
fn cached_decoding_equals_full_forward() {
    let root = reference_dir("llama_tiny");
    for name in ["llama32_tied", "untied_bias"] {
        let model = load(&root.join(name).join("model"));
        let seq: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 250 + 3).collect();
        check_cached_steps(&model, &seq, 1, name);
        check_cached_steps(&model, &seq, 17, name);
    }
    let dir = reference_dir("smollm2").join("model");
    let model = load(&dir);
    let tok = Tokenizer::for_model(&dir, model.config().vocab_size).unwrap();
    let seq = tok
        .encode(
            "A kiosk at the station translates what travellers say, quickly.",
            true,
        )
        .unwrap();
    check_cached_steps(&model, &seq, 4, "smollm2");
}

#[test]
fn vocabulary_extension_matches_transformers_mean_resizing() {
    let root = reference_dir("llama_tiny");
    let meta = json(&root.join("reference.json"));
    for name in ["llama32_tied", "untied_bias"] {
        let dir = root.join(name);
        let reference = read_tensors(&dir.join("reference.safetensors"));
        let mut model = load(&dir.join("model"));
        let old_vocab = model.config().vocab_size;
        let old_head = model.lm_head_weight().copy();
        let extra = meta[name]["extra_tokens"].as_i64().unwrap();
        model.extend_vocab(extra).unwrap();
        assert_eq!(model.config().vocab_size, old_vocab + extra);
        let head = model.lm_head_weight();
        assert_eq!(head.size(), [old_vocab + extra, model.config().hidden_size]);
        // Old rows unchanged, bit for bit.
        assert_eq!(max_abs_diff(&head.narrow(0, 0, old_vocab), &old_head), 0.0);
        // New rows at the old mean: transformers samples them around that mean with a 1e-9
        // scaled covariance, so they agree to well within 1e-4.
        let expected = &reference["resized_head"];
        let diff = max_abs_diff(head, expected);
        println!("{name}: extended LM head vs transformers, max |difference| = {diff:.3e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
        let diff = max_abs_diff(&model.named_tensors()[0].1, &reference["resized_embed"]);
        assert!(diff <= 1e-4, "{name} embeddings: {diff}");
        // The extended model runs and its new tokens are usable.
        let logits = model
            .forward(
                &Tensor::from_slice(&[old_vocab, 5, old_vocab + extra - 1]).view([1, 3]),
                None,
            )
            .unwrap();
        assert_eq!(logits.size(), [1, 3, old_vocab + extra]);
        assert!(logits.isfinite().all().int64_value(&[]) == 1);
    }
}

#[test]
fn reduced_precision_tracks_f32() {
    let dir = reference_dir("llama_tiny").join("llama32_tied");
    let reference = read_tensors(&dir.join("reference.safetensors"));
    let scale = reference["logits"].abs().max().double_value(&[]);
    // Relative to the largest logit: bf16 keeps 8 mantissa bits, f16 11.
    for (kind, rel_bound) in [(Kind::BFloat16, 0.05), (Kind::Half, 0.005)] {
        let model = Llama::load(
            &dir.join("model"),
            LoadOptions {
                dtype: kind,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let logits = model.forward(&reference["input_ids"], None).unwrap();
        assert_eq!(logits.kind(), kind);
        let diff = max_abs_diff(&logits, &reference["logits"]);
        println!(
            "llama32_tied {kind:?}: logits vs f32 transformers, max |difference| = {diff:.3e} \
             ({:.2} % of the largest logit {scale:.2})",
            100.0 * diff / scale
        );
        assert!(diff <= rel_bound * scale, "{kind:?}: {diff}");
    }
}

#[test]
fn save_and_reload_roundtrip() {
    let dir = reference_dir("llama_tiny")
        .join("untied_bias")
        .join("model");
    let mut model = load(&dir);
    model.extend_vocab(4).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save(out.path()).unwrap();
    let again = load(out.path());
    assert_eq!(again.config(), model.config());
    let x = Tensor::from_slice(&[3i64, 4, 300, 303]).view([1, 4]);
    let d = max_abs_diff(
        &model.forward(&x, None).unwrap(),
        &again.forward(&x, None).unwrap(),
    );
    assert_eq!(d, 0.0);
    let _ = Device::Cpu;
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let src = reference_dir("llama_tiny")
        .join("untied_bias")
        .join("model");
    let tensors = read_tensors(&src.join("model.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", i + 1);
        let part: Vec<(String, Tensor)> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].shallow_clone()))
            .collect();
        Tensor::write_safetensors(&part, tmp.path().join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = load(tmp.path());
    let single = load(&src);
    let x = Tensor::from_slice(&[3i64, 4, 5, 299]).view([1, 4]);
    let d = max_abs_diff(
        &sharded.forward(&x, None).unwrap(),
        &single.forward(&x, None).unwrap(),
    );
    assert_eq!(d, 0.0);
}

#[test]
fn unit_and_task_tokens_extend_tokenizer_and_model_together() {
    use tolk_models::vocab::{add_tokens, unit_token_names};
    let dir = reference_dir("smollm2").join("model");
    let mut model = load(&dir);
    let mut tok = Tokenizer::for_model(&dir, model.config().vocab_size).unwrap();
    let mut names = unit_token_names(1000);
    names.extend(["<s2st>", "<en2fr>"].map(String::from));
    let ids = add_tokens(&mut model, &mut tok, &names).unwrap();
    assert_eq!(ids[0], 49152);
    assert_eq!(ids[1001], 49152 + 1001);
    assert_eq!(model.config().vocab_size, 49152 + 1002);
    // Each unit is one token, and text around them still tokenizes as before.
    let enc = tok
        .encode("<s2st><unit_7><unit_7><unit_999> hello", false)
        .unwrap();
    let hello = tok.encode(" hello", false).unwrap();
    assert_eq!(
        &enc[..4],
        &[49152 + 1000, 49152 + 7, 49152 + 7, 49152 + 999]
    );
    assert_eq!(&enc[4..], hello.as_slice());
    // Adding the same tokens again changes nothing.
    assert_eq!(add_tokens(&mut model, &mut tok, &names).unwrap(), ids);
    assert_eq!(model.config().vocab_size, 49152 + 1002);
    let logits = model
        .forward(&Tensor::from_slice(&[49152i64 + 7, 504]).view([1, 2]), None)
        .unwrap();
    assert_eq!(logits.size(), [1, 2, 49152 + 1002]);
}

#[test]
fn constrained_phases_switch_on_their_token() {
    let model = load(
        &reference_dir("llama_tiny")
            .join("llama32_tied")
            .join("model"),
    );
    let mut cache = model.new_cache(1, 80).unwrap();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: 3.0,
        top_k: 0,
        top_p: 1.0,
        seed: 11,
    })
    .unwrap();
    // Phase 1: "text" ids 3..10 or the switch token 11; phase 2: "units" 20..30 or the end 31.
    let opts = GenerateOptions {
        mask: TokenMask::range(3..10).with(11..12),
        phase_switch: Some((11, TokenMask::range(20..30).with(31..32))),
        ..GenerateOptions::new(64, vec![31])
    };
    let g = generate(&model, &mut cache, &mut sampler, &[5, 6, 7], &opts, |_| {}).unwrap();
    let switch = g
        .tokens
        .iter()
        .position(|&t| t == 11)
        .expect("the switch token was sampled");
    assert!(
        g.tokens[..switch].iter().all(|t| (3..10).contains(t)),
        "{:?}",
        g.tokens
    );
    assert!(
        g.tokens[switch + 1..]
            .iter()
            .all(|t| (20..30).contains(t) || *t == 31),
        "{:?}",
        g.tokens
    );
    assert!(g.tokens.len() > switch + 1, "{:?}", g.tokens);
}
