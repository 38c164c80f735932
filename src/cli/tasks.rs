//! `provisioner tasks list|complete`: the manual module's inbox.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Map, Value};

use super::{Format, TasksCommand, EXIT_INVALID, EXIT_OK};
use crate::secrets::Keyring;
use crate::secrets::SecretString;
use crate::store::{ConnectOptions, SqlStore, Store, StoreError, TaskCompletion, TaskFilter};

pub(super) async fn run(url: &str, command: TasksCommand) -> anyhow::Result<ExitCode> {
    let store = SqlStore::open_existing(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot use database {}", crate::store::redact_url(url)))?;
    let result = dispatch(url, &store, command).await;
    store.close().await;
    result
}

async fn dispatch(url: &str, store: &SqlStore, command: TasksCommand) -> anyhow::Result<ExitCode> {
    match command {
        TasksCommand::List { open, format } => {
            let tasks = store
                .tasks(&TaskFilter {
                    open_only: open,
                    instance_id: None,
                })
                .await?;
            let mut out = std::io::stdout().lock();
            if format == Format::Json {
                let values: Vec<Value> = tasks
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.id, "instance_id": t.instance_id, "kind": t.kind.as_str(),
                            "state": t.state.as_str(), "created_at": t.created_at,
                            "completed_at": t.completed_at, "completed_by": t.completed_by,
                            "details": t.details, "has_password": t.secret.is_some(),
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut out, &values)?;
                writeln!(out)?;
                return Ok(ExitCode::from(EXIT_OK));
            }
            writeln!(
                out,
                "{:>6}  {:>8}  {:<10} {:<9} {:<20} DETAILS",
                "TASK", "INSTANCE", "KIND", "STATE", "OPENED"
            )?;
            for t in &tasks {
                writeln!(
                    out,
                    "{:>6}  {:>8}  {:<10} {:<9} {:<20} {}",
                    t.id,
                    t.instance_id,
                    t.kind.as_str(),
                    t.state.as_str(),
                    t.created_at.format("%Y-%m-%d %H:%M:%S"),
                    t.details
                )?;
            }
            writeln!(out, "{} task(s)", tasks.len())?;
            Ok(ExitCode::from(EXIT_OK))
        }
        TasksCommand::Complete {
            id,
            ip,
            ipv6,
            password,
            password_file,
            note,
            by,
        } => {
            let Some(task) = store.task(id).await? else {
                eprintln!("error: task {id} does not exist");
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let password = match (password, password_file) {
                (Some(p), _) => Some(SecretString::new(p)),
                (None, Some(path)) => {
                    let text = if path.as_os_str() == "-" {
                        let mut line = String::new();
                        std::io::stdin()
                            .read_line(&mut line)
                            .context("cannot read the password from standard input")?;
                        line
                    } else {
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?
                    };
                    Some(SecretString::new(
                        text.lines().next().unwrap_or("").to_owned(),
                    ))
                }
                (None, None) => None,
            };
            let secret = match &password {
                Some(p) => Some(
                    Keyring::prepare(url)?
                        .finish(&store.sealed_key_ids().await?)?
                        .seal(p, &task.secret_context()),
                ),
                None => None,
            };
            let mut details = Map::new();
            for (key, value) in [("ip", ip), ("ipv6", ipv6), ("note", note)] {
                if let Some(v) = value {
                    details.insert(key.to_owned(), Value::String(v));
                }
            }
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "admin".into());
            match store
                .complete_task(
                    id,
                    &TaskCompletion {
                        by,
                        details: Value::Object(details),
                        secret,
                    },
                )
                .await
            {
                Ok(t) => {
                    println!(
                        "task {} ({} of instance {}) done; the reconciler picks it up now",
                        t.id,
                        t.kind.as_str(),
                        t.instance_id
                    );
                    Ok(ExitCode::from(EXIT_OK))
                }
                Err(e @ (StoreError::TaskNotOpen { .. } | StoreError::TaskNotFound(_))) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(EXIT_INVALID))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
