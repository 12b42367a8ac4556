//! `tolk-train publish`: the publisher lives in `tolk_runtime::ota::publish` (next to the device
//! agent it talks to, so both are tested together); re-exported here for the host tools.

pub use tolk_runtime::ota::publish::*;
