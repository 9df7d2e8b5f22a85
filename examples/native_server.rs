//! An MCP server that secures itself (`auth.mode: Native`), built on the official Rust SDK
//! (`rmcp`): the seed's server done right, in one file.
//!
//! ```sh
//! HOST=127.0.0.1 PORT=3000 AUTH_HOST=127.0.0.1 AUTH_PORT=8080 AUTH_REALM=acme \
//!   OAUTH_CLIENT_ID=mcp.default.calc OAUTH_CLIENT_SECRET=... cargo run --example native_server
//! ```
//!
//! **Environment** — the seed's variables, all required except `HOST` (default `127.0.0.1`)
//! and `PORT` (default `3000`): `HOST PORT AUTH_HOST AUTH_PORT AUTH_REALM OAUTH_CLIENT_ID
//! OAUTH_CLIENT_SECRET`. Two of the operator's optional extras are read if present:
//! `MCP_SERVER_URL` (the canonical URL, default `http://{HOST}:{PORT}/mcp`; its path must be
//! `/mcp`), `MCP_REQUIRED_SCOPES` (space-separated, default `mcp:tools`) and
//! `MCP_SERVICE_ACCOUNT_CLIENTS` (comma-separated client ids allowed to call without a user,
//! default none). Nothing else.
//! Keycloak is `http://AUTH_HOST:AUTH_PORT` (`https` when `AUTH_PORT` is 443) for both the
//! introspection call and the issuer advertised to clients, so pods and browsers must reach it
//! under the same URL (with a separate `publicUrl`, use `auth.mode: Proxy`).
//!
//! **HTTP surface**
//! - `/mcp`: Streamable HTTP MCP endpoint (tools `add`, `echo`, `whoami`); the McpServer's `url`
//!   must name it exactly, e.g. `http://localhost:3000/mcp`.
//! - `GET /.well-known/oauth-protected-resource/mcp` and `/.well-known/oauth-protected-resource`:
//!   RFC 9728 metadata (`resource` = the URL, `authorization_servers` = [the realm's issuer]).
//!
//! **Every request to `/mcp`** carries `Authorization: Bearer …`, checked by RFC 7662
//! introspection at `…/realms/$AUTH_REALM/protocol/openid-connect/token/introspect` with the
//! confidential client `OAUTH_CLIENT_ID`/`OAUTH_CLIENT_SECRET`:
//! - no token → 401 `WWW-Authenticate: Bearer resource_metadata="…", scope="…"`;
//! - inactive/unknown/expired token, not an access token, `aud` without this server's URL, no
//!   user session (`sid`; a service-account token) from a client not in
//!   `MCP_SERVICE_ACCOUNT_CLIENTS`, or Keycloak refusing our client credentials → 401 with
//!   `error="invalid_token"`;
//! - a required scope missing → 403 `error="insufficient_scope"`;
//! - Keycloak unreachable → 503 (fail closed). Never 500; the token is never logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mcp_auth_gateway::contract::{
    AUTH_HOST_ENV, AUTH_PORT_ENV, AUTH_REALM_ENV, CLIENT_ID_ENV, CLIENT_SECRET_ENV, HOST_ENV,
    PORT_ENV, REQUIRED_SCOPES_ENV, SERVER_URL_ENV, SERVICE_ACCOUNT_CLIENTS_ENV,
};
use mcp_auth_gateway::split_list;
use rmcp::handler::server::{router::tool::ToolRouter, tool::Extension, wrapper::Parameters};
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use serde_json::{json, Value};

const MCP_PATH: &str = "/mcp";
const PRM_PATH: &str = "/.well-known/oauth-protected-resource";

// ---------------------------------------------------------------------------------------------
// Configuration: the seed's environment contract.

struct Config {
    listen: SocketAddr,
    /// Canonical URL as configured (verbatim): PRM `resource`, required token audience.
    resource: String,
    /// The same, parsed.
    url: url::Url,
    issuer: String,
    introspection_endpoint: String,
    client_id: String,
    client_secret: String,
    required_scopes: Vec<String>,
    /// Clients whose tokens may lack a user session (machine-to-machine opt-in).
    service_account_clients: Vec<String>,
}

fn config_from_env() -> Result<Config, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let required = |name: &str| var(name).ok_or_else(|| format!("{name} is not set"));
    let host = var(HOST_ENV).unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = var(PORT_ENV)
        .unwrap_or_else(|| "3000".into())
        .parse()
        .map_err(|_| "PORT is not a port number".to_string())?;
    let auth_host = required(AUTH_HOST_ENV)?;
    let auth_port: u16 = required(AUTH_PORT_ENV)?
        .parse()
        .map_err(|_| "AUTH_PORT is not a port number".to_string())?;
    let realm = required(AUTH_REALM_ENV)?;
    let bracket = |h: &str| {
        if h.contains(':') {
            format!("[{h}]")
        } else {
            h.to_string()
        }
    };
    let scheme = if auth_port == 443 { "https" } else { "http" };
    let issuer = format!(
        "{scheme}://{}:{auth_port}/realms/{realm}",
        bracket(&auth_host)
    );
    let default_url = format!(
        "http://{}:{port}{MCP_PATH}",
        match host.as_str() {
            "0.0.0.0" | "::" => "localhost".to_string(),
            h => bracket(h),
        }
    );
    let resource = var(SERVER_URL_ENV).unwrap_or(default_url);
    let url = url::Url::parse(&resource).map_err(|e| format!("MCP_SERVER_URL: {e}"))?;
    if url.path() != MCP_PATH {
        return Err(format!(
            "MCP_SERVER_URL {url} must end in {MCP_PATH}: this server serves MCP there, and the URL \
             is the token audience clients connect to"
        ));
    }
    let listen = format!("{}:{port}", bracket(&host))
        .parse()
        .map_err(|_| format!("HOST {host:?} is not an IP address"))?;
    Ok(Config {
        listen,
        introspection_endpoint: format!("{issuer}/protocol/openid-connect/token/introspect"),
        issuer,
        resource,
        url,
        client_id: required(CLIENT_ID_ENV)?,
        client_secret: required(CLIENT_SECRET_ENV)?,
        required_scopes: var(REQUIRED_SCOPES_ENV)
            .unwrap_or_else(|| "mcp:tools".into())
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        service_account_clients: split_list(&var(SERVICE_ACCOUNT_CLIENTS_ENV).unwrap_or_default()),
    })
}

impl Config {
    /// Where the RFC 9728 document for `/mcp` is: `<origin>/.well-known/oauth-protected-resource/mcp`.
    fn resource_metadata_url(&self) -> String {
        format!(
            "{}{PRM_PATH}{MCP_PATH}",
            self.url.origin().ascii_serialization()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The MCP server: three small tools.

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct AddRequest {
    /// First addend
    a: i64,
    /// Second addend
    b: i64,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoRequest {
    /// Text to send back
    message: String,
}

#[derive(Clone)]
struct Tools {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddRequest { a, b }): Parameters<AddRequest>) -> String {
        a.saturating_add(b).to_string()
    }

    #[tool(description = "Send a message back")]
    fn echo(&self, Parameters(EchoRequest { message }): Parameters<EchoRequest>) -> String {
        message
    }

    #[tool(description = "Who is calling: the user and the client the access token was issued to")]
    fn whoami(&self, Extension(parts): Extension<axum::http::request::Parts>) -> String {
        // Put there by `require_token` after introspection, for this very HTTP request.
        match parts.extensions.get::<Caller>() {
            Some(c) => {
                json!({"sub": c.sub, "username": c.username, "client_id": c.client_id}).to_string()
            }
            None => "unknown".into(),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("native-server-example", env!("CARGO_PKG_VERSION")),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Authorization: PRM, the 401/403 challenges, introspection.

struct App {
    cfg: Config,
    http: reqwest::Client,
}

/// The verified identity behind a request.
#[derive(Clone, Debug)]
struct Caller {
    sub: Option<String>,
    username: Option<String>,
    client_id: Option<String>,
}

enum Refusal {
    /// 401 `invalid_token` with this description.
    Invalid(&'static str),
    /// 403 `insufficient_scope`.
    MissingScope,
    /// 503: could not ask Keycloak.
    Unavailable,
}

async fn protected_resource_metadata(State(app): State<Arc<App>>) -> Response {
    let body = json!({
        "resource": app.cfg.resource,
        "authorization_servers": [app.cfg.issuer],
        "scopes_supported": app.cfg.required_scopes,
        "bearer_methods_supported": ["header"],
    });
    ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], Json(body)).into_response()
}

fn quoted(s: &str) -> String {
    s.replace(['\\', '"'], "")
}

/// `WWW-Authenticate: Bearer [error=…, error_description=…,] resource_metadata=…, scope=…`.
fn challenge(app: &App, status: StatusCode, error: Option<(&str, &str)>) -> Response {
    let mut params = vec![];
    if let Some((code, description)) = error {
        params.push(format!("error=\"{code}\""));
        params.push(format!("error_description=\"{}\"", quoted(description)));
    }
    params.push(format!(
        "resource_metadata=\"{}\"",
        quoted(&app.cfg.resource_metadata_url())
    ));
    if !app.cfg.required_scopes.is_empty() {
        params.push(format!(
            "scope=\"{}\"",
            quoted(&app.cfg.required_scopes.join(" "))
        ));
    }
    let value = format!("Bearer {}", params.join(", "));
    let mut resp = status.into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("WWW-Authenticate"),
    );
    resp
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl App {
    /// RFC 7662 introspection, then the checks Keycloak cannot do for us.
    async fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let claims = self.introspect(token).await?;
        self.check_claims(&claims)
    }

    /// The introspection answer of an active token.
    async fn introspect(&self, token: &str) -> Result<Value, Refusal> {
        let resp = self
            .http
            .post(&self.cfg.introspection_endpoint)
            // RFC 6749 §2.3.1: client id and secret are form-encoded inside HTTP Basic.
            .basic_auth(
                form_encode(&self.cfg.client_id),
                Some(form_encode(&self.cfg.client_secret)),
            )
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "introspection endpoint unreachable");
                Refusal::Unavailable
            })?;
        if !resp.status().is_success() {
            tracing::error!(
                status = %resp.status(),
                client_id = %self.cfg.client_id,
                "Keycloak refused the introspection request: check OAUTH_CLIENT_ID/OAUTH_CLIENT_SECRET"
            );
            return Err(Refusal::Invalid("the token could not be verified"));
        }
        let claims: Value = resp.json().await.map_err(|e| {
            tracing::error!(error = %e, "introspection answer is not JSON");
            Refusal::Unavailable
        })?;
        if claims["active"] != true {
            return Err(Refusal::Invalid("the token is not active"));
        }
        Ok(claims)
    }

    /// Token type, audience, user session (or a listed service-account client) and scopes.
    fn check_claims(&self, claims: &Value) -> Result<Caller, Refusal> {
        if let Some(typ) = claims["typ"].as_str().or(claims["token_type"].as_str()) {
            if !typ.eq_ignore_ascii_case("bearer") {
                return Err(Refusal::Invalid("not an access token"));
            }
        }
        let resource = &self.cfg.resource;
        let audience_ok = match &claims["aud"] {
            Value::String(a) => a == resource,
            Value::Array(a) => a.iter().any(|v| v.as_str() == Some(resource.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(Refusal::Invalid("the token was not issued for this server"));
        }
        // A token without a user session (client credentials) is accepted only from a client
        // listed for machine-to-machine use; anyone can mint one otherwise.
        let text = |k: &str| {
            claims[k]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let client_id = text("client_id").or_else(|| text("azp"));
        let user_session = text("sid").or_else(|| text("session_state")).is_some();
        if !user_session
            && !client_id
                .as_ref()
                .is_some_and(|c| self.cfg.service_account_clients.contains(c))
        {
            return Err(Refusal::Invalid("the token was not issued for this server"));
        }
        let granted: Vec<&str> = claims["scope"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if !self
            .cfg
            .required_scopes
            .iter()
            .all(|s| granted.contains(&s.as_str()))
        {
            return Err(Refusal::MissingScope);
        }
        Ok(Caller {
            sub: text("sub"),
            username: text("username").or_else(|| text("preferred_username")),
            client_id,
        })
    }
}

async fn require_token(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let Some(token) = bearer_token(&req) else {
        return challenge(&app, StatusCode::UNAUTHORIZED, None);
    };
    match app.verify(token).await {
        Ok(caller) => {
            tracing::debug!(sub = ?caller.sub, client_id = ?caller.client_id, "token accepted");
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(Refusal::Invalid(why)) => {
            tracing::info!(reason = why, "token refused");
            challenge(&app, StatusCode::UNAUTHORIZED, Some(("invalid_token", why)))
        }
        Err(Refusal::MissingScope) => {
            tracing::info!("token lacks a required scope");
            challenge(
                &app,
                StatusCode::FORBIDDEN,
                Some(("insufficient_scope", "a required scope is missing")),
            )
        }
        Err(Refusal::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "authorization server unavailable",
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    init_logging();
    let cfg = match config_from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("native_server: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("native_server: listening on {}: {e}", cfg.listen);
            std::process::exit(1);
        }
    };
    tracing::info!(
        listen = %cfg.listen, url = %cfg.resource, issuer = %cfg.issuer,
        client_id = %cfg.client_id, scopes = ?cfg.required_scopes, "serving MCP"
    );
    let (router, stop) = router(cfg);
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        stop(); // ends open MCP streams so the server can drain
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("native_server: {e}");
        std::process::exit(1);
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The MCP endpoint behind the token check, the metadata beside it, and the call that ends
/// open MCP streams at shutdown.
fn router(cfg: Config) -> (Router, impl FnOnce() + Send + 'static) {
    // rmcp refuses requests whose Host is not allowed (DNS rebinding): loopback plus the URL's host.
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    hosts.extend(cfg.url.host_str().map(str::to_string));
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_sse_keep_alive(Some(Duration::from_secs(15)));
    let stop = mcp_config.cancellation_token.clone();
    let mcp = StreamableHttpService::new(
        || {
            Ok(Tools {
                tool_router: Tools::tool_router(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );

    let app = Arc::new(App {
        cfg,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client"),
    });
    let router = Router::new()
        .nest_service(MCP_PATH, mcp)
        .layer(middleware::from_fn_with_state(app.clone(), require_token))
        .merge(
            Router::new()
                .route(PRM_PATH, get(protected_resource_metadata))
                .route(
                    &format!("{PRM_PATH}{MCP_PATH}"),
                    get(protected_resource_metadata),
                )
                .with_state(app),
        );
    (router, move || stop.cancel())
}
