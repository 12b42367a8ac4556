//! Weight-only quantization of the Llama linear layers: the q, k, v, o, gate,
//! up and down projections of every decoder layer are stored as integers with float scales; the
//! activations stay in the compute dtype.
//!
//! The token embedding, the norms and an untied LM head stay float. With tied embeddings the
//! embedding *is* the LM head, and the LM head (like the embedding rows of rare tokens) is the
//! part of a Llama most sensitive to rounding: every logit goes through it. GPTQ and AWQ exports
//! (AutoGPTQ / AutoAWQ, transformers' `modules_to_not_convert` with `lm_head`) keep it float for
//! the same reason; it is a small share of a 3B model (0.39 G of 3.2 G parameters).
//!
//! Two schemes, both symmetric (no zero point), scales stored as f32:
//!
//! - **int8, per output channel**: for row `r` of `W [out, in]`, `scale[r] = max|W[r, :]| / 127`,
//!   `q = round(W / scale)` clamped to `[-127, 127]`, stored `i8 [out, in]` (row-major, the
//!   nn.Linear layout) + `scales f32 [out]`. Packing id `i8-row-major`.
//! - **int4, group-wise along the input**: for row `r` and group `g` (input columns
//!   `g*G .. (g+1)*G`), `scale[r, g] = max|W[r, group]| / 7`, `q = round(W / scale)` clamped to
//!   `[-7, 7]` (symmetric: the code for -8 is never written; a loader reads it as -8). Two values
//!   per byte: the nibble is `q + 8` (0..15, GGML Q4_0's offset binary), the **low nibble holds
//!   the even input column** `2j` and the high nibble column `2j + 1`: stored `u8 [out, in/2]` +
//!   `scales f32 [out, in/G]`. Packing id `u4-offset8-low-nibble-first`. `G` must be even and
//!   divide `in_features` of every quantized module; otherwise quantization fails with an error
//!   naming the module and the sizes (pick a group size that divides, e.g. 64 for an
//!   intermediate size of 704).
//!
//! Rounding is half away from zero (Rust's `f32::round`); an all-zero row or group gets scale 0
//! and codes 0. The round-trip error of every weight is at most `scale / 2`.
//!
//! A checkpoint stores `<module>.qweight` and `<module>.scales` in place of `<module>.weight`,
//! and its `config.json` carries a Hugging Face-style `quantization_config`:
//! `{"quant_method": "tolk-weight-only", "bits": 8|4, "group_size": -1|G, "symmetric": true,
//! "packing": "...", "modules": ["self_attn.q_proj", ...]}` (`modules`: the module paths inside
//! each decoder layer that are quantized, in every layer).
//!
//! [`super::Llama::load`] dequantizes at load ([`QuantRuntime::Dequantize`], CPU or CUDA);
//! [`QuantRuntime::Packed`] keeps the integers and runs libtorch's CPU kernels
//! `_weight_int8pack_mm` (int8 weight, per-channel scales) and `_weight_int4pack_mm_for_cpu`
//! (the weight repacked by `_convert_weight_to_int4pack_for_cpu`, scale-and-zero pairs with a
//! zero of 0) in the linear layers.

use super::config::LlamaConfig;
use super::lora::LoraTarget;
use crate::checkpoint::{StoredAs, TensorSpec};
use crate::{ModelError, Result};
use serde_json::{json, Value};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// `quantization_config.quant_method` of our checkpoints.
pub const QUANT_METHOD: &str = "tolk-weight-only";
/// `quantization_config.packing` of int8 checkpoints.
pub const PACKING_INT8: &str = "i8-row-major";
/// `quantization_config.packing` of int4 checkpoints.
pub const PACKING_INT4: &str = "u4-offset8-low-nibble-first";
/// Group size of int4 when none is asked for.
pub const DEFAULT_INT4_GROUP: i64 = 128;

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::InvalidArgument(msg.into())
}

/// The integer format of the quantized modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// int8, one scale per output channel.
    Int8,
    /// int4, one scale per `group_size` input columns of each row.
    Int4 { group_size: i64 },
}

impl QuantScheme {
    pub fn bits(self) -> u32 {
        match self {
            QuantScheme::Int8 => 8,
            QuantScheme::Int4 { .. } => 4,
        }
    }

    /// `quantization_config.group_size`: -1 (per channel) for int8.
    pub fn group_size(self) -> i64 {
        match self {
            QuantScheme::Int8 => -1,
            QuantScheme::Int4 { group_size } => group_size,
        }
    }

    pub fn packing(self) -> &'static str {
        match self {
            QuantScheme::Int8 => PACKING_INT8,
            QuantScheme::Int4 { .. } => PACKING_INT4,
        }
    }

    /// `int8` or `int4-g<G>`.
    pub fn label(self) -> String {
        match self {
            QuantScheme::Int8 => "int8".into(),
            QuantScheme::Int4 { group_size } => format!("int4-g{group_size}"),
        }
    }

    /// Stored shapes and dtypes of `qweight` and `scales` for a `[out, in]` weight.
    fn stored(self, out: i64, inp: i64) -> ((Vec<i64>, Kind), Vec<i64>) {
        match self {
            QuantScheme::Int8 => ((vec![out, inp], Kind::Int8), vec![out]),
            QuantScheme::Int4 { group_size } => (
                (vec![out, inp / 2], Kind::Uint8),
                vec![out, inp / group_size],
            ),
        }
    }

    /// Checks that a `[out, in]` weight can use this scheme.
    fn check_shape(self, out: i64, inp: i64) -> std::result::Result<(), String> {
        if out <= 0 || inp <= 0 {
            return Err(format!("a [{out}, {inp}] weight cannot be quantized"));
        }
        if let QuantScheme::Int4 { group_size: g } = self {
            if g <= 0 || g % 2 != 0 {
                return Err(format!("int4 group size {g} must be even and > 0"));
            }
            if inp % g != 0 {
                return Err(format!(
                    "in_features {inp} is not a multiple of the int4 group size {g} (pick a group \
                     size that divides every quantized module's in_features)"
                ));
            }
        }
        Ok(())
    }
}

/// How a quantized checkpoint is run after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantRuntime {
    /// Dequantize every weight to the compute dtype at load (any device); the model then runs
    /// as a float one.
    #[default]
    Dequantize,
    /// Keep the integer weights and run the linear layers through libtorch's packed CPU kernels
    /// (inference only; CPU only).
    Packed,
}

/// The `quantization_config` of a quantized checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    pub scheme: QuantScheme,
    /// Quantized projections (in every decoder layer).
    pub modules: Vec<LoraTarget>,
}

impl QuantConfig {
    /// All seven projections of every layer.
    pub fn all_linear(scheme: QuantScheme) -> Self {
        Self {
            scheme,
            modules: LoraTarget::ALL.to_vec(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "quant_method": QUANT_METHOD,
            "bits": self.scheme.bits(),
            "group_size": self.scheme.group_size(),
            "symmetric": true,
            "packing": self.scheme.packing(),
            "modules": self.modules.iter().map(|m| m.module_path()).collect::<Vec<_>>(),
        })
    }

    /// The `quantization_config` of a parsed `config.json` (`path` for errors), `None` when the
    /// checkpoint is not quantized.
    pub fn from_config_json(config: &Value, path: &Path) -> Result<Option<Self>> {
        match config.get("quantization_config") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Self::from_json(v, path).map(Some),
        }
    }

    /// Parses a `quantization_config` object strictly: unknown keys, another method or packing,
    /// asymmetric schemes and unknown modules are errors naming the field.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let field = |k: &str| format!("quantization_config.{k}");
        let err = |k: &str, m: String| ModelError::config(path, field(k), m);
        let obj = v
            .as_object()
            .ok_or_else(|| err("", "not a JSON object".into()))?;
        const KEYS: &[&str] = &[
            "quant_method",
            "bits",
            "group_size",
            "symmetric",
            "packing",
            "modules",
        ];
        for k in obj.keys() {
            if !KEYS.contains(&k.as_str()) {
                return Err(err(k, "unknown key".into()));
            }
        }
        let get = |k: &str| obj.get(k).ok_or_else(|| err(k, "missing".into()));
        let method = get("quant_method")?;
        if method.as_str() != Some(QUANT_METHOD) {
            return Err(err(
                "quant_method",
                format!("{method} is not supported (expected \"{QUANT_METHOD}\")"),
            ));
        }
        let bits = get("bits")?;
        let group = get("group_size")?
            .as_i64()
            .ok_or_else(|| err("group_size", "not an integer".into()))?;
        let scheme = match bits.as_i64() {
            Some(8) if group == -1 => QuantScheme::Int8,
            Some(8) => {
                return Err(err(
                    "group_size",
                    format!("{group}: int8 is per output channel (group_size -1)"),
                ))
            }
            Some(4) if group > 0 && group % 2 == 0 => QuantScheme::Int4 { group_size: group },
            Some(4) => {
                return Err(err(
                    "group_size",
                    format!("{group}: int4 needs an even group size > 0"),
                ))
            }
            _ => return Err(err("bits", format!("{bits} is not supported (8 or 4)"))),
        };
        if get("symmetric")?.as_bool() != Some(true) {
            return Err(err(
                "symmetric",
                "only symmetric quantization (true) is supported".into(),
            ));
        }
        let packing = get("packing")?;
        if packing.as_str() != Some(scheme.packing()) {
            return Err(err(
                "packing",
                format!(
                    "{packing} does not match {}-bit weights (expected \"{}\")",
                    scheme.bits(),
                    scheme.packing()
                ),
            ));
        }
        let list = get("modules")?
            .as_array()
            .ok_or_else(|| err("modules", "not a list".into()))?;
        let mut modules = Vec::new();
        for m in list {
            let t = m
                .as_str()
                .and_then(|s| LoraTarget::ALL.into_iter().find(|t| t.module_path() == s))
                .ok_or_else(|| {
                    err(
                        "modules",
                        format!(
                            "{m} is not a quantizable module (expected some of {:?})",
                            LoraTarget::ALL.map(|t| t.module_path())
                        ),
                    )
                })?;
            if modules.contains(&t) {
                return Err(err("modules", format!("{m} is listed twice")));
            }
            modules.push(t);
        }
        if modules.is_empty() {
            return Err(err("modules", "empty".into()));
        }
        modules.sort();
        Ok(Self { scheme, modules })
    }

    /// Checks that every quantized module of `cfg` can use the scheme (int4 groups divide
    /// `in_features`); the error names the module.
    pub fn check(&self, cfg: &LlamaConfig, path: &Path) -> Result<()> {
        for m in &self.modules {
            let (out, inp) = m.shape(cfg);
            self.scheme.check_shape(out, inp).map_err(|e| {
                ModelError::config(
                    path,
                    "quantization_config.group_size",
                    format!("{} [{out}, {inp}]: {e}", m.module_path()),
                )
            })?;
        }
        Ok(())
    }
}

/// `model.layers.{layer}.{module}` (the prefix of `.weight`, `.qweight`, `.scales`).
pub fn module_name(layer: i64, module: LoraTarget) -> String {
    format!("model.layers.{layer}.{}", module.module_path())
}

/// Tensor names, shapes and stored dtypes of a quantized checkpoint: those of
/// [`super::Llama::tensor_specs`] with each quantized `<module>.weight` replaced by
/// `<module>.qweight` and `<module>.scales` (f32); the float tensors may be stored in any float
/// dtype.
pub fn quantized_specs(cfg: &LlamaConfig, qc: &QuantConfig) -> Vec<(TensorSpec, StoredAs)> {
    let mut quantized = std::collections::HashMap::new();
    for l in 0..cfg.num_hidden_layers {
        for &m in &qc.modules {
            quantized.insert(format!("{}.weight", module_name(l, m)), m.shape(cfg));
        }
    }
    let mut out = Vec::new();
    for spec in super::Llama::tensor_specs(cfg) {
        match quantized.get(&spec.name) {
            None => out.push((spec, StoredAs::Float)),
            Some(&(o, i)) => {
                let base = spec.name.trim_end_matches(".weight");
                let ((qshape, qkind), sshape) = qc.scheme.stored(o, i);
                out.push((
                    TensorSpec::new(format!("{base}.qweight"), &qshape),
                    StoredAs::Exactly(qkind),
                ));
                out.push((
                    TensorSpec::new(format!("{base}.scales"), &sshape),
                    StoredAs::Exactly(Kind::Float),
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pure host-side functions.

/// An int8 matrix `[rows, cols]` with one scale per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weights {
    pub rows: usize,
    pub cols: usize,
    /// Row-major codes in `[-127, 127]`.
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
}

/// An int4 matrix `[rows, cols]`, packed two codes per byte, one scale per row and group.
#[derive(Debug, Clone, PartialEq)]
pub struct Int4Weights {
    pub rows: usize,
    pub cols: usize,
    pub group_size: usize,
    /// `[rows, cols / 2]`, see [`pack_int4`].
    pub packed: Vec<u8>,
    /// `[rows, cols / group_size]`.
    pub scales: Vec<f32>,
}

fn check_matrix(w: &[f32], rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(bad(format!("cannot quantize a [{rows}, {cols}] matrix")));
    }
    if w.len() != rows * cols {
        return Err(bad(format!(
            "{} values do not make a [{rows}, {cols}] matrix",
            w.len()
        )));
    }
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!(
            "weight at ({}, {}) is {}: cannot quantize non-finite weights",
            i / cols,
            i % cols,
            w[i]
        )));
    }
    Ok(())
}

/// Symmetric scale and codes of one block with code range `[-qmax, qmax]`.
fn quantize_block(block: &[f32], qmax: f32, codes: &mut Vec<i8>) -> f32 {
    let m = block.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = m / qmax;
    for &x in block {
        let q = if scale > 0.0 {
            (x / scale).round().clamp(-qmax, qmax)
        } else {
            0.0
        };
        codes.push(q as i8);
    }
    scale
}

fn check_scales(scales: &[f32], what: &str) -> Result<()> {
    if let Some(i) = scales.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(bad(format!(
            "{what} scale {i} is {}: scales must be finite and >= 0",
            scales[i]
        )));
    }
    Ok(())
}

/// int8 per output channel: `scale[r] = max|w[r, :]| / 127`, `q = round(w / scale)`.
pub fn quantize_int8(w: &[f32], rows: usize, cols: usize) -> Result<Int8Weights> {
    check_matrix(w, rows, cols)?;
    let mut q = Vec::with_capacity(w.len());
    let scales = w
        .chunks(cols)
        .map(|row| quantize_block(row, 127.0, &mut q))
        .collect();
    Ok(Int8Weights {
        rows,
        cols,
        q,
        scales,
    })
}

/// Whether `w` holds `rows * cols` codes and one scale per row.
pub(crate) fn check_int8_shape(w: &Int8Weights) -> Result<()> {
    if w.q.len() != w.rows * w.cols || w.scales.len() != w.rows {
        return Err(bad(format!(
            "int8 [{}, {}] needs {} codes and {} scales, got {} and {}",
            w.rows,
            w.cols,
            w.rows * w.cols,
            w.rows,
            w.q.len(),
            w.scales.len()
        )));
    }
    Ok(())
}

/// `q * scale[row]`, row-major.
pub fn dequantize_int8(w: &Int8Weights) -> Result<Vec<f32>> {
    check_int8_shape(w)?;
    check_scales(&w.scales, "int8")?;
    Ok(w.q
        .chunks(w.cols.max(1))
        .zip(&w.scales)
        .flat_map(|(row, &s)| row.iter().map(move |&q| q as f32 * s))
        .collect())
}

/// Packs int4 codes (`[-8, 7]`, row-major `[rows, cols]`, `cols` even) two per byte: nibble
/// `q + 8`, the even column in the low nibble.
pub fn pack_int4(q: &[i8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if q.len() != rows * cols || !cols.is_multiple_of(2) {
        return Err(bad(format!(
            "cannot pack {} int4 codes as [{rows}, {cols}] (the column count must be even)",
            q.len()
        )));
    }
    if let Some(i) = q.iter().position(|v| !(-8..=7).contains(v)) {
        return Err(bad(format!(
            "int4 code {} at index {i} is outside [-8, 7]",
            q[i]
        )));
    }
    Ok(q.chunks(2)
        .map(|p| ((p[0] + 8) as u8) | (((p[1] + 8) as u8) << 4))
        .collect())
}

/// The inverse of [`pack_int4`].
pub fn unpack_int4(packed: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>> {
    if !cols.is_multiple_of(2) || packed.len() * 2 != rows * cols {
        return Err(bad(format!(
            "{} bytes do not hold an int4 [{rows}, {cols}] matrix (needs {} bytes, even columns)",
            packed.len(),
            rows * cols / 2
        )));
    }
    Ok(packed
        .iter()
        .flat_map(|&b| [(b & 0x0f) as i8 - 8, (b >> 4) as i8 - 8])
        .collect())
}

/// int4 group-wise: `scale[r, g] = max|w[r, group g]| / 7`, `q = round(w / scale)` in `[-7, 7]`.
pub fn quantize_int4(
    w: &[f32],
    rows: usize,
    cols: usize,
    group_size: usize,
) -> Result<Int4Weights> {
    check_matrix(w, rows, cols)?;
    QuantScheme::Int4 {
        group_size: group_size as i64,
    }
    .check_shape(rows as i64, cols as i64)
    .map_err(bad)?;
    let mut q = Vec::with_capacity(w.len());
    let scales = w
        .chunks(group_size)
        .map(|g| quantize_block(g, 7.0, &mut q))
        .collect();
    Ok(Int4Weights {
        rows,
        cols,
        group_size,
        packed: pack_int4(&q, rows, cols)?,
        scales,
    })
}

/// `(nibble - 8) * scale[row, col / group]`, row-major.
pub fn dequantize_int4(w: &Int4Weights) -> Result<Vec<f32>> {
    let g = w.group_size;
    let groups = w.cols.checked_div(g).map(|n| w.rows * n);
    if g == 0 || !w.cols.is_multiple_of(g) || Some(w.scales.len()) != groups {
        return Err(bad(format!(
            "int4 [{}, {}] with group size {g} needs {} scales, got {}",
            w.rows,
            w.cols,
            groups.unwrap_or(0),
            w.scales.len()
        )));
    }
    check_scales(&w.scales, "int4")?;
    let q = unpack_int4(&w.packed, w.rows, w.cols)?;
    Ok(q.chunks(g)
        .zip(&w.scales)
        .flat_map(|(block, &s)| block.iter().map(move |&v| v as f32 * s))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Tensors.

/// Host f32 copy of any tensor, flattened.
pub(crate) fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&flat)?)
}

/// Quantizes a `[out, in]` weight (any float dtype or device; computed on the host in f32).
/// Returns `(qweight, scales)` on the CPU in the stored layout.
pub fn quantize_tensor(w: &Tensor, scheme: QuantScheme) -> Result<(Tensor, Tensor)> {
    let size = w.size();
    let [out, inp] = size[..] else {
        return Err(bad(format!("expected a 2-D weight, got shape {size:?}")));
    };
    scheme.check_shape(out, inp).map_err(bad)?;
    let data = host_f32(w)?;
    let (rows, cols) = (out as usize, inp as usize);
    match scheme {
        QuantScheme::Int8 => {
            let q = quantize_int8(&data, rows, cols)?;
            Ok((
                Tensor::f_from_slice(&q.q)?.f_view([out, inp])?,
                Tensor::f_from_slice(&q.scales)?,
            ))
        }
        QuantScheme::Int4 { group_size } => {
            let q = quantize_int4(&data, rows, cols, group_size as usize)?;
            Ok((
                Tensor::f_from_slice(&q.packed)?.f_view([out, inp / 2])?,
                Tensor::f_from_slice(&q.scales)?.f_view([out, inp / group_size])?,
            ))
        }
    }
}

/// int4 codes of a packed `u8 [out, in/2]` tensor as nibbles 0..15, `[out, in]` (device kept).
fn nibbles(packed: &Tensor) -> Result<Tensor> {
    let size = packed.size();
    let lo = packed.f_bitwise_and(15)?;
    let hi = packed.f_bitwise_right_shift_tensor_scalar(4)?;
    Ok(Tensor::f_stack(&[lo, hi], -1)?.f_reshape([size[0], size[1] * 2])?)
}

/// The float `[out, in]` weight of stored `qweight` / `scales` in `kind`, computed in f32 on
/// the tensors' device.
pub fn dequantize_tensor(
    qweight: &Tensor,
    scales: &Tensor,
    scheme: QuantScheme,
    kind: Kind,
) -> Result<Tensor> {
    let scales = scales.f_to_kind(Kind::Float)?;
    let w = match scheme {
        QuantScheme::Int8 => qweight
            .f_to_kind(Kind::Float)?
            .f_mul(&scales.f_unsqueeze(1)?)?,
        QuantScheme::Int4 { group_size } => {
            let q = nibbles(qweight)?
                .f_to_kind(Kind::Float)?
                .f_sub_scalar(8.0)?;
            let (out, inp) = (q.size()[0], q.size()[1]);
            q.f_view([out, inp / group_size, group_size])?
                .f_mul(&scales.f_unsqueeze(-1)?)?
                .f_view([out, inp])?
        }
    };
    Ok(w.f_to_kind(kind)?)
}

/// Checks a loaded `scales` tensor: every value finite and >= 0. The error names the tensor.
pub fn check_scales_tensor(name: &str, scales: &Tensor, dir: &Path) -> Result<()> {
    let s = scales.f_to_kind(Kind::Float)?;
    let bad_mask = s
        .f_isfinite()?
        .f_logical_not()?
        .f_logical_or(&s.f_lt(0.0)?)?;
    let n = bad_mask.f_sum(Kind::Int64)?.int64_value(&[]);
    if n > 0 {
        let first = bad_mask.f_view([-1])?.f_nonzero()?.int64_value(&[0, 0]);
        let v = s.f_view([-1])?.double_value(&[first]);
        return Err(ModelError::config(
            dir.join("model.safetensors"),
            name,
            format!(
                "{n} of {} scales are not finite and >= 0 (element {first} is {v})",
                s.numel()
            ),
        ));
    }
    Ok(())
}

/// Quantizes the checkpoint tensors `named` (checkpoint names, e.g. from
/// [`super::Llama::named_tensors`]) of a model with config `cfg`: every module of `qc` in every
/// layer becomes `qweight` + `scales`; the other tensors are converted to `float_kind`. Fails,
/// naming the tensor, on a missing module, a wrong shape or non-finite weights.
pub fn quantize_checkpoint(
    cfg: &LlamaConfig,
    named: &[(String, Tensor)],
    qc: &QuantConfig,
    float_kind: Kind,
) -> Result<Vec<(String, Tensor)>> {
    qc.check(cfg, Path::new("quantization_config"))?;
    let mut wanted = std::collections::HashMap::new();
    for l in 0..cfg.num_hidden_layers {
        for &m in &qc.modules {
            wanted.insert(format!("{}.weight", module_name(l, m)), m.shape(cfg));
        }
    }
    let mut out = Vec::with_capacity(named.len() + wanted.len());
    for (name, t) in named {
        match wanted.remove(name) {
            None => out.push((
                name.clone(),
                t.f_to_device(Device::Cpu)?.f_to_kind(float_kind)?,
            )),
            Some((o, i)) => {
                if t.size() != [o, i] {
                    return Err(bad(format!(
                        "{name} has shape {:?}, expected [{o}, {i}]",
                        t.size()
                    )));
                }
                let base = name.trim_end_matches(".weight");
                let (q, s) = quantize_tensor(t, qc.scheme)
                    .map_err(|e| bad(format!("quantizing {name}: {e}")))?;
                out.push((format!("{base}.qweight"), q));
                out.push((format!("{base}.scales"), s));
            }
        }
    }
    if let Some(name) = wanted.keys().min() {
        return Err(bad(format!("tensor {name} to quantize was not provided")));
    }
    Ok(out)
}

/// Writes `model` quantized with `qc` into `dir` (created): `model.safetensors` with the float
/// tensors as `float_kind`, and `config.json` = `config` (for example the source `config.json`,
/// keeping its extra keys; the model's own config when `None`) with `quantization_config` set.
/// The safetensors file is written atomically; the config after it.
pub fn save_quantized(
    model: &super::Llama,
    qc: &QuantConfig,
    float_kind: Kind,
    config: Option<Value>,
    dir: &Path,
) -> Result<()> {
    if model.packed_quantization().is_some() {
        return Err(bad(
            "the model holds packed quantized layers: quantize from a float model",
        ));
    }
    let tensors = quantize_checkpoint(model.config(), &model.named_tensors(), qc, float_kind)?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    crate::checkpoint::save_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let mut json = config.unwrap_or_else(|| model.config().to_json());
    json["quantization_config"] = qc.to_json();
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&json).map_err(|source| ModelError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
}

// ---------------------------------------------------------------------------------------------
// The packed runtime.

/// libtorch's int4 CPU kernel takes groups of 32, 64, 128 or 256 and outputs in multiples of 16.
const INT4_KERNEL_GROUPS: [i64; 4] = [32, 64, 128, 256];

#[derive(Debug)]
enum Kernel {
    /// `_weight_int8pack_mm(x, qweight, scales)`: scales in the compute dtype.
    Int8 { scales: Tensor },
    /// `_weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros [in/G, out, 2])`.
    Int4 {
        packed: Tensor,
        scales_and_zeros: Tensor,
    },
}

/// A quantized linear layer kept as integers (the packed runtime). `qweight` / `scales` are the
/// stored tensors (what [`super::Llama::named_tensors`] returns); the kernel operands are made
/// by [`Self::prepare`] for the layers the forward pass runs (fused ones, not their parts).
#[derive(Debug)]
pub(crate) struct PackedLinear {
    scheme: QuantScheme,
    out: i64,
    inp: i64,
    qweight: Tensor,
    scales: Tensor,
    kernel: Option<Kernel>,
}

impl PackedLinear {
    pub(crate) fn new(scheme: QuantScheme, qweight: Tensor, scales: Tensor) -> Self {
        let out = qweight.size()[0];
        let inp = match scheme {
            QuantScheme::Int8 => qweight.size()[1],
            QuantScheme::Int4 { .. } => qweight.size()[1] * 2,
        };
        Self {
            scheme,
            out,
            inp,
            qweight,
            scales,
            kernel: None,
        }
    }

    pub(crate) fn out_features(&self) -> i64 {
        self.out
    }

    pub(crate) fn in_features(&self) -> i64 {
        self.inp
    }

    /// Builds the kernel operands for compute dtype `kind` (CPU tensors only).
    pub(crate) fn prepare(&mut self, kind: Kind) -> Result<()> {
        if self.qweight.device() != Device::Cpu {
            return Err(bad(
                "the packed quantized runtime runs on the CPU only (libtorch's \
                 _weight_int8pack_mm / _weight_int4pack_mm_for_cpu); load with \
                 QuantRuntime::Dequantize on other devices",
            ));
        }
        self.kernel = Some(match self.scheme {
            QuantScheme::Int8 => Kernel::Int8 {
                scales: self.scales.f_to_kind(kind)?,
            },
            QuantScheme::Int4 { group_size } => {
                if !INT4_KERNEL_GROUPS.contains(&group_size) || self.out % 16 != 0 {
                    return Err(bad(format!(
                        "libtorch's int4 CPU kernel needs a group size of 32, 64, 128 or 256 \
                         and a multiple of 16 outputs; this layer is [{}, {}] with groups of \
                         {group_size}: load with QuantRuntime::Dequantize",
                        self.out, self.inp
                    )));
                }
                let packed = nibbles(&self.qweight)?
                    .f_to_kind(Kind::Int)?
                    .f_internal_convert_weight_to_int4pack_for_cpu(1)?;
                let s = self.scales.f_to_kind(Kind::Float)?.f_transpose(0, 1)?;
                let scales_and_zeros =
                    Tensor::f_stack(&[s.shallow_clone(), s.f_zeros_like()?], -1)?
                        .f_contiguous()?
                        .f_to_kind(kind)?;
                Kernel::Int4 {
                    packed,
                    scales_and_zeros,
                }
            }
        });
        Ok(())
    }

    /// `x W^T` for `x [.., in]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kernel = self.kernel.as_ref().ok_or_else(|| {
            bad("internal: a packed linear layer ran before its kernel was prepared")
        })?;
        let mut shape = x.size();
        let x2 = x.f_reshape([-1, self.inp])?.f_contiguous()?;
        let y = match kernel {
            Kernel::Int8 { scales } => x2.f_internal_weight_int8pack_mm(&self.qweight, scales)?,
            Kernel::Int4 {
                packed,
                scales_and_zeros,
            } => x2.f_internal_weight_int4pack_mm_for_cpu(
                packed,
                self.scheme.group_size(),
                scales_and_zeros,
            )?,
        };
        if let Some(last) = shape.last_mut() {
            *last = self.out;
        }
        Ok(y.f_reshape(shape.as_slice())?)
    }

    /// One layer computing all `parts` (outputs concatenated); the parts' stored tensors become
    /// views of the fused ones (their kernels are dropped: only the fused layer runs).
    pub(crate) fn fuse(parts: &mut [&mut PackedLinear]) -> Result<PackedLinear> {
        let first = parts
            .first()
            .ok_or_else(|| bad("internal: nothing to fuse"))?;
        let (scheme, inp) = (first.scheme, first.inp);
        if parts.iter().any(|p| p.scheme != scheme || p.inp != inp) {
            return Err(bad(
                "internal: fused projections differ in quantization scheme or input size",
            ));
        }
        let q: Vec<&Tensor> = parts.iter().map(|p| &p.qweight).collect();
        let s: Vec<&Tensor> = parts.iter().map(|p| &p.scales).collect();
        let fused = PackedLinear::new(scheme, Tensor::f_cat(&q, 0)?, Tensor::f_cat(&s, 0)?);
        let mut start = 0;
        for p in parts.iter_mut() {
            p.qweight = fused.qweight.f_narrow(0, start, p.out)?;
            p.scales = fused.scales.f_narrow(0, start, p.out)?;
            p.kernel = None;
            start += p.out;
        }
        Ok(fused)
    }

    /// `(<prefix>.qweight, <prefix>.scales)`, aliasing the stored tensors.
    pub(crate) fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{prefix}.qweight"), self.qweight.shallow_clone()),
            (format!("{prefix}.scales"), self.scales.shallow_clone()),
        ]
    }

    /// Bytes the kernel reads per token (weights and scales).
    pub(crate) fn kernel_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match &self.kernel {
            Some(Kernel::Int8 { scales }) => bytes(&self.qweight) + bytes(scales),
            Some(Kernel::Int4 {
                packed,
                scales_and_zeros,
            }) => bytes(packed) + bytes(scales_and_zeros),
            None => bytes(&self.qweight) + bytes(&self.scales),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_by_hand() {
        // Row 0: max 127 -> scale 1; -3.5 and 2.5 round away from zero.
        // Row 1: all zero -> scale 0, codes 0. Row 2: max 254 -> scale 2.
        let w = [
            127.0, -3.5, 2.5, 0.4, //
            0.0, 0.0, 0.0, 0.0, //
            -254.0, 1.0, 0.75, 100.0,
        ];
        let q = quantize_int8(&w, 3, 4).unwrap();
        assert_eq!(q.scales, vec![1.0, 0.0, 2.0]);
        assert_eq!(q.q, vec![127, -4, 3, 0, 0, 0, 0, 0, -127, 1, 0, 50]);
        let d = dequantize_int8(&q).unwrap();
        assert_eq!(
            d,
            vec![127.0, -4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, -254.0, 2.0, 0.0, 100.0]
        );
    }

    #[test]
    fn int4_by_hand() {
        // Groups of 2. Row 0: [7, -3.5] scale 1 -> q [7, -4]; [1, -14] scale 2 -> q [1, -7].
        // Row 1: [0, 0] scale 0 -> q [0, 0]; [-0.875, 0.4375] scale 0.125 -> q [-7, 4].
        let w = [7.0, -3.5, 1.0, -14.0, 0.0, 0.0, -0.875, 0.4375];
        let q = quantize_int4(&w, 2, 4, 2).unwrap();
        assert_eq!(q.scales, vec![1.0, 2.0, 0.0, 0.125]);
        // Nibbles q + 8: row 0 [15, 4, 9, 1] -> bytes 0x4F, 0x19; row 1 [8, 8, 1, 12] -> 0x88, 0xC1.
        assert_eq!(q.packed, vec![0x4F, 0x19, 0x88, 0xC1]);
        assert_eq!(
            unpack_int4(&q.packed, 2, 4).unwrap(),
            vec![7, -4, 1, -7, 0, 0, -7, 4]
        );
        assert_eq!(
            dequantize_int4(&q).unwrap(),
            vec![7.0, -4.0, 2.0, -14.0, 0.0, 0.0, -0.875, 0.5]
        );
        // The extreme codes: -8 is nibble 0 (low), 7 is nibble 15 (high).
        assert_eq!(pack_int4(&[-8, 7], 1, 2).unwrap(), vec![0xF0]);
        assert_eq!(unpack_int4(&[0xF0], 1, 2).unwrap(), vec![-8, 7]);
    }

    /// Deterministic pseudo-random weights with a few outliers.
    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    u * 3.0
                } else {
                    u * 0.1
                }
            })
            .collect()
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        let (rows, cols) = (24, 64);
        let w = weights(rows * cols, 3);
        let q8 = quantize_int8(&w, rows, cols).unwrap();
        let d8 = dequantize_int8(&q8).unwrap();
        let mut worst8 = 0f32;
        for (i, (a, b)) in w.iter().zip(&d8).enumerate() {
            let s = q8.scales[i / cols];
            assert!(
                (a - b).abs() <= s * (0.5 + 1e-5),
                "int8 at {i}: {a} vs {b}, scale {s}"
            );
            worst8 = worst8.max((a - b).abs() / s);
        }
        assert!(q8.q.iter().all(|&v| (-127..=127).contains(&v)));
        for g in [2usize, 16, 32, 64] {
            let q4 = quantize_int4(&w, rows, cols, g).unwrap();
            let d4 = dequantize_int4(&q4).unwrap();
            for (i, (a, b)) in w.iter().zip(&d4).enumerate() {
                let s = q4.scales[i / g];
                assert!(
                    (a - b).abs() <= s * (0.5 + 1e-5),
                    "int4 g{g} at {i}: {a} vs {b}"
                );
            }
            let codes = unpack_int4(&q4.packed, rows, cols).unwrap();
            assert!(codes.iter().all(|&v| (-7..=7).contains(&v)));
            assert_eq!(pack_int4(&codes, rows, cols).unwrap(), q4.packed);
        }
        println!("int8 worst round-trip error: {worst8:.4} scale");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let msg = |r: Result<Int8Weights>| r.unwrap_err().to_string();
        assert!(msg(quantize_int8(&[1.0; 5], 2, 3)).contains("[2, 3]"));
        assert!(msg(quantize_int8(&[], 0, 3)).contains("[0, 3]"));
        let e = msg(quantize_int8(&[1.0, f32::NAN, 0.0, 1.0], 2, 2));
        assert!(e.contains("(0, 1)") && e.contains("NaN"), "{e}");
        let e = msg(quantize_int8(&[1.0, 0.0, f32::INFINITY, 1.0], 2, 2));
        assert!(e.contains("(1, 0)") && e.contains("inf"), "{e}");
        let e = quantize_int4(&[0.5; 12], 2, 6, 4).unwrap_err().to_string();
        assert!(
            e.contains("in_features 6") && e.contains("group size 4"),
            "{e}"
        );
        assert!(quantize_int4(&[0.5; 6], 2, 3, 3).is_err());
        assert!(quantize_int4(&[0.5; 8], 2, 4, 0).is_err());
        assert!(pack_int4(&[0, 8], 1, 2)
            .unwrap_err()
            .to_string()
            .contains("[-8, 7]"));
        assert!(pack_int4(&[0, 1, 2], 1, 3).is_err());
        assert!(unpack_int4(&[0, 1, 2], 2, 2).is_err());
        let mut q = quantize_int8(&[1.0, 2.0], 1, 2).unwrap();
        q.scales[0] = f32::NAN;
        assert!(dequantize_int8(&q)
            .unwrap_err()
            .to_string()
            .contains("scale 0"));
        q.scales = vec![];
        assert!(dequantize_int8(&q).is_err());
        let mut q4 = quantize_int4(&[1.0, 2.0, 3.0, 4.0], 1, 4, 2).unwrap();
        q4.scales[1] = -1.0;
        assert!(dequantize_int4(&q4)
            .unwrap_err()
            .to_string()
            .contains("scale 1"));
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert!(quantize_tensor(&w, QuantScheme::Int8).is_err());
    }

    #[test]
    fn tensor_dequantization_matches_the_host_functions() {
        let (rows, cols) = (16, 64);
        let w = weights(rows * cols, 11);
        let t = Tensor::from_slice(&w).view([rows as i64, cols as i64]);
        for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group_size: 32 }] {
            let (q, s) = quantize_tensor(&t, scheme).unwrap();
            let host = match scheme {
                QuantScheme::Int8 => dequantize_int8(&quantize_int8(&w, rows, cols).unwrap()),
                QuantScheme::Int4 { .. } => {
                    dequantize_int4(&quantize_int4(&w, rows, cols, 32).unwrap())
                }
            }
            .unwrap();
            let d = dequantize_tensor(&q, &s, scheme, Kind::Float).unwrap();
            assert_eq!(Vec::<f32>::try_from(&d.view([-1])).unwrap(), host);
        }
    }

    #[test]
    fn packed_kernels_match_the_dequantized_matmul() {
        let (out, inp) = (48, 64);
        let w = Tensor::from_slice(&weights(out * inp, 5)).view([out as i64, inp as i64]);
        let x = Tensor::from_slice(&weights(3 * 2 * inp, 9)).view([3, 2, inp as i64]) * 10.0;
        for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group_size: 32 }] {
            let (q, s) = quantize_tensor(&w, scheme).unwrap();
            let reference = x.linear::<&Tensor>(
                &dequantize_tensor(&q, &s, scheme, Kind::Float).unwrap(),
                None,
            );
            let mut p = PackedLinear::new(scheme, q, s);
            p.prepare(Kind::Float).unwrap();
            let y = p.forward(&x).unwrap();
            assert_eq!(y.size(), vec![3, 2, out as i64]);
            let diff = (&y - &reference).abs().max().double_value(&[]);
            println!(
                "{}: packed kernel vs dequantized matmul, max diff {diff:.2e}",
                scheme.label()
            );
            assert!(diff < 1e-4, "{diff}");
        }
        // The int4 CPU kernel's limits are errors, not crashes.
        let (q, s) = quantize_tensor(&w, QuantScheme::Int4 { group_size: 16 }).unwrap();
        let mut p = PackedLinear::new(QuantScheme::Int4 { group_size: 16 }, q, s);
        assert!(p
            .prepare(Kind::Float)
            .unwrap_err()
            .to_string()
            .contains("group size"));
    }

    #[test]
    fn quantization_config_round_trips_and_rejects_bad_fields() {
        let p = Path::new("llm/config.json");
        for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group_size: 64 }] {
            let qc = QuantConfig::all_linear(scheme);
            assert_eq!(QuantConfig::from_json(&qc.to_json(), p).unwrap(), qc);
        }
        let base = QuantConfig::all_linear(QuantScheme::Int4 { group_size: 128 }).to_json();
        let cases: &[(&str, Value, &str)] = &[
            ("quant_method", json!("gptq"), "quant_method"),
            ("bits", json!(3), "bits"),
            ("group_size", json!(-1), "group_size"),
            ("group_size", json!(7), "group_size"),
            ("symmetric", json!(false), "symmetric"),
            ("packing", json!(PACKING_INT8), "packing"),
            ("modules", json!(["mlp.fc1"]), "modules"),
            ("modules", json!(["mlp.up_proj", "mlp.up_proj"]), "modules"),
            ("modules", json!([]), "modules"),
            ("extra", json!(1), "extra"),
        ];
        for (key, value, field) in cases {
            let mut v = base.clone();
            v[*key] = value.clone();
            let e = QuantConfig::from_json(&v, p).unwrap_err().to_string();
            assert!(
                e.contains(&format!("quantization_config.{field}"))
                    && e.contains("llm/config.json"),
                "{key}={value}: {e}"
            );
        }
        let mut v = QuantConfig::all_linear(QuantScheme::Int8).to_json();
        v["group_size"] = json!(128);
        assert!(QuantConfig::from_json(&v, p).is_err());
    }

    mod loading {
        use super::super::*;
        use crate::checkpoint::save_safetensors;
        use crate::llama::{Llama, LoadOptions};

        fn tiny() -> LlamaConfig {
            let v = json!({
                "model_type": "llama", "vocab_size": 50, "hidden_size": 32,
                "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
                "tie_word_embeddings": false,
            });
            LlamaConfig::from_json(&v, Path::new("test")).unwrap()
        }

        fn logits(m: &Llama, ids: &Tensor) -> Tensor {
            tch::no_grad(|| m.forward(ids, None).unwrap())
        }

        fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
            (a - b).abs().max().double_value(&[])
        }

        #[test]
        fn quantized_checkpoints_load_dequantized_and_packed() {
            let model = Llama::random(tiny(), LoadOptions::default(), 3).unwrap();
            let ids = Tensor::from_slice(&[1i64, 7, 9, 33, 2, 49, 0, 12, 5, 5]).view([2, 5]);
            let reference = logits(&model, &ids);
            let tmp = tempfile::tempdir().unwrap();
            let mut worst = Vec::new();
            for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group_size: 32 }] {
                let dir = tmp.path().join(scheme.label());
                let qc = QuantConfig::all_linear(scheme);
                save_quantized(&model, &qc, Kind::Float, None, &dir).unwrap();
                let deq = Llama::load(&dir, LoadOptions::default()).unwrap();
                assert_eq!(deq.quantization(), Some(&qc));
                assert!(deq.packed_quantization().is_none());
                let d = max_diff(&logits(&deq, &ids), &reference);
                let packed =
                    Llama::load_with(&dir, LoadOptions::default(), QuantRuntime::Packed).unwrap();
                assert_eq!(packed.packed_quantization(), Some(&qc));
                assert!(packed.weight_bytes_per_token() < deq.weight_bytes_per_token());
                let pl = logits(&packed, &ids);
                let dp = max_diff(&pl, &logits(&deq, &ids));
                println!(
                    "{}: max |logit diff| vs f32 {d:.2e}; packed kernels vs dequantized {dp:.2e}",
                    scheme.label()
                );
                assert!(dp < 1e-4, "{dp}");
                worst.push(d);
                // A packed model saves its integers as they are: the reload is identical.
                let again = tmp.path().join(format!("{}-resaved", scheme.label()));
                packed.save(&again).unwrap();
                let reloaded =
                    Llama::load_with(&again, LoadOptions::default(), QuantRuntime::Packed).unwrap();
                assert_eq!(max_diff(&logits(&reloaded, &ids), &pl), 0.0);
            }
            // Relative to the largest logit: int8 (step max/127 per row) within 2 %, int4 (step
            // max/7 per group of 32) within 20 %, and int8 several times closer.
            let scale = reference.abs().max().double_value(&[]);
            println!("largest |logit| {scale:.3}");
            assert!(
                worst[0] < 0.02 * scale && worst[1] < 0.2 * scale,
                "{worst:?}"
            );
            assert!(worst[0] * 4.0 < worst[1], "{worst:?}");
        }

        #[test]
        fn partial_module_lists_fall_back_to_dequantized_groups() {
            let model = Llama::random(tiny(), LoadOptions::default(), 4).unwrap();
            let ids = Tensor::from_slice(&[3i64, 4, 5, 6]).view([1, 4]);
            let tmp = tempfile::tempdir().unwrap();
            let qc = QuantConfig {
                scheme: QuantScheme::Int8,
                modules: vec![LoraTarget::Q, LoraTarget::Down],
            };
            save_quantized(&model, &qc, Kind::Float, None, tmp.path()).unwrap();
            let deq = Llama::load(tmp.path(), LoadOptions::default()).unwrap();
            let packed =
                Llama::load_with(tmp.path(), LoadOptions::default(), QuantRuntime::Packed).unwrap();
            // q alone cannot be packed (k and v are float): only down_proj stays packed.
            assert_eq!(
                packed.packed_quantization().unwrap().modules,
                vec![LoraTarget::Down]
            );
            let d = max_diff(&logits(&packed, &ids), &logits(&deq, &ids));
            assert!(d < 1e-4, "{d}");
            let names: Vec<String> = packed.named_tensors().into_iter().map(|(n, _)| n).collect();
            assert!(names.contains(&"model.layers.1.mlp.down_proj.qweight".to_string()));
            assert!(names.contains(&"model.layers.1.self_attn.q_proj.weight".to_string()));
        }

        /// Rewrites `dir/model.safetensors` through `edit`.
        fn edit_checkpoint(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
            let path = dir.join("model.safetensors");
            let mut t = Tensor::read_safetensors(&path).unwrap();
            edit(&mut t);
            save_safetensors(&path, &t).unwrap();
        }

        fn load_err(dir: &Path) -> String {
            Llama::load(dir, LoadOptions::default())
                .unwrap_err()
                .to_string()
        }

        #[test]
        fn broken_quantized_checkpoints_are_clear_errors() {
            let model = Llama::random(tiny(), LoadOptions::default(), 5).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let fresh = |name: &str, scheme: QuantScheme| {
                let dir = tmp.path().join(name);
                save_quantized(
                    &model,
                    &QuantConfig::all_linear(scheme),
                    Kind::Half,
                    None,
                    &dir,
                )
                .unwrap();
                dir
            };
            let int4 = QuantScheme::Int4 { group_size: 32 };
            let name = "model.layers.1.mlp.up_proj";

            let dir = fresh("missing", QuantScheme::Int8);
            edit_checkpoint(&dir, |t| t.retain(|(n, _)| *n != format!("{name}.scales")));
            let e = load_err(&dir);
            assert!(
                e.contains(&format!("missing tensor `{name}.scales`")),
                "{e}"
            );

            let dir = fresh("dtype", int4);
            edit_checkpoint(&dir, |t| {
                for (n, v) in t.iter_mut() {
                    if *n == format!("{name}.qweight") {
                        *v = v.to_kind(Kind::Int8);
                    }
                }
            });
            let e = load_err(&dir);
            assert!(
                e.contains(&format!("`{name}.qweight`")) && e.contains("Uint8"),
                "{e}"
            );

            let dir = fresh("scale-dtype", QuantScheme::Int8);
            edit_checkpoint(&dir, |t| {
                for (n, v) in t.iter_mut() {
                    if *n == format!("{name}.scales") {
                        *v = v.to_kind(Kind::Half);
                    }
                }
            });
            let e = load_err(&dir);
            assert!(
                e.contains(&format!("`{name}.scales`")) && e.contains("Half"),
                "{e}"
            );

            let dir = fresh("shape", int4);
            edit_checkpoint(&dir, |t| {
                for (n, v) in t.iter_mut() {
                    if *n == format!("{name}.scales") {
                        *v = v.narrow(0, 0, 10);
                    }
                }
            });
            let e = load_err(&dir);
            assert!(
                e.contains(&format!("`{name}.scales`")) && e.contains("[10, 1]"),
                "{e}"
            );

            let dir = fresh("nan", QuantScheme::Int8);
            edit_checkpoint(&dir, |t| {
                for (n, v) in t.iter_mut() {
                    if *n == format!("{name}.scales") {
                        let _ = v.get(5).fill_(f64::NAN);
                    }
                }
            });
            let e = load_err(&dir);
            assert!(
                e.contains(&format!("{name}.scales")) && e.contains("element 5"),
                "{e}"
            );

            // A float weight left in place of the quantized one.
            let dir = fresh("float", QuantScheme::Int8);
            edit_checkpoint(&dir, |t| {
                t.push((
                    format!("{name}.weight"),
                    Tensor::zeros([64, 32], (Kind::Float, Device::Cpu)),
                ))
            });
            let e = load_err(&dir);
            assert!(
                e.contains(&format!("unexpected tensor `{name}.weight`")),
                "{e}"
            );

            // A config whose groups do not divide the input features.
            let dir = fresh("group", int4);
            let cpath = dir.join("config.json");
            let mut cfg: Value =
                serde_json::from_str(&std::fs::read_to_string(&cpath).unwrap()).unwrap();
            cfg["quantization_config"]["group_size"] = json!(24);
            std::fs::write(&cpath, cfg.to_string()).unwrap();
            let e = load_err(&dir);
            assert!(
                e.contains("quantization_config.group_size") && e.contains("in_features 32"),
                "{e}"
            );

            // The packed runtime is CPU-only.
            let dir = fresh("cuda", QuantScheme::Int8);
            let opts = LoadOptions {
                device: Device::Cuda(0),
                ..LoadOptions::default()
            };
            let e = Llama::load_with(&dir, opts, QuantRuntime::Packed)
                .unwrap_err()
                .to_string();
            assert!(e.contains("CPU only"), "{e}");

            // NaN weights cannot be quantized; the error names the tensor.
            {
                let _g = tch::no_grad_guard();
                let (_, w) = model
                    .named_tensors()
                    .into_iter()
                    .find(|(n, _)| n == "model.layers.0.self_attn.o_proj.weight")
                    .unwrap();
                let _ = w.get(2).get(3).fill_(f64::NAN);
            }
            let e = save_quantized(
                &model,
                &QuantConfig::all_linear(QuantScheme::Int8),
                Kind::Float,
                None,
                &tmp.path().join("nan-weights"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("o_proj.weight") && e.contains("(2, 3)"), "{e}");
        }
    }
}
