//! Device values: activation matrices ([`DevMat`]) and parameter tensors ([`DevTensor`]), with
//! their element type. The op set ([`super::ops`]) and the launches ([`super::launch`]) both use them.

use std::sync::Arc;

use anyhow::{ensure, Result};

use super::executor::DevBuf;
use crate::weights::Tensor;

/// Element type of a device matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// activations and their gradients
    Bf16,
    /// parameter gradients and optimizer state
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::Bf16 => 2,
            DType::F32 => 4,
        }
    }
}

/// A matrix on the device. Clones share the buffer; an op that writes in place copies a shared
/// buffer first (copy on write), so a clone never sees another's writes.
#[derive(Clone)]
pub struct DevMat {
    pub rows: usize,
    pub cols: usize,
    pub dtype: DType,
    pub(super) buf: Arc<DevBuf>,
}

impl DevMat {
    pub fn buf(&self) -> &DevBuf {
        &self.buf
    }

    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }

    /// The buffer for writing, copied first if another clone shares it.
    pub(super) fn buf_mut(&mut self) -> Result<&DevBuf> {
        if Arc::strong_count(&self.buf) > 1 {
            self.buf = Arc::new(self.buf.duplicate()?);
        }
        Ok(&self.buf)
    }

    pub(super) fn expect(&self, dtype: DType, op: &str) -> Result<()> {
        ensure!(self.dtype == dtype, "{op}: expected a {dtype:?} matrix, got {:?}", self.dtype);
        Ok(())
    }
}

/// A parameter tensor on the device: bf16 for the kernels; once trained, an f32 master copy that
/// the optimizer updates (created on the first step from the host tensor, which is kept: a view of
/// the mapped file or a shared buffer, not a copy).
pub struct DevTensor {
    pub shape: Vec<usize>,
    pub(super) buf: DevBuf,
    pub(super) host: Tensor,
    pub(super) master: Option<DevBuf>,
}

impl DevTensor {
    pub fn buf(&self) -> &DevBuf {
        &self.buf
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
