//! The `manual` module: an admin does the work; the task inbox is the actuator.
//!
//! Every action opens a task (`provisioner tasks list`), logs an admin notification, and is
//! observed through the task: an open task is the action in flight, a completed one its result.
//! The address and root password an admin records when completing the provision task are what
//! the reconciler reports for the server.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use super::{
    Accepted, Call, CreateRequest, Created, ErrorClass, Policy, PowerState, Provider,
    ProviderError, Rebuilt, ResizeRequest, Result, Server,
};
use crate::catalog::{Module, ProductConfig};
use crate::secrets::Keyring;
use crate::store::{
    DesiredStatus, SqlStore, Store, StoreError, Task, TaskFilter, TaskKind, TaskState,
};

/// The manual module of one account.
pub struct ManualProvider {
    account: String,
    store: SqlStore,
    keyring: Arc<Keyring>,
}

impl std::fmt::Debug for ManualProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualProvider")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

fn store_error(e: StoreError) -> ProviderError {
    ProviderError::new(ErrorClass::Transient, format!("task inbox: {e}"))
}

fn server_id(instance_id: i64) -> String {
    format!("manual-{instance_id}")
}

impl ManualProvider {
    /// The manual module of `account`, keeping tasks in `store`; `keyring` opens the passwords
    /// admins record.
    pub fn new(account: &str, store: SqlStore, keyring: Arc<Keyring>) -> ManualProvider {
        ManualProvider {
            account: account.to_owned(),
            store,
            keyring,
        }
    }

    async fn open(&self, call: Call<'_>, kind: TaskKind, details: Value) -> Result<Task> {
        let details = with_facts(call.instance, details);
        let task = self
            .store
            .open_task(call.lease, kind, &details)
            .await
            .map_err(store_error)?;
        tracing::warn!(
            target: "provisioner::admin",
            task = task.id,
            instance = call.instance.id,
            kind = kind.as_str(),
            account = %self.account,
            "admin notification: manual task {} opened: {} instance {} (product {}); complete it with `provisioner tasks complete {}`",
            task.id,
            kind.as_str(),
            call.instance.id,
            call.instance.product_id,
            task.id
        );
        Ok(task)
    }

    async fn accept(&self, call: Call<'_>, kind: TaskKind) -> Result<Accepted> {
        let task = self
            .open(call, kind, json!({ "server": server_id(call.instance.id) }))
            .await?;
        Ok(Accepted {
            action_id: Some(format!("task-{}", task.id)),
            ..Accepted::default()
        })
    }

    /// The server as the tasks describe it: the latest task that was not cancelled decides.
    async fn observe(&self, call: Call<'_>) -> Result<Option<Server>> {
        let tasks = self
            .store
            .tasks(&TaskFilter {
                open_only: false,
                instance_id: Some(call.instance.id),
            })
            .await
            .map_err(store_error)?;
        let live: Vec<&Task> = tasks
            .iter()
            .filter(|t| t.state != TaskState::Cancelled)
            .collect();
        let Some(latest) = live.last() else {
            return Ok(None);
        };
        let open = latest.state == TaskState::Open;
        if open
            && latest.kind == TaskKind::Provision
            && call.instance.desired_status == DesiredStatus::Terminated
        {
            // Billing cancelled the order before the admin built the server: nothing to build,
            // nothing to tear down.
            self.store
                .cancel_task(call.lease, latest.id)
                .await
                .map_err(store_error)?;
            tracing::info!(
                target: "provisioner::admin",
                task = latest.id,
                instance = call.instance.id,
                "manual task {} cancelled: billing terminated instance {} before it was provisioned",
                latest.id,
                call.instance.id
            );
            return Ok(None);
        }
        let state = match (latest.kind, open) {
            (TaskKind::Provision, true) => PowerState::Creating,
            (TaskKind::Suspend, true) => PowerState::Stopping,
            (TaskKind::Unsuspend, true) => PowerState::Starting,
            (TaskKind::Reboot, true) => PowerState::Rebooting,
            (TaskKind::Terminate, true) => PowerState::Deleting,
            (TaskKind::Resize | TaskKind::Reinstall, true) => PowerState::Busy,
            (TaskKind::Suspend, false) => PowerState::Off,
            (TaskKind::Terminate, false) => return Ok(None),
            (
                TaskKind::Provision | TaskKind::Unsuspend | TaskKind::Reboot | TaskKind::Reinstall,
                false,
            ) => PowerState::Running,
            // A change of plan leaves the server as it was: off if it was suspended.
            (TaskKind::Resize, false) => {
                let before = live
                    .iter()
                    .rev()
                    .find(|t| t.kind != TaskKind::Resize && t.state == TaskState::Done);
                match before.map(|t| t.kind) {
                    Some(TaskKind::Suspend) => PowerState::Off,
                    _ => PowerState::Running,
                }
            }
        };
        let done = |kinds: &[TaskKind]| {
            live.iter()
                .rev()
                .find(|t| kinds.contains(&t.kind) && t.state == TaskState::Done)
                .copied()
        };
        let provision = done(&[TaskKind::Provision]);
        // The product the server was built as or last changed to is its plan.
        let plan = done(&[TaskKind::Provision, TaskKind::Resize])
            .and_then(|t| t.details.get("product").and_then(Value::as_str))
            .map(str::to_owned);
        // The password recorded by the latest install, first or again.
        let installed = done(&[TaskKind::Provision, TaskKind::Reinstall]);
        let text = |key: &str| {
            provision.and_then(|t| {
                t.details
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        };
        let root_password = match installed.and_then(|t| t.secret.as_ref().map(|s| (t, s))) {
            Some((task, sealed)) => Some(
                self.keyring
                    .open(sealed, &task.secret_context())
                    .map_err(|e| {
                        ProviderError::new(
                            ErrorClass::Auth,
                            format!("cannot open the password of task {}: {e}", task.id),
                        )
                    })?,
            ),
            None => None,
        };
        Ok(Some(Server {
            id: server_id(call.instance.id),
            instance_id: Some(call.instance.id),
            name: super::server_name(call.instance.id),
            state,
            ipv4: text("ip"),
            ipv6: text("ipv6"),
            root_password,
            plan,
        }))
    }
}

/// A task's details with the facts an admin needs to act without looking elsewhere: whose
/// server, which product, where, which OS, its name and addresses, and why it is suspended.
/// What the task itself says (the provision task's resolved location and OS) wins.
fn with_facts(i: &crate::store::Instance, details: Value) -> Value {
    let mut facts = serde_json::Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v {
            facts.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("customer", Some(&i.customer_id));
    put("order", i.order_id.as_deref());
    put("product", Some(&i.product_id));
    put("location", i.location.as_deref());
    put("os_image", i.os_image.as_deref());
    put("hostname", i.hostname.as_deref());
    put("ipv4", i.ipv4.as_deref());
    put("ipv6", i.ipv6.as_deref());
    if i.desired_status == DesiredStatus::Suspended {
        put("suspend_reason", i.suspend_reason.as_deref());
    }
    if !i.holds.is_empty() {
        facts.insert("holds".to_owned(), i.holds.clone().into());
    }
    if let Value::Object(own) = details {
        facts.extend(own.into_iter().filter(|(_, v)| !v.is_null()));
    }
    Value::Object(facts)
}

impl Provider for ManualProvider {
    fn module(&self) -> Module {
        Module::Manual
    }

    fn lists_servers(&self) -> bool {
        false
    }

    fn policy(&self) -> Policy {
        // Completing a task makes the instance due at once, so the minute-long poll is only
        // a safety net; people take their time: a task is never escalated nor sent again.
        // An order terminated before the admin provisioned it cancels the task.
        Policy {
            withdraws_creates: true,
            ..Policy::default()
        }
    }

    fn get<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Server>>> {
        self.observe(call).boxed()
    }

    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>> {
        async move { Ok(self.observe(call).await?.into_iter().collect()) }.boxed()
    }

    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn inspect<'a>(&'a self, _server_id: &'a str) -> BoxFuture<'a, Result<Option<Server>>> {
        async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                format!(
                    "account `{}` is worked by hand: there is no inventory to import or adopt from; `instances create` opens a provision task, and completing it with the existing server's address takes that server on (for a lost instance, `instances recreate`)",
                    self.account
                ),
            ))
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        call: Call<'a>,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Created>> {
        async move {
            let instructions = match &request.config {
                ProductConfig::Manual { instructions } => instructions.clone(),
                _ => None,
            };
            let task = self
                .open(
                    call,
                    TaskKind::Provision,
                    json!({
                        "server": server_id(request.instance_id),
                        "product": request.product_id,
                        "location": request.location,
                        "os_image": request.os_image,
                        "image": request.image,
                        "hostname": request.hostname,
                        "ssh_keys": request.ssh_keys,
                        "instructions": instructions,
                    }),
                )
                .await?;
            Ok(Created {
                server: Server {
                    id: server_id(request.instance_id),
                    instance_id: Some(request.instance_id),
                    name: request.name.clone(),
                    state: PowerState::Creating,
                    ipv4: None,
                    ipv6: None,
                    root_password: None,
                    plan: Some(request.product_id.clone()),
                },
                action_id: Some(format!("task-{}", task.id)),
                root_password: None,
                details: serde_json::Value::Null,
            })
        }
        .boxed()
    }

    fn power_off<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
        _hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.accept(call, TaskKind::Suspend).boxed()
    }

    fn power_on<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.accept(call, TaskKind::Unsuspend).boxed()
    }

    fn reboot<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
        _hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.accept(call, TaskKind::Reboot).boxed()
    }

    fn delete<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.accept(call, TaskKind::Terminate).boxed()
    }

    fn resize_needs_off(&self) -> bool {
        // The admin powers the server off and on as the change needs.
        false
    }

    fn resize<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
        request: &'a ResizeRequest,
    ) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let instructions = match &request.config {
                ProductConfig::Manual { instructions } => instructions.clone(),
                _ => None,
            };
            let task = self
                .open(
                    call,
                    TaskKind::Resize,
                    json!({
                        "server": server_id(call.instance.id),
                        "from_product": request.from_product_id,
                        "product": request.product_id,
                        "instructions": instructions,
                    }),
                )
                .await?;
            Ok(Accepted {
                action_id: Some(format!("task-{}", task.id)),
                ..Accepted::default()
            })
        }
        .boxed()
    }

    fn rebuild<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Rebuilt>> {
        async move {
            let task = self
                .open(
                    call,
                    TaskKind::Reinstall,
                    json!({
                        "server": server_id(call.instance.id),
                        "os_image": request.os_image,
                        "image": request.image,
                        "hostname": request.hostname,
                        "ssh_keys": request.ssh_keys,
                    }),
                )
                .await?;
            Ok(Rebuilt {
                accepted: Accepted {
                    action_id: Some(format!("task-{}", task.id)),
                    ..Accepted::default()
                },
                // The admin records the new password when completing the task.
                root_password: None,
            })
        }
        .boxed()
    }

    fn find_rebuild<'a>(
        &'a self,
        call: Call<'a>,
        _server_id: &'a str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        async move {
            let tasks = self
                .store
                .tasks(&TaskFilter {
                    open_only: false,
                    instance_id: Some(call.instance.id),
                })
                .await
                .map_err(store_error)?;
            Ok(tasks
                .iter()
                .rev()
                .find(|t| {
                    t.kind == TaskKind::Reinstall
                        && t.state != TaskState::Cancelled
                        && t.created_at >= since
                })
                .map(|t| format!("task-{}", t.id)))
        }
        .boxed()
    }
}
