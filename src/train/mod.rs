//! Training a [`crate::model::classify::Model`] on a backend: AdamW and the schedule ([`optim`]),
//! initialisation ([`init`]) and the loop ([`trainer`]), and fitting the learned router of a
//! mixture ([`router`]); checkpoints and evaluation are [`crate::classifier`]'s.

pub mod init;
pub mod job;
pub mod optim;
pub mod router;
pub mod trainer;
