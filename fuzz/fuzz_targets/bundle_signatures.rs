//! `manifest.sig` and the signature check: the input as the signature file of a fixed manifest,
//! and as manifest bytes signed by the trusted key (the parse that follows a good signature).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tolk_config::bundle::{verify_manifest, Manifest, Signatures, SigningKey};

const MANIFEST: &[u8] = include_bytes!("../corpus/bundle_manifest/manifest.json");

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_seed([7; 32]);
    let trusted = [key.public()];
    // A signature file nobody with the key wrote never verifies.
    assert!(verify_manifest(MANIFEST, data, &trusted).is_err());
    let sig = serde_json::to_vec(&Signatures {
        signatures: vec![key.sign(data)],
    })
    .unwrap();
    let verified = verify_manifest(data, &sig, &trusted);
    assert_eq!(verified.is_ok(), Manifest::parse(data).is_ok());
});
