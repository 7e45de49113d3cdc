//! The published product catalog: what intake and readers see.
//!
//! Only the journal thread writes it, after a batch is durable, so every
//! figure here is backed by disk. Intake answers sold-out from it without
//! queueing or writing anything.

use crate::book::Event;
use flashsale_protocol::{OrderStatus, ProductId, ProductInfo};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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
    stock: AtomicU64,
    restocked: AtomicU64,
    confirmed_qty: AtomicU64,
}

impl ProductLive {
    /// Units left as of the last durable batch.
    pub fn stock(&self) -> u64 {
        self.stock.load(Ordering::Acquire)
    }

    /// A snapshot for the wire.
    pub fn info(&self) -> ProductInfo {
        ProductInfo {
            id: self.id,
            name: self.name.clone(),
            price_cents: self.price_cents,
            stock: self.stock(),
            initial_stock: self.initial_stock,
            restocked: self.restocked.load(Ordering::Acquire),
            confirmed_qty: self.confirmed_qty.load(Ordering::Acquire),
        }
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
                    restocked: AtomicU64::new(0),
                    confirmed_qty: AtomicU64::new(0),
                });
                self.products
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*id, product);
            }
            Event::Restocked { product_id, qty } => {
                if let Some(p) = self.get(*product_id) {
                    p.restocked.fetch_add(*qty, Ordering::AcqRel);
                    p.stock.fetch_add(*qty, Ordering::AcqRel);
                }
            }
            Event::OrderDecided(order) if order.status == OrderStatus::Confirmed => {
                let products = self.read();
                for line in &order.items {
                    if let Some(p) = products.get(&line.product_id) {
                        p.confirmed_qty
                            .fetch_add(u64::from(line.qty), Ordering::AcqRel);
                        p.stock.fetch_sub(u64::from(line.qty), Ordering::AcqRel);
                    }
                }
            }
            Event::OrderDecided(_) => {}
        }
    }
}
