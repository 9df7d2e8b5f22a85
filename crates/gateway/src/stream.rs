//! Response bodies that live no longer than their authorization, and hold the request's
//! in-flight slot until they end.
//!
//! A streamed (SSE) response is watched: it is cut at the token's `exp`, and the token is
//! re-checked whenever its cache entry lapses, so a revoked token's stream ends at most one
//! cache TTL (plus one introspection) after the revocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::auth::{evaluate, Decision, TokenInfo};
use super::introspection::Admission;
use super::metadata::{Challenge, InvalidReason};
use super::state::AppState;

/// Re-check period when the cache is off or the entry's lifetime is unknown.
const FALLBACK_RECHECK: Duration = Duration::from_secs(1);

type Watchdog = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// The upstream body, plus what bounds it.
pub(crate) struct GuardedBody {
    inner: Body,
    watchdog: Option<Watchdog>,
    state: Arc<AppState>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl GuardedBody {
    pub fn new(
        inner: Body,
        state: Arc<AppState>,
        permit: Option<OwnedSemaphorePermit>,
        watch: Option<(String, Option<u64>)>,
    ) -> Self {
        let watchdog =
            watch.map(|(token, exp)| Box::pin(watch_authorization(state.clone(), token, exp)) as _);
        Self {
            inner,
            watchdog,
            state,
            _permit: permit,
        }
    }
}

/// Why the stream was cut; becomes an I/O-level abort towards the client.
#[derive(Debug, thiserror::Error)]
#[error("stream ended: the token's authorization ended ({0})")]
pub(crate) struct AuthorizationEnded(&'static str);

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(watchdog) = self.watchdog.as_mut() {
            if let Poll::Ready(reason) = watchdog.as_mut().poll(cx) {
                self.watchdog = None;
                self.state.metrics.stream_cut(reason);
                tracing::info!(reason, "streamed response cut: its authorization ended");
                // Dropping the upstream body closes the upstream stream too.
                self.inner = Body::empty();
                return Poll::Ready(Some(Err(axum::Error::new(AuthorizationEnded(reason)))));
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn until_unix(secs: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(secs))
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// Resolves (with a reason label) when the token stops authorizing the request.
async fn watch_authorization(
    state: Arc<AppState>,
    token: String,
    exp: Option<u64>,
) -> &'static str {
    let settings = &state.settings;
    loop {
        let next_check = state
            .introspector
            .cached_for(&token)
            .unwrap_or(FALLBACK_RECHECK)
            // Never spin: the entry's expiry can be "now".
            .max(Duration::from_millis(50));
        let wait = exp.map_or(next_check, |e| next_check.min(until_unix(e)));
        tokio::time::sleep(wait).await;
        if exp.is_some_and(|e| until_unix(e).is_zero()) {
            return "expired";
        }
        match state.introspector.check(&token, Admission::Recheck).await {
            Ok(info) => match evaluate(&info, &settings.rules(), SystemTime::now()) {
                Decision::Allow(_) => {}
                Decision::Deny(Challenge::InvalidToken(InvalidReason::Expired)) => {
                    return "expired"
                }
                Decision::Deny(_) if matches!(*info, TokenInfo::Inactive) => return "revoked",
                Decision::Deny(_) => return "refused",
            },
            // Keycloak unreachable: new requests fail closed; a live stream keeps going until
            // its `exp` rather than dying with every blip.
            Err(error) => tracing::warn!(%error, "cannot re-check a streaming token"),
        }
    }
}
