//! Codec tests: every message round-trips; bad frames are typed errors, never panics.

use super::*;
use crate::*;
use proptest::prelude::*;
use uuid::Uuid;

fn sample_order() -> OrderInfo {
    OrderInfo {
        id: OrderId(7),
        user_id: UserId(3),
        items: vec![OrderLine {
            product_id: ProductId(1),
            qty: 2,
        }],
        status: OrderStatus::Rejected {
            code: ErrorCode::SoldOut,
            product_id: ProductId(1),
        },
        source: OrderSource::Express,
        idempotency_key: Uuid::new_v4(),
        decided_at_ms: 1_700_000_000_000,
        partner: Some(PartnerRef {
            partner_id: UserId(9),
            buyer_ref: BuyerRef("shop-42".into()),
        }),
    }
}

fn sample_product() -> ProductInfo {
    ProductInfo {
        id: ProductId(1),
        name: "Tea".into(),
        price_cents: 450,
        stock: 3,
        initial_stock: 5,
        restocked: 1,
        confirmed_qty: 3,
        rules: SaleRules {
            max_per_buyer: Some(2),
            opens_at_ms: Some(1_700_000_000_000),
            closes_at_ms: None,
        },
        held: 0,
        hold_ms: 600_000,
    }
}

fn every_client_frame() -> Vec<ClientFrame> {
    let key = Uuid::new_v4();
    let bodies = vec![
        RequestBody::Login {
            username: "alice".into(),
            password: "pw".into(),
        },
        RequestBody::LoginApiKey { key: "k".into() },
        RequestBody::Resume { token: "t".into() },
        RequestBody::Logout,
        RequestBody::ListProducts,
        RequestBody::GetProduct { id: ProductId(9) },
        RequestBody::CartAdd {
            product_id: ProductId(1),
            qty: 3,
        },
        RequestBody::CartRemove {
            product_id: ProductId(1),
            qty: 1,
        },
        RequestBody::CartView,
        RequestBody::CartClear,
        RequestBody::Pay {
            idempotency_key: key,
        },
        RequestBody::Buy {
            items: vec![OrderLine {
                product_id: ProductId(2),
                qty: 1,
            }],
            idempotency_key: key,
        },
        RequestBody::GetOrder { id: OrderId(4) },
        RequestBody::ListOrders {
            after: Some(OrderId(1)),
            limit: 10,
        },
        RequestBody::CreateProduct {
            name: "Tea".into(),
            price_cents: 1,
            stock: 2,
            rules: SaleRules::default(),
        },
        RequestBody::Restock {
            product_id: ProductId(1),
            qty: 5,
        },
        RequestBody::CreateUser {
            username: "bob".into(),
            password: "pw".into(),
            role: Role::Partner,
        },
        RequestBody::CancelOrder { id: OrderId(1) },
        RequestBody::Stats,
        RequestBody::CreateApiKey {
            partner: "shop".into(),
        },
        RequestBody::RevokeApiKey {
            key_id: "abc".into(),
        },
        RequestBody::SetStock {
            product_id: ProductId(1),
            stock: 0,
        },
        RequestBody::SetLimit {
            product_id: ProductId(1),
            max_per_buyer: Some(1),
        },
        RequestBody::SetWindow {
            product_id: ProductId(1),
            opens_at_ms: Some(1),
            closes_at_ms: Some(2),
        },
        RequestBody::ListUsers {
            after: Some("alice".into()),
            limit: 5,
        },
        RequestBody::QueryOrders {
            after: None,
            limit: 0,
            product_id: Some(ProductId(1)),
            status: Some(StatusFilter::Cancelled),
        },
        RequestBody::Ping,
        RequestBody::ListProductsPage {
            after: Some(ProductId(2)),
            limit: 10,
        },
        RequestBody::SetUserDisabled {
            username: "carol".into(),
            disabled: true,
        },
        RequestBody::SetPassword {
            username: "carol".into(),
            password: "new-password".into(),
        },
        RequestBody::EndSessions {
            username: "carol".into(),
        },
        RequestBody::BackupBegin,
        RequestBody::BackupNext { backup_id: 3 },
        RequestBody::ClusterStatus,
    ];
    let mut frames = vec![ClientFrame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "test".into(),
    })];
    frames.extend(bodies.into_iter().enumerate().map(|(i, body)| {
        ClientFrame::Request(Request {
            id: i as u64,
            on_behalf_of: (i % 2 == 0).then(|| BuyerRef(format!("buyer-{i}"))),
            body,
        })
    }));
    frames
}

fn every_server_frame() -> Vec<ServerFrame> {
    let replies = vec![
        Ok(Reply::LoggedIn {
            user_id: UserId(1),
            username: "alice".into(),
            role: Role::Buyer,
            token: "t".into(),
        }),
        Ok(Reply::LoggedOut),
        Ok(Reply::Products(vec![sample_product()])),
        Ok(Reply::Product(sample_product())),
        Ok(Reply::Cart(CartView {
            lines: vec![OrderLine {
                product_id: ProductId(1),
                qty: 1,
            }],
        })),
        Ok(Reply::Accepted(sample_order())),
        Ok(Reply::Order(sample_order())),
        Ok(Reply::Orders(vec![sample_order(), sample_order()])),
        Ok(Reply::UserCreated {
            user_id: UserId(2),
            username: "bob".into(),
            role: Role::Admin,
        }),
        Ok(Reply::Stats(StatsReport {
            products: vec![ProductStats {
                product: sample_product(),
                orders_confirmed: 1,
                orders_rejected: 2,
                orders_cancelled: 0,
                refused_at_intake: 9,
            }],
            connections: 2,
            orders_confirmed: 3,
            orders_rejected: 4,
            orders_cancelled: 1,
            refused_at_intake: 9,
            decisions: 16,
            queue_depth: 5,
            uptime_ms: 1000,
            partner_buyers: 7,
            sessions: 3,
            storage: StorageStats {
                journal_seq: 10,
                materialised_seq: 9,
                checkpoint_seq: 8,
                journal_records: 2,
                journal_bytes: 300,
                orders_unmaterialised: 5,
            },
            holds: HoldStats {
                live: 1,
                held_units: 2,
                placed: 3,
                paid: 1,
                expired: 1,
                released: 0,
            },
        })),
        Ok(Reply::ApiKeyCreated {
            partner_id: UserId(9),
            key_id: "abc".into(),
            key: "fsk_abc_def".into(),
        }),
        Ok(Reply::ApiKeyRevoked {
            key_id: "abc".into(),
        }),
        Ok(Reply::Users(vec![UserInfo {
            id: UserId(1),
            username: "admin".into(),
            role: Role::Admin,
            disabled: true,
        }])),
        Ok(Reply::ProductPage {
            products: vec![sample_product()],
            next_after: Some(ProductId(3)),
        }),
        Ok(Reply::User(UserInfo {
            id: UserId(4),
            username: "carol".into(),
            role: Role::Buyer,
            disabled: false,
        })),
        Ok(Reply::SessionsEnded {
            user_id: UserId(4),
            sessions: 2,
        }),
        Ok(Reply::BackupStarted {
            backup_id: 3,
            format_version: 1,
            schema_version: 2,
        }),
        Ok(Reply::BackupChunk {
            data: vec![0, 1, 255, 70],
            last: true,
        }),
        Ok(Reply::OrderPage {
            orders: vec![sample_order()],
            next_after: Some(OrderId(7)),
        }),
        Ok(Reply::Pong),
        Err(WireError {
            code: ErrorCode::SoldOut,
            message: "gone".into(),
            trace_id: Uuid::new_v4(),
            retry_after_ms: Some(250),
        }),
    ];
    let mut frames = vec![
        ServerFrame::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            server_version: "0.1.0".into(),
        }),
        ServerFrame::Push(Push::OrderUpdate(sample_order())),
        ServerFrame::Closing(WireError {
            code: ErrorCode::UnsupportedVersion,
            message: "v2".into(),
            trace_id: Uuid::nil(),
            retry_after_ms: None,
        }),
    ];
    frames.extend(replies.into_iter().enumerate().map(|(i, result)| {
        ServerFrame::Response(Response {
            id: i as u64,
            result,
        })
    }));
    frames
}

#[test]
fn every_client_frame_round_trips() {
    let mut client = ClientCodec::new();
    let mut server = ServerCodec::new();
    let mut buf = BytesMut::new();
    let frames = every_client_frame();
    for frame in &frames {
        client.encode(frame.clone(), &mut buf).expect("encode");
    }
    for frame in &frames {
        let decoded = server
            .decode(&mut buf)
            .expect("decode")
            .expect("a whole frame");
        assert_eq!(&decoded, frame);
    }
    assert!(buf.is_empty());
}

#[test]
fn every_server_frame_round_trips() {
    let mut client = ClientCodec::new();
    let mut server = ServerCodec::new();
    let mut buf = BytesMut::new();
    let frames = every_server_frame();
    for frame in &frames {
        server.encode(frame.clone(), &mut buf).expect("encode");
    }
    for frame in &frames {
        let decoded = client
            .decode(&mut buf)
            .expect("decode")
            .expect("a whole frame");
        assert_eq!(&decoded, frame);
    }
}

#[test]
fn a_truncated_frame_waits_for_more_bytes_and_errors_at_eof() {
    let mut client = ClientCodec::new();
    let mut server = ServerCodec::new();
    let mut buf = BytesMut::new();
    client
        .encode(every_client_frame()[1].clone(), &mut buf)
        .expect("encode");
    buf.truncate(buf.len() - 1);
    assert!(server.decode(&mut buf).expect("no error yet").is_none());
    assert!(matches!(
        server.decode_eof(&mut buf),
        Err(CodecError::Io(_))
    ));
}

#[test]
fn an_oversize_frame_is_refused_before_it_is_read() {
    let mut server = ServerCodec::with_max_frame_len(1024);
    let mut buf = BytesMut::new();
    buf.put_u32(1025);
    buf.put_slice(&[0u8; 16]);
    assert!(matches!(
        server.decode(&mut buf),
        Err(CodecError::FrameTooLarge { max: 1024 })
    ));
}

#[test]
fn an_oversize_message_is_not_encoded() {
    let mut client = FrameCodec::<ClientFrame, ServerFrame>::with_max_frame_len(64);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let big = ClientFrame::Hello(Hello {
        protocol_version: 1,
        client_name: "x".repeat(100),
    });
    assert!(matches!(
        client.encode(big, &mut buf),
        Err(CodecError::Encode(_))
    ));
    assert_eq!(
        &buf[..],
        b"keep",
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn garbage_in_a_frame_is_malformed() {
    let mut server = ServerCodec::new();
    let mut buf = BytesMut::new();
    buf.put_u32(4);
    buf.put_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    assert!(matches!(
        server.decode(&mut buf),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn trailing_bytes_after_a_message_are_malformed() {
    let mut client = ClientCodec::new();
    let mut buf = BytesMut::new();
    client
        .encode(every_client_frame()[4].clone(), &mut buf)
        .expect("encode");
    let payload = buf.split_off(4);
    let mut framed = BytesMut::new();
    framed.put_u32(payload.len() as u32 + 1);
    framed.put_slice(&payload);
    framed.put_u8(0);
    assert!(matches!(
        ServerCodec::new().decode(&mut framed),
        Err(CodecError::Malformed(_))
    ));
}

#[test]
fn a_huge_length_inside_a_frame_does_not_allocate_it() {
    // Hello { protocol_version: 1, client_name: <claims u64::MAX bytes> }
    let mut payload = vec![0u8, 1u8, 253];
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut buf = BytesMut::new();
    buf.put_u32(payload.len() as u32);
    buf.put_slice(&payload);
    assert!(matches!(
        ServerCodec::new().decode(&mut buf),
        Err(CodecError::Malformed(_))
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut server = ServerCodec::with_max_frame_len(256);
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until the codec wants more bytes or reports an error.
        while let Ok(Some(_)) = server.decode(&mut buf) {}
    }

    #[test]
    fn arbitrary_payloads_never_panic_message_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message::<ClientFrame>(&bytes);
        let _ = decode_message::<ServerFrame>(&bytes);
    }
}

#[test]
fn a_client_codec_decodes_replies_larger_than_a_mebibyte() {
    let products: Vec<ProductInfo> = (0..60_000)
        .map(|i| ProductInfo {
            id: ProductId(i),
            name: format!("product number {i}"),
            ..sample_product()
        })
        .collect();
    let reply = ServerFrame::Response(Response {
        id: 1,
        result: Ok(Reply::Products(products)),
    });
    let mut server = ServerCodec::new().with_max_encode_len(crate::DEFAULT_MAX_REPLY_FRAME_LEN);
    let mut buf = BytesMut::new();
    server.encode(reply.clone(), &mut buf).expect("encode");
    assert!(buf.len() > 1 << 20);
    let mut client = ClientCodec::with_max_frame_len(crate::DEFAULT_MAX_REPLY_FRAME_LEN);
    assert_eq!(client.decode(&mut buf).expect("decode"), Some(reply));
}

#[test]
fn a_client_codec_decodes_product_lists_of_every_size_up_to_its_frame_limit() {
    for count in [10, 500, 5_000, 20_000, 60_000] {
        let products = (0..count)
            .map(|i| ProductInfo {
                id: ProductId(i),
                name: format!("Product number {i}"),
                price_cents: 1_000 + i,
                stock: 1_000_000 + i,
                initial_stock: 2_000_000,
                restocked: -5,
                confirmed_qty: 1_000_000 - i,
                rules: SaleRules::default(),
                held: i % 3,
                hold_ms: 600_000,
            })
            .collect();
        let frame = ServerFrame::Response(Response {
            id: 1,
            result: Ok(Reply::Products(products)),
        });
        let mut server = ServerCodec::new().with_max_encode_len(crate::DEFAULT_MAX_REPLY_FRAME_LEN);
        let mut buf = BytesMut::new();
        server.encode(frame.clone(), &mut buf).expect("encode");
        let mut client = ClientCodec::with_max_frame_len(crate::DEFAULT_MAX_REPLY_FRAME_LEN);
        let decoded = client.decode(&mut buf).expect("decode").expect("a frame");
        assert_eq!(decoded, frame, "{count} products");
    }
}

#[test]
fn a_reply_answers_only_the_requests_of_its_kind() {
    let pay = RequestBody::Pay {
        idempotency_key: Uuid::new_v4(),
    };
    assert!(Reply::Accepted(sample_order()).answers(&pay));
    assert!(!Reply::Accepted(sample_order()).answers(&RequestBody::Stats));
    assert!(Reply::Pong.answers(&RequestBody::Ping));
    assert!(!Reply::Pong.answers(&pay));
    assert!(
        Reply::Product(sample_product()).answers(&RequestBody::SetStock {
            product_id: ProductId(1),
            stock: 3,
        })
    );
}
