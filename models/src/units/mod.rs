//! Discrete speech units: a HuBERT-family encoder (or MFCC) followed by k-means, offline and
//! streaming (method.md section 5: mHuBERT base, layer 11, K = 1000).
//!
//! - [`hubert`]: the encoder from a Hugging Face `HubertModel` folder, cut at layer L;
//! - [`kmeans`]: centroids, nearest-centroid assignment, deduplication, mini-batch fitting;
//! - [`whisper`]: Whisper's audio encoder (log-mel, conv stem, Transformer) cut at layer L, with
//!   its own stream that runs the conv stem once per sample;
//! - [`extractor`]: [`UnitExtractor`] (shared model) and [`UnitStream`] (per-stream state);
//! - [`bench`]: real-time factor of unit extraction, for the CLI.

pub mod bench;
pub mod extractor;
pub mod hubert;
pub mod kmeans;
pub mod whisper;

/// A discrete speech unit: a k-means cluster index in `0..K`, the one unit-id type from the
/// extractor through the decoder's prompt and output to the vocoder.
pub type UnitId = u32;

pub use extractor::{
    mfcc_50hz_config, FeatureStream, Featurizer, FrameStream, HubertFeaturizer, MfccFeaturizer,
    StreamOptions, UnitExtractor, UnitStream,
};
pub use hubert::{Hubert, HubertConfig, HubertLoadOptions};
pub use kmeans::{dedup, fit_minibatch, Deduped, FitConfig, KMeans};
pub use whisper::{
    StreamPositions, Whisper, WhisperConfig, WhisperFeaturizer, WhisperLoadOptions, WhisperStream,
};
