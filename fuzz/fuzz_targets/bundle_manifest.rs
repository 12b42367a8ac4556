//! `manifest.json` as a device parses it, then the device's policy checks on what parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tolk_config::bundle::{check_relative_path, Manifest, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    // What parses keeps the rules an install relies on.
    assert!(!m.files.is_empty());
    for f in &m.files {
        assert!(check_relative_path(&f.path).is_ok(), "{:?}", f.path);
        assert_eq!(f.sha256.len(), 64);
    }
    let policy = Policy {
        compatible: "tolk-fuzz".into(),
        runtime_version: "0.1.0".into(),
        now: 1_800_000_000,
        max_clock_skew_s: 60,
        highest_version: 1,
        max_bundle_bytes: 1 << 30,
    };
    let _ = policy.check(&m);
});
