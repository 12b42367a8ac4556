//! `tolk-train quantize`: a translator folder with its decoder quantized weight-only (int8 per
//! output channel or int4 group-wise; the format is `tolk_models::llama::quant`), and a report
//! of what quantization costs against the f32 model. A plain Hugging Face Llama folder
//! (`config.json`, safetensors, tokenizer; no `tolk-model.json`) is quantized the same way, its
//! weights in place of a translator's `llm/`, and checked by loading it back with `Llama::load`.
//!
//! The input is a float translator folder whose LoRA adapters are already merged
//! (`tolk_training::preference::Lora::merge_into` + `Llama::save`). Its decoder is loaded in f32
//! (f16 / bf16 checkpoints are upcast first), the seven projections of every layer are
//! quantized and the rest is kept float (`--float-dtype`, f32 by default); every other file of
//! the folder (tokenizer, units, vocoders, samples) is copied as is. The result is written into
//! a temporary sibling folder, loaded back through `Translator::load` and checked, and only then
//! renamed to `--out`: an interrupted or failed run never leaves a half-written model there.
//!
//! With `--report-manifest M --units U --direction D` the quantized decoder is compared with the
//! f32 one on the first `--limit` held-out entries of `M` in direction `D`, prompted as
//! `tolk-train eval` prompts them (the model's own mode, chain of modality for a CoM model, from
//! the entries' source units):
//!
//! - **size**: the quantized `llm/` checkpoint bytes over the f32 tensor bytes (and over the
//!   source checkpoint's bytes);
//! - **max |logit diff|**: the f32 model decodes each prompt greedily (constrained as the
//!   engine decodes); prompt + that output is run teacher-forced through both models and the
//!   largest absolute logit difference over every position and vocabulary entry is kept;
//! - **greedy agreement**: at every output step of those teacher-forced sequences, whether the
//!   quantized model's greedy choice (argmax over the tokens the phase allows) equals the f32
//!   model's; the fraction over all steps. Also how many prompts the quantized model, decoding
//!   on its own, turns into exactly the f32 output;
//! - **decode tokens/s**: greedy decoding of every prompt with each model on the same threads
//!   (one token per step, KV cache; prefill excluded), alternating the models prompt by prompt.
//!
//! Rows: the f32 model, with `--dtype f16|bf16` the float model in that dtype, the quantized
//! checkpoint dequantized at load (what `Translator::load` runs) and, on the CPU, the quantized
//! checkpoint kept packed and run through libtorch's `_weight_int8pack_mm` /
//! `_weight_int4pack_mm_for_cpu` kernels (`QuantRuntime::Packed`); the quantized models compute
//! in `--dtype`. The models are in memory together.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};
use tolk_models::device::{available_device, dtype_name, parse_dtype};
use tolk_models::generate::{decode_rows, mask_ranges, Choice, RowRules};
use tolk_models::llama::quant::{save_quantized, DEFAULT_INT4_GROUP};
use tolk_models::llama::{Llama, LoadOptions, QuantConfig, QuantRuntime, QuantScheme};
use tolk_models::prompt::{PromptFormat, SpecialToken, Task};
use tolk_models::sampling::{Sampler, SamplingConfig};
use tolk_models::translator::{Direction, Mode, ModelManifest, Translator, MANIFEST_FILE};
use tolk_models::ModelError;

use crate::corpus::manifest::ManifestError;
use crate::corpus::manifest::{read_manifest, ReadOptions};
use crate::eval::{check_num_units, entries_for, EvalError};
use crate::toolkit::run_dir::{io, RunDirError};
use crate::units::{read_units, UnitsFileError};

/// Errors of `tolk-train quantize` and of its report; each names the folder, file, entry or
/// argument concerned.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("--group-size applies to int4 only (int8 has one scale per output channel)")]
    GroupSizeForInt8,
    #[error("--group-size {0} must be even and > 0")]
    BadGroupSize(i64),
    #[error("--threads {0} must be > 0")]
    BadThreads(i32),
    #[error("{0} does not exist")]
    MissingInput(PathBuf),
    #[error("{0} already exists: remove it or choose another --out")]
    OutExists(PathBuf),
    #[error("{0} has no folder name")]
    NoFolderName(PathBuf),
    #[error("renaming {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("serializing the report: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("{0} holds neither a translator (tolk-model.json) nor a Llama (config.json)")]
    NotAModelFolder(PathBuf),
    #[error("{model} is not a translator folder: {source}")]
    NotATranslatorFolder {
        model: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error(
        "{0}: the decoder is already quantized (quantization_config); quantize the float \
         (merged) model"
    )]
    AlreadyQuantized(PathBuf),
    #[error("{0} is not quantized")]
    NotQuantized(PathBuf),
    #[error("loading {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error(
        "{scheme} does not fit the decoder of {model} (int4: choose a --group-size that divides \
         every projection's input size): {source}"
    )]
    SchemeDoesNotFit {
        scheme: String,
        model: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("quantizing {path}: {source}")]
    Quantizing {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("loading the quantized folder {path}: {source}")]
    LoadQuantized {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("the quantized decoder's logits are not finite")]
    NonFiniteLogits,
    #[error("argmax outside the allowed ranges")]
    ArgmaxOutsideRanges,
    #[error("a prompt of {0} tokens leaves no room to decode")]
    PromptTooLong(usize),
    #[error("{model} does not translate {direction}")]
    UnsupportedDirection {
        model: PathBuf,
        direction: Direction,
    },
    #[error("{manifest} has no paired {direction} entries")]
    NoEntries {
        manifest: PathBuf,
        direction: Direction,
    },
    #[error("entry {0}: no audio")]
    NoAudio(String),
    #[error("entry {id}: {audio} has no units")]
    NoUnits { id: String, audio: String },
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Units(#[from] UnitsFileError),
}

pub type Result<T, E = QuantizeError> = std::result::Result<T, E>;

/// Integer format of `tolk-train quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantFormat {
    Int8,
    Int4,
}

/// Arguments of `tolk-train quantize`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuantizeArgs {
    /// Float translator folder (adapters merged), or a plain Hugging Face Llama folder, to
    /// quantize.
    #[arg(long)]
    pub model: PathBuf,
    /// int8 (per output channel) or int4 (group-wise).
    #[arg(long, value_enum)]
    pub format: QuantFormat,
    /// int4 group size along the input dimension (default 128); must be even and divide every
    /// projection's input size (hidden and intermediate size). int8 is per channel and takes
    /// none.
    #[arg(long)]
    pub group_size: Option<i64>,
    /// Output translator folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// dtype of the tensors kept float (embeddings, norms, untied LM head): f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub float_dtype: String,
    /// Held-out JSONL manifest: also compare the quantized decoder with the f32 one.
    #[arg(long, requires_all = ["units", "direction"])]
    pub report_manifest: Option<PathBuf>,
    /// Units file covering the report manifest's source audio (tolk-train units).
    #[arg(long)]
    pub units: Option<PathBuf>,
    /// en-fr or fr-en (the report's direction).
    #[arg(long)]
    pub direction: Option<Direction>,
    /// Report on the first N entries of the direction.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Report file (default: OUT/quantization-report.json).
    #[arg(long)]
    pub report_out: Option<PathBuf>,
    /// Device of the report's models (the packed row runs on the CPU only).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of the report's quantized models (f32, f16, bf16); with f16 / bf16 the
    /// float model in that dtype is reported too. The reference stays f32.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Intra-op threads for the report (default: libtorch's default).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl QuantizeArgs {
    pub fn scheme(&self) -> Result<QuantScheme> {
        Ok(match (self.format, self.group_size) {
            (QuantFormat::Int8, None) => QuantScheme::Int8,
            (QuantFormat::Int8, Some(_)) => return Err(QuantizeError::GroupSizeForInt8),
            (QuantFormat::Int4, g) => {
                let g = g.unwrap_or(DEFAULT_INT4_GROUP);
                if g <= 0 || g % 2 != 0 {
                    return Err(QuantizeError::BadGroupSize(g));
                }
                QuantScheme::Int4 { group_size: g }
            }
        })
    }
}

/// What `quantize_model` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeSummary {
    pub out: PathBuf,
    pub scheme: String,
    pub quantization_config: serde_json::Value,
    pub float_dtype: String,
    /// Bytes of the source `llm/` safetensors file(s).
    pub source_llm_bytes: u64,
    /// Bytes of the decoder's tensors in f32 (the tied head counted once).
    pub f32_llm_bytes: u64,
    /// Bytes of the quantized `llm/model.safetensors`.
    pub quantized_llm_bytes: u64,
    pub size_ratio_vs_f32: f64,
    pub size_ratio_vs_source: f64,
    /// Load check: largest |logit diff| between the f32 and the reloaded quantized decoder on
    /// one short prompt.
    pub check_max_logit_diff: f64,
}

/// Removes a temporary folder unless disarmed.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn safetensors_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        if e.file_name().to_string_lossy().ends_with(".safetensors") {
            total += e.metadata().map_err(io(&e.path()))?.len();
        }
    }
    Ok(total)
}

/// Copies `src` into `dst` recursively (following links), leaving out the files `skip` names
/// (paths relative to `src`).
fn copy_tree(src: &Path, dst: &Path, rel: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
    let from = src.join(rel);
    let to = dst.join(rel);
    std::fs::create_dir_all(&to).map_err(io(&to))?;
    for e in std::fs::read_dir(&from).map_err(io(&from))? {
        let e = e.map_err(io(&from))?;
        let r = rel.join(e.file_name());
        if skip(&r) {
            continue;
        }
        let meta = std::fs::metadata(e.path()).map_err(io(&e.path()))?;
        if meta.is_dir() {
            copy_tree(src, dst, &r, skip)?;
        } else {
            std::fs::copy(e.path(), dst.join(&r)).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}

/// The float decoder of a translator folder, in f32 on `device`, with its folder.
fn load_float_llm(model: &Path, device: Device) -> Result<(ModelManifest, PathBuf, Llama)> {
    let mpath = model.join(MANIFEST_FILE);
    let manifest =
        ModelManifest::from_file(&mpath).map_err(|source| QuantizeError::NotATranslatorFolder {
            model: model.to_path_buf(),
            source,
        })?;
    let llm_dir = model.join(&manifest.llm);
    let llm = load_float_decoder(&llm_dir, device)?;
    Ok((manifest, llm_dir, llm))
}

/// The float Llama in `llm_dir`, in f32 on `device`; a quantized one is refused.
fn load_float_decoder(llm_dir: &Path, device: Device) -> Result<Llama> {
    let cfg = read_config(llm_dir)?;
    if cfg.get("quantization_config").is_some_and(|v| !v.is_null()) {
        return Err(QuantizeError::AlreadyQuantized(llm_dir.to_path_buf()));
    }
    Llama::load(
        llm_dir,
        LoadOptions {
            device,
            dtype: Kind::Float,
            ..LoadOptions::default()
        },
    )
    .map_err(|source| QuantizeError::Load {
        path: llm_dir.to_path_buf(),
        source,
    })
}

/// The decoder's `config.json` in `llm_dir`, as JSON.
fn read_config(llm_dir: &Path) -> Result<serde_json::Value> {
    let path = llm_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| QuantizeError::Json { path, source })
}

fn f32_bytes(llm: &Llama) -> u64 {
    llm.named_tensors()
        .iter()
        .map(|(_, t)| t.numel() as u64 * 4)
        .sum()
}

/// What a folder to quantize holds.
enum Source {
    /// A translator folder: its decoder is the `llm` entry of the manifest.
    Translator(ModelManifest),
    /// A plain Hugging Face Llama folder: the decoder is the folder itself.
    PlainLlm,
}

/// The float decoder of `model` (a translator or a plain Llama folder), in f32 on the CPU.
fn load_source(model: &Path) -> Result<(Source, PathBuf, Llama)> {
    if model.join(MANIFEST_FILE).exists() {
        let (m, dir, llm) = load_float_llm(model, Device::Cpu)?;
        return Ok((Source::Translator(m), dir, llm));
    }
    if !model.join("config.json").is_file() {
        return Err(QuantizeError::NotAModelFolder(model.to_path_buf()));
    }
    let llm = load_float_decoder(model, Device::Cpu)?;
    Ok((Source::PlainLlm, model.to_path_buf(), llm))
}

/// Writes `src` (a translator folder or a plain Llama folder) with its decoder quantized to
/// `out` (which must not exist): see the module documentation. Returns what was written.
pub fn quantize_model(
    src: &Path,
    out: &Path,
    scheme: QuantScheme,
    float_kind: Kind,
) -> Result<QuantizeSummary> {
    let _span =
        tracing::info_span!("quantize", src = %src.display(), out = %out.display()).entered();
    if out.exists() {
        return Err(QuantizeError::OutExists(out.to_path_buf()));
    }
    let (source, llm_dir, llm) = load_source(src)?;
    let qc = QuantConfig::all_linear(scheme);
    qc.check(llm.config(), &llm_dir.join("config.json"))
        .map_err(|source| QuantizeError::SchemeDoesNotFit {
            scheme: scheme.label(),
            model: src.to_path_buf(),
            source,
        })?;

    let name = out
        .file_name()
        .ok_or_else(|| QuantizeError::NoFolderName(out.to_path_buf()))?
        .to_string_lossy()
        .to_string();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let mut guard = TempDir(Some(tmp.clone()));

    // Everything but the decoder's weights and config, as is.
    let llm_rel = match &source {
        Source::Translator(m) => PathBuf::from(&m.llm),
        Source::PlainLlm => PathBuf::new(),
    };
    copy_tree(src, &tmp, Path::new(""), &|r: &Path| {
        r.parent() == Some(llm_rel.as_path()) && {
            let f = r.file_name().map(|f| f.to_string_lossy().to_string());
            let f = f.as_deref().unwrap_or("");
            f == "config.json" || f.ends_with(".safetensors") || f == "model.safetensors.index.json"
        }
    })?;
    let mut cfg_json = read_config(&llm_dir)?;
    if cfg_json.get("torch_dtype").is_some() {
        cfg_json["torch_dtype"] = torch_dtype_name(float_kind).into();
    }
    let tmp_llm = tmp.join(&llm_rel);
    save_quantized(&llm, &qc, float_kind, Some(cfg_json), &tmp_llm).map_err(|source| {
        QuantizeError::Quantizing {
            path: llm_dir.clone(),
            source,
        }
    })?;

    // Load the new folder back the way every consumer does, and run it.
    let loaded = |source| QuantizeError::LoadQuantized {
        path: tmp.clone(),
        source,
    };
    let logit_diff = |quantized: &Llama, prompt: &[u32]| -> Result<f64> {
        let ids = ids_tensor(prompt, Device::Cpu);
        let (a, b) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            Ok((llm.forward(&ids, None)?, quantized.forward(&ids, None)?))
        })?;
        let d = max_abs(&a, &b)?;
        if !d.is_finite() {
            return Err(QuantizeError::NonFiniteLogits);
        }
        Ok(d)
    };
    let check_diff = match &source {
        Source::Translator(manifest) => {
            let check = Translator::load(&tmp, Device::Cpu, Kind::Float).map_err(loaded)?;
            let f = check.format();
            let units: Vec<u32> = (0..f.num_units.min(12)).collect();
            let direction = manifest.directions[0];
            let prompt = f.prompt(
                Mode::default_for(manifest.strategy).task_for(manifest.strategy)?,
                direction.src(),
                direction.tgt(),
                &units,
            )?;
            logit_diff(check.llm(), &prompt)?
        }
        Source::PlainLlm => {
            let check = Llama::load(
                &tmp,
                LoadOptions {
                    device: Device::Cpu,
                    dtype: Kind::Float,
                    ..LoadOptions::default()
                },
            )
            .map_err(loaded)?;
            let vocab = check.config().vocab_size as u32;
            let prompt: Vec<u32> = (0..16u32).map(|i| (i * 37 + 1) % vocab).collect();
            logit_diff(&check, &prompt)?
        }
    };

    let source_llm_bytes = safetensors_bytes(&llm_dir)?;
    let quantized_llm_bytes = safetensors_bytes(&tmp_llm)?;
    let f32_llm_bytes = f32_bytes(&llm);
    std::fs::rename(&tmp, out).map_err(|source| QuantizeError::Rename {
        from: tmp.clone(),
        to: out.to_path_buf(),
        source,
    })?;
    guard.0 = None;
    Ok(QuantizeSummary {
        out: out.to_path_buf(),
        scheme: scheme.label(),
        quantization_config: qc.to_json(),
        float_dtype: dtype_name(float_kind).to_string(),
        source_llm_bytes,
        f32_llm_bytes,
        quantized_llm_bytes,
        size_ratio_vs_f32: quantized_llm_bytes as f64 / f32_llm_bytes as f64,
        size_ratio_vs_source: quantized_llm_bytes as f64 / source_llm_bytes as f64,
        check_max_logit_diff: check_diff,
    })
}

fn torch_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        _ => "float32",
    }
}

fn ids_tensor(ids: &[u32], device: Device) -> Tensor {
    let v: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&v).view([1, -1]).to_device(device)
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(a.f_to_kind(Kind::Float)?
        .f_sub(&b.f_to_kind(Kind::Float)?)?
        .f_abs()?
        .f_max()?
        .double_value(&[]))
}

// ---------------------------------------------------------------------------------------------
// Greedy decoding on a bare decoder (the engine's constrained phases), for the comparisons.

/// Index of the text phase's slices in [`Phases::ranges`].
const TEXT_RANGES: usize = 0;
/// Index of the unit phase's slices in [`Phases::ranges`].
const UNIT_RANGES: usize = 1;

/// The decoding limits and phases of one translator.
#[derive(Debug, Clone)]
pub struct Phases {
    task: Task,
    /// The text phase's vocabulary slices ([`TEXT_RANGES`]) and the unit phase's
    /// ([`UNIT_RANGES`]), as [`decode_rows`] takes them.
    ranges: Vec<Vec<Range<u32>>>,
    units_tok: u32,
    end_tok: u32,
    max_text: usize,
    max_units: usize,
}

impl Phases {
    pub fn new(
        f: &PromptFormat,
        task: Task,
        vocab: u32,
        max_text: usize,
        max_units: usize,
    ) -> Self {
        Self {
            task,
            ranges: vec![
                mask_ranges(&f.text_phase(task), vocab),
                mask_ranges(&f.unit_phase(), vocab),
            ],
            units_tok: f.id(SpecialToken::Units),
            end_tok: f.id(SpecialToken::End),
            max_text,
            max_units,
        }
    }

    /// Whether the output prefix `out` is in the unit phase.
    fn in_units(&self, out: &[u32]) -> bool {
        self.task == Task::S2st || out.contains(&self.units_tok)
    }

    /// The ranges allowed after the output prefix `out`.
    fn allowed(&self, out: &[u32]) -> &[Range<u32>] {
        if self.in_units(out) {
            &self.ranges[UNIT_RANGES]
        } else {
            &self.ranges[TEXT_RANGES]
        }
    }
}

/// Argmax of `logits` (`[.., vocab]`, last dimension) over `allowed`, first index on ties.
fn constrained_argmax(logits: &Tensor, allowed: &[Range<u32>]) -> Result<u32> {
    let parts = allowed
        .iter()
        .map(|r| logits.f_narrow(-1, r.start as i64, (r.end - r.start) as i64))
        .collect::<Result<Vec<_>, _>>()?;
    let mut i = Tensor::f_cat(&parts, -1)?
        .f_argmax(-1, false)?
        .f_view([-1])?
        .int64_value(&[0]) as u32;
    for r in allowed {
        let n = r.end - r.start;
        if i < n {
            return Ok(r.start + i);
        }
        i -= n;
    }
    Err(QuantizeError::ArgmaxOutsideRanges)
}

/// One greedy decode: the output ids and the time of the steps after the prefill.
#[derive(Debug, Clone)]
pub struct Greedy {
    pub output: Vec<u32>,
    pub prefill_s: f64,
    /// Steps that ran the model on one new token (all output tokens but the first).
    pub steps: usize,
    pub steps_s: f64,
}

/// The rules of the report's greedy row for [`decode_rows`]: the text phase until `<|units|>`
/// (forced when the text budget runs out), then the unit phase until `<|end|>` or the unit
/// budget; it counts the tokens fed back and notes when the first one came.
struct GreedyRow<'a> {
    phases: &'a Phases,
    sampler: Sampler,
    output: Vec<u32>,
    text: usize,
    units: usize,
    /// Tokens fed back to the model after being chosen.
    fed: usize,
    first_token: Option<Instant>,
}

impl RowRules for GreedyRow<'_> {
    fn next(&mut self) -> tolk_models::Result<Choice> {
        let p = self.phases;
        let in_units = p.in_units(&self.output);
        Ok(if !in_units && self.text >= p.max_text {
            Choice::Force(p.units_tok)
        } else if in_units && self.units >= p.max_units {
            Choice::Done
        } else if in_units {
            Choice::Sample(UNIT_RANGES)
        } else {
            Choice::Sample(TEXT_RANGES)
        })
    }

    fn sampler(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    fn accept(&mut self, token: u32, _logprob: Option<f64>) -> tolk_models::Result<bool> {
        let p = self.phases;
        let in_units = p.in_units(&self.output);
        self.first_token.get_or_insert_with(Instant::now);
        self.output.push(token);
        if token == p.end_tok {
            return Ok(true);
        }
        if in_units {
            self.units += 1;
        } else if token != p.units_tok {
            self.text += 1;
        }
        self.fed += 1;
        Ok(false)
    }

    fn cache_full(&mut self) {
        // The last token was chosen but not fed.
        self.fed -= 1;
    }
}

/// Greedy constrained decoding of `prompt` as the engine does it (text phase, `<|units|>`, unit
/// phase, `<|end|>`; text budget forces `<|units|>`), on a bare decoder, through the engine's
/// decode loop ([`decode_rows`]).
pub fn greedy_decode(llm: &Llama, phases: &Phases, prompt: &[u32]) -> Result<Greedy> {
    let _g = tch::no_grad_guard();
    let capacity =
        ((prompt.len() + phases.max_text + phases.max_units + 2) as i64).min(llm.max_positions());
    if prompt.len() as i64 >= capacity {
        return Err(QuantizeError::PromptTooLong(prompt.len()));
    }
    let mut cache = llm.new_cache(1, capacity)?;
    let t0 = Instant::now();
    let h = llm.forward_hidden_ids(prompt, &mut cache)?;
    let last = h.f_select(1, h.size()[1] - 1)?;
    let mut rows = [GreedyRow {
        phases,
        sampler: Sampler::new(SamplingConfig::greedy())?,
        output: Vec::new(),
        text: 0,
        units: 0,
        fed: 0,
        first_token: None,
    }];
    decode_rows(
        llm,
        &mut cache,
        last,
        &phases.ranges,
        &mut rows,
        phases.end_tok,
    )?;
    let end = Instant::now();
    let [row] = rows;
    // Without any output token the prefill is not timed and the steps are timed from its end.
    let (prefill_s, steps_from) = match row.first_token {
        Some(first) => ((first - t0).as_secs_f64(), first),
        None => (0.0, t0),
    };
    Ok(Greedy {
        output: row.output,
        prefill_s,
        steps: row.fed,
        steps_s: (end - steps_from).as_secs_f64(),
    })
}

/// Teacher-forced comparison of `model` with `reference` on `prompt + output`: the largest
/// |logit diff| over every position and token, and the output steps where the constrained
/// greedy choices agree.
fn teacher_forced(
    reference: &Llama,
    model: &Llama,
    phases: &Phases,
    prompt: &[u32],
    output: &[u32],
) -> Result<(f64, usize, usize, f64)> {
    let _g = tch::no_grad_guard();
    let seq: Vec<u32> = prompt.iter().chain(output).copied().collect();
    let a = reference.forward(&ids_tensor(&seq, reference.device()), None)?;
    let b = model
        .forward(&ids_tensor(&seq, model.device()), None)?
        .f_to_device(reference.device())?;
    let diff = max_abs(&a, &b)?;
    let scale = a.f_abs()?.f_max()?.double_value(&[]);
    let mut agree = 0;
    for i in 0..output.len() {
        let p = (prompt.len() - 1 + i) as i64;
        let allowed = phases.allowed(&output[..i]);
        let x = constrained_argmax(&a.f_select(1, p)?, allowed)?;
        let y = constrained_argmax(&b.f_select(1, p)?, allowed)?;
        agree += usize::from(x == y);
    }
    Ok((diff, agree, output.len(), scale))
}

/// One model's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub model: String,
    /// Largest |logit diff| vs f32, teacher-forced on the f32 outputs (0 for f32 itself).
    pub max_logit_diff: f64,
    /// Fraction of output steps whose constrained greedy token equals f32's.
    pub greedy_agreement: f64,
    pub greedy_steps: usize,
    /// Prompts whose free-running greedy output equals f32's exactly.
    pub identical_outputs: usize,
    pub decode_steps: usize,
    pub decode_seconds: f64,
    pub decode_tokens_per_s: f64,
    pub prefill_seconds: f64,
    /// Weight bytes one decode step reads (`Llama::weight_bytes_per_token`).
    pub weight_bytes_per_token: i64,
}

/// The report of `tolk-train quantize --report-manifest`.
#[derive(Debug, Clone, Serialize)]
pub struct QuantReport {
    pub source: String,
    pub quantized: String,
    pub scheme: String,
    pub quantization_config: serde_json::Value,
    pub manifest: String,
    pub direction: Direction,
    pub mode: Mode,
    pub prompts: usize,
    pub threads: i32,
    pub device: String,
    pub source_llm_bytes: u64,
    pub f32_llm_bytes: u64,
    pub quantized_llm_bytes: u64,
    pub size_ratio_vs_f32: f64,
    pub size_ratio_vs_source: f64,
    /// Largest |logit| of the f32 model on the teacher-forced sequences (scale of the diffs).
    pub f32_max_abs_logit: f64,
    pub rows: Vec<ReportRow>,
    /// Why there is no packed-kernel row, when there is none.
    pub packed_note: Option<String>,
}

/// Compares the decoder of the quantized folder `quantized` with the f32 decoder of `source`
/// on the held-out prompts (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn compare(
    source: &Path,
    quantized: &Path,
    manifest_path: &Path,
    units_path: &Path,
    direction: Direction,
    limit: usize,
    device: Device,
    dtype: Kind,
) -> Result<QuantReport> {
    let (manifest, src_llm_dir, f32_llm) = load_float_llm(source, device)?;
    let qmanifest = ModelManifest::from_file(&quantized.join(MANIFEST_FILE))?;
    let q_dir = quantized.join(&qmanifest.llm);
    let opts = LoadOptions {
        device,
        dtype,
        ..LoadOptions::default()
    };
    let half = if dtype == Kind::Float {
        None
    } else {
        Some(Llama::load(&src_llm_dir, opts)?)
    };
    let deq = Llama::load(&q_dir, opts).map_err(|source| QuantizeError::Load {
        path: q_dir.clone(),
        source,
    })?;
    let qc = deq
        .quantization()
        .ok_or_else(|| QuantizeError::NotQuantized(q_dir.clone()))?
        .clone();
    let (packed, packed_note) = if device == Device::Cpu {
        match Llama::load_with(&q_dir, opts, QuantRuntime::Packed) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(format!("packed kernels unavailable: {e}"))),
        }
    } else {
        (None, Some("packed kernels run on the CPU only".to_string()))
    };

    // Prompts as tolk-train eval builds them.
    let tr_format = {
        let tok = tolk_models::tokenizer::Tokenizer::for_model(
            &src_llm_dir,
            f32_llm.config().vocab_size,
        )?;
        PromptFormat::from_tokenizer(&tok, manifest.num_units)?
    };
    let mode = Mode::default_for(manifest.strategy);
    let task = mode.task_for(manifest.strategy)?;
    if !manifest.supports_direction(direction) {
        return Err(QuantizeError::UnsupportedDirection {
            model: source.to_path_buf(),
            direction,
        });
    }
    let entries = read_manifest(manifest_path, ReadOptions { check_audio: false })?;
    let table = read_units(units_path)?;
    check_num_units(&table, units_path, manifest.num_units)?;
    let (mut entries, _) = entries_for(&entries.entries, direction);
    entries.truncate(limit);
    if entries.is_empty() {
        return Err(QuantizeError::NoEntries {
            manifest: manifest_path.to_path_buf(),
            direction,
        });
    }
    let mut prompts = Vec::new();
    for e in &entries {
        let audio = e
            .audio
            .as_deref()
            .ok_or_else(|| QuantizeError::NoAudio(e.id.clone()))?;
        let mut src = table
            .get(audio)
            .ok_or_else(|| QuantizeError::NoUnits {
                id: e.id.clone(),
                audio: audio.to_string(),
            })?
            .to_vec();
        if manifest.dedup_source_units {
            src.dedup();
        }
        prompts.push(tr_format.prompt(task, direction.src(), direction.tgt(), &src)?);
    }
    let phases = Phases::new(
        &tr_format,
        task,
        f32_llm.config().vocab_size as u32,
        manifest.max_text_tokens,
        manifest.max_target_units,
    );

    let dn = dtype_name(dtype);
    let mut models: Vec<(String, &Llama)> = vec![("f32".to_string(), &f32_llm)];
    if let Some(h) = &half {
        models.push((dn.to_string(), h));
    }
    models.push((format!("{} dequantized, {dn}", qc.scheme.label()), &deq));
    if let Some(p) = &packed {
        models.push((format!("{} packed kernels, {dn}", qc.scheme.label()), p));
    }
    #[derive(Default, Clone)]
    struct Acc {
        diff: f64,
        agree: usize,
        steps: usize,
        identical: usize,
        decode_steps: usize,
        decode_s: f64,
        prefill_s: f64,
    }
    let mut acc = vec![Acc::default(); models.len()];
    // Warm-up (allocator, kernels), not counted.
    for (_, m) in &models {
        greedy_decode(m, &phases, &prompts[0])?;
    }
    let mut f32_max_abs_logit = 0f64;
    let pb = indicatif::ProgressBar::new(prompts.len() as u64);
    for prompt in &prompts {
        let mut reference_output = Vec::new();
        for (i, (_, m)) in models.iter().enumerate() {
            let g = greedy_decode(m, &phases, prompt)?;
            let a = &mut acc[i];
            a.decode_steps += g.steps;
            a.decode_s += g.steps_s;
            a.prefill_s += g.prefill_s;
            if i == 0 {
                reference_output = g.output;
                a.identical += 1;
            } else {
                a.identical += usize::from(g.output == reference_output);
            }
        }
        for (i, (_, m)) in models.iter().enumerate() {
            let (d, agree, steps, scale) =
                teacher_forced(&f32_llm, m, &phases, prompt, &reference_output)?;
            f32_max_abs_logit = f32_max_abs_logit.max(scale);
            let a = &mut acc[i];
            a.diff = a.diff.max(d);
            a.agree += agree;
            a.steps += steps;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    let rows = models
        .iter()
        .zip(&acc)
        .map(|((name, m), a)| ReportRow {
            model: name.clone(),
            max_logit_diff: a.diff,
            greedy_agreement: a.agree as f64 / a.steps.max(1) as f64,
            greedy_steps: a.steps,
            identical_outputs: a.identical,
            decode_steps: a.decode_steps,
            decode_seconds: a.decode_s,
            decode_tokens_per_s: a.decode_steps as f64 / a.decode_s.max(1e-9),
            prefill_seconds: a.prefill_s,
            weight_bytes_per_token: m.weight_bytes_per_token(),
        })
        .collect();
    let source_llm_bytes = safetensors_bytes(&src_llm_dir)?;
    let quantized_llm_bytes = safetensors_bytes(&q_dir)?;
    let f32_llm_bytes = f32_bytes(&f32_llm);
    Ok(QuantReport {
        source: source.display().to_string(),
        quantized: quantized.display().to_string(),
        scheme: qc.scheme.label(),
        quantization_config: qc.to_json(),
        manifest: manifest_path.display().to_string(),
        direction,
        mode,
        prompts: prompts.len(),
        threads: tch::get_num_threads(),
        device: format!("{device:?}"),
        source_llm_bytes,
        f32_llm_bytes,
        quantized_llm_bytes,
        size_ratio_vs_f32: quantized_llm_bytes as f64 / f32_llm_bytes as f64,
        size_ratio_vs_source: quantized_llm_bytes as f64 / source_llm_bytes as f64,
        f32_max_abs_logit,
        rows,
        packed_note,
    })
}

/// The report as a Markdown table.
pub fn report_table(r: &QuantReport) -> String {
    let mut s = format!(
        "{}: llm checkpoint {} bytes = {:.3} x f32 ({} bytes), {:.3} x the source ({} bytes)\n\
         {} prompts ({}, {}), {} threads, {}; largest f32 |logit| {:.2}\n\n\
         | model | max abs logit diff | greedy agreement | identical outputs | decode tok/s | weight bytes/token |\n\
         |---|---|---|---|---|---|\n",
        r.scheme,
        r.quantized_llm_bytes,
        r.size_ratio_vs_f32,
        r.f32_llm_bytes,
        r.size_ratio_vs_source,
        r.source_llm_bytes,
        r.prompts,
        r.direction,
        r.mode.as_str(),
        r.threads,
        r.device,
        r.f32_max_abs_logit
    );
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {:.3e} | {:.4} ({} steps) | {}/{} | {:.1} | {} |\n",
            row.model,
            row.max_logit_diff,
            row.greedy_agreement,
            row.greedy_steps,
            row.identical_outputs,
            r.prompts,
            row.decode_tokens_per_s,
            row.weight_bytes_per_token
        ));
    }
    if let Some(n) = &r.packed_note {
        s.push_str(&format!("\n{n}\n"));
    }
    s
}

/// Runs `tolk-train quantize`: the folder, then (when asked) the report, written to
/// `--report-out` and returned.
pub fn run_quantize(args: &QuantizeArgs) -> Result<(QuantizeSummary, Option<QuantReport>)> {
    let scheme = args.scheme()?;
    let float_kind = parse_dtype(&args.float_dtype)?;
    let device = available_device(&args.device)?;
    if let Some(n) = args.threads {
        if n <= 0 {
            return Err(QuantizeError::BadThreads(n));
        }
        tch::set_num_threads(n);
    }
    // Check the report's inputs before the long part.
    if let Some(m) = &args.report_manifest {
        for p in [Some(m), args.units.as_ref()].into_iter().flatten() {
            if !p.exists() {
                return Err(QuantizeError::MissingInput(p.clone()));
            }
        }
    }
    let summary = quantize_model(&args.model, &args.out, scheme, float_kind)?;
    let report = match (&args.report_manifest, &args.units, args.direction) {
        (Some(m), Some(u), Some(d)) => {
            let dtype = parse_dtype(&args.dtype)?;
            let r = compare(&args.model, &args.out, m, u, d, args.limit, device, dtype)?;
            let path = args
                .report_out
                .clone()
                .unwrap_or_else(|| args.out.join("quantization-report.json"));
            let text = serde_json::to_string_pretty(&r).map_err(QuantizeError::Serialize)?;
            std::fs::write(&path, text).map_err(io(&path))?;
            Some(r)
        }
        _ => None,
    };
    Ok((summary, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::tiny::{write_random_translator, TinyTranslatorSpec};
    use crate::units::{write_units, UnitsTable};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        max_abs(a, b).unwrap()
    }

    #[test]
    fn a_plain_llama_folder_quantizes_loads_and_decodes() {
        let tmp = tempfile::tempdir().unwrap();
        let tr = tmp.path().join("tr");
        write_random_translator(&tr, &TinyTranslatorSpec::default()).unwrap();
        // A translator's `llm/` is a plain Hugging Face Llama folder.
        let src = tr.join("llm");
        let f32_llm = Llama::load(&src, LoadOptions::default()).unwrap();
        let vocab = f32_llm.config().vocab_size as u32;
        let prompt: Vec<u32> = (0..24u32).map(|i| (i * 13 + 5) % vocab).collect();
        let ids = ids_tensor(&prompt, Device::Cpu);
        let reference = tch::no_grad(|| f32_llm.forward(&ids, None).unwrap());
        let scale = reference.abs().max().double_value(&[]);
        for (label, scheme, bound) in [
            ("int8", QuantScheme::Int8, 0.02),
            ("int4", QuantScheme::Int4 { group_size: 32 }, 0.2),
        ] {
            let out = tmp.path().join(format!("plain-{label}"));
            let s = quantize_model(&src, &out, scheme, Kind::Float).unwrap();
            assert!(s.size_ratio_vs_f32 < 1.0, "{s:?}");
            assert_eq!(
                std::fs::read(src.join("tokenizer.json")).unwrap(),
                std::fs::read(out.join("tokenizer.json")).unwrap()
            );
            let q = Llama::load(&out, LoadOptions::default()).unwrap();
            assert_eq!(q.quantization().map(|c| c.scheme), Some(scheme));
            let d = max_diff(&tch::no_grad(|| q.forward(&ids, None).unwrap()), &reference);
            assert!(d < bound * scale, "{label}: {d} (largest |logit| {scale})");
            // And it decodes: greedy steps on its KV cache.
            let mut cache = q.new_cache(1, 64).unwrap();
            let mut next = tch::no_grad(|| q.forward(&ids, Some(&mut cache)).unwrap());
            for _ in 0..8 {
                let tok = next.select(1, -1).argmax(-1, false).int64_value(&[0]);
                assert!((0..q.config().vocab_size).contains(&tok));
                let step = Tensor::from_slice(&[tok]).view([1, 1]);
                next = tch::no_grad(|| q.forward(&step, Some(&mut cache)).unwrap());
            }
        }
        let e = quantize_model(
            &tmp.path().join("nothing"),
            &tmp.path().join("x"),
            QuantScheme::Int8,
            Kind::Float,
        )
        .unwrap_err();
        assert!(e.to_string().contains("neither a translator"), "{e}");
        let e = quantize_model(
            &tmp.path().join("plain-int8"),
            &tmp.path().join("y"),
            QuantScheme::Int8,
            Kind::Float,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("already quantized"), "{e:#}");
    }

    #[test]
    fn quantized_tiny_translators_load_and_translate() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("f32");
        write_random_translator(&src, &TinyTranslatorSpec::default()).unwrap();
        let f32_tr = Translator::load(&src, Device::Cpu, Kind::Float).unwrap();
        let f = f32_tr.format().clone();
        let units: Vec<u32> = (0..16).chain((0..16).rev()).collect();
        let prompt = f
            .prompt(
                Task::ChainOfModality,
                tolk_models::prompt::Lang::En,
                tolk_models::prompt::Lang::Fr,
                &units,
            )
            .unwrap();
        let ids = ids_tensor(&prompt, Device::Cpu);
        let reference = tch::no_grad(|| f32_tr.llm().forward(&ids, None).unwrap());
        let scale = reference.abs().max().double_value(&[]);
        let mut worst = Vec::new();
        // The tiny decoder's projections have 32 and 64 inputs: groups of 32.
        for (label, scheme) in [
            ("int8", QuantScheme::Int8),
            ("int4", QuantScheme::Int4 { group_size: 32 }),
        ] {
            let out = tmp.path().join(label);
            let s = quantize_model(&src, &out, scheme, Kind::Float).unwrap();
            assert!(s.size_ratio_vs_f32 < 1.0, "{s:?}");
            assert!(s.check_max_logit_diff.is_finite());
            // Every file but the decoder's weights and config is copied unchanged.
            for rel in [
                MANIFEST_FILE,
                "llm/tokenizer.json",
                "units/kmeans.safetensors",
                "vocoder-fr/model.safetensors",
            ] {
                assert_eq!(
                    std::fs::read(src.join(rel)).unwrap(),
                    std::fs::read(out.join(rel)).unwrap(),
                    "{rel}"
                );
            }
            // No temporary folder is left behind.
            let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
                .collect();
            assert!(leftovers.is_empty());

            let tr = Translator::load(&out, Device::Cpu, Kind::Float).unwrap();
            assert_eq!(tr.llm().quantization().map(|q| q.scheme), Some(scheme));
            let logits = tch::no_grad(|| tr.llm().forward(&ids, None).unwrap());
            let d = max_diff(&logits, &reference);
            println!("{label}: max |logit diff| vs f32 {d:.3e} (largest |logit| {scale:.3})");
            worst.push(d);
            let o = tr
                .translate_units(&units, Direction::EnFr, Mode::ChainOfModality)
                .unwrap();
            assert!(!o.text_ids.is_empty() || !o.units.is_empty());
            // Dequantized to a half-precision compute dtype too.
            let half = Translator::load(&out, Device::Cpu, Kind::BFloat16).unwrap();
            let l = tch::no_grad(|| half.llm().forward(&ids, None).unwrap());
            assert_eq!(l.kind(), Kind::BFloat16);
            let d = max_diff(&l, &reference);
            assert!(d < 0.1 * scale, "{label} in bf16: {d}");
        }
        assert!(
            worst[0] < 0.02 * scale && worst[1] < 0.2 * scale,
            "{worst:?}"
        );
        assert!(
            worst[0] < worst[1],
            "int8 should be closer than int4: {worst:?}"
        );

        // Bad requests: existing output, already quantized input, groups that do not divide.
        let e = quantize_model(
            &src,
            &tmp.path().join("int8"),
            QuantScheme::Int8,
            Kind::Float,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        let e = quantize_model(
            &tmp.path().join("int8"),
            &tmp.path().join("again"),
            QuantScheme::Int8,
            Kind::Float,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("already quantized"), "{e:#}");
        let e = quantize_model(
            &src,
            &tmp.path().join("g48"),
            QuantScheme::Int4 { group_size: 48 },
            Kind::Float,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("in_features 32"), "{e:#}");
        assert!(!tmp.path().join("g48").exists() && !tmp.path().join("again").exists());
    }

    #[test]
    fn bare_greedy_decoding_matches_the_engine_and_the_report_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("f32");
        write_random_translator(&src, &TinyTranslatorSpec::default()).unwrap();
        let tr = Translator::load(&src, Device::Cpu, Kind::Float).unwrap();
        let m = tr.manifest();
        let phases = Phases::new(
            tr.format(),
            Task::ChainOfModality,
            tr.llm().config().vocab_size as u32,
            m.max_text_tokens,
            m.max_target_units,
        );
        let f = tr.format();
        let sources: [Vec<u32>; 3] = [
            vec![1, 2, 3, 4, 5, 6],
            (0..16).collect(),
            vec![9, 9, 3, 12, 15, 0, 0, 7],
        ];
        let mut table = UnitsTable::new(16, "test");
        let mut lines = String::new();
        for (i, src_units) in sources.iter().enumerate() {
            let engine = tr
                .translate_units(src_units, Direction::EnFr, Mode::ChainOfModality)
                .unwrap();
            let mut dedup = src_units.clone();
            dedup.dedup();
            let prompt = f
                .prompt(
                    Task::ChainOfModality,
                    tolk_models::prompt::Lang::En,
                    tolk_models::prompt::Lang::Fr,
                    &dedup,
                )
                .unwrap();
            let g = greedy_decode(tr.llm(), &phases, &prompt).unwrap();
            let parsed = f.parse_output(&g.output);
            assert_eq!(parsed.text_ids, engine.text_ids, "prompt {i}");
            assert_eq!(parsed.units, engine.units, "prompt {i}");
            let a = format!("a{i}.wav");
            table.insert(a.as_str(), src_units.clone()).unwrap();
            lines.push_str(&format!(
                "{}\n",
                serde_json::json!({"id": format!("u{i}"), "language": "en", "text": "x",
                    "audio": a, "target_language": "fr", "target_text": "y"})
            ));
        }
        let manifest = tmp.path().join("test.jsonl");
        std::fs::write(&manifest, lines).unwrap();
        let units = tmp.path().join("units.jsonl");
        write_units(&units, &table).unwrap();

        let out = tmp.path().join("int8");
        let args = QuantizeArgs {
            model: src.clone(),
            format: QuantFormat::Int8,
            group_size: None,
            out: out.clone(),
            float_dtype: "f16".into(),
            report_manifest: Some(manifest),
            units: Some(units),
            direction: Some(Direction::EnFr),
            limit: 2,
            report_out: None,
            device: "cpu".into(),
            dtype: "bf16".into(),
            threads: None,
        };
        let (summary, report) = run_quantize(&args).unwrap();
        assert_eq!(summary.float_dtype, "f16");
        let r = report.unwrap();
        println!("{}", report_table(&r));
        assert_eq!(r.prompts, 2);
        assert_eq!(r.rows.len(), 4, "f32, bf16, dequantized, packed");
        assert_eq!(r.rows[0].max_logit_diff, 0.0);
        assert_eq!(r.rows[0].greedy_agreement, 1.0);
        for row in &r.rows[1..] {
            assert!(
                row.max_logit_diff > 0.0 && row.max_logit_diff < 0.05,
                "{row:?}"
            );
            assert!((0.0..=1.0).contains(&row.greedy_agreement));
            assert!(row.decode_tokens_per_s > 0.0);
        }
        let saved: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("quantization-report.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved["rows"].as_array().unwrap().len(), 4);
    }
}
