//! The ways a publisher mistake or a hostile message could wedge a kiosk (deploy/README.md threat
//! rows 19-23), each through a real mosquitto and the `tolk ota agent` process: afterwards the
//! agent is still running, the old model is still active, the job (where one was named) is
//! reported FAILED with its reason, and a genuine update still installs.

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use common::*;
use rumqttc::{Client, QoS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tolk_config::bundle::{Manifest, SigningKey};
use tolk_config::protocol::{
    Block, BlockRequest, DeviceState, JobDocument, JobStatus, StatusReport, Topics, Transfer,
    DEFAULT_PREFIX, MAX_INCOMING_PACKET,
};
use tolk_ota::mqtt::{options, spawn_event_pump, BrokerSettings, MqttEvent};
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

/// A kiosk with v1 active, its agent process running against `mosq`.
struct Kiosk {
    dir: tempfile::TempDir,
    key: SigningKey,
    cfg: PathBuf,
    child: Child,
    b: BrokerSettings,
}

impl Kiosk {
    fn start(mosq: &Mosquitto, dir: tempfile::TempDir) -> Self {
        let key = key(1);
        let root = dir.path().join("slots");
        let settings = Settings {
            trusted: vec![key.public()],
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
        u.install_dir("job-1", &bundle(&dir.path().join("b1"), 1, &key))
            .unwrap();
        drop(u);
        let cfg = device_config(dir.path(), &root, &mosq.url(), &[&key], None);
        let child = spawn_agent(&cfg);
        Self {
            b: broker(&mosq.url()),
            dir,
            key,
            cfg,
            child,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn assert_running(&mut self, after: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited ({status:?}) after {after}");
        }
    }

    /// SIGKILL and start again (the retained job document is delivered again).
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn_agent(&self.cfg);
    }

    /// A genuine signed update, published the way `tolk-train publish` does it.
    fn genuine_update(&self, version: u64, job: &str) -> StatusReport {
        let b = bundle(
            &self.path().join(format!("good{version}")),
            version,
            &self.key,
        );
        let mut o = PublishOptions::new(&b, DEVICE, self.b.clone(), job);
        o.transfer = TransferMode::Mqtt { block_size: 4096 };
        o.timeout = Duration::from_secs(60);
        publish(&o, |_| {}).unwrap().0
    }
}

impl Drop for Kiosk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(cfg: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tolk"))
        .args(["ota", "agent", "--config", cfg.to_str().unwrap()])
        .env("TOLK_LOG", "warn")
        .env_remove("TOLK_OTA_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Messages as received: when, topic, payload.
type Seen = Arc<Mutex<Vec<(Instant, String, Vec<u8>)>>>;

/// Everything the device publishes (state and job status), collected by a second client.
struct Watcher {
    seen: Seen,
    topics: Topics,
    _client: Client,
}

impl Watcher {
    fn start(b: &BrokerSettings) -> Self {
        let topics = Topics::new(DEFAULT_PREFIX, DEVICE);
        let id = format!("watcher-{}", rand::random::<u32>());
        let (client, conn) = Client::new(options(b, &id, None).unwrap(), 64);
        let (rx, _) = spawn_event_pump(conn, None).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (sub, s2, t2) = (client.clone(), seen.clone(), topics.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for ev in rx {
                match ev {
                    MqttEvent::Connected => {
                        for t in [&t2.state, &t2.job_status] {
                            sub.subscribe(t.as_str(), QoS::AtLeastOnce).unwrap();
                        }
                        let _ = ready_tx.send(());
                    }
                    MqttEvent::Publish(topic, payload) => {
                        s2.lock().unwrap().push((Instant::now(), topic, payload))
                    }
                    MqttEvent::Disconnected { .. } => {}
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            seen,
            topics,
            _client: client,
        }
    }

    fn states_since(&self, t: Instant) -> Vec<DeviceState> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, topic, _)| *at >= t && *topic == self.topics.state)
            .filter_map(|(_, _, p)| serde_json::from_slice(p).ok())
            .collect()
    }

    fn wait_state(&self, what: &str, want: impl Fn(&DeviceState) -> bool) -> DeviceState {
        let t0 = Instant::now() - Duration::from_secs(3600);
        wait_for(Duration::from_secs(30), || {
            self.states_since(t0).into_iter().rev().find(|s| want(s))
        })
        .unwrap_or_else(|| panic!("no state with {what}; saw {:?}", self.states_since(t0)))
    }

    fn wait_report(&self, job: &str, timeout: Duration) -> StatusReport {
        wait_for(timeout, || {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, topic, _)| *topic == self.topics.job_status)
                .filter_map(|(_, _, p)| serde_json::from_slice::<StatusReport>(p).ok())
                .find(|r| r.job_id == job && r.status.is_terminal())
        })
        .unwrap_or_else(|| panic!("no final status for {job} within {timeout:?}"))
    }
}

/// A raw MQTT client for the attacker / mistaken publisher.
fn raw_client(b: &BrokerSettings) -> (Client, mpsc::Receiver<MqttEvent>) {
    let id = format!("raw-{}", rand::random::<u32>());
    let mut o = options(b, &id, None).unwrap();
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, conn) = Client::new(o, 64);
    let (rx, _) = spawn_event_pump(conn, None).unwrap();
    loop {
        match rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            MqttEvent::Connected => return (client, rx),
            MqttEvent::Disconnected { error, .. } => panic!("raw client: {error}"),
            MqttEvent::Publish(..) => {}
        }
    }
}

/// Publishes a retained job document and answers the device's block requests with `files`
/// (whatever they hold), as a careless or hostile server would. Returns when `done` is set.
fn serve_blocks(
    b: &BrokerSettings,
    doc: &JobDocument,
    files: Vec<Vec<u8>>,
    block_size: usize,
) -> (Client, Arc<std::sync::atomic::AtomicUsize>) {
    let topics = Topics::new(DEFAULT_PREFIX, DEVICE);
    let (client, rx) = raw_client(b);
    client
        .subscribe(topics.block_request.as_str(), QoS::AtLeastOnce)
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    client
        .publish(
            topics.job_notify.as_str(),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(doc).unwrap(),
        )
        .unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (c2, n2, job) = (client.clone(), served.clone(), doc.job_id.clone());
    std::thread::spawn(move || {
        for ev in rx {
            let MqttEvent::Publish(topic, payload) = ev else {
                continue;
            };
            let Ok(req) = BlockRequest::decode(&payload) else {
                continue;
            };
            if topic != topics.block_request || req.job_id != job {
                continue;
            }
            let Some(data) = files.get(req.file as usize) else {
                continue;
            };
            for index in req.blocks {
                let start = index as usize * block_size;
                if start >= data.len().max(1) {
                    continue;
                }
                let end = (start + block_size).min(data.len());
                let block = Block {
                    job_id: job.clone(),
                    file: req.file,
                    index,
                    data: data[start..end].to_vec(),
                };
                if c2
                    .publish(
                        topics.block_data.as_str(),
                        QoS::AtLeastOnce,
                        false,
                        block.encode(),
                    )
                    .is_err()
                {
                    return;
                }
                n2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    (client, served)
}

fn clear_retained_job(client: &Client) {
    let topics = Topics::new(DEFAULT_PREFIX, DEVICE);
    client
        .publish(topics.job_notify.as_str(), QoS::AtLeastOnce, true, vec![])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

/// Row 19 (crash loop): a manifest signed by a trusted key that lists `manifest.sig/x`. Before
/// the fix it passed the path check and the first block write failed with `File exists`,
/// ending the agent, again on every restart while the job stayed retained.
#[test]
fn row19_manifest_naming_a_path_under_its_signature_fails_the_job() {
    let t = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::start(t.path(), None);
    let mut kiosk = Kiosk::start(&mosq, t);
    let watch = Watcher::start(&kiosk.b);
    watch.wait_state("online", |s| s.status == "online");

    // A genuine v2 bundle, plus one more listed file under `manifest.sig/`, signed.
    let b2 = bundle(&kiosk.path().join("b2"), 2, &kiosk.key);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b2.join("manifest.json")).unwrap()).unwrap();
    let evil = b"a file the device must never try to write".to_vec();
    m["files"].as_array_mut().unwrap().push(serde_json::json!({
        "path": "manifest.sig/x",
        "size": evil.len(),
        "sha256": Manifest::digest(&evil),
    }));
    let mbytes = serde_json::to_vec_pretty(&m).unwrap();
    let sig = serde_json::to_vec(&tolk_config::bundle::Signatures {
        signatures: vec![kiosk.key.sign(&mbytes)],
    })
    .unwrap();
    let parsed: Manifest = serde_json::from_slice(&mbytes).unwrap();
    let files: Vec<Vec<u8>> = parsed
        .files
        .iter()
        .map(|f| {
            if f.path == "manifest.sig/x" {
                evil.clone()
            } else {
                std::fs::read(b2.join(&f.path)).unwrap()
            }
        })
        .collect();
    let doc = JobDocument::install("evil-1", &mbytes, &sig, Transfer::Mqtt { block_size: 4096 });
    let (server, _served) = serve_blocks(&kiosk.b, &doc, files, 4096);
    let r = watch.wait_report("evil-1", Duration::from_secs(30));
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert!(r.reason.contains("manifest.sig/x"), "{r:?}");
    std::thread::sleep(Duration::from_secs(1));
    kiosk.assert_running("a manifest listing manifest.sig/x");

    // A restart with the document still retained: no crash loop.
    kiosk.restart();
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    kiosk.assert_running("a restart into the retained job");
    assert!(watch
        .states_since(since)
        .iter()
        .any(|s| s.status == "online" && s.active.as_ref().unwrap().version == 1));

    clear_retained_job(&server);
    let r = kiosk.genuine_update(2, "job-2");
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
}

/// Row 20 (reconnect loop): a retained job document above the device's old packet limit made
/// rumqttc drop the connection on every delivery. Now the device reads up to
/// MAX_INCOMING_PACKET, refuses the document, reports it in its state and stays connected; the
/// shipped broker limit refuses anything larger at publish; and on a broker without that limit a
/// larger packet costs a backed-off reconnect, not a tight loop.
#[test]
fn row20_oversize_retained_job_document_without_a_reconnect_loop() {
    let t = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::start(t.path(), None);
    let mut kiosk = Kiosk::start(&mosq, t);
    let watch = Watcher::start(&kiosk.b);
    watch.wait_state("online", |s| s.status == "online");
    let topics = Topics::new(DEFAULT_PREFIX, DEVICE);

    // 300 kB: above the 128 KiB job-document limit and the old 132 KB packet limit.
    let (attacker, _rx) = raw_client(&kiosk.b);
    let big = format!(
        "{{\"job_id\":\"big-1\",\"pad\":\"{}\"}}",
        "x".repeat(300_000)
    );
    let since = Instant::now();
    attacker
        .publish(
            topics.job_notify.as_str(),
            QoS::AtLeastOnce,
            true,
            big.clone().into_bytes(),
        )
        .unwrap();
    let st = watch.wait_state("the refusal", |s| s.refused.is_some());
    let refused = st.refused.unwrap();
    assert_eq!(refused.bytes, big.len());
    assert!(refused.reason.contains("above"), "{refused:?}");
    std::thread::sleep(Duration::from_secs(5));
    let offline = watch
        .states_since(since)
        .iter()
        .filter(|s| s.status == "offline")
        .count();
    assert_eq!(offline, 0, "the device lost its connection {offline} times");
    kiosk.assert_running("an oversize job document");
    // A genuine update replaces the retained document and installs.
    let r = kiosk.genuine_update(2, "job-2");
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");

    // 2 MiB on the shipped broker limit: refused by the broker, never reaches the device.
    let since = Instant::now();
    let huge = vec![b'{'; 2 << 20];
    let (attacker2, _rx2) = raw_client(&kiosk.b);
    let _ = attacker2.publish(topics.job_notify.as_str(), QoS::AtLeastOnce, true, huge);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        watch
            .states_since(since)
            .iter()
            .all(|s| s.status == "online"),
        "a packet the shipped broker refuses reached the device"
    );
    kiosk.assert_running("a 2 MiB publish");
}

/// Row 20, misconfigured broker: without `max_packet_size` mosquitto stores a 2 MiB retained
/// job document. Each delivery breaks the device's connection (it cannot read even the topic
/// of a packet above MAX_INCOMING_PACKET); the reconnects back off and the state names the
/// cause.
#[test]
fn row20_packet_above_the_device_limit_on_a_broker_without_one_backs_off() {
    let t = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::start_with_limit(t.path(), None, None);
    let mut kiosk = Kiosk::start(&mosq, t);
    let watch = Watcher::start(&kiosk.b);
    watch.wait_state("online", |s| s.status == "online");
    let topics = Topics::new(DEFAULT_PREFIX, DEVICE);
    let (attacker, _rx) = raw_client(&kiosk.b);
    let since = Instant::now();
    attacker
        .publish(
            topics.job_notify.as_str(),
            QoS::AtLeastOnce,
            true,
            vec![b' '; MAX_INCOMING_PACKET * 2],
        )
        .unwrap();
    let st = watch.wait_state("the oversize packet named", |s| {
        s.refused.as_ref().is_some_and(|r| r.topic.is_empty())
    });
    let r = st.refused.unwrap();
    assert!(r.bytes > MAX_INCOMING_PACKET, "{r:?}");
    assert!(r.reason.contains("max_packet_size"), "{r:?}");
    std::thread::sleep(Duration::from_secs(
        10u64.saturating_sub(since.elapsed().as_secs()),
    ));
    let offline = watch
        .states_since(since)
        .iter()
        .filter(|s| s.status == "offline")
        .count();
    // 300 ms doubling: at most 6 attempts in 10 s (a tight loop made 20 in 6 s).
    assert!((1..=6).contains(&offline), "{offline} disconnects in 10 s");
    kiosk.assert_running("a packet above its limit");
    clear_retained_job(&attacker);
    let r = kiosk.genuine_update(2, "job-2");
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
}

/// Row 21 (job-id squatting): an unsigned document under the id the genuine update will use.
/// Before the fix the device remembered its FAILED outcome and answered the genuine signed job
/// with it, never installing.
#[test]
fn row21_unsigned_document_cannot_squat_a_job_id() {
    let t = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::start(t.path(), None);
    let kiosk = Kiosk::start(&mosq, t);
    let watch = Watcher::start(&kiosk.b);
    watch.wait_state("online", |s| s.status == "online");
    // `tolk-train publish` names jobs {name}-v{version}: guessable.
    let job = "tiny-v2";
    let doc = JobDocument::install(
        job,
        br#"{"name":"tiny","version":2}"#,
        br#"{"signatures":[]}"#,
        Transfer::Mqtt { block_size: 4096 },
    );
    let (attacker, _rx) = raw_client(&kiosk.b);
    attacker
        .publish(
            Topics::new(DEFAULT_PREFIX, DEVICE).job_notify.as_str(),
            QoS::AtLeastOnce,
            true,
            serde_json::to_vec(&doc).unwrap(),
        )
        .unwrap();
    let r = watch.wait_report(job, Duration::from_secs(30));
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert!(r.reason.contains("unsigned"), "{r:?}");
    let r = kiosk.genuine_update(2, job);
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    watch.wait_state("v2 active", |s| {
        s.active.as_ref().is_some_and(|a| a.version == 2)
    });
}

/// Row 22 (FIFO hang): a `file://` bundle whose listed file is a FIFO. Before the fix the
/// agent's only thread blocked forever opening it.
#[test]
fn row22_fifo_in_a_url_bundle_fails_the_job() {
    let t = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::start(t.path(), None);
    let mut kiosk = Kiosk::start(&mosq, t);
    let watch = Watcher::start(&kiosk.b);
    watch.wait_state("online", |s| s.status == "online");
    let b2 = bundle(&kiosk.path().join("b2"), 2, &kiosk.key);
    let victim = b2.join("model/model.safetensors");
    std::fs::remove_file(&victim).unwrap();
    let ok = Command::new("mkfifo").arg(&victim).status().unwrap();
    assert!(ok.success(), "mkfifo");
    let base = url::Url::from_directory_path(std::fs::canonicalize(&b2).unwrap())
        .unwrap()
        .to_string();
    let mut o = PublishOptions::new(&b2, DEVICE, kiosk.b.clone(), "fifo-1");
    o.transfer = TransferMode::Url(base);
    o.timeout = Duration::from_secs(30);
    let (r, _) = publish(&o, |_| {}).expect("the device answers instead of hanging");
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert!(r.reason.contains("not a regular file"), "{r:?}");
    kiosk.assert_running("a FIFO in a bundle");
    let r = kiosk.genuine_update(3, "job-3");
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");

    // The same bundle on a USB stick: `tolk ota install` ends with the reason.
    let b4 = bundle(&kiosk.path().join("b4"), 4, &kiosk.key);
    let victim = b4.join("model/model.safetensors");
    std::fs::remove_file(&victim).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&victim)
        .status()
        .unwrap()
        .success());
    let mut install = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .args(["ota", "install", "--config"])
        .arg(&kiosk.cfg)
        .arg("--bundle")
        .arg(&b4)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(30), || install.try_wait().unwrap());
    let Some(status) = status else {
        let _ = install.kill();
        panic!("tolk ota install hangs on a FIFO");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(install.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("not a regular file"), "{err}");
}

/// Row 23 (endless re-fetch): a server whose bytes for one file never match the signed hash.
/// Before the fix the device fetched it again forever, reporting DOWNLOADING and answering
/// every other job "busy".
#[test]
fn row23_bytes_that_never_match_fail_the_job_after_the_refetch_cap() {
    let t = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::start(t.path(), None);
    let kiosk = Kiosk::start(&mosq, t);
    let watch = Watcher::start(&kiosk.b);
    watch.wait_state("online", |s| s.status == "online");
    let b2 = bundle(&kiosk.path().join("b2"), 2, &kiosk.key);
    let mbytes = std::fs::read(b2.join("manifest.json")).unwrap();
    let sbytes = std::fs::read(b2.join("manifest.sig")).unwrap();
    let m = Manifest::parse(&mbytes).unwrap();
    // Every file as signed, except one whose last byte the server always gets wrong.
    let files: Vec<Vec<u8>> = m
        .files
        .iter()
        .map(|f| {
            let mut d = std::fs::read(b2.join(&f.path)).unwrap();
            if f.path == "config.json" || f.path.ends_with("config.json") {
                *d.last_mut().unwrap() ^= 0x20;
            }
            d
        })
        .collect();
    let doc = JobDocument::install(
        "bad-bytes-1",
        &mbytes,
        &sbytes,
        Transfer::Mqtt { block_size: 4096 },
    );
    let (server, served) = serve_blocks(&kiosk.b, &doc, files, 4096);
    let r = watch.wait_report("bad-bytes-1", Duration::from_secs(60));
    assert_eq!(r.status, JobStatus::Failed, "{r:?}");
    assert!(r.reason.contains("failed the signed hash"), "{r:?}");
    let blocks = served.load(std::sync::atomic::Ordering::Relaxed);
    clear_retained_job(&server);
    let r = kiosk.genuine_update(2, "job-2");
    assert_eq!(r.status, JobStatus::Succeeded, "{r:?}");
    println!("row 23: {blocks} blocks served before the job failed");
}
