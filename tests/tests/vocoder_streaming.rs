//! Streaming synthesis (`VocoderStream`) against offline synthesis (`CodeHiFiGan::synthesize`)
//! at chunk sizes 1, 2, 5, 13 and 25 units, with and without duration prediction, on the
//! reference vocoders of `tests/reference/vocoder.py` (mHuBERT config, and a small ResBlock2
//! multi-speaker one). Prints the worst difference, the SNR and the look-ahead.

use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use tolk_models::stream::testing::{assert_chunked_eq_offline, close};
use tolk_models::stream::{Chunk, Streaming};
use tolk_models::units::UnitId;
use tolk_models::vocoder::{CodeHiFiGan, Speaker, SynthesisOptions, VocoderStream};
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

const CHUNKS: [usize; 5] = [1, 2, 5, 13, 25];
const TOL: f64 = 1e-3;

fn setup(name: &str) -> (Arc<CodeHiFiGan>, Vec<UnitId>, Option<Speaker>) {
    let dir = reference_dir("vocoder").join(name);
    let model = CodeHiFiGan::load(&dir.join("model"), Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let r = read_tensors(&dir.join("reference.safetensors"));
    let units = Vec::<i64>::try_from(&r["units"])
        .unwrap()
        .into_iter()
        .map(|u| UnitId::try_from(u).expect("reference units are ids, not padding"))
        .collect();
    let speaker = (name == "small").then_some(Speaker::Id(2));
    (Arc::new(model), units, speaker)
}

fn snr_db(reference: &Tensor, test: &Tensor) -> f64 {
    let r = reference.to_kind(Kind::Double);
    let noise = (test.to_kind(Kind::Double) - &r)
        .square()
        .sum(Kind::Double)
        .double_value(&[]);
    let signal = r.square().sum(Kind::Double).double_value(&[]);
    10.0 * (signal / noise.max(1e-30)).log10()
}

/// Feeds `units` in chunks; returns the concatenated output, the durations and the largest lag
/// (units in * hop - samples out, before the flush).
fn stream(
    model: &Arc<CodeHiFiGan>,
    units: &[UnitId],
    chunk: usize,
    dur: bool,
    speaker: Option<&Speaker>,
) -> (Tensor, Vec<i64>, i64) {
    let mut s = VocoderStream::new(Arc::clone(model), dur, speaker).unwrap();
    let mut out = Vec::new();
    let mut lag = 0;
    for c in units.chunks(chunk) {
        let y = s.push(c).unwrap();
        if !Chunk::is_empty(&y) {
            out.push(y);
        }
        if !dur {
            lag = lag.max(s.units_in() as i64 * model.hop_length() - s.samples_out());
        }
        // An empty step is "not enough input", not an error.
        assert!(Chunk::is_empty(&s.push(&[]).unwrap()));
    }
    out.push(s.finish().unwrap());
    let durations = s.durations().to_vec();
    (Tensor::cat(&out, 0), durations, lag)
}

fn check(name: &str) {
    let (model, reference_units, speaker) = setup(name);
    let hop = model.hop_length();
    let lookahead = VocoderStream::lookahead_samples(&model);
    for dur in [false, true] {
        // Without durations: longer than look-ahead + largest chunk, so that the steady-state lag
        // shows. With durations (about 3.5 frames per unit) the reference units suffice.
        let units = if dur {
            reference_units.clone()
        } else {
            [reference_units.as_slice(), reference_units.as_slice()].concat()
        };
        let opts = SynthesisOptions {
            dur_prediction: dur,
            speaker: speaker.clone(),
        };
        let padded: Vec<i64> = units.iter().map(|&u| i64::from(u)).collect();
        let (offline, offline_durs) = model.synthesize_with_durations(&padded, &opts).unwrap();
        // The streaming contract: any chunking, a second stream after finish, a reset mid-way.
        assert_chunked_eq_offline(
            || VocoderStream::new(Arc::clone(&model), dur, speaker.as_ref()).unwrap(),
            &units,
            &offline,
            &CHUNKS,
            close(TOL),
        );
        let mut worst: f64 = 0.0;
        let mut worst_snr = f64::INFINITY;
        for chunk in CHUNKS {
            let (y, durs, lag) = stream(&model, &units, chunk, dur, speaker.as_ref());
            assert_eq!(durs, offline_durs, "{name} chunk {chunk}: durations");
            assert_eq!(y.size(), offline.size(), "{name} chunk {chunk}: length");
            let d = max_abs_diff(&y, &offline);
            let snr = snr_db(&offline, &y);
            println!(
                "vocoder {name} streaming, duration prediction {dur}, chunk {chunk:>2} units: \
                 worst |diff| {d:.3e}, SNR {snr:.1} dB{}",
                if dur {
                    String::new()
                } else {
                    format!(
                        ", largest lag {lag} samples ({:.2} units)",
                        lag as f64 / hop as f64
                    )
                }
            );
            assert!(d <= TOL, "{name} chunk {chunk} dur {dur}: {d:e} > {TOL:e}");
            if !dur {
                // Once the sequence is longer than the look-ahead, the stream holds back exactly
                // the look-ahead: the analytic figure is the measured one.
                assert!(units.len() as i64 * hop > lookahead + chunk as i64 * hop);
                assert!(
                    lag >= lookahead && lag < lookahead + chunk as i64 * hop,
                    "lag {lag}"
                );
            }
            worst = worst.max(d);
            worst_snr = worst_snr.min(snr);
        }
        let dp_units = VocoderStream::new(Arc::clone(&model), dur, speaker.as_ref())
            .unwrap()
            .duration_lookahead_units();
        println!(
            "vocoder {name}, duration prediction {dur}: worst |diff| over chunk sizes {CHUNKS:?} \
             {worst:.3e}, lowest SNR {worst_snr:.1} dB; look-ahead {lookahead} samples = {:.2} \
             frames of {hop} samples, plus {dp_units} units for the duration predictor",
            lookahead as f64 / hop as f64
        );
    }
}

#[test]
fn mhubert_streaming_equals_offline() {
    check("mhubert");
}

#[test]
fn small_multispeaker_streaming_equals_offline() {
    check("small");
}

#[test]
fn stream_errors_reset_and_reuse() {
    let (model, units, speaker) = setup("small");
    let opts = SynthesisOptions {
        dur_prediction: true,
        speaker: speaker.clone(),
    };
    let padded: Vec<i64> = units.iter().map(|&u| i64::from(u)).collect();
    let offline = model.synthesize(&padded, &opts).unwrap();
    let mut s = VocoderStream::new(Arc::clone(&model), true, speaker.as_ref()).unwrap();
    // Nothing in, nothing out, even at finish.
    assert!(Chunk::is_empty(&s.finish().unwrap()));
    for round in 0..2 {
        let mut out = Vec::new();
        for (i, c) in units.chunks(6).enumerate() {
            if i == 2 {
                // An out-of-range id is an error and does not disturb the stream.
                let e = s.push(&[3, 100]).unwrap_err();
                assert!(e.to_string().contains("unit id 100"), "{e}");
                // Negative ids (fairseq's padding) are dropped.
                out.push(s.push_padded(&[-1]).unwrap());
            }
            out.push(s.push(c).unwrap());
        }
        out.push(s.finish().unwrap());
        let y = Tensor::cat(&out, 0);
        let d = max_abs_diff(&y, &offline);
        println!("vocoder stream utterance {round} after flush/reset: worst |diff| {d:.3e}");
        assert!(d <= TOL);
        if round == 0 {
            assert_eq!(s.units_in(), units.len());
            s.reset();
            assert!(s.durations().is_empty());
        }
    }
    // A single unit streams to one unit of audio.
    let mut s = VocoderStream::new(Arc::clone(&model), false, speaker.as_ref()).unwrap();
    assert!(Chunk::is_empty(&s.push(&[5]).unwrap()));
    let y = s.finish().unwrap();
    let single = model
        .synthesize(
            &[5],
            &SynthesisOptions {
                dur_prediction: false,
                speaker: speaker.clone(),
            },
        )
        .unwrap();
    assert!(max_abs_diff(&y, &single) <= TOL);
    // Duration prediction needs a predictor; the speaker must suit the vocoder.
    assert!(VocoderStream::new(Arc::clone(&model), false, None).is_err());
}
