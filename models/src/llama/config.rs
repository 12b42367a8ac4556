//! Llama configuration: the Hugging Face `config.json` as written by transformers (v4 keys
//! `rope_theta` / `rope_scaling` and v5 `rope_parameters` both accepted), turned into a plain
//! internal [`LlamaConfig`]. Unknown keys are an error: a checkpoint we do not understand must not
//! load silently.

use crate::{ModelError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Keys that transformers writes for every model and that do not change the computation.
const IGNORED_KEYS: &[&str] = &[
    "_name_or_path",
    "_model_name_or_path",
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "initializer_range",
    "pretraining_tp",
    "use_cache",
    "attention_dropout",
    "unk_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "id2label",
    "label2id",
    "problem_type",
    "task_specific_params",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "auto_map",
    "generation_config",
    "use_return_dict",
    "quantization_config",
];

const LLAMA_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
];

/// Rotary position embedding frequencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1/3.2 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// What the model code needs, with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
}

/// Shapes of published checkpoints that benchmarks and device checks build with random weights
/// (`models/configs/<name>.json`, embedded so that a binary needs no source tree).
pub const PUBLISHED: [(&str, &str); 3] = [
    (
        "smollm2-135m",
        include_str!("../../configs/smollm2-135m.json"),
    ),
    (
        "llama-3.2-1b",
        include_str!("../../configs/llama-3.2-1b.json"),
    ),
    (
        "llama-3.2-3b",
        include_str!("../../configs/llama-3.2-3b.json"),
    ),
];

impl LlamaConfig {
    /// The shape of a published checkpoint by name (see [`PUBLISHED`]).
    pub fn published(name: &str) -> Result<Self> {
        let Some((_, text)) = PUBLISHED.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = PUBLISHED.iter().map(|(n, _)| *n).collect();
            return Err(ModelError::InvalidArgument(format!(
                "unknown model shape {name:?} (one of {})",
                names.join(", ")
            )));
        };
        let path = Path::new("models/configs").join(format!("{name}.json"));
        let value: Value = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&value, &path)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let value: Value = crate::checkpoint::read_json(path)?;
        Self::from_json(&value, path)
    }

    /// Parses a `config.json` value; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| ModelError::config(path, "<root>", "not a JSON object"))?;
        for key in obj.keys() {
            if !LLAMA_KEYS.contains(&key.as_str()) && !IGNORED_KEYS.contains(&key.as_str()) {
                return Err(ModelError::config(path, key, "unknown key"));
            }
        }
        let fields = Fields { obj, path };
        if let Some(mt) = obj.get("model_type") {
            if mt.as_str() != Some("llama") {
                return Err(ModelError::config(
                    path,
                    "model_type",
                    format!("{mt} is not supported (expected \"llama\")"),
                ));
            }
        }
        if let Some(act) = obj.get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(ModelError::config(
                    path,
                    "hidden_act",
                    format!("{act} is not supported (expected \"silu\")"),
                ));
            }
        }
        let hidden_size = fields.int("hidden_size")?;
        let num_attention_heads = fields.int("num_attention_heads")?;
        let num_key_value_heads = fields
            .opt_int("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        let head_dim = match fields.opt_int("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_attention_heads.max(1),
        };
        let (rope_theta, rope_scaling) = fields.rope()?;
        let cfg = LlamaConfig {
            vocab_size: fields.int("vocab_size")?,
            hidden_size,
            intermediate_size: fields.int("intermediate_size")?,
            num_hidden_layers: fields.int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: fields.opt_int("max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: fields.opt_float("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: fields.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: fields.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id: fields.opt_int("bos_token_id")?,
            eos_token_ids: fields.int_or_list("eos_token_id")?,
            pad_token_id: fields.opt_int("pad_token_id")?,
        };
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v <= 0 {
                return Err(ModelError::config(path, field, format!("{v} must be > 0")));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::config(
                path,
                "head_dim",
                format!("{} must be even for rotary embeddings", self.head_dim),
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ModelError::config(path, "rms_norm_eps", "must be > 0"));
        }
        Ok(())
    }

    /// Query heads that share one key/value head.
    pub fn gqa_groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Number of parameters (an untied LM head counted once more).
    pub fn num_parameters(&self) -> i64 {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.attention_bias {
                q + 2 * kv + h
            } else {
                0
            };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// `config.json` in the transformers v4 layout (read by v4 and v5 alike).
    pub fn to_json(&self) -> Value {
        let rope_scaling = match &self.rope_scaling {
            RopeScaling::Default => Value::Null,
            other => serde_json::to_value(other).expect("rope scaling serializes"),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
        })
    }
}

/// Typed access to the fields of one config object, with errors naming file and field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> ModelError {
        ModelError::config(self.path, field, msg)
    }

    fn opt_int(&self, field: &str) -> Result<Option<i64>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("{v} is not an integer"))),
        }
    }

    fn int(&self, field: &str) -> Result<i64> {
        self.opt_int(field)?
            .ok_or_else(|| self.err(field, "missing required key"))
    }

    fn opt_float(&self, field: &str) -> Result<Option<f64>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("{v} is not a number"))),
        }
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("{v} is not a boolean"))),
        }
    }

    fn int_or_list(&self, field: &str) -> Result<Vec<i64>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| self.err(field, format!("{v} is not an integer")))
                })
                .collect(),
            Some(v) => v
                .as_i64()
                .map(|x| vec![x])
                .ok_or_else(|| self.err(field, format!("{v} is not an integer or list"))),
        }
    }

    /// `rope_theta` + `rope_scaling` (transformers v4) or `rope_parameters` (v5).
    fn rope(&self) -> Result<(f64, RopeScaling)> {
        let (params, field) = match (
            self.obj.get("rope_parameters"),
            self.obj.get("rope_scaling"),
        ) {
            (Some(p @ Value::Object(_)), _) => (Some(p), "rope_parameters"),
            (_, Some(s @ Value::Object(_))) => (Some(s), "rope_scaling"),
            _ => (None, "rope_scaling"),
        };
        let mut theta = self.opt_float("rope_theta")?;
        let scaling = match params {
            None => RopeScaling::Default,
            Some(Value::Object(p)) => {
                if let Some(t) = p.get("rope_theta") {
                    theta =
                        Some(t.as_f64().ok_or_else(|| {
                            self.err(&format!("{field}.rope_theta"), "not a number")
                        })?);
                }
                // Older checkpoints spell the kind `type`.
                let kind = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let num = |k: &str| -> Result<f64> {
                    p.get(k)
                        .and_then(|v| v.as_f64())
                        .ok_or_else(|| self.err(&format!("{field}.{k}"), "missing or not a number"))
                };
                match kind {
                    "default" => RopeScaling::Default,
                    "linear" => RopeScaling::Linear {
                        factor: num("factor")?,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_position_embeddings: num("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(self.err(
                            &format!("{field}.rope_type"),
                            format!(
                                "\"{other}\" is not supported (supported: default, linear, llama3)"
                            ),
                        ))
                    }
                }
            }
            Some(_) => unreachable!("matched objects only"),
        };
        Ok((theta.unwrap_or(10_000.0), scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 128256, "hidden_size": 3072,
            "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
            "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": true,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": 128001, "max_position_embeddings": 131072
        })
    }

    #[test]
    fn llama_3_2_3b_parses_and_counts() {
        let cfg = LlamaConfig::from_json(&base(), Path::new("config.json")).unwrap();
        assert_eq!(cfg.gqa_groups(), 3);
        assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        // Llama-3.2-3B has 3.21 B parameters with its tied embedding.
        assert_eq!(cfg.num_parameters(), 3_212_749_824);
        // The serialized form parses back to the same config.
        let again = LlamaConfig::from_json(&cfg.to_json(), Path::new("x")).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn published_shapes_parse() {
        let s = LlamaConfig::published("smollm2-135m").unwrap();
        assert_eq!(
            (s.hidden_size, s.num_hidden_layers, s.head_dim),
            (576, 30, 64)
        );
        let l = LlamaConfig::published("llama-3.2-1b").unwrap();
        assert!((1.2e9..1.3e9).contains(&(l.num_parameters() as f64)));
        let b = LlamaConfig::published("llama-3.2-3b").unwrap();
        assert_eq!((b.hidden_size, b.num_hidden_layers), (3072, 28));
        let e = LlamaConfig::published("gpt-2").unwrap_err().to_string();
        assert!(e.contains("gpt-2") && e.contains("smollm2-135m"), "{e}");
    }

    #[test]
    fn shipped_llama_3_2_3b_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/llama-3.2-3b.json");
        let cfg = LlamaConfig::from_file(&path).unwrap();
        assert_eq!(cfg, LlamaConfig::from_json(&base(), &path).unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = base();
        v["rope_scaling"]["rope_type"] = json!("yarn");
        let e = LlamaConfig::from_json(&v, Path::new("m/config.json")).unwrap_err();
        assert!(e.to_string().contains("rope_scaling.rope_type"), "{e}");
        assert!(e.to_string().contains("m/config.json"), "{e}");

        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = LlamaConfig::from_json(&v, Path::new("c.json")).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");

        let mut v = base();
        v["bogus_key"] = json!(1);
        let e = LlamaConfig::from_json(&v, Path::new("c.json")).unwrap_err();
        assert!(e.to_string().contains("bogus_key"), "{e}");

        let mut v = base();
        v["num_key_value_heads"] = json!(5);
        assert!(LlamaConfig::from_json(&v, Path::new("c.json")).is_err());
    }

    #[test]
    fn v5_rope_parameters() {
        let mut v = base();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_scaling");
        o.remove("rope_theta");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_theta": 100000.0, "rope_type": "default"}),
        );
        let cfg = LlamaConfig::from_json(&v, Path::new("c.json")).unwrap();
        assert_eq!(cfg.rope_theta, 100000.0);
        assert_eq!(cfg.rope_scaling, RopeScaling::Default);
    }
}
