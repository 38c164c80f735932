//! `provisioner migrate` and `provisioner instances …`: the billing columns from a terminal.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::output;
use super::{Format, InstancesCommand, EXIT_INVALID, EXIT_OK};
use crate::api::instances::{actor, InstanceView, TransitionView};
use crate::catalog;
use crate::secrets::Keyring;
use crate::store::{
    redact_url, ConnectOptions, DesiredStatus, Hold, Instance, InstanceFilter, NewInstance,
    ObservedStatus, SqlStore, Store, StoreError, Transition,
};

async fn open(url: &str) -> anyhow::Result<SqlStore> {
    SqlStore::open_existing(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot use database {}", redact_url(url)))
}

pub(super) async fn migrate(url: &str, format: Format) -> anyhow::Result<ExitCode> {
    // The key's configuration is checked before the database is touched; a missing key file
    // is generated only for a database that holds no secret yet.
    let key = Keyring::prepare(url)?;
    let store = SqlStore::connect(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot use database {}", redact_url(url)))?;
    let keyring = key.finish(&store.sealed_key_ids().await?);
    let applied = match keyring {
        Ok(_) => store.migrate().await,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    }?;
    if format == Format::Json {
        output::json(&json!({"database": redact_url(url), "applied": applied}))?;
    } else if applied.is_empty() {
        println!("{}: schema up to date", redact_url(url));
    } else {
        let versions: Vec<String> = applied.iter().map(ToString::to_string).collect();
        println!(
            "{}: applied migration(s) {}",
            redact_url(url),
            versions.join(", ")
        );
    }
    store.close().await;
    Ok(ExitCode::from(EXIT_OK))
}

/// A verdict on the user's input (exit 1), as opposed to a failure (exit 2).
pub(super) fn invalid(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(EXIT_INVALID))
}

fn parse_vocab<T: FromStr + Copy>(
    value: &str,
    what: &str,
    all: &[T],
    as_str: fn(T) -> &'static str,
) -> Result<T, String> {
    value.parse().map_err(|_| {
        let names: Vec<&str> = all.iter().map(|v| as_str(*v)).collect();
        format!(
            "unknown {what} `{value}`; expected one of: {}",
            names.join(", ")
        )
    })
}

pub(super) async fn run(url: &str, command: InstancesCommand) -> anyhow::Result<ExitCode> {
    let store = open(url).await?;
    let result = dispatch(url, &store, command).await;
    store.close().await;
    match result {
        Err(e) => match e.downcast_ref::<StoreError>() {
            Some(
                StoreError::InstanceNotFound(_)
                | StoreError::Rejected(_)
                | StoreError::TaskNotFound(_)
                | StoreError::TaskNotOpen { .. },
            ) => invalid(e),
            _ => Err(e),
        },
        ok => ok,
    }
}

async fn dispatch(
    url: &str,
    store: &SqlStore,
    command: InstancesCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        InstancesCommand::Create {
            customer,
            product,
            location,
            os_image,
            hostname,
            order,
            billing_ref,
            ssh_keys_file,
            catalog,
            no_catalog_check,
            format,
        } => {
            if !no_catalog_check {
                if let Err(message) =
                    check_order(&catalog, &product, location.as_deref(), os_image.as_deref())
                {
                    return invalid(message);
                }
            }
            let ssh_keys = match ssh_keys_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            if let Some(r) = &billing_ref {
                if let Some(existing) = store.instance_by_billing_ref(r).await? {
                    return invalid(format!(
                        "billing_ref `{}` is already instance {} (customer {}, product {}, {}): an order is inserted once",
                        output::printable(r),
                        existing.id,
                        output::printable(&existing.customer_id),
                        output::printable(&existing.product_id),
                        existing.observed_status
                    ));
                }
            }
            let instance = store
                .create_instance(&NewInstance {
                    customer_id: customer,
                    order_id: order,
                    billing_ref,
                    product_id: product,
                    location,
                    os_image,
                    hostname,
                    ssh_keys,
                    desired_status: None,
                    suspend_reason: None,
                })
                .await?;
            print_instance(&instance, &[], None, format)?;
            Ok(ExitCode::from(EXIT_OK))
        }
        InstancesCommand::List {
            status,
            desired,
            customer,
            product,
            limit,
            format,
        } => {
            let parsed = status
                .as_deref()
                .map(|s| {
                    parse_vocab(
                        s,
                        "observed status",
                        ObservedStatus::ALL,
                        ObservedStatus::as_str,
                    )
                })
                .transpose()
                .and_then(|observed| {
                    let desired = desired
                        .as_deref()
                        .map(|s| {
                            parse_vocab(
                                s,
                                "desired status",
                                DesiredStatus::ALL,
                                DesiredStatus::as_str,
                            )
                        })
                        .transpose()?;
                    Ok((observed, desired))
                });
            let (observed_status, desired_status) = match parsed {
                Ok(pair) => pair,
                Err(m) => return invalid(m),
            };
            let filter = InstanceFilter {
                observed_status,
                desired_status,
                customer_id: customer,
                product_id: product,
                provider_account: None,
                after_id: None,
                limit,
                search: None,
            };
            let list = store.list_instances(&filter).await?;
            let total = if limit.is_some() {
                store.count_instances(&filter).await?
            } else {
                i64::try_from(list.len()).unwrap_or(i64::MAX)
            };
            print_list(&list, total, store.now().await?, format)?;
            Ok(ExitCode::from(EXIT_OK))
        }
        InstancesCommand::Show {
            id,
            show_secrets,
            format,
        } => {
            let Some(instance) = store.instance(id).await? else {
                return invalid(StoreError::InstanceNotFound(id));
            };
            let secret = if show_secrets {
                match &instance.credentials {
                    Some(sealed) => Some(
                        super::keyring(url, store)
                            .await?
                            .open(sealed, &instance.secret_context())
                            .context("cannot open the stored credentials")?,
                    ),
                    None => None,
                }
            } else {
                None
            };
            let holds = store.holds(id).await?;
            print_instance(
                &instance,
                &holds,
                secret.as_ref().map(|s| s.expose()),
                format,
            )?;
            Ok(ExitCode::from(EXIT_OK))
        }
        InstancesCommand::History { id, format } => {
            let history = store.history(id).await?;
            print_history(id, &history, format)?;
            Ok(ExitCode::from(EXIT_OK))
        }
        InstancesCommand::Set {
            id,
            desired,
            reason,
            format,
        } => {
            let status = match parse_vocab(
                &desired,
                "desired status",
                DesiredStatus::ALL,
                DesiredStatus::as_str,
            ) {
                Ok(s) => s,
                Err(m) => return invalid(m),
            };
            let i = store.set_desired(id, status, reason.as_deref()).await?;
            changed(
                &i,
                format,
                &format!(
                    "instance {}: desired {} (generation {}), observed {}\n",
                    i.id, i.desired_status, i.desired_generation, i.observed_status
                ),
            )
        }
        InstancesCommand::Retry { id, by, format } => {
            let by = super::operator(by);
            let i = store.retry(id, &by).await?;
            let what = if i.pending.is_some() {
                "re-observing its server"
            } else {
                "starting over from pending"
            };
            changed(
                &i,
                format,
                &format!(
                    "instance {}: taken up again by {by} ({what}); the reconciler looks at it now\n",
                    i.id
                ),
            )
        }
        InstancesCommand::Hold {
            id,
            kind,
            reason,
            by,
            format,
        } => {
            let by = super::operator(by);
            store.place_hold(id, &kind, reason.as_deref(), &by).await?;
            let i = store
                .instance(id)
                .await?
                .ok_or(StoreError::InstanceNotFound(id))?;
            changed(
                &i,
                format,
                &format!(
                    "instance {id}: {kind} hold placed by {by}; holds now: {}; the server stays off until every hold is lifted\n",
                    i.holds.join(", ")
                ),
            )
        }
        InstancesCommand::Release { id, kind, format } => {
            if !store.release_hold(id, &kind).await? {
                return invalid(format!("instance {id} has no {kind} hold"));
            }
            let i = store
                .instance(id)
                .await?
                .ok_or(StoreError::InstanceNotFound(id))?;
            let what = if i.holds.is_empty() {
                format!("no hold left; billing wants it {}", i.desired_status)
            } else {
                format!("still held: {}", i.holds.join(", "))
            };
            changed(
                &i,
                format,
                &format!("instance {id}: {kind} hold lifted; {what}\n"),
            )
        }
        InstancesCommand::Recreate { id, by, format } => {
            let by = super::operator(by);
            let i = store.recreate(id, &by).await?;
            changed(
                &i,
                format,
                &format!("instance {id}: recreated by {by}; a fresh server is created now\n"),
            )
        }
        InstancesCommand::Forget { id, by, format } => {
            let by = super::operator(by);
            let i = store.forget(id, &by).await?;
            changed(
                &i,
                format,
                &format!(
                    "instance {id}: forgotten by {by}; terminated without any provider call\n"
                ),
            )
        }
        InstancesCommand::ChangeProduct {
            id,
            product,
            catalog,
            no_catalog_check,
            format,
        } => {
            let Some(before) = store.instance(id).await? else {
                return Err(StoreError::InstanceNotFound(id).into());
            };
            if !no_catalog_check {
                let location = before.location.as_deref();
                if let Err(m) =
                    check_order(&catalog, &product, location, before.os_image.as_deref())
                {
                    return invalid(m);
                }
            }
            let i = store.change_product(id, &product).await?;
            changed(
                &i,
                format,
                &format!(
                    "instance {id}: product {} -> {} (generation {}); the reconciler changes the server's plan\n",
                    before.product_id, i.product_id, i.desired_generation
                ),
            )
        }
        InstancesCommand::Reinstall {
            id,
            os,
            catalog,
            no_catalog_check,
            format,
        } => {
            let Some(before) = store.instance(id).await? else {
                return Err(StoreError::InstanceNotFound(id).into());
            };
            if !no_catalog_check {
                let os = os.as_deref().or(before.os_image.as_deref());
                if let Err(m) = check_order(&catalog, &before.product_id, None, os) {
                    return invalid(m);
                }
            }
            let i = store.request_reinstall(id, os.as_deref()).await?;
            changed(
                &i,
                format,
                &format!(
                    "instance {}: reinstall of {} requested ({} asked, {} done)\n",
                    i.id,
                    i.os_image.as_deref().unwrap_or("the product's first OS"),
                    i.reinstall_requested,
                    i.reinstall_handled
                ),
            )
        }
        InstancesCommand::Adopt {
            id,
            server_id,
            account,
            catalog,
            by,
            format,
        } => {
            let args = super::attach::Adopt {
                id,
                server_id,
                account,
                catalog,
                by: super::operator(by),
                format,
            };
            super::attach::adopt(url, store, args).await
        }
        InstancesCommand::Import {
            account,
            server_id,
            customer,
            product,
            billing_ref,
            order,
            location,
            os_image,
            hostname,
            desired,
            observe_only,
            catalog,
            by,
            format,
        } => {
            let desired_status = match desired.parse() {
                Ok(d @ (DesiredStatus::Active | DesiredStatus::Suspended)) => d,
                _ => {
                    return invalid(format!(
                        "--desired `{}`: an import is active or suspended",
                        output::printable(&desired)
                    ))
                }
            };
            let args = super::attach::Import {
                account,
                server_id,
                order: NewInstance {
                    customer_id: customer,
                    order_id: order,
                    billing_ref,
                    product_id: product,
                    location,
                    os_image,
                    hostname,
                    ssh_keys: None,
                    desired_status: Some(desired_status),
                    suspend_reason: None,
                },
                observe_only,
                catalog,
                by: super::operator(by),
                format,
            };
            super::attach::import(url, store, args).await
        }
        InstancesCommand::Manage { id, by, format } => {
            let by = super::operator(by);
            super::attach::manage(store, id, &by, format).await
        }
        InstancesCommand::Reboot { id, format } => {
            let i = store.request_reboot(id).await?;
            changed(
                &i,
                format,
                &format!(
                    "instance {}: reboot requested ({} asked, {} done)\n",
                    i.id, i.reboot_requested, i.reboot_handled
                ),
            )
        }
    }
}

/// Checks an order against the catalog in `dir`, as a person typing it would want.
fn check_order(
    dir: &Path,
    product: &str,
    location: Option<&str>,
    os: Option<&str>,
) -> Result<(), String> {
    let catalog = catalog::load(dir)
        .map_err(|e| format!("{e}\n(use --catalog DIR, or --no-catalog-check to insert anyway)"))?;
    catalog
        .check_order(product, location, os)
        .map(drop)
        .map_err(|e| match e {
            catalog::OrderRefusal::UnknownProduct(m) => format!("{m} (catalog {})", dir.display()),
            other => other.to_string(),
        })
}

/// The instance after a change: a line for people, or the instance as JSON.
pub(super) fn changed(i: &Instance, format: Format, line: &str) -> anyhow::Result<ExitCode> {
    match format {
        Format::Json => output::json(&instance_json(i, None))?,
        Format::Text => output::text(line)?,
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

/// An instance as JSON, the same document in every command.
/// An instance as JSON: the API's view, and its root password when `--show-secrets` asked.
pub(super) fn instance_json(i: &Instance, secret: Option<&str>) -> Value {
    let mut v = serde_json::to_value(InstanceView::from(i)).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("root_password".into(), json!(secret));
    }
    v
}

fn print_instance(
    i: &Instance,
    holds: &[Hold],
    secret: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    if format == Format::Json {
        let mut v = instance_json(i, secret);
        v["hold_details"] = holds
            .iter()
            .map(|h| {
                json!({"kind": h.kind, "reason": h.reason, "placed_by": h.placed_by,
                       "placed_at": output::ts(h.placed_at)})
            })
            .collect();
        output::json(&v)?;
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "instance {}  customer {}  order {}  billing ref {}",
        i.id,
        i.customer_id,
        or_dash(i.order_id.as_deref()),
        or_dash(i.billing_ref.as_deref())
    );
    let _ = writeln!(
        s,
        "product     {} (revision {})  location {}  os {}  hostname {}",
        i.product_id,
        or_dash(i.product_revision.as_deref()),
        or_dash(i.location.as_deref()),
        or_dash(i.os_image.as_deref()),
        or_dash(i.hostname.as_deref())
    );
    let converged = if i.is_converged() {
        "converged"
    } else {
        "not converged"
    };
    let _ = writeln!(
        s,
        "desired     {}{} (generation {}, changed {})",
        i.desired_status,
        i.suspend_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        i.desired_generation,
        output::ts(i.desired_changed_at)
    );
    let _ = writeln!(
        s,
        "observed    {}{} (generation {}), {converged}",
        i.observed_status,
        i.status_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        i.observed_generation
    );
    for h in holds {
        let _ = writeln!(
            s,
            "hold        {} by {} since {}{}",
            h.kind,
            h.placed_by,
            output::ts(h.placed_at),
            h.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        s,
        "reboots     {} requested, {} done",
        i.reboot_requested, i.reboot_handled
    );
    let _ = writeln!(
        s,
        "reinstalls  {} requested, {} done",
        i.reinstall_requested, i.reinstall_handled
    );
    if let Some(applied) = i
        .applied_product_id
        .as_deref()
        .filter(|a| *a != i.product_id)
    {
        let _ = writeln!(
            s,
            "plan        server on `{applied}`, billing wants `{}`",
            i.product_id
        );
    }
    if i.observe_only {
        let _ = writeln!(
            s,
            "managed     no: observe-only (`provisioner instances manage {}`)",
            i.id
        );
    }
    if i.claim_pending {
        let _ = writeln!(
            s,
            "mark        not yet: the server was attached by an admin and is to be marked as ours"
        );
    }
    let _ = writeln!(
        s,
        "provider    {} server {}",
        or_dash(i.provider_account.as_deref()),
        or_dash(i.provider_server_id.as_deref())
    );
    let _ = writeln!(
        s,
        "addresses   {} {}",
        or_dash(i.ipv4.as_deref()),
        or_dash(i.ipv6.as_deref())
    );
    let credentials = match (&i.credentials, secret) {
        (None, _) => "-".to_owned(),
        (Some(_), Some(p)) => format!("root password {p}"),
        (Some(c), None) => format!("sealed with key {} (--show-secrets to print)", c.key_id),
    };
    let _ = writeln!(s, "credentials {credentials}");
    let _ = writeln!(
        s,
        "last error  {} (attempts {})",
        or_dash(i.last_error.as_deref()),
        i.attempts
    );
    let _ = writeln!(
        s,
        "in flight   {} since {}",
        i.pending.as_ref().map_or("-".to_owned(), |p| {
            let mut s = p.action.as_str().to_owned();
            if let Some(id) = &p.action_id {
                s.push_str(&format!(" (provider action {id})"));
            }
            if p.hard {
                s.push_str(", hard fallback sent");
            }
            s
        }),
        output::ts_text(i.pending_since)
    );
    let _ = writeln!(
        s,
        "next check  {}  lease {}",
        output::ts_text(i.next_check_at),
        or_dash(i.lease_owner.as_deref())
    );
    let _ = writeln!(
        s,
        "created     {}  updated {}",
        output::ts(i.created_at),
        output::ts(i.updated_at)
    );
    output::text(&s)?;
    Ok(())
}

/// Why an instance is where it is, in one cell: the status reason, else the last error.
fn reason(i: &Instance) -> String {
    i.status_reason
        .as_deref()
        .or(i.last_error.as_deref())
        .unwrap_or("-")
        .to_owned()
}

fn print_list(
    list: &[Instance],
    total: i64,
    now: DateTime<Utc>,
    format: Format,
) -> anyhow::Result<()> {
    let shown = i64::try_from(list.len()).unwrap_or(i64::MAX);
    let more = (total - shown).max(0);
    if format == Format::Json {
        let values: Vec<Value> = list.iter().map(|i| instance_json(i, None)).collect();
        output::json(&Value::Array(values))?;
        if more > 0 {
            eprintln!("note: {shown} of {total} instance(s) shown, {more} more past --limit");
        }
        return Ok(());
    }
    let mut t = output::Table::new(&[
        ">ID", "CUSTOMER", "PRODUCT", "DESIRED", "OBSERVED", "IPV4", ">AGE", "REASON",
    ]);
    for i in list {
        t.row(vec![
            i.id.to_string(),
            i.customer_id.clone(),
            i.product_id.clone(),
            i.desired_status.as_str().to_owned(),
            i.observed_status.as_str().to_owned(),
            or_dash(i.ipv4.as_deref()).to_owned(),
            output::age(i.created_at, now),
            reason(i),
        ]);
    }
    let mut s = t.render();
    if more > 0 {
        let _ = writeln!(
            s,
            "{shown} of {total} instance(s) shown, {more} more past --limit"
        );
    } else {
        let _ = writeln!(s, "{shown} instance(s)");
    }
    output::text(&s)?;
    Ok(())
}

fn transition_json(t: &Transition) -> Value {
    serde_json::to_value(TransitionView::from(t)).unwrap_or(Value::Null)
}

fn print_history(id: i64, history: &[Transition], format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        let values: Vec<Value> = history.iter().map(transition_json).collect();
        output::json(&Value::Array(values))?;
        return Ok(());
    }
    let mut t = output::Table::new(&[
        "AT", "FROM", "TO", "ACTION", "CAUSE", "OUTCOME", "ACTOR", "DETAILS",
    ]);
    for tr in history {
        let mut details = String::new();
        if let Some(e) = &tr.error {
            details.push_str(&format!("error: {e}"));
        }
        let shown: serde_json::Map<String, Value> = tr
            .details
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        !["by", "reason", "desired", "completed_by"].contains(&k.as_str())
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if !shown.is_empty() {
            if !details.is_empty() {
                details.push(' ');
            }
            details.push_str(&Value::Object(shown).to_string());
        }
        t.row(vec![
            output::ts(tr.at),
            or_dash(tr.from_status.as_deref()).to_owned(),
            or_dash(tr.to_status.as_deref()).to_owned(),
            tr.action.clone(),
            tr.cause.clone(),
            tr.outcome.clone(),
            actor(tr),
            if details.is_empty() {
                "-".to_owned()
            } else {
                details
            },
        ]);
    }
    let mut s = format!("instance {id}: {} transition(s)\n", history.len());
    s.push_str(&t.render());
    output::text(&s)?;
    Ok(())
}
