//! Tolk's host side: data, training recipes and the model-release tools.
//!
//! - [`corpus`]: the synthetic en-fr speech corpus and the JSONL manifests (`synth-corpus`);
//! - [`units`]: unit extraction for manifests, the units file, BPE tokenizers (`units`,
//!   `tokenizer`);
//! - [`sft`]: supervised fine-tuning data: examples per strategy, loss masks, batches;
//! - [`metrics`]: BLEU, chrF, METEOR, WER, MCD (`score`);
//! - [`bundle`]: signing a bundle folder (`tolk-train bundle sign`); the manifest format itself
//!   is defined once in `tolk_config::bundle`;
//! - [`publish`]: sending a signed bundle to one device over MQTT (`tolk-train publish`).

pub mod bundle;
pub mod corpus;
pub mod metrics;
pub mod publish;
pub mod sft;
pub mod units;
