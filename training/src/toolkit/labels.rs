//! The label convention of every token-level loss here: a position whose label is
//! [`IGNORE_INDEX`] carries no loss (prompt, padding), as PyTorch's `cross_entropy(ignore_index)`
//! and Hugging Face's `labels` use it.

/// Label value of positions without loss (prompt, padding), as PyTorch's `ignore_index`.
pub const IGNORE_INDEX: i64 = -100;
