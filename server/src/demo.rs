//! The demo data set: an admin, three buyers and a few scarce products.

use crate::error::ApiResult;
use crate::server::ServerHandle;
use flashsale_protocol::{ProductInfo, Role};
use rand::distributions::{Alphanumeric, DistString};

/// An account the demo created, with its password (shown once).
#[derive(Debug, Clone)]
pub struct DemoAccount {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// Role.
    pub role: Role,
}

/// What the demo created.
#[derive(Debug, Clone)]
pub struct DemoData {
    /// The accounts, admin first.
    pub accounts: Vec<DemoAccount>,
    /// The products.
    pub products: Vec<ProductInfo>,
}

/// A random 16-character password.
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 16)
}

/// Seeds an empty data dir; does nothing (returns `None`) if it holds accounts.
/// The admin password is `admin_password` when given, else random.
///
/// # Errors
/// A creation failed.
pub async fn seed(
    server: &ServerHandle,
    admin_password: Option<String>,
) -> ApiResult<Option<DemoData>> {
    if !server.is_empty() {
        return Ok(None);
    }
    let mut accounts = vec![DemoAccount {
        username: "admin".into(),
        password: admin_password.unwrap_or_else(random_password),
        role: Role::Admin,
    }];
    for name in ["alice", "bob", "carol"] {
        accounts.push(DemoAccount {
            username: name.into(),
            password: random_password(),
            role: Role::Buyer,
        });
    }
    for account in &accounts {
        server
            .create_user(&account.username, &account.password, account.role)
            .await?;
    }
    let mut products = Vec::new();
    for (name, price_cents, stock) in [
        ("Limited sneakers", 12_900, 5),
        ("Concert ticket", 8_500, 2),
        ("Vinyl record", 2_900, 10),
    ] {
        products.push(server.create_product(name, price_cents, stock).await?);
    }
    Ok(Some(DemoData { accounts, products }))
}
