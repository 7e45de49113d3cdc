//! Crash safety of the real `flashsale-server` binary: buyers pay while the
//! process is killed with SIGKILL at random moments, or stopped with SIGTERM;
//! after each restart every answer the server gave is still true.
//!
//! These tests live in the server package (not the root `tests/`) because
//! only here does cargo build the binary for them (`CARGO_BIN_EXE_*`).

use flashsale_client::protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderStatus, ProductId, Reply, Role, ServerFrame,
};
use flashsale_client::{Client, ClientConfig, ClientError};
use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::Command;
use uuid::Uuid;

mod process;
use process::storm::{self, Outcome, Storm};
use process::{free_addr, ServerProcess};

const ADMIN_PASSWORD: &str = "crash-admin-password";
const BUYER_PASSWORD: &str = "crash-buyer-password";
const BUYERS: usize = 6;
const IN_FLIGHT_PER_BUYER: usize = 8;

/// Starts the server for the crash tests on `dir` at `addr`.
async fn start_server(dir: &Path, addr: SocketAddr) -> ServerProcess {
    // The storm is a bot by design: the per-buyer pay limit would refuse most
    // of it and make verifying the intents take minutes.
    let args = ["--sync", "always", "--pay-rate-per-buyer", "off"];
    ServerProcess::start(dir, addr, &args, ADMIN_PASSWORD, "warn", true).await
}

/// Clients that report failures instead of retrying, so the test sees every
/// intent whose answer was lost and retries it itself after the restart.
fn no_retry() -> ClientConfig {
    ClientConfig {
        pay_attempts: 1,
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

async fn connect(addr: SocketAddr, user: &str, password: &str, config: ClientConfig) -> Client {
    let client = Client::connect_with(addr, config).await.expect("connect");
    client.login(user, password).await.expect("login");
    client
}

/// Every pay intent sent, and what the server answered.
#[derive(Default)]
struct Ledger {
    /// key → (buyer, lines) of every intent sent.
    sent: HashMap<Uuid, (usize, Vec<OrderLine>)>,
    /// key → order the server accepted for it.
    accepted: HashMap<Uuid, OrderInfo>,
}

/// Buyers send pipelined express orders until `stop` is set or the server goes away.
async fn pay_storm(
    buyers: &[Client],
    products: &[ProductId],
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
    seed: u64,
) {
    let mut tasks = Vec::new();
    for (b, buyer) in buyers.iter().enumerate() {
        for lane in 0..IN_FLIGHT_PER_BUYER {
            let (buyer, ledger, stop) = (buyer.clone(), Arc::clone(ledger), Arc::clone(stop));
            let products = products.to_vec();
            let mut rng = StdRng::seed_from_u64(seed ^ ((b * 100 + lane) as u64));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let process::storm::Attempt { key, lines, .. } =
                        process::storm::random_attempt(&mut rng, b, &products);
                    ledger
                        .lock()
                        .expect("ledger")
                        .sent
                        .insert(key, (b, lines.clone()));
                    match buyer.buy_with_key(lines, key).await {
                        Ok(placed) => {
                            ledger
                                .lock()
                                .expect("ledger")
                                .accepted
                                .insert(key, placed.order);
                        }
                        Err(ClientError::Server(_)) => {} // sold out and the like: no order
                        Err(_) => break,                  // the server is gone
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("storm task");
    }
}

/// Logs every buyer in (answers are not retried) and starts a pay storm in
/// the background; set the flag to end it.
async fn start_storm(
    addr: SocketAddr,
    names: &[String],
    products: &[ProductId],
    ledger: &Arc<Mutex<Ledger>>,
    seed: u64,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let buyers = futures_join(
        names
            .iter()
            .map(|n| connect(addr, n, BUYER_PASSWORD, no_retry())),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let (ledger, stop, products) = (Arc::clone(ledger), Arc::clone(&stop), products.to_vec());
        tokio::spawn(async move { pay_storm(&buyers, &products, &ledger, &stop, seed).await })
    };
    (stop, storm)
}

/// Checks every answer against the restarted server, retries the intents
/// whose answer was lost, and checks the stock invariant.
async fn verify(addr: SocketAddr, ledger: &Arc<Mutex<Ledger>>, buyer_names: &[String]) {
    let buyers: Vec<Client> = futures_join(
        buyer_names
            .iter()
            .map(|n| connect(addr, n, BUYER_PASSWORD, ClientConfig::default())),
    )
    .await;
    let (sent, accepted) = {
        let ledger = ledger.lock().expect("ledger");
        (ledger.sent.clone(), ledger.accepted.clone())
    };
    // Every accepted order is still there, with the same outcome.
    for (key, order) in &accepted {
        let (b, _) = sent[key];
        let stored = buyers[b]
            .order(order.id)
            .await
            .expect("an accepted order survives");
        assert_eq!(&stored, order, "an answered order changed after a crash");
    }
    // Retrying a lost answer with its key yields the stored order or a first decision.
    for (key, (b, lines)) in &sent {
        if accepted.contains_key(key) {
            continue;
        }
        match buyers[*b].buy_with_key(lines.clone(), *key).await {
            Ok(placed) => {
                ledger
                    .lock()
                    .expect("ledger")
                    .accepted
                    .insert(*key, placed.order);
            }
            Err(e) => assert!(e.code().is_some(), "retry failed: {e}"),
        }
    }
    // One order per key, and confirmed quantities match the stock.
    let mut keys = HashSet::new();
    let mut confirmed: HashMap<ProductId, u64> = HashMap::new();
    for buyer in &buyers {
        let mut after: Option<OrderId> = None;
        loop {
            let page = buyer.orders(after, 0).await.expect("orders");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for order in &page {
                assert!(
                    keys.insert(order.idempotency_key),
                    "two orders for one key: {order:?}"
                );
                if order.status == OrderStatus::Confirmed {
                    for line in &order.items {
                        *confirmed.entry(line.product_id).or_default() += u64::from(line.qty);
                    }
                }
            }
        }
    }
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    for product in admin
        .stats()
        .await
        .expect("stats")
        .products
        .into_iter()
        .map(|s| s.product)
    {
        let sold = confirmed.get(&product.id).copied().unwrap_or(0);
        assert_eq!(product.confirmed_qty, sold, "{product:?}");
        assert!(product.balances(), "{product:?}");
    }
}

async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

/// Creates the sale: two products and the buyers. Returns product ids and buyer names.
async fn set_up_sale(addr: SocketAddr) -> (Vec<ProductId>, Vec<String>) {
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let mut products = Vec::new();
    for (name, stock) in [("Drop", 60), ("Pair", 40)] {
        products.push(
            admin
                .create_product(name, 100, stock)
                .await
                .expect("product")
                .id,
        );
    }
    let mut names = Vec::new();
    for i in 0..BUYERS {
        let name = format!("crash{i}");
        admin
            .create_user(&name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("buyer");
        names.push(name);
    }
    (products, names)
}

async fn restock(addr: SocketAddr, products: &[ProductId], qty: u64) {
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    for id in products {
        admin.restock(*id, qty).await.expect("restock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_answered_order_and_never_oversells() {
    let dir = TempDir::new().expect("temp dir");
    let addr = free_addr();
    let mut server = start_server(dir.path(), addr).await;
    let (products, names) = set_up_sale(addr).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = StdRng::seed_from_u64(0xC0FFEE);
    for round in 0..4u64 {
        restock(addr, &products, 40).await;
        let (stop, storm) = start_storm(addr, &names, &products, &ledger, round).await;
        // The kill lands at a random moment of the storm.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..300))).await;
        server.kill().await;
        stop.store(true, Ordering::Relaxed);
        storm.await.expect("storm");
        server = start_server(dir.path(), addr).await;
        verify(addr, &ledger, &names).await;
    }
    let confirmed_any = ledger
        .lock()
        .expect("ledger")
        .accepted
        .values()
        .any(|o| o.status == OrderStatus::Confirmed);
    assert!(confirmed_any, "the storm confirmed orders before the kills");
    assert!(server.terminate().await.success());
}

/// Attempts each buyer keeps in flight on its connection in the SIGTERM test.
const WINDOW: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_pipelined_pays_in_flight_answers_every_attempt_and_confirms_nothing_unanswered(
) {
    let dir = TempDir::new().expect("temp dir");
    let addr = free_addr();
    let server = start_server(dir.path(), addr).await;
    let (products, names) = set_up_sale(addr).await;
    // Stock for every attempt: each is confirmed or, if the shutdown came
    // first, refused with ShuttingDown; anything else is a wrong answer.
    restock(addr, &products, 1_000_000).await;
    let mut storm = Storm::start(addr, &names, BUYER_PASSWORD, &products, WINDOW, 7).await;
    // The streams are in full flow: each buyer's window was answered once over.
    storm.wait_for_orders(BUYERS * WINDOW).await;
    // Marked first: answers after the mark came while SIGTERM was on its way
    // or being handled.
    storm.mark_signalled();
    server.signal_term().await;
    let answered = storm.finish().await;
    let status = server.wait().await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // Every attempt got an answer: a confirmed order (stock is ample) or
    // ShuttingDown. Checked after the restart below, so that a failure also
    // says whether the attempts without an answer were decided.
    let mut wrong = Vec::new();
    let mut answered_during_shutdown = 0;
    for stream in &answered {
        for a in stream {
            match &a.outcome {
                Outcome::Order(order) if order.status == OrderStatus::Confirmed => {
                    answered_during_shutdown += usize::from(a.after_signal);
                }
                Outcome::Refused(ErrorCode::ShuttingDown) => {}
                other => wrong.push(format!(
                    "{other:?}; answers on its connection: {}",
                    storm::summary(stream)
                )),
            }
        }
    }

    // After a restart, what was answered is what is stored.
    let server = start_server(dir.path(), addr).await;
    let mut buyers = Vec::new();
    for name in &names {
        buyers.push(connect(addr, name, BUYER_PASSWORD, ClientConfig::default()).await);
    }
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let comparison = storm::compare_stored(&buyers, &admin, &answered).await;
    drop((buyers, admin));
    assert!(server.terminate().await.success());
    comparison.assert_stored_as_answered();
    assert!(
        wrong.is_empty(),
        "{} attempts in flight at shutdown got a wrong answer, e.g. {}",
        wrong.len(),
        wrong[0]
    );
    assert!(
        answered_during_shutdown > 0,
        "no order was answered once SIGTERM was on its way: nothing was in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = TempDir::new().expect("temp dir");
    let first = start_server(dir.path(), free_addr()).await;
    let second = Command::new(env!("CARGO_BIN_EXE_flashsale-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", &free_addr().to_string()])
        .output()
        .await
        .expect("run a second server");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use"), "a clear message, got: {stderr}");
    assert!(first.terminate().await.success());
}

/// A partner pipelines far ahead and reads its answers a moment late; the
/// server is stopped meanwhile. Every order it decided must reach the
/// client (or, for what it never read, its Closing frame).
///
/// Fails today, every run: the connection is closed while requests it never
/// read are still in its socket, so the kernel resets it (RST) and throws
/// away the answers (and the Closing frame) not yet delivered; hundreds of
/// confirmed, durable orders then have no answer. A close that lingers
/// (shut down writing, read and discard until the client closes or a
/// timeout) would deliver them. Ignored until `net/connection.rs` does that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_every_answer_to_a_pipelining_client_that_reads_late() {
    let dir = TempDir::new().expect("temp dir");
    let addr = free_addr();
    // At most 64 requests of a connection in flight: the server stops
    // reading this client once 64 answers wait to be written.
    let args = [
        "--sync",
        "always",
        "--pay-rate-per-buyer",
        "off",
        "--pay-rate-per-connection",
        "off",
        "--max-in-flight",
        "64",
    ];
    let server = ServerProcess::start(dir.path(), addr, &args, ADMIN_PASSWORD, "warn", true).await;
    let (products, names) = set_up_sale(addr).await;
    restock(addr, &products, 1_000_000).await;
    // A client with a small receive buffer sends far more requests than
    // the socket buffers hold answers for, and does not read yet.
    let (mut reader, mut writer) =
        storm::raw_login(addr, &names[0], BUYER_PASSWORD, Some(4096)).await;
    const REQUESTS: u64 = 2000;
    let mut rng = StdRng::seed_from_u64(3);
    let attempts: Vec<storm::Attempt> = (0..REQUESTS)
        .map(|_| storm::random_attempt(&mut rng, 0, &products))
        .collect();
    let frames: Vec<_> = (1..=REQUESTS)
        .zip(&attempts)
        .map(|(id, attempt)| storm::buy_frame(id, attempt))
        .collect();
    let writing = tokio::spawn(async move {
        for frame in frames {
            if writer.send(frame).await.is_err() {
                break;
            }
        }
    });
    // Once the server has decided a window of them, stop it, then read.
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let decided = tokio::time::timeout(Duration::from_secs(60), async {
        while admin.stats().await.expect("stats").orders_confirmed < 64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(decided.is_ok(), "the server decided no window of orders");
    drop(admin);
    server.signal_term().await;
    let mut outcomes: HashMap<u64, storm::Outcome> = HashMap::new();
    let mut closing = None;
    let mut ended = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(60), reader.next())
        .await
        .expect("the server sends or closes within 60 s")
    {
        match frame {
            Ok(ServerFrame::Response(response)) => {
                let outcome = match response.result {
                    _ if closing.is_some() => Outcome::Lost("answered after Closing".into()),
                    Ok(Reply::Accepted(order)) => Outcome::Order(order),
                    Ok(other) => Outcome::Lost(format!("{other:?}")),
                    Err(e) => Outcome::Refused(e.code),
                };
                assert!(
                    outcomes.insert(response.id, outcome).is_none(),
                    "answered twice"
                );
            }
            Ok(ServerFrame::Closing(reason)) => closing = Some(reason.code),
            Ok(_) => {}
            Err(e) => {
                ended = Some(e.to_string());
                break;
            }
        }
    }
    writing.await.expect("writer");
    let status = server.wait().await;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    // What the server never read is answered by its Closing frame.
    let answered: Vec<storm::Answered> = (1..=REQUESTS)
        .zip(attempts)
        .map(|(id, attempt)| {
            let outcome = outcomes.remove(&id).unwrap_or(match (closing, &ended) {
                (Some(code), _) => Outcome::Refused(code),
                (None, Some(e)) => Outcome::Lost(format!("read failed: {e}")),
                (None, None) => Outcome::Lost("closed without a Closing frame".into()),
            });
            storm::Answered {
                attempt,
                outcome,
                after_signal: true,
            }
        })
        .collect();
    let server = start_server(dir.path(), addr).await;
    let buyer = connect(addr, &names[0], BUYER_PASSWORD, ClientConfig::default()).await;
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let comparison = storm::compare_stored(&[buyer], &admin, &[answered]).await;
    drop(admin);
    assert!(server.terminate().await.success());
    comparison.assert_stored_as_answered();
}

/// Buyers making the cart changes of the cart crash test.
const CART_BUYERS: usize = 40;
/// Cart changes each of them makes, one after the other.
const CART_CHANGES: usize = 10;

/// Issue 12: an answered `CartAdd` was lost when the server was killed
/// within about half a second after it (sled flushes in the background).
/// Cart changes are now answered once they are on disk (group commit): many
/// buyers change their carts at once, the server is killed with SIGKILL as
/// soon as the last answer arrives, and after a restart every cart is as
/// its last answer said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_cart_changes_are_answered_keeps_every_answered_cart() {
    let dir = TempDir::new().expect("temp dir");
    let addr = free_addr();
    let args = [
        "--sync",
        "always",
        "--login-rate-per-peer",
        "off",
        "--login-rate-per-account",
        "off",
    ];
    let server = ServerProcess::start(dir.path(), addr, &args, ADMIN_PASSWORD, "warn", true).await;
    let admin = connect(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let mut products = Vec::new();
    for name in ["Cart A", "Cart B", "Cart C"] {
        let made = admin.create_product(name, 100, 100_000).await;
        products.push(made.expect("product").id);
    }
    let names: Vec<String> = (0..CART_BUYERS).map(|i| format!("carter{i}")).collect();
    for name in &names {
        let made = admin.create_user(name, BUYER_PASSWORD, Role::Buyer).await;
        made.expect("buyer");
    }
    let buyers = futures_join(
        names
            .iter()
            .map(|n| connect(addr, n, BUYER_PASSWORD, no_retry())),
    )
    .await;
    let changes = buyers.iter().enumerate().map(|(b, buyer)| {
        let (buyer, products) = (buyer.clone(), products.clone());
        tokio::spawn(async move {
            let mut last = None;
            for change in 0..CART_CHANGES {
                let product = products[(b + change) % products.len()];
                let qty = u32::try_from(1 + change % 3).expect("small");
                last = Some(buyer.cart_add(product, qty).await.expect("cart change"));
            }
            last.expect("at least one change")
        })
    });
    let answered: Vec<_> = futures::future::join_all(changes)
        .await
        .into_iter()
        .map(|joined| joined.expect("cart task"))
        .collect();
    server.kill().await;
    drop((admin, buyers));
    let server = ServerProcess::start(dir.path(), addr, &args, ADMIN_PASSWORD, "warn", true).await;
    let mut lost = 0;
    for (name, view) in names.iter().zip(&answered) {
        let buyer = connect(addr, name, BUYER_PASSWORD, ClientConfig::default()).await;
        let stored = buyer.cart().await.expect("cart after restart");
        if &stored != view {
            lost += 1;
        }
    }
    assert_eq!(
        lost, 0,
        "{lost} of {CART_BUYERS} carts lost answered changes in a SIGKILL"
    );
    server.terminate().await;
}

/// Flags that make the materialiser checkpoint, and truncate the journal,
/// after almost every journal record.
const CHECKPOINT_OFTEN: [&str; 4] = ["--checkpoint-records", "1", "--checkpoint-interval", "0"];

/// Starts the crash tests' server with `extra` flags and `env`.
async fn start_server_with(
    dir: &Path,
    addr: SocketAddr,
    extra: &[&str],
    env: &[(&str, &str)],
) -> ServerProcess {
    let mut args = vec!["--sync", "always", "--pay-rate-per-buyer", "off"];
    args.extend_from_slice(extra);
    ServerProcess::launch(&process::Launch {
        data_dir: dir,
        addr,
        args: &args,
        admin_password: ADMIN_PASSWORD,
        rust_log: "warn",
        show_stderr: true,
        file_size_limit: None,
        env,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_checkpoints_and_journal_truncations_run_loses_no_answered_order() {
    let dir = TempDir::new().expect("temp dir");
    let addr = free_addr();
    let mut server = start_server_with(dir.path(), addr, &CHECKPOINT_OFTEN, &[]).await;
    let (products, names) = set_up_sale(addr).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = StdRng::seed_from_u64(0xC4EC);
    for round in 0..5u64 {
        restock(addr, &products, 200).await;
        let (stop, storm) = start_storm(addr, &names, &products, &ledger, round + 100).await;
        // A checkpoint follows almost every record: the kill lands in one,
        // or in a truncation, or between them, at a random moment.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        server.kill().await;
        stop.store(true, Ordering::Relaxed);
        storm.await.expect("storm");
        server = start_server_with(dir.path(), addr, &CHECKPOINT_OFTEN, &[]).await;
        verify(addr, &ledger, &names).await;
    }
    assert!(server.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_checkpoint_loses_no_answered_order() {
    // Checkpoints every 300 records: a truncation then deletes more than one
    // batch of records, so "truncation-first-batch" stops it midway.
    let every_300 = [
        "--checkpoint-records",
        "300",
        "--checkpoint-interval",
        "3600",
    ];
    for point in [
        "checkpoint-tables-synced",
        "checkpoint-head-written",
        "checkpoint-synced",
        "truncation-first-batch",
    ] {
        let dir = TempDir::new().expect("temp dir");
        let addr = free_addr();
        let env = [("FLASHSALE_CRASH_AT", point)];
        let server = start_server_with(dir.path(), addr, &every_300, &env).await;
        let (products, names) = set_up_sale(addr).await;
        restock(addr, &products, 1_000_000).await;
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (stop, storm) = start_storm(addr, &names, &products, &ledger, 7).await;
        // The storm runs until the server aborts at the crash point.
        let status = server.wait().await;
        assert!(!status.success(), "{point}: the server aborted ({status})");
        stop.store(true, Ordering::Relaxed);
        storm.await.expect("storm");
        assert!(
            !ledger.lock().expect("ledger").accepted.is_empty(),
            "{point}: orders were answered before the crash"
        );
        let server = start_server_with(dir.path(), addr, &every_300, &[]).await;
        verify(addr, &ledger, &names).await;
        assert!(server.terminate().await.success(), "{point}");
    }
}
