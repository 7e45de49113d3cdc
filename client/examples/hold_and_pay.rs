//! Hold now, pay later: the flow of a shop whose money moves through an
//! external payment gateway. The buyer wins the stock with a hold (reserved
//! in arrival order, like an order), the app sends the buyer to the gateway,
//! and pays the hold with the gateway's reference once the money arrived;
//! a failed payment releases the hold, and a hold nobody pays expires by
//! itself. Every step is safe to retry.
//!
//! Start a demo server (`cargo run --release --bin flashsale-server -- --demo`),
//! then run, with a buyer's name and the password it printed:
//!
//! ```text
//! cargo run -p flashsale-client --example hold_and_pay -- alice <password> [127.0.0.1:7878]
//! ```

use flashsale_client::protocol::{OrderLine, OrderStatus};
use flashsale_client::{Client, ClientConfig, ErrorCode};

/// The payment gateway, faked: it takes the money for the order and
/// answers with its own reference (a real one redirects the buyer and calls
/// back).
fn gateway_charge(order: u64, price_cents: u64) -> Result<String, String> {
    if price_cents > 0 {
        Ok(format!("gw-{order}-{price_cents}"))
    } else {
        Err("card declined".into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(username), Some(password)) = (args.next(), args.next()) else {
        eprintln!("usage: hold_and_pay <username> <password> [addr[,addr…]]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let client = Client::connect_nodes(&addr, ClientConfig::default()).await?;
    client.login(&username, &password).await?;

    let products = client.products().await?;
    let Some(product) = products.iter().rev().find(|p| p.stock > 0) else {
        println!("everything is sold out");
        return Ok(());
    };
    let items = vec![OrderLine {
        product_id: product.id,
        qty: 1,
    }];
    // 1. Win the stock: held for the product's hold time at most.
    let hold = match client.hold(items.clone(), None).await {
        Ok(placed) => placed.order,
        Err(e) if e.code() == Some(ErrorCode::SoldOut) => {
            println!("sold out: {e}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let OrderStatus::Held { expires_at_ms } = hold.status else {
        println!("order {} not held: {:?}", hold.id, hold.status);
        return Ok(());
    };
    let left_ms = expires_at_ms.saturating_sub(hold.decided_at_ms);
    println!(
        "order {} holds 1 × {} for {} s",
        hold.id,
        product.name,
        left_ms / 1000
    );
    // 2. The gateway takes the money; 3. the hold is paid with its reference.
    match gateway_charge(hold.id.0, product.price_cents) {
        Ok(payment_ref) => {
            let paid = client.pay_hold(hold.id, &payment_ref).await?;
            println!(
                "order {} {:?} (payment {payment_ref})",
                paid.id, paid.status
            );
            // A retry (a lost answer, a restarted app) changes nothing.
            let again = client.pay_hold(hold.id, &payment_ref).await?;
            assert_eq!(again.status, OrderStatus::Confirmed);
        }
        Err(why) => {
            let released = client.release_hold(hold.id).await?;
            println!(
                "payment failed ({why}); order {} {:?}",
                released.id, released.status
            );
        }
    }
    // A buyer who changes their mind: the units go back at once.
    let second = client.hold(items, Some(60_000)).await?.order;
    let released = client.release_hold(second.id).await?;
    println!(
        "order {} {:?}: its unit is on sale again",
        released.id, released.status
    );
    Ok(())
}
