//! `GET /v1/events`: the event feed, oldest first, from a cursor, long-polled. Billing that
//! cannot receive webhooks learns of every change here, in the order the changes committed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::problem::Problem;
use super::V1;
use crate::store::events::Event;
use crate::store::{Scope, SqlStore};

/// The longest a client may ask the feed to wait for an event.
pub const MAX_WAIT_SECONDS: u64 = 25;
/// Long polls that may wait at once: half the listener's connections.
pub const MAX_WAITING: usize = 128;

/// How often the newest event is looked up while requests wait (events may come from
/// another daemon, so the database is asked, not this process).
const POLL_EVERY: Duration = Duration::from_millis(250);

/// The newest event's place in the feed, looked up once for all waiting requests: a thousand
/// long polls cost one small query every [`POLL_EVERY`], and none when nobody waits.
#[derive(Clone)]
pub struct FeedHead {
    latest: tokio::sync::watch::Receiver<i64>,
    waiting: Arc<AtomicUsize>,
}

/// Counts a waiting request while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FeedHead {
    /// The head, and the loop that keeps it (run it until `shutdown`).
    pub fn new(
        store: SqlStore,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> (FeedHead, impl std::future::Future<Output = ()>) {
        let (tx, latest) = tokio::sync::watch::channel(0);
        let waiting = Arc::new(AtomicUsize::new(0));
        let head = FeedHead {
            latest,
            waiting: waiting.clone(),
        };
        let keep = async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(POLL_EVERY) => {}
                }
                if waiting.load(Ordering::SeqCst) == 0 {
                    continue;
                }
                match store.latest_event().await {
                    Ok(n) => {
                        tx.send_if_modified(|old| {
                            let newer = n > *old;
                            if newer {
                                *old = n;
                            }
                            newer
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "the event feed cannot read its head"),
                }
            }
        };
        (head, keep)
    }

    /// Waits until an event after `after` exists, or `deadline`. Past [`MAX_WAITING`] waiting
    /// requests it does not wait and says so (`false`: the client is answered now and polls again): long polls never take all of
    /// the listener's connections from other calls.
    async fn wait_past(&self, after: i64, deadline: tokio::time::Instant) -> bool {
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Waiting(self.waiting.clone());
        if before >= MAX_WAITING {
            return false;
        }
        let mut latest = self.latest.clone();
        let _ = tokio::time::timeout_at(deadline, latest.wait_for(|n| *n > after)).await;
        true
    }
}

/// One event: its stable id (the `webhook-id` its webhook deliveries carry), its place in the
/// feed, and the body its webhooks deliver (`type`, `timestamp`, `data`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventView {
    /// `evt_…`, stable: deliveries of the same event carry the same id.
    pub id: String,
    /// Pass as `after` to read the events that follow this one.
    pub cursor: String,
    /// `instance.provisioned`, `instance.suspended`, … `task.opened`, `task.completed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// The instance's public facts (and the task, for task events); never credentials.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl EventView {
    fn of(e: &Event) -> Result<EventView, Problem> {
        let body: serde_json::Value = serde_json::from_str(&e.body)
            .map_err(|err| Problem::internal(&format!("event {} does not decode: {err}", e.seq)))?;
        let field = |k: &str| body.get(k).cloned();
        Ok(EventView {
            id: e.event_id.clone(),
            cursor: cursor_of(e.seq),
            kind: e.kind.clone(),
            timestamp: field("timestamp")
                .and_then(|t| t.as_str().map(str::to_owned))
                .unwrap_or_else(|| crate::events::rfc3339(e.at)),
            data: field("data").unwrap_or(serde_json::Value::Null),
        })
    }
}

/// A page of the feed. `next_cursor` is where to read on from: the last event's cursor, or
/// the one given when there was nothing new.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<EventView>,
    pub next_cursor: String,
}

/// Where to read from and how long to wait.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The cursor of the last event read (`next_cursor`); absent: from the oldest event.
    pub after: Option<String>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<u32>,
    /// When nothing follows `after`, wait up to this many seconds (0 to 25, default 0) for
    /// an event before answering with none.
    pub wait: Option<u64>,
}

fn cursor_of(seq: i64) -> String {
    format!("e{seq}")
}

/// The feed position a cursor names: `e<n>` as this API gives them, or `0` for the start.
fn after_cursor(cursor: &str) -> Result<i64, Problem> {
    if cursor == "0" {
        return Ok(0);
    }
    cursor
        .strip_prefix('e')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| Problem::invalid("invalid_cursor", "`after` is not a cursor this API gave"))
}

/// Events after a cursor, oldest first, waiting for one up to `wait` seconds.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(FeedQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The events after the cursor (none when the wait ran out)", body = EventPage),
        (status = 400, description = "`invalid_cursor` or `invalid_parameter`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn feed(
    State(api): State<V1>,
    caller: Caller,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Json<EventPage>, Problem> {
    caller.require(Scope::Read)?;
    let Query(q) = query.map_err(|e| Problem::invalid("invalid_parameter", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid(
            "invalid_parameter",
            "`limit` must be from 1 to 1000",
        ));
    }
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(Problem::invalid(
            "invalid_parameter",
            format!("`wait` must be from 0 to {MAX_WAIT_SECONDS} seconds"),
        ));
    }
    let after = q
        .after
        .as_deref()
        .map(after_cursor)
        .transpose()?
        .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut may_wait = true;
    loop {
        let events = api.store.events_after(after, limit).await?;
        if !events.is_empty() || !may_wait || tokio::time::Instant::now() >= deadline {
            let next = events.last().map_or(after, |e| e.seq);
            return Ok(Json(EventPage {
                events: events.iter().map(EventView::of).collect::<Result<_, _>>()?,
                next_cursor: cursor_of(next),
            }));
        }
        may_wait = api.feed.wait_past(after, deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_strangers_are_refused() {
        for seq in [0, 1, 42, i64::MAX] {
            assert_eq!(after_cursor(&cursor_of(seq)).unwrap(), seq);
        }
        assert_eq!(after_cursor("0").unwrap(), 0);
        for bad in ["", "e", "e-1", "i5", "5", "e5x", "e99999999999999999999"] {
            assert!(after_cursor(bad).is_err(), "{bad}");
        }
    }
}
