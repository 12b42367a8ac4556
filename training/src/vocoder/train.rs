//! The HiFi-GAN training loop for a unit vocoder (jik876/hifi-gan `train.py`, as fairseq's
//! speech-to-speech unit vocoders are trained with speech-resynthesis `train.py`):
//!
//! 1. generator forward on a batch of random segments: `y_hat = G(units)`;
//! 2. discriminator step (after the mel-only warm-up): LSGAN loss of MPD + MSD on `y` against
//!    `y_hat.detach()`, AdamW(b1 0.8, b2 0.99);
//! 3. generator step: `mel_weight * L1(log-mel(y), log-mel(y_hat))` + duration MSE on
//!    `log(d + 1)` (+ after the warm-up: feature matching + LSGAN generator loss), AdamW.
//!
//! Both learning rates decay by `lr_decay` every `lr_decay_every` steps. The torch RNG (dropout
//! of the duration predictor) is reseeded from (seed, step) at every step and the data RNG is
//! saved in checkpoints, so a resumed run follows the same path as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tolk_models::audio::wav::{write_wav, WavFormat};
use tolk_models::vocoder::discriminators::HifiGanDiscriminator;
use tolk_models::vocoder::losses::{
    discriminator_loss, feature_loss, generator_loss, mel_l1_loss, MelConfig, MelSpectrogram,
};
use tolk_models::vocoder::{SynthesisOptions, TrainableGenerator, VocoderConfig};

use super::data::{load, sample_batch, DataOptions, Utterance, VocoderData, VocoderDataError};
use super::recipe::Recipe;
use crate::toolkit::checkpoint::{
    commit_checkpoint, latest_checkpoint, load_optimizer, read_state, write_state, CheckpointError,
};
use crate::toolkit::optim::{trainable_variables, AdamW, AdamWConfig, DecayScope, OptimError};
use crate::toolkit::progress::StepProgress;
use crate::toolkit::recipe::RecipeError;
use crate::toolkit::run_dir::{io, RunDirError};

/// Errors of a vocoder training run.
#[derive(Debug, thiserror::Error)]
pub enum VocoderError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// An input given neither on the command line nor in the recipe.
    #[error("no {what}: give --{flag} or data.{flag} in the recipe")]
    MissingInput {
        what: &'static str,
        flag: &'static str,
    },
    #[error(transparent)]
    Data(#[from] VocoderDataError),
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{checkpoint}: {part}: {source}")]
    Weights {
        checkpoint: PathBuf,
        part: &'static str,
        #[source]
        source: tch::TchError,
    },
    #[error(
        "the {what} loss is {value} at step {step}: training diverged; {kept} (lower the \
         learning rate or check the data)"
    )]
    Diverged {
        what: &'static str,
        value: f64,
        step: u64,
        kept: String,
    },
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Model(#[from] tolk_models::ModelError),
    #[error(transparent)]
    Audio(#[from] tolk_models::audio::AudioError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

type Result<T> = std::result::Result<T, VocoderError>;

/// Arguments of `tolk-train vocoder`.
#[derive(Debug, Clone, clap::Args)]
pub struct VocoderArgs {
    /// Recipe file (TOML; see `training/recipes/vocoder-*.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Manifest (overrides the recipe's `data.manifest`).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Units file (overrides `data.units`).
    #[arg(long)]
    pub units: Option<PathBuf>,
    /// Language of the vocoder (overrides `data.language`).
    #[arg(long)]
    pub language: Option<String>,
    /// Train on one voice only: speech whose manifest voice starts with this (e.g. `pico:`;
    /// overrides `data.voice`).
    #[arg(long)]
    pub voice: Option<String>,
    /// Output vocoder folder (config.json + model.safetensors; training state under `train/`).
    #[arg(long)]
    pub out: PathBuf,
    /// Train up to this step instead of the recipe's `train.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Steps before the discriminators join, instead of the recipe's `train.mel_only_steps`.
    #[arg(long)]
    pub mel_only_steps: Option<u64>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Ignore the checkpoints in `OUT/train/checkpoints` and start again.
    #[arg(long)]
    pub fresh: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One logged point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogPoint {
    pub step: u64,
    pub lr: f64,
    /// Means over the steps since the previous point.
    pub mel: f64,
    pub duration: f64,
    pub disc: f64,
    pub adv: f64,
    pub fm: f64,
    pub steps_per_second: f64,
}

/// Mel L1 on the held-out files at one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalPoint {
    pub step: u64,
    pub mel: f64,
}

/// What a run did; printed as JSON by the CLI.
#[derive(Debug, Clone, Serialize)]
pub struct VocoderSummary {
    pub out: PathBuf,
    pub language: String,
    pub step: u64,
    pub resumed_from: Option<u64>,
    pub generator_parameters: i64,
    pub discriminator_parameters: i64,
    pub files: usize,
    pub train_files: usize,
    pub eval_files: usize,
    pub skipped: usize,
    pub skipped_files: Vec<(String, String)>,
    pub train_audio_seconds: f64,
    pub log: Vec<LogPoint>,
    pub eval: Vec<EvalPoint>,
    /// Training steps per second of this invocation (evaluation and checkpoints excluded).
    pub steps_per_second: f64,
    pub wall_seconds: f64,
}

/// The checkpoint's `state.json`.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    format: String,
    step: u64,
    seed: u64,
    /// ChaCha8 word position of the data RNG (decimal u128).
    rng_word_pos: String,
    vocoder_config: serde_json::Value,
    log: Vec<LogPoint>,
    eval: Vec<EvalPoint>,
}

/// Version 2: the optimizer files are [`AdamW::save`]'s (with their step counts).
const STATE_FORMAT: &str = "tolk-vocoder-train/2";

#[derive(Default)]
struct Window {
    n: u64,
    mel: f64,
    dur: f64,
    disc: f64,
    adv: f64,
    fm: f64,
    train_seconds: f64,
}

fn finite(x: f64, what: &'static str, step: u64, last_ckpt: Option<u64>, dir: &Path) -> Result<()> {
    if !x.is_finite() {
        let kept = match last_ckpt {
            Some(s) => format!(
                "the last good checkpoint (step {s}) is kept in {}",
                dir.display()
            ),
            None => "no checkpoint was written yet".into(),
        };
        return Err(VocoderError::Diverged {
            what,
            value: x,
            step: step + 1,
            kept,
        });
    }
    Ok(())
}

/// Splits a (2B, ...) discriminator output into its real (first B) and generated rows.
fn halves(t: &Tensor, b: i64) -> (Tensor, Tensor) {
    (t.narrow(0, 0, b), t.narrow(0, b, b))
}

/// Mel L1 of full-utterance synthesis (no duration prediction) on the held-out files; writes
/// the first one to `sample`.
fn evaluate(
    gen: &TrainableGenerator,
    mel: &MelSpectrogram,
    eval: &[Utterance],
    sample: Option<&Path>,
) -> Result<Option<f64>> {
    if eval.is_empty() {
        return Ok(None);
    }
    let _g = tch::no_grad_guard();
    let model = gen.model()?;
    let hop = model.hop_length() as usize;
    let mut total = 0.0;
    for (i, u) in eval.iter().enumerate() {
        let wav = model.synthesize(&u.units, &SynthesisOptions::default())?;
        let n = u.units.len() * hop;
        let mut real = vec![0f32; n];
        let k = n.min(u.audio.len());
        real[..k].copy_from_slice(&u.audio[..k]);
        let real = Tensor::from_slice(&real)
            .to_device(model.device())
            .view([1, -1]);
        total += mel_l1_loss(mel, &real, &wav.view([1, -1]))?.double_value(&[]);
        if i == 0 {
            if let Some(p) = sample {
                let s = Vec::<f32>::try_from(&wav.to_device(Device::Cpu).to_kind(Kind::Float))?;
                write_wav(p, &s, model.sampling_rate() as u32, 1, WavFormat::Pcm16)?;
            }
        }
    }
    Ok(Some(total / eval.len() as f64))
}

/// Commits the checkpoint of `state.step` under `train_dir` (`checkpoints/step-N`, named by
/// `latest`; the shared crash-safe layout of [`crate::toolkit::checkpoint`]). Returns its folder.
fn save_checkpoint(
    train_dir: &Path,
    gen: &TrainableGenerator,
    dvs: &VarStore,
    opt_g: &AdamW,
    opt_d: &AdamW,
    state: &State,
) -> Result<PathBuf> {
    commit_checkpoint(train_dir, state.step, 1, |tmp: &Path| -> Result<()> {
        gen.var_store().save(tmp.join("generator.safetensors"))?;
        dvs.save(tmp.join("discriminator.safetensors"))?;
        opt_g.save(&tmp.join("optimizer_g.safetensors"))?;
        opt_d.save(&tmp.join("optimizer_d.safetensors"))?;
        write_state(tmp, "state.json", state)?;
        Ok(())
    })
}

/// The command-line value, else the recipe's.
fn given<T: Clone>(
    flag_value: &Option<T>,
    recipe_value: &Option<T>,
    what: &'static str,
    flag: &'static str,
) -> Result<T> {
    flag_value
        .clone()
        .or_else(|| recipe_value.clone())
        .ok_or(VocoderError::MissingInput { what, flag })
}

/// Runs `tolk-train vocoder`.
pub fn train_vocoder(args: &VocoderArgs) -> Result<VocoderSummary> {
    let t_start = Instant::now();
    let mut recipe = Recipe::from_file(&args.config)?;
    if let Some(n) = args.mel_only_steps {
        recipe.train.mel_only_steps = n;
    }
    let tr = &recipe.train;
    let manifest = given(
        &args.manifest,
        &recipe.data.manifest,
        "manifest",
        "manifest",
    )?;
    let units = given(&args.units, &recipe.data.units, "units file", "units")?;
    let language = given(
        &args.language,
        &recipe.data.language,
        "language",
        "language",
    )?;
    let voice = args.voice.clone().or_else(|| recipe.data.voice.clone());
    let total_steps = args.steps.unwrap_or(tr.steps);
    let device = tolk_models::device::available_device(&args.device)?;
    if let Some(n) = tr.threads {
        tch::set_num_threads(n);
    }
    let _span = tracing::info_span!("vocoder_train", language = %language).entered();

    // The model shape (hop length) before the data: segments are cut at the hop.
    let probe = recipe.model.vocoder_config(1)?;
    let hop = probe.hop_length() as usize;
    let data: VocoderData = load(&DataOptions {
        manifest: &manifest,
        units: &units,
        language: &language,
        voice: voice.as_deref(),
        hop_length: hop,
        sampling_rate: probe.sampling_rate as u32,
        segment_frames: tr.segment_frames,
        max_files: recipe.data.max_files,
        eval_files: recipe.data.eval_files,
    })?;
    let cfg: VocoderConfig = recipe.model.vocoder_config(data.num_units as i64)?;

    tch::manual_seed(tr.seed as i64);
    let mut gen = TrainableGenerator::new(cfg.clone(), device)?;
    let mut dvs = VarStore::new(device);
    let disc = HifiGanDiscriminator::with_divisor(&dvs.root(), tr.discriminator_channel_divisor)?;
    let adamw = AdamWConfig {
        betas: [tr.adam_b1, tr.adam_b2],
        eps: crate::toolkit::recipe::default_eps(),
        weight_decay: tr.weight_decay,
        decay: DecayScope::All,
    };
    let mut opt_g = AdamW::new(trainable_variables(gen.var_store()), adamw);
    let mut opt_d = AdamW::new(trainable_variables(&dvs), adamw);
    let mut rng = ChaCha8Rng::seed_from_u64(tr.seed);

    let train_dir = args.out.join("train");
    let samples = train_dir.join("samples");
    std::fs::create_dir_all(&samples).map_err(io(&samples))?;
    let mut step = 0u64;
    let mut log: Vec<LogPoint> = Vec::new();
    let mut eval_log: Vec<EvalPoint> = Vec::new();
    let mut resumed_from = None;
    let resume_from = if args.fresh {
        None
    } else {
        latest_checkpoint(&train_dir)?
    };
    let mut ckpt = train_dir.join("checkpoints");
    if let Some(dir) = resume_from {
        ckpt = dir;
        let mismatch = |message: String| CheckpointError::Mismatch {
            checkpoint: ckpt.clone(),
            message,
        };
        let state: State = read_state(&ckpt, "state.json")?;
        if state.format != STATE_FORMAT {
            return Err(mismatch(format!(
                "unknown checkpoint format {:?} (this version reads {STATE_FORMAT:?}); use \
                 another --out or --fresh",
                state.format
            ))
            .into());
        }
        if state.vocoder_config != cfg.to_json() || state.seed != tr.seed {
            return Err(mismatch(
                "the checkpoint was trained with another model config or seed than this recipe; \
                 use another --out or --fresh"
                    .into(),
            )
            .into());
        }
        let weights = |part: &'static str| {
            let checkpoint = ckpt.clone();
            move |source| VocoderError::Weights {
                checkpoint,
                part,
                source,
            }
        };
        gen.var_store_mut()
            .load(ckpt.join("generator.safetensors"))
            .map_err(weights("generator"))?;
        dvs.load(ckpt.join("discriminator.safetensors"))
            .map_err(weights("discriminator"))?;
        load_optimizer(&ckpt, "optimizer_g.safetensors", &mut opt_g)?;
        load_optimizer(&ckpt, "optimizer_d.safetensors", &mut opt_d)?;
        let word_pos = state.rng_word_pos.parse().map_err(|_| {
            mismatch(format!(
                "state.json: rng_word_pos {:?} is not a number",
                state.rng_word_pos
            ))
        })?;
        rng.set_word_pos(word_pos);
        step = state.step;
        log = state.log;
        eval_log = state.eval;
        resumed_from = Some(step);
        eprintln!("resuming from {} at step {step}", ckpt.display());
    }
    let mut last_ckpt = resumed_from;

    let mel = MelSpectrogram::new(MelConfig::unit_vocoder_16k(), device)?;
    let count = |vs: &VarStore| -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    };
    let (g_params, d_params) = (count(gen.var_store()), count(&dvs));
    eprintln!(
        "vocoder {language}: {} train files ({:.0} s), {} eval, {} skipped; generator {} \
         parameters, discriminators {}; steps {step}..{total_steps}",
        data.train.len(),
        data.train_seconds,
        data.eval.len(),
        data.skipped.len(),
        g_params,
        d_params
    );

    let pb = if args.quiet {
        StepProgress::quiet()
    } else {
        StepProgress::new(total_steps, step)
    };

    let b = tr.batch_size as i64;
    let dropout = cfg
        .duration_predictor
        .as_ref()
        .map(|d| d.var_pred_dropout)
        .unwrap_or(0.0);
    let mut w = Window::default();
    let mut train_seconds_total = 0.0;
    let steps_at_start = step;
    let state = |step: u64, rng: &ChaCha8Rng, log: &[LogPoint], eval: &[EvalPoint]| State {
        format: STATE_FORMAT.into(),
        step,
        seed: tr.seed,
        rng_word_pos: rng.get_word_pos().to_string(),
        vocoder_config: cfg.to_json(),
        log: log.to_vec(),
        eval: eval.to_vec(),
    };
    while step < total_steps {
        let t0 = Instant::now();
        tch::manual_seed(
            (tr.seed as i64)
                .wrapping_mul(1_000_003)
                .wrapping_add(step as i64),
        );
        let lr = recipe.learning_rate(step);
        let batch = sample_batch(&data.train, tr.batch_size, tr.segment_frames, hop, &mut rng);
        let y = batch.audio.to_device(device);
        let units = batch.units.to_device(device);
        let gan = step >= tr.mel_only_steps;

        let model = gen.model()?;
        let y_hat = model.forward_frames(&model.embed_batch(&units)?)?;

        let (mut d_val, mut adv_val, mut fm_val) = (0.0, 0.0, 0.0);
        if gan {
            let out = disc.forward(&Tensor::cat(&[&y, &y_hat.detach()], 0), true)?;
            let (mut real, mut fake) = (Vec::new(), Vec::new());
            for s in &out.scores {
                let (r, f) = halves(s, b);
                real.push(r);
                fake.push(f);
            }
            let (d_loss, _, _) = discriminator_loss(&real, &fake)?;
            d_val = d_loss.double_value(&[]);
            finite(d_val, "discriminator", step, last_ckpt, &ckpt)?;
            opt_d.zero_grad();
            d_loss.backward();
            opt_d.step(lr)?;
        }

        let mel_loss = mel_l1_loss(&mel, &y, &y_hat)?;
        let mel_val = mel_loss.double_value(&[]);
        finite(mel_val, "mel", step, last_ckpt, &ckpt)?;
        let mut g_loss = mel_loss * tr.mel_weight;
        let mut dur_val = 0.0;
        if let Some(d) = model.duration_loss(&batch.unit_rows, dropout)? {
            dur_val = d.double_value(&[]);
            finite(dur_val, "duration", step, last_ckpt, &ckpt)?;
            g_loss += d * tr.duration_weight;
        }
        if gan {
            // The discriminators only score here: no gradients for their weights.
            dvs.freeze();
            let out = disc.forward(&Tensor::cat(&[&y, &y_hat], 0), true)?;
            let (mut real_f, mut fake_f, mut fake_s) = (Vec::new(), Vec::new(), Vec::new());
            for (s, feats) in out.scores.iter().zip(&out.features) {
                fake_s.push(halves(s, b).1);
                let (r, f): (Vec<Tensor>, Vec<Tensor>) = feats.iter().map(|x| halves(x, b)).unzip();
                real_f.push(r);
                fake_f.push(f);
            }
            let fm = feature_loss(&real_f, &fake_f)?;
            let adv = generator_loss(&fake_s)?;
            fm_val = fm.double_value(&[]);
            adv_val = adv.double_value(&[]);
            g_loss = g_loss + fm + adv;
        }
        let g_val = g_loss.double_value(&[]);
        if !g_val.is_finite() {
            dvs.unfreeze();
        }
        finite(g_val, "generator", step, last_ckpt, &ckpt)?;
        opt_g.zero_grad();
        g_loss.backward();
        opt_g.step(lr)?;
        if gan {
            dvs.unfreeze();
        }
        drop(model);
        step += 1;
        let dt = t0.elapsed().as_secs_f64();
        train_seconds_total += dt;
        w.n += 1;
        w.mel += mel_val;
        w.dur += dur_val;
        w.disc += d_val;
        w.adv += adv_val;
        w.fm += fm_val;
        w.train_seconds += dt;
        pb.set_step(step);
        let n = w.n as f64;
        pb.message(format!(
            "mel {:.3} dur {:.3} D {:.3} adv {:.3} fm {:.3} | {:.2} steps/s",
            w.mel / n,
            w.dur / n,
            w.disc / n,
            w.adv / n,
            w.fm / n,
            n / w.train_seconds.max(1e-9)
        ));
        if step.is_multiple_of(tr.log_every) || step == total_steps {
            log.push(LogPoint {
                step,
                lr,
                mel: w.mel / n,
                duration: w.dur / n,
                disc: w.disc / n,
                adv: w.adv / n,
                fm: w.fm / n,
                steps_per_second: n / w.train_seconds.max(1e-9),
            });
            if args.quiet {
                tracing::info!(step, mel = w.mel / n, "vocoder training");
            }
            w = Window::default();
        }
        if (tr.eval_every > 0 && step.is_multiple_of(tr.eval_every)) || step == total_steps {
            let sample = samples.join(format!("step-{step:07}.wav"));
            if let Some(m) = evaluate(&gen, &mel, &data.eval, Some(&sample))? {
                eval_log.push(EvalPoint { step, mel: m });
                pb.line(format!("step {step}: held-out mel L1 {m:.4}"));
            }
        }
        if step.is_multiple_of(tr.checkpoint_every) || step == total_steps {
            ckpt = save_checkpoint(
                &train_dir,
                &gen,
                &dvs,
                &opt_g,
                &opt_d,
                &state(step, &rng, &log, &eval_log),
            )?;
            gen.export(&args.out)?;
            last_ckpt = Some(step);
        }
    }
    pb.finish();
    if step == steps_at_start {
        // Nothing to train (already at the target step): still leave the vocoder folder.
        gen.export(&args.out)?;
    }
    let done = (step - steps_at_start) as f64;
    Ok(VocoderSummary {
        out: args.out.clone(),
        language,
        step,
        resumed_from,
        generator_parameters: g_params,
        discriminator_parameters: d_params,
        files: data.files,
        train_files: data.train.len(),
        eval_files: data.eval.len(),
        skipped: data.skipped.len(),
        skipped_files: data.skipped.clone(),
        train_audio_seconds: data.train_seconds,
        log,
        eval: eval_log,
        steps_per_second: if train_seconds_total > 0.0 {
            done / train_seconds_total
        } else {
            0.0
        },
        wall_seconds: t_start.elapsed().as_secs_f64(),
    })
}
