//! Idempotency-Key records of the API (`idempotency_keys`): the first response to a key, kept
//! for [`KEEP`] and replayed for a retry of the same request; keys are scoped to the token.

use super::engine::Arg;
use super::{Result, SqlStore};

/// How long a key's response is kept.
pub const KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A request still `running` after this long was abandoned (its daemon stopped mid-way): a
/// retry takes the key over.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// What a request carrying a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// The key is new (or expired, or abandoned): run the request, then [`SqlStore::finish_key`].
    Run,
    /// The same request was answered: send this again.
    Replay {
        /// Its status.
        status: u16,
        /// Its body.
        response: String,
        /// Its `Location`, if any.
        location: Option<String>,
    },
    /// The key was used for a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

impl SqlStore {
    /// Claims `key` of `token` for a request whose fingerprint is `fingerprint`, or says what
    /// the earlier request with that key makes of this one.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn begin_key(&self, token: &str, key: &str, fingerprint: &str) -> Result<Begun> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "DELETE FROM idempotency_keys
              WHERE expires_at < {now}
                 OR (token_name = $1 AND key = $2 AND state = 'running'
                     AND created_at < {later:$3})",
            vec![
                token.into(),
                key.into(),
                Arg::Float(-ABANDONED_AFTER.as_secs_f64()),
            ],
        )
        .await?;
        let existing = tx
            .row(
                "SELECT fingerprint, state, status, response, location FROM idempotency_keys
                  WHERE token_name = $1 AND key = $2",
                vec![token.into(), key.into()],
            )
            .await?;
        let begun = match existing {
            Some(r) if r.text("fingerprint")? != fingerprint => Begun::Mismatch,
            Some(r) if r.text("state")? == "running" => Begun::InFlight,
            Some(r) => Begun::Replay {
                status: u16::try_from(r.int("status")?).unwrap_or(500),
                response: r.opt_text("response")?.unwrap_or_default(),
                location: r.opt_text("location")?,
            },
            None => {
                tx.execute(
                    "INSERT INTO idempotency_keys (token_name, key, fingerprint, state, expires_at)
                     VALUES ($1, $2, $3, 'running', {later:$4})",
                    vec![
                        token.into(),
                        key.into(),
                        fingerprint.into(),
                        Arg::Float(KEEP.as_secs_f64()),
                    ],
                )
                .await?;
                Begun::Run
            }
        };
        tx.commit().await?;
        Ok(begun)
    }

    /// Keeps the response to the request that claimed `key`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn finish_key(
        &self,
        token: &str,
        key: &str,
        status: u16,
        response: &str,
        location: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "UPDATE idempotency_keys SET state = 'done', status = $3, response = $4, location = $5
              WHERE token_name = $1 AND key = $2",
            vec![
                token.into(),
                key.into(),
                Arg::Int(i64::from(status)),
                response.into(),
                location.map(str::to_owned).into(),
            ],
        )
        .await?;
        tx.commit().await
    }

    /// Lets go of `key` without a response (the request could not be answered, so a retry
    /// may run it).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn release_key(&self, token: &str, key: &str) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "DELETE FROM idempotency_keys WHERE token_name = $1 AND key = $2 AND state = 'running'",
            vec![token.into(), key.into()],
        )
        .await?;
        tx.commit().await
    }
}
