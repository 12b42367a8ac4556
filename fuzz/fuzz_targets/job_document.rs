//! MQTT job documents (`jobs/notify`, retained, from anyone who can publish there).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tolk_config::protocol::{JobDocument, Operation, MAX_JOB_DOCUMENT};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = JobDocument::decode(data) else {
        return;
    };
    if doc.operation == Operation::Install {
        assert!(doc.manifest_bytes().is_ok() && doc.signature_bytes().is_ok());
        assert!(doc.transfer.is_some());
    }
    // Re-encoding gives the same document.
    let again = serde_json::to_vec(&doc).unwrap();
    if again.len() <= MAX_JOB_DOCUMENT {
        assert_eq!(JobDocument::decode(&again).unwrap(), doc);
    }
});
