//! The order history on disk: orders packed by id, and per-owner indexes
//! (buyer, partner, product) packed in chunks. Written only by the
//! materialiser (and the schema-3 migration); read by the order book and
//! the key index from any thread.
//!
//! sled splits a leaf past 16 entries and keeps every page's location in
//! memory, so one entry per order and per index made memory, start time
//! and write cost grow with history (measured: 1 GB RSS and 12 600 orders/s
//! at 1 M orders, falling). Packing keeps the entry count ~30× lower:
//! - `order_chunks`: the first order id of a chunk (u64 BE) → up to
//!   [`ORDERS_PER_CHUNK`] orders in id order, a bincode `Vec<OrderInfo>` of
//!   at most [`CHUNK_BYTES`] (sled rewrites a whole leaf, up to 17 entries,
//!   as one log item, and an item over a quarter of its 512 KiB segment goes
//!   to a blob file its flush does not fsync: 17 × 6 KiB stays under it);
//! - `buyer_orders`, `partner_orders`, `product_orders`: owner id (u64 BE)
//!   then the chunk's first order id (u64 BE) → the chunk's number among
//!   its owner's chunks (u32 BE), then its entries in id order. A buyer
//!   entry is the order id, the idempotency key and the decision time
//!   (32 bytes), so a retry is found without another table; the other
//!   indexes hold order ids (8 bytes).
//! - `order_keys`: keys of buyers with more than [`KEY_SCAN_CHUNKS`]
//!   chunks (their later orders only), so finding a key reads at most
//!   [`KEY_SCAN_CHUNKS`] chunks and one entry, whoever asks.
//!
//! Every write is idempotent, so replaying journal records after a crash
//! changes nothing: an order replaces the one with its id; an index skips
//! entries at or below its owner's newest (an owner's orders arrive in id
//! order).

use crate::error::ServerError;
use crate::sale::keys::{table_key, KeyEntry};
use crate::store::{decode, encode, Store};
use flashsale_protocol::{OrderId, OrderInfo, UserId};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Orders per `order_chunks` entry, at most.
pub(crate) const ORDERS_PER_CHUNK: usize = 32;

/// Encoded bytes of an `order_chunks` entry, at most (an order alone is
/// at most ~1.3 KiB: 64 lines and a 128-byte buyer reference).
pub(crate) const CHUNK_BYTES: usize = 6 * 1024;

/// Chunks of one buyer read to find a key; later chunks' keys also go to
/// `order_keys`.
pub(crate) const KEY_SCAN_CHUNKS: u32 = 64;

/// Bytes before a chunk's entries: its number among its owner's chunks.
const HEADER: usize = 4;

/// One of the three owner indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    /// By buyer: entries carry the idempotency key and decision time.
    Buyer,
    /// By partner.
    Partner,
    /// By product (one entry per order with a line of it).
    Product,
}

impl Index {
    fn entry_len(self) -> usize {
        match self {
            Self::Buyer => 32,
            Self::Partner | Self::Product => 8,
        }
    }

    fn max_entries(self) -> usize {
        match self {
            Self::Buyer | Self::Product => 16,
            Self::Partner => 32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Buyer => "buyer_orders",
            Self::Partner => "partner_orders",
            Self::Product => "product_orders",
        }
    }
}

/// One index entry: the order, and for the buyer index its key and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The order.
    pub(crate) id: OrderId,
    /// Its idempotency key (buyer index only; nil elsewhere).
    pub(crate) key: Uuid,
    /// When it was decided, ms (buyer index only; 0 elsewhere).
    pub(crate) decided_at_ms: u64,
    /// The request's fingerprint: set when written from an order, not
    /// stored (0 when read).
    fingerprint: u64,
}

impl Entry {
    fn of(order: &OrderInfo) -> Self {
        Self {
            id: order.id,
            key: order.idempotency_key,
            decided_at_ms: order.decided_at_ms,
            fingerprint: crate::sale::book::request_fingerprint(order.source, &order.items),
        }
    }

    fn write(&self, index: Index, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0.to_be_bytes());
        if index == Index::Buyer {
            out.extend_from_slice(self.key.as_bytes());
            out.extend_from_slice(&self.decided_at_ms.to_be_bytes());
        }
    }

    fn read(index: Index, raw: &[u8]) -> Option<Self> {
        let word = |at: usize| {
            raw.get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        };
        let id = OrderId(word(0)?);
        if index != Index::Buyer {
            return Some(Self {
                id,
                key: Uuid::nil(),
                decided_at_ms: 0,
                fingerprint: 0,
            });
        }
        let key = Uuid::from_slice(raw.get(8..24)?).ok()?;
        Some(Self {
            id,
            key,
            decided_at_ms: word(24)?,
            fingerprint: 0,
        })
    }
}

/// One stored chunk of an owner index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    /// Its number among its owner's chunks (0 for the first).
    number: u32,
    entries: Vec<Entry>,
}

impl Chunk {
    fn decode(index: Index, raw: &[u8]) -> Result<Self, ServerError> {
        let corrupt = || ServerError::Corrupt {
            tree: index.name(),
            reason: "chunk is not a header and whole entries".into(),
        };
        let number = raw
            .get(..HEADER)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(corrupt)?;
        let body = &raw[HEADER..];
        if body.len() % index.entry_len() != 0 {
            return Err(corrupt());
        }
        let entries = body
            .chunks_exact(index.entry_len())
            .map(|raw| Entry::read(index, raw).ok_or_else(corrupt))
            .collect::<Result<_, _>>()?;
        Ok(Self { number, entries })
    }

    fn encode(&self, index: Index) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.entries.len() * index.entry_len());
        out.extend_from_slice(&self.number.to_be_bytes());
        for entry in &self.entries {
            entry.write(index, &mut out);
        }
        out
    }
}

/// Key of an index chunk: owner, then the chunk's first order id.
fn chunk_key(owner: u64, first: OrderId) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&owner.to_be_bytes());
    out[8..].copy_from_slice(&first.0.to_be_bytes());
    out
}

/// Key of the `order_chunks` entry whose first order is `first`.
fn orders_key(first: OrderId) -> [u8; 8] {
    first.0.to_be_bytes()
}

/// A stored `order_chunks` entry: its key and orders.
type StoredChunk = (Vec<u8>, Vec<OrderInfo>);

/// The `order_chunks` entry being filled by [`Tables::write`].
struct OpenChunk {
    key: Vec<u8>,
    orders: Vec<OrderInfo>,
    bytes: usize,
    dirty: bool,
}

impl OpenChunk {
    fn covers(&self, id: OrderId) -> bool {
        self.orders.first().is_some_and(|first| first.id <= id)
    }

    fn newest(&self) -> OrderId {
        self.orders.last().map_or(OrderId(0), |o| o.id)
    }
}

/// Puts `order` in `chunk` (sorted by id), replacing the one with its id.
fn put(chunk: &mut Vec<OrderInfo>, order: &OrderInfo) {
    match chunk.binary_search_by_key(&order.id, |o| o.id) {
        Ok(at) => chunk[at] = order.clone(),
        Err(at) => chunk.insert(at, order.clone()),
    }
}

/// The first id a page after `after` may hold (`None`: none can).
fn first_after(after: Option<OrderId>) -> Option<u64> {
    after.map_or(Some(0), |a| a.0.checked_add(1))
}

/// Ids of `chunks` (each in id order, the chunks in order) from `first`
/// on, at most `limit`.
fn ids_from(
    first: u64,
    limit: usize,
    chunks: impl Iterator<Item = Result<Vec<OrderId>, ServerError>>,
) -> Result<Vec<OrderId>, ServerError> {
    let mut ids = Vec::new();
    for chunk in chunks {
        for id in chunk?.into_iter().filter(|id| id.0 >= first) {
            if ids.len() >= limit {
                return Ok(ids);
            }
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The number of the chunk after chunk `number`.
fn next_number(index: Index, number: u32) -> Result<u32, ServerError> {
    number.checked_add(1).ok_or_else(|| ServerError::Corrupt {
        tree: index.name(),
        reason: "chunk number overflows".into(),
    })
}

/// The history tables.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    orders: sled::Tree,
    buyer: sled::Tree,
    partner: sled::Tree,
    product: sled::Tree,
    keys: sled::Tree,
}

impl Tables {
    /// The tables of `store`.
    pub(crate) fn new(store: &Store) -> Self {
        Self {
            orders: store.order_chunks.clone(),
            buyer: store.buyer_orders.clone(),
            partner: store.partner_orders.clone(),
            product: store.product_orders.clone(),
            keys: store.order_keys.clone(),
        }
    }

    fn tree(&self, index: Index) -> &sled::Tree {
        match index {
            Index::Buyer => &self.buyer,
            Index::Partner => &self.partner,
            Index::Product => &self.product,
        }
    }

    /// The `order_chunks` entry that would hold `id`: its key and orders.
    fn chunk_holding(&self, id: OrderId) -> Result<Option<StoredChunk>, ServerError> {
        match self.orders.range(..=orders_key(id)).next_back() {
            Some(item) => {
                let (key, raw) = item?;
                Ok(Some((key.to_vec(), decode("order_chunks", &raw)?)))
            }
            None => Ok(None),
        }
    }

    /// One order.
    ///
    /// # Errors
    /// Storage failure or a corrupt chunk.
    pub(crate) fn order(&self, id: OrderId) -> Result<Option<OrderInfo>, ServerError> {
        let chunk = self.chunk_holding(id)?.map(|(_, chunk)| chunk);
        Ok(chunk.and_then(|c| c.into_iter().find(|order| order.id == id)))
    }

    /// The stored orders of `ids` (ascending), in order, each chunk read once.
    ///
    /// # Errors
    /// Storage failure or a corrupt chunk.
    pub(crate) fn orders(&self, ids: &[OrderId]) -> Result<Vec<OrderInfo>, ServerError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut chunk: Vec<OrderInfo> = Vec::new();
        for &id in ids {
            let held = chunk.first().is_some_and(|f| f.id <= id)
                && chunk.last().is_some_and(|l| id <= l.id);
            if !held {
                chunk = self.chunk_holding(id)?.map_or_else(Vec::new, |(_, c)| c);
            }
            if let Ok(at) = chunk.binary_search_by_key(&id, |o| o.id) {
                out.push(chunk[at].clone());
            }
        }
        Ok(out)
    }

    /// Ids of stored orders above `after`, in order, at most `limit`.
    ///
    /// # Errors
    /// Storage failure or a corrupt chunk.
    pub(crate) fn ids_after(
        &self,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, ServerError> {
        let Some(first) = first_after(after) else {
            return Ok(Vec::new());
        };
        let start = match self.orders.range(..=orders_key(OrderId(first))).next_back() {
            Some(item) => item?.0.to_vec(),
            None => orders_key(OrderId(first)).to_vec(),
        };
        let chunks = self.orders.range(start..).map(|item| {
            let (_, raw) = item?;
            let chunk: Vec<OrderInfo> = decode("order_chunks", &raw)?;
            Ok(chunk.iter().map(|o| o.id).collect())
        });
        ids_from(first, limit, chunks)
    }

    /// Chunks of `owner` in `index` from the one that may hold `from`, in order.
    fn chunks_from(
        &self,
        index: Index,
        owner: u64,
        from: OrderId,
    ) -> Result<impl Iterator<Item = Result<Chunk, ServerError>> + '_, ServerError> {
        let tree = self.tree(index);
        let end = chunk_key(owner, OrderId(u64::MAX));
        let start = match tree
            .range(chunk_key(owner, OrderId(0))..=chunk_key(owner, from))
            .next_back()
        {
            Some(item) => item?.0.to_vec(),
            None => chunk_key(owner, from).to_vec(),
        };
        Ok(tree.range(start..=end.to_vec()).map(move |item| {
            let (_, raw) = item?;
            Chunk::decode(index, &raw)
        }))
    }

    /// Ids in `index` of `owner` above `after`, in order, at most `limit`.
    ///
    /// # Errors
    /// Storage failure or a corrupt chunk.
    pub(crate) fn page(
        &self,
        index: Index,
        owner: u64,
        after: Option<OrderId>,
        limit: usize,
    ) -> Result<Vec<OrderId>, ServerError> {
        let Some(first) = first_after(after) else {
            return Ok(Vec::new());
        };
        let chunks = self
            .chunks_from(index, owner, OrderId(first))?
            .map(|chunk| Ok(chunk?.entries.iter().map(|e| e.id).collect()));
        ids_from(first, limit, chunks)
    }

    /// The newest chunk of `owner` in `index`, with its key.
    fn last_chunk(
        &self,
        index: Index,
        owner: u64,
    ) -> Result<Option<(Vec<u8>, Chunk)>, ServerError> {
        let tree = self.tree(index);
        let range = chunk_key(owner, OrderId(0))..=chunk_key(owner, OrderId(u64::MAX));
        match tree.range(range).next_back() {
            Some(item) => {
                let (key, raw) = item?;
                Ok(Some((key.to_vec(), Chunk::decode(index, &raw)?)))
            }
            None => Ok(None),
        }
    }

    /// The buyer's order made with `key` and decided at or after
    /// `window_start_ms`, if any (the newest when a key was reused after
    /// its window). Reads at most [`KEY_SCAN_CHUNKS`] chunks, one
    /// `order_keys` entry and one order.
    ///
    /// # Errors
    /// Storage failure or a corrupt row.
    pub(crate) fn find_key(
        &self,
        user: UserId,
        key: Uuid,
        window_start_ms: u64,
    ) -> Result<Option<KeyEntry>, ServerError> {
        let Some((_, newest)) = self.last_chunk(Index::Buyer, user.0)? else {
            return Ok(None);
        };
        if newest.number >= KEY_SCAN_CHUNKS {
            if let Some(raw) = self.keys.get(table_key(user, key))? {
                let entry = KeyEntry::decode(&raw)?;
                if entry.decided_at_ms >= window_start_ms {
                    return Ok(Some(entry));
                }
            }
        }
        let range = chunk_key(user.0, OrderId(0))..=chunk_key(user.0, OrderId(u64::MAX));
        let mut found = None;
        for item in self.buyer.range(range).take(KEY_SCAN_CHUNKS as usize) {
            let (_, raw) = item?;
            let chunk = Chunk::decode(Index::Buyer, &raw)?;
            found = chunk
                .entries
                .into_iter()
                .rev()
                .find(|e| e.key == key && e.decided_at_ms >= window_start_ms)
                .or(found);
        }
        let Some(entry) = found else {
            return Ok(None);
        };
        let Some(order) = self.order(entry.id)? else {
            return Err(ServerError::Corrupt {
                tree: "buyer_orders",
                reason: format!("names order {} that is not stored", entry.id.0),
            });
        };
        Ok(Some(KeyEntry {
            order_id: order.id,
            fingerprint: crate::sale::book::request_fingerprint(order.source, &order.items),
            decided_at_ms: order.decided_at_ms,
        }))
    }

    /// Calls `f` with every buyer and key decided at or after
    /// `window_start_ms` (filling the key filter at start).
    ///
    /// # Errors
    /// Storage failure or a corrupt chunk.
    pub(crate) fn for_each_key(
        &self,
        window_start_ms: u64,
        mut f: impl FnMut(UserId, Uuid),
    ) -> Result<(), ServerError> {
        for item in self.buyer.iter() {
            let (raw_key, raw) = item?;
            let user = raw_key
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| ServerError::Corrupt {
                    tree: "buyer_orders",
                    reason: "key is not 16 bytes".into(),
                })?;
            for entry in Chunk::decode(Index::Buyer, &raw)?.entries {
                if entry.decided_at_ms >= window_start_ms {
                    f(UserId(user), entry.key);
                }
            }
        }
        Ok(())
    }

    /// Deletes `order_keys` entries decided before `window_start_ms`,
    /// examining at most `budget` entries after `cursor`. Returns where to
    /// go on from (`None`: the end was reached) and how many were deleted.
    ///
    /// # Errors
    /// Storage failure or a corrupt entry.
    pub(crate) fn prune_keys(
        &self,
        cursor: Option<Vec<u8>>,
        window_start_ms: u64,
        budget: usize,
    ) -> Result<(Option<Vec<u8>>, usize), ServerError> {
        let start = cursor.unwrap_or_default();
        let mut last = None;
        let mut removed = 0;
        for item in self.keys.range(start..).take(budget) {
            let (raw_key, raw) = item?;
            if KeyEntry::decode(&raw)?.decided_at_ms < window_start_ms {
                self.keys.remove(&raw_key)?;
                removed += 1;
            }
            let mut next = raw_key.to_vec();
            next.push(0);
            last = Some(next);
        }
        Ok((last, removed))
    }

    /// Writes `orders` (new orders and new versions of stored ones, in the
    /// journal's order) and indexes the new ones (`new`: their ids are
    /// above every stored order's). Idempotent.
    ///
    /// # Errors
    /// Storage failure or a corrupt row.
    pub(crate) fn write(&self, orders: &[OrderInfo], new: &[OrderId]) -> Result<(), ServerError> {
        self.write_orders(orders)?;
        let mut owners: [BTreeMap<u64, Vec<Entry>>; 3] = Default::default();
        let new_orders = orders.iter().filter(|o| new.binary_search(&o.id).is_ok());
        let mut seen = std::collections::HashSet::new();
        for order in new_orders.filter(|o| seen.insert(o.id)) {
            let entry = Entry::of(order);
            owners[0].entry(order.user_id.0).or_default().push(entry);
            if let Some(partner) = &order.partner {
                owners[1]
                    .entry(partner.partner_id.0)
                    .or_default()
                    .push(entry);
            }
            for line in &order.items {
                let product = owners[2].entry(line.product_id.0).or_default();
                if product.last().is_none_or(|e| e.id != order.id) {
                    product.push(entry);
                }
            }
        }
        let [buyers, partners, products] = owners;
        for (index, map) in [
            (Index::Buyer, buyers),
            (Index::Partner, partners),
            (Index::Product, products),
        ] {
            for (owner, entries) in map {
                self.append(index, owner, entries)?;
            }
        }
        Ok(())
    }

    /// Writes `orders` to `order_chunks`: an order newer than every stored
    /// one goes to the newest chunk while it has room, else starts a chunk;
    /// any other replaces (or joins) the chunk that holds its id.
    fn write_orders(&self, orders: &[OrderInfo]) -> Result<(), ServerError> {
        let Some(first) = orders.first() else {
            return Ok(());
        };
        let mut open = match self.orders.iter().next_back() {
            Some(item) => {
                let (key, raw) = item?;
                let orders: Vec<OrderInfo> = decode("order_chunks", &raw)?;
                Some(OpenChunk {
                    key: key.to_vec(),
                    bytes: raw.len(),
                    orders,
                    dirty: false,
                })
            }
            None => None,
        }
        .unwrap_or_else(|| OpenChunk {
            key: orders_key(first.id).to_vec(),
            orders: Vec::new(),
            bytes: 1,
            dirty: false,
        });
        for order in orders {
            if open.orders.is_empty() || open.covers(order.id) {
                if order.id <= open.newest() {
                    put(&mut open.orders, order);
                    open.dirty = true;
                    continue;
                }
                let size = encode(order)?.len();
                let full = open.orders.len() >= ORDERS_PER_CHUNK || open.bytes + size > CHUNK_BYTES;
                if full && !open.orders.is_empty() {
                    if open.dirty {
                        self.orders
                            .insert(open.key.as_slice(), encode(&open.orders)?)?;
                    }
                    open = OpenChunk {
                        key: orders_key(order.id).to_vec(),
                        orders: Vec::new(),
                        bytes: 1,
                        dirty: false,
                    };
                }
                open.orders.push(order.clone());
                open.bytes += size;
                open.dirty = true;
            } else {
                // Older than the newest chunk: a new version of a stored order.
                let (key, mut chunk) = self
                    .chunk_holding(order.id)?
                    .unwrap_or_else(|| (orders_key(order.id).to_vec(), Vec::new()));
                put(&mut chunk, order);
                self.orders.insert(key, encode(&chunk)?)?;
            }
        }
        if open.dirty {
            self.orders.insert(open.key, encode(&open.orders)?)?;
        }
        Ok(())
    }

    /// Appends `entries` (in id order) to `owner`'s chunks, skipping those
    /// already there.
    fn append(&self, index: Index, owner: u64, entries: Vec<Entry>) -> Result<(), ServerError> {
        let tree = self.tree(index);
        let last = self.last_chunk(index, owner)?;
        let newest = last
            .as_ref()
            .and_then(|(_, c)| c.entries.last())
            .map_or(0, |e| e.id.0);
        let mut entries = entries.into_iter().filter(|e| e.id.0 > newest).peekable();
        if entries.peek().is_none() {
            return Ok(());
        }
        let (mut key, mut chunk) = match last {
            Some((key, chunk)) if chunk.entries.len() < index.max_entries() => (key, chunk),
            Some((_, full)) => (
                Vec::new(),
                Chunk {
                    number: next_number(index, full.number)?,
                    entries: Vec::new(),
                },
            ),
            None => (
                Vec::new(),
                Chunk {
                    number: 0,
                    entries: Vec::new(),
                },
            ),
        };
        for entry in entries {
            if chunk.entries.len() >= index.max_entries() {
                tree.insert(key.as_slice(), chunk.encode(index))?;
                chunk = Chunk {
                    number: next_number(index, chunk.number)?,
                    entries: Vec::new(),
                };
            }
            if chunk.entries.is_empty() {
                key = chunk_key(owner, entry.id).to_vec();
            }
            if index == Index::Buyer && chunk.number >= KEY_SCAN_CHUNKS {
                self.index_key(UserId(owner), entry)?;
            }
            chunk.entries.push(entry);
        }
        tree.insert(key, chunk.encode(index))?;
        Ok(())
    }

    /// Records a heavy buyer's key in `order_keys`.
    fn index_key(&self, user: UserId, entry: Entry) -> Result<(), ServerError> {
        let value = KeyEntry {
            order_id: entry.id,
            fingerprint: entry.fingerprint,
            decided_at_ms: entry.decided_at_ms,
        };
        self.keys
            .insert(table_key(user, entry.key), value.encode().as_slice())?;
        Ok(())
    }
}

/// Orders read from a version-3 `orders` tree per write, in the migration.
const MIGRATE_BATCH: usize = 4096;

/// Packs a version-3 dir's orders into the tables: reads its `orders` tree
/// in id order and writes every order with its indexes. Idempotent, so a
/// crash midway runs it again; the old trees are dropped after the new
/// version is written. Keys stay in `order_keys` (pruned as they expire).
/// Returns the number of orders.
///
/// # Errors
/// Storage failure or a corrupt order.
pub(crate) fn migrate_v3(store: &Store) -> Result<u64, ServerError> {
    let old = store.db.open_tree("orders")?;
    let tables = Tables::new(store);
    let mut batch: Vec<OrderInfo> = Vec::with_capacity(MIGRATE_BATCH);
    let mut migrated = 0u64;
    let mut flush = |batch: &mut Vec<OrderInfo>| -> Result<(), ServerError> {
        let ids: Vec<OrderId> = batch.iter().map(|o| o.id).collect();
        tables.write(batch, &ids)?;
        migrated += batch.len() as u64;
        batch.clear();
        Ok(())
    };
    for item in old.iter() {
        let (_, raw) = item?;
        batch.push(decode("orders", &raw)?);
        if batch.len() >= MIGRATE_BATCH {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    store.sync()?;
    Ok(migrated)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flashsale_protocol::{OrderLine, OrderSource, OrderStatus, ProductId};

    /// Tables over a fresh data dir (kept while the dir lives).
    pub(crate) fn stored() -> (Tables, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        (Tables::new(&store), dir)
    }

    /// A confirmed express order of one unit of product 1.
    pub(crate) fn order(id: u64, user: u64) -> OrderInfo {
        OrderInfo {
            id: OrderId(id),
            user_id: UserId(user),
            items: vec![OrderLine {
                product_id: ProductId(1),
                qty: 1,
            }],
            status: OrderStatus::Confirmed,
            source: OrderSource::Express,
            idempotency_key: Uuid::new_v4(),
            decided_at_ms: 1_000 + id,
            partner: None,
        }
    }

    fn write_new(tables: &Tables, orders: &[OrderInfo]) {
        let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
        tables.write(orders, &ids).expect("write");
    }

    #[test]
    fn orders_written_in_rounds_read_back_by_id_by_owner_and_in_pages_and_a_replay_changes_nothing()
    {
        let (tables, _dir) = stored();
        // 3 buyers, 200 orders over several order chunks and index chunks.
        let orders: Vec<OrderInfo> = (1..=200).map(|id| order(id, id % 3)).collect();
        for round in orders.chunks(37) {
            write_new(&tables, round);
        }
        // A replay of earlier rounds (a crash before the checkpoint).
        write_new(&tables, &orders[..100]);
        for o in &orders {
            assert_eq!(tables.order(o.id).expect("read").as_ref(), Some(o));
        }
        assert_eq!(tables.order(OrderId(201)).expect("read"), None);
        let of_buyer = |user: u64, after: Option<u64>, limit: usize| {
            tables
                .page(Index::Buyer, user, after.map(OrderId), limit)
                .expect("page")
        };
        let all_of_1: Vec<OrderId> = orders
            .iter()
            .filter(|o| o.user_id.0 == 1)
            .map(|o| o.id)
            .collect();
        assert_eq!(of_buyer(1, None, usize::MAX), all_of_1);
        assert_eq!(of_buyer(1, Some(100), 5), all_of_1[34..39].to_vec());
        assert_eq!(of_buyer(1, Some(u64::MAX), 5), vec![]);
        assert_eq!(of_buyer(9, None, 5), vec![]);
        let product = tables
            .page(Index::Product, 1, None, usize::MAX)
            .expect("page");
        assert_eq!(product.len(), 200);
        assert_eq!(
            tables.ids_after(Some(OrderId(195)), 10).expect("ids"),
            (196..=200).map(OrderId).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_new_version_of_a_stored_order_replaces_it_and_adds_no_index_entry() {
        let (tables, _dir) = stored();
        let orders: Vec<OrderInfo> = (1..=40).map(|id| order(id, 5)).collect();
        write_new(&tables, &orders);
        for at in [3, 39] {
            // In an older chunk, then in the newest one.
            let mut cancelled = orders[at].clone();
            cancelled.status = OrderStatus::Cancelled;
            tables
                .write(std::slice::from_ref(&cancelled), &[])
                .expect("write");
            assert_eq!(tables.order(cancelled.id).expect("read"), Some(cancelled));
        }
        assert_eq!(
            tables.order(orders[4].id).expect("read").as_ref(),
            Some(&orders[4])
        );
        assert_eq!(
            tables
                .page(Index::Buyer, 5, None, usize::MAX)
                .expect("page")
                .len(),
            40
        );
    }

    #[test]
    fn the_largest_orders_fill_chunks_by_bytes_and_no_chunk_passes_the_cap() {
        let (tables, _dir) = stored();
        let largest = |id| {
            let mut o = order(id, 1);
            o.items = (1..=64)
                .map(|p| OrderLine {
                    product_id: ProductId(u64::MAX - p),
                    qty: u32::MAX,
                })
                .collect();
            o.partner = Some(flashsale_protocol::PartnerRef {
                partner_id: UserId(u64::MAX),
                buyer_ref: flashsale_protocol::BuyerRef("r".repeat(128)),
            });
            o
        };
        let orders: Vec<OrderInfo> = (1..=100).map(largest).collect();
        for round in orders.chunks(7) {
            write_new(&tables, round);
        }
        let mut chunks = 0;
        for item in tables.orders.iter() {
            let (_, raw) = item.expect("read");
            assert!(raw.len() <= CHUNK_BYTES, "a chunk of {} bytes", raw.len());
            chunks += 1;
        }
        assert!(chunks > 100 / ORDERS_PER_CHUNK + 1, "chunks cut by bytes");
        let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
        assert_eq!(tables.orders(&ids).expect("read"), orders);
        assert_eq!(
            tables.order(OrderId(77)).expect("read").as_ref(),
            Some(&orders[76])
        );
        assert_eq!(
            tables.ids_after(Some(OrderId(50)), 1000).expect("ids"),
            ids[50..].to_vec()
        );
    }

    #[test]
    fn a_key_is_found_in_the_buyer_chunks_and_for_a_buyer_with_many_chunks_in_order_keys_too() {
        let (tables, _dir) = stored();
        let per_chunk = Index::Buyer.max_entries() as u64;
        let many = per_chunk * u64::from(KEY_SCAN_CHUNKS) + 3 * per_chunk;
        let orders: Vec<OrderInfo> = (1..=many).map(|id| order(id, 8)).collect();
        for round in orders.chunks(500) {
            write_new(&tables, round);
        }
        for o in [&orders[0], &orders[700], &orders[many as usize - 1]] {
            let found = tables
                .find_key(o.user_id, o.idempotency_key, 0)
                .expect("find")
                .expect("inside the window");
            assert_eq!(found.order_id, o.id);
            assert_eq!(
                found.fingerprint,
                crate::sale::book::request_fingerprint(o.source, &o.items)
            );
        }
        let first = &orders[0];
        assert_eq!(
            tables
                .find_key(
                    first.user_id,
                    first.idempotency_key,
                    first.decided_at_ms + 1
                )
                .expect("find"),
            None,
            "decided before the window"
        );
        assert_eq!(
            tables.find_key(UserId(8), Uuid::new_v4(), 0).expect("find"),
            None
        );
        let heavy = tables.keys.len() as u64;
        assert_eq!(heavy, many - per_chunk * u64::from(KEY_SCAN_CHUNKS));
        let mut keys = 0;
        tables.for_each_key(0, |_, _| keys += 1).expect("keys");
        assert_eq!(keys, many);
        let (_, removed) = tables
            .prune_keys(None, u64::MAX, usize::MAX)
            .expect("prune");
        assert_eq!(removed as u64, heavy);
    }

    #[test]
    fn a_schema_3_order_tree_is_packed_and_a_second_run_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let old = store.db.open_tree("orders").expect("old tree");
        let orders: Vec<OrderInfo> = (1..=5000).map(|id| order(id, id % 7)).collect();
        for o in &orders {
            old.insert(crate::store::id_key(o.id.0), encode(o).expect("encode"))
                .expect("insert");
        }
        assert_eq!(migrate_v3(&store).expect("migrate"), 5000);
        assert_eq!(migrate_v3(&store).expect("again"), 5000);
        let tables = Tables::new(&store);
        for o in orders.iter().step_by(97) {
            assert_eq!(tables.order(o.id).expect("read").as_ref(), Some(o));
        }
        let of_3 = tables
            .page(Index::Buyer, 3, None, usize::MAX)
            .expect("page");
        assert_eq!(
            of_3.len(),
            orders.iter().filter(|o| o.user_id.0 == 3).count()
        );
    }
}
