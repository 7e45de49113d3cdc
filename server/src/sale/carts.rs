//! Carts, persisted in sled and updated with compare-and-swap, so two
//! connections of one buyer never lose each other's changes.
//!
//! A cart is checked out once: a `Pay` takes the buyer's checkout mark
//! ([`Carts::begin_checkout`]) before it reads the cart, and the mark is
//! released only once the pay is answered without an order, or its order
//! is published and taken out of the cart. A second pay with another key
//! meanwhile finds the mark and is answered `EmptyCart`, so one cart never
//! makes two orders. A retry with the same key shares the mark: each pay of
//! that key holds a guard, and the mark is released when the last drops, so
//! a retry still in flight keeps it even if the first pay was refused.

use crate::cluster::entry::Side;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::store::{decode, encode, id_key, CartRecord, Store};
use flashsale_protocol::{
    CartView, ErrorCode, OrderInfo, OrderLine, OrderStatus, ProductId, UserId, MAX_LINE_QTY,
    MAX_ORDER_LINES,
};
use hashbrown::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Attempts of one buyer's compare-and-swap update before giving up; only
/// reached if one cart is rewritten from many connections in the same
/// instant. Taking a confirmed order out of its cart never gives up: a
/// failure there stops the server, which a buyer must not be able to cause
/// by rewriting the cart from many connections.
const MAX_CAS_ATTEMPTS: usize = 64;

/// The `carts` tree, and the checkouts in flight.
#[derive(Debug, Clone)]
pub(crate) struct Carts {
    /// The data dir; carts are its `carts` side table.
    store: Store,
    /// The buyers whose cart a pay is checking out, with that pay's key.
    checkouts: Arc<Checkouts>,
}

/// Buyers whose cart is being checked out, the key of the pay doing it,
/// and how many pays of that key (the first and its retries) hold a guard.
/// In memory only: after a crash, recovery re-applies the journal's
/// cart updates, and no pay is in flight.
///
/// Bound: one entry per buyer with a pay in flight (each is queued or deciding, and
/// those are bounded by the shard queues and the connections' in-flight
/// caps). Eviction: the entry is removed when its last [`CheckoutGuard`] drops,
/// which every path of a pay does (refused at intake, queue full,
/// shutting down, or published after its cart update), so no mark can
/// outlive its pay and block the buyer.
#[derive(Debug, Default)]
struct Checkouts {
    in_flight: Mutex<HashMap<UserId, Mark>>,
}

/// One buyer's checkout mark: the pay key holding it and its guards alive.
#[derive(Debug)]
struct Mark {
    key: Uuid,
    holders: usize,
}

impl Checkouts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Mark>> {
        // A poisoned lock only means a panic elsewhere; the map stays consistent.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What [`Carts::begin_checkout`] found.
#[derive(Debug)]
pub(crate) enum Checkout {
    /// No checkout was in flight: this pay holds the mark until the guard drops.
    Started(CheckoutGuard),
    /// A pay with the same key is in flight: this is its retry (the
    /// sequencer answers it with the same order). It shares the mark: the
    /// mark is released only once every guard of the key has dropped.
    Retry(CheckoutGuard),
    /// A pay with another key is checking the cart out.
    Busy,
}

/// One pay's hold on a checkout mark; dropping the last guard of the mark
/// releases it.
#[derive(Debug)]
pub(crate) struct CheckoutGuard {
    checkouts: Arc<Checkouts>,
    user: UserId,
    key: Uuid,
}

impl Drop for CheckoutGuard {
    fn drop(&mut self) {
        let mut in_flight = self.checkouts.lock();
        // The mark outlives every guard of its key, so it is this guard's;
        // the key check only guards against a bug elsewhere.
        if let hashbrown::hash_map::Entry::Occupied(mut mark) = in_flight.entry(self.user) {
            if mark.get().key == self.key {
                mark.get_mut().holders = mark.get().holders.saturating_sub(1);
                if mark.get().holders == 0 {
                    mark.remove();
                }
            }
        }
    }
}

impl CartRecord {
    /// The wire view.
    pub(crate) fn view(&self) -> CartView {
        CartView {
            lines: self.lines.clone(),
        }
    }

    fn qty_of(&self, product: ProductId) -> u32 {
        self.lines
            .iter()
            .find(|l| l.product_id == product)
            .map_or(0, |l| l.qty)
    }

    fn set_qty(&mut self, product: ProductId, qty: u32) {
        match self.lines.binary_search_by_key(&product, |l| l.product_id) {
            Ok(i) if qty == 0 => {
                self.lines.remove(i);
            }
            Ok(i) => self.lines[i].qty = qty,
            Err(_) if qty == 0 => {}
            Err(i) => self.lines.insert(
                i,
                OrderLine {
                    product_id: product,
                    qty,
                },
            ),
        }
    }
}

impl Carts {
    /// Carts stored in `tree`.
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            checkouts: Arc::default(),
        }
    }

    /// Marks the buyer's cart as being checked out by the pay `key`, unless
    /// a pay with another key is doing it.
    pub(crate) fn begin_checkout(&self, user: UserId, key: Uuid) -> Checkout {
        let mut in_flight = self.checkouts.lock();
        let guard = || CheckoutGuard {
            checkouts: Arc::clone(&self.checkouts),
            user,
            key,
        };
        match in_flight.get_mut(&user) {
            Some(mark) if mark.key == key => {
                mark.holders += 1;
                Checkout::Retry(guard())
            }
            Some(_) => Checkout::Busy,
            None => {
                in_flight.insert(user, Mark { key, holders: 1 });
                Checkout::Started(guard())
            }
        }
    }

    /// Pays checking a cart out now.
    #[cfg(test)]
    pub(crate) fn checkouts_in_flight(&self) -> usize {
        self.checkouts.lock().len()
    }

    /// The buyer's cart (empty if never used).
    ///
    /// # Errors
    /// Storage failure or a corrupt record.
    pub(crate) fn get(&self, user: UserId) -> Result<CartRecord, ServerError> {
        match self.store.carts.get(id_key(user.0))? {
            Some(raw) => decode("carts", &raw),
            None => Ok(CartRecord::default()),
        }
    }

    /// Adds `qty` units; the line's new total must not exceed `available`.
    ///
    /// # Errors
    /// `SoldOut` when the stock available now cannot cover the line,
    /// `BadRequest` for too many lines or too large a quantity.
    pub(crate) fn add(
        &self,
        user: UserId,
        product: ProductId,
        qty: u32,
        available: u64,
    ) -> ApiResult<CartRecord> {
        self.update(user, |cart| {
            let total = cart.qty_of(product).saturating_add(qty);
            if total > MAX_LINE_QTY {
                return Err(ApiError::bad_request(format!(
                    "at most {MAX_LINE_QTY} units of one product per cart"
                )));
            }
            if u64::from(total) > available {
                return Err(ApiError::new(
                    ErrorCode::SoldOut,
                    format!("only {available} units of product {product} are left"),
                ));
            }
            if cart.qty_of(product) == 0 && cart.lines.len() >= MAX_ORDER_LINES {
                return Err(ApiError::bad_request(format!(
                    "a cart holds at most {MAX_ORDER_LINES} products"
                )));
            }
            cart.set_qty(product, total);
            Ok(())
        })
    }

    /// Removes up to `qty` units of a product.
    ///
    /// # Errors
    /// `NotFound` when the product is not in the cart.
    pub(crate) fn remove(
        &self,
        user: UserId,
        product: ProductId,
        qty: u32,
    ) -> ApiResult<CartRecord> {
        self.update(user, |cart| {
            let present = cart.qty_of(product);
            if present == 0 {
                return Err(ApiError::not_found(format!(
                    "product {product} is not in the cart"
                )));
            }
            cart.set_qty(product, present.saturating_sub(qty));
            Ok(())
        })
    }

    /// Empties the cart.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn clear(&self, user: UserId) -> ApiResult<CartRecord> {
        self.update(user, |cart| {
            cart.lines.clear();
            Ok(())
        })
    }

    /// Takes a confirmed cart order's lines out of the buyer's cart, once:
    /// an order at or below the cart's `last_order_applied` is skipped.
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn apply_confirmed(&self, order: &OrderInfo) -> ApiResult<()> {
        // A held cart leaves the cart as a confirmed one does.
        let taken = matches!(
            order.status,
            OrderStatus::Confirmed | OrderStatus::Held { .. }
        );
        if !order.source.is_cart() || !taken {
            return Ok(());
        }
        // Every lost compare-and-swap is another writer's success, so this
        // ends; only a storage failure fails it.
        self.update_within(usize::MAX, order.user_id, |cart| {
            if cart.last_order_applied >= order.id {
                return Ok(());
            }
            for line in &order.items {
                let left = cart.qty_of(line.product_id).saturating_sub(line.qty);
                cart.set_qty(line.product_id, left);
            }
            cart.last_order_applied = order.id;
            Ok(())
        })
        .map(|_| ())
    }

    /// Read-modify-write of one cart with compare-and-swap.
    fn update(
        &self,
        user: UserId,
        change: impl FnMut(&mut CartRecord) -> ApiResult<()>,
    ) -> ApiResult<CartRecord> {
        self.update_within(MAX_CAS_ATTEMPTS, user, change)
    }

    /// [`Carts::update`] giving up after `attempts` lost compare-and-swaps.
    fn update_within(
        &self,
        attempts: usize,
        user: UserId,
        mut change: impl FnMut(&mut CartRecord) -> ApiResult<()>,
    ) -> ApiResult<CartRecord> {
        let key = id_key(user.0);
        for _ in 0..attempts {
            let old = self.store.carts.get(key).map_err(ServerError::from)?;
            let mut cart: CartRecord = match &old {
                Some(raw) => decode("carts", raw)?,
                None => CartRecord::default(),
            };
            change(&mut cart)?;
            let new = encode(&cart)?;
            if self
                .store
                .side_cas(Side::Carts, &key, old.as_deref(), Some(new))?
            {
                return Ok(cart);
            }
        }
        Err(ApiError::new(
            ErrorCode::Overloaded,
            "the cart is being changed from many places at once; retry",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pay_holds_the_checkout_until_its_guard_drops_and_a_retry_passes() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let carts = Carts::new(Store::open(dir.path()).expect("store"));
        let (user, first, second) = (UserId(1), Uuid::new_v4(), Uuid::new_v4());
        let Checkout::Started(guard) = carts.begin_checkout(user, first) else {
            panic!("the first pay did not start the checkout");
        };
        assert!(matches!(carts.begin_checkout(user, second), Checkout::Busy));
        assert!(matches!(
            carts.begin_checkout(user, first),
            Checkout::Retry(_)
        ));
        assert!(matches!(
            carts.begin_checkout(UserId(2), second),
            Checkout::Started(_)
        ));
        assert_eq!(
            carts.checkouts_in_flight(),
            1,
            "a dropped guard left its mark"
        );
        drop(guard);
        assert_eq!(carts.checkouts_in_flight(), 0);
        assert!(matches!(
            carts.begin_checkout(user, second),
            Checkout::Started(_)
        ));
    }

    #[test]
    fn a_retry_keeps_the_checkout_after_the_first_pay_of_its_key_is_released() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let carts = Carts::new(Store::open(dir.path()).expect("store"));
        let (user, first, other) = (UserId(1), Uuid::new_v4(), Uuid::new_v4());
        let Checkout::Started(guard) = carts.begin_checkout(user, first) else {
            panic!("the first pay did not start the checkout");
        };
        let Checkout::Retry(retry) = carts.begin_checkout(user, first) else {
            panic!("the same key was not seen as a retry");
        };
        // The first pay is refused (say, its queue is full) while its retry
        // is queued: the retry still holds the cart.
        drop(guard);
        assert!(
            matches!(carts.begin_checkout(user, other), Checkout::Busy),
            "a pay with another key checked out a cart a retry still holds"
        );
        assert_eq!(carts.checkouts_in_flight(), 1);
        drop(retry);
        assert_eq!(carts.checkouts_in_flight(), 0);
        assert!(matches!(
            carts.begin_checkout(user, other),
            Checkout::Started(_)
        ));
    }
}
