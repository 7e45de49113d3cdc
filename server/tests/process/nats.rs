//! Real `nats-server` processes (Debian's package) for the cluster tests:
//! three JetStream nodes clustered on loopback, on free ports, each with a
//! store dir in a temp dir; stopped when dropped.
//!
//! Without `nats-server` on PATH a cluster test prints that it was skipped
//! and passes, so `cargo test` passes on a machine without it; with
//! `FLASHSALE_REQUIRE_NATS=1` (set by `.ci/run`) it fails instead.

use super::free_addr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// True when the cluster tests can run; false (after saying so) when they
/// are skipped. Panics when `FLASHSALE_REQUIRE_NATS=1` and there is no
/// `nats-server`.
pub fn available(test: &str) -> bool {
    let found = std::process::Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        std::env::var("FLASHSALE_REQUIRE_NATS").as_deref() != Ok("1"),
        "{test}: nats-server is not on PATH and FLASHSALE_REQUIRE_NATS=1 \
         (apt-get install nats-server)"
    );
    eprintln!("{test}: SKIPPED: nats-server is not on PATH (apt-get install nats-server)");
    false
}

/// One `nats-server` of the cluster.
pub struct NatsNode {
    /// Its server name.
    pub name: String,
    /// Where clients connect.
    pub client: SocketAddr,
    /// Where the other nodes route to it.
    cluster: SocketAddr,
    store: PathBuf,
    child: Option<Child>,
}

/// Three clustered JetStream nodes.
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsNode>,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until each accepts connections.
    pub async fn start() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let mut nodes: Vec<NatsNode> = (0..3)
            .map(|i| NatsNode {
                name: format!("nats{i}"),
                client: free_addr(),
                cluster: free_addr(),
                store: dir.path().join(format!("nats{i}")),
                child: None,
            })
            .collect();
        let routes = routes(&nodes);
        for node in &mut nodes {
            node.spawn(&routes);
        }
        for node in &nodes {
            node.wait_listening().await;
        }
        Self { nodes, _dir: dir }
    }

    /// The client URLs, comma-separated, as `--cluster` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A NATS client connected to the cluster (any node).
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| {
                format!("nats://{}", n.client)
                    .parse()
                    .expect("NATS address")
            })
            .collect();
        async_nats::connect(addrs).await.expect("connect to NATS")
    }

    /// `kill -9` one node.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    /// Starts a killed node again on its ports and store.
    pub async fn restart(&mut self, i: usize) {
        let routes = routes(&self.nodes);
        self.nodes[i].spawn(&routes);
        self.nodes[i].wait_listening().await;
    }
}

fn routes(nodes: &[NatsNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("nats://{}", n.cluster))
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsNode {
    fn spawn(&mut self, routes: &str) {
        std::fs::create_dir_all(&self.store).expect("store dir");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.client.port().to_string())
            .args([
                "-n",
                &self.name,
                "--cluster_name",
                "flashsale-test",
                "--cluster",
            ])
            .arg(format!("nats://{}", self.cluster))
            .args(["--routes", routes, "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
    }

    async fn wait_listening(&self) {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while tokio::net::TcpStream::connect(self.client).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{} listens within 30 s", self.name);
    }

    /// Its JetStream store dir.
    pub fn store(&self) -> &Path {
        &self.store
    }
}
