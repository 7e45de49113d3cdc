//! The published product catalog: what intake and readers see.
//!
//! Only the journal thread writes it, after a batch is durable, so every
//! figure here is backed by disk. Intake answers sold-out from it without
//! queueing or writing anything.

use crate::book::Event;
use flashsale_protocol::{OrderStatus, ProductId, ProductInfo};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One product's live figures.
#[derive(Debug)]
pub struct ProductLive {
    /// The product.
    pub id: ProductId,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Stock at creation.
    pub initial_stock: u64,
    /// Units left, read by intake on every pay without a lock.
    stock: AtomicU64,
    /// The figures that change together, so a reader never sees them half-updated.
    figures: Mutex<Figures>,
}

/// Figures updated together by the journal thread.
#[derive(Debug, Clone, Copy)]
struct Figures {
    stock: u64,
    restocked: u64,
    confirmed_qty: u64,
}

impl ProductLive {
    /// Units left as of the last durable batch.
    pub fn stock(&self) -> u64 {
        self.stock.load(Ordering::Acquire)
    }

    /// A consistent snapshot for the wire.
    pub fn info(&self) -> ProductInfo {
        let figures = *self.lock();
        ProductInfo {
            id: self.id,
            name: self.name.clone(),
            price_cents: self.price_cents,
            stock: figures.stock,
            initial_stock: self.initial_stock,
            restocked: i64::try_from(figures.restocked).unwrap_or(i64::MAX),
            confirmed_qty: figures.confirmed_qty,
            rules: flashsale_protocol::SaleRules::default(),
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
}

/// All products, by id.
#[derive(Debug, Default)]
pub struct Catalog {
    products: RwLock<BTreeMap<ProductId, Arc<ProductLive>>>,
}

impl Catalog {
    /// One product.
    pub fn get(&self, id: ProductId) -> Option<Arc<ProductLive>> {
        self.read().get(&id).cloned()
    }

    /// Every product in id order.
    pub fn list(&self) -> Vec<ProductInfo> {
        self.read().values().map(|p| p.info()).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ProductId, Arc<ProductLive>>> {
        // A poisoned lock only means a panic elsewhere; the map itself is always consistent.
        self.products.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a durable event.
    pub fn apply(&self, event: &Event) {
        match event {
            Event::ProductCreated {
                id,
                name,
                price_cents,
                stock,
            } => {
                let product = Arc::new(ProductLive {
                    id: *id,
                    name: name.clone(),
                    price_cents: *price_cents,
                    initial_stock: *stock,
                    stock: AtomicU64::new(*stock),
                    figures: Mutex::new(Figures {
                        stock: *stock,
                        restocked: 0,
                        confirmed_qty: 0,
                    }),
                });
                self.products
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*id, product);
            }
            Event::Restocked { product_id, qty } => {
                if let Some(p) = self.get(*product_id) {
                    p.update(|f| {
                        f.restocked = f.restocked.saturating_add(*qty);
                        f.stock = f.stock.saturating_add(*qty);
                    });
                }
            }
            Event::OrderDecided(order) if order.status == OrderStatus::Confirmed => {
                let products = self.read();
                for line in &order.items {
                    if let Some(p) = products.get(&line.product_id) {
                        let qty = u64::from(line.qty);
                        p.update(|f| {
                            f.confirmed_qty = f.confirmed_qty.saturating_add(qty);
                            f.stock = f.stock.saturating_sub(qty);
                        });
                    }
                }
            }
            Event::OrderDecided(_) => {}
        }
    }
}
