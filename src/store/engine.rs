//! The two database engines: connection, migrations, SQL dialect, and a small executor that
//! runs a statement and hands back engine-neutral rows.
//!
//! SQL is written once with `$1`-style parameters and two tokens: `{now}` (the database's
//! clock, as each engine stores time) and `{later:$N}` (now plus `$N` seconds). Each engine
//! rewrites them; everything engine-specific beyond that (the claim statement, row locks) is a
//! field of [`Dialect`].

use std::borrow::Cow;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::sqlite::{SqlitePoolOptions, SqliteRow};
use sqlx::{Column as _, Postgres, Row as _, Sqlite, Transaction, TypeInfo, ValueRef};

use super::connect::ConnectOptions;
use super::StoreError;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Embedded, one file; one writer at a time.
    Sqlite,
    /// Production; several daemons may share it.
    Postgres,
}

impl Engine {
    /// The engine a `DATABASE_URL` names.
    ///
    /// # Errors
    /// [`StoreError::Url`] for anything but `sqlite:` and `postgres:` / `postgresql:` URLs.
    pub fn of_url(url: &str) -> Result<Engine, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            Err(StoreError::Url(format!(
                "unsupported database URL `{}`: use sqlite://FILE or postgres://USER@HOST/DB",
                redact_url(url)
            )))
        }
    }
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The userinfo ends at the last `@`: a password may hold `/`, `?` or `#` unencoded.
    let (userinfo, location) = match rest.rsplit_once('@') {
        Some((u, l)) => (Some(u), l),
        None => (None, rest),
    };
    let (path, query) = match location.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (location, None),
    };
    let mut out = format!("{scheme}://");
    if let Some(u) = userinfo {
        out.push_str(u.split(':').next().unwrap_or(""));
        if u.contains(':') {
            out.push_str(":***");
        }
        out.push('@');
    }
    out.push_str(path);
    if let Some(q) = query {
        // Passwords can also come as query parameters (`password`, `sslpassword`).
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if ["pass", "secret", "token"]
                        .iter()
                        .any(|w| k.to_ascii_lowercase().contains(w)) =>
                {
                    format!("{k}=***")
                }
                _ => kv.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// What differs between the engines' SQL.
pub(crate) struct Dialect {
    pub(crate) engine: Engine,
    now: &'static str,
    /// Locks the selected rows until commit, where the engine has row locks.
    pub(crate) for_update: &'static str,
    /// Claims due instances: `$1` owner, `$2` lease seconds, `$3` limit; returns the rows,
    /// each with the database's clock as `claimed_at`.
    /// A claim also moves `next_check_at` to the lease's expiry: leased rows leave the head of
    /// the due index, and a crashed worker's instances come due exactly when its leases end.
    pub(crate) claim: &'static str,
}

const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(crate) static SQLITE: Dialect = Dialect {
    engine: Engine::Sqlite,
    now: SQLITE_NOW,
    for_update: "",
    // SQLite has one writer at a time: the claim is a single statement in an immediate
    // transaction, so no two workers can take the same row.
    claim: "UPDATE instances
               SET lease_owner = $1,
                   lease_expires_at = {later:$2},
                   next_check_at = {later:$2},
                   lease_epoch = lease_epoch + 1
             WHERE id IN (SELECT id FROM instances
                           WHERE next_check_at <= {now}
                             AND (lease_expires_at IS NULL OR lease_expires_at <= {now})
                             AND lease_epoch < 9223372036854775807
                           ORDER BY next_check_at, id
                           LIMIT $3)
         RETURNING *, {now} AS claimed_at",
};

pub(crate) static POSTGRES: Dialect = Dialect {
    engine: Engine::Postgres,
    now: "now()",
    for_update: " FOR UPDATE",
    // SKIP LOCKED lets several daemons claim disjoint batches without waiting on each other.
    claim: "UPDATE instances AS i
               SET lease_owner = $1,
                   lease_expires_at = {later:$2},
                   next_check_at = {later:$2},
                   lease_epoch = i.lease_epoch + 1
              FROM (SELECT id FROM instances
                     WHERE next_check_at <= {now}
                       AND (lease_expires_at IS NULL OR lease_expires_at <= {now})
                       AND lease_epoch < 9223372036854775807
                     ORDER BY next_check_at, id
                     LIMIT $3
                       FOR UPDATE SKIP LOCKED) AS due
             WHERE i.id = due.id
         RETURNING i.*, now() AS claimed_at",
};

impl Dialect {
    /// Rewrites a statement written with `$N`, `{now}` and `{later:$N}` for this engine.
    pub(crate) fn sql<'a>(&self, template: &'a str) -> Cow<'a, str> {
        if self.engine == Engine::Postgres && !template.contains('{') {
            return Cow::Borrowed(template);
        }
        let mut out = String::with_capacity(template.len() + 64);
        let mut rest = template;
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').map_or(rest.len(), |j| i + j);
            let token = &rest[i + 1..end];
            if token == "now" {
                out.push_str(self.now);
            } else if let Some(param) = token.strip_prefix("later:") {
                match self.engine {
                    Engine::Postgres => {
                        out.push_str(&format!("(now() + {param} * interval '1 second')"));
                    }
                    Engine::Sqlite => out.push_str(&format!(
                        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', {param}))"
                    )),
                }
            } else {
                out.push_str(&rest[i..=end.min(rest.len() - 1)]);
            }
            rest = &rest[(end + 1).min(rest.len())..];
        }
        out.push_str(rest);
        if self.engine == Engine::Sqlite {
            // SQLite's numbered parameters are `?N`.
            out = out.replace('$', "?");
        }
        Cow::Owned(out)
    }
}

/// `template` with each parameter `$N` written `to(N)` instead. The templates are
/// provisioner's own: a `$` followed by digits is always a parameter.
pub(crate) fn map_params(template: &str, to: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&to(n)),
            Err(_) => out.push('$'),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// `(VALUES (?, …, ?), …)`: `rows` rows of `width` parameters each, for SQLite, in a statement
/// whose only parameters these are (they are bound in order). SQLite numbers anonymous
/// parameters as they come; for a numbered one (`?N`) the driver looks its name up, a linear
/// search of the statement's parameters per parameter: 7 % of the benchmark's CPU with batches
/// of 64 rows of a dozen. Its columns are named `column1`, `column2`, ….
pub(crate) fn values(rows: usize, width: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    format!("(VALUES {})", vec![row; rows].join(", "))
}

/// A column of parameters bound as one PostgreSQL array: the arguments of many rows that
/// take the same place in the same statement.
#[derive(Debug)]
pub(crate) enum Column {
    Int(Vec<Option<i64>>),
    Bool(Vec<bool>),
    Float(Vec<f64>),
    Text(Vec<Option<String>>),
    Json(Vec<sqlx::types::Json<Value>>),
}

impl Column {
    /// The columns of `args`, `width` arguments per row, row after row; `None` when a column
    /// mixes kinds of argument (the rows were not written by one statement builder).
    pub(crate) fn split(args: Vec<Arg>, width: usize) -> Option<Vec<Column>> {
        if width == 0 || !args.len().is_multiple_of(width) {
            return None;
        }
        let rows = args.len() / width;
        let mut columns: Vec<Option<Column>> = (0..width).map(|_| None).collect();
        for (i, arg) in args.into_iter().enumerate() {
            let column = &mut columns[i % width];
            match (column.get_or_insert_with(|| Column::like(&arg, rows)), arg) {
                (Column::Int(v), Arg::Int(x)) => v.push(Some(x)),
                (Column::Int(v), Arg::OptInt(x)) => v.push(x),
                (Column::Bool(v), Arg::Bool(x)) => v.push(x),
                (Column::Float(v), Arg::Float(x)) => v.push(x),
                (Column::Text(v), Arg::Text(x)) => v.push(x),
                (Column::Json(v), Arg::Json(x)) => v.push(sqlx::types::Json(x)),
                _ => return None,
            }
        }
        columns.into_iter().collect()
    }

    fn like(arg: &Arg, rows: usize) -> Column {
        match arg {
            Arg::Int(_) | Arg::OptInt(_) => Column::Int(Vec::with_capacity(rows)),
            Arg::Bool(_) => Column::Bool(Vec::with_capacity(rows)),
            Arg::Float(_) => Column::Float(Vec::with_capacity(rows)),
            Arg::Text(_) => Column::Text(Vec::with_capacity(rows)),
            Arg::Json(_) => Column::Json(Vec::with_capacity(rows)),
        }
    }

    /// Its PostgreSQL array type.
    pub(crate) fn array_type(&self) -> &'static str {
        match self {
            Column::Int(_) => "int8[]",
            Column::Bool(_) => "bool[]",
            Column::Float(_) => "float8[]",
            Column::Text(_) => "text[]",
            Column::Json(_) => "jsonb[]",
        }
    }
}

/// `(SELECT * FROM unnest($o+1::type[], …) AS alias(column1, …))`: the rows of `columns`
/// (bound from parameter `offset + 1` on) as a table named like a `VALUES` list's columns.
pub(crate) fn unnest(alias: &str, columns: &[Column], offset: usize) -> String {
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", offset + i + 1, c.array_type()))
        .collect();
    let names: Vec<String> = (1..=columns.len()).map(|n| format!("column{n}")).collect();
    format!(
        "(SELECT * FROM unnest({}) AS {alias}({}))",
        arrays.join(", "),
        names.join(", ")
    )
}

/// A statement parameter.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Float(f64),
    Text(Option<String>),
    Json(Value),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

/// A column value, whatever the engine.
#[derive(Debug, Clone)]
enum Val {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Ts(DateTime<Utc>),
    Json(Value),
    /// A value that does not decode (SQLite stores whatever a client writes): reported when
    /// its column is read, so one bad value fails its row only, never the whole result.
    Bad(String),
}

/// A result row, by column name (the names are shared by all rows of a result).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    names: std::sync::Arc<[String]>,
    values: Vec<Val>,
}

fn corrupt(column: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("column `{column}`: {what}"))
}

impl Row {
    fn get(&self, name: &str) -> Result<&Val, StoreError> {
        match self
            .names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.values[i])
        {
            Some(Val::Bad(why)) => Err(corrupt(name, why)),
            Some(v) => Ok(v),
            None => Err(corrupt(name, "missing from the result")),
        }
    }

    pub(crate) fn int(&self, name: &str) -> Result<i64, StoreError> {
        match self.get(name)? {
            Val::Int(v) => Ok(*v),
            Val::Float(v) => Ok(*v as i64),
            _ => Err(corrupt(name, "expected an integer")),
        }
    }

    pub(crate) fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError> {
        match self.get(name)? {
            Val::Null => Ok(None),
            _ => self.int(name).map(Some),
        }
    }

    pub(crate) fn opt_text(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.get(name)? {
            Val::Null => Ok(None),
            Val::Text(s) => Ok(Some(s.clone())),
            Val::Int(v) => Ok(Some(v.to_string())),
            _ => Err(corrupt(name, "expected text")),
        }
    }

    pub(crate) fn text(&self, name: &str) -> Result<String, StoreError> {
        self.opt_text(name)?
            .ok_or_else(|| corrupt(name, "unexpected NULL"))
    }

    pub(crate) fn parse<T: FromStr>(&self, name: &str) -> Result<T, StoreError> {
        let text = self.text(name)?;
        text.parse()
            .map_err(|_| corrupt(name, &format!("unknown value `{text}`")))
    }

    pub(crate) fn opt_ts(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.get(name)? {
            Val::Null => Ok(None),
            Val::Ts(t) => Ok(Some(*t)),
            Val::Text(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| corrupt(name, &format!("not a timestamp: `{s}`"))),
            _ => Err(corrupt(name, "expected a timestamp")),
        }
    }

    pub(crate) fn ts(&self, name: &str) -> Result<DateTime<Utc>, StoreError> {
        self.opt_ts(name)?
            .ok_or_else(|| corrupt(name, "unexpected NULL"))
    }

    pub(crate) fn json(&self, name: &str) -> Result<Value, StoreError> {
        match self.get(name)? {
            Val::Null => Ok(Value::Null),
            Val::Json(v) => Ok(v.clone()),
            Val::Text(s) => serde_json::from_str(s).map_err(|_| corrupt(name, "invalid JSON")),
            _ => Err(corrupt(name, "expected JSON")),
        }
    }
}

fn column_names<R: sqlx::Row>(rows: &[R]) -> std::sync::Arc<[String]> {
    rows.first()
        .map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect())
        .unwrap_or_else(|| std::sync::Arc::from(Vec::new()))
}

fn sqlite_row(row: &SqliteRow, names: &std::sync::Arc<[String]>) -> Result<Row, sqlx::Error> {
    let mut values = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Val::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" | "INT8" | "BIGINT" | "BOOLEAN" => Val::Int(row.try_get(i)?),
                "REAL" => Val::Float(row.try_get(i)?),
                "BLOB" => match String::from_utf8(row.try_get::<Vec<u8>, _>(i)?) {
                    Ok(text) => Val::Text(text),
                    Err(_) => Val::Bad("binary data (a BLOB) where text belongs".into()),
                },
                other => match row.try_get::<String, _>(i) {
                    Ok(text) => Val::Text(text),
                    Err(e) => {
                        Val::Bad(format!("a value of type {other} that does not decode: {e}"))
                    }
                },
            }
        };
        values.push(value);
    }
    Ok(Row {
        names: names.clone(),
        values,
    })
}

/// The rows of PostgreSQL query `q`, converted as they stream in, so a large result is never
/// held twice.
async fn pg_rows(
    q: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<Row>, StoreError> {
    let mut stream = q.fetch(conn);
    let mut out = Vec::new();
    let mut names = None;
    while let Some(row) = stream.try_next().await? {
        let names = names.get_or_insert_with(|| column_names(std::slice::from_ref(&row)));
        out.push(pg_row(&row, names)?);
    }
    Ok(out)
}

fn pg_row(row: &PgRow, names: &std::sync::Arc<[String]>) -> Result<Row, sqlx::Error> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Val::Null
        } else {
            match column.type_info().name() {
                "INT8" => Val::Int(row.try_get(i)?),
                "INT4" => Val::Int(i64::from(row.try_get::<i32, _>(i)?)),
                "INT2" => Val::Int(i64::from(row.try_get::<i16, _>(i)?)),
                "FLOAT8" => Val::Float(row.try_get(i)?),
                "TIMESTAMPTZ" => Val::Ts(row.try_get(i)?),
                "JSONB" | "JSON" => Val::Json(row.try_get(i)?),
                "BOOL" => Val::Int(i64::from(row.try_get::<bool, _>(i)?)),
                _ => Val::Text(row.try_get(i)?),
            }
        };
        values.push(value);
    }
    Ok(Row {
        names: names.clone(),
        values,
    })
}

/// An open transaction on either engine. A SQLite write transaction also holds the store's
/// writer lock until it ends.
pub(crate) enum Tx {
    Sqlite(Unit<Sqlite>, Option<tokio::sync::OwnedMutexGuard<()>>),
    Postgres(Unit<Postgres>),
}

/// A transaction, or a single statement that commits by itself (see [`Pool::single`]).
pub(crate) enum Unit<DB: sqlx::Database> {
    Transaction(Transaction<'static, DB>),
    Single(sqlx::pool::PoolConnection<DB>),
}

impl<DB: sqlx::Database> Unit<DB> {
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        match self {
            Unit::Transaction(t) => t,
            Unit::Single(c) => c,
        }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Unit::Transaction(t) => t.commit().await,
            Unit::Single(_) => Ok(()),
        }
    }
}

macro_rules! bind_all {
    ($query:expr, $args:expr, $json:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Int(v) => q.bind(v),
                Arg::OptInt(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Float(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::Json(v) => q.bind($json(v)),
            };
        }
        q
    }};
}

impl Tx {
    pub(crate) fn dialect(&self) -> &'static Dialect {
        match self {
            Tx::Sqlite(..) => &SQLITE,
            Tx::Postgres(_) => &POSTGRES,
        }
    }

    /// Runs a statement and returns its rows.
    pub(crate) async fn rows(
        &mut self,
        template: &str,
        args: Vec<Arg>,
    ) -> Result<Vec<Row>, StoreError> {
        let sql = self.dialect().sql(template);
        match self {
            // Rows are converted as they stream in, so a large result is never held twice.
            Tx::Sqlite(tx, _) => {
                let q = bind_all!(sqlx::query(&sql), args, |v: Value| v.to_string());
                let mut stream = q.fetch(tx.conn());
                let mut out = Vec::new();
                let mut names = None;
                while let Some(row) = stream.try_next().await? {
                    let names =
                        names.get_or_insert_with(|| column_names(std::slice::from_ref(&row)));
                    out.push(sqlite_row(&row, names)?);
                }
                Ok(out)
            }
            Tx::Postgres(tx) => {
                pg_rows(
                    bind_all!(sqlx::query(&sql), args, sqlx::types::Json),
                    tx.conn(),
                )
                .await
            }
        }
    }

    /// PostgreSQL: runs a statement whose parameters are arrays, one per column (see
    /// [`Column`]), and returns its rows. One text serves batches of any size, so the server
    /// parses and plans it once per connection.
    pub(crate) async fn rows_of_arrays(
        &mut self,
        sql: &str,
        columns: Vec<Column>,
    ) -> Result<Vec<Row>, StoreError> {
        let sql = self.dialect().sql(sql);
        let Tx::Postgres(tx) = self else {
            return Err(StoreError::Schema(
                "array parameters are PostgreSQL's; SQLite takes VALUES lists".into(),
            ));
        };
        let mut q = sqlx::query(&sql);
        for column in columns {
            q = match column {
                Column::Int(v) => q.bind(v),
                Column::Bool(v) => q.bind(v),
                Column::Float(v) => q.bind(v),
                Column::Text(v) => q.bind(v),
                Column::Json(v) => q.bind(v),
            };
        }
        pg_rows(q, tx.conn()).await
    }

    /// Runs a statement and returns its first row, if any.
    pub(crate) async fn row(
        &mut self,
        template: &str,
        args: Vec<Arg>,
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(template, args).await?.into_iter().next())
    }

    /// Runs a statement and returns the number of rows it changed.
    pub(crate) async fn execute(
        &mut self,
        template: &str,
        args: Vec<Arg>,
    ) -> Result<u64, StoreError> {
        let sql = self.dialect().sql(template);
        Ok(match self {
            Tx::Sqlite(tx, _) => bind_all!(sqlx::query(&sql), args, |v: Value| v.to_string())
                .execute(tx.conn())
                .await?
                .rows_affected(),
            Tx::Postgres(tx) => bind_all!(sqlx::query(&sql), args, sqlx::types::Json)
                .execute(tx.conn())
                .await?
                .rows_affected(),
        })
    }

    /// Commits.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx, _guard) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Connection pools of either engine: on SQLite, readers, and the writer.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(sqlx::SqlitePool, std::sync::Arc<SqliteWriter>),
    Postgres(sqlx::PgPool),
}

/// SQLite has one writer at a time: this process writes through one connection of its own,
/// whose page cache no other writer of the process invalidates, and its writers queue on an
/// async lock instead of on SQLite's busy handler, whose sleeps would throttle a busy daemon.
#[derive(Debug)]
pub(crate) struct SqliteWriter {
    pool: sqlx::SqlitePool,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// How the database tells provisioner's own SQLite writes from billing's.
///
/// SQLite has no roles. Every reconciler-owned column carries a trigger `BEFORE UPDATE OF`
/// it whose body calls a function named after it (`provisioner_owns_observed_status()`, …).
/// SQLite compiles a trigger, and resolves its functions, only for statements that set one
/// of its columns: provisioner's connections define those functions (they return NULL), a
/// plain client (the `sqlite3` shell, Python's `sqlite3`) does not, so its write to such a
/// column fails with `no such function: provisioner_owns_<column>` and billing's own columns
/// stay writable for it.
mod writer {
    use std::ffi::{c_int, CString};

    use libsqlite3_sys as ffi;

    /// The reconciler-owned columns guarded this way (the few that the database's own
    /// triggers update on billing's behalf, `desired_generation`, `desired_changed_at`,
    /// `next_check_at` and `updated_at`, are guarded by value rules instead).
    pub(super) const OWNED: [&str; 26] = [
        "observed_generation",
        "observed_status",
        "status_reason",
        "provider_account",
        "provider_server_id",
        "ipv4",
        "ipv6",
        "product_revision",
        "reboot_handled",
        "credentials_sealed",
        "credentials_key_id",
        "last_error",
        "attempts",
        "pending_action",
        "pending_action_id",
        "pending_hard",
        "pending_since",
        "lease_owner",
        "lease_expires_at",
        "lease_epoch",
        "created_at",
        "holds_seen",
        "reinstall_handled",
        "applied_product_id",
        "observe_only",
        "claim_pending",
    ];

    /// The reconciler's other tables, guarded the same way for every write.
    pub(super) const TABLES: [&str; 12] = [
        "instance_transitions",
        "product_revisions",
        "manual_tasks",
        "ovh_pool",
        "sim_servers",
        "schema_migrations",
        "api_tokens",
        "idempotency_keys",
        "events",
        "event_consumers",
        "webhook_deliveries",
        "webhook_attempts",
    ];

    unsafe extern "C" fn allowed(
        ctx: *mut ffi::sqlite3_context,
        _argc: c_int,
        _argv: *mut *mut ffi::sqlite3_value,
    ) {
        // SAFETY: SQLite calls this with a valid context for the duration of the call.
        unsafe { ffi::sqlite3_result_null(ctx) };
    }

    /// Defines `provisioner_owns_<column>()` on a new connection of the store's pool.
    pub(super) async fn register(conn: &mut sqlx::SqliteConnection) -> Result<(), sqlx::Error> {
        let mut handle = conn.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        for owned in OWNED.iter().chain(&TABLES) {
            let name = CString::new(format!("provisioner_owns_{owned}"))
                .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
            // SAFETY: `db` is this connection's open handle, held locked for the call; the
            // name is copied by SQLite; the function keeps no state (no user data, no
            // destructor).
            let rc = unsafe {
                ffi::sqlite3_create_function_v2(
                    db,
                    name.as_ptr(),
                    0,
                    ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC,
                    std::ptr::null_mut(),
                    Some(allowed),
                    None,
                    None,
                    None,
                )
            };
            if rc != ffi::SQLITE_OK {
                return Err(sqlx::Error::Protocol(format!(
                    "cannot define {name:?} on a SQLite connection (code {rc})"
                )));
            }
        }
        Ok(())
    }
}

impl Pool {
    pub(crate) async fn connect(url: &str, options: &ConnectOptions) -> Result<Pool, StoreError> {
        let connect_error = |source: sqlx::Error| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        match Engine::of_url(url)? {
            Engine::Sqlite => {
                let opts = super::connect::sqlite(url, options)?;
                // One writer at a time, and every connection keeps its own page cache: a few
                // connections serve any number of workers.
                let pool = SqlitePoolOptions::new()
                    .max_connections(options.max_connections.clamp(1, 4))
                    .acquire_timeout(options.acquire_timeout)
                    .after_connect(|conn, _| Box::pin(writer::register(conn)))
                    .connect_with(opts.clone())
                    .await
                    .map_err(connect_error)?;
                let write = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(options.acquire_timeout)
                    .after_connect(|conn, _| Box::pin(writer::register(conn)))
                    .connect_with(opts)
                    .await
                    .map_err(connect_error)?;
                Ok(Pool::Sqlite(
                    pool,
                    std::sync::Arc::new(SqliteWriter {
                        pool: write,
                        lock: std::sync::Arc::default(),
                    }),
                ))
            }
            Engine::Postgres => {
                let opts = super::connect::postgres(url)?;
                // One direct connection first: the pool would retry until its timeout and then
                // report only "timed out", hiding "connection refused" or "password failed".
                let probe = tokio::time::timeout(
                    options.acquire_timeout,
                    <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts),
                )
                .await
                .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
                .map_err(connect_error)?;
                let mut probe = probe;
                let encrypted: Option<bool> =
                    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                        .fetch_optional(&mut probe)
                        .await
                        .map_err(connect_error)?;
                tracing::debug!(
                    database = %redact_url(url),
                    tls = encrypted.unwrap_or(false),
                    "connected to PostgreSQL"
                );
                sqlx::Connection::close(probe)
                    .await
                    .map_err(connect_error)?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(opts)
                    .await
                    .map_err(connect_error)?;
                Ok(Pool::Postgres(pool))
            }
        }
    }

    pub(crate) fn engine(&self) -> Engine {
        match self {
            Pool::Sqlite(..) => Engine::Sqlite,
            Pool::Postgres(_) => Engine::Postgres,
        }
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`), so it waits for other writers instead of failing half-way.
    pub(crate) async fn write(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(_, writer) => {
                let guard = writer.lock.clone().lock_owned().await;
                return self.write_locked(guard).await;
            }
            Pool::Postgres(p) => Tx::Postgres(Unit::Transaction(p.begin().await?)),
        })
    }

    /// SQLite's writer lock (none on PostgreSQL): whoever holds it may begin a write with
    /// [`Pool::write_locked`].
    pub(crate) fn writer_lock(&self) -> Option<std::sync::Arc<tokio::sync::Mutex<()>>> {
        match self {
            Pool::Sqlite(_, writer) => Some(writer.lock.clone()),
            Pool::Postgres(_) => None,
        }
    }

    /// Begins a write transaction under a writer lock taken already (see
    /// [`Pool::writer_lock`]); on PostgreSQL the guard is not needed and is dropped.
    pub(crate) async fn write_locked(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(_, writer) => {
                let tx = writer.pool.begin_with("BEGIN IMMEDIATE").await?;
                Tx::Sqlite(Unit::Transaction(tx), Some(guard))
            }
            Pool::Postgres(p) => Tx::Postgres(Unit::Transaction(p.begin().await?)),
        })
    }

    /// A unit of one writing statement, which commits by itself: no `BEGIN` and `COMMIT`
    /// round trips. On SQLite it runs on the writer's connection under the writer lock; an
    /// autocommit write takes SQLite's write lock as it starts, exactly as `BEGIN IMMEDIATE`
    /// does (both begin from no transaction, where a busy database, a stale snapshot
    /// included, goes to the busy handler and is retried), so it never fails half-way on
    /// another process's commit. Only for a write that is one statement; `commit` ends it.
    pub(crate) async fn single(&self) -> Result<Tx, StoreError> {
        match self {
            Pool::Sqlite(_, writer) => {
                let guard = writer.lock.clone().lock_owned().await;
                self.single_locked(guard).await
            }
            Pool::Postgres(p) => Ok(Tx::Postgres(Unit::Single(p.acquire().await?))),
        }
    }

    /// [`Pool::single`] under a writer lock taken already (see [`Pool::writer_lock`]); on
    /// PostgreSQL the guard is not needed and is dropped.
    pub(crate) async fn single_locked(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(_, writer) => {
                Tx::Sqlite(Unit::Single(writer.pool.acquire().await?), Some(guard))
            }
            Pool::Postgres(p) => Tx::Postgres(Unit::Single(p.acquire().await?)),
        })
    }

    /// Begins a read-only unit of work.
    pub(crate) async fn read(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Pool::Sqlite(p, _) => Tx::Sqlite(Unit::Transaction(p.begin().await?), None),
            Pool::Postgres(p) => Tx::Postgres(Unit::Transaction(p.begin().await?)),
        })
    }

    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(p, writer) => {
                p.close().await;
                writer.pool.close().await;
            }
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// This engine's migrations: (version, description, SQL), in order.
    fn migrations(&self) -> &'static [(i64, &'static str, &'static str)] {
        match self.engine() {
            Engine::Sqlite => SQLITE_MIGRATIONS,
            Engine::Postgres => POSTGRES_MIGRATIONS,
        }
    }

    /// The migrations applied to this database (none for a new one), without changing it.
    pub(crate) async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.read().await?;
        let table = match self.engine() {
            Engine::Sqlite => {
                "SELECT count(*) AS n FROM sqlite_master \
                 WHERE type = 'table' AND name = 'schema_migrations'"
            }
            Engine::Postgres => {
                "SELECT count(*) AS n FROM pg_tables \
                 WHERE tablename = 'schema_migrations' AND schemaname = current_schema()"
            }
        };
        let present = match tx.row(table, vec![]).await? {
            Some(r) => r.int("n")? > 0,
            None => false,
        };
        if !present {
            return Ok(Vec::new());
        }
        tx.rows(
            "SELECT version FROM schema_migrations ORDER BY version",
            vec![],
        )
        .await?
        .iter()
        .map(|r| r.int("version"))
        .collect()
    }

    /// Checks that the schema is exactly the one this binary works with, without changing it.
    pub(crate) async fn check_schema(&self, url: &str) -> Result<(), StoreError> {
        let migrations = self.migrations();
        let known = migrations.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
        let applied = self.applied_migrations().await?;
        let missing: Vec<String> = migrations
            .iter()
            .filter(|(v, _, _)| !applied.contains(v))
            .map(|(v, _, _)| v.to_string())
            .collect();
        let url = redact_url(url);
        if applied.is_empty() {
            return Err(StoreError::Schema(format!(
                "{url} is not a provisioner database (no migration applied); run `provisioner migrate` to set it up"
            )));
        }
        if let Some(&latest) = applied.iter().max().filter(|v| **v > known) {
            return Err(StoreError::Schema(format!(
                "the database {url} is at schema version {latest}, newer than this provisioner \
                 knows ({known}); upgrade provisioner"
            )));
        }
        if !missing.is_empty() {
            return Err(StoreError::Schema(format!(
                "the database {url} lacks migration(s) {} of this provisioner; run `provisioner migrate`",
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// Applies the migrations of this engine that are not applied yet, in order, each in the
    /// same transaction as its bookkeeping row. Returns the versions applied.
    pub(crate) async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let migrations = self.migrations();
        let mut tx = self.write().await?;
        if let Tx::Postgres(t) = &mut tx {
            // Two daemons starting together: one migrates, the other waits, then finds it done.
            sqlx::query("SELECT pg_advisory_xact_lock(7262851160)")
                .execute(t.conn())
                .await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version     BIGINT PRIMARY KEY,
                 description TEXT NOT NULL,
                 checksum    TEXT NOT NULL,
                 applied_at  TEXT NOT NULL
             )",
            vec![],
        )
        .await?;
        let applied: Vec<(i64, String)> = tx
            .rows(
                "SELECT version, checksum FROM schema_migrations ORDER BY version",
                vec![],
            )
            .await?
            .iter()
            .map(|r| Ok((r.int("version")?, r.text("checksum")?)))
            .collect::<Result<_, StoreError>>()?;
        let mut done = Vec::new();
        for (version, description, sql) in migrations {
            let checksum = checksum(sql);
            if let Some((_, stored)) = applied.iter().find(|(v, _)| v == version) {
                if *stored != checksum {
                    return Err(StoreError::Migration(format!(
                        "migration {version} ({description}) was changed after it was applied; \
                         migrations are append-only: add a new one instead"
                    )));
                }
                continue;
            }
            match &mut tx {
                Tx::Sqlite(t, _) => sqlx::raw_sql(sql).execute(t.conn()).await.map(drop),
                Tx::Postgres(t) => sqlx::raw_sql(sql).execute(t.conn()).await.map(drop),
            }
            .map_err(|e| {
                StoreError::Migration(format!("migration {version} ({description}) failed: {e}"))
            })?;
            tx.execute(
                "INSERT INTO schema_migrations (version, description, checksum, applied_at)
                 VALUES ($1, $2, $3, $4)",
                vec![
                    Arg::Int(*version),
                    (*description).into(),
                    checksum.into(),
                    Utc::now().to_rfc3339().into(),
                ],
            )
            .await?;
            done.push(*version);
        }
        if let Some(&latest) = applied.iter().map(|(v, _)| v).max() {
            let known = migrations.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
            if latest > known {
                return Err(StoreError::Migration(format!(
                    "the database is at schema version {latest}, newer than this provisioner \
                     knows ({known}); upgrade provisioner"
                )));
            }
        }
        if let Tx::Postgres(t) = &mut tx {
            sqlx::raw_sql(POSTGRES_BILLING_ROLE)
                .execute(t.conn())
                .await
                .map_err(|e| StoreError::Migration(format!("the provisioner_billing role: {e}")))?;
        }
        tx.commit().await?;
        Ok(done)
    }
}

fn checksum(sql: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "store",
        include_str!("../../migrations/sqlite/0001_store.sql"),
    ),
    (
        2,
        "simulated cloud",
        include_str!("../../migrations/sqlite/0002_sim.sql"),
    ),
    (
        3,
        "ovh pool",
        include_str!("../../migrations/sqlite/0003_ovh_pool.sql"),
    ),
    (
        4,
        "typed hard fallback",
        include_str!("../../migrations/sqlite/0004_pending_hard.sql"),
    ),
    (
        5,
        "integrity: no replace, typed billing columns, bounded counters",
        include_str!("../../migrations/sqlite/0005_integrity.sql"),
    ),
    (
        6,
        "billing boundary",
        include_str!("../../migrations/sqlite/0006_billing_boundary.sql"),
    ),
    (
        7,
        "idempotent orders and suspension holds",
        include_str!("../../migrations/sqlite/0007_holds_and_refs.sql"),
    ),
    (
        8,
        "changes of plan, reinstalls and imported servers",
        include_str!("../../migrations/sqlite/0008_plan_changes_and_reinstalls.sql"),
    ),
    (
        9,
        "imported and adopted servers",
        include_str!("../../migrations/sqlite/0009_imported_servers.sql"),
    ),
    (
        10,
        "API tokens",
        include_str!("../../migrations/sqlite/0010_api_tokens.sql"),
    ),
    (
        11,
        "idempotency keys",
        include_str!("../../migrations/sqlite/0011_idempotency_keys.sql"),
    ),
    (
        12,
        "events and webhook deliveries",
        include_str!("../../migrations/sqlite/0012_events.sql"),
    ),
    (
        13,
        "event inbox",
        include_str!("../../migrations/sqlite/0013_event_inbox.sql"),
    ),
    (
        14,
        "daemons",
        include_str!("../../migrations/sqlite/0014_daemons.sql"),
    ),
    (
        15,
        "sim server names",
        include_str!("../../migrations/sqlite/0015_sim_names.sql"),
    ),
    (
        16,
        "unique sim server names",
        include_str!("../../migrations/sqlite/0016_sim_unique_names.sql"),
    ),
];

/// The billing role and its grants, applied after the migrations by every migrate.
const POSTGRES_BILLING_ROLE: &str = include_str!("../../migrations/postgres/billing_role.sql");

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "store",
        include_str!("../../migrations/postgres/0001_store.sql"),
    ),
    (
        2,
        "simulated cloud",
        include_str!("../../migrations/postgres/0002_sim.sql"),
    ),
    (
        3,
        "ovh pool",
        include_str!("../../migrations/postgres/0003_ovh_pool.sql"),
    ),
    (
        4,
        "typed hard fallback",
        include_str!("../../migrations/postgres/0004_pending_hard.sql"),
    ),
    (
        5,
        "integrity: no replace, typed billing columns, bounded counters",
        include_str!("../../migrations/postgres/0005_integrity.sql"),
    ),
    (
        6,
        "billing boundary",
        include_str!("../../migrations/postgres/0006_billing_boundary.sql"),
    ),
    (
        7,
        "idempotent orders and suspension holds",
        include_str!("../../migrations/postgres/0007_holds_and_refs.sql"),
    ),
    (
        8,
        "changes of plan, reinstalls and imported servers",
        include_str!("../../migrations/postgres/0008_plan_changes_and_reinstalls.sql"),
    ),
    (
        9,
        "imported and adopted servers",
        include_str!("../../migrations/postgres/0009_imported_servers.sql"),
    ),
    (
        10,
        "API tokens",
        include_str!("../../migrations/postgres/0010_api_tokens.sql"),
    ),
    (
        11,
        "idempotency keys",
        include_str!("../../migrations/postgres/0011_idempotency_keys.sql"),
    ),
    (
        12,
        "events and webhook deliveries",
        include_str!("../../migrations/postgres/0012_events.sql"),
    ),
    (
        13,
        "event inbox",
        include_str!("../../migrations/postgres/0013_event_inbox.sql"),
    ),
    (
        14,
        "daemons",
        include_str!("../../migrations/postgres/0014_daemons.sql"),
    ),
    (
        15,
        "sim server names",
        include_str!("../../migrations/postgres/0015_sim_names.sql"),
    ),
    (
        16,
        "unique sim server names",
        include_str!("../../migrations/postgres/0016_sim_unique_names.sql"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guarded_column_has_its_trigger() {
        let sql = concat!(
            include_str!("../../migrations/sqlite/0006_billing_boundary.sql"),
            include_str!("../../migrations/sqlite/0007_holds_and_refs.sql"),
            include_str!("../../migrations/sqlite/0008_plan_changes_and_reinstalls.sql"),
            include_str!("../../migrations/sqlite/0009_imported_servers.sql"),
            include_str!("../../migrations/sqlite/0010_api_tokens.sql"),
            include_str!("../../migrations/sqlite/0011_idempotency_keys.sql"),
            include_str!("../../migrations/sqlite/0012_events.sql")
        );
        for column in writer::OWNED {
            assert!(
                sql.contains(&format!(
                    "BEFORE UPDATE OF {column} ON instances\nBEGIN\n    SELECT provisioner_owns_{column}();"
                )),
                "{column} has no guarding trigger"
            );
        }
        for table in writer::TABLES {
            assert!(
                sql.contains(&format!(
                    "BEFORE INSERT ON {table}\nBEGIN\n    SELECT provisioner_owns_{table}();"
                )),
                "{table} has no guarding trigger"
            );
        }
    }

    #[test]
    fn parameters_are_rewritten_for_batches() {
        let column = |n| format!("v.column{n}");
        for (template, expected) in [
            (
                "UPDATE t SET a = $4 WHERE id = $1",
                "UPDATE t SET a = v.column4 WHERE id = v.column1",
            ),
            (
                "SELECT $10, {later:$9}",
                "SELECT v.column10, {later:v.column9}",
            ),
            ("SELECT $1,$2", "SELECT v.column1,v.column2"),
            ("SELECT 1", "SELECT 1"),
            ("SELECT $ || $x", "SELECT $ || $x"),
            ("SELECT $1 || 'é'", "SELECT v.column1 || 'é'"),
        ] {
            assert_eq!(map_params(template, column), expected, "{template}");
        }
        assert_eq!(values(1, 1), "(VALUES (?))");
        assert_eq!(values(2, 3), "(VALUES (?, ?, ?), (?, ?, ?))");
    }

    #[test]
    fn batch_arguments_become_typed_array_columns() {
        let args = vec![
            Arg::Int(1),
            Arg::Text(Some("a".into())),
            Arg::OptInt(None),
            Arg::Int(2),
            Arg::Text(None),
            Arg::OptInt(Some(7)),
        ];
        let columns = Column::split(args, 3).expect("one kind per column");
        let types: Vec<_> = columns.iter().map(Column::array_type).collect();
        assert_eq!(types, ["int8[]", "text[]", "int8[]"]);
        assert!(matches!(&columns[2], Column::Int(v) if v == &[None, Some(7)]));
        assert_eq!(
            unnest("v", &columns, 4),
            "(SELECT * FROM unnest($5::int8[], $6::text[], $7::int8[]) AS v(column1, column2, column3))"
        );
        // A column mixing kinds, or a row cut short, is refused.
        assert!(Column::split(vec![Arg::Int(1), Arg::Bool(true)], 1).is_none());
        assert!(Column::split(vec![Arg::Int(1), Arg::Int(2), Arg::Int(3)], 2).is_none());
        assert!(Column::split(vec![], 0).is_none());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example.com:5432/prov"),
            "postgres://app:***@db.example.com:5432/prov"
        );
        assert_eq!(
            redact_url("postgres://app@db/prov?password=s3cret&sslmode=require"),
            "postgres://app@db/prov?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite://provisioner.db"),
            "sqlite://provisioner.db"
        );
        assert_eq!(
            redact_url("postgres://db/prov?user=app&password=s3cret"),
            "postgres://db/prov?user=app&password=***"
        );
        assert_eq!(
            redact_url("postgres://app:s3/cr?et@db/prov?sslpassword=k3y"),
            "postgres://app:***@db/prov?sslpassword=***"
        );
    }

    #[test]
    fn statements_are_rewritten_per_engine() {
        let t = "UPDATE x SET a = $1, b = {now}, c = {later:$2} WHERE id = $3";
        assert_eq!(
            POSTGRES.sql(t),
            "UPDATE x SET a = $1, b = now(), c = (now() + $2 * interval '1 second') WHERE id = $3"
        );
        assert_eq!(
            SQLITE.sql(t),
            "UPDATE x SET a = ?1, b = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), c = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', ?2)) WHERE id = ?3"
        );
    }
}
