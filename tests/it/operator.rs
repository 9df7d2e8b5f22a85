//! The operator against the test bed's real kube-apiserver and Keycloak (issue 3 acceptance).

use crate::harness;
use crate::support;

use std::time::Duration;

use harness::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams};
use kube::Client;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};

fn rv<K: kube::Resource>(o: &K) -> String {
    o.meta().resource_version.clone().unwrap_or_default()
}

/// The resourceVersion of `ns/name`.
async fn version<K: Kind>(client: &Client, ns: &str, name: &str) -> String {
    rv(&Api::<K>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_converges_and_every_keycloak_object_is_right() {
    let s = Scenario::new("seed").await;
    s.seed(&[("weather", "http://localhost:3000")]).await;
    let r = &s.realm;

    // Policy: scope with its attributes, as realm default.
    let scope = r.scope("mcp:tools").await.expect("mcp:tools scope");
    assert_eq!(scope["attributes"]["include.in.token.scope"], "true");
    assert_eq!(scope["attributes"]["consent.screen.text"], "Use MCP tools");
    let defaults = r.get("/default-default-client-scopes").await;
    assert!(
        defaults
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "mcp:tools"),
        "mcp:tools is not a realm default: {defaults}"
    );

    // DCR: the existing anonymous components updated in place, exactly one of each.
    let trusted = r.anonymous_components("trusted-hosts").await;
    assert_eq!(trusted.len(), 1, "one Trusted Hosts component: {trusted:?}");
    let mut hosts: Vec<String> =
        serde_json::from_value(trusted[0]["config"]["trusted-hosts"].clone()).unwrap();
    hosts.sort();
    assert_eq!(
        hosts,
        vec![
            "127.0.0.1",
            "code.visualstudio.com",
            "insiders.vscode.dev",
            "localhost",
            "vscode.dev"
        ]
    );
    assert_eq!(
        trusted[0]["config"]["host-sending-registration-request-must-match"],
        json!(["false"])
    );
    assert_eq!(
        trusted[0]["config"]["client-uris-must-match"],
        json!(["true"])
    );
    let allowed = r.anonymous_components("allowed-client-templates").await;
    assert_eq!(allowed.len(), 1);
    assert!(allowed[0]["config"]["allowed-client-scopes"]
        .as_array()
        .unwrap()
        .contains(&json!("mcp:tools")));
    let max = r.anonymous_components("max-clients").await;
    assert_eq!(max[0]["config"]["max-clients"], json!(["100"]));

    // Server: audience scope + mapper (realm optional), confidential client with every flow off.
    let aud_scope_name = format!("mcp:server:{}:weather", s.ns);
    let aud = r.scope(&aud_scope_name).await.expect("audience scope");
    let mappers = aud["protocolMappers"].as_array().unwrap();
    let mapper = mappers
        .iter()
        .find(|m| m["name"] == "mcp-audience")
        .expect("audience mapper");
    assert_eq!(mapper["protocolMapper"], "oidc-audience-mapper");
    assert_eq!(
        mapper["config"]["included.custom.audience"],
        "http://localhost:3000"
    );
    let intro_mapper = mappers
        .iter()
        .find(|m| m["name"] == "mcp-introspection-audience")
        .expect("introspection audience mapper");
    assert_eq!(
        intro_mapper["config"]["included.client.audience"],
        format!("mcp.{}.weather", s.ns)
    );
    let optionals = r.get("/default-optional-client-scopes").await;
    assert!(optionals
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["name"] == aud_scope_name.as_str()));
    let client_id = format!("mcp.{}.weather", s.ns);
    let kc_client = r.client(&client_id).await.expect("introspection client");
    assert_eq!(kc_client["publicClient"], false);
    assert_eq!(kc_client["standardFlowEnabled"], false);
    assert_eq!(kc_client["directAccessGrantsEnabled"], false);
    assert_eq!(kc_client["serviceAccountsEnabled"], false);
    assert_eq!(
        kc_client["attributes"]["mcpauth.dev/owner"],
        format!("McpServer/{}/weather", s.ns)
    );
    // No client scopes: it only introspects (below), and would otherwise get every server's
    // audience scope, the realm's optional scopes, as one more of its own.
    for list in ["defaultClientScopes", "optionalClientScopes"] {
        assert_eq!(kc_client[list], json!([]), "{list}: {kc_client}");
    }

    // Secret = Keycloak's secret; the Deployment references it, never inlines it.
    let secret = secret_value(&s.client, &s.ns, "weather-oauth", "client-secret")
        .await
        .expect("secret");
    let uuid = kc_client["id"].as_str().unwrap();
    let kc_secret = r.get(&format!("/clients/{uuid}/client-secret")).await;
    assert_eq!(kc_secret["value"], secret.as_str());
    let dep = Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
        .get("weather")
        .await
        .unwrap();
    assert!(
        !serde_json::to_string(&dep).unwrap().contains(&secret),
        "the secret leaked into the Deployment"
    );
    let svc = Api::<Service>::namespaced(s.client.clone(), &s.ns)
        .get("weather")
        .await
        .unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 3000);

    // A token minted for the server: right audience, and the Secret's credentials introspect it.
    let tok = r
        .mint_token(&format!("openid mcp:tools {aud_scope_name}"))
        .await;
    let access = tok["access_token"].as_str().unwrap();
    assert!(audiences(&jwt_claims(access)).contains(&"http://localhost:3000".to_string()));
    let (status, intro) = r.introspect(&client_id, &secret, access).await;
    assert_eq!(status, 200);
    assert_eq!(intro["active"], true, "{intro}");
    assert!(
        audiences(&intro).contains(&"http://localhost:3000".to_string()),
        "{intro}"
    );
    assert!(intro["scope"]
        .as_str()
        .unwrap()
        .split(' ')
        .any(|x| x == "mcp:tools"));

    // Status reports what a user needs.
    let srv = Api::<McpServer>::namespaced(s.client.clone(), &s.ns)
        .get("weather")
        .await
        .unwrap();
    let st = srv.status.unwrap();
    assert_eq!(st.url.as_deref(), Some("http://localhost:3000"));
    assert_eq!(st.client_id.as_deref(), Some(client_id.as_str()));
    assert_eq!(st.observed_generation, srv.metadata.generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_resync_writes_nothing_to_keycloak_or_kubernetes() {
    let s = Scenario::new("steady").await;
    s.seed(&[("weather", "http://localhost:3000")]).await;
    // Let the first resyncs after Ready settle (status writes, deployment status updates).
    tokio::time::sleep(Duration::from_secs(8)).await;

    let kc_writes = s.op().keycloak_writes();
    let kc_reads = s.op().ctx.metrics.keycloak_reads();
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let versions = |c: Client, ns: String| async move {
        vec![
            version::<Deployment>(&c, &ns, "weather").await,
            version::<Service>(&c, &ns, "weather").await,
            version::<Secret>(&c, &ns, "weather-oauth").await,
            version::<McpServer>(&c, &ns, "weather").await,
            version::<McpAuthPolicy>(&c, &ns, "acme").await,
        ]
    };
    let before = versions(s.client.clone(), s.ns.clone()).await;
    // Several resync periods (3 s each).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = versions(s.client.clone(), s.ns.clone()).await;
    let reads = s.op().ctx.metrics.keycloak_reads() - kc_reads;
    println!(
        "steady state over 10 s: keycloak writes {}, reads {reads}",
        s.op().keycloak_writes() - kc_writes
    );
    assert!(
        reads > 0,
        "no resync happened (no Keycloak reads), so the test proves nothing"
    );
    assert_eq!(
        s.op().keycloak_writes(),
        kc_writes,
        "a resync of unchanged resources wrote to Keycloak"
    );
    assert_eq!(
        before, after,
        "a resync of unchanged resources wrote to Kubernetes (resourceVersions moved)"
    );
    // One admin login serves many requests (tokens live 60 s here; refreshed shortly before expiry).
    let logins = s.op().ctx.metrics.admin_token_refreshes.get();
    let total = s.op().ctx.metrics.keycloak_reads() + s.op().keycloak_writes();
    println!("admin logins {logins} for {total} admin requests");
    assert!(
        logins <= 3,
        "{logins} admin logins for {total} requests: the token is not reused"
    );
    let _ = deployments;
}

/// Keycloak requests the server reconciler made for `operation` so far.
fn server_requests(s: &Scenario, method: &'static str, operation: &str) -> u64 {
    let labels = mcp_keycloak_operator::metrics::KeycloakOperationLabels {
        controller: "mcpserver",
        method,
        operation: operation.into(),
    };
    s.op()
        .ctx
        .metrics
        .keycloak_operations
        .get_or_create(&labels)
        .get()
}

/// At steady state the servers' audience scopes are confirmed from the realm's shared scope
/// list, not read one by one; a scope edited by hand is still read again and repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_scopes_are_confirmed_from_the_shared_list_and_drift_still_repaired() {
    let s = Scenario::new("shared").await;
    let urls = [
        "http://localhost:3001",
        "http://localhost:3002",
        "http://localhost:3003",
    ];
    s.seed(&[("a", urls[0]), ("b", urls[1]), ("c", urls[2])])
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    let count = |op| server_requests(&s, "GET", op);
    let (checks, by_id, lists) = (
        count("find client"),
        count("read client scope"),
        count("list client scopes"),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let checks = count("find client") - checks;
    let by_id = count("read client scope") - by_id;
    let lists = count("list client scopes") - lists;
    println!("steady state over 10 s: {checks} client reads, {by_id} scope reads by id, {lists} scope-list reads");
    assert!(
        checks >= 6,
        "the servers' resyncs checked Keycloak ({checks} client reads)"
    );
    assert_eq!(by_id, 0, "an audience scope in sync was read by id");

    // By hand: the description of b's audience scope. Read again by id, and put back.
    let r = &s.realm;
    let name = format!("mcp:server:{}:b", s.ns);
    let mut scope = r.scope(&name).await.unwrap();
    let wanted = scope["description"].clone();
    scope["description"] = json!("edited by hand");
    let id = scope["id"].as_str().unwrap().to_string();
    let (st, _) =
        r.kc.put(&r.path(&format!("/client-scopes/{id}")), &scope)
            .await;
    assert!(st.is_success());
    support::wait_for("audience scope description restored", WAIT, || async {
        (r.scope(&name).await?["description"] == wanted).then_some(())
    })
    .await;
    assert!(
        count("read client scope") > 0,
        "the edited scope was read again by id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_deleted_children_are_recreated_and_deletion_cleans_keycloak() {
    let s = Scenario::new("drift").await;
    s.seed(&[("weather", "http://localhost:3000")]).await;
    let r = &s.realm;
    let aud_scope_name = format!("mcp:server:{}:weather", s.ns);

    // Behind the operator's back: delete the audience mapper and empty the trusted hosts.
    let aud = r.scope(&aud_scope_name).await.unwrap();
    let scope_id = aud["id"].as_str().unwrap().to_string();
    let mapper_id = aud["protocolMappers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "mcp-audience")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) =
        r.kc.delete(&r.path(&format!(
            "/client-scopes/{scope_id}/protocol-mappers/models/{mapper_id}"
        )))
        .await;
    assert!(st.is_success());
    let mut trusted = r.anonymous_components("trusted-hosts").await.remove(0);
    trusted["config"]["trusted-hosts"] = json!([]);
    let (st, _) =
        r.kc.put(
            &r.path(&format!("/components/{}", trusted["id"].as_str().unwrap())),
            &trusted,
        )
        .await;
    assert!(st.is_success());

    support::wait_for("audience mapper restored", WAIT, || async {
        let aud = r.scope(&aud_scope_name).await?;
        aud["protocolMappers"]
            .as_array()?
            .iter()
            .any(|m| m["config"]["included.custom.audience"] == "http://localhost:3000")
            .then_some(())
    })
    .await;
    support::wait_for("trusted hosts restored", WAIT, || async {
        let t = r.anonymous_components("trusted-hosts").await;
        (t[0]["config"]["trusted-hosts"].as_array()?.len() == 5).then_some(())
    })
    .await;

    // Deleted Deployment and Secret come back; the secret value is Keycloak's, unchanged.
    let secret_before = secret_value(&s.client, &s.ns, "weather-oauth", "client-secret")
        .await
        .unwrap();
    Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
        .delete("weather", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Secret>::namespaced(s.client.clone(), &s.ns)
        .delete("weather-oauth", &DeleteParams::default())
        .await
        .unwrap();
    support::wait_for("Deployment recreated", WAIT, || async {
        let d = Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
            .get_opt("weather")
            .await
            .ok()??;
        d.metadata.deletion_timestamp.is_none().then_some(())
    })
    .await;
    let secret_after = support::wait_for("Secret recreated", WAIT, || {
        secret_value(&s.client, &s.ns, "weather-oauth", "client-secret")
    })
    .await;
    assert_eq!(secret_before, secret_after);

    // A secret rotated in Keycloak reaches the Secret and rolls the pods (config-hash annotation).
    let hash = |d: Deployment| {
        d.spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("mcpauth.dev/config-hash").cloned())
    };
    let hash_before = hash(
        Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
            .get("weather")
            .await
            .unwrap(),
    );
    let kc_client = r.client(&format!("mcp.{}.weather", s.ns)).await.unwrap();
    let (st, rotated) =
        r.kc.post(
            &r.path(&format!(
                "/clients/{}/client-secret",
                kc_client["id"].as_str().unwrap()
            )),
            &json!({}),
        )
        .await;
    assert!(st.is_success(), "{rotated}");
    let rotated = rotated["value"].as_str().unwrap().to_string();
    support::wait_for("rotated secret in the Secret", WAIT, || async {
        (secret_value(&s.client, &s.ns, "weather-oauth", "client-secret").await? == rotated)
            .then_some(())
    })
    .await;
    support::wait_for("pods rolled", WAIT, || async {
        let h = hash(
            Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
                .get("weather")
                .await
                .ok()?,
        );
        (h.is_some() && h != hash_before).then_some(())
    })
    .await;

    // Deleting the McpServer removes its Keycloak client and audience scope.
    let client_id = format!("mcp.{}.weather", s.ns);
    s.delete::<McpServer>("weather").await;
    assert!(
        r.client(&client_id).await.is_none(),
        "Keycloak client survived deletion"
    );
    assert!(
        r.scope(&aud_scope_name).await.is_none(),
        "audience scope survived deletion"
    );

    // Then the policy: its scope goes, registration is closed again.
    s.delete::<McpAuthPolicy>("acme").await;
    assert!(
        r.scope("mcp:tools").await.is_none(),
        "policy scope survived deletion"
    );
    let t = r.anonymous_components("trusted-hosts").await;
    assert_eq!(
        t[0]["config"]["trusted-hosts"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_server_is_not_in_the_audience_of_another() {
    let s = Scenario::new("audience").await;
    s.seed(&[
        ("alpha", "http://alpha.example.com/mcp"),
        ("beta", "http://beta.example.com/mcp"),
    ])
    .await;
    let r = &s.realm;
    let tok = r
        .mint_token(&format!("openid mcp:tools mcp:server:{}:alpha", s.ns))
        .await;
    let access = tok["access_token"].as_str().unwrap();
    let aud = audiences(&jwt_claims(access));
    assert!(
        aud.contains(&"http://alpha.example.com/mcp".to_string()),
        "{aud:?}"
    );
    assert!(
        !aud.contains(&"http://beta.example.com/mcp".to_string()),
        "token for alpha carries beta's audience: {aud:?}"
    );

    // Alpha's credentials introspect it; beta's get `active: false` (beta's introspection client
    // is not in the token's audience, and Keycloak refuses to describe it to beta).
    let (_, intro) = s.introspect_as("alpha", access).await;
    assert_eq!(intro["active"], true, "{intro}");
    let (status, intro) = s.introspect_as("beta", access).await;
    assert_eq!(status, 200);
    assert_eq!(
        intro["active"], false,
        "beta may introspect alpha's token: {intro}"
    );
}

/// VS Code's real DCR payload (microsoft/vscode src/vs/base/common/oauth.ts).
fn vscode_registration(redirects: &[&str]) -> Value {
    json!({
        "client_name": "Visual Studio Code",
        "client_uri": "https://code.visualstudio.com",
        "grant_types": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"],
        "response_types": ["code"],
        "redirect_uris": redirects,
        "token_endpoint_auth_method": "none",
        "application_type": "native"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_registration_is_accepted_and_untrusted_redirects_are_refused() {
    let s = Scenario::new("dcr").await;
    s.seed(&[("weather", "http://localhost:3000")]).await;
    let policy = Api::<McpAuthPolicy>::namespaced(s.client.clone(), &s.ns)
        .get("acme")
        .await
        .unwrap();
    let endpoint = policy
        .status
        .unwrap()
        .registration_endpoint
        .expect("registration endpoint in status");
    let http = reqwest::Client::new();

    let ok = http
        .post(&endpoint)
        .json(&vscode_registration(&[
            "https://insiders.vscode.dev/redirect",
            "https://vscode.dev/redirect",
            "http://127.0.0.1/",
            "http://127.0.0.1:33418/",
        ]))
        .send()
        .await
        .unwrap();
    let status = ok.status();
    let body: Value = ok.json().await.unwrap();
    assert_eq!(
        status.as_u16(),
        201,
        "VS Code's registration was refused: {body}"
    );
    let generated = body["client_id"].as_str().unwrap().to_string();
    assert!(
        s.realm.client(&generated).await.is_some(),
        "registered client not visible via the Admin API"
    );

    let bad = http
        .post(&endpoint)
        .json(&vscode_registration(&["https://evil.example.net/callback"]))
        .send()
        .await
        .unwrap();
    let status = bad.status().as_u16();
    let text = bad.text().await.unwrap();
    assert_eq!(status, 403, "untrusted redirect host accepted: {text}");
    assert!(text.contains("Trusted Hosts"), "{text}");
}
