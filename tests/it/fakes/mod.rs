//! Reusable in-process fakes for gateway tests and the benchmark: an MCP-like upstream
//! that echoes requests and streams SSE, and an RFC 7662 introspection endpoint.
//! Everything listens on 127.0.0.1 ephemeral ports.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use base64::Engine;
use mcp_auth_gateway::{self as gateway, ClientSecret, GatewayConfig, GatewayHandle};

pub const RESOURCE: &str = "https://mcp.example.com/mcp";
pub const ISSUER: &str = "https://keycloak.example.com/realms/mcp";
pub const CLIENT_ID: &str = "mcp-gateway";
pub const CLIENT_SECRET: &str = "test-secret-do-not-log";
pub const SCOPE: &str = "mcp:tools";

async fn serve_on_loopback(router: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, task)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------
// Fake introspection endpoint
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct IntrospectionState {
    calls: AtomicUsize,
    /// token → response JSON; unknown tokens get `{"active": false}`.
    tokens: Mutex<HashMap<String, serde_json::Value>>,
    /// Non-zero: answer every call with this status.
    fail_status: AtomicU16,
    delay_ms: AtomicU64,
    expected_basic: String,
    /// Tokens seen, to prove what the gateway sent.
    seen: Mutex<Vec<String>>,
}

pub struct FakeIntrospection {
    pub addr: SocketAddr,
    state: Arc<IntrospectionState>,
    task: tokio::task::JoinHandle<()>,
}

pub const INTROSPECT_PATH: &str = "/realms/mcp/protocol/openid-connect/token/introspect";

impl FakeIntrospection {
    /// Accepts only HTTP basic auth with `client_id` / `secret` (else 401, like Keycloak).
    pub async fn start(client_id: &str, secret: &str) -> Self {
        let expected_basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
        );
        let state = Arc::new(IntrospectionState {
            expected_basic,
            ..Default::default()
        });
        let router = Router::new()
            .route(INTROSPECT_PATH, post(introspect))
            .with_state(state.clone());
        let (addr, task) = serve_on_loopback(router).await;
        Self { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}{INTROSPECT_PATH}", self.addr)
    }

    pub fn set_token(&self, token: &str, response: serde_json::Value) {
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), response);
    }

    /// Makes `token` inactive from now on (revocation).
    pub fn revoke(&self, token: &str) {
        self.set_token(token, serde_json::json!({"active": false}));
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn seen_tokens(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }

    /// `Some(status)`: every call fails with it; `None`: back to normal.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state
            .fail_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for FakeIntrospection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn introspect(
    State(state): State<Arc<IntrospectionState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = state.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return (StatusCode::from_u16(fail).unwrap(), "failure").into_response();
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != state.expected_basic {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let Some(token) = form.get("token") else {
        return (StatusCode::BAD_REQUEST, "missing token").into_response();
    };
    state.seen.lock().unwrap().push(token.clone());
    let response = state
        .tokens
        .lock()
        .unwrap()
        .get(token)
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"active": false}));
    axum::Json(response).into_response()
}

/// A Keycloak-like introspection answer for an access token valid for `RESOURCE`.
pub fn active_claims(scope: &str) -> serde_json::Value {
    serde_json::json!({
        "active": true,
        "aud": ["account", RESOURCE],
        "scope": scope,
        "sub": "6d0e2a4c-user-1",
        // A user logged in: Keycloak names the session (service-account tokens have none).
        "sid": "4b1f9c2e-session-1",
        "client_id": "vscode-client",
        "azp": "vscode-client",
        "exp": unix_now() + 300,
        "iat": unix_now(),
        "typ": "Bearer",
        "token_type": "Bearer",
        "iss": ISSUER,
    })
}

// ---------------------------------------------------------------------------------------
// Fake upstream MCP server
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct UpstreamState {
    hits: AtomicUsize,
    /// SSE streams whose body was dropped (finished or abandoned by the reader).
    streams_closed: AtomicUsize,
}

/// Counts a stream as closed when the body holding it is dropped.
struct StreamGuard(Arc<UpstreamState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_closed.fetch_add(1, Ordering::SeqCst);
    }
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Routes: `GET|POST /sse?delay_ms=N` streams `id: 1` at once, `id: 2` after N ms (default
    /// 1500), then ends; `GET /small` answers a fixed small JSON; every other path echoes
    /// the request as JSON `{method, path, query, headers: {name: [values]}, body_len}`
    /// and answers `Mcp-Session-Id` (the request's, else `sess-new`).
    pub async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let router = Router::new()
            .route("/sse", any(sse))
            .route("/small", any(small))
            .fallback(echo)
            .with_state(state.clone());
        let (addr, task) = serve_on_loopback(router).await;
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn streams_closed(&self) -> usize {
        self.state.streams_closed.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn small(State(state): State<Arc<UpstreamState>>) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    (
        [("content-type", "application/json")],
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    )
        .into_response()
}

async fn echo(State(state): State<Arc<UpstreamState>>, req: Request) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let session = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("sess-new")
        .to_owned();
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
    });
    (
        [
            ("content-type", "application/json"),
            ("mcp-session-id", session.as_str()),
            ("x-upstream", "echo"),
        ],
        doc.to_string(),
    )
        .into_response()
}

async fn sse(State(state): State<Arc<UpstreamState>>, req: Request) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let delay = req
        .uri()
        .query()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "delay_ms")
                .and_then(|(_, v)| v.parse::<u64>().ok())
        })
        .unwrap_or(1500);
    let guard = StreamGuard(state.clone());
    let stream = futures::stream::unfold((0u8, guard), move |(step, guard)| async move {
        match step {
            0 => Some((
                Ok::<_, Infallible>(Bytes::from("id: 1\ndata: first\n\n")),
                (1, guard),
            )),
            1 => {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                Some((Ok(Bytes::from("id: 2\ndata: second\n\n")), (2, guard)))
            }
            _ => None,
        }
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("mcp-session-id", "sess-sse"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------

/// A gateway configuration pointing at the fakes, requiring `SCOPE`.
pub fn config(upstream: &str, introspection_endpoint: &str) -> GatewayConfig {
    let mut config = GatewayConfig::new(
        RESOURCE,
        ISSUER,
        introspection_endpoint,
        CLIENT_ID,
        ClientSecret::new(CLIENT_SECRET),
    );
    config.upstream = upstream.to_owned();
    config.required_scopes = SCOPE.to_owned();
    config.shutdown_grace_seconds = 1;
    // The fake introspection endpoint knows opaque test tokens, not JWTs.
    config.require_jwt = false;
    config
}

/// Spawns the gateway for `config` on loopback ephemeral ports.
pub async fn spawn_gateway(config: GatewayConfig) -> GatewayHandle {
    gateway::spawn(config).await.expect("gateway starts")
}

/// A gateway in front of the fakes, all in this process (no cluster, no Keycloak).
pub struct GatewayBed {
    pub upstream: FakeUpstream,
    pub introspection: FakeIntrospection,
    pub gateway: GatewayHandle,
    pub http: reqwest::Client,
}

impl GatewayBed {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        let upstream = FakeUpstream::start().await;
        let introspection = FakeIntrospection::start(CLIENT_ID, CLIENT_SECRET).await;
        let mut cfg = config(&upstream.url(), &introspection.endpoint());
        tweak(&mut cfg);
        let gateway = spawn_gateway(cfg).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            upstream,
            introspection,
            gateway,
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url())
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.gateway.admin_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
