//! The published product catalog: what intake and readers see.
//!
//! Only the journal thread writes it, after a batch is durable, so every
//! figure here is backed by disk. Intake answers sold-out from it without
//! queueing or writing anything, and without a shared write: products sit
//! in an append-only vector read without a lock, the figures intake reads
//! are atomics, and the refusal counter is striped per thread.

use crate::sale::book::Event;
use crate::sale::holds::HoldsState;
use flashsale_protocol::{OrderStatus, ProductId, ProductInfo, ProductStats, SaleRules};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// "No value" in the rule atomics below (a limit or a time of `u64::MAX`
/// cannot be meant).
const NONE: u64 = u64::MAX;

/// One product's live figures.
#[derive(Debug)]
pub(crate) struct ProductLive {
    /// The product.
    pub(crate) id: ProductId,
    /// Display name.
    pub(crate) name: String,
    /// Unit price in cents.
    pub(crate) price_cents: u64,
    /// Stock at creation.
    pub(crate) initial_stock: u64,
    /// Units left, read by intake on every pay without a lock.
    stock: AtomicU64,
    /// Per-buyer limit ([`NONE`]: no limit), read by intake without a lock.
    max_per_buyer: AtomicU64,
    /// Sale opening time in ms ([`NONE`]: open from the start).
    opens_at_ms: AtomicU64,
    /// Sale closing time in ms ([`NONE`]: never closes).
    closes_at_ms: AtomicU64,
    /// Pay requests refused at intake since the server started.
    refused_at_intake: StripedCounter,
    /// The figures that change together, so a reader never sees them half-updated.
    figures: Mutex<Figures>,
    /// Units in live holds and the product's own hold time ([`NONE`]: the
    /// server default); kept apart from [`Figures`], whose encoding the
    /// checkpoint fixes, and rebuilt from the checkpoint's holds.
    holds: Mutex<HoldFigures>,
}

/// A product's hold figures.
#[derive(Debug, Clone, Copy, Default)]
struct HoldFigures {
    held: u64,
    hold_ms: Option<u64>,
}

/// Figures updated together by the journal thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Figures {
    stock: u64,
    restocked: i64,
    confirmed_qty: u64,
    rules: SaleRules,
    orders_confirmed: u64,
    orders_rejected: u64,
    orders_cancelled: u64,
}

fn from_option(value: Option<u64>) -> u64 {
    value.unwrap_or(NONE)
}

fn to_option(value: u64) -> Option<u64> {
    (value != NONE).then_some(value)
}

/// A signed stock difference, saturating (stock never exceeds 2^48).
fn signed_delta(from: u64, to: u64) -> i64 {
    let delta = i128::from(to) - i128::from(from);
    i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX })
}

impl ProductLive {
    fn new(id: ProductId, name: String, price_cents: u64, stock: u64, rules: SaleRules) -> Self {
        let live = Self {
            id,
            name,
            price_cents,
            initial_stock: stock,
            stock: AtomicU64::new(stock),
            max_per_buyer: AtomicU64::new(NONE),
            opens_at_ms: AtomicU64::new(NONE),
            closes_at_ms: AtomicU64::new(NONE),
            refused_at_intake: StripedCounter::default(),
            figures: Mutex::new(Figures {
                stock,
                ..Figures::default()
            }),
            holds: Mutex::new(HoldFigures::default()),
        };
        live.set_rules(rules);
        live
    }

    /// Units left as of the last durable batch.
    pub(crate) fn stock(&self) -> u64 {
        self.stock.load(Ordering::Acquire)
    }

    /// The rules as of the last durable batch, read without a lock.
    pub(crate) fn rules(&self) -> SaleRules {
        SaleRules {
            max_per_buyer: to_option(self.max_per_buyer.load(Ordering::Acquire))
                .map(|max| u32::try_from(max).unwrap_or(u32::MAX)),
            opens_at_ms: to_option(self.opens_at_ms.load(Ordering::Acquire)),
            closes_at_ms: to_option(self.closes_at_ms.load(Ordering::Acquire)),
        }
    }

    /// Counts a pay request refused at intake.
    pub(crate) fn count_refusal(&self) {
        self.refused_at_intake.add_one();
    }

    /// A consistent snapshot for the wire; `default_hold_ms` for a product
    /// without its own hold time.
    pub(crate) fn info(&self, default_hold_ms: u64) -> ProductInfo {
        let figures = self.lock();
        self.info_from(&figures, default_hold_ms)
    }

    /// The hold figures, read under the figures' lock (the journal thread
    /// changes both under it), so stock and held units agree.
    fn hold_figures(&self) -> HoldFigures {
        *self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_holds(&self, change: impl FnOnce(&mut HoldFigures)) {
        change(&mut self.holds.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn info_from(&self, figures: &Figures, default_hold_ms: u64) -> ProductInfo {
        let holds = self.hold_figures();
        ProductInfo {
            id: self.id,
            name: self.name.clone(),
            price_cents: self.price_cents,
            stock: figures.stock,
            initial_stock: self.initial_stock,
            restocked: figures.restocked,
            confirmed_qty: figures.confirmed_qty,
            rules: figures.rules,
            held: holds.held,
            hold_ms: holds.hold_ms.unwrap_or(default_hold_ms),
        }
    }

    /// The product with its order counts.
    pub(crate) fn stats(&self, default_hold_ms: u64) -> ProductStats {
        let figures = self.lock();
        ProductStats {
            product: self.info_from(&figures, default_hold_ms),
            orders_confirmed: figures.orders_confirmed,
            orders_rejected: figures.orders_rejected,
            orders_cancelled: figures.orders_cancelled,
            refused_at_intake: self.refused_at_intake.sum(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Figures> {
        // A poisoned lock only means a panic elsewhere; the figures are plain numbers.
        self.figures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the figures under the lock and republishes the stock.
    fn update(&self, change: impl FnOnce(&mut Figures)) {
        let mut figures = self.lock();
        change(&mut figures);
        self.stock.store(figures.stock, Ordering::Release);
    }

    /// Replaces the rules, under the lock, and republishes their lock-free copies.
    fn set_rules(&self, rules: SaleRules) {
        let mut figures = self.lock();
        figures.rules = rules;
        self.max_per_buyer.store(
            from_option(rules.max_per_buyer.map(u64::from)),
            Ordering::Release,
        );
        self.opens_at_ms
            .store(from_option(rules.opens_at_ms), Ordering::Release);
        self.closes_at_ms
            .store(from_option(rules.closes_at_ms), Ordering::Release);
    }
}

/// Most ids a product creation may skip: ids are handed out in order, so a
/// larger gap means a corrupt journal, not a reason to fill memory.
const MAX_ID_GAP: usize = 1024;

/// Stripes of a [`StripedCounter`]: about the number of threads that count.
const STRIPES: usize = 4;

/// A counter that many threads add to without sharing a cache line: each
/// thread adds to its own stripe, and a reader sums them. On every sold-out
/// answer, one shared counter would move between cores each time.
#[derive(Debug, Default)]
struct StripedCounter {
    stripes: [PaddedCounter; STRIPES],
}

/// One stripe, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct PaddedCounter(AtomicU64);

/// The stripe of the current thread.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

impl StripedCounter {
    fn add_one(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::saturating_add)
    }
}

/// All products, by id: product `n` is at index `n - 1` (ids are handed
/// out in order from 1; a gap, which the book never makes, holds `None`, and
/// a product is created once: a second creation of an id is logged and
/// ignored).
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    products: boxcar::Vec<Option<ProductLive>>,
    /// The server's hold time, for products without their own.
    default_hold_ms: AtomicU64,
}

impl Catalog {
    /// One product.
    pub(crate) fn get(&self, id: ProductId) -> Option<&ProductLive> {
        let index = usize::try_from(id.0.checked_sub(1)?).ok()?;
        self.products.get(index)?.as_ref()
    }

    /// Every product in id order.
    pub(crate) fn list(&self) -> Vec<ProductInfo> {
        let default = self.default_hold_ms();
        self.iter().map(|p| p.info(default)).collect()
    }

    /// The server's hold time for products without their own.
    pub(crate) fn default_hold_ms(&self) -> u64 {
        self.default_hold_ms.load(Ordering::Relaxed)
    }

    /// Sets the server's default hold time (at start).
    pub(crate) fn set_default_hold_ms(&self, ms: u64) {
        self.default_hold_ms.store(ms, Ordering::Relaxed);
    }

    /// One product for the wire.
    pub(crate) fn info(&self, id: ProductId) -> Option<ProductInfo> {
        self.get(id).map(|p| p.info(self.default_hold_ms()))
    }

    /// Loads the hold figures of a checkpoint (after [`Catalog::load`]).
    pub(crate) fn load_holds(&self, holds: &HoldsState) {
        for (product, ms) in &holds.hold_ms {
            if let Some(p) = self.get(*product) {
                p.update_holds(|h| h.hold_ms = Some(*ms));
            }
        }
        for (_, hold) in &holds.live {
            for line in &hold.items {
                if let Some(p) = self.get(line.product_id) {
                    p.update_holds(|h| h.held = h.held.saturating_add(u64::from(line.qty)));
                }
            }
        }
    }

    /// Up to `limit` products with ids above `after`, in id order, and
    /// whether more follow.
    pub(crate) fn page(&self, after: Option<ProductId>, limit: usize) -> (Vec<ProductInfo>, bool) {
        // Product `id` is at index `id - 1`: the first above `after` is at index `after`.
        let count = self.products.count();
        let start = after.map_or(0, |id| usize::try_from(id.0).unwrap_or(usize::MAX));
        let present = |index: usize| self.products.get(index).and_then(Option::as_ref);
        let mut page = Vec::new();
        let mut index = start;
        let default = self.default_hold_ms();
        while index < count && page.len() < limit {
            if let Some(product) = present(index) {
                page.push(product.info(default));
            }
            index += 1;
        }
        let more = (index..count).any(|index| present(index).is_some());
        (page, more)
    }

    /// Every product with its order counts, in id order.
    pub(crate) fn stats(&self) -> Vec<ProductStats> {
        let default = self.default_hold_ms();
        self.iter().map(|p| p.stats(default)).collect()
    }

    fn iter(&self) -> impl Iterator<Item = &ProductLive> {
        self.products.iter().filter_map(|(_, p)| p.as_ref())
    }

    /// Adds a product at its id's place (called by the journal thread only).
    fn insert(&self, product: ProductLive) {
        let Some(index) = product
            .id
            .0
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
        else {
            tracing::error!(id = %product.id, "a product id must be at least 1");
            return;
        };
        let count = self.products.count();
        if index < count {
            tracing::error!(id = %product.id, "product created twice; keeping the first");
            return;
        }
        if index - count > MAX_ID_GAP {
            tracing::error!(id = %product.id, "product id far beyond the last one; ignored");
            return;
        }
        while self.products.count() < index {
            self.products.push(None);
        }
        self.products.push(Some(product));
    }

    /// Applies a durable event.
    pub(crate) fn apply(&self, event: &Event) {
        match event {
            Event::ProductCreated {
                id,
                name,
                price_cents,
                stock,
                rules,
            } => {
                let product = ProductLive::new(*id, name.clone(), *price_cents, *stock, *rules);
                self.insert(product);
            }
            Event::Restocked { product_id, qty } => self.update(*product_id, |f| {
                f.restocked = f.restocked.saturating_add(signed_delta(0, *qty));
                f.stock = f.stock.saturating_add(*qty);
            }),
            Event::StockSet {
                product_id, stock, ..
            } => self.update(*product_id, |f| {
                f.restocked = f.restocked.saturating_add(signed_delta(f.stock, *stock));
                f.stock = *stock;
            }),
            Event::RulesSet { product_id, rules } => {
                if let Some(p) = self.get(*product_id) {
                    p.set_rules(*rules);
                }
            }
            Event::OrderDecided(order) => match order.status {
                OrderStatus::Confirmed => {
                    for line in &order.items {
                        if let Some(p) = self.get(line.product_id) {
                            let qty = u64::from(line.qty);
                            p.update(|f| {
                                f.confirmed_qty = f.confirmed_qty.saturating_add(qty);
                                f.stock = f.stock.saturating_sub(qty);
                                f.orders_confirmed += 1;
                            });
                        }
                    }
                }
                OrderStatus::Rejected { product_id, .. } => {
                    self.update(product_id, |f| f.orders_rejected += 1);
                }
                OrderStatus::Held { .. } => self.move_units(&order.items, Move::Hold),
                OrderStatus::Pending
                | OrderStatus::Cancelled
                | OrderStatus::Expired
                | OrderStatus::Released => {}
            },
            Event::HeldSeeded { .. } => {}
            Event::HoldPaid { items, .. } => self.move_units(items, Move::Pay),
            Event::HoldReleased { items, .. } | Event::HoldExpired { items, .. } => {
                self.move_units(items, Move::Unhold);
            }
            Event::HoldTimeSet {
                product_id,
                hold_ms,
            } => {
                if let Some(p) = self.get(*product_id) {
                    p.update_holds(|h| h.hold_ms = *hold_ms);
                }
            }
            Event::OrderCancelled { items, .. } => {
                for line in items {
                    if let Some(p) = self.get(line.product_id) {
                        let qty = u64::from(line.qty);
                        p.update(|f| {
                            f.confirmed_qty = f.confirmed_qty.saturating_sub(qty);
                            f.stock = f.stock.saturating_add(qty);
                            f.orders_cancelled += 1;
                        });
                    }
                }
            }
        }
    }

    /// Moves a hold's units: into holds (out of stock), from holds into
    /// confirmed orders, or from holds back to stock.
    fn move_units(&self, items: &[flashsale_protocol::OrderLine], how: Move) {
        for line in items {
            let Some(p) = self.get(line.product_id) else {
                continue;
            };
            let qty = u64::from(line.qty);
            // Under the figures' lock, so a reader sees stock and held
            // units of the same batch.
            p.update(|f| {
                p.update_holds(|h| {
                    h.held = match how {
                        Move::Hold => h.held.saturating_add(qty),
                        Move::Pay | Move::Unhold => h.held.saturating_sub(qty),
                    };
                });
                match how {
                    Move::Hold => f.stock = f.stock.saturating_sub(qty),
                    Move::Pay => {
                        f.confirmed_qty = f.confirmed_qty.saturating_add(qty);
                        f.orders_confirmed += 1;
                    }
                    Move::Unhold => f.stock = f.stock.saturating_add(qty),
                }
            });
        }
    }

    fn update(&self, id: ProductId, change: impl FnOnce(&mut Figures)) {
        if let Some(p) = self.get(id) {
            p.update(change);
        }
    }

    /// Every product as a checkpoint stores it.
    pub(crate) fn records(&self) -> Vec<ProductRecord> {
        self.iter()
            .map(|p| ProductRecord {
                id: p.id,
                name: p.name.clone(),
                price_cents: p.price_cents,
                initial_stock: p.initial_stock,
                figures: *p.lock(),
            })
            .collect()
    }

    /// Adds `records` (a checkpoint's) to an empty catalog.
    pub(crate) fn load(&self, records: Vec<ProductRecord>) {
        for record in records {
            let live = ProductLive::new(
                record.id,
                record.name,
                record.price_cents,
                record.initial_stock,
                record.figures.rules,
            );
            live.update(|f| *f = record.figures);
            self.insert(live);
        }
    }
}

/// A product as a checkpoint stores it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ProductRecord {
    id: ProductId,
    name: String,
    price_cents: u64,
    initial_stock: u64,
    figures: Figures,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(id: u64) -> Event {
        Event::ProductCreated {
            id: ProductId(id),
            name: format!("product {id}"),
            price_cents: 100,
            stock: 10,
            rules: SaleRules::default(),
        }
    }

    #[test]
    fn products_are_found_by_id_and_unknown_ids_find_nothing() {
        let catalog = Catalog::default();
        for id in 1..=3 {
            catalog.apply(&created(id));
        }
        assert_eq!(catalog.get(ProductId(2)).map(|p| p.id), Some(ProductId(2)));
        for unknown in [0, 4, u64::MAX / 2, u64::MAX] {
            assert!(catalog.get(ProductId(unknown)).is_none(), "{unknown}");
        }
        let ids: Vec<u64> = catalog.list().iter().map(|p| p.id.0).collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn a_gap_in_ids_is_skipped_and_a_second_creation_or_a_far_id_changes_nothing() {
        let catalog = Catalog::default();
        catalog.apply(&created(1));
        catalog.apply(&created(3));
        catalog.apply(&Event::Restocked {
            product_id: ProductId(3),
            qty: 5,
        });
        catalog.apply(&created(3));
        catalog.apply(&created(1 << 40));
        assert!(catalog.get(ProductId(1 << 40)).is_none());
        assert!(catalog.get(ProductId(2)).is_none());
        assert_eq!(catalog.get(ProductId(3)).map(ProductLive::stock), Some(15));
        let ids: Vec<u64> = catalog.list().iter().map(|p| p.id.0).collect();
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn refusals_counted_on_many_threads_add_up() {
        let catalog = Catalog::default();
        catalog.apply(&created(1));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let product = catalog.get(ProductId(1)).expect("created");
                    for _ in 0..1000 {
                        product.count_refusal();
                    }
                });
            }
        });
        let stats = catalog.stats();
        assert_eq!(stats[0].refused_at_intake, 8000);
    }
}

/// Where [`Catalog::move_units`] moves a hold's units.
#[derive(Debug, Clone, Copy)]
enum Move {
    Hold,
    Pay,
    Unhold,
}
