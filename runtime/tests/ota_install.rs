//! `tolk ota install`, `tolk config` and `tolk doctor` as processes: the config CLI, the crash
//! loop (threat row 13 of `deploy/README.md`) and power loss at every step (row 11). The
//! updater's own rows, without a process, are in `ota/tests/install.rs`.

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tolk_config::bundle::verify_bundle_dir;
use tolk_config::protocol::JobStatus;

fn tolk() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tolk"));
    c.env_remove("TOLK_OTA_FAULT").env("TOLK_LOG", "error");
    c
}

#[test]
fn config_cli_reports_every_problem() {
    let out = tolk().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("sample_rate = 16000", "sample_rate = 7000")
            .replace("threshold = 0.5", "threshold = 1.5"),
    )
    .unwrap();
    let out = tolk()
        .args(["config", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "audio.input.sample_rate: 7000 is below 8000",
        "vad.threshold: 1.5 is not inside (0, 1)",
        "ota.trusted_keys[0]",
    ] {
        assert!(err.contains(want), "{want} missing in {err}");
    }
    let good = device_config(
        t.path(),
        &t.path().join("slots"),
        "mqtt://127.0.0.1:1883",
        &[&key(1)],
        None,
    );
    let out = tolk()
        .args(["config", "check", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn install_cmd(cfg: &Path, bundle: &Path, job: &str) -> Command {
    let mut c = tolk();
    c.args([
        "ota",
        "install",
        "--config",
        cfg.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--job-id",
        job,
    ]);
    c
}

#[test]
fn row13_crash_loop_reverts_after_bounded_attempts() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let cfg = device_config(t.path(), &root, "mqtt://127.0.0.1:1883", &[&k], None);
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    // A model that kills the process on load, three times (ota.trial_attempts = 3).
    for attempt in 1..=3 {
        let out = install_cmd(&cfg, &b2, "crashy")
            .env("TOLK_OTA_FAULT", "probe:abort")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "attempt {attempt} should have crashed"
        );
        let st = read_state(&root);
        assert_eq!(st.pending.as_ref().unwrap().attempts, attempt);
        assert_eq!(st.active.as_ref().unwrap().version, 1);
    }
    // The next start gives up on it: ROLLED_BACK, v1 stays, the slot is freed.
    let out = install_cmd(&cfg, &b2, "crashy").output().unwrap();
    assert!(!out.status.success());
    let st = read_state(&root);
    assert!(st.pending.is_none());
    let lj = st.last_job.unwrap();
    assert_eq!(lj.status, JobStatus::RolledBack);
    assert!(lj.reason.contains("crash loop"), "{}", lj.reason);
    assert_active(&root, &k, 1);
}

/// Row 11: SIGKILL at every named install step, then at >= 50 random moments; after every kill
/// exactly the old or the new model is active and its files verify, and the install completes
/// on a later run.
#[test]
fn row11_power_loss_at_every_step_and_random_sigkills() {
    use rand::Rng;
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let cfg = device_config(t.path(), &root, "mqtt://127.0.0.1:1883", &[&k], None);
    // Bundles are made on demand: how many versions the random phase uses depends on timing.
    let version = |v: u64| -> PathBuf {
        let dir = t.path().join(format!("b{v}"));
        if dir.exists() {
            dir
        } else {
            bundle(&dir, v, &k)
        }
    };
    let mut target = 2u64;
    let mut active = 1u64;
    let mut kills = 0;
    let check = |active: &mut u64, target: u64| {
        let st = read_state(&root);
        let a = st.active.clone().expect("never no model");
        assert!(
            a.version == *active || a.version == target,
            "active v{} is neither v{active} nor v{target}",
            a.version
        );
        let (m, ..) = verify_bundle_dir(&root.join("slots").join(&a.slot), &[k.public()])
            .unwrap_or_else(|e| panic!("active slot does not verify after a kill: {e}"));
        assert_eq!(m.version, a.version);
        *active = a.version;
        st
    };
    // Deterministic seams after each step.
    for step in [
        "accepted",
        "staged",
        "verified",
        "installed",
        "trial",
        "probe",
        "committed",
    ] {
        let job = format!("job-{target}");
        let out = install_cmd(&cfg, &version(target), &job)
            .env("TOLK_OTA_FAULT", format!("{step}:kill"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "seam {step} did not fire");
        kills += 1;
        check(&mut active, target);
        // Restart: the same command completes the install (resuming where it stopped).
        let out = install_cmd(&cfg, &version(target), &job).output().unwrap();
        let st = check(&mut active, target);
        let lj = st.last_job.unwrap();
        assert!(
            lj.job_id == job && lj.status.is_terminal(),
            "{step}: {lj:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if step != "committed" {
            assert_eq!(active, target, "after {step}: {lj:?}");
        }
        target += 1;
    }
    // Random kills: time a full install, then kill at uniform moments inside it.
    let start = Instant::now();
    let out = install_cmd(&cfg, &version(target), &format!("job-{target}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut full = start.elapsed();
    check(&mut active, target);
    target += 1;
    let mut rng = rand::rng();
    let mut random_kills = 0;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut attempts = 0;
    while random_kills < 50 {
        attempts += 1;
        assert!(
            attempts < 1000,
            "only {random_kills} kills landed inside an install"
        );
        let job = format!("job-{target}");
        let mut child = install_cmd(&cfg, &version(target), &job)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64(rng.random_range(0.05..1.0));
        std::thread::sleep(delay);
        let finished_before = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        if finished_before {
            // The timed install was slower than this one (cold caches): narrow the window.
            full = full.mul_f64(0.8);
        } else {
            random_kills += 1;
            kills += 1;
        }
        let before = active;
        let st = check(&mut active, target);
        let phase = if active == target && before != target {
            "new active"
        } else if st.pending.is_some() {
            "pending trial"
        } else {
            "old active"
        };
        *outcomes.entry(phase.into()).or_default() += 1;
        let done = st
            .last_job
            .as_ref()
            .is_some_and(|l| l.job_id == job && l.status.is_terminal());
        if done || active == target {
            target += 1;
        }
    }
    // Finally let the current one complete.
    let job = format!("job-{target}");
    install_cmd(&cfg, &version(target), &job).output().unwrap();
    check(&mut active, target);
    println!("row 11: {kills} SIGKILLs ({random_kills} random over a {full:?} install), outcomes {outcomes:?}; active v{active}, never neither");
}

/// `tolk doctor` says what works and what to fix (broker reachable or not, slots verified).
#[test]
fn doctor_reports_broker_and_slots() {
    let k = key(1);
    let (t, root) = device_with_v1(&k);
    let mut broker = Mosquitto::start(t.path(), None);
    let cfg = device_config(t.path(), &root, &broker.url(), &[&k], None);
    let run = || {
        let out = tolk()
            .args(["doctor", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run();
    assert!(text.contains("ok    broker"), "{text}");
    assert!(
        text.contains("ok    model slots: slot a runs tiny-llama v1"),
        "{text}"
    );
    broker.stop();
    std::fs::write(root.join("slots/a/tokenizer.json"), b"tampered").unwrap();
    let text = run();
    assert!(text.contains("FAIL  broker"), "{text}");
    assert!(
        text.contains("FAIL  model slots: active slot a does not verify"),
        "{text}"
    );
    assert!(text.contains("fix: "), "{text}");
}
