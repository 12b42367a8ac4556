//! Preference optimization (PROST-LLM stage 3, `../shared/reference/method.md` sections 2-3).
//!
//! - [`losses`]: sequence log-probs over completion tokens, the DPO sigmoid loss (with
//!   conservative label smoothing) and the SimPO loss, as pure functions;
//! - [`lora`]: LoRA adapters in their own VarStore, peft's initialisation and file format,
//!   merging into the base weights.

pub mod lora;
pub mod losses;

pub use lora::{count_parameters, Lora, LoraConfig, LoraError};
pub use losses::{
    dpo_sigmoid_loss, sequence_logps, simpo_loss, LogpReduction, LossError, PreferenceLoss,
};
