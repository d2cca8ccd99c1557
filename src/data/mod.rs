//! Data: the built-in MR dataset and user-supplied text files.

pub mod input;
pub mod labeled;
pub mod mr;

/// A labelled example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub pair: Option<String>,
    pub label: usize,
}
