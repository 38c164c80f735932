//! From a `DATABASE_URL` to the driver's connection options: whether a SQLite file may be
//! created (and with which permissions), and PostgreSQL's TLS settings read as libpq reads them.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::engine::redact_url;
use super::StoreError;

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long a writer waits for SQLite's lock before failing.
    pub sqlite_busy_timeout: Duration,
    /// How long to wait for a pooled connection before failing.
    pub acquire_timeout: Duration,
    /// Whether a missing SQLite file is created (mode 0600). Commands that only read or change
    /// existing instances say no, so that a mistyped path is an error instead of a new, empty
    /// database.
    pub create: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: 8,
            sqlite_busy_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(15),
            create: true,
        }
    }
}

impl ConnectOptions {
    /// The defaults, for a database that must exist already.
    #[must_use]
    pub fn existing() -> Self {
        ConnectOptions {
            create: false,
            ..ConnectOptions::default()
        }
    }
}

/// SQLite options for `url`. A missing file is created first, owner-only (0600, like its key:
/// SQLite gives its `-wal` and `-shm` files the database's permissions), or refused when
/// `options.create` is false.
pub(crate) fn sqlite(
    url: &str,
    options: &ConnectOptions,
) -> Result<SqliteConnectOptions, StoreError> {
    let opts = SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
        url: redact_url(url),
        source,
    })?;
    let path = opts.get_filename().to_owned();
    let in_memory = path.as_os_str().is_empty() || path.as_os_str() == ":memory:";
    if !in_memory && !path.exists() {
        if !options.create {
            return Err(StoreError::NoDatabase(format!(
                "database file {} does not exist (check --database-url / DATABASE_URL; \
                 `provisioner migrate` creates a new one)",
                path.display()
            )));
        }
        create_private(&path)?;
    }
    Ok(opts
        .create_if_missing(options.create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(options.sqlite_busy_timeout))
}

fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::NoDatabase(format!(
            "cannot create database file {}: {e}",
            path.display()
        ))),
    }
}

/// PostgreSQL options for `url`, TLS included: `sslmode` (`disable`, `allow`, `prefer` — the
/// default —, `require`, `verify-ca`, `verify-full`), `sslrootcert`, `sslcert` and `sslkey`, in
/// the URL or libpq's `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`. As libpq does,
/// `sslrootcert=system` trusts the system's certificate store and means `verify-full`, and
/// `require` with a root certificate given verifies the chain (`verify-ca`).
pub(crate) fn postgres(url: &str) -> Result<PgConnectOptions, StoreError> {
    let invalid = |message: String| StoreError::Url(format!("{}: {message}", redact_url(url)));
    let settings = tls_settings(url).map_err(invalid)?;
    let stripped = without_param(url, "sslrootcert");
    let url_for_driver = if settings.system_roots {
        &stripped
    } else {
        url
    };
    let mut opts =
        PgConnectOptions::from_str(url_for_driver).map_err(|source| StoreError::Connect {
            url: redact_url(url),
            source,
        })?;
    if settings.system_roots {
        opts = opts.ssl_mode(PgSslMode::VerifyFull);
    } else if settings.root_cert && matches!(opts.get_ssl_mode(), PgSslMode::Require) {
        opts = opts.ssl_mode(PgSslMode::VerifyCa);
    }
    Ok(opts)
}

/// What the URL (or libpq's environment) says about TLS beyond what the driver reads itself.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    /// `sslrootcert=system`: the system's trust store.
    system_roots: bool,
    /// A root certificate file is named.
    root_cert: bool,
}

fn tls_settings(url: &str) -> Result<TlsSettings, String> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let root = param("sslrootcert").or_else(|| std::env::var("PGSSLROOTCERT").ok());
    let mode = param("sslmode").or_else(|| std::env::var("PGSSLMODE").ok());
    let system_roots = root.as_deref() == Some("system");
    if system_roots {
        if let Some(m) = mode.as_deref().filter(|m| *m != "verify-full") {
            return Err(format!(
                "sslrootcert=system needs sslmode=verify-full (or no sslmode), not `{m}`"
            ));
        }
    }
    Ok(TlsSettings {
        system_roots,
        root_cert: root.is_some_and(|r| !r.is_empty()),
    })
}

fn without_param(url: &str, name: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_conventions_are_kept() {
        let opts = |url: &str| postgres(url).map(|o| format!("{:?}", o.get_ssl_mode()));
        let table: &[(&str, Result<&str, &str>)] = &[
            ("postgres://u@h/db", Ok("Prefer")),
            ("postgres://u@h/db?sslmode=require", Ok("Require")),
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca.pem",
                Ok("VerifyCa"),
            ),
            ("postgres://u@h/db?sslmode=verify-full", Ok("VerifyFull")),
            ("postgres://u@h/db?sslrootcert=system", Ok("VerifyFull")),
            (
                "postgres://u@h/db?sslrootcert=system&sslmode=verify-full",
                Ok("VerifyFull"),
            ),
            (
                "postgres://u@h/db?sslrootcert=system&sslmode=require",
                Err("sslrootcert=system needs sslmode=verify-full"),
            ),
        ];
        for (url, want) in table {
            match (opts(url), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{url}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn only_the_named_parameter_is_removed() {
        assert_eq!(
            without_param(
                "postgres://h/db?sslrootcert=system&sslmode=verify-full",
                "sslrootcert"
            ),
            "postgres://h/db?sslmode=verify-full"
        );
        assert_eq!(
            without_param("postgres://h/db?sslrootcert=system", "sslrootcert"),
            "postgres://h/db"
        );
    }
}
