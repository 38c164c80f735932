//! Providers: what makes and breaks servers, shaped like Crossplane's external client.
//!
//! Every call is idempotent: create tolerates "exists" (reported as
//! [`ErrorClass::AlreadyExists`], after which the executor adopts by label), power calls
//! tolerate the target state, delete tolerates "gone", and observation never mutates. Servers
//! carry the label `provisioner-instance=<id>` and the name [`server_name`], so a server made
//! by a call whose outcome was lost is found again instead of made twice.
//!
//! - [`account`]: the accounts a catalog declares, built into driven modules, and rebuilt on
//!   reload when their definition changed;
//! - [`limit`]: the per-account request budget shared by all workers;
//! - [`http`]: the HTTP client the cloud modules share (budget, timeouts, errors, 429s);
//! - [`view`]: a shared recent listing answering looks at actions in flight;
//! - [`sim`]: the simulated cloud (demo, tests, benchmarks);
//! - [`manual`]: an admin does the work through the task inbox;
//! - [`hetzner`], [`digitalocean`], [`ovh`]: the real providers.
//!
//! Each module states its own [`Policy`] (how often to look at an action in flight, how long
//! a graceful shutdown may take, …): the reconciler reads it and names no module.

pub mod account;
pub mod digitalocean;
pub mod hetzner;
pub mod http;
pub mod limit;
pub mod manual;
pub mod ovh;
pub mod sim;
pub mod view;

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::catalog::{Module, ProductConfig, ProviderAccount};
use crate::secrets::SecretString;
use crate::store::{Action, Instance, Lease};

/// The label key every server made by provisioner carries (`provisioner-instance=<id>`).
pub const INSTANCE_LABEL: &str = "provisioner-instance";

/// The provider-side name of an instance's server: unique per instance, stable across retries.
pub fn server_name(instance_id: i64) -> String {
    format!("provisioner-{instance_id}")
}

/// Splits an instance's SSH keys into public keys (which go into cloud-init user data) and
/// the names or ids of keys already registered at the provider (which go into `ssh_keys`).
pub fn split_ssh_keys(keys: &[String]) -> (Vec<String>, Vec<String>) {
    keys.iter()
        .cloned()
        .partition(|k| k.starts_with("ssh-") || k.starts_with("ecdsa-") || k.starts_with("sk-"))
}

/// Cloud-init user data installing `public_keys` for root, if there are any.
pub fn cloud_init(public_keys: &[String]) -> Option<String> {
    if public_keys.is_empty() {
        return None;
    }
    let mut out = String::from("#cloud-config\nssh_authorized_keys:\n");
    for k in public_keys {
        out.push_str("  - ");
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push('\n');
    }
    Some(out)
}

/// What a server is doing, as the provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// Being created.
    Creating,
    /// Running.
    Running,
    /// Shutting down.
    Stopping,
    /// Powered off.
    Off,
    /// Powering on.
    Starting,
    /// Rebooting.
    Rebooting,
    /// Being deleted.
    Deleting,
    /// Running an action that keeps it from use: a change of plan, a reinstall, a migration.
    Busy,
}

impl PowerState {
    /// Whether the server is between two stable states.
    pub fn in_transition(self) -> bool {
        !matches!(self, PowerState::Running | PowerState::Off)
    }
}

/// A server as observed at the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// The provider's id.
    pub id: String,
    /// The instance its label names, if it has our label.
    pub instance_id: Option<i64>,
    /// Its name.
    pub name: String,
    /// What it is doing.
    pub state: PowerState,
    /// Public IPv4.
    pub ipv4: Option<String>,
    /// Public IPv6.
    pub ipv6: Option<String>,
    /// A root password the provider hands out on observation (manual work), if any.
    pub root_password: Option<SecretString>,
    /// The provider's name of its plan (Hetzner server type, DigitalOcean size, …; see
    /// [`ProductConfig::plan`]), when the provider reports one.
    pub plan: Option<String>,
}

/// How a provider call failed, deciding what the executor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble, 5xx, timeouts: retry with backoff. The call may have been applied.
    Transient,
    /// Rate limited: retry after the given time, send nothing to the account before it.
    Throttled,
    /// No capacity (location full, pool empty): retry later, slowly.
    Capacity,
    /// The request is wrong (bad size, image, location): retrying will not help.
    Invalid,
    /// Credentials missing or refused: retrying will not help until ops fix them.
    Auth,
    /// The server does not exist.
    NotFound,
    /// A server with this name exists already: adopt it.
    AlreadyExists,
}

impl ErrorClass {
    /// The class as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Capacity => "capacity",
            ErrorClass::Invalid => "invalid",
            ErrorClass::Auth => "auth",
            ErrorClass::NotFound => "not_found",
            ErrorClass::AlreadyExists => "already_exists",
        }
    }

    /// Whether retrying the same call later can succeed without a person's help.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::Transient | ErrorClass::Throttled | ErrorClass::Capacity
        )
    }
}

/// A failed provider call. Never carries tokens or passwords.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ProviderError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// What the provider said.
    pub message: String,
    /// When to try again, for throttling.
    pub retry_after: Option<Duration>,
    /// The provider's request id, for support tickets.
    pub request_id: Option<String>,
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.class.as_str())?;
        if let Some(id) = &self.request_id {
            write!(f, " [request {id}]")?;
        }
        Ok(())
    }
}

impl ProviderError {
    /// An error of `class` saying `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ProviderError {
            class,
            message: message.into(),
            retry_after: None,
            request_id: None,
        }
    }
}

/// Result of provider calls.
pub type Result<T> = std::result::Result<T, ProviderError>;

/// A read whose "not found" is an answer: nothing there.
///
/// # Errors
/// Any other failure of `read`.
pub fn found<T>(read: Result<T>) -> Result<Option<T>> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.class == ErrorClass::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The instance (its id is the label value).
    pub instance_id: i64,
    /// [`server_name`] of the instance.
    pub name: String,
    /// Hostname inside the OS.
    pub hostname: String,
    /// Location slug.
    pub location: String,
    /// The OS as ordered (the product's customer-facing name).
    pub os_image: String,
    /// The provider's name for that OS image (what the module sends).
    pub image: String,
    /// SSH public keys.
    pub ssh_keys: Vec<String>,
    /// The product's module configuration.
    pub config: ProductConfig,
    /// The product id (manual tasks show it).
    pub product_id: String,
}

impl CreateRequest {
    /// What to create for `instance` of `product`: its location and OS, or the product's
    /// first ones; its hostname, or the server's name; its SSH keys, one per line.
    pub fn new(instance: &Instance, product: &crate::catalog::Product) -> CreateRequest {
        let name = server_name(instance.id);
        let first = |list: &[String]| list.first().cloned().unwrap_or_default();
        // The planner only lets an instance whose OS the product offers this far.
        let os = instance
            .os_image
            .as_deref()
            .and_then(|name| product.os_image(name))
            .or_else(|| product.os_images.first())
            .cloned()
            .unwrap_or_else(|| crate::catalog::OsImage {
                name: String::new(),
                image: String::new(),
            });
        CreateRequest {
            instance_id: instance.id,
            hostname: instance.hostname.clone().unwrap_or_else(|| name.clone()),
            name,
            location: instance
                .location
                .clone()
                .unwrap_or_else(|| first(&product.locations)),
            os_image: os.name.clone(),
            image: os.image.clone(),
            ssh_keys: instance
                .ssh_keys
                .as_deref()
                .unwrap_or("")
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            config: product.provisioning.config.clone(),
            product_id: product.id.clone(),
        }
    }
}

/// What a change of plan moves a server to.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeRequest {
    /// The provider's name of the new plan ([`ProductConfig::plan`]).
    pub plan: String,
    /// The new product's module configuration (whether the disk grows, …).
    pub config: ProductConfig,
    /// The new product.
    pub product_id: String,
    /// The product the server is on now.
    pub from_product_id: String,
}

/// A reinstall the provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    /// The provider's action to follow, if any.
    pub accepted: Accepted,
    /// The new root password, when the provider generated one.
    pub root_password: Option<SecretString>,
}

/// A create the provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The new server (usually still creating).
    pub server: Server,
    /// The provider's action to follow, if any.
    pub action_id: Option<String>,
    /// The root password, when the provider generated one.
    pub root_password: Option<SecretString>,
    /// What the module wants in the transition log besides (an OVH pool allocation).
    pub details: serde_json::Value,
}

/// A power or delete action the provider accepted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Accepted {
    /// The provider's action to follow, if any.
    pub action_id: Option<String>,
    /// What the module wants in the transition log besides.
    pub details: serde_json::Value,
}

/// Where a provider action (Hetzner action, DigitalOcean action, OVH task) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still running.
    Running,
    /// Finished well.
    Succeeded,
    /// Finished badly, with what the provider said.
    Failed(String),
}

/// How the reconciler treats one module's actions: stated by the module (with the catalog's
/// overrides), read by the reconciler, which names no module itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first wait before looking again at an action in flight.
    pub poll: Duration,
    /// The longest wait between two looks (the wait grows with the action's age, so slow
    /// actions cost few requests).
    pub poll_max: Duration,
    /// How long a created server may be missing from the API before counting as gone (APIs
    /// are eventually consistent).
    pub create_grace: Duration,
    /// How long a graceful shutdown or reboot may take before a hard power-off or reset;
    /// `None`: never escalate (a person does the work).
    pub graceful_timeout: Option<Duration>,
    /// How long an action may run before it is sent again; `None`: never.
    pub stuck_timeout: Option<Duration>,
    /// Whether the module sends each of its HTTP requests through the account's budget itself
    /// (a method may make several); otherwise the executor takes one token per call.
    pub meters_requests: bool,
    /// Whether a create that billing terminated before it finished is withdrawn by the module
    /// (the manual module cancels the admin's open provision task): a create in flight whose
    /// server the module no longer reports is then done, as terminated, not lost.
    pub withdraws_creates: bool,
}

impl Default for Policy {
    /// A steady minute-long pace that never escalates nor sends again: the manual module's
    /// (people do the work), and what steps of an account that cannot be driven see.
    fn default() -> Policy {
        Policy {
            poll: Duration::from_secs(60),
            poll_max: Duration::from_secs(60),
            create_grace: Duration::ZERO,
            graceful_timeout: None,
            stuck_timeout: None,
            meters_requests: false,
            withdraws_creates: false,
        }
    }
}

/// How far a provider's clock may run behind the database's when a module looks for an action
/// started since an intent was recorded.
pub const ACTION_CLOCK_SLACK: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// Graceful shutdowns and reboots may take this long by default before a hard one.
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(60);
/// Actions may run this long by default before they are sent again.
pub const DEFAULT_STUCK_TIMEOUT: Duration = Duration::from_secs(300);

impl Policy {
    /// The policy of an API module whose first look comes after `poll` and whose servers
    /// may be missing from its API for `create_grace` after a create, with `account`'s
    /// overrides from the catalog.
    pub fn api(account: &ProviderAccount, poll: Duration, create_grace: Duration) -> Policy {
        let poll = account.poll.unwrap_or(poll);
        Policy {
            poll,
            // Cloud actions take seconds to minutes: the wait between looks grows to 8 times
            // the first one.
            poll_max: poll * 8,
            create_grace,
            graceful_timeout: Some(account.graceful_timeout.unwrap_or(DEFAULT_GRACEFUL_TIMEOUT)),
            stuck_timeout: Some(account.stuck_timeout.unwrap_or(DEFAULT_STUCK_TIMEOUT)),
            meters_requests: true,
            withdraws_creates: false,
        }
    }

    /// The wait before the next look at an action that has been in flight for `elapsed`.
    pub fn poll_after(&self, elapsed: Duration) -> Duration {
        (elapsed / 2).clamp(self.poll, self.poll_max.max(self.poll))
    }
}

/// The instance a call is made for, with the lease its writes are fenced by.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The instance.
    pub instance: &'a Instance,
    /// Its lease.
    pub lease: &'a Lease,
}

/// A provider module bound to one account.
pub trait Provider: Send + Sync {
    /// Which module this is.
    fn module(&self) -> Module;

    /// Whether [`Provider::list_owned`] is meaningful (the manual module has no inventory API).
    fn lists_servers(&self) -> bool {
        true
    }

    /// How the reconciler paces and escalates this module's actions.
    fn policy(&self) -> Policy;

    /// How many requests a bulk listing of `servers` owned servers costs.
    fn list_requests(&self, servers: usize) -> u32 {
        let _ = servers;
        1
    }

    /// Whether `action` is complete when its provider action is (followed with
    /// [`Provider::follow`]) rather than when the server's power state shows it: a reboot
    /// leaves a cloud server `running` throughout; an OVH reinstall is only seen in its task.
    fn follows(&self, action: Action) -> bool {
        let _ = action;
        false
    }

    /// Where the provider action `action_id` stands.
    fn follow<'a>(&'a self, call: Call<'a>, action_id: &'a str) -> BoxFuture<'a, Result<Progress>> {
        let _ = (call, action_id);
        Box::pin(async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                format!("module `{}` has no actions to follow", self.module()),
            ))
        })
    }

    /// Looks at one server; `None` when it does not exist.
    fn get<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Server>>>;

    /// The servers labelled for an instance (zero, one, or — a problem — several).
    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>>;

    /// Every server of the account carrying our label (bulk, paginated by the module).
    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>>;

    /// [`Provider::list_owned`], each server handed to `sink` as its page arrives, so that a
    /// module that can stream its pages never holds a large account whole (the default
    /// lists, then hands over). Returns how many servers were listed.
    fn list_owned_each<'a>(
        &'a self,
        sink: &'a mut (dyn FnMut(Server) + Send),
    ) -> BoxFuture<'a, Result<usize>> {
        async move {
            let all = self.list_owned().await?;
            let n = all.len();
            all.into_iter().for_each(&mut *sink);
            Ok(n)
        }
        .boxed()
    }

    /// Creates a server with [`server_name`] and our label.
    fn create<'a>(
        &'a self,
        call: Call<'a>,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Created>>;

    /// Powers a server off: gracefully, or at once when `hard`.
    fn power_off<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>>;

    /// Powers a server on.
    fn power_on<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>>;

    /// Reboots a server: gracefully, or with a hard reset when `hard` (sent after a graceful
    /// reboot did not take).
    fn reboot<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>>;

    /// Deletes a server; gone already counts as done.
    fn delete<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>>;

    /// Whether a server must be powered off before its plan can change (Hetzner,
    /// DigitalOcean); the sim and a person change it as it is.
    fn resize_needs_off(&self) -> bool {
        true
    }

    /// Moves a server to `request`'s plan. A second call while the first runs is refused by
    /// the provider (locked): one request never makes two changes.
    fn resize<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        request: &'a ResizeRequest,
    ) -> BoxFuture<'a, Result<Accepted>> {
        let _ = (call, server_id, request);
        Box::pin(async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                format!("module `{}` cannot change a server's plan", self.module()),
            ))
        })
    }

    /// Reinstalls a server with `request`'s image, hostname and SSH keys.
    fn rebuild<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Rebuilt>> {
        let _ = (call, server_id, request);
        Box::pin(async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                format!("module `{}` cannot reinstall a server", self.module()),
            ))
        })
    }

    /// The provider's own record of a reinstall of the server started at or after `since`
    /// (its action or task id), so that a reinstall whose answer was lost is followed, never
    /// sent twice. `None`: none was started.
    fn find_rebuild<'a>(
        &'a self,
        call: Call<'a>,
        server_id: &'a str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        let _ = (call, server_id, since);
        Box::pin(async move { Ok(None) })
    }

    /// Looks at a server of the account by the id an admin gave (`instances import`,
    /// `instances adopt`), whoever it belongs to: its [`Server::instance_id`] names the
    /// instance whose mark it carries, if any. `None` when the account has no such server.
    /// Never changes anything.
    fn inspect<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Result<Option<Server>>> {
        let _ = server_id;
        Box::pin(async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                format!(
                    "module `{}` has no inventory to import or adopt a server from",
                    self.module()
                ),
            ))
        })
    }

    /// Marks a server as `call.instance`'s own (label, tag, pool allocation), in place of any
    /// other instance's mark, so that it is found as the instance's from then on. Marking it
    /// again changes nothing.
    fn claim<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>> {
        let _ = (call, server_id);
        Box::pin(async move {
            Err(ProviderError::new(
                ErrorClass::Invalid,
                format!("module `{}` cannot mark a server as ours", self.module()),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CreateRequest;
    use crate::reconcile::plan::tests::instance;
    use crate::store::{DesiredStatus, ObservedStatus};

    #[test]
    fn the_provider_gets_its_own_name_for_the_os_ordered() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
        let catalog = crate::catalog::load_with_env(&dir, &|_| true).unwrap();
        let product = catalog.product("dedicated-adv1").unwrap();
        let mut i = instance(DesiredStatus::Active, ObservedStatus::Pending);
        for (ordered, name, image) in [
            (None, "debian-12", "debian12_64"),
            (Some("ubuntu-24.04"), "ubuntu-24.04", "ubuntu2404-server_64"),
        ] {
            i.os_image = ordered.map(str::to_owned);
            let r = CreateRequest::new(&i, product);
            assert_eq!((r.os_image.as_str(), r.image.as_str()), (name, image));
        }
        let vps = catalog.product("vps-starter").unwrap();
        i.os_image = Some("debian-12".into());
        let r = CreateRequest::new(&i, vps);
        assert_eq!(r.image, "debian-12", "a plain name is sent as written");
    }
}
