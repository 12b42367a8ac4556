//! SFT training sequences and batches.
//!
//! Each paired manifest entry (source text + audio, target text + audio) and the 50 Hz units of
//! both audio files become one or more examples in the format of [`tolk_models::prompt`]:
//!
//! - [`Strategy::Vanilla`]: one S2ST example (source units -> target units);
//! - [`Strategy::TriTask`]: three examples, ASR (source units -> source text), S2TT (source
//!   units -> target text) and S2ST, mixed by the batcher's shuffle;
//! - [`Strategy::ChainOfModality`]: one CoM example (source units -> target text -> target
//!   units).
//!
//! Both directions come from the same entries: an entry whose languages are the other way round
//! is used through [`ManifestEntry::reversed`] (CVSS en->fr is fr->en run in reverse, method.md
//! section 1).
//!
//! # Labels
//! [`Example::labels`] is aligned with [`Example::input_ids`] (same length, **not** shifted):
//! `labels[i] = input_ids[i]` on the target part and [`IGNORE_INDEX`] (-100) on the prompt,
//! as transformers' causal LM convention, where the model shifts internally (the logits at
//! position `i` are scored against `labels[i + 1]`).
//!
//! # Bad input
//! An example that cannot be built correctly is skipped and counted per [`SkipReason`] in the
//! [`SkipReport`] with a warning: no units for an audio file, an empty transcript, a unit id
//! outside the unit vocabulary, a transcript that tokenizes into non-text (added) tokens, a
//! sequence longer than the maximum (never truncated), an unpaired entry or one whose languages
//! do not match the direction. Counts are per example (a tri-task utterance whose target units
//! are missing still gives its ASR and S2TT examples).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tolk_models::prompt::{PromptFormat, Task};
use tolk_models::tokenizer::Tokenizer;

use crate::corpus::manifest::ManifestEntry;
pub use crate::toolkit::labels::IGNORE_INDEX;

/// Where raw (not deduplicated) units of an audio file come from, keyed by the manifest's audio
/// path as written in the manifest: a [`crate::units::file::UnitsTable`] read with
/// `read_units`, or a map in tests.
pub trait UnitSource {
    fn units(&self, audio: &str) -> Option<&[u32]>;
}

impl UnitSource for crate::units::file::UnitsTable {
    fn units(&self, audio: &str) -> Option<&[u32]> {
        self.get(audio)
    }
}

impl UnitSource for HashMap<String, Vec<u32>> {
    fn units(&self, audio: &str) -> Option<&[u32]> {
        self.get(audio).map(Vec::as_slice)
    }
}

/// The SFT strategy (method.md section 1) and the direction are the translator manifest's types,
/// so a trained model's `tolk-model.json` names them the same way.
pub use tolk_models::translator::{Direction, Strategy};

/// The tasks of one utterance under `strategy`, in the order their examples are built.
pub fn strategy_tasks(strategy: Strategy) -> &'static [Task] {
    match strategy {
        Strategy::Vanilla => &[Task::S2st],
        Strategy::TriTask => &[Task::Asr, Task::S2tt, Task::S2st],
        Strategy::ChainOfModality => &[Task::ChainOfModality],
    }
}

/// How examples are built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftDataConfig {
    pub strategy: Strategy,
    /// Directions to build, each from every entry (reversed when needed).
    pub directions: Vec<Direction>,
    /// Drop a source unit equal to its predecessor (method.md section 5).
    #[serde(default)]
    pub dedup_source: bool,
    /// Drop a target unit equal to its predecessor.
    #[serde(default)]
    pub dedup_target: bool,
    /// Longest sequence (prompt + target) kept; longer examples are skipped and counted.
    pub max_len: usize,
}

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt then target.
    pub input_ids: Vec<u32>,
    /// Aligned with `input_ids` (not shifted): [`IGNORE_INDEX`] on the prompt, the token id on
    /// the target.
    pub labels: Vec<i64>,
    pub task: Task,
    pub direction: Direction,
    /// Id of the (possibly reversed) manifest entry.
    pub id: String,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Positions with loss.
    pub fn num_target_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Why an example was not built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// The entry has no target side.
    Unpaired,
    /// The entry's languages are not this direction either way round.
    OtherLanguages,
    /// An audio file the task needs has no entry in the units table (or no audio path).
    MissingUnits,
    /// A transcript the task needs is empty.
    EmptyText,
    /// A unit id is outside `0..num_units`.
    UnitOutOfRange,
    /// A transcript tokenizes into tokens outside the text vocabulary (e.g. a literal
    /// `<|end|>`).
    NonTextToken,
    /// Prompt + target exceed `max_len`.
    TooLong,
    /// The direction needs the entry reversed, but its source audio is augmented (noisy
    /// audio is never a target) or its target revoiced (`tolk-train revoice`: the output
    /// voice is never a source).
    AugmentedSource,
}

/// Skip warnings printed per reason before the rest go to debug level.
const WARN_PER_REASON: usize = 20;

/// Skipped examples, counted per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipReport {
    pub counts: BTreeMap<SkipReason, usize>,
}

impl SkipReport {
    pub fn count(&self, reason: SkipReason) -> usize {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Skips that point at a data problem (all but [`SkipReason::AugmentedSource`], which is by
    /// design: augmented entries serve one direction).
    pub fn problems(&self) -> usize {
        self.total() - self.count(SkipReason::AugmentedSource)
    }

    fn add(&mut self, reason: SkipReason, id: &str, task: Option<Task>, detail: &str) {
        let n = self.counts.entry(reason).or_insert(0);
        *n += 1;
        // Every skip is counted; the first few per reason are warnings, the rest debug lines
        // (the summary warning of `build_examples` gives the totals).
        if *n <= WARN_PER_REASON && reason != SkipReason::AugmentedSource {
            tracing::warn!(id, ?task, ?reason, "skipping SFT example: {detail}");
        } else {
            tracing::debug!(id, ?task, ?reason, "skipping SFT example: {detail}");
        }
    }
}

/// The examples of a data set and what was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftData {
    pub examples: Vec<Example>,
    pub skipped: SkipReport,
}

/// Errors of the SFT data side (a bad example is a skip, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SftDataError {
    #[error("invalid SFT data configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] tolk_models::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Drops every unit equal to its predecessor.
pub fn dedup_units(units: &[u32]) -> Vec<u32> {
    let mut out = units.to_vec();
    out.dedup();
    out
}

/// One side (source or target) of an oriented entry, prepared lazily.
struct Side<'a> {
    audio: Option<&'a str>,
    text: &'a str,
}

/// Builds the examples of `entries` for `config` (see the module documentation).
pub fn build_examples(
    entries: &[ManifestEntry],
    units: &impl UnitSource,
    tokenizer: &Tokenizer,
    format: &PromptFormat,
    config: &SftDataConfig,
) -> Result<SftData, SftDataError> {
    if config.directions.is_empty() {
        return Err(SftDataError::Config("no direction given".into()));
    }
    if config.max_len == 0 {
        return Err(SftDataError::Config("max_len must be positive".into()));
    }
    let mut skipped = SkipReport::default();
    let mut examples = Vec::new();
    for &direction in &config.directions {
        let (src, tgt) = (direction.src().code(), direction.tgt().code());
        for entry in entries {
            let Some(entry_tgt) = entry.target_language.as_deref() else {
                skipped.add(SkipReason::Unpaired, &entry.id, None, "no target side");
                continue;
            };
            let reversed;
            let e = if entry.language == src && entry_tgt == tgt {
                entry
            } else if entry.language == tgt && entry_tgt == src {
                if entry.augmentation.is_some() || entry.fixed_target {
                    skipped.add(
                        SkipReason::AugmentedSource,
                        &entry.id,
                        None,
                        "augmented source audio or a revoiced target serves one direction",
                    );
                    continue;
                }
                let Some(r) = entry.reversed() else {
                    skipped.add(SkipReason::Unpaired, &entry.id, None, "no target side");
                    continue;
                };
                reversed = r;
                &reversed
            } else {
                skipped.add(
                    SkipReason::OtherLanguages,
                    &entry.id,
                    None,
                    &format!("languages {}->{entry_tgt}", entry.language),
                );
                continue;
            };
            let source = Side {
                audio: e.audio.as_deref(),
                text: &e.text,
            };
            let target = Side {
                audio: e.target_audio.as_deref(),
                text: e.target_text.as_deref().unwrap_or(""),
            };
            for &task in strategy_tasks(config.strategy) {
                match build_one(
                    e, task, direction, &source, &target, units, tokenizer, format, config,
                )? {
                    Ok(ex) => examples.push(ex),
                    Err((reason, detail)) => skipped.add(reason, &e.id, Some(task), &detail),
                }
            }
        }
    }
    if skipped.total() > 0 {
        tracing::warn!(
            kept = examples.len(),
            skipped = skipped.total(),
            counts = ?skipped.counts,
            "SFT examples skipped"
        );
    }
    Ok(SftData { examples, skipped })
}

type Built = Result<Example, (SkipReason, String)>;

#[allow(clippy::too_many_arguments)]
fn build_one(
    e: &ManifestEntry,
    task: Task,
    direction: Direction,
    source: &Side,
    target: &Side,
    units: &impl UnitSource,
    tokenizer: &Tokenizer,
    format: &PromptFormat,
    config: &SftDataConfig,
) -> Result<Built, SftDataError> {
    let get_units = |side: &Side, dedup: bool| -> Result<Vec<u32>, (SkipReason, String)> {
        let audio = side
            .audio
            .ok_or((SkipReason::MissingUnits, "no audio path".to_string()))?;
        let raw = units
            .units(audio)
            .ok_or_else(|| (SkipReason::MissingUnits, format!("no units for {audio}")))?;
        if let Some(&bad) = raw.iter().find(|&&u| u >= format.num_units) {
            return Err((
                SkipReason::UnitOutOfRange,
                format!("unit {bad} of {audio} is outside 0..{}", format.num_units),
            ));
        }
        Ok(if dedup {
            dedup_units(raw)
        } else {
            raw.to_vec()
        })
    };
    let get_text = |side: &Side| -> Result<Result<Vec<u32>, (SkipReason, String)>, SftDataError> {
        if side.text.trim().is_empty() {
            return Ok(Err((SkipReason::EmptyText, "empty transcript".into())));
        }
        let ids = tokenizer.encode(side.text, false)?;
        if let Some(&bad) = ids.iter().find(|&&t| t >= format.text_vocab) {
            return Ok(Err((
                SkipReason::NonTextToken,
                format!("transcript {:?} gives non-text token {bad}", side.text),
            )));
        }
        Ok(Ok(ids))
    };
    let src_units = match get_units(source, config.dedup_source) {
        Ok(u) => u,
        Err(s) => return Ok(Err(s)),
    };
    let (text_ids, tgt_units) = match task {
        Task::Asr => (get_text(source)?, Ok(Vec::new())),
        Task::S2tt => (get_text(target)?, Ok(Vec::new())),
        Task::S2st => (Ok(Vec::new()), get_units(target, config.dedup_target)),
        Task::ChainOfModality => (get_text(target)?, get_units(target, config.dedup_target)),
    };
    let (text_ids, tgt_units) = match (text_ids, tgt_units) {
        (Ok(t), Ok(u)) => (t, u),
        (Err(s), _) | (_, Err(s)) => return Ok(Err(s)),
    };
    let prompt = format.prompt(task, direction.src(), direction.tgt(), &src_units)?;
    let tgt = format.target(task, &text_ids, &tgt_units)?;
    let len = prompt.len() + tgt.len();
    if len > config.max_len {
        return Ok(Err((
            SkipReason::TooLong,
            format!("{len} tokens exceed max_len {}", config.max_len),
        )));
    }
    let mut labels = vec![IGNORE_INDEX; prompt.len()];
    labels.extend(tgt.iter().map(|&t| t as i64));
    let mut input_ids = prompt;
    input_ids.extend_from_slice(&tgt);
    Ok(Ok(Example {
        input_ids,
        labels,
        task,
        direction,
        id: e.id.clone(),
    }))
}

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// At most this many examples per batch.
    pub max_examples: usize,
    /// At most this many padded tokens (`batch size x longest example`) per batch.
    pub max_tokens: usize,
    /// Id written into padded `input_ids` positions (never scored: labels there are -100).
    pub pad_id: u32,
    /// Seed of the per-epoch shuffle.
    pub seed: u64,
}

/// Where the batcher is: the next batch is batch `step` of epoch `epoch`. Saved with a
/// checkpoint, it resumes the exact batch sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPosition {
    pub epoch: u64,
    pub step: usize,
}

/// One padded batch (CPU tensors).
#[derive(Debug)]
pub struct Batch {
    /// `[B, S]` i64, right-padded with the pad id.
    pub input_ids: Tensor,
    /// `[B, S]` i64, aligned with `input_ids` (not shifted), -100 on prompt and padding.
    pub labels: Tensor,
    /// `[B, S]` bool, true = real token.
    pub padding_mask: Tensor,
    /// Indices of the examples in the batcher's example list, in row order.
    pub indices: Vec<usize>,
    /// Tokens with loss.
    pub target_tokens: usize,
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny portable generator, so a seed gives the same
/// shuffle on every platform and crate version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Seeded epoch-by-epoch batching of a fixed example list: each epoch shuffles the examples
/// (Fisher-Yates from the seed and the epoch number) and cuts them, in order, into batches of
/// at most `max_examples` examples and `max_tokens` padded tokens. Runs over epochs forever;
/// [`Batcher::position`] and [`Batcher::resume`] give exact resume.
pub struct Batcher<'a> {
    examples: &'a [Example],
    config: BatchConfig,
    position: BatchPosition,
    plan: Vec<Vec<usize>>,
}

impl<'a> Batcher<'a> {
    pub fn new(examples: &'a [Example], config: BatchConfig) -> Result<Self, SftDataError> {
        Self::resume(examples, config, BatchPosition::default())
    }

    /// Starts at `position` (from [`Self::position`] of an earlier run with the same examples
    /// and config).
    pub fn resume(
        examples: &'a [Example],
        config: BatchConfig,
        position: BatchPosition,
    ) -> Result<Self, SftDataError> {
        if examples.is_empty() {
            return Err(SftDataError::Config("no examples to batch".into()));
        }
        if config.max_examples == 0 {
            return Err(SftDataError::Config("max_examples must be positive".into()));
        }
        if let Some(e) = examples.iter().find(|e| e.len() > config.max_tokens) {
            return Err(SftDataError::Config(format!(
                "example {} has {} tokens, more than max_tokens {} per batch",
                e.id,
                e.len(),
                config.max_tokens
            )));
        }
        let mut b = Self {
            examples,
            config,
            position,
            plan: Vec::new(),
        };
        b.plan = b.plan_epoch(position.epoch);
        if position.step > b.plan.len() {
            return Err(SftDataError::Config(format!(
                "resume position step {} is past the {} batches of epoch {}",
                position.step,
                b.plan.len(),
                position.epoch
            )));
        }
        Ok(b)
    }

    pub fn position(&self) -> BatchPosition {
        self.position
    }

    /// Batches in the current epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.plan.len()
    }

    fn plan_epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        let mut rng = SplitMix64(
            self.config.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17),
        );
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let mut plan = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut longest = 0;
        for i in order {
            let len = self.examples[i].len();
            let l = longest.max(len);
            if !cur.is_empty()
                && (cur.len() == self.config.max_examples
                    || (cur.len() + 1) * l > self.config.max_tokens)
            {
                plan.push(std::mem::take(&mut cur));
                longest = 0;
            }
            longest = longest.max(len);
            cur.push(i);
        }
        if !cur.is_empty() {
            plan.push(cur);
        }
        plan
    }

    /// The next batch (moving to the next epoch after the last batch of one).
    pub fn next_batch(&mut self) -> Result<Batch, SftDataError> {
        if self.position.step == self.plan.len() {
            self.position = BatchPosition {
                epoch: self.position.epoch + 1,
                step: 0,
            };
            self.plan = self.plan_epoch(self.position.epoch);
        }
        let indices = self.plan[self.position.step].clone();
        self.position.step += 1;
        collate(self.examples, &indices, self.config.pad_id)
    }
}

/// Right-pads `examples[indices]` into a [`Batch`].
pub fn collate(
    examples: &[Example],
    indices: &[usize],
    pad_id: u32,
) -> Result<Batch, SftDataError> {
    let b = indices.len();
    let s = indices
        .iter()
        .map(|&i| examples[i].len())
        .max()
        .unwrap_or(0);
    let mut ids = vec![pad_id as i64; b * s];
    let mut labels = vec![IGNORE_INDEX; b * s];
    let mut mask = vec![false; b * s];
    let mut target_tokens = 0;
    for (row, &i) in indices.iter().enumerate() {
        let e = &examples[i];
        for (k, (&t, &l)) in e.input_ids.iter().zip(&e.labels).enumerate() {
            ids[row * s + k] = t as i64;
            labels[row * s + k] = l;
            mask[row * s + k] = true;
        }
        target_tokens += e.num_target_tokens();
    }
    let shape = [b as i64, s as i64];
    Ok(Batch {
        input_ids: Tensor::f_from_slice(&ids)?.f_view(shape)?,
        labels: Tensor::f_from_slice(&labels)?.f_view(shape)?,
        padding_mask: Tensor::f_from_slice(&mask)?.f_view(shape)?,
        indices: indices.to_vec(),
        target_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A word-level tokenizer: words 0..8, units `<unit_0>..<unit_9>` at 8..18, the specials
    /// at 18..27 (`<|asr|> <|s2tt|> <|s2st|> <|com|> <|en|> <|fr|> <|units|> <|sep|> <|end|>`).
    fn tiny_tokenizer(dir: &Path) -> (Tokenizer, PromptFormat) {
        let words = [
            "[UNK]", "hello", "world", "bonjour", "le", "monde", "merci", "pad",
        ];
        let mut vocab = serde_json::Map::new();
        let mut names: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        names.extend((0..10).map(|i| format!("<unit_{i}>")));
        names.extend(
            [
                "<|asr|>",
                "<|s2tt|>",
                "<|s2st|>",
                "<|com|>",
                "<|en|>",
                "<|fr|>",
                "<|units|>",
                "<|sep|>",
                "<|end|>",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        for (i, n) in names.iter().enumerate() {
            vocab.insert(n.clone(), serde_json::json!(i));
        }
        let added: Vec<_> = names[8..]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({"id": i + 8, "content": n, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        let format = PromptFormat::from_tokenizer(&tok, 10).unwrap();
        assert_eq!((format.text_vocab, format.unit_base), (8, 8));
        (tok, format)
    }

    fn pair(id: &str) -> ManifestEntry {
        let mut e = ManifestEntry::new(id, "en", "hello world");
        e.audio = Some(format!("{id}-en.wav"));
        e.target_language = Some("fr".into());
        e.target_text = Some("bonjour le monde".into());
        e.target_audio = Some(format!("{id}-fr.wav"));
        e
    }

    fn config(strategy: Strategy) -> SftDataConfig {
        SftDataConfig {
            strategy,
            directions: vec![Direction::EnFr],
            dedup_source: false,
            dedup_target: false,
            max_len: 64,
        }
    }

    #[test]
    fn layouts_and_labels_of_each_strategy() {
        let d = tempfile::tempdir().unwrap();
        let (tok, f) = tiny_tokenizer(d.path());
        let units: HashMap<String, Vec<u32>> = [
            ("a-en.wav".to_string(), vec![1, 1, 2]),
            ("a-fr.wav".to_string(), vec![3, 4, 4]),
        ]
        .into();
        let entries = [pair("a")];
        // Hand-written from the layout in tolk_models::prompt: unit u is id 8 + u;
        // asr 18, s2tt 19, s2st 20, com 21, en 22, fr 23, units 24, sep 25, end 26.
        let p = |task: u32, src: u32, tgt: u32| vec![task, src, tgt, 24, 9, 9, 10, 25];
        let vanilla =
            build_examples(&entries, &units, &tok, &f, &config(Strategy::Vanilla)).unwrap();
        assert_eq!(vanilla.examples.len(), 1);
        let e = &vanilla.examples[0];
        let mut want = p(20, 22, 23);
        want.extend([11, 12, 12, 26]);
        assert_eq!(e.input_ids, want);
        assert_eq!(e.labels[..8], [-100; 8]);
        assert_eq!(e.labels[8..], [11, 12, 12, 26]);
        assert_eq!(
            (e.task, e.direction, e.id.as_str()),
            (Task::S2st, Direction::EnFr, "a")
        );

        let tri = build_examples(&entries, &units, &tok, &f, &config(Strategy::TriTask)).unwrap();
        let tasks: Vec<Task> = tri.examples.iter().map(|e| e.task).collect();
        assert_eq!(tasks, [Task::Asr, Task::S2tt, Task::S2st]);
        // ASR names the source language twice and targets the source text.
        let mut want = p(18, 22, 22);
        want.extend([1, 2, 26]);
        assert_eq!(tri.examples[0].input_ids, want);
        let mut want = p(19, 22, 23);
        want.extend([3, 4, 5, 26]);
        assert_eq!(tri.examples[1].input_ids, want);
        assert_eq!(tri.examples[1].labels[8..], [3, 4, 5, 26]);

        let com = build_examples(
            &entries,
            &units,
            &tok,
            &f,
            &config(Strategy::ChainOfModality),
        )
        .unwrap();
        let mut want = p(21, 22, 23);
        want.extend([3, 4, 5, 24, 11, 12, 12, 26]);
        assert_eq!(com.examples[0].input_ids, want);
        assert_eq!(com.examples[0].labels[..8], [-100; 8]);
        assert_eq!(com.examples[0].num_target_tokens(), 8);
    }

    #[test]
    fn reversed_direction_and_dedup() {
        let d = tempfile::tempdir().unwrap();
        let (tok, f) = tiny_tokenizer(d.path());
        let units: HashMap<String, Vec<u32>> = [
            ("a-en.wav".to_string(), vec![1, 1, 2, 2, 1]),
            ("a-fr.wav".to_string(), vec![3, 3, 3]),
        ]
        .into();
        let mut cfg = config(Strategy::ChainOfModality);
        cfg.directions = vec![Direction::FrEn];
        cfg.dedup_source = true;
        let out = build_examples(&[pair("a")], &units, &tok, &f, &cfg).unwrap();
        let e = &out.examples[0];
        // <|com|> <|fr|> <|en|> <|units|> u3 <|sep|> | hello world <|units|> u1 u1 u2 u2 u1 <|end|>
        assert_eq!(
            e.input_ids,
            [21, 23, 22, 24, 11, 25, 1, 2, 24, 9, 9, 10, 10, 9, 26]
        );
        assert_eq!((e.id.as_str(), e.direction), ("a-rev", Direction::FrEn));
        cfg.dedup_target = true;
        cfg.dedup_source = false;
        let out = build_examples(&[pair("a")], &units, &tok, &f, &cfg).unwrap();
        assert_eq!(
            out.examples[0].input_ids,
            [21, 23, 22, 24, 11, 11, 11, 25, 1, 2, 24, 9, 10, 9, 26]
        );
        // A French-source entry is used as is for fr-en.
        let rev = pair("b").reversed().unwrap();
        let units: HashMap<String, Vec<u32>> = [
            ("b-en.wav".to_string(), vec![1]),
            ("b-fr.wav".to_string(), vec![2]),
        ]
        .into();
        let out = build_examples(&[rev], &units, &tok, &f, &cfg).unwrap();
        assert_eq!(out.examples[0].id, "b-rev");
        assert_eq!(out.examples[0].input_ids[4], 10);
        // An entry with augmented (noisy) English audio serves en-fr only: reversed, its noisy
        // audio would become the target.
        let mut noisy = pair("b");
        noisy.augmentation = Some("white noise -50 dBFS".into());
        cfg.directions = vec![Direction::FrEn, Direction::EnFr];
        let out = build_examples(&[noisy], &units, &tok, &f, &cfg).unwrap();
        assert_eq!(out.examples.len(), 1);
        assert_eq!(out.examples[0].direction, Direction::EnFr);
        assert_eq!(out.skipped.count(SkipReason::AugmentedSource), 1);
        // So does an entry whose French target was revoiced: the output voice is never a source.
        let mut revoiced = pair("b");
        revoiced.fixed_target = true;
        let out = build_examples(&[revoiced], &units, &tok, &f, &cfg).unwrap();
        assert_eq!(out.examples.len(), 1);
        assert_eq!(out.examples[0].direction, Direction::EnFr);
        assert_eq!(out.skipped.count(SkipReason::AugmentedSource), 1);
    }

    #[test]
    fn bad_examples_are_skipped_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let (tok, f) = tiny_tokenizer(d.path());
        let mut units: HashMap<String, Vec<u32>> = HashMap::new();
        for id in ["ok", "empty", "range", "long", "special"] {
            units.insert(format!("{id}-en.wav"), vec![1, 2]);
            units.insert(format!("{id}-fr.wav"), vec![3]);
        }
        units.insert("nofr-en.wav".into(), vec![1]);
        units.insert("range-fr.wav".into(), vec![3, 10]);
        units.insert("long-en.wav".into(), vec![1; 60]);
        let mut empty = pair("empty");
        empty.target_text = Some("  ".into());
        let mut german = pair("ok");
        german.language = "de".into();
        let mut special = pair("special");
        special.text = "hello <|end|>".into();
        let entries = [
            pair("ok"),
            pair("missing"),
            pair("nofr"),
            empty,
            pair("range"),
            pair("long"),
            special,
            ManifestEntry::new("mono", "en", "hello"),
            german,
        ];
        let out = build_examples(&entries, &units, &tok, &f, &config(Strategy::TriTask)).unwrap();
        let r = &out.skipped;
        // missing: 3 tasks; nofr: S2ST only.
        assert_eq!(r.count(SkipReason::MissingUnits), 4);
        // empty target text: S2TT.
        assert_eq!(r.count(SkipReason::EmptyText), 1);
        // unit 10 of 10: S2ST.
        assert_eq!(r.count(SkipReason::UnitOutOfRange), 1);
        // 60 source units + 5 + target > 64: all 3 tasks.
        assert_eq!(r.count(SkipReason::TooLong), 3);
        // literal <|end|> in the source text: ASR.
        assert_eq!(r.count(SkipReason::NonTextToken), 1);
        assert_eq!(r.count(SkipReason::Unpaired), 1);
        assert_eq!(r.count(SkipReason::OtherLanguages), 1);
        assert_eq!(r.total(), 12);
        // ok 3 + nofr 2 + empty 2 + range 2 + special 2.
        assert_eq!(out.examples.len(), 11);
        assert!(out.examples.iter().all(|e| e.len() <= 64));
        let mut cfg = config(Strategy::Vanilla);
        cfg.directions.clear();
        assert!(build_examples(&entries, &units, &tok, &f, &cfg).is_err());
    }

    fn synthetic(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let len = 3 + i % 5;
                Example {
                    input_ids: (0..len as u32).map(|t| t + i as u32).collect(),
                    labels: (0..len as i64)
                        .map(|t| if t < 2 { IGNORE_INDEX } else { t })
                        .collect(),
                    task: Task::S2st,
                    direction: Direction::EnFr,
                    id: format!("e{i}"),
                }
            })
            .collect()
    }

    #[test]
    fn batches_respect_limits_and_cover_each_epoch() {
        let ex = synthetic(23);
        let cfg = BatchConfig {
            max_examples: 4,
            max_tokens: 20,
            pad_id: 7,
            seed: 5,
        };
        let mut b = Batcher::new(&ex, cfg).unwrap();
        let n = b.batches_per_epoch();
        let mut seen = Vec::new();
        for _ in 0..n {
            let batch = b.next_batch().unwrap();
            let [rows, s] = batch.input_ids.size()[..] else {
                panic!()
            };
            assert!(rows <= 4 && rows * s <= 20);
            seen.extend(batch.indices.clone());
        }
        seen.sort();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        assert_eq!(b.position(), BatchPosition { epoch: 0, step: n });
        b.next_batch().unwrap();
        assert_eq!(b.position(), BatchPosition { epoch: 1, step: 1 });
        let too_small = BatchConfig {
            max_tokens: 6,
            ..cfg
        };
        assert!(Batcher::new(&ex, too_small).is_err());
    }
}
