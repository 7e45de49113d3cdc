//! Pipelined pay storms against a server process: each buyer keeps a
//! window of `Buy` requests in flight on one raw connection (frames written
//! and read by the test itself, so what is checked is what the server sent,
//! not a client library's reading of it) until the server closes it, and
//! every attempt's answer is recorded in the order it arrived; then, after a
//! restart, what the server stored is compared with what it answered.

use flashsale_client::protocol::{
    ClientCodec, ClientFrame, ErrorCode, Hello, OrderInfo, OrderLine, OrderStatus, ProductId,
    ProductInfo, Reply, Request, RequestBody, ServerFrame, DEFAULT_MAX_REPLY_FRAME_LEN,
    PROTOCOL_VERSION,
};
use flashsale_client::{Client, ClientConfig};
use futures::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use uuid::Uuid;

/// Longest a storm may go without its streams all finishing once the
/// server closed them, or without reaching the orders waited for: beyond
/// it the test reports a hang, not a slow machine.
const HANG: Duration = Duration::from_secs(120);

/// One pay intent sent.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Index of the buyer in the storm.
    pub buyer: usize,
    /// Its idempotency key.
    pub key: Uuid,
    /// Its lines.
    pub lines: Vec<OrderLine>,
}

/// What the server answered to an attempt.
#[derive(Debug)]
pub enum Outcome {
    /// `Accepted`: the order, decided.
    Order(OrderInfo),
    /// An error `Response`, or, for an attempt without one, the code of the
    /// `Closing` frame the server sent before closing the connection (it
    /// answers every request it read before closing).
    Refused(ErrorCode),
    /// No answer: neither a `Response` nor a `Closing` frame before the
    /// connection ended, or a reply that is not `Accepted`.
    Lost(String),
}

/// An attempt and its answer.
#[derive(Debug)]
pub struct Answered {
    /// The attempt.
    pub attempt: Attempt,
    /// Its answer.
    pub outcome: Outcome,
    /// The answer arrived after [`Storm::mark_signalled`] (called just
    /// before a signal is sent).
    pub after_signal: bool,
}

/// A storm in progress.
pub struct Storm {
    orders: watch::Receiver<usize>,
    signalled: Arc<AtomicBool>,
    streams: Vec<JoinHandle<Vec<Answered>>>,
}

/// Connects and logs in `user` with the client library (for setting up
/// and checking, not for storms).
pub async fn login(addr: SocketAddr, user: &str, password: &str, config: ClientConfig) -> Client {
    let client = Client::connect_with(addr, config).await.expect("connect");
    client.login(user, password).await.expect("login");
    client
}

impl Storm {
    /// Logs each buyer (`names`, with `password`) in on a raw connection of
    /// its own and starts it keeping `window` `Buy` requests of 1 or 2
    /// lines of `products` in flight.
    pub async fn start(
        addr: SocketAddr,
        names: &[String],
        password: &str,
        products: &[ProductId],
        window: usize,
        seed: u64,
    ) -> Self {
        let (count, orders) = watch::channel(0usize);
        let count = Arc::new(count);
        let signalled = Arc::new(AtomicBool::new(false));
        let mut streams = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let (reader, writer) = raw_login(addr, name, password, None).await;
            let run = StreamRun {
                buyer: index,
                products: products.to_vec(),
                rng: StdRng::seed_from_u64(seed ^ index as u64),
                credits: Arc::new(Semaphore::new(window)),
                sent: Arc::new(Mutex::new(HashMap::new())),
                orders: Arc::clone(&count),
                signalled: Arc::clone(&signalled),
            };
            streams.push(tokio::spawn(run.run(reader, writer)));
        }
        Self {
            orders,
            signalled,
            streams,
        }
    }

    /// Waits until the server has answered `n` attempts with an order.
    pub async fn wait_for_orders(&mut self, n: usize) {
        let reached = tokio::time::timeout(HANG, self.orders.wait_for(|&count| count >= n)).await;
        match reached {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("the storm ended before {n} orders were answered"),
            Err(_) => panic!("fewer than {n} orders answered within {HANG:?}"),
        }
    }

    /// Answers arriving from now on are marked `after_signal`.
    pub fn mark_signalled(&self) {
        self.signalled.store(true, Ordering::SeqCst);
    }

    /// Waits until the server has closed every stream's connection; returns
    /// the answers of each stream in the order they arrived (attempts
    /// without a `Response` last).
    pub async fn finish(self) -> Vec<Vec<Answered>> {
        let mut all = Vec::new();
        for stream in self.streams {
            let answered = tokio::time::timeout(HANG, stream)
                .await
                .unwrap_or_else(|_| panic!("the server did not close every stream within {HANG:?}"))
                .expect("stream task");
            all.push(answered);
        }
        all
    }
}

/// The reading half of a raw connection.
pub type Reader = FramedRead<OwnedReadHalf, ClientCodec>;
/// The writing half of a raw connection.
pub type Writer = FramedWrite<OwnedWriteHalf, ClientCodec>;

/// A raw connection with `user` logged in; with `receive_buffer`, its
/// socket's receive buffer is that small (a client that reads slowly).
pub async fn raw_login(
    addr: SocketAddr,
    user: &str,
    password: &str,
    receive_buffer: Option<u32>,
) -> (Reader, Writer) {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = receive_buffer {
        socket
            .set_recv_buffer_size(size)
            .expect("receive buffer size");
    }
    let stream = socket.connect(addr).await.expect("connect");
    let (read, write) = stream.into_split();
    let codec = || ClientCodec::with_max_frame_len(DEFAULT_MAX_REPLY_FRAME_LEN);
    let mut reader = FramedRead::new(read, codec());
    let mut writer = FramedWrite::new(write, codec());
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "storm".into(),
    };
    writer
        .send(ClientFrame::Hello(hello))
        .await
        .expect("send Hello");
    match reader.next().await {
        Some(Ok(ServerFrame::Welcome(_))) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    let login = RequestBody::Login {
        username: user.into(),
        password: password.into(),
    };
    let request = Request {
        id: 0,
        on_behalf_of: None,
        body: login,
    };
    writer
        .send(ClientFrame::Request(request))
        .await
        .expect("send Login");
    match reader.next().await {
        Some(Ok(ServerFrame::Response(r))) if matches!(r.result, Ok(Reply::LoggedIn { .. })) => {}
        other => panic!("expected LoggedIn, got {other:?}"),
    }
    (reader, writer)
}

/// A `Buy` of 1 or 2 lines of `products`, for `buyer`, with a fresh key.
pub fn random_attempt(rng: &mut StdRng, buyer: usize, products: &[ProductId]) -> Attempt {
    let mut lines: Vec<OrderLine> = (0..rng.gen_range(1..=2))
        .map(|_| OrderLine {
            product_id: products[rng.gen_range(0..products.len())],
            qty: rng.gen_range(1..=3),
        })
        .collect();
    lines.sort_by_key(|l| l.product_id);
    lines.dedup_by_key(|l| l.product_id);
    Attempt {
        buyer,
        key: Uuid::new_v4(),
        lines,
    }
}

/// The request frame of an attempt.
pub fn buy_frame(id: u64, attempt: &Attempt) -> ClientFrame {
    ClientFrame::Request(Request {
        id,
        on_behalf_of: None,
        body: RequestBody::Buy {
            items: attempt.lines.clone(),
            idempotency_key: attempt.key,
        },
    })
}

/// Attempts written and not answered yet, by request id.
type Sent = Arc<Mutex<HashMap<u64, Attempt>>>;

struct StreamRun {
    buyer: usize,
    products: Vec<ProductId>,
    rng: StdRng,
    /// One per attempt that may be in flight.
    credits: Arc<Semaphore>,
    sent: Sent,
    orders: Arc<watch::Sender<usize>>,
    signalled: Arc<AtomicBool>,
}

impl StreamRun {
    /// Writes attempts while there is credit, reads answers, until the
    /// server closes the connection.
    async fn run(self, mut reader: Reader, writer: Writer) -> Vec<Answered> {
        let StreamRun {
            buyer,
            products,
            rng,
            credits,
            sent,
            orders,
            signalled,
        } = self;
        let writing = tokio::spawn(write_attempts(
            writer,
            buyer,
            products,
            rng,
            Arc::clone(&credits),
            Arc::clone(&sent),
        ));
        let mut answered = Vec::new();
        let mut closing = None;
        let mut ended = None;
        while let Some(frame) = reader.next().await {
            let response = match frame {
                Ok(ServerFrame::Response(response)) => response,
                Ok(ServerFrame::Closing(reason)) => {
                    closing = Some(reason.code);
                    continue;
                }
                Ok(ServerFrame::Push(_)) => continue,
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(e) => {
                    ended = Some(e.to_string());
                    break;
                }
            };
            let attempt = sent
                .lock()
                .expect("sent")
                .remove(&response.id)
                .unwrap_or_else(|| panic!("a second answer, or one for no request: {response:?}"));
            let outcome = match response.result {
                // Closing is the server's last frame: an answer after it is
                // one a client has already given up on.
                _ if closing.is_some() => Outcome::Lost("answered after the Closing frame".into()),
                Ok(Reply::Accepted(order)) => {
                    orders.send_modify(|count| *count += 1);
                    Outcome::Order(order)
                }
                Ok(other) => Outcome::Lost(format!("{other:?} instead of Accepted")),
                Err(e) => Outcome::Refused(e.code),
            };
            answered.push(Answered {
                attempt,
                outcome,
                after_signal: signalled.load(Ordering::SeqCst),
            });
            credits.add_permits(1);
        }
        // The connection is over: stop writing, then account for what was
        // written and never answered.
        credits.close();
        writing.await.expect("writer task");
        let after_signal = signalled.load(Ordering::SeqCst);
        let mut unanswered: Vec<(u64, Attempt)> = sent.lock().expect("sent").drain().collect();
        unanswered.sort_by_key(|(id, _)| *id);
        for (_, attempt) in unanswered {
            let outcome = match (closing, &ended) {
                (Some(code), _) => Outcome::Refused(code),
                (None, Some(error)) => Outcome::Lost(format!("read failed: {error}")),
                (None, None) => Outcome::Lost("closed without a Closing frame".into()),
            };
            answered.push(Answered {
                attempt,
                outcome,
                after_signal,
            });
        }
        answered
    }
}

/// Writes a `Buy` for every credit, recording each attempt before it is
/// written; stops when the credits are closed or a write fails (the server
/// closed the connection: what it never read is answered by its `Closing`).
async fn write_attempts(
    mut writer: Writer,
    buyer: usize,
    products: Vec<ProductId>,
    mut rng: StdRng,
    credits: Arc<Semaphore>,
    sent: Sent,
) {
    let mut id = 0u64;
    while let Ok(credit) = credits.acquire().await {
        credit.forget();
        id += 1;
        let attempt = random_attempt(&mut rng, buyer, &products);
        let request = buy_frame(id, &attempt);
        sent.lock().expect("sent").insert(id, attempt);
        if writer.send(request).await.is_err() {
            return;
        }
    }
}

impl Outcome {
    /// A short name: `Confirmed`, `Rejected`, an error code, or `Lost`.
    pub fn kind(&self) -> String {
        match self {
            Self::Order(order) if order.status == OrderStatus::Confirmed => "Confirmed".into(),
            Self::Order(order) => format!("{:?}", order.status),
            Self::Refused(code) => code.to_string(),
            Self::Lost(why) => format!("Lost({why})"),
        }
    }
}

/// The answers of one stream in arrival order, run-length encoded
/// (`Confirmed x1800, Internal x64, ShuttingDown x40`), with where the
/// signal fell: for a failure message.
pub fn summary(stream: &[Answered]) -> String {
    let mut runs: Vec<(String, usize)> = Vec::new();
    let mut signalled = false;
    for a in stream {
        let mut kind = a.outcome.kind();
        if a.after_signal && !signalled {
            signalled = true;
            kind = format!("[signal] {kind}");
        }
        match runs.last_mut() {
            Some((last, n)) if *last == kind => *n += 1,
            _ => runs.push((kind, 1)),
        }
    }
    let runs: Vec<String> = runs.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    runs.join(", ")
}

/// Every order of every buyer in `buyers`, by idempotency key; panics on
/// two orders for one key.
pub async fn stored_orders(buyers: &[Client]) -> HashMap<Uuid, OrderInfo> {
    let mut stored = HashMap::new();
    for buyer in buyers {
        let mut after = None;
        loop {
            let page = buyer.orders(after, 0).await.expect("list orders");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for order in page {
                let key = order.idempotency_key;
                if let Some(first) = stored.insert(key, order) {
                    panic!("two orders for one key: {first:?}");
                }
            }
        }
    }
    stored
}

/// What a restarted server stored, compared with what it answered.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Orders answered (`Accepted`) and stored exactly as answered.
    pub answered_and_stored: usize,
    /// Orders answered but stored differently, or not at all.
    pub answered_but_changed: Vec<(OrderInfo, Option<OrderInfo>)>,
    /// Attempts refused (by code) whose intent is nevertheless stored as an order.
    pub refused_but_stored: Vec<(ErrorCode, OrderInfo)>,
    /// Attempts refused, by code, with no order stored.
    pub refused: HashMap<ErrorCode, usize>,
    /// Attempts without an answer, and the order stored for each, if any
    /// (an order stored for an attempt without an answer is an answer the
    /// server decided and then lost).
    pub lost: Vec<(String, Option<OrderInfo>)>,
    /// Stored orders of the buyers that no attempt of the storm explains.
    pub unexplained: Vec<OrderInfo>,
    /// Products whose confirmed units differ from the stored confirmed
    /// orders', or whose stock does not balance.
    pub products_off: Vec<(ProductInfo, u64)>,
}

impl Comparison {
    /// Every answered order stored as answered, nothing refused or
    /// unanswered stored, nothing unexplained, every product balanced.
    pub fn assert_stored_as_answered(&self) {
        let lost_decided = self.lost.iter().filter(|(_, o)| o.is_some()).count();
        assert!(
            self.lost.is_empty(),
            "{} attempts without an answer ({lost_decided} of them stored as orders), e.g. {:?}",
            self.lost.len(),
            self.lost.first()
        );
        assert!(
            self.answered_but_changed.is_empty(),
            "answered orders changed or vanished: {:?}",
            self.answered_but_changed
        );
        assert!(
            self.refused_but_stored.is_empty(),
            "{} refused attempts became orders, e.g. {:?}",
            self.refused_but_stored.len(),
            self.refused_but_stored.first()
        );
        assert!(
            self.unexplained.is_empty(),
            "orders nobody answered: {:?}",
            self.unexplained
        );
        assert!(
            self.products_off.is_empty(),
            "products off: {:?}",
            self.products_off
        );
    }
}

/// After a restart: compares the orders stored for `buyers` and the
/// products' figures with the storm's answers.
pub async fn compare_stored(
    buyers: &[Client],
    admin: &Client,
    answered: &[Vec<Answered>],
) -> Comparison {
    let mut stored = stored_orders(buyers).await;
    let mut comparison = Comparison::default();
    for a in answered.iter().flatten() {
        let kept = stored.remove(&a.attempt.key);
        match (&a.outcome, kept) {
            (Outcome::Order(order), Some(kept)) if kept == *order => {
                comparison.answered_and_stored += 1;
            }
            (Outcome::Order(order), kept) => {
                comparison.answered_but_changed.push((order.clone(), kept));
            }
            (Outcome::Refused(code), Some(kept)) => {
                comparison.refused_but_stored.push((*code, kept))
            }
            (Outcome::Refused(code), None) => *comparison.refused.entry(*code).or_default() += 1,
            (Outcome::Lost(why), kept) => comparison.lost.push((why.clone(), kept)),
        }
    }
    comparison.unexplained = stored.into_values().collect();
    // The stock is checked against the orders stored (answered or not).
    let mut confirmed: HashMap<ProductId, u64> = HashMap::new();
    let stored_confirmed = answered
        .iter()
        .flatten()
        .filter_map(|a| match &a.outcome {
            Outcome::Order(order) => Some(order),
            _ => None,
        })
        .chain(comparison.refused_but_stored.iter().map(|(_, order)| order))
        .chain(
            comparison
                .lost
                .iter()
                .filter_map(|(_, order)| order.as_ref()),
        )
        .chain(comparison.unexplained.iter())
        .filter(|order| order.status == OrderStatus::Confirmed);
    for order in stored_confirmed {
        for line in &order.items {
            *confirmed.entry(line.product_id).or_default() += u64::from(line.qty);
        }
    }
    let stats = admin.stats().await.expect("stats");
    for product in stats.products.into_iter().map(|s| s.product) {
        let sold = confirmed.get(&product.id).copied().unwrap_or(0);
        if product.confirmed_qty != sold || !product.balances() {
            comparison.products_off.push((product, sold));
        }
    }
    comparison
}
