//! The loops a cluster node runs beside its dispatcher, one task each, all stopped with the
//! dispatcher incarnation that started them:
//!
//! - the heartbeat (every 2 s): upserts this node's row, reads the pipelines paused cluster-wide
//!   and the counts of unfinished jobs the leader published (counting them itself only when
//!   none are fresh), and tells the dispatcher, which stops claiming once no
//!   beat succeeded for 10 s (a node cut off from the database must not keep jobs the leader
//!   is about to rescue);
//! - the leader (every second): takes or renews the lease every 5 s; while it leads, rescues
//!   silent nodes' jobs, moves workflows on (`workflows.rs`), finishes the batch jobs whose
//!   children have all ended (`fanout.rs`; these two also at once when a node's completion of
//!   a child or a step nudges it),
//!   counts the unfinished jobs for every node at the heartbeat's pace (one
//!   `GROUP BY` over the backlog for the cluster, not one per node) and compacts finished jobs
//!   past their retention;
//! - the listener: one connection of its own (not from the pool: LISTEN is per session) that
//!   holds this node's id lock, LISTENs for new jobs, cancels and nudges, and reconnects with
//!   backoff when the server goes away; after each connect it wakes the dispatcher, since
//!   notifications sent meanwhile are lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ractor::ActorRef;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use uuid::Uuid;

use super::dispatcher::Event;
use super::store::{ADVANCE, CANCEL, WAKE};
use super::Cluster;
use crate::dispatcher::DispatcherMsg;
use crate::job::JobId;
use crate::metrics as m;

/// Finished jobs deleted per statement of a compaction.
const COMPACT_BATCH: i64 = 10_000;
/// Published counts older than this many heartbeats are not used (the leader is gone or
/// stuck): the node counts for itself.
const COUNTS_FRESH_BEATS: u32 = 3;
/// Longest wait between two connects of the listener.
const LISTEN_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the loops need.
#[derive(Clone)]
pub(super) struct Loops {
    pub(super) cluster: Cluster,
    pub(super) me: ActorRef<DispatcherMsg>,
    /// Jobs running on this node, for the heartbeat.
    pub(super) running: Arc<AtomicUsize>,
    /// This node's admin address, shown by `nodes`.
    pub(super) admin: String,
    /// This process's incarnation, in the node's row.
    pub(super) incarnation: Uuid,
    /// Finished jobs older than this are compacted.
    pub(super) retention: Duration,
    pub(super) token: CancellationToken,
    /// Set by the listener when a batch child or a workflow step ended somewhere ([`ADVANCE`]):
    /// the leader moves parents and workflows on without waiting for its next round.
    pub(super) advance: Arc<Notify>,
}

impl Loops {
    /// Starts the three loops; they end when `token` is cancelled.
    pub(super) fn spawn(self) {
        tokio::spawn(self.clone().heartbeat());
        tokio::spawn(self.clone().leader());
        tokio::spawn(self.listen());
    }

    fn tell(&self, e: Event) {
        let _ = self.me.cast(DispatcherMsg::Cluster(e));
    }

    async fn heartbeat(self) {
        let timing = self.cluster.args.timing;
        let incarnation = self.incarnation;
        let mut tick = tokio::time::interval(timing.heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_ok: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.token.cancelled() => return,
                _ = tick.tick() => {}
            }
            let jobs = &self.cluster.jobs;
            let running = self.running.load(Ordering::Relaxed);
            match jobs.heartbeat(incarnation, &self.admin, running).await {
                Ok(()) => last_ok = Some(Instant::now()),
                Err(e) => {
                    warn!(actor = "root/dispatcher", error = %e.message(), "heartbeat failed")
                }
            }
            let healthy = last_ok.is_some_and(|t| t.elapsed() < timing.stop_claiming_after);
            let read_at = Instant::now();
            self.tell(Event::Beat {
                healthy,
                paused: jobs.paused().await.ok().map(|p| (read_at, p)),
                counts: self.counts(timing).await,
            });
        }
    }

    /// The counts the leader published, or, when none are fresh (no leader, or one that
    /// stopped), this node's own count.
    async fn counts(&self, timing: super::Timing) -> Option<super::Counts> {
        let jobs = &self.cluster.jobs;
        match jobs
            .published_counts(timing.heartbeat * COUNTS_FRESH_BEATS)
            .await
        {
            Ok(Some(c)) => Some(c),
            Ok(None) => jobs.counts().await.ok(),
            Err(_) => None,
        }
    }

    async fn leader(self) {
        let timing = self.cluster.args.timing;
        let jobs = &self.cluster.jobs;
        let mut tick = tokio::time::interval(timing.rescue_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mut leading, mut next_lease) = (false, Instant::now());
        let (mut next_compact, mut next_count) = (Instant::now(), Instant::now());
        loop {
            tokio::select! {
                _ = self.token.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.advance.notified() => {
                    // Nudges that come during a round coalesce into one more round.
                    if leading {
                        self.move_on().await;
                    }
                    continue;
                }
            }
            if Instant::now() >= next_lease {
                let now_leading = jobs.lead(timing.lease_ttl).await.unwrap_or_else(|e| {
                    warn!(actor = "root/dispatcher", error = %e.message(), "leader lease not renewed");
                    false
                });
                if now_leading != leading {
                    info!(actor = "root/dispatcher", node = %jobs.node, leader = now_leading, "leadership changed");
                }
                leading = now_leading;
                next_lease = Instant::now() + timing.lease_renew;
            }
            if !leading {
                continue;
            }
            self.lead_round().await;
            if Instant::now() >= next_count {
                if let Err(e) = jobs.publish_counts().await {
                    warn!(actor = "root/dispatcher", error = %e.message(), "counts not published");
                }
                next_count = Instant::now() + timing.heartbeat;
            }
            if Instant::now() >= next_compact {
                self.compact().await;
                next_compact = Instant::now() + timing.compact_every;
            }
        }
    }

    /// What the leader does every round: rescue silent nodes' jobs, then [`Loops::move_on`].
    /// Each failure is logged and retried at the next round.
    async fn lead_round(&self) {
        let jobs = &self.cluster.jobs;
        let silent = self.cluster.args.timing.silent_after;
        match jobs.rescue(silent, false).await {
            Ok(r) if r.requeued + r.dead > 0 => warn!(
                actor = "root/dispatcher",
                requeued = r.requeued,
                dead_lettered = r.dead,
                "rescued the jobs of silent nodes"
            ),
            Ok(_) => {}
            Err(e) => warn!(actor = "root/dispatcher", error = %e.message(), "rescue failed"),
        }
        self.move_on().await;
    }

    /// Moves workflows on and finishes the batch jobs whose children have all ended: at every
    /// round, and at once when a node says a child or a step ended ([`ADVANCE`]).
    async fn move_on(&self) {
        let jobs = &self.cluster.jobs;
        match jobs.advance_workflows().await {
            Ok(woken) => {
                for pipeline in woken.iter().collect::<std::collections::BTreeSet<_>>() {
                    let _ = jobs.wake(pipeline).await;
                }
            }
            Err(e) => {
                warn!(actor = "root/dispatcher", error = %e.message(), "workflows not moved on")
            }
        }
        match jobs.finish_parents().await {
            Ok(names) if names.is_empty() => {}
            Ok(names) => {
                info!(
                    actor = "root/dispatcher",
                    parents = names.len(),
                    "batch jobs finished: their children have all ended"
                );
                // Counted here, once, by the node that finished them.
                for name in names {
                    metrics::counter!(m::JOB_EXECUTIONS, "job_name" => name, "status" => "succeeded")
                        .increment(1);
                }
            }
            Err(e) => warn!(actor = "root/dispatcher", error = %e.message(),
                "waiting batch jobs not finished"),
        }
    }

    async fn compact(&self) {
        let mut removed = 0;
        loop {
            match self
                .cluster
                .jobs
                .compact(self.retention, COMPACT_BATCH)
                .await
            {
                Ok(n) => {
                    removed += n;
                    if n < COMPACT_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    warn!(actor = "root/dispatcher", error = %e.message(), "compaction failed");
                    break;
                }
            }
        }
        if removed > 0 {
            info!(
                actor = "root/dispatcher",
                removed, "finished jobs past their retention compacted"
            );
        }
    }

    async fn listen(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match self.listen_once().await {
                Ok(()) => return,
                Err(e) => {
                    warn!(actor = "root/dispatcher", error = %e, "listener lost; reconnecting")
                }
            }
            if started.elapsed() > LISTEN_MAX_BACKOFF {
                backoff = Duration::from_millis(200);
            }
            tokio::select! {
                _ = self.token.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(LISTEN_MAX_BACKOFF);
        }
    }

    /// One session: Ok when cancelled, Err when the connection failed.
    async fn listen_once(&self) -> Result<(), String> {
        let c = &self.cluster;
        let words = |e: tokio_postgres::Error| c.target().scrub(&e.to_string());
        let mut session = match c.take_session() {
            Some(s) => s,
            None => {
                let s = Session::connect(&c.config).await?;
                if !s.lock(c.node_lock_key()).await.map_err(words)? {
                    error!(actor = "root/dispatcher", node = %c.args.node_id,
                        "another live process runs as this node_id; give each node its own [store] node_id");
                }
                s
            }
        };
        let (wake, cancel) = (c.jobs.channel(WAKE), c.jobs.channel(CANCEL));
        let advance = c.jobs.channel(ADVANCE);
        session
            .client
            .batch_execute(&format!("LISTEN {wake}; LISTEN {cancel}; LISTEN {advance}"))
            .await
            .map_err(words)?;
        // Whatever was announced while no session listened.
        self.tell(Event::Wake(None));
        self.advance.notify_one();
        loop {
            let m = tokio::select! {
                _ = self.token.cancelled() => return Ok(()),
                m = session.messages.recv() => m,
            };
            match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == wake => {
                    self.tell(Event::Wake(Some(n.payload().to_string())))
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == cancel => {
                    if let Ok(id) = n.payload().parse::<JobId>() {
                        self.tell(Event::Cancelled(vec![id]));
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == advance => {
                    self.advance.notify_one()
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(words(e)),
                None => return Err("the connection closed".into()),
            }
        }
    }
}

/// A connection of its own (LISTEN and session locks are per session), its messages forwarded
/// by a driver task that ends with it.
pub struct Session {
    client: tokio_postgres::Client,
    messages: UnboundedReceiver<Result<AsyncMessage, tokio_postgres::Error>>,
    _driver: AbortOnDrop,
}

impl Session {
    /// Connects with `config`.
    pub async fn connect(config: &tokio_postgres::Config) -> Result<Session, String> {
        let (client, mut conn) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = stream.next().await {
                let failed = m.is_err();
                if let Ok(AsyncMessage::Notification(_)) | Err(_) = &m {
                    let _ = tx.send(m);
                }
                if failed {
                    return;
                }
            }
        });
        Ok(Session {
            client,
            messages,
            _driver: AbortOnDrop(driver),
        })
    }

    /// Takes the session lock `key`; false when another session holds it.
    pub async fn lock(&self, key: i64) -> Result<bool, tokio_postgres::Error> {
        Ok(self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0))
    }
}

/// Aborts the connection's driver when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
