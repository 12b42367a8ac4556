//! Matrix-vector products `y[r] = W[r, :] · x` over row-major weights, for the four weight
//! formats of [`super::matrix`]: f32, bf16 (weights bf16, activations f32), int8 with one scale
//! per output row, and int4 in blocks of 32 columns with one scale per group of columns.
//!
//! Every format has a portable scalar kernel (always compiled, the reference of the tests) and
//! `std::arch` kernels picked at run time ([`Isa::detect`]): AVX2 + FMA and AVX-512F on x86-64,
//! NEON on aarch64 (the Jetson). The SIMD kernels take four rows at a time so that each load of
//! `x` serves four rows from registers, and keep two accumulators per row (eight in flight) to
//! hide the FMA latency; rows left over go one at a time and columns left over go through a
//! scalar tail (AVX-512 f32 uses a masked load instead).
//!
//! Integer weights are converted to f32 in registers and multiplied with the f32 activations: no
//! activation quantization, so the result equals the dequantized matrix times `x` up to f32
//! rounding (llama.cpp's `ggml_vec_dot_q8_0_q8_0` / `q4_0_q8_0` instead quantize `x` to int8
//! blocks and use integer dot products; on these memory-bound shapes the conversion is hidden by
//! the weight reads). The int4 block layout is ggml's `block_q4_0` (`ggml-common.h`): byte `j` of
//! a 32-column block holds column `j` in its low nibble and column `j + 16` in its high nibble,
//! offset by 8, so that one 16-byte load gives two contiguous 16-column halves.
//!
//! The kernels check nothing beyond slice bounds (a mis-sized slice panics): [`super::matrix`]
//! validates shapes once, when a matrix is built, and returns typed errors.

// The `for k in 0..R` loops index several fixed-size arrays of registers at once (rows,
// accumulators); iterator chains over them would obscure the unrolled kernels.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

/// Columns per int4 block (see the module doc).
pub const INT4_BLOCK: usize = 32;

/// The instruction set a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, no `std::arch`.
    Scalar,
    /// x86-64 AVX2 + FMA, 8 lanes.
    Avx2,
    /// x86-64 AVX-512F (+ AVX2 for the shared helpers), 16 lanes.
    Avx512,
    /// aarch64 Advanced SIMD, 4 lanes.
    Neon,
}

impl Isa {
    /// The widest instruction set this CPU runs.
    pub fn detect() -> Self {
        *Self::available().last().unwrap_or(&Isa::Scalar)
    }

    /// Every instruction set this CPU runs, narrowest first (the tests run each).
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut out = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f") {
                    out.push(Isa::Avx512);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                out.push(Isa::Neon);
            }
        }
        out
    }

    /// `scalar`, `avx2`, `avx512` or `neon`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
            Isa::Neon => "neon",
        }
    }

    /// The instruction set to actually run for `self` on this CPU: a set this CPU lacks (or one of
    /// another architecture) falls back to the scalar kernels, so a wrong `Isa` value is never
    /// undefined behaviour.
    #[inline]
    fn checked(self) -> Self {
        // `is_*_feature_detected!` reads a cached word: cheap enough for every call.
        let runs = match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("avx512f")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        };
        if runs {
            self
        } else {
            Isa::Scalar
        }
    }
}

/// The weights of one matrix, borrowed: what a kernel reads.
#[derive(Debug, Clone, Copy)]
pub enum WeightsRef<'a> {
    F32(&'a [f32]),
    /// bf16 bit patterns (the high half of an f32).
    Bf16(&'a [u16]),
    /// Codes in `[-127, 127]` and one scale per row.
    Int8 {
        q: &'a [i8],
        scales: &'a [f32],
    },
    /// Blocks of [`INT4_BLOCK`] columns (16 bytes each, row-major), `groups` scales per row,
    /// `group` columns each (a multiple of [`INT4_BLOCK`]).
    Int4 {
        packed: &'a [u8],
        scales: &'a [f32],
        group: usize,
    },
}

/// `y[i] = W[rows.start + i, :] · x` for the rows `rows` of the `[_, cols]` matrix `w`
/// (`x.len() == cols`, `y.len() == rows.len()`), with the kernels of `isa`.
pub fn matvec(
    isa: Isa,
    w: WeightsRef<'_>,
    cols: usize,
    rows: Range<usize>,
    x: &[f32],
    y: &mut [f32],
) {
    assert_eq!(x.len(), cols, "x has {} values for {cols} columns", x.len());
    assert_eq!(
        y.len(),
        rows.len(),
        "y has {} values for {} rows",
        y.len(),
        rows.len()
    );
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::matvec_avx2(w, cols, rows, x, y),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::matvec_avx512(w, cols, rows, x, y),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => neon::matvec(w, cols, rows, x, y),
        _ => scalar::matvec(w, cols, rows, x, y),
    }
}

/// `out = Σ_t p[t] * rows[t]` for the `p.len()` rows of `rows` (row-major, `out.len()` wide):
/// attention's weighted sum of the cached values, one call per head.
pub fn weighted_sum(isa: Isa, p: &[f32], rows: &[f32], out: &mut [f32]) {
    assert_eq!(
        rows.len(),
        p.len() * out.len(),
        "{} rows of {}",
        p.len(),
        out.len()
    );
    match isa.checked() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => x86::weighted_sum_avx2(p, rows, out),
        _ => scalar::weighted_sum(p, rows, out),
    }
}

/// The f32 value of a bf16 bit pattern.
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The portable kernels: the reference the SIMD ones are tested against.
pub mod scalar {
    use super::*;

    pub fn weighted_sum(p: &[f32], rows: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        for (&a, row) in p.iter().zip(rows.chunks_exact(out.len().max(1))) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += a * v;
            }
        }
    }

    pub fn matvec(w: WeightsRef<'_>, cols: usize, rows: Range<usize>, x: &[f32], y: &mut [f32]) {
        for (r, y) in rows.zip(y.iter_mut()) {
            *y = row_dot(w, cols, r, x);
        }
    }

    /// One row's dot product, with four partial sums (as the SIMD kernels, so that the
    /// summation order differs from theirs only within a few ulps).
    pub fn row_dot(w: WeightsRef<'_>, cols: usize, r: usize, x: &[f32]) -> f32 {
        match w {
            WeightsRef::F32(w) => dot(&w[r * cols..(r + 1) * cols], x, |v| *v),
            WeightsRef::Bf16(w) => dot(&w[r * cols..(r + 1) * cols], x, |v| bf16_to_f32(*v)),
            WeightsRef::Int8 { q, scales } => {
                dot(&q[r * cols..(r + 1) * cols], x, |v| *v as f32) * scales[r]
            }
            WeightsRef::Int4 {
                packed,
                scales,
                group,
            } => {
                let bytes = &packed[r * cols / 2..(r + 1) * cols / 2];
                let groups = cols / group;
                let mut total = 0f32;
                for g in 0..groups {
                    let mut acc = [0f32; 2];
                    for b in g * group / INT4_BLOCK..(g + 1) * group / INT4_BLOCK {
                        let blk = &bytes[b * 16..b * 16 + 16];
                        let xb = &x[b * INT4_BLOCK..(b + 1) * INT4_BLOCK];
                        for j in 0..16 {
                            acc[0] += ((blk[j] & 0x0f) as i32 - 8) as f32 * xb[j];
                            acc[1] += ((blk[j] >> 4) as i32 - 8) as f32 * xb[j + 16];
                        }
                    }
                    total += (acc[0] + acc[1]) * scales[r * groups + g];
                }
                total
            }
        }
    }

    fn dot<T>(w: &[T], x: &[f32], f: impl Fn(&T) -> f32) -> f32 {
        let mut acc = [0f32; 4];
        let mut wc = w.chunks_exact(4);
        let mut xc = x.chunks_exact(4);
        for (w, x) in (&mut wc).zip(&mut xc) {
            for k in 0..4 {
                acc[k] += f(&w[k]) * x[k];
            }
        }
        let mut tail = 0f32;
        for (w, x) in wc.remainder().iter().zip(xc.remainder()) {
            tail += f(w) * x;
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Rows processed together.
    const R: usize = 4;

    pub fn matvec_avx2(
        w: WeightsRef<'_>,
        cols: usize,
        rows: Range<usize>,
        x: &[f32],
        y: &mut [f32],
    ) {
        // SAFETY: `Isa::checked` selected this kernel only after `is_x86_feature_detected!`
        // reported avx2 and fma on this CPU.
        unsafe { matvec_avx2_impl(w, cols, rows, x, y) }
    }

    pub fn matvec_avx512(
        w: WeightsRef<'_>,
        cols: usize,
        rows: Range<usize>,
        x: &[f32],
        y: &mut [f32],
    ) {
        // SAFETY: `Isa::checked` selected this kernel only after `is_x86_feature_detected!`
        // reported avx512f, avx2 and fma on this CPU.
        unsafe { matvec_avx512_impl(w, cols, rows, x, y) }
    }

    pub fn weighted_sum_avx2(p: &[f32], rows: &[f32], out: &mut [f32]) {
        // SAFETY: called for Isa::Avx2 / Isa::Avx512 only, both checked to have avx2 + fma.
        unsafe { weighted_sum_impl(p, rows, out) }
    }

    /// Splits `rows` into blocks of `R` and single rows and calls `block` / `single` with the
    /// first row and the output slot(s).
    #[inline(always)]
    fn for_row_blocks(
        rows: Range<usize>,
        y: &mut [f32],
        mut block: impl FnMut(usize, &mut [f32]),
        mut single: impl FnMut(usize) -> f32,
    ) {
        let start = rows.start;
        let full = rows.len() / R * R;
        for (i, out) in y[..full].chunks_exact_mut(R).enumerate() {
            block(start + i * R, out);
        }
        for (i, out) in y[full..].iter_mut().enumerate() {
            *out = single(start + full + i);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum_impl(p: &[f32], rows: &[f32], out: &mut [f32]) {
        let n = out.len();
        out.fill(0.0);
        let mut c = 0;
        // Eight columns at a time, accumulated in a register over every row.
        while c + 8 <= n {
            let mut acc = _mm256_setzero_ps();
            for (t, &a) in p.iter().enumerate() {
                // SAFETY: row t spans rows[t * n..(t + 1) * n] and c + 8 <= n.
                let v = _mm256_loadu_ps(rows.as_ptr().add(t * n + c));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(a), v, acc);
            }
            // SAFETY: c + 8 <= n = out.len().
            _mm256_storeu_ps(out.as_mut_ptr().add(c), acc);
            c += 8;
        }
        for (t, &a) in p.iter().enumerate() {
            for j in c..n {
                out[j] += a * rows[t * n + j];
            }
        }
    }

    // -------------------------------------------------------------------------------------
    // AVX2 + FMA: 8 lanes.

    /// Loads 8 weights at `p` as f32 (one `match` per format, resolved at compile time).
    trait Load8 {
        /// SAFETY (callers): `p..p + 8` elements must be readable.
        unsafe fn load8(p: *const Self) -> __m256;
        fn to_f32(&self) -> f32;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        fn to_f32(&self) -> f32 {
            *self
        }
    }

    impl Load8 for u16 {
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
        fn to_f32(&self) -> f32 {
            bf16_to_f32(*self)
        }
    }

    impl Load8 for i8 {
        #[inline(always)]
        unsafe fn load8(p: *const i8) -> __m256 {
            let b = _mm_loadl_epi64(p as *const __m128i);
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
        }
        fn to_f32(&self) -> f32 {
            *self as f32
        }
    }

    /// Dot products of `R` rows (`w` row-major, `cols` wide, first row `r0`) with `x`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2<T: Load8>(w: &[T], cols: usize, r0: usize, x: &[f32], out: &mut [f32]) {
        let rows: [&[T]; R] = std::array::from_fn(|k| &w[(r0 + k) * cols..(r0 + k + 1) * cols]);
        let mut acc0 = [_mm256_setzero_ps(); R];
        let mut acc1 = [_mm256_setzero_ps(); R];
        let mut c = 0;
        while c + 16 <= cols {
            // SAFETY: c + 16 <= cols = the length of x and of every row slice.
            let x0 = _mm256_loadu_ps(x.as_ptr().add(c));
            let x1 = _mm256_loadu_ps(x.as_ptr().add(c + 8));
            for k in 0..R {
                let p = rows[k].as_ptr().add(c);
                acc0[k] = _mm256_fmadd_ps(T::load8(p), x0, acc0[k]);
                acc1[k] = _mm256_fmadd_ps(T::load8(p.add(8)), x1, acc1[k]);
            }
            c += 16;
        }
        if c + 8 <= cols {
            // SAFETY: as above with 8.
            let x0 = _mm256_loadu_ps(x.as_ptr().add(c));
            for k in 0..R {
                acc0[k] = _mm256_fmadd_ps(T::load8(rows[k].as_ptr().add(c)), x0, acc0[k]);
            }
            c += 8;
        }
        for k in 0..R {
            let mut s = hsum256(_mm256_add_ps(acc0[k], acc1[k]));
            for j in c..cols {
                s += rows[k][j].to_f32() * x[j];
            }
            out[k] = s;
        }
    }

    /// Decodes 8 int4 codes (`(nibble - 8)` as f32) from the low (`HIGH = false`) or high nibbles
    /// of the 8 bytes at `p`.
    #[inline(always)]
    unsafe fn int4_8<const HIGH: bool>(p: *const u8) -> __m256 {
        let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        let b = if HIGH { _mm256_srli_epi32::<4>(b) } else { b };
        let n = _mm256_and_si256(b, _mm256_set1_epi32(0x0f));
        _mm256_cvtepi32_ps(_mm256_sub_epi32(n, _mm256_set1_epi32(8)))
    }

    /// int4 dot products of `R` rows starting at `r0` (see the module doc for the layout).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_int4_avx2(
        packed: &[u8],
        scales: &[f32],
        group: usize,
        cols: usize,
        r0: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let groups = cols / group;
        let row_bytes = cols / 2;
        let rows: [&[u8]; R] =
            std::array::from_fn(|k| &packed[(r0 + k) * row_bytes..(r0 + k + 1) * row_bytes]);
        let mut total = [_mm256_setzero_ps(); R];
        for g in 0..groups {
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            for b in g * group / INT4_BLOCK..(g + 1) * group / INT4_BLOCK {
                // SAFETY: block b covers x[32b..32b + 32] and bytes 16b..16b + 16 of each row,
                // inside the slices since (b + 1) * 32 <= cols.
                let xp = x.as_ptr().add(b * INT4_BLOCK);
                let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                let (x2, x3) = (_mm256_loadu_ps(xp.add(16)), _mm256_loadu_ps(xp.add(24)));
                for k in 0..R {
                    let p = rows[k].as_ptr().add(b * 16);
                    acc0[k] = _mm256_fmadd_ps(int4_8::<false>(p), x0, acc0[k]);
                    acc1[k] = _mm256_fmadd_ps(int4_8::<false>(p.add(8)), x1, acc1[k]);
                    acc0[k] = _mm256_fmadd_ps(int4_8::<true>(p), x2, acc0[k]);
                    acc1[k] = _mm256_fmadd_ps(int4_8::<true>(p.add(8)), x3, acc1[k]);
                }
            }
            for k in 0..R {
                let s = _mm256_set1_ps(scales[(r0 + k) * groups + g]);
                total[k] = _mm256_fmadd_ps(s, _mm256_add_ps(acc0[k], acc1[k]), total[k]);
            }
        }
        for k in 0..R {
            out[k] = hsum256(total[k]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn matvec_avx2_impl(
        w: WeightsRef<'_>,
        cols: usize,
        rows: Range<usize>,
        x: &[f32],
        y: &mut [f32],
    ) {
        let single = |r| scalar::row_dot(w, cols, r, x);
        match w {
            // SAFETY (each closure): runs under this function's avx2 + fma target features.
            WeightsRef::F32(m) => {
                for_row_blocks(rows, y, |r, o| dots_avx2(m, cols, r, x, o), single)
            }
            WeightsRef::Bf16(m) => {
                for_row_blocks(rows, y, |r, o| dots_avx2(m, cols, r, x, o), single)
            }
            WeightsRef::Int8 { q, scales } => for_row_blocks(
                rows,
                y,
                |r, o| {
                    dots_avx2(q, cols, r, x, o);
                    for (k, o) in o.iter_mut().enumerate() {
                        *o *= scales[r + k];
                    }
                },
                single,
            ),
            WeightsRef::Int4 {
                packed,
                scales,
                group,
            } => for_row_blocks(
                rows,
                y,
                |r, o| dots_int4_avx2(packed, scales, group, cols, r, x, o),
                single,
            ),
        }
    }

    // -------------------------------------------------------------------------------------
    // AVX-512F: 16 lanes.

    trait Load16 {
        /// SAFETY (callers): `p..p + 16` elements must be readable.
        unsafe fn load16(p: *const Self) -> __m512;
        fn to_f32(&self) -> f32;
    }

    impl Load16 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        fn to_f32(&self) -> f32 {
            *self
        }
    }

    impl Load16 for u16 {
        #[inline(always)]
        unsafe fn load16(p: *const u16) -> __m512 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
        fn to_f32(&self) -> f32 {
            bf16_to_f32(*self)
        }
    }

    impl Load16 for i8 {
        #[inline(always)]
        unsafe fn load16(p: *const i8) -> __m512 {
            let b = _mm_loadu_si128(p as *const __m128i);
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
        }
        fn to_f32(&self) -> f32 {
            *self as f32
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn dots_avx512<T: Load16>(w: &[T], cols: usize, r0: usize, x: &[f32], out: &mut [f32]) {
        let rows: [&[T]; R] = std::array::from_fn(|k| &w[(r0 + k) * cols..(r0 + k + 1) * cols]);
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        let mut c = 0;
        while c + 32 <= cols {
            // SAFETY: c + 32 <= cols = the length of x and of every row slice.
            let x0 = _mm512_loadu_ps(x.as_ptr().add(c));
            let x1 = _mm512_loadu_ps(x.as_ptr().add(c + 16));
            for k in 0..R {
                let p = rows[k].as_ptr().add(c);
                acc0[k] = _mm512_fmadd_ps(T::load16(p), x0, acc0[k]);
                acc1[k] = _mm512_fmadd_ps(T::load16(p.add(16)), x1, acc1[k]);
            }
            c += 32;
        }
        if c + 16 <= cols {
            // SAFETY: as above with 16.
            let x0 = _mm512_loadu_ps(x.as_ptr().add(c));
            for k in 0..R {
                acc0[k] = _mm512_fmadd_ps(T::load16(rows[k].as_ptr().add(c)), x0, acc0[k]);
            }
            c += 16;
        }
        for k in 0..R {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[k], acc1[k]));
            for j in c..cols {
                s += rows[k][j].to_f32() * x[j];
            }
            out[k] = s;
        }
    }

    /// `table[n] = n - 8`: `vpermps` decodes a nibble (it reads only an index's low 4 bits).
    #[inline(always)]
    unsafe fn int4_table() -> __m512 {
        _mm512_setr_ps(
            -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
        )
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn dots_int4_avx512(
        packed: &[u8],
        scales: &[f32],
        group: usize,
        cols: usize,
        r0: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let groups = cols / group;
        let row_bytes = cols / 2;
        let rows: [&[u8]; R] =
            std::array::from_fn(|k| &packed[(r0 + k) * row_bytes..(r0 + k + 1) * row_bytes]);
        let table = int4_table();
        let mut total = [_mm512_setzero_ps(); R];
        for g in 0..groups {
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            for b in g * group / INT4_BLOCK..(g + 1) * group / INT4_BLOCK {
                // SAFETY: block b covers x[32b..32b + 32] and bytes 16b..16b + 16 of each row,
                // inside the slices since (b + 1) * 32 <= cols.
                let xp = x.as_ptr().add(b * INT4_BLOCK);
                let (x0, x1) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
                for k in 0..R {
                    let bytes = _mm_loadu_si128(rows[k].as_ptr().add(b * 16) as *const __m128i);
                    let idx = _mm512_cvtepu8_epi32(bytes);
                    let lo = _mm512_permutexvar_ps(idx, table);
                    let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(idx), table);
                    acc0[k] = _mm512_fmadd_ps(lo, x0, acc0[k]);
                    acc1[k] = _mm512_fmadd_ps(hi, x1, acc1[k]);
                }
            }
            for k in 0..R {
                let s = _mm512_set1_ps(scales[(r0 + k) * groups + g]);
                total[k] = _mm512_fmadd_ps(s, _mm512_add_ps(acc0[k], acc1[k]), total[k]);
            }
        }
        for k in 0..R {
            out[k] = _mm512_reduce_add_ps(total[k]);
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn matvec_avx512_impl(
        w: WeightsRef<'_>,
        cols: usize,
        rows: Range<usize>,
        x: &[f32],
        y: &mut [f32],
    ) {
        let single = |r| scalar::row_dot(w, cols, r, x);
        match w {
            // SAFETY (each closure): runs under this function's avx512f + avx2 + fma features.
            WeightsRef::F32(m) => {
                for_row_blocks(rows, y, |r, o| dots_avx512(m, cols, r, x, o), single)
            }
            WeightsRef::Bf16(m) => {
                for_row_blocks(rows, y, |r, o| dots_avx512(m, cols, r, x, o), single)
            }
            WeightsRef::Int8 { q, scales } => for_row_blocks(
                rows,
                y,
                |r, o| {
                    dots_avx512(q, cols, r, x, o);
                    for (k, o) in o.iter_mut().enumerate() {
                        *o *= scales[r + k];
                    }
                },
                single,
            ),
            WeightsRef::Int4 {
                packed,
                scales,
                group,
            } => for_row_blocks(
                rows,
                y,
                |r, o| dots_int4_avx512(packed, scales, group, cols, r, x, o),
                single,
            ),
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use std::arch::aarch64::*;

    const R: usize = 4;

    pub fn matvec(w: WeightsRef<'_>, cols: usize, rows: Range<usize>, x: &[f32], y: &mut [f32]) {
        // SAFETY: `Isa::checked` selected this kernel only after
        // `is_aarch64_feature_detected!("neon")`.
        unsafe { matvec_impl(w, cols, rows, x, y) }
    }

    trait Load4 {
        /// SAFETY (callers): `p..p + 8` elements must be readable; returns them as two f32x4.
        unsafe fn load8(p: *const Self) -> (float32x4_t, float32x4_t);
        fn to_f32(&self) -> f32;
    }

    impl Load4 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> (float32x4_t, float32x4_t) {
            (vld1q_f32(p), vld1q_f32(p.add(4)))
        }
        fn to_f32(&self) -> f32 {
            *self
        }
    }

    impl Load4 for u16 {
        #[inline(always)]
        unsafe fn load8(p: *const u16) -> (float32x4_t, float32x4_t) {
            let h = vld1q_u16(p);
            (
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
            )
        }
        fn to_f32(&self) -> f32 {
            bf16_to_f32(*self)
        }
    }

    impl Load4 for i8 {
        #[inline(always)]
        unsafe fn load8(p: *const i8) -> (float32x4_t, float32x4_t) {
            let h = vmovl_s8(vld1_s8(p));
            (
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(h))),
                vcvtq_f32_s32(vmovl_high_s16(h)),
            )
        }
        fn to_f32(&self) -> f32 {
            *self as f32
        }
    }

    #[target_feature(enable = "neon")]
    unsafe fn dots<T: Load4>(w: &[T], cols: usize, r0: usize, x: &[f32], out: &mut [f32]) {
        let rows: [&[T]; R] = std::array::from_fn(|k| &w[(r0 + k) * cols..(r0 + k + 1) * cols]);
        let mut acc0 = [vdupq_n_f32(0.0); R];
        let mut acc1 = [vdupq_n_f32(0.0); R];
        let mut c = 0;
        while c + 8 <= cols {
            // SAFETY: c + 8 <= cols = the length of x and of every row slice.
            let x0 = vld1q_f32(x.as_ptr().add(c));
            let x1 = vld1q_f32(x.as_ptr().add(c + 4));
            for k in 0..R {
                let (w0, w1) = T::load8(rows[k].as_ptr().add(c));
                acc0[k] = vfmaq_f32(acc0[k], w0, x0);
                acc1[k] = vfmaq_f32(acc1[k], w1, x1);
            }
            c += 8;
        }
        for k in 0..R {
            let mut s = vaddvq_f32(vaddq_f32(acc0[k], acc1[k]));
            for j in c..cols {
                s += rows[k][j].to_f32() * x[j];
            }
            out[k] = s;
        }
    }

    /// `(nibble - 8)` of 16 bytes as four f32x4 (columns `base..base + 16`).
    #[inline(always)]
    unsafe fn widen(n: int8x16_t) -> [float32x4_t; 4] {
        let lo = vmovl_s8(vget_low_s8(n));
        let hi = vmovl_high_s8(n);
        [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
            vcvtq_f32_s32(vmovl_high_s16(lo)),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
            vcvtq_f32_s32(vmovl_high_s16(hi)),
        ]
    }

    #[target_feature(enable = "neon")]
    unsafe fn dots_int4(
        packed: &[u8],
        scales: &[f32],
        group: usize,
        cols: usize,
        r0: usize,
        x: &[f32],
        out: &mut [f32],
    ) {
        let groups = cols / group;
        let row_bytes = cols / 2;
        let rows: [&[u8]; R] =
            std::array::from_fn(|k| &packed[(r0 + k) * row_bytes..(r0 + k + 1) * row_bytes]);
        let eight = vdupq_n_s8(8);
        let mask = vdupq_n_u8(0x0f);
        let mut total = [vdupq_n_f32(0.0); R];
        for g in 0..groups {
            let mut acc0 = [vdupq_n_f32(0.0); R];
            let mut acc1 = [vdupq_n_f32(0.0); R];
            for b in g * group / INT4_BLOCK..(g + 1) * group / INT4_BLOCK {
                // SAFETY: block b covers x[32b..32b + 32] and bytes 16b..16b + 16 of each row.
                let xp = x.as_ptr().add(b * INT4_BLOCK);
                let xs: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(xp.add(4 * i)));
                for k in 0..R {
                    let bytes = vld1q_u8(rows[k].as_ptr().add(b * 16));
                    let lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(bytes, mask)), eight);
                    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(bytes)), eight);
                    let (l, h) = (widen(lo), widen(hi));
                    acc0[k] = vfmaq_f32(acc0[k], l[0], xs[0]);
                    acc1[k] = vfmaq_f32(acc1[k], l[1], xs[1]);
                    acc0[k] = vfmaq_f32(acc0[k], l[2], xs[2]);
                    acc1[k] = vfmaq_f32(acc1[k], l[3], xs[3]);
                    acc0[k] = vfmaq_f32(acc0[k], h[0], xs[4]);
                    acc1[k] = vfmaq_f32(acc1[k], h[1], xs[5]);
                    acc0[k] = vfmaq_f32(acc0[k], h[2], xs[6]);
                    acc1[k] = vfmaq_f32(acc1[k], h[3], xs[7]);
                }
            }
            for k in 0..R {
                let s = scales[(r0 + k) * groups + g];
                total[k] = vfmaq_n_f32(total[k], vaddq_f32(acc0[k], acc1[k]), s);
            }
        }
        for k in 0..R {
            out[k] = vaddvq_f32(total[k]);
        }
    }

    #[target_feature(enable = "neon")]
    unsafe fn matvec_impl(
        w: WeightsRef<'_>,
        cols: usize,
        rows: Range<usize>,
        x: &[f32],
        y: &mut [f32],
    ) {
        let start = rows.start;
        let full = rows.len() / R * R;
        let (blocks, rest) = y.split_at_mut(full);
        for (i, o) in blocks.chunks_exact_mut(R).enumerate() {
            let r = start + i * R;
            match w {
                WeightsRef::F32(m) => dots(m, cols, r, x, o),
                WeightsRef::Bf16(m) => dots(m, cols, r, x, o),
                WeightsRef::Int8 { q, scales } => {
                    dots(q, cols, r, x, o);
                    for (k, o) in o.iter_mut().enumerate() {
                        *o *= scales[r + k];
                    }
                }
                WeightsRef::Int4 {
                    packed,
                    scales,
                    group,
                } => dots_int4(packed, scales, group, cols, r, x, o),
            }
        }
        for (i, o) in rest.iter_mut().enumerate() {
            *o = scalar::row_dot(w, cols, start + full + i, x);
        }
    }
}
