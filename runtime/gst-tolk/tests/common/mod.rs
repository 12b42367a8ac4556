//! Shared set-up of the element tests: GStreamer with the plugin registered, a random tiny
//! translator folder, and espeak-ng speech made at test time.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use gstreamer as gst;
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};

pub const RATE: u32 = 16_000;
/// The caps of both pads of the element.
pub const CAPS: &str = "audio/x-raw,format=F32LE,layout=interleaved,channels=1,rate=16000";

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initializes");
        gsttolk::plugin_register_static().expect("the tolk plugin registers");
    });
}

/// A random translator folder in `dir` (chain-of-modality, MFCC units, both directions).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    write_random_translator(&model, &TinyTranslatorSpec::default())
        .expect("the tiny translator is written");
    model
}

/// Speaks `text` with espeak-ng into `wav` (22.05 kHz mono 16-bit).
pub fn espeak(text: &str, voice: &str, wav: &Path) {
    let st = Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(wav)
        .arg(text)
        .status()
        .expect("espeak-ng runs (apt-get install espeak-ng)");
    assert!(st.success(), "espeak-ng failed: {st}");
}

/// `text` spoken by espeak-ng, as 16 kHz mono f32.
pub fn speech_16k(text: &str, voice: &str, dir: &Path) -> Vec<f32> {
    let wav = dir.join("speech.wav");
    espeak(text, voice, &wav);
    let (samples, spec) = read_wav(&wav);
    assert_eq!(spec.channels, 1, "espeak-ng writes mono");
    tolk_models::audio::resample::resample(&samples, spec.sample_rate, RATE)
        .expect("resampling to 16 kHz")
}

/// Samples (f32 in [-1, 1]) and format of a WAV file.
pub fn read_wav(path: &Path) -> (Vec<f32>, hound::WavSpec) {
    let r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => r.into_samples::<f32>().map(|s| s.unwrap()).collect(),
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.into_samples::<i32>()
                .map(|s| s.unwrap() as f32 / scale)
                .collect()
        }
    };
    (samples, spec)
}

/// Root mean square.
pub fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}
