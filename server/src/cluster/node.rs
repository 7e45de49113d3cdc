//! A node's life in the cluster: connect, follow the stream as a standby,
//! win the lease, catch up, lead; step down the moment leadership is in
//! doubt.
//!
//! ```text
//! start ─▶ standby: tail the stream, apply it ──(lease free: take it)──▶ catch up to the
//!          stream's end ─▶ publish `Leader` expecting that end ─▶ start the sequencer ─▶ leader
//! leader: renew the lease every third of its TTL; a failed renewal or a refused publish
//!          ─▶ fence the outbox, stop the server (restart it: it rejoins as a standby)
//! ```
//!
//! A node that has led may hold journal records and table changes the
//! stream never acknowledged; `meta/cluster_led` marks it, and such a node
//! discards its data dir when it starts again ([`discard_if_led`]) and
//! rebuilds it from the stream. A leader that stops cleanly, with every
//! entry acknowledged, clears the mark and keeps its data dir.

use crate::cluster::applier::{Applier, Message, CLUSTER_APPLIED};
use crate::cluster::entry::Entry;
use crate::cluster::lease::{self, Holder, Lease, Look, RenewError};
use crate::cluster::publisher::Publisher;
use crate::cluster::snapshot::{Snapshots, Snapshotter};
use crate::cluster::{ClusterState, Role};
use crate::config::ClusterConfig;
use crate::error::ServerError;
use crate::sale::book::Book;
use crate::state::Shared;
use crate::store::{id_key, now_ms, Store};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `meta` key: present while (or since) this node led.
pub(crate) const CLUSTER_LED: &str = "cluster_led";

/// Messages between the tail task and the applier thread (each up to
/// 512 KiB: at most 32 MiB waiting).
const APPLY_QUEUE: usize = 64;

/// How long a start keeps trying to reach NATS and set up the stream.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the publisher waits for one message's acknowledgement before
/// sending it again.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// How long JetStream requests (lease calls, stream info) may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the sequencer and the journal with a book and the next journal
/// sequence (provided by the server).
pub(crate) type StartEngine = Box<dyn FnOnce(Book, u64) -> Result<(), ServerError> + Send>;

/// How a node's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Told to stop.
    Stopped,
    /// It lost the leadership (or could not keep following): the server
    /// stops; a restart rejoins as a standby.
    SteppedDown,
}

/// Opens the data dir of a node; one that has led and may hold changes the
/// stream never acknowledged is emptied first.
///
/// # Errors
/// The data dir cannot be opened or removed.
pub(crate) fn open_store(dir: &Path) -> Result<Store, ServerError> {
    let store = Store::open(dir)?;
    if store.meta.get(CLUSTER_LED)?.is_none() {
        return Ok(store);
    }
    tracing::warn!(
        data_dir = %dir.display(),
        "this node led and did not stop cleanly: its data dir may hold changes the cluster \
         never acknowledged; discarding it and rebuilding from the stream"
    );
    drop(store);
    std::fs::remove_dir_all(dir)?;
    Store::open(dir)
}

/// A connection to the cluster's NATS: the stream, the lease bucket and
/// the snapshots' object store (each created when it does not exist yet).
pub(crate) struct Nats {
    js: jetstream::Context,
    /// The replicated log.
    pub(crate) stream: stream::Stream,
    bucket: kv::Store,
    subject: String,
    /// Where snapshots are stored.
    pub(crate) snapshots: Snapshots,
}

impl Nats {
    /// Connects to NATS and creates the stream, the lease bucket and the
    /// snapshots' bucket if they do not exist yet.
    ///
    /// # Errors
    /// [`ServerError::Cluster`] when NATS cannot be reached or refuses.
    pub(crate) async fn connect(config: &ClusterConfig) -> Result<Self, ServerError> {
        // A JetStream cluster just started has no meta leader for a moment
        // and refuses to create streams: try again until it has one.
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        loop {
            match Self::try_connect(config).await {
                Ok(nats) => return Ok(nats),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "NATS is not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_connect(config: &ClusterConfig) -> Result<Self, ServerError> {
        let addrs = config
            .nats_urls
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| nats_error("a NATS address", &e))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("flashsale-{}", config.node_id))
            .connection_timeout(NATS_TIMEOUT)
            .connect(addrs)
            .await
            .map_err(|e| nats_error("connecting to NATS", &e))?;
        let mut js = jetstream::new(client);
        js.set_timeout(NATS_TIMEOUT);
        let subject = format!("{}.log", config.stream.to_lowercase());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![subject.clone()],
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("creating the stream", &e))?;
        let bucket_name = format!("{}_leader", config.stream);
        // The bucket's stream is made here, as a KV bucket's stream is
        // (async-nats' `create_key_value` first asks for the account's
        // limits, an answer nats-server 2.9 shapes differently).
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket_name}"),
            subjects: vec![format!("$KV.{bucket_name}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("creating the lease bucket", &e))?;
        let bucket = js
            .get_key_value(&bucket_name)
            .await
            .map_err(|e| nats_error("opening the lease bucket", &e))?;
        let snapshots = Self::snapshots(&js, config).await?;
        Ok(Self {
            js,
            stream,
            bucket,
            subject,
            snapshots,
        })
    }

    /// The snapshots' object store, its stream made as an object store's.
    async fn snapshots(
        js: &jetstream::Context,
        config: &ClusterConfig,
    ) -> Result<Snapshots, ServerError> {
        let bucket = format!("{}_snapshots", config.stream);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: format!("OBJ_{bucket}"),
                subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("creating the snapshots' bucket", &e))?;
        let objects = js
            .get_object_store(&bucket)
            .await
            .map_err(|e| nats_error("opening the snapshots' bucket", &e))?;
        Ok(Snapshots {
            objects,
            stream,
            bucket,
        })
    }
}

fn nats_error(what: &str, e: &dyn std::fmt::Display) -> ServerError {
    ServerError::Cluster(format!("{what}: {e}"))
}

/// A node connected to NATS.
pub(crate) struct Node {
    shared: Arc<Shared>,
    cluster: Arc<ClusterState>,
    nats: Nats,
}

impl Node {
    /// The node of this server.
    pub(crate) fn new(nats: Nats, shared: Arc<Shared>, cluster: Arc<ClusterState>) -> Self {
        Self {
            shared,
            cluster,
            nats,
        }
    }

    /// Runs the node until `stop` (after the server has stopped its
    /// engine) or until it steps down.
    pub(crate) async fn run(
        self,
        applier: Applier,
        start_engine: StartEngine,
        stop: CancellationToken,
        fatal: CancellationToken,
    ) -> Exit {
        let me = Holder {
            node: self.cluster.config.node_id.clone(),
            advertise: self.cluster.config.advertise.clone(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        };
        let won = match self.follow(applier, &me, &stop, &fatal).await {
            Ok(Some(won)) => won,
            Ok(None) => return Exit::Stopped,
            Err(e) => {
                tracing::error!(error = %e, "standby failed; stopping the server");
                fatal.cancel();
                return Exit::SteppedDown;
            }
        };
        match self.lead(won, me, start_engine, &stop, &fatal).await {
            Ok(exit) => exit,
            Err(e) => {
                tracing::error!(error = %e, "could not take over as leader; stopping the server");
                self.cluster.outbox.fence();
                fatal.cancel();
                Exit::SteppedDown
            }
        }
    }

    /// Tails and applies the stream until this node takes the lease and
    /// has applied the stream to its end; `None` when told to stop.
    async fn follow(
        &self,
        applier: Applier,
        me: &Holder,
        stop: &CancellationToken,
        fatal: &CancellationToken,
    ) -> Result<Option<(Applier, Lease)>, ServerError> {
        let (tx, rx) = mpsc::channel(APPLY_QUEUE);
        let thread = applier.spawn(rx, fatal.clone())?;
        let stop_tail = CancellationToken::new();
        let tail = tokio::spawn(tail(
            self.nats.stream.clone(),
            Arc::clone(&self.cluster),
            tx,
            stop_tail.clone(),
            fatal.clone(),
        ));
        let stop_snapshots = CancellationToken::new();
        let snapshots = tokio::spawn(
            Snapshotter {
                store: self.shared.store.clone(),
                cluster: Arc::clone(&self.cluster),
                snapshots: self.nats.snapshots.clone(),
                stream: self.nats.stream.clone(),
                bucket: self.nats.bucket.clone(),
            }
            .run(stop_snapshots.clone()),
        );
        let lease = self.wait_for_lease(me, stop, fatal).await;
        // Only a standby's data dir holds nothing but acknowledged entries:
        // no snapshot may read this one once it may lead.
        stop_snapshots.cancel();
        let _ = snapshots.await;
        let lease = match lease {
            Some(mut lease) => match self.catch_up(&mut lease, stop, fatal).await {
                Ok(true) => Some(lease),
                caught => {
                    lease.release().await;
                    stop_tail.cancel();
                    let _ = tail.await;
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                    return caught.map(|_| None);
                }
            },
            None => None,
        };
        stop_tail.cancel();
        let _ = tail.await;
        let applier = tokio::task::spawn_blocking(move || thread.join())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        match (lease, applier) {
            (Some(lease), Some(applier)) => Ok(Some((applier, lease))),
            (Some(lease), None) => {
                lease.release().await;
                Err(ServerError::Cluster("the applier failed".into()))
            }
            (None, _) => Ok(None),
        }
    }

    /// Looks at the lease every third of its TTL; takes it when its holder
    /// stopped renewing it (see [`lease`]). `None` when told to stop (or
    /// the server failed).
    async fn wait_for_lease(
        &self,
        me: &Holder,
        stop: &CancellationToken,
        fatal: &CancellationToken,
    ) -> Option<Lease> {
        let ttl = self.cluster.config.lease_ttl;
        let mut tick = tokio::time::interval(ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = lease::Watch::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return None,
                () = fatal.cancelled() => return None,
            }
            // Every NATS call bounded by a third of the TTL: one that hangs
            // (seen under load: a lease read answered after 5 s) must not
            // hold the next look up.
            let bound = ttl / 3;
            if let Ok(Ok(info)) = tokio::time::timeout(bound, self.nats.stream.get_info()).await {
                self.cluster.set_stream_last(info.state.last_sequence);
                self.cluster.set_stream_first(info.state.first_sequence);
            }
            let _ = tokio::time::timeout(bound, self.report(false)).await;
            let looked =
                match tokio::time::timeout(bound, watch.look(&self.nats.bucket, me, ttl)).await {
                    Ok(looked) => looked,
                    Err(_) => {
                        watch.forget();
                        Err(lease::LeaseError::timed_out())
                    }
                };
            match looked {
                Ok(Look::Won(lease)) => return Some(*lease),
                Ok(Look::Held(Some(holder))) if holder.node != me.node => {
                    self.cluster.set_role(Role::Standby {
                        leader: Some(holder.advertise),
                    });
                }
                Ok(Look::Held(_)) => {}
                Err(e) => tracing::warn!(error = %e, "could not read the leader lease"),
            }
        }
    }

    /// Waits until the applier has applied the stream to its current end,
    /// renewing the lease meanwhile; false when told to stop first.
    async fn catch_up(
        &self,
        lease: &mut Lease,
        stop: &CancellationToken,
        fatal: &CancellationToken,
    ) -> Result<bool, ServerError> {
        let last = self
            .nats
            .stream
            .get_info()
            .await
            .map_err(|e| ServerError::Cluster(format!("reading the stream's end: {e}")))?
            .state
            .last_sequence;
        self.cluster.set_stream_last(last);
        tracing::info!(
            stream_last = last,
            applied = self.cluster.applied(),
            "lease taken; catching up with the stream"
        );
        let caught_up = self.cluster.applied_through(last);
        Ok(self
            .while_renewing(lease, caught_up, stop, fatal)
            .await?
            .is_some())
    }

    /// Runs `work` while renewing the lease every third of its TTL (a
    /// takeover may take longer than one TTL). `None` when told to stop.
    ///
    /// # Errors
    /// The lease was lost, or the server failed.
    async fn while_renewing<T>(
        &self,
        lease: &mut Lease,
        work: impl std::future::Future<Output = T>,
        stop: &CancellationToken,
        fatal: &CancellationToken,
    ) -> Result<Option<T>, ServerError> {
        let mut renew = tokio::time::interval(self.cluster.config.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Ok(Some(out)),
                _ = renew.tick() => match self.renew(lease).await {
                    Err(RenewError::Lost) => {
                        return Err(ServerError::Cluster("lost the lease while taking over".into()))
                    }
                    Err(e) => tracing::warn!(error = %e, "leader lease not renewed; trying again"),
                    Ok(()) => {}
                },
                () = stop.cancelled() => return Ok(None),
                () = fatal.cancelled() => {
                    return Err(ServerError::Cluster("stopped while taking over".into()))
                }
            }
        }
    }

    /// One renewal, given at most a third of the TTL (a renewal NATS
    /// does not answer in time counts as not answered, not as lost).
    async fn renew(&self, lease: &mut Lease) -> Result<(), RenewError> {
        let limit = self.cluster.config.lease_ttl / 3;
        match tokio::time::timeout(limit, lease.renew()).await {
            Ok(renewed) => renewed,
            Err(_) => Err(RenewError::NoAnswer("timed out".into())),
        }
    }

    /// Leads until told to stop, or steps down.
    async fn lead(
        &self,
        (applier, mut lease): (Applier, Lease),
        me: Holder,
        start_engine: StartEngine,
        stop: &CancellationToken,
        fatal: &CancellationToken,
    ) -> Result<Exit, ServerError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            shared.store.meta.insert(CLUSTER_LED, &[1])?;
            shared.store.sync()?;
            shared.accounts.auth.reload()?;
            shared.accounts.partners.reload()
        })
        .await
        .map_err(|e| ServerError::Cluster(format!("takeover task failed: {e}")))??;
        let last_seq = self.cluster.applied();
        let outbox = Arc::clone(&self.cluster.outbox);
        let announced = outbox.start_leading(Entry::Leader {
            node: me.node.clone(),
            advertise: me.advertise.clone(),
        });
        let stop_publisher = CancellationToken::new();
        let mut publisher = tokio::spawn(
            Publisher {
                js: {
                    // Short: a message NATS lost in a stream leader change
                    // is sent again sooner (see the publisher).
                    let mut js = self.nats.js.clone();
                    js.set_timeout(PUBLISH_ACK_TIMEOUT);
                    js
                },
                subject: self.nats.subject.clone(),
                id_prefix: format!("{}-{}-", me.node, uuid::Uuid::new_v4().simple()),
                last_seq,
                first_number: None,
                send_timeout: PUBLISH_ACK_TIMEOUT,
            }
            .run(Arc::clone(&outbox), stop_publisher.clone()),
        );
        // After the `Leader` entry, while leading: the carts the old leader
        // may not have updated are repaired, and the repair goes to the
        // stream like any change (standbys need it too).
        let takeover = async {
            let (book, next_seq) = tokio::task::spawn_blocking(move || applier.finish())
                .await
                .map_err(|e| ServerError::Cluster(format!("takeover task failed: {e}")))??;
            outbox.wait(announced).await.map_err(|_| {
                ServerError::Cluster("the stream refused this node's takeover".into())
            })?;
            outbox.wait(outbox.newest()).await.map_err(|_| {
                ServerError::Cluster("the stream refused this node's cart repair".into())
            })?;
            Ok::<_, ServerError>((book, next_seq))
        };
        let Some(taken) = self
            .while_renewing(&mut lease, takeover, stop, fatal)
            .await?
        else {
            outbox.close();
            return Ok(Exit::Stopped);
        };
        let (book, next_seq) = taken?;
        start_engine(book, next_seq)?;
        self.cluster.set_role(Role::Leader);
        tracing::info!(node = %me.node, stream_seq = last_seq + 1, next_journal_seq = next_seq, "leading");
        let mut renew = tokio::time::interval(self.cluster.config.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    match self.renew(&mut lease).await {
                        Ok(()) => renewed = tokio::time::Instant::now(),
                        Err(e @ RenewError::Lost) => {
                            tracing::error!(error = %e, "lost the leader lease; stepping down");
                            return Ok(self.step_down(fatal));
                        }
                        // NATS is moving the bucket's leader: try again at
                        // the next tick. Leading on is safe: the lease
                        // only decides who tries; should another node take
                        // it meanwhile, its first message fences this one.
                        Err(e) => {
                            tracing::warn!(
                                error = %e,
                                since_ms = renewed.elapsed().as_millis() as u64,
                                "leader lease not renewed; trying again"
                            );
                        }
                    }
                    let acked = last_seq + outbox.progress().acked;
                    self.cluster.set_applied(self.cluster.applied().max(acked));
                    self.cluster.set_stream_last(acked);
                    // Bounded: a slow NATS must not hold the next renewal up.
                    let _ = tokio::time::timeout(self.cluster.config.lease_ttl / 3, self.report(true)).await;
                }
                finished = &mut publisher => {
                    match finished {
                        Ok(Err(e)) => tracing::error!(error = %e, "the stream refused this leader; stepping down"),
                        other => tracing::error!(?other, "the publisher stopped; stepping down"),
                    }
                    return Ok(self.step_down(fatal));
                }
                () = fatal.cancelled() => {
                    outbox.fence();
                    return Ok(Exit::SteppedDown);
                }
                () = stop.cancelled() => break,
            }
        }
        // The server has stopped the engine: no more changes (a late one is
        // refused rather than kept here unreplicated), publish what is
        // left, then hand the lease over.
        outbox.close();
        stop_publisher.cancel();
        let acked = match publisher.await {
            Ok(Ok(acked)) => acked,
            other => {
                tracing::error!(?other, "the last entries were not acknowledged");
                return Ok(self.step_down(fatal));
            }
        };
        let shared = Arc::clone(&self.shared);
        let cleared = tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
            shared.store.meta.insert(CLUSTER_APPLIED, &id_key(acked))?;
            shared.store.meta.remove(CLUSTER_LED)?;
            shared.store.sync()
        })
        .await;
        if !matches!(cleared, Ok(Ok(()))) {
            tracing::error!(
                "could not record the clean stop; the data dir is rebuilt at the next start"
            );
        }
        lease.release().await;
        tracing::info!(
            stream_seq = acked,
            "stopped leading; every entry acknowledged"
        );
        Ok(Exit::Stopped)
    }

    /// Reports this node in the lease bucket (the leader also reads every
    /// node's report, for `ClusterStatus`) and updates the metrics.
    async fn report(&self, leader: bool) {
        let cluster = &self.cluster;
        let now = now_ms();
        let me = lease::NodeReport {
            node: cluster.config.node_id.clone(),
            advertise: cluster.config.advertise.clone(),
            leader,
            applied: cluster.applied(),
            at_ms: now,
        };
        crate::telemetry::cluster(leader, me.applied, cluster.stream_last());
        crate::telemetry::cluster_snapshot(
            cluster.stream_first(),
            cluster.snapshot().unwrap_or_default(),
        );
        if let Err(e) = lease::report(&self.nats.bucket, &me).await {
            tracing::debug!(error = %e, "could not report this node");
        }
        if leader {
            match lease::reports(&self.nats.bucket, now).await {
                Ok(reports) => cluster.set_reports(reports),
                Err(e) => tracing::debug!(error = %e, "could not read the nodes' reports"),
            }
            let (info, latest) =
                tokio::join!(self.nats.stream.get_info(), self.nats.snapshots.latest());
            if let Ok(info) = info {
                cluster.set_stream_first(info.state.first_sequence);
            }
            if let Ok(Some(covers)) = latest {
                cluster.set_snapshot(covers);
            }
        }
    }

    /// Fences the outbox and stops the server.
    fn step_down(&self, fatal: &CancellationToken) -> Exit {
        self.cluster.outbox.fence();
        self.cluster.set_role(Role::Standby { leader: None });
        fatal.cancel();
        Exit::SteppedDown
    }
}

/// Reads the stream from after what this node applied and hands each
/// message to the applier, until `stop`. A consumer that fails is made
/// again from where the applier is.
async fn tail(
    stream: stream::Stream,
    cluster: Arc<ClusterState>,
    to_applier: mpsc::Sender<Message>,
    stop: CancellationToken,
    fatal: CancellationToken,
) {
    // Sequences handed over but maybe not applied yet.
    let mut handed = cluster.applied();
    loop {
        let from = handed + 1;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(consumer) => match consumer.messages().await {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the stream; retrying");
                    if pause_or_stop(&stop).await {
                        return;
                    }
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "could not tail the stream; retrying");
                if pause_or_stop(&stop).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading the stream failed; resuming");
                    break;
                }
                None => break,
            };
            let Ok(info) = message.info() else {
                tracing::warn!("a stream message without its sequence; resuming");
                break;
            };
            let stream_seq = info.stream_sequence;
            if stream_seq <= handed {
                continue;
            }
            if stream_seq != handed + 1 {
                // Trimmed behind a snapshot while this node was not
                // reporting (paused, cut off): only a restore can help.
                tracing::error!(
                    next = handed + 1,
                    stream_first = stream_seq,
                    "the stream was trimmed past what this node applied; stopping: a restart \
                     restores the latest snapshot"
                );
                fatal.cancel();
                return;
            }
            let payload = message.payload.clone();
            if to_applier
                .send(Message {
                    stream_seq,
                    payload,
                })
                .await
                .is_err()
            {
                return;
            }
            handed = stream_seq;
        }
        if pause_or_stop(&stop).await {
            return;
        }
    }
}

/// Waits a moment before retrying; true when told to stop meanwhile.
async fn pause_or_stop(stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(Duration::from_millis(200)) => false,
    }
}
