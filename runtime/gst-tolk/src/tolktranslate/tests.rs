//! The streaming front end against offline extraction: the same segments and units for every
//! chunk size, and units equal to `UnitExtractor::extract` of each segment; output timestamps
//! never earlier than the reported latency allows; the latency and the output timeline worked
//! out by hand.

use std::sync::Arc;

use gstreamer as gst;
use tch::Kind;

use tolk_models::audio::endpoint::EndReason;
use tolk_models::audio::SAMPLE_RATE;
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_models::translator::Translator;

use super::output::Timeline;
use super::settings::Settings;
use super::state::{Engine, Front, FrontEvent};

fn engine(dir: &std::path::Path) -> Engine {
    let model = dir.join("model");
    write_random_translator(&model, &TinyTranslatorSpec::default()).unwrap();
    let translator = Translator::load(&model, tch::Device::Cpu, Kind::Float).unwrap();
    Engine {
        key: (model, "cpu".into(), None),
        translator: Arc::new(translator),
        silero: None,
    }
}

fn speech(dir: &std::path::Path, text: &str) -> Vec<f32> {
    let wav = dir.join("s.wav");
    let st = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng runs");
    assert!(st.success());
    let w = tolk_models::audio::wav::read_wav(&wav).unwrap();
    assert_eq!(w.channels, 1);
    tolk_models::audio::resample::resample(&w.samples, w.sample_rate, SAMPLE_RATE).unwrap()
}

/// Speech start and end (from the element's timestamps, in samples), the samples given to
/// the translator (the speech with the front end's lead and tail) and their units.
type Segment = (u64, u64, (u64, u64), Vec<u32>);

/// 1 sample = 62.5 us.
fn to_samples(t: gst::ClockTime) -> u64 {
    t.nseconds() / 62_500
}

fn run(engine: &Engine, s: &Settings, audio: &[f32], chunk: usize) -> Vec<Segment> {
    let mut front = Front::new(engine, s).unwrap();
    front.base = Some(gst::ClockTime::ZERO);
    let mut ids = 0;
    let mut events = Vec::new();
    let delay = s.endpoint_delay_samples();
    let check_output_from = |ev: &FrontEvent, pushed_from: u64| {
        if let FrontEvent::End {
            end,
            output_from,
            utt,
            ..
        } = ev
        {
            let (end, from) = (to_samples(*end), to_samples(*output_from));
            if utt.cause == EndReason::Silence {
                assert_eq!(
                    from, end,
                    "after silence the audio starts at the end of speech"
                );
            } else {
                assert!(from >= end, "audio before its end of speech");
            }
            assert!(
                from + delay >= pushed_from,
                "audio at {from} is later than the latency allows: input from {pushed_from} \
                 ended the utterance ({:?}, delay {delay})",
                utt.cause
            );
        }
    };
    let mut pushed = 0;
    for c in audio.chunks(chunk) {
        let ev = front.push(c, &mut ids).unwrap();
        ev.iter().for_each(|e| check_output_from(e, pushed));
        pushed += c.len() as u64;
        events.extend(ev);
    }
    let ev = front.finish(&mut ids).unwrap();
    ev.iter().for_each(|e| check_output_from(e, pushed));
    events.extend(ev);
    events
        .into_iter()
        .filter_map(|e| match e {
            FrontEvent::End {
                start, end, utt, ..
            } => Some((
                to_samples(start),
                to_samples(end),
                (utt.start_sample, utt.end_sample),
                utt.units,
            )),
            FrontEvent::Start { .. } => None,
        })
        .collect()
}

fn check(engine: &Engine, s: &Settings, audio: &[f32]) -> Vec<Segment> {
    let reference = run(engine, s, audio, 320);
    for (start, end, (from, to), units) in &reference {
        // Timestamps are the speech; the translator got it with the lead and the tail.
        assert!(from <= start && start < end && end <= to, "{reference:?}");
        let offline: Vec<u32> = engine
            .translator
            .extract_units(&audio[*from as usize..*to as usize])
            .unwrap();
        assert_eq!(
            units, &offline,
            "segment {from}..{to}: streaming vs offline units"
        );
    }
    for chunk in [160, 512, 1000, 16_000] {
        assert_eq!(run(engine, s, audio, chunk), reference, "chunks of {chunk}");
    }
    println!(
        "segments: {:?}",
        reference
            .iter()
            .map(|x| (x.0, x.1, x.2, x.3.len()))
            .collect::<Vec<_>>()
    );
    reference
}

#[test]
fn segments_and_units_match_offline_for_any_chunking() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let a = speech(dir.path(), "Where is the train station?");
    let b = speech(dir.path(), "Thank you, have a nice day.");
    let mut audio = vec![0.0f32; 8000];
    audio.extend(&a);
    audio.extend(vec![0.0f32; 16_000]);
    audio.extend(&b);
    audio.extend(vec![0.0f32; 16_000]);
    let s = Settings {
        min_silence_ms: 400,
        ..Settings::default()
    };
    let segs = check(&e, &s, &audio);
    assert_eq!(segs.len(), 2, "two utterances");
    assert!(segs[0].1 <= 8000 + a.len() as u64 + 512);
    assert!(segs[1].0 >= 8000 + a.len() as u64);
}

#[test]
fn long_speech_is_cut_at_max_length_with_the_same_units() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let audio = speech(
        dir.path(),
        "The next bus leaves at ten past four and a ticket to Lyon costs twelve euros",
    );
    let s = Settings {
        min_silence_ms: 400,
        max_utterance_ms: 1000,
        ..Settings::default()
    };
    let segs = check(&e, &s, &audio);
    assert!(
        segs.len() >= 3,
        "{} s of speech cut into 1 s pieces",
        audio.len() / 16_000
    );
    for (start, end, _, _) in &segs {
        assert!(
            end - start <= 16_000 + 512,
            "{start}..{end} exceeds the maximum"
        );
    }
}

/// A maximum-length cut at an earlier pause is found long after that pause: its audio starts
/// not at the pause but at most the endpoint delay before the input that ended it, so that it
/// is not late by more than the latency the element reports.
#[test]
fn a_cut_at_an_earlier_pause_is_timestamped_within_the_latency() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    // Without espeak-ng's trailing and leading silence, which is longer than the endpoint.
    let trim = |x: Vec<f32>| {
        let sound = |v: &f32| v.abs() > 0.01;
        let from = x.iter().position(sound).unwrap();
        let to = x.iter().rposition(sound).unwrap() + 1;
        x[from..to].to_vec()
    };
    let a = trim(speech(dir.path(), "Where is the train station?"));
    let b = trim(speech(dir.path(), "Thank you, have a nice day."));
    let mut audio = a.clone();
    audio.extend(vec![0.0f32; 3200]); // 200 ms: a pause, not an endpoint
    audio.extend(&b);
    audio.extend(vec![0.0f32; 16_000]);
    let max_ms = ((a.len() + 3200 + b.len() / 2) / 16) as u32;
    let s = Settings {
        min_silence_ms: 400,
        max_utterance_ms: max_ms,
        ..Settings::default()
    };
    check(&e, &s, &audio);
    let mut front = Front::new(&e, &s).unwrap();
    front.base = Some(gst::ClockTime::ZERO);
    let mut ids = 0;
    let mut cut = None;
    let mut pushed = 0;
    for c in audio.chunks(320) {
        for ev in front.push(c, &mut ids).unwrap() {
            if let FrontEvent::End {
                end,
                output_from,
                utt,
                ..
            } = ev
            {
                if utt.cause == EndReason::MaxLengthAtPause {
                    cut = Some((to_samples(end), to_samples(output_from), pushed));
                }
            }
        }
        pushed += c.len() as u64;
    }
    let (end, from, pushed) = cut.expect("the speech is cut at the pause");
    println!("cut at {end}, audio from {from}, decided in the input from {pushed}");
    assert!(end <= a.len() as u64 + 3200, "cut at the pause: {end}");
    assert_eq!(from, pushed - s.endpoint_delay_samples());
    assert!(from > end);
}

#[test]
fn latency_is_the_endpoint_delay_plus_the_decode_allowance() {
    // 600 ms = 9600 samples = 18.75 windows of 512: the end is called after 19 whole windows,
    // one more to decide that window, one for an end of speech moved back: 21 * 512 samples.
    let s = Settings::default();
    assert_eq!((s.min_silence_ms, s.decode_latency_ms), (600, 500));
    assert_eq!(s.endpoint_delay_samples(), 21 * 512);
    assert_eq!(
        s.latency(),
        gst::ClockTime::from_mseconds(672 + 500),
        "10752 samples = 672 ms, plus 500 ms"
    );
    // 400 ms = 6400 samples = 12.5 windows -> 13 + 2.
    let s = Settings {
        min_silence_ms: 400,
        decode_latency_ms: 0,
        ..Settings::default()
    };
    assert_eq!(s.latency(), gst::ClockTime::from_mseconds(15 * 32));
    // An exact number of windows needs no rounding up: 512 ms = 16 windows -> 16 + 2.
    let s = Settings {
        min_silence_ms: 512,
        decode_latency_ms: 100,
        ..Settings::default()
    };
    assert_eq!(s.latency(), gst::ClockTime::from_mseconds(18 * 32 + 100));
}

#[test]
fn endpointing_defaults_are_the_kiosks() {
    let s = Settings::default();
    let kiosk = tolk_runtime::pipeline::PipelineOptions::default().endpoint;
    let e = s.endpoint();
    assert_eq!(e.threshold, kiosk.threshold);
    assert_eq!(e.min_speech_ms, kiosk.min_speech_ms);
    assert_eq!(e.min_silence_ms, kiosk.min_silence_ms);
    assert_eq!(e.max_speech_s, kiosk.max_speech_s);
    assert_eq!(
        (s.vad_threshold, s.min_silence_ms, s.max_utterance_ms),
        (0.5, 600, 15_000)
    );
}

#[test]
fn output_timeline_starts_at_the_utterance_or_after_the_previous_output() {
    gst::init().unwrap();
    let ms = gst::ClockTime::from_mseconds;
    let mut t = Timeline::default();
    let stamp = |t: &mut Timeline, pts: gst::ClockTime, n: u64| {
        let mut b = gst::Buffer::new();
        t.stamp(b.get_mut().unwrap(), pts, n);
        (
            b.pts(),
            b.duration(),
            b.flags().contains(gst::BufferFlags::DISCONT),
        )
    };
    let first = t.utterance_start(ms(1000));
    assert_eq!(first, ms(1000));
    assert_eq!(
        stamp(&mut t, first, 1600),
        (Some(ms(1000)), Some(ms(100)), true)
    );
    // An utterance that ended while the previous one still played follows it, back to back.
    let next = t.utterance_start(ms(1050));
    assert_eq!(next, ms(1100));
    assert_eq!(
        stamp(&mut t, next, 800),
        (Some(ms(1100)), Some(ms(50)), false)
    );
    // After a gap: its own time, a discontinuity.
    let later = t.utterance_start(ms(2000));
    assert_eq!(later, ms(2000));
    assert_eq!(
        stamp(&mut t, later, 160),
        (Some(ms(2000)), Some(ms(10)), true)
    );
    // Never backwards, even for an earlier end of speech.
    assert_eq!(t.utterance_start(ms(500)), ms(2010));
    // After a flush the timeline starts again wherever the next utterance is.
    t.restart();
    assert_eq!(t.utterance_start(ms(500)), ms(500));
}
