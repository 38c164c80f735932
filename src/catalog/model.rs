//! The checked catalog: products and provider accounts as the rest of provisioner sees them.
//!
//! Every value here has passed validation: ids are slugs, prices are exact non-negative
//! decimals, every product names an existing account and carries the configuration its
//! account's module needs. Code downstream never re-checks any of it.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;

use super::diag::Diagnostic;
use crate::vocab::vocabulary;

vocabulary! {
    /// What kind of server a product sells.
    ProductType {
        /// A virtual server on a cloud or hypervisor.
        Vps => "vps",
        /// A whole physical machine.
        Dedicated => "dedicated",
    }
}

vocabulary! {
    /// The disk technology a product advertises.
    StorageType {
        /// NVMe SSD.
        Nvme => "nvme",
        /// SATA/SAS SSD.
        Ssd => "ssd",
        /// Spinning disks.
        Hdd => "hdd",
    }
}

vocabulary! {
    /// The provider module that drives an account's servers.
    Module {
        /// The simulated cloud: no credentials, for demos, tests and benchmarks.
        Sim => "sim",
        /// An admin does the work through the task inbox.
        Manual => "manual",
        /// Hetzner Cloud.
        Hetzner => "hetzner",
        /// DigitalOcean droplets.
        DigitalOcean => "digitalocean",
        /// OVHcloud dedicated servers the company already owns.
        Ovh => "ovh",
    }
}

/// Where a definition was written: file, line and column of its document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The file, as named in diagnostics.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A product's revision: a hash of its normalised definition (see `catalog::revision`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub String);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hardware a product promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Specs {
    /// Dedicated or virtual cores, at least 1.
    pub cpu_cores: u32,
    /// Marketing name of the CPU, when the product promises one.
    pub cpu_model: Option<String>,
    /// Memory in GB, greater than zero (0.5 for a 512 MB VPS).
    pub ram_gb: Decimal,
    /// Disk in GB, at least 1.
    pub storage_gb: u32,
    /// Disk technology, when advertised.
    pub storage_type: Option<StorageType>,
    /// Included monthly traffic in TB; `None` means unmetered.
    pub bandwidth_tb: Option<Decimal>,
    /// Public IPv4 addresses included.
    pub ip_addresses: u32,
}

/// Prices of a product: exact decimals with at most two decimal places, never negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// Price per month; every product has one.
    pub monthly: Decimal,
    /// Price per three months, if sold that way.
    pub quarterly: Option<Decimal>,
    /// Price per six months, if sold that way.
    pub semiannually: Option<Decimal>,
    /// Price per year, if sold that way.
    pub yearly: Option<Decimal>,
    /// One-time fee at order; zero when absent.
    pub setup_fee: Decimal,
}

/// The module-specific part of a product, checked against its account's module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductConfig {
    /// Simulated servers; `size` is shown in the sim's ledger only.
    Sim {
        /// A free-form size label.
        size: Option<String>,
    },
    /// An admin provisions by hand; `instructions` go into every task for this product.
    Manual {
        /// What the admin should do, shown in the task inbox.
        instructions: Option<String>,
    },
    /// Hetzner Cloud `POST /servers` parameters.
    Hetzner {
        /// Server type name, e.g. `cx22`.
        server_type: String,
        /// Give the server a public IPv4 (default true).
        enable_ipv4: bool,
        /// Give the server a public IPv6 network (default true).
        enable_ipv6: bool,
        /// Grow the disk on a change to this product (default false: the disk keeps its size,
        /// so a later downgrade stays possible).
        upgrade_disk: bool,
    },
    /// DigitalOcean `POST /v2/droplets` parameters.
    DigitalOcean {
        /// Size slug, e.g. `s-1vcpu-1gb`.
        size: String,
        /// Enable IPv6 (default false).
        ipv6: bool,
        /// Install the monitoring agent (default false).
        monitoring: bool,
        /// Enable provider backups (default false).
        backups: bool,
        /// Grow the disk on a resize to this size (default false: permanent, no downgrade).
        resize_disk: bool,
    },
    /// Which servers of the account's pool this product may be given.
    Ovh {
        /// Hardware names, each present in the account's pool.
        hardware: Vec<String>,
    },
}

impl ProductConfig {
    /// The provider's name for the plan of `product_id`'s servers, which a server reports
    /// and a change of plan moves it to: Hetzner's server type, DigitalOcean's size, the
    /// sim's size (or the product), the product for manual work; `None` for OVH, whose
    /// dedicated servers cannot change plan in place.
    pub fn plan(&self, product_id: &str) -> Option<String> {
        match self {
            ProductConfig::Sim { size } => Some(size.clone().unwrap_or_else(|| product_id.into())),
            ProductConfig::Manual { .. } => Some(product_id.to_owned()),
            ProductConfig::Hetzner { server_type, .. } => Some(server_type.clone()),
            ProductConfig::DigitalOcean { size, .. } => Some(size.clone()),
            ProductConfig::Ovh { .. } => None,
        }
    }
}

/// How a product's servers are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// The id of a [`ProviderAccount`] of the catalog.
    pub account: String,
    /// Module-specific configuration.
    pub config: ProductConfig,
}

/// Something sold: a VPS tier or a dedicated server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Stable slug; instances refer to it forever.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Product group for order forms; defaults to the product type.
    pub group: String,
    /// `vps` or `dedicated`.
    pub product_type: ProductType,
    /// Free text; empty when absent.
    pub description: String,
    /// Hardware.
    pub specs: Specs,
    /// Prices.
    pub pricing: Pricing,
    /// Locations it is sold in; the first is the default. Never empty.
    pub locations: Vec<String>,
    /// Operating systems offered; the first is the default. Never empty.
    pub os_images: Vec<OsImage>,
    /// Feature slugs, sorted and without duplicates.
    pub features: Vec<String>,
    /// Maximum number of live instances; `None` is unlimited.
    pub stock: Option<u32>,
    /// Whether new servers may be provisioned (existing ones keep running either way).
    pub active: bool,
    /// Account and module configuration.
    pub provisioning: Provisioning,
    /// Hash of the normalised definition.
    pub revision: Revision,
    /// Where it was defined.
    pub origin: Origin,
}

/// An operating system a product offers: the name customers order (and billing writes into
/// `instances.os_image`), and the provider's own name for the image, when it differs (OVH's
/// `debian12_64` for `debian-12`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsImage {
    /// The customer-facing name.
    pub name: String,
    /// What the module sends to the provider.
    pub image: String,
}

impl serde::Serialize for OsImage {
    /// A plain name when both are the same (as written, and so that revisions of products
    /// written as plain lists do not change), `{name, image}` otherwise.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.name == self.image {
            return s.serialize_str(&self.name);
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("image", &self.image)?;
        m.end()
    }
}

impl Product {
    /// The OS image offered under `name`, if any.
    #[must_use]
    pub fn os_image(&self, name: &str) -> Option<&OsImage> {
        self.os_images.iter().find(|o| o.name == name)
    }

    /// The customer-facing names of the OS images offered, the default first.
    #[must_use]
    pub fn os_names(&self) -> Vec<&str> {
        self.os_images.iter().map(|o| o.name.as_str()).collect()
    }
}

/// One environment variable a module reads a secret from. Only the variable's name is kept
/// here: secrets never enter the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The catalog field that named it, e.g. `token_env`.
    pub field: &'static str,
    /// The environment variable, e.g. `HCLOUD_TOKEN`.
    pub env: String,
}

/// Request budget of an account. Both limits apply when both are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Requests per hour, if limited.
    pub requests_per_hour: Option<u32>,
    /// Requests per minute, if limited.
    pub requests_per_minute: Option<u32>,
}

/// Behaviour of the simulated cloud behind a `sim` account.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSettings {
    /// Seconds from create to running.
    pub boot_seconds: f64,
    /// Seconds a power action takes.
    pub action_seconds: f64,
    /// Added latency per API call, in milliseconds.
    pub latency_ms: u64,
    /// Share of calls that fail with a transient error, 0 to 1.
    pub fault_rate: f64,
    /// Maximum number of servers the simulated cloud holds; `None` is unlimited.
    pub capacity: Option<u64>,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            boot_seconds: 2.0,
            action_seconds: 1.0,
            latency_ms: 0,
            fault_rate: 0.0,
            capacity: None,
        }
    }
}

/// A dedicated server the company owns at OVH and may give to a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolServer {
    /// OVH's service name of the server, e.g. `ns3001234.ip-51-75-1.eu`.
    pub service_name: String,
    /// Hardware name products select, e.g. `adv-1`.
    pub hardware: String,
    /// Datacenter, when known (e.g. `gra`); products sold in a location get servers there.
    pub location: Option<String>,
}

/// Module-specific settings of an account.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountSettings {
    /// Modules without account settings.
    None,
    /// The simulated cloud's behaviour.
    Sim(SimSettings),
    /// OVH's pool of owned servers (never empty).
    Ovh {
        /// The servers.
        pool: Vec<PoolServer>,
    },
}

/// An account at a provider: how to reach it and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderAccount {
    /// Stable slug.
    pub id: String,
    /// The module that drives it.
    pub module: Module,
    /// Base URL override (or OVH endpoint name); `None` means the module's default.
    pub endpoint: Option<String>,
    /// Environment variables holding the secrets, defaults filled in.
    pub credentials: Vec<Credential>,
    /// Request budget, module default filled in.
    pub rate_limit: RateLimit,
    /// Module-specific settings.
    pub settings: AccountSettings,
    /// Shortest wait before looking again at an action in flight (API modules); the wait
    /// grows as the action takes longer. `None` means the module's default.
    pub poll: Option<std::time::Duration>,
    /// Timeout of each API request (API modules); `None` means 30 s.
    pub timeout: Option<std::time::Duration>,
    /// How long a graceful shutdown or reboot may take before a hard one (API modules);
    /// `None` means 60 s.
    pub graceful_timeout: Option<std::time::Duration>,
    /// How long an action may run before it is sent again (API modules); `None` means the
    /// module's default (5 minutes; 2 hours for ovh, whose reinstalls take that long).
    pub stuck_timeout: Option<std::time::Duration>,
    /// Where it was defined.
    pub origin: Origin,
}

/// The git state of a catalog directory, when it lies in a git work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitInfo {
    /// `HEAD` commit of the work tree.
    pub commit: String,
    /// Whether files under the catalog directory differ from that commit.
    pub dirty: bool,
}

/// Where a catalog was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The directory (or `REV:PATH` for a catalog read from git).
    pub dir: String,
    /// Catalog files read.
    pub files: usize,
    /// Git commit, when known.
    pub git: Option<GitInfo>,
}

/// A whole valid catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// Products by id.
    pub products: BTreeMap<String, Product>,
    /// Accounts by id.
    pub accounts: BTreeMap<String, ProviderAccount>,
    /// Webhook endpoints by id.
    pub webhooks: BTreeMap<String, super::notify::WebhookEndpoint>,
    /// E-mail notifiers by id.
    pub notifiers: BTreeMap<String, super::notify::EmailNotifier>,
    /// Where it came from.
    pub source: SourceInfo,
    /// Warnings found while loading (a valid catalog has no errors).
    pub warnings: Vec<Diagnostic>,
}

impl Catalog {
    /// The product with this id.
    pub fn product(&self, id: &str) -> Option<&Product> {
        self.products.get(id)
    }

    /// The account with this id.
    pub fn account(&self, id: &str) -> Option<&ProviderAccount> {
        self.accounts.get(id)
    }

    /// The account a product is provisioned on. Always present in a valid catalog.
    pub fn account_of(&self, product: &Product) -> Option<&ProviderAccount> {
        self.accounts.get(&product.provisioning.account)
    }

    /// Checks an order (or a change to it) against the catalog, as a person typing it would
    /// want: the product exists and is sold, and offers the location and OS asked for.
    ///
    /// # Errors
    /// Why not, as an [`OrderRefusal`].
    pub fn check_order(
        &self,
        product: &str,
        location: Option<&str>,
        os: Option<&str>,
    ) -> Result<&Product, OrderRefusal> {
        let Some(p) = self.product(product) else {
            let known: Vec<&str> = self.products.keys().map(String::as_str).collect();
            return Err(OrderRefusal::UnknownProduct(format!(
                "unknown product `{product}`; known products: {}",
                known.join(", ")
            )));
        };
        if !p.active {
            return Err(OrderRefusal::Inactive(format!(
                "product `{product}` is not active: it is not sold any more"
            )));
        }
        if let Some(l) = location.filter(|l| !p.locations.iter().any(|x| x == l)) {
            return Err(OrderRefusal::Location(format!(
                "product `{product}` is not sold in `{l}`; its locations: {}",
                p.locations.join(", ")
            )));
        }
        if let Some(o) = os.filter(|o| p.os_image(o).is_none()) {
            return Err(OrderRefusal::Os(format!(
                "product `{product}` does not offer `{o}`; its OS images: {}",
                p.os_names().join(", ")
            )));
        }
        Ok(p)
    }
}

/// Why the catalog refuses an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRefusal {
    /// No such product.
    #[error("{0}")]
    UnknownProduct(String),
    /// The product is not sold any more.
    #[error("{0}")]
    Inactive(String),
    /// The location is not offered.
    #[error("{0}")]
    Location(String),
    /// The OS is not offered.
    #[error("{0}")]
    Os(String),
}

impl OrderRefusal {
    /// A stable machine word for the refusal (the API's problem `code`).
    pub fn code(&self) -> &'static str {
        match self {
            OrderRefusal::UnknownProduct(_) => "unknown_product",
            OrderRefusal::Inactive(_) => "product_inactive",
            OrderRefusal::Location(_) => "location_not_offered",
            OrderRefusal::Os(_) => "os_not_offered",
        }
    }
}
