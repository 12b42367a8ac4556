//! Helpers shared by the workspace integration tests (reference data produced by the Python
//! scripts in `tests/reference/`).
