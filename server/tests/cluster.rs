//! Cluster mode with real processes: three `nats-server` nodes and two
//! `flashsale-server` nodes on loopback. Under a pay storm from many
//! connections, a fault is made (the leader killed with SIGKILL, several
//! times in a row, or paused past its lease with SIGSTOP; a NATS node
//! killed; a standby's data dir wiped); afterwards:
//!
//! * every acknowledged order exists once, with the answered outcome;
//! * every unanswered intent, retried with its key, yields at most one order;
//! * no order has a key nobody sent; per product the confirmed orders add up
//!   to `confirmed_qty` and `initial + restocked − confirmed == stock ≥ 0`;
//! * buyers' sessions resumed on the new leader (they paid after the fault
//!   without logging in again) and a cart filled before the fault is intact.
//!
//! Each test prints its pause per fault: from the last answer before the
//! fault to the first answer after it.
//!
//! Skipped (passing, with a note) without `nats-server` on PATH, unless
//! `FLASHSALE_REQUIRE_NATS=1`.

mod process;

use flashsale_client::protocol::{
    ClientCodec, ClientFrame, ErrorCode, Hello, OrderInfo, OrderLine, OrderStatus, ProductId, Role,
    ServerFrame, DEFAULT_MAX_REPLY_FRAME_LEN, PROTOCOL_VERSION,
};
use flashsale_client::{Client, ClientConfig};
use futures::{SinkExt, StreamExt};
use process::nats::{self, NatsCluster};
use process::{free_addr, Launch, ServerProcess};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio_util::codec::{FramedRead, FramedWrite};
use uuid::Uuid;

const ADMIN_PASSWORD: &str = "cluster-admin-password";
const BUYER_PASSWORD: &str = "cluster-buyer-password";
const BUYERS: usize = 6;
const LANES_PER_BUYER: usize = 4;
/// A small stock that sells out during the test, and large ones that do not.
const STOCKS: [u64; 3] = [60, 100_000, 100_000];
/// Orders acknowledged before a fault, and after it before the next step.
const ORDERS_PER_PHASE: usize = 150;
/// Longest a phase may take before the test reports the cluster stuck.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);

/// One `flashsale-server` node.
struct Node {
    id: String,
    addr: SocketAddr,
    dir: TempDir,
    process: Option<ServerProcess>,
}

/// Three NATS nodes and the flashsale nodes on them.
struct Cluster {
    nats: NatsCluster,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start(nodes: usize) -> Self {
        let nats = NatsCluster::start().await;
        let mut cluster = Self {
            nats,
            nodes: (0..nodes)
                .map(|i| Node {
                    id: format!("node{i}"),
                    addr: free_addr(),
                    dir: TempDir::new().expect("temp dir"),
                    process: None,
                })
                .collect(),
        };
        for i in 0..nodes {
            cluster.start_node(i).await;
        }
        cluster
    }

    async fn start_node(&mut self, i: usize) {
        let urls = self.nats.urls();
        let node = &self.nodes[i];
        let addr = node.addr.to_string();
        let args = [
            "--cluster",
            urls.as_str(),
            "--node-id",
            node.id.as_str(),
            "--advertise",
            addr.as_str(),
            "--lease-ttl",
            "2",
            // Snapshots (and trims) every second: a node restarted after a
            // kill (its data dir discarded) or wiped restores one.
            "--snapshot-interval",
            "1",
            "--pay-rate-per-buyer",
            "off",
        ];
        let process = ServerProcess::launch(&Launch {
            data_dir: node.dir.path(),
            addr: node.addr,
            args: &args,
            admin_password: ADMIN_PASSWORD,
            rust_log: &log_filter(),
            show_stderr: true,
            file_size_limit: None,
            env: &[],
        })
        .await;
        self.nodes[i].process = Some(process);
    }

    /// Every node's address, as clients take them.
    fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that answers `Hello` with `Welcome` (only the leader does).
    async fn leader(&self) -> usize {
        self.leader_other_than(usize::MAX).await
    }

    /// The node that leads, probing only nodes other than `not`.
    async fn leader_other_than(&self, not: usize) -> usize {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if i != not && node.process.is_some() && welcomes(node.addr).await {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new leader within {PHASE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts again every node that exited by itself (a leader that
    /// stepped down); their indexes.
    async fn restart_exited(&mut self) -> Vec<usize> {
        let mut restarted = Vec::new();
        for i in 0..self.nodes.len() {
            let exited = self.nodes[i]
                .process
                .as_mut()
                .is_some_and(ServerProcess::has_exited);
            if exited {
                self.nodes[i].process = None;
                self.start_node(i).await;
                restarted.push(i);
            }
        }
        restarted
    }

    async fn kill(&mut self, i: usize) {
        if let Some(process) = self.nodes[i].process.take() {
            process.kill().await;
        }
    }
}

/// True when the node at `addr` answers `Hello` with `Welcome` (a raw
/// handshake: the client library would follow a standby's hint to the
/// leader).
async fn welcomes(addr: SocketAddr) -> bool {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let (read, write) = stream.into_split();
    let codec = || ClientCodec::with_max_frame_len(DEFAULT_MAX_REPLY_FRAME_LEN);
    let mut writer = FramedWrite::new(write, codec());
    let mut reader = FramedRead::new(read, codec());
    let hello = ClientFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "leader-probe".into(),
    });
    if writer.send(hello).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), reader.next()).await,
        Ok(Some(Ok(ServerFrame::Welcome(_))))
    )
}

/// Buyers' clients: they ride through a failover by themselves.
fn riding() -> ClientConfig {
    ClientConfig {
        pay_attempts: 12,
        request_timeout: Duration::from_secs(20),
        failover_timeout: Duration::from_secs(60),
        ..ClientConfig::default()
    }
}

/// Logs in to whichever node leads, waiting for the demo admin to exist
/// (the first leader creates it just after it takes over).
async fn admin(cluster: &Cluster) -> Client {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let client = Client::connect_nodes(&cluster.addrs(), riding())
            .await
            .expect("connect to the cluster");
        match client.login("admin", ADMIN_PASSWORD).await {
            Ok(_) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the admin cannot log in: {e}"),
        }
    }
}

/// Everything sent and answered, with when each acknowledgement arrived.
#[derive(Default)]
struct Ledger {
    sent: HashMap<Uuid, (usize, Vec<OrderLine>)>,
    acknowledged: HashMap<Uuid, OrderInfo>,
    /// Final refusals (sold out): no order.
    refused: HashSet<Uuid>,
    /// No answer (the retries ran out): the outcome is unknown.
    unanswered: HashSet<Uuid>,
    /// When each acknowledgement arrived, and whose.
    answers: Vec<(Instant, usize)>,
}

impl Ledger {
    fn acknowledged_count(&self) -> usize {
        self.acknowledged.len()
    }
}

/// A pay storm in progress.
struct Storm {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Storm {
    async fn start(buyers: &[Client], products: &[ProductId]) -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (b, buyer) in buyers.iter().enumerate() {
            for lane in 0..LANES_PER_BUYER {
                let (buyer, ledger, stop) = (buyer.clone(), Arc::clone(&ledger), Arc::clone(&stop));
                let products = products.to_vec();
                let mut rng = StdRng::seed_from_u64((b * 100 + lane) as u64);
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let lines = vec![OrderLine {
                            product_id: products[rng.gen_range(0..products.len())],
                            qty: rng.gen_range(1..=2),
                        }];
                        let key = Uuid::new_v4();
                        lock(&ledger).sent.insert(key, (b, lines.clone()));
                        let answer = buyer.buy_with_key(lines, key).await;
                        let mut ledger = lock(&ledger);
                        match answer {
                            Ok(placed) => {
                                ledger.answers.push((Instant::now(), b));
                                ledger.acknowledged.insert(key, placed.order);
                            }
                            Err(e) if e.code().is_some_and(|c| !c.is_retryable()) => {
                                assert_eq!(e.code(), Some(ErrorCode::SoldOut), "{e}");
                                ledger.refused.insert(key);
                            }
                            Err(_) => {
                                ledger.unanswered.insert(key);
                            }
                        }
                    }
                }));
            }
        }
        Self {
            ledger,
            stop,
            tasks,
        }
    }

    /// Waits until `more` further orders are acknowledged.
    async fn wait_for(&self, more: usize) {
        let target = lock(&self.ledger).acknowledged_count() + more;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while lock(&self.ledger).acknowledged_count() < target {
            assert!(
                Instant::now() < deadline,
                "{more} more orders not acknowledged within {PHASE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The pause buyers saw: the longest gap between two acknowledgements
    /// (as the clients received them), from a second before the fault to
    /// now (called once the storm is going again). Answers already on their
    /// way when the fault struck do not hide the gap after them.
    fn pause_after(&self, fault: Instant) -> Duration {
        let ledger = lock(&self.ledger);
        let from = fault - Duration::from_secs(1);
        let mut times: Vec<Instant> = ledger
            .answers
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= from)
            .collect();
        times.sort();
        assert!(times.iter().any(|t| *t > fault), "answers after the fault");
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// The buyers that had an order acknowledged after `fault`.
    fn buyers_answered_after(&self, fault: Instant) -> HashSet<usize> {
        lock(&self.ledger)
            .answers
            .iter()
            .filter(|(t, _)| *t > fault)
            .map(|(_, b)| *b)
            .collect()
    }

    /// Waits until every buyer has had an order acknowledged after `fault`:
    /// each one's session resumed on the new leader. (A buyer's lanes find
    /// the new leader on their own schedule, so a count of orders alone does
    /// not prove it.)
    async fn wait_for_every_buyer_after(&self, fault: Instant) {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let answered = self.buyers_answered_after(fault);
            if answered.len() == BUYERS {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only buyers {answered:?} of {BUYERS} resumed within {PHASE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("storm lane");
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .expect("the lanes are done")
            .into_inner()
            .expect("ledger")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster with products and logged-in buyers, and one buyer's cart
/// holding a line (checked after the faults).
struct Sale {
    products: Vec<ProductId>,
    buyers: Vec<Client>,
    cart_product: ProductId,
}

async fn set_up_sale(cluster: &Cluster) -> Sale {
    let admin = admin(cluster).await;
    let mut products = Vec::new();
    for (i, stock) in STOCKS.iter().enumerate() {
        let product = admin
            .create_product(&format!("P{i}"), 100, *stock)
            .await
            .expect("create product");
        products.push(product.id);
    }
    let mut buyers = Vec::new();
    for b in 0..BUYERS {
        let name = format!("buyer{b}");
        admin
            .create_user(&name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("create buyer");
        let client = Client::connect_nodes(&cluster.addrs(), riding())
            .await
            .expect("connect");
        client.login(&name, BUYER_PASSWORD).await.expect("login");
        buyers.push(client);
    }
    let cart_product = products[1];
    buyers[0].cart_add(cart_product, 3).await.expect("cart add");
    Sale {
        products,
        buyers,
        cart_product,
    }
}

/// The checks every test ends with (see the module docs).
async fn verify(cluster: &Cluster, sale: &Sale, mut ledger: Ledger) {
    let admin = admin(cluster).await;
    // Retry every unanswered intent with its own key.
    let unanswered: Vec<Uuid> = ledger.unanswered.iter().copied().collect();
    for key in unanswered {
        let (b, lines) = ledger.sent[&key].clone();
        match sale.buyers[b].buy_with_key(lines, key).await {
            Ok(placed) => {
                ledger.acknowledged.insert(key, placed.order);
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::SoldOut), "retry of {key}: {e}"),
        }
    }
    let mut orders = Vec::new();
    let mut after = None;
    loop {
        let page = admin
            .query_orders(after, 0, None, None)
            .await
            .expect("query orders");
        orders.extend(page.orders);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut by_key: HashMap<Uuid, &OrderInfo> = HashMap::new();
    for order in &orders {
        assert!(
            ledger.sent.contains_key(&order.idempotency_key),
            "order {} has a key nobody sent",
            order.id
        );
        let twice = by_key.insert(order.idempotency_key, order);
        assert!(
            twice.is_none(),
            "two orders for key {}",
            order.idempotency_key
        );
    }
    for (key, answered) in &ledger.acknowledged {
        let stored = by_key
            .get(key)
            .unwrap_or_else(|| panic!("acknowledged order {} was lost", answered.id));
        assert_eq!(stored.id, answered.id, "key {key}");
        assert_eq!(stored.status, answered.status, "order {}", answered.id);
        assert_eq!(stored.items, answered.items, "order {}", answered.id);
    }
    for key in &ledger.refused {
        assert!(!by_key.contains_key(key), "a refused intent has an order");
    }
    for product in admin.products().await.expect("products") {
        let confirmed: u64 = orders
            .iter()
            .filter(|o| o.status == OrderStatus::Confirmed)
            .flat_map(|o| &o.items)
            .filter(|l| l.product_id == product.id)
            .map(|l| u64::from(l.qty))
            .sum();
        assert_eq!(confirmed, product.confirmed_qty, "product {}", product.id);
        assert!(
            product.balances(),
            "product {} does not balance: {product:?}",
            product.id
        );
    }
    let cart = sale.buyers[0].cart().await.expect("cart");
    assert!(
        cart.lines
            .iter()
            .any(|l| l.product_id == sale.cart_product && l.qty == 3),
        "the cart survived: {cart:?}"
    );
    println!(
        "verified: {} orders, {} acknowledged, {} sold-out refusals",
        orders.len(),
        ledger.acknowledged.len(),
        ledger.refused.len()
    );
}

/// Waits until `ClusterStatus` lists every node, one of them the leader,
/// none behind the stream (the storm is over).
async fn standbys_caught_up(cluster: &Cluster) {
    let admin = admin(cluster).await;
    let leader = &cluster.nodes[cluster.leader().await].id;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let report = admin
            .cluster_status()
            .await
            .expect("cluster status")
            .expect("a cluster");
        assert_eq!(&report.leader, leader);
        let leaders = report.nodes.iter().filter(|n| n.leader).count();
        // Snapshots are taken every second here, and the stream trimmed
        // behind them: status shows both.
        let caught_up = report.nodes.len() == cluster.nodes.len()
            && leaders == 1
            && report.nodes.iter().all(|n| n.lag == 0)
            && report.snapshot.is_some()
            && report.stream_first > 1;
        if caught_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standbys did not catch up: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cluster of two flashsale nodes with a sale and a storm going (its
/// first orders acknowledged); `None` (the test is skipped) without
/// `nats-server`.
async fn storm_on_a_cluster(test: &str) -> Option<(Cluster, Sale, Storm)> {
    if !nats::available(test) {
        return None;
    }
    let cluster = Cluster::start(2).await;
    let sale = set_up_sale(&cluster).await;
    let storm = Storm::start(&sale.buyers, &sale.products).await;
    storm.wait_for(ORDERS_PER_PHASE).await;
    Some((cluster, sale, storm))
}

/// Kills the leader `kills` times under load, restarting each killed node
/// as a standby, then verifies.
async fn leader_kills(test: &str, kills: usize) {
    let Some((mut cluster, sale, storm)) = storm_on_a_cluster(test).await else {
        return;
    };
    let mut pauses = Vec::new();
    for _ in 0..kills {
        let leader = cluster.leader().await;
        let fault = Instant::now();
        cluster.kill(leader).await;
        storm.wait_for(ORDERS_PER_PHASE).await;
        storm.wait_for_every_buyer_after(fault).await;
        let pause = storm.pause_after(fault);
        pauses.push(pause);
        cluster.start_node(leader).await;
    }
    let ledger = storm.stop().await;
    println!("{test}: pauses after each leader kill: {pauses:?}");
    verify(&cluster, &sale, ledger).await;
    standbys_caught_up(&cluster).await;
    for pause in &pauses {
        assert!(*pause < Duration::from_secs(10), "pause {pause:?} ≥ 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_takes_over_when_the_leader_is_killed_and_no_acknowledged_order_is_lost() {
    leader_kills(
        "a_standby_takes_over_when_the_leader_is_killed_and_no_acknowledged_order_is_lost",
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_leader_kills_in_a_row_lose_nothing_and_sell_nothing_twice() {
    leader_kills(
        "three_leader_kills_in_a_row_lose_nothing_and_sell_nothing_twice",
        3,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_is_fenced_when_it_wakes_and_steps_down() {
    let test = "a_leader_paused_past_its_lease_is_fenced_when_it_wakes_and_steps_down";
    let Some((mut cluster, sale, storm)) = storm_on_a_cluster(test).await else {
        return;
    };
    let old = cluster.leader().await;
    let paused = cluster.nodes[old].process.take().expect("running");
    let fault = Instant::now();
    paused.signal("STOP").await;
    let new = cluster.leader_other_than(old).await;
    assert_ne!(new, old);
    // Awake again, the old leader finds its lease gone or its next publish
    // refused, answers nothing it decided meanwhile, and stops by itself.
    paused.signal("CONT").await;
    let status = paused.wait().await;
    assert!(
        !status.success(),
        "the fenced leader stepped down: {status}"
    );
    storm.wait_for(ORDERS_PER_PHASE).await;
    let pause = storm.pause_after(fault);
    cluster.start_node(old).await;
    storm.wait_for(ORDERS_PER_PHASE).await;
    let ledger = storm.stop().await;
    println!("{test}: pause after SIGSTOP of the leader: {pause:?}");
    verify(&cluster, &sale, ledger).await;
    assert!(pause < Duration::from_secs(10), "pause {pause:?} ≥ 10 s");
}

/// The stream's first sequence, once a snapshot let the standby trim it
/// (it keeps everything until then).
async fn trimmed_stream_first(cluster: &Cluster) -> u64 {
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        if let Ok(stream) = js.get_stream("FLASHSALE").await {
            if let Ok(info) = stream.get_info().await {
                if info.state.first_sequence > 1 {
                    return info.state.first_sequence;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stream was not trimmed within {PHASE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_standby_restores_the_snapshot_catches_up_and_takes_over() {
    let test = "a_wiped_standby_restores_the_snapshot_catches_up_and_takes_over";
    let Some((mut cluster, sale, storm)) = storm_on_a_cluster(test).await else {
        return;
    };
    let leader = cluster.leader().await;
    let standby = 1 - leader;
    // The stream no longer starts at 1: the wiped node cannot replay it
    // from the beginning, only restore the snapshot and follow from there.
    let first = trimmed_stream_first(&cluster).await;
    println!("{test}: stream trimmed to start at {first}");
    cluster.kill(standby).await;
    let dir = cluster.nodes[standby].dir.path().to_owned();
    std::fs::remove_dir_all(&dir).expect("wipe the standby's data dir");
    cluster.start_node(standby).await;
    storm.wait_for(ORDERS_PER_PHASE).await;
    let fault = Instant::now();
    cluster.kill(leader).await;
    assert_eq!(cluster.leader().await, standby, "the wiped standby leads");
    storm.wait_for(ORDERS_PER_PHASE).await;
    let pause = storm.pause_after(fault);
    cluster.start_node(leader).await;
    let ledger = storm.stop().await;
    println!("{test}: pause after the leader kill: {pause:?}");
    verify(&cluster, &sale, ledger).await;
    standbys_caught_up(&cluster).await;
    assert!(pause < Duration::from_secs(10), "pause {pause:?} ≥ 10 s");
}

/// The name of the NATS node leading the cluster's stream.
async fn stream_leader(cluster: &Cluster) -> String {
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let leader = match js.get_stream("FLASHSALE").await {
            Ok(mut stream) => stream
                .info()
                .await
                .ok()
                .and_then(|info| info.cluster.as_ref().and_then(|c| c.leader.clone())),
            Err(_) => None,
        };
        if let Some(leader) = leader {
            return leader;
        }
        assert!(Instant::now() < deadline, "the stream has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_streams_nats_leader_then_a_follower_loses_no_acknowledged_order() {
    let test = "killing_the_streams_nats_leader_then_a_follower_loses_no_acknowledged_order";
    let Some((mut cluster, sale, storm)) = storm_on_a_cluster(test).await else {
        return;
    };
    let mut pauses = Vec::new();
    for target in ["stream leader", "follower"] {
        let leader = stream_leader(&cluster).await;
        let victim = cluster
            .nats
            .nodes
            .iter()
            .position(|n| (n.name == leader) == (target == "stream leader"))
            .expect("a NATS node to kill");
        let fault = Instant::now();
        cluster.nats.kill(victim).await;
        println!(
            "{test}: stream leader {leader}; killed {}",
            cluster.nats.nodes[victim].name
        );
        storm.wait_for(ORDERS_PER_PHASE).await;
        pauses.push((target, storm.pause_after(fault)));
        // A flashsale leader whose publish failed stepped down and exited:
        // its supervisor (here, the test) starts it again.
        let restarted = cluster.restart_exited().await;
        println!("{test}: NATS {target} killed; flashsale nodes restarted: {restarted:?}");
        cluster.nats.restart(victim).await;
        storm.wait_for(ORDERS_PER_PHASE).await;
    }
    let ledger = storm.stop().await;
    println!("{test}: pauses: {pauses:?}");
    verify(&cluster, &sale, ledger).await;
    for (target, pause) in &pauses {
        assert!(
            *pause < Duration::from_secs(10),
            "{target}: pause {pause:?} ≥ 10 s"
        );
    }
}

/// The servers' `RUST_LOG`: `FLASHSALE_TEST_LOG` when set (for example
/// `flashsale_server::cluster=info` to see each takeover), else `warn`.
fn log_filter() -> String {
    std::env::var("FLASHSALE_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// What the publisher's fencing relies on, checked against the real
/// nats-server: a message expecting another last sequence or last message
/// id is refused, a later pipelined message chained on a refused one's id
/// is refused too (even when its expected sequence matches the new end by
/// coincidence), and a resend of a stored message is answered as a
/// duplicate with its sequence, before the expectations are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_refuses_a_stale_leaders_chained_messages_and_answers_resends_as_duplicates() {
    use async_nats::jetstream::{self, message::PublishMessage, stream};
    let test =
        "the_stream_refuses_a_stale_leaders_chained_messages_and_answers_resends_as_duplicates";
    if !nats::available(test) {
        return;
    }
    let nats = NatsCluster::start().await;
    let js = jetstream::new(nats.client().await);
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let made = js
            .get_or_create_stream(stream::Config {
                name: "FENCE".into(),
                subjects: vec!["fence".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        if made.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no stream: {made:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let message = |id: &str, last_seq: u64, last_id: Option<&str>| {
        let mut m = PublishMessage::build()
            .payload(id.to_owned().into())
            .message_id(id)
            .expected_last_sequence(last_seq);
        if let Some(last_id) = last_id {
            m = m.expected_last_message_id(last_id);
        }
        m
    };
    let publish = |m: PublishMessage| {
        let js = js.clone();
        async move {
            match js.send_publish("fence", m).await {
                Ok(ack) => ack
                    .await
                    .map(|a| (a.sequence, a.duplicate))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    // Leader A's first message, then leader B's takes the next place.
    assert_eq!(publish(message("a1", 0, None)).await, Ok((1, false)));
    assert_eq!(publish(message("b1", 1, None)).await, Ok((2, false)));
    // A, pipelining, sends a2 (expects 1) and a3 (expects 2, after a2):
    // a2 is refused, and a3, whose expected sequence is now the stream's
    // end, is refused on its chained id.
    assert!(publish(message("a2", 1, Some("a1"))).await.is_err());
    assert!(publish(message("a3", 2, Some("a2"))).await.is_err());
    // B's resend of b1, whose answer it lost, is a duplicate of sequence 2,
    // though its expectation no longer holds; B goes on.
    assert_eq!(publish(message("b1", 1, None)).await, Ok((2, true)));
    assert_eq!(publish(message("b2", 2, Some("b1"))).await, Ok((3, false)));
}

/// Holds replicate like orders: after the leader is killed, the new leader
/// has every hold (a live one is paid there, the ledger with held units
/// balances), and one whose deadline passed during the failover is expired
/// by the new leader before it decides anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_survive_a_leader_kill_and_the_new_leader_expires_the_due_ones() {
    let test = "holds_survive_a_leader_kill_and_the_new_leader_expires_the_due_ones";
    if !nats::available(test) {
        return;
    }
    let mut cluster = Cluster::start(2).await;
    let admin = admin(&cluster).await;
    let product = admin
        .create_product("Held", 100, 10)
        .await
        .expect("product")
        .id;
    admin
        .create_user("holder", BUYER_PASSWORD, Role::Buyer)
        .await
        .expect("buyer");
    let buyer = Client::connect_nodes(&cluster.addrs(), riding())
        .await
        .expect("connect");
    buyer.login("holder", BUYER_PASSWORD).await.expect("login");
    let lines = |qty| {
        vec![OrderLine {
            product_id: product,
            qty,
        }]
    };
    let long = buyer.hold(lines(3), None).await.expect("hold").order;
    let short = buyer.hold(lines(2), Some(1_000)).await.expect("hold").order;
    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    let paid = buyer
        .pay_hold(long.id, "gw-cluster-1")
        .await
        .expect("the new leader has the hold");
    assert_eq!(paid.status, OrderStatus::Confirmed);
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let status = buyer.order(short.id).await.expect("order").status;
        if status == OrderStatus::Expired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the short hold is still {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let figures = admin.product(product).await.expect("product");
    assert!(figures.balances(), "{figures:?}");
    assert_eq!(
        (figures.stock, figures.held, figures.confirmed_qty),
        (7, 0, 3)
    );
}
