//! `tolk-train package`: assembles a translator folder (the layout of
//! [`tolk_models::translator`], `tolk-model.json`) from an SFT result, the k-means centroids and
//! one vocoder per target language, storing the weights in f16 (or bf16/f32), then loads it
//! back with [`tolk_models::translator::Translator::load`] to prove it is complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::{Device, Kind};
use tolk_models::checkpoint::{read_safetensors, save_safetensors};
use tolk_models::translator::{
    Direction, ModelManifest, Strategy, Translator, UnitsSpec, MANIFEST_FILE, MODEL_FORMAT,
};

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
    let (tensors, _) = read_safetensors(src, Kind::Float, Device::Cpu, |_| true)
        .with_context(|| format!("reading {}", src.display()))?;
    let out: Vec<_> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(kind)))
        .collect();
    save_safetensors(dst, &out).with_context(|| format!("writing {}", dst.display()))?;
    Ok(())
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    std::fs::copy(src, dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Builds the folder and checks that it loads.
pub fn package(a: &PackageArgs) -> Result<PackageSummary> {
    let kind = match a.dtype.as_str() {
        "f16" => Kind::Half,
        "bf16" => Kind::BFloat16,
        "f32" => Kind::Float,
        other => bail!("--dtype must be f16, bf16 or f32, got {other}"),
    };
    let info: SftInfo = serde_json::from_slice(
        &std::fs::read(a.llm.join("sft.json"))
            .with_context(|| format!("{}: not an SFT output folder", a.llm.display()))?,
    )
    .with_context(|| format!("{}", a.llm.join("sft.json").display()))?;
    let mut vocoders = BTreeMap::new();
    for v in &a.vocoders {
        let Some((lang, dir)) = v.split_once('=') else {
            bail!("--vocoder takes LANG=DIR, got {v}");
        };
        vocoders.insert(lang.to_string(), PathBuf::from(dir));
    }
    let tmp = a.out.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(tmp.join("llm"))?;
    std::fs::create_dir_all(tmp.join("units"))?;
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
    let mut names = BTreeMap::new();
    for (lang, dir) in &vocoders {
        let name = format!("vocoder-{lang}");
        let d = tmp.join(&name);
        std::fs::create_dir_all(&d)?;
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
        units: UnitsSpec::Mfcc {
            kmeans: "units/kmeans.safetensors".into(),
        },
        llm: "llm".into(),
        vocoders: names.clone(),
        max_text_tokens: a.max_text_tokens,
        max_target_units: a.max_target_units,
    };
    std::fs::write(
        tmp.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    Translator::load(&tmp, Device::Cpu, Kind::Float)
        .with_context(|| format!("the packaged folder {} does not load", tmp.display()))?;
    // Replace the translator's own entries only: other files in the folder (samples, notes)
    // stay. The manifest goes last, so a reader never sees it before the files it names.
    std::fs::create_dir_all(&a.out)?;
    let mut entries: Vec<_> = std::fs::read_dir(&tmp)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|n| n == MANIFEST_FILE);
    for name in entries {
        let dst = a.out.join(&name);
        if dst.is_dir() {
            std::fs::remove_dir_all(&dst)?;
        } else if dst.exists() {
            std::fs::remove_file(&dst)?;
        }
        std::fs::rename(tmp.join(&name), &dst)?;
    }
    std::fs::remove_dir(&tmp)?;
    let mut files = BTreeMap::new();
    let mut stack: Vec<PathBuf> = names
        .values()
        .chain(["llm".to_string(), "units".to_string()].iter())
        .map(|n| a.out.join(n))
        .collect();
    files.insert(
        MANIFEST_FILE.to_string(),
        std::fs::metadata(a.out.join(MANIFEST_FILE))?.len(),
    );
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(&a.out)?.display().to_string();
                files.insert(rel, e.metadata()?.len());
            }
        }
    }
    Ok(PackageSummary {
        out: a.out.clone(),
        bytes: files.values().sum(),
        files,
    })
}
