//! `sendMessage` (one answer, or one per model of a comparison), `regenerateMessage`,
//! `editMessage`, `stopGeneration`, and the `messageStream` and `conversationEvents`
//! subscriptions.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, Subscription, Union};
use futures_util::stream::{BoxStream, StreamExt};
use uuid::Uuid;

use crate::app::App;
use crate::auth::viewer;
use crate::compare::graphql::ComparisonNode;
use crate::compare::service::CompareInput;
use crate::conversations::graphql::{ConversationNode, MessageNode};
use crate::conversations::model::{Conversation, Message};
use crate::conversations::service::require_conversation;
use crate::error::{AppError, AppResult};
use crate::graphql::{app, parse_id};
use crate::streaming::guard::{Scope, guarded};
use crate::streaming::hub::{ConversationEvent as HubEvent, GenerationEvent};
use crate::streaming::service::{self, SendInput};
use crate::streaming::shared::MessageEvent;

#[derive(InputObject)]
pub struct SendMessageInput {
    pub conversation_id: ID,
    /// 1 to 100,000 characters.
    pub content: String,
    /// Switches the conversation to this model.
    pub model: Option<String>,
    /// Compare: 2 to 6 distinct models, each answering the message concurrently in an
    /// answer of its own (siblings under the user message; the active branch follows the
    /// first). The conversation's model stays. Not with `model`.
    pub models: Option<Vec<ID>>,
    /// Reply under this message instead of the active branch's newest.
    pub parent_id: Option<ID>,
    /// An idempotency key: sending again with the same key returns the first result and
    /// starts nothing.
    pub client_message_id: Option<String>,
}

#[derive(InputObject)]
pub struct RegenerateMessageInput {
    /// An answer to regenerate beside, or a user message to answer again.
    pub message_id: ID,
    /// Another model for the new answer.
    pub model: Option<String>,
}

#[derive(InputObject)]
pub struct EditMessageInput {
    pub message_id: ID,
    pub content: String,
}

#[derive(SimpleObject)]
pub struct SendMessagePayload {
    pub user_message: MessageNode,
    /// STREAMING; follow it with `messageStream`. In a comparison, the first model's answer.
    pub assistant_message: MessageNode,
    /// Every answer started: this one, or one per model of a comparison, in the order of
    /// `models`.
    pub assistant_messages: Vec<MessageNode>,
}

impl From<service::Sent> for SendMessagePayload {
    fn from(sent: service::Sent) -> Self {
        let assistant_messages: Vec<MessageNode> =
            sent.assistants.into_iter().map(MessageNode).collect();
        SendMessagePayload {
            user_message: MessageNode(sent.user),
            assistant_message: assistant_messages[0].clone(),
            assistant_messages,
        }
    }
}

#[derive(Default)]
pub struct StreamingMutation;

#[Object]
impl StreamingMutation {
    /// Sends a user message and starts the assistant's answer (with `models`: one answer
    /// per model, compared once they have all ended). Returns at once; the answers stream on
    /// `messageStream` and `conversationEvents`.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        input: SendMessageInput,
    ) -> async_graphql::Result<SendMessagePayload> {
        let conversation_id = parse_id("conversationId", &input.conversation_id)?;
        let parent_id = input
            .parent_id
            .as_ref()
            .map(|id| parse_id("parentId", id))
            .transpose()?;
        if let Some(models) = &input.models {
            if input.model.is_some() {
                return Err(
                    AppError::bad_input("models", "give either model or models, not both").into(),
                );
            }
            let models: Vec<String> = models.iter().map(|m| m.0.clone()).collect();
            let sent = crate::compare::service::send(
                app(ctx)?,
                viewer(ctx)?,
                CompareInput {
                    conversation_id,
                    content: &input.content,
                    models: &models,
                    parent_id,
                    client_message_id: input.client_message_id.as_deref(),
                },
            )
            .await?;
            return Ok(sent.into());
        }
        let sent = service::send(
            app(ctx)?,
            viewer(ctx)?,
            SendInput {
                conversation_id,
                content: &input.content,
                model: input.model.as_deref(),
                parent_id,
                client_message_id: input.client_message_id.as_deref(),
            },
        )
        .await?;
        Ok(sent.into())
    }

    /// A new answer beside an existing one (or under a user message), optionally from
    /// another model. The active branch follows it.
    async fn regenerate_message(
        &self,
        ctx: &Context<'_>,
        input: RegenerateMessageInput,
    ) -> async_graphql::Result<MessageNode> {
        let message_id = parse_id("messageId", &input.message_id)?;
        let message =
            service::regenerate(app(ctx)?, viewer(ctx)?, message_id, input.model.as_deref())
                .await?;
        Ok(MessageNode(message))
    }

    /// A new version of a user message, with a new answer; the old branch stays.
    async fn edit_message(
        &self,
        ctx: &Context<'_>,
        input: EditMessageInput,
    ) -> async_graphql::Result<SendMessagePayload> {
        let message_id = parse_id("messageId", &input.message_id)?;
        Ok(
            service::edit(app(ctx)?, viewer(ctx)?, message_id, &input.content)
                .await?
                .into(),
        )
    }

    /// Stops a generation; its text so far is kept and it ends CANCELLED.
    async fn stop_generation(
        &self,
        ctx: &Context<'_>,
        message_id: ID,
    ) -> async_graphql::Result<MessageNode> {
        let message_id = parse_id("messageId", &message_id)?;
        Ok(MessageNode(
            service::stop(app(ctx)?, viewer(ctx)?, message_id).await?,
        ))
    }
}

/// A piece of an answer. `seq` counts 1, 2, 3 … with no gaps.
#[derive(SimpleObject, Clone)]
pub struct MessageDelta {
    pub message_id: ID,
    pub seq: i32,
    pub text: String,
}

/// The last event of a message's stream: the message as it ended.
#[derive(SimpleObject)]
pub struct MessageFinished {
    /// Boxed: a whole message row next to the small deltas in the event unions.
    pub message: Box<MessageNode>,
}

#[derive(SimpleObject)]
pub struct MessageCreated {
    pub message: MessageNode,
}

#[derive(SimpleObject)]
pub struct ConversationUpdated {
    pub conversation: ConversationNode,
}

/// Every answer of a comparison has ended and the comparison has been judged.
#[derive(SimpleObject)]
pub struct ComparisonReady {
    // Boxed, as `MessageFinished.message`: a whole comparison next to the small deltas.
    /// The comparison, READY, with every entry's results.
    pub comparison: Box<ComparisonNode>,
}

#[derive(Union)]
pub enum MessageStreamEvent {
    MessageDelta(MessageDelta),
    MessageFinished(MessageFinished),
}

#[derive(Union)]
pub enum ConversationEvent {
    MessageCreated(MessageCreated),
    MessageDelta(MessageDelta),
    MessageFinished(MessageFinished),
    ConversationUpdated(ConversationUpdated),
    ComparisonReady(ComparisonReady),
}

async fn load_message(app: &App, id: Uuid) -> AppResult<Option<Message>> {
    let mut conn = app.db.get().await?;
    Ok(Message::find(&mut conn, id).await?)
}

fn finished(message: Message) -> MessageStreamEvent {
    MessageStreamEvent::MessageFinished(MessageFinished {
        message: Box::new(MessageNode(message)),
    })
}

/// How often a subscriber polls Postgres for a generation the hub does not know.
const POLL: Duration = Duration::from_millis(500);

/// After this long without an event, a subscriber checks Postgres for the end.
const SILENCE: Duration = Duration::from_secs(5);

/// The hub's events, ended with `Finished` if the message is found ended in Postgres after
/// a silence: the end can be lost when the process running the generation dies between
/// writing it and announcing it.
fn watched(
    app: Arc<App>,
    message_id: Uuid,
    events: BoxStream<'static, GenerationEvent>,
) -> BoxStream<'static, GenerationEvent> {
    futures_util::stream::unfold(Some(events), move |events| {
        let app = app.clone();
        async move {
            let mut events = events?;
            loop {
                match tokio::time::timeout(SILENCE, events.next()).await {
                    Ok(Some(event)) => return Some((event, Some(events))),
                    Ok(None) => return None,
                    Err(_) => {
                        let ended = Box::pin(load_message(&app, message_id))
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|m| !matches!(m.status.as_str(), "PENDING" | "STREAMING"));
                        if ended {
                            return Some((GenerationEvent::Finished, None));
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

/// The events of one message from `after_seq`: from the hub while it knows the generation,
/// otherwise from Postgres (the whole content as one delta, then the end).
async fn message_events(
    app: Arc<App>,
    message_id: Uuid,
    after_seq: u32,
) -> BoxStream<'static, async_graphql::Result<MessageStreamEvent>> {
    let id = ID(message_id.to_string());
    if let Some(events) = app.hub.subscribe_generation(message_id, after_seq).await {
        let events = watched(app.clone(), message_id, events);
        let app = app.clone();
        return events
            .map(move |event| (event, app.clone(), id.clone()))
            .then(move |(event, app, id)| Box::pin(async move {
                match event {
                    GenerationEvent::Delta { seq, text } => {
                        Some(Ok(MessageStreamEvent::MessageDelta(MessageDelta {
                            message_id: id,
                            seq: seq as i32,
                            text,
                        })))
                    }
                    GenerationEvent::Finished => load_message(&app, message_id)
                        .await
                        .ok()
                        .flatten()
                        .map(|m| Ok(finished(m))),
                    // Never a made-up end: the client resubscribes, or reads the message.
                    GenerationEvent::Lost => Some(Err(AppError::bad_input(
                        "afterSeq",
                        "the deltas after afterSeq are no longer kept; read the message and subscribe again",
                    )
                    .into())),
                    GenerationEvent::Interrupted => Some(Err(AppError::Interrupted(
                        "the live stream was interrupted; read the message and subscribe again with afterSeq: contentSeq"
                            .to_owned(),
                    )
                    .into())),
                }
            }))
            .take_while(|event| std::future::ready(event.is_some()))
            .filter_map(std::future::ready)
            .scan(false, |done, event| {
                // End after MessageFinished or an error.
                if *done {
                    return std::future::ready(None);
                }
                *done = !matches!(event, Ok(MessageStreamEvent::MessageDelta(_)));
                std::future::ready(Some(event))
            })
            .boxed();
    }
    // Not (or no longer) in the hub: wait in Postgres for the end, then replay it whole.
    futures_util::stream::unfold(Some(()), move |state| {
        let app = app.clone();
        let id = ID(message_id.to_string());
        async move {
            state?;
            loop {
                let message = load_message(&app, message_id).await.ok().flatten()?;
                if !matches!(message.status.as_str(), "PENDING" | "STREAMING") {
                    let mut events = Vec::new();
                    if after_seq == 0 && !message.content.is_empty() {
                        events.push(MessageStreamEvent::MessageDelta(MessageDelta {
                            message_id: id.clone(),
                            seq: 1,
                            text: message.content.clone(),
                        }));
                    }
                    events.push(finished(message));
                    return Some((futures_util::stream::iter(events.into_iter().map(Ok)), None));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    })
    .flatten()
    .boxed()
}

#[derive(Default)]
pub struct StreamingSubscription;

#[Subscription]
impl StreamingSubscription {
    /// A message's answer as it is written: every delta after `afterSeq` (replayed, then
    /// live), then `MessageFinished`. Reconnect with the last `seq` seen to resume without a
    /// gap or a duplicate.
    async fn message_stream(
        &self,
        ctx: &Context<'_>,
        message_id: ID,
        #[graphql(default = 0)] after_seq: Option<i32>,
    ) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<MessageStreamEvent>>> {
        let viewer = *viewer(ctx)?;
        let app = app(ctx)?.clone();
        let message_id = parse_id("messageId", &message_id)?;
        let after_seq = after_seq.unwrap_or(0);
        if after_seq < 0 {
            return Err(AppError::bad_input("afterSeq", "afterSeq must not be negative").into());
        }
        let mut conn = app.db.get().await.map_err(AppError::from)?;
        let (_, conversation, _) = Message::find_for_member(&mut conn, message_id, viewer.user_id)
            .await
            .map_err(AppError::from)?
            .ok_or_else(|| AppError::not_found("message"))?;
        drop(conn);
        let events = message_events(app.clone(), message_id, after_seq as u32).await;
        Ok(guarded(
            events,
            app,
            viewer,
            Scope::Conversation(conversation.id),
        ))
    }

    /// Everything that happens in a conversation: new messages, deltas of every answer,
    /// finished answers, updates of the conversation itself (a new title), and judged
    /// comparisons.
    async fn conversation_events(
        &self,
        ctx: &Context<'_>,
        conversation_id: ID,
    ) -> async_graphql::Result<BoxStream<'static, async_graphql::Result<ConversationEvent>>> {
        let viewer = *viewer(ctx)?;
        let app = app(ctx)?.clone();
        let conversation_id = parse_id("conversationId", &conversation_id)?;
        let mut conn = app.db.get().await.map_err(AppError::from)?;
        require_conversation(&mut conn, &viewer, conversation_id).await?;
        drop(conn);
        let events = app.hub.subscribe_conversation(conversation_id).await;
        let guard_app = app.clone();
        let events = events
            // Each event's work in a box of its own, made while it is handled: an idle
            // subscription then holds only the stream, not room for the loads below.
            .then(move |event| {
                let app = app.clone();
                Box::pin(async move {
                    // Read once for every subscriber of this process (`streaming::shared`).
                    let message = |event, id| {
                        let app = app.clone();
                        async move {
                            app.event_loads
                                .message(&app, event, id)
                                .await
                                .ok()
                                .flatten()
                                .map(MessageNode)
                        }
                    };
                    let event = match event {
                        HubEvent::Interrupted => {
                            return Some(Err(AppError::Interrupted(
                                "conversation events were interrupted; read the conversation and subscribe again"
                                    .to_owned(),
                            )
                            .into()));
                        }
                        HubEvent::MessageCreated { message_id } => {
                            message(MessageEvent::Created, message_id).await.map(|m| {
                                ConversationEvent::MessageCreated(MessageCreated { message: m })
                            })
                        }
                        HubEvent::Delta {
                            message_id,
                            seq,
                            text,
                        } => Some(ConversationEvent::MessageDelta(MessageDelta {
                            message_id: ID(message_id.to_string()),
                            seq: seq as i32,
                            text,
                        })),
                        HubEvent::MessageFinished { message_id } => {
                            message(MessageEvent::Finished, message_id).await.map(|m| {
                                ConversationEvent::MessageFinished(MessageFinished {
                                    message: Box::new(m),
                                })
                            })
                        }
                        HubEvent::ConversationUpdated => {
                            let mut conn = app.db.get().await.ok()?;
                            Conversation::find(&mut conn, conversation_id)
                                .await
                                .ok()
                                .flatten()
                                .map(|c| {
                                    ConversationEvent::ConversationUpdated(ConversationUpdated {
                                        conversation: ConversationNode(c),
                                    })
                                })
                        }
                        HubEvent::ComparisonReady { user_message_id } => {
                            let mut conn = app.db.get().await.ok()?;
                            crate::compare::service::load(&mut conn, user_message_id)
                                .await
                                .ok()
                                .flatten()
                                .map(|c| {
                                    ConversationEvent::ComparisonReady(ComparisonReady {
                                        comparison: Box::new(ComparisonNode(c)),
                                    })
                                })
                        }
                    };
                    event.map(Ok)
                })
            })
            .filter_map(std::future::ready)
            // An error ends the subscription.
            .scan(false, |ended, event| {
                if *ended {
                    return std::future::ready(None);
                }
                *ended = event.is_err();
                std::future::ready(Some(event))
            })
            .boxed();
        Ok(guarded(
            events,
            guard_app,
            viewer,
            Scope::Conversation(conversation_id),
        ))
    }
}
