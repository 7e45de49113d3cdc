//! Flash-sale rules and operator requests over real TCP: per-buyer purchase
//! limits and sale windows under concurrency, set-stock in arrival order,
//! cancellation returning stock (with a push to the buyer), admin listings,
//! the stats ledger, recovery of all of it after a restart, and `Forbidden`
//! for every admin request from anyone else.

use crate::support::{code_of, partner_key, product, stock_of, Outcome, TestServer};
use flashsale::client::{Client, ClientError, PlacedOrder};
use flashsale::protocol::{
    ErrorCode, OrderId, OrderLine, OrderStatus, ProductId, Push, RequestBody, Role, SaleRules,
    StatusFilter,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

fn one(product_id: ProductId, qty: u32) -> Vec<OrderLine> {
    vec![OrderLine { product_id, qty }]
}

async fn buy(client: &Client, product_id: ProductId, qty: u32) -> Result<PlacedOrder, ClientError> {
    client.buy(one(product_id, qty)).await
}

/// True for a refusal of `code`, at intake or by the sequencer.
fn refused_with(outcome: &Outcome, code: ErrorCode) -> bool {
    matches!(outcome, Outcome::Refused(c) | Outcome::Rejected(_, c) if *c == code)
}

/// An order the sequencer rejected: bursts of pipelined orders for a single
/// unit, so that some pass intake before the first is published.
async fn rejected_order(admin: &Client, buyer: &Client) -> flashsale::protocol::OrderInfo {
    let p = product(admin, "Scarce", 0).await;
    for _ in 0..50 {
        admin.set_stock(p.id, 1).await.expect("one unit");
        let burst = (0..32).map(|_| buy(buyer, p.id, 1));
        let results = futures::future::join_all(burst).await;
        for placed in results.into_iter().flatten() {
            if matches!(placed.order.status, OrderStatus::Rejected { .. }) {
                return placed.order;
            }
        }
    }
    panic!("no burst produced an order rejected by the sequencer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_buyers_never_exceed_the_per_buyer_limit() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let rules = SaleRules {
        max_per_buyer: Some(2),
        ..SaleRules::default()
    };
    let limited = admin
        .create_product_with_rules("Limited", 100, 100, rules)
        .await
        .expect("create");
    let mut buyers = Vec::new();
    for i in 0..8 {
        buyers.push(server.buyer(&admin, &format!("scalper{i}")).await);
    }
    // Every buyer fires 6 single-unit orders at once, pipelined on its connection.
    let attempts = buyers.iter().map(|buyer| async move {
        let tries = (0..6).map(|_| buy(buyer, limited.id, 1));
        futures::future::join_all(tries)
            .await
            .into_iter()
            .map(Outcome::of)
            .collect::<Vec<_>>()
    });
    let per_buyer = futures::future::join_all(attempts).await;
    for outcomes in &per_buyer {
        let confirmed = outcomes.iter().filter(|o| o.is_confirmed()).count();
        assert_eq!(confirmed, 2, "{outcomes:?}");
        assert!(outcomes
            .iter()
            .filter(|o| !o.is_confirmed())
            .all(|o| refused_with(o, ErrorCode::LimitExceeded)));
    }
    assert_eq!(stock_of(&admin, limited.id).await, 100 - 8 * 2);
    // A two-unit order from a fresh buyer fits exactly; a third unit does not.
    let late = server.buyer(&admin, "late").await;
    assert!(Outcome::of(buy(&late, limited.id, 2).await).is_confirmed());
    assert_eq!(
        code_of(buy(&late, limited.id, 1).await),
        ErrorCode::LimitExceeded
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_outside_the_sale_window_get_sale_not_open_and_change_nothing() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let hour = 3_600_000;
    let rules = SaleRules {
        opens_at_ms: Some(now_ms() + hour),
        ..SaleRules::default()
    };
    let drop = admin
        .create_product_with_rules("Drop", 100, 5, rules)
        .await
        .expect("create");
    let buyer = server.buyer(&admin, "early").await;
    assert_eq!(
        code_of(buy(&buyer, drop.id, 1).await),
        ErrorCode::SaleNotOpen
    );
    buyer.cart_add(drop.id, 1).await.expect("cart add");
    assert_eq!(code_of(buyer.pay().await), ErrorCode::SaleNotOpen);
    assert_eq!(stock_of(&admin, drop.id).await, 5);

    // Open it now: the same buyer gets its unit.
    let opened = admin
        .set_window(drop.id, Some(now_ms() - hour), Some(now_ms() + hour))
        .await
        .expect("open window");
    assert_eq!(opened.rules.closes_at_ms.map(|c| c > now_ms()), Some(true));
    assert!(Outcome::of(buyer.pay().await).is_confirmed());

    // Close it: refused again, stock untouched.
    admin
        .set_window(drop.id, Some(now_ms() - 2 * hour), Some(now_ms() - hour))
        .await
        .expect("close window");
    assert_eq!(
        code_of(buy(&buyer, drop.id, 1).await),
        ErrorCode::SaleNotOpen
    );
    assert_eq!(stock_of(&admin, drop.id).await, 4);

    // A window that closes before it opens is refused and changes nothing.
    assert_eq!(
        code_of(admin.set_window(drop.id, Some(10), Some(5)).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(admin.set_limit(drop.id, Some(0)).await),
        ErrorCode::BadRequest
    );
    let after = admin.product(drop.id).await.expect("product");
    assert_eq!(after.rules.max_per_buyer, None);
    assert!(after.rules.closes_at_ms.is_some_and(|c| c < now_ms()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stock_takes_effect_in_arrival_order_and_keeps_the_ledger_balanced() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Ledger", 10).await;
    let buyer = server.buyer(&admin, "ledger-buyer").await;
    assert!(Outcome::of(buy(&buyer, p.id, 4).await).is_confirmed());
    let lowered = admin.set_stock(p.id, 1).await.expect("set stock");
    assert_eq!(lowered.stock, 1);
    assert_eq!(lowered.restocked, -5);
    assert!(lowered.balances(), "{lowered:?}");
    assert_eq!(code_of(buy(&buyer, p.id, 2).await), ErrorCode::SoldOut);
    let raised = admin.set_stock(p.id, 7).await.expect("set stock");
    assert_eq!((raised.stock, raised.restocked), (7, 1));
    assert!(raised.balances(), "{raised:?}");
    assert_eq!(
        code_of(admin.set_stock(ProductId(999), 1).await),
        ErrorCode::NotFound
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_order_returns_its_stock_and_tells_the_buyer() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Returnable", 3).await;
    let other = product(&admin, "Other", 3).await;
    let buyer = server.buyer(&admin, "returner").await;
    let mut pushes = buyer.pushes();
    let placed = buyer
        .buy(vec![
            OrderLine {
                product_id: p.id,
                qty: 3,
            },
            OrderLine {
                product_id: other.id,
                qty: 1,
            },
        ])
        .await
        .expect("buy");
    assert_eq!(placed.order.status, OrderStatus::Confirmed);
    assert_eq!(stock_of(&admin, p.id).await, 0);

    let cancelled = admin.cancel_order(placed.order.id).await.expect("cancel");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(stock_of(&admin, p.id).await, 3);
    assert_eq!(stock_of(&admin, other.id).await, 3);
    // The buyer hears of it.
    let update = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match pushes.next().await {
                Some(Push::OrderUpdate(order)) if order.status == OrderStatus::Cancelled => {
                    return order
                }
                Some(_) => continue,
                None => panic!("push stream ended"),
            }
        }
    })
    .await
    .expect("cancellation pushed");
    assert_eq!(update.id, placed.order.id);
    assert_eq!(
        buyer.order(placed.order.id).await.expect("order").status,
        OrderStatus::Cancelled
    );

    // Cancelling again changes nothing; a rejected order cannot be cancelled.
    let again = admin.cancel_order(placed.order.id).await.expect("again");
    assert_eq!(again.status, OrderStatus::Cancelled);
    assert_eq!(stock_of(&admin, p.id).await, 3);
    let rejected = rejected_order(&admin, &buyer).await;
    assert_eq!(
        code_of(admin.cancel_order(rejected.id).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code_of(admin.cancel_order(OrderId(9_999)).await),
        ErrorCode::NotFound
    );

    let stats = admin.stats().await.expect("stats");
    assert_eq!(stats.orders_cancelled, 1);
    assert!(stats.orders_rejected >= 1);
    for product in &stats.products {
        assert!(product.product.balances(), "{product:?}");
    }
    let returnable = stats
        .products
        .iter()
        .find(|s| s.product.id == p.id)
        .expect("in stats");
    assert_eq!(returnable.orders_cancelled, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_users_and_filter_every_buyers_orders() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let a = product(&admin, "A", 2).await;
    let b = product(&admin, "B", 5).await;
    let ann = server.buyer(&admin, "ann").await;
    let ben = server.buyer(&admin, "ben").await;
    for buyer in [&ann, &ben, &ann] {
        let _ = buy(buyer, a.id, 1).await;
        buy(buyer, b.id, 1).await.expect("buy b");
    }
    let users = admin.users(None, 0).await.expect("users");
    let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["admin", "ann", "ben"]);
    let page = admin.users(Some("admin"), 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].username, "ann");

    let all = admin.query_orders(None, 0, None, None).await.expect("all");
    assert_eq!(all.next_after, None);
    assert_eq!(
        all.orders.len(),
        5,
        "two of A (the third sold out at intake) and three of B"
    );
    let of_a = admin
        .query_orders(None, 0, Some(a.id), Some(StatusFilter::Confirmed))
        .await
        .expect("of a");
    assert_eq!(of_a.orders.len(), 2);
    assert!(of_a.orders.iter().all(|o| o.items[0].product_id == a.id));
    // Paging: one at a time, continuing after the last.
    let first = admin
        .query_orders(None, 1, Some(b.id), None)
        .await
        .expect("first");
    assert_eq!(first.orders.len(), 1);
    let after = first.next_after.expect("more to come");
    let rest = admin
        .query_orders(Some(after), 0, Some(b.id), None)
        .await
        .expect("rest");
    assert_eq!(rest.orders.len(), 2);
    assert!(rest.orders.iter().all(|o| o.id > first.orders[0].id));
    // An admin can read any order; a buyer still only its own.
    let anns_user = ann.order(all.orders[0].id).await.map(|o| o.user_id);
    let foreign = all
        .orders
        .iter()
        .find(|o| Some(o.user_id) != anns_user.as_ref().ok().copied())
        .expect("orders of both buyers");
    assert_eq!(
        admin
            .order(foreign.id)
            .await
            .expect("admin reads any order")
            .id,
        foreign.id
    );
    let (owner, stranger) = if anns_user.is_ok() {
        (&ben, &ann)
    } else {
        (&ann, &ben)
    };
    assert_eq!(
        owner.order(foreign.id).await.expect("own order").id,
        foreign.id
    );
    assert_eq!(
        code_of(stranger.order(foreign.id).await),
        ErrorCode::NotFound
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_cancellations_and_set_stock_survive_a_restart() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let rules = SaleRules {
        max_per_buyer: Some(1),
        opens_at_ms: Some(now_ms() - 1000),
        closes_at_ms: Some(now_ms() + 3_600_000),
    };
    let p = admin
        .create_product_with_rules("Durable", 100, 5, rules)
        .await
        .expect("create");
    let buyer = server.buyer(&admin, "keeper").await;
    let order = buy(&buyer, p.id, 1).await.expect("buy").order;
    admin.cancel_order(order.id).await.expect("cancel");
    let again = buy(&buyer, p.id, 1).await.expect("buy again").order;
    assert_eq!(again.status, OrderStatus::Confirmed);
    admin.set_stock(p.id, 2).await.expect("set stock");
    let before = admin.product(p.id).await.expect("product");
    server.stop().await;

    let server = TestServer::start_in(dir.path()).await;
    let admin = server.admin().await;
    let after = admin.product(p.id).await.expect("product");
    assert_eq!(after, before);
    assert!(after.balances());
    let buyer = server.client().await;
    buyer
        .login("keeper", crate::support::BUYER_PASSWORD)
        .await
        .expect("login");
    assert_eq!(
        buyer.order(order.id).await.expect("order").status,
        OrderStatus::Cancelled
    );
    // The limit still counts the confirmed unit held from before the restart.
    assert_eq!(
        code_of(buy(&buyer, p.id, 1).await),
        ErrorCode::LimitExceeded
    );
    assert_eq!(admin.stats().await.expect("stats").orders_cancelled, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_request_is_forbidden_to_buyers_and_partners() {
    let (server, _dir) = TestServer::start().await;
    let admin = server.admin().await;
    let p = product(&admin, "Guarded", 3).await;
    let buyer = server.buyer(&admin, "mallory").await;
    let key = partner_key(&admin, "shady-shop").await;
    let partner = server.client().await;
    partner.login_api_key(&key).await.expect("partner login");
    let order = buy(&buyer, p.id, 1).await.expect("buy").order;
    let admin_requests = vec![
        RequestBody::CreateProduct {
            name: "Mine".into(),
            price_cents: 1,
            stock: 100,
            rules: SaleRules::default(),
        },
        RequestBody::Restock {
            product_id: p.id,
            qty: 100,
        },
        RequestBody::CreateUser {
            username: "root2".into(),
            password: "password123".into(),
            role: Role::Admin,
        },
        RequestBody::CancelOrder { id: order.id },
        RequestBody::Stats,
        RequestBody::CreateApiKey {
            partner: "shady-shop".into(),
        },
        RequestBody::RevokeApiKey {
            key_id: "whatever".into(),
        },
        RequestBody::SetStock {
            product_id: p.id,
            stock: 1000,
        },
        RequestBody::SetLimit {
            product_id: p.id,
            max_per_buyer: Some(1),
        },
        RequestBody::SetWindow {
            product_id: p.id,
            opens_at_ms: Some(0),
            closes_at_ms: Some(1),
        },
        RequestBody::ListUsers {
            after: None,
            limit: 0,
        },
        RequestBody::QueryOrders {
            after: None,
            limit: 0,
            product_id: None,
            status: None,
        },
    ];
    for body in admin_requests {
        assert!(body.is_admin(), "{body:?}");
        for who in [&buyer, &partner] {
            let kind = body.kind();
            let result = who.request(body.clone()).await;
            assert_eq!(code_of(result), ErrorCode::Forbidden, "{kind}");
        }
    }
    // Nothing changed.
    let after = admin.product(p.id).await.expect("product");
    assert_eq!(
        (after.stock, after.restocked, after.rules),
        (2, 0, SaleRules::default())
    );
    assert_eq!(
        buyer.order(order.id).await.expect("order").status,
        OrderStatus::Confirmed
    );
    assert_eq!(admin.users(None, 0).await.expect("users").len(), 3);
    server.stop().await;
}
