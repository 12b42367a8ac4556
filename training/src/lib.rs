//! Tolk's host side: data, training recipes and the model-release tools.
//!
//! - [`corpus`]: the synthetic en-fr speech corpus and the JSONL manifests (`synth-corpus`);
//! - [`units`]: unit extraction for manifests, the units file, BPE tokenizers (`units`,
//!   `tokenizer`);
//! - [`sft`]: supervised fine-tuning data: examples per strategy, loss masks, batches;
//! - [`eval`]: `tolk-train eval`, held-out BLEU / METEOR / unit error rate / MCD / ASR-BLEU of a
//!   translator folder;
//! - [`preference`]: DPO / SimPO losses and training, preference pairs;
//! - [`package`]: assembling a translator folder from SFT, k-means and vocoder outputs;
//! - [`metrics`]: BLEU, chrF, METEOR, WER, MCD (`score`);
//! - [`bundle`]: signing a bundle folder (`tolk-train bundle sign`); the manifest format itself
//!   is defined once in `tolk_config::bundle`;
//! - [`vocoder`]: training a unit HiFi-GAN vocoder per target language (`vocoder`);
//! - [`export`]: a translator folder -> a signed, versioned bundle, never half-written (`export`);
//! - [`quantize`]: int8 / int4 weight-only quantization of a translator's decoder, with a report
//!   against f32 (`quantize`);
//! - [`toolkit`]: what the trainers share: AdamW, LR schedules, run folders, checkpoints,
//!   progress, plots, recipe sections, LoRA adapters.
//!
//! Sending a signed bundle to one device over MQTT (`tolk-train publish`) is
//! `tolk_ota::publish`, beside the device agent it talks to.

pub mod bundle;
pub mod corpus;
pub mod eval;
pub mod export;
pub mod metrics;
pub mod package;
pub mod preference;
pub mod quantize;
pub mod sft;
pub mod toolkit;
pub mod units;
pub mod vocoder;
