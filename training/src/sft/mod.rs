//! Supervised fine-tuning (PROST-LLM stage 1, arXiv 2601.16618).
//!
//! - [`data`]: manifests + speech units -> training sequences for the three strategies
//!   (vanilla, tri-task, chain of modality) in both directions, with the loss mask, and the
//!   seeded, resumable [`data::Batcher`]. The sequence layout itself is defined once in
//!   [`tolk_models::prompt`].
//! - [`recipe`]: the TOML recipe; [`train`]: the loop (AdamW, warm-up + cosine, clipping,
//!   accumulation, exact-resume checkpoints, evaluation, the loss plot; the pieces shared with
//!   the other trainers are [`crate::toolkit`]'s).
//! - [`bench`]: `tolk-train sft-bench`, the SFT step against the same step in PyTorch.

pub mod bench;
pub mod data;
pub mod recipe;
pub mod train;

pub use data::{
    build_examples, Batch, BatchConfig, BatchPosition, Batcher, Direction, Example, SftData,
    SftDataConfig, SftDataError, SkipReason, SkipReport, Strategy, UnitSource, IGNORE_INDEX,
};
pub use recipe::SftRecipe;
pub use train::{train, SftArgs, SftError, SftSummary};
