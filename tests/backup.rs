//! Online backup and restore over real TCP: a backup taken while buyers
//! keep paying on other connections restores (through the same
//! `flashsale_server::restore` the `flashsale-server restore` command runs)
//! into a data dir whose server has every order acknowledged before the
//! backup began, with the outcome its buyer was told, and stock that
//! balances; a truncated or corrupt file, a newer schema and a target that
//! holds data are refused before anything is written; only admins may back
//! up, and one backup runs at a time.

use crate::support::{code_of, product, test_config, TestServer};
use flashsale::client::{BackupStream, Client};
use flashsale::protocol::backup::{BackupFormatError, BACKUP_FILE_NAME};
use flashsale::protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderStatus, ProductId, RequestBody,
};
use flashsale::server::{restore, RestoreError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tempfile::TempDir;
use tokio::sync::watch;

/// Reads a backup to its end; the file's bytes and the number of chunks.
async fn read_all(stream: &mut BackupStream) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next_chunk().await.expect("chunk") {
        bytes.extend_from_slice(&chunk);
        chunks += 1;
    }
    (bytes, chunks)
}

/// Writes `bytes` as `dir/flashsale.backup`, as `flashsale-admin backup` does.
fn save(dir: &Path, bytes: &[u8]) -> PathBuf {
    let file = dir.join(BACKUP_FILE_NAME);
    std::fs::write(&file, bytes).expect("write the backup");
    file
}

/// Every order of every buyer, by id, page by page.
async fn all_orders(admin: &Client) -> HashMap<OrderId, OrderInfo> {
    let mut orders = HashMap::new();
    let mut after = None;
    loop {
        let page = admin
            .query_orders(after, 0, None, None)
            .await
            .expect("query orders");
        orders.extend(page.orders.into_iter().map(|order| (order.id, order)));
        match page.next_after {
            Some(next) => after = Some(next),
            None => return orders,
        }
    }
}

/// What the buyers were told, in the order they were told it.
#[derive(Default)]
struct Told {
    orders: Mutex<Vec<OrderInfo>>,
}

impl Told {
    fn snapshot(&self) -> Vec<OrderInfo> {
        self.orders.lock().expect("told").clone()
    }
}

/// Buyer `buyer` buys one to three units of the products in turn until
/// `stop`; every accepted order goes to `told`, and `count` counts them.
async fn keep_buying(
    buyer: Client,
    products: Vec<ProductId>,
    told: Arc<Told>,
    count: Arc<watch::Sender<usize>>,
    stop: Arc<AtomicBool>,
) {
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let product_id = products[n as usize % products.len()];
        let qty = 1 + n % 3;
        match buyer.buy(vec![OrderLine { product_id, qty }]).await {
            Ok(placed) => {
                told.orders.lock().expect("told").push(placed.order);
                count.send_modify(|count| *count += 1);
            }
            // The scarce product sells out; intake refuses without an order.
            Err(e) if e.code() == Some(ErrorCode::SoldOut) => {}
            Err(e) => panic!("buy failed: {e}"),
        }
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_mid_sale_restores_every_order_acknowledged_before_it_began() {
    let dir = TempDir::new().expect("temp dir");
    let original_dir = dir.path().join("original");
    let mut config = test_config(&original_dir);
    // Many small chunks: the backup is still streaming while buyers pay.
    config.backup_chunk_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let admin = server.admin().await;
    let products = vec![
        product(&admin, "Tee", 1_000_000).await.id,
        // Sells out mid-sale: rejected orders are backed up too.
        product(&admin, "Scarce", 40).await.id,
        product(&admin, "Cap", 1_000_000).await.id,
    ];
    let told = Arc::new(Told::default());
    let (count, mut counted) = watch::channel(0usize);
    let count = Arc::new(count);
    let stop = Arc::new(AtomicBool::new(false));
    let mut buyers = Vec::new();
    for i in 0..6 {
        let buyer = server.buyer(&admin, &format!("buyer{i}")).await;
        buyers.push(tokio::spawn(keep_buying(
            buyer,
            products.clone(),
            Arc::clone(&told),
            Arc::clone(&count),
            Arc::clone(&stop),
        )));
    }
    counted.wait_for(|&n| n >= 150).await.expect("buyers buy");
    let rejected = rejected_orders(&server, &admin).await;
    told.orders.lock().expect("told").extend(rejected);

    // Everything told so far was acknowledged before the backup began.
    let before = told.snapshot();
    let mut stream = admin.backup().await.expect("the backup begins");
    let mut bytes = stream
        .next_chunk()
        .await
        .expect("first chunk")
        .expect("a backup has chunks");
    // The sale goes on while the backup holds its place in the data dir.
    let at_start = *counted.borrow();
    counted
        .wait_for(|&n| n >= at_start + 150)
        .await
        .expect("buyers keep buying during the backup");
    let (rest, chunks) = read_all(&mut stream).await;
    bytes.extend_from_slice(&rest);
    assert!(chunks > 1, "a 1 KiB chunk size streams many chunks");
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        buyer.await.expect("buyer task");
    }
    let all_told: HashMap<OrderId, OrderInfo> = told
        .snapshot()
        .into_iter()
        .map(|order| (order.id, order))
        .collect();
    assert!(all_told.len() >= before.len() + 150);
    server.stop().await;

    let backup_dir = dir.path().join("backup");
    std::fs::create_dir_all(&backup_dir).expect("backup dir");
    save(&backup_dir, &bytes);
    let restored_dir = dir.path().join("restored");
    let summary = restore(&backup_dir, &restored_dir).expect("restore");
    assert_eq!(summary.backup.bytes, bytes.len() as u64);

    let restored = TestServer::start_in(&restored_dir).await;
    let admin = restored.admin().await;
    let orders = all_orders(&admin).await;
    for order in &before {
        assert_eq!(
            orders.get(&order.id),
            Some(order),
            "order {} was acknowledged before the backup began",
            order.id
        );
    }
    assert!(
        before
            .iter()
            .any(|o| matches!(o.status, OrderStatus::Rejected { .. })),
        "rejected orders are covered too"
    );
    for order in orders.values() {
        assert_eq!(
            all_told.get(&order.id),
            Some(order),
            "the restored order {} is one a buyer was told, as told",
            order.id
        );
    }
    for p in admin.products().await.expect("products") {
        assert!(p.balances(), "{p:?}");
        let confirmed: u64 = orders
            .values()
            .filter(|o| o.status == OrderStatus::Confirmed)
            .flat_map(|o| &o.items)
            .filter(|line| line.product_id == p.id)
            .map(|line| u64::from(line.qty))
            .sum();
        assert_eq!(p.confirmed_qty, confirmed, "{p:?}");
    }

    // The restored server goes on selling, after the restored orders.
    let buyer = restored.client().await;
    buyer
        .login("buyer0", crate::support::BUYER_PASSWORD)
        .await
        .expect("a restored account logs in");
    let next = buyer
        .buy(vec![OrderLine {
            product_id: products[0],
            qty: 1,
        }])
        .await
        .expect("buy")
        .order;
    assert_eq!(next.status, OrderStatus::Confirmed);
    assert!(orders.keys().all(|id| *id < next.id));
    let newcomer = restored.buyer(&admin, "newcomer").await;
    let me = newcomer
        .login("newcomer", crate::support::BUYER_PASSWORD)
        .await
        .expect("login");
    let users = admin.users(None, 0).await.expect("users");
    assert_eq!(
        users.iter().filter(|u| u.id == me.user_id).count(),
        1,
        "a new account does not take a restored account's id"
    );
    restored.stop().await;
}

/// Bursts of pipelined orders for a single unit, until the sequencer
/// rejected one (some pass intake before the first is decided); every
/// order accepted on the way.
async fn rejected_orders(server: &TestServer, admin: &Client) -> Vec<OrderInfo> {
    let single = product(admin, "Single", 0).await;
    let buyer = server.buyer(admin, "burst").await;
    let mut accepted = Vec::new();
    for _ in 0..50 {
        admin.set_stock(single.id, 1).await.expect("one unit");
        let burst = (0..32).map(|_| {
            buyer.buy(vec![OrderLine {
                product_id: single.id,
                qty: 1,
            }])
        });
        accepted.extend(
            futures::future::join_all(burst)
                .await
                .into_iter()
                .flatten()
                .map(|placed| placed.order),
        );
        if accepted
            .iter()
            .any(|o| matches!(o.status, OrderStatus::Rejected { .. }))
        {
            return accepted;
        }
    }
    panic!("no burst produced an order rejected by the sequencer");
}

/// A small data dir's backup file, and the dir it is in.
async fn a_backup() -> (TempDir, Vec<u8>) {
    let (server, dir) = TestServer::start().await;
    let admin = server.admin().await;
    let tee = product(&admin, "Tee", 10).await;
    let buyer = server.buyer(&admin, "alice").await;
    buyer
        .buy(vec![OrderLine {
            product_id: tee.id,
            qty: 2,
        }])
        .await
        .expect("buy");
    let mut stream = admin.backup().await.expect("backup");
    let (bytes, _) = read_all(&mut stream).await;
    server.stop().await;
    (dir, bytes)
}

/// Restores `bytes` (written to a fresh dir) into `dir/NAME`; the target
/// and what is left beside it.
fn restore_bytes(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, Result<(), RestoreError>) {
    let from = dir.join(format!("{name}-backup"));
    std::fs::create_dir_all(&from).expect("backup dir");
    save(&from, bytes);
    let target = dir.join(name);
    let result = restore(&from, &target).map(|_| ());
    (target, result)
}

/// Nothing named after `target` exists beside it (no half-restored dir).
fn nothing_written(target: &Path) {
    let parent = target.parent().expect("parent");
    let name = target
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let left: Vec<String> = std::fs::read_dir(parent)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|entry| entry.contains(&name) && !entry.ends_with("-backup"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_truncated_or_corrupt_file_a_newer_schema_and_a_target_with_data() {
    let (_server_dir, bytes) = a_backup().await;
    let dir = TempDir::new().expect("temp dir");

    for (name, len) in [("half", bytes.len() / 2), ("no-checksum", bytes.len() - 1)] {
        let (target, result) = restore_bytes(dir.path(), name, &bytes[..len]);
        match result {
            Err(RestoreError::Format {
                source: BackupFormatError::Truncated,
                ..
            }) => {}
            other => panic!("{name}: expected a truncated backup, got {other:?}"),
        }
        nothing_written(&target);
    }

    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let (target, result) = restore_bytes(dir.path(), "flipped", &flipped);
    let error = result.expect_err("a corrupt backup is refused");
    assert!(
        matches!(
            &error,
            RestoreError::Format {
                source: BackupFormatError::ChecksumMismatch | BackupFormatError::Corrupt(_),
                ..
            }
        ),
        "{error:?}"
    );
    let text = format!(
        "{}: {}",
        error,
        std::error::Error::source(&error).expect("cause")
    );
    assert!(
        text.contains("cannot be restored") && text.contains("corrupt"),
        "{text}"
    );
    nothing_written(&target);

    let mut newer = bytes.clone();
    newer[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    let (target, result) = restore_bytes(dir.path(), "newer", &newer);
    assert!(
        matches!(
            result,
            Err(RestoreError::SchemaTooNew {
                found: u32::MAX,
                ..
            })
        ),
        "{result:?}"
    );
    nothing_written(&target);

    let (target, result) = restore_bytes(dir.path(), "not-a-backup", b"hello, world");
    assert!(matches!(
        result,
        Err(RestoreError::Format {
            source: BackupFormatError::NotABackup,
            ..
        })
    ));
    nothing_written(&target);

    // A target with anything in it is refused, and left as it was.
    let occupied = dir.path().join("occupied");
    std::fs::create_dir_all(&occupied).expect("dir");
    std::fs::write(occupied.join("notes.txt"), b"mine").expect("file");
    let from = dir.path().join("good-backup");
    std::fs::create_dir_all(&from).expect("dir");
    save(&from, &bytes);
    let error = restore(&from, &occupied).expect_err("a target with data is refused");
    assert!(
        matches!(error, RestoreError::TargetNotEmpty(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("already holds data"), "{error}");
    let kept: Vec<_> = std::fs::read_dir(&occupied).expect("read").collect();
    assert_eq!(kept.len(), 1);

    // An empty directory is a fine target, and so is the file itself as --from.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    restore(&from, &empty).expect("restore into an empty dir");
    let fresh = dir.path().join("fresh");
    restore(&from.join(BACKUP_FILE_NAME), &fresh).expect("restore from the file");
    let server = TestServer::start_in(&fresh).await;
    let admin = server.admin().await;
    let orders = all_orders(&admin).await;
    assert_eq!(orders.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_may_back_up() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let buyer = server.buyer(&admin, "mallory").await;
    assert_eq!(code_of(buyer.backup().await), ErrorCode::Forbidden);
    let anonymous = server.client().await;
    assert_eq!(
        code_of(anonymous.backup().await),
        ErrorCode::Unauthenticated
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backup_is_refused_while_one_runs_and_may_start_once_it_ended() {
    let (server, _dir) = TestServer::start().await;
    let first_admin = server.admin().await;
    let second_admin = server.admin().await;
    let mut first = first_admin.backup().await.expect("first backup");
    let refused = second_admin.backup().await.expect_err("a second backup");
    assert_eq!(refused.code(), Some(ErrorCode::Overloaded));
    assert!(
        refused.to_string().contains("a backup is already running"),
        "{refused}"
    );
    // A backup is read on the connection that began it.
    let elsewhere = second_admin
        .request(RequestBody::BackupNext {
            backup_id: first.backup_id(),
        })
        .await;
    assert_eq!(code_of(elsewhere), ErrorCode::NotFound);
    let (bytes, _) = read_all(&mut first).await;
    assert!(!bytes.is_empty());
    assert!(first.next_chunk().await.expect("after the end").is_none());
    // The last chunk ended the first backup: the next one starts at once.
    let mut second = second_admin.backup().await.expect("second backup");
    assert_ne!(second.backup_id(), first.backup_id());
    let (again, _) = read_all(&mut second).await;
    assert!(!again.is_empty());
    server.stop().await;
}
