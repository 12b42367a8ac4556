//! Preference pairs for DPO / SimPO training: the `pairs.jsonl` lines written by `tolk-train
//! pairs` (TRL's `prompt` / `chosen` / `rejected` plus the token ids this trainer reads), and
//! batches of them.
//!
//! A batch of B pairs is one `[2B, T]` input: the B chosen sequences (prompt + completion), then
//! the B rejected ones, right-padded. Labels are the input ids on completion tokens and
//! [`IGNORE_INDEX`] on the prompt and padding, as in SFT (`crate::sft::data`), so
//! [`super::losses::sequence_logps`] sums (or averages) over completion tokens only.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::toolkit::labels::IGNORE_INDEX;

/// Errors reading pairs.
#[derive(Debug, thiserror::Error)]
pub enum PairsDataError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("no usable preference pair in {0}")]
    Empty(String),
}

/// The fields of a `pairs.jsonl` line the trainer needs (the others are carried for people and
/// TRL).
#[derive(Debug, Clone, Deserialize)]
struct PairLine {
    id: String,
    #[serde(default)]
    direction: Option<String>,
    prompt_ids: Vec<u32>,
    chosen_ids: Vec<u32>,
    rejected_ids: Vec<u32>,
}

/// One preference pair as token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub id: String,
    pub direction: Option<String>,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl Pair {
    /// Length of the longer of the two sequences.
    pub fn len(&self) -> usize {
        self.prompt.len() + self.chosen.len().max(self.rejected.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pairs read from files, with what was left out.
#[derive(Debug, Default)]
pub struct PairSet {
    pub pairs: Vec<Pair>,
    /// Longer than `max_len` (skipped).
    pub too_long: usize,
}

/// Reads `pairs.jsonl` files. Every line must parse and every id must lie in `0..vocab`
/// (errors name the file and line); pairs longer than `max_len` tokens are skipped and counted.
pub fn read_pairs(
    files: &[PathBuf],
    vocab: u32,
    max_len: usize,
) -> Result<PairSet, PairsDataError> {
    let mut set = PairSet::default();
    for path in files {
        let f = std::fs::File::open(path).map_err(|e| PairsDataError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let bad = |message: String| PairsDataError::Line {
                path: path.clone(),
                line: i + 1,
                message,
            };
            let line = line.map_err(|e| bad(e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let p: PairLine = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            for (what, ids) in [
                ("prompt_ids", &p.prompt_ids),
                ("chosen_ids", &p.chosen_ids),
                ("rejected_ids", &p.rejected_ids),
            ] {
                if ids.is_empty() {
                    return Err(bad(format!("`{what}` is empty")));
                }
                if let Some(&t) = ids.iter().find(|&&t| t >= vocab) {
                    return Err(bad(format!(
                        "`{what}` has token {t}, outside the model's vocabulary 0..{vocab} (pairs \
                         made with another model?)"
                    )));
                }
            }
            if p.chosen_ids == p.rejected_ids {
                return Err(bad("`chosen_ids` and `rejected_ids` are identical".into()));
            }
            let pair = Pair {
                id: p.id,
                direction: p.direction,
                prompt: p.prompt_ids,
                chosen: p.chosen_ids,
                rejected: p.rejected_ids,
            };
            if pair.len() > max_len {
                set.too_long += 1;
                continue;
            }
            set.pairs.push(pair);
        }
    }
    if set.pairs.is_empty() {
        let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        return Err(PairsDataError::Empty(names.join(", ")));
    }
    Ok(set)
}

/// Splits off every pair whose id hashes into the dev share (`dev_percent` of 100 buckets), so
/// the split does not depend on file order. Returns (train, dev).
pub fn split_dev(pairs: Vec<Pair>, dev_percent: u32) -> (Vec<Pair>, Vec<Pair>) {
    if dev_percent == 0 {
        return (pairs, Vec::new());
    }
    pairs
        .into_iter()
        .partition(|p| fnv1a(p.id.as_bytes()) % 100 >= dev_percent as u64)
}

/// FNV-1a, 64 bits: a stable hash for the dev split (std's hasher is not stable across builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One batch: `[2B, T]` ids, labels and padding mask (chosen rows first).
#[derive(Debug)]
pub struct PairBatch {
    pub input_ids: Tensor,
    pub labels: Tensor,
    pub padding_mask: Tensor,
    pub pairs: usize,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// Stacks `pairs` into one batch, right-padded with `pad_id`.
pub fn collate_pairs(pairs: &[&Pair], pad_id: u32) -> PairBatch {
    let rows: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
        .chain(
            pairs
                .iter()
                .map(|p| (p.prompt.as_slice(), p.rejected.as_slice())),
        )
        .collect();
    let t = rows
        .iter()
        .map(|(p, c)| p.len() + c.len())
        .max()
        .unwrap_or(1);
    let n = rows.len();
    let mut ids = vec![pad_id as i64; n * t];
    let mut labels = vec![IGNORE_INDEX; n * t];
    let mut mask = vec![false; n * t];
    let mut tokens = 0;
    for (r, (prompt, completion)) in rows.iter().enumerate() {
        let row = r * t;
        for (j, &id) in prompt.iter().chain(completion.iter()).enumerate() {
            ids[row + j] = id as i64;
            mask[row + j] = true;
            if j >= prompt.len() {
                labels[row + j] = id as i64;
            }
        }
        tokens += prompt.len() + completion.len();
    }
    let shape = [n as i64, t as i64];
    PairBatch {
        input_ids: Tensor::from_slice(&ids).view(shape),
        labels: Tensor::from_slice(&labels).view(shape),
        padding_mask: Tensor::from_slice(&mask).view(shape).to_kind(Kind::Bool),
        pairs: pairs.len(),
        tokens,
    }
}

/// The order pairs are visited in: epoch `e` is a seeded shuffle of all indices, cut into
/// batches of `batch_size` (the last one may be short). Pure, so a resumed run reproduces it.
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    // Fisher-Yates with splitmix64: deterministic and independent of libtorch's RNG.
    let mut state = seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

/// Resolves `path` against `base` unless it is absolute.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, prompt: &[u32], chosen: &[u32], rejected: &[u32]) -> Pair {
        Pair {
            id: id.into(),
            direction: None,
            prompt: prompt.to_vec(),
            chosen: chosen.to_vec(),
            rejected: rejected.to_vec(),
        }
    }

    #[test]
    fn collate_puts_chosen_rows_first_and_labels_only_completions() {
        let a = pair("a", &[1, 2], &[3, 4, 5], &[6]);
        let b = pair("b", &[7], &[8], &[9, 9]);
        let batch = collate_pairs(&[&a, &b], 0);
        assert_eq!(batch.input_ids.size(), vec![4, 5]);
        let ids = Vec::<i64>::try_from(batch.input_ids.view([-1])).unwrap();
        let labels = Vec::<i64>::try_from(batch.labels.view([-1])).unwrap();
        let mask = Vec::<bool>::try_from(batch.padding_mask.view([-1])).unwrap();
        assert_eq!(
            ids,
            vec![1, 2, 3, 4, 5, 7, 8, 0, 0, 0, 1, 2, 6, 0, 0, 7, 9, 9, 0, 0]
        );
        let m = IGNORE_INDEX;
        assert_eq!(
            labels,
            vec![m, m, 3, 4, 5, m, 8, m, m, m, m, m, 6, m, m, m, 9, 9, m, m]
        );
        assert_eq!(mask.iter().filter(|&&x| x).count(), 5 + 2 + 3 + 3);
        assert_eq!(batch.tokens, 13);
    }

    #[test]
    fn epochs_are_permutations_that_differ_and_repeat() {
        let e0 = epoch_batches(10, 4, 7, 0);
        let e1 = epoch_batches(10, 4, 7, 1);
        assert_eq!(
            e0.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut all: Vec<usize> = e0.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        assert_eq!(e0, epoch_batches(10, 4, 7, 0));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.jsonl");
        let good = r#"{"id":"x","prompt_ids":[1,2],"chosen_ids":[3,4],"rejected_ids":[5]}"#;
        std::fs::write(&p, format!("{good}\n{}\n", good.replace("[5]", "[50]"))).unwrap();
        let e = read_pairs(std::slice::from_ref(&p), 10, 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("token 50"), "{e}");
        std::fs::write(&p, format!("{good}\n{}\n", good.replace("[5]", "[3,4]"))).unwrap();
        let e = read_pairs(std::slice::from_ref(&p), 10, 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("identical"), "{e}");
        std::fs::write(&p, format!("{good}\n")).unwrap();
        let set = read_pairs(std::slice::from_ref(&p), 10, 3)
            .unwrap_err()
            .to_string();
        assert!(set.contains("no usable"), "{set}");
        let set = read_pairs(&[p], 10, 4).unwrap();
        assert_eq!((set.pairs.len(), set.too_long), (1, 0));
    }

    #[test]
    fn dev_split_is_stable_and_roughly_the_share() {
        let pairs: Vec<Pair> = (0..1000)
            .map(|i| pair(&format!("utt-{i}"), &[1], &[2], &[3]))
            .collect();
        let (train, dev) = split_dev(pairs.clone(), 10);
        assert!((60..140).contains(&dev.len()), "{}", dev.len());
        assert_eq!(train.len() + dev.len(), 1000);
        let (_, dev2) = split_dev(pairs, 10);
        assert_eq!(dev, dev2);
    }
}
