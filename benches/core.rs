//! Criterion benchmarks of the hot paths: the codec, the sequencer's
//! decisions, one group-commit batch to sled, and pay over loopback.
//!
//! Run with `cargo bench --bench core`; figures go to BENCHMARKS.md.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flashsale::protocol::{
    ClientCodec, ClientFrame, OrderId, OrderInfo, OrderLine, OrderSource, OrderStatus, ProductId,
    Push, Request, RequestBody, SaleRules, ServerCodec, ServerFrame, UserId,
};
use flashsale::server::internals::{encode, Store};
use flashsale::server::internals::{Book, Event, OrderIntent};
use flashsale::server::{Config, PasswordHashing};
use flashsale_testkit::{product, TestServer};
use futures::future::join_all;
use std::time::{Duration, Instant};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

fn order(id: u64) -> OrderInfo {
    OrderInfo {
        id: OrderId(id),
        user_id: UserId(id % 1000),
        items: vec![OrderLine {
            product_id: ProductId(1),
            qty: 1,
        }],
        status: OrderStatus::Confirmed,
        source: OrderSource::Express,
        idempotency_key: Uuid::new_v4(),
        decided_at_ms: 1_700_000_000_000,
        partner: None,
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let pay = ClientFrame::Request(Request {
        id: 42,
        on_behalf_of: None,
        body: RequestBody::Buy {
            items: vec![OrderLine {
                product_id: ProductId(1),
                qty: 1,
            }],
            idempotency_key: Uuid::new_v4(),
        },
    });
    let push = ServerFrame::Push(Push::OrderUpdate(order(7)));
    let mut client = ClientCodec::new();
    let mut server = ServerCodec::new();
    let mut buf = BytesMut::with_capacity(4096);
    group.bench_function("encode_pay_request", |b| {
        b.iter(|| {
            buf.clear();
            client.encode(pay.clone(), &mut buf).expect("encode");
        })
    });
    let mut encoded = BytesMut::new();
    client.encode(pay.clone(), &mut encoded).expect("encode");
    group.bench_function("decode_pay_request", |b| {
        b.iter_batched(
            || encoded.clone(),
            |mut bytes| server.decode(&mut bytes).expect("decode"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode_order_push", |b| {
        b.iter(|| {
            buf.clear();
            server.encode(push.clone(), &mut buf).expect("encode");
        })
    });
    let mut encoded = BytesMut::new();
    server.encode(push.clone(), &mut encoded).expect("encode");
    group.bench_function("decode_order_push", |b| {
        b.iter_batched(
            || encoded.clone(),
            |mut bytes| client.decode(&mut bytes).expect("decode"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn sequencer(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequencer");
    group.throughput(Throughput::Elements(1));
    let intent = |product: u64| OrderIntent {
        user_id: UserId(1),
        items: vec![OrderLine {
            product_id: ProductId(product),
            qty: 1,
        }],
        source: OrderSource::Express,
        idempotency_key: Uuid::new_v4(),
        partner: None,
        hold: None,
    };
    for (name, stock) in [("decide_confirmed", 1u64 << 40), ("decide_sold_out", 0)] {
        let mut book = Book::new();
        book.create_product("P".into(), 1, stock, SaleRules::default())
            .expect("product");
        group.bench_function(name, |b| {
            b.iter_batched(|| intent(1), |i| book.decide(i, 0), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn journal(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    const BATCH: u64 = 256;
    group.throughput(Throughput::Elements(BATCH));
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = Store::open(dir.path()).expect("store");
    let events: Vec<Event> = (0..BATCH).map(|i| Event::OrderDecided(order(i))).collect();
    let mut seq = 0u64;
    group.bench_function("batch_of_256_orders_insert_flush_fdatasync", |b| {
        b.iter(|| {
            seq += 1;
            let record = encode(&events).expect("encode");
            store
                .journal
                .insert(seq.to_be_bytes(), record)
                .expect("insert");
            store.sync().expect("sync");
        })
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let (server, client, hot, sold_out) = rt.block_on(async {
        let mut config = Config::new(dir.path());
        config.password_hashing = PasswordHashing::insecure_fast_for_tests();
        // One buyer on one connection sends 256 pays at once, again and
        // again: with the default abuse limits (20/s per buyer, 50 000/s per
        // connection) the benchmark would measure them, not the pay path.
        config.pay_rate_per_buyer = None;
        config.pay_rate_per_connection = None;
        let server = TestServer::start_with(config).await;
        let admin = server.admin().await;
        let hot = product(&admin, "Hot", 1 << 40).await.id;
        let sold_out = product(&admin, "Gone", 0).await.id;
        let client = server.buyer(&admin, "bench").await;
        (server, client, hot, sold_out)
    });
    let mut group = c.benchmark_group("pay_over_loopback");
    group.measurement_time(Duration::from_secs(8));
    const PIPELINE: u64 = 256;
    group.throughput(Throughput::Elements(PIPELINE));
    for (name, product) in [
        ("pipelined_256_confirmed_fsynced", hot),
        ("pipelined_256_sold_out", sold_out),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let client = client.clone();
                async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let buys = (0..PIPELINE).map(|_| {
                            client.buy(vec![OrderLine {
                                product_id: product,
                                qty: 1,
                            }])
                        });
                        join_all(buys).await;
                    }
                    start.elapsed()
                }
            })
        });
    }
    group.finish();
    drop(client);
    rt.block_on(server.stop());
}

mod harness {
    //! Criterion's generated entry points (undocumented by the macro).
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, codec, sequencer, journal, end_to_end);
}

criterion_main!(harness::benches);
