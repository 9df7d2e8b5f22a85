//! The request path: metadata, authorization, header rewriting and streaming forwarding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use super::auth::{evaluate, extract_bearer, is_jwt_shaped, Decision, Identity, Presented};
use super::config::{normalize_origin, Settings};
use super::filter::{ListFilter, SseFiltered, MAX_FILTERED_BYTES};
use super::introspection::{Admission, IntrospectionError};
use super::jsonrpc;
use super::metadata::{www_authenticate, Challenge, InvalidReason};
use super::metrics::Outcome;
use super::scopes::challenge_scopes;
use super::state::AppState;
use super::stream::GuardedBody;

/// Verified subject (`sub`) forwarded upstream.
pub const HEADER_SUBJECT: &str = "x-mcp-auth-subject";
/// Verified OAuth client (`client_id`, else `azp`) forwarded upstream.
pub const HEADER_CLIENT_ID: &str = "x-mcp-auth-client-id";
/// Granted scopes, space-separated, forwarded upstream.
pub const HEADER_SCOPES: &str = "x-mcp-auth-scopes";
/// Every request header with this prefix is removed before forwarding (anti-spoofing).
pub const IDENTITY_HEADER_PREFIX: &str = "x-mcp-auth-";

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the usual legacy ones), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Methods a browser may use on the MCP endpoint (Streamable HTTP: POST, GET for the SSE
/// stream, DELETE to end a session).
const CORS_METHODS: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers the MCP transport needs from a browser.
const CORS_REQUEST_HEADERS: &str =
    "Authorization, Content-Type, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID, Accept";
/// Response headers a browser client must be able to read.
const CORS_EXPOSE_HEADERS: &str = "Mcp-Session-Id, WWW-Authenticate";

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Request headers as the upstream must not see them: hop-by-hop, `Authorization` (no
/// token passthrough), `Host` (the client sets the upstream's), `Content-Length` (recomputed),
/// `Expect` (the body is already read), any client-sent `X-MCP-Auth-*` identity header, and
/// client-sent `Forwarded` / `X-Forwarded-*` (the gateway sets its own).
pub fn sanitize_request_headers(headers: &mut HeaderMap) {
    headers.remove(header::FORWARDED);
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // The body has been read already; the upstream must not wait for a 100 Continue.
    headers.remove(header::EXPECT);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with(IDENTITY_HEADER_PREFIX) || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Adds the verified identity headers. A value that is not a valid header value (never
/// the case for Keycloak's UUID subjects and client ids) is left out.
pub fn insert_identity_headers(headers: &mut HeaderMap, identity: &Identity) {
    let pairs = [
        (HEADER_SUBJECT, identity.subject.as_deref()),
        (HEADER_CLIENT_ID, identity.client_id.as_deref()),
        (HEADER_SCOPES, Some(identity.scopes.as_str())),
    ];
    for (name, value) in pairs {
        if let Some(value) = value {
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    headers.insert(HeaderName::from_static(name), v);
                }
                Err(_) => tracing::warn!(
                    header = name,
                    "identity value is not a valid header value; not forwarded"
                ),
            }
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

/// A 401/403 challenge naming `scopes`, every scope the refused operation needs.
fn challenge_response(settings: &Settings, challenge: Challenge, scopes: &[String]) -> Response {
    let value = www_authenticate(challenge, &settings.metadata_url, scopes);
    let mut resp = error_response(
        challenge.status(),
        challenge.error_code().unwrap_or("unauthorized"),
        challenge.description(),
    );
    let headers = resp.headers_mut();
    // Validated at start-up: metadata URL and scopes hold only header-safe characters.
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::WWW_AUTHENTICATE, v);
    }
    // Browser-based clients must be able to read the challenge.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("WWW-Authenticate"),
    );
    resp
}

fn metadata_response(state: &AppState, method: &Method, req_headers: &HeaderMap) -> Response {
    let mut resp = match *method {
        Method::GET | Method::HEAD => {
            let mut resp = Response::new(Body::from(state.metadata_json.clone()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            resp
        }
        Method::OPTIONS => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            let allow_headers = req_headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or(HeaderValue::from_static("*"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
            resp
        }
        _ => {
            let mut resp = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Protected resource metadata supports GET",
            );
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            resp
        }
    };
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. The
/// gateway answers it itself; it is never forwarded (a server that ignores the method
/// would run the body as JSON-RPC).
fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `Ok(None)`: no `Origin` (most MCP clients are not browsers). `Ok(Some(origin))`: the
/// resource's own origin or an allowed one, echoed in CORS headers. `Err`: anything else,
/// including `null` and several `Origin` headers (DNS-rebinding defence, MCP transport spec).
fn check_origin(settings: &Settings, headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let origin = value.to_str().ok().and_then(normalize_origin).ok_or(())?;
    if settings.allowed_origins.contains(&origin) {
        Ok(Some(value.clone()))
    } else {
        Err(())
    }
}

fn forbidden_origin() -> (Outcome, Response) {
    (
        Outcome::ForbiddenOrigin,
        error_response(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "Requests from this Origin are not allowed",
        ),
    )
}

/// The preflight answer for an allowed origin: no body, nothing forwarded.
fn preflight_response(origin: HeaderValue) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_REQUEST_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// CORS headers of an answer to an allowed origin (the gateway owns the CORS policy).
fn add_cors(resp: &mut Response, origin: HeaderValue) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSE_HEADERS),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The gateway's handler for every path of the MCP listener.
pub(crate) async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // Path only: a misbehaving client might put a token in the query string.
    let path = req.uri().path().to_owned();
    let (outcome, response) = dispatch(&state, req).await;
    state.metrics.request(outcome);
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Unauthenticated requests are routine (clients discover auth through the 401), so
    // per-request lines are debug; refusals of presented tokens are logged at info in
    // `authorize`, and introspection/upstream failures at error/warn where they happen.
    match outcome {
        Outcome::PayloadTooLarge
        | Outcome::BadRequest
        | Outcome::ForbiddenOrigin
        | Outcome::Timeout => {
            tracing::info!(%method, %path, status, outcome = outcome.as_str(), elapsed_ms, "request refused")
        }
        _ => {
            tracing::debug!(%method, %path, status, outcome = outcome.as_str(), elapsed_ms, "request")
        }
    }
    response
}

async fn dispatch(state: &Arc<AppState>, req: Request) -> (Outcome, Response) {
    let settings = &state.settings;
    // RFC 9728 clients in browsers fetch metadata from any origin.
    if settings
        .metadata_paths
        .iter()
        .any(|p| p == req.uri().path())
    {
        return (
            Outcome::Metadata,
            metadata_response(state, req.method(), req.headers()),
        );
    }
    // Before any token work: a foreign page must not make the gateway do anything.
    let Ok(origin) = check_origin(settings, req.headers()) else {
        return forbidden_origin();
    };
    if let (true, Some(origin)) = (is_preflight(&req), origin.clone()) {
        return (Outcome::Preflight, preflight_response(origin));
    }
    let Ok(permit) = state.inflight.clone().try_acquire_owned() else {
        let resp = unavailable("Too many requests in progress; try again later", 1);
        return (Outcome::Overloaded, resp);
    };
    let (outcome, mut resp) = authorize(state, req, permit).await;
    if let Some(origin) = origin {
        add_cors(&mut resp, origin);
    }
    (outcome, resp)
}

fn refuse(state: &AppState, reason: InvalidReason) -> (Outcome, Response) {
    // The reason goes to logs and metrics only: the answer is the same for every token.
    tracing::info!(reason = reason.label(), "bearer token refused");
    state.metrics.refusal(reason.label());
    (
        Outcome::Unauthenticated,
        challenge_response(
            &state.settings,
            Challenge::InvalidToken(reason),
            &state.settings.required_scopes,
        ),
    )
}

fn introspection_failed(error: &IntrospectionError, settings: &Settings) -> (Outcome, Response) {
    if let IntrospectionError::Throttled { retry_after_secs } = error {
        let resp = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            "Too many new tokens from this client; try again later",
        );
        return (Outcome::Throttled, retry_after(resp, *retry_after_secs));
    }
    tracing::error!(%error, endpoint = %settings.introspection.endpoint,
        "token introspection failed; refusing the request (fail closed)");
    let resp = unavailable(
        "The authorization server could not be reached; try again later",
        5,
    );
    (Outcome::AuthUnavailable, resp)
}

/// 503 `temporarily_unavailable`, to be retried after `secs`.
fn unavailable(description: &str, secs: u64) -> Response {
    let resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        description,
    );
    retry_after(resp, secs)
}

fn retry_after(mut resp: Response, secs: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

async fn authorize(
    state: &Arc<AppState>,
    req: Request,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> (Outcome, Response) {
    let settings = &state.settings;
    let token = match extract_bearer(req.headers()) {
        Presented::Bearer(token) => token,
        Presented::None => {
            return (
                Outcome::Unauthenticated,
                challenge_response(settings, Challenge::Missing, &settings.required_scopes),
            )
        }
        Presented::Malformed => return refuse(state, InvalidReason::Malformed),
    };
    // Cheap syntactic rejection: no introspection call for what Keycloak cannot have issued.
    if settings.require_jwt && !is_jwt_shaped(token) {
        return refuse(state, InvalidReason::NotJwt);
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    let info = match state
        .introspector
        .check(token, Admission::Client(client))
        .await
    {
        Ok(info) => info,
        Err(error) => return introspection_failed(&error, settings),
    };
    match evaluate(&info, &settings.rules(), SystemTime::now()) {
        Decision::Allow(identity) => {
            let exp = match &*info {
                super::auth::TokenInfo::Active(t) => t.lifetime.exp,
                super::auth::TokenInfo::Inactive => None,
            };
            let grant = Grant {
                identity,
                token: token.to_owned(),
                exp,
            };
            forward(state, req, grant, permit).await
        }
        Decision::Deny(Challenge::InvalidToken(reason)) => refuse(state, reason),
        Decision::Deny(challenge) => {
            tracing::info!(required = %settings.required_scopes.join(" "), "bearer token lacks a required scope");
            let resp = challenge_response(settings, challenge, &settings.required_scopes);
            (Outcome::Forbidden, resp)
        }
    }
}

/// What an allowed request carries into forwarding: the identity for the upstream, and the
/// token and its `exp` to watch a streamed response with.
struct Grant {
    identity: Identity,
    token: String,
    exp: Option<u64>,
}

fn too_large(max: usize) -> (Outcome, Response) {
    (
        Outcome::PayloadTooLarge,
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("Request bodies are limited to {max} bytes"),
        ),
    )
}

fn is_length_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Reads the request body: bounded in size (exact 413) and in time (408), since MCP requests
/// are single JSON-RPC messages.
async fn read_body(
    state: &AppState,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Bytes, (Outcome, Response)> {
    let max = state.settings.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large(max));
    }
    let read = axum::body::to_bytes(body, max);
    match tokio::time::timeout(state.settings.limits.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) if is_length_limit(&err) => Err(too_large(max)),
        Ok(Err(_)) => Err((
            Outcome::BadRequest,
            error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Unreadable request body",
            ),
        )),
        Err(_) => Err((
            Outcome::Timeout,
            error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "The request body did not arrive in time",
            ),
        )),
    }
}

/// The upstream's request headers: sanitized, then the gateway's own forwarding headers
/// (replacing anything the client sent) and the verified identity.
fn upstream_headers(
    settings: &Settings,
    parts: &mut http::request::Parts,
    identity: &Identity,
) -> HeaderMap {
    let mut headers = std::mem::take(&mut parts.headers);
    let original_host = headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    sanitize_request_headers(&mut headers);
    if let Some(host) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        if settings.resource.parsed.scheme() == "https" {
            HeaderValue::from_static("https")
        } else {
            HeaderValue::from_static("http")
        },
    );
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    insert_identity_headers(&mut headers, identity);
    headers
}

async fn forward(
    state: &Arc<AppState>,
    req: Request,
    grant: Grant,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> (Outcome, Response) {
    let (mut parts, body) = req.into_parts();
    let body = match read_body(state, &parts, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let list_filter = match check_operation(&state.settings, &parts.headers, &body, &grant) {
        Ok(filter) => filter,
        Err(refusal) => return *refusal,
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = state.settings.upstream.uri_for(path_and_query) else {
        return (
            Outcome::BadRequest,
            error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Invalid request target",
            ),
        );
    };
    let headers = upstream_headers(&state.settings, &mut parts, &grant.identity);
    let mut upstream_req = http::Request::new(Body::from(body));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.version_mut() = http::Version::HTTP_11;
    *upstream_req.headers_mut() = headers;
    match state.client.request(upstream_req).await {
        Ok(resp) => (
            Outcome::Allowed,
            relay(state, resp, grant, permit, list_filter).await,
        ),
        Err(error) => upstream_failed(state, &error),
    }
}

/// The upstream's response for the client; frames are relayed as they arrive, except that
/// `tools/list` answers are filtered (JSON read whole, SSE event by event).
async fn relay(
    state: &Arc<AppState>,
    resp: http::Response<hyper::body::Incoming>,
    grant: Grant,
    permit: tokio::sync::OwnedSemaphorePermit,
    list_filter: Option<ListFilter>,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = http::Version::HTTP_11;
    // A response without a length is a stream (SSE): it lives only as long as the token
    // authorizes it.
    let streaming = !parts.headers.contains_key(header::CONTENT_LENGTH);
    let mut body = Body::new(body);
    if let Some(filter) = list_filter {
        body = match filtered(&mut parts, body, filter).await {
            Ok(body) => body,
            Err(refusal) => return refusal,
        };
    }
    let watch = streaming.then_some((grant.token, grant.exp));
    let body = GuardedBody::new(body, state.clone(), Some(permit), watch);
    Response::from_parts(parts, Body::new(body))
}

/// The answer's body with tools the token may not call removed; a JSON answer is read whole
/// (bounded), an event stream is filtered as it flows, error answers pass.
async fn filtered(
    parts: &mut http::response::Parts,
    body: Body,
    filter: ListFilter,
) -> Result<Body, Response> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("text/event-stream") {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok(Body::new(SseFiltered::new(body, filter)));
    }
    // Whatever a successful answer claims to be, it is read as JSON: an unlabelled list must
    // not slip through unfiltered.
    if !parts.status.is_success() {
        return Ok(body);
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FILTERED_BYTES).await else {
        return Err(error_response(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "The MCP server's answer could not be read",
        ));
    };
    let out = filter.json(&bytes);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Body::from(out))
}

/// What the body asks for, checked against the token: the 2026-07-28 headers must match
/// the body (400 / -32020), every called tool's scopes must be granted (403 naming all the
/// scopes the call needs), and `tools/list` answers will be filtered (the returned filter).
fn check_operation(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
    grant: &Grant,
) -> Result<Option<ListFilter>, Box<(Outcome, Response)>> {
    let rules = &settings.scope_rules;
    let inspect = rules.per_tool() || has_mcp_headers(headers);
    if !inspect {
        return Ok(None);
    }
    let parsed = match jsonrpc::Body::parse(body) {
        Ok(parsed) => parsed,
        Err(msg) => {
            return Err(rpc_refusal(
                jsonrpc::Body::Empty,
                jsonrpc::PARSE_ERROR,
                &msg,
            ))
        }
    };
    if let Err(msg) = jsonrpc::check_headers(headers, &parsed) {
        let msg = format!("Header mismatch: {msg}");
        return Err(rpc_refusal(parsed, jsonrpc::HEADER_MISMATCH, &msg));
    }
    let granted: Vec<String> = grant
        .identity
        .scopes
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    let lacking: Vec<&str> = parsed
        .called_tools()
        .filter(|t| !rules.may_call(&granted, t))
        .collect();
    if !lacking.is_empty() {
        let needed = lacking.iter().flat_map(|t| rules.tool_scopes(t));
        let scopes = challenge_scopes(&settings.required_scopes, needed);
        tracing::info!(tools = %lacking.join(" "), needed = %scopes.join(" "), "token lacks a tool's scope");
        let resp = challenge_response(settings, Challenge::InsufficientScope, &scopes);
        return Err(Box::new((Outcome::Forbidden, resp)));
    }
    let ids = parsed.list_ids();
    Ok((rules.per_tool() && !ids.is_empty()).then(|| ListFilter {
        ids,
        granted,
        rules: rules.clone(),
    }))
}

fn has_mcp_headers(headers: &HeaderMap) -> bool {
    headers.contains_key(jsonrpc::MCP_METHOD)
        || headers.contains_key(jsonrpc::MCP_NAME)
        || headers
            .get(jsonrpc::MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v >= jsonrpc::HEADERS_REQUIRED_FROM)
}

/// 400 with a JSON-RPC error body (parse error, header mismatch).
fn rpc_refusal(body: jsonrpc::Body, code: i64, message: &str) -> Box<(Outcome, Response)> {
    tracing::info!(code, message, "JSON-RPC request refused");
    let resp = json_response(
        StatusCode::BAD_REQUEST,
        jsonrpc::error_body(body.error_id(), code, message),
    );
    Box::new((Outcome::BadRequest, resp))
}

fn upstream_failed(
    state: &AppState,
    error: &hyper_util::client::legacy::Error,
) -> (Outcome, Response) {
    let msg = super::error_chain(error);
    tracing::warn!(error = %msg, upstream = %state.settings.upstream.authority, "upstream request failed");
    (
        Outcome::UpstreamError,
        error_response(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "The MCP server behind the gateway did not answer",
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_headers_are_sanitized() {
        let mut h = map(&[
            ("authorization", "Bearer secret-token"),
            ("host", "mcp.example.com"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("content-length", "10"),
            ("expect", "100-continue"),
            ("x-mcp-auth-subject", "admin"),
            ("X-MCP-Auth-Scopes", "everything"),
            ("x-mcp-auth-whatever", "x"),
            ("mcp-session-id", "s-1"),
            ("mcp-protocol-version", "2025-06-18"),
            ("last-event-id", "42"),
            ("accept", "application/json, text/event-stream"),
            ("x-mcp-other", "kept"),
            ("forwarded", "for=203.0.113.9;host=evil.example;proto=https"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("x-forwarded-prefix", "/admin"),
        ]);
        sanitize_request_headers(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "accept",
                "last-event-id",
                "mcp-protocol-version",
                "mcp-session-id",
                "x-mcp-other"
            ]
        );
    }

    #[test]
    fn response_hop_by_hop_dropped_others_kept() {
        let mut h = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "s-1"),
            ("www-authenticate", "Bearer"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec!["content-type", "mcp-session-id", "www-authenticate"]
        );
    }

    #[test]
    fn identity_headers_inserted() {
        let mut h = HeaderMap::new();
        insert_identity_headers(
            &mut h,
            &Identity {
                subject: Some("4f1c-uuid".into()),
                client_id: None,
                scopes: "openid mcp:tools".into(),
            },
        );
        assert_eq!(h.get(HEADER_SUBJECT).unwrap(), "4f1c-uuid");
        assert!(h.get(HEADER_CLIENT_ID).is_none());
        assert_eq!(h.get(HEADER_SCOPES).unwrap(), "openid mcp:tools");
        let mut h = HeaderMap::new();
        insert_identity_headers(
            &mut h,
            &Identity {
                subject: Some("bad\nvalue".into()),
                client_id: Some("c".into()),
                scopes: String::new(),
            },
        );
        assert!(h.get(HEADER_SUBJECT).is_none());
        assert_eq!(h.get(HEADER_CLIENT_ID).unwrap(), "c");
    }

    #[tokio::test]
    async fn length_limit_detected_through_error_chain() {
        let err = axum::body::to_bytes(Body::from(vec![0u8; 10]), 5)
            .await
            .unwrap_err();
        assert!(is_length_limit(err.into_inner().as_ref()));
        assert!(axum::body::to_bytes(Body::from(vec![0u8; 5]), 5)
            .await
            .is_ok());
        let io = std::io::Error::other("boom");
        assert!(!is_length_limit(&io));
    }
}
