//! The `provisioner` command line: raw arguments become a validated [`Cli`], which [`run`]
//! executes, returning the process exit code.

mod catalog;
mod daemon;
mod instances;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when the input is invalid (e.g. the catalog has errors).
pub const EXIT_INVALID: u8 = 1;
/// Exit code for usage errors and I/O failures.
pub const EXIT_USAGE: u8 = 2;

/// The provisioner command line.
#[derive(Debug, Parser)]
#[command(name = "provisioner", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr (`RUST_LOG` sets the level, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The database: `sqlite://FILE` (created on first use) or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = crate::store::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate, show and compare catalogs.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Run the reconciler daemon until SIGINT/SIGTERM (a second signal exits at once).
    Run(RunArgs),
    /// Show provisioner working: a temporary SQLite database, the example catalog's simulated
    /// cloud, a few dozen servers ordered, suspended, rebooted and terminated. No credentials.
    Demo {
        /// The catalog whose `sim` products are sold.
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// How many servers to order.
        #[arg(long, default_value_t = 36)]
        servers: usize,
    },
    /// For every instance that is not converged, the step the reconciler would take now, and
    /// why — without taking it.
    Plan {
        /// The catalog.
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Converged instances too.
        #[arg(long)]
        all: bool,
    },
    /// Create the database (SQLite) and apply pending migrations.
    Migrate,
    /// The manual module's inbox: work for admins.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Create, inspect and change customer servers through the billing columns.
    #[command(subcommand)]
    Instances(InstancesCommand),
}

/// `provisioner run` options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The catalog directory (hot-reloaded).
    #[arg(long, default_value = "catalog")]
    pub catalog: PathBuf,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,
    /// Most reconcile steps running at once.
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Seconds between bulk resyncs of each account.
    #[arg(long, default_value_t = 60.0)]
    pub resync_seconds: f64,
    /// Milliseconds between looks for due work when nothing wakes the daemon.
    #[arg(long, default_value_t = 100)]
    pub idle_poll_ms: u64,
    /// Seconds a claim holds an instance before another daemon may take it over.
    #[arg(long, default_value_t = 60.0)]
    pub lease_seconds: f64,
    /// This daemon's name in leases (default: host:pid).
    #[arg(long)]
    pub owner: Option<String>,
    /// Seconds steps in flight may take to finish after SIGTERM/SIGINT before they are
    /// abandoned (their intent is recorded; the next daemon resolves them).
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
}

/// `provisioner tasks …`
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks, oldest first.
    List {
        /// Only open tasks.
        #[arg(long)]
        open: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Record what you did for a task; the reconciler observes it.
    Complete {
        /// Task id.
        id: i64,
        /// The server's IPv4 address (provision tasks).
        #[arg(long)]
        ip: Option<String>,
        /// The server's IPv6 address.
        #[arg(long)]
        ipv6: Option<String>,
        /// The root password (stored sealed). Prefer --password-file: arguments are visible to
        /// other users of the machine.
        #[arg(long)]
        password: Option<String>,
        /// A file whose first line is the root password (`-`: standard input).
        #[arg(long, conflicts_with = "password")]
        password_file: Option<PathBuf>,
        /// A note for the record.
        #[arg(long)]
        note: Option<String>,
        /// Who did it (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

/// `provisioner instances …`
#[derive(Debug, Subcommand)]
pub enum InstancesCommand {
    /// Insert an order, as billing does when it is paid.
    Create {
        /// Billing's customer id.
        #[arg(long)]
        customer: String,
        /// Catalog product id.
        #[arg(long)]
        product: String,
        /// Location (default: the product's first).
        #[arg(long)]
        location: Option<String>,
        /// OS image (default: the product's first).
        #[arg(long = "os")]
        os_image: Option<String>,
        /// Hostname (default: derived from the id).
        #[arg(long)]
        hostname: Option<String>,
        /// Billing's order reference.
        #[arg(long)]
        order: Option<String>,
        /// A file of SSH public keys, one per line.
        #[arg(long)]
        ssh_keys_file: Option<PathBuf>,
        /// The catalog to check product, location and OS against.
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Skip the catalog check (the database accepts unknown products; the reconciler
        /// records why it cannot provision them).
        #[arg(long)]
        no_catalog_check: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List instances.
    List {
        /// Only this observed status (pending, provisioning, active, suspended, failed, lost, …).
        #[arg(long)]
        status: Option<String>,
        /// Only this desired status (active, suspended, terminated).
        #[arg(long)]
        desired: Option<String>,
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
        /// Only this product's.
        #[arg(long)]
        product: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one instance: desired against observed, provider ids, addresses, errors, next check.
    Show {
        /// Instance id.
        id: i64,
        /// Decrypt and print stored credentials (needs the secret key).
        #[arg(long)]
        show_secrets: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print an instance's transition log, oldest first.
    History {
        /// Instance id.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Change what an instance should be (as billing does on non-payment, payment, cancellation).
    Set {
        /// Instance id.
        id: i64,
        /// active, suspended or terminated.
        #[arg(long)]
        desired: String,
        /// Why (e.g. non-payment); recorded in `suspend_reason`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask for one reboot (increments `reboot_requested`).
    Reboot {
        /// Instance id.
        id: i64,
    },
    /// Take a failed instance up again after fixing the cause.
    Retry {
        /// Instance id.
        id: i64,
    },
}

/// Output format of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For machines: one JSON document on stdout.
    Json,
}

/// Output format of `catalog show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ShowFormat {
    /// YAML, the catalog's own language.
    #[default]
    Yaml,
    /// JSON.
    Json,
}

/// `provisioner catalog …`
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Check a catalog and print every problem as `path:line:column: error: message`.
    ///
    /// Exit status: 0 valid (warnings allowed), 1 invalid, 2 usage or I/O error.
    Validate {
        /// The catalog directory.
        #[arg(default_value = "catalog")]
        dir: PathBuf,
        /// Report format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print the resolved catalog (defaults filled in) with each product's revision.
    Show {
        /// The catalog directory.
        #[arg(default_value = "catalog")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: ShowFormat,
    },
    /// List products and accounts added, removed and changed between two catalogs, with the
    /// fields that changed. OLD and NEW are directories, or `REV:PATH` for a directory at a git
    /// revision of the repository around the current directory (e.g. `HEAD~1:catalog`).
    Diff {
        /// The catalog before.
        old: String,
        /// The catalog after.
        new: String,
        /// Report format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// Installs the global tracing subscriber writing to stderr. `RUST_LOG` takes tracing's target
/// syntax (`info`, `provisioner=debug,warn`); an unparsable value falls back to `info`.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colours);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json()).try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging was already set up: {e}");
    }
}

/// Runs a parsed command line.
///
/// # Errors
/// Failures that are not a verdict on the input (I/O, git): printed by `main` with their causes,
/// exit code 2.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Catalog(c) => catalog::run(c),
        Command::Run(args) => block_on(daemon::run(&cli.database_url, args)),
        Command::Demo { catalog, servers } => block_on(daemon::demo(&catalog, servers)),
        Command::Plan { catalog, all } => block_on(daemon::plan(&cli.database_url, &catalog, all)),
        Command::Tasks(c) => block_on(tasks::run(&cli.database_url, c)),
        Command::Migrate => block_on(instances::migrate(&cli.database_url)),
        Command::Instances(c) => block_on(instances::run(&cli.database_url, c)),
    }
}

/// Prints a verdict on the input (exit 1): a line on stderr, or a JSON event under
/// `--log-format json`.
pub(crate) fn report_invalid(e: &dyn std::fmt::Display) {
    eprintln!("error: {e}");
}

/// Runs a command's future on a fresh tokio runtime.
fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    fut: F,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(fut);
    // Whatever is still running (a query to a database that stopped answering) does not
    // hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
