//! The DPO / SimPO training loop with LoRA (PROST-LLM stage 3, arXiv 2601.16618
//! sections 1-3).
//!
//! The base translator's LLM is loaded in f32 and frozen; the adapters ([`crate::toolkit::lora`])
//! are the only trained tensors (AdamW, [`crate::toolkit::optim`]). DPO's reference model is the same model
//! with the adapters disabled (method.md section 2): its sequence log-probs are computed once for
//! every pair before training (they never change), as trl's `precompute_ref_log_probs`. SimPO
//! needs no reference.
//!
//! Per optimizer step: `batch_pairs` pairs in one `[2B, T]` forward pass, sequence log-probs over
//! completion tokens (summed for DPO, averaged for SimPO), the loss, backward, clipping, the
//! warm-up + cosine learning rate. Logged: loss, reward margin and accuracy (trl's
//! `rewards/margins` and `rewards/accuracies`), with a progress bar, `metrics.jsonl` and two PNGs.
//! Checkpoints (adapters in peft's format, optimizer moments, trainer state) are crash-safe
//! ([`crate::toolkit::checkpoint`]); running the command again resumes exactly (the pair order is a pure
//! function of seed and epoch, and libtorch's RNG is reseeded every step for dropout). At the end,
//! `final/adapter` holds the adapters and `final/translator` the base translator folder with the
//! adapters merged into its LLM (f32), ready for `tolk-train quantize` / `export`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use tolk_models::llama::{Llama, LoadOptions};
use tolk_models::prompt::{PromptFormat, SpecialToken};
use tolk_models::tokenizer::Tokenizer;
use tolk_models::translator::{ModelManifest, Translator, MANIFEST_FILE};

use super::data::{collate_pairs, epoch_batches, read_pairs, split_dev, Pair, PairsDataError};
use super::losses::{dpo_sigmoid_loss, sequence_logps, simpo_loss, LogpReduction, LossError};
use super::recipe::{LossKind, PreferenceRecipe};
use crate::toolkit::checkpoint::{
    commit_checkpoint, latest_checkpoint, load_optimizer, read_state, write_state, CheckpointError,
};
use crate::toolkit::lora::{Lora, LoraError};
use crate::toolkit::optim::{AdamW, AdamWConfig, DecayScope, OptimError};
use crate::toolkit::plot::{write_curves, write_train_dev_plot, Curve, LossPoint, PlotError};
use crate::toolkit::progress::StepProgress;
use crate::toolkit::recipe::{CheckedRecipe, RecipeError, RunFlags};
use crate::toolkit::run_dir::{append_jsonl, io, write_atomic, RunDirError};
use crate::toolkit::schedule::warmup_cosine;

/// Errors of a preference-optimization run.
#[derive(Debug, thiserror::Error)]
pub enum PreferenceError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// DPO was asked for without the reference log-probs it needs.
    #[error("DPO needs reference log-probs")]
    NoReference,
    #[error("every pair fell into the dev share ({dev_percent}%); lower data.dev_percent")]
    NoTrainingPairs { dev_percent: u32 },
    #[error("{0} already exists; choose another --out")]
    OutputExists(PathBuf),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error(transparent)]
    Pairs(#[from] PairsDataError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Loss(#[from] LossError),
    #[error(transparent)]
    Model(#[from] tolk_models::ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
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
    #[error("the reference model's log-probs of pair `{id}` are not finite ({value})")]
    ReferenceNotFinite { id: String, value: f64 },
}

type Result<T> = std::result::Result<T, PreferenceError>;

/// `tolk-train preference` arguments (the objective is the recipe's `loss.kind`).
#[derive(Debug, Clone, clap::Args)]
pub struct PreferenceArgs {
    #[command(flatten)]
    pub run: RunFlags,
    /// Override `data.pairs` (repeatable).
    #[arg(long = "pairs")]
    pub pairs: Vec<PathBuf>,
    /// Override `optim.epochs`.
    #[arg(long)]
    pub epochs: Option<u64>,
}

impl PreferenceArgs {
    /// The recipe with the command-line overrides applied.
    pub fn recipe(&self) -> Result<PreferenceRecipe> {
        let mut r = PreferenceRecipe::from_file(&self.run.recipe)?;
        self.run.apply(&mut r.run);
        if !self.pairs.is_empty() {
            r.data.pairs = self.pairs.clone();
        }
        if let Some(e) = self.epochs {
            r.optim.epochs = e;
        }
        r.validate().map_err(|e| e.in_file(&self.run.recipe))?;
        Ok(r)
    }
}

/// Mean figures over a set of pairs (or one batch).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct PreferenceFigures {
    pub loss: f64,
    /// Mean of chosen minus rejected reward.
    pub reward_margin: f64,
    /// Share of pairs whose chosen reward is higher.
    pub reward_accuracy: f64,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
    pub pairs: usize,
}

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    elapsed_s: f64,
    /// Recipe sections that must not change on resume, as JSON.
    fingerprint: String,
    loss: Vec<LossPoint>,
    margin: Vec<LossPoint>,
    accuracy: Vec<LossPoint>,
    dev_loss: Vec<LossPoint>,
    dev_margin: Vec<LossPoint>,
    dev_accuracy: Vec<LossPoint>,
}

impl TrainerState {
    /// Adds the figures of `step` to the training (or dev) curves.
    fn record(&mut self, step: u64, f: &PreferenceFigures, dev: bool) {
        let curves = if dev {
            [
                &mut self.dev_loss,
                &mut self.dev_margin,
                &mut self.dev_accuracy,
            ]
        } else {
            [&mut self.loss, &mut self.margin, &mut self.accuracy]
        };
        for (curve, value) in curves
            .into_iter()
            .zip([f.loss, f.reward_margin, f.reward_accuracy])
        {
            curve.push(LossPoint { step, loss: value });
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct PreferenceSummary {
    pub objective: LossKind,
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub train_pairs: usize,
    pub dev_pairs: usize,
    pub skipped_too_long: usize,
    pub trainable_parameters: i64,
    /// Dev figures before the first step (adapters at zero) and after the last.
    pub dev_before: Option<PreferenceFigures>,
    pub dev_after: Option<PreferenceFigures>,
    pub first_train: Option<PreferenceFigures>,
    pub last_train: Option<PreferenceFigures>,
    pub elapsed_s: f64,
    pub pairs_per_s: f64,
    /// `final/adapter` (peft) and `final/translator` (merged), when the run finished.
    pub adapter: Option<PathBuf>,
    pub merged_translator: Option<PathBuf>,
}

fn fingerprint(r: &PreferenceRecipe) -> String {
    let mut optim = r.optim.clone();
    optim.epochs = 0;
    serde_json::json!({"data": r.data, "model": r.model, "lora": r.lora, "loss": r.loss,
        "optim": optim, "seed": r.run.seed})
    .to_string()
}

/// The frozen base, the pairs and the objective.
struct Setup<'a> {
    model: &'a Llama,
    recipe: &'a PreferenceRecipe,
    pad_id: u32,
    device: Device,
}

impl Setup<'_> {
    fn reduction(&self) -> LogpReduction {
        match self.recipe.loss.kind {
            LossKind::Dpo => LogpReduction::Sum,
            LossKind::Simpo => LogpReduction::Mean,
        }
    }

    /// Sequence log-probs `[2B]` (chosen rows, then rejected) of `pairs`, with or without the
    /// adapters.
    fn logps(&self, pairs: &[&Pair], lora: Option<&Lora>) -> Result<Tensor> {
        let b = collate_pairs(pairs, self.pad_id);
        let ids = b.input_ids.to_device(self.device);
        let mask = b.padding_mask.to_device(self.device);
        let hidden =
            self.model
                .forward_hidden_lora(&ids, None, Some(&mask), lora.map(|l| l.adapters()))?;
        let logits = self.model.logits(&hidden)?;
        Ok(sequence_logps(&logits, &b.labels, self.reduction())?.0)
    }

    /// The loss of `pairs` given their reference log-probs `[2B]` (DPO only).
    fn loss(
        &self,
        pairs: &[&Pair],
        lora: &Lora,
        reference: Option<&Tensor>,
    ) -> Result<super::losses::PreferenceLoss> {
        let n = pairs.len() as i64;
        let policy = self.logps(pairs, Some(lora))?;
        let (pc, pr) = (policy.narrow(0, 0, n), policy.narrow(0, n, n));
        let l = &self.recipe.loss;
        Ok(match (l.kind, reference) {
            (LossKind::Dpo, Some(r)) => dpo_sigmoid_loss(
                &pc,
                &pr,
                &r.narrow(0, 0, n),
                &r.narrow(0, n, n),
                l.beta(),
                l.label_smoothing,
            )?,
            (LossKind::Dpo, None) => return Err(PreferenceError::NoReference),
            (LossKind::Simpo, _) => simpo_loss(&pc, &pr, l.beta(), l.gamma(), l.label_smoothing)?,
        })
    }

    /// Reference log-probs `[n, 2]` (chosen, rejected) of every pair, without adapters.
    fn reference_logps(&self, pairs: &[Pair]) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let bs = self.recipe.optim.batch_pairs;
        let mut parts = Vec::new();
        for chunk in pairs.chunks(bs) {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let lp = self.logps(&refs, None)?.to_device(Device::Cpu);
            let n = chunk.len() as i64;
            let both = Tensor::stack(&[lp.narrow(0, 0, n), lp.narrow(0, n, n)], 1);
            let v = Vec::<f32>::try_from(both.view([-1]))?;
            if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(PreferenceError::ReferenceNotFinite {
                    id: chunk[i / 2].id.clone(),
                    value: *x as f64,
                });
            }
            parts.push(both);
        }
        Ok(Tensor::cat(&parts, 0))
    }

    /// Mean figures over `pairs` with the adapters (no gradient, no dropout).
    fn evaluate(
        &self,
        pairs: &[Pair],
        lora: &mut Lora,
        reference: Option<&Tensor>,
    ) -> Result<PreferenceFigures> {
        let _g = tch::no_grad_guard();
        lora.set_training(false);
        let bs = self.recipe.optim.batch_pairs;
        let mut acc = FiguresSum::default();
        for (c, chunk) in pairs.chunks(bs).enumerate() {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let r = reference.map(|t| batch_reference(t, c * bs, chunk.len()));
            let out = self.loss(&refs, lora, r.as_ref())?;
            acc.add(&out)?;
        }
        lora.set_training(true);
        Ok(acc.mean())
    }
}

/// Rows `start..start + n` of a `[N, 2]` reference table as `[2n]` (chosen, then rejected).
fn batch_reference(table: &Tensor, start: usize, n: usize) -> Tensor {
    let rows = table.narrow(0, start as i64, n as i64);
    Tensor::cat(&[rows.select(1, 0), rows.select(1, 1)], 0)
}

/// Rows `idx` of a `[N, 2]` reference table as `[2n]`.
fn gather_reference(table: &Tensor, idx: &[usize]) -> Tensor {
    let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let rows = table.index_select(0, &i);
    Tensor::cat(&[rows.select(1, 0), rows.select(1, 1)], 0)
}

#[derive(Default)]
struct FiguresSum {
    loss: f64,
    chosen: f64,
    rejected: f64,
    correct: f64,
    n: usize,
}

impl FiguresSum {
    fn add(&mut self, out: &super::losses::PreferenceLoss) -> Result<()> {
        let sum = |t: &Tensor| -> Result<f64> { Ok(t.f_sum(Kind::Double)?.f_double_value(&[])?) };
        self.loss += sum(&out.losses)?;
        self.chosen += sum(&out.chosen_rewards)?;
        self.rejected += sum(&out.rejected_rewards)?;
        self.correct += sum(&out.chosen_rewards.f_gt_tensor(&out.rejected_rewards)?)?;
        self.n += out.losses.size()[0] as usize;
        Ok(())
    }

    fn mean(&self) -> PreferenceFigures {
        let n = self.n.max(1) as f64;
        PreferenceFigures {
            loss: self.loss / n,
            reward_margin: (self.chosen - self.rejected) / n,
            reward_accuracy: self.correct / n,
            chosen_reward: self.chosen / n,
            rejected_reward: self.rejected / n,
            pairs: self.n,
        }
    }
}

/// The base translator's manifest and LLM folder.
fn base_llm(r: &PreferenceRecipe) -> Result<(ModelManifest, PathBuf)> {
    let dir = &r.model.translator;
    let m = ModelManifest::from_file(&dir.join(MANIFEST_FILE))?;
    let llm = dir.join(&m.llm);
    Ok((m, llm))
}

/// Runs (or resumes) the recipe.
pub fn train_preference(
    r: &PreferenceRecipe,
    restart: bool,
    stop_after: Option<u64>,
) -> Result<PreferenceSummary> {
    let span =
        tracing::info_span!("preference", objective = ?r.loss.kind, out = %r.run.out.display());
    let _enter = span.enter();
    let device = tolk_models::device::available_device(&r.run.device)?;
    if r.run.threads > 0 {
        tch::set_num_threads(r.run.threads);
    }
    let out = &r.run.out;
    std::fs::create_dir_all(out).map_err(io(out))?;

    let (manifest, llm_dir) = base_llm(r)?;
    let model = Llama::load(
        &llm_dir,
        LoadOptions {
            device,
            dtype: Kind::Float,
            max_positions: r.data.max_len as i64 + 1,
        },
    )?;
    let tok = Tokenizer::for_model(&llm_dir, model.config().vocab_size)?;
    let format = PromptFormat::from_tokenizer(&tok, manifest.num_units)?;
    let vocab = model.config().vocab_size as u32;
    let set = read_pairs(&r.data.pairs, vocab, r.data.max_len)?;
    let skipped_too_long = set.too_long;
    if skipped_too_long > 0 {
        eprintln!(
            "warning: {skipped_too_long} pairs longer than data.max_len = {} skipped",
            r.data.max_len
        );
    }
    let (train, dev) = split_dev(set.pairs, r.data.dev_percent);
    if train.is_empty() {
        return Err(PreferenceError::NoTrainingPairs {
            dev_percent: r.data.dev_percent,
        });
    }
    let setup = Setup {
        model: &model,
        recipe: r,
        pad_id: format.id(SpecialToken::End),
        device,
    };

    let resume_from = if restart {
        None
    } else {
        latest_checkpoint(out)?
    };
    let (lora, state) = if let Some(ck) = &resume_from {
        let bad = |message: String| -> PreferenceError {
            CheckpointError::Mismatch {
                checkpoint: ck.clone(),
                message,
            }
            .into()
        };
        let state: TrainerState = read_state(ck, "trainer.json")?;
        if state.fingerprint != fingerprint(r) {
            return Err(bad(
                "the recipe's data, model, LoRA, loss or optimizer settings changed since this \
                 checkpoint (only optim.epochs may change); use --restart or another run.out"
                    .into(),
            ));
        }
        let lora = Lora::load_peft(&ck.join("adapter"), model.config(), device)?;
        let (c, w) = (lora.config(), &r.lora);
        if (c.r, c.alpha, c.use_rslora) != (w.r, w.alpha, w.use_rslora)
            || c.targets()? != w.targets()?
        {
            return Err(bad(
                "the checkpoint's adapter settings differ from [lora]".into()
            ));
        }
        (lora, Some(state))
    } else {
        let lora = Lora::new(model.config(), r.lora.clone(), device, r.run.seed as i64)?;
        (lora, None)
    };
    let mut lora_train = lora;
    // peft does not save the dropout probability's training switch: set it from the recipe.
    lora_train.set_training(true);
    let mut opt = AdamW::new(
        lora_train.named_parameters(),
        AdamWConfig {
            betas: r.optim.betas,
            eps: r.optim.eps,
            weight_decay: r.optim.weight_decay,
            decay: DecayScope::Matrices,
        },
    );
    let mut state = state.unwrap_or(TrainerState {
        step: 0,
        elapsed_s: 0.0,
        fingerprint: fingerprint(r),
        loss: Vec::new(),
        margin: Vec::new(),
        accuracy: Vec::new(),
        dev_loss: Vec::new(),
        dev_margin: Vec::new(),
        dev_accuracy: Vec::new(),
    });
    if let Some(ck) = &resume_from {
        load_optimizer(ck, "optimizer.safetensors", &mut opt)?;
    }
    let resumed_from = resume_from.as_ref().map(|_| state.step);
    let mut last_checkpoint = resume_from
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none (no checkpoint yet)".into());
    if let Some(s) = resumed_from {
        eprintln!("resuming from {last_checkpoint} at step {s}");
    }

    // The reference never changes: its log-probs are computed once (DPO only).
    let (train_ref, dev_ref) = if r.loss.kind == LossKind::Dpo {
        (
            Some(setup.reference_logps(&train)?),
            (!dev.is_empty())
                .then(|| setup.reference_logps(&dev))
                .transpose()?,
        )
    } else {
        (None, None)
    };

    let per_epoch = train.len().div_ceil(r.optim.batch_pairs) as u64;
    let total = per_epoch * r.optim.epochs;
    let warmup = (r.optim.warmup_ratio * total as f64).round() as u64;
    let dev_before = if !dev.is_empty() && state.step == 0 {
        let f = setup.evaluate(&dev, &mut lora_train, dev_ref.as_ref())?;
        state.record(0, &f, true);
        Some(f)
    } else {
        None
    };

    // Fault injection for the divergence test: `TOLK_PREF_FAULT_NAN_STEP=N` makes step N's loss NaN.
    let fault_nan_step: Option<u64> = std::env::var("TOLK_PREF_FAULT_NAN_STEP")
        .ok()
        .and_then(|v| v.parse().ok());
    let metrics_path = out.join("metrics.jsonl");
    let bar = StepProgress::new(total, state.step);
    let started = Instant::now();
    let base_elapsed = state.elapsed_s;
    let mut window = FiguresSum::default();
    let mut first_train: Option<PreferenceFigures> = None;
    let mut last_train: Option<PreferenceFigures> = None;
    let mut dev_after: Option<PreferenceFigures> = None;
    let mut steps_this_run = 0u64;
    let mut pairs_seen = 0usize;

    while state.step < total {
        if stop_after.is_some_and(|n| steps_this_run >= n) {
            break;
        }
        let step = state.step + 1;
        let epoch = (step - 1) / per_epoch;
        let order = epoch_batches(train.len(), r.optim.batch_pairs, r.run.seed, epoch);
        let idx = &order[((step - 1) % per_epoch) as usize];
        let batch: Vec<&Pair> = idx.iter().map(|&i| &train[i]).collect();
        // Dropout masks depend on the step only, so a resumed run draws the same ones.
        tch::manual_seed(r.run.seed as i64 ^ (step as i64).wrapping_mul(0x9e37_79b9));
        opt.zero_grad();
        let reference = train_ref.as_ref().map(|t| gather_reference(t, idx));
        let out_loss = setup.loss(&batch, &lora_train, reference.as_ref())?;
        let mut loss = out_loss.loss.double_value(&[]);
        if fault_nan_step == Some(step) {
            loss = f64::NAN;
        }
        let diverged = |what: String| PreferenceError::Diverged {
            step,
            what,
            last_checkpoint: last_checkpoint.clone(),
        };
        if !loss.is_finite() {
            return Err(diverged(format!("the loss is {loss}")));
        }
        out_loss.loss.backward();
        let gnorm = opt.clip_grad_norm(r.optim.grad_clip);
        if !gnorm.is_finite() {
            return Err(diverged(format!("the gradient norm is {gnorm}")));
        }
        let lr = warmup_cosine(step, r.optim.lr, warmup, total, r.optim.min_lr_ratio);
        opt.step(lr)?;
        window.add(&out_loss)?;
        state.step = step;
        steps_this_run += 1;
        pairs_seen += batch.len();
        bar.set_step(step);

        if step % r.run.log_every == 0 || step == total {
            let f = window.mean();
            window = FiguresSum::default();
            first_train.get_or_insert(f);
            last_train = Some(f);
            state.record(step, &f, false);
            let msg = format!(
                "loss {:.4} margin {:.4} acc {:.0}% lr {lr:.2e} |g| {gnorm:.3}",
                f.loss,
                f.reward_margin,
                100.0 * f.reward_accuracy
            );
            bar.figures(step, total, msg);
            append_jsonl(
                &metrics_path,
                &serde_json::json!({"step": step, "epoch": epoch, "loss": f.loss,
                    "reward_margin": f.reward_margin, "reward_accuracy": f.reward_accuracy,
                    "chosen_reward": f.chosen_reward, "rejected_reward": f.rejected_reward,
                    "lr": lr, "grad_norm": gnorm}),
            )?;
        }
        if (step % r.run.eval_every == 0 || step == total) && !dev.is_empty() {
            let f = setup.evaluate(&dev, &mut lora_train, dev_ref.as_ref())?;
            if !f.loss.is_finite() {
                return Err(diverged(format!("the dev loss is {}", f.loss)));
            }
            state.record(step, &f, true);
            let line = format!(
                "step {step}: dev loss {:.4}, reward margin {:.4}, accuracy {:.1}% ({} pairs)",
                f.loss,
                f.reward_margin,
                100.0 * f.reward_accuracy,
                f.pairs
            );
            bar.line(line);
            append_jsonl(
                &metrics_path,
                &serde_json::json!({"step": step, "dev_loss": f.loss,
                    "dev_reward_margin": f.reward_margin, "dev_reward_accuracy": f.reward_accuracy}),
            )?;
            dev_after = Some(f);
        }
        if step % r.run.checkpoint_every == 0 || step == total {
            state.elapsed_s = base_elapsed + started.elapsed().as_secs_f64();
            let dir = commit_checkpoint(out, step, r.run.keep_checkpoints, |tmp: &Path| {
                save_state(tmp, &lora_train, &opt, &state, &r.model.translator)
            })?;
            last_checkpoint = dir.display().to_string();
            write_plots(out, &state)?;
        }
    }
    bar.finish();
    let (mut adapter, mut merged) = (None, None);
    if state.step >= total {
        let a = out.join("final").join("adapter");
        lora_train.save_peft(&a, &r.model.translator.display().to_string())?;
        let m = out.join("final").join("translator");
        write_merged_translator(
            &r.model.translator,
            &manifest,
            &llm_dir,
            &model,
            &lora_train,
            &m,
        )?;
        adapter = Some(a);
        merged = Some(m);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = PreferenceSummary {
        objective: r.loss.kind,
        steps: state.step,
        resumed_from,
        train_pairs: train.len(),
        dev_pairs: dev.len(),
        skipped_too_long,
        trainable_parameters: lora_train.num_parameters(),
        dev_before,
        dev_after,
        first_train,
        last_train,
        elapsed_s: base_elapsed + elapsed,
        pairs_per_s: pairs_seen as f64 / elapsed.max(1e-9),
        adapter,
        merged_translator: merged,
    };
    if summary.adapter.is_some() {
        let json = serde_json::to_vec_pretty(&summary).expect("summary serializes");
        write_atomic(&out.join("summary.json"), &json)?;
    }
    Ok(summary)
}

fn save_state(
    dir: &Path,
    lora: &Lora,
    opt: &AdamW,
    state: &TrainerState,
    base: &Path,
) -> Result<()> {
    lora.save_peft(&dir.join("adapter"), &base.display().to_string())?;
    opt.save(&dir.join("optimizer.safetensors"))?;
    Ok(write_state(dir, "trainer.json", state)?)
}

fn write_plots(out: &Path, s: &TrainerState) -> Result<()> {
    write_train_dev_plot(
        &out.join("loss.png"),
        "Preference loss",
        "loss",
        &s.loss,
        &s.dev_loss,
    )?;
    write_curves(
        &out.join("rewards.png"),
        "Reward margin (chosen - rejected) and accuracy",
        "margin / accuracy",
        &[
            Curve {
                name: "train margin",
                points: &s.margin,
                markers: false,
            },
            Curve {
                name: "dev margin",
                points: &s.dev_margin,
                markers: true,
            },
            Curve {
                name: "train accuracy",
                points: &s.accuracy,
                markers: false,
            },
            Curve {
                name: "dev accuracy",
                points: &s.dev_accuracy,
                markers: true,
            },
        ],
    )?;
    Ok(())
}

/// `tolk-train merge` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// Base translator folder (the one the adapter was trained on).
    #[arg(long)]
    pub translator: PathBuf,
    /// peft adapter folder (adapter_config.json + adapter_model.safetensors), from
    /// `tolk-train preference` or from trl/peft on another machine.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output translator folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

/// Merges a peft adapter into a translator's LLM and writes the whole translator folder (f32
/// LLM). The adapter must fit the base model (errors list every mismatch).
pub fn merge_adapter(a: &MergeArgs) -> Result<PathBuf> {
    if a.out.exists() {
        return Err(PreferenceError::OutputExists(a.out.clone()));
    }
    let m = ModelManifest::from_file(&a.translator.join(MANIFEST_FILE))?;
    let llm_dir = a.translator.join(&m.llm);
    let model = Llama::load(
        &llm_dir,
        LoadOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
            max_positions: 4096,
        },
    )?;
    let lora = Lora::load_peft(&a.adapter, model.config(), Device::Cpu)?;
    write_merged_translator(&a.translator, &m, &llm_dir, &model, &lora, &a.out)?;
    Ok(a.out.clone())
}

/// Copies the base translator folder to `dest` with the adapters merged into its LLM (f32
/// weights), through a temporary sibling folder renamed into place; then loads it back.
fn write_merged_translator(
    base: &Path,
    manifest: &ModelManifest,
    base_llm: &Path,
    model: &Llama,
    lora: &Lora,
    dest: &Path,
) -> Result<()> {
    let tmp = dest.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    copy_tree(base, &tmp, &[base_llm.to_path_buf()])?;
    let merged = Llama::from_tensors(
        model.config().clone(),
        lora.merged_tensors(model)?.into_iter().collect(),
        LoadOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
            max_positions: model.max_positions(),
        },
    )?;
    let llm = tmp.join(&manifest.llm);
    merged.save(&llm)?;
    // Tokenizer and any other non-weight files of the base LLM folder.
    for e in std::fs::read_dir(base_llm).map_err(io(base_llm))? {
        let e = e.map_err(io(base_llm))?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n == "config.json" || n.ends_with(".safetensors") || n.ends_with(".index.json") {
            continue;
        }
        if e.path().is_file() {
            std::fs::copy(e.path(), llm.join(&name)).map_err(io(&e.path()))?;
        }
    }
    Translator::load(&tmp, Device::Cpu, Kind::Float)?;
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(())
}

/// Copies `src` into `dst` recursively, leaving out the paths in `skip`.
fn copy_tree(src: &Path, dst: &Path, skip: &[PathBuf]) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    for e in std::fs::read_dir(src).map_err(io(src))? {
        let e = e.map_err(io(src))?;
        let p = e.path();
        if skip.iter().any(|s| s == &p) {
            continue;
        }
        let target = dst.join(e.file_name());
        if p.is_dir() {
            copy_tree(&p, &target, skip)?;
        } else {
            std::fs::copy(&p, &target).map_err(io(&p))?;
        }
    }
    Ok(())
}
