//! A partner's rush: a thousand of its buyers try to buy the first product
//! through one `OrderStream`, at most 256 attempts in flight.
//!
//! Start a demo server, create a partner account and its API key with an
//! admin client (see the README), then run:
//!
//! ```text
//! cargo run -p flashsale-client --example order_stream -- <api key> [127.0.0.1:7878]
//! ```

use flashsale_client::protocol::{BuyerRef, OrderLine, OrderStatus, ProductId};
use flashsale_client::{Client, ClientError};
use uuid::Uuid;

/// Every buyer tries once; prints each outcome as it arrives.
async fn rush(partner: &Client, product: ProductId, buyers: &[String]) -> Result<(), ClientError> {
    let mut stream = partner.order_stream().await?;
    let mut next_buyer = 0;
    let mut confirmed = 0;
    loop {
        // Keep up to 256 attempts in flight.
        while next_buyer < buyers.len() && stream.in_flight() < 256 {
            let line = OrderLine {
                product_id: product,
                qty: 1,
            };
            let buyer = Some(BuyerRef(buyers[next_buyer].clone()));
            stream
                .buy(buyer, vec![line], Uuid::new_v4(), next_buyer as u64)
                .await?;
            next_buyer += 1;
        }
        let Some(answer) = stream.next().await else {
            break;
        };
        let buyer = &buyers[answer.tag as usize];
        match answer.result {
            Ok(order) if order.status == OrderStatus::Confirmed => confirmed += 1,
            Ok(order) => println!("{buyer}: {:?}", order.status),
            Err(e) => println!("{buyer}: {e} (retryable: {})", e.is_retryable()),
        }
    }
    println!("{confirmed} of {} buyers got one", buyers.len());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(key) = args.next() else {
        eprintln!("usage: order_stream <api key> [addr]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let partner = Client::connect(addr.as_str()).await?;
    partner.login_api_key(&key).await?;
    let Some(product) = partner.products().await?.first().map(|p| p.id) else {
        println!("no products");
        return Ok(());
    };
    let buyers: Vec<String> = (0..1000).map(|i| format!("rush-buyer-{i}")).collect();
    rush(&partner, product, &buyers).await?;
    Ok(())
}
