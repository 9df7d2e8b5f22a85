//! Command-line / environment configuration of the auth gateway and its validation.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use url::Url;

use super::auth::Rules;
use super::contract::{self, ALLOWED_ORIGINS_ENV, CLIENT_SECRET_ENV};
use super::metadata::{self, Resource};
use super::scopes::{is_scope_token, ScopeRules};
use super::GatewayError;

/// Default bound on request bodies (4 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The introspection client's secret. `Debug` never shows the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; only the introspection client calls this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

/// Configuration of `mcp-keycloak-operator proxy`.
///
/// Every flag can also be given through the environment variable named in its help.
/// The client secret is deliberately not a flag: it comes from `client_secret` (set
/// programmatically), else the file named by `--client-secret-file`, else the
/// `OAUTH_CLIENT_SECRET` environment variable.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Auth gateway")]
pub struct GatewayConfig {
    /// Address the proxied MCP endpoint listens on.
    #[arg(long, env = contract::LISTEN_ENV, default_value_t = contract::LISTEN)]
    pub listen: SocketAddr,

    /// Address of the admin listener serving `/healthz` and `/metrics` (unauthenticated,
    /// kept off the MCP port so no MCP server path is shadowed).
    #[arg(long, env = contract::ADMIN_LISTEN_ENV, default_value_t = contract::ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// Base URL of the MCP server behind the gateway (plain http, usually localhost).
    #[arg(long, env = contract::UPSTREAM_ENV, default_value = contract::DEFAULT_UPSTREAM)]
    pub upstream: String,

    /// Canonical URL of the MCP server as clients see it: the protected-resource
    /// metadata `resource` and the audience every token must carry. Used verbatim.
    #[arg(long, env = contract::SERVER_URL_ENV)]
    pub resource_url: String,

    /// Keycloak issuer as browsers see it (`{publicUrl}/realms/{realm}`), advertised
    /// verbatim in `authorization_servers`.
    #[arg(long, env = contract::ISSUER_ENV)]
    pub issuer: String,

    /// RFC 7662 introspection endpoint reachable from the pod
    /// (`{url}/realms/{realm}/protocol/openid-connect/token/introspect`).
    #[arg(long, env = contract::INTROSPECTION_ENDPOINT_ENV)]
    pub introspection_endpoint: String,

    /// Confidential client used for introspection (HTTP basic auth).
    #[arg(long, env = contract::CLIENT_ID_ENV)]
    pub client_id: String,

    /// Introspection client secret; never a flag. See the type-level docs.
    #[arg(skip)]
    pub client_secret: Option<ClientSecret>,

    /// File holding the introspection client secret (e.g. a mounted Secret); takes
    /// precedence over `OAUTH_CLIENT_SECRET`.
    #[arg(long, env = "OAUTH_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,

    /// Space-separated scopes every token must carry (e.g. `mcp:tools`).
    #[arg(long, env = contract::REQUIRED_SCOPES_ENV, default_value = "")]
    pub required_scopes: String,

    /// Per-tool scopes and the scope hierarchy, JSON:
    /// `{"tools":[{"name":"delete_*","scopes":["mcp:admin"]}],"implies":{"mcp:admin":["mcp:tools"]}}`.
    /// A `tools/call` needs the first matching rule's scopes besides `--required-scopes`, and
    /// `tools/list` answers show only the tools the token may call.
    #[arg(long, env = contract::SCOPE_RULES_ENV, default_value = "")]
    pub scope_rules: String,

    /// Optional human-readable `resource_name` for the protected-resource metadata.
    #[arg(long, env = "MCP_RESOURCE_NAME")]
    pub resource_name: Option<String>,

    /// Upper bound, in seconds, on how long a positive introspection result is reused
    /// (never beyond the token's `exp`). 0 disables caching.
    #[arg(
        long = "cache-ttl",
        env = "MCP_GATEWAY_CACHE_TTL_SECONDS",
        default_value_t = 30
    )]
    pub cache_ttl_seconds: u64,

    /// How long, in seconds, an inactive-token answer is reused (capped by `--cache-ttl`).
    #[arg(
        long = "negative-cache-ttl",
        env = "MCP_GATEWAY_NEGATIVE_CACHE_TTL_SECONDS",
        default_value_t = 5
    )]
    pub negative_cache_ttl_seconds: u64,

    /// Maximum number of cached introspection results.
    #[arg(long, env = "MCP_GATEWAY_CACHE_MAX_ENTRIES", default_value_t = 10_000)]
    pub cache_max_entries: usize,

    /// Largest request body forwarded upstream; larger ones get 413.
    #[arg(long, env = "MCP_GATEWAY_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Timeout of one introspection call, in milliseconds.
    #[arg(
        long,
        env = "MCP_GATEWAY_INTROSPECTION_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub introspection_timeout_ms: u64,

    /// PEM bundle of extra CA certificates trusted for an https introspection endpoint.
    #[arg(long, env = "MCP_GATEWAY_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// After a shutdown signal, how long (seconds) open streams may drain.
    #[arg(long, env = "MCP_GATEWAY_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    /// Clients (`client_id`/`azp`, comma- or space-separated) whose tokens may lack a user
    /// session (client credentials). Empty: every token must come from a user's login.
    #[arg(long, env = contract::SERVICE_ACCOUNT_CLIENTS_ENV, default_value = "")]
    pub service_account_clients: String,

    /// `Scope`: the resource URL anywhere in the introspected `aud`. `ResourceIndicator`: the
    /// token's own `aud` must be exactly the URL (RFC 8707 `resource` narrowed it).
    #[arg(long, env = contract::AUDIENCE_MODE_ENV, default_value = "Scope",
          value_parser = ["Scope", contract::AUDIENCE_MODE_RESOURCE_INDICATOR])]
    pub audience_mode: String,

    /// Browser origins (comma- or space-separated, `scheme://host[:port]`) allowed besides the
    /// resource URL's own; requests with any other `Origin` get 403.
    #[arg(long, env = ALLOWED_ORIGINS_ENV, default_value = "")]
    pub allowed_origins: String,

    /// Refuse bearer tokens that are not JWTs before introspection (Keycloak issues JWTs).
    #[arg(long, env = "MCP_GATEWAY_REQUIRE_JWT", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_jwt: bool,

    /// Maximum open client connections on the MCP listener; further ones are closed at once.
    #[arg(long, env = "MCP_GATEWAY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Maximum requests (including open streams) handled at once; further ones get 503.
    #[arg(long, env = "MCP_GATEWAY_MAX_INFLIGHT", default_value_t = 512)]
    pub max_inflight: usize,

    /// Time a client has to send a request's headers, in milliseconds.
    #[arg(long, env = "MCP_GATEWAY_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Time a client has to send a request's body, in milliseconds (408 after it).
    #[arg(long, env = "MCP_GATEWAY_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Introspections of not-yet-known tokens per second, in total (token bucket refill).
    #[arg(long, env = "MCP_GATEWAY_INTROSPECTION_RATE", default_value_t = 50.0)]
    pub introspection_rate: f64,

    /// Burst size of the total introspection bucket.
    #[arg(long, env = "MCP_GATEWAY_INTROSPECTION_BURST", default_value_t = 100)]
    pub introspection_burst: u32,

    /// Seconds between two MCP handshakes with the upstream (live verification, published as
    /// `/mcp-status` on the admin listener); after a failure it retries sooner. 0: no probing.
    #[arg(long = "probe-interval", env = contract::PROBE_INTERVAL_ENV, default_value_t = 30)]
    pub probe_interval_seconds: u64,

    /// Path of the upstream's MCP endpoint that the probe calls. Default: the resource URL's
    /// path, else `/mcp`.
    #[arg(long, env = contract::PROBE_PATH_ENV)]
    pub probe_path: Option<String>,

    /// Introspections of not-yet-known tokens per second and client address.
    #[arg(
        long,
        env = "MCP_GATEWAY_INTROSPECTION_RATE_PER_CLIENT",
        default_value_t = 5.0
    )]
    pub introspection_rate_per_client: f64,

    /// Burst size of each client address's introspection bucket.
    #[arg(
        long,
        env = "MCP_GATEWAY_INTROSPECTION_BURST_PER_CLIENT",
        default_value_t = 20
    )]
    pub introspection_burst_per_client: u32,
}

impl GatewayConfig {
    /// A configuration with every optional setting at its flag's default (the environment is
    /// not read), for embedding and tests.
    pub fn new(
        resource_url: impl Into<String>,
        issuer: impl Into<String>,
        introspection_endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
    ) -> Self {
        let required = [
            ("resource-url", resource_url.into()),
            ("issuer", issuer.into()),
            ("introspection-endpoint", introspection_endpoint.into()),
            ("client-id", client_id.into()),
        ];
        let argv = std::iter::once("gateway".to_owned()).chain(
            required
                .iter()
                .map(|(flag, value)| format!("--{flag}={value}")),
        );
        // The flags are the one place the defaults are written; parse them without the
        // environment so a variable of this process cannot change what `new` returns.
        let matches = Self::augment_args(clap::Command::new("gateway"))
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(argv)
            .expect("the required flags are given and every other flag has a default");
        let mut config = Self::from_arg_matches(&matches).expect("matches of the gateway's flags");
        config.client_secret = Some(client_secret);
        config
    }

    /// The configuration a gateway gets from `vars` as its environment (what the operator writes
    /// into a pod), every other flag at its default; the process environment is not read.
    pub fn from_env_vars(
        vars: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, GatewayError> {
        let command = Self::augment_args(clap::Command::new("gateway"));
        let mut argv = vec!["gateway".to_owned()];
        for arg in command.get_arguments() {
            let env = arg.get_env().and_then(|e| e.to_str());
            if let (Some(value), Some(long)) = (env.and_then(|e| vars.get(e)), arg.get_long()) {
                argv.push(format!("--{long}={value}"));
            }
        }
        let matches = (command.mut_args(|arg| arg.env(None)))
            .try_get_matches_from(argv)
            .map_err(|e| config_err(e.to_string()))?;
        let mut config = Self::from_arg_matches(&matches).map_err(|e| config_err(e.to_string()))?;
        config.client_secret = vars.get(CLIENT_SECRET_ENV).cloned().map(ClientSecret::new);
        Ok(config)
    }

    /// Checks the configuration and derives everything the gateway needs at run time.
    pub(crate) fn validate(&self) -> Result<Settings, GatewayError> {
        let resource = check_resource_url(&self.resource_url)?;
        let metadata_url = metadata::metadata_url(&resource);
        let metadata_paths = metadata::metadata_paths(&resource);

        let issuer = check_issuer(&self.issuer)?;

        let introspection = self.introspection()?;
        let required_scopes = parse_scopes(&self.required_scopes)?;
        let scope_rules = ScopeRules::parse(&self.scope_rules)
            .map_err(config_err)?
            .into();
        let upstream = Upstream::parse(&self.upstream)?;

        if self.cache_max_entries == 0 && self.cache_ttl_seconds > 0 {
            return Err(config_err(
                "--cache-max-entries must be positive (use --cache-ttl 0 to disable caching)",
            ));
        }
        if self.introspection_timeout_ms == 0 {
            return Err(config_err("--introspection-timeout-ms must be positive"));
        }

        let limits = self.limits()?;
        let allowed_origins = allowed_origins(&resource, &self.allowed_origins)?;
        let service_account_clients = split_list(&self.service_account_clients);
        let probe = self.probe(&upstream, &resource)?;
        Ok(Settings {
            probe,
            allowed_origins,
            service_account_clients,
            require_jwt: self.require_jwt,
            limits,
            resource,
            issuer,
            resource_name: self.resource_name.clone().filter(|n| !n.trim().is_empty()),
            metadata_url,
            metadata_paths,
            required_scopes,
            scope_rules,
            upstream,
            introspection,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
        })
    }

    /// The introspection endpoint, its client and the answer cache (the cache's bounds are
    /// checked by `validate`, after the scopes and the upstream).
    fn introspection(&self) -> Result<IntrospectionSettings, GatewayError> {
        let endpoint = Url::parse(self.introspection_endpoint.trim())
            .map_err(|e| config_err(format!("--introspection-endpoint is not a URL: {e}")))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(config_err(
                "--introspection-endpoint must be an http(s) URL",
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(config_err("--client-id / OAUTH_CLIENT_ID is empty"));
        }
        let client_secret = self.resolve_secret()?;
        let ttl = Duration::from_secs(self.cache_ttl_seconds);
        Ok(IntrospectionSettings {
            endpoint,
            client_id: self.client_id.trim().to_owned(),
            client_secret,
            timeout: Duration::from_millis(self.introspection_timeout_ms),
            ca_bundle: self.ca_bundle.clone(),
            cache_ttl: ttl,
            negative_cache_ttl: Duration::from_secs(self.negative_cache_ttl_seconds).min(ttl),
            cache_max_entries: self.cache_max_entries,
            narrowed_audience: self.audience_mode == contract::AUDIENCE_MODE_RESOURCE_INDICATOR,
        })
    }

    /// The probe's MCP endpoint on the upstream, and its period.
    fn probe(
        &self,
        upstream: &Upstream,
        resource: &Resource,
    ) -> Result<ProbeSettings, GatewayError> {
        let path = match &self.probe_path {
            Some(p) => p.trim().to_owned(),
            None => contract::mcp_endpoint_path(&resource.raw),
        };
        if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace)
        {
            return Err(config_err(format!(
                "--probe-path {path:?} must be an absolute path without query or fragment"
            )));
        }
        let raw = format!("http://{}{}{path}", upstream.authority, upstream.base_path);
        let endpoint = Url::parse(&raw)
            .map_err(|e| config_err(format!("probe endpoint {raw:?} is not a URL: {e}")))?;
        Ok(ProbeSettings {
            interval: Duration::from_secs(self.probe_interval_seconds),
            endpoint,
        })
    }

    fn limits(&self) -> Result<Limits, GatewayError> {
        if self.max_connections == 0 || self.max_inflight == 0 {
            return Err(config_err(
                "--max-connections and --max-inflight must be positive",
            ));
        }
        if self.header_timeout_ms == 0 || self.body_timeout_ms == 0 {
            return Err(config_err(
                "--header-timeout-ms and --body-timeout-ms must be positive",
            ));
        }
        let rates = [self.introspection_rate, self.introspection_rate_per_client];
        if rates.iter().any(|r| !r.is_finite() || *r <= 0.0)
            || self.introspection_burst == 0
            || self.introspection_burst_per_client == 0
        {
            return Err(config_err(
                "introspection rates and bursts must be positive",
            ));
        }
        Ok(Limits {
            max_connections: self.max_connections,
            max_inflight: self.max_inflight,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            total: Bucket {
                rate: self.introspection_rate,
                burst: self.introspection_burst,
            },
            per_client: Bucket {
                rate: self.introspection_rate_per_client,
                burst: self.introspection_burst_per_client,
            },
        })
    }

    fn resolve_secret(&self) -> Result<ClientSecret, GatewayError> {
        let secret = if let Some(secret) = &self.client_secret {
            secret.clone()
        } else if let Some(path) = &self.client_secret_file {
            let raw = std::fs::read_to_string(path).map_err(|source| GatewayError::ReadFile {
                what: "client secret",
                path: path.clone(),
                source,
            })?;
            ClientSecret::new(raw.trim_end_matches(['\r', '\n']))
        } else {
            ClientSecret::new(std::env::var(CLIENT_SECRET_ENV).unwrap_or_default())
        };
        if secret.expose().is_empty() {
            return Err(config_err(format!(
                "no introspection client secret: set {CLIENT_SECRET_ENV} or --client-secret-file"
            )));
        }
        Ok(secret)
    }
}

fn check_issuer(raw: &str) -> Result<String, GatewayError> {
    let issuer = raw.trim();
    let issuer_url = Url::parse(issuer)
        .map_err(|e| config_err(format!("--issuer {issuer:?} is not a URL: {e}")))?;
    if !matches!(issuer_url.scheme(), "http" | "https") {
        return Err(config_err("--issuer must be an http(s) URL"));
    }
    if issuer.ends_with('/') {
        // Keycloak's issuer has no trailing slash and clients compare it exactly.
        tracing::warn!(%issuer, "--issuer ends with '/'; Keycloak's issuer has none and MCP clients compare it exactly");
    }
    Ok(issuer.to_owned())
}

fn config_err(msg: impl Into<String>) -> GatewayError {
    GatewayError::Config(msg.into())
}

/// Items of a comma- or space-separated list, deduplicated, order kept.
pub fn split_list(list: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for item in list.split([',', ' ', '\t', '\n']).filter(|i| !i.is_empty()) {
        if !items.iter().any(|i| i == item) {
            items.push(item.to_owned());
        }
    }
    items
}

/// The ASCII serialization of an origin (`scheme://host[:port]`, default port dropped), or
/// `None` for anything that is not a plain http(s) origin.
pub(crate) fn normalize_origin(raw: &str) -> Option<String> {
    let url = Url::parse(raw.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    // An origin has no path, query or credentials; refuse anything that carries them.
    if !matches!(url.path(), "" | "/") || url.query().is_some() || !url.username().is_empty() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

/// The resource URL's own origin first, then the configured extra ones.
fn allowed_origins(resource: &Resource, extra: &str) -> Result<Vec<String>, GatewayError> {
    let mut origins = vec![resource.parsed.origin().ascii_serialization()];
    for raw in split_list(extra) {
        let origin = normalize_origin(&raw).ok_or_else(|| {
            config_err(format!(
                "{ALLOWED_ORIGINS_ENV}: {raw:?} is not an http(s) origin (scheme://host[:port])"
            ))
        })?;
        if !origins.contains(&origin) {
            origins.push(origin);
        }
    }
    Ok(origins)
}

/// A token bucket's shape: `burst` tokens, refilled at `rate` per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bucket {
    pub rate: f64,
    pub burst: u32,
}

/// Bounds on the work anyone can make the gateway do.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub max_inflight: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub total: Bucket,
    pub per_client: Bucket,
}

fn check_resource_url(raw: &str) -> Result<Resource, GatewayError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(config_err("--resource-url / MCP_SERVER_URL is required"));
    }
    if raw
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c.is_control())
    {
        return Err(config_err(
            "--resource-url contains whitespace, quotes or backslashes",
        ));
    }
    let parsed = Url::parse(raw)
        .map_err(|e| config_err(format!("--resource-url {raw:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(config_err("--resource-url must be an http(s) URL"));
    }
    if parsed.host_str().is_none() {
        return Err(config_err("--resource-url has no host"));
    }
    if parsed.fragment().is_some() || parsed.query().is_some() {
        return Err(config_err(
            "--resource-url must not have a query or fragment",
        ));
    }
    Ok(Resource {
        raw: raw.to_owned(),
        parsed,
    })
}

/// Splits a space-separated scope list, checking each against RFC 6749 `scope-token`.
pub(crate) fn parse_scopes(list: &str) -> Result<Vec<String>, GatewayError> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in list.split_ascii_whitespace() {
        if !is_scope_token(scope) {
            return Err(config_err(format!(
                "invalid scope {scope:?} in --required-scopes"
            )));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    Ok(scopes)
}

/// Where requests are forwarded: `http://authority[/base]`.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub authority: http::uri::Authority,
    /// Path prefix without a trailing slash ("" for none).
    pub base_path: String,
}

impl Upstream {
    fn parse(raw: &str) -> Result<Self, GatewayError> {
        let uri: http::Uri = raw
            .trim()
            .parse()
            .map_err(|e| config_err(format!("--upstream {raw:?} is not a URI: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(config_err(
                "--upstream must be a plain http:// URL (the MCP server next to the gateway)",
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| config_err("--upstream has no host"))?;
        if uri.query().is_some() {
            return Err(config_err("--upstream must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            authority,
            base_path,
        })
    }

    /// The upstream URI for an incoming request's path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let pq = if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        };
        let full = format!("{}{}", self.base_path, pq);
        http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(full)
            .build()
    }
}

impl Settings {
    /// The token rules of this resource.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            resource: &self.resource.raw,
            required: &self.required_scopes,
            hierarchy: &self.scope_rules,
            service_account_clients: &self.service_account_clients,
        }
    }
}

/// How tokens are introspected, and how long the answers are reused.
#[derive(Clone, Debug)]
pub(crate) struct IntrospectionSettings {
    /// The RFC 7662 endpoint; its client authenticates with HTTP basic auth.
    pub endpoint: Url,
    pub client_id: String,
    pub client_secret: ClientSecret,
    /// Bound on one call, connecting included.
    pub timeout: Duration,
    /// Extra CA certificates trusted for an https endpoint.
    pub ca_bundle: Option<PathBuf>,
    /// Reuse of an active answer (never beyond the token's `exp`), of an inactive one, and the
    /// number of answers kept.
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub cache_max_entries: usize,
    /// `ResourceIndicator` mode: judge the token's own `aud` (see
    /// [`crate::auth::narrowed_audience`]), not the introspection answer's.
    pub narrowed_audience: bool,
}

/// Live verification: where the MCP handshake goes and how often (zero: never).
#[derive(Clone, Debug)]
pub(crate) struct ProbeSettings {
    pub interval: Duration,
    pub endpoint: Url,
}

/// Validated, derived settings.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub probe: ProbeSettings,
    pub resource: Resource,
    pub issuer: String,
    pub resource_name: Option<String>,
    pub metadata_url: String,
    pub metadata_paths: Vec<String>,
    pub required_scopes: Vec<String>,
    /// Shared with the tool-list filters of answers in flight.
    pub scope_rules: std::sync::Arc<ScopeRules>,
    pub upstream: Upstream,
    pub introspection: IntrospectionSettings,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// Normalized origins allowed to call; the resource URL's own comes first.
    pub allowed_origins: Vec<String>,
    /// Clients whose tokens may lack a user session.
    pub service_account_clients: Vec<String>,
    pub require_jwt: bool,
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GatewayConfig {
        GatewayConfig::new(
            "https://mcp.example.com/mcp",
            "https://kc.example.com/realms/mcp",
            "http://keycloak:8080/realms/mcp/protocol/openid-connect/token/introspect",
            "mcp-gateway",
            ClientSecret::new("s3cr3t-value"),
        )
    }

    #[test]
    fn debug_redacts_the_secret() {
        let dbg = format!("{:?}", config());
        assert!(!dbg.contains("s3cr3t-value"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        let settings = config().validate().unwrap();
        assert!(!format!("{settings:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn resource_url_is_kept_verbatim() {
        let mut c = config();
        c.resource_url = "https://mcp.example.com".into();
        assert_eq!(
            c.validate().unwrap().resource.raw,
            "https://mcp.example.com"
        );
        c.resource_url = "https://mcp.example.com/".into();
        assert_eq!(
            c.validate().unwrap().resource.raw,
            "https://mcp.example.com/"
        );
    }

    #[test]
    fn rejects_bad_urls_and_scopes() {
        for bad in [
            "",
            "mcp.example.com",
            "ftp://x/y",
            "https://x/mcp#frag",
            "https://x/mcp?q=1",
            "https://x/a\"b",
        ] {
            let mut c = config();
            c.resource_url = bad.into();
            assert!(c.validate().is_err(), "accepted resource {bad:?}");
        }
        let mut c = config();
        c.required_scopes = "mcp:tools bad\"scope".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.upstream = "https://127.0.0.1:3000".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.client_secret = Some(ClientSecret::new(""));
        assert!(c.validate().is_err());
    }

    #[test]
    fn allowed_origins_start_with_the_resource_origin_and_are_normalized() {
        let mut c = config();
        c.allowed_origins =
            "https://App.example.com:443, http://localhost:6274 https://app.example.com".into();
        assert_eq!(
            c.validate().unwrap().allowed_origins,
            vec![
                "https://mcp.example.com",
                "https://app.example.com",
                "http://localhost:6274"
            ]
        );
        for bad in ["null", "https://a.example.com/path", "ftp://x", "*"] {
            c.allowed_origins = bad.into();
            assert!(c.validate().is_err(), "accepted origin {bad:?}");
        }
    }

    #[test]
    fn lists_split_on_commas_and_spaces() {
        assert_eq!(split_list(" a,b  c,,a "), vec!["a", "b", "c"]);
        assert!(split_list("").is_empty());
    }

    #[test]
    fn scopes_are_split_and_deduplicated() {
        assert_eq!(
            parse_scopes("  mcp:tools  mcp:prompts mcp:tools ").unwrap(),
            vec!["mcp:tools", "mcp:prompts"]
        );
        assert!(parse_scopes("").unwrap().is_empty());
    }

    #[test]
    fn negative_ttl_is_capped_by_ttl() {
        let mut c = config();
        c.cache_ttl_seconds = 2;
        c.negative_cache_ttl_seconds = 60;
        assert_eq!(
            c.validate().unwrap().introspection.negative_cache_ttl,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn upstream_uri_joins_base_path() {
        let up = Upstream::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(
            up.uri_for("/mcp?x=1").unwrap().to_string(),
            "http://127.0.0.1:3000/mcp?x=1"
        );
        let up = Upstream::parse("http://localhost:8000/base/").unwrap();
        assert_eq!(
            up.uri_for("/mcp").unwrap().to_string(),
            "http://localhost:8000/base/mcp"
        );
    }

    #[test]
    fn secret_from_file() {
        let dir = std::env::temp_dir().join(format!("gw-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let mut c = config();
        c.client_secret = None;
        c.client_secret_file = Some(dir.clone());
        assert_eq!(
            c.validate().unwrap().introspection.client_secret.expose(),
            "from-file"
        );
        std::fs::remove_file(dir).unwrap();
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        gateway: GatewayConfig,
    }

    #[test]
    fn cli_flags_read_these_env_names() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let mut pairs: Vec<(String, String)> = Cli::command()
            .get_arguments()
            .filter_map(|a| {
                Some((
                    a.get_long()?.to_owned(),
                    a.get_env()?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        pairs.sort();
        let expected = [
            ("admin-listen", "MCP_GATEWAY_ADMIN_LISTEN"),
            ("allowed-origins", "MCP_GATEWAY_ALLOWED_ORIGINS"),
            ("audience-mode", "MCP_AUTH_AUDIENCE_MODE"),
            ("body-timeout-ms", "MCP_GATEWAY_BODY_TIMEOUT_MS"),
            ("ca-bundle", "MCP_GATEWAY_CA_BUNDLE"),
            ("cache-max-entries", "MCP_GATEWAY_CACHE_MAX_ENTRIES"),
            ("cache-ttl", "MCP_GATEWAY_CACHE_TTL_SECONDS"),
            ("client-id", "OAUTH_CLIENT_ID"),
            ("client-secret-file", "OAUTH_CLIENT_SECRET_FILE"),
            ("header-timeout-ms", "MCP_GATEWAY_HEADER_TIMEOUT_MS"),
            ("introspection-burst", "MCP_GATEWAY_INTROSPECTION_BURST"),
            (
                "introspection-burst-per-client",
                "MCP_GATEWAY_INTROSPECTION_BURST_PER_CLIENT",
            ),
            ("introspection-endpoint", "MCP_AUTH_INTROSPECTION_ENDPOINT"),
            ("introspection-rate", "MCP_GATEWAY_INTROSPECTION_RATE"),
            (
                "introspection-rate-per-client",
                "MCP_GATEWAY_INTROSPECTION_RATE_PER_CLIENT",
            ),
            (
                "introspection-timeout-ms",
                "MCP_GATEWAY_INTROSPECTION_TIMEOUT_MS",
            ),
            ("issuer", "MCP_AUTH_ISSUER"),
            ("listen", "MCP_GATEWAY_LISTEN"),
            ("max-body-bytes", "MCP_GATEWAY_MAX_BODY_BYTES"),
            ("max-connections", "MCP_GATEWAY_MAX_CONNECTIONS"),
            ("max-inflight", "MCP_GATEWAY_MAX_INFLIGHT"),
            (
                "negative-cache-ttl",
                "MCP_GATEWAY_NEGATIVE_CACHE_TTL_SECONDS",
            ),
            ("probe-interval", "MCP_GATEWAY_PROBE_INTERVAL_SECONDS"),
            ("probe-path", "MCP_GATEWAY_PROBE_PATH"),
            ("require-jwt", "MCP_GATEWAY_REQUIRE_JWT"),
            ("required-scopes", "MCP_REQUIRED_SCOPES"),
            ("resource-name", "MCP_RESOURCE_NAME"),
            ("resource-url", "MCP_SERVER_URL"),
            ("scope-rules", "MCP_SCOPE_RULES"),
            ("service-account-clients", "MCP_SERVICE_ACCOUNT_CLIENTS"),
            (
                "shutdown-grace-seconds",
                "MCP_GATEWAY_SHUTDOWN_GRACE_SECONDS",
            ),
            ("upstream", "MCP_GATEWAY_UPSTREAM"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn a_pods_env_configures_like_the_flags() {
        let vars: std::collections::BTreeMap<String, String> = [
            ("MCP_SERVER_URL", "https://mcp.example.com/mcp"),
            ("MCP_AUTH_ISSUER", "https://kc.example.com/realms/r"),
            (
                "MCP_AUTH_INTROSPECTION_ENDPOINT",
                "http://kc:8080/realms/r/i",
            ),
            ("OAUTH_CLIENT_ID", "mcp.ns.s"),
            ("OAUTH_CLIENT_SECRET", "s3cr3t"),
            (
                "MCP_SCOPE_RULES",
                r#"{"tools":[{"name":"x","scopes":["a"]}]}"#,
            ),
            ("HOST", "127.0.0.1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let c = GatewayConfig::from_env_vars(&vars).unwrap();
        assert_eq!(c.resource_url, "https://mcp.example.com/mcp");
        assert_eq!(c.client_id, "mcp.ns.s");
        assert_eq!(c.scope_rules, vars["MCP_SCOPE_RULES"]);
        assert_eq!(c.client_secret.as_ref().map(|s| s.expose()), Some("s3cr3t"));
        assert_eq!(c.cache_ttl_seconds, 30, "unset flags keep their defaults");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cli_flag_defaults_and_the_secret_is_never_a_flag() {
        use clap::Parser;
        let base = [
            "proxy",
            "--resource-url",
            "https://mcp.example.com/mcp",
            "--issuer",
            "https://kc.example.com/realms/mcp",
            "--introspection-endpoint",
            "http://kc:8080/realms/mcp/protocol/openid-connect/token/introspect",
            "--client-id",
            "gw",
            "--required-scopes",
            "mcp:tools",
        ];
        let cli = Cli::try_parse_from(base).unwrap().gateway;
        assert_eq!(cli.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(cli.admin_listen, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(cli.upstream, "http://127.0.0.1:3000");
        assert_eq!(cli.cache_ttl_seconds, 30);
        assert_eq!(cli.cache_max_entries, 10_000);
        assert_eq!(cli.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(cli.introspection_timeout_ms, 5000);
        assert!(cli.client_secret.is_none());
        assert!(
            cli.require_jwt,
            "Keycloak issues JWTs: shape check on by default"
        );
        assert!(
            cli.service_account_clients.is_empty(),
            "no user-less tokens by default"
        );
        let mut no_jwt = base.to_vec();
        no_jwt.extend(["--require-jwt", "false"]);
        assert!(!Cli::try_parse_from(no_jwt).unwrap().gateway.require_jwt);
        // The secret is never a flag.
        let mut with_secret = base.to_vec();
        with_secret.extend(["--client-secret", "x"]);
        assert!(Cli::try_parse_from(with_secret).is_err());
    }
}
