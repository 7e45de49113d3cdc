//! [`TestServer`]: a real server running in this process.

use crate::BoxError;
use flashsale_client::{Client, ClientConfig, ClientTls};
use flashsale_protocol::Role;
use flashsale_server::{Config, PasswordHashing, Server, ServerError};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// User name of the admin every server started by the panicking
/// constructors ([`TestServer::start`] and the like) has.
pub const ADMIN_USER: &str = "admin";

/// Password of that admin.
pub const ADMIN_PASSWORD: &str = "admin-password";

/// Password given to every buyer made by [`TestServer::buyer`].
pub const BUYER_PASSWORD: &str = "buyer-password";

/// The configuration tests use: cheap password hashing, a few shards, and
/// none of the per-account, per-partner and per-address rates and caps that
/// a test from one address making hundreds of buyers would trip (the tests
/// of each limit set it themselves); everything else as in production.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::new(data_dir);
    config.password_hashing = PasswordHashing::insecure_fast_for_tests();
    config.shards = 4;
    // Tests buy in bursts from one buyer; the tests of the limit set it themselves.
    config.pay_rate_per_buyer = None;
    config.pay_rate_per_partner = None;
    config.login_rate_per_account = None;
    config.login_rate_per_peer = None;
    config.new_buyers_per_partner = None;
    config.max_connections_per_peer = config.max_connections;
    config
}

/// A server running in this process, serving on a spawned task of the
/// current tokio runtime until [`TestServer::stop`] (or until the runtime
/// ends).
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data dir.
    pub data_dir: PathBuf,
    admin_user: String,
    admin_password: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    /// TLS for this server's clients, when it serves TLS.
    tls: Option<ClientTls>,
}

impl TestServer {
    /// Starts a server with [`test_config`] on a fresh temp dir, kept alive
    /// by the returned `TempDir`.
    ///
    /// # Panics
    /// When the server cannot start; so do the other `start` functions.
    pub async fn start() -> (Self, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        let server = Self::start_in(dir.path()).await;
        (server, dir)
    }

    /// Starts a server with [`test_config`] on `data_dir`, creating the
    /// admin account if missing.
    pub async fn start_in(data_dir: &Path) -> Self {
        Self::start_with(test_config(data_dir)).await
    }

    /// Starts a server with `config` on 127.0.0.1 (any free port), creating
    /// the admin account if missing.
    pub async fn start_with(config: Config) -> Self {
        Self::start_at(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a TLS server with `config` (whose `tls` is set); its clients
    /// trust `ca_pem` and expect the name `localhost`.
    pub async fn start_with_tls(config: Config, ca_pem: &[u8]) -> Self {
        let mut server = Self::start_with(config).await;
        server.tls = Some(ClientTls::with_ca_pem("localhost", ca_pem).expect("client tls"));
        server
    }

    /// Starts a server with `config` listening on `addr` (port 0: any free
    /// port), creating the admin account ([`ADMIN_USER`],
    /// [`ADMIN_PASSWORD`]) if missing.
    pub async fn start_at(config: Config, addr: SocketAddr) -> Self {
        Self::launch(config, addr, ADMIN_USER, ADMIN_PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("starting the test server: {e}"))
    }

    /// Opens the data dir of `config`, creates the admin account
    /// `admin_user` with `admin_password` when the data dir has no account
    /// yet, binds `addr` and serves.
    ///
    /// # Errors
    /// When the data dir cannot be opened, the admin cannot be created or
    /// `addr` cannot be bound.
    pub async fn launch(
        config: Config,
        addr: SocketAddr,
        admin_user: &str,
        admin_password: &str,
    ) -> Result<Self, BoxError> {
        let data_dir = config.data_dir.clone();
        let server = Server::open(config).await?;
        if server.is_empty() {
            server
                .create_user(admin_user, admin_password, Role::Admin)
                .await
                .map_err(|e| format!("creating the admin: {e}"))?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stop.await;
        }));
        Ok(Self {
            addr,
            data_dir,
            admin_user: admin_user.to_owned(),
            admin_password: admin_password.to_owned(),
            shutdown: Some(shutdown),
            task: Some(task),
            tls: None,
        })
    }

    /// The admin's user name and password.
    pub fn admin_credentials(&self) -> (&str, &str) {
        (&self.admin_user, &self.admin_password)
    }

    /// Shuts the server down gracefully and waits until its data dir is closed.
    ///
    /// # Panics
    /// When the shutdown was not clean.
    pub async fn stop(self) {
        self.try_stop().await.expect("clean shutdown");
    }

    /// Shuts the server down gracefully and waits until its data dir is closed.
    ///
    /// # Errors
    /// When the server's task panicked or the server failed (a journal write).
    pub async fn try_stop(mut self) -> Result<(), BoxError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
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
            .login(&self.admin_user, &self.admin_password)
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
