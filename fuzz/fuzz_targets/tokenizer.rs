//! `tokenizer.json` (Hugging Face tokenizers format), then a round of encoding and decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tolk_models::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_bytes(data, Path::new("tokenizer.json")) else {
        return;
    };
    if let Ok(ids) = tok.encode("Où est la gare ? Where is the station?", true) {
        let _ = tok.decode(&ids, false);
    }
});
