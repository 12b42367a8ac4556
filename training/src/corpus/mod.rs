//! A synthetic English–French speech translation corpus for the kiosk domain
//! (`tolk-train synth-corpus`).
//!
//! - [`grammar`]: templates with typed slots producing parallel pairs with exact translations
//!   (French agreement and elision handled per slot value); [`grammar::all_pairs`] lists every
//!   reachable pair in a fixed order;
//! - [`synth`]: `espeak-ng` and SVOX Pico synthesis, resampled to 16 kHz mono 16-bit WAV, on a bounded worker
//!   pool;
//! - [`manifest`]: the JSONL manifest (writer and validating reader) shared with real corpora;
//! - [`augment`]: noisy, padded copies of a manifest's source speech (`tolk-train augment`).
//!
//! # Splits: held-out combinations
//!
//! A pair is the template it came from plus its `(slot, value)` fillers. A *slot type* (`place`
//! and `other_place` are both places) has a value that usually appears in several templates
//! ("the pharmacy" in `where_is`, `walk`, `left_item`...). For every template and every filler
//! value whose `(slot type, value)` also appears in another template, a hash of
//! `(seed, template, slot, value)` holds the combination out for **test** with probability
//! [`HOLDOUT_TEST`] or for **dev** with probability [`HOLDOUT_DEV`]. A pair that uses any
//! test-held combination belongs to the test pool; otherwise one that uses a dev-held combination
//! belongs to the dev pool; every other pair is in the training pool. So the test set asks for
//! words the model heard in training, in templates where it never heard them (e.g. "the
//! pharmacy" only ever seen in other sentence shapes): generalisation, not recall. Test sentences
//! are never training sentences (the pools partition the pairs and each pair is one sentence on
//! each side). If every template of a `(slot type, value)` were held out, the one with the largest
//! hash is given back to training, so every value is heard in training. Values of slots that exist
//! in one template only (platform numbers, prices, counts, relations, directions) are never held
//! out on their own. Phrases without slots are always training data.
//!
//! Sampling from each pool is balanced over templates (round robin over the templates in a
//! seeded order, each template's pairs in seeded order). The **monolingual** sets (`mono-en`,
//! `mono-fr`: source speech with its transcript, no target) are drawn from the training pool
//! pairs *not* used as paired training data, English and French from different pairs, so they
//! are disjoint from every paired split (and from the dev/test pools).
//!
//! Paired entries go English -> French ([`manifest::ManifestEntry::reversed`] gives French ->
//! English; both sides are synthesized). Voices, speed (`-s` 130..=190 words per minute) and pitch
//! (`-p` 30..=70) are chosen per utterance from a hash of the seed, the utterance id and side.
//! Everything is a function of the seed and the options: the same seed gives identical manifests.
//!
//! Output folder: `train.jsonl`, `dev.jsonl`, `test.jsonl`, `mono-en.jsonl`, `mono-fr.jsonl`,
//! `corpus.json` (seed, options, sizes) and `audio/<split>/<id>.<lang>.wav`.

pub mod augment;
pub mod grammar;
pub mod manifest;
pub mod perturb;
pub mod revoice;
pub mod synth;
pub mod voices;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use grammar::Pair;
use manifest::{ManifestEntry, ManifestError};
use synth::{SynthError, SynthJob, Synthesizers};

/// Probability that a `(template, slot, value)` combination is held out for test.
pub const HOLDOUT_TEST: f64 = 0.1;
/// Probability that a `(template, slot, value)` combination is held out for dev.
pub const HOLDOUT_DEV: f64 = 0.1;

/// The `template` of training entries from `--extra-pairs`.
pub const EXTRA_TEMPLATE: &str = "extra";

/// Default espeak-ng voices (all present in Debian's espeak-ng 1.51; `+f3` etc. are variants).
pub const DEFAULT_VOICES: &[&str] = &[
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us+f3",
    "en-gb+f2",
    "fr-fr",
    "fr-be",
    "fr-ch",
    "fr-fr+f3",
    "fr-be+m3",
];

/// Which split a pair's pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train,
    Dev,
    Test,
}

/// Errors of corpus generation.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid corpus options: {0}")]
    Config(String),
}

/// Options of [`build_corpus`].
#[derive(Debug, Clone)]
pub struct CorpusConfig {
    pub out: PathBuf,
    pub seed: u64,
    /// Paired training pairs.
    pub train: usize,
    pub dev: usize,
    pub test: usize,
    /// Monolingual utterances per language.
    pub mono: usize,
    /// Voices (espeak-ng names or `pico:LANG`); the language is the part before the first `-`
    /// or `+` (`en`, `fr`).
    pub voices: Vec<String>,
    /// Synthesize audio (false: text-only manifests).
    pub audio: bool,
    /// Sentence pairs from outside the grammar (`--extra-pairs`), appended to the training
    /// split `extra_copies` times each (every copy drawn its own voices); never in dev or test.
    pub extra_pairs: Vec<(String, String)>,
    pub extra_copies: usize,
    /// Parallel synthesizer processes.
    pub workers: usize,
    pub synth: Synthesizers,
}

impl CorpusConfig {
    /// Defaults: 6000 training pairs, 300 dev, 300 test, 500 monolingual per language.
    pub fn new(out: impl Into<PathBuf>, seed: u64) -> Self {
        Self {
            out: out.into(),
            seed,
            train: 6000,
            dev: 300,
            test: 300,
            mono: 500,
            voices: DEFAULT_VOICES.iter().map(|v| v.to_string()).collect(),
            audio: true,
            extra_pairs: Vec::new(),
            extra_copies: 1,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            synth: Synthesizers::default(),
        }
    }
}

/// Sizes written to `corpus.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CorpusSummary {
    pub seed: u64,
    pub reachable_pairs: usize,
    pub templates: usize,
    pub pool_train: usize,
    pub pool_dev: usize,
    pub pool_test: usize,
    pub train: usize,
    /// Training entries from `--extra-pairs` (included in `train`).
    #[serde(default)]
    pub extra_train: usize,
    pub dev: usize,
    pub test: usize,
    pub mono_en: usize,
    pub mono_fr: usize,
    pub holdout_test: f64,
    pub holdout_dev: f64,
    pub voices: Vec<String>,
    pub audio: bool,
    pub sample_rate: u32,
    /// Total seconds of audio written (0 without audio).
    pub audio_seconds: f64,
}

/// FNV-1a over the seed and the parts, finished with the SplitMix64 mixer: a stable hash
/// (independent of Rust's `Hash` and of crate versions).
pub(crate) fn stable_hash(seed: u64, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    seed.to_le_bytes().into_iter().for_each(&mut eat);
    for p in parts {
        p.bytes().for_each(&mut eat);
        eat(0xff);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A seeded SplitMix64 stream for shuffling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// `other_place` is a place: slot names mapped to the type of their values.
fn slot_type(slot: &str) -> &str {
    match slot {
        "other_place" => "place",
        s => s,
    }
}

/// The held-out `(template, slot type, value)` combinations for a seed, by split.
pub fn holdouts(pairs: &[Pair], seed: u64) -> BTreeMap<(String, String, String), Split> {
    // (slot type, value) -> templates using it.
    let mut uses: BTreeMap<(String, String), BTreeSet<&str>> = BTreeMap::new();
    for p in pairs {
        for (slot, v) in &p.slots {
            uses.entry((slot_type(slot).to_string(), v.clone()))
                .or_default()
                .insert(p.template);
        }
    }
    let mut out = BTreeMap::new();
    for ((ty, v), templates) in uses {
        if templates.len() < 2 {
            continue;
        }
        let draws: Vec<(&str, u64)> = templates
            .iter()
            .map(|t| (*t, stable_hash(seed, &["holdout", t, &ty, &v])))
            .collect();
        let split_of = |h: u64| {
            let u = unit(h);
            if u < HOLDOUT_TEST {
                Split::Test
            } else if u < HOLDOUT_TEST + HOLDOUT_DEV {
                Split::Dev
            } else {
                Split::Train
            }
        };
        let keep = if draws.iter().all(|(_, h)| split_of(*h) != Split::Train) {
            draws.iter().max_by_key(|(_, h)| *h).map(|(t, _)| *t)
        } else {
            None
        };
        for (t, h) in draws {
            let s = split_of(h);
            if s != Split::Train && Some(t) != keep {
                out.insert((t.to_string(), ty.clone(), v.clone()), s);
            }
        }
    }
    out
}

/// The pool of every pair (index-aligned with `pairs`).
pub fn assign_splits(pairs: &[Pair], seed: u64) -> Vec<Split> {
    let held = holdouts(pairs, seed);
    pairs
        .iter()
        .map(|p| {
            let mut split = Split::Train;
            for (slot, v) in &p.slots {
                let key = (
                    p.template.to_string(),
                    slot_type(slot).to_string(),
                    v.clone(),
                );
                match held.get(&key) {
                    Some(Split::Test) => return Split::Test,
                    Some(Split::Dev) => split = Split::Dev,
                    _ => {}
                }
            }
            split
        })
        .collect()
}

/// Takes `k` of `pool` (indices into `pairs`), balanced over templates, in a seeded order.
fn sample_balanced(pairs: &[Pair], pool: &[usize], k: usize, seed: u64, tag: &str) -> Vec<usize> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in pool {
        groups.entry(pairs[i].template).or_default().push(i);
    }
    let mut rng = Rng(stable_hash(seed, &["sample", tag]));
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    for g in &mut groups {
        rng.shuffle(g);
    }
    rng.shuffle(&mut groups);
    let mut out = Vec::with_capacity(k);
    let mut depth = 0;
    while out.len() < k {
        let mut any = false;
        for g in &groups {
            if let Some(&i) = g.get(depth) {
                any = true;
                if out.len() < k {
                    out.push(i);
                }
            }
        }
        if !any {
            break;
        }
        depth += 1;
    }
    out
}

/// The language of a voice name: `fr-be+m3` -> `fr`, `pico:fr-FR` -> `fr`.
pub fn voice_language(voice: &str) -> &str {
    let name = voice.strip_prefix("pico:").unwrap_or(voice);
    name.split(['-', '+']).next().unwrap_or(name)
}

/// The chosen pairs of every set, before synthesis.
#[derive(Debug, Clone)]
pub struct Selection {
    pub reachable: usize,
    pub templates: usize,
    pub pools: [usize; 3],
    /// Per set name (`train`, `dev`, `test`, `mono-en`, `mono-fr`): the pairs, in order.
    pub sets: Vec<(&'static str, Vec<Pair>)>,
}

/// Enumerates the grammar, assigns pools and samples every set.
pub fn select(cfg: &CorpusConfig) -> Result<Selection, CorpusError> {
    let pairs = grammar::all_pairs();
    let splits = assign_splits(&pairs, cfg.seed);
    let pool = |s: Split| -> Vec<usize> { (0..pairs.len()).filter(|&i| splits[i] == s).collect() };
    let (train_pool, dev_pool, test_pool) =
        (pool(Split::Train), pool(Split::Dev), pool(Split::Test));
    let need = |name: &str, asked: usize, have: usize| {
        if asked > have {
            Err(CorpusError::Config(format!(
                "{name}: asked for {asked} utterances but the seed-{} pool holds {have}",
                cfg.seed
            )))
        } else {
            Ok(())
        }
    };
    need(
        "train + 2 x mono",
        cfg.train + 2 * cfg.mono,
        train_pool.len(),
    )?;
    need("dev", cfg.dev, dev_pool.len())?;
    need("test", cfg.test, test_pool.len())?;
    let train = sample_balanced(&pairs, &train_pool, cfg.train, cfg.seed, "train");
    let used: HashSet<usize> = train.iter().copied().collect();
    let rest: Vec<usize> = train_pool
        .iter()
        .copied()
        .filter(|i| !used.contains(i))
        .collect();
    let mono_en = sample_balanced(&pairs, &rest, cfg.mono, cfg.seed, "mono-en");
    let used: HashSet<usize> = mono_en.iter().copied().collect();
    let rest: Vec<usize> = rest.into_iter().filter(|i| !used.contains(i)).collect();
    let mono_fr = sample_balanced(&pairs, &rest, cfg.mono, cfg.seed, "mono-fr");
    let dev = sample_balanced(&pairs, &dev_pool, cfg.dev, cfg.seed, "dev");
    let test = sample_balanced(&pairs, &test_pool, cfg.test, cfg.seed, "test");
    let templates = pairs
        .iter()
        .map(|p| p.template)
        .collect::<BTreeSet<_>>()
        .len();
    let take = |ix: Vec<usize>| ix.into_iter().map(|i| pairs[i].clone()).collect::<Vec<_>>();
    Ok(Selection {
        reachable: pairs.len(),
        templates,
        pools: [train_pool.len(), dev_pool.len(), test_pool.len()],
        sets: vec![
            ("train", take(train)),
            ("dev", take(dev)),
            ("test", take(test)),
            ("mono-en", take(mono_en)),
            ("mono-fr", take(mono_fr)),
        ],
    })
}

/// Picks voice, speed and pitch for one utterance side.
fn voice_for(cfg: &CorpusConfig, voices: &[&String], id: &str, lang: &str) -> (String, u32, u32) {
    let h = stable_hash(cfg.seed, &["voice", id, lang]);
    let v = voices[(h % voices.len() as u64) as usize].clone();
    let h2 = mix(h);
    let speed = 130 + (h2 % 61) as u32;
    let pitch = 30 + ((h2 >> 32) % 41) as u32;
    (v, speed, pitch)
}

/// Generates the corpus into `cfg.out` and returns its summary (also written as `corpus.json`).
pub fn build_corpus(cfg: &CorpusConfig) -> Result<CorpusSummary, CorpusError> {
    let by_lang = |lang: &str| -> Vec<&String> {
        cfg.voices
            .iter()
            .filter(|v| voice_language(v) == lang)
            .collect()
    };
    let (en_voices, fr_voices) = (by_lang("en"), by_lang("fr"));
    if let Some(v) = cfg
        .voices
        .iter()
        .find(|v| !matches!(voice_language(v), "en" | "fr"))
    {
        return Err(CorpusError::Config(format!(
            "voice {v:?} is neither English (en...) nor French (fr...)"
        )));
    }
    if cfg.audio && (en_voices.is_empty() || fr_voices.is_empty()) {
        return Err(CorpusError::Config(
            "give at least one English and one French voice".into(),
        ));
    }
    if cfg.workers == 0 {
        return Err(CorpusError::Config("workers must be at least 1".into()));
    }
    let mut sel = select(cfg)?;
    let extra: Vec<Pair> = (0..cfg.extra_copies)
        .flat_map(|_| cfg.extra_pairs.iter())
        .map(|(en, fr)| Pair {
            template: EXTRA_TEMPLATE,
            slots: Vec::new(),
            en: en.clone(),
            fr: fr.clone(),
        })
        .collect();
    let extra_train = extra.len();
    if let Some((_, train)) = sel.sets.iter_mut().find(|(n, _)| *n == "train") {
        train.extend(extra);
    }
    let io = |path: PathBuf| move |source| CorpusError::Io { path, source };
    std::fs::create_dir_all(&cfg.out).map_err(io(cfg.out.clone()))?;
    if cfg.audio {
        cfg.synth.check_voices(&cfg.voices, &cfg.out)?;
    }
    // Entries and synthesis jobs; job k writes entry field (set, entry, side).
    let mut manifests: Vec<(&str, Vec<ManifestEntry>)> = Vec::new();
    let mut jobs: Vec<SynthJob> = Vec::new();
    let mut slots: Vec<(usize, usize, bool)> = Vec::new();
    for (set_ix, (name, pairs)) in sel.sets.iter().enumerate() {
        let audio_dir = cfg.out.join("audio").join(name);
        if cfg.audio {
            std::fs::create_dir_all(&audio_dir).map_err(io(audio_dir.clone()))?;
        }
        let mut entries = Vec::with_capacity(pairs.len());
        for (k, p) in pairs.iter().enumerate() {
            let id = format!("{name}-{:06}", k + 1);
            let (lang, text) = match *name {
                "mono-fr" => ("fr", &p.fr),
                _ => ("en", &p.en),
            };
            let mut e = ManifestEntry::new(&id, lang, text.clone());
            e.template = Some(p.template.to_string());
            let paired = !name.starts_with("mono");
            if paired {
                e.target_language = Some("fr".into());
                e.target_text = Some(p.fr.clone());
            }
            if cfg.audio {
                let mut sides = vec![(lang, text, false)];
                if paired {
                    sides.push(("fr", &p.fr, true));
                }
                for (l, t, is_target) in sides {
                    let voices = if l == "en" { &en_voices } else { &fr_voices };
                    let (voice, speed, pitch) = voice_for(cfg, voices, &id, l);
                    let rel = format!("audio/{name}/{id}.{l}.wav");
                    let job = SynthJob {
                        text: t.clone(),
                        voice,
                        speed,
                        pitch,
                        out: cfg.out.join(&rel),
                    };
                    if is_target {
                        e.target_audio = Some(rel);
                        e.target_voice = Some(job.settings());
                    } else {
                        e.audio = Some(rel);
                        e.voice = Some(job.settings());
                    }
                    jobs.push(job);
                    slots.push((set_ix, k, is_target));
                }
            }
            entries.push(e);
        }
        manifests.push((name, entries));
    }
    let mut audio_seconds = 0.0;
    if cfg.audio {
        tracing::info!(jobs = jobs.len(), workers = cfg.workers, "synthesizing");
        let durations = cfg.synth.synthesize_all(&jobs, cfg.workers)?;
        for ((set_ix, k, is_target), d) in slots.into_iter().zip(durations) {
            let e = &mut manifests[set_ix].1[k];
            if is_target {
                e.target_duration = Some(d);
            } else {
                e.duration = Some(d);
            }
            audio_seconds += d;
        }
    }
    for (name, entries) in &manifests {
        manifest::write_manifest(cfg.out.join(format!("{name}.jsonl")), entries)?;
    }
    let count = |n: &str| {
        manifests
            .iter()
            .find(|(m, _)| *m == n)
            .map_or(0, |(_, e)| e.len())
    };
    let summary = CorpusSummary {
        seed: cfg.seed,
        reachable_pairs: sel.reachable,
        templates: sel.templates,
        pool_train: sel.pools[0],
        pool_dev: sel.pools[1],
        pool_test: sel.pools[2],
        train: count("train"),
        extra_train,
        dev: count("dev"),
        test: count("test"),
        mono_en: count("mono-en"),
        mono_fr: count("mono-fr"),
        holdout_test: HOLDOUT_TEST,
        holdout_dev: HOLDOUT_DEV,
        voices: cfg.voices.clone(),
        audio: cfg.audio,
        sample_rate: tolk_models::audio::SAMPLE_RATE,
        audio_seconds,
    };
    let path = cfg.out.join("corpus.json");
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    std::fs::write(&path, json + "\n").map_err(io(path.clone()))?;
    Ok(summary)
}

/// Arguments of `tolk-train synth-corpus`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthCorpusArgs {
    /// Output folder (manifests, corpus.json, audio/).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub seed: u64,
    /// Paired training pairs.
    #[arg(long, default_value_t = 6000)]
    pub pairs: usize,
    #[arg(long, default_value_t = 300)]
    pub dev: usize,
    #[arg(long, default_value_t = 300)]
    pub test: usize,
    /// Monolingual utterances per language.
    #[arg(long, default_value_t = 500)]
    pub mono: usize,
    /// Voices, comma separated: espeak-ng names (see `espeak-ng --voices=en`) and SVOX Pico's
    /// `pico:en-US`, `pico:en-GB`, `pico:fr-FR`; default: a mix of espeak-ng's English and
    /// French accents and variants.
    #[arg(long, value_delimiter = ',')]
    pub voices: Vec<String>,
    /// Write text-only manifests (no synthesis).
    #[arg(long)]
    pub no_audio: bool,
    /// A manifest whose sentence pairs (text and target_text, either direction) join the
    /// training split, e.g. `tolk-train voices --set human-texts`: the words of the human test
    /// recordings, spoken by the training voices. Its audio, if any, is never used.
    #[arg(long)]
    pub extra_pairs: Option<PathBuf>,
    /// Times each extra pair is rendered (each copy with voices of its own).
    #[arg(long, default_value_t = 1)]
    pub extra_copies: usize,
    #[command(flatten)]
    pub programs: SynthProgramArgs,
}

/// The synthesizer programs and their parallelism, as command-line flags (`synth-corpus`,
/// `revoice`).
#[derive(Debug, Clone, clap::Args)]
pub struct SynthProgramArgs {
    /// Parallel synthesizer processes (default: the number of cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// The espeak-ng program.
    #[arg(long, default_value = "espeak-ng")]
    pub espeak: PathBuf,
    /// SVOX Pico's program (for `pico:` voices).
    #[arg(long, default_value = "pico2wave")]
    pub pico: PathBuf,
}

impl SynthProgramArgs {
    pub fn synthesizers(&self) -> Synthesizers {
        Synthesizers {
            espeak: self.espeak.clone(),
            pico: self.pico.clone(),
        }
    }

    /// `--workers`, or the number of cores.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl SynthCorpusArgs {
    /// The corpus options these arguments ask for (reads `--extra-pairs`).
    pub fn config(&self) -> Result<CorpusConfig, CorpusError> {
        let mut c = CorpusConfig::new(&self.out, self.seed);
        c.train = self.pairs;
        c.dev = self.dev;
        c.test = self.test;
        c.mono = self.mono;
        if !self.voices.is_empty() {
            c.voices = self.voices.clone();
        }
        c.audio = !self.no_audio;
        if let Some(w) = self.programs.workers {
            c.workers = w;
        }
        c.synth = self.programs.synthesizers();
        if let Some(path) = &self.extra_pairs {
            c.extra_pairs = read_extra_pairs(path)?;
        }
        c.extra_copies = self.extra_copies;
        Ok(c)
    }
}

/// The (English, French) sentence pairs of a manifest's paired entries, in order, deduplicated.
/// Entries marked `test_only` are refused, text and all: their texts come with
/// `voices --set human-texts`, which holds no audio.
pub fn read_extra_pairs(path: &std::path::Path) -> Result<Vec<(String, String)>, CorpusError> {
    let m = manifest::read_manifest(path, manifest::ReadOptions { check_audio: false })?;
    let bad = |id: &str, why: &str| {
        CorpusError::Config(format!(
            "--extra-pairs {}: entry {id}: {why}",
            path.display()
        ))
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in &m.entries {
        if e.test_only {
            return Err(bad(
                &e.id,
                "is test_only (take the text-only set human-texts)",
            ));
        }
        let target = e
            .target_text
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| bad(&e.id, "has no target_text"))?;
        if e.text.trim().is_empty() {
            return Err(bad(&e.id, "has an empty text"));
        }
        let pair = match (e.language.as_str(), e.target_language.as_deref()) {
            ("en", Some("fr")) => (e.text.clone(), target.to_string()),
            ("fr", Some("en")) => (target.to_string(), e.text.clone()),
            (l, t) => {
                return Err(bad(
                    &e.id,
                    &format!(
                        "goes {l} -> {}, not between English and French",
                        t.unwrap_or("?")
                    ),
                ))
            }
        };
        if seen.insert(pair.clone()) {
            out.push(pair);
        }
    }
    if out.is_empty() {
        return Err(CorpusError::Config(format!(
            "--extra-pairs {}: no sentence pairs",
            path.display()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_lines(path: &std::path::Path, lines: &[&str]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn extra_pairs_join_the_training_split_only() {
        let d = tempfile::tempdir().unwrap();
        let extra = d.path().join("extra.jsonl");
        write_lines(
            &extra,
            &[
                r#"{"id":"a","language":"en","text":"A blue heron.","target_language":"fr","target_text":"Un héron bleu."}"#,
                r#"{"id":"b","language":"fr","text":"Une coccinelle.","target_language":"en","target_text":"A ladybird."}"#,
                r#"{"id":"c","language":"en","text":"A blue heron.","target_language":"fr","target_text":"Un héron bleu."}"#,
            ],
        );
        let pairs = read_extra_pairs(&extra).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("A blue heron.".to_string(), "Un héron bleu.".to_string()),
                ("A ladybird.".to_string(), "Une coccinelle.".to_string()),
            ]
        );
        let build = |extra_pairs: Vec<(String, String)>, out: &str| {
            let mut cfg = CorpusConfig::new(d.path().join(out), 3);
            cfg.train = 50;
            cfg.dev = 10;
            cfg.test = 10;
            cfg.mono = 5;
            cfg.audio = false;
            cfg.extra_pairs = extra_pairs;
            cfg.extra_copies = 2;
            let summary = build_corpus(&cfg).unwrap();
            let read = |n: &str| {
                manifest::read_manifest(
                    cfg.out.join(format!("{n}.jsonl")),
                    manifest::ReadOptions { check_audio: false },
                )
                .unwrap()
                .entries
            };
            (summary, read("train"), read("dev"), read("test"))
        };
        let (plain, train0, dev0, test0) = build(Vec::new(), "plain");
        let (with, train1, dev1, test1) = build(pairs, "extra");
        assert_eq!((plain.train, plain.extra_train), (50, 0));
        assert_eq!((with.train, with.extra_train), (54, 4));
        // The grammar's splits are unchanged; the extra pairs follow, each twice.
        let texts = |v: &[ManifestEntry]| {
            v.iter()
                .map(|e| (e.text.clone(), e.target_text.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(&train1[..50]), texts(&train0));
        assert_eq!((texts(&dev1), texts(&test1)), (texts(&dev0), texts(&test0)));
        let tail: Vec<_> = train1[50..]
            .iter()
            .map(|e| (e.text.as_str(), e.template.as_deref()))
            .collect();
        assert_eq!(
            tail,
            vec![
                ("A blue heron.", Some(EXTRA_TEMPLATE)),
                ("A ladybird.", Some(EXTRA_TEMPLATE)),
                ("A blue heron.", Some(EXTRA_TEMPLATE)),
                ("A ladybird.", Some(EXTRA_TEMPLATE)),
            ]
        );
    }

    #[test]
    fn extra_pairs_refuse_test_only_untranslated_and_foreign_entries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.jsonl");
        for (line, want) in [
            (
                r#"{"id":"h","language":"fr","text":"Un chat.","target_language":"en","target_text":"A cat.","test_only":true}"#,
                "test_only",
            ),
            (
                r#"{"id":"m","language":"en","text":"A cat."}"#,
                "no target_text",
            ),
            (
                r#"{"id":"g","language":"de","text":"Eine Katze.","target_language":"en","target_text":"A cat."}"#,
                "de -> en",
            ),
        ] {
            write_lines(&p, &[line]);
            let err = read_extra_pairs(&p).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("x.jsonl"), "{err}");
        }
        write_lines(&p, &[]);
        assert!(read_extra_pairs(&p).is_err());
    }

    #[test]
    fn voice_language_takes_the_prefix() {
        assert_eq!(voice_language("fr-be+m3"), "fr");
        assert_eq!(voice_language("en+f2"), "en");
        assert_eq!(voice_language("en"), "en");
        assert_eq!(voice_language("pico:fr-FR"), "fr");
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..100).collect();
        let mut b = a.clone();
        Rng(5).shuffle(&mut a);
        Rng(5).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn sampling_is_balanced_over_templates() {
        let pairs = grammar::all_pairs();
        let pool: Vec<usize> = (0..pairs.len()).collect();
        let picked = sample_balanced(&pairs, &pool, 2000, 1, "t");
        assert_eq!(picked.len(), 2000);
        assert_eq!(picked.iter().collect::<HashSet<_>>().len(), 2000);
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        let mut size: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in &picked {
            *per.entry(pairs[i].template).or_default() += 1;
        }
        for p in &pairs {
            *size.entry(p.template).or_default() += 1;
        }
        // Round robin: a template either gave all its pairs or as many as the largest share.
        let full = per.values().max().copied().unwrap();
        for (t, n) in &per {
            assert!(*n == size[t] || *n + 1 >= full, "{t}: {n} of {}", size[t]);
        }
        assert_eq!(per.len(), size.len());
    }

    #[test]
    fn voices_speed_and_pitch_stay_in_range_and_vary() {
        let cfg = CorpusConfig::new("/tmp", 3);
        let en: Vec<String> = vec!["en-us".into(), "en-gb".into()];
        let refs: Vec<&String> = en.iter().collect();
        let picks: Vec<_> = (0..200)
            .map(|i| voice_for(&cfg, &refs, &format!("u{i}"), "en"))
            .collect();
        assert!(picks
            .iter()
            .all(|(_, s, p)| (130..=190).contains(s) && (30..=70).contains(p)));
        let voices: HashSet<_> = picks.iter().map(|(v, _, _)| v.as_str()).collect();
        let speeds: HashSet<_> = picks.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(voices.len(), 2);
        assert!(speeds.len() > 30);
    }
}
