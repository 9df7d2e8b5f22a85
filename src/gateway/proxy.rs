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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::auth::{evaluate, extract_bearer, Decision, Identity, Presented};
use super::config::Settings;
use super::introspection::Introspector;
use super::metadata::{www_authenticate, Challenge, InvalidReason};
use super::metrics::{Metrics, Outcome};

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

pub(crate) type UpstreamClient = Client<HttpConnector, Body>;

pub(crate) struct AppState {
    pub settings: Settings,
    pub introspector: Introspector,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub metadata_json: Bytes,
}

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
/// `Expect` (the body is already read) and any client-sent `X-MCP-Auth-*` identity header.
pub fn sanitize_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // The body has been read already; the upstream must not wait for a 100 Continue.
    headers.remove(header::EXPECT);
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(IDENTITY_HEADER_PREFIX))
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

fn challenge_response(settings: &Settings, challenge: Challenge) -> Response {
    let value = www_authenticate(challenge, &settings.metadata_url, &settings.required_scopes);
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

/// A CORS preflight carries no credentials by design; it is forwarded unauthenticated so
/// the MCP server's own CORS policy answers it.
fn is_preflight(req: &Request) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && !req.headers().contains_key(header::AUTHORIZATION)
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
    // `dispatch`, and introspection/upstream failures at error/warn where they happen.
    match outcome {
        Outcome::PayloadTooLarge | Outcome::BadRequest => {
            tracing::info!(%method, %path, status, outcome = outcome.as_str(), elapsed_ms, "request refused")
        }
        _ => {
            tracing::debug!(%method, %path, status, outcome = outcome.as_str(), elapsed_ms, "request")
        }
    }
    response
}

async fn dispatch(state: &AppState, req: Request) -> (Outcome, Response) {
    let settings = &state.settings;
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
    if is_preflight(&req) {
        return forward(state, req, None, Outcome::Preflight).await;
    }
    let token = match extract_bearer(req.headers()) {
        Presented::Bearer(token) => token,
        Presented::None => {
            return (
                Outcome::Unauthenticated,
                challenge_response(settings, Challenge::Missing),
            )
        }
        Presented::Malformed => {
            return (
                Outcome::Unauthenticated,
                challenge_response(settings, Challenge::InvalidToken(InvalidReason::Malformed)),
            )
        }
    };
    let info = match state.introspector.check(token).await {
        Ok(info) => info,
        Err(error) => {
            tracing::error!(%error, endpoint = %settings.introspection_endpoint,
                "token introspection failed; refusing the request (fail closed)");
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The authorization server could not be reached; try again later",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return (Outcome::AuthUnavailable, resp);
        }
    };
    match evaluate(
        &info,
        &settings.resource.raw,
        &settings.required_scopes,
        SystemTime::now(),
    ) {
        Decision::Allow(identity) => forward(state, req, Some(identity), Outcome::Allowed).await,
        Decision::Deny(challenge) => {
            match challenge {
                Challenge::InvalidToken(reason) => {
                    tracing::info!(reason = reason.label(), "bearer token refused")
                }
                Challenge::InsufficientScope => {
                    tracing::info!(required = %settings.required_scopes.join(" "), "bearer token lacks a required scope")
                }
                Challenge::Missing => {}
            }
            let outcome = match challenge {
                Challenge::InsufficientScope => Outcome::Forbidden,
                _ => Outcome::Unauthenticated,
            };
            (outcome, challenge_response(settings, challenge))
        }
    }
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

async fn forward(
    state: &AppState,
    req: Request,
    identity: Option<Identity>,
    outcome: Outcome,
) -> (Outcome, Response) {
    let max = state.settings.max_body_bytes;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return too_large(max);
    }
    // MCP requests are single JSON-RPC messages, so the body is read (bounded) before
    // forwarding; this gives an exact 413. Responses are streamed.
    let body = match axum::body::to_bytes(body, max).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let inner = err.into_inner();
            if is_length_limit(inner.as_ref()) {
                return too_large(max);
            }
            return (
                Outcome::BadRequest,
                error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Unreadable request body",
                ),
            );
        }
    };

    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = match state.settings.upstream.uri_for(path_and_query) {
        Ok(uri) => uri,
        Err(_) => {
            return (
                Outcome::BadRequest,
                error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Invalid request target",
                ),
            )
        }
    };

    let mut headers = parts.headers;
    let original_host = headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    sanitize_request_headers(&mut headers);
    if let Some(host) = original_host {
        if !headers.contains_key("x-forwarded-host") {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
    }
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        let ip = peer.ip().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    if let Some(identity) = &identity {
        insert_identity_headers(&mut headers, identity);
    }

    let mut upstream_req = http::Request::new(Body::from(body));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.version_mut() = http::Version::HTTP_11;
    *upstream_req.headers_mut() = headers;

    match state.client.request(upstream_req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.version = http::Version::HTTP_11;
            // `Body::new` wraps hyper's incoming body: frames are relayed as they arrive.
            (outcome, Response::from_parts(parts, Body::new(body)))
        }
        Err(error) => {
            let mut msg = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
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
    }
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
