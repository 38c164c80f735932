//! An admin's adoption of an existing server by a lost or failed instance: the server is
//! looked at once through the account's module (read only, the verdict at once), checked
//! ([`super::attach::attach_check`]) and recorded; the reconciler then marks it as ours. The
//! CLI (`instances adopt`, `instances import`) and the console call this.

use serde_json::json;

use super::attach::{attach_check, AttachRequest};
use crate::catalog::Catalog;
use crate::provider::account::Account;
use crate::provider::{ErrorClass, Server};
use crate::store::{Attached, Instance, ObservedStatus, SqlStore, Store, StoreError};

/// Looks at a server, trying again a few times (as an admin would) while the provider's
/// trouble is transient: a 503 or a 429 is not a verdict on the server.
async fn inspect_with_retries(
    account: &Account,
    server_id: &str,
) -> crate::provider::Result<Option<Server>> {
    let mut wait = std::time::Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match account.provider.inspect(server_id).await {
            Err(e) if e.class.is_transient() && attempt < 5 => {
                let pause = e
                    .retry_after
                    .unwrap_or(wait)
                    .min(std::time::Duration::from_secs(10));
                tracing::warn!(account = %account.id, server = server_id, error = %e, "looking at the server failed; trying again in {pause:?}");
                tokio::time::sleep(pause).await;
                wait *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The server at the provider and the live instance whose mark it carries, if any; a
/// refusal (`Err` inside) when the provider says the id or the credentials are wrong.
///
/// # Errors
/// When the provider keeps failing or the database cannot be read.
pub async fn inspect(
    store: &SqlStore,
    account: &Account,
    server_id: &str,
) -> anyhow::Result<Result<(Option<Server>, Option<i64>), String>> {
    let found = match inspect_with_retries(account, server_id).await {
        Ok(found) => found,
        Err(e) if e.class == ErrorClass::Invalid || e.class == ErrorClass::Auth => {
            return Ok(Err(e.to_string()))
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot look at server {server_id} of account `{}`",
                account.id
            )))
        }
    };
    let mut marked_live = None;
    if let Some(other) = found.as_ref().and_then(|s| s.instance_id) {
        if let Some(o) = store.instance(other).await? {
            if o.observed_status != ObservedStatus::Terminated {
                marked_live = Some(o.id);
            }
        }
    }
    Ok(Ok((found, marked_live)))
}

/// What the store records of a server attached to an instance.
pub fn attached(
    account: &str,
    server: &Server,
    status: ObservedStatus,
    revision: &str,
) -> Attached {
    Attached {
        account: account.to_owned(),
        server_id: server.id.clone(),
        status,
        ipv4: server.ipv4.clone(),
        ipv6: server.ipv6.clone(),
        product_revision: revision.to_owned(),
        details: json!({"name": server.name, "plan": server.plan}),
    }
}

/// Adopts server `server_id` of `account` for instance `id`: `Ok(Err(why))` when it is
/// refused (the instance cannot adopt, the server is not there, not on the plan, or another
/// live instance's).
///
/// # Errors
/// When the provider keeps failing or the database cannot be used.
pub async fn adopt_server(
    store: &SqlStore,
    catalog: &Catalog,
    account: &Account,
    id: i64,
    server_id: &str,
    by: &str,
) -> anyhow::Result<Result<Instance, String>> {
    let Some(before) = store.instance(id).await? else {
        return Err(StoreError::InstanceNotFound(id).into());
    };
    if let Err(m) = crate::store::adoptable(&before) {
        return Ok(Err(m));
    }
    let Some(product) = catalog.product(&before.product_id) else {
        return Ok(Err(format!(
            "instance {id}'s product `{}` is not in the catalog: its server's plan cannot be checked",
            before.product_id
        )));
    };
    let (found, marked_live) = match inspect(store, account, server_id).await? {
        Ok(f) => f,
        Err(m) => return Ok(Err(m)),
    };
    let request = AttachRequest {
        account: &account.id,
        server_id,
        product,
        instance: Some(id),
    };
    let status = match attach_check(&request, found.as_ref(), marked_live) {
        Ok(s) => s,
        Err(m) => return Ok(Err(m)),
    };
    let Some(server) = found else {
        return Ok(Err(format!(
            "account `{}` has no server `{server_id}`",
            account.id
        )));
    };
    store.sync_revisions(catalog).await?;
    let attached = attached(&account.id, &server, status, &product.revision.0);
    match store.adopt(id, &attached, by).await {
        Ok(i) => Ok(Ok(i)),
        Err(StoreError::Rejected(m)) => Ok(Err(m)),
        Err(e) => Err(e.into()),
    }
}
