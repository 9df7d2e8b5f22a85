//! Log hygiene: the operator and the auth gateway run as real processes with `RUST_LOG=debug`
//! (every crate, kube and HTTP stacks included) through a scenario that handles every secret the
//! product touches — admin password, wrong admin passwords and client secrets, introspection
//! client secrets (created, rotated in Keycloak, re-used after the client is deleted), access,
//! refresh and ID tokens minted in the test, valid, foreign, tampered and garbage bearer tokens
//! at the gateway. Every log line, every Kubernetes Event of the namespace and every status
//! message is scanned for each of those values, and for anything shaped like a JWT (which also
//! covers the operator's own admin tokens, which the test never sees). One match fails the test.

use crate::harness;
use crate::stress;
use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, PostParams};
use kube::Client;
use mcp_keycloak_operator::admin::generate_secret;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};
use stress::*;

/// The gateway container's environment from a reconciled Deployment, `secretKeyRef`s resolved.
async fn gateway_env(client: &Client, ns: &str, deployment: &str) -> BTreeMap<String, String> {
    let dep = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(deployment)
        .await
        .unwrap();
    let c = dep
        .spec
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .find(|c| c.name == "gateway")
        .expect("a gateway container");
    let mut env = BTreeMap::new();
    for e in c.env.unwrap_or_default() {
        let v = match (e.value, e.value_from) {
            (Some(v), _) => v,
            (None, Some(from)) => {
                let r = from.secret_key_ref.expect("only secretKeyRef is used");
                secret_value(client, ns, &r.name, &r.key).await.unwrap()
            }
            _ => String::new(),
        };
        env.insert(e.name, v);
    }
    env
}

/// Runs `proxy` as a child process; killed on drop.
struct GatewayProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_gateway(env: &BTreeMap<String, String>, log: &Path) -> GatewayProcess {
    let (port, admin, upstream) = (free_port(), free_port(), free_port());
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mcp-keycloak-operator"))
        .arg("proxy")
        .envs(env)
        .env("MCP_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("MCP_GATEWAY_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        // Nothing listens upstream: 502 means a request got past authentication.
        .env(
            "MCP_GATEWAY_UPSTREAM",
            format!("http://127.0.0.1:{upstream}"),
        )
        .env("MCP_GATEWAY_CACHE_TTL_SECONDS", "0")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    GatewayProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// `(label, value)` pairs never to be seen; a JWT also contributes its signature alone.
fn add_secret(list: &mut Vec<(String, String)>, label: &str, value: &str) {
    assert!(value.len() >= 8, "{label}: too short to scan for");
    list.push((label.to_string(), value.to_string()));
    if let Some(sig) = value.split('.').nth(2).filter(|s| s.len() >= 16) {
        list.push((format!("{label} (signature)"), sig.to_string()));
    }
}

/// Anything that looks like a JWT (header.payload): `eyJ…` base64url JSON objects.
fn find_jwt(line: &str) -> Option<&str> {
    let start = line.find("eyJ")?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let candidate = &rest[..end];
    let parts: Vec<&str> = candidate.split('.').collect();
    (parts.len() >= 2
        && parts[0].len() >= 10
        && parts[1].starts_with("eyJ")
        && parts[1].len() >= 10)
        .then_some(candidate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_events_and_status_never_show_a_secret_or_token() {
    let s = Scenario::without_operator("loghygiene").await;
    let (client, ns, realm) = (s.client.clone(), s.ns.clone(), &s.realm);
    let tb = support::testbed().await;
    let mut secrets: Vec<(String, String)> = vec![];
    add_secret(&mut secrets, "Keycloak admin password", &tb.admin_password);

    // Admin credentials: the real ones (the scenario's), a wrong password, a wrong client secret.
    let wrong_password = format!("wrong-{}", generate_secret());
    let wrong_client_secret = format!("wrongcs-{}", generate_secret());
    add_secret(&mut secrets, "wrong admin password", &wrong_password);
    add_secret(
        &mut secrets,
        "wrong admin client secret",
        &wrong_client_secret,
    );
    for (name, data) in [
        (
            "wrong-password",
            json!({"username": tb.admin_user, "password": wrong_password, "url": tb.keycloak_url}),
        ),
        (
            "wrong-client",
            json!({"clientId": "no-such-service-account", "clientSecret": wrong_client_secret, "url": tb.keycloak_url}),
        ),
    ] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &s)
            .await
            .unwrap();
    }

    let op_log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}-operator.log"));
    let gw_log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}-gateway.log"));
    let _ = std::fs::remove_file(&op_log);
    let mut opts = OperatorOpts::new(
        env!("CARGO_BIN_EXE_mcp-keycloak-operator"),
        &tb.kubeconfig,
        &ns,
        op_log.clone(),
    );
    opts.rust_log = "debug".into();
    opts.resync_seconds = 3;
    let mut op = ChildOperator::spawn(&opts);

    create(
        &client,
        &ns,
        &seed_policy("acme", &realm.name, &tb.keycloak_url),
    )
    .await;
    for (name, secret) in [
        ("bad-password", "wrong-password"),
        ("bad-client", "wrong-client"),
    ] {
        let mut p = seed_policy(name, &realm.name, &tb.keycloak_url);
        p.spec.keycloak.admin_credentials_secret_ref.name = secret.into();
        p.spec.dynamic_client_registration = None;
        create(&client, &ns, &p).await;
    }
    s.create(&server("alpha", "acme", "http://127.0.0.1:1/alpha"))
        .await;
    let mut beta = server("beta", "acme", "http://127.0.0.1:1/beta");
    beta.spec.auth.mode = mcp_keycloak_operator::api::AuthMode::Native;
    create(&client, &ns, &beta).await;
    s.create(&server("waits", "bad-password", "http://127.0.0.1:1/waits"))
        .await;
    for name in ["alpha", "beta"] {
        wait_condition::<McpServer>(&client, &ns, name, "Ready", "True").await;
    }
    wait_reason::<McpAuthPolicy>(
        &client,
        &ns,
        "bad-password",
        "Ready",
        "InvalidAdminCredentials",
    )
    .await;
    wait_reason::<McpAuthPolicy>(
        &client,
        &ns,
        "bad-client",
        "Ready",
        "InvalidAdminCredentials",
    )
    .await;
    wait_reason::<McpServer>(&client, &ns, "waits", "Ready", "PolicyNotReady").await;
    for name in ["alpha", "beta"] {
        let s = secret_value(&client, &ns, &format!("{name}-oauth"), "client-secret")
            .await
            .unwrap();
        add_secret(&mut secrets, &format!("{name} client secret"), &s);
    }

    // Rotation in Keycloak: the operator copies the new secret into the Secret.
    let alpha = realm.client(&format!("mcp.{ns}.alpha")).await.unwrap();
    let id = alpha["id"].as_str().unwrap();
    let (st, v) = realm
        .kc
        .post(
            &realm.path(&format!("/clients/{id}/client-secret")),
            &json!({}),
        )
        .await;
    assert!(st.is_success(), "regenerate secret: {st}");
    let rotated = v["value"].as_str().unwrap().to_string();
    add_secret(&mut secrets, "alpha rotated client secret", &rotated);
    support::wait_for("rotated secret in the Secret", WAIT, || async {
        (secret_value(&client, &ns, "alpha-oauth", "client-secret").await? == rotated).then_some(())
    })
    .await;
    // Drift: beta's client deleted behind the operator's back is recreated with the same secret.
    let beta_client = realm.client(&format!("mcp.{ns}.beta")).await.unwrap();
    realm
        .kc
        .delete(&realm.path(&format!("/clients/{}", beta_client["id"].as_str().unwrap())))
        .await;
    support::wait_for("beta's client recreated", WAIT, || async {
        let c = realm.client(&format!("mcp.{ns}.beta")).await?;
        (c["id"] != beta_client["id"]).then_some(())
    })
    .await;

    // The gateway, configured like alpha's gateway container, sees good and bad tokens.
    wait_condition::<McpServer>(&client, &ns, "alpha", "Ready", "True").await;
    let env = gateway_env(&client, &ns, "alpha").await;
    assert_eq!(env["OAUTH_CLIENT_SECRET"], rotated);
    let gw = spawn_gateway(&env, &gw_log);
    let http = reqwest::Client::new();
    let health = format!("{}/.well-known/oauth-protected-resource/alpha", gw.url);
    support::wait_for("gateway up", WAIT, || async {
        http.get(&health).send().await.ok().map(|_| ())
    })
    .await;
    let (_, _, user_password) = realm.token_minter().await;
    add_secret(&mut secrets, "test user password", &user_password);
    let for_alpha = realm
        .mint_token(&format!("openid mcp:tools mcp:server:{ns}:alpha"))
        .await;
    let for_beta = realm
        .mint_token(&format!("openid mcp:tools mcp:server:{ns}:beta"))
        .await;
    for (label, t) in [("alpha", &for_alpha), ("beta", &for_beta)] {
        for kind in ["access_token", "refresh_token", "id_token"] {
            if let Some(v) = t[kind].as_str() {
                add_secret(&mut secrets, &format!("{kind} for {label}"), v);
            }
        }
    }
    let access = for_alpha["access_token"].as_str().unwrap().to_string();
    let mut tampered = access.clone();
    tampered.truncate(access.len() - 4);
    tampered.push_str("AAAA");
    let garbage = format!("garbage{}", generate_secret());
    add_secret(&mut secrets, "tampered token", &tampered);
    add_secret(&mut secrets, "garbage token", &garbage);
    let call = |token: String| {
        let http = http.clone();
        let url = format!("{}/alpha", gw.url);
        async move {
            http.post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call(access.clone()).await, 502, "valid token passes auth");
    let beta_token = for_beta["access_token"].as_str().unwrap().to_string();
    assert_eq!(call(beta_token).await, 401, "beta's token is refused");
    assert_eq!(call(tampered).await, 401);
    assert_eq!(call(garbage).await, 401);

    // Deletion with cleanup, then let a few resyncs (and the failing policies' retries) log.
    s.delete::<McpServer>("beta").await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(op.alive(), "operator exited");
    drop(gw);

    // Everything the run wrote where people read.
    let mut sources: Vec<(String, String)> = vec![];
    for (what, path) in [("operator log", &op_log), ("gateway log", &gw_log)] {
        let text = std::fs::read_to_string(path).unwrap();
        for (i, line) in text.lines().enumerate() {
            sources.push((format!("{what}:{}", i + 1), line.to_string()));
        }
    }
    let op_lines = sources
        .iter()
        .filter(|(w, _)| w.starts_with("operator"))
        .count();
    let gw_lines = sources.len() - op_lines;
    let debug_lines = sources
        .iter()
        .filter(|(_, l)| l.contains(" DEBUG "))
        .count();
    let events = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    for e in &events {
        sources.push((
            format!("event {}", e.metadata.name.clone().unwrap_or_default()),
            serde_json::to_string(e).unwrap(),
        ));
    }
    let mut statuses = 0;
    for kind in ["McpServer", "McpAuthPolicy"] {
        let ar = kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "mcpauth.dev",
            "v1alpha1",
            kind,
        ));
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        for o in api.list(&Default::default()).await.unwrap().items {
            statuses += 1;
            let status: &Value = &o.data["status"];
            sources.push((
                format!("{kind} {} status", o.metadata.name.unwrap()),
                status.to_string(),
            ));
        }
    }
    let mut leaks = vec![];
    for (where_, text) in &sources {
        for (label, value) in &secrets {
            if text.contains(value.as_str()) {
                leaks.push(format!("{label} in {where_}"));
            }
        }
        if let Some(jwt) = find_jwt(text) {
            leaks.push(format!("a JWT ({} chars) in {where_}", jwt.len()));
        }
    }
    support::figure(format_args!(
        "log hygiene: {op_lines} operator and {gw_lines} gateway log lines ({debug_lines} at DEBUG), {} events, {statuses} statuses scanned for {} secret values and any JWT: {} leaks",
        events.len(),
        secrets.len(),
        leaks.len()
    ));
    assert!(debug_lines > 100, "debug logging was not on");
    // The scan sees the material: non-secret names of the same objects do show up.
    // (The Keycloak client id from status and events, the object reference from the debug spans.)
    for canary in [
        format!("mcp.{ns}.alpha"),
        format!("McpServer.v1alpha1.mcpauth.dev/beta.{ns}"),
    ] {
        assert!(
            sources.iter().any(|(_, t)| t.contains(&canary)),
            "{canary} appears nowhere: the scan reads nothing useful"
        );
    }
    assert!(!events.is_empty(), "no events to scan");
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));

    // The scenario's clean-up runs an operator of its own.
    op.sigkill();
}
