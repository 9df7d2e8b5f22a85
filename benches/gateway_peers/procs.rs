//! The measured processes: each a child of the bench with its output in a log file, its CPU
//! time (`/proc/PID/stat` utime+stime) and memory (`/proc/PID/status` VmRSS, VmHWM) read by
//! pid, and killed (by its own handle) when dropped, also when the bench panics.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; the child binds it right after).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

pub struct Proc {
    pub name: &'static str,
    child: Child,
    pub pid: u32,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`, stdin a pipe this value holds
    /// (the bench's own upstream exits when it closes, even if the bench is SIGKILLed).
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let out = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let pid = child.id();
        Proc { name, child, pid }
    }

    /// Waits until `addr` accepts connections; panics if the process exits or `timeout` passes.
    pub fn wait_listening(&mut self, addr: SocketAddr, timeout: Duration) {
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited during start-up: {status}", self.name);
            }
            assert!(
                started.elapsed() < timeout,
                "{} not listening on {addr} after {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// CPU seconds used so far (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        cpu_seconds_of(&stat, clock_ticks())
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        (status_kib(&status, "VmRSS:"), status_kib(&status, "VmHWM:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime (fields 14 and 15, after the parenthesised command name) in seconds.
pub fn cpu_seconds_of(stat: &str, ticks_per_second: f64) -> f64 {
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / ticks_per_second,
        _ => f64::NAN,
    }
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fixed upstream, run by this bench binary itself as a child process: every request gets
/// the same small JSON-RPC result (the body is read first). Exits when its stdin closes.
pub fn serve_upstream(addr: &str) {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("upstream runtime");
    rt.block_on(upstream_loop(addr));
}

/// The upstream's answer to every request.
pub const UPSTREAM_BODY: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}]}}"#;

async fn upstream_loop(addr: &str) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("upstream bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
                    let _ = req.into_body().collect().await;
                    let mut resp = hyper::Response::new(Full::new(bytes::Bytes::from_static(
                        UPSTREAM_BODY.as_bytes(),
                    )));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}
