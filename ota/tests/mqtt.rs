//! A kiosk's update agent and the host publisher talking through a real mosquitto started on a
//! free loopback port (threat rows 3, 8, 9, 10, 14, 16, 18 of `deploy/README.md` over MQTT). The
//! same through the `tolk-train` CLI is `training/tests/publish_cli.rs`.

mod common;

use common::*;
use rumqttc::{Client, Event, Packet, QoS};
use std::path::Path;
use std::time::Duration;
use tolk_config::protocol::{JobStatus, Topics, DEFAULT_PREFIX};
use tolk_ota::mqtt::{options, BrokerSettings};
use tolk_ota::publish::{publish, Chaos, PublishOptions, PublishStats, TransferMode};
use tolk_ota::{HealthProbe, ProbeError, ProbeReport, Updater};

fn run_publish(
    o: &PublishOptions,
) -> (
    tolk_config::protocol::StatusReport,
    PublishStats,
    Vec<JobStatus>,
) {
    let mut seen = Vec::new();
    let (r, s) = publish(o, |r| seen.push(r.status)).unwrap();
    (r, s, seen)
}

/// Rows 3, 8 and 9 over MQTT: an oversize packet is survived; blocks dropped, reordered and
/// duplicated still give one install; the URL path works; a replayed job changes nothing.
#[test]
fn publish_over_mqtt_with_hostile_data_plane() {
    let t = tempfile::tempdir().unwrap();
    let k = key(1);
    let root = device_root(t.path(), &k);
    let broker = Mosquitto::start(t.path(), None);
    let b = broker_settings(&broker.url(), None, false);
    let dev = AgentThread::start(&root, &k, b.clone());
    state_of(&b, |s| s.status == "online");

    // Row 8: an oversize block (200 kB, above the block limit) and a malformed job document:
    // both refused by their decoders, the agent goes on.
    let topics = Topics::new(DEFAULT_PREFIX, DEVICE);
    let (c, mut conn) = Client::new(options(&b, "attacker", None).unwrap(), 8);
    c.publish(
        topics.block_data.as_str(),
        QoS::AtLeastOnce,
        false,
        vec![7u8; 200_000],
    )
    .unwrap();
    c.publish(
        topics.job_notify.as_str(),
        QoS::AtLeastOnce,
        false,
        b"{not json".to_vec(),
    )
    .unwrap();
    for _ in 0..20 {
        let _ = conn.recv_timeout(Duration::from_millis(100));
    }

    // Row 9: every 3rd block dropped once, the rest duplicated and reversed.
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let mut o = PublishOptions::new(&b2, DEVICE, b.clone(), "job-2");
    o.transfer = TransferMode::Mqtt { block_size: 1024 };
    o.timeout = Duration::from_secs(90);
    o.chaos = Chaos {
        drop_every: Some(3),
        duplicate: true,
        reverse: true,
    };
    let (r, stats, seen) = run_publish(&o);
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert!(
        stats.blocks_dropped > 0 && stats.blocks_sent > 2 * stats.blocks_dropped,
        "{stats:?}"
    );
    for s in [
        JobStatus::Queued,
        JobStatus::Downloading,
        JobStatus::Verifying,
        JobStatus::Installing,
        JobStatus::Trial,
    ] {
        assert!(seen.contains(&s), "{s:?} not reported: {seen:?}");
    }
    let st = state_of(&b, |s| s.active.as_ref().is_some_and(|a| a.version == 2));
    assert_eq!(st.highest_version, 2);
    println!("row 9 over MQTT: {stats:?}, statuses {seen:?}");

    // file:// URL transfer, verified by the same signed sizes and hashes.
    let b3 = bundle(&t.path().join("b3"), 3, &k);
    let mut o3 = PublishOptions::new(&b3, DEVICE, b.clone(), "job-3");
    o3.transfer = TransferMode::Url(url_of(&b3));
    let (r, ..) = run_publish(&o3);
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");

    // Row 3: replay of the captured job-2 document: it stays a finished job, v3 stays active,
    // and the answer is the device's current state, not job-2's old SUCCEEDED.
    let (r, ..) = run_publish(&o);
    assert_eq!((r.job_id.as_str(), r.status), ("job-2", JobStatus::Failed));
    assert!(
        r.reason.contains("replay") && r.reason.contains("version 3"),
        "{r:?}"
    );
    let st = state_of(&b, |s| s.active.as_ref().is_some_and(|a| a.version == 3));
    assert_eq!(
        st.last_job.unwrap().job_id,
        "job-3",
        "a replay is not a new job"
    );
    // The same bundle under a new job id is a rollback.
    let mut o4 = o.clone();
    o4.job_id = "job-2-replay".into();
    let (r, ..) = run_publish(&o4);
    assert_eq!(r.status, JobStatus::Failed);
    assert!(r.reason.contains("rollback"), "{r:?}");
    dev.stop();
    // Graceful stop leaves "offline" retained.
    state_of(&b, |s| s.status == "offline");
}

fn url_of(dir: &Path) -> String {
    url::Url::from_directory_path(std::fs::canonicalize(dir).unwrap())
        .unwrap()
        .to_string()
}

/// Row 16: the broker is killed and restarted mid-transfer; both sides reconnect, the device
/// re-subscribes on ConnAck and asks again for what it misses; the install completes.
#[test]
fn broker_restart_mid_transfer_resumes() {
    let t = tempfile::tempdir().unwrap();
    let k = key(1);
    let root = device_root(t.path(), &k);
    let mut broker = Mosquitto::start(t.path(), None);
    let b = broker_settings(&broker.url(), None, false);
    let dev = AgentThread::start(&root, &k, b.clone());
    let b2 = t.path().join("b2");
    write_model(&b2, 2);
    let noise: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(b2.join("extra.bin"), noise).unwrap();
    tolk_config::bundle::sign_bundle_dir(&b2, &info(2), &[&k]).unwrap();
    let mut o = PublishOptions::new(&b2, DEVICE, b.clone(), "job-big");
    o.transfer = TransferMode::Mqtt { block_size: 1024 };
    o.timeout = Duration::from_secs(120);
    let pubr = std::thread::spawn(move || run_publish(&o));
    // Wait until some but not all blocks arrived, then restart the broker.
    let meta = root.join("staging/job-big.meta");
    let got = wait_for(Duration::from_secs(60), || {
        let n: usize = std::fs::read_dir(&meta)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".blocks"))
            .map(|e| {
                std::fs::read(e.path())
                    .unwrap_or_default()
                    .iter()
                    .filter(|b| **b != 0)
                    .count()
            })
            .sum();
        (n > 20).then_some(n)
    });
    assert!(got.is_some(), "transfer never started");
    broker.restart();
    let (r, stats, _) = pubr.join().unwrap();
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert!(stats.connects >= 2, "publisher reconnected: {stats:?}");
    println!(
        "row 16: broker restarted after {} blocks; {stats:?}",
        got.unwrap()
    );
    state_of(&b, |s| s.active.as_ref().is_some_and(|a| a.version == 2));
    dev.stop();
}

/// A probe that "crashes the process" (panics, caught by the test as if the process died).
struct Crash;
impl HealthProbe for Crash {
    fn probe(&self, _: &Path) -> Result<ProbeReport, ProbeError> {
        panic!("model aborted on load");
    }
}

/// Row 14: a revert happens while the device is offline; on its next connection the retained
/// state and the job status say ROLLED_BACK with v1 active, whatever the server believed. The
/// last will marks an abruptly lost device offline.
#[test]
fn true_state_is_reported_after_a_revert_and_last_will() {
    let t = tempfile::tempdir().unwrap();
    let k = key(1);
    let root = device_root(t.path(), &k);
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    for _ in 0..3 {
        let mut u = Updater::open(&root, device_settings(&[&k]), Box::new(Crash)).unwrap();
        let _ = u.recover();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if u.state().pending.is_some() {
                u.run_trial()
            } else {
                u.install_dir("job-crash", &b2)
            }
        }));
        assert!(r.is_err());
    }
    assert_eq!(read_state(&root).pending.unwrap().attempts, 3);
    let broker = Mosquitto::start(t.path(), None);
    let b = broker_settings(&broker.url(), None, false);
    let dev = AgentThread::start(&root, &k, b.clone());
    let st = state_of(&b, |s| s.status == "online");
    assert_eq!(st.active.as_ref().unwrap().version, 1);
    let lj = st.last_job.unwrap();
    assert_eq!(
        (lj.job_id.as_str(), lj.status),
        ("job-crash", JobStatus::RolledBack)
    );
    dev.stop();
    // Restart again: the same true state.
    let dev = AgentThread::start(&root, &k, b.clone());
    let st = state_of(&b, |s| s.status == "online");
    assert_eq!(st.last_job.unwrap().status, JobStatus::RolledBack);
    dev.stop();
    // Last will: a connection that dies without DISCONNECT gets "offline" retained.
    let topic = Topics::new(DEFAULT_PREFIX, DEVICE).state;
    let (c, mut conn) = Client::new(
        options(
            &b,
            DEVICE,
            Some((
                topic.clone(),
                br#"{"status":"offline","device":"kiosk-test"}"#.to_vec(),
            )),
        )
        .unwrap(),
        8,
    );
    c.publish(
        topic.as_str(),
        QoS::AtLeastOnce,
        true,
        br#"{"status":"online"}"#.to_vec(),
    )
    .unwrap();
    for _ in 0..10 {
        let _ = conn.recv_timeout(Duration::from_millis(100));
    }
    drop(conn); // socket closed, no DISCONNECT packet
    drop(c);
    let got = retained(&b, &topic, |p| {
        String::from_utf8_lossy(p).contains("offline")
    });
    assert!(got.is_some(), "last will not delivered");
}

fn connects(b: &BrokerSettings) -> Result<(), String> {
    let (_c, mut conn) = Client::new(
        options(b, &format!("probe-{}", rand::random::<u32>()), None).map_err(|e| e.to_string())?,
        4,
    );
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        match conn.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Err(e)) => return Err(e.to_string()),
            _ => {}
        }
    }
    Err("no ConnAck".into())
}

/// Row 18: a broker with TLS and `require_certificate`; the device with its client certificate
/// installs a bundle; clients without a certificate, or without TLS, are refused.
#[test]
fn mutual_tls_broker() {
    let t = tempfile::tempdir().unwrap();
    let tls = make_tls(t.path());
    let k = key(1);
    let root = device_root(t.path(), &k);
    let broker = Mosquitto::start(t.path(), Some(&tls));
    let with_cert = broker_settings(&broker.url(), Some(&tls), true);
    connects(&with_cert).unwrap();
    let no_cert = broker_settings(&broker.url(), Some(&tls), false);
    let e = connects(&no_cert).unwrap_err();
    println!("row 18: client without certificate refused: {e}");
    let plain = broker_settings(&format!("mqtt://127.0.0.1:{}", broker.port), None, false);
    assert!(
        connects(&plain).is_err(),
        "plain MQTT accepted by the TLS listener"
    );
    let dev = AgentThread::start(&root, &k, with_cert.clone());
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let mut o = PublishOptions::new(&b2, DEVICE, with_cert.clone(), "job-tls");
    o.transfer = TransferMode::Mqtt { block_size: 4096 };
    o.timeout = Duration::from_secs(60);
    let (r, ..) = run_publish(&o);
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    dev.stop();
}

/// Row 10 (partly): a publisher that black-holes every block the first time it is asked for;
/// the device's stall timeout asks again and the install completes. The old model stays active
/// meanwhile.
#[test]
fn row10_black_holed_blocks_are_requested_again() {
    let t = tempfile::tempdir().unwrap();
    let k = key(1);
    let root = device_root(t.path(), &k);
    let broker = Mosquitto::start(t.path(), None);
    let b = broker_settings(&broker.url(), None, false);
    let dev = AgentThread::start(&root, &k, b.clone());
    let b2 = bundle(&t.path().join("b2"), 2, &k);
    let mut o = PublishOptions::new(&b2, DEVICE, b.clone(), "job-slow");
    o.transfer = TransferMode::Mqtt { block_size: 4096 };
    o.timeout = Duration::from_secs(60);
    o.chaos = Chaos {
        drop_every: Some(1),
        ..Default::default()
    };
    let pubr = std::thread::spawn(move || run_publish(&o));
    // While the transfer is stalled, v1 is still the active model.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_state(&root).active.unwrap().version, 1);
    let (r, stats, _) = pubr.join().unwrap();
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    assert!(stats.blocks_dropped > 0 && stats.requests > 1, "{stats:?}");
    println!("row 10: every block black-holed once; {stats:?}");
    dev.stop();
}
