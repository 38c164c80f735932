//! The event outbox (`events`), written in the transaction of the change that causes each
//! event, and what its consumers keep: where each stands (`event_consumers`), and the webhook
//! deliveries with their attempts.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::engine::{Arg, Engine, Pool, Row, Tx};
use super::{instance_in, ObservedStatus, Result, SqlStore, Store, StoreError, Task};
use crate::events::{self, EventType};

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its place in the feed: events are read in this order.
    pub seq: i64,
    /// Its stable id (`evt_…`), sent as `webhook-id`.
    pub event_id: String,
    /// Its type, as written (`instance.provisioned`, …).
    pub kind: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The instance it is about.
    pub instance_id: Option<i64>,
    /// The exact JSON delivered: `{type, timestamp, data}`.
    pub body: String,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up (retries exhausted, the endpoint answered 410 or left the catalog).
    Failed,
}

impl DeliveryState {
    /// The text form, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = ();

    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            _ => Err(()),
        }
    }
}

/// One event for one webhook endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Database id (`webhooks redeliver ID`).
    pub id: i64,
    /// The endpoint's catalog id.
    pub endpoint_id: String,
    /// The event's place in the feed.
    pub event_seq: i64,
    /// The event's stable id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status.
    pub last_status: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The HTTP status, when there was an answer.
    pub status: Option<i64>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: i64,
}

/// What an attempt leads to.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterAttempt {
    /// Delivered.
    Delivered,
    /// Try again after this many seconds.
    RetryIn(f64),
    /// Give up on this delivery.
    GiveUp,
    /// Give up, and disable the endpoint (it answered `410 Gone`).
    Disable(String),
}

/// A delivery claimed for an attempt, with what to send.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryJob {
    /// The delivery.
    pub delivery_id: i64,
    /// The endpoint's catalog id.
    pub endpoint_id: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// The event's stable id (`webhook-id`).
    pub event_id: String,
    /// The exact body to send.
    pub body: String,
}

/// A consumer of the outbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    /// `webhook:<id>` or `email:<id>`.
    pub name: String,
    /// The last event it has taken.
    pub after_event: i64,
    /// When it was disabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Why.
    pub disabled_reason: Option<String>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// One endpoint's.
    pub endpoint_id: Option<String>,
    /// In one state.
    pub state: Option<DeliveryState>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// How long a claimed delivery (or a consumer's lease) is held before another daemon may
/// take it: longer than any attempt may last.
pub const CLAIM_SECONDS: f64 = 45.0;

/// A new stable event id: `evt_` and 128 random bits in hex.
fn new_event_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    let mut id = String::with_capacity(36);
    id.push_str("evt_");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Appends an event in `tx`. On PostgreSQL the writers of events serialise from here to their
/// commit, so that events become visible in the order of their ids and a reader's cursor never
/// passes one that commits later. (SQLite has one writer at a time already.)
pub(super) async fn insert_event(
    tx: &mut Tx,
    kind: EventType,
    instance_id: i64,
    data: Value,
) -> Result<()> {
    let (sql, args) = events_insert(tx.dialect().engine, vec![(kind, instance_id, data)], false);
    tx.execute(&sql, args).await?;
    Ok(())
}

/// The statement appending events, one row each (see [`insert_event`]); on PostgreSQL
/// with `arrays`, one text for any number of events, its parameters bound as arrays
/// ([`super::engine::Column`]).
pub(super) fn events_insert(
    engine: Engine,
    appended: Vec<(EventType, i64, Value)>,
    arrays: bool,
) -> (String, Vec<Arg>) {
    // SQLite's one writer orders `events.id` by its commits; PostgreSQL's writers go through
    // the inbox, which [`SqlStore::sequence_events`] empties into `events` in order.
    let table = match engine {
        Engine::Sqlite => "events",
        Engine::Postgres => "event_inbox",
    };
    let rows = appended.len();
    let mut args = Vec::with_capacity(rows * 4);
    for (kind, instance_id, data) in appended {
        args.extend([
            new_event_id().into(),
            kind.as_str().into(),
            Arg::Int(instance_id),
            events::body(kind, Utc::now(), data).into(),
        ]);
    }
    let source = if arrays {
        "SELECT e.column1, e.column2, {now}, e.column3, e.column4
           FROM (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[])
                 AS e(column1, column2, column3, column4)) AS e"
            .to_owned()
    } else {
        let values: Vec<String> = (0..rows)
            .map(|r| match engine {
                // Anonymous parameters, bound in order (see `engine::values`).
                Engine::Sqlite => "(?, ?, {now}, ?, ?)".to_owned(),
                Engine::Postgres => {
                    let n = r * 4;
                    format!("(${}, ${}, {{now}}, ${}, ${})", n + 1, n + 2, n + 3, n + 4)
                }
            })
            .collect();
        format!("VALUES {}", values.join(", "))
    };
    (
        format!("INSERT INTO {table} (event_id, type, at, instance_id, body) {source}"),
        args,
    )
}

/// Appends the event a change of status causes, if it causes one.
pub(super) async fn on_transition(
    tx: &mut Tx,
    instance_id: i64,
    from: ObservedStatus,
    to: ObservedStatus,
) -> Result<()> {
    let Some(kind) = events::for_transition(from, to) else {
        return Ok(());
    };
    // A row the reconciler cannot read (being set aside as failed for that reason) still
    // gets its event, with what is known.
    let data = match instance_in(tx, instance_id).await {
        Ok(instance) => events::instance_data(&instance),
        Err(_) => serde_json::json!({
            "instance_id": instance_id,
            "observed_status": to.as_str(),
        }),
    };
    insert_event(tx, kind, instance_id, data).await
}

/// Appends the event a change of status from `from` to `after`'s causes, if it causes one;
/// `after` is the row as written.
pub(super) async fn on_transition_of(
    tx: &mut Tx,
    after: &super::Instance,
    from: ObservedStatus,
) -> Result<()> {
    match events::for_transition(from, after.observed_status) {
        Some(kind) => insert_event(tx, kind, after.id, events::instance_data(after)).await,
        None => Ok(()),
    }
}

/// Appends a task event.
pub(super) async fn on_task(tx: &mut Tx, kind: EventType, task: &Task) -> Result<()> {
    let data = match instance_in(tx, task.instance_id).await {
        Ok(instance) => events::task_data(task, &instance),
        Err(_) => serde_json::json!({
            "instance_id": task.instance_id,
            "task": events::task_facts(task),
        }),
    };
    insert_event(tx, kind, task.instance_id, data).await
}

fn event_from(r: &Row) -> Result<Event> {
    Ok(Event {
        seq: r.int("id")?,
        event_id: r.text("event_id")?,
        kind: r.text("type")?,
        at: r.ts("at")?,
        instance_id: r.opt_int("instance_id")?,
        body: r.text("body")?,
    })
}

fn delivery_from(r: &Row) -> Result<Delivery> {
    Ok(Delivery {
        id: r.int("id")?,
        endpoint_id: r.text("endpoint_id")?,
        event_seq: r.int("event")?,
        event_id: r.text("event_id")?,
        event_type: r.text("type")?,
        state: r.parse("state")?,
        attempts: r.int("attempts")?,
        next_attempt_at: r.opt_ts("next_attempt_at")?,
        last_status: r.opt_int("last_status")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.ts("created_at")?,
        finished_at: r.opt_ts("finished_at")?,
    })
}

fn consumer_from(r: &Row) -> Result<Consumer> {
    Ok(Consumer {
        name: r.text("name")?,
        after_event: r.int("after_event")?,
        disabled_at: r.opt_ts("disabled_at")?,
        disabled_reason: r.opt_text("disabled_reason")?,
    })
}

const DELIVERY_SELECT: &str = "SELECT d.*, e.event_id, e.type FROM webhook_deliveries d
                                 JOIN events e ON e.id = d.event";

/// Events moved from the inbox into the feed per transaction.
const SEQUENCE_BATCH: i64 = 1000;

impl SqlStore {
    /// Moves the committed events of PostgreSQL's inbox into the feed (`events`), oldest
    /// first, one transaction at a time across daemons (an advisory lock), so that feed ids
    /// become visible in order. Every reader of the feed calls it first; nothing to do on
    /// SQLite. Returns how many were moved.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn sequence_events(&self) -> Result<u64> {
        let Pool::Postgres(p) = self.pool() else {
            return Ok(0);
        };
        let mut moved = 0;
        loop {
            let waiting: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM event_inbox)")
                .fetch_one(p)
                .await?;
            if !waiting {
                return Ok(moved);
            }
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('provisioner.events'))")
                .execute(&mut *tx)
                .await?;
            // Read committed: this statement's snapshot is taken after the lock, so it sees
            // what the sequencer before it moved.
            let n = sqlx::query(
                "WITH moved AS (
                     DELETE FROM event_inbox
                      WHERE id IN (SELECT id FROM event_inbox ORDER BY id LIMIT $1)
                  RETURNING *)
                 INSERT INTO events (event_id, type, at, instance_id, body)
                 SELECT event_id, type, at, instance_id, body FROM moved ORDER BY id",
            )
            .bind(SEQUENCE_BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            moved += n;
            if n < SEQUENCE_BATCH as u64 {
                return Ok(moved);
            }
        }
    }

    /// Up to `limit` events after `after` (a feed position; 0 is the start), oldest first.
    ///
    /// # Errors
    /// When the database cannot be read or a row does not decode.
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        self.sequence_events().await?;
        let mut tx = self.pool().read().await?;
        tx.rows(
            "SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            vec![Arg::Int(after), Arg::Int(i64::from(limit))],
        )
        .await?
        .iter()
        .map(event_from)
        .collect()
    }

    /// The newest event's place in the feed (0 when there is none).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn latest_event(&self) -> Result<i64> {
        self.sequence_events().await?;
        let mut tx = self.pool().read().await?;
        let row = tx
            .row("SELECT COALESCE(MAX(id), 0) AS latest FROM events", vec![])
            .await?;
        row.map_or(Ok(0), |r| r.int("latest"))
    }

    /// The events of one instance, oldest first.
    ///
    /// # Errors
    /// When the database cannot be read or a row does not decode.
    pub async fn instance_events(&self, instance_id: i64) -> Result<Vec<Event>> {
        self.sequence_events().await?;
        let mut tx = self.pool().read().await?;
        tx.rows(
            "SELECT * FROM events WHERE instance_id = $1 ORDER BY id",
            vec![Arg::Int(instance_id)],
        )
        .await?
        .iter()
        .map(event_from)
        .collect()
    }

    /// The consumer `name`, started at the newest event if it is new: an endpoint added to
    /// the catalog hears of what happens from then on, not of the whole history.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn consumer(&self, name: &str) -> Result<Consumer> {
        self.sequence_events().await?;
        let mut tx = self.pool().write().await?;
        tx.execute(
            "INSERT INTO event_consumers (name, after_event)
             SELECT $1, COALESCE(MAX(id), 0) FROM events WHERE true
             ON CONFLICT (name) DO NOTHING",
            vec![name.into()],
        )
        .await?;
        let row = tx
            .row(
                "SELECT * FROM event_consumers WHERE name = $1",
                vec![name.into()],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("consumer {name} vanished")))?;
        let consumer = consumer_from(&row)?;
        tx.commit().await?;
        Ok(consumer)
    }

    /// Every consumer, by name.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn consumers(&self) -> Result<Vec<Consumer>> {
        let mut tx = self.pool().read().await?;
        tx.rows("SELECT * FROM event_consumers ORDER BY name", vec![])
            .await?
            .iter()
            .map(consumer_from)
            .collect()
    }

    /// Enables a disabled consumer again; `false` when it was not disabled (or is unknown).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn enable_consumer(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool().write().await?;
        let n = tx
            .execute(
                "UPDATE event_consumers SET disabled_at = NULL, disabled_reason = NULL
                  WHERE name = $1 AND disabled_at IS NOT NULL",
                vec![name.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Queues, for webhook endpoint `endpoint_id`, a delivery of every event after its
    /// position that `wanted` accepts (at most `batch` events looked at), and moves its
    /// position on. Returns how many events were looked at (0: it is up to date, or disabled).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn queue_deliveries(
        &self,
        endpoint_id: &str,
        wanted: &(dyn Fn(&str) -> bool + Sync),
        batch: u32,
    ) -> Result<usize> {
        let name = format!("webhook:{endpoint_id}");
        self.consumer(&name).await?;
        let mut tx = self.pool().write().await?;
        let select = format!(
            "SELECT after_event, disabled_at FROM event_consumers WHERE name = $1{}",
            tx.dialect().for_update
        );
        let Some(row) = tx.row(&select, vec![name.as_str().into()]).await? else {
            return Ok(0);
        };
        if row.opt_ts("disabled_at")?.is_some() {
            return Ok(0);
        }
        let after = row.int("after_event")?;
        let events = tx
            .rows(
                "SELECT id, type FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                vec![Arg::Int(after), Arg::Int(i64::from(batch))],
            )
            .await?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        let last = last.int("id")?;
        for e in &events {
            if wanted(&e.text("type")?) {
                tx.execute(
                    "INSERT INTO webhook_deliveries (endpoint_id, event, state, next_attempt_at)
                     VALUES ($1, $2, 'pending', {now})
                     ON CONFLICT (endpoint_id, event) DO NOTHING",
                    vec![endpoint_id.into(), Arg::Int(e.int("id")?)],
                )
                .await?;
            }
        }
        tx.execute(
            "UPDATE event_consumers SET after_event = $2 WHERE name = $1 AND after_event < $2",
            vec![name.as_str().into(), Arg::Int(last)],
        )
        .await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Claims up to `limit` deliveries due now whose endpoint is enabled: each is held for
    /// [`CLAIM_SECONDS`] (a daemon that dies mid-attempt leaves it to be tried again then).
    ///
    /// # Errors
    /// When the database cannot be written or a row does not decode.
    pub async fn claim_deliveries(&self, limit: u32) -> Result<Vec<DeliveryJob>> {
        let mut tx = self.pool().write().await?;
        let skip_locked = match self.engine() {
            Engine::Postgres => " FOR UPDATE SKIP LOCKED",
            Engine::Sqlite => "",
        };
        let claim = format!(
            "UPDATE webhook_deliveries SET next_attempt_at = {{later:$2}}
              WHERE id IN (SELECT d.id FROM webhook_deliveries d
                            WHERE d.state = 'pending' AND d.next_attempt_at <= {{now}}
                              AND NOT EXISTS (SELECT 1 FROM event_consumers c
                                               WHERE c.name = 'webhook:' || d.endpoint_id
                                                 AND c.disabled_at IS NOT NULL)
                            ORDER BY d.next_attempt_at, d.id
                            LIMIT $1{skip_locked})
              RETURNING id"
        );
        let rows = tx
            .rows(
                &claim,
                vec![Arg::Int(i64::from(limit)), Arg::Float(CLAIM_SECONDS)],
            )
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // What to send, for every claimed delivery in one read.
        let ids: Vec<Arg> = rows
            .iter()
            .map(|r| r.int("id").map(Arg::Int))
            .collect::<Result<_>>()?;
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let mut jobs = tx
            .rows(
                &format!(
                    "SELECT d.id, d.endpoint_id, d.attempts, e.event_id, e.body
                       FROM webhook_deliveries d JOIN events e ON e.id = d.event
                      WHERE d.id IN ({})",
                    placeholders.join(", ")
                ),
                ids,
            )
            .await?
            .iter()
            .map(|r| {
                Ok(DeliveryJob {
                    delivery_id: r.int("id")?,
                    endpoint_id: r.text("endpoint_id")?,
                    attempts: r.int("attempts")?,
                    event_id: r.text("event_id")?,
                    body: r.text("body")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        jobs.sort_by_key(|j| j.delivery_id);
        Ok(jobs)
    }

    /// Records an attempt of delivery `id` and what follows from it.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn record_attempt(
        &self,
        id: i64,
        attempt: &Attempt,
        next: &AfterAttempt,
    ) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "INSERT INTO webhook_attempts (delivery_id, at, status, error, duration_ms)
             VALUES ($1, {now}, $2, $3, $4)",
            vec![
                Arg::Int(id),
                Arg::OptInt(attempt.status),
                attempt.error.clone().into(),
                Arg::Int(attempt.duration_ms),
            ],
        )
        .await?;
        let (state, retry_in) = match next {
            AfterAttempt::Delivered => (DeliveryState::Delivered, None),
            AfterAttempt::RetryIn(s) => (DeliveryState::Pending, Some(*s)),
            AfterAttempt::GiveUp | AfterAttempt::Disable(_) => (DeliveryState::Failed, None),
        };
        let (next_at, mut args) = match retry_in {
            Some(s) => ("{later:$5}", vec![Arg::Float(s)]),
            None => ("NULL", vec![]),
        };
        args.splice(
            0..0,
            [
                Arg::Int(id),
                Arg::OptInt(attempt.status),
                attempt.error.clone().into(),
                state.as_str().into(),
            ],
        );
        let update = format!(
            "UPDATE webhook_deliveries
                SET attempts = attempts + 1, last_status = $2, last_error = $3, state = $4,
                    next_attempt_at = {next_at},
                    finished_at = CASE WHEN $4 = 'pending' THEN NULL ELSE {{now}} END
              WHERE id = $1 RETURNING endpoint_id"
        );
        let row = tx.row(&update, args).await?;
        if let (AfterAttempt::Disable(reason), Some(row)) = (next, row) {
            tx.execute(
                "UPDATE event_consumers SET disabled_at = {now}, disabled_reason = $2
                  WHERE name = $1 AND disabled_at IS NULL",
                vec![
                    format!("webhook:{}", row.text("endpoint_id")?).into(),
                    reason.as_str().into(),
                ],
            )
            .await?;
        }
        tx.commit().await
    }

    /// Deliveries, newest first.
    ///
    /// # Errors
    /// When the database cannot be read or a row does not decode.
    pub async fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>> {
        let mut sql = format!("{DELIVERY_SELECT} WHERE 1 = 1");
        let mut args = Vec::new();
        if let Some(e) = &filter.endpoint_id {
            args.push(Arg::from(e.as_str()));
            sql.push_str(&format!(" AND d.endpoint_id = ${}", args.len()));
        }
        if let Some(s) = filter.state {
            args.push(Arg::from(s.as_str()));
            sql.push_str(&format!(" AND d.state = ${}", args.len()));
        }
        args.push(Arg::Int(i64::from(filter.limit.max(1))));
        sql.push_str(&format!(" ORDER BY d.id DESC LIMIT ${}", args.len()));
        let mut tx = self.pool().read().await?;
        tx.rows(&sql, args)
            .await?
            .iter()
            .map(delivery_from)
            .collect()
    }

    /// One delivery and its attempts, oldest first.
    ///
    /// # Errors
    /// When the database cannot be read or a row does not decode.
    pub async fn delivery(&self, id: i64) -> Result<Option<(Delivery, Vec<Attempt>)>> {
        let mut tx = self.pool().read().await?;
        let Some(row) = tx
            .row(
                &format!("{DELIVERY_SELECT} WHERE d.id = $1"),
                vec![Arg::Int(id)],
            )
            .await?
        else {
            return Ok(None);
        };
        let attempts = tx
            .rows(
                "SELECT * FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id",
                vec![Arg::Int(id)],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(Attempt {
                    at: r.ts("at")?,
                    status: r.opt_int("status")?,
                    error: r.opt_text("error")?,
                    duration_ms: r.int("duration_ms")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((delivery_from(&row)?, attempts)))
    }

    /// Queues delivery `id` again, due now, whatever its state (the same event id; the
    /// daemon signs it with the endpoint's current secret when it sends it).
    ///
    /// # Errors
    /// [`StoreError::Rejected`] when there is no such delivery; when the database cannot be
    /// written.
    pub async fn redeliver(&self, id: i64) -> Result<Delivery> {
        let mut tx = self.pool().write().await?;
        let n = tx
            .execute(
                "UPDATE webhook_deliveries
                    SET state = 'pending', next_attempt_at = {now}, finished_at = NULL
                  WHERE id = $1",
                vec![Arg::Int(id)],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Rejected(format!("there is no delivery {id}")));
        }
        let row = tx
            .row(
                &format!("{DELIVERY_SELECT} WHERE d.id = $1"),
                vec![Arg::Int(id)],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("the delivery vanished".into()))?;
        tx.commit().await?;
        delivery_from(&row)
    }

    /// Takes the consumer `name` for [`CLAIM_SECONDS`], with up to `limit` events after its
    /// position; `None` when another daemon holds it or it is disabled.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn take_events(&self, name: &str, limit: u32) -> Result<Option<Vec<Event>>> {
        self.consumer(name).await?;
        let mut tx = self.pool().write().await?;
        let row = tx
            .row(
                "UPDATE event_consumers SET lease_until = {later:$2}
                  WHERE name = $1 AND disabled_at IS NULL
                    AND (lease_until IS NULL OR lease_until <= {now})
                  RETURNING after_event",
                vec![name.into(), Arg::Float(CLAIM_SECONDS)],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let events = tx
            .rows(
                "SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                vec![
                    Arg::Int(row.int("after_event")?),
                    Arg::Int(i64::from(limit)),
                ],
            )
            .await?
            .iter()
            .map(event_from)
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(Some(events))
    }

    /// Moves consumer `name` past event `seq`; with `done`, lets go of its lease.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn advance_consumer(&self, name: &str, seq: i64, done: bool) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "UPDATE event_consumers
                SET after_event = CASE WHEN after_event < $2 THEN $2 ELSE after_event END,
                    lease_until = CASE WHEN $3 THEN NULL ELSE lease_until END
              WHERE name = $1",
            vec![name.into(), Arg::Int(seq), Arg::Bool(done)],
        )
        .await?;
        tx.commit().await
    }
}
