//! Training on a backend: the model with its gradient buffers ([`model`]), named parameters
//! ([`params`]), AdamW and the schedule ([`optim`]), initialisation ([`init`]), checkpoints in
//! AdapterHub's format ([`checkpoint`]), evaluation ([`metrics`]) and the loop ([`trainer`]).

pub mod batches;
pub mod checkpoint;
pub mod init;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod rng;
pub mod trainer;
