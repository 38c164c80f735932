//! Group commit: writes of one kind queue, and one writer commits them together.
//!
//! Two kinds are batched ([`Batched`]): step writes ([`StepWrite`], below) and the simulated
//! cloud's creates ([`super::sim`]). A step's write (its transition, the row's update, the
//! event a change of status causes, fenced by its lease) is small; what it costs is the
//! statements around it. On SQLite each statement is a round trip to the one writer
//! connection's thread (~45 µs here, against ~2 µs of SQLite's own work), on PostgreSQL each
//! is parsed, planned, triggered and committed by the server. So the writes of steps
//! ([`Store::record`](super::Store::record)) queue here, and whoever gets the turn writes
//! every queued one in one transaction: writes of one shape (the same columns set) as one
//! statement over their rows of arguments, each row fenced by its own lease, and all their
//! events as one `INSERT`. The rows are a `VALUES` list on SQLite; on PostgreSQL they are
//! arrays, one per column, so that the statement's text does not change with the batch's size
//! and the server plans it once per connection. A batch locks several rows; the claims and
//! lease renewals, which also lock several, skip locked rows instead of waiting, so they never
//! wait for a batch in a cycle (should anything else deadlock with one, PostgreSQL breaks the
//! cycle and the batch is redone write by write). Each write keeps its own answer (a stale
//! lease fails that write only); when anything else goes wrong the transaction is rolled back
//! and each write is done again on its own, so one bad write never fails the others.
//!
//! A caller waits for its answer or for the turn, whichever comes first: under load one
//! caller writes for many; alone, a caller writes its own at once, with no added delay. The
//! batch is written by a task of its own, so a caller dropped mid-way (a step abandoned at
//! shutdown) never leaves the others' writes half done.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{oneshot, OwnedMutexGuard};

use super::engine::{map_params, unnest, values, Arg, Column, Engine};
use super::{
    events, fence_args, fence_failure, instance_from, patch_sql, transition_select, Instance,
    Lease, NewTransition, ObservedPatch, ObservedStatus, Result, SqlStore, StoreError, FENCE,
};

/// Most writes in one transaction: a statement's parameters stay far below either engine's
/// limit (SQLite 32,766, PostgreSQL 65,535), and a batch's answers are not held back long.
pub(super) const MOST: usize = 64;

/// A kind of write that is committed in batches (see the module).
pub(super) trait Batched: Send + Sync + Sized + std::fmt::Debug + 'static {
    /// What the writer of one gets back.
    type Answer: Send + std::fmt::Debug + 'static;
    /// Two writes with the same key never share a batch.
    type Key: Eq + Hash;

    /// Its key.
    fn key(&self) -> Self::Key;

    /// The error its writer gets when the batch is dropped before it committed.
    fn abandoned(&self) -> StoreError;

    /// The store's queue of this kind.
    fn queue(store: &SqlStore) -> &Queue<Self>;

    /// Writes `batch` in one transaction (begun under `turn`): an answer per write, in order,
    /// or an error for the whole, which then is rolled back.
    fn write_batch(
        store: &SqlStore,
        turn: OwnedMutexGuard<()>,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer>>>> + Send;

    /// Writes one on its own (when its batch failed as a whole).
    fn write_alone(
        store: &SqlStore,
        write: &Self,
    ) -> impl Future<Output = Result<Self::Answer>> + Send;
}

/// The writes of one kind waiting for the writer.
#[derive(Debug)]
pub(super) struct Queue<W: Batched> {
    pending: Mutex<Vec<Queued<W>>>,
    /// Whose turn it is to write a batch on PostgreSQL (SQLite's writer lock serves on
    /// SQLite). One batch of a kind at a time: with two or four step-write batches at once
    /// the benchmark's steps per second fell (the batches grew smaller).
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl<W: Batched> Default for Queue<W> {
    fn default() -> Self {
        Queue {
            pending: Mutex::default(),
            turn: Arc::default(),
        }
    }
}

/// One write and where its answer goes.
#[derive(Debug)]
struct Queued<W: Batched> {
    write: W,
    reply: oneshot::Sender<Result<W::Answer>>,
}

impl SqlStore {
    /// Writes `write` with whichever others of its kind are queued (see the module).
    pub(super) async fn combined<W: Batched>(&self, write: W) -> Result<W::Answer> {
        let queue = W::queue(self);
        let lock = self
            .pool()
            .writer_lock()
            .unwrap_or_else(|| queue.turn.clone());
        let abandoned = write.abandoned();
        let (reply, mut answer) = oneshot::channel();
        queue
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Queued { write, reply });
        loop {
            let turn = tokio::select! {
                biased;
                written = &mut answer => return written.unwrap_or(Err(abandoned)),
                turn = lock.clone().lock_owned() => turn,
            };
            let batch = next_batch(queue);
            if batch.is_empty() {
                // Nothing queued: ours is being written, or was (its answer is there).
                drop(turn);
                return answer.await.unwrap_or(Err(abandoned));
            }
            // A panic in the task drops the batch's senders: each caller gets `abandoned`.
            let _ = tokio::spawn(flush(self.clone(), turn, batch)).await;
        }
    }
}

/// The oldest queued writes, at most [`MOST`], at most one per key (a second one waits for
/// the next batch).
fn next_batch<W: Batched>(queue: &Queue<W>) -> Vec<Queued<W>> {
    let mut pending = queue.pending.lock().unwrap_or_else(PoisonError::into_inner);
    let mut keys = HashSet::new();
    let mut batch = Vec::new();
    for queued in std::mem::take(&mut *pending) {
        if batch.len() < MOST && keys.insert(queued.write.key()) {
            batch.push(queued);
        } else {
            pending.push(queued);
        }
    }
    batch
}

/// Writes `batch` in one transaction, or, if that fails, each on its own.
async fn flush<W: Batched>(store: SqlStore, turn: OwnedMutexGuard<()>, batch: Vec<Queued<W>>) {
    let size = batch.len();
    let (writes, replies): (Vec<W>, Vec<_>) = batch.into_iter().map(|q| (q.write, q.reply)).unzip();
    let answers = match W::write_batch(&store, turn, &writes).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::debug!(writes = size, error = %e, "a batch of writes failed; writing each on its own");
            let mut answers = Vec::with_capacity(size);
            for write in &writes {
                answers.push(W::write_alone(&store, write).await);
            }
            answers
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that is gone (abandoned at shutdown) needs no answer.
        let _ = reply.send(answer);
    }
}

/// A step's fenced write: [`Store::record`](super::Store::record).
#[derive(Debug)]
pub(super) struct StepWrite {
    pub(super) lease: Lease,
    pub(super) patch: ObservedPatch,
    pub(super) transition: Option<NewTransition>,
}

impl Batched for StepWrite {
    type Answer = Instance;
    type Key = i64;

    fn key(&self) -> i64 {
        self.lease.instance_id
    }

    fn abandoned(&self) -> StoreError {
        StoreError::Abandoned(self.lease.instance_id)
    }

    fn queue(store: &SqlStore) -> &Queue<Self> {
        &store.queues.steps
    }

    fn write_batch(
        store: &SqlStore,
        turn: OwnedMutexGuard<()>,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Result<Instance>>>> + Send {
        write_steps(store, turn, batch)
    }

    fn write_alone(store: &SqlStore, w: &Self) -> impl Future<Output = Result<Instance>> + Send {
        store.record_alone(&w.lease, &w.patch, w.transition.as_ref())
    }
}

/// The queues of the kinds of batched writes.
#[derive(Debug, Default)]
pub(super) struct Queues {
    pub(super) steps: Queue<StepWrite>,
    pub(super) sim_creates: Queue<super::sim::SimCreate>,
}

/// A batch of step writes in one transaction: an answer per write (a stale lease is an
/// answer), or an error for the whole, which then is rolled back.
async fn write_steps(
    store: &SqlStore,
    turn: OwnedMutexGuard<()>,
    batch: &[StepWrite],
) -> Result<Vec<Result<Instance>>> {
    let engine = store.pool().engine();
    let (mut tx, _turn) = match engine {
        Engine::Sqlite => (store.pool().write_locked(turn).await?, None),
        Engine::Postgres => (store.pool().write().await?, Some(turn)),
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
        values(rows, width),
        columns_of(FENCE, "v")
    )
}

/// SQLite: the updates of `rows` writes, each fenced by its own lease (SQLite's `RETURNING *`
/// is the updated table's columns only).
fn sqlite_update(sets: &str, rows: usize, width: usize) -> String {
    format!(
        "UPDATE instances SET {} FROM {} AS v WHERE {} RETURNING *",
        columns_of(sets, "v"),
        values(rows, width),
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
