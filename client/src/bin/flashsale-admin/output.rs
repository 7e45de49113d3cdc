//! What the CLI prints: the JSON shapes of `--json` (explicit structs, so the
//! output does not change when the protocol's serde shape does) and the
//! aligned tables of the human output.

use crate::time::{format_ms, format_opt_ms};
use anyhow::Context;
use comfy_table::{presets, Cell, CellAlignment, Table};
use flashsale_client::protocol::{
    OrderInfo, OrderSource, OrderStatus, ProductInfo, ProductStats, Role, StatsReport, UserInfo,
};
use serde::Serialize;
use std::io::Write;

/// Writes `value` as one JSON document (and a newline) on stdout.
///
/// # Errors
/// stdout is closed.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON to stdout")?;
    writeln!(out).context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// Writes `value` as JSON on one line of stdout (for streams such as `watch --json`).
///
/// # Errors
/// stdout is closed.
pub fn print_json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).context("writing JSON to stdout")?;
    writeln!(out).context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// A table with a header and no borders, columns aligned like `ps` or
/// `kubectl`; `right` lists the columns (by index) to align right (numbers).
pub fn table(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    let header = header.iter().enumerate().map(|(index, title)| {
        let cell = Cell::new(title);
        if right.contains(&index) {
            cell.set_alignment(CellAlignment::Right)
        } else {
            cell
        }
    });
    table
        .load_preset(presets::NOTHING)
        .set_header(header.collect::<Vec<_>>());
    for &index in right {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Prints a table (or a note when it has no rows) on stdout.
///
/// # Errors
/// stdout is closed.
pub fn print_table(table: &Table, empty: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if table.row_count() == 0 {
        writeln!(out, "{empty}").context("writing to stdout")?;
    } else {
        writeln!(out, "{table}").context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")
}

/// Prints one line on stdout.
///
/// # Errors
/// stdout is closed.
pub fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// Cents as money: `1999` → `19.99`.
pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// A role as the CLI spells it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Buyer => "buyer",
        Role::Partner => "partner",
        Role::Admin => "admin",
    }
}

/// A product in `--json` output.
#[derive(Debug, Serialize)]
pub struct ProductOut {
    /// Product id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Units left to sell.
    pub stock: u64,
    /// Stock at creation.
    pub initial_stock: u64,
    /// Net units operators added (negative when more was taken away).
    pub restocked: i64,
    /// Units in confirmed orders (cancelled ones no longer count).
    pub confirmed_qty: u64,
    /// Units in live holds.
    pub held: u64,
    /// Longest hold of it, in ms.
    pub hold_ms: u64,
    /// True when `initial_stock + restocked - confirmed_qty - held == stock`.
    pub balances: bool,
    /// Per-buyer purchase limit; `null` for none.
    pub max_per_buyer: Option<u32>,
    /// Sale opens (ms since the epoch); `null`: open now.
    pub opens_at_ms: Option<u64>,
    /// Sale closes (ms since the epoch); `null`: never.
    pub closes_at_ms: Option<u64>,
}

impl From<&ProductInfo> for ProductOut {
    fn from(p: &ProductInfo) -> Self {
        Self {
            id: p.id.0,
            name: p.name.clone(),
            price_cents: p.price_cents,
            stock: p.stock,
            initial_stock: p.initial_stock,
            restocked: p.restocked,
            confirmed_qty: p.confirmed_qty,
            held: p.held,
            hold_ms: p.hold_ms,
            balances: p.balances(),
            max_per_buyer: p.rules.max_per_buyer,
            opens_at_ms: p.rules.opens_at_ms,
            closes_at_ms: p.rules.closes_at_ms,
        }
    }
}

/// Column titles of [`products_table`].
const PRODUCT_HEADER: [&str; 12] = [
    "ID",
    "NAME",
    "PRICE",
    "STOCK",
    "INITIAL",
    "RESTOCKED",
    "CONFIRMED",
    "HELD",
    "HOLD",
    "LIMIT",
    "OPENS",
    "CLOSES",
];

/// Right-aligned columns of [`products_table`].
const PRODUCT_RIGHT: [usize; 9] = [0, 2, 3, 4, 5, 6, 7, 8, 9];

/// The products as an aligned table.
pub fn products_table(products: &[ProductInfo]) -> Table {
    let mut t = table(&PRODUCT_HEADER, &PRODUCT_RIGHT);
    for p in products {
        t.add_row(vec![
            Cell::new(p.id),
            Cell::new(&p.name),
            Cell::new(money(p.price_cents)),
            Cell::new(p.stock),
            Cell::new(p.initial_stock),
            Cell::new(format!("{:+}", p.restocked)),
            Cell::new(p.confirmed_qty),
            Cell::new(p.held),
            Cell::new(humantime::format_duration(
                std::time::Duration::from_millis(p.hold_ms),
            )),
            Cell::new(
                p.rules
                    .max_per_buyer
                    .map_or("-".to_owned(), |n| n.to_string()),
            ),
            Cell::new(format_opt_ms(p.rules.opens_at_ms)),
            Cell::new(format_opt_ms(p.rules.closes_at_ms)),
        ]);
    }
    t
}

/// A user account in `--json` output.
#[derive(Debug, Serialize)]
pub struct UserOut {
    /// User id.
    pub id: u64,
    /// Account name.
    pub username: String,
    /// `buyer`, `partner` or `admin`.
    pub role: &'static str,
    /// True when the account is disabled (`users disable`).
    pub disabled: bool,
}

impl From<&UserInfo> for UserOut {
    fn from(u: &UserInfo) -> Self {
        Self {
            id: u.id.0,
            username: u.username.clone(),
            role: role_name(u.role),
            disabled: u.disabled,
        }
    }
}

/// The users as an aligned table.
pub fn users_table(users: &[UserInfo]) -> Table {
    let mut t = table(&["ID", "NAME", "ROLE", "STATUS"], &[0]);
    for u in users {
        t.add_row(vec![
            Cell::new(u.id),
            Cell::new(&u.username),
            Cell::new(role_name(u.role)),
            Cell::new(if u.disabled { "disabled" } else { "active" }),
        ]);
    }
    t
}

/// One line of an order in `--json` output.
#[derive(Debug, Serialize)]
pub struct LineOut {
    /// The product.
    pub product_id: u64,
    /// Units.
    pub qty: u32,
}

/// An order in `--json` output.
#[derive(Debug, Serialize)]
pub struct OrderOut {
    /// Order id.
    pub id: u64,
    /// The buyer's user id.
    pub user_id: u64,
    /// `pending`, `confirmed`, `rejected` or `cancelled`.
    pub status: &'static str,
    /// For a rejected order: why (`SoldOut`, `LimitExceeded`, `SaleNotOpen`).
    pub reject_code: Option<String>,
    /// For a rejected order: the product that caused it.
    pub reject_product_id: Option<u64>,
    /// What was ordered.
    pub items: Vec<LineOut>,
    /// `cart` (Pay) or `express` (Buy).
    pub source: &'static str,
    /// The pay intent's idempotency key.
    pub idempotency_key: String,
    /// When it was decided (ms since the epoch).
    pub decided_at_ms: u64,
    /// For a partner's buyer: the partner's user id.
    pub partner_id: Option<u64>,
    /// For a partner's buyer: the partner's reference of the buyer.
    pub buyer_ref: Option<String>,
}

/// An order's state as the CLI spells it.
pub fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Pending => "pending",
        OrderStatus::Confirmed => "confirmed",
        OrderStatus::Rejected { .. } => "rejected",
        OrderStatus::Cancelled => "cancelled",
        OrderStatus::Held { .. } => "held",
        OrderStatus::Expired => "expired",
        OrderStatus::Released => "released",
    }
}

/// An order's source as the CLI spells it.
pub fn source_name(source: OrderSource) -> &'static str {
    match source {
        OrderSource::Cart => "cart",
        OrderSource::Express => "express",
        OrderSource::CartHold => "cart-hold",
        OrderSource::ExpressHold => "express-hold",
    }
}

impl From<&OrderInfo> for OrderOut {
    fn from(o: &OrderInfo) -> Self {
        let (reject_code, reject_product_id) = match o.status {
            OrderStatus::Rejected { code, product_id } => {
                (Some(code.to_string()), Some(product_id.0))
            }
            _ => (None, None),
        };
        Self {
            id: o.id.0,
            user_id: o.user_id.0,
            status: status_name(o.status),
            reject_code,
            reject_product_id,
            items: o
                .items
                .iter()
                .map(|line| LineOut {
                    product_id: line.product_id.0,
                    qty: line.qty,
                })
                .collect(),
            source: source_name(o.source),
            idempotency_key: o.idempotency_key.to_string(),
            decided_at_ms: o.decided_at_ms,
            partner_id: o.partner.as_ref().map(|p| p.partner_id.0),
            buyer_ref: o.partner.as_ref().map(|p| p.buyer_ref.0.clone()),
        }
    }
}

/// The orders as an aligned table.
pub fn orders_table(orders: &[OrderInfo]) -> Table {
    let mut t = table(
        &[
            "ID", "USER", "STATUS", "ITEMS", "SOURCE", "DECIDED", "PARTNER",
        ],
        &[0, 1],
    );
    for o in orders {
        let status = match o.status {
            OrderStatus::Rejected { code, product_id } => {
                format!("rejected ({code} on product {product_id})")
            }
            other => status_name(other).to_owned(),
        };
        let items = o
            .items
            .iter()
            .map(|line| format!("{} x product {}", line.qty, line.product_id))
            .collect::<Vec<_>>()
            .join(", ");
        let decided = if o.status.is_final() && o.decided_at_ms > 0 {
            format_ms(o.decided_at_ms)
        } else {
            "-".to_owned()
        };
        let partner = o.partner.as_ref().map_or("-".to_owned(), |p| {
            format!("{} ({})", p.partner_id, p.buyer_ref.0)
        });
        t.add_row(vec![
            Cell::new(o.id),
            Cell::new(o.user_id),
            Cell::new(status),
            Cell::new(items),
            Cell::new(source_name(o.source)),
            Cell::new(decided),
            Cell::new(partner),
        ]);
    }
    t
}

/// One product's figures in `stats --json`.
#[derive(Debug, Serialize)]
pub struct ProductStatsOut {
    /// The product and its stock figures.
    #[serde(flatten)]
    pub product: ProductOut,
    /// Its confirmed orders since the data dir was created (cancelled ones included).
    pub orders_confirmed: u64,
    /// Its orders the sequencer rejected.
    pub orders_rejected: u64,
    /// Its orders cancelled by operators.
    pub orders_cancelled: u64,
    /// Pay requests for it refused at intake since the server started.
    pub refused_at_intake: u64,
}

impl From<&ProductStats> for ProductStatsOut {
    fn from(s: &ProductStats) -> Self {
        Self {
            product: ProductOut::from(&s.product),
            orders_confirmed: s.orders_confirmed,
            orders_rejected: s.orders_rejected,
            orders_cancelled: s.orders_cancelled,
            refused_at_intake: s.refused_at_intake,
        }
    }
}

/// `stats --json`: server-wide counters and every product's figures.
#[derive(Debug, Serialize)]
pub struct StatsOut {
    /// Every product.
    pub products: Vec<ProductStatsOut>,
    /// Open client connections.
    pub connections: u64,
    /// Orders confirmed since the data dir was created (cancelled ones included).
    pub orders_confirmed: u64,
    /// Orders rejected by the sequencer since the data dir was created.
    pub orders_rejected: u64,
    /// Orders cancelled by operators.
    pub orders_cancelled: u64,
    /// Pay requests refused at intake since the server started.
    pub refused_at_intake: u64,
    /// Commands waiting in the shard queues.
    pub queue_depth: u64,
    /// Pay requests answered with a decision since the server started.
    pub decisions: u64,
    /// Milliseconds since the server started.
    pub uptime_ms: u64,
    /// The journal, the order tables and the checkpoint.
    pub storage: flashsale_client::protocol::StorageStats,
    /// Holds: live, and how they ended.
    pub holds: flashsale_client::protocol::HoldStats,
}

impl From<&StatsReport> for StatsOut {
    fn from(s: &StatsReport) -> Self {
        Self {
            products: s.products.iter().map(ProductStatsOut::from).collect(),
            connections: s.connections,
            orders_confirmed: s.orders_confirmed,
            orders_rejected: s.orders_rejected,
            orders_cancelled: s.orders_cancelled,
            refused_at_intake: s.refused_at_intake,
            queue_depth: s.queue_depth,
            decisions: s.decisions,
            uptime_ms: s.uptime_ms,
            storage: s.storage,
            holds: s.holds,
        }
    }
}

/// Per-product statistics as an aligned table.
pub fn product_stats_table(stats: &StatsReport) -> Table {
    const RIGHT: [usize; 9] = [0, 2, 3, 4, 5, 6, 7, 8, 9];
    let mut t = table(
        &[
            "ID",
            "NAME",
            "STOCK",
            "INITIAL",
            "RESTOCKED",
            "CONFIRMED QTY",
            "ORDERS OK",
            "REJECTED",
            "CANCELLED",
            "REFUSED",
        ],
        &RIGHT,
    );
    for s in &stats.products {
        let p = &s.product;
        t.add_row(vec![
            Cell::new(p.id),
            Cell::new(&p.name),
            Cell::new(p.stock),
            Cell::new(p.initial_stock),
            Cell::new(format!("{:+}", p.restocked)),
            Cell::new(p.confirmed_qty),
            Cell::new(s.orders_confirmed),
            Cell::new(s.orders_rejected),
            Cell::new(s.orders_cancelled),
            Cell::new(s.refused_at_intake),
        ]);
    }
    t
}

/// A duration in milliseconds for people: `1h 2m 3s`.
pub fn uptime(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(1999), "19.99");
    }

    #[test]
    fn tables_align_numbers_right() {
        let mut t = table(&["ID", "NAME"], &[0]);
        t.add_row(vec![Cell::new(7), Cell::new("a")]);
        t.add_row(vec![Cell::new(1234), Cell::new("bb")]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let widths: Vec<usize> = lines.iter().map(|l| l.trim_end().len()).collect();
        assert!(lines[1].contains("    7 "), "{text}");
        assert!(widths[1] <= widths[0] + 1, "{text}");
    }
}
