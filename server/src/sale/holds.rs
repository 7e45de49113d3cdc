//! Holds: orders whose stock is reserved until a deadline, then paid
//! (confirmed), released early, or expired; part of the sequencer's
//! [`crate::sale::book::Book`].
//!
//! A live hold's units are out of the product's stock and not in its
//! confirmed units: `initial + restocked − confirmed − on_hold == stock`.
//! Deadlines sit in an ordered set, so expiring what is due reads only the
//! due holds, never every order. Bounds: live holds are bounded by stock
//! (each holds at least one unit); ended holds are kept for
//! [`ENDED_KEPT_MS`] after they ended, so a retried `PayHold` gets its
//! answer, then forgotten (pruned when a later hold ends, by the ending
//! event's own time, so a replay forgets exactly the same). A request about
//! a hold forgotten that long ago is answered `NotHeld`.

use flashsale_protocol::{HoldStats, OrderId, OrderLine, ProductId, UserId};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How long an ended hold is remembered (a day: far beyond any retry).
pub(crate) const ENDED_KEPT_MS: u64 = 24 * 60 * 60 * 1000;

/// A hold not ended yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LiveHold {
    /// Its buyer.
    pub(crate) user_id: UserId,
    /// Its lines.
    pub(crate) items: Vec<OrderLine>,
    /// Its deadline, ms since the epoch.
    pub(crate) expires_at_ms: u64,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HoldEnd {
    /// Paid with this payment reference: a confirmed order.
    Paid(String),
    /// Not paid by its deadline.
    Expired,
    /// Released early.
    Released,
}

/// An ended hold, for the answers to late requests about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ended {
    /// Its buyer.
    pub(crate) user_id: UserId,
    /// How it ended.
    pub(crate) end: HoldEnd,
    /// When, ms since the epoch (the ending event's time).
    pub(crate) ended_at_ms: u64,
}

/// Holds counted since the data dir was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HoldCounts {
    pub(crate) placed: u64,
    pub(crate) paid: u64,
    pub(crate) expired: u64,
    pub(crate) released: u64,
}

/// The holds as a checkpoint stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HoldsState {
    pub(crate) live: Vec<(OrderId, LiveHold)>,
    pub(crate) ended: Vec<(OrderId, Ended)>,
    pub(crate) hold_ms: Vec<(ProductId, u64)>,
    pub(crate) counts: HoldCounts,
}

/// What the book knows of an order as a hold.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup<'a> {
    /// Held now.
    Live(&'a LiveHold),
    /// Held once.
    Ended(&'a Ended),
    /// Never a hold (or no such order).
    None,
}

/// Every hold, live and ended, and the products' hold times.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Holds {
    live: HashMap<OrderId, LiveHold>,
    /// `(deadline, order)` of every live hold.
    deadlines: BTreeSet<(u64, OrderId)>,
    /// Units in live holds, per product (absent: none).
    on_hold: HashMap<ProductId, u64>,
    ended: HashMap<OrderId, Ended>,
    /// `(ended_at_ms, order)` of every ended hold, oldest first, for pruning.
    ended_by_time: BTreeSet<(u64, OrderId)>,
    /// Hold time per product that has its own (else the server default).
    hold_ms: HashMap<ProductId, u64>,
    counts: HoldCounts,
}

impl Holds {
    /// Units of `product` in live holds.
    pub(crate) fn on_hold(&self, product: ProductId) -> u64 {
        self.on_hold.get(&product).copied().unwrap_or(0)
    }

    /// The product's own hold time, if it has one.
    pub(crate) fn hold_ms(&self, product: ProductId) -> Option<u64> {
        self.hold_ms.get(&product).copied()
    }

    /// Sets (`Some`) or clears a product's hold time.
    pub(crate) fn set_hold_ms(&mut self, product: ProductId, hold_ms: Option<u64>) {
        match hold_ms {
            Some(ms) => self.hold_ms.insert(product, ms),
            None => self.hold_ms.remove(&product),
        };
    }

    /// The order as a hold.
    pub(crate) fn lookup(&self, order: OrderId) -> Lookup<'_> {
        if let Some(live) = self.live.get(&order) {
            return Lookup::Live(live);
        }
        self.ended.get(&order).map_or(Lookup::None, Lookup::Ended)
    }

    /// Records a new hold and its units.
    ///
    /// # Panics
    /// When the order is already a hold: a replay diverged.
    pub(crate) fn place(&mut self, order: OrderId, hold: LiveHold) {
        assert!(
            !self.live.contains_key(&order) && !self.ended.contains_key(&order),
            "order {order} placed as a hold twice"
        );
        for line in &hold.items {
            *self.on_hold.entry(line.product_id).or_default() += u64::from(line.qty);
        }
        self.deadlines.insert((hold.expires_at_ms, order));
        self.live.insert(order, hold);
        self.counts.placed += 1;
    }

    /// Ends a live hold; its units leave the held figures.
    ///
    /// # Panics
    /// When the order is not a live hold: a replay diverged, or the book
    /// built an event it had not checked.
    pub(crate) fn end(&mut self, order: OrderId, end: HoldEnd, at_ms: u64) -> LiveHold {
        let Some(hold) = self.live.remove(&order) else {
            panic!("invariant broken: order {order} ends a hold it does not have");
        };
        self.deadlines.remove(&(hold.expires_at_ms, order));
        for line in &hold.items {
            let units = self.on_hold.entry(line.product_id).or_default();
            let Some(left) = units.checked_sub(u64::from(line.qty)) else {
                panic!(
                    "invariant broken: ending hold {order} takes {} units of product {} off \
                     hold, which holds {units}",
                    line.qty, line.product_id
                );
            };
            *units = left;
            if left == 0 {
                self.on_hold.remove(&line.product_id);
            }
        }
        match end {
            HoldEnd::Paid(_) => self.counts.paid += 1,
            HoldEnd::Expired => self.counts.expired += 1,
            HoldEnd::Released => self.counts.released += 1,
        }
        self.ended.insert(
            order,
            Ended {
                user_id: hold.user_id,
                end,
                ended_at_ms: at_ms,
            },
        );
        self.ended_by_time.insert((at_ms, order));
        self.forget_ended_before(at_ms.saturating_sub(ENDED_KEPT_MS));
        hold
    }

    /// Forgets the holds that ended before `before_ms`.
    fn forget_ended_before(&mut self, before_ms: u64) {
        while let Some(&(at, order)) = self.ended_by_time.first() {
            if at >= before_ms {
                break;
            }
            self.ended_by_time.pop_first();
            self.ended.remove(&order);
        }
    }

    /// The live holds whose deadline is at or before `now_ms`, earliest first.
    pub(crate) fn due(&self, now_ms: u64) -> Vec<OrderId> {
        self.deadlines
            .range(..=(now_ms, OrderId(u64::MAX)))
            .map(|(_, order)| *order)
            .collect()
    }

    /// The earliest deadline of a live hold.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Figures for `Stats` and `/metrics`.
    pub(crate) fn stats(&self) -> HoldStats {
        HoldStats {
            live: self.live.len() as u64,
            held_units: self.on_hold.values().sum(),
            placed: self.counts.placed,
            paid: self.counts.paid,
            expired: self.counts.expired,
            released: self.counts.released,
        }
    }

    /// The state a checkpoint stores (sorted, so equal holds encode alike).
    pub(crate) fn state(&self) -> HoldsState {
        let mut live: Vec<_> = self.live.iter().map(|(k, v)| (*k, v.clone())).collect();
        live.sort_unstable_by_key(|(k, _)| *k);
        let mut ended: Vec<_> = self.ended.iter().map(|(k, v)| (*k, v.clone())).collect();
        ended.sort_unstable_by_key(|(k, _)| *k);
        let mut hold_ms: Vec<_> = self.hold_ms.iter().map(|(k, v)| (*k, *v)).collect();
        hold_ms.sort_unstable();
        HoldsState {
            live,
            ended,
            hold_ms,
            counts: self.counts,
        }
    }

    /// Holds from a checkpoint's state.
    pub(crate) fn from_state(state: HoldsState) -> Self {
        let mut holds = Self {
            ended_by_time: state
                .ended
                .iter()
                .map(|(order, e)| (e.ended_at_ms, *order))
                .collect(),
            ended: state.ended.into_iter().collect(),
            hold_ms: state.hold_ms.into_iter().collect(),
            ..Self::default()
        };
        for (order, hold) in state.live {
            holds.place(order, hold);
        }
        holds.counts = state.counts;
        holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(user: u64, product: u64, qty: u32, at: u64) -> LiveHold {
        LiveHold {
            user_id: UserId(user),
            items: vec![OrderLine {
                product_id: ProductId(product),
                qty,
            }],
            expires_at_ms: at,
        }
    }

    #[test]
    fn due_holds_come_earliest_first_and_ending_one_gives_its_units_back() {
        let mut holds = Holds::default();
        holds.place(OrderId(1), hold(1, 7, 2, 300));
        holds.place(OrderId(2), hold(2, 7, 3, 100));
        holds.place(OrderId(3), hold(3, 8, 1, 200));
        assert_eq!(holds.on_hold(ProductId(7)), 5);
        assert_eq!(holds.due(99), vec![]);
        assert_eq!(holds.due(200), vec![OrderId(2), OrderId(3)]);
        assert_eq!(holds.next_deadline(), Some(100));
        holds.end(OrderId(2), HoldEnd::Expired, 100);
        assert_eq!(holds.on_hold(ProductId(7)), 2);
        assert_eq!(holds.next_deadline(), Some(200));
        assert!(matches!(holds.lookup(OrderId(2)), Lookup::Ended(e) if e.end == HoldEnd::Expired));
        let stats = holds.stats();
        assert_eq!(
            (stats.live, stats.held_units, stats.placed, stats.expired),
            (2, 3, 3, 1)
        );
    }

    #[test]
    fn a_checkpointed_state_gives_back_equal_holds() {
        let mut holds = Holds::default();
        holds.place(OrderId(1), hold(1, 7, 2, 300));
        holds.place(OrderId(2), hold(2, 7, 3, 100));
        holds.end(OrderId(1), HoldEnd::Paid("gw-1".into()), 50);
        holds.set_hold_ms(ProductId(7), Some(60_000));
        assert_eq!(Holds::from_state(holds.state()), holds);
    }

    #[test]
    #[should_panic(expected = "does not have")]
    fn ending_a_hold_twice_is_an_invariant_broken() {
        let mut holds = Holds::default();
        holds.place(OrderId(1), hold(1, 7, 2, 300));
        holds.end(OrderId(1), HoldEnd::Released, 10);
        holds.end(OrderId(1), HoldEnd::Released, 10);
    }

    #[test]
    fn an_ended_hold_is_forgotten_a_day_after_it_ended() {
        let mut holds = Holds::default();
        holds.place(OrderId(1), hold(1, 7, 1, 100));
        holds.place(OrderId(2), hold(2, 7, 1, 100));
        holds.end(OrderId(1), HoldEnd::Paid("gw".into()), 1_000);
        holds.end(OrderId(2), HoldEnd::Expired, 1_000 + ENDED_KEPT_MS);
        assert!(
            matches!(holds.lookup(OrderId(1)), Lookup::Ended(_)),
            "not a day yet"
        );
        holds.place(OrderId(3), hold(3, 7, 1, 100));
        holds.end(OrderId(3), HoldEnd::Released, 1_001 + ENDED_KEPT_MS);
        assert!(
            matches!(holds.lookup(OrderId(1)), Lookup::None),
            "forgotten"
        );
        assert!(matches!(holds.lookup(OrderId(2)), Lookup::Ended(_)));
        assert_eq!(Holds::from_state(holds.state()), holds);
    }
}
