use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};

use super::*;

const SSE: &str = "text/event-stream";
const JSON: &str = "application/json";

fn init_result() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "result": {
        "protocolVersion": "2025-06-18",
        "serverInfo": {"name": "example-servers/everything", "version": "2.0.0"},
        "capabilities": {"tools": {}, "prompts": {}, "logging": {}}}})
}

#[test]
fn a_json_answer_is_found_by_its_id() {
    let body = serde_json::to_vec(&init_result()).unwrap();
    let found = find_answer("application/json; charset=utf-8", &body, 1, true).unwrap();
    assert_eq!(found, Some(init_result()));
    assert_eq!(
        find_answer(JSON, &body, 1, false).unwrap(),
        None,
        "wait for the end"
    );
    let other = find_answer(JSON, &body, 7, true).unwrap_err();
    assert_eq!(other.reason(), REASON_HANDSHAKE);
}

#[test]
fn an_sse_answer_is_found_among_priming_events_and_notifications() {
    let answer = init_result().to_string();
    let stream = format!(
        "id: 0\r\ndata:\r\n\r\n: comment\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}}\n\nevent: message\nid: 1\ndata: {answer}\n\n"
    );
    let found = find_answer(SSE, stream.as_bytes(), 1, false).unwrap();
    assert_eq!(found, Some(init_result()));
    // The last event is not complete before its blank line.
    let partial = &stream[..stream.len() - 2];
    assert_eq!(
        find_answer(SSE, partial.as_bytes(), 1, false).unwrap(),
        None
    );
    assert_eq!(
        find_answer(SSE, partial.as_bytes(), 1, true).unwrap(),
        Some(init_result()),
        "a stream that ended holds its last event"
    );
    let none = find_answer(
        SSE,
        b"data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{}}\n\n",
        1,
        true,
    );
    assert!(none.is_err(), "another id is no answer");
}

#[test]
fn garbage_fails_closed() {
    let cases: [(&str, &[u8]); 5] = [
        (JSON, b"<html>hello</html>"),
        (SSE, b"data: not json\n\n"),
        (SSE, b"\xff\xfe\n\n"),
        ("text/html", b"{}"),
        (JSON, b"{\"jsonrpc\":\"2.0\",\"id\":1}"),
    ];
    for (ct, body) in cases {
        let err = find_answer(ct, body, 1, true).unwrap_err();
        assert_eq!(err.reason(), REASON_HANDSHAKE, "{ct} {body:?}");
    }
    let error =
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "secret=abc"}});
    let err = rpc_result(&error, "initialize").unwrap_err();
    assert_eq!(err.to_string(), "initialize answered JSON-RPC error -32602");
    assert!(rpc_result(&json!({"id": 1, "result": 3}), "x").is_err());
}

#[test]
fn initialize_facts_are_bounded_and_clean() {
    let result = init_result();
    let facts = initialize_facts(rpc_result(&result, "initialize").unwrap()).unwrap();
    assert_eq!(facts.protocol_version, "2025-06-18");
    assert_eq!(facts.server_info.name, "example-servers/everything");
    assert_eq!(facts.server_info.version, "2.0.0");
    assert_eq!(facts.capabilities, ["logging", "prompts", "tools"]);
    let long = "x".repeat(1000);
    let noisy = json!({"protocolVersion": "2025-06-18",
        "serverInfo": {"name": format!("a\u{1b}[31mb\n{long}")}, "capabilities": {}});
    let facts = initialize_facts(noisy.as_object().unwrap()).unwrap();
    assert!(facts.server_info.name.starts_with("a[31mbxxx"));
    assert_eq!(facts.server_info.name.chars().count(), MAX_TEXT);
    assert_eq!(facts.server_info.version, "");
    let many: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("c{i}"), json!({}))).collect();
    let bad_inputs = [
        json!({"serverInfo": {"name": "n"}, "capabilities": {}}),
        json!({"protocolVersion": "", "serverInfo": {"name": "n"}, "capabilities": {}}),
        json!({"protocolVersion": "v", "capabilities": {}}),
        json!({"protocolVersion": "v", "serverInfo": {"name": 3}, "capabilities": {}}),
        json!({"protocolVersion": "v", "serverInfo": {"name": "n", "version": 2}, "capabilities": {}}),
        json!({"protocolVersion": "v", "serverInfo": {"name": "n"}}),
        json!({"protocolVersion": "v", "serverInfo": {"name": "n"}, "capabilities": many}),
    ];
    for input in bad_inputs {
        assert!(
            initialize_facts(input.as_object().unwrap()).is_err(),
            "{input}"
        );
    }
}

#[test]
fn tool_pages_count_and_chain() {
    let page = |v: Value| tools_page(v.as_object().unwrap());
    assert_eq!(page(json!({"tools": [{}, {}]})).unwrap(), (2, None));
    assert_eq!(
        page(json!({"tools": [{}], "nextCursor": "p2"})).unwrap(),
        (1, Some("p2".into()))
    );
    assert_eq!(
        page(json!({"tools": [], "nextCursor": ""})).unwrap(),
        (0, None)
    );
    assert!(page(json!({"tools": {}})).is_err());
    assert!(page(json!({"tools": [], "nextCursor": 5})).is_err());
    assert!(page(json!({"tools": [], "nextCursor": "c".repeat(5000)})).is_err());
}

#[test]
fn a_failure_keeps_the_last_success() {
    let mut status = McpStatus::initial("https://mcp.example.com", true);
    assert_eq!(status.reason.as_deref(), Some(REASON_PENDING));
    let facts = ServerFacts {
        protocol_version: "v".into(),
        ..Default::default()
    };
    status.record(Ok(facts.clone()), "t1".into());
    assert!(status.ok && status.reason.is_none());
    status.record(Err(ProbeError::Unreachable("down".into())), "t2".into());
    assert!(!status.ok);
    assert_eq!(status.reason.as_deref(), Some(REASON_UNREACHABLE));
    assert_eq!(status.last_error.as_deref(), Some("down"));
    assert_eq!(status.server, Some(facts));
    assert_eq!(status.last_success.as_deref(), Some("t1"));
    assert_eq!(status.last_attempt.as_deref(), Some("t2"));
}

/// A fake MCP upstream: answers in `mode` and records what it was sent.
#[derive(Clone)]
struct Fake {
    mode: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn fake(State(f): State<Fake>, method: Method, headers: HeaderMap, body: String) -> Response {
    let session = headers
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let msg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let rpc = msg["method"].as_str().unwrap_or("").to_owned();
    f.seen.lock().unwrap().push(format!(
        "{method} {rpc} {}",
        session.as_deref().unwrap_or("-")
    ));
    if method == Method::DELETE {
        return StatusCode::OK.into_response();
    }
    let id = msg["id"].clone();
    let result = match rpc.as_str() {
        "initialize" => init_result()["result"].clone(),
        "notifications/initialized" => return StatusCode::ACCEPTED.into_response(),
        "tools/list" if msg["params"]["cursor"].is_null() => {
            json!({"tools": [{}, {}], "nextCursor": "2"})
        }
        "tools/list" => json!({"tools": [{}]}),
        _ => return StatusCode::BAD_REQUEST.into_response(),
    };
    let answer = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
    let sid = [("mcp-session-id", "s-1")];
    match f.mode {
        "sse" => (
            sid,
            [("content-type", SSE)],
            format!(": hi\n\nevent: message\ndata: {answer}\n\n"),
        )
            .into_response(),
        "huge" => (
            sid,
            [("content-type", JSON)],
            " ".repeat(MAX_ANSWER_BYTES + 1),
        )
            .into_response(),
        "500" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => (sid, [("content-type", JSON)], answer).into_response(),
    }
}

async fn serve(mode: &'static str) -> (Prober, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(vec![]));
    let app = Router::new().route("/mcp", any(fake)).with_state(Fake {
        mode,
        seen: seen.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let prober = Prober::new(format!("http://{addr}/mcp").parse().unwrap()).unwrap();
    (prober, seen)
}

#[tokio::test]
async fn a_handshake_in_json_and_in_sse_counts_every_tool_and_closes_its_session() {
    for mode in ["json", "sse"] {
        let (prober, seen) = serve(mode).await;
        let facts = prober.handshake().await.unwrap();
        assert_eq!(facts.tool_count, Some(3), "{mode}: two pages");
        assert_eq!(facts.server_info.name, "example-servers/everything");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "POST initialize -",
                "POST notifications/initialized s-1",
                "POST tools/list s-1",
                "POST tools/list s-1",
                "DELETE  s-1",
            ],
            "{mode}"
        );
    }
}

#[tokio::test]
async fn oversized_failing_and_absent_upstreams_fail_with_their_reason() {
    let (prober, _) = serve("huge").await;
    let err = prober.handshake().await.unwrap_err();
    assert_eq!(err.reason(), REASON_HANDSHAKE);
    assert!(err.to_string().contains("exceeds"), "{err}");
    let (prober, _) = serve("500").await;
    let err = prober.handshake().await.unwrap_err();
    assert_eq!(err.to_string(), "initialize answered HTTP 500");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = Prober::new(format!("http://127.0.0.1:{port}/mcp").parse().unwrap()).unwrap();
    let err = gone.handshake().await.unwrap_err();
    assert_eq!(err.reason(), REASON_UNREACHABLE);
}
