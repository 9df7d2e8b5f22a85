//! Live verification: the gateway speaks the MCP handshake to its upstream (in the pod, no token)
//! and publishes what the server said on the admin listener (`GET /mcp-status`).
//!
//! One probe is `initialize` → `notifications/initialized` → `tools/list` (every page, when the
//! server has the `tools` capability) → `DELETE` of the session, over Streamable HTTP: every
//! answer may be JSON or an SSE stream. Everything read is bounded ([`MAX_ANSWER_BYTES`] per
//! answer, short strings, few capabilities), and anything that is not a well-formed answer fails
//! the probe (`HandshakeFailed`): the operator must never report a server as verified on garbage.
//! Errors are our own short sentences (an HTTP status, a JSON-RPC error code), never the
//! upstream's text, so nothing the server echoes (headers, secrets) reaches the document.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The protocol revision the probe asks for; the server answers with the one it speaks.
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// Bound on one answer's body; a larger one fails the probe.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Bound on `tools/list` pages followed.
const MAX_TOOL_PAGES: u32 = 16;
/// Bounds on what is published of the server's own strings.
const MAX_CAPABILITIES: usize = 32;
const MAX_TEXT: usize = 128;
const MAX_SESSION_ID: usize = 256;
const MAX_CURSOR: usize = 1024;
/// Bound on each request of a probe, connecting and reading the answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `reason` of a probe that could not connect or got no answer in time.
pub const REASON_UNREACHABLE: &str = "UpstreamUnreachable";
/// `reason` of a probe whose answers were not a valid MCP handshake.
pub const REASON_HANDSHAKE: &str = "HandshakeFailed";
/// `reason` before the first probe has finished.
pub const REASON_PENDING: &str = "Pending";
/// `reason` when probing is off (`--probe-interval 0`, or an embedding that does not probe).
pub const REASON_DISABLED: &str = "ProbeDisabled";

/// `serverInfo` of the `initialize` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// What a successful handshake learnt of the server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerFacts {
    pub protocol_version: String,
    pub server_info: ServerInfo,
    /// Names of the server's capabilities (`tools`, `prompts`, …), sorted.
    pub capabilities: Vec<String>,
    /// Tools `tools/list` returned (every page); absent without the `tools` capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_count: Option<u32>,
}

/// The document at `GET /mcp-status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct McpStatus {
    /// The canonical URL this gateway protects, so a reader can tell whose status it got.
    pub resource: String,
    /// Whether the latest probe succeeded.
    pub ok: bool,
    /// Why not: [`REASON_UNREACHABLE`], [`REASON_HANDSHAKE`], [`REASON_PENDING`], [`REASON_DISABLED`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The latest failure in a short sentence of the gateway's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The facts of the latest successful probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerFacts>,
    /// RFC 3339 times of the latest success and the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
}

impl McpStatus {
    /// The document before any probe: `Pending`, or `ProbeDisabled`.
    pub fn initial(resource: &str, probing: bool) -> Self {
        let reason = if probing {
            REASON_PENDING
        } else {
            REASON_DISABLED
        };
        McpStatus {
            resource: resource.to_owned(),
            reason: Some(reason.to_owned()),
            ..Default::default()
        }
    }

    /// Records one probe's outcome at `now` (RFC 3339).
    pub fn record(&mut self, outcome: Result<ServerFacts, ProbeError>, now: String) {
        match outcome {
            Ok(facts) => {
                self.ok = true;
                self.reason = None;
                self.last_error = None;
                self.server = Some(facts);
                self.last_success = Some(now.clone());
            }
            Err(e) => {
                self.ok = false;
                self.reason = Some(e.reason().to_owned());
                self.last_error = Some(e.to_string());
            }
        }
        self.last_attempt = Some(now);
    }
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Handshake(String),
}

impl ProbeError {
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::Unreachable(_) => REASON_UNREACHABLE,
            ProbeError::Handshake(_) => REASON_HANDSHAKE,
        }
    }
}

fn bad(msg: impl Into<String>) -> ProbeError {
    ProbeError::Handshake(msg.into())
}

/// The JSON-RPC answer to request `id` in an answer body, JSON or SSE (`text/event-stream`).
/// `Ok(None)` while an SSE body has no such answer yet and is not `complete`.
pub fn find_answer(
    content_type: &str,
    body: &[u8],
    id: u64,
    complete: bool,
) -> Result<Option<Value>, ProbeError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let media = media.to_ascii_lowercase();
    let found = match media.as_str() {
        "text/event-stream" => sse_answer(body, id, complete)?,
        "application/json" if !complete => return Ok(None),
        "application/json" => {
            let v: Value = serde_json::from_slice(body).map_err(|_| bad("answer is not JSON"))?;
            let all = match v {
                Value::Array(items) => items,
                one => vec![one],
            };
            all.into_iter().find(|m| is_answer_to(m, id))
        }
        _ => return Err(bad("answer is neither JSON nor an event stream")),
    };
    match found {
        Some(v) => Ok(Some(v)),
        None if complete => Err(bad("no answer to the request")),
        None => Ok(None),
    }
}

fn is_answer_to(message: &Value, id: u64) -> bool {
    message.get("id").and_then(Value::as_u64) == Some(id)
        && (message.get("result").is_some() || message.get("error").is_some())
}

/// The answer to `id` among the complete events of an SSE body. Non-JSON data fails closed.
fn sse_answer(body: &[u8], id: u64, complete: bool) -> Result<Option<Value>, ProbeError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("event stream is not UTF-8"))?;
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut events: Vec<&str> = text.split("\n\n").collect();
    if !complete {
        events.pop(); // the part after the last blank line may still grow
    }
    for event in events {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let data = data.join("\n");
        if data.trim().is_empty() {
            continue; // comments, ids, retry hints, the 2025-11-25 priming event (empty data)
        }
        let message: Value = serde_json::from_str(&data)
            .map_err(|_| bad("event stream carries data that is not JSON"))?;
        if is_answer_to(&message, id) {
            return Ok(Some(message));
        }
    }
    Ok(None)
}

/// The `result` object of an answer; a JSON-RPC error names only its code.
pub fn rpc_result<'a>(
    answer: &'a Value,
    method: &str,
) -> Result<&'a serde_json::Map<String, Value>, ProbeError> {
    if let Some(error) = answer.get("error") {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        return Err(bad(format!("{method} answered JSON-RPC error {code}")));
    }
    answer
        .get("result")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(format!("{method} answer has no result object")))
}

/// Printable characters only, at most `max` of them.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn short_string(v: Option<&Value>, what: &str) -> Result<String, ProbeError> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("initialize answer lacks {what}")))?;
    Ok(clean(s, MAX_TEXT))
}

/// The facts of an `initialize` result (tool count still unknown).
pub fn initialize_facts(
    result: &serde_json::Map<String, Value>,
) -> Result<ServerFacts, ProbeError> {
    let protocol_version = short_string(result.get("protocolVersion"), "protocolVersion")?;
    if protocol_version.is_empty() {
        return Err(bad("initialize answer has an empty protocolVersion"));
    }
    let info = result
        .get("serverInfo")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("initialize answer lacks serverInfo"))?;
    let name = short_string(info.get("name"), "serverInfo.name")?;
    let version = match info.get("version") {
        None => String::new(),
        v => short_string(v, "a string serverInfo.version")?,
    };
    let caps = result
        .get("capabilities")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("initialize answer lacks capabilities"))?;
    if caps.len() > MAX_CAPABILITIES {
        return Err(bad(format!(
            "initialize answer names over {MAX_CAPABILITIES} capabilities"
        )));
    }
    let mut capabilities: Vec<String> = caps.keys().map(|k| clean(k, MAX_TEXT)).collect();
    capabilities.sort();
    Ok(ServerFacts {
        protocol_version,
        server_info: ServerInfo { name, version },
        capabilities,
        tool_count: None,
    })
}

/// One `tools/list` page: its number of tools and the cursor of the next page.
pub fn tools_page(
    result: &serde_json::Map<String, Value>,
) -> Result<(u32, Option<String>), ProbeError> {
    let tools = result
        .get("tools")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("tools/list answer lacks a tools array"))?;
    let cursor = match result.get("nextCursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if !c.is_empty() && c.len() <= MAX_CURSOR => Some(c.clone()),
        Some(Value::String(c)) if c.is_empty() => None,
        Some(_) => return Err(bad("tools/list answer has an invalid nextCursor")),
    };
    let count = u32::try_from(tools.len()).map_err(|_| bad("too many tools"))?;
    Ok((count, cursor))
}

/// The `Mcp-Session-Id` of an answer, if any: visible ASCII only (spec), bounded.
fn session_id(headers: &http::HeaderMap) -> Result<Option<String>, ProbeError> {
    let Some(raw) = headers.get("mcp-session-id") else {
        return Ok(None);
    };
    let id = raw.to_str().map_err(|_| bad("invalid Mcp-Session-Id"))?;
    let visible = id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if id.is_empty() || id.len() > MAX_SESSION_ID || !visible {
        return Err(bad("invalid Mcp-Session-Id"));
    }
    Ok(Some(id.to_owned()))
}

/// An MCP client for one endpoint, just enough for the handshake.
#[derive(Clone, Debug)]
pub struct Prober {
    client: reqwest::Client,
    endpoint: url::Url,
}

/// The session of one handshake: its id and the negotiated protocol version.
#[derive(Default)]
struct Session {
    id: Option<String>,
    version: Option<String>,
}

impl Prober {
    /// A prober of the MCP endpoint `endpoint` (`http://127.0.0.1:3000/mcp`).
    pub fn new(endpoint: url::Url) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Prober { client, endpoint })
    }

    /// One handshake; the session is closed (best effort) whatever the outcome.
    pub async fn handshake(&self) -> Result<ServerFacts, ProbeError> {
        let mut session = Session::default();
        let outcome = self.converse(&mut session).await;
        if let Some(id) = &session.id {
            // Servers may refuse DELETE (405); the session then expires on its own.
            let _ = self
                .request(reqwest::Method::DELETE, &session, id)
                .send()
                .await;
        }
        outcome
    }

    async fn converse(&self, session: &mut Session) -> Result<ServerFacts, ProbeError> {
        let params = json!({
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcp-auth-gateway-probe", "version": env!("CARGO_PKG_VERSION")},
        });
        let answer = self.call(session, 1, "initialize", params).await?;
        let mut facts = initialize_facts(rpc_result(&answer, "initialize")?)?;
        session.version = Some(facts.protocol_version.clone());
        self.notify(session, "notifications/initialized").await?;
        if facts.capabilities.iter().any(|c| c == "tools") {
            facts.tool_count = Some(self.count_tools(session).await?);
        }
        Ok(facts)
    }

    async fn count_tools(&self, session: &mut Session) -> Result<u32, ProbeError> {
        let (mut total, mut cursor) = (0u32, None::<String>);
        for page in 0..MAX_TOOL_PAGES {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let answer = self
                .call(session, 2 + u64::from(page), "tools/list", params)
                .await?;
            let (count, next) = tools_page(rpc_result(&answer, "tools/list")?)?;
            total = total.saturating_add(count);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(total),
            }
        }
        Err(bad(format!("tools/list has over {MAX_TOOL_PAGES} pages")))
    }

    fn request(&self, method: reqwest::Method, s: &Session, id: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(method, self.endpoint.clone())
            .header("mcp-session-id", id);
        if let Some(v) = &s.version {
            req = req.header("mcp-protocol-version", v);
        }
        req
    }

    fn post(&self, session: &Session, body: &Value) -> reqwest::RequestBuilder {
        let req = match &session.id {
            Some(id) => self.request(reqwest::Method::POST, session, id),
            None => self.client.post(self.endpoint.clone()),
        };
        req.header(http::header::ACCEPT, "application/json, text/event-stream")
            .json(body)
    }

    async fn notify(&self, session: &Session, method: &str) -> Result<(), ProbeError> {
        let body = json!({"jsonrpc": "2.0", "method": method});
        let resp = self
            .post(session, &body)
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(bad(format!(
                "{method} answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        Ok(())
    }

    /// Sends request `id` and reads its answer (bounded); keeps the session id it gets.
    async fn call(
        &self,
        session: &mut Session,
        id: u64,
        method: &str,
        params: Value,
    ) -> Result<Value, ProbeError> {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut resp = self
            .post(session, &body)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(bad(format!(
                "{method} answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        if session.id.is_none() {
            session.id = session_id(resp.headers())?;
        }
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut body = Vec::new();
        // SSE answers are checked per chunk: a server may keep the stream open after answering.
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(bad(format!(
                    "{method} answer exceeds {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
            if let Some(answer) = find_answer(&content_type, &body, id, false)? {
                return Ok(answer);
            }
        }
        find_answer(&content_type, &body, id, true)?.ok_or_else(|| bad("no answer"))
    }
}

/// A transport failure in our words (reqwest's text may name the URL, nothing secret, but
/// short sentences keep the document stable).
fn unreachable(e: reqwest::Error) -> ProbeError {
    let what = if e.is_timeout() {
        format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect to the MCP server".to_owned()
    } else {
        "the connection to the MCP server failed".to_owned()
    };
    ProbeError::Unreachable(what)
}

/// Probes every `interval` (sooner after a failure: 1 s doubling up to `interval`) and records
/// each outcome in `status`. Runs until dropped.
pub async fn run(prober: Prober, status: Arc<RwLock<McpStatus>>, interval: Duration) {
    let mut retry = Duration::from_secs(1);
    loop {
        let outcome = prober.handshake().await;
        let failed = outcome.is_err();
        if let Err(e) = &outcome {
            tracing::warn!(reason = e.reason(), error = %e, "MCP handshake with the upstream failed");
        }
        let now = jiff::Timestamp::now().to_string();
        status.write().expect("poisoned").record(outcome, now);
        let wait = if failed {
            let wait = retry.min(interval);
            retry = (retry * 2).min(interval);
            wait
        } else {
            retry = Duration::from_secs(1);
            interval
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests;
