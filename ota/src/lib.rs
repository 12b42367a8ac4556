//! Signed over-the-air model updates, device side and host side: the kiosk's `tolk ota` and
//! `tolk run` (crate `tolk-runtime`) run the updater and the agent, the host's `tolk-train
//! publish` and `tolk-train export` (crate `tolk-training`) the publisher and the health probe.
//! Neither audio I/O nor the kiosk pipeline is part of it, so the host trainer builds without
//! the audio stacks (checked by `build-support/check-deps.sh`).
//!
//! The threat table and the tests covering each row are in `deploy/README.md`; the tests are in
//! `ota/tests/` and, for those that drive the `tolk` or `tolk-train` binary, in
//! `runtime/tests/ota_*.rs` and `training/tests/publish_cli.rs`.
//!
//! - [`updater`]: job intake, staging, verification, A/B install, trial, commit/revert, state;
//! - [`probe`]: the health probe run on a new model before it becomes active;
//! - [`agent`]: the MQTT agent (control topics, data-plane blocks, retained state, last will);
//! - [`mqtt`]: connection options (TLS, client certificates, packet size) shared with the host
//!   publisher (`tolk-train publish`);
//! - [`publish`]: the host side of a job (`tolk-train publish`): job document, blocks on request;
//! - [`fault`]: fault seams for the power-loss and crash-loop tests.
//!
//! The manifest, signatures and wire format are defined once in `tolk_config::{bundle, protocol}`,
//! the durable file steps in `tolk_config::fsutil`.

pub mod agent;
pub mod fault;
pub mod mqtt;
pub mod probe;
pub mod publish;
pub mod updater;

pub use probe::{HealthProbe, LlamaProbe, ModelProbe, ProbeError, ProbeReport, TranslatorProbe};
pub use updater::{Settings, State, Updater};
