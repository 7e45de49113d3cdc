//! Holds over real TCP against the real `flashsale-server` binary: a hold
//! reserves stock in arrival order like an order, is paid (confirmed),
//! released or expired, and survives `kill -9` (a hold that expired while
//! the server was down is expired at start). After every step each
//! product balances: `initial + restocked − confirmed − held == stock`.

use flashsale_client::protocol::{
    ErrorCode, OrderId, OrderInfo, OrderLine, OrderStatus, ProductId, ProductInfo, Role, SaleRules,
};
use flashsale_client::{Client, ClientError};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

mod process;
use process::{free_addr, ServerProcess};

const ADMIN_PASSWORD: &str = "holds-admin-password";
const BUYER_PASSWORD: &str = "holds-buyer-password";

/// Longest wait for a deadline to pass and the server to act on it.
const EXPIRY_WAIT: Duration = Duration::from_secs(20);

async fn start(dir: &Path, addr: SocketAddr) -> ServerProcess {
    ServerProcess::start(
        dir,
        addr,
        // A checkpoint after every journal record: a restart loads the
        // holds from one (and replays the journal after it).
        &[
            "--sync",
            "always",
            "--hold-time",
            "60",
            "--checkpoint-records",
            "1",
        ],
        ADMIN_PASSWORD,
        "warn",
        true,
    )
    .await
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> Client {
    let client = Client::connect(addr).await.expect("connect");
    client.login(user, password).await.expect("login");
    client
}

/// A server on a fresh data dir, its admin, and buyers `names`.
struct Shop {
    dir: TempDir,
    addr: SocketAddr,
    server: ServerProcess,
    admin: Client,
}

impl Shop {
    async fn open() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let addr = free_addr();
        let server = start(dir.path(), addr).await;
        let admin = login(addr, "admin", ADMIN_PASSWORD).await;
        Self {
            dir,
            addr,
            server,
            admin,
        }
    }

    async fn buyer(&self, name: &str) -> Client {
        self.admin
            .create_user(name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("buyer");
        login(self.addr, name, BUYER_PASSWORD).await
    }

    async fn product(&self, name: &str, stock: u64, rules: SaleRules) -> ProductId {
        self.admin
            .create_product_with_rules(name, 100, stock, rules)
            .await
            .expect("product")
            .id
    }

    /// The product, checked to balance.
    async fn figures(&self, id: ProductId) -> ProductInfo {
        let product = self.admin.product(id).await.expect("product");
        assert!(
            product.balances(),
            "initial + restocked - confirmed - held != stock: {product:?}"
        );
        product
    }

    /// Kills the server with SIGKILL and starts it again on the same dir.
    async fn kill_and_restart(self) -> Self {
        self.server.kill().await;
        let server = start(self.dir.path(), self.addr).await;
        let admin = login(self.addr, "admin", ADMIN_PASSWORD).await;
        Self {
            server,
            admin,
            ..self
        }
    }
}

fn line(product_id: ProductId, qty: u32) -> Vec<OrderLine> {
    vec![OrderLine { product_id, qty }]
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    result.err().and_then(|e| e.code())
}

fn expires_at(order: &OrderInfo) -> u64 {
    match order.status {
        OrderStatus::Held { expires_at_ms } => expires_at_ms,
        other => panic!("order {} is {other:?}, not held", order.id),
    }
}

/// Waits until `id`'s stock is `stock` (a hold's deadline passed and the
/// sequencer expired it), asking every 20 ms.
async fn wait_for_stock(shop: &Shop, id: ProductId, stock: u64) -> ProductInfo {
    let deadline = Instant::now() + EXPIRY_WAIT;
    loop {
        let product = shop.figures(id).await;
        if product.stock == stock {
            return product;
        }
        assert!(
            Instant::now() < deadline,
            "stock still {} (held {}) after {EXPIRY_WAIT:?}",
            product.stock,
            product.held
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(client: &Client, id: OrderId) -> OrderStatus {
    client.order(id).await.expect("order").status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_paid_in_time_is_confirmed_once_whatever_the_retries() {
    let shop = Shop::open().await;
    let ticket = shop.product("Ticket", 5, SaleRules::default()).await;
    let alice = shop.buyer("hanna").await;
    let hold = alice.hold(line(ticket, 2), None).await.expect("hold").order;
    let deadline = expires_at(&hold);
    assert_eq!(
        deadline - hold.decided_at_ms,
        60_000,
        "the server's hold time"
    );
    let held = shop.figures(ticket).await;
    assert_eq!((held.stock, held.held, held.confirmed_qty), (3, 2, 0));

    let paid = alice.pay_hold(hold.id, "gw-1001").await.expect("paid");
    assert_eq!(paid.status, OrderStatus::Confirmed);
    let again = alice
        .pay_hold(hold.id, "gw-1001")
        .await
        .expect("same reference");
    assert_eq!(again, paid, "the same reference answers the same order");
    assert_eq!(
        code(alice.pay_hold(hold.id, "gw-2002").await),
        Some(ErrorCode::PaymentRefMismatch)
    );
    assert_eq!(
        code(alice.release_hold(hold.id).await),
        Some(ErrorCode::NotHeld),
        "a paid hold is an order: cancel it instead"
    );
    let after = shop.figures(ticket).await;
    assert_eq!((after.stock, after.held, after.confirmed_qty), (3, 0, 2));
    let stats = shop.admin.stats().await.expect("stats");
    assert_eq!(
        (stats.holds.placed, stats.holds.paid, stats.holds.live),
        (1, 1, 0)
    );
    // A paid hold cancels like any order.
    let cancelled = shop.admin.cancel_order(hold.id).await.expect("cancel");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(shop.figures(ticket).await.stock, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_hold_expires_and_the_next_buyer_in_line_gets_its_units() {
    let shop = Shop::open().await;
    let last = shop.product("Last one", 1, SaleRules::default()).await;
    let alice = shop.buyer("hanna").await;
    let bob = shop.buyer("ivan").await;
    let hold = alice
        .hold(line(last, 1), Some(1_500))
        .await
        .expect("hold")
        .order;
    assert_eq!(
        expires_at(&hold) - hold.decided_at_ms,
        1_500,
        "the time asked for"
    );
    assert_eq!(
        code(bob.buy(line(last, 1)).await),
        Some(ErrorCode::SoldOut),
        "held units are not for sale"
    );
    wait_for_stock(&shop, last, 1).await;
    assert_eq!(status(&alice, hold.id).await, OrderStatus::Expired);
    let bobs = bob.buy(line(last, 1)).await.expect("bob's turn").order;
    assert_eq!(bobs.status, OrderStatus::Confirmed);
    assert_eq!(
        code(alice.pay_hold(hold.id, "gw-late").await),
        Some(ErrorCode::HoldExpired),
        "paying after the deadline is refused"
    );
    let product = shop.figures(last).await;
    assert_eq!(
        (product.stock, product.held, product.confirmed_qty),
        (0, 0, 1)
    );
    let stats = shop.admin.stats().await.expect("stats");
    assert_eq!((stats.holds.expired, stats.holds.live), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_hold_gives_its_units_back_and_cannot_be_paid() {
    let shop = Shop::open().await;
    let cap = shop.product("Cap", 4, SaleRules::default()).await;
    let alice = shop.buyer("hanna").await;
    let bob = shop.buyer("ivan").await;
    alice.cart_add(cap, 3).await.expect("cart");
    let hold = alice.hold_cart(None).await.expect("hold").order;
    assert!(
        alice.cart().await.expect("cart").lines.is_empty(),
        "the held cart is checked out"
    );
    assert_eq!(
        code(bob.release_hold(hold.id).await),
        Some(ErrorCode::NotFound),
        "someone else's hold"
    );
    assert_eq!(shop.figures(cap).await.stock, 1);
    let released = alice.release_hold(hold.id).await.expect("release");
    assert_eq!(released.status, OrderStatus::Released);
    assert_eq!(shop.figures(cap).await.stock, 4);
    assert_eq!(
        code(alice.pay_hold(hold.id, "gw-1").await),
        Some(ErrorCode::NotHeld)
    );
    let again = shop
        .admin
        .release_hold(hold.id)
        .await
        .expect("an admin's release");
    assert_eq!(again.status, OrderStatus::Released, "answered as it stands");
    let plain = bob.buy(line(cap, 1)).await.expect("buy").order;
    assert_eq!(
        code(bob.pay_hold(plain.id, "gw-2").await),
        Some(ErrorCode::NotHeld),
        "a plain order is not a hold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_orders_take_one_products_stock_in_arrival_order_and_limits_count_holds() {
    let shop = Shop::open().await;
    let limited = SaleRules {
        max_per_buyer: Some(2),
        ..SaleRules::default()
    };
    let shoe = shop.product("Shoe", 3, limited).await;
    let alice = shop.buyer("hanna").await;
    let bob = shop.buyer("ivan").await;
    let hold = alice.hold(line(shoe, 2), None).await.expect("hold").order;
    assert_eq!(
        code(alice.buy(line(shoe, 1)).await),
        Some(ErrorCode::LimitExceeded),
        "held units count towards the limit"
    );
    assert_eq!(code(bob.buy(line(shoe, 2)).await), Some(ErrorCode::SoldOut));
    assert_eq!(
        bob.buy(line(shoe, 1))
            .await
            .expect("the last unit")
            .order
            .status,
        OrderStatus::Confirmed
    );
    alice.release_hold(hold.id).await.expect("release");
    assert_eq!(
        alice
            .buy(line(shoe, 1))
            .await
            .expect("within the limit again")
            .order
            .status,
        OrderStatus::Confirmed
    );
    let product = shop.figures(shoe).await;
    assert_eq!(
        (product.stock, product.held, product.confirmed_qty),
        (1, 0, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_products_hold_time_caps_what_a_request_asks_for() {
    let shop = Shop::open().await;
    let lamp = shop.product("Lamp", 10, SaleRules::default()).await;
    let set = shop
        .admin
        .set_hold_time(lamp, Some(Duration::from_secs(2)))
        .await
        .expect("set-hold");
    assert_eq!(set.hold_ms, 2_000);
    let alice = shop.buyer("hanna").await;
    let longer = alice
        .hold(line(lamp, 1), Some(5_000))
        .await
        .expect("hold")
        .order;
    assert_eq!(
        expires_at(&longer) - longer.decided_at_ms,
        2_000,
        "never more"
    );
    let shorter = alice
        .hold(line(lamp, 1), Some(1_500))
        .await
        .expect("hold")
        .order;
    assert_eq!(
        expires_at(&shorter) - shorter.decided_at_ms,
        1_500,
        "less is fine"
    );
    assert_eq!(
        code(alice.hold(line(lamp, 1), Some(0)).await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        code(alice.pay_hold(longer.id, &"x".repeat(129)).await),
        Some(ErrorCode::BadRequest),
        "a payment reference is at most 128 bytes"
    );
    assert_eq!(
        code(
            shop.admin
                .set_hold_time(lamp, Some(Duration::from_millis(10)))
                .await
        ),
        Some(ErrorCode::BadRequest)
    );
    let cleared = shop
        .admin
        .set_hold_time(lamp, None)
        .await
        .expect("default again");
    assert_eq!(cleared.hold_ms, 60_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_survive_kill_9_and_one_that_expired_while_down_is_expired_at_start() {
    let shop = Shop::open().await;
    let vinyl = shop.product("Vinyl", 10, SaleRules::default()).await;
    let alice = shop.buyer("hanna").await;
    let long = alice
        .hold(line(vinyl, 3), None)
        .await
        .expect("long hold")
        .order;
    let short = alice
        .hold(line(vinyl, 2), Some(1_000))
        .await
        .expect("short hold")
        .order;
    let paid = alice
        .hold(line(vinyl, 1), None)
        .await
        .expect("paid hold")
        .order;
    alice.pay_hold(paid.id, "gw-9").await.expect("paid");
    assert_eq!(shop.figures(vinyl).await.held, 5);

    // Killed before the short hold's deadline; started again after it.
    shop.server.signal("STOP").await;
    let resume_after = expires_at(&short);
    while flashsale_now_ms() <= resume_after {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shop = shop.kill_and_restart().await;
    let alice = login(shop.addr, "hanna", BUYER_PASSWORD).await;
    // The first order after the restart: the expired hold's units are for
    // sale already (the server expired it before it took a request).
    let bought = alice
        .buy(line(vinyl, 6))
        .await
        .expect("all the units left")
        .order;
    assert_eq!(bought.status, OrderStatus::Confirmed);
    let product = shop.figures(vinyl).await;
    assert_eq!(
        (product.stock, product.held, product.confirmed_qty),
        (0, 3, 7)
    );
    assert_eq!(status(&alice, short.id).await, OrderStatus::Expired);
    assert!(matches!(
        status(&alice, long.id).await,
        OrderStatus::Held { .. }
    ));
    assert_eq!(status(&alice, paid.id).await, OrderStatus::Confirmed);
    assert_eq!(
        alice
            .pay_hold(paid.id, "gw-9")
            .await
            .expect("a retry after the restart")
            .status,
        OrderStatus::Confirmed
    );
    alice
        .pay_hold(long.id, "gw-10")
        .await
        .expect("the long hold is paid");
    let product = shop.figures(vinyl).await;
    assert_eq!(
        (product.stock, product.held, product.confirmed_qty),
        (0, 0, 10)
    );
    let stats = shop.admin.stats().await.expect("stats");
    assert_eq!(
        (
            stats.holds.placed,
            stats.holds.paid,
            stats.holds.expired,
            stats.holds.live
        ),
        (3, 2, 1, 0)
    );
}

fn flashsale_now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_set_while_holds_are_live_counts_the_held_units() {
    let shop = Shop::open().await;
    let bag = shop.product("Bag", 10, SaleRules::default()).await;
    let alice = shop.buyer("hanna").await;
    let hold = alice.hold(line(bag, 2), None).await.expect("hold").order;
    shop.admin.set_limit(bag, Some(2)).await.expect("a limit");
    assert_eq!(
        code(alice.buy(line(bag, 1)).await),
        Some(ErrorCode::LimitExceeded),
        "the held units were counted when the limit came"
    );
    alice.release_hold(hold.id).await.expect("release");
    let within = alice
        .buy(line(bag, 2))
        .await
        .expect("within the limit")
        .order;
    assert_eq!(within.status, OrderStatus::Confirmed);
    let product = shop.figures(bag).await;
    assert_eq!(
        (product.stock, product.held, product.confirmed_qty),
        (8, 0, 2)
    );
}
