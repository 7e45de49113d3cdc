//! Small helpers for tests that drive the server through the client library.

use flashsale_client::{Client, ClientError, PlacedOrder};
use flashsale_protocol::{ErrorCode, OrderInfo, OrderStatus, ProductId, ProductInfo, Role};

/// Creates partner account `name` and returns an API key for it.
pub async fn partner_key(admin: &Client, name: &str) -> String {
    admin
        .create_user(name, "partner-password", Role::Partner)
        .await
        .expect("create partner");
    admin.create_api_key(name).await.expect("api key").key
}

/// Creates a product (price 100 cents) and returns it.
pub async fn product(admin: &Client, name: &str, stock: u64) -> ProductInfo {
    admin
        .create_product(name, 100, stock)
        .await
        .expect("create product")
}

/// The code of a refused request; panics on success or a non-server error.
pub fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("not a server refusal: {e}")),
        Ok(value) => panic!("expected a refusal, got {value:?}"),
    }
}

/// What a pay attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted and confirmed.
    Confirmed(OrderInfo),
    /// Accepted, then rejected by the sequencer.
    Rejected(OrderInfo, ErrorCode),
    /// Refused at intake without an order.
    Refused(ErrorCode),
}

impl Outcome {
    /// Sorts a pay or buy result into an outcome.
    pub fn of(result: Result<PlacedOrder, ClientError>) -> Self {
        match result {
            Ok(placed) => match placed.order.status {
                OrderStatus::Confirmed => Self::Confirmed(placed.order),
                OrderStatus::Rejected { code, .. } => Self::Rejected(placed.order.clone(), code),
                other => panic!("unexpected status {other:?}"),
            },
            Err(e) => Self::Refused(e.code().unwrap_or_else(|| panic!("pay failed: {e}"))),
        }
    }

    /// True when confirmed.
    pub fn is_confirmed(&self) -> bool {
        matches!(self, Self::Confirmed(_))
    }

    /// True when sold out, at intake or by the sequencer.
    pub fn is_sold_out(&self) -> bool {
        matches!(
            self,
            Self::Rejected(_, ErrorCode::SoldOut) | Self::Refused(ErrorCode::SoldOut)
        )
    }
}

/// The live stock of a product.
pub async fn stock_of(client: &Client, id: ProductId) -> u64 {
    client.product(id).await.expect("get product").stock
}
