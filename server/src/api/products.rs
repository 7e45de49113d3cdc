//! The shop window: listing products (a page at a time) and reading one.

use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use flashsale_protocol::{ProductId, Reply};

/// The page size a product listing asks for: 0 means the server's page
/// (`Config::list_products_page`), and never more than that.
fn page_limit(shared: &Shared, asked: u32) -> usize {
    let page = shared.config.list_products_page.max(1);
    let limit = if asked == 0 { page } else { asked.min(page) };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// `ListProducts`: the first page of products with their durable figures
/// (`ListProductsPage` reads the rest).
pub(super) fn list(shared: &Shared) -> Reply {
    let (products, _more) = shared.sale.catalog.page(None, page_limit(shared, 0));
    Reply::Products(products)
}

/// `ListProductsPage`: up to `limit` products after `after`, and where the
/// next page starts.
pub(super) fn page(shared: &Shared, after: Option<ProductId>, limit: u32) -> Reply {
    let (products, more) = shared.sale.catalog.page(after, page_limit(shared, limit));
    let next_after = if more {
        products.last().map(|product| product.id)
    } else {
        None
    };
    Reply::ProductPage {
        products,
        next_after,
    }
}

/// `GetProduct`.
pub(super) fn get(shared: &Shared, id: ProductId) -> ApiResult<Reply> {
    shared
        .sale
        .catalog
        .info(id)
        .map(Reply::Product)
        .ok_or_else(|| ApiError::not_found(format!("no product {id}")))
}
