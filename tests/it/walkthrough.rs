//! The seed's walkthrough end to end (issue 5), with the McpServer's pod really running: the
//! operator reconciles the seed-style policy and server to `Ready`, the local pod runner starts
//! the reconciled Deployment's containers as processes (the operator binary as the `gateway`
//! container; npm `@modelcontextprotocol/server-everything` or `examples/native_server` as the
//! `mcp` container), and a VS Code-like client ([`browser::client::connect_like_vscode`]:
//! anonymous DCR with VS Code's body, PKCE + `resource`, headless Chromium login and consent)
//! lists and calls a tool through the McpServer's URL.
//!
//! - `proxy_mode_walkthrough`: server-everything behind the gateway, URL port → gateway port
//!   through the runner's port-forward; `native_mode_walkthrough`: the example server on its own.
//!   Both also check the negative paths: no token → 401 + `resource_metadata`; a registration
//!   with an untrusted redirect host → refused; a token minted for another McpServer → 401.
//! - `breaks_when_*`: one link broken each, and the walkthrough must fail at that link: trusted
//!   hosts emptied (registration refused), the audience mapper removed from the server's
//!   audience scope (token without the URL in `aud` → 401), the introspection secret rotated
//!   behind the pod's back (Keycloak answers 401 → gateway 503 / native server 401). These run
//!   the operator with a one-hour resync so it does not repair the break mid-test.
//!
//! Pods with a gateway bind its fixed ports 8080/9090 on this host, so they take turns
//! ([`GATEWAY_PORTS`]); every test picks free ports for `spec.port` and the URL.
//! Needs the test bed, Debian's `chromium` + `chromium-driver`, Node.js + npm, and the
//! `native_server` example built (`cargo test` builds examples; with `--test walkthrough` alone
//! run `cargo build --example native_server` first). Container logs: `target/debug/walkthrough-logs/`.

use crate::browser;
use crate::harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::client::{
    assert_authorized_like_vscode, assert_vscode_client_registered, connect_like_vscode,
    path_metadata_url, probe_unauthenticated, probe_with_token, register_anonymously, result_text,
    vscode_registration_request, ConnectedClient,
};
use browser::{Browser, Error};
use harness::*;
use kube::api::Api;
use localpod::cluster::{start_server_pod, LocalServer, RunOptions};
use localpod::images::{
    default_image_map, ensure_server_everything, native_example_image, npm_dir, operator_command,
    LocalBinaries, SERVER_EVERYTHING_IMAGE,
};
use localpod::{ImageMap, RunnerError};
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};
use tokio::sync::MutexGuard;

/// The realm user who logs in (not `alice`: the harness's token minter owns that name).
const USER: &str = "dana";
const PASSWORD: &str = "dana-walkthrough-password-1";
const SERVER: &str = "calc";
const OTHER: &str = "other";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Proxy,
    Native,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Proxy => "Proxy",
            Mode::Native => "Native",
        }
    }

    /// The tool call of the walkthrough and the text it must return.
    fn tool_call(self) -> (&'static str, Value, &'static str) {
        match self {
            Mode::Proxy => (
                "echo",
                json!({"message": "hello through the gateway"}),
                "Echo: hello through the gateway",
            ),
            Mode::Native => ("add", json!({"a": 2, "b": 40}), "42"),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A seed-style McpServer: server-everything behind the gateway, or the native example.
fn mcp_server(name: &str, mode: Mode, port: u16, url: &str) -> McpServer {
    let image = match mode {
        Mode::Proxy => SERVER_EVERYTHING_IMAGE.to_string(),
        Mode::Native => native_example_image(),
    };
    serde_json::from_value(json!({
        "apiVersion": "mcpauth.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "port": port,
            "url": url,
            "policyRef": {"name": "acme"},
            "scopes": ["mcp:tools"],
            "auth": {"mode": mode.name()}
        }
    }))
    .unwrap()
}

/// `target/<profile>/` of this test binary.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// The default image map, plus the image name the harness's operator gives gateways.
pub(crate) async fn images() -> ImageMap {
    let script = tokio::task::spawn_blocking(|| ensure_server_everything(&npm_dir()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_mcp-keycloak-operator"));
    let native = profile_dir().join("examples/native_server");
    assert!(
        native.exists(),
        "{} is missing: run `cargo build --example native_server` (plain `cargo test` builds it)",
        native.display()
    );
    default_image_map(&LocalBinaries {
        operator: operator.clone(),
        native_example: Some(native),
        server_everything_script: Some(script),
    })
    .with("mcp-keycloak-operator:test", operator_command(&operator))
}

/// The tests `$proxy` and `$native`: `$run(mode, "$prefix-<mode>")` in each mode.
macro_rules! both_modes {
    ($run:ident, $proxy:ident, $native:ident, $prefix:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $proxy() {
            $run(Mode::Proxy, concat!($prefix, "-proxy")).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $native() {
            $run(Mode::Native, concat!($prefix, "-native")).await;
        }
    };
}

/// One walkthrough's world: namespace, realm, operator, policy `acme`, server `calc` Ready,
/// and the realm user.
struct Walk {
    mode: Mode,
    s: Scenario,
    policy: McpAuthPolicy,
    server: McpServer,
    url: String,
    user_id: String,
    t0: Instant,
}

impl Walk {
    /// `other`: a second McpServer in the same realm (no pod), for the cross-server token check.
    async fn setup(prefix: &str, mode: Mode, resync: Duration, other: bool) -> Walk {
        let t0 = Instant::now();
        let s = Scenario::with_resync(prefix, resync).await;
        let (client, ns) = (s.client.clone(), s.ns.clone());
        s.create(&s.seed_policy().await).await;
        // Proxy: the URL's port is forwarded to the gateway; the MCP container has its own port.
        // Native: the example server listens on the URL's port itself.
        let port = free_port();
        let url_port = match mode {
            Mode::Proxy => free_port(),
            Mode::Native => port,
        };
        let url = format!("http://127.0.0.1:{url_port}/mcp");
        create(&client, &ns, &mcp_server(SERVER, mode, port, &url)).await;
        if other {
            let other_url = format!("http://127.0.0.1:{}/mcp", free_port());
            create(
                &client,
                &ns,
                &mcp_server(OTHER, mode, free_port(), &other_url),
            )
            .await;
        }
        wait_condition::<McpAuthPolicy>(&client, &ns, "acme", "Ready", "True").await;
        wait_condition::<McpServer>(&client, &ns, SERVER, "Ready", "True").await;
        if other {
            wait_condition::<McpServer>(&client, &ns, OTHER, "Ready", "True").await;
        }
        let policy = Api::<McpAuthPolicy>::namespaced(client.clone(), &ns)
            .get("acme")
            .await
            .unwrap();
        let server = Api::<McpServer>::namespaced(client.clone(), &ns)
            .get(SERVER)
            .await
            .unwrap();
        let user_id = s.realm.create_user(USER, PASSWORD).await;
        Walk {
            mode,
            s,
            policy,
            server,
            url,
            user_id,
            t0,
        }
    }

    fn audience_scope(&self) -> String {
        self.server
            .status
            .as_ref()
            .and_then(|s| s.audience_scope.clone())
            .expect("status.audienceScope")
    }

    /// The pod of `calc`, run by the local pod runner; with a gateway, one at a time.
    async fn start_pod(&self) -> Pod {
        let guard = match self.mode {
            Mode::Proxy => Some(GATEWAY_PORTS.lock().await),
            Mode::Native => None,
        };
        let images = images().await;
        let log_dir = profile_dir().join("walkthrough-logs").join(&self.ns);
        // A process outside this test binary may hold a port for a while (another engineer's
        // pod, a demo): wait for it, then let the runner's own check speak.
        let options = RunOptions::new(&log_dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match start_server_pod(&self.client, &self.ns, SERVER, &images, &options).await {
                Ok(server) => {
                    assert_eq!(
                        server.url, self.url,
                        "the runner serves the McpServer's URL"
                    );
                    eprintln!(
                        "walkthrough [{}]: pod running {:?}, forwards {:?}, logs in {}",
                        self.mode.name(),
                        server.pod.pids(),
                        server
                            .forwards
                            .iter()
                            .map(|f| format!("{} → {}", f.listen, f.target))
                            .collect::<Vec<_>>(),
                        log_dir.display()
                    );
                    return Pod {
                        server: Some(server),
                        _guard: guard,
                    };
                }
                Err(RunnerError::PortBusy { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("starting the pod of {}/{SERVER}: {e}", self.ns),
            }
        }
    }

    /// Stops the operator so that a break in Keycloak holds until the test ends: any reconcile
    /// (the Deployment turning available, a verification verdict changing) repairs it.
    fn stop_operator(&mut self) {
        self.s.stop_operator();
    }

    /// Mints a token (password grant of the harness's test client) carrying `scope`.
    async fn token_for_scope(&self, scope: &str) -> String {
        self.realm.mint_token(scope).await["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Cleans up (the scenario), then reports the whole test's time.
    async fn finish(self) {
        let Walk { s, mode, t0, .. } = self;
        drop(s);
        eprintln!(
            "walkthrough [{}]: whole test incl. teardown {:?}",
            mode.name(),
            t0.elapsed()
        );
    }
}

harness::deref_scenario!(Walk, s);

struct Pod {
    server: Option<LocalServer>,
    _guard: Option<MutexGuard<'static, ()>>,
}

impl Pod {
    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// What a successful walkthrough produced.
struct Outcome {
    conn: ConnectedClient,
    tools: Vec<String>,
    text: String,
}

/// The walkthrough as a user lives it: add the URL in "VS Code", register, log in, consent,
/// list the tools, call one, get the expected answer. Fails at the first broken link.
async fn walkthrough(w: &Walk, browser: &Browser) -> Result<Outcome, Error> {
    let conn = connect_like_vscode(&w.url, browser, (USER, PASSWORD)).await?;
    let tools = conn.tool_names().await?;
    let (tool, args, expected) = w.mode.tool_call();
    let result = conn.call_tool(tool, args).await?;
    let text = result_text(&result);
    if result.is_error == Some(true) || text != expected {
        return Err(Error::new(
            "result",
            format!(
                "{tool} answered {text:?} (is_error {:?}), expected {expected:?}",
                result.is_error
            ),
        ));
    }
    Ok(Outcome { conn, tools, text })
}

/// Everything a successful walkthrough must show, in either mode.
async fn check_success(w: &Walk, o: &Outcome) {
    let conn = &o.conn;
    match w.mode {
        Mode::Proxy => {
            for t in ["echo", "get-sum"] {
                assert!(o.tools.iter().any(|n| n == t), "tools {:?}", o.tools);
            }
            // The MCP container behind the gateway never sees the introspection credentials.
            let env = conn.call_tool("get-env", json!({})).await.expect("get-env");
            let env = result_text(&env);
            assert!(env.contains("MCP_SERVER_URL"), "get-env: {env}");
            assert!(
                !env.contains("OAUTH_CLIENT_SECRET"),
                "the MCP container got the secret"
            );
        }
        Mode::Native => {
            assert_eq!(o.tools, vec!["add", "echo", "whoami"]);
            // The server's identity for the call is the introspected token's.
            let who = conn.call_tool("whoami", json!({})).await.expect("whoami");
            let who: Value = serde_json::from_str(&result_text(&who)).expect("whoami JSON");
            assert_eq!(who["sub"], w.user_id.as_str());
            assert_eq!(who["client_id"], conn.client_id.as_str());
        }
    }
    let (_, _, expected) = w.mode.tool_call();
    assert_eq!(o.text, expected);

    // Discovery, the authorization request and the consent page for "Use MCP tools".
    let audience_scope = w.audience_scope();
    assert_authorized_like_vscode(conn, &w.url, &w.policy.issuer(), &audience_scope);
    // The token: for this URL, issued to the DCR client, for the user.
    let aud = audiences(&conn.token_claims);
    assert!(aud.contains(&w.url), "aud {aud:?}");
    assert_eq!(conn.token_claims["azp"], conn.client_id.as_str());
    assert_eq!(conn.token_claims["sub"], w.user_id.as_str());

    // The registered client through the Admin REST API: generated id, VS Code's metadata.
    assert_vscode_client_registered(&w.realm, &conn.client_id).await;
}

/// The negative paths against the running pod.
async fn check_negatives(w: &Walk) {
    let audience_scope = w.audience_scope();
    // No token: 401, Bearer challenge naming the metadata and the scopes.
    let ch = probe_unauthenticated(&w.url).await.expect("probe");
    assert_eq!(ch.status, 401, "no token must be refused");
    let www = ch.www_authenticate.clone().expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer "), "challenge {www:?}");
    assert_eq!(
        ch.resource_metadata.as_deref(),
        Some(path_metadata_url(&w.url).as_str())
    );
    let scopes: Vec<&str> = ch.scope.as_deref().unwrap_or("").split(' ').collect();
    assert_eq!(scopes, vec!["mcp:tools", audience_scope.as_str()]);
    let prm: Value = reqwest::get(path_metadata_url(&w.url))
        .await
        .expect("GET PRM")
        .json()
        .await
        .expect("PRM JSON");
    assert_eq!(prm["resource"], w.url.as_str());
    assert_eq!(prm["authorization_servers"], json!([w.policy.issuer()]));

    // Registration with a redirect host outside the trusted hosts: refused by the policy.
    let mut body = vscode_registration_request(None, Some("mcp:tools"));
    body["client_name"] = json!("walkthrough untrusted redirect");
    body["redirect_uris"] = json!(["https://evil.example.com/callback"]);
    let refused = register_anonymously(&w.policy.registration_endpoint(), &body)
        .await
        .expect_err("an untrusted redirect host must not register");
    assert_eq!(refused.status, 403, "{refused}");
    assert!(
        refused.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("Trusted Hosts"),
        "{refused}"
    );

    // A token minted for the other McpServer of the realm: 401. Control: one for this server
    // (same user, same client, same way) is let in.
    let other_scope = format!("mcp:server:{}:{OTHER}", w.ns);
    let foreign = w.token_for_scope(&format!("mcp:tools {other_scope}")).await;
    assert!(
        !audiences(&jwt_claims(&foreign)).contains(&w.url),
        "the foreign token names this server"
    );
    let r = probe_with_token(&w.url, Some(&foreign)).await.unwrap();
    assert_eq!(r.status, 401, "a token for {OTHER} must be refused");
    assert_eq!(r.error.as_deref(), Some("invalid_token"));
    let own = w
        .token_for_scope(&format!("mcp:tools {audience_scope}"))
        .await;
    let r = probe_with_token(&w.url, Some(&own)).await.unwrap();
    assert_eq!(r.status, 200, "control: a token for this server is let in");
}

async fn full_walkthrough(mode: Mode, prefix: &str) {
    let w = Walk::setup(prefix, mode, Duration::from_secs(3), true).await;
    let t_ready = w.t0.elapsed();
    let pod = w.start_pod().await;
    let t_pod = w.t0.elapsed();
    let browser = Browser::start().await.expect("headless Chromium");
    let outcome = walkthrough(&w, &browser)
        .await
        .unwrap_or_else(|e| panic!("walkthrough ({mode:?}): {e}"));
    check_success(&w, &outcome).await;
    let t = &outcome.conn.timings;
    eprintln!(
        "walkthrough [{}]: Ready after {t_ready:?}, pod ready after {t_pod:?}; client: discovery {:?}, \
         registration {:?}, browser login+consent {:?}, token {:?}, initialize {:?}; tool answered {:?}",
        mode.name(),
        t.discovery,
        t.registration,
        t.browser_login,
        t.token_exchange,
        t.mcp_initialize,
        outcome.text
    );
    outcome.conn.close().await;
    browser.close().await;
    check_negatives(&w).await;
    pod.stop().await;
    w.finish().await;
}

both_modes! { full_walkthrough, proxy_mode_walkthrough, native_mode_walkthrough, "walk" }

// ---------------------------------------------------------------------------------------------
// Breakage: each test breaks one link and asserts where and how the walkthrough fails.

/// No resync while the scenario is set up (the operator is stopped before the break).
const NO_RESYNC: Duration = Duration::from_secs(3600);

/// Runs the walkthrough expecting it to fail; returns the error.
async fn walkthrough_fails(w: &Walk) -> Error {
    let browser = Browser::start().await.expect("headless Chromium");
    let r = walkthrough(w, &browser).await;
    browser.close().await;
    match r {
        Ok(o) => panic!(
            "the walkthrough ({:?}) succeeded with a broken link (tool answered {:?})",
            w.mode, o.text
        ),
        Err(e) => {
            eprintln!("walkthrough [{}] failed as it must: {e}", w.mode.name());
            e
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaks_when_trusted_hosts_are_emptied() {
    let mut w = Walk::setup("walk-hosts", Mode::Native, NO_RESYNC, false).await;
    let pod = w.start_pod().await;
    w.stop_operator();
    let components = w.realm.anonymous_components("trusted-hosts").await;
    assert!(!components.is_empty(), "no anonymous trusted-hosts policy");
    for mut c in components {
        c["config"]["trusted-hosts"] = json!([]);
        let id = c["id"].as_str().unwrap().to_string();
        let (s, v) = w
            .realm
            .kc
            .put(&w.realm.path(&format!("/components/{id}")), &c)
            .await;
        assert!(s.is_success(), "emptying trusted hosts: {s} {v}");
    }

    let e = walkthrough_fails(&w).await;
    assert_eq!(e.stage, "registration", "{e}");
    assert!(
        e.message.contains("HTTP 403") && e.message.contains("Trusted Hosts"),
        "{e}"
    );
    pod.stop().await;
    w.finish().await;
}

/// Deletes the `included.custom.audience` = URL mapper of the server's audience scope.
async fn remove_audience_mapper(w: &Walk) {
    let scope = w
        .realm
        .scope(&w.audience_scope())
        .await
        .expect("audience scope");
    let sid = scope["id"].as_str().unwrap().to_string();
    let mappers = w
        .realm
        .get(&format!("/client-scopes/{sid}/protocol-mappers/models"))
        .await;
    let m = mappers
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["config"]["included.custom.audience"] == w.url.as_str())
        .unwrap_or_else(|| panic!("no audience mapper for {} in {mappers}", w.url))
        .clone();
    let mid = m["id"].as_str().unwrap();
    let (s, v) = w
        .realm
        .kc
        .delete(&w.realm.path(&format!(
            "/client-scopes/{sid}/protocol-mappers/models/{mid}"
        )))
        .await;
    assert!(s.is_success(), "deleting the audience mapper: {s} {v}");
}

async fn audience_mapper_removed(mode: Mode, prefix: &str) {
    let mut w = Walk::setup(prefix, mode, NO_RESYNC, false).await;
    let pod = w.start_pod().await;
    w.stop_operator();
    remove_audience_mapper(&w).await;

    // The whole flow gets as far as the token, then the server turns it away (rmcp reports
    // the 401 as "Auth required").
    let e = walkthrough_fails(&w).await;
    assert_eq!(e.stage, "mcp", "{e}");
    assert!(e.message.contains("Auth required"), "{e}");
    // Why, precisely: the token lacks the URL in `aud`, so the server answers 401 invalid_token.
    let token = w
        .token_for_scope(&format!("mcp:tools {}", w.audience_scope()))
        .await;
    let aud = audiences(&jwt_claims(&token));
    assert!(!aud.contains(&w.url), "aud {aud:?} still names the URL");
    let r = probe_with_token(&w.url, Some(&token)).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.error.as_deref(), Some("invalid_token"));
    let www = r.www_authenticate.unwrap_or_default().to_lowercase();
    // The gateway gives one description for every refused token (no token-state oracle);
    // the Native example still names the audience.
    let expected = match mode {
        Mode::Proxy => "the access token is not valid for this resource",
        Mode::Native => "not issued for this",
    };
    assert!(www.contains(expected), "challenge {www}");
    pod.stop().await;
    w.finish().await;
}

both_modes! { audience_mapper_removed, breaks_when_the_audience_mapper_is_removed_proxy, breaks_when_the_audience_mapper_is_removed_native, "walk-aud" }

async fn secret_wrong(mode: Mode, prefix: &str) {
    let mut w = Walk::setup(prefix, mode, NO_RESYNC, false).await;
    let pod = w.start_pod().await;
    w.stop_operator();
    // Rotate the introspection client's secret in Keycloak: the running pod keeps the old one.
    let client_id = format!("mcp.{}.{SERVER}", w.ns);
    let kc_client = w
        .realm
        .client(&client_id)
        .await
        .expect("introspection client");
    let id = kc_client["id"].as_str().unwrap();
    let (s, v) = w
        .realm
        .kc
        .post(
            &w.realm.path(&format!("/clients/{id}/client-secret")),
            &json!({}),
        )
        .await;
    assert!(s.is_success(), "regenerating the secret: {s} {v}");

    let e = walkthrough_fails(&w).await;
    assert_eq!(e.stage, "mcp", "{e}");
    let expected = match mode {
        Mode::Proxy => "HTTP 503",
        Mode::Native => "Auth required",
    };
    assert!(e.message.contains(expected), "{e}");
    // Precisely: a token valid for this server, but the pod cannot introspect it.
    let token = w
        .token_for_scope(&format!("mcp:tools {}", w.audience_scope()))
        .await;
    let r = probe_with_token(&w.url, Some(&token)).await.unwrap();
    match mode {
        // The gateway fails closed: 503, nothing forwarded.
        Mode::Proxy => assert_eq!(r.status, 503),
        Mode::Native => {
            assert_eq!(r.status, 401);
            assert_eq!(r.error.as_deref(), Some("invalid_token"));
        }
    }
    // And with the Secret's (old) credentials Keycloak refuses introspection outright.
    let old = secret_value(
        &w.client,
        &w.ns,
        &format!("{SERVER}-oauth"),
        "client-secret",
    )
    .await
    .expect("client-secret");
    let (status, _) = w.realm.introspect(&client_id, &old, &token).await;
    assert_eq!(status, 401, "Keycloak must refuse the stale secret");
    pod.stop().await;
    w.finish().await;
}

both_modes! { secret_wrong, breaks_when_the_client_secret_is_wrong_proxy, breaks_when_the_client_secret_is_wrong_native, "walk-secret" }
