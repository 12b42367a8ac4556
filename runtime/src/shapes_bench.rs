//! `tolk bench-shapes`: the kiosk's stages at the shapes a product ships, with random weights
//! (only shapes matter for speed): the Whisper-base and mHuBERT-base unit encoders streaming,
//! a SmolLM2-135M- and a Llama-3.2-1B-shaped decoder with the unit vocabulary in f32, bf16, int8
//! and int4 (the packed CPU kernels), and the mHuBERT unit HiFi-GAN in 4-unit chunks. Per stage:
//! the real-time factor of one utterance; per decoder: the endpoint-to-first-audio time its part
//! takes (prefill of the source units, the text, the first vocoder chunk of units) and the bytes
//! read per decode step, from which the Jetson budget is projected
//! (`../shared/reference/edge-budget.md`: tokens/s <= bandwidth / bytes per token, at 70 % of
//! the ceiling as good runtimes reach).
//!
//! The utterance: `--utterance-s` seconds of speech in, as many out; source and target units
//! deduplicated (35 per second), 3.5 text tokens per second, as the edge budget counts them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tch::{Device, Kind};
use tolk_models::generate::{generate, GenerateOptions};
use tolk_models::llama::quant::save_quantized;
use tolk_models::llama::{Llama, LlamaConfig, LoadOptions, QuantConfig, QuantRuntime, QuantScheme};
use tolk_models::sampling::{Sampler, SamplingConfig};
use tolk_models::units::bench::{
    measure, mhubert_base_random, synthetic_audio, whisper_base_random,
};
use tolk_models::units::StreamOptions;
use tolk_models::vocoder::{bench as vocoder_bench, random_model, BenchOptions, VocoderConfig};

/// Deduplicated units per second of speech (source and target).
const UNITS_PER_S: f64 = 35.0;
/// Text tokens per second of speech.
const TEXT_PER_S: f64 = 3.5;
/// Units handed to the vocoder at a time (the kiosk's `vocoder_chunk_units`).
const VOCODER_CHUNK: usize = 4;
/// Unit vocabulary added to the text vocabulary, and the prompt's special tokens.
const UNIT_VOCAB: i64 = 1000 + 16;
/// Share of the bandwidth ceiling a good runtime reaches (edge-budget.md: 60-80 %).
const CEILING_SHARE: f64 = 0.7;
/// Jetson read bandwidths (GB/s), edge-budget.md.
const JETSONS: [(&str, f64); 3] = [
    ("AGX Orin", 204.8),
    ("Orin NX 16 GB / Orin Nano Super", 102.0),
    ("Orin Nano 8 GB", 68.0),
];

#[derive(Args)]
pub struct ShapesArgs {
    /// Decoder shapes: smollm2-135m, llama-3.2-1b.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "smollm2-135m,llama-3.2-1b"
    )]
    decoders: Vec<String>,
    /// Weight formats: f32, bf16, int8, int4.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,int8,int4")]
    formats: Vec<String>,
    /// Seconds of speech in (and out) of the modelled utterance.
    #[arg(long, default_value_t = 3.0)]
    utterance_s: f64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct EncoderRow {
    name: String,
    offline_rtf: f64,
    streaming_rtf: f64,
    /// Streaming cost over offline cost.
    streaming_over_offline: f64,
}

#[derive(Debug, Serialize)]
struct JetsonRow {
    device: &'static str,
    bandwidth_gb_s: f64,
    /// At 70 % of bandwidth / bytes per step.
    tokens_per_s: f64,
    /// Decode time per second of speech out.
    decoder_rtf: f64,
}

#[derive(Debug, Serialize)]
struct DecoderRow {
    shape: String,
    format: String,
    parameters: i64,
    bytes_per_step: i64,
    prompt_tokens: usize,
    new_tokens: usize,
    prefill_s: f64,
    decode_tokens_per_s: f64,
    /// (prefill + every new token) / utterance seconds.
    rtf: f64,
    /// Prefill, the text and the first vocoder chunk of units: the decoder's share of the
    /// endpoint-to-first-audio time.
    to_first_chunk_s: f64,
    jetson: Vec<JetsonRow>,
}

#[derive(Debug, Serialize)]
struct Report {
    threads: i32,
    utterance_s: f64,
    encoders: Vec<EncoderRow>,
    decoders: Vec<DecoderRow>,
    vocoder_rtf: f64,
    vocoder_first_chunk_s: f64,
}

/// A published decoder's shape with the unit vocabulary added.
fn shape(name: &str) -> Result<LlamaConfig> {
    let mut cfg = LlamaConfig::published(name)?;
    cfg.vocab_size += UNIT_VOCAB;
    Ok(cfg)
}

fn decoder(cfg: &LlamaConfig, format: &str, max_positions: i64) -> Result<Llama> {
    let opts = |dtype| LoadOptions {
        device: Device::Cpu,
        dtype,
        max_positions,
    };
    let scheme = match format {
        "f32" => return Ok(Llama::random(cfg.clone(), opts(Kind::Float), 1)?),
        "bf16" => return Ok(Llama::random(cfg.clone(), opts(Kind::BFloat16), 1)?),
        "int8" => QuantScheme::Int8,
        // 64 divides both shapes' hidden sizes (576, 2048) and intermediate sizes.
        "int4" => QuantScheme::Int4 { group_size: 64 },
        _ => bail!("unknown format {format:?} (f32, bf16, int8 or int4)"),
    };
    let dir = std::env::temp_dir().join(format!("tolk-shapes-{format}-{}", std::process::id()));
    {
        let f32_model = Llama::random(cfg.clone(), opts(Kind::Float), 1)?;
        save_quantized(
            &f32_model,
            &QuantConfig::all_linear(scheme),
            Kind::Float,
            None,
            &dir,
        )?;
    }
    let m = Llama::load_with(&dir, opts(Kind::Float), QuantRuntime::Packed)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(m)
}

fn decoder_row(name: &str, format: &str, utterance_s: f64) -> Result<DecoderRow> {
    let cfg = shape(name)?;
    let prompt_tokens = (UNITS_PER_S * utterance_s).round() as usize + 8;
    let text = (TEXT_PER_S * utterance_s).ceil() as usize;
    let units = (UNITS_PER_S * utterance_s).round() as usize;
    let new_tokens = text + units;
    let m = decoder(&cfg, format, (prompt_tokens + new_tokens + 8) as i64)?;
    let vocab = cfg.vocab_size as u64;
    let prompt: Vec<u32> = (0..prompt_tokens as u64)
        .map(|i| ((i * 2_654_435_761) % vocab) as u32)
        .collect();
    let mut cache = m.new_cache(1, (prompt_tokens + new_tokens + 1) as i64)?;
    let mut sampler = Sampler::new(SamplingConfig::greedy())?;
    // Warm-up, then one timed utterance.
    generate(
        &m,
        &mut cache,
        &mut sampler,
        &prompt[..8],
        &GenerateOptions::new(4, vec![]),
        |_| {},
    )?;
    let g = generate(
        &m,
        &mut cache,
        &mut sampler,
        &prompt,
        &GenerateOptions::new(new_tokens, vec![]),
        |_| {},
    )?;
    let per_token = g.decode_secs / (g.tokens.len().max(2) - 1) as f64;
    let bytes = m.weight_bytes_per_token();
    let per_speech_s = TEXT_PER_S + UNITS_PER_S;
    let jetson = JETSONS
        .iter()
        .map(|&(device, gb_s)| {
            let tps = CEILING_SHARE * gb_s * 1e9 / bytes as f64;
            JetsonRow {
                device,
                bandwidth_gb_s: gb_s,
                tokens_per_s: tps,
                decoder_rtf: per_speech_s / tps,
            }
        })
        .collect();
    Ok(DecoderRow {
        shape: name.into(),
        format: format.into(),
        parameters: cfg.num_parameters(),
        bytes_per_step: bytes,
        prompt_tokens,
        new_tokens: g.tokens.len(),
        prefill_s: g.prefill_secs,
        decode_tokens_per_s: 1.0 / per_token,
        rtf: (g.prefill_secs + g.decode_secs) / utterance_s,
        to_first_chunk_s: g.prefill_secs + per_token * (text + VOCODER_CHUNK) as f64,
        jetson,
    })
}

pub fn run(args: ShapesArgs) -> Result<()> {
    anyhow::ensure!(
        (0.5..=28.0).contains(&args.utterance_s),
        "--utterance-s lies within 0.5..=28"
    );
    let audio = synthetic_audio(10.0, 0);
    let mut encoders = Vec::new();
    for (name, ex, opts) in [
        (
            "Whisper base encoder L6 + k-means 1000",
            whisper_base_random(Device::Cpu)?,
            StreamOptions::whisper_default(),
        ),
        (
            "mHuBERT-base L11 + k-means 1000",
            mhubert_base_random(Device::Cpu)?,
            StreamOptions::hubert_default(),
        ),
    ] {
        let r = measure(name, &ex, &audio, 320, &[opts])?;
        let s = r.streaming[0].rtf;
        println!(
            "{name}: offline RTF {:.3}, streaming (20 ms pushes) {:.3}, streaming/offline {:.1}x",
            r.offline_rtf,
            s,
            s / r.offline_rtf
        );
        encoders.push(EncoderRow {
            name: name.into(),
            offline_rtf: r.offline_rtf,
            streaming_rtf: s,
            streaming_over_offline: s / r.offline_rtf,
        });
    }
    let voc = Arc::new(random_model(VocoderConfig::mhubert(), 0, Device::Cpu)?);
    // The vocoder's work is per frame: deduplicated units expand back to 50 frames a second.
    let units = (50.0 * args.utterance_s).round() as usize;
    let vr = vocoder_bench(
        voc,
        &BenchOptions {
            units,
            chunk_units: vec![VOCODER_CHUNK],
            ..BenchOptions::default()
        },
    )?;
    let chunked = vr
        .timings
        .iter()
        .find(|t| t.first_audio_seconds.is_some())
        .ok_or_else(|| anyhow::anyhow!("the vocoder bench gave no streaming timing"))?;
    let vocoder_rtf = chunked.seconds / args.utterance_s;
    let vocoder_first = chunked.first_audio_seconds.unwrap_or(0.0);
    println!(
        "unit HiFi-GAN (mHuBERT config), {VOCODER_CHUNK}-unit chunks: {:.3} s for {units} frames \
         (RTF {vocoder_rtf:.3}), first audio after {vocoder_first:.3} s",
        chunked.seconds
    );
    let mut decoders = Vec::new();
    for name in &args.decoders {
        for format in &args.formats {
            let t = Instant::now();
            let r = decoder_row(name, format, args.utterance_s)?;
            println!(
                "{name} {format}: {:.0} M params, {:.0} MB per step; prefill {} tokens {:.3} s, \
                 decode {:.1} tokens/s; RTF {:.2}; prefill + text + first chunk {:.3} s; \
                 projected decoder RTF AGX {:.2} / NX {:.2} / Nano {:.2} [{:.0} s]",
                r.parameters as f64 / 1e6,
                r.bytes_per_step as f64 / 1e6,
                r.prompt_tokens,
                r.prefill_s,
                r.decode_tokens_per_s,
                r.rtf,
                r.to_first_chunk_s,
                r.jetson[0].decoder_rtf,
                r.jetson[1].decoder_rtf,
                r.jetson[2].decoder_rtf,
                t.elapsed().as_secs_f64()
            );
            decoders.push(r);
        }
    }
    let report = Report {
        threads: tch::get_num_threads(),
        utterance_s: args.utterance_s,
        encoders,
        decoders,
        vocoder_rtf,
        vocoder_first_chunk_s: vocoder_first,
    };
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_unknown_ones_are_named() {
        let s = shape("llama-3.2-1b").unwrap();
        assert_eq!((s.hidden_size, s.num_hidden_layers), (2048, 16));
        assert_eq!(s.vocab_size, 128256 + UNIT_VOCAB);
        let n = s.num_parameters();
        assert!((1.2e9..1.3e9).contains(&(n as f64)), "{n}");
        assert!(shape("gpt-2").is_err());
    }
}
