//! # monovlm-tests — end-to-end tests across crates
//!
//! Test-only crate: the tests in `tests/` exercise the crates together (geometry through the answer
//! protocol now; checkpoint -> exporter -> runtime as those land). Shared fixtures live here.
