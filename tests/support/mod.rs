//! Test support: a real server on 127.0.0.1:0 with a real sled data dir in a
//! temp dir, and helpers to make accounts and clients.

#![allow(dead_code)]

pub mod proxy;

use flashsale::client::{Client, ClientConfig, ClientError, ClientTls};
use flashsale::protocol::{ErrorCode, OrderInfo, OrderStatus, ProductId, ProductInfo, Role};
use flashsale::server::{Config, PasswordHashing, Server};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Password of the admin every test server has.
pub const ADMIN_PASSWORD: &str = "admin-password";

/// Password given to every buyer made by [`TestServer::buyer`].
pub const BUYER_PASSWORD: &str = "buyer-password";

/// A server running in this process.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), flashsale::server::ServerError>>>,
    /// TLS for this server's clients, when it serves TLS.
    tls: Option<ClientTls>,
}

/// The configuration tests use: cheap password hashing, a few shards, no
/// per-buyer pay rate limit.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::new(data_dir);
    config.password_hashing = PasswordHashing::insecure_fast_for_tests();
    config.shards = 4;
    // Tests buy in bursts from one buyer; the tests of the limit set it themselves.
    config.pay_rate_per_buyer = None;
    config
}

impl TestServer {
    /// Starts a server on a fresh data dir (kept alive by the returned `TempDir`).
    pub async fn start() -> (Self, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        let server = Self::start_in(dir.path()).await;
        (server, dir)
    }

    /// Starts a server on `data_dir`, creating the admin account if missing.
    pub async fn start_in(data_dir: &Path) -> Self {
        Self::start_with(test_config(data_dir)).await
    }

    /// Starts a server with `config`, creating the admin account if missing.
    pub async fn start_with(config: Config) -> Self {
        Self::start_at(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a TLS server with `config` (whose `tls` is set); its clients
    /// trust `ca_pem` and expect the name `localhost`.
    pub async fn start_with_tls(config: Config, ca_pem: &[u8]) -> Self {
        let mut server = Self::start_with(config).await;
        server.tls = Some(ClientTls::with_ca_pem("localhost", ca_pem).expect("client tls"));
        server
    }

    /// Starts a server with `config` listening on `addr` (port 0: any free port).
    pub async fn start_at(config: Config, addr: SocketAddr) -> Self {
        let data_dir = config.data_dir.clone();
        let server = Server::open(config).await.expect("open server");
        if server.is_empty() {
            server
                .create_user("admin", ADMIN_PASSWORD, Role::Admin)
                .await
                .expect("create admin");
        }
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stop.await;
        }));
        Self {
            addr,
            data_dir,
            shutdown: Some(shutdown),
            task: Some(task),
            tls: None,
        }
    }

    /// Shuts the server down gracefully and waits until its data dir is closed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("clean shutdown");
        }
    }

    /// A connected client without a session.
    pub async fn client(&self) -> Client {
        let config = ClientConfig {
            tls: self.tls.clone(),
            ..ClientConfig::default()
        };
        Client::connect_with(self.addr, config)
            .await
            .expect("connect")
    }

    /// A client logged in as the admin.
    pub async fn admin(&self) -> Client {
        let client = self.client().await;
        client
            .login("admin", ADMIN_PASSWORD)
            .await
            .expect("admin login");
        client
    }

    /// Creates buyer `name` (password [`BUYER_PASSWORD`]) and returns a client logged in as it.
    pub async fn buyer(&self, admin: &Client, name: &str) -> Client {
        admin
            .create_user(name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("create buyer");
        let client = self.client().await;
        client
            .login(name, BUYER_PASSWORD)
            .await
            .expect("buyer login");
        client
    }
}

/// Creates partner account `name` and returns an API key for it.
pub async fn partner_key(admin: &Client, name: &str) -> String {
    admin
        .create_user(name, "partner-password", Role::Partner)
        .await
        .expect("create partner");
    admin.create_api_key(name).await.expect("api key").key
}

/// Creates a product and returns it.
pub async fn product(admin: &Client, name: &str, stock: u64) -> ProductInfo {
    admin
        .create_product(name, 100, stock)
        .await
        .expect("create product")
}

/// The code of a refused request; panics on success or a non-server error.
pub fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server refusal: {e}")),
        Ok(value) => panic!("expected a refusal, got {value:?}"),
    }
}

/// What a pay attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and confirmed.
    Confirmed(OrderInfo),
    /// Accepted, then rejected by the sequencer.
    Rejected(OrderInfo, ErrorCode),
    /// Refused at intake without an order.
    Refused(ErrorCode),
}

impl Outcome {
    /// Sorts a pay or buy result into an outcome.
    pub fn of(result: Result<flashsale::client::PlacedOrder, ClientError>) -> Self {
        match result {
            Ok(placed) => match placed.order.status {
                OrderStatus::Confirmed => Self::Confirmed(placed.order),
                OrderStatus::Rejected { code, .. } => Self::Rejected(placed.order.clone(), code),
                other => panic!("unexpected status {other:?}"),
            },
            Err(e) => Self::Refused(e.code().unwrap_or_else(|| panic!("pay failed: {e}"))),
        }
    }

    /// True when confirmed.
    pub fn is_confirmed(&self) -> bool {
        matches!(self, Self::Confirmed(_))
    }

    /// True when sold out, at intake or by the sequencer.
    pub fn is_sold_out(&self) -> bool {
        matches!(
            self,
            Self::Rejected(_, ErrorCode::SoldOut) | Self::Refused(ErrorCode::SoldOut)
        )
    }
}

/// The live stock of a product.
pub async fn stock_of(client: &Client, id: ProductId) -> u64 {
    client.product(id).await.expect("get product").stock
}
