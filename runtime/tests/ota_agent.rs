//! The kiosk process (`tolk ota agent`) and the host publisher talking through a real
//! mosquitto: install, SIGKILL (last will), restart (true state), SIGTERM (graceful offline).

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use common::*;
use rumqttc::{Client, Event, Packet, QoS};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tolk_config::protocol::{DeviceState, JobStatus, Topics, DEFAULT_PREFIX};
use tolk_ota::mqtt::{options, BrokerSettings};
use tolk_ota::publish::{publish, PublishOptions, TransferMode};
use tolk_ota::{LlamaProbe, Settings, Updater};

const DEVICE: &str = "kiosk-0001"; // the id in the default config

fn broker(url: &str) -> BrokerSettings {
    BrokerSettings {
        url: url.into(),
        keep_alive_s: 5,
        ..Default::default()
    }
}

/// Waits for a retained state on the device's topic that satisfies `want`.
fn wait_state(b: &BrokerSettings, want: impl Fn(&DeviceState) -> bool) -> DeviceState {
    let topic = Topics::new(DEFAULT_PREFIX, DEVICE).state;
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(30) {
        let (c, mut conn) = Client::new(
            options(b, &format!("reader-{}", rand::random::<u32>()), None).unwrap(),
            8,
        );
        c.subscribe(topic.as_str(), QoS::AtLeastOnce).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(1) {
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
                conn.recv_timeout(Duration::from_millis(200))
            {
                if let Ok(s) = serde_json::from_slice::<DeviceState>(&p.payload) {
                    if want(&s) {
                        return s;
                    }
                    last = Some(s);
                }
            }
        }
    }
    panic!("no matching retained state; last {last:?}");
}

fn agent(cfg: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tolk"))
        .args(["ota", "agent", "--config", cfg.to_str().unwrap()])
        .env("TOLK_LOG", "warn")
        .env_remove("TOLK_OTA_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kiosk_process_and_publisher_through_mosquitto() {
    let t = tempfile::tempdir().unwrap();
    let k = key(1);
    let root = t.path().join("slots");
    let settings = Settings {
        trusted: vec![k.public()],
        compatible: COMPATIBLE.into(),
        runtime_version: tolk_config::RUNTIME_VERSION.into(),
        max_clock_skew_s: 60,
        max_bundle_bytes: 1 << 40,
        trial_attempts: 3,
    };
    let mut u = Updater::open(
        &root,
        settings,
        Box::new(LlamaProbe::new(Duration::from_secs(30))),
    )
    .unwrap();
    u.install_dir("job-1", &bundle(&t.path().join("b1"), 1, &k))
        .unwrap();
    drop(u);
    let mosq = Mosquitto::start(t.path(), None);
    let b = broker(&mosq.url());
    let cfg = device_config(t.path(), &root, &mosq.url(), &[&k], None);

    let mut kiosk = agent(&cfg);
    let st = wait_state(&b, |s| s.status == "online");
    assert_eq!(st.active.unwrap().version, 1);

    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let mut o = PublishOptions::new(&b2, DEVICE, b.clone(), "job-2");
    o.transfer = TransferMode::Mqtt { block_size: 2048 };
    o.timeout = Duration::from_secs(60);
    let mut seen = Vec::new();
    let (r, stats) = publish(&o, |r| seen.push(r.status)).unwrap();
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    println!("agent process: {stats:?}, statuses {seen:?}");

    // Power cut of the kiosk: the broker publishes the last will.
    kiosk.kill().unwrap();
    kiosk.wait().unwrap();
    wait_state(&b, |s| s.status == "offline");
    // Restart: the true state is back, v2 active.
    let mut kiosk = agent(&cfg);
    let st = wait_state(&b, |s| s.status == "online");
    assert_eq!(st.active.unwrap().version, 2);
    assert_eq!(st.last_job.unwrap().status, JobStatus::Succeeded);
    // SIGTERM: graceful stop, offline said by the agent itself.
    unsafe_sigterm(kiosk.id());
    let status = kiosk.wait().unwrap();
    assert!(status.success(), "agent exit {status:?}");
    wait_state(&b, |s| s.status == "offline");
}

fn unsafe_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
