//! The environment contract of an McpServer's pod: the variables the operator sets on the MCP
//! container (`Native` mode) and on the gateway container (`Proxy` mode), and the gateway's
//! ports. The operator writes the pod from these names, the gateway's flags read them, and the
//! CRD's CEL rule keeps `spec.env` from overriding them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Listen address of the MCP server (`127.0.0.1` behind the gateway, else `0.0.0.0`).
pub const HOST_ENV: &str = "HOST";
/// Listen port of the MCP server (`spec.port`).
pub const PORT_ENV: &str = "PORT";
/// Keycloak's host as the pod reaches it.
pub const AUTH_HOST_ENV: &str = "AUTH_HOST";
/// Keycloak's port as the pod reaches it.
pub const AUTH_PORT_ENV: &str = "AUTH_PORT";
/// The realm of the McpAuthPolicy.
pub const AUTH_REALM_ENV: &str = "AUTH_REALM";
/// The introspection client's id.
pub const CLIENT_ID_ENV: &str = "OAUTH_CLIENT_ID";
/// The introspection client's secret (always set through a `secretKeyRef`, never a flag).
pub const CLIENT_SECRET_ENV: &str = "OAUTH_CLIENT_SECRET";
/// The canonical URL: the token audience and the protected-resource `resource`.
pub const SERVER_URL_ENV: &str = "MCP_SERVER_URL";
/// Keycloak's issuer as browsers see it.
pub const ISSUER_ENV: &str = "MCP_AUTH_ISSUER";
/// The RFC 7662 introspection endpoint reachable from the pod.
pub const INTROSPECTION_ENDPOINT_ENV: &str = "MCP_AUTH_INTROSPECTION_ENDPOINT";
/// Space-separated scopes every token must carry.
pub const REQUIRED_SCOPES_ENV: &str = "MCP_REQUIRED_SCOPES";
/// Clients (comma-separated) whose tokens may lack a user session; unset means users only.
pub const SERVICE_ACCOUNT_CLIENTS_ENV: &str = "MCP_SERVICE_ACCOUNT_CLIENTS";
/// How tokens name their server: unset or `Scope` (the url anywhere in `aud`), or
/// `ResourceIndicator` (`aud` narrowed by RFC 8707 `resource` to exactly the url).
pub const AUDIENCE_MODE_ENV: &str = "MCP_AUTH_AUDIENCE_MODE";
/// [`AUDIENCE_MODE_ENV`]'s value when `aud` must be exactly the url.
pub const AUDIENCE_MODE_RESOURCE_INDICATOR: &str = "ResourceIndicator";
/// Per-tool scopes and the scope hierarchy (JSON, see `ScopeRules`); unset means none.
pub const SCOPE_RULES_ENV: &str = "MCP_SCOPE_RULES";

/// Gateway only: the address of the MCP listener.
pub const LISTEN_ENV: &str = "MCP_GATEWAY_LISTEN";
/// Gateway only: the address of the admin listener (`/healthz`, `/metrics`).
pub const ADMIN_LISTEN_ENV: &str = "MCP_GATEWAY_ADMIN_LISTEN";
/// Gateway only: the MCP server behind it (see [`upstream_url`]).
pub const UPSTREAM_ENV: &str = "MCP_GATEWAY_UPSTREAM";
/// Gateway only: browser origins allowed besides the resource URL's own.
pub const ALLOWED_ORIGINS_ENV: &str = "MCP_GATEWAY_ALLOWED_ORIGINS";
/// Gateway only: seconds between two MCP handshakes with the upstream (0: no probing).
pub const PROBE_INTERVAL_ENV: &str = "MCP_GATEWAY_PROBE_INTERVAL_SECONDS";
/// Gateway only: the upstream's MCP endpoint path the probe calls (default: [`mcp_endpoint_path`]).
pub const PROBE_PATH_ENV: &str = "MCP_GATEWAY_PROBE_PATH";
/// Path of the gateway's live-verification document on the admin listener (JSON, see
/// `mcp_auth_gateway::probe::McpStatus`); the operator reads it from every pod it owns.
pub const MCP_STATUS_PATH: &str = "/mcp-status";
/// The MCP endpoint's path when the canonical URL has none (the SDKs' and server-everything's).
pub const DEFAULT_MCP_PATH: &str = "/mcp";

/// What the operator sets on the MCP container; `spec.env` may not override any of them.
pub const RESERVED_ENV: [&str; 14] = [
    HOST_ENV,
    PORT_ENV,
    AUTH_HOST_ENV,
    AUTH_PORT_ENV,
    AUTH_REALM_ENV,
    CLIENT_ID_ENV,
    CLIENT_SECRET_ENV,
    SERVER_URL_ENV,
    ISSUER_ENV,
    INTROSPECTION_ENDPOINT_ENV,
    REQUIRED_SCOPES_ENV,
    SERVICE_ACCOUNT_CLIENTS_ENV,
    AUDIENCE_MODE_ENV,
    SCOPE_RULES_ENV,
];

/// Port of the gateway's MCP listener; an McpServer in `Proxy` mode may not use it.
pub const GATEWAY_PORT: u16 = 8080;
/// Port of the gateway's admin listener; an McpServer in `Proxy` mode may not use it.
pub const GATEWAY_ADMIN_PORT: u16 = 9090;
/// Default MCP listener: every interface, [`GATEWAY_PORT`].
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), GATEWAY_PORT);
/// Default admin listener: every interface, [`GATEWAY_ADMIN_PORT`].
pub const ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), GATEWAY_ADMIN_PORT);
/// Default upstream: an MCP server on port 3000 of the same pod.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";

/// The upstream of a gateway whose MCP server listens on `port` of the same pod.
pub fn upstream_url(port: impl std::fmt::Display) -> String {
    format!("http://127.0.0.1:{port}")
}

/// The MCP endpoint path of a server whose canonical URL is `url`: the URL's own path, else
/// [`DEFAULT_MCP_PATH`] (a URL without path names the host, and servers serve `/mcp`).
pub fn mcp_endpoint_path(url: &str) -> String {
    let path = url::Url::parse(url)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        DEFAULT_MCP_PATH.to_owned()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_path_is_the_urls_else_mcp() {
        assert_eq!(mcp_endpoint_path("https://h.example.com"), "/mcp");
        assert_eq!(mcp_endpoint_path("https://h.example.com/"), "/mcp");
        assert_eq!(mcp_endpoint_path("http://localhost:3000/mcp"), "/mcp");
        assert_eq!(mcp_endpoint_path("https://h/a/b"), "/a/b");
    }

    #[test]
    fn defaults_agree_with_the_ports() {
        assert_eq!(LISTEN.to_string(), "0.0.0.0:8080");
        assert_eq!(ADMIN_LISTEN.to_string(), "0.0.0.0:9090");
        assert_eq!(upstream_url(3000), DEFAULT_UPSTREAM);
    }
}
