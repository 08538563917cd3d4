// Elementwise kernels: one invocation per output element, workgroups of 256 in a grid folded
// into x and y (the index is linearised from both).

struct Params {
    // Output elements.
    count: u32,
    // Per kernel (see each entry point).
    a: u32,
    b: u32,
    c: u32,
    f0: f32,
    f1: f32,
    f2: f32,
    f3: f32,
    f4: f32,
    f5: f32,
    f6: f32,
    f7: f32,
}

@group(0) @binding(0) var<uniform> params: Params;

// Every kernel has the same bindings; those with fewer inputs are given a dummy buffer.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const PI: f32 = 3.14159265358979;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7.
fn erf(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
        + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// params.a: 0 SiLU, 1 GELU (erf), 2 QuickGELU.
@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    let v = x[i];
    var r: f32;
    switch params.a {
        case 0u: { r = v * sigmoid(v); }
        case 1u: { r = gelu(v); }
        default: { r = v * sigmoid(1.702 * v); }
    }
    out[i] = r;
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    out[i] = x[i] + y[i];
}

// params.f0: the factor.
@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    out[i] = x[i] * params.f0;
}

// params.a: n (the output's last dim; the input's is 2n).
@compute @workgroup_size(256)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    let n = params.a;
    let row = i / n;
    let j = i % n;
    out[i] = x[row * 2u * n + j] * gelu(x[row * 2u * n + n + j]);
}

// params.a: channels of x (Ca), b: of y (Cb), c: spatial size.
@compute @workgroup_size(256)
fn concat_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    let ca = params.a;
    let cb = params.b;
    let spatial = params.c;
    let p = i % spatial;
    let c = (i / spatial) % (ca + cb);
    let bat = i / (spatial * (ca + cb));
    if c < ca {
        out[i] = x[(bat * ca + c) * spatial + p];
    } else {
        out[i] = y[(bat * cb + c - ca) * spatial + p];
    }
}

// params.a: elements of x.
@compute @workgroup_size(256)
fn repeat_batch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    out[i] = x[i % params.a];
}

// x in, y the model output (count or 2 count values). params.a: 1 with guidance (f6 its
// scale), b: 1 with clamp (f2 its bound); f0 p, f1 q, f3 alpha, f4 beta, f5 gamma.
@compute @workgroup_size(256)
fn sampler_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    var e = y[i];
    if params.a != 0u {
        let c = y[i + params.count];
        e = e + params.f6 * (c - e);
    }
    let xv = x[i];
    var x0 = params.f0 * xv + params.f1 * e;
    if params.b != 0u {
        x0 = clamp(x0, -params.f2, params.f2);
    }
    out[i] = params.f3 * xv + params.f4 * x0 + params.f5 * e;
}

// diffusers' get_timestep_embedding. x: the half frequencies (computed on the CPU, rounded
// as the CPU UNet rounds them). params.a: half, b: 1 when cos comes first; f0 the timestep.
@compute @workgroup_size(256)
fn timestep_embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.count {
        return;
    }
    let half = params.a;
    if i >= 2u * half {
        out[i] = 0.0;
        return;
    }
    let f = i % half;
    let arg = params.f0 * x[f];
    // GPU sin/cos lose precision far from 0: reduce to [-pi, pi] first. 2 pi = C1 + C2 with
    // C1 = 6.28125 (8 significant bits: k * C1 is exact for k < 2^16, and arg - k * C1 is
    // exact by Sterbenz), so the reduction's error is that of k * C2 alone.
    let k = round(arg / (2.0 * PI));
    let r = (arg - k * 6.28125) - k * 0.0019353071795864769;
    let first_sin = params.b == 0u;
    if (i < half) == first_sin {
        out[i] = sin(r);
    } else {
        out[i] = cos(r);
    }
}
