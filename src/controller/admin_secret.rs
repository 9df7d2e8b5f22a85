//! The admin connection of a policy, read from its Secrets: credentials bound to the one
//! Keycloak and realm they belong to, and an optional CA bundle.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::Api;
use kube::ResourceExt;

use crate::admin::AdminCredentials;
use crate::api::McpAuthPolicy;
use crate::desired::digest;
use crate::{Error, Result};

/// Default realm of the admin credentials (the Secret's and the policy's `authRealm`).
pub const DEFAULT_AUTH_REALM: &str = "master";

/// What an admin client is made from.
pub struct AdminConnection {
    pub credentials: AdminCredentials,
    pub auth_realm: String,
    pub ca_bundle: Option<Vec<u8>>,
}

impl AdminConnection {
    /// Reads the policy's admin Secret (and CA bundle Secret).
    pub async fn read(client: &kube::Client, policy: &McpAuthPolicy) -> Result<Self> {
        let ns = policy.namespace().unwrap_or_default();
        let k = &policy.spec.keycloak;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let name = &k.admin_credentials_secret_ref.name;
        let secret = secrets.get_opt(name).await?.ok_or_else(|| {
            let message = format!("admin credentials Secret {ns}/{name} not found");
            Error::invalid("AdminSecretNotFound", message)
        })?;
        let data = secret.data.unwrap_or_default();
        let (credentials, auth_realm) = bound_admin_credentials(&data, policy, &ns)?;
        let ca_bundle = match &k.ca_bundle_secret_ref {
            None => None,
            Some(r) => {
                let s = secrets.get_opt(&r.name).await?;
                Some(ca_bundle(s, &r.name, &r.key, &ns)?)
            }
        };
        Ok(AdminConnection {
            credentials,
            auth_realm,
            ca_bundle,
        })
    }

    /// Equal for equal connections to `url`; a digest, so no secret is kept in the key.
    pub fn key(&self, url: &str) -> String {
        let credentials = match &self.credentials {
            AdminCredentials::Password { username, password } => {
                digest(&["pw", username, password])
            }
            AdminCredentials::ClientCredentials {
                client_id,
                client_secret,
            } => digest(&["cc", client_id, client_secret]),
        };
        let ca = self
            .ca_bundle
            .as_ref()
            .map(|c| digest(&[&String::from_utf8_lossy(c)]));
        format!(
            "{url}|{}|{credentials}|{}",
            self.auth_realm,
            ca.unwrap_or_default()
        )
    }
}

fn ca_bundle(secret: Option<Secret>, name: &str, key: &str, ns: &str) -> Result<Vec<u8>> {
    let missing = |what: String| Error::invalid("CABundleNotFound", what);
    let secret =
        secret.ok_or_else(|| missing(format!("CA bundle Secret {ns}/{name} not found")))?;
    let data = secret.data.unwrap_or_default();
    let pem = data.get(key).map(|b| b.0.clone());
    pem.ok_or_else(|| missing(format!("CA bundle Secret {ns}/{name} has no key {key}")))
}

/// The admin credentials in a Secret's `data`, and the realm they authenticate in — only if the
/// Secret names the very Keycloak (`url`) and realm (`authRealm`) the policy would send them to.
/// Someone who may edit a policy but not read the Secret could otherwise point `keycloak.url` at
/// a host of theirs (or `authRealm` at a realm whose login flow they control) and receive them.
pub fn bound_admin_credentials(
    data: &BTreeMap<String, ByteString>,
    policy: &McpAuthPolicy,
    ns: &str,
) -> Result<(AdminCredentials, String)> {
    let k = &policy.spec.keycloak;
    let secret_name = &k.admin_credentials_secret_ref.name;
    let get = |key: &str| {
        let v = data.get(key)?;
        let v = String::from_utf8_lossy(&v.0)
            .trim_end_matches('\n')
            .to_string();
        (!v.is_empty()).then_some(v)
    };
    let credentials = match (get("username"), get("password"), get("clientId"), get("clientSecret")) {
        (_, _, Some(client_id), Some(client_secret)) => AdminCredentials::ClientCredentials { client_id, client_secret },
        (Some(username), Some(password), _, _) => AdminCredentials::Password { username, password },
        _ => {
            return Err(Error::invalid(
                "AdminSecretInvalid",
                format!("Secret {ns}/{secret_name} must contain either keys username and password, or clientId and clientSecret"),
            ))
        }
    };
    let Some(bound_url) = get("url") else {
        return Err(Error::invalid(
            "AdminSecretInvalid",
            format!("Secret {ns}/{secret_name} must contain key url: the Keycloak base URL these credentials belong to (the operator sends them nowhere else)"),
        ));
    };
    let bound_url = bound_url.trim_end_matches('/');
    if bound_url != k.url.trim_end_matches('/') {
        return Err(Error::invalid(
            "AdminSecretUrlMismatch",
            format!("Secret {ns}/{secret_name} belongs to Keycloak {bound_url}, not to spec.keycloak.url {}: the credentials are not sent", k.url),
        ));
    }
    let bound_realm = get("authRealm").unwrap_or_else(|| DEFAULT_AUTH_REALM.into());
    let auth_realm = k.admin_credentials_secret_ref.auth_realm.clone();
    let auth_realm = auth_realm.unwrap_or_else(|| DEFAULT_AUTH_REALM.into());
    if bound_realm != auth_realm {
        return Err(Error::invalid(
            "AdminSecretUrlMismatch",
            format!("Secret {ns}/{secret_name} belongs to realm {bound_realm} (its authRealm key), not to adminCredentialsSecretRef.authRealm {auth_realm}: the credentials are not sent"),
        ));
    }
    Ok((credentials, auth_realm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminCredentials;

    fn policy(auth_realm: Option<&str>) -> McpAuthPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "mcpauth.dev/v1alpha1", "kind": "McpAuthPolicy",
            "metadata": {"name": "acme", "namespace": "team"},
            "spec": {
                "keycloak": {"url": "http://kc", "realm": "r",
                             "adminCredentialsSecretRef": {"name": "a", "authRealm": auth_realm}},
                "scopes": [{"name": "mcp:tools"}],
            },
        }))
        .unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        let entry = |(k, v): &(&str, &str)| (k.to_string(), ByteString(v.as_bytes().to_vec()));
        pairs.iter().map(entry).collect()
    }

    const USER: [(&str, &str); 2] = [("username", "admin"), ("password", "pw")];

    #[test]
    fn admin_credentials_go_only_to_the_keycloak_and_realm_their_secret_names() {
        let p = policy(None);
        let ok = data(&[USER[0], USER[1], ("url", "http://kc/")]);
        let (creds, realm) = bound_admin_credentials(&ok, &p, "team").unwrap();
        assert_eq!(realm, "master");
        assert!(matches!(creds, AdminCredentials::Password { .. }));
        let in_realm = policy(Some("r"));
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Pairs, &McpAuthPolicy, &str); 4] = [
            (&USER, &p, "AdminSecretInvalid"),
            (
                &[USER[0], USER[1], ("url", "http://evil")],
                &p,
                "AdminSecretUrlMismatch",
            ),
            (
                &[USER[0], USER[1], ("url", "http://kc"), ("authRealm", "r")],
                &p,
                "AdminSecretUrlMismatch",
            ),
            (
                &[USER[0], USER[1], ("url", "http://kc")],
                &in_realm,
                "AdminSecretUrlMismatch",
            ),
        ];
        for (pairs, policy, want) in cases {
            let got = bound_admin_credentials(&data(pairs), policy, "team").unwrap_err();
            assert_eq!(got.reason(), want, "{pairs:?}");
        }
        let bound = data(&[
            ("clientId", "svc"),
            ("clientSecret", "s"),
            ("url", "http://kc"),
            ("authRealm", "r"),
        ]);
        let (creds, realm) = bound_admin_credentials(&bound, &in_realm, "team").unwrap();
        assert_eq!(realm, "r");
        assert!(matches!(creds, AdminCredentials::ClientCredentials { .. }));
    }

    #[test]
    fn connections_share_a_key_only_when_everything_matches() {
        let conn = |password: &str, ca: Option<&str>| AdminConnection {
            credentials: AdminCredentials::Password {
                username: "admin".into(),
                password: password.into(),
            },
            auth_realm: "master".into(),
            ca_bundle: ca.map(|c| c.as_bytes().to_vec()),
        };
        let base = conn("pw", None).key("http://kc");
        assert_eq!(base, conn("pw", None).key("http://kc"));
        assert!(!base.contains("pw|"), "no secret in the key: {base}");
        for other in [
            conn("rotated", None).key("http://kc"),
            conn("pw", Some("pem")).key("http://kc"),
            conn("pw", None).key("http://other"),
        ] {
            assert_ne!(base, other);
        }
    }
}
