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

// Weighted sum of `count` pixels from `first`, stepping by `stride`, rounded like the CPU:
// add half a unit, arithmetic shift, clamp to a byte.
fn convolve(row: i32, first: vec2<i32>, stride: vec2<i32>) -> vec4<u32> {
    let count = table_entry(row, 1);
    let fraction_bits = u32(table_entry(row, 2));
    var sum = vec4<i32>(1 << (fraction_bits - 1u));
    for (var tap = 0; tap < count; tap++) {
        let weight = table_entry(row, 3 + tap);
        let value = vec4<i32>(textureLoad(pixels, first + stride * tap, 0));
        sum += value * weight;
    }
    return vec4<u32>(clamp(sum >> vec4<u32>(fraction_bits), vec4<i32>(0), vec4<i32>(255)));
}

@fragment
fn fs_vertical(@builtin(position) position: vec4<f32>) -> @location(0) vec4<u32> {
    let dst = vec2<i32>(floor(position.xy));
    let first_row = table_entry(dst.y, 0);
    return convolve(dst.y, vec2<i32>(dst.x, first_row), vec2<i32>(0, 1));
}

fn linear_from_srgb(srgb: vec3<f32>) -> vec3<f32> {
    let low = srgb / 12.92;
    let high = pow((srgb + 0.055) / 1.055, vec3<f32>(2.4));
    return select(high, low, srgb <= vec3<f32>(0.04045));
}

@fragment
fn fs_horizontal(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let dst = vec2<i32>(floor(position.xy));
    let first_column = table_entry(dst.x, 0);
    let bytes = convolve(dst.x, vec2<i32>(first_column, dst.y), vec2<i32>(1, 0));
    // byte / 255 converts back to the same byte in a unorm target (round to nearest).
    var color = vec4<f32>(bytes) / 255.0;
    if target_is_srgb {
        color = vec4<f32>(linear_from_srgb(color.rgb), color.a);
    }
    return color;
}
