//! `tolk-train units`: speech units for every audio file of one or more manifests.
//!
//! Each manifest entry contributes its `audio` and, for paired entries, its `target_audio`; a
//! path string that several entries (or manifests) share is extracted once. Every file is read
//! as WAV, conditioned to 16 kHz mono (`tolk_models::audio::condition::to_mono_16k`), featurized
//! (MFCC at 50 Hz, HuBERT layer L or Whisper-encoder layer L) and assigned to the nearest k-means
//! centroid. With `--streamed` the units come from the kiosk's own unit stream
//! ([`tolk_models::translator::Translator::unit_stream`]'s options, 20 ms pushes) rather than the
//! offline encoder: a contextual encoder over a bounded window gives slightly different units
//! than over the whole utterance, and training on what the kiosk will see removes that gap. The centroids
//! come from a file, or are fitted first with seeded mini-batch k-means (k-means++ seeding,
//! `tolk_models::units::fit_minibatch`) on a seeded sample of frames of the same files.
//!
//! A file that is missing, fails to decode, holds NaN/Inf samples or is shorter than one frame is
//! skipped with a warning naming it and counted in the summary; it gets no line in the units file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Device, Kind, Tensor};
use tolk_models::units::{
    fit_minibatch, Featurizer, FitConfig, Hubert, HubertFeaturizer, HubertLoadOptions, KMeans,
    MfccFeaturizer, UnitExtractor, UnitId, Whisper, WhisperFeaturizer, WhisperLoadOptions,
};

use super::file::{read_units, write_units, UnitsTable};
use crate::corpus::manifest::{read_manifest, ReadOptions};

/// The MFCC settings of MFCC units (defined once in `tolk_models`, which the runtime uses).
pub use tolk_models::units::mfcc_50hz_config;

/// Which featurizer feeds the k-means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExtractorKind {
    /// Kaldi MFCC at 50 Hz ([`mfcc_50hz_config`]): CPU-friendly.
    Mfcc,
    /// HuBERT layer `--layer` of the Hugging Face folder `--hubert` (50 Hz).
    Hubert,
    /// Whisper-encoder layer `--layer` of the converted folder `--whisper` (50 Hz; see
    /// `models/convert/ctranslate2_whisper.py`, `make whisper-encoder`).
    Whisper,
}

impl ExtractorKind {
    /// The layer used when `--layer` is not given: mHuBERT's 11 (method.md section 5); for
    /// Whisper base the layer picked by `tolk-train units-probe` (README, "Units").
    pub fn default_layer(self) -> usize {
        match self {
            Self::Mfcc => 0,
            Self::Hubert => 11,
            Self::Whisper => 5,
        }
    }
}

/// Arguments of `tolk-train units`.
#[derive(Debug, Clone, clap::Args)]
pub struct UnitsArgs {
    /// JSONL manifest(s); `audio` and `target_audio` of every entry are extracted.
    #[arg(long = "manifest", required = true)]
    pub manifests: Vec<PathBuf>,
    #[arg(long, value_enum)]
    pub extractor: ExtractorKind,
    /// Hugging Face HubertModel folder (with `--extractor hubert`).
    #[arg(long)]
    pub hubert: Option<PathBuf>,
    /// Converted Whisper encoder folder (with `--extractor whisper`).
    #[arg(long)]
    pub whisper: Option<PathBuf>,
    /// Encoder layer whose hidden states are clustered (default: 11 for HuBERT, 5 for Whisper).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Extract through the kiosk's streaming unit extractor (bounded context and look-ahead,
    /// 20 ms pushes) instead of the offline encoder over the whole file.
    #[arg(long)]
    pub streamed: bool,
    /// Existing centroids (.safetensors or .npy, `[K, D]`).
    #[arg(long, conflicts_with = "fit_kmeans")]
    pub kmeans: Option<PathBuf>,
    /// Fit K centroids on a seeded sample of frames of the manifests' audio first.
    #[arg(long, value_name = "K")]
    pub fit_kmeans: Option<i64>,
    /// Frames sampled for fitting.
    #[arg(long, default_value_t = 100_000)]
    pub fit_frames: usize,
    /// Mini-batch k-means steps (batches of 1024 frames).
    #[arg(long, default_value_t = 300)]
    pub fit_steps: usize,
    /// Seed of the frame sample and of the fit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to save fitted centroids (.safetensors).
    #[arg(long, requires = "fit_kmeans")]
    pub save_kmeans: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` (HuBERT features and the k-means assignment).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Worker threads (default: the available cores for MFCC, 1 for HuBERT and Whisper, whose one
    /// worker uses libtorch's threads; with more, each worker gets an equal share of the cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// A units file of the same extractor and centroids (e.g. of the clean manifests): audio it
    /// holds is copied, not extracted again; its first such file is re-extracted as a check.
    #[arg(long)]
    pub reuse: Option<PathBuf>,
    /// Output units file (JSONL, see `tolk_training::units::file`).
    #[arg(long)]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run did; printed as JSON by the CLI.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UnitsSummary {
    pub extractor: String,
    pub num_units: u32,
    /// Distinct audio files named by the manifests.
    pub files: usize,
    /// Files with units written (extracted or reused).
    pub extracted: usize,
    /// Of those, copied from `--reuse`.
    pub reused: usize,
    pub skipped: usize,
    /// `(audio key, reason)` of each skipped file.
    pub skipped_files: Vec<(String, String)>,
    /// Seconds of the audio extracted in this run (reused files aside).
    pub audio_seconds: f64,
    /// Units extracted in this run (one per frame).
    pub frames: usize,
    /// Units per second of audio (50 for 50 Hz extractors).
    pub units_per_audio_second: f64,
    /// Units extracted per wall-clock second (throughput).
    pub units_per_second: f64,
    /// Frames the k-means was fitted on (0 when centroids were loaded).
    pub fit_frames: usize,
    pub wall_seconds: f64,
}

/// Units and seconds of audio of one file, or why it was skipped.
type FileResult = Result<(Vec<UnitId>, f64), String>;

/// One distinct audio file: its key (as written in the manifest) and where it is.
#[derive(Debug, Clone)]
pub(crate) struct AudioItem {
    pub(crate) key: String,
    pub(crate) path: PathBuf,
}

/// Distinct audio files of the manifests, in manifest order. A key that two manifests resolve to
/// different files is an error (the units file could not tell them apart).
fn collect_audio(manifests: &[PathBuf]) -> Result<Vec<AudioItem>> {
    let mut items: Vec<AudioItem> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in manifests {
        // Missing files are skipped and counted later, not a reason to drop the whole manifest.
        let manifest = read_manifest(m, ReadOptions { check_audio: false })
            .with_context(|| format!("reading manifest {}", m.display()))?;
        for e in &manifest.entries {
            for key in [e.audio.as_ref(), e.target_audio.as_ref()]
                .into_iter()
                .flatten()
            {
                let path = manifest.resolve(key);
                match seen.get(key) {
                    Some(&i) if items[i].path != path => bail!(
                        "audio {key:?} means {} in one manifest and {} in {}; the units file \
                         keys audio by the path as written, so give them distinct paths",
                        items[i].path.display(),
                        path.display(),
                        m.display()
                    ),
                    Some(_) => {}
                    None => {
                        seen.insert(key.clone(), items.len());
                        items.push(AudioItem {
                            key: key.clone(),
                            path,
                        });
                    }
                }
            }
        }
    }
    Ok(items)
}

/// 16 kHz mono samples of one file, or why it cannot be used.
pub(crate) fn load_audio(path: &Path) -> Result<Vec<f32>, String> {
    let wav = tolk_models::audio::wav::read_wav(path).map_err(|e| e.to_string())?;
    let (mono, report) =
        tolk_models::audio::condition::to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)
            .map_err(|e| e.to_string())?;
    if !report.is_clean() && mono.iter().any(|x| !x.is_finite()) {
        return Err("audio holds NaN or infinite samples".into());
    }
    Ok(mono)
}

fn progress(len: usize, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} files ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_string());
    pb
}

/// Seeded frame sample for fitting: files are visited in a seeded order and each contributes at
/// most `max(8, 2 * fit_frames / files)` randomly chosen frames, until `fit_frames` are taken.
pub(crate) fn sample_frames(
    featurizer: &dyn Featurizer,
    items: &[AudioItem],
    fit_frames: usize,
    seed: u64,
    quiet: bool,
) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.shuffle(&mut rng);
    let per_file = (2 * fit_frames / items.len().max(1)).max(8);
    let mut parts: Vec<Tensor> = Vec::new();
    let mut taken = 0usize;
    let pb = progress(items.len(), quiet, "sampling");
    for &i in &order {
        if taken >= fit_frames {
            break;
        }
        pb.inc(1);
        // Unreadable files are reported by the extraction pass.
        let Ok(samples) = load_audio(&items[i].path) else {
            continue;
        };
        let n = featurizer.num_frames(samples.len());
        if n == 0 {
            continue;
        }
        let feats = tch::no_grad(|| featurizer.features(&samples))
            .with_context(|| format!("features of {}", items[i].path.display()))?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?;
        let want = per_file.min(n).min(fit_frames - taken);
        let mut idx: Vec<i64> = rand::seq::index::sample(&mut rng, n, want)
            .into_iter()
            .map(|j| j as i64)
            .collect();
        idx.sort_unstable();
        parts.push(feats.f_index_select(0, &Tensor::from_slice(&idx))?);
        taken += want;
    }
    pb.finish_and_clear();
    if parts.is_empty() {
        bail!("no readable audio to fit k-means on");
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// The featurizer `args` name and its name in the units file.
pub(crate) fn load_featurizer(
    args: &UnitsArgs,
    device: Device,
) -> Result<(Arc<dyn Featurizer>, String)> {
    let layer = args.layer.unwrap_or(args.extractor.default_layer());
    let folder_name = |dir: &Path, default: &str| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| default.into())
    };
    Ok(match args.extractor {
        ExtractorKind::Mfcc => (
            Arc::new(MfccFeaturizer::new(mfcc_50hz_config())?),
            "mfcc13-50hz".to_string(),
        ),
        ExtractorKind::Hubert => {
            let dir = args
                .hubert
                .as_ref()
                .context("--extractor hubert needs --hubert DIR (a Hugging Face HubertModel)")?;
            let opts = HubertLoadOptions {
                device,
                dtype: Kind::Float,
            };
            let model = Hubert::load(dir, layer, opts)
                .with_context(|| format!("loading HuBERT from {}", dir.display()))?;
            (
                Arc::new(HubertFeaturizer::new(model)),
                format!("hubert:{}:layer{layer}", folder_name(dir, "hubert")),
            )
        }
        ExtractorKind::Whisper => {
            let dir = args.whisper.as_ref().context(
                "--extractor whisper needs --whisper DIR (a folder converted by \
                 models/convert/ctranslate2_whisper.py; `make whisper-encoder` writes one)",
            )?;
            let opts = WhisperLoadOptions {
                device,
                dtype: Kind::Float,
            };
            let model = Whisper::load(dir, layer, opts)
                .with_context(|| format!("loading the Whisper encoder from {}", dir.display()))?;
            (
                Arc::new(WhisperFeaturizer::new(Arc::new(model))),
                format!("whisper:{}:layer{layer}", folder_name(dir, "whisper")),
            )
        }
    })
}

/// Samples per push of `--streamed` extraction (20 ms, a typical audio callback period).
const STREAM_PUSH: usize = 320;

/// Units of one utterance as the kiosk's unit stream gives them: pushes of 20 ms, then finish.
pub(crate) fn streamed_units(
    extractor: &Arc<UnitExtractor>,
    samples: &[f32],
) -> Result<Vec<UnitId>, String> {
    let mut stream = extractor.stream(extractor.featurizer().stream_options());
    tolk_models::stream::run_chunked(&mut stream, samples, STREAM_PUSH).map_err(|e| e.to_string())
}

/// Runs `tolk-train units`: writes the units file and returns the summary.
pub fn run_units(args: &UnitsArgs) -> Result<UnitsSummary> {
    let start = Instant::now();
    let device = tolk_models::device::available_device(&args.device)?;
    if args.kmeans.is_none() && args.fit_kmeans.is_none() {
        bail!("give centroids with --kmeans FILE or fit them with --fit-kmeans K");
    }
    let items = collect_audio(&args.manifests)?;
    let _span = tracing::info_span!("units", files = items.len()).entered();
    if items.is_empty() {
        bail!("the manifests name no audio files");
    }

    let (featurizer, name) = load_featurizer(args, device)?;

    let (kmeans, fit_frames) = if let Some(path) = &args.kmeans {
        let km = KMeans::load(path, device, Kind::Float)
            .with_context(|| format!("loading centroids {}", path.display()))?;
        (km, 0)
    } else {
        let k = args.fit_kmeans.unwrap_or_default();
        if k < 1 {
            bail!("--fit-kmeans must be at least 1, got {k}");
        }
        let data = sample_frames(
            featurizer.as_ref(),
            &items,
            args.fit_frames,
            args.seed,
            args.quiet,
        )?;
        let n = data.size()[0] as usize;
        if (n as i64) < k {
            bail!("only {n} frames could be sampled, fewer than the {k} clusters asked for");
        }
        let mut cfg = FitConfig::new(k);
        cfg.seed = args.seed;
        cfg.steps = args.fit_steps;
        let km = fit_minibatch(&data.f_to_device(device)?, &cfg).context("fitting k-means")?;
        if let Some(out) = &args.save_kmeans {
            km.save(out)
                .with_context(|| format!("saving centroids to {}", out.display()))?;
        }
        (km, n)
    };
    let num_units = u32::try_from(kmeans.k()).context("too many centroids")?;
    let extractor_name = format!("{name}+kmeans{num_units}");
    let extractor = Arc::new(UnitExtractor::new(featurizer, kmeans)?);

    let jobs = args
        .jobs
        .unwrap_or_else(|| match args.extractor {
            ExtractorKind::Mfcc => std::thread::available_parallelism().map_or(1, |n| n.get()),
            ExtractorKind::Hubert | ExtractorKind::Whisper => 1,
        })
        .clamp(1, items.len());
    if jobs > 1 && !matches!(args.extractor, ExtractorKind::Mfcc) {
        // Parallel files, one libtorch thread each: an utterance's matrices are too small for
        // libtorch's intra-op threads to pay, and two pools would oversubscribe the cores.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / jobs).max(1) as i32);
    }
    let pb = progress(items.len(), args.quiet, "units");
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, FileResult)>();
    let extract_one = |item: &AudioItem| -> FileResult {
        let samples = load_audio(&item.path)?;
        let seconds = samples.len() as f64 / tolk_models::audio::SAMPLE_RATE as f64;
        let units = if args.streamed {
            streamed_units(&extractor, &samples)?
        } else {
            extractor.extract(&samples).map_err(|e| e.to_string())?
        };
        if units.is_empty() {
            return Err(format!("{seconds:.3} s of audio is shorter than one frame"));
        }
        Ok((units, seconds))
    };
    let mut results: Vec<Option<FileResult>> = vec![None; items.len()];
    // Reused units: the items the --reuse table holds are done; the rest are extracted.
    let mut reused = vec![false; items.len()];
    if let Some(path) = &args.reuse {
        let old = read_units(path).with_context(|| format!("--reuse {}", path.display()))?;
        if (old.num_units, old.extractor.as_str()) != (num_units, extractor_name.as_str()) {
            bail!(
                "--reuse {}: its units come from {} ({} units), not {extractor_name} ({num_units})",
                path.display(),
                old.extractor,
                old.num_units
            );
        }
        let mut checked = false;
        for (i, item) in items.iter().enumerate() {
            let Some(units) = old.get(&item.key) else {
                continue;
            };
            if !checked {
                // Same extractor name and K, but the centroids could differ: one file decides.
                if let Ok((fresh, _)) = extract_one(item) {
                    if fresh != units {
                        bail!(
                            "--reuse {}: {} re-extracted gives other units than the file holds                              (other centroids or encoder weights)",
                            path.display(),
                            item.key
                        );
                    }
                    checked = true;
                }
            }
            results[i] = Some(Ok((units.to_vec(), 0.0)));
            reused[i] = true;
        }
        tracing::info!(
            reused = reused.iter().filter(|r| **r).count(),
            "units reused"
        );
    }
    let todo: Vec<usize> = (0..items.len()).filter(|&i| !reused[i]).collect();
    pb.inc((items.len() - todo.len()) as u64);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, items, extract_one, todo) = (&next, &items, &extract_one, &todo);
            s.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else {
                    break;
                };
                let _ = tx.send((i, extract_one(&items[i])));
            });
        }
        drop(tx);
        for (i, r) in rx {
            if let Err(reason) = &r {
                pb.suspend(|| {
                    tracing::warn!(audio = %items[i].path.display(), "skipped: {reason}");
                    eprintln!("warning: skipping {}: {reason}", items[i].path.display());
                });
            }
            results[i] = Some(r);
            pb.inc(1);
        }
    });
    pb.finish_and_clear();

    let mut table = UnitsTable::new(num_units, extractor_name.clone());
    let mut skipped_files = Vec::new();
    let mut audio_seconds = 0.0;
    let mut frames = 0;
    for ((item, r), was_reused) in items.iter().zip(results).zip(&reused) {
        match r {
            Some(Ok((units, seconds))) => {
                audio_seconds += seconds;
                if !was_reused {
                    frames += units.len();
                }
                table.insert(item.key.clone(), units)?;
            }
            Some(Err(reason)) => skipped_files.push((item.key.clone(), reason)),
            None => skipped_files.push((item.key.clone(), "worker did not finish".into())),
        }
    }
    if table.is_empty() {
        bail!(
            "no audio file could be read ({} skipped, first: {:?}); nothing written",
            skipped_files.len(),
            skipped_files.first()
        );
    }
    write_units(&args.out, &table)?;
    let wall_seconds = start.elapsed().as_secs_f64();
    Ok(UnitsSummary {
        extractor: extractor_name,
        num_units,
        files: items.len(),
        extracted: table.len(),
        reused: reused.iter().filter(|r| **r).count(),
        skipped: skipped_files.len(),
        skipped_files,
        audio_seconds,
        frames,
        units_per_audio_second: frames as f64 / audio_seconds.max(f64::MIN_POSITIVE),
        units_per_second: frames as f64 / wall_seconds.max(f64::MIN_POSITIVE),
        fit_frames,
        wall_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfcc_units_are_50hz() {
        let f = MfccFeaturizer::new(mfcc_50hz_config()).unwrap();
        assert_eq!(f.frame_shift(), 320);
        // 1 s: (16000 - 400) / 320 + 1 = 49 frames.
        assert_eq!(f.num_frames(16_000), 49);
    }
}
