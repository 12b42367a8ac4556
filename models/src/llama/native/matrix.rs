//! Weight matrices of the native decoder in one of four formats, built once from f32 values,
//! and their matrix-vector product split over a [`ThreadPool`].
//!
//! The integer formats reuse the quantizers of [`crate::llama::quant`] ([`quantize_int8`]:
//! per-row scales; [`quantize_int4`]: group-wise scales, codes in `[-7, 7]`), so a native int8 or
//! int4 matrix holds exactly the values a `tolk-weight-only` checkpoint would; int4 codes are then
//! re-laid out in ggml's 32-column blocks (see [`super::kernels`]).

use super::kernels::{self, Isa, WeightsRef, INT4_BLOCK};
use super::pool::ThreadPool;
use crate::llama::quant::{quantize_int4, quantize_int8, unpack_int4, Int4Weights, Int8Weights};
use crate::{ModelError, Result};

/// How a native matrix stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// bf16 (round to nearest even, as `torch.Tensor.to(torch.bfloat16)`); products in f32.
    Bf16,
    /// int8, one scale per output row ([`quantize_int8`]).
    Int8,
    /// int4, one scale per `group_size` input columns of each row ([`quantize_int4`]);
    /// `group_size` must be a multiple of 32.
    Int4 {
        group_size: usize,
    },
}

impl WeightFormat {
    /// `f32`, `bf16`, `int8` or `int4-g<G>`.
    pub fn label(self) -> String {
        match self {
            WeightFormat::F32 => "f32".into(),
            WeightFormat::Bf16 => "bf16".into(),
            WeightFormat::Int8 => "int8".into(),
            WeightFormat::Int4 { group_size } => format!("int4-g{group_size}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
    },
    Int4 {
        packed: Vec<u8>,
        scales: Vec<f32>,
        group: usize,
    },
}

/// A row-major `[rows, cols]` matrix (see the module doc).
#[derive(Debug, Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

fn bad(msg: String) -> ModelError {
    ModelError::InvalidArgument(msg)
}

impl Matrix {
    /// Converts (or quantizes) the row-major values `w` of a `[rows, cols]` matrix.
    pub fn from_f32(w: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<Self> {
        if rows == 0 || cols == 0 || w.len() != rows * cols {
            return Err(bad(format!(
                "{} values do not make a [{rows}, {cols}] matrix",
                w.len()
            )));
        }
        match format {
            WeightFormat::F32 => Ok(Self {
                rows,
                cols,
                storage: Storage::F32(w.to_vec()),
            }),
            WeightFormat::Bf16 => Ok(Self {
                rows,
                cols,
                storage: Storage::Bf16(
                    w.iter()
                        .map(|&v| half::bf16::from_f32(v).to_bits())
                        .collect(),
                ),
            }),
            WeightFormat::Int8 => Self::from_int8(quantize_int8(w, rows, cols)?),
            WeightFormat::Int4 { group_size } => {
                Self::check_int4(cols, group_size)?;
                Self::from_int4(&quantize_int4(w, rows, cols, group_size)?)
            }
        }
    }

    fn check_int4(cols: usize, group: usize) -> Result<()> {
        if group == 0 || !group.is_multiple_of(INT4_BLOCK) || !cols.is_multiple_of(group) {
            return Err(bad(format!(
                "native int4 needs a group size that is a multiple of {INT4_BLOCK} and divides \
                 the {cols} columns, got {group}"
            )));
        }
        Ok(())
    }

    /// An int8 matrix of [`crate::llama::quant`] as it is.
    pub fn from_int8(w: Int8Weights) -> Result<Self> {
        crate::llama::quant::check_int8_shape(&w)?;
        if w.rows == 0 || w.cols == 0 {
            return Err(bad(format!("int8 [{}, {}] is empty", w.rows, w.cols)));
        }
        Ok(Self {
            rows: w.rows,
            cols: w.cols,
            storage: Storage::Int8 {
                q: w.q,
                scales: w.scales,
            },
        })
    }

    /// An int4 matrix of [`crate::llama::quant`] ([`crate::llama::quant::pack_int4`]'s layout),
    /// re-laid out in 32-column blocks: byte `j` of block `b` holds column `32b + j` (low nibble)
    /// and `32b + 16 + j` (high nibble).
    pub fn from_int4(w: &Int4Weights) -> Result<Self> {
        let (rows, cols, group) = (w.rows, w.cols, w.group_size);
        Self::check_int4(cols, group)?;
        if rows == 0 || w.scales.len() != rows * (cols / group) {
            return Err(bad(format!(
                "int4 [{rows}, {cols}] with group size {group} needs {} scales, got {}",
                rows * (cols / group),
                w.scales.len()
            )));
        }
        let codes = unpack_int4(&w.packed, rows, cols)?;
        let mut packed = Vec::with_capacity(rows * cols / 2);
        for block in codes.chunks_exact(INT4_BLOCK) {
            for j in 0..INT4_BLOCK / 2 {
                let lo = (block[j] + 8) as u8;
                let hi = (block[j + INT4_BLOCK / 2] + 8) as u8;
                packed.push(lo | (hi << 4));
            }
        }
        Ok(Self {
            rows,
            cols,
            storage: Storage::Int4 {
                packed,
                scales: w.scales.clone(),
                group,
            },
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match &self.storage {
            Storage::F32(_) => WeightFormat::F32,
            Storage::Bf16(_) => WeightFormat::Bf16,
            Storage::Int8 { .. } => WeightFormat::Int8,
            Storage::Int4 { group, .. } => WeightFormat::Int4 { group_size: *group },
        }
    }

    /// Bytes a full product reads (weights and scales).
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(w) => w.len() * 4,
            Storage::Bf16(w) => w.len() * 2,
            Storage::Int8 { q, scales } => q.len() + scales.len() * 4,
            Storage::Int4 { packed, scales, .. } => packed.len() + scales.len() * 4,
        }
    }

    fn weights(&self) -> WeightsRef<'_> {
        match &self.storage {
            Storage::F32(w) => WeightsRef::F32(w),
            Storage::Bf16(w) => WeightsRef::Bf16(w),
            Storage::Int8 { q, scales } => WeightsRef::Int8 { q, scales },
            Storage::Int4 {
                packed,
                scales,
                group,
            } => WeightsRef::Int4 {
                packed,
                scales,
                group: *group,
            },
        }
    }

    /// Row `r` as f32 (an embedding lookup): the values the products use.
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows || out.len() != self.cols {
            return Err(bad(format!(
                "row {r} of a [{}, {}] matrix into {} values",
                self.rows,
                self.cols,
                out.len()
            )));
        }
        let c = self.cols;
        match &self.storage {
            Storage::F32(w) => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Storage::Bf16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[r * c..(r + 1) * c]) {
                    *o = kernels::bf16_to_f32(b);
                }
            }
            Storage::Int8 { q, scales } => {
                for (o, &v) in out.iter_mut().zip(&q[r * c..(r + 1) * c]) {
                    *o = v as f32 * scales[r];
                }
            }
            Storage::Int4 {
                packed,
                scales,
                group,
            } => {
                let groups = c / group;
                let bytes = &packed[r * c / 2..(r + 1) * c / 2];
                for (b, blk) in bytes.chunks_exact(INT4_BLOCK / 2).enumerate() {
                    for (j, &byte) in blk.iter().enumerate() {
                        for (col, nib) in [(j, byte & 0x0f), (j + INT4_BLOCK / 2, byte >> 4)] {
                            let col = b * INT4_BLOCK + col;
                            out[col] = (nib as i32 - 8) as f32 * scales[r * groups + col / group];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every value as f32, row-major: the matrix the products compute with (tests, and a libtorch
    /// model on the same weights).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.row_into(r, row)
                .expect("row index and length are in range");
        }
        out
    }

    fn check_vectors(&self, x: &[f32], y: &[f32]) -> Result<()> {
        if x.len() != self.cols || y.len() != self.rows {
            return Err(bad(format!(
                "a [{}, {}] product needs x of {} and y of {} values, got {} and {}",
                self.rows,
                self.cols,
                self.cols,
                self.rows,
                x.len(),
                y.len()
            )));
        }
        Ok(())
    }

    /// `y = W x` on the calling thread.
    pub fn matvec(&self, isa: Isa, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.check_vectors(x, y)?;
        kernels::matvec(isa, self.weights(), self.cols, 0..self.rows, x, y);
        Ok(())
    }

    /// `y = W x` with the rows split over the threads of `pool`.
    pub fn matvec_pool(&self, isa: Isa, pool: &ThreadPool, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.check_vectors(x, y)?;
        let w = self.weights();
        let cols = self.cols;
        pool.split_rows(y, 4, &|first, out| {
            kernels::matvec(isa, w, cols, first..first + out.len(), x, out);
        });
        Ok(())
    }
}
