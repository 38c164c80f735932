//! From located YAML documents to a checked [`Catalog`], reporting every error.
//!
//! Three passes: each document on its own (shape, types, ranges), then the whole catalog
//! (unique ids, products naming existing accounts), then each product's `provisioning.config`
//! against its account's module. A pass reports everything it finds; a later pass only looks at
//! definitions the earlier ones accepted, so one mistake is not reported three times.

use std::collections::{BTreeMap, HashMap};

use super::diag::{Diagnostic, Severity};
use super::fields::{
    boolean, decimal, did_you_mean, integer_u32, one_of, slug, string, string_list, Cx,
    DecimalRule, Fields,
};
use super::model::{
    Module, Origin, OsImage, Pricing, Product, ProductType, ProviderAccount, Provisioning,
    Revision, Specs, StorageType,
};
use super::module;
use super::notify::{self, EmailNotifier, WebhookEndpoint};
use super::revision;
use super::yaml::{self, shorten, Node, Pos};

/// The only `apiVersion` this version of provisioner reads.
pub const API_VERSION: &str = "provisioner/v1";

const KINDS: &[&str] = &[
    "Product",
    "ProviderAccount",
    "WebhookEndpoint",
    "EmailNotifier",
];

const MONEY: DecimalRule = DecimalRule {
    max_scale: 2,
    allow_zero: true,
};

/// One catalog file's name (as printed in diagnostics) and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as shown to people: the catalog directory joined with the relative path.
    pub name: String,
    /// The file's content.
    pub text: String,
}

/// The result of checking a set of files: products and accounts when there was no error, and
/// every diagnostic (errors and warnings) sorted by place.
pub struct Checked {
    /// Products by id; empty when there were errors.
    pub products: BTreeMap<String, Product>,
    /// Accounts by id; empty when there were errors.
    pub accounts: BTreeMap<String, ProviderAccount>,
    /// Webhook endpoints by id; empty when there were errors.
    pub webhooks: BTreeMap<String, WebhookEndpoint>,
    /// E-mail notifiers by id; empty when there were errors.
    pub notifiers: BTreeMap<String, EmailNotifier>,
    /// Every error and warning.
    pub diagnostics: Vec<Diagnostic>,
}

/// A product that passed the document pass; its config waits for its account.
struct ProductDraft {
    id: String,
    name: String,
    group: Option<String>,
    product_type: ProductType,
    description: String,
    specs: Specs,
    pricing: Pricing,
    locations: Vec<(String, Pos)>,
    os_images: Vec<(OsImage, Pos)>,
    features: Vec<String>,
    stock: Option<u32>,
    active: bool,
    origin: Origin,
}

/// A product's link to its account, checked in the last pass even when the rest of the product
/// has errors, so that a wrong account or config is reported in the same run.
struct ProductLink {
    account: (String, Pos),
    provisioning_pos: Pos,
    config: Option<Node>,
    locations: Vec<(String, Pos)>,
    os_images: Vec<(OsImage, Pos)>,
}

enum Definition {
    Product {
        /// `None` when the document had errors.
        draft: Option<Box<ProductDraft>>,
        /// `None` when `provisioning` itself was unreadable.
        link: Option<ProductLink>,
    },
    /// `None` when the document had errors.
    Account(Option<Box<ProviderAccount>>),
    /// `None` when the document had errors.
    Webhook(Option<Box<WebhookEndpoint>>),
    /// `None` when the document had errors.
    Notifier(Option<Box<EmailNotifier>>),
}

/// Checks every document of every file. `env_is_set` tells whether an environment variable is
/// set, so that missing credentials become warnings (injected so tests do not depend on the
/// machine's environment).
pub fn check(files: &[SourceFile], env_is_set: &(dyn Fn(&str) -> bool + Sync)) -> Checked {
    let mut diagnostics = Vec::new();

    // Pass 1: each document on its own, files spread over the available cores.
    let mut definitions: Vec<(usize, Pos, Definition)> = Vec::new();
    let mut ids: Vec<(String, usize, Pos)> = Vec::new();
    // Accounts whose documents had errors: products naming them are not reported again.
    let mut rejected_accounts: Vec<String> = Vec::new();
    let mut broken_files: Vec<usize> = Vec::new();
    for (index, result) in check_files(files, env_is_set).into_iter().enumerate() {
        diagnostics.extend(result.diagnostics);
        if result.syntax_error {
            broken_files.push(index);
        }
        for (id, pos, definition) in result.definitions {
            match definition {
                Some(Definition::Account(None)) => rejected_accounts.push(id.clone()),
                Some(d) => definitions.push((index, pos, d)),
                None => {}
            }
            ids.push((id, index, pos));
        }
    }

    // Pass 2: ids are unique across the whole catalog, whatever their kind.
    let mut first: HashMap<&str, (usize, Pos)> = HashMap::new();
    let mut duplicated: Vec<(usize, Pos)> = Vec::new();
    for (id, file, pos) in &ids {
        match first.get(id.as_str()) {
            Some((f0, p0)) => {
                let mut cx = Cx {
                    file: &files[*file].name,
                    diagnostics: &mut diagnostics,
                };
                cx.error(
                    *pos,
                    format!(
                        "duplicate id `{id}`: already defined at {}:{}:{}",
                        files[*f0].name, p0.line, p0.column
                    ),
                );
                duplicated.push((*file, *pos));
            }
            None => {
                first.insert(id, (*file, *pos));
            }
        }
    }

    let mut accounts: BTreeMap<String, ProviderAccount> = BTreeMap::new();
    let mut webhooks = BTreeMap::new();
    let mut notifiers = BTreeMap::new();
    let mut links = Vec::new();
    for (file, pos, definition) in definitions {
        if duplicated.contains(&(file, pos)) {
            continue;
        }
        match definition {
            Definition::Account(Some(a)) => {
                accounts.insert(a.id.clone(), *a);
            }
            Definition::Webhook(Some(w)) => {
                webhooks.insert(w.id.clone(), *w);
            }
            Definition::Notifier(Some(n)) => {
                notifiers.insert(n.id.clone(), *n);
            }
            Definition::Account(None) | Definition::Webhook(None) | Definition::Notifier(None) => {}
            Definition::Product { draft, link } => {
                if let Some(link) = link {
                    links.push((file, draft, link));
                }
            }
        }
    }
    module::check_pools(&accounts, &mut diagnostics);

    // Pass 3: each product against its account's module.
    let account_ids: Vec<&str> = accounts
        .keys()
        .chain(&rejected_accounts)
        .map(String::as_str)
        .collect();
    let mut products = BTreeMap::new();
    for (file, draft, link) in links {
        let mut cx = Cx {
            file: &files[file].name,
            diagnostics: &mut diagnostics,
        };
        let (account_id, account_pos) = &link.account;
        let Some(account) = accounts.get(account_id) else {
            // An account whose own document was rejected, or that may sit in a file cut short
            // by a syntax error, has been reported already: do not report it twice.
            let maybe_in_broken_file = broken_files
                .iter()
                .any(|&i| files[i].text.contains(account_id.as_str()));
            if !maybe_in_broken_file && !rejected_accounts.contains(account_id) {
                let mut message = format!(
                    "`provisioning.account` names `{}`, which is not a ProviderAccount of this catalog",
                    shorten(account_id)
                );
                if let Some(close) = did_you_mean(account_id, &account_ids) {
                    message.push_str(&format!("; did you mean `{close}`?"));
                }
                cx.error(*account_pos, message);
            }
            continue;
        };
        let config = module::product_config(
            account,
            link.config.as_ref(),
            link.provisioning_pos,
            &link.locations,
            &mut cx,
        );
        module::os_images(account, &link.os_images, &mut cx);
        let (Some(config), Some(draft)) = (config, draft) else {
            continue;
        };
        let product = finish_product(*draft, link.account.0, config);
        products.insert(product.id.clone(), product);
    }

    diagnostics.sort();
    diagnostics.dedup();
    if diagnostics.len() > MAX_DIAGNOSTICS {
        let more = diagnostics.len() - MAX_DIAGNOSTICS;
        diagnostics.truncate(MAX_DIAGNOSTICS);
        if let Some(last) = diagnostics.last().cloned() {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                message: format!("{more} more problems not shown"),
                ..last
            });
        }
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        products.clear();
        accounts.clear();
        webhooks.clear();
        notifiers.clear();
    }
    Checked {
        products,
        accounts,
        webhooks,
        notifiers,
        diagnostics,
    }
}

/// What pass 1 found in one file.
struct FileResult {
    diagnostics: Vec<Diagnostic>,
    syntax_error: bool,
    /// Id, its position, and the definition (`None` for a document of unknown kind).
    definitions: Vec<(String, Pos, Option<Definition>)>,
}

/// Catalogs below this size are checked on the calling thread: threads would cost more.
const PARALLEL_THRESHOLD_BYTES: usize = 256 * 1024;

/// The most problems reported for one file, and for a catalog: enough to fix a catalog by,
/// and a bound on the memory a hostile one can make the checker use.
pub const MAX_DIAGNOSTICS: usize = 10_000;

/// Runs pass 1 over every file, in parallel for large catalogs; results are in file order.
fn check_files(
    files: &[SourceFile],
    env_is_set: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<FileResult> {
    let total: usize = files.iter().map(|f| f.text.len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(files.len());
    // One alias budget for the whole catalog: 400 files do not get 400 budgets.
    let aliases = yaml::AliasBudget::default();
    let aliases = &aliases;
    if total < PARALLEL_THRESHOLD_BYTES || threads <= 1 {
        return files
            .iter()
            .map(|f| check_file(f, aliases, env_is_set))
            .collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|f| check_file(f, aliases, env_is_set))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(results) => results,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Parses one file and checks its documents on their own. The YAML tree is dropped on return,
/// so a large catalog never holds more than a few trees in memory.
fn check_file(
    file: &SourceFile,
    aliases: &yaml::AliasBudget,
    env_is_set: &dyn Fn(&str) -> bool,
) -> FileResult {
    let parsed = yaml::parse_within(&file.text, aliases);
    let mut diagnostics = Vec::new();
    let mut definitions = Vec::new();
    let mut cx = Cx {
        file: &file.name,
        diagnostics: &mut diagnostics,
    };
    for e in &parsed.errors {
        cx.error(e.pos, e.message.clone());
    }
    for doc in &parsed.documents {
        if doc.is_null() {
            continue;
        }
        if cx.diagnostics.len() >= MAX_DIAGNOSTICS {
            cx.error(
                doc.pos,
                format!("more than {MAX_DIAGNOSTICS} problems in this file; the rest of it is not checked"),
            );
            break;
        }
        let (id, definition) = document(doc, &file.name, &mut cx, env_is_set);
        if let Some((id, pos)) = id {
            definitions.push((id, pos, definition));
        }
    }
    FileResult {
        diagnostics,
        syntax_error: parsed.syntax_error,
        definitions,
    }
}

fn finish_product(
    d: ProductDraft,
    account: String,
    config: super::model::ProductConfig,
) -> Product {
    let mut features = d.features;
    features.sort();
    features.dedup();
    let group = d
        .group
        .unwrap_or_else(|| d.product_type.as_str().to_owned());
    let mut product = Product {
        id: d.id,
        name: d.name,
        group,
        product_type: d.product_type,
        description: d.description,
        specs: d.specs,
        pricing: d.pricing,
        locations: d.locations.into_iter().map(|(s, _)| s).collect(),
        os_images: d.os_images.into_iter().map(|(o, _)| o).collect(),
        features,
        stock: d.stock,
        active: d.active,
        provisioning: Provisioning { account, config },
        revision: Revision(String::new()),
        origin: d.origin,
    };
    product.revision = revision::of(&product);
    product
}

/// Checks one document. Returns its id (with position) when it has a readable one, and the
/// definition when the document is otherwise valid so far.
fn document(
    doc: &Node,
    file_name: &str,
    cx: &mut Cx,
    env_is_set: &dyn Fn(&str) -> bool,
) -> (Option<(String, Pos)>, Option<Definition>) {
    // Only this document's diagnostics are counted: scanning all of them for every document
    // made a file of many erroneous documents quadratic.
    let mark = cx.diagnostics.len();
    let Some(mut f) = Fields::new(doc, "", "catalog document", cx) else {
        return (None, None);
    };
    let origin = Origin {
        file: file_name.to_owned(),
        line: doc.pos.line,
        column: doc.pos.column,
    };
    if let Some(v) = f.required("apiVersion", cx) {
        if let Some(s) = string(v, "apiVersion", cx) {
            if s != API_VERSION {
                cx.error(
                    v.pos,
                    format!(
                        "unsupported apiVersion `{}`; this provisioner reads `{API_VERSION}`",
                        shorten(&s)
                    ),
                );
            }
        }
    }
    let kind = f.required("kind", cx).and_then(|v| {
        let s = string(v, "kind", cx)?;
        if KINDS.contains(&s.as_str()) {
            return Some(s);
        }
        let mut message = format!(
            "unknown kind `{}`; expected `Product`, `ProviderAccount`, `WebhookEndpoint` or `EmailNotifier`",
            shorten(&s)
        );
        if let Some(close) = did_you_mean(&s, KINDS) {
            message.push_str(&format!(" (did you mean `{close}`?)"));
        }
        cx.error(v.pos, message);
        None
    });
    let Some(kind) = kind else {
        return (None, None);
    };
    f.set_what(kind.clone());
    if kind == "ProviderAccount" {
        let (id, account) = module::account(&mut f, origin, cx, env_is_set);
        f.finish(cx);
        let ok = !has_errors_since(cx, mark);
        let account = account.filter(|_| ok).map(Box::new);
        (id, Some(Definition::Account(account)))
    } else if kind == "WebhookEndpoint" {
        let (id, endpoint) = notify::webhook(&mut f, origin, cx, env_is_set);
        f.finish(cx);
        let ok = !has_errors_since(cx, mark);
        (
            id,
            Some(Definition::Webhook(endpoint.filter(|_| ok).map(Box::new))),
        )
    } else if kind == "EmailNotifier" {
        let (id, notifier) = notify::email(&mut f, origin, cx, env_is_set);
        f.finish(cx);
        let ok = !has_errors_since(cx, mark);
        (
            id,
            Some(Definition::Notifier(notifier.filter(|_| ok).map(Box::new))),
        )
    } else {
        let (id, draft, link) = product(&mut f, origin, cx);
        f.finish(cx);
        let ok = !has_errors_since(cx, mark);
        let draft = draft.filter(|_| ok).map(Box::new);
        (id, Some(Definition::Product { draft, link }))
    }
}

fn has_errors_since(cx: &Cx, mark: usize) -> bool {
    cx.diagnostics[mark..].iter().any(Diagnostic::is_error)
}

/// Reads the id of a definition; later messages about the document name it.
pub(super) fn read_id(f: &mut Fields, cx: &mut Cx) -> Option<(String, Pos)> {
    let node = f.required("id", cx)?;
    let id = slug(node, "id", cx)?;
    f.set_what(format!("{} `{id}`", f.what()));
    Some((id, node.pos))
}

fn product(
    f: &mut Fields,
    origin: Origin,
    cx: &mut Cx,
) -> (
    Option<(String, Pos)>,
    Option<ProductDraft>,
    Option<ProductLink>,
) {
    let id = read_id(f, cx);
    let name = f.required("name", cx).and_then(|n| string(n, "name", cx));
    let group = f.optional("group").map(|n| string(n, "group", cx));
    let product_type = f
        .required("type", cx)
        .and_then(|n| one_of(n, "type", ProductType::ALL, ProductType::as_str, cx));
    let description = match f.optional("description") {
        None => Some(String::new()),
        Some(n) => match n.scalar() {
            Some(s) => Some(s.text.trim_end().to_owned()),
            None => {
                cx.error(
                    n.pos,
                    format!("`description` must be text, found {}", n.describe()),
                );
                None
            }
        },
    };
    let specs = f.required("specs", cx).and_then(|n| specs(n, cx));
    let pricing = f.required("pricing", cx).and_then(|n| pricing(n, cx));
    let locations = f
        .required("locations", cx)
        .and_then(|n| non_empty_unique_list(n, "locations", "location", cx));
    let os_images = f.required("os_images", cx).and_then(|n| os_images(n, cx));
    let features = match f.optional("features") {
        None => Some(Vec::new()),
        Some(n) => string_list(n, "features", cx).map(|v| v.into_iter().map(|(s, _)| s).collect()),
    };
    let stock = match f.optional("stock") {
        None => Some(None),
        Some(n) => integer_u32(n, "stock", 0, cx).map(Some),
    };
    let active = match f.optional("active") {
        None => Some(true),
        Some(n) => boolean(n, "active", cx),
    };
    let provisioning = f.required("provisioning", cx).and_then(|n| {
        let mut p = Fields::new(n, "provisioning", "Product", cx)?;
        let account = p
            .required("account", cx)
            .and_then(|a| slug(a, "provisioning.account", cx).map(|s| (s, a.pos)));
        let config = p.optional("config");
        p.finish(cx);
        Some((account?, n.pos, config))
    });

    let link = provisioning.map(|(account, provisioning_pos, config)| ProductLink {
        account,
        provisioning_pos,
        config: config.cloned(),
        locations: locations.clone().unwrap_or_default(),
        os_images: os_images.clone().unwrap_or_default(),
    });
    let draft = (|| {
        Some(ProductDraft {
            id: id.clone()?.0,
            name: name?,
            group: group
                .unwrap_or(Some(String::new()))
                .filter(|g| !g.is_empty()),
            product_type: product_type?,
            description: description?,
            specs: specs?,
            pricing: pricing?,
            locations: locations?,
            os_images: os_images?,
            features: features?,
            stock: stock?,
            active: active?,
            origin,
        })
    })();
    (id, draft, link)
}

fn non_empty_unique_list(
    node: &Node,
    path: &str,
    what: &str,
    cx: &mut Cx,
) -> Option<Vec<(String, Pos)>> {
    let items = string_list(node, path, cx)?;
    if items.is_empty() {
        cx.error(
            node.pos,
            format!("`{path}` must list at least one {what}; the first is the default"),
        );
        return None;
    }
    let mut ok = true;
    for (i, (item, pos)) in items.iter().enumerate() {
        if items[..i].iter().any(|(earlier, _)| earlier == item) {
            cx.error(*pos, format!("`{path}` lists `{}` twice", shorten(item)));
            ok = false;
        }
    }
    ok.then_some(items)
}

/// `os_images`: a non-empty list whose items are a name (`debian-12`, sent to the provider as
/// is) or `{name, image}` (the name customers order, the provider's image); names unique.
fn os_images(node: &Node, cx: &mut Cx) -> Option<Vec<(OsImage, Pos)>> {
    let yaml::Value::Seq(items) = &node.value else {
        cx.error(
            node.pos,
            format!("`os_images` must be a list, found {}", node.describe()),
        );
        return None;
    };
    if items.is_empty() {
        cx.error(
            node.pos,
            "`os_images` must list at least one OS image; the first is the default",
        );
        return None;
    }
    let mut out: Vec<(OsImage, Pos)> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("os_images[{i}]");
        let image = if let yaml::Value::Map(_) = &item.value {
            (|| {
                let mut f = Fields::new(item, &path, "Product", cx)?;
                let name = f
                    .required("name", cx)
                    .and_then(|n| non_blank(n, &format!("{path}.name"), cx));
                let image = f
                    .required("image", cx)
                    .and_then(|n| non_blank(n, &format!("{path}.image"), cx));
                f.finish(cx);
                Some(OsImage {
                    name: name?,
                    image: image?,
                })
            })()
        } else {
            non_blank(item, &path, cx).map(|name| OsImage {
                image: name.clone(),
                name,
            })
        };
        match image {
            Some(image) => {
                if out.iter().any(|(earlier, _)| earlier.name == image.name) {
                    cx.error(
                        item.pos,
                        format!("`os_images` lists `{}` twice", shorten(&image.name)),
                    );
                    ok = false;
                }
                out.push((image, item.pos));
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A string with no surrounding or inner whitespace that is not empty: OS names and images.
fn non_blank(node: &Node, path: &str, cx: &mut Cx) -> Option<String> {
    let s = string(node, path, cx)?;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.error(
            node.pos,
            format!(
                "`{path}` must be a name without spaces, found `{}`",
                shorten(&s).escape_default()
            ),
        );
        return None;
    }
    Some(s)
}

fn specs(node: &Node, cx: &mut Cx) -> Option<Specs> {
    let mut f = Fields::new(node, "specs", "Product", cx)?;
    let cpu_cores = f
        .required("cpu_cores", cx)
        .and_then(|n| integer_u32(n, "specs.cpu_cores", 1, cx));
    let cpu_model = f
        .optional("cpu_model")
        .map(|n| string(n, "specs.cpu_model", cx));
    let ram_gb = f.required("ram_gb", cx).and_then(|n| {
        decimal(
            n,
            "specs.ram_gb",
            DecimalRule {
                max_scale: 3,
                allow_zero: false,
            },
            cx,
        )
    });
    let storage_gb = f
        .required("storage_gb", cx)
        .and_then(|n| integer_u32(n, "specs.storage_gb", 1, cx));
    let storage_type = f.optional("storage_type").map(|n| {
        one_of(
            n,
            "specs.storage_type",
            StorageType::ALL,
            StorageType::as_str,
            cx,
        )
    });
    let bandwidth_tb = f.optional("bandwidth_tb").map(|n| {
        decimal(
            n,
            "specs.bandwidth_tb",
            DecimalRule {
                max_scale: 3,
                allow_zero: true,
            },
            cx,
        )
    });
    let ip_addresses = match f.optional("ip_addresses") {
        None => Some(1),
        Some(n) => integer_u32(n, "specs.ip_addresses", 0, cx),
    };
    f.finish(cx);
    Some(Specs {
        cpu_cores: cpu_cores?,
        cpu_model: cpu_model.map_or(Some(None), |v| v.map(Some))?,
        ram_gb: ram_gb?,
        storage_gb: storage_gb?,
        storage_type: storage_type.map_or(Some(None), |v| v.map(Some))?,
        bandwidth_tb: bandwidth_tb.map_or(Some(None), |v| v.map(Some))?,
        ip_addresses: ip_addresses?,
    })
}

fn pricing(node: &Node, cx: &mut Cx) -> Option<Pricing> {
    let mut f = Fields::new(node, "pricing", "Product", cx)?;
    let currency = f.required("currency", cx).and_then(|n| {
        let s = string(n, "pricing.currency", cx)?;
        if s.len() == 3 && s.chars().all(|c| c.is_ascii_uppercase()) {
            Some(s)
        } else {
            cx.error(
                n.pos,
                format!(
                    "`pricing.currency` must be an ISO 4217 code such as EUR or USD, found `{}`",
                    shorten(&s)
                ),
            );
            None
        }
    });
    let monthly = f
        .required("monthly", cx)
        .and_then(|n| decimal(n, "pricing.monthly", MONEY, cx));
    let cycle = |f: &mut Fields, key: &'static str, cx: &mut Cx| {
        f.optional(key)
            .map(|n| decimal(n, &format!("pricing.{key}"), MONEY, cx))
            .map_or(Some(None), |v| v.map(Some))
    };
    let quarterly = cycle(&mut f, "quarterly", cx);
    let semiannually = cycle(&mut f, "semiannually", cx);
    let yearly = cycle(&mut f, "yearly", cx);
    let setup_fee = cycle(&mut f, "setup_fee", cx);
    f.finish(cx);
    Some(Pricing {
        currency: currency?,
        monthly: monthly?,
        quarterly: quarterly?,
        semiannually: semiannually?,
        yearly: yearly?,
        setup_fee: setup_fee?.unwrap_or_default(),
    })
}

/// Which module a product config key belongs to, for "this is a hetzner setting" hints.
pub(super) fn module_of_config_key(key: &str) -> Option<Module> {
    match key {
        "server_type" | "enable_ipv4" | "enable_ipv6" | "upgrade_disk" => Some(Module::Hetzner),
        "size" | "ipv6" | "monitoring" | "backups" | "resize_disk" => Some(Module::DigitalOcean),
        "hardware" => Some(Module::Ovh),
        "instructions" => Some(Module::Manual),
        _ => None,
    }
}
