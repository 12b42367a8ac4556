//! `tolk-train`: the Tolk host side. Subcommands: `bundle` (sign, verify) and `publish`;
//! training recipes add their own subcommands here.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tolk_config::bundle::{verify_bundle_dir, BundleInfo, PublicKey};
use tolk_ota::mqtt::BrokerSettings;
use tolk_ota::publish::{publish, Chaos, PublishOptions, TransferMode};
use tracing_subscriber::EnvFilter;

mod gpu_check;

#[derive(Parser)]
#[command(
    name = "tolk-train",
    version,
    about = "Tolk host side: training and model releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Signed model bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Generate the synthetic English-French kiosk speech corpus (espeak-ng and SVOX Pico voices, 16 kHz, JSONL).
    SynthCorpus(tolk_training::corpus::SynthCorpusArgs),
    /// Noisy, padded copies of a manifest's source speech (random silence, gain, white or brown
    /// noise; the target side is kept), for training a model that copes with a real room.
    Augment(tolk_training::corpus::augment::AugmentArgs),
    /// The target side of a paired manifest spoken again in one voice (the kiosk's output
    /// voice), so that chain-of-modality target units and the vocoder agree on one voice.
    Revoice(tolk_training::corpus::revoice::RevoiceArgs),
    /// Visitor test sets: held-out sentences spoken by voices a model never heard, human
    /// recordings, simulated rooms, babble and noise (test-only entries marked as such).
    Voices(tolk_training::corpus::voices::VoicesArgs),
    /// Extract speech units for every audio file of manifests (k-means loaded or fitted).
    Units(tolk_training::units::UnitsArgs),
    /// Compare encoder layers by how well their units find the same sentence across voices.
    UnitsProbe(tolk_training::units::ProbeArgs),
    /// Train a byte-level BPE tokenizer on manifests' texts (models trained from scratch).
    Tokenizer(tolk_training::units::TokenizerArgs),
    /// Supervised fine-tuning from a recipe (resumes from the output folder's last checkpoint).
    Sft(tolk_training::sft::SftArgs),
    /// Training throughput and numerics of the SFT step against the same step in PyTorch.
    SftBench(tolk_training::sft::bench::SftBenchArgs),
    /// Parity of every model on a CUDA device against the CPU, and the decode speed there, as
    /// one JSON (`make gpu-check`); says so and exits 0 without CUDA.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Assemble a translator folder (tolk-model.json) from SFT, k-means and vocoder outputs.
    Package(tolk_training::package::PackageArgs),
    /// Preference optimization with LoRA (DPO or SimPO, as the recipe's `loss.kind` says) on
    /// `tolk-train pairs` output; ends with the adapters and a merged translator folder.
    Preference(tolk_training::preference::PreferenceArgs),
    /// Merge a peft LoRA adapter into a translator folder's LLM (f32), e.g. one trained with
    /// trl + peft under torchrun/FSDP on another machine.
    Merge(tolk_training::preference::MergeArgs),
    /// Score line-aligned hypotheses against references (BLEU, chrF, METEOR, WER).
    Score(tolk_training::metrics::score::ScoreArgs),
    /// Train a unit HiFi-GAN vocoder for one language (recipe TOML, exact resume).
    Vocoder(tolk_training::vocoder::VocoderArgs),
    /// Evaluate a translator folder on a held-out manifest (BLEU, METEOR, unit error rate, MCD,
    /// ASR-BLEU); writes report.md, report.json, hyps.txt and the wavs.
    Eval(tolk_training::eval::EvalArgs),
    /// Preference pairs by self-sampling and back-translation (pairs.jsonl for DPO/SimPO, TRL
    /// format), with summary.json and margins.png; --shard i/n and --merge for parallel runs.
    Pairs(tolk_training::preference::pairs::PairsArgs),
    /// Build a signed, versioned OTA bundle from a translator folder (checked by loading it and
    /// probing the copy; written aside and renamed into place, never half-written).
    Export(tolk_training::export::ExportArgs),
    /// Quantize a translator folder's decoder weight-only (int8 per channel, int4 group-wise);
    /// with --report-manifest, compare it with the f32 model (size, logits, greedy agreement,
    /// decode tokens/s).
    Quantize(tolk_training::quantize::QuantizeArgs),
    /// Send a signed bundle to one device over MQTT and follow the job to its end.
    Publish {
        /// Bundle folder holding manifest.json and manifest.sig.
        bundle: PathBuf,
        #[arg(long)]
        device: String,
        /// mqtt://host:port or mqtts://host:port.
        #[arg(long)]
        broker: String,
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long)]
        client_cert: Option<PathBuf>,
        #[arg(long)]
        client_key: Option<PathBuf>,
        /// File with `username:password`.
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// Job id (default: `<bundle name>-v<version>`).
        #[arg(long)]
        job_id: Option<String>,
        #[arg(long, default_value = "tolk/devices")]
        topic_prefix: String,
        /// Data-plane block size in bytes (<= 131072).
        #[arg(long, default_value_t = 65536)]
        block_size: u32,
        /// Let the device fetch the files from this URL (file:///...) instead of MQTT blocks.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Testing: drop every n-th block once.
        #[arg(long, hide = true)]
        chaos_drop_every: Option<usize>,
        /// Testing: send every block twice.
        #[arg(long, hide = true)]
        chaos_duplicate: bool,
        /// Testing: answer requests in reverse order.
        #[arg(long, hide = true)]
        chaos_reverse: bool,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Hash every file of DIR and write manifest.json + manifest.sig.
    Sign {
        dir: PathBuf,
        /// Secret key file(s) from `tolk ota keygen` (give two during a key rotation).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: u64,
        /// Must equal the device's `ota.compatible`.
        #[arg(long)]
        compatible: String,
        #[arg(long, default_value = "0.1.0")]
        min_runtime: String,
        /// Days until the manifest expires.
        #[arg(long, default_value_t = 30)]
        expires_in_days: u64,
    },
    /// Verify a bundle's signature and every file against the given trusted keys.
    Verify {
        dir: PathBuf,
        #[arg(long = "trusted-key", required = true)]
        trusted: Vec<String>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TOLK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Score(a) => {
            println!("{}", tolk_training::metrics::score::score_files(&a)?);
            Ok(())
        }
        Command::Sft(a) => {
            let recipe = a.recipe()?;
            let summary = tolk_training::sft::train(&recipe, a.run.restart, a.run.stop_after)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Preference(a) => {
            let recipe = a.recipe()?;
            let summary = tolk_training::preference::train_preference(
                &recipe,
                a.run.restart,
                a.run.stop_after,
            )?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Merge(a) => {
            let out = tolk_training::preference::merge_adapter(&a)?;
            println!("merged translator written to {}", out.display());
            Ok(())
        }
        Command::Vocoder(a) => {
            let summary = tolk_training::vocoder::train_vocoder(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Pairs(a) => {
            let s = tolk_training::preference::pairs::run_pairs(&a)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            eprintln!(
                "{} utterances, {} pairs kept ({:.2} utterances/s); written to {}",
                s.entries_seen,
                s.pairs_kept,
                s.utterances_per_second,
                a.out.display()
            );
            Ok(())
        }
        Command::Voices(a) => {
            for (name, m) in tolk_training::corpus::voices::run_voices(&a)? {
                println!(
                    "{name}: {} entries -> {}",
                    m.entries.len(),
                    m.path.display()
                );
            }
            Ok(())
        }
        Command::Eval(a) => {
            let r = tolk_training::eval::run_eval(&a)?;
            print!("{}", std::fs::read_to_string(a.out.join("report.md"))?);
            eprintln!(
                "{} utterances evaluated; report in {}",
                r.utterances,
                a.out.display()
            );
            Ok(())
        }
        Command::GpuCheck(a) => gpu_check::run(a),
        Command::SftBench(a) => {
            let r = tolk_training::sft::bench::run_bench(&a)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            eprintln!(
                "{} params, {} threads, {} timed steps: tolk {:.0} target tok/s, PyTorch {:.0} \
                 target tok/s ({:.2}x); max loss diff {:.2e}, max weight diff {:.2e}",
                r.parameters,
                r.threads,
                r.timed_steps,
                r.tolk_target_tokens_per_s,
                r.torch_target_tokens_per_s,
                r.speedup,
                r.max_loss_diff,
                r.max_weight_diff
            );
            Ok(())
        }
        Command::Export(a) => {
            let s = tolk_training::export::export(&a).with_context(|| {
                format!("exporting {} to {}", a.model.display(), a.out.display())
            })?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            eprintln!(
                "exported {} v{}: {} files, {} bytes, signed, in {} ({:.1} s)",
                s.name,
                s.version,
                s.files,
                s.bytes,
                s.out.display(),
                s.seconds
            );
            Ok(())
        }
        Command::Quantize(a) => {
            let (s, report) = tolk_training::quantize::run_quantize(&a).with_context(|| {
                format!("quantizing {} to {}", a.model.display(), a.out.display())
            })?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            if let Some(r) = report {
                println!("{}", tolk_training::quantize::report_table(&r));
            }
            Ok(())
        }
        Command::Package(a) => {
            let s = tolk_training::package::package(&a)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
        Command::Units(a) => {
            let summary = tolk_training::units::run_units(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::UnitsProbe(a) => {
            print!("{}", tolk_training::units::run_probe(&a)?);
            Ok(())
        }
        Command::Tokenizer(a) => {
            let summary = tolk_training::units::run_tokenizer(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Augment(a) => {
            let summary =
                tolk_training::corpus::augment::augment(&a.manifest, &a.out, &a.config())?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Revoice(a) => {
            let summary = tolk_training::corpus::revoice::revoice(&a)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::SynthCorpus(a) => {
            let summary = tolk_training::corpus::build_corpus(&a.config()?)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Bundle {
            command:
                BundleCommand::Sign {
                    dir,
                    keys,
                    name,
                    version,
                    compatible,
                    min_runtime,
                    expires_in_days,
                },
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let info = BundleInfo {
                name,
                version,
                compatible,
                min_runtime,
                expires: now + expires_in_days * 86_400,
            };
            let key_refs: Vec<&std::path::Path> = keys.iter().map(|p| p.as_path()).collect();
            let m = tolk_training::bundle::sign(&dir, &info, &key_refs)
                .with_context(|| format!("signing {}", dir.display()))?;
            println!(
                "signed {} v{} ({} files, {} bytes) with {} key(s)",
                m.name,
                m.version,
                m.files.len(),
                m.total_size(),
                keys.len()
            );
            Ok(())
        }
        Command::Bundle {
            command: BundleCommand::Verify { dir, trusted },
        } => {
            let keys = trusted
                .iter()
                .map(|k| PublicKey::parse(k))
                .collect::<Result<Vec<_>, _>>()?;
            let (m, ..) = verify_bundle_dir(&dir, &keys)?;
            println!(
                "{} v{}: signature and {} files verify",
                m.name,
                m.version,
                m.files.len()
            );
            Ok(())
        }
        Command::Publish {
            bundle,
            device,
            broker,
            ca,
            client_cert,
            client_key,
            credentials,
            job_id,
            topic_prefix,
            block_size,
            url,
            timeout_s,
            chaos_drop_every,
            chaos_duplicate,
            chaos_reverse,
        } => {
            let (mbytes, _) = tolk_config::bundle::read_metadata(&bundle)?;
            let m = tolk_config::bundle::Manifest::parse(&mbytes)?;
            let job_id = job_id.unwrap_or_else(|| format!("{}-v{}", m.name, m.version));
            let settings = BrokerSettings {
                url: broker,
                ca,
                client_cert,
                client_key,
                credentials,
                keep_alive_s: 30,
            };
            let mut o = PublishOptions::new(&bundle, &device, settings, &job_id);
            o.topic_prefix = topic_prefix;
            o.timeout = Duration::from_secs(timeout_s);
            o.transfer = match url {
                Some(u) => TransferMode::Url(u),
                None => TransferMode::Mqtt { block_size },
            };
            o.chaos = Chaos {
                drop_every: chaos_drop_every,
                duplicate: chaos_duplicate,
                reverse: chaos_reverse,
            };
            let (r, stats) = publish(&o, |r| {
                eprintln!("{device}: {:?} {}", r.status, r.reason);
            })?;
            println!("{}", serde_json::to_string(&r)?);
            eprintln!(
                "blocks sent {}, dropped {}, requests {}, connects {}",
                stats.blocks_sent, stats.blocks_dropped, stats.requests, stats.connects
            );
            if r.status != tolk_config::protocol::JobStatus::Succeeded {
                bail!("job {job_id} ended {:?}: {}", r.status, r.reason);
            }
            Ok(())
        }
    }
}
