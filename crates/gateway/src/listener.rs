//! The MCP listener's accept loop: a hard cap on open connections and a deadline for request
//! headers (neither of which `axum::serve` offers), with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::config::Limits;
use super::metrics::Metrics;

/// Serves `router` on `listener` until `shutdown`, then lets open connections finish (the
/// caller bounds how long). Connections beyond `max_connections` are closed at once: a
/// client holding many idle connections must not starve everyone else's.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a `done` receiver; `closed()` resolves when all are gone.
    let (done_tx, done_rx) = watch::channel(());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connection_refused();
            drop(stream);
            continue;
        };
        let conn = Connection {
            stream,
            peer,
            router: router.clone(),
            header_timeout: limits.header_timeout,
            _slot: slot,
        };
        tokio::spawn(conn.run(stop_rx.clone(), done_rx.clone()));
    }
    drop(listener);
    drop(done_rx);
    let _ = stop_tx.send(true);
    done_tx.closed().await;
    Ok(())
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(self, mut stop: watch::Receiver<bool>, _done: watch::Receiver<()>) {
        let _ = self.stream.set_nodelay(true);
        let peer = self.peer;
        let inner = TowerToHyperService::new(self.router);
        // Handlers read the client address as axum's `ConnectInfo`, as with `axum::serve`.
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            inner.call(req)
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let conn = builder.serve_connection(TokioIo::new(self.stream), service);
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::trace!(%error, "connection ended with an error");
                    }
                    break;
                }
                changed = stop.changed(), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}
