//! The synthetic speech translation corpus (`tolk_training::corpus`): grammar coverage and
//! French agreement, split hygiene, determinism, a small real espeak-ng synthesis run and the
//! manifest reader's errors.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use tolk_models::audio::wav::read_wav;
use tolk_training::corpus::grammar::all_pairs;
use tolk_training::corpus::manifest::{read_manifest, ManifestError, ReadOptions};
use tolk_training::corpus::synth::Synthesizers;
use tolk_training::corpus::{
    assign_splits, build_corpus, select, CorpusConfig, CorpusError, Split,
};

const SETS: [&str; 5] = ["train", "dev", "test", "mono-en", "mono-fr"];

fn text_config(out: &Path, seed: u64) -> CorpusConfig {
    let mut c = CorpusConfig::new(out, seed);
    c.audio = false;
    c
}

#[test]
fn at_least_5000_distinct_pairs_one_to_one() {
    let pairs = all_pairs();
    let en: HashSet<&str> = pairs.iter().map(|p| p.en.as_str()).collect();
    let fr: HashSet<&str> = pairs.iter().map(|p| p.fr.as_str()).collect();
    println!(
        "{} pairs, {} distinct English, {} distinct French",
        pairs.len(),
        en.len(),
        fr.len()
    );
    assert!(en.len() >= 5000, "only {} distinct pairs", en.len());
    // Each English sentence has exactly one French translation and vice versa, so either side
    // identifies the pair (no ambiguous targets in either direction).
    assert_eq!(en.len(), pairs.len(), "an English sentence repeats");
    assert_eq!(fr.len(), pairs.len(), "a French sentence repeats");
    for p in &pairs {
        assert!(!p.en.contains("  ") && !p.fr.contains("  "), "{p:?}");
        assert!(p.en.chars().next().unwrap().is_uppercase(), "{p:?}");
        assert!(p.fr.chars().next().unwrap().is_uppercase(), "{p:?}");
    }
}

#[test]
fn french_agreement_spot_checks() {
    let pairs: HashMap<String, String> = all_pairs().into_iter().map(|p| (p.en, p.fr)).collect();
    let expected = [
        (
            "Where are the nearest toilets?",
            "Où sont les toilettes les plus proches ?",
        ),
        (
            "Where is the nearest hospital?",
            "Où est l'hôpital le plus proche ?",
        ),
        ("How do I get to the hotel?", "Comment aller à l'hôtel ?"),
        (
            "How do I get to the lifts?",
            "Comment aller aux ascenseurs ?",
        ),
        ("How do I get to the museum?", "Comment aller au musée ?"),
        (
            "The shuttle to Geneva is cancelled.",
            "La navette pour Genève est annulée.",
        ),
        (
            "The train to London is cancelled.",
            "Le train pour Londres est annulé.",
        ),
        (
            "I left my scarf at the museum.",
            "J'ai oublié mon écharpe au musée.",
        ),
        (
            "I left my suitcase at the airport.",
            "J'ai oublié ma valise à l'aéroport.",
        ),
        (
            "Your keys are at the information desk.",
            "Vos clés sont à l'accueil.",
        ),
        (
            "The bus to Lyon is delayed by twenty-one minutes.",
            "Le bus pour Lyon a un retard de vingt et une minutes.",
        ),
        (
            "I would like one seat to London, please.",
            "Je voudrais une place pour Londres, s'il vous plaît.",
        ),
        (
            "I would like two return tickets to Paris, please.",
            "Je voudrais deux allers-retours pour Paris, s'il vous plaît.",
        ),
        (
            "The next cable car to Nice leaves at twenty-one fifteen.",
            "La prochaine télécabine pour Nice part à vingt et une heures quinze.",
        ),
        (
            "The next train to Dijon leaves at one o'clock.",
            "Le prochain train pour Dijon part à une heure.",
        ),
        (
            "The shops open at nine thirty.",
            "Les magasins ouvrent à neuf heures trente.",
        ),
        (
            "A reservation to Brussels costs eighty euros.",
            "Une réservation pour Bruxelles coûte quatre-vingts euros.",
        ),
        (
            "A ticket to Lille costs seventy-one euros fifty.",
            "Un billet pour Lille coûte soixante et onze euros cinquante.",
        ),
        (
            "The toilets are next to the hotel.",
            "Les toilettes sont à côté de l'hôtel.",
        ),
        (
            "The exit is behind the lifts.",
            "La sortie est derrière les ascenseurs.",
        ),
        (
            "The airport is one minute away on foot.",
            "L'aéroport est à une minute à pied.",
        ),
        (
            "The train to Rennes leaves from platform 7.",
            "Le train pour Rennes part du quai 7.",
        ),
    ];
    for (en, fr) in expected {
        assert_eq!(pairs.get(en).map(String::as_str), Some(fr), "{en}");
    }
}

#[test]
fn pools_hold_out_combinations_but_every_value_is_heard_in_training() {
    let pairs = all_pairs();
    for seed in [1, 2, 3] {
        let splits = assign_splits(&pairs, seed);
        let count = |s| splits.iter().filter(|&&x| x == s).count();
        let (train, dev, test) = (count(Split::Train), count(Split::Dev), count(Split::Test));
        println!("seed {seed}: pools train {train}, dev {dev}, test {test}");
        assert!(train > pairs.len() / 2 && dev > 1000 && test > 1000);
        let values = |s: Split| -> BTreeSet<(String, String)> {
            let ty = |slot: &str| if slot == "other_place" { "place" } else { slot }.to_string();
            pairs
                .iter()
                .zip(&splits)
                .filter(|(_, &x)| x == s)
                .flat_map(|(p, _)| p.slots.iter().map(|(k, v)| (ty(k), v.clone())))
                .collect()
        };
        let train_values = values(Split::Train);
        for s in [Split::Dev, Split::Test] {
            let missing: Vec<_> = values(s).difference(&train_values).cloned().collect();
            assert!(
                missing.is_empty(),
                "seed {seed}: {s:?} values never in training: {missing:?}"
            );
        }
        // Combinations are really held out: some (template, place) never occurs in training.
        let mut train_combos = HashSet::new();
        let mut test_combos = HashSet::new();
        for (p, s) in pairs.iter().zip(&splits) {
            for (k, v) in &p.slots {
                let c = (p.template, *k, v.clone());
                if *s == Split::Train {
                    train_combos.insert(c);
                } else if *s == Split::Test {
                    test_combos.insert(c);
                }
            }
        }
        assert!(test_combos.difference(&train_combos).count() > 0);
    }
}

fn read_set(
    dir: &Path,
    name: &str,
    check_audio: bool,
) -> Vec<tolk_training::corpus::manifest::ManifestEntry> {
    read_manifest(
        dir.join(format!("{name}.jsonl")),
        ReadOptions { check_audio },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .entries
}

#[test]
fn same_seed_same_manifests_and_disjoint_splits() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let sa = build_corpus(&text_config(a.path(), 7)).unwrap();
    let sb = build_corpus(&text_config(b.path(), 7)).unwrap();
    build_corpus(&text_config(c.path(), 8)).unwrap();
    assert_eq!(sa, sb);
    for name in SETS
        .iter()
        .map(|s| format!("{s}.jsonl"))
        .chain(["corpus.json".into()])
    {
        let fa = std::fs::read(a.path().join(&name)).unwrap();
        assert_eq!(
            fa,
            std::fs::read(b.path().join(&name)).unwrap(),
            "{name} differs"
        );
        if name.ends_with(".jsonl") {
            assert_ne!(
                fa,
                std::fs::read(c.path().join(&name)).unwrap(),
                "seed ignored in {name}"
            );
        }
    }
    assert_eq!(
        (sa.train, sa.dev, sa.test, sa.mono_en, sa.mono_fr),
        (6000, 300, 300, 500, 500)
    );

    // Disjoint: no pair (by either side) in two sets; test never in train.
    let mut owner: HashMap<String, &str> = HashMap::new();
    let all_fr: HashMap<String, String> = all_pairs().into_iter().map(|p| (p.fr, p.en)).collect();
    for name in SETS {
        let entries = read_set(a.path(), name, false);
        for e in &entries {
            // The English side of a French monolingual utterance identifies its pair.
            let en = if e.language == "fr" {
                all_fr[&e.text].clone()
            } else {
                e.text.clone()
            };
            if let Some(prev) = owner.insert(en.clone(), name) {
                panic!("{en:?} is in both {prev} and {name}");
            }
            assert_eq!(e.target_language.is_some(), !name.starts_with("mono"));
        }
    }
    // Templates are balanced: the training set uses every template.
    let templates: BTreeSet<_> = read_set(a.path(), "train", false)
        .into_iter()
        .filter_map(|e| e.template)
        .collect();
    assert_eq!(templates.len(), sa.templates);
}

#[test]
fn impossible_sizes_and_unknown_voice_languages_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut c = text_config(d.path(), 1);
    c.test = 1_000_000;
    let err = select(&c).unwrap_err();
    assert!(
        matches!(err, CorpusError::Config(_)) && err.to_string().contains("test"),
        "{err}"
    );
    let mut c = CorpusConfig::new(d.path(), 1);
    c.voices = vec!["en-us".into(), "de".into(), "fr-fr".into()];
    let err = build_corpus(&c).unwrap_err();
    assert!(err.to_string().contains("\"de\""), "{err}");
}

fn tiny_config(out: &Path) -> CorpusConfig {
    let mut c = CorpusConfig::new(out, 11);
    c.train = 2;
    c.dev = 1;
    c.test = 1;
    c.mono = 1;
    c.voices = ["en-gb", "en-us+f3", "fr-fr", "fr-be"]
        .map(String::from)
        .to_vec();
    c.workers = 2;
    c
}

#[test]
fn espeak_synthesis_writes_16k_wavs_matching_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let summary = build_corpus(&tiny_config(d.path())).unwrap();
    let mut utterances = 0;
    let mut langs = BTreeSet::new();
    for name in SETS {
        let m = read_manifest(
            d.path().join(format!("{name}.jsonl")),
            ReadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for e in &m.entries {
            let mut sides = vec![(
                e.language.clone(),
                e.audio.clone(),
                e.duration,
                e.voice.clone(),
            )];
            if let Some(tl) = &e.target_language {
                sides.push((
                    tl.clone(),
                    e.target_audio.clone(),
                    e.target_duration,
                    e.target_voice.clone(),
                ));
            }
            for (lang, audio, duration, voice) in sides {
                let (audio, duration, voice) = (audio.unwrap(), duration.unwrap(), voice.unwrap());
                assert!(voice.starts_with(&lang), "{voice} for {lang}");
                let w = read_wav(m.resolve(&audio)).unwrap();
                assert_eq!((w.sample_rate, w.channels), (16_000, 1), "{audio}");
                assert!(
                    (w.duration_s() - duration).abs() < 1e-9,
                    "{audio}: {} vs {duration}",
                    w.duration_s()
                );
                assert!((0.5..15.0).contains(&duration), "{audio}: {duration} s");
                let rms =
                    (w.samples.iter().map(|x| x * x).sum::<f32>() / w.samples.len() as f32).sqrt();
                assert!(rms > 0.01, "{audio}: silent (rms {rms})");
                let peak = w.samples.iter().fold(0f32, |a, x| a.max(x.abs()));
                assert!(peak < 1.0, "{audio}: clipped");
                langs.insert(lang);
                utterances += 1;
            }
        }
    }
    println!(
        "{utterances} utterances, {:.2} s of audio",
        summary.audio_seconds
    );
    assert_eq!(utterances, 10);
    assert_eq!(langs, BTreeSet::from(["en".to_string(), "fr".to_string()]));
    // No temporary espeak output is left behind.
    let leftovers: Vec<_> = walk(d.path())
        .into_iter()
        .filter(|p| p.contains("espeak"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Reader errors on a damaged corpus: a missing WAV, then a bad line.
    let train = d.path().join("train.jsonl");
    let first = read_set(d.path(), "train", true).remove(0);
    std::fs::remove_file(d.path().join(first.audio.as_ref().unwrap())).unwrap();
    let err = read_manifest(&train, ReadOptions::default()).unwrap_err();
    assert!(
        matches!(err, ManifestError::MissingAudio { line: 1, .. }),
        "{err}"
    );
    let mut text = std::fs::read_to_string(&train).unwrap();
    text.push_str("{\"id\": 3}\n");
    std::fs::write(&train, text).unwrap();
    let err = read_manifest(&train, ReadOptions { check_audio: false }).unwrap_err();
    assert!(matches!(err, ManifestError::Json { line: 3, .. }), "{err}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn missing_program_and_unknown_voice_name_the_command() {
    let d = tempfile::tempdir().unwrap();
    let mut c = tiny_config(d.path());
    c.synth = Synthesizers {
        espeak: "/nonexistent/espeak-ng".into(),
        ..Synthesizers::default()
    };
    let err = build_corpus(&c).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/espeak-ng"), "{err}");
    // espeak-ng itself would speak these with a fallback voice; they must be refused.
    for bad in ["en-gb-scotlnd", "fr-fr+nosuchvariant"] {
        let mut c = tiny_config(d.path());
        c.voices.push(bad.into());
        let err = build_corpus(&c).unwrap_err().to_string();
        assert!(
            err.contains(bad) && err.contains("espeak-ng --voices"),
            "{err}"
        );
        println!("{err}");
    }
}

#[test]
fn pico_voices_synthesize_and_bad_ones_are_named() {
    let d = tempfile::tempdir().unwrap();
    let mut c = tiny_config(d.path());
    c.voices = ["pico:en-US", "en-gb", "pico:fr-FR"]
        .map(String::from)
        .to_vec();
    build_corpus(&c).unwrap();
    let mut pico = 0;
    for name in SETS {
        let m = read_manifest(
            d.path().join(format!("{name}.jsonl")),
            ReadOptions::default(),
        )
        .unwrap();
        for e in &m.entries {
            let voice = e.voice.clone().unwrap();
            if !voice.starts_with("pico:") {
                continue;
            }
            pico += 1;
            let w = read_wav(m.resolve(e.audio.as_deref().unwrap())).unwrap();
            assert_eq!((w.sample_rate, w.channels), (16_000, 1));
            assert!((0.3..15.0).contains(&w.duration_s()), "{voice}");
            let rms =
                (w.samples.iter().map(|x| x * x).sum::<f32>() / w.samples.len() as f32).sqrt();
            assert!(rms > 0.01, "{voice}: silent");
        }
    }
    // Every French utterance has only Pico to speak it.
    assert!(pico >= 3, "{pico} Pico utterances");
    assert!(walk(d.path()).iter().all(|p| !p.contains(".pico.wav")));

    let mut c = tiny_config(d.path());
    c.voices.push("pico:fr-CA".into());
    let err = build_corpus(&c).unwrap_err().to_string();
    assert!(
        err.contains("SVOX Pico has no voice \"pico:fr-CA\""),
        "{err}"
    );
    let mut c = tiny_config(d.path());
    c.voices = vec!["en-us".into(), "pico:fr-FR".into()];
    c.synth = Synthesizers {
        pico: "/nonexistent/pico2wave".into(),
        ..Synthesizers::default()
    };
    let err = build_corpus(&c).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/pico2wave") && err.contains("libttspico-utils"),
        "{err}"
    );
}
