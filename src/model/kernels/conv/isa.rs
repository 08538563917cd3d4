//! The instruction set the convolution kernels run with.
//!
//! Detected at run time, not compile time, so one binary runs everywhere and still uses
//! AVX2/FMA where the CPU has them.

/// The instruction set the kernels run with, detected once per call.
#[derive(Clone, Copy)]
pub(super) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    Generic,
}

impl Isa {
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Self::Avx2Fma;
        }
        Self::Generic
    }
}
