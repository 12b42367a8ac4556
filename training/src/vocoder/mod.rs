//! `tolk-train vocoder`: trains a unit HiFi-GAN (fairseq CodeHiFiGAN) for one language on the
//! speech of a manifest and its units, and writes a folder `tolk_models::vocoder::CodeHiFiGan::
//! load` reads (`config.json` + `model.safetensors`; the training state lives in `OUT/train/`:
//! `checkpoint/` for exact resume, `samples/` with a held-out utterance per evaluation).
//!
//! - [`recipe`]: the TOML recipe (`training/recipes/vocoder-*.toml`);
//! - [`data`]: the language's audio + units, random fixed-length segments;
//! - [`train`]: the HiFi-GAN loop (mel L1 x 45 + duration MSE + feature matching + LSGAN,
//!   AdamW of [`crate::toolkit::optim`]), checkpoints, evaluation, progress bar.

pub mod data;
pub mod recipe;
pub mod train;

pub use recipe::Recipe;
pub use train::{train_vocoder, EvalPoint, LogPoint, VocoderArgs, VocoderError, VocoderSummary};
