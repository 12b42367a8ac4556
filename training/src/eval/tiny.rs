//! A tiny translator folder with random weights, for tests and smoke runs. The definition lives
//! in `tolk_models::translator::testing` (the runtime needs it too and cannot depend on this
//! crate); this module re-exports it.

pub use tolk_models::translator::testing::{
    tiny_llama_config, tiny_vocoder_config, write_random_translator, TinyTranslatorSpec,
};
