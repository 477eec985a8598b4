//! The event hub across processes, chosen when `REDIS_URL` is set.
//!
//! Every process keeps an `InProcessHub`: its own generations, and *replicas* of generations
//! running elsewhere that its subscribers follow. Redis carries the rest:
//!
//! - **One stream per generation** (`{prefix}gen:{message}`). Entry ids carry the delta
//!   number: `1-0` opens the stream, delta `n` is `1-n`, `2-0` is the end. A *mirror* task per
//!   local generation copies new deltas from the local buffer in batches through one Lua
//!   script, which only adds entries newer than the stream's last one, caps the stream
//!   (`MAXLEN ~`), refreshes its expiry (shortened to the retention at the end), and
//!   publishes exactly the entries it added to the conversation's channel. A retry after a
//!   failure therefore never duplicates or skips anything, and after a Redis outage (or a
//!   Redis restart that lost everything) the mirror fills the stream again from the local
//!   buffer.
//! - **One reader task per process** follows every replica with one `XREAD BLOCK` over all
//!   their streams (plus a wake stream of its own, written to when a new replica starts), on
//!   a connection of its own, and appends what it reads to the replicas. A subscriber thus
//!   joins from any `afterSeq` and follows with no gap and no duplicate, like a local one.
//! - **Pub/sub** for the rest: a channel per conversation (subscribed while this process has
//!   subscribers to it), one for quota changes, one for stop requests.
//!
//! When Redis goes away, local generations keep streaming to local subscribers; followers
//! of replicas and remote conversation subscribers get `Interrupted` (an error to the
//! client, which re-reads the message, with `contentSeq`, and subscribes again).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::StreamReadReply;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use uuid::Uuid;

use crate::streaming::hub::{
    ConversationEvent, EventHub, GenerationEvent, InProcessHub, StopReason,
};

/// Entries per mirror batch and per `XREAD`.
const BATCH: usize = 512;
/// How long one `XREAD` blocks before the follow set is looked at again.
const BLOCK: Duration = Duration::from_secs(2);
/// The expiry of a running generation's stream, refreshed at every write.
const RUNNING_TTL: Duration = Duration::from_secs(3600);
/// How long a subscribe waits for Redis to confirm a channel subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);
/// Redis commands on the request path give up after this long.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1000);

/// Appends deltas (and the end) to a generation's stream; see the module documentation.
/// KEYS: stream, conversation channel. ARGV: maxlen, ttl ms, origin, message id, finished
/// (0/1), create (0/1: only the runner creates a stream; an end stored by another process
/// goes to an existing stream only), then seq/text pairs in order. Returns the newest delta
/// number in the stream.
const APPEND: &str = r#"
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local major, minor = 1, 0
if #top == 0 and ARGV[6] ~= '1' then
  major = 3
elseif #top == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '1-0', 't', 'o')
else
  local id = top[1][1]
  local dash = string.find(id, '-', 1, true)
  major = tonumber(string.sub(id, 1, dash - 1))
  minor = tonumber(string.sub(id, dash + 1))
end
local events = {}
if major == 1 then
  for i = 7, #ARGV, 2 do
    local seq = tonumber(ARGV[i])
    if seq > minor then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '1-' .. seq, 't', 'd', 'x', ARGV[i + 1])
      minor = seq
      events[#events + 1] = { k = 'delta', m = ARGV[4], s = seq, x = ARGV[i + 1] }
    end
  end
  if ARGV[5] == '1' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '2-0', 't', 'f')
    events[#events + 1] = { k = 'finished', m = ARGV[4] }
  end
elseif major == 3 and ARGV[5] == '1' then
  events[#events + 1] = { k = 'finished', m = ARGV[4] }
end
if major ~= 3 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if #events > 0 then
  redis.call('PUBLISH', KEYS[2], cjson.encode({ o = ARGV[3], e = events }))
end
return minor
"#;

/// A conversation channel's message: events from process `o`.
#[derive(Serialize, Deserialize)]
struct Wire {
    o: String,
    e: Vec<WireEvent>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum WireEvent {
    Created {
        m: Uuid,
    },
    Delta {
        m: Uuid,
        s: u32,
        x: String,
    },
    Finished {
        m: Uuid,
    },
    Updated,
    /// A comparison judged; `m` is its user message.
    Comparison {
        m: Uuid,
    },
}

impl WireEvent {
    fn from_event(event: &ConversationEvent) -> Option<WireEvent> {
        Some(match event {
            ConversationEvent::MessageCreated { message_id } => {
                WireEvent::Created { m: *message_id }
            }
            ConversationEvent::Delta {
                message_id,
                seq,
                text,
            } => WireEvent::Delta {
                m: *message_id,
                s: *seq,
                x: text.clone(),
            },
            ConversationEvent::MessageFinished { message_id } => {
                WireEvent::Finished { m: *message_id }
            }
            ConversationEvent::ConversationUpdated => WireEvent::Updated,
            ConversationEvent::ComparisonReady { user_message_id } => WireEvent::Comparison {
                m: *user_message_id,
            },
            ConversationEvent::Interrupted => return None,
        })
    }

    fn into_event(self) -> ConversationEvent {
        match self {
            WireEvent::Created { m } => ConversationEvent::MessageCreated { message_id: m },
            WireEvent::Delta { m, s, x } => ConversationEvent::Delta {
                message_id: m,
                seq: s,
                text: x,
            },
            WireEvent::Finished { m } => ConversationEvent::MessageFinished { message_id: m },
            WireEvent::Updated => ConversationEvent::ConversationUpdated,
            WireEvent::Comparison { m } => {
                ConversationEvent::ComparisonReady { user_message_id: m }
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct QuotaWire {
    o: String,
    w: Uuid,
}

/// Requests to the pub/sub task.
enum Control {
    /// Subscribe to a conversation's channel; answered once Redis confirmed (or failed).
    Conversation(Uuid, oneshot::Sender<()>),
}

/// A local generation's mirror task, as the hub sees it.
struct Mirror {
    /// Wakes the task when there is something to copy.
    wake: Notify,
    /// Set when the task has stored the end (or given up).
    done: watch::Sender<bool>,
}

struct Shared {
    client: redis::Client,
    /// Commands (writes, publishes, small reads); reconnects by itself.
    commands: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    /// This process, to ignore its own pub/sub messages.
    origin: String,
    retention: Duration,
    max_events: usize,
    append: redis::Script,
    /// The mirror of each generation run here, woken when it has something to copy.
    mirrors: Mutex<HashMap<Uuid, Arc<Mirror>>>,
    /// Wakes the reader when a replica is added.
    reader_wake: Notify,
    control: mpsc::UnboundedSender<Control>,
    control_rx: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
    tasks: OnceLock<()>,
    /// Whether the last Redis operation worked (logs once per outage).
    healthy: AtomicBool,
    /// Whether the stop and quota channels are subscribed right now.
    listening: watch::Sender<bool>,
}

pub struct RedisHub {
    local: Arc<InProcessHub>,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn stream_key(&self, message_id: Uuid) -> String {
        format!("{}gen:{message_id}", self.prefix)
    }

    fn conversation_channel(&self, conversation_id: Uuid) -> String {
        format!("{}conv:{conversation_id}", self.prefix)
    }

    fn quota_channel(&self) -> String {
        format!("{}quota", self.prefix)
    }

    fn stop_channel(&self) -> String {
        format!("{}stop", self.prefix)
    }

    fn wake_key(&self) -> String {
        format!("{}wake:{}", self.prefix, self.origin)
    }

    async fn commands(&self) -> redis::RedisResult<ConnectionManager> {
        self.commands
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .cloned()
    }

    /// Records the outcome of a Redis operation; logs the first failure of an outage and the
    /// recovery.
    fn outcome<T>(&self, what: &str, result: redis::RedisResult<T>) -> Option<T> {
        match result {
            Ok(value) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("event hub: Redis is reachable again");
                }
                Some(value)
            }
            Err(err) => {
                metrics::counter!("colloquy_hub_redis_errors_total", "operation" => what.to_owned())
                    .increment(1);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(operation = what, error = %err, "event hub: Redis failed; local subscribers are unaffected");
                } else {
                    tracing::debug!(operation = what, error = %err, "event hub: Redis still failing");
                }
                None
            }
        }
    }

    /// Runs the append script; returns the newest delta number now in the stream.
    async fn append(
        &self,
        message_id: Uuid,
        conversation_id: Uuid,
        deltas: &[(u32, String)],
        finished: bool,
        create: bool,
    ) -> redis::RedisResult<u32> {
        let ttl = if finished {
            self.retention
        } else {
            RUNNING_TTL.max(self.retention)
        };
        let mut invocation = self.append.prepare_invoke();
        invocation
            .key(self.stream_key(message_id))
            .key(self.conversation_channel(conversation_id))
            .arg(self.max_events)
            .arg(ttl.as_millis() as u64)
            .arg(&self.origin)
            .arg(message_id.to_string())
            .arg(if finished { "1" } else { "0" })
            .arg(if create { "1" } else { "0" });
        for (seq, text) in deltas {
            invocation.arg(*seq).arg(text);
        }
        let mut conn = self.commands().await?;
        invocation.invoke_async(&mut conn).await
    }

    async fn publish(&self, channel: String, payload: String) -> redis::RedisResult<()> {
        self.quick(async {
            let mut conn = self.commands().await?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut conn)
                .await
        })
        .await
    }

    /// Bounds a Redis call on the request path: a second normally, a moment while Redis is
    /// known to be down, so an outage does not slow every request.
    async fn quick<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        let budget = if self.healthy.load(Ordering::Relaxed) {
            COMMAND_TIMEOUT
        } else {
            Duration::from_millis(50)
        };
        tokio::time::timeout(budget, call)
            .await
            .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
    }
}

impl RedisHub {
    pub fn new(url: &str, retention: Duration, max_events: usize) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not a valid Redis URL: {e}"))?;
        let (control, control_rx) = mpsc::unbounded_channel();
        Ok(RedisHub {
            local: Arc::new(InProcessHub::new(retention, max_events)),
            shared: Arc::new(Shared {
                client,
                commands: tokio::sync::OnceCell::new(),
                prefix: "colloquy:hub:".to_owned(),
                origin: Uuid::new_v4().to_string(),
                retention,
                max_events: max_events.max(1),
                append: redis::Script::new(APPEND),
                mirrors: Mutex::new(HashMap::new()),
                reader_wake: Notify::new(),
                control,
                control_rx: Mutex::new(Some(control_rx)),
                tasks: OnceLock::new(),
                healthy: AtomicBool::new(true),
                listening: watch::channel(false).0,
            }),
        })
    }

    /// Starts the reader and pub/sub tasks on first use (inside the runtime).
    fn ensure_tasks(&self) {
        self.shared.tasks.get_or_init(|| {
            if let Some(control) = lock(&self.shared.control_rx).take() {
                tokio::spawn(pubsub(self.shared.clone(), self.local.clone(), control));
            }
            tokio::spawn(reader(self.shared.clone(), self.local.clone()));
        });
    }

    fn wake_mirror(&self, message_id: Uuid) -> Option<Arc<Mirror>> {
        let mirror = lock(&self.shared.mirrors).get(&message_id).cloned()?;
        mirror.wake.notify_one();
        Some(mirror)
    }
}

/// Copies a local generation's deltas and end into its stream until the end is stored.
/// Failures are retried with backoff; after the end, for at most the retention.
async fn mirror(
    shared: Arc<Shared>,
    local: Arc<InProcessHub>,
    message_id: Uuid,
    conversation_id: Uuid,
    handle: Arc<Mirror>,
    opened: oneshot::Sender<()>,
) {
    let mut opened = Some(opened);
    let mut stored = 0u32;
    let mut backoff = Duration::from_millis(50);
    let mut finished_at: Option<Instant> = None;
    // Until the end is stored, or the generation is dropped from the hub.
    while let Some(pending) = local.pending(message_id, stored, BATCH) {
        if pending.finished && finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        let finished = pending.finished && pending.deltas.len() < BATCH;
        if pending.deltas.is_empty() && !finished && opened.is_none() {
            handle.wake.notified().await;
            continue;
        }
        let result = shared
            .append(message_id, conversation_id, &pending.deltas, finished, true)
            .await;
        match shared.outcome("append", result) {
            Some(newest) => {
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
                backoff = Duration::from_millis(50);
                stored = stored.max(newest);
                if let Some((last, _)) = pending.deltas.last() {
                    stored = stored.max(*last);
                }
                if finished {
                    break;
                }
            }
            None => {
                // The sender learns of the failure and goes on without Redis.
                opened.take();
                if finished_at.is_some_and(|at| at.elapsed() > shared.retention) {
                    tracing::warn!(%message_id, "event hub: gave up copying a generation to Redis");
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    lock(&shared.mirrors).remove(&message_id);
    handle.done.send_replace(true);
}

/// What a stream entry id means.
enum Entry {
    Open,
    Delta(u32),
    End,
}

fn parse_entry(id: &str) -> Option<Entry> {
    let (major, minor) = id.split_once('-')?;
    match (major, minor.parse::<u32>().ok()?) {
        ("1", 0) => Some(Entry::Open),
        ("1", seq) => Some(Entry::Delta(seq)),
        ("2", _) => Some(Entry::End),
        _ => None,
    }
}

fn text_of(fields: &HashMap<String, redis::Value>) -> String {
    match fields.get("x") {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Fills every replica from its stream: one blocking `XREAD` over all of them.
async fn reader(shared: Arc<Shared>, local: Arc<InProcessHub>) {
    let wake_key = shared.wake_key();
    let mut wake_id = "0-0".to_owned();
    let mut positions: HashMap<Uuid, String> = HashMap::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let follows = local.replicas_in_use();
        if follows.is_empty() {
            positions.clear();
            let _ = tokio::time::timeout(BLOCK, shared.reader_wake.notified()).await;
            continue;
        }
        positions.retain(|id, _| follows.contains(id));
        for id in &follows {
            positions.entry(*id).or_insert_with(|| "0-0".to_owned());
        }
        if conn.is_none() {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(BLOCK + Duration::from_secs(3)));
            let connected = shared
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            conn = shared.outcome("connect reader", connected);
        }
        let Some(connection) = conn.as_mut() else {
            local.interrupt_replicas();
            positions.clear();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        let ids: Vec<Uuid> = positions.keys().copied().collect();
        let mut command = redis::cmd("XREAD");
        command
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&wake_key);
        for id in &ids {
            command.arg(shared.stream_key(*id));
        }
        command.arg(&wake_id);
        for id in &ids {
            command.arg(&positions[id]);
        }
        let read: redis::RedisResult<Option<StreamReadReply>> =
            command.query_async(connection).await;
        let Some(reply) = shared.outcome("xread", read) else {
            conn = None;
            local.interrupt_replicas();
            positions.clear();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(100);
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            if stream.key == wake_key {
                if let Some(last) = stream.ids.last() {
                    wake_id = last.id.clone();
                }
                continue;
            }
            let Some(message_id) = stream
                .key
                .strip_prefix(&format!("{}gen:", shared.prefix))
                .and_then(|id| id.parse::<Uuid>().ok())
            else {
                continue;
            };
            for entry in &stream.ids {
                match parse_entry(&entry.id) {
                    Some(Entry::Delta(seq)) => local.append(message_id, seq, text_of(&entry.map)),
                    Some(Entry::End) => local.end(message_id),
                    Some(Entry::Open) | None => {}
                }
            }
            if let (Some(last), Some(position)) =
                (stream.ids.last(), positions.get_mut(&message_id))
            {
                *position = last.id.clone();
            }
        }
    }
}

/// Keeps this process subscribed to the stop and quota channels and to the channels of the
/// conversations it has subscribers for, and hands what arrives to the local hub.
async fn pubsub(
    shared: Arc<Shared>,
    local: Arc<InProcessHub>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let conversation_prefix = format!("{}conv:", shared.prefix);
    let mut backoff = Duration::from_millis(100);
    let mut was_connected = false;
    loop {
        let connected = async {
            let (mut sink, stream) = shared.client.get_async_pubsub().await?.split();
            sink.subscribe(&[shared.stop_channel(), shared.quota_channel()])
                .await?;
            let wanted = local.conversations_in_use();
            if !wanted.is_empty() {
                let channels: Vec<String> = wanted
                    .iter()
                    .map(|c| shared.conversation_channel(*c))
                    .collect();
                sink.subscribe(&channels).await?;
            }
            Ok::<_, redis::RedisError>((sink, stream, wanted))
        }
        .await;
        if let Some((mut sink, mut stream, wanted)) = shared.outcome("subscribe", connected) {
            backoff = Duration::from_millis(100);
            if was_connected {
                // Quota events may have been missed: subscribers re-read.
                local.deliver_all_quotas();
            }
            was_connected = true;
            shared.listening.send_replace(true);
            let mut subscribed: HashSet<Uuid> = wanted.into_iter().collect();
            let mut tidy = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    message = stream.next() => {
                        let Some(message) = message else { break };
                        handle(&shared, &local, &conversation_prefix, &message);
                    }
                    request = control.recv() => match request {
                        Some(Control::Conversation(id, done)) => {
                            if !subscribed.contains(&id) {
                                let result = sink.subscribe(shared.conversation_channel(id)).await;
                                if shared.outcome("subscribe", result).is_none() {
                                    let _ = done.send(());
                                    break;
                                }
                                subscribed.insert(id);
                            }
                            let _ = done.send(());
                        }
                        None => return,
                    },
                    _ = tidy.tick() => {
                        let wanted: HashSet<Uuid> = local.conversations_in_use().into_iter().collect();
                        let gone: Vec<Uuid> = subscribed.difference(&wanted).copied().collect();
                        if !gone.is_empty() {
                            let channels: Vec<String> =
                                gone.iter().map(|c| shared.conversation_channel(*c)).collect();
                            if shared.outcome("unsubscribe", sink.unsubscribe(&channels).await).is_none() {
                                break;
                            }
                            for id in gone {
                                subscribed.remove(&id);
                            }
                        }
                    }
                }
            }
            tracing::warn!("event hub: lost the Redis subscription; reconnecting");
            metrics::counter!("colloquy_hub_redis_errors_total", "operation" => "subscription")
                .increment(1);
            shared.healthy.store(false, Ordering::Relaxed);
            shared.listening.send_replace(false);
            // Events from other processes were missed: those subscribers start again.
            local.interrupt_conversations();
        }
        // Until Redis is back, subscribes are answered at once (they get local events, and
        // are subscribed in Redis on reconnection).
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                request = control.recv() => match request {
                    Some(Control::Conversation(_, done)) => { let _ = done.send(()); }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn handle(shared: &Shared, local: &InProcessHub, conversation_prefix: &str, message: &redis::Msg) {
    let channel = message.get_channel_name();
    let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
        return;
    };
    if let Some(id) = channel.strip_prefix(conversation_prefix) {
        let (Ok(conversation_id), Ok(wire)) =
            (id.parse::<Uuid>(), serde_json::from_str::<Wire>(payload))
        else {
            tracing::warn!(channel, "event hub: unreadable conversation event");
            return;
        };
        if wire.o != shared.origin {
            for event in wire.e {
                local.deliver(conversation_id, event.into_event());
            }
        }
    } else if channel == shared.stop_channel() {
        if let Ok(message_id) = payload.parse::<Uuid>() {
            local.stop_local(message_id, StopReason::Cancelled);
        }
    } else if channel == shared.quota_channel()
        && let Ok(wire) = serde_json::from_str::<QuotaWire>(payload)
        && wire.o != shared.origin
    {
        local.deliver_quota(wire.w);
    }
}

#[async_trait]
impl EventHub for RedisHub {
    async fn open_generation(
        &self,
        message_id: Uuid,
        conversation_id: Uuid,
    ) -> watch::Receiver<StopReason> {
        self.ensure_tasks();
        if self.shared.healthy.load(Ordering::Relaxed) {
            // A process's first generation waits until stop requests reach it.
            let mut listening = self.shared.listening.subscribe();
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, listening.wait_for(|on| *on)).await;
        }
        let stop = self.local.open(message_id);
        let handle = Arc::new(Mirror {
            wake: Notify::new(),
            done: watch::channel(false).0,
        });
        lock(&self.shared.mirrors).insert(message_id, handle.clone());
        let (opened, opened_rx) = oneshot::channel();
        tokio::spawn(mirror(
            self.shared.clone(),
            self.local.clone(),
            message_id,
            conversation_id,
            handle,
            opened,
        ));
        // Wait for the stream to exist, so a subscriber on another process that asks right
        // after `sendMessage` returned finds it; without Redis, go on at once.
        if self.shared.healthy.load(Ordering::Relaxed) {
            let _ = tokio::time::timeout(COMMAND_TIMEOUT, opened_rx).await;
        }
        stop
    }

    async fn publish_delta(&self, message_id: Uuid, conversation_id: Uuid, seq: u32, text: String) {
        self.local.append(message_id, seq, text.clone());
        self.local.deliver(
            conversation_id,
            ConversationEvent::Delta {
                message_id,
                seq,
                text,
            },
        );
        self.wake_mirror(message_id);
    }

    async fn finish_generation(&self, message_id: Uuid, conversation_id: Uuid) {
        self.local.end(message_id);
        self.local.deliver(
            conversation_id,
            ConversationEvent::MessageFinished { message_id },
        );
        match self.wake_mirror(message_id) {
            // Wait (briefly) until the end is in Redis: a process shutting down must not
            // leave followers elsewhere waiting for it.
            Some(mirror) if self.shared.healthy.load(Ordering::Relaxed) => {
                let mut done = mirror.done.subscribe();
                let _ = tokio::time::timeout(COMMAND_TIMEOUT, done.wait_for(|d| *d)).await;
            }
            Some(_) => {}
            None => {
                // Ended by a process that did not run it (its runner died): store the end
                // directly, which also tells the conversation's subscribers elsewhere.
                let result = self
                    .shared
                    .append(message_id, conversation_id, &[], true, false)
                    .await;
                self.shared.outcome("finish", result);
            }
        }
    }

    async fn subscribe_generation(
        &self,
        message_id: Uuid,
        after_seq: u32,
    ) -> Option<BoxStream<'static, GenerationEvent>> {
        self.ensure_tasks();
        if let Some(events) = self.local.subscribe_generation(message_id, after_seq).await {
            return Some(events);
        }
        // Running elsewhere? Only a stream that exists is followed; otherwise (or without
        // Redis) the caller reads Postgres.
        let exists = self
            .shared
            .quick(async {
                let mut conn = self.shared.commands().await?;
                redis::cmd("EXISTS")
                    .arg(self.shared.stream_key(message_id))
                    .query_async::<bool>(&mut conn)
                    .await
            })
            .await;
        if !self.shared.outcome("exists", exists)? {
            return None;
        }
        let events = self.local.follow_replica(message_id, after_seq);
        self.shared.reader_wake.notify_one();
        // The reader may be blocked in XREAD on the other streams: wake it there too.
        let wake = self
            .shared
            .quick(async {
                let mut conn = self.shared.commands().await?;
                redis::cmd("XADD")
                    .arg(self.shared.wake_key())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(16)
                    .arg("*")
                    .arg("w")
                    .arg(1)
                    .query_async::<String>(&mut conn)
                    .await?;
                redis::cmd("PEXPIRE")
                    .arg(self.shared.wake_key())
                    .arg(RUNNING_TTL.as_millis() as u64)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        self.shared.outcome("wake", wake);
        Some(events)
    }

    async fn publish_conversation(&self, conversation_id: Uuid, event: ConversationEvent) {
        let wire = WireEvent::from_event(&event);
        self.local.deliver(conversation_id, event);
        let Some(wire) = wire else { return };
        let payload = Wire {
            o: self.shared.origin.clone(),
            e: vec![wire],
        };
        if let Ok(payload) = serde_json::to_string(&payload) {
            let result = self
                .shared
                .publish(self.shared.conversation_channel(conversation_id), payload)
                .await;
            self.shared.outcome("publish", result);
        }
    }

    async fn subscribe_conversation(
        &self,
        conversation_id: Uuid,
    ) -> BoxStream<'static, ConversationEvent> {
        self.ensure_tasks();
        let (events, _) = self.local.subscribe_local(conversation_id);
        let (done, confirmed) = oneshot::channel();
        if self
            .shared
            .control
            .send(Control::Conversation(conversation_id, done))
            .is_ok()
        {
            let _ = tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await;
        }
        events
    }

    async fn stop(&self, message_id: Uuid, reason: StopReason) -> bool {
        self.ensure_tasks();
        if self.local.stop_local(message_id, reason) {
            return true;
        }
        if reason == StopReason::Cancelled {
            let result = self
                .shared
                .publish(self.shared.stop_channel(), message_id.to_string())
                .await;
            self.shared.outcome("stop", result);
        }
        false
    }

    async fn stop_all(&self, reason: StopReason) {
        self.local.stop_all(reason).await;
    }

    async fn publish_quota(&self, workspace_id: Uuid) {
        self.local.deliver_quota(workspace_id);
        let payload = QuotaWire {
            o: self.shared.origin.clone(),
            w: workspace_id,
        };
        if let Ok(payload) = serde_json::to_string(&payload) {
            let result = self
                .shared
                .publish(self.shared.quota_channel(), payload)
                .await;
            self.shared.outcome("publish", result);
        }
    }

    async fn subscribe_quota(&self, workspace_id: Uuid) -> BoxStream<'static, ()> {
        self.ensure_tasks();
        self.local.subscribe_quota(workspace_id).await
    }

    fn held(&self) -> usize {
        self.local.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::hub::tests::deltas;

    fn redis_url() -> String {
        std::env::var("COLLOQUY_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    fn hub() -> RedisHub {
        RedisHub::new(&redis_url(), Duration::from_secs(60), 10_000).expect("hub")
    }

    async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .expect("in time")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_process_replays_then_follows_without_gap_or_duplicate() {
        let (a, b) = (hub(), hub());
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let _stop = a.open_generation(m, c).await;
        for seq in 1..=50 {
            a.publish_delta(m, c, seq, format!("t{seq} ")).await;
        }
        let late = within(b.subscribe_generation(m, 10)).await.expect("found");
        let early = within(b.subscribe_generation(m, 0)).await.expect("found");
        let writer = tokio::spawn(async move {
            for seq in 51..=600 {
                a.publish_delta(m, c, seq, format!("t{seq} ")).await;
                if seq % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            a.finish_generation(m, c).await;
            a
        });
        let late: Vec<_> = within(late.collect()).await;
        let early: Vec<_> = within(early.collect()).await;
        let _a = writer.await.expect("writer");
        assert_eq!(deltas(&late), (11..=600).collect::<Vec<_>>());
        assert_eq!(deltas(&early), (1..=600).collect::<Vec<_>>());
        assert_eq!(late.last(), Some(&GenerationEvent::Finished));
        // A third process joining after the end gets the rest and the end.
        let c3 = hub();
        let tail: Vec<_> = within(async {
            c3.subscribe_generation(m, 598)
                .await
                .expect("kept")
                .collect()
                .await
        })
        .await;
        assert_eq!(deltas(&tail), vec![599, 600]);
        assert_eq!(tail.last(), Some(&GenerationEvent::Finished));
        // Unknown generations are left to Postgres.
        assert!(b.subscribe_generation(Uuid::new_v4(), 0).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stops_conversation_events_and_quota_changes_cross_processes() {
        let (a, b) = (hub(), hub());
        let (m, c, w) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut feed = within(b.subscribe_conversation(c)).await;
        // Confirmed after the quota channel was subscribed.
        let mut quota = within(b.subscribe_quota(w)).await;
        let mut stop = a.open_generation(m, c).await;
        a.publish_conversation(c, ConversationEvent::MessageCreated { message_id: m })
            .await;
        a.publish_delta(m, c, 1, "hello".into()).await;
        a.publish_quota(w).await;
        assert_eq!(
            within(feed.next()).await,
            Some(ConversationEvent::MessageCreated { message_id: m })
        );
        assert_eq!(
            within(feed.next()).await,
            Some(ConversationEvent::Delta {
                message_id: m,
                seq: 1,
                text: "hello".into()
            })
        );
        assert_eq!(within(quota.next()).await, Some(()));
        // A stop sent to B reaches the runner on A.
        assert!(!b.stop(m, StopReason::Cancelled).await, "not running on B");
        within(stop.changed()).await.expect("signal");
        assert_eq!(*stop.borrow(), StopReason::Cancelled);
        a.finish_generation(m, c).await;
        assert_eq!(
            within(feed.next()).await,
            Some(ConversationEvent::MessageFinished { message_id: m })
        );
        let u = Uuid::new_v4();
        a.publish_conversation(c, ConversationEvent::ComparisonReady { user_message_id: u })
            .await;
        assert_eq!(
            within(feed.next()).await,
            Some(ConversationEvent::ComparisonReady { user_message_id: u })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_survivor_ends_a_generation_whose_runner_died() {
        let (a, b, survivor) = (hub(), hub(), hub());
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let _stop = a.open_generation(m, c).await;
        a.publish_delta(m, c, 1, "partial".into()).await;
        let follower = within(b.subscribe_generation(m, 0)).await.expect("found");
        drop(a); // The runner's process is gone; its mirror task goes quiet.
        survivor.finish_generation(m, c).await;
        let events: Vec<_> = within(follower.collect()).await;
        assert_eq!(deltas(&events), vec![1]);
        assert_eq!(events.last(), Some(&GenerationEvent::Finished));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_redis_local_subscribers_still_stream() {
        let hub = RedisHub::new("redis://127.0.0.1:1", Duration::from_secs(60), 100).expect("hub");
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let started = Instant::now();
        let _stop = hub.open_generation(m, c).await;
        let follower = hub.subscribe_generation(m, 0).await.expect("local");
        for seq in 1..=5 {
            hub.publish_delta(m, c, seq, "x".into()).await;
        }
        hub.finish_generation(m, c).await;
        let events: Vec<_> = within(follower.collect()).await;
        assert_eq!(deltas(&events), vec![1, 2, 3, 4, 5]);
        assert!(hub.subscribe_generation(Uuid::new_v4(), 0).await.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "an unreachable Redis must not stall the hub: {:?}",
            started.elapsed()
        );
    }
}
