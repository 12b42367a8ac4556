//! What vocoder training needs, against references: HiFi-GAN's multi-period and multi-scale
//! discriminators (speechbrain's HifiganDiscriminator, seeded, under jik876/hifi-gan names), the
//! least-squares and feature-matching losses, and the log-mel L1 loss (meldataset.py with
//! torchaudio's Slaney filterbank). Data from `tests/reference/vocoder.py`.
//!
//! Then `tolk-train vocoder` end to end on a few seconds of espeak-ng speech with MFCC k-means
//! units made at test time: the mel loss falls, the folder loads with `CodeHiFiGan::load` and
//! speaks, bad files are skipped and counted, resume equals an uninterrupted run, bad recipes
//! are clear errors.

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

// ---------------------------------------------------------------------------------------------
// `tolk-train vocoder` runs.

mod train_runs {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;
    use tch::{Device, Kind, Tensor};
    use tolk_models::audio::condition::to_mono_16k;
    use tolk_models::audio::wav::{read_wav, write_wav, WavFormat};
    use tolk_models::vocoder::{CodeHiFiGan, SynthesisOptions};
    use tolk_training::corpus::manifest::{write_manifest, ManifestEntry};
    use tolk_training::toolkit::checkpoint::latest_checkpoint;
    use tolk_training::units::{read_units, run_units, write_units, ExtractorKind, UnitsArgs};
    use tolk_training::vocoder::{train_vocoder, Recipe, VocoderArgs};

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
    }

    const SENTENCES: &[&str] = &[
        "Where is the train station, please?",
        "The ticket office opens at nine in the morning.",
        "Turn left after the museum and walk for five minutes.",
        "How much does a return ticket to the airport cost?",
        "The platform for the next train is number seven.",
    ];

    /// espeak-ng speech at 16 kHz, a manifest (English `audio`), MFCC + 16-means units; plus a
    /// file without units and an unreadable file that has units, both to be skipped.
    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_path_buf();
            std::fs::create_dir_all(root.join("audio")).unwrap();
            let mut entries = Vec::new();
            for (i, text) in SENTENCES.iter().enumerate() {
                let raw = root.join(format!("raw{i}.wav"));
                let st = Command::new("espeak-ng")
                    .args(["-v", "en-us", "-s", "150", "-w"])
                    .arg(&raw)
                    .arg(text)
                    .status()
                    .expect("espeak-ng must be installed (deploy/host/setup.sh)");
                assert!(st.success());
                let w = read_wav(&raw).unwrap();
                let (s16, _) = to_mono_16k(&w.samples, w.sample_rate, w.channels).unwrap();
                let rel = format!("audio/{i}.wav");
                write_wav(root.join(&rel), &s16, 16000, 1, WavFormat::Pcm16).unwrap();
                let mut e = ManifestEntry::new(format!("u{i}"), "en", *text);
                e.audio = Some(rel);
                e.voice = Some("en-us s150 p50".into());
                entries.push(e);
            }
            let manifest = root.join("train.jsonl");
            write_manifest(&manifest, &entries).unwrap();
            let units = root.join("units.jsonl");
            run_units(&UnitsArgs {
                manifests: vec![manifest.clone()],
                extractor: ExtractorKind::Mfcc,
                hubert: None,
                whisper: None,
                layer: None,
                streamed: false,
                kmeans: None,
                fit_kmeans: Some(16),
                fit_frames: 5000,
                fit_steps: 20,
                seed: 0,
                save_kmeans: None,
                device: "cpu".into(),
                jobs: Some(2),
                reuse: None,
                out: units.clone(),
                quiet: true,
            })
            .unwrap();
            // Bad input: a valid file the units file does not know, and garbage with units.
            std::fs::copy(root.join("audio/0.wav"), root.join("audio/nounits.wav")).unwrap();
            std::fs::write(root.join("audio/garbage.wav"), b"RIFF not really a wav").unwrap();
            let mut table = read_units(&units).unwrap();
            table.insert("audio/garbage.wav", vec![1; 100]).unwrap();
            write_units(&units, &table).unwrap();
            for (id, a) in [
                ("nounits", "audio/nounits.wav"),
                ("garbage", "audio/garbage.wav"),
            ] {
                let mut e = ManifestEntry::new(id, "en", "bad");
                e.audio = Some(a.into());
                entries.push(e);
            }
            write_manifest(&manifest, &entries).unwrap();
            Fixture { _dir: dir, root }
        })
    }

    /// Training reseeds libtorch's global RNG (dropout) and sets its thread count: runs in one
    /// process must not overlap, or they would draw from each other's RNG.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
        M.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recipe_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/vocoder-tiny.toml")
    }

    /// The tiny recipe with `[train]` keys replaced, written to `dir/recipe.toml`.
    fn recipe_with(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
        let mut text = std::fs::read_to_string(recipe_path()).unwrap();
        for (key, value) in replace {
            let start = text
                .find(&format!("\n{key} = "))
                .unwrap_or_else(|| panic!("{key} not in the tiny recipe"))
                + 1;
            let end = start + text[start..].find('\n').unwrap();
            text.replace_range(start..end, &format!("{key} = {value}"));
        }
        let p = dir.join("recipe.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn args(config: PathBuf, out: PathBuf) -> VocoderArgs {
        let f = fixture();
        VocoderArgs {
            config,
            manifest: Some(f.root.join("train.jsonl")),
            units: Some(f.root.join("units.jsonl")),
            language: Some("en".into()),
            voice: None,
            out,
            steps: None,
            mel_only_steps: None,
            device: "cpu".into(),
            fresh: false,
            quiet: true,
        }
    }

    #[test]
    fn tiny_run_mel_loss_falls_and_the_folder_speaks() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vocoder-en");
        // Mel-only, a higher rate: the falling loss is not hidden by the GAN's noise.
        let cfg = recipe_with(
            dir.path(),
            &[
                ("steps", "40"),
                ("mel_only_steps", "36"),
                ("log_every", "10"),
                ("eval_every", "0"),
            ],
        );
        let s = train_vocoder(&args(cfg, out.clone())).unwrap();
        println!(
            "tiny run: {} steps, {:.2} steps/s, mel {:?}, skipped {:?}",
            s.step,
            s.steps_per_second,
            s.log.iter().map(|p| p.mel).collect::<Vec<_>>(),
            s.skipped_files
        );
        assert_eq!(s.step, 40);
        assert_eq!(s.skipped, 2, "{:?}", s.skipped_files);
        let reasons: Vec<&str> = s.skipped_files.iter().map(|x| x.1.as_str()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("no units")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("unreadable audio")),
            "{reasons:?}"
        );
        let first = s.log[0].mel;
        let last = s.log[s.log.len() - 2].mel.min(s.log[s.log.len() - 1].mel);
        assert!(
            last < 0.8 * first,
            "mel loss should fall: first {first}, last {last}"
        );
        // The GAN steps ran and were finite.
        let gan = s.log.last().unwrap();
        assert!(
            gan.disc > 0.0 && gan.fm > 0.0 && gan.disc.is_finite(),
            "{gan:?}"
        );

        let m = CodeHiFiGan::load(&out, Device::Cpu, Kind::Float).unwrap();
        assert!(m.has_duration_predictor());
        let units = read_units(&fixture().root.join("units.jsonl")).unwrap();
        let u: Vec<i64> = units
            .get("audio/1.wav")
            .unwrap()
            .iter()
            .map(|&x| x as i64)
            .collect();
        let wav = m.synthesize(&u, &SynthesisOptions::default()).unwrap();
        assert_eq!(wav.size(), vec![u.len() as i64 * 320]);
        let mut dedup = u.clone();
        dedup.dedup();
        let (wav2, durs) = m
            .synthesize_with_durations(
                &dedup,
                &SynthesisOptions {
                    dur_prediction: true,
                    speaker: None,
                },
            )
            .unwrap();
        assert_eq!(durs.len(), dedup.len());
        for w in [&wav, &wav2] {
            assert!(bool::try_from(w.isfinite().all()).unwrap());
            assert!(w.abs().max().double_value(&[]) > 0.0);
        }
        // A held-out sample was written at the end.
        assert!(out.join("train/samples/step-0000040.wav").is_file());
    }

    /// The checkpoint a resumed run of `out` would load.
    fn checkpoint(out: &Path) -> PathBuf {
        latest_checkpoint(&out.join("train"))
            .unwrap()
            .expect("a checkpoint was committed")
    }

    fn read_all(p: &Path) -> Vec<(String, Tensor)> {
        let mut v = Tensor::read_safetensors(p).unwrap();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn resume_equals_an_uninterrupted_run() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        // 6 steps crossing into the GAN phase at step 2.
        let cfg = recipe_with(
            dir.path(),
            &[
                ("steps", "6"),
                ("mel_only_steps", "2"),
                ("checkpoint_every", "100"),
                ("eval_every", "0"),
            ],
        );
        let straight = dir.path().join("straight");
        train_vocoder(&args(cfg.clone(), straight.clone())).unwrap();
        let split = dir.path().join("split");
        let mut a = args(cfg.clone(), split.clone());
        a.steps = Some(3);
        let s1 = train_vocoder(&a).unwrap();
        assert_eq!((s1.step, s1.resumed_from), (3, None));
        let s2 = train_vocoder(&args(cfg, split.clone())).unwrap();
        assert_eq!((s2.step, s2.resumed_from), (6, Some(3)));
        let mut worst: f64 = 0.0;
        for f in [
            "generator.safetensors",
            "discriminator.safetensors",
            "optimizer_g.safetensors",
        ] {
            let a = read_all(&checkpoint(&straight).join(f));
            let b = read_all(&checkpoint(&split).join(f));
            assert_eq!(a.len(), b.len());
            for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
                assert_eq!(na, nb);
                let d = (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double))
                    .abs()
                    .max()
                    .double_value(&[]);
                worst = worst.max(d);
            }
        }
        println!("resume: worst |straight - resumed| over parameters and moments {worst:.3e}");
        assert!(worst <= 1e-6, "{worst:e}");
        let m1 = read_all(&straight.join("model.safetensors"));
        let m2 = read_all(&split.join("model.safetensors"));
        for ((_, a), (_, b)) in m1.iter().zip(&m2) {
            assert!((a - b).abs().max().double_value(&[]) <= 1e-6);
        }
    }

    #[test]
    fn bad_recipes_are_clear_errors() {
        let _serial = serial();
        let e = Recipe::parse(
            "[train]\nsteps = 3\nbatch_size = 1\nsegment_frames = 4\nstpes = 3\n",
            Path::new("r.toml"),
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("stpes") && msg.contains("r.toml"), "{msg}");
        let e = Recipe::parse(
            "[train]\nsteps = 3\nbatch_size = 1\nsegment_frames = 4\n[model]\nupsample_initial_channel = 100\n",
            Path::new("r.toml"),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("upsample_initial_channel"),
            "{e:#}"
        );
        // No data for the language.
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(recipe_path(), dir.path().join("out"));
        a.language = Some("de".into());
        let e = train_vocoder(&a).unwrap_err();
        assert!(
            format!("{e:#}").contains("no audio in language \"de\""),
            "{e:#}"
        );
        // A voice no entry has.
        let mut a = args(recipe_path(), dir.path().join("out"));
        a.voice = Some("pico:".into());
        let e = format!("{:#}", train_vocoder(&a).unwrap_err());
        assert!(
            e.contains("no audio in language \"en\"") && e.contains("from a voice \"pico:\""),
            "{e}"
        );
    }

    #[test]
    fn a_voice_filter_keeps_that_voice_only() {
        let f = fixture();
        let load = |voice: Option<&str>| {
            tolk_training::vocoder::data::load(&tolk_training::vocoder::data::DataOptions {
                manifest: &f.root.join("train.jsonl"),
                units: &f.root.join("units.jsonl"),
                language: "en",
                voice,
                hop_length: 320,
                sampling_rate: 16_000,
                segment_frames: 4,
                max_files: 0,
                eval_files: 1,
            })
            .unwrap()
        };
        // The two bad files have no voice: the filter drops them before they are read.
        let all = load(None);
        let en_us = load(Some("en-us"));
        assert_eq!((all.files, all.skipped.len()), (SENTENCES.len() + 2, 2));
        assert_eq!((en_us.files, en_us.skipped.len()), (SENTENCES.len(), 0));
        assert_eq!(en_us.train.len() + en_us.eval.len(), SENTENCES.len());
    }

    #[test]
    fn a_diverging_run_stops_with_a_clear_error() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let cfg = recipe_with(
            dir.path(),
            &[
                ("steps", "4"),
                ("mel_only_steps", "4"),
                ("learning_rate", "1e30"),
                ("checkpoint_every", "1"),
                ("eval_every", "0"),
            ],
        );
        let out = dir.path().join("out");
        let e = train_vocoder(&args(cfg, out.clone())).unwrap_err();
        let msg = format!("{e:#}");
        println!("{msg}");
        assert!(msg.contains("diverged"), "{msg}");
        // Whatever checkpoint was written before is intact and loadable.
        if latest_checkpoint(&out.join("train")).unwrap().is_some() {
            CodeHiFiGan::load(&out, Device::Cpu, Kind::Float).unwrap();
        }
    }
}
