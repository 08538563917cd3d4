// Scaled dot-product attention, flash-style: no n x n buffer. A workgroup takes one (batch,
// head) and a block of BQ queries, staged (scaled) in workgroup memory; it walks the keys in
// blocks of BK: the block's keys are staged, the BQ x BK scores computed into workgroup
// memory, then the same memory takes the block's values and each query's running max, sum
// and output are updated (online softmax). Eight invocations serve one query: each computes
// every eighth score of the block (and its exp) and owns every eighth output dimension.
//
// Rows of the staged Q, K and V tiles are D + 1 floats apart so that the eight invocations
// reading eight different keys hit different banks.

struct Params {
    batch: u32,
    heads: u32,
    nq: u32,
    nk: u32,
    causal: u32,
    q_blocks: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// Head dimension, queries and keys per block.
override D: u32 = 64u;
override BQ: u32 = 16u;
override BK: u32 = 32u;

// Invocations per query; output dimensions per invocation (at most MAX_DPT).
const TPQ: u32 = 8u;
const MAX_DPT: u32 = 32u;
override DPT: u32 = (D + TPQ - 1u) / TPQ;
// Scores per invocation per key block (BK is a multiple of TPQ, at most TPQ * MAX_SPT).
const MAX_SPT: u32 = 8u;
override SPT: u32 = BK / TPQ;
override WG: u32 = BQ * TPQ;
override DS: u32 = D + 1u;
override QS_LEN: u32 = BQ * DS;
override KV_LEN: u32 = BK * DS;
override S_LEN: u32 = BQ * BK;

const MASKED: f32 = -1.0e30;

var<workgroup> qs: array<f32, QS_LEN>;
var<workgroup> kv: array<f32, KV_LEN>;
var<workgroup> ss: array<f32, S_LEN>;

@compute @workgroup_size(WG)
fn attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let group = wid.x + wid.y * nwg.x;
    if group >= params.batch * params.heads * params.q_blocks {
        return;
    }
    let qb = group % params.q_blocks;
    let bh = group / params.q_blocks;
    let h = bh % params.heads;
    let b = bh / params.heads;
    let hd = params.heads * D;
    let q0 = qb * BQ;
    let qi = lid / TPQ;
    let part = lid % TPQ;
    let query = q0 + qi;

    for (var idx = lid; idx < BQ * D; idx += WG) {
        let r = idx / D;
        let d = idx % D;
        var value = 0.0;
        if q0 + r < params.nq {
            value = q[(b * params.nq + q0 + r) * hd + h * D + d] * params.scale;
        }
        qs[r * DS + d] = value;
    }

    var kend = params.nk;
    if params.causal != 0u {
        kend = min(kend, q0 + BQ);
    }
    var m = MASKED;
    var l = 0.0;
    var o: array<f32, MAX_DPT>;
    for (var t = 0u; t < DPT; t++) {
        o[t] = 0.0;
    }

    for (var j0 = 0u; j0 < kend; j0 += BK) {
        for (var idx = lid; idx < BK * D; idx += WG) {
            let r = idx / D;
            let d = idx % D;
            var value = 0.0;
            if j0 + r < params.nk {
                value = k[(b * params.nk + j0 + r) * hd + h * D + d];
            }
            kv[r * DS + d] = value;
        }
        workgroupBarrier();
        // This invocation's keys part, part + 8, ...: each query value read once for all.
        var sc: array<f32, MAX_SPT>;
        for (var t = 0u; t < SPT; t++) {
            sc[t] = 0.0;
        }
        for (var d = 0u; d < D; d++) {
            let qv = qs[qi * DS + d];
            for (var t = 0u; t < SPT; t++) {
                sc[t] = fma(qv, kv[(part + TPQ * t) * DS + d], sc[t]);
            }
        }
        for (var t = 0u; t < SPT; t++) {
            let j = part + TPQ * t;
            let key = j0 + j;
            var s = MASKED;
            if key < params.nk && (params.causal == 0u || key <= query) {
                s = sc[t];
            }
            ss[qi * BK + j] = s;
        }
        workgroupBarrier();
        for (var idx = lid; idx < BK * D; idx += WG) {
            let r = idx / D;
            let d = idx % D;
            var value = 0.0;
            if j0 + r < params.nk {
                value = v[(b * params.nk + j0 + r) * hd + h * D + d];
            }
            kv[r * DS + d] = value;
        }
        var block_max = MASKED;
        for (var j = 0u; j < BK; j++) {
            block_max = max(block_max, ss[qi * BK + j]);
        }
        let m_new = max(m, block_max);
        let correction = exp(m - m_new);
        for (var t = 0u; t < DPT; t++) {
            o[t] *= correction;
        }
        workgroupBarrier();
        // Each score's exp once, by the invocation that computed the score.
        for (var t = 0u; t < SPT; t++) {
            let j = qi * BK + part + TPQ * t;
            ss[j] = exp(ss[j] - m_new);
        }
        workgroupBarrier();
        var sum = 0.0;
        for (var j = 0u; j < BK; j++) {
            let p = ss[qi * BK + j];
            sum += p;
            for (var t = 0u; t < DPT; t++) {
                let d = part + TPQ * t;
                if d < D {
                    o[t] = fma(p, kv[j * DS + d], o[t]);
                }
            }
        }
        l = l * correction + sum;
        m = m_new;
        workgroupBarrier();
    }

    if query < params.nq {
        let base = (b * params.nq + query) * hd + h * D;
        for (var t = 0u; t < DPT; t++) {
            let d = part + TPQ * t;
            if d < D {
                out[base + d] = o[t] / l;
            }
        }
    }
}
