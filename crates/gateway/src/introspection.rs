//! RFC 7662 token introspection against Keycloak, behind the [`TokenCache`] and a
//! single-flight table so concurrent requests with the same uncached token cause one call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use url::Url;

use super::auth::{IntrospectionResponse, TokenInfo};
use super::cache::{token_key, TokenCache, TokenKey};
use super::config::{ClientSecret, IntrospectionSettings, Limits};
use super::limits::{retry_after_secs, IntrospectionLimiter};
use super::metrics::Metrics;
use super::GatewayError;

/// Largest introspection response accepted.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a token could not be checked. Never carries the token; failures are not cached and
/// the request is refused with 503 (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection request timed out")]
    Timeout,
    #[error("introspection endpoint unreachable: {0}")]
    Transport(String),
    #[error("introspection endpoint rejected the gateway's client credentials (HTTP {0}); check OAUTH_CLIENT_ID / OAUTH_CLIENT_SECRET")]
    Credentials(u16),
    #[error("introspection endpoint answered HTTP {0}")]
    Status(u16),
    #[error("introspection response is not valid RFC 7662 JSON: {0}")]
    InvalidResponse(String),
    #[error("introspection task failed")]
    Task,
    /// Not an introspection failure: the token is unknown and the client (or everyone) has
    /// used up its introspection budget. Answered 429 with `Retry-After`.
    #[error("introspection rate limit reached; retry after {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
}

/// Who asks for a token check: a client (limited for tokens not yet known), or the gateway
/// re-checking the token of a live stream (never limited; the token was known good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Client(Option<IpAddr>),
    Recheck,
}

impl IntrospectionError {
    fn from_reqwest(e: &reqwest::Error) -> Self {
        if e.is_timeout() {
            return Self::Timeout;
        }
        // The chain names the endpoint and the I/O cause; the token is only ever in the
        // request body, which errors do not echo.
        Self::Transport(super::error_chain(e))
    }
}

type SharedCall = Shared<BoxFuture<'static, Result<Arc<TokenInfo>, IntrospectionError>>>;

/// Checks tokens, cached. Cheap to clone.
#[derive(Clone)]
pub struct Introspector {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoint: Url,
    /// RFC 6749 §2.3.1: client id and secret are form-urlencoded before basic auth.
    client_id: String,
    client_secret: ClientSecret,
    cache: TokenCache,
    inflight: Mutex<HashMap<TokenKey, SharedCall>>,
    limiter: IntrospectionLimiter,
    metrics: Arc<Metrics>,
    narrowed_audience: bool,
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Introspector {
    pub(crate) fn new(
        settings: &IntrospectionSettings,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GatewayError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "mcp-keycloak-operator-gateway/",
                env!("CARGO_PKG_VERSION")
            ));
        if let Some(path) = &settings.ca_bundle {
            let pem = std::fs::read(path).map_err(|source| GatewayError::ReadFile {
                what: "CA bundle",
                path: path.clone(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(GatewayError::HttpClient)?;
            if certs.is_empty() {
                return Err(GatewayError::Config(format!(
                    "--ca-bundle {} holds no PEM certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(GatewayError::HttpClient)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint: settings.endpoint.clone(),
                client_id: form_encode(&settings.client_id),
                client_secret: ClientSecret::new(form_encode(settings.client_secret.expose())),
                cache: TokenCache::new(
                    settings.cache_ttl,
                    settings.negative_cache_ttl,
                    settings.cache_max_entries,
                ),
                inflight: Mutex::new(HashMap::new()),
                limiter: IntrospectionLimiter::new(limits.total, limits.per_client),
                metrics,
                narrowed_audience: settings.narrowed_audience,
            }),
        })
    }

    /// The introspection result for `token`, from the cache when possible. A new call
    /// (neither cached nor in flight) for a client must fit its rate limits.
    pub async fn check(
        &self,
        token: &str,
        admission: Admission,
    ) -> Result<Arc<TokenInfo>, IntrospectionError> {
        let key = token_key(token);
        if let Some(info) = self.inner.cache.get(&key, Instant::now()) {
            self.inner.metrics.cache_hit();
            return Ok(info);
        }
        self.inner.metrics.cache_miss();
        self.inner.metrics.cache_entries(self.inner.cache.len());
        let call = {
            let mut inflight = self.inner.lock_inflight();
            match inflight.get(&key) {
                Some(call) => call.clone(),
                None => {
                    self.admit(&key, admission)?;
                    let inner = self.inner.clone();
                    let token = token.to_owned();
                    // A task, so the call completes (and leaves the in-flight table) even
                    // if every waiting client goes away.
                    let task = tokio::spawn(async move {
                        let result = inner.introspect(&token).await;
                        if let Ok(info) = &result {
                            inner.cache.insert(
                                key,
                                info.clone(),
                                Instant::now(),
                                SystemTime::now(),
                            );
                            inner.metrics.cache_entries(inner.cache.len());
                        }
                        inner.lock_inflight().remove(&key);
                        result
                    });
                    let call = async move { task.await.unwrap_or(Err(IntrospectionError::Task)) }
                        .boxed()
                        .shared();
                    inflight.insert(key, call.clone());
                    call
                }
            }
        };
        call.await
    }
}

impl Introspector {
    /// Charges a new introspection to the client's and the total budget. Only tokens not known
    /// to be good are charged: a good token whose cache entry lapsed is re-checked however
    /// many bad ones are flooding in, and so is the token of a live stream.
    fn admit(&self, key: &TokenKey, admission: Admission) -> Result<(), IntrospectionError> {
        let Admission::Client(client) = admission else {
            return Ok(());
        };
        let now = Instant::now();
        if self.inner.cache.known_good(key, now) {
            return Ok(());
        }
        self.inner.limiter.try_acquire(client, now).map_err(|wait| {
            self.inner.metrics.throttled();
            IntrospectionError::Throttled {
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }

    /// How long the cached result for `token` stays valid (`None`: not cached).
    pub fn cached_for(&self, token: &str) -> Option<Duration> {
        self.inner
            .cache
            .remaining(&token_key(token), Instant::now())
    }
}

impl Inner {
    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, SharedCall>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn introspect(&self, token: &str) -> Result<Arc<TokenInfo>, IntrospectionError> {
        let started = Instant::now();
        let result = self.call(token).await;
        let label = match &result {
            Ok(info) if matches!(**info, TokenInfo::Inactive) => "inactive",
            Ok(_) => "active",
            Err(_) => "error",
        };
        self.metrics
            .introspection(label, started.elapsed().as_secs_f64());
        result
    }

    async fn call(&self, token: &str) -> Result<Arc<TokenInfo>, IntrospectionError> {
        let mut response = self
            .http
            .post(self.endpoint.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| IntrospectionError::from_reqwest(&e))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            401 | 403 => return Err(IntrospectionError::Credentials(status)),
            _ => return Err(IntrospectionError::Status(status)),
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| IntrospectionError::from_reqwest(&e))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(IntrospectionError::InvalidResponse(
                    "response too large".to_owned(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        // Report only the position and category of a parse error: serde messages can
        // quote values from the response.
        let mut parsed: IntrospectionResponse = serde_json::from_slice(&body).map_err(|e| {
            IntrospectionError::InvalidResponse(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if self.narrowed_audience && parsed.active {
            parsed.aud = super::auth::narrowed_audience(token);
        }
        Ok(Arc::new(parsed.into()))
    }
}
