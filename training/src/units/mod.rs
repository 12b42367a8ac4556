//! Data preparation for training: speech units per audio file and a text tokenizer.
//!
//! - [`file`]: the units file (JSONL, one line per audio file, keyed by the manifest's path);
//! - [`extract`]: `tolk-train units` (MFCC, HuBERT or Whisper features, k-means loaded or
//!   fitted);
//! - [`probe`]: `tolk-train units-probe` (which layer's units carry words across voices);
//! - [`tokenizer`]: `tolk-train tokenizer` (byte-level BPE for models trained from scratch).

pub mod extract;
pub mod file;
pub mod probe;
pub mod tokenizer;

pub use extract::{mfcc_50hz_config, run_units, ExtractorKind, UnitsArgs, UnitsSummary};
pub use file::{read_units, write_units, UnitsFileError, UnitsTable, UNITS_FORMAT_VERSION};
pub use probe::{run_probe, ProbeArgs, ProbeReport};
pub use tokenizer::{run_tokenizer, train_bpe, TokenizerArgs, TokenizerSummary};
