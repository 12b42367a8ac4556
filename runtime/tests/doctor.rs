//! `tolk doctor` on Jetson fixtures: a folder standing for the board's root (`--sysroot`) with
//! its `/etc/nv_tegra_release`, CUDA toolkit, `/proc/meminfo` and sound cards, and a stub
//! `nvpmodel` first on PATH. This machine has no CUDA device, so `--require-cuda` must fail with
//! a clear reason, as on a Jetson whose torch lacks CUDA.

#[path = "../../ota/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const ORIN_NANO_JP62: &str = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n";

struct Board {
    root: PathBuf,
    bin: PathBuf,
}

/// A fixture root; `None` fields are left out.
fn board(
    dir: &Path,
    release: Option<&str>,
    cuda: Option<&str>,
    mem_available_kib: u64,
    nvpmodel: Option<&str>,
) -> Board {
    let root = dir.join("root");
    let w = |p: &str, text: &str| {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    if let Some(r) = release {
        w("etc/nv_tegra_release", r);
    }
    if let Some(v) = cuda {
        w(
            "usr/local/cuda/version.json",
            &format!("{{\"cuda\": {{\"name\": \"CUDA SDK\", \"version\": \"{v}\"}}}}"),
        );
    }
    w(
        "proc/meminfo",
        &format!("MemTotal:        7994752 kB\nMemFree:          812340 kB\nMemAvailable:    {mem_available_kib} kB\n"),
    );
    w(
        "proc/asound/cards",
        " 0 [APE            ]: tegra-ape - NVIDIA Jetson Orin Nano APE\n 1 [Device         ]: USB-Audio - USB Audio Device\n",
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    if let Some(out) = nvpmodel {
        let stub = bin.join("nvpmodel");
        std::fs::write(&stub, format!("#!/bin/sh\nprintf '{out}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Board { root, bin }
}

/// Runs `tolk doctor --require-cuda` on the fixture; returns (success, stdout).
fn doctor(dir: &Path, b: &Board) -> (bool, String) {
    let slots = dir.join("slots");
    let cfg = common::device_config(dir, &slots, "mqtt://127.0.0.1:1", &[&common::key(1)], None);
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("/usr/share/tolk/models/demo", demo.to_str().unwrap());
    std::fs::write(&cfg, text).unwrap();
    let path = format!("{}:{}", b.bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new(env!("CARGO_BIN_EXE_tolk"))
        .args(["doctor", "--require-cuda", "--config"])
        .arg(&cfg)
        .arg("--sysroot")
        .arg(&b.root)
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{stdout}");
    (out.status.success(), stdout)
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l[6.min(l.len())..].starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no `{check}` line in:\n{out}"))
}

#[test]
fn orin_nano_on_jetpack_6_2_without_cuda_in_torch() {
    let t = tempfile::tempdir().unwrap();
    let b = board(
        t.path(),
        Some(ORIN_NANO_JP62),
        Some("12.6.68"),
        5_120_000,
        Some("NV Power Mode: 15W\\n0\\n"),
    );
    let (ok, out) = doctor(t.path(), &b);
    assert!(!ok, "no CUDA device here: --require-cuda must fail");
    assert_eq!(
        line(&out, "platform"),
        "ok    platform: Jetson, L4T R36.4.3 (JetPack 6.2), board generic"
    );
    assert_eq!(
        line(&out, "cuda toolkit"),
        "ok    cuda toolkit: CUDA 12.6.68 (/usr/local/cuda)"
    );
    let torch = line(&out, "libtorch");
    assert!(torch.starts_with("ok    libtorch: 2.11.0"), "{torch}");
    assert!(
        line(&out, "memory").starts_with(
            "ok    memory: 7.6 GiB total, 4.9 GiB available (shared by the CPU and the GPU)"
        ),
        "{out}"
    );
    assert!(line(&out, "power mode").starts_with("ok    power mode: 15W, mode 0"));
    let cuda = line(&out, "cuda");
    assert!(
        cuda.starts_with("FAIL  cuda: libtorch sees no CUDA device"),
        "{cuda}"
    );
    assert!(
        out.contains("deploy/jetson/install.sh"),
        "the fix names the install script"
    );
    let mem = line(&out, "model memory");
    assert!(
        mem.starts_with("ok    model memory:") && mem.contains("KV cache at 512 positions"),
        "{mem}"
    );
    assert!(line(&out, "audio").starts_with("ok    audio: 2 ALSA card(s)"));
}

#[test]
fn a_board_too_small_for_the_model_and_one_on_jetpack_5_without_cuda() {
    let t = tempfile::tempdir().unwrap();
    let b = board(
        t.path(),
        Some("# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref, EABI: aarch64, DATE: x\n"),
        None,
        8_000,
        None,
    );
    let (ok, out) = doctor(t.path(), &b);
    assert!(!ok);
    assert!(
        line(&out, "platform").starts_with(
            "FAIL  platform: L4T R35.5.0 (JetPack 5.1.3): Tolk's install targets JetPack 6"
        ),
        "{out}"
    );
    assert!(line(&out, "cuda toolkit").starts_with("FAIL  cuda toolkit: no CUDA toolkit"));
    assert!(line(&out, "power mode").starts_with("warn  power mode"));
    assert!(
        line(&out, "model memory").starts_with("FAIL  model memory:"),
        "{out}"
    );
}

#[test]
fn not_a_jetson() {
    let t = tempfile::tempdir().unwrap();
    let b = board(t.path(), None, None, 20_000_000, None);
    let (_, out) = doctor(t.path(), &b);
    assert_eq!(
        line(&out, "platform"),
        "ok    platform: not a Jetson (no /etc/nv_tegra_release)"
    );
    assert!(line(&out, "memory").ends_with("available"), "{out}");
    assert!(!out.contains("power mode"));
}
