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

/// A `[rows, cols]` weight matrix in one of the layouts the kernels read.
pub struct QMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of 32).
    pub cols: usize,
    data: Data,
}

enum Data {
    /// Per block: the scale, the minimum, and 16 bytes of nibbles (low: weights 0–15,
    /// high: 16–31).
    Q4_1 { scales: Vec<f32>, mins: Vec<f32>, nibbles: Vec<u8> },
    /// Per block: the scale and 32 signed bytes.
    Q8_0 { scales: Vec<f32>, quants: Vec<i8> },
    /// Plain floats, row-major.
    F32(Vec<f32>),
}

impl QMatrix {
    /// The matrix whose GGUF data (whole blocks of `kind`) is `bytes`, or `None` for a
    /// type the kernels do not read or a width that is not whole blocks.
    pub fn from_gguf(kind: TensorType, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if cols % BLOCK != 0 || rows == 0 {
            return None;
        }
        let half = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let blocks = rows * cols / BLOCK;
        let data = match kind {
            TensorType::Q4_1 if bytes.len() == blocks * 20 => {
                let mut scales = Vec::with_capacity(blocks);
                let mut mins = Vec::with_capacity(blocks);
                let mut nibbles = Vec::with_capacity(blocks * 16);
                for b in bytes.chunks_exact(20) {
                    scales.push(half(&b[..2]));
                    mins.push(half(&b[2..4]));
                    nibbles.extend_from_slice(&b[4..]);
                }
                Data::Q4_1 { scales, mins, nibbles }
            }
            TensorType::Q8_0 if bytes.len() == blocks * 34 => {
                let mut scales = Vec::with_capacity(blocks);
                let mut quants = Vec::with_capacity(blocks * BLOCK);
                for b in bytes.chunks_exact(34) {
                    scales.push(half(&b[..2]));
                    quants.extend(b[2..].iter().map(|&q| q as i8));
                }
                Data::Q8_0 { scales, quants }
            }
            TensorType::F32 | TensorType::F16 | TensorType::BF16 => {
                let values = volt_formats::gguf::dequantize(kind, bytes);
                if values.len() != rows * cols {
                    return None;
                }
                Data::F32(values)
            }
            _ => return None,
        };
        Some(QMatrix { rows, cols, data })
    }

    /// Bytes the weights take (what a decode step reads).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::Q4_1 { scales, mins, nibbles } => (scales.len() + mins.len()) * 4 + nibbles.len(),
            Data::Q8_0 { scales, quants } => scales.len() * 4 + quants.len(),
            Data::F32(v) => v.len() * 4,
        }
    }

    /// Row `r`, dequantized (an embedding lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        let mut w = [0f32; BLOCK];
        let per_row = self.cols / BLOCK;
        for (k, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
            self.dequantize_block(r * per_row + k, &mut w);
            chunk.copy_from_slice(&w);
        }
        out
    }

    fn dequantize_block(&self, block: usize, w: &mut [f32; BLOCK]) {
        match &self.data {
            Data::Q4_1 { scales, mins, nibbles } => Q4_1 { scales, mins, nibbles }.block(block, w),
            Data::Q8_0 { scales, quants } => Q8_0 { scales, quants }.block(block, w),
            Data::F32(v) => Dense(v).block(block, w),
        }
    }

    /// `x · selfᵀ`: `x` is `[n, cols]` row-major, the result `[n, rows]`. Output rows
    /// are shared among `pool`'s threads.
    pub fn matmul(&self, x: &[f32], n: usize, pool: &rayon::ThreadPool) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul: x is not [n, cols]");
        // Computed transposed (`[rows, n]`), so that each thread writes one contiguous
        // run of output rows, then turned the right way round.
        let mut out_t = vec![0f32; self.rows * n];
        let chunk = (self.rows / (pool.current_num_threads() * 8)).clamp(8, 256) / 4 * 4;
        let level = simd_level();
        pool.install(|| {
            out_t.par_chunks_mut(chunk * n).enumerate().for_each(|(c, out)| {
                let first = c * chunk;
                let cols = self.cols;
                match &self.data {
                    Data::Q4_1 { scales, mins, nibbles } => {
                        dispatch(level, &Q4_1 { scales, mins, nibbles }, cols, x, n, first, out)
                    }
                    Data::Q8_0 { scales, quants } => {
                        dispatch(level, &Q8_0 { scales, quants }, cols, x, n, first, out)
                    }
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
}

struct Q4_1<'a> {
    scales: &'a [f32],
    mins: &'a [f32],
    nibbles: &'a [u8],
}

impl Blocks for Q4_1<'_> {
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        let (d, m) = (self.scales[b], self.mins[b]);
        let q: &[u8; 16] = self.nibbles[b * 16..b * 16 + 16].try_into().expect("16 nibble bytes");
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
        let v = _mm_loadu_si128(self.nibbles.as_ptr().add(b * 16).cast());
        let mask = _mm_set1_epi8(0x0F);
        let (d, m) = (_mm512_set1_ps(self.scales[b]), _mm512_set1_ps(self.mins[b]));
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, mask)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), mask)));
        (_mm512_add_ps(_mm512_mul_ps(lo, d), m), _mm512_add_ps(_mm512_mul_ps(hi, d), m))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block256(&self, b: usize) -> [x86::__m256; 4] {
        use x86::*;
        let v = _mm_loadu_si128(self.nibbles.as_ptr().add(b * 16).cast());
        let mask = _mm_set1_epi8(0x0F);
        let (d, m) = (_mm256_set1_ps(self.scales[b]), _mm256_set1_ps(self.mins[b]));
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

struct Q8_0<'a> {
    scales: &'a [f32],
    quants: &'a [i8],
}

impl Blocks for Q8_0<'_> {
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        let d = self.scales[b];
        let q: &[i8; BLOCK] = self.quants[b * BLOCK..b * BLOCK + BLOCK].try_into().expect("32 quants");
        for j in 0..BLOCK {
            w[j] = f32::from(q[j]) * d;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block512(&self, b: usize) -> (x86::__m512, x86::__m512) {
        use x86::*;
        let p = self.quants.as_ptr().add(b * BLOCK);
        let d = _mm512_set1_ps(self.scales[b]);
        (scaled16(_mm_loadu_si128(p.cast()), d), scaled16(_mm_loadu_si128(p.add(16).cast()), d))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block256(&self, b: usize) -> [x86::__m256; 4] {
        use x86::*;
        let p = self.quants.as_ptr().add(b * BLOCK);
        let d = _mm256_set1_ps(self.scales[b]);
        let (a, c) = (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast()));
        [scaled8(a, d), scaled8(_mm_srli_si128(a, 8), d), scaled8(c, d), scaled8(_mm_srli_si128(c, 8), d)]
    }
}

struct Dense<'a>(&'a [f32]);

impl Blocks for Dense<'_> {
    #[inline(always)]
    fn block(&self, b: usize, w: &mut [f32; BLOCK]) {
        w.copy_from_slice(&self.0[b * BLOCK..b * BLOCK + BLOCK]);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block512(&self, b: usize) -> (x86::__m512, x86::__m512) {
        let p = self.0.as_ptr().add(b * BLOCK);
        (x86::_mm512_loadu_ps(p), x86::_mm512_loadu_ps(p.add(16)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block256(&self, b: usize) -> [x86::__m256; 4] {
        let p = self.0.as_ptr().add(b * BLOCK);
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
            m.block(row * per_row + k, wb);
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

    /// Dequantizes weight rows `first + o .. first + o + ROWS` (those that exist) into `w`.
    #[inline(always)]
    fn dequantize_rows<B: Blocks, const ROWS: usize>(
        m: &B,
        cols: usize,
        row: usize,
        count: usize,
        w: &mut [f32],
    ) {
        let per_row = cols / BLOCK;
        for i in 0..count.min(ROWS) {
            for (k, wb) in w[i * cols..(i + 1) * cols].chunks_exact_mut(BLOCK).enumerate() {
                let wb: &mut [f32; BLOCK] = wb.try_into().expect("a block");
                m.block((row + i) * per_row + k, wb);
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
                    let xl = _mm512_loadu_ps(x.as_ptr().add(k * BLOCK));
                    let xh = _mm512_loadu_ps(x.as_ptr().add(k * BLOCK + 16));
                    for i in 0..ROWS {
                        // Past the last row, repeat it (its sums are not kept).
                        let (wl, wh) = m.block512((first + o + i.min(count - 1)) * per_row + k);
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
                    let xs: [__m256; 4] =
                        std::array::from_fn(|q| _mm256_loadu_ps(x.as_ptr().add(k * BLOCK + 8 * q)));
                    for (i, si) in s.iter_mut().enumerate() {
                        let w = m.block256((first + o + i.min(count - 1)) * per_row + k);
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
        let Data::Q8_0 { scales, quants } = &m.data else { unreachable!("built as Q8_0") };
        agree(&Q8_0 { scales, quants }, cols, rows, &x);
        let mut nibbles = Vec::new();
        for _ in 0..rows * cols / 32 {
            let q: [u8; 32] = std::array::from_fn(|_| ((lcg(&mut seed) + 0.5) * 16.0) as u8 & 15);
            nibbles.extend(q4_1_block(lcg(&mut seed) * 0.1, lcg(&mut seed), &q));
        }
        let m = QMatrix::from_gguf(TensorType::Q4_1, &nibbles, rows, cols).expect("q4_1");
        let Data::Q4_1 { scales, mins, nibbles } = &m.data else { unreachable!("built as Q4_1") };
        agree(&Q4_1 { scales, mins, nibbles }, cols, rows, &x);
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
    fn types_and_shapes_the_kernels_cannot_read_are_refused() {
        assert!(QMatrix::from_gguf(TensorType::Q4_1, &[0; 20], 1, 31).is_none());
        assert!(QMatrix::from_gguf(TensorType::Q4_1, &[0; 19], 1, 32).is_none());
        assert!(QMatrix::from_gguf(TensorType::Other(12, "Q4_K"), &[0; 144], 1, 256).is_none());
        let f = QMatrix::from_gguf(TensorType::F32, &[0; 128], 1, 32).expect("f32");
        assert_eq!((f.rows, f.cols, f.bytes()), (1, 32, 128));
    }
}
