//! Live verification (issue 17) on the test bed, with the McpServer's pod really running through
//! the local pod runner (kwok hands out pod IPs in 127.244.0.0/16, so the operator reaches a
//! local pod at its pod IP, as it would in a cluster).
//!
//! - `proxy_server_everything_is_verified_then_refuted_when_its_upstream_stops`: before the pod
//!   runs, `Verified=Unknown/StatusUnreachable`; with server-everything behind the gateway,
//!   `Verified=True` and `status.mcp` equal to what an independent client (rmcp) learns from
//!   server-everything itself (serverInfo name and version, tool count, capabilities); re-checks
//!   write nothing; the MCP process stopped by its PID → `Verified=False/UpstreamUnreachable`,
//!   `Ready` still `True` and the last facts kept.
//! - `native_mode_checks_metadata_and_challenge_and_leaves_the_handshake_unknown`: the native
//!   example server not running → `Verified=False/UpstreamUnreachable`; running →
//!   `Verified=Unknown/HandshakeNotProbed` (its metadata and 401 challenge checked).

use crate::harness::*;
use crate::walkthrough::{images, profile_dir};

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use localpod::cluster::{start_server_pod, LocalServer, RunOptions};
use localpod::images::{native_example_image, SERVER_EVERYTHING_IMAGE};
use localpod::RunnerError;
use mcp_keycloak_operator::api::McpServer;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

const SERVER: &str = "live";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn mcp_server(image: &str, mode: &str, port: u16, url: &str) -> McpServer {
    resource(
        SERVER,
        json!({"image": image, "port": port, "url": url, "policyRef": {"name": "acme"},
               "scopes": ["mcp:tools"], "auth": {"mode": mode}}),
    )
}

/// The pod of `live`, run locally; waits while another test's pod holds the gateway ports.
async fn start_pod(s: &Scenario) -> LocalServer {
    let images = images().await;
    let options = RunOptions::new(&profile_dir().join("verify-logs").join(&s.ns));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match start_server_pod(&s.client, &s.ns, SERVER, &images, &options).await {
            Ok(server) => return server,
            Err(RunnerError::PortBusy { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("starting the pod of {}/{SERVER}: {e}", s.ns),
        }
    }
}

/// What server-everything says of itself to an independent MCP client (rmcp), directly.
async fn ask_directly(port: u16) -> (Value, usize) {
    let url = format!("http://127.0.0.1:{port}/mcp");
    let transport = StreamableHttpClientTransport::from_uri(url);
    let info = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("verify-oracle", "1"),
    );
    let service = info.serve(transport).await.expect("rmcp initialize");
    let peer = serde_json::to_value(service.peer_info().expect("initialize result")).unwrap();
    let tools = service
        .list_all_tools()
        .await
        .expect("rmcp tools/list")
        .len();
    let _ = service.cancel().await;
    (peer, tools)
}

fn pid_of(server: &LocalServer, container: &str) -> u32 {
    let pids = server.pod.pids();
    pids.iter()
        .find(|(c, _)| c == container)
        .map(|(_, p)| *p)
        .expect("container pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_server_everything_is_verified_then_refuted_when_its_upstream_stops() {
    let s = Scenario::with_resync("verify-proxy", Duration::from_secs(3)).await;
    s.create(&s.seed_policy().await).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{}/mcp", free_port());
    s.create(&mcp_server(SERVER_EVERYTHING_IMAGE, "Proxy", port, &url))
        .await;
    s.wait_ready::<McpServer>(SERVER).await;
    // The fake pod's IP is on loopback, but no process answers there yet.
    let (reason, _) = s
        .wait_condition::<McpServer>(SERVER, "Verified", "Unknown")
        .await;
    assert!(
        matches!(reason.as_str(), "StatusUnreachable" | "NoPodsReady"),
        "{reason}"
    );
    let pods: Api<Pod> = s.api();
    let pod = pods
        .list(&ListParams::default().labels(&format!("mcpauth.dev/server={SERVER}")))
        .await
        .unwrap();
    let ip = pod.items[0]
        .status
        .as_ref()
        .and_then(|st| st.pod_ip.clone())
        .unwrap_or_default();
    assert!(
        ip.starts_with("127.244."),
        "kwok's pod IP {ip} is on loopback"
    );

    let _ports = GATEWAY_PORTS.lock().await;
    let local = start_pod(&s).await;
    let (_, message) = s
        .wait_condition::<McpServer>(SERVER, "Verified", "True")
        .await;
    println!("Verified=True: {message}");
    let gateway_doc: Value = reqwest::get("http://127.0.0.1:9090/mcp-status")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("gateway /mcp-status: {gateway_doc}");

    let (peer, tools) = ask_directly(port).await;
    let status = s.get::<McpServer>(SERVER).await.status.unwrap();
    let mcp = status.mcp.clone().expect("status.mcp");
    println!("status.mcp: {}", serde_json::to_string(&mcp).unwrap());
    let info = mcp.server_info.clone().unwrap();
    assert_eq!(info.name, peer["serverInfo"]["name"].as_str().unwrap());
    assert_eq!(
        info.version,
        peer["serverInfo"]["version"].as_str().unwrap()
    );
    assert_eq!(mcp.tool_count, Some(tools as i64));
    assert!(tools > 0);
    // rmcp's typed model keeps the capabilities it knows; each of them is in ours.
    let caps: Vec<&String> = peer["capabilities"].as_object().unwrap().keys().collect();
    println!(
        "capabilities: rmcp sees {caps:?}, status.mcp {:?}",
        mcp.capabilities
    );
    assert!(caps.iter().all(|c| mcp.capabilities.contains(c)) && caps.len() >= 3);
    let version = mcp.protocol_version.clone().unwrap();
    assert!(
        ["2025-03-26", "2025-06-18", "2025-11-25"].contains(&version.as_str()),
        "{version}"
    );
    assert_eq!(gateway_doc["resource"], url.as_str());

    // Re-checks of an unchanged server (3 s resyncs) write nothing.
    let rv = |m: McpServer| m.metadata.resource_version.unwrap();
    let before = rv(s.get::<McpServer>(SERVER).await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        rv(s.get::<McpServer>(SERVER).await),
        before,
        "a re-check wrote the McpServer"
    );

    // The MCP server dies: the gateway's next probe (within its 30 s period) says so.
    let mcp_pid = pid_of(&local, "mcp");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &mcp_pid.to_string()])
        .status();
    assert!(killed.unwrap().success());
    let message = s
        .wait_reason::<McpServer>(SERVER, "Verified", "UpstreamUnreachable")
        .await;
    println!("after stopping the upstream (pid {mcp_pid}): Verified=False UpstreamUnreachable: {message}");
    assert!(message.contains("cannot connect"), "{message}");
    let status = s.get::<McpServer>(SERVER).await.status.unwrap();
    assert_eq!(status.mcp, Some(mcp), "the last verified facts stay");
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "Verified does not feed Ready");
    local.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mode_checks_metadata_and_challenge_and_leaves_the_handshake_unknown() {
    let s = Scenario::with_resync("verify-native", Duration::from_secs(3)).await;
    s.create(&s.seed_policy().await).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    s.create(&mcp_server(&native_example_image(), "Native", port, &url))
        .await;
    s.wait_ready::<McpServer>(SERVER).await;
    let message = s
        .wait_reason::<McpServer>(SERVER, "Verified", "UpstreamUnreachable")
        .await;
    println!("no process: Verified=False UpstreamUnreachable: {message}");

    let local = start_pod(&s).await;
    let (reason, message) = s
        .wait_condition::<McpServer>(SERVER, "Verified", "Unknown")
        .await;
    println!("running: Verified=Unknown {reason}: {message}");
    assert_eq!(reason, "HandshakeNotProbed");
    assert!(s
        .get::<McpServer>(SERVER)
        .await
        .status
        .unwrap()
        .mcp
        .is_none());
    local.stop().await;
}
