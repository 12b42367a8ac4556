//! Streaming unit extraction vs offline: MFCC units identical for any push size; HuBERT
//! (mHuBERT-base shape, layer 11, random weights from `tests/reference/hubert.py`, centroids fitted
//! by sklearn on its offline features) agrees on >= 95 % of frames with a 2 s left context. The
//! agreement at other chunk / context / look-ahead settings is printed for the README.

use std::sync::Arc;
use tch::{Device, Kind};
use tolk_models::audio::features::MfccConfig;
use tolk_models::stream::testing::assert_chunked_eq_offline_exact;
use tolk_models::stream::{run_chunked, Streaming};
use tolk_models::units::{
    fit_minibatch, FitConfig, Hubert, HubertFeaturizer, HubertLoadOptions, KMeans, MfccFeaturizer,
    StreamOptions, UnitExtractor, UnitId,
};
use tolk_tests::{read_tensors, reference_dir};

fn speech() -> Vec<f32> {
    let r = read_tensors(&reference_dir("hubert").join("speech.safetensors"));
    Vec::try_from(&r["both"]).unwrap()
}

fn stream_units(
    ex: &Arc<UnitExtractor>,
    audio: &[f32],
    chunk: usize,
    o: StreamOptions,
) -> Vec<UnitId> {
    run_chunked(&mut ex.stream(o), audio, chunk).unwrap()
}

fn mfcc_extractor(audio: &[f32]) -> Arc<UnitExtractor> {
    let feat = MfccFeaturizer::new(MfccConfig::default()).unwrap();
    use tolk_models::units::Featurizer;
    let f = feat.features(audio).unwrap();
    let mut cfg = FitConfig::new(32);
    cfg.batch_size = 256;
    cfg.steps = 30;
    cfg.seed = 7;
    let km = fit_minibatch(&f, &cfg).unwrap();
    Arc::new(UnitExtractor::new(Arc::new(feat), km).unwrap())
}

#[test]
fn mfcc_units_streaming_equals_offline() {
    let audio = speech();
    let ex = mfcc_extractor(&audio);
    let offline = ex.extract(&audio).unwrap();
    let distinct = {
        let mut u = offline.clone();
        u.sort();
        u.dedup();
        u.len()
    };
    assert!(distinct > 10, "only {distinct} distinct MFCC units");
    let sizes = [1usize, 7, 160, 320, 517, 640, audio.len()];
    assert_chunked_eq_offline_exact(
        || ex.stream(StreamOptions::frame_local()),
        &audio,
        &offline,
        &sizes,
    );
    println!("mfcc units identical to offline for pushes of {sizes:?} samples");
    // Two streams on two threads share one extractor.
    let handles: Vec<_> = [320usize, 480]
        .into_iter()
        .map(|chunk| {
            let ex = ex.clone();
            let audio = audio.clone();
            std::thread::spawn(move || {
                stream_units(&ex, &audio, chunk, StreamOptions::frame_local())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), offline);
    }
    // Defined behaviour on degenerate input.
    assert!(ex.extract(&[]).unwrap().is_empty());
    assert!(ex.extract(&[0.1]).unwrap().is_empty());
    assert!(ex.extract(&[0.0, f32::NAN, 0.0]).is_err());
}

#[test]
fn hubert_units_streaming_agree_with_offline() {
    let dir = reference_dir("hubert");
    let model = Hubert::load(
        &dir.join("mhubert_base").join("model"),
        11,
        HubertLoadOptions::default(),
    )
    .unwrap();
    let feat = Arc::new(HubertFeaturizer::new(model));
    let km = KMeans::load(
        &dir.join("streaming").join("centroids.npy"),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    // A centroid file whose D does not match the encoder is refused.
    let wrong = KMeans::new(tch::Tensor::zeros([10, 13], (Kind::Float, Device::Cpu))).unwrap();
    let e = UnitExtractor::new(feat.clone(), wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dimension 13") && e.contains("768"), "{e}");
    let ex = Arc::new(UnitExtractor::new(feat, km).unwrap());
    // The same refusal through the path-based constructor names the centroid file.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("km13.safetensors");
    KMeans::new(tch::Tensor::ones([4, 13], (Kind::Float, Device::Cpu)))
        .unwrap()
        .save(&bad)
        .unwrap();
    let e = UnitExtractor::from_hubert(
        &dir.join("tiny_post").join("model"),
        2,
        &bad,
        HubertLoadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("km13.safetensors") && e.contains("dimension 13"),
        "{e}"
    );
    assert!(ex.extract(&[]).unwrap().is_empty());
    assert!(ex.extract(&[0.2]).unwrap().is_empty());
    let mut one = ex.stream(StreamOptions::hubert_default());
    assert!(one.push(&[0.2]).unwrap().is_empty());
    assert!(one.finish().unwrap().is_empty());

    let audio = speech();
    let offline = ex.extract(&audio).unwrap();
    println!(
        "hubert units: {:.2} s of speech, {} frames",
        audio.len() as f64 / 16000.0,
        offline.len()
    );
    // (push ms, left context frames, look-ahead frames, min step frames); 50 frames = 1 s.
    let settings = [(20, 100, 5, 10), (40, 50, 5, 10), (20, 200, 5, 25)];
    let mut at_2s = None;
    for (ms, left, look, step) in settings {
        let o = StreamOptions {
            left_context: left,
            lookahead: look,
            min_step: step,
        };
        let t = std::time::Instant::now();
        let s = stream_units(&ex, &audio, ms * 16, o);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(s.len(), offline.len());
        let agree =
            s.iter().zip(&offline).filter(|(a, b)| a == b).count() as f64 / offline.len() as f64;
        println!(
            "hubert units, {ms} ms pushes, left context {:.1} s, look-ahead {} ms, step {} ms: \
             {:.1} % of frames agree with offline ({secs:.1} s)",
            left as f64 / 50.0,
            look * 20,
            step * 20,
            100.0 * agree
        );
        if (ms, left, look, step) == (20, 100, 5, 10) {
            at_2s = Some(agree);
        }
    }
    let a = at_2s.unwrap();
    assert!(a >= 0.95, "agreement at 2 s left context {a}");
}
