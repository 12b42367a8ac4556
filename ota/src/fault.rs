//! Fault seams for the power-loss and crash-loop tests (threat rows 11 and 13 of deploy/README.md).
//!
//! `TOLK_OTA_FAULT=<step>:<action>[,<step>:<action>...]` makes the process die at a named step of
//! an install: `kill` sends SIGKILL to itself (a power cut as seen by the file system, minus the
//! page cache), `abort` calls `abort()` (a model crashing the process on load). Steps:
//! `accepted`, `staged`, `verified`, `installed`, `trial`, `probe`, `committed`. Unset in
//! production, where every seam is a no-op.

use std::sync::OnceLock;

fn faults() -> &'static Vec<(String, String)> {
    static F: OnceLock<Vec<(String, String)>> = OnceLock::new();
    F.get_or_init(|| {
        std::env::var("TOLK_OTA_FAULT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.split_once(':'))
            .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
            .collect()
    })
}

/// Dies here if a fault is armed for `step`.
pub fn seam(step: &str) {
    for (s, action) in faults() {
        if s == step {
            tracing::warn!(step, action, "fault seam fires");
            match action.as_str() {
                // SAFETY: plain libc calls with valid arguments.
                "kill" => unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                },
                "abort" => std::process::abort(),
                _ => {}
            }
        }
    }
}
