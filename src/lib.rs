#![forbid(unsafe_code)]
//! mcp-keycloak-operator: secures MCP servers with Keycloak.

pub mod gateway;
