//! Set-up: the server to drive (one at `--addr`, or one embedded in this
//! process through the testkit), and the products, partner and carts of the
//! run. The checks afterwards are in `verify.rs`.

use crate::{Args, Durability, Flow};
use anyhow::Context;
use flashsale::client::{Client, ClientConfig, ClientTls};
use flashsale::protocol::{OrderId, ProductId, Role};
use flashsale::server::{Config, SyncMode};
use flashsale_testkit::TestServer;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

/// The server driven: one at `--addr`, or one embedded in this process.
pub struct Target {
    /// Where it listens: every node of a cluster, comma-separated.
    pub addr: String,
    admin_user: String,
    admin_password: String,
    /// TLS to use for every connection, if any.
    tls: Option<ClientTls>,
    embedded: Option<Embedded>,
}

/// The embedded server and its data dir (removed when dropped).
struct Embedded {
    server: TestServer,
    _dir: tempfile::TempDir,
}

impl Target {
    /// Starts the embedded server, or takes `--addr`.
    pub async fn start(args: &Args) -> anyhow::Result<Self> {
        if !args.embedded {
            let addr = args.addr.clone();
            let tls = match &args.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(ClientTls::for_addr(&addr, Some(&pem))?)
                }
                None if args.tls => Some(ClientTls::for_addr(&addr, None)?),
                None => None,
            };
            return Ok(Self {
                addr: args.addr.clone(),
                admin_user: args.user.clone(),
                admin_password: args.password.clone(),
                tls,
                embedded: None,
            });
        }
        let dir = tempfile::TempDir::new()?;
        let mut config = Config::new(dir.path());
        config.sync = match args.sync {
            Durability::Always => SyncMode::Always,
            Durability::Relaxed => SyncMode::Relaxed,
        };
        if let Some(shards) = args.shards {
            config.shards = shards;
        }
        // The harness measures the server, not its abuse limits; the
        // per-buyer limit stays, as in production (many buyers never reach it).
        config.pay_rate_per_connection = None;
        config.pay_rate_per_partner = None;
        // One partner makes every buyer reference and logs in once.
        config.new_buyers_per_partner = None;
        config.login_rate_per_account = None;
        config.login_rate_per_peer = None;
        let password = flashsale::server::demo::random_password();
        let server = TestServer::launch(
            config,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            "bench-admin",
            &password,
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting the embedded server: {e}"))?;
        Ok(Self {
            addr: server.addr.to_string(),
            admin_user: "bench-admin".into(),
            admin_password: password,
            tls: None,
            embedded: Some(Embedded { server, _dir: dir }),
        })
    }

    /// An admin client.
    pub async fn admin(&self) -> anyhow::Result<Client> {
        let config = ClientConfig {
            tls: self.tls.clone(),
            ..ClientConfig::default()
        };
        let client = Client::connect_nodes(&self.addr, config)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        client
            .login(&self.admin_user, &self.admin_password)
            .await
            .context("admin login (--user/--password)")?;
        Ok(client)
    }

    /// `connections` admin clients of one session (one login, the others
    /// resume it: logins are rate-limited), each allowing `in_flight`
    /// requests at once.
    pub async fn admin_connections(
        &self,
        connections: usize,
        in_flight: usize,
    ) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::with_capacity(connections);
        let mut token = None;
        for _ in 0..connections {
            let config = ClientConfig {
                max_in_flight: in_flight.max(1),
                tls: self.tls.clone(),
                ..ClientConfig::default()
            };
            let client = Client::connect_nodes(&self.addr, config)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            match &token {
                None => {
                    let session = client
                        .login(&self.admin_user, &self.admin_password)
                        .await
                        .context("admin login (--user/--password)")?;
                    token = Some(session.token);
                }
                Some(token) => {
                    client.resume(token).await?;
                }
            }
            clients.push(client);
        }
        Ok(clients)
    }

    /// Stops the embedded server.
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(embedded) = self.embedded {
            embedded
                .server
                .try_stop()
                .await
                .map_err(|e| anyhow::anyhow!("stopping the embedded server: {e}"))?;
        }
        Ok(())
    }
}

/// What the set-up made.
pub struct Stage {
    /// The run's products, in order (product 1 is the hot one).
    pub products: Vec<ProductId>,
    /// Their stock at the start.
    pub initial_stock: HashMap<ProductId, u64>,
    /// One partner client per connection, logged in.
    pub connections: Vec<Client>,
    /// The newest order id before the sale.
    pub orders_before: Option<OrderId>,
}

/// Creates the run's products and partner, logs in every connection and,
/// for `--flow pay`, fills the carts.
pub async fn stage(args: &Args, target: &Target) -> anyhow::Result<Stage> {
    let admin = target.admin().await?;
    let run = format!("{}-{}", args.seed, std::process::id());
    let mut products = Vec::new();
    let mut initial_stock = HashMap::new();
    for i in 0..args.products {
        let product = admin
            .create_product(&format!("bench-{run}-{i}"), 100, args.stock)
            .await
            .map_err(|e| anyhow::anyhow!("creating a product: {e}"))?;
        initial_stock.insert(product.id, product.stock);
        products.push(product.id);
    }
    let partner = format!("bench-partner-{run}");
    admin
        .create_user(
            &partner,
            &flashsale::server::demo::random_password(),
            Role::Partner,
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the partner: {e}"))?;
    let key = admin
        .create_api_key(&partner)
        .await
        .map_err(|e| anyhow::anyhow!("issuing an API key: {e}"))?
        .key;
    // One login (the server rate-limits logins per account and per
    // address), then every other connection resumes its session.
    let mut connections = Vec::new();
    let mut token = None;
    for _ in 0..args.connections {
        let config = ClientConfig {
            // `--flow hold`: each lane's hold may have its payment in
            // flight too.
            max_in_flight: args.pipeline.max(1) * if args.flow == Flow::Hold { 2 } else { 1 },
            pay_attempts: 1,
            tls: target.tls.clone(),
            ..ClientConfig::default()
        };
        let client = Client::connect_nodes(&target.addr, config).await?;
        match &token {
            None => token = Some(client.login_api_key(&key).await?.token),
            Some(token) => {
                client.resume(token).await?;
            }
        }
        connections.push(client);
    }
    if args.flow == Flow::Pay {
        fill_carts(args, &connections, &products).await?;
    }
    let orders_before = connections[0].orders(None, 1).await?.last().map(|o| o.id);
    Ok(Stage {
        products,
        initial_stock,
        connections,
        orders_before,
    })
}

/// Puts each buyer's order lines in its cart (the same lines the sale will pay).
async fn fill_carts(
    args: &Args,
    connections: &[Client],
    products: &[ProductId],
) -> anyhow::Result<()> {
    let buyers: Vec<usize> = (0..args.buyers).collect();
    let chunks = buyers.chunks(buyers.len().div_ceil(connections.len()).max(1));
    let mut tasks = Vec::new();
    for (chunk, client) in chunks.zip(connections) {
        let (chunk, client, products) = (chunk.to_vec(), client.clone(), products.to_vec());
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            for buyer in chunk {
                let handle = client.acting_for(crate::sale::buyer_ref(buyer));
                for line in crate::sale::lines_for(&args, &products, buyer as u64) {
                    // The stock check may refuse once demand passes stock; that buyer's pay will say so.
                    let _ = handle.cart_add(line.product_id, line.qty).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}
