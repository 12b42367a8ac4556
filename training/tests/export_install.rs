//! `tolk-train export`: a translator folder becomes a signed, versioned bundle
//! that verifies, whose tampering is caught, that is never visible half-written (faults at every
//! step, random SIGKILLs), and that installs on a kiosk over MQTT: the demo model exported by the
//! binary, published by `tolk-train publish` through a real mosquitto to `tolk ota agent`,
//! probed by the kiosk's translator probe, activated, and then used by `tolk run`.

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use common::*;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tolk_config::bundle::{verify_bundle_dir, Manifest, SigningKey};
use tolk_models::translator::testing::{write_random_translator, TinyTranslatorSpec};
use tolk_training::export::{Release, RELEASE_FILE, RELEASE_FORMAT};

fn demo_dir() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo")).unwrap()
}

/// The kiosk binary `tolk`, built into the same folder as `tolk-train`.
fn tolk_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_tolk-train")).with_file_name("tolk");
    assert!(
        p.exists(),
        "the kiosk binary {} is missing: `cargo build -p tolk-runtime --bin tolk` (`cargo test \
         --workspace` builds it)",
        p.display()
    );
    p
}

fn write_key(dir: &Path, seed: u8) -> (SigningKey, PathBuf) {
    let k = key(seed);
    let path = dir.join(format!("release-{seed}.key"));
    std::fs::write(&path, k.to_secret_string()).unwrap();
    (k, path)
}

fn export_cmd(model: &Path, out: &Path, key: &Path, version: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tolk-train"));
    c.arg("export")
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg("--key")
        .arg(key)
        .args(["--name", "demo", "--compatible", COMPATIBLE, "--version"])
        .arg(version.to_string())
        .args(extra)
        .env_remove("TOLK_OTA_FAULT");
    c
}

#[track_caller]
fn run_ok(mut c: Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[track_caller]
fn run_err(mut c: Command) -> String {
    let o = c.output().unwrap();
    assert!(!o.status.success(), "{c:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The bundle at `out` verifies (signature, every size and hash) with `k`.
#[track_caller]
fn verified(out: &Path, k: &SigningKey) -> Manifest {
    verify_bundle_dir(out, &[k.public()])
        .unwrap_or_else(|e| panic!("{} does not verify: {e}", out.display()))
        .0
}

/// Staging or replaced folders of exports to `out` left next to it.
fn leftovers(out: &Path) -> Vec<String> {
    let prefix = format!(".{}.", out.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn release_of(out: &Path) -> Release {
    serde_json::from_slice(&std::fs::read(out.join(RELEASE_FILE)).unwrap()).unwrap()
}

/// A tiny random translator plus files that must not be exported: a note and a sample at the
/// root, a hidden file in `llm/`; and a link inside the folder, exported as a plain file.
fn tiny_model(dir: &Path) -> PathBuf {
    let m = dir.join("tiny");
    write_random_translator(&m, &TinyTranslatorSpec::default()).unwrap();
    std::fs::write(m.join("notes.txt"), "not part of the model").unwrap();
    std::fs::create_dir(m.join("samples")).unwrap();
    std::fs::write(m.join("samples/x.wav"), b"RIFF").unwrap();
    std::fs::write(m.join("llm/.cache"), b"editor swap").unwrap();
    std::os::unix::fs::symlink("../tolk-model.json", m.join("llm/manifest-copy.json")).unwrap();
    m
}

/// Parameters of a Llama from its `config.json`, by the architecture's shapes: embeddings,
/// per layer two norms, q/k/v/o and the SwiGLU gate/up/down, the final norm, an untied head.
fn llama_parameters(config: &Path) -> u64 {
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    let g = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("{k} in config.json"))
    };
    let (v, h, i, l) = (
        g("vocab_size"),
        g("hidden_size"),
        g("intermediate_size"),
        g("num_hidden_layers"),
    );
    let hd = c["head_dim"]
        .as_u64()
        .unwrap_or(h / g("num_attention_heads"));
    let (q, kv) = (g("num_attention_heads") * hd, g("num_key_value_heads") * hd);
    let layer = 2 * h + h * q + 2 * h * kv + q * h + 3 * h * i;
    let head = if c["tie_word_embeddings"].as_bool().unwrap_or(false) {
        0
    } else {
        v * h
    };
    v * h + l * layer + h + head
}

#[test]
fn tiny_export_verifies_and_tampering_is_caught() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let (k, kf) = write_key(t.path(), 1);
    let out = t.path().join("bundles/tiny-v1"); // the parent is created
    let o = run_ok(export_cmd(&model, &out, &kf, 1, &[]));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = verified(&out, &k);
    assert_eq!((m.name.as_str(), m.version), ("demo", 1));
    assert_eq!(m.compatible, COMPATIBLE);

    // Exactly the translator's files, plus release.json; no notes, samples or hidden files.
    let got: BTreeSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    let want: BTreeSet<&str> = [
        "tolk-model.json",
        "llm/config.json",
        "llm/model.safetensors",
        "llm/tokenizer.json",
        "llm/manifest-copy.json",
        "units/kmeans.safetensors",
        "vocoder-en/config.json",
        "vocoder-en/model.safetensors",
        "vocoder-fr/config.json",
        "vocoder-fr/model.safetensors",
        RELEASE_FILE,
    ]
    .into();
    assert_eq!(got, want);
    for f in got.iter().filter(|f| **f != RELEASE_FILE) {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(model.join(f)).unwrap(),
            "{f} differs from the source"
        );
    }
    assert!(
        !std::fs::symlink_metadata(out.join("llm/manifest-copy.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(summary["skipped"], serde_json::json!(["llm/.cache"]));
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    let r = release_of(&out);
    assert_eq!(r.format, RELEASE_FORMAT);
    assert_eq!((r.name.as_str(), r.version), ("demo", 1));
    assert_eq!(Path::new(&r.source), std::fs::canonicalize(&model).unwrap());
    assert_eq!(r.git, None, "a temporary folder is in no repository");
    assert_eq!(r.llm.dtype, "F32");
    assert_eq!(r.llm.quantization, None);
    assert_eq!(
        r.llm.parameters,
        llama_parameters(&model.join("llm/config.json"))
    );
    assert_eq!(r.llm.dtypes["F32"], r.llm.parameters);
    let probe = r.self_check.expect("self-check ran").summary;
    assert!(
        probe.contains("en-fr:") && probe.contains("fr-en:"),
        "{probe}"
    );
    println!("tiny export: {} s; self-check {probe}", summary["seconds"]);

    // The CLI verifier agrees; another key is refused.
    let verify = |key: &SigningKey| {
        Command::new(env!("CARGO_BIN_EXE_tolk-train"))
            .args(["bundle", "verify"])
            .arg(&out)
            .args(["--trusted-key", &key.public().to_string()])
            .output()
            .unwrap()
    };
    let o = verify(&k);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("verify"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!verify(&key(2)).status.success());

    // Tampering with any file, or the manifest, breaks verification.
    fn flip(p: &Path) {
        let mut b = std::fs::read(p).unwrap();
        let i = 200.min(b.len() - 1);
        b[i] ^= 0x01;
        std::fs::write(p, b).unwrap();
    }
    type Tamper = fn(&Path);
    let cases: [(&str, Tamper, &str); 5] = [
        ("llm/model.safetensors", flip, "sha256"),
        ("release.json", flip, "sha256"),
        ("manifest.json", flip, "does not match the manifest"),
        (
            "llm/tokenizer.json",
            |p| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(b" ").unwrap();
            },
            "more bytes than the signed size",
        ),
        (
            "vocoder-fr/config.json",
            |p| std::fs::remove_file(p).unwrap(),
            "vocoder-fr/config.json",
        ),
    ];
    for (i, (file, tamper, needle)) in cases.into_iter().enumerate() {
        let copy = t.path().join(format!("tampered-{i}"));
        copy_dir(&out, &copy);
        verified(&copy, &k);
        tamper(&copy.join(file));
        let e = verify_bundle_dir(&copy, &[k.public()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{file}: {e}");
    }

    // An existing OUT is refused without --force and left as it was; --force replaces it.
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let e = run_err(export_cmd(&model, &out, &kf, 2, &["--no-self-check"]));
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);
    run_ok(export_cmd(
        &model,
        &out,
        &kf,
        2,
        &["--force", "--no-self-check"],
    ));
    assert_eq!(verified(&out, &k).version, 2);
    assert_eq!(release_of(&out).self_check, None);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
}

/// Bad input is refused with an error naming what is wrong, and leaves neither OUT nor a
/// staging folder: not a translator, a link leaving the folder, OUT inside the model, a bad key,
/// version 0, and a model whose vocoders output NaN (caught by the self-check on the copy,
/// after the staging folder was filled).
#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let (_, kf) = write_key(t.path(), 1);
    let out = t.path().join("out");
    let check = |cmd: Command, needle: &str| {
        let e = run_err(cmd);
        assert!(e.contains(needle), "want {needle:?} in: {e}");
        assert!(!out.exists(), "{needle}: OUT exists");
        assert!(
            leftovers(&out).is_empty(),
            "{needle}: {:?}",
            leftovers(&out)
        );
    };
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    check(export_cmd(&empty, &out, &kf, 1, &[]), "tolk-model.json");
    check(
        export_cmd(&model, &model.join("bundle"), &kf, 1, &[]),
        "inside the translator folder",
    );
    check(
        export_cmd(&model, &out, &t.path().join("no.key"), 1, &[]),
        "no.key",
    );
    check(export_cmd(&model, &out, &kf, 0, &[]), "--version");
    check(
        export_cmd(&model, &out, &kf, 1, &["--sample", "en-de=x.wav"]),
        "en-de",
    );

    let outside = t.path().join("secret.bin");
    std::fs::write(&outside, b"host file").unwrap();
    let leaky = t.path().join("leaky");
    copy_dir(&model, &leaky);
    std::os::unix::fs::symlink(&outside, leaky.join("llm/extra.bin")).unwrap();
    check(
        export_cmd(&leaky, &out, &kf, 1, &[]),
        "outside the translator folder",
    );

    // NaN vocoders: the folder loads, the copy is made, the health probe refuses it.
    let broken = t.path().join("broken");
    copy_dir(&model, &broken);
    for v in ["vocoder-en", "vocoder-fr"] {
        let p = broken.join(v).join("model.safetensors");
        let (tensors, _) = tolk_models::checkpoint::read_safetensors(
            &p,
            tch::Kind::Float,
            tch::Device::Cpu,
            |_| true,
        )
        .unwrap();
        let nan: Vec<_> = tensors
            .into_iter()
            .map(|(n, t)| (n, t * f64::NAN))
            .collect();
        tolk_models::checkpoint::save_safetensors(&p, &nan).unwrap();
    }
    check(export_cmd(&broken, &out, &kf, 1, &[]), "self-check");
}

/// A fault at every step of an export (process killed, or an error returned): OUT is absent or
/// complete and verifying, never partial; an error removes its staging folder; the next export
/// removes what a killed one left. With `--force` over an existing bundle, the old one is
/// complete, or absent only between the two renames, or the new one is complete.
#[test]
fn faults_at_every_export_step_never_leave_a_partial_bundle() {
    let t = tempfile::tempdir().unwrap();
    let model = tiny_model(t.path());
    let (k, kf) = write_key(t.path(), 1);
    let out = t.path().join("bundle");
    let faulty = |version: u64, fault: &str, force: bool| {
        let mut flags = vec!["--no-self-check"];
        if force {
            flags.push("--force");
        }
        let mut c = export_cmd(&model, &out, &kf, version, &flags);
        c.env("TOLK_OTA_FAULT", fault);
        run_err(c)
    };
    let mut version = 1;
    for step in [
        "loaded", "staged", "file", "copied", "checked", "signed", "synced",
    ] {
        for action in ["kill", "fail"] {
            let e = faulty(version, &format!("export-{step}:{action}"), false);
            assert!(!out.exists(), "{step}:{action} left OUT");
            if action == "fail" {
                assert!(e.contains("fault injected"), "{e}");
                assert!(leftovers(&out).is_empty(), "{step}: {:?}", leftovers(&out));
            } else if step != "loaded" {
                // The staging folder of the killed process is there, for the next run to remove.
                assert_eq!(leftovers(&out).len(), 1, "{step}: {:?}", leftovers(&out));
            }
        }
        run_ok(export_cmd(&model, &out, &kf, version, &["--no-self-check"]));
        assert_eq!(verified(&out, &k).version, version);
        assert!(leftovers(&out).is_empty(), "{step}: {:?}", leftovers(&out));
        std::fs::remove_dir_all(&out).unwrap();
        version += 1;
    }

    // --force over an existing bundle.
    run_ok(export_cmd(&model, &out, &kf, version, &["--no-self-check"]));
    let old = version;
    version += 1;
    faulty(version, "export-moved-old:fail", true);
    assert_eq!(
        verified(&out, &k).version,
        old,
        "the old bundle is put back"
    );
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    faulty(version, "export-moved-old:kill", true);
    assert!(!out.exists(), "killed between the renames: absent");
    assert_eq!(leftovers(&out).len(), 2, "{:?}", leftovers(&out));
    run_ok(export_cmd(
        &model,
        &out,
        &kf,
        version,
        &["--no-self-check", "--force"],
    ));
    assert_eq!(verified(&out, &k).version, version);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    version += 1;
    faulty(version, "export-renamed:kill", true);
    assert_eq!(verified(&out, &k).version, version, "renamed in: complete");
    assert_eq!(leftovers(&out).len(), 1, "{:?}", leftovers(&out));
    version += 1;
    run_ok(export_cmd(
        &model,
        &out,
        &kf,
        version,
        &["--no-self-check", "--force"],
    ));
    assert_eq!(verified(&out, &k).version, version);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
}

/// SIGKILLs at random moments of exports of the demo model (7.8 MB: loading, copying, signing,
/// fsync, renames), half of them replacing an existing bundle with `--force`. After every kill
/// OUT is absent or a complete bundle that verifies, of the old or the new version.
#[test]
fn random_sigkills_during_export_never_leave_a_partial_bundle() {
    let t = tempfile::tempdir().unwrap();
    let model = demo_dir();
    let (k, kf) = write_key(t.path(), 1);
    let out = t.path().join("demo-bundle");
    let staging_of = |pid: u32| out.with_file_name(format!(".demo-bundle.export-{pid}"));
    let spawn = |version: u64, force: bool| -> Child {
        let mut flags = vec!["--no-self-check"];
        if force {
            flags.push("--force");
        }
        export_cmd(&model, &out, &kf, version, &flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Timing run: the whole export, and from the staging folder's appearance (polled) to the end.
    let t0 = Instant::now();
    let mut c = spawn(1, false);
    let staging = staging_of(c.id());
    let seen = poll(|| staging.exists()).expect("the export made its staging folder");
    let renamed = poll(|| out.exists()).expect("the export renamed its bundle into place");
    assert!(c.wait().unwrap().success());
    let (mut full, mut window) = (t0.elapsed(), renamed - seen);
    println!(
        "demo export (--no-self-check): {full:?}; {:?} to the staging folder, {window:?} \
         staging to rename",
        seen - t0
    );
    let mut version = verified(&out, &k).version;

    let mut rng = rand::rng();
    let mut outcomes = BTreeMap::<&str, usize>::new();
    let (mut kills, mut attempts) = (0, 0);
    while kills < 30 {
        attempts += 1;
        assert!(attempts < 200, "only {kills} kills landed inside an export");
        let force = rng.random_bool(0.5);
        if !force && out.exists() {
            std::fs::remove_dir_all(&out).unwrap();
        }
        let old = out.exists().then_some(version);
        let new = version + 1;
        let mut c = spawn(new, force);
        let staging = staging_of(c.id());
        // Half the kills anywhere (start-up and loading included), half once staging began.
        let anywhere = rng.random_bool(0.5);
        if anywhere {
            std::thread::sleep(full.mul_f64(rng.random_range(0.0..1.1)));
        } else {
            poll(|| staging.exists() || c.try_wait().unwrap().is_some());
            std::thread::sleep(window.mul_f64(rng.random_range(0.0..1.2)));
        }
        let finished = c.try_wait().unwrap().is_some();
        c.kill().unwrap();
        c.wait().unwrap();
        let absent = !out.exists();
        let v = (!absent).then(|| verified(&out, &k).version);
        assert!(
            v.is_none() || v == old || v == Some(new),
            "v{v:?} is neither the old {old:?} nor the new v{new}"
        );
        assert!(
            !(absent && old.is_some() && !force),
            "an untouched bundle vanished"
        );
        if v == Some(new) {
            version = new;
        }
        if finished {
            // This export was faster than the timed one: narrow the window.
            if anywhere {
                full = full.mul_f64(0.8);
            } else {
                window = window.mul_f64(0.8);
            }
            continue;
        }
        kills += 1;
        let phase = if v == Some(new) {
            "after the rename"
        } else if staging.exists() {
            "while staging"
        } else if absent && old.is_some() {
            "between the renames"
        } else {
            "before staging"
        };
        *outcomes.entry(phase).or_default() += 1;
    }
    // A last export completes and removes every leftover.
    run_ok(export_cmd(
        &model,
        &out,
        &kf,
        version + 1,
        &["--no-self-check", "--force"],
    ));
    assert_eq!(verified(&out, &k).version, version + 1);
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    println!("{kills} SIGKILLs in {attempts} exports: {outcomes:?}; never a partial bundle");
}

/// Polls `f` every millisecond (a staging phase lasts tens of milliseconds) for up to two
/// minutes; the moment it first held.
fn poll(mut f: impl FnMut() -> bool) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) {
        if f() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// A child process killed when the test ends, whatever happens.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// End to end: the demo model, exported by `tolk-train export`, published by
/// `tolk-train publish` over a real mosquitto to a kiosk's `tolk ota agent`, passes the kiosk's
/// translator health probe, becomes the active slot, verifies there, and `tolk run` translates
/// with it (its fallback model does not exist, so nothing else could have). Then the same for an
/// int8 translator made from it by the release pipeline (pairs, DPO, merge, quantize), which goes
/// to the other slot.
#[test]
fn demo_bundle_installs_on_a_kiosk_over_mqtt() {
    let t = tempfile::tempdir().unwrap();
    let demo = demo_dir();
    let before = tree_digest(&demo);
    let (k, kf) = write_key(t.path(), 1);
    let bundle = t.path().join("demo-v1");
    let sample = demo.join("samples/en.wav");
    let o = run_ok(export_cmd(
        &demo,
        &bundle,
        &kf,
        1,
        &["--sample", &format!("en-fr={}", sample.display())],
    ));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tree_digest(&demo), before, "models/demo was written to");
    verified(&bundle, &k);
    let r = release_of(&bundle);
    assert_eq!(r.llm.dtype, "F16", "the demo model is stored in f16");
    // The commit, as git itself tells it (None where the checkout has no git).
    let head = Command::new("git")
        .arg("-C")
        .arg(&demo)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(
        r.git.as_ref().map(|g| &g.commit),
        head.as_ref(),
        "{:?}",
        r.git
    );
    assert_eq!(r.samples.len(), 1);
    assert!(!r.samples[0].text.is_empty(), "{:?}", r.samples);
    println!(
        "export: {} files, {} bytes, {} s; sample en-fr: {:?}",
        summary["files"], summary["bytes"], summary["seconds"], r.samples[0].text
    );

    // The kiosk: slots empty, a fallback model that does not exist, a generous probe budget
    // (debug builds on a loaded CI machine), input from the demo's English sample.
    let mosq = Mosquitto::start(t.path(), None);
    let slots = t.path().join("slots");
    let cfg = device_config(t.path(), &slots, &mosq.url(), &[&k], None);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "probe_latency_budget_ms = 5000",
            "probe_latency_budget_ms = 600000",
        )
        .replace(
            "/usr/share/tolk/models/demo",
            t.path().join("no-fallback").to_str().unwrap(),
        )
        .replace(
            "device = \"default\"\nsample_rate = 16000",
            &format!(
                "device = \"default\"\npipeline = \"filesrc location={} ! wavparse ! audioconvert ! audioresample\"\nsample_rate = 16000",
                sample.display()
            ),
        )
        .replace(
            "device = \"default\"\nsample_rate = 24000",
            "device = \"default\"\npipeline = \"audioconvert ! audioresample ! fakesink\"\nsample_rate = 24000",
        )
        .replace("bind = \"127.0.0.1:9464\"", "bind = \"127.0.0.1:0\"");
    assert!(text.contains("probe_latency_budget_ms = 600000") && text.contains("no-fallback"));
    std::fs::write(&cfg, text).unwrap();
    let tolk = tolk_bin();
    let agent = Proc(
        Command::new(&tolk)
            .args(["ota", "agent", "--config"])
            .arg(&cfg)
            .env("TOLK_LOG", "warn")
            .env_remove("TOLK_OTA_FAULT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // v1: the f16 demo model as committed.
    let slot1 = kiosk_install(&tolk, &cfg, &slots, &mosq.url(), &bundle, 1);
    let finals = kiosk_run(&tolk, &cfg, &slot1);
    println!("tolk run on the installed f16 bundle: {finals:?}");

    // v2: the whole release pipeline on the demo model: monolingual English speech (espeak-ng,
    // `tolk-train synth-corpus`), its units, preference pairs by self-sampling and
    // back-translation (`pairs`), DPO with LoRA (`preference`, merged), int8 (`quantize`),
    // exported and installed the same way; the kiosk switches to the other slot.
    let int8 = release_pipeline(&demo, t.path());
    let bundle2 = t.path().join("demo-int8-v2");
    run_ok(export_cmd(&int8, &bundle2, &kf, 2, &[]));
    let r = release_of(&bundle2);
    assert_eq!(r.llm.dtype, "I8", "{:?}", r.llm);
    assert_eq!(r.llm.quantization.as_ref().unwrap()["bits"], 8);
    assert!(
        !bundle2.join("samples").exists() && !bundle2.join("heldout.jsonl").exists(),
        "the quantized folder's samples were exported"
    );
    println!(
        "int8 bundle: {} bytes of llm/model.safetensors (f16: {})",
        std::fs::metadata(bundle2.join("llm/model.safetensors"))
            .unwrap()
            .len(),
        std::fs::metadata(bundle.join("llm/model.safetensors"))
            .unwrap()
            .len()
    );
    let slot2 = kiosk_install(&tolk, &cfg, &slots, &mosq.url(), &bundle2, 2);
    assert_ne!(slot1, slot2, "A/B: the new version goes to the other slot");
    let finals = kiosk_run(&tolk, &cfg, &slot2);
    println!("tolk run on the installed int8 bundle: {finals:?}");
    drop(agent);
}

/// Runs `tolk-train` with `args`, expecting success.
fn train_ok(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tolk-train"));
    c.args(args);
    run_ok(c)
}

/// The release pipeline at test size, from the demo model: 8 monolingual English utterances, 4
/// sampled candidates each, pairs kept at any positive BLEU margin, one DPO epoch with LoRA, the
/// merged translator quantized to int8. Returns the int8 translator folder.
fn release_pipeline(demo: &Path, dir: &Path) -> PathBuf {
    let p = |name: &str| dir.join(name).display().to_string();
    train_ok(&[
        "synth-corpus",
        "--out",
        &p("corpus"),
        "--seed",
        "5",
        "--pairs",
        "4",
        "--dev",
        "0",
        "--test",
        "0",
        "--mono",
        "8",
        "--voices",
        "en-us,fr-fr",
    ]);
    let kmeans = demo.join("units/kmeans.safetensors").display().to_string();
    train_ok(&[
        "units",
        "--manifest",
        &p("corpus/mono-en.jsonl"),
        "--extractor",
        "mfcc",
        "--kmeans",
        &kmeans,
        "--out",
        &p("units.jsonl"),
    ]);
    let demo_s = demo.display().to_string();
    train_ok(&[
        "pairs",
        "--model",
        &demo_s,
        "--manifest",
        &p("corpus/mono-en.jsonl"),
        "--units",
        &p("units.jsonl"),
        "--direction",
        "en-fr",
        "--candidates",
        "4",
        "--delta",
        "0",
        "--seed",
        "3",
        "--threads",
        "1",
        "--quiet",
        "--out",
        &p("pairs"),
    ]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("pairs/summary.json")).unwrap()).unwrap();
    println!(
        "pairs: {} kept of {} utterances, mean margin {}",
        summary["pairs_kept"], summary["entries_seen"], summary["mean_margin"]
    );
    assert!(summary["pairs_kept"].as_u64().unwrap() > 0, "{summary}");
    let recipe = dir.join("dpo.toml");
    std::fs::write(
        &recipe,
        format!(
            "[data]\npairs = [\"{}\"]\ndev_percent = 0\n[model]\ntranslator = \"{demo_s}\"\n\
             [loss]\nkind = \"dpo\"\n[optim]\nlr = 5e-4\nepochs = 1\nbatch_pairs = 4\n\
             [run]\nout = \"{}\"\nthreads = 1\n",
            p("pairs/pairs.jsonl"),
            p("dpo")
        ),
    )
    .unwrap();
    let o = train_ok(&["preference", "--recipe", recipe.to_str().unwrap()]);
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    println!("DPO: {} steps on {} pairs", s["steps"], s["train_pairs"]);
    let merged = dir.join("dpo/final/translator");
    assert!(merged.join("tolk-model.json").exists());
    let int8 = dir.join("demo-dpo-int8");
    train_ok(&[
        "quantize",
        "--model",
        merged.to_str().unwrap(),
        "--format",
        "int8",
        "--out",
        int8.to_str().unwrap(),
    ]);
    int8
}

/// Publishes `bundle` (version `version`) with the `tolk-train publish` binary and checks the
/// kiosk's answer: SUCCEEDED after the translator probe ran both directions, the version active
/// in its own status, its slot verifying and holding this bundle's manifest. Returns the slot.
fn kiosk_install(
    tolk: &Path,
    cfg: &Path,
    slots: &Path,
    broker: &str,
    bundle: &Path,
    version: u64,
) -> PathBuf {
    let start = Instant::now();
    let o = run_ok({
        let mut c = Command::new(env!("CARGO_BIN_EXE_tolk-train"));
        c.arg("publish")
            .arg(bundle)
            .args(["--device", "kiosk-0001", "--broker", broker])
            .args(["--timeout-s", "600"]);
        c
    });
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["status"], "SUCCEEDED", "{report}");
    assert_eq!(report["version"], version, "{report}");
    let reason = report["reason"].as_str().unwrap();
    // The translator probe's summary: both directions translated on the device.
    assert!(
        reason.contains("en-fr:") && reason.contains("fr-en:"),
        "{reason}"
    );
    println!(
        "publish v{version} -> SUCCEEDED in {:.1} s: {reason}",
        start.elapsed().as_secs_f64()
    );
    let o = run_ok({
        let mut c = Command::new(tolk);
        c.args(["ota", "status", "--verify", "--config"]).arg(cfg);
        c
    });
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["active"]["version"], version, "{st}");
    assert_eq!(st["highest_version"], version, "{st}");
    assert_eq!(st["verified"]["ok"], true, "{st}");
    assert_eq!(st["last_job"]["status"], "SUCCEEDED", "{st}");
    let slot = slots
        .join("slots")
        .join(st["active"]["slot"].as_str().unwrap());
    assert_eq!(
        std::fs::read(slot.join("manifest.json")).unwrap(),
        std::fs::read(bundle.join("manifest.json")).unwrap()
    );
    slot
}

/// `tolk run --once` on the demo's English sample: it must load `slot` (the active one) and
/// give a non-empty subtitle for each of the two sentences.
fn kiosk_run(tolk: &Path, cfg: &Path, slot: &Path) -> Vec<String> {
    let o = run_ok({
        let mut c = Command::new(tolk);
        c.args(["run", "--events", "--no-mqtt", "--once", "--config"])
            .arg(cfg)
            .env("TOLK_LOG", "info");
        c
    });
    let stderr = strip_ansi(&String::from_utf8_lossy(&o.stderr));
    assert!(
        stderr.contains(&format!("model={}", slot.display())),
        "tolk run did not use the slot {}: {stderr}",
        slot.display()
    );
    let finals: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "subtitle_final")
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(finals.len(), 2, "two sentences in en.wav: {finals:?}");
    assert!(finals.iter().all(|f| !f.is_empty()), "{finals:?}");
    finals
}

/// Text without ANSI colour sequences (`ESC [ ... m`), as tracing writes to a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every file under `dir` with its bytes' hash (to show a folder was not written to).
fn tree_digest(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let h = tolk_config::bundle::hash_file(&e.path()).unwrap();
                out.insert(e.path(), h);
            }
        }
    }
    out
}
