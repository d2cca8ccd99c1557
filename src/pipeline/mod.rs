//! AdpMixup: the mixture classifier ([`mixture`]) and the trade-off report ([`report`]). The
//! pipeline's cached stages are `admix mixup` itself (src/mixup_cmd.rs, in the binary).

pub mod mixture;
pub mod report;
