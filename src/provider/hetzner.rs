//! Hetzner Cloud (`https://api.hetzner.cloud/v1`).
//!
//! Servers are named [`server_name`] (names are unique per project, so a second create of the
//! same instance fails with `uniqueness_error` and is adopted) and labelled
//! `provisioner-instance=<id>`, which is how they are found (`label_selector`, then `name`) and
//! listed, 50 per page. Suspend is `shutdown`, then `poweroff` when the server is still on after
//! the graceful timeout; unsuspend is `poweron`; reboot is `reboot`, then `reset` when the
//! action does not finish in time; terminate is `DELETE`. SSH public keys go in through
//! cloud-init; with no key registered at Hetzner it returns a root password, which is kept
//! sealed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{
    bearer, class_of_status, credential, excerpt, numeric_id, request_details, versioned_base, Api,
    ApiConfig, ResetMeans, VersionPath,
};
use super::limit::RateLimiter;
use super::{
    cloud_init, split_ssh_keys, Accepted, Call, CreateRequest, Created, ErrorClass, Policy,
    PowerState, Progress, Provider, ProviderError, ResizeRequest, Result, Server, INSTANCE_LABEL,
};
use crate::catalog::{Module, ProductConfig, ProviderAccount};
use crate::secrets::SecretString;
use crate::store::Action;

/// The public API.
pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";
/// Servers per page of a listing (the API's maximum).
pub const PAGE_SIZE: usize = 50;

/// A Hetzner Cloud project.
#[derive(Debug)]
pub struct HetznerCloud {
    api: Api,
    policy: Policy,
}

#[derive(Debug, Deserialize)]
struct HServer {
    id: i64,
    name: String,
    status: String,
    #[serde(default)]
    public_net: Option<PublicNet>,
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    server_type: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Default, Deserialize)]
struct PublicNet {
    ipv4: Option<Address>,
    ipv6: Option<Address>,
}

#[derive(Debug, Deserialize)]
struct Address {
    ip: String,
}

#[derive(Debug, Deserialize)]
struct HAction {
    id: i64,
    status: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    started: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    error: Option<ActionError>,
}

#[derive(Debug, Deserialize)]
struct ActionList {
    actions: Vec<HAction>,
}

#[derive(Debug, Deserialize)]
struct RebuildResponse {
    action: HAction,
    #[serde(default)]
    root_password: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ActionError {
    code: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct OneServer {
    server: HServer,
}

#[derive(Debug, Deserialize)]
struct OneAction {
    action: HAction,
}

#[derive(Debug, Deserialize)]
struct ServerList {
    servers: Vec<HServer>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    pagination: Pagination,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    next_page: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CreateResponse {
    server: HServer,
    action: HAction,
    root_password: Option<String>,
}

impl HServer {
    fn into_server(self) -> Server {
        let state = match self.status.as_str() {
            "running" | "migrating" => PowerState::Running,
            "off" => PowerState::Off,
            "stopping" => PowerState::Stopping,
            "starting" => PowerState::Starting,
            "deleting" => PowerState::Deleting,
            "rebuilding" => PowerState::Busy,
            // initializing, unknown: on its way somewhere
            _ => PowerState::Creating,
        };
        let net = self.public_net.unwrap_or_default();
        Server {
            id: self.id.to_string(),
            instance_id: self.labels.get(INSTANCE_LABEL).and_then(|v| v.parse().ok()),
            name: self.name,
            state,
            ipv4: net.ipv4.map(|a| a.ip),
            ipv6: net.ipv6.map(|a| a.ip),
            root_password: None,
            plan: self.server_type.map(|t| t.name),
        }
    }
}

/// Reads Hetzner's error envelope `{"error": {"code", "message", "details"}}`.
fn read_error(status: StatusCode, body: &[u8]) -> (ErrorClass, String) {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
        message: String,
    }
    let Ok(Envelope { error }) = serde_json::from_slice::<Envelope>(body) else {
        return (class_of_status(status), excerpt(body));
    };
    let class = match error.code.as_str() {
        "uniqueness_error" => ErrorClass::AlreadyExists,
        "not_found" => ErrorClass::NotFound,
        "unauthorized" | "forbidden" | "token_readonly" => ErrorClass::Auth,
        "rate_limit_exceeded" | "limit_reached" => ErrorClass::Throttled,
        "resource_unavailable" | "placement_error" | "resource_limit_exceeded" => {
            ErrorClass::Capacity
        }
        "invalid_input"
        | "json_error"
        | "invalid_server_type"
        | "protected"
        | "unsupported_error"
        | "method_not_allowed"
        | "deprecated_api_endpoint" => ErrorClass::Invalid,
        "locked" | "server_not_stopped" | "conflict" | "server_error" | "service_error"
        | "maintenance" | "unavailable" | "timeout" | "bad_gateway" | "robot_unavailable"
        | "resource_locked" => ErrorClass::Transient,
        _ => class_of_status(status),
    };
    (class, format!("{}: {}", error.code, error.message))
}

impl HetznerCloud {
    /// The project behind `account`, with its token read through `env`.
    ///
    /// # Errors
    /// When the token's environment variable is not set (the message names the variable).
    pub fn new(
        account: &ProviderAccount,
        limiter: Arc<RateLimiter>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<HetznerCloud, String> {
        let token = credential(account, "token_env", "HCLOUD_TOKEN", env)?;
        let base = account
            .endpoint
            .clone()
            .or_else(|| env("HCLOUD_ENDPOINT").filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let api = Api::new(ApiConfig {
            base: versioned_base(&base, VersionPath::OnBareHost("v1")),
            module: "hetzner",
            limiter,
            timeout: account.timeout.unwrap_or(Duration::from_secs(30)),
            authorize: bearer(&token),
            secrets: vec![token.clone()],
            read_error,
            reset: ResetMeans::FullRecovery,
        })
        .map_err(|e| e.message)?;
        Ok(HetznerCloud {
            api,
            // Actions finish in seconds; a new server may be missing from lists for a moment.
            policy: Policy::api(account, Duration::from_secs(2), Duration::from_secs(10)),
        })
    }

    async fn list(&self, selector: Option<String>, name: Option<String>) -> Result<Vec<Server>> {
        let mut out = Vec::new();
        self.list_each(selector, name, &mut |s| out.push(s)).await?;
        Ok(out)
    }

    /// The servers `selector` and `name` select, each handed to `sink` as its page arrives;
    /// how many there were.
    async fn list_each(
        &self,
        selector: Option<String>,
        name: Option<String>,
        sink: &mut (dyn FnMut(Server) + Send),
    ) -> Result<usize> {
        let mut n = 0;
        let mut page = 1;
        loop {
            let mut query = vec![
                ("per_page", PAGE_SIZE.to_string()),
                ("page", page.to_string()),
            ];
            if let Some(s) = &selector {
                query.push(("label_selector", s.clone()));
            }
            if let Some(n) = &name {
                query.push(("name", n.clone()));
            }
            let (list, _): (ServerList, _) =
                self.api.json(Method::GET, "/servers", &query, None).await?;
            n += list.servers.len();
            list.servers
                .into_iter()
                .map(HServer::into_server)
                .for_each(&mut *sink);
            match list.meta.and_then(|m| m.pagination.next_page) {
                Some(next) if next > page => page = next,
                _ => return Ok(n),
            }
        }
    }

    /// One server as the API shows it; `None` when it does not exist.
    async fn fetch(&self, server_id: &str) -> Result<Option<HServer>> {
        let id = numeric_id("hetzner", "server", server_id)?;
        let path = format!("/servers/{id}");
        let read = self
            .api
            .json::<OneServer>(Method::GET, &path, &[], None)
            .await;
        Ok(super::found(read)?.map(|(s, _)| s.server))
    }

    async fn action(&self, server_id: &str, command: &str) -> Result<Accepted> {
        self.action_with(server_id, command, None).await
    }

    async fn action_with(
        &self,
        server_id: &str,
        command: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Accepted> {
        let id = numeric_id("hetzner", "server", server_id)?;
        let path = format!("/servers/{id}/actions/{command}");
        let (a, rid): (OneAction, _) = self.api.json(Method::POST, &path, &[], body).await?;
        Ok(Accepted {
            action_id: Some(a.action.id.to_string()),
            details: request_details(rid),
        })
    }

    async fn do_rebuild(&self, server_id: &str, request: &CreateRequest) -> Result<super::Rebuilt> {
        let id = numeric_id("hetzner", "server", server_id)?;
        // Registered keys cannot be given to a rebuild: public keys go in as cloud-init
        // again (the server's earlier user data would be reused otherwise).
        let (public_keys, _) = split_ssh_keys(&request.ssh_keys);
        let mut body = json!({ "image": request.image });
        if let Some(user_data) = cloud_init(&public_keys) {
            body["user_data"] = json!(user_data);
        }
        let path = format!("/servers/{id}/actions/rebuild");
        let (r, rid): (RebuildResponse, _) =
            self.api.json(Method::POST, &path, &[], Some(&body)).await?;
        Ok(super::Rebuilt {
            accepted: Accepted {
                action_id: Some(r.action.id.to_string()),
                details: request_details(rid),
            },
            root_password: r.root_password.map(SecretString::new),
        })
    }

    async fn rebuild_since(
        &self,
        server_id: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>> {
        let id = numeric_id("hetzner", "server", server_id)?;
        let path = format!("/servers/{id}/actions");
        let query = [
            ("sort", "id:desc".to_owned()),
            ("per_page", "25".to_owned()),
        ];
        let (list, _): (ActionList, _) = self.api.json(Method::GET, &path, &query, None).await?;
        Ok(list
            .actions
            .into_iter()
            .find(|a| {
                a.command == "rebuild_server"
                    && a.started
                        .is_some_and(|t| t >= since - super::ACTION_CLOCK_SLACK)
            })
            .map(|a| a.id.to_string()))
    }

    async fn do_create(&self, request: &CreateRequest) -> Result<Created> {
        let ProductConfig::Hetzner {
            server_type,
            enable_ipv4,
            enable_ipv6,
            ..
        } = &request.config
        else {
            return Err(ProviderError::new(
                ErrorClass::Invalid,
                format!(
                    "product `{}` has no hetzner configuration",
                    request.product_id
                ),
            ));
        };
        let (public_keys, registered) = split_ssh_keys(&request.ssh_keys);
        let mut body = json!({
            "name": request.name,
            "server_type": server_type,
            "image": request.image,
            "location": request.location,
            "start_after_create": true,
            "labels": {
                (INSTANCE_LABEL): request.instance_id.to_string(),
                "provisioner-product": request.product_id,
            },
            "public_net": {"enable_ipv4": enable_ipv4, "enable_ipv6": enable_ipv6},
        });
        if !registered.is_empty() {
            body["ssh_keys"] = json!(registered);
        }
        if let Some(user_data) = cloud_init(&public_keys) {
            body["user_data"] = json!(user_data);
        }
        let (created, rid): (CreateResponse, _) = self
            .api
            .json(Method::POST, "/servers", &[], Some(&body))
            .await?;
        Ok(Created {
            server: created.server.into_server(),
            action_id: Some(created.action.id.to_string()),
            root_password: created.root_password.map(SecretString::new),
            details: request_details(rid),
        })
    }
}

impl Provider for HetznerCloud {
    fn module(&self) -> Module {
        Module::Hetzner
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
            let id = numeric_id("hetzner", "action", action_id)?;
            let path = format!("/actions/{id}");
            let (a, _): (OneAction, _) = self.api.json(Method::GET, &path, &[], None).await?;
            Ok(match a.action.status.as_str() {
                "success" => Progress::Succeeded,
                "error" => Progress::Failed(a.action.error.map_or_else(
                    || "the action failed".to_owned(),
                    |e| format!("{}: {}", e.code, e.message),
                )),
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
        async move { Ok(self.fetch(server_id).await?.map(HServer::into_server)) }.boxed()
    }

    fn claim<'a>(&'a self, call: Call<'a>, server_id: &'a str) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let Some(server) = self.fetch(server_id).await? else {
                return Err(ProviderError::new(
                    ErrorClass::NotFound,
                    format!("hetzner: server {server_id} does not exist"),
                ));
            };
            // The labels sent replace the server's whole set: keep the others.
            let mut labels = server.labels;
            let value = call.instance.id.to_string();
            let before = labels.insert(INSTANCE_LABEL.to_owned(), value.clone());
            if before.as_deref() == Some(value.as_str()) {
                return Ok(Accepted::default());
            }
            let path = format!("/servers/{}", server.id);
            let body = json!({ "labels": labels });
            let (_, rid): (OneServer, _) =
                self.api.json(Method::PUT, &path, &[], Some(&body)).await?;
            Ok(Accepted {
                action_id: None,
                details: json!({
                    "labelled": {INSTANCE_LABEL: value},
                    "replaced": before,
                    "request_id": rid,
                }),
            })
        }
        .boxed()
    }

    fn find<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Vec<Server>>> {
        async move {
            let id = call.instance.id;
            let labelled = self
                .list(Some(format!("{INSTANCE_LABEL}=={id}")), None)
                .await?;
            if !labelled.is_empty() {
                return Ok(labelled);
            }
            // A server with the instance's name but without the label (labels edited by
            // hand) is still ours: the name is unique per project and derived from the id.
            self.list(None, Some(super::server_name(id))).await
        }
        .boxed()
    }

    fn list_owned(&self) -> BoxFuture<'_, Result<Vec<Server>>> {
        self.list(Some(INSTANCE_LABEL.to_owned()), None).boxed()
    }

    fn list_owned_each<'a>(
        &'a self,
        sink: &'a mut (dyn FnMut(Server) + Send),
    ) -> BoxFuture<'a, Result<usize>> {
        self.list_each(Some(INSTANCE_LABEL.to_owned()), None, sink)
            .boxed()
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
        self.action(server_id, if hard { "poweroff" } else { "shutdown" })
            .boxed()
    }

    fn power_on<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.action(server_id, "poweron").boxed()
    }

    fn reboot<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        hard: bool,
    ) -> BoxFuture<'a, Result<Accepted>> {
        self.action(server_id, if hard { "reset" } else { "reboot" })
            .boxed()
    }

    fn resize<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        request: &'a ResizeRequest,
    ) -> BoxFuture<'a, Result<Accepted>> {
        let upgrade_disk = matches!(
            request.config,
            ProductConfig::Hetzner {
                upgrade_disk: true,
                ..
            }
        );
        let body = json!({ "server_type": request.plan, "upgrade_disk": upgrade_disk });
        async move {
            self.action_with(server_id, "change_type", Some(&body))
                .await
        }
        .boxed()
    }

    fn rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        request: &'a CreateRequest,
    ) -> BoxFuture<'a, Result<super::Rebuilt>> {
        self.do_rebuild(server_id, request).boxed()
    }

    fn find_rebuild<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        self.rebuild_since(server_id, since).boxed()
    }

    fn delete<'a>(
        &'a self,
        _call: Call<'a>,
        server_id: &'a str,
    ) -> BoxFuture<'a, Result<Accepted>> {
        async move {
            let id = numeric_id("hetzner", "server", server_id)?;
            let path = format!("/servers/{id}");
            let (a, rid): (OneAction, _) = self.api.json(Method::DELETE, &path, &[], None).await?;
            Ok(Accepted {
                action_id: Some(a.action.id.to_string()),
                details: request_details(rid),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_decide_the_class() {
        let body = br#"{"error":{"code":"uniqueness_error","message":"server name is already used","details":{"fields":[{"name":"name"}]}}}"#;
        assert_eq!(
            read_error(StatusCode::CONFLICT, body),
            (
                ErrorClass::AlreadyExists,
                "uniqueness_error: server name is already used".to_owned()
            )
        );
        let locked = br#"{"error":{"code":"locked","message":"server is locked","details":null}}"#;
        assert_eq!(
            read_error(StatusCode::LOCKED, locked).0,
            ErrorClass::Transient
        );
        assert_eq!(
            read_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>").0,
            ErrorClass::Transient
        );
    }
}
