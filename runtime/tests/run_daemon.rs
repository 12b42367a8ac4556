//! `tolk run`, the kiosk daemon, as a process: input from a GStreamer pipeline string, output to
//! another, the built-in demo model as the fallback model (no OTA slot active), subtitles as JSON
//! lines, the Prometheus endpoint, and a clean exit at the end of the source (`--once`).

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use std::process::Command;

#[test]
fn daemon_translates_from_a_gstreamer_source_to_a_gstreamer_sink() {
    let t = tempfile::tempdir().unwrap();
    let slots = t.path().join("slots");
    let cfg = common::device_config(
        t.path(),
        &slots,
        "mqtt://127.0.0.1:1",
        &[&common::key(1)],
        None,
    );
    let demo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
    let input = demo.join("samples/en.wav");
    let output = t.path().join("out.wav");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "device = \"default\"\nsample_rate = 16000",
            &format!(
                "device = \"default\"\npipeline = \"filesrc location={} ! wavparse ! audioconvert ! audioresample\"\nsample_rate = 16000",
                input.display()
            ),
        )
        .replace(
            "device = \"default\"\nsample_rate = 24000",
            &format!(
                "device = \"default\"\npipeline = \"audioconvert ! audioresample ! wavenc ! filesink location={}\"\nsample_rate = 24000",
                output.display()
            ),
        )
        .replace("/usr/share/tolk/models/demo", demo.to_str().unwrap())
        .replace("bind = \"127.0.0.1:9464\"", "bind = \"127.0.0.1:0\"");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .args(["run", "--events", "--no-mqtt", "--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tolk run failed: {stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finals: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "subtitle_final")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    println!("subtitles: {finals:?}");
    assert_eq!(finals.len(), 2, "two sentences in en.wav: {stdout}");
    assert!(finals.iter().all(|t| !t.is_empty()));
    assert!(events.iter().any(|e| e["event"] == "utterance_done"));
    // The sink pipeline wrote a WAV (wavenc) at the configured output rate.
    let wav = tolk_models::audio::wav::read_wav(&output).unwrap();
    assert_eq!(wav.sample_rate, 24_000);
    assert!(
        wav.samples.len() > 24_000 / 2,
        "{} samples",
        wav.samples.len()
    );
    assert!(wav.samples.iter().all(|x| x.is_finite()));
}
