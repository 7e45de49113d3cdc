//! The timed sale: every connection keeps `--pipeline` pay attempts in
//! flight until `--requests` are sent or `--duration` has passed; then the
//! drain awaits every outcome.
//!
//! Express checkouts (`buy`) and cart checkouts (`pay`) go through one
//! [`OrderStream`] per connection, the client library's API for partners
//! selling to many buyers at once: one task keeps the pipeline full. The
//! `cart+pay` flow, two requests per attempt, runs `--pipeline` lanes per
//! connection, each a task doing one attempt after another with the
//! ordinary client calls.

use crate::setup::Stage;
use crate::{Args, Flow};
use flashsale::client::{Client, ClientError, OrderStream};
use flashsale::protocol::{
    BuyerRef, ErrorCode, OrderId, OrderInfo, OrderLine, OrderStatus, ProductId,
};
use hashbrown::HashMap;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Highest latency the histograms record, in microseconds (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The tag bit of a hold's payment (`--flow hold`) in an order stream: its
/// answer frees no pipeline slot.
const PAY_TAG: u64 = 1 << 63;

/// Attempts a lane counts before it moves the progress bar.
const PROGRESS_STEP: u64 = 256;

/// The partner's reference of buyer `i`.
pub fn buyer_ref(i: usize) -> String {
    format!("b{i}")
}

/// Picks the lines of one order: the first product is product 1 with
/// probability `--hot`, otherwise drawn uniformly from all products (product
/// 1 included); `--items` distinct products.
fn pick_lines(args: &Args, products: &[ProductId], rng: &mut SmallRng) -> Vec<OrderLine> {
    let mut chosen: Vec<ProductId> = Vec::with_capacity(args.items);
    while chosen.len() < args.items {
        let candidate = if chosen.is_empty() && rng.gen_bool(args.hot) {
            products[0]
        } else {
            products[rng.gen_range(0..products.len())]
        };
        if !chosen.contains(&candidate) {
            chosen.push(candidate);
        }
    }
    chosen
        .into_iter()
        .map(|product_id| OrderLine { product_id, qty: 1 })
        .collect()
}

/// The lines buyer `buyer` puts in its cart (`--flow pay`): fixed per buyer.
pub fn lines_for(args: &Args, products: &[ProductId], buyer: u64) -> Vec<OrderLine> {
    let mut rng = SmallRng::seed_from_u64(args.seed ^ buyer.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    pick_lines(args, products, &mut rng)
}

/// What one lane saw.
struct Lane {
    /// Answer latencies in µs; turned into a histogram after the sale
    /// (recording into a histogram per lane is slower than the server).
    answer: Vec<u32>,
    accepted: Vec<(Uuid, OrderInfo)>,
    confirmed: u64,
    sold_out: u64,
    errors: BTreeMap<String, u64>,
    attempts: u64,
    unanswered: u64,
    /// Units asked for, per product.
    /// Every line asked for, in order (counted per product after the
    /// sale: appending is cheaper than a map update per attempt).
    asked: Vec<OrderLine>,
    /// Lines of attempts refused without an order for a reason other than
    /// the product (`Overloaded` from a rate limit or a full queue,
    /// `QuotaExceeded`): not demand the stock had to meet.
    withdrawn: Vec<OrderLine>,
    /// With `--timeline`: each answer's time since the sale began (ms) and
    /// its latency (µs).
    timeline: Option<Vec<(u32, u32)>>,
    /// When the sale began (for the timeline).
    start: Instant,
    /// Attempts without an answer (a connection lost in a failover), to be
    /// sent again with their keys after the sale.
    lost: Vec<Lost>,
    /// `--flow hold`: holds answered, and the holds paid (confirmed by
    /// their `PayHold` answer), and payments that failed, by reason.
    held: u64,
    paid: Vec<OrderId>,
    pay_errors: BTreeMap<String, u64>,
}

/// An attempt that got no answer: its key, buyer and lines.
#[derive(Debug, Clone)]
pub struct Lost {
    key: Uuid,
    buyer: BuyerRef,
    /// Empty for `--flow pay` (the cart is paid).
    lines: Vec<OrderLine>,
}

impl Lane {
    /// Keeps an attempt that got no answer, to send again after the sale.
    fn lost_attempt(&mut self, key: Uuid, buyer: BuyerRef, lines: std::ops::Range<usize>) {
        let lines = self.asked.get(lines).unwrap_or_default().to_vec();
        self.lost.push(Lost { key, buyer, lines });
    }

    /// A lane that expects about `attempts` attempts (its vectors never
    /// grow during the sale then: growing them is work the server's figures
    /// should not pay for).
    fn new(attempts: usize, items: usize, start: Instant, timeline: bool) -> Self {
        Self {
            timeline: timeline.then(|| Vec::with_capacity(attempts)),
            start,
            lost: Vec::new(),
            answer: Vec::with_capacity(attempts),
            accepted: Vec::with_capacity(attempts),
            confirmed: 0,
            sold_out: 0,
            errors: BTreeMap::new(),
            attempts: 0,
            unanswered: 0,
            asked: Vec::with_capacity(attempts.saturating_mul(items)),
            withdrawn: Vec::new(),
            held: 0,
            paid: Vec::new(),
            pay_errors: BTreeMap::new(),
        }
    }

    /// The answer to a hold's payment.
    fn paid_answer(&mut self, result: Result<OrderInfo, ClientError>) {
        match result {
            Ok(order) if order.status == OrderStatus::Confirmed => self.paid.push(order.id),
            Ok(order) => {
                let status = format!("{:?}", order.status);
                *self.pay_errors.entry(status).or_default() += 1;
            }
            Err(e) => {
                let reason = e.code().map_or_else(|| e.to_string(), |c| c.to_string());
                *self.pay_errors.entry(reason).or_default() += 1;
            }
        }
    }

    /// Takes the lines `asked[lines]` back out of the demand when `result`
    /// was refused without an order for a reason other than the product.
    fn withdraw_if_refused<T>(
        &mut self,
        result: &Result<T, ClientError>,
        lines: std::ops::Range<usize>,
    ) {
        let refused = result.as_ref().err().and_then(ClientError::code);
        if matches!(
            refused,
            Some(ErrorCode::Overloaded | ErrorCode::QuotaExceeded)
        ) {
            let lines = self.asked.get(lines).unwrap_or_default().to_vec();
            self.withdrawn.extend(lines);
        }
    }

    fn record(&mut self, key: Uuid, result: Result<OrderInfo, ClientError>, took: Duration) {
        self.attempts += 1;
        let micros = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        if let Some(timeline) = &mut self.timeline {
            let answered = match &result {
                Ok(_) => true,
                Err(e) => e.code().is_some_and(|c| c != ErrorCode::NotLeader),
            };
            if answered {
                let at_ms = u32::try_from(self.start.elapsed().as_millis()).unwrap_or(u32::MAX);
                timeline.push((at_ms, u32::try_from(micros).unwrap_or(u32::MAX)));
            }
        }
        match result {
            Ok(order) => {
                self.answer.push(u32::try_from(micros).unwrap_or(u32::MAX));
                match order.status {
                    OrderStatus::Confirmed => self.confirmed += 1,
                    OrderStatus::Rejected {
                        code: ErrorCode::SoldOut,
                        ..
                    } => self.sold_out += 1,
                    OrderStatus::Rejected { code, .. } => {
                        *self.errors.entry(code.to_string()).or_default() += 1
                    }
                    OrderStatus::Held { .. } => self.held += 1,
                    OrderStatus::Pending
                    | OrderStatus::Cancelled
                    | OrderStatus::Expired
                    | OrderStatus::Released => {}
                }
                self.accepted.push((key, order));
            }
            // No answer came: the connection dropped or the time ran out
            // (even when the server said why it closed).
            Err(e @ (ClientError::Disconnected(_) | ClientError::Timeout(_))) => {
                self.unanswered += 1;
                let kind = if e.is_timeout() {
                    "Timeout"
                } else {
                    "Disconnected"
                };
                *self.errors.entry(kind.to_owned()).or_default() += 1;
            }
            Err(e) => match e.code() {
                // A leader that stepped down: the outcome is unknown until
                // the attempt is sent again (see `resend_lost`).
                Some(ErrorCode::NotLeader) => {
                    self.unanswered += 1;
                    *self.errors.entry("NotLeader".to_owned()).or_default() += 1;
                }
                Some(ErrorCode::SoldOut) => {
                    self.answer.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    self.sold_out += 1;
                }
                Some(code) => {
                    self.answer.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    *self.errors.entry(code.to_string()).or_default() += 1;
                }
                // A client-side failure (a broken frame, a refused submit).
                None => {
                    self.unanswered += 1;
                    *self.errors.entry("ClientError".to_owned()).or_default() += 1;
                }
            },
        }
    }
}

/// Everything the sale and the drain measured.
pub struct Drained {
    /// Pay attempts sent.
    pub attempts: u64,
    /// Attempts that got no answer (connection lost or timed out).
    pub unanswered: u64,
    /// Attempts answered `Overloaded`.
    pub overloaded: u64,
    /// Confirmed orders.
    pub confirmed: u64,
    /// Attempts answered sold out (at intake or by the sequencer).
    pub sold_out: u64,
    /// Other answers, by error code.
    pub errors: BTreeMap<String, u64>,
    /// Accepted orders by idempotency key, with their final state.
    pub accepted: HashMap<Uuid, OrderInfo>,
    /// Latency from sending an attempt to its answer, µs.
    pub answer: Histogram<u64>,
    /// Latency from sending an attempt to its final outcome, µs.
    pub outcome: Histogram<u64>,
    /// Length of the timed sale.
    pub elapsed: Duration,
    /// Units asked for, per product (express checkout only).
    pub demand: HashMap<ProductId, u64>,
    /// With `--timeline`: every answer's time since the sale began (ms)
    /// and latency (µs).
    pub timeline: Vec<(u32, u32)>,
    /// Attempts that had no answer during the sale and were answered when
    /// sent again with their keys afterwards.
    pub recovered: u64,
    /// The faults `--fault` caused.
    pub faults: Vec<crate::faults::Fault>,
    /// `--flow hold`: what became of the holds.
    pub holds: HoldFigures,
}

/// `--flow hold`: what became of the holds.
#[derive(Debug, Default)]
pub struct HoldFigures {
    /// Holds answered `Held`.
    pub held: u64,
    /// Holds paid (confirmed by their `PayHold` answer).
    pub paid: u64,
    /// Payments that failed, by reason.
    pub pay_errors: BTreeMap<String, u64>,
    /// Unpaid holds the server expired.
    pub expired: u64,
    /// From the last unpaid hold's deadline until every unpaid hold was
    /// seen expired.
    pub expiry_lag: Duration,
    /// From the first unpaid hold's deadline until every one was seen
    /// expired: the window the expiries took.
    pub expiry_window: Duration,
}

/// The raw result of the sale, before the drain.
pub struct SaleResult {
    lanes: Vec<Lane>,
    elapsed: Duration,
    client: flashsale::client::Client,
    /// The faults `--fault` caused, when.
    pub faults: Vec<crate::faults::Fault>,
    flow: Flow,
    hold_ms: u64,
}

/// What every task of the sale shares.
#[derive(Clone)]
struct Sale {
    args: Args,
    /// Attempts claimed so far.
    next: Arc<AtomicU64>,
    deadline: Option<Instant>,
    /// When the sale began.
    start: Instant,
    /// Buyer references, made once.
    buyer_refs: Arc<[String]>,
    /// One copy shared by all tasks, so it stays in the cache.
    products: Arc<[ProductId]>,
    progress: ProgressBar,
}

impl Sale {
    /// True when each answer's time is kept (`--timeline`, `--fault`).
    fn timed(&self) -> bool {
        self.args.timeline.is_some() || !self.args.fault.is_empty()
    }

    /// True once the time is up or every attempt was claimed.
    fn over(&self) -> bool {
        let out_of_time = self.deadline.is_some_and(|d| Instant::now() >= d);
        out_of_time
            || (self.deadline.is_none() && self.next.load(Ordering::Relaxed) >= self.args.requests)
    }

    /// Claims the next attempt; false once the sale is over.
    fn claim(&self) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let out_of_time = self.deadline.is_some_and(|d| Instant::now() >= d);
        !(out_of_time || (self.deadline.is_none() && i >= self.args.requests))
    }

    /// A random buyer's reference.
    fn buyer(&self, rng: &mut SmallRng) -> String {
        self.buyer_refs[rng.gen_range(0..self.args.buyers)].clone()
    }

    /// Counts an answered attempt on the progress bar.
    fn answered(&self, lane: &Lane) {
        if lane.attempts % PROGRESS_STEP == 0 {
            self.progress.inc(PROGRESS_STEP);
        }
    }
}

/// Runs the timed sale.
pub async fn run(args: &Args, stage: &Stage) -> anyhow::Result<SaleResult> {
    let sale = Sale {
        args: args.clone(),
        next: Arc::new(AtomicU64::new(0)),
        deadline: args
            .duration
            .map(|secs| Instant::now() + crate::seconds(secs)),
        start: Instant::now(),
        buyer_refs: (0..args.buyers).map(buyer_ref).collect(),
        products: stage.products.iter().copied().collect(),
        progress: progress_bar(args),
    };
    let lanes = stage.connections.len() * args.pipeline;
    // Each lane's share of the attempts, with room for an uneven split.
    let per_lane = match args.duration {
        None => {
            usize::try_from(args.requests.div_ceil(lanes as u64))
                .unwrap_or(0)
                .saturating_mul(5)
                / 4
                + 64
        }
        Some(_) => 4096,
    };
    let start = sale.start;
    let faults = crate::faults::schedule(&args.fault, start);
    let mut tasks = Vec::new();
    for (c, client) in stage.connections.iter().enumerate() {
        let seed_of = |lane: usize| {
            args.seed ^ ((c * 10_000 + lane) as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        if args.flow == Flow::CartPay {
            for lane in 0..args.pipeline {
                let task = cart_pay_lane(sale.clone(), client.clone(), seed_of(lane), per_lane);
                tasks.push(tokio::spawn(task));
            }
        } else {
            let capacity = per_lane.saturating_mul(args.pipeline);
            let task = stream_connection(sale.clone(), client.clone(), seed_of(0), capacity);
            tasks.push(tokio::spawn(task));
        }
    }
    let mut lanes = Vec::with_capacity(tasks.len());
    for task in tasks {
        lanes.push(task.await??);
    }
    let elapsed = start.elapsed();
    sale.progress.finish_and_clear();
    let faults = crate::faults::collect(faults).await;
    Ok(SaleResult {
        lanes,
        elapsed,
        client: stage.connections[0].clone(),
        faults,
        flow: args.flow,
        hold_ms: args.hold_ms,
    })
}

/// One connection's attempts (`buy` or `pay`) through an [`OrderStream`],
/// keeping `--pipeline` in flight.
async fn stream_connection(
    sale: Sale,
    client: Client,
    seed: u64,
    capacity: usize,
) -> anyhow::Result<Lane> {
    let args = &sale.args;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lane = Lane::new(capacity, args.items, sale.start, sale.timed());
    // Per pipeline slot (the attempt's tag): when its attempt was sent,
    // `None` while the slot is free; under which key, for which buyer, and
    // which lines of `lane.asked` are its own.
    let mut slots: Vec<Option<Slot>> = vec![None; args.pipeline];
    let mut free: Vec<usize> = (0..args.pipeline).rev().collect();
    let mut claiming = true;
    let mut stream: OrderStream = client.order_stream().await?;
    loop {
        // False once the connection is gone: no more sending on it.
        let mut open = true;
        while claiming && open && !free.is_empty() {
            if !sale.claim() {
                claiming = false;
                break;
            }
            let Some(slot) = free.pop() else { break };
            let buyer = BuyerRef(sale.buyer(&mut rng));
            let key = Uuid::new_v4();
            let sent_at = Instant::now();
            let tag = slot as u64;
            let first_line = lane.asked.len();
            let sent = match args.flow {
                Flow::Pay => stream.pay(Some(buyer.clone()), key, tag).await,
                Flow::Buy => {
                    let lines = pick_lines(args, &sale.products, &mut rng);
                    lane.asked.extend_from_slice(&lines);
                    stream.buy(Some(buyer.clone()), lines, key, tag).await
                }
                Flow::Hold => {
                    let lines = pick_lines(args, &sale.products, &mut rng);
                    lane.asked.extend_from_slice(&lines);
                    let hold_ms = Some(args.hold_ms);
                    stream
                        .hold(Some(buyer.clone()), lines, key, hold_ms, tag)
                        .await
                }
                Flow::CartPay => anyhow::bail!("cart+pay runs in lanes, not on a stream"),
            };
            let lines = first_line..lane.asked.len();
            match sent {
                Ok(()) => slots[slot] = Some((sent_at, key, lines, buyer)),
                Err(e) => {
                    // The connection is gone: this attempt was not sent
                    // (its key made nothing); reconnect once the attempts
                    // in flight are answered.
                    lane.record(key, Err(e), sent_at.elapsed());
                    lane.lost_attempt(key, buyer, lines);
                    sale.answered(&lane);
                    free.push(slot);
                    open = false;
                }
            }
        }
        let Some(answer) = stream.next().await else {
            if claiming && !sale.over() {
                // Every attempt in flight is answered and the connection
                // dropped (a failover): a new stream reconnects, to the new
                // leader in a cluster, and resumes the session.
                match client.order_stream().await {
                    Ok(fresh) => {
                        stream = fresh;
                        continue;
                    }
                    Err(e) => {
                        warn(&format!("could not reconnect: {e}"));
                        break;
                    }
                }
            }
            break;
        };
        if answer.tag & PAY_TAG != 0 {
            lane.paid_answer(answer.result);
            continue;
        }
        let slot = usize::try_from(answer.tag).unwrap_or(usize::MAX);
        let Some((sent_at, key, lines, buyer)) = slots.get_mut(slot).and_then(Option::take) else {
            anyhow::bail!("an answer for tag {} that is not in flight", answer.tag);
        };
        let held = match &answer.result {
            Ok(order) if matches!(order.status, OrderStatus::Held { .. }) => Some(order.id),
            _ => None,
        };
        lane.withdraw_if_refused(&answer.result, lines.clone());
        let lost = matches!(
            answer.result,
            Err(ClientError::Disconnected(_) | ClientError::Timeout(_))
        ) || answer.result.as_ref().err().and_then(ClientError::code)
            == Some(ErrorCode::NotLeader);
        lane.record(key, answer.result, sent_at.elapsed());
        if lost {
            lane.lost_attempt(key, buyer, lines);
        } else if let Some(order_id) = held.filter(|_| rng.gen_bool(args.pay_share)) {
            // The gateway took the money at once: pay the hold.
            let payment_ref = format!("bench-{}", order_id.0);
            let tag = PAY_TAG | order_id.0;
            if let Err(e) = stream
                .pay_hold(Some(buyer), order_id, payment_ref, tag)
                .await
            {
                lane.paid_answer(Err(e));
            }
        }
        free.push(slot);
        sale.answered(&lane);
    }
    Ok(lane)
}

/// An attempt in flight: when it was sent, its key, its lines in
/// `lane.asked`, its buyer.
type Slot = (Instant, Uuid, std::ops::Range<usize>, BuyerRef);

/// A warning on stderr (the harness prints, it does not log).
fn warn(message: &str) {
    eprintln!("flashsale-bench: {message}");
}

/// One lane of the `cart+pay` flow: cart adds, then a pay, one attempt
/// after another.
async fn cart_pay_lane(
    sale: Sale,
    client: Client,
    seed: u64,
    capacity: usize,
) -> anyhow::Result<Lane> {
    let args = &sale.args;
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lane = Lane::new(capacity, args.items, sale.start, sale.timed());
    while sale.claim() {
        let handle = client.acting_for(sale.buyer(&mut rng));
        let key = Uuid::new_v4();
        let sent = Instant::now();
        let mut refused = None;
        for line in pick_lines(args, &sale.products, &mut rng) {
            if let Err(e) = handle.cart_add(line.product_id, line.qty).await {
                refused = Some(e);
                break;
            }
        }
        let result = match refused {
            Some(e) => Err(e),
            None => handle.pay_with_key(key).await.map(|placed| placed.order),
        };
        lane.record(key, result, sent.elapsed());
        sale.answered(&lane);
    }
    Ok(lane)
}

fn progress_bar(args: &Args) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match args.duration {
        Some(secs) => ProgressBar::new_spinner().with_message(format!("sale ({secs} s)")),
        None => ProgressBar::new(args.requests),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} attempts, {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Sends every attempt that had no answer again, with its key: the order
/// its key made, if any, or a decision now. Counted as recovered.
async fn resend_lost(
    client: &Client,
    (flow, hold_ms): (Flow, u64),
    lost: Vec<Lost>,
    drained: &mut Drained,
) {
    for attempt in lost {
        let buyer = client.acting_for(attempt.buyer.0.clone());
        for _ in 0..RESEND_ATTEMPTS {
            let result = match flow {
                Flow::Pay => buyer.pay_with_key(attempt.key).await,
                Flow::Hold => {
                    let lines = attempt.lines.clone();
                    buyer.hold_with_key(lines, attempt.key, Some(hold_ms)).await
                }
                _ => buyer.buy_with_key(attempt.lines.clone(), attempt.key).await,
            };
            match result {
                Ok(placed) => {
                    drained.accepted.insert(attempt.key, placed.order);
                    drained.recovered += 1;
                    drained.unanswered = drained.unanswered.saturating_sub(1);
                    break;
                }
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    // Refused (sold out…): no order for this key.
                    drained.recovered += 1;
                    drained.unanswered = drained.unanswered.saturating_sub(1);
                    break;
                }
            }
        }
    }
}

/// Tries of one lost attempt after the sale.
const RESEND_ATTEMPTS: usize = 50;

/// Awaits the final outcome of every accepted order and merges the lanes.
pub async fn drain(sale: SaleResult) -> anyhow::Result<Drained> {
    let mut drained = Drained {
        attempts: 0,
        unanswered: 0,
        overloaded: 0,
        confirmed: 0,
        sold_out: 0,
        errors: BTreeMap::new(),
        accepted: HashMap::new(),
        answer: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
        outcome: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
        elapsed: sale.elapsed,
        demand: HashMap::new(),
        timeline: Vec::new(),
        recovered: 0,
        faults: sale.faults.clone(),
        holds: HoldFigures::default(),
    };
    let mut paid = hashbrown::HashSet::new();
    let mut lost = Vec::new();
    for lane in sale.lanes {
        lost.extend(lane.lost);
        if let Some(timeline) = lane.timeline {
            drained.timeline.extend(timeline);
        }
        drained.attempts += lane.attempts;
        drained.unanswered += lane.unanswered;
        drained.confirmed += lane.confirmed;
        drained.sold_out += lane.sold_out;
        for micros in lane.answer {
            let _ = drained.answer.record(u64::from(micros));
        }
        for (code, n) in lane.errors {
            *drained.errors.entry(code).or_default() += n;
        }
        drained.accepted.extend(lane.accepted);
        drained.holds.held += lane.held;
        paid.extend(lane.paid);
        for (reason, n) in lane.pay_errors {
            *drained.holds.pay_errors.entry(reason).or_default() += n;
        }
        for line in lane.asked {
            *drained.demand.entry(line.product_id).or_default() += u64::from(line.qty);
        }
        for line in lane.withdrawn {
            let demand = drained.demand.entry(line.product_id).or_default();
            *demand = demand.saturating_sub(u64::from(line.qty));
        }
    }
    drained.overloaded = drained.errors.get("Overloaded").copied().unwrap_or(0);
    resend_lost(&sale.client, (sale.flow, sale.hold_ms), lost, &mut drained).await;
    // Decided in the batch that made them durable, orders arrive final: their
    // outcome latency is their answer latency. Any still pending are awaited.
    drained.outcome.add(&drained.answer)?;
    let drain_start = Instant::now();
    for order in drained.accepted.values_mut() {
        while !order.status.is_final() {
            *order = sale.client.order(order.id).await?;
            if !order.status.is_final() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let waited = u64::try_from(drain_start.elapsed().as_micros()).unwrap_or(u64::MAX);
    if waited > 1000 {
        let _ = drained.outcome.record(waited.min(MAX_LATENCY_US));
    }
    if sale.flow == Flow::Hold {
        settle_holds(&sale.client, &mut drained, &paid).await?;
    }
    Ok(drained)
}

/// Longest wait, past the last deadline, for the unpaid holds to expire.
const EXPIRY_WAIT: Duration = Duration::from_secs(60);

/// `--flow hold`: the paid holds are confirmed orders now; waits for the
/// last unpaid hold's deadline, then reads the buyers' orders (a page at a
/// time) until every unpaid hold is expired, and records the final states,
/// which verification then checks against the server.
async fn settle_holds(
    client: &Client,
    drained: &mut Drained,
    paid: &hashbrown::HashSet<OrderId>,
) -> anyhow::Result<()> {
    let mut unpaid: HashMap<OrderId, Uuid> = HashMap::new();
    let (mut first, mut last) = (u64::MAX, 0);
    for (key, order) in &mut drained.accepted {
        let OrderStatus::Held { expires_at_ms } = order.status else {
            continue;
        };
        if paid.contains(&order.id) {
            order.status = OrderStatus::Confirmed;
            drained.holds.paid += 1;
        } else {
            unpaid.insert(order.id, *key);
            first = first.min(expires_at_ms);
            last = last.max(expires_at_ms);
        }
    }
    if unpaid.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(last.saturating_sub(now_ms()))).await;
    let give_up = Instant::now() + EXPIRY_WAIT;
    let lowest = unpaid.keys().min().copied();
    loop {
        let mut after = lowest.map(|id| OrderId(id.0.saturating_sub(1)));
        let mut still_held = 0usize;
        loop {
            let page = client.orders(after, 0).await?;
            let Some(end) = page.last() else { break };
            after = Some(end.id);
            for order in page {
                let Some(key) = unpaid.get(&order.id) else {
                    continue;
                };
                match order.status {
                    OrderStatus::Held { .. } => still_held += 1,
                    _ => {
                        if let Some(told) = drained.accepted.get_mut(key) {
                            *told = order;
                        }
                    }
                }
            }
        }
        if still_held == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "{still_held} holds still held {EXPIRY_WAIT:?} after the last deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drained.holds.expired = unpaid
        .values()
        .filter(|key| {
            drained
                .accepted
                .get(*key)
                .is_some_and(|o| o.status == OrderStatus::Expired)
        })
        .count() as u64;
    let done = now_ms();
    drained.holds.expiry_lag = Duration::from_millis(done.saturating_sub(last));
    drained.holds.expiry_window = Duration::from_millis(done.saturating_sub(first));
    Ok(())
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}
