//! The host CLI (`tolk-train bundle sign`, `bundle verify`, `publish`) against a device agent
//! through a real mosquitto started on a free loopback port.

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use common::*;

/// The host CLI as a release engineer runs it: sign, verify, publish to a kiosk.
#[test]
fn tolk_train_sign_verify_publish_cli() {
    let t = tempfile::tempdir().unwrap();
    let k = key(1);
    let root = device_root(t.path(), &k);
    let keyfile = t.path().join("release.key");
    std::fs::write(&keyfile, k.to_secret_string()).unwrap();
    let dir = t.path().join("b2");
    write_model(&dir, 2);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tolk-train"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = dir.to_str().unwrap();
    let (ok, out, err) = cli(&[
        "bundle",
        "sign",
        d,
        "--key",
        keyfile.to_str().unwrap(),
        "--name",
        "tiny-llama",
        "--version",
        "2",
        "--compatible",
        COMPATIBLE,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("signed tiny-llama v2"), "{out}");
    let (ok, out, err) = cli(&[
        "bundle",
        "verify",
        d,
        "--trusted-key",
        &k.public().to_string(),
    ]);
    assert!(ok && out.contains("verify"), "{out}{err}");
    let (ok, _, err) = cli(&[
        "bundle",
        "verify",
        d,
        "--trusted-key",
        &key(2).public().to_string(),
    ]);
    assert!(!ok && err.contains("untrusted"), "{err}");
    let broker = Mosquitto::start(t.path(), None);
    let b = broker_settings(&broker.url(), None, false);
    let dev = AgentThread::start(&root, &k, b.clone());
    let (ok, out, err) = cli(&[
        "publish",
        d,
        "--device",
        DEVICE,
        "--broker",
        &broker.url(),
        "--block-size",
        "4096",
        "--timeout-s",
        "60",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"SUCCEEDED\""), "{out}");
    state_of(&b, |s| s.active.as_ref().is_some_and(|a| a.version == 2));
    dev.stop();
}
