//! `tolk units bench` and `tolk vocoder bench`: real-time factors of the speech front end and
//! the unit vocoder with random weights of the published shapes (only shapes matter for speed).

use anyhow::Result;
use clap::{Args, Subcommand};
use std::sync::Arc;
use tolk_models::device::parse_device;
use tolk_models::vocoder::{bench, random_model, BenchOptions, VocoderConfig};

#[derive(Subcommand)]
pub enum UnitsCommand {
    /// Unit extraction RTF, offline and streaming: mHuBERT-base (layer 11, K 1000) and MFCC units.
    Bench {
        /// Seconds of synthetic audio.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum VocoderCommand {
    /// Unit HiFi-GAN RTF, offline and streaming, at the mHuBERT vocoder config and a small one.
    Bench(VocoderBenchArgs),
}

#[derive(Args)]
pub struct VocoderBenchArgs {
    /// Units per utterance (50 per second of audio).
    #[arg(long, default_value_t = 250)]
    units: usize,
    /// Streaming chunk sizes, in units.
    #[arg(long, value_delimiter = ',', default_value = "1,5,25")]
    chunks: Vec<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    json: bool,
}

pub fn run_units(cmd: UnitsCommand) -> Result<()> {
    match cmd {
        UnitsCommand::Bench {
            seconds,
            device,
            json,
        } => {
            let reports = tolk_models::units::bench::run(seconds, parse_device(&device)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                reports.iter().for_each(|r| print!("{r}"));
            }
            Ok(())
        }
    }
}

pub fn run_vocoder(cmd: VocoderCommand) -> Result<()> {
    let VocoderCommand::Bench(args) = cmd;
    let device = parse_device(&args.device)?;
    let mut all = Vec::new();
    for (name, cfg) in [
        ("mhubert", VocoderConfig::mhubert()),
        ("small-128", VocoderConfig::mhubert_small()),
    ] {
        let model = Arc::new(random_model(cfg, 0, device)?);
        let opts = BenchOptions {
            units: args.units,
            chunk_units: args.chunks.clone(),
            ..BenchOptions::default()
        };
        let r = bench(model, &opts)?;
        if !args.json {
            println!(
                "{name}: {:.2} M parameters, {} units = {:.2} s of audio, {} threads on {}, \
                 streaming look-ahead {} samples",
                r.parameters as f64 / 1e6,
                r.units,
                r.audio_seconds,
                r.threads,
                r.device,
                r.lookahead_samples
            );
            for t in &r.timings {
                println!(
                    "  {:<14} {:>8.3} s  RTF {:.3}{}",
                    t.mode,
                    t.seconds,
                    t.rtf,
                    t.first_audio_seconds
                        .map(|f| format!("  first audio after {f:.3} s"))
                        .unwrap_or_default()
                );
            }
        }
        all.push(serde_json::json!({"config": name, "report": r}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}
