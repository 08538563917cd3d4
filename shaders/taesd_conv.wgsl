// One 3x3 convolution (stride 1, padding 1) of the TAESD decoder, with what follows it fused:
// nearest x2 upsampling of the input (in the tile loader), bias, residual add, ReLU, and for
// the last convolution the image mapping (diffusers' `x * 2 - 1` floats and/or RGBA8).
//
// Activations are "quad-planar": for each group of 4 channels a plane of vec4, rows of
// `width` pixels, so one load brings 4 input channels of a pixel and a workgroup's tile of a
// plane is contiguous in memory. Weights are one mat4x4 per (input quad, tap, output quad),
// columns = the 4 input channels, so `W * x` adds one tap of 4 inputs to 4 outputs.
//
// A workgroup computes TILE_W x TILE_H pixels x 8 * COUT_GROUPS output channels. For each
// input quad it stages the (TILE_W + 2) x (TILE_H + 2) input tile and that quad's weights in
// workgroup memory, then every invocation accumulates 8 consecutive pixels of one row x 8
// output channels (the 10 inputs of a tap row serve all 8 pixels and all 3 kx).
//
// A convolution may compute only a band of its output rows (row bands with a halo keep the
// full-resolution activations within storage-binding limits); rows are then "global" (image
// rows, for the zero padding) or "local" (buffer rows, global minus the buffer's first row).

struct Params {
    // Input activation: width, global row of buffer row 0, rows held, channel quads.
    in_w: u32,
    in_row0: u32,
    in_rows: u32,
    in_quads: u32,
    // Output: width, full image height (padding), global row of the first row computed
    // (= buffer row 0), rows computed.
    out_w: u32,
    out_h: u32,
    out_row0: u32,
    out_rows: u32,
    // Input upsampling factor (1 or 2); FLAG_* bits.
    up: u32,
    flags: u32,
    // Residual input (same width and quads as the output): global row of its row 0, rows.
    skip_row0: u32,
    skip_rows: u32,
    // Output channel quads (padded), real output channels, u32 per row of the RGBA buffer.
    out_quads: u32,
    out_channels: u32,
    rgba_stride: u32,
    _pad: u32,
}

const FLAG_RELU: u32 = 1u;
const FLAG_SKIP: u32 = 2u;
const FLAG_IMAGE_F32: u32 = 4u;
const FLAG_IMAGE_RGBA: u32 = 8u;

// Groups of 8 output channels per workgroup, and output rows per workgroup.
override COUT_GROUPS: u32 = 8u;
override TILE_H: u32 = 8u;

// Pixels per invocation (consecutive in a row), invocations across a row.
const PIXELS: u32 = 8u;
const X_GROUPS: u32 = 4u;
const TILE_W: u32 = 32u; // PIXELS * X_GROUPS
const TILE_STRIDE: u32 = 34u; // TILE_W + 2

override THREADS: u32 = COUT_GROUPS * X_GROUPS * TILE_H;
override TILE_LEN: u32 = TILE_STRIDE * (TILE_H + 2u);
// Output quads per workgroup.
override CQ: u32 = 2u * COUT_GROUPS;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weights: array<mat4x4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
// conv_act only.
@group(0) @binding(4) var<storage, read> skip: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> output: array<vec4<f32>>;
// conv_image only: NCHW float planes of the whole image, and RGBA8 rows.
@group(0) @binding(6) var<storage, read_write> image: array<f32>;
@group(0) @binding(7) var<storage, read_write> rgba: array<u32>;

var<workgroup> tile: array<vec4<f32>, TILE_LEN>;
var<workgroup> wtile: array<mat4x4<f32>, 9u * CQ>;

// Per invocation: 8 pixels x 2 output quads.
var<private> acc: array<vec4<f32>, 16>;

struct Place {
    // Which output quads (first of 2), x of the first pixel, local output row.
    quad: u32,
    x: u32,
    row: u32,
}

fn place(wg: vec3<u32>, li: u32) -> Place {
    let cg = li % COUT_GROUPS;
    let rest = li / COUT_GROUPS;
    let xg = rest % X_GROUPS;
    let row = rest / X_GROUPS;
    return Place(wg.z * CQ + cg * 2u, wg.x * TILE_W + xg * PIXELS, wg.y * TILE_H + row);
}

// Accumulates the convolution for this invocation's pixels into `acc`.
fn convolve(wg: vec3<u32>, li: u32) {
    let cg = li % COUT_GROUPS;
    let rest = li / COUT_GROUPS;
    let xg = rest % X_GROUPS;
    let row = rest / X_GROUPS;
    let x0 = i32(wg.x * TILE_W) - 1;
    // Global output-space row of tile row 0.
    let y0 = i32(params.out_row0 + wg.y * TILE_H) - 1;
    let quad0 = wg.z * CQ;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    for (var q = 0u; q < params.in_quads; q++) {
        let plane = q * params.in_rows;
        for (var i = li; i < TILE_LEN; i += THREADS) {
            let gy = y0 + i32(i / TILE_STRIDE);
            let gx = x0 + i32(i % TILE_STRIDE);
            var v = vec4<f32>(0.0);
            if (gy >= 0 && gy < i32(params.out_h) && gx >= 0 && gx < i32(params.out_w)) {
                // Wraps (and fails the test) for rows before the buffer's first.
                let iy = u32(gy) / params.up - params.in_row0;
                if (iy < params.in_rows) {
                    v = input[(plane + iy) * params.in_w + u32(gx) / params.up];
                }
            }
            tile[i] = v;
        }
        for (var i = li; i < 9u * CQ; i += THREADS) {
            let tap = i / CQ;
            wtile[i] = weights[(q * 9u + tap) * params.out_quads + quad0 + i % CQ];
        }
        workgroupBarrier();
        for (var ky = 0u; ky < 3u; ky++) {
            let base = (row + ky) * TILE_STRIDE + xg * PIXELS;
            var x: array<vec4<f32>, 10>;
            for (var i = 0u; i < 10u; i++) {
                x[i] = tile[base + i];
            }
            for (var kx = 0u; kx < 3u; kx++) {
                let w = (ky * 3u + kx) * CQ + cg * 2u;
                let wa = wtile[w];
                let wb = wtile[w + 1u];
                for (var p = 0u; p < PIXELS; p++) {
                    let v = x[p + kx];
                    acc[2u * p] += wa * v;
                    acc[2u * p + 1u] += wb * v;
                }
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(THREADS)
fn conv_act(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    convolve(wg, li);
    let at = place(wg, li);
    if (at.row >= params.out_rows) {
        return;
    }
    let skip_row = params.out_row0 + at.row - params.skip_row0;
    for (var j = 0u; j < 2u; j++) {
        let quad = at.quad + j;
        let b = bias[quad];
        let out_base = (quad * params.out_rows + at.row) * params.out_w;
        let skip_base = (quad * params.skip_rows + skip_row) * params.out_w;
        for (var p = 0u; p < PIXELS; p++) {
            let x = at.x + p;
            if (x < params.out_w) {
                var v = acc[2u * p + j] + b;
                if ((params.flags & FLAG_SKIP) != 0u) {
                    v += skip[skip_base + x];
                }
                if ((params.flags & FLAG_RELU) != 0u) {
                    v = max(v, vec4<f32>(0.0));
                }
                output[out_base + x] = v;
            }
        }
    }
}

@compute @workgroup_size(THREADS)
fn conv_image(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    convolve(wg, li);
    let at = place(wg, li);
    if (at.row >= params.out_rows) {
        return;
    }
    let y = params.out_row0 + at.row;
    let plane = params.out_h * params.out_w;
    for (var p = 0u; p < PIXELS; p++) {
        let x = at.x + p;
        if (x >= params.out_w) {
            break;
        }
        if ((params.flags & FLAG_IMAGE_F32) != 0u) {
            for (var j = 0u; j < 2u; j++) {
                let v = acc[2u * p + j] + bias[at.quad + j];
                for (var k = 0u; k < 4u; k++) {
                    let c = (at.quad + j) * 4u + k;
                    if (c < params.out_channels) {
                        image[c * plane + y * params.out_w + x] = v[k] * 2.0 - 1.0;
                    }
                }
            }
        }
        if ((params.flags & FLAG_IMAGE_RGBA) != 0u && at.quad == 0u) {
            // TAESD's own [0, 1] image; pack4x8unorm rounds like the CPU's
            // `(clamp(v, 0, 1) * 255).round()` (floor of + 0.5).
            let v = acc[2u * p] + bias[0];
            rgba[y * params.rgba_stride + x] = pack4x8unorm(vec4<f32>(v.xyz, 1.0));
        }
    }
}
