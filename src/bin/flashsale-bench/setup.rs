//! Set-up and verification: the server to drive, the products and partner
//! of the run, and the invariant checks against the server's own state.

use crate::sale::Drained;
use crate::{Args, Flow, Sync};
use anyhow::Context;
use flashsale::client::{Client, ClientConfig, ClientTls};
use flashsale::protocol::{OrderId, OrderStatus, ProductId, Role};
use flashsale::server::{Config, Server, SyncMode};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// The server driven: one at `--addr`, or one embedded in this process.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    admin_user: String,
    admin_password: String,
    /// TLS to use for every connection, if any.
    tls: Option<ClientTls>,
    embedded: Option<Embedded>,
}

struct Embedded {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), flashsale::server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Target {
    /// Starts the embedded server, or takes `--addr`.
    pub async fn start(args: &Args) -> anyhow::Result<Self> {
        if !args.embedded {
            let addr = args.addr.to_string();
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
                addr: args.addr,
                admin_user: args.user.clone(),
                admin_password: args.password.clone(),
                tls,
                embedded: None,
            });
        }
        let dir = tempfile::TempDir::new()?;
        let mut config = Config::new(dir.path());
        config.sync = match args.sync {
            Sync::Always => SyncMode::Always,
            Sync::Relaxed => SyncMode::Relaxed,
        };
        if let Some(shards) = args.shards {
            config.shards = shards;
        }
        // The harness measures the server, not its abuse limits; the
        // per-buyer limit stays, as in production (many buyers never reach it).
        config.pay_rate_per_connection = None;
        config.pay_rate_per_partner = None;
        let server = Server::open(config).await?;
        let password = flashsale::server::demo::random_password();
        server
            .create_user("bench-admin", &password, Role::Admin)
            .await
            .map_err(|e| anyhow::anyhow!("creating the admin: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            admin_user: "bench-admin".into(),
            admin_password: password,
            tls: None,
            embedded: Some(Embedded {
                stop,
                task,
                _dir: dir,
            }),
        })
    }

    /// An admin client.
    pub async fn admin(&self) -> anyhow::Result<Client> {
        let config = ClientConfig {
            tls: self.tls.clone(),
            ..ClientConfig::default()
        };
        let client = Client::connect_with(self.addr, config)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        client
            .login(&self.admin_user, &self.admin_password)
            .await
            .context("admin login (--user/--password)")?;
        Ok(client)
    }

    /// Stops the embedded server.
    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(embedded) = self.embedded {
            let _ = embedded.stop.send(());
            embedded.task.await??;
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
    let mut connections = Vec::new();
    for _ in 0..args.connections {
        let config = ClientConfig {
            max_in_flight: args.pipeline.max(1),
            pay_attempts: 1,
            tls: target.tls.clone(),
            ..ClientConfig::default()
        };
        let client = Client::connect_with(target.addr, config).await?;
        client.login_api_key(&key).await?;
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

/// What the verification found.
pub struct Verdict {
    /// Each failed invariant, in words.
    pub violations: Vec<String>,
}

/// Checks the sale against the server's state.
pub async fn verify(
    args: &Args,
    target: &Target,
    stage: &Stage,
    drained: &Drained,
) -> anyhow::Result<Verdict> {
    let admin = target.admin().await?;
    let stats = admin.stats().await?;
    let mut violations = Vec::new();
    if args.duration.is_none() && drained.attempts != args.requests {
        violations.push(format!(
            "{} attempts were made, --requests asked for {}",
            drained.attempts, args.requests
        ));
    }
    let mut confirmed_qty: HashMap<ProductId, u64> = HashMap::new();
    for order in drained.accepted.values() {
        if order.status == OrderStatus::Confirmed {
            for line in &order.items {
                *confirmed_qty.entry(line.product_id).or_default() += u64::from(line.qty);
            }
        }
    }
    // With one-line orders, a product's demand beyond its stock must sell it out exactly.
    let exact = args.items == 1
        && args.flow == Flow::Buy
        && drained.unanswered == 0
        && drained.overloaded == 0;
    for id in &stage.products {
        let Some(product) = stats
            .products
            .iter()
            .map(|s| &s.product)
            .find(|p| p.id == *id)
        else {
            violations.push(format!("product {id} is missing from the server's stats"));
            continue;
        };
        let initial = stage.initial_stock[id];
        let sold = confirmed_qty.get(id).copied().unwrap_or(0);
        let supplied = i128::from(initial) + i128::from(product.restocked);
        if supplied - i128::from(product.stock) != i128::from(sold) {
            violations.push(format!(
                "product {id}: initial {initial} + restocked {} - final stock {} != confirmed qty {sold}",
                product.restocked, product.stock
            ));
        }
        if product.confirmed_qty != sold {
            violations.push(format!(
                "product {id}: server counts {} confirmed units, the answers {sold}",
                product.confirmed_qty
            ));
        }
        let demand = drained.demand.get(id).copied().unwrap_or(0);
        if exact && i128::from(sold) != i128::from(demand).min(supplied) {
            violations.push(format!(
                "product {id}: {sold} units confirmed, expected min(stock {initial}, demand {demand})"
            ));
        }
    }
    // Every accepted order exists exactly once on the server, with the outcome we were told.
    let partner = &stage.connections[0];
    let mut after = stage.orders_before;
    let mut seen = 0usize;
    loop {
        let page = partner.orders(after, 0).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for order in page {
            seen += 1;
            match drained.accepted.get(&order.idempotency_key) {
                Some(told) if told.id == order.id && told.status == order.status => {}
                Some(told) => violations.push(format!(
                    "order {} is {:?} on the server but was answered as {told:?}",
                    order.id, order.status
                )),
                None if drained.unanswered > 0 => {}
                None => {
                    violations.push(format!("order {} exists but was never answered", order.id))
                }
            }
        }
    }
    if seen < drained.accepted.len() {
        violations.push(format!(
            "{} orders were accepted but {seen} exist",
            drained.accepted.len()
        ));
    }
    Ok(Verdict { violations })
}
