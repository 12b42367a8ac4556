//! Tolk's host side: training recipes (to come) and the model-release tools.
//!
//! - [`bundle`]: signing a bundle folder (`tolk-train bundle sign`); the manifest format itself
//!   is defined once in `tolk_config::bundle`;
//! - [`publish`]: sending a signed bundle to one device over MQTT (`tolk-train publish`).

pub mod bundle;
pub mod corpus;
pub mod metrics;
pub mod publish;
