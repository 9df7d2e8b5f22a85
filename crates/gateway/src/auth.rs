//! Pure authorization logic: bearer-token extraction, the introspection result model and
//! the audience / scope / lifetime decision.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde::Deserialize;

use super::metadata::{Challenge, InvalidReason};
use super::scopes::ScopeRules;

/// Longest bearer token the gateway accepts (larger ones are refused as malformed).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

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

/// A compact JWS (`header.payload.signature`) or JWE (five parts): base64url parts, the
/// header a JSON object (`eyJ` is base64url of `{"`). Keycloak issues JWS access tokens, so
/// anything else is refused without an introspection call.
/// One pass over the bytes: it runs on every request (a profile found three passes at 2.3 %
/// of the gateway's CPU).
pub fn is_jwt_shaped(token: &str) -> bool {
    if !token.starts_with("eyJ") {
        return false;
    }
    let (mut dots, mut part_len) = (0, 0);
    for b in token.bytes() {
        if b == b'.' {
            // The header and the payload may not be empty; the signature may (`alg: none`).
            if dots < 2 && part_len == 0 {
                return false;
            }
            (dots, part_len) = (dots + 1, 0);
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            part_len += 1;
        } else {
            return false;
        }
    }
    dots == 2 || dots == 4
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

/// `ResourceIndicator` mode: the `aud` of the JWT itself when it names exactly one audience,
/// else `None` (which no rule accepts). Keycloak's introspection answer recomputes `aud` without
/// the narrowing (every server of the realm), so only the token shows whether `resource`
/// narrowed it. Read only after introspection accepted this very token: Keycloak has checked
/// its signature and state, so its payload is Keycloak's.
pub fn narrowed_audience(token: &str) -> Option<Audience> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Claims {
        aud: Option<Audience>,
    }
    let payload = token.split('.').nth(1)?.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    match claims.aud? {
        Audience::One(aud) => Some(Audience::One(aud)),
        Audience::Many(mut auds) if auds.len() == 1 => auds.pop().map(Audience::One),
        _ => None,
    }
}

/// The RFC 7662 fields the gateway uses (others are ignored; absent ones are `None`).
#[derive(Debug, Clone, Deserialize)]
pub struct IntrospectionResponse {
    /// Whether the token is currently valid at the authorization server.
    pub active: bool,
    /// Granted scopes, space-separated.
    pub scope: Option<String>,
    /// The client the token was issued to.
    pub client_id: Option<String>,
    /// Keycloak's authorized party; used when `client_id` is absent.
    pub azp: Option<String>,
    /// The subject (user id, or the service account of a client-credentials token).
    pub sub: Option<String>,
    /// Audience: one string or a list.
    pub aud: Option<Audience>,
    /// Expiry and not-before, unix seconds (fractions and negatives are tolerated).
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    /// RFC 7662 token type hint (`Bearer` for access tokens).
    pub token_type: Option<String>,
    /// Keycloak's token type claim (`Bearer`, `Refresh`, `ID`, …).
    pub typ: Option<String>,
    /// Keycloak's user session id; absent for client-credentials (service-account) tokens.
    pub sid: Option<String>,
    /// The user session id under its pre-`sid` name (older Keycloak versions).
    pub session_state: Option<String>,
}

/// What the cache stores about one token.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenInfo {
    Inactive,
    Active(ActiveToken),
}

/// When a token may be used, in unix seconds; either bound may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Expiry.
    pub exp: Option<u64>,
    /// Not before.
    pub nbf: Option<u64>,
}

/// An active token's claims as the rules need them.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveToken {
    /// `sub`, if not empty.
    pub subject: Option<String>,
    /// `client_id`, else `azp`, if not empty.
    pub client_id: Option<String>,
    /// Granted scopes, in the order given.
    pub scopes: Vec<String>,
    /// `aud`, compared verbatim with the resource URL.
    pub audience: Option<Audience>,
    pub lifetime: Lifetime,
    /// `false` when `token_type` / `typ` name something other than a Bearer access token.
    pub bearer_type: bool,
    /// A user logged in for this token (`sid`); `false` for service-account tokens.
    pub user_session: bool,
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
        let user_session = [&r.sid, &r.session_state]
            .iter()
            .any(|s| s.as_deref().is_some_and(|s| !s.is_empty()));
        Self::Active(ActiveToken {
            user_session,
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
            lifetime: Lifetime {
                exp: secs(r.exp),
                nbf: secs(r.nbf),
            },
            bearer_type,
        })
    }
}

impl ActiveToken {
    /// Unix time `exp` as a `SystemTime`.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.lifetime
            .exp
            .map(|e| UNIX_EPOCH + Duration::from_secs(e))
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

/// What a token must satisfy for this resource.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The resource URL, required in `aud` verbatim.
    pub resource: &'a str,
    /// Scopes that must all be granted.
    pub required: &'a [String],
    /// Which scopes imply others (a broader scope satisfies a narrower requirement).
    pub hierarchy: &'a ScopeRules,
    /// Clients whose tokens may lack a user session (machine-to-machine opt-in).
    pub service_account_clients: &'a [String],
}

/// Decides on an introspection result: active, not expired, a Bearer access token, `aud`
/// containing `resource` exactly, a user session (unless the client is listed for
/// machine-to-machine use), every required scope granted.
pub fn evaluate(info: &TokenInfo, rules: &Rules<'_>, now: SystemTime) -> Decision {
    let Rules {
        resource, required, ..
    } = *rules;
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
        .lifetime
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
    if !token.user_session
        && !token
            .client_id
            .as_ref()
            .is_some_and(|c| rules.service_account_clients.contains(c))
    {
        return deny(InvalidReason::NoUserSession);
    }
    if !rules.hierarchy.satisfied(&token.scopes, required) {
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
            "exp": 1_800_000_300u64, "sub": "user-1", "client_id": "vscode", "typ": "Bearer",
            "sid": "session-1"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        parse(base)
    }

    fn ev(info: &TokenInfo, required: &[String]) -> Decision {
        let rules = Rules {
            resource: RES,
            required,
            hierarchy: &ScopeRules::default(),
            service_account_clients: &[],
        };
        evaluate(info, &rules, now())
    }

    fn req() -> Vec<String> {
        vec!["mcp:tools".to_owned()]
    }

    #[test]
    fn allows_matching_token_and_builds_identity() {
        assert_eq!(
            ev(&active(serde_json::json!({})), &req()),
            Decision::Allow(Identity {
                subject: Some("user-1".into()),
                client_id: Some("vscode".into()),
                scopes: "openid mcp:tools".into(),
            })
        );
        // azp stands in for a missing client_id.
        let info = active(serde_json::json!({"client_id": null, "azp": "inspector"}));
        let Decision::Allow(id) = ev(&info, &req()) else {
            panic!()
        };
        assert_eq!(id.client_id.as_deref(), Some("inspector"));
    }

    #[test]
    fn audience_string_or_array_must_match_exactly() {
        let ok = active(serde_json::json!({"aud": ["account", RES]}));
        assert!(matches!(ev(&ok, &req()), Decision::Allow(_)));
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
            assert_eq!(ev(&info, &req()), wrong_audience, "aud {aud}");
        }
        let mut no_aud = active(serde_json::json!({}));
        if let TokenInfo::Active(t) = &mut no_aud {
            t.audience = None;
        }
        assert_eq!(ev(&no_aud, &req()), wrong_audience);
    }

    #[test]
    fn scopes_must_all_be_granted() {
        let info = active(serde_json::json!({"scope": "openid profile"}));
        assert_eq!(
            ev(&info, &req()),
            Decision::Deny(Challenge::InsufficientScope)
        );
        // Substrings do not count.
        let info = active(serde_json::json!({"scope": "mcp:tools:read"}));
        assert_eq!(
            ev(&info, &req()),
            Decision::Deny(Challenge::InsufficientScope)
        );
        let two = vec!["mcp:tools".to_owned(), "mcp:prompts".to_owned()];
        let info = active(serde_json::json!({"scope": "mcp:prompts mcp:tools"}));
        assert!(matches!(ev(&info, &two), Decision::Allow(_)));
        let info = active(serde_json::json!({"scope": null}));
        assert!(matches!(ev(&info, &[]), Decision::Allow(_)));
    }

    #[test]
    fn inactive_expired_and_wrong_type_are_invalid() {
        let inv = |r| Decision::Deny(Challenge::InvalidToken(r));
        assert_eq!(
            ev(&parse(serde_json::json!({"active": false})), &req()),
            inv(InvalidReason::Inactive)
        );
        let expired = active(serde_json::json!({"exp": 1_800_000_000u64}));
        assert_eq!(ev(&expired, &req()), inv(InvalidReason::Expired));
        let future = active(serde_json::json!({"nbf": 1_800_000_100u64}));
        assert_eq!(ev(&future, &req()), inv(InvalidReason::NotYetValid));
        let refresh = active(serde_json::json!({"typ": "Refresh"}));
        assert_eq!(ev(&refresh, &req()), inv(InvalidReason::WrongTokenType));
        let dpop = active(serde_json::json!({"token_type": "DPoP"}));
        assert_eq!(ev(&dpop, &req()), inv(InvalidReason::WrongTokenType));
        // Wrong audience is reported before missing scopes.
        let both = active(serde_json::json!({"aud": "other", "scope": ""}));
        assert_eq!(ev(&both, &req()), inv(InvalidReason::WrongAudience));
    }

    #[test]
    fn tokens_without_a_user_session_need_a_listed_client() {
        // Keycloak's answer for a client-credentials token: no `sid`.
        let service = active(serde_json::json!({"sid": null, "client_id": "robot"}));
        let no_user = Decision::Deny(Challenge::InvalidToken(InvalidReason::NoUserSession));
        assert_eq!(ev(&service, &req()), no_user);
        let listed = ["other".to_owned(), "robot".to_owned()];
        let rules = Rules {
            resource: RES,
            required: &req(),
            hierarchy: &ScopeRules::default(),
            service_account_clients: &listed,
        };
        assert!(matches!(
            evaluate(&service, &rules, now()),
            Decision::Allow(_)
        ));
        // Listing is by exact client id; azp stands in for client_id.
        let lookalike = active(serde_json::json!({"sid": null, "client_id": "robot2"}));
        assert_eq!(evaluate(&lookalike, &rules, now()), no_user);
        let by_azp = active(serde_json::json!({"sid": "", "client_id": null, "azp": "robot"}));
        assert!(matches!(
            evaluate(&by_azp, &rules, now()),
            Decision::Allow(_)
        ));
        // The pre-`sid` claim counts as a user session too.
        let legacy = active(serde_json::json!({"sid": null, "session_state": "s-2"}));
        assert!(matches!(ev(&legacy, &req()), Decision::Allow(_)));
    }

    #[test]
    fn narrowed_audience_is_the_tokens_single_aud() {
        use base64::Engine as _;
        let jwt = |claims: serde_json::Value| {
            let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            let payload = b64(claims.to_string().as_bytes());
            format!("{}.{payload}.{}", b64(b"{\"alg\":\"RS256\"}"), b64(b"sig"))
        };
        let one = |s: &str| Some(Audience::One(s.into()));
        let cases = [
            (serde_json::json!({"aud": RES}), one(RES)),
            (serde_json::json!({"aud": [RES]}), one(RES)),
            // Not narrowed: every server of the realm, as Keycloak issues it without resource.
            (serde_json::json!({"aud": [RES, "https://other/mcp"]}), None),
            (serde_json::json!({"aud": []}), None),
            (serde_json::json!({"sub": "x"}), None),
        ];
        for (claims, want) in cases {
            assert_eq!(narrowed_audience(&jwt(claims.clone())), want, "{claims}");
        }
        assert_eq!(narrowed_audience("not-a-jwt"), None);
        assert_eq!(narrowed_audience("a.%%%.c"), None);
    }

    #[test]
    fn jwt_shape() {
        assert!(is_jwt_shaped("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_"));
        assert!(is_jwt_shaped("eyJhbGciOiJub25lIn0.eyJ4IjoxfQ."));
        assert!(is_jwt_shaped("eyJh.b.c.d.e"));
        for bad in [
            "good-token.abc_DEF-123",
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
            "eyJa.b.c.d",
            "abc.def.ghi",
            "eyJ..sig",
            "eyJa.b+/.c",
            "eyJa.b.c=",
        ] {
            assert!(!is_jwt_shaped(bad), "{bad}");
        }
    }

    /// The one-pass check answers as the plain definition does, on every short string over
    /// the characters that matter (the prefix, a part character, the dot, a foreign one).
    #[test]
    fn jwt_shape_agrees_with_its_definition() {
        let definition = |t: &str| {
            let parts: Vec<&str> = t.split('.').collect();
            (parts.len() == 3 || parts.len() == 5)
                && t.starts_with("eyJ")
                && parts.iter().all(|p| {
                    p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                && parts.iter().take(2).all(|p| !p.is_empty())
        };
        let alphabet = ['a', '.', '_', '+'];
        let mut tails = vec![String::new()];
        for _ in 0..=7 {
            for tail in &tails {
                for token in [tail.clone(), format!("eyJ{tail}")] {
                    assert_eq!(is_jwt_shaped(&token), definition(&token), "{token:?}");
                }
            }
            tails = tails
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
        }
    }
}
