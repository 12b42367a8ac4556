//! Safetensors checkpoints (model, vocoder, extractor weights arrive in OTA bundles).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tolk_models::checkpoint::read_safetensors_bytes;

fuzz_target!(|data: &[u8]| {
    let _ = read_safetensors_bytes(
        data,
        Path::new("fuzz.safetensors"),
        tch::Kind::Float,
        |_| true,
    );
});
