//! GGUF files (`tolk model import-gguf`): header, metadata, tensor infos, the Llama config and
//! tokenizer built from them, and the dequantization of every tensor.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tolk_models::llama::gguf::{llama_config, tokenizer_json, GgufFile};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), Path::new("fuzz.gguf")) else {
        return;
    };
    let _ = llama_config(&file);
    let _ = tokenizer_json(&file);
    for t in file.tensors() {
        // The data is bounds checked at parse time; keep a huge (but present) tensor cheap.
        if t.n_elements <= 1 << 20 {
            let _ = file.dequantize(&t.name);
        }
    }
});
