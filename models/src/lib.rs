//! Tolk's model code over libtorch (tch).
//!
//! - [`audio`]: WAV I/O, conditioning, resampling, Kaldi features, Silero VAD, endpointing;
//! - [`llama`]: the Llama-family decoder (Hugging Face layout), its config, RoPE and KV cache;
//! - [`checkpoint`]: safetensors loading with name and shape validation;
//! - [`tokenizer`]: Hugging Face `tokenizer.json` through the `tokenizers` crate;
//! - [`sampling`]: greedy / temperature / top-k / top-p sampling with allowed-token masks;
//! - [`generate`]: the prefill + decode loop used by the CLI, the benchmark and the runtime;
//! - [`vocab`]: vocabulary extension with unit and task tokens;
//! - [`prompt`]: the sequence formats (ASR, S2TT, S2ST, chain of modality) shared by training
//!   and the runtime;
//! - [`stream`]: the streaming contract (push / finish / reset) of every chunked stage and
//!   its chunked-equals-offline check;
//! - [`translator`]: the speech translator engine (extractor + decoder + vocoders) and its
//!   per-stream sessions.

pub mod audio;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod generate;
pub mod llama;
pub mod prompt;
pub mod sampling;
pub mod stream;
pub mod tokenizer;
pub mod translator;
pub mod units;
pub mod vocab;
pub mod vocoder;

pub use error::{ModelError, Result};
