//! `McpAuthPolicy`: realm-level plumbing shared by MCP servers (Keycloak connection, MCP scopes,
//! anonymous Dynamic Client Registration policies).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Keycloak host-pattern rule: an exact host name / IP, or `*.domain` with at least two labels
/// after `*.` (`*.com` would trust a whole top-level domain). Keycloak ignores ports and paths and
/// has no bare `*`, so anything else would be silently misread: reject it at admission.
pub const HOST_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|\*\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+)$";

/// Keycloak's built-in client scopes. A policy scope of one of these names would rewrite (and on
/// deletion remove) a scope every client of the realm relies on: refused at admission.
pub const BUILT_IN_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "address",
    "phone",
    "offline_access",
    "roles",
    "web-origins",
    "microprofile-jwt",
    "acr",
    "basic",
    "role_list",
    "organization",
    "service_account",
    "saml_organization",
];

/// Prefix of the per-server audience scopes (`mcp:server:{namespace}:{name}`).
pub const AUDIENCE_SCOPE_PREFIX: &str = "mcp:server:";

/// Realm names and `authRealm`: what Keycloak accepts as a realm name in a URL path segment.
pub const REALM_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]*$";

/// RFC 6749 `scope-token`: printable ASCII without space, `"` and `\`.
pub const SCOPE_PATTERN: &str = r#"^[!#-\[\]-~]+$"#;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcpauth.dev",
    version = "v1alpha1",
    kind = "McpAuthPolicy",
    namespaced,
    status = "McpAuthPolicyStatus",
    shortname = "mcpap",
    category = "mcp",
    doc = "Realm-level Keycloak plumbing shared by the McpServers of its namespace: the Keycloak connection and admin credentials, the MCP scopes, anonymous Dynamic Client Registration, Client ID Metadata Documents and the refusal of grants without a user. One policy holds a realm.",
    printcolumn(name = "Realm", type_ = "string", json_path = ".spec.keycloak.realm"),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".status.issuer"),
    printcolumn(
        name = "Clients",
        type_ = "integer",
        json_path = ".status.realmClients"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
/// What the operator keeps configured in the policy's Keycloak realm. Edits are applied on the
/// next reconcile (seconds); drift made in Keycloak is repaired at the latest on the resync.
pub struct McpAuthPolicySpec {
    /// How the operator and the MCP pods reach Keycloak, and which realm to configure.
    pub keycloak: KeycloakConnection,

    /// MCP scopes (client scopes in Keycloak), e.g. `mcp:tools`.
    #[serde(default = "default_scopes")]
    #[schemars(length(min = 1, max = 32), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, !has(s.implies) || s.implies.all(i, i != s.name && self.exists(t, t.name == i)))").message("implies may name only other scopes of this policy"))]
    pub scopes: Vec<ScopeSpec>,

    /// Anonymous Dynamic Client Registration (RFC 7591) as MCP clients such as VS Code use it.
    /// When absent the operator leaves the realm's registration policies untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_client_registration: Option<DynamicClientRegistration>,

    /// OAuth Client ID Metadata Documents (CIMD, the MCP spec's recommended successor to DCR):
    /// a client's `client_id` is the https URL of its metadata document, which Keycloak fetches.
    /// Needs Keycloak's `cimd` feature. When absent (or `enabled: false`) the operator removes the
    /// client profile and policy it wrote, and revokes the clients they admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_metadata_documents: Option<ClientIdMetadataDocuments>,

    /// Grants that mint a token without a user logging in through the browser and consenting.
    /// By default the operator makes Keycloak refuse all of them for every client of the realm
    /// (a client policy named `mcp-operator.user-grants-only`), so a client registered anonymously
    /// cannot get a token on its own. Listing one here lets Keycloak issue it again (condition
    /// `MachineGrantsRefused` says which are open); gateways still refuse tokens without a user
    /// session unless an McpServer lists the client in `spec.auth.serviceAccountClients`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub allowed_machine_grants: Vec<MachineGrant>,

    /// How a token names the McpServer it is for (its `aud`). `Scope`: each server has a client
    /// scope `mcp:server:{namespace}:{name}` the client requests, which adds the server's URL.
    /// `ResourceIndicator`: the client sends the MCP spec's `resource=<url>` (RFC 8707) and
    /// Keycloak's `resource-indicators` feature narrows `aud` to that URL; no per-server scope.
    /// `Auto` (default): `ResourceIndicator` when Keycloak has the feature, else `Scope`
    /// (condition `AudienceMode` says which and why).
    #[serde(default)]
    pub audience: AudienceMode,

    /// What happens in Keycloak when this policy is deleted: `Delete` removes the client scopes the
    /// operator created and closes anonymous registration again; `Retain` leaves Keycloak as is.
    /// Either way the policy's claim on the realm is released. The realm itself is never deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// OAuth grants that obtain a token without an interactive user login.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum MachineGrant {
    /// `client_credentials`: a service-account token, no user at all.
    ClientCredentials,
    /// `password` (resource owner password credentials): no browser, no consent.
    Password,
    /// `urn:ietf:params:oauth:grant-type:device_code`.
    DeviceCode,
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    TokenExchange,
}

impl MachineGrant {
    pub const ALL: [MachineGrant; 4] = [
        MachineGrant::ClientCredentials,
        MachineGrant::Password,
        MachineGrant::DeviceCode,
        MachineGrant::TokenExchange,
    ];

    /// The `grant_type` value, as Keycloak's `grant-type` client-policy condition names it.
    pub fn grant_type(self) -> &'static str {
        match self {
            MachineGrant::ClientCredentials => "client_credentials",
            MachineGrant::Password => "password",
            MachineGrant::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
            MachineGrant::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }
}

fn default_scopes() -> Vec<ScopeSpec> {
    vec![ScopeSpec {
        name: "mcp:tools".into(),
        description: None,
        consent_text: None,
        include_in_token_scope: true,
        r#type: ScopeType::Optional,
        implies: vec![],
    }]
}

/// The Keycloak the policy configures, how it is reached, and with which admin credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeycloakConnection {
    /// Base URL the operator and the MCP pods use, e.g. `http://keycloak.keycloak.svc:8080`
    /// (no trailing slash, no query).
    #[schemars(length(max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && !self.endsWith('/') && !self.contains('?') && !self.contains('#')").message("must be an absolute http(s) URL without trailing slash, query or fragment"))]
    pub url: String,

    /// Browser-facing base URL of Keycloak (the issuer's base). Defaults to `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && !self.endsWith('/') && !self.contains('?') && !self.contains('#')").message("must be an absolute http(s) URL without trailing slash, query or fragment"))]
    pub public_url: Option<String>,

    /// Realm to configure, e.g. `acme`. Immutable: objects already written to a realm would be orphaned.
    #[schemars(schema_with = "managed_realm_name")]
    pub realm: String,

    /// Create the realm if it does not exist (default false: a missing realm is an error).
    #[serde(default)]
    pub create_realm: bool,

    /// Secret (same namespace) with either `username`/`password` (password grant of `admin-cli`) or
    /// `clientId`/`clientSecret` (a service account: the least-privilege choice), and `url`: the
    /// Keycloak base URL the credentials belong to, equal to `url` above (plus optional
    /// `authRealm`). The operator sends the credentials to that Keycloak and realm only.
    pub admin_credentials_secret_ref: AdminCredentialsSecretRef,

    /// Optional PEM CA bundle (a Secret key) to verify an https Keycloak. Default: the system's
    /// trust roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyRef>,
}

/// The Secret with the Keycloak admin credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdminCredentialsSecretRef {
    /// Name of the Secret in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Realm the admin credentials belong to (default `master`). Must equal the Secret's
    /// `authRealm` key (default `master` too): the operator sends the credentials nowhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "realm_name")]
    pub auth_realm: Option<String>,
}

/// A key of a Secret in the policy's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret (default `ca.crt`).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScopeSpec {
    /// Scope name as clients request it, e.g. `mcp:tools`. Not one of Keycloak's built-in scopes
    /// and not `mcp:server:*` (the operator's per-server audience scopes).
    #[schemars(schema_with = "policy_scope_name")]
    pub name: String,
    /// Description shown in Keycloak's admin console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Text on Keycloak's consent screen (defaults to the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub consent_text: Option<String>,
    /// Put the scope into the token's `scope` claim (needed by MCP servers that check scopes).
    #[serde(default = "default_true")]
    pub include_in_token_scope: bool,
    /// `Default`: every new client of the realm gets it; `Optional`: clients request it.
    #[serde(default)]
    pub r#type: ScopeType,
    /// Narrower scopes of this policy that this one implies (e.g. `mcp:admin` implies
    /// `mcp:tools`): a token with this scope satisfies servers and tools that require those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schemas::implied_scopes")]
    pub implies: Vec<String>,
}

fn default_true() -> bool {
    true
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ScopeType {
    Default,
    #[default]
    Optional,
}

impl ScopeType {
    /// As Keycloak's console and Admin API paths name it.
    pub fn name(self) -> &'static str {
        match self {
            ScopeType::Default => "default",
            ScopeType::Optional => "optional",
        }
    }
}

/// The audience mode a policy asks for (`spec.audience`).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum AudienceMode {
    /// `ResourceIndicator` when Keycloak runs with `resource-indicators`, else `Scope`.
    #[default]
    Auto,
    /// A per-server client scope the client requests puts the server's URL in `aud`.
    Scope,
    /// `resource=<url>` narrows `aud` to the URL (Keycloak's `resource-indicators` feature).
    ResourceIndicator,
}

/// The audience mode in effect (`status.audienceMode` of both kinds).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ActiveAudience {
    #[default]
    Scope,
    ResourceIndicator,
}

impl ActiveAudience {
    pub fn name(self) -> &'static str {
        match self {
            ActiveAudience::Scope => "Scope",
            ActiveAudience::ResourceIndicator => "ResourceIndicator",
        }
    }
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// Well-known MCP clients whose registration hosts the operator knows, so users need not learn
/// Keycloak's host-matching rules.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum TrustedClient {
    /// VS Code: `vscode.dev`, `insiders.vscode.dev` (redirects), `code.visualstudio.com`
    /// (`client_uri`), loopback redirects `127.0.0.1` and `localhost`.
    VSCode,
    /// Claude (claude.ai, Desktop, Code): `claude.ai`, `claude.com`, loopback.
    Claude,
    /// MCP Inspector: loopback callbacks only.
    MCPInspector,
}

impl TrustedClient {
    /// Hosts Keycloak's Trusted Hosts policy must list for this client's registration request.
    pub fn hosts(self) -> &'static [&'static str] {
        match self {
            TrustedClient::VSCode => &[
                "vscode.dev",
                "insiders.vscode.dev",
                "code.visualstudio.com",
                "127.0.0.1",
                "localhost",
            ],
            TrustedClient::Claude => &["claude.ai", "claude.com", "127.0.0.1", "localhost"],
            TrustedClient::MCPInspector => &["127.0.0.1", "localhost"],
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DynamicClientRegistration {
    /// Allow anonymous registration. `false` closes it (empty Trusted Hosts, both checks on).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Hosts allowed in registered clients' URIs (and, if `requireSendingHostMatch`, as the sender):
    /// exact host names or IPs, or `*.domain`. No scheme, port, path or bare `*`.
    #[serde(default)]
    #[schemars(schema_with = "super::schemas::trusted_hosts")]
    pub trusted_hosts: Vec<String>,

    /// Presets that add the hosts well-known MCP clients register with.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub trusted_clients: Vec<TrustedClient>,

    /// Keycloak "Host Sending Client Registration Request Must Match": the requester's IP must
    /// resolve from a trusted host. Off by default: MCP clients register from user machines.
    #[serde(default)]
    pub require_sending_host_match: bool,

    /// Keycloak "Client URIs Must Match": redirect and client URIs must use trusted hosts.
    #[serde(default = "default_true")]
    pub require_client_uris_match: bool,

    /// Extra client scopes registered clients may ask for (the policy's own scopes are always allowed).
    #[serde(default)]
    #[schemars(schema_with = "super::schemas::allowed_client_scopes")]
    pub allowed_client_scopes: Vec<String>,

    /// Maximum number of clients in the realm (all clients count, not just registered ones).
    #[serde(default = "default_max_clients")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_clients: i32,

    /// Registered clients must ask the user for consent (Keycloak's default; recommended).
    #[serde(default = "default_true")]
    pub consent_required: bool,

    /// Delete clients anonymous registration created once nobody uses them (see `Reaping`).
    /// Absent: registered clients are never deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaping: Option<Reaping>,
}

/// Reaping abandoned clients: a client is deleted once it is older than `minAge`, has had no
/// login, code-to-token or refresh for `idleAfter` (Keycloak's stored login events, which the
/// operator turns on with a retention of at least both durations) and has no online or offline
/// session. Durations are a whole number and one unit: `s`, `m`, `h` or `d` (`90s`, `12h`, `30d`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reaping {
    /// A client younger than this is never deleted (default `1d`).
    #[serde(default = "default_min_age")]
    #[schemars(schema_with = "reaping_duration")]
    pub min_age: String,

    /// How long a client must have been unused: no login, code-to-token or refresh event and no
    /// session (default `30d`).
    #[serde(default = "default_idle_after")]
    #[schemars(schema_with = "reaping_duration")]
    pub idle_after: String,

    /// At most this many clients are deleted per reconcile (default 10).
    #[serde(default = "default_max_per_run")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_per_run: i32,

    /// Delete nothing: list the clients that would be deleted in `status.reaping` and an event.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_min_age() -> String {
    "1d".into()
}

fn default_idle_after() -> String {
    "30d".into()
}

fn default_max_per_run() -> i32 {
    10
}

/// The duration syntax of `reaping`: one positive whole number and one unit.
pub const DURATION_PATTERN: &str = "^[1-9][0-9]{0,5}[smhd]$";

fn reaping_duration(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 7,
        "x-kubernetes-validations": [{
            "rule": super::schemas::cel_matches(DURATION_PATTERN),
            "message": "durations are a whole number of at most 6 digits and one unit: s, m, h or d (e.g. 90s, 12h, 30d)"
        }]
    })
}

/// Parses a `reaping` duration (`90s`, `12h`, `30d`); `None` for anything else.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = s[..s.len() - 1].parse().ok()?;
    (n > 0).then(|| std::time::Duration::from_secs(n * unit))
}

fn default_max_clients() -> i32 {
    200
}

/// Well-known MCP clients that identify themselves with a Client ID Metadata Document.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum CimdTrustedClient {
    /// VS Code: `client_id` on `vscode.dev`, redirects on `127.0.0.1` (loopback) and
    /// `insiders.vscode.dev` (VS Code lists `https://insiders.vscode.dev/redirect` among its
    /// redirect URIs; every URI of a document must be on a permitted domain).
    VSCode,
    /// Claude (claude.ai, Desktop, Code): `client_id` on `claude.ai`, loopback redirects on
    /// `localhost` and `127.0.0.1`.
    Claude,
}

impl CimdTrustedClient {
    /// Hosts this client's `client_id` (its metadata document URL) is on.
    pub fn client_id_domains(self) -> &'static [&'static str] {
        match self {
            CimdTrustedClient::VSCode => &["vscode.dev"],
            CimdTrustedClient::Claude => &["claude.ai"],
        }
    }

    /// Further hosts its metadata document names (redirect URIs), never accepted as `client_id`.
    pub fn redirect_domains(self) -> &'static [&'static str] {
        match self {
            CimdTrustedClient::VSCode => &["127.0.0.1", "insiders.vscode.dev"],
            CimdTrustedClient::Claude => &["localhost", "127.0.0.1"],
        }
    }
}

/// Loopback hosts: the only ones `allowHttp` accepts.
pub const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!self.allowHttp || (self.trustedDomains.all(d, d in ['localhost', '127.0.0.1', '[::1]']) && self.redirectDomains.all(d, d in ['localhost', '127.0.0.1', '[::1]']) && size(self.trustedClients) == 0)").message("allowHttp is for loopback testing only: every trustedDomains and redirectDomains entry must be localhost, 127.0.0.1 or [::1], and trustedClients must be empty"))]
#[x_kube(validation = kube::core::Rule::new("!self.enabled || size(self.trustedDomains) > 0 || size(self.trustedClients) > 0").message("name at least one trustedDomains entry or trustedClients preset: Keycloak admits no client_id otherwise"))]
pub struct ClientIdMetadataDocuments {
    /// Accept metadata-document clients. `false` removes the operator's client profile and
    /// policy (as does removing the section).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Hosts a `client_id` URL may be on: exact host names or IPs, or `*.domain` (the domain and
    /// its subdomains). Keycloak fetches documents only from these.
    #[serde(default)]
    #[schemars(schema_with = "cimd_domains")]
    pub trusted_domains: Vec<String>,

    /// Further hosts a document's URIs (redirect URIs, `client_uri`, `logo_uri`, ...) may use, but
    /// a `client_id` may not, e.g. `127.0.0.1` for loopback redirects.
    #[serde(default)]
    #[schemars(schema_with = "cimd_domains")]
    pub redirect_domains: Vec<String>,

    /// Presets: `VSCode` (`client_id` on `vscode.dev`, redirects on `127.0.0.1`), `Claude`
    /// (`client_id` on `claude.ai`, redirects on `localhost` and `127.0.0.1`).
    #[serde(default)]
    #[schemars(length(max = 4))]
    pub trusted_clients: Vec<CimdTrustedClient>,

    /// Accept `http` `client_id` URLs and document URIs. For loopback testing only: rejected at
    /// admission unless every domain is `localhost`, `127.0.0.1` or `[::1]`.
    #[serde(default)]
    pub allow_http: bool,

    /// The `client_id`, the redirect URI and the document's URIs must all be under one trusted
    /// domain (Keycloak "Restrict same domain").
    #[serde(default)]
    pub restrict_same_domain: bool,

    /// Metadata properties a document must contain, e.g. `client_name`, `logo_uri`.
    #[serde(default)]
    #[schemars(schema_with = "cimd_required_properties")]
    pub required_properties: Vec<String>,

    /// Delete the clients Keycloak created from admitted documents once nobody uses them (see
    /// `Reaping`; Keycloak creates the client again from its document at its next login).
    /// Absent: they are kept while admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaping: Option<Reaping>,
}

fn cimd_domains(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "string",
            "maxLength": 253,
            "x-kubernetes-validations": [{
                "rule": format!("self == '[::1]' || {}", super::schemas::cel_matches(HOST_PATTERN)),
                "message": "domains must be a lowercase host name, an IP address, '[::1]' or '*.domain' with at least two labels after '*.' (no scheme, port, path, bare '*' or '*.tld')"
            }]
        }
    })
}

/// A realm name (also `authRealm`): one URL path segment.
fn realm_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": super::schemas::cel_matches(REALM_PATTERN),
            "message": "realm names start with a letter or digit and contain only letters, digits, '.', '_' and '-'"
        }]
    })
}

/// `realm`: a realm name that never changes (objects written to a realm would be orphaned).
fn managed_realm_name(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = realm_name(g);
    schema
        .get_mut("x-kubernetes-validations")
        .and_then(|v| v.as_array_mut())
        .expect("realm_name has validations")
        .push(serde_json::json!({
            "rule": "self == oldSelf",
            "message": "realm is immutable; create a new McpAuthPolicy instead"
        }));
    schema
}

/// A policy scope's name: a scope token that is neither built in nor an audience scope's name.
fn policy_scope_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let built_in = BUILT_IN_SCOPES
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "x-kubernetes-validations": [
            {
                "rule": super::schemas::cel_matches(SCOPE_PATTERN),
                "message": "scope names are RFC 6749 scope tokens: printable ASCII without spaces, quotes or backslashes"
            },
            {
                "rule": format!("!(self in [{built_in}])"),
                "message": format!("scope names may not be one of Keycloak's built-in client scopes ({})", BUILT_IN_SCOPES.join(", "))
            },
            {
                "rule": format!("!self.startsWith('{AUDIENCE_SCOPE_PREFIX}')"),
                "message": format!("scope names starting with {AUDIENCE_SCOPE_PREFIX} are reserved for the operator's per-server audience scopes")
            }
        ]
    })
}

fn cimd_required_properties(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 16,
        "items": {
            "type": "string",
            "maxLength": 64,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[a-z][a-z0-9_]*$')",
                "message": "requiredProperties entries are client metadata property names such as client_name or logo_uri"
            }]
        }
    })
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
/// What the operator last did for this policy, written by the operator only. Its conditions:
/// `Ready`, `KeycloakReachable`, `RealmConfigured`, `RegistrationPolicyApplied`,
/// `MachineGrantsRefused`, `ClientIdMetadataDocumentsApplied`, `ClientLimitPressure` (with
/// `dynamicClientRegistration`), `Stalled`.
pub struct McpAuthPolicyStatus {
    #[serde(flatten)]
    pub observed: super::Observed,
    /// Issuer as clients see it: `{publicUrl}/realms/{realm}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Anonymous DCR endpoint, when registration is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
    /// Clients in the realm now, against `maxClients`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm_clients: Option<i64>,
    /// The realm this policy has claimed (recorded before its first Keycloak write, so deletion
    /// knows whether anything must be cleaned up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_realm: Option<String>,
    /// The audience mode in effect for this policy's servers (see `spec.audience` and the
    /// `AudienceMode` condition); absent until decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_mode: Option<ActiveAudience>,
    /// What reaping did (with a `reaping` block in the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaping: Option<ReapingStatus>,
}

/// What reaping abandoned clients did in the policy's realm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReapingStatus {
    /// Clients deleted by reaping, in total.
    #[serde(default)]
    pub reaped_total: i64,
    /// When a client was last deleted by reaping (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reaped_at: Option<String>,
    /// `dryRun`: the `clientId`s reaping would delete now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run_candidates: Vec<String>,
    /// Since when (RFC 3339) Keycloak has stored the login events reaping reads, as the operator
    /// last found or made the realm's event settings sufficient: a client counts as unused only
    /// for time covered by events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_since: Option<String>,
}

super::status_with_conditions!(McpAuthPolicyStatus);
