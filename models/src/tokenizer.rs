//! Text tokenizer: a Hugging Face `tokenizer.json` through the `tokenizers` crate.

use crate::{ModelError, Result};
use std::path::{Path, PathBuf};
use tokenizers::AddedToken;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer file not found"),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a `tokenizer.json`; `path` names it in the errors.
    ///
    /// The bytes are parsed as a JSON value first: tokenizers 0.23 panics (`expect("Helper")` in
    /// `decoders/mod.rs`) on anything inside the `decoder` object that is not valid JSON (a
    /// syntax error, a lone surrogate escape), and a corrupt file in a bundle must be an error,
    /// not a crash. A full value parse checks what a skipping parse does not (escapes are only
    /// validated when strings are built). A panic from another corner of its deserializers is
    /// caught and reported the same way.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let err = |message: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| err(format!("not valid JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                err(format!("malformed tokenizer (its parser panicked: {what})"))
            })?;
        let inner = parsed.map_err(|e| err(e.to_string()))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Loads `dir/tokenizer.json` and checks that every id fits a model vocabulary of
    /// `vocab_size` rows (the model may have more rows than the tokenizer, never fewer).
    pub fn for_model(dir: &Path, vocab_size: i64) -> Result<Self> {
        let tok = Self::from_file(&dir.join("tokenizer.json"))?;
        let n = tok.vocab_size() as i64;
        if n > vocab_size {
            return Err(ModelError::Tokenizer {
                path: tok.path.clone(),
                message: format!(
                    "{n} tokens do not fit the model's vocab_size {vocab_size} (config.json)"
                ),
            });
        }
        Ok(tok)
    }

    fn err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (for example BOS) when
    /// `special` is true.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.err(e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Adds special tokens (unit and task tokens) at the end of the vocabulary; returns the id
    /// of each. Tokens already present keep their id.
    pub fn add_special_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>> {
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        self.inner
            .add_special_tokens(added)
            .map_err(|e| self.err(e))?;
        tokens
            .iter()
            .map(|t| {
                self.inner
                    .token_to_id(t)
                    .ok_or_else(|| self.err(format!("token {t} was not added")))
            })
            .collect()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A byte-level BPE tokenizer as trained by [`train_byte_level_bpe`].
pub type ByteLevelBpe = tokenizers::TokenizerImpl<
    tokenizers::models::bpe::BPE,
    tokenizers::normalizers::NormalizerWrapper,
    tokenizers::pre_tokenizers::PreTokenizerWrapper,
    tokenizers::processors::PostProcessorWrapper,
    tokenizers::decoders::DecoderWrapper,
>;

/// Trains a byte-level BPE for a model trained from scratch: NFC normalization, GPT-2 style
/// byte-level pre-tokenizer without a prefix space, the 256 bytes as initial alphabet, `special`
/// tokens given the first ids in order. Errors are the `tokenizers` crate's message.
pub fn train_byte_level_bpe<I, S>(
    texts: I,
    vocab_size: usize,
    min_frequency: u64,
    special: &[String],
) -> std::result::Result<ByteLevelBpe, String>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let byte_level = ByteLevel::new(false, true, true);
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(
            special
                .iter()
                .map(|s| AddedToken::from(s.clone(), true))
                .collect(),
        )
        .build();
    let mut tok: ByteLevelBpe = tokenizers::TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(Some(NFC.into()))
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(|e| format!("building the tokenizer: {e}"))?;
    tok.train(&mut trainer, texts)
        .map_err(|e| format!("training BPE: {e}"))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::Tokenizer;
    use std::path::Path;

    const WORDS: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
        "decoder":DECODER,
        "model":{"type":"WordLevel","vocab":{"<unk>":0,"gare":1},"unk_token":"<unk>"}}"#;

    #[test]
    fn a_well_formed_file_parses() {
        let text = WORDS.replace("DECODER", "null");
        let tok = Tokenizer::from_bytes(text.as_bytes(), Path::new("t.json")).unwrap();
        assert_eq!(tok.encode("gare", false).unwrap(), [1]);
    }

    /// Found by `fuzz/fuzz_targets/tokenizer.rs`: a syntax error inside the decoder object made
    /// tokenizers panic instead of returning an error.
    #[test]
    fn a_syntax_error_in_the_decoder_is_an_error_not_a_panic() {
        let text = WORDS.replace("DECODER", r#"{"type" "ByteLevel"}"#);
        let e = Tokenizer::from_bytes(text.as_bytes(), Path::new("bundle/tokenizer.json"))
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("bundle/tokenizer.json") && msg.contains("not valid JSON"),
            "{msg}"
        );
        let raw = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(text.as_bytes()));
        assert!(
            raw.is_err(),
            "tokenizers itself no longer panics here: drop the pre-check"
        );
    }

    /// Found by the long fuzz run: a string in the decoder holding a lone surrogate escape is
    /// well-formed JSON syntax but not a string, and made tokenizers panic the same way.
    #[test]
    fn a_lone_surrogate_in_the_decoder_is_an_error_not_a_panic() {
        let text = WORDS.replace("DECODER", r#"{"type":"ByteLevel","x":"\udc00"}"#);
        let e = Tokenizer::from_bytes(text.as_bytes(), Path::new("bundle/tokenizer.json"))
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("not valid JSON"), "{msg}");
        let raw = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(text.as_bytes()));
        assert!(
            raw.is_err(),
            "tokenizers itself no longer panics here: drop the pre-check"
        );
    }
}
