//! The `provisioner` command line: raw arguments become a validated [`Cli`], which [`run`]
//! executes, returning the process exit code.

mod attach;
mod catalog;
mod daemon;
mod instances;
pub mod output;
mod service;
mod tasks;
mod tokens;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code when the input is invalid (e.g. the catalog has errors).
pub const EXIT_INVALID: u8 = 1;
/// Exit code for usage errors and I/O failures.
pub const EXIT_USAGE: u8 = 2;

/// The environment variables commands read, for their `--help` (one macro per group, so that
/// each command lists exactly the ones it reads).
macro_rules! env_database {
    () => {
        "  DATABASE_URL                     the database, as --database-url
  PGSSLMODE, PGSSLROOTCERT,        PostgreSQL TLS as libpq reads them (also in the URL:
  PGSSLCERT, PGSSLKEY              ?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem)
"
    };
}
macro_rules! env_logging {
    () => {
        "  RUST_LOG                         log filter (tracing EnvFilter syntax), default info
  NO_COLOR                         when set, logs have no colours
"
    };
}
macro_rules! env_key {
    () => {
        "  PROVISIONER_SECRET_KEY           base64 of 32 bytes: the key sealing root passwords
  PROVISIONER_SECRET_KEY_FILE      a file holding that key (SQLite default: <database>.key)
  PROVISIONER_SECRET_KEY_PREVIOUS  older keys, comma-separated, after a rotation
"
    };
}
macro_rules! env_providers {
    () => {
        "  HCLOUD_TOKEN, DIGITALOCEAN_TOKEN,
  OVH_APPLICATION_KEY, OVH_APPLICATION_SECRET, OVH_CONSUMER_KEY
                                   provider credentials: the variables each account's
                                   `credentials` names (these are the defaults)
  HCLOUD_ENDPOINT, DIGITALOCEAN_API_URL, OVH_ENDPOINT
                                   API base URLs of accounts that set no `endpoint`
"
    };
}

/// The provisioner command line.
#[derive(Debug, Parser)]
#[command(
    name = "provisioner",
    version,
    about,
    propagate_version = true,
    after_help = concat!(
        "Exit status: 0 success, 1 invalid input (a catalog with errors, a refused value), 2 usage\n\
         error or failure (unreadable file, unreachable database).\n\nEnvironment:\n",
        env_database!(),
        env_key!(),
        env_providers!(),
        env_logging!()
    )
)]
pub struct Cli {
    /// Log line format on stderr (`RUST_LOG` sets the level, default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The database: `sqlite://FILE` (created by `migrate`, `run` and `demo` only) or
    /// `postgres://USER@HOST/DB[?sslmode=verify-full&sslrootcert=CA.pem]`.
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
    /// Whether `--database-url` was given on the command line (not from `DATABASE_URL` or the
    /// default): the demo uses only an explicit one.
    #[arg(skip)]
    pub database_url_given: bool,
}

impl Cli {
    /// Parses the process's arguments.
    ///
    /// # Errors
    /// Clap's usage errors, `--help` and `--version`.
    pub fn parse_args() -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        let matches = command().try_get_matches()?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.database_url_given = given_on_command_line(&matches, "database_url");
        Ok(cli)
    }
}

/// The command-line definition, as `--help`, completions and the man page show it: commands
/// of a group (`instances list`) list the environment of their group.
#[must_use]
pub fn command() -> clap::Command {
    fn inherit(mut cmd: clap::Command) -> clap::Command {
        let parent = cmd.get_after_help().cloned();
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        for name in names {
            let parent = parent.clone();
            cmd = cmd.mut_subcommand(&name, move |sub| {
                let sub = match (sub.get_after_help().is_none(), parent) {
                    (true, Some(h)) => sub.after_help(h),
                    (_, _) => sub,
                };
                inherit(sub)
            });
        }
        cmd
    }
    use clap::CommandFactory;
    // Only the top level's own help lists everything; its commands carry their own lists.
    let mut top = Cli::command();
    let names: Vec<String> = top
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        top = top.mut_subcommand(&name, inherit);
    }
    top
}

fn completions(shell: Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = command();
    let mut out = std::io::stdout().lock();
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "provisioner", &mut out);
    Ok(ExitCode::from(EXIT_OK))
}

fn man(dir: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let cmd = command();
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// Whether `id` was given on the command line, at the top level or in any subcommand (global
/// options can come after the subcommand).
fn given_on_command_line(matches: &clap::ArgMatches, id: &str) -> bool {
    let here = matches.try_get_raw(id).ok().flatten().is_some()
        && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    here || matches
        .subcommand()
        .is_some_and(|(_, sub)| given_on_command_line(sub, id))
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
    #[command(
        subcommand,
        after_help = concat!(
            "Environment:\n",
            env_providers!(),
            "                                   (validate warns when a credential is not set)\n",
            env_logging!()
        )
    )]
    Catalog(CatalogCommand),
    /// Run the reconciler daemon until SIGINT/SIGTERM (a second signal exits at once).
    #[command(after_help = concat!(
        "Exit status: 0 stopped by a signal, 1 invalid catalog at start, 2 failure.\n\nEnvironment:\n",
        env_database!(),
        env_key!(),
        env_providers!(),
        "  NOTIFY_SOCKET, WATCHDOG_USEC     systemd: readiness and watchdog (Type=notify)\n",
        env_logging!()
    ))]
    Run(RunArgs),
    /// Show provisioner working: a temporary SQLite database, the example catalog's simulated
    /// cloud, a few dozen servers ordered, suspended, rebooted and terminated. No credentials.
    ///
    /// The demo ignores DATABASE_URL; an explicit --database-url runs it on that database
    /// instead of a temporary one, which must hold no instance yet.
    #[command(after_help = concat!("Environment:\n", env_key!(), env_logging!()))]
    Demo {
        /// The catalog whose `sim` products are sold (default: the example catalog built into
        /// the binary).
        #[arg(long)]
        catalog: Option<PathBuf>,
        /// How many servers to order (1 to 2000).
        #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u16).range(1..=2000))]
        servers: u16,
    },
    /// For every instance that is not converged, the step the reconciler would take now, and
    /// why — without taking it.
    #[command(after_help = concat!(
        "Exit status: 0 success (with --detailed-exitcode: nothing pending), 1 invalid catalog\n\
         (with --detailed-exitcode: any error), 2 failure (with --detailed-exitcode: some\n\
         instance is not converged).\n\nEnvironment:\n",
        env_database!(),
        env_providers!(),
        "                                   (an account whose credentials are not set waits)\n",
        env_logging!()
    ))]
    Plan {
        /// The catalog.
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Converged instances too.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Exit 0 when nothing is pending, 2 when some instance is not converged, 1 on error
        /// (as `terraform plan -detailed-exitcode`), for alerts from cron.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Create the database (SQLite) and apply pending migrations.
    #[command(after_help = concat!("Environment:\n", env_database!(), env_key!(), env_logging!()))]
    Migrate {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The manual module's inbox: work for admins.
    #[command(
        subcommand,
        after_help = concat!("Environment:\n", env_database!(), env_key!(), env_logging!())
    )]
    Tasks(TasksCommand),
    /// Print a shell completion script: `provisioner completions bash > /etc/bash_completion.d/provisioner`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff), or write one page per command into --dir.
    Man {
        /// Write provisioner.1 and provisioner-<command>.1 for every command into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The HTTP API's tokens: made (printed once), listed, revoked.
    #[command(
        subcommand,
        after_help = concat!("Environment:\n", env_database!(), env_logging!())
    )]
    Tokens(TokensCommand),
    /// Webhook deliveries (Standard Webhooks, to the catalog's `WebhookEndpoint`s): the log
    /// with every attempt, redelivery, and endpoints turned back on after a `410 Gone`.
    #[command(
        subcommand,
        after_help = concat!("Environment:\n", env_database!(), env_logging!())
    )]
    Webhooks(WebhooksCommand),
    /// Servers carrying our mark that no live instance has, per account (what the daemon
    /// counts as `provisioner_orphan_servers`), each with the command that imports it.
    #[command(after_help = concat!("Environment:\n", env_database!(), env_key!(), env_providers!(), env_logging!()))]
    Orphans {
        /// The catalog (accounts).
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Create, inspect and change customer servers through the billing columns.
    #[command(
        subcommand,
        after_help = concat!("Environment:\n", env_database!(), env_key!(), env_logging!())
    )]
    Instances(InstancesCommand),
}

/// `provisioner run` options.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The catalog directory (hot-reloaded).
    #[arg(long, default_value = "catalog")]
    pub catalog: PathBuf,
    /// Address of `/healthz`, `/readyz`, `/metrics` and the billing API (`/v1`).
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
    /// Seconds a claim holds an instance before another daemon may take it over; renewed
    /// while a step runs, so a dead daemon's instances wait at most this long.
    #[arg(long, default_value_t = 10.0)]
    pub lease_seconds: f64,
    /// Seconds between renewals of the leases of running steps (default: 0.3 × the lease;
    /// at most half of it).
    #[arg(long)]
    pub lease_renew_seconds: Option<f64>,
    /// This daemon's name in leases (default: the host name). Stable across restarts, so a
    /// restarted daemon takes back at once what it held; a name a live daemon already holds
    /// is not shared (this one then runs as NAME:PID).
    #[arg(long)]
    pub owner: Option<String>,
    /// Seconds steps in flight may take to finish after SIGTERM/SIGINT before they are
    /// abandoned (their intent is recorded; the next daemon resolves them).
    #[arg(long, default_value_t = 5.0)]
    pub drain_seconds: f64,
}

/// `provisioner webhooks …`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List deliveries, newest first: event, endpoint, state, attempts, last answer.
    Deliveries {
        /// Only this endpoint's (its catalog id).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only deliveries in this state: pending, delivered, failed.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one delivery with every attempt (when, HTTP status, error, duration).
    Show {
        /// The delivery's id.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Send a delivery again now, whatever its state: the same event id (the receiver's
    /// idempotency key), signed with the endpoint's current secret by the daemon.
    Redeliver {
        /// The delivery's id.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// The endpoints and notifiers reading the event feed: where each stands, and whether it
    /// is disabled (and why).
    Endpoints {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Turn an endpoint disabled by a `410 Gone` back on: the events since are delivered.
    Enable {
        /// The endpoint's catalog id.
        endpoint: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `provisioner tokens …`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Make a token for the HTTP API; it is printed once (only its SHA-256 is kept).
    Create {
        /// Its name (lower-case letters, digits, `-`, `_`), shown in every record it makes.
        name: String,
        /// What it may do: read (read), billing (also order and change desired state), admin
        /// (also credentials, tasks, recovery).
        #[arg(long)]
        scope: String,
        /// Who makes it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List tokens (never their values).
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Revoke a token: it authenticates nothing from then on.
    Revoke {
        /// Its name.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
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
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
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
        /// Billing's own service id: unique, so the same order is never inserted twice.
        #[arg(long)]
        billing_ref: Option<String>,
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
        /// At most this many (the rest are counted).
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
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Move an instance to another product: a change of plan (sets `product_id`, as billing
    /// does); the reconciler changes the server in place where its module can.
    ChangeProduct {
        /// Instance id.
        id: i64,
        /// The new product.
        product: String,
        /// The catalog to check the product against.
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Skip the catalog check.
        #[arg(long)]
        no_catalog_check: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Ask for one reinstall (increments `reinstall_requested`), of another OS with `--os`.
    /// The disk is wiped; the new root password replaces the old one.
    Reinstall {
        /// Instance id.
        id: i64,
        /// The OS to install (one the product offers); default: the one ordered.
        #[arg(long)]
        os: Option<String>,
        /// The catalog to check the OS against.
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Skip the catalog check.
        #[arg(long)]
        no_catalog_check: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Ask for one reboot (increments `reboot_requested`).
    Reboot {
        /// Instance id.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Place a suspension hold: the server stays off while any hold exists, whatever billing's
    /// desired status (billing's unsuspend does not lift an abuse hold).
    Hold {
        /// Instance id.
        id: i64,
        /// The hold's kind: billing, abuse, admin or any lower-case word.
        #[arg(long)]
        kind: String,
        /// Why (shown in the history and to admins).
        #[arg(long)]
        reason: Option<String>,
        /// Who places it (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Lift a suspension hold (the server comes back once no hold is left and billing wants
    /// it active).
    Release {
        /// Instance id.
        id: i64,
        /// The hold's kind.
        #[arg(long)]
        kind: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Give a lost instance a fresh server (the old server's id stays in its history).
    Recreate {
        /// Instance id.
        id: i64,
        /// Who decided it, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Close a lost or failed instance whose server is already gone: terminated, with no
    /// provider call.
    Forget {
        /// Instance id.
        id: i64,
        /// Who decided it, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Attach an existing server at the provider to a lost or failed instance, in place of
    /// the one it had (kept in its history). The server is looked at first (it must be
    /// running or off, on the product's plan, and no other live instance's); the reconciler
    /// then marks it as ours (label, tag or pool allocation) and goes on from there.
    #[command(after_help = concat!(
        "Environment:\n", env_database!(), env_key!(), env_providers!(), env_logging!()
    ))]
    Adopt {
        /// Instance id.
        id: i64,
        /// The provider's id of the server (Hetzner server id, droplet id, OVH service name).
        #[arg(long)]
        server_id: String,
        /// The account holding it (default: the instance's, else its product's).
        #[arg(long)]
        account: Option<String>,
        /// The catalog (accounts and the product's plan).
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Who decided it, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Create an instance for a server that exists at the provider (made before provisioner,
    /// or by hand) and manage it from then on: it is looked at first (running or off, on the
    /// product's plan, no other live instance's), then marked as ours by the reconciler.
    /// The account's credentials must be set here as for the daemon.
    #[command(
        override_usage = "provisioner instances import --account <ACCOUNT> --server-id <SERVER_ID>\n           \
                          --customer <CUSTOMER> --product <PRODUCT> [OPTIONS]",
        after_help = concat!(
            "Environment:\n", env_database!(), env_key!(), env_providers!(), env_logging!()
        )
    )]
    Import {
        /// The account holding the server.
        #[arg(long)]
        account: String,
        /// The provider's id of the server (Hetzner server id, droplet id, OVH service name).
        #[arg(long)]
        server_id: String,
        /// Billing's customer id.
        #[arg(long)]
        customer: String,
        /// The product it is sold as (sold on that account, on the server's plan).
        #[arg(long)]
        product: String,
        /// Billing's own service id (unique).
        #[arg(long)]
        billing_ref: Option<String>,
        /// Billing's order reference.
        #[arg(long)]
        order: Option<String>,
        /// Its location, for the record (one the product offers).
        #[arg(long)]
        location: Option<String>,
        /// The OS it runs, for later reinstalls (one the product offers).
        #[arg(long = "os")]
        os_image: Option<String>,
        /// Its hostname.
        #[arg(long)]
        hostname: Option<String>,
        /// What billing wants it to be: active or suspended (a server found off is powered
        /// on once managed, unless suspended).
        #[arg(long, default_value = "active")]
        desired: String,
        /// Watch only: no mutating provider call for it (not even the label) until
        /// `instances manage ID`.
        #[arg(long)]
        observe_only: bool,
        /// The catalog (accounts, products).
        #[arg(long, default_value = "catalog")]
        catalog: PathBuf,
        /// Who imports it, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Let the reconciler act on an instance imported with --observe-only: its server is
    /// marked as ours, then it converges like any other.
    Manage {
        /// Instance id.
        id: i64,
        /// Who decided it, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Take a failed instance up again after fixing the cause.
    Retry {
        /// Instance id.
        id: i64,
        /// Who decided it, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// Shells that `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
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

/// The log format chosen, for the errors `main` reports after logging is set up.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Installs the global tracing subscriber writing to stderr. `RUST_LOG` takes
/// tracing-subscriber's `EnvFilter` syntax (`info`, `provisioner=debug,warn`,
/// `provisioner::reconcile[step]=trace`); default `info`. Colours only on a terminal, and never
/// when `NO_COLOR` is set (<https://no-color.org>).
///
/// # Errors
/// When `RUST_LOG` does not parse: the message names it and says why.
pub fn init_logging(format: LogFormat) -> Result<(), String> {
    let _ = LOG_FORMAT.set(format);
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse(&v)
            .map_err(|e| format!("RUST_LOG=`{}` is not a valid filter: {e} (e.g. `info` or `provisioner=debug,warn`)", v.escape_default()))?,
        _ => EnvFilter::new("info"),
    };
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
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
    Ok(())
}

fn json_logs() -> bool {
    LOG_FORMAT.get() == Some(&LogFormat::Json)
}

/// Reports a failure (exit 2) with its whole cause chain: `error: …` and `caused by: …` lines,
/// or one JSON event under `--log-format json`.
pub fn report_error(e: &anyhow::Error) {
    let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
    if json_logs() {
        tracing::error!(error = %e, causes = ?causes, "fatal");
        return;
    }
    eprintln!("error: {e}");
    for cause in causes {
        eprintln!("  caused by: {cause}");
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
        Command::Demo { catalog, servers } => {
            let url = cli.database_url_given.then_some(cli.database_url.as_str());
            block_on(daemon::demo(catalog.as_deref(), usize::from(servers), url))
        }
        Command::Plan {
            catalog,
            all,
            format,
            detailed_exitcode,
        } => {
            let result = block_on(daemon::plan(
                &cli.database_url,
                &catalog,
                all,
                format,
                detailed_exitcode,
            ));
            match result {
                // Terraform's convention: with --detailed-exitcode an error is 1.
                Err(e) if detailed_exitcode => {
                    report_error(&e);
                    Ok(ExitCode::from(EXIT_INVALID))
                }
                other => other,
            }
        }
        Command::Tasks(c) => block_on(tasks::run(&cli.database_url, c)),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man(dir.as_deref()),
        Command::Migrate { format } => block_on(instances::migrate(&cli.database_url, format)),
        Command::Instances(c) => block_on(instances::run(&cli.database_url, c)),
        Command::Tokens(c) => block_on(tokens::run(&cli.database_url, c)),
        Command::Webhooks(c) => block_on(webhooks::run(&cli.database_url, c)),
        Command::Orphans {
            catalog,
            account,
            format,
        } => block_on(attach::orphans(
            &cli.database_url,
            &catalog,
            account.as_deref(),
            format,
        )),
    }
}

/// The keyring of the open database at `url`: its configured key, or its key file, generated
/// only while the database holds no sealed secret (never a silent replacement).
pub(crate) async fn keyring(
    url: &str,
    store: &crate::store::SqlStore,
) -> anyhow::Result<std::sync::Arc<crate::secrets::Keyring>> {
    let key = crate::secrets::Keyring::prepare(url)?;
    Ok(key.finish(&store.sealed_key_ids().await?)?)
}

/// The name an admin acts under: `--by`, else `$USER`, else `admin`.
pub(crate) fn operator(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "admin".into())
}

/// Prints a verdict on the input (exit 1): a line on stderr, or a JSON event under
/// `--log-format json`.
pub(crate) fn report_invalid(e: &dyn std::fmt::Display) {
    if json_logs() {
        tracing::error!(error = %e, "invalid input");
    } else {
        eprintln!("error: {e}");
    }
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
