//! Extending a pretrained model's vocabulary with new special tokens (speech units, task and
//! direction tokens), keeping tokenizer ids and embedding rows in step.

use crate::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

/// Adds `tokens` to the tokenizer as special tokens and grows the model so that every new id
/// has a row (new rows at the mean of the old ones). Returns the id of each token. Tokens the
/// tokenizer already knows keep their id.
pub fn add_tokens(
    model: &mut Llama,
    tokenizer: &mut Tokenizer,
    tokens: &[String],
) -> Result<Vec<u32>> {
    let ids = tokenizer.add_special_tokens(tokens)?;
    let needed = ids.iter().map(|&i| i as i64 + 1).max().unwrap_or(0);
    let vocab = model.config().vocab_size;
    if needed > vocab {
        model.extend_vocab(needed - vocab)?;
    }
    if (tokenizer.vocab_size() as i64) > model.config().vocab_size {
        return Err(ModelError::Tokenizer {
            path: tokenizer.path().to_path_buf(),
            message: format!(
                "{} tokens after extension exceed the model's {} rows",
                tokenizer.vocab_size(),
                model.config().vocab_size
            ),
        });
    }
    Ok(ids)
}

/// `<unit_0>` .. `<unit_{n-1}>`: the speech-unit token names.
pub fn unit_token_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("<unit_{i}>")).collect()
}
