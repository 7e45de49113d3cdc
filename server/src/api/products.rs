//! The shop window: listing products and reading one.

use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use flashsale_protocol::{ProductId, Reply};

/// `ListProducts`: every product with its durable figures.
pub(super) fn list(shared: &Shared) -> Reply {
    Reply::Products(shared.sale.catalog.list())
}

/// `GetProduct`.
pub(super) fn get(shared: &Shared, id: ProductId) -> ApiResult<Reply> {
    shared
        .sale
        .catalog
        .get(id)
        .map(|product| Reply::Product(product.info()))
        .ok_or_else(|| ApiError::not_found(format!("no product {id}")))
}
