//! `flashsale-server restore` as an operator runs it: a backup of a running
//! `flashsale-server` process (taken over the protocol), restored by the
//! real binary into a new data dir, on which the real binary then serves
//! every order it had; a second restore into that dir is refused.
//!
//! In the server package because only here does cargo build the binary
//! (`CARGO_BIN_EXE_*`).

use flashsale_client::protocol::backup::BACKUP_FILE_NAME;
use flashsale_client::protocol::{OrderInfo, OrderLine, OrderStatus, ProductId, Role};
use flashsale_client::Client;
use std::path::Path;
use tempfile::TempDir;
use tokio::process::Command;

mod process;
use process::{free_addr, ServerProcess};

const ADMIN_PASSWORD: &str = "restore-admin-password";

/// Runs `flashsale-server restore --from FROM --data-dir NEW`.
async fn restore(from: &Path, new: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashsale-server"))
        .arg("restore")
        .arg("--from")
        .arg(from)
        .arg("--data-dir")
        .arg(new)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .expect("run flashsale-server restore")
}

async fn admin(server: &ServerProcess) -> Client {
    let client = Client::connect(server.addr).await.expect("connect");
    client
        .login("admin", ADMIN_PASSWORD)
        .await
        .expect("admin login");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_command_makes_a_data_dir_the_server_serves_every_order_from() {
    let dir = TempDir::new().expect("temp dir");
    let original = ServerProcess::start(
        &dir.path().join("original"),
        free_addr(),
        &["--pay-rate-per-buyer", "off"],
        ADMIN_PASSWORD,
        "warn",
        true,
    )
    .await;
    let admin_client = admin(&original).await;
    admin_client
        .create_user("dora", "dora-password", Role::Buyer)
        .await
        .expect("buyer");
    let dora = Client::connect(original.addr).await.expect("connect");
    dora.login("dora", "dora-password").await.expect("login");
    let mut orders: Vec<OrderInfo> = Vec::new();
    for product in [1, 3, 3] {
        let line = OrderLine {
            product_id: ProductId(product),
            qty: 1,
        };
        orders.push(dora.buy(vec![line]).await.expect("buy").order);
    }

    let mut stream = admin_client.backup().await.expect("backup");
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next_chunk().await.expect("chunk") {
        bytes.extend_from_slice(&chunk);
    }
    let backup_dir = dir.path().join("backup");
    std::fs::create_dir_all(&backup_dir).expect("backup dir");
    std::fs::write(backup_dir.join(BACKUP_FILE_NAME), &bytes).expect("write");
    assert!(original.terminate().await.success());

    let new = dir.path().join("restored");
    let restored = restore(&backup_dir, &new).await;
    let stdout = String::from_utf8_lossy(&restored.stdout);
    assert!(
        restored.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(stdout.contains("restored"), "{stdout}");
    assert!(stdout.contains("entries in"), "{stdout}");

    let again = restore(&backup_dir, &new).await;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds data"), "{stderr}");

    // The server runs on it as after any restart (no demo data: not empty).
    let server = ServerProcess::start(&new, free_addr(), &[], ADMIN_PASSWORD, "warn", true).await;
    let dora = Client::connect(server.addr).await.expect("connect");
    dora.login("dora", "dora-password")
        .await
        .expect("a restored account logs in");
    for order in &orders {
        assert_eq!(&dora.order(order.id).await.expect("order"), order);
        assert_eq!(order.status, OrderStatus::Confirmed);
    }
    let admin_client = admin(&server).await;
    for product in admin_client.products().await.expect("products") {
        assert!(product.balances(), "{product:?}");
    }
    assert!(server.terminate().await.success());
}
