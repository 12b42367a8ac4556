//! The streaming pipeline on a tiny random translator written at test time: streaming vs
//! offline, several utterances, the overload policy, bad input, sources that end or disappear,
//! and a 10-minute soak with flat memory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tolk_models::audio::condition::{condition, ConditionConfig};
use tolk_models::audio::resample::resample;
use tolk_models::audio::wav::read_wav;
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_runtime::audio::{AudioSource, Pacing, RingOptions};
use tolk_runtime::events::{Collect, Event, EventRecord, EventSink};
use tolk_runtime::metrics::Metrics;
use tolk_runtime::pipeline::{
    rss_kib, FeedEnd, MemoryOut, NullOut, Pipeline, PipelineOptions, StreamEvent, Translating,
    VadKind,
};

const SR: usize = 16_000;

fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tolk-pipeline-tiny-{}", std::process::id()));
        write_random_translator(&dir, &TinyTranslatorSpec::default()).unwrap();
        dir
    })
}

fn translator() -> Arc<Translator> {
    static TR: OnceLock<Arc<Translator>> = OnceLock::new();
    TR.get_or_init(|| {
        Arc::new(Translator::load(model_dir(), tch::Device::Cpu, tch::Kind::Float).unwrap())
    })
    .clone()
}

/// espeak-ng speech at 16 kHz.
fn speech(text: &str) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("s.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is installed (deploy/host/setup.sh)");
    assert!(st.success());
    let a = read_wav(&wav).unwrap();
    assert_eq!(a.channels, 1);
    resample(&a.samples, a.sample_rate, SR as u32).unwrap()
}

fn silence(s: f64) -> Vec<f32> {
    vec![0.0; (s * SR as f64) as usize]
}

fn opts() -> PipelineOptions {
    let mut o = PipelineOptions::new(
        Direction::EnFr,
        Mode::ChainOfModality,
        &tolk_config::VadConfig {
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 300,
            pre_roll_ms: 200,
            max_utterance_ms: 10_000,
            lead_ms: 20,
            tail_ms: Some(250),
        },
    );
    o.vocoder_chunk_units = 3;
    o
}

/// One segment: the samples given to the translator, the speech inside them, the units.
#[derive(Debug, Clone, PartialEq)]
struct Seg {
    start: u64,
    end: u64,
    speech_start: u64,
    speech_end: u64,
    units: Vec<u32>,
}

/// Segments, reports and output PCM of one synchronous run.
type SyncRun = (
    Vec<Seg>,
    Vec<tolk_runtime::pipeline::UtteranceReport>,
    Vec<f32>,
);

/// Runs `audio` (16 kHz) through a synchronous [`Translating`] in chunks of `chunk` samples.
fn run_sync(audio: &[f32], chunk: usize) -> SyncRun {
    run_sync_with(audio, chunk, &opts())
}

fn run_sync_with(audio: &[f32], chunk: usize, opts: &PipelineOptions) -> SyncRun {
    let mut t = Translating::new(translator(), &VadKind::energy(), opts, SR as u32).unwrap();
    let mut out = MemoryOut::default();
    let mut segs = Vec::new();
    let mut reports = Vec::new();
    let mut on = |ev: StreamEvent<'_>| {
        if let StreamEvent::End(u) = ev {
            segs.push(Seg {
                start: u.start_sample,
                end: u.end_sample,
                speech_start: u.speech_start,
                speech_end: u.speech_end,
                units: u.units.clone(),
            });
        }
        if let StreamEvent::Failed(u, e) = ev {
            panic!("utterance {} failed: {e}", u.id);
        }
    };
    for c in audio.chunks(chunk) {
        reports.extend(t.push(c, &mut out, &mut on).unwrap());
    }
    reports.extend(t.finish(&mut out, &mut on).unwrap());
    (segs, reports, out.samples())
}

/// `audio` as the front end conditions it (already 16 kHz: resampling is a no-op, no DC removal).
fn at_16k(audio: &[f32]) -> Vec<f32> {
    condition(
        audio,
        SR as u32,
        1,
        ConditionConfig {
            target_rate: SR as u32,
            remove_dc: false,
        },
    )
    .unwrap()
    .0
}

/// The front end keeps the streaming contract: its start events and utterances (boundaries,
/// units, end reason) are the same whatever the chunking, on a second stream after `finish` and
/// after a reset mid-stream. Wall-clock fields (`ended_at`, `extract_s`) are not compared.
#[test]
fn front_end_chunked_equals_whole() {
    use tolk_models::stream::run_whole;
    use tolk_models::stream::testing::assert_chunked_eq_offline;
    use tolk_runtime::pipeline::{FrontEnd, FrontEvent};

    let mut audio = silence(0.4);
    audio.extend(speech("Where is the museum?"));
    audio.extend(silence(0.8));
    audio.extend(speech("Thank you."));
    // The stream ends inside the second utterance's tail: `finish` must close it. Utterance ids
    // keep counting across streams (unique within the pipeline), so they are not compared.
    audio.truncate(audio.len() - SR / 20);
    let tr = translator();
    let make = || FrontEnd::new(tr.clone(), &VadKind::energy(), &opts(), SR as u32).unwrap();
    let key = |evs: &[FrontEvent]| -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                FrontEvent::Start { sample, .. } => format!("start @{sample}"),
                FrontEvent::Utterance(u) => format!(
                    "utterance {}..{} speech {}..{} {} units {:?}",
                    u.start_sample,
                    u.end_sample,
                    u.speech_start,
                    u.speech_end,
                    u.cause.as_str(),
                    u.units
                ),
            })
            .collect()
    };
    let whole = run_whole(&mut make(), &audio).unwrap();
    let want = key(&whole);
    assert_eq!(
        whole
            .iter()
            .filter(|e| matches!(e, FrontEvent::Utterance(_)))
            .count(),
        2,
        "{want:#?}"
    );
    assert_chunked_eq_offline(
        make,
        &audio,
        &whole,
        &[1, 160, 511, 4_000, 16_000],
        |c, got, _| assert_eq!(key(got), want, "chunk {c}"),
    );
    println!(
        "front end: {} events, identical for chunks 1..16000",
        want.len()
    );
}

#[test]
fn streaming_matches_offline_for_any_chunk_size() {
    let mut audio = silence(0.5);
    audio.extend(speech("Where is the train station?"));
    audio.extend(silence(1.0));
    let tr = translator();
    let conditioned = at_16k(&audio);
    let mut first: Option<Vec<Seg>> = None;
    for chunk in [160, 512, 16_000] {
        let (segs, reports, pcm) = run_sync(&audio, chunk);
        assert_eq!(
            segs.len(),
            1,
            "chunk {chunk}: one utterance expected, got {segs:?}"
        );
        assert_eq!(reports.len(), 1);
        let Seg {
            start: s,
            end: e,
            units,
            ..
        } = &segs[0];
        let seg = &conditioned[*s as usize..*e as usize];
        let offline_units = tr.extract_units(seg).unwrap();
        assert_eq!(
            units, &offline_units,
            "chunk {chunk}: streaming units differ"
        );
        let off = tr
            .translate_audio(seg, Direction::EnFr, Mode::ChainOfModality)
            .unwrap();
        assert_eq!(reports[0].text, off.text, "chunk {chunk}");
        assert_eq!(reports[0].units, off.units, "chunk {chunk}");
        // The streamed vocoder output equals offline synthesis of the same units.
        let syn = tr
            .synthesize(&off.units, Direction::EnFr.tgt())
            .unwrap_or_default();
        assert_eq!(pcm.len(), syn.len(), "chunk {chunk}");
        let worst = pcm
            .iter()
            .zip(&syn)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "chunk {chunk}: segment {s}..{e}, {} source units, text {:?}, {} target units, \
             worst PCM difference {worst:e}",
            units.len(),
            off.text,
            off.units.len()
        );
        assert!(worst < 1e-4, "chunk {chunk}: worst PCM difference {worst}");
        match &first {
            None => first = Some(segs),
            Some(f) => assert_eq!(f, &segs, "chunk {chunk}: segmentation differs"),
        }
    }
}

/// Seeded uniform noise at about `db` dBFS.
fn quiet_noise(seconds: f64, db: f32, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = (3.0 * 10f32.powf(db / 10.0)).sqrt();
    (0..(seconds * SR as f64) as usize)
        .map(|_| rng.random_range(-a..a))
        .collect()
}

#[test]
fn translator_gets_the_speech_with_lead_and_tail_for_any_chunk_size() {
    // A soft onset under the energy VAD's floor (-55 dBFS): 80 ms at -58 dBFS before the voice.
    // The endpointer starts at the voice; the onset search over the pre-roll finds the sound.
    let lead_in = 8_000;
    let mut audio = silence(0.5);
    audio.extend(quiet_noise(0.08, -58.0, 7));
    let sp = speech("Where is the train station?");
    let last = sp.iter().rposition(|x| x.abs() > 1e-4).unwrap() + 1;
    audio.extend(&sp);
    audio.extend(silence(1.0));
    let (on, off) = (lead_in as u64, (lead_in + 1_280 + last) as u64);
    let tr = translator();
    let conditioned = at_16k(&audio);
    for (lead_ms, tail_ms) in [(0, 300), (40, 120)] {
        let mut o = opts();
        o.lead_ms = lead_ms;
        o.tail_ms = tail_ms;
        let (lead, tail) = (lead_ms as u64 * 16, tail_ms as u64 * 16);
        let mut first: Option<Vec<Seg>> = None;
        for chunk in [160, 512, 4_000, 16_000] {
            let (segs, _, _) = run_sync_with(&audio, chunk, &o);
            assert_eq!(segs.len(), 1, "chunk {chunk}: {segs:?}");
            let g = &segs[0];
            println!(
                "lead {lead_ms} ms, tail {tail_ms} ms, chunk {chunk}: speech {}..{} (sound {on}..{off}), \
                 translator {}..{}, {} units",
                g.speech_start,
                g.speech_end,
                g.start,
                g.end,
                g.units.len()
            );
            // The boundaries sit on the sound within a 2 ms frame (the VAD's own are 32 ms
            // windows, and its start is 80 ms late here).
            assert!(
                g.speech_start.abs_diff(on) <= 32,
                "onset {} for a sound starting at {on}",
                g.speech_start
            );
            assert!(
                g.speech_end.abs_diff(off) <= 32,
                "end {} for a sound ending at {off}",
                g.speech_end
            );
            assert_eq!(g.start, g.speech_start - lead);
            assert_eq!(g.end, g.speech_end + tail);
            // Streaming units are the offline units of exactly those samples.
            let offline = tr
                .extract_units(&conditioned[g.start as usize..g.end as usize])
                .unwrap();
            assert_eq!(g.units, offline, "chunk {chunk}: streaming units differ");
            match &first {
                None => first = Some(segs),
                Some(f) => assert_eq!(f, &segs, "chunk {chunk}: segmentation differs"),
            }
        }
    }
}

#[test]
fn a_tail_longer_than_the_endpoint_silence_is_refused() {
    let mut o = opts();
    o.tail_ms = 400; // min_silence_ms is 300
    let err = Translating::new(translator(), &VadKind::energy(), &o, SR as u32)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("tail of 400 ms"), "{err}");
}

fn collect_events(events: &Collect) -> Vec<Event> {
    events.take().into_iter().map(|r| r.event).collect()
}

#[test]
fn two_utterances_separated_by_silence_give_two_translations() {
    let mut audio = silence(0.3);
    audio.extend(speech("Where is the train station?"));
    audio.extend(silence(1.0));
    audio.extend(speech("Thank you, have a nice day."));
    audio.extend(silence(1.0));
    let events = Arc::new(Collect::default());
    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::start(
        translator(),
        VadKind::energy(),
        opts(),
        MemoryOut::default(),
        events.clone(),
        metrics.clone(),
    )
    .unwrap();
    let mut src = AudioSource::memory(audio, SR as u32, Pacing::Fast, RingOptions::default());
    let end = p.feed(&mut src, &AtomicBool::new(false)).unwrap();
    assert_eq!(end, FeedEnd::Finished);
    let sum = p.finish(true);
    assert_eq!(sum.reports.len(), 2, "failed: {:?}", sum.failed);
    assert!(sum.dropped.is_empty());
    let ev = collect_events(&events);
    let finals = ev
        .iter()
        .filter(|e| matches!(e, Event::SubtitleFinal { .. }))
        .count();
    assert_eq!(finals, 2, "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, Event::SourceEnded { .. })));
    assert_eq!(metrics.utterances.get(), 2);
    assert_eq!(metrics.rtf.count(), 2);
    assert_eq!(metrics.first_audio_latency.count(), 2);
    let pcm = sum.output.samples();
    assert!(!pcm.is_empty() && pcm.iter().all(|x| x.is_finite()));
    assert_eq!(*sum.output.utterances.lock().unwrap(), 2);
}

#[test]
fn overload_drops_the_oldest_waiting_utterance() {
    // Eight short utterances arrive at once while the worker needs 400 ms each; queue limit 2.
    let phrase = speech("Platform three.");
    let mut audio = Vec::new();
    for _ in 0..8 {
        audio.extend(&phrase);
        audio.extend(silence(0.6));
    }
    let events = Arc::new(Collect::default());
    let metrics = Arc::new(Metrics::new());
    let mut o = opts();
    o.queue_limit = 2;
    let mut p = Pipeline::start(
        translator(),
        VadKind::energy(),
        o,
        NullOut,
        events.clone(),
        metrics.clone(),
    )
    .unwrap();
    p.set_worker_delay(Duration::from_millis(400));
    let mut src = AudioSource::memory(audio, SR as u32, Pacing::Fast, RingOptions::default());
    let t0 = Instant::now();
    p.feed(&mut src, &AtomicBool::new(false)).unwrap();
    // The capture side never waited for the model.
    let feed_s = t0.elapsed().as_secs_f64();
    assert!(p.queued() <= 2);
    let sum = p.finish(true);
    println!(
        "fed 8 utterances in {feed_s:.2} s; translated {:?}, dropped {:?}",
        sum.reports.iter().map(|r| r.id).collect::<Vec<_>>(),
        sum.dropped
    );
    assert!(
        !sum.dropped.is_empty(),
        "a burst beyond the limit must drop"
    );
    assert_eq!(sum.reports.len() + sum.dropped.len() + sum.failed.len(), 8);
    // Drop-oldest: the last utterance is always translated, dropped ids are older than the
    // ones translated after them.
    assert!(sum.reports.iter().any(|r| r.id == 8));
    let ev = collect_events(&events);
    let dropped_ev: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::UtteranceDropped {
                utterance,
                queue_depth,
                ..
            } => {
                assert!(*queue_depth <= 2);
                Some(*utterance)
            }
            _ => None,
        })
        .collect();
    assert_eq!(dropped_ev, sum.dropped);
    let mut sorted = dropped_ev.clone();
    sorted.sort();
    assert_eq!(sorted, dropped_ev, "the oldest goes first");
    assert_eq!(metrics.utterances_dropped.get(), sum.dropped.len() as u64);
}

#[test]
fn silence_noise_clipping_and_nan_do_not_crash() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut audio = silence(1.0);
    audio.extend((0..SR * 2).map(|_| rng.random_range(-0.5f32..0.5)));
    audio.extend(silence(1.0));
    // Clipped speech: 20x gain, clamped by the conditioner.
    audio.extend(
        speech("Where is the train station?")
            .iter()
            .map(|x| x * 20.0),
    );
    audio.extend(silence(1.0));
    // NaN and infinities in the middle of speech.
    let mut bad = speech("Thank you.");
    for i in (0..bad.len()).step_by(97) {
        bad[i] = if i % 2 == 0 { f32::NAN } else { f32::INFINITY };
    }
    audio.extend(bad);
    audio.extend(silence(1.0));
    audio.extend(vec![f32::NAN; SR]);
    audio.extend(silence(0.5));

    let mut t = Translating::new(translator(), &VadKind::energy(), &opts(), SR as u32).unwrap();
    let mut out = MemoryOut::default();
    let mut reports = Vec::new();
    let mut on = |_: StreamEvent<'_>| {};
    for c in audio.chunks(320) {
        reports.extend(t.push(c, &mut out, &mut on).unwrap());
    }
    let nf = t.front.non_finite_samples();
    let clipped = t.front.clipped_samples();
    reports.extend(t.finish(&mut out, &mut on).unwrap());
    println!(
        "{} utterances, {nf} non-finite input samples sanitized, {clipped} clipped",
        reports.len()
    );
    assert!(nf >= SR, "NaN input must be counted, got {nf}");
    assert!(clipped > 0);
    assert!(!reports.is_empty());
    for r in &reports {
        assert!(r.rtf.is_finite());
    }
    let pcm = out.samples();
    assert!(
        pcm.iter().all(|x| x.is_finite()),
        "NaN propagated to the output"
    );
}

/// Counts events instead of keeping them (the soak test).
#[derive(Default)]
struct Count(AtomicU64, AtomicU64);

impl EventSink for Count {
    fn emit(&self, r: &EventRecord) {
        self.0.fetch_add(1, Ordering::Relaxed);
        if matches!(r.event, Event::UtteranceDone { .. }) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn sources_that_end_or_disappear_do_not_stop_the_loop() {
    let events = Arc::new(Collect::default());
    let mut p = Pipeline::start(
        translator(),
        VadKind::energy(),
        opts(),
        MemoryOut::default(),
        events.clone(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    // A file that ends in the middle of speech: the open utterance is closed and translated.
    let mut cut = silence(0.3);
    let sp = speech("Where is the train station?");
    cut.extend(&sp[..sp.len() * 2 / 3]);
    let mut src = AudioSource::memory(cut, SR as u32, Pacing::Fast, RingOptions::default());
    assert_eq!(p.feed(&mut src, &stop).unwrap(), FeedEnd::Finished);

    // A GStreamer source over a corrupt file: lost (or refused at open), never a panic.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, vec![0x5au8; 20_000]).unwrap();
    match AudioSource::gstreamer(
        &format!("filesrc location={} ! wavparse", bad.display()),
        SR as u32,
        RingOptions::default(),
    ) {
        Ok(mut src) => {
            let end = p.feed(&mut src, &stop).unwrap();
            assert!(matches!(end, FeedEnd::Lost(_)), "{end:?}");
        }
        Err(e) => println!("corrupt pipeline refused at open: {e}"),
    }

    // A GStreamer file source that plays speech and reaches EOS.
    let good = dir.path().join("good.wav");
    let mut a = silence(0.3);
    a.extend(speech("Thank you, have a nice day."));
    a.extend(silence(1.0));
    tolk_models::audio::wav::write_wav(
        &good,
        &a,
        SR as u32,
        1,
        tolk_models::audio::wav::WavFormat::Pcm16,
    )
    .unwrap();
    let mut src = AudioSource::gstreamer(
        &format!("filesrc location={} ! wavparse", good.display()),
        SR as u32,
        RingOptions::default(),
    )
    .unwrap();
    assert_eq!(p.feed(&mut src, &stop).unwrap(), FeedEnd::Finished);

    // The same pipeline still translates.
    let sum = p.finish(true);
    assert_eq!(sum.reports.len(), 2, "failed: {:?}", sum.failed);
    let ev = collect_events(&events);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::UtteranceEnd {
            cause: tolk_models::audio::endpoint::EndReason::EndOfStream,
            ..
        }
    )));
}

#[test]
fn ten_minutes_of_input_with_flat_memory() {
    // 10 minutes: phrases and silences repeated (espeak-ng once, then reused).
    let phrases = [
        speech("Where is the train station?"),
        speech("The next bus leaves at ten past four."),
        speech("Thank you."),
    ];
    let total = 600 * SR;
    let mut audio = Vec::with_capacity(total + SR * 10);
    let mut i = 0;
    while audio.len() < total {
        audio.extend(&phrases[i % 3]);
        audio.extend(silence(0.5 + (i % 4) as f64 * 0.5));
        i += 1;
    }
    let seconds = audio.len() as f64 / SR as f64;
    let count = Arc::new(Count::default());
    let mut o = opts();
    o.queue_limit = 4;
    let mut p = Pipeline::start(
        translator(),
        VadKind::energy(),
        o,
        NullOut,
        count.clone(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    // Warm up (allocator pools, libtorch caches) on the first minute, then measure.
    let warm: Vec<f32> = audio[..60 * SR].to_vec();
    let rest: Vec<f32> = audio[60 * SR..].to_vec();
    drop(audio);
    let mut src = AudioSource::memory(warm, SR as u32, Pacing::Fast, RingOptions::default());
    p.feed(&mut src, &AtomicBool::new(false)).unwrap();
    drop(src);
    let mut src = AudioSource::memory(rest, SR as u32, Pacing::Fast, RingOptions::default());
    let rss0 = rss_kib().unwrap();
    let t0 = Instant::now();
    p.feed(&mut src, &AtomicBool::new(false)).unwrap();
    let peak_workers = p.max_rss_kib();
    let sum = p.finish(true);
    let rss1 = rss_kib().unwrap();
    let wall = t0.elapsed().as_secs_f64();
    let done = count.1.load(Ordering::Relaxed);
    println!(
        "{seconds:.0} s of audio ({i} phrases): {} translated, {} dropped, {} failed in \
         {wall:.1} s after warm-up; RSS {} -> {} KiB (worker peak {peak_workers} KiB)",
        sum.reports.len(),
        sum.dropped.len(),
        sum.failed.len(),
        rss0,
        rss1
    );
    assert_eq!(done as usize, sum.reports.len());
    assert!(sum.reports.len() + sum.dropped.len() > i * 8 / 10);
    let growth = rss1.max(peak_workers).saturating_sub(rss0);
    assert!(
        growth < 40 * 1024,
        "RSS grew by {growth} KiB over 9 minutes of input"
    );
}

#[test]
fn a_direction_switch_applies_from_the_next_utterance_and_a_pause_hears_nothing() {
    let mut audio = speech("Where is the train station?");
    audio.extend(silence(1.0));
    let events = Arc::new(Collect::default());
    let mut o = opts();
    o.also_offered = vec![Direction::FrEn];
    let mut p = Pipeline::start(
        translator(),
        VadKind::energy(),
        o,
        NullOut,
        events.clone(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let control = p.control();
    assert_eq!(control.offered(), &[Direction::EnFr, Direction::FrEn]);
    let feed = |p: &mut Pipeline<NullOut>| {
        let mut src = AudioSource::memory(
            audio.clone(),
            SR as u32,
            Pacing::Fast,
            RingOptions::default(),
        );
        assert_eq!(
            p.feed(&mut src, &AtomicBool::new(false)).unwrap(),
            FeedEnd::Finished
        );
    };
    feed(&mut p);
    control
        .set_direction("fr-en", tolk_runtime::pipeline::Requester::Visitor)
        .unwrap();
    feed(&mut p);
    control.set_listening(false, tolk_runtime::pipeline::Requester::Operator);
    feed(&mut p);
    let sum = p.finish(true);
    let dirs: Vec<Direction> = sum.reports.iter().map(|r| r.direction).collect();
    assert_eq!(dirs, [Direction::EnFr, Direction::FrEn], "{:?}", sum.failed);
    let ev = collect_events(&events);
    let ends: Vec<&str> = ev
        .iter()
        .filter_map(|e| match e {
            Event::UtteranceEnd { direction, .. } => Some(direction.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(ends, ["en-fr", "fr-en"]);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::DirectionChanged { direction, by } if direction == "fr-en" && by == "visitor"
    )));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::ListeningChanged {
            listening: false,
            ..
        }
    )));
}

#[test]
fn pausing_mid_utterance_reports_it_dropped() {
    let mut audio = speech("Where is the train station, please?");
    let speech_s = audio.len() as f64 / SR as f64;
    audio.extend(silence(1.0));
    let events = Arc::new(Collect::default());
    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::start(
        translator(),
        VadKind::energy(),
        opts(),
        NullOut,
        events.clone(),
        metrics.clone(),
    )
    .unwrap();
    let control = p.control();
    // Live pacing: the pause comes while the sentence is being spoken.
    let mut src = AudioSource::memory(
        audio,
        SR as u32,
        Pacing::RealTime { period_frames: 320 },
        RingOptions::default(),
    );
    let pause_at = Duration::from_secs_f64(speech_s * 0.6);
    let pauser = std::thread::spawn(move || {
        std::thread::sleep(pause_at);
        control.set_listening(false, tolk_runtime::pipeline::Requester::Operator);
    });
    p.feed(&mut src, &AtomicBool::new(false)).unwrap();
    pauser.join().unwrap();
    let sum = p.finish(true);
    assert!(
        sum.reports.is_empty(),
        "nothing is translated after the pause"
    );
    let ev = collect_events(&events);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::UtteranceStart { utterance: 1, .. })),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::UtteranceDropped { utterance: 1, reason, .. } if reason.contains("paused")
        )),
        "{ev:?}"
    );
    assert_eq!(metrics.utterances_dropped.get(), 1);
}
