//! A loopback TCP port-forward, standing in for what routes the McpServer's public URL to its
//! Service in a cluster (Ingress / Service port → targetPort): every connection accepted on
//! `listen` is piped to `target`, bytes unchanged, both directions, until either side closes.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::RunnerError;

/// A running forward; stops accepting and closes its open connections when dropped.
pub struct PortForward {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    task: JoinHandle<()>,
}

impl PortForward {
    /// Binds `listen` (refusing with [`RunnerError::PortBusy`] if it is taken) and starts
    /// forwarding to `target`. `target` is connected per accepted connection, so it need not
    /// listen yet.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Result<Self, RunnerError> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                RunnerError::PortBusy {
                    owner: format!("port-forward {listen} → {target}"),
                    port: listen.port(),
                }
            } else {
                RunnerError::Spawn {
                    container: format!("port-forward {listen} → {target}"),
                    message: e.to_string(),
                }
            }
        })?;
        let listen = listener.local_addr().unwrap_or(listen);
        let task = tokio::spawn(async move {
            // Dropped (and so aborted) together with the accept loop.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        connections.spawn(async move {
                            match TcpStream::connect(target).await {
                                Ok(mut outbound) => {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                                Err(e) => tracing::warn!(%target, error = %e, "port-forward: target refused the connection"),
                            }
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(PortForward {
            listen,
            target,
            task,
        })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_both_ways_and_refuses_a_busy_port() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&[buf, *b"pong"].concat()).await.unwrap();
        });
        let fwd = PortForward::start("127.0.0.1:0".parse().unwrap(), target)
            .await
            .unwrap();
        let mut c = TcpStream::connect(fwd.listen).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut out = [0u8; 8];
        c.read_exact(&mut out).await.unwrap();
        assert_eq!(&out, b"pingpong");

        let busy = PortForward::start(fwd.listen, target).await;
        assert!(
            matches!(busy, Err(RunnerError::PortBusy { port, .. }) if port == fwd.listen.port())
        );
        drop(fwd);
    }
}
