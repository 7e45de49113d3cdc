//! The server: opens the data dir, recovers, runs the sequencer and journal,
//! accepts connections, and shuts down in order.

use crate::cluster::node::{Exit, StartEngine};
use crate::config::Config;
use crate::error::{ApiError, ApiResult, ServerError};
use crate::net::connection;
use crate::net::rate_limit::PeerConnections;
use crate::net::reply::ReplyTo;
use crate::sale::book::Book;
use crate::sale::queues::{self, Command, ShardReceivers};
use crate::sale::sequencer;
use crate::sale::{journal, materialise};
use crate::state::Shared;
use crate::store::Store;
use flashsale_protocol::{ErrorCode, ProductId, ProductInfo, Reply, Role, UserInfo};
use flashsale_protocol::{ServerCodec, ServerFrame};
use futures::SinkExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Batches waiting for the journal; more would only add latency, since the
/// journal writes everything waiting under one flush anyway.
const JOURNAL_QUEUE: usize = 4;

/// Connections over the limit being told `Overloaded` at once; beyond this
/// many, further ones are closed without a word.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;

/// Time to tell a refused connection why before closing it.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (for example out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// An opened, recovered server, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    /// The sequencer and the journal: started by `open` on a single server,
    /// by the cluster node once it leads.
    engine: Arc<std::sync::Mutex<EngineSlot>>,
    /// Cluster mode: the node's task and what tells it to stop.
    node: Option<(tokio::task::JoinHandle<Exit>, CancellationToken)>,
    materialiser: std::thread::JoinHandle<()>,
    /// Cancelled by the journal when a write fails (or a cluster node
    /// steps down): the server must stop.
    fatal: CancellationToken,
}

/// Where the engine is, once started; closed at shutdown so a leadership
/// won meanwhile starts nothing.
#[derive(Default)]
struct EngineSlot {
    engine: Option<Engine>,
    closed: bool,
}

fn lock(slot: &std::sync::Mutex<EngineSlot>) -> std::sync::MutexGuard<'_, EngineSlot> {
    // A poisoned lock only means a panic elsewhere, which stops the server.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sequencer and the journal thread.
struct Engine {
    sequencer: tokio::task::JoinHandle<()>,
    journal: std::thread::JoinHandle<()>,
    stop: CancellationToken,
    /// Told once the holds due at start are expired and published.
    ready: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Engine {
    /// Starts the journal thread and the sequencer task on `book`.
    fn start(
        shared: &Arc<Shared>,
        book: Book,
        next_seq: u64,
        queues: ShardReceivers,
        fatal: &CancellationToken,
    ) -> Result<Self, ServerError> {
        let (to_journal, batches) = tokio::sync::mpsc::channel(JOURNAL_QUEUE);
        let journal = journal::spawn(Arc::clone(shared), batches, next_seq, fatal.clone())?;
        let stop = CancellationToken::new();
        let (ready, ready_rx) = tokio::sync::oneshot::channel();
        let run = tokio::spawn(sequencer::run(
            sequencer::Sequencer {
                book,
                shared: Arc::clone(shared),
                journal: to_journal,
                max_batch: shared.config.max_batch.max(1),
            },
            queues,
            stop.clone(),
            fatal.clone(),
            ready,
        ));
        // A sequencer that dies (a broken invariant asserts) stops the server:
        // nothing can be decided any more.
        let sequencer_failed = fatal.clone();
        let sequencer = tokio::spawn(async move {
            if let Err(e) = run.await {
                tracing::error!(error = %e, "the sequencer failed; stopping the server");
                sequencer_failed.cancel();
            }
        });
        Ok(Self {
            sequencer,
            journal,
            stop,
            ready: Some(ready_rx),
        })
    }

    /// Completes once the holds due at start are expired and published
    /// (at once if the sequencer stopped first).
    async fn ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.await;
        }
    }

    /// Drains the queues, decides and flushes, then stops.
    async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.sequencer.await {
            tracing::error!(error = %e, "sequencer task failed");
        }
        let journal = self.journal;
        let joined = tokio::task::spawn_blocking(move || journal.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("journal thread failed");
        }
    }
}

/// The engine start a cluster node calls once it leads.
fn start_later(
    shared: &Arc<Shared>,
    queues: ShardReceivers,
    fatal: &CancellationToken,
    slot: &Arc<std::sync::Mutex<EngineSlot>>,
) -> StartEngine {
    let (shared, fatal, slot) = (Arc::clone(shared), fatal.clone(), Arc::clone(slot));
    Box::new(move |book, next_seq| {
        let mut slot = lock(&slot);
        if slot.closed {
            return Err(ServerError::SequencerStopped);
        }
        slot.engine = Some(Engine::start(&shared, book, next_seq, queues, &fatal)?);
        Ok(())
    })
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the data dir, replays the journal and starts the sequencer.
    /// Every order in the journal is visible before this returns.
    ///
    /// # Errors
    /// The data dir cannot be opened (in use, newer schema, corrupt).
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        let shard_count = config.shards.max(1);
        let (shards, queues) = queues::shards(shard_count, config.shard_queue_capacity);
        // Cancelled when a journal write or a sync fails, the sequencer
        // dies, or a cluster node steps down: the server must stop.
        let fatal = CancellationToken::new();
        let failed = fatal.clone();
        // A cluster node reaches NATS first: a data dir behind the stream's
        // trimmed start is replaced by the latest snapshot before it opens.
        let nats = match &config.cluster {
            Some(cluster) => {
                let nats = crate::cluster::node::Nats::connect(cluster).await?;
                crate::cluster::snapshot::restore_if_behind(
                    &nats.stream,
                    &nats.snapshots,
                    &config.data_dir,
                )
                .await?;
                Some(nats)
            }
            None => None,
        };
        let opened = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            let store = match config.cluster {
                Some(_) => crate::cluster::node::open_store(&config.data_dir)?,
                None => Store::open(&config.data_dir)?,
            };
            let shared = Arc::new(Shared::new(config, store, shards, failed)?);
            let expired = shared.accounts.auth.remove_expired_sessions()?;
            if expired > 0 {
                tracing::info!(expired, "expired sessions removed");
            }
            let recovered = journal::recover(&shared)?;
            Ok((shared, recovered))
        })
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        let (shared, recovered) = opened?;
        let journal::Recovered {
            book,
            next_seq,
            shadow,
        } = recovered;
        spawn_key_loader(&shared)?;
        let materialiser = materialise::spawn(Arc::clone(&shared), shadow, fatal.clone())?;
        let engine = Arc::new(std::sync::Mutex::new(EngineSlot::default()));
        // `nats` is there exactly in cluster mode.
        let node = match nats.zip(shared.cluster.clone()) {
            None => {
                let mut started = Engine::start(&shared, book, next_seq, queues, &fatal)?;
                // Holds that expired while the server was down are back in
                // stock before it takes a request.
                started.ready().await;
                lock(&engine).engine = Some(started);
                None
            }
            Some((nats, cluster)) => {
                let node = crate::cluster::node::Node::new(
                    nats,
                    Arc::clone(&shared),
                    Arc::clone(&cluster),
                );
                let applier = crate::cluster::applier::Applier::new(
                    Arc::clone(&shared),
                    cluster,
                    book,
                    next_seq,
                )?;
                let start = start_later(&shared, queues, &fatal, &engine);
                let stop = CancellationToken::new();
                let task = tokio::spawn(node.run(applier, start, stop.clone(), fatal.clone()));
                Some((task, stop))
            }
        };
        tracing::info!(
            data_dir = %shared.config.data_dir.display(),
            shards = shard_count,
            products = shared.sale.catalog.list().len(),
            cluster = shared.cluster.is_some(),
            "server ready"
        );
        Ok(Self {
            shared,
            engine,
            node,
            materialiser,
            fatal,
        })
    }

    /// A handle for creating the first accounts and products (the demo
    /// data), usable while the server serves.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// True when the data dir holds no account yet.
    pub fn is_empty(&self) -> bool {
        self.handle().is_empty()
    }

    /// Creates an account, as an admin's `CreateUser` would (see
    /// [`ServerHandle::create_user`]).
    ///
    /// # Errors
    /// As `CreateUser`: invalid name or password, name taken.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
    ) -> ApiResult<UserInfo> {
        self.handle().create_user(username, password, role).await
    }

    /// Creates a product, as an admin's `CreateProduct` would (see
    /// [`ServerHandle::create_product`]).
    ///
    /// # Errors
    /// As `CreateProduct`: name taken, stock out of range.
    pub async fn create_product(
        &self,
        name: &str,
        price_cents: u64,
        stock: u64,
    ) -> ApiResult<ProductInfo> {
        self.handle().create_product(name, price_cents, stock).await
    }

    /// Serves connections from `listener` until `shutdown` completes (or a
    /// journal write fails), then shuts down in order: stop accepting, let
    /// in-flight requests finish, drain the queues, decide and flush, close.
    ///
    /// # Errors
    /// [`ServerError::SequencerStopped`] when the journal failed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Self {
            shared,
            engine,
            node,
            materialiser,
            fatal,
        } = self;
        let upkeep = tokio::spawn(upkeep(Arc::clone(&shared)));
        let close_connections = CancellationToken::new();
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                () = fatal.cancelled() => {}
            }
        };
        let connections = accept_until(&shared, listener, stop, &close_connections).await;
        upkeep.abort();
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        close_connections.cancel();
        finish(&shared, connections).await;
        let running = {
            let mut slot = lock(&engine);
            slot.closed = true;
            slot.engine.take()
        };
        if let Some(running) = running {
            running.stop().await;
        }
        // A leader publishes what the engine left, then hands the lease over.
        let exit = match node {
            Some((task, stop)) => {
                stop.cancel();
                task.await.unwrap_or(Exit::SteppedDown)
            }
            None => Exit::Stopped,
        };
        shared.sale.progress.stop();
        let joined = tokio::task::spawn_blocking(move || materialiser.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("materialiser thread failed");
        }
        let store = shared.store.clone();
        drop(shared);
        tokio::task::spawn_blocking(move || store.sync())
            .await
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))??;
        if exit == Exit::SteppedDown {
            return Err(ServerError::SteppedDown);
        }
        if fatal.is_cancelled() {
            return Err(ServerError::SequencerStopped);
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// A cheap handle to an open server, for the set-up its owner does while
/// it serves: the first accounts and products.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Completes once this server can take writes: at once on a single
    /// server; once it leads, on a cluster node.
    pub async fn writable(&self) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.leading().await;
        }
    }

    /// True when the data dir holds no account yet.
    pub fn is_empty(&self) -> bool {
        self.shared.accounts.auth.is_empty()
    }

    /// Creates an account, as an admin's `CreateUser` would.
    ///
    /// # Errors
    /// As `CreateUser`: invalid name or password, name taken.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        role: Role,
    ) -> ApiResult<UserInfo> {
        let (username, password) = (username.to_owned(), password.to_owned());
        let user = self
            .shared
            .hash_blocking(move |shared| {
                shared.accounts.auth.create_user(&username, &password, role)
            })
            .await?;
        // On disk before the caller hears of it, as an admin's `CreateUser`.
        self.shared.syncer.durable().await?;
        Ok(UserInfo {
            id: user.id,
            username: user.username,
            role: user.role,
            disabled: false,
        })
    }

    /// Creates a product through the sequencer, as an admin's `CreateProduct` would.
    ///
    /// # Errors
    /// As `CreateProduct`: name taken, stock out of range.
    pub async fn create_product(
        &self,
        name: &str,
        price_cents: u64,
        stock: u64,
    ) -> ApiResult<ProductInfo> {
        let (tx, rx) = oneshot::channel();
        let command = Command::CreateProduct {
            name: name.to_owned(),
            price_cents,
            stock,
            rules: flashsale_protocol::SaleRules::default(),
            reply: ReplyTo::Internal(tx),
        };
        self.shared.sale.queues.submit(ProductId(0), command);
        match rx.await {
            Ok(Ok(Reply::Product(product))) => Ok(product),
            Ok(Ok(_)) => Err(ApiError::new(ErrorCode::Internal, "unexpected reply")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::shutting_down()),
        }
    }
}

/// Loads the idempotency keys on disk into the key filter, in the
/// background at the lowest CPU priority: until it is done, key lookups of
/// users older than the process read the tables.
fn spawn_key_loader(shared: &Arc<Shared>) -> std::io::Result<()> {
    let keys = Arc::clone(&shared.sale.keys);
    std::thread::Builder::new()
        .name("flashsale-keys".into())
        .spawn(move || {
            crate::sale::materialise::lower_priority();
            let started = std::time::Instant::now();
            match keys.load() {
                Ok(count) => tracing::info!(
                    keys = count,
                    took_ms = started.elapsed().as_millis() as u64,
                    "idempotency key filter loaded"
                ),
                Err(e) => tracing::error!(error = %e, "could not load the idempotency key filter; key lookups read the table"),
            }
        })?;
    Ok(())
}

/// Accepts connections until `stop` completes; each runs as a task in the
/// returned set, with a token of `close_connections`. A connection over
/// [`Config::max_connections`] is refused; one over
/// [`Config::max_connections_per_peer`] makes room by closing its address's
/// oldest connection without a session, or is refused when there is none.
async fn accept_until(
    shared: &Arc<Shared>,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
    close_connections: &CancellationToken,
) -> JoinSet<()> {
    let connection_limit = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS));
    let peers = Arc::new(PeerConnections::new(shared.config.max_connections_per_peer));
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            () = &mut stop => return connections,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connection_limit).try_acquire_owned() else {
            refuse(stream, peer, shared, &refusals, Refusal::Server);
            continue;
        };
        let token = close_connections.child_token();
        let Some(ticket) = peers.admit(peer.ip(), token.clone()) else {
            refuse(stream, peer, shared, &refusals, Refusal::Peer);
            continue;
        };
        let shared = Arc::clone(shared);
        connections.spawn(async move {
            connection::serve(stream, peer, shared, token, Arc::clone(&ticket.slot)).await;
            drop(ticket);
            drop(permit);
        });
    }
}

/// Lets the connections (told to close) finish their in-flight requests
/// within the grace period, then closes those still open.
async fn finish(shared: &Shared, mut connections: JoinSet<()>) {
    let grace = shared.config.shutdown_grace + Duration::from_secs(1);
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
        connections.shutdown().await;
    }
}

/// How often idle rate-limit buckets (pays, new buyer references) are forgotten.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How often expired sessions are deleted while serving (they are also
/// refused on use, and swept at start).
const SESSION_SWEEP_EVERY: u32 = 10;

/// Periodic housekeeping while serving: forgets idle rate-limit buckets
/// every minute, deletes expired sessions every ten.
async fn upkeep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        shared.edge.pay_limits.forget_idle();
        shared.accounts.partners.forget_idle();
        ticks = ticks.wrapping_add(1);
        if ticks % SESSION_SWEEP_EVERY == 0 {
            let shared = Arc::clone(&shared);
            let swept =
                tokio::task::spawn_blocking(move || shared.accounts.auth.remove_expired_sessions())
                    .await;
            match swept {
                Ok(Ok(removed)) if removed > 0 => {
                    tracing::info!(removed, "expired sessions removed")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not sweep expired sessions"),
                _ => {}
            }
        }
    }
}

/// Which connection limit a refused connection is over.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// [`Config::max_connections`].
    Server,
    /// [`Config::max_connections_per_peer`], every connection of the
    /// address having a session.
    Peer,
}

/// Closes a connection over a connection limit, first telling a plain-TCP
/// client `Closing(Overloaded)` (a TLS client would need a handshake
/// first, which is the very work being shed: it is just closed).
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    refusals: &Arc<Semaphore>,
    over: Refusal,
) {
    // At most one line a second: a flood at the limit must not flood the log.
    static LAST_LOGGED_S: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now_s = crate::store::now_ms() / 1000;
    if LAST_LOGGED_S.swap(now_s, std::sync::atomic::Ordering::Relaxed) != now_s {
        match over {
            Refusal::Server => {
                tracing::warn!(%peer, limit = shared.config.max_connections, "connection limit reached; refusing")
            }
            Refusal::Peer => {
                tracing::warn!(%peer, limit = shared.config.max_connections_per_peer, "connection limit per address reached; refusing")
            }
        }
    }
    let message = match over {
        Refusal::Server => "the server has too many connections; retry shortly",
        Refusal::Peer => {
            "too many connections from your address, all logged in; close one and retry"
        }
    };
    if shared.config.tls.is_some() {
        return;
    }
    let Ok(slot) = Arc::clone(refusals).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut framed = FramedWrite::new(stream, ServerCodec::new());
        let error = ApiError::new(ErrorCode::Overloaded, message);
        let frame = ServerFrame::Closing(error.into_wire(Uuid::new_v4()));
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, framed.send(frame)).await;
        drop(slot);
    });
}
