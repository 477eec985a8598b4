//! The one interface the send path calls for quota: `admit` inside the transaction that
//! stores the messages (so a refusal stores nothing), `settle` after the generation ends,
//! whatever the outcome. Rate limits are enforced before execution by the transports
//! (`ratelimit`), so an admitted request has already passed them.

use std::sync::Arc;

use async_trait::async_trait;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::db::DbPool;
use crate::error::AppResult;
use crate::streaming::hub::EventHub;
use crate::usage::quota::{self, ReserveRequest, Settlement};

#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub user_id: Uuid,
    pub workspace_id: Uuid,
    pub conversation_id: Uuid,
    /// The assistant message the generation will write.
    pub message_id: Uuid,
    pub model: String,
    /// Our count of the prompt the generation will send.
    pub estimated_prompt_tokens: u32,
    /// The most the generation may produce.
    pub max_output_tokens: u32,
}

/// What `admit` handed out; `settle` gives back what was not used.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    pub reservation: Option<Uuid>,
    pub workspace_id: Uuid,
    pub user_id: Option<Uuid>,
    pub conversation_id: Option<Uuid>,
    pub message_id: Option<Uuid>,
    pub model: String,
}

/// What a generation used, for `settle`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    /// None: nothing was generated (the request never reached a provider).
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: u32,
    pub cost_micro_usd: i64,
    pub estimated: bool,
}

#[async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Reserves quota for a generation in the caller's transaction: QUOTA_EXCEEDED refuses
    /// it, and the caller's rollback then stores nothing.
    async fn admit(
        &self,
        conn: &mut AsyncPgConnection,
        request: &AdmissionRequest,
    ) -> AppResult<Admitted>;

    /// Settles to actual usage and records it; runs on its own connection.
    async fn settle(&self, admitted: &Admitted, used: Used);
}

/// Quotas in Postgres (see `usage::quota`); publishes the workspace's quota after each
/// settlement (the send path publishes after its transaction commits).
pub struct QuotaAdmission {
    pub db: DbPool,
    pub hub: Arc<dyn EventHub>,
    /// How long a reservation lives before the sweeper releases it.
    pub reservation_ttl: std::time::Duration,
}

#[async_trait]
impl Admission for QuotaAdmission {
    async fn admit(
        &self,
        conn: &mut AsyncPgConnection,
        request: &AdmissionRequest,
    ) -> AppResult<Admitted> {
        let reservation = quota::reserve(
            conn,
            &ReserveRequest {
                workspace_id: request.workspace_id,
                user_id: request.user_id,
                message_id: request.message_id,
                model: &request.model,
                prompt_tokens: i64::from(request.estimated_prompt_tokens),
                max_output_tokens: i64::from(request.max_output_tokens),
                ttl: self.reservation_ttl,
            },
        )
        .await?;
        Ok(Admitted {
            reservation: Some(reservation),
            workspace_id: request.workspace_id,
            user_id: Some(request.user_id),
            conversation_id: Some(request.conversation_id),
            message_id: Some(request.message_id),
            model: request.model.clone(),
        })
    }

    async fn settle(&self, admitted: &Admitted, used: Used) {
        let settlement = Settlement {
            workspace_id: admitted.workspace_id,
            user_id: admitted.user_id,
            conversation_id: admitted.conversation_id,
            message_id: admitted.message_id,
            model: admitted.model.clone(),
            prompt_tokens: used.prompt_tokens.map(i64::from),
            completion_tokens: i64::from(used.completion_tokens),
            cost_micro_usd: used.cost_micro_usd,
            estimated: used.estimated,
        };
        // Settlement must not be lost to a database failover; past this, the reservation
        // expires and the sweeper releases it.
        for attempt in 0..10u32 {
            let result = async {
                let mut conn = self.db.get().await?;
                quota::settle(&mut conn, admitted.reservation, &settlement).await
            }
            .await;
            match result {
                Ok(()) => {
                    self.hub.publish_quota(admitted.workspace_id).await;
                    return;
                }
                Err(err) => {
                    tracing::error!(?err, attempt, reservation = ?admitted.reservation, "cannot settle a reservation");
                    let wait = std::time::Duration::from_millis(250 * 2u64.pow(attempt))
                        .min(std::time::Duration::from_secs(15));
                    tokio::time::sleep(wait).await;
                }
            }
        }
        tracing::error!(reservation = ?admitted.reservation, "gave up settling; the sweeper will release it");
    }
}
