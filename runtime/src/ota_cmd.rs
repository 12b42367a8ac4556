//! `tolk config ...`, `tolk ota ...` and `tolk doctor`: device operations.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tolk_config::bundle::SigningKey;
use tolk_config::Config;
use tolk_ota::agent::{self, AgentOptions};
use tolk_ota::mqtt::{options, BrokerSettings};
use tolk_ota::{ModelProbe, Settings, Updater};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a configuration file; lists every problem with its field path.
    Check { file: PathBuf },
    /// Print a commented default configuration.
    Default,
}

#[derive(Subcommand)]
pub enum OtaCommand {
    /// Create an Ed25519 signing key (secret written to FILE, mode 0600) and print its public key
    /// for `ota.trusted_keys`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the device's OTA state (active slot, highest version, last job) as JSON.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Also verify the active slot's signature and every file hash.
        #[arg(long)]
        verify: bool,
    },
    /// Install a signed bundle folder from local storage (the `file://` transfer path).
    Install {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value = "local")]
        job_id: String,
    },
    /// Run the MQTT update agent (systemd: Type=notify, watchdog).
    Agent {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run_config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Default => {
            print!("{}", tolk_config::DEFAULT_CONFIG);
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok (device {}, {} direction(s), broker {})",
                file.display(),
                cfg.device.id,
                cfg.translation.len(),
                cfg.mqtt.broker
            );
            Ok(())
        }
    }
}

fn open_updater(cfg: &Config) -> Result<Updater> {
    let probe = ModelProbe::new(Duration::from_millis(
        cfg.ota.probe_latency_budget_ms as u64,
    ));
    Ok(Updater::open(
        &cfg.models.slot_dir,
        Settings::from_config(cfg),
        Box::new(probe),
    )?)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run_ota(cmd: OtaCommand) -> Result<()> {
    match cmd {
        OtaCommand::Keygen { out } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = SigningKey::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| {
                    format!("{} (refusing to overwrite an existing key)", out.display())
                })?;
            writeln!(f, "{}", key.to_secret_string())?;
            println!("{}", key.public());
            Ok(())
        }
        OtaCommand::Status { config, verify } => {
            let cfg = Config::load(&config)?;
            let u = open_updater(&cfg)?;
            let mut v = serde_json::to_value(u.device_state())?;
            v["pending"] = serde_json::to_value(&u.state().pending)?;
            if verify {
                v["verified"] = match u.verify_active() {
                    Ok(Some(m)) => serde_json::json!({"ok": true, "version": m.version}),
                    Ok(None) => serde_json::json!({"ok": true, "version": null}),
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                };
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        OtaCommand::Install {
            config,
            bundle,
            job_id,
        } => {
            let cfg = Config::load(&config)?;
            let mut u = open_updater(&cfg)?;
            if u.recover()? {
                u.run_trial()?;
            }
            u.install_dir(&job_id, &bundle)?;
            let last = u.state().last_job.clone();
            for r in u.take_reports() {
                eprintln!("{}", serde_json::to_string(&r)?);
            }
            match last {
                Some(r)
                    if r.job_id == job_id
                        && r.status == tolk_config::protocol::JobStatus::Succeeded =>
                {
                    println!("installed {} as the active model", bundle.display());
                    Ok(())
                }
                Some(r) if r.job_id == job_id => bail!("{:?}: {}", r.status, r.reason),
                _ => bail!("job {job_id} did not finish"),
            }
        }
        OtaCommand::Agent { config } => {
            let cfg = Config::load(&config)?;
            let u = open_updater(&cfg)?;
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            }
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let mut wd_usec = 0u64;
            let watchdog = sd_notify::watchdog_enabled(false, &mut wd_usec);
            let mut last_ping = Instant::now();
            let opts = AgentOptions {
                device_id: cfg.device.id.to_string(),
                topic_prefix: cfg.mqtt.topic_prefix.clone(),
                broker: BrokerSettings::from_config(&cfg.mqtt),
                stall_timeout: Duration::from_secs(cfg.ota.stall_timeout_s as u64),
                window: 32,
            };
            agent::run(
                u,
                opts,
                stop,
                || {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                    eprintln!("tolk ota agent: connected");
                },
                move || {
                    if STOP.load(Ordering::Relaxed) {
                        stop2.store(true, Ordering::Relaxed);
                    }
                    if watchdog && last_ping.elapsed() > Duration::from_micros(wd_usec / 2) {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                        last_ping = Instant::now();
                    }
                },
            )?;
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            Ok(())
        }
    }
}

struct Doctor {
    failures: usize,
}

impl Doctor {
    fn ok(&self, what: &str, detail: impl AsRef<str>) {
        println!("ok    {what}: {}", detail.as_ref());
    }
    fn warn(&self, what: &str, detail: impl AsRef<str>, fix: &str) {
        println!("warn  {what}: {}\n      fix: {fix}", detail.as_ref());
    }
    fn fail(&mut self, what: &str, detail: impl AsRef<str>, fix: &str) {
        self.failures += 1;
        println!("FAIL  {what}: {}\n      fix: {fix}", detail.as_ref());
    }
}

fn command_ok(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// `tolk doctor`: checks the configuration, CUDA, audio devices, GStreamer plugins, the broker
/// connection and the model slots, and says what to fix. Exit status 1 when anything failed.
pub fn doctor(config: &Path, require_cuda: bool, root: &Path) -> Result<()> {
    let mut d = Doctor { failures: 0 };
    let cfg = match Config::load(config) {
        Ok(c) => {
            d.ok("config", format!("{} is valid", config.display()));
            Some(c)
        }
        Err(e) => {
            d.fail(
                "config",
                e.to_string(),
                "edit the file; `tolk config default` prints a documented example",
            );
            None
        }
    };

    let jetson = platform_checks(&mut d, root);
    if tch::Cuda::is_available() {
        d.ok(
            "cuda",
            format!(
                "{} device(s), cuDNN {}",
                tch::Cuda::device_count(),
                tch::Cuda::cudnn_is_available()
            ),
        );
    } else if require_cuda {
        d.fail(
            "cuda",
            "libtorch sees no CUDA device",
            "on Jetson install NVIDIA's torch wheel for JetPack 6 (deploy/jetson/install.sh) and build with LIBTORCH_USE_PYTORCH=1",
        );
    } else {
        d.warn(
            "cuda",
            "no CUDA device; models run on the CPU",
            "pass --require-cuda on a Jetson to make this an error",
        );
    }

    match std::fs::read_to_string(root.join("proc/asound/cards")) {
        Ok(s) if !s.contains("no soundcards") && !s.trim().is_empty() => {
            d.ok("audio", format!("{} ALSA card(s)", s.lines().filter(|l| l.contains('[')).count()))
        }
        _ => d.fail(
            "audio",
            "no ALSA sound card found (/proc/asound/cards)",
            "plug in the USB microphone/speaker, check `aplay -l` and `arecord -l`, and name it in audio.input.device",
        ),
    }

    let mut missing = Vec::new();
    for el in [
        "alsasrc",
        "alsasink",
        "audioconvert",
        "audioresample",
        "appsrc",
        "appsink",
    ] {
        if command_ok("gst-inspect-1.0", &[el]).is_none() {
            missing.push(el);
        }
    }
    if missing.is_empty() {
        d.ok(
            "gstreamer",
            "alsasrc, alsasink, audioconvert, audioresample, appsrc, appsink present",
        );
    } else {
        d.fail(
            "gstreamer",
            format!("missing element(s): {}", missing.join(", ")),
            "apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-alsa",
        );
    }

    if let Some(cfg) = &cfg {
        match check_broker(cfg) {
            Ok(ms) => d.ok("broker", format!("{} answered in {ms} ms", cfg.mqtt.broker)),
            Err(e) => d.fail(
                "broker",
                format!("{}: {e}", cfg.mqtt.broker),
                "check mqtt.broker, the CA and client certificate paths, and that mosquitto runs (`systemctl status mosquitto`)",
            ),
        }
        let slots = &cfg.models.slot_dir;
        if !slots.is_dir() {
            d.fail(
                "model slots",
                format!("{} does not exist", slots.display()),
                "create it, owned by the tolk user (deploy/jetson/install.sh does), then install a bundle",
            );
        } else {
            match open_updater(cfg) {
            Err(e) => d.fail("model slots", e.to_string(), "check models.slot_dir exists and is writable by the tolk user"),
            Ok(u) => match (u.state().active.clone(), u.verify_active()) {
                (None, _) => d.fail(
                    "model slots",
                    format!("no active model under {}", cfg.models.slot_dir.display()),
                    "install a signed bundle: `tolk ota install --config FILE --bundle DIR` or publish one",
                ),
                (Some(a), Ok(_)) => d.ok(
                    "model slots",
                    format!("slot {} runs {} v{} (signature and files verify)", a.slot, a.name, a.version),
                ),
                (Some(a), Err(e)) => d.fail(
                    "model slots",
                    format!("active slot {} does not verify: {e}", a.slot),
                    "reinstall the bundle; check the disk (`dmesg`, `fsck`)",
                ),
            },
        }
        }
    }
    if let Some(cfg) = &cfg {
        model_memory_check(&mut d, cfg, root, jetson);
    }
    if d.failures > 0 {
        bail!("{} check(s) failed", d.failures);
    }
    println!("all checks passed");
    Ok(())
}

/// The Jetson's release, CUDA toolkit, loaded libtorch, memory and power mode. Returns whether
/// this is a Jetson.
fn platform_checks(d: &mut Doctor, root: &Path) -> bool {
    use tolk_runtime::platform::{
        cuda_toolkit_version, loaded_libtorch, parse_nvpmodel, L4tRelease,
    };
    let release = std::fs::read_to_string(root.join("etc/nv_tegra_release")).ok();
    let jetson = release.is_some();
    match release.as_deref().map(L4tRelease::parse) {
        None => d.ok("platform", "not a Jetson (no /etc/nv_tegra_release)"),
        Some(None) => d.fail(
            "platform",
            "/etc/nv_tegra_release is not in the L4T format (`# R36 (release), REVISION: ...`)",
            "reflash the board with JetPack 6 (SDK Manager)",
        ),
        Some(Some(r)) => match r.jetpack() {
            Some(jp) if r.major == 36 => d.ok(
                "platform",
                format!("Jetson, L4T R{}.{} (JetPack {jp}), board {}", r.major, r.revision, r.board),
            ),
            jp => d.fail(
                "platform",
                format!(
                    "L4T R{}.{} (JetPack {}): Tolk's install targets JetPack 6 (L4T R36)",
                    r.major,
                    r.revision,
                    jp.unwrap_or("unknown")
                ),
                "upgrade the board to JetPack 6 (`sudo apt dist-upgrade` on 6.x, SDK Manager from 5.x)",
            ),
        },
    }
    match cuda_toolkit_version(root) {
        Some(v) => d.ok("cuda toolkit", format!("CUDA {v} (/usr/local/cuda)")),
        None if jetson => d.fail(
            "cuda toolkit",
            "no CUDA toolkit under /usr/local/cuda",
            "sudo apt-get install nvidia-jetpack (JetPack's CUDA, cuDNN and TensorRT)",
        ),
        None => d.ok("cuda toolkit", "none under /usr/local/cuda"),
    }
    match loaded_libtorch() {
        Some((lib, Some(v))) if v.starts_with("2.11.") => {
            d.ok("libtorch", format!("{v} ({})", lib.display()))
        }
        Some((lib, v)) => d.fail(
            "libtorch",
            format!(
                "{} is version {}, tch 0.24 needs 2.11",
                lib.display(),
                v.as_deref().unwrap_or("unknown")
            ),
            "install torch 2.11 for this platform (deploy/jetson/install.sh on a Jetson) and rebuild",
        ),
        None => d.fail(
            "libtorch",
            "no libtorch_cpu.so is mapped into this process",
            "check the rpath (`readelf -d $(which tolk)`) or LD_LIBRARY_PATH",
        ),
    }
    match std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .as_deref()
        .and_then(tolk_runtime::platform::parse_meminfo)
    {
        Some((total, avail)) => d.ok(
            "memory",
            format!(
                "{:.1} GiB total, {:.1} GiB available{}",
                total as f64 / 1048576.0,
                avail as f64 / 1048576.0,
                if jetson {
                    " (shared by the CPU and the GPU)"
                } else {
                    ""
                }
            ),
        ),
        None => d.warn(
            "memory",
            "/proc/meminfo unreadable",
            "check /proc is mounted",
        ),
    }
    if jetson {
        match command_ok("nvpmodel", &["-q"])
            .as_deref()
            .and_then(parse_nvpmodel)
        {
            Some((name, id)) => d.ok(
                "power mode",
                format!(
                    "{name}{} (deploy/README.md: choose the mode that keeps latency in budget)",
                    id.map(|i| format!(", mode {i}")).unwrap_or_default()
                ),
            ),
            None => d.warn(
                "power mode",
                "`nvpmodel -q` gave no power mode",
                "install nvidia-l4t-nvpmodel; set a mode with `sudo nvpmodel -m N`",
            ),
        }
    }
    jetson
}

/// Whether the model the kiosk would run fits in the memory available, with the decoder's KV
/// cache at its longest context (f16 on CUDA, f32 on the CPU).
fn model_memory_check(d: &mut Doctor, cfg: &Config, root: &Path, jetson: bool) {
    use tolk_runtime::platform::{parse_meminfo, ModelFootprint};
    let dir = open_updater(cfg)
        .ok()
        .and_then(|u| u.active_dir())
        .unwrap_or_else(|| cfg.pipeline.fallback_model.clone());
    let bytes_per_value = if tch::Cuda::is_available() { 2 } else { 4 };
    let footprint = match ModelFootprint::of(&dir, bytes_per_value) {
        Ok(f) => f,
        Err(e) => {
            return d.fail(
                "model memory",
                e,
                "install a model (the active slot or pipeline.fallback_model)",
            )
        }
    };
    let Some((_, avail_kib)) = std::fs::read_to_string(root.join("proc/meminfo"))
        .ok()
        .as_deref()
        .and_then(parse_meminfo)
    else {
        return;
    };
    let avail = avail_kib * 1024;
    let mib = |b: u64| b as f64 / 1048576.0;
    let detail = format!(
        "{} needs {:.0} MiB ({:.0} MiB weights + {:.0} MiB KV cache at {} positions) of {:.0} MiB available",
        dir.display(),
        mib(footprint.total()),
        mib(footprint.weight_bytes),
        mib(footprint.kv_cache_bytes),
        footprint.positions,
        mib(avail)
    );
    // Room is left for the runtime, the audio buffers and (on a Jetson) the GPU's own use.
    if footprint.total() * 10 <= avail * 7 {
        d.ok("model memory", detail);
    } else {
        d.fail(
            "model memory",
            detail,
            if jetson {
                "use a quantized export (tolk-train quantize), a smaller model, or a board with more memory"
            } else {
                "use a quantized export (tolk-train quantize) or a smaller model"
            },
        );
    }
}

fn check_broker(cfg: &Config) -> Result<u128> {
    let id = format!("{}-doctor", cfg.device.id);
    let o = options(&BrokerSettings::from_config(&cfg.mqtt), &id, None)?;
    let (_client, mut conn) = rumqttc::Client::new(o, 4);
    let start = Instant::now();
    loop {
        match conn.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                return Ok(start.elapsed().as_millis())
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("no answer within 5 s"),
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("no answer within 5 s");
        }
    }
}
