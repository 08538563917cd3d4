//! The Winograd F(4x4, 3x3) transforms: `G g G^T` for the weights, `B^T d B` for each 6x6
//! input patch, `A^T m A` back to a 4x4 output tile. The input and output transforms work
//! on 8 channels at a time ([`Lane`]), which the compiler turns into one AVX instruction
//! each where the caller enables AVX2.

use crate::model::kernels::layout::LANES;

/// Output tile side (F(4x4, 3x3)).
pub(super) const TILE: usize = 4;
/// Input patch side: TILE + 3 - 1.
pub(super) const PATCH: usize = 6;
/// Winograd points per tile.
pub(super) const POINTS: usize = PATCH * PATCH;

/// One register's worth of channels: the unit the tile transforms work in.
pub(super) type Lane = [f32; LANES];

/// Winograd F(4x4, 3x3) weight transform matrix G (6x3), points 0, 1, -1, 2, -2, inf.
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `G g G^T` for one 3x3 kernel `g` (row-major), point `p = 6i + j` at index `p`. Computed
/// in f64, so the transform adds no rounding of its own.
pub(super) fn transform_kernel(g: &[f32]) -> [f32; POINTS] {
    let mut u = [0f32; POINTS];
    let mut gg = [[0f64; 3]; 6];
    for (row, grow) in gg.iter_mut().zip(&G) {
        for (kx, value) in row.iter_mut().enumerate() {
            *value = (0..3).map(|ky| grow[ky] * f64::from(g[ky * 3 + kx])).sum();
        }
    }
    for (i, gg_row) in gg.iter().enumerate() {
        for (j, g_row) in G.iter().enumerate() {
            let value: f64 = gg_row.iter().zip(g_row).map(|(a, b)| a * b).sum();
            let p = i * PATCH + j;
            u[p] = value as f32;
        }
    }
    u
}

/// The non-zero coefficients of point `p = 6i + j` of `G g G^T` as `(ky * 3 + kx,
/// G[i][ky] G[j][kx])`, and their count (196 of the 324 terms of the 36 points are
/// non-zero): the transform of weights made per call skips the zeros.
#[inline(always)]
pub(super) fn point_terms(p: usize) -> ([(usize, f32); 9], usize) {
    let (i, j) = (p / PATCH, p % PATCH);
    let mut terms = [(0usize, 0f32); 9];
    let mut count = 0;
    for (ky, gy) in G[i].iter().enumerate() {
        for (kx, gx) in G[j].iter().enumerate() {
            let coef = gy * gx;
            if coef != 0.0 {
                terms[count] = (ky * 3 + kx, coef as f32);
                count += 1;
            }
        }
    }
    (terms, count)
}

#[inline(always)]
pub(super) fn lane(s: &[f32]) -> Lane {
    let mut l = [0f32; LANES];
    l.copy_from_slice(&s[..LANES]);
    l
}

#[inline(always)]
pub(super) fn add(a: Lane, b: Lane) -> Lane {
    let mut r = a;
    for (x, y) in r.iter_mut().zip(b) {
        *x += y;
    }
    r
}

/// `B^T d` along one direction of the patch, 8 channels at a time.
#[inline(always)]
pub(super) fn input_1d(d: &[Lane; PATCH]) -> [Lane; PATCH] {
    let mut o = [[0f32; LANES]; PATCH];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        let a = d4 - 4.0 * d2;
        let b = d3 - 4.0 * d1;
        let c = d4 - d2;
        let e = 2.0 * (d3 - d1);
        o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        o[1][l] = a + b;
        o[2][l] = a - b;
        o[3][l] = c + e;
        o[4][l] = c - e;
        o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    o
}

/// `A^T m` along one direction, 8 channels at a time.
#[inline(always)]
pub(super) fn output_1d(m: &[Lane; PATCH]) -> [Lane; TILE] {
    let mut o = [[0f32; LANES]; TILE];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let s12 = m1 + m2;
        let d12 = m1 - m2;
        let s34 = m3 + m4;
        let d34 = m3 - m4;
        o[0][l] = m0 + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m5;
    }
    o
}
