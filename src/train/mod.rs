//! Training: the model with its gradient buffers, AdamW, and (in later files) the training loop
//! and checkpoints.

pub mod model;
pub mod optim;
pub mod params;
