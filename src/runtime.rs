//! Process runtime of `run`: the admin HTTP server (`/healthz`, `/readyz`, `/metrics`) and
//! leader election on a `coordination.k8s.io` Lease, so two replicas are safe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kube_lease_manager::LeaseManagerBuilder;

use crate::controller::{self, Context};
use crate::{Error, Result};

#[derive(Default)]
pub struct Health {
    /// Watch caches have their initial lists and the controllers run (leader only).
    pub synced: AtomicBool,
    /// Leader election is on and this replica is waiting as a standby.
    pub standby: AtomicBool,
}

#[derive(Clone)]
struct AdminState {
    ctx: Arc<Context>,
    health: Arc<Health>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.health.synced.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else if s.health.standby.load(Ordering::Relaxed) {
        // A standby serves its purpose by waiting for the lease.
        (StatusCode::OK, "standby")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.ctx.metrics.encode(),
    )
}

/// Serves the admin endpoints on `addr` until the process ends.
pub async fn serve_admin(addr: SocketAddr, ctx: Arc<Context>, health: Arc<Health>) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { ctx, health });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid("AdminListenFailed", format!("binding {addr}: {e}")))?;
    axum::serve(listener, app)
        .await
        .map_err(|e| Error::invalid("AdminServerFailed", e.to_string()))
}

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub namespace: String,
    pub identity: String,
    pub lease_seconds: u64,
}

/// Runs the controllers; with leader election, only while holding the lease. Losing the lease
/// ends the process with an error (a fresh start is the safe way back to standby).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    health: Arc<Health>,
    leader: Option<LeaderElection>,
) -> Result<()> {
    let Some(le) = leader else {
        let h = health.clone();
        controller::run_until_synced(ctx, namespace, move |ok| {
            h.synced.store(ok, Ordering::Relaxed)
        })
        .await;
        return Ok(());
    };
    health.standby.store(true, Ordering::Relaxed);
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &le.lease_name)
        .with_namespace(&le.namespace)
        .with_identity(&le.identity)
        .with_duration(le.lease_seconds)
        .with_grace((le.lease_seconds / 3).max(1))
        .build()
        .await
        .map_err(|e| Error::invalid("LeaderElectionFailed", e.to_string()))?;
    let (mut is_leader, lease_task) = manager.watch().await;
    tracing::info!(lease = %le.lease_name, identity = %le.identity, "waiting for leadership");
    while !*is_leader.borrow_and_update() {
        if is_leader.changed().await.is_err() {
            return Err(Error::invalid(
                "LeaderElectionFailed",
                "lease watcher stopped",
            ));
        }
    }
    tracing::info!(identity = %le.identity, "acquired leadership; starting controllers");
    health.standby.store(false, Ordering::Relaxed);
    let h = health.clone();
    let controllers = controller::run_until_synced(ctx, namespace, move |ok| {
        h.synced.store(ok, Ordering::Relaxed)
    });
    let lost = async {
        loop {
            if is_leader.changed().await.is_err() || !*is_leader.borrow() {
                return;
            }
        }
    };
    let result = tokio::select! {
        _ = controllers => Ok(()),
        _ = lost => Err(Error::invalid("LeadershipLost", "lost the lease; exiting so a fresh start can wait as standby")),
    };
    health.synced.store(false, Ordering::Relaxed);
    // Dropping the receiver makes the lease task release the lease (on graceful shutdown).
    drop(is_leader);
    let _ = lease_task.await;
    result
}
