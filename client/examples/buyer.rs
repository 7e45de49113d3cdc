//! A buyer app in a few lines: log in, put the first product still in stock
//! in the cart, pay, and print the outcome.
//!
//! Start a demo server (`cargo run --release --bin flashsale-server -- --demo`),
//! then run, with a buyer's name and the password it printed:
//!
//! ```text
//! cargo run -p flashsale-client --example buyer -- alice <password> [127.0.0.1:7878]
//! ```
//!
//! For a cluster, the last argument lists every node, comma-separated.

use flashsale_client::protocol::OrderStatus;
use flashsale_client::{Client, ClientConfig, ErrorCode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(username), Some(password)) = (args.next(), args.next()) else {
        eprintln!("usage: buyer <username> <password> [addr[,addr…]]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());

    let client = Client::connect_nodes(&addr, ClientConfig::default()).await?;
    let session = client.login(&username, &password).await?;
    println!("logged in as {} ({:?})", session.username, session.role);

    let products = client.products().await?;
    let Some(product) = products.iter().find(|p| p.stock > 0) else {
        println!("everything is sold out");
        return Ok(());
    };
    client.cart_add(product.id, 1).await?;
    println!("cart: 1 × {} ({} left)", product.name, product.stock);

    match client.pay().await {
        Ok(placed) => {
            println!("order {} accepted", placed.order.id);
            let order = placed.outcome().await?;
            match order.status {
                OrderStatus::Confirmed => println!("order {} confirmed", order.id),
                other => println!("order {} not confirmed: {other:?}", order.id),
            }
        }
        Err(e) if e.code() == Some(ErrorCode::SoldOut) => println!("sold out: {e}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
