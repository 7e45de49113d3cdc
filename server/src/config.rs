//! Server configuration: every limit has a name, a default and a reason.

use crate::net::login_throttle::LoginPolicy;
use crate::net::rate_limit::RateLimit;
use crate::net::tls::ServerTls;
use std::path::PathBuf;
use std::time::Duration;

/// One node of a cluster (see the README's "Running a cluster").
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers of the JetStream cluster (any one is enough to connect;
    /// list them all so a lost one is not the only way in).
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster; shown in logs and `Stats`.
    pub node_id: String,
    /// Where clients reach this node (`HOST:PORT`): standbys send it to
    /// clients as the leader's address.
    pub advertise: String,
    /// Name of the replicated stream; the lease bucket and the subject are
    /// named after it. One cluster, one name. Default `FLASHSALE`.
    pub stream: String,
    /// Replicas of the stream and of the lease bucket (1 only for trying
    /// it with one NATS server). Default 3.
    pub replicas: usize,
    /// How long a leader's lease lives without renewal: a dead leader is
    /// replaced after about this long. Renewed every third of it. Default 3 s.
    pub lease_ttl: Duration,
    /// How often a standby stores a snapshot of its data dir in the
    /// cluster's object store and trims the stream behind it (zero: never;
    /// the stream then keeps every entry). Default 5 minutes.
    pub snapshot_interval: Duration,
}

impl ClusterConfig {
    /// Default stream name.
    pub const DEFAULT_STREAM: &'static str = "FLASHSALE";
    /// Default lease time.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
    /// Default time between snapshots.
    pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);

    /// A node of the cluster on `nats_urls`, with the defaults above.
    pub fn new(
        nats_urls: Vec<String>,
        node_id: impl Into<String>,
        advertise: impl Into<String>,
    ) -> Self {
        Self {
            nats_urls,
            node_id: node_id.into(),
            advertise: advertise.into(),
            stream: Self::DEFAULT_STREAM.to_owned(),
            replicas: 3,
            lease_ttl: Self::DEFAULT_LEASE_TTL,
            snapshot_interval: Self::DEFAULT_SNAPSHOT_INTERVAL,
        }
    }
}

/// How hard the sequencer pushes each batch of decisions to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Flush sled and `fdatasync` the data file before any answer of the batch
    /// is sent. An answered order survives a crash or power failure.
    Always,
    /// Write the batch to sled and answer at once; sled flushes in the
    /// background every 500 ms. **Benchmarking only**: a crash or power
    /// failure may lose orders already answered.
    Relaxed,
}

/// Cost parameters of argon2id password hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashing {
    /// Memory per hash in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for PasswordHashing {
    /// OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordHashing {
    /// The cheapest parameters argon2 allows. For tests that create hundreds
    /// of accounts; never for a server facing users.
    pub fn insecure_fast_for_tests() -> Self {
        Self {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }
}

/// Everything the server needs to know; built by the binary from flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the sled database; created if missing.
    pub data_dir: PathBuf,
    /// Number of pay queues; products are spread over them by id, so a storm
    /// on one product fills only its own queue.
    pub shards: usize,
    /// Commands one shard queue holds before intake answers `Overloaded`.
    /// Must cover the arrivals during one flush (~1 ms) at peak rate.
    pub shard_queue_capacity: usize,
    /// Most decisions per journal record; bounds the latency one batch adds.
    pub max_batch: usize,
    /// Open connections before the server stops accepting new ones.
    pub max_connections: usize,
    /// Requests one connection may have unanswered; the server stops reading
    /// from a connection at this limit, so one client cannot queue unbounded work.
    pub max_in_flight_per_connection: usize,
    /// Pushes buffered per connection; beyond it pushes are dropped (the
    /// outcome stays available through `GetOrder`/`ListOrders`).
    pub push_buffer: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame_len: usize,
    /// Time a new connection has to send its `Hello`.
    pub handshake_timeout: Duration,
    /// Time shutdown waits for in-flight requests before closing connections.
    pub shutdown_grace: Duration,
    /// Most orders one `ListOrders` returns.
    pub list_orders_page: u32,
    /// Durability of each batch of decisions.
    pub sync: SyncMode,
    /// argon2id cost.
    pub password_hashing: PasswordHashing,
    /// How long a session token works after its login; then the client must
    /// log in again. Bounds the damage of a leaked token.
    pub session_ttl: Duration,
    /// Pay requests (`Pay`, `Buy`) per buyer account; a human cannot click
    /// faster, a bot hoarding a drop gets `Overloaded`. `None`: unlimited.
    pub pay_rate_per_buyer: Option<RateLimit>,
    /// Pay requests per partner account (all its buyers together). `None`:
    /// unlimited; partners are bounded by their connections' limits.
    pub pay_rate_per_partner: Option<RateLimit>,
    /// Pay requests per connection, whoever is logged in on it. `None`: unlimited.
    pub pay_rate_per_connection: Option<RateLimit>,
    /// Failed-login throttling.
    pub login_policy: LoginPolicy,
    /// Serve TLS with this identity instead of plain TCP. Default `None`.
    pub tls: Option<ServerTls>,
    /// Run as one node of a cluster replicated on NATS JetStream instead of
    /// alone. Default `None`: a single server.
    pub cluster: Option<ClusterConfig>,
    /// A connection that sends no complete frame for this long is closed
    /// (slow-loris and forgotten connections); clients send `Ping` to stay.
    pub idle_timeout: Duration,
    /// A connection without a session this long after it opened is closed,
    /// so anonymous connections (even pinging ones) cannot hold slots.
    pub login_timeout: Duration,
    /// Open connections from one address (one /64 for IPv6), counted from
    /// accept; at the cap, the address's oldest connection without a
    /// session makes room, and without one the new connection is refused.
    pub max_connections_per_peer: usize,
    /// Bytes of answers one connection may have queued unwritten before the
    /// server stops reading its requests (a client that pipelines large
    /// listings and never reads cannot make the server hold more).
    pub max_reply_bytes_per_connection: usize,
    /// Most products one `ListProducts`/`ListProductsPage` answer holds.
    pub list_products_page: u32,
    /// Live sessions of one account; a login beyond it ends the account's
    /// oldest session.
    pub max_sessions_per_account: usize,
    /// Logins (successful or not) per account, before hashing. `None`: unlimited.
    pub login_rate_per_account: Option<RateLimit>,
    /// Logins (successful or not) per peer address (per /64 for IPv6),
    /// before hashing. `None`: unlimited.
    pub login_rate_per_peer: Option<RateLimit>,
    /// New buyer references per partner. `None`: unlimited.
    pub new_buyers_per_partner: Option<RateLimit>,
    /// Buyer references one partner may create in total.
    pub max_buyers_per_partner: u64,
    /// Journal records between two checkpoints (and by time, see
    /// [`Config::checkpoint_interval`]): bounds the journal on disk and the
    /// replay at start.
    pub checkpoint_records: u64,
    /// Longest time between two checkpoints while orders come in.
    pub checkpoint_interval: Duration,
    /// How long an idempotency key is kept: a retry inside it gets the
    /// order its key made, after it the key is a new intent.
    pub key_retention: Duration,
    /// Keys the idempotency-key filter is sized for per retention window
    /// (about 1.2 bytes each, twice): beyond it lookups read the key table
    /// more often, never wrongly.
    pub key_filter_capacity: usize,
    /// Orders published but not yet written to the order tables; beyond it
    /// the journal waits for the materialiser (bounds memory in a long peak).
    pub max_unmaterialised: usize,
    /// Partners' buyer references kept in memory (most recently used);
    /// the others are read from sled on use. Bounds the memory of the
    /// references: at most this many entries of up to 128 bytes each.
    pub partner_buyer_cache: usize,
    /// Online backups streaming at once, server-wide; one more is refused
    /// with `Overloaded`. Each holds a thread, a few chunks of memory and
    /// (for its whole stream) the checkpointer's journal truncation back.
    pub max_backups: usize,
    /// Bytes of the backup file per `BackupChunk` answer; kept between
    /// 1 KiB and `max_frame_len`, so a chunk is far below the answer frame
    /// limit.
    pub backup_chunk_bytes: usize,
    /// How long a hold lasts for products without their own hold time
    /// (a request may ask for less). Default 10 minutes.
    pub default_hold: Duration,
}

impl Config {
    /// Default [`Config::shard_queue_capacity`].
    pub const DEFAULT_SHARD_QUEUE_CAPACITY: usize = 8192;
    /// Default [`Config::max_batch`].
    pub const DEFAULT_MAX_BATCH: usize = 4096;
    /// Default [`Config::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    /// Default [`Config::max_in_flight_per_connection`].
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
    /// Default [`Config::push_buffer`].
    pub const DEFAULT_PUSH_BUFFER: usize = 1024;
    /// Default [`Config::handshake_timeout`].
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`Config::shutdown_grace`].
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    /// Default [`Config::list_orders_page`].
    pub const DEFAULT_LIST_ORDERS_PAGE: u32 = 1000;
    /// Default [`Config::session_ttl`]: a day.
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
    /// Default [`Config::pay_rate_per_buyer`]: 20 a second, 40 at once.
    pub const DEFAULT_PAY_RATE_PER_BUYER: Option<RateLimit> = Some(RateLimit {
        per_second: 20,
        burst: 40,
    });
    /// Default [`Config::pay_rate_per_partner`]: 20 000 a second, 40 000 at
    /// once; bounds the orders (rejected ones included) a partner can make
    /// for fresh buyer references.
    pub const DEFAULT_PAY_RATE_PER_PARTNER: Option<RateLimit> = Some(RateLimit {
        per_second: 20_000,
        burst: 40_000,
    });
    /// Default [`Config::pay_rate_per_connection`]: 50 000 a second.
    pub const DEFAULT_PAY_RATE_PER_CONNECTION: Option<RateLimit> = Some(RateLimit {
        per_second: 50_000,
        burst: 50_000,
    });
    /// Default [`Config::idle_timeout`]: five minutes.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// Default [`Config::login_timeout`]: a minute.
    pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default [`Config::max_connections_per_peer`].
    pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
    /// Default [`Config::max_reply_bytes_per_connection`]: 4 MiB.
    pub const DEFAULT_MAX_REPLY_BYTES: usize = 4 << 20;
    /// Default [`Config::list_products_page`].
    pub const DEFAULT_LIST_PRODUCTS_PAGE: u32 = 1000;
    /// Default [`Config::max_sessions_per_account`].
    pub const DEFAULT_MAX_SESSIONS_PER_ACCOUNT: usize = 256;
    /// Default [`Config::login_rate_per_account`]: 10 a second, 20 at once.
    pub const DEFAULT_LOGIN_RATE_PER_ACCOUNT: Option<RateLimit> = Some(RateLimit {
        per_second: 10,
        burst: 20,
    });
    /// Default [`Config::login_rate_per_peer`]: 20 a second, 50 at once.
    pub const DEFAULT_LOGIN_RATE_PER_PEER: Option<RateLimit> = Some(RateLimit {
        per_second: 20,
        burst: 50,
    });
    /// Default [`Config::new_buyers_per_partner`]: 1 000 a second, 10 000 at once.
    pub const DEFAULT_NEW_BUYERS_PER_PARTNER: Option<RateLimit> = Some(RateLimit {
        per_second: 1_000,
        burst: 10_000,
    });
    /// Default [`Config::max_buyers_per_partner`].
    pub const DEFAULT_MAX_BUYERS_PER_PARTNER: u64 = 1_000_000;
    /// Default [`Config::checkpoint_records`].
    pub const DEFAULT_CHECKPOINT_RECORDS: u64 = 1000;
    /// Default [`Config::checkpoint_interval`]: 10 s.
    pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
    /// Default [`Config::key_retention`]: a day, as payment APIs keep keys.
    pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);
    /// Default [`Config::key_filter_capacity`]: 10 million keys (24 MB).
    pub const DEFAULT_KEY_FILTER_CAPACITY: usize = 10_000_000;
    /// Default [`Config::max_unmaterialised`].
    pub const DEFAULT_MAX_UNMATERIALISED: usize = 500_000;
    /// Default [`Config::partner_buyer_cache`]: 100 000 references (about
    /// 10 MB with 32-byte references).
    pub const DEFAULT_PARTNER_BUYER_CACHE: usize = 100_000;
    /// Default [`Config::max_backups`].
    pub const DEFAULT_MAX_BACKUPS: usize = 1;
    /// Default hold time.
    pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);
    /// Default [`Config::backup_chunk_bytes`]: 32 KiB.
    pub const DEFAULT_BACKUP_CHUNK_BYTES: usize = 32 * 1024;

    /// Defaults for a server keeping its data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shard_queue_capacity: Self::DEFAULT_SHARD_QUEUE_CAPACITY,
            max_batch: Self::DEFAULT_MAX_BATCH,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_connection: Self::DEFAULT_MAX_IN_FLIGHT,
            push_buffer: Self::DEFAULT_PUSH_BUFFER,
            max_frame_len: flashsale_protocol::DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            list_orders_page: Self::DEFAULT_LIST_ORDERS_PAGE,
            sync: SyncMode::Always,
            password_hashing: PasswordHashing::default(),
            session_ttl: Self::DEFAULT_SESSION_TTL,
            pay_rate_per_buyer: Self::DEFAULT_PAY_RATE_PER_BUYER,
            pay_rate_per_partner: Self::DEFAULT_PAY_RATE_PER_PARTNER,
            pay_rate_per_connection: Self::DEFAULT_PAY_RATE_PER_CONNECTION,
            login_policy: LoginPolicy::default(),
            tls: None,
            cluster: None,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            login_timeout: Self::DEFAULT_LOGIN_TIMEOUT,
            max_connections_per_peer: Self::DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_reply_bytes_per_connection: Self::DEFAULT_MAX_REPLY_BYTES,
            list_products_page: Self::DEFAULT_LIST_PRODUCTS_PAGE,
            max_sessions_per_account: Self::DEFAULT_MAX_SESSIONS_PER_ACCOUNT,
            login_rate_per_account: Self::DEFAULT_LOGIN_RATE_PER_ACCOUNT,
            login_rate_per_peer: Self::DEFAULT_LOGIN_RATE_PER_PEER,
            new_buyers_per_partner: Self::DEFAULT_NEW_BUYERS_PER_PARTNER,
            max_buyers_per_partner: Self::DEFAULT_MAX_BUYERS_PER_PARTNER,
            checkpoint_records: Self::DEFAULT_CHECKPOINT_RECORDS,
            checkpoint_interval: Self::DEFAULT_CHECKPOINT_INTERVAL,
            key_retention: Self::DEFAULT_KEY_RETENTION,
            key_filter_capacity: Self::DEFAULT_KEY_FILTER_CAPACITY,
            max_unmaterialised: Self::DEFAULT_MAX_UNMATERIALISED,
            partner_buyer_cache: Self::DEFAULT_PARTNER_BUYER_CACHE,
            max_backups: Self::DEFAULT_MAX_BACKUPS,
            backup_chunk_bytes: Self::DEFAULT_BACKUP_CHUNK_BYTES,
            default_hold: Self::DEFAULT_HOLD,
        }
    }
}
