//! DigitalOcean droplets (`https://api.digitalocean.com/v2`).
//!
//! Droplet names are not unique, so ownership goes by tags: every droplet carries
//! `provisioner-instance:<id>` (found by it before every create, so a create whose answer was
//! lost is adopted, not repeated) and `provisioner` (how the account's droplets are listed, 200
//! per page). Suspend is `shutdown`, then `power_off` when the droplet is still on after the
//! graceful timeout; unsuspend is `power_on`; reboot is `reboot`, then `power_cycle` when the
//! action does not finish in time; terminate is `DELETE` (204).

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{
    bearer, class_of_status, credential, excerpt, numeric_id, request_details, segment,
    versioned_base, Api, ApiConfig, ResetMeans, VersionPath,
};
use super::limit::RateLimiter;
use super::{
    cloud_init, split_ssh_keys, Accepted, Call, CreateRequest, Created, ErrorClass, Policy,
    PowerState, Progress, Provider, ProviderError, ResizeRequest, Result, Server,
};
use crate::catalog::{Module, ProductConfig, ProviderAccount};
use crate::store::Action;

/// The public API.
pub const DEFAULT_ENDPOINT: &str = "https://api.digitalocean.com/v2";
/// Droplets per page of a listing (the API's maximum).
pub const PAGE_SIZE: usize = 200;
/// The tag every droplet made by provisioner carries.
pub const OWNER_TAG: &str = "provisioner";

/// The tag naming an instance's droplet.
pub fn instance_tag(instance_id: i64) -> String {
    format!("{}:{instance_id}", super::INSTANCE_LABEL)
}

/// A DigitalOcean account (one API token).
#[derive(Debug)]
pub struct DigitalOcean {
    api: Api,
    policy: Policy,
}

#[derive(Debug, Deserialize)]
struct Droplet {
    id: i64,
    name: String,
    status: String,
    #[serde(default)]
    networks: Networks,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    size_slug: Option<String>,
    #[serde(default)]
    locked: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Networks {
    #[serde(default)]
    v4: Vec<Network>,
    #[serde(default)]
    v6: Vec<Network>,
}

#[derive(Debug, Deserialize)]
struct Network {
    ip_address: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct OneDroplet {
    droplet: Droplet,
}

#[derive(Debug, Deserialize)]
struct DropletList {
    droplets: Vec<Droplet>,
    #[serde(default)]
    links: Option<Links>,
}

#[derive(Debug, Deserialize)]
struct Links {
    #[serde(default)]
    pages: Option<Pages>,
    #[serde(default)]
    actions: Vec<ActionLink>,
}

#[derive(Debug, Deserialize)]
struct Pages {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ActionLink {
    id: i64,
}

#[derive(Debug, Deserialize)]
struct DoAction {
    id: i64,
    status: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    started_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Deserialize)]
struct ActionList {
    actions: Vec<DoAction>,
}

#[derive(Debug, Deserialize)]
struct OneAction {
    action: DoAction,
}

#[derive(Debug, Deserialize)]
struct CreateResponse {
    droplet: Droplet,
    #[serde(default)]
    links: Option<Links>,
}

impl Droplet {
    fn into_server(self) -> Server {
        let state = match self.status.as_str() {
            // A droplet locked by a running action (resize, rebuild) is not usable.
            "active" | "off" if self.locked => PowerState::Busy,
            "active" => PowerState::Running,
            "off" | "archive" => PowerState::Off,
            _ => PowerState::Creating,
        };
        let public = |nets: &[Network]| {
            nets.iter()
                .find(|n| n.kind == "public")
                .map(|n| n.ip_address.clone())
        };
        let tag_prefix = format!("{}:", super::INSTANCE_LABEL);
        Server {
            id: self.id.to_string(),
            instance_id: self
                .tags
                .iter()
                .find_map(|t| t.strip_prefix(&tag_prefix)?.parse().ok()),
            ipv4: public(&self.networks.v4),
            ipv6: public(&self.networks.v6),
            name: self.name,
            state,
            root_password: None,
            plan: self.size_slug,
        }
    }
}

/// Reads DigitalOcean's error body `{"id", "message", "request_id"}`.
fn read_error(status: StatusCode, body: &[u8]) -> (ErrorClass, String) {
    #[derive(Deserialize)]
    struct Body {
        id: String,
        message: String,
    }
    let Ok(b) = serde_json::from_slice::<Body>(body) else {
        return (class_of_status(status), excerpt(body));
    };
    let lower = b.message.to_ascii_lowercase();
    let class = match b.id.as_str() {
        "unauthorized" | "forbidden" => ErrorClass::Auth,
        "not_found" => ErrorClass::NotFound,
        "too_many_requests" => ErrorClass::Throttled,
        "unprocessable_entity"
            if lower.contains("unavailable")
                || lower.contains("not available")
                || lower.contains("capacity")
                || lower.contains("limit") =>
        {
            ErrorClass::Capacity
        }
        // Another action runs on the droplet (a resize or rebuild in progress): not twice.
        "unprocessable_entity" if lower.contains("pending event") => ErrorClass::Transient,
        "server_error" | "service_unavailable" => ErrorClass::Transient,
        _ => class_of_status(status),
    };
    (class, format!("{}: {}", b.id, b.message))
}

impl DigitalOcean {
    /// The account behind `account`, with its token read through `env`.
    ///
    /// # Errors
    /// When the token's environment variable is not set (the message names the variable).
    pub fn new(
        account: &ProviderAccount,
        limiter: Arc<RateLimiter>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<DigitalOcean, String> {
        let token = credential(account, "token_env", "DIGITALOCEAN_TOKEN", env)?;
        let base = account
            .endpoint
            .clone()
            .or_else(|| env("DIGITALOCEAN_API_URL").filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let api = Api::new(ApiConfig {
            base: versioned_base(&base, VersionPath::Always("v2")),
            module: "digitalocean",
            limiter,
            timeout: account.timeout.unwrap_or(Duration::from_secs(30)),
            authorize: bearer(&token),
            secrets: vec![token.clone()],
            read_error,
            reset: ResetMeans::NextRequest,
        })
        .map_err(|e| e.message)?;
        Ok(DigitalOcean {
            api,
            policy: Policy::api(account, Duration::from_secs(3), Duration::from_secs(10)),
        })
    }

    async fn by_tag(&self, tag: &str) -> Result<Vec<Server>> {
        let mut out = Vec::new();
        self.by_tag_each(tag, &mut |s| out.push(s)).await?;
        Ok(out)
    }

    /// The droplets tagged `tag`, each handed to `sink` as its page arrives; how many there
    /// were.
    async fn by_tag_each(&self, tag: &str, sink: &mut (dyn FnMut(Server) + Send)) -> Result<usize> {
        let mut n = 0;
        let mut page = 1u64;
        loop {
            let query = [
                ("tag_name", tag.to_owned()),
                ("per_page", PAGE_SIZE.to_string()),
                ("page", page.to_string()),
            ];
            let (list, _): (DropletList, _) = self
                .api
                .json(Method::GET, "/droplets", &query, None)
                .await?;
            let count = list.droplets.len();
            n += count;
            list.droplets
                .into_iter()
                .map(Droplet::into_server)
                .for_each(&mut *sink);
            let next = list
                .links
                .and_then(|l| l.pages)
                .and_then(|p| p.next)
                .is_some();
            if !next || count == 0 {
                return Ok(n);
            }
            page += 1;
        }
    }

    /// One droplet as the API shows it; `None` when it does not exist.
    async fn fetch(&self, server_id: &str) -> Result<Option<Droplet>> {
        let id = numeric_id("digitalocean", "droplet", server_id)?;
        let path = format!("/droplets/{id}");
        let read = self
            .api
            .json::<OneDroplet>(Method::GET, &path, &[], None)
            .await;
        Ok(super::found(read)?.map(|(d, _)| d.droplet))
    }

    /// Tags (or, with `add` false, untags) a droplet. A tag that does not exist yet is made
    /// first: tagging answers 404 for it.
    async fn tag(&self, tag: &str, droplet: i64, add: bool) -> Result<()> {
        let path = format!("/tags/{}/resources", segment(tag));
        let body = json!({"resources": [{"resource_id": droplet.to_string(), "resource_type": "droplet"}]});
        let method = if add { Method::POST } else { Method::DELETE };
        match self.api.send(method.clone(), &path, &[], Some(&body)).await {
            Err(e) if add && e.class == ErrorClass::NotFound => {
                self.api
                    .send(Method::POST, "/tags", &[], Some(&json!({ "name": tag })))
                    .await?;
                self.api.send(method, &path, &[], Some(&body)).await?;
                Ok(())
            }
            Err(e) if !add && e.class == ErrorClass::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    async fn action(&self, server_id: &str, kind: &str) -> Result<Accepted> {
        self.action_with(server_id, json!({"type": kind})).await
    }

    async fn action_with(&self, server_id: &str, body: serde_json::Value) -> Result<Accepted> {
        let id = numeric_id("digitalocean", "droplet", server_id)?;
        let path = format!("/droplets/{id}/actions");
        let (a, rid): (OneAction, _) = self.api.json(Method::POST, &path, &[], Some(&body)).await?;
        tracing::debug!(droplet = server_id, action = a.action.id, kind = %a.action.kind, "action accepted");
        Ok(Accepted {
            action_id: Some(a.action.id.to_string()),
            details: request_details(rid),
        })
    }

    async fn do_create(&self, request: &CreateRequest) -> Result<Created> {
        let ProductConfig::DigitalOcean {
            size,
            ipv6,
            monitoring,
            backups,
            ..
        } = &request.config
        else {
            return Err(ProviderError::new(
                ErrorClass::Invalid,
                format!(
                    "product `{}` has no digitalocean configuration",
                    request.product_id
                ),
            ));
        };
        let tag = instance_tag(request.instance_id);
        // Names repeat freely at DigitalOcean: the tag is the only proof that an earlier
        // create, whose answer was lost, went through.
        let existing = self.by_tag(&tag).await?;
        if !existing.is_empty() {
            return Err(ProviderError::new(
                ErrorClass::AlreadyExists,
                format!(
                    "digitalocean: a droplet tagged {tag} exists already ({})",
                    existing
                        .iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let (public_keys, registered) = split_ssh_keys(&request.ssh_keys);
        let mut body = json!({
            "name": request.name,
            "region": request.location,
            "size": size,
            "image": request.image,
            "ssh_keys": registered,
            "tags": [OWNER_TAG, tag],
            "ipv6": ipv6,
            "monitoring": monitoring,
            "backups": backups,
        });
        if let Some(user_data) = cloud_init(&public_keys) {
            body["user_data"] = json!(user_data);
        }
        let (created, rid): (CreateResponse, _) = self
            .api
            .json(Method::POST, "/droplets", &[], Some(&body))
            .await?;
        let action_id = created
            .links
            .and_then(|l| l.actions.first().map(|a| a.id.to_string()));
        Ok(Created {
            server: created.droplet.into_server(),
            action_id,
            root_password: None,
            details: request_details(rid),
        })
    }
}

impl Provider for DigitalOcean {
    fn module(&self) -> Module {
        Module::DigitalOcean
    }

    fn policy(&self) -> Policy {
        self.policy
    }

    fn list_requests(&self, servers: usize) -> u32 {
        u32::try_from(servers.div_ceil(PAGE_SIZE).max(1)).unwrap_or(u32::MAX)
    }

    fn follows(&self, action: Action) -> bool {
        matches!(action, Action::Reboot | Action::Reinstall | Action::Resize)
    }

    fn follow<'a>(
        &'a self,
        _call: Call<'a>,
        action_id: &'a str,
    ) -> BoxFuture<'a, Result<Progress>> {
        async move {
            let id = numeric_id("digitalocean", "action", action_id)?;
            let path = format!("/actions/{id}");
            let (a, _): (OneAction, _) = self.api.json(Method::GET, &path, &[], None).await?;
            Ok(match a.action.status.as_str() {
                "completed" => Progress::Succeeded,
                "errored" => Progress::Failed(format!("the {} action errored", a.action.kind)),
                _ => Progress::Running,
            })
        }
        .boxed()
    }

    fn get<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Server>>> {
        self.inspect(server_id)
    }

    fn inspect<'a>(&'a self, server_id: &'a str) -> BoxFuture<'a, Result<Option<Server>>> {
        async move { Ok(self.fetch(server_id).await?.map(Droplet::into_server)) }.boxed()
    }

    fn claim<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let Some(droplet) = self.fetch(server_id).await? else {
                return Err(ProviderError::new(
                    ErrorClass::NotFound,
                    format!("digitalocean: droplet {server_id} does not exist"),
                ));
            };
            let ours = instance_tag(call.instance.id);
            let prefix = format!("{}:", super::INSTANCE_LABEL);
            let mut added = Vec::new();
            for tag in [OWNER_TAG, ours.as_str()] {
                if !droplet.tags.iter().any(|t| t == tag) {
                    self.tag(tag, droplet.id, true).await?;
                    added.push(tag.to_owned());
                }
            }
            // Another instance's tag goes: the droplet is found as this instance's only.
            let mut removed = Vec::new();
            for tag in droplet
                .tags
                .iter()
                .filter(|t| t.starts_with(&prefix) && **t != ours)
            {
                self.tag(tag, droplet.id, false).await?;
                removed.push(tag.clone());
            }
            Ok(Accepted {
                action_id: None,
                details: json!({"tagged": added, "untagged": removed}),
            })
        }
        .boxed()
    }

    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>> {
        async move { self.by_tag(&instance_tag(call.instance.id)).await }.boxed()
    }

    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>> {
        self.by_tag(OWNER_TAG).boxed()
    }

    fn list_owned_each<'a>(
        &'a self,
        sink: &'a mut (dyn FnMut(Server) + Send),
    ) -> BoxFuture<'a, Result<usize>> {
        self.by_tag_each(OWNER_TAG, sink).boxed()
    }

    fn create<'a>(
        &'a self,
        _call: Call<'a>,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<Created>> {
        self.do_create(request).boxed()
    }

    fn power_off<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.action(server_id, if hard { "power_off" } else { "shutdown" })
            .boxed()
    }

    fn power_on<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.action(server_id, "power_on").boxed()
    }

    fn reboot<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.action(server_id, if hard { "power_cycle" } else { "reboot" })
            .boxed()
    }

    fn resize<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        request: &'a ResizeRequest,
    ) -> BoxFuture<'a, Result<Accepted>> {
        let disk = matches!(
            request.config,
            ProductConfig::DigitalOcean {
                resize_disk: true,
                ..
            }
        );
        let body = json!({"type": "resize", "size": request.plan, "disk": disk});
        self.action_with(server_id, body).boxed()
    }

    fn rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<super::Rebuilt>> {
        // A rebuild keeps the droplet's SSH keys; DigitalOcean returns no password.
        let body = json!({"type": "rebuild", "image": request.image});
        async move {
            Ok(super::Rebuilt {
                accepted: self.action_with(server_id, body).await?,
                root_password: None,
            })
        }
        .boxed()
    }

    fn find_rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        async move {
            let id = numeric_id("digitalocean", "droplet", server_id)?;
            let path = format!("/droplets/{id}/actions");
            let query = [("per_page", "50".to_owned()), ("page", "1".to_owned())];
            let (list, _): (ActionList, _) =
                self.api.json(Method::GET, &path, &query, None).await?;
            Ok(list
                .actions
                .into_iter()
                .filter(|a| {
                    a.kind == "rebuild"
                        && a.started_at
                            .is_some_and(|t| t >= since - super::ACTION_CLOCK_SLACK)
                })
                .max_by_key(|a| a.id)
                .map(|a| a.id.to_string()))
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let id = numeric_id("digitalocean", "droplet", server_id)?;
            let path = format!("/droplets/{id}");
            let reply = self.api.send(Method::DELETE, &path, &[], None).await?;
            Ok(Accepted {
                action_id: None,
                details: request_details(reply.request_id),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_ids_decide_the_class() {
        let body = br#"{"id":"too_many_requests","message":"API Rate limit exceeded.","request_id":"4d9d8375"}"#;
        assert_eq!(
            read_error(StatusCode::TOO_MANY_REQUESTS, body).0,
            ErrorClass::Throttled
        );
        let body =
            br#"{"id":"unprocessable_entity","message":"Size is not available in this region."}"#;
        assert_eq!(
            read_error(StatusCode::UNPROCESSABLE_ENTITY, body).0,
            ErrorClass::Capacity
        );
        let body = br#"{"id":"unprocessable_entity","message":"You specified an invalid image for Droplet creation."}"#;
        assert_eq!(
            read_error(StatusCode::UNPROCESSABLE_ENTITY, body).0,
            ErrorClass::Invalid
        );
    }

    #[test]
    fn droplets_map_to_servers() {
        let d: Droplet = serde_json::from_value(json!({
            "id": 3164444, "name": "provisioner-7", "status": "active",
            "networks": {"v4": [
                {"ip_address": "10.128.192.124", "type": "private"},
                {"ip_address": "192.241.165.154", "type": "public"}],
                "v6": [{"ip_address": "2604:a880:0:1010::18a:a001", "type": "public"}]},
            "tags": ["provisioner", "provisioner-instance:7"]
        }))
        .unwrap();
        let s = d.into_server();
        assert_eq!(s.instance_id, Some(7));
        assert_eq!(s.ipv4.as_deref(), Some("192.241.165.154"));
        assert_eq!(s.state, PowerState::Running);
    }
}
