//! `tolk-train`: the Tolk training side.
fn main() {}
