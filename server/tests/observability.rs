//! Logs and metrics of the real `flashsale-server` binary: request ids in
//! error answers and in the log file, no secrets in the log, and the
//! Prometheus endpoint.

use flashsale_client::protocol::{ErrorCode, ProductId, Role, SaleRules};
use flashsale_client::{Client, ClientError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod process;
use process::{free_addr, ServerProcess};

const ADMIN_PASSWORD: &str = "obs-admin-Zq8vW3kP";
/// Distinctive, so any appearance in a log is this password.
const BUYER_PASSWORD: &str = "obs-buyer-Xy7hunter2Qm";

/// Starts the binary with `--demo` on a data dir inside `dir` and extra
/// flags, discarding its stderr (the tests read the log files).
async fn start(dir: &Path, extra: &[&str], rust_log: &str) -> ServerProcess {
    let data_dir = dir.join("data");
    ServerProcess::start(
        &data_dir,
        free_addr(),
        extra,
        ADMIN_PASSWORD,
        rust_log,
        false,
    )
    .await
}

/// SIGTERM, then a clean exit (which flushes the logs).
async fn stop(server: ServerProcess) {
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status}");
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> (Client, String) {
    let client = Client::connect(addr).await.expect("connect");
    let session = client.login(user, password).await.expect("login");
    (client, session.token)
}

fn server_error(
    result: Result<impl std::fmt::Debug, ClientError>,
) -> flashsale_client::protocol::WireError {
    match result {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// The log files in `dir` (`api.YYYY-MM-DD.log`), concatenated.
fn read_logs(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no log file in {}", dir.display());
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            name.starts_with("api.") && name.ends_with(".log"),
            "unexpected log file {name}"
        );
    }
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read log"))
        .collect()
}

#[tokio::test]
async fn error_answers_carry_the_request_id_of_their_log_lines_and_secrets_stay_out() {
    let dir = TempDir::new().expect("temp dir");
    let log_dir = dir.path().join("logs");
    let log_dir_arg = log_dir.to_str().expect("utf-8 path");
    let server = start(dir.path(), &["--log-dir", log_dir_arg], "debug").await;

    let (admin, admin_token) = login(server.addr, "admin", ADMIN_PASSWORD).await;
    admin
        .create_user("observed", BUYER_PASSWORD, Role::Buyer)
        .await
        .expect("create buyer");
    let (buyer, buyer_token) = login(server.addr, "observed", BUYER_PASSWORD).await;
    let forbidden = server_error(buyer.stats().await);
    assert_eq!(forbidden.code, ErrorCode::Forbidden);
    let not_found = server_error(buyer.product(ProductId(999_999)).await);
    assert_eq!(not_found.code, ErrorCode::NotFound);
    assert_ne!(forbidden.trace_id, not_found.trace_id);
    drop((admin, buyer));
    stop(server).await;

    let log = read_logs(&log_dir);
    for (error, kind) in [(&forbidden, "stats"), (&not_found, "get_product")] {
        let id = error.trace_id.to_string();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
        assert!(
            lines.iter().any(|l| l.contains(": request trace_id=")),
            "no request line for {id}:\n{}",
            lines.join("\n")
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("outcome=\"{}\"", error.code))),
            "no answer line for {id}:\n{}",
            lines.join("\n")
        );
        assert!(
            lines
                .iter()
                .all(|l| l.contains(&format!("kind=\"{kind}\""))),
            "lines of {id} name another kind:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        log.contains(" INFO ") && log.contains("outcome=\"Forbidden\""),
        "Forbidden is logged at INFO"
    );
    for secret in [BUYER_PASSWORD, ADMIN_PASSWORD, &admin_token, &buyer_token] {
        assert!(!log.contains(secret), "a secret is in the log: {secret}");
    }
}

/// `GET path` over plain HTTP/1.0; the response body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("metrics answer within 10 s")
    .expect("read response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The values of `label` in the samples of `metric`.
fn label_values(metrics: &str, metric: &str, label: &str) -> Vec<String> {
    let needle = format!("{label}=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(metric)?.strip_prefix('{'))
        .filter_map(|labels| {
            let start = labels.find(&needle)? + needle.len();
            let end = labels[start..].find('"')?;
            Some(labels[start..start + end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_requests_orders_and_connections() {
    let dir = TempDir::new().expect("temp dir");
    let metrics_addr = free_addr();
    let server = start(
        dir.path(),
        &["--metrics-addr", &metrics_addr.to_string()],
        "warn",
    )
    .await;

    let (admin, _) = login(server.addr, "admin", ADMIN_PASSWORD).await;
    let product = admin
        .create_product("observed gadget", 100, 1)
        .await
        .expect("create product");
    admin
        .create_user("metered", BUYER_PASSWORD, Role::Buyer)
        .await
        .expect("create buyer");
    let (buyer, _) = login(server.addr, "metered", BUYER_PASSWORD).await;
    let line = flashsale_client::protocol::OrderLine {
        product_id: product.id,
        qty: 1,
    };
    buyer.buy(vec![line]).await.expect("first buy");
    let sold_out = server_error(buyer.buy(vec![line]).await);
    assert_eq!(sold_out.code, ErrorCode::SoldOut);
    let _ = buyer.stats().await;
    // More outcomes, so the label check below covers more than a couple.
    let not_found = server_error(buyer.product(ProductId(999_999)).await);
    assert_eq!(not_found.code, ErrorCode::NotFound);
    let zero = flashsale_client::protocol::OrderLine { qty: 0, ..line };
    let bad = server_error(buyer.buy(vec![zero]).await);
    assert_eq!(bad.code, ErrorCode::BadRequest);
    let later = SaleRules {
        opens_at_ms: Some(u64::MAX / 2),
        ..SaleRules::default()
    };
    let closed = admin
        .create_product_with_rules("not yet", 100, 5, later)
        .await
        .expect("create a product whose sale opens later");
    let line = flashsale_client::protocol::OrderLine {
        product_id: closed.id,
        qty: 1,
    };
    let not_open = server_error(buyer.buy(vec![line]).await);
    assert_eq!(not_open.code, ErrorCode::SaleNotOpen);
    let anonymous = Client::connect(server.addr).await.expect("connect");
    let unauthenticated = server_error(anonymous.cart().await);
    assert_eq!(unauthenticated.code, ErrorCode::Unauthenticated);
    drop(anonymous);

    let metrics = http_get(metrics_addr, "/metrics").await;
    let positive = |series: &str| {
        let value = sample(&metrics, series);
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{series} is {value:?} in:\n{metrics}"
        );
    };
    positive(r#"flashsale_requests_total{kind="login",outcome="ok"}"#);
    positive(r#"flashsale_requests_total{kind="buy",outcome="ok"}"#);
    positive(r#"flashsale_requests_total{kind="buy",outcome="SoldOut"}"#);
    positive(r#"flashsale_requests_total{kind="stats",outcome="Forbidden"}"#);
    positive("flashsale_orders_accepted_total");
    positive("flashsale_orders_confirmed_total");
    positive(r#"flashsale_intake_refused_total{reason="SoldOut"}"#);
    positive("flashsale_connections");
    positive("flashsale_journal_flush_seconds_count");
    positive(r#"flashsale_batch_decisions_bucket{le="+Inf"}"#);
    positive("flashsale_order_answer_seconds_count");
    for code in [
        ErrorCode::NotFound,
        ErrorCode::BadRequest,
        ErrorCode::SaleNotOpen,
        ErrorCode::Unauthenticated,
    ] {
        let counted = label_values(&metrics, "flashsale_requests_total", "outcome");
        assert!(
            counted.contains(&code.to_string()),
            "no request counted as {code}: {counted:?}"
        );
    }
    // Every outcome and reason label is a code of the protocol's list (or
    // one of the few names that are not codes).
    let codes: Vec<String> = ErrorCode::ALL.iter().map(ToString::to_string).collect();
    for (metric, label, extra) in [
        ("flashsale_requests_total", "outcome", "ok"),
        ("flashsale_intake_refused_total", "reason", "RateLimited"),
        ("flashsale_orders_rejected_total", "reason", ""),
    ] {
        for value in label_values(&metrics, metric, label) {
            assert!(
                value == extra || codes.contains(&value),
                "{metric} has {label}=\"{value}\", not a code of ErrorCode::ALL"
            );
        }
    }
    assert!(
        metrics.contains("# TYPE flashsale_journal_flush_seconds histogram"),
        "{metrics}"
    );
    assert!(metrics.contains("flashsale_shard_queue_depth"), "{metrics}");

    drop((admin, buyer));
    stop(server).await;
}

#[tokio::test]
async fn the_pay_rate_flags_limit_one_connection_and_refusals_are_counted() {
    let dir = TempDir::new().expect("temp dir");
    let metrics_addr = free_addr();
    let server = start(
        dir.path(),
        &[
            "--pay-rate-per-connection",
            "1/1",
            "--pay-rate-per-buyer",
            "off",
            "--metrics-addr",
            &metrics_addr.to_string(),
        ],
        "warn",
    )
    .await;
    let (admin, _) = login(server.addr, "admin", ADMIN_PASSWORD).await;
    let product = admin
        .create_product("rate-limited gadget", 100, 100)
        .await
        .expect("create product");
    admin
        .create_user("hasty", BUYER_PASSWORD, Role::Buyer)
        .await
        .expect("create buyer");
    // One attempt per intent: the client would otherwise retry `Overloaded`.
    let config = flashsale_client::ClientConfig {
        pay_attempts: 1,
        ..flashsale_client::ClientConfig::default()
    };
    let buyer = Client::connect_with(server.addr, config)
        .await
        .expect("connect");
    buyer.login("hasty", BUYER_PASSWORD).await.expect("login");
    let line = flashsale_client::protocol::OrderLine {
        product_id: product.id,
        qty: 1,
    };
    // Three at once on one connection with a burst of one: two are refused.
    let (a, b, c) = tokio::join!(
        buyer.buy(vec![line]),
        buyer.buy(vec![line]),
        buyer.buy(vec![line])
    );
    let refused: Vec<_> = [a, b, c].into_iter().filter_map(Result::err).collect();
    assert!(refused.len() >= 2, "{refused:?}");
    for error in &refused {
        assert_eq!(error.code(), Some(ErrorCode::Overloaded), "{error:?}");
    }
    let metrics = http_get(metrics_addr, "/metrics").await;
    let limited = sample(
        &metrics,
        r#"flashsale_intake_refused_total{reason="RateLimited"}"#,
    );
    assert_eq!(limited, Some(refused.len() as f64), "{metrics}");
    drop((admin, buyer));
    stop(server).await;
}
