//! The Tolk kiosk runtime as a library: what the `tolk` binary, the tests and the host tools
//! (`tolk-train publish`) share.

pub mod audio;
pub mod events;
pub mod metrics;
pub mod ota;
pub mod pipeline;
pub mod platform;
