//! GGUF checkpoints (llama.cpp's file format), read in pure Rust, and their import into the
//! Hugging Face Llama layout that [`super::Llama`] loads (`tolk model import-gguf`).
//!
//! # The file (GGUF v2 and v3, little-endian)
//!
//! As written by gguf-py's `GGUFWriter` and read by its `GGUFReader` (`gguf/gguf_reader.py`) and
//! by llama.cpp's `ggml/src/gguf.cpp`:
//!
//! ```text
//! "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//! kv_count x   (string key, u32 value type, value)
//! tensor_count x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset)
//! padding to `general.alignment` (u32, default 32)
//! data section: tensor i at data_start + offset_i
//! ```
//!
//! A string is a u64 byte count and UTF-8 bytes (no terminator); an array is a u32 element type,
//! a u64 count and the elements. `ne[0]` is the fastest-varying dimension, so a row-major
//! Hugging Face `[out, in]` matrix has `ne = [in, out]`. v2 and v3 share this layout (v3 only
//! added big-endian files, which are refused here); v1 had 32-bit counts and is refused.
//!
//! # Dequantization
//!
//! F32, F16, BF16, Q8_0, Q4_0 and Q4_1, bit for bit as gguf-py's `gguf/quants.py` (and
//! `dequantize_row_q8_0` / `_q4_0` / `_q4_1` in ggml's `ggml-quants.c`): blocks of 32 values,
//! each with an f16 scale `d` (Q4_1 also an f16 minimum `m`), then
//! - Q8_0: 32 x i8, `x = d * q`;
//! - Q4_0: 16 bytes of nibbles, the low nibbles elements 0..16 and the high ones 16..32,
//!   `x = d * (q - 8)`;
//! - Q4_1: the same nibbles, `x = d * q + m`.
//!
//! Any other ggml type is a [`GgufError::UnsupportedType`] naming the tensor and the type.
//!
//! # Mapping to the Hugging Face layout
//!
//! The config comes from the `llama.*` keys ([`llama_config`]); the tensors are renamed
//! (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, ...), their `ne` reversed
//! into the HF shape, and the row permutation that llama.cpp's `convert_hf_to_gguf.py`
//! (`LlamaModel.permute`) applies to the query and key projections undone, as transformers'
//! GGUF loader does (`LlamaTensorProcessor._reverse_permute_weights` in
//! `transformers/modeling_gguf_pytorch_utils.py`). Llama 3 RoPE scaling, which llama.cpp stores
//! as per-frequency factors (`rope_freqs.weight`), is recognized by recomputing those factors
//! ([`llama3_rope_from_factors`]). A byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`)
//! with a pre-tokenizer llama.cpp defines and this module reproduces becomes a `tokenizer.json`
//! ([`tokenizer_json`]); anything else is left out with a reason.

use super::config::{LlamaConfig, RopeScaling};
use super::model::Llama;
use crate::checkpoint::save_safetensors;
use crate::ModelError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent (gguf-py `GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (a corrupt file must not exhaust the stack).
const MAX_ARRAY_DEPTH: usize = 8;
/// The ggml types [`GgufFile::dequantize`] handles, for error messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1";

pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Everything that can go wrong reading or importing a GGUF file; every variant names the file,
/// and the key or tensor at fault where there is one.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (starts with {found:?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: String },
    #[error("{path}: GGUF version {version} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{path}: truncated file: {what} needs bytes {start}..{end}, but the file has {len} bytes"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{path}: malformed GGUF: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("{path}: metadata key `{key}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{path}: tensor `{tensor}` is stored as {ggml_type}, which is not dequantized here \
         (supported: {SUPPORTED_TYPES}){}",
        others_note(.others)
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
        /// Further tensors of the file in unsupported types.
        others: usize,
    },
    #[error("{path}: general.architecture is `{found}`; only `llama` GGUF files can be imported")]
    Architecture { path: PathBuf, found: String },
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("{path}: the tensors do not match the model the llama.* keys describe:{}", list(.problems))]
    Tensors {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{path}: the output folder exists and is not empty")]
    OutputExists { path: PathBuf },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn others_note(others: &usize) -> String {
    match *others {
        0 => String::new(),
        n => format!(" (and {n} more tensors in unsupported types)"),
    }
}

fn list(problems: &[String]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// A metadata value type (gguf-py `GGUFValueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Fewest bytes one value of this type takes (a string or an array holds at least its count).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type and elements (arrays may nest).
    Array(ValueType, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            GgufValue::U8(_) => ValueType::U8,
            GgufValue::I8(_) => ValueType::I8,
            GgufValue::U16(_) => ValueType::U16,
            GgufValue::I16(_) => ValueType::I16,
            GgufValue::U32(_) => ValueType::U32,
            GgufValue::I32(_) => ValueType::I32,
            GgufValue::F32(_) => ValueType::F32,
            GgufValue::Bool(_) => ValueType::Bool,
            GgufValue::String(_) => ValueType::String,
            GgufValue::Array(..) => ValueType::Array,
            GgufValue::U64(_) => ValueType::U64,
            GgufValue::I64(_) => ValueType::I64,
            GgufValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type, as i64 (a u64 above `i64::MAX` is `None`).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// F32 or F64, as f64 (an f32 widens exactly).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, items) => Some(items),
            _ => None,
        }
    }
}

/// A ggml tensor type id (gguf-py `GGMLQuantizationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q8_0: Self = Self(8);
    pub const BF16: Self = Self(30);

    /// Name, values per block and bytes per block of every type gguf-py 0.19 knows
    /// (`GGML_QUANT_SIZES` in `gguf/constants.py`, QK_K = 256), so that a file in a type we do not
    /// dequantize still parses and the error can name the type.
    fn layout(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 40),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            40 => ("NVFP4", 64, 36),
            41 => ("Q1_0", 128, 18),
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self.layout() {
            Some((name, ..)) => name.to_string(),
            None => format!("ggml type {}", self.0),
        }
    }

    /// Whether [`dequantize`] handles this type.
    pub fn is_supported(self) -> bool {
        matches!(
            self,
            Self::F32 | Self::F16 | Self::BF16 | Self::Q8_0 | Self::Q4_0 | Self::Q4_1
        )
    }
}

/// One tensor's entry in the tensor-info table.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    /// `ne`: `dims[0]` varies fastest (the reverse of the row-major shape).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl GgufTensor {
    /// The row-major shape (`dims` reversed): `[out, in]` for a Hugging Face linear weight.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// The bytes of the file: mapped, or read for files too small to map.
enum Bytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Read(v) => v,
        }
    }
}

/// A parsed GGUF file: header, metadata and tensor infos, with the tensor data mapped (read on
/// demand).
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: Vec<(String, GgufValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<GgufTensor>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the file; every read past the end is a
/// [`GgufError::Truncated`] saying what was being read.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn truncated(&self, what: String, need: u64) -> GgufError {
        let start = self.pos as u64;
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what,
            start,
            end: start.saturating_add(need),
            len: self.bytes.len() as u64,
        }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(what(), n));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Malformed {
            path: self.path.to_path_buf(),
            message: format!("{} is not valid UTF-8", what()),
        })
    }

    /// Refuses a count of items that cannot fit in the bytes left, before anything is allocated
    /// for them.
    fn check_count(&self, count: u64, min_size: u64, what: &dyn Fn() -> String) -> Result<()> {
        let need = count.saturating_mul(min_size);
        if need > self.remaining() {
            return Err(self.truncated(format!("{} ({count} items)", what()), need));
        }
        Ok(())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let what = || format!("the value of `{key}`");
        let Some(vt) = ValueType::from_u32(ty) else {
            return Err(GgufError::Malformed {
                path: self.path.to_path_buf(),
                message: format!("`{key}` has unknown value type {ty}"),
            });
        };
        Ok(match vt {
            ValueType::U8 => GgufValue::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            ValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => GgufValue::U32(self.u32(&what)?),
            ValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            // gguf-py reads a bool as numpy's bool_: any non-zero byte is true.
            ValueType::Bool => GgufValue::Bool(self.array::<1>(&what)?[0] != 0),
            ValueType::String => GgufValue::String(self.string(&what)?),
            ValueType::U64 => GgufValue::U64(self.u64(&what)?),
            ValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed {
                        path: self.path.to_path_buf(),
                        message: format!("`{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let elem = self.u32(&what)?;
                let Some(elem_type) = ValueType::from_u32(elem) else {
                    return Err(GgufError::Malformed {
                        path: self.path.to_path_buf(),
                        message: format!("`{key}` is an array of unknown value type {elem}"),
                    });
                };
                let n = self.u64(&what)?;
                self.check_count(n, elem_type.min_size(), &what)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(elem_type, items)
            }
        })
    }
}

fn align_up(x: u64, alignment: u64) -> u64 {
    x.div_ceil(alignment) * alignment
}

impl GgufFile {
    /// Reads the header, metadata and tensor infos of `path` and checks that every tensor's data
    /// lies inside the file. The data itself is read by [`Self::dequantize`].
    pub fn open(path: &Path) -> Result<Self> {
        let _span = tracing::info_span!("gguf_open", path = %path.display()).entered();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // A header is at least 24 bytes; shorter files are read (not mapped) so that the
        // truncation is reported like any other.
        let bytes = if len < 24 {
            Bytes::Read(std::fs::read(path).map_err(io)?)
        } else {
            // SAFETY: the file is opened read-only and only read while mapped; a file modified
            // during the import is the caller's problem, as with the safetensors loader.
            Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        let parsed = Self::parse(path, &bytes)?;
        Ok(Self { bytes, ..parsed })
    }

    /// [`Self::open`] on bytes already in memory; `path` names them in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Self> {
        let parsed = Self::parse(path, &bytes)?;
        Ok(Self {
            bytes: Bytes::Read(bytes),
            ..parsed
        })
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            path,
        };
        let malformed = |message: String| GgufError::Malformed {
            path: path.to_path_buf(),
            message,
        };
        let header = || "the header".to_string();
        let magic: [u8; 4] = c.array(&header)?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        let version = c.u32(&header)?;
        if version & 0xFFFF == 0 && version != 0 {
            // What gguf-py takes as the sign of a file written on a big-endian machine.
            return Err(malformed(format!(
                "version field {version:#x} reads as a big-endian file, which is not supported"
            )));
        }
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = c.u64(&header)?;
        let n_kv = c.u64(&header)?;

        // Key/value pairs: each takes at least a key length, a type and one byte.
        c.check_count(n_kv, 13, &|| "the metadata".to_string())?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let ty = c.u32(&|| format!("the type of `{key}`"))?;
            let value = c.value(ty, &key, 0)?;
            if keys.insert(key.clone(), metadata.len()).is_some() {
                return Err(malformed(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }

        // Tensor infos: each takes at least a name length, n_dims, a type and an offset.
        c.check_count(n_tensors, 24, &|| "the tensor infos".to_string())?;
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor #{i}"))?;
            let what = || format!("the info of tensor `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(malformed(format!(
                    "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let ggml_type = GgmlType(c.u32(&what)?);
            let offset = c.u64(&what)?;
            infos.push((name, dims, ggml_type, offset));
        }

        let alignment = match keys.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(GgufError::Metadata {
                    path: path.to_path_buf(),
                    key: "general.alignment".into(),
                    message: format!("{other:?} is not a u32 power of two"),
                })
            }
        };
        let data_start = align_up(c.pos as u64, alignment);
        let len = bytes.len() as u64;

        let mut tensors = Vec::with_capacity(infos.len());
        let mut by_name = HashMap::new();
        for (name, dims, ggml_type, offset) in infos {
            let Some((type_name, block, type_size)) = ggml_type.layout() else {
                return Err(malformed(format!(
                    "tensor `{name}` has unknown ggml type {}",
                    ggml_type.0
                )));
            };
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| malformed(format!("tensor `{name}`: {dims:?} overflows")))?;
            // A scalar (no dims) is one row of one value.
            let row = dims.first().copied().unwrap_or(1);
            if row % block != 0 {
                return Err(malformed(format!(
                    "tensor `{name}` ({type_name}): rows of {row} values are not whole blocks \
                     of {block}"
                )));
            }
            let n_bytes = (n_elements / block)
                .checked_mul(type_size)
                .ok_or_else(|| malformed(format!("tensor `{name}`: size overflows")))?;
            // llama.cpp (gguf.cpp) requires every tensor to start on the alignment.
            if offset % alignment != 0 {
                return Err(malformed(format!(
                    "tensor `{name}` starts at data offset {offset}, not a multiple of the \
                     alignment {alignment}"
                )));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= len => {}
                _ => {
                    return Err(GgufError::Truncated {
                        path: path.to_path_buf(),
                        what: format!("the data of tensor `{name}` ({type_name}, ne {dims:?})"),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len,
                    })
                }
            }
            if by_name.insert(name.clone(), tensors.len()).is_some() {
                return Err(malformed(format!("tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensor {
                name,
                dims,
                ggml_type,
                offset,
                n_elements,
                n_bytes,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            bytes: Bytes::Read(Vec::new()),
            version,
            alignment,
            data_start,
            metadata,
            keys,
            tensors,
            by_name,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The key/value pairs in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of a tensor (bounds checked at open).
    pub fn tensor_bytes(&self, t: &GgufTensor) -> &[u8] {
        let start = (self.data_start + t.offset) as usize;
        &self.bytes[start..start + t.n_bytes as usize]
    }

    fn info(&self, name: &str) -> Result<&GgufTensor> {
        self.tensor(name).ok_or_else(|| GgufError::Tensors {
            path: self.path.clone(),
            problems: vec![format!("missing tensor `{name}`")],
        })
    }

    /// The values of tensor `name` as f32, in storage order (row-major in [`GgufTensor::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        dequantize(t.ggml_type, self.tensor_bytes(t)).ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: t.name.clone(),
            ggml_type: t.ggml_type.name(),
            others: 0,
        })
    }

    /// Tensor `name` dequantized into an f32 tensor of its row-major shape (no renaming or
    /// permutation: the GGUF's own layout).
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let shape = self.info(name)?.shape();
        let values = self.dequantize(name)?;
        Ok(Tensor::f_from_slice(&values)?.f_reshape(shape)?)
    }

    fn key_error(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An integer key; an array of equal integers (llama.cpp allows per-layer head counts) counts
    /// as that integer.
    pub fn get_int(&self, key: &str) -> Result<Option<i64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(items) = v.as_array() {
            let ints: Option<Vec<i64>> = items.iter().map(GgufValue::as_i64).collect();
            return match ints.as_deref() {
                Some([first, rest @ ..]) if rest.iter().all(|x| x == first) => Ok(Some(*first)),
                Some([_, ..]) => {
                    Err(self.key_error(key, "per-layer values that differ are not supported"))
                }
                _ => Err(self.key_error(key, format!("{v:?} is not an integer"))),
            };
        }
        v.as_i64()
            .map(Some)
            .ok_or_else(|| self.key_error(key, format!("{v:?} is not an integer")))
    }

    pub fn require_int(&self, key: &str) -> Result<i64> {
        self.get_int(key)?
            .ok_or_else(|| self.key_error(key, "missing required key"))
    }

    pub fn get_float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("{v:?} is not a float"))),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("{v:?} is not a string"))),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("{v:?} is not a bool"))),
        }
    }

    /// An array of strings (the vocabulary, the merges).
    pub fn get_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let strings: Option<Vec<&str>> = v
            .as_array()
            .and_then(|items| items.iter().map(GgufValue::as_str).collect());
        strings
            .map(Some)
            .ok_or_else(|| self.key_error(key, "not an array of strings"))
    }

    fn get_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let ints: Option<Vec<i64>> = v
            .as_array()
            .and_then(|items| items.iter().map(GgufValue::as_i64).collect());
        ints.map(Some)
            .ok_or_else(|| self.key_error(key, "not an array of integers"))
    }
}

fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_le_bytes([lo, hi]).to_f32()
}

/// Values of one tensor stored as `ty`, or `None` when `ty` is not one of [`SUPPORTED_TYPES`].
/// `bytes` must hold whole blocks (checked when the file is opened).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(|b| f16(b[0], b[1])).collect(),
        // The upper half of an f32 (gguf-py `BF16.dequantize_blocks`: `int32 << 16`).
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        // block_q8_0 (ggml-common.h): f16 d, 32 x i8; `dequantize_row_q8_0`: x = q * d.
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(bytes.len() / 34 * 32);
            for block in bytes.chunks_exact(34) {
                let d = f16(block[0], block[1]);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
            out
        }
        // block_q4_0: f16 d, 16 bytes; element j is the low nibble of byte j, element j + 16 its
        // high nibble (`dequantize_row_q4_0`: x = (q - 8) * d).
        GgmlType::Q4_0 => {
            let mut out = Vec::with_capacity(bytes.len() / 18 * 32);
            for block in bytes.chunks_exact(18) {
                let d = f16(block[0], block[1]);
                let qs = &block[2..];
                out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
                out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
            }
            out
        }
        // block_q4_1: f16 d, f16 m, 16 bytes of nibbles as Q4_0 (`dequantize_row_q4_1`:
        // x = q * d + m, a product then a sum in f32, as gguf-py computes it).
        GgmlType::Q4_1 => {
            let mut out = Vec::with_capacity(bytes.len() / 20 * 32);
            for block in bytes.chunks_exact(20) {
                let d = f16(block[0], block[1]);
                let m = f16(block[2], block[3]);
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
            out
        }
        _ => return None,
    })
}

/// How a GGUF tensor becomes a Hugging Face one.
#[derive(Debug, Clone)]
struct Mapped {
    gguf: String,
    hf: String,
    /// Heads whose rows llama.cpp permuted (query: all heads, key: the key/value heads).
    unpermute_heads: Option<i64>,
}

/// Per-layer tensors: GGUF suffix and Hugging Face suffix (llama.cpp `LLM_TENSOR_NAMES`, the same
/// table as transformers' `GGUF_TO_TRANSFORMERS_MAPPING` for llama).
const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The Llama 3 frequency factors llama.cpp stores in place of `rope_scaling`.
const ROPE_FREQS: &str = "rope_freqs.weight";

fn mapping(cfg: &LlamaConfig) -> Vec<Mapped> {
    let plain = |gguf: &str, hf: &str| Mapped {
        gguf: gguf.into(),
        hf: hf.into(),
        unpermute_heads: None,
    };
    let mut out = vec![plain("token_embd.weight", "model.embed_tokens.weight")];
    for l in 0..cfg.num_hidden_layers {
        for (g, h) in LAYER_TENSORS {
            let heads = match g {
                "attn_q.weight" => Some(cfg.num_attention_heads),
                "attn_k.weight" => Some(cfg.num_key_value_heads),
                _ => None,
            };
            out.push(Mapped {
                gguf: format!("blk.{l}.{g}"),
                hf: format!("model.layers.{l}.{h}"),
                unpermute_heads: heads,
            });
        }
    }
    out.push(plain("output_norm.weight", "model.norm.weight"));
    if !cfg.tie_word_embeddings {
        out.push(plain("output.weight", "lm_head.weight"));
    }
    out
}

/// Undoes `LlamaModel.permute` of llama.cpp's `convert_hf_to_gguf.py`, which reorders the rows
/// of each head from rotate-half (`[x0..x_{d/2}, y0..]`) to interleaved pairs:
/// `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)`. The inverse reshapes to
/// `(n_head, d/2, 2, in)` and swaps back (transformers' `_reverse_permute_weights`).
pub fn unpermute_rows(w: &Tensor, n_head: i64) -> Result<Tensor> {
    let size = w.size();
    let (rows, rest) = (size[0], &size[1..]);
    let mut view = vec![n_head, rows / n_head / 2, 2];
    view.extend_from_slice(rest);
    Ok(w.f_reshape(view.as_slice())?
        .f_transpose(1, 2)?
        .f_reshape(size.as_slice())?
        .f_contiguous()?)
}

/// Llama 3 RoPE scaling from llama.cpp's per-frequency factors. `convert_hf_to_gguf.py`
/// (`LlamaModel.generate_extra_tensors`) writes, for each inverse frequency `f` of the plain
/// RoPE, 1 when the wavelength `2 pi / f` is shorter than `old_context / high_freq_factor`,
/// `factor` when longer than `old_context / low_freq_factor`, and `1 / ((1 - s) / factor + s)`
/// with `s = (old_context / wavelength - low) / (high - low)` in between; its defaults (and the
/// values of every Llama 3.1 / 3.2 checkpoint) are low 1, high 4 and an old context of 8192.
/// The factor is the largest stored value; the stored factors must then equal the recomputed
/// ones (to f32 rounding), or the scaling is one this importer does not know.
pub fn llama3_rope_from_factors(
    factors: &[f32],
    rope_theta: f64,
    head_dim: i64,
) -> std::result::Result<RopeScaling, String> {
    if factors.len() as i64 != head_dim / 2 {
        return Err(format!(
            "{ROPE_FREQS} has {} factors, expected head_dim / 2 = {}",
            factors.len(),
            head_dim / 2
        ));
    }
    if factors.iter().all(|&f| f == 1.0) {
        return Ok(RopeScaling::Default);
    }
    let factor = factors.iter().copied().fold(f32::MIN, f32::max) as f64;
    let (low, high, old_ctx) = (1.0, 4.0, 8192.0);
    // The plain inverse frequencies in f32, as the converter computes them with torch:
    // `1 / base ** (arange(0, dim, 2, f32) / dim)`.
    let inv: Vec<f32> = (|| -> std::result::Result<Vec<f32>, tch::TchError> {
        let exponents =
            Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, tch::Device::Cpu))?
                .f_to_kind(Kind::Float)?
                / head_dim as f64;
        Vec::<f32>::try_from(&Tensor::f_pow_scalar(rope_theta, &exponents)?.f_reciprocal()?)
    })()
    .map_err(|e| e.to_string())?;
    for (i, (&stored, &f)) in factors.iter().zip(&inv).enumerate() {
        let wavelen = 2.0 * std::f64::consts::PI / f as f64;
        let expected = if wavelen < old_ctx / high {
            1.0
        } else if wavelen > old_ctx / low {
            factor
        } else {
            let s = (old_ctx / wavelen - low) / (high - low);
            1.0 / ((1.0 - s) / factor + s)
        };
        if ((stored as f64) - expected).abs() > 1e-5 * expected.abs() {
            return Err(format!(
                "{ROPE_FREQS}[{i}] = {stored} is not the Llama 3 factor {expected} (factor \
                 {factor}, low_freq_factor {low}, high_freq_factor {high}, original context \
                 {old_ctx}); other RoPE frequency factors are not supported"
            ));
        }
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old_ctx,
    })
}

/// The [`LlamaConfig`] a `llama` GGUF describes (llama.cpp's `LLM_KV_*` keys):
/// `llama.embedding_length`, `.block_count`, `.feed_forward_length`, `.attention.head_count`,
/// `.attention.head_count_kv`, `.attention.key_length`, `.context_length`,
/// `.attention.layer_norm_rms_epsilon`, `.rope.freq_base`, `.rope.scaling.*` / `rope_freqs.weight`;
/// the vocabulary size is the token embedding's row count, the head tied when there is no
/// `output.weight`, and the special token ids come from `tokenizer.ggml.*`.
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig> {
    let path = file.path();
    let unsupported = |message: String| GgufError::Unsupported {
        path: path.to_path_buf(),
        message,
    };
    let arch = file
        .get_str("general.architecture")?
        .ok_or_else(|| file.key_error("general.architecture", "missing required key"))?;
    if arch != "llama" {
        return Err(GgufError::Architecture {
            path: path.to_path_buf(),
            found: arch.to_string(),
        });
    }
    // Mixtral-style files use the `llama` architecture with experts.
    if let Some(n) = file.get_int("llama.expert_count")? {
        if n > 0 {
            return Err(unsupported(format!(
                "llama.expert_count = {n}: mixture-of-experts models are not supported"
            )));
        }
    }
    let hidden = file.require_int("llama.embedding_length")?;
    let heads = file.require_int("llama.attention.head_count")?;
    let kv_heads = file
        .get_int("llama.attention.head_count_kv")?
        .unwrap_or(heads);
    for (key, v) in [
        ("llama.embedding_length", hidden),
        ("llama.attention.head_count", heads),
        ("llama.attention.head_count_kv", kv_heads),
    ] {
        if v <= 0 {
            return Err(file.key_error(key, format!("{v} must be > 0")));
        }
    }
    let head_dim = match file.get_int("llama.attention.key_length")? {
        Some(d) => d,
        None => hidden / heads,
    };
    if let Some(v) = file.get_int("llama.attention.value_length")? {
        if v != head_dim {
            return Err(unsupported(format!(
                "llama.attention.value_length {v} differs from the key length {head_dim}"
            )));
        }
    }
    if let Some(r) = file.get_int("llama.rope.dimension_count")? {
        if r != head_dim {
            return Err(unsupported(format!(
                "llama.rope.dimension_count {r} differs from head_dim {head_dim}: partial \
                 rotary embeddings are not supported"
            )));
        }
    }
    let rope_theta = file.get_float("llama.rope.freq_base")?.unwrap_or(10_000.0);
    let mut rope_scaling = match file.get_str("llama.rope.scaling.type")? {
        None | Some("none") => RopeScaling::Default,
        Some("linear") => {
            let factor = file
                .get_float("llama.rope.scaling.factor")?
                .ok_or_else(|| file.key_error("llama.rope.scaling.factor", "missing"))?;
            RopeScaling::Linear { factor }
        }
        Some(other) => {
            return Err(unsupported(format!(
                "llama.rope.scaling.type `{other}` is not supported (none, linear, or Llama 3 \
                 frequency factors)"
            )))
        }
    };
    // Older files spell linear scaling as one key.
    if let Some(f) = file.get_float("llama.rope.scale_linear")? {
        if f != 1.0 {
            rope_scaling = RopeScaling::Linear { factor: f };
        }
    }
    if file.tensor(ROPE_FREQS).is_some() {
        if rope_scaling != RopeScaling::Default {
            return Err(unsupported(format!(
                "both llama.rope.scaling keys and {ROPE_FREQS}"
            )));
        }
        let factors = file.dequantize(ROPE_FREQS)?;
        rope_scaling =
            llama3_rope_from_factors(&factors, rope_theta, head_dim).map_err(unsupported)?;
    }
    let embd = file.info("token_embd.weight")?;
    let [embd_hidden, vocab] = embd.dims[..] else {
        return Err(GgufError::Tensors {
            path: path.to_path_buf(),
            problems: vec![format!(
                "`token_embd.weight` has ne {:?}, expected [embedding_length, vocab]",
                embd.dims
            )],
        });
    };
    if embd_hidden as i64 != hidden {
        return Err(GgufError::Tensors {
            path: path.to_path_buf(),
            problems: vec![format!(
                "`token_embd.weight` has ne {:?}: rows of {embd_hidden}, but \
                 llama.embedding_length is {hidden}",
                embd.dims
            )],
        });
    }
    let vocab = vocab as i64;
    if let Some(v) = file.get_int("llama.vocab_size")? {
        if v != vocab {
            return Err(GgufError::Tensors {
                path: path.to_path_buf(),
                problems: vec![format!(
                    "`token_embd.weight` has {vocab} rows, but llama.vocab_size is {v}"
                )],
            });
        }
    }
    let token_id = |key: &str| file.get_int(key);
    let cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.require_int("llama.feed_forward_length")?,
        num_hidden_layers: file.require_int("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        max_position_embeddings: file.require_int("llama.context_length")?,
        rms_norm_eps: file
            .get_float("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| {
                file.key_error(
                    "llama.attention.layer_norm_rms_epsilon",
                    "missing required key",
                )
            })?,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?
            .into_iter()
            .collect(),
        pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
    };
    // The config checks of a config.json (positive sizes, heads dividing, even head_dim), with
    // the GGUF named in the error.
    Ok(LlamaConfig::from_json(&cfg.to_json(), path)?)
}

/// A GGUF Llama in the Hugging Face layout.
#[derive(Debug)]
pub struct ImportedLlama {
    pub config: LlamaConfig,
    /// Hugging Face names and tensors (of the requested dtype, on the CPU).
    pub tensors: Vec<(String, Tensor)>,
    /// GGUF tensors per stored type (for the report).
    pub stored_types: BTreeMap<String, usize>,
}

/// The config and every tensor of a `llama` GGUF, renamed, reshaped, un-permuted and converted
/// to `dtype`. Missing, unexpected and mis-shaped tensors are all reported in one error before
/// any data is read; then tensors of unsupported types.
pub fn import_tensors(file: &GgufFile, dtype: Kind) -> Result<ImportedLlama> {
    let _span = tracing::info_span!("gguf_import_tensors", path = %file.path().display()).entered();
    let cfg = llama_config(file)?;
    let expected: HashMap<String, Vec<i64>> = Llama::tensor_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let map = mapping(&cfg);
    let mut problems = Vec::new();
    for m in &map {
        let shape = &expected[&m.hf];
        match file.tensor(&m.gguf) {
            None => problems.push(format!(
                "missing tensor `{}` (for {}, shape {shape:?})",
                m.gguf, m.hf
            )),
            Some(t) if t.shape() != *shape => {
                let mut want = shape.clone();
                want.reverse();
                problems.push(format!(
                    "tensor `{}` has ne {:?}, the config calls for ne {want:?} ({} of shape \
                     {shape:?})",
                    m.gguf, t.dims, m.hf
                ))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = map.iter().map(|m| m.gguf.as_str()).collect();
    for t in file.tensors() {
        if !known.contains(t.name.as_str()) && t.name != ROPE_FREQS {
            problems.push(format!(
                "unexpected tensor `{}` (ne {:?}): no place for it in a {}-layer Llama",
                t.name, t.dims, cfg.num_hidden_layers
            ));
        }
    }
    if !problems.is_empty() {
        return Err(GgufError::Tensors {
            path: file.path().to_path_buf(),
            problems,
        });
    }
    let unsupported: Vec<&GgufTensor> = map
        .iter()
        .filter_map(|m| file.tensor(&m.gguf))
        .filter(|t| !t.ggml_type.is_supported())
        .collect();
    if let Some(first) = unsupported.first() {
        return Err(GgufError::UnsupportedType {
            path: file.path().to_path_buf(),
            tensor: first.name.clone(),
            ggml_type: first.ggml_type.name(),
            others: unsupported.len() - 1,
        });
    }
    let mut stored_types = BTreeMap::new();
    let mut tensors = Vec::with_capacity(map.len());
    for m in &map {
        let _span = tracing::debug_span!("gguf_tensor", name = %m.gguf).entered();
        let info = file.info(&m.gguf)?;
        *stored_types.entry(info.ggml_type.name()).or_insert(0) += 1;
        let mut t = file.tensor_f32(&m.gguf)?;
        if let Some(heads) = m.unpermute_heads {
            t = unpermute_rows(&t, heads)?;
        }
        tensors.push((m.hf.clone(), t.f_to_kind(dtype)?));
    }
    Ok(ImportedLlama {
        config: cfg,
        tensors,
        stored_types,
    })
}

/// Whether a `tokenizer.json` could be rebuilt from the file.
#[derive(Debug, Clone)]
pub enum TokenizerOutcome {
    Built(Value),
    /// Why not, for the user.
    NotBuilt(String),
}

/// Bytes that GPT-2's `bytes_to_unicode` lets stand for themselves (printable Latin-1).
fn printable(b: u32) -> bool {
    matches!(b, 33..=126 | 161..=172 | 174..=255)
}

/// GPT-2's `bytes_to_unicode`: printable bytes stand for themselves, the other 68 are shifted
/// to U+0100 and up, in order. A byte-level BPE vocabulary spells every token in these 256
/// characters.
fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        out[b as usize] = if printable(b.into()) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are characters")
        };
    }
    out
}

/// Whether every character of `token` is one of [`byte_alphabet`]'s.
fn in_byte_alphabet(token: &str) -> bool {
    token
        .chars()
        .all(|c| printable(c as u32) || (256..256 + 68).contains(&(c as u32)))
}

/// llama.cpp's GPT-2 split (`unicode.cpp` / `llama-vocab.cpp`, `LLAMA_VOCAB_PRE_TYPE_GPT2`),
/// the regex the `tokenizers` ByteLevel pre-tokenizer applies with `use_regex`.
fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
           "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` regex, as llama-vocab.cpp spells it (Llama 3's own
/// `tokenizer.json` and transformers write the contractions as `(?i:'s|'t|...)`).
const LLAMA3_SPLIT: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// The Hugging Face pre-tokenizer, BPE `ignore_merges` and default `add_bos` that reproduce
/// llama.cpp's handling of `tokenizer.ggml.pre` (llama-vocab.cpp, `llama_vocab::impl::load`),
/// for the pre-tokenizer types whose regexes are reproduced exactly here.
fn pre_tokenizer(pre: &str) -> Option<(Value, bool, bool)> {
    Some(match pre {
        // GPT-2's regex alone.
        "gpt-2" | "phi-2" | "mpt" | "olmo" => (byte_level(true), false, false),
        // `\p{N}` isolated first (every digit on its own), then GPT-2's regex: the
        // `Digits(individual_digits)` + ByteLevel of SmolLM's and StarCoder's tokenizer.json.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => (
            json!({"type": "Sequence", "pretokenizers": [split("\\p{N}"), byte_level(true)]}),
            false,
            false,
        ),
        // Llama 3: its own regex, merges skipped for words already in the vocabulary, BOS added.
        "llama3" | "llama-v3" | "llama-bpe" => (
            json!({"type": "Sequence",
                   "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            true,
            true,
        ),
        _ => return None,
    })
}

/// A `tokenizer.json` equivalent to llama.cpp's tokenizer of the file, when the file carries a
/// byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) with a pre-tokenizer type that
/// [`pre_tokenizer`] reproduces. Tokens marked CONTROL (3) become special added tokens and
/// USER_DEFINED (4) plain added tokens, as transformers' GGUF tokenizer builder does
/// (`add_gguf_special_tokens`), so that both are matched whole in the text; BOS / EOS are added
/// per `tokenizer.ggml.add_bos_token` / `add_eos_token`. Wrongly typed keys are errors;
/// tokenizers this cannot rebuild faithfully are [`TokenizerOutcome::NotBuilt`] with the reason.
pub fn tokenizer_json(file: &GgufFile) -> Result<TokenizerOutcome> {
    let _span = tracing::info_span!("gguf_tokenizer").entered();
    let not = |why: String| Ok(TokenizerOutcome::NotBuilt(why));
    let Some(model) = file.get_str("tokenizer.ggml.model")? else {
        return not("the file carries no tokenizer (no tokenizer.ggml.model)".into());
    };
    if model != "gpt2" {
        return not(format!(
            "tokenizer.ggml.model is `{model}`; only byte-level BPE vocabularies (`gpt2`) are \
             rebuilt"
        ));
    }
    let pre = file.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let Some((pre_tokenizer, ignore_merges, default_bos)) = pre_tokenizer(pre) else {
        return not(format!(
            "tokenizer.ggml.pre is `{pre}`, a pre-tokenizer not reproduced here (supported: \
             gpt-2, phi-2, mpt, olmo, smollm, starcoder, refact, command-r, codeshell, llama3, \
             llama-v3, llama-bpe)"
        ));
    };
    let tokens = file
        .get_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| file.key_error("tokenizer.ggml.tokens", "missing required key"))?;
    let Some(merges) = file.get_strings("tokenizer.ggml.merges")? else {
        return not("a BPE vocabulary without tokenizer.ggml.merges".into());
    };
    let types = file.get_ints("tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            return Err(file.key_error(
                "tokenizer.ggml.token_type",
                format!("{} types for {} tokens", t.len(), tokens.len()),
            ));
        }
    }
    let alphabet = byte_alphabet();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, &token) in tokens.iter().enumerate() {
        // A token not spelled in the byte alphabet is respelled from its UTF-8 bytes, as
        // transformers' `byte_level_tokenizer` does.
        let spelled = if in_byte_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| alphabet[b as usize]).collect()
        };
        if let Some(first) = vocab.insert(spelled.clone(), json!(id)) {
            return not(format!(
                "token {spelled:?} appears twice in tokenizer.ggml.tokens (ids {first} and {id})"
            ));
        }
        let ty = types.as_ref().map_or(1, |t| t[id]);
        // CONTROL tokens outside the alphabet are llama.cpp mislabels that transformers skips;
        // a USER_DEFINED one would not be found in the (respelled) vocabulary, so neither is
        // added.
        let special = match ty {
            3 if in_byte_alphabet(token) => true,
            4 if in_byte_alphabet(token) => false,
            _ => continue,
        };
        let entry = json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": special});
        added.push(entry);
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let parts: Vec<&str> = m.split(' ').collect();
        let [a, b] = parts[..] else {
            return not(format!("merge #{i} {m:?} is not two tokens"));
        };
        pairs.push(json!([a, b]));
    }
    let add_bos = file
        .get_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_bos);
    let add_eos = file
        .get_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let special = |key: &str| -> Result<Option<(String, i64)>> {
        let Some(id) = file.get_int(key)? else {
            return Ok(None);
        };
        match usize::try_from(id).ok().and_then(|i| tokens.get(i)) {
            Some(t) => Ok(Some((t.to_string(), id))),
            None => Err(file.key_error(key, format!("{id} is not a token id"))),
        }
    };
    let mut single = Vec::new();
    let mut special_tokens = Map::new();
    let mut template_token = |key: &str, single: &mut Vec<Value>| -> Result<bool> {
        let Some((t, id)) = special(key)? else {
            return Ok(false);
        };
        single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        special_tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        Ok(true)
    };
    if add_bos && !template_token("tokenizer.ggml.bos_token_id", &mut single)? {
        return not("add_bos_token is set but there is no tokenizer.ggml.bos_token_id".into());
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if add_eos && !template_token("tokenizer.ggml.eos_token_id", &mut single)? {
        return not("add_eos_token is set but there is no tokenizer.ggml.eos_token_id".into());
    }
    let post_processor = if add_bos || add_eos {
        // A pair repeats the single template (as Llama 3's tokenizer.json does for BOS).
        let b: Vec<Value> = single
            .iter()
            .map(|v| match v.get("Sequence") {
                Some(_) => json!({"Sequence": {"id": "B", "type_id": 1}}),
                None => {
                    let mut v = v.clone();
                    v["SpecialToken"]["type_id"] = json!(1);
                    v
                }
            })
            .collect();
        let pair: Vec<Value> = single.iter().cloned().chain(b).collect();
        json!({"type": "TemplateProcessing", "single": single, "pair": pair,
               "special_tokens": special_tokens})
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
               "use_regex": true})
    };
    Ok(TokenizerOutcome::Built(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                  "vocab": vocab, "merges": pairs},
    })))
}

/// What [`import_llama`] wrote.
#[derive(Debug)]
pub struct ImportReport {
    pub config: LlamaConfig,
    pub version: u32,
    pub tensors: usize,
    pub stored_types: BTreeMap<String, usize>,
    /// `None` when `tokenizer.json` was written, else why not.
    pub tokenizer_skipped: Option<String>,
    pub bytes_written: u64,
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Converts a `llama` GGUF into a Hugging Face Llama folder `out` (which must not exist or be
/// empty): `config.json`, `model.safetensors` in `dtype`, and `tokenizer.json` when
/// [`tokenizer_json`] can rebuild it. Everything is checked before anything is written.
pub fn import_llama(gguf: &Path, out: &Path, dtype: Kind) -> Result<ImportReport> {
    let _span =
        tracing::info_span!("gguf_import", path = %gguf.display(), out = %out.display()).entered();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GgufError::Io { path, source }
    };
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(io(out))?;
        if entries.next().is_some() {
            return Err(GgufError::OutputExists {
                path: out.to_path_buf(),
            });
        }
    }
    let file = GgufFile::open(gguf)?;
    let tokenizer = tokenizer_json(&file)?;
    let imported = import_tensors(&file, dtype)?;
    let _write = tracing::info_span!("gguf_write").entered();
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_json(&out.join("config.json"), &imported.config.to_json())?;
    let weights = out.join("model.safetensors");
    save_safetensors(&weights, &imported.tensors)?;
    let tokenizer_skipped = match tokenizer {
        TokenizerOutcome::Built(value) => {
            write_json(&out.join("tokenizer.json"), &value)?;
            None
        }
        TokenizerOutcome::NotBuilt(why) => Some(why),
    };
    let bytes_written = std::fs::metadata(&weights).map_err(io(&weights))?.len();
    Ok(ImportReport {
        config: imported.config,
        version: file.version(),
        tensors: imported.tensors.len(),
        stored_types: imported.stored_types,
        tokenizer_skipped,
        bytes_written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::inverse_frequencies;

    /// A GGUF written by hand: `kv` pairs (already encoded) and F32 tensors.
    fn gguf_bytes(
        version: u32,
        kv: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, &[u64])],
    ) -> Vec<u8> {
        let s = |out: &mut Vec<u8>, text: &str| {
            out.extend((text.len() as u64).to_le_bytes());
            out.extend(text.as_bytes());
        };
        let mut out = b"GGUF".to_vec();
        out.extend(version.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            s(&mut out, k);
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0u64;
        for (name, dims) in tensors {
            s(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += align_up(dims.iter().product::<u64>() * 4, 32);
        }
        out.resize(align_up(out.len() as u64, 32) as usize, 0);
        let mut x = 0.0f32;
        for (_, dims) in tensors {
            let start = out.len();
            for _ in 0..dims.iter().product::<u64>() {
                out.extend(x.to_le_bytes());
                x += 1.0;
            }
            out.resize(start + align_up((out.len() - start) as u64, 32) as usize, 0);
        }
        out
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        GgufFile::from_bytes(bytes.to_vec(), Path::new("t.gguf"))
    }

    fn nested_array() -> Vec<u8> {
        // [[1u16, 2u16], [3u16]]: array of arrays of u16.
        let mut v = 9u32.to_le_bytes().to_vec();
        v.extend(2u64.to_le_bytes());
        for inner in [&[1u16, 2][..], &[3u16][..]] {
            v.extend(2u32.to_le_bytes());
            v.extend((inner.len() as u64).to_le_bytes());
            for x in inner {
                v.extend(x.to_le_bytes());
            }
        }
        v
    }

    #[test]
    fn v2_file_with_nested_array_and_data() {
        let kv = [
            ("a.u16", 2, 7u16.to_le_bytes().to_vec()),
            ("a.f64", 12, 0.25f64.to_le_bytes().to_vec()),
            ("a.nested", 9, nested_array()),
        ];
        let bytes = gguf_bytes(2, &kv, &[("x", &[3, 2]), ("y", &[5])]);
        let f = parse(&bytes).unwrap();
        assert_eq!(f.version(), 2);
        assert_eq!(f.get("a.u16"), Some(&GgufValue::U16(7)));
        assert_eq!(f.get_float("a.f64").unwrap(), Some(0.25));
        let GgufValue::Array(ValueType::Array, outer) = f.get("a.nested").unwrap() else {
            panic!("not an array of arrays");
        };
        assert_eq!(
            outer[1],
            GgufValue::Array(ValueType::U16, vec![GgufValue::U16(3)])
        );
        assert_eq!(f.tensor("x").unwrap().shape(), vec![2, 3]);
        assert_eq!(f.dequantize("x").unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(f.dequantize("y").unwrap(), vec![6., 7., 8., 9., 10.]);
    }

    #[test]
    fn counts_beyond_the_file_are_truncation_not_allocation() {
        let mut bytes = gguf_bytes(3, &[], &[]);
        // kv count = u64::MAX.
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("metadata"), "{e}");
        // An array claiming 2^40 u32 elements.
        let mut v = 4u32.to_le_bytes().to_vec();
        v.extend((1u64 << 40).to_le_bytes());
        let e = parse(&gguf_bytes(3, &[("big", 9, v)], &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") && e.contains("`big`"), "{e}");
    }

    #[test]
    fn a_quantized_scalar_is_an_error_not_a_panic() {
        // Found by the fuzzer (fuzz/fuzz_targets/gguf.rs): a Q8_0 tensor with no dimensions.
        let mut bytes = gguf_bytes(3, &[], &[("s", &[])]);
        // The type follows the header (24 bytes), the name (8 + 1) and n_dims (4).
        let at = 24 + 9 + 4;
        assert_eq!(bytes[at..at + 4], 0u32.to_le_bytes(), "the F32 type id");
        bytes[at..at + 4].copy_from_slice(&8u32.to_le_bytes());
        let e = parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("`s`") && e.contains("whole blocks"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse(&gguf_bytes(3, &[("k", 13, vec![0])], &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`k`") && e.contains("unknown value type 13"),
            "{e}"
        );
        let e = parse(&gguf_bytes(1, &[], &[])).unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        let align = ("general.alignment", 4, 24u32.to_le_bytes().to_vec());
        let e = parse(&gguf_bytes(3, &[align], &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("general.alignment"), "{e}");
    }

    #[test]
    fn quantized_blocks_follow_the_ggml_layout() {
        // d = 0.5 (f16 0x3800), m = -1 (f16 0xBC00); byte j = (j << 4) | (15 - j).
        let qs: Vec<u8> = (0..16u8).map(|j| (j << 4) | (15 - j)).collect();
        let mut q4_1 = vec![0x00, 0x38, 0x00, 0xBC];
        q4_1.extend(&qs);
        let x = dequantize(GgmlType::Q4_1, &q4_1).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], 0.5 * (15 - j) as f32 - 1.0, "low nibble {j}");
            assert_eq!(x[j + 16], 0.5 * j as f32 - 1.0, "high nibble {j}");
        }
        let mut q4_0 = vec![0x00, 0x38];
        q4_0.extend(&qs);
        let x = dequantize(GgmlType::Q4_0, &q4_0).unwrap();
        assert_eq!((x[0], x[16], x[31]), (0.5 * 7.0, 0.5 * -8.0, 0.5 * 7.0));
        let mut q8_0 = vec![0x00, 0x38];
        q8_0.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &q8_0).unwrap();
        assert_eq!((x[0], x[31]), (-8.0, 7.5));
        // bf16 0x3FC0 = 1.5; f16 0x3E00 = 1.5.
        assert_eq!(
            dequantize(GgmlType::BF16, &[0xC0, 0x3F]).unwrap(),
            vec![1.5]
        );
        assert_eq!(dequantize(GgmlType::F16, &[0x00, 0x3E]).unwrap(), vec![1.5]);
        assert!(dequantize(GgmlType(12), &[0; 144]).is_none());
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        // GPT-2's well-known spellings: space Ġ (U+0120), newline Ċ (U+010A), tab ĉ, NUL Ā.
        assert_eq!(
            (a[b' ' as usize], a[b'\n' as usize], a[b'\t' as usize]),
            ('Ġ', 'Ċ', 'ĉ')
        );
        assert_eq!((a[0], a[b'A' as usize], a[0xAD]), ('Ā', 'A', 'Ń'));
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert!(a.iter().all(|c| in_byte_alphabet(&c.to_string())));
        assert!(!in_byte_alphabet("é ") && in_byte_alphabet("Ġé"));
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // llama.cpp's permute on a [n_head * d, in] matrix, then ours back.
        let (n_head, d, inp) = (3, 8, 5);
        let w = Tensor::arange(n_head * d * inp, (Kind::Float, tch::Device::Cpu))
            .reshape([n_head * d, inp]);
        let permuted = w
            .reshape([n_head, 2, d / 2, inp])
            .transpose(1, 2)
            .reshape([n_head * d, inp]);
        assert!(unpermute_rows(&permuted, n_head).unwrap().equal(&w));
        assert!(!permuted.equal(&w));
    }

    #[test]
    fn llama3_factors_round_trip() {
        // Llama-3.2-1B: theta 500000, head_dim 64, factor 32.
        let inv: Vec<f32> = Vec::try_from(
            inverse_frequencies(&LlamaConfig::published("llama-3.2-1b").unwrap()).unwrap(),
        )
        .unwrap();
        let plain = LlamaConfig {
            rope_scaling: RopeScaling::Default,
            ..LlamaConfig::published("llama-3.2-1b").unwrap()
        };
        let base: Vec<f32> = Vec::try_from(inverse_frequencies(&plain).unwrap()).unwrap();
        // The stored factors are plain / scaled frequency.
        let factors: Vec<f32> = base.iter().zip(&inv).map(|(b, s)| b / s).collect();
        let got = llama3_rope_from_factors(&factors, 500000.0, 64).unwrap();
        assert_eq!(
            got,
            LlamaConfig::published("llama-3.2-1b").unwrap().rope_scaling
        );
        let mut off = factors.clone();
        // A factor of the smooth region off by 1 %.
        off[16] *= 1.01;
        let e = llama3_rope_from_factors(&off, 500000.0, 64).unwrap_err();
        assert!(e.contains("rope_freqs.weight[16]"), "{e}");
    }
}
