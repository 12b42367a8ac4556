//! `tolk`: the Tolk kiosk runtime.

mod bench_cmd;
mod model_cmd;
mod ota_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tolk",
    version,
    about = "Tolk on-device speech-to-speech translator"
)]
struct Cli {
    /// Intra-op threads for libtorch (default: libtorch's choice, the physical cores).
    #[arg(long, global = true, env = "TOLK_THREADS")]
    threads: Option<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, run and benchmark a Llama-family decoder checkpoint.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// The speech front end: unit extraction.
    Units {
        #[command(subcommand)]
        command: bench_cmd::UnitsCommand,
    },
    /// The unit HiFi-GAN vocoder.
    Vocoder {
        #[command(subcommand)]
        command: bench_cmd::VocoderCommand,
    },
    /// Check or print the kiosk configuration (TOML).
    Config {
        #[command(subcommand)]
        command: ota_cmd::ConfigCommand,
    },
    /// Signed over-the-air model updates: keys, local install, status, the MQTT agent.
    Ota {
        #[command(subcommand)]
        command: ota_cmd::OtaCommand,
    },
    /// Check CUDA, audio devices, GStreamer plugins, the broker and the model slots.
    Doctor {
        #[arg(long, default_value = "/etc/tolk/tolk.toml")]
        config: std::path::PathBuf,
        /// Treat a missing CUDA device as a failure (Jetson).
        #[arg(long)]
        require_cuda: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TOLK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be positive");
        tch::set_num_threads(n);
    }
    match cli.command {
        Command::Model { command } => model_cmd::run(command),
        Command::Units { command } => bench_cmd::run_units(command),
        Command::Vocoder { command } => bench_cmd::run_vocoder(command),
        Command::Config { command } => ota_cmd::run_config(command),
        Command::Ota { command } => ota_cmd::run_ota(command),
        Command::Doctor {
            config,
            require_cuda,
        } => ota_cmd::doctor(&config, require_cuda),
    }
}
