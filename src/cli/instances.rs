//! `provisioner migrate` and `provisioner instances …`: the billing columns from a terminal.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{Format, InstancesCommand, EXIT_INVALID, EXIT_OK};
use crate::catalog;
use crate::secrets::Keyring;
use crate::store::{
    redact_url, ConnectOptions, DesiredStatus, Instance, InstanceFilter, NewInstance,
    ObservedStatus, SqlStore, Store, StoreError, Transition,
};

async fn open(url: &str) -> anyhow::Result<SqlStore> {
    SqlStore::open_existing(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot use database {}", redact_url(url)))
}

pub(super) async fn migrate(url: &str) -> anyhow::Result<ExitCode> {
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
    if applied.is_empty() {
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
fn invalid(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
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
            let instance = store
                .create_instance(&NewInstance {
                    customer_id: customer,
                    order_id: order,
                    product_id: product,
                    location,
                    os_image,
                    hostname,
                    ssh_keys,
                    desired_status: None,
                    suspend_reason: None,
                })
                .await?;
            print_instance(&instance, None, format)?;
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
            let list = store
                .list_instances(&InstanceFilter {
                    observed_status,
                    desired_status,
                    customer_id: customer,
                    product_id: product,
                    provider_account: None,
                    after_id: None,
                    limit,
                })
                .await?;
            print_list(&list, format)?;
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
                        Keyring::prepare(url)?
                            .finish(&store.sealed_key_ids().await?)?
                            .open(sealed, &instance.secret_context())
                            .context("cannot open the stored credentials")?,
                    ),
                    None => None,
                }
            } else {
                None
            };
            print_instance(&instance, secret.as_ref().map(|s| s.expose()), format)?;
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
            println!(
                "instance {}: desired {} (generation {}), observed {}",
                i.id, i.desired_status, i.desired_generation, i.observed_status
            );
            Ok(ExitCode::from(EXIT_OK))
        }
        InstancesCommand::Retry { id } => {
            let i = store.retry(id).await?;
            println!(
                "instance {}: taken up again ({}); the reconciler looks at it now",
                i.id,
                i.pending
                    .as_ref()
                    .map_or("starting over from pending".to_owned(), |_| {
                        "re-observing its server".to_owned()
                    })
            );
            Ok(ExitCode::from(EXIT_OK))
        }
        InstancesCommand::Reboot { id } => {
            let i = store.request_reboot(id).await?;
            println!(
                "instance {}: reboot requested ({} asked, {} done)",
                i.id, i.reboot_requested, i.reboot_handled
            );
            Ok(ExitCode::from(EXIT_OK))
        }
    }
}

/// Checks an order against the catalog, as a person typing it would want.
fn check_order(
    dir: &Path,
    product: &str,
    location: Option<&str>,
    os: Option<&str>,
) -> Result<(), String> {
    let catalog = catalog::load(dir)
        .map_err(|e| format!("{e}\n(use --catalog DIR, or --no-catalog-check to insert anyway)"))?;
    let Some(p) = catalog.product(product) else {
        let known: Vec<&str> = catalog.products.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown product `{product}` in catalog {}; known products: {}",
            dir.display(),
            known.join(", ")
        ));
    };
    if !p.active {
        return Err(format!(
            "product `{product}` is not active: it is not sold any more"
        ));
    }
    if let Some(l) = location {
        if !p.locations.iter().any(|x| x == l) {
            return Err(format!(
                "product `{product}` is not sold in `{l}`; its locations: {}",
                p.locations.join(", ")
            ));
        }
    }
    if let Some(o) = os {
        if p.os_image(o).is_none() {
            return Err(format!(
                "product `{product}` does not offer `{o}`; its OS images: {}",
                p.os_names().join(", ")
            ));
        }
    }
    Ok(())
}

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

/// `text` safe for a terminal: control characters written by billing (escape sequences that
/// would recolour, move the cursor or retitle the terminal) are shown escaped, not obeyed.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\n') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() && c != '\n' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

fn instance_json(i: &Instance, secret: Option<&str>) -> Value {
    json!({
        "id": i.id,
        "customer_id": i.customer_id,
        "order_id": i.order_id,
        "product_id": i.product_id,
        "location": i.location,
        "os_image": i.os_image,
        "hostname": i.hostname,
        "desired_status": i.desired_status.as_str(),
        "suspend_reason": i.suspend_reason,
        "reboot_requested": i.reboot_requested,
        "desired_generation": i.desired_generation,
        "observed_status": i.observed_status.as_str(),
        "observed_generation": i.observed_generation,
        "status_reason": i.status_reason,
        "converged": i.is_converged(),
        "provider_account": i.provider_account,
        "provider_server_id": i.provider_server_id,
        "ipv4": i.ipv4,
        "ipv6": i.ipv6,
        "product_revision": i.product_revision,
        "reboot_handled": i.reboot_handled,
        "credentials": i.credentials.as_ref().map(|c| json!({"sealed_with_key": c.key_id})),
        "root_password": secret,
        "last_error": i.last_error,
        "attempts": i.attempts,
        "pending_action": i.pending.as_ref().map(|p| p.action.as_str()),
        "pending_action_id": i.pending.as_ref().and_then(|p| p.action_id.as_deref()),
        "pending_hard": i.pending.as_ref().map(|p| p.hard),
        "next_check_at": i.next_check_at,
        "lease_owner": i.lease_owner,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    })
}

fn print_instance(i: &Instance, secret: Option<&str>, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut out, &instance_json(i, secret))?;
        writeln!(out)?;
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "instance {}  customer {}  order {}",
        i.id,
        i.customer_id,
        or_dash(i.order_id.as_deref())
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
        "desired     {}{} (generation {})",
        i.desired_status,
        i.suspend_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        i.desired_generation
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
    let _ = writeln!(
        s,
        "reboots     {} requested, {} done",
        i.reboot_requested, i.reboot_handled
    );
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
        ts(i.pending_since)
    );
    let _ = writeln!(
        s,
        "next check  {}  lease {}",
        ts(i.next_check_at),
        or_dash(i.lease_owner.as_deref())
    );
    let _ = writeln!(
        s,
        "created     {}  updated {}",
        ts(Some(i.created_at)),
        ts(Some(i.updated_at))
    );
    out.write_all(printable(&s).as_bytes())?;
    Ok(())
}

fn print_list(list: &[Instance], format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let values: Vec<Value> = list.iter().map(|i| instance_json(i, None)).collect();
        serde_json::to_writer_pretty(&mut out, &values)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>8}  {:<16} {:<20} {:<10} {:<13} {:<16} LAST ERROR",
        "ID", "CUSTOMER", "PRODUCT", "DESIRED", "OBSERVED", "IPV4"
    );
    for i in list {
        let _ = writeln!(
            s,
            "{:>8}  {:<16} {:<20} {:<10} {:<13} {:<16} {}",
            i.id,
            i.customer_id,
            i.product_id,
            i.desired_status.as_str(),
            i.observed_status.as_str(),
            or_dash(i.ipv4.as_deref()),
            or_dash(i.last_error.as_deref())
        );
    }
    let _ = writeln!(s, "{} instance(s)", list.len());
    out.write_all(printable(&s).as_bytes())?;
    Ok(())
}

fn print_history(id: i64, history: &[Transition], format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut out, history)?;
        writeln!(out)?;
        return Ok(());
    }
    let mut s = String::new();
    let _ = writeln!(s, "instance {id}: {} transition(s)", history.len());
    for t in history {
        let details = if t.details.as_object().is_some_and(|m| m.is_empty()) {
            String::new()
        } else {
            format!(" {}", t.details)
        };
        let _ = writeln!(
            s,
            "{}  {:<12} -> {:<12} {:<10} {:<15} {:<10}{}{}",
            ts(Some(t.at)),
            or_dash(t.from_status.as_deref()),
            or_dash(t.to_status.as_deref()),
            t.action,
            t.cause,
            t.outcome,
            t.error
                .as_deref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default(),
            details
        );
    }
    out.write_all(printable(&s).as_bytes())?;
    Ok(())
}
