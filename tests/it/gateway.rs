//! HTTP behaviour of the auth gateway against an in-process fake upstream and a fake
//! introspection endpoint (all on 127.0.0.1).

use crate::fakes;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{self, send};
use fakes::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD: &str = "good-token.abc_DEF-123";
const METADATA_URL: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";

fn www_auth(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate present")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every refused token gets the same challenge: no oracle for a token's state.
fn invalid_token_challenge() -> String {
    format!(
        "Bearer error=\"invalid_token\", error_description=\"The access token is not valid for this resource\", resource_metadata=\"{METADATA_URL}\", scope=\"mcp:tools\""
    )
}

async fn get_with_token(bed: &GatewayBed, path: &str, token: &str) -> reqwest::Response {
    send(bed.http.get(bed.url(path)).bearer_auth(token)).await
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test]
async fn metadata_is_served_at_path_suffixed_and_root_locations() {
    let bed = GatewayBed::start().await;
    let expected = json!({
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": [SCOPE],
        "bearer_methods_supported": ["header"],
    });
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let resp = bed.http.get(bed.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, expected, "{path}");
    }
    // CORS preflight for the metadata document is answered by the gateway.
    let resp = send(
        bed.http
            .request(
                reqwest::Method::OPTIONS,
                bed.url("/.well-known/oauth-protected-resource/mcp"),
            )
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "mcp-protocol-version"),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        resp.headers()["access-control-allow-headers"],
        "mcp-protocol-version"
    );
    assert_eq!(bed.introspection.calls(), 0);
    assert_eq!(bed.upstream.hits(), 0, "metadata must not be proxied");
}

#[tokio::test]
async fn root_resource_serves_only_root_metadata_and_keeps_resource_verbatim() {
    let bed = GatewayBed::start_with(|c| c.resource_url = "https://mcp.example.com".into()).await;
    let resp = send(
        bed.http
            .get(bed.url("/.well-known/oauth-protected-resource")),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["resource"], "https://mcp.example.com",
        "no trailing slash added"
    );
    // Any other path is protected, including what would be the path-suffixed form.
    let resp = bed.http.get(bed.url("/mcp")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        www_auth(&resp),
        "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource\", scope=\"mcp:tools\""
    );
}

#[tokio::test]
async fn missing_or_non_bearer_credentials_get_401_with_exact_challenge() {
    let bed = GatewayBed::start().await;
    let expected = format!("Bearer resource_metadata=\"{METADATA_URL}\", scope=\"mcp:tools\"");
    let resp = send(bed.http.post(bed.url("/mcp")).body("{}")).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(www_auth(&resp), expected);
    assert_eq!(
        resp.headers()["access-control-expose-headers"],
        "WWW-Authenticate"
    );

    let resp = send(
        bed.http
            .get(bed.url("/mcp"))
            .header("authorization", "Basic dXNlcjpwYXNz"),
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(www_auth(&resp), expected);

    // A token in the query string is never accepted.
    let resp = send(bed.http.get(bed.url(&format!("/mcp?access_token={GOOD}")))).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(www_auth(&resp), expected);

    assert_eq!(bed.introspection.calls(), 0);
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn malformed_bearer_gets_401_invalid_token_without_introspection() {
    let bed = GatewayBed::start().await;
    for header in ["Bearer", "Bearer a b", "Bearer tok\"en"] {
        let resp = send(
            bed.http
                .get(bed.url("/mcp"))
                .header("authorization", header),
        )
        .await;
        assert_eq!(resp.status(), 401, "{header}");
        assert_eq!(www_auth(&resp), invalid_token_challenge());
    }
    assert_eq!(bed.introspection.calls(), 0);
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn inactive_token_gets_401_invalid_token() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token("revoked", json!({"active": false}));
    let resp = get_with_token(&bed, "/mcp", "revoked").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(www_auth(&resp), invalid_token_challenge());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(bed.introspection.calls(), 1);
    assert_eq!(bed.introspection.seen_tokens(), vec!["revoked"]);
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn wrong_audience_gets_401_invalid_token() {
    let bed = GatewayBed::start().await;
    let mut claims = active_claims("openid mcp:tools");
    claims["aud"] = json!(["account", "https://other.example.com/mcp"]);
    bed.introspection.set_token("other-aud", claims);
    let mut claims = active_claims("openid mcp:tools");
    claims["aud"] = json!(format!("{RESOURCE}/"));
    bed.introspection.set_token("trailing-slash-aud", claims);
    for token in ["other-aud", "trailing-slash-aud"] {
        let resp = get_with_token(&bed, "/mcp", token).await;
        assert_eq!(resp.status(), 401, "{token}");
        assert_eq!(www_auth(&resp), invalid_token_challenge());
    }
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn missing_scope_gets_403_insufficient_scope() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token("no-scope", active_claims("openid profile"));
    let resp = get_with_token(&bed, "/mcp", "no-scope").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        www_auth(&resp),
        format!(
            "Bearer error=\"insufficient_scope\", error_description=\"The access token lacks a scope this resource requires\", resource_metadata=\"{METADATA_URL}\", scope=\"mcp:tools\""
        )
    );
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn allowed_request_is_forwarded_without_token_and_with_verified_identity() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    let resp = send(
        bed.http
            .post(bed.url("/mcp?x=1"))
            .bearer_auth(GOOD)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", "sess-42")
            .header("mcp-protocol-version", "2025-06-18")
            .header("last-event-id", "7")
            .header("x-mcp-auth-subject", "admin")
            .header("X-MCP-Auth-Scopes", "mcp:everything")
            .header("x-mcp-auth-client-id", "spoofed")
            .header("x-mcp-auth-extra", "spoofed")
            .header("connection", "x-drop-me")
            .header("x-drop-me", "1")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["mcp-session-id"],
        "sess-42",
        "session id back to the client"
    );
    assert_eq!(resp.headers()["x-upstream"], "echo");
    let raw = resp.text().await.unwrap();
    assert!(!raw.contains(GOOD), "token reached the upstream: {raw}");
    let echo: Value = serde_json::from_str(&raw).unwrap();
    let h = &echo["headers"];
    assert!(
        h.get("authorization").is_none(),
        "Authorization forwarded: {h}"
    );
    assert_eq!(h["x-mcp-auth-subject"], json!(["6d0e2a4c-user-1"]));
    assert_eq!(h["x-mcp-auth-client-id"], json!(["vscode-client"]));
    assert_eq!(h["x-mcp-auth-scopes"], json!(["openid mcp:tools"]));
    assert!(
        h.get("x-mcp-auth-extra").is_none(),
        "spoofed identity header forwarded"
    );
    assert!(
        h.get("x-drop-me").is_none(),
        "Connection-listed header forwarded"
    );
    assert_eq!(h["mcp-session-id"], json!(["sess-42"]));
    assert_eq!(h["mcp-protocol-version"], json!(["2025-06-18"]));
    assert_eq!(h["last-event-id"], json!(["7"]));
    assert_eq!(h["accept"], json!(["application/json, text/event-stream"]));
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-host"], json!([bed.gateway.addr.to_string()]));
    assert_eq!(h["host"], json!([bed.upstream.addr.to_string()]));
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/mcp");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body_len"], 46);
}

#[tokio::test]
async fn sse_response_streams_first_event_before_stream_ends() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    let started = Instant::now();
    let mut resp = send(
        bed.http
            .get(bed.url("/sse?delay_ms=3000"))
            .bearer_auth(GOOD)
            .header("accept", "text/event-stream")
            .header("last-event-id", "0"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["mcp-session-id"], "sess-sse");
    let first = support::first_chunk(
        &mut resp,
        Duration::from_millis(1500),
        "first SSE event must arrive while the upstream is still streaming",
    )
    .await;
    let first_at = started.elapsed();
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.contains("data: first"), "{first}");
    assert!(
        !first.contains("second"),
        "the stream was buffered: {first}"
    );
    assert!(
        first_at < Duration::from_millis(2000),
        "first event after {first_at:?}"
    );
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(6), resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.contains("id: 2\ndata: second"), "{rest}");
    assert!(started.elapsed() >= Duration::from_millis(2900));
}

async fn raw_chunked_post(addr: std::net::SocketAddr, token: &str, total: usize) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 256];
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        let piece = format!("{n:x}\r\n");
        if stream.write_all(piece.as_bytes()).await.is_err()
            || stream.write_all(&chunk[..n]).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break; // the gateway may answer and close early
        }
        sent += n;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn oversized_bodies_get_413_and_are_not_forwarded() {
    let bed = GatewayBed::start_with(|c| c.max_body_bytes = 1024).await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    // Declared length over the limit.
    let resp = send(
        bed.http
            .post(bed.url("/mcp"))
            .bearer_auth(GOOD)
            .body(vec![b'a'; 1025]),
    )
    .await;
    assert_eq!(resp.status(), 413);
    // Chunked body that turns out too long.
    let raw = raw_chunked_post(bed.gateway.addr, GOOD, 4096).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert_eq!(bed.upstream.hits(), 0);
    // Exactly at the limit passes, chunked or not.
    let resp = send(
        bed.http
            .post(bed.url("/mcp"))
            .bearer_auth(GOOD)
            .body(vec![b'a'; 1024]),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let raw = raw_chunked_post(bed.gateway.addr, GOOD, 1024).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"body_len\":1024"), "{raw}");
    // Unauthenticated big bodies get 401 (authorization first).
    let resp = send(bed.http.post(bed.url("/mcp")).body(vec![b'a'; 4096])).await;
    assert_eq!(resp.status(), 401);
    let m = bed.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mcp_gateway_requests_total{outcome=\"payload_too_large\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn fails_closed_with_503_when_introspection_fails() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    for status in [500u16, 502, 404, 401] {
        bed.introspection.fail_with(Some(status));
        let resp = get_with_token(&bed, "/mcp", GOOD).await;
        assert_eq!(resp.status(), 503, "introspection answered {status}");
        assert_eq!(resp.headers()["retry-after"], "5");
        assert!(resp.headers().get("www-authenticate").is_none());
    }
    // Failures are not cached: once Keycloak is back, the token works.
    bed.introspection.fail_with(None);
    let resp = get_with_token(&bed, "/mcp", GOOD).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        bed.upstream.hits(),
        1,
        "nothing passed through while failing"
    );

    let m = bed.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mcp_gateway_requests_total{outcome=\"auth_unavailable\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            "mcp_gateway_introspection_requests_total{result=\"error\"}"
        ),
        Some(4.0)
    );

    // Unreachable endpoint (nothing listens on the port).
    let gw = spawn_gateway(config(
        &bed.upstream.url(),
        &format!("http://{}/introspect", closed_port()),
    ))
    .await;
    let resp = send(bed.http.get(format!("{}/mcp", gw.url())).bearer_auth(GOOD)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(bed.upstream.hits(), 1);
}

fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn fails_closed_on_slow_introspection_and_wrong_client_secret() {
    let bed = GatewayBed::start_with(|c| c.introspection_timeout_ms = 300).await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    bed.introspection.set_delay(Duration::from_millis(4000));
    let started = Instant::now();
    let resp = get_with_token(&bed, "/mcp", GOOD).await;
    assert_eq!(resp.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "timeout not applied"
    );

    let upstream = FakeUpstream::start().await;
    let introspection = FakeIntrospection::start(CLIENT_ID, "the-real-secret").await;
    introspection.set_token(GOOD, active_claims("mcp:tools"));
    let gw = spawn_gateway(config(&upstream.url(), &introspection.endpoint())).await;
    let resp = send(bed.http.get(format!("{}/mcp", gw.url())).bearer_auth(GOOD)).await;
    assert_eq!(
        resp.status(),
        503,
        "introspection with the wrong secret must not pass"
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn cache_hit_avoids_second_introspection() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    bed.introspection
        .set_token("second-token", active_claims("mcp:tools"));
    for _ in 0..3 {
        assert_eq!(get_with_token(&bed, "/mcp", GOOD).await.status(), 200);
    }
    assert_eq!(bed.introspection.calls(), 1);
    assert_eq!(
        get_with_token(&bed, "/mcp", "second-token").await.status(),
        200
    );
    assert_eq!(bed.introspection.calls(), 2);
    let m = bed.metrics().await;
    assert_eq!(metric(&m, "mcp_gateway_token_cache_hits_total"), Some(2.0));
    assert_eq!(
        metric(&m, "mcp_gateway_token_cache_misses_total"),
        Some(2.0)
    );
    assert_eq!(metric(&m, "mcp_gateway_token_cache_entries"), Some(2.0));
    assert_eq!(
        metric(&m, "mcp_gateway_requests_total{outcome=\"allowed\"}"),
        Some(4.0)
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_introspection() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    bed.introspection.set_delay(Duration::from_millis(300));
    let requests = (0..8).map(|_| get_with_token(&bed, "/mcp", GOOD));
    let responses = futures::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(bed.introspection.calls(), 1);
}

#[tokio::test]
async fn revoked_token_is_refused_once_the_cache_ttl_lapses() {
    let bed = GatewayBed::start_with(|c| c.cache_ttl_seconds = 1).await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    assert_eq!(get_with_token(&bed, "/mcp", GOOD).await.status(), 200);
    bed.introspection.revoke(GOOD);
    // Within the TTL the cached answer is used.
    assert_eq!(get_with_token(&bed, "/mcp", GOOD).await.status(), 200);
    assert_eq!(bed.introspection.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = get_with_token(&bed, "/mcp", GOOD).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(www_auth(&resp), invalid_token_challenge());
    assert_eq!(bed.introspection.calls(), 2);
    // The negative answer is reused briefly (min(negative TTL, TTL) = 1 s).
    assert_eq!(get_with_token(&bed, "/mcp", GOOD).await.status(), 401);
    assert_eq!(bed.introspection.calls(), 2);
    assert_eq!(bed.upstream.hits(), 2);
}

#[tokio::test]
async fn cache_entry_never_outlives_token_exp() {
    let bed = GatewayBed::start_with(|c| c.cache_ttl_seconds = 60).await;
    let mut claims = active_claims("mcp:tools");
    claims["exp"] = json!(unix_now() + 2);
    bed.introspection.set_token(GOOD, claims);
    assert_eq!(get_with_token(&bed, "/mcp", GOOD).await.status(), 200);
    assert_eq!(bed.introspection.calls(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The fake still says active (with a past exp): the gateway re-introspects because
    // the entry expired with the token, and refuses the expired token itself.
    let resp = get_with_token(&bed, "/mcp", GOOD).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(bed.introspection.calls(), 2);
    assert_eq!(www_auth(&resp), invalid_token_challenge());
}

#[tokio::test]
async fn upstream_unreachable_gives_502() {
    let closed = closed_port();
    let introspection = FakeIntrospection::start(CLIENT_ID, CLIENT_SECRET).await;
    introspection.set_token(GOOD, active_claims("mcp:tools"));
    let gw = spawn_gateway(config(
        &format!("http://{closed}"),
        &introspection.endpoint(),
    ))
    .await;
    let http = reqwest::Client::new();
    let resp = send(http.get(format!("{}/mcp", gw.url())).bearer_auth(GOOD)).await;
    assert_eq!(resp.status(), 502);
    let m = http
        .get(format!("{}/metrics", gw.admin_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&m, "mcp_gateway_requests_total{outcome=\"upstream_error\"}"),
        Some(1.0)
    );
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway_and_never_forwarded() {
    let bed = GatewayBed::start_with(|c| c.allowed_origins = "http://localhost:6274".into()).await;
    for origin in ["https://mcp.example.com", "http://localhost:6274"] {
        let resp = send(
            bed.http
                .request(reqwest::Method::OPTIONS, bed.url("/mcp"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, mcp-session-id",
                )
                .header("content-type", "application/json")
                // A body that would be a tool call if a server ignored the method.
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#),
        )
        .await;
        assert_eq!(resp.status(), 204, "{origin}");
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(
            h["access-control-allow-methods"],
            "GET, POST, DELETE, OPTIONS"
        );
        assert_eq!(
            h["access-control-allow-headers"],
            "Authorization, Content-Type, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID, Accept"
        );
        assert_eq!(h["vary"], "Origin");
        assert!(
            resp.bytes().await.unwrap().is_empty(),
            "a preflight has no body"
        );
    }
    // With a token too: still answered here.
    let resp = send(
        bed.http
            .request(reqwest::Method::OPTIONS, bed.url("/mcp"))
            .bearer_auth(GOOD)
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "DELETE"),
    )
    .await;
    assert_eq!(resp.status(), 204);
    // A foreign origin's preflight: 403, nothing allowed.
    let resp = send(
        bed.http
            .request(reqwest::Method::OPTIONS, bed.url("/mcp"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(bed.upstream.hits(), 0, "a preflight reached the upstream");
    assert_eq!(bed.introspection.calls(), 0);
    // OPTIONS without the preflight headers is an ordinary, protected request.
    let resp = send(bed.http.request(reqwest::Method::OPTIONS, bed.url("/mcp"))).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn foreign_origin_gets_403_before_any_token_work_own_and_none_pass() {
    let bed = GatewayBed::start_with(|c| c.allowed_origins = "http://localhost:6274".into()).await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    for origin in [
        "https://evil.example",
        "http://mcp.example.com",
        "https://mcp.example.com:8443",
        "null",
        "https://mcp.example.com.evil.example",
    ] {
        let resp = send(
            bed.http
                .post(bed.url("/mcp"))
                .bearer_auth(GOOD)
                .header("origin", origin)
                .body("{}"),
        )
        .await;
        assert_eq!(resp.status(), 403, "{origin}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "forbidden_origin");
    }
    assert_eq!(
        bed.introspection.calls(),
        0,
        "token work for a foreign origin"
    );
    assert_eq!(bed.upstream.hits(), 0);

    // The resource's own origin (any case, default port), an allowed one, and none pass.
    for origin in [
        Some("https://mcp.example.com"),
        Some("https://MCP.example.com:443"),
        Some("http://localhost:6274"),
        None,
    ] {
        let mut req = bed.http.post(bed.url("/mcp")).bearer_auth(GOOD).body("{}");
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{origin:?}");
        match origin {
            Some(o) => {
                assert_eq!(resp.headers()["access-control-allow-origin"], o);
                assert_eq!(
                    resp.headers()["access-control-expose-headers"],
                    "Mcp-Session-Id, WWW-Authenticate"
                );
            }
            None => assert!(resp.headers().get("access-control-allow-origin").is_none()),
        }
    }
    assert_eq!(bed.upstream.hits(), 4);
    // Metadata stays open to every origin.
    let resp = send(
        bed.http
            .get(bed.url("/.well-known/oauth-protected-resource/mcp"))
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let m = bed.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mcp_gateway_requests_total{outcome=\"forbidden_origin\"}"
        ),
        Some(5.0)
    );
}

#[tokio::test]
async fn client_sent_forwarding_headers_are_replaced() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    let resp = send(
        bed.http
            .post(bed.url("/mcp"))
            .bearer_auth(GOOD)
            .header("forwarded", "for=203.0.113.9;host=evil.example;proto=https")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-prefix", "/admin")
            .header("x-forwarded-port", "1")
            .body("{}"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    let h = &echo["headers"];
    assert!(h.get("forwarded").is_none(), "{h}");
    assert!(h.get("x-forwarded-prefix").is_none(), "{h}");
    assert!(h.get("x-forwarded-port").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-host"], json!([bed.gateway.addr.to_string()]));
    // The resource URL (https://mcp.example.com/mcp) says how clients reach the server.
    assert_eq!(h["x-forwarded-proto"], json!(["https"]));
}

#[tokio::test]
async fn every_refused_token_gets_the_same_answer() {
    let bed = GatewayBed::start().await;
    let mut wrong_aud = active_claims("openid mcp:tools");
    wrong_aud["aud"] = json!("https://other.example.com/mcp");
    let mut expired = active_claims("openid mcp:tools");
    expired["exp"] = json!(unix_now() - 10);
    let mut no_user = active_claims("openid mcp:tools");
    no_user["sid"] = json!(null);
    bed.introspection.set_token("wrong-aud", wrong_aud);
    bed.introspection.set_token("expired", expired);
    bed.introspection.set_token("no-user", no_user);
    let mut answers = Vec::new();
    for token in ["inactive", "wrong-aud", "expired", "no-user", "a\"b"] {
        let resp = send(
            bed.http
                .get(bed.url("/mcp"))
                .header("authorization", format!("Bearer {token}")),
        )
        .await;
        assert_eq!(resp.status(), 401, "{token}");
        let challenge = www_auth(&resp);
        let body = resp.text().await.unwrap();
        answers.push((challenge, body));
    }
    assert_eq!(answers[0].0, invalid_token_challenge());
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "answers differ: {answers:#?}"
    );
    // The reasons are in the metrics, not in the answers.
    let m = bed.metrics().await;
    for reason in [
        "inactive",
        "wrong_audience",
        "expired",
        "no_user_session",
        "malformed",
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("mcp_gateway_token_refusals_total{{reason=\"{reason}\"}}")
            ),
            Some(1.0),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn admin_listener_serves_health_and_metrics_only() {
    let bed = GatewayBed::start().await;
    let resp = send(bed.http.get(format!("{}/healthz", bed.gateway.admin_url()))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok\n");
    // /healthz on the MCP port belongs to the MCP server (protected, not shadowed).
    assert_eq!(
        bed.http
            .get(bed.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    bed.introspection
        .set_token("nope", json!({"active": false}));
    get_with_token(&bed, "/mcp", "nope").await;
    bed.http.get(bed.url("/mcp")).send().await.unwrap();
    let m = bed.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mcp_gateway_requests_total{outcome=\"unauthenticated\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            "mcp_gateway_introspection_requests_total{result=\"inactive\"}"
        ),
        Some(1.0)
    );
    assert!(m.contains("# TYPE mcp_gateway_introspection_duration_seconds histogram"));
}

/// Captures every log line (TRACE, all crates) while driving allowed, refused and failing
/// requests, and checks neither the token nor the client secret appears.
#[tokio::test]
async fn logs_never_contain_tokens_or_the_secret() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret_token = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl";
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(secret_token, active_claims("mcp:tools"));
    assert_eq!(
        get_with_token(&bed, "/mcp", secret_token).await.status(),
        200
    );
    bed.introspection.set_token(
        "eyJ.bad-audience.sig",
        json!({"active": true, "aud": "x", "scope": "mcp:tools"}),
    );
    assert_eq!(
        get_with_token(&bed, "/mcp", "eyJ.bad-audience.sig")
            .await
            .status(),
        401
    );
    bed.introspection.fail_with(Some(500));
    assert_eq!(
        get_with_token(&bed, "/mcp", "eyJ.failing.sig")
            .await
            .status(),
        503
    );
    let gw = spawn_gateway(config(
        &bed.upstream.url(),
        &format!("http://{}/introspect", closed_port()),
    ))
    .await;
    let resp = send(
        bed.http
            .get(format!("{}/mcp", gw.url()))
            .bearer_auth("eyJ.unreachable.sig"),
    )
    .await;
    assert_eq!(resp.status(), 503);

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("fail closed"),
        "expected the failure to be logged:\n{logs}"
    );
    for needle in [
        secret_token,
        "c2VjcmV0LXBheWxvYWQ",
        "eyJ.bad-audience.sig",
        "eyJ.failing.sig",
        "eyJ.unreachable.sig",
        CLIENT_SECRET,
    ] {
        assert!(!logs.contains(needle), "{needle:?} leaked into logs");
    }
}

#[tokio::test]
async fn graceful_shutdown_stops_listening() {
    let bed = GatewayBed::start().await;
    let addr = bed.gateway.addr;
    let GatewayBed { gateway, .. } = bed;
    gateway.shutdown().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A throw-away CA and a leaf for `localhost`/`127.0.0.1`, generated per run (no key material
/// in git). Returns (CA PEM, leaf cert DER, leaf key DER).
fn test_pki() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    (
        ca.pem(),
        leaf.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
}

/// An HTTPS introspection endpoint (per-run test CA) serving one active token. Returns its
/// address and a file holding the CA bundle.
async fn tls_introspection() -> (std::net::SocketAddr, std::path::PathBuf) {
    use hyper::service::service_fn;

    let (ca_pem, cert, key) = test_pki();
    let ca_file = std::env::temp_dir().join(format!(
        "mcp-gw-test-ca-{}-{}.pem",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&ca_file, ca_pem).unwrap();
    let certs = vec![cert];
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    let body = active_claims("mcp:tools").to_string();
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, ca_file)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

#[tokio::test]
async fn https_introspection_trusts_the_ca_bundle_and_fails_closed_without_it() {
    let (addr, ca_file) = tls_introspection().await;
    let upstream = FakeUpstream::start().await;
    let endpoint = format!("https://localhost:{}/introspect", addr.port());
    let http = reqwest::Client::new();

    let mut cfg = config(&upstream.url(), &endpoint);
    cfg.ca_bundle = Some(ca_file.clone());
    let gw = spawn_gateway(cfg).await;
    let resp = send(http.get(format!("{}/mcp", gw.url())).bearer_auth(GOOD)).await;
    assert_eq!(
        resp.status(),
        200,
        "CA bundle not used for the introspection endpoint"
    );

    // Without the bundle the test CA is untrusted: TLS fails, the gateway refuses (503).
    let gw = spawn_gateway(config(&upstream.url(), &endpoint)).await;
    let resp = send(http.get(format!("{}/mcp", gw.url())).bearer_auth(GOOD)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(upstream.hits(), 1);

    // A bundle without certificates is a configuration error.
    let mut cfg = config(&upstream.url(), &endpoint);
    let not_pem = ca_file.with_extension("txt");
    std::fs::write(&not_pem, "no certificates here\n").unwrap();
    cfg.ca_bundle = Some(not_pem.clone());
    assert!(mcp_auth_gateway::Gateway::new(&cfg).is_err());
    let _ = std::fs::remove_file(ca_file);
    let _ = std::fs::remove_file(not_pem);
}

#[tokio::test]
async fn streamable_http_post_answered_with_sse_streams_through() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    let mut resp = send(
        bed.http
            .post(bed.url("/sse?delay_ms=2500"))
            .bearer_auth(GOOD)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call"}"#),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let first = support::first_chunk(
        &mut resp,
        Duration::from_millis(1500),
        "first event before the stream ends",
    )
    .await;
    assert!(std::str::from_utf8(&first).unwrap().contains("data: first"));
}

#[tokio::test]
async fn client_abandoning_a_stream_closes_the_upstream_stream() {
    let bed = GatewayBed::start().await;
    bed.introspection
        .set_token(GOOD, active_claims("mcp:tools"));
    let mut resp = get_with_token(&bed, "/sse?delay_ms=30000", GOOD).await;
    let first = support::first_chunk(&mut resp, Duration::from_secs(2), "first event").await;
    assert!(std::str::from_utf8(&first).unwrap().contains("data: first"));
    assert_eq!(bed.upstream.streams_closed(), 0);
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while bed.upstream.streams_closed() == 0 {
        assert!(
            Instant::now() < deadline,
            "upstream stream still open after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JWT-shaped token that no issuer signed (passes the syntactic check, unknown to Keycloak).
fn garbage_jwt(i: usize) -> String {
    format!("eyJhbGciOiJSUzI1NiJ9.eyJqdGkiOiJ{i:08}In0.c2lnbmF0dXJl{i}")
}

#[tokio::test]
async fn non_jwt_tokens_are_refused_without_introspection_when_jwts_are_required() {
    let bed = GatewayBed::start_with(|c| c.require_jwt = true).await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    let resp = get_with_token(&bed, "/mcp", GOOD).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(www_auth(&resp), invalid_token_challenge());
    let long = format!("eyJ{}.e.s", "a".repeat(20_000));
    let resp = get_with_token(&bed, "/mcp", &long).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(bed.introspection.calls(), 0);
    let jwt = garbage_jwt(1);
    bed.introspection
        .set_token(&jwt, active_claims("openid mcp:tools"));
    assert_eq!(get_with_token(&bed, "/mcp", &jwt).await.status(), 200);
    assert_eq!(bed.introspection.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_token_flood_costs_bounded_introspections_and_cached_tokens_stay_fast() {
    const BURST: u32 = 10;
    const RATE: f64 = 5.0;
    let bed = GatewayBed::start_with(|c| {
        c.introspection_burst_per_client = BURST;
        c.introspection_rate_per_client = RATE;
        c.introspection_burst = 1000;
        c.introspection_rate = 1000.0;
    })
    .await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    assert_eq!(get_with_token(&bed, "/small", GOOD).await.status(), 200);
    let started = Instant::now();
    let flood = {
        let http = bed.http.clone();
        let url = bed.url("/mcp");
        tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            use futures::StreamExt;
            let results: Vec<_> = futures::stream::iter(0..5000)
                .map(|i| {
                    let http = http.clone();
                    let url = url.clone();
                    async move {
                        let r = send(http.get(&url).bearer_auth(garbage_jwt(i))).await;
                        (r.status().as_u16(), r.headers().get("retry-after").cloned())
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            for (status, retry_after) in results {
                if status == 429 {
                    assert!(retry_after.is_some(), "429 without Retry-After");
                }
                *statuses.entry(status).or_default() += 1;
            }
            statuses
        })
    };
    // The cached client has its own keep-alive connection, as a real client would.
    let client = reqwest::Client::new();
    let mut good = 0;
    while !flood.is_finished() {
        let r = client.get(bed.url("/small")).bearer_auth(GOOD).send().await;
        assert_eq!(r.unwrap().status(), 200);
        good += 1;
    }
    let statuses = flood.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = f64::from(BURST) + (RATE * elapsed).ceil() + 1.0;
    let calls = bed.introspection.calls() - 1;
    assert!(
        calls as f64 <= allowed,
        "{calls} introspections for 5000 unknown tokens in {elapsed:.1}s (bound {allowed}); {statuses:?}"
    );
    assert_eq!(
        statuses.get(&401).copied().unwrap_or(0),
        calls,
        "{statuses:?}"
    );
    assert_eq!(statuses.get(&429).copied().unwrap_or(0), 5000 - calls);
    assert!(good > 0, "the cached client got no turn");
}

/// Opens a raw TCP connection and reports whether the gateway answers a request on it.
async fn answered(addr: std::net::SocketAddr, stream: &mut tokio::net::TcpStream) -> bool {
    let req = format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(n)) => n > 0 && buf.starts_with(b"HTTP/1.1 401"),
        _ => false,
    }
}

#[tokio::test]
async fn connection_cap_holds_and_frees_up() {
    let bed = GatewayBed::start_with(|c| c.max_connections = 4).await;
    let addr = bed.gateway.addr;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(answered(addr, &mut s).await, "a connection under the cap");
        held.push(s);
    }
    for _ in 0..3 {
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            !answered(addr, &mut over).await,
            "a fifth connection was served"
        );
    }
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if answered(addr, &mut s).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a freed slot was not reused");
    let m = bed.metrics().await;
    assert!(metric(&m, "mcp_gateway_connections_refused_total").unwrap() >= 3.0);
}

#[tokio::test]
async fn slow_headers_and_bodies_are_cut_off() {
    let bed = GatewayBed::start_with(|c| {
        c.header_timeout_ms = 300;
        c.body_timeout_ms = 300;
    })
    .await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    let addr = bed.gateway.addr;
    // Headers never finished: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /mcp HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "a connection with unfinished headers stayed open"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A body slower than the deadline: 408, nothing forwarded.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {GOOD}\r\ncontent-length: 100\r\n\r\n{{\"jsonrpc\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(bed.upstream.hits(), 0);
}

#[tokio::test]
async fn in_flight_cap_answers_503_and_frees_up() {
    let bed = GatewayBed::start_with(|c| c.max_inflight = 2).await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut r = get_with_token(&bed, "/sse?delay_ms=1500", GOOD).await;
        assert_eq!(r.status(), 200);
        r.chunk().await.unwrap();
        streams.push(r);
    }
    let resp = get_with_token(&bed, "/small", GOOD).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    for mut s in streams {
        while s.chunk().await.unwrap().is_some() {}
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_with_token(&bed, "/small", GOOD).await.status(), 200);
}

#[tokio::test]
async fn stream_is_cut_when_its_token_expires_or_is_revoked() {
    let bed = GatewayBed::start_with(|c| c.cache_ttl_seconds = 1).await;
    // exp two seconds ahead: the stream (second event after 10 s) ends at exp.
    let mut claims = active_claims("openid mcp:tools");
    claims["exp"] = json!(unix_now() + 2);
    bed.introspection.set_token("short", claims);
    let exp = unix_now() + 2;
    let mut r = get_with_token(&bed, "/sse?delay_ms=10000", "short").await;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        while let Ok(Some(_)) = r.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream outlived its token's exp");
    let late = unix_now().saturating_sub(exp);
    assert!(late <= 1, "cut {late}s after exp");

    // Revoked while streaming: ends within the cache TTL (1 s) plus one check.
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    let mut r = get_with_token(&bed, "/sse?delay_ms=10000", GOOD).await;
    assert!(r.chunk().await.unwrap().is_some());
    bed.introspection.revoke(GOOD);
    let revoked = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        while let Ok(Some(_)) = r.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream outlived its revoked token");
    assert!(
        revoked.elapsed() < Duration::from_millis(1500),
        "{:?}",
        revoked.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        bed.upstream.streams_closed(),
        2,
        "upstream streams left open"
    );
    let m = bed.metrics().await;
    assert_eq!(
        metric(&m, "mcp_gateway_streams_cut_total{reason=\"expired\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "mcp_gateway_streams_cut_total{reason=\"revoked\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn known_good_tokens_are_rechecked_outside_the_budget_for_unknown_ones() {
    let bed = GatewayBed::start_with(|c| {
        c.cache_ttl_seconds = 1;
        c.introspection_burst_per_client = 2;
        c.introspection_rate_per_client = 0.001;
    })
    .await;
    bed.introspection
        .set_token(GOOD, active_claims("openid mcp:tools"));
    assert_eq!(get_with_token(&bed, "/small", GOOD).await.status(), 200);
    // The rest of the budget goes to unknown tokens; the next one is throttled.
    assert_eq!(
        get_with_token(&bed, "/small", "unknown-1").await.status(),
        401
    );
    let resp = get_with_token(&bed, "/small", "unknown-2").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // GOOD's cache entry lapses; its re-introspection is not charged to the empty budget.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_with_token(&bed, "/small", GOOD).await.status(), 200);
    assert_eq!(bed.introspection.calls(), 3, "GOOD was re-introspected");
    assert_eq!(
        get_with_token(&bed, "/small", "unknown-3").await.status(),
        429
    );
}
