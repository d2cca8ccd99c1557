//! AdpMixup: the trade-off report ([`report`]). The pipeline's cached stages are `admix mixup`
//! itself (src/mixup_cmd.rs, in the binary); the mixture classifier is [`crate::model::mixture`].

pub mod report;
