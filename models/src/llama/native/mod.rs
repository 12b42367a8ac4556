//! A batch-1 decode path of our own for the Llama decoder on the CPU.
//!
//! libtorch's matrix-vector product (MKL `sgemv`) reaches only part of the read bandwidth on the
//! AMD EPYC bench machine, and every small operation of a decode step goes through the dispatcher.
//! [`NativeDecoder`] copies the weights of a loaded [`Llama`] once, in f32, bf16, int8 (per-row
//! scales) or int4 (group-wise scales), and runs a decode step with SIMD kernels picked at run
//! time ([`kernels`]) over a persistent thread pool ([`pool`]). Prefill stays on libtorch (its
//! batched matrix products are fast): [`NativeDecoder::load_kv`] copies the prompt's
//! [`crate::llama::KvCache`] into a [`NativeCache`] and decoding continues natively
//! ([`NativeDecoder::generate_greedy`]); [`NativeDecoder::prefill_steps`] prefills token by token
//! without libtorch.
//!
//! - [`kernels`]: y = W x for each format, scalar / AVX2+FMA / AVX-512F / NEON;
//! - [`matrix`]: weight storage, conversion and quantization, the product over the pool;
//! - [`pool`]: the thread pool;
//! - [`decoder`]: the decode step, its cache, greedy generation.
//!
//! [`dequantized_llama`] builds the libtorch model holding exactly the values of a native
//! format (the reference of the parity tests, and what `tolk model bench --engine both` compares
//! tokens against).

pub mod decoder;
pub mod kernels;
pub mod matrix;
pub mod pool;

pub use decoder::{argmax, NativeCache, NativeDecoder, NativeOptions};
pub use kernels::Isa;
pub use matrix::{Matrix, WeightFormat};
pub use pool::ThreadPool;

use crate::llama::{Llama, LoadOptions};
use crate::{ModelError, Result};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// A libtorch f32 CPU copy of `model` whose matrices hold the values a [`NativeDecoder`] built
/// with `opts` computes with: the projections rounded through `opts.format`, the LM head (the
/// tied embedding too) through [`NativeOptions::head_format`]; norms, biases and an untied
/// embedding unchanged.
pub fn dequantized_llama(model: &Llama, opts: &NativeOptions) -> Result<Llama> {
    let cfg = model.config().clone();
    let head_format = opts.head_format();
    let mut tensors = HashMap::new();
    for (name, t) in model.named_tensors() {
        let format = if name.ends_with("_proj.weight") {
            Some(opts.format)
        } else if name == "lm_head.weight"
            || (cfg.tie_word_embeddings && name == "model.embed_tokens.weight")
        {
            Some(head_format)
        } else {
            None
        };
        let t = match format {
            None => t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?,
            Some(f) => {
                let size = t.size();
                let [rows, cols] = size[..] else {
                    return Err(ModelError::InvalidArgument(format!(
                        "{name}: expected a matrix, got shape {size:?}"
                    )));
                };
                let m = Matrix::from_f32(
                    &crate::llama::quant::host_f32(&t)?,
                    rows as usize,
                    cols as usize,
                    f,
                )
                .map_err(|e| ModelError::InvalidArgument(format!("{name}: {e}")))?;
                Tensor::from_slice(&m.to_f32()).f_view([rows, cols])?
            }
        };
        tensors.insert(name, t);
    }
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: Kind::Float,
        max_positions: model.max_positions(),
    };
    Llama::from_tensors(cfg, tensors, opts)
}

#[cfg(test)]
mod tests;
