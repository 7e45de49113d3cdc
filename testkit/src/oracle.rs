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
