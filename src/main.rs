#![forbid(unsafe_code)]
//! CLI: `run` the operator, `proxy` the auth gateway, `crdgen` the CRDs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mcp_keycloak_operator::controller::{Context, OperatorConfig};
use mcp_keycloak_operator::metrics::Metrics;
use mcp_keycloak_operator::runtime;

/// jemalloc, with its background purging thread, returns freed memory to the system (glibc's
/// arenas kept most of the start-up peak resident; BENCHMARKS.md, operator scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "mcp-keycloak-operator",
    version,
    about = "Secures MCP servers with Keycloak"
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, env = "LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (ambient kubeconfig or in-cluster config).
    Run(Box<RunArgs>),
    /// Run the auth gateway in front of an MCP server (the sidecar of `auth.mode: Proxy`).
    Proxy(Box<mcp_auth_gateway::GatewayConfig>),
    /// Write the CRD manifests.
    Crdgen {
        #[arg(long, default_value = "crds")]
        out: PathBuf,
    },
}

// The flags of `run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Resync period in seconds (drift in Keycloak is repaired within it).
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Reconciles each controller runs at once.
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = OperatorConfig::DEFAULT_CONCURRENCY)]
    max_concurrent_reconciles: u16,
    /// Image for gateway containers (defaults to this operator's image).
    #[arg(long, env = "OPERATOR_IMAGE")]
    operator_image: Option<String>,
    /// Only watch this namespace.
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Only the holder of a coordination.k8s.io Lease reconciles (for replicas > 1).
    #[arg(long, env = "LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the Lease (default: POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, default_value = "mcp-keycloak-operator")]
    lease_name: String,
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Give every McpServer a NetworkPolicy admitting only its gateway (or server) port.
    #[arg(long, env = "SERVER_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    server_network_policy: bool,
    /// Labels (`k=v,k2=v2`) of the namespaces whose pods may scrape the gateways' metrics
    /// port. With neither selector set, the metrics port admits nobody.
    #[arg(long, env = "METRICS_NAMESPACE_SELECTOR")]
    metrics_namespace_selector: Option<String>,
    /// Labels (`k=v,k2=v2`) of the pods (e.g. Prometheus) that may scrape the metrics port.
    #[arg(long, env = "METRICS_POD_SELECTOR")]
    metrics_pod_selector: Option<String>,
    /// Seconds between live verifications of every McpServer (the gateways' `/mcp-status`, or
    /// the operator's own checks); 0 turns verification off.
    #[arg(long, env = "VERIFY_SECONDS", default_value_t = 60)]
    verify_seconds: u64,
    /// Labels (`k=v,…`) of the operator's namespace, for the per-server NetworkPolicy to admit
    /// the operator to the gateways' admin port (live verification reads `/mcp-status` there).
    #[arg(long, env = "OPERATOR_NAMESPACE_SELECTOR")]
    operator_namespace_selector: Option<String>,
    /// Labels (`k=v,…`) of the operator's pods, for the same rule.
    #[arg(long, env = "OPERATOR_POD_SELECTOR")]
    operator_pod_selector: Option<String>,
}

/// `k=v,k2=v2` as match labels.
fn labels(raw: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("{kv:?} is not a label k=v")),
        })
        .collect()
}

/// A NetworkPolicy peer (the metrics scraper, the operator); `None` when no selector is given.
fn metrics_peer(
    namespaces: Option<&str>,
    pods: Option<&str>,
) -> Result<Option<mcp_keycloak_operator::desired::workload::MetricsPeer>, String> {
    if namespaces.is_none_or(str::is_empty) && pods.is_none_or(str::is_empty) {
        return Ok(None);
    }
    Ok(Some(
        mcp_keycloak_operator::desired::workload::MetricsPeer {
            namespace_selector: labels(namespaces.unwrap_or(""))?,
            pod_selector: labels(pods.unwrap_or(""))?,
        },
    ))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow_free::Result {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy(config) => {
            init_logging(cli.log_json);
            mcp_auth_gateway::run(*config).await?;
            Ok(())
        }
        Command::Crdgen { out } => {
            mcp_keycloak_operator::crdgen::write(&out)?;
            Ok(())
        }
        Command::Run(args) => {
            init_logging(cli.log_json);
            run(*args).await
        }
    }
}

/// `run`: the controllers and the admin listener until a signal or a failure.
async fn run(args: RunArgs) -> anyhow_free::Result {
    let client = kube::Client::try_default().await?;
    let mut config = OperatorConfig {
        resync: Duration::from_secs(args.resync_seconds),
        concurrency: args.max_concurrent_reconciles,
        ..Default::default()
    };
    if let Some(image) = args.operator_image {
        config.operator_image = image;
    }
    config.server_network_policies = args.server_network_policy;
    config.metrics_peer = metrics_peer(
        args.metrics_namespace_selector.as_deref(),
        args.metrics_pod_selector.as_deref(),
    )?;
    config.operator_peer = metrics_peer(
        args.operator_namespace_selector.as_deref(),
        args.operator_pod_selector.as_deref(),
    )?;
    config.verify_interval = Duration::from_secs(args.verify_seconds);
    let ctx = Context::new(client, Arc::new(Metrics::default()), config);
    let health = Arc::new(runtime::Health::default());
    let leader = args.leader_election.then(|| runtime::LeaderElection {
        lease_name: args.lease_name,
        namespace: args.lease_namespace,
        identity: std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id())),
        lease_seconds: args.lease_seconds,
    });
    let metrics_addr = args.metrics_addr;
    let admin = tokio::spawn(runtime::serve_admin(
        metrics_addr,
        ctx.clone(),
        health.clone(),
    ));
    tracing::info!(%metrics_addr, "starting");
    let result = tokio::select! {
        r = runtime::run(ctx, args.namespace, health, leader) => r,
        r = admin => match r {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        },
    };
    tracing::info!("stopped");
    Ok(result?)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "operator".into())
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
