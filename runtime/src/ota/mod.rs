//! Signed over-the-air model updates on the device (issue 5; threats in
//! `shared/reference/ota-threats.md`, tests in `runtime/tests/ota_*.rs`).
//!
//! - [`updater`]: job intake, staging, verification, A/B install, trial, commit/revert, state;
//! - [`probe`]: the health probe run on a new model before it becomes active;
//! - [`agent`]: the MQTT agent (control topics, data-plane blocks, retained state, last will);
//! - [`mqtt`]: connection options (TLS, client certificates, packet size) shared with the host
//!   publisher (`tolk-train publish`);
//! - [`publish`]: the host side of a job (`tolk-train publish`): job document, blocks on request;
//! - [`fault`]: fault seams for the power-loss and crash-loop tests;
//! - [`fsutil`]: fsync, atomic replace, free space.
//!
//! The manifest, signatures and wire format are defined once in `tolk_config::{bundle, protocol}`.

pub mod agent;
pub mod fault;
pub mod fsutil;
pub mod mqtt;
pub mod probe;
pub mod publish;
pub mod updater;

pub use probe::{HealthProbe, LlamaProbe, ModelProbe, ProbeReport, TranslatorProbe};
pub use updater::{Settings, State, Updater, RUNTIME_VERSION};
