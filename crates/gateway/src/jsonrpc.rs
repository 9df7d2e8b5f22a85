//! The JSON-RPC view of a request body: which methods and tools it names, the MCP 2026-07-28
//! request headers (`Mcp-Method`, `Mcp-Name`, `MCP-Protocol-Version`) checked against it, and
//! `tools/list` answers cut down to the tools a token may call.

use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

/// `Mcp-Method`: the body's `method`.
pub const MCP_METHOD: &str = "mcp-method";
/// `Mcp-Name`: the body's `params.name` (or `params.uri`) for the methods in [`NAMED`].
pub const MCP_NAME: &str = "mcp-name";
/// `MCP-Protocol-Version`.
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// The first revision whose clients must send `Mcp-Method` / `Mcp-Name`.
pub const HEADERS_REQUIRED_FROM: &str = "2026-07-28";
/// JSON-RPC `HeaderMismatch` (MCP 2026-07-28).
pub const HEADER_MISMATCH: i64 = -32020;
/// JSON-RPC parse error.
pub const PARSE_ERROR: i64 = -32700;
/// Methods whose target is mirrored into `Mcp-Name`.
const NAMED: [&str; 3] = ["tools/call", "resources/read", "prompts/get"];

/// One JSON-RPC message as the gateway needs it. Derived structs refuse duplicate keys, so a
/// body the gateway and the server could read differently is refused, not guessed at.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Message {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub params: Option<Params>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Params {
    #[serde(default)]
    pub name: Option<Value>,
    #[serde(default)]
    pub uri: Option<Value>,
    #[serde(default, rename = "_meta")]
    pub meta: Option<Meta>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Meta {
    #[serde(default, rename = "io.modelcontextprotocol/protocolVersion")]
    pub protocol_version: Option<Value>,
}

impl Message {
    /// `params.name` (tools, prompts) or `params.uri` (resources), when a string.
    fn target(&self) -> Option<&str> {
        let params = self.params.as_ref()?;
        let value = if self.method.as_deref() == Some("resources/read") {
            params.uri.as_ref()
        } else {
            params.name.as_ref()
        };
        value.and_then(Value::as_str)
    }

    /// The tool a `tools/call` calls. A call without a string name names the empty tool,
    /// which no permissive rule should match by accident but base scopes still cover.
    pub fn called_tool(&self) -> Option<&str> {
        (self.method.as_deref() == Some("tools/call")).then(|| self.target().unwrap_or(""))
    }

    fn body_version(&self) -> Option<&str> {
        self.params
            .as_ref()?
            .meta
            .as_ref()?
            .protocol_version
            .as_ref()?
            .as_str()
    }
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// No body (GET, DELETE).
    Empty,
    One(Message),
    /// A JSON-RPC batch (protocol 2025-03-26).
    Batch(Vec<Message>),
}

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::Empty);
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let parsed = if first == Some(&b'[') {
            serde_json::from_slice(bytes).map(Self::Batch)
        } else {
            serde_json::from_slice(bytes).map(Self::One)
        };
        parsed.map_err(|e| format!("the body is not a JSON-RPC message: {e}"))
    }

    pub fn messages(&self) -> &[Message] {
        match self {
            Self::Empty => &[],
            Self::One(m) => std::slice::from_ref(m),
            Self::Batch(ms) => ms,
        }
    }

    /// The tools this body calls.
    pub fn called_tools(&self) -> impl Iterator<Item = &str> {
        self.messages().iter().filter_map(Message::called_tool)
    }

    /// Ids of the `tools/list` requests, whose answers are filtered.
    pub fn list_ids(&self) -> Vec<Value> {
        self.messages()
            .iter()
            .filter(|m| m.method.as_deref() == Some("tools/list"))
            .filter_map(|m| m.id.clone())
            .collect()
    }

    /// The id an error answer carries (a single request's, else none).
    pub fn error_id(&self) -> Value {
        match self {
            Self::One(m) => m.id.clone().unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// Decodes an `Mcp-Name` value: the `=?base64?…?=` sentinel form, else the value itself.
fn decode_name(raw: &str) -> Option<String> {
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(encoded) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            String::from_utf8(bytes).ok()
        }
        None => Some(raw.to_owned()),
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("{name} is sent more than once"));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| format!("{name} holds invalid characters"))
}

/// Checks the mirrored headers against the body. From protocol 2026-07-28 on they are
/// required; older clients may leave them out, but whatever is sent must match.
pub fn check_headers(headers: &HeaderMap, body: &Body) -> Result<(), String> {
    let method_h = header(headers, MCP_METHOD)?;
    let name_h = header(headers, MCP_NAME)?;
    let version_h = header(headers, MCP_PROTOCOL_VERSION)?;
    let message = match body {
        Body::One(m) if m.method.is_some() => m,
        // Responses and empty bodies carry no method; a batch has no single one.
        _ if method_h.is_none() && name_h.is_none() => return Ok(()),
        _ => return Err("Mcp-Method / Mcp-Name sent with a body that has no single method".into()),
    };
    let method = message.method.as_deref().unwrap_or_default();
    // Header rules for notifications are not defined by 2026-07-28: required for requests only.
    let required = message.id.is_some() && version_h.is_some_and(|v| v >= HEADERS_REQUIRED_FROM);
    check_method(method_h, method, required)?;
    if NAMED.contains(&method) {
        check_name(name_h, message.target(), required)?;
    } else if name_h.is_some() {
        return Err(format!("Mcp-Name sent for {method}, which names no target"));
    }
    match (version_h, message.body_version()) {
        (Some(h), Some(b)) if h != b => Err(format!(
            "MCP-Protocol-Version header value '{h}' does not match body value '{b}'"
        )),
        _ => Ok(()),
    }
}

fn check_method(header: Option<&str>, method: &str, required: bool) -> Result<(), String> {
    match header {
        Some(h) if h != method => Err(format!(
            "Mcp-Method header value '{h}' does not match body value '{method}'"
        )),
        None if required => Err("the Mcp-Method header is missing".into()),
        _ => Ok(()),
    }
}

fn check_name(header: Option<&str>, target: Option<&str>, required: bool) -> Result<(), String> {
    match (header, target) {
        (Some(h), target) => {
            let decoded = decode_name(h).ok_or("Mcp-Name is not valid base64 UTF-8")?;
            match target {
                Some(t) if t == decoded => Ok(()),
                t => Err(format!(
                    "Mcp-Name header value '{decoded}' does not match body value '{}'",
                    t.unwrap_or_default()
                )),
            }
        }
        (None, _) if required => Err("the Mcp-Name header is missing".into()),
        (None, _) => Ok(()),
    }
}

/// Keeps in `tools/list` answers (a response object, or a batch array of them) only the
/// tools `allowed` admits. Returns whether anything was removed.
pub fn filter_tool_lists(
    answer: &mut Value,
    list_ids: &[Value],
    allowed: &dyn Fn(&str) -> bool,
) -> bool {
    match answer {
        Value::Array(items) => {
            // Every item, not only up to the first change.
            let mut changed = false;
            for item in items {
                changed |= filter_one(item, list_ids, allowed);
            }
            changed
        }
        item => filter_one(item, list_ids, allowed),
    }
}

fn filter_one(item: &mut Value, list_ids: &[Value], allowed: &dyn Fn(&str) -> bool) -> bool {
    if !item.get("id").is_some_and(|id| list_ids.contains(id)) {
        return false;
    }
    let Some(tools) = item
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = tools.len();
    // A tool entry without a string name cannot be matched to a rule: dropped.
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(allowed));
    tools.len() != before
}

/// The JSON-RPC error body of a refused request.
pub fn error_body(id: Value, code: i64, message: &str) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn body(v: Value) -> Body {
        Body::parse(v.to_string().as_bytes()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn call(name: &str) -> Value {
        json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":name,"arguments":{}}})
    }

    #[test]
    fn bodies_name_their_tools_and_lists() {
        let b = body(
            json!([call("a"), {"jsonrpc":"2.0","id":"x","method":"tools/list"},
            {"jsonrpc":"2.0","method":"notifications/initialized"}, call("b")]),
        );
        assert_eq!(b.called_tools().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(b.list_ids(), [json!("x")]);
        assert_eq!(Body::parse(b"  ").unwrap(), Body::Empty);
        let nameless = body(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}));
        assert_eq!(nameless.called_tools().collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn ambiguous_bodies_are_refused() {
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            "not json",
            r#"{"method":"tools/call"} trailing"#,
        ] {
            assert!(Body::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_must_match_the_body() {
        let b = body(call("echo"));
        let ok = |pairs: &[(&'static str, &str)]| check_headers(&headers(pairs), &b);
        assert!(ok(&[]).is_ok(), "older clients send none");
        assert!(ok(&[(MCP_METHOD, "tools/call"), (MCP_NAME, "echo")]).is_ok());
        assert!(ok(&[(MCP_METHOD, "tools/list")]).is_err());
        assert!(ok(&[(MCP_METHOD, "tools/call"), (MCP_NAME, "delete_all")]).is_err());
        assert!(
            ok(&[(MCP_NAME, "=?base64?ZWNobw==?=")]).is_ok(),
            "base64 form"
        );
        assert!(ok(&[(MCP_NAME, "=?base64?ZGVsZXRl?=")]).is_err());
        assert!(ok(&[(MCP_NAME, "=?base64?!!?=")]).is_err());
        // 2026-07-28 clients must send both.
        let v = (MCP_PROTOCOL_VERSION, "2026-07-28");
        assert!(ok(&[v]).is_err());
        assert!(ok(&[v, (MCP_METHOD, "tools/call")]).is_err());
        assert!(ok(&[v, (MCP_METHOD, "tools/call"), (MCP_NAME, "echo")]).is_ok());
        assert!(ok(&[(MCP_PROTOCOL_VERSION, "2025-11-25")]).is_ok());
        assert!(ok(&[(MCP_METHOD, "tools/call"), (MCP_METHOD, "tools/call")]).is_err());
    }

    #[test]
    fn other_shapes_and_versions() {
        let list = body(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
        assert!(check_headers(&headers(&[(MCP_NAME, "x")]), &list).is_err());
        let batch = body(json!([call("a")]));
        assert!(check_headers(&headers(&[]), &batch).is_ok());
        assert!(check_headers(&headers(&[(MCP_METHOD, "tools/call")]), &batch).is_err());
        let read = body(
            json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}),
        );
        assert!(check_headers(&headers(&[(MCP_NAME, "file:///a")]), &read).is_ok());
        assert!(check_headers(&headers(&[(MCP_NAME, "file:///b")]), &read).is_err());
        let meta = body(json!({"jsonrpc":"2.0","id":1,"method":"tools/list",
            "params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}));
        let v = |x| headers(&[(MCP_PROTOCOL_VERSION, x), (MCP_METHOD, "tools/list")]);
        assert!(check_headers(&v("2026-07-28"), &meta).is_ok());
        assert!(check_headers(&v("2026-08-01"), &meta).is_err());
    }

    #[test]
    fn tool_lists_are_filtered_by_id() {
        let allowed = |t: &str| t != "secret";
        let tools = json!({"tools":[{"name":"echo"},{"name":"secret"},{"title":"no name"}]});
        let mut one = json!({"jsonrpc":"2.0","id":3,"result":tools});
        assert!(filter_tool_lists(&mut one, &[json!(3)], &allowed));
        assert_eq!(one["result"]["tools"], json!([{"name":"echo"}]));
        let mut other_id = json!({"jsonrpc":"2.0","id":4,"result":tools});
        assert!(!filter_tool_lists(&mut other_id, &[json!(3)], &allowed));
        let mut batch = json!([{"jsonrpc":"2.0","id":1,"result":{}},
            {"jsonrpc":"2.0","id":"l","result":tools}]);
        assert!(filter_tool_lists(&mut batch, &[json!("l")], &allowed));
        assert_eq!(batch[1]["result"]["tools"], json!([{"name":"echo"}]));
    }
}
