//! Training a [`crate::model::classify::Model`] on a backend: AdamW and the schedule ([`optim`]),
//! initialisation ([`init`]) and the loop ([`trainer`]); checkpoints and evaluation are
//! [`crate::classifier`]'s.

pub mod init;
pub mod job;
pub mod optim;
pub mod trainer;
