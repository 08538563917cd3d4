// 3x3 convolution of NCHW input as an implicit GEMM: C (Cout x B*Ho*Wo) = W (Cout x Cin*9)
// times the im2col matrix of the input, never built: a B tile element (k = ci*9 + tap,
// column = output pixel) is read straight from the input, with the zero padding, the stride
// and an optional nearest resize of the input fused into the read.
//
// Tiling as in gemm.wgsl: 64 output channels x 64 output pixels per workgroup, 16-wide K
// steps staged in workgroup memory, a 4 x 4 block per invocation. Each invocation loads the
// same output pixel column of B at every step, so its (batch, row, column) is decoded once.
//
// The weights may be stored as f16 (`precision.rs` makes that variant by changing the alias
// line below): their workgroup tile is f16 too, the products and sums are f32.
//
// Every load and store is guarded by explicit comparisons against the sizes, which the CPU
// checked against the buffers; workgroup indices are bounded by the constants. So this module
// may be compiled without bounds checks: the proof is at `products::product_module`; an index
// added here must keep it.

alias WA = f32;

struct Params {
    cin: u32,
    // Input as stored (source) and as convolved (after the optional resize).
    hs: u32,
    ws: u32,
    hu: u32,
    wu: u32,
    ho: u32,
    wo: u32,
    cout: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    // 1: nearest resize hs x ws -> hu x wu in the read.
    resize: u32,
    has_bias: u32,
    // 0 none, 1 per output channel, 2 per (batch, output channel).
    has_extra: u32,
    has_residual: u32,
    out_scale: f32,
    // Cin * 9, B * Ho * Wo.
    k: u32,
    n: u32,
    tiles_m: u32,
    tiles_n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// (Cout, Cin * 9) row-major: PyTorch's (O, I, 3, 3).
@group(0) @binding(2) var<storage, read> w: array<WA>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> extra: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// Rows of 64 padded to 65 so that the weight stores along k do not all hit one bank.
const TS: u32 = 65u;
var<workgroup> a_tile: array<WA, 1040>; // [k][co]
var<workgroup> b_tile: array<f32, 1040>; // [k][pixel]

@compute @workgroup_size(256)
fn conv3x3(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + wid.y * nwg.x;
    if group >= params.tiles_m * params.tiles_n {
        return;
    }
    let i0 = (group / params.tiles_n) * TM;
    let j0 = (group % params.tiles_n) * TN;
    let tx = lid % 16u;
    let ty = lid / 16u;

    var acc: array<array<f32, 4>, 4>;
    for (var r = 0u; r < 4u; r++) {
        for (var q = 0u; q < 4u; q++) {
            acc[r][q] = 0.0;
        }
    }

    let li = lid % 64u;
    let lk = lid / 64u;
    // This invocation's B column: output pixel j0 + li.
    let pixels = params.ho * params.wo;
    let col = j0 + li;
    let col_ok = col < params.n;
    let bat = col / pixels;
    let p = col % pixels;
    // Top-left input tap, shifted by the padding (signed: may be negative).
    let iy0 = i32((p / params.wo) * params.stride) - i32(params.pad_top);
    let ix0 = i32((p % params.wo) * params.stride) - i32(params.pad_left);
    let plane = params.hs * params.ws;
    let x_base = bat * params.cin * plane;
    // Weight rows are contiguous along k: neighbouring invocations load neighbouring k.
    let wk = lid % 16u;
    let wrow = lid / 16u;

    for (var k0 = 0u; k0 < params.k; k0 += TK) {
        for (var s = 0u; s < 4u; s++) {
            let kk = lk + 4u * s;
            let gk = k0 + kk;
            let row = i0 + wrow + 16u * s;
            var av = WA(0.0);
            if row < params.cout && k0 + wk < params.k {
                av = w[row * params.k + k0 + wk];
            }
            a_tile[wk * TS + wrow + 16u * s] = av;
            var bv = 0.0;
            if col_ok && gk < params.k {
                let ci = gk / 9u;
                let tap = gk % 9u;
                let iy = iy0 + i32(tap / 3u);
                let ix = ix0 + i32(tap % 3u);
                if iy >= 0 && ix >= 0 && u32(iy) < params.hu && u32(ix) < params.wu {
                    var sy = u32(iy);
                    var sx = u32(ix);
                    if params.resize != 0u {
                        sy = sy * params.hs / params.hu;
                        sx = sx * params.ws / params.wu;
                    }
                    bv = x[x_base + ci * plane + sy * params.ws + sx];
                }
            }
            b_tile[kk * TS + li] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = f32(a_tile[kk * TS + ty + 16u * r]);
                bv[r] = b_tile[kk * TS + tx + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var q = 0u; q < 4u; q++) {
                    acc[r][q] = fma(av[r], bv[q], acc[r][q]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var q = 0u; q < 4u; q++) {
        let j = j0 + tx + 16u * q;
        if j >= params.n {
            continue;
        }
        let jb = j / pixels;
        let jp = j % pixels;
        for (var r = 0u; r < 4u; r++) {
            let co = i0 + ty + 16u * r;
            if co >= params.cout {
                continue;
            }
            var v = acc[r][q];
            if params.has_bias != 0u {
                v += bias[co];
            }
            if params.has_extra == 1u {
                v += extra[co];
            } else if params.has_extra == 2u {
                v += extra[jb * params.cout + co];
            }
            let index = (jb * params.cout + co) * pixels + jp;
            if params.has_residual != 0u {
                v += residual[index];
            }
            y[index] = v * params.out_scale;
        }
    }
}
