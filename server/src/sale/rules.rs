//! The sale rules, written once: may a buyer order this quantity of a
//! product now?
//!
//! Two places ask, with the same rule and different figures: intake, from
//! the published catalog and order book, to refuse at once what is already
//! ruled out; and the book, from the sequencer's own state, to decide in
//! arrival order (the authoritative answer). Both turn a [`Refusal`] into
//! the same code, and intake into the same message.
//!
//! The checks run in a fixed order (unknown product, sale window, purchase
//! limit, stock): the first that fails names the refusal.

use crate::error::ApiError;
use flashsale_protocol::{ErrorCode, ProductId, SaleRules};

/// Why a line of an order cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No such product.
    UnknownProduct,
    /// The sale window opens in `opens_in_ms` milliseconds.
    NotOpenYet {
        /// Time until it opens (at least 1).
        opens_in_ms: u64,
    },
    /// The sale window has closed.
    Closed,
    /// The line would take the buyer past the product's purchase limit.
    OverLimit {
        /// The limit.
        max: u32,
        /// Units the buyer already holds.
        held: u64,
    },
    /// The stock cannot cover the line.
    SoldOut {
        /// Units left.
        left: u64,
    },
}

impl Refusal {
    /// The error code a client sees.
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Self::UnknownProduct => ErrorCode::NotFound,
            Self::NotOpenYet { .. } | Self::Closed => ErrorCode::SaleNotOpen,
            Self::OverLimit { .. } => ErrorCode::LimitExceeded,
            Self::SoldOut { .. } => ErrorCode::SoldOut,
        }
    }

    /// The message a client sees for a line of product `id`.
    pub(crate) fn message(self, id: ProductId) -> String {
        match self {
            Self::UnknownProduct => format!("no product {id}"),
            Self::NotOpenYet { opens_in_ms } => format!(
                "the sale of product {id} opens in {} s",
                opens_in_ms.div_ceil(1000)
            ),
            Self::Closed => format!("the sale of product {id} has closed"),
            Self::OverLimit { max, held } => {
                format!("at most {max} units of product {id} per buyer; this buyer has {held}")
            }
            Self::SoldOut { left: 0 } => format!("product {id} is sold out"),
            Self::SoldOut { left } => format!("only {left} units of product {id} are left"),
        }
    }

    /// The answer to a client for a line of product `id`.
    pub(crate) fn error(self, id: ProductId) -> ApiError {
        ApiError::new(self.code(), self.message(id))
    }
}

/// Whether a buyer may have `qty` more units of an existing product whose
/// rules are `rules` and whose stock is `stock`.
///
/// `now_ms` is asked only when the product has a sale window, and `held`
/// (the units the buyer holds in confirmed, uncancelled orders) only when
/// it has a purchase limit: intake pays for a clock read or an order-book
/// lookup only when the rule needs one.
///
/// # Errors
/// The first rule the line breaks: the window, then the limit, then the stock.
#[inline]
pub(crate) fn check_line(
    rules: &SaleRules,
    now_ms: impl FnOnce() -> u64,
    held: impl FnOnce() -> u64,
    stock: u64,
    qty: u64,
) -> Result<(), Refusal> {
    if rules.opens_at_ms.is_some() || rules.closes_at_ms.is_some() {
        let now = now_ms();
        if !rules.is_open_at(now) {
            return Err(match rules.opens_at_ms {
                Some(opens) if now < opens => Refusal::NotOpenYet {
                    opens_in_ms: opens - now,
                },
                _ => Refusal::Closed,
            });
        }
    }
    if let Some(max) = rules.max_per_buyer {
        let held = held();
        // Saturating: a sum past u64::MAX is over any limit anyway.
        if held.saturating_add(qty) > u64::from(max) {
            return Err(Refusal::OverLimit { max, held });
        }
    }
    if stock < qty {
        return Err(Refusal::SoldOut { left: stock });
    }
    Ok(())
}

/// Checks rules an operator sends.
///
/// # Errors
/// `BadRequest` for a zero limit or a window that closes before it opens.
pub(crate) fn validate(rules: &SaleRules) -> Result<(), ErrorCode> {
    if rules.max_per_buyer == Some(0) {
        return Err(ErrorCode::BadRequest);
    }
    if let (Some(opens), Some(closes)) = (rules.opens_at_ms, rules.closes_at_ms) {
        if closes <= opens {
            return Err(ErrorCode::BadRequest);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max: Option<u32>, opens: Option<u64>, closes: Option<u64>) -> SaleRules {
        SaleRules {
            max_per_buyer: max,
            opens_at_ms: opens,
            closes_at_ms: closes,
        }
    }

    /// The rule with a clock and holdings that must not be asked for.
    fn check_without_lookups(rules: &SaleRules, stock: u64, qty: u64) -> Result<(), Refusal> {
        check_line(
            rules,
            || panic!("the clock was read without a window"),
            || panic!("holdings were looked up without a limit"),
            stock,
            qty,
        )
    }

    #[test]
    fn without_window_or_limit_only_the_stock_counts_and_nothing_is_looked_up() {
        let open = SaleRules::default();
        assert_eq!(check_without_lookups(&open, 3, 3), Ok(()));
        assert_eq!(
            check_without_lookups(&open, 2, 3),
            Err(Refusal::SoldOut { left: 2 })
        );
    }

    #[test]
    fn the_window_is_checked_before_the_limit_and_the_limit_before_the_stock() {
        let all = rules(Some(1), Some(100), Some(200));
        let verdict = |now: u64, held: u64, stock: u64| check_line(&all, || now, || held, stock, 1);
        assert_eq!(
            verdict(50, 5, 0),
            Err(Refusal::NotOpenYet { opens_in_ms: 50 })
        );
        assert_eq!(verdict(200, 5, 0), Err(Refusal::Closed));
        assert_eq!(
            verdict(150, 1, 0),
            Err(Refusal::OverLimit { max: 1, held: 1 })
        );
        assert_eq!(verdict(150, 0, 0), Err(Refusal::SoldOut { left: 0 }));
        assert_eq!(verdict(150, 0, 1), Ok(()));
    }

    #[test]
    fn a_window_without_an_opening_time_is_closed_once_past_its_end() {
        let closing = rules(None, None, Some(10));
        assert_eq!(check_line(&closing, || 9, || 0, 1, 1), Ok(()));
        assert_eq!(
            check_line(&closing, || 10, || 0, 1, 1),
            Err(Refusal::Closed)
        );
    }

    #[test]
    fn refusals_keep_their_codes_and_messages() {
        let id = ProductId(7);
        let cases = [
            (Refusal::UnknownProduct, ErrorCode::NotFound, "no product 7"),
            (
                Refusal::NotOpenYet { opens_in_ms: 1_001 },
                ErrorCode::SaleNotOpen,
                "the sale of product 7 opens in 2 s",
            ),
            (
                Refusal::Closed,
                ErrorCode::SaleNotOpen,
                "the sale of product 7 has closed",
            ),
            (
                Refusal::OverLimit { max: 2, held: 1 },
                ErrorCode::LimitExceeded,
                "at most 2 units of product 7 per buyer; this buyer has 1",
            ),
            (
                Refusal::SoldOut { left: 0 },
                ErrorCode::SoldOut,
                "product 7 is sold out",
            ),
            (
                Refusal::SoldOut { left: 3 },
                ErrorCode::SoldOut,
                "only 3 units of product 7 are left",
            ),
        ];
        for (refusal, code, message) in cases {
            let error = refusal.error(id);
            assert_eq!((error.code, error.message.as_str()), (code, message));
        }
    }

    #[test]
    fn a_zero_limit_or_a_window_closing_before_it_opens_is_invalid() {
        assert_eq!(
            validate(&rules(Some(0), None, None)),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            validate(&rules(None, Some(5), Some(5))),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(validate(&rules(Some(1), Some(5), Some(6))), Ok(()));
        assert_eq!(validate(&rules(None, None, Some(0))), Ok(()));
    }
}
