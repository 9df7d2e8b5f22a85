#![forbid(unsafe_code)]
//! MCP auth gateway: a reverse proxy, run as a sidecar in front of an MCP server, that
//! enforces the MCP authorization spec (2025-06-18 / 2025-11-25) with Keycloak token
//! introspection.
//!
//! # MCP listener (`--listen`, default `0.0.0.0:8080`)
//! - `GET /.well-known/oauth-protected-resource` and, when the resource URL has a path
//!   (`https://h/mcp`), `GET /.well-known/oauth-protected-resource/mcp`: RFC 9728 metadata
//!   `{resource, authorization_servers: [issuer], scopes_supported, bearer_methods_supported:
//!   ["header"], resource_name?}`, with `Access-Control-Allow-Origin: *` (OPTIONS answered).
//! - A request whose `Origin` is neither the resource URL's origin nor allowed
//!   (`--allowed-origins`) gets 403 before any token work; no `Origin` passes.
//! - A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an
//!   allowed origin is answered by the gateway (204, no body) and never forwarded.
//! - Every other path is proxied to `--upstream` after authorization:
//!   - no bearer token → 401 `WWW-Authenticate: Bearer resource_metadata="…", scope="…"`;
//!   - any refused token (malformed, not a JWT, inactive, expired, wrong type or audience, no
//!     user session from an unlisted client) → 401 with `error="invalid_token"` and one
//!     description for all (the reason goes to logs and metrics only);
//!   - active token for this audience lacking a required scope → 403
//!     `error="insufficient_scope"`;
//!   - an unknown token over the introspection budget (per client, total) → 429;
//!   - introspection unreachable / non-200 / invalid → 503 (fail closed, never forwarded);
//!   - body over `--max-body-bytes` → 413, too slow → 408; upstream unreachable → 502.
//! - Forwarded requests lose `Authorization`, `Host`, hop-by-hop headers, every client-sent
//!   `X-MCP-Auth-*`, `Forwarded` and `X-Forwarded-*` header, and gain `X-MCP-Auth-Subject`
//!   (`sub`), `X-MCP-Auth-Client-Id` (`client_id`, else `azp`), `X-MCP-Auth-Scopes` (granted
//!   scopes, space-separated) and the gateway's own `X-Forwarded-For/Host/Proto`. All other
//!   headers (`Mcp-Session-Id`, `Mcp-Protocol-Version`, `Last-Event-ID`, …) pass both ways.
//!   Request bodies are read (bounded) before forwarding; responses, including SSE, are
//!   streamed frame by frame, and a stream is cut when its token expires or is revoked.
//! - Connections (`--max-connections`), requests in flight (`--max-inflight`) and the time to
//!   send headers and bodies are bounded.
//!
//! # Admin listener (`--admin-listen`, default `0.0.0.0:9090`)
//! `GET /healthz` (liveness, `ok`), `GET /metrics` (OpenMetrics text, see [`metrics`]) and
//! `GET /mcp-status` (live verification: the latest MCP handshake with the upstream, see
//! [`probe`]). All are unauthenticated, hold nothing secret, and are kept off the MCP port so no
//! MCP server path is shadowed.
//!
//! Tokens and the client secret are never logged; the cache keys on SHA-256 of the token.
//! See `docs/gateway.md` for the full contract.
//!
//! # Embedding
//! ```no_run
//! use clap::Parser;
//! use mcp_auth_gateway::{self as gateway, GatewayConfig};
//!
//! #[derive(Parser)]
//! enum Cli {
//!     /// Run the MCP auth gateway.
//!     Proxy(GatewayConfig),
//! }
//!
//! # async fn main_() -> Result<(), gateway::GatewayError> {
//! match Cli::parse() {
//!     Cli::Proxy(config) => gateway::run(config).await,
//! }
//! # }
//! ```

mod auth;
mod cache;
mod config;
pub mod contract;
mod filter;
mod introspection;
mod jsonrpc;
mod limits;
mod listener;
mod metadata;
pub mod metrics;
pub mod probe;
mod proxy;
pub mod scopes;
mod state;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;

pub use auth::{
    evaluate, is_jwt_shaped, Audience, Decision, Identity, IntrospectionResponse, Rules, TokenInfo,
};
pub use config::{split_list, ClientSecret, GatewayConfig, DEFAULT_MAX_BODY_BYTES};
pub use introspection::IntrospectionError;
pub use metadata::{
    Challenge, InvalidReason, ProtectedResourceMetadata, INVALID_TOKEN_DESCRIPTION, WELL_KNOWN_PRM,
};
pub use metrics::Outcome;
pub use proxy::{HEADER_CLIENT_ID, HEADER_SCOPES, HEADER_SUBJECT, IDENTITY_HEADER_PREFIX};

use state::AppState;

/// Errors of the gateway's setup and serving (request-level failures become HTTP answers).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    #[error("cannot read the {what} from {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the introspection HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gateway server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// An error and its sources, `: `-separated (the causes name the address and the I/O error).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut msg = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// A configured gateway: build it once, then serve its routers.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<AppState>,
}

impl Gateway {
    /// Validates `config` and prepares the introspection and upstream clients.
    pub fn new(config: &GatewayConfig) -> Result<Self, GatewayError> {
        let settings = config.validate()?;
        let metrics = Arc::new(metrics::Metrics::new());
        let introspector = introspection::Introspector::new(
            &settings.introspection,
            &settings.limits,
            metrics.clone(),
        )?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        // Every scope some operation needs, so clients can consent to them up front.
        let supported = scopes::challenge_scopes(
            &settings.required_scopes,
            settings.scope_rules.named_scopes(),
        );
        let document = ProtectedResourceMetadata::new(
            &settings.resource,
            &settings.issuer,
            &supported,
            settings.resource_name.as_deref(),
        );
        let metadata_json = serde_json::to_vec(&document)
            .map_err(|e| GatewayError::Config(format!("metadata not serializable: {e}")))?
            .into();
        tracing::info!(
            resource = %settings.resource.raw,
            issuer = %settings.issuer,
            metadata_url = %settings.metadata_url,
            introspection_endpoint = %settings.introspection.endpoint,
            client_id = %settings.introspection.client_id,
            required_scopes = %settings.required_scopes.join(" "),
            upstream = %settings.upstream.authority,
            cache_ttl_s = settings.introspection.cache_ttl.as_secs(),
            allowed_origins = %settings.allowed_origins.join(" "),
            service_account_clients = %settings.service_account_clients.join(" "),
            max_connections = settings.limits.max_connections,
            max_inflight = settings.limits.max_inflight,
            "MCP auth gateway configured"
        );
        let probing = settings.probe.interval > Duration::ZERO;
        let mcp_status = probe::McpStatus::initial(&settings.resource.raw, probing);
        Ok(Self {
            state: Arc::new(AppState {
                mcp_status: Arc::new(std::sync::RwLock::new(mcp_status)),
                inflight: Arc::new(tokio::sync::Semaphore::new(settings.limits.max_inflight)),
                settings,
                introspector,
                client,
                metrics,
                metadata_json,
            }),
        })
    }

    /// The MCP listener's router: metadata, then authorization and proxying for every other
    /// path. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` to get
    /// `X-Forwarded-For` and per-client introspection limits ([`Gateway::serve`] does, and
    /// adds the connection cap and header deadline).
    pub fn router(&self) -> Router {
        Router::new()
            .fallback(proxy::handle)
            .with_state(self.state.clone())
    }

    /// The admin listener's router: `/healthz`, `/metrics` and `/mcp-status`.
    pub fn admin_router(&self) -> Router {
        let metrics = self.state.metrics.clone();
        let mcp_status = self.state.mcp_status.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                contract::MCP_STATUS_PATH,
                get(move || {
                    let doc = mcp_status.read().expect("poisoned").clone();
                    async move { ([(http::header::CACHE_CONTROL, "no-store")], axum::Json(doc)) }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics.encode(),
                        )
                    }
                }),
            )
    }

    /// The live-verification loop (see [`probe::run`]), or `None` with `--probe-interval 0`.
    /// [`run`] drives it; embedders that want `/mcp-status` filled spawn it themselves.
    pub fn prober(
        &self,
    ) -> Result<Option<impl Future<Output = ()> + Send + 'static>, GatewayError> {
        let settings = &self.state.settings.probe;
        if settings.interval.is_zero() {
            return Ok(None);
        }
        let prober =
            probe::Prober::new(settings.endpoint.clone()).map_err(GatewayError::HttpClient)?;
        let status = self.state.mcp_status.clone();
        Ok(Some(probe::run(prober, status, settings.interval)))
    }

    /// The latest live-verification outcome.
    pub fn mcp_status(&self) -> probe::McpStatus {
        self.state.mcp_status.read().expect("poisoned").clone()
    }

    /// Current metrics in OpenMetrics text.
    pub fn metrics_text(&self) -> String {
        self.state.metrics.encode()
    }

    /// The advertised `resource_metadata` URL.
    pub fn metadata_url(&self) -> &str {
        &self.state.settings.metadata_url
    }

    /// Serves until `shutdown` resolves, then lets open requests (e.g. SSE streams) drain
    /// for at most `--shutdown-grace-seconds`.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let shutdown = shutdown.boxed().shared();
        let grace = self.state.settings.shutdown_grace;
        let main = listener::serve(
            listener,
            self.router(),
            self.state.settings.limits.clone(),
            self.state.metrics.clone(),
            shutdown.clone(),
        );
        let admin_router = self.admin_router();
        let admin_shutdown = shutdown.clone();
        let admin = async move {
            match admin_listener {
                Some(l) => {
                    axum::serve(l, admin_router)
                        .with_graceful_shutdown(admin_shutdown)
                        .await
                }
                None => Ok(()),
            }
        };
        let servers = async { tokio::try_join!(main, admin).map(|_| ()) };
        let deadline = async {
            shutdown.await;
            tracing::info!(
                grace_s = grace.as_secs(),
                "shutting down; draining open requests"
            );
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = servers => result.map_err(GatewayError::Serve),
            () = deadline => {
                tracing::warn!("drain period over; closing remaining connections");
                Ok(())
            }
        }
    }
}

/// Serves the MCP listener only (no admin endpoints) on `listener` until `shutdown`.
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    Gateway::new(&config)?.serve(listener, None, shutdown).await
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

/// `mcp-keycloak-operator proxy`: binds `--listen` and `--admin-listen`, serves until
/// SIGTERM or SIGINT.
pub async fn run(config: GatewayConfig) -> Result<(), GatewayError> {
    let gateway = Gateway::new(&config)?;
    let listener = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    tracing::info!(listen = %config.listen, admin_listen = %config.admin_listen, "MCP auth gateway listening");
    // Aborted when serving ends (the handle is dropped with the task still running otherwise).
    let prober = gateway.prober()?.map(tokio::spawn);
    let served = gateway
        .serve(listener, Some(admin), shutdown_signal())
        .await;
    if let Some(p) = prober {
        p.abort();
    }
    served
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

/// A gateway running in the background on loopback ephemeral ports (tests, benchmarks,
/// conformance runs). Dropping the handle shuts it down.
pub struct GatewayHandle {
    /// MCP listener address.
    pub addr: SocketAddr,
    /// Admin listener address (`/healthz`, `/metrics`).
    pub admin_addr: SocketAddr,
    pub gateway: Gateway,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

impl GatewayHandle {
    /// `http://127.0.0.1:PORT` of the MCP listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Stops the gateway and waits for it.
    pub async fn shutdown(mut self) -> Result<(), GatewayError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(GatewayError::Serve(std::io::Error::other(e))),
        }
    }
}

/// Starts a gateway for `config` on `127.0.0.1:0` (both listeners; `listen` and
/// `admin_listen` are ignored) in a background task.
pub async fn spawn(config: GatewayConfig) -> Result<GatewayHandle, GatewayError> {
    let gateway = Gateway::new(&config)?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = bind(loopback).await?;
    let admin = bind(loopback).await?;
    let addr = listener.local_addr().map_err(GatewayError::Serve)?;
    let admin_addr = admin.local_addr().map_err(GatewayError::Serve)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.clone().serve(listener, Some(admin), async move {
        let _ = rx.await;
    }));
    Ok(GatewayHandle {
        addr,
        admin_addr,
        gateway,
        shutdown: Some(tx),
        task,
    })
}
