//! Safetensors checkpoints in the Hugging Face layout: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Loading validates every tensor against the architecture's
//! expected names and shapes and reports all problems at once, naming the file.

use crate::error::TensorProblem;
use crate::{ModelError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Tensors read from a file, and the names left unread.
pub type ReadTensors = (Vec<(String, Tensor)>, Vec<String>);

/// A tensor the architecture needs: checkpoint name and shape.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[i64]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }
}

/// Reads and parses a JSON file (configs, indexes), naming the file in errors.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The safetensors files of a checkpoint folder, in a stable order.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(ModelError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither model.safetensors nor model.safetensors.index.json found",
            ),
        ));
    }
    let value: serde_json::Value = read_json(&index)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::config(&index, "weight_map", "missing or not an object"))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::config(&index, format!("weight_map.{name}"), "not a file name")
        })?;
        if file.contains('/') || file.contains("..") {
            return Err(ModelError::config(
                &index,
                format!("weight_map.{name}"),
                format!("shard `{file}` is not a plain file name"),
            ));
        }
        files.insert(dir.join(file));
    }
    Ok(files.into_iter().collect())
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        Dtype::I64 => Some(Kind::Int64),
        Dtype::I32 => Some(Kind::Int),
        Dtype::I8 => Some(Kind::Int8),
        Dtype::U8 => Some(Kind::Uint8),
        _ => None,
    }
}

/// Reads the tensors of one safetensors file for which `keep` is true, each as stored (its
/// dtype and shape, on the CPU), handing them to `f`; returns the names left unread.
fn for_each_stored(
    path: &Path,
    keep: impl Fn(&str) -> bool,
    f: impl FnMut(String, Tensor) -> Result<()>,
) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only and not modified while mapped; tensors copy out of it.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    for_each_stored_in(&mmap, path, keep, f)
}

/// Reads a safetensors file held in memory (`path` names it in errors) into tensors of `kind`
/// on the CPU, as [`read_safetensors`] does for a file.
pub fn read_safetensors_bytes(
    bytes: &[u8],
    path: &Path,
    kind: Kind,
    keep: impl Fn(&str) -> bool,
) -> Result<ReadTensors> {
    let mut loaded = Vec::new();
    let skipped = for_each_stored_in(bytes, path, keep, |name, t| {
        let target = if is_float(t.kind()) { kind } else { t.kind() };
        loaded.push((name, t.f_to_kind(target)?));
        Ok(())
    })?;
    Ok((loaded, skipped))
}

fn for_each_stored_in(
    bytes: &[u8],
    path: &Path,
    keep: impl Fn(&str) -> bool,
    mut f: impl FnMut(String, Tensor) -> Result<()>,
) -> Result<Vec<String>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut skipped = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    for name in names {
        if !keep(&name) {
            skipped.push(name);
            continue;
        }
        let view = st.tensor(&name).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: format!("{name}: {e}"),
        })?;
        let Some(src_kind) = kind_of(view.dtype()) else {
            return Err(ModelError::Tensors {
                path: path.to_path_buf(),
                problems: vec![TensorProblem::Dtype {
                    name,
                    file: path.to_path_buf(),
                    dtype: format!("{:?}", view.dtype()),
                }],
            });
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, src_kind)?;
        f(name, t)?;
    }
    Ok(skipped)
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
    )
}

/// Reads one safetensors file into tensors of `kind` on `device` (integer tensors keep their kind).
/// `keep` decides which names are read; others are returned in the second list, unread.
pub fn read_safetensors(
    path: &Path,
    kind: Kind,
    device: Device,
    keep: impl Fn(&str) -> bool,
) -> Result<ReadTensors> {
    let mut loaded = Vec::new();
    let skipped = for_each_stored(path, keep, |name, t| {
        let target = if is_float(t.kind()) { kind } else { t.kind() };
        loaded.push((name, t.f_to_device(device)?.f_to_kind(target)?));
        Ok(())
    })?;
    Ok((loaded, skipped))
}

/// How a tensor must be stored in a checkpoint file (see [`load_checked_typed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAs {
    /// Any dtype: floating-point tensors are converted to the load dtype, integers kept.
    Any,
    /// A floating-point dtype (f16, bf16, f32, f64), converted to the load dtype.
    Float,
    /// Exactly this dtype, kept as stored (quantized weights and their f32 scales).
    Exactly(Kind),
}

impl StoredAs {
    /// `None` when a tensor of `kind` fits, else what was expected (for the error message).
    fn mismatch(self, kind: Kind) -> Option<String> {
        match self {
            StoredAs::Any => None,
            StoredAs::Float if is_float(kind) => None,
            StoredAs::Float => Some("a floating-point dtype".into()),
            StoredAs::Exactly(k) if k == kind => None,
            StoredAs::Exactly(k) => Some(format!("{k:?}")),
        }
    }
}

/// Loads a checkpoint folder and checks it against `specs`. Names for which `ignorable` is true
/// may be present in the files and are dropped (for example a duplicated tied LM head). Every missing,
/// unexpected or mis-shaped tensor is reported in one error.
pub fn load_checked(
    dir: &Path,
    specs: &[TensorSpec],
    ignorable: &dyn Fn(&str) -> bool,
    kind: Kind,
    device: Device,
) -> Result<HashMap<String, Tensor>> {
    let typed: Vec<(TensorSpec, StoredAs)> =
        specs.iter().map(|s| (s.clone(), StoredAs::Any)).collect();
    load_checked_typed(dir, &typed, ignorable, kind, device)
}

/// [`load_checked`] with a stored dtype per tensor: a tensor stored otherwise is reported (name,
/// file, dtype found and expected) with the other problems. Floating-point tensors of
/// [`StoredAs::Float`] / [`StoredAs::Any`] are converted to `kind`; the others keep their dtype.
/// Everything ends up on `device`.
pub fn load_checked_typed(
    dir: &Path,
    specs: &[(TensorSpec, StoredAs)],
    ignorable: &dyn Fn(&str) -> bool,
    kind: Kind,
    device: Device,
) -> Result<HashMap<String, Tensor>> {
    let wanted: HashMap<&str, &(TensorSpec, StoredAs)> =
        specs.iter().map(|s| (s.0.name.as_str(), s)).collect();
    let mut problems = Vec::new();
    let mut out = HashMap::new();
    for file in checkpoint_files(dir)? {
        let skipped = for_each_stored(
            &file,
            |n| wanted.contains_key(n),
            |name, t| {
                let (spec, stored) = wanted[name.as_str()];
                if let Some(expected) = stored.mismatch(t.kind()) {
                    problems.push(TensorProblem::Dtype {
                        name,
                        file: file.clone(),
                        dtype: format!("{:?} (expected {expected})", t.kind()),
                    });
                } else if t.size() != spec.shape {
                    problems.push(TensorProblem::Shape {
                        name,
                        file: file.clone(),
                        expected: spec.shape.clone(),
                        found: t.size(),
                    });
                } else {
                    let target = match stored {
                        StoredAs::Exactly(k) => *k,
                        _ if is_float(t.kind()) => kind,
                        _ => t.kind(),
                    };
                    out.insert(name, t.f_to_device(device)?.f_to_kind(target)?);
                }
                Ok(())
            },
        )?;
        for name in skipped {
            if !ignorable(&name) {
                problems.push(TensorProblem::Unexpected {
                    name,
                    file: file.clone(),
                });
            }
        }
    }
    for (spec, _) in specs {
        let reported = problems.iter().any(|p| {
            matches!(p, TensorProblem::Shape { name, .. } | TensorProblem::Dtype { name, .. }
                if *name == spec.name)
        });
        if !out.contains_key(&spec.name) && !reported {
            problems.push(TensorProblem::Missing {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
            });
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ModelError::Tensors {
            path: dir.to_path_buf(),
            problems,
        })
    }
}

/// Writes tensors as one safetensors file, atomically (temporary file, then rename).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&contiguous, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    Ok(())
}
