//! What every request handler shares: the validated settings, the introspection client, the
//! upstream client, the metrics and the in-flight bound.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::config::Settings;
use super::introspection::Introspector;
use super::metrics::Metrics;

pub(crate) type UpstreamClient = Client<HttpConnector, Body>;

pub(crate) struct AppState {
    pub settings: Settings,
    /// One permit per request being handled (held until its response body ends).
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub introspector: Introspector,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub metadata_json: Bytes,
    /// The latest live-verification outcome (`/mcp-status`).
    pub mcp_status: Arc<std::sync::RwLock<super::probe::McpStatus>>,
}
