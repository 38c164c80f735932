//! A fake OVH API (`/1.0`): `/auth/time`, `/dedicated/server`, `/dedicated/server/{sn}` (GET,
//! PUT `bootId`), `.../boot?bootType=`, `.../reboot`, `.../reinstall`, `.../task/{id}`.
//! Every authenticated request's signature is checked exactly as OVH documents it; the fake's
//! clock is off from the machine's, so a client that does not correct its drift is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::{kind_of, serve, unix_now, Ledger};

pub const APP_KEY: &str = "fakeAppKey";
pub const APP_SECRET: &str = "fakeAppSecret";
pub const CONSUMER_KEY: &str = "fakeConsumerKey";
/// How far the fake's clock is ahead of the machine's.
pub const SKEW: i64 = 300;
const HARDDISK: i64 = 1;
const RESCUE: i64 = 2;

#[derive(Debug)]
struct OServer {
    ip: String,
    boot_id: i64,
    power: String,
    os: Option<String>,
    hostname: Option<String>,
}

#[derive(Debug)]
struct OTask {
    id: i64,
    function: String,
    server: String,
    done_at: Instant,
}

struct Inner {
    servers: BTreeMap<String, OServer>,
    tasks: HashMap<i64, OTask>,
    next_task: i64,
    task_time: Duration,
    ledger: Ledger,
    started: Instant,
    /// Instances whose hostname a reinstall carried, in order (`provisioner-<id>`).
    pub installs: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct OvhFake {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
}

impl OvhFake {
    pub async fn start(servers: &[&str], task_time: Duration) -> OvhFake {
        let servers = servers
            .iter()
            .enumerate()
            .map(|(n, sn)| {
                (
                    (*sn).to_owned(),
                    OServer {
                        ip: format!("198.51.100.{}", n + 10),
                        boot_id: HARDDISK,
                        power: "poweron".into(),
                        os: None,
                        hostname: None,
                    },
                )
            })
            .collect();
        let inner = Arc::new(Mutex::new(Inner {
            servers,
            tasks: HashMap::new(),
            next_task: 5000,
            task_time,
            ledger: Ledger::default(),
            started: Instant::now(),
            installs: Vec::new(),
        }));
        let state = inner.clone();
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { handle(state, req).await }
        });
        let addr = serve(router).await;
        OvhFake {
            inner,
            url: format!("http://{addr}/1.0"),
        }
    }

    pub fn ledger(&self) -> Ledger {
        self.inner.lock().unwrap().ledger.clone()
    }

    /// Reinstalls so far: (server, hostname).
    pub fn installs(&self) -> Vec<(String, String)> {
        self.inner.lock().unwrap().installs.clone()
    }

    /// What the server boots: `harddisk` or `rescue`.
    pub fn boot(&self, sn: &str) -> &'static str {
        if self.inner.lock().unwrap().servers[sn].boot_id == RESCUE {
            "rescue"
        } else {
            "harddisk"
        }
    }
}

/// OVH's documented signature.
pub fn expected_signature(method: &str, url: &str, body: &str, timestamp: &str) -> String {
    let s = format!("{APP_SECRET}+{CONSUMER_KEY}+{method}+{url}+{body}+{timestamp}");
    let digest = Sha1::digest(s.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("$1${hex}")
}

async fn handle(state: Arc<Mutex<Inner>>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let (status, value) = {
        let mut s = state.lock().unwrap();
        s.process(&parts.method, &parts.uri, &parts.headers, &bytes)
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("X-Ovh-QueryID", "EU.ext-1.fake")
        .body(Body::from(value.to_string()))
        .unwrap()
}

fn error(status: u16, code: &str, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(status).unwrap(),
        json!({"errorCode": code, "httpCode": status.to_string(), "message": message}),
    )
}

impl Inner {
    fn check_signature(
        &self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &str,
    ) -> Result<(), (StatusCode, Value)> {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        if h("x-ovh-application") != APP_KEY {
            return Err(error(403, "INVALID_KEY", "This application key is invalid"));
        }
        if h("x-ovh-consumer") != CONSUMER_KEY {
            return Err(error(
                403,
                "INVALID_CREDENTIAL",
                "This credential does not exist",
            ));
        }
        let ts = h("x-ovh-timestamp");
        let now = unix_now() as i64 + SKEW;
        match ts.parse::<i64>() {
            Ok(t) if (t - now).abs() <= 60 => {}
            _ => {
                return Err(error(
                    400,
                    "INVALID_TIMESTAMP",
                    "Timestamp is too old or too new",
                ))
            }
        }
        let host = h("host");
        let url = format!(
            "http://{host}{}",
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        if h("x-ovh-signature") != expected_signature(method.as_str(), &url, body, &ts) {
            return Err(error(400, "INVALID_SIGNATURE", "Invalid signature"));
        }
        Ok(())
    }

    fn task_json(&self, id: i64) -> Value {
        let t = &self.tasks[&id];
        let status = if Instant::now() >= t.done_at {
            "done"
        } else {
            "doing"
        };
        json!({"taskId": t.id, "function": t.function, "status": status, "comment": null,
               "startDate": "2026-11-21T10:00:00+01:00", "doneDate": null, "lastUpdate": null})
    }

    fn busy(&self, sn: &str) -> bool {
        self.tasks
            .values()
            .any(|t| t.server == sn && Instant::now() < t.done_at)
    }

    fn new_task(&mut self, sn: &str, function: &str) -> Value {
        let id = self.next_task;
        self.next_task += 1;
        let done_at = Instant::now() + self.task_time;
        self.tasks.insert(
            id,
            OTask {
                id,
                function: function.into(),
                server: sn.into(),
                done_at,
            },
        );
        self.task_json(id)
    }

    fn process(
        &mut self,
        method: &Method,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (StatusCode, Value) {
        self.ledger.requests += 1;
        let path = uri.path().to_owned();
        *self
            .ledger
            .by_kind
            .entry(kind_of(method.as_str(), &path))
            .or_default() += 1;
        let elapsed = self.started.elapsed();
        self.ledger.served_at.push(elapsed);
        let text = String::from_utf8_lossy(body).into_owned();
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        if segs == ["1.0", "auth", "time"] {
            return (StatusCode::OK, json!(unix_now() as i64 + SKEW));
        }
        if let Err(e) = self.check_signature(method, uri, headers, &text) {
            self.ledger.refused += 1;
            return e;
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let q: Vec<(String, String)> = uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        match (method.clone(), segs.as_slice()) {
            (Method::GET, ["1.0", "dedicated", "server"]) => (
                StatusCode::OK,
                json!(self.servers.keys().collect::<Vec<_>>()),
            ),
            (_, ["1.0", "dedicated", "server", sn, ..]) if !self.servers.contains_key(*sn) => {
                error(
                    404,
                    "NOT_FOUND",
                    &format!("The requested object (serviceName = {sn}) does not exist"),
                )
            }
            (Method::GET, ["1.0", "dedicated", "server", sn]) => {
                let s = &self.servers[*sn];
                (
                    StatusCode::OK,
                    json!({"name": sn, "ip": s.ip, "powerState": s.power, "state": "ok",
                    "bootId": s.boot_id, "datacenter": "gra1", "os": s.os, "monitoring": true,
                    "reverse": s.hostname}),
                )
            }
            (Method::PUT, ["1.0", "dedicated", "server", sn]) => {
                let Some(boot) = body["bootId"]
                    .as_i64()
                    .filter(|b| [HARDDISK, RESCUE].contains(b))
                else {
                    return error(400, "INVALID_ARGUMENT", "Invalid bootId");
                };
                self.servers.get_mut(*sn).unwrap().boot_id = boot;
                (StatusCode::OK, Value::Null)
            }
            (Method::GET, ["1.0", "dedicated", "server", _, "boot"]) => {
                let kind = q
                    .iter()
                    .find(|(k, _)| k == "bootType")
                    .map(|(_, v)| v.as_str());
                let ids: Vec<i64> = match kind {
                    Some("harddisk") => vec![HARDDISK],
                    Some("rescue") => vec![RESCUE],
                    None => vec![HARDDISK, RESCUE],
                    _ => vec![],
                };
                (StatusCode::OK, json!(ids))
            }
            (Method::POST, ["1.0", "dedicated", "server", sn, "reboot"]) => {
                if self.busy(sn) {
                    return error(409, "CONFLICT", "A task is already running on this server");
                }
                let sn = (*sn).to_owned();
                (StatusCode::OK, self.new_task(&sn, "hardReboot"))
            }
            (Method::POST, ["1.0", "dedicated", "server", sn, "reinstall"]) => {
                let Some(os) = body["operatingSystem"].as_str().map(str::to_owned) else {
                    return error(400, "INVALID_ARGUMENT", "operatingSystem is required");
                };
                if self.busy(sn) {
                    return error(409, "CONFLICT", "A task is already running on this server");
                }
                let sn = (*sn).to_owned();
                let hostname = body["customizations"]["hostname"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if let Some(id) = hostname
                    .strip_prefix("provisioner-")
                    .and_then(|i| i.parse().ok())
                {
                    *self.ledger.created_for.entry(id).or_default() += 1;
                }
                self.installs.push((sn.clone(), hostname.clone()));
                let s = self.servers.get_mut(&sn).unwrap();
                s.os = Some(os);
                s.hostname = Some(hostname);
                s.boot_id = HARDDISK;
                (StatusCode::OK, self.new_task(&sn, "reinstallServer"))
            }
            (Method::GET, ["1.0", "dedicated", "server", sn, "task", id]) => {
                match id
                    .parse::<i64>()
                    .ok()
                    .filter(|id| self.tasks.get(id).is_some_and(|t| t.server == *sn))
                {
                    Some(id) => (StatusCode::OK, self.task_json(id)),
                    None => error(404, "NOT_FOUND", "task not found"),
                }
            }
            _ => error(404, "NOT_FOUND", "no such endpoint"),
        }
    }
}
