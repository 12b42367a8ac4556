//! Dry run of `deploy/jetson/install.sh`: a fake root (`TOLK_INSTALL_ROOT`) holding a Jetson's
//! `/etc/nv_tegra_release`, and stubs first on PATH for everything that would change the machine
//! (apt-get, python3 -m venv and the venv's pip/python, useradd, id, chown, udevadm, systemctl),
//! each logging its arguments. The `tolk` installed is this build's (`--prebuilt`), so the final
//! `tolk doctor --require-cuda` really runs, and on this machine without CUDA it must say so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn stub(bin: &Path, name: &str, body: &str) {
    let p = bin.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho \"{name} $*\" >> \"$STUB_LOG\"\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_dry_run_on_a_fake_jetson_root() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let bin = t.path().join("bin");
    let log = t.path().join("stubs.log");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        root.join("etc/nv_tegra_release"),
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(
        root.join("proc/meminfo"),
        "MemTotal: 7994752 kB\nMemAvailable: 5120000 kB\n",
    )
    .unwrap();
    // The venv's python answers like NVIDIA's JetPack 6 torch does on a board.
    let venv_python = r#"case "$1" in
  -c) echo "$TOLK_INSTALL_ROOT/opt/tolk/venv/lib/python3.10/site-packages" ;;
  -) cat >/dev/null; echo "torch 2.11.0 cuda 12.6 available True" ;;
esac"#;
    stub(
        &bin,
        "python3",
        &format!(
            r#"if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/sh\necho "venv-pip $*" >> "$STUB_LOG"\n' > "$3/bin/pip"
  cat > "$3/bin/python" <<'EOF'
#!/bin/sh
echo "venv-python $*" >> "$STUB_LOG"
{venv_python}
EOF
  chmod +x "$3/bin/pip" "$3/bin/python"
fi"#
        ),
    );
    for (name, body) in [
        ("apt-get", ""),
        ("useradd", ""),
        ("id", "exit 1"),
        ("chown", ""),
        ("udevadm", ""),
        ("systemctl", ""),
    ] {
        stub(&bin, name, body);
    }
    let prebuilt = t.path().join("prebuilt");
    std::fs::create_dir_all(&prebuilt).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_tolk"), prebuilt.join("tolk")).unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/jetson/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--prebuilt")
        .arg(&prebuilt)
        .env("TOLK_INSTALL_ROOT", &root)
        .env("STUB_LOG", &log)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "install.sh failed: {stderr}");
    let calls = std::fs::read_to_string(&log).unwrap();
    println!("{calls}");

    // Files and folders, with their modes.
    let tolk = root.join("usr/local/bin/tolk");
    assert_eq!(mode(&tolk), 0o755);
    assert_eq!(
        std::fs::read(&tolk).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_tolk")).unwrap()
    );
    let cfg = root.join("etc/tolk/tolk.toml");
    assert_eq!(mode(&cfg), 0o640);
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        std::fs::read_to_string(script.parent().unwrap().join("../tolk.example.toml")).unwrap()
    );
    assert_eq!(mode(&root.join("var/lib/tolk/models")), 0o750);
    assert!(root.join("etc/tolk/tls").is_dir());
    let rules = std::fs::read_to_string(root.join("etc/udev/rules.d/99-tolk-audio.rules")).unwrap();
    assert!(rules.contains("ATTR{id}=\"tolkusb\""));
    let screen =
        std::fs::read_to_string(root.join("etc/systemd/system/tolk-browser.service")).unwrap();
    assert!(
        screen.contains("ExecStart=/usr/local/lib/tolk/kiosk-browser.sh"),
        "{screen}"
    );
    assert_eq!(
        mode(&root.join("usr/local/lib/tolk/kiosk-browser.sh")),
        0o755
    );
    for unit in ["tolk.service", "tolk-kiosk.service"] {
        let text = std::fs::read_to_string(root.join("etc/systemd/system").join(unit)).unwrap();
        assert!(
            text.contains("LD_LIBRARY_PATH=/opt/tolk/venv/lib/python3.10/site-packages/torch/lib"),
            "{unit}: {text}"
        );
        assert!(text.contains("ExecStart=/usr/local/bin/tolk"), "{unit}");
    }
    // What it asked of the machine.
    for call in [
        "apt-get install -y -qq build-essential",
        "gstreamer1.0-alsa",
        "python3 -m venv",
        "venv-pip install -q --index-url https://pypi.jetson-ai-lab.io/jp6/cu126 torch==2.11.0",
        "useradd --system --home /var/lib/tolk --shell /usr/sbin/nologin -G audio,video,render tolk",
        "chown tolk:tolk",
        "chown root:tolk",
        "udevadm control --reload-rules",
        "systemctl daemon-reload",
    ] {
        assert!(calls.contains(call), "no `{call}` in:\n{calls}");
    }
    // The doctor ran on the installed binary and refused to start without CUDA.
    assert!(
        stdout.contains("ok    platform: Jetson, L4T R36.4.3 (JetPack 6.2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  cuda: libtorch sees no CUDA device"),
        "{stdout}"
    );
    assert!(stderr.contains("tolk doctor found problems"), "{stderr}");
    assert!(
        !calls.contains("systemctl enable"),
        "units enabled despite failed checks"
    );
}

#[test]
fn install_script_refuses_a_prebuilt_folder_without_tolk() {
    let t = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/jetson/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--prebuilt")
        .arg(t.path())
        .env("TOLK_INSTALL_ROOT", t.path().join("root"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no executable tolk"));
}
