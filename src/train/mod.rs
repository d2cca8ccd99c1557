//! Training a [`crate::model::classify::Model`] on a backend: named parameters ([`params`]), AdamW and the schedule ([`optim`]), initialisation ([`init`]), checkpoints in
//! AdapterHub's format ([`checkpoint`]), evaluation ([`metrics`]) and the loop ([`trainer`]).

pub mod checkpoint;
pub mod init;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod trainer;
