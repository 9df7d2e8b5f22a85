//! Shared helpers for integration tests that run against the real test bed
//! (local Kubernetes control plane + Keycloak, see `hack/testbed`).
//!
//! Use from a test file with `mod support;`. Every helper is usable from any
//! `#[tokio::test]`: clients are created per call (a `kube::Client` or
//! `reqwest::Client` must not outlive the runtime of the test that made it),
//! only the plain [`TestBed`] description is shared per test binary.
//!
//! If `KUBECONFIG` and `KEYCLOAK_URL` are set (e.g. after
//! `eval "$(./hack/testbed up)"`, or inside `./hack/test`), those are used;
//! otherwise the first call runs `./hack/testbed up` (which builds/downloads on
//! first use, then takes seconds) and parses its `export` lines.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};

/// Label put on every namespace made by [`test_namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "mcp-keycloak-operator.test";

/// Where the test bed is and how to log in to it.
#[derive(Debug, Clone)]
pub struct TestBed {
    pub kubeconfig: PathBuf,
    pub keycloak_url: String,
    pub admin_user: String,
    pub admin_password: String,
    /// State dir of the test bed (`TESTBED_DIR`): logs, pki, Keycloak instances.
    pub dir: PathBuf,
}

static TESTBED: OnceCell<TestBed> = OnceCell::const_new();

/// Path of the `hack/testbed` script of this repository.
pub fn testbed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/testbed")
}

/// The test bed, started (or found) once per test binary.
pub async fn testbed() -> &'static TestBed {
    TESTBED
        .get_or_init(|| async {
            if let Some(tb) = testbed_from_env() {
                return tb;
            }
            let out = run_testbed(&["up"], None).await;
            let vars = parse_exports(&out);
            testbed_from_vars(&vars).unwrap_or_else(|| {
                panic!("`hack/testbed up` did not print the expected exports:\n{out}")
            })
        })
        .await
}

fn testbed_from_env() -> Option<TestBed> {
    let vars: HashMap<String, String> = [
        "KUBECONFIG",
        "KEYCLOAK_URL",
        "KEYCLOAK_ADMIN",
        "KEYCLOAK_ADMIN_PASSWORD",
        "TESTBED_DIR",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect();
    if vars.get("KUBECONFIG").is_none_or(|v| v.is_empty())
        || vars.get("KEYCLOAK_URL").is_none_or(|v| v.is_empty())
    {
        return None;
    }
    testbed_from_vars(&vars)
}

fn testbed_from_vars(vars: &HashMap<String, String>) -> Option<TestBed> {
    let dir = match vars.get("TESTBED_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => default_testbed_dir(),
    };
    Some(TestBed {
        kubeconfig: PathBuf::from(vars.get("KUBECONFIG")?),
        keycloak_url: vars.get("KEYCLOAK_URL")?.trim_end_matches('/').to_string(),
        admin_user: vars
            .get("KEYCLOAK_ADMIN")
            .cloned()
            .unwrap_or_else(|| "admin".into()),
        admin_password: vars.get("KEYCLOAK_ADMIN_PASSWORD")?.clone(),
        dir,
    })
}

fn default_testbed_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/mcp-keycloak-operator/testbed")
}

/// Parse `export KEY=VALUE` lines (as printed by `hack/testbed`; values are
/// either bare or bash-`%q`-quoted without special characters). Lines whose
/// value refers to other variables (the PATH line) are skipped.
pub fn parse_exports(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(_, v)| !v.contains('$'))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .unwrap_or(v);
            let v = if v == "''" { "" } else { v };
            (k.to_string(), v.replace('\\', ""))
        })
        .collect()
}

/// Run `hack/testbed ARGS...` (stderr goes to the test's stderr) and return
/// its stdout; panics with the exit status if it fails. `dir` selects the
/// state dir (`TESTBED_DIR`); `None` keeps the environment's/default one.
pub async fn run_testbed(args: &[&str], dir: Option<&Path>) -> String {
    let mut cmd = tokio::process::Command::new(testbed_script());
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    if let Some(d) = dir {
        cmd.env("TESTBED_DIR", d);
    }
    // spawn + wait_with_output (not `output()`, which would also capture
    // stderr): the script's progress shows up live on the test's stderr.
    let out = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not run hack/testbed {args:?}: {e}"))
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("hack/testbed {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hack/testbed {args:?} failed with {}; stdout:\n{stdout}",
        out.status
    );
    stdout
}

/// A test bed component (`keycloak`, `apiserver`) stopped by a test: started again by
/// [`Stopped::start`] or, if the test panics first, when dropped.
pub struct Stopped {
    component: &'static str,
    dir: PathBuf,
    started: bool,
}

impl Stopped {
    pub async fn stop(component: &'static str) -> Self {
        testbed_ctl(&[&format!("{component}-stop")]).await;
        Stopped {
            component,
            dir: testbed().await.dir.clone(),
            started: false,
        }
    }

    pub async fn start(mut self) {
        testbed_ctl(&[&format!("{}-start", self.component)]).await;
        self.started = true;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            let _ = std::process::Command::new(testbed_script())
                .arg(format!("{}-start", self.component))
                .env("TESTBED_DIR", &self.dir)
                .status();
        }
    }
}

/// Run a fault-injection sub-command on this test bed's state dir, e.g.
/// `testbed_ctl(&["keycloak-stop"])`, `testbed_ctl(&["apiserver-start"])`.
pub async fn testbed_ctl(args: &[&str]) -> String {
    let tb = testbed().await;
    run_testbed(args, Some(&tb.dir)).await
}

/// Where a Keycloak is and how its admin logs in.
#[derive(Debug, Clone)]
pub struct KeycloakLogin {
    pub url: String,
    pub user: String,
    pub password: String,
}

impl KeycloakLogin {
    pub fn of(tb: &TestBed) -> Self {
        KeycloakLogin {
            url: tb.keycloak_url.clone(),
            user: tb.admin_user.clone(),
            password: tb.admin_password.clone(),
        }
    }

    pub fn admin(&self) -> KcAdmin {
        KcAdmin::new(&self.url, &self.user, &self.password)
    }
}

/// A further Keycloak instance of the test bed (its own port and data).
#[derive(Debug, Clone)]
pub struct KeycloakInstance {
    pub name: String,
    pub url: String,
    pub management_url: String,
    pub admin_user: String,
    pub admin_password: String,
}

impl KeycloakInstance {
    pub fn login(&self) -> KeycloakLogin {
        KeycloakLogin {
            url: self.url.clone(),
            user: self.admin_user.clone(),
            password: self.admin_password.clone(),
        }
    }
}

/// Start (creating on first use) a named Keycloak instance with the given
/// features, e.g. `keycloak_instance("plain", "")` for one without CIMD.
/// Takes ~1 min the first time a feature set is used (one-time build), then
/// 15-40 s per start. The instance keeps running for later tests; stop it with
/// `testbed_ctl(&["keycloak-stop", "--name", name])`.
pub async fn keycloak_instance(name: &str, features: &str) -> KeycloakInstance {
    keycloak_ctl("keycloak-start", name, features).await
}

/// Restarts the named instance with other `features`, keeping its port and data (a Keycloak
/// that gains or loses a feature, as an operator meets it).
pub async fn keycloak_refeature(name: &str, features: &str) -> KeycloakInstance {
    keycloak_ctl("keycloak-refeature", name, features).await
}

async fn keycloak_ctl(command: &str, name: &str, features: &str) -> KeycloakInstance {
    let features_arg = format!("--features={features}");
    let out = testbed_ctl(&[command, "--name", name, &features_arg]).await;
    let v = parse_exports(&out);
    let get = |k: &str| {
        v.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{command} printed no {k}:\n{out}"))
    };
    KeycloakInstance {
        name: name.to_string(),
        url: get("KEYCLOAK_URL"),
        management_url: get("KEYCLOAK_MANAGEMENT_URL"),
        admin_user: get("KEYCLOAK_ADMIN"),
        admin_password: get("KEYCLOAK_ADMIN_PASSWORD"),
    }
}

async fn kube_config() -> Config {
    let tb = testbed().await;
    let kc = Kubeconfig::read_from(&tb.kubeconfig)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", tb.kubeconfig.display()));
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", tb.kubeconfig.display()))
}

/// A cluster-admin client (client certificate in group `system:masters`).
pub async fn kube_client() -> Client {
    Client::try_from(kube_config().await).expect("building kube client")
}

/// A client that impersonates `user` with `groups` (the admin may impersonate).
pub async fn kube_client_as(user: &str, groups: &[&str]) -> Client {
    let mut cfg = kube_config().await;
    cfg.auth_info.impersonate = Some(user.to_string());
    cfg.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(cfg).expect("building impersonating kube client")
}

/// A client acting as ServiceAccount `namespace/name`.
pub async fn kube_client_as_service_account(namespace: &str, name: &str) -> Client {
    let user = format!("system:serviceaccount:{namespace}:{name}");
    let ns_group = format!("system:serviceaccounts:{namespace}");
    kube_client_as(
        &user,
        &["system:serviceaccounts", &ns_group, "system:authenticated"],
    )
    .await
}

/// A unique lowercase DNS-1123 label: `prefix` + `-` + 8 random chars
/// (prefix is lowercased, other characters become `-`, cut to fit 63).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let mut n = h.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..8)
        .map(|_| {
            let c = alphabet[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect();
    let mut p: String = prefix
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    p.truncate(63 - 9);
    let p = p.trim_matches('-');
    if p.is_empty() {
        format!("t{suffix}")
    } else {
        format!("{p}-{suffix}")
    }
}

/// Create a fresh namespace `prefix-xxxxxxxx` labelled
/// `mcp-keycloak-operator.test=true` and return its name. Tests run in
/// parallel; each should work in its own namespace. `hack/test` removes old
/// ones at start; [`delete_namespace`] removes one explicitly.
pub async fn test_namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name
}

/// A namespace from [`test_namespace`] that is deleted (without waiting) when dropped, also
/// when the test panics. For namespaces without operator-managed objects; see `Scenario`.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        TestNamespace {
            name: test_namespace(client, prefix).await,
        }
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = String;
    fn deref(&self) -> &String {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = on_own_runtime(async move { delete_namespace(&kube_client().await, &name).await });
    }
}

/// Runs `f` to completion on a thread and runtime of its own, for clean-ups in `Drop`: a drop
/// cannot await, and the test's runtime may be a current-thread one that the drop blocks.
pub fn on_own_runtime<F>(f: F) -> std::thread::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("clean-up runtime")
            .block_on(f)
    })
    .join()
}

/// Waits (up to `timeout`) until CustomResourceDefinition `name` is Established.
pub async fn wait_crd_established(client: &Client, name: &str, timeout: Duration) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(&format!("CRD {name} established"), timeout, || async {
        let crd = api.get(name).await.ok()?;
        let conditions = crd.status?.conditions?;
        let established = conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await
}

/// Binds Role `role` in `ns` to ServiceAccount `ns/service_account` (a RoleBinding named `role`).
pub async fn bind_role(client: &Client, ns: &str, role: &str, service_account: &str) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("create RoleBinding {ns}/{role}: {e}"));
}

/// Delete a namespace (without waiting for its finalization).
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Polls `f` every 250 ms until it returns `Ok(T)`; panics after `timeout` with `what` and the
/// last `Err` it returned (what was seen instead), so a timeout says how far things got.
pub async fn poll<F, Fut, T, S>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
    S: std::fmt::Debug,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(last) => last,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// [`poll`] for a check that has nothing to report while it waits.
pub async fn wait_for<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(what, timeout, || {
        let fut = f();
        async move { fut.await.ok_or("not yet") }
    })
    .await
}

/// [`wait_for`] for a yes/no check.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// A listener on a free loopback port, for a server that is started later, and its MCP URL
/// (`http://127.0.0.1:<port>/mcp`).
pub async fn mcp_listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback listener");
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    (listener, url)
}

/// Sends `req`, panicking if it gets no response at all.
pub async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.expect("a response")
}

/// A request whose answer is read as JSON.
pub trait Fetch {
    async fn fetch_json<T: serde::de::DeserializeOwned>(self) -> T;
}

impl Fetch for reqwest::RequestBuilder {
    async fn fetch_json<T: serde::de::DeserializeOwned>(self) -> T {
        let resp = send(self).await;
        resp.json().await.expect("a JSON answer")
    }
}

/// The first chunk of a streamed answer within `within`; panics with `what` if none came.
pub async fn first_chunk(
    resp: &mut reqwest::Response,
    within: Duration,
    what: &str,
) -> bytes::Bytes {
    tokio::time::timeout(within, resp.chunk())
        .await
        .unwrap_or_else(|_| panic!("{what} within {within:?}"))
        .expect("reading the stream")
        .expect("a chunk")
}

/// Sends `req` and reads its JSON answer, which must have a success status (`what` names it).
pub async fn ok_json(req: reqwest::RequestBuilder, what: &str) -> Value {
    let resp = send(req).await;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{what}: {status} {v}");
    v
}

/// POSTs `{}` to `{base}/mcp` with a bearer `token`.
pub async fn post_mcp(http: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    send(
        http.post(format!("{base}/mcp"))
            .bearer_auth(token)
            .body("{}"),
    )
    .await
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building reqwest client")
}

/// An admin access token for the master realm (password grant, `admin-cli`).
/// Master-realm tokens live 60 s; get a new one per use or use [`KcAdmin`].
pub async fn keycloak_admin_token(tb: &TestBed) -> String {
    admin_token(&tb.keycloak_url, &tb.admin_user, &tb.admin_password).await
}

pub async fn admin_token(base_url: &str, user: &str, password: &str) -> String {
    let url = format!("{base_url}/realms/master/protocol/openid-connect/token");
    let resp = http_client()
        .post(&url)
        .form(&[
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(
        status.is_success(),
        "admin token from {url}: {status} {body}"
    );
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {body}"))
        .to_string()
}

/// Minimal Keycloak Admin REST client for tests, independent of the
/// operator's own client. Paths are from the Keycloak base URL, e.g.
/// `kc.get("/admin/realms/foo")`. Returns the status and the body as JSON
/// (`Value::Null` for an empty body, `Value::String` for a non-JSON one).
/// The token is renewed every 30 s.
pub struct KcAdmin {
    pub base_url: String,
    user: String,
    password: String,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

pub async fn keycloak_admin(tb: &TestBed) -> KcAdmin {
    KcAdmin::new(&tb.keycloak_url, &tb.admin_user, &tb.admin_password)
}

impl KcAdmin {
    pub fn new(base_url: &str, user: &str, password: &str) -> Self {
        KcAdmin {
            base_url: base_url.trim_end_matches('/').to_string(),
            user: user.to_string(),
            password: password.to_string(),
            http: http_client(),
            token: Mutex::new(None),
        }
    }

    pub async fn token(&self) -> String {
        let mut t = self.token.lock().await;
        if let Some((tok, at)) = t.as_ref() {
            if at.elapsed() < Duration::from_secs(30) {
                return tok.clone();
            }
        }
        let tok = admin_token(&self.base_url, &self.user, &self.password).await;
        *t = Some((tok.clone(), Instant::now()));
        tok
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (reqwest::StatusCode, Value) {
        let url = format!("{}{}", self.base_url, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.token().await);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (reqwest::StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }
}

/// Prints a measured figure (kill counts, retry counts, …) where a CI log shows it even when the
/// test passes: straight to the process's stderr, which libtest does not capture (its capture
/// covers `print!`/`eprint!` only). Lines start with `FIGURE`.
pub fn figure(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "FIGURE {line}");
}
