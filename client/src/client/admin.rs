//! The operators' API: products and their rules, stock, cancellations,
//! accounts, partners' API keys, order queries and stats.

use super::Client;
use crate::error::{ClientError, Result};
use flashsale_protocol::{
    ClusterReport, OrderId, OrderInfo, ProductId, ProductInfo, Reply, RequestBody, Role, SaleRules,
    StatsReport, StatusFilter, UserId, UserInfo,
};

impl Client {
    /// Admin: creates a product with no purchase limit and no sale window.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `AlreadyExists` for a taken name,
    /// `BadRequest` for an invalid name or a stock above 2^48.
    pub async fn create_product(
        &self,
        name: &str,
        price_cents: u64,
        stock: u64,
    ) -> Result<ProductInfo> {
        self.create_product_with_rules(name, price_cents, stock, SaleRules::default())
            .await
    }

    /// Admin: creates a product with its purchase limit and sale window, so
    /// the rules are in force from the product's first order on.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `AlreadyExists` for a taken name,
    /// `BadRequest` for an invalid name, a stock above 2^48, a window that
    /// closes before it opens or a zero limit.
    pub async fn create_product_with_rules(
        &self,
        name: &str,
        price_cents: u64,
        stock: u64,
        rules: SaleRules,
    ) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::CreateProduct {
                name: name.to_owned(),
                price_cents,
                stock,
                rules,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets a product's stock to an exact figure (in arrival order
    /// with its orders).
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product,
    /// `BadRequest` for a stock above 2^48.
    pub async fn set_stock(&self, product_id: ProductId, stock: u64) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::SetStock { product_id, stock })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets (`Some`) or removes (`None`) a product's per-buyer limit.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product,
    /// `BadRequest` for a zero limit.
    pub async fn set_limit(
        &self,
        product_id: ProductId,
        max_per_buyer: Option<u32>,
    ) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::SetLimit {
                product_id,
                max_per_buyer,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets a product's sale window (ms since the epoch; `None`: open end).
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product,
    /// `BadRequest` when the window closes before it opens.
    pub async fn set_window(
        &self,
        product_id: ProductId,
        opens_at_ms: Option<u64>,
        closes_at_ms: Option<u64>,
    ) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::SetWindow {
                product_id,
                opens_at_ms,
                closes_at_ms,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: sets a product's hold time (`None`: the server's default),
    /// 1 s to a day, in arrival order with its orders.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound`, `BadRequest` out of range.
    pub async fn set_hold_time(
        &self,
        product_id: ProductId,
        hold: Option<std::time::Duration>,
    ) -> Result<ProductInfo> {
        let hold_ms = hold.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let reply = self
            .request(RequestBody::SetHoldTime {
                product_id,
                hold_ms,
            })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: cancels a confirmed order and returns its stock; the buyer's
    /// sessions (for a partner's buyer: the partner's) are pushed the change.
    /// Cancelling a cancelled order returns it unchanged.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown order,
    /// `BadRequest` for a pending or rejected order.
    pub async fn cancel_order(&self, id: OrderId) -> Result<OrderInfo> {
        let reply = self.request(RequestBody::CancelOrder { id }).await?;
        expect_reply!(reply, Reply::Order(order) => order)
    }

    /// Admin: user accounts in name order after `after`, at most `limit` (0: the server's page).
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserInfo>> {
        let reply = self
            .request(RequestBody::ListUsers {
                after: after.map(str::to_owned),
                limit,
            })
            .await?;
        expect_reply!(reply, Reply::Users(users) => users)
    }

    /// Admin: one page of every buyer's orders, filtered by product and
    /// status; continue with `after: next_after` while it is `Some`.
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn query_orders(
        &self,
        after: Option<OrderId>,
        limit: u32,
        product_id: Option<ProductId>,
        status: Option<StatusFilter>,
    ) -> Result<OrderPage> {
        let reply = self
            .request(RequestBody::QueryOrders {
                after,
                limit,
                product_id,
                status,
            })
            .await?;
        expect_reply!(reply, Reply::OrderPage { orders, next_after } => OrderPage { orders, next_after })
    }

    /// Admin: adds stock to a product.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown product,
    /// `BadRequest` for a quantity of 0 or a stock that would exceed 2^48.
    pub async fn restock(&self, product_id: ProductId, qty: u64) -> Result<ProductInfo> {
        let reply = self
            .request(RequestBody::Restock { product_id, qty })
            .await?;
        expect_reply!(reply, Reply::Product(product) => product)
    }

    /// Admin: creates an account.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `AlreadyExists` for a taken name,
    /// `BadRequest` for an invalid name (1 to 64 characters of
    /// `a-z A-Z 0-9 - _ . @`) or a password outside 8 to 256 bytes.
    pub async fn create_user(&self, username: &str, password: &str, role: Role) -> Result<UserId> {
        let reply = self
            .request(RequestBody::CreateUser {
                username: username.to_owned(),
                password: password.to_owned(),
                role,
            })
            .await?;
        expect_reply!(reply, Reply::UserCreated { user_id, .. } => user_id)
    }

    /// Admin: issues an API key for a partner account; the key is shown only here.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown account,
    /// `BadRequest` for an account that is not a partner.
    pub async fn create_api_key(&self, partner: &str) -> Result<ApiKey> {
        let reply = self
            .request(RequestBody::CreateApiKey {
                partner: partner.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::ApiKeyCreated { partner_id, key_id, key } => ApiKey { partner_id, key_id, key })
    }

    /// Admin: revokes an API key: it no longer logs in or resumes, and its
    /// live sessions end. Revoking a revoked key succeeds again.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown key id.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<()> {
        let reply = self
            .request(RequestBody::RevokeApiKey {
                key_id: key_id.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::ApiKeyRevoked { .. } => ())
    }

    /// Admin: disables (`true`) or enables (`false`) an account. A disabled
    /// account cannot log in, resume a session or be acted for, and its live
    /// sessions end at once. Answered once the change is on disk.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown account.
    pub async fn set_user_disabled(&self, username: &str, disabled: bool) -> Result<UserInfo> {
        let reply = self
            .request(RequestBody::SetUserDisabled {
                username: username.to_owned(),
                disabled,
            })
            .await?;
        expect_reply!(reply, Reply::User(user) => user)
    }

    /// Admin: sets a new password for an account; all its sessions end.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown account,
    /// `BadRequest` for a password outside 8 to 256 bytes.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<UserInfo> {
        let reply = self
            .request(RequestBody::SetPassword {
                username: username.to_owned(),
                password: password.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::User(user) => user)
    }

    /// Admin: ends every session of an account (their connections close);
    /// returns how many were live.
    ///
    /// # Errors
    /// `Forbidden` for non-admins, `NotFound` for an unknown account.
    pub async fn end_sessions(&self, username: &str) -> Result<u64> {
        let reply = self
            .request(RequestBody::EndSessions {
                username: username.to_owned(),
            })
            .await?;
        expect_reply!(reply, Reply::SessionsEnded { sessions, .. } => sessions)
    }

    /// Admin: the cluster as its leader sees it (every node, its applied
    /// sequence and lag); `None` from a single server.
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn cluster_status(&self) -> Result<Option<ClusterReport>> {
        let reply = self.request(RequestBody::ClusterStatus).await?;
        expect_reply!(reply, Reply::ClusterStatus(report) => report)
    }

    /// Admin: server-wide counters.
    ///
    /// # Errors
    /// `Forbidden` for non-admins.
    pub async fn stats(&self) -> Result<StatsReport> {
        let reply = self.request(RequestBody::Stats).await?;
        expect_reply!(reply, Reply::Stats(stats) => stats)
    }
}

/// One page of [`Client::query_orders`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPage {
    /// Matching orders, ascending by id.
    pub orders: Vec<OrderInfo>,
    /// Where to continue; `None` when every order was examined.
    pub next_after: Option<OrderId>,
}

/// A partner API key, as issued. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The partner account.
    pub partner_id: UserId,
    /// The key's id, for revoking it.
    pub key_id: String,
    /// The key: keep it secret, it is shown only once.
    pub key: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("partner_id", &self.partner_id)
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_an_api_key_never_shows_the_key() {
        let key = ApiKey {
            partner_id: UserId(3),
            key_id: "0011aabb".into(),
            key: "fsk_0011aabb_deadbeefsecret".into(),
        };
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains("deadbeefsecret"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("0011aabb"),
            "{shown}"
        );
    }
}
