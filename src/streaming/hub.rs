//! The event hub: how generation deltas, conversation events and stop requests travel from
//! the generation runner to subscribers and back. Nothing outside the hub assumes one
//! process: `InProcessHub` serves a single process, and `RedisHub` (streaming/redis_hub.rs)
//! wraps it to carry the same events between processes.
//!
//! Per generation the in-process hub keeps a bounded replay buffer and a broadcast channel,
//! updated under one lock, so `subscribe_generation(after_seq)` replays every later delta once
//! and then follows live ones with no gap and no duplicate. Finished generations are dropped
//! `retention` after their end. The same structure holds *replicas*: copies of generations
//! running in another process, filled from Redis, which local subscribers follow exactly as
//! they follow a local generation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// What a generation's subscribers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationEvent {
    Delta {
        seq: u32,
        text: String,
    },
    /// The generation ended (its final state is in Postgres).
    Finished,
    /// The subscriber fell further behind than the replay buffer reaches.
    Lost,
    /// The hub lost the generation's source (Redis went away): the subscriber reads the
    /// message from Postgres and subscribes again.
    Interrupted,
}

/// What a conversation's subscribers receive. Rows are read from Postgres by the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationEvent {
    MessageCreated {
        message_id: Uuid,
    },
    Delta {
        message_id: Uuid,
        seq: u32,
        text: String,
    },
    MessageFinished {
        message_id: Uuid,
    },
    ConversationUpdated,
    /// The comparison of the answers to this user message has been judged.
    ComparisonReady {
        user_message_id: Uuid,
    },
    /// Events from other processes stopped arriving (Redis went away): the subscriber
    /// re-reads the conversation and subscribes again.
    Interrupted,
}

/// Why a running generation must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Running,
    /// `stopGeneration`: ends CANCELLED.
    Cancelled,
    /// The server is shutting down: ends FAILED.
    Shutdown,
}

#[async_trait]
pub trait EventHub: Send + Sync + 'static {
    /// Opens a generation before its first delta; the receiver tells the runner to stop.
    async fn open_generation(
        &self,
        message_id: Uuid,
        conversation_id: Uuid,
    ) -> watch::Receiver<StopReason>;
    /// Publishes delta `seq` (1, 2, 3, … from the single runner) to the generation's and the
    /// conversation's subscribers.
    async fn publish_delta(&self, message_id: Uuid, conversation_id: Uuid, seq: u32, text: String);
    /// Marks the generation finished (after its final state was written). Any process may
    /// call it: the runner, or whoever ended a generation whose runner died.
    async fn finish_generation(&self, message_id: Uuid, conversation_id: Uuid);
    /// Replays deltas after `after_seq`, then follows live ones until `Finished`. None when
    /// the hub knows nothing of the generation (never started, or long finished).
    async fn subscribe_generation(
        &self,
        message_id: Uuid,
        after_seq: u32,
    ) -> Option<BoxStream<'static, GenerationEvent>>;
    async fn publish_conversation(&self, conversation_id: Uuid, event: ConversationEvent);
    async fn subscribe_conversation(
        &self,
        conversation_id: Uuid,
    ) -> BoxStream<'static, ConversationEvent>;
    /// Asks whoever runs the generation to stop it. True when it runs in this process (and
    /// was told); otherwise the request goes to the other processes, if any.
    async fn stop(&self, message_id: Uuid, reason: StopReason) -> bool;
    /// Stops every running generation of this process (shutdown).
    async fn stop_all(&self, reason: StopReason);
    /// Tells `usageUpdated` subscribers of a workspace that its quota changed.
    async fn publish_quota(&self, workspace_id: Uuid);
    /// One item each time the workspace's quota changes.
    async fn subscribe_quota(&self, workspace_id: Uuid) -> BoxStream<'static, ()>;
    /// The generations whose events are held (running, or ended within the retention).
    fn held(&self) -> usize;
}

struct Generation {
    /// The newest deltas, `(seq, text)`, at most `max_buffer` of them.
    buffer: VecDeque<(u32, String)>,
    finished_at: Option<Instant>,
    live: broadcast::Sender<GenerationEvent>,
    /// Tells the local runner to stop; None for a replica (its runner is elsewhere).
    stop: Option<watch::Sender<StopReason>>,
}

impl Generation {
    fn new(stop: Option<watch::Sender<StopReason>>) -> Self {
        Generation {
            buffer: VecDeque::new(),
            finished_at: None,
            live: broadcast::channel(GENERATION_LIVE_CAPACITY).0,
            stop,
        }
    }
}

struct Inner {
    generations: Mutex<HashMap<Uuid, Generation>>,
    conversations: Mutex<HashMap<Uuid, broadcast::Sender<ConversationEvent>>>,
    quotas: Mutex<HashMap<Uuid, broadcast::Sender<()>>>,
    last_sweep: Mutex<Instant>,
    retention: Duration,
    max_buffer: usize,
}

pub struct InProcessHub {
    inner: Arc<Inner>,
}

/// A generation's live channel is bounded; a subscriber that falls behind re-syncs from the
/// buffer, so it can be small: its slots are allocated up front, for every generation, kept
/// for the retention after the end (1024 slots were 64 KiB and most of a generation's cost).
const GENERATION_LIVE_CAPACITY: usize = 128;
/// A conversation's live channel: a subscriber that falls behind it skips ahead.
const CONVERSATION_LIVE_CAPACITY: usize = 1024;
const SWEEP_EVERY: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a local generation holds after a given delta (for the Redis mirror).
pub struct Pending {
    /// Deltas after the one asked for, oldest first, at most the number asked for.
    pub deltas: Vec<(u32, String)>,
    /// The generation has ended (and `deltas` may still hold its last deltas).
    pub finished: bool,
}

impl InProcessHub {
    pub fn new(retention: Duration, max_buffer: usize) -> Self {
        InProcessHub {
            inner: Arc::new(Inner {
                generations: Mutex::new(HashMap::new()),
                conversations: Mutex::new(HashMap::new()),
                quotas: Mutex::new(HashMap::new()),
                last_sweep: Mutex::new(Instant::now()),
                retention,
                max_buffer: max_buffer.max(1),
            }),
        }
    }

    fn sweep(&self) {
        let now = Instant::now();
        {
            let mut last = lock(&self.inner.last_sweep);
            if now.duration_since(*last) < SWEEP_EVERY {
                return;
            }
            *last = now;
        }
        let retention = self.inner.retention;
        lock(&self.inner.generations).retain(|_, g| {
            g.finished_at
                .is_none_or(|at| now.duration_since(at) < retention)
        });
        lock(&self.inner.conversations).retain(|_, tx| tx.receiver_count() > 0);
        lock(&self.inner.quotas).retain(|_, tx| tx.receiver_count() > 0);
    }

    /// Opens a generation run by this process.
    pub fn open(&self, message_id: Uuid) -> watch::Receiver<StopReason> {
        self.sweep();
        let (stop, stop_rx) = watch::channel(StopReason::Running);
        lock(&self.inner.generations).insert(message_id, Generation::new(Some(stop)));
        stop_rx
    }

    /// Adds delta `seq` to a generation (local or replica) and hands it to its followers.
    /// Deltas at or below the newest held one are ignored.
    pub fn append(&self, message_id: Uuid, seq: u32, text: String) {
        let mut generations = lock(&self.inner.generations);
        let Some(generation) = generations.get_mut(&message_id) else {
            return;
        };
        if generation.finished_at.is_some()
            || generation
                .buffer
                .back()
                .is_some_and(|(last, _)| *last >= seq)
        {
            return;
        }
        generation.buffer.push_back((seq, text.clone()));
        while generation.buffer.len() > self.inner.max_buffer {
            generation.buffer.pop_front();
        }
        let _ = generation.live.send(GenerationEvent::Delta { seq, text });
    }

    /// Marks a generation (local or replica) ended.
    pub fn end(&self, message_id: Uuid) {
        let mut generations = lock(&self.inner.generations);
        if let Some(generation) = generations.get_mut(&message_id)
            && generation.finished_at.is_none()
        {
            generation.finished_at = Some(Instant::now());
            let _ = generation.live.send(GenerationEvent::Finished);
        }
    }

    /// Hands a conversation event to this process's subscribers.
    pub fn deliver(&self, conversation_id: Uuid, event: ConversationEvent) {
        if let Some(tx) = lock(&self.inner.conversations).get(&conversation_id) {
            let _ = tx.send(event);
        }
    }

    /// Hands a quota change to this process's subscribers.
    pub fn deliver_quota(&self, workspace_id: Uuid) {
        if let Some(tx) = lock(&self.inner.quotas).get(&workspace_id) {
            let _ = tx.send(());
        }
    }

    /// Tells every quota subscriber to re-read (after a gap in the events from elsewhere).
    pub fn deliver_all_quotas(&self) {
        for tx in lock(&self.inner.quotas).values() {
            let _ = tx.send(());
        }
    }

    /// Stops a generation run by this process. False when it is not running here.
    pub fn stop_local(&self, message_id: Uuid, reason: StopReason) -> bool {
        let generations = lock(&self.inner.generations);
        match generations.get(&message_id) {
            Some(Generation {
                stop: Some(stop),
                finished_at: None,
                ..
            }) => {
                let _ = stop.send(reason);
                true
            }
            _ => false,
        }
    }

    /// Whether the hub holds the generation (run here, or a replica).
    pub fn holds(&self, message_id: Uuid) -> bool {
        lock(&self.inner.generations).contains_key(&message_id)
    }

    /// Up to `max` deltas after `after_seq` of a generation run here; None when it is not
    /// (or no longer) held.
    pub fn pending(&self, message_id: Uuid, after_seq: u32, max: usize) -> Option<Pending> {
        let generations = lock(&self.inner.generations);
        let generation = generations.get(&message_id)?;
        let deltas: Vec<(u32, String)> = generation
            .buffer
            .iter()
            .filter(|(seq, _)| *seq > after_seq)
            .take(max)
            .cloned()
            .collect();
        Some(Pending {
            finished: generation.finished_at.is_some(),
            deltas,
        })
    }

    /// Follows a generation running elsewhere through a local replica, created empty when
    /// missing (the caller fills it). Creation and subscription happen under one lock, so
    /// a replica is never dropped between them.
    pub fn follow_replica(
        &self,
        message_id: Uuid,
        after_seq: u32,
    ) -> BoxStream<'static, GenerationEvent> {
        self.sweep();
        let (pending, live) = {
            let mut generations = lock(&self.inner.generations);
            let generation = generations
                .entry(message_id)
                .or_insert_with(|| Generation::new(None));
            snapshot_of(generation, after_seq)
        };
        self.follow(message_id, after_seq, pending, live)
    }

    /// The replicas still being filled. Unfinished replicas nobody follows any more are
    /// dropped here.
    pub fn replicas_in_use(&self) -> Vec<Uuid> {
        let mut generations = lock(&self.inner.generations);
        generations.retain(|_, g| {
            g.stop.is_some() || g.finished_at.is_some() || g.live.receiver_count() > 0
        });
        generations
            .iter()
            .filter(|(_, g)| g.stop.is_none() && g.finished_at.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ends the unfinished replicas with `Interrupted` and forgets them, so the next
    /// subscriber starts afresh.
    pub fn interrupt_replicas(&self) {
        lock(&self.inner.generations).retain(|_, g| {
            let interrupted = g.stop.is_none() && g.finished_at.is_none();
            if interrupted {
                let _ = g.live.send(GenerationEvent::Interrupted);
            }
            !interrupted
        });
    }

    /// Subscribes to a conversation's events here; true when this is its first subscriber
    /// in this process.
    pub fn subscribe_local(
        &self,
        conversation_id: Uuid,
    ) -> (BoxStream<'static, ConversationEvent>, bool) {
        self.sweep();
        let (rx, first) = {
            let mut conversations = lock(&self.inner.conversations);
            let first = conversations
                .get(&conversation_id)
                .is_none_or(|tx| tx.receiver_count() == 0);
            let rx = conversations
                .entry(conversation_id)
                .or_insert_with(|| broadcast::channel(CONVERSATION_LIVE_CAPACITY).0)
                .subscribe();
            (rx, first)
        };
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    // Conversation events are a live feed; a lagging subscriber skips ahead.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "conversation subscriber lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed();
        (stream, first)
    }

    /// The conversations with subscribers in this process (others are forgotten).
    pub fn conversations_in_use(&self) -> Vec<Uuid> {
        let mut conversations = lock(&self.inner.conversations);
        conversations.retain(|_, tx| tx.receiver_count() > 0);
        conversations.keys().copied().collect()
    }

    /// Ends every conversation subscription of this process with `Interrupted`.
    pub fn interrupt_conversations(&self) {
        for (_, tx) in lock(&self.inner.conversations).drain() {
            let _ = tx.send(ConversationEvent::Interrupted);
        }
    }

    fn follow(
        &self,
        message_id: Uuid,
        after_seq: u32,
        pending: VecDeque<GenerationEvent>,
        live: Option<broadcast::Receiver<GenerationEvent>>,
    ) -> BoxStream<'static, GenerationEvent> {
        let follow = Follow {
            inner: self.inner.clone(),
            message_id,
            last_seq: after_seq,
            pending,
            live,
            done: false,
        };
        futures_util::stream::unfold(follow, Follow::next).boxed()
    }
}

/// Replay then live, with re-sync from the buffer when the live channel lagged.
struct Follow {
    inner: Arc<Inner>,
    message_id: Uuid,
    last_seq: u32,
    pending: VecDeque<GenerationEvent>,
    live: Option<broadcast::Receiver<GenerationEvent>>,
    done: bool,
}

type Snapshot = (
    VecDeque<GenerationEvent>,
    Option<broadcast::Receiver<GenerationEvent>>,
);

/// Events after `after_seq` from the buffer, and a live receiver positioned right after them
/// (the caller holds the lock, so nothing falls between).
fn snapshot_of(generation: &Generation, after_seq: u32) -> Snapshot {
    let mut events: VecDeque<GenerationEvent> = VecDeque::new();
    let oldest = generation.buffer.front().map(|(seq, _)| *seq);
    if oldest.is_some_and(|oldest| oldest > after_seq + 1) {
        events.push_back(GenerationEvent::Lost);
        return (events, None);
    }
    events.extend(
        generation
            .buffer
            .iter()
            .filter(|(seq, _)| *seq > after_seq)
            .map(|(seq, text)| GenerationEvent::Delta {
                seq: *seq,
                text: text.clone(),
            }),
    );
    if generation.finished_at.is_some() {
        events.push_back(GenerationEvent::Finished);
        return (events, None);
    }
    (events, Some(generation.live.subscribe()))
}

impl Inner {
    fn snapshot(&self, message_id: Uuid, after_seq: u32) -> Option<Snapshot> {
        let generations = lock(&self.generations);
        Some(snapshot_of(generations.get(&message_id)?, after_seq))
    }
}

impl Follow {
    async fn next(mut self) -> Option<(GenerationEvent, Follow)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                match &event {
                    GenerationEvent::Delta { seq, .. } if *seq <= self.last_seq => continue,
                    // A hole (a replica that started after trimmed deltas): never skip text.
                    GenerationEvent::Delta { seq, .. } if *seq > self.last_seq + 1 => {
                        self.done = true;
                        self.pending.clear();
                        return Some((GenerationEvent::Lost, self));
                    }
                    GenerationEvent::Delta { seq, .. } => self.last_seq = *seq,
                    GenerationEvent::Finished
                    | GenerationEvent::Lost
                    | GenerationEvent::Interrupted => {
                        self.done = true;
                        self.pending.clear();
                    }
                }
                return Some((event, self));
            }
            if self.done {
                return None;
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok(event) => self.pending.push_back(event),
                Err(broadcast::error::RecvError::Lagged(_))
                | Err(broadcast::error::RecvError::Closed) => {
                    // Re-sync from the buffer. A generation that vanished before its end
                    // (an interrupted replica) is reported, never silently ended.
                    match self.inner.snapshot(self.message_id, self.last_seq) {
                        Some((events, live)) => {
                            self.pending = events;
                            self.live = live;
                        }
                        None => {
                            self.pending.push_back(GenerationEvent::Interrupted);
                            self.live = None;
                        }
                    }
                }
            }
        }
    }
}

#[async_trait]
impl EventHub for InProcessHub {
    async fn open_generation(
        &self,
        message_id: Uuid,
        _conversation_id: Uuid,
    ) -> watch::Receiver<StopReason> {
        self.open(message_id)
    }

    async fn publish_delta(&self, message_id: Uuid, conversation_id: Uuid, seq: u32, text: String) {
        self.append(message_id, seq, text.clone());
        self.deliver(
            conversation_id,
            ConversationEvent::Delta {
                message_id,
                seq,
                text,
            },
        );
    }

    async fn finish_generation(&self, message_id: Uuid, conversation_id: Uuid) {
        self.end(message_id);
        self.deliver(
            conversation_id,
            ConversationEvent::MessageFinished { message_id },
        );
    }

    async fn subscribe_generation(
        &self,
        message_id: Uuid,
        after_seq: u32,
    ) -> Option<BoxStream<'static, GenerationEvent>> {
        let (pending, live) = self.inner.snapshot(message_id, after_seq)?;
        Some(self.follow(message_id, after_seq, pending, live))
    }

    async fn publish_conversation(&self, conversation_id: Uuid, event: ConversationEvent) {
        self.deliver(conversation_id, event);
    }

    async fn subscribe_conversation(
        &self,
        conversation_id: Uuid,
    ) -> BoxStream<'static, ConversationEvent> {
        self.subscribe_local(conversation_id).0
    }

    async fn stop(&self, message_id: Uuid, reason: StopReason) -> bool {
        self.stop_local(message_id, reason)
    }

    async fn stop_all(&self, reason: StopReason) {
        for generation in lock(&self.inner.generations).values() {
            if let (Some(stop), None) = (&generation.stop, generation.finished_at) {
                let _ = stop.send(reason);
            }
        }
    }

    async fn publish_quota(&self, workspace_id: Uuid) {
        self.deliver_quota(workspace_id);
    }

    async fn subscribe_quota(&self, workspace_id: Uuid) -> BoxStream<'static, ()> {
        self.sweep();
        let rx = lock(&self.inner.quotas)
            .entry(workspace_id)
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                // A lagging subscriber only needs to know something changed.
                Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }

    fn held(&self) -> usize {
        lock(&self.inner.generations).len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The delta numbers among `events`.
    pub(crate) fn deltas(events: &[GenerationEvent]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                GenerationEvent::Delta { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn replay_then_live_without_gap_or_duplicate() {
        let hub = InProcessHub::new(Duration::from_secs(60), 100);
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let _stop = hub.open_generation(m, c).await;
        for seq in 1..=3 {
            hub.publish_delta(m, c, seq, format!("t{seq}")).await;
        }
        let late = hub.subscribe_generation(m, 1).await.expect("known");
        let early = hub.subscribe_generation(m, 0).await.expect("known");
        for seq in 4..=6 {
            hub.publish_delta(m, c, seq, format!("t{seq}")).await;
        }
        hub.finish_generation(m, c).await;
        let late: Vec<_> = late.collect().await;
        let early: Vec<_> = early.collect().await;
        assert_eq!(deltas(&late), vec![2, 3, 4, 5, 6]);
        assert_eq!(deltas(&early), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(late.last(), Some(&GenerationEvent::Finished));
        // After the end, a subscriber still gets the replay and the end.
        let after: Vec<_> = hub
            .subscribe_generation(m, 5)
            .await
            .expect("kept")
            .collect()
            .await;
        assert_eq!(
            after,
            vec![
                GenerationEvent::Delta {
                    seq: 6,
                    text: "t6".into()
                },
                GenerationEvent::Finished
            ]
        );
        assert!(hub.subscribe_generation(Uuid::new_v4(), 0).await.is_none());
    }

    #[tokio::test]
    async fn a_lagging_subscriber_resyncs_from_the_buffer() {
        let hub = InProcessHub::new(Duration::from_secs(60), 10_000);
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let _stop = hub.open_generation(m, c).await;
        let slow = hub.subscribe_generation(m, 0).await.expect("known");
        for seq in 1..=3000 {
            hub.publish_delta(m, c, seq, "x".into()).await;
        }
        hub.finish_generation(m, c).await;
        let got: Vec<_> = slow.collect().await;
        assert_eq!(deltas(&got), (1..=3000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn beyond_the_buffer_is_reported_lost() {
        let hub = InProcessHub::new(Duration::from_secs(60), 5);
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let _stop = hub.open_generation(m, c).await;
        for seq in 1..=10 {
            hub.publish_delta(m, c, seq, "x".into()).await;
        }
        let got: Vec<_> = hub
            .subscribe_generation(m, 2)
            .await
            .expect("known")
            .take(1)
            .collect()
            .await;
        assert_eq!(got, vec![GenerationEvent::Lost]);
        let got: Vec<_> = hub
            .subscribe_generation(m, 5)
            .await
            .expect("known")
            .take(5)
            .collect()
            .await;
        assert_eq!(deltas(&got), vec![6, 7, 8, 9, 10]);
    }

    #[tokio::test]
    async fn replicas_live_while_followed_and_report_a_hole() {
        let hub = InProcessHub::new(Duration::from_secs(60), 100);
        let m = Uuid::new_v4();
        let follower = hub.follow_replica(m, 0);
        assert_eq!(hub.replicas_in_use(), vec![m]);
        hub.append(m, 1, "a".into());
        // A replica that starts after trimmed deltas never skips text silently.
        hub.append(m, 3, "c".into());
        let got: Vec<_> = follower.take(2).collect().await;
        assert_eq!(
            got,
            vec![
                GenerationEvent::Delta {
                    seq: 1,
                    text: "a".into()
                },
                GenerationEvent::Lost
            ]
        );
        // Nobody follows it any more: it is dropped, and with it its memory.
        assert!(hub.replicas_in_use().is_empty());
        assert!(!hub.holds(m));
        // Interrupted followers are told, never left waiting.
        let follower = hub.follow_replica(m, 0);
        hub.interrupt_replicas();
        let got: Vec<_> = follower.collect().await;
        assert_eq!(got, vec![GenerationEvent::Interrupted]);
    }

    #[tokio::test]
    async fn stop_reaches_the_runner_and_conversation_events_flow() {
        let hub = InProcessHub::new(Duration::from_secs(60), 10);
        let (m, c) = (Uuid::new_v4(), Uuid::new_v4());
        let mut stop = hub.open_generation(m, c).await;
        let mut feed = hub.subscribe_conversation(c).await;
        assert!(hub.stop(m, StopReason::Cancelled).await);
        stop.changed().await.expect("signal");
        assert_eq!(*stop.borrow(), StopReason::Cancelled);
        hub.publish_delta(m, c, 1, "a".into()).await;
        hub.finish_generation(m, c).await;
        assert!(
            !hub.stop(m, StopReason::Cancelled).await,
            "already finished"
        );
        assert_eq!(
            feed.next().await,
            Some(ConversationEvent::Delta {
                message_id: m,
                seq: 1,
                text: "a".into()
            })
        );
        assert_eq!(
            feed.next().await,
            Some(ConversationEvent::MessageFinished { message_id: m })
        );
    }
}
