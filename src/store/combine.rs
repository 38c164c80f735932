//! Group commit of step writes.
//!
//! A step's write (its transition, the row's update, the event a change of status causes,
//! fenced by its lease) is small; what it costs is the statements around it. On SQLite each
//! statement is a round trip to the one writer connection's thread (~45 µs here, against
//! ~2 µs of SQLite's own work), on PostgreSQL each is parsed, planned, triggered and committed
//! by the server. So the writes of steps ([`Store::record`](super::Store::record)) queue
//! here, and whoever gets the turn writes every queued one in one transaction: writes of one
//! shape (the same columns set) as one statement over their rows of arguments, each row
//! fenced by its own lease, and all their events as one `INSERT`. The rows are a `VALUES` list
//! on SQLite; on PostgreSQL they are arrays, one per column, so that the statement's text does
//! not change with the batch's size and the server plans it once per connection. A batch
//! locks several rows; the claims and lease renewals, which also lock several, skip locked
//! rows instead of waiting, so they never wait for a batch in a cycle (should anything else
//! deadlock with one, PostgreSQL breaks the cycle and the batch is redone write by write). Each write keeps its own answer (a stale
//! lease fails that write only); when anything else goes wrong the transaction is rolled back
//! and each write is done again on its own, so one bad write never fails the others.
//!
//! A caller waits for its answer or for the turn, whichever comes first: under load one
//! caller writes for many; alone, a caller writes its own at once, with no added delay. The
//! batch is written by a task of its own, so a caller dropped mid-way (a step abandoned at
//! shutdown) never leaves the others' writes half done.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{oneshot, OwnedMutexGuard};

use super::engine::{map_params, unnest, values, Arg, Column, Engine};
use super::{
    events, fence_args, fence_failure, instance_from, patch_sql, transition_select, Instance,
    Lease, NewTransition, ObservedPatch, ObservedStatus, Result, SqlStore, StoreError, FENCE,
};

/// Most writes in one transaction: a statement's parameters stay far below either engine's
/// limit (SQLite 32,766, PostgreSQL 65,535), and a batch's answers are not held back long.
const MOST: usize = 64;

/// The queue of writes waiting for the writer.
#[derive(Debug, Default)]
pub(super) struct Combiner {
    pending: Mutex<Vec<Job>>,
    /// Whose turn it is to write a batch on PostgreSQL (SQLite's writer lock serves on
    /// SQLite). One batch at a time: with two or four at once the benchmark's steps per
    /// second fell (the batches grew smaller).
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// One step's write and where its answer goes.
#[derive(Debug)]
struct Job {
    lease: Lease,
    patch: ObservedPatch,
    transition: Option<NewTransition>,
    reply: oneshot::Sender<Result<Instance>>,
}

impl SqlStore {
    /// Writes a step's fenced write with whichever others are queued (see the module).
    pub(super) async fn record_combined(
        &self,
        lease: &Lease,
        patch: &ObservedPatch,
        transition: Option<&NewTransition>,
    ) -> Result<Instance> {
        let lock = self
            .pool()
            .writer_lock()
            .unwrap_or_else(|| self.combiner.turn.clone());
        let (reply, mut answer) = oneshot::channel();
        self.combiner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Job {
                lease: lease.clone(),
                patch: patch.clone(),
                transition: transition.cloned(),
                reply,
            });
        loop {
            let turn = tokio::select! {
                biased;
                written = &mut answer => {
                    return written.unwrap_or(Err(StoreError::Abandoned(lease.instance_id)));
                }
                turn = lock.clone().lock_owned() => turn,
            };
            let batch = self.next_batch();
            if batch.is_empty() {
                // Nothing queued: ours is being written, or was (its answer is there).
                drop(turn);
                return answer
                    .await
                    .unwrap_or(Err(StoreError::Abandoned(lease.instance_id)));
            }
            // A panic in the task drops the batch's senders: each caller gets `Abandoned`.
            let _ = tokio::spawn(self.clone().flush(turn, batch)).await;
        }
    }

    /// The oldest queued writes, at most [`MOST`], at most one per instance (a second one, of
    /// a stale lease, waits for the next batch).
    fn next_batch(&self) -> Vec<Job> {
        let mut pending = self
            .combiner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut ids = HashSet::new();
        let mut batch = Vec::new();
        for job in std::mem::take(&mut *pending) {
            if batch.len() < MOST && ids.insert(job.lease.instance_id) {
                batch.push(job);
            } else {
                pending.push(job);
            }
        }
        batch
    }

    /// Writes `batch` in one transaction, or, if that fails, each on its own.
    async fn flush(self, turn: OwnedMutexGuard<()>, batch: Vec<Job>) {
        let size = batch.len();
        let answers = match self.write_batch(turn, &batch).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::debug!(writes = size, error = %e, "a batch of writes failed; writing each on its own");
                let mut answers = Vec::with_capacity(size);
                for job in &batch {
                    answers.push(
                        self.record_alone(&job.lease, &job.patch, job.transition.as_ref())
                            .await,
                    );
                }
                answers
            }
        };
        for (job, answer) in batch.into_iter().zip(answers) {
            // A caller that is gone (abandoned at shutdown) needs no answer.
            let _ = job.reply.send(answer);
        }
    }

    /// The batch in one transaction: an answer per write (a stale lease is an answer), or an
    /// error for the whole, which then is rolled back.
    async fn write_batch(
        &self,
        turn: OwnedMutexGuard<()>,
        batch: &[Job],
    ) -> Result<Vec<Result<Instance>>> {
        let engine = self.pool().engine();
        let (mut tx, _turn) = match engine {
            Engine::Sqlite => (self.pool().write_locked(turn).await?, None),
            Engine::Postgres => (self.pool().write().await?, Some(turn)),
        };
        // Writes of one shape (the same columns, the same expressions) go in one statement.
        let mut groups: Vec<Group> = Vec::new();
        for job in batch {
            let mut args = fence_args(&job.lease);
            let insert = job.transition.as_ref().map(|t| {
                let select = transition_select(t, &job.patch, &job.lease, &mut args);
                (select, std::mem::replace(&mut args, fence_args(&job.lease)))
            });
            let sets = patch_sql(&job.patch, &job.lease, &mut args).join(", ");
            let (insert, insert_args) = insert.map_or((None, Vec::new()), |(s, a)| (Some(s), a));
            match groups
                .iter_mut()
                .find(|g| g.insert == insert && g.sets == sets)
            {
                Some(g) => g.add(insert_args, args),
                None => {
                    let mut g = Group {
                        insert,
                        sets,
                        rows: 0,
                        insert_args: Vec::new(),
                        update_args: Vec::new(),
                    };
                    g.add(insert_args, args);
                    groups.push(g);
                }
            }
        }
        let mut written: HashMap<i64, (Instance, Option<ObservedStatus>)> = HashMap::new();
        for g in groups {
            let (iw, uw) = (g.insert_width(), g.update_width());
            match (engine, &g.insert) {
                (Engine::Sqlite, insert) => {
                    let mut froms = HashMap::new();
                    if let Some(insert) = insert {
                        let sql = sqlite_insert(insert, g.rows, iw);
                        for row in tx.rows(&sql, g.insert_args).await? {
                            froms.insert(
                                row.int("instance_id")?,
                                row.parse::<ObservedStatus>("from_status")?,
                            );
                        }
                    }
                    let sql = sqlite_update(&g.sets, g.rows, uw);
                    for row in tx.rows(&sql, g.update_args).await? {
                        let after = instance_from(&row)?;
                        let from = froms.remove(&after.id);
                        if g.insert.is_some() && from.is_none() {
                            return Err(StoreError::Corrupt(
                                "a fenced UPDATE matched a row its transition did not".into(),
                            ));
                        }
                        written.insert(after.id, (after, from));
                    }
                    if !froms.is_empty() {
                        return Err(StoreError::Corrupt("fenced UPDATE lost its row".into()));
                    }
                }
                (Engine::Postgres, insert) => {
                    let mut arrays = match insert {
                        Some(_) => columns(g.insert_args, iw)?,
                        None => Vec::new(),
                    };
                    let update = columns(g.update_args, uw)?;
                    let sql = postgres_write(insert.as_deref(), &g.sets, &arrays, &update);
                    arrays.extend(update);
                    for row in tx.rows_of_arrays(&sql, arrays).await? {
                        let from = match insert {
                            Some(_) => Some(row.parse::<ObservedStatus>("transition_from")?),
                            None => None,
                        };
                        let after = instance_from(&row)?;
                        written.insert(after.id, (after, from));
                    }
                }
            }
        }
        // The events the changes of status cause, from the rows as written.
        let appended: Vec<_> = batch
            .iter()
            .filter_map(|job| written.get(&job.lease.instance_id))
            .filter_map(|(after, from)| {
                let kind = crate::events::for_transition((*from)?, after.observed_status)?;
                Some((kind, after.id, crate::events::instance_data(after)))
            })
            .collect();
        if !appended.is_empty() {
            let arrays = engine == Engine::Postgres;
            let (sql, args) = events::events_insert(engine, appended, arrays);
            if arrays {
                tx.rows_of_arrays(&sql, columns(args, 4)?).await?;
            } else {
                tx.execute(&sql, args).await?;
            }
        }
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            answers.push(match written.remove(&job.lease.instance_id) {
                Some((after, _)) => Ok(after),
                None => Err(fence_failure(&mut tx, &job.lease).await),
            });
        }
        tx.commit().await?;
        Ok(answers)
    }
}

/// Writes of one shape: their transitions' `INSERT … SELECT` list (if they have one) and
/// their `SET` list are the same text, their arguments line up.
struct Group {
    insert: Option<String>,
    sets: String,
    rows: usize,
    insert_args: Vec<Arg>,
    update_args: Vec<Arg>,
}

impl Group {
    fn add(&mut self, insert_args: Vec<Arg>, update_args: Vec<Arg>) {
        self.rows += 1;
        self.insert_args.extend(insert_args);
        self.update_args.extend(update_args);
    }

    fn insert_width(&self) -> usize {
        self.insert_args.len() / self.rows.max(1)
    }

    fn update_width(&self) -> usize {
        self.update_args.len() / self.rows.max(1)
    }
}

/// `template`'s parameters as columns of the `VALUES` list `alias`.
fn columns_of(template: &str, alias: &str) -> String {
    map_params(template, |n| format!("{alias}.column{n}"))
}

/// SQLite: the transitions of `rows` writes, each fenced by its own lease.
fn sqlite_insert(select: &str, rows: usize, width: usize) -> String {
    format!(
        "{} FROM instances, {} AS v WHERE {} RETURNING instance_id, from_status",
        columns_of(select, "v"),
        values(rows, width, 0),
        columns_of(FENCE, "v")
    )
}

/// SQLite: the updates of `rows` writes, each fenced by its own lease (SQLite's `RETURNING *`
/// is the updated table's columns only).
fn sqlite_update(sets: &str, rows: usize, width: usize) -> String {
    format!(
        "UPDATE instances SET {} FROM {} AS v WHERE {} RETURNING *",
        columns_of(sets, "v"),
        values(rows, width, 0),
        columns_of(FENCE, "v")
    )
}

/// `args` (`width` per row) as PostgreSQL array columns.
fn columns(args: Vec<Arg>, width: usize) -> Result<Vec<Column>> {
    Column::split(args, width)
        .ok_or_else(|| StoreError::Corrupt("writes of one shape with different arguments".into()))
}

/// PostgreSQL: the transitions and updates of a group of writes in one statement, each fenced
/// by its own lease; the transitions' arrays come first. Its text depends on the group's
/// shape only, not on how many writes it has, so the server plans it once per connection.
fn postgres_write(
    select: Option<&str>,
    sets: &str,
    insert: &[Column],
    update: &[Column],
) -> String {
    let vu = unnest("vu", update, insert.len());
    let sets = columns_of(sets, "vu");
    let fence = columns_of(FENCE, "vu");
    match select {
        Some(select) => format!(
            "WITH vi AS {}, vu AS {vu},
                  t AS ({} FROM instances, vi WHERE {} RETURNING instance_id, from_status)
             UPDATE instances SET {sets} FROM vu, t
              WHERE {fence} AND t.instance_id = instances.id
             RETURNING instances.*, t.from_status AS transition_from",
            unnest("vi", insert, 0),
            columns_of(select, "vi"),
            columns_of(FENCE, "vi"),
        ),
        None => format!(
            "WITH vu AS {vu}
             UPDATE instances SET {sets} FROM vu WHERE {fence} RETURNING instances.*"
        ),
    }
}
