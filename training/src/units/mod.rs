//! Data preparation for training: speech units per audio file and a text tokenizer.
//!
//! - [`file`]: the units file (JSONL, one line per audio file, keyed by the manifest's path);
//! - [`extract`]: `tolk-train units` (MFCC or HuBERT features, k-means loaded or fitted);
//! - [`tokenizer`]: `tolk-train tokenizer` (byte-level BPE for models trained from scratch).

pub mod extract;
pub mod file;
pub mod tokenizer;

pub use extract::{mfcc_50hz_config, run_units, ExtractorKind, UnitsArgs, UnitsSummary};
pub use file::{read_units, write_units, UnitsFileError, UnitsTable, UNITS_FORMAT_VERSION};
pub use tokenizer::{run_tokenizer, train_bpe, TokenizerArgs, TokenizerSummary};
