//! OAuth Client ID Metadata Documents (CIMD) in Keycloak: the client profile (executor
//! `client-id-metadata-document`) and client policy (condition `client-id-uri`) one McpAuthPolicy
//! owns, how they are merged into the realm's lists without touching anyone else's entries, which
//! metadata-document clients the policy admits, and the realm's client-count guard rail.
//!
//! Representations as Keycloak 26.7.3 stores and returns them (GET after PUT, and the provider
//! metadata of `GET /admin/serverinfo`): executor configuration keys `cimd-allow-http-scheme`
//! (boolean), `cimd-allow-permitted-domains` (string list), `cimd-restrict-same-domain`
//! (boolean), `cimd-required-properties` (string list); condition keys `client-id-uri-scheme` and
//! `client-id-uri-allow-permitted-domains` (string lists). Keycloak stores the configuration JSON
//! as sent (a boolean stays a boolean, a string `"true"` stays a string), keeps list order, and
//! accepts a policy only if every profile it names exists.

use std::collections::{BTreeSet, HashMap};

use keycloak::types::{
    ClientPolicyConditionRepresentation, ClientPolicyExecutorRepresentation,
    ClientPolicyRepresentation, ClientProfileRepresentation, ClientRepresentation,
};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::api::{ClientIdMetadataDocuments, McpAuthPolicy, ScopeType, OWNER_ATTRIBUTE};

/// Provider id of the profile's executor: fetches and checks the metadata document.
pub const EXECUTOR: &str = "client-id-metadata-document";
/// Provider id of the policy's condition: matches a URL `client_id`.
pub const CONDITION: &str = "client-id-uri";
/// Executor key (boolean): `http` documents are accepted too.
pub const ALLOW_HTTP: &str = "cimd-allow-http-scheme";
/// Executor key (string list): hosts any URI of the document may use.
pub const PERMITTED_DOMAINS: &str = "cimd-allow-permitted-domains";
/// Executor key (boolean): the document's URIs must share the `client_id`'s host.
pub const RESTRICT_SAME_DOMAIN: &str = "cimd-restrict-same-domain";
/// Executor key (string list): properties the document must have.
pub const REQUIRED_PROPERTIES: &str = "cimd-required-properties";
/// Condition key (string list): `client_id` URL schemes.
pub const CONDITION_SCHEMES: &str = "client-id-uri-scheme";
/// Condition key (string list): `client_id` hosts.
pub const CONDITION_DOMAINS: &str = "client-id-uri-allow-permitted-domains";
/// Client attribute Keycloak's persistent CIMD provider sets on every client it creates from a
/// metadata document (the cache expiry, epoch seconds): what tells such a client apart.
pub const CIMD_CLIENT_ATTRIBUTE: &str = "cimd.cache.expiry.time.in.sec";
/// Prefix of every profile and policy name the operator owns.
pub const NAME_PREFIX: &str = "mcp-operator.";

/// Name of the policy's client profile and client policy: `mcp-operator.{namespace}.{name}`.
/// Namespaces contain no dots, so no two McpAuthPolicies share a name (with `-` as separator,
/// `a-b`/`c` and `a`/`b-c` would).
pub fn owned_name(policy: &McpAuthPolicy) -> String {
    format!(
        "{NAME_PREFIX}{}.{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

fn sorted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Hosts a `client_id` may be on: `trustedDomains` plus the presets' client-id hosts.
pub fn client_id_domains(c: &ClientIdMetadataDocuments) -> Vec<String> {
    sorted(
        c.trusted_domains.iter().cloned().chain(
            c.trusted_clients
                .iter()
                .flat_map(|t| t.client_id_domains().iter().map(|d| d.to_string())),
        ),
    )
}

/// Hosts any URI of an admitted document may use (the executor's "Trusted domains"): the
/// client-id hosts plus `redirectDomains` and the presets' redirect hosts.
pub fn permitted_domains(c: &ClientIdMetadataDocuments) -> Vec<String> {
    sorted(
        client_id_domains(c)
            .into_iter()
            .chain(c.redirect_domains.iter().cloned())
            .chain(
                c.trusted_clients
                    .iter()
                    .flat_map(|t| t.redirect_domains().iter().map(|d| d.to_string())),
            ),
    )
}

/// `client_id` URL schemes the policy's condition matches.
pub fn schemes(c: &ClientIdMetadataDocuments) -> Vec<String> {
    if c.allow_http {
        vec!["http".into(), "https".into()]
    } else {
        vec!["https".into()]
    }
}

fn description(policy: &McpAuthPolicy, what: &str) -> String {
    format!(
        "{what} managed by mcp-keycloak-operator for McpAuthPolicy {}/{}; edits are reverted",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

fn config(entries: Vec<(&str, Value)>) -> HashMap<String, Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The client profile: one `client-id-metadata-document` executor.
pub fn profile(
    policy: &McpAuthPolicy,
    c: &ClientIdMetadataDocuments,
) -> ClientProfileRepresentation {
    ClientProfileRepresentation {
        name: Some(owned_name(policy)),
        description: Some(description(
            policy,
            "OAuth Client ID Metadata Documents profile",
        )),
        executors: Some(vec![ClientPolicyExecutorRepresentation {
            executor: Some(EXECUTOR.into()),
            configuration: Some(config(vec![
                (ALLOW_HTTP, json!(c.allow_http)),
                (PERMITTED_DOMAINS, json!(permitted_domains(c))),
                (RESTRICT_SAME_DOMAIN, json!(c.restrict_same_domain)),
                (
                    REQUIRED_PROPERTIES,
                    json!(sorted(c.required_properties.clone())),
                ),
            ])),
        }]),
    }
}

/// The client policy: applies the profile to authorization requests whose `client_id` is a URL
/// with an accepted scheme on a client-id host.
pub fn client_policy(
    policy: &McpAuthPolicy,
    c: &ClientIdMetadataDocuments,
) -> ClientPolicyRepresentation {
    ClientPolicyRepresentation {
        name: Some(owned_name(policy)),
        description: Some(description(
            policy,
            "OAuth Client ID Metadata Documents policy",
        )),
        enabled: Some(true),
        mode: None,
        conditions: Some(vec![ClientPolicyConditionRepresentation {
            condition: Some(CONDITION.into()),
            configuration: Some(config(vec![
                (CONDITION_SCHEMES, json!(schemes(c))),
                (CONDITION_DOMAINS, json!(client_id_domains(c))),
            ])),
        }]),
        profiles: Some(vec![owned_name(policy)]),
    }
}

/// The section when it asks for CIMD (present and enabled).
pub fn requested(policy: &McpAuthPolicy) -> Option<&ClientIdMetadataDocuments> {
    policy
        .spec
        .client_id_metadata_documents
        .as_ref()
        .filter(|c| c.enabled)
}

/// Named entries of a realm-wide list (profiles or policies).
pub trait Named: Clone + PartialEq {
    fn entry_name(&self) -> Option<&str>;
}

impl Named for ClientProfileRepresentation {
    fn entry_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl Named for ClientPolicyRepresentation {
    fn entry_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// The realm's whole list with our entry `name` set to `desired` (or removed when `None`), or
/// `None` when the live list already is that: the only case without a write. Entries of other
/// names keep their content and order; ours stays where it was (appended when new); a duplicate
/// of our name is dropped.
pub fn merge_by_name<T: Named>(live: &[T], name: &str, desired: Option<&T>) -> Option<Vec<T>> {
    let ours: Vec<usize> = live
        .iter()
        .enumerate()
        .filter(|(_, e)| e.entry_name() == Some(name))
        .map(|(i, _)| i)
        .collect();
    match (ours.as_slice(), desired) {
        ([], None) => None,
        ([i], Some(d)) if &live[*i] == d => None,
        ([], Some(d)) => {
            let mut out = live.to_vec();
            out.push(d.clone());
            Some(out)
        }
        ([first, ..], desired) => {
            let mut out = Vec::with_capacity(live.len() + 1);
            for (i, e) in live.iter().enumerate() {
                if i == *first {
                    if let Some(d) = desired {
                        out.push(d.clone());
                    }
                } else if !ours.contains(&i) {
                    out.push(e.clone());
                }
            }
            Some(out)
        }
    }
}

/// Which `client_id` URLs a `client-id-uri` condition matches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Admission {
    pub schemes: Vec<String>,
    pub domains: Vec<String>,
}

impl Admission {
    pub fn of(c: &ClientIdMetadataDocuments) -> Admission {
        Admission {
            schemes: schemes(c),
            domains: client_id_domains(c),
        }
    }

    /// From a live client policy: the union of its enabled `client-id-uri` conditions.
    pub fn of_live(p: &ClientPolicyRepresentation) -> Admission {
        let mut a = Admission::default();
        if p.enabled == Some(false) {
            return a;
        }
        let strings = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => vec![],
            }
        };
        for c in p.conditions.iter().flatten() {
            if c.condition.as_deref() != Some(CONDITION) {
                continue;
            }
            let cfg = c.configuration.clone().unwrap_or_default();
            if cfg.get("is-negative-logic").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            a.schemes.extend(strings(cfg.get(CONDITION_SCHEMES)));
            a.domains.extend(strings(cfg.get(CONDITION_DOMAINS)));
        }
        a
    }

    /// Keycloak's rule (`checkTrustedDomain`): a host equals a domain, or `*.d` matches `d` and
    /// its subdomains.
    pub fn admits(&self, client_id: &str) -> bool {
        let Ok(u) = url::Url::parse(client_id) else {
            return false;
        };
        let Some(host) = u.host_str() else {
            return false;
        };
        self.schemes.iter().any(|s| s == u.scheme())
            && self.domains.iter().any(|d| match d.strip_prefix("*.") {
                Some(base) => host == base || host.ends_with(&format!(".{base}")),
                None => host == d,
            })
    }
}

/// What to do with one client Keycloak created from a metadata document.
#[derive(Debug, Clone, PartialEq)]
pub enum CimdClientPlan {
    /// Not ours (another policy's marker, or never admitted by us): leave it alone.
    Ignore,
    /// Ours and no longer admitted: delete it. Keycloak keeps such a client as an ordinary public
    /// client that still logs users in (verified on 26.7.3), so dropping a domain or the section
    /// would otherwise revoke nothing.
    Revoke,
    /// Admitted: claim it (`mark`) and give it the scopes it lacks.
    Keep {
        mark: bool,
        add_default: Vec<String>,
        add_optional: Vec<String>,
    },
}

/// `owner` is this policy's marker; `previously` what our live policy admitted before this
/// reconcile (so clients seen between two reconciles are still ours); `now` what it admits after
/// (`None`: nothing). `wanted` are the scopes every admitted client must be able to request.
pub fn plan_cimd_client(
    client: &ClientRepresentation,
    owner: &str,
    previously: Option<&Admission>,
    now: Option<&Admission>,
    wanted: &[(String, ScopeType)],
) -> CimdClientPlan {
    let client_id = client.client_id.as_deref().unwrap_or_default();
    let marker = client
        .attributes
        .as_ref()
        .and_then(|a| a.get(OWNER_ATTRIBUTE))
        .map(|m| m.as_str());
    let ours = match marker {
        Some(m) => m == owner,
        None => previously.is_some_and(|a| a.admits(client_id)),
    };
    let admitted = now.is_some_and(|a| a.admits(client_id));
    if marker.is_some() && !ours {
        return CimdClientPlan::Ignore;
    }
    if !admitted {
        return if ours {
            CimdClientPlan::Revoke
        } else {
            CimdClientPlan::Ignore
        };
    }
    let has = |name: &str| {
        client
            .default_client_scopes
            .iter()
            .chain(client.optional_client_scopes.iter())
            .flatten()
            .any(|s| s == name)
    };
    let missing = |ty: ScopeType| -> Vec<String> {
        wanted
            .iter()
            .filter(|(n, t)| *t == ty && !has(n))
            .map(|(n, _)| n.clone())
            .collect()
    };
    CimdClientPlan::Keep {
        mark: marker.is_none(),
        add_default: missing(ScopeType::Default),
        add_optional: missing(ScopeType::Optional),
    }
}

/// A client Keycloak named itself (`clientId` equal to its id): registered anonymously.
pub fn named_by_keycloak(client: &ClientRepresentation) -> bool {
    client.client_id.is_some() && client.client_id == client.id
}

/// A client Keycloak made from a metadata document (it carries Keycloak's CIMD attribute).
pub fn from_metadata_document(client: &ClientRepresentation) -> bool {
    let attrs = client.attributes.as_ref();
    attrs.is_some_and(|a| a.contains_key(CIMD_CLIENT_ATTRIBUTE))
}

/// Whether the registration sweep or reaping could ever act on `client`: one Keycloak named
/// itself or made from a metadata document. The realm's other clients (the servers' own,
/// hand-made ones) are only counted, never kept in memory.
pub fn registration_candidate(client: &ClientRepresentation) -> bool {
    named_by_keycloak(client) || from_metadata_document(client)
}

/// Share of `maxClients` from which the guard rail warns.
pub const PRESSURE_PERCENT: i64 = 90;

/// The scopes an anonymously registered MCP client must be given so it can step up: Keycloak
/// gives a client registered with a `scope` exactly those (SDKs register with the 401's base
/// scopes), so a per-tool scope or another server's audience could never be requested. Such a
/// client is one Keycloak named itself (`clientId` equal to its id), unmarked, that already has
/// one of the `wanted` scopes. The rest of `wanted` is added as optional: anonymous registration
/// could have asked for them anyway, and the user still consents to each.
pub fn registered_client_scopes(
    client: &ClientRepresentation,
    wanted: &[(String, ScopeType)],
) -> Vec<String> {
    let marked = (client.attributes.as_ref()).is_some_and(|a| a.contains_key(OWNER_ATTRIBUTE));
    if !named_by_keycloak(client)
        || marked
        || client
            .protocol
            .as_deref()
            .is_some_and(|p| p != "openid-connect")
    {
        return vec![];
    }
    let has = |name: &str| {
        (client.default_client_scopes.iter())
            .chain(client.optional_client_scopes.iter())
            .flatten()
            .any(|s| s == name)
    };
    if !wanted.iter().any(|(n, _)| has(n)) {
        return vec![];
    }
    let missing = wanted.iter().filter(|(n, _)| !has(n));
    missing.map(|(n, _)| n.clone()).collect()
}

/// The realm-client guard rail: `(pressure, reason, message)` for the `ClientLimitPressure`
/// condition (`True` = registration is about to be, or is, refused by Keycloak's Max Clients).
pub fn client_pressure(count: i64, max: i64) -> (bool, &'static str, String) {
    let max = max.max(1);
    let percent = count * 100 / max;
    if count >= max {
        (
            true,
            "LimitReached",
            format!(
                "the realm has {count} clients, maxClients is {max}: Keycloak refuses every new anonymous registration; raise maxClients or delete unused clients"
            ),
        )
    } else if count * 100 >= PRESSURE_PERCENT * max {
        (
            true,
            "NearLimit",
            format!(
                "the realm has {count} of {max} clients ({percent}%); registrations stop at {max}"
            ),
        )
    } else {
        (
            false,
            "BelowThreshold",
            format!("the realm has {count} of {max} clients ({percent}%)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;

    fn cimd() -> ClientIdMetadataDocuments {
        ClientIdMetadataDocuments {
            enabled: true,
            trusted_domains: vec!["mcp.example.com".into(), "*.apps.example.com".into()],
            redirect_domains: vec!["127.0.0.1".into()],
            trusted_clients: vec![CimdTrustedClient::Claude, CimdTrustedClient::VSCode],
            allow_http: false,
            restrict_same_domain: true,
            required_properties: vec!["logo_uri".into(), "client_name".into()],
            reaping: None,
        }
    }

    fn policy(c: Option<ClientIdMetadataDocuments>) -> McpAuthPolicy {
        let mut p = crate::desired::test_policy("team-a", "acme.prod");
        p.spec.client_id_metadata_documents = c;
        p
    }

    #[test]
    fn owned_name_is_unambiguous_and_prefixed() {
        let p = policy(None);
        assert_eq!(owned_name(&p), "mcp-operator.team-a.acme.prod");
        let mut q = policy(None);
        q.metadata.namespace = Some("team".into());
        q.metadata.name = Some("a-acme.prod".into());
        assert_ne!(owned_name(&q), owned_name(&p));
    }

    #[test]
    fn presets_expand_into_client_id_and_redirect_domains() {
        let c = cimd();
        assert_eq!(
            client_id_domains(&c),
            vec![
                "*.apps.example.com",
                "claude.ai",
                "mcp.example.com",
                "vscode.dev"
            ]
        );
        assert_eq!(
            permitted_domains(&c),
            vec![
                "*.apps.example.com",
                "127.0.0.1",
                "claude.ai",
                "insiders.vscode.dev",
                "localhost",
                "mcp.example.com",
                "vscode.dev"
            ]
        );
    }

    #[test]
    fn profile_exact() {
        let p = policy(Some(cimd()));
        let prof = profile(&p, &cimd());
        let v = serde_json::to_value(&prof).unwrap();
        assert_eq!(
            v,
            json!({
                "name": "mcp-operator.team-a.acme.prod",
                "description": "OAuth Client ID Metadata Documents profile managed by mcp-keycloak-operator for McpAuthPolicy team-a/acme.prod; edits are reverted",
                "executors": [{
                    "executor": "client-id-metadata-document",
                    "configuration": {
                        "cimd-allow-http-scheme": false,
                        "cimd-allow-permitted-domains": ["*.apps.example.com", "127.0.0.1", "claude.ai", "insiders.vscode.dev", "localhost", "mcp.example.com", "vscode.dev"],
                        "cimd-restrict-same-domain": true,
                        "cimd-required-properties": ["client_name", "logo_uri"]
                    }
                }]
            })
        );
    }

    #[test]
    fn policy_exact_https_only_unless_allow_http() {
        let p = policy(Some(cimd()));
        let v = serde_json::to_value(client_policy(&p, &cimd())).unwrap();
        assert_eq!(
            v,
            json!({
                "name": "mcp-operator.team-a.acme.prod",
                "description": "OAuth Client ID Metadata Documents policy managed by mcp-keycloak-operator for McpAuthPolicy team-a/acme.prod; edits are reverted",
                "enabled": true,
                "conditions": [{
                    "condition": "client-id-uri",
                    "configuration": {
                        "client-id-uri-scheme": ["https"],
                        "client-id-uri-allow-permitted-domains": ["*.apps.example.com", "claude.ai", "mcp.example.com", "vscode.dev"]
                    }
                }],
                "profiles": ["mcp-operator.team-a.acme.prod"]
            })
        );
        let mut c = cimd();
        c.allow_http = true;
        assert_eq!(schemes(&c), vec!["http", "https"]);
        let prof = serde_json::to_value(profile(&p, &c)).unwrap();
        assert_eq!(
            prof["executors"][0]["configuration"]["cimd-allow-http-scheme"],
            true
        );
    }

    #[test]
    fn requested_only_when_present_and_enabled() {
        assert!(requested(&policy(None)).is_none());
        let mut c = cimd();
        c.enabled = false;
        assert!(requested(&policy(Some(c))).is_none());
        assert!(requested(&policy(Some(cimd()))).is_some());
    }

    fn prof(name: &str, executor: &str) -> ClientProfileRepresentation {
        ClientProfileRepresentation {
            name: Some(name.into()),
            description: None,
            executors: Some(vec![ClientPolicyExecutorRepresentation {
                executor: Some(executor.into()),
                configuration: Some(HashMap::new()),
            }]),
        }
    }

    fn names(v: &[ClientProfileRepresentation]) -> Vec<&str> {
        v.iter().map(|p| p.name.as_deref().unwrap()).collect()
    }

    #[test]
    fn merge_appends_replaces_in_place_and_removes_only_ours() {
        let theirs = vec![
            prof("corp", "pkce-enforcer"),
            prof("fapi", "secure-session"),
        ];
        let ours = prof("mcp-operator.ns.p", EXECUTOR);

        // New: appended after everyone else's, who keep their content and order.
        let added = merge_by_name(&theirs, "mcp-operator.ns.p", Some(&ours)).unwrap();
        assert_eq!(names(&added), vec!["corp", "fapi", "mcp-operator.ns.p"]);
        assert_eq!(&added[..2], &theirs[..]);

        // Unchanged: no write.
        assert_eq!(
            merge_by_name(&added, "mcp-operator.ns.p", Some(&ours)),
            None
        );

        // Changed: replaced where it is.
        let live = vec![theirs[0].clone(), ours.clone(), theirs[1].clone()];
        let changed = prof("mcp-operator.ns.p", "pkce-enforcer");
        let out = merge_by_name(&live, "mcp-operator.ns.p", Some(&changed)).unwrap();
        assert_eq!(names(&out), vec!["corp", "mcp-operator.ns.p", "fapi"]);
        assert_eq!(out[1], changed);

        // Removed: only ours goes; absent and not wanted: no write.
        let out = merge_by_name(&live, "mcp-operator.ns.p", None).unwrap();
        assert_eq!(out, theirs);
        assert_eq!(merge_by_name(&theirs, "mcp-operator.ns.p", None), None);

        // Another policy's entry with a similar name is not ours.
        let other = vec![prof("mcp-operator.ns.p2", EXECUTOR)];
        assert_eq!(merge_by_name(&other, "mcp-operator.ns.p", None), None);

        // A duplicate of our name is dropped, the first kept in place.
        let dup = vec![ours.clone(), theirs[0].clone(), ours.clone()];
        let out = merge_by_name(&dup, "mcp-operator.ns.p", Some(&ours)).unwrap();
        assert_eq!(names(&out), vec!["mcp-operator.ns.p", "corp"]);
    }

    #[test]
    fn admission_follows_keycloaks_domain_rule() {
        let a = Admission {
            schemes: vec!["https".into()],
            domains: vec!["vscode.dev".into(), "*.example.com".into(), "[::1]".into()],
        };
        assert!(a.admits("https://vscode.dev/oauth/client-metadata.json"));
        assert!(a.admits("https://example.com/c.json"));
        assert!(a.admits("https://a.b.example.com/c.json"));
        assert!(a.admits("https://[::1]:8443/c.json"));
        assert!(!a.admits("http://vscode.dev/c.json"), "scheme");
        assert!(
            !a.admits("https://insiders.vscode.dev/c.json"),
            "exact host"
        );
        assert!(!a.admits("https://badexample.com/c.json"));
        assert!(!a.admits("not a url"));
        assert!(!a.admits("3fa85f64-5717-4562-b3fc-2c963f66afa6"));
    }

    #[test]
    fn admission_from_live_policy_reads_its_condition() {
        let p = policy(Some(cimd()));
        let live = client_policy(&p, &cimd());
        assert_eq!(Admission::of_live(&live), Admission::of(&cimd()));
        let mut off = live.clone();
        off.enabled = Some(false);
        assert_eq!(Admission::of_live(&off), Admission::default());
    }

    fn client(id: &str, marker: Option<&str>, optional: &[&str]) -> ClientRepresentation {
        let mut attrs = HashMap::from([(CIMD_CLIENT_ATTRIBUTE.to_string(), "1".to_string())]);
        if let Some(m) = marker {
            attrs.insert(OWNER_ATTRIBUTE.into(), m.into());
        }
        ClientRepresentation {
            client_id: Some(id.into()),
            attributes: Some(attrs),
            default_client_scopes: Some(vec!["basic".into(), "mcp:tools".into()]),
            optional_client_scopes: Some(optional.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    const OWNER: &str = "McpAuthPolicy/team-a/acme";
    const ALPHA: &str = "mcp:server:team-a:alpha";
    const BETA: &str = "mcp:server:team-a:beta";

    fn keep(mark: bool, add_default: &[&str], add_optional: &[&str]) -> CimdClientPlan {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        CimdClientPlan::Keep {
            mark,
            add_default: owned(add_default),
            add_optional: owned(add_optional),
        }
    }

    #[test]
    fn cimd_client_plans() {
        let http = |domains: &[&str]| Admission {
            schemes: vec!["http".into()],
            domains: domains.iter().map(|d| d.to_string()).collect(),
        };
        let (both, only_localhost) = (http(&["127.0.0.1", "localhost"]), http(&["localhost"]));
        let wanted = vec![
            ("mcp:tools".to_string(), ScopeType::Default),
            (ALPHA.to_string(), ScopeType::Optional),
            (BETA.to_string(), ScopeType::Optional),
        ];
        let a = "http://127.0.0.1:9/client.json";
        let complete = client(a, Some(OWNER), &[ALPHA, BETA]);
        let unmarked = client(a, None, &[]);
        let theirs = client(a, Some("McpAuthPolicy/other/p"), &[]);
        let mut no_default = complete.clone();
        no_default.default_client_scopes = Some(vec!["basic".into()]);
        let (b, l) = (Some(&both), Some(&only_localhost));
        use CimdClientPlan::{Ignore, Revoke};
        let cases = [
            // Admitted, unmarked: claimed, and given the audience scope it lacks.
            (
                &client(a, None, &[ALPHA]),
                None,
                b,
                keep(true, &[], &[BETA]),
            ),
            // Ours and complete: nothing to do (no write).
            (&complete, b, b, keep(false, &[], &[])),
            // Its domain removed: revoked, marked or (seen between reconciles) not yet marked.
            (&complete, b, l, Revoke),
            (&unmarked, b, l, Revoke),
            // Section removed or policy deleted: every client of ours goes.
            (&complete, b, None, Revoke),
            // Never admitted by us and unmarked, or another policy's: left alone.
            (&unmarked, l, l, Ignore),
            (&theirs, b, b, Ignore),
            (&theirs, b, None, Ignore),
            // A default scope it lacks is added as default.
            (&no_default, b, b, keep(false, &["mcp:tools"], &[])),
        ];
        for (i, (c, previously, now, expected)) in cases.into_iter().enumerate() {
            let plan = plan_cimd_client(c, OWNER, previously, now, &wanted);
            assert_eq!(plan, expected, "case {i}");
        }
    }

    #[test]
    fn pressure_thresholds() {
        assert_eq!(client_pressure(6, 10).1, "BelowThreshold");
        assert!(!client_pressure(8, 10).0);
        let (p, r, m) = client_pressure(9, 10);
        assert!(p);
        assert_eq!(r, "NearLimit");
        assert_eq!(
            m,
            "the realm has 9 of 10 clients (90%); registrations stop at 10"
        );
        assert_eq!(client_pressure(179, 200).1, "BelowThreshold");
        assert_eq!(client_pressure(180, 200).1, "NearLimit");
        assert_eq!(client_pressure(10, 10).1, "LimitReached");
        assert_eq!(client_pressure(12, 10).1, "LimitReached");
    }

    #[test]
    fn registered_mcp_clients_get_the_scopes_they_lack_and_no_one_else() {
        let wanted = vec![
            ("mcp:tools".to_string(), ScopeType::Optional),
            ("mcp:admin".to_string(), ScopeType::Optional),
            ("mcp:server:ns:b".to_string(), ScopeType::Optional),
        ];
        let client = |client_id: &str, optional: &[&str]| ClientRepresentation {
            id: Some("5bad9d5c".into()),
            client_id: Some(client_id.into()),
            optional_client_scopes: Some(optional.iter().map(|s| s.to_string()).collect()),
            default_client_scopes: Some(vec!["basic".into()]),
            ..Default::default()
        };
        let registered = client("5bad9d5c", &["mcp:tools", "mcp:server:ns:a"]);
        assert_eq!(
            registered_client_scopes(&registered, &wanted),
            ["mcp:admin", "mcp:server:ns:b"]
        );
        let all = client("5bad9d5c", &["mcp:tools", "mcp:admin", "mcp:server:ns:b"]);
        assert!(
            registered_client_scopes(&all, &wanted).is_empty(),
            "in sync: no write"
        );
        // Not an MCP client, named by an admin, marked as ours, or another protocol: untouched.
        assert!(registered_client_scopes(&client("5bad9d5c", &["email"]), &wanted).is_empty());
        assert!(registered_client_scopes(&client("my-app", &["mcp:tools"]), &wanted).is_empty());
        let mut marked = registered.clone();
        marked.attributes = Some(HashMap::from([(
            OWNER_ATTRIBUTE.to_string(),
            "x".to_string(),
        )]));
        assert!(registered_client_scopes(&marked, &wanted).is_empty());
        let mut saml = registered.clone();
        saml.protocol = Some("saml".into());
        assert!(registered_client_scopes(&saml, &wanted).is_empty());
    }

    /// Every client the sweep or reaping acts on is a candidate, so dropping the others while
    /// listing loses nothing.
    #[test]
    fn only_candidates_are_ever_acted_on() {
        use crate::desired::reaping::origin;
        let wanted = vec![
            ("mcp:tools".to_string(), ScopeType::Optional),
            ("mcp:admin".to_string(), ScopeType::Optional),
        ];
        let attrs = |pairs: &[(&str, &str)]| {
            let pairs = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Some(pairs.collect::<HashMap<_, _>>())
        };
        let mut clients = vec![];
        for client_id in ["5bad9d5c", "mcp.team.s1", "https://app.example/client.json"] {
            for a in [
                None,
                attrs(&[(OWNER_ATTRIBUTE, OWNER)]),
                attrs(&[(CIMD_CLIENT_ATTRIBUTE, "1")]),
                attrs(&[(CIMD_CLIENT_ATTRIBUTE, "1"), (OWNER_ATTRIBUTE, OWNER)]),
            ] {
                clients.push(ClientRepresentation {
                    id: Some("5bad9d5c".into()),
                    client_id: Some(client_id.into()),
                    attributes: a,
                    optional_client_scopes: Some(vec!["mcp:tools".into()]),
                    ..Default::default()
                });
            }
        }
        let mut acted = 0;
        for c in &clients {
            let acts =
                origin(c, OWNER).is_some() || !registered_client_scopes(c, &wanted).is_empty();
            acted += usize::from(acts);
            assert!(!acts || registration_candidate(c), "{c:?}");
        }
        assert!(acted >= 3, "the cases include clients acted on");
        let server = &clients[5];
        assert!(
            !registration_candidate(server),
            "a server's own client is not kept"
        );
    }
}
