//! The simulated cloud's servers (`sim_servers`): the storage behind the `sim` module, and
//! the ledger of every server it ever made.
//!
//! Time-driven states (creating → running after the boot time, stopping → off after the
//! action time, …) are resolved by the database clock when read, so every daemon sees the
//! same cloud. Rows are never deleted.

use std::collections::HashMap;
use std::future::Future;

use tokio::sync::OwnedMutexGuard;

use super::combine::{Batched, Queue};
use super::engine::{map_params, unnest, values, Arg, Column, Engine, Row};
use super::{Result, SqlStore, StoreError};

/// A simulated server as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimServer {
    /// Its id.
    pub id: i64,
    /// The instance its label names.
    pub instance_id: Option<i64>,
    /// Its name (unique among the account's live servers).
    pub name: String,
    /// `creating`, `running`, `stopping`, `off`, `starting`, `rebooting`, `resizing` or
    /// `rebuilding`, as of now.
    pub state: String,
    /// Its size (the plan a change moves it to).
    pub size: Option<String>,
    /// Its addresses.
    pub ipv4: Option<String>,
    /// Its addresses.
    pub ipv6: Option<String>,
}

/// Which live servers of an account to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimSelect {
    /// One by id.
    Id(i64),
    /// Those labelled for an instance.
    Instance(i64),
    /// A page of the labelled ones: at most `limit`, ids above `after`.
    Labelled {
        /// Ids above this one.
        after: i64,
        /// At most this many.
        limit: u32,
    },
}

/// A server to make.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSimServer<'a> {
    /// The account.
    pub account: &'a str,
    /// The instance of its label (`None`: a server made by hand in the provider's console,
    /// as the tests make servers to import).
    pub instance_id: Option<i64>,
    /// Its name.
    pub name: &'a str,
    /// Its size, if the product names one.
    pub size: Option<&'a str>,
    /// Its image.
    pub image: &'a str,
    /// Its location.
    pub location: &'a str,
    /// Seconds until it runs.
    pub boot_seconds: f64,
    /// The most live servers the account may have.
    pub capacity: Option<u64>,
}

/// What a simulated server is asked to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimChange<'a> {
    /// Another size.
    Resize(&'a str),
    /// A fresh OS from this image.
    Rebuild(&'a str),
}

/// What a create made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimCreated {
    /// The new server.
    Made(SimServer),
    /// A live server has the name already.
    NameTaken,
    /// The account is at capacity.
    Full,
}

/// What the sim's ledger says about the servers it ever made (all sim accounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ledger {
    /// Servers ever created.
    pub created: i64,
    /// Servers existing now.
    pub live: i64,
    /// Instances that got more than one server made for them over their life (a server
    /// adopted or imported later is not made for it).
    pub duplicated_instances: i64,
    /// Live servers labelled for an instance that is terminated, or unknown to the store.
    pub orphans: i64,
    /// Changes of plan ever applied.
    pub resizes: i64,
    /// Reinstalls ever applied.
    pub rebuilds: i64,
}

/// What a change of plan or a reinstall of a simulated server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimBusy {
    /// Applied.
    Started,
    /// Another action runs on the server (a real API answers `locked`).
    Locked,
    /// No such live server.
    Missing,
}

/// The state of a server as of now: time-driven states resolved by the database clock.
const STATE_NOW: &str =
    "CASE WHEN state IN ('creating', 'starting', 'rebooting') AND ready_at <= {now} THEN 'running'
             WHEN state = 'stopping' AND ready_at <= {now} THEN 'off'
             WHEN state IN ('resizing', 'rebuilding') AND ready_at <= {now} THEN settle_state
             ELSE state END";

/// A server made from parameters `$1`…`$7` ([`create_args`]); the statement goes on with
/// its conditions.
const CREATE: &str =
    "INSERT INTO sim_servers (account, instance_id, made_for, name, size, image, location, state, ready_at)
     SELECT $1, $2, $2, $3, $4, $5, $6, 'creating', {later:$7}";

/// What [`CREATE`] does with a name a live server of the account has (migration 16 makes it
/// unique): nothing. The unique index is the check, so no plan made on stale statistics can
/// make it read every live server, and two daemons creating one name at once make one server.
const NAME_TAKEN: &str = "ON CONFLICT (account, name) WHERE deleted_at IS NULL DO NOTHING";

/// The parameters of [`CREATE`].
fn create_args(new: &NewSimServer<'_>) -> Vec<Arg> {
    vec![
        new.account.into(),
        new.instance_id.into(),
        new.name.into(),
        new.size.map(str::to_owned).into(),
        new.image.into(),
        new.location.into(),
        Arg::Float(new.boot_seconds),
    ]
}

/// Server `id`, just made from `new`.
fn made_server(new: &NewSimServer<'_>, id: i64) -> SimServer {
    let (ipv4, ipv6) = addresses(id);
    SimServer {
        id,
        instance_id: new.instance_id,
        name: new.name.to_owned(),
        // A cloud with no boot time answers with the server already running, as a read
        // right away would show it.
        state: if new.boot_seconds > 0.0 {
            "creating"
        } else {
            "running"
        }
        .into(),
        size: new.size.map(str::to_owned),
        ipv4: Some(ipv4),
        ipv6: Some(ipv6),
    }
}

/// A create of a labelled server in an account without a capacity limit, queued to be
/// written with others ([`SqlStore::sim_create`]).
#[derive(Debug)]
pub(super) struct SimCreate {
    account: String,
    instance_id: i64,
    name: String,
    size: Option<String>,
    image: String,
    location: String,
    boot_seconds: f64,
}

impl SimCreate {
    fn new_server(&self) -> NewSimServer<'_> {
        NewSimServer {
            account: &self.account,
            instance_id: Some(self.instance_id),
            name: &self.name,
            size: self.size.as_deref(),
            image: &self.image,
            location: &self.location,
            boot_seconds: self.boot_seconds,
            capacity: None,
        }
    }
}

impl Batched for SimCreate {
    type Answer = SimCreated;
    /// A batch's answers are told apart by name: two creates of one name never share one
    /// (the second waits for the next batch and finds the name taken).
    type Key = (String, String);

    fn key(&self) -> (String, String) {
        (self.account.clone(), self.name.clone())
    }

    fn abandoned(&self) -> StoreError {
        StoreError::Abandoned(self.instance_id)
    }

    fn queue(store: &SqlStore) -> &Queue<Self> {
        &store.queues.sim_creates
    }

    fn write_batch(
        store: &SqlStore,
        turn: OwnedMutexGuard<()>,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Result<SimCreated>>>> + Send {
        create_batch(store, turn, batch)
    }

    async fn write_alone(store: &SqlStore, w: &Self) -> Result<SimCreated> {
        store.sim_create_alone(&w.new_server()).await
    }
}

/// `batch` in one statement, which commits by itself: the rows are a `VALUES` list on SQLite,
/// arrays on PostgreSQL. A create whose name a live server has is not made.
async fn create_batch(
    store: &SqlStore,
    turn: OwnedMutexGuard<()>,
    batch: &[SimCreate],
) -> Result<Vec<Result<SimCreated>>> {
    let engine = store.pool().engine();
    let args: Vec<Arg> = batch
        .iter()
        .flat_map(|c| create_args(&c.new_server()))
        .collect();
    let width = args.len() / batch.len().max(1);
    let select = map_params(CREATE, |n| format!("v.column{n}"));
    // SQLite needs the `WHERE` to read `ON CONFLICT` as the insert's, not a join's.
    let taken = format!("WHERE true {NAME_TAKEN} RETURNING id, account, name");
    // On PostgreSQL the turn is held to the end: one batch of creates at a time.
    let (mut tx, _turn) = match engine {
        Engine::Sqlite => (store.pool().single_locked(turn).await?, None),
        Engine::Postgres => (store.pool().single().await?, Some(turn)),
    };
    let rows = match engine {
        Engine::Sqlite => {
            let sql = format!("{select} FROM {} AS v {taken}", values(batch.len(), width));
            tx.rows(&sql, args).await?
        }
        Engine::Postgres => {
            let columns = Column::split(args, width).ok_or_else(|| {
                StoreError::Corrupt("sim creates with different arguments".into())
            })?;
            let sql = format!("{select} FROM {} AS v {taken}", unnest("v", &columns, 0));
            tx.rows_of_arrays(&sql, columns).await?
        }
    };
    tx.commit().await?;
    let mut made = HashMap::with_capacity(rows.len());
    for row in rows {
        made.insert((row.text("account")?, row.text("name")?), row.int("id")?);
    }
    Ok(batch
        .iter()
        .map(|c| {
            Ok(match made.get(&c.key()) {
                Some(&id) => SimCreated::Made(made_server(&c.new_server(), id)),
                None => SimCreated::NameTaken,
            })
        })
        .collect())
}

/// The live columns of a server, its state as of now.
fn select() -> String {
    format!("SELECT id, instance_id, name, ipv4, ipv6, size, {STATE_NOW} AS state FROM sim_servers")
}

/// The addresses of server `id`, from documentation-only ranges (RFC 5737 / RFC 3849): the
/// sim reaches nothing. Stored addresses (set by hand) take precedence.
fn addresses(id: i64) -> (String, String) {
    (
        format!("198.51.{}.{}", (id >> 8) & 0xff, id & 0xff),
        format!("2001:db8:{:x}::/64", id & 0xffff),
    )
}

fn server_from(row: &Row) -> Result<SimServer> {
    let id = row.int("id")?;
    let (ipv4, ipv6) = addresses(id);
    Ok(SimServer {
        id,
        instance_id: row.opt_text("instance_id")?.and_then(|s| s.parse().ok()),
        name: row.text("name")?,
        state: row.text("state")?,
        size: row.opt_text("size")?,
        ipv4: Some(row.opt_text("ipv4")?.unwrap_or(ipv4)),
        ipv6: Some(row.opt_text("ipv6")?.unwrap_or(ipv6)),
    })
}

impl SqlStore {
    /// The live servers of `account` that `which` selects, by id.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn sim_servers(&self, account: &str, which: SimSelect) -> Result<Vec<SimServer>> {
        let (condition, mut args) = match which {
            SimSelect::Id(id) => (" AND id = $2", vec![Arg::Int(id)]),
            SimSelect::Instance(id) => (" AND instance_id = $2", vec![Arg::Int(id)]),
            SimSelect::Labelled { after, limit } => (
                " AND instance_id IS NOT NULL AND id > $2",
                vec![Arg::Int(after), Arg::Int(i64::from(limit))],
            ),
        };
        args.insert(0, account.into());
        let limit = if matches!(which, SimSelect::Labelled { .. }) {
            " LIMIT $3"
        } else {
            ""
        };
        let sql = format!(
            "{} WHERE account = $1 AND deleted_at IS NULL{condition} ORDER BY id{limit}",
            select()
        );
        let mut tx = self.pool().read().await?;
        tx.rows(&sql, args).await?.iter().map(server_from).collect()
    }

    /// Starts a power transition of server `id` of `account`: it is in `state` until
    /// `seconds` from now (then the read resolves it).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn sim_transition(
        &self,
        account: &str,
        id: i64,
        state: &str,
        seconds: f64,
    ) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "UPDATE sim_servers SET state = $3, ready_at = {later:$4}
              WHERE id = $1 AND account = $2 AND deleted_at IS NULL",
            vec![
                Arg::Int(id),
                account.into(),
                state.into(),
                Arg::Float(seconds),
            ],
        )
        .await?;
        tx.commit().await
    }

    /// Makes a server, unless its name is taken or the account is full.
    ///
    /// The creates of labelled servers in accounts without a capacity limit are written in
    /// batches ([`super::combine`]): one statement and one commit for every create queued, as
    /// a cloud's API would take a burst of requests. Each keeps its own answer.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn sim_create(&self, new: &NewSimServer<'_>) -> Result<SimCreated> {
        match (new.capacity, new.instance_id) {
            (None, Some(instance_id)) => {
                self.combined(SimCreate {
                    account: new.account.to_owned(),
                    instance_id,
                    name: new.name.to_owned(),
                    size: new.size.map(str::to_owned),
                    image: new.image.to_owned(),
                    location: new.location.to_owned(),
                    boot_seconds: new.boot_seconds,
                })
                .await
            }
            _ => self.sim_create_alone(new).await,
        }
    }

    /// [`SqlStore::sim_create`] in a statement of its own.
    async fn sim_create_alone(&self, new: &NewSimServer<'_>) -> Result<SimCreated> {
        // One statement: the name's uniqueness and the account's capacity are checked by the
        // insert itself.
        let capacity = new
            .capacity
            .map_or(-1, |c| i64::try_from(c).unwrap_or(i64::MAX));
        let mut args = create_args(new);
        args.push(Arg::Int(capacity));
        let mut tx = self.pool().single().await?;
        let made = tx
            .row(
                &format!(
                    "{CREATE} WHERE $8 < 0 OR (SELECT COUNT(*) FROM sim_servers
                                                WHERE account = $1 AND deleted_at IS NULL) < $8
                     {NAME_TAKEN} RETURNING id"
                ),
                args,
            )
            .await?;
        tx.commit().await?;
        let Some(made) = made else {
            // Why not: the name is taken, or else the account is full.
            let mut tx = self.pool().read().await?;
            let taken = tx
                .row(
                    "SELECT id FROM sim_servers WHERE account = $1 AND name = $2 AND deleted_at IS NULL",
                    vec![new.account.into(), new.name.into()],
                )
                .await?;
            return Ok(if taken.is_some() {
                SimCreated::NameTaken
            } else {
                SimCreated::Full
            });
        };
        Ok(SimCreated::Made(made_server(new, made.int("id")?)))
    }

    /// Labels live server `id` of `account` for `instance_id`, in place of any other label;
    /// `false` when there is no such live server.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn sim_label(&self, account: &str, id: i64, instance_id: i64) -> Result<bool> {
        let mut tx = self.pool().write().await?;
        let n = tx
            .execute(
                "UPDATE sim_servers SET instance_id = $3
                  WHERE id = $1 AND account = $2 AND deleted_at IS NULL",
                vec![Arg::Int(id), account.into(), Arg::Int(instance_id)],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Deletes server `id` of `account` (kept in the ledger); deleting it again is a no-op.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn sim_delete(&self, account: &str, id: i64) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "UPDATE sim_servers SET state = 'deleted', deleted_at = {now}
              WHERE id = $1 AND account = $2 AND deleted_at IS NULL",
            vec![Arg::Int(id), account.into()],
        )
        .await?;
        tx.commit().await
    }

    /// Starts a change of server `id` of `account` to `size` (a resize) or a reinstall with
    /// `image` (a rebuild), busy for `seconds`; refused while another such action runs.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn sim_busy(
        &self,
        account: &str,
        id: i64,
        change: SimChange<'_>,
        seconds: f64,
    ) -> Result<SimBusy> {
        let mut tx = self.pool().write().await?;
        let now = format!("SELECT {STATE_NOW} AS state FROM sim_servers WHERE id = $1 AND account = $2 AND deleted_at IS NULL");
        let Some(row) = tx.row(&now, vec![Arg::Int(id), account.into()]).await? else {
            return Ok(SimBusy::Missing);
        };
        let state = row.text("state")?;
        if matches!(state.as_str(), "resizing" | "rebuilding" | "creating") {
            return Ok(SimBusy::Locked);
        }
        let (sql, value, settle) = match change {
            SimChange::Resize(size) => (
                "UPDATE sim_servers SET state = 'resizing', settle_state = $3, size = $4,
                        resizes = resizes + 1, ready_at = {later:$5}
                  WHERE id = $1 AND account = $2",
                size,
                // A running server changes in place and keeps running; an off one stays off.
                if state == "off" || state == "stopping" {
                    "off"
                } else {
                    "running"
                },
            ),
            SimChange::Rebuild(image) => (
                "UPDATE sim_servers SET state = 'rebuilding', settle_state = $3, image = $4,
                        rebuilds = rebuilds + 1, rebuilt_at = {now}, ready_at = {later:$5}
                  WHERE id = $1 AND account = $2",
                image,
                "running",
            ),
        };
        tx.execute(
            sql,
            vec![
                Arg::Int(id),
                account.into(),
                settle.into(),
                value.into(),
                Arg::Float(seconds),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(SimBusy::Started)
    }

    /// Whether server `id` of `account` was rebuilt at or after `since`.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn sim_rebuilt_since(
        &self,
        account: &str,
        id: i64,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool> {
        let mut tx = self.pool().read().await?;
        let row = tx
            .row(
                "SELECT rebuilt_at FROM sim_servers WHERE id = $1 AND account = $2",
                vec![Arg::Int(id), account.into()],
            )
            .await?;
        Ok(match row {
            Some(r) => r.opt_ts("rebuilt_at")?.is_some_and(|t| t >= since),
            None => false,
        })
    }

    /// Counts what the sim ever made, across accounts: duplicates and orphans included.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn sim_ledger(&self) -> Result<Ledger> {
        let mut tx = self.pool().read().await?;
        let row = tx
            .row(
                "SELECT (SELECT COUNT(*) FROM sim_servers) AS created,
                        (SELECT COUNT(*) FROM sim_servers WHERE deleted_at IS NULL) AS live,
                        (SELECT COUNT(*) FROM (SELECT made_for FROM sim_servers
                                                WHERE made_for IS NOT NULL
                                                GROUP BY made_for HAVING COUNT(*) > 1) AS d) AS duplicated,
                        (SELECT COUNT(*) FROM sim_servers s
                          WHERE s.deleted_at IS NULL AND s.instance_id IS NOT NULL
                            AND NOT EXISTS (SELECT 1 FROM instances i
                                             WHERE i.id = s.instance_id
                                               AND i.observed_status <> 'terminated')) AS orphans,
                        (SELECT CAST(COALESCE(SUM(resizes), 0) AS BIGINT) FROM sim_servers) AS resizes,
                        (SELECT CAST(COALESCE(SUM(rebuilds), 0) AS BIGINT) FROM sim_servers) AS rebuilds",
                vec![],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("ledger query returned no row".into()))?;
        Ok(Ledger {
            created: row.int("created")?,
            live: row.int("live")?,
            duplicated_instances: row.int("duplicated")?,
            orphans: row.int("orphans")?,
            resizes: row.int("resizes")?,
            rebuilds: row.int("rebuilds")?,
        })
    }
}
