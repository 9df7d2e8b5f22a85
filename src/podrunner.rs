//! Local pod runner (tests and demo): runs the pod of a reconciled Deployment as local processes
//! on loopback, with env resolved as the kubelet would (`value` with `$(VAR)` expansion,
//! `secretKeyRef`, `configMapKeyRef`, `fieldRef` to the pod's name/namespace), `command`/`args`
//! honoured, and an explicit image → local command mapping. Anything it cannot run faithfully
//! (volumes, init containers, unknown images, unsupported env sources…) is refused with a clear
//! error instead of running something else.
//!
//! Containers of one pod share the host's loopback (as they share the pod's), so two pods that
//! listen on the same ports cannot run at once; the runner reports the clash.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret};
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

/// Image reference (without tag/digest) → local command.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    entries: Vec<(String, LocalCommand)>,
}

impl ImageMap {
    pub fn with(mut self, image_repository: &str, cmd: LocalCommand) -> Self {
        self.entries.push((image_repository.to_string(), cmd));
        self
    }

    pub fn lookup(&self, image: &str) -> Option<&LocalCommand> {
        let repo = repository(image);
        self.entries
            .iter()
            .find(|(r, _)| repository(r) == repo)
            .map(|(_, c)| c)
    }

    fn known(&self) -> String {
        self.entries
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
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
}

/// Plans the pod of `deployment` (pure: every object it needs is passed in).
pub fn plan_pod(
    deployment: &Deployment,
    secrets: &[Secret],
    config_maps: &[ConfigMap],
    images: &ImageMap,
) -> Result<Vec<ProcessPlan>, RunnerError> {
    let name = deployment.name_any();
    let unsupported = |reason: &str| RunnerError::Unsupported {
        deployment: name.clone(),
        reason: reason.to_string(),
    };
    let pod = deployment
        .spec
        .template
        .spec
        .as_ref()
        .ok_or_else(|| unsupported("no pod spec"))?;
    if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(unsupported("init containers are not supported"));
    }
    if pod.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(unsupported("volumes are not supported"));
    }
    if pod.host_network == Some(true) {
        return Err(unsupported("hostNetwork is not supported"));
    }
    let pod_name = format!("{name}-local");
    let namespace = deployment.namespace().unwrap_or_default();
    let mut plans = vec![];
    for c in &pod.containers {
        if c.volume_mounts.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(unsupported(&format!("container {} mounts volumes", c.name)));
        }
        if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(unsupported(&format!("container {} uses envFrom", c.name)));
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
            return Err(unsupported(&format!(
                "container {} overrides the image's command, which has no local equivalent",
                c.name
            )));
        }
        let env = resolve_env(c, secrets, config_maps, &pod_name, &namespace)?;
        let args = match c.args.as_ref().filter(|a| !a.is_empty()) {
            Some(a) => a.iter().map(|x| expand(x, &env)).collect(),
            None => cmd.default_args.clone(),
        };
        plans.push(ProcessPlan {
            container: c.name.clone(),
            program: cmd.program.clone(),
            args: cmd.fixed_args.iter().cloned().chain(args).collect(),
            env,
            ports: c
                .ports
                .as_ref()
                .map(|p| p.iter().map(|p| p.container_port).collect())
                .unwrap_or_default(),
        });
    }
    Ok(plans)
}

fn resolve_env(
    c: &Container,
    secrets: &[Secret],
    config_maps: &[ConfigMap],
    pod_name: &str,
    namespace: &str,
) -> Result<BTreeMap<String, String>, RunnerError> {
    let mut env = BTreeMap::new();
    for e in c.env.iter().flatten() {
        let err = |reason: String| RunnerError::Env {
            container: c.name.clone(),
            var: e.name.clone(),
            reason,
        };
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => Some(expand(v, &env)),
            (None, None) => Some(String::new()),
            (None, Some(from)) => {
                if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    let found = secrets
                        .iter()
                        .find(|s| s.name_any() == r.name)
                        .and_then(|s| s.data.as_ref()?.get(&r.key))
                        .map(|b| String::from_utf8_lossy(&b.0).to_string());
                    match (found, optional) {
                        (Some(v), _) => Some(v),
                        (None, true) => None,
                        (None, false) => {
                            return Err(err(format!("Secret {} has no key {}", r.name, r.key)))
                        }
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    let found = config_maps
                        .iter()
                        .find(|m| m.name_any() == r.name)
                        .and_then(|m| m.data.as_ref()?.get(&r.key).cloned());
                    match (found, optional) {
                        (Some(v), _) => Some(v),
                        (None, true) => None,
                        (None, false) => {
                            return Err(err(format!("ConfigMap {} has no key {}", r.name, r.key)))
                        }
                    }
                } else if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => Some(pod_name.to_string()),
                        "metadata.namespace" => Some(namespace.to_string()),
                        other => return Err(err(format!("fieldRef {other} is not supported"))),
                    }
                } else {
                    return Err(err("this env source is not supported".into()));
                }
            }
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

/// Spawned containers of one pod; killed (by their recorded PIDs) on drop.
pub struct RunningPod {
    pub children: Vec<(String, tokio::process::Child)>,
}

impl RunningPod {
    /// Spawns every container. `path` is given to containers that do not set `PATH` (the host's
    /// toolchain stands in for the image's filesystem). Logs go to `log_dir/{container}.log`.
    pub fn spawn(
        plans: &[ProcessPlan],
        path: &str,
        log_dir: &std::path::Path,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let mut children = vec![];
        for p in plans {
            let log = std::fs::File::create(log_dir.join(format!("{}.log", p.container)))?;
            let mut cmd = tokio::process::Command::new(&p.program);
            cmd.args(&p.args)
                .env_clear()
                .envs(&p.env)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true);
            if !p.env.contains_key("PATH") {
                cmd.env("PATH", path);
            }
            if let Ok(home) = std::env::var("HOME") {
                cmd.env("HOME", home);
            }
            children.push((p.container.clone(), cmd.spawn()?));
        }
        Ok(RunningPod { children })
    }

    /// Stops every container: SIGKILL to each recorded child, then reaps it.
    pub async fn stop(mut self) {
        for (_, c) in self.children.iter_mut() {
            let _ = c.kill().await;
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
