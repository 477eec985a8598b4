//! The one interface the send path calls for rate limits and quota: `admit` before anything
//! is stored, `settle` after the generation ends, whatever the outcome.
//!
//! `Unmetered` admits every request and records nothing; the quotas capability replaces it
//! with Redis/governor rate limits and the atomic reserve/settle ledger.

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::AppResult;
use crate::llm::Usage;

#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub user_id: Uuid,
    pub workspace_id: Uuid,
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
    pub reserved_tokens: u32,
}

#[async_trait]
pub trait Admission: Send + Sync + 'static {
    /// RATE_LIMITED or QUOTA_EXCEEDED refuse the generation before anything is stored.
    async fn admit(&self, request: &AdmissionRequest) -> AppResult<Admitted>;

    /// Settles to actual usage (None: nothing was produced).
    async fn settle(&self, admitted: &Admitted, usage: Option<Usage>);
}

/// Admits everything; stands in until the quotas capability.
pub struct Unmetered;

#[async_trait]
impl Admission for Unmetered {
    async fn admit(&self, _request: &AdmissionRequest) -> AppResult<Admitted> {
        Ok(Admitted::default())
    }

    async fn settle(&self, _admitted: &Admitted, _usage: Option<Usage>) {}
}
