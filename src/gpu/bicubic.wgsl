// Separable Catmull-Rom resampling in the CPU reference's fixed-point arithmetic
// (see src/gpu/filter_table.rs): a vertical pass from the source into an integer
// intermediate of source width and output height, then a horizontal pass into the target.
//
// Integer textures and textureLoad only: no sampler, no filtering, no float rounding, so
// the result is the same bytes on every backend.

// Pixels being resampled: the source frame (vertical pass) or the intermediate
// (horizontal pass), both Rgba8Uint.
@group(0) @binding(0) var pixels: texture_2d<u32>;
// R32Sint, one row per output pixel along the pass's axis:
// [first input pixel, tap count, precision, weight 0, weight 1, ...].
@group(0) @binding(1) var table: texture_2d<i32>;

// Vertical pass only: the frame an in-between blends toward, and the blend's integer
// weights (prev, next, k + 1), so that the pass resamples the in-between the CPU would make
// (src/frame/blend.rs: round((prev_w * p + next_w * n) / (k + 1)), halves up). Weights
// (1, 0, 1) leave the frame as it is.
@group(0) @binding(2) var next_pixels: texture_2d<u32>;
@group(0) @binding(3) var<uniform> inbetween: vec4<u32>;

// Set when the target is an sRGB format: the hardware encodes what we write, so we write
// the decoded value and the stored byte stays the computed one.
override target_is_srgb: bool = false;

// One triangle covering the whole target; no vertex buffer needed.
@vertex
fn vs_fullscreen(@builtin(vertex_index) index: u32) -> @builtin(position) vec4<f32> {
    let corner = vec2<f32>(f32((index << 1u) & 2u), f32(index & 2u));
    return vec4<f32>(corner * 2.0 - 1.0, 0.0, 1.0);
}

fn table_entry(row: i32, column: i32) -> i32 {
    return textureLoad(table, vec2<i32>(column, row), 0).x;
}

// Rounds a weighted sum like the CPU: add half a unit, arithmetic shift, clamp to a byte.
fn round_sum(sum: vec4<i32>, fraction_bits: u32) -> vec4<u32> {
    let rounded = (sum + vec4<i32>(1 << (fraction_bits - 1u))) >> vec4<u32>(fraction_bits);
    return vec4<u32>(clamp(rounded, vec4<i32>(0), vec4<i32>(255)));
}

// A source pixel, or the in-between's pixel there.
fn source_pixel(at: vec2<i32>) -> vec4<i32> {
    let p = textureLoad(pixels, at, 0);
    if inbetween.y == 0u {
        return vec4<i32>(p);
    }
    let n = textureLoad(next_pixels, at, 0);
    let d = inbetween.z;
    return vec4<i32>((2u * (inbetween.x * p + inbetween.y * n) + d) / (2u * d));
}

@fragment
fn fs_vertical(@builtin(position) position: vec4<f32>) -> @location(0) vec4<u32> {
    let dst = vec2<i32>(floor(position.xy));
    let first = vec2<i32>(dst.x, table_entry(dst.y, 0));
    let count = table_entry(dst.y, 1);
    var sum = vec4<i32>(0);
    for (var tap = 0; tap < count; tap++) {
        sum += source_pixel(first + vec2<i32>(0, tap)) * table_entry(dst.y, 3 + tap);
    }
    return round_sum(sum, u32(table_entry(dst.y, 2)));
}

fn linear_from_srgb(srgb: vec3<f32>) -> vec3<f32> {
    let low = srgb / 12.92;
    let high = pow((srgb + 0.055) / 1.055, vec3<f32>(2.4));
    return select(high, low, srgb <= vec3<f32>(0.04045));
}

@fragment
fn fs_horizontal(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let dst = vec2<i32>(floor(position.xy));
    let first = vec2<i32>(table_entry(dst.x, 0), dst.y);
    let count = table_entry(dst.x, 1);
    var sum = vec4<i32>(0);
    for (var tap = 0; tap < count; tap++) {
        sum += vec4<i32>(textureLoad(pixels, first + vec2<i32>(tap, 0), 0)) * table_entry(dst.x, 3 + tap);
    }
    let bytes = round_sum(sum, u32(table_entry(dst.x, 2)));
    // byte / 255 converts back to the same byte in a unorm target (round to nearest).
    var color = vec4<f32>(bytes) / 255.0;
    if target_is_srgb {
        color = vec4<f32>(linear_from_srgb(color.rgb), color.a);
    }
    return color;
}
