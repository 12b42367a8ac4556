//! `tolk-train tokenizer`: a small byte-level BPE tokenizer trained on the manifests' texts, for
//! models trained from scratch (a pretrained backbone keeps its own tokenizer).
//!
//! GPT-2 style byte-level BPE with the `tokenizers` crate: NFC normalization, the byte-level
//! pre-tokenizer without an added prefix space (so decoding gives back the text exactly), the 256
//! byte symbols as the initial alphabet (any UTF-8 text is encodable, no unknown token), special
//! tokens first (ids 0..), then merges up to the requested vocabulary size. Saved as a standard
//! `tokenizer.json` that `tokenizers::Tokenizer::from_file` (Rust or Python) reads.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Model;
use tolk_models::tokenizer::{train_byte_level_bpe, ByteLevelBpe};

use crate::corpus::manifest::{read_manifest, ReadOptions};

/// Default special tokens (ids 0, 1, 2).
pub const DEFAULT_SPECIAL_TOKENS: &[&str] = &["<pad>", "<s>", "</s>"];

/// Arguments of `tolk-train tokenizer`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenizerArgs {
    /// JSONL manifest(s); `text` and `target_text` of every entry are used.
    #[arg(long = "manifest", required = true)]
    pub manifests: Vec<PathBuf>,
    /// Vocabulary size including the 256 byte symbols and the special tokens.
    #[arg(long)]
    pub vocab_size: usize,
    /// Pairs seen fewer times are not merged.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Special tokens, given the first ids in this order.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_SPECIAL_TOKENS.iter().map(|s| s.to_string()))]
    pub special_tokens: Vec<String>,
    /// Output tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
}

/// What a run did; printed as JSON by the CLI.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenizerSummary {
    pub texts: usize,
    pub characters: usize,
    pub vocab_size: usize,
    /// Mean tokens per text of the training texts.
    pub mean_tokens_per_text: f64,
}

/// Trains a byte-level BPE on `texts`.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
    special: &[String],
) -> Result<ByteLevelBpe> {
    let floor = ByteLevel::alphabet().len() + special.len();
    if vocab_size < floor {
        bail!(
            "--vocab-size {vocab_size} is below the {floor} symbols every byte-level BPE has \
             (256 bytes + {} special tokens)",
            special.len()
        );
    }
    if texts.iter().all(|t| t.trim().is_empty()) {
        bail!("no text to train a tokenizer on");
    }
    train_byte_level_bpe(texts.iter(), vocab_size, min_frequency, special)
        .map_err(|e| anyhow::anyhow!(e))
}

/// Runs `tolk-train tokenizer`: reads the texts, trains, saves `args.out`.
pub fn run_tokenizer(args: &TokenizerArgs) -> Result<TokenizerSummary> {
    let mut texts = Vec::new();
    for m in &args.manifests {
        let manifest = read_manifest(m, ReadOptions { check_audio: false })
            .with_context(|| format!("reading manifest {}", m.display()))?;
        for e in manifest.entries {
            texts.push(e.text);
            texts.extend(e.target_text);
        }
    }
    let tok = train_bpe(
        &texts,
        args.vocab_size,
        args.min_frequency,
        &args.special_tokens,
    )?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tok.save(&args.out, true)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.out.display()))?;
    let mut tokens = 0usize;
    for t in &texts {
        tokens += tok
            .encode(t.as_str(), false)
            .map_err(|e| anyhow::anyhow!("encoding {t:?}: {e}"))?
            .len();
    }
    Ok(TokenizerSummary {
        texts: texts.len(),
        characters: texts.iter().map(|t| t.chars().count()).sum(),
        vocab_size: tok.get_model().get_vocab_size(),
        mean_tokens_per_text: tokens as f64 / texts.len().max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let mut v = Vec::new();
        for place in [
            "la gare",
            "l'hôpital",
            "le musée",
            "la pharmacie",
            "l'hôtel",
        ] {
            for verb in ["Où est", "Je cherche", "Pouvez-vous m'indiquer"] {
                v.push(format!("{verb} {place} ? Merci, très aimable."));
                v.push(format!(
                    "{verb} {place}, s'il vous plaît. Ça coûte douze euros."
                ));
            }
        }
        v.push("Where is the station? Thank you very much.".into());
        v
    }

    fn specials() -> Vec<String> {
        DEFAULT_SPECIAL_TOKENS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn round_trips_french_accents() {
        let tok = train_bpe(&corpus(), 300, 2, &specials()).unwrap();
        for text in [
            "Où est l'hôpital ? Ça coûte 12,50 €.",
            "Élève, garçon, naïve, cœur, déjà-vu",
            "Unseen words: Zürich, São Paulo 🚆",
        ] {
            let enc = tok.encode(text, false).unwrap();
            assert!(!enc.get_ids().is_empty());
            let dec = tok.decode(enc.get_ids(), false).unwrap();
            assert_eq!(dec, text);
        }
        // Merges happened: a frequent word is fewer tokens than its bytes.
        let n = tok.encode("pharmacie", false).unwrap().len();
        assert!(n < "pharmacie".len(), "{n} tokens");
    }

    #[test]
    fn vocab_size_is_honoured() {
        for size in [270, 300] {
            let tok = train_bpe(&corpus(), size, 1, &specials()).unwrap();
            assert_eq!(tok.get_model().get_vocab_size(), size);
            assert_eq!(tok.token_to_id("<pad>"), Some(0));
            assert_eq!(tok.token_to_id("</s>"), Some(2));
        }
    }

    #[test]
    fn rejects_too_small_vocab_and_empty_text() {
        let e = train_bpe(&corpus(), 200, 2, &specials()).unwrap_err();
        assert!(e.to_string().contains("259"), "{e}");
        assert!(train_bpe(&[" ".into()], 300, 2, &specials()).is_err());
    }
}
