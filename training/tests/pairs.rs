//! `tolk-train pairs` end to end on tiny random translator folders
//! (`tolk_training::eval::tiny`) with an espeak-ng manifest: the records and their scores, the
//! drop reasons (identical candidates, candidates stopped by the length cap), sharding and
//! merging, bad inputs, and TRL compatibility of `pairs.jsonl` (`tests/reference/pairs_trl.py`:
//! `datasets`, `transformers.PreTrainedTokenizerFast` and trl's DPO dataset processing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Device, Kind};
use tolk_models::audio::condition::to_mono_16k;
use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
use tolk_models::translator::Translator;
use tolk_training::eval::tiny::{write_random_translator, TinyTranslatorSpec};
use tolk_training::metrics::{bleu, wer};
use tolk_training::preference::pairs::{
    Decision, Invalid, Judge, JudgeAgainst, PairRecord, PairsSummary, StopReason, UtteranceRecord,
};
use tolk_training::units::{write_units, UnitsTable};

const PAIRS: &[(&str, &str)] = &[
    ("Where is the train station?", "Où est la gare ?"),
    (
        "Platform three is on the left.",
        "Le quai trois est à gauche.",
    ),
    ("Thank you, have a nice day.", "Merci, bonne journée."),
    (
        "The next bus leaves at ten.",
        "Le prochain bus part à dix heures.",
    ),
    (
        "A ticket to Lyon, please.",
        "Un billet pour Lyon, s'il vous plaît.",
    ),
    ("Is this seat free?", "Cette place est-elle libre ?"),
];

/// espeak-ng speech of `text` as 16-bit 16 kHz mono at `path`.
fn speak(text: &str, voice: &str, path: &Path) {
    let raw = path.with_extension("raw.wav");
    let st = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "170", "-w"])
        .arg(&raw)
        .arg(text)
        .status()
        .expect("espeak-ng must be installed (deploy/host/setup.sh)");
    assert!(st.success());
    let w = read_wav(&raw).unwrap();
    let (s, _) = to_mono_16k(&w.samples, w.sample_rate, w.channels).unwrap();
    write_wav(path, &s, 16_000, 1, WavFormat::Pcm16).unwrap();
    std::fs::remove_file(raw).unwrap();
}

fn tolk_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tolk-train"))
        .args(args)
        .output()
        .expect("running tolk-train")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ps(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Paired en->fr entries with audio, their units, and a monolingual English manifest.
struct Data {
    paired: PathBuf,
    mono: PathBuf,
    units: PathBuf,
}

fn write_data(root: &Path, model: &Path) -> Data {
    let tr = Translator::load(model, Device::Cpu, Kind::Float).unwrap();
    let audio = root.join("audio");
    std::fs::create_dir_all(&audio).unwrap();
    let (mut paired, mut mono) = (String::new(), String::new());
    let mut table = UnitsTable::new(16, "mfcc+kmeans16");
    for (i, (en, fr)) in PAIRS.iter().enumerate() {
        let (a, b) = (format!("audio/{i}-en.wav"), format!("audio/{i}-fr.wav"));
        speak(en, "en-us", &root.join(&a));
        speak(fr, "fr", &root.join(&b));
        for p in [&a, &b] {
            let w = read_wav(root.join(p)).unwrap();
            table
                .insert(p.as_str(), tr.extract_units(&w.samples).unwrap())
                .unwrap();
        }
        let e = serde_json::json!({
            "id": format!("utt{i}"), "language": "en", "text": en, "audio": a,
            "target_language": "fr", "target_text": fr, "target_audio": b,
        });
        paired.push_str(&format!("{e}\n"));
        let e = serde_json::json!({
            "id": format!("mono{i}"), "language": "en", "text": en, "audio": a,
        });
        mono.push_str(&format!("{e}\n"));
    }
    let data = Data {
        paired: root.join("paired.jsonl"),
        mono: root.join("mono.jsonl"),
        units: root.join("units.jsonl"),
    };
    std::fs::write(&data.paired, paired).unwrap();
    std::fs::write(&data.mono, mono).unwrap();
    write_units(&data.units, &table).unwrap();
    data
}

fn run_pairs(model: &Path, manifest: &Path, units: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "pairs".to_string(),
        "--model".into(),
        ps(model),
        "--manifest".into(),
        ps(manifest),
        "--units".into(),
        ps(units),
        "--direction".into(),
        "en-fr".into(),
        "--out".into(),
        ps(out),
        "--quiet".into(),
        // Tests run side by side on few cores: one libtorch thread each.
        "--threads".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    tolk_train(&refs)
}

fn read_pairs(out: &Path) -> Vec<PairRecord> {
    std::fs::read_to_string(out.join("pairs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn read_utterances(out: &Path) -> Vec<UtteranceRecord> {
    std::fs::read_to_string(out.join("utterances.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn read_summary(out: &Path) -> PairsSummary {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn model_with(root: &Path, name: &str, spec: &TinyTranslatorSpec) -> PathBuf {
    let dir = root.join(name);
    write_random_translator(&dir, spec).unwrap();
    dir
}

/// Token ids of the tiny format's special tokens.
struct Specials {
    com: u32,
    en: u32,
    fr: u32,
    units: u32,
    sep: u32,
    end: u32,
}

fn specials(model: &Path) -> Specials {
    use tolk_models::prompt::SpecialToken as T;
    let tr = Translator::load(model, Device::Cpu, Kind::Float).unwrap();
    let f = tr.format();
    Specials {
        com: f.id(T::Com),
        en: f.id(T::En),
        fr: f.id(T::Fr),
        units: f.id(T::Units),
        sep: f.id(T::Sep),
        end: f.id(T::End),
    }
}

/// Checks what every pair record must satisfy whatever the judge.
fn check_record(p: &PairRecord, sp: &Specials, judge: Judge, delta: f64) {
    assert_eq!(p.direction, "en-fr");
    assert_eq!(p.judge, judge);
    assert!(p.margin >= 0.0 && p.margin > delta, "{p:?}");
    let adv = if matches!(judge, Judge::Bleu | Judge::Meteor) {
        p.chosen_score - p.rejected_score
    } else {
        p.rejected_score - p.chosen_score
    };
    assert!((adv - p.margin).abs() < 1e-9, "{p:?}");
    // The chosen one ended; the prompt is the chain-of-modality prompt.
    assert_eq!(p.chosen_stop, StopReason::End);
    assert_eq!(&p.prompt_ids[..4], &[sp.com, sp.en, sp.fr, sp.units]);
    assert_eq!(p.prompt_ids.last(), Some(&sp.sep));
    assert_eq!(p.chosen_ids.last(), Some(&sp.end));
    assert!(p.chosen_ids.contains(&sp.units));
    assert_eq!(
        p.rejected_ids.last() == Some(&sp.end),
        p.rejected_stop == StopReason::End,
        "{p:?}"
    );
    assert_ne!(p.chosen_ids, p.rejected_ids);
    assert!(p.chosen.ends_with("<|end|>") && p.prompt.starts_with("<|com|><|en|><|fr|>"));
    assert!(p.seed < 1 << 53);
}

/// Candidates judged against the manifest's target text: with the target set to one
/// candidate's own text, that candidate is chosen and the margins are the judge's values.
#[test]
fn pairs_against_the_reference_choose_the_better_candidate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_with(root, "model", &TinyTranslatorSpec::default());
    let d = write_data(root, &model);
    let sp = specials(&model);
    let args = ["--judge-against", "reference", "--judge", "bleu"];
    let first = root.join("first");
    let o = run_pairs(&model, &d.paired, &d.units, &first, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let utts = read_utterances(&first);
    assert_eq!(utts.len(), PAIRS.len());

    // Target text := candidate 0's text, where candidate 0 ended with some text.
    let mut lines = String::new();
    let mut targets = std::collections::HashMap::new();
    for (line, u) in std::fs::read_to_string(&d.paired)
        .unwrap()
        .lines()
        .zip(&utts)
    {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let c0 = &u.candidates[0];
        if c0.stop == StopReason::End && !c0.text.trim().is_empty() {
            v["target_text"] = c0.text.clone().into();
        }
        targets.insert(u.id.clone(), v["target_text"].as_str().unwrap().to_string());
        lines.push_str(&format!("{v}\n"));
    }
    let paired2 = root.join("paired2.jsonl");
    std::fs::write(&paired2, lines).unwrap();
    let out = root.join("second");
    let o = run_pairs(&model, &paired2, &d.units, &out, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let utts2 = read_utterances(&out);
    let pairs = read_pairs(&out);
    let summary = read_summary(&out);
    // Same seeds, same candidates: only the scores moved.
    for (a, b) in utts.iter().zip(&utts2) {
        assert_eq!(a.seed, b.seed);
        let ids = |u: &UtteranceRecord| {
            u.candidates
                .iter()
                .map(|c| c.ids.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(a), ids(b));
    }
    let mut expected_kept = 0;
    for u in &utts2 {
        let target = &targets[&u.id];
        // Every score is the judge recomputed from the record.
        for c in &u.candidates {
            let want = if c.invalid.is_some() {
                0.0
            } else {
                bleu::sentence_bleu(&c.text, target).score / 100.0
            };
            assert!((c.score - want).abs() < 1e-12, "{u:?}");
            assert!(c.back.is_none());
        }
        let c0 = &u.candidates[0];
        if c0.text == *target && c0.invalid.is_none() {
            assert!((c0.score - 1.0).abs() < 1e-12, "{u:?}");
            let other = &u.candidates[1];
            if other.ids != c0.ids && 1.0 - other.score > 0.1 {
                expected_kept += 1;
                assert_eq!(u.decision, Decision::Kept, "{u:?}");
                assert_eq!(u.best, Some(0));
            }
        }
    }
    assert!(expected_kept >= 2, "too few test cases: {expected_kept}");
    assert_eq!(pairs.len(), summary.pairs_kept);
    assert_eq!(
        pairs.len(),
        utts2
            .iter()
            .filter(|u| u.decision == Decision::Kept)
            .count()
    );
    for p in &pairs {
        check_record(p, &sp, Judge::Bleu, 0.1);
        let target = &targets[&p.id];
        assert_eq!(p.judged_against, JudgeAgainst::Reference);
        assert!(p.chosen_back.is_none() && p.rejected_back.is_none());
        let rescore = |text: &str, stop| {
            if stop == StopReason::End && !text.trim().is_empty() {
                bleu::sentence_bleu(text, target).score / 100.0
            } else {
                0.0
            }
        };
        assert!((rescore(&p.chosen_text, p.chosen_stop) - p.chosen_score).abs() < 1e-12);
        assert!((rescore(&p.rejected_text, p.rejected_stop) - p.rejected_score).abs() < 1e-12);
        assert_eq!(p.source_text, PAIRS[p.id[3..].parse::<usize>().unwrap()].0);
    }
    let kept_margins: Vec<f64> = pairs.iter().map(|p| p.margin).collect();
    let mean = kept_margins.iter().sum::<f64>() / kept_margins.len() as f64;
    assert!((summary.mean_margin.unwrap() - mean).abs() < 1e-12);
    assert_eq!(
        summary.pairs_kept + summary.dropped.values().sum::<usize>(),
        summary.entries_seen
    );
    assert_eq!(summary.candidates_total, 2 * PAIRS.len());
    assert!(out.join("margins.png").metadata().unwrap().len() > 1000);
    println!(
        "reference judge: {} pairs of {}, mean margin {mean:.3}",
        pairs.len(),
        utts2.len()
    );
}

/// Back-translation judges on monolingual speech: BLEU scores recomputed from the records, MCD
/// pairs, the units path, identical candidates at temperature 0, truncated candidates never
/// chosen; then the TRL check on the pairs made.
#[test]
fn pairs_by_back_translation_drops_and_trl() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_with(root, "model", &TinyTranslatorSpec::default());
    let d = write_data(root, &model);
    let sp = specials(&model);

    // BLEU of the back-translation: every candidate's score is the judge of its record.
    let out = root.join("bleu");
    let o = run_pairs(&model, &d.mono, &d.units, &out, &["--delta", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for u in read_utterances(&out) {
        for c in &u.candidates {
            match (&c.back, c.invalid) {
                (Some(back), None) => {
                    let want = bleu::sentence_bleu(back, &u.source_text).score / 100.0;
                    assert!((c.score - want).abs() < 1e-12, "{u:?}");
                }
                (None, Some(_)) => assert_eq!(c.score, 0.0),
                _ => panic!("a valid candidate has a back-translation: {u:?}"),
            }
        }
    }
    // WER: lower is better, capped at 1.
    let out = root.join("wer");
    let o = run_pairs(
        &model,
        &d.mono,
        &d.units,
        &out,
        &["--judge", "wer", "--back-from", "units"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_summary(&out);
    assert_eq!(
        s.settings.back_from,
        tolk_training::preference::pairs::BackFrom::Units
    );
    for u in read_utterances(&out) {
        for c in &u.candidates {
            if let (Some(back), None) = (&c.back, c.invalid) {
                let want = wer::sentence_counts(back, &u.source_text).wer().min(1.0);
                assert!((c.score - want).abs() < 1e-12, "{u:?}");
            }
        }
    }

    // MCD of the back-translated speech against the source speech (dB, lower is better).
    let mcd = root.join("mcd");
    let o = run_pairs(
        &model,
        &d.mono,
        &d.units,
        &mcd,
        &["--judge", "mcd", "--delta", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let pairs = read_pairs(&mcd);
    let s = read_summary(&mcd);
    assert!(!pairs.is_empty(), "{s:?}");
    for p in &pairs {
        check_record(p, &sp, Judge::Mcd, 1.0);
        assert!(p.chosen_back.is_some());
        assert!(p.chosen_score > 0.0 && p.chosen_score < s.settings.mcd_worst_db);
    }
    println!(
        "mcd judge: {} pairs of {}, mean margin {:.2} dB",
        s.pairs_kept,
        s.entries_seen,
        s.mean_margin.unwrap()
    );

    // Temperature 0: greedy candidates, all identical, no pair.
    let greedy = root.join("greedy");
    let o = run_pairs(
        &model,
        &d.mono,
        &d.units,
        &greedy,
        &["--temperature", "0", "--candidates", "3"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_summary(&greedy);
    assert_eq!((s.pairs_kept, s.dropped["identical"]), (0, PAIRS.len()));
    assert_eq!(s.candidates_total, 3 * PAIRS.len());
    assert!(read_pairs(&greedy).is_empty() && s.mean_margin_compared.is_none());
    assert!(greedy.join("margins.png").exists());

    // A unit cap of 4: many candidates stop on it; such a candidate is never chosen.
    let capped = model_with(
        root,
        "capped",
        &TinyTranslatorSpec {
            max_target_units: 4,
            ..TinyTranslatorSpec::default()
        },
    );
    let out = root.join("capped-out");
    let o = run_pairs(
        &capped,
        &d.mono,
        &d.units,
        &out,
        &["--judge", "mcd", "--delta", "1", "--candidates", "3"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_summary(&out);
    let utts = read_utterances(&out);
    assert!(s.invalid_candidates["max-tokens"] > 0, "{s:?}");
    assert_eq!(
        s.candidate_stops["max-tokens"],
        s.invalid_candidates["max-tokens"]
    );
    assert_eq!(
        s.pairs_kept + s.dropped.values().sum::<usize>(),
        s.entries_seen
    );
    let (mut all_capped, mut all_invalid) = (0, 0);
    for u in &utts {
        let best = u.best.map(|b| &u.candidates[b]);
        if u.candidates.iter().all(|c| c.stop == StopReason::MaxTokens) {
            all_capped += 1;
        }
        if u.candidates.iter().all(|c| c.invalid.is_some()) {
            all_invalid += 1;
            assert_eq!(u.decision, Decision::NoValidCandidate, "{u:?}");
        }
        for c in &u.candidates {
            if c.stop == StopReason::MaxTokens {
                assert_eq!(c.invalid, Some(Invalid::MaxTokens));
                assert_eq!(c.score, s.settings.mcd_worst_db);
                assert_ne!(c.ids.last(), Some(&sp.end));
                if u.decision == Decision::Kept {
                    assert_ne!(best.map(|b| b.stop), Some(StopReason::MaxTokens));
                }
            }
        }
    }
    assert_eq!(s.dropped["no-valid-candidate"], all_invalid);
    let capped_pairs = read_pairs(&out);
    for p in &capped_pairs {
        check_record(p, &sp, Judge::Mcd, 1.0);
    }
    let truncated_rejected = capped_pairs
        .iter()
        .chain(&pairs)
        .filter(|p| p.rejected_stop == StopReason::MaxTokens)
        .count();
    println!(
        "unit cap 4: {} of {} candidates capped, {} utterances without a valid one, {} pairs \
         ({truncated_rejected} capped rejected in all)",
        s.invalid_candidates["max-tokens"], s.candidates_total, all_capped, s.pairs_kept
    );

    // TRL: the MCD pairs and the capped ones (TRL appends the EOS to a capped completion).
    let python = tolk_training::eval::asr::find_python(None).unwrap();
    let o = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/reference/pairs_trl.py"
        ))
        .arg("<|end|>")
        .args([mcd.join("pairs.jsonl"), model.join("llm/tokenizer.json")])
        .args([out.join("pairs.jsonl"), capped.join("llm/tokenizer.json")])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pairs_trl.py failed (install tests/reference/requirements.txt: make setup): {}",
        stderr(&o)
    );
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with("{\"file\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    let appended: u64 = reports
        .iter()
        .map(|r| r["eos_appended_by_trl"].as_u64().unwrap())
        .sum();
    for r in &reports {
        println!("TRL: {r}");
    }
    assert_eq!(appended as usize, truncated_rejected);
    assert!(
        truncated_rejected > 0,
        "no pair with a capped rejected candidate to check with TRL"
    );
}

/// Two shards merged give the unsharded run's pairs, line for line, and its counts.
#[test]
fn shards_merge_to_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_with(root, "model", &TinyTranslatorSpec::default());
    let d = write_data(root, &model);
    let args = ["--judge", "mcd", "--delta", "1", "--seed", "5"];
    let whole = root.join("whole");
    let o = run_pairs(&model, &d.mono, &d.units, &whole, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut shard_dirs = Vec::new();
    for i in 0..2 {
        let dir = root.join(format!("shard{i}"));
        let mut a = args.to_vec();
        let spec = format!("{i}/2");
        a.extend(["--shard", spec.as_str()]);
        let o = run_pairs(&model, &d.mono, &d.units, &dir, &a);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(read_summary(&dir).entries_seen, PAIRS.len() / 2);
        shard_dirs.push(dir);
    }
    let merged = root.join("merged");
    // Shards listed in reverse: the merge orders by entry.
    let o = tolk_train(&[
        "pairs",
        "--merge",
        &ps(&shard_dirs[1]),
        &ps(&shard_dirs[0]),
        "--out",
        &ps(&merged),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read_to_string(whole.join("pairs.jsonl")).unwrap();
    let b = std::fs::read_to_string(merged.join("pairs.jsonl")).unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let (sw, sm) = (read_summary(&whole), read_summary(&merged));
    assert_eq!(sm.shards, ["0/2", "1/2"]);
    assert_eq!(
        (
            sw.entries_seen,
            sw.candidates_total,
            sw.pairs_kept,
            &sw.dropped,
            &sw.invalid_candidates
        ),
        (
            sm.entries_seen,
            sm.candidates_total,
            sm.pairs_kept,
            &sm.dropped,
            &sm.invalid_candidates
        )
    );
    assert_eq!(sw.mean_margin, sm.mean_margin);
    assert_eq!(sw.settings, sm.settings);
    let ids = |dir: &Path| {
        read_utterances(dir)
            .into_iter()
            .map(|u| (u.id, u.candidates))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&whole), ids(&merged));
    assert!(merged.join("margins.png").exists());

    // A shard twice, or shards of other settings, do not merge.
    let o = tolk_train(&[
        "pairs",
        "--merge",
        &ps(&shard_dirs[0]),
        &ps(&shard_dirs[0]),
        "--out",
        &ps(&root.join("m2")),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("shard 0/2 appears twice"),
        "{}",
        stderr(&o)
    );
    let other = root.join("other");
    let o = run_pairs(
        &model,
        &d.mono,
        &d.units,
        &other,
        &[
            "--judge", "mcd", "--delta", "1", "--seed", "6", "--shard", "1/2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tolk_train(&[
        "pairs",
        "--merge",
        &ps(&shard_dirs[0]),
        &ps(&other),
        "--out",
        &ps(&root.join("m3")),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("other settings"),
        "{}",
        stderr(&o)
    );
}

/// Bad inputs are errors naming what is wrong; unlabelled English speech is transcribed.
#[test]
fn bad_inputs_and_unlabelled_speech() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_with(root, "model", &TinyTranslatorSpec::default());
    let d = write_data(root, &model);
    let out = root.join("out");
    // Unlabelled speech: text empty (or missing) on two entries.
    let text = std::fs::read_to_string(&d.mono).unwrap();
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[1]["text"] = "".into();
    lines[3].as_object_mut().unwrap().remove("text");
    let unlabelled = root.join("unlabelled.jsonl");
    let write = |path: &Path, lines: &[serde_json::Value]| {
        std::fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap()
    };
    write(&unlabelled, &lines);
    let o = run_pairs(&model, &unlabelled, &d.units, &out, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("entry mono1 has no text") && stderr(&o).contains("--transcribe"),
        "{}",
        stderr(&o)
    );
    // The MCD judge does not need the text.
    let o = run_pairs(&model, &unlabelled, &d.units, &out, &["--judge", "mcd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_pairs(
        &model,
        &unlabelled,
        &d.units,
        &out,
        &["--transcribe", "--limit", "4"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = read_summary(&out);
    assert_eq!(s.transcribed_sources, 2);
    for u in read_utterances(&out) {
        assert_eq!(u.transcribed, u.id == "mono1" || u.id == "mono3");
        if u.transcribed {
            println!("{}: PocketSphinx heard {:?}", u.id, u.source_text);
        }
    }
    // French speech cannot be transcribed.
    lines[1]["language"] = "fr".into();
    let french = root.join("french.jsonl");
    write(&french, &lines);
    let o = tolk_train(&[
        "pairs",
        "--model",
        &ps(&model),
        "--manifest",
        &ps(&french),
        "--units",
        &ps(&d.units),
        "--direction",
        "fr-en",
        "--out",
        &ps(&out),
        "--transcribe",
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("entry mono1") && stderr(&o).contains("English only"),
        "{}",
        stderr(&o)
    );
    // Audio missing from the units file.
    lines[1]["language"] = "en".into();
    lines[2]["audio"] = "audio/nowhere.wav".into();
    let missing = root.join("missing.jsonl");
    write(&missing, &lines);
    let o = run_pairs(&model, &missing, &d.units, &out, &["--judge", "mcd"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("entry mono2") && stderr(&o).contains("no units"),
        "{}",
        stderr(&o)
    );
    // Against the reference, a monolingual manifest has nothing to offer.
    let o = run_pairs(
        &model,
        &d.mono,
        &d.units,
        &out,
        &["--judge-against", "reference"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("paired entries"), "{}", stderr(&o));
    // Flags.
    for (bad, msg) in [
        (vec!["--candidates", "1"], "at least 2"),
        (vec!["--shard", "2/2"], "0 <= i < n"),
        (vec!["--delta=-1"], "non-negative"),
        (vec!["--top-p", "0"], "top_p"),
    ] {
        let o = run_pairs(&model, &d.mono, &d.units, &out, &bad);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(msg), "{bad:?}: {}", stderr(&o));
    }
    // A duplicated id in the manifest.
    lines[2] = lines[0].clone();
    write(&missing, &lines);
    let o = run_pairs(&model, &missing, &d.units, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("duplicate id"), "{}", stderr(&o));
}
