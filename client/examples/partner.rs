//! A partner's server: one pooled client, many buyers, express checkout,
//! outcomes from the push stream and a catch-up with `orders`.
//!
//! Start a demo server, create a partner account and its API key with an
//! admin client (see the README), then run:
//!
//! ```text
//! cargo run -p flashsale-client --example partner -- <api key> [127.0.0.1:7878]
//! ```

use flashsale_client::protocol::{OrderLine, OrderStatus, Push};
use flashsale_client::{Client, ClientConfig, ErrorCode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(key) = args.next() else {
        eprintln!("usage: partner <api key> [addr]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());

    // Four connections; the client reconnects, resumes the session and
    // retries pay intents with their idempotency keys by itself.
    let config = ClientConfig {
        connections: 4,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(addr.as_str(), config).await?;
    let session = client.login_api_key(&key).await?;
    println!("partner {} logged in", session.username);

    // Outcomes of every order of our buyers arrive here.
    let mut pushes = client.pushes();
    tokio::spawn(async move {
        while let Some(Push::OrderUpdate(order)) = pushes.next().await {
            let buyer = order
                .partner
                .as_ref()
                .map(|p| p.buyer_ref.0.clone())
                .unwrap_or_default();
            println!("push: order {} of {buyer} is {:?}", order.id, order.status);
        }
    });

    let products = client.products().await?;
    let Some(product) = products.first() else {
        println!("no products");
        return Ok(());
    };
    // Twenty of our buyers try to buy one unit each, all at once.
    let attempts = (0..20).map(|i| {
        let buyer = client.acting_for(format!("our-user-{i}"));
        let line = OrderLine {
            product_id: product.id,
            qty: 1,
        };
        async move { (i, buyer.buy(vec![line]).await) }
    });
    for (i, result) in futures::future::join_all(attempts).await {
        match result {
            Ok(placed) if placed.order.status == OrderStatus::Confirmed => {
                println!("our-user-{i}: confirmed order {}", placed.order.id)
            }
            Ok(placed) => println!("our-user-{i}: {:?}", placed.order.status),
            Err(e) if e.code() == Some(ErrorCode::SoldOut) => println!("our-user-{i}: sold out"),
            Err(e) => println!("our-user-{i}: failed: {e}"),
        }
    }

    // After a restart of our own service: catch up on every outcome since the last seen order.
    let all = client.orders(None, 0).await?;
    println!("{} orders of our buyers so far", all.len());
    Ok(())
}
