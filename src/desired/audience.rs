//! Audience modes (`McpAuthPolicy.spec.audience`): which mode a policy gets on a given Keycloak,
//! and the Keycloak objects of `ResourceIndicator` mode.
//!
//! What Keycloak 26.7.3 does with `--features=resource-indicators` (verified on the test bed,
//! `tests/it/audience.rs`):
//! - a token request with `resource=R` gets 400 `invalid_target` unless a client whose clientId
//!   is in the token's `aud` (put there by an audience mapper) has the attribute `resource_url` =
//!   R; then the access token's `aud` is exactly R. Keycloak never *adds* an audience.
//! - introspection answers `active: false` unless the introspecting client's clientId is in the
//!   token's (narrowed) `aud`.
//!
//! So in this mode the server's introspection client is named R (its url) and carries
//! `resource_url` = R, and every policy scope carries one audience mapper per server naming it.
//! A client asking for `mcp:tools` with `resource=A` gets `aud` = A only: A's client introspects
//! it, B's client gets `active: false`. Without `resource` the token names every server; the
//! gateways of this mode refuse it (they want `aud` to be exactly their url).

use keycloak::types::{ClientRepresentation, ProtocolMapperRepresentation};
use serde_json::Value;

use crate::api::{ActiveAudience, AudienceMode, McpServer};
use crate::Error;

/// The client attribute Keycloak's resource-indicator check compares `resource` with.
pub const RESOURCE_URL_ATTRIBUTE: &str = "resource_url";
/// The feature's name in `GET /admin/serverinfo`'s `profileInfo`.
const FEATURE: &str = "RESOURCE_INDICATORS";
/// The first release that ships the feature (its package is in 26.6's javadocs).
const FIRST_RELEASE: (u32, u32) = (26, 6);

/// Whether `GET /admin/serverinfo` says `resource-indicators` is on. `disabledFeatures` lists
/// every feature this Keycloak knows and runs without, so the feature is on when it is not there
/// and this Keycloak knows it: listed as experimental or preview (26.7.3 lists it as
/// experimental), or a release that ships it. The realm's discovery document says nothing.
pub fn resource_indicators_enabled(server_info: &Value) -> bool {
    let profile = &server_info["profileInfo"];
    let listed = |key: &str| {
        profile[key]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == FEATURE))
    };
    let version = server_info["systemInfo"]["version"].as_str().unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let release = (parts.next().flatten(), parts.next().flatten());
    let ships = matches!(release, (Some(major), Some(minor)) if (major, minor) >= FIRST_RELEASE);
    let known = listed("experimentalFeatures") || listed("previewFeatures") || ships;
    known && !listed("disabledFeatures")
}

/// The mode a policy gets, and why (the `AudienceMode` condition).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub mode: ActiveAudience,
    pub reason: &'static str,
    pub message: String,
}

/// `requested` on a Keycloak (at `keycloak`) that has the feature or not. A request this
/// Keycloak cannot serve is an error, decided before anything is written.
pub fn choose(requested: AudienceMode, feature: bool, keycloak: &str) -> Result<Choice, Error> {
    use ActiveAudience::{ResourceIndicator as Ri, Scope};
    let on = format!("Keycloak at {keycloak} runs the resource-indicators feature");
    let off = format!("Keycloak at {keycloak} runs without the resource-indicators feature");
    let ri_how = "tokens requested with resource=<server url> carry exactly that url in aud";
    let scope_how =
        "tokens name a server when the client requests its scope mcp:server:{namespace}:{name}";
    let (mode, reason, message) = match (requested, feature) {
        (AudienceMode::Auto, true) => (Ri, "ResourceIndicatorsDetected", format!("{on}: {ri_how}")),
        (AudienceMode::Auto, false) => (
            Scope,
            "ResourceIndicatorsUnavailable",
            format!("{off}: {scope_how}"),
        ),
        (AudienceMode::ResourceIndicator, true) => {
            (Ri, "ResourceIndicatorRequested", format!("{on}: {ri_how}"))
        }
        (AudienceMode::Scope, false) => (Scope, "ScopeRequested", format!("{off}: {scope_how}")),
        (AudienceMode::ResourceIndicator, false) => {
            return Err(Error::invalid(
                "ResourceIndicatorsFeatureDisabled",
                format!("spec.audience is ResourceIndicator, but {off}: start it with --features=resource-indicators (or KC_FEATURES), or set spec.audience to Auto or Scope"),
            ))
        }
        (AudienceMode::Scope, true) => {
            return Err(Error::invalid(
                "ScopeBreaksResourceIndicators",
                format!("spec.audience is Scope, but {on}: it refuses (invalid_target) the resource=<server url> that MCP clients send unless that url is a client's resource_url, which Scope mode does not set up; set spec.audience to Auto or ResourceIndicator"),
            ))
        }
    };
    Ok(Choice {
        mode,
        reason,
        message,
    })
}

/// The server's Keycloak clientId in `mode`: its url in `ResourceIndicator` mode (the only
/// client Keycloak lets introspect a token narrowed to that url), else `mcp.{ns}.{name}` or the
/// spec's.
pub fn client_id(server: &McpServer, mode: ActiveAudience) -> String {
    match mode {
        ActiveAudience::Scope => server.client_id(),
        ActiveAudience::ResourceIndicator => server.canonical_url(),
    }
}

/// `ExplicitClientIdUnsupported` for a server naming its own clientId in `ResourceIndicator`
/// mode, where the clientId must be the url.
pub fn check_client_id(server: &McpServer, mode: ActiveAudience) -> Result<(), Error> {
    match (&server.spec.introspection_client.client_id, mode) {
        (Some(id), ActiveAudience::ResourceIndicator) => Err(Error::invalid(
            "ExplicitClientIdUnsupported",
            format!("spec.introspectionClient.clientId is {id}, but in ResourceIndicator mode the introspection client must be named after the url {} (Keycloak lets only that client introspect a token narrowed to the url); remove the clientId, or set the policy's spec.audience to Scope on a Keycloak without resource-indicators", server.canonical_url()),
        )),
        _ => Ok(()),
    }
}

/// The introspection client of `ResourceIndicator` mode: named after the url, with
/// `resource_url` = the url, every flow off.
pub fn resource_client(server: &McpServer) -> ClientRepresentation {
    let url = server.canonical_url();
    let mut client = super::realm::introspection_client(server);
    client.client_id = Some(url.clone());
    let attributes = client.attributes.get_or_insert_with(Default::default);
    attributes.insert(RESOURCE_URL_ATTRIBUTE.to_string(), url);
    client
}

/// Name of the server's audience mapper on each policy scope (unique per server of a realm).
pub fn mapper_name(server: &McpServer) -> String {
    format!("audience {}", server.owner_marker())
}

/// The server's audience mapper on a policy scope: every token with that scope names the
/// server's client (= its url) until `resource` narrows `aud` to one server.
pub fn policy_scope_mapper(server: &McpServer) -> ProtocolMapperRepresentation {
    super::realm::audience(
        &mapper_name(server),
        "included.client.audience",
        &server.canonical_url(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(version: &str, disabled: &[&str], experimental: &[&str]) -> Value {
        json!({"systemInfo": {"version": version},
               "profileInfo": {"disabledFeatures": disabled, "experimentalFeatures": experimental,
                               "previewFeatures": []}})
    }

    #[test]
    fn feature_detection_from_serverinfo() {
        let ri = "RESOURCE_INDICATORS";
        let cases = [
            // 26.7.3 as the test bed's two instances answer (verified).
            (info("26.7.3", &["CIMD"], &["CIMD", ri]), true),
            (info("26.7.3", &[ri], &["CIMD", ri]), false),
            // A release where it is no longer experimental: on unless disabled.
            (info("27.0.0", &[], &[]), true),
            (info("27.0.0", &[ri], &[]), false),
            // Older than the feature: unknown, so off.
            (info("26.4.1", &[], &[]), false),
            // Nothing readable: off.
            (json!({}), false),
            (info("", &[], &[]), false),
        ];
        for (i, (v, want)) in cases.iter().enumerate() {
            assert_eq!(resource_indicators_enabled(v), *want, "case {i}: {v}");
        }
    }

    #[test]
    fn mode_by_request_and_feature() {
        use ActiveAudience::{ResourceIndicator as Ri, Scope};
        let ok = [
            (AudienceMode::Auto, true, Ri, "ResourceIndicatorsDetected"),
            (
                AudienceMode::Auto,
                false,
                Scope,
                "ResourceIndicatorsUnavailable",
            ),
            (
                AudienceMode::ResourceIndicator,
                true,
                Ri,
                "ResourceIndicatorRequested",
            ),
            (AudienceMode::Scope, false, Scope, "ScopeRequested"),
        ];
        for (requested, feature, mode, reason) in ok {
            let c = choose(requested, feature, "http://kc").unwrap();
            assert_eq!(
                (c.mode, c.reason),
                (mode, reason),
                "{requested:?} {feature}"
            );
            assert!(c.message.contains("resource"), "{}", c.message);
        }
        let refused = [
            (
                AudienceMode::ResourceIndicator,
                false,
                "ResourceIndicatorsFeatureDisabled",
            ),
            (AudienceMode::Scope, true, "ScopeBreaksResourceIndicators"),
        ];
        for (requested, feature, reason) in refused {
            let e = choose(requested, feature, "http://kc").unwrap_err();
            assert_eq!(e.reason(), reason);
            assert!(e.to_string().contains("http://kc"), "{e}");
        }
    }

    fn server(client_id: Option<&str>) -> McpServer {
        serde_json::from_value(json!({
            "apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpServer",
            "metadata": {"name": "weather", "namespace": "team"},
            "spec": {"image": "img", "policyRef": {"name": "acme"}, "url": "https://w.example/mcp",
                     "introspectionClient": {"clientId": client_id}},
        }))
        .unwrap()
    }

    #[test]
    fn resource_indicator_objects() {
        let s = server(None);
        assert_eq!(client_id(&s, ActiveAudience::Scope), "mcp.team.weather");
        assert_eq!(
            client_id(&s, ActiveAudience::ResourceIndicator),
            "https://w.example/mcp"
        );
        let c = resource_client(&s);
        assert_eq!(c.client_id.as_deref(), Some("https://w.example/mcp"));
        let a = c.attributes.unwrap();
        assert_eq!(a["resource_url"], "https://w.example/mcp");
        assert_eq!(a["mcpauth.dev/owner"], "McpServer/team/weather");
        assert_eq!(
            (
                c.standard_flow_enabled,
                c.direct_access_grants_enabled,
                c.public_client
            ),
            (Some(false), Some(false), Some(false))
        );
        let m = policy_scope_mapper(&s);
        assert_eq!(m.name.as_deref(), Some("audience McpServer/team/weather"));
        let config = m.config.unwrap();
        assert_eq!(config["included.client.audience"], "https://w.example/mcp");
        assert_eq!(config["access.token.claim"], "true");
    }

    #[test]
    fn explicit_client_id_only_in_scope_mode() {
        let named = server(Some("weather-introspector"));
        assert!(check_client_id(&named, ActiveAudience::Scope).is_ok());
        let e = check_client_id(&named, ActiveAudience::ResourceIndicator).unwrap_err();
        assert_eq!(e.reason(), "ExplicitClientIdUnsupported");
        assert!(check_client_id(&server(None), ActiveAudience::ResourceIndicator).is_ok());
    }
}
