//! The sequence formats of Tolk's speech LLM, defined once for training and the runtime.
//!
//! The vocabulary is a pretrained text vocabulary extended (see [`crate::vocab`]) with `K` unit
//! tokens `<unit_0>..<unit_{K-1}>` and the special tokens of [`SpecialToken`]. Every sequence is
//! a prompt followed by a target; the loss covers the target only.
//!
//! ```text
//! prompt:  <|task|> <|src|> <|tgt|> <|units|> u_1 .. u_n <|sep|>
//! ASR      target:  source text                         <|end|>
//! S2TT     target:  target text                         <|end|>
//! S2ST     target:  target units                        <|end|>
//! CoM      target:  target text  <|units|>  target units <|end|>
//! ```
//!
//! `<|task|>` is one of `<|asr|>`, `<|s2tt|>`, `<|s2st|>`, `<|com|>` and `<|src|>`, `<|tgt|>` are
//! language tokens (`<|en|>`, `<|fr|>`); for ASR the target language is the source language.
//! Chain-of-modality (CoM, PROST-LLM arXiv 2601.16618 section 2) decodes in two phases: text
//! restricted to the text vocabulary and `<|units|>`, then units restricted to the unit tokens and
//! `<|end|>` ([`PromptFormat::text_phase`], [`PromptFormat::unit_phase`]).

use crate::llama::Llama;
use crate::sampling::TokenMask;
use crate::tokenizer::Tokenizer;
use crate::vocab::{add_tokens, unit_token_names};
use crate::{ModelError, Result};

/// Languages the format names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    En,
    Fr,
}

impl Lang {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "en" => Ok(Self::En),
            "fr" => Ok(Self::Fr),
            _ => Err(ModelError::InvalidArgument(format!(
                "unknown language `{s}` (expected en or fr)"
            ))),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Fr => "fr",
        }
    }
}

/// What a sequence asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Source units -> source text.
    Asr,
    /// Source units -> target text.
    S2tt,
    /// Source units -> target units (direct).
    S2st,
    /// Source units -> target text -> target units (chain of modality).
    ChainOfModality,
}

/// The special tokens, in the order they are added after the unit tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialToken {
    Asr,
    S2tt,
    S2st,
    Com,
    En,
    Fr,
    Units,
    Sep,
    End,
}

impl SpecialToken {
    pub const ALL: [SpecialToken; 9] = [
        Self::Asr,
        Self::S2tt,
        Self::S2st,
        Self::Com,
        Self::En,
        Self::Fr,
        Self::Units,
        Self::Sep,
        Self::End,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Asr => "<|asr|>",
            Self::S2tt => "<|s2tt|>",
            Self::S2st => "<|s2st|>",
            Self::Com => "<|com|>",
            Self::En => "<|en|>",
            Self::Fr => "<|fr|>",
            Self::Units => "<|units|>",
            Self::Sep => "<|sep|>",
            Self::End => "<|end|>",
        }
    }
}

/// Token ids of one extended vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    /// Size of the text vocabulary before extension: text ids are `0..text_vocab`.
    pub text_vocab: u32,
    /// Id of `<unit_0>`; units are `unit_base..unit_base + num_units`.
    pub unit_base: u32,
    pub num_units: u32,
    special: [u32; 9],
}

/// A decoded output split into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    pub text_ids: Vec<u32>,
    pub units: Vec<u32>,
    /// Whether `<|end|>` was reached.
    pub complete: bool,
}

impl PromptFormat {
    /// Extends a pretrained model and its tokenizer with `num_units` unit tokens and the special
    /// tokens, and returns the format over the new vocabulary.
    pub fn extend(model: &mut Llama, tokenizer: &mut Tokenizer, num_units: u32) -> Result<Self> {
        let text_vocab = tokenizer.vocab_size() as u32;
        let mut names = unit_token_names(num_units as usize);
        names.extend(SpecialToken::ALL.iter().map(|t| t.name().to_string()));
        let ids = add_tokens(model, tokenizer, &names)?;
        Self::from_ids(text_vocab, &ids, num_units)
    }

    /// The format of an already extended tokenizer (a fine-tuned checkpoint's `tokenizer.json`).
    pub fn from_tokenizer(tokenizer: &Tokenizer, num_units: u32) -> Result<Self> {
        let mut names = unit_token_names(num_units as usize);
        names.extend(SpecialToken::ALL.iter().map(|t| t.name().to_string()));
        let ids = names
            .iter()
            .map(|n| {
                tokenizer
                    .token_to_id(n)
                    .ok_or_else(|| ModelError::Tokenizer {
                        path: tokenizer.path().to_path_buf(),
                        message: format!("token {n} is missing: the tokenizer was not extended"),
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        let text_vocab = ids[0];
        Self::from_ids(text_vocab, &ids, num_units)
    }

    fn from_ids(text_vocab: u32, ids: &[u32], num_units: u32) -> Result<Self> {
        let n = num_units as usize;
        let unit_base = ids.first().copied().unwrap_or(text_vocab);
        let contiguous = ids
            .iter()
            .enumerate()
            .all(|(i, &id)| id == unit_base + i as u32);
        if !contiguous || unit_base < text_vocab {
            return Err(ModelError::InvalidArgument(format!(
                "unit and special tokens must follow the text vocabulary contiguously \
                 (text vocabulary {text_vocab}, first unit id {unit_base})"
            )));
        }
        let mut special = [0; 9];
        special.copy_from_slice(&ids[n..n + 9]);
        Ok(Self {
            text_vocab,
            unit_base,
            num_units,
            special,
        })
    }

    pub fn id(&self, t: SpecialToken) -> u32 {
        self.special[SpecialToken::ALL.iter().position(|&x| x == t).unwrap()]
    }

    /// Total vocabulary the model must have.
    pub fn vocab_size(&self) -> u32 {
        self.special[8] + 1
    }

    pub fn unit_id(&self, unit: u32) -> Result<u32> {
        if unit >= self.num_units {
            return Err(ModelError::InvalidArgument(format!(
                "unit {unit} is outside 0..{}",
                self.num_units
            )));
        }
        Ok(self.unit_base + unit)
    }

    fn lang(&self, l: Lang) -> u32 {
        self.id(match l {
            Lang::En => SpecialToken::En,
            Lang::Fr => SpecialToken::Fr,
        })
    }

    /// The prompt: task, languages, the source units, `<|sep|>`.
    pub fn prompt(&self, task: Task, src: Lang, tgt: Lang, src_units: &[u32]) -> Result<Vec<u32>> {
        let task_token = match task {
            Task::Asr => SpecialToken::Asr,
            Task::S2tt => SpecialToken::S2tt,
            Task::S2st => SpecialToken::S2st,
            Task::ChainOfModality => SpecialToken::Com,
        };
        let tgt = if task == Task::Asr { src } else { tgt };
        let mut out = Vec::with_capacity(src_units.len() + 5);
        out.extend([
            self.id(task_token),
            self.lang(src),
            self.lang(tgt),
            self.id(SpecialToken::Units),
        ]);
        for &u in src_units {
            out.push(self.unit_id(u)?);
        }
        out.push(self.id(SpecialToken::Sep));
        Ok(out)
    }

    /// The target a training example teaches: `text_ids` (already tokenized, text vocabulary
    /// only) and/or `units` as the task requires, then `<|end|>`.
    pub fn target(&self, task: Task, text_ids: &[u32], units: &[u32]) -> Result<Vec<u32>> {
        if let Some(&bad) = text_ids.iter().find(|&&t| t >= self.text_vocab) {
            return Err(ModelError::InvalidArgument(format!(
                "text token {bad} is outside the text vocabulary 0..{}",
                self.text_vocab
            )));
        }
        let mut out = Vec::with_capacity(text_ids.len() + units.len() + 2);
        match task {
            Task::Asr | Task::S2tt => out.extend_from_slice(text_ids),
            Task::S2st => {
                for &u in units {
                    out.push(self.unit_id(u)?);
                }
            }
            Task::ChainOfModality => {
                out.extend_from_slice(text_ids);
                out.push(self.id(SpecialToken::Units));
                for &u in units {
                    out.push(self.unit_id(u)?);
                }
            }
        }
        out.push(self.id(SpecialToken::End));
        Ok(out)
    }

    /// Tokens allowed while producing text: the text vocabulary, `<|units|>` (CoM: switch to
    /// units) and `<|end|>` (ASR, S2TT).
    pub fn text_phase(&self, task: Task) -> TokenMask {
        let next = match task {
            Task::ChainOfModality => self.id(SpecialToken::Units),
            _ => self.id(SpecialToken::End),
        };
        TokenMask::range(0..self.text_vocab).with(next..next + 1)
    }

    /// Tokens allowed while producing units: the unit tokens and `<|end|>`.
    pub fn unit_phase(&self) -> TokenMask {
        let end = self.id(SpecialToken::End);
        TokenMask::range(self.unit_base..self.unit_base + self.num_units).with(end..end + 1)
    }

    /// Splits generated ids (after the prompt) into text and units.
    pub fn parse_output(&self, ids: &[u32]) -> ParsedOutput {
        let mut out = ParsedOutput::default();
        let units = self.unit_base..self.unit_base + self.num_units;
        for &id in ids {
            if id == self.id(SpecialToken::End) {
                out.complete = true;
                break;
            } else if units.contains(&id) {
                out.units.push(id - self.unit_base);
            } else if id < self.text_vocab {
                out.text_ids.push(id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> PromptFormat {
        // Text vocabulary of 100, 10 units at 100..110, specials at 110..119.
        let ids: Vec<u32> = (100..119).collect();
        PromptFormat::from_ids(100, &ids, 10).unwrap()
    }

    #[test]
    fn sequences_follow_the_documented_layout() {
        let f = format();
        assert_eq!(f.vocab_size(), 119);
        let p = f
            .prompt(Task::ChainOfModality, Lang::En, Lang::Fr, &[3, 3, 9])
            .unwrap();
        // <|com|> <|en|> <|fr|> <|units|> u3 u3 u9 <|sep|>
        assert_eq!(p, vec![113, 114, 115, 116, 103, 103, 109, 117]);
        let t = f.target(Task::ChainOfModality, &[5, 6], &[0, 1]).unwrap();
        assert_eq!(t, vec![5, 6, 116, 100, 101, 118]);
        // ASR names the source language twice.
        let p = f.prompt(Task::Asr, Lang::Fr, Lang::En, &[0]).unwrap();
        assert_eq!(&p[..3], &[110, 115, 115]);
        assert_eq!(f.target(Task::S2st, &[], &[4]).unwrap(), vec![104, 118]);
        assert_eq!(f.target(Task::S2tt, &[7], &[4]).unwrap(), vec![7, 118]);
        assert!(f.target(Task::S2tt, &[100], &[]).is_err());
        assert!(f.prompt(Task::S2st, Lang::En, Lang::Fr, &[10]).is_err());
    }

    #[test]
    fn phases_and_parsing() {
        let f = format();
        let text = f.text_phase(Task::ChainOfModality);
        assert!(text.allows(99) && text.allows(116) && !text.allows(100) && !text.allows(118));
        let units = f.unit_phase();
        assert!(units.allows(100) && units.allows(109) && units.allows(118) && !units.allows(5));
        assert_eq!(units.span(119), 100..119);
        let parsed = f.parse_output(&[5, 6, 116, 100, 109, 118, 7]);
        assert_eq!(parsed.text_ids, vec![5, 6]);
        assert_eq!(parsed.units, vec![0, 9]);
        assert!(parsed.complete);
        assert!(!f.parse_output(&[5]).complete);
        assert_eq!(Lang::parse("fr").unwrap().code(), "fr");
        assert!(Lang::parse("de").is_err());
    }
}
