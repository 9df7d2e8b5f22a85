//! Desired Keycloak representations for a policy and a server.

use std::collections::{BTreeSet, HashMap};

use keycloak::types::{
    ClientPolicyConditionRepresentation, ClientPolicyExecutorRepresentation,
    ClientPolicyRepresentation, ClientProfileRepresentation, ClientRepresentation,
    ClientScopeRepresentation, ComponentRepresentation, ProtocolMapperRepresentation,
};
use serde_json::json;

use super::plan::Write;
use crate::api::{
    DynamicClientRegistration, MachineGrant, McpAuthPolicy, McpServer, ScopeSpec, OWNER_ATTRIBUTE,
};

/// `providerType` of client registration policy components.
pub const REGISTRATION_POLICY_TYPE: &str =
    "org.keycloak.services.clientregistration.policy.ClientRegistrationPolicy";

/// Who holds a realm, from its `mcpauth.dev/owner` attribute and the asking policy's marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealmClaim {
    /// This policy holds it.
    Ours,
    /// Nobody does (no attribute, or an empty one: a released claim).
    Free,
    /// Another McpAuthPolicy (`McpAuthPolicy/{namespace}/{name}`) holds it.
    Other(String),
}

pub fn realm_claim(live_owner: Option<&str>, me: &str) -> RealmClaim {
    match live_owner.map(str::trim) {
        None | Some("") => RealmClaim::Free,
        Some(o) if o == me => RealmClaim::Ours,
        Some(o) => RealmClaim::Other(o.to_string()),
    }
}

/// Name of the client profile and client policy that refuse grants without a user. One per
/// realm: only the realm's owner writes it.
pub const USER_GRANTS_ONLY: &str = "mcp-operator.user-grants-only";

/// Grants Keycloak must refuse in the policy's realm: all machine grants but those the spec
/// allows and `admin_grant` — the grant the operator's own admin credentials use when they
/// live in the managed realm itself (refusing it would lock the operator out).
pub fn refused_grants(
    policy: &McpAuthPolicy,
    admin_grant: Option<MachineGrant>,
) -> Vec<MachineGrant> {
    MachineGrant::ALL
        .into_iter()
        .filter(|g| !policy.spec.allowed_machine_grants.contains(g) && Some(*g) != admin_grant)
        .collect()
}

/// Profile and policy refusing `grants` for every client of the realm (`None` when nothing is
/// refused). Keycloak's `grant-type` condition abstains on every other event, so authorization
/// code, refresh, introspection and registration are untouched.
pub fn user_grants_only(
    grants: &[MachineGrant],
) -> Option<(ClientProfileRepresentation, ClientPolicyRepresentation)> {
    if grants.is_empty() {
        return None;
    }
    let description = "Refuses grants that mint a token without a user logging in; managed by mcp-keycloak-operator (McpAuthPolicy spec.allowedMachineGrants); edits are reverted".to_string();
    let profile = ClientProfileRepresentation {
        name: Some(USER_GRANTS_ONLY.into()),
        description: Some(description.clone()),
        executors: Some(vec![ClientPolicyExecutorRepresentation {
            executor: Some("reject-request".into()),
            configuration: Some(HashMap::new()),
        }]),
    };
    let grant_types: Vec<&str> = grants.iter().map(|g| g.grant_type()).collect();
    let policy = ClientPolicyRepresentation {
        name: Some(USER_GRANTS_ONLY.into()),
        description: Some(description),
        enabled: Some(true),
        mode: None,
        conditions: Some(vec![ClientPolicyConditionRepresentation {
            condition: Some("grant-type".into()),
            configuration: Some(HashMap::from([(
                "grant_types".to_string(),
                json!(grant_types),
            )])),
        }]),
        profiles: Some(vec![USER_GRANTS_ONLY.into()]),
    };
    Some((profile, policy))
}

pub const AUDIENCE_MAPPER_NAME: &str = "mcp-audience";
pub const INTROSPECTION_AUDIENCE_MAPPER_NAME: &str = "mcp-introspection-audience";

/// Client scope for one of the policy's MCP scopes (e.g. `mcp:tools`).
pub fn policy_scope(policy: &McpAuthPolicy, scope: &ScopeSpec) -> ClientScopeRepresentation {
    let mut attributes = HashMap::new();
    attributes.insert(
        "include.in.token.scope".to_string(),
        scope.include_in_token_scope.to_string(),
    );
    attributes.insert("display.on.consent.screen".to_string(), "true".to_string());
    attributes.insert(
        "consent.screen.text".to_string(),
        scope
            .consent_text
            .clone()
            .unwrap_or_else(|| scope.name.clone()),
    );
    attributes.insert(OWNER_ATTRIBUTE.to_string(), policy.owner_marker());
    ClientScopeRepresentation {
        name: Some(scope.name.clone()),
        description: Some(
            scope
                .description
                .clone()
                .unwrap_or_else(|| format!("MCP scope {}", scope.name)),
        ),
        protocol: Some("openid-connect".into()),
        attributes: Some(attributes),
        ..Default::default()
    }
}

/// The per-server scope whose only job is to put the server's URL into `aud`.
pub fn audience_scope(server: &McpServer) -> ClientScopeRepresentation {
    let url = server.canonical_url();
    let mut attributes = HashMap::new();
    attributes.insert("include.in.token.scope".to_string(), "true".to_string());
    attributes.insert("display.on.consent.screen".to_string(), "true".to_string());
    attributes.insert(
        "consent.screen.text".to_string(),
        format!("Access the MCP server at {url}"),
    );
    attributes.insert(OWNER_ATTRIBUTE.to_string(), server.owner_marker());
    ClientScopeRepresentation {
        name: Some(server.audience_scope()),
        description: Some(format!("Audience of the MCP server {url}")),
        protocol: Some("openid-connect".into()),
        attributes: Some(attributes),
        ..Default::default()
    }
}

/// Audience mapper: tokens carrying the scope get `aud` = the server's canonical URL, both in the
/// access token and in introspection responses.
pub fn audience_mapper(url: &str) -> ProtocolMapperRepresentation {
    audience(AUDIENCE_MAPPER_NAME, "included.custom.audience", url)
}

/// Second audience: the server's introspection client. Keycloak (verified on 26.7) answers
/// `active: false` to an introspection request from a client that is not in the token's `aud`,
/// so this is what lets the server check its tokens — and what stops every other server's
/// client from introspecting them.
pub fn introspection_audience_mapper(client_id: &str) -> ProtocolMapperRepresentation {
    audience(
        INTROSPECTION_AUDIENCE_MAPPER_NAME,
        "included.client.audience",
        client_id,
    )
}

pub(crate) fn audience(name: &str, key: &str, value: &str) -> ProtocolMapperRepresentation {
    let config: HashMap<String, String> = [
        (key, value),
        ("access.token.claim", "true"),
        ("introspection.token.claim", "true"),
        ("id.token.claim", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    ProtocolMapperRepresentation {
        name: Some(name.into()),
        protocol: Some("openid-connect".into()),
        protocol_mapper: Some("oidc-audience-mapper".into()),
        config: Some(config),
        ..Default::default()
    }
}

/// Mappers of a server's audience scope.
pub fn audience_mappers(server: &McpServer) -> Vec<ProtocolMapperRepresentation> {
    vec![
        audience_mapper(&server.canonical_url()),
        introspection_audience_mapper(&server.client_id()),
    ]
}

/// Confidential client used only to call the introspection endpoint: every flow off.
pub fn introspection_client(server: &McpServer) -> ClientRepresentation {
    let mut attributes = HashMap::new();
    attributes.insert(OWNER_ATTRIBUTE.to_string(), server.owner_marker());
    if server.spec.introspection_client.rotation.is_some() {
        // Puts the client under the realm's secret-rotation policy (see `rotation`).
        let attribute = super::rotation::ROTATION_ATTRIBUTE.to_string();
        attributes.insert(attribute, "true".into());
    }
    ClientRepresentation {
        client_id: Some(server.client_id()),
        name: Some(format!("MCP server {}", server.canonical_url())),
        description: Some(
            "Token introspection client managed by mcp-keycloak-operator".to_string(),
        ),
        protocol: Some("openid-connect".into()),
        enabled: Some(true),
        public_client: Some(false),
        bearer_only: Some(false),
        client_authenticator_type: Some("client-secret".into()),
        standard_flow_enabled: Some(false),
        implicit_flow_enabled: Some(false),
        direct_access_grants_enabled: Some(false),
        service_accounts_enabled: Some(false),
        attributes: Some(attributes),
        ..Default::default()
    }
}

/// Hosts for Keycloak's Trusted Hosts policy: explicit hosts plus the presets, sorted, unique.
pub fn trusted_hosts(dcr: &DynamicClientRegistration) -> Vec<String> {
    let mut hosts: BTreeSet<String> = dcr.trusted_hosts.iter().cloned().collect();
    for client in &dcr.trusted_clients {
        hosts.extend(client.hosts().iter().map(|h| h.to_string()));
    }
    hosts.into_iter().collect()
}

/// Desired config of each anonymous registration-policy component, by `providerId`.
/// `None` for a provider means "must not exist" (only `consent-required` can be absent).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationPolicies {
    pub components: Vec<(&'static str, Option<ComponentConfig>)>,
}

/// A component's multivalued config.
pub type ComponentConfig = HashMap<String, Vec<String>>;

pub fn registration_policies(policy: &McpAuthPolicy) -> Option<RegistrationPolicies> {
    let dcr = policy.spec.dynamic_client_registration.as_ref()?;
    let b = |v: bool| vec![v.to_string()];
    let trusted = if dcr.enabled {
        HashMap::from([
            ("trusted-hosts".to_string(), trusted_hosts(dcr)),
            (
                "host-sending-registration-request-must-match".to_string(),
                b(dcr.require_sending_host_match),
            ),
            (
                "client-uris-must-match".to_string(),
                b(dcr.require_client_uris_match),
            ),
        ])
    } else {
        // Keycloak's own "closed" state: nobody is trusted and both checks are on.
        HashMap::from([
            ("trusted-hosts".to_string(), vec![]),
            (
                "host-sending-registration-request-must-match".to_string(),
                b(true),
            ),
            ("client-uris-must-match".to_string(), b(true)),
        ])
    };
    let mut allowed: BTreeSet<String> = policy.spec.scopes.iter().map(|s| s.name.clone()).collect();
    allowed.extend(dcr.allowed_client_scopes.iter().cloned());
    let allowed_scopes = HashMap::from([
        (
            "allowed-client-scopes".to_string(),
            allowed.into_iter().collect(),
        ),
        ("allow-default-scopes".to_string(), b(true)),
    ]);
    let max_clients =
        HashMap::from([("max-clients".to_string(), vec![dcr.max_clients.to_string()])]);
    Some(RegistrationPolicies {
        components: vec![
            ("trusted-hosts", Some(trusted)),
            ("allowed-client-templates", Some(allowed_scopes)),
            ("max-clients", Some(max_clients)),
            ("consent-required", dcr.consent_required.then(HashMap::new)),
        ],
    })
}

/// Display name Keycloak gives each default anonymous component (used when one must be created).
pub fn component_display_name(provider_id: &str) -> &'static str {
    match provider_id {
        "trusted-hosts" => "Trusted Hosts",
        "allowed-client-templates" => "Allowed Client Scopes",
        "max-clients" => "Max Clients Limit",
        "consent-required" => "Consent Required",
        _ => "MCP registration policy",
    }
}

pub fn new_anonymous_component(
    provider_id: &str,
    realm_id: &str,
    config: &HashMap<String, Vec<String>>,
) -> ComponentRepresentation {
    ComponentRepresentation {
        name: Some(component_display_name(provider_id).into()),
        provider_id: Some(provider_id.into()),
        provider_type: Some(REGISTRATION_POLICY_TYPE.into()),
        parent_id: Some(realm_id.into()),
        sub_type: Some("anonymous".into()),
        config: Some(config.clone()),
        ..Default::default()
    }
}

/// What to write, and the anonymous components of the managed providers the operator leaves
/// alone (by name): someone else's, and every policy must pass, so they can only narrow.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComponentPlan {
    pub writes: Vec<Write<ComponentRepresentation>>,
    pub foreign: Vec<String>,
}

/// The operator manages, per provider, the anonymous component with Keycloak's default name
/// (the one Keycloak creates with the realm, or one the operator created under that name);
/// it never deletes or rewrites any other, since removing one would widen registration.
pub fn plan_registration_components(
    live: &[ComponentRepresentation],
    desired: &RegistrationPolicies,
    realm_id: &str,
) -> ComponentPlan {
    let mut plan = ComponentPlan::default();
    for (provider, want) in &desired.components {
        let mut same: Vec<&ComponentRepresentation> = live
            .iter()
            .filter(|c| {
                c.provider_id.as_deref() == Some(*provider)
                    && c.sub_type.as_deref() == Some("anonymous")
            })
            .collect();
        same.sort_by(|a, b| a.id.cmp(&b.id));
        let managed_name = component_display_name(provider);
        let managed = same
            .iter()
            .position(|c| c.name.as_deref() == Some(managed_name))
            .map(|i| same.remove(i));
        plan.foreign.extend(
            same.iter()
                .map(|c| c.name.clone().unwrap_or_default().to_string()),
        );
        match (want, managed) {
            (None, None) => {}
            (None, Some(c)) => plan
                .writes
                .push(Write::Delete(c.id.clone().unwrap_or_default().to_string())),
            (Some(config), None) => plan.writes.push(Write::Create(new_anonymous_component(
                provider, realm_id, config,
            ))),
            (Some(config), Some(c)) if !component_config_matches(config, c.config.as_ref()) => {
                let mut body = c.clone();
                let mut merged = c.config.clone().unwrap_or_default();
                merged.extend(config.clone());
                body.config = Some(merged);
                let id = c.id.clone().unwrap_or_default().to_string();
                plan.writes.push(Write::Update(id, body));
            }
            (Some(_), Some(_)) => {}
        }
    }
    plan.foreign.sort();
    plan
}

/// Component config values are multivalued sets: Keycloak does not keep their order.
pub fn component_config_matches(
    desired: &HashMap<String, Vec<String>>,
    live: Option<&HashMap<String, Vec<String>>>,
) -> bool {
    let empty = HashMap::new();
    let live = live.unwrap_or(&empty);
    desired.iter().all(|(k, want)| {
        let want: BTreeSet<&String> = want.iter().collect();
        let have: BTreeSet<&String> = live.get(k).map(|v| v.iter().collect()).unwrap_or_default();
        want == have
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;

    fn policy(dcr: Option<DynamicClientRegistration>) -> McpAuthPolicy {
        let mut p = crate::desired::test_policy("team", "acme");
        p.spec.scopes = vec![serde_json::from_value(
            json!({"name": "mcp:tools", "consentText": "Use MCP tools"}),
        )
        .unwrap()];
        p.spec.dynamic_client_registration = dcr;
        p
    }

    /// The desired config of one provider's component.
    fn config_of(rp: &RegistrationPolicies, provider: &str) -> Option<ComponentConfig> {
        let found = rp.components.iter().find(|(p, _)| *p == provider);
        found.expect("a managed provider").1.clone()
    }

    fn dcr() -> DynamicClientRegistration {
        DynamicClientRegistration {
            enabled: true,
            trusted_hosts: vec!["localhost".into(), "example.com".into()],
            trusted_clients: vec![TrustedClient::VSCode],
            require_sending_host_match: false,
            require_client_uris_match: true,
            allowed_client_scopes: vec!["profile".into()],
            max_clients: 50,
            consent_required: false,
            reaping: None,
        }
    }

    #[test]
    fn policy_scope_has_consent_text_and_owner() {
        let p = policy(None);
        let s = policy_scope(&p, &p.spec.scopes[0]);
        let attrs = s.attributes.unwrap();
        assert_eq!(s.name.as_deref(), Some("mcp:tools"));
        assert_eq!(attrs["include.in.token.scope"], "true");
        assert_eq!(attrs["consent.screen.text"], "Use MCP tools");
        assert_eq!(attrs[OWNER_ATTRIBUTE], "McpAuthPolicy/team/acme");
    }

    #[test]
    fn trusted_hosts_merge_presets_sorted_and_unique() {
        assert_eq!(
            trusted_hosts(&dcr()),
            vec![
                "127.0.0.1",
                "code.visualstudio.com",
                "example.com",
                "insiders.vscode.dev",
                "localhost",
                "vscode.dev"
            ]
        );
    }

    #[test]
    fn registration_policies_exact() {
        let rp = registration_policies(&policy(Some(dcr()))).unwrap();
        let get = |provider: &str| config_of(&rp, provider);
        let trusted = get("trusted-hosts").unwrap();
        assert_eq!(
            trusted["host-sending-registration-request-must-match"],
            vec!["false"]
        );
        assert_eq!(trusted["client-uris-must-match"], vec!["true"]);
        assert_eq!(
            get("allowed-client-templates").unwrap()["allowed-client-scopes"],
            vec!["mcp:tools", "profile"]
        );
        assert_eq!(get("max-clients").unwrap()["max-clients"], vec!["50"]);
        assert_eq!(get("consent-required"), None);
    }

    #[test]
    fn disabled_registration_closes_trusted_hosts() {
        let mut d = dcr();
        d.enabled = false;
        let rp = registration_policies(&policy(Some(d))).unwrap();
        let trusted = rp.components[0].1.clone().unwrap();
        assert!(trusted["trusted-hosts"].is_empty());
        assert_eq!(trusted["client-uris-must-match"], vec!["true"]);
        assert_eq!(
            trusted["host-sending-registration-request-must-match"],
            vec!["true"]
        );
    }

    #[test]
    fn no_dcr_section_means_unmanaged() {
        assert!(registration_policies(&policy(None)).is_none());
    }

    #[test]
    fn component_config_compares_as_sets() {
        let desired = HashMap::from([("k".to_string(), vec!["a".to_string(), "b".to_string()])]);
        let live = HashMap::from([
            ("k".to_string(), vec!["b".to_string(), "a".to_string()]),
            ("other".to_string(), vec!["x".to_string()]),
        ]);
        assert!(component_config_matches(&desired, Some(&live)));
        let live2 = HashMap::from([("k".to_string(), vec!["a".to_string()])]);
        assert!(!component_config_matches(&desired, Some(&live2)));
        assert!(!component_config_matches(&desired, None));
    }

    #[test]
    fn audience_mapper_exact() {
        let m = audience_mapper("http://localhost:3000");
        assert_eq!(m.protocol_mapper.as_deref(), Some("oidc-audience-mapper"));
        let c = m.config.unwrap();
        assert_eq!(c["included.custom.audience"], "http://localhost:3000");
        assert_eq!(c["access.token.claim"], "true");
        assert_eq!(c["introspection.token.claim"], "true");
        assert_eq!(c["id.token.claim"], "false");
        assert_eq!(c.len(), 4);
        let i = introspection_audience_mapper("mcp.team.weather");
        assert_eq!(
            i.config.unwrap()["included.client.audience"],
            "mcp.team.weather"
        );
        assert_eq!(i.name.as_deref(), Some(INTROSPECTION_AUDIENCE_MAPPER_NAME));
    }

    #[test]
    fn realm_claim_is_read_from_the_owner_attribute() {
        let me = "McpAuthPolicy/team/acme";
        assert_eq!(realm_claim(None, me), RealmClaim::Free);
        assert_eq!(realm_claim(Some(""), me), RealmClaim::Free, "released");
        assert_eq!(realm_claim(Some(me), me), RealmClaim::Ours);
        assert_eq!(
            realm_claim(Some("McpAuthPolicy/other/acme"), me),
            RealmClaim::Other("McpAuthPolicy/other/acme".into())
        );
    }

    #[test]
    fn every_machine_grant_is_refused_unless_opened() {
        let mut p = policy(None);
        assert_eq!(refused_grants(&p, None), MachineGrant::ALL.to_vec());
        assert_eq!(
            refused_grants(&p, Some(MachineGrant::Password)),
            vec![
                MachineGrant::ClientCredentials,
                MachineGrant::DeviceCode,
                MachineGrant::TokenExchange
            ]
        );
        p.spec.allowed_machine_grants = MachineGrant::ALL.to_vec();
        assert!(refused_grants(&p, None).is_empty());
        assert_eq!(
            user_grants_only(&[]),
            None,
            "nothing refused: no profile or policy"
        );
    }

    #[test]
    fn user_grants_only_is_exactly_what_keycloak_stores() {
        let (profile, policy) =
            user_grants_only(&[MachineGrant::ClientCredentials, MachineGrant::Password]).unwrap();
        assert_eq!(
            serde_json::to_value(&profile).unwrap(),
            json!({"name": USER_GRANTS_ONLY, "description": profile.description,
                   "executors": [{"executor": "reject-request", "configuration": {}}]})
        );
        let v = serde_json::to_value(&policy).unwrap();
        assert_eq!(v["enabled"], true);
        assert_eq!(v["profiles"], json!([USER_GRANTS_ONLY]));
        assert_eq!(
            v["conditions"],
            json!([{"condition": "grant-type",
                    "configuration": {"grant_types": ["client_credentials", "password"]}}])
        );
    }

    fn component(
        id: &str,
        provider: &str,
        name: &str,
        config: ComponentConfig,
    ) -> ComponentRepresentation {
        ComponentRepresentation {
            id: Some(id.into()),
            name: Some(name.into()),
            provider_id: Some(provider.into()),
            sub_type: Some("anonymous".into()),
            config: Some(config),
            ..Default::default()
        }
    }

    #[test]
    fn registration_plan_touches_only_the_managed_components() {
        let rp = registration_policies(&policy(Some(dcr()))).unwrap();
        let want = |provider: &str| config_of(&rp, provider).unwrap();
        let live = vec![
            component("1", "trusted-hosts", "Trusted Hosts", want("trusted-hosts")),
            component("2", "trusted-hosts", "Extra Trusted Hosts", HashMap::new()),
            component(
                "3",
                "allowed-client-templates",
                "Allowed Client Scopes",
                want("allowed-client-templates"),
            ),
            component(
                "4",
                "max-clients",
                "Max Clients Limit",
                HashMap::from([("max-clients".into(), vec!["200".into()])]),
            ),
            component("5", "consent-required", "Consent Required", HashMap::new()),
            component("6", "consent-required", "Their Consent", HashMap::new()),
        ];
        let plan = plan_registration_components(&live, &rp, "realm-id");
        assert_eq!(plan.foreign, vec!["Extra Trusted Hosts", "Their Consent"]);
        let mut max = live[3].clone();
        max.config = Some(want("max-clients"));
        assert_eq!(
            plan.writes,
            vec![Write::Update("4".into(), max), Write::Delete("5".into()),]
        );
        // In sync: no write at all.
        let synced: Vec<_> = live
            .iter()
            .filter(|c| !matches!(c.id.as_deref(), Some("4" | "5")))
            .cloned()
            .chain([component(
                "4",
                "max-clients",
                "Max Clients Limit",
                want("max-clients"),
            )])
            .collect();
        assert!(plan_registration_components(&synced, &rp, "realm-id")
            .writes
            .is_empty());
        // Nothing managed yet: created under Keycloak's default name.
        let plan = plan_registration_components(&[], &rp, "realm-id");
        assert_eq!(plan.writes.len(), 3, "{:?}", plan.writes);
        assert!(
            matches!(&plan.writes[0], Write::Create(c) if c.name.as_deref() == Some("Trusted Hosts"))
        );
    }
}
