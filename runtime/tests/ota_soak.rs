//! OTA fault soak: `tolk run` translates live-paced audio while `tolk ota agent` receives signed
//! translator updates over MQTT, the broker is killed and restarted at random moments, the agent
//! is SIGKILLed at random moments (power loss in whatever phase it is: download, verify, write,
//! switch, trial) and started again, and the publisher drops blocks. Afterwards: every utterance that ended was translated or reported
//! dropped, exactly one verified slot is active (the last update that succeeded), and neither
//! process's memory grew.
//!
//! `TOLK_SOAK_SECS` sets the length: 75 s in `make test`, 1800 s in `make soak-ota`, which also
//! writes `target/soak-ota.json` (figures in deploy/README.md).

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tolk_config::bundle::{sign_bundle_dir, verify_bundle_dir};
use tolk_config::protocol::JobStatus;
use tolk_ota::mqtt::BrokerSettings;
use tolk_ota::publish::{publish, Chaos, PublishOptions, TransferMode};

const DEVICE: &str = "kiosk-0001";

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// A signed translator bundle: the demo model under a new version.
fn translator_bundle(dir: &Path, version: u64) -> PathBuf {
    copy_dir(&demo_dir(), dir);
    sign_bundle_dir(dir, &info(version), &[&key(1)]).unwrap();
    dir.to_path_buf()
}

/// A child process killed when the test ends, passed or not.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Largest RSS in the first and the last quarter of the samples (seconds since the process
/// started, KiB) taken after `warm_s`.
fn memory_growth(samples: &[(f64, u64)], warm_s: f64) -> (u64, u64) {
    let warm: Vec<_> = samples.iter().filter(|(t, _)| *t >= warm_s).collect();
    assert!(warm.len() >= 8, "only {} memory samples", warm.len());
    let q = (warm.len() / 4).max(1);
    let first = warm.iter().take(q).map(|(_, r)| *r).max().unwrap_or(0);
    let last = warm
        .iter()
        .rev()
        .take(q)
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(0);
    (first, last)
}

#[test]
fn translation_continues_while_updates_arrive_and_the_broker_fails() {
    let secs: u64 = std::env::var("TOLK_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("TOLK_SOAK_SECS is a number of seconds"))
        .unwrap_or(75);
    let t = tempfile::tempdir().unwrap();
    let slots = t.path().join("slots");
    let mut mosq = Mosquitto::start(t.path(), None);
    let b = BrokerSettings {
        url: mosq.url(),
        keep_alive_s: 5,
        ..Default::default()
    };
    let cfg = device_config(t.path(), &slots, &mosq.url(), &[&key(1)], None);
    // Live-paced input (identity sync=true keeps the file at real time), looped by `tolk run`
    // at each end of file; output discarded by GStreamer.
    let input = demo_dir().join("samples/en.wav");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "device = \"default\"\nsample_rate = 16000",
            &format!(
                "device = \"default\"\npipeline = \"filesrc location={} ! wavparse ! identity sync=true ! audioconvert ! audioresample\"\nsample_rate = 16000",
                input.display()
            ),
        )
        .replace(
            "device = \"default\"\nsample_rate = 24000",
            "device = \"default\"\npipeline = \"audioconvert ! audioresample ! fakesink sync=false\"\nsample_rate = 24000",
        )
        .replace("/usr/share/tolk/models/demo", demo_dir().to_str().unwrap())
        .replace("bind = \"127.0.0.1:9464\"", "bind = \"127.0.0.1:0\"")
        // The probe shares two cores with `tolk run` here; its latency is not under test.
        .replace("probe_latency_budget_ms = 5000", "probe_latency_budget_ms = 30000");
    std::fs::write(&cfg, text).unwrap();

    let tolk = env!("CARGO_BIN_EXE_tolk");
    let spawn_agent = || -> Proc {
        Proc(
            Command::new(tolk)
                .args(["ota", "agent", "--config", cfg.to_str().unwrap()])
                .env("TOLK_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut agent = spawn_agent();
    let mut run = Proc(
        Command::new(tolk)
            .args(["run", "--events", "--config", cfg.to_str().unwrap()])
            .env("TOLK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let events = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let events = events.clone();
        let stdout = run.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("tolk run printed a non-JSON line ({e}): {line}"));
                events.lock().unwrap().push(v);
            }
        })
    };
    let stderr_reader = {
        let stderr = run.0.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s).unwrap();
            s
        })
    };

    // Updates, one after the other; each publish is retried under a new job id when the broker
    // restart cut it off. Every third update's blocks are partly dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, b, dir) = (stop.clone(), b.clone(), t.path().to_path_buf());
        std::thread::spawn(move || {
            let mut version = 2u64;
            let mut attempt = 0u32;
            let mut since = Instant::now();
            let mut outcomes: Vec<(u64, String)> = Vec::new();
            let mut last_ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let bdir = dir.join(format!("v{version}"));
                if !bdir.exists() {
                    translator_bundle(&bdir, version);
                }
                attempt += 1;
                let job = format!("soak-v{version}-{attempt}");
                let mut o = PublishOptions::new(&bdir, DEVICE, b.clone(), &job);
                o.transfer = TransferMode::Mqtt { block_size: 65536 };
                o.timeout = Duration::from_secs(90);
                if version.is_multiple_of(3) {
                    o.chaos = Chaos {
                        drop_every: Some(5),
                        duplicate: false,
                        reverse: false,
                    };
                }
                match publish(&o, |_| {}) {
                    Ok((r, _)) if r.status == JobStatus::Succeeded => {
                        outcomes.push((version, "succeeded".into()));
                        last_ok = version;
                        version += 1;
                        attempt = 0;
                        since = Instant::now();
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    Ok((r, _)) => {
                        outcomes.push((version, format!("{:?}: {}", r.status, r.reason)));
                        // "busy" while an earlier attempt's transfer still runs: let it end.
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    Err(e) => outcomes.push((version, format!("publisher: {e}"))),
                }
                assert!(
                    since.elapsed() < Duration::from_secs(300),
                    "v{version} did not install within 5 minutes: {outcomes:?}"
                );
            }
            (last_ok, outcomes)
        })
    };

    // Broker kills at random moments, every 20-60 s, down 1-4 s.
    let start = Instant::now();
    let mut rng = rand::rng();
    let mut broker_restarts = 0;
    let mut agent_kills = 0;
    // Agent kills in the first half of long soaks, so that the last agent process lives long
    // enough for its memory to be judged.
    let mut agent_started = start;
    let mut next_agent_kill = if secs >= 600 {
        start + Duration::from_secs(rand::Rng::random_range(&mut rng, 30..60))
    } else {
        start + Duration::from_secs(secs * 2)
    };
    let mut rss_run = Vec::new();
    let mut rss_agent = Vec::new();
    let mut next_kill = start + Duration::from_secs(rand::Rng::random_range(&mut rng, 20..40));
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(2));
        let now = start.elapsed().as_secs_f64();
        assert!(run.0.try_wait().unwrap().is_none(), "tolk run exited");
        assert!(agent.0.try_wait().unwrap().is_none(), "the agent exited");
        if let Some(r) = rss_kib(run.0.id()) {
            rss_run.push((now, r));
        }
        if let Some(r) = rss_kib(agent.0.id()) {
            rss_agent.push((agent_started.elapsed().as_secs_f64(), r));
        }
        if Instant::now() >= next_kill
            && start.elapsed() + Duration::from_secs(15) < Duration::from_secs(secs)
        {
            mosq.stop();
            std::thread::sleep(Duration::from_millis(rand::Rng::random_range(
                &mut rng,
                1000..4000,
            )));
            mosq.restart();
            broker_restarts += 1;
            next_kill =
                Instant::now() + Duration::from_secs(rand::Rng::random_range(&mut rng, 20..60));
        }
        if Instant::now() >= next_agent_kill && start.elapsed() < Duration::from_secs(secs / 2) {
            agent.0.kill().unwrap();
            agent.0.wait().unwrap();
            agent_kills += 1;
            rss_agent.clear(); // a new process: memory is compared within one
            agent = spawn_agent();
            agent_started = Instant::now();
            next_agent_kill =
                Instant::now() + Duration::from_secs(rand::Rng::random_range(&mut rng, 30..90));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (last_ok, outcomes) = publisher.join().expect("publisher thread");
    sigterm(run.0.id());
    let status = run.0.wait().unwrap();
    reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert!(status.success(), "tolk run: {status:?}\n{stderr}");
    sigterm(agent.0.id());
    agent.0.wait().unwrap();

    // Every utterance that ended was translated or reported dropped.
    let events = events.lock().unwrap();
    let ids = |kind: &str| -> std::collections::BTreeSet<u64> {
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .map(|e| e["utterance"].as_u64().unwrap())
            .collect()
    };
    let ended = ids("utterance_end");
    let done = ids("utterance_done");
    let dropped = ids("utterance_dropped");
    let lost: Vec<_> = ended
        .iter()
        .filter(|u| !done.contains(u) && !dropped.contains(u))
        .collect();
    assert!(
        lost.is_empty(),
        "utterances lost without a report: {lost:?}"
    );
    let loops = events
        .iter()
        .filter(|e| e["event"] == "source_ended")
        .count();
    // en.wav holds two sentences: each full pass ends two utterances.
    assert!(
        ended.len() >= 2 * loops && ended.len() <= 2 * loops + 2,
        "{} utterances ended over {loops} passes of the file",
        ended.len()
    );
    let finals: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "subtitle_final")
        .filter_map(|e| e["text"].as_str())
        .collect();
    // Greedy decoding of the same audio: the same two subtitles on every pass.
    let distinct: std::collections::BTreeSet<&str> = finals.iter().copied().collect();
    assert!(
        distinct.len() <= 2,
        "translations changed during the soak: {distinct:?}"
    );

    // Exactly one verified slot active: the last update that succeeded.
    let st = read_state(&slots);
    let active = st.active.expect("a model is active");
    assert!(st.pending.is_none(), "a trial is still pending");
    assert_eq!(active.version, last_ok, "{outcomes:?}");
    verify_bundle_dir(&slots.join("slots").join(&active.slot), &[key(1).public()]).unwrap();
    assert!(last_ok >= 2, "no update installed: {outcomes:?}");

    // After 20 s both have loaded a translator (tolk run at start, the agent in its first
    // probe); a restarted agent is given 90 s.
    let (run_first, run_last) = memory_growth(&rss_run, 20.0);
    let agent_warm = if agent_kills > 0 { 90.0 } else { 20.0 };
    let (agent_first, agent_last) = memory_growth(&rss_agent, agent_warm);
    // Flat: the last quarter's peak within 10 % (+16 MiB slack for allocator noise) of the
    // first quarter's.
    for (who, a, z) in [
        ("tolk run", run_first, run_last),
        ("agent", agent_first, agent_last),
    ] {
        assert!(
            z <= a + a / 10 + 16 * 1024,
            "{who}: RSS peak grew from {a} KiB to {z} KiB"
        );
    }
    let report = serde_json::json!({
        "seconds": secs,
        "cpu": cpu_name(),
        "passes_of_the_file": loops,
        "utterances_ended": ended.len(),
        "translated": done.len(),
        "dropped": dropped.len(),
        "lost": lost.len(),
        "updates_installed": outcomes.iter().filter(|(_, o)| o == "succeeded").count(),
        "publish_attempts": outcomes.len(),
        "broker_restarts": broker_restarts,
        "agent_sigkills": agent_kills,
        "active_version": active.version,
        "rss_kib": {
            "tolk_run_first_quarter_peak": run_first, "tolk_run_last_quarter_peak": run_last,
            "agent_first_quarter_peak": agent_first, "agent_last_quarter_peak": agent_last,
        },
        "outcomes": outcomes.iter().map(|(v, o)| format!("v{v}: {o}")).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if let Ok(path) = std::env::var("TOLK_SOAK_REPORT") {
        std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default()
}
