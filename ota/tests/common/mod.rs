//! Shared helpers of the OTA tests: tiny signed model bundles, test devices (policy, updater, a
//! device with v1 active), device configs, and a real mosquitto on a free loopback port. The
//! tests of the `tolk` and `tolk-train` binaries (`runtime/tests/`, `training/tests/`) include
//! this file through `#[path]`.
#![allow(dead_code)]

use rumqttc::{Client, Event, Packet, QoS};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tolk_config::bundle::{sign_bundle_dir, verify_bundle_dir, BundleInfo, SigningKey};
use tolk_config::protocol::{DeviceState, Topics, DEFAULT_PREFIX};
use tolk_models::llama::{Llama, LlamaConfig, LoadOptions};
use tolk_ota::agent::{self, AgentOptions};
use tolk_ota::mqtt::{options, BrokerSettings};
use tolk_ota::{LlamaProbe, Settings, Updater};

pub const COMPATIBLE: &str = "test-hw-1";

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed([seed; 32])
}

pub fn tiny_config() -> LlamaConfig {
    let v = serde_json::json!({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true
    });
    LlamaConfig::from_json(&v, Path::new("tiny/config.json")).unwrap()
}

/// A tiny random Llama in `dir/model/` plus a small tokenizer-like file, not yet signed.
pub fn write_model(dir: &Path, seed: i64) -> Llama {
    let m = Llama::random(tiny_config(), LoadOptions::default(), seed).unwrap();
    m.save(&dir.join("model")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), format!("{{\"seed\": {seed}}}")).unwrap();
    m
}

pub fn info(version: u64) -> BundleInfo {
    BundleInfo {
        name: "tiny-llama".into(),
        version,
        compatible: COMPATIBLE.into(),
        min_runtime: "0.1.0".into(),
        expires: now() + 86_400,
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed bundle of a tiny model at `dir`.
pub fn bundle(dir: &Path, version: u64, signer: &SigningKey) -> PathBuf {
    write_model(dir, version as i64);
    sign_bundle_dir(dir, &info(version), &[signer]).unwrap();
    dir.to_path_buf()
}

/// A device configuration file for tests (slot root, broker, trusted keys).
pub fn device_config(
    dir: &Path,
    slot_dir: &Path,
    broker: &str,
    trusted: &[&SigningKey],
    tls: Option<&Tls>,
) -> PathBuf {
    let keys: Vec<String> = trusted
        .iter()
        .map(|k| format!("\"{}\"", k.public()))
        .collect();
    let tls_lines = tls
        .map(|t| {
            format!(
                "ca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
                t.ca.display(),
                t.client_cert.display(),
                t.client_key.display()
            )
        })
        .unwrap_or_default();
    let text = tolk_config::DEFAULT_CONFIG
        .replace("/var/lib/tolk/models", slot_dir.to_str().unwrap())
        .replace("mqtts://broker.example.net:8883", broker)
        .replace(
            "ca = \"/etc/tolk/tls/ca.pem\"\n# Mutual TLS: both or neither.\nclient_cert = \"/etc/tolk/tls/kiosk.pem\"\nclient_key = \"/etc/tolk/tls/kiosk.key\"\n",
            &tls_lines,
        )
        .replace(
            "[\"ed25519:0000000000000000000000000000000000000000000000000000000000000000\"]",
            &format!("[{}]", keys.join(", ")),
        )
        .replace("tolk-jetson-orin-nano-jp6", COMPATIBLE)
        .replace("stall_timeout_s = 10", "stall_timeout_s = 1")
        .replace("block_size = 65536", "block_size = 4096");
    let path = dir.join("tolk.toml");
    std::fs::write(&path, text).unwrap();
    tolk_config::Config::load(&path).unwrap_or_else(|e| panic!("test config: {e}"));
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Certificates made at test time with the openssl CLI: a CA, a server certificate for
/// 127.0.0.1, and a client certificate.
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn make_tls(dir: &Path) -> Tls {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tolk-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=tolk-test-{name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
    Tls {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// A mosquitto broker on a free loopback port, stopped on drop.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
    pub tls: bool,
}

impl Mosquitto {
    /// A broker configured like `deploy/mosquitto/tolk.conf` (packet limit included).
    pub fn start(dir: &Path, tls: Option<&Tls>) -> Self {
        Self::start_with_limit(dir, tls, Some(tolk_config::protocol::MAX_INCOMING_PACKET))
    }

    /// `max_packet: None` is mosquitto's default (no limit of its own): a misconfigured broker.
    pub fn start_with_limit(dir: &Path, tls: Option<&Tls>, max_packet: Option<usize>) -> Self {
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        );
        if let Some(n) = max_packet {
            conf += &format!("max_packet_size {n}\n");
        }
        // Started as root, mosquitto drops to user `mosquitto`, which cannot read the test's
        // temporary files: stay root then (test brokers only).
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        if root {
            conf += "user root\n";
        }
        if let Some(t) = tls {
            conf += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\ntls_version tlsv1.2\n",
                t.ca.display(),
                t.server_cert.display(),
                t.server_key.display()
            );
        }
        let path = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let mut m = Self {
            port,
            conf: path,
            child: None,
            tls: tls.is_some(),
        };
        m.restart();
        m
    }

    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.port
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the broker on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let start = Instant::now();
        loop {
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto is installed (deploy/host/setup.sh)");
            while start.elapsed() < Duration::from_secs(10) {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port still in TIME_WAIT or similar: try again
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The persisted device state.
pub fn read_state(slot_dir: &Path) -> tolk_ota::State {
    std::fs::read(slot_dir.join("state.json"))
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or_default()
}

/// Copies the folder tree `src` to `dst` (files and folders).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// The OTA policy of a test device trusting `trusted` (3 trial attempts, no size limit).
pub fn device_settings(trusted: &[&SigningKey]) -> Settings {
    Settings {
        trusted: trusted.iter().map(|k| k.public()).collect(),
        compatible: COMPATIBLE.into(),
        runtime_version: tolk_config::RUNTIME_VERSION.into(),
        max_clock_skew_s: 60,
        max_bundle_bytes: 1 << 60,
        trial_attempts: 3,
    }
}

/// The updater of a test device on `root`, probing Llama models.
pub fn device_updater(root: &Path, trusted: &[&SigningKey]) -> Updater {
    Updater::open(
        root,
        device_settings(trusted),
        Box::new(LlamaProbe::new(Duration::from_secs(30))),
    )
    .unwrap()
}

/// A device with v1 active; returns (tempdir, slot root).
pub fn device_with_v1(k: &SigningKey) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("slots");
    let b1 = bundle(&t.path().join("b1"), 1, k);
    let mut u = device_updater(&root, &[k]);
    u.install_dir("job-1", &b1).unwrap();
    assert_eq!(
        u.state().active.as_ref().unwrap().version,
        1,
        "{:?}",
        u.state().last_job
    );
    (t, root)
}

/// The active slot is `version` and its signature and files verify.
pub fn assert_active(root: &Path, k: &SigningKey, version: u64) {
    let u = device_updater(root, &[k]);
    let a = u.state().active.clone().expect("a model is active");
    assert_eq!(a.version, version);
    let (m, ..) = verify_bundle_dir(&root.join("slots").join(&a.slot), &[k.public()]).unwrap();
    assert_eq!(m.version, version);
}

// ---- a device agent in this process, and what it retains on the broker ----

/// The device id of the agents the tests start.
pub const DEVICE: &str = "kiosk-test";

/// Settings for `url`, with the server CA of `tls` and, if `with_cert`, its client certificate.
pub fn broker_settings(url: &str, tls: Option<&Tls>, with_cert: bool) -> BrokerSettings {
    BrokerSettings {
        url: url.into(),
        ca: tls.map(|t| t.ca.clone()),
        client_cert: tls.filter(|_| with_cert).map(|t| t.client_cert.clone()),
        client_key: tls.filter(|_| with_cert).map(|t| t.client_key.clone()),
        credentials: None,
        keep_alive_s: 5,
    }
}

/// A device with v1 installed under `t/slots` (the bundle made in `t/b1`).
pub fn device_root(t: &Path, k: &SigningKey) -> PathBuf {
    let root = t.join("slots");
    let mut u = device_updater(&root, &[k]);
    u.install_dir("job-1", &bundle(&t.join("b1"), 1, k))
        .unwrap();
    root
}

/// The device agent (`tolk_ota::agent::run`) in a thread of the test process.
pub struct AgentThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl AgentThread {
    /// Opens the updater on `root` (trusting `k`) and runs the agent until [`AgentThread::stop`].
    pub fn start(root: &Path, k: &SigningKey, broker: BrokerSettings) -> Self {
        let u = Updater::open(
            root,
            device_settings(&[k]),
            Box::new(LlamaProbe::new(Duration::from_secs(30))),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let opts = AgentOptions {
            device_id: DEVICE.into(),
            topic_prefix: DEFAULT_PREFIX.into(),
            broker,
            stall_timeout: Duration::from_millis(800),
            window: 32,
        };
        let s = stop.clone();
        let handle = std::thread::spawn(move || agent::run(u, opts, s, || {}, || {}).unwrap());
        Self {
            stop,
            handle: Some(handle),
        }
    }
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
    }
}

/// Reads the retained message of `topic` (None if none within the timeout).
pub fn retained(b: &BrokerSettings, topic: &str, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let (client, mut conn) = Client::new(
        options(b, &format!("reader-{}", rand::random::<u32>()), None).unwrap(),
        8,
    );
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let start = std::time::Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(15) {
        match conn.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == topic => {
                if want(&p.payload) {
                    return Some(p.payload.to_vec());
                }
                last = Some(p.payload.to_vec());
                // Re-subscribe to get the retained copy again after it changes.
                std::thread::sleep(Duration::from_millis(200));
                let _ = client.unsubscribe(topic);
                let _ = client.subscribe(topic, QoS::AtLeastOnce);
            }
            _ => {}
        }
    }
    last.filter(|l| want(l))
}

#[track_caller]
pub fn state_of(b: &BrokerSettings, want: impl Fn(&DeviceState) -> bool) -> DeviceState {
    let topic = Topics::new(DEFAULT_PREFIX, DEVICE).state;
    let bytes = retained(b, &topic, |p| {
        serde_json::from_slice::<DeviceState>(p).is_ok_and(|s| want(&s))
    })
    .expect("retained device state as expected");
    serde_json::from_slice(&bytes).unwrap()
}
