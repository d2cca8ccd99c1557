//! Safetensors weights, memory-mapped.
//!
//! A [`WeightFile`] maps the file once and validates its header (offsets, sizes, dtypes) through
//! the `safetensors` crate. Tensors are handed out as [`Tensor`]: f32 data that borrows the mapping
//! when the bytes are f32 and 4-byte aligned (zero copy), and owns a converted copy otherwise
//! (F16 / BF16 storage, or an unaligned F32 payload).

use std::any::Any;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// The prefixes under which checkpoints store an encoder's tensors: Hugging Face task models and
/// AdapterHub checkpoints (`bert.`, `roberta.`; see [`crate::model::config::Family::prefix`]) and
/// bare encoders (`""`), in the order they are looked for.
pub const ENCODER_PREFIXES: [&str; 3] = ["bert.", "roberta.", ""];

/// f32 tensor data: a window of a shared mapping, or an owned buffer.
#[derive(Clone)]
enum Storage {
    Mapped { map: Arc<Mmap>, offset: usize, len: usize },
    Owned(Arc<Vec<f32>>),
}

/// A dense row-major f32 tensor.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
    /// data derived from the values once and kept with them ([`Tensor::derived`]): shared by clones,
    /// freed with the last of them, reset when the values change
    derived: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl Tensor {
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor shape and data length");
        Tensor { shape, storage: Storage::Owned(Arc::new(data)), derived: Arc::default() }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Mapped { map, offset, len } => bytemuck::cast_slice(&map[*offset..*offset + *len * 4]),
            Storage::Owned(v) => v,
        }
    }

    /// Mutable data. A tensor that borrows the file mapping, or shares its buffer, is copied first
    /// (copy on write), so frozen weights stay zero-copy and only trained ones are owned.
    pub fn data_mut(&mut self) -> &mut [f32] {
        // whatever was derived from the old values no longer holds
        self.derived = Arc::default();
        if let Storage::Mapped { .. } = self.storage {
            self.storage = Storage::Owned(Arc::new(self.data().to_vec()));
        }
        match &mut self.storage {
            Storage::Owned(v) => Arc::make_mut(v).as_mut_slice(),
            Storage::Mapped { .. } => unreachable!("converted above"),
        }
    }

    /// A form of the values made once by `make` and kept with them (a backend's packed copy of a
    /// weight): later calls, on this tensor or its clones, get the same one until the values change
    /// ([`Tensor::data_mut`]); it is freed with the last clone. One kind per tensor: a second kind
    /// is made afresh each call.
    pub fn derived<T: Any + Send + Sync>(&self, make: impl FnOnce(&[f32]) -> T) -> Arc<T> {
        if let Some(v) = self.derived.get() {
            return match v.clone().downcast::<T>() {
                Ok(v) => v,
                Err(_) => Arc::new(make(self.data())),
            };
        }
        let v = Arc::new(make(self.data()));
        // two threads may make it at once: the first one kept serves later calls
        let _ = self.derived.set(v.clone());
        v
    }

    /// Whether the data borrows the file mapping (no copy was made).
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
}

/// Metadata of one tensor in a file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// byte range in the file
    pub start: usize,
    pub end: usize,
}

/// A memory-mapped, validated safetensors file.
pub struct WeightFile {
    path: PathBuf,
    map: Arc<Mmap>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the mapping is read-only; like every mmap-based loader we assume the file is not
        // truncated by another process while mapped.
        let map =
            unsafe { Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))?;
        let tensors = {
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
            let base = map.as_ptr() as usize;
            let mut tensors = BTreeMap::new();
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - base;
                let info = TensorInfo {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                    end: start + view.data().len(),
                };
                tensors.insert(name, info);
            }
            tensors
        };
        Ok(WeightFile { path: path.to_path_buf(), map: Arc::new(map), tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn missing(&self, name: &str) -> String {
        format!("{}: tensor `{name}` not found", self.path.display())
    }

    /// The tensor `name` as f32, checked against `shape`. F32 data that is 4-byte aligned in the
    /// file is borrowed from the mapping; F16 and BF16 are converted.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self.info(name).with_context(|| self.missing(name))?;
        if info.shape != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {:?}",
                self.path.display(),
                info.shape,
                shape
            );
        }
        self.tensor_any_shape(name)
    }

    /// The tensor `name` as f32, whatever its shape.
    pub fn tensor_any_shape(&self, name: &str) -> Result<Tensor> {
        let info = self.info(name).with_context(|| self.missing(name))?;
        let bytes = &self.map[info.start..info.end];
        let n: usize = info.shape.iter().product();
        let storage = match info.dtype {
            Dtype::F32 if bytes.as_ptr() as usize % 4 == 0 => {
                Storage::Mapped { map: self.map.clone(), offset: info.start, len: n }
            }
            Dtype::F32 => Storage::Owned(Arc::new(
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            )),
            Dtype::F16 => Storage::Owned(Arc::new(
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            )),
            Dtype::BF16 => Storage::Owned(Arc::new(
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            )),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16",
                self.path.display()
            ),
        };
        let t = Tensor { shape: info.shape.clone(), storage, derived: Arc::default() };
        // a NaN or infinite weight gives outputs that look valid (a label, a null probability)
        if let Some(i) = t.data().iter().position(|v| !v.is_finite()) {
            bail!("{}: tensor `{name}` holds {} at index {i}", self.path.display(), t.data()[i]);
        }
        Ok(t)
    }

    /// An integer tensor (I64 or I32) as i64 values.
    pub fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let info = self.info(name).with_context(|| self.missing(name))?;
        let bytes = &self.map[info.start..info.end];
        let v = match info.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::I32 => {
                bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect()
            }
            other => {
                bail!("{}: tensor `{name}` has dtype {other:?}; expected I64 or I32", self.path.display())
            }
        };
        Ok((info.shape.clone(), v))
    }

    /// An F64 tensor (reference data in fixtures).
    pub fn f64s(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let info = self.info(name).with_context(|| self.missing(name))?;
        let bytes = &self.map[info.start..info.end];
        match info.dtype {
            Dtype::F64 => Ok((
                info.shape.clone(),
                bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
            )),
            _ => {
                let t = self.tensor_any_shape(name)?;
                Ok((info.shape.clone(), t.data().iter().map(|&x| x as f64).collect()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_data_is_shared_by_clones_remade_after_a_change_and_freed_with_the_tensor() {
        let t = Tensor::from_vec(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let made = std::cell::Cell::new(0);
        let sum = |d: &[f32]| {
            made.set(made.get() + 1);
            d.iter().sum::<f32>()
        };
        let a = t.derived(sum);
        let mut c = t.clone();
        assert_eq!((*a, *c.derived(sum), made.get()), (10.0, 10.0, 1), "clones share what was derived");
        c.data_mut()[0] = 5.0;
        assert_eq!((*c.derived(sum), made.get()), (14.0, 2), "a change remakes it");
        assert_eq!(*t.derived(sum), 10.0, "the unchanged tensor keeps its own");
        // a second kind is made each time, never confused with the first
        assert_eq!(*t.derived(|d| d.len()), 4);
        // freed with the last holder
        let weak = Arc::downgrade(&a);
        drop((a, t));
        assert!(weak.upgrade().is_none());
    }
}
