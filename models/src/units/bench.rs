//! Real-time factor of unit extraction (processing time / audio duration), offline and streaming,
//! for the CLI's benchmark command. Weights are random: only the shapes matter for speed.

use super::extractor::{HubertFeaturizer, MfccFeaturizer, StreamOptions, UnitExtractor};
use super::hubert::{Hubert, HubertConfig, HubertLoadOptions};
use super::kmeans::KMeans;
use super::whisper::{Whisper, WhisperConfig, WhisperFeaturizer, WhisperLoadOptions};
use crate::audio::features::MfccConfig;
use crate::stream::Streaming;
use crate::Result;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Streaming extraction under one setting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamingRtf {
    pub chunk_ms: f64,
    pub left_context_frames: usize,
    pub lookahead_frames: usize,
    pub min_step_frames: usize,
    pub seconds: f64,
    pub rtf: f64,
}

/// One measured model: offline and streaming real-time factors (processing time / audio time).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RtfReport {
    pub name: String,
    pub device: String,
    pub threads: i32,
    pub audio_s: f64,
    pub offline_s: f64,
    pub offline_rtf: f64,
    pub streaming: Vec<StreamingRtf>,
    pub units: usize,
}

impl std::fmt::Display for RtfReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} on {} ({} threads), {:.1} s of audio, {} units: offline RTF {:.4}",
            self.name, self.device, self.threads, self.audio_s, self.units, self.offline_rtf
        )?;
        for s in &self.streaming {
            writeln!(
                f,
                "  streaming, {:.0} ms pushes, left context {} frames, look-ahead {}, step {}: RTF {:.4}",
                s.chunk_ms, s.left_context_frames, s.lookahead_frames, s.min_step_frames, s.rtf
            )?;
        }
        Ok(())
    }
}

/// Seeded synthetic test audio at 16 kHz: a gliding harmonic tone with noise and pauses.
pub fn synthetic_audio(seconds: f64, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = (seconds * 16000.0) as usize;
    let mut phase = 0.0f64;
    (0..n)
        .map(|i| {
            let t = i as f64 / 16000.0;
            let f0 = 120.0 + 60.0 * (t * 1.3).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / 16000.0;
            let voiced = ((t * 2.0).sin() > -0.3) as i32 as f64;
            let s = voiced
                * (0.3 * phase.sin() + 0.15 * (2.0 * phase).sin() + 0.08 * (3.0 * phase).sin());
            (s + 0.01 * (rng.random::<f64>() - 0.5)) as f32
        })
        .collect()
}

/// Random centroids `[k, dim]` (seeded).
pub fn random_kmeans(k: i64, dim: i64, seed: i64, device: Device) -> Result<KMeans> {
    tch::manual_seed(seed);
    KMeans::new(Tensor::f_randn([k, dim], (Kind::Float, device))?)
}

/// The mHuBERT-base shape (layer 11, K = 1000) with random weights.
pub fn mhubert_base_random(device: Device) -> Result<Arc<UnitExtractor>> {
    let opts = HubertLoadOptions {
        device,
        dtype: Kind::Float,
    };
    let model = Hubert::random(HubertConfig::mhubert_base(), 11, 0, opts)?;
    let km = random_kmeans(1000, 768, 1, device)?;
    Ok(Arc::new(UnitExtractor::new(
        Arc::new(HubertFeaturizer::new(model)),
        km,
    )?))
}

/// The Whisper-base encoder shape (last layer, K = 1000) with random weights.
pub fn whisper_base_random(device: Device) -> Result<Arc<UnitExtractor>> {
    let opts = WhisperLoadOptions {
        device,
        dtype: Kind::Float,
    };
    let model = Whisper::random(WhisperConfig::base(), 6, 0, opts)?;
    let km = random_kmeans(1000, 512, 1, device)?;
    Ok(Arc::new(UnitExtractor::new(
        Arc::new(WhisperFeaturizer::new(Arc::new(model))),
        km,
    )?))
}

/// Kaldi MFCC (13 cepstra, 100 Hz) with random centroids (K = 100).
pub fn mfcc_random() -> Result<Arc<UnitExtractor>> {
    let feat = MfccFeaturizer::new(MfccConfig::default())?;
    let km = random_kmeans(100, 13, 2, Device::Cpu)?;
    Ok(Arc::new(UnitExtractor::new(Arc::new(feat), km)?))
}

/// Times offline extraction, then streaming extraction with pushes of `chunk` samples under
/// each of `settings`; streaming must give as many units as offline.
pub fn measure(
    name: &str,
    extractor: &Arc<UnitExtractor>,
    audio: &[f32],
    chunk: usize,
    settings: &[StreamOptions],
) -> Result<RtfReport> {
    let audio_s = audio.len() as f64 / 16000.0;
    // Warm-up (allocator, kernels) on a short piece.
    extractor.extract(&audio[..audio.len().min(16000)])?;
    let t = Instant::now();
    let units = extractor.extract(audio)?;
    let offline_s = t.elapsed().as_secs_f64();
    let mut streaming = Vec::new();
    for &opts in settings {
        let mut stream = extractor.stream(opts);
        let t = Instant::now();
        let mut n = 0;
        for c in audio.chunks(chunk.max(1)) {
            n += stream.push(c)?.len();
        }
        n += stream.finish()?.len();
        let seconds = t.elapsed().as_secs_f64();
        if n != units.len() {
            return Err(crate::ModelError::InvalidArgument(format!(
                "streaming gave {n} units, offline {}",
                units.len()
            )));
        }
        streaming.push(StreamingRtf {
            chunk_ms: chunk as f64 / 16.0,
            left_context_frames: opts.left_context,
            lookahead_frames: opts.lookahead,
            min_step_frames: opts.min_step,
            seconds,
            rtf: seconds / audio_s,
        });
    }
    Ok(RtfReport {
        name: name.to_string(),
        device: format!("{:?}", extractor.featurizer().device()).to_lowercase(),
        threads: tch::get_num_threads(),
        audio_s,
        offline_s,
        offline_rtf: offline_s / audio_s,
        streaming,
        units: units.len(),
    })
}

/// The standard benchmark on `seconds` of synthetic audio pushed in 20 ms pieces: mHuBERT-base
/// units (2 s left context with 200 ms and 500 ms steps, 1 s with 500 ms; 100 ms look-ahead),
/// Whisper-base units (the same settings; its stream runs the conv stem once per sample) and
/// MFCC units (exact frame-local streaming). Whisper offline is capped at 30 s per forward pass,
/// so `seconds` above 30 are windowed offline too.
pub fn run(seconds: f64, device: Device) -> Result<Vec<RtfReport>> {
    let audio = synthetic_audio(seconds, 0);
    let hubert_settings = [
        StreamOptions::hubert_default(),
        StreamOptions {
            left_context: 100,
            lookahead: 5,
            min_step: 25,
        },
        StreamOptions {
            left_context: 50,
            lookahead: 5,
            min_step: 25,
        },
    ];
    let hubert = mhubert_base_random(device)?;
    let whisper = whisper_base_random(device)?;
    let mfcc = mfcc_random()?;
    Ok(vec![
        measure(
            "mhubert-base L11 K1000",
            &hubert,
            &audio,
            320,
            &hubert_settings,
        )?,
        measure(
            "whisper-base encoder L6 K1000",
            &whisper,
            &audio,
            320,
            &hubert_settings,
        )?,
        measure(
            "mfcc13 K100",
            &mfcc,
            &audio,
            320,
            &[StreamOptions::frame_local()],
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measure_reports_consistent_figures() {
        let ex = mfcc_random().unwrap();
        let audio = synthetic_audio(1.0, 3);
        let r = measure("mfcc", &ex, &audio, 320, &[StreamOptions::frame_local()]).unwrap();
        assert_eq!(r.units, 98);
        assert!((r.audio_s - 1.0).abs() < 1e-9);
        assert!(r.offline_rtf > 0.0 && r.streaming.len() == 1 && r.streaming[0].rtf > 0.0);
        assert!(r.to_string().contains("offline RTF"));
    }
}
