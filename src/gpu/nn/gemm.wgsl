// Batched strided matrix product C = A B (+ bias) (+ residual).
//
// A workgroup computes a 64 x 64 tile of C: for each 16-wide step of K it stages A's 64 x 16
// and B's 16 x 64 block in workgroup memory (zeros beyond m, n, k), then each of its 256
// invocations accumulates a 4 x 4 block (rows ty + 16 r, columns tx + 16 c, so the reads of
// workgroup memory are spread over the banks). Elements are read through (offset, batch,
// row, column) strides, so transposed and NCHW views need no copy.
//
// Either operand may be a weight matrix stored as f16 (`precision.rs` makes that variant by
// changing its alias line below): its workgroup tile is f16 too (the values are f16 already,
// nothing is lost), the products and sums are f32.
//
// Every global index is offset + b*bs + i*rs + j*cs with b, i, j below the sizes (compared
// explicitly before each load and store) and the last such element checked on the CPU; every
// workgroup index is bounded by the constants. So this module may be compiled without bounds
// checks: the proof is at `products::product_module`; an index added here must keep it.

alias WA = f32;
alias WB = f32;

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_bs: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_bs: u32,
    b_rs: u32,
    b_cs: u32,
    c_bs: u32,
    c_rs: u32,
    c_cs: u32,
    // 0 none, 1 row (v[i]), 2 column (v[j]).
    bias_mode: u32,
    r_off: u32,
    r_bs: u32,
    r_rs: u32,
    r_cs: u32,
    has_residual: u32,
    tiles_m: u32,
    tiles_n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<WA>;
@group(0) @binding(2) var<storage, read> b: array<WB>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// Rows of 64 padded to 65 so that stores along k do not all hit one bank.
const TS: u32 = 65u;
var<workgroup> a_tile: array<WA, 1040>; // [k][i], TK x TS
var<workgroup> b_tile: array<WB, 1040>; // [k][j], TK x TS

@compute @workgroup_size(256)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tiles = params.tiles_m * params.tiles_n;
    let group = wid.x + wid.y * nwg.x;
    if group >= tiles * params.batch {
        return;
    }
    let bat = group / tiles;
    let t = group % tiles;
    let i0 = (t / params.tiles_n) * TM;
    let j0 = (t % params.tiles_n) * TN;
    let tx = lid % 16u;
    let ty = lid / 16u;

    let a_base = params.a_off + bat * params.a_bs;
    let b_base = params.b_off + bat * params.b_bs;

    var acc: array<array<f32, 4>, 4>;
    for (var r = 0u; r < 4u; r++) {
        for (var q = 0u; q < 4u; q++) {
            acc[r][q] = 0.0;
        }
    }

    // Loader roles, chosen so that neighbouring invocations read neighbouring addresses:
    // along i (or j) when that is the contiguous direction, else along k.
    let a_k_fast = params.a_cs == 1u;
    let b_k_fast = params.b_rs == 1u && params.b_cs != 1u;
    for (var k0 = 0u; k0 < params.k; k0 += TK) {
        for (var s = 0u; s < 4u; s++) {
            var ai = lid % 64u;
            var ak = lid / 64u + 4u * s;
            if a_k_fast {
                ai = lid / 16u + 16u * s;
                ak = lid % 16u;
            }
            let gi = i0 + ai;
            let gka = k0 + ak;
            var av = WA(0.0);
            if gi < params.m && gka < params.k {
                av = a[a_base + gi * params.a_rs + gka * params.a_cs];
            }
            a_tile[ak * TS + ai] = av;
            var bj = lid % 64u;
            var bk = lid / 64u + 4u * s;
            if b_k_fast {
                bj = lid / 16u + 16u * s;
                bk = lid % 16u;
            }
            let gj = j0 + bj;
            let gkb = k0 + bk;
            var bv = WB(0.0);
            if gj < params.n && gkb < params.k {
                bv = b[b_base + gkb * params.b_rs + gj * params.b_cs];
            }
            b_tile[bk * TS + bj] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = f32(a_tile[kk * TS + ty + 16u * r]);
                bv[r] = f32(b_tile[kk * TS + tx + 16u * r]);
            }
            for (var r = 0u; r < 4u; r++) {
                for (var q = 0u; q < 4u; q++) {
                    acc[r][q] = fma(av[r], bv[q], acc[r][q]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < 4u; r++) {
        let i = i0 + ty + 16u * r;
        if i >= params.m {
            continue;
        }
        for (var q = 0u; q < 4u; q++) {
            let j = j0 + tx + 16u * q;
            if j >= params.n {
                continue;
            }
            var v = acc[r][q];
            if params.bias_mode == 1u {
                v += bias[i];
            } else if params.bias_mode == 2u {
                v += bias[j];
            }
            if params.has_residual != 0u {
                v += residual[params.r_off + bat * params.r_bs + i * params.r_rs + j * params.r_cs];
            }
            c[bat * params.c_bs + i * params.c_rs + j * params.c_cs] = v;
        }
    }
}
