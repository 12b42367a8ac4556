//! What vocoder training needs, against references: HiFi-GAN's multi-period and multi-scale
//! discriminators (speechbrain's HifiganDiscriminator, seeded, under jik876/hifi-gan names), the
//! least-squares and feature-matching losses, and the log-mel L1 loss (meldataset.py with
//! torchaudio's Slaney filterbank). Data from `tests/reference/vocoder.py`.

use std::collections::BTreeSet;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tolk_models::vocoder::discriminators::HifiGanDiscriminator;
use tolk_models::vocoder::losses::{
    discriminator_loss, feature_loss, generator_loss, mel_filterbank, mel_l1_loss, MelConfig,
    MelSpectrogram,
};
use tolk_tests::{max_abs_diff, read_tensors, reference_dir};

/// |a - b| / max(1, max |b|): the discriminators' activations reach into the hundreds.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_diff(a, b) / b.abs().max().double_value(&[]).max(1.0)
}

fn scalar(t: &Tensor) -> f64 {
    t.view([-1]).double_value(&[0])
}

#[test]
fn discriminators_and_losses_match_reference() {
    let dir = reference_dir("vocoder").join("discriminator");
    let r = read_tensors(&dir.join("reference.safetensors"));
    let mut vs = VarStore::new(Device::Cpu);
    let disc = HifiGanDiscriminator::new(&vs.root());
    // Same tensor names as the hifi-gan checkpoint, no more, no fewer.
    let ours: BTreeSet<String> = vs.variables().into_keys().collect();
    let file: BTreeSet<String> = read_tensors(&dir.join("weights.safetensors"))
        .into_keys()
        .collect();
    assert_eq!(ours, file);
    vs.load(dir.join("weights.safetensors")).unwrap();

    let y = &r["y"];
    let out = tch::no_grad(|| disc.forward(y, false)).unwrap();
    assert_eq!(out.scores.len(), 8);
    let mut worst: f64 = 0.0;
    for (i, (s, feats)) in out.scores.iter().zip(&out.features).enumerate() {
        worst = worst.max(rel_diff(s, &r[&format!("score.{i}")]));
        for (j, f) in feats.iter().enumerate() {
            worst = worst.max(rel_diff(f, &r[&format!("feat.{i}.{j}")]));
        }
    }
    println!(
        "discriminators (MPD + MSD): worst relative |diff| of scores and features {worst:.3e}"
    );
    assert!(worst <= 1e-4, "{worst:e}");

    // Losses, real = batch row 0, generated = row 1.
    let row = |t: &Tensor, i: i64| t.narrow(0, i, 1);
    let real_s: Vec<Tensor> = out.scores.iter().map(|s| row(s, 0)).collect();
    let fake_s: Vec<Tensor> = out.scores.iter().map(|s| row(s, 1)).collect();
    let real_f: Vec<Vec<Tensor>> = out
        .features
        .iter()
        .map(|f| f.iter().map(|x| row(x, 0)).collect())
        .collect();
    let fake_f: Vec<Vec<Tensor>> = out
        .features
        .iter()
        .map(|f| f.iter().map(|x| row(x, 1)).collect())
        .collect();
    let fm = scalar(&feature_loss(&real_f, &fake_f).unwrap());
    let (d, _, _) = discriminator_loss(&real_s, &fake_s).unwrap();
    let g = scalar(&generator_loss(&fake_s).unwrap());
    let d = scalar(&d);
    let (fm_r, d_r, g_r) = (
        scalar(&r["feature_loss"]),
        scalar(&r["d_loss"]),
        scalar(&r["g_loss"]),
    );
    println!(
        "losses: feature matching {fm:.6} (ref {fm_r:.6}), D {d:.6} (ref {d_r:.6}), G {g:.6} (ref {g_r:.6})"
    );
    for (a, b) in [(fm, fm_r), (d, d_r), (g, g_r)] {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }

    // Log-mel: filterbank, spectrogram, L1.
    let fb = mel_filterbank(16000, 1024, 80, 0.0, 8000.0);
    let flat: Vec<f64> = fb.into_iter().flatten().collect();
    let fb = Tensor::from_slice(&flat).view([80, 513]);
    let d_fb = max_abs_diff(&fb, &r["mel_filterbank"]);
    let mel = MelSpectrogram::new(MelConfig::unit_vocoder_16k(), Device::Cpu).unwrap();
    let m = mel.forward(y).unwrap();
    let d_mel = max_abs_diff(&m, &r["mel"]);
    let l1 = scalar(&mel_l1_loss(&mel, &row(y, 0), &row(y, 1)).unwrap());
    let l1_r = scalar(&r["mel_l1"]);
    println!(
        "mel: filterbank worst |diff| {d_fb:.3e}, log-mel worst |diff| {d_mel:.3e}, L1 {l1:.6} (ref {l1_r:.6})"
    );
    assert!(d_fb <= 1e-6 && d_mel <= 1e-3 && (l1 - l1_r).abs() <= 1e-4);
}

#[test]
fn discriminator_trains() {
    // A fresh discriminator: a training-mode step has finite loss and gradients everywhere.
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let disc = HifiGanDiscriminator::new(&vs.root());
    let real = (Tensor::arange(2400, (Kind::Float, Device::Cpu)) * 0.05)
        .sin()
        .view([1, 1, -1])
        * 0.5;
    let fake = Tensor::randn([1, 1, 2400], (Kind::Float, Device::Cpu)) * 0.1;
    let dr = disc.forward(&real, true).unwrap();
    let dg = disc.forward(&fake, true).unwrap();
    let (loss, _, _) = discriminator_loss(&dr.scores, &dg.scores).unwrap();
    assert!(loss.double_value(&[]).is_finite());
    loss.backward();
    let vars = vs.trainable_variables();
    let with_grad = vars
        .iter()
        .filter(|v| v.grad().defined() && v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0)
        .count();
    println!(
        "discriminator: loss {:.4}, {with_grad}/{} parameters with gradient",
        loss.double_value(&[]),
        vars.len()
    );
    assert_eq!(with_grad, vars.len());
}
