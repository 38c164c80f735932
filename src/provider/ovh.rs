//! OVH dedicated servers the company already owns (`/dedicated/server`).
//!
//! The account's `pool` is the inventory. Create allocates a free pool server whose hardware
//! the product offers, in the instance's location (a conditional UPDATE on a unique column, so a
//! server is never given to two instances, across restarts and several daemons), and reinstalls
//! it with the instance's OS and hostname (`POST .../reinstall`), following the task. Suspend
//! boots the rescue system (`PUT bootId` + `POST .../reboot`); unsuspend boots from disk again
//! the same way; reboot is `POST .../reboot` (a hard reboot: OVH has no other); terminate
//! reinstalls the server to wipe it, and when that task is done the server is free again.
//!
//! Every request is signed as OVH's own clients sign them: `X-Ovh-Signature` is `$1$` and the
//! hex SHA-1 of `secret+consumer_key+METHOD+full URL with query+body+timestamp`, with the
//! timestamp corrected by the drift measured once with `GET /auth/time`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::{BoxFuture, FutureExt};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha1::{Digest, Sha1};
use tokio::sync::OnceCell;

use super::http::{
    class_of_status, credential, excerpt, numeric_id, secret_header, segment, versioned_base, Api,
    ApiConfig, ResetMeans, VersionPath,
};
use super::limit::RateLimiter;
use super::{
    Accepted, Call, CreateRequest, Created, ErrorClass, Policy, PowerState, Progress, Provider,
    ProviderError, Result, Server,
};
use crate::catalog::{Module, PoolServer, ProductConfig, ProviderAccount};
use crate::store::pool::{PoolChange, PoolSlot as Slot};
use crate::store::{Action, SqlStore, StoreError};

/// The API base URL of an endpoint name (`ovh-eu`, …) or a URL given as is.
pub fn endpoint_url(endpoint: &str) -> String {
    match endpoint {
        "ovh-eu" => "https://eu.api.ovh.com/1.0".into(),
        "ovh-ca" => "https://ca.api.ovh.com/1.0".into(),
        "ovh-us" => "https://api.us.ovhcloud.com/1.0".into(),
        "kimsufi-eu" => "https://eu.api.kimsufi.com/1.0".into(),
        "kimsufi-ca" => "https://ca.api.kimsufi.com/1.0".into(),
        "soyoustart-eu" => "https://eu.api.soyoustart.com/1.0".into(),
        "soyoustart-ca" => "https://ca.api.soyoustart.com/1.0".into(),
        url => versioned_base(url, VersionPath::OnBareHost("1.0")),
    }
}

/// The `X-Ovh-Signature` of a request.
///
/// ```
/// use provisioner::provider::ovh::signature;
/// let s = signature("EXAMPLESECRET", "MtSwSrPpNjqfVSmJhLbPyr2i45lSwPU1", "PUT",
///     "https://eu.api.ovh.com/1.0/dedicated/server/ns1.example.eu", r#"{"bootId":1}"#,
///     1457018875);
/// assert_eq!(s, "$1$291e4602061303f7ab4516bbf42c8a98330717a3");
/// ```
pub fn signature(
    application_secret: &str,
    consumer_key: &str,
    method: &str,
    url: &str,
    body: &str,
    timestamp: i64,
) -> String {
    let mut h = Sha1::new();
    for (n, part) in [
        application_secret,
        consumer_key,
        method,
        url,
        body,
        &timestamp.to_string(),
    ]
    .iter()
    .enumerate()
    {
        if n > 0 {
            h.update(b"+");
        }
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::from("$1$");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// An OVH account and its pool of dedicated servers.
pub struct Ovh {
    account: String,
    api: Api,
    pool: Vec<PoolServer>,
    store: SqlStore,
    delta: Arc<AtomicI64>,
    clock: OnceCell<()>,
    policy: Policy,
}

impl std::fmt::Debug for Ovh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ovh")
            .field("account", &self.account)
            .field("pool", &self.pool.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dedicated {
    name: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    power_state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Task {
    task_id: i64,
    status: String,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    start_date: Option<chrono::DateTime<chrono::FixedOffset>>,
}

fn store_error(e: StoreError) -> ProviderError {
    ProviderError::new(ErrorClass::Transient, format!("ovh pool storage: {e}"))
}

/// An OVH service name (`ns1234567.ip-1-2-3.eu`) as read back from the database or the
/// catalog, as a path segment: letters, digits, dots and hyphens only.
fn service(server: &str) -> Result<String> {
    let valid = !server.is_empty()
        && server.len() <= 255
        && !server.starts_with('.')
        && !server.contains("..")
        && server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if valid {
        Ok(segment(server))
    } else {
        Err(ProviderError::new(
            ErrorClass::Invalid,
            format!(
                "ovh: {:?} is not an OVH service name; it is not put into a request",
                excerpt(server.as_bytes())
            ),
        ))
    }
}

/// Reads OVH's error body `{"message", "errorCode"?, "class"?}`.
fn read_error(status: StatusCode, body: &[u8]) -> (ErrorClass, String) {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        message: String,
        #[serde(default)]
        error_code: Option<String>,
    }
    let Ok(b) = serde_json::from_slice::<Body>(body) else {
        return (class_of_status(status), excerpt(body));
    };
    let class = match status.as_u16() {
        // A task is already running on the server: try again once it is done.
        409 => ErrorClass::Transient,
        // The service is expired or suspended at OVH: a person must renew it.
        460 => ErrorClass::Invalid,
        // Our timestamp is off: the drift is measured again and the request retried.
        _ if b.error_code.as_deref() == Some("QUERY_TIME_OUT") => ErrorClass::Transient,
        _ => class_of_status(status),
    };
    let message = match b.error_code {
        Some(code) => format!("{code}: {}", b.message),
        None => b.message,
    };
    (class, message)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Ovh {
    /// The account behind `account`, its keys read through `env`.
    ///
    /// # Errors
    /// When a key's environment variable is not set (the message names it).
    pub fn new(
        account: &ProviderAccount,
        pool: Vec<PoolServer>,
        limiter: Arc<RateLimiter>,
        store: SqlStore,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<Ovh, String> {
        let read = |field: &str, default: &str| credential(account, field, default, env);
        let app_key = read("application_key_env", "OVH_APPLICATION_KEY")?;
        let app_secret = read("application_secret_env", "OVH_APPLICATION_SECRET")?;
        let consumer_key = read("consumer_key_env", "OVH_CONSUMER_KEY")?;
        let endpoint = account
            .endpoint
            .clone()
            .or_else(|| env("OVH_ENDPOINT").filter(|e| !e.is_empty()))
            .unwrap_or_else(|| "ovh-eu".to_owned());
        let secrets = vec![app_key.clone(), app_secret.clone(), consumer_key.clone()];
        let delta = Arc::new(AtomicI64::new(0));
        let clock = delta.clone();
        let authorize = move |method: &Method, url: &str, body: &str| {
            let mut headers: Vec<(HeaderName, HeaderValue)> =
                vec![secret_header("x-ovh-application", app_key.expose())?];
            if url.ends_with("/auth/time") {
                return Ok(headers);
            }
            let timestamp = now_unix() + clock.load(Ordering::Relaxed);
            headers.push(secret_header("x-ovh-consumer", consumer_key.expose())?);
            headers.push((
                HeaderName::from_static("x-ovh-timestamp"),
                HeaderValue::from(timestamp),
            ));
            let sig = signature(
                app_secret.expose(),
                consumer_key.expose(),
                method.as_str(),
                url,
                body,
                timestamp,
            );
            headers.push(secret_header("x-ovh-signature", &sig)?);
            Ok(headers)
        };
        let api = Api::new(ApiConfig {
            base: endpoint_url(&endpoint),
            module: "ovh",
            limiter,
            timeout: account.timeout.unwrap_or(Duration::from_secs(30)),
            authorize: Box::new(authorize),
            secrets,
            read_error,
            reset: ResetMeans::Nothing,
        })
        .map_err(|e| e.message)?;
        Ok(Ovh {
            account: account.id.clone(),
            api,
            pool,
            store,
            delta,
            clock: OnceCell::new(),
            policy: Policy {
                // OVH has only hard reboots, and a reinstall takes 10 to 30 minutes: a task
                // is sent again only after two hours, and nothing escalates.
                graceful_timeout: account.graceful_timeout,
                stuck_timeout: Some(account.stuck_timeout.unwrap_or(Duration::from_secs(7200))),
                ..Policy::api(account, Duration::from_secs(30), Duration::ZERO)
            },
        })
    }

    /// Measures the drift to OVH's clock, as OVH's clients do.
    async fn measure_drift(&self) -> Result<()> {
        let (server_time, _): (i64, _) =
            self.api.json(Method::GET, "/auth/time", &[], None).await?;
        self.delta
            .store(server_time - now_unix(), Ordering::Relaxed);
        Ok(())
    }

    /// Measures the drift once before the first signed request.
    async fn synced(&self) -> Result<()> {
        self.clock.get_or_try_init(|| self.measure_drift()).await?;
        Ok(())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        self.synced().await?;
        match self.api.json(method.clone(), path, query, body).await {
            // Our clock drifted from OVH's since it was measured: measure again and retry.
            Err(e) if e.message.contains("QUERY_TIME_OUT") => {
                tracing::info!(account = %self.account, "ovh: request timestamp refused; measuring the clock drift again");
                self.measure_drift().await?;
                Ok(self.api.json(method, path, query, body).await?.0)
            }
            other => Ok(other?.0),
        }
    }

    async fn slot_of(&self, instance_id: i64) -> Result<Option<Slot>> {
        self.store
            .pool_slot(&self.account, instance_id)
            .await
            .map_err(store_error)
    }

    async fn update_slot(&self, instance_id: i64, change: PoolChange) -> Result<()> {
        self.store
            .pool_update(&self.account, instance_id, &change)
            .await
            .map_err(store_error)
    }

    /// Gives `instance_id` a free pool server among `candidates` (or the one it has already).
    async fn allocate(&self, instance_id: i64, candidates: &[&PoolServer]) -> Result<Slot> {
        let names: Vec<&str> = candidates.iter().map(|s| s.service_name.as_str()).collect();
        let allocated = self
            .store
            .pool_allocate(&self.account, instance_id, &names)
            .await
            .map_err(store_error)?;
        if let Some(slot) = allocated {
            tracing::info!(account = %self.account, server = %slot.service_name, instance = instance_id, "pool server allocated");
            return Ok(slot);
        }
        Err(ProviderError::new(
            ErrorClass::Capacity,
            format!(
                "ovh: no free server in the pool of `{}` among {}",
                self.account,
                candidates
                    .iter()
                    .map(|s| s.service_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// Makes the server boot `boot_type` (`rescue`, `harddisk`) and reboots it.
    async fn boot_into(
        &self,
        call: Call<'_>,
        server: &str,
        boot_type: &'static str,
    ) -> Result<Accepted> {
        let ids: Vec<i64> = self
            .call(
                Method::GET,
                &format!("/dedicated/server/{}/boot", service(server)?),
                &[("bootType", boot_type.to_owned())],
                None,
            )
            .await?;
        let Some(boot_id) = ids.first() else {
            return Err(ProviderError::new(
                ErrorClass::Invalid,
                format!("ovh: server {server} offers no `{boot_type}` boot"),
            ));
        };
        self.api_void(
            Method::PUT,
            &format!("/dedicated/server/{}", service(server)?),
            &json!({ "bootId": boot_id }),
        )
        .await?;
        let task: Task = self
            .call(
                Method::POST,
                &format!("/dedicated/server/{}/reboot", service(server)?),
                &[],
                None,
            )
            .await?;
        self.update_slot(
            call.instance.id,
            PoolChange {
                boot: Some(boot_type),
                task_id: Some(Some(task.task_id.to_string())),
                ..PoolChange::default()
            },
        )
        .await?;
        Ok(Accepted {
            action_id: Some(task.task_id.to_string()),
            details: json!({"pool": {"server": server, "boot": boot_type}}),
        })
    }

    async fn api_void(&self, method: Method, path: &str, body: &serde_json::Value) -> Result<()> {
        self.synced().await?;
        self.api.send(method, path, &[], Some(body)).await?;
        Ok(())
    }

    async fn reinstall(
        &self,
        server: &str,
        os: &str,
        hostname: &str,
        keys: &[String],
    ) -> Result<Task> {
        let mut customizations = json!({ "hostname": hostname });
        if !keys.is_empty() {
            customizations["sshKey"] = json!(keys.join("\n"));
        }
        self.call(
            Method::POST,
            &format!("/dedicated/server/{}/reinstall", service(server)?),
            &[],
            Some(&json!({ "operatingSystem": os, "customizations": customizations })),
        )
        .await
    }

    async fn task(&self, server: &str, task_id: &str) -> Result<Task> {
        self.call(
            Method::GET,
            &format!(
                "/dedicated/server/{}/task/{}",
                service(server)?,
                numeric_id("ovh", "task", task_id)?
            ),
            &[],
            None,
        )
        .await
    }

    async fn do_create(&self, call: Call<'_>, request: &CreateRequest) -> Result<Created> {
        let ProductConfig::Ovh { hardware } = &request.config else {
            return Err(ProviderError::new(
                ErrorClass::Invalid,
                format!("product `{}` has no ovh configuration", request.product_id),
            ));
        };
        let candidates: Vec<&PoolServer> = self
            .pool
            .iter()
            .filter(|s| {
                hardware.contains(&s.hardware)
                    && s.location.as_deref().is_none_or(|l| l == request.location)
            })
            .collect();
        let slot = self.allocate(call.instance.id, &candidates).await?;
        let server = slot.service_name;
        self.update_slot(
            call.instance.id,
            PoolChange {
                os_image: Some(request.image.clone()),
                ..PoolChange::default()
            },
        )
        .await?;
        let task = self
            .reinstall(
                &server,
                &request.image,
                &request.hostname,
                &request.ssh_keys,
            )
            .await?;
        self.update_slot(
            call.instance.id,
            PoolChange {
                task_id: Some(Some(task.task_id.to_string())),
                ..PoolChange::default()
            },
        )
        .await?;
        let found: Dedicated = self
            .call(
                Method::GET,
                &format!("/dedicated/server/{}", service(&server)?),
                &[],
                None,
            )
            .await?;
        Ok(Created {
            server: Server {
                id: server.clone(),
                instance_id: Some(call.instance.id),
                name: found.name,
                state: PowerState::Creating,
                ipv4: found.ip,
                ipv6: None,
                root_password: None,
                plan: None,
            },
            action_id: Some(task.task_id.to_string()),
            root_password: None,
            details: json!({"pool": {"allocated": server, "os_image": request.os_image, "template": request.image}}),
        })
    }

    async fn observe(&self, call: Call<'_>, server: &str) -> Result<Option<Server>> {
        let i = call.instance;
        let slot = match self.slot_of(i.id).await? {
            Some(slot) if slot.service_name == server => slot,
            Some(_) => return Ok(None),
            // A server attached by an admin and not yet allocated to the instance (imported
            // observe-only) is looked at as it is; no one else can be given it meanwhile.
            None if i.claim_pending && i.provider_server_id.as_deref() == Some(server) => {
                return Ok(self.inspect_server(server).await?.map(|mut s| {
                    s.instance_id = Some(i.id);
                    s
                }));
            }
            None => return Ok(None),
        };
        if let Some(task_id) = &slot.task_id {
            let task = self.task(server, task_id).await?;
            if matches!(task.status.as_str(), "init" | "todo" | "doing") {
                let state = match slot.state.as_str() {
                    "installing" | "wiping" => PowerState::Creating,
                    _ if slot.boot == "rescue" => PowerState::Stopping,
                    _ => PowerState::Rebooting,
                };
                return Ok(Some(self.server_of(call, server, None, state)));
            }
        }
        let Some(found) = self.dedicated(server).await? else {
            return Ok(None);
        };
        // Booted into rescue, the customer's system is not running: suspended.
        let state = match (found.power_state.as_deref(), slot.boot.as_str()) {
            (Some("poweroff"), _) | (_, "rescue") => PowerState::Off,
            _ => PowerState::Running,
        };
        Ok(Some(self.server_of(call, server, found.ip, state)))
    }

    /// `GET /dedicated/server/{name}`; `None` when the account has no such server.
    async fn dedicated(&self, server: &str) -> Result<Option<Dedicated>> {
        let path = format!("/dedicated/server/{}", service(server)?);
        super::found(self.call(Method::GET, &path, &[], None).await)
    }

    /// A dedicated server of the account as OVH shows it, and the instance its pool
    /// allocation names; `None` when the account has no such server.
    async fn inspect_server(&self, server: &str) -> Result<Option<Server>> {
        let Some(found) = self.dedicated(server).await? else {
            return Ok(None);
        };
        let owner = self
            .store
            .pool_owner(&self.account, server)
            .await
            .map_err(store_error)?;
        let state = match found.power_state.as_deref() {
            Some("poweroff") => PowerState::Off,
            _ => PowerState::Running,
        };
        Ok(Some(Server {
            id: server.to_owned(),
            instance_id: owner,
            name: found.name,
            state,
            ipv4: found.ip,
            ipv6: None,
            root_password: None,
            plan: None,
        }))
    }

    fn server_of(
        &self,
        call: Call<'_>,
        server: &str,
        ip: Option<String>,
        state: PowerState,
    ) -> Server {
        Server {
            id: server.to_owned(),
            instance_id: Some(call.instance.id),
            name: server.to_owned(),
            state,
            ipv4: ip,
            ipv6: None,
            root_password: None,
            plan: None,
        }
    }

    async fn do_rebuild(
        &self,
        call: Call<'_>,
        server: &str,
        request: &CreateRequest,
    ) -> Result<super::Rebuilt> {
        self.update_slot(
            call.instance.id,
            PoolChange {
                os_image: Some(request.image.clone()),
                ..PoolChange::default()
            },
        )
        .await?;
        let task = self
            .reinstall(server, &request.image, &request.hostname, &request.ssh_keys)
            .await?;
        self.update_slot(
            call.instance.id,
            PoolChange {
                state: Some("installing"),
                task_id: Some(Some(task.task_id.to_string())),
                ..PoolChange::default()
            },
        )
        .await?;
        Ok(super::Rebuilt {
            accepted: Accepted {
                action_id: Some(task.task_id.to_string()),
                details: json!({"template": request.image}),
            },
            root_password: None,
        })
    }

    /// The newest reinstall task of `server` started at or after `since`.
    async fn reinstall_since(
        &self,
        server: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>> {
        let ids: Vec<i64> = self
            .call(
                Method::GET,
                &format!("/dedicated/server/{}/task", service(server)?),
                &[("function", "reinstallServer".to_owned())],
                None,
            )
            .await?;
        let Some(newest) = ids.into_iter().max() else {
            return Ok(None);
        };
        let task = self.task(server, &newest.to_string()).await?;
        let recent = task
            .start_date
            .is_some_and(|t| t.to_utc() >= since - super::ACTION_CLOCK_SLACK);
        Ok(recent.then(|| newest.to_string()))
    }
}

impl Provider for Ovh {
    fn module(&self) -> Module {
        Module::Ovh
    }

    /// The pool is the inventory; OVH's list gives names only and rescue mode is not a power
    /// state, so there is no bulk listing to compare against.
    fn lists_servers(&self) -> bool {
        false
    }

    fn policy(&self) -> Policy {
        self.policy
    }

    fn follows(&self, _action: Action) -> bool {
        true
    }

    fn follow<'a>(&'a self, call: Call<'a>, action_id: &'a str) -> BoxFuture<'a, Result<Progress>> {
        async move {
            let Some(server) = call.instance.provider_server_id.as_deref() else {
                return Err(ProviderError::new(
                    ErrorClass::Invalid,
                    "ovh: no server recorded for the task",
                ));
            };
            let task = self.task(server, action_id).await?;
            Ok(match task.status.as_str() {
                "init" | "todo" | "doing" => Progress::Running,
                "done" => {
                    let slot = self.slot_of(call.instance.id).await?;
                    match slot.as_ref().map(|s| s.state.as_str()) {
                        Some("wiping") => {
                            self.store
                                .pool_release(&self.account, call.instance.id)
                                .await
                                .map_err(store_error)?;
                            tracing::info!(
                                server,
                                instance = call.instance.id,
                                "wiped and back in the pool"
                            );
                        }
                        Some(_) => {
                            self.update_slot(
                                call.instance.id,
                                PoolChange {
                                    state: Some("ready"),
                                    task_id: Some(None),
                                    ..PoolChange::default()
                                },
                            )
                            .await?;
                        }
                        None => {}
                    }
                    Progress::Succeeded
                }
                other => Progress::Failed(format!(
                    "task {} ended `{other}`{}",
                    task.task_id,
                    task.comment.map(|c| format!(": {c}")).unwrap_or_default()
                )),
            })
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Server>>> {
        self.observe(call, server_id).boxed()
    }

    fn inspect<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Result<Option<Server>>> {
        self.inspect_server(server_id).boxed()
    }

    /// The pool allocation is the mark: the server is the instance's from then on, and never
    /// given to another order (nothing is sent to OVH).
    fn claim<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let claimed = self
                .store
                .pool_claim(&self.account, server_id, call.instance.id)
                .await
                .map_err(store_error)?;
            if !claimed {
                return Err(ProviderError::new(
                    ErrorClass::Invalid,
                    format!(
                        "ovh: server {server_id} is allocated to another instance (or in another account's pool)"
                    ),
                ));
            }
            Ok(Accepted {
                action_id: None,
                details: json!({"pool": {"allocated": server_id, "state": "ready"}}),
            })
        }
        .boxed()
    }

    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>> {
        async move {
            // Only a server whose reinstall was sent counts as made: otherwise create again,
            // which keeps the allocation and sends the reinstall.
            match self.slot_of(call.instance.id).await? {
                Some(slot) if slot.task_id.is_some() || slot.state != "installing" => {
                    let name = slot.service_name.clone();
                    Ok(self.observe(call, &name).await?.into_iter().collect())
                }
                _ => Ok(Vec::new()),
            }
        }
        .boxed()
    }

    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>> {
        async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                "ovh: the pool is the inventory; there is no listing",
            ))
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        call: Call<'a>,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Created>> {
        self.do_create(call, request).boxed()
    }

    fn power_off<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        _hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.boot_into(call, server_id, "rescue").boxed()
    }

    fn power_on<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.boot_into(call, server_id, "harddisk").boxed()
    }

    fn reboot<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        _hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let task: Task = self
                .call(
                    Method::POST,
                    &format!("/dedicated/server/{}/reboot", service(server_id)?),
                    &[],
                    None,
                )
                .await?;
            self.update_slot(
                call.instance.id,
                PoolChange {
                    task_id: Some(Some(task.task_id.to_string())),
                    ..PoolChange::default()
                },
            )
            .await?;
            Ok(Accepted {
                action_id: Some(task.task_id.to_string()),
                details: serde_json::Value::Null,
            })
        }
        .boxed()
    }

    fn rebuild<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<super::Rebuilt>> {
        self.do_rebuild(call, server_id, request).boxed()
    }

    fn find_rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        self.reinstall_since(server_id, since).boxed()
    }

    fn delete<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let Some(slot) = self
                .slot_of(call.instance.id)
                .await?
                .filter(|s| s.service_name == server_id)
            else {
                return Err(ProviderError::new(
                    ErrorClass::NotFound,
                    format!("ovh: server {server_id} is not allocated to this instance"),
                ));
            };
            self.update_slot(
                call.instance.id,
                PoolChange {
                    state: Some("wiping"),
                    ..PoolChange::default()
                },
            )
            .await?;
            if slot.boot == "rescue" {
                self.api_void(
                    Method::PUT,
                    &format!("/dedicated/server/{}", service(server_id)?),
                    &json!({"bootId": self.harddisk_boot(server_id).await?}),
                )
                .await?;
            }
            let os = slot.os_image.clone().unwrap_or_default();
            let task = self.reinstall(server_id, &os, server_id, &[]).await?;
            self.update_slot(
                call.instance.id,
                PoolChange {
                    task_id: Some(Some(task.task_id.to_string())),
                    ..PoolChange::default()
                },
            )
            .await?;
            Ok(Accepted {
                action_id: Some(task.task_id.to_string()),
                details: json!({"pool": {"wiping": server_id, "os_image": os}}),
            })
        }
        .boxed()
    }
}

impl Ovh {
    async fn harddisk_boot(&self, server: &str) -> Result<i64> {
        let ids: Vec<i64> = self
            .call(
                Method::GET,
                &format!("/dedicated/server/{}/boot", service(server)?),
                &[("bootType", "harddisk".to_owned())],
                None,
            )
            .await?;
        ids.first().copied().ok_or_else(|| {
            ProviderError::new(
                ErrorClass::Invalid,
                format!("ovh: server {server} offers no `harddisk` boot"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_names_reach_a_path() {
        assert_eq!(
            service("ns1234567.ip-1-2-3.eu").unwrap(),
            "ns1234567.ip-1-2-3.eu"
        );
        for bad in [
            "../me",
            "ns1.eu/reboot",
            "ns1.eu?x=1",
            "",
            ".hidden",
            "a..b",
            "ns1 eu",
        ] {
            let e = service(bad).unwrap_err();
            assert_eq!(e.class, ErrorClass::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn endpoint_names_resolve_like_ovh_clients() {
        assert_eq!(endpoint_url("ovh-eu"), "https://eu.api.ovh.com/1.0");
        assert_eq!(endpoint_url("ovh-us"), "https://api.us.ovhcloud.com/1.0");
        assert_eq!(
            endpoint_url("http://127.0.0.1:9/1.0/"),
            "http://127.0.0.1:9/1.0"
        );
    }

    #[test]
    fn the_signature_matches_a_known_answer_without_a_body() {
        assert_eq!(
            signature(
                "EXAMPLESECRET",
                "MtSwSrPpNjqfVSmJhLbPyr2i45lSwPU1",
                "POST",
                "https://eu.api.ovh.com/1.0/dedicated/server/ns1.example.eu/reboot",
                "",
                1_457_018_875
            ),
            "$1$fb5171ffc1c29beb652e8b08bb7b57d873c94019"
        );
    }

    #[test]
    fn errors_keep_ovh_codes() {
        let (class, message) = read_error(
            StatusCode::FORBIDDEN,
            br#"{"errorCode":"INVALID_SIGNATURE","httpCode":"400 Bad Request","message":"Invalid signature"}"#,
        );
        assert_eq!(class, ErrorClass::Auth);
        assert_eq!(message, "INVALID_SIGNATURE: Invalid signature");
    }
}
