//! The training toolkit: what the SFT, preference and vocoder trainers share, one place each
//! (torchtune's `training/`).
//!
//! - [`optim`]: AdamW (decay on matrices or on every tensor, f32 master weights for bf16),
//!   global gradient-norm clipping, its state saved for exact resume;
//! - [`schedule`]: learning-rate schedules (warm-up + cosine; stepwise exponential decay);
//! - [`run_dir`]: files of a run's output folder (I/O errors with the path, atomic writes,
//!   JSON-lines metrics);
//! - [`checkpoint`]: crash-safe, rotated checkpoints named by `latest`, the trainer state and
//!   optimizer files in them, and why a run cannot resume;
//! - [`progress`]: the progress bar (or plain lines without a terminal);
//! - [`plot`]: training curves as PNG;
//! - [`recipe`]: reading and checking TOML recipes, the shared `[run]` section, its command-line
//!   overrides and the AdamW defaults and checks;
//! - [`labels`]: the label value that carries no loss;
//! - [`lora`]: LoRA adapters on a Llama decoder in peft's format (create, load, save, merge).

pub mod checkpoint;
pub mod labels;
pub mod lora;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod recipe;
pub mod run_dir;
pub mod schedule;
