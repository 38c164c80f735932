//! `provisioner instances import`, `instances adopt`, `instances manage` and `provisioner
//! orphans`: servers that exist at a provider, attached to instances by an admin.
//!
//! The server is looked at once through the account's module (read only: the admin gets the
//! verdict at once); the reconciler then marks it as ours at the provider, within the
//! account's budget, unless the instance is observe-only.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;

use super::instances::{changed, invalid};
use super::{output, Format, EXIT_OK};
use crate::catalog::{self, Catalog};
use crate::provider::account::{build, Account};
use crate::provider::Server;
use crate::reconcile::adopt::{adopt_server, attached, inspect};
use crate::reconcile::attach::{attach_check, is_orphan, AttachRequest};
use crate::store::{NewInstance, SqlStore, Store, StoreError};

/// `instances import`'s arguments.
#[derive(Debug)]
pub(super) struct Import {
    pub account: String,
    pub server_id: String,
    pub order: NewInstance,
    pub observe_only: bool,
    pub catalog: std::path::PathBuf,
    pub by: String,
    pub format: Format,
}

/// The catalog, or the verdict on it.
fn load(dir: &Path) -> Result<Catalog, String> {
    catalog::load(dir).map_err(|e| format!("{e}\n(use --catalog DIR)"))
}

/// The account's module, as the daemon would drive it.
async fn module(
    url: &str,
    store: &SqlStore,
    catalog: &Catalog,
    id: &str,
) -> Result<Account, String> {
    let Some(a) = catalog.account(id) else {
        let known: Vec<&str> = catalog.accounts.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown account `{}`; the catalog's accounts: {}",
            output::printable(id),
            known.join(", ")
        ));
    };
    let keyring = super::keyring(url, store)
        .await
        .map_err(|e| e.to_string())?;
    build(a, store, &keyring)
}

/// `instances import`.
pub(super) async fn import(url: &str, store: &SqlStore, args: Import) -> anyhow::Result<ExitCode> {
    let catalog = match load(&args.catalog) {
        Ok(c) => c,
        Err(m) => return invalid(m),
    };
    let order = &args.order;
    let Some(product) = catalog.product(&order.product_id) else {
        return invalid(format!(
            "unknown product `{}` in catalog {}",
            output::printable(&order.product_id),
            args.catalog.display()
        ));
    };
    if let Some(l) = order
        .location
        .as_deref()
        .filter(|l| !product.locations.iter().any(|x| x == l))
    {
        return invalid(format!(
            "product `{}` is not sold in `{}`; its locations: {}",
            product.id,
            output::printable(l),
            product.locations.join(", ")
        ));
    }
    if let Some(o) = order
        .os_image
        .as_deref()
        .filter(|o| product.os_image(o).is_none())
    {
        return invalid(format!(
            "product `{}` does not offer `{}`; its OS images: {}",
            product.id,
            output::printable(o),
            product.os_names().join(", ")
        ));
    }
    if let Some(r) = &order.billing_ref {
        if let Some(existing) = store.instance_by_billing_ref(r).await? {
            return invalid(format!(
                "billing_ref `{}` is already instance {}: an order is inserted once",
                output::printable(r),
                existing.id
            ));
        }
    }
    let account = match module(url, store, &catalog, &args.account).await {
        Ok(a) => a,
        Err(m) => return invalid(m),
    };
    let (found, marked_live) = match inspect(store, &account, &args.server_id).await? {
        Ok(f) => f,
        Err(m) => return invalid(m),
    };
    let request = AttachRequest {
        account: &account.id,
        server_id: &args.server_id,
        product,
        instance: None,
    };
    let status = match attach_check(&request, found.as_ref(), marked_live) {
        Ok(s) => s,
        Err(m) => return invalid(m),
    };
    let Some(server) = found else {
        return invalid(format!(
            "account `{}` has no server `{}`",
            account.id, args.server_id
        ));
    };
    store.sync_revisions(&catalog).await?;
    let attached = attached(&account.id, &server, status, &product.revision.0);
    let i = store
        .import(order, &attached, args.observe_only, &args.by)
        .await?;
    let next = if args.observe_only {
        format!(
            "observe-only: nothing is sent for it until `provisioner instances manage {}`",
            i.id
        )
    } else {
        "the reconciler marks it as ours and manages it from now on".to_owned()
    };
    changed(
        &i,
        args.format,
        &format!(
            "instance {}: server {} of account `{}` imported by {} as {} ({}); {next}\n",
            i.id, attached.server_id, account.id, args.by, product.id, i.observed_status
        ),
    )
}

/// `instances adopt`'s arguments.
#[derive(Debug)]
pub(super) struct Adopt {
    pub id: i64,
    pub server_id: String,
    pub account: Option<String>,
    pub catalog: std::path::PathBuf,
    pub by: String,
    pub format: Format,
}

/// `instances adopt`.
pub(super) async fn adopt(url: &str, store: &SqlStore, args: Adopt) -> anyhow::Result<ExitCode> {
    let Adopt {
        id,
        server_id,
        account,
        catalog: catalog_dir,
        by,
        format,
    } = args;
    let (server_id, catalog_dir) = (server_id.as_str(), catalog_dir.as_path());
    let Some(before) = store.instance(id).await? else {
        return Err(StoreError::InstanceNotFound(id).into());
    };
    // Refused before anything is asked of the provider.
    if let Err(m) = crate::store::adoptable(&before) {
        return invalid(m);
    }
    let catalog = match load(catalog_dir) {
        Ok(c) => c,
        Err(m) => return invalid(m),
    };
    let Some(product) = catalog.product(&before.product_id) else {
        return invalid(format!(
            "instance {id}'s product `{}` is not in catalog {}: its server's plan cannot be checked",
            output::printable(&before.product_id),
            catalog_dir.display()
        ));
    };
    let account_id = account
        .or_else(|| before.provider_account.clone())
        .unwrap_or_else(|| product.provisioning.account.clone());
    let account = match module(url, store, &catalog, &account_id).await {
        Ok(a) => a,
        Err(m) => return invalid(m),
    };
    let i = match adopt_server(store, &catalog, &account, id, server_id, &by).await? {
        Ok(i) => i,
        Err(m) => return invalid(m),
    };
    let attached_id = i.provider_server_id.clone().unwrap_or_default();
    changed(
        &i,
        format,
        &format!(
            "instance {id}: server {} of account `{}` adopted by {by} in place of {} ({}); the reconciler marks it as ours and goes on from there\n",
            attached_id,
            account.id,
            before.provider_server_id.as_deref().unwrap_or("no server"),
            i.observed_status
        ),
    )
}

/// `instances manage`.
pub(super) async fn manage(
    store: &SqlStore,
    id: i64,
    by: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let i = store.manage(id, by).await?;
    changed(
        &i,
        format,
        &format!(
            "instance {id}: managed from now on ({by}); the reconciler marks its server as ours, then acts on it like any other\n"
        ),
    )
}

/// One orphan server, and how to take it on.
struct Orphan {
    account: String,
    server: Server,
    command: String,
}

/// The command that imports `server` of `account`: its product guessed from its plan when
/// exactly one product of the account is sold on it.
fn import_command(catalog: &Catalog, account: &str, server: &Server) -> String {
    let matching: Vec<&str> = catalog
        .products
        .values()
        .filter(|p| p.provisioning.account == account)
        .filter(|p| server.plan.is_some() && p.provisioning.config.plan(&p.id) == server.plan)
        .map(|p| p.id.as_str())
        .collect();
    let product = match matching.as_slice() {
        [one] => *one,
        _ => "PRODUCT",
    };
    format!(
        "provisioner instances import --account {account} --server-id {} --customer CUSTOMER --product {product}",
        output::printable(&server.id)
    )
}

/// `provisioner orphans`: servers carrying our mark that no live instance has, per account,
/// each with the command that imports it.
pub(super) async fn orphans(
    url: &str,
    catalog_dir: &Path,
    only: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let catalog = match load(catalog_dir) {
        Ok(c) => c,
        Err(m) => return invalid(m),
    };
    if let Some(a) = only.filter(|a| catalog.account(a).is_none()) {
        return invalid(format!("unknown account `{}`", output::printable(a)));
    }
    let store = SqlStore::open_existing(url, &crate::store::ConnectOptions::default()).await?;
    let keyring = super::keyring(url, &store).await?;
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for a in catalog
        .accounts
        .values()
        .filter(|a| only.is_none_or(|o| o == a.id))
    {
        let account = match build(a, &store, &Arc::clone(&keyring)) {
            Ok(account) if account.provider.lists_servers() => account,
            Ok(_) => continue,
            Err(reason) => {
                skipped.push(format!("account `{}` not listed: {reason}", a.id));
                continue;
            }
        };
        let servers = match account.provider.list_owned().await {
            Ok(s) => s,
            Err(e) => {
                skipped.push(format!("account `{}` not listed: {e}", a.id));
                continue;
            }
        };
        let holdings = store.holdings(&a.id).await?;
        for s in servers.into_iter().filter(|s| is_orphan(s, &holdings)) {
            let command = import_command(&catalog, &a.id, &s);
            found.push(Orphan {
                account: a.id.clone(),
                server: s,
                command,
            });
        }
    }
    store.close().await;
    for s in &skipped {
        eprintln!("warning: {s}");
    }
    match format {
        Format::Json => output::json(&json!({
            "orphans": found.iter().map(|o| json!({
                "account": o.account,
                "server_id": o.server.id,
                "name": o.server.name,
                "marked_for": o.server.instance_id,
                "state": format!("{:?}", o.server.state).to_lowercase(),
                "plan": o.server.plan,
                "ipv4": o.server.ipv4,
                "import": o.command,
            })).collect::<Vec<_>>(),
            "not_listed": skipped,
        }))?,
        Format::Text if found.is_empty() => output::text("no orphan servers\n")?,
        Format::Text => {
            let mut table =
                output::Table::new(&["ACCOUNT", "SERVER", "NAME", "MARKED FOR", "STATE", "IPV4"]);
            for o in &found {
                table.row(vec![
                    o.account.clone(),
                    output::printable(&o.server.id).into_owned(),
                    output::printable(&o.server.name).into_owned(),
                    o.server
                        .instance_id
                        .map_or_else(|| "-".into(), |i| i.to_string()),
                    format!("{:?}", o.server.state).to_lowercase(),
                    o.server
                        .ipv4
                        .as_deref()
                        .map_or_else(|| "-".into(), |ip| output::printable(ip).into_owned()),
                ]);
            }
            let mut text = table.render();
            text.push_str(
                "\nDelete them at the provider, or take each on (fill in the customer):\n",
            );
            for o in &found {
                text.push_str("  ");
                text.push_str(&o.command);
                text.push('\n');
            }
            output::text(&text)?;
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}
