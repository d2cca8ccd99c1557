//! cuBLAS through cudarc (loaded at run time; the GPU machines have it in PyTorch's wheels): the
//! reference GEMMs that the GPU check and `admix bench` time admix's kernels against.

use anyhow::{bail, Result};

use super::executor::DevBuf;

/// cuBLAS through cudarc (loaded at run time; the GPU machines have it in PyTorch's wheels).
pub struct Cublas(cudarc::cublas::sys::cublasHandle_t);

impl Cublas {
    pub fn open() -> Result<Self> {
        // SAFETY: only tries to dlopen libcublas.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!(
                "libcublas not found (scripts/gpu-check puts PyTorch's nvidia/cublas/lib on LD_LIBRARY_PATH)"
            );
        }
        Ok(Cublas(cudarc::cublas::result::create_handle().map_err(|e| anyhow::anyhow!("cublasCreate: {e}"))?))
    }

    /// `y[m,n] = x[m,k]·w[n,k]ᵀ` in bf16 with f32 accumulation (row-major, as gemm_bf16).
    pub fn gemm(&self, y: &DevBuf, x: &DevBuf, w: &DevBuf, m: usize, n: usize, k: usize) -> Result<()> {
        // column-major: yᵀ[n,m] = op(w)[n,k] · xᵀ[k,m] with w as stored transposed
        self.raw(true, false, (n, m, k), (w, k), (x, k), (y, n), DType16::Bf16)
    }

    /// `dx[m,k] = dy[m,n]·w[n,k]` (the input gradient), bf16 out.
    pub fn gemm_dx(&self, dx: &DevBuf, dy: &DevBuf, w: &DevBuf, m: usize, n: usize, k: usize) -> Result<()> {
        // column-major: dxᵀ[k,m] = wᵀ-as-stored[k,n] · dyᵀ[n,m]
        self.raw(false, false, (k, m, n), (w, k), (dy, n), (dx, k), DType16::Bf16)
    }

    /// `dw[n,k] = dy[m,n]ᵀ·x[m,k]` (the weight gradient), f32 out.
    pub fn gemm_dw(&self, dw: &DevBuf, dy: &DevBuf, x: &DevBuf, m: usize, n: usize, k: usize) -> Result<()> {
        // column-major: dwᵀ[k,n] = xᵀ[k,m] · dy[m,n] (dy as stored is dyᵀ column-major: op T)
        self.raw(false, true, (k, n, m), (x, k), (dy, n), (dw, k), DType16::F32)
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(
        &self,
        ta: bool,
        tb: bool,
        (m, n, k): (usize, usize, usize),
        (a, lda): (&DevBuf, usize),
        (b, ldb): (&DevBuf, usize),
        (c, ldc): (&DevBuf, usize),
        out: DType16,
    ) -> Result<()> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let c_type = if out == DType16::F32 { cudaDataType::CUDA_R_32F } else { cudaDataType::CUDA_R_16BF };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the callers pass buffers holding the column-major operands of these shapes.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                self.0,
                op(ta),
                op(tb),
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                a.ptr() as *const _,
                cudaDataType::CUDA_R_16BF,
                lda as i32,
                b.ptr() as *const _,
                cudaDataType::CUDA_R_16BF,
                ldb as i32,
                &beta as *const f32 as *const _,
                c.ptr() as *mut _,
                c_type,
                ldc as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| anyhow::anyhow!("cublasGemmEx: {e}"))
    }
}

/// Output type of a cuBLAS comparison GEMM.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DType16 {
    Bf16,
    F32,
}

impl Drop for Cublas {
    fn drop(&mut self) {
        // SAFETY: created in open.
        let _ = unsafe { cudarc::cublas::result::destroy_handle(self.0) };
    }
}
