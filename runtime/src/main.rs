//! `tolk`: the Tolk kiosk runtime.

mod bench_cmd;
mod model_cmd;
mod ota_cmd;
mod run_cmd;
mod screen_bench;
mod shapes_bench;
mod translate_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::prelude::*;
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
    /// Write a Chrome trace (chrome://tracing, Perfetto) of the pipeline and model spans.
    #[arg(long, global = true, value_name = "FILE")]
    tracing: Option<std::path::PathBuf>,
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
    /// Translate a WAV file through the streaming pipeline: prints the text, writes the speech.
    Translate(translate_cmd::TranslateArgs),
    /// The kiosk daemon: live translation from the configured source to the configured sink.
    Run(run_cmd::RunArgs),
    /// Real-time factor and latency percentiles of a translator, offline and streaming.
    Bench(bench_cmd::BenchArgs),
    /// Every stage at the shapes a product ships (random weights): encoders, decoders in f32,
    /// bf16, int8 and int4, the vocoder; with the Jetson projection of the decoder.
    BenchShapes(shapes_bench::ShapesArgs),
    /// Check CUDA, audio devices, GStreamer plugins, the broker and the model slots.
    Doctor {
        #[arg(long, default_value = "/etc/tolk/tolk.toml")]
        config: std::path::PathBuf,
        /// Treat a missing CUDA device as a failure (Jetson).
        #[arg(long)]
        require_cuda: bool,
        /// Read the machine's files (/etc/nv_tegra_release, /proc/meminfo, ...) under this
        /// folder instead of / (fixtures in tests).
        #[arg(long, default_value = "/", hide = true)]
        sysroot: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("TOLK_LOG").unwrap_or_else(|_| "warn".into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    // The Chrome trace records every span down to debug level (stages, decoder and vocoder
    // steps); the guard flushes the file when main returns.
    let (chrome, _trace_guard) = match &cli.tracing {
        Some(path) => {
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .file(path)
                .include_args(true)
                .build();
            (
                Some(layer.with_filter(tracing_subscriber::filter::LevelFilter::DEBUG)),
                Some(guard),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt).with(chrome).init();
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
        Command::Translate(args) => translate_cmd::run(args),
        Command::Run(args) => run_cmd::run(args),
        Command::Bench(args) => bench_cmd::run_bench(args),
        Command::BenchShapes(args) => shapes_bench::run(args),
        Command::Doctor {
            config,
            require_cuda,
            sysroot,
        } => ota_cmd::doctor(&config, require_cuda, &sysroot),
    }
}
