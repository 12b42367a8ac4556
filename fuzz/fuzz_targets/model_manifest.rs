//! `tolk-model.json`, the manifest of a translator folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tolk_models::translator::manifest::ModelManifest;

fuzz_target!(|data: &[u8]| {
    let _ = ModelManifest::from_slice(data, Path::new("tolk-model.json"));
});
