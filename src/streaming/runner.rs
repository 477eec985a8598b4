//! The generation runner: one tokio task per assistant message. It builds the context along
//! the branch, streams from the provider, numbers each delta (1, 2, 3 …) and publishes it to
//! the hub, flushes the partial content to Postgres at least once a second (never per token),
//! and always ends the message COMPLETE, CANCELLED or FAILED with the text so far, then
//! settles the quota and queues the title job after a first reply.
//!
//! A stop reaches the runner two ways: the hub's signal, and the message's durable
//! `stop_requested` flag, which `stopGeneration` sets from any process. The flag rides on the
//! flush's `RETURNING` while text flows, and a cheap read every `STOP_POLL_EVERY` while none
//! does. A flush that finds the message already ended (reaped while this process looked
//! dead, or deleted) stops the runner too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tracing::Instrument;
use uuid::Uuid;

use crate::app::App;
use crate::conversations::model::{Conversation, Message};
use crate::error::AppResult;
use crate::llm::context::{self, ContextError};
use crate::llm::{ChatMessage, ChatRequest, ChatRole, Chunk, Usage};
use crate::streaming::admission::{Admitted, Used};
use crate::streaming::hub::StopReason;
use crate::streaming::jobs;

/// How often the partial content is written while text flows.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the stop flag is read while no text flows (a stalled stream can be stopped).
const STOP_POLL_EVERY: Duration = Duration::from_secs(2);

/// A generation to run: the assistant message and what it was admitted with.
#[derive(Debug, Clone)]
pub struct Generation {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub workspace_id: Uuid,
    pub model: String,
    pub admitted: Admitted,
}

/// The generations running in this process.
#[derive(Default)]
pub struct Runners {
    running: AtomicUsize,
    idle: Notify,
}

impl Runners {
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Starts `generation` in its own task.
    pub fn start(
        self: &Arc<Self>,
        app: Arc<App>,
        generation: Generation,
        stop: watch::Receiver<StopReason>,
    ) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let runners = self.clone();
        // A child of the current span (the request that started it), so its logs carry the
        // request id.
        let span = tracing::info_span!(
            "generation",
            message_id = %generation.message_id,
            conversation_id = %generation.conversation_id,
            model = %generation.model,
        );
        tokio::spawn(async move {
            let _active = crate::metrics::generation();
            let task = {
                let (app, generation) = (app.clone(), generation.clone());
                tokio::spawn(
                    async move { run(&app, &generation, stop).await }.instrument(tracing::Span::current()),
                )
            };
            if let Err(err) = task.await {
                // A panic must not leave the message STREAMING, its quota held or its
                // subscribers waiting.
                tracing::error!(message_id = %generation.message_id, error = %err, "generation task died");
                crate::metrics::generation_ended(&generation.model, "FAILED");
                abandon(&app, &generation).await;
            }
            if runners.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                runners.idle.notify_waiters();
            }
        }
        .instrument(span));
    }

    /// Stops every running generation (they end FAILED) and waits up to `grace` for them to
    /// write their final state.
    pub async fn shutdown(&self, app: &App, grace: Duration) {
        if self.running() == 0 {
            return;
        }
        tracing::info!(running = self.running(), "stopping generations");
        app.hub.stop_all(StopReason::Shutdown).await;
        let wait = async {
            while self.running() > 0 {
                let idle = self.idle.notified();
                if self.running() == 0 {
                    break;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!(
                running = self.running(),
                "generations still running at shutdown"
            );
        }
    }
}

/// Ends a generation whose task died: FAILED with what was flushed, quota released.
async fn abandon(app: &App, g: &Generation) {
    let result = async {
        let mut conn = app.db.get().await?;
        let (content, content_seq) = Message::find(&mut conn, g.message_id)
            .await?
            .map(|m| (m.content, m.content_seq))
            .unwrap_or_default();
        Message::finish(
            &mut conn,
            g.message_id,
            "FAILED",
            &content,
            content_seq,
            None,
            None,
            None,
            None,
            Some("internal error during the generation"),
        )
        .await?;
        Ok::<_, crate::error::AppError>(())
    }
    .await;
    if let Err(err) = result {
        tracing::error!(?err, message_id = %g.message_id, "cannot fail an abandoned generation");
    }
    app.hub
        .finish_generation(g.message_id, g.conversation_id)
        .await;
    app.admission.settle(&g.admitted, Used::default()).await;
    crate::compare::service::answer_ended(app, g.message_id).await;
}

/// How a generation ended.
struct Outcome {
    status: &'static str,
    content: String,
    /// How many deltas `content` holds.
    seq: u32,
    usage: Option<Usage>,
    error: Option<String>,
}

impl Outcome {
    fn failed(content: String, seq: u32, usage: Option<Usage>, error: impl Into<String>) -> Self {
        Outcome {
            status: "FAILED",
            content,
            seq,
            usage,
            error: Some(error.into()),
        }
    }

    /// Before any text: nothing to keep.
    fn failed_early(error: impl Into<String>) -> Self {
        Outcome::failed(String::new(), 0, None, error)
    }
}

async fn run(app: &Arc<App>, g: &Generation, mut stop: watch::Receiver<StopReason>) {
    // When the first token arrived: written with the flushes and the end.
    let mut first_token = None;
    let outcome = generate(app, g, &mut stop, &mut first_token).await;
    crate::metrics::generation_ended(&g.model, outcome.status);
    let cost = match (&outcome.usage, app.providers.model(&g.model)) {
        (Some(u), Some(spec)) => Some(spec.cost_micro_usd(u.prompt_tokens, u.completion_tokens)),
        _ => None,
    };
    let mut finished = false;
    // The final write matters more than anything else here: ride out a database failover
    // (about a minute of retries) before leaving it to the recovery at the next start.
    for attempt in 0..10u32 {
        let write = async {
            let mut conn = app.db.get().await?;
            Ok::<bool, crate::error::AppError>(
                Message::finish(
                    &mut conn,
                    g.message_id,
                    outcome.status,
                    &outcome.content,
                    outcome.seq as i32,
                    first_token.map(|at: tokio::time::Instant| at.elapsed()),
                    outcome.usage.map(|u| u.prompt_tokens as i32),
                    outcome.usage.map(|u| u.completion_tokens as i32),
                    cost,
                    outcome.error.as_deref(),
                )
                .await?,
            )
        };
        match write.await {
            Ok(done) => {
                finished = done;
                break;
            }
            Err(err) => {
                tracing::error!(message_id = %g.message_id, ?err, attempt, "cannot write the end of a generation");
                let wait =
                    Duration::from_millis(250 * 2u64.pow(attempt)).min(Duration::from_secs(15));
                tokio::time::sleep(wait).await;
            }
        }
    }
    app.hub
        .finish_generation(g.message_id, g.conversation_id)
        .await;
    let used = match outcome.usage {
        Some(u) => Used {
            prompt_tokens: Some(u.prompt_tokens),
            completion_tokens: u.completion_tokens,
            cost_micro_usd: cost.unwrap_or(0),
            estimated: u.estimated,
        },
        // Nothing reached the provider: release the whole reservation.
        None => Used::default(),
    };
    app.admission.settle(&g.admitted, used).await;
    tracing::info!(
        message_id = %g.message_id,
        model = %g.model,
        status = outcome.status,
        chars = outcome.content.len(),
        "generation ended"
    );
    if finished
        && outcome.status == "COMPLETE"
        && let Err(err) = jobs::enqueue_title(app, g.conversation_id).await
    {
        tracing::warn!(?err, "cannot queue the title job");
    }
    // The last answer of a comparison to end queues its judging.
    crate::compare::service::answer_ended(app, g.message_id).await;
}

/// The branch up to the assistant message, as chat messages (empty ones left out).
fn branch_messages(path: &[Message], message_id: Uuid) -> Vec<ChatMessage> {
    path.iter()
        .filter(|m| m.id != message_id && !m.content.trim().is_empty())
        .map(|m| {
            let role = match m.role.as_str() {
                "ASSISTANT" => ChatRole::Assistant,
                "SYSTEM" => ChatRole::System,
                _ => ChatRole::User,
            };
            ChatMessage::new(role, m.content.clone())
        })
        .collect()
}

async fn generate(
    app: &Arc<App>,
    g: &Generation,
    stop: &mut watch::Receiver<StopReason>,
    first_token: &mut Option<tokio::time::Instant>,
) -> Outcome {
    let prepared = async {
        let mut conn = app.db.get().await?;
        let conversation = Conversation::find(&mut conn, g.conversation_id)
            .await?
            .ok_or_else(|| crate::error::AppError::not_found("conversation"))?;
        let path = Message::path_to(&mut conn, g.message_id).await?;
        let resolved =
            crate::llm::keys::resolve_model(app, &mut conn, g.workspace_id, &g.model).await?;
        Ok::<_, crate::error::AppError>((conversation, path, resolved))
    }
    .await;
    let (conversation, path, resolved) = match prepared {
        Ok(p) => p,
        Err(err) => {
            tracing::error!(message_id = %g.message_id, ?err, "cannot prepare a generation");
            let message = match &err {
                crate::error::AppError::BadUserInput { message, .. } => message.clone(),
                _ => "internal error before the generation started".to_owned(),
            };
            return Outcome::failed_early(message);
        }
    };
    let spec = resolved.spec;
    let tokenizer = app.providers.catalog().tokenizer(&spec);
    let branch = branch_messages(&path, g.message_id);
    // The conversation's own cap (copied from its agent, or set directly) when it is lower.
    let max_output = conversation.output_limit(spec.max_output_tokens);
    let built = match context::build(
        conversation.system_prompt.as_deref(),
        &branch,
        spec.context_window,
        max_output,
        app.config.chat.context_max_messages,
        tokenizer,
    ) {
        Ok(built) => built,
        Err(ContextError::TooLong { needed, budget }) => {
            return Outcome::failed_early(format!(
                "the message needs {needed} tokens; model {} takes {budget}",
                spec.id
            ));
        }
    };
    let Some(client) = app.providers.client(&spec.provider) else {
        return Outcome::failed_early(format!("provider {} is not configured", spec.provider));
    };
    let request = ChatRequest {
        model: spec.upstream.clone(),
        messages: built.messages,
        temperature: conversation.temperature,
        max_output_tokens: max_output,
        stop: Vec::new(),
    };
    let mut stream = client.stream(request, resolved.api_key);
    let prompt_tokens = built.prompt_tokens as u32;
    // A stop ends the stream before the provider's usage arrives: count what was produced.
    let settled = |usage: Option<Usage>, content: &str| {
        usage.or(Some(Usage {
            prompt_tokens,
            completion_tokens: tokenizer.count(content) as u32,
            estimated: true,
        }))
    };

    let mut content = String::new();
    let mut usage = None;
    let mut seq = 0u32;
    // The newest `seq` written to Postgres (or being written).
    let mut flushed = 0u32;
    let mut stop_open = true;
    // Ticks whether or not text flows: a flush when there is new text, otherwise a read of
    // the stop flag once `STOP_POLL_EVERY` has passed since the last look at it. The write
    // runs beside the stream, never in its way: a slow database (a busy pool, a long row)
    // must not hold back the deltas.
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    let mut flag_seen_at = tokio::time::Instant::now();
    let mut looking: Option<Look> = None;
    let relayed = crate::metrics::deltas_relayed(&g.model);
    loop {
        tokio::select! {
            biased;
            changed = stop.changed(), if stop_open => {
                if changed.is_err() {
                    stop_open = false;
                    continue;
                }
                let reason = *stop.borrow();
                match reason {
                    StopReason::Running => continue,
                    StopReason::Cancelled => {
                        let usage = settled(usage, &content);
                        return Outcome { status: "CANCELLED", content, seq, usage, error: None };
                    }
                    StopReason::Shutdown => {
                        let usage = settled(usage, &content);
                        return Outcome::failed(content, seq, usage, "the server shut down during the generation");
                    }
                }
            }
            looked = async {
                match looking.as_mut() {
                    Some(look) => (&mut look.task).await,
                    None => std::future::pending().await,
                }
            }, if looking.is_some() => {
                let wrote = looking.take().map_or(0, |look| look.seq);
                let looked = looked.unwrap_or_else(|err| Err(crate::error::AppError::Internal(err.into())));
                match looked {
                    Ok(Some(false)) => flag_seen_at = tokio::time::Instant::now(),
                    // stopGeneration, received by whichever process.
                    Ok(Some(true)) => {
                        let usage = settled(usage, &content);
                        return Outcome { status: "CANCELLED", content, seq, usage, error: None };
                    }
                    // Ended without us: reaped while this process looked dead, or deleted. The
                    // final write will change nothing; stop spending tokens on it.
                    Ok(None) => {
                        tracing::warn!(message_id = %g.message_id, "the generation was ended elsewhere; stopping it");
                        let usage = settled(usage, &content);
                        return Outcome::failed(content, seq, usage, "the generation was ended elsewhere");
                    }
                    Err(err) => {
                        // Written again at the next tick.
                        if wrote > 0 {
                            flushed = 0;
                        }
                        tracing::warn!(message_id = %g.message_id, ?err, "cannot flush partial content or read the stop flag");
                    }
                }
            }
            _ = flush.tick(), if looking.is_none() => {
                if flushed < seq {
                    flushed = seq;
                    looking = Some(Look::flush(app, g.message_id, content.clone(), seq, *first_token));
                } else if flag_seen_at.elapsed() >= STOP_POLL_EVERY {
                    looking = Some(Look::stop_flag(app, g.message_id));
                }
            }
            item = stream.next() => match item {
                Some(Ok(Chunk::Text(text))) => {
                    if seq == 0 {
                        *first_token = Some(tokio::time::Instant::now());
                    }
                    seq += 1;
                    content.push_str(&text);
                    app.hub.publish_delta(g.message_id, g.conversation_id, seq, text).await;
                    relayed.increment(1);
                }
                Some(Ok(Chunk::Usage(u))) => usage = Some(u),
                Some(Ok(Chunk::Finish(_))) => {}
                Some(Err(err)) => {
                    tracing::warn!(message_id = %g.message_id, error = %err, "generation failed");
                    return Outcome::failed(content, seq, usage, err.to_string());
                }
                None => {
                    return Outcome { status: "COMPLETE", content, seq, usage, error: None };
                }
            },
        }
    }
}

/// A flush of the partial content, or a read of the stop flag, in a task of its own beside
/// the stream. Its result is the message's `stop_requested` (None: the generation is no
/// longer in progress). A generation that ends while one runs lets it finish: the final write
/// filters on the status, so a late flush cannot overwrite the end.
struct Look {
    /// The `seq` a flush writes (0 for a read).
    seq: u32,
    task: tokio::task::JoinHandle<AppResult<Option<bool>>>,
}

impl Look {
    fn flush(
        app: &Arc<App>,
        message_id: Uuid,
        content: String,
        seq: u32,
        first_token: Option<tokio::time::Instant>,
    ) -> Self {
        let app = app.clone();
        let task = tokio::spawn(async move {
            let mut conn = app.db.get().await?;
            Ok(Message::flush_content(
                &mut conn,
                message_id,
                &content,
                seq as i32,
                first_token.map(|at| at.elapsed()),
            )
            .await?)
        });
        Look { seq, task }
    }

    fn stop_flag(app: &Arc<App>, message_id: Uuid) -> Self {
        let app = app.clone();
        let task = tokio::spawn(async move {
            let mut conn = app.db.get().await?;
            Ok(Message::stop_requested(&mut conn, message_id).await?)
        });
        Look { seq: 0, task }
    }
}
