//! `flashsale-admin` end to end: a real server runs in this process on
//! 127.0.0.1:0 with a temp data dir, buyers use the client library, and the
//! real binary is run as a child process, as an operator would.

use flashsale_client::protocol::{OrderLine, OrderStatus, ProductId, Role};
use flashsale_client::{Client, ErrorCode};
use flashsale_server::{Config, PasswordHashing, Server, ServerError};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Password of the admin every test server has.
const ADMIN_PASSWORD: &str = "admin-password";

/// Password of every buyer made by [`TestServer::buyer`].
const BUYER_PASSWORD: &str = "buyer-password";

/// A server running in this process on a temp data dir.
struct TestServer {
    /// Where it listens.
    addr: SocketAddr,
    /// Ends the server when sent (or dropped).
    _shutdown: oneshot::Sender<()>,
    /// The serving task.
    _task: JoinHandle<Result<(), ServerError>>,
    /// The data dir, removed when the server is dropped.
    _dir: TempDir,
}

impl TestServer {
    /// Starts a server with cheap password hashing and an admin account.
    async fn start() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let mut config = Config::new(dir.path());
        config.password_hashing = PasswordHashing::insecure_fast_for_tests();
        config.shards = 2;
        let server = Server::open(config).await.expect("open server");
        server
            .create_user("admin", ADMIN_PASSWORD, Role::Admin)
            .await
            .expect("create admin");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stop.await;
        }));
        Self {
            addr,
            _shutdown: shutdown,
            _task: task,
            _dir: dir,
        }
    }

    /// A client logged in as the admin.
    async fn admin(&self) -> Client {
        let client = Client::connect(self.addr).await.expect("connect");
        client
            .login("admin", ADMIN_PASSWORD)
            .await
            .expect("admin login");
        client
    }

    /// Creates buyer `name` and returns a client logged in as it.
    async fn buyer(&self, admin: &Client, name: &str) -> Client {
        admin
            .create_user(name, BUYER_PASSWORD, Role::Buyer)
            .await
            .expect("create buyer");
        let client = Client::connect(self.addr).await.expect("connect");
        client
            .login(name, BUYER_PASSWORD)
            .await
            .expect("buyer login");
        client
    }

    /// Runs `flashsale-admin ARGS` as the admin against this server.
    async fn cli(&self, args: &[&str]) -> Run {
        run_cli(&self.addr.to_string(), "admin", ADMIN_PASSWORD, args).await
    }

    /// Runs `flashsale-admin ARGS --json` as the admin; asserts success and
    /// that stdout is one JSON value, and returns it.
    async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let run = self.cli(&args).await;
        assert_eq!(
            run.code, 0,
            "flashsale-admin {args:?} failed: {}",
            run.stderr
        );
        run.json()
    }
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    /// Exit code (-1 when killed by a signal).
    code: i32,
    /// Its stdout.
    stdout: String,
    /// Its stderr.
    stderr: String,
}

impl Run {
    /// stdout as exactly one JSON value.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", self.stdout))
    }
}

/// Runs the real binary with the connection given through the environment,
/// as an operator's shell would.
async fn run_cli(addr: &str, user: &str, password: &str, args: &[&str]) -> Run {
    run_cli_with(addr, user, password, args, &[], None).await
}

/// [`run_cli`] with more environment variables and, if `stdin` is given,
/// that text on its stdin.
async fn run_cli_with(
    addr: &str,
    user: &str,
    password: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale-admin"))
        .args(args)
        .env("FLASHSALE_ADDR", addr)
        .env("FLASHSALE_USER", user)
        .env("FLASHSALE_PASSWORD", password)
        .env_remove("FLASHSALE_NEW_PASSWORD")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run flashsale-admin");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    let output = child
        .wait_with_output()
        .await
        .expect("wait flashsale-admin");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A JSON field as u64; panics with the document when missing.
fn u64_of(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no u64 `{field}` in {value}"))
}

/// A JSON field as i64; panics with the document when missing.
fn i64_of(value: &Value, field: &str) -> i64 {
    value[field]
        .as_i64()
        .unwrap_or_else(|| panic!("no i64 `{field}` in {value}"))
}

/// True when the product's figures add up: `initial + restocked - confirmed == stock`.
fn ledger_balances(product: &Value) -> bool {
    i128::from(u64_of(product, "initial_stock")) + i128::from(i64_of(product, "restocked"))
        - i128::from(u64_of(product, "confirmed_qty"))
        == i128::from(u64_of(product, "stock"))
}

/// The `stats --json` entry of product `id`.
fn product_in_stats(stats: &Value, id: u64) -> Value {
    stats["products"]
        .as_array()
        .unwrap_or_else(|| panic!("no products array in {stats}"))
        .iter()
        .find(|p| p["id"].as_u64() == Some(id))
        .unwrap_or_else(|| panic!("product {id} missing from {stats}"))
        .clone()
}

/// What the buyers of a sale were told.
#[derive(Debug, Default)]
struct Told {
    /// Ids of the orders confirmed.
    confirmed: BTreeSet<u64>,
    /// Buyers told `SoldOut` (refused at intake or rejected order).
    sold_out: u64,
}

/// Creates a product with the CLI, restocks it with the CLI, and lets
/// `buyers` buyers buy one unit each at the same time.
async fn run_a_sale(server: &TestServer, stock: u64, restock: u64, buyers: usize) -> (u64, Told) {
    let stock_arg = stock.to_string();
    let created = server
        .json(&[
            "products",
            "create",
            "--name",
            "Sneaker",
            "--price-cents",
            "12999",
            "--stock",
            &stock_arg,
        ])
        .await;
    let id = u64_of(&created, "id");
    let restocked = server
        .json(&["products", "restock", &id.to_string(), &restock.to_string()])
        .await;
    assert_eq!(u64_of(&restocked, "stock"), stock + restock);
    assert_eq!(
        i64_of(&restocked, "restocked"),
        i64::try_from(restock).expect("small")
    );

    let admin = server.admin().await;
    let mut clients = Vec::new();
    for n in 0..buyers {
        clients.push(server.buyer(&admin, &format!("buyer{n}")).await);
    }
    let attempts = clients.iter().map(|client| async move {
        let line = OrderLine {
            product_id: ProductId(id),
            qty: 1,
        };
        match client.buy(vec![line]).await {
            Ok(placed) => Ok(placed.outcome().await.expect("outcome")),
            Err(e) => Err(e.code()),
        }
    });
    let mut told = Told::default();
    for result in futures::future::join_all(attempts).await {
        match result {
            Ok(order) if order.status == OrderStatus::Confirmed => {
                told.confirmed.insert(order.id.0);
            }
            Ok(order) => match order.status {
                OrderStatus::Rejected {
                    code: ErrorCode::SoldOut,
                    ..
                } => told.sold_out += 1,
                other => panic!("unexpected outcome {other:?}"),
            },
            Err(Some(ErrorCode::SoldOut)) => told.sold_out += 1,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    (id, told)
}

/// Buys one unit of product `id`: `Ok` when confirmed, else the code the
/// buyer was given (refused at intake, or the rejected order's code).
async fn buy_one(buyer: &Client, id: u64) -> Result<(), ErrorCode> {
    let line = OrderLine {
        product_id: ProductId(id),
        qty: 1,
    };
    match buyer.buy(vec![line]).await {
        Ok(placed) => match placed.outcome().await.expect("outcome").status {
            OrderStatus::Confirmed => Ok(()),
            OrderStatus::Rejected { code, .. } => Err(code),
            other => panic!("unexpected outcome {other:?}"),
        },
        Err(e) => Err(e.code().unwrap_or_else(|| panic!("not a refusal: {e}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_json_matches_what_the_buyers_were_told_and_the_ledger_balances() {
    let server = TestServer::start().await;
    let (id, told) = run_a_sale(&server, 3, 2, 8).await;
    assert_eq!(told.confirmed.len(), 5, "stock 3 + 2 restocked, 8 buyers");
    assert_eq!(told.sold_out, 3);

    let stats = server.json(&["stats"]).await;
    let product = product_in_stats(&stats, id);
    assert_eq!(product["name"], "Sneaker");
    assert_eq!(u64_of(&product, "initial_stock"), 3);
    assert_eq!(i64_of(&product, "restocked"), 2);
    assert_eq!(u64_of(&product, "confirmed_qty"), 5);
    assert_eq!(u64_of(&product, "stock"), 0);
    assert!(ledger_balances(&product), "{product}");
    assert_eq!(product["balances"], true);
    assert_eq!(u64_of(&product, "orders_confirmed"), 5);
    assert_eq!(
        u64_of(&product, "orders_rejected") + u64_of(&product, "refused_at_intake"),
        told.sold_out,
        "{product}"
    );
    assert_eq!(u64_of(&stats, "orders_confirmed"), 5);
    assert_eq!(u64_of(&stats, "orders_cancelled"), 0);
    assert!(u64_of(&stats, "decisions") >= 8, "{stats}");
    for field in ["connections", "orders_rejected", "queue_depth", "uptime_ms"] {
        u64_of(&stats, field);
    }

    // The human view shows the same product in an aligned table.
    let human = server.cli(&["stats"]).await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("Sneaker"), "{}", human.stdout);
    assert!(human.stdout.contains("CONFIRMED QTY"), "{}", human.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_list_shows_the_confirmed_orders_and_cancel_returns_their_stock() {
    let server = TestServer::start().await;
    let (id, told) = run_a_sale(&server, 4, 1, 7).await;
    let id_arg = id.to_string();

    let listed = server
        .json(&[
            "orders",
            "list",
            "--status",
            "confirmed",
            "--product",
            &id_arg,
        ])
        .await;
    let listed_ids: BTreeSet<u64> = listed
        .as_array()
        .expect("an array of orders")
        .iter()
        .map(|order| {
            assert_eq!(order["status"], "confirmed");
            u64_of(order, "id")
        })
        .collect();
    assert_eq!(listed_ids, told.confirmed);

    // --limit stops early, taking the first orders by id (across pages).
    let first_two = server
        .json(&["orders", "list", "--status", "confirmed", "--limit", "2"])
        .await;
    let first_two: Vec<u64> = first_two
        .as_array()
        .expect("an array of orders")
        .iter()
        .map(|order| u64_of(order, "id"))
        .collect();
    assert_eq!(
        first_two,
        told.confirmed.iter().copied().take(2).collect::<Vec<_>>()
    );

    let victim = *told.confirmed.first().expect("a confirmed order");
    let victim_arg = victim.to_string();
    let cancelled = server.json(&["orders", "cancel", &victim_arg]).await;
    assert_eq!(u64_of(&cancelled, "id"), victim);
    assert_eq!(cancelled["status"], "cancelled");

    let product = server.json(&["products", "show", &id_arg]).await;
    assert_eq!(u64_of(&product, "stock"), 1, "the cancelled unit is back");
    assert_eq!(u64_of(&product, "confirmed_qty"), 4);
    assert!(ledger_balances(&product), "{product}");

    let shown = server.json(&["orders", "show", &victim_arg]).await;
    assert_eq!(shown["status"], "cancelled");
    let still_confirmed = server
        .json(&["orders", "list", "--status", "confirmed"])
        .await;
    assert_eq!(still_confirmed.as_array().map(Vec::len), Some(4));
    let stats = server.json(&["stats"]).await;
    assert_eq!(u64_of(&stats, "orders_cancelled"), 1);

    // The human table lists the orders too.
    let human = server.cli(&["orders", "list", "--product", &id_arg]).await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("cancelled"), "{}", human.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sale_rules_set_from_the_cli_are_enforced_for_buyers() {
    let server = TestServer::start().await;
    let created = server
        .json(&[
            "products",
            "create",
            "--name",
            "Console",
            "--price-cents",
            "49900",
            "--stock",
            "10",
            "--limit",
            "1",
            "--opens",
            "+1h",
        ])
        .await;
    let id = u64_of(&created, "id");
    let id_arg = id.to_string();
    assert_eq!(u64_of(&created, "max_per_buyer"), 1);
    let opens = u64_of(&created, "opens_at_ms");
    assert!(created["closes_at_ms"].is_null());

    let admin = server.admin().await;
    let buyer = server.buyer(&admin, "eager").await;
    let early = buy_one(&buyer, id).await;
    assert_eq!(early, Err(ErrorCode::SaleNotOpen));

    // Open it now; the closing end, not given, stays as it was (open).
    let opened = server
        .json(&["products", "set-window", &id_arg, "--opens", "now"])
        .await;
    assert!(u64_of(&opened, "opens_at_ms") < opens);
    assert!(opened["closes_at_ms"].is_null());
    assert_eq!(buy_one(&buyer, id).await, Ok(()));
    assert_eq!(buy_one(&buyer, id).await, Err(ErrorCode::LimitExceeded));

    let unlimited = server
        .json(&["products", "set-limit", &id_arg, "none"])
        .await;
    assert!(unlimited["max_per_buyer"].is_null());
    assert_eq!(buy_one(&buyer, id).await, Ok(()));

    let set = server.json(&["products", "set-stock", &id_arg, "3"]).await;
    assert_eq!(u64_of(&set, "stock"), 3);
    assert_eq!(u64_of(&set, "confirmed_qty"), 2);
    assert!(ledger_balances(&set), "{set}");

    let closed = server
        .json(&["products", "set-window", &id_arg, "--closes", "now"])
        .await;
    assert!(
        u64_of(&closed, "opens_at_ms") < opens,
        "the opening end stays"
    );
    u64_of(&closed, "closes_at_ms");
    assert_eq!(buy_one(&buyer, id).await, Err(ErrorCode::SaleNotOpen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_create_prints_a_generated_password_once_and_it_logs_in() {
    let server = TestServer::start().await;
    let created = server
        .json(&["users", "create", "carol", "--role", "buyer"])
        .await;
    assert_eq!(created["username"], "carol");
    assert_eq!(created["role"], "buyer");
    let password = created["password"].as_str().expect("a generated password");

    let client = Client::connect(server.addr).await.expect("connect");
    let session = client.login("carol", password).await.expect("login");
    assert_eq!(session.role, Role::Buyer);

    // A given password (from the environment, never the command line) is
    // not echoed.
    let given = run_cli_with(
        &server.addr.to_string(),
        "admin",
        ADMIN_PASSWORD,
        &["users", "create", "dave", "--role", "partner"],
        &[("FLASHSALE_NEW_PASSWORD", "dave-secret-pw")],
        None,
    )
    .await;
    assert_eq!(given.code, 0, "{}", given.stderr);
    assert!(!given.stdout.contains("dave-secret-pw"), "{}", given.stdout);
    let dave = Client::connect(server.addr).await.expect("connect");
    dave.login("dave", "dave-secret-pw")
        .await
        .expect("the given password logs in");

    let users = server.json(&["users", "list"]).await;
    let names: Vec<&str> = users
        .as_array()
        .expect("an array of users")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["admin", "carol", "dave"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_keys_issued_by_the_cli_log_in_until_revoked() {
    let server = TestServer::start().await;
    server
        .json(&["users", "create", "acme", "--role", "partner"])
        .await;
    let key = server.json(&["partners", "create-key", "acme"]).await;
    let secret = key["key"].as_str().expect("a key");
    let key_id = key["key_id"].as_str().expect("a key id");

    let partner = Client::connect(server.addr).await.expect("connect");
    let session = partner.login_api_key(secret).await.expect("key logs in");
    assert_eq!(session.role, Role::Partner);

    let revoked = server.json(&["partners", "revoke-key", key_id]).await;
    assert_eq!(revoked["revoked"], true);
    let again = Client::connect(server.addr).await.expect("connect");
    let refused = again.login_api_key(secret).await;
    assert_eq!(
        refused.err().and_then(|e| e.code()),
        Some(ErrorCode::Unauthenticated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_exits_3_with_the_servers_code_and_never_prints_the_password() {
    let server = TestServer::start().await;
    let run = run_cli(
        &server.addr.to_string(),
        "admin",
        "not-the-password-42",
        &["stats"],
    )
    .await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("cannot log in as 'admin'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Unauthenticated"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        !run.stderr.contains("not-the-password-42"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_account_exits_3_saying_an_admin_is_needed() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    server.buyer(&admin, "mallory").await;
    let run = run_cli(
        &server.addr.to_string(),
        "mallory",
        BUYER_PASSWORD,
        &["stats"],
    )
    .await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("'mallory' is a buyer account"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("admin"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_exits_1_with_the_error_code_message_and_trace_id() {
    let server = TestServer::start().await;
    for args in [
        &["products", "show", "999"][..],
        &["products", "restock", "999", "5"],
    ] {
        let run = server.cli(args).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains("NotFound"), "{}", run.stderr);
        assert!(run.stderr.contains("999"), "{}", run.stderr);
        assert!(run.stderr.contains("trace "), "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let missing_order = server.cli(&["orders", "show", "424242"]).await;
    assert_eq!(missing_order.code, 1, "{missing_order:?}");
    assert!(
        missing_order.stderr.contains("NotFound"),
        "{}",
        missing_order.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_exits_3_and_bad_arguments_exit_2() {
    // A port that was free a moment ago and has no listener now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let run = run_cli(&addr, "admin", ADMIN_PASSWORD, &["stats"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);

    let usage = run_cli(
        &addr,
        "admin",
        ADMIN_PASSWORD,
        &["products", "set-limit", "1", "lots"],
    )
    .await;
    assert_eq!(usage.code, 2, "{usage:?}");
    let time = run_cli(
        &addr,
        "admin",
        ADMIN_PASSWORD,
        &[
            "products",
            "create",
            "--name",
            "x",
            "--price-cents",
            "1",
            "--stock",
            "1",
            "--opens",
            "tomorrow",
        ],
    )
    .await;
    assert_eq!(time.code, 2, "{time:?}");
    assert!(time.stderr.contains("RFC 3339"), "{}", time.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_count_stops_after_that_many_refreshes_and_never_clears_a_pipe() {
    let server = TestServer::start().await;
    server
        .json(&[
            "products",
            "create",
            "--name",
            "Hat",
            "--price-cents",
            "500",
            "--stock",
            "9",
        ])
        .await;

    let human = server
        .cli(&["watch", "--interval", "0.01", "--count", "3"])
        .await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert_eq!(
        human.stdout.matches("connections").count(),
        3,
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("Hat"), "{}", human.stdout);
    assert!(
        !human.stdout.contains('\x1b'),
        "no escape codes into a pipe"
    );

    let json = server
        .cli(&["watch", "--interval", "10ms", "--count", "2", "--json"])
        .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let lines: Vec<Value> = json
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{}", json.stdout);
    for line in &lines {
        assert!(line["decisions_per_s"].as_f64().is_some(), "{line}");
        assert_eq!(line["products"][0]["name"], "Hat");
    }
}

/// Runs `flashsale-admin ARGS --json` as the admin with `stdin` on its
/// stdin; asserts success and returns the JSON value.
async fn json_with_stdin(server: &TestServer, args: &[&str], stdin: &str) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let run = run_cli_with(
        &server.addr.to_string(),
        "admin",
        ADMIN_PASSWORD,
        &args,
        &[],
        Some(stdin),
    )
    .await;
    assert_eq!(
        run.code, 0,
        "flashsale-admin {args:?} failed: {}",
        run.stderr
    );
    run.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_disable_enable_set_password_and_end_sessions_take_effect_at_once() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    json_with_stdin(
        &server,
        &[
            "users",
            "create",
            "erin",
            "--role",
            "buyer",
            "--password-stdin",
        ],
        "erins-first-password\n",
    )
    .await;
    let erin = Client::connect(server.addr).await.expect("connect");
    erin.login("erin", "erins-first-password")
        .await
        .expect("the password from stdin logs in");

    let disabled = server.json(&["users", "disable", "erin"]).await;
    assert_eq!(disabled["disabled"], true);
    assert_eq!(
        erin.cart().await.err().and_then(|e| e.code()),
        Some(ErrorCode::Unauthenticated),
        "a disabled account's session ends at once"
    );
    let listed = server.json(&["users", "list"]).await;
    let row = listed
        .as_array()
        .expect("an array")
        .iter()
        .find(|u| u["username"] == "erin")
        .cloned()
        .expect("erin listed");
    assert_eq!(row["disabled"], true);
    let enabled = server.json(&["users", "enable", "erin"]).await;
    assert_eq!(enabled["disabled"], false);

    let again = Client::connect(server.addr).await.expect("connect");
    again
        .login("erin", "erins-first-password")
        .await
        .expect("enabled again");
    let set = json_with_stdin(
        &server,
        &["users", "set-password", "erin", "--password-stdin"],
        "erins-second-password\r\n",
    )
    .await;
    assert!(
        set.get("password").is_none(),
        "a given password is not echoed"
    );
    assert_eq!(
        again.cart().await.err().and_then(|e| e.code()),
        Some(ErrorCode::Unauthenticated),
        "a new password ends the sessions"
    );
    let third = Client::connect(server.addr).await.expect("connect");
    third
        .login("erin", "erins-second-password")
        .await
        .expect("the new password logs in");
    let ended = server.json(&["users", "end-sessions", "erin"]).await;
    assert_eq!(ended["sessions"], 1);
    assert_eq!(
        third.cart().await.err().and_then(|e| e.code()),
        Some(ErrorCode::Unauthenticated)
    );

    // A generated password is printed once and works.
    let generated = server.json(&["users", "set-password", "erin"]).await;
    let password = generated["password"]
        .as_str()
        .expect("a generated password");
    let fourth = Client::connect(server.addr).await.expect("connect");
    fourth
        .login("erin", password)
        .await
        .expect("generated password");
    let missing = server.cli(&["users", "disable", "nobody"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_writes_a_verified_file_that_restore_makes_a_data_dir_of() {
    let server = TestServer::start().await;
    let (id, told) = run_a_sale(&server, 3, 1, 6).await;
    assert_eq!(told.confirmed.len(), 4);
    let out = TempDir::new().expect("temp dir");
    let dir = out.path().join("backups");
    let dir_arg = dir.to_str().expect("utf-8 path");

    let human = server.cli(&["backup", dir_arg]).await;
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("written to"), "{}", human.stdout);
    assert!(human.stdout.contains("entries in"), "{}", human.stdout);
    let file = dir.join("flashsale.backup");
    let first_len = std::fs::metadata(&file).expect("the backup file").len();

    // An existing backup is replaced only with --force.
    let refused = server.cli(&["backup", dir_arg]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(std::fs::metadata(&file).expect("kept").len(), first_len);
    let json = server.json(&["backup", dir_arg, "--force"]).await;
    assert_eq!(
        u64_of(&json, "bytes"),
        std::fs::metadata(&file).expect("file").len()
    );
    assert!(
        u64_of(&json, "entries") > 0 && u64_of(&json, "trees") > 0,
        "{json}"
    );
    assert_eq!(json["sha256"].as_str().map(str::len), Some(64), "{json}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["flashsale.backup"], "no partial file is left");

    // What `flashsale-server restore --from DIR --data-dir NEW` runs.
    let new = out.path().join("restored");
    let restored = flashsale_server::restore(&dir, &new).expect("restore");
    assert_eq!(restored.backup.entries, u64_of(&json, "entries"));
    let mut config = Config::new(&new);
    config.password_hashing = PasswordHashing::insecure_fast_for_tests();
    config.shards = 2;
    let server = Server::open(config)
        .await
        .expect("the restored data dir opens");
    assert!(!server.is_empty(), "the accounts were restored");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let run = run_cli(
        &addr,
        "admin",
        ADMIN_PASSWORD,
        &["orders", "list", "--status", "confirmed", "--json"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let confirmed: BTreeSet<u64> = run
        .json()
        .as_array()
        .expect("orders")
        .iter()
        .map(|order| u64_of(order, "id"))
        .collect();
    assert_eq!(confirmed, told.confirmed);
    let stats = run_cli(&addr, "admin", ADMIN_PASSWORD, &["stats", "--json"]).await;
    let product = product_in_stats(&stats.json(), id);
    assert_eq!(u64_of(&product, "confirmed_qty"), 4);
    assert!(ledger_balances(&product), "{product}");
    let _ = stop.send(());
    task.await.expect("server task").expect("clean shutdown");
}
