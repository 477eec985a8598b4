//! The messages that conversation events carry, read once per process however many
//! subscribers deliver them. An event reaches every `conversationEvents` subscriber of its
//! conversation; each used to read the message itself, so one event seen by 10,000
//! subscribers cost 10,000 reads. Now the first reads it, the others wait for that read and
//! share it.
//!
//! An entry is kept for `KEEP`, long enough for one event's fan-out. A key names one event:
//! a message is created once and finishes once. A failed read is not kept: the next
//! subscriber tries again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::app::App;
use crate::conversations::model::Message;
use crate::error::AppResult;

/// How long a read is shared.
const KEEP: Duration = Duration::from_secs(2);

/// Which event of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageEvent {
    Created,
    Finished,
}

type Cell = Arc<OnceCell<Option<Message>>>;

#[derive(Default)]
pub struct EventLoads {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    cells: HashMap<(MessageEvent, Uuid), (Instant, Cell)>,
    swept: Option<Instant>,
}

impl EventLoads {
    /// The message as `event` found it (None: gone), read once for every subscriber.
    pub async fn message(
        &self,
        app: &App,
        event: MessageEvent,
        message_id: Uuid,
    ) -> AppResult<Option<Message>> {
        let cell = self.cell(event, message_id, Instant::now());
        let message = cell
            .get_or_try_init(|| async {
                let mut conn = app.db.get().await?;
                Ok::<_, crate::error::AppError>(Message::find(&mut conn, message_id).await?)
            })
            .await?;
        Ok(message.clone())
    }

    fn cell(&self, event: MessageEvent, message_id: Uuid, now: Instant) -> Cell {
        let mut entries = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if entries
            .swept
            .is_none_or(|at| now.duration_since(at) >= KEEP)
        {
            entries
                .cells
                .retain(|_, (at, _)| now.duration_since(*at) < KEEP);
            entries.swept = Some(now);
        }
        match entries.cells.get(&(event, message_id)) {
            Some((at, cell)) if now.duration_since(*at) < KEEP => cell.clone(),
            _ => {
                let cell = Cell::default();
                entries
                    .cells
                    .insert((event, message_id), (now, cell.clone()));
                cell
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cells
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_per_event_while_kept_then_swept() {
        let loads = EventLoads::default();
        let id = Uuid::new_v4();
        let start = Instant::now();
        let a = loads.cell(MessageEvent::Created, id, start);
        let b = loads.cell(
            MessageEvent::Created,
            id,
            start + Duration::from_millis(500),
        );
        assert!(Arc::ptr_eq(&a, &b), "one event, one read");
        let finished = loads.cell(MessageEvent::Finished, id, start);
        assert!(!Arc::ptr_eq(&a, &finished), "another event of the message");
        let later = loads.cell(MessageEvent::Created, id, start + KEEP);
        assert!(!Arc::ptr_eq(&a, &later), "not kept past KEEP");
        // The sweep at `start + KEEP` dropped the finished entry; the new one stays.
        assert_eq!(loads.len(), 1);
    }
}
