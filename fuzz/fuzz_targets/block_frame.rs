//! Data-plane block frames (`blocks/data`) and block requests (`blocks/request`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tolk_config::protocol::{Block, BlockRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = Block::decode(data) {
        // A frame that decodes is exactly what encoding its content gives back.
        assert_eq!(b.encode(), data);
    }
    let _ = BlockRequest::decode(data);
});
