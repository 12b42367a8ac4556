//! The Llama-family decoder (Hugging Face `LlamaForCausalLM` layout).
//!
//! Matches transformers' `models/llama/modeling_llama.py`: RMSNorm computed in f32, SwiGLU MLP,
//! grouped-query attention with rotate-half RoPE (plain, linear or llama3 scaling), tied or untied
//! LM head. The caller owns the [`KvCache`].

mod config;
pub mod gguf;
mod kv_cache;
pub mod lora;
mod model;
pub mod native;
pub mod quant;
mod rope;

pub use config::{LlamaConfig, RopeScaling};
pub use kv_cache::KvCache;
pub use lora::{LoraAdapters, LoraPair, LoraTarget};
pub use model::{LayerTensors, Llama, LoadOptions};
pub use quant::{QuantConfig, QuantRuntime, QuantScheme};
pub use rope::{inverse_frequencies, RotaryTables};
