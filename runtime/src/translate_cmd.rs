//! `tolk translate IN.wav -o OUT.wav`: one file through the streaming pipeline (fast WAV
//! source -> front end -> queue -> worker -> WAV sink), exactly what the kiosk runs. A file with
//! several utterances gives several translations, concatenated in the output.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tolk_models::audio::vad::SileroVad;
use tolk_models::translator::{Direction, Mode, Translator};
use tolk_runtime::audio::{AudioSink, AudioSource, Pacing, RingOptions};
use tolk_runtime::events::{Collect, EventSink, JsonLines};
use tolk_runtime::metrics::Metrics;
use tolk_runtime::pipeline::{Pipeline, PipelineOptions, SinkOut, VadKind};

#[derive(Args)]
pub struct TranslateArgs {
    /// Input WAV (any rate, channels averaged).
    input: PathBuf,
    /// Output WAV (16 kHz mono, 16-bit).
    #[arg(short, long)]
    output: PathBuf,
    /// Translator folder (the README section "The translator folder").
    #[arg(long, default_value = "models/demo")]
    model: PathBuf,
    #[arg(long, default_value = "en-fr")]
    direction: String,
    /// com, s2st, s2tt or asr (default: the model's own mode).
    #[arg(long)]
    mode: Option<String>,
    /// Print the pipeline's events as JSON lines on stdout.
    #[arg(long)]
    events: bool,
    /// `energy`, or the path of silero_vad.jit.
    #[arg(long, default_value = "energy")]
    vad: String,
    /// Answer utterances translated with a confidence below this "not understood" (no speech),
    /// as the kiosk's `pipeline.min_confidence` does; 0 = off.
    #[arg(long, default_value_t = 0.0)]
    min_confidence: f64,
}

/// The VAD from a CLI value: `energy` or a `silero_vad.jit` path.
pub fn parse_vad(s: &str) -> Result<VadKind> {
    if s == "energy" {
        return Ok(VadKind::energy());
    }
    Ok(VadKind::Silero(
        SileroVad::load(Path::new(s))
            .with_context(|| format!("--vad {s}: expected `energy` or a silero_vad.jit path"))?,
    ))
}

/// Loads the translator on the CPU (f32).
pub fn load_translator(dir: &Path) -> Result<Arc<Translator>> {
    let tr = Translator::load(dir, tch::Device::Cpu, tch::Kind::Float)
        .with_context(|| format!("loading the translator {}", dir.display()))?;
    Ok(Arc::new(tr))
}

pub fn run(args: TranslateArgs) -> Result<()> {
    let tr = load_translator(&args.model)?;
    let direction = Direction::parse(&args.direction)?;
    let mode = match &args.mode {
        Some(m) => Mode::parse(m)?,
        None => tr.default_mode(),
    };
    let mut opts = PipelineOptions::new(direction, mode, &tolk_config::VadConfig::default());
    // A file is translated whole: nothing is dropped.
    opts.queue_limit = usize::MAX;
    opts.min_confidence = args.min_confidence;
    let ring = RingOptions::default();
    let sink = AudioSink::wav(&args.output, tr.sample_rate() as u32, ring)?;
    let out = SinkOut::new(sink, tr.sample_rate() as u32, Duration::from_secs(30))?;
    let events: Arc<dyn EventSink> = if args.events {
        Arc::new(JsonLines::stdout())
    } else {
        Arc::new(Collect::default())
    };
    let mut p = Pipeline::start(
        tr,
        parse_vad(&args.vad)?,
        opts,
        out,
        events,
        Arc::new(Metrics::new()),
    )?;
    let mut src = AudioSource::wav(&args.input, Pacing::Fast, ring)?;
    p.feed(&mut src, &AtomicBool::new(false))?;
    let mut sum = p.finish(true);
    sum.output.finish()?;
    sum.reports.sort_by_key(|r| r.id);
    for (id, e) in &sum.failed {
        eprintln!("utterance {id}: {e}");
    }
    if sum.reports.is_empty() {
        eprintln!("no speech found in {}", args.input.display());
    }
    if !args.events {
        for r in &sum.reports {
            if r.not_understood {
                println!(
                    "(not understood: {:?}, confidence {:.3})",
                    r.text, r.confidence
                );
            } else {
                println!("{}", r.text);
            }
            let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.0} ms", s * 1e3));
            eprintln!(
                "  [{} {:.1} s of speech] first text {}, first audio {} after the endpoint; \
                 real-time factor {:.2}; confidence {:.3}",
                r.direction,
                r.duration_s,
                ms(r.first_text_s),
                ms(r.first_audio_s),
                r.rtf,
                r.confidence
            );
        }
    }
    eprintln!(
        "{} utterance(s) -> {}",
        sum.reports.len(),
        args.output.display()
    );
    Ok(())
}
