//! RFC 9728 protected-resource metadata and the RFC 6750 `WWW-Authenticate` challenges.

use serde::Serialize;
use url::Url;

/// The resource URL, checked but kept byte-for-byte as configured (a parsed `Url` would
/// add a trailing slash to `https://host`, which clients compare exactly).
#[derive(Clone, Debug)]
pub(crate) struct Resource {
    pub raw: String,
    pub parsed: Url,
}

/// The RFC 9728 well-known path (root form).
pub const WELL_KNOWN_PRM: &str = "/.well-known/oauth-protected-resource";

/// Path suffix of the resource URL, `None` for a root resource (`https://host` or `https://host/`).
fn resource_path(resource: &Resource) -> Option<&str> {
    match resource.parsed.path() {
        "" | "/" => None,
        path => Some(path),
    }
}

/// Paths on which the gateway serves the metadata document: the path-suffixed form
/// (`/.well-known/oauth-protected-resource/mcp` for `https://host/mcp`), tried first by
/// clients, then the root form.
pub(crate) fn metadata_paths(resource: &Resource) -> Vec<String> {
    let mut paths = Vec::with_capacity(2);
    if let Some(path) = resource_path(resource) {
        paths.push(format!("{WELL_KNOWN_PRM}{path}"));
    }
    paths.push(WELL_KNOWN_PRM.to_owned());
    paths
}

/// The metadata URL advertised in `resource_metadata`: the resource's origin plus the
/// well-known path, path-suffixed when the resource has a path (RFC 9728 §3.1).
pub(crate) fn metadata_url(resource: &Resource) -> String {
    let origin = resource.parsed.origin().ascii_serialization();
    match resource_path(resource) {
        Some(path) => format!("{origin}{WELL_KNOWN_PRM}{path}"),
        None => format!("{origin}{WELL_KNOWN_PRM}"),
    }
}

/// The RFC 9728 document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    pub bearer_methods_supported: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

impl ProtectedResourceMetadata {
    pub(crate) fn new(
        resource: &Resource,
        issuer: &str,
        scopes: &[String],
        resource_name: Option<&str>,
    ) -> Self {
        Self {
            resource: resource.raw.clone(),
            authorization_servers: vec![issuer.to_owned()],
            scopes_supported: super::scopes::challenge_scopes(scopes, []),
            bearer_methods_supported: vec!["header".to_owned()],
            resource_name: resource_name.map(str::to_owned),
        }
    }
}

/// Why a request is refused with a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No bearer token was presented (401, no `error`).
    Missing,
    /// A token was presented but is unusable (401, `error="invalid_token"`).
    InvalidToken(InvalidReason),
    /// The token is valid for this resource but lacks a required scope (403).
    InsufficientScope,
}

/// Why a presented token is refused. Only logs and metrics see it: every refused token gets
/// the same [`INVALID_TOKEN_DESCRIPTION`], so answers tell nothing about a token's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Malformed,
    /// Not a JWT although the issuer (Keycloak) only issues JWTs.
    NotJwt,
    Inactive,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongTokenType,
    /// No user session (a service-account token) and the client is not listed.
    NoUserSession,
}

/// The one `error_description` of every `invalid_token` answer.
pub const INVALID_TOKEN_DESCRIPTION: &str = "The access token is not valid for this resource";

impl InvalidReason {
    /// Short label for logs and the `reason` label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotJwt => "not_jwt",
            Self::Inactive => "inactive",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::WrongTokenType => "wrong_token_type",
            Self::NoUserSession => "no_user_session",
        }
    }
}

impl Challenge {
    pub fn status(self) -> http::StatusCode {
        match self {
            Self::InsufficientScope => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// RFC 6750 error code, if any.
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Self::Missing => None,
            Self::InvalidToken(_) => Some("invalid_token"),
            Self::InsufficientScope => Some("insufficient_scope"),
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "Bearer token required",
            Self::InvalidToken(_) => INVALID_TOKEN_DESCRIPTION,
            Self::InsufficientScope => "The access token lacks a scope this resource requires",
        }
    }
}

/// Builds the `WWW-Authenticate` value:
/// `Bearer [error="…", error_description="…", ]resource_metadata="…"[, scope="…"]`.
/// `scope` is the space-separated list of the scopes the operation needs (never
/// `offline_access`) and is omitted when empty.
/// Inputs are validated at start-up to contain no `"` or `\`.
pub fn www_authenticate(challenge: Challenge, metadata_url: &str, scopes: &[String]) -> String {
    let mut value = String::from("Bearer ");
    if let Some(code) = challenge.error_code() {
        value.push_str(&format!(
            "error=\"{code}\", error_description=\"{}\", ",
            challenge.description()
        ));
    }
    value.push_str(&format!("resource_metadata=\"{metadata_url}\""));
    let scopes = super::scopes::challenge_scopes(scopes, []);
    if !scopes.is_empty() {
        value.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(raw: &str) -> Resource {
        Resource {
            raw: raw.to_owned(),
            parsed: url::Url::parse(raw).unwrap(),
        }
    }

    #[test]
    fn metadata_url_root_and_path_forms() {
        // Default ports are not repeated; explicit others are kept.
        for (resource_url, expected) in [
            (
                "https://mcp.example.com",
                "https://mcp.example.com/.well-known/oauth-protected-resource",
            ),
            (
                "https://mcp.example.com/",
                "https://mcp.example.com/.well-known/oauth-protected-resource",
            ),
            (
                "https://mcp.example.com/public/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource/public/mcp",
            ),
            (
                "http://localhost:3000/mcp",
                "http://localhost:3000/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://mcp.example.com:443/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://mcp.example.com:8443",
                "https://mcp.example.com:8443/.well-known/oauth-protected-resource",
            ),
        ] {
            assert_eq!(metadata_url(&resource(resource_url)), expected);
        }
    }

    #[test]
    fn metadata_paths_prefer_suffixed_form() {
        assert_eq!(
            metadata_paths(&resource("https://h/public/mcp")),
            vec![
                "/.well-known/oauth-protected-resource/public/mcp",
                "/.well-known/oauth-protected-resource"
            ]
        );
        assert_eq!(
            metadata_paths(&resource("https://h")),
            vec!["/.well-known/oauth-protected-resource"]
        );
    }

    #[test]
    fn metadata_document_is_exact() {
        let doc = ProtectedResourceMetadata::new(
            &resource("https://mcp.example.com"),
            "https://kc.example.com/realms/mcp",
            &["mcp:tools".to_owned()],
            None,
        );
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"resource":"https://mcp.example.com","authorization_servers":["https://kc.example.com/realms/mcp"],"scopes_supported":["mcp:tools"],"bearer_methods_supported":["header"]}"#
        );
        let doc = ProtectedResourceMetadata::new(
            &resource("https://mcp.example.com/mcp"),
            "https://kc/realms/r",
            &[],
            Some("Demo"),
        );
        assert_eq!(
            serde_json::to_value(&doc).unwrap(),
            serde_json::json!({"resource":"https://mcp.example.com/mcp",
                "authorization_servers":["https://kc/realms/r"],
                "bearer_methods_supported":["header"],"resource_name":"Demo"})
        );
    }

    #[test]
    fn challenge_strings_are_exact() {
        let m = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
        let scopes = vec!["mcp:tools".to_owned(), "mcp:prompts".to_owned()];
        assert_eq!(
            www_authenticate(Challenge::Missing, m, &scopes),
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools mcp:prompts\""
        );
        assert_eq!(
            www_authenticate(Challenge::Missing, m, &[]),
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        assert_eq!(
            www_authenticate(Challenge::InvalidToken(InvalidReason::Inactive), m, &scopes[..1]),
            "Bearer error=\"invalid_token\", error_description=\"The access token is not valid for this resource\", resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools\""
        );
        assert_eq!(
            www_authenticate(Challenge::InsufficientScope, m, &scopes[..1]),
            "Bearer error=\"insufficient_scope\", error_description=\"The access token lacks a scope this resource requires\", resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools\""
        );
        assert_eq!(Challenge::InsufficientScope.status(), 403);
        assert_eq!(
            Challenge::InvalidToken(InvalidReason::WrongAudience).status(),
            401
        );
        assert_eq!(Challenge::Missing.status(), 401);
        // No oracle: every reason gets the same description.
        for reason in [
            InvalidReason::Malformed,
            InvalidReason::NotJwt,
            InvalidReason::Inactive,
            InvalidReason::Expired,
            InvalidReason::WrongAudience,
            InvalidReason::NoUserSession,
        ] {
            assert_eq!(
                www_authenticate(Challenge::InvalidToken(reason), m, &[]),
                format!("Bearer error=\"invalid_token\", error_description=\"{INVALID_TOKEN_DESCRIPTION}\", resource_metadata=\"{m}\"")
            );
        }
    }
}
