// Group norm and layer norm: one workgroup of 256 invocations per normalised set (a group of
// channels of one batch item, or one row), which in both layouts is contiguous. Two passes
// (mean, then the mean of squared deviations) for the precision of a plain variance, then
// the normalised, affine (and for group norm optionally SiLU'd) output.

struct Params {
    // Elements per set, sets.
    count: u32,
    sets: u32,
    // Group norm: channels per group, spatial size, channels.
    cpg: u32,
    spatial: u32,
    channels: u32,
    eps: f32,
    silu: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

fn workgroup_sum(value: f32, lid: u32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if lid < half {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// Mean and 1 / sqrt(var + eps) of x[base .. base + count].
fn stats(base: u32, lid: u32) -> vec2<f32> {
    var sum = 0.0;
    for (var i = lid; i < params.count; i += WG) {
        sum += x[base + i];
    }
    let mean = workgroup_sum(sum, lid) / f32(params.count);
    var sq = 0.0;
    for (var i = lid; i < params.count; i += WG) {
        let d = x[base + i] - mean;
        sq += d * d;
    }
    let variance = workgroup_sum(sq, lid) / f32(params.count);
    return vec2<f32>(mean, inverseSqrt(variance + params.eps));
}

@compute @workgroup_size(256)
fn group_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let set_index = wid.x + wid.y * nwg.x;
    if set_index >= params.sets {
        return;
    }
    let base = set_index * params.count;
    let s = stats(base, lid);
    let groups = params.channels / params.cpg;
    let c0 = (set_index % groups) * params.cpg;
    for (var i = lid; i < params.count; i += WG) {
        let c = c0 + i / params.spatial;
        var v = (x[base + i] - s.x) * s.y * gamma[c] + beta[c];
        if params.silu != 0u {
            v = v / (1.0 + exp(-v));
        }
        y[base + i] = v;
    }
}

@compute @workgroup_size(256)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let set_index = wid.x + wid.y * nwg.x;
    if set_index >= params.sets {
        return;
    }
    let base = set_index * params.count;
    let s = stats(base, lid);
    for (var i = lid; i < params.count; i += WG) {
        y[base + i] = (x[base + i] - s.x) * s.y * gamma[i] + beta[i];
    }
}
