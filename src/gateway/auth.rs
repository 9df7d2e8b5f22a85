//! Pure authorization logic: bearer-token extraction, the introspection result model and
//! the audience / scope / lifetime decision.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde::Deserialize;

use super::config::MAX_TOKEN_BYTES;
use super::metadata::{Challenge, InvalidReason};

/// Clock skew tolerated for `nbf`.
const NBF_LEEWAY_SECS: u64 = 30;

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No `Authorization` header, or one with another scheme (e.g. `Basic`).
    None,
    /// A `Bearer` header whose token is empty, too long or not RFC 6750 `b64token`,
    /// or several `Authorization` headers.
    Malformed,
    Bearer(&'a str),
}

/// Extracts the RFC 6750 §2.1 bearer token. Query-string and form tokens are never read.
pub fn extract_bearer(headers: &HeaderMap) -> Presented<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::None;
    };
    if values.next().is_some() {
        return Presented::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    let value = value.trim();
    let (scheme, rest) = match value.split_once(' ') {
        Some((scheme, rest)) => (scheme, rest),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Presented::None;
    }
    let token = rest.trim_start_matches(' ');
    if is_b64token(token) {
        Presented::Bearer(token)
    } else {
        Presented::Malformed
    }
}

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return false;
    }
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// `aud` as RFC 7662 allows it: a string or an array of strings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
    /// Anything else (null, numbers): contains no audience.
    Other(serde_json::Value),
}

impl Audience {
    pub fn contains(&self, wanted: &str) -> bool {
        match self {
            Self::One(aud) => aud == wanted,
            Self::Many(auds) => auds.iter().any(|a| a == wanted),
            Self::Other(_) => false,
        }
    }
}

/// The RFC 7662 fields the gateway uses (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct IntrospectionResponse {
    pub active: bool,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Keycloak's authorized party; used when `client_id` is absent.
    #[serde(default)]
    pub azp: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub exp: Option<f64>,
    #[serde(default)]
    pub nbf: Option<f64>,
    #[serde(default)]
    pub token_type: Option<String>,
    /// Keycloak's token type claim (`Bearer`, `Refresh`, `ID`, …).
    #[serde(default)]
    pub typ: Option<String>,
}

/// What the cache stores about one token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenInfo {
    Inactive,
    Active(ActiveToken),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveToken {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub audience: Option<Audience>,
    /// Expiry (unix seconds).
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    /// `false` when `token_type` / `typ` name something other than a Bearer access token.
    pub bearer_type: bool,
}

fn secs(v: Option<f64>) -> Option<u64> {
    v.filter(|v| v.is_finite()).map(|v| v.max(0.0) as u64)
}

impl From<IntrospectionResponse> for TokenInfo {
    fn from(r: IntrospectionResponse) -> Self {
        if !r.active {
            return Self::Inactive;
        }
        let is_bearer = |t: &Option<String>| {
            t.as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case("bearer"))
        };
        let bearer_type = is_bearer(&r.token_type) && is_bearer(&r.typ);
        Self::Active(ActiveToken {
            subject: r.sub.filter(|s| !s.is_empty()),
            client_id: r.client_id.or(r.azp).filter(|s| !s.is_empty()),
            scopes: r
                .scope
                .as_deref()
                .unwrap_or("")
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
            audience: r.aud,
            exp: secs(r.exp),
            nbf: secs(r.nbf),
            bearer_type,
        })
    }
}

impl ActiveToken {
    /// Unix time `exp` as a `SystemTime`.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.exp.map(|e| UNIX_EPOCH + Duration::from_secs(e))
    }
}

/// The identity forwarded upstream for an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    /// Granted scopes, space-separated.
    pub scopes: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Identity),
    Deny(Challenge),
}

/// Decides on an introspection result: active, not expired, a Bearer access token, `aud`
/// containing `resource` exactly, every required scope granted.
pub fn evaluate(
    info: &TokenInfo,
    resource: &str,
    required: &[String],
    now: SystemTime,
) -> Decision {
    let token = match info {
        TokenInfo::Inactive => return deny(InvalidReason::Inactive),
        TokenInfo::Active(token) => token,
    };
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if let Some(exp) = token.expires_at() {
        if exp <= now {
            return deny(InvalidReason::Expired);
        }
    }
    if token
        .nbf
        .is_some_and(|nbf| nbf > now_secs + NBF_LEEWAY_SECS)
    {
        return deny(InvalidReason::NotYetValid);
    }
    if !token.bearer_type {
        return deny(InvalidReason::WrongTokenType);
    }
    if !token
        .audience
        .as_ref()
        .is_some_and(|aud| aud.contains(resource))
    {
        return deny(InvalidReason::WrongAudience);
    }
    if !required.iter().all(|r| token.scopes.iter().any(|s| s == r)) {
        return Decision::Deny(Challenge::InsufficientScope);
    }
    Decision::Allow(Identity {
        subject: token.subject.clone(),
        client_id: token.client_id.clone(),
        scopes: token.scopes.join(" "),
    })
}

fn deny(reason: InvalidReason) -> Decision {
    Decision::Deny(Challenge::InvalidToken(reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const RES: &str = "https://mcp.example.com/mcp";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(extract_bearer(&headers(&[])), Presented::None);
        assert_eq!(
            extract_bearer(&headers(&["Basic dXNlcjpwdw=="])),
            Presented::None
        );
        assert_eq!(
            extract_bearer(&headers(&["Bearer abc.DEF-ghi_~+/=="])),
            Presented::Bearer("abc.DEF-ghi_~+/==")
        );
        assert_eq!(
            extract_bearer(&headers(&["bearer   tok"])),
            Presented::Bearer("tok")
        );
        assert_eq!(extract_bearer(&headers(&["Bearer"])), Presented::Malformed);
        assert_eq!(extract_bearer(&headers(&["Bearer "])), Presented::Malformed);
        assert_eq!(
            extract_bearer(&headers(&["Bearer a b"])),
            Presented::Malformed
        );
        assert_eq!(
            extract_bearer(&headers(&["Bearer a\"b"])),
            Presented::Malformed
        );
        assert_eq!(
            extract_bearer(&headers(&["Bearer ==="])),
            Presented::Malformed
        );
        assert_eq!(
            extract_bearer(&headers(&["Bearer a", "Bearer b"])),
            Presented::Malformed
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(extract_bearer(&headers(&[&long])), Presented::Malformed);
    }

    fn parse(json: serde_json::Value) -> TokenInfo {
        serde_json::from_value::<IntrospectionResponse>(json)
            .unwrap()
            .into()
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn active(extra: serde_json::Value) -> TokenInfo {
        let mut base = serde_json::json!({"active": true, "aud": RES, "scope": "openid mcp:tools",
            "exp": 1_800_000_300u64, "sub": "user-1", "client_id": "vscode", "typ": "Bearer"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        parse(base)
    }

    fn req() -> Vec<String> {
        vec!["mcp:tools".to_owned()]
    }

    #[test]
    fn allows_matching_token_and_builds_identity() {
        assert_eq!(
            evaluate(&active(serde_json::json!({})), RES, &req(), now()),
            Decision::Allow(Identity {
                subject: Some("user-1".into()),
                client_id: Some("vscode".into()),
                scopes: "openid mcp:tools".into(),
            })
        );
        // azp stands in for a missing client_id.
        let info = active(serde_json::json!({"client_id": null, "azp": "inspector"}));
        let Decision::Allow(id) = evaluate(&info, RES, &req(), now()) else {
            panic!()
        };
        assert_eq!(id.client_id.as_deref(), Some("inspector"));
    }

    #[test]
    fn audience_string_or_array_must_match_exactly() {
        let ok = active(serde_json::json!({"aud": ["account", RES]}));
        assert!(matches!(
            evaluate(&ok, RES, &req(), now()),
            Decision::Allow(_)
        ));
        let wrong_audience = Decision::Deny(Challenge::InvalidToken(InvalidReason::WrongAudience));
        for aud in [
            serde_json::json!("https://mcp.example.com/mcp/"),
            serde_json::json!("https://mcp.example.com"),
            serde_json::json!(["account"]),
            serde_json::json!([]),
            serde_json::json!(null),
            serde_json::json!(42),
        ] {
            let info = active(serde_json::json!({ "aud": aud }));
            assert_eq!(
                evaluate(&info, RES, &req(), now()),
                wrong_audience,
                "aud {aud}"
            );
        }
        let mut no_aud = active(serde_json::json!({}));
        if let TokenInfo::Active(t) = &mut no_aud {
            t.audience = None;
        }
        assert_eq!(evaluate(&no_aud, RES, &req(), now()), wrong_audience);
    }

    #[test]
    fn scopes_must_all_be_granted() {
        let info = active(serde_json::json!({"scope": "openid profile"}));
        assert_eq!(
            evaluate(&info, RES, &req(), now()),
            Decision::Deny(Challenge::InsufficientScope)
        );
        // Substrings do not count.
        let info = active(serde_json::json!({"scope": "mcp:tools:read"}));
        assert_eq!(
            evaluate(&info, RES, &req(), now()),
            Decision::Deny(Challenge::InsufficientScope)
        );
        let two = vec!["mcp:tools".to_owned(), "mcp:prompts".to_owned()];
        let info = active(serde_json::json!({"scope": "mcp:prompts mcp:tools"}));
        assert!(matches!(
            evaluate(&info, RES, &two, now()),
            Decision::Allow(_)
        ));
        let info = active(serde_json::json!({"scope": null}));
        assert!(matches!(
            evaluate(&info, RES, &[], now()),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn inactive_expired_and_wrong_type_are_invalid() {
        let inv = |r| Decision::Deny(Challenge::InvalidToken(r));
        assert_eq!(
            evaluate(
                &parse(serde_json::json!({"active": false})),
                RES,
                &req(),
                now()
            ),
            inv(InvalidReason::Inactive)
        );
        let expired = active(serde_json::json!({"exp": 1_800_000_000u64}));
        assert_eq!(
            evaluate(&expired, RES, &req(), now()),
            inv(InvalidReason::Expired)
        );
        let future = active(serde_json::json!({"nbf": 1_800_000_100u64}));
        assert_eq!(
            evaluate(&future, RES, &req(), now()),
            inv(InvalidReason::NotYetValid)
        );
        let refresh = active(serde_json::json!({"typ": "Refresh"}));
        assert_eq!(
            evaluate(&refresh, RES, &req(), now()),
            inv(InvalidReason::WrongTokenType)
        );
        let dpop = active(serde_json::json!({"token_type": "DPoP"}));
        assert_eq!(
            evaluate(&dpop, RES, &req(), now()),
            inv(InvalidReason::WrongTokenType)
        );
        // Wrong audience is reported before missing scopes.
        let both = active(serde_json::json!({"aud": "other", "scope": ""}));
        assert_eq!(
            evaluate(&both, RES, &req(), now()),
            inv(InvalidReason::WrongAudience)
        );
    }
}
