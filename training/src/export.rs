//! `tolk-train export`: a translator folder (the README section "The translator folder") becomes
//! a signed, versioned OTA bundle in the device-operations format of [`tolk_config::bundle`],
//! and no half-written bundle is ever visible under the output name.
//!
//! Steps:
//! 1. check the arguments and read the signing keys (cheap failures first);
//! 2. load the source folder with [`Translator::load`] on the CPU (every part, every consistency
//!    check; quantized `llm/` folders load through the same call), translate the `--sample`s;
//! 3. copy exactly what its `tolk-model.json` names (the manifest, the `llm` folder, the k-means
//!    file, the HuBERT folder if any, one folder per vocoder) into a staging folder beside OUT,
//!    `.<OUT name>.export-<pid>`; hidden files are skipped, links must stay inside the folder,
//!    nothing else at the folder's root (samples, notes) is taken;
//! 4. run the kiosk's own health probe ([`TranslatorProbe`]) on the staged copy: it loads the
//!    copy and translates a built-in signal in every direction (`--no-self-check`: load only);
//! 5. add `release.json` (provenance), sign (`manifest.json` + `manifest.sig`), verify the result
//!    with the signing keys' public halves, fsync every file and folder;
//! 6. rename the staging folder to OUT and fsync the parent. With `--force` an existing OUT is
//!    first renamed to `.<OUT name>.replaced-<pid>` and removed once the new one is in place (put
//!    back if the new one cannot be).
//!
//! An error removes the staging folder; a run killed part-way leaves a staging folder that the
//! next export to the same OUT removes (its process is gone). The pattern is the OTA updater's
//! own (`tolk_ota::updater`): write aside, fsync, rename.
//!
//! Test seams (`TOLK_OTA_FAULT`, as in `tolk_ota::fault`): `export-<step>:kill|abort`
//! ends the process at a step, `export-<step>:fail` returns an error there. Steps: `loaded`,
//! `staged`, `file` (after the first file), `copied`, `checked`, `signed`, `synced`,
//! `moved-old` (with `--force` over an existing OUT), `renamed` (kill/abort only).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};
use tolk_config::bundle::{
    check_relative_path, parse_semver, sign_bundle_dir, verify_bundle_dir, BundleError, BundleInfo,
    SigningKey,
};
use tolk_config::fsutil::{remove_tree, sync_path, sync_tree};
use tolk_config::RUNTIME_VERSION;
use tolk_models::translator::{
    Direction, ModelManifest, Strategy, Translator, UnitsSpec, MANIFEST_FILE,
};
use tolk_models::ModelError;
use tolk_ota::{HealthProbe, ProbeError, TranslatorProbe};

/// Provenance file added at the bundle's root (signed like every other file).
pub const RELEASE_FILE: &str = "release.json";
/// The `format` of [`Release`].
pub const RELEASE_FORMAT: &str = "tolk-release/1";

/// `tolk-train export` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Translator folder (tolk-model.json, llm/, units/, vocoder-*/); only read.
    #[arg(long)]
    pub model: PathBuf,
    /// Bundle folder to create (refused when it exists, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Secret key file(s) from `tolk ota keygen` (give two during a key rotation).
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    #[arg(long)]
    pub name: String,
    /// Monotonic bundle version (devices refuse anything not above what they accepted).
    #[arg(long)]
    pub version: u64,
    /// Must equal the devices' `ota.compatible`.
    #[arg(long)]
    pub compatible: String,
    /// Oldest runtime able to run the bundle (default: the runtime of this build, whose
    /// loader and health probe checked it).
    #[arg(long, default_value = RUNTIME_VERSION)]
    pub min_runtime: String,
    /// Days until the manifest expires.
    #[arg(long, default_value_t = 30)]
    pub expires_in_days: u64,
    /// Replace an existing OUT (renamed away, the new one renamed in, the old one removed).
    #[arg(long)]
    pub force: bool,
    /// Only load the exported copy; skip the health probe's test translation.
    #[arg(long)]
    pub no_self_check: bool,
    /// `DIRECTION=WAV` (any rate, mono or not): also translate this recording and record the
    /// text in release.json. Repeatable.
    #[arg(long = "sample")]
    pub samples: Vec<String>,
}

/// Why an export failed. Nothing is left under OUT whatever the variant.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{0} already exists: pass --force to replace it")]
    Exists(PathBuf),
    #[error("key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the translator folder {dir} does not load: {source}")]
    Load {
        dir: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{path}: links to {target}, outside the translator folder {root}")]
    EscapingLink {
        path: PathBuf,
        target: PathBuf,
        root: PathBuf,
    },
    #[error("{path}: {what}; only regular files and folders are exported")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("{path}: cannot go into a bundle: {message}")]
    BadPath { path: String, message: String },
    #[error("sample {spec}: {message}")]
    Sample { spec: String, message: String },
    #[error("self-check of the exported copy failed: {0}")]
    SelfCheck(ProbeError),
    #[error("signing or verifying the bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("fault injected at export step `{0}` (TOLK_OTA_FAULT)")]
    Fault(String),
}

type Result<T> = std::result::Result<T, ExportError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `release.json`: where a bundle came from and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Always [`RELEASE_FORMAT`].
    pub format: String,
    pub name: String,
    pub version: u64,
    /// The translator folder exported (absolute).
    pub source: String,
    /// The git commit holding the source folder, when it is tracked in a repository.
    pub git: Option<GitInfo>,
    pub strategy: Strategy,
    pub directions: Vec<Direction>,
    pub num_units: u32,
    /// Unit extractor: `mfcc` or `hubert`.
    pub units: String,
    pub llm: LlmInfo,
    /// The health probe on the exported copy (None with `--no-self-check`).
    pub self_check: Option<SelfCheck>,
    pub samples: Vec<SampleCheck>,
    /// Unix seconds and the same instant in UTC (RFC 3339).
    pub created_unix: u64,
    pub created: String,
    /// `tolk-train <version>`.
    pub tool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitInfo {
    pub commit: String,
    /// Whether the exported files differ from that commit (modified or untracked).
    pub dirty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmInfo {
    /// Parameters of the decoder as loaded (a quantized checkpoint counts its weights once).
    pub parameters: u64,
    /// Storage dtype holding most of the stored elements (`F16`, `F32`, `I8`, ...).
    pub dtype: String,
    /// Stored elements per safetensors dtype.
    pub dtypes: BTreeMap<String, u64>,
    /// `quantization_config` of `llm/config.json`, if any.
    pub quantization: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfCheck {
    pub summary: String,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleCheck {
    pub direction: Direction,
    pub wav: String,
    pub text: String,
    pub units: usize,
}

/// What `tolk-train export` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub out: PathBuf,
    pub name: String,
    pub version: u64,
    pub files: usize,
    pub bytes: u64,
    pub skipped: Vec<String>,
    pub release: Release,
    pub seconds: f64,
}

/// `TOLK_OTA_FAULT=export-<step>:<action>`: `kill`/`abort` end the process here (through the
/// OTA seam), `fail` returns an error.
fn seam(step: &str) -> Result<()> {
    let name = format!("export-{step}");
    tolk_ota::fault::seam(&name);
    let armed = std::env::var("TOLK_OTA_FAULT").is_ok_and(|v| {
        v.split(',')
            .filter_map(|s| s.split_once(':'))
            .any(|(s, a)| s.trim() == name && a.trim() == "fail")
    });
    if armed {
        return Err(ExportError::Fault(step.into()));
    }
    Ok(())
}

/// Whether process `pid` still runs (Linux `/proc`; a zombie counts as gone). Our own pid is
/// "gone" too: a folder carrying it was left by an earlier process that had the same id.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Removes a folder tree, or a file or link (what `--force` replaced may be either).
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => remove_tree(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes staging and replaced folders of exports to `out_name` whose process is gone.
fn remove_stale(parent: &Path, out_name: &str) -> Result<Vec<PathBuf>> {
    let prefixes = [
        format!(".{out_name}.export-"),
        format!(".{out_name}.replaced-"),
    ];
    let mut removed = Vec::new();
    for ent in std::fs::read_dir(parent).map_err(io(parent))? {
        let ent = ent.map_err(io(parent))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(pid) = prefixes
            .iter()
            .find_map(|p| name.strip_prefix(p.as_str()))
            .and_then(|rest| rest.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let p = ent.path();
            tracing::warn!(path = %p.display(), "removing the leftover of an interrupted export");
            remove_any(&p).map_err(io(&p))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// A manifest path as '/'-separated normal components (`./llm` -> `llm`).
fn normalize(rel: &str) -> String {
    Path::new(rel)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The files to export: (source path, bundle-relative path), and the hidden files skipped.
#[derive(Debug, Default)]
struct Plan {
    files: BTreeMap<String, PathBuf>,
    skipped: Vec<String>,
}

impl Plan {
    fn of(root: &Path, m: &ModelManifest) -> Result<Self> {
        let mut entries = vec![MANIFEST_FILE.to_string(), normalize(&m.llm)];
        entries.push(normalize(m.units.kmeans()));
        match &m.units {
            UnitsSpec::Hubert { hubert, .. } => entries.push(normalize(hubert)),
            UnitsSpec::Whisper { whisper, .. } => entries.push(normalize(whisper)),
            UnitsSpec::Mfcc { .. } => {}
        }
        entries.extend(m.vocoders.values().map(|v| normalize(v)));
        let mut plan = Self::default();
        for rel in entries {
            plan.walk(root, &rel)?;
        }
        if plan.files.contains_key(RELEASE_FILE) {
            return Err(ExportError::BadPath {
                path: RELEASE_FILE.into(),
                message: "the translator names a file the bundle's provenance file replaces".into(),
            });
        }
        Ok(plan)
    }

    fn walk(&mut self, root: &Path, rel: &str) -> Result<()> {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let mut ty = meta.file_type();
        if ty.is_symlink() {
            // `root` is canonical: a link may point anywhere inside it, never outside.
            let target = std::fs::canonicalize(&path).map_err(io(&path))?;
            if !target.starts_with(root) {
                return Err(ExportError::EscapingLink {
                    path,
                    target,
                    root: root.to_path_buf(),
                });
            }
            ty = std::fs::metadata(&path).map_err(io(&path))?.file_type();
            if ty.is_dir() {
                return Err(ExportError::NotRegular {
                    path,
                    what: "a link to a folder",
                });
            }
        }
        if ty.is_dir() {
            let mut names = Vec::new();
            for ent in std::fs::read_dir(&path).map_err(io(&path))? {
                names.push(ent.map_err(io(&path))?.file_name());
            }
            names.sort();
            for n in names {
                let n = n.to_string_lossy().into_owned();
                let child = format!("{rel}/{n}");
                if n.starts_with('.') {
                    self.skipped.push(child);
                } else {
                    self.walk(root, &child)?;
                }
            }
        } else if ty.is_file() {
            check_relative_path(rel).map_err(|message| ExportError::BadPath {
                path: rel.to_string(),
                message,
            })?;
            self.files.insert(rel.to_string(), path);
        } else {
            return Err(ExportError::NotRegular {
                path,
                what: "not a regular file",
            });
        }
        Ok(())
    }
}

/// Stored elements per dtype of one safetensors file, from its JSON header.
fn safetensors_dtypes(path: &Path, out: &mut BTreeMap<String, u64>) -> Result<()> {
    use std::io::Read;
    let bad = |m: String| ExportError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, m),
    };
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io(path))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(format!("safetensors header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io(path))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))?;
    let Some(map) = v.as_object() else {
        return Err(bad("safetensors header is not an object".into()));
    };
    for (name, t) in map {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"].as_str().unwrap_or("?").to_string();
        let numel = t["shape"]
            .as_array()
            .map(|s| s.iter().map(|d| d.as_u64().unwrap_or(0)).product::<u64>())
            .unwrap_or(0);
        *out.entry(dtype).or_default() += numel;
    }
    Ok(())
}

fn llm_info(tr: &Translator) -> Result<LlmInfo> {
    let dir = tr.dir().join(&tr.manifest().llm);
    let mut dtypes = BTreeMap::new();
    let files =
        tolk_models::checkpoint::checkpoint_files(&dir).map_err(|source| ExportError::Load {
            dir: dir.clone(),
            source,
        })?;
    for f in files {
        safetensors_dtypes(&f, &mut dtypes)?;
    }
    let dtype = dtypes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| d.clone())
        .unwrap_or_default();
    let cfg_path = dir.join("config.json");
    let cfg: serde_json::Value = tolk_models::checkpoint::read_json(&cfg_path)
        .map_err(|source| ExportError::Load { dir, source })?;
    let parameters = tr
        .llm()
        .named_tensors()
        .iter()
        .map(|(_, t)| t.numel() as u64)
        .sum();
    Ok(LlmInfo {
        parameters,
        dtype,
        dtypes,
        quantization: cfg.get("quantization_config").cloned(),
    })
}

/// The commit of the repository holding `dir`, when `dir`'s manifest is tracked there.
fn git_info(dir: &Path, rels: &[&str]) -> Option<GitInfo> {
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if git(&["ls-files", "--", MANIFEST_FILE])?.is_empty() {
        return None;
    }
    let commit = git(&["rev-parse", "HEAD"])?;
    let mut args = vec!["status", "--porcelain", "--untracked-files=all", "--"];
    args.extend_from_slice(rels);
    let dirty = !git(&args)?.is_empty();
    Some(GitInfo { commit, dirty })
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (days to civil date after H. Hinnant,
/// "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
pub fn utc_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Translates each `DIRECTION=WAV` sample with the loaded source translator.
fn run_samples(tr: &Translator, specs: &[String]) -> Result<Vec<SampleCheck>> {
    let mut out = Vec::new();
    for spec in specs {
        let err = |message: String| ExportError::Sample {
            spec: spec.clone(),
            message,
        };
        let (d, wav) = spec
            .split_once('=')
            .ok_or_else(|| err("expected DIRECTION=WAV, e.g. en-fr=hello.wav".into()))?;
        let direction = Direction::parse(d).map_err(|e| err(e.to_string()))?;
        if !tr.manifest().supports_direction(direction) {
            return Err(err(format!("the model does not translate {direction}")));
        }
        let audio =
            tolk_models::audio::wav::read_wav(wav).map_err(|e| err(format!("reading: {e}")))?;
        let (pcm, _) = tolk_models::audio::condition::to_mono_16k(
            &audio.samples,
            audio.sample_rate,
            audio.channels,
        )
        .map_err(|e| err(format!("converting to 16 kHz mono: {e}")))?;
        let o = tr
            .translate_audio(&pcm, direction, tr.default_mode())
            .map_err(|e| err(format!("translating: {e}")))?;
        tracing::info!(%direction, wav, text = %o.text, units = o.units.len(), "sample");
        out.push(SampleCheck {
            direction,
            wav: wav.to_string(),
            text: o.text,
            units: o.units.len(),
        });
    }
    Ok(out)
}

/// What is known before the staging folder exists.
struct Prepared {
    plan: Plan,
    release: Release,
    info: BundleInfo,
    keys: Vec<SigningKey>,
}

/// Builds the complete, signed, synced bundle in `staging`.
fn build(staging: &Path, p: &mut Prepared, self_check: bool) -> Result<(usize, u64)> {
    seam("staged")?;
    for (i, (rel, src)) in p.plan.files.iter().enumerate() {
        let dst = staging.join(rel);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        std::fs::copy(src, &dst).map_err(io(src))?;
        if i == 0 {
            seam("file")?;
        }
    }
    seam("copied")?;
    // The copy, not the source, is what devices get: load it (and probe it) from staging.
    p.release.self_check = if self_check {
        let r = TranslatorProbe {
            budget: Duration::from_secs(24 * 3600),
        }
        .probe(staging)
        .map_err(ExportError::SelfCheck)?;
        tracing::info!(summary = %r.summary, "self-check passed");
        Some(SelfCheck {
            summary: r.summary,
            latency_ms: r.latency.as_millis() as u64,
        })
    } else {
        Translator::load(staging, Device::Cpu, Kind::Float).map_err(|source| {
            ExportError::Load {
                dir: staging.to_path_buf(),
                source,
            }
        })?;
        None
    };
    seam("checked")?;
    let rpath = staging.join(RELEASE_FILE);
    let json = serde_json::to_vec_pretty(&p.release).expect("release serialises");
    std::fs::write(&rpath, json).map_err(io(&rpath))?;
    let refs: Vec<&SigningKey> = p.keys.iter().collect();
    let m = sign_bundle_dir(staging, &p.info, &refs)?;
    let publics: Vec<_> = p.keys.iter().map(|k| k.public()).collect();
    verify_bundle_dir(staging, &publics)?;
    seam("signed")?;
    sync_tree(staging).map_err(io(staging))?;
    seam("synced")?;
    Ok((m.files.len(), m.total_size()))
}

/// Renames `staging` to `out` (after moving an existing `out` away when `force`), then fsyncs
/// the parent and removes the old folder. A failure before the new folder is in place puts the
/// old one back.
fn publish(staging: &Path, out: &Path, parent: &Path, out_name: &str, force: bool) -> Result<()> {
    let old = if std::fs::symlink_metadata(out).is_ok() {
        if !force {
            return Err(ExportError::Exists(out.to_path_buf()));
        }
        let away = parent.join(format!(".{out_name}.replaced-{}", std::process::id()));
        std::fs::rename(out, &away).map_err(io(out))?;
        Some(away)
    } else {
        None
    };
    let moved = (|| {
        if old.is_some() {
            seam("moved-old")?;
        }
        std::fs::rename(staging, out).map_err(io(out))
    })();
    if let Err(e) = moved {
        if let Some(away) = &old {
            if let Err(re) = std::fs::rename(away, out) {
                tracing::error!(error = %re, "could not put {} back to {}", away.display(), out.display());
            }
        }
        return Err(e);
    }
    tolk_ota::fault::seam("export-renamed");
    sync_path(parent).map_err(io(parent))?;
    if let Some(away) = old {
        if let Err(e) = remove_any(&away) {
            tracing::warn!(error = %e, "the replaced bundle {} was not removed", away.display());
        }
    }
    Ok(())
}

fn check_args(a: &ExportArgs) -> Result<()> {
    let bad = |m: String| Err(ExportError::Invalid(m));
    if a.name.is_empty() || a.name.len() > 128 {
        return bad("--name must be 1 to 128 characters".into());
    }
    if a.version == 0 {
        return bad("--version must be at least 1".into());
    }
    if a.compatible.is_empty() {
        return bad("--compatible must not be empty (the devices' ota.compatible)".into());
    }
    if parse_semver(&a.min_runtime).is_none() {
        return bad(format!(
            "--min-runtime {:?} is not major.minor.patch",
            a.min_runtime
        ));
    }
    if a.expires_in_days == 0 {
        return bad("--expires-in-days must be at least 1".into());
    }
    Ok(())
}

/// Runs `tolk-train export`.
pub fn export(a: &ExportArgs) -> Result<ExportSummary> {
    let start = Instant::now();
    let _span =
        tracing::info_span!("export", model = %a.model.display(), out = %a.out.display()).entered();
    check_args(a)?;
    let keys = a
        .keys
        .iter()
        .map(|p| {
            crate::bundle::read_signing_key(p).map_err(|e| ExportError::Key {
                path: p.clone(),
                message: match e {
                    BundleError::Io { message, .. } => message,
                    e => e.to_string(),
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;

    // Where things go. OUT's parent is made canonical so that the staging folder is a sibling
    // on the same file system (rename is atomic only there).
    let out_abs = std::path::absolute(&a.out).map_err(io(&a.out))?;
    let out_name = match out_abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    {
        Some(n) if !n.starts_with('.') => n,
        _ => {
            return Err(ExportError::Invalid(format!(
                "--out {} must end in a plain, visible folder name",
                a.out.display()
            )))
        }
    };
    let parent_raw = out_abs.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent_raw).map_err(io(parent_raw))?;
    let parent = std::fs::canonicalize(parent_raw).map_err(io(parent_raw))?;
    let out = parent.join(&out_name);
    let model = std::fs::canonicalize(&a.model).map_err(io(&a.model))?;
    if out.starts_with(&model) {
        return Err(ExportError::Invalid(format!(
            "--out {} is inside the translator folder {}, which is only read",
            out.display(),
            model.display()
        )));
    }
    if std::fs::symlink_metadata(&out).is_ok() {
        if !a.force {
            return Err(ExportError::Exists(out));
        }
        if model.starts_with(&out) {
            return Err(ExportError::Invalid(format!(
                "the translator folder {} is inside --out {}: --force would delete it",
                model.display(),
                out.display()
            )));
        }
    }
    remove_stale(&parent, &out_name)?;

    // The source: loaded whole (every consistency check), then planned file by file.
    let tr =
        Translator::load(&model, Device::Cpu, Kind::Float).map_err(|source| ExportError::Load {
            dir: model.clone(),
            source,
        })?;
    seam("loaded")?;
    let samples = run_samples(&tr, &a.samples)?;
    let plan = Plan::of(&model, tr.manifest())?;
    let m = tr.manifest();
    let rels: Vec<&str> = plan.files.keys().map(|k| k.as_str()).collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let release = Release {
        format: RELEASE_FORMAT.into(),
        name: a.name.clone(),
        version: a.version,
        source: model.display().to_string(),
        git: git_info(&model, &rels),
        strategy: m.strategy,
        directions: m.directions.clone(),
        num_units: m.num_units,
        units: m.units.extractor_name().into(),
        llm: llm_info(&tr)?,
        self_check: None,
        samples,
        created_unix: now,
        created: utc_rfc3339(now),
        tool: format!("tolk-train {}", env!("CARGO_PKG_VERSION")),
    };
    drop(tr);
    let mut prepared = Prepared {
        info: BundleInfo {
            name: a.name.clone(),
            version: a.version,
            compatible: a.compatible.clone(),
            min_runtime: a.min_runtime.clone(),
            expires: now + a.expires_in_days * 86_400,
        },
        plan,
        release,
        keys,
    };

    let staging = parent.join(format!(".{out_name}.export-{}", std::process::id()));
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let built = build(&staging, &mut prepared, !a.no_self_check)
        .and_then(|n| publish(&staging, &out, &parent, &out_name, a.force).map(|_| n));
    let (files, bytes) = match built {
        Ok(n) => n,
        Err(e) => {
            if let Err(re) = remove_tree(&staging) {
                tracing::error!(error = %re, "the staging folder {} was not removed", staging.display());
            }
            return Err(e);
        }
    };
    Ok(ExportSummary {
        out,
        name: a.name.clone(),
        version: a.version,
        files,
        bytes,
        skipped: prepared.plan.skipped,
        release: prepared.release,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        // 2000-02-29 (a leap day of a century leap year) and 2023-11-14 22:13:20 UTC
        // (Unix time 1,700,000,000).
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn manifest_paths_are_normalised() {
        assert_eq!(normalize("./llm"), "llm");
        assert_eq!(
            normalize("units/kmeans.safetensors"),
            "units/kmeans.safetensors"
        );
    }

    #[test]
    fn only_dead_processes_leave_stale_folders() {
        assert!(!process_alive(std::process::id()));
        // pid 1 always runs on Linux.
        assert!(process_alive(1) || !Path::new("/proc/1").exists());
        assert!(!process_alive(u32::MAX));
    }
}
