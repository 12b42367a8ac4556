//! Parity of `tolk_models::vocoder` with speechbrain's UnitHifiganGenerator (seeded random
//! weights, mapped to fairseq's CodeHiFiGAN names by `tests/reference/vocoder.py`), with and
//! without the duration predictor; the fairseq checkpoint converter
//! (`models/convert/fairseq_vocoder.py`, weight_g/weight_v folded); bad input.

use std::path::Path;
use tch::{Device, Kind, Tensor};
use tolk_models::vocoder::{CodeHiFiGan, Speaker, SynthesisOptions, VocoderConfig};
use tolk_models::ModelError;
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

const TOL: f64 = 1e-4;

fn load(dir: &Path) -> CodeHiFiGan {
    CodeHiFiGan::load(dir, Device::Cpu, Kind::Float)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn units(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t).unwrap()
}

fn speaker_for(name: &str) -> Option<Speaker> {
    // tests/reference/vocoder.py: the small vocoder is multi-speaker, reference speaker 2.
    (name == "small").then_some(Speaker::Id(2))
}

/// Waveforms with and without duration prediction against the reference; returns the worst
/// differences.
fn check(name: &str, model: &CodeHiFiGan, what: &str) -> (f64, f64) {
    let r = read_tensors(
        &reference_dir("vocoder")
            .join(name)
            .join("reference.safetensors"),
    );
    let u = units(&r["units"]);
    let opts = SynthesisOptions {
        dur_prediction: false,
        speaker: speaker_for(name),
    };
    let wav = model.synthesize(&u, &opts).unwrap();
    let d_plain = max_abs_diff(&wav, &r["wav"]);
    let opts = SynthesisOptions {
        dur_prediction: true,
        ..opts
    };
    let (wav_dur, durs) = model.synthesize_with_durations(&u, &opts).unwrap();
    assert_eq!(durs, units(&r["durations"]), "{name}: predicted durations");
    let d_dur = max_abs_diff(&wav_dur, &r["wav_dur"]);
    println!(
        "vocoder {name} ({what}): {} units, worst |diff| without duration prediction {d_plain:.3e} \
         ({} samples), with {d_dur:.3e} ({} samples, {} frames)",
        u.len(),
        wav.size()[0],
        wav_dur.size()[0],
        durs.iter().sum::<i64>()
    );
    assert!(
        d_plain <= TOL,
        "{name} ({what}) without durations: {d_plain:e} > {TOL:e}"
    );
    assert!(
        d_dur <= TOL,
        "{name} ({what}) with durations: {d_dur:e} > {TOL:e}"
    );
    (d_plain, d_dur)
}

#[test]
fn mhubert_config_matches_speechbrain() {
    let dir = reference_dir("vocoder").join("mhubert");
    let model = load(&dir.join("model"));
    assert_eq!(model.config(), &VocoderConfig::mhubert());
    check("mhubert", &model, "exported weights");
}

#[test]
fn small_resblock2_multispeaker_matches_speechbrain() {
    let dir = reference_dir("vocoder").join("small");
    check("small", &load(&dir.join("model")), "exported weights");
}

#[test]
fn converted_fairseq_checkpoints_match() {
    for name in ["mhubert", "small"] {
        let dir = reference_dir("vocoder").join(name).join("converted");
        assert!(
            dir.join("model.safetensors").exists(),
            "{} is missing: run `make reference` (it converts the fairseq checkpoint)",
            dir.display()
        );
        check(
            name,
            &load(&dir),
            "converted fairseq weight_g/weight_v checkpoint",
        );
    }
}

#[test]
fn negative_ids_are_dropped() {
    let dir = reference_dir("vocoder").join("small");
    let model = load(&dir.join("model"));
    let r = read_tensors(&dir.join("reference.safetensors"));
    let u = units(&r["units"]);
    let mut padded = vec![-1, -1];
    for (i, x) in u.iter().enumerate() {
        padded.push(*x);
        if i % 7 == 3 {
            padded.push(-1);
        }
    }
    padded.push(-5);
    let opts = SynthesisOptions {
        dur_prediction: true,
        speaker: speaker_for("small"),
    };
    let wav = model.synthesize(&padded, &opts).unwrap();
    let d = max_abs_diff(&wav, &r["wav_dur"]);
    println!("vocoder small with negative ids dropped: worst |diff| {d:.3e}");
    assert!(d <= TOL);
}

#[test]
fn bad_input_is_an_error_or_defined() {
    let dir = reference_dir("vocoder").join("small");
    let model = load(&dir.join("model"));
    let spk = || speaker_for("small");
    let opts = |dur| SynthesisOptions {
        dur_prediction: dur,
        speaker: spk(),
    };
    // Out of range.
    let e = model.synthesize(&[1, 2, 100], &opts(false)).unwrap_err();
    assert!(e.to_string().contains("unit id 100 at position 2"), "{e}");
    // Empty (also after dropping negatives): an empty waveform.
    for u in [&[][..], &[-1, -3][..]] {
        let w = model.synthesize(u, &opts(true)).unwrap();
        assert_eq!(w.size(), vec![0]);
    }
    // One unit: one hop of samples (speechbrain needs >= 3 units; fairseq's zero padding does not).
    for dur in [false, true] {
        let (w, d) = model.synthesize_with_durations(&[7], &opts(dur)).unwrap();
        assert_eq!(w.size(), vec![320 * d[0]]);
        assert!(w.abs().max().double_value(&[]) > 0.0);
    }
    // Speakers.
    let e = model
        .synthesize(&[1, 2], &SynthesisOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("speaker is required"), "{e}");
    let e = model
        .synthesize(
            &[1, 2],
            &SynthesisOptions {
                dur_prediction: false,
                speaker: Some(Speaker::Id(3)),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("speaker id 3"), "{e}");
    // A config that does not match the checkpoint: every disagreeing tensor named.
    let e = CodeHiFiGan::load_with_config(
        &dir.join("model"),
        VocoderConfig::mhubert(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ModelError::Tensors { .. }), "{msg}");
    assert!(
        msg.contains("tensor `dict.weight`") && msg.contains("[100, 32]"),
        "{msg}"
    );
    assert!(msg.contains("unexpected tensor `spkr.weight`"), "{msg}");
    assert!(
        msg.contains("missing tensor `resblocks.14.convs1.0.weight`"),
        "{msg}"
    );
    // Duration prediction on a vocoder without a predictor.
    let mut cfg = model.config().clone();
    cfg.duration_predictor = None;
    let e = CodeHiFiGan::load_with_config(&dir.join("model"), cfg, Device::Cpu, Kind::Float)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("unexpected tensor `dur_predictor.proj.weight`"),
        "{e}"
    );
}
