//! The kiosk's screen end to end: `tolk run` translates the demo samples, fed through a
//! GStreamer source on its stdin, while headless Chromium shows the subtitle page. The page's
//! text must equal what `--events` printed; a tap on the direction switch must change the
//! direction of the next utterance; MQTT control commands must do the same (and a refused one
//! must show its reason); the operator page must show the device and model and refuse actions
//! without the token; after `tolk run` restarts, the page must reconnect and keep following.
//! Screenshots at 1080x1920 and 1920x1080 go to `target/display/`.

#[path = "../../ota/tests/common/mod.rs"]
mod common;

mod browser;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOKEN: &str = "kiosk-operator-token-42";

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// A device config: audio in from stdin (16 kHz s16le), out to a fake sink, the demo model as
/// the fallback, the screen on `port` with an operator token, MQTT on `broker`.
fn config(dir: &Path, port: u16, broker: &str) -> PathBuf {
    let slots = dir.join("slots");
    let cfg = common::device_config(dir, &slots, broker, &[&common::key(1)], None);
    let token = dir.join("operator.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "device = \"default\"\nsample_rate = 16000",
            "device = \"default\"\npipeline = \"fdsrc fd=0 ! rawaudioparse use-sink-caps=false format=pcm pcm-format=s16le sample-rate=16000 num-channels=1 ! audioconvert ! audioresample\"\nsample_rate = 16000",
        )
        .replace(
            "device = \"default\"\nsample_rate = 24000",
            "device = \"default\"\npipeline = \"audioconvert ! audioresample ! fakesink sync=false\"\nsample_rate = 24000",
        )
        .replace("/usr/share/tolk/models/demo", demo().to_str().unwrap())
        .replace("bind = \"127.0.0.1:9464\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:8080\"", &format!("bind = \"127.0.0.1:{port}\""))
        .replace(
            "# operator_token_file = \"/etc/tolk/operator.token\"",
            &format!("operator_token_file = \"{}\"", token.display()),
        );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// One `tolk run` process: its stdin is the microphone, its stdout the event lines.
struct Kiosk {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Kiosk {
    fn start(cfg: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tolk"))
            .args(["run", "--events", "--once", "--config"])
            .arg(cfg)
            .env("TOLK_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("an event line that is not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            events,
            seen: Vec::new(),
            stderr,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Writes a WAV's samples (16 kHz mono) and `silence_s` of silence after them.
    fn say(&mut self, wav: &Path, silence_s: f64) {
        let w = tolk_models::audio::wav::read_wav(wav).unwrap();
        assert_eq!(w.sample_rate, 16_000, "{}", wav.display());
        let mut bytes = Vec::with_capacity(w.samples.len() * 2 + 32_000);
        for x in w.samples.iter() {
            bytes.extend_from_slice(&((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
        }
        bytes.resize(bytes.len() + (silence_s * 16_000.0) as usize * 2, 0);
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(&bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// The next event (after those already seen) matching `pred`.
    fn wait(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no {what} within {timeout:?}; events: {:?}\nlog:\n{}",
                    self.seen,
                    self.log()
                ),
            }
        }
    }

    /// `n` final subtitles, in order.
    fn finals(&mut self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|_| {
                self.wait("subtitle_final", Duration::from_secs(180), |e| {
                    e["event"] == "subtitle_final"
                })
            })
            .collect()
    }

    /// Ends the microphone: `--once` makes `tolk run` finish and exit.
    fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "tolk run exited with {st}:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tolk run did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Kiosk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_http(port: u16, kiosk: &Kiosk) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the screen never came up:\n{}",
            kiosk.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mqtt_control(broker_port: u16, payload: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker_port.to_string(), "-q", "1"])
        .args(["-t", "tolk/devices/kiosk-0001/control", "-m", payload])
        .output()
        .expect("mosquitto_pub (Debian package mosquitto-clients) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text_of(e: &Value) -> String {
    e["text"].as_str().unwrap().to_string()
}

#[test]
fn the_subtitle_page_follows_tolk_run_switches_direction_and_survives_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let broker = common::Mosquitto::start(t.path(), None);
    let port = common::free_port();
    let cfg = config(t.path(), port, &broker.url());
    let url = format!("http://127.0.0.1:{port}/");
    let samples = demo().join("samples");

    let mut kiosk = Kiosk::start(&cfg);
    wait_http(port, &kiosk);
    let portrait = browser::launch(1080, 1920);
    let tab = browser::open(&portrait, &url);
    browser::fit_viewport(&tab, 1080, 1920);
    browser::wait_for(
        &tab,
        "document.body.dataset.online === 'true' && document.querySelectorAll('#switches button').length === 2",
        Duration::from_secs(30),
        "the page connects and offers both directions",
    );
    assert_eq!(browser::text(&tab, "#lang-src"), "English");

    // English speech: the page shows exactly the translations `--events` printed.
    kiosk.say(&samples.join("en.wav"), 2.0);
    let en = kiosk.finals(2);
    assert!(en.iter().all(|e| e["direction"] == "en-fr"), "{en:?}");
    let last = en[1]["utterance"].to_string();
    browser::wait_for(
        &tab,
        &format!("document.getElementById('current').dataset.utterance === '{last}' && document.getElementById('current').dataset.final === 'true'"),
        Duration::from_secs(20),
        "the last English utterance on the page",
    );
    assert_eq!(browser::text(&tab, "#current-text"), text_of(&en[1]));
    assert_eq!(
        browser::text(&tab, "#history li .translation"),
        text_of(&en[0])
    );
    let shots = browser::screenshot_dir();
    browser::screenshot(&tab, &shots.join("subtitles-portrait.png"));
    {
        let landscape = browser::launch(1920, 1080);
        let wide = browser::open(&landscape, &url);
        browser::fit_viewport(&wide, 1920, 1080);
        browser::wait_for(
            &wide,
            &format!("document.getElementById('current').dataset.utterance === '{last}'"),
            Duration::from_secs(20),
            "the landscape page shows the same exchange",
        );
        assert_eq!(browser::text(&wide, "#current-text"), text_of(&en[1]));
        browser::screenshot(&wide, &shots.join("subtitles-landscape.png"));
    }

    // A visitor taps "Français -> English": the next utterance is translated fr-en.
    browser::click(&tab, "button.dir[data-direction='fr-en']");
    let changed = kiosk.wait("direction_changed", Duration::from_secs(10), |e| {
        e["event"] == "direction_changed"
    });
    assert_eq!(changed["by"], "visitor");
    assert_eq!(changed["direction"], "fr-en");
    browser::wait_for(
        &tab,
        "document.getElementById('lang-src').textContent === 'Français'",
        Duration::from_secs(10),
        "the page shows the new direction",
    );
    kiosk.say(&samples.join("fr.wav"), 2.0);
    let fr = kiosk.finals(2);
    assert!(fr.iter().all(|e| e["direction"] == "fr-en"), "{fr:?}");
    let last = fr[1]["utterance"].to_string();
    browser::wait_for(
        &tab,
        &format!("document.getElementById('current').dataset.utterance === '{last}' && document.getElementById('current').dataset.final === 'true'"),
        Duration::from_secs(20),
        "the last French utterance on the page",
    );
    assert_eq!(browser::text(&tab, "#current-text"), text_of(&fr[1]));
    assert_eq!(
        browser::eval(&tab, "document.getElementById('current').dataset.direction"),
        "fr-en"
    );

    // The operator, over MQTT: a direction this runtime does not know is refused visibly,
    // hostile bytes are dropped, a good command switches back.
    mqtt_control(broker.port, "{\"direction\":\"de-en\"}");
    let refused = kiosk.wait("direction_refused", Duration::from_secs(20), |e| {
        e["event"] == "direction_refused"
    });
    assert_eq!(refused["by"], "mqtt");
    browser::wait_for(
        &tab,
        "document.getElementById('message').textContent.includes('unknown direction')",
        Duration::from_secs(10),
        "the refusal on the page",
    );
    mqtt_control(broker.port, "\u{1}\u{2}not json");
    mqtt_control(broker.port, "{\"direction\":\"en-fr\"}");
    let changed = kiosk.wait("direction_changed by mqtt", Duration::from_secs(20), |e| {
        e["event"] == "direction_changed" && e["by"] == "mqtt"
    });
    assert_eq!(changed["direction"], "en-fr");
    browser::wait_for(
        &tab,
        "document.querySelector(\"button.dir[data-direction='en-fr']\").getAttribute('aria-pressed') === 'true'",
        Duration::from_secs(10),
        "the page follows the operator's switch",
    );

    // The operator page: device and model at a glance; actions only with the token.
    let op = browser::open(&portrait, &format!("http://127.0.0.1:{port}/operator"));
    browser::wait_for(
        &op,
        "document.getElementById('device-id').textContent === 'kiosk-0001'",
        Duration::from_secs(10),
        "the operator page shows the device",
    );
    assert_eq!(browser::text(&op, "#model-name"), "demo");
    assert_eq!(browser::text(&op, "#model-origin"), "fallback");
    browser::wait_for(
        &op,
        "document.getElementById('utterances').textContent === '4'",
        Duration::from_secs(10),
        "four utterances counted",
    );
    browser::click(&op, "#pause");
    browser::wait_for(
        &op,
        "document.getElementById('op-message').dataset.status === '401'",
        Duration::from_secs(10),
        "the action refused without the token",
    );
    browser::eval(
        &op,
        &format!("(document.getElementById('token').value = '{TOKEN}', true)"),
    );
    browser::click(&op, "#pause");
    let paused = kiosk.wait("listening_changed", Duration::from_secs(10), |e| {
        e["event"] == "listening_changed"
    });
    assert_eq!(paused["listening"], false);
    assert_eq!(paused["by"], "operator");
    browser::wait_for(
        &tab,
        "document.getElementById('state').dataset.state === 'paused'",
        Duration::from_secs(10),
        "the subtitle page shows the pause",
    );
    browser::screenshot(&op, &shots.join("operator.png"));
    browser::click(&op, "#resume");
    kiosk.wait("listening resumed", Duration::from_secs(10), |e| {
        e["event"] == "listening_changed" && e["listening"] == true
    });

    // `tolk run` stops and starts again: the page reconnects by itself and keeps following.
    let connects = browser::eval(&tab, "Number(document.body.dataset.connects)");
    kiosk.stop();
    browser::wait_for(
        &tab,
        "document.body.dataset.online === 'false'",
        Duration::from_secs(20),
        "the page notices the kiosk is gone",
    );
    let mut kiosk = Kiosk::start(&cfg);
    wait_http(port, &kiosk);
    browser::wait_for(
        &tab,
        &format!("document.body.dataset.online === 'true' && Number(document.body.dataset.connects) > {connects}"),
        Duration::from_secs(60),
        "the page reconnects to the new process",
    );
    kiosk.say(&samples.join("en.wav"), 2.0);
    let again = kiosk.finals(2);
    let last = again[1]["utterance"].to_string();
    browser::wait_for(
        &tab,
        &format!("document.getElementById('current').dataset.utterance === '{last}' && document.getElementById('current').dataset.final === 'true'"),
        Duration::from_secs(20),
        "subtitles after the restart",
    );
    assert_eq!(browser::text(&tab, "#current-text"), text_of(&again[1]));
    kiosk.stop();
}
