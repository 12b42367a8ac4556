//! The plugin as GStreamer loads it: the built `libgsttolk.so` (copied into a fresh plugin
//! folder, with a private registry) is found by `gst-inspect-1.0` and runs in
//! `gst-launch-1.0 filesrc ! wavparse ! audioconvert ! audioresample ! tolktranslate ! ... !
//! wavenc ! filesink`. `LD_LIBRARY_PATH` is cleared: libtorch must come from the rpath.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::*;

/// The cdylib cargo built next to this test's rlib.
fn built_plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        let p = dir.join("libgsttolk.so");
        if p.exists() {
            return p;
        }
    }
    panic!("libgsttolk.so not found next to {}", exe.display());
}

/// A plugin folder holding only our plugin, and a registry file of our own.
fn plugin_env(dir: &Path) -> Vec<(String, String)> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(built_plugin(), plugins.join("libgsttolk.so")).unwrap();
    vec![
        ("GST_PLUGIN_PATH".into(), plugins.display().to_string()),
        (
            "GST_REGISTRY".into(),
            dir.join("registry.bin").display().to_string(),
        ),
    ]
}

fn run(cmd: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let t0 = Instant::now();
    let mut c = Command::new(cmd);
    c.args(args).env_remove("LD_LIBRARY_PATH");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    println!(
        "{cmd} ({:.1} s): {}\n{}",
        t0.elapsed().as_secs_f64(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn gst_inspect_lists_the_element_and_its_properties() {
    let dir = tempfile::tempdir().unwrap();
    let env = plugin_env(dir.path());
    let out = run("gst-inspect-1.0", &["tolktranslate"], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gst-inspect-1.0 failed:\n{text}");
    for p in [
        "model",
        "direction",
        "mode",
        "vad-model",
        "vad-threshold",
        "min-silence-ms",
        "max-utterance-ms",
        "device",
        "queue-size",
        "overload",
    ] {
        assert!(
            text.contains(&format!("  {p} ")),
            "property {p} missing from:\n{text}"
        );
    }
    assert!(text.contains("en-fr") && text.contains("fr-en"));
    assert!(text.contains("rate: 16000"));
}

#[test]
fn gst_launch_translates_a_wav_file() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // espeak-ng writes 22.05 kHz: the pipeline converts it. Two sentences, a pause between.
    let a = dir.path().join("a.wav");
    let b = dir.path().join("b.wav");
    espeak("Where is the train station?", "en-us", &a);
    espeak("A ticket to Lyon costs twelve euros.", "en-us", &b);
    let (sa, spec) = read_wav(&a);
    let (sb, _) = read_wav(&b);
    let pause = vec![0.0f32; spec.sample_rate as usize];
    let input = dir.path().join("in.wav");
    let mut w = hound::WavWriter::create(&input, spec).unwrap();
    for x in sa.iter().chain(&pause).chain(&sb).chain(&pause) {
        w.write_sample((x * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();

    let output = dir.path().join("out.wav");
    let env = plugin_env(dir.path());
    let launch = format!(
        "filesrc location={} ! wavparse ! audioconvert ! audioresample ! \
         tolktranslate model={} direction=en-fr ! audioconvert ! wavenc ! filesink location={}",
        input.display(),
        model.display(),
        output.display()
    );
    let args: Vec<&str> = std::iter::once("-m")
        .chain(launch.split_whitespace())
        .collect();
    let out = run("gst-launch-1.0", &args, &env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gst-launch-1.0 failed:\n{stdout}");
    // `-m` prints the element messages: two utterances with final subtitles.
    let finals = stdout
        .lines()
        .filter(|l| l.contains("tolk-subtitle") && l.contains("final=(boolean)true"))
        .count();
    assert_eq!(finals, 2, "two final subtitles expected:\n{stdout}");

    let (samples, spec) = read_wav(&output);
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(spec.channels, 1);
    assert!(samples.iter().all(|x| x.is_finite()));
    let level = rms(&samples);
    println!(
        "out.wav: {} samples ({:.2} s), rms {level:.4}",
        samples.len(),
        samples.len() as f64 / 16_000.0
    );
    assert!(samples.len() > 1600, "too little audio");
    assert!(level > 1e-3, "silent output");
}
