//! The kiosk's screen server in process, fed with synthetic pipeline events: its headers, its
//! answers to malformed, oversized and unauthorised requests, a thousand reconnecting clients,
//! a client that never reads, and the subtitle page in headless Chromium over a compressed day
//! of exchanges (memory and DOM stay flat).

mod browser;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tolk_models::audio::endpoint::EndReason;
use tolk_models::translator::Direction;
use tolk_runtime::display::{
    DisplayHub, DisplayOptions, DisplayServer, ModelInfo, ModelOrigin, StatusSource,
    CONTENT_SECURITY_POLICY,
};
use tolk_runtime::events::{Event, EventRecord, EventSink, LateSink};
use tolk_runtime::metrics::Metrics;
use tolk_runtime::pipeline::PipelineControl;

const TOKEN: &str = "operator-token-0123456789";

struct Screen {
    hub: Arc<DisplayHub>,
    server: Option<DisplayServer>,
    metrics: Arc<Metrics>,
    _slots: tempfile::TempDir,
}

/// What the operator page reports of a kiosk running the demo model as its fallback.
fn status_source(slot_dir: PathBuf, metrics: Arc<Metrics>, token_configured: bool) -> StatusSource {
    StatusSource {
        device_id: "kiosk-test".into(),
        site: "hall".into(),
        model: ModelInfo {
            dir: PathBuf::from("/models/demo"),
            origin: ModelOrigin::Fallback,
            name: "demo".into(),
            version: None,
            slot: None,
            key_ids: vec![],
            installed_unix_s: None,
            strategy: "ChainOfModality".into(),
            units: "mfcc".into(),
            directions: vec!["en-fr".into(), "fr-en".into()],
        },
        slot_dir,
        metrics,
        started: Instant::now(),
        token_configured,
    }
}

fn screen(max_clients: usize, token: Option<&str>) -> Screen {
    let late = Arc::new(LateSink::default());
    let control = Arc::new(PipelineControl::new(
        Direction::EnFr,
        &[Direction::FrEn],
        late.clone(),
    ));
    let hub = Arc::new(DisplayHub::new(
        "kiosk-test",
        "demo",
        control,
        4,
        max_clients,
    ));
    late.set(hub.clone());
    let slots = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let status = status_source(slots.path().to_path_buf(), metrics.clone(), token.is_some());
    let opts = DisplayOptions {
        bind: "127.0.0.1:0".into(),
        operator_token: token.map(String::from),
        max_connections: max_clients + 16,
    };
    let server = DisplayServer::start(opts, hub.clone(), status).unwrap();
    Screen {
        hub,
        server: Some(server),
        metrics,
        _slots: slots,
    }
}

impl Screen {
    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }
}

/// One raw HTTP/1.1 exchange (`Connection: close`): status code, headers, body.
fn http(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: kiosk\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn post(addr: SocketAddr, path: &str, body: &str, auth: Option<&str>) -> (u16, String, String) {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: kiosk\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, _, body) = get(addr, "/api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn emit(hub: &DisplayHub, e: Event) {
    hub.emit(&EventRecord::now(e));
}

/// One whole exchange as the pipeline emits it.
fn exchange(hub: &DisplayHub, id: u64, direction: &str, text: &str) {
    let d = direction.to_string();
    emit(
        hub,
        Event::UtteranceStart {
            utterance: id,
            direction: d.clone(),
            start_s: id as f64,
        },
    );
    emit(
        hub,
        Event::UtteranceEnd {
            utterance: id,
            direction: d.clone(),
            start_s: id as f64,
            end_s: id as f64 + 1.8,
            cause: EndReason::Silence,
        },
    );
    let words: Vec<&str> = text.split(' ').collect();
    for n in 1..words.len() {
        emit(
            hub,
            Event::SubtitlePartial {
                utterance: id,
                direction: d.clone(),
                text: words[..n].join(" "),
                latency_ms: 50.0 * n as f64,
            },
        );
    }
    emit(
        hub,
        Event::SubtitleFinal {
            utterance: id,
            direction: d.clone(),
            text: text.into(),
            first_text_ms: 50.0,
            latency_ms: 300.0,
            confidence: 0.9,
        },
    );
    emit(
        hub,
        Event::AudioChunk {
            utterance: id,
            direction: d.clone(),
            offset: 0,
            samples: 1600,
            sample_rate: 16000,
            latency_ms: 350.0,
        },
    );
    emit(
        hub,
        Event::UtteranceDone {
            utterance: id,
            direction: d,
            rtf: 0.3,
            first_audio_ms: Some(350.0),
        },
    );
}

#[test]
fn pages_are_served_under_a_strict_policy_and_bad_requests_are_refused() {
    let s = screen(4, Some(TOKEN));
    let a = s.addr();
    for path in [
        "/",
        "/operator",
        "/assets/subtitles.js",
        "/assets/kiosk.css",
    ] {
        let (code, head, body) = get(a, path);
        assert_eq!(code, 200, "{path}: {head}");
        assert!(
            head.contains(&format!(
                "content-security-policy: {}",
                CONTENT_SECURITY_POLICY.to_ascii_lowercase()
            )),
            "{path}: {head}"
        );
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(!body.is_empty());
    }
    // Nothing the pages load comes from elsewhere, and no inline script exists.
    for path in ["/", "/operator"] {
        let (_, _, html) = get(a, path);
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("onclick"),
            "{html}"
        );
    }
    assert_eq!(get(a, "/assets/../Cargo.toml").0, 404);
    assert_eq!(get(a, "/nope").0, 404);
    // Malformed and oversized requests.
    assert_eq!(http(a, b"BLAH\r\n\r\n").0, 400);
    let long = format!("GET /{} HTTP/1.1\r\nHost: k\r\n\r\n", "a".repeat(1 << 20));
    let (code, _, _) = http(a, long.as_bytes());
    assert!(
        code == 400 || code == 414 || code == 431 || code == 0,
        "{code}"
    );
    let big = format!("{{\"direction\":\"{}\"}}", "x".repeat(4096));
    assert_eq!(post(a, "/api/direction", &big, None).0, 413);
    let (code, _, body) = post(a, "/api/direction", "{\"direction\":", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid request"), "{body}");
    let (code, _, body) = post(
        a,
        "/api/direction",
        "{\"direction\":\"fr-en\",\"x\":1}",
        None,
    );
    assert!(code == 422 || code == 400, "{code} {body}");
    let (code, _, body) = post(a, "/api/direction", "{\"direction\":\"de-en\"}", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown direction"), "{body}");
    assert_eq!(s.hub.control().direction(), Direction::EnFr);
    // The server still answers after all of that.
    let (code, _, body) = post(a, "/api/direction", "{\"direction\":\"fr-en\"}", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.hub.control().direction(), Direction::FrEn);
    assert_eq!(status(a)["direction"], "fr-en");
}

#[test]
fn operator_actions_need_the_token_and_a_read_only_kiosk_refuses_them() {
    let s = screen(4, Some(TOKEN));
    let a = s.addr();
    let body = "{\"listening\":false}";
    let (code, _, msg) = post(a, "/api/operator/listening", body, None);
    assert_eq!(code, 401, "{msg}");
    assert!(msg.contains("operator token required"), "{msg}");
    let (code, _, msg) = post(
        a,
        "/api/operator/listening",
        body,
        Some("wrong-token-0123456789"),
    );
    assert_eq!(code, 401, "{msg}");
    assert!(s.hub.control().listening());
    let (code, _, msg) = post(a, "/api/operator/listening", body, Some(TOKEN));
    assert_eq!(code, 200, "{msg}");
    assert!(!s.hub.control().listening());
    assert_eq!(status(a)["state"], "paused");
    let (code, _, _) = post(
        a,
        "/api/operator/direction",
        "{\"direction\":\"fr-en\"}",
        Some(TOKEN),
    );
    assert_eq!(code, 200);
    // The status document is readable without the token.
    for v in [0.12, 0.18, 0.22, 0.3, 0.9] {
        s.metrics.first_text_latency.observe(v);
    }
    s.metrics.input_level_dbfs.set(-23.5);
    let st = status(a);
    assert_eq!(st["first_text"]["count"], 5);
    let p50 = st["first_text"]["p50_ms"].as_f64().unwrap();
    assert!((150.0..=250.0).contains(&p50), "{st}");
    assert_eq!(st["input_level_dbfs"], -23.5);
    assert_eq!(st["device_id"], "kiosk-test");
    assert_eq!(st["model"]["name"], "demo");
    assert_eq!(st["token_configured"], true);
    assert_eq!(st["ota"]["highest_version"], serde_json::Value::Null);

    let ro = screen(4, None);
    let (code, _, msg) = post(ro.addr(), "/api/operator/listening", body, Some(TOKEN));
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("read-only"), "{msg}");
    assert!(ro.hub.control().listening());
}

/// Opens the live stream and reads until its first event (the snapshot) has come.
fn open_stream(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: kiosk\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got);
        let refused = text.starts_with("HTTP/1.1 503") && text.contains("\r\n\r\n");
        if refused || text.contains("event: snapshot") {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (s, String::from_utf8_lossy(&got).into_owned())
}

#[test]
fn live_clients_are_bounded_and_a_thousand_reconnects_leave_nothing_behind() {
    let s = screen(8, None);
    let a = s.addr();
    let held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let (c, head) = open_stream(a);
            assert!(head.contains("event: snapshot"), "{head}");
            assert!(head
                .to_ascii_lowercase()
                .contains("content-type: text/event-stream"));
            c
        })
        .collect();
    let (_, refused) = open_stream(a);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    drop(held);

    // A thousand clients connecting and going away, eight at a time.
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                for _ in 0..125 {
                    let (c, head) = open_stream(a);
                    assert!(
                        head.contains("event: snapshot") || head.starts_with("HTTP/1.1 503"),
                        "{head}"
                    );
                    drop(c);
                }
            });
        }
    });
    println!("1000 reconnects in {:?}", start.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(a)["display_clients"] != 0 {
        assert!(Instant::now() < deadline, "{}", status(a));
        exchange(&s.hub, 1, "en-fr", "poke");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a new one is served.
    let (_c, head) = open_stream(a);
    assert!(head.contains("event: snapshot"), "{head}");
}

#[test]
fn a_client_that_never_reads_does_not_hold_the_pipeline_back() {
    let s = screen(4, None);
    let a = s.addr();
    let (stuck, _) = open_stream(a);
    // The pipeline's side: 20 000 exchanges (200 000 events) emitted while the client reads
    // nothing; emitting never waits for it.
    let start = Instant::now();
    for i in 0..20_000 {
        exchange(&s.hub, i + 1, "en-fr", "le musée ouvre à neuf heures");
    }
    println!("200 000 events emitted in {:?}", start.elapsed());
    assert_eq!(s.hub.snapshot().exchanges[0].utterance, 20_000);
    // The server still serves others, and the stuck client is still counted until it goes.
    assert_eq!(get(a, "/api/snapshot").0, 200);
    assert_eq!(status(a)["display_clients"], 1);
    drop(stuck);
}

#[test]
fn the_subtitle_page_stays_flat_over_a_compressed_day() {
    let s = screen(4, None);
    let url = format!("http://{}/", s.addr());
    let b = browser::launch(1080, 1920);
    let tab = browser::open(&b, &url);
    browser::wait_for(
        &tab,
        "document.body.dataset.online === 'true' && document.querySelectorAll('#switches button').length === 2",
        Duration::from_secs(20),
        "the page connects and shows both directions",
    );
    let heap = |tab: &headless_chrome::Tab| {
        browser::eval(tab, "(gc(), performance.memory.usedJSHeapSize)")
            .as_f64()
            .unwrap()
    };
    let nodes = |tab: &headless_chrome::Tab| {
        browser::eval(tab, "document.getElementsByTagName('*').length")
            .as_u64()
            .unwrap()
    };
    // A warm-up: the page's steady state (history full).
    let mut id = 0;
    for _ in 0..20 {
        id += 1;
        exchange(&s.hub, id, "en-fr", "Où est la gare la plus proche ?");
    }
    browser::wait_for(
        &tab,
        &format!("document.getElementById('current').dataset.utterance === '{id}'"),
        Duration::from_secs(20),
        "the warm-up reaches the page",
    );
    let (heap0, nodes0) = (heap(&tab), nodes(&tab));
    // A day at a busy kiosk: a few thousand exchanges, in batches the page keeps up with.
    for _ in 0..60 {
        for _ in 0..50 {
            id += 1;
            exchange(
                &s.hub,
                id,
                "en-fr",
                &format!("Phrase numéro {id} de la journée"),
            );
        }
        browser::wait_for(
            &tab,
            &format!("document.getElementById('current').dataset.utterance === '{id}'"),
            Duration::from_secs(30),
            "the page follows the exchanges",
        );
    }
    assert_eq!(
        browser::text(&tab, "#current-text"),
        format!("Phrase numéro {id} de la journée")
    );
    assert_eq!(
        browser::eval(&tab, "document.querySelectorAll('#history li').length"),
        3
    );
    let (heap1, nodes1) = (heap(&tab), nodes(&tab));
    println!(
        "after {id} exchanges: JS heap {heap0} -> {heap1} bytes, DOM {nodes0} -> {nodes1} nodes"
    );
    assert_eq!(nodes1, nodes0, "the DOM grew");
    assert!(
        heap1 < heap0 + 1_000_000.0,
        "the JS heap grew from {heap0} to {heap1} bytes"
    );

    // A refused switch shows its reason on the page; a good one moves the pressed button.
    let _ = s
        .hub
        .control()
        .set_direction("de-fr", tolk_runtime::pipeline::Requester::Mqtt);
    browser::wait_for(
        &tab,
        "document.getElementById('message').textContent.includes('unknown direction')",
        Duration::from_secs(10),
        "the refusal is visible",
    );
    browser::click(&tab, "button.dir[data-direction='fr-en']");
    browser::wait_for(
        &tab,
        "document.querySelector(\"button.dir[data-direction='fr-en']\").getAttribute('aria-pressed') === 'true'",
        Duration::from_secs(10),
        "the tapped direction is pressed",
    );
    assert_eq!(s.hub.control().direction(), Direction::FrEn);
    assert_eq!(browser::text(&tab, "#lang-src"), "Français");

    // The server goes away: the page says so, and reconnects to the next one on its own.
    let addr = s.addr();
    let connects = browser::eval(&tab, "Number(document.body.dataset.connects)");
    let mut s = s;
    drop(s.server.take());
    browser::wait_for(
        &tab,
        "document.body.dataset.online === 'false'",
        Duration::from_secs(10),
        "the page notices the server is gone",
    );
    let again = {
        let control = s.hub.control().clone();
        let hub = Arc::new(DisplayHub::new("kiosk-test", "demo", control, 4, 4));
        let status = status_source(
            PathBuf::from("/nonexistent"),
            Arc::new(Metrics::new()),
            false,
        );
        let opts = DisplayOptions {
            bind: addr.to_string(),
            operator_token: None,
            max_connections: 8,
        };
        (
            DisplayServer::start(opts, hub.clone(), status).unwrap(),
            hub,
        )
    };
    browser::wait_for(
        &tab,
        &format!("document.body.dataset.online === 'true' && Number(document.body.dataset.connects) > {connects}"),
        Duration::from_secs(20),
        "the page reconnects",
    );
    exchange(&again.1, 1, "fr-en", "Where is the station?");
    browser::wait_for(
        &tab,
        "document.getElementById('current-text').textContent === 'Where is the station?'",
        Duration::from_secs(10),
        "live events after the reconnection",
    );
}
