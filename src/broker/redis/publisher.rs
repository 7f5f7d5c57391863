//! The publisher: one task that sends publishes to Redis in exactly the
//! order they were submitted, as pipelines of `EVALSHA`s of `publish.lua`.
//!
//! What queued up while the previous pipeline was out goes as the next one
//! (one round trip for many publishes under load, at once when idle).
//! Keeping one pipeline in flight is what makes the order certain; the
//! batching is what keeps it fast.
//!
//! Every publish is answered truthfully about the store (protocol.md,
//! `stored`): a job is *claimed* by the task just before its pipeline is
//! written, or *abandoned* by its caller when the caller's wait runs out
//! first, never both. An abandoned job is never sent, so its caller can say
//! "nothing was stored"; a claimed one that got no answer may yet run when
//! Redis recovers, so its caller says "unknown". After a pipeline went
//! unanswered the task sends nothing more until Redis answers a PING:
//! publishes that wait meanwhile are abandoned unsent rather than piled
//! onto a connection that does not answer. When the node knows its
//! connection is gone (a pipeline failed with the connection, or the live
//! feed's connection to the same Redis dropped), the next pipeline goes
//! only after a PING came back; if none does, its publishes are answered
//! at once, unsent: "nothing was stored", not "unknown".
//!
//! **Order across a failure**: a connection's publishes to a room are
//! committed in the order it sent them, even when one of them fails. After
//! a publish fails, later ones of the same connection and room are answered
//! unsent (a *fence*) until the failed one comes again (its retry, by its
//! `cmid`), or for [`FENCE_LIFETIME`]: they cannot overtake it, and a
//! client that retries what failed, in order, gets them all committed in
//! order. A publish without a `cmid` cannot be told again and sets no
//! fence. On a cluster the fences are shared by the publishers of every
//! primary: a room's publish that failed on one primary and was sent
//! again on another (a failover, a slot's move) lifts its fence wherever
//! it was set, or the room's return to the first primary would meet a
//! stale fence there and refuse the connection's publishes for
//! [`FENCE_LIFETIME`].
//!
//! **Replicas** (`RELAY_REDIS_MIN_REPLICAS_ACKED`): a pipeline ends with
//! `WAIT n`, one round trip for every publish in it; publishes written but
//! not confirmed by n replicas within [`REPLICA_WAIT`] are answered
//! "unknown" (a failover may lose them), never acknowledged. The publisher
//! then has a connection of its own, since `WAIT` blocks it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::keys::KeyScheme;
use redis::Value;

use super::{COMMAND_TIMEOUT, bounded, failure};
use crate::broker::{BrokerError, PendingPublish, PublishOutcome, PublishRequest, RetentionSettings};
use crate::protocol::{MessageId, RoomName, message_frame};
use crate::tasks::NodeTasks;
use crate::telemetry::TraceParent;

/// Most publishes sent to Redis in one pipeline.
const MAX_PUBLISH_BATCH: usize = 256;
/// How long a caller waits for its publish: the command timeout plus a
/// little for the queue, so a publish sent at once meets the pipeline's
/// own timeout first.
const CALLER_WAIT: Duration = COMMAND_TIMEOUT.saturating_add(Duration::from_millis(250));
/// Longest wait for the PING that clears a connection after a silence.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a fence holds a connection's later publishes to a room when
/// the failed one is never sent again.
pub(super) const FENCE_LIFETIME: Duration = Duration::from_secs(30);
/// How long a pipeline's `WAIT` waits for replicas.
pub(super) const REPLICA_WAIT: Duration = Duration::from_secs(1);

const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

/// Who decided a job's fate: the task (claimed, about to be sent) or the
/// caller (abandoned, never to be sent). Set once.
#[derive(Debug, Default)]
struct JobFate(AtomicU8);

impl JobFate {
    fn settle(&self, to: u8) -> bool {
        self.0
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A publish waiting for the publisher task.
struct PublishJob {
    request: PublishRequest,
    reply: oneshot::Sender<Result<PublishOutcome, BrokerError>>,
    fate: Arc<JobFate>,
    /// The script's round trip, while traces are exported; it ends when
    /// the job is answered and dropped.
    _round_trip: tracing::Span,
    /// `<traceparent>\n` of that span, sent before the live frame; empty
    /// while traces are not exported.
    trace_prefix: String,
}

/// The submitting end of the publisher task.
pub(super) struct Publisher {
    jobs: mpsc::UnboundedSender<PublishJob>,
}

/// What a publisher's task works with besides its connection.
struct Task {
    script: redis::Script,
    keys: KeyScheme,
    /// `RELAY_REDIS_MIN_REPLICAS_ACKED`.
    replicas: u32,
    /// Bumped by whoever learns that the node's connection to this Redis
    /// was lost (the live feed).
    losses: Arc<AtomicU64>,
}

impl Publisher {
    /// Starts the task on `connection`, with the script for these settings;
    /// `losses` is bumped whenever the node learns its connection to this
    /// Redis was lost.
    pub(super) fn start(
        connection: ConnectionManager,
        retention: &RetentionSettings,
        keys: KeyScheme,
        publish_command: &str,
        losses: Arc<AtomicU64>,
        fences: SharedFences,
        tasks: &Arc<NodeTasks>,
    ) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let task = Task {
            script: publish_script(retention, publish_command),
            keys,
            replicas: retention.replicas_acked,
            losses,
        };
        tasks.spawn("redis publisher", run(queue, connection, task, fences));
        Self { jobs }
    }

    /// Queues a publish; the order of calls is the commit order.
    pub(super) fn submit(&self, request: PublishRequest) -> PendingPublish {
        let (reply, answer) = oneshot::channel();
        let span = if crate::telemetry::trace_context::is_exporting() {
            tracing::info_span!("redis publish", "otel.kind" = "client", "db.system" = "redis", "db.operation" = "EVALSHA", room = %request.room)
        } else {
            tracing::Span::none()
        };
        let trace_prefix =
            TraceParent::of_span(&span).map_or_else(String::new, |trace| format!("{}\n", trace.as_str()));
        let fate = Arc::new(JobFate::default());
        let queued = self.jobs.send(PublishJob {
            request,
            reply,
            fate: fate.clone(),
            _round_trip: span,
            trace_prefix,
        });
        Box::pin(async move {
            if queued.is_err() {
                return Err(BrokerError::Unavailable("the publisher task stopped".to_owned()));
            }
            match tokio::time::timeout(CALLER_WAIT, answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(BrokerError::Unavailable("the publisher task stopped".to_owned())),
                Err(_) if fate.settle(ABANDONED) => Err(BrokerError::Unavailable(format!(
                    "Redis did not answer within {CALLER_WAIT:?}; the publish was not sent"
                ))),
                Err(_) => Err(BrokerError::NoAnswer(format!(
                    "the publish was sent and Redis did not answer within {CALLER_WAIT:?}"
                ))),
            }
        })
    }
}

/// The publishers of a cluster: one [`Publisher`] (task, connection and
/// queue) per primary, so that a primary that does not answer holds up
/// only the publishes to its own rooms. A publish goes at once to the
/// publisher of its room's primary as the slot map has it, which keeps the
/// submission order of a room's publishes. One that Redis refused (it never
/// ran: `MOVED` after a failover or a migration, `TRYAGAIN`, the primary
/// down) is sent again where the room now lives, up to three times.
/// While one of a room's publishes is sent again, the room is *held*: its
/// later publishes wait behind it (in submission order) instead of going
/// straight to where the room now lives, so a slot's move cannot reorder
/// them.
pub(super) struct ShardPublishers {
    shards: Arc<super::shards::Shards>,
    retention: RetentionSettings,
    keys: KeyScheme,
    tasks: Arc<NodeTasks>,
    by_primary: std::sync::Mutex<std::collections::HashMap<String, Arc<Publisher>>>,
    /// The fences of every primary's publisher (see the module docs).
    fences: SharedFences,
    /// Rooms held by a publish being sent again: the gate its later
    /// publishes queue on (a fair lock: first come, first through).
    held_rooms: std::sync::Mutex<HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
}

impl ShardPublishers {
    pub(super) fn new(
        shards: Arc<super::shards::Shards>,
        retention: RetentionSettings,
        keys: KeyScheme,
        tasks: &Arc<NodeTasks>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shards,
            retention,
            keys,
            tasks: tasks.clone(),
            by_primary: std::sync::Mutex::new(std::collections::HashMap::new()),
            fences: SharedFences::default(),
            held_rooms: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The gate of `room` if a publish of it is being sent again.
    fn gate_of(&self, room: &RoomName) -> Option<Arc<tokio::sync::Mutex<()>>> {
        super::lock(&self.held_rooms).get(room).cloned()
    }

    /// Holds `room` for a publish about to be sent again: its gate, made
    /// if need be, and the place in it.
    async fn hold(&self, room: &RoomName) -> (Arc<tokio::sync::Mutex<()>>, tokio::sync::OwnedMutexGuard<()>) {
        let gate = super::lock(&self.held_rooms)
            .entry(room.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let place = gate.clone().lock_owned().await;
        (gate, place)
    }

    /// Lets the room's next publish through, and forgets the gate once no
    /// publish holds or waits for it.
    fn release(&self, room: &RoomName, gate: Arc<tokio::sync::Mutex<()>>, place: tokio::sync::OwnedMutexGuard<()>) {
        drop(place);
        let mut held = super::lock(&self.held_rooms);
        if held.get(room).is_some_and(|known| Arc::ptr_eq(known, &gate)) && Arc::strong_count(&gate) == 2 {
            held.remove(room);
        }
    }

    /// The publisher of the primary at `address`, if it is running.
    fn running(&self, address: &str) -> Option<Arc<Publisher>> {
        super::lock(&self.by_primary).get(address).cloned()
    }

    /// The publisher of the primary at `address`, started if need be (on
    /// a connection of its own when replicas must confirm: `WAIT` blocks
    /// it).
    async fn publisher(&self, address: &str) -> Result<Arc<Publisher>, BrokerError> {
        if let Some(publisher) = self.running(address) {
            return Ok(publisher);
        }
        let connection = if self.retention.replicas_acked > 0 {
            self.shards.new_connection(address).await?
        } else {
            self.shards.connection(address).await?
        };
        let tasks = &self.tasks;
        let mut by_primary = super::lock(&self.by_primary);
        Ok(by_primary
            .entry(address.to_owned())
            .or_insert_with(|| {
                Arc::new(Publisher::start(
                    connection,
                    &self.retention,
                    self.keys.clone(),
                    "SPUBLISH",
                    // Its own failures tell it of a lost connection.
                    Arc::default(),
                    self.fences.clone(),
                    tasks,
                ))
            })
            .clone())
    }

    /// Queues a publish with its room's primary; see the type's docs.
    pub(super) fn submit(self: &Arc<Self>, request: PublishRequest) -> PendingPublish {
        // The common case queues now, in the caller's order; behind a held
        // room, it waits its turn first.
        let gate = self.gate_of(&request.room);
        let first = if gate.is_none() {
            let map = self.shards.map();
            map.owner(&request.room).and_then(|owner| {
                let publisher = self.running(owner)?;
                Some((owner.to_owned(), publisher.submit(request.clone())))
            })
        } else {
            None
        };
        let this = self.clone();
        let room = request.room.clone();
        Box::pin(async move {
            let mut held = match gate {
                Some(gate) => {
                    let place = gate.clone().lock_owned().await;
                    Some((gate, place))
                }
                None => None,
            };
            let outcome = this.send(request, first, &mut held).await;
            if let Some((gate, place)) = held {
                this.release(&room, gate, place);
            }
            outcome
        })
    }

    /// Sends a publish (its first attempt already queued, or not) to where
    /// its room lives, again after a refusal, holding the room meanwhile.
    async fn send(
        self: &Arc<Self>,
        request: PublishRequest,
        first: Option<(String, PendingPublish)>,
        held: &mut Option<(Arc<tokio::sync::Mutex<()>>, tokio::sync::OwnedMutexGuard<()>)>,
    ) -> Result<PublishOutcome, BrokerError> {
        let mut pending = first;
        let mut pause = Duration::from_millis(50);
        for attempt in 0..4 {
            let started = std::time::Instant::now();
            let (owner, outcome) = match pending.take() {
                Some((owner, pending)) => (Some(owner), pending.await),
                None => match self.shards.owner(&request.room).await {
                    Ok(owner) => match self.publisher(&owner).await {
                        Ok(publisher) => (Some(owner), publisher.submit(request.clone()).await),
                        Err(error) => (Some(owner), Err(error)),
                    },
                    Err(error) => (None, Err(error)),
                },
            };
            if let Some(owner) = owner {
                self.shards
                    .metrics
                    .publish_seconds
                    .get_or_create(&super::shards::ShardMetrics::label(&owner))
                    .observe(started.elapsed().as_secs_f64());
            }
            match outcome {
                // It never ran: the map is behind, or the primary is
                // down and a replica may be taking over.
                Err(error) if attempt < 3 && super::is_refusal(&error) => {
                    tracing::debug!(room = %request.room, %error, "publish refused by the cluster; sending it where the room now lives");
                    if held.is_none() {
                        *held = Some(self.hold(&request.room).await);
                    }
                    let _ = self.shards.refresh().await;
                    tokio::time::sleep(pause).await;
                    pause *= 3;
                }
                outcome => return outcome,
            }
        }
        Err(BrokerError::Unavailable(format!(
            "no Redis primary took the publish to room {}",
            request.room
        )))
    }
}

/// The fences of a publisher (of every primary's, on a cluster): per
/// connection and room, the key of the publish that failed first, and
/// since when (see the module docs). Each call locks it briefly.
#[derive(Default, Clone)]
pub(super) struct SharedFences(Arc<std::sync::Mutex<Fences>>);

impl SharedFences {
    fn allow(&self, job: &PublishJob) -> bool {
        super::lock(&self.0).allow(job)
    }

    fn failed(&self, job: &PublishJob) {
        super::lock(&self.0).failed(job);
    }

    fn forget_old(&self) {
        super::lock(&self.0).forget_old();
    }

    /// Answers `job` with `error` and records the failure.
    fn fail(&self, job: PublishJob, error: BrokerError) {
        self.failed(&job);
        let _ = job.reply.send(Err(error));
    }
}

#[derive(Default)]
struct Fences(HashMap<(u64, RoomName), (String, Instant)>);

impl Fences {
    /// Whether `job` may be sent: no fence on its connection and room, or
    /// it is the failed publish again (which lifts the fence), or the fence
    /// is old.
    fn allow(&mut self, job: &PublishJob) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(connection) = job.request.connection else {
            return true;
        };
        let key = (connection, job.request.room.clone());
        let Some((first_failed, since)) = self.0.get(&key) else {
            return true;
        };
        if job.request.idempotency_key.as_ref() == Some(first_failed) || since.elapsed() >= FENCE_LIFETIME {
            self.0.remove(&key);
            return true;
        }
        false
    }

    /// Records a failed publish: the first failure of its connection and
    /// room sets the fence.
    fn failed(&mut self, job: &PublishJob) {
        if let (Some(connection), Some(key)) = (job.request.connection, &job.request.idempotency_key) {
            self.0
                .entry((connection, job.request.room.clone()))
                .or_insert_with(|| (key.clone(), Instant::now()));
        }
    }

    /// Forgets fences past their lifetime (bounds memory when clients
    /// that were fenced leave).
    fn forget_old(&mut self) {
        if !self.0.is_empty() {
            self.0.retain(|_, (_, since)| since.elapsed() < FENCE_LIFETIME);
        }
    }
}

/// How a pipeline ended, for what the task does next.
enum BatchEnd {
    /// Redis answered.
    Answered,
    /// No answer in time: the connection is silent.
    Silent,
    /// The connection failed under it.
    Dropped,
}

async fn run(
    mut jobs: mpsc::UnboundedReceiver<PublishJob>,
    mut connection: ConnectionManager,
    task: Task,
    fences: SharedFences,
) {
    let mut silent = false;
    let mut suspect = false;
    let mut losses_seen = task.losses.load(Ordering::Acquire);
    while let Some(first) = jobs.recv().await {
        if silent {
            wait_for_an_answer(&mut connection).await;
            silent = false;
            suspect = false;
        }
        let losses = task.losses.load(Ordering::Acquire);
        if losses != losses_seen {
            losses_seen = losses;
            suspect = true;
        }
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_PUBLISH_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        fences.forget_old();
        // A job whose caller gave up (or left) is not sent: its caller said
        // "not stored", or is gone. One behind a failed one of its
        // connection and room is answered unsent.
        let mut claimed = Vec::with_capacity(batch.len());
        for job in batch {
            if job.reply.is_closed() || !job.fate.settle(CLAIMED) {
                // Its caller gave up on it ("not stored"): what comes
                // behind it may not overtake it either.
                fences.failed(&job);
                continue;
            }
            if fences.allow(&job) {
                claimed.push(job);
            } else {
                fences.fail(
                    job,
                    BrokerError::Unavailable(
                        "an earlier publish of this connection to this room failed; this one was not sent, so that it cannot overtake that one: send that one again first (with its cmid), then this one".to_owned(),
                    ),
                );
            }
        }
        if claimed.is_empty() {
            continue;
        }
        if suspect {
            if probe(&mut connection).await {
                suspect = false;
            } else {
                for job in claimed {
                    fences.fail(
                        job,
                        BrokerError::Unavailable(
                            "the connection to Redis is lost (it does not answer a PING): the publish was not sent"
                                .to_owned(),
                        ),
                    );
                }
                continue;
            }
        }
        match publish_batch(&mut connection, &task, claimed, &fences).await {
            BatchEnd::Answered => {}
            BatchEnd::Silent => silent = true,
            BatchEnd::Dropped => suspect = true,
        }
    }
}

/// One PING within [`PROBE_TIMEOUT`]: whether the connection answers now.
async fn probe(connection: &mut ConnectionManager) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, redis::cmd("PING").query_async::<String>(connection)).await,
        Ok(Ok(_))
    )
}

/// Holds the queue until Redis answers a PING. Callers whose wait runs out
/// meanwhile abandon their jobs, which are then never sent.
async fn wait_for_an_answer(connection: &mut ConnectionManager) {
    let mut pause = Duration::from_millis(50);
    loop {
        let ping = redis::cmd("PING");
        if matches!(
            tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<String>(connection)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn parse_outcome(reply: (i64, String, String)) -> Result<PublishOutcome, BrokerError> {
    let (duplicate, id, prev) = reply;
    let parse = |text: &str| {
        text.parse::<MessageId>()
            .map_err(|error| BrokerError::Internal(error.to_string()))
    };
    Ok(PublishOutcome {
        id: parse(&id)?,
        prev: parse(&prev)?,
        duplicate: duplicate == 1,
    })
}

/// One pipeline of publishes (ending with `WAIT` when replicas must
/// confirm); on NOSCRIPT (Redis restarted or flushed its script cache) the
/// script is loaded and the refused ones, which Redis did not run, are sent
/// again in their order. Every failed publish is recorded in `fences`.
async fn publish_batch(
    connection: &mut ConnectionManager,
    task: &Task,
    mut batch: Vec<PublishJob>,
    fences: &SharedFences,
) -> BatchEnd {
    for attempt in 0..2 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &batch {
            let request = &job.request;
            pipe.cmd("EVALSHA")
                .arg(task.script.get_hash())
                .arg(3)
                .arg(task.keys.stream(&request.room))
                .arg(task.keys.idempotency(&request.room, request.idempotency_key.as_deref()))
                .arg(task.keys.channel(&request.room))
                .arg(if request.idempotency_key.is_some() { "1" } else { "0" })
                .arg(message_frame::head(&request.room))
                .arg(request.tail.as_str())
                .arg(job.trace_prefix.as_str());
        }
        if task.replicas > 0 {
            pipe.cmd("WAIT")
                .arg(task.replicas)
                .arg(u64::try_from(REPLICA_WAIT.as_millis()).unwrap_or(u64::MAX));
        }
        let answer = tokio::time::timeout(
            COMMAND_TIMEOUT,
            pipe.query_async::<Vec<redis::RedisResult<Value>>>(connection),
        )
        .await;
        let mut results = match answer {
            Ok(Ok(results)) => results,
            Ok(Err(error)) => {
                let failed = failure(&error);
                for job in batch {
                    fences.fail(job, failed.clone());
                }
                return if error.is_connection_dropped() || error.is_io_error() || error.is_connection_refusal() {
                    BatchEnd::Dropped
                } else {
                    BatchEnd::Answered
                };
            }
            Err(_) => {
                let silent = BrokerError::NoAnswer(format!("no answer from Redis within {COMMAND_TIMEOUT:?}"));
                for job in batch {
                    fences.fail(job, silent.clone());
                }
                return BatchEnd::Silent;
            }
        };
        // The replicas' confirmation, when asked for: every write before
        // it in the pipeline is confirmed, or none is.
        let unconfirmed = if task.replicas > 0 {
            match results.pop() {
                Some(Ok(Value::Int(confirmed))) if confirmed >= i64::from(task.replicas) => None,
                Some(Ok(Value::Int(confirmed))) => Some(format!(
                    "stored on the primary, but {confirmed} of {} replicas confirmed it within {REPLICA_WAIT:?} (RELAY_REDIS_MIN_REPLICAS_ACKED): a failover may lose it; retry with the same cmid",
                    task.replicas
                )),
                other => Some(format!(
                    "stored on the primary, but the replicas' confirmation failed ({other:?}); retry with the same cmid"
                )),
            }
        } else {
            None
        };
        let mut refused = Vec::new();
        for (job, result) in batch.into_iter().zip(results) {
            match result.and_then(|value| Ok(redis::from_redis_value::<(i64, String, String)>(value)?)) {
                Ok(_) if unconfirmed.is_some() => {
                    let reason = unconfirmed.clone().unwrap_or_default();
                    fences.fail(job, BrokerError::NoAnswer(reason));
                }
                Ok(reply) => match parse_outcome(reply) {
                    Ok(outcome) => {
                        let _ = job.reply.send(Ok(outcome));
                    }
                    Err(error) => fences.fail(job, error),
                },
                Err(error) if error.code() == Some("NOSCRIPT") && attempt == 0 => refused.push(job),
                Err(error) => fences.fail(job, failure(&error)),
            }
        }
        if refused.is_empty() {
            return BatchEnd::Answered;
        }
        if let Err(error) = bounded(task.script.load_async(connection)).await {
            // Redis did not run the refused ones.
            let error = BrokerError::Unavailable(format!("the publish script could not be loaded: {error}"));
            for job in refused {
                fences.fail(job, error.clone());
            }
            return BatchEnd::Answered;
        }
        batch = refused;
    }
    BatchEnd::Answered
}

/// The publish script with this node's settings and the message frame's
/// layout filled in.
fn publish_script(retention: &RetentionSettings, publish_command: &str) -> redis::Script {
    redis::Script::new(&publish_script_source(retention, publish_command))
}

fn publish_script_source(retention: &RetentionSettings, publish_command: &str) -> String {
    let millis = |duration: Duration| {
        u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
            .to_string()
    };
    include_str!("publish.lua")
        .replace("@MAXLEN@", &retention.history_maxlen.to_string())
        .replace("@HISTORY_TTL_MS@", &millis(retention.history_ttl))
        .replace("@IDEMPOTENCY_TTL_MS@", &millis(retention.idempotency_ttl))
        .replace("@PUBLISH@", publish_command)
        .replace("@AFTER_ID@", message_frame::AFTER_ID)
        .replace("@AFTER_PREV@", message_frame::AFTER_PREV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_claimed_or_abandoned_never_both() {
        let fate = JobFate::default();
        assert!(fate.settle(CLAIMED));
        assert!(!fate.settle(ABANDONED), "a claimed job cannot be abandoned");
        let fate = JobFate::default();
        assert!(fate.settle(ABANDONED));
        assert!(!fate.settle(CLAIMED), "an abandoned job is never sent");
    }

    #[test]
    fn the_script_gets_every_setting_and_the_frame_layout_filled_in() {
        let retention = RetentionSettings {
            history_maxlen: 7,
            history_ttl: Duration::from_secs(1),
            idempotency_ttl: Duration::from_secs(2),
            replicas_acked: 0,
        };
        let source = publish_script_source(&retention, "SPUBLISH");
        assert!(!source.contains('@'), "every placeholder is filled: {source}");
        assert!(source.contains("'SPUBLISH'") && source.contains("'~', '7'"), "{source}");
        assert!(source.contains(&format!("'{}'", message_frame::AFTER_ID)), "{source}");
    }
}
