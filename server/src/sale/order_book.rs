//! The published order book: every durable order, for `GetOrder`,
//! `ListOrders`, `QueryOrders` and idempotent retries.
//!
//! Orders live in the history tables ([`crate::sale::tables`]), which the
//! materialiser ([`crate::sale::materialise`]) fills from the journal off
//! the hot path. The orders of journal records it has not applied yet are
//! *pending*: held in memory here, from the moment their batch is durable
//! until the materialiser has written them. Every read looks at the pending
//! orders first, then at the tables, so it sees every acknowledged order,
//! materialised or not. The materialiser writes the tables before it
//! removes their orders from pending, so an order is always in one of them.

use crate::error::{ApiError, ApiResult, ServerError};
use crate::sale::book::Event;
use crate::sale::keys::KeyIndex;
use crate::sale::tables::{Index, Tables};
use crate::store::{now_ms, Store};
use flashsale_protocol::{
    OrderId, OrderInfo, OrderLine, OrderSource, OrderStatus, ProductId, Reply, StatusFilter, UserId,
};
use hashbrown::{HashMap, HashSet};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::RandomState;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// Most orders one [`OrderBook::query`] examines, so an operator's filtered
/// listing stays short.
pub(crate) const MAX_QUERY_SCAN: usize = 100_000;

/// Orders published but not yet in the tables. Bound:
/// `Config::max_unmaterialised` (the journal waits beyond it); eviction:
/// [`OrderBook::materialised_through`].
#[derive(Debug, Default)]
struct Pending {
    /// The latest version of each pending order and the journal sequence of
    /// the record that made it so.
    by_id: HashMap<OrderId, (OrderInfo, u64)>,
    /// (journal sequence, order) per change, oldest first, for eviction.
    by_seq: VecDeque<(u64, OrderId)>,
    /// Each buyer's pending order ids.
    by_user: HashMap<UserId, Ids>,
    /// Each partner's buyers' pending order ids.
    by_partner: HashMap<UserId, Ids>,
    /// Keys chosen by clients (SipHash with random keys): the pending order
    /// each key made.
    by_key: HashMap<(UserId, Uuid), OrderId, RandomState>,
}

impl Pending {
    fn put(&mut self, order: &OrderInfo, seq: u64) {
        self.by_seq.push_back((seq, order.id));
        add_id(self.by_user.entry(order.user_id).or_default(), order.id);
        if let Some(partner) = &order.partner {
            add_id(
                self.by_partner.entry(partner.partner_id).or_default(),
                order.id,
            );
        }
        self.by_id.insert(order.id, (order.clone(), seq));
    }

    /// Forgets up to `most` of the orders whose latest change is at or
    /// before `seq`; true when there may be more.
    fn forget_some(&mut self, seq: u64, most: usize) -> bool {
        for _ in 0..most {
            let Some(&(at, id)) = self.by_seq.front() else {
                return false;
            };
            if at > seq {
                return false;
            }
            self.by_seq.pop_front();
            let Some((order, latest)) = self.by_id.get(&id) else {
                continue;
            };
            if *latest > seq {
                continue;
            }
            let (user, key, partner) = (
                order.user_id,
                order.idempotency_key,
                order.partner.as_ref().map(|p| p.partner_id),
            );
            self.by_id.remove(&id);
            remove_id(&mut self.by_user, user, id);
            if let Some(partner) = partner {
                remove_id(&mut self.by_partner, partner, id);
            }
            if self.by_key.get(&(user, key)) == Some(&id) {
                self.by_key.remove(&(user, key));
            }
        }
        true
    }
}

/// Order ids read from the tables at once by a long read (a late limit's
/// holdings, an operator's query).
const READ_PAGE: usize = 4096;

/// Pending orders forgotten under one hold of the lock.
const FORGET_PER_LOCK: usize = 1024;

/// One owner's pending order ids, ascending. A deque: they are forgotten
/// oldest first, and one partner may have every pending order (removing
/// from the front of a vector moved all the others: the materialiser spent
/// 92 % of its time in `memmove` with 500 000 pending).
type Ids = VecDeque<OrderId>;

/// Adds `id` to `ids`, keeping them ascending and each once (a new order
/// comes last; a cancelled older one goes to its place).
fn add_id(ids: &mut Ids, id: OrderId) {
    match ids.back() {
        None => ids.push_back(id),
        Some(last) if *last < id => ids.push_back(id),
        Some(_) => {
            if let Err(at) = ids.binary_search(&id) {
                ids.insert(at, id);
            }
        }
    }
}

fn remove_id(map: &mut HashMap<UserId, Ids>, owner: UserId, id: OrderId) {
    if let Some(ids) = map.get_mut(&owner) {
        if ids.front() == Some(&id) {
            ids.pop_front();
        } else if let Ok(at) = ids.binary_search(&id) {
            ids.remove(at);
        }
        if ids.is_empty() {
            map.remove(&owner);
        }
    }
}

/// Order counts since the data dir was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct OrderCounts {
    /// Orders confirmed (cancelled ones included).
    pub(crate) confirmed: u64,
    /// Orders rejected by the sequencer.
    pub(crate) rejected: u64,
    /// Orders cancelled by operators.
    pub(crate) cancelled: u64,
}

impl OrderCounts {
    /// Counts the orders of `events`.
    pub(crate) fn add(&mut self, events: &[Event]) {
        for event in events {
            match event {
                Event::OrderDecided(order) => match order.status {
                    OrderStatus::Confirmed => self.confirmed += 1,
                    OrderStatus::Rejected { .. } => self.rejected += 1,
                    OrderStatus::Pending
                    | OrderStatus::Cancelled
                    | OrderStatus::Held { .. }
                    | OrderStatus::Expired
                    | OrderStatus::Released => {}
                },
                // A paid hold is a confirmed order from then on.
                Event::HoldPaid { .. } => self.confirmed += 1,
                Event::OrderCancelled { .. } => self.cancelled += 1,
                _ => {}
            }
        }
    }
}

/// Buyers' holdings of tracked products (those with, or once with, a
/// purchase limit), for intake's limit check. Bound: one entry per (buyer,
/// tracked product) with a confirmed line.
#[derive(Debug, Default)]
struct Holdings {
    tracked: HashSet<ProductId>,
    held: HashMap<(UserId, ProductId), u64>,
}

impl Holdings {
    fn change(&mut self, user: UserId, items: &[OrderLine], add: bool) {
        for line in items
            .iter()
            .filter(|l| self.tracked.contains(&l.product_id))
        {
            let key = (user, line.product_id);
            let qty = u64::from(line.qty);
            let held = self.held.entry(key).or_default();
            *held = if add {
                held.saturating_add(qty)
            } else {
                held.saturating_sub(qty)
            };
            if *held == 0 {
                self.held.remove(&key);
            }
        }
    }

    fn apply(&mut self, event: &Event, cancelled: Option<&OrderInfo>) {
        match event {
            Event::ProductCreated { id, rules, .. }
            | Event::RulesSet {
                product_id: id,
                rules,
            } if rules.max_per_buyer.is_some() => {
                self.tracked.insert(*id);
            }
            // The limit is gone: so are the holdings (as in the book).
            Event::RulesSet { product_id, .. } if self.tracked.remove(product_id) => {
                self.held.retain(|(_, product), _| product != product_id);
            }
            Event::HeldSeeded { product_id, held } => {
                self.tracked.insert(*product_id);
                for (user, qty) in held.iter().filter(|(_, qty)| *qty > 0) {
                    *self.held.entry((*user, *product_id)).or_default() += qty;
                }
            }
            // Held units count towards the limit as confirmed ones do.
            Event::OrderDecided(order)
                if matches!(
                    order.status,
                    OrderStatus::Confirmed | OrderStatus::Held { .. }
                ) =>
            {
                self.change(order.user_id, &order.items, true);
            }
            Event::OrderCancelled { user_id, items, .. } if cancelled.is_some() => {
                self.change(*user_id, items, false);
            }
            Event::HoldReleased { user_id, items, .. }
            | Event::HoldExpired { user_id, items, .. } => {
                self.change(*user_id, items, false);
            }
            _ => {}
        }
    }
}

/// Durable orders, readable from any task.
#[derive(Debug)]
pub(crate) struct OrderBook {
    pending: RwLock<Pending>,
    tables: Tables,
    keys: Arc<KeyIndex>,
    holdings: RwLock<Holdings>,
    counts: Mutex<OrderCounts>,
    /// Signalled when pending orders are forgotten (the journal may wait for it).
    drained: (Mutex<()>, Condvar),
}

fn internal(e: &ServerError) -> ApiError {
    ApiError::internal(format!("reading the order tables failed: {e}"))
}

impl OrderBook {
    /// An order book over the tables of `store` and the key index.
    pub(crate) fn new(store: &Store, keys: Arc<KeyIndex>) -> Self {
        Self {
            pending: RwLock::default(),
            tables: Tables::new(store),
            keys,
            holdings: RwLock::default(),
            counts: Mutex::default(),
            drained: (Mutex::new(()), Condvar::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pending> {
        // A poisoned lock only means a panic elsewhere; the maps stay consistent.
        self.pending.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pending> {
        self.pending.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The history tables (the materialiser writes them).
    pub(crate) fn tables(&self) -> &Tables {
        &self.tables
    }

    /// One order from the tables.
    fn stored(&self, id: OrderId) -> Result<Option<OrderInfo>, ServerError> {
        self.tables.order(id)
    }

    /// One order, whoever owns it.
    ///
    /// # Errors
    /// `Internal` when the tables cannot be read.
    pub(crate) fn get(&self, id: OrderId) -> ApiResult<Option<OrderInfo>> {
        self.current(id).map_err(|e| internal(&e))
    }

    /// One order as it stands: the pending version, else the stored one.
    ///
    /// # Errors
    /// Storage failure or a corrupt row.
    pub(crate) fn current(&self, id: OrderId) -> Result<Option<OrderInfo>, ServerError> {
        if let Some((order, _)) = self.read().by_id.get(&id) {
            return Ok(Some(order.clone()));
        }
        self.stored(id)
    }

    /// The buyer's order for a pay intent inside the key retention window,
    /// if there is one.
    ///
    /// # Errors
    /// `Internal` when the tables cannot be read.
    pub(crate) fn find_by_key(&self, user: UserId, key: Uuid) -> ApiResult<Option<OrderInfo>> {
        let now = now_ms();
        let pending = {
            let pending = self.read();
            pending
                .by_key
                .get(&(user, key))
                .and_then(|id| pending.by_id.get(id))
                .map(|(order, _)| order.clone())
        };
        if let Some(order) = pending {
            return Ok(self
                .keys
                .within_window(order.decided_at_ms, now)
                .then_some(order));
        }
        match self.keys.lookup(user, key, now).map_err(|e| internal(&e))? {
            Some(entry) => self.get(entry.order_id),
            None => Ok(None),
        }
    }

    /// The answer to a pay intent refused with `refusal`: the order the
    /// intent already made if it made one (a retry of an intent whose order
    /// sold the product out or emptied the cart gets its order, not the
    /// refusal), else the refusal. The one place a retry is looked up.
    /// A key that names an order of another request (`source`, `items`; see
    /// [`crate::sale::book::same_request`]) gets `IdempotencyKeyReused`.
    pub(crate) fn retry_or(
        &self,
        user: UserId,
        key: Uuid,
        request: (OrderSource, &[OrderLine]),
        refusal: ApiError,
    ) -> ApiResult<Reply> {
        match self.find_by_key(user, key)? {
            Some(order) if crate::sale::book::same_request(&order, request.0, request.1) => {
                Ok(Reply::Accepted(order))
            }
            Some(_) => Err(ApiError::key_reused()),
            None => Err(refusal),
        }
    }

    /// Orders of the ids from `stored` (a table's page) and `pending`
    /// (pending ids of the same owner) merged in id order, at most `limit`.
    fn merged(
        &self,
        stored: Vec<OrderId>,
        pending: Vec<OrderId>,
        limit: usize,
    ) -> ApiResult<Vec<OrderInfo>> {
        let mut ids: BTreeSet<OrderId> = stored.into_iter().collect();
        ids.extend(pending);
        let mut out = Vec::new();
        for id in ids.into_iter().take(limit) {
            if let Some(order) = self.get(id)? {
                out.push(order);
            }
        }
        Ok(out)
    }

    fn pending_page(
        map: &HashMap<UserId, Ids>,
        owner: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> Vec<OrderId> {
        map.get(&owner).map_or_else(Vec::new, |ids| {
            let start = after.map_or(0, |after| ids.partition_point(|id| *id <= after));
            ids.range(start..).take(limit).copied().collect()
        })
    }

    /// A buyer's orders with ids above `after`, at most `limit`.
    ///
    /// # Errors
    /// `Internal` when the tables cannot be read.
    pub(crate) fn list_for_user(
        &self,
        user: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> ApiResult<Vec<OrderInfo>> {
        let pending = Self::pending_page(&self.read().by_user, user, after, limit);
        let stored = self
            .tables
            .page(Index::Buyer, user.0, after, limit)
            .map_err(|e| internal(&e))?;
        self.merged(stored, pending, limit)
    }

    /// The orders of all a partner's buyers with ids above `after`, at most `limit`.
    ///
    /// # Errors
    /// `Internal` when the tables cannot be read.
    pub(crate) fn list_for_partner(
        &self,
        partner: UserId,
        after: Option<OrderId>,
        limit: usize,
    ) -> ApiResult<Vec<OrderInfo>> {
        let pending = Self::pending_page(&self.read().by_partner, partner, after, limit);
        let stored = self
            .tables
            .page(Index::Partner, partner.0, after, limit)
            .map_err(|e| internal(&e))?;
        self.merged(stored, pending, limit)
    }

    /// Order counts since the data dir was created.
    pub(crate) fn counts(&self) -> OrderCounts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Units of `product` that `user` holds in durable confirmed,
    /// uncancelled orders: one lookup; only asked for products with a
    /// purchase limit (which are tracked).
    pub(crate) fn held(&self, user: UserId, product: ProductId) -> u64 {
        let holdings = self.holdings.read().unwrap_or_else(|e| e.into_inner());
        holdings.held.get(&(user, product)).copied().unwrap_or(0)
    }

    /// Every buyer's orders with ids above `after` that have a line of
    /// `product` (if given) and are in `status` (if given): at most `limit`
    /// of them, examining at most [`MAX_QUERY_SCAN`] orders. Also returns the
    /// id to continue after, `None` when no order is left to examine.
    ///
    /// # Errors
    /// `Internal` when the tables cannot be read.
    pub(crate) fn query(
        &self,
        after: Option<OrderId>,
        limit: usize,
        product: Option<ProductId>,
        status: Option<StatusFilter>,
    ) -> ApiResult<(Vec<OrderInfo>, Option<OrderId>)> {
        let candidates = self.candidates(after, product).map_err(|e| internal(&e))?;
        let more = candidates.len() > MAX_QUERY_SCAN;
        let mut found = Vec::new();
        let mut last_examined = None;
        let examined = &candidates[..candidates.len().min(MAX_QUERY_SCAN)];
        for page in examined.chunks(READ_PAGE) {
            let mut orders = self.many(page).map_err(|e| internal(&e))?;
            for &id in page {
                if found.len() >= limit {
                    return Ok((found, last_examined.or(after)));
                }
                last_examined = Some(id);
                let Some(order) = orders.remove(&id) else {
                    continue;
                };
                let product_matches =
                    product.is_none_or(|p| order.items.iter().any(|l| l.product_id == p));
                if product_matches && status.is_none_or(|s| s.matches(order.status)) {
                    found.push(order);
                }
            }
        }
        Ok((found, if more { last_examined.or(after) } else { None }))
    }

    /// The orders of `ids` (ascending) as they stand: pending versions, else
    /// the stored ones (each table chunk read once).
    fn many(&self, ids: &[OrderId]) -> Result<HashMap<OrderId, OrderInfo>, ServerError> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut stored = Vec::new();
        {
            let pending = self.read();
            for &id in ids {
                match pending.by_id.get(&id) {
                    Some((order, _)) => {
                        out.insert(id, order.clone());
                    }
                    None => stored.push(id),
                }
            }
        }
        for order in self.tables.orders(&stored)? {
            out.entry(order.id).or_insert(order);
        }
        Ok(out)
    }

    /// Order ids above `after` (with a line of `product`, if given), pending
    /// and stored, in order: at most [`MAX_QUERY_SCAN`] + 1 of them.
    fn candidates(
        &self,
        after: Option<OrderId>,
        product: Option<ProductId>,
    ) -> Result<Vec<OrderId>, ServerError> {
        let cap = MAX_QUERY_SCAN + 1;
        let mut ids: BTreeSet<OrderId> = BTreeSet::new();
        {
            let pending = self.read();
            ids.extend(
                pending
                    .by_id
                    .iter()
                    .filter(|(id, (o, _))| {
                        after.is_none_or(|after| **id > after)
                            && product.is_none_or(|p| o.items.iter().any(|l| l.product_id == p))
                    })
                    .map(|(id, _)| *id),
            );
            // The lowest ids only: the rest would be cut below anyway.
            while ids.len() > cap {
                ids.pop_last();
            }
        }
        let stored = match product {
            Some(p) => self.tables.page(Index::Product, p.0, after, cap)?,
            None => self.tables.ids_after(after, cap)?,
        };
        ids.extend(stored);
        Ok(ids.into_iter().take(cap).collect())
    }

    /// Units each buyer holds of `product` in confirmed, uncancelled orders,
    /// read from the pending orders and the tables. Only exact when every
    /// decided order is published (the sequencer waits for that).
    ///
    /// # Errors
    /// Storage failure.
    pub(crate) fn holdings_of(
        &self,
        product: ProductId,
    ) -> Result<Vec<(UserId, u64)>, ServerError> {
        let mut held: BTreeMap<UserId, u64> = BTreeMap::new();
        // Held units count towards a limit as confirmed ones do.
        let mut count = |order: &OrderInfo| {
            if !matches!(
                order.status,
                OrderStatus::Confirmed | OrderStatus::Held { .. }
            ) {
                return;
            }
            for line in order.items.iter().filter(|l| l.product_id == product) {
                *held.entry(order.user_id).or_default() += u64::from(line.qty);
            }
        };
        let pending_ids: HashSet<OrderId> = {
            let pending = self.read();
            for (order, _) in pending.by_id.values() {
                count(order);
            }
            pending.by_id.keys().copied().collect()
        };
        let mut after = None;
        loop {
            let ids = self
                .tables
                .page(Index::Product, product.0, after, READ_PAGE)?;
            let Some(&last) = ids.last() else {
                break;
            };
            after = Some(last);
            let stored: Vec<OrderId> = ids
                .into_iter()
                .filter(|id| !pending_ids.contains(id))
                .collect();
            for order in self.tables.orders(&stored)? {
                count(&order);
            }
        }
        Ok(held.into_iter().collect())
    }

    /// Sets the counts and the holdings of tracked products (recovery).
    pub(crate) fn restore(
        &self,
        counts: OrderCounts,
        tracked: impl IntoIterator<Item = ProductId>,
        held: impl IntoIterator<Item = ((UserId, ProductId), u64)>,
    ) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner()) = counts;
        let mut holdings = self.holdings.write().unwrap_or_else(|e| e.into_inner());
        holdings.tracked = tracked.into_iter().collect();
        holdings.held = held.into_iter().collect();
    }

    /// Publishes the events of the durable journal record(s) ending at
    /// sequence `seq` (pending until materialised), under one lock.
    /// Returns nothing: a cancelled order missing from both the pending
    /// orders and the tables is logged (it cannot be: the sequencer
    /// cancels only orders it read).
    pub(crate) fn apply(&self, events: &[Event], seq: u64) {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(events);
        let mut holdings = self.holdings.write().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.write();
        for event in events {
            match event {
                Event::OrderDecided(order) => {
                    holdings.apply(event, None);
                    pending
                        .by_key
                        .insert((order.user_id, order.idempotency_key), order.id);
                    pending.put(order, seq);
                }
                Event::OrderCancelled { order_id, .. } => {
                    let cancelled = self.change_status(
                        &mut pending,
                        *order_id,
                        seq,
                        |s| s == OrderStatus::Confirmed,
                        OrderStatus::Cancelled,
                    );
                    holdings.apply(event, cancelled.as_ref());
                }
                Event::HoldPaid { .. } | Event::HoldReleased { .. } | Event::HoldExpired { .. } => {
                    if let Some((order_id, to)) = event.hold_end() {
                        let held = |s| matches!(s, OrderStatus::Held { .. });
                        self.change_status(&mut pending, order_id, seq, held, to);
                    }
                    holdings.apply(event, None);
                }
                _ => holdings.apply(event, None),
            }
        }
    }

    /// Moves an order from a status `from` accepts to `to` in the pending
    /// orders (copying it from the tables if it is there only); returns it
    /// when it changed.
    fn change_status(
        &self,
        pending: &mut Pending,
        id: OrderId,
        seq: u64,
        from: impl Fn(OrderStatus) -> bool,
        to: OrderStatus,
    ) -> Option<OrderInfo> {
        let found = match pending.by_id.get(&id) {
            Some((order, _)) => Ok(Some(order.clone())),
            None => self.stored(id),
        };
        let current = match found {
            Ok(Some(order)) => order,
            Ok(None) => {
                tracing::error!(order = %id, "a changed order is in neither the pending orders nor the tables");
                return None;
            }
            Err(e) => {
                tracing::error!(order = %id, error = %e, "could not read a changed order");
                return None;
            }
        };
        if !from(current.status) {
            return None;
        }
        let mut order = current;
        order.status = to;
        pending.put(&order, seq);
        Some(order)
    }

    /// Orders published and not yet materialised.
    pub(crate) fn pending_len(&self) -> usize {
        self.read().by_id.len()
    }

    /// The materialiser wrote every record up to `seq`: their orders leave
    /// the pending set.
    pub(crate) fn materialised_through(&self, seq: u64) {
        // In short holds of the lock: readers and the journal wait for it.
        while self.write().forget_some(seq, FORGET_PER_LOCK) {}
        let (lock, signal) = &self.drained;
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        signal.notify_all();
    }

    /// Waits (on the journal thread) until fewer than `max` orders are
    /// pending, or `give_up` says to stop waiting.
    pub(crate) fn wait_below(&self, max: usize, give_up: impl Fn() -> bool) {
        let (lock, signal) = &self.drained;
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.pending_len() >= max && !give_up() {
            guard = signal
                .wait_timeout(guard, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
