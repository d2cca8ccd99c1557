//! The AdpMixup run end to end (`admix mixup`): the mixture classifier, the stages of the
//! pipeline, and the trade-off report.

pub mod mixture;
pub mod report;
