//! `tolktranslate` in a live pipeline with a synchronising sink: speech pushed in real time by
//! a live `appsrc` (each 20 ms buffer when its last sample would have been captured), the
//! translation arriving at `fakesink sync=true` before its deadline (base time + timestamp +
//! the pipeline's latency). This is what lets a live sink play without `sync=false`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use common::*;

#[test]
fn live_translation_reaches_a_synchronising_sink_before_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let speech = speech_16k("Where is the train station?", "en-us", dir.path());
    init();
    // The element's defaults (min-silence-ms 600, decode-latency-ms 500).
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src is-live=true format=time min-latency=20000000 caps={CAPS} ! \
         tolktranslate model={} ! fakesink name=sink sync=true async=false",
        model.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    // Arrival time of each buffer at the sink, and its timestamp.
    let arrivals: Arc<Mutex<Vec<(gst::ClockTime, gst::ClockTime)>>> = Arc::default();
    {
        let arrivals = arrivals.clone();
        sink.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                let el = pad.parent_element().unwrap();
                if let (Some(clock), Some(b)) = (el.clock(), info.buffer()) {
                    arrivals
                        .lock()
                        .unwrap()
                        .push((clock.time(), b.pts().unwrap()));
                }
                gst::PadProbeReturn::Ok
            })
            .unwrap();
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let (res, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    assert!(res.is_ok(), "{res:?}");
    let mut q = gst::query::Latency::new();
    assert!(pipeline.query(&mut q));
    let (live, latency, _) = q.result();
    assert!(live);
    println!("pipeline latency {latency}");

    let mut input = vec![0.0f32; 8000];
    input.extend_from_slice(&speech);
    input.extend(std::iter::repeat_n(0.0, 32_000));
    let t0 = Instant::now();
    for (i, c) in input.chunks(320).enumerate() {
        let due = Duration::from_millis(20 * (i as u64 + 1));
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut b = gst::Buffer::from_mut_slice(bytes);
        {
            let b = b.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(20 * i as u64));
            b.set_duration(gst::ClockTime::from_mseconds(20));
        }
        let flow = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&b]);
        assert_eq!(flow, gst::FlowReturn::Ok);
    }
    std::thread::sleep(Duration::from_secs(1));
    let base = pipeline.base_time().unwrap();
    pipeline.set_state(gst::State::Null).unwrap();

    let arrivals = arrivals.lock().unwrap();
    assert!(!arrivals.is_empty(), "the translation reached the sink");
    // Slack: how long before its deadline a buffer arrived (negative: late).
    let slack_ms: Vec<i64> = arrivals
        .iter()
        .map(|(at, pts)| {
            let deadline = (base + *pts + latency).nseconds() as i64;
            (deadline - at.nseconds() as i64) / 1_000_000
        })
        .collect();
    println!(
        "{} buffers, slack before the deadline: first {} ms, least {} ms",
        slack_ms.len(),
        slack_ms[0],
        slack_ms.iter().min().unwrap()
    );
    assert!(
        slack_ms.iter().all(|s| *s >= 0),
        "buffers late for a sink that allows the reported latency: {slack_ms:?}"
    );
}
