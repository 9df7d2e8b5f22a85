#![forbid(unsafe_code)]
//! mcp-keycloak-operator: secures MCP servers with Keycloak, one `kubectl apply` at a time.

pub mod admin;
pub mod api;
pub mod controller;
pub mod crdgen;
pub mod desired;
mod error;
pub mod metrics;
pub mod runtime;

pub use error::{Error, Result};
