//! `tolk-train sft-bench`: training throughput of tolk's SFT step against the same step in
//! PyTorch (transformers `LlamaForCausalLM` + `torch.optim.AdamW`), same model, same batches,
//! same threads, in one run; and the losses and weights of both after the same steps, which
//! checks the loop's numerics (loss, gradients, clipping, AdamW) against the reference.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};
use tolk_models::checkpoint::{read_safetensors, save_safetensors};
use tolk_models::prompt::SpecialToken;

use super::data::{build_examples, BatchConfig, Batcher, SftDataError};
use super::recipe::SftRecipe;
use super::train::{accumulate_gradients, adamw_config, fresh_model, read_entries, SftError};
use crate::toolkit::optim::{AdamW, OptimError};
use crate::toolkit::recipe::RecipeError;
use crate::toolkit::schedule::warmup_cosine;
use crate::units::file::{read_units, UnitsFileError};

/// Errors of `tolk-train sft-bench`.
#[derive(Debug, thiserror::Error)]
pub enum SftBenchError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A recipe or flag the comparison cannot run with.
    #[error("sft-bench: {0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Units(#[from] UnitsFileError),
    #[error(transparent)]
    Sft(#[from] SftError),
    #[error(transparent)]
    SftData(#[from] SftDataError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Model(#[from] tolk_models::ModelError),
    /// The PyTorch side could not be run or gave no usable result.
    #[error("the PyTorch peer: {0}")]
    Peer(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SftBenchError + '_ {
    move |source| SftBenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `tolk-train sft-bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SftBenchArgs {
    /// Recipe whose data, model and optimizer are used (from scratch / pretrained as written).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Optimizer steps (one micro-batch each); the first `--warmup` are not timed.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Intra-op threads for both (default: the recipe's, else libtorch's default).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Python with torch and transformers (default: $TOLK_PYTHON, else the project's .venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Work folder (kept); default: a temporary folder.
    #[arg(long)]
    pub work: Option<PathBuf>,
}

/// Both sides' figures.
#[derive(Debug, Clone, Serialize)]
pub struct SftBenchReport {
    pub device: String,
    pub threads: i32,
    pub parameters: i64,
    pub steps: usize,
    pub timed_steps: usize,
    pub tolk_tokens_per_s: f64,
    pub tolk_target_tokens_per_s: f64,
    pub torch_tokens_per_s: f64,
    pub torch_target_tokens_per_s: f64,
    /// tolk / torch target tokens per second.
    pub speedup: f64,
    pub tolk_losses: Vec<f64>,
    pub torch_losses: Vec<f64>,
    pub max_loss_diff: f64,
    /// Largest absolute difference of any weight after the steps.
    pub max_weight_diff: f64,
}

/// Runs the comparison.
pub fn run_bench(a: &SftBenchArgs) -> Result<SftBenchReport, SftBenchError> {
    let r = SftRecipe::from_file(&a.recipe)?;
    if r.run.precision != "f32" {
        return Err(SftBenchError::Unsupported(
            "sft-bench compares f32 training".into(),
        ));
    }
    let device = tolk_models::device::available_device(&r.run.device)?;
    if device != Device::Cpu {
        return Err(SftBenchError::Unsupported(
            "sft-bench runs the PyTorch peer on the CPU; use run.device = \"cpu\"".into(),
        ));
    }
    let threads = a.threads.unwrap_or(if r.run.threads > 0 {
        r.run.threads
    } else {
        tch::get_num_threads()
    });
    tch::set_num_threads(threads);
    if a.steps <= a.warmup {
        return Err(SftBenchError::Unsupported(
            "--steps must exceed --warmup".into(),
        ));
    }
    let tmp;
    let work = match &a.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&work).map_err(io(&work))?;

    let units = read_units(&r.data.units)?;
    let (model, tok, format) = fresh_model(&r, units.num_units, device)?;
    {
        let _g = tch::no_grad_guard();
        model.save(&work.join("model"))?;
    }
    let entries = read_entries(&r.data.train)?;
    let data_cfg = r.data.example_config();
    let data = build_examples(&entries, &units, &tok, &format, &data_cfg)?;
    let mut batcher = Batcher::new(
        &data.examples,
        BatchConfig {
            max_examples: r.optim.max_examples,
            max_tokens: r.optim.max_tokens,
            pad_id: format.id(SpecialToken::End),
            seed: r.run.seed,
        },
    )?;
    let batches = (0..a.steps)
        .map(|_| batcher.next_batch())
        .collect::<Result<Vec<_>, _>>()?;
    let mut saved = Vec::new();
    for (k, b) in batches.iter().enumerate() {
        saved.push((format!("input_ids_{k}"), b.input_ids.shallow_clone()));
        saved.push((format!("labels_{k}"), b.labels.shallow_clone()));
        saved.push((format!("padding_mask_{k}"), b.padding_mask.shallow_clone()));
    }
    save_safetensors(&work.join("batches.safetensors"), &saved)?;
    let lrs: Vec<f64> = (1..=a.steps as u64)
        .map(|s| {
            warmup_cosine(
                s,
                r.optim.lr,
                r.optim.warmup_steps,
                r.optim.steps,
                r.optim.min_lr_ratio,
            )
        })
        .collect();
    let cfg = serde_json::json!({
        "lrs": lrs, "betas": r.optim.betas, "eps": r.optim.eps,
        "weight_decay": r.optim.weight_decay, "grad_clip": r.optim.grad_clip,
        "threads": threads, "warmup": a.warmup,
    });
    let bench_json = work.join("bench.json");
    std::fs::write(&bench_json, cfg.to_string()).map_err(io(&bench_json))?;

    // tolk: the same step as `train` (one micro-batch per step here).
    let mut opt = AdamW::new(model.trainable_parameters(), adamw_config(&r));
    let (mut losses, mut timed, mut tokens, mut targets) = (Vec::new(), 0.0, 0u64, 0u64);
    for (k, b) in batches.iter().enumerate() {
        let t0 = Instant::now();
        let g = accumulate_gradients(&model, &mut opt, std::slice::from_ref(b), device)?;
        opt.clip_grad_norm(r.optim.grad_clip);
        opt.step(lrs[k])?;
        if k >= a.warmup {
            timed += t0.elapsed().as_secs_f64();
            tokens += g.tokens;
            targets += g.targets;
        }
        losses.push(g.loss);
    }

    // PyTorch.
    let py = crate::eval::asr::find_python(a.python.as_deref())
        .map_err(|e| SftBenchError::Peer(e.to_string()))?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/sft_torch_loop.py");
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(&work)
        .output()
        .map_err(|e| SftBenchError::Peer(format!("cannot run {}: {e}", py.display())))?;
    if !out.status.success() {
        return Err(SftBenchError::Peer(format!(
            "failed ({}): {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let torch_json = work.join("torch.json");
    let torch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&torch_json).map_err(io(&torch_json))?)
            .map_err(|e| SftBenchError::Peer(format!("{}: {e}", torch_json.display())))?;
    let torch_losses: Vec<f64> = torch["losses"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    let max_loss_diff = losses
        .iter()
        .zip(&torch_losses)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let (theirs, _) = read_safetensors(
        &work.join("final.safetensors"),
        Kind::Float,
        Device::Cpu,
        |_| true,
    )?;
    let theirs: std::collections::HashMap<String, Tensor> = theirs.into_iter().collect();
    let mut max_weight_diff: f64 = 0.0;
    for (name, t) in model.named_tensors() {
        let other = theirs
            .get(&name)
            .ok_or_else(|| SftBenchError::Peer(format!("its weights lack {name}")))?;
        let d = (t.detach().to_kind(Kind::Float) - other)
            .abs()
            .max()
            .double_value(&[]);
        max_weight_diff = max_weight_diff.max(d);
    }
    let tolk_tps = tokens as f64 / timed.max(1e-9);
    let tolk_target = targets as f64 / timed.max(1e-9);
    let torch_target = torch["target_tokens_per_s"].as_f64().unwrap_or(0.0);
    Ok(SftBenchReport {
        device: r.run.device.clone(),
        threads,
        parameters: model.config().num_parameters(),
        steps: a.steps,
        timed_steps: a.steps - a.warmup,
        tolk_tokens_per_s: tolk_tps,
        tolk_target_tokens_per_s: tolk_target,
        torch_tokens_per_s: torch["tokens_per_s"].as_f64().unwrap_or(0.0),
        torch_target_tokens_per_s: torch_target,
        speedup: tolk_target / torch_target.max(1e-9),
        tolk_losses: losses,
        torch_losses,
        max_loss_diff,
        max_weight_diff,
    })
}
