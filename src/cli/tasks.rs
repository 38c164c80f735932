//! `provisioner tasks list|complete`: the manual module's inbox.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value};

use super::output;
use super::{Format, TasksCommand, EXIT_INVALID, EXIT_OK};
use crate::secrets::SecretString;
use crate::store::{
    completion_addresses, ConnectOptions, SqlStore, Store, StoreError, Task, TaskCompletion,
    TaskFilter, TaskKind, TaskState,
};

pub(super) async fn run(url: &str, command: TasksCommand) -> anyhow::Result<ExitCode> {
    let store = SqlStore::open_existing(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot use database {}", crate::store::redact_url(url)))?;
    let result = dispatch(url, &store, command).await;
    store.close().await;
    result
}

/// A task as JSON, the same document in every command and in the API.
fn task_json(t: &Task) -> Value {
    serde_json::to_value(crate::api::tasks::TaskView::from(t)).unwrap_or(Value::Null)
}

/// What an admin typed for a completion, checked (see [`completion_addresses`]).
fn check_completion(
    kind: TaskKind,
    ip: Option<&str>,
    ipv6: Option<&str>,
) -> Result<(Option<String>, Option<String>), String> {
    completion_addresses(kind, ip, ipv6, ["--ip", "--ipv6"])
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
            if format == Format::Json {
                output::json(&Value::Array(tasks.iter().map(task_json).collect()))?;
                return Ok(ExitCode::from(EXIT_OK));
            }
            let mut table =
                output::Table::new(&[">TASK", ">INSTANCE", "KIND", "STATE", "OPENED", "DETAILS"]);
            for t in &tasks {
                table.row(vec![
                    t.id.to_string(),
                    t.instance_id.to_string(),
                    t.kind.as_str().to_owned(),
                    t.state.as_str().to_owned(),
                    output::ts(t.created_at),
                    t.details.to_string(),
                ]);
            }
            let mut s = table.render();
            s.push_str(&format!("{} task(s)\n", tasks.len()));
            output::text(&s)?;
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
            format,
        } => {
            let Some(task) = store.task(id).await? else {
                super::report_invalid(&format!("task {id} does not exist"));
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            if task.state != TaskState::Open {
                super::report_invalid(&format!("task {id} is {}, not open", task.state.as_str()));
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            let (ip, ipv6) = match check_completion(task.kind, ip.as_deref(), ipv6.as_deref()) {
                Ok(pair) => pair,
                Err(message) => {
                    super::report_invalid(&format!(
                        "task {id} ({} of instance {}): {message}",
                        task.kind.as_str(),
                        task.instance_id
                    ));
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
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
                    super::keyring(url, store)
                        .await?
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
            let by = super::operator(by);
            details.insert("completed_by".to_owned(), Value::String(by.clone()));
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
                    if format == Format::Json {
                        output::json(&task_json(&t))?;
                    } else {
                        output::text(&format!(
                            "task {} ({} of instance {}) done; the reconciler picks it up now\n",
                            t.id,
                            t.kind.as_str(),
                            t.instance_id
                        ))?;
                    }
                    Ok(ExitCode::from(EXIT_OK))
                }
                Err(e @ (StoreError::TaskNotOpen { .. } | StoreError::TaskNotFound(_))) => {
                    super::report_invalid(&e);
                    Ok(ExitCode::from(EXIT_INVALID))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_checked() {
        type Row<'a> = (
            TaskKind,
            Option<&'a str>,
            Option<&'a str>,
            Result<(Option<&'a str>, Option<&'a str>), &'a str>,
        );
        let table: &[Row] = &[
            (
                TaskKind::Provision,
                Some("192.0.2.10"),
                None,
                Ok((Some("192.0.2.10"), None)),
            ),
            (
                TaskKind::Provision,
                None,
                Some("2001:DB8::10"),
                Ok((None, Some("2001:db8::10"))),
            ),
            (
                TaskKind::Provision,
                None,
                None,
                Err("needs the server's address"),
            ),
            (
                TaskKind::Provision,
                Some("192.0.2.300"),
                None,
                Err("`192.0.2.300` is not an IPv4 address"),
            ),
            (
                TaskKind::Provision,
                Some("2001:db8::1"),
                None,
                Err("is not an IPv4 address"),
            ),
            (
                TaskKind::Provision,
                Some("10.0.0.1"),
                Some("nope"),
                Err("--ipv6 `nope` is not an IPv6 address"),
            ),
            (TaskKind::Reboot, None, None, Ok((None, None))),
        ];
        for (kind, ip, ipv6, want) in table {
            let got = check_completion(*kind, *ip, *ipv6);
            match (got, want) {
                (Ok((a, b)), Ok((wa, wb))) => {
                    assert_eq!((a.as_deref(), b.as_deref()), (*wa, *wb), "{ip:?} {ipv6:?}");
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{e}"),
                (got, want) => panic!("{ip:?} {ipv6:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
