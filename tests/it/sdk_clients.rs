//! The official MCP SDK clients walk the journey through the operator's gateway (issue 14): the
//! TypeScript SDK (`@modelcontextprotocol/sdk`) and the Python SDK (PyPI `mcp`), each with its own
//! OAuth support, in the programs `tests/clients/journey.cjs` and `tests/clients/journey.py`
//! (installed at the versions pinned in `hack/versions.env` by `hack/lib/clients.sh`, through
//! `./hack/testbed install` or `clients-env`). The operator reconciles the seed policy and an McpServer running
//! server-everything behind the gateway; the local pod runner starts that pod; the program
//! connects to the McpServer's URL and prints JSON lines; for each `authorize` line, a real
//! headless Chromium logs the user in and consents on Keycloak's pages, and its arrival at the
//! redirect URI hands the code to the program's loopback callback.
//!
//! - `*_sdk_journey`: 401 with `resource_metadata` → discovery → anonymous DCR → login + consent
//!   → code + PKCE + `resource` → tools listed and called.
//! - `*_sdk_step_up`: a tool gated by `spec.auth.tools` is missing from `tools/list`; calling it
//!   gets 403 `insufficient_scope` naming the larger scope; the client re-authorizes, Chromium
//!   consents to the larger scope, the call succeeds and `tools/list` shows the tool.
//!   The Python SDK does all of it itself. The TypeScript SDK 1.32.2, holding a refresh token,
//!   answers the 403 with a refresh (same scopes), gets the same 403 and gives up; the program
//!   then calls the SDK's `auth()` with the challenged scope (see `journey.cjs`, `stepUp`).
//!   Keycloak (26.7.3) gives a client registered by DCR with a `scope` exactly those scopes (as
//!   optional scopes, `basic` as default), and both SDKs register with the 401's scopes: the
//!   re-authorization can only succeed if the operator lets such clients request `mcp:admin`;
//!   otherwise Keycloak redirects with `invalid_scope` and the test fails saying so.
//!
//! Needs the test bed, Debian's `chromium` + `chromium-driver`, npm and python3 (venv).

use crate::browser::{self, Browser, LoginOutcome};
use crate::harness;
use crate::support;
use harness::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use localpod::cluster::{start_server_pod, LocalServer, RunOptions};
use localpod::images::{
    default_image_map, ensure_server_everything, npm_dir, operator_command, LocalBinaries,
    SERVER_EVERYTHING_IMAGE,
};
use localpod::RunnerError;
use mcp_keycloak_operator::api::{McpAuthPolicy, McpServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{MutexGuard, OnceCell};

const USER: &str = "erin";
const PASSWORD: &str = "erin-sdk-password-1";
const SERVER: &str = "everything";
/// The policy scope the gated tool needs on top of `mcp:tools`, and its consent text.
const ADMIN_SCOPE: &str = "mcp:admin";
const ADMIN_CONSENT: &str = "Administer MCP tools";
const GATED_TOOL: &str = "get-sum";
/// How long the program may stay silent (a browser walk happens between two of its lines).
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
enum Sdk {
    TypeScript,
    Python,
}

/// `./hack/testbed clients-env`, once per test binary: installs the SDKs if missing (also done
/// by `./hack/testbed install`), names their paths.
async fn installed_clients() -> &'static HashMap<String, String> {
    static CLIENTS: OnceCell<HashMap<String, String>> = OnceCell::const_new();
    CLIENTS
        .get_or_init(|| async {
            support::parse_exports(&support::run_testbed(&["clients-env"], None).await)
        })
        .await
}

impl Sdk {
    /// The journey program of this SDK with `args`, its stdout piped, killed when dropped.
    async fn command(self, args: &[String]) -> tokio::process::Command {
        let env = installed_clients().await;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let mut cmd = match self {
            Sdk::TypeScript => {
                let mut c = tokio::process::Command::new(&env["MCP_CLIENT_NODE"]);
                c.arg(dir.join("journey.cjs"))
                    .env("NODE_PATH", &env["MCP_CLIENT_NODE_PATH"]);
                c
            }
            Sdk::Python => {
                let mut c = tokio::process::Command::new(&env["MCP_CLIENT_PYTHON"]);
                c.arg(dir.join("journey.py"));
                c
            }
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        cmd
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The seed policy (on `kc`, else the test bed's Keycloak), with the optional scope
/// `mcp:admin` for the step-up.
async fn policy(s: &Scenario, step_up: bool, kc: Option<&str>) -> McpAuthPolicy {
    let mut p = serde_json::to_value(s.seed_policy().await).unwrap();
    if let Some(kc) = kc {
        p["spec"]["keycloak"]["url"] = json!(kc);
    }
    if step_up {
        let admin = json!({"name": ADMIN_SCOPE, "consentText": ADMIN_CONSENT, "type": "Optional"});
        p["spec"]["scopes"].as_array_mut().unwrap().push(admin);
    }
    serde_json::from_value(p).unwrap()
}

/// server-everything behind the gateway at `url`; with `step_up`, `get-sum` needs `mcp:admin`.
fn server(port: u16, url: &str, step_up: bool) -> McpServer {
    let mut auth = json!({"mode": "Proxy"});
    if step_up {
        auth["tools"] = json!([{"name": GATED_TOOL, "scopes": [ADMIN_SCOPE]}]);
    }
    resource(
        SERVER,
        json!({"image": SERVER_EVERYTHING_IMAGE, "port": port, "url": url,
               "policyRef": {"name": "acme"}, "scopes": ["mcp:tools"], "auth": auth}),
    )
}

/// Namespace, realm, operator, the policy and the server Ready, their pod running, the user.
struct World {
    s: Scenario,
    url: String,
    issuer: String,
    audience_scope: String,
    pod: Option<LocalServer>,
    _ports: MutexGuard<'static, ()>,
    t0: Instant,
}

harness::deref_scenario!(World, s);

impl World {
    async fn setup(prefix: &str, step_up: bool) -> World {
        Self::setup_on(prefix, step_up, None).await
    }

    /// [`World::setup`] on another Keycloak instance of the test bed.
    async fn setup_on(
        prefix: &str,
        step_up: bool,
        kc: Option<&support::KeycloakInstance>,
    ) -> World {
        let t0 = Instant::now();
        let s = match kc {
            Some(kc) => {
                let mut s = Scenario::on(prefix, kc.login()).await;
                s.start_operator().await;
                s
            }
            None => Scenario::new(prefix).await,
        };
        let url = kc.map(|k| k.url.as_str());
        s.create(&policy(&s, step_up, url).await).await;
        let url = format!("http://127.0.0.1:{}/mcp", free_port());
        s.create(&server(free_port(), &url, step_up)).await;
        s.wait_ready::<McpAuthPolicy>("acme").await;
        s.wait_ready::<McpServer>(SERVER).await;
        let issuer = s.get::<McpAuthPolicy>("acme").await.issuer();
        let status = s.get::<McpServer>(SERVER).await.status.expect("status");
        s.realm.create_user(USER, PASSWORD).await;
        let ports = GATEWAY_PORTS.lock().await;
        let pod = start_pod(&s).await;
        World {
            s,
            url,
            issuer,
            // No per-server scope in ResourceIndicator mode.
            audience_scope: status.audience_scope.unwrap_or_default(),
            pod: Some(pod),
            _ports: ports,
            t0,
        }
    }

    /// The base scopes (`mcp:tools`, the audience scope) and `more`, sorted.
    fn scopes(&self, more: &[&str]) -> Vec<String> {
        scope_set(&format!(
            "mcp:tools {} {}",
            self.audience_scope,
            more.join(" ")
        ))
    }

    async fn finish(mut self) {
        if let Some(pod) = self.pod.take() {
            pod.stop().await;
        }
        eprintln!("sdk journey: whole test {:?}", self.t0.elapsed());
    }
}

/// The server's pod through the local pod runner (the harness's operator names its gateway
/// image `mcp-keycloak-operator:test`); waits while another process holds a port.
async fn start_pod(s: &Scenario) -> LocalServer {
    let script = tokio::task::spawn_blocking(|| ensure_server_everything(&npm_dir()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let operator = PathBuf::from(env!("CARGO_BIN_EXE_mcp-keycloak-operator"));
    let images = default_image_map(&LocalBinaries {
        operator: operator.clone(),
        native_example: None,
        server_everything_script: Some(script),
    })
    .with("mcp-keycloak-operator:test", operator_command(&operator));
    let log_dir = browser::artifacts_dir()
        .with_file_name("sdk-clients-logs")
        .join(&s.ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match start_server_pod(
            &s.client,
            &s.ns,
            SERVER,
            &images,
            &RunOptions::new(&log_dir),
        )
        .await
        {
            Ok(pod) => return pod,
            Err(RunnerError::PortBusy { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("starting the pod of {}/{SERVER}: {e}", s.ns),
        }
    }
}

/// What the program printed, and each browser walk it asked for.
struct Journey {
    events: Vec<Value>,
    logins: Vec<LoginOutcome>,
}

impl Journey {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }

    /// The kinds in order, challenges with their status (`challenge 401`): the journey's shape.
    fn shape(&self) -> Vec<String> {
        let kind = |e: &Value| match e["status"].as_u64() {
            Some(s) => format!("{} {s}", e["event"].as_str().unwrap_or("?")),
            None => e["event"].as_str().unwrap_or("?").to_string(),
        };
        self.events.iter().map(kind).collect()
    }

    /// The query parameters of the n-th authorization URL.
    fn authorization(&self, n: usize) -> HashMap<String, String> {
        let url = url::Url::parse(self.of("authorize")[n]["url"].as_str().unwrap()).unwrap();
        url.query_pairs().into_owned().collect()
    }
}

/// Runs `sdk`'s program against `url`: call `tool`, then `gated` if given; drives Chromium
/// through every authorization it asks for. Panics if the program fails.
async fn run(
    sdk: Sdk,
    w: &World,
    browser: &Browser,
    tool: (&str, Value),
    gated: Option<(&str, Value)>,
) -> Journey {
    let mut args = vec![
        w.url.to_string(),
        free_port().to_string(),
        tool.0.into(),
        tool.1.to_string(),
    ];
    if let Some((name, a)) = gated {
        args.extend([name.to_string(), a.to_string()]);
    }
    let mut child = sdk
        .command(&args)
        .await
        .spawn()
        .expect("spawning the journey program");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut j = Journey {
        events: vec![],
        logins: vec![],
    };
    while let Some(line) = tokio::time::timeout(LINE_TIMEOUT, lines.next_line())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{sdk:?}: no line for {LINE_TIMEOUT:?}; so far {:?}",
                j.shape()
            )
        })
        .expect("reading the program's stdout")
    {
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{sdk:?}: {e}: {line}"));
        if event["event"] == "authorize" {
            let (auth_url, redirect) = (
                event["url"].as_str().unwrap(),
                event["redirect_uri"].as_str().unwrap(),
            );
            if !j.logins.is_empty() {
                requestable(&w.realm, auth_url).await;
            }
            let login = browser
                .login_and_consent(auth_url, redirect, USER, PASSWORD)
                .await;
            let login = login.unwrap_or_else(|e| panic!("{sdk:?}: {e}"));
            if let Some(e) = refused_by_keycloak(&login.final_url) {
                panic!("{sdk:?}: Keycloak answered {e}; so far {:?}", j.shape());
            }
            j.logins.push(login);
        }
        j.events.push(event);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let status = status.expect("the program did not exit").expect("wait");
    assert!(
        status.success(),
        "{sdk:?} journey exited with {status}; events {:?}",
        j.shape()
    );
    eprintln!(
        "sdk journey [{sdk:?}]: {:?}; consented {:?}",
        j.shape(),
        j.logins
            .iter()
            .map(|l| &l.consent_items)
            .collect::<Vec<_>>()
    );
    j
}

/// Waits until the registered client may request every MCP scope `auth_url` asks for: Keycloak
/// gave it only the scopes it registered with, and the operator's sweep adds the rest (within
/// `REGISTRATION_SWEEP`, 15 s). Prints how long that took.
async fn requestable(realm: &harness::Realm, auth_url: &str) {
    let url = url::Url::parse(auth_url).unwrap();
    let param = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.to_string())
    };
    let client_id = param("client_id").expect("client_id");
    let wanted: Vec<String> = scope_set(&param("scope").unwrap_or_default())
        .into_iter()
        .filter(|s| s.starts_with("mcp:"))
        .collect();
    let t0 = Instant::now();
    let path = realm.path(&format!("/clients?clientId={client_id}"));
    let (path, wanted) = (&path, &wanted);
    let what = "the registered client may request the larger scope";
    support::wait_for(what, Duration::from_secs(60), || async move {
        let (_, v) = realm.kc.get(path).await;
        let c = &v[0];
        let has: Vec<&str> = ["defaultClientScopes", "optionalClientScopes"]
            .iter()
            .flat_map(|k| c[k].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        wanted
            .iter()
            .all(|w| has.contains(&w.as_str()))
            .then_some(())
    })
    .await;
    support::figure(format_args!(
        "step-up scopes {wanted:?} requestable by the registered client after {:?}",
        t0.elapsed()
    ));
}

/// The `error` and `error_description` of a redirect that carries no code (no secret in them).
fn refused_by_keycloak(redirect: &str) -> Option<String> {
    let url = url::Url::parse(redirect).ok()?;
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let error = q.get("error")?;
    Some(format!(
        "{error}: {}",
        q.get("error_description").map_or("", String::as_str)
    ))
}

/// What a challenge's `scope` names, as a set.
fn scope_set(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

/// The parameter `name` of a `WWW-Authenticate: Bearer ...` value.
fn challenge_param(www: &Value, name: &str) -> Option<String> {
    let www = www.as_str()?;
    let start = www.find(&format!("{name}=\""))? + name.len() + 2;
    Some(www[start..].split('"').next()?.to_string())
}

/// The gateway's 401: `resource_metadata` of the URL, the base scopes (`mcp:tools` and the
/// server's audience scope).
fn check_unauthorized(w: &World, j: &Journey) {
    let first = &j.events[0];
    let status = (first["event"].as_str(), first["status"].as_u64());
    assert_eq!(status, (Some("challenge"), Some(401)), "{:?}", j.shape());
    let www = &first["www_authenticate"];
    let metadata = browser::client::path_metadata_url(&w.url);
    assert_eq!(challenge_param(www, "resource_metadata"), Some(metadata));
    let scope = challenge_param(www, "scope").map(|s| scope_set(&s));
    assert_eq!(scope, Some(w.scopes(&[])));
}

/// The n-th authorization request: Keycloak's endpoint, PKCE S256, `resource` = the URL, and at
/// least the scopes `needed`. Returns its parameters.
fn check_authorization(
    w: &World,
    j: &Journey,
    n: usize,
    needed: &[String],
) -> HashMap<String, String> {
    let url = j.of("authorize")[n]["url"].as_str().unwrap();
    let endpoint = url.split('?').next().unwrap();
    assert_eq!(
        endpoint,
        format!("{}/protocol/openid-connect/auth", w.issuer)
    );
    let p = j.authorization(n);
    assert_eq!(p.get("resource"), Some(&w.url), "RFC 8707 resource");
    assert_eq!(
        p.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert!(
        p.get("code_challenge").is_some_and(|c| c.len() >= 43),
        "PKCE challenge"
    );
    let requested = scope_set(p.get("scope").expect("scope"));
    assert!(
        needed.iter().all(|s| requested.contains(s)),
        "requested {requested:?}, needed {needed:?}"
    );
    p
}

/// Every code went to the token endpoint with its PKCE verifier and `resource` = the URL.
fn check_code_exchanges(w: &World, j: &Journey) {
    let codes = j
        .of("token_request")
        .into_iter()
        .filter(|t| t["grant_type"] == "authorization_code");
    let exchanges: Vec<&Value> = codes.collect();
    assert_eq!(exchanges.len(), j.of("authorize").len(), "{:?}", j.shape());
    for t in exchanges {
        assert_eq!(
            (&t["resource"], &t["code_verifier"]),
            (&json!(w.url), &json!(true)),
            "{t}"
        );
    }
}

/// The client the SDK registered anonymously (the `client_id` of its authorization requests):
/// public, its loopback redirect, its name; the user consented to `mcp:tools` for it.
async fn check_registered_client(w: &World, j: &Journey, sdk: Sdk) {
    let client_id = j.authorization(0)["client_id"].clone();
    let client = w.realm.client(&client_id).await;
    let client = client.unwrap_or_else(|| panic!("{sdk:?}: no DCR client {client_id}"));
    assert_eq!(client["publicClient"], true);
    assert_eq!(
        client["redirectUris"],
        json!([j.of("authorize")[0]["redirect_uri"]])
    );
    let name = client["name"].as_str().unwrap_or("");
    let expected = match sdk {
        Sdk::TypeScript => "TypeScript",
        Sdk::Python => "Python",
    };
    assert!(name.contains(expected), "client name {name:?}");
    let consented = &j.logins[0].consent_items;
    assert!(
        consented.iter().any(|c| c == "Use MCP tools"),
        "consent {consented:?}"
    );
}

/// From the gateway's 401 to the first token: every check above.
async fn check_first_authorization(w: &World, j: &Journey, sdk: Sdk) {
    check_unauthorized(w, j);
    check_authorization(w, j, 0, &w.scopes(&[]));
    check_code_exchanges(w, j);
    check_registered_client(w, j, sdk).await;
}

fn tools(j: &Journey, n: usize) -> Vec<String> {
    serde_json::from_value(j.of("tools")[n]["names"].clone()).unwrap()
}

fn called(j: &Journey, tool: &str) -> String {
    let c = j
        .of("called")
        .into_iter()
        .find(|c| c["tool"] == tool)
        .unwrap_or_else(|| panic!("{tool} not called: {:?}", j.shape()));
    assert_eq!(c["is_error"], false, "{c}");
    c["text"].as_str().unwrap().to_string()
}

async fn journey(sdk: Sdk, prefix: &str) {
    let w = World::setup(prefix, false).await;
    let browser = Browser::start().await.expect("headless Chromium");
    let echo = ("echo", json!({"message": "hello from an SDK"}));
    let j = run(sdk, &w, &browser, echo, None).await;

    assert_eq!(
        j.shape(),
        [
            "challenge 401",
            "authorize",
            "token_request",
            "tools",
            "called"
        ]
    );
    check_first_authorization(&w, &j, sdk).await;
    let names = tools(&j, 0);
    assert!(
        ["echo", GATED_TOOL]
            .iter()
            .all(|t| names.iter().any(|n| n == t)),
        "tools {names:?}"
    );
    assert_eq!(called(&j, "echo"), "Echo: hello from an SDK");
    browser.close().await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_journey() {
    journey(Sdk::TypeScript, "sdk-ts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_journey() {
    journey(Sdk::Python, "sdk-py").await;
}

/// The shape of each SDK's step-up, from its first tool call on (see the module docs).
fn step_up_shape(sdk: Sdk) -> Vec<&'static str> {
    let mut shape = vec!["challenge 403"];
    if let Sdk::TypeScript = sdk {
        shape.extend(["token_request", "challenge 403", "refused", "step_up"]);
    }
    shape.extend(["authorize", "token_request", "called", "tools"]);
    shape
}

async fn step_up(sdk: Sdk, prefix: &str) {
    let w = World::setup(prefix, true).await;
    let browser = Browser::start().await.expect("headless Chromium");
    let echo = ("echo", json!({"message": "before the step-up"}));
    let sum = Some((GATED_TOOL, json!({"a": 2, "b": 40})));
    let j = run(sdk, &w, &browser, echo, sum).await;

    // Logged in with the base scopes: the gated tool is filtered out, the others work.
    check_first_authorization(&w, &j, sdk).await;
    assert!(!scope_set(&j.authorization(0)["scope"]).contains(&ADMIN_SCOPE.to_string()));
    let before = tools(&j, 0);
    let listed = |t: &str| before.iter().any(|n| n == t);
    assert!(listed("echo") && !listed(GATED_TOOL), "tools {before:?}");
    assert_eq!(called(&j, "echo"), "Echo: before the step-up");

    check_step_up(&w, &j, sdk);
    assert_eq!(called(&j, GATED_TOOL), "The sum of 2 and 40 is 42.");
    let after = tools(&j, 1);
    assert!(
        after.iter().any(|t| t == GATED_TOOL),
        "tools after the step-up {after:?}"
    );
    browser.close().await;
    w.finish().await;
}

/// From the gated call on: the 403 names every scope the call needs, the SDK's answer (see
/// [`step_up_shape`]), a re-authorization asking for them, Chromium consenting to the new one.
fn check_step_up(w: &World, j: &Journey, sdk: Sdk) {
    let after_first_call = j.shape().iter().position(|k| k == "called").unwrap() + 1;
    assert_eq!(
        j.shape()[after_first_call..],
        step_up_shape(sdk),
        "{sdk:?} step-up"
    );
    let www = &j.events[after_first_call]["www_authenticate"];
    assert_eq!(
        challenge_param(www, "error").as_deref(),
        Some("insufficient_scope")
    );
    let needed = w.scopes(&[ADMIN_SCOPE]);
    assert_eq!(
        challenge_param(www, "scope").map(|s| scope_set(&s)),
        Some(needed.clone())
    );
    check_authorization(w, j, 1, &needed);
    let consented = &j.logins[1].consent_items;
    assert!(
        consented.iter().any(|c| c == ADMIN_CONSENT),
        "consent {consented:?}"
    );
    if let Sdk::TypeScript = sdk {
        let refused = &j.of("refused")[0]["error"];
        assert_eq!(
            refused,
            "Streamable HTTP error: Server returned 403 after trying upscoping"
        );
        let answer = j.of("token_request")[1]["grant_type"].clone();
        assert_eq!(answer, "refresh_token", "the SDK's own answer to the 403");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_step_up() {
    step_up(Sdk::TypeScript, "sdk-ts-up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_step_up() {
    step_up(Sdk::Python, "sdk-py-up").await;
}

/// ResourceIndicator mode (Keycloak with `resource-indicators`, policy `audience: Auto`): the
/// TypeScript SDK's journey works with no per-server scope — the token's audience comes from
/// the `resource` the SDK sends, narrowed by Keycloak to the server's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_journey_in_resource_indicator_mode() {
    let ri = support::keycloak_instance("ri", "cimd,resource-indicators").await;
    let w = World::setup_on("sdk-ts-ri", false, Some(&ri)).await;
    let policy = w.get::<McpAuthPolicy>("acme").await;
    let mode = policy.status.as_ref().and_then(|s| s.audience_mode);
    assert_eq!(
        mode,
        Some(mcp_keycloak_operator::api::ActiveAudience::ResourceIndicator)
    );
    assert!(
        w.audience_scope.is_empty(),
        "a per-server scope in this mode"
    );
    let browser = Browser::start().await.expect("headless Chromium");
    let echo = ("echo", json!({"message": "hello by resource indicator"}));
    let j = run(Sdk::TypeScript, &w, &browser, echo, None).await;
    assert_eq!(
        j.shape(),
        [
            "challenge 401",
            "authorize",
            "token_request",
            "tools",
            "called"
        ]
    );
    let p = check_authorization(&w, &j, 0, &["mcp:tools".to_string()]);
    let requested = scope_set(p.get("scope").expect("scope"));
    assert!(
        !requested.iter().any(|s| s.starts_with("mcp:server:")),
        "{requested:?}"
    );
    check_code_exchanges(&w, &j);
    assert_eq!(called(&j, "echo"), "Echo: hello by resource indicator");
    browser.close().await;
    w.finish().await;
}
