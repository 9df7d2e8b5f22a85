//! A stand-in for the operator's auth gateway in front of an MCP server, so the VS Code-like
//! client has something protected to talk to until the gateway lands.
//!
//! It does what the MCP authorization spec asks of a protected server and nothing more:
//! - RFC 9728 metadata at `/.well-known/oauth-protected-resource/mcp` (and at the root) with
//!   `resource` = its exact URL and `authorization_servers` = [the realm issuer];
//! - `401` + `WWW-Authenticate: Bearer resource_metadata="…", scope="…"` without a token, the same
//!   plus `error="invalid_token"` for a token Keycloak does not call active or whose `aud` lacks
//!   the URL;
//! - RFC 7662 introspection with the McpServer's confidential client (its `{name}-oauth` Secret);
//! - behind that, an rmcp Streamable HTTP server with one tool, `add`.
//!
//! [`PlainMcpServer`] is that MCP server alone, with no authorization, as the upstream behind the
//! operator's real auth gateway.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::{
    session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use serde_json::{json, Value};

use super::{bind_loopback, Error, Result, Served};

/// Path of the MCP endpoint on the stand-in.
pub const MCP_PATH: &str = "/mcp";

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct AddRequest {
    /// First addend
    pub a: i64,
    /// Second addend
    pub b: i64,
}

/// The MCP server behind the stand-in: one tool, `add`.
#[derive(Debug, Clone)]
pub struct Calculator {
    tool_router: ToolRouter<Self>,
}

impl Default for Calculator {
    fn default() -> Self {
        Calculator {
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl Calculator {
    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddRequest { a, b }): Parameters<AddRequest>) -> String {
        (a + b).to_string()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Calculator {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// What the stand-in needs to know, all of it from the McpAuthPolicy / McpServer / Secret.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// `authorization_servers[0]`: the realm's browser-facing issuer.
    pub issuer: String,
    pub introspection_endpoint: String,
    /// The McpServer's introspection client and its secret.
    pub client_id: String,
    pub client_secret: String,
    /// Scopes named in the challenge and in `scopes_supported`.
    pub scopes: Vec<String>,
}

/// A token the stand-in let through (from Keycloak's introspection answer).
#[derive(Debug, Clone)]
pub struct AcceptedToken {
    pub client_id: Option<String>,
    /// The user's id (`sub`).
    pub sub: Option<String>,
    pub username: Option<String>,
    pub scope: Option<String>,
    pub aud: Vec<String>,
}

struct Inner {
    url: String,
    resource_metadata_url: String,
    cfg: StandInConfig,
    http: reqwest::Client,
    accepted: Arc<Mutex<Vec<AcceptedToken>>>,
    rejected: Arc<Mutex<Vec<String>>>,
}

/// The stand-in on `127.0.0.1:<free port>`; its URL is known from [`ProtectedMcpServer::bind`]
/// on, so the McpServer can name it before the stand-in has its credentials.
pub struct ProtectedMcpServer {
    url: String,
    origin: String,
    listener: Option<tokio::net::TcpListener>,
    server: Option<Served>,
    accepted: Arc<Mutex<Vec<AcceptedToken>>>,
    rejected: Arc<Mutex<Vec<String>>>,
}

impl ProtectedMcpServer {
    pub async fn bind() -> Result<ProtectedMcpServer> {
        let (listener, port) = bind_loopback("stand-in").await?;
        let origin = format!("http://127.0.0.1:{port}");
        Ok(ProtectedMcpServer {
            url: format!("{origin}{MCP_PATH}"),
            origin,
            listener: Some(listener),
            server: None,
            accepted: Default::default(),
            rejected: Default::default(),
        })
    }

    /// The MCP endpoint, e.g. `http://127.0.0.1:41234/mcp`: the canonical resource URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the RFC 9728 document is (path-suffixed form).
    pub fn resource_metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource{MCP_PATH}",
            self.origin
        )
    }

    /// Start serving with the given credentials.
    pub fn start(&mut self, cfg: StandInConfig) -> Result<()> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| Error::new("stand-in", "already started"))?;
        let inner = Arc::new(Inner {
            url: self.url.clone(),
            resource_metadata_url: self.resource_metadata_url(),
            cfg,
            http: reqwest::Client::new(),
            accepted: self.accepted.clone(),
            rejected: self.rejected.clone(),
        });

        let protected = Router::new()
            .nest_service(MCP_PATH, calculator_service())
            .layer(middleware::from_fn_with_state(inner.clone(), require_token));
        let prm = Router::new()
            .route("/.well-known/oauth-protected-resource", get(metadata))
            .route(
                &format!("/.well-known/oauth-protected-resource{MCP_PATH}"),
                get(metadata),
            )
            .with_state(inner);
        let app = protected.merge(prm);

        self.server = Some(Served::start(listener, app));
        Ok(())
    }

    /// Tokens let through so far.
    pub fn accepted(&self) -> Vec<AcceptedToken> {
        self.accepted.lock().unwrap().clone()
    }

    /// Why tokens were turned away so far (no token values).
    pub fn rejected(&self) -> Vec<String> {
        self.rejected.lock().unwrap().clone()
    }
}

/// The calculator as a Streamable HTTP service (stateful sessions, loopback hosts only).
pub fn calculator_service() -> StreamableHttpService<Calculator, LocalSessionManager> {
    StreamableHttpService::new(
        || Ok(Calculator::default()),
        Default::default(),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    )
}

/// What the unprotected upstream saw of one request (header values, never a token).
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub had_authorization: bool,
    /// `x-mcp-auth-client-id`, `x-mcp-auth-subject`, `x-mcp-auth-scopes` as forwarded.
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub scopes: Option<String>,
}

/// The calculator at `http://127.0.0.1:<port>/mcp` without any authorization: the upstream
/// behind the real gateway. It records which identity headers reached it.
pub struct PlainMcpServer {
    /// `http://127.0.0.1:<port>` (the gateway keeps the request path).
    pub base_url: String,
    seen: Arc<Mutex<Vec<UpstreamRequest>>>,
    _server: Served,
}

impl PlainMcpServer {
    pub async fn start() -> Result<PlainMcpServer> {
        let (listener, port) = bind_loopback("upstream").await?;
        let seen: Arc<Mutex<Vec<UpstreamRequest>>> = Default::default();
        let record = {
            let seen = seen.clone();
            move |req: Request, next: Next| {
                let seen = seen.clone();
                async move {
                    let r = {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string)
                        };
                        UpstreamRequest {
                            had_authorization: req.headers().contains_key(header::AUTHORIZATION),
                            client_id: h("x-mcp-auth-client-id"),
                            subject: h("x-mcp-auth-subject"),
                            scopes: h("x-mcp-auth-scopes"),
                        }
                    };
                    seen.lock().unwrap().push(r);
                    next.run(req).await
                }
            }
        };
        let app = Router::new()
            .nest_service(MCP_PATH, calculator_service())
            .layer(middleware::from_fn(record));
        Ok(PlainMcpServer {
            base_url: format!("http://127.0.0.1:{port}"),
            seen,
            _server: Served::start(listener, app),
        })
    }

    /// Requests that reached the upstream so far.
    pub fn seen(&self) -> Vec<UpstreamRequest> {
        self.seen.lock().unwrap().clone()
    }
}

async fn metadata(State(s): State<Arc<Inner>>) -> Response {
    let body = json!({
        "resource": s.url,
        "authorization_servers": [s.cfg.issuer],
        "scopes_supported": s.cfg.scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": "e2e stand-in MCP server",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn challenge(s: &Inner, error: Option<&str>) -> Response {
    let mut value = String::from("Bearer ");
    if let Some(e) = error {
        value.push_str(&format!(
            "error=\"{e}\", error_description=\"The access token is not valid for this resource\", "
        ));
    }
    value.push_str(&format!(
        "resource_metadata=\"{}\", scope=\"{}\"",
        s.resource_metadata_url,
        s.cfg.scopes.join(" ")
    ));
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": error.unwrap_or("unauthorized")}).to_string(),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&value).expect("header value"),
    );
    resp
}

async fn require_token(State(s): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(token) = token else {
        return challenge(&s, None);
    };
    let answer = match introspect(&s, &token).await {
        Ok(v) => v,
        Err(e) => {
            s.rejected
                .lock()
                .unwrap()
                .push(format!("introspection failed: {e}"));
            return (StatusCode::SERVICE_UNAVAILABLE, "introspection failed").into_response();
        }
    };
    let aud = crate::harness::audiences(&answer);
    if answer["active"] != true {
        s.rejected.lock().unwrap().push("inactive".into());
        return challenge(&s, Some("invalid_token"));
    }
    if !aud.iter().any(|a| a == &s.url) {
        s.rejected
            .lock()
            .unwrap()
            .push(format!("audience {aud:?} lacks {}", s.url));
        return challenge(&s, Some("invalid_token"));
    }
    s.accepted.lock().unwrap().push(AcceptedToken {
        client_id: answer["client_id"].as_str().map(str::to_string),
        sub: answer["sub"].as_str().map(str::to_string),
        username: answer["username"].as_str().map(str::to_string),
        scope: answer["scope"].as_str().map(str::to_string),
        aud,
    });
    next.run(req).await
}

async fn introspect(s: &Inner, token: &str) -> std::result::Result<Value, String> {
    let resp = s
        .http
        .post(&s.cfg.introspection_endpoint)
        .basic_auth(&s.cfg.client_id, Some(&s.cfg.client_secret))
        .form(&[("token", token)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    resp.json::<Value>().await.map_err(|e| e.to_string())
}
