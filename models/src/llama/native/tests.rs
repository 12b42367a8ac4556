//! Parity of the native decode path: each SIMD kernel against the scalar one on odd shapes, the
//! scalar kernels against the dequantized matrix in f64, the pool at 1-3 threads against one
//! thread, and the decoder against libtorch's [`Llama::forward_last`] on the same weights.

// Index loops read as the formulas they check.
#![allow(clippy::needless_range_loop)]

use super::kernels::{self, Isa};
use super::*;
use crate::llama::{Llama, LlamaConfig, LoadOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::path::Path;
use tch::Tensor;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

const FORMATS: [WeightFormat; 5] = [
    WeightFormat::F32,
    WeightFormat::Bf16,
    WeightFormat::Int8,
    WeightFormat::Int4 { group_size: 32 },
    WeightFormat::Int4 { group_size: 64 },
];

/// Shapes with rows and columns off the vector widths (int4 needs whole 64-column groups here).
fn shapes(format: WeightFormat) -> Vec<(usize, usize)> {
    let rows = [1usize, 3, 4, 5, 7, 9, 13];
    let cols: &[usize] = match format {
        WeightFormat::Int4 { .. } => &[64, 128, 192],
        _ => &[1, 3, 7, 8, 15, 16, 17, 31, 33, 67, 100],
    };
    rows.iter()
        .flat_map(|&r| cols.iter().map(move |&c| (r, c)))
        .collect()
}

/// `max |a - b| / max |b|` (0 when both are all zero).
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

#[test]
fn scalar_kernels_compute_the_dequantized_product() {
    for format in FORMATS {
        for (rows, cols) in shapes(format) {
            let m = Matrix::from_f32(&random(rows * cols, 1), rows, cols, format).unwrap();
            let x = random(cols, 2);
            let dense = m.to_f32();
            let want: Vec<f32> = dense
                .chunks_exact(cols)
                .map(|row| {
                    row.iter()
                        .zip(&x)
                        .map(|(&w, &v)| w as f64 * v as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            let mut got = vec![0f32; rows];
            m.matvec(Isa::Scalar, &x, &mut got).unwrap();
            let err = rel_diff(&got, &want);
            assert!(err < 1e-5, "{} [{rows}, {cols}]: {err:e}", format.label());
        }
    }
}

#[test]
fn every_simd_kernel_matches_the_scalar_kernel() {
    let isas = Isa::available();
    eprintln!("kernels on this CPU: {isas:?}");
    for &isa in &isas[1..] {
        for format in FORMATS {
            let mut worst = 0f64;
            for (rows, cols) in shapes(format) {
                let m = Matrix::from_f32(&random(rows * cols, 3), rows, cols, format).unwrap();
                let x = random(cols, 4);
                let (mut want, mut got) = (vec![0f32; rows], vec![0f32; rows]);
                m.matvec(Isa::Scalar, &x, &mut want).unwrap();
                m.matvec(isa, &x, &mut got).unwrap();
                // Sums of up to 192 products of magnitude <= 1 in another order: a few ulps of
                // the sum of magnitudes.
                let bound = 1e-6 * cols as f64;
                let abs = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .fold(0.0, f64::max);
                worst = worst.max(abs);
                assert!(
                    abs <= bound,
                    "{} {} [{rows}, {cols}]: {abs:e} > {bound:e}",
                    isa.name(),
                    format.label()
                );
            }
            eprintln!(
                "{} {}: worst abs diff {worst:e}",
                isa.name(),
                format.label()
            );
        }
    }
}

#[test]
fn weighted_sums_match_the_scalar_loop() {
    for isa in Isa::available() {
        for (n, d) in [(1usize, 1usize), (3, 7), (5, 8), (9, 9), (17, 64), (4, 67)] {
            let (p, rows) = (random(n, 5), random(n * d, 6));
            let mut got = vec![f32::NAN; d];
            kernels::weighted_sum(isa, &p, &rows, &mut got);
            for j in 0..d {
                let want: f32 = (0..n).map(|t| p[t] * rows[t * d + j]).sum();
                assert!((got[j] - want).abs() < 1e-5, "{} {n}x{d}", isa.name());
            }
        }
    }
}

#[test]
fn the_pool_gives_identical_results_with_one_two_and_three_threads() {
    let isa = Isa::detect();
    for format in FORMATS {
        let (rows, cols) = (103, 192);
        let m = Matrix::from_f32(&random(rows * cols, 7), rows, cols, format).unwrap();
        let x = random(cols, 8);
        let mut alone = vec![0f32; rows];
        m.matvec(isa, &x, &mut alone).unwrap();
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads);
            for _ in 0..3 {
                let mut y = vec![f32::NAN; rows];
                m.matvec_pool(isa, &pool, &x, &mut y).unwrap();
                assert_eq!(y, alone, "{} with {threads} threads", format.label());
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert!(Matrix::from_f32(&[1.0; 5], 2, 3, WeightFormat::F32).is_err());
    assert!(Matrix::from_f32(&[], 0, 3, WeightFormat::F32).is_err());
    let e = Matrix::from_f32(&[0.5; 2 * 48], 2, 48, WeightFormat::Int4 { group_size: 48 });
    assert!(e.unwrap_err().to_string().contains("multiple of 32"));
    let e = Matrix::from_f32(&[0.5; 2 * 96], 2, 96, WeightFormat::Int4 { group_size: 64 });
    assert!(e.is_err());
    let m = Matrix::from_f32(&[0.5; 6], 2, 3, WeightFormat::Bf16).unwrap();
    let mut y = vec![0f32; 2];
    assert!(m.matvec(Isa::Scalar, &[1.0; 2], &mut y).is_err());
    assert!(m.matvec(Isa::Scalar, &[1.0; 3], &mut [0f32; 3]).is_err());
    assert!(m.row_into(2, &mut [0f32; 3]).is_err());
    // A kernel set this CPU lacks (or of another architecture) runs the scalar kernels.
    let foreign = if cfg!(target_arch = "x86_64") {
        Isa::Neon
    } else {
        Isa::Avx512
    };
    m.matvec(foreign, &[1.0; 3], &mut y).unwrap();
    assert_eq!(y, [1.5, 1.5]);
}

// ---------------------------------------------------------------------------------------------
// The decoder against libtorch.

/// Llama 3-shaped: llama3 RoPE scaling, GQA 4/2, tied; sizes multiples of 32 for int4.
fn tiny_tied() -> LlamaConfig {
    let v = json!({
        "model_type": "llama", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": true,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    });
    LlamaConfig::from_json(&v, Path::new("tiny_tied")).unwrap()
}

/// Untied with attention and MLP biases, linear RoPE scaling, multi-head (no GQA).
fn tiny_untied_biased() -> LlamaConfig {
    let v = json!({
        "model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
        "head_dim": 8, "max_position_embeddings": 64, "tie_word_embeddings": false,
        "attention_bias": true, "mlp_bias": true,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    });
    LlamaConfig::from_json(&v, Path::new("tiny_untied")).unwrap()
}

/// Random weights with non-trivial norms and biases (`Llama::random` sets norms to 1 and
/// draws biases like weights).
fn model(cfg: LlamaConfig, seed: i64) -> Llama {
    let opts = LoadOptions {
        max_positions: 64,
        ..LoadOptions::default()
    };
    let m = Llama::random(cfg, opts, seed).unwrap();
    tch::no_grad(|| {
        for (name, t) in m.trainable_parameters() {
            if name.ends_with("norm.weight") {
                let _ = t.shallow_clone().f_add_(&(t.rand_like() * 0.5)).unwrap();
            } else {
                // Larger weights than std 0.02, so that attention is far from uniform.
                let _ = t.shallow_clone().f_mul_scalar_(20.0).unwrap();
            }
        }
    });
    m
}

/// Logits of libtorch's cached path for `prompt`, then for each of `steps`, one token at a time.
fn tch_logits(m: &Llama, prompt: &[u32], steps: &[u32]) -> Vec<Vec<f32>> {
    tch::no_grad(|| {
        let mut kv = m.new_cache(1, 64).unwrap();
        let mut out = Vec::new();
        for chunk in std::iter::once(prompt).chain(steps.chunks(1)) {
            let ids: Vec<i64> = chunk.iter().map(|&t| t as i64).collect();
            let ids = Tensor::from_slice(&ids).view([1, -1]);
            let l = m.forward_last(&ids, &mut kv).unwrap();
            out.push(Vec::<f32>::try_from(&l.view([-1])).unwrap());
        }
        out
    })
}

const PROMPT: [u32; 6] = [3, 17, 42, 8, 8, 29];
const STEPS: [u32; 7] = [1, 44, 0, 13, 13, 21, 5];

/// Native logits: the prompt prefilled by libtorch (KV copied), then native steps.
fn native_after_tch_prefill(reference: &Llama, native: &NativeDecoder) -> Vec<Vec<f32>> {
    tch::no_grad(|| {
        let mut kv = reference.new_cache(1, 64).unwrap();
        let ids: Vec<i64> = PROMPT.iter().map(|&t| t as i64).collect();
        let first = reference
            .forward_last(&Tensor::from_slice(&ids).view([1, -1]), &mut kv)
            .unwrap();
        let mut cache = native.new_cache(64).unwrap();
        native.load_kv(&kv, &mut cache).unwrap();
        let mut out = vec![Vec::<f32>::try_from(&first.view([-1])).unwrap()];
        for &t in &STEPS {
            out.push(native.step(&mut cache, t).unwrap().to_vec());
        }
        out
    })
}

/// Native logits with the prompt stepped natively too.
fn native_all_steps(native: &NativeDecoder) -> Vec<Vec<f32>> {
    let mut cache = native.new_cache(64).unwrap();
    let mut out = vec![native.prefill_steps(&mut cache, &PROMPT).unwrap().to_vec()];
    for &t in &STEPS {
        out.push(native.step(&mut cache, t).unwrap().to_vec());
    }
    out
}

fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| rel_diff(a, b))
        .fold(0.0, f64::max)
}

#[test]
fn native_f32_logits_match_libtorch_after_prefill_and_steps() {
    for (cfg, seed) in [(tiny_tied(), 11), (tiny_untied_biased(), 12)] {
        let m = model(cfg, seed);
        let want = tch_logits(&m, &PROMPT, &STEPS);
        for isa in Isa::available() {
            let mut opts = NativeOptions::new(WeightFormat::F32);
            opts.isa = Some(isa);
            opts.threads = 2;
            let native = NativeDecoder::from_llama(&m, opts).unwrap();
            let after_tch = worst(&native_after_tch_prefill(&m, &native), &want);
            let stepped = worst(&native_all_steps(&native), &want);
            eprintln!(
                "f32 {}: {after_tch:e} (tch prefill), {stepped:e} (native prefill)",
                isa.name()
            );
            assert!(
                after_tch < 1e-4 && stepped < 1e-4,
                "{after_tch:e} / {stepped:e}"
            );
        }
    }
}

#[test]
fn native_formats_match_libtorch_on_the_same_dequantized_weights() {
    let formats = [
        WeightFormat::Bf16,
        WeightFormat::Int8,
        WeightFormat::Int4 { group_size: 32 },
        WeightFormat::Int4 { group_size: 64 },
    ];
    let m = model(tiny_tied(), 13);
    let f32_logits = tch_logits(&m, &PROMPT, &STEPS);
    for format in formats {
        for head in [None, Some(format)] {
            let mut opts = NativeOptions::new(format);
            opts.head = head;
            let reference = dequantized_llama(&m, &opts).unwrap();
            let want = tch_logits(&reference, &PROMPT, &STEPS);
            let native = NativeDecoder::from_llama(&m, opts).unwrap();
            let after_tch = worst(&native_after_tch_prefill(&reference, &native), &want);
            let stepped = worst(&native_all_steps(&native), &want);
            // How far the format itself moves the logits (informative; not the check).
            let vs_f32 = worst(&want, &f32_logits);
            eprintln!(
                "{} head {}: {after_tch:e} / {stepped:e} vs libtorch on the same values; the \
                 format moves the logits by {vs_f32:e}",
                format.label(),
                opts.head_format().label()
            );
            // Same values, f32 arithmetic in another order: as tight as f32.
            assert!(
                after_tch < 1e-4 && stepped < 1e-4,
                "{after_tch:e} / {stepped:e}"
            );
        }
    }
}

#[test]
fn native_greedy_generation_matches_libtorch_generate() {
    use crate::generate::{generate, GenerateOptions};
    use crate::sampling::{Sampler, SamplingConfig};
    let m = model(tiny_tied(), 14);
    let native = NativeDecoder::from_llama(&m, NativeOptions::new(WeightFormat::F32)).unwrap();
    let mut kv = m.new_cache(1, 40).unwrap();
    let mut sampler = Sampler::new(SamplingConfig::greedy()).unwrap();
    let want = tch::no_grad(|| {
        generate(
            &m,
            &mut kv,
            &mut sampler,
            &PROMPT,
            &GenerateOptions::new(30, vec![]),
            |_| {},
        )
    })
    .unwrap();
    let mut cache = native.new_cache(40).unwrap();
    let got =
        tch::no_grad(|| native.generate_greedy(&m, &mut kv, &mut cache, &PROMPT, 30, &[])).unwrap();
    assert_eq!(got.tokens, want.tokens);
    assert_eq!(cache.len(), PROMPT.len() + 29);
}

#[test]
fn decoder_errors_are_typed() {
    let m = model(tiny_tied(), 15);
    let native = NativeDecoder::from_llama(&m, NativeOptions::new(WeightFormat::F32)).unwrap();
    let mut cache = native.new_cache(2).unwrap();
    assert!(native.step(&mut cache, 97).is_err());
    native.step(&mut cache, 1).unwrap();
    native.step(&mut cache, 2).unwrap();
    assert!(matches!(
        native.step(&mut cache, 3),
        Err(crate::ModelError::CacheFull { .. })
    ));
    assert!(native.new_cache(65).is_err());
    assert!(native.prefill_steps(&mut cache, &[]).is_err());
    // The tiny model's 64 columns are not a multiple of a 48-column group.
    let bad = NativeOptions::new(WeightFormat::Int4 { group_size: 48 });
    assert!(NativeDecoder::from_llama(&m, bad).is_err());
    // A cache of another model.
    let other = NativeDecoder::from_llama(
        &model(tiny_untied_biased(), 16),
        NativeOptions::new(WeightFormat::F32),
    )
    .unwrap();
    let mut foreign = other.new_cache(4).unwrap();
    assert!(native.step(&mut foreign, 1).is_err());
}
