//! The SFT training loop: full fine-tuning of a Llama backbone (pretrained and extended, or from
//! scratch) on [`super::data`] sequences, with the loss on the target part only.
//!
//! Per optimizer step: `grad_accum` micro-batches, each loss a sum over its target tokens divided
//! by the target tokens of the whole step (so accumulation equals one large batch), gradient-norm
//! clipping, AdamW ([`crate::toolkit::optim`]) at the warm-up + cosine learning rate. Every
//! `checkpoint_every` steps a checkpoint (model folder, optimizer moments, batcher position) is
//! written to a temporary folder and renamed into place, then `latest` is switched to it: a crash
//! at any moment leaves the previous checkpoint intact. Running the same command again resumes
//! from `latest` and continues exactly as an uninterrupted run would (no dropout, seeded batch
//! order). A non-finite loss or gradient stops the run with an error naming the step and the last
//! good checkpoint, and writes nothing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};
use tolk_models::llama::{Llama, LlamaConfig, LoadOptions, RopeScaling};
use tolk_models::prompt::{PromptFormat, SpecialToken};
use tolk_models::tokenizer::Tokenizer;
use tolk_models::vocab::unit_token_names;

use super::data::{build_examples, collate, BatchConfig, BatchPosition, Batcher, Example};
use super::recipe::SftRecipe;
use crate::corpus::manifest::{
    read_manifest, refuse_test_only, ManifestEntry, ManifestError, ReadOptions,
};
use crate::toolkit::checkpoint::{
    commit_checkpoint, latest_checkpoint, load_optimizer, read_state, write_state, CheckpointError,
};
use crate::toolkit::labels::IGNORE_INDEX;
use crate::toolkit::optim::{AdamW, AdamWConfig, DecayScope, OptimError};
use crate::toolkit::plot::{write_train_dev_plot, LossPoint, PlotError};
use crate::toolkit::progress::StepProgress;
use crate::toolkit::recipe::{CheckedRecipe, RecipeError, RunFlags};
use crate::toolkit::run_dir::{append_jsonl, write_atomic, RunDirError};
use crate::toolkit::schedule::warmup_cosine;
use crate::units::file::{read_units, UnitsFileError};

/// Errors of an SFT run.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The recipe's backbone cannot be built.
    #[error("[model]: {0}")]
    Backbone(String),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error("data: {0}")]
    Manifest(#[from] ManifestError),
    #[error("data: {0}")]
    Units(#[from] UnitsFileError),
    #[error("data: no training example could be built ({skipped} skipped: {counts})")]
    NoExamples { skipped: usize, counts: String },
    #[error(transparent)]
    Model(#[from] tolk_models::ModelError),
    #[error(transparent)]
    SftData(#[from] super::data::SftDataError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("loss plot: {0}")]
    Plot(#[from] PlotError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(
        "training diverged at step {step}: {what}; nothing was saved for this step, the last good \
         checkpoint is {last_checkpoint}"
    )]
    Diverged {
        step: u64,
        what: String,
        last_checkpoint: String,
    },
}

type Result<T> = std::result::Result<T, SftError>;

/// `tolk-train sft` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SftArgs {
    #[command(flatten)]
    pub run: RunFlags,
    /// Override `optim.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
}

impl SftArgs {
    /// The recipe with the command-line overrides applied.
    pub fn recipe(&self) -> Result<SftRecipe> {
        let mut r = SftRecipe::from_file(&self.run.recipe)?;
        self.run.apply(&mut r.run);
        if let Some(s) = self.steps {
            r.optim.steps = s;
            r.optim.warmup_steps = r.optim.warmup_steps.min(s);
        }
        r.validate().map_err(|e| e.in_file(&self.run.recipe))?;
        Ok(r)
    }
}

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    position: BatchPosition,
    tokens: u64,
    target_tokens: u64,
    elapsed_s: f64,
    /// The recipe sections that must not change on resume (data, model, optimizer without
    /// `steps`), as JSON.
    fingerprint: String,
    train_history: Vec<LossPoint>,
    dev_history: Vec<LossPoint>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub examples: usize,
    pub skipped: usize,
    pub dev_examples: usize,
    pub parameters: i64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub dev_loss: Option<f64>,
    pub dev_accuracy: Option<f64>,
    pub tokens_per_s: f64,
    pub target_tokens_per_s: f64,
    pub elapsed_s: f64,
    pub final_model: PathBuf,
}

/// Evaluation result: mean loss and next-token accuracy over target tokens.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub tokens: i64,
}

fn fingerprint(r: &SftRecipe) -> String {
    let mut optim = r.optim.clone();
    optim.steps = 0;
    serde_json::json!({"data": r.data, "model": r.model, "optim": optim}).to_string()
}

/// AdamW as the recipe's `[optim]` sets it (no decay on norms and biases).
pub(crate) fn adamw_config(r: &SftRecipe) -> AdamWConfig {
    AdamWConfig {
        betas: r.optim.betas,
        eps: r.optim.eps,
        weight_decay: r.optim.weight_decay,
        decay: DecayScope::Matrices,
    }
}

fn dtype_of(r: &SftRecipe) -> Kind {
    if r.run.precision == "bf16" {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// The backbone, its tokenizer and the prompt format, fresh from the recipe.
pub(crate) fn fresh_model(
    r: &SftRecipe,
    num_units: u32,
    device: Device,
) -> Result<(Llama, Tokenizer, PromptFormat)> {
    let opts = LoadOptions {
        device,
        dtype: dtype_of(r),
        max_positions: r.data.max_len as i64 + 1,
    };
    if let Some(dir) = &r.model.pretrained {
        let mut model = Llama::load(dir, opts)?;
        let mut tok = Tokenizer::for_model(dir, model.config().vocab_size)?;
        let format = PromptFormat::extend(&mut model, &mut tok, num_units)?;
        return Ok((model, tok, format));
    }
    let (Some(tok_path), Some(shape)) = (&r.model.tokenizer, &r.model.scratch) else {
        return Err(SftError::Backbone("no backbone given".into()));
    };
    let mut tok = Tokenizer::from_file(tok_path)?;
    let mut names = unit_token_names(num_units as usize);
    names.extend(SpecialToken::ALL.iter().map(|t| t.name().to_string()));
    tok.add_special_tokens(&names)?;
    let format = PromptFormat::from_tokenizer(&tok, num_units)?;
    if shape.hidden_size % shape.num_attention_heads != 0
        || shape.num_attention_heads % shape.num_key_value_heads != 0
    {
        return Err(SftError::Backbone(
            "model.scratch: hidden_size must divide by num_attention_heads, and heads by \
             num_key_value_heads"
                .into(),
        ));
    }
    let cfg = LlamaConfig {
        vocab_size: tok.vocab_size() as i64,
        hidden_size: shape.hidden_size,
        intermediate_size: shape.intermediate_size,
        num_hidden_layers: shape.num_hidden_layers,
        num_attention_heads: shape.num_attention_heads,
        num_key_value_heads: shape.num_key_value_heads,
        head_dim: shape.hidden_size / shape.num_attention_heads,
        max_position_embeddings: shape.max_position_embeddings,
        rms_norm_eps: 1e-5,
        rope_theta: shape.rope_theta,
        rope_scaling: RopeScaling::Default,
        tie_word_embeddings: shape.tie_word_embeddings,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![format.id(SpecialToken::End) as i64],
        pad_token_id: tok.token_to_id("<pad>").map(|i| i as i64),
    };
    let model = Llama::random(cfg, opts, r.model.init_seed)?;
    Ok((model, tok, format))
}

/// Mean loss of one micro-batch's target tokens, as (sum of token losses, correct predictions,
/// target tokens). Only positions with a label are sent through the LM head.
pub(crate) fn batch_loss(
    model: &Llama,
    input_ids: &Tensor,
    labels: &Tensor,
    mask: &Tensor,
    device: Device,
) -> Result<(Tensor, Tensor, i64)> {
    let ids = input_ids.to_device(device);
    let mask = mask.to_device(device);
    let hidden = model.forward_hidden(&ids, None, Some(&mask))?;
    let (b, s, h) = hidden.size3()?;
    // The hidden state at position i predicts the token at i + 1.
    let pred = hidden.narrow(1, 0, s - 1).reshape([b * (s - 1), h]);
    let target = labels.narrow(1, 1, s - 1).reshape([-1]);
    let rows = target.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
    let n = rows.size()[0];
    let rows = rows.to_device(device);
    let target = target.to_device(device).index_select(0, &rows);
    let logits = model
        .logits(&pred.index_select(0, &rows))?
        .to_kind(Kind::Float);
    let loss =
        logits.f_cross_entropy_loss::<Tensor>(&target, None, Reduction::Sum, IGNORE_INDEX, 0.0)?;
    let correct = logits.argmax(-1, false).eq_tensor(&target).sum(Kind::Int64);
    Ok((loss, correct, n))
}

/// What one optimizer step's forward and backward passes saw.
pub(crate) struct StepGradients {
    /// Mean loss over the step's target tokens.
    pub loss: f64,
    /// Real (non-padding) tokens and target tokens of the step.
    pub tokens: u64,
    pub targets: u64,
}

/// Clears the gradients, then runs forward and backward over the micro-batches of one optimizer
/// step, each loss a sum over its target tokens divided by the target tokens of the whole step
/// (so accumulation equals one large batch). Clipping and the update are the caller's.
pub(crate) fn accumulate_gradients(
    model: &Llama,
    opt: &mut AdamW,
    micro: &[super::data::Batch],
    device: Device,
) -> Result<StepGradients> {
    opt.zero_grad();
    let targets: usize = micro.iter().map(|b| b.target_tokens).sum();
    let (mut loss_sum, mut tokens) = (0.0, 0u64);
    for b in micro {
        let (l, _, _) = batch_loss(model, &b.input_ids, &b.labels, &b.padding_mask, device)?;
        loss_sum += l.double_value(&[]);
        (l / targets.max(1) as f64).backward();
        tokens += b.padding_mask.sum(Kind::Int64).int64_value(&[]) as u64;
    }
    Ok(StepGradients {
        loss: loss_sum / targets.max(1) as f64,
        tokens,
        targets: targets as u64,
    })
}

/// Teacher-forced loss and accuracy over `examples` (in order).
pub fn evaluate(
    model: &Llama,
    examples: &[Example],
    batch: &BatchConfig,
    device: Device,
) -> Result<EvalResult> {
    let _guard = tch::no_grad_guard();
    let (mut loss, mut correct, mut tokens) = (0.0, 0i64, 0i64);
    let mut i = 0;
    while i < examples.len() {
        let mut j = i;
        let mut longest = 0;
        while j < examples.len()
            && j - i < batch.max_examples
            && (j - i + 1) * longest.max(examples[j].len()) <= batch.max_tokens
        {
            longest = longest.max(examples[j].len());
            j += 1;
        }
        let j = j.max(i + 1);
        let idx: Vec<usize> = (i..j).collect();
        let b = collate(examples, &idx, batch.pad_id)?;
        let (l, c, n) = batch_loss(model, &b.input_ids, &b.labels, &b.padding_mask, device)?;
        loss += l.double_value(&[]);
        correct += c.int64_value(&[]);
        tokens += n;
        i = j;
    }
    let t = tokens.max(1) as f64;
    Ok(EvalResult {
        loss: loss / t,
        accuracy: correct as f64 / t,
        tokens,
    })
}

/// Reads the paired entries of `manifests` (audio files are not opened: units come from the
/// units file).
pub(crate) fn read_entries(manifests: &[PathBuf]) -> Result<Vec<ManifestEntry>> {
    let mut out = Vec::new();
    for m in manifests {
        let man = read_manifest(m, ReadOptions { check_audio: false })?;
        refuse_test_only(&man, "training")?;
        out.extend(man.entries);
    }
    Ok(out)
}

/// Writes the model folder (config.json, model.safetensors, tokenizer.json) to `dir`.
fn save_model(model: &Llama, tok: &Tokenizer, dir: &Path) -> Result<()> {
    let _guard = tch::no_grad_guard();
    model.save(dir)?;
    tok.save(&dir.join("tokenizer.json"))?;
    Ok(())
}

fn save_checkpoint(
    out: &Path,
    model: &Llama,
    tok: &Tokenizer,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    commit_checkpoint(out, state.step, keep, |tmp: &Path| -> Result<()> {
        save_model(model, tok, &tmp.join("model"))?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        Ok(write_state(tmp, "trainer.json", state)?)
    })
}

/// Runs (or resumes) the recipe.
pub fn train(r: &SftRecipe, restart: bool, stop_after: Option<u64>) -> Result<SftSummary> {
    let span = tracing::info_span!("sft", out = %r.run.out.display());
    let _enter = span.enter();
    let device = tolk_models::device::available_device(&r.run.device)?;
    if r.run.threads > 0 {
        tch::set_num_threads(r.run.threads);
    }
    let out = &r.run.out;
    std::fs::create_dir_all(out).map_err(crate::toolkit::run_dir::io(out))?;

    // Data.
    let units = read_units(&r.data.units)?;
    let num_units = units.num_units;
    let data_cfg = r.data.example_config();

    // Model: resumed or fresh.
    let resume_from = if restart {
        None
    } else {
        latest_checkpoint(out)?
    };
    let (model, tok, format, state) = if let Some(ck) = &resume_from {
        let state: TrainerState = read_state(ck, "trainer.json")?;
        if state.fingerprint != fingerprint(r) {
            return Err(CheckpointError::Mismatch {
                checkpoint: ck.clone(),
                message: "the recipe's data, model or optimizer settings changed since this \
                          checkpoint (only optim.steps may change); use --restart or another \
                          run.out"
                    .into(),
            }
            .into());
        }
        let opts = LoadOptions {
            device,
            dtype: dtype_of(r),
            max_positions: r.data.max_len as i64 + 1,
        };
        let model = Llama::load(&ck.join("model"), opts)?;
        let tok = Tokenizer::from_file(&ck.join("model").join("tokenizer.json"))?;
        let format = PromptFormat::from_tokenizer(&tok, num_units)?;
        (model, tok, format, Some(state))
    } else {
        let (m, t, f) = fresh_model(r, num_units, device)?;
        (m, t, f, None)
    };

    let train_entries = read_entries(&r.data.train)?;
    let data = build_examples(&train_entries, &units, &tok, &format, &data_cfg)?;
    let mut dev_entries = read_entries(std::slice::from_ref(&r.data.dev))?;
    if r.data.dev_limit > 0 {
        dev_entries.truncate(r.data.dev_limit);
    }
    let dev = build_examples(&dev_entries, &units, &tok, &format, &data_cfg)?;
    if data.examples.is_empty() {
        return Err(SftError::NoExamples {
            skipped: data.skipped.total(),
            counts: format!("{:?}", data.skipped.counts),
        });
    }
    if data.skipped.problems() > 0 {
        tracing::warn!(skipped = data.skipped.total(), counts = ?data.skipped.counts, "training examples skipped");
        eprintln!(
            "warning: {} training examples skipped: {:?}",
            data.skipped.total(),
            data.skipped.counts
        );
    }
    let batch_cfg = BatchConfig {
        max_examples: r.optim.max_examples,
        max_tokens: r.optim.max_tokens,
        pad_id: format.id(SpecialToken::End),
        seed: r.run.seed,
    };

    // Optimizer.
    let mut opt = AdamW::new(model.trainable_parameters(), adamw_config(r));
    let mut state = state.unwrap_or(TrainerState {
        step: 0,
        position: BatchPosition::default(),
        tokens: 0,
        target_tokens: 0,
        elapsed_s: 0.0,
        fingerprint: fingerprint(r),
        train_history: Vec::new(),
        dev_history: Vec::new(),
    });
    if let Some(ck) = &resume_from {
        load_optimizer(ck, "optimizer.safetensors", &mut opt)?;
    }
    let resumed_from = resume_from.as_ref().map(|_| state.step);
    let mut batcher = Batcher::resume(&data.examples, batch_cfg, state.position)?;
    let mut last_checkpoint = resume_from
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none (no checkpoint yet)".into());
    if let Some(s) = resumed_from {
        eprintln!("resuming from {last_checkpoint} at step {s}");
    }

    // Fault injection for the divergence test: `TOLK_SFT_FAULT_NAN_STEP=N` makes step N's loss NaN.
    let fault_nan_step: Option<u64> = std::env::var("TOLK_SFT_FAULT_NAN_STEP")
        .ok()
        .and_then(|v| v.parse().ok());
    let total = r.optim.steps;
    let metrics_path = out.join("metrics.jsonl");
    let bar = StepProgress::new(total, state.step);
    let started = Instant::now();
    let base_elapsed = state.elapsed_s;
    let (mut win_tokens, mut win_targets, mut win_start) = (0u64, 0u64, Instant::now());
    let mut first_loss = state.train_history.first().map(|p| p.loss);
    let mut last_loss = state.train_history.last().map(|p| p.loss);
    let mut last_eval: Option<EvalResult> = None;
    let mut steps_this_run = 0u64;
    let mut rate = (0.0, 0.0);

    while state.step < total {
        if stop_after.is_some_and(|n| steps_this_run >= n) {
            break;
        }
        let step = state.step + 1;
        let micro: Vec<_> = (0..r.optim.grad_accum)
            .map(|_| batcher.next_batch())
            .collect::<std::result::Result<_, _>>()?;
        let g = accumulate_gradients(&model, &mut opt, &micro, device)?;
        win_tokens += g.tokens;
        win_targets += g.targets;
        let mut loss = g.loss;
        if fault_nan_step == Some(step) {
            loss = f64::NAN;
        }
        let diverged = |what: String| SftError::Diverged {
            step,
            what,
            last_checkpoint: last_checkpoint.clone(),
        };
        if !loss.is_finite() {
            return Err(diverged(format!("the loss is {loss}")));
        }
        let gnorm = opt.clip_grad_norm(r.optim.grad_clip);
        if !gnorm.is_finite() {
            return Err(diverged(format!("the gradient norm is {gnorm}")));
        }
        let lr = warmup_cosine(
            step,
            r.optim.lr,
            r.optim.warmup_steps,
            total,
            r.optim.min_lr_ratio,
        );
        opt.step(lr)?;
        state.step = step;
        state.position = batcher.position();
        steps_this_run += 1;
        first_loss.get_or_insert(loss);
        last_loss = Some(loss);
        bar.set_step(step);

        if step % r.run.log_every == 0 || step == total {
            let secs = win_start.elapsed().as_secs_f64().max(1e-9);
            rate = (win_tokens as f64 / secs, win_targets as f64 / secs);
            state.tokens += win_tokens;
            state.target_tokens += win_targets;
            (win_tokens, win_targets, win_start) = (0, 0, Instant::now());
            state.train_history.push(LossPoint { step, loss });
            let msg = format!(
                "loss {loss:.4} lr {lr:.2e} |g| {gnorm:.2} {:.0} tok/s ({:.0} target)",
                rate.0, rate.1
            );
            bar.figures(step, total, msg);
            append_jsonl(
                &metrics_path,
                &serde_json::json!({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm,
                    "tokens_per_s": rate.0, "target_tokens_per_s": rate.1}),
            )?;
        }
        if (step % r.run.eval_every == 0 || step == total) && !dev.examples.is_empty() {
            let e = evaluate(&model, &dev.examples, &batch_cfg, device)?;
            if !e.loss.is_finite() {
                return Err(diverged(format!("the dev loss is {}", e.loss)));
            }
            state.dev_history.push(LossPoint { step, loss: e.loss });
            let line = format!(
                "step {step}: dev loss {:.4}, dev accuracy {:.2}% ({} target tokens)",
                e.loss,
                100.0 * e.accuracy,
                e.tokens
            );
            bar.line(line);
            append_jsonl(
                &metrics_path,
                &serde_json::json!({"step": step, "dev_loss": e.loss, "dev_accuracy": e.accuracy}),
            )?;
            last_eval = Some(e);
        }
        if step % r.run.checkpoint_every == 0 || step == total {
            state.elapsed_s = base_elapsed + started.elapsed().as_secs_f64();
            let dir = save_checkpoint(out, &model, &tok, &opt, &state, r.run.keep_checkpoints)?;
            last_checkpoint = dir.display().to_string();
            write_train_dev_plot(
                &out.join("loss.png"),
                "SFT loss (target tokens)",
                "cross-entropy",
                &state.train_history,
                &state.dev_history,
            )?;
        }
    }
    bar.finish();
    let final_dir = out.join("final");
    if state.step >= total {
        save_model(&model, &tok, &final_dir)?;
        let info = serde_json::json!({
            "strategy": r.data.strategy, "directions": r.data.directions,
            "num_units": num_units, "dedup_source_units": r.data.dedup_source,
            "dedup_target_units": r.data.dedup_target, "steps": state.step,
        });
        write_atomic(
            &final_dir.join("sft.json"),
            serde_json::to_string_pretty(&info)
                .expect("serializes")
                .as_bytes(),
        )?;
    }
    let elapsed = base_elapsed + started.elapsed().as_secs_f64();
    Ok(SftSummary {
        steps: state.step,
        resumed_from,
        examples: data.examples.len(),
        skipped: data.skipped.total(),
        dev_examples: dev.examples.len(),
        parameters: model.config().num_parameters(),
        first_loss,
        last_loss,
        dev_loss: last_eval.map(|e| e.loss),
        dev_accuracy: last_eval.map(|e| e.accuracy),
        tokens_per_s: rate.0,
        target_tokens_per_s: rate.1,
        elapsed_s: elapsed,
        final_model: final_dir,
    })
}
