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

// Per invocation: 8 consecutive pixels (0..7) x 2 output quads (a, b). Named fields and
// constant indices only, so every compiler keeps them in registers.
struct Acc {
    a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
    a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>,
    b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>,
    b4: vec4<f32>, b5: vec4<f32>, b6: vec4<f32>, b7: vec4<f32>,
}

// Where an invocation's outputs go.
struct Place {
    // First of its 2 output quads, x of its first pixel, local output row.
    quad: u32,
    x: u32,
    row: u32,
}

fn place(wg: vec3<u32>, li: u32) -> Place {
    let cg = li % COUT_GROUPS;
    let rest = li / COUT_GROUPS;
    return Place(
        wg.z * CQ + cg * 2u,
        wg.x * TILE_W + (rest % X_GROUPS) * PIXELS,
        wg.y * TILE_H + rest / X_GROUPS,
    );
}

// One tap for the 8 pixels, pixel p reading x[p].
fn tap(acc: ptr<function, Acc>, wa: mat4x4<f32>, wb: mat4x4<f32>, x: array<vec4<f32>, 8>) {
    (*acc).a0 += wa * x[0];
    (*acc).b0 += wb * x[0];
    (*acc).a1 += wa * x[1];
    (*acc).b1 += wb * x[1];
    (*acc).a2 += wa * x[2];
    (*acc).b2 += wb * x[2];
    (*acc).a3 += wa * x[3];
    (*acc).b3 += wb * x[3];
    (*acc).a4 += wa * x[4];
    (*acc).b4 += wb * x[4];
    (*acc).a5 += wa * x[5];
    (*acc).b5 += wb * x[5];
    (*acc).a6 += wa * x[6];
    (*acc).b6 += wb * x[6];
    (*acc).a7 += wa * x[7];
    (*acc).b7 += wb * x[7];
}

// The convolution (no bias) for this invocation's outputs.
fn convolve(wg: vec3<u32>, li: u32) -> Acc {
    let cg = li % COUT_GROUPS;
    let rest = li / COUT_GROUPS;
    let xg = rest % X_GROUPS;
    let row = rest / X_GROUPS;
    let x0 = i32(wg.x * TILE_W) - 1;
    // Global output-space row of tile row 0.
    let y0 = i32(params.out_row0 + wg.y * TILE_H) - 1;
    let quad0 = wg.z * CQ;
    var acc: Acc;
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
            // The 10 inputs of this tap row serve the 8 pixels at all 3 kx.
            let t = (row + ky) * TILE_STRIDE + xg * PIXELS;
            let x = array<vec4<f32>, 10>(
                tile[t], tile[t + 1u], tile[t + 2u], tile[t + 3u], tile[t + 4u],
                tile[t + 5u], tile[t + 6u], tile[t + 7u], tile[t + 8u], tile[t + 9u],
            );
            let w = ky * 3u * CQ + cg * 2u;
            tap(&acc, wtile[w], wtile[w + 1u],
                array(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]));
            tap(&acc, wtile[w + CQ], wtile[w + CQ + 1u],
                array(x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8]));
            tap(&acc, wtile[w + 2u * CQ], wtile[w + 2u * CQ + 1u],
                array(x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9]));
        }
        workgroupBarrier();
    }
    return acc;
}

// Bias, residual, ReLU for pixel p of the invocation, both quads.
fn store_act(at: Place, p: u32, a: vec4<f32>, b: vec4<f32>) {
    let x = at.x + p;
    if (at.row >= params.out_rows || x >= params.out_w) {
        return;
    }
    let skip_row = params.out_row0 + at.row - params.skip_row0;
    let values = array<vec4<f32>, 2>(a, b);
    for (var j = 0u; j < 2u; j++) {
        let quad = at.quad + j;
        var v = values[j] + bias[quad];
        if ((params.flags & FLAG_SKIP) != 0u) {
            v += skip[(quad * params.skip_rows + skip_row) * params.out_w + x];
        }
        if ((params.flags & FLAG_RELU) != 0u) {
            v = max(v, vec4<f32>(0.0));
        }
        output[(quad * params.out_rows + at.row) * params.out_w + x] = v;
    }
}

// The image for pixel p of the invocation: float planes (diffusers' `x * 2 - 1`) and RGBA8.
fn store_image(at: Place, p: u32, a: vec4<f32>, b: vec4<f32>) {
    let x = at.x + p;
    if (at.row >= params.out_rows || x >= params.out_w) {
        return;
    }
    let y = params.out_row0 + at.row;
    let plane = params.out_h * params.out_w;
    let values = array<vec4<f32>, 2>(a + bias[at.quad], b + bias[at.quad + 1u]);
    if ((params.flags & FLAG_IMAGE_F32) != 0u) {
        for (var j = 0u; j < 2u; j++) {
            for (var k = 0u; k < 4u; k++) {
                let c = (at.quad + j) * 4u + k;
                if (c < params.out_channels) {
                    image[c * plane + y * params.out_w + x] = values[j][k] * 2.0 - 1.0;
                }
            }
        }
    }
    if ((params.flags & FLAG_IMAGE_RGBA) != 0u && at.quad == 0u) {
        // TAESD's own [0, 1] image; pack4x8unorm rounds like the CPU's
        // `(clamp(v, 0, 1) * 255).round()` (floor of + 0.5).
        rgba[y * params.rgba_stride + x] = pack4x8unorm(vec4<f32>(values[0].xyz, 1.0));
    }
}

@compute @workgroup_size(THREADS)
fn conv_act(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = convolve(wg, li);
    let at = place(wg, li);
    store_act(at, 0u, c.a0, c.b0);
    store_act(at, 1u, c.a1, c.b1);
    store_act(at, 2u, c.a2, c.b2);
    store_act(at, 3u, c.a3, c.b3);
    store_act(at, 4u, c.a4, c.b4);
    store_act(at, 5u, c.a5, c.b5);
    store_act(at, 6u, c.a6, c.b6);
    store_act(at, 7u, c.a7, c.b7);
}

@compute @workgroup_size(THREADS)
fn conv_image(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let c = convolve(wg, li);
    let at = place(wg, li);
    store_image(at, 0u, c.a0, c.b0);
    store_image(at, 1u, c.a1, c.b1);
    store_image(at, 2u, c.a2, c.b2);
    store_image(at, 3u, c.a3, c.b3);
    store_image(at, 4u, c.a4, c.b4);
    store_image(at, 5u, c.a5, c.b5);
    store_image(at, 6u, c.a6, c.b6);
    store_image(at, 7u, c.a7, c.b7);
}
