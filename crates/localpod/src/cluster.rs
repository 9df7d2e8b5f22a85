//! One McpServer's pod run locally from what the API server holds: its Deployment (planned with
//! the namespace's Secrets and ConfigMaps), its Service, and a port-forward from the port of its
//! canonical URL to the Service's target port, so the URL the McpServer declares (token audience,
//! PRM `resource`) is the URL a local client connects to.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::forward::PortForward;
use super::{plan_pod, ImageMap, ProcessPlan, RunnerError, RunningPod, SpawnOptions};
use mcp_keycloak_operator::api::McpServer;

/// A running McpServer pod and the forward(s) that make its URL reachable.
pub struct LocalServer {
    /// The McpServer's canonical URL, served locally.
    pub url: String,
    pub pod: RunningPod,
    pub forwards: Vec<PortForward>,
    pub plans: Vec<ProcessPlan>,
}

impl LocalServer {
    /// Closes the forwards, then stops the containers (SIGTERM, SIGKILL after the grace).
    pub async fn stop(self) {
        drop(self.forwards);
        self.pod.stop().await;
    }
}

/// What the local runner needs of an McpServer, read from the API server.
pub struct ServerObjects {
    pub server: McpServer,
    pub deployment: Deployment,
    pub service: Service,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
}

pub async fn read_objects(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<ServerObjects, RunnerError> {
    let err = |what: &str, e: kube::Error| RunnerError::Cluster {
        what: format!("{what} {namespace}/{name}"),
        message: e.to_string(),
    };
    let server = Api::<McpServer>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| err("McpServer", e))?;
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| err("Deployment", e))?;
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| err("Service", e))?;
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map_err(|e| err("Secrets of", e))?
        .items;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .map_err(|e| err("ConfigMaps of", e))?
        .items;
    Ok(ServerObjects {
        server,
        deployment,
        service,
        secrets,
        config_maps,
    })
}

/// The container port the Service sends the McpServer's traffic to (`targetPort`, by name or
/// number, of the Service port equal to `spec.port`, else the first).
pub fn service_target_port(objs: &ServerObjects) -> Result<u16, RunnerError> {
    let unsupported = |reason: String| RunnerError::Unsupported {
        deployment: objs.deployment.name_any(),
        reason,
    };
    let ports = objs
        .service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let sp = ports
        .iter()
        .find(|p| p.port == objs.server.spec.port)
        .or(ports.first())
        .ok_or_else(|| unsupported("the Service has no ports".into()))?;
    let n = match &sp.target_port {
        None => sp.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => objs
            .deployment
            .spec
            .template
            .spec
            .iter()
            .flat_map(|p| p.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .ok_or_else(|| {
                unsupported(format!(
                    "Service targetPort {name:?} names no container port"
                ))
            })?,
    };
    u16::try_from(n).map_err(|_| unsupported(format!("invalid target port {n}")))
}

/// `(host is loopback, port)` of the McpServer's canonical URL.
fn url_endpoint(url: &str) -> Result<(url::Url, u16), String> {
    let u = url::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    };
    if !loopback {
        return Err(format!(
            "url {url} is not on this host (localhost, 127.0.0.1, [::1]): a local client could \
             not reach it under the URL its tokens are issued for"
        ));
    }
    let port = u
        .port_or_known_default()
        .ok_or_else(|| format!("url {url}: no port"))?;
    Ok((u, port))
}

/// How [`start_server_pod`] runs the pod.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `{container}.log` files go.
    pub log_dir: std::path::PathBuf,
    /// How long the containers may take to pass their readiness checks.
    pub ready_timeout: Duration,
    pub spawn: SpawnOptions,
}

impl RunOptions {
    pub fn new(log_dir: &Path) -> Self {
        RunOptions {
            log_dir: log_dir.to_path_buf(),
            ready_timeout: Duration::from_secs(30),
            spawn: SpawnOptions::default(),
        }
    }
}

/// Starts the pod of McpServer `namespace/name` with `images` and waits for readiness. When the port of the McpServer's URL differs from the
/// Service's target port, a forward `127.0.0.1:<url port>` (and `[::1]`, best effort, for
/// `localhost` URLs) → `127.0.0.1:<target port>` is set up. Refuses (before starting anything)
/// a pod it cannot run faithfully, a URL that is not on this host, and taken ports.
pub async fn start_server_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    images: &ImageMap,
    options: &RunOptions,
) -> Result<LocalServer, RunnerError> {
    let objs = read_objects(client, namespace, name).await?;
    let plans = plan_pod(&objs.deployment, &objs.secrets, &objs.config_maps, images)?;
    let url = objs
        .server
        .status
        .as_ref()
        .and_then(|s| s.url.clone())
        .unwrap_or_else(|| objs.server.canonical_url());
    let (parsed, url_port) = url_endpoint(&url).map_err(|reason| RunnerError::Unsupported {
        deployment: objs.deployment.name_any(),
        reason,
    })?;
    let target = service_target_port(&objs)?;
    super::check_ports_free(&plans)?;
    let mut forwards = vec![];
    if url_port != target {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, target));
        forwards
            .push(PortForward::start(SocketAddr::from((Ipv4Addr::LOCALHOST, url_port)), to).await?);
        if parsed.host_str() == Some("localhost") {
            if let Ok(f) =
                PortForward::start(SocketAddr::from((Ipv6Addr::LOCALHOST, url_port)), to).await
            {
                forwards.push(f);
            }
        }
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let mut pod = RunningPod::spawn_with(&plans, &path, &options.log_dir, options.spawn)?;
    if let Err(e) = pod.wait_ready(options.ready_timeout).await {
        pod.stop().await;
        return Err(e);
    }
    Ok(LocalServer {
        url,
        pod,
        forwards,
        plans,
    })
}
