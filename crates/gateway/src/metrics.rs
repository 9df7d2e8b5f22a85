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
use prometheus_client::registry::Registry;

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

type Reasons = Family<ReasonLabels, Counter>;

/// The counters of the gateway's hardening: refusal reasons, throttled introspections, refused
/// connections, cut streams.
fn register_hardening(registry: &mut Registry) -> (Reasons, Counter, Counter, Reasons) {
    let refusals = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "mcp_gateway_token_refusals",
        "Presented tokens refused with invalid_token, by reason (answers never tell)",
        refusals.clone(),
    );
    let throttled = Counter::default();
    registry.register(
        "mcp_gateway_introspection_throttled",
        "Introspections of unknown tokens refused by the rate limits",
        throttled.clone(),
    );
    let connections_refused = Counter::default();
    registry.register(
        "mcp_gateway_connections_refused",
        "Connections closed at once because --max-connections were open",
        connections_refused.clone(),
    );
    let streams_cut = Family::<ReasonLabels, Counter>::default();
    registry.register(
        "mcp_gateway_streams_cut",
        "Streamed responses ended because their authorization ended, by reason",
        streams_cut.clone(),
    );
    (refusals, throttled, connections_refused, streams_cut)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mcp_gateway_requests",
            "Requests handled by the MCP auth gateway, by outcome",
            requests.clone(),
        );
        let introspections = Family::<ResultLabels, Counter>::default();
        registry.register(
            "mcp_gateway_introspection_requests",
            "Token introspection calls to the authorization server, by result",
            introspections.clone(),
        );
        let introspection_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "mcp_gateway_introspection_duration_seconds",
            "Duration of token introspection calls",
            introspection_duration.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "mcp_gateway_token_cache_hits",
            "Token checks answered from the introspection cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "mcp_gateway_token_cache_misses",
            "Token checks that needed an introspection call (or joined one in flight)",
            cache_misses.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "mcp_gateway_token_cache_entries",
            "Entries in the introspection cache",
            cache_entries.clone(),
        );
        let (refusals, throttled, connections_refused, streams_cut) =
            register_hardening(&mut registry);
        Self {
            refusals,
            throttled,
            connections_refused,
            streams_cut,
            registry,
            requests,
            introspections,
            introspection_duration,
            cache_hits,
            cache_misses,
            cache_entries,
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
