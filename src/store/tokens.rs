//! The HTTP API's tokens (`api_tokens`): a name, a scope, and only the SHA-256 of the token.

use chrono::{DateTime, Utc};

use super::engine::Row;
use super::{Result, SqlStore, StoreError};
use crate::vocab::vocabulary;

vocabulary! {
    /// What a token may do; each scope allows what the ones before it allow.
    Scope {
        /// Read the catalog, instances and their history.
        Read => "read",
        /// Also order, and change what instances should be.
        Billing => "billing",
        /// Also read credentials, work tasks, retry and recover.
        Admin => "admin",
    }
}

impl Scope {
    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

/// A token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Its name (lower-case letters, digits, `-`, `_`).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Who made it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it last authenticated a request (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked token authenticates nothing.
    pub revoked_at: Option<DateTime<Utc>>,
}

fn token_from(r: &Row) -> Result<ApiToken> {
    Ok(ApiToken {
        name: r.text("name")?,
        scope: r.parse("scope")?,
        created_by: r.text("created_by")?,
        created_at: r.ts("created_at")?,
        last_used_at: r.opt_ts("last_used_at")?,
        revoked_at: r.opt_ts("revoked_at")?,
    })
}

impl SqlStore {
    /// Stores a new token by the SHA-256 of its value.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] when the name is taken (revoked tokens keep theirs) or is not
    /// a word.
    pub async fn create_token(
        &self,
        name: &str,
        scope: Scope,
        token_hash: &str,
        by: &str,
    ) -> Result<ApiToken> {
        let mut tx = self.pool().write().await?;
        if tx
            .row(
                "SELECT name FROM api_tokens WHERE name = $1",
                vec![name.into()],
            )
            .await?
            .is_some()
        {
            return Err(StoreError::Rejected(format!(
                "a token named `{name}` exists already (revoked tokens keep their name): choose another name"
            )));
        }
        let row = tx
            .row(
                "INSERT INTO api_tokens (name, scope, token_hash, created_by)
                 VALUES ($1, $2, $3, $4) RETURNING *",
                vec![
                    name.into(),
                    scope.as_str().into(),
                    token_hash.into(),
                    by.into(),
                ],
            )
            .await?
            .ok_or_else(|| StoreError::Corrupt("INSERT … RETURNING returned no row".into()))?;
        let token = token_from(&row)?;
        tx.commit().await?;
        Ok(token)
    }

    /// Every token, revoked ones included, by name.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        let mut tx = self.pool().read().await?;
        tx.rows("SELECT * FROM api_tokens ORDER BY name", vec![])
            .await?
            .iter()
            .map(token_from)
            .collect()
    }

    /// Revokes a token; `false` when there is no live token of that name.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn revoke_token(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool().write().await?;
        let n = tx
            .execute(
                "UPDATE api_tokens SET revoked_at = {now}
                  WHERE name = $1 AND revoked_at IS NULL",
                vec![name.into()],
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// The live token whose SHA-256 is `token_hash`, and the hash as stored (for a
    /// constant-time comparison by the caller).
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<(ApiToken, String)>> {
        let mut tx = self.pool().read().await?;
        let row = tx
            .row(
                "SELECT * FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                vec![token_hash.into()],
            )
            .await?;
        row.map(|r| Ok((token_from(&r)?, r.text("token_hash")?)))
            .transpose()
    }

    /// Records that a token was used, at most once a minute per token (a busy client does not
    /// turn every read into a write).
    ///
    /// # Errors
    /// When the database cannot be written.
    pub async fn touch_token(&self, name: &str) -> Result<()> {
        let mut tx = self.pool().write().await?;
        tx.execute(
            "UPDATE api_tokens SET last_used_at = {now}
              WHERE name = $1 AND (last_used_at IS NULL OR last_used_at < {later:$2})",
            vec![name.into(), super::engine::Arg::Float(-60.0)],
        )
        .await?;
        tx.commit().await
    }
}
