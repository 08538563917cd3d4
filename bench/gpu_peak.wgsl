// The adapter's f32 arithmetic rate: every invocation runs four independent chains of
// vec4 fused multiply-adds (8 FLOP per lane each), long enough that memory and dispatch
// do not count. The sum is written so that no compiler drops the work.

@group(0) @binding(0) var<storage, read_write> sink: array<vec4<f32>>;

const ITERATIONS: u32 = 512u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    var a = vec4<f32>(f32(gid.x) * 1e-7);
    var b = a + vec4<f32>(0.1);
    var c = a + vec4<f32>(0.2);
    var d = a + vec4<f32>(0.3);
    let m = vec4<f32>(0.999);
    let k = vec4<f32>(1e-3);
    for (var i = 0u; i < ITERATIONS; i = i + 1u) {
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
    }
    sink[gid.x] = a + b + c + d;
}
