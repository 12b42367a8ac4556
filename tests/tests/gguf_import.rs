//! GGUF import (`tolk_models::llama::gguf`, `tolk model import-gguf`) against gguf-py and
//! transformers (`tests/reference/gguf_import.py`): our dequantization of the real llama.cpp-made
//! SmolLM2 Q4_1 file and of its Q8_0 / Q4_0 / F16 / BF16 re-encodings equals gguf-py's bit for
//! bit; the imported tensors equal those of transformers' GGUF loader (so the q/k permutation is
//! undone the same way); the imported folder loads with the Llama loader and gives transformers'
//! logits; the rebuilt tokenizer gives llama.cpp's token ids; a tiny Llama 3-shaped GGUF written
//! like llama.cpp's converter (llama3 RoPE factors, untied head, alignment 64, every metadata
//! type) imports to the transformers model it came from; bad files give errors naming the file
//! and the tensor or key, never a panic.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use tolk_models::llama::gguf::{
    import_llama, import_tensors, tokenizer_json, GgufError, GgufFile, GgufValue, TokenizerOutcome,
    ValueType,
};
use tolk_models::llama::{Llama, LlamaConfig, LoadOptions, RopeScaling};
use tolk_models::tokenizer::Tokenizer;
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

fn meta() -> Value {
    let path = reference_dir("gguf").join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn path_of(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn open(path: &Path) -> GgufFile {
    GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Logits `[T, V]` of the whole sequence.
fn logits(model: &Llama, ids: &[u32]) -> Tensor {
    let t: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    model
        .forward(&Tensor::from_slice(&t).view([1, -1]), None)
        .unwrap()
        .squeeze_dim(0)
}

/// Largest absolute difference relative to the largest absolute reference value.
fn relative_diff(ours: &Tensor, theirs: &Tensor) -> (f64, f64) {
    let diff = max_abs_diff(ours, theirs);
    let scale = theirs.abs().max().double_value(&[]);
    (diff / scale, scale)
}

#[test]
fn dequantization_equals_gguf_py_in_every_format() {
    let dir = reference_dir("gguf");
    let m = meta();
    let reference = read_tensors(&dir.join("dequant.safetensors"));
    let files = m["smollm2"]["files"].as_object().unwrap();
    let mut types_seen = std::collections::BTreeSet::new();
    let mut checked = 0;
    for (format, path) in files {
        let file = open(&path_of(path));
        for name in m["smollm2"]["checked"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let key = format!("{format}/{name}");
            let info = file.tensor(name).unwrap();
            assert_eq!(
                info.ggml_type.name(),
                m["smollm2"]["types"][&key].as_str().unwrap(),
                "{key}: stored type"
            );
            types_seen.insert(info.ggml_type.name());
            let mut ours = file.tensor_f32(name).unwrap();
            if name == "token_embd.weight" {
                // The reference keeps the first and last rows of the embedding.
                let edge = m["smollm2"]["edge_rows"].as_i64().unwrap();
                let rows = ours.size()[0];
                ours = Tensor::cat(
                    &[ours.narrow(0, 0, edge), ours.narrow(0, rows - edge, edge)],
                    0,
                );
            }
            let theirs = &reference[&key];
            let diff = max_abs_diff(&ours, theirs);
            // Bit for bit: every element equal (no NaN in the weights).
            let differing = ours.ne_tensor(theirs).sum(Kind::Int64).int64_value(&[]);
            println!(
                "{key} ({}, shape {:?}): {differing} differing values, max diff {diff:.1e}",
                info.ggml_type.name(),
                ours.size()
            );
            assert_eq!(differing, 0, "{key}: dequantization differs from gguf-py");
            checked += 1;
        }
    }
    let expected: std::collections::BTreeSet<String> =
        ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(types_seen, expected, "every supported type was checked");
    assert_eq!(checked, 5 * 8);
}

#[test]
fn imported_tensors_and_config_equal_transformers_gguf_loader() {
    let dir = reference_dir("gguf");
    let m = meta();
    let file = open(&path_of(&m["smollm2"]["files"]["q4_1"]));
    let imported = import_tensors(&file, Kind::Float).unwrap();
    let ours: HashMap<String, Tensor> = imported.tensors.into_iter().collect();
    let theirs = read_tensors(&dir.join("hf_tensors.safetensors"));
    for name in m["smollm2"]["hf_checked"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        let diff = max_abs_diff(&ours[name], &theirs[name]);
        println!("{name}: max diff {diff:.1e} against transformers' GGUF loader");
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
    // The config equals the one transformers wrote for the same file (tests/reference/smollm2.py).
    let hf = LlamaConfig::from_file(&reference_dir("smollm2").join("model").join("config.json"))
        .unwrap();
    assert_eq!(imported.config, hf);
    assert_eq!(
        imported.stored_types,
        [
            ("F32".to_string(), 61),
            ("Q4_1".into(), 210),
            ("Q8_0".into(), 1)
        ]
        .into_iter()
        .collect()
    );
}

#[test]
fn imported_q4_1_model_gives_transformers_logits() {
    let m = meta();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2");
    let start = std::time::Instant::now();
    let report = import_llama(&path_of(&m["smollm2"]["files"]["q4_1"]), &out, Kind::Float)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "import of the Q4_1 file: {:.2} s (debug build), {} tensors, {:.1} MiB",
        start.elapsed().as_secs_f64(),
        report.tensors,
        report.bytes_written as f64 / (1 << 20) as f64
    );
    assert_eq!(report.tokenizer_skipped, None);
    let model = Llama::load(&out, LoadOptions::default()).unwrap();
    let tok = Tokenizer::for_model(&out, model.config().vocab_size).unwrap();
    let reference = read_tensors(&reference_dir("gguf").join("logits.safetensors"));
    for (i, p) in m["smollm2"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let got = tok.encode(p["text"].as_str().unwrap(), true).unwrap();
        assert_eq!(got, ids(&p["ids"]), "prompt {i}: token ids");
        let (rel, scale) =
            relative_diff(&logits(&model, &got), &reference[&format!("smollm2_{i}")]);
        println!(
            "smollm2 Q4_1 prompt {i}: max logit diff {rel:.2e} of the largest |logit| {scale:.1}"
        );
        assert!(rel <= 1e-4, "prompt {i}: relative logit difference {rel}");
    }
}

#[test]
fn rebuilt_tokenizer_gives_llama_cpp_ids() {
    let m = meta();
    let build = |path: &Path| {
        let TokenizerOutcome::Built(json) = tokenizer_json(&open(path)).unwrap() else {
            panic!("{}: no tokenizer built", path.display());
        };
        Tokenizer::from_bytes(&serde_json::to_vec(&json).unwrap(), path).unwrap()
    };
    // SmolLM2 (`smollm`): llama.cpp's pre-tokenization, and transformers' GGUF tokenizer.
    let tok = build(&path_of(&m["smollm2"]["files"]["q4_1"]));
    assert_eq!(tok.vocab_size(), 49152);
    for t in m["tokenizer"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let ours = tok.encode(text, true).unwrap();
        assert_eq!(ours, ids(&t["llamacpp"]), "{text:?}: llama.cpp's ids");
        assert_eq!(ours, ids(&t["transformers"]), "{text:?}: transformers' ids");
        assert_eq!(tok.decode(&ours, false).unwrap(), text, "round trip");
    }
    // The digits split on their own, the space before them too (llama.cpp's `smollm` regexes).
    let digits = tok.encode(" 123", true).unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
    // The tiny file: `llama-bpe` with BOS, as transformers builds it from the same GGUF.
    let tiny = build(&path_of(&m["tiny"]["file"]));
    for t in m["tiny"]["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let ours = tiny.encode(text, true).unwrap();
        assert_eq!(ours[0], 1, "{text:?}: BOS first");
        assert_eq!(ours, ids(&t["transformers"]), "{text:?}: llama-bpe ids");
    }
}

/// The metadata of the tiny file as the reference wrote it.
fn check_value(key: &str, ours: &GgufValue, theirs: &Value) {
    let ty = theirs["type"].as_str().unwrap();
    match ours {
        GgufValue::Array(elem, items) => {
            assert_eq!(ty, "ARRAY", "{key}");
            let expected = theirs["items"].as_array().unwrap();
            assert_eq!(items.len(), expected.len(), "{key}");
            let elem_name = format!("{elem:?}");
            let reference_elem = theirs["element"].as_str().unwrap();
            assert_eq!(type_name(&elem_name), reference_elem, "{key}: element type");
            for (o, t) in items.iter().zip(expected) {
                check_value(key, o, t);
            }
        }
        scalar => {
            assert_eq!(
                type_name(&format!("{:?}", scalar.value_type())),
                ty,
                "{key}"
            );
            let v = &theirs["value"];
            let same = match scalar {
                GgufValue::String(s) => v.as_str() == Some(s),
                GgufValue::Bool(b) => v.as_bool() == Some(*b),
                GgufValue::F32(_) | GgufValue::F64(_) => v.as_f64() == scalar.as_f64(),
                GgufValue::U64(x) => v.as_u64() == Some(*x),
                other => v.as_i64() == other.as_i64(),
            };
            assert!(same, "{key}: {scalar:?} != {v}");
        }
    }
}

/// gguf-py's `GGUFValueType` names for our [`ValueType`] names.
fn type_name(ours: &str) -> &'static str {
    match ours {
        "U8" => "UINT8",
        "I8" => "INT8",
        "U16" => "UINT16",
        "I16" => "INT16",
        "U32" => "UINT32",
        "I32" => "INT32",
        "F32" => "FLOAT32",
        "Bool" => "BOOL",
        "String" => "STRING",
        "Array" => "ARRAY",
        "U64" => "UINT64",
        "I64" => "INT64",
        "F64" => "FLOAT64",
        other => panic!("unknown value type {other}"),
    }
}

#[test]
fn tiny_llama3_gguf_imports_to_its_transformers_model() {
    let m = meta();
    let t = &m["tiny"];
    let path = path_of(&t["file"]);
    let file = open(&path);
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_start() % 64, 0);
    let extra = t["metadata"].as_object().unwrap();
    for (key, theirs) in extra {
        check_value(key, file.get(key).unwrap(), theirs);
    }
    assert!(matches!(
        file.get("tolk.test.nested"),
        Some(GgufValue::Array(ValueType::Array, _))
    ));

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let report = import_llama(&path, &out, Kind::Float).unwrap();
    let cfg = &report.config;
    let c = &t["config"];
    let int = |k: &str| c[k].as_i64().unwrap();
    assert_eq!(
        (
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.max_position_embeddings
        ),
        (
            int("vocab_size"),
            int("hidden_size"),
            int("intermediate_size"),
            int("num_hidden_layers"),
            int("num_attention_heads"),
            int("num_key_value_heads"),
            int("head_dim"),
            int("max_position_embeddings")
        )
    );
    assert_eq!(cfg.rms_norm_eps, c["rms_norm_eps"].as_f64().unwrap());
    assert!(!cfg.tie_word_embeddings, "output.weight present: untied");
    let rp = &t["rope_parameters"];
    assert_eq!(cfg.rope_theta, rp["rope_theta"].as_f64().unwrap());
    assert_eq!(
        cfg.rope_scaling,
        RopeScaling::Llama3 {
            factor: rp["factor"].as_f64().unwrap(),
            low_freq_factor: rp["low_freq_factor"].as_f64().unwrap(),
            high_freq_factor: rp["high_freq_factor"].as_f64().unwrap(),
            original_max_position_embeddings: rp["original_max_position_embeddings"]
                .as_f64()
                .unwrap(),
        }
    );
    let model = Llama::load(&out, LoadOptions::default()).unwrap();
    let reference = read_tensors(&reference_dir("gguf").join("logits.safetensors"));
    let (rel, scale) = relative_diff(&logits(&model, &ids(&t["ids"])), &reference["tiny"]);
    println!("tiny llama3 F32: max logit diff {rel:.2e} of the largest |logit| {scale:.2}");
    assert!(rel <= 1e-4, "relative logit difference {rel}");

    // GGUF v2 has the same layout: the same file labelled v2 gives the same tensors.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = tmp.path().join("v2.gguf");
    std::fs::write(&v2, &bytes).unwrap();
    let v2 = open(&v2);
    assert_eq!(v2.version(), 2);
    let a = import_tensors(&v2, Kind::Float).unwrap();
    let b = import_tensors(&file, Kind::Float).unwrap();
    for ((na, ta), (nb, tb)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na}");
    }
}

/// The error of importing `path` into a fresh folder, printed.
fn import_err(path: &Path) -> GgufError {
    let tmp = tempfile::tempdir().unwrap();
    let e = import_llama(path, &tmp.path().join("out"), Kind::Float).unwrap_err();
    println!("{e}");
    assert!(
        !tmp.path().join("out").exists(),
        "nothing is written for a bad file"
    );
    e
}

#[test]
fn bad_files_give_errors_naming_file_and_tensor() {
    let m = meta();
    let tiny = path_of(&m["tiny"]["file"]);
    let bytes = std::fs::read(&tiny).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };

    // Wrong magic.
    let mut wrong = bytes.clone();
    wrong[..4].copy_from_slice(b"GGML");
    let p = write("magic.gguf", &wrong);
    let e = import_err(&p);
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("magic.gguf") && msg.contains("not a GGUF file"),
        "{msg}"
    );

    // Truncated: in the tensor data (names the tensor), in the metadata (names the key), in the
    // header, and empty.
    let p = write("cut.gguf", &bytes[..bytes.len() - 100]);
    let msg = import_err(&p).to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated") && msg.contains("output.weight"),
        "{msg}"
    );
    let p = write("cut_kv.gguf", &bytes[..200]);
    let e = import_err(&p);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("the metadata"), "{e}");
    // Inside the vocabulary: names the key.
    let p = write("cut_tokens.gguf", &bytes[..100_000]);
    let e = import_err(&p);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e:?}");
    assert!(e.to_string().contains("`tokenizer.ggml.tokens`"), "{e}");
    for n in [0, 3, 10] {
        let p = write("short.gguf", &bytes[..n]);
        let e = import_err(&p);
        assert!(matches!(e, GgufError::Truncated { .. }), "{n} bytes: {e:?}");
        assert!(e.to_string().contains("short.gguf"));
    }

    // Version 1 (32-bit counts) is refused.
    let mut v1 = bytes.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = import_err(&write("v1.gguf", &v1));
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 1, .. }),
        "{e:?}"
    );

    // Not a llama.
    let bad = &m["bad"];
    let e = import_err(&path_of(&bad["arch"]));
    let msg = e.to_string();
    assert!(matches!(e, GgufError::Architecture { .. }), "{e:?}");
    assert!(
        msg.contains("qwen2") && msg.contains("bad-arch.gguf"),
        "{msg}"
    );

    // A tensor whose shape disagrees with the llama.* keys.
    let e = import_err(&path_of(&bad["shape"]));
    let msg = e.to_string();
    assert!(matches!(e, GgufError::Tensors { .. }), "{e:?}");
    assert!(
        msg.contains("bad-shape.gguf") && msg.contains("blk.1.attn_k.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[64, 16]") && msg.contains("[64, 32]"),
        "{msg}"
    );

    // A type that is not dequantized.
    let e = import_err(&path_of(&bad["q5_0"]));
    let msg = e.to_string();
    assert!(matches!(e, GgufError::UnsupportedType { .. }), "{e:?}");
    assert!(
        msg.contains("blk.0.ffn_down.weight") && msg.contains("Q5_0"),
        "{msg}"
    );

    // A non-empty output folder is refused before anything is read.
    let out = tmp.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"x").unwrap();
    let e = import_llama(&tiny, &out, Kind::Float).unwrap_err();
    assert!(matches!(e, GgufError::OutputExists { .. }), "{e:?}");
}
