//! `tolk units bench` and `tolk vocoder bench`: real-time factors of the speech front end and
//! the unit vocoder with random weights of the published shapes (only shapes matter for speed).

use anyhow::Result;
use clap::{Args, Subcommand};
use std::sync::Arc;
use tolk_models::device::available_device;
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
            let reports = tolk_models::units::bench::run(seconds, available_device(&device)?)?;
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
    let device = available_device(&args.device)?;
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

/// `tolk bench`: the translator over a set of utterances, offline and streaming.
#[derive(Args)]
pub struct BenchArgs {
    /// Translator folder.
    #[arg(long, default_value = "models/demo")]
    model: std::path::PathBuf,
    /// JSONL manifest (`audio` relative to the manifest's folder, `language` picks the
    /// direction unless --direction is given).
    #[arg(long)]
    manifest: Option<std::path::PathBuf>,
    /// WAV files (with --direction, default en-fr).
    wavs: Vec<std::path::PathBuf>,
    /// At most this many utterances.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    direction: Option<String>,
    /// com, s2st, s2tt or asr (default: the model's own mode).
    #[arg(long)]
    mode: Option<String>,
    /// `energy`, or the path of silero_vad.jit (streaming runs).
    #[arg(long, default_value = "energy")]
    vad: String,
    /// Also run every utterance's streaming pass with the kiosk's screen attached (display
    /// server and a headless Chromium on the subtitle page), to compare the latencies.
    #[arg(long)]
    screen: bool,
    /// Chromium for --screen (default: /usr/bin/chromium and the like).
    #[arg(long)]
    browser: Option<std::path::PathBuf>,
    /// Print only JSON.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct BenchRow {
    id: String,
    direction: String,
    audio_s: f64,
    offline_rtf: f64,
    offline_first_text_s: Option<f64>,
    offline_first_audio_s: Option<f64>,
    streaming_utterances: usize,
    streaming_rtf: Option<f64>,
    streaming_first_text_s: Option<f64>,
    streaming_first_audio_s: Option<f64>,
    /// The streaming pass again with the screen attached (`--screen`).
    screen_rtf: Option<f64>,
    screen_first_text_s: Option<f64>,
    screen_first_audio_s: Option<f64>,
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    Some(s[i.min(s.len() - 1)])
}

fn bench_inputs(args: &BenchArgs) -> Result<Vec<(String, std::path::PathBuf, Option<String>)>> {
    let mut v = Vec::new();
    if let Some(m) = &args.manifest {
        let text =
            std::fs::read_to_string(m).map_err(|e| anyhow::anyhow!("{}: {e}", m.display()))?;
        let base = m.parent().unwrap_or(std::path::Path::new("."));
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let j: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", m.display(), i + 1))?;
            let audio = j["audio"].as_str().ok_or_else(|| {
                anyhow::anyhow!("{} line {}: no `audio` field", m.display(), i + 1)
            })?;
            let lang = j["language"].as_str().map(|s| s.to_string());
            let id = j["id"].as_str().unwrap_or(audio).to_string();
            v.push((id, base.join(audio), lang));
        }
    }
    for w in &args.wavs {
        v.push((w.display().to_string(), w.clone(), None));
    }
    anyhow::ensure!(!v.is_empty(), "give --manifest FILE or WAV files");
    if let Some(n) = args.limit {
        v.truncate(n);
    }
    Ok(v)
}

pub fn run_bench(args: BenchArgs) -> Result<()> {
    use tolk_models::audio::condition::to_mono_16k;
    use tolk_models::translator::{Direction, Mode};
    use tolk_runtime::pipeline::{NullOut, PipelineOptions, Translating};
    let tr = crate::translate_cmd::load_translator(&args.model)?;
    let vad = crate::translate_cmd::parse_vad(&args.vad)?;
    let mode = match &args.mode {
        Some(m) => Mode::parse(m)?,
        None => tr.default_mode(),
    };
    let mut rows = Vec::new();
    let inputs = bench_inputs(&args)?;
    let screen = if args.screen {
        let browser = crate::screen_bench::find_browser(args.browser.as_deref())?;
        Some(crate::screen_bench::ScreenLoad::start(
            &args.model,
            tr.manifest(),
            Direction::EnFr,
            &browser,
        )?)
    } else {
        None
    };
    // The same audio through the front end in 20 ms chunks, translated at the endpoint
    // (latencies count from the endpoint); with `screen`, every event also goes to the page.
    let stream = |audio: &[f32],
                  direction: Direction,
                  screen: Option<&crate::screen_bench::ScreenLoad>|
     -> Result<Vec<tolk_runtime::pipeline::UtteranceReport>> {
        let opts = PipelineOptions::new(direction, mode, &tolk_config::VadConfig::default());
        let mut t = Translating::new(tr.clone(), &vad, &opts, 16_000)?;
        let mut reports = Vec::new();
        let mut text = String::new();
        let mut on = |ev: tolk_runtime::pipeline::StreamEvent<'_>| {
            if let Some(s) = screen {
                s.forward(&ev, direction, &mut text);
            }
        };
        for c in audio.chunks(320) {
            reports.extend(t.push(c, &mut NullOut, &mut on)?);
        }
        reports.extend(t.finish(&mut NullOut, &mut on)?);
        Ok(reports)
    };
    let rtf_of = |reports: &[tolk_runtime::pipeline::UtteranceReport]| {
        (!reports.is_empty()).then(|| {
            reports.iter().map(|r| r.processing_s).sum::<f64>()
                / reports.iter().map(|r| r.duration_s).sum::<f64>().max(1e-6)
        })
    };
    for (id, path, lang) in inputs {
        let direction = match (&args.direction, lang.as_deref()) {
            (Some(d), _) => Direction::parse(d)?,
            (None, Some("fr")) => Direction::FrEn,
            _ => Direction::EnFr,
        };
        let wav = tolk_models::audio::wav::read_wav(&path)?;
        let (audio, _) = to_mono_16k(&wav.samples, wav.sample_rate, wav.channels)?;
        let audio_s = audio.len() as f64 / 16_000.0;
        // Offline: the whole file after it ended (extraction, decoding, then synthesis).
        let t0 = std::time::Instant::now();
        let off = tr.translate_audio(&audio, direction, mode)?;
        let after_decode = t0.elapsed().as_secs_f64();
        if mode.has_units() && !off.units.is_empty() {
            tr.synthesize(&off.units, direction.tgt())?;
        }
        let offline_s = t0.elapsed().as_secs_f64();
        let ft = off.timings.first_text_s.map(|t| t + off.timings.extract_s);
        let fa = mode.has_units().then_some(offline_s);
        let _ = after_decode;
        let reports = stream(&audio, direction, None)?;
        let first = reports.first();
        let with_screen = match &screen {
            Some(s) => Some(stream(&audio, direction, Some(s))?),
            None => None,
        };
        let screen_first = with_screen.as_ref().and_then(|r| r.first());
        let row = BenchRow {
            id,
            direction: direction.as_str().into(),
            audio_s,
            offline_rtf: offline_s / audio_s.max(1e-6),
            offline_first_text_s: ft,
            offline_first_audio_s: fa,
            streaming_utterances: reports.len(),
            streaming_rtf: rtf_of(&reports),
            streaming_first_text_s: first.and_then(|r| r.first_text_s),
            streaming_first_audio_s: first.and_then(|r| r.first_audio_s),
            screen_rtf: with_screen.as_deref().and_then(rtf_of),
            screen_first_text_s: screen_first.and_then(|r| r.first_text_s),
            screen_first_audio_s: screen_first.and_then(|r| r.first_audio_s),
        };
        if !args.json {
            println!(
                "{:<24} {:>6.2} s  offline RTF {:.3} text {:>7} audio {:>7} | streaming RTF {:>7} \
                 text {:>7} audio {:>7} ({} utt.)",
                row.id,
                row.audio_s,
                row.offline_rtf,
                fmt_s(row.offline_first_text_s),
                fmt_s(row.offline_first_audio_s),
                row.streaming_rtf.map_or("-".into(), |r| format!("{r:.3}")),
                fmt_s(row.streaming_first_text_s),
                fmt_s(row.streaming_first_audio_s),
                row.streaming_utterances
            );
        }
        rows.push(row);
    }
    let col =
        |f: &dyn Fn(&BenchRow) -> Option<f64>| -> Vec<f64> { rows.iter().filter_map(f).collect() };
    let stats = |v: Vec<f64>| serde_json::json!({"n": v.len(), "p50": percentile(&v, 50.0), "p95": percentile(&v, 95.0)});
    let summary = serde_json::json!({
        "model": args.model,
        "mode": mode.as_str(),
        "threads": tch::get_num_threads(),
        "offline": {
            "rtf": stats(col(&|r| Some(r.offline_rtf))),
            "first_text_s": stats(col(&|r| r.offline_first_text_s)),
            "first_audio_s": stats(col(&|r| r.offline_first_audio_s)),
        },
        "streaming": {
            "rtf": stats(col(&|r| r.streaming_rtf)),
            "first_text_s": stats(col(&|r| r.streaming_first_text_s)),
            "first_audio_s": stats(col(&|r| r.streaming_first_audio_s)),
        },
        "streaming_with_screen": {
            "rtf": stats(col(&|r| r.screen_rtf)),
            "first_text_s": stats(col(&|r| r.screen_first_text_s)),
            "first_audio_s": stats(col(&|r| r.screen_first_audio_s)),
        },
        "utterances": rows,
    });
    if !args.json {
        println!("\n{:<30} {:>10} {:>10}", "", "p50", "p95");
        let mut passes = vec![("offline", "offline"), ("streaming", "streaming")];
        if screen.is_some() {
            passes.push(("streaming + screen", "streaming_with_screen"));
        }
        for (name, key) in passes {
            for m in ["rtf", "first_text_s", "first_audio_s"] {
                let s = &summary[key][m];
                println!(
                    "{:<30} {:>10} {:>10}",
                    format!("{name} {m}"),
                    s["p50"].as_f64().map_or("-".into(), |v| format!("{v:.3}")),
                    s["p95"].as_f64().map_or("-".into(), |v| format!("{v:.3}"))
                );
            }
        }
        println!();
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.0}ms", s * 1000.0))
}
