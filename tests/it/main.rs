//! The integration tests that can share one process, compiled once as one test binary.
//! Tests that stop a test bed component or install process-wide state have their own binaries
//! (`tests/crash.rs`, `tests/outage.rs`, `tests/apiserver_restart.rs`, `tests/rbac.rs`).

// The shared modules also serve the separate binaries (through tests/common), examples/demo.rs
// and the benches, so some of their items are used only there.
#[allow(dead_code)]
mod browser;
#[allow(dead_code)]
mod fakes;
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod stress;
#[allow(dead_code)]
mod support;

mod audience;
mod bad_input;
mod chart_docs;
mod cimd;
mod code_shape;
mod conformance;
mod crds;
mod e2e_client;
mod field_docs;
mod gateway;
mod gateway_keycloak;
mod gitops;
mod helm;
mod install;
mod isolation;
mod log_hygiene;
mod monitoring;
mod operator;
mod reaping;
mod rotation;
mod runtime;
mod scenario;
mod sdk_clients;
mod security;
mod testbed_smoke;
mod tool_scopes;
mod verify;
mod walkthrough;
