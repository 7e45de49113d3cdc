//! Security writes of the real `flashsale-server` binary are on disk before
//! they are answered: a revoke, a logout or a disable answered just before a
//! `kill -9` still holds after the restart. And a data dir of schema 1 (user
//! records without `disabled`, sessions keyed by their token) is migrated at
//! open: its users log in, its old sessions are gone.

use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use flashsale_client::protocol::{ErrorCode, Role, UserId};
use flashsale_client::{Client, ClientError};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use tempfile::TempDir;

mod process;
use process::{free_addr, ServerProcess};

const ADMIN_PASSWORD: &str = "accounts-admin-password";
const USER_PASSWORD: &str = "accounts-user-password";

async fn start(dir: &Path, addr: SocketAddr) -> ServerProcess {
    ServerProcess::start(
        dir,
        addr,
        &["--sync", "always"],
        ADMIN_PASSWORD,
        "warn",
        false,
    )
    .await
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> Client {
    let client = Client::connect(addr).await.expect("connect");
    client.login(user, password).await.expect("login");
    client
}

/// A server on a fresh data dir (with its dir and address), and its admin
/// logged in.
async fn fresh() -> (TempDir, SocketAddr, ServerProcess, Client) {
    let dir = TempDir::new().expect("temp dir");
    let addr = free_addr();
    let server = start(dir.path(), addr).await;
    let admin = login(addr, "admin", ADMIN_PASSWORD).await;
    (dir, addr, server, admin)
}

/// Kills `server` with SIGKILL, starts it again on the same data dir and
/// address, and connects a client without a session.
async fn kill_and_restart(
    server: ServerProcess,
    dir: &Path,
    addr: SocketAddr,
) -> (ServerProcess, Client) {
    server.kill().await;
    let server = start(dir, addr).await;
    let client = Client::connect(addr).await.expect("connect");
    (server, client)
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    result.err().and_then(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_answered_just_before_a_kill_keeps_the_key_revoked() {
    let (dir, addr, server, admin) = fresh().await;
    admin
        .create_user("shop", USER_PASSWORD, Role::Partner)
        .await
        .expect("partner");
    let key = admin.create_api_key("shop").await.expect("key");
    let partner = Client::connect(addr).await.expect("connect");
    partner
        .login_api_key(&key.key)
        .await
        .expect("the key logs in");
    admin.revoke_api_key(&key.key_id).await.expect("revoke");
    let (server, again) = kill_and_restart(server, dir.path(), addr).await;
    assert_eq!(
        code(again.login_api_key(&key.key).await),
        Some(ErrorCode::Unauthenticated)
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_answered_just_before_a_kill_keeps_the_token_dead() {
    let (dir, addr, server, admin) = fresh().await;
    admin
        .create_user("leaver", USER_PASSWORD, Role::Buyer)
        .await
        .expect("buyer");
    let buyer = Client::connect(addr).await.expect("connect");
    let session = buyer.login("leaver", USER_PASSWORD).await.expect("login");
    // A login is not synced on its own: a durable write after it puts the
    // session on disk, so only the logout can end it.
    admin
        .create_user("sync-point", USER_PASSWORD, Role::Buyer)
        .await
        .expect("a synced write");
    buyer.logout().await.expect("logout");
    let (server, again) = kill_and_restart(server, dir.path(), addr).await;
    assert_eq!(
        code(again.resume(&session.token).await),
        Some(ErrorCode::Unauthenticated)
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_answered_just_before_a_kill_keeps_the_account_disabled() {
    let (dir, addr, server, admin) = fresh().await;
    admin
        .create_user("gone", USER_PASSWORD, Role::Buyer)
        .await
        .expect("buyer");
    let buyer = Client::connect(addr).await.expect("connect");
    let session = buyer.login("gone", USER_PASSWORD).await.expect("login");
    admin
        .set_user_disabled("gone", true)
        .await
        .expect("disable");
    let (server, again) = kill_and_restart(server, dir.path(), addr).await;
    assert_eq!(
        code(again.resume(&session.token).await),
        Some(ErrorCode::Unauthenticated)
    );
    assert_eq!(
        code(again.login("gone", USER_PASSWORD).await),
        Some(ErrorCode::Unauthenticated)
    );
    server.kill().await;
}

/// A user record as schema 1 stored it.
#[derive(Serialize)]
struct UserRecordV1 {
    id: UserId,
    username: String,
    role: Role,
    password_hash: String,
}

/// A session record as schema 1 stored it (under the token itself).
#[derive(Serialize)]
struct SessionRecordV1 {
    user_id: UserId,
    username: String,
    role: Role,
    created_at_ms: u64,
    api_key_id: Option<String>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encode")
}

/// Writes a schema-1 data dir by hand: an admin and a buyer, and a session
/// of the buyer keyed by its token.
fn write_v1_data_dir(dir: &Path, old_token: &str) {
    let db = sled::open(dir).expect("sled");
    let meta = db.open_tree("meta").expect("meta");
    meta.insert("schema_version", &1u32.to_be_bytes())
        .expect("version");
    let users = db.open_tree("users").expect("users");
    let hasher = argon2::Argon2::default();
    for (id, name, role, password) in [
        (1, "admin", Role::Admin, ADMIN_PASSWORD),
        (2, "veteran", Role::Buyer, USER_PASSWORD),
    ] {
        let salt = SaltString::generate(&mut OsRng);
        let password_hash = hasher
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string();
        let record = UserRecordV1 {
            id: UserId(id),
            username: name.into(),
            role,
            password_hash,
        };
        users.insert(name, encode(&record)).expect("user");
    }
    let sessions = db.open_tree("sessions").expect("sessions");
    let session = SessionRecordV1 {
        user_id: UserId(2),
        username: "veteran".into(),
        role: Role::Buyer,
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
        api_key_id: None,
    };
    sessions
        .insert(old_token.as_bytes(), encode(&session))
        .expect("session");
    db.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_data_dir_is_migrated_its_users_log_in_and_its_sessions_are_dropped() {
    let dir = TempDir::new().expect("temp dir");
    let old_token = "ab".repeat(32);
    write_v1_data_dir(dir.path(), &old_token);
    let addr = free_addr();
    let server = start(dir.path(), addr).await;
    let admin = login(addr, "admin", ADMIN_PASSWORD).await;
    let users = admin.users(None, 0).await.expect("list");
    let names: Vec<(&str, Role, bool)> = users
        .iter()
        .map(|u| (u.username.as_str(), u.role, u.disabled))
        .collect();
    assert_eq!(
        names,
        [
            ("admin", Role::Admin, false),
            ("veteran", Role::Buyer, false)
        ]
    );
    let veteran = login(addr, "veteran", USER_PASSWORD).await;
    veteran.cart().await.expect("served");
    let old = Client::connect(addr).await.expect("connect");
    assert_eq!(
        code(old.resume(&old_token).await),
        Some(ErrorCode::Unauthenticated),
        "schema 1 sessions are dropped"
    );
    // The new records keep working after a restart (the migration ran once).
    server.kill().await;
    let server = start(dir.path(), addr).await;
    login(addr, "veteran", USER_PASSWORD).await;
    server.kill().await;
}
