//! The Tolk kiosk runtime as a library: what the `tolk` binary and its tests share. The OTA
//! updater and agent the binary runs live in `tolk_ota`.

pub mod audio;
pub mod display;
pub mod events;
pub mod metrics;
pub mod pipeline;
pub mod platform;
