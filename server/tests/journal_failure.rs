//! The journal's write-failure path, on a real disk and a real process:
//! the `flashsale-server` binary runs under a file-size limit
//! (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored) a little above its data file's
//! size, and buyers pay until the data file would grow past it, so sled's
//! write fails with `EFBIG`. No mock: the failure is the kernel's.
//!
//! Checked: the orders of the batch that could not be written are answered
//! `Internal`, never `Confirmed` (and nothing is confirmed after it on a
//! connection); the server stops with a failure exit status rather than
//! carrying on; after a restart without the limit every order answered
//! `Confirmed` is there as answered, nothing answered `ShuttingDown` or left
//! unanswered became an order, the stock balances, and an attempt answered
//! `Internal` (which may be on disk all the same, see below) is resolved by a
//! retry with its key: one order per key.

use flashsale_client::protocol::{ErrorCode, OrderInfo, OrderStatus, ProductId, Role};
use flashsale_client::{Client, ClientConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use tempfile::TempDir;
use uuid::Uuid;

mod process;
use process::storm::{self, Outcome, Storm};
use process::{free_addr, largest_file, Launch, ServerProcess};

const ADMIN_PASSWORD: &str = "journal-admin-password";
const BUYER_PASSWORD: &str = "journal-buyer-password";
const BUYERS: usize = 4;
/// Attempts each buyer keeps in flight.
const WINDOW: usize = 64;
/// How far the data file may grow past its size after a start. sled
/// (0.34, as the store configures it) writes its log in segments of
/// 512 KiB and, on opening, extends the file to the end of the segment it
/// writes to; half a segment of headroom leaves room for the logins and
/// many batches, and is crossed when the log needs its next segment.
const HEADROOM: u64 = 256 * 1024;
/// Flags of every run: the storm is a bot by design (no pay rate limits).
const ARGS: &[&str] = &[
    "--sync",
    "always",
    "--pay-rate-per-buyer",
    "off",
    "--pay-rate-per-connection",
    "off",
];

async fn start(data_dir: &Path, addr: SocketAddr, file_size_limit: Option<u64>) -> ServerProcess {
    ServerProcess::launch(&Launch {
        data_dir,
        addr,
        args: ARGS,
        admin_password: ADMIN_PASSWORD,
        // Each order answered `Internal` is logged at ERROR by the reply
        // path; the journal's own error is the line that matters here.
        rust_log: "warn,flashsale_server::net::reply=off",
        show_stderr: true,
        file_size_limit,
        env: &[],
    })
    .await
}

fn names() -> Vec<String> {
    (0..BUYERS).map(|i| format!("payer{i}")).collect()
}

async fn buyers(addr: SocketAddr) -> Vec<Client> {
    let mut buyers = Vec::new();
    for name in names() {
        let config = ClientConfig::default();
        buyers.push(storm::login(addr, &name, BUYER_PASSWORD, config).await);
    }
    buyers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_write_failing_on_disk_answers_internal_stops_the_server_and_loses_no_confirmed_order(
) {
    let dir = TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    let addr = free_addr();

    // The sale, set up without a limit: stock for every attempt, so an
    // order is confirmed unless its batch cannot be written.
    let server = start(&data, addr, None).await;
    let admin = storm::login(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let mut products: Vec<ProductId> = Vec::new();
    for name in ["Disk", "Quota"] {
        let product = admin
            .create_product(name, 100, 1_000_000)
            .await
            .expect("product");
        products.push(product.id);
    }
    for name in names() {
        admin
            .create_user(&name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("buyer");
    }
    drop(admin);
    assert!(server.terminate().await.success());
    // Once more without a limit: opening lays the data file out (sled
    // extends it to the end of its current segment), so its size after
    // this start is the size a start needs.
    let status = start(&data, addr, None).await.terminate().await;
    assert!(status.success(), "{status}");
    let limit = largest_file(&data) + HEADROOM;

    let server = start(&data, addr, Some(limit)).await;
    // Pay until the server stops: the storm ends when it closes the connections.
    let answered = Storm::start(addr, &names(), BUYER_PASSWORD, &products, WINDOW, 11)
        .await
        .finish()
        .await;
    let status = server.wait().await;
    assert!(
        !status.success(),
        "a server whose journal cannot write must stop with a failure status, got {status}"
    );

    let mut internal = 0;
    let mut confirmed = 0;
    // Checked after the restart, so that a failure also says whether the
    // attempts without an answer were decided.
    let mut wrong = Vec::new();
    for stream in &answered {
        let mut failed_before = false;
        for a in stream {
            match &a.outcome {
                Outcome::Order(order) => {
                    assert_eq!(order.status, OrderStatus::Confirmed, "{order:?}");
                    assert!(
                        !failed_before,
                        "an order was confirmed after an earlier answer on its connection said \
                         the journal failed: {order:?}"
                    );
                    confirmed += 1;
                }
                Outcome::Refused(ErrorCode::Internal) => {
                    failed_before = true;
                    internal += 1;
                }
                Outcome::Refused(ErrorCode::ShuttingDown) => {}
                other => wrong.push(format!(
                    "{other:?}; answers on its connection: {}",
                    storm::summary(stream)
                )),
            }
        }
    }
    assert!(
        confirmed > 0,
        "no order was confirmed before the disk filled"
    );
    assert!(
        internal > 0,
        "no order was answered Internal: the failing batch's answers went elsewhere"
    );

    // Restart without the limit: every order answered is stored as
    // answered, nothing answered ShuttingDown is, and the stock balances.
    let server = start(&data, addr, None).await;
    let clients = buyers(addr).await;
    let admin = storm::login(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let comparison = storm::compare_stored(&clients, &admin, &answered).await;
    let lost_decided = comparison.lost.iter().filter(|(_, o)| o.is_some()).count();
    assert!(
        wrong.is_empty(),
        "{} attempts got a wrong answer or none ({lost_decided} of those without one are \
         stored as orders), e.g. {}",
        wrong.len(),
        wrong[0]
    );
    assert!(
        comparison.answered_but_changed.is_empty(),
        "orders answered Confirmed are lost or changed: {:?}",
        comparison.answered_but_changed
    );
    assert!(
        comparison.unexplained.is_empty(),
        "{:?}",
        comparison.unexplained
    );
    assert!(
        comparison.products_off.is_empty(),
        "{:?}",
        comparison.products_off
    );
    // An attempt answered Internal may be on disk all the same: the batches
    // of the failing group written before the write that failed are read
    // back at the restart (sled writes the log in order and keeps what was
    // written). `Internal` therefore means "outcome unknown", which a retry
    // with the same key resolves: the stored order, or a first decision.
    // (Stricter, "never stored", needs the journal to answer differently;
    // reported, not changed here.)
    for (code, order) in &comparison.refused_but_stored {
        assert_eq!(*code, ErrorCode::Internal, "refused yet stored: {order:?}");
    }
    let stored_internal: HashMap<Uuid, &OrderInfo> = comparison
        .refused_but_stored
        .iter()
        .map(|(_, order)| (order.idempotency_key, order))
        .collect();
    let mut retried = 0;
    for a in answered.iter().flatten() {
        if !matches!(a.outcome, Outcome::Refused(ErrorCode::Internal)) {
            continue;
        }
        let retry = clients[a.attempt.buyer]
            .buy_with_key(a.attempt.lines.clone(), a.attempt.key)
            .await
            .expect("a retry of an attempt answered Internal is decided");
        match stored_internal.get(&a.attempt.key) {
            Some(stored) => assert_eq!(&&retry.order, stored, "a retry got another order"),
            None => assert_eq!(retry.order.status, OrderStatus::Confirmed),
        }
        retried += 1;
    }
    // One order per key (stored_orders panics on two), the retries included.
    let stored = storm::stored_orders(&clients).await;
    assert_eq!(stored.len(), comparison.answered_and_stored + retried);
    for product in admin.stats().await.expect("stats").products {
        assert!(product.product.balances(), "{product:?}");
    }
    drop((clients, admin));
    assert!(server.terminate().await.success());
}

/// Each lane's cart additions: the quantity of its line after the last
/// answer `Ok`, and whether a later addition went without a known outcome.
struct Lane {
    buyer: usize,
    product: ProductId,
    answered_qty: u32,
    unknown_after: bool,
}

/// The group-commit syncer's failure path (cart changes, not the journal):
/// buyers add to their carts under a file-size limit until a sync fails.
/// The server must stop with a failure status; every cart change answered
/// `Ok` is on disk after a restart; the change that failed is answered
/// `Internal` (outcome unknown), never `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sync_of_cart_changes_stops_the_server_and_keeps_every_answered_change() {
    let dir = TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    let addr = free_addr();
    let server = start(&data, addr, None).await;
    let admin = storm::login(addr, "admin", ADMIN_PASSWORD, ClientConfig::default()).await;
    let mut products: Vec<ProductId> = Vec::new();
    for name in ["Cart disk", "Cart quota", "Cart sector", "Cart block"] {
        let made = admin.create_product(name, 100, 1_000_000).await;
        products.push(made.expect("product").id);
    }
    for name in names() {
        let made = admin.create_user(&name, BUYER_PASSWORD, Role::Buyer).await;
        made.expect("buyer");
    }
    drop(admin);
    assert!(server.terminate().await.success());
    let status = start(&data, addr, None).await.terminate().await;
    assert!(status.success(), "{status}");
    let limit = largest_file(&data) + HEADROOM;

    let server = start(&data, addr, Some(limit)).await;
    let clients = buyers(addr).await;
    let mut lanes = Vec::new();
    for (buyer, client) in clients.iter().enumerate() {
        for &product in &products {
            let client = client.clone();
            lanes.push(tokio::spawn(async move {
                let mut lane = Lane {
                    buyer,
                    product,
                    answered_qty: 0,
                    unknown_after: false,
                };
                loop {
                    match client.cart_add(product, 1).await {
                        Ok(view) => {
                            let line = view.lines.iter().find(|l| l.product_id == product);
                            lane.answered_qty = line.expect("the line just added").qty;
                        }
                        Err(e) => {
                            // Internal (unknown) or the connection lost
                            // (unknown too); ShuttingDown is "not done".
                            lane.unknown_after = e.code() != Some(ErrorCode::ShuttingDown);
                            return (lane, e.code());
                        }
                    }
                }
            }));
        }
    }
    let mut ended = Vec::new();
    for lane in lanes {
        ended.push(lane.await.expect("lane"));
    }
    let status = server.wait().await;
    assert!(
        !status.success(),
        "a server whose cart sync fails must stop with a failure status, got {status}"
    );
    assert!(
        ended
            .iter()
            .any(|(_, code)| *code == Some(ErrorCode::Internal)),
        "no cart change was answered Internal: the failing sync's answers went elsewhere"
    );
    drop(clients);

    let server = start(&data, addr, None).await;
    let clients = buyers(addr).await;
    for (lane, _) in &ended {
        let cart = clients[lane.buyer].cart().await.expect("cart");
        let stored = cart
            .lines
            .iter()
            .find(|l| l.product_id == lane.product)
            .map_or(0, |l| l.qty);
        let most = lane.answered_qty + u32::from(lane.unknown_after);
        assert!(
            (lane.answered_qty..=most).contains(&stored),
            "buyer {} product {}: answered {}, stored {stored}",
            lane.buyer,
            lane.product,
            lane.answered_qty
        );
    }
    drop(clients);
    assert!(server.terminate().await.success());
}
