//! `tolk-model.json`: the manifest of a translator folder (the README section "The translator folder").
//!
//! Parsing is strict (unknown keys are errors, serde's message names the key) and
//! [`ModelManifest::validate`] checks the values, each failure a [`ModelError::Config`] naming
//! the field.

use crate::prompt::Lang;
use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path};

/// The `format` value this code reads.
pub const MODEL_FORMAT: &str = "tolk-translator/1";

/// File name of the manifest inside a translator folder.
pub const MANIFEST_FILE: &str = "tolk-model.json";

/// How the model was fine-tuned (PROST-LLM SFT strategies, method.md section 1): it decides
/// which tasks the model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// S2ST only.
    Vanilla,
    /// ASR, S2TT and S2ST.
    TriTask,
    /// Chain of modality (text then units).
    ChainOfModality,
}

/// A translation direction, spelled `en-fr` / `fr-en`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "en-fr")]
    EnFr,
    #[serde(rename = "fr-en")]
    FrEn,
}

impl Direction {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "en-fr" => Ok(Self::EnFr),
            "fr-en" => Ok(Self::FrEn),
            _ => Err(ModelError::InvalidArgument(format!(
                "unknown direction `{s}` (expected en-fr or fr-en)"
            ))),
        }
    }

    pub fn src(self) -> Lang {
        match self {
            Self::EnFr => Lang::En,
            Self::FrEn => Lang::Fr,
        }
    }

    pub fn tgt(self) -> Lang {
        match self {
            Self::EnFr => Lang::Fr,
            Self::FrEn => Lang::En,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnFr => "en-fr",
            Self::FrEn => "fr-en",
        }
    }
}

/// `"en-fr".parse::<Direction>()`, and a clap `value_parser` for CLIs.
impl std::str::FromStr for Direction {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the speech units come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "extractor", rename_all = "lowercase", deny_unknown_fields)]
pub enum UnitsSpec {
    /// Kaldi MFCC at 50 Hz ([`crate::units::mfcc_50hz_config`]) + k-means.
    Mfcc { kmeans: String },
    /// HuBERT layer `layer` of the Hugging Face folder `hubert` + k-means.
    Hubert {
        hubert: String,
        layer: usize,
        kmeans: String,
    },
    /// Whisper encoder `hidden_states[layer]` of the Hugging Face `WhisperModel`-style folder
    /// `whisper` (from `models/convert/ctranslate2_whisper.py`; `layer` = encoder_layers means
    /// after the final layer norm) + k-means.
    Whisper {
        whisper: String,
        layer: usize,
        kmeans: String,
    },
}

impl UnitsSpec {
    pub fn kmeans(&self) -> &str {
        match self {
            Self::Mfcc { kmeans } | Self::Hubert { kmeans, .. } | Self::Whisper { kmeans, .. } => {
                kmeans
            }
        }
    }

    pub fn extractor_name(&self) -> &'static str {
        match self {
            Self::Mfcc { .. } => "mfcc",
            Self::Hubert { .. } => "hubert",
            Self::Whisper { .. } => "whisper",
        }
    }
}

/// The content of `tolk-model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    pub strategy: Strategy,
    pub directions: Vec<Direction>,
    /// K: unit ids are `0..K` (k-means clusters, unit tokens, vocoder embeddings).
    pub num_units: u32,
    /// Source units are deduplicated before the prompt.
    pub dedup_source_units: bool,
    /// The model emits deduplicated target units (the vocoders then predict durations).
    pub dedup_target_units: bool,
    pub units: UnitsSpec,
    /// The Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json).
    pub llm: String,
    /// Target language code -> CodeHiFiGan folder.
    pub vocoders: BTreeMap<String, String>,
    /// Most text tokens of a text phase.
    pub max_text_tokens: usize,
    /// Most units of a unit phase.
    pub max_target_units: usize,
}

impl ModelManifest {
    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let m: Self = crate::checkpoint::read_json(path)?;
        m.validate(path)?;
        Ok(m)
    }

    /// Parses and validates the bytes of a `tolk-model.json`; `path` names it in the errors.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        m.validate(path)?;
        Ok(m)
    }

    /// Checks the values; `path` is only used in the errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |field: &str, msg: String| Err(ModelError::config(path, field, msg));
        if self.format != MODEL_FORMAT {
            return err(
                "format",
                format!(
                    "`{}` is not supported (expected `{MODEL_FORMAT}`)",
                    self.format
                ),
            );
        }
        if self.directions.is_empty() {
            return err("directions", "at least one direction is required".into());
        }
        for (i, d) in self.directions.iter().enumerate() {
            if self.directions[..i].contains(d) {
                return err("directions", format!("`{d}` is listed twice"));
            }
        }
        if self.num_units == 0 {
            return err("num_units", "must be at least 1".into());
        }
        if self.max_text_tokens == 0 {
            return err("max_text_tokens", "must be at least 1".into());
        }
        if self.max_target_units == 0 {
            return err("max_target_units", "must be at least 1".into());
        }
        check_rel("llm", &self.llm, path)?;
        match &self.units {
            UnitsSpec::Mfcc { kmeans } => check_rel("units.kmeans", kmeans, path)?,
            UnitsSpec::Hubert {
                hubert,
                layer,
                kmeans,
            } => {
                check_rel("units.hubert", hubert, path)?;
                check_rel("units.kmeans", kmeans, path)?;
                if *layer == 0 {
                    return err("units.layer", "HuBERT layers count from 1".into());
                }
            }
            // Layer 0 (the conv stem + positions) is allowed; the upper bound is the encoder's
            // `encoder_layers`, checked when the folder is loaded.
            UnitsSpec::Whisper {
                whisper, kmeans, ..
            } => {
                check_rel("units.whisper", whisper, path)?;
                check_rel("units.kmeans", kmeans, path)?;
            }
        }
        for (lang, dir) in &self.vocoders {
            Lang::parse(lang).map_err(|e| ModelError::config(path, "vocoders", e.to_string()))?;
            check_rel(&format!("vocoders.{lang}"), dir, path)?;
        }
        for d in &self.directions {
            let tgt = d.tgt().code();
            if !self.vocoders.contains_key(tgt) {
                return err(
                    "vocoders",
                    format!("direction {d} needs a vocoder for `{tgt}`, none is listed"),
                );
            }
        }
        Ok(())
    }

    /// Whether the folder's model can translate `direction`.
    pub fn supports_direction(&self, direction: Direction) -> bool {
        self.directions.contains(&direction)
    }
}

/// A path inside the folder: relative, without `..`.
fn check_rel(field: &str, value: &str, path: &Path) -> Result<()> {
    let p = Path::new(value);
    let ok = !value.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(ModelError::config(
            path,
            field,
            format!("`{value}` must be a relative path inside the model folder (no `..`)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "format": "tolk-translator/1", "strategy": "chain-of-modality",
      "directions": ["en-fr", "fr-en"], "num_units": 100,
      "dedup_source_units": true, "dedup_target_units": true,
      "units": {"extractor": "mfcc", "kmeans": "units/kmeans.safetensors"},
      "llm": "llm", "vocoders": {"en": "vocoder-en", "fr": "vocoder-fr"},
      "max_text_tokens": 64, "max_target_units": 400
    }"#;

    fn parse(text: &str) -> Result<ModelManifest> {
        let p = Path::new("m.json");
        let m: ModelManifest = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: p.into(),
            source: e,
        })?;
        m.validate(p)?;
        Ok(m)
    }

    #[test]
    fn parses_the_documented_example() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.strategy, Strategy::ChainOfModality);
        assert_eq!(m.directions, vec![Direction::EnFr, Direction::FrEn]);
        assert_eq!(m.units.kmeans(), "units/kmeans.safetensors");
        let h = GOOD.replace(
            r#"{"extractor": "mfcc", "kmeans": "units/kmeans.safetensors"}"#,
            r#"{"extractor": "hubert", "hubert": "units/hubert", "layer": 11, "kmeans": "k.npy"}"#,
        );
        assert!(matches!(
            parse(&h).unwrap().units,
            UnitsSpec::Hubert { layer: 11, .. }
        ));
        let w = GOOD.replace(
            r#"{"extractor": "mfcc", "kmeans": "units/kmeans.safetensors"}"#,
            r#"{"extractor": "whisper", "whisper": "units/whisper", "layer": 6, "kmeans": "k.npy"}"#,
        );
        let u = parse(&w).unwrap().units;
        assert!(matches!(u, UnitsSpec::Whisper { layer: 6, .. }));
        assert_eq!(u.extractor_name(), "whisper");
        let bad = w.replace("units/whisper", "../whisper");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("units.whisper"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                GOOD.replace("\"llm\": \"llm\"", "\"llm\": \"llm\", \"extra\": 1"),
                "extra",
            ),
            (GOOD.replace("chain-of-modality", "cot"), "cot"),
            (
                GOOD.replace("tolk-translator/1", "tolk-translator/2"),
                "`format`",
            ),
            (
                GOOD.replace("\"num_units\": 100", "\"num_units\": 0"),
                "`num_units`",
            ),
            (GOOD.replace("\"fr-en\"", "\"en-fr\""), "`directions`"),
            (GOOD.replace("\"en\": \"vocoder-en\", ", ""), "`vocoders`"),
            (
                GOOD.replace("\"llm\": \"llm\"", "\"llm\": \"../x\""),
                "`llm`",
            ),
            (
                GOOD.replace("\"kmeans\": \"units", "\"layer\": 3, \"kmeans\": \"units"),
                "layer",
            ),
            (
                GOOD.replace("\"max_target_units\": 400", "\"max_target_units\": 0"),
                "`max_target_units`",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
