//! `tools/list` answers as a token may see them: the tools it may not call are removed, from a
//! JSON answer (buffered, bounded) or from an SSE stream (event by event, as events arrive).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use serde_json::Value;

use super::jsonrpc::{error_body, filter_tool_lists};
use super::scopes::ScopeRules;

/// Largest answer (JSON) or single event (SSE) the gateway buffers to filter it.
pub const MAX_FILTERED_BYTES: usize = 8 * 1024 * 1024;
/// JSON-RPC internal error, for an answer the gateway cannot read and so cannot filter.
const INTERNAL_ERROR: i64 = -32603;

/// What decides which tools stay: the ids of the `tools/list` requests and the token's scopes.
#[derive(Debug, Clone)]
pub(crate) struct ListFilter {
    pub ids: Vec<Value>,
    pub granted: Vec<String>,
    pub rules: std::sync::Arc<ScopeRules>,
}

impl ListFilter {
    /// Filters one JSON-RPC answer (object or batch); `None` when nothing changed.
    fn apply(&self, answer: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let mut value: Value = serde_json::from_slice(answer).map_err(|_| ())?;
        let allowed = |tool: &str| self.rules.may_call(&self.granted, tool);
        if !filter_tool_lists(&mut value, &self.ids, &allowed) {
            return Ok(None);
        }
        Ok(Some(value.to_string().into_bytes()))
    }

    /// The filtered form of a whole JSON answer; an unreadable one becomes a JSON-RPC error
    /// (fail closed: it might hold tools the token may not see).
    pub fn json(&self, answer: &[u8]) -> Bytes {
        match self.apply(answer) {
            Ok(Some(filtered)) => filtered.into(),
            Ok(None) => Bytes::copy_from_slice(answer),
            Err(()) => {
                let id = self.ids.first().cloned().unwrap_or(Value::Null);
                let msg = "The MCP server's answer could not be read";
                error_body(id, INTERNAL_ERROR, msg).to_string().into()
            }
        }
    }

    /// One SSE event (without its blank-line terminator), rewritten if it carries a
    /// `tools/list` answer that loses tools.
    fn event(&self, event: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(event).ok()?;
        let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let json = data.join("\n");
        let filtered = match self.apply(json.as_bytes()) {
            Ok(Some(filtered)) => String::from_utf8(filtered).ok()?,
            Ok(None) => return None,
            // Not JSON (a comment, a keep-alive): nothing to filter.
            Err(()) => return None,
        };
        let mut out = String::new();
        let mut data_written = false;
        for line in lines.iter().filter(|l| !l.is_empty()) {
            if !line.starts_with("data:") {
                out.push_str(line);
                out.push('\n');
            } else if !data_written {
                out.push_str(&format!("data: {filtered}\n"));
                data_written = true;
            }
        }
        Some(out.into_bytes())
    }
}

/// Where the first event in `buf` ends: (end of the event, start of the next one).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some((i, i + 2));
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// An SSE body whose `tools/list` answers are filtered event by event.
pub(crate) struct SseFiltered {
    inner: Body,
    filter: ListFilter,
    buf: Vec<u8>,
    ended: bool,
}

/// An event over [`MAX_FILTERED_BYTES`]: the stream is cut rather than passed unfiltered.
#[derive(Debug, thiserror::Error)]
#[error("an event of the MCP server's stream is too large to filter")]
struct EventTooLarge;

impl SseFiltered {
    pub fn new(inner: Body, filter: ListFilter) -> Self {
        Self {
            inner,
            filter,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The complete events in the buffer, filtered; the incomplete rest stays.
    fn drain_events(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((end, next)) = event_end(&self.buf) {
            match self.filter.event(&self.buf[..end]) {
                Some(rewritten) => {
                    out.extend_from_slice(&rewritten);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(&self.buf[..next]),
            }
            self.buf.drain(..next);
        }
        out
    }
}

impl HttpBody for SseFiltered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.buf.extend_from_slice(&data);
                        let out = self.drain_events();
                        if self.buf.len() > MAX_FILTERED_BYTES {
                            self.ended = true;
                            return Poll::Ready(Some(Err(axum::Error::new(EventTooLarge))));
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                        }
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    // An unterminated last event is passed as it came: a client ignores it.
                    self.ended = true;
                    let rest = std::mem::take(&mut self.buf);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    let rest = match self.filter.event(&rest) {
                        Some(rewritten) => rewritten,
                        None => rest,
                    };
                    return Poll::Ready(Some(Ok(Frame::data(rest.into()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::json;

    fn filter() -> ListFilter {
        ListFilter {
            ids: vec![json!(2)],
            granted: vec!["mcp:tools".into()],
            rules: ScopeRules::parse(r#"{"tools":[{"name":"get-sum","scopes":["mcp:admin"]}]}"#)
                .unwrap()
                .into(),
        }
    }

    fn list_answer() -> Value {
        json!({"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"},{"name":"get-sum"}]}})
    }

    #[test]
    fn json_answers_lose_the_gated_tools() {
        let out = filter().json(list_answer().to_string().as_bytes());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name":"echo"}]));
        // Unchanged answers pass byte for byte; unreadable ones become an error.
        let other = br#"{"jsonrpc":"2.0","id":9,"result":{"tools":[{"name":"get-sum"}]}}"#;
        assert_eq!(&filter().json(other)[..], other);
        let broken: Value = serde_json::from_slice(&filter().json(b"{oops")).unwrap();
        assert_eq!(broken["error"]["code"], json!(INTERNAL_ERROR));
        assert_eq!(broken["id"], json!(2));
    }

    async fn run_sse(chunks: Vec<&'static str>) -> String {
        let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        let body = SseFiltered::new(Body::from_stream(stream), filter());
        let bytes = Body::new(body).collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sse_events_are_filtered_across_chunk_boundaries() {
        let answer = list_answer().to_string();
        let (a, b) = answer.split_at(30);
        let a: &'static str =
            Box::leak(format!("event: message\nid: 1\ndata: {a}").into_boxed_str());
        let b: &'static str = Box::leak(format!("{b}\r\n\r\n: keep-alive\n\n").into_boxed_str());
        let out = run_sse(vec![": hello\n\n", a, b]).await;
        assert!(
            out.starts_with(": hello\n\nevent: message\nid: 1\ndata: {"),
            "{out}"
        );
        assert!(out.contains(r#""tools":[{"name":"echo"}]"#), "{out}");
        assert!(!out.contains("get-sum"), "{out}");
        assert!(out.ends_with("\n\n: keep-alive\n\n"), "{out}");
    }

    #[tokio::test]
    async fn multi_line_data_and_unrelated_events_pass() {
        let out = run_sse(vec![
            "data: {\"jsonrpc\":\"2.0\",\"id\":2,\n",
            "data: \"result\":{\"tools\":[{\"name\":\"get-sum\"}]}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
        ])
        .await;
        assert_eq!(
            out,
            "data: {\"id\":2,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[]}}\n\n\
             data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
        );
    }
}
