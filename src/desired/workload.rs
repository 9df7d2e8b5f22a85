//! Desired Deployment, Service and Secret of an McpServer.
//!
//! The pod's env follows [`mcp_auth_gateway::contract`]: the MCP container gets the auth part
//! in `Native` mode, the gateway gets it in `Proxy` mode plus its listeners, its upstream and
//! `spec.auth.allowedOrigins`; `MCP_SERVICE_ACCOUNT_CLIENTS` is only set when
//! `spec.auth.serviceAccountClients` is.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{
    ActiveAudience, AuthMode, McpAuthPolicy, McpServer, GATEWAY_ADMIN_PORT, GATEWAY_PORT,
};
use mcp_auth_gateway::contract::{
    self, ADMIN_LISTEN_ENV, ALLOWED_ORIGINS_ENV, AUDIENCE_MODE_ENV,
    AUDIENCE_MODE_RESOURCE_INDICATOR, AUTH_HOST_ENV, AUTH_PORT_ENV, AUTH_REALM_ENV, CLIENT_ID_ENV,
    CLIENT_SECRET_ENV, HOST_ENV, INTROSPECTION_ENDPOINT_ENV, ISSUER_ENV, LISTEN_ENV, PORT_ENV,
    REQUIRED_SCOPES_ENV, SCOPE_RULES_ENV, SERVER_URL_ENV, SERVICE_ACCOUNT_CLIENTS_ENV,
    UPSTREAM_ENV,
};
use mcp_auth_gateway::scopes::{ScopeRules, ToolRule};

pub const SECRET_KEY_CLIENT_ID: &str = "client-id";
pub const SECRET_KEY_CLIENT_SECRET: &str = "client-secret";
pub const CONFIG_HASH_ANNOTATION: &str = "mcpauth.dev/config-hash";
pub const SERVER_LABEL: &str = "mcpauth.dev/server";
pub const MANAGED_BY: &str = "mcp-keycloak-operator";

/// Everything the workload needs from the policy and Keycloak, resolved by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadInputs {
    pub url: String,
    pub issuer: String,
    pub introspection_endpoint: String,
    pub auth_host: String,
    pub auth_port: u16,
    pub realm: String,
    pub client_id: String,
    pub secret_name: String,
    pub required_scopes: Vec<String>,
    /// Per-tool scopes and the policy's scope hierarchy, as the gateway reads them (JSON;
    /// empty when there are none).
    pub scope_rules: String,
    /// Clients whose user-less tokens are accepted (`spec.auth.serviceAccountClients`).
    pub service_account_clients: Vec<String>,
    /// Extra browser origins the gateway admits (`spec.auth.allowedOrigins`).
    pub allowed_origins: Vec<String>,
    /// `ResourceIndicator`: the gateway wants `aud` to be exactly the url.
    pub audience_mode: ActiveAudience,
    /// Digest of the client secret and the auth settings: changes roll the pods.
    pub config_hash: String,
    pub gateway_image: String,
}

impl WorkloadInputs {
    pub fn resolve(
        server: &McpServer,
        policy: &McpAuthPolicy,
        client_secret: &str,
        operator_image: &str,
    ) -> Self {
        let kc_url = url::Url::parse(&policy.spec.keycloak.url).ok();
        let auth_host = kc_url
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let auth_port = kc_url
            .as_ref()
            .and_then(|u| u.port_or_known_default())
            .unwrap_or(80);
        let audience_mode = policy.status.as_ref().and_then(|s| s.audience_mode);
        let audience_mode = audience_mode.unwrap_or_default();
        let required_scopes = required_scopes(server, policy, audience_mode);
        let scope_rules = scope_rules_json(server, policy);
        let url = server.canonical_url();
        let issuer = policy.issuer();
        let introspection_endpoint = policy.introspection_endpoint();
        let client_id = super::audience::client_id(server, audience_mode);
        let config_hash = super::digest(&[
            client_secret,
            &client_id,
            &url,
            &issuer,
            &introspection_endpoint,
            &required_scopes.join(" "),
            &scope_rules,
        ]);
        WorkloadInputs {
            url,
            issuer,
            introspection_endpoint,
            auth_host,
            auth_port,
            realm: policy.spec.keycloak.realm.clone(),
            client_id,
            secret_name: server.secret_name(),
            required_scopes,
            audience_mode,
            scope_rules,
            service_account_clients: server.spec.auth.service_account_clients.clone(),
            allowed_origins: server.spec.auth.allowed_origins.clone(),
            config_hash,
            gateway_image: server
                .spec
                .auth
                .gateway_image
                .clone()
                .unwrap_or_else(|| operator_image.to_string()),
        }
    }
}

/// Scopes a token must carry: the server's (default: the policy's, but for those only tool
/// rules name) plus, in `Scope` mode, its audience scope, so the 401 challenge tells clients
/// what to request.
pub fn required_scopes(
    server: &McpServer,
    policy: &McpAuthPolicy,
    mode: ActiveAudience,
) -> Vec<String> {
    let per_tool = |name: &str| {
        let rules = &server.spec.auth.tools;
        rules.iter().any(|r| r.scopes.iter().any(|s| s == name))
    };
    let mut scopes: Vec<String> = if server.spec.scopes.is_empty() {
        let names = policy.spec.scopes.iter().map(|s| s.name.clone());
        names.filter(|n| !per_tool(n)).collect()
    } else {
        server.spec.scopes.clone()
    };
    if mode == ActiveAudience::Scope {
        scopes.push(server.audience_scope());
    }
    scopes
}

/// `spec.auth.tools` and the policy's `implies`, in the gateway's `MCP_SCOPE_RULES` form.
pub fn scope_rules_json(server: &McpServer, policy: &McpAuthPolicy) -> String {
    let rules = ScopeRules {
        tools: (server.spec.auth.tools.iter())
            .map(|r| ToolRule {
                name: r.name.clone(),
                scopes: r.scopes.clone(),
            })
            .collect(),
        implies: (policy.spec.scopes.iter())
            .filter(|s| !s.implies.is_empty())
            .map(|s| (s.name.clone(), s.implies.clone()))
            .collect(),
    };
    if rules == ScopeRules::default() {
        return String::new();
    }
    serde_json::to_string(&rules).expect("scope rules serialize")
}

pub fn labels(server: &McpServer) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "mcp-server".into()),
        ("app.kubernetes.io/instance".into(), server.name_any()),
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        (SERVER_LABEL.into(), server.name_any()),
    ])
}

fn selector(server: &McpServer) -> BTreeMap<String, String> {
    BTreeMap::from([(SERVER_LABEL.into(), server.name_any())])
}

fn meta(server: &McpServer, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: server.namespace(),
        labels: Some(labels(server)),
        owner_references: server.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The auth part of the env contract (everything but HOST and PORT).
fn auth_env(inputs: &WorkloadInputs) -> Vec<EnvVar> {
    let mut vars = vec![
        env(AUTH_HOST_ENV, inputs.auth_host.clone()),
        env(AUTH_PORT_ENV, inputs.auth_port.to_string()),
        env(AUTH_REALM_ENV, inputs.realm.clone()),
        env(CLIENT_ID_ENV, inputs.client_id.clone()),
        secret_env(
            CLIENT_SECRET_ENV,
            &inputs.secret_name,
            SECRET_KEY_CLIENT_SECRET,
        ),
        env(SERVER_URL_ENV, inputs.url.clone()),
        env(ISSUER_ENV, inputs.issuer.clone()),
        env(
            INTROSPECTION_ENDPOINT_ENV,
            inputs.introspection_endpoint.clone(),
        ),
        env(REQUIRED_SCOPES_ENV, inputs.required_scopes.join(" ")),
    ];
    // Only in that mode: absent means Scope, and unchanged servers keep their pod template.
    if inputs.audience_mode == ActiveAudience::ResourceIndicator {
        vars.push(env(AUDIENCE_MODE_ENV, AUDIENCE_MODE_RESOURCE_INDICATOR));
    }
    if !inputs.scope_rules.is_empty() {
        vars.push(env(SCOPE_RULES_ENV, inputs.scope_rules.clone()));
    }
    // Only when set: absent means "users only", and unchanged servers keep their pod template.
    if !inputs.service_account_clients.is_empty() {
        vars.push(env(
            SERVICE_ACCOUNT_CLIENTS_ENV,
            inputs.service_account_clients.join(","),
        ));
    }
    vars
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The MCP container's default: what the restricted Pod Security Standard asks for, minus a
/// read-only root filesystem (servers often write temporary files).
fn mcp_security_context() -> SecurityContext {
    SecurityContext {
        read_only_root_filesystem: None,
        ..restricted_security_context()
    }
}

fn mcp_container(server: &McpServer, inputs: &WorkloadInputs) -> Container {
    let mode = server.spec.auth.mode;
    let port = server.spec.port;
    let mut vars = vec![
        // Behind the gateway the server must only be reachable from inside the pod.
        env(
            HOST_ENV,
            if mode == AuthMode::Proxy {
                "127.0.0.1"
            } else {
                "0.0.0.0"
            },
        ),
        env(PORT_ENV, port.to_string()),
    ];
    match mode {
        AuthMode::Native => vars.extend(auth_env(inputs)),
        AuthMode::Proxy | AuthMode::None => vars.push(env(SERVER_URL_ENV, inputs.url.clone())),
    }
    vars.extend(server.spec.env.iter().cloned());
    Container {
        name: "mcp".into(),
        image: Some(server.spec.image.clone()),
        args: (!server.spec.args.is_empty()).then(|| server.spec.args.clone()),
        env: Some(vars),
        ports: Some(vec![ContainerPort {
            name: Some(
                if mode == AuthMode::Proxy {
                    "mcp"
                } else {
                    "http"
                }
                .into(),
            ),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: server.spec.resources.clone(),
        security_context: Some(
            server
                .spec
                .security_context
                .clone()
                .unwrap_or_else(mcp_security_context),
        ),
        ..Default::default()
    }
}

fn gateway_container(server: &McpServer, inputs: &WorkloadInputs) -> Container {
    let mut vars = vec![
        env(LISTEN_ENV, contract::LISTEN.to_string()),
        env(ADMIN_LISTEN_ENV, contract::ADMIN_LISTEN.to_string()),
        env(UPSTREAM_ENV, contract::upstream_url(server.spec.port)),
    ];
    vars.extend(auth_env(inputs));
    if !inputs.allowed_origins.is_empty() {
        vars.push(env(ALLOWED_ORIGINS_ENV, inputs.allowed_origins.join(",")));
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    };
    Container {
        name: "gateway".into(),
        image: Some(inputs.gateway_image.clone()),
        args: Some(vec!["proxy".into()]),
        env: Some(vars),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: GATEWAY_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: GATEWAY_ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/healthz")),
        liveness_probe: Some(probe("/healthz")),
        security_context: Some(restricted_security_context()),
        ..Default::default()
    }
}

pub fn deployment(server: &McpServer, inputs: &WorkloadInputs) -> Deployment {
    let mut containers = vec![];
    if server.spec.auth.mode == AuthMode::Proxy {
        containers.push(gateway_container(server, inputs));
    }
    containers.push(mcp_container(server, inputs));
    Deployment {
        metadata: meta(server, server.name_any()),
        spec: DeploymentSpec {
            replicas: Some(server.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(server)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(server)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        inputs.config_hash.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers,
                    service_account_name: server.spec.service_account_name.clone(),
                    automount_service_account_token: Some(
                        server.spec.automount_service_account_token.unwrap_or(false),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn service(server: &McpServer) -> Service {
    Service {
        metadata: meta(server, server.name_any()),
        spec: Some(ServiceSpec {
            selector: Some(selector(server)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: server.spec.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Who may reach the gateway's admin port (`/metrics`), as the operator is configured: pods
/// matching both selectors (an empty selector matches everything of its kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsPeer {
    pub namespace_selector: BTreeMap<String, String>,
    pub pod_selector: BTreeMap<String, String>,
}

fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Whether the server gets a NetworkPolicy: the operator's switch and the server's opt-out.
pub fn network_policy_enabled(server: &McpServer, operator_enabled: bool) -> bool {
    operator_enabled
        && server
            .spec
            .network_policy
            .as_ref()
            .is_none_or(|n| n.enabled)
}

/// The NetworkPolicy isolating the server's pods: in `Proxy` mode only the gateway port (from
/// anywhere: clients come through it) and the admin port (from `admin_peers` only: the metrics
/// scraper and the operator reading `/mcp-status`), so no pod can call the MCP container around
/// the gateway; otherwise only the server's port.
pub fn network_policy<'a>(
    server: &McpServer,
    admin_peers: impl IntoIterator<Item = &'a MetricsPeer>,
) -> NetworkPolicy {
    let mut ingress = Vec::new();
    if server.spec.auth.mode == AuthMode::Proxy {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![tcp_port(GATEWAY_PORT)]),
            from: None,
        });
        let selector = |labels: &BTreeMap<String, String>| LabelSelector {
            match_labels: Some(labels.clone()),
            ..Default::default()
        };
        let from: Vec<NetworkPolicyPeer> = (admin_peers.into_iter())
            .map(|peer| NetworkPolicyPeer {
                namespace_selector: Some(selector(&peer.namespace_selector)),
                pod_selector: Some(selector(&peer.pod_selector)),
                ..Default::default()
            })
            .collect();
        if !from.is_empty() {
            ingress.push(NetworkPolicyIngressRule {
                ports: Some(vec![tcp_port(GATEWAY_ADMIN_PORT)]),
                from: Some(from),
            });
        }
    } else {
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![tcp_port(server.spec.port)]),
            from: None,
        });
    }
    NetworkPolicy {
        metadata: meta(server, server.name_any()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(server)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

pub fn secret(server: &McpServer, client_id: &str, client_secret: &str) -> Secret {
    Secret {
        metadata: meta(server, server.secret_name()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                SECRET_KEY_CLIENT_ID.into(),
                ByteString(client_id.as_bytes().to_vec()),
            ),
            (
                SECRET_KEY_CLIENT_SECRET.into(),
                ByteString(client_secret.as_bytes().to_vec()),
            ),
        ])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;

    pub(crate) fn server(mode: AuthMode) -> McpServer {
        let mut s = McpServer::new(
            "weather",
            McpServerSpec {
                image: "ghcr.io/example/weather:1".into(),
                port: 3000,
                replicas: 2,
                env: vec![EnvVar {
                    name: "LOG_LEVEL".into(),
                    value: Some("debug".into()),
                    ..Default::default()
                }],
                args: vec!["--http".into()],
                resources: None,
                service_account_name: Some("weather".into()),
                policy_ref: PolicyRef {
                    name: "acme".into(),
                },
                url: Some("http://localhost:3000".into()),
                scopes: vec![],
                introspection_client: IntrospectionClient::default(),
                auth: AuthSpec {
                    mode,
                    allow_unauthenticated: None,
                    gateway_image: None,
                    service_account_clients: vec![],
                    allowed_origins: vec![],
                    tools: vec![],
                },
                deletion_policy: DeletionPolicy::Delete,
                network_policy: None,
                security_context: None,
                automount_service_account_token: None,
            },
        );
        s.metadata.namespace = Some("team".into());
        s.metadata.uid = Some("uid-1".into());
        s
    }

    pub(crate) fn policy() -> McpAuthPolicy {
        let mut p = McpAuthPolicy::new(
            "acme",
            McpAuthPolicySpec {
                keycloak: KeycloakConnection {
                    url: "http://keycloak.auth.svc:8080".into(),
                    public_url: Some("https://sso.example.com".into()),
                    realm: "acme".into(),
                    create_realm: false,
                    admin_credentials_secret_ref: AdminCredentialsSecretRef {
                        name: "admin".into(),
                        auth_realm: None,
                    },
                    ca_bundle_secret_ref: None,
                },
                scopes: vec![ScopeSpec {
                    name: "mcp:tools".into(),
                    description: None,
                    consent_text: None,
                    include_in_token_scope: true,
                    r#type: ScopeType::Default,
                    implies: vec![],
                }],
                dynamic_client_registration: None,
                client_id_metadata_documents: None,
                allowed_machine_grants: vec![],
                audience: Default::default(),
                deletion_policy: DeletionPolicy::Delete,
            },
        );
        p.metadata.namespace = Some("team".into());
        p
    }

    fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    fn value(e: &BTreeMap<String, EnvVar>, k: &str) -> String {
        e[k].value
            .clone()
            .unwrap_or_else(|| panic!("{k} has no literal value"))
    }

    /// Literal env values by mode and container: the seed's contract for the MCP container in
    /// `Native` mode, the gateway's own settings in `Proxy` mode.
    const LITERAL_ENV: &[(AuthMode, &str, &str, &str)] = &[
        (AuthMode::Native, "mcp", "HOST", "0.0.0.0"),
        (AuthMode::Native, "mcp", "PORT", "3000"),
        (AuthMode::Native, "mcp", "AUTH_HOST", "keycloak.auth.svc"),
        (AuthMode::Native, "mcp", "AUTH_PORT", "8080"),
        (AuthMode::Native, "mcp", "AUTH_REALM", "acme"),
        (
            AuthMode::Native,
            "mcp",
            "OAUTH_CLIENT_ID",
            "mcp.team.weather",
        ),
        (
            AuthMode::Native,
            "mcp",
            "MCP_REQUIRED_SCOPES",
            "mcp:tools mcp:server:team:weather",
        ),
        (AuthMode::Native, "mcp", "LOG_LEVEL", "debug"),
        (
            AuthMode::Proxy,
            "gateway",
            "MCP_GATEWAY_UPSTREAM",
            "http://127.0.0.1:3000",
        ),
        (
            AuthMode::Proxy,
            "gateway",
            "MCP_GATEWAY_LISTEN",
            "0.0.0.0:8080",
        ),
        (
            AuthMode::Proxy,
            "gateway",
            "MCP_SERVER_URL",
            "http://localhost:3000",
        ),
        (
            AuthMode::Proxy,
            "gateway",
            "MCP_AUTH_ISSUER",
            "https://sso.example.com/realms/acme",
        ),
        (AuthMode::Proxy, "mcp", "HOST", "127.0.0.1"),
    ];

    /// Asserts the literal value of each variable [`LITERAL_ENV`] names for this container.
    fn assert_values(e: &BTreeMap<String, EnvVar>, mode: AuthMode, container: &str) {
        let rows = LITERAL_ENV
            .iter()
            .filter(|(m, c, ..)| *m == mode && *c == container);
        for (_, _, k, v) in rows {
            assert_eq!(value(e, k), *v, "{k}");
        }
    }

    #[test]
    fn inputs_resolve_from_policy_and_server() {
        let i = WorkloadInputs::resolve(&server(AuthMode::Native), &policy(), "s3cr3t", "op:1");
        assert_eq!(i.url, "http://localhost:3000");
        assert_eq!(i.issuer, "https://sso.example.com/realms/acme");
        assert_eq!(
            i.introspection_endpoint,
            "http://keycloak.auth.svc:8080/realms/acme/protocol/openid-connect/token/introspect"
        );
        assert_eq!(
            (i.auth_host.as_str(), i.auth_port),
            ("keycloak.auth.svc", 8080)
        );
        assert_eq!(i.client_id, "mcp.team.weather");
        assert_eq!(i.secret_name, "weather-oauth");
        assert_eq!(
            i.required_scopes,
            vec!["mcp:tools", "mcp:server:team:weather"]
        );
        assert_eq!(i.gateway_image, "op:1");
        let other =
            WorkloadInputs::resolve(&server(AuthMode::Native), &policy(), "rotated", "op:1");
        assert_ne!(
            i.config_hash, other.config_hash,
            "a new secret must roll the pods"
        );
    }

    #[test]
    fn resource_indicator_mode_names_the_client_after_the_url_and_tells_the_gateway() {
        let s = server(AuthMode::Proxy);
        let scope_mode = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let gateway_env = |i: &WorkloadInputs| {
            let d = deployment(&s, i);
            env_of(&d.spec.template.spec.unwrap().containers[0])
        };
        assert!(!gateway_env(&scope_mode).contains_key("MCP_AUTH_AUDIENCE_MODE"));
        let mut p = policy();
        p.status = Some(crate::api::McpAuthPolicyStatus {
            audience_mode: Some(ActiveAudience::ResourceIndicator),
            ..Default::default()
        });
        let i = WorkloadInputs::resolve(&s, &p, "s3cr3t", "op:1");
        assert_eq!(i.client_id, "http://localhost:3000");
        // No per-server scope to ask for: resource=<url> names the server.
        assert_eq!(i.required_scopes, vec!["mcp:tools"]);
        assert_ne!(
            i.config_hash, scope_mode.config_hash,
            "a mode switch rolls the pods"
        );
        let e = gateway_env(&i);
        assert_eq!(value(&e, "MCP_AUTH_AUDIENCE_MODE"), "ResourceIndicator");
        assert_eq!(value(&e, "OAUTH_CLIENT_ID"), "http://localhost:3000");
        assert_eq!(value(&e, "MCP_REQUIRED_SCOPES"), "mcp:tools");
    }

    #[test]
    fn native_mode_gets_the_seed_env_contract_with_secret_by_reference() {
        let s = server(AuthMode::Native);
        let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let d = deployment(&s, &i);
        let pod = d.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.containers.len(), 1);
        let c = &pod.containers[0];
        let e = env_of(c);
        assert_values(&e, AuthMode::Native, "mcp");
        let secret = &e["OAUTH_CLIENT_SECRET"];
        assert_eq!(secret.value, None, "the secret must never be a literal");
        let r = secret
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("weather-oauth", "client-secret")
        );
        assert!(!serde_json::to_string(&d).unwrap().contains("s3cr3t"));
        assert_eq!(c.ports.as_ref().unwrap()[0].name.as_deref(), Some("http"));
        assert_eq!(c.args, Some(vec!["--http".to_string()]));
        assert_eq!(pod.service_account_name.as_deref(), Some("weather"));
        assert_eq!(d.spec.replicas, Some(2));
        let ann = d.spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(ann[CONFIG_HASH_ANNOTATION], i.config_hash);
    }

    #[test]
    fn proxy_mode_puts_the_gateway_in_front_and_keeps_the_secret_out_of_the_mcp_container() {
        let s = server(AuthMode::Proxy);
        let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let d = deployment(&s, &i);
        let pod = d.spec.template.spec.unwrap();
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec!["gateway", "mcp"]);
        let gw = &pod.containers[0];
        assert_eq!(gw.image.as_deref(), Some("op:1"));
        assert_eq!(gw.args, Some(vec!["proxy".to_string()]));
        let ge = env_of(gw);
        assert_values(&ge, AuthMode::Proxy, "gateway");
        assert!(ge["OAUTH_CLIENT_SECRET"].value_from.is_some());
        let ports: Vec<_> = gw
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            vec![("http".to_string(), 8080), ("admin".to_string(), 9090)]
        );
        let sc = gw.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let me = env_of(&pod.containers[1]);
        assert_values(&me, AuthMode::Proxy, "mcp");
        assert!(!me.contains_key("OAUTH_CLIENT_SECRET"));
        assert_eq!(
            pod.containers[1].ports.as_ref().unwrap()[0].name.as_deref(),
            Some("mcp")
        );
    }

    #[test]
    fn tool_rules_and_the_hierarchy_reach_the_gateway_and_narrow_the_base_scopes() {
        let mut p = policy();
        let mut admin = p.spec.scopes[0].clone();
        admin.name = "mcp:admin".into();
        admin.implies = vec!["mcp:tools".into()];
        p.spec.scopes.push(admin);
        let plain = WorkloadInputs::resolve(&server(AuthMode::Proxy), &p, "s", "op:1");
        assert_eq!(
            plain.scope_rules,
            r#"{"implies":{"mcp:admin":["mcp:tools"]}}"#
        );
        assert_eq!(
            plain.required_scopes,
            ["mcp:tools", "mcp:admin", "mcp:server:team:weather"]
        );
        let mut s = server(AuthMode::Proxy);
        s.spec.auth.tools = vec![crate::api::ToolScopes {
            name: "delete_*".into(),
            scopes: vec!["mcp:admin".into()],
        }];
        let i = WorkloadInputs::resolve(&s, &p, "s", "op:1");
        // A scope only a tool rule names is not asked of every request.
        assert_eq!(i.required_scopes, ["mcp:tools", "mcp:server:team:weather"]);
        assert_ne!(i.config_hash, plain.config_hash, "new rules roll the pods");
        let pod = deployment(&s, &i).spec.template.spec.unwrap();
        let rules = value(&env_of(&pod.containers[0]), SCOPE_RULES_ENV);
        let parsed = ScopeRules::parse(&rules).unwrap();
        assert_eq!(parsed.tool_scopes("delete_all"), ["mcp:admin"]);
        assert!(parsed.may_call(&["mcp:admin".to_string()], "delete_all"));
        assert!(!parsed.may_call(&["mcp:tools".to_string()], "delete_all"));
        let none = WorkloadInputs::resolve(&server(AuthMode::Proxy), &policy(), "s", "op:1");
        let pod = deployment(&server(AuthMode::Proxy), &none)
            .spec
            .template
            .spec;
        assert!(!env_of(&pod.unwrap().containers[0]).contains_key(SCOPE_RULES_ENV));
    }

    #[test]
    fn service_account_clients_and_origins_reach_the_containers_only_when_set() {
        for mode in [AuthMode::Proxy, AuthMode::Native] {
            let s = server(mode);
            let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
            let pod = deployment(&s, &i).spec.template.spec.unwrap();
            for c in &pod.containers {
                let e = env_of(c);
                assert!(
                    !e.contains_key(SERVICE_ACCOUNT_CLIENTS_ENV),
                    "{mode:?} {}",
                    c.name
                );
                assert!(!e.contains_key(ALLOWED_ORIGINS_ENV));
            }
        }
        let mut s = server(AuthMode::Proxy);
        s.spec.auth.service_account_clients = vec!["robot".into(), "ci-bot".into()];
        s.spec.auth.allowed_origins = vec!["https://app.example.com".into()];
        let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let pod = deployment(&s, &i).spec.template.spec.unwrap();
        let gw = env_of(&pod.containers[0]);
        assert_eq!(value(&gw, SERVICE_ACCOUNT_CLIENTS_ENV), "robot,ci-bot");
        assert_eq!(value(&gw, ALLOWED_ORIGINS_ENV), "https://app.example.com");
        let mcp = env_of(&pod.containers[1]);
        assert!(
            !mcp.contains_key(SERVICE_ACCOUNT_CLIENTS_ENV),
            "the gateway decides"
        );
        s.spec.auth.mode = AuthMode::Native;
        let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let pod = deployment(&s, &i).spec.template.spec.unwrap();
        let native = env_of(&pod.containers[0]);
        assert_eq!(value(&native, SERVICE_ACCOUNT_CLIENTS_ENV), "robot,ci-bot");
    }

    fn np_json(s: &McpServer, metrics: Option<&MetricsPeer>) -> serde_json::Value {
        serde_json::to_value(network_policy(s, metrics)).unwrap()
    }

    #[test]
    fn proxy_network_policy_admits_the_gateway_and_metrics_only() {
        let s = server(AuthMode::Proxy);
        let peer = MetricsPeer {
            namespace_selector: BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "monitoring".into(),
            )]),
            pod_selector: BTreeMap::from([("app.kubernetes.io/name".into(), "prometheus".into())]),
        };
        let np = np_json(&s, Some(&peer));
        assert_eq!(np["metadata"]["name"], "weather");
        assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            np["spec"],
            serde_json::json!({
                "podSelector": {"matchLabels": {"mcpauth.dev/server": "weather"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"port": 8080, "protocol": "TCP"}]},
                    {"ports": [{"port": 9090, "protocol": "TCP"}],
                     "from": [{
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
                     }]}
                ]
            })
        );
        // The operator (reading /mcp-status) is a second peer of the same rule.
        let operator = MetricsPeer {
            namespace_selector: BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                "mcp-system".into(),
            )]),
            pod_selector: BTreeMap::from([(
                "app.kubernetes.io/name".into(),
                "mcp-keycloak-operator".into(),
            )]),
        };
        let both = serde_json::to_value(network_policy(&s, [&peer, &operator])).unwrap();
        let from = &both["spec"]["ingress"][1]["from"];
        assert_eq!(from.as_array().unwrap().len(), 2);
        assert_eq!(
            from[1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "mcp-keycloak-operator"
        );
        // Without a peer the admin port admits nobody.
        assert_eq!(
            np_json(&s, None)["spec"]["ingress"],
            serde_json::json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}])
        );
    }

    #[test]
    fn native_network_policy_admits_the_server_port_only() {
        let mut s = server(AuthMode::Native);
        s.spec.port = 3001;
        assert_eq!(
            np_json(&s, Some(&MetricsPeer::default()))["spec"],
            serde_json::json!({
                "podSelector": {"matchLabels": {"mcpauth.dev/server": "weather"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"port": 3001, "protocol": "TCP"}]}]
            })
        );
    }

    #[test]
    fn network_policy_opt_out_and_operator_switch() {
        let mut s = server(AuthMode::Proxy);
        assert!(network_policy_enabled(&s, true));
        assert!(!network_policy_enabled(&s, false));
        s.spec.network_policy = Some(crate::api::NetworkPolicySpec { enabled: false });
        assert!(!network_policy_enabled(&s, true));
        s.spec.network_policy = Some(crate::api::NetworkPolicySpec { enabled: true });
        assert!(network_policy_enabled(&s, true));
    }

    #[test]
    fn mcp_container_is_locked_down_by_default_and_overridable() {
        let s = server(AuthMode::Proxy);
        let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let pod = deployment(&s, &i).spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc =
            serde_json::to_value(pod.containers[1].security_context.as_ref().unwrap()).unwrap();
        assert_eq!(
            sc,
            serde_json::json!({
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": true,
                "seccompProfile": {"type": "RuntimeDefault"}
            })
        );
        let mut s = server(AuthMode::Native);
        s.spec.automount_service_account_token = Some(true);
        s.spec.security_context = Some(SecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        });
        let i = WorkloadInputs::resolve(&s, &policy(), "s3cr3t", "op:1");
        let pod = deployment(&s, &i).spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(
            pod.containers[0].security_context,
            Some(SecurityContext {
                run_as_user: Some(0),
                ..Default::default()
            })
        );
    }

    #[test]
    fn service_targets_the_http_port_and_is_owned() {
        let s = server(AuthMode::Proxy);
        let svc = service(&s);
        let spec = svc.spec.unwrap();
        let p = &spec.ports.unwrap()[0];
        assert_eq!(p.port, 3000);
        assert_eq!(p.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(spec.selector.unwrap()[SERVER_LABEL], "weather");
        let owner = &svc.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("McpServer", "uid-1", Some(true))
        );
    }

    #[test]
    fn secret_holds_client_credentials() {
        let s = server(AuthMode::Proxy);
        let sec = secret(&s, "mcp.team.weather", "s3cr3t");
        assert_eq!(sec.metadata.name.as_deref(), Some("weather-oauth"));
        let data = sec.data.unwrap();
        assert_eq!(data[SECRET_KEY_CLIENT_ID].0, b"mcp.team.weather");
        assert_eq!(data[SECRET_KEY_CLIENT_SECRET].0, b"s3cr3t");
    }
}
