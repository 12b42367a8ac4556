//! The translator engine (`tolk_models::translator`) on a tiny random translator folder built at
//! test time (`tolk_models::translator::testing`): loading, constrained decoding in every mode, cached
//! decoding against full recomputation, streamed subtitles and streamed speech against the
//! offline results, streaming unit extraction, and broken folders.

use std::path::Path;
use std::sync::Arc;
use tolk_models::stream::run_chunked;
use tolk_models::stream::testing::assert_chunked_eq_offline_exact;

use tch::{Device, Kind, Tensor};
use tolk_models::llama::Llama;
use tolk_models::prompt::{PromptFormat, SpecialToken, Task};
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_models::translator::{
    DecodeSession, Direction, Event, Mode, Output, Stop, Strategy, TranslationOutput, Translator,
};
use tolk_models::ModelError;

fn folder(spec: &TinyTranslatorSpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random_translator(dir.path(), spec).unwrap();
    dir
}

fn load(dir: &Path) -> Arc<Translator> {
    Arc::new(Translator::load(dir, Device::Cpu, Kind::Float).unwrap())
}

/// Deterministic pseudo-random source units.
fn source_units(n: usize, k: u32, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % k)
        .collect()
}

/// Greedy decoding by recomputing the whole sequence every step (no cache, full logits, the
/// phase masks applied to the full vocabulary): the definition the cached decoder must match.
fn reference_decode(
    llm: &Llama,
    f: &PromptFormat,
    prompt: &[u32],
    task: Task,
    max_text: usize,
    max_units: usize,
) -> Vec<u32> {
    let units_tok = f.id(SpecialToken::Units);
    let end = f.id(SpecialToken::End);
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    let mut in_units = task == Task::S2st;
    let (mut n_text, mut n_units) = (0, 0);
    loop {
        if in_units && n_units >= max_units {
            break;
        }
        let next = if !in_units && n_text >= max_text {
            units_tok
        } else {
            let ids: Vec<i64> = seq.iter().map(|&t| t as i64).collect();
            let logits = tch::no_grad(|| {
                llm.forward(&Tensor::from_slice(&ids).view([1, -1]), None)
                    .unwrap()
            });
            let last: Vec<f32> = Vec::try_from(logits.select(1, -1).view([-1])).unwrap();
            let mask = if in_units {
                f.unit_phase()
            } else {
                f.text_phase(task)
            };
            let mut best: Option<(u32, f32)> = None;
            for (id, &l) in last.iter().enumerate() {
                if mask.allows(id as u32) && best.is_none_or(|(_, b)| l > b) {
                    best = Some((id as u32, l));
                }
            }
            best.unwrap().0
        };
        out.push(next);
        seq.push(next);
        if next == end {
            break;
        }
        if !in_units {
            if next == units_tok {
                in_units = true;
            } else {
                n_text += 1;
            }
        } else {
            n_units += 1;
        }
    }
    out
}

/// The generated ids a decoder output stands for (text, switch, units, end).
fn output_ids(f: &PromptFormat, task: Task, out: &TranslationOutput) -> Vec<u32> {
    let mut ids = out.text_ids.clone();
    if task == Task::ChainOfModality {
        ids.push(f.id(SpecialToken::Units));
    }
    ids.extend(out.units.iter().map(|&u| u + f.unit_base));
    if out.stop == Stop::End {
        ids.push(f.id(SpecialToken::End));
    }
    ids
}

#[test]
fn chain_of_modality_phases_events_and_cache() {
    // Two random models whose greedy paths differ: (a) the text ends on <|units|> by itself and
    // the units run to max_target_units; (b) the text hits max_text_tokens (forced switch) and
    // <|end|> comes at once.
    let a = TinyTranslatorSpec::default();
    let b = TinyTranslatorSpec {
        max_text_tokens: 5,
        end_row_scale: 0.95,
        ..TinyTranslatorSpec::default()
    };
    let mut stops = Vec::new();
    for spec in [a, b] {
        stops.extend(check_chain_of_modality(&spec));
    }
    assert!(stops.contains(&(false, Stop::MaxTokens)), "{stops:?}");
    assert!(stops.contains(&(true, Stop::End)), "{stops:?}");
}

/// Decodes three utterances; returns (text truncated, stop) of each.
fn check_chain_of_modality(spec: &TinyTranslatorSpec) -> Vec<(bool, Stop)> {
    let dir = folder(spec);
    let tr = load(dir.path());
    let f = tr.format().clone();
    assert_eq!(f.num_units, spec.num_units);
    let mut session = DecodeSession::new(Arc::clone(&tr)).unwrap();
    let mut stops = Vec::new();
    for (i, direction) in [Direction::EnFr, Direction::FrEn, Direction::EnFr]
        .into_iter()
        .enumerate()
    {
        let src = source_units(60 + 25 * i, spec.num_units, i as u32);
        let mut deltas = String::new();
        let mut text_end = None;
        let mut streamed_units = Vec::new();
        let out = session
            .decode_units(&src, direction, Mode::ChainOfModality, |e| match e {
                Event::Text { delta } => {
                    assert!(text_end.is_none(), "text after the text phase ended");
                    assert!(!delta.is_empty());
                    deltas.push_str(delta);
                }
                Event::TextEnd { text, .. } => text_end = Some(text.to_string()),
                Event::Unit(u) => {
                    assert!(text_end.is_some(), "a unit before the text phase ended");
                    streamed_units.push(u);
                }
            })
            .unwrap();
        // Phases: text tokens only in the text, units only in the units.
        assert!(out.text_ids.iter().all(|&t| t < f.text_vocab), "{out:?}");
        assert!(out.units.iter().all(|&u| u < f.num_units));
        assert!(out.text_ids.len() <= spec.max_text_tokens);
        assert!(out.units.len() <= spec.max_target_units);
        assert_eq!(
            out.text,
            tr.tokenizer().decode(&out.text_ids, true).unwrap()
        );
        // Streamed subtitles and units are the final ones.
        assert_eq!(deltas, out.text, "streamed text chunks");
        assert_eq!(text_end.as_deref(), Some(out.text.as_str()));
        assert_eq!(streamed_units, out.units);
        // The output parses back through the shared format.
        let ids = output_ids(&f, Task::ChainOfModality, &out);
        let parsed = f.parse_output(&ids);
        assert_eq!(parsed.text_ids, out.text_ids);
        assert_eq!(parsed.units, out.units);
        assert_eq!(parsed.complete, out.stop == Stop::End);
        stops.push((out.text_truncated, out.stop));

        // Cached, sliced-logit decoding = greedy recomputation of the full sequence.
        let mut dsrc = src.clone();
        dsrc.dedup();
        let prompt = f
            .prompt(
                Task::ChainOfModality,
                direction.src(),
                direction.tgt(),
                &dsrc,
            )
            .unwrap();
        let expect = reference_decode(
            tr.llm(),
            &f,
            &prompt,
            Task::ChainOfModality,
            spec.max_text_tokens,
            spec.max_target_units,
        );
        println!(
            "{direction}: {} text tokens (truncated: {}), {} units, stop {:?}, text {:?}",
            out.text_ids.len(),
            out.text_truncated,
            out.units.len(),
            out.stop,
            out.text
        );
        assert_eq!(ids, expect, "cached decoding differs from recomputation");

        // S2TT through the CoM prompt: the same text, no units.
        let s2tt = session
            .decode_units(&src, direction, Mode::S2tt, |e| {
                assert!(!matches!(e, Event::Unit(_)))
            })
            .unwrap();
        assert_eq!(s2tt.text_ids, out.text_ids);
        assert!(s2tt.units.is_empty());
    }
    // A CoM model was never taught direct S2ST or ASR prompts.
    let e = session
        .decode_units(&[1, 2], Direction::EnFr, Mode::S2st, |_| {})
        .unwrap_err();
    assert!(e.to_string().contains("s2st"), "{e}");
    // Bad source units.
    let e = tr
        .translate_units(&[1, spec.num_units], Direction::EnFr, Mode::ChainOfModality)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside 0..16"), "{e}");
    assert!(tr
        .translate_units(&[], Direction::EnFr, Mode::ChainOfModality)
        .is_err());
    stops
}

#[test]
fn tri_task_modes_match_recomputation() {
    let spec = TinyTranslatorSpec {
        strategy: Strategy::TriTask,
        dedup_source_units: false,
        max_text_tokens: 8,
        max_target_units: 25,
        seed: 11,
        ..TinyTranslatorSpec::default()
    };
    let dir = folder(&spec);
    let tr = load(dir.path());
    let f = tr.format().clone();
    let src = source_units(40, spec.num_units, 3);
    for (mode, task) in [
        (Mode::S2st, Task::S2st),
        (Mode::S2tt, Task::S2tt),
        (Mode::Asr, Task::Asr),
    ] {
        for direction in [Direction::EnFr, Direction::FrEn] {
            let out = tr.translate_units(&src, direction, mode).unwrap();
            if !mode.has_units() {
                assert!(out.units.is_empty());
            }
            if !mode.has_text() {
                assert!(out.text_ids.is_empty() && out.text.is_empty());
            }
            println!(
                "{mode:?} {direction}: {} text tokens, {} units, stop {:?}",
                out.text_ids.len(),
                out.units.len(),
                out.stop
            );
            let prompt = f
                .prompt(task, direction.src(), direction.tgt(), &src)
                .unwrap();
            let mut expect = reference_decode(
                tr.llm(),
                &f,
                &prompt,
                task,
                spec.max_text_tokens,
                spec.max_target_units,
            );
            // A text-only mode stops at its budget (the reference would force a switch).
            if let Some(p) = expect.iter().position(|&t| t == f.id(SpecialToken::Units)) {
                expect.truncate(p);
            }
            assert_eq!(output_ids(&f, task, &out), expect, "{mode:?} {direction}");
        }
    }
    let e = tr
        .translate_units(&src, Direction::EnFr, Mode::ChainOfModality)
        .unwrap_err()
        .to_string();
    assert!(e.contains("com") && e.contains("TriTask"), "{e}");
}

#[test]
fn streamed_speech_and_audio_equal_offline() {
    let spec = TinyTranslatorSpec {
        max_target_units: 60,
        seed: 3,
        ..TinyTranslatorSpec::default()
    };
    let dir = folder(&spec);
    let tr = load(dir.path());
    let mut session = DecodeSession::new(Arc::clone(&tr)).unwrap();

    // Audio in: pushed in chunks of several sizes = offline extraction and translation.
    let audio: Vec<f32> = (0..24_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (180.0 + 120.0 * t) * t).sin()
                + 0.05 * (((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        })
        .collect();
    let offline_units = tr.extract_units(&audio).unwrap();
    assert_eq!(offline_units.len(), 74); // 1.5 s at 50 Hz, 25 ms windows
    let offline = tr
        .translate_audio(&audio, Direction::EnFr, Mode::ChainOfModality)
        .unwrap();
    assert_chunked_eq_offline_exact(
        || tr.unit_stream(),
        &audio,
        &offline_units,
        &[1, 160, 512, 16_000],
    );
    let streamed = run_chunked(&mut tr.unit_stream(), &audio, 320).unwrap();
    let out = session
        .decode_units(&streamed, Direction::EnFr, Mode::ChainOfModality, |_| {})
        .unwrap();
    assert_eq!(out.text_ids, offline.text_ids);
    assert_eq!(out.units, offline.units);

    // Units out: the session vocodes them in groups of several sizes = offline synthesis.
    let mut worst = 0f64;
    for direction in [Direction::EnFr, Direction::FrEn] {
        let src = source_units(80, spec.num_units, 5);
        for group in [1usize, 3, 7] {
            let mut session = DecodeSession::new(Arc::clone(&tr))
                .unwrap()
                .with_vocoder_chunk(group);
            let mut pcm: Vec<f32> = Vec::new();
            let mut deltas = String::new();
            let t = session
                .translate(&src, direction, Mode::ChainOfModality, &mut |o| match o {
                    Output::Audio { pcm: chunk, offset } => {
                        assert_eq!(offset as usize, pcm.len(), "audio chunks in order");
                        pcm.extend_from_slice(chunk);
                    }
                    Output::Text { delta } => deltas.push_str(delta),
                    Output::TextEnd { understood, .. } => assert!(understood),
                })
                .unwrap();
            let out = t.output;
            assert_eq!(deltas, out.text);
            assert_eq!(t.samples_out as usize, pcm.len());
            let reference = tr.synthesize(&out.units, direction.tgt()).unwrap();
            assert!(!out.units.is_empty());
            assert_eq!(pcm.len(), reference.len(), "{direction} group {group}");
            assert!(reference.iter().all(|s| s.is_finite()));
            assert!(reference.iter().any(|&s| s.abs() > 1e-4), "silent output");
            let d = pcm
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max);
            worst = worst.max(d);
        }
    }
    println!("streamed vs offline synthesis: worst |diff| {worst:.3e}");
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn sessions_share_one_translator_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Translator>();
    send::<DecodeSession>();
    let dir = folder(&TinyTranslatorSpec::default());
    let tr = load(dir.path());
    let src = source_units(50, 16, 9);
    let want = tr
        .translate_units(&src, Direction::FrEn, Mode::ChainOfModality)
        .unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let tr = Arc::clone(&tr);
            let src = src.clone();
            std::thread::spawn(move || {
                let mut s = DecodeSession::new(tr).unwrap();
                s.decode_units(&src, Direction::FrEn, Mode::ChainOfModality, |_| {})
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap();
        assert_eq!(
            (got.text_ids, got.units),
            (want.text_ids.clone(), want.units.clone())
        );
    }
}

#[test]
fn broken_folders_are_typed_errors() {
    let dir = folder(&TinyTranslatorSpec::default());
    let root = dir.path();
    let manifest_path = root.join("tolk-model.json");
    let good = std::fs::read_to_string(&manifest_path).unwrap();
    let try_load = || Translator::load(root, Device::Cpu, Kind::Float).unwrap_err();

    // An unknown key: a JSON error naming it.
    let v = good.replacen(
        "\"llm\": \"llm\"",
        "\"llm\": \"llm\", \"temperature\": 0.7",
        1,
    );
    assert_ne!(v, good);
    std::fs::write(&manifest_path, v).unwrap();
    let e = try_load();
    assert!(
        matches!(e, ModelError::Json { .. }) && e.to_string().contains("temperature"),
        "{e}"
    );
    // num_units that disagrees with the tokenizer's unit tokens.
    std::fs::write(
        &manifest_path,
        good.replacen("\"num_units\": 16", "\"num_units\": 12", 1),
    )
    .unwrap();
    let e = try_load();
    assert!(
        matches!(&e, ModelError::Config { field, .. } if field == "num_units"),
        "{e}"
    );
    assert!(e.to_string().contains("tokenizer"), "{e}");
    // A direction without a vocoder.
    std::fs::write(
        &manifest_path,
        good.replacen("\"en\": \"vocoder-en\",", "", 1),
    )
    .unwrap();
    let e = try_load();
    assert!(
        matches!(&e, ModelError::Config { field, .. } if field == "vocoders"),
        "{e}"
    );
    std::fs::write(&manifest_path, &good).unwrap();
    Translator::load(root, Device::Cpu, Kind::Float).unwrap();

    // Missing files: I/O errors naming the file.
    for rel in [
        "llm/model.safetensors",
        "llm/tokenizer.json",
        "units/kmeans.safetensors",
        "vocoder-fr/config.json",
        "tolk-model.json",
    ] {
        let p = root.join(rel);
        let saved = std::fs::read(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let e = try_load();
        let msg = e.to_string();
        assert!(
            msg.contains(rel.rsplit('/').next().unwrap()),
            "{rel}: {msg}"
        );
        println!("{rel} missing: {msg}");
        std::fs::write(&p, saved).unwrap();
    }
    // Centroids for another unit count.
    let km = root.join("units/kmeans.safetensors");
    let saved = std::fs::read(&km).unwrap();
    tolk_models::units::KMeans::new(Tensor::ones([8, 13], (Kind::Float, Device::Cpu)))
        .unwrap()
        .save(&km)
        .unwrap();
    let e = try_load();
    assert!(
        matches!(&e, ModelError::Config { field, .. } if field == "num_units")
            && e.to_string().contains("8 centroids"),
        "{e}"
    );
    std::fs::write(&km, saved).unwrap();
    Translator::load(root, Device::Cpu, Kind::Float).unwrap();
}
