//! A real headless Chromium for end-to-end tests, driven from Rust over WebDriver.
//!
//! [`Browser::start`] runs `chromedriver` as a child process on a free loopback port and opens one
//! Chromium session with a fresh profile directory; [`Browser::login_and_consent`] walks Keycloak's
//! login and OAuth-grant (consent) pages the way a person would and waits for the redirect to the
//! client's loopback callback, which [`LoopbackCallback`] receives like VS Code's own listener.
//! [`client`] is the VS Code-like MCP client (rmcp) that uses them, [`stand_in`] a protected MCP
//! server to run it against until the auth gateway lands.
//!
//! Everything listens on and talks to 127.0.0.1 only. Nothing here prints tokens, codes or
//! passwords: URLs in errors lose their query string. On a failure the page is saved as
//! `e2e-browser/<name>.png` next to the test binary's profile dir (e.g. `target/debug/`).
//!
//! Binaries: `CHROMEDRIVER` (default `chromedriver` on PATH) and `CHROMIUM_BIN` (default the
//! first of `/usr/lib/chromium/chromium`, `/usr/bin/chromium`, ...; Debian packages `chromium`
//! and `chromium-driver`).

pub mod client;
pub mod stand_in;

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{elements::Element, Client as WebDriver, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Chromium flags: headless, and nothing that phones home (this machine's closed network
/// refuses those connections, which slows or breaks page loads).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--password-store=basic",
    "--window-size=1280,1024",
];

/// How long one page walk (login + consent + redirect) may take.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(45);

/// An error of the browser, the client or the stand-in server, with the stage it happened in.
#[derive(Debug, Clone)]
pub struct Error {
    pub stage: &'static str,
    pub message: String,
}

impl Error {
    pub fn new(stage: &'static str, message: impl Into<String>) -> Self {
        Error {
            stage,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `url` without query and fragment (codes, states and session ids stay out of messages).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            if had_query {
                format!("{u}?…")
            } else {
                u.to_string()
            }
        }
        Err(_) => "<unparsable url>".into(),
    }
}

/// Where failure screenshots go: `<target>/<profile>/e2e-browser/` (beside `deps/`).
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    profile_dir.join("e2e-browser")
}

fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_loopback_port() -> std::io::Result<u16> {
    let l = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

fn find_chromium() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM_BIN") {
        return Ok(PathBuf::from(p));
    }
    [
        "/usr/lib/chromium/chromium",
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| {
        Error::new(
            "browser",
            "no Chromium found: apt-get install chromium chromium-driver, or set CHROMIUM_BIN",
        )
    })
}

/// What the page walk saw.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The URL the browser ended on: the client's redirect URI with `code`, `state` (and `iss`).
    pub final_url: String,
    /// Whether Keycloak showed its OAuth grant (consent) page.
    pub consent_shown: bool,
    /// The entries the consent page listed (scope consent texts), in page order.
    pub consent_items: Vec<String>,
    /// From opening the authorization URL to reaching the redirect URI.
    pub elapsed: Duration,
}

/// One headless Chromium session behind a chromedriver child process.
pub struct Browser {
    wd: WebDriver,
    driver: Child,
    driver_port: u16,
    session_id: Option<String>,
    profile_dir: PathBuf,
    closed: bool,
}

impl Browser {
    /// Start chromedriver on a free loopback port and open a session with a fresh profile.
    pub async fn start() -> Result<Browser> {
        let chromium = find_chromium()?;
        let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port =
            free_loopback_port().map_err(|e| Error::new("browser", format!("free port: {e}")))?;
        let profile_dir = std::env::temp_dir().join(format!("e2e-chromium-{}", unique_suffix()));
        std::fs::create_dir_all(&profile_dir)
            .map_err(|e| Error::new("browser", format!("profile dir: {e}")))?;

        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--log-level=SEVERE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::new("browser", format!("spawning {chromedriver}: {e}")))?;
        let base = format!("http://127.0.0.1:{port}");

        // Wait until chromedriver answers /status with ready=true.
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = driver.try_wait() {
                let _ = std::fs::remove_dir_all(&profile_dir);
                return Err(Error::new(
                    "browser",
                    format!("chromedriver exited during startup: {status}"),
                ));
            }
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        break;
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = driver.kill();
                let _ = driver.wait();
                let _ = std::fs::remove_dir_all(&profile_dir);
                return Err(Error::new("browser", "chromedriver not ready after 20 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile_dir.display()));
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }))
        .expect("capabilities object");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let wd = match ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&base)
            .await
        {
            Ok(wd) => wd,
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                let _ = std::fs::remove_dir_all(&profile_dir);
                return Err(Error::new("browser", format!("new WebDriver session: {e}")));
            }
        };
        let session_id = wd.session_id().await.ok().flatten();
        Ok(Browser {
            wd,
            driver,
            driver_port: port,
            session_id,
            profile_dir,
            closed: false,
        })
    }

    /// The WebDriver client, for anything the helpers here do not cover.
    pub fn webdriver(&self) -> &WebDriver {
        &self.wd
    }

    /// Chromium's version as reported by chromedriver.
    pub async fn version(&self) -> String {
        self.wd
            .capabilities()
            .and_then(|c| c.get("browserVersion"))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string()
    }

    /// Save a PNG of the current page under [`artifacts_dir`]; returns its path.
    pub async fn screenshot(&self, name: &str) -> Option<PathBuf> {
        let png = self.wd.screenshot().await.ok()?;
        let dir = artifacts_dir();
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(format!("{name}-{}.png", unique_suffix()));
        std::fs::write(&path, png).ok()?;
        Some(path)
    }

    /// Open `auth_url`, log in as `username`/`password` on Keycloak's login page, accept the
    /// OAuth grant (consent) page if it appears, and wait until the browser is sent to
    /// `redirect_uri` (compared by scheme, host, port and path; the query carries the code).
    ///
    /// Keycloak 26 (theme keycloak.v2) pages, as checked against 26.7.3:
    /// login form `#kc-form-login` with `#username`, `#password` and submit `#kc-login`;
    /// grant page with the requested scopes listed in `#kc-oauth li` and submit
    /// `input[name=accept]` (id `kc-login`, "Yes"; `#kc-cancel` is "No"); errors in
    /// `#input-error`, `.pf-v5-c-alert__title`, `#kc-error-message`.
    pub async fn login_and_consent(
        &self,
        auth_url: &str,
        redirect_uri: &str,
        username: &str,
        password: &str,
    ) -> Result<LoginOutcome> {
        let started = Instant::now();
        let r = self
            .walk_login(auth_url, redirect_uri, username, password, started)
            .await;
        if let Err(e) = &r {
            let shot = self.screenshot("login-failure").await;
            let url = self
                .wd
                .current_url()
                .await
                .map(|u| redact_url(u.as_str()))
                .unwrap_or_default();
            let title = self.wd.title().await.unwrap_or_default();
            return Err(Error::new(
                "browser",
                format!(
                    "{} (page {url:?}, title {title:?}, screenshot {})",
                    e.message,
                    shot.map(|p| p.display().to_string())
                        .unwrap_or_else(|| "not saved".into())
                ),
            ));
        }
        r
    }

    async fn walk_login(
        &self,
        auth_url: &str,
        redirect_uri: &str,
        username: &str,
        password: &str,
        started: Instant,
    ) -> Result<LoginOutcome> {
        let target = url::Url::parse(redirect_uri)
            .map_err(|e| Error::new("browser", format!("redirect uri: {e}")))?;
        let err = |m: String| Error::new("browser", m);
        self.wd
            .goto(auth_url)
            .await
            .map_err(|e| err(format!("opening the authorization URL: {e}")))?;

        let mut logged_in = false;
        let mut consent_items: Option<Vec<String>> = None;
        loop {
            if started.elapsed() > LOGIN_TIMEOUT {
                return Err(err(format!(
                    "timed out after {LOGIN_TIMEOUT:?} (logged in: {logged_in}, consent shown: {})",
                    consent_items.is_some()
                )));
            }
            let current = self
                .wd
                .current_url()
                .await
                .map_err(|e| err(format!("current url: {e}")))?;
            if same_endpoint(&current, &target) {
                return Ok(LoginOutcome {
                    final_url: current.to_string(),
                    consent_shown: consent_items.is_some(),
                    consent_items: consent_items.unwrap_or_default(),
                    elapsed: started.elapsed(),
                });
            }

            if let Some(form) = self.find_opt("#kc-form-login").await {
                if logged_in {
                    return Err(err(format!(
                        "the login page came back after submitting it: {:?}",
                        self.page_feedback().await
                    )));
                }
                self.fill("#username", username).await?;
                self.fill("#password", password).await?;
                self.click("#kc-login").await?;
                logged_in = true;
                self.wait_stale(&form).await;
                continue;
            }

            if let Some(accept) = self
                .find_opt("input[name=accept], button[name=accept]")
                .await
            {
                if consent_items.is_some() {
                    return Err(err("the consent page came back after accepting it".into()));
                }
                let mut items = vec![];
                if let Ok(lis) = self.wd.find_all(Locator::Css("#kc-oauth li")).await {
                    for li in lis {
                        if let Ok(t) = li.text().await {
                            let t = t.trim().to_string();
                            if !t.is_empty() {
                                items.push(t);
                            }
                        }
                    }
                }
                consent_items = Some(items);
                accept
                    .click()
                    .await
                    .map_err(|e| err(format!("clicking accept: {e}")))?;
                self.wait_stale(&accept).await;
                continue;
            }

            if let Some(msg) = self.error_page().await {
                return Err(err(format!("Keycloak error page: {msg}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find_opt(&self, css: &str) -> Option<Element> {
        self.wd.find(Locator::Css(css)).await.ok()
    }

    async fn fill(&self, css: &str, value: &str) -> Result<()> {
        let el = self
            .wd
            .find(Locator::Css(css))
            .await
            .map_err(|e| Error::new("browser", format!("finding {css}: {e}")))?;
        el.clear()
            .await
            .map_err(|e| Error::new("browser", format!("clearing {css}: {e}")))?;
        el.send_keys(value)
            .await
            .map_err(|e| Error::new("browser", format!("typing into {css}: {e}")))
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.wd
            .find(Locator::Css(css))
            .await
            .map_err(|e| Error::new("browser", format!("finding {css}: {e}")))?
            .click()
            .await
            .map_err(|e| Error::new("browser", format!("clicking {css}: {e}")))
    }

    /// Wait (bounded) until `el` belongs to a page that is gone, i.e. the submit navigated.
    async fn wait_stale(&self, el: &Element) {
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            match el.tag_name().await {
                Err(e) if e.is_stale_element_reference() => return,
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Inline feedback on a login page (wrong password and the like).
    async fn page_feedback(&self) -> Option<String> {
        for css in ["#input-error", ".pf-v5-c-alert__title", ".kc-feedback-text"] {
            if let Some(el) = self.find_opt(css).await {
                if let Ok(t) = el.text().await {
                    if !t.trim().is_empty() {
                        return Some(t.trim().to_string());
                    }
                }
            }
        }
        None
    }

    /// The message of Keycloak's error page, if this is one.
    async fn error_page(&self) -> Option<String> {
        let el = self.find_opt("#kc-error-message").await?;
        Some(el.text().await.unwrap_or_default().trim().to_string())
    }

    /// End the session (Chromium quits) and stop chromedriver.
    pub async fn close(mut self) {
        if let Ok(()) = self.wd.clone().close().await {
            self.closed = true;
        }
        // Drop stops chromedriver and removes the profile.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            if let Some(id) = &self.session_id {
                delete_session_blocking(self.driver_port, id);
            }
        }
        // Exactly the chromedriver child this Browser started, by its PID.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile_dir);
    }
}

/// `DELETE /session/{id}` without an async runtime (Drop may run during a panic), so that
/// chromedriver quits Chromium before chromedriver itself is killed.
fn delete_session_blocking(port: u16, session: &str) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_ok() {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
}

fn same_endpoint(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path() == b.path()
}

/// A one-shot loopback HTTP listener for the OAuth redirect, as VS Code runs one: it binds
/// `127.0.0.1:<free port>`, answers the first request carrying `code` or `error` with a
/// small "you can close this window" page, and hands over that request's full URL.
pub struct LoopbackCallback {
    /// `http://127.0.0.1:<port>/`
    pub redirect_uri: String,
    pub port: u16,
    rx: Option<oneshot::Receiver<String>>,
    server: Option<Served>,
}

impl LoopbackCallback {
    pub async fn bind() -> Result<LoopbackCallback> {
        let (listener, port) = bind_loopback("callback").await?;
        let (tx, rx) = oneshot::channel::<String>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let handler = move |uri: axum::http::Uri| {
            let tx = tx.clone();
            async move {
                let query = uri.query().unwrap_or_default();
                let is_callback = url::form_urlencoded::parse(query.as_bytes())
                    .any(|(k, _)| k == "code" || k == "error");
                if !is_callback {
                    return (axum::http::StatusCode::NOT_FOUND, axum::response::Html(""));
                }
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(format!("http://127.0.0.1:{port}{uri}"));
                }
                (
                    axum::http::StatusCode::OK,
                    axum::response::Html(
                        "<!doctype html><title>Signed in</title><p id=\"done\">You can close this window.</p>",
                    ),
                )
            }
        };
        let app = axum::Router::new().fallback(handler);
        Ok(LoopbackCallback {
            redirect_uri: format!("http://127.0.0.1:{port}/"),
            port,
            rx: Some(rx),
            server: Some(Served::start(listener, app)),
        })
    }

    /// The full callback URL (with `code`, `state`, `iss`), once the browser has been sent here.
    pub async fn wait(&mut self, timeout: Duration) -> Result<String> {
        let rx = self
            .rx
            .take()
            .ok_or_else(|| Error::new("callback", "already received"))?;
        let url = tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| Error::new("callback", format!("no redirect within {timeout:?}")))?
            .map_err(|_| Error::new("callback", "listener stopped"))?;
        self.server = None;
        Ok(url)
    }
}

/// A listener on a free loopback port, and the port; `stage` names a failure.
pub async fn bind_loopback(stage: &'static str) -> Result<(tokio::net::TcpListener, u16)> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| Error::new(stage, format!("bind: {e}")))?;
    let port = listener.local_addr().expect("local addr").port();
    Ok((listener, port))
}

/// An axum app served on a listener until this is dropped.
pub struct Served(Option<oneshot::Sender<()>>);

impl Served {
    pub fn start(listener: tokio::net::TcpListener, app: axum::Router) -> Served {
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Served(Some(stop))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}
