//! `tolktranslate` under `gst_check::Harness`: an espeak-ng utterance followed by silence gives
//! subtitle messages and translated audio; EOS flushes a pending utterance; a full queue drops
//! its oldest utterance and a direction change applies from the next one; a bad model path or
//! device is a GStreamer error. The translator has random weights, so only the structure is
//! checked (messages, order, finite non-silent 16 kHz audio, monotonic timestamps).

mod common;

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_check::Harness;

use common::*;

/// 20 ms input buffers.
const CHUNK: usize = 320;

fn element(model: &std::path::Path, bus: &gst::Bus) -> gst::Element {
    init();
    let el = gst::ElementFactory::make("tolktranslate")
        .property("model", model.to_str().unwrap())
        .property("min-silence-ms", 400u32)
        .build()
        .expect("tolktranslate is registered");
    el.set_bus(Some(bus));
    el
}

/// Pushes `samples` in 20 ms buffers with timestamps from `t0`; returns the end time.
fn push_audio(h: &mut Harness, samples: &[f32], t0: gst::ClockTime) -> gst::ClockTime {
    let mut t = t0;
    for c in samples.chunks(CHUNK) {
        let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut b = gst::Buffer::from_mut_slice(bytes);
        let dur = gst::ClockTime::from_nseconds(c.len() as u64 * 1_000_000_000 / RATE as u64);
        {
            let b = b.get_mut().unwrap();
            b.set_pts(t);
            b.set_duration(dur);
        }
        t += dur;
        assert_eq!(h.push(b), Ok(gst::FlowSuccess::Ok));
    }
    t
}

/// Element messages of one name, and every error, until `done` returns true or `timeout`.
fn collect_messages(
    bus: &gst::Bus,
    timeout: Duration,
    mut done: impl FnMut(&gst::StructureRef) -> bool,
) -> Vec<gst::Structure> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => {
                panic!("error from the element: {} ({:?})", e.error(), e.debug())
            }
            gst::MessageView::Element(_) => {
                let s = msg.structure().unwrap().to_owned();
                let stop = done(&s);
                out.push(s);
                if stop {
                    return out;
                }
            }
            _ => {}
        }
    }
    panic!(
        "timed out after {timeout:?}; messages so far: {:?}",
        out.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
}

fn named<'a>(msgs: &'a [gst::Structure], name: &str) -> Vec<&'a gst::Structure> {
    msgs.iter().filter(|s| s.name() == name).collect()
}

/// Checks the output buffers: 16 kHz caps, finite non-silent samples, timestamps that never go
/// backwards and are back to back within an utterance. Returns the samples.
fn check_output(h: &mut Harness, buffers: &[gst::Buffer]) -> Vec<f32> {
    assert!(!buffers.is_empty(), "no translated audio came out");
    let caps = h.sinkpad().unwrap().current_caps().expect("output caps");
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<i32>("rate").unwrap(), 16_000);
    assert_eq!(s.get::<i32>("channels").unwrap(), 1);
    assert_eq!(s.get::<&str>("format").unwrap(), "F32LE");
    let mut samples = Vec::new();
    let mut prev_end: Option<gst::ClockTime> = None;
    for b in buffers {
        let pts = b.pts().expect("output buffers are timestamped");
        let dur = b.duration().expect("output buffers have a duration");
        if let Some(end) = prev_end {
            assert!(pts >= end, "timestamps go backwards: {pts} < {end}");
            if !b.flags().contains(gst::BufferFlags::DISCONT) {
                let gap = pts.nseconds().abs_diff(end.nseconds());
                assert!(
                    gap <= 1,
                    "buffers within an utterance are back to back ({gap} ns)"
                );
            }
        }
        prev_end = Some(pts + dur);
        let map = b.map_readable().unwrap();
        let n0 = samples.len();
        samples.extend(
            map.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        let n = (samples.len() - n0) as u64;
        let expect = n * 1_000_000_000 / 16_000;
        assert!(
            dur.nseconds().abs_diff(expect) <= 1,
            "duration matches the sample count"
        );
    }
    assert!(samples.iter().all(|x| x.is_finite()), "non-finite output");
    let level = rms(&samples);
    println!(
        "output: {} buffers, {} samples ({:.2} s), rms {level:.4}",
        buffers.len(),
        samples.len(),
        samples.len() as f64 / 16_000.0
    );
    assert!(level > 1e-3, "the output is silent (rms {level})");
    samples
}

fn check_subtitles(msgs: &[gst::Structure], utterance: u64) -> String {
    let subs: Vec<_> = named(msgs, "tolk-subtitle")
        .into_iter()
        .filter(|s| s.get::<u64>("utterance").unwrap() == utterance)
        .collect();
    let finals: Vec<_> = subs
        .iter()
        .filter(|s| s.get::<bool>("final").unwrap())
        .collect();
    assert_eq!(finals.len(), 1, "exactly one final subtitle per utterance");
    let last = subs.last().unwrap();
    assert!(
        last.get::<bool>("final").unwrap(),
        "the final subtitle comes last"
    );
    let text = last.get::<String>("text").unwrap();
    let deltas: String = subs
        .iter()
        .map(|s| s.get::<String>("delta").unwrap())
        .collect();
    assert_eq!(deltas, text, "the deltas concatenate to the final text");
    for s in &subs {
        assert_eq!(s.get::<&str>("direction").unwrap(), "en-fr");
        assert_eq!(s.get::<&str>("mode").unwrap(), "com");
        let start = s.get::<u64>("speech-start").unwrap();
        let end = s.get::<u64>("speech-end").unwrap();
        assert!(start < end, "speech start {start} before its end {end}");
        assert!(s.get::<f64>("latency-ms").unwrap() >= 0.0);
    }
    println!("subtitle ({} messages): {text:?}", subs.len());
    text
}

#[test]
fn utterance_then_silence_gives_subtitles_and_audio() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let speech = speech_16k("Where is the train station?", "en-us", dir.path());
    init();
    let bus = gst::Bus::new();
    let el = element(&model, &bus);
    let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str(CAPS);
    h.play();

    let t0 = Instant::now();
    let mut input = vec![0.0f32; 8000];
    input.extend_from_slice(&speech);
    input.extend(std::iter::repeat_n(0.0, 24_000));
    let end = push_audio(&mut h, &input, gst::ClockTime::ZERO);

    let msgs = collect_messages(&bus, Duration::from_secs(120), |s| {
        s.name() == "tolk-utterance-done"
    });
    println!("endpoint to done: {:.2} s wall", t0.elapsed().as_secs_f64());
    let speech_msgs = named(&msgs, "tolk-speech");
    assert_eq!(speech_msgs.len(), 2, "one start and one end: {msgs:?}");
    assert_eq!(speech_msgs[0].get::<&str>("event").unwrap(), "start");
    assert_eq!(speech_msgs[1].get::<&str>("event").unwrap(), "end");
    assert_eq!(speech_msgs[1].get::<&str>("reason").unwrap(), "silence");
    let id = speech_msgs[0].get::<u64>("utterance").unwrap();
    // The speech lies inside the input, after the leading half second of silence.
    let start = speech_msgs[1].get::<u64>("speech-start").unwrap();
    let stop = speech_msgs[1].get::<u64>("stream-time").unwrap();
    assert!(
        start >= 400_000_000 && stop <= end.nseconds(),
        "{start}..{stop}"
    );
    let text = check_subtitles(&msgs, id);

    let done = named(&msgs, "tolk-utterance-done")[0];
    let samples_out = done.get::<u64>("samples").unwrap();
    println!("done: {done}");
    let mut buffers = Vec::new();
    while let Some(b) = h.try_pull() {
        buffers.push(b);
    }
    let samples = check_output(&mut h, &buffers);
    assert_eq!(samples.len() as u64, samples_out);
    // The first output starts at the end of speech (input timeline).
    assert_eq!(buffers[0].pts().unwrap().nseconds(), stop);

    // The final text also travels downstream as a tag (when there is any text).
    let mut tag_text = None;
    while let Some(ev) = h.try_pull_event() {
        if let gst::EventView::Tag(t) = ev.view() {
            if let Some(c) = t.tag().get::<gst::tags::Comment>() {
                tag_text = Some(c.get().to_string());
            }
        }
    }
    if !text.is_empty() {
        assert_eq!(tag_text.as_deref(), Some(text.as_str()));
    }
}

#[test]
fn eos_flushes_the_pending_utterance() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let speech = speech_16k("Thank you, have a nice day.", "en-us", dir.path());
    init();
    let bus = gst::Bus::new();
    let el = element(&model, &bus);
    let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str(CAPS);
    h.play();

    // Speech up to the very end: only EOS can close the utterance.
    let mut input = vec![0.0f32; 4000];
    input.extend_from_slice(&speech[..speech.len() - 1600]);
    push_audio(&mut h, &input, gst::ClockTime::from_seconds(10));
    assert!(
        h.try_pull().is_none(),
        "nothing is translated before the endpoint"
    );
    assert!(h.push_event(gst::event::Eos::new()));

    let mut buffers = Vec::new();
    while let Some(b) = h.pull_until_eos().expect("buffers, then EOS") {
        buffers.push(b);
    }
    let msgs = collect_messages(&bus, Duration::from_secs(30), |s| {
        s.name() == "tolk-utterance-done"
    });
    let speech_msgs = named(&msgs, "tolk-speech");
    let end = speech_msgs.last().unwrap();
    assert_eq!(end.get::<&str>("event").unwrap(), "end");
    assert_eq!(end.get::<&str>("reason").unwrap(), "source_ended");
    check_subtitles(&msgs, end.get::<u64>("utterance").unwrap());
    check_output(&mut h, &buffers);
    // Timestamps follow the input timeline (which started at 10 s).
    assert!(buffers[0].pts().unwrap() >= gst::ClockTime::from_seconds(10));
}

/// Sets a pipeline `audiotestsrc ! tolktranslate ! fakesink` to PLAYING; returns the error
/// message text of the element.
fn start_error(configure: impl FnOnce(&gst::Element)) -> String {
    init();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("audiotestsrc").build().unwrap();
    let el = gst::ElementFactory::make("tolktranslate").build().unwrap();
    configure(&el);
    let sink = gst::ElementFactory::make("fakesink").build().unwrap();
    pipeline.add_many([&src, &el, &sink]).unwrap();
    gst::Element::link_many([&src, &el, &sink]).unwrap();
    let res = pipeline.set_state(gst::State::Playing);
    assert!(res.is_err(), "the state change must fail");
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error])
        .expect("an error message on the bus");
    let _ = pipeline.set_state(gst::State::Null);
    let gst::MessageView::Error(e) = msg.view() else {
        unreachable!()
    };
    assert_eq!(
        msg.src().map(|s| s.name().to_string()),
        Some(el.name().to_string())
    );
    e.error().to_string()
}

#[test]
fn bad_model_path_and_settings_are_errors() {
    let e = start_error(|el| el.set_property("model", "/nonexistent/tolk-model"));
    println!("missing model: {e}");
    assert!(e.contains("/nonexistent/tolk-model"), "{e}");
    let e = start_error(|_| {});
    assert!(e.contains("model"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let e = start_error(|el| {
        el.set_property("model", model.to_str().unwrap());
        el.set_property("device", "gpu7");
    });
    assert!(e.contains("gpu7"), "{e}");
    let e = start_error(|el| {
        el.set_property("model", model.to_str().unwrap());
        el.set_property("vad-model", "/nonexistent/silero_vad.jit");
    });
    assert!(e.contains("silero_vad.jit"), "{e}");
    // The tiny model is chain-of-modality: ASR was never trained.
    let e = start_error(|el| {
        el.set_property("model", model.to_str().unwrap());
        el.set_property_from_str("mode", "asr");
    });
    assert!(e.contains("asr"), "{e}");
}

/// The overload policy and a direction change mid-stream. A blocking probe on the src pad holds
/// the decoder task inside the first utterance's first buffer, so the queue state is
/// deterministic: with `queue-size` 1 and `drop-oldest`, utterances 2 and 3 are dropped by the
/// arrival of 3 and 4. The direction is switched to fr-en before utterance 4: the dropped ones
/// and utterance 1 keep en-fr, utterance 4 is decoded fr-en. Then the probe goes and both
/// surviving utterances complete.
#[test]
fn drop_oldest_overload_and_a_direction_change_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let en = [
        "Where is the train station?",
        "I would like a coffee, please.",
        "How much does this ticket cost?",
    ]
    .map(|t| speech_16k(t, "en-us", dir.path()));
    let fr = speech_16k("Où est la gare, s'il vous plaît ?", "fr", dir.path());
    init();
    let bus = gst::Bus::new();
    let el = element(&model, &bus);
    el.set_property("queue-size", 1u32);
    el.set_property_from_str("overload", "drop-oldest");
    let mut h = Harness::with_element(&el, Some("sink"), Some("src"));
    h.set_src_caps_str(CAPS);
    h.play();

    let (hit_tx, hit_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let srcpad = el.static_pad("src").unwrap();
    let probe = srcpad
        .add_probe(
            gst::PadProbeType::BLOCK | gst::PadProbeType::BUFFER,
            move |_, _| {
                let _ = hit_tx.try_send(());
                gst::PadProbeReturn::Ok
            },
        )
        .unwrap();

    let with_silence = |speech: &[f32]| {
        let mut v = vec![0.0f32; 8000];
        v.extend_from_slice(speech);
        v.extend(std::iter::repeat_n(0.0, 16_000));
        v
    };
    let mut t = push_audio(&mut h, &with_silence(&en[0]), gst::ClockTime::ZERO);
    hit_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the first utterance reaches the src pad");
    for speech in &en[1..] {
        t = push_audio(&mut h, &with_silence(speech), t);
    }
    el.set_property_from_str("direction", "fr-en");
    push_audio(&mut h, &with_silence(&fr), t);

    // Everything up to here was posted by the streaming thread (this one): four ends of speech
    // and two drops are already on the bus.
    let msgs = collect_messages(&bus, Duration::from_secs(10), {
        let mut drops = 0;
        let mut ends = 0;
        move |s| {
            match s.name().as_str() {
                "tolk-dropped" => drops += 1,
                "tolk-speech" if s.get::<&str>("event").unwrap() == "end" => ends += 1,
                _ => {}
            }
            drops == 2 && ends == 4
        }
    });
    let ids: Vec<u64> = named(&msgs, "tolk-speech")
        .iter()
        .filter(|s| s.get::<&str>("event").unwrap() == "end")
        .map(|s| s.get::<u64>("utterance").unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "four utterances: {msgs:?}");
    let dropped = named(&msgs, "tolk-dropped");
    let dropped_ids: Vec<u64> = dropped
        .iter()
        .map(|s| s.get::<u64>("utterance").unwrap())
        .collect();
    assert_eq!(dropped_ids, vec![ids[1], ids[2]], "the oldest waiting go");
    for d in &dropped {
        assert_eq!(d.get::<&str>("direction").unwrap(), "en-fr");
        assert!(d.get::<u64>("speech-start").unwrap() < d.get::<u64>("speech-end").unwrap());
    }

    srcpad.remove_probe(probe);
    let mut all = msgs;
    let msgs = collect_messages(&bus, Duration::from_secs(120), |s| {
        s.name() == "tolk-utterance-done" && s.get::<u64>("utterance").unwrap() == ids[3]
    });
    let done: Vec<u64> = named(&msgs, "tolk-utterance-done")
        .iter()
        .map(|s| s.get::<u64>("utterance").unwrap())
        .collect();
    assert_eq!(
        done,
        vec![ids[0], ids[3]],
        "the survivors are decoded in order"
    );
    all.extend(msgs);
    for s in named(&all, "tolk-subtitle")
        .into_iter()
        .chain(named(&all, "tolk-utterance-done"))
    {
        let id = s.get::<u64>("utterance").unwrap();
        assert!(
            id == ids[0] || id == ids[3],
            "no subtitle of a dropped utterance"
        );
        let want = if id == ids[3] { "fr-en" } else { "en-fr" };
        assert_eq!(s.get::<&str>("direction").unwrap(), want, "utterance {id}");
    }
    assert!(
        named(&all, "tolk-subtitle")
            .iter()
            .any(|s| s.get::<u64>("utterance").unwrap() == ids[3]),
        "utterance 4 is subtitled"
    );
    let mut buffers = Vec::new();
    while let Some(b) = h.try_pull() {
        buffers.push(b);
    }
    check_output(&mut h, &buffers);
}

/// The element's latency in a live pipeline: upstream's plus the endpoint delay (whole 512-sample
/// VAD windows of `min-silence-ms`, one more to decide the last, one for an end of speech moved
/// back) plus `decode-latency-ms`; changing the latter while playing posts a latency message and
/// the next query answers the new value. (The sink does not wait for a preroll buffer: with
/// silence in, nothing comes out.)
#[test]
fn latency_query_answers_upstream_plus_the_endpoint_and_decode_delays() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    init();
    let pipeline = gst::parse::launch(&format!(
        "audiotestsrc is-live=true wave=silence samplesperbuffer=320 ! {CAPS} ! \
         tolktranslate name=t model={} min-silence-ms=400 decode-latency-ms=300 ! \
         fakesink sync=true async=false",
        model.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let el = pipeline.by_name("t").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let (res, state, _) = pipeline.state(gst::ClockTime::from_seconds(30));
    assert!(
        res.is_ok() && state == gst::State::Playing,
        "{res:?} {state:?}"
    );

    // Upstream's answer (audiotestsrc answers once its caps are negotiated), and the element's
    // src pad's at the same moment (asked again until upstream has not changed in between).
    let sinkpad = el.static_pad("sink").unwrap();
    let srcpad = el.static_pad("src").unwrap();
    let query = |pad: &gst::Pad, peer: bool| {
        let mut q = gst::query::Latency::new();
        let ok = if peer {
            pad.peer_query(&mut q)
        } else {
            pad.query(&mut q)
        };
        ok.then(|| q.result())
    };
    let answers = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = query(&sinkpad, true);
            let ours = query(&srcpad, false);
            if let Some(upstream) = before.filter(|b| Some(*b) == query(&sinkpad, true)) {
                return (upstream, ours.expect("the src pad answers"));
            }
            assert!(
                Instant::now() < deadline,
                "upstream answers the latency query"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // 400 ms = 6400 samples = 12.5 windows: 13 + 2 windows of 32 ms = 480 ms.
    let (upstream, (live, min, max)) = answers();
    println!("upstream {upstream:?}, element ({live}, {min}, {max:?})");
    assert!(live, "upstream is live");
    assert_eq!(min, upstream.1 + gst::ClockTime::from_mseconds(480 + 300));
    assert_eq!(max, gst::ClockTime::NONE, "the element may hold any amount");
    // The sink sees it: the pipeline's latency includes the element's.
    let mut q = gst::query::Latency::new();
    assert!(pipeline.query(&mut q));
    assert!(q.result().0 && q.result().1 >= gst::ClockTime::from_mseconds(780));

    // Drain what the start posted, then change the decode allowance while playing.
    while bus.pop().is_some() {}
    el.set_property("decode-latency-ms", 100u32);
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(5),
            &[gst::MessageType::Latency],
        )
        .expect("a latency message");
    assert_eq!(msg.src(), Some(el.upcast_ref::<gst::Object>()));
    let (upstream, (_, min, _)) = answers();
    assert_eq!(min, upstream.1 + gst::ClockTime::from_mseconds(480 + 100));
    pipeline.set_state(gst::State::Null).unwrap();
}
