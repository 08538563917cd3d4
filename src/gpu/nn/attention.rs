//! Scaled dot-product attention (`attention.wgsl`), flash-style: online softmax over blocks
//! of keys staged in workgroup memory, never an n x n buffer.

use std::sync::Arc;

use super::{expect_shape, word, GpuError, GpuTensor, Kernel, Nn};

/// Eight invocations serve one query (`TPQ` in the shader) and each holds at most 32 output
/// dimensions (`MAX_DPT`): heads of up to 256.
const MAX_HEAD_DIM: usize = 256;

/// The sizes of an attention.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// B.
    pub batch: usize,
    /// H.
    pub heads: usize,
    /// D, the width of one head.
    pub head_dim: usize,
    /// Nq.
    pub q_tokens: usize,
    /// Nk (also the value tokens).
    pub k_tokens: usize,
}

/// The attention pipeline of one head dimension and its tile sizes.
pub(super) struct AttnKernel {
    kernel: Kernel,
    block_q: usize,
}

impl Nn {
    /// Scaled dot-product attention, online softmax in workgroup tiles (no n x n buffer).
    /// q (B, Nq, H*D), k and v (B, Nk, H*D), head h = columns h*D..(h+1)*D; out (B, Nq, H*D).
    /// scale = 1/sqrt(D). `causal`: query i sees keys j <= i only (CLIP).
    pub fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        s: AttnShape,
        causal: bool,
    ) -> Result<GpuTensor, GpuError> {
        let hd = s.heads * s.head_dim;
        expect_shape(q, &[s.batch, s.q_tokens, hd], "attention q")?;
        expect_shape(k, &[s.batch, s.k_tokens, hd], "attention k")?;
        expect_shape(v, &[s.batch, s.k_tokens, hd], "attention v")?;
        if s.head_dim == 0 || s.head_dim > MAX_HEAD_DIM {
            return Err(GpuError::Unsupported(format!(
                "attention heads of {} (the kernel takes 1 to {MAX_HEAD_DIM})",
                s.head_dim
            )));
        }
        if s.k_tokens == 0 && s.q_tokens > 0 {
            return Err(GpuError::BadInput("attention over no keys".into()));
        }
        let kernel = self.attention_kernel(s.head_dim)?;
        let out = self.output(&[s.batch, s.q_tokens, hd], "attention output")?;
        let q_blocks = s.q_tokens.div_ceil(kernel.block_q);
        let params = [
            word(s.batch, "attention batch")?,
            word(s.heads, "attention heads")?,
            word(s.q_tokens, "attention tokens")?,
            word(s.k_tokens, "attention tokens")?,
            u32::from(causal),
            word(q_blocks, "attention blocks")?,
            (1.0 / (s.head_dim as f32).sqrt()).to_bits(),
            0,
        ];
        self.dispatch(
            &kernel.kernel,
            &params,
            &[q, k, v],
            &out,
            (s.batch * s.heads * q_blocks) as u64,
        )?;
        self.add_flops(4 * (s.batch * s.heads * s.q_tokens * s.k_tokens * s.head_dim) as u64);
        Ok(out)
    }

    /// The pipeline for heads of `head_dim`, compiled on first use: the largest query and
    /// key blocks whose tiles fit the device's workgroup memory.
    fn attention_kernel(&self, head_dim: usize) -> Result<Arc<AttnKernel>, GpuError> {
        let mut cache = self.attention.lock();
        if let Some(kernel) = cache.get(&head_dim) {
            return Ok(kernel.clone());
        }
        let floats = self.limits.max_compute_workgroup_storage_size as usize / 4;
        let invocations = self.limits.max_compute_invocations_per_workgroup as usize;
        let row = head_dim + 1;
        let (block_q, block_k) = [(32, 64), (32, 32), (16, 32), (16, 16), (8, 16), (8, 8)]
            .into_iter()
            .find(|&(bq, bk)| bq * row + bk * row + bq * bk <= floats && bq * 8 <= invocations)
            .ok_or_else(|| {
                GpuError::Unsupported(format!(
                    "attention heads of {head_dim} need more than the device's {} bytes of \
                     workgroup memory",
                    floats * 4
                ))
            })?;
        let constants = [
            ("D", head_dim as f64),
            ("BQ", block_q as f64),
            ("BK", block_k as f64),
        ];
        let kernel = Kernel::new(
            &self.device,
            &self.attention_shader,
            "attention",
            &[super::Precision::F32; 3],
            &constants,
        );
        self.check()?;
        let kernel = Arc::new(AttnKernel { kernel, block_q });
        cache.insert(head_dim, kernel.clone());
        Ok(kernel)
    }
}
