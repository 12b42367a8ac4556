//! `tolk`: the Tolk kiosk runtime.

mod model_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "tolk", version, about = "Tolk on-device speech-to-speech translator")]
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
    }
}
