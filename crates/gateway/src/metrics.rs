//! Prometheus metrics (OpenMetrics text, served on the admin listener at `/metrics`).
//!
//! | metric | labels |
//! |---|---|
//! | `mcp_gateway_requests_total` | `outcome`: see [`Outcome`] |
//! | `mcp_gateway_introspection_requests_total` | `result`: `active`, `inactive`, `error` |
//! | `mcp_gateway_introspection_duration_seconds` (histogram) | |
//! | `mcp_gateway_token_cache_hits_total` | |
//! | `mcp_gateway_token_cache_misses_total` | |
//! | `mcp_gateway_token_cache_entries` (gauge) | |
//! | `mcp_gateway_token_refusals_total` | `reason`: see `InvalidReason::label` |
//! | `mcp_gateway_introspection_throttled_total` | |
//! | `mcp_gateway_connections_refused_total` | |
//! | `mcp_gateway_streams_cut_total` | `reason`: `expired`, `revoked` |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

/// How the gateway disposed of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Authorized and forwarded (whatever the upstream answered).
    Allowed,
    /// 401: no token, malformed, inactive, expired or wrong audience.
    Unauthenticated,
    /// 403: insufficient scope.
    Forbidden,
    /// 502: the upstream could not be reached or failed mid-request.
    UpstreamError,
    /// 503: introspection failed (Keycloak unreachable, non-200, bad JSON).
    AuthUnavailable,
    /// 413: request body over `--max-body-bytes`.
    PayloadTooLarge,
    /// 400: unreadable request (e.g. the client aborted the body).
    BadRequest,
    /// Protected-resource metadata served.
    Metadata,
    /// CORS preflight answered by the gateway.
    Preflight,
    /// 403: an `Origin` that is neither the resource's nor allowed.
    ForbiddenOrigin,
    /// 429: an unknown token over the introspection rate limit.
    Throttled,
    /// 503: too many requests in flight.
    Overloaded,
    /// 408: the request body did not arrive in time.
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::UpstreamError => "upstream_error",
            Self::AuthUnavailable => "auth_unavailable",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BadRequest => "bad_request",
            Self::Metadata => "metadata",
            Self::Preflight => "preflight",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::Throttled => "throttled",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    introspections: Family<ResultLabels, Counter>,
    introspection_duration: Histogram,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_entries: Gauge,
    refusals: Family<ReasonLabels, Counter>,
    throttled: Counter,
    connections_refused: Counter,
    streams_cut: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` (the registry keeps a handle to the same values) and returns it.
fn registered<M: Metric + Clone>(
    registry: &mut Registry,
    (name, help): (&str, &str),
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Name and help of every metric, in the order of the exposition.
const DESCRIPTIONS: [(&str, &str); 10] = [
    (
        "mcp_gateway_requests",
        "Requests handled by the MCP auth gateway, by outcome",
    ),
    (
        "mcp_gateway_introspection_requests",
        "Token introspection calls to the authorization server, by result",
    ),
    (
        "mcp_gateway_introspection_duration_seconds",
        "Duration of token introspection calls",
    ),
    (
        "mcp_gateway_token_cache_hits",
        "Token checks answered from the introspection cache",
    ),
    (
        "mcp_gateway_token_cache_misses",
        "Token checks that needed an introspection call (or joined one in flight)",
    ),
    (
        "mcp_gateway_token_cache_entries",
        "Entries in the introspection cache",
    ),
    (
        "mcp_gateway_token_refusals",
        "Presented tokens refused with invalid_token, by reason (answers never tell)",
    ),
    (
        "mcp_gateway_introspection_throttled",
        "Introspections of unknown tokens refused by the rate limits",
    ),
    (
        "mcp_gateway_connections_refused",
        "Connections closed at once because --max-connections were open",
    ),
    (
        "mcp_gateway_streams_cut",
        "Streamed responses ended because their authorization ended, by reason",
    ),
];

impl Metrics {
    /// Every metric, registered in the order of the exposition.
    pub fn new() -> Self {
        let r = &mut Registry::default();
        let [requests, introspections, introspection_duration, cache_hits, cache_misses, cache_entries, refusals, throttled, connections_refused, streams_cut] =
            DESCRIPTIONS;
        let buckets = exponential_buckets(0.001, 2.0, 14);
        Self {
            requests: registered(r, requests, Family::default()),
            introspections: registered(r, introspections, Family::default()),
            introspection_duration: registered(r, introspection_duration, Histogram::new(buckets)),
            cache_hits: registered(r, cache_hits, Counter::default()),
            cache_misses: registered(r, cache_misses, Counter::default()),
            cache_entries: registered(r, cache_entries, Gauge::default()),
            refusals: registered(r, refusals, Family::default()),
            throttled: registered(r, throttled, Counter::default()),
            connections_refused: registered(r, connections_refused, Counter::default()),
            streams_cut: registered(r, streams_cut, Family::default()),
            registry: std::mem::take(r),
        }
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn introspection(&self, result: &'static str, seconds: f64) {
        self.introspections
            .get_or_create(&ResultLabels { result })
            .inc();
        self.introspection_duration.observe(seconds);
    }

    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn throttled(&self) {
        self.throttled.inc();
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn stream_cut(&self, reason: &'static str) {
        self.streams_cut
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn cache_entries(&self, n: usize) {
        self.cache_entries.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exposed_by_name_and_label() {
        let m = Metrics::new();
        m.request(Outcome::Allowed);
        m.request(Outcome::Allowed);
        m.request(Outcome::AuthUnavailable);
        m.introspection("active", 0.002);
        m.cache_hit();
        m.cache_miss();
        m.cache_entries(3);
        let text = m.encode();
        assert!(
            text.contains("mcp_gateway_requests_total{outcome=\"allowed\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("mcp_gateway_requests_total{outcome=\"auth_unavailable\"} 1\n"));
        assert!(text.contains("mcp_gateway_introspection_requests_total{result=\"active\"} 1\n"));
        assert!(text.contains("mcp_gateway_token_cache_hits_total 1\n"));
        assert!(text.contains("mcp_gateway_token_cache_misses_total 1\n"));
        assert!(text.contains("mcp_gateway_token_cache_entries 3\n"));
        assert!(text.contains("mcp_gateway_introspection_duration_seconds_count 1\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
