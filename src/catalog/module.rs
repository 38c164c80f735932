//! What each provider module requires of its accounts and of the products sold on them.
//!
//! | module | credentials (environment variables) | default rate limit | product `config` |
//! |---|---|---|---|
//! | `sim` | none | unlimited | optional `size` |
//! | `manual` | none | none (no API) | optional `instructions` |
//! | `hetzner` | `token_env` (`HCLOUD_TOKEN`) | 3600/h | `server_type`, `enable_ipv4`, `enable_ipv6`, `upgrade_disk` |
//! | `digitalocean` | `token_env` (`DIGITALOCEAN_TOKEN`) | 5000/h and 250/min | `size`, `ipv6`, `monitoring`, `backups`, `resize_disk` |
//! | `ovh` | `application_key_env`, `application_secret_env`, `consumer_key_env` (`OVH_*`) | 60/min | `hardware` (from the account's `pool`) |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::diag::Diagnostic;
use super::fields::{
    boolean, did_you_mean, integer, integer_u32, join, number, one_of, slug, string, string_list,
    Cx, Fields,
};
use super::model::{
    AccountSettings, Credential, Module, Origin, OsImage, PoolServer, ProductConfig,
    ProviderAccount, RateLimit, SimSettings,
};
use super::parse::{module_of_config_key, read_id};
use super::yaml::{shorten, Node, Pos, Value};

/// OVH API endpoint names, as python-ovh and go-ovh accept them.
pub const OVH_ENDPOINTS: &[&str] = &[
    "ovh-eu",
    "ovh-ca",
    "ovh-us",
    "kimsufi-eu",
    "kimsufi-ca",
    "soyoustart-eu",
    "soyoustart-ca",
];

/// The credential fields a module reads, with their conventional environment variables.
pub fn credential_fields(module: Module) -> &'static [(&'static str, &'static str)] {
    match module {
        Module::Sim | Module::Manual => &[],
        Module::Hetzner => &[("token_env", "HCLOUD_TOKEN")],
        Module::DigitalOcean => &[("token_env", "DIGITALOCEAN_TOKEN")],
        Module::Ovh => &[
            ("application_key_env", "OVH_APPLICATION_KEY"),
            ("application_secret_env", "OVH_APPLICATION_SECRET"),
            ("consumer_key_env", "OVH_CONSUMER_KEY"),
        ],
    }
}

/// The request budget a module gets when the account does not set `rate_limit`: the provider's
/// documented limit (Hetzner 3600/h; DigitalOcean 5000/h and 250/min), a conservative 60/min for
/// OVH, which publishes none, and no limit for the simulated cloud.
pub fn default_rate_limit(module: Module) -> RateLimit {
    match module {
        Module::Sim | Module::Manual => RateLimit::default(),
        Module::Hetzner => RateLimit {
            requests_per_hour: Some(3600),
            requests_per_minute: None,
        },
        Module::DigitalOcean => RateLimit {
            requests_per_hour: Some(5000),
            requests_per_minute: Some(250),
        },
        Module::Ovh => RateLimit {
            requests_per_hour: None,
            requests_per_minute: Some(60),
        },
    }
}

/// Reads a `ProviderAccount` document (the caller has checked `apiVersion` and `kind`).
pub(super) fn account(
    f: &mut Fields,
    origin: Origin,
    cx: &mut Cx,
    env_is_set: &dyn Fn(&str) -> bool,
) -> (Option<(String, Pos)>, Option<ProviderAccount>) {
    let id = read_id(f, cx);
    let module = f
        .required("module", cx)
        .and_then(|n| one_of(n, "module", Module::ALL, Module::as_str, cx));
    let endpoint_node = f.optional("endpoint");
    let credentials_node = f.optional("credentials");
    let rate_node = f.optional("rate_limit");
    let pool_key = f.key_pos("pool");
    let pool_node = f.optional("pool");
    let sim_key = f.key_pos("simulation");
    let sim_node = f.optional("simulation");
    let poll_node = f.optional("poll_seconds");
    let timeout_node = f.optional("timeout_seconds");
    let graceful_node = f.optional("graceful_timeout_seconds");
    let stuck_node = f.optional("stuck_timeout_seconds");
    let Some(module) = module else {
        return (id, None);
    };
    let account_id = id.as_ref().map_or("?", |(s, _)| s.as_str()).to_owned();
    let id_pos = id.as_ref().map_or(f.pos(), |(_, p)| *p);

    let endpoint = endpoint(module, endpoint_node, cx);
    let credentials = credentials(
        module,
        credentials_node,
        id_pos,
        &account_id,
        cx,
        env_is_set,
    );
    let rate_limit = rate_limit(module, rate_node, cx);
    let settings = match module {
        Module::Sim => sim_node
            .map_or(Some(SimSettings::default()), |n| sim_settings(n, cx))
            .map(AccountSettings::Sim),
        Module::Ovh => match pool_node {
            Some(n) => pool(n, cx).map(|pool| AccountSettings::Ovh { pool }),
            None => {
                cx.error(
                    pool_key.unwrap_or(f.pos()),
                    "an ovh account needs a non-empty `pool`: the dedicated servers it owns and \
                     may give to customers",
                );
                None
            }
        },
        _ => Some(AccountSettings::None),
    };
    if module != Module::Ovh {
        if let Some(pos) = pool_key {
            cx.error(
                pos,
                format!("`pool` applies to ovh accounts only; this account uses module `{module}`"),
            );
        }
    }
    if module != Module::Sim {
        if let Some(pos) = sim_key {
            cx.error(
                pos,
                format!(
                    "`simulation` applies to sim accounts only; this account uses module `{module}`"
                ),
            );
        }
    }
    let poll = api_seconds(module, poll_node, "poll_seconds", 0.05, 3600.0, cx);
    let timeout = api_seconds(module, timeout_node, "timeout_seconds", 0.1, 600.0, cx);
    let graceful_timeout = api_seconds(
        module,
        graceful_node,
        "graceful_timeout_seconds",
        0.1,
        3600.0,
        cx,
    );
    let stuck_timeout = api_seconds(
        module,
        stuck_node,
        "stuck_timeout_seconds",
        1.0,
        86_400.0,
        cx,
    );
    let account = (|| {
        Some(ProviderAccount {
            id: id.clone()?.0,
            module,
            endpoint: endpoint?,
            credentials: credentials?,
            rate_limit: rate_limit?,
            settings: settings?,
            poll: poll?,
            timeout: timeout?,
            graceful_timeout: graceful_timeout?,
            stuck_timeout: stuck_timeout?,
            origin,
        })
    })();
    (id, account)
}

/// An optional number of seconds that only API modules use.
fn api_seconds(
    module: Module,
    node: Option<&Node>,
    key: &str,
    min: f64,
    max: f64,
    cx: &mut Cx,
) -> Option<Option<std::time::Duration>> {
    let Some(node) = node else {
        return Some(None);
    };
    if matches!(module, Module::Sim | Module::Manual) {
        cx.error(
            node.pos,
            format!("`{key}` does not apply to `{module}` accounts, which call no API"),
        );
        return None;
    }
    number(node, key, min, max, cx).map(|s| Some(std::time::Duration::from_secs_f64(s)))
}

fn endpoint(module: Module, node: Option<&Node>, cx: &mut Cx) -> Option<Option<String>> {
    let Some(node) = node else {
        return Some(None);
    };
    let value = string(node, "endpoint", cx)?;
    match module {
        Module::Sim | Module::Manual => {
            cx.error(
                node.pos,
                format!("`endpoint` does not apply to `{module}` accounts, which call no API"),
            );
            None
        }
        Module::Ovh if OVH_ENDPOINTS.contains(&value.as_str()) => Some(Some(value)),
        _ if is_http_url(&value) => Some(Some(value.trim_end_matches('/').to_owned())),
        _ => {
            let expected = if module == Module::Ovh {
                format!("one of {} or an http(s) URL", OVH_ENDPOINTS.join(", "))
            } else {
                "an http(s) URL such as https://api.example.com/v1".to_owned()
            };
            cx.error(
                node.pos,
                format!("`endpoint` must be {expected}, found `{}`", shorten(&value)),
            );
            None
        }
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !s.chars().any(char::is_whitespace)
    })
}

/// Whether a string is a conventional environment variable name. Upper case only: besides being
/// the convention, it keeps a pasted (mixed-case) token from passing as a variable name.
///
/// ```
/// use provisioner::catalog::module::is_env_name;
/// assert!(is_env_name("HCLOUD_TOKEN"));
/// assert!(!is_env_name("hcloud token"));
/// assert!(!is_env_name("Xy7fQ2pLmN0v")); // looks like a pasted secret
/// ```
pub fn is_env_name(s: &str) -> bool {
    s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn credentials(
    module: Module,
    node: Option<&Node>,
    id_pos: Pos,
    account_id: &str,
    cx: &mut Cx,
    env_is_set: &dyn Fn(&str) -> bool,
) -> Option<Vec<Credential>> {
    let fields = credential_fields(module);
    if fields.is_empty() {
        if let Some(n) = node {
            let empty = matches!(&n.value, Value::Map(e) if e.is_empty());
            if !empty {
                cx.error(
                    n.pos,
                    format!("`{module}` accounts take no credentials; remove `credentials`"),
                );
                return None;
            }
        }
        return Some(Vec::new());
    }
    let mut reader = match node {
        Some(n) => Some(Fields::new(n, "credentials", "ProviderAccount", cx)?),
        None => None,
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (field, default) in fields {
        let written = reader.as_mut().and_then(|r| r.optional(field));
        let path = join("credentials", field);
        let (env, pos) = match written {
            Some(n) => {
                let Some(name) = n.scalar().map(|s| s.text.clone()) else {
                    cx.error(
                        n.pos,
                        format!(
                            "`{path}` must name an environment variable, found {}",
                            n.describe()
                        ),
                    );
                    ok = false;
                    continue;
                };
                if !is_env_name(&name) {
                    // The value is not echoed: it may be a secret pasted in the wrong place.
                    cx.error(
                        n.pos,
                        format!(
                            "`{path}` must name an environment variable (upper-case letters, \
                             digits and `_`, not starting with a digit); the secret itself \
                             belongs in the environment, never in the catalog"
                        ),
                    );
                    ok = false;
                    continue;
                }
                (name, n.pos)
            }
            None => ((*default).to_owned(), id_pos),
        };
        if !env_is_set(&env) {
            cx.warning(
                pos,
                format!(
                    "environment variable `{env}` (`{path}` of account `{account_id}`) is not \
                     set; the account cannot authenticate until it is"
                ),
            );
        }
        out.push(Credential { field, env });
    }
    if let Some(r) = reader {
        r.finish_with(cx, |key| {
            (!key.ends_with("_env")).then(|| {
                format!(
                    "`credentials.{}` is not allowed: credentials name environment variables \
                     (`{}: {}`), never the secret itself",
                    shorten(key),
                    fields[0].0,
                    fields[0].1
                )
            })
        });
    }
    ok.then_some(out)
}

fn rate_limit(module: Module, node: Option<&Node>, cx: &mut Cx) -> Option<RateLimit> {
    let Some(node) = node else {
        return Some(default_rate_limit(module));
    };
    if module == Module::Manual {
        cx.error(
            node.pos,
            "`manual` accounts make no API calls; remove `rate_limit`",
        );
        return None;
    }
    let mut f = Fields::new(node, "rate_limit", "ProviderAccount", cx)?;
    let per_hour = f
        .optional("requests_per_hour")
        .map(|n| integer_u32(n, "rate_limit.requests_per_hour", 1, cx));
    let per_minute = f
        .optional("requests_per_minute")
        .map(|n| integer_u32(n, "rate_limit.requests_per_minute", 1, cx));
    let pos = f.pos();
    f.finish(cx);
    if per_hour.is_none() && per_minute.is_none() {
        cx.error(
            pos,
            "`rate_limit` must set `requests_per_hour`, `requests_per_minute` or both",
        );
        return None;
    }
    Some(RateLimit {
        requests_per_hour: per_hour.map_or(Some(None), |v| v.map(Some))?,
        requests_per_minute: per_minute.map_or(Some(None), |v| v.map(Some))?,
    })
}

fn sim_settings(node: &Node, cx: &mut Cx) -> Option<SimSettings> {
    let mut f = Fields::new(node, "simulation", "ProviderAccount", cx)?;
    let d = SimSettings::default();
    let boot = f
        .optional("boot_seconds")
        .map_or(Some(d.boot_seconds), |n| {
            number(n, "simulation.boot_seconds", 0.0, 3600.0, cx)
        });
    let action = f
        .optional("action_seconds")
        .map_or(Some(d.action_seconds), |n| {
            number(n, "simulation.action_seconds", 0.0, 3600.0, cx)
        });
    let latency = f.optional("latency_ms").map_or(Some(d.latency_ms), |n| {
        integer(n, "simulation.latency_ms", 0, cx)
    });
    let fault = f.optional("fault_rate").map_or(Some(d.fault_rate), |n| {
        number(n, "simulation.fault_rate", 0.0, 1.0, cx)
    });
    let capacity = f
        .optional("capacity")
        .map(|n| integer(n, "simulation.capacity", 1, cx));
    f.finish(cx);
    Some(SimSettings {
        boot_seconds: boot?,
        action_seconds: action?,
        latency_ms: latency?,
        fault_rate: fault?,
        capacity: capacity.map_or(Some(None), |v| v.map(Some))?,
    })
}

fn pool(node: &Node, cx: &mut Cx) -> Option<Vec<PoolServer>> {
    let Value::Seq(items) = &node.value else {
        cx.error(
            node.pos,
            format!(
                "`pool` must be a list of servers, found {}",
                node.describe()
            ),
        );
        return None;
    };
    if items.is_empty() {
        cx.error(
            node.pos,
            "`pool` must list at least one server: an ovh account allocates from the \
             dedicated servers it owns",
        );
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut seen: HashMap<String, Pos> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("pool[{i}]");
        let Some(mut f) = Fields::new(item, &path, "ProviderAccount", cx) else {
            ok = false;
            continue;
        };
        let service = f.required("service_name", cx).and_then(|n| {
            let s = string(n, &join(&path, "service_name"), cx)?;
            if s.chars().any(char::is_whitespace) {
                cx.error(
                    n.pos,
                    format!("`{path}.service_name` must not contain spaces"),
                );
                return None;
            }
            if let Some(first) = seen.get(&s) {
                cx.error(
                    n.pos,
                    format!(
                        "server `{}` is listed twice in the pool (first at line {}, column {})",
                        shorten(&s),
                        first.line,
                        first.column
                    ),
                );
                return None;
            }
            seen.insert(s.clone(), n.pos);
            Some(s)
        });
        let hardware = f
            .required("hardware", cx)
            .and_then(|n| slug(n, &join(&path, "hardware"), cx));
        let location = f
            .optional("location")
            .map(|n| slug(n, &join(&path, "location"), cx));
        f.finish(cx);
        match (
            service,
            hardware,
            location.map_or(Some(None), |v| v.map(Some)),
        ) {
            (Some(service_name), Some(hardware), Some(location)) => out.push(PoolServer {
                service_name,
                hardware,
                location,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// A server may belong to one pool only: two accounts listing it could give it to two customers.
pub(super) fn check_pools(
    accounts: &BTreeMap<String, ProviderAccount>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut owner: HashMap<&str, &ProviderAccount> = HashMap::new();
    // Accounts in file order, so the later definition is the one reported.
    let mut ordered: Vec<&ProviderAccount> = accounts.values().collect();
    ordered.sort_by(|a, b| a.origin.cmp(&b.origin));
    for account in ordered {
        let AccountSettings::Ovh { pool } = &account.settings else {
            continue;
        };
        for server in pool {
            match owner.get(server.service_name.as_str()) {
                Some(first) => {
                    let mut cx = Cx {
                        file: &account.origin.file,
                        diagnostics,
                    };
                    cx.error(
                        Pos {
                            line: account.origin.line,
                            column: account.origin.column,
                        },
                        format!(
                            "server `{}` is in the pools of both `{}` ({}) and `{}`; a server \
                             may belong to one pool only",
                            server.service_name, first.id, first.origin, account.id
                        ),
                    );
                }
                None => {
                    owner.insert(&server.service_name, account);
                }
            }
        }
    }
}

const PATH: &str = "provisioning.config";

/// Checks a product's `provisioning.config` against its account's module.
pub(super) fn product_config(
    account: &ProviderAccount,
    node: Option<&Node>,
    provisioning_pos: Pos,
    locations: &[(String, Pos)],
    cx: &mut Cx,
) -> Option<ProductConfig> {
    let module = account.module;
    let mut f = match node {
        Some(n) => Some(Fields::new(n, PATH, "Product", cx)?),
        None => None,
    };
    let needs = |key: &str, cx: &mut Cx| {
        cx.error(
            provisioning_pos,
            format!(
                "missing required field `{key}` in `{PATH}`: account `{}` uses module `{module}`",
                account.id
            ),
        );
    };
    let config = match module {
        Module::Sim => {
            let size = f
                .as_mut()
                .and_then(|f| f.optional("size"))
                .map(|n| string(n, &join(PATH, "size"), cx));
            size.map_or(Some(None), |v| v.map(Some))
                .map(|size| ProductConfig::Sim { size })
        }
        Module::Manual => {
            let instructions = f
                .as_mut()
                .and_then(|f| f.optional("instructions"))
                .map(|n| string(n, &join(PATH, "instructions"), cx));
            instructions
                .map_or(Some(None), |v| v.map(Some))
                .map(|instructions| ProductConfig::Manual { instructions })
        }
        Module::Hetzner => {
            let server_type = match f.as_mut() {
                Some(f) => f
                    .required("server_type", cx)
                    .and_then(|n| string(n, &join(PATH, "server_type"), cx)),
                None => {
                    needs("server_type", cx);
                    None
                }
            };
            let ipv4 = flag(f.as_mut(), "enable_ipv4", true, cx);
            let ipv6 = flag(f.as_mut(), "enable_ipv6", true, cx);
            let upgrade_disk = flag(f.as_mut(), "upgrade_disk", false, cx);
            Some(ProductConfig::Hetzner {
                server_type: server_type?,
                enable_ipv4: ipv4?,
                enable_ipv6: ipv6?,
                upgrade_disk: upgrade_disk?,
            })
        }
        Module::DigitalOcean => {
            let size = match f.as_mut() {
                Some(f) => f
                    .required("size", cx)
                    .and_then(|n| string(n, &join(PATH, "size"), cx)),
                None => {
                    needs("size", cx);
                    None
                }
            };
            let ipv6 = flag(f.as_mut(), "ipv6", false, cx);
            let monitoring = flag(f.as_mut(), "monitoring", false, cx);
            let backups = flag(f.as_mut(), "backups", false, cx);
            let resize_disk = flag(f.as_mut(), "resize_disk", false, cx);
            Some(ProductConfig::DigitalOcean {
                size: size?,
                ipv6: ipv6?,
                monitoring: monitoring?,
                backups: backups?,
                resize_disk: resize_disk?,
            })
        }
        Module::Ovh => {
            let hardware = match f.as_mut() {
                Some(f) => f
                    .required("hardware", cx)
                    .and_then(|n| ovh_hardware(account, n, locations, cx)),
                None => {
                    needs("hardware", cx);
                    None
                }
            };
            hardware.map(|hardware| ProductConfig::Ovh { hardware })
        }
    };
    if let Some(f) = f {
        let expected: Vec<&str> = match module {
            Module::Sim => vec!["size"],
            Module::Manual => vec!["instructions"],
            Module::Hetzner => vec!["server_type", "enable_ipv4", "enable_ipv6", "upgrade_disk"],
            Module::DigitalOcean => vec!["size", "ipv6", "monitoring", "backups", "resize_disk"],
            Module::Ovh => vec!["hardware"],
        };
        f.finish_with(cx, |key| {
            let other = module_of_config_key(key).filter(|m| *m != module)?;
            Some(format!(
                "`{PATH}.{key}` is a {other} setting, but account `{}` uses module `{module}`, \
                 which expects: {}",
                account.id,
                expected.join(", ")
            ))
        });
    }
    config
}

/// Checks the provider images of a product's `os_images` against what its module's API
/// takes: DigitalOcean image slugs (`ubuntu-24-04-x64`) or numeric ids, OVH installation
/// templates (`debian12_64`). A name the provider would refuse is a warning, with the mapping
/// that fixes it.
pub(super) fn os_images(account: &ProviderAccount, images: &[(OsImage, Pos)], cx: &mut Cx) {
    for (os, pos) in images {
        let image = os.image.as_str();
        let problem = match account.module {
            Module::DigitalOcean
                if !image.chars().all(|c| c.is_ascii_digit())
                    && !image
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                Some("DigitalOcean image slugs are lower-case letters, digits and `-` (`ubuntu-24-04-x64`), or a numeric image id")
            }
            Module::Ovh if !image.contains('_') => Some(
                "OVH installation templates are named like `debian12_64` (GET /dedicated/server/{serviceName}/install/compatibleTemplates lists them)",
            ),
            _ => None,
        };
        if let Some(problem) = problem {
            cx.warning(
                *pos,
                format!(
                    "OS image `{}` of account `{}` (module {}) is not a name the provider takes: {problem}; \
                     map the name customers order to the provider's image with `{{name: {}, image: …}}`",
                    shorten(image),
                    account.id,
                    account.module,
                    shorten(&os.name)
                ),
            );
        }
    }
}

fn flag(f: Option<&mut Fields>, key: &'static str, default: bool, cx: &mut Cx) -> Option<bool> {
    match f.and_then(|f| f.optional(key)) {
        Some(n) => boolean(n, &join(PATH, key), cx),
        None => Some(default),
    }
}

fn ovh_hardware(
    account: &ProviderAccount,
    node: &Node,
    locations: &[(String, Pos)],
    cx: &mut Cx,
) -> Option<Vec<String>> {
    let path = join(PATH, "hardware");
    let items: Vec<(String, Pos)> = match &node.value {
        Value::Seq(_) => string_list(node, &path, cx)?,
        _ => vec![(string(node, &path, cx)?, node.pos)],
    };
    if items.is_empty() {
        cx.error(
            node.pos,
            format!("`{path}` must name at least one hardware"),
        );
        return None;
    }
    let AccountSettings::Ovh { pool } = &account.settings else {
        return None;
    };
    let available: BTreeSet<&str> = pool.iter().map(|s| s.hardware.as_str()).collect();
    let names: Vec<&str> = available.iter().copied().collect();
    let mut ok = true;
    for (hw, pos) in &items {
        if available.contains(hw.as_str()) {
            continue;
        }
        ok = false;
        let mut message = format!(
            "`{path}` names `{}`, which no server in the pool of account `{}` has; the pool has: {}",
            shorten(hw),
            account.id,
            names.join(", ")
        );
        if let Some(close) = did_you_mean(hw, &names) {
            message.push_str(&format!("; did you mean `{close}`?"));
        }
        cx.error(*pos, message);
    }
    if !ok {
        return None;
    }
    // Products sold in a location with no matching server will keep orders waiting there.
    for (location, pos) in locations {
        let located: Vec<&PoolServer> = pool
            .iter()
            .filter(|s| items.iter().any(|(hw, _)| *hw == s.hardware) && s.location.is_some())
            .collect();
        if !located.is_empty()
            && !located
                .iter()
                .any(|s| s.location.as_deref() == Some(location.as_str()))
        {
            cx.warning(
                *pos,
                format!(
                    "no server of the product's hardware in the pool of `{}` is in location \
                     `{location}`; orders there will wait for one",
                    account.id
                ),
            );
        }
    }
    Some(items.into_iter().map(|(s, _)| s).collect())
}
