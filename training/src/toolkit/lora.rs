//! LoRA adapters on a Llama decoder (Hu et al., arXiv 2106.09685; trained by preference
//! optimization as in PROST-LLM, arXiv 2601.16618; merged by export), in huggingface/peft's
//! layout and file format.
//!
//! - Targets: any of q, k, v, o, gate, up, down (never the LM head or the embeddings).
//! - Initialisation as peft `tuners/lora/layer.py` (`reset_lora_parameters`, `init_lora_weights =
//!   True`): A `[r, in]` by `kaiming_uniform_(a = sqrt(5))`, which is U(-1/sqrt(in), 1/sqrt(in)),
//!   B `[out, r]` zeros, so a fresh adapter leaves the model unchanged. Scaling `alpha / r`
//!   (`alpha / sqrt(r)` with rsLoRA).
//! - The tensors live in their own [`nn::VarStore`] whose variable names are peft's keys
//!   (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`); the base model's weights
//!   do not require gradients. The forward pass is [`Llama::forward_hidden_lora`]; without the
//!   adapters it is the DPO reference model.
//! - Files: `adapter_model.safetensors` + `adapter_config.json` as peft's `save_pretrained`
//!   writes them; [`Lora::load_peft`] reads them back and rejects, with the reason, an adapter
//!   whose base model or options do not match.
//! - [`Lora::merged_tensors`] / [`Lora::merge_into`]: `W + scaling B A`, computed in f32, for
//!   export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};
use tolk_models::checkpoint::{read_safetensors, save_safetensors};
use tolk_models::llama::{Llama, LlamaConfig, LoraAdapters, LoraPair, LoraTarget};

/// File names of a peft adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Errors of creating, loading and saving adapters.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("LoRA config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    AdapterConfig {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: the adapter does not match the base model:{}", list(.problems))]
    Mismatch {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Model(#[from] tolk_models::ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn list(problems: &[String]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

type Result<T> = std::result::Result<T, LoraError>;

/// Adapter hyper-parameters (the recipe's `[lora]` section; peft's `LoraConfig` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank.
    #[serde(default = "default_rank")]
    pub r: i64,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout probability on the adapter input, training only.
    #[serde(default)]
    pub dropout: f64,
    /// Module names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`).
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    /// Scale by `alpha / sqrt(r)` (rsLoRA) instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_rank() -> i64 {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_targets() -> Vec<String> {
    LoraTarget::ALL
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

impl Default for LoraConfig {
    /// peft's defaults (r 8, alpha 8, dropout 0) on all seven linear layers of a decoder layer.
    fn default() -> Self {
        Self {
            r: default_rank(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// The targets, checked: known names, no duplicates, at least one.
    pub fn targets(&self) -> Result<Vec<LoraTarget>> {
        let mut out = BTreeSet::new();
        for name in &self.target_modules {
            let t = LoraTarget::from_name(name).ok_or_else(|| {
                LoraError::Config(format!(
                    "target module `{name}` is not supported (LoRA goes on q_proj, k_proj, \
                     v_proj, o_proj, gate_proj, up_proj, down_proj; never on the LM head or \
                     embeddings)"
                ))
            })?;
            if !out.insert(t) {
                return Err(LoraError::Config(format!(
                    "target module `{name}` is listed twice"
                )));
            }
        }
        if out.is_empty() {
            return Err(LoraError::Config("no target module".into()));
        }
        Ok(out.into_iter().collect())
    }

    pub fn validate(&self) -> Result<()> {
        if self.r <= 0 {
            return Err(LoraError::Config(format!("r = {} must be > 0", self.r)));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::Config(format!(
                "alpha = {} must be > 0",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Config(format!(
                "dropout = {} must be in [0, 1)",
                self.dropout
            )));
        }
        self.targets().map(|_| ())
    }

    /// The factor on `B A`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// peft's key of an adapter matrix (`which` is `lora_A` or `lora_B`).
pub fn peft_key(layer: i64, target: LoraTarget, which: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{which}.weight",
        target.module_path()
    )
}

/// Number of adapted modules and trainable parameters of `config` on a model `model`, from the
/// shapes alone: per module `r (in + out)`.
pub fn count_parameters(model: &LlamaConfig, config: &LoraConfig) -> Result<(i64, i64)> {
    config.validate()?;
    let targets = config.targets()?;
    let per_layer: i64 = targets
        .iter()
        .map(|t| {
            let (out, inp) = t.shape(model);
            config.r * (inp + out)
        })
        .sum();
    Ok((
        model.num_hidden_layers * targets.len() as i64,
        model.num_hidden_layers * per_layer,
    ))
}

/// Trainable adapters for one base model.
pub struct Lora {
    config: LoraConfig,
    base: LlamaConfig,
    vs: nn::VarStore,
    adapters: LoraAdapters,
}

impl std::fmt::Debug for Lora {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lora")
            .field("config", &self.config)
            .field("layers", &self.base.num_hidden_layers)
            .finish()
    }
}

/// A VarStore path named after the peft module path.
fn module_path<'a>(
    root: &nn::Path<'a>,
    layer: i64,
    target: LoraTarget,
    which: &str,
) -> nn::Path<'a> {
    let mut p = root / "base_model" / "model" / "model" / "layers" / layer;
    for part in target.module_path().split('.') {
        p = &p / part;
    }
    &p / which
}

impl Lora {
    /// Fresh adapters for a model with config `base` (A as peft, B zero), seeded.
    pub fn new(base: &LlamaConfig, config: LoraConfig, device: Device, seed: i64) -> Result<Self> {
        config.validate()?;
        tch::manual_seed(seed);
        Self::build(base, config, device, |_, _, vs_a, vs_b, (out, inp), r| {
            // kaiming_uniform_(a = sqrt(5)): gain sqrt(2 / 6), bound gain * sqrt(3 / in).
            let bound = 1.0 / (inp as f64).sqrt();
            let a = vs_a.f_var(
                "weight",
                &[r, inp],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?;
            let b = vs_b.f_var("weight", &[out, r], nn::Init::Const(0.0))?;
            Ok((a, b))
        })
    }

    fn build(
        base: &LlamaConfig,
        config: LoraConfig,
        device: Device,
        mut make: impl FnMut(
            i64,
            LoraTarget,
            &nn::Path,
            &nn::Path,
            (i64, i64),
            i64,
        ) -> Result<(Tensor, Tensor)>,
    ) -> Result<Self> {
        let targets = config.targets()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut layers = Vec::with_capacity(base.num_hidden_layers as usize);
        for l in 0..base.num_hidden_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &t in &targets {
                let pa = module_path(&root, l, t, "lora_A");
                let pb = module_path(&root, l, t, "lora_B");
                let (a, b) = make(l, t, &pa, &pb, t.shape(base), config.r)?;
                slots[t as usize] = Some(LoraPair { a, b });
            }
            layers.push(slots);
        }
        let adapters = LoraAdapters {
            scaling: config.scaling(),
            dropout: config.dropout,
            training: false,
            layers,
        };
        adapters.check(base)?;
        Ok(Self {
            config,
            base: base.clone(),
            vs,
            adapters,
        })
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// What [`Llama::forward_hidden_lora`] takes.
    pub fn adapters(&self) -> &LoraAdapters {
        &self.adapters
    }

    /// Dropout on (training) or off (evaluation, scoring).
    pub fn set_training(&mut self, training: bool) {
        self.adapters.training = training;
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The adapter tensors with their peft names, sorted by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Total number of adapter parameters.
    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` (peft's `save_pretrained`
    /// layout) into `dir`. Each file is written to a temporary name and renamed.
    pub fn save_peft(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| LoraError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let tensors: Vec<(String, Tensor)> = self
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_kind(Kind::Float)))
            .collect();
        save_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
        let alpha = if self.config.alpha.fract() == 0.0 {
            json!(self.config.alpha as i64)
        } else {
            json!(self.config.alpha)
        };
        let cfg = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": self.config.r,
            "lora_alpha": alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": self.config.targets()?.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "bias": "none",
            "use_rslora": self.config.use_rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        });
        let path = dir.join(ADAPTER_CONFIG);
        let text = serde_json::to_string_pretty(&cfg).expect("JSON value serializes");
        tolk_config::fsutil::atomic_write(&path, text.as_bytes())
            .map_err(|source| LoraError::Io { path, source })
    }

    /// Reads a peft LoRA adapter folder for a base model with config `base`. Options that change
    /// the computation and that we do not implement (DoRA, per-layer ranks, biases, extra trained
    /// modules, ...) are errors, and so is every tensor that does not fit the base model (wrong
    /// layer count, shapes, target modules), all listed in one error.
    pub fn load_peft(dir: &Path, base: &LlamaConfig, device: Device) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| LoraError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| LoraError::Json {
            path: cfg_path.clone(),
            source,
        })?;
        let config = parse_peft_config(&value, &cfg_path)?;
        let targets = config.targets()?;

        let weights = dir.join(ADAPTER_WEIGHTS);
        if !weights.exists() {
            return Err(LoraError::Io {
                path: weights,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            });
        }
        let (loaded, _) = read_safetensors(&weights, Kind::Float, device, |_| true)?;
        let mut tensors: BTreeMap<String, Tensor> = loaded.into_iter().collect();
        let mut problems = Vec::new();

        // Which layers and modules the file covers, to explain a mismatch in those terms.
        let mut file_layers = BTreeSet::new();
        let mut file_targets = BTreeSet::new();
        for name in tensors.keys() {
            match parse_peft_key(name) {
                Some((l, t, _)) => {
                    file_layers.insert(l);
                    file_targets.insert(t);
                }
                None => problems.push(format!(
                    "tensor `{name}` is not a LoRA matrix of q/k/v/o/gate/up/down_proj in a \
                     decoder layer"
                )),
            }
        }
        let n = base.num_hidden_layers;
        if let Some(&max) = file_layers.iter().next_back() {
            if max >= n {
                problems.push(format!(
                    "the adapter has tensors for layers up to {max}, the base model has {n} \
                     layers (0..{})",
                    n - 1
                ));
            } else if max + 1 < n {
                problems.push(format!(
                    "the adapter covers layers 0..={max} only, the base model has {n} layers"
                ));
            }
        }
        let wanted: BTreeSet<LoraTarget> = targets.iter().copied().collect();
        if file_targets != wanted && !file_targets.is_empty() {
            let names = |s: &BTreeSet<LoraTarget>| {
                s.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
            };
            problems.push(format!(
                "adapter_config.json targets [{}] but the weights cover [{}]",
                names(&wanted),
                names(&file_targets)
            ));
        }
        for l in 0..n {
            for &t in &targets {
                let (out, inp) = t.shape(base);
                for (which, expected) in [("lora_A", [config.r, inp]), ("lora_B", [out, config.r])]
                {
                    let key = peft_key(l, t, which);
                    match tensors.get(&key) {
                        None if file_layers.contains(&l) => {
                            problems.push(format!("missing tensor `{key}`"))
                        }
                        None => {}
                        Some(x) if x.size() != expected => problems.push(format!(
                            "tensor `{key}` has shape {:?}, the base model's {} [{out}, {inp}] \
                             at r = {} needs {expected:?}",
                            x.size(),
                            t.module_path(),
                            config.r
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(LoraError::Mismatch {
                path: dir.to_path_buf(),
                problems,
            });
        }
        Self::build(base, config, device, |l, t, pa, pb, _, _| {
            let a = tensors.remove(&peft_key(l, t, "lora_A")).expect("checked");
            let b = tensors.remove(&peft_key(l, t, "lora_B")).expect("checked");
            Ok((pa.f_var_copy("weight", &a)?, pb.f_var_copy("weight", &b)?))
        })
    }

    /// The base model's tensors (checkpoint layout, f32 copies) with `scaling B A` added to every
    /// adapted projection. Build an exportable model with [`Llama::from_tensors`].
    pub fn merged_tensors(&self, model: &Llama) -> Result<Vec<(String, Tensor)>> {
        self.adapters.check(model.config())?;
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        for (name, w) in model.named_tensors() {
            let mut w = w.f_to_kind(Kind::Float)?.f_detach()?.copy();
            if let Some(delta) = self.delta_for(&name)? {
                w = w.f_add(&delta)?;
            }
            out.push((name, w));
        }
        Ok(out)
    }

    /// Adds `scaling B A` (computed in f32, then cast to the model's dtype) to the model's own
    /// weights, in place. Afterwards run the model without adapters.
    pub fn merge_into(&self, model: &Llama) -> Result<()> {
        self.adapters.check(model.config())?;
        let _guard = tch::no_grad_guard();
        for (name, mut w) in model.named_tensors() {
            if let Some(delta) = self.delta_for(&name)? {
                let merged = w.f_to_kind(Kind::Float)?.f_add(&delta)?;
                w.f_copy_(&merged.f_to_kind(w.kind())?)?;
            }
        }
        Ok(())
    }

    /// `scaling B A` in f32 for checkpoint tensor `name`, if it is an adapted weight.
    fn delta_for(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            return Ok(None);
        };
        let Some((layer, module)) = rest.split_once('.') else {
            return Ok(None);
        };
        let Some(module) = module.strip_suffix(".weight") else {
            return Ok(None);
        };
        let (Ok(layer), Some(t)) = (
            layer.parse::<usize>(),
            LoraTarget::ALL
                .into_iter()
                .find(|t| t.module_path() == module),
        ) else {
            return Ok(None);
        };
        let Some(p) = self.adapters.get(layer, t) else {
            return Ok(None);
        };
        let ba =
            p.b.f_detach()?
                .f_to_kind(Kind::Float)?
                .f_mm(&p.a.f_detach()?.f_to_kind(Kind::Float)?)?;
        Ok(Some(ba.f_mul_scalar(self.adapters.scaling)?))
    }

    /// The base model this adapter set was made for.
    pub fn base_config(&self) -> &LlamaConfig {
        &self.base
    }
}

/// `(layer, target, "lora_A" | "lora_B")` of a peft key, or `None`.
fn parse_peft_key(name: &str) -> Option<(i64, LoraTarget, &'static str)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: i64 = layer.parse().ok()?;
    let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        (m, "lora_A")
    } else {
        (rest.strip_suffix(".lora_B.weight")?, "lora_B")
    };
    let t = LoraTarget::ALL
        .into_iter()
        .find(|t| t.module_path() == module)?;
    Some((layer, t, which))
}

/// The [`LoraConfig`] of a peft `adapter_config.json`, rejecting what we do not implement.
fn parse_peft_config(value: &Value, path: &Path) -> Result<LoraConfig> {
    let err = |field: &str, message: String| LoraError::AdapterConfig {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let empty = Map::new();
    let obj = value
        .as_object()
        .ok_or_else(|| err("<root>", "not a JSON object".into()))?;
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    match get("peft_type").as_str() {
        Some("LORA") => {}
        _ => {
            return Err(err(
                "peft_type",
                format!("{} (expected \"LORA\")", get("peft_type")),
            ))
        }
    }
    match get("task_type") {
        Value::Null => {}
        Value::String(s) if s == "CAUSAL_LM" => {}
        v => return Err(err("task_type", format!("{v} (expected \"CAUSAL_LM\")"))),
    }
    match get("bias") {
        Value::Null => {}
        Value::String(s) if s == "none" => {}
        v => return Err(err("bias", format!("{v}: only \"none\" is supported"))),
    }
    // Options that change the computation: only their neutral value is accepted.
    for flag in ["use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"] {
        if let Some(v) = obj.get(flag) {
            if v != &Value::Bool(false) && !v.is_null() {
                return Err(err(flag, format!("{v} is not supported")));
            }
        }
    }
    for field in [
        "modules_to_save",
        "layers_to_transform",
        "layers_pattern",
        "trainable_token_indices",
        "target_parameters",
        "alora_invocation_tokens",
        "layer_replication",
        "use_bdlora",
        "arrow_config",
        "kasa_config",
        "monteclora_config",
        "velora_config",
    ] {
        let v = get(field);
        let neutral = match v {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Array(a) => a.is_empty(),
            Value::String(s) => s.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !neutral {
            return Err(err(field, format!("{v} is not supported")));
        }
    }
    for field in ["rank_pattern", "alpha_pattern"] {
        let o = get(field).as_object().unwrap_or(&empty);
        if !o.is_empty() {
            return Err(err(
                field,
                format!(
                    "per-module ranks/alphas are not supported, got {}",
                    get(field)
                ),
            ));
        }
    }
    let r = get("r")
        .as_i64()
        .ok_or_else(|| err("r", format!("{} is not an integer", get("r"))))?;
    let alpha = get("lora_alpha").as_f64().ok_or_else(|| {
        err(
            "lora_alpha",
            format!("{} is not a number", get("lora_alpha")),
        )
    })?;
    let dropout = match get("lora_dropout") {
        Value::Null => 0.0,
        v => v
            .as_f64()
            .ok_or_else(|| err("lora_dropout", format!("{v} is not a number")))?,
    };
    let target_modules: Vec<String> = match get("target_modules") {
        Value::Array(a) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err("target_modules", format!("{v} is not a string")))
            })
            .collect::<Result<_>>()?,
        Value::String(s) if LoraTarget::from_name(s).is_some() => vec![s.clone()],
        v => {
            return Err(err(
                "target_modules",
                format!(
                    "{v}: expected a list of module names (regular expressions and \
                         \"all-linear\" are not supported)"
                ),
            ))
        }
    };
    let use_rslora = get("use_rslora").as_bool().unwrap_or(false);
    let mut target_modules = target_modules;
    target_modules.sort_by_key(|n| LoraTarget::from_name(n));
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        target_modules,
        use_rslora,
    };
    config
        .validate()
        .map_err(|e| err("target_modules/r/lora_alpha/lora_dropout", e.to_string()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tolk_models::llama::LoadOptions;

    fn config(
        layers: i64,
        hidden: i64,
        inter: i64,
        heads: i64,
        kv: i64,
        head_dim: i64,
    ) -> LlamaConfig {
        let v = json!({
            "model_type": "llama", "vocab_size": 64, "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": true,
        });
        LlamaConfig::from_json(&v, Path::new("test")).unwrap()
    }

    fn tiny() -> LlamaConfig {
        config(2, 32, 48, 4, 2, 8)
    }

    /// Random values in B so that the adapters change the output.
    fn randomize_b(lora: &Lora, seed: i64) {
        tch::manual_seed(seed);
        let _g = tch::no_grad_guard();
        for (name, mut t) in lora.named_parameters() {
            if name.contains("lora_B") {
                t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    }

    fn tokens() -> Tensor {
        Tensor::from_slice(&[3i64, 9, 27, 1, 40, 5, 63, 0, 12, 7, 7, 30]).view([2, 6])
    }

    #[test]
    fn llama_3_2_3b_at_rank_8_has_12_156_928_parameters() {
        // hidden 3072, intermediate 8192, 28 layers, 24 heads, 8 KV heads, head_dim 128.
        let cfg = config(28, 3072, 8192, 24, 8, 128);
        let (modules, params) = count_parameters(&cfg, &LoraConfig::default()).unwrap();
        assert_eq!(modules, 196);
        // Per layer: r (in + out) for q 3072+3072, k and v 3072+1024, o 3072+3072,
        // gate and up 3072+8192, down 8192+3072.
        let per_layer = 8 * ((6144) + 2 * (4096) + 6144 + 3 * 11264);
        assert_eq!(per_layer * 28, 12_156_928);
        assert_eq!(params, 12_156_928);
        // The allocated adapters agree with the count (on a smaller model).
        let small = tiny();
        let lora = Lora::new(&small, LoraConfig::default(), Device::Cpu, 0).unwrap();
        assert_eq!(
            lora.num_parameters(),
            count_parameters(&small, lora.config()).unwrap().1
        );
    }

    #[test]
    fn init_is_peft_default_and_leaves_the_model_unchanged() {
        let cfg = tiny();
        let lora = Lora::new(&cfg, LoraConfig::default(), Device::Cpu, 1).unwrap();
        for (name, t) in lora.named_parameters() {
            if name.contains("lora_B") {
                assert_eq!(
                    t.abs().max().double_value(&[]),
                    0.0,
                    "{name} must start at zero"
                );
            } else {
                // kaiming_uniform_(a = sqrt(5)) on [r, in]: bound = sqrt(6 / ((1 + 5) in)).
                let inp = t.size()[1] as f64;
                let bound = (6.0 / (6.0 * inp)).sqrt();
                let m = t.abs().max().double_value(&[]);
                assert!(
                    m <= bound && m > 0.5 * bound,
                    "{name}: max |A| {m}, bound {bound}"
                );
            }
        }
        let model = Llama::random(cfg, LoadOptions::default(), 3).unwrap();
        let base = model.forward_hidden(&tokens(), None, None).unwrap();
        let with = model
            .forward_hidden_lora(&tokens(), None, None, Some(lora.adapters()))
            .unwrap();
        assert_eq!((base - with).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn adapters_change_output_and_merge_reproduces_them() {
        let cfg = tiny();
        let lora = Lora::new(
            &cfg,
            LoraConfig {
                alpha: 16.0,
                ..Default::default()
            },
            Device::Cpu,
            1,
        )
        .unwrap();
        randomize_b(&lora, 2);
        let model = Llama::random(cfg.clone(), LoadOptions::default(), 3).unwrap();
        let base = model.forward(&tokens(), None).unwrap();
        let h = model
            .forward_hidden_lora(&tokens(), None, None, Some(lora.adapters()))
            .unwrap();
        let adapted = model.logits(&h).unwrap();
        let changed = (&adapted - &base).abs().max().double_value(&[]);
        assert!(changed > 1e-3, "adapters had no effect ({changed})");
        let merged: HashMap<String, Tensor> =
            lora.merged_tensors(&model).unwrap().into_iter().collect();
        let m = Llama::from_tensors(cfg, merged, LoadOptions::default()).unwrap();
        let diff = (m.forward(&tokens(), None).unwrap() - &adapted)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "merged vs adapter logits differ by {diff}");
        // In place: the model itself becomes the merged one.
        lora.merge_into(&model).unwrap();
        let diff = (model.forward(&tokens(), None).unwrap() - &adapted)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "in-place merge differs by {diff}");
    }

    #[test]
    fn only_adapters_receive_gradients() {
        let cfg = tiny();
        let lora = Lora::new(&cfg, LoraConfig::default(), Device::Cpu, 1).unwrap();
        randomize_b(&lora, 4);
        let model = Llama::random(cfg, LoadOptions::default(), 3).unwrap();
        let h = model
            .forward_hidden_lora(&tokens(), None, None, Some(lora.adapters()))
            .unwrap();
        let loss = model
            .logits(&h)
            .unwrap()
            .log_softmax(-1, Kind::Float)
            .mean(Kind::Float);
        loss.backward();
        for (name, t) in lora.named_parameters() {
            let g = t.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert!(
                g.abs().max().double_value(&[]) > 0.0,
                "{name} has a zero gradient"
            );
        }
        for (name, w) in model.trainable_parameters() {
            assert!(!w.requires_grad(), "base weight {name} requires grad");
            assert!(!w.grad().defined(), "base weight {name} got a gradient");
        }
    }

    #[test]
    fn f32_adapters_on_a_bf16_model() {
        let cfg = tiny();
        let lora = Lora::new(&cfg, LoraConfig::default(), Device::Cpu, 1).unwrap();
        randomize_b(&lora, 4);
        let f32_model = Llama::random(cfg.clone(), LoadOptions::default(), 3).unwrap();
        let run = |dtype: Kind| {
            let opts = LoadOptions {
                dtype,
                ..Default::default()
            };
            let tensors: HashMap<String, Tensor> = f32_model
                .named_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.to_kind(dtype).copy()))
                .collect();
            let model = Llama::from_tensors(cfg.clone(), tensors, opts).unwrap();
            let h = model
                .forward_hidden_lora(&tokens(), None, None, Some(lora.adapters()))
                .unwrap();
            assert_eq!(h.kind(), dtype);
            h.to_kind(Kind::Float)
        };
        let (full, half) = (run(Kind::Float), run(Kind::BFloat16));
        let scale = full.abs().max().double_value(&[]);
        let d = (&full - &half).abs().max().double_value(&[]);
        assert!(d <= 0.05 * scale, "bf16 differs by {d} (scale {scale})");
    }

    #[test]
    fn dropout_only_in_training() {
        let cfg = tiny();
        let mut lora = Lora::new(
            &cfg,
            LoraConfig {
                dropout: 0.5,
                ..Default::default()
            },
            Device::Cpu,
            1,
        )
        .unwrap();
        randomize_b(&lora, 4);
        let model = Llama::random(cfg, LoadOptions::default(), 3).unwrap();
        let run = |l: &Lora| {
            model
                .forward_hidden_lora(&tokens(), None, None, Some(l.adapters()))
                .unwrap()
        };
        let (e1, e2) = (run(&lora), run(&lora));
        assert_eq!((&e1 - &e2).abs().max().double_value(&[]), 0.0);
        lora.set_training(true);
        let t1 = run(&lora);
        assert!(
            (&t1 - &e1).abs().max().double_value(&[]) > 0.0,
            "dropout had no effect"
        );
    }

    #[test]
    fn peft_files_round_trip_and_mismatches_are_named() {
        let cfg = tiny();
        let lc = LoraConfig {
            r: 4,
            alpha: 12.0,
            target_modules: vec!["v_proj".into(), "q_proj".into(), "down_proj".into()],
            ..Default::default()
        };
        let lora = Lora::new(&cfg, lc, Device::Cpu, 5).unwrap();
        randomize_b(&lora, 6);
        let dir = tempfile::tempdir().unwrap();
        lora.save_peft(dir.path(), "tiny-base").unwrap();
        let st = Tensor::read_safetensors(dir.path().join(ADAPTER_WEIGHTS)).unwrap();
        assert!(st
            .iter()
            .any(|(n, _)| n == "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
        assert_eq!(st.len(), 2 * 3 * 2);
        let back = Lora::load_peft(dir.path(), &cfg, Device::Cpu).unwrap();
        assert_eq!(back.config().r, 4);
        assert_eq!(back.config().alpha, 12.0);
        assert_eq!(
            back.config().targets().unwrap(),
            vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down]
        );
        for ((n1, t1), (n2, t2)) in lora.named_parameters().iter().zip(back.named_parameters()) {
            assert_eq!(n1, &n2);
            assert_eq!((t1 - t2).abs().max().double_value(&[]), 0.0, "{n1}");
        }

        // More layers in the base model than in the adapter.
        let deeper = config(3, 32, 48, 4, 2, 8);
        let e = Lora::load_peft(dir.path(), &deeper, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("covers layers 0..=1 only, the base model has 3 layers"),
            "{e}"
        );
        // Fewer.
        let shallow = config(1, 32, 48, 4, 2, 8);
        let e = Lora::load_peft(dir.path(), &shallow, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layers up to 1, the base model has 1 layers"),
            "{e}"
        );
        // Other widths: the shapes are named.
        let wider = config(2, 32, 64, 4, 2, 8);
        let e = Lora::load_peft(dir.path(), &wider, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layers.0.mlp.down_proj.lora_A.weight` has shape [4, 48]")
                && e.contains("[4, 64]"),
            "{e}"
        );
        // Config and weights disagree on the target modules.
        let cfg_path = dir.path().join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).unwrap();
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["target_modules"] = json!(["q_proj", "v_proj"]);
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        let e = Lora::load_peft(dir.path(), &cfg, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "targets [q_proj, v_proj] but the weights cover [q_proj, v_proj, down_proj]"
            ),
            "{e}"
        );
        // Unsupported options.
        v["target_modules"] = json!(["q_proj", "v_proj", "down_proj"]);
        v["use_dora"] = json!(true);
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        let e = Lora::load_peft(dir.path(), &cfg, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_dora"), "{e}");
        v["use_dora"] = json!(false);
        v["target_modules"] = json!(["q_proj", "lm_head"]);
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        let e = Lora::load_peft(dir.path(), &cfg, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lm_head") && e.contains("never on the LM head"),
            "{e}"
        );
    }

    #[test]
    fn bad_configs_are_errors() {
        let cfg = tiny();
        for (lc, what) in [
            (
                LoraConfig {
                    r: 0,
                    ..Default::default()
                },
                "r = 0",
            ),
            (
                LoraConfig {
                    dropout: 1.0,
                    ..Default::default()
                },
                "dropout",
            ),
            (
                LoraConfig {
                    target_modules: vec!["embed_tokens".into()],
                    ..Default::default()
                },
                "embed_tokens",
            ),
            (
                LoraConfig {
                    target_modules: vec!["q_proj".into(), "q_proj".into()],
                    ..Default::default()
                },
                "twice",
            ),
        ] {
            let e = Lora::new(&cfg, lc, Device::Cpu, 0).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
