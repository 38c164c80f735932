//! `provisioner tokens …`: the HTTP API's tokens, made, listed and revoked by an admin.

use std::process::ExitCode;

use serde_json::json;

use super::instances::invalid;
use super::{output, Format, TokensCommand, EXIT_OK};
use crate::store::{redact_url, ConnectOptions, Scope, SqlStore, StoreError};

pub(super) async fn run(url: &str, command: TokensCommand) -> anyhow::Result<ExitCode> {
    with_store(url, async |store| dispatch(store, command).await).await
}

/// Runs `f` on the existing database at `url`, closing it after; a refusal of the store's
/// ([`StoreError::Rejected`]) is bad input (exit 2), not a failure.
pub(super) async fn with_store(
    url: &str,
    f: impl AsyncFnOnce(&SqlStore) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let store = SqlStore::open_existing(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot use database {}", redact_url(url)))?;
    let result = f(&store).await;
    store.close().await;
    match result {
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Rejected(_))
            ) =>
        {
            invalid(e)
        }
        other => other,
    }
}

async fn dispatch(store: &SqlStore, command: TokensCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokensCommand::Create {
            name,
            scope,
            by,
            format,
        } => {
            let Ok(scope) = scope.parse::<Scope>() else {
                return invalid(format!(
                    "unknown scope `{}`; expected read, billing or admin",
                    output::printable(&scope)
                ));
            };
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid {
                return invalid(format!(
                    "token name `{}` is not a word: 1 to 64 lower-case letters, digits, `-` or `_`",
                    output::printable(&name)
                ));
            }
            let (token, hash) = crate::secrets::new_api_token();
            let by = super::operator(by);
            let made = store.create_token(&name, scope, &hash, &by).await?;
            match format {
                Format::Json => output::json(&json!({
                    "name": made.name,
                    "scope": made.scope.as_str(),
                    "token": token.expose(),
                }))?,
                Format::Text => output::text(&format!(
                    "token `{}` ({}) made by {by}; it is shown this once, keep it now:\n{}\n",
                    made.name,
                    made.scope,
                    token.expose()
                ))?,
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        TokensCommand::List { format } => {
            let tokens = store.tokens().await?;
            match format {
                Format::Json => output::json(&json!(tokens
                    .iter()
                    .map(|t| json!({
                        "name": t.name,
                        "scope": t.scope.as_str(),
                        "created_by": t.created_by,
                        "created_at": output::ts(t.created_at),
                        "last_used_at": output::ts_json(t.last_used_at),
                        "revoked_at": output::ts_json(t.revoked_at),
                    }))
                    .collect::<Vec<_>>()))?,
                Format::Text => {
                    let mut table = output::Table::new(&[
                        "NAME",
                        "SCOPE",
                        "CREATED",
                        "BY",
                        "LAST USED",
                        "REVOKED",
                    ]);
                    for t in &tokens {
                        table.row(vec![
                            t.name.clone(),
                            t.scope.to_string(),
                            output::ts(t.created_at),
                            output::printable(&t.created_by).into_owned(),
                            output::ts_text(t.last_used_at),
                            output::ts_text(t.revoked_at),
                        ]);
                    }
                    output::text(&table.render())?;
                }
            }
            Ok(ExitCode::from(EXIT_OK))
        }
        TokensCommand::Revoke { name, format } => {
            if !store.revoke_token(&name).await? {
                return invalid(format!(
                    "no live token named `{}`",
                    output::printable(&name)
                ));
            }
            match format {
                Format::Json => output::json(&json!({"name": name, "revoked": true}))?,
                Format::Text => output::text(&format!(
                    "token `{name}` revoked: it authenticates nothing from now on\n"
                ))?,
            }
            Ok(ExitCode::from(EXIT_OK))
        }
    }
}
