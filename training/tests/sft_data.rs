//! SFT data side: sequences over the real SmolLM2 tokenizer, resumable batching, and a loss-mask
//! check with the tiny random Llama (padding must not change the loss).
//!
//! Needs the reference models (`make reference`): `smollm2/model` and
//! `llama_tiny/llama32_tied/model`.

use std::path::Path;

use tch::{Kind, Reduction, Tensor};
use tolk_models::llama::{Llama, LoadOptions};
use tolk_models::prompt::{PromptFormat, SpecialToken, Task};
use tolk_models::tokenizer::Tokenizer;
use tolk_tests::reference_dir;
use tolk_training::corpus::manifest::ManifestEntry;
use tolk_training::sft::{
    build_examples, BatchConfig, BatchPosition, Batcher, Direction, Example, SftDataConfig,
    SkipReason, Strategy, IGNORE_INDEX,
};
use tolk_training::units::file::UnitsTable;

const NUM_UNITS: u32 = 100;

fn pair(id: &str, en: &str, fr: &str) -> ManifestEntry {
    let mut e = ManifestEntry::new(id, "en", en);
    e.audio = Some(format!("en/{id}.wav"));
    e.target_language = Some("fr".into());
    e.target_text = Some(fr.into());
    e.target_audio = Some(format!("fr/{id}.wav"));
    e
}

fn corpus() -> (Vec<ManifestEntry>, UnitsTable) {
    let entries = vec![
        pair("u1", "Where is the station?", "Où est la gare ?"),
        pair(
            "u2",
            "Two tickets, please.",
            "Deux billets, s'il vous plaît.",
        ),
    ];
    let mut units = UnitsTable::new(NUM_UNITS, "test");
    units.insert("en/u1.wav", vec![5, 5, 7, 99, 0]).unwrap();
    units.insert("fr/u1.wav", vec![12, 13, 13, 13]).unwrap();
    units.insert("en/u2.wav", vec![1, 2, 3]).unwrap();
    units.insert("fr/u2.wav", vec![4, 4]).unwrap();
    (entries, units)
}

fn smollm2() -> (Tokenizer, PromptFormat) {
    let dir = reference_dir("smollm2").join("model");
    let mut model = Llama::load(&dir, LoadOptions::default()).unwrap();
    let mut tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let format = PromptFormat::extend(&mut model, &mut tok, NUM_UNITS).unwrap();
    (tok, format)
}

fn config(strategy: Strategy) -> SftDataConfig {
    SftDataConfig {
        strategy,
        directions: vec![Direction::EnFr, Direction::FrEn],
        dedup_source: false,
        dedup_target: false,
        max_len: 256,
    }
}

#[test]
fn smollm2_sequences_for_each_strategy_and_direction() {
    let (tok, f) = smollm2();
    let (entries, units) = corpus();
    let sp = |t| f.id(t) as i64;
    let u = |x: u32| (f.unit_base + x) as i64;
    let text = |s: &str| -> Vec<i64> {
        tok.encode(s, false)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect()
    };
    // The documented layout: <|task|> <|src|> <|tgt|> <|units|> units <|sep|> | target <|end|>.
    let expected = |task: Task, src, tgt, src_units: &[u32], body: Vec<i64>| {
        let task_tok = match task {
            Task::Asr => SpecialToken::Asr,
            Task::S2tt => SpecialToken::S2tt,
            Task::S2st => SpecialToken::S2st,
            Task::ChainOfModality => SpecialToken::Com,
        };
        let mut prompt = vec![sp(task_tok), sp(src), sp(tgt), sp(SpecialToken::Units)];
        prompt.extend(src_units.iter().map(|&x| u(x)));
        prompt.push(sp(SpecialToken::Sep));
        let mut target = body;
        target.push(sp(SpecialToken::End));
        (prompt, target)
    };
    let check = |e: &Example, (prompt, target): (Vec<i64>, Vec<i64>)| {
        let ids: Vec<i64> = e.input_ids.iter().map(|&t| t as i64).collect();
        assert_eq!(
            ids[..prompt.len()],
            prompt[..],
            "{} {:?} prompt",
            e.id,
            e.task
        );
        assert_eq!(
            ids[prompt.len()..],
            target[..],
            "{} {:?} target",
            e.id,
            e.task
        );
        assert!(e.labels[..prompt.len()].iter().all(|&l| l == IGNORE_INDEX));
        assert_eq!(e.labels[prompt.len()..], target[..]);
    };
    let (en, fr) = (SpecialToken::En, SpecialToken::Fr);

    // Tri-task: 3 examples per utterance and direction.
    let tri = build_examples(&entries, &units, &tok, &f, &config(Strategy::TriTask)).unwrap();
    assert_eq!(tri.examples.len(), 2 * 2 * 3);
    assert_eq!(tri.skipped.total(), 0);
    let e = &tri.examples[0];
    assert_eq!((e.id.as_str(), e.direction), ("u1", Direction::EnFr));
    let src = [5, 5, 7, 99, 0];
    check(
        e,
        expected(Task::Asr, en, en, &src, text("Where is the station?")),
    );
    check(
        &tri.examples[1],
        expected(Task::S2tt, en, fr, &src, text("Où est la gare ?")),
    );
    check(
        &tri.examples[2],
        expected(Task::S2st, en, fr, &src, vec![u(12), u(13), u(13), u(13)]),
    );
    // fr->en of u2 is the reversed entry: French units in, English out.
    let rev: Vec<&Example> = tri.examples.iter().filter(|e| e.id == "u2-rev").collect();
    assert_eq!(rev.len(), 3);
    assert!(rev.iter().all(|e| e.direction == Direction::FrEn));
    check(
        rev[0],
        expected(
            Task::Asr,
            fr,
            fr,
            &[4, 4],
            text("Deux billets, s'il vous plaît."),
        ),
    );
    check(
        rev[1],
        expected(Task::S2tt, fr, en, &[4, 4], text("Two tickets, please.")),
    );
    check(
        rev[2],
        expected(Task::S2st, fr, en, &[4, 4], vec![u(1), u(2), u(3)]),
    );

    // Vanilla: S2ST only.
    let van = build_examples(&entries, &units, &tok, &f, &config(Strategy::Vanilla)).unwrap();
    assert_eq!(van.examples.len(), 4);
    assert!(van.examples.iter().all(|e| e.task == Task::S2st));
    assert_eq!(van.examples[2].input_ids, tri.examples[8].input_ids);

    // Chain of modality with dedup on both sides.
    let mut cfg = config(Strategy::ChainOfModality);
    cfg.dedup_source = true;
    cfg.dedup_target = true;
    let com = build_examples(&entries, &units, &tok, &f, &cfg).unwrap();
    assert_eq!(com.examples.len(), 4);
    let mut body = text("Où est la gare ?");
    body.extend([sp(SpecialToken::Units), u(12), u(13)]);
    check(
        &com.examples[0],
        expected(Task::ChainOfModality, en, fr, &[5, 7, 99, 0], body),
    );
    let mut body = text("Where is the station?");
    body.extend([sp(SpecialToken::Units), u(5), u(7), u(99), u(0)]);
    check(
        &com.examples[2],
        expected(Task::ChainOfModality, fr, en, &[12, 13], body),
    );

    // A too-short max_len skips (never truncates) and counts.
    let mut cfg = config(Strategy::ChainOfModality);
    cfg.max_len = 16;
    let short = build_examples(&entries, &units, &tok, &f, &cfg).unwrap();
    assert!(short.examples.iter().all(|e| e.len() <= 16));
    assert_eq!(
        short.skipped.count(SkipReason::TooLong) + short.examples.len(),
        4
    );
    assert!(short.skipped.count(SkipReason::TooLong) > 0);
}

fn batches(b: &mut Batcher, n: usize) -> Vec<(Vec<i64>, Vec<i64>, Vec<usize>)> {
    (0..n)
        .map(|_| {
            let x = b.next_batch().unwrap();
            (
                Vec::<i64>::try_from(x.input_ids.flatten(0, -1)).unwrap(),
                Vec::<i64>::try_from(x.labels.flatten(0, -1)).unwrap(),
                x.indices,
            )
        })
        .collect()
}

fn varied_examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let prompt = 2 + i % 3;
            let len = prompt + 1 + (i * 7) % 5;
            Example {
                input_ids: (0..len).map(|k| (10 + i + k) as u32).collect(),
                labels: (0..len)
                    .map(|k| {
                        if k < prompt {
                            IGNORE_INDEX
                        } else {
                            (10 + i + k) as i64
                        }
                    })
                    .collect(),
                task: Task::S2st,
                direction: Direction::EnFr,
                id: format!("x{i}"),
            }
        })
        .collect()
}

#[test]
fn batching_pads_masks_and_resumes_exactly() {
    let ex = varied_examples(30);
    let cfg = BatchConfig {
        max_examples: 4,
        max_tokens: 24,
        pad_id: 3,
        seed: 42,
    };
    // Padding, labels and mask of one batch, checked against the examples.
    let mut b = Batcher::new(&ex, cfg).unwrap();
    let batch = b.next_batch().unwrap();
    let s = batch.input_ids.size()[1] as usize;
    assert_eq!(batch.input_ids.kind(), Kind::Int64);
    assert_eq!(batch.labels.kind(), Kind::Int64);
    assert_eq!(batch.padding_mask.kind(), Kind::Bool);
    let ids = Vec::<i64>::try_from(batch.input_ids.flatten(0, -1)).unwrap();
    let labels = Vec::<i64>::try_from(batch.labels.flatten(0, -1)).unwrap();
    let mask = Vec::<bool>::try_from(batch.padding_mask.flatten(0, -1)).unwrap();
    let mut targets = 0;
    for (row, &i) in batch.indices.iter().enumerate() {
        let e = &ex[i];
        for k in 0..s {
            let at = row * s + k;
            if k < e.len() {
                assert_eq!(ids[at], e.input_ids[k] as i64);
                assert_eq!(labels[at], e.labels[k]);
                assert!(mask[at]);
            } else {
                assert_eq!((ids[at], labels[at], mask[at]), (3, IGNORE_INDEX, false));
            }
        }
        targets += e.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    }
    assert_eq!(batch.target_tokens, targets);
    assert_eq!(s, batch.indices.iter().map(|&i| ex[i].len()).max().unwrap());

    // Deterministic from the seed; another seed shuffles differently.
    let per_epoch = Batcher::new(&ex, cfg).unwrap().batches_per_epoch();
    let total = 2 * per_epoch + 3;
    let full = batches(&mut Batcher::new(&ex, cfg).unwrap(), total);
    assert_eq!(full, batches(&mut Batcher::new(&ex, cfg).unwrap(), total));
    let other = BatchConfig { seed: 43, ..cfg };
    assert_ne!(
        full[..per_epoch],
        batches(&mut Batcher::new(&ex, other).unwrap(), per_epoch)[..]
    );
    // Epochs are reshuffled.
    assert_ne!(full[..per_epoch], full[per_epoch..2 * per_epoch]);

    // Stop after k batches (inside an epoch and at its end), save the position as JSON, resume.
    for k in [1, per_epoch - 1, per_epoch, per_epoch + 2] {
        let mut first = Batcher::new(&ex, cfg).unwrap();
        let head = batches(&mut first, k);
        let saved = serde_json::to_string(&first.position()).unwrap();
        let pos: BatchPosition = serde_json::from_str(&saved).unwrap();
        let mut resumed = Batcher::resume(&ex, cfg, pos).unwrap();
        let tail = batches(&mut resumed, total - k);
        assert_eq!(head[..], full[..k]);
        assert_eq!(tail[..], full[k..], "resume after {k} batches ({saved})");
    }
    let bad = BatchPosition {
        epoch: 0,
        step: per_epoch + 1,
    };
    assert!(Batcher::resume(&ex, cfg, bad).is_err());
}

/// A words-only tokenizer (ids 0..8) for the tiny Llama (vocab 512).
fn word_tokenizer(dir: &Path) -> Tokenizer {
    let words = [
        "[UNK]", "hello", "world", "bonjour", "le", "monde", "merci", "où",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

/// Summed cross-entropy per row over labels != -100, transformers-style shift (logits at `i`
/// against labels at `i + 1`), and the number of scored tokens per row.
fn row_losses(model: &Llama, ids: &Tensor, labels: &Tensor, mask: Option<&Tensor>) -> Vec<f64> {
    let h = model.forward_hidden(ids, None, mask).unwrap();
    let logits = model.logits(&h).unwrap();
    let (b, s) = (logits.size()[0], logits.size()[1]);
    let v = logits.size()[2];
    let shifted = logits.narrow(1, 0, s - 1).reshape([-1, v]);
    let targets = labels.narrow(1, 1, s - 1).reshape([-1]);
    let per_token = shifted
        .cross_entropy_loss::<Tensor>(&targets, None, Reduction::None, IGNORE_INDEX, 0.0)
        .reshape([b, s - 1])
        .to_kind(Kind::Double);
    Vec::<f64>::try_from(per_token.sum_dim_intlist(1, false, Kind::Double)).unwrap()
}

#[test]
fn padding_does_not_change_the_loss() {
    let dir = reference_dir("llama_tiny").join("llama32_tied/model");
    let mut model = Llama::load(&dir, LoadOptions::default()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut tok = word_tokenizer(d.path());
    let format = PromptFormat::extend(&mut model, &mut tok, 20).unwrap();
    assert_eq!(model.config().vocab_size, 512);
    let entries = vec![
        pair("a", "hello world", "bonjour le monde"),
        pair("b", "merci", "merci"),
        pair("c", "hello", "où le monde merci"),
    ];
    let mut units = UnitsTable::new(20, "test");
    for (audio, u) in [
        ("en/a.wav", vec![1, 2, 3, 4, 5, 6, 7]),
        ("fr/a.wav", vec![8, 9, 10]),
        ("en/b.wav", vec![11]),
        ("fr/b.wav", vec![12, 13, 14, 15, 16, 17, 18, 19, 0]),
        ("en/c.wav", vec![2, 2, 2, 3]),
        ("fr/c.wav", vec![4, 5]),
    ] {
        units.insert(audio, u).unwrap();
    }
    let data = build_examples(
        &entries,
        &units,
        &tok,
        &format,
        &config(Strategy::ChainOfModality),
    )
    .unwrap();
    let ex = data.examples;
    assert_eq!(ex.len(), 6);
    let lens: Vec<usize> = ex.iter().map(Example::len).collect();
    assert!(lens.iter().min() < lens.iter().max(), "lengths {lens:?}");

    // One example at a time, no padding.
    let single: Vec<f64> = ex
        .iter()
        .map(|e| {
            let ids: Vec<i64> = e.input_ids.iter().map(|&t| t as i64).collect();
            let n = ids.len() as i64;
            let ids = Tensor::from_slice(&ids).view([1, n]);
            let labels = Tensor::from_slice(&e.labels).view([1, n]);
            row_losses(&model, &ids, &labels, None)[0]
        })
        .collect();
    let counts: Vec<usize> = ex.iter().map(|e| e.num_target_tokens()).collect();

    for pad_id in [0u32, 26] {
        let cfg = BatchConfig {
            max_examples: 6,
            max_tokens: 6 * 64,
            pad_id,
            seed: 1,
        };
        let mut b = Batcher::new(&ex, cfg).unwrap();
        assert_eq!(b.batches_per_epoch(), 1);
        let batch = b.next_batch().unwrap();
        let rows = row_losses(
            &model,
            &batch.input_ids,
            &batch.labels,
            Some(&batch.padding_mask),
        );
        let mut worst: f64 = 0.0;
        for (row, &i) in batch.indices.iter().enumerate() {
            worst = worst.max((rows[row] - single[i]).abs() / single[i].abs().max(1.0));
        }
        // The batch loss as a trainer computes it: mean over every scored token of the batch.
        let batch_mean = rows.iter().sum::<f64>() / batch.target_tokens as f64;
        let example_mean = single.iter().sum::<f64>() / counts.iter().sum::<usize>() as f64;
        println!(
            "pad {pad_id}: batch mean loss {batch_mean:.6}, per-example mean {example_mean:.6}, \
             worst relative row difference {worst:.2e}"
        );
        assert!(
            worst < 1e-4,
            "padded rows differ from single examples: {worst}"
        );
        assert!((batch_mean - example_mean).abs() < 1e-4 * example_mean.abs().max(1.0));
        assert_eq!(batch.target_tokens, counts.iter().sum::<usize>());
    }
}
