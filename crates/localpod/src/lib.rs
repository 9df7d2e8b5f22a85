#![forbid(unsafe_code)]
//! Local pod runner (tests and demo): runs the pod of a reconciled Deployment as local processes
//! on loopback, with env resolved as the kubelet would (`value` with `$(VAR)` expansion,
//! `secretKeyRef`, `configMapKeyRef`, `fieldRef` to the pod's name/namespace), `command`/`args`
//! honoured, and an explicit image → local command mapping. Anything it cannot run faithfully
//! (volumes, init containers, unknown images, unsupported env sources…) is refused with a clear
//! error instead of running something else.
//!
//! Containers of one pod share the host's loopback (as they share the pod's), so two pods that
//! listen on the same ports cannot run at once: [`RunningPod::spawn`] checks every declared
//! container port first and refuses with [`RunnerError::PortBusy`].
//!
//! - [`images`]: the default image → local command mapping (operator image → the built binary,
//!   server-everything image → the pinned npm package, native example image → the example binary);
//! - [`forward`]: a loopback TCP port-forward (the McpServer's URL port → the Service's target);
//! - [`cluster`]: everything together for one McpServer read from the API server.

pub mod cluster;
pub mod forward;
pub mod images;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVarSource, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunnerError {
    #[error("container {container}: image {image} has no local mapping (known: {known})")]
    UnknownImage {
        container: String,
        image: String,
        known: String,
    },
    #[error("pod of {deployment} cannot be run faithfully: {reason}")]
    Unsupported { deployment: String, reason: String },
    #[error("container {container}: env {var}: {reason}")]
    Env {
        container: String,
        var: String,
        reason: String,
    },
    #[error(
        "{owner}: port {port} is already in use on this host (containers run on the host's \
         loopback, so two pods with the same ports cannot run at once; stop the other one)"
    )]
    PortBusy { owner: String, port: u16 },
    #[error("container {container}: {message}")]
    Spawn { container: String, message: String },
    #[error("container {container} did not become ready: {message}")]
    NotReady { container: String, message: String },
    #[error("installing {what}: {message}")]
    Install { what: String, message: String },
    #[error("reading {what} from the API server: {message}")]
    Cluster { what: String, message: String },
}

/// What an image runs locally. Container `args` replace `default_args` (Docker's CMD); a
/// container `command` (Docker's ENTRYPOINT) is refused unless the mapping allows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCommand {
    pub program: PathBuf,
    /// Always passed first (e.g. the script of an npm package).
    pub fixed_args: Vec<String>,
    pub default_args: Vec<String>,
}

/// Image reference → local command. An entry without a tag (`mcp/everything`) stands for every
/// tag of that repository; an entry with a tag (`x/y:1.2`) only for exactly that tag (an image
/// without a tag is `:latest`, one pinned only by digest matches no tagged entry), so a pod
/// asking for another version is refused rather than run with the one that is installed.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<(String, LocalCommand)>,
}

impl ImageMap {
    pub fn with(mut self, image: &str, cmd: LocalCommand) -> Self {
        self.entries.push((image.to_string(), cmd));
        self
    }

    pub fn lookup(&self, image: &str) -> Option<&LocalCommand> {
        let repo = repository(image);
        let image_tag = tag(image);
        self.entries
            .iter()
            .find(|(entry, _)| {
                repository(entry) == repo
                    && match explicit_tag(entry) {
                        None => true,
                        Some(t) => image_tag.as_deref() == Some(t.as_str()),
                    }
            })
            .map(|(_, c)| c)
    }

    /// The mapped image references, in the order they were added.
    pub fn images(&self) -> impl Iterator<Item = (&str, &LocalCommand)> {
        self.entries.iter().map(|(i, c)| (i.as_str(), c))
    }

    fn known(&self) -> String {
        self.entries
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The tag an image reference is pulled with: `x:1` → `1`, `x` → `latest`, `x@sha256:…` → none.
pub fn tag(image: &str) -> Option<String> {
    match explicit_tag(image) {
        Some(t) => Some(t),
        None if image.contains('@') => None,
        None => Some("latest".to_string()),
    }
}

/// The tag written in an image reference, if any.
fn explicit_tag(image: &str) -> Option<String> {
    let name = image.split('@').next().unwrap_or(image);
    match (name.rfind(':'), name.rfind('/')) {
        (Some(c), Some(s)) if c > s => Some(name[c + 1..].to_string()),
        (Some(c), None) => Some(name[c + 1..].to_string()),
        _ => None,
    }
}

/// `docker.io/library/x:1@sha256:…` → `x`; `ghcr.io/a/b:1` → `ghcr.io/a/b`.
pub fn repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' is a tag (a ':' before it is a registry port).
    let no_tag = match (no_digest.rfind(':'), no_digest.rfind('/')) {
        (Some(c), Some(s)) if c > s => &no_digest[..c],
        (Some(c), None) => &no_digest[..c],
        _ => no_digest,
    };
    let r = no_tag
        .strip_prefix("docker.io/library/")
        .or_else(|| no_tag.strip_prefix("docker.io/"))
        .unwrap_or(no_tag);
    r.strip_prefix("library/").unwrap_or(r).to_string()
}

/// One container, ready to spawn.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessPlan {
    pub container: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<i32>,
    /// How the runner decides the container is ready (from its readiness probe, else a TCP
    /// connect to each declared port).
    pub readiness: Readiness,
}

/// A container's readiness check, resolved to port numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// `httpGet` probe: `GET http://127.0.0.1:{port}{path}` answers 2xx/3xx.
    Http { port: u16, path: String },
    /// `tcpSocket` probe, or no probe: every listed port accepts connections.
    Tcp { ports: Vec<u16> },
}

/// Plans the pod of `deployment` (pure: every object it needs is passed in).
pub fn plan_pod(
    deployment: &Deployment,
    secrets: &[Secret],
    config_maps: &[ConfigMap],
    images: &ImageMap,
) -> Result<Vec<ProcessPlan>, RunnerError> {
    let name = deployment.name_any();
    let unsupported = |reason: String| RunnerError::Unsupported {
        deployment: name.clone(),
        reason,
    };
    let pod = deployment
        .spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| unsupported("no pod spec".into()))?;
    check_pod(pod).map_err(|reason| unsupported(reason.into()))?;
    let pod_name = format!("{name}-local");
    let namespace = deployment.namespace().unwrap_or_default();
    let sources = EnvSources {
        secrets,
        config_maps,
        pod_name: &pod_name,
        namespace: &namespace,
    };
    pod.containers
        .iter()
        .map(|c| plan_container(c, images, &sources, &unsupported))
        .collect()
}

/// Refuses pod-level features the runner cannot reproduce.
fn check_pod(pod: &PodSpec) -> Result<(), &'static str> {
    if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("init containers are not supported");
    }
    if pod.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err("volumes are not supported");
    }
    if pod.host_network == Some(true) {
        return Err("hostNetwork is not supported");
    }
    Ok(())
}

/// One container's process: its image's local command, its env resolved, its readiness.
fn plan_container(
    c: &Container,
    images: &ImageMap,
    sources: &EnvSources,
    unsupported: &dyn Fn(String) -> RunnerError,
) -> Result<ProcessPlan, RunnerError> {
    if c.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported(format!("container {} mounts volumes", c.name)));
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported(format!("container {} uses envFrom", c.name)));
    }
    let image = c.image.clone().unwrap_or_default();
    let cmd = images
        .lookup(&image)
        .ok_or_else(|| RunnerError::UnknownImage {
            container: c.name.clone(),
            image: image.clone(),
            known: images.known(),
        })?;
    if c.command.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported(format!(
            "container {} overrides the image's command, which has no local equivalent",
            c.name
        )));
    }
    let env = resolve_env(c, sources)?;
    let args = match c.args.as_ref().filter(|a| !a.is_empty()) {
        Some(a) => a.iter().map(|x| expand(x, &env)).collect(),
        None => cmd.default_args.clone(),
    };
    let ports: Vec<i32> = c
        .ports
        .as_ref()
        .map(|p| p.iter().map(|p| p.container_port).collect())
        .unwrap_or_default();
    let readiness = readiness(c, &ports).map_err(unsupported)?;
    Ok(ProcessPlan {
        container: c.name.clone(),
        program: cmd.program.clone(),
        args: cmd.fixed_args.iter().cloned().chain(args).collect(),
        env,
        ports,
        readiness,
    })
}

/// A port of a probe (`IntOrString`: a number or the name of one of the container's ports).
fn probe_port(c: &Container, port: &IntOrString) -> Result<u16, String> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .ok_or_else(|| {
                format!(
                    "container {}: probe port {name:?} names no port of the container",
                    c.name
                )
            })?,
    };
    u16::try_from(n).map_err(|_| format!("container {}: probe port {n} is invalid", c.name))
}

fn readiness(c: &Container, ports: &[i32]) -> Result<Readiness, String> {
    let tcp_ports = || Readiness::Tcp {
        ports: ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect(),
    };
    let Some(probe) = &c.readiness_probe else {
        return Ok(tcp_ports());
    };
    if let Some(http) = &probe.http_get {
        if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err(format!(
                "container {}: only HTTP readiness probes are supported",
                c.name
            ));
        }
        return Ok(Readiness::Http {
            port: probe_port(c, &http.port)?,
            path: http.path.clone().unwrap_or_else(|| "/".into()),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(Readiness::Tcp {
            ports: vec![probe_port(c, &tcp.port)?],
        });
    }
    // exec/grpc probes cannot be evaluated here: fall back to the declared ports.
    Ok(tcp_ports())
}

/// What `valueFrom` env sources resolve against: the namespace's objects and the pod's identity.
struct EnvSources<'a> {
    secrets: &'a [Secret],
    config_maps: &'a [ConfigMap],
    pod_name: &'a str,
    namespace: &'a str,
}

impl EnvSources<'_> {
    /// The value of one `valueFrom`; `None` for an optional key that is absent.
    fn value_of(&self, from: &EnvVarSource) -> Result<Option<String>, String> {
        if let Some(r) = &from.secret_key_ref {
            let found = self
                .secrets
                .iter()
                .find(|s| s.name_any() == r.name)
                .and_then(|s| s.data.as_ref()?.get(&r.key))
                .map(|b| String::from_utf8_lossy(&b.0).to_string());
            return key_value(found, r.optional, || {
                format!("Secret {} has no key {}", r.name, r.key)
            });
        }
        if let Some(r) = &from.config_map_key_ref {
            let found = self
                .config_maps
                .iter()
                .find(|m| m.name_any() == r.name)
                .and_then(|m| m.data.as_ref()?.get(&r.key).cloned());
            return key_value(found, r.optional, || {
                format!("ConfigMap {} has no key {}", r.name, r.key)
            });
        }
        if let Some(f) = &from.field_ref {
            return match f.field_path.as_str() {
                "metadata.name" => Ok(Some(self.pod_name.to_string())),
                "metadata.namespace" => Ok(Some(self.namespace.to_string())),
                other => Err(format!("fieldRef {other} is not supported")),
            };
        }
        Err("this env source is not supported".into())
    }
}

/// A key reference's value: the one found, nothing for an absent optional key, else an error.
fn key_value(
    found: Option<String>,
    optional: Option<bool>,
    missing: impl FnOnce() -> String,
) -> Result<Option<String>, String> {
    match found {
        Some(v) => Ok(Some(v)),
        None if optional == Some(true) => Ok(None),
        None => Err(missing()),
    }
}

fn resolve_env(
    c: &Container,
    sources: &EnvSources,
) -> Result<BTreeMap<String, String>, RunnerError> {
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(expand(v, &env)),
            (None, None) => Some(String::new()),
            (None, Some(from)) => sources.value_of(from).map_err(|reason| RunnerError::Env {
                container: c.name.clone(),
                var: e.name.clone(),
                reason,
            })?,
        };
        if let Some(v) = value {
            env.insert(e.name.clone(), v);
        }
    }
    Ok(env)
}

/// Kubernetes `$(VAR)` expansion: defined variables are replaced, `$$` escapes, unknown
/// references stay as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) if env.contains_key(&inner[..end]) => {
                    out.push_str(&env[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Whether something already listens on `port` of this host (any address): binding
/// `0.0.0.0:port` fails.
pub fn port_in_use(port: u16) -> bool {
    matches!(
        std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// Refuses a pod whose declared container ports are taken on this host.
pub fn check_ports_free(plans: &[ProcessPlan]) -> Result<(), RunnerError> {
    for p in plans {
        for port in p.ports.iter().filter_map(|p| u16::try_from(*p).ok()) {
            if port_in_use(port) {
                return Err(RunnerError::PortBusy {
                    owner: format!("container {}", p.container),
                    port,
                });
            }
        }
    }
    Ok(())
}

/// Grace period between SIGTERM and SIGKILL in [`RunningPod::stop`].
pub const STOP_GRACE: Duration = Duration::from_secs(5);

struct Process {
    container: String,
    pid: u32,
    child: tokio::process::Child,
    readiness: Readiness,
}

/// How [`RunningPod::spawn_with`] starts processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Put each process in its own process group, so a terminal's Ctrl-C reaches only the
    /// program that started them (which then stops them by PID). Off by default: in tests, a
    /// Ctrl-C that kills the test binary should reach its children too.
    pub own_process_group: bool,
}

/// Spawned containers of one pod. [`RunningPod::stop`] ends them by their recorded PIDs
/// (SIGTERM, then SIGKILL after [`STOP_GRACE`]); dropping it SIGKILLs them.
pub struct RunningPod {
    processes: Vec<Process>,
    log_dir: PathBuf,
}

impl RunningPod {
    /// Spawns every container after checking that none of their ports is taken. `path` is given
    /// to containers that do not set `PATH` (the host's toolchain stands in for the image's
    /// filesystem); `HOME` is passed through; nothing else of this process's environment is.
    /// Each container's stdout and stderr go to `log_dir/{container}.log`.
    pub fn spawn(plans: &[ProcessPlan], path: &str, log_dir: &Path) -> Result<Self, RunnerError> {
        Self::spawn_with(plans, path, log_dir, SpawnOptions::default())
    }

    pub fn spawn_with(
        plans: &[ProcessPlan],
        path: &str,
        log_dir: &Path,
        options: SpawnOptions,
    ) -> Result<Self, RunnerError> {
        check_ports_free(plans)?;
        let io_err = |container: &str, what: &str, e: std::io::Error| RunnerError::Spawn {
            container: container.to_string(),
            message: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(log_dir).map_err(|e| io_err("-", "log dir", e))?;
        let mut pod = RunningPod {
            processes: vec![],
            log_dir: log_dir.to_path_buf(),
        };
        for p in plans {
            let log_path = pod.log_file(&p.container);
            let log = std::fs::File::create(&log_path)
                .map_err(|e| io_err(&p.container, "log file", e))?;
            let log2 = log
                .try_clone()
                .map_err(|e| io_err(&p.container, "log file", e))?;
            let mut cmd = tokio::process::Command::new(&p.program);
            cmd.args(&p.args)
                .env_clear()
                .envs(&p.env)
                .stdin(std::process::Stdio::null())
                .stdout(log2)
                .stderr(log)
                .kill_on_drop(true);
            if options.own_process_group {
                cmd.process_group(0);
            }
            if !p.env.contains_key("PATH") {
                cmd.env("PATH", path);
            }
            if let Ok(home) = std::env::var("HOME") {
                if !p.env.contains_key("HOME") {
                    cmd.env("HOME", home);
                }
            }
            // On failure the containers spawned so far are killed when `pod` drops.
            let child = cmd
                .spawn()
                .map_err(|e| io_err(&p.container, &format!("{}", p.program.display()), e))?;
            pod.processes.push(Process {
                container: p.container.clone(),
                pid: child.id().unwrap_or_default(),
                child,
                readiness: p.readiness.clone(),
            });
        }
        Ok(pod)
    }

    /// `(container, pid)` of every spawned container.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.container.clone(), p.pid))
            .collect()
    }

    /// Where a container's output goes.
    pub fn log_file(&self, container: &str) -> PathBuf {
        self.log_dir.join(format!("{container}.log"))
    }

    /// The last `lines` lines of a container's log.
    pub fn log_tail(&self, container: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_file(container)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The first container that has exited, with its status.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.processes.iter_mut().find_map(|p| {
            p.child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| (p.container.clone(), s))
        })
    }

    /// Waits until every container passes its readiness check; fails as soon as one exits
    /// (with the tail of its log) or when `timeout` has passed.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), RunnerError> {
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RunnerError::NotReady {
                container: "-".into(),
                message: e.to_string(),
            })?;
        let mut ready = vec![false; self.processes.len()];
        loop {
            if let Some((container, status)) = self.exited() {
                return Err(RunnerError::NotReady {
                    message: format!(
                        "exited with {status}; last lines of {}:\n{}",
                        self.log_file(&container).display(),
                        self.log_tail(&container, 15)
                    ),
                    container,
                });
            }
            for (i, p) in self.processes.iter().enumerate() {
                if !ready[i] {
                    ready[i] = check_ready(&http, &p.readiness).await;
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let i = ready.iter().position(|r| !*r).unwrap_or_default();
                let p = &self.processes[i];
                return Err(RunnerError::NotReady {
                    container: p.container.clone(),
                    message: format!(
                        "{:?} not passed within {timeout:?}; last lines of {}:\n{}",
                        p.readiness,
                        self.log_file(&p.container).display(),
                        self.log_tail(&p.container, 15)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every container by its recorded PID: SIGTERM (through `kill(1)`), then SIGKILL for
    /// whatever still runs after [`STOP_GRACE`]; every child is reaped.
    pub async fn stop(self) {
        self.stop_with_grace(STOP_GRACE).await
    }

    pub async fn stop_with_grace(mut self, grace: Duration) {
        for p in self.processes.iter_mut() {
            if matches!(p.child.try_wait(), Ok(None)) && p.pid != 0 {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &p.pid.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await;
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for p in self.processes.iter_mut() {
            if tokio::time::timeout_at(deadline, p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
    }
}

async fn check_ready(http: &reqwest::Client, r: &Readiness) -> bool {
    match r {
        Readiness::Http { port, path } => http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .is_ok_and(|resp| resp.status().as_u16() < 400),
        Readiness::Tcp { ports } => {
            for port in ports {
                if tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, *port))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn images() -> ImageMap {
        ImageMap::default()
            .with(
                "ghcr.io/mcp-keycloak-operator/operator",
                LocalCommand {
                    program: "/bin/op".into(),
                    fixed_args: vec![],
                    default_args: vec!["run".into()],
                },
            )
            .with(
                "mcp/everything",
                LocalCommand {
                    program: "/usr/bin/node".into(),
                    fixed_args: vec!["/cache/everything/dist/index.js".into()],
                    default_args: vec!["streamableHttp".into()],
                },
            )
    }

    fn deployment(pod: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "weather", "namespace": "team"},
            "spec": {"selector": {}, "template": {"spec": pod}}
        }))
        .unwrap()
    }

    fn secret() -> Secret {
        serde_json::from_value(
            json!({"metadata": {"name": "weather-oauth"}, "data": {"client-secret": "czNjcjN0"}}),
        )
        .unwrap()
    }

    #[test]
    fn repository_strips_tags_digests_and_docker_hub_prefixes() {
        assert_eq!(repository("mcp/everything:latest"), "mcp/everything");
        assert_eq!(
            repository("docker.io/mcp/everything@sha256:abc"),
            "mcp/everything"
        );
        assert_eq!(repository("docker.io/library/node:22"), "node");
        assert_eq!(repository("localhost:5000/x/y"), "localhost:5000/x/y");
        assert_eq!(repository("localhost:5000/x/y:1"), "localhost:5000/x/y");
    }

    #[test]
    fn tagged_entries_match_only_their_tag() {
        let cmd = |p: &str| LocalCommand {
            program: p.into(),
            fixed_args: vec![],
            default_args: vec![],
        };
        let map = ImageMap::default()
            .with("x/pinned:1.2", cmd("/pinned"))
            .with("x/any", cmd("/any"));
        assert_eq!(
            map.lookup("docker.io/x/pinned:1.2").unwrap().program,
            PathBuf::from("/pinned")
        );
        assert!(map.lookup("x/pinned:1.3").is_none());
        assert!(map.lookup("x/pinned").is_none(), "no tag is :latest");
        assert!(map.lookup("x/pinned@sha256:abc").is_none());
        assert!(map.lookup("x/any:7").is_some());
        assert!(map.lookup("x/any@sha256:abc").is_some());
        assert_eq!(tag("x/y"), Some("latest".into()));
        assert_eq!(tag("localhost:5000/x/y:2"), Some("2".into()));
        assert_eq!(tag("x/y@sha256:abc"), None);
    }

    #[test]
    fn a_busy_port_is_refused_before_anything_starts() {
        let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        assert!(port_in_use(port));
        let d = deployment(json!({"containers": [
            {"name": "gateway", "image": "ghcr.io/mcp-keycloak-operator/operator:1", "args": ["proxy"]},
            {"name": "mcp", "image": "mcp/everything", "ports": [{"containerPort": port}]}
        ]}));
        let plans = plan_pod(&d, &[], &[], &images()).unwrap();
        let dir = std::env::temp_dir().join(format!("podrunner-busy-{}", std::process::id()));
        let err = RunningPod::spawn(&plans, "/usr/bin:/bin", &dir)
            .err()
            .expect("a pod on a busy port must be refused");
        assert_eq!(
            err,
            RunnerError::PortBusy {
                owner: "container mcp".into(),
                port
            }
        );
        assert!(err.to_string().contains("already in use"), "{err}");
        assert!(!dir.exists(), "nothing was started, not even a log file");
    }

    #[test]
    fn readiness_comes_from_the_probe_or_the_ports() {
        let d = deployment(json!({"containers": [
            {"name": "gateway", "image": "ghcr.io/mcp-keycloak-operator/operator:1",
             "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9090}],
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}}},
            {"name": "mcp", "image": "mcp/everything", "ports": [{"containerPort": 3001}]}
        ]}));
        let plans = plan_pod(&d, &[], &[], &images()).unwrap();
        assert_eq!(
            plans[0].readiness,
            Readiness::Http {
                port: 9090,
                path: "/healthz".into()
            }
        );
        assert_eq!(plans[1].readiness, Readiness::Tcp { ports: vec![3001] });
        let bad = deployment(
            json!({"containers": [{"name": "mcp", "image": "mcp/everything",
            "readinessProbe": {"httpGet": {"path": "/", "port": "nope"}}}]}),
        );
        assert!(matches!(
            plan_pod(&bad, &[], &[], &images()),
            Err(RunnerError::Unsupported { .. })
        ));
    }

    #[test]
    fn env_resolves_like_the_kubelet() {
        let d = deployment(json!({"containers": [{
            "name": "gateway", "image": "ghcr.io/mcp-keycloak-operator/operator:0.1.0", "args": ["proxy", "--x=$(PORT)"],
            "env": [
                {"name": "PORT", "value": "3000"},
                {"name": "URL", "value": "http://127.0.0.1:$(PORT)/$(NOPE)/$$(PORT)"},
                {"name": "OAUTH_CLIENT_SECRET", "valueFrom": {"secretKeyRef": {"name": "weather-oauth", "key": "client-secret"}}},
                {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
            ],
            "ports": [{"containerPort": 8080}]
        }]}));
        let plans = plan_pod(&d, &[secret()], &[], &images()).unwrap();
        let p = &plans[0];
        assert_eq!(p.program, PathBuf::from("/bin/op"));
        assert_eq!(p.args, vec!["proxy", "--x=3000"]);
        assert_eq!(p.env["URL"], "http://127.0.0.1:3000/$(NOPE)/$(PORT)");
        assert_eq!(p.env["OAUTH_CLIENT_SECRET"], "s3cr3t");
        assert_eq!(p.env["POD_NAMESPACE"], "team");
        assert!(!p.env.contains_key("OPTIONAL"));
        assert_eq!(p.ports, vec![8080]);
    }

    #[test]
    fn default_args_apply_when_the_container_has_none() {
        let d = deployment(
            json!({"containers": [{"name": "mcp", "image": "docker.io/mcp/everything:latest"}]}),
        );
        let p = &plan_pod(&d, &[], &[], &images()).unwrap()[0];
        assert_eq!(
            p.args,
            vec!["/cache/everything/dist/index.js", "streamableHttp"]
        );
    }

    #[test]
    fn refuses_what_it_cannot_run_faithfully() {
        let unknown =
            deployment(json!({"containers": [{"name": "mcp", "image": "example/unknown:1"}]}));
        assert!(matches!(
            plan_pod(&unknown, &[], &[], &images()),
            Err(RunnerError::UnknownImage { .. })
        ));
        let volumes = deployment(
            json!({"containers": [{"name": "mcp", "image": "mcp/everything"}], "volumes": [{"name": "v", "emptyDir": {}}]}),
        );
        assert!(matches!(
            plan_pod(&volumes, &[], &[], &images()),
            Err(RunnerError::Unsupported { .. })
        ));
        let command = deployment(
            json!({"containers": [{"name": "mcp", "image": "mcp/everything", "command": ["sh"]}]}),
        );
        assert!(matches!(
            plan_pod(&command, &[], &[], &images()),
            Err(RunnerError::Unsupported { .. })
        ));
        let missing = deployment(
            json!({"containers": [{"name": "mcp", "image": "mcp/everything",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "weather-oauth", "key": "nope"}}}]}]}),
        );
        assert!(matches!(
            plan_pod(&missing, &[secret()], &[], &images()),
            Err(RunnerError::Env { .. })
        ));
        let field = deployment(
            json!({"containers": [{"name": "mcp", "image": "mcp/everything",
            "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}]}),
        );
        assert!(matches!(
            plan_pod(&field, &[], &[], &images()),
            Err(RunnerError::Env { .. })
        ));
    }
}
