//! The OTA health probe on translator bundles: a healthy folder passes with the whole chain run,
//! a broken one fails with the reason, a tight budget fails on latency.

use std::time::Duration;

use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_ota::{HealthProbe, ModelProbe};

#[test]
fn translator_bundles_are_probed_end_to_end() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("slot");
    write_random_translator(&dir, &TinyTranslatorSpec::default()).unwrap();
    let report = ModelProbe::new(Duration::from_secs(60))
        .probe(&dir)
        .unwrap_or_else(|e| panic!("healthy translator failed the probe: {e}"));
    println!("probe: {}", report.summary);
    assert!(report.summary.contains("en-fr"), "{}", report.summary);

    let err = ModelProbe::new(Duration::from_nanos(1))
        .probe(&dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("latency"), "{err}");

    std::fs::remove_file(dir.join("vocoder-fr/model.safetensors")).unwrap();
    let err = ModelProbe::new(Duration::from_secs(60))
        .probe(&dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("load") && err.contains("model.safetensors"),
        "{err}"
    );
}
