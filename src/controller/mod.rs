//! Controllers for McpAuthPolicy and McpServer, and what they share.

mod admin_secret;
pub mod conditions;
mod context;
mod finish;
mod isolation;
mod policy;
mod reaping;
mod rotation;
mod server;
mod ssa;
mod verify;
mod watch;

pub use admin_secret::{bound_admin_credentials, AdminConnection, DEFAULT_AUTH_REALM};
pub use context::{Context, OperatorConfig};
pub use watch::{run, run_until_synced};

/// Field manager of every write, and the events' reporting controller.
pub const MANAGER: &str = "mcp-keycloak-operator";
