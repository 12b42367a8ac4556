//! Unit HiFi-GAN vocoder (fairseq CodeHiFiGAN, as used for the mHuBERT en/es/fr unit voices):
//! discrete speech units in, 16 kHz waveform out, offline or streaming.
//!
//! - [`config`]: fairseq's vocoder `config.json` -> [`VocoderConfig`] (defaults: mHuBERT vocoder);
//! - [`generator`]: [`CodeHiFiGan`], loading (fairseq names, weight norm folded by
//!   `models/convert/fairseq_vocoder.py`) and offline synthesis;
//! - [`duration`]: the duration predictor (VariancePredictor);
//! - [`streaming`]: [`VocoderStream`], chunked synthesis equal to offline;
//! - [`discriminators`], [`losses`]: what training a vocoder needs (HiFi-GAN MPD/MSD, mel L1,
//!   feature matching, least-squares GAN losses);
//! - [`trainable`]: [`TrainableGenerator`], the generator's parameters in a VarStore (weight
//!   norm, HiFi-GAN init), exported as a folder [`CodeHiFiGan::load`] reads;
//! - [`bench`]: real-time factor measurement for the CLI.

pub mod config;
pub mod discriminators;
pub mod duration;
pub mod generator;
pub(crate) mod layers;
pub mod losses;
pub mod streaming;
pub mod trainable;

pub use config::{DurationPredictorConfig, ResBlockKind, SpeakerConditioning, VocoderConfig};
pub use generator::{tensor_specs, CodeHiFiGan, Speaker, SynthesisOptions};
pub use streaming::VocoderStream;
pub use trainable::TrainableGenerator;

use crate::stream::{Chunk, Streaming};
use crate::units::UnitId;
use crate::Result;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A vocoder with seeded random weights (HiFi-GAN's init, N(0, 0.01) convs, N(0, 1) units) for
/// `config`: for benchmarks and tests where no checkpoint is needed.
pub fn random_model(config: VocoderConfig, seed: i64, device: Device) -> Result<CodeHiFiGan> {
    let _g = tch::no_grad_guard();
    tch::manual_seed(seed);
    let mut tensors = HashMap::new();
    for spec in tensor_specs(&config) {
        // Drawn on the CPU: a seed gives the same vocoder on every device.
        let cpu = (Kind::Float, Device::Cpu);
        let t = if spec.name.ends_with("ln1.weight") || spec.name.ends_with("ln2.weight") {
            Tensor::f_ones(spec.shape.as_slice(), cpu)?
        } else {
            let std = if spec.name == "dict.weight" || spec.name.starts_with("spkr.") {
                1.0
            } else {
                0.01
            };
            Tensor::f_randn(spec.shape.as_slice(), cpu)?.f_mul_scalar(std)?
        };
        tensors.insert(spec.name, t.f_to_device(device)?);
    }
    CodeHiFiGan::from_tensors(config, tensors, device, Kind::Float)
}

/// What [`bench`] measures.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Units per utterance (no duration prediction: `units * hop_length` samples).
    pub units: usize,
    /// Streaming chunk sizes in units (none: offline only).
    pub chunk_units: Vec<usize>,
    /// Timed repetitions (the best is reported) after one warm-up.
    pub repeats: usize,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            units: 250,
            chunk_units: vec![5, 25],
            repeats: 3,
            seed: 0,
        }
    }
}

/// One timing: wall seconds for the utterance and real-time factor (seconds / audio seconds).
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub mode: String,
    pub seconds: f64,
    pub rtf: f64,
    /// Streaming: wall seconds until the first samples came out.
    pub first_audio_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub parameters: i64,
    pub upsample_initial_channel: i64,
    pub device: String,
    pub threads: i32,
    pub units: usize,
    pub audio_seconds: f64,
    pub lookahead_samples: i64,
    pub timings: Vec<Timing>,
}

/// Times offline and streaming synthesis of a random unit sequence.
pub fn bench(model: Arc<CodeHiFiGan>, opts: &BenchOptions) -> Result<BenchReport> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let n = model.config().num_embeddings;
    let units: Vec<UnitId> = (0..opts.units)
        .map(|_| rng.random_range(0..n) as UnitId)
        .collect();
    let padded: Vec<i64> = units.iter().map(|&u| i64::from(u)).collect();
    let speaker = match model.config().speaker {
        Some(SpeakerConditioning::Table { .. }) => Some(Speaker::Id(0)),
        Some(SpeakerConditioning::Embedder { embedder_dim }) => {
            Some(Speaker::Vector(vec![0.1; embedder_dim as usize]))
        }
        None => None,
    };
    let audio_seconds =
        (opts.units as i64 * model.hop_length()) as f64 / model.sampling_rate() as f64;
    let sync = |d: Device| {
        if let Device::Cuda(i) = d {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut timings = Vec::new();
    let so = SynthesisOptions {
        dur_prediction: false,
        speaker: speaker.clone(),
    };
    let mut best = f64::INFINITY;
    for r in 0..=opts.repeats.max(1) {
        let t0 = Instant::now();
        let _ = model.synthesize(&padded, &so)?;
        sync(model.device());
        if r > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    timings.push(Timing {
        mode: "offline".into(),
        seconds: best,
        rtf: best / audio_seconds,
        first_audio_seconds: None,
    });
    for &chunk in &opts.chunk_units {
        let chunk = chunk.max(1);
        let (mut best, mut first_best) = (f64::INFINITY, f64::INFINITY);
        for r in 0..=opts.repeats.max(1) {
            let mut s = VocoderStream::new(Arc::clone(&model), false, speaker.as_ref())?;
            let t0 = Instant::now();
            let mut first = None;
            for c in units.chunks(chunk) {
                if !Chunk::is_empty(&s.push(c)?) && first.is_none() {
                    sync(model.device());
                    first = Some(t0.elapsed().as_secs_f64());
                }
            }
            let _ = s.finish()?;
            sync(model.device());
            let dt = t0.elapsed().as_secs_f64();
            if r > 0 {
                best = best.min(dt);
                first_best = first_best.min(first.unwrap_or(dt));
            }
        }
        timings.push(Timing {
            mode: format!("streaming/{chunk}"),
            seconds: best,
            rtf: best / audio_seconds,
            first_audio_seconds: Some(first_best),
        });
    }
    let parameters = tensor_specs(model.config())
        .iter()
        .map(|s| s.shape.iter().product::<i64>())
        .sum();
    Ok(BenchReport {
        parameters,
        upsample_initial_channel: model.config().upsample_initial_channel,
        device: format!("{:?}", model.device()),
        threads: tch::get_num_threads(),
        units: opts.units,
        audio_seconds,
        lookahead_samples: VocoderStream::lookahead_samples(&model),
        timings,
    })
}
