//! The request/answer oracle: what the server must answer to a byte stream
//! sent after the handshake, worked out from the bytes alone with a model
//! [`ServerCodec`] (the protocol reference's framing rules), not from
//! server internals; and the checks of its answers and of the products.
//!
//! Used by the hostile-input property tests (`tests/hostile_input.rs`) and
//! the `request_path` fuzz target, so both hold the server to the same rules:
//!
//! * every request the server reads gets exactly one response with its id:
//!   a reply of the kind the request asks for ([`Reply::answers`]) or a
//!   typed error that is not `Internal`;
//! * a bad frame (undecodable, oversize, a second `Hello`) gets
//!   `Closing(BadRequest)` after those answers, and nothing follows it;
//! * without an admin session, nothing but orders moves a product's figures,
//!   and every product balances.
//!
//! The model codec has the default frame limit, so the server checked must
//! run with the default `Config::max_frame_len`.

use bytes::BytesMut;
use flashsale_protocol::{
    ClientFrame, CodecError, ErrorCode, ProductInfo, Reply, Request, ServerCodec, ServerFrame,
    WireError,
};
use tokio_util::codec::Decoder;

/// What the server must do with a byte stream, by the protocol's framing rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The requests it reads, in order; each gets exactly one response.
    pub requests: Vec<Request>,
    /// A bad frame (undecodable, oversize, a second `Hello`) ends the
    /// connection with `Closing(BadRequest)`.
    pub closing: bool,
    /// Bytes up to the end of the bad frame (all of them when there is
    /// none). Send only these: sending more would leave bytes unread, and
    /// closing a socket with unread bytes resets the connection, which may
    /// destroy the `Closing` frame in flight and make the check racy.
    pub len: usize,
}

impl Expected {
    /// Well-formed requests sent in order, with no bad frame after them.
    pub fn requests(requests: Vec<Request>) -> Self {
        Self {
            requests,
            closing: false,
            len: 0,
        }
    }
}

/// Parses `bytes` as the server does, with a model codec.
///
/// # Panics
/// When the model codec fails in a way no byte stream should make it fail
/// (an I/O or encoding error).
pub fn expected(bytes: &[u8]) -> Expected {
    let mut codec = ServerCodec::new();
    let mut buf = BytesMut::from(bytes);
    let mut requests = Vec::new();
    loop {
        let decoded = codec.decode(&mut buf);
        let consumed = bytes.len() - buf.len();
        match decoded {
            Ok(Some(ClientFrame::Request(request))) => requests.push(request),
            Ok(None) => {
                return Expected {
                    requests,
                    closing: false,
                    len: bytes.len(),
                }
            }
            Ok(Some(ClientFrame::Hello(_))) | Err(CodecError::Malformed(_)) => {
                return Expected {
                    requests,
                    closing: true,
                    len: consumed,
                }
            }
            // The length prefix is refused before it is consumed.
            Err(CodecError::FrameTooLarge { .. }) => {
                return Expected {
                    requests,
                    closing: true,
                    len: consumed + 4,
                }
            }
            Err(e) => panic!("the model codec failed: {e}"),
        }
    }
}

/// One request the server answered, with its answer.
pub type Answered = (Request, Result<Reply, WireError>);

/// Checks every frame the server sent after the handshake against the
/// requests it must have read, and returns the answered requests with
/// their results (in the order they are paired, not the order sent).
///
/// # Panics
/// On any protocol violation: a response matching no unanswered request
/// (wrong id, or a reply of a kind the request does not ask for), an
/// `Internal` error, a request left unanswered, a frame after `Closing`, a
/// second `Welcome`, a `Closing` that is not `BadRequest`, or one missing
/// or unexpected.
pub fn check_answers(frames: Vec<ServerFrame>, expected: &Expected) -> Vec<Answered> {
    let mut unanswered: Vec<&Request> = expected.requests.iter().collect();
    let mut answered = Vec::new();
    let mut closing = None;
    let mut responses = Vec::new();
    for frame in frames {
        assert!(closing.is_none(), "a frame after Closing: {frame:?}");
        match frame {
            ServerFrame::Response(response) => responses.push(response),
            ServerFrame::Push(_) => {}
            ServerFrame::Closing(error) => closing = Some(error),
            ServerFrame::Welcome(_) => panic!("a second Welcome"),
        }
    }
    // Ids may repeat. A reply's kind says which request it answers, so pair
    // the replies first and the errors (which fit any request) last.
    responses.sort_by_key(|response| response.result.is_err());
    for response in responses {
        let position = unanswered
            .iter()
            .position(|r| {
                r.id == response.id
                    && response
                        .result
                        .as_ref()
                        .map_or(true, |reply| reply.answers(&r.body))
            })
            .unwrap_or_else(|| {
                panic!("a response matching no request: {response:?} (unanswered: {unanswered:?})")
            });
        let request = unanswered.remove(position);
        if let Err(e) = &response.result {
            assert_ne!(
                e.code,
                ErrorCode::Internal,
                "{} failed inside the server: {e}",
                request.body.kind()
            );
        }
        answered.push((request.clone(), response.result));
    }
    match (closing, expected.closing) {
        (Some(error), true) => assert_eq!(error.code, ErrorCode::BadRequest, "{error}"),
        (None, false) => {}
        (closing, _) => panic!(
            "Closing {closing:?}, expected one: {}; requests {:?}",
            expected.closing, expected.requests
        ),
    }
    assert!(
        unanswered.is_empty(),
        "requests never answered: {unanswered:?}"
    );
    answered
}

/// True when one of the answers logged the connection in as an admin.
pub fn logged_in_as_admin(answered: &[Answered]) -> bool {
    answered.iter().any(|(_, result)| {
        matches!(
            result,
            Ok(Reply::LoggedIn {
                role: flashsale_protocol::Role::Admin,
                ..
            })
        )
    })
}

/// Checks the products after requests without an admin session against
/// those before: the same products, every one balancing
/// ([`ProductInfo::balances`]), no name, price, stock supplied or rule
/// changed, confirmed units never fewer, and stock moved only into
/// confirmed orders (`stock + confirmed_qty` unchanged).
///
/// # Panics
/// When any of that does not hold.
pub fn only_orders_changed(before: &[ProductInfo], after: &[ProductInfo]) {
    assert_eq!(
        before.len(),
        after.len(),
        "the product list changed without an admin"
    );
    for (b, a) in before.iter().zip(after) {
        assert!(a.balances(), "{a:?} does not balance");
        assert_eq!(
            (
                a.id,
                &a.name,
                a.price_cents,
                a.initial_stock,
                a.restocked,
                a.rules
            ),
            (
                b.id,
                &b.name,
                b.price_cents,
                b.initial_stock,
                b.restocked,
                b.rules
            ),
            "a product changed without an admin"
        );
        assert!(
            a.confirmed_qty >= b.confirmed_qty,
            "confirmed units of {} went down without an admin",
            a.name
        );
        assert_eq!(
            a.stock + a.confirmed_qty,
            b.stock + b.confirmed_qty,
            "stock of {} moved without an order",
            a.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_protocol::{
        ClientCodec, Hello, ProductId, RequestBody, Response, SaleRules, DEFAULT_MAX_FRAME_LEN,
    };
    use tokio_util::codec::Encoder;

    fn request(id: u64) -> Request {
        Request {
            id,
            on_behalf_of: None,
            body: RequestBody::Ping,
        }
    }

    fn bytes_of(frames: Vec<ClientFrame>) -> BytesMut {
        let mut buf = BytesMut::new();
        for frame in frames {
            ClientCodec::new().encode(frame, &mut buf).expect("encode");
        }
        buf
    }

    fn error(code: ErrorCode) -> WireError {
        WireError {
            code,
            message: String::new(),
            trace_id: uuid::Uuid::nil(),
            retry_after_ms: None,
        }
    }

    #[test]
    fn requests_then_a_partial_frame_are_all_sent_and_no_close_is_expected() {
        let mut bytes = bytes_of(vec![
            ClientFrame::Request(request(1)),
            ClientFrame::Request(request(1)),
        ]);
        bytes.extend_from_slice(&[0, 0, 0, 9, 1]);
        let expected = expected(&bytes);
        assert_eq!(expected.requests, vec![request(1), request(1)]);
        assert!(!expected.closing);
        assert_eq!(expected.len, bytes.len());
    }

    #[test]
    fn an_oversize_length_prefix_closes_and_is_the_last_byte_sent() {
        let mut bytes = bytes_of(vec![ClientFrame::Request(request(7))]);
        let request_len = bytes.len();
        let too_large = u32::try_from(DEFAULT_MAX_FRAME_LEN + 1).expect("fits");
        bytes.extend_from_slice(&too_large.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        let expected = expected(&bytes);
        assert_eq!(expected.requests, vec![request(7)]);
        assert!(expected.closing);
        assert_eq!(expected.len, request_len + 4);
    }

    #[test]
    fn a_second_hello_closes_after_the_requests_before_it() {
        let hello = ClientFrame::Hello(Hello {
            protocol_version: 1,
            client_name: "again".into(),
        });
        let bytes = bytes_of(vec![
            ClientFrame::Request(request(3)),
            hello,
            ClientFrame::Request(request(4)),
        ]);
        let expected = expected(&bytes);
        assert_eq!(expected.requests, vec![request(3)]);
        assert!(expected.closing);
        assert!(expected.len < bytes.len());
    }

    #[test]
    fn answers_pair_by_id_and_kind_and_a_bad_request_close_comes_last() {
        let expected = Expected {
            requests: vec![request(5), request(5)],
            closing: true,
            len: 0,
        };
        let frames = vec![
            ServerFrame::Response(Response {
                id: 5,
                result: Err(error(ErrorCode::Unauthenticated)),
            }),
            ServerFrame::Response(Response {
                id: 5,
                result: Ok(Reply::Pong),
            }),
            ServerFrame::Closing(error(ErrorCode::BadRequest)),
        ];
        let answered = check_answers(frames, &expected);
        assert_eq!(answered.len(), 2);
        assert!(!logged_in_as_admin(&answered));
    }

    #[test]
    #[should_panic(expected = "failed inside the server")]
    fn an_internal_error_fails_the_check() {
        let frames = vec![ServerFrame::Response(Response {
            id: 1,
            result: Err(error(ErrorCode::Internal)),
        })];
        check_answers(frames, &Expected::requests(vec![request(1)]));
    }

    #[test]
    #[should_panic(expected = "requests never answered")]
    fn an_unanswered_request_fails_the_check() {
        check_answers(Vec::new(), &Expected::requests(vec![request(1)]));
    }

    fn product(stock: u64, confirmed_qty: u64) -> ProductInfo {
        ProductInfo {
            id: ProductId(1),
            name: "P".into(),
            price_cents: 100,
            stock,
            initial_stock: 10,
            restocked: 0,
            confirmed_qty,
            rules: SaleRules::default(),
            held: 0,
            hold_ms: 600_000,
        }
    }

    #[test]
    fn confirmed_orders_may_move_stock() {
        only_orders_changed(&[product(10, 0)], &[product(7, 3)]);
    }

    #[test]
    #[should_panic(expected = "does not balance")]
    fn a_product_that_does_not_balance_fails_the_check() {
        only_orders_changed(&[product(10, 0)], &[product(9, 0)]);
    }

    #[test]
    #[should_panic(expected = "changed without an admin")]
    fn a_restock_fails_the_check() {
        let restocked = ProductInfo {
            restocked: 5,
            ..product(15, 0)
        };
        only_orders_changed(&[product(10, 0)], &[restocked]);
    }
}
