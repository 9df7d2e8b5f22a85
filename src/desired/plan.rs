//! Pure plans: what Keycloak has now (as read from the Admin API) plus what we want, in; the
//! writes that bring the first to the second, out. No IO: each executor in `crate::admin` reads,
//! calls its plan and performs exactly the writes it returns, so at steady state it only reads.

use std::collections::HashMap;

use keycloak::types::{
    ClientPoliciesRepresentation, ClientPolicyRepresentation, ClientProfileRepresentation,
    ClientProfilesRepresentation, ClientRepresentation, ClientScopeRepresentation,
    ProtocolMapperRepresentation,
};
use serde::Serialize;

use super::cimd::merge_by_name;
use super::is_subset;
use crate::api::{ScopeType, BUILT_IN_SCOPES, OWNER_ATTRIBUTE};
use crate::{Error, Result};

/// Longest client `name` and client-scope `description` Keycloak stores: a `VARCHAR(255)`
/// column, and a longer value makes it answer 500 forever. Both are informational: cut, not
/// refused.
pub const MAX_KEYCLOAK_TEXT: usize = 255;

fn fit(text: &mut Option<String>) {
    if let Some(t) = text.as_mut() {
        if t.chars().count() > MAX_KEYCLOAK_TEXT {
            *t = t.chars().take(MAX_KEYCLOAK_TEXT).collect();
        }
    }
}

/// The ownership marker in a scope's or client's attributes.
pub fn owner_of(attributes: Option<&HashMap<String, String>>) -> Option<&str> {
    attributes?.get(OWNER_ATTRIBUTE).map(String::as_str)
}

/// Whether `live` differs from `want` in a field `want` sets (server-side extras do not count).
fn drifted<T: Serialize>(want: &T, live: &T) -> Result<bool> {
    Ok(!is_subset(
        &serde_json::to_value(want)?,
        &serde_json::to_value(live)?,
    ))
}

/// A PUT replaces the attributes: keep the ones Keycloak or users added, ours win.
fn merged(
    live: Option<&HashMap<String, String>>,
    want: Option<&HashMap<String, String>>,
) -> HashMap<String, String> {
    let mut attrs = live.cloned().unwrap_or_default();
    attrs.extend(want.cloned().unwrap_or_default());
    attrs
}

/// Owner markers of McpAuthPolicies start with this: a policy scope marked by another policy is
/// taken over by the realm's owner (the realm was handed over; see [`Adopt`]).
const POLICY_MARKER_PREFIX: &str = "McpAuthPolicy/";

/// Whose marked scopes a write may take over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Adopt {
    /// Only unmarked (hand-made) scopes.
    Unmarked,
    /// Also scopes of other McpAuthPolicies: only the realm's owner writes policy scopes, so
    /// such a scope is a former owner's.
    PolicyScopes,
}

/// `ScopeConflict` if the realm (`existing`: its scope list) has a scope of `desired`'s name that
/// carries another owner's marker, or `desired` names a Keycloak built-in scope. Lets a
/// reconcile refuse before it writes anything.
pub fn check_scope_owner(
    existing: &[ClientScopeRepresentation],
    desired: &ClientScopeRepresentation,
    adopt: Adopt,
) -> Result<()> {
    let name = desired.name.as_deref().unwrap_or_default();
    if BUILT_IN_SCOPES.contains(&name) {
        return Err(Error::invalid(
            "ScopeConflict",
            format!("client scope {name} is one of Keycloak's built-in scopes; the operator never rewrites it"),
        ));
    }
    let want_owner = owner_of(desired.attributes.as_ref());
    let live_owner = existing
        .iter()
        .find(|s| s.name.as_deref() == Some(name))
        .and_then(|s| owner_of(s.attributes.as_ref()));
    match live_owner {
        Some(o) if adopt == Adopt::PolicyScopes && o.starts_with(POLICY_MARKER_PREFIX) => Ok(()),
        Some(o) if Some(o) != want_owner => Err(Error::invalid(
            "ScopeConflict",
            format!("client scope {name} belongs to {o}"),
        )),
        _ => Ok(()),
    }
}

/// One write to an object of an Admin API collection (clients, client scopes, a scope's
/// mappers, components): the API creates by POST and addresses by id.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<T> {
    Create(T),
    Update(String, T),
    Delete(String),
}

/// One write of [`plan_scope`]. Mapper writes go to the scope (created first when new).
#[derive(Debug, Clone, PartialEq)]
pub enum ScopeWrite {
    Scope(Write<ClientScopeRepresentation>),
    Mapper(Write<ProtocolMapperRepresentation>),
}

/// The scope's id when it exists already (`None`: the first write creates it), and the writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScopePlan {
    pub id: Option<String>,
    pub writes: Vec<ScopeWrite>,
}

/// A client scope with the desired name, settings and mappers. `existing` is the realm's scope
/// list (with mappers). A scope marked by someone else is a conflict; an unmarked scope (made by
/// hand) is managed but never marked, so cleanup leaves it alone. Other mappers stay.
pub fn plan_scope(
    existing: &[ClientScopeRepresentation],
    desired: &ClientScopeRepresentation,
    mappers: &[ProtocolMapperRepresentation],
    adopt: Adopt,
) -> Result<ScopePlan> {
    let mut want = desired.clone();
    fit(&mut want.description);
    let name = want.name.as_deref().unwrap_or_default();
    let Some(live) = existing.iter().find(|s| s.name.as_deref() == Some(name)) else {
        let mut writes = vec![ScopeWrite::Scope(Write::Create(want))];
        let create_mapper = |m: &ProtocolMapperRepresentation| Write::Create(m.clone());
        writes.extend(mappers.iter().map(create_mapper).map(ScopeWrite::Mapper));
        return Ok(ScopePlan { id: None, writes });
    };
    check_scope_owner(existing, &want, adopt)?;
    let id = live.id.clone().unwrap_or_default();
    if owner_of(live.attributes.as_ref()).is_none() {
        // Adopt a hand-made scope's settings without claiming it.
        if let Some(a) = want.attributes.as_mut() {
            a.remove(OWNER_ATTRIBUTE);
        }
    }
    let live_settings = ClientScopeRepresentation {
        protocol_mappers: None,
        ..live.clone()
    };
    let mut writes = vec![];
    if drifted(&want, &live_settings)? {
        let body = ClientScopeRepresentation {
            id: Some(id.clone()),
            attributes: Some(merged(live.attributes.as_ref(), want.attributes.as_ref())),
            protocol_mappers: None,
            ..want
        };
        writes.push(ScopeWrite::Scope(Write::Update(id.clone(), body)));
    }
    let live_mappers = live.protocol_mappers.as_deref().unwrap_or_default();
    writes.extend(plan_mappers(live_mappers, mappers)?);
    Ok(ScopePlan {
        id: Some(id),
        writes,
    })
}

/// Whether `live`, the scope recorded as `id`, needs no write to be `desired` with `mappers`
/// (a scope of another name or owner does).
pub fn scope_in_sync(
    live: &ClientScopeRepresentation,
    id: &str,
    desired: &ClientScopeRepresentation,
    mappers: &[ProtocolMapperRepresentation],
) -> bool {
    let plan = plan_scope(
        std::slice::from_ref(live),
        desired,
        mappers,
        Adopt::Unmarked,
    );
    plan.is_ok_and(|p| p.writes.is_empty() && p.id.as_deref() == Some(id))
}

/// The one write (if any) that makes the mapper called `name` on a scope `desired`: created,
/// updated when it drifted, deleted when `desired` is `None`. Other mappers are never touched:
/// the scope belongs to someone else (a policy scope carrying a server's audience).
pub fn plan_named_mapper(
    live: &[ProtocolMapperRepresentation],
    name: &str,
    desired: Option<&ProtocolMapperRepresentation>,
) -> Result<Option<Write<ProtocolMapperRepresentation>>> {
    let found = live.iter().find(|l| l.name.as_deref() == Some(name));
    let id = |l: &ProtocolMapperRepresentation| l.id.clone().unwrap_or_default();
    Ok(match (found, desired) {
        (None, None) => None,
        (None, Some(m)) => Some(Write::Create(m.clone())),
        (Some(l), None) => Some(Write::Delete(id(l))),
        (Some(l), Some(m)) if drifted(m, l)? => {
            let body = ProtocolMapperRepresentation {
                id: Some(id(l)),
                ..m.clone()
            };
            Some(Write::Update(id(l), body))
        }
        (Some(_), Some(_)) => None,
    })
}

/// Mappers matched by name: missing ones created, drifted ones updated, others left alone.
fn plan_mappers(
    live: &[ProtocolMapperRepresentation],
    desired: &[ProtocolMapperRepresentation],
) -> Result<Vec<ScopeWrite>> {
    let mut writes = vec![];
    for m in desired {
        match live.iter().find(|l| l.name == m.name) {
            None => writes.push(ScopeWrite::Mapper(Write::Create(m.clone()))),
            Some(l) if drifted(m, l)? => {
                let mapper_id = l.id.clone().unwrap_or_default();
                let body = ProtocolMapperRepresentation {
                    id: Some(mapper_id.clone()),
                    ..m.clone()
                };
                writes.push(ScopeWrite::Mapper(Write::Update(mapper_id, body)));
            }
            Some(_) => {}
        }
    }
    Ok(writes)
}

/// Ids of the realm's default and optional client scopes.
#[derive(Debug, Clone, Default)]
pub struct RealmScopeAssignments {
    pub default_ids: Vec<String>,
    pub optional_ids: Vec<String>,
}

/// One change to the realm's default or optional scope lists, for one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealmScopeWrite {
    Add(ScopeType),
    Remove(ScopeType),
}

impl RealmScopeAssignments {
    fn has(&self, ty: ScopeType, scope_id: &str) -> bool {
        let ids = match ty {
            ScopeType::Default => &self.default_ids,
            ScopeType::Optional => &self.optional_ids,
        };
        ids.iter().any(|i| i == scope_id)
    }
}

/// The scope a realm default or optional scope as `ty` says, and not the other (removed first).
pub fn plan_realm_scope_type(
    current: &RealmScopeAssignments,
    scope_id: &str,
    ty: ScopeType,
) -> Vec<RealmScopeWrite> {
    let other = match ty {
        ScopeType::Default => ScopeType::Optional,
        ScopeType::Optional => ScopeType::Default,
    };
    let mut writes = vec![];
    if current.has(other, scope_id) {
        writes.push(RealmScopeWrite::Remove(other));
    }
    if !current.has(ty, scope_id) {
        writes.push(RealmScopeWrite::Add(ty));
    }
    writes
}

/// The scope out of both realm lists (before it is deleted).
pub fn plan_remove_realm_scope(
    current: &RealmScopeAssignments,
    scope_id: &str,
) -> Vec<RealmScopeWrite> {
    [ScopeType::Default, ScopeType::Optional]
        .into_iter()
        .filter(|ty| current.has(*ty, scope_id))
        .map(RealmScopeWrite::Remove)
        .collect()
}

/// Ids of the scopes carrying `owner`'s marker (and named `name`, when given): what teardown
/// deletes. Unmarked and foreign scopes are never among them.
pub fn owned_scope_ids(
    scopes: &[ClientScopeRepresentation],
    owner: &str,
    name: Option<&str>,
) -> Vec<String> {
    scopes
        .iter()
        .filter(|s| owner_of(s.attributes.as_ref()) == Some(owner))
        .filter(|s| name.is_none() || s.name.as_deref() == name)
        .filter_map(|s| s.id.clone())
        .collect()
}

/// The client's uuid when it exists already (`None`: `write` creates it), and the write if any.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientPlan {
    pub id: Option<String>,
    pub write: Option<Write<ClientRepresentation>>,
}

/// The confidential introspection client. `live` is the client of the desired `clientId`, if
/// any; one with another owner is a `ClientIdConflict`. `new_secret` is asked only when the
/// client is created; otherwise Keycloak's secret is authoritative and never compared.
pub fn plan_introspection_client(
    realm: &str,
    live: Option<&ClientRepresentation>,
    desired: &ClientRepresentation,
    new_secret: impl FnOnce() -> String,
) -> Result<ClientPlan> {
    let mut want = desired.clone();
    fit(&mut want.name);
    fit(&mut want.description);
    let Some(live) = live else {
        return Ok(create_client(want, new_secret));
    };
    release_rotation(&mut want, live);
    let live_owner = owner_of(live.attributes.as_ref());
    if live_owner != owner_of(want.attributes.as_ref()) {
        let client_id = want.client_id.as_deref().unwrap_or_default();
        let owner = live_owner
            .map(|o| format!(" (owner: {o})"))
            .unwrap_or_default();
        return Err(Error::invalid(
            "ClientIdConflict",
            format!("a Keycloak client {client_id} already exists in realm {realm} and is not managed by this McpServer{owner}"),
        ));
    }
    let id = live.id.clone().unwrap_or_default();
    let live_settings = ClientRepresentation {
        secret: None,
        ..live.clone()
    };
    let write = drifted(&want, &live_settings)?.then(|| {
        let body = ClientRepresentation {
            id: Some(id.clone()),
            attributes: Some(merged(live.attributes.as_ref(), want.attributes.as_ref())),
            ..want
        };
        Write::Update(id.clone(), body)
    });
    Ok(ClientPlan {
        id: Some(id),
        write,
    })
}

/// Created with no client scopes: it only introspects, and Keycloak would otherwise link the
/// realm's every optional scope — one per server, so N per client and N² in the realm.
fn create_client(want: ClientRepresentation, new_secret: impl FnOnce() -> String) -> ClientPlan {
    let body = ClientRepresentation {
        secret: Some(new_secret()),
        default_client_scopes: Some(vec![]),
        optional_client_scopes: Some(vec![]),
        ..want
    };
    let write = Some(Write::Create(body));
    ClientPlan { id: None, write }
}

/// A client whose server no longer asks for rotation leaves the secret-rotation policy: the
/// merged attributes would otherwise keep the live `true`.
fn release_rotation(want: &mut ClientRepresentation, live: &ClientRepresentation) {
    let key = crate::desired::rotation::ROTATION_ATTRIBUTE;
    let live_on = live
        .attributes
        .as_ref()
        .is_some_and(|a| a.get(key).is_some_and(|v| v == "true"));
    let attrs = want.attributes.get_or_insert_with(Default::default);
    if live_on && !attrs.contains_key(key) {
        attrs.insert(key.to_string(), "false".into());
    }
}

/// The realm's client profiles and client policies, as read once: Keycloak replaces each list
/// whole on every PUT, so entries are merged in by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientPolicyLists {
    pub profiles: Vec<ClientProfileRepresentation>,
    pub policies: Vec<ClientPolicyRepresentation>,
}

/// One PUT of a whole list: the body as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientPolicyWrite {
    Profiles(ClientProfilesRepresentation),
    Policies(ClientPoliciesRepresentation),
}

impl ClientPolicyWrite {
    /// The realm's own profiles, global ones left out (Keycloak keeps those itself).
    pub fn profiles(profiles: Vec<ClientProfileRepresentation>) -> Self {
        ClientPolicyWrite::Profiles(ClientProfilesRepresentation {
            profiles: Some(profiles),
            global_profiles: None,
        })
    }

    /// The realm's own policies, global ones left out.
    pub fn policies(policies: Vec<ClientPolicyRepresentation>) -> Self {
        ClientPolicyWrite::Policies(ClientPoliciesRepresentation {
            policies: Some(policies),
            global_policies: None,
        })
    }
}

/// Our profile and policy named `name` set to `desired` (or both removed when `None`), every
/// other entry left as it is. A profile is written before the policy naming it, and a policy
/// removed before its profile: Keycloak refuses a policy naming a missing profile.
pub fn plan_client_policy_pair(
    current: &ClientPolicyLists,
    name: &str,
    desired: Option<(&ClientProfileRepresentation, &ClientPolicyRepresentation)>,
) -> Vec<ClientPolicyWrite> {
    let profiles = merge_by_name(&current.profiles, name, desired.map(|d| d.0))
        .map(ClientPolicyWrite::profiles);
    let policies = merge_by_name(&current.policies, name, desired.map(|d| d.1))
        .map(ClientPolicyWrite::policies);
    let ordered = match desired {
        Some(_) => [profiles, policies],
        None => [policies, profiles],
    };
    ordered.into_iter().flatten().collect()
}

impl ClientPolicyLists {
    /// The lists as they are after `write` succeeded.
    pub fn apply(&mut self, write: &ClientPolicyWrite) {
        match write {
            ClientPolicyWrite::Profiles(p) => {
                self.profiles = p.profiles.clone().unwrap_or_default()
            }
            ClientPolicyWrite::Policies(p) => {
                self.policies = p.policies.clone().unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MachineGrant;
    use crate::desired::realm::{audience_mapper, introspection_audience_mapper, user_grants_only};
    use std::cell::Cell;

    const OWNER: &str = "McpServer/team/weather";

    #[test]
    fn a_named_mapper_is_created_updated_deleted_and_others_left_alone() {
        let mapper = |name: &str, url: &str, id: Option<&str>| ProtocolMapperRepresentation {
            id: id.map(str::to_string),
            ..crate::desired::realm::audience(name, "included.client.audience", url)
        };
        let ours = "audience McpServer/team/a";
        let want = mapper(ours, "https://a/mcp", None);
        let live_ok = mapper(ours, "https://a/mcp", Some("m1"));
        let live_old = mapper(ours, "https://old/mcp", Some("m1"));
        let foreign = mapper("audience McpServer/team/b", "https://b/mcp", Some("m2"));
        type Mapper = ProtocolMapperRepresentation;
        type Case = (Vec<Mapper>, Option<Mapper>, Option<Write<Mapper>>);
        let updated = mapper(ours, "https://a/mcp", Some("m1"));
        let cases: Vec<Case> = vec![
            (
                vec![],
                Some(want.clone()),
                Some(Write::Create(want.clone())),
            ),
            (
                vec![foreign.clone()],
                Some(want.clone()),
                Some(Write::Create(want.clone())),
            ),
            (
                vec![live_ok.clone(), foreign.clone()],
                Some(want.clone()),
                None,
            ),
            (
                vec![live_old, foreign.clone()],
                Some(want.clone()),
                Some(Write::Update("m1".into(), updated)),
            ),
            (
                vec![foreign.clone(), live_ok],
                None,
                Some(Write::Delete("m1".into())),
            ),
            (vec![foreign], None, None),
        ];
        for (i, (live, desired, expected)) in cases.into_iter().enumerate() {
            let planned = plan_named_mapper(&live, ours, desired.as_ref()).unwrap();
            assert_eq!(planned, expected, "case {i}");
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn long_texts_are_cut_to_keycloak_columns() {
        let mut long = Some("é".repeat(300));
        fit(&mut long);
        assert_eq!(long.unwrap().chars().count(), MAX_KEYCLOAK_TEXT);
        let mut short = Some("MCP server http://localhost:3000".to_string());
        fit(&mut short);
        assert_eq!(short.as_deref(), Some("MCP server http://localhost:3000"));
        let mut none = None;
        fit(&mut none);
        assert_eq!(none, None);
    }

    #[test]
    fn foreign_scope_owner_is_a_conflict() {
        let scope = |owner: Option<&str>| ClientScopeRepresentation {
            name: Some("mcp:server:team:a".into()),
            attributes: owner.and_then(|o| attrs(&[(OWNER_ATTRIBUTE, o)])),
            ..Default::default()
        };
        let ours = scope(Some("McpServer/team/a"));
        let u = Adopt::Unmarked;
        assert!(check_scope_owner(&[], &ours, u).is_ok());
        assert!(
            check_scope_owner(&[scope(None)], &ours, u).is_ok(),
            "hand-made scopes are adopted"
        );
        assert!(check_scope_owner(std::slice::from_ref(&ours), &ours, u).is_ok());
        let former = scope(Some("McpAuthPolicy/old/acme"));
        assert!(check_scope_owner(std::slice::from_ref(&former), &ours, u).is_err());
        assert!(check_scope_owner(&[former], &ours, Adopt::PolicyScopes).is_ok());
        let e = check_scope_owner(&[scope(Some("someone/else"))], &ours, Adopt::PolicyScopes)
            .unwrap_err();
        assert_eq!(e.reason(), "ScopeConflict");
        assert_eq!(
            e.to_string(),
            "ScopeConflict: client scope mcp:server:team:a belongs to someone/else"
        );
        let builtin = ClientScopeRepresentation {
            name: Some("offline_access".into()),
            ..Default::default()
        };
        let e = check_scope_owner(&[], &builtin, u).unwrap_err();
        assert_eq!(e.reason(), "ScopeConflict");
    }

    // ---- plan_scope ----

    fn want_scope() -> ClientScopeRepresentation {
        ClientScopeRepresentation {
            name: Some("mcp:server:team:weather".into()),
            description: Some("Audience of the MCP server http://weather".into()),
            protocol: Some("openid-connect".into()),
            attributes: attrs(&[
                ("include.in.token.scope", "true"),
                (
                    "consent.screen.text",
                    "Access the MCP server at http://weather",
                ),
                (OWNER_ATTRIBUTE, OWNER),
            ]),
            ..Default::default()
        }
    }

    fn want_mappers() -> Vec<ProtocolMapperRepresentation> {
        vec![
            audience_mapper("http://weather"),
            introspection_audience_mapper("mcp.team.weather"),
        ]
    }

    /// A mapper as Keycloak returns it: with an id and keys it fills in itself.
    fn stored_mapper(m: &ProtocolMapperRepresentation, id: &str) -> ProtocolMapperRepresentation {
        let mut config = m.config.clone().unwrap_or_default();
        config.insert("lightweight.claim".into(), "false".into());
        ProtocolMapperRepresentation {
            id: Some(id.into()),
            config: Some(config),
            ..m.clone()
        }
    }

    /// The scope as Keycloak returns it after a create: an id, a server-side attribute, mappers
    /// with ids; next to another owner's scope.
    fn stored_scopes() -> Vec<ClientScopeRepresentation> {
        let mut ours = want_scope();
        ours.id = Some("s1".into());
        ours.attributes
            .as_mut()
            .unwrap()
            .insert("gui.order".into(), String::new());
        ours.protocol_mappers = Some(
            want_mappers()
                .iter()
                .zip(["m0", "m1"])
                .map(|(m, id)| stored_mapper(m, id))
                .collect(),
        );
        let theirs = ClientScopeRepresentation {
            id: Some("s0".into()),
            name: Some("profile".into()),
            attributes: attrs(&[(OWNER_ATTRIBUTE, "someone/else")]),
            ..Default::default()
        };
        vec![theirs, ours]
    }

    /// The update body for a live scope `s1`: `want` with its id, the live extra attribute kept.
    fn scope_update(want: ClientScopeRepresentation) -> ScopeWrite {
        let mut body = want;
        body.id = Some("s1".into());
        let mut a = body.attributes.take().unwrap_or_default();
        a.insert("gui.order".into(), String::new());
        body.attributes = Some(a);
        ScopeWrite::Scope(Write::Update("s1".into(), body))
    }

    fn mapper_update(i: usize, m: ProtocolMapperRepresentation) -> ScopeWrite {
        let id = format!("m{i}");
        let body = ProtocolMapperRepresentation {
            id: Some(id.clone()),
            ..m
        };
        ScopeWrite::Mapper(Write::Update(id, body))
    }

    type Edit = Box<dyn Fn(&mut ClientScopeRepresentation)>;

    /// (what differs, edit of the live scope, the writes that repair it)
    /// An edit of the config of the live scope's mapper `i`.
    fn live_mapper(i: usize, f: fn(&mut HashMap<String, String>)) -> Edit {
        Box::new(move |s| {
            let mappers = s.protocol_mappers.as_mut().unwrap();
            f(mappers[i].config.as_mut().unwrap())
        })
    }

    fn scope_cases() -> Vec<(&'static str, Edit, Vec<ScopeWrite>)> {
        vec![
            ("in sync, with Keycloak's extras", Box::new(|_| {}), vec![]),
            (
                "description",
                Box::new(|s| s.description = Some("edited".into())),
                vec![scope_update(want_scope())],
            ),
            (
                "protocol",
                Box::new(|s| s.protocol = Some("saml".into())),
                vec![scope_update(want_scope())],
            ),
            (
                "one attribute",
                Box::new(|s| {
                    let a = s.attributes.as_mut().unwrap();
                    a.insert("include.in.token.scope".into(), "false".into());
                }),
                vec![scope_update(want_scope())],
            ),
            (
                "audience of the first mapper",
                live_mapper(0, |c| {
                    c.insert("included.custom.audience".into(), "http://other".into());
                }),
                vec![mapper_update(0, want_mappers()[0].clone())],
            ),
            (
                "a claim switch of the second mapper",
                live_mapper(1, |c| {
                    c.insert("introspection.token.claim".into(), "false".into());
                }),
                vec![mapper_update(1, want_mappers()[1].clone())],
            ),
            (
                "second mapper missing",
                Box::new(|s| {
                    s.protocol_mappers.as_mut().unwrap().pop();
                }),
                vec![ScopeWrite::Mapper(Write::Create(want_mappers()[1].clone()))],
            ),
            (
                "a foreign mapper is left alone",
                Box::new(|s| {
                    let other = ProtocolMapperRepresentation {
                        id: Some("m9".into()),
                        name: Some("their-mapper".into()),
                        ..Default::default()
                    };
                    s.protocol_mappers.as_mut().unwrap().push(other);
                }),
                vec![],
            ),
        ]
    }

    #[test]
    fn scope_plan_writes_exactly_what_differs() {
        for (name, edit, expected) in scope_cases() {
            let mut live = stored_scopes();
            edit(&mut live[1]);
            let plan = plan_scope(&live, &want_scope(), &want_mappers(), Adopt::Unmarked).unwrap();
            assert_eq!(plan.id.as_deref(), Some("s1"), "{name}");
            assert_eq!(plan.writes, expected, "{name}");
        }
    }

    /// A shared copy confirms a scope only when nothing would be written from it.
    #[test]
    fn a_scope_is_in_sync_only_without_writes_and_under_its_recorded_id() {
        for (name, edit, expected) in scope_cases() {
            let mut live = stored_scopes();
            edit(&mut live[1]);
            let in_sync = scope_in_sync(&live[1], "s1", &want_scope(), &want_mappers());
            assert_eq!(in_sync, expected.is_empty(), "{name}");
        }
        let live = &stored_scopes()[1];
        assert!(
            !scope_in_sync(live, "s2", &want_scope(), &want_mappers()),
            "another id"
        );
        let mut renamed = live.clone();
        renamed.name = Some("mcp:server:team:other".into());
        assert!(!scope_in_sync(
            &renamed,
            "s1",
            &want_scope(),
            &want_mappers()
        ));
        let theirs = &stored_scopes()[0];
        let mut want_theirs = want_scope();
        want_theirs.name = theirs.name.clone();
        assert!(
            !scope_in_sync(theirs, "s0", &want_theirs, &[]),
            "another owner's"
        );
    }

    #[test]
    fn missing_scope_is_created_with_its_mappers() {
        let live = &stored_scopes()[..1];
        let plan = plan_scope(live, &want_scope(), &want_mappers(), Adopt::Unmarked).unwrap();
        let mut expected = vec![ScopeWrite::Scope(Write::Create(want_scope()))];
        let mappers = want_mappers().into_iter().map(Write::Create);
        expected.extend(mappers.map(ScopeWrite::Mapper));
        assert_eq!(
            plan,
            ScopePlan {
                id: None,
                writes: expected
            }
        );
    }

    #[test]
    fn long_description_is_cut_once_and_then_in_sync() {
        let mut want = want_scope();
        want.description = Some("x".repeat(300));
        let plan = plan_scope(&[], &want, &[], Adopt::Unmarked).unwrap();
        let ScopeWrite::Scope(Write::Create(created)) = &plan.writes[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(created.description.as_deref(), Some(&*"x".repeat(255)));
        let mut live = stored_scopes();
        live[1].description = created.description.clone();
        let plan = plan_scope(&live, &want, &want_mappers(), Adopt::Unmarked).unwrap();
        assert_eq!(plan.writes, vec![]);
    }

    #[test]
    fn hand_made_scope_is_managed_but_never_marked() {
        let mut live = stored_scopes();
        let a = live[1].attributes.as_mut().unwrap();
        a.remove(OWNER_ATTRIBUTE);
        let plan = plan_scope(&live, &want_scope(), &want_mappers(), Adopt::Unmarked).unwrap();
        assert_eq!(plan.writes, vec![], "same settings, no marker: in sync");
        live[1].description = Some("by hand".into());
        let plan = plan_scope(&live, &want_scope(), &want_mappers(), Adopt::Unmarked).unwrap();
        let [ScopeWrite::Scope(Write::Update(id, body))] = plan.writes.as_slice() else {
            panic!("{plan:?}")
        };
        assert_eq!(id, "s1");
        assert_eq!(body.description, want_scope().description);
        assert_eq!(owner_of(body.attributes.as_ref()), None);
        assert_eq!(body.attributes.as_ref().unwrap()["gui.order"], "");
    }

    #[test]
    fn foreign_or_built_in_scope_is_refused_without_writes() {
        let mut live = stored_scopes();
        live[1].attributes = attrs(&[(OWNER_ATTRIBUTE, "McpServer/other/x")]);
        let e = plan_scope(&live, &want_scope(), &want_mappers(), Adopt::Unmarked).unwrap_err();
        assert_eq!(e.reason(), "ScopeConflict");
        let mut builtin = want_scope();
        builtin.name = Some("profile".into());
        let e = plan_scope(&live, &builtin, &[], Adopt::PolicyScopes).unwrap_err();
        assert_eq!(e.reason(), "ScopeConflict");
    }

    // ---- realm default / optional scopes ----

    #[test]
    fn realm_scope_type_plans() {
        use RealmScopeWrite::{Add, Remove};
        use ScopeType::{Default as D, Optional as O};
        // (in defaults, in optionals, wanted type, writes)
        let cases = [
            (false, false, D, vec![Add(D)]),
            (true, false, D, vec![]),
            (false, true, D, vec![Remove(O), Add(D)]),
            (true, true, D, vec![Remove(O)]),
            (false, false, O, vec![Add(O)]),
            (false, true, O, vec![]),
            (true, false, O, vec![Remove(D), Add(O)]),
            (true, true, O, vec![Remove(D)]),
        ];
        for (in_default, in_optional, ty, expected) in cases {
            let mut current = RealmScopeAssignments {
                default_ids: vec!["other".into()],
                optional_ids: vec!["another".into()],
            };
            if in_default {
                current.default_ids.push("s1".into());
            }
            if in_optional {
                current.optional_ids.push("s1".into());
            }
            let case = format!("default {in_default}, optional {in_optional}, want {ty:?}");
            assert_eq!(
                plan_realm_scope_type(&current, "s1", ty),
                expected,
                "{case}"
            );
            let removal: Vec<_> = [(in_default, D), (in_optional, O)]
                .into_iter()
                .filter_map(|(is, t)| is.then_some(Remove(t)))
                .collect();
            assert_eq!(plan_remove_realm_scope(&current, "s1"), removal, "{case}");
        }
    }

    #[test]
    fn owned_scopes_are_only_those_with_our_marker() {
        let scope = |id: &str, name: &str, owner: Option<&str>| ClientScopeRepresentation {
            id: Some(id.into()),
            name: Some(name.into()),
            attributes: owner.and_then(|o| attrs(&[(OWNER_ATTRIBUTE, o)])),
            ..Default::default()
        };
        let scopes = [
            scope("1", "mcp:tools", Some(OWNER)),
            scope("2", "mcp:server:team:weather", Some(OWNER)),
            scope("3", "mcp:server:team:weather", None),
            scope("4", "mcp:admin", Some("McpServer/team/other")),
        ];
        assert_eq!(owned_scope_ids(&scopes, OWNER, None), vec!["1", "2"]);
        let named = owned_scope_ids(&scopes, OWNER, Some("mcp:server:team:weather"));
        assert_eq!(named, vec!["2"]);
        assert!(owned_scope_ids(&scopes, "nobody", None).is_empty());
    }

    // ---- introspection client ----

    fn want_client() -> ClientRepresentation {
        ClientRepresentation {
            client_id: Some("mcp.team.weather".into()),
            name: Some("MCP server http://weather".into()),
            protocol: Some("openid-connect".into()),
            enabled: Some(true),
            public_client: Some(false),
            standard_flow_enabled: Some(false),
            service_accounts_enabled: Some(false),
            attributes: attrs(&[(OWNER_ATTRIBUTE, OWNER)]),
            ..Default::default()
        }
    }

    /// The client as Keycloak returns it: id, secret, defaults it fills in.
    fn stored_client() -> ClientRepresentation {
        let mut c = want_client();
        c.id = Some("c1".into());
        c.secret = Some("keycloak-secret".into());
        c.full_scope_allowed = Some(true);
        c.redirect_uris = Some(vec![]);
        c.default_client_scopes = Some(vec!["basic".into()]);
        let a = c.attributes.as_mut().unwrap();
        a.insert("post.logout.redirect.uris".into(), "+".into());
        c
    }

    fn client_update(want: ClientRepresentation) -> Option<Write<ClientRepresentation>> {
        let mut body = want;
        body.id = Some("c1".into());
        let a = body.attributes.as_mut().unwrap();
        a.insert("post.logout.redirect.uris".into(), "+".into());
        Some(Write::Update("c1".into(), body))
    }

    #[test]
    fn introspection_client_plan_writes_exactly_what_differs() {
        type ClientEdit = fn(&mut ClientRepresentation);
        let cases: [(&str, ClientEdit, bool); 8] = [
            (
                "in sync, with Keycloak's extras and another secret",
                |_| {},
                false,
            ),
            ("disabled", |c| c.enabled = Some(false), true),
            ("made public", |c| c.public_client = Some(true), true),
            ("a flow on", |c| c.standard_flow_enabled = Some(true), true),
            (
                "service account on",
                |c| c.service_accounts_enabled = Some(true),
                true,
            ),
            ("renamed", |c| c.name = Some("edited".into()), true),
            ("protocol", |c| c.protocol = Some("saml".into()), true),
            (
                "secret rotated",
                |c| c.secret = Some("rotated".into()),
                false,
            ),
        ];
        for (name, edit, writes) in cases {
            let mut live = stored_client();
            edit(&mut live);
            let asked = Cell::new(false);
            let new_secret = || {
                asked.set(true);
                String::new()
            };
            let plan = plan_introspection_client("acme", Some(&live), &want_client(), new_secret);
            let plan = plan.unwrap();
            assert_eq!(plan.id.as_deref(), Some("c1"), "{name}");
            let expected = writes.then(|| client_update(want_client())).flatten();
            assert_eq!(plan.write, expected, "{name}");
            assert!(!asked.get(), "{name}: no new secret for an existing client");
        }
    }

    #[test]
    fn missing_client_is_created_with_the_given_secret() {
        let plan = plan_introspection_client("acme", None, &want_client(), || "known".into());
        let expected = ClientRepresentation {
            secret: Some("known".into()),
            default_client_scopes: Some(vec![]),
            optional_client_scopes: Some(vec![]),
            ..want_client()
        };
        assert_eq!(
            plan.unwrap(),
            ClientPlan {
                id: None,
                write: Some(Write::Create(expected))
            }
        );
    }

    #[test]
    fn a_client_leaves_the_rotation_policy_when_its_server_stops_rotating() {
        let key = crate::desired::rotation::ROTATION_ATTRIBUTE;
        let with = |value: &str| {
            let mut c = stored_client();
            c.attributes
                .as_mut()
                .unwrap()
                .insert(key.into(), value.into());
            c
        };
        let mut rotating = want_client();
        rotating
            .attributes
            .as_mut()
            .unwrap()
            .insert(key.into(), "true".into());
        // Rotation on: in sync once marked, marked otherwise.
        let plan = plan_introspection_client("acme", Some(&with("true")), &rotating, String::new);
        assert_eq!(plan.unwrap().write, None);
        let plan =
            plan_introspection_client("acme", Some(&stored_client()), &rotating, String::new);
        assert_eq!(plan.unwrap().write, client_update(rotating.clone()));
        // Rotation off: a marked client is set to `false` once, then left alone.
        let plan =
            plan_introspection_client("acme", Some(&with("true")), &want_client(), String::new);
        let mut released = want_client();
        released
            .attributes
            .as_mut()
            .unwrap()
            .insert(key.into(), "false".into());
        assert_eq!(plan.unwrap().write, client_update(released));
        let plan =
            plan_introspection_client("acme", Some(&with("false")), &want_client(), String::new);
        assert_eq!(plan.unwrap().write, None);
    }

    #[test]
    fn long_client_name_is_cut_and_then_in_sync() {
        let mut want = want_client();
        want.name = Some("n".repeat(400));
        let mut live = stored_client();
        live.name = Some("n".repeat(255));
        let plan = plan_introspection_client("acme", Some(&live), &want, String::new);
        assert_eq!(plan.unwrap().write, None);
    }

    #[test]
    fn client_of_another_owner_is_a_conflict() {
        let mut live = stored_client();
        live.attributes = attrs(&[(OWNER_ATTRIBUTE, "McpServer/other/x")]);
        let e = plan_introspection_client("acme", Some(&live), &want_client(), String::new)
            .unwrap_err();
        assert_eq!(e.reason(), "ClientIdConflict");
        assert!(e.to_string().contains("(owner: McpServer/other/x)"), "{e}");
        live.attributes = None;
        let e = plan_introspection_client("acme", Some(&live), &want_client(), String::new)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ClientIdConflict: a Keycloak client mcp.team.weather already exists in realm acme and is not managed by this McpServer"
        );
    }

    // ---- client profiles and policies ----

    fn lists(with_ours: bool) -> ClientPolicyLists {
        let theirs_profile = ClientProfileRepresentation {
            name: Some("corp".into()),
            ..Default::default()
        };
        let theirs_policy = ClientPolicyRepresentation {
            name: Some("corp".into()),
            profiles: Some(vec!["corp".into()]),
            ..Default::default()
        };
        let mut l = ClientPolicyLists {
            profiles: vec![theirs_profile],
            policies: vec![theirs_policy],
        };
        if with_ours {
            let (profile, policy) = user_grants_only(&[MachineGrant::Password]).unwrap();
            l.profiles.push(profile);
            l.policies.push(policy);
        }
        l
    }

    #[test]
    fn client_policy_pair_plans() {
        let (profile, policy) = user_grants_only(&[MachineGrant::Password]).unwrap();
        let name = profile.name.clone().unwrap();
        let mut edited = lists(true);
        edited.profiles[1].description = Some("edited".into());
        let mut disabled = lists(true);
        disabled.policies[1].enabled = Some(false);
        let full = lists(true);
        let bare = lists(false);
        let ours = Some((&profile, &policy));
        let profiles = |l: &ClientPolicyLists| ClientPolicyWrite::profiles(l.profiles.clone());
        let policies = |l: &ClientPolicyLists| ClientPolicyWrite::policies(l.policies.clone());
        let add = vec![profiles(&full), policies(&full)];
        let remove = vec![policies(&bare), profiles(&bare)];
        let cases = [
            ("in sync", &full, ours, vec![]),
            ("nothing wanted, nothing there", &bare, None, vec![]),
            ("new: profile first", &bare, ours, add),
            ("profile edited", &edited, ours, vec![profiles(&full)]),
            ("policy disabled", &disabled, ours, vec![policies(&full)]),
            ("removed: policy first", &full, None, remove),
        ];
        for (case, current, desired, expected) in cases {
            assert_eq!(
                plan_client_policy_pair(current, &name, desired),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn lists_follow_the_writes() {
        let (profile, policy) = user_grants_only(&[MachineGrant::Password]).unwrap();
        let name = profile.name.clone().unwrap();
        let mut current = lists(false);
        for w in plan_client_policy_pair(&current, &name, Some((&profile, &policy))) {
            current.apply(&w);
        }
        assert_eq!(current, lists(true));
        assert!(plan_client_policy_pair(&current, &name, Some((&profile, &policy))).is_empty());
    }
}
