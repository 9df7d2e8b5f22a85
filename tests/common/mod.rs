//! The shared harness of `tests/it/`, for the test binaries that must own their process (they
//! stop a test bed component, load the machine, or install a process-wide tracing subscriber).

#[path = "../it/harness/mod.rs"]
pub mod harness;
#[path = "../it/stress/mod.rs"]
pub mod stress;
#[path = "../it/support/mod.rs"]
pub mod support;
