//! `McpServer`: one MCP server, its Keycloak introspection client and its workload.

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use mcp_auth_gateway::contract;

use super::DeletionPolicy;

/// Port of the gateway container in `proxy` mode, and of its admin (health/metrics) listener
/// (Kubernetes port numbers are `i32`).
pub const GATEWAY_PORT: i32 = contract::GATEWAY_PORT as i32;
pub const GATEWAY_ADMIN_PORT: i32 = contract::GATEWAY_ADMIN_PORT as i32;

/// CEL: in Proxy mode `spec.port` must not be one of the gateway's ports.
fn proxy_port_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "!has(self.spec.auth) || self.spec.auth.mode != 'Proxy' || (self.spec.port != {GATEWAY_PORT} && self.spec.port != {GATEWAY_ADMIN_PORT})"
    ))
    .message(kube::core::Message::Message(format!(
        "in Proxy mode ports {GATEWAY_PORT} and {GATEWAY_ADMIN_PORT} belong to the gateway; choose another spec.port"
    )))
}

/// CEL: `spec.env` may not set a variable of the contract ([`contract::RESERVED_ENV`]).
fn reserved_env_rule() -> kube::core::Rule {
    let names: Vec<String> = contract::RESERVED_ENV
        .iter()
        .map(|name| format!("'{name}'"))
        .collect();
    kube::core::Rule::new(format!("self.all(e, !(e.name in [{}]))", names.join(", "))).message(
        "env may not set the operator's contract variables (HOST, PORT, AUTH_*, OAUTH_*, MCP_*)",
    )
}

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcpauth.dev",
    version = "v1alpha1",
    kind = "McpServer",
    namespaced,
    status = "McpServerStatus",
    shortname = "mcps",
    category = "mcp",
    doc = "One MCP server secured with Keycloak: its introspection client and audience scope in the realm of its McpAuthPolicy, a Secret with the client's credentials, and a Deployment and Service running the server (behind the auth gateway in Proxy mode).",
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Client", type_ = "string", json_path = ".status.clientId"),
    printcolumn(name = "Auth", type_ = "string", json_path = ".spec.auth.mode"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Verified", type_ = "string", json_path = ".status.conditions[?(@.type==\"Verified\")].status"),
    printcolumn(name = "Tools", type_ = "integer", json_path = ".status.mcp.toolCount", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = proxy_port_rule(),
    // The Service and the label values are named after the server: a longer or dotted name
    // (valid for a custom resource) would fail only after the Keycloak client was created.
    validation = kube::core::Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("McpServer names must be DNS labels (at most 63 characters: lowercase letters, digits and '-', starting with a letter): the Service and label values carry the name")
)]
#[serde(rename_all = "camelCase")]
/// The MCP server's workload and how it is secured. Every change is reconciled within seconds;
/// changes that affect the pods roll them.
pub struct McpServerSpec {
    /// Container image of the MCP server (Streamable HTTP transport). Changing it rolls the pods.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// Port the MCP server listens on (and the Service's port); default 3000. In `Proxy` mode
    /// 8080 and 9090 belong to the gateway.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Number of pods of the Deployment (default 1). 0 stops the server but keeps its Keycloak
    /// client and Secret; the McpServer is then Ready without an available replica.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Extra environment for the MCP container. The contract variables are set by the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = reserved_env_rule())]
    pub env: Vec<EnvVar>,

    /// Arguments of the MCP container (the image's entrypoint is kept). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub args: Vec<String>,

    /// CPU and memory requests and limits of the MCP container. Default: none set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// ServiceAccount of the pods (same namespace). Default: the namespace's `default` account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// The McpAuthPolicy in this namespace. Immutable.
    pub policy_ref: PolicyRef,

    /// Canonical public URL of the server: the token audience and the protected-resource
    /// `resource`. Defaults to `http://{name}.{namespace}.svc:{port}`. Changing it changes the
    /// audience: tokens issued for the old URL are refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && !self.endsWith('/') && !self.contains('?') && !self.contains('#')").message("url must be an absolute http(s) URL without trailing slash, query or fragment"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*[A-Z]')").message("url host must be lowercase (the audience is compared as an exact string)"))]
    // Non-canonical forms MCP clients normalise away before they ask for a token (RFC 8707
    // resource), so the audience would never match: reject them at admission.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url scheme must be lowercase http or https"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*@')").message("url must not contain user information (user:password@)"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^http://[^/]*:80(/|$)') && !self.matches('^https://[^/]*:443(/|$)')").message("url must not name the scheme's default port (80 for http, 443 for https)"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('/[.][.]?(/|$)') && !self.matches('[[:space:]]')").message("url must not contain '.' or '..' path segments or whitespace"))]
    pub url: Option<String>,

    /// Scopes a token must carry (each must be one of the policy's scopes). Default: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schemas::server_scopes")]
    pub scopes: Vec<String>,

    /// The confidential Keycloak client the server (or its gateway) uses to introspect tokens,
    /// and the Secret that receives its credentials. Defaults derive from the McpServer's name.
    #[serde(default)]
    pub introspection_client: IntrospectionClient,

    /// Who validates tokens: the operator's gateway in front of the server (default), the server
    /// itself, or nobody.
    #[serde(default)]
    pub auth: AuthSpec,

    /// `Delete` (default) removes the Keycloak client on deletion; `Retain` keeps it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The operator-owned NetworkPolicy isolating the server's pods (on by default when the
    /// operator runs with per-server NetworkPolicies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,

    /// securityContext of the MCP container. Default: no privilege escalation, every
    /// capability dropped, non-root, `RuntimeDefault` seccomp. Replaces the default whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,

    /// Mount a service-account token into the pod (default false: an MCP server rarely talks
    /// to the Kubernetes API, and a stolen token is a foothold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// `false` opts this server out of the NetworkPolicy (its pods are then reachable from
    /// any pod, bypassing the gateway in `Proxy` mode); the `NetworkIsolated` condition says so.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

fn default_port() -> i32 {
    3000
}
fn default_replicas() -> i32 {
    1
}

/// Reference to an McpAuthPolicy in the McpServer's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// Name of the McpAuthPolicy. Immutable: the server's Keycloak objects live in its realm.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("policyRef is immutable; delete and recreate the McpServer"))]
    pub name: String,
}

/// The server's confidential introspection client in Keycloak and the Secret of its credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntrospectionClient {
    /// Keycloak clientId of the confidential introspection client. Default
    /// `mcp.{namespace}.{name}` (namespaces have no dots, so defaults never collide; an explicit
    /// one may not start with `mcp.`, so it cannot take another server's default). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._/-]*$')").message("clientId must start with a letter or digit and contain only letters, digits, '.', '_', '/' and '-'"))]
    #[x_kube(validation = kube::core::Rule::new("!(self in ['admin-cli', 'account', 'account-console', 'broker', 'realm-management', 'security-admin-console', 'master-realm'])").message("clientId names one of Keycloak's built-in clients"))]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('mcp.')").message("clientId may not start with 'mcp.': that prefix is reserved for the operator's default client ids (mcp.{namespace}.{name})"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("clientId is immutable"))]
    pub client_id: Option<String>,

    /// Secret that receives the client credentials. Default `{name}-oauth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("secretName must be a DNS subdomain name"))]
    pub secret_name: Option<String>,

    /// Scheduled rotation of the client secret through Keycloak's client-secret rotation (the
    /// `client-secret-rotation` feature): the previous secret stays valid for `gracePeriod` while
    /// the pods roll to the new one. Absent (default): the secret never changes. The annotation
    /// `mcpauth.dev/rotate-secret` rotates once for each new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<SecretRotation>,
}

/// Durations are Go/CEL duration strings of whole hours, minutes and seconds: `720h`, `1h30m`, `45s`.
const DURATION_PATTERN: &str = "^([0-9]+[hms])+$";

/// `spec.introspectionClient.rotation`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!self.period.matches('^([0-9]+[hms])+$') || (has(self.gracePeriod) && !self.gracePeriod.matches('^([0-9]+[hms])+$')) || duration(has(self.gracePeriod) ? self.gracePeriod : '1h') < duration(self.period)").message("gracePeriod (default 1h) must be shorter than period: a second rotation within the grace period would cut off pods still using the previous secret"))]
pub struct SecretRotation {
    /// How often the secret is rotated, as a duration of hours, minutes and seconds (`720h` =
    /// 30 days; at least `10s`, at most `8760h`). The first rotation is due one period after
    /// rotation was enabled, each next one a period after the last.
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^([0-9]+[hms])+$') || (duration(self) >= duration('10s') && duration(self) <= duration('8760h'))").message("period must be between 10s and 8760h"))]
    pub period: String,

    /// How long the previous secret stays valid after a rotation (default `1h`; at least `5s`,
    /// at most `168h`, shorter than `period`). Pods still running with it keep introspecting
    /// until then, so it must cover a roll-out of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^([0-9]+[hms])+$') || (duration(self) >= duration('5s') && duration(self) <= duration('168h'))").message("gracePeriod must be between 5s and 168h"))]
    pub grace_period: Option<String>,
}

/// Annotation on an McpServer: each new value rotates the client secret once (the value handled
/// last is `status.secretRotation.lastTrigger`). Works with `spec.introspectionClient.rotation` set.
pub const ROTATE_SECRET_ANNOTATION: &str = "mcpauth.dev/rotate-secret";

/// How requests to the MCP server are authenticated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.mode != 'None' || (has(self.allowUnauthenticated) && self.allowUnauthenticated)").message("mode None serves the MCP server without authentication; set allowUnauthenticated: true to confirm"))]
pub struct AuthSpec {
    /// `Proxy` (default): a gateway container validates every request. `Native`: the server
    /// validates tokens itself from the env contract. `None`: no authentication (needs opt-out).
    #[serde(default)]
    pub mode: AuthMode,
    /// Explicit opt-out required by `mode: None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated: Option<bool>,
    /// Gateway image (defaults to the operator's own image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub gateway_image: Option<String>,
    /// Clients (`client_id`) allowed to call machine-to-machine: their tokens may carry no user
    /// session (client credentials, the MCP client-credentials extension). Empty (default):
    /// every token must come from a user's login; service-account tokens get 401.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schemas::service_account_clients")]
    pub service_account_clients: Vec<String>,
    /// Browser origins (`https://app.example.com`) allowed to call besides the `url`'s own
    /// origin (`Proxy` mode). Requests with any other `Origin` header get 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schemas::allowed_origins")]
    pub allowed_origins: Vec<String>,
    /// Scopes per tool (`Proxy` mode), in order: the first rule whose `name` matches a tool
    /// decides the scopes a `tools/call` of it needs besides the server's `scopes`. A call
    /// lacking them gets 403 `insufficient_scope` naming every scope it needs (clients step up),
    /// and `tools/list` shows each token only the tools it may call. Scopes must be the
    /// policy's. Tools matching no rule need the server's `scopes` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tools: Vec<ToolScopes>,
}

/// A rule of `spec.auth.tools`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolScopes {
    /// A tool name, or a glob of them: `*` matches any run of characters, `?` one.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Scopes a call of the tool needs (each one of the policy's scopes).
    #[schemars(schema_with = "super::schemas::tool_scopes")]
    pub scopes: Vec<String>,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum AuthMode {
    #[default]
    Proxy,
    Native,
    None,
}

/// What the operator last did for this McpServer, written by the operator only. Its
/// conditions: `Ready`, `PolicyResolved`, `KeycloakClientReady`, `SecretReady`, `Available`,
/// `NetworkIsolated`, `Verified` (live verification; does not feed `Ready`), `Unauthenticated`
/// with `auth.mode: None`, `Stalled`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct McpServerStatus {
    #[serde(flatten)]
    pub observed: super::Observed,
    /// The canonical URL in effect (`spec.url` or its default): the token audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Keycloak clientId of the introspection client in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The Secret holding the introspection client's credentials (`client-id`, `client-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Client scope that carries this server's audience; clients request it with `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_scope: Option<String>,
    /// Keycloak id of the audience scope, so a reconcile reads that one scope instead of the
    /// realm's whole scope list (which grows with every server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_scope_id: Option<String>,
    /// Ready pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Where the Keycloak objects live, recorded so cleanup finds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_realm: Option<String>,
    /// The audience mode this server was set up for (its policy's `status.audienceMode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_mode: Option<super::ActiveAudience>,
    /// What the running MCP server said in its latest successful handshake (live verification;
    /// `Proxy` and `None` modes). Kept when a later check fails: the `Verified` condition says
    /// whether it still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpInfo>,
    /// Rotation of the client secret (with `spec.introspectionClient.rotation` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_rotation: Option<SecretRotationStatus>,
}

/// The MCP server as its `initialize` answer and `tools/list` describe it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct McpInfo {
    /// The MCP protocol revision the server speaks (its answer to `initialize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// The server's own name and version (`serverInfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_info: Option<McpServerInfo>,
    /// Names of the server's capabilities (`tools`, `prompts`, `resources`, `logging`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Number of tools `tools/list` returned (absent without the `tools` capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_count: Option<i64>,
    /// When the operator first saw this answer verified; it moves only when the answer changes
    /// or verification recovers, so re-checks of an unchanged server write nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// `serverInfo` of an MCP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct McpServerInfo {
    /// The server's name.
    pub name: String,
    /// The server's version.
    #[serde(default)]
    pub version: String,
}

/// When the client secret was and will be rotated. Never holds a secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRotationStatus {
    /// When the operator last rotated the secret (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    /// When the next scheduled rotation is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,
    /// Until when the previous secret stays valid (RFC 3339); cleared once the operator has
    /// revoked it in Keycloak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<String>,
    /// The last value of the `mcpauth.dev/rotate-secret` annotation that was handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
    /// A rotation recorded before it is made in Keycloak, so a crash cannot rotate twice (which
    /// would cut off the secret the pods still use) or lose a manual trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingRotation>,
}

/// A rotation under way: done once Keycloak's secret creation time differs from `from`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingRotation {
    /// Keycloak's `client.secret.creation.time` of the secret being replaced (empty: never
    /// rotated before).
    pub from: String,
    /// The annotation value that asked for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

super::status_with_conditions!(McpServerStatus);
