//! The Prometheus endpoint scraped over TCP and parsed, and the JSON-lines events.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use tolk_models::audio::endpoint::EndReason;
use tolk_runtime::audio::{AudioSource, Pacing, RingOptions};
use tolk_runtime::events::{Event, EventRecord, EventSink, JsonLines};
use tolk_runtime::metrics::{Metrics, MetricsServer};

fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head and body");
    (head.to_string(), body.to_string())
}

/// Parses the text exposition into `name{labels}` -> value, checking every line's syntax and
/// that each sample follows a `# TYPE` for its family.
fn parse(body: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type line {line}"
            );
            types.insert(name.into(), kind.into());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample {name} without # TYPE");
        let v = match value {
            "+Inf" => f64::INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        samples.insert(key.to_string(), v);
    }
    samples
}

#[test]
fn scrape_endpoint_and_parse_exposition() {
    let metrics = Arc::new(Metrics::new());
    metrics.first_text_latency.observe(0.12);
    metrics.first_text_latency.observe(0.31);
    metrics.first_audio_latency.observe(0.2);
    metrics.rtf.observe(0.18);
    metrics.rtf_last.set(0.18);
    metrics.utterances.add(3);
    metrics.utterances_dropped.inc();
    metrics.queue_depth.utterances.set(2.0);
    metrics.output_xruns.add(4);
    // An attached source: its ring depth and xruns appear at scrape time.
    let src = AudioSource::memory(
        vec![0.1; 1000],
        16_000,
        Pacing::Fast,
        RingOptions::default(),
    );
    metrics.attach_source(&src);
    std::thread::sleep(Duration::from_millis(50));

    let server = MetricsServer::start("127.0.0.1:0", metrics.clone()).unwrap();
    let (head, body) = get(server.local_addr(), "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let m = parse(&body);
    let v = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing in\n{body}"));
    assert_eq!(v("tolk_first_text_latency_seconds_count"), 2.0);
    assert!((v("tolk_first_text_latency_seconds_sum") - 0.43).abs() < 1e-9);
    assert_eq!(v("tolk_first_text_latency_seconds_bucket{le=\"0.1\"}"), 0.0);
    assert_eq!(
        v("tolk_first_text_latency_seconds_bucket{le=\"0.15\"}"),
        1.0
    );
    assert_eq!(v("tolk_first_text_latency_seconds_bucket{le=\"0.4\"}"), 2.0);
    assert_eq!(
        v("tolk_first_text_latency_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(v("tolk_first_audio_latency_seconds_count"), 1.0);
    assert_eq!(v("tolk_real_time_factor_count"), 1.0);
    assert_eq!(v("tolk_real_time_factor_last"), 0.18);
    assert_eq!(v("tolk_utterances_total"), 3.0);
    assert_eq!(v("tolk_input_level_dbfs"), -120.0);
    assert_eq!(v("tolk_utterances_dropped_total"), 1.0);
    assert_eq!(v("tolk_queue_depth{queue=\"utterances\"}"), 2.0);
    assert_eq!(v("tolk_queue_depth{queue=\"capture\"}"), 1000.0);
    assert_eq!(v("tolk_audio_xruns_total{direction=\"output\"}"), 4.0);
    assert_eq!(v("tolk_audio_xruns_total{direction=\"input\"}"), 0.0);
    // Cumulative buckets never decrease.
    let mut last = 0.0;
    for line in body
        .lines()
        .filter(|l| l.starts_with("tolk_first_text_latency_seconds_bucket"))
    {
        let x: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(x >= last);
        last = x;
    }

    // A second scrape sees new observations; other paths are 404.
    metrics.utterances.inc();
    let (_, body) = get(server.local_addr(), "/metrics");
    assert_eq!(parse(&body)["tolk_utterances_total"], 4.0);
    let (head, _) = get(server.local_addr(), "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop(server);
}

#[test]
fn metrics_bind_errors_name_the_address() {
    let err = MetricsServer::start("not an address", Arc::new(Metrics::new()))
        .err()
        .expect("bad address")
        .to_string();
    assert!(err.contains("not an address"), "{err}");
}

#[test]
fn events_round_trip_as_json_lines() {
    let events = vec![
        Event::UtteranceStart {
            utterance: 1,
            direction: "en-fr".into(),
            start_s: 1.25,
        },
        Event::UtteranceEnd {
            utterance: 1,
            direction: "en-fr".into(),
            start_s: 1.25,
            end_s: 3.5,
            cause: EndReason::Silence,
        },
        Event::SubtitlePartial {
            utterance: 1,
            direction: "en-fr".into(),
            text: "Bonjour".into(),
            latency_ms: 80.5,
        },
        Event::SubtitleFinal {
            utterance: 1,
            direction: "en-fr".into(),
            text: "Bonjour à tous \"ici\"".into(),
            first_text_ms: 80.5,
            latency_ms: 140.0,
            confidence: 0.93,
        },
        Event::AudioChunk {
            utterance: 1,
            direction: "en-fr".into(),
            offset: 0,
            samples: 4800,
            sample_rate: 24_000,
            latency_ms: 190.0,
        },
        Event::UtteranceDone {
            utterance: 1,
            direction: "en-fr".into(),
            rtf: 0.21,
            first_audio_ms: Some(190.0),
        },
        Event::UtteranceDropped {
            utterance: 2,
            direction: "fr-en".into(),
            reason: "queue full".into(),
            queue_depth: 4,
        },
        Event::SourceLost {
            source: "alsasrc".into(),
            reason: "device unplugged".into(),
        },
        Event::SourceEnded {
            source: "in.wav".into(),
        },
    ];
    let sink = JsonLines::new(Vec::<u8>::new());
    let records: Vec<EventRecord> = events.into_iter().map(EventRecord::now).collect();
    for r in &records {
        sink.emit(r);
    }
    let text = String::from_utf8(sink.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), records.len());
    for (line, rec) in lines.iter().zip(&records) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["event"].is_string() && v["ts_ms"].as_u64().unwrap() > 0,
            "{line}"
        );
        assert_eq!(&EventRecord::from_json(line).unwrap(), rec);
    }
    assert!(
        lines[2].contains(r#""event":"subtitle_partial""#),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(r#""direction":"en-fr""#));
    assert!(EventRecord::from_json(r#"{"ts_ms":1,"event":"no_such_event"}"#).is_err());
}

#[test]
fn histogram_quantiles_and_input_level_follow_their_definitions() {
    use tolk_runtime::metrics::{rms_dbfs, Histogram, LATENCY_BUCKETS, SILENCE_DBFS};
    let h = Histogram::new(LATENCY_BUCKETS);
    assert_eq!(h.quantile(0.5), None);
    // 100 observations spread evenly inside (0.2, 0.25]: every quantile lies in that bucket,
    // interpolated linearly as Prometheus' histogram_quantile does.
    for i in 0..100 {
        h.observe(0.2 + 0.0005 * (i as f64 + 1.0));
    }
    let p50 = h.quantile(0.5).unwrap();
    assert!((p50 - 0.225).abs() < 1e-9, "{p50}");
    assert!((h.quantile(0.99).unwrap() - 0.2495).abs() < 1e-9);
    // Beyond the last bound the quantile is that bound.
    h.observe(100.0);
    assert_eq!(h.quantile(1.0), Some(10.0));
    assert_eq!(h.quantile(1.5), None);

    assert_eq!(rms_dbfs(&[]), SILENCE_DBFS);
    assert_eq!(rms_dbfs(&[0.0; 320]), SILENCE_DBFS);
    assert!((rms_dbfs(&[1.0; 320])).abs() < 1e-9);
    let half: Vec<f32> = (0..320)
        .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
        .collect();
    assert!((rms_dbfs(&half) + 6.0206).abs() < 1e-3);
    assert!(rms_dbfs(&[f32::NAN, 1.0]).is_finite());
}
