//! Matrix products over weights kept as the GGUF file stores them (Q4_1, Q8_0, or floats),
//! for the CPU path: a decode step then reads ~98 MB of SmolLM2's weights, not the 540 MB
//! of their f32 copies.
//!
//! Each block of 32 weights is dequantized exactly as ggml's reference does (`q·d + m`,
//! so the values equal the float path's) and multiplied into 32 running sums, one per
//! position in the block, with fused multiply-adds; a row's 32 sums are added in a fixed
//! tree at the end. Every output is thus computed by the same operations in the same
//! order whatever the batch it sits in, the number of threads, or the SIMD width: a
//! request's answer does not depend on who it is batched with, and AVX-512 and AVX2
//! machines agree bit for bit. The widest instruction set the CPU has is chosen at run
//! time; the arithmetic is written once and compiled for each.
use rayon::prelude::*;
use std::sync::OnceLock;
use volt_formats::gguf::TensorType;

/// Weights per quantization block.
const BLOCK: usize = 32;

/// Rows stored together, block by block: block k of rows 4g..4g+4 lie side by side, so
/// that the kernels, which work on four rows at once, read one stream of memory.
const GROUP: usize = 4;

/// Where block `k` of `row` lies, in a matrix of `per_row` blocks per row.
#[inline(always)]
fn at(row: usize, k: usize, per_row: usize) -> usize {
    ((row / GROUP) * per_row + k) * GROUP + row % GROUP
}

/// A Q4_1 block with its scale and minimum widened to f32 and its 16 bytes of nibbles
/// (low: weights 0–15, high: 16–31), together so that one load stream reads it.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct BlockQ4_1 {
    d: f32,
    m: f32,
    q: [u8; 16],
}

/// A Q8_0 block: its scale widened to f32 and 32 signed bytes.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct BlockQ8_0 {
    d: f32,
    q: [i8; BLOCK],
}

/// A `[rows, cols]` weight matrix in one of the layouts the kernels read.
pub struct QMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of 32).
    pub cols: usize,
    data: Data,
}

/// Blocks in [`at`]'s order, the last group padded with zero rows.
enum Data {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
    F32(Vec<[f32; BLOCK]>),
}

/// `blocks`, in the file's order (row after row), put in [`at`]'s.
fn grouped<T: Copy + Default>(blocks: impl Iterator<Item = T>, rows: usize, per_row: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows.div_ceil(GROUP) * GROUP * per_row];
    for (i, b) in blocks.enumerate() {
        out[at(i / per_row, i % per_row, per_row)] = b;
    }
    out
}

impl QMatrix {
    /// The matrix whose GGUF data (whole blocks of `kind`) is `bytes`, or `None` for a
    /// type the kernels do not read or a width that is not whole blocks.
    pub fn from_gguf(kind: TensorType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(BLOCK) || rows == 0 {
            return None;
        }
        let half = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let per_row = cols / BLOCK;
        let blocks = rows * per_row;
        let data = match kind {
            TensorType::Q4_1 if bytes.len() == blocks * 20 => Data::Q4_1(grouped(
                bytes.chunks_exact(20).map(|b| BlockQ4_1 {
                    d: half(&b[..2]),
                    m: half(&b[2..4]),
                    q: b[4..].try_into().expect("16 bytes"),
                }),
                rows,
                per_row,
            )),
            TensorType::Q8_0 if bytes.len() == blocks * 34 => Data::Q8_0(grouped(
                bytes
                    .chunks_exact(34)
                    .map(|b| BlockQ8_0 { d: half(&b[..2]), q: std::array::from_fn(|j| b[2 + j] as i8) }),
                rows,
                per_row,
            )),
            TensorType::F32 | TensorType::F16 | TensorType::BF16 => {
                return Self::from_f32(&volt_formats::gguf::dequantize(kind, bytes), rows, cols)
            }
            _ => return None,
        };
        Some(QMatrix { rows, cols, data })
    }

    /// The `[rows, cols]` matrix of row-major `values`, or `None` unless `cols` is whole
    /// blocks and `values` holds exactly the matrix.
    pub fn from_f32(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(BLOCK) || rows == 0 || values.len() != rows * cols {
            return None;
        }
        let floats = values.chunks_exact(BLOCK).map(|c| <[f32; BLOCK]>::try_from(c).expect("a block"));
        Some(QMatrix { rows, cols, data: Data::F32(grouped(floats, rows, cols / BLOCK)) })
    }

    /// The matrices one above the other (`[Σ rows, cols]`), so that one product serves
    /// several that read the same input (Q, K and V; gate and up); `None` unless they
    /// share their width and layout, and all but the last fill their groups of rows.
    /// Each output row is computed as before.
    pub fn stack(parts: Vec<QMatrix>) -> Option<QMatrix> {
        let (cols, count) = (parts.first()?.cols, parts.len());
        if parts.iter().take(count - 1).any(|m| !m.rows.is_multiple_of(GROUP)) {
            return None;
        }
        let rows = parts.iter().map(|m| m.rows).sum();
        let mut parts = parts.into_iter();
        let mut data = parts.next()?.data;
        for m in parts {
            if m.cols != cols {
                return None;
            }
            match (&mut data, m.data) {
                (Data::Q4_1(v), Data::Q4_1(w)) => v.extend(w),
                (Data::Q8_0(v), Data::Q8_0(w)) => v.extend(w),
                (Data::F32(v), Data::F32(w)) => v.extend(w),
                _ => return None,
            }
        }
        Some(QMatrix { rows, cols, data })
    }

    /// Whether `other` has this matrix's width and storage type (so that they stack).
    pub fn same_layout(&self, other: &QMatrix) -> bool {
        self.cols == other.cols && std::mem::discriminant(&self.data) == std::mem::discriminant(&other.data)
    }

    /// Bytes the weights take (what a decode step reads).
    pub fn bytes(&self) -> usize {
        let blocks = self.rows * self.cols / BLOCK;
        blocks
            * match &self.data {
                Data::Q4_1(_) => std::mem::size_of::<BlockQ4_1>(),
                Data::Q8_0(_) => std::mem::size_of::<BlockQ8_0>(),
                Data::F32(_) => std::mem::size_of::<[f32; BLOCK]>(),
            }
    }

    /// Row `r`, dequantized (an embedding lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        let mut w = [0f32; BLOCK];
        let per_row = self.cols / BLOCK;
        for (k, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
            match &self.data {
                Data::Q4_1(v) => Q4_1(v).block(at(r, k, per_row), &mut w),
                Data::Q8_0(v) => Q8_0(v).block(at(r, k, per_row), &mut w),
                Data::F32(v) => Dense(v).block(at(r, k, per_row), &mut w),
            }
            chunk.copy_from_slice(&w);
        }
        out
    }

    /// `x · selfᵀ`: `x` is `[n, cols]` row-major, the result `[n, rows]`. Output rows
    /// are shared among `pool`'s threads.
    pub fn matmul(&self, x: &[f32], n: usize, pool: &rayon::ThreadPool) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul: x is not [n, cols]");
        // Computed transposed (`[rows, n]`), so that each thread writes one contiguous
        // run of output rows, then turned the right way round.
        let mut out_t = vec![0f32; self.rows * n];
        // Two runs of rows per thread: enough to even out, few enough that forking
        // costs little next to the work (a decode step makes ~120 of these calls).
        let chunk = (self.rows / (pool.current_num_threads() * 8)).clamp(8, 256) / 4 * 4;
        let level = simd_level();
        pool.install(|| {
            out_t.par_chunks_mut(chunk * n).enumerate().for_each(|(c, out)| {
                let first = c * chunk;
                let cols = self.cols;
                match &self.data {
                    Data::Q4_1(v) => dispatch(level, &Q4_1(v), cols, x, n, first, out),
                    Data::Q8_0(v) => dispatch(level, &Q8_0(v), cols, x, n, first, out),
                    Data::F32(v) => dispatch(level, &Dense(v), cols, x, n, first, out),
                }
            });
        });
        let mut out = vec![0f32; n * self.rows];
        for (o, column) in out_t.chunks_exact(n).enumerate() {
            for (i, &v) in column.iter().enumerate() {
                out[i * self.rows + o] = v;
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    Portable,
}

fn simd_level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Level::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// The name of the instruction set the kernels use on this CPU (for logs and benches).
pub fn simd_name() -> &'static str {
    match simd_level() {
        Level::Avx512 => "avx512",
        Level::Avx2 => "avx2",
        Level::Portable => "portable",
    }
}

/// Reads block `b` of a matrix as 32 floats.
trait Blocks: Sync {
    fn block(&self, b: usize, w: &mut [f32; BLOCK]);
    /// The same values straight into registers (weights 0–15, 16–31).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block512(&self, b: usize) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512);
    /// The same values in four 8-wide registers.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn block256(&self, b: usize) -> [std::arch::x86_64::__m256; 4];
    /// Where block `b` lies (for prefetching; it may be past the end).
    fn addr(&self, b: usize) -> *const i8;
}

struct Q4_1<'a>(&'a [BlockQ4_1]);

impl Blocks for Q4_1<'_> {
    #[inline(always)]
    fn addr(&self, b: usize) -> *const i8 {
        self.0.as_ptr().wrapping_add(b).cast()
    }
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        let blk = &self.0[b];
        let (d, m, q) = (blk.d, blk.m, &blk.q);
        for j in 0..16 {
            // Not fused: ggml's reference rounds the product, then adds.
            w[j] = f32::from(q[j] & 0x0F) * d + m;
            w[j + 16] = f32::from(q[j] >> 4) * d + m;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block512(&self, b: usize) -> (x86::__m512, x86::__m512) {
        use x86::*;
        let blk = self.0.get_unchecked(b);
        let v = _mm_loadu_si128(blk.q.as_ptr().cast());
        let mask = _mm_set1_epi8(0x0F);
        let (d, m) = (_mm512_set1_ps(blk.d), _mm512_set1_ps(blk.m));
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, mask)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), mask)));
        (_mm512_add_ps(_mm512_mul_ps(lo, d), m), _mm512_add_ps(_mm512_mul_ps(hi, d), m))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block256(&self, b: usize) -> [x86::__m256; 4] {
        use x86::*;
        let blk = self.0.get_unchecked(b);
        let v = _mm_loadu_si128(blk.q.as_ptr().cast());
        let mask = _mm_set1_epi8(0x0F);
        let (d, m) = (_mm256_set1_ps(blk.d), _mm256_set1_ps(blk.m));
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        [
            affine8(lo, d, m),
            affine8(_mm_srli_si128(lo, 8), d, m),
            affine8(hi, d, m),
            affine8(_mm_srli_si128(hi, 8), d, m),
        ]
    }
}

struct Q8_0<'a>(&'a [BlockQ8_0]);

impl Blocks for Q8_0<'_> {
    #[inline(always)]
    fn addr(&self, b: usize) -> *const i8 {
        self.0.as_ptr().wrapping_add(b).cast()
    }
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        let blk = &self.0[b];
        for (wj, &q) in w.iter_mut().zip(&blk.q) {
            *wj = f32::from(q) * blk.d;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block512(&self, b: usize) -> (x86::__m512, x86::__m512) {
        use x86::*;
        let blk = self.0.get_unchecked(b);
        let p = blk.q.as_ptr();
        let d = _mm512_set1_ps(blk.d);
        (scaled16(_mm_loadu_si128(p.cast()), d), scaled16(_mm_loadu_si128(p.add(16).cast()), d))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block256(&self, b: usize) -> [x86::__m256; 4] {
        use x86::*;
        let blk = self.0.get_unchecked(b);
        let p = blk.q.as_ptr();
        let d = _mm256_set1_ps(blk.d);
        let (a, c) = (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast()));
        [scaled8(a, d), scaled8(_mm_srli_si128(a, 8), d), scaled8(c, d), scaled8(_mm_srli_si128(c, 8), d)]
    }
}

struct Dense<'a>(&'a [[f32; BLOCK]]);

impl Blocks for Dense<'_> {
    #[inline(always)]
    fn addr(&self, b: usize) -> *const i8 {
        self.0.as_ptr().wrapping_add(b).cast()
    }
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        *w = self.0[b];
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block512(&self, b: usize) -> (x86::__m512, x86::__m512) {
        let p = self.0.get_unchecked(b).as_ptr();
        (x86::_mm512_loadu_ps(p), x86::_mm512_loadu_ps(p.add(16)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block256(&self, b: usize) -> [x86::__m256; 4] {
        let p = self.0.get_unchecked(b).as_ptr();
        std::array::from_fn(|q| x86::_mm256_loadu_ps(p.add(8 * q)))
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dispatch<B: Blocks>(level: Level, m: &B, cols: usize, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    match level {
        // SAFETY: the level was detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { x86::rows_avx512(m, cols, x, n, first, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { x86::rows_avx2(m, cols, x, n, first, out) },
        _ => rows(m, cols, x, n, first, out),
    }
}

/// Output rows `first..` (as many as `out` holds, `n` values each: one per input row).
/// Each weight row is dequantized once into `w`, then dotted with every input row.
#[inline(always)]
fn rows<B: Blocks>(m: &B, cols: usize, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    let per_row = cols / BLOCK;
    let mut w = vec![[0f32; BLOCK]; per_row];
    for (o, out_row) in out.chunks_exact_mut(n).enumerate() {
        let row = first + o;
        for (k, wb) in w.iter_mut().enumerate() {
            m.block(at(row, k, per_row), wb);
        }
        for (v, xr) in out_row.iter_mut().zip(x.chunks_exact(cols)) {
            *v = dot(&w, xr);
        }
    }
}

/// Σ w·x over whole blocks: 32 running sums (one per position in a block), fused
/// multiply-adds block after block, then the fixed tree.
#[inline(always)]
fn dot(w: &[[f32; BLOCK]], x: &[f32]) -> f32 {
    let mut s = [0f32; BLOCK];
    for (wb, xb) in w.iter().zip(x.chunks_exact(BLOCK)) {
        for j in 0..BLOCK {
            s[j] = wb[j].mul_add(xb[j], s[j]);
        }
    }
    tree_sum(&s)
}

/// The 32 sums added pairwise in a fixed order.
#[inline(always)]
fn tree_sum(s: &[f32; BLOCK]) -> f32 {
    let mut v = *s;
    let mut width = BLOCK / 2;
    while width > 0 {
        for j in 0..width {
            v[j] += v[j + width];
        }
        width /= 2;
    }
    v[0]
}

/// The same arithmetic as [`rows`] and [`dot`] in explicit AVX-512 and AVX2: lanes
/// 0–31 of a block's sums in two 16-wide or four 8-wide registers, several weight rows
/// at once so that the fused multiply-adds do not wait on each other, and the tree of
/// [`tree_sum`] as register halves added.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Blocks, BLOCK};
    pub(super) use std::arch::x86_64::*;

    /// Blocks ahead to prefetch in the one-row kernels.
    const PREFETCH: usize = 16;

    /// Dequantizes weight rows `first + o .. first + o + ROWS` (those that exist) into `w`.
    #[inline(always)]
    fn dequantize_rows<B: Blocks, const ROWS: usize>(
        m: &B,
        cols: usize,
        row: usize,
        count: usize,
        w: &mut [f32],
    ) {
        // Block by block, the rows inside: the order they lie in memory.
        for k in 0..cols / BLOCK {
            for i in 0..count.min(ROWS) {
                let wb: &mut [f32; BLOCK] =
                    (&mut w[i * cols + k * BLOCK..i * cols + (k + 1) * BLOCK]).try_into().expect("a block");
                m.block(super::at(row + i, k, cols / BLOCK), wb);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn rows_avx512<B: Blocks>(
        m: &B,
        cols: usize,
        x: &[f32],
        n: usize,
        first: usize,
        out: &mut [f32],
    ) {
        const ROWS: usize = 4;
        let total = out.len() / n;
        if n == 1 {
            // One input row: dequantize in registers, four weight rows at a time.
            let per_row = cols / BLOCK;
            for o in (0..total).step_by(ROWS) {
                let count = (total - o).min(ROWS);
                let mut lo = [_mm512_setzero_ps(); ROWS];
                let mut hi = [_mm512_setzero_ps(); ROWS];
                for k in 0..per_row {
                    // The group's blocks a few steps ahead: the loop waits on memory.
                    for i in [0, 2, 3] {
                        _mm_prefetch::<_MM_HINT_T0>(m.addr(super::at(first + o + i, k + PREFETCH, per_row)));
                    }
                    let xl = _mm512_loadu_ps(x.as_ptr().add(k * BLOCK));
                    let xh = _mm512_loadu_ps(x.as_ptr().add(k * BLOCK + 16));
                    for i in 0..ROWS {
                        // Past the last row: a padding row of the group (its sums are not kept).
                        let (wl, wh) = m.block512(super::at(first + o + i, k, per_row));
                        lo[i] = _mm512_fmadd_ps(wl, xl, lo[i]);
                        hi[i] = _mm512_fmadd_ps(wh, xh, hi[i]);
                    }
                }
                for i in 0..count {
                    out[o + i] = tree16(lo[i], hi[i]);
                }
            }
            return;
        }
        let mut w = vec![0f32; ROWS * cols];
        for o in (0..total).step_by(ROWS) {
            let count = (total - o).min(ROWS);
            dequantize_rows::<B, ROWS>(m, cols, first + o, count, &mut w);
            for (r, xr) in x.chunks_exact(cols).enumerate() {
                let mut lo = [_mm512_setzero_ps(); ROWS];
                let mut hi = [_mm512_setzero_ps(); ROWS];
                for k in (0..cols).step_by(BLOCK) {
                    let xl = _mm512_loadu_ps(xr.as_ptr().add(k));
                    let xh = _mm512_loadu_ps(xr.as_ptr().add(k + 16));
                    for i in 0..ROWS {
                        let wp = w.as_ptr().add(i * cols + k);
                        lo[i] = _mm512_fmadd_ps(_mm512_loadu_ps(wp), xl, lo[i]);
                        hi[i] = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(16)), xh, hi[i]);
                    }
                }
                for i in 0..count {
                    out[(o + i) * n + r] = tree16(lo[i], hi[i]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2<B: Blocks>(
        m: &B,
        cols: usize,
        x: &[f32],
        n: usize,
        first: usize,
        out: &mut [f32],
    ) {
        const ROWS: usize = 2;
        let total = out.len() / n;
        if n == 1 {
            let per_row = cols / BLOCK;
            for o in (0..total).step_by(ROWS) {
                let count = (total - o).min(ROWS);
                let mut s = [[_mm256_setzero_ps(); 4]; ROWS];
                for k in 0..per_row {
                    for i in 0..ROWS {
                        _mm_prefetch::<_MM_HINT_T0>(m.addr(super::at(first + o + i, k + PREFETCH, per_row)));
                    }
                    let xs: [__m256; 4] =
                        std::array::from_fn(|q| _mm256_loadu_ps(x.as_ptr().add(k * BLOCK + 8 * q)));
                    for (i, si) in s.iter_mut().enumerate() {
                        let w = m.block256(super::at(first + o + i, k, per_row));
                        for q in 0..4 {
                            si[q] = _mm256_fmadd_ps(w[q], xs[q], si[q]);
                        }
                    }
                }
                for (i, si) in s.iter().enumerate().take(count) {
                    out[o + i] = tree32x8(si);
                }
            }
            return;
        }
        let mut w = vec![0f32; ROWS * cols];
        for o in (0..total).step_by(ROWS) {
            let count = (total - o).min(ROWS);
            dequantize_rows::<B, ROWS>(m, cols, first + o, count, &mut w);
            for (r, xr) in x.chunks_exact(cols).enumerate() {
                let mut s = [[_mm256_setzero_ps(); 4]; ROWS];
                for k in (0..cols).step_by(BLOCK) {
                    let xs: [__m256; 4] =
                        std::array::from_fn(|q| _mm256_loadu_ps(xr.as_ptr().add(k + 8 * q)));
                    for (i, si) in s.iter_mut().enumerate() {
                        let wp = w.as_ptr().add(i * cols + k);
                        for q in 0..4 {
                            si[q] = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(8 * q)), xs[q], si[q]);
                        }
                    }
                }
                for (i, si) in s.iter().enumerate().take(count) {
                    out[(o + i) * n + r] = tree32x8(si);
                }
            }
        }
    }

    /// `q·d + m` (not fused) of the low 8 unsigned bytes of `q`.
    #[inline(always)]
    pub(super) unsafe fn affine8(q: __m128i, d: __m256, m: __m256) -> __m256 {
        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), d), m)
    }

    /// `q·d` of the 16 signed bytes of `q`.
    #[inline(always)]
    pub(super) unsafe fn scaled16(q: __m128i, d: __m512) -> __m512 {
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d)
    }

    /// `q·d` of the low 8 signed bytes of `q`.
    #[inline(always)]
    pub(super) unsafe fn scaled8(q: __m128i, d: __m256) -> __m256 {
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d)
    }

    /// The tree over 32 lanes held as two 16-wide halves: j + 16, j + 8, then [`tree8`].
    #[inline(always)]
    unsafe fn tree16(lo: __m512, hi: __m512) -> f32 {
        let v = _mm512_add_ps(lo, hi);
        let a = _mm512_castps512_ps256(v);
        let b = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        tree8(_mm256_add_ps(a, b))
    }

    /// The tree over 32 lanes held as four 8-wide quarters: j + 16 (quarters 0+2, 1+3),
    /// j + 8, then [`tree8`].
    #[inline(always)]
    unsafe fn tree32x8(s: &[__m256; 4]) -> f32 {
        tree8(_mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3])))
    }

    /// The last three levels of the tree over 8 lanes: j + 4, j + 2, j + 1.
    #[inline(always)]
    unsafe fn tree8(u: __m256) -> f32 {
        let t = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool")
    }

    /// A Q4_1 block's bytes from a scale, a minimum and 32 nibbles.
    fn q4_1_block(d: f32, m: f32, q: &[u8; 32]) -> Vec<u8> {
        let mut b = half::f16::from_f32(d).to_le_bytes().to_vec();
        b.extend(half::f16::from_f32(m).to_le_bytes());
        b.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        b
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn products_equal_the_reference_dequantization_times_x() {
        let (rows, cols, n) = (37, 96, 5);
        let mut seed = 1;
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 32 {
            let q: [u8; 32] = std::array::from_fn(|_| ((lcg(&mut seed) + 0.5) * 16.0) as u8 & 15);
            bytes.extend(q4_1_block(lcg(&mut seed) * 0.1, lcg(&mut seed), &q));
        }
        let m = QMatrix::from_gguf(TensorType::Q4_1, &bytes, rows, cols).expect("q4_1");
        let dense = volt_formats::gguf::dequantize(TensorType::Q4_1, &bytes);
        let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
        let y = m.matmul(&x, n, &pool(2));
        for i in 0..n {
            for o in 0..rows {
                let want: f64 =
                    (0..cols).map(|c| f64::from(dense[o * cols + c]) * f64::from(x[i * cols + c])).sum();
                let got = f64::from(y[i * rows + o]);
                assert!((got - want).abs() < 1e-4, "row {i} output {o}: {got} vs {want}");
            }
        }
        // Rows read back as the reference dequantizes them.
        assert_eq!(m.row(3), dense[3 * cols..4 * cols].to_vec());
    }

    #[test]
    fn a_row_gives_the_same_bits_in_any_batch_and_with_any_threads() {
        let (rows, cols) = (300, 64);
        let mut seed = 9;
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 32 {
            bytes.extend(half::f16::from_f32(lcg(&mut seed)).to_le_bytes());
            bytes.extend((0..32).map(|_| (lcg(&mut seed) * 250.0) as i8 as u8));
        }
        let m = QMatrix::from_gguf(TensorType::Q8_0, &bytes, rows, cols).expect("q8_0");
        let x: Vec<f32> = (0..16 * cols).map(|_| lcg(&mut seed)).collect();
        let batched = m.matmul(&x, 16, &pool(2));
        for i in [0, 7, 15] {
            let alone = m.matmul(&x[i * cols..(i + 1) * cols], 1, &pool(1));
            assert_eq!(alone, batched[i * rows..(i + 1) * rows].to_vec(), "row {i}");
        }
        // Every instruction set this CPU has gives the portable code's bits, for a
        // count of rows that is not a multiple of the kernels' groups too.
        let Data::Q8_0(blocks) = &m.data else { unreachable!("built as Q8_0") };
        agree(&Q8_0(blocks), cols, rows, &x);
        let mut nibbles = Vec::new();
        for _ in 0..rows * cols / 32 {
            let q: [u8; 32] = std::array::from_fn(|_| ((lcg(&mut seed) + 0.5) * 16.0) as u8 & 15);
            nibbles.extend(q4_1_block(lcg(&mut seed) * 0.1, lcg(&mut seed), &q));
        }
        let m = QMatrix::from_gguf(TensorType::Q4_1, &nibbles, rows, cols).expect("q4_1");
        let Data::Q4_1(blocks) = &m.data else { unreachable!("built as Q4_1") };
        agree(&Q4_1(blocks), cols, rows, &x);
    }

    /// Every instruction set this CPU has gives the portable code's bits, for one input
    /// row and several, and for a count of rows that is not a multiple of the kernels'
    /// groups.
    fn agree<B: Blocks>(q: &B, cols: usize, rows: usize, x: &[f32]) {
        for n in [1, 3] {
            for (first, count) in [(0, rows), (5, 7)] {
                let mut portable = vec![0f32; count * n];
                super::rows(q, cols, &x[..n * cols], n, first, &mut portable);
                for level in [Level::Avx512, Level::Avx2] {
                    if level_available(level) {
                        let mut fast = vec![0f32; count * n];
                        dispatch(level, q, cols, &x[..n * cols], n, first, &mut fast);
                        assert_eq!(portable, fast, "{level:?} disagrees with the portable kernel (n = {n})");
                    }
                }
            }
        }
    }

    fn level_available(level: Level) -> bool {
        match level {
            Level::Avx512 => simd_level() == Level::Avx512,
            Level::Avx2 => matches!(simd_level(), Level::Avx512 | Level::Avx2),
            Level::Portable => true,
        }
    }

    #[test]
    fn stacked_matrices_give_each_part_the_same_bits() {
        let mut seed = 5;
        let mut part = |rows: usize| {
            let mut bytes = Vec::new();
            for _ in 0..rows * 64 / 32 {
                let q: [u8; 32] = std::array::from_fn(|_| ((lcg(&mut seed) + 0.5) * 16.0) as u8 & 15);
                bytes.extend(q4_1_block(lcg(&mut seed), lcg(&mut seed), &q));
            }
            QMatrix::from_gguf(TensorType::Q4_1, &bytes, rows, 64).expect("q4_1")
        };
        let (a, b) = (part(12), part(20));
        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let (ya, yb) = (a.matmul(&x, 2, &pool(2)), b.matmul(&x, 2, &pool(2)));
        let both = QMatrix::stack(vec![a, b]).expect("same layout");
        assert_eq!((both.rows, both.cols), (32, 64));
        let y = both.matmul(&x, 2, &pool(2));
        for i in 0..2 {
            assert_eq!(y[i * 32..i * 32 + 12], ya[i * 12..(i + 1) * 12]);
            assert_eq!(y[i * 32 + 12..(i + 1) * 32], yb[i * 20..(i + 1) * 20]);
        }
        let f = QMatrix::from_gguf(TensorType::F32, &[0; 256], 1, 64).expect("f32");
        assert!(QMatrix::stack(vec![both, f]).is_none(), "layouts differ");
    }

    #[test]
    fn types_and_shapes_the_kernels_cannot_read_are_refused() {
        assert!(QMatrix::from_gguf(TensorType::Q4_1, &[0; 20], 1, 31).is_none());
        assert!(QMatrix::from_gguf(TensorType::Q4_1, &[0; 19], 1, 32).is_none());
        assert!(QMatrix::from_gguf(TensorType::Other(12, "Q4_K"), &[0; 144], 1, 256).is_none());
        let f = QMatrix::from_gguf(TensorType::F32, &[0; 128], 1, 32).expect("f32");
        assert_eq!((f.rows, f.cols, f.bytes()), (1, 32, 128));
    }
}
