//! Per-tool scopes (issue 14) against the real Keycloak of the test bed: the gateway is
//! configured from the env the operator reconciled for an McpServer with `spec.auth.tools`,
//! tokens come from Keycloak's authorization-code flow, and a small MCP upstream answers
//! `tools/list` as JSON or as SSE (its choice, as real servers differ).

use crate::harness;
use crate::support;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use harness::*;
use mcp_auth_gateway::spawn;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer, ScopeType, ToolScopes};
use serde_json::{json, Value};

/// Tools the upstream lists; `get-sum` and `delete_*` are gated by the server's rules.
const TOOLS: [&str; 3] = ["echo", "get-sum", "delete_all"];

/// An MCP upstream that answers `tools/list` and `tools/call` (also in batches), as JSON or,
/// with `?sse=1`, as an SSE stream; it records the tools called.
#[derive(Clone, Default)]
struct Upstream {
    called: Arc<Mutex<Vec<String>>>,
}

fn answer(upstream: &Upstream, msg: &Value) -> Value {
    let id = msg["id"].clone();
    match msg["method"].as_str() {
        Some("tools/list") => {
            let tools: Vec<Value> = TOOLS
                .iter()
                .map(|t| json!({"name": t, "inputSchema": {"type": "object"}}))
                .collect();
            json!({"jsonrpc": "2.0", "id": id, "result": {"tools": tools}})
        }
        Some("tools/call") => {
            let name = msg["params"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            upstream.called.lock().unwrap().push(name.clone());
            let text = format!("called {name}");
            json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}})
        }
        _ => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
    }
}

async fn mcp(
    State(upstream): State<Upstream>,
    uri: axum::http::Uri,
    body: axum::Json<Value>,
) -> Response {
    let out = match &body.0 {
        Value::Array(items) => Value::Array(items.iter().map(|m| answer(&upstream, m)).collect()),
        one => answer(&upstream, one),
    };
    if uri.query().is_some_and(|q| q.contains("sse=1")) {
        let event = format!("event: message\nid: 1\ndata: {out}\n\n");
        return ([("content-type", "text/event-stream")], event).into_response();
    }
    axum::Json(out).into_response()
}

impl Upstream {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/mcp", axum::routing::post(mcp))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn called(&self) -> Vec<String> {
        self.called.lock().unwrap().clone()
    }
}

/// A scenario: policy scopes `mcp:tools` and `mcp:admin` (optional; `mcp:root` implies
/// `mcp:admin` and `mcp:tools`), server `alpha` whose `get-sum` and `delete_*` need `mcp:admin`.
async fn bed(url: &str) -> (Scenario, McpServer) {
    let s = Scenario::new("tools").await;
    let mut policy: McpAuthPolicy = s.seed_policy().await;
    let mut tools = policy.spec.scopes[0].clone();
    tools.r#type = ScopeType::Optional;
    let mut admin = tools.clone();
    admin.name = "mcp:admin".into();
    let mut root = tools.clone();
    root.name = "mcp:root".into();
    root.implies = vec!["mcp:admin".into(), "mcp:tools".into()];
    policy.spec.scopes = vec![tools, admin, root];
    let mut alpha = server("alpha", "acme", url);
    alpha.spec.scopes = vec!["mcp:tools".into()];
    alpha.spec.auth.tools = ["get-sum", "delete_*"]
        .map(|name| ToolScopes {
            name: name.into(),
            scopes: vec!["mcp:admin".into()],
        })
        .to_vec();
    s.apply(&policy, std::slice::from_ref(&alpha)).await;
    let alpha = s.get("alpha").await;
    (s, alpha)
}

fn rpc(method: &str, id: i64, tool: Option<&str>) -> Value {
    let mut m = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if let Some(tool) = tool {
        m["params"] = json!({"name": tool, "arguments": {}});
    }
    m
}

struct Caller {
    http: reqwest::Client,
    mcp: String,
}

impl Caller {
    async fn post(&self, token: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
        self.post_to(&self.mcp, token, body, headers).await
    }

    async fn post_to(
        &self,
        url: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.post(url).bearer_auth(token).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        support::send(req).await
    }

    /// The names `tools/list` shows this token, from a JSON or an SSE answer.
    async fn listed(&self, token: &str, sse: bool) -> Vec<String> {
        let url = if sse {
            format!("{}?sse=1", self.mcp)
        } else {
            self.mcp.clone()
        };
        let resp = self
            .post_to(&url, token, &rpc("tools/list", 1, None), &[])
            .await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let json = match sse {
            true => text
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data line in {text:?}"))
                .to_string(),
            false => text,
        };
        let v: Value = serde_json::from_str(&json).unwrap();
        let tools = v["result"]["tools"].as_array().expect("tools").iter();
        tools
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }
}

async fn token(s: &Scenario, scope: String) -> String {
    let t = s.realm.mint_token(&format!("openid {scope}")).await;
    t["access_token"].as_str().unwrap().to_string()
}

fn www_authenticate(resp: &reqwest::Response) -> String {
    let h = resp.headers().get("www-authenticate");
    h.map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_need_their_scopes_and_lists_show_only_what_a_token_may_call() {
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/mcp", l.local_addr().unwrap().port())
    };
    let (s, _alpha) = bed(&url).await;
    let upstream = Upstream::default();
    let up = upstream.start().await;
    let mut cfg = gateway_config_from_deployment(&s.client, &s.ns, "alpha", &up).await;
    cfg.cache_ttl_seconds = 0;
    let gw = spawn(cfg).await.expect("gateway starts");
    let c = Caller {
        http: reqwest::Client::new(),
        mcp: format!("{}/mcp", gw.url()),
    };
    let aud = format!("mcp:server:{}:alpha", s.ns);
    let metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp");

    // Discovery names every scope some tool needs; the 401 only the base ones.
    let prm: Value = c
        .http
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            gw.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        prm["scopes_supported"],
        json!(["mcp:tools", aud, "mcp:admin"])
    );
    let resp = support::send(c.http.post(&c.mcp).json(&rpc("tools/list", 1, None))).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        www_authenticate(&resp),
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"mcp:tools {aud}\"")
    );

    let base = token(&s, format!("mcp:tools {aud}")).await;

    // The base token sees and calls only the ungated tool, in JSON and in SSE answers.
    assert_eq!(c.listed(&base, false).await, ["echo"]);
    assert_eq!(c.listed(&base, true).await, ["echo"]);
    let resp = c
        .post(&base, &rpc("tools/call", 2, Some("echo")), &[])
        .await;
    assert_eq!(resp.status(), 200);

    // A gated tool: 403 naming every scope the call needs, and the upstream never sees it.
    let step_up = format!(
        "Bearer error=\"insufficient_scope\", error_description=\"The access token lacks a scope this resource requires\", resource_metadata=\"{metadata}\", scope=\"mcp:tools {aud} mcp:admin\""
    );
    for body in [
        rpc("tools/call", 3, Some("get-sum")),
        rpc("tools/call", 4, Some("delete_all")),
        json!([
            rpc("tools/call", 5, Some("echo")),
            rpc("tools/call", 6, Some("get-sum"))
        ]),
    ] {
        let resp = c.post(&base, &body, &[]).await;
        assert_eq!(resp.status(), 403, "{body}");
        assert_eq!(www_authenticate(&resp), step_up, "{body}");
    }
    assert_eq!(
        upstream.called(),
        ["echo"],
        "a refused call reached the upstream"
    );

    // Headers that disagree with the body: 400 / -32020, before any scope decision.
    for headers in [
        [("Mcp-Method", "tools/list"), ("Mcp-Name", "echo")],
        [("Mcp-Method", "tools/call"), ("Mcp-Name", "get-sum")],
    ] {
        let resp = c
            .post(&base, &rpc("tools/call", 7, Some("echo")), &headers)
            .await;
        assert_eq!(resp.status(), 400, "{headers:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], -32020, "{v}");
        assert_eq!(v["id"], 7);
    }
    let modern = [("MCP-Protocol-Version", "2026-07-28")];
    let resp = c
        .post(&base, &rpc("tools/call", 8, Some("echo")), &modern)
        .await;
    assert_eq!(
        resp.status(),
        400,
        "2026-07-28 requests must name their method"
    );
    let agree = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "echo"),
    ];
    assert_eq!(
        c.post(&base, &rpc("tools/call", 9, Some("echo")), &agree)
            .await
            .status(),
        200
    );

    // After step-up (the larger scope), the gated tools are listed and callable.
    let admin = token(&s, format!("mcp:tools mcp:admin {aud}")).await;
    assert_eq!(c.listed(&admin, true).await, TOOLS);
    let resp = c
        .post(&admin, &rpc("tools/call", 10, Some("get-sum")), &[])
        .await;
    assert_eq!(resp.status(), 200);

    // The hierarchy: mcp:root alone covers the base scope and the tools' scope.
    let root = token(&s, format!("mcp:root {aud}")).await;
    assert_eq!(c.listed(&root, false).await, TOOLS);
    let resp = c
        .post(&root, &rpc("tools/call", 11, Some("delete_all")), &[])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.called(), ["echo", "echo", "get-sum", "delete_all"]);
}
