//! The gemm and conv pipelines, by the precision of their operands (f32, or f16 weights),
//! compiled on first use so that only the variants a model uses are built, and compiled
//! without runtime bounds checks when [`super::NnOptions::trusted_products`] says so.

use std::sync::Arc;

use super::precision::{require_f16, variant_source, Precision};
use super::{GpuError, Kernel, Nn};

/// A product kernel and its operands' element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Product {
    /// `gemm.wgsl` with A and B stored as these.
    Gemm { a: Precision, b: Precision },
    /// `conv.wgsl` with its weights stored as this.
    Conv { weights: Precision },
}

impl Product {
    fn entry_point(self) -> &'static str {
        match self {
            Product::Gemm { .. } => "gemm",
            Product::Conv { .. } => "conv3x3",
        }
    }

    /// The element types of the bindings after the parameters, in order (outputs are f32).
    fn inputs(self) -> Vec<Precision> {
        use Precision::F32;
        match self {
            // a, b, bias, residual.
            Product::Gemm { a, b } => vec![a, b, F32, F32],
            // x, w, bias, extra bias, residual.
            Product::Conv { weights } => vec![F32, weights, F32, F32, F32],
        }
    }

    fn reads_f16(self) -> bool {
        self.inputs().contains(&Precision::F16)
    }

    /// The WGSL of this variant: the shader file with its weight aliases set.
    fn source(self) -> Result<String, GpuError> {
        match self {
            Product::Gemm { a, b } => {
                variant_source(include_str!("gemm.wgsl"), &[("WA", a), ("WB", b)])
            }
            Product::Conv { weights } => {
                variant_source(include_str!("conv.wgsl"), &[("WA", weights)])
            }
        }
    }
}

impl Nn {
    /// The pipeline of `product`, compiled on first use. An f16 variant is refused on a
    /// device without `SHADER_F16`.
    pub(super) fn product_kernel(&self, product: Product) -> Result<Arc<Kernel>, GpuError> {
        if product.reads_f16() {
            require_f16(&self.device)?;
        }
        let mut cache = self.products.lock();
        if let Some(kernel) = cache.get(&product) {
            return Ok(kernel.clone());
        }
        let module = product_module(&self.device, product, self.options.trusted_products)?;
        let kernel = Kernel::new(
            &self.device,
            &module,
            product.entry_point(),
            &product.inputs(),
            &[],
        );
        self.check()?;
        let kernel = Arc::new(kernel);
        cache.insert(product, kernel.clone());
        Ok(kernel)
    }
}

/// The shader module of `product`, with wgpu's runtime bounds checks when `trusted` is false
/// and without them when it is true. Only the two product shaders come through here (the
/// source is chosen inside, from the files), which is what the proof below is about; loop
/// bounding and the integer-division checks stay on.
#[allow(unsafe_code)]
fn product_module(
    device: &wgpu::Device,
    product: Product,
    trusted: bool,
) -> Result<wgpu::ShaderModule, GpuError> {
    let source = product.source()?;
    let descriptor = wgpu::ShaderModuleDescriptor {
        label: Some(product.entry_point()),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    };
    if !trusted {
        return Ok(device.create_shader_module(descriptor));
    }
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    checks.bounds_checks = false;
    // SAFETY: no access of gemm.wgsl or conv.wgsl leaves its array. Workgroup arrays: with
    // lid < 256 (the workgroup size), tile indices are k * 65 + c with k <= 15 (lid / 64 +
    // 4s or lid % 16, s < 4) and c <= 63 (lid % 64, or lid / 16 + 16s): at most 1038 < 1040;
    // local arrays are indexed by loop counters below their length 4. Storage buffers: the
    // dispatch binds each tensor whole and refuses one whose element type is not the one the
    // shader reads, so a binding holds at least `len` elements; every index is below the
    // `len` of its tensor, computed in u32 without wrapping, because
    // - gemm: a load or store of (b, i, j) happens only after `i < m`, `j < n`, `k < K`
    //   compared in the shader and b = group / tiles < batch (group < tiles * batch, the
    //   dispatched count, which `fold` keeps below 65535^2 < 2^32);
    //   `MatView::check` proved on the CPU that offset + (batch-1) bs + (rows-1) rs +
    //   (cols-1) cs < len for A, B, the residual, and the output spec the same for C, with
    //   the strides and sizes as the parameters passed; `check_size` keeps len <= u32::MAX/2,
    //   so no partial sum wraps. Bias: read at i < m (row) or j < n (column), its length
    //   checked to be m or n.
    // - conv: weights are (Cout, Cin*9) by construction, read at row < Cout and k < Cin*9;
    //   x is checked to be (B, Cin, H, W) and read at b = col / (Ho Wo) < B (col < B Ho Wo),
    //   ci = k / 9 < Cin, and (sy, sx) with 0 <= iy < Hu compared, sy = iy (Hu = H without
    //   resize) or iy * H / Hu < H, whose product `conv3x3` checks fits u32 (same for x);
    //   bias, extra bias and residual lengths are checked to be Cout, Cout or B*Cout, and
    //   the output's shape; outputs are written at (b, co, p) with co < Cout and j < B Ho Wo.
    // Tests run both ways (`gpu_nn`, `gpu_f16`) and agree.
    Ok(unsafe { device.create_shader_module_trusted(descriptor, checks) })
}
