//! Prometheus metrics of the operator (text format at `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeycloakRequestLabels {
    pub method: &'static str,
    pub outcome: &'static str,
}

/// Which kind of client reaping deleted: `registered` (anonymous DCR) or `metadata_document`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReapLabels {
    pub kind: &'static str,
}

/// One policy's realm (a realm has one owning policy, and `realm` is immutable).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RealmLabels {
    pub namespace: String,
    pub policy: String,
    pub realm: String,
}

/// Which reconciler made a Keycloak request, and what for: where the requests of a reconcile go
/// (bounded: the operations are the admin client's fixed names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeycloakOperationLabels {
    pub controller: &'static str,
    pub method: &'static str,
    pub operation: String,
}

tokio::task_local! {
    /// The controller whose reconcile runs on this task (set by `controller::finish::reconcile`).
    pub static CONTROLLER: &'static str;
}

pub struct Metrics {
    pub registry: Registry,
    pub reaped_clients: Family<ReapLabels, Counter>,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ReconcileLabels, Histogram>,
    pub keycloak_requests: Family<KeycloakRequestLabels, Counter>,
    pub keycloak_operations: Family<KeycloakOperationLabels, Counter>,
    pub admin_token_refreshes: Counter,
    /// Clients in a policy's realm and its Max Clients limit (the dashboard and the
    /// `MCPRealmClientLimitPressure` alert compare them).
    pub realm_clients: Family<RealmLabels, Gauge>,
    pub realm_max_clients: Family<RealmLabels, Gauge>,
    /// Plain totals for tests and benchmarks (also visible through the families above).
    keycloak_reads: AtomicU64,
    keycloak_writes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mcp_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let keycloak_requests = Family::<KeycloakRequestLabels, Counter>::default();
        let keycloak_operations = Family::<KeycloakOperationLabels, Counter>::default();
        let admin_token_refreshes = Counter::default();
        let reaped_clients = Family::<ReapLabels, Counter>::default();
        registry.register(
            "reaped_clients",
            "Abandoned clients deleted by reaping, by kind",
            reaped_clients.clone(),
        );
        let realm_clients = Family::<RealmLabels, Gauge>::default();
        let realm_max_clients = Family::<RealmLabels, Gauge>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            reconcile_duration.clone(),
        );
        registry.register(
            "keycloak_admin_requests",
            "Keycloak Admin REST API requests by method and outcome",
            keycloak_requests.clone(),
        );
        registry.register(
            "keycloak_admin_operations",
            "Keycloak Admin REST API requests by controller, method and operation",
            keycloak_operations.clone(),
        );
        registry.register(
            "keycloak_admin_token_refreshes",
            "Admin access tokens obtained from Keycloak",
            admin_token_refreshes.clone(),
        );
        registry.register(
            "realm_clients",
            "Clients in the realm of a policy with registration enabled",
            realm_clients.clone(),
        );
        registry.register(
            "realm_max_clients",
            "Max Clients limit of anonymous registration in the realm of a policy",
            realm_max_clients.clone(),
        );
        Metrics {
            registry,
            reaped_clients,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            keycloak_requests,
            keycloak_operations,
            admin_token_refreshes,
            realm_clients,
            realm_max_clients,
            keycloak_reads: AtomicU64::new(0),
            keycloak_writes: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record_keycloak_request(
        &self,
        method: &'static str,
        operation: &str,
        outcome: &'static str,
    ) {
        self.keycloak_requests
            .get_or_create(&KeycloakRequestLabels { method, outcome })
            .inc();
        let controller = CONTROLLER.try_with(|c| *c).unwrap_or("none");
        let operation = operation.to_string();
        let labels = KeycloakOperationLabels {
            controller,
            method,
            operation,
        };
        self.keycloak_operations.get_or_create(&labels).inc();
        if method == "GET" {
            self.keycloak_reads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.keycloak_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn keycloak_reads(&self) -> u64 {
        self.keycloak_reads.load(Ordering::Relaxed)
    }

    /// Every non-GET admin request, successful or not.
    pub fn keycloak_writes(&self) -> u64 {
        self.keycloak_writes.load(Ordering::Relaxed)
    }

    pub fn record_reconcile(&self, controller: &'static str, took: Duration) {
        let labels = ReconcileLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn record_reaped(&self, kind: &'static str, n: usize) {
        let counter = self.reaped_clients.get_or_create(&ReapLabels { kind });
        counter.inc_by(n as u64);
    }

    pub fn record_error(&self, controller: &'static str, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { controller, reason })
            .inc();
    }

    /// `None` removes the series (registration closed, or the policy deleted).
    pub fn record_realm_clients(&self, realm: RealmLabels, counts: Option<(i64, i64)>) {
        match counts {
            Some((clients, max)) => {
                self.realm_clients.get_or_create(&realm).set(clients);
                self.realm_max_clients.get_or_create(&realm).set(max);
            }
            None => {
                self.realm_clients.remove(&realm);
                self.realm_max_clients.remove(&realm);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
