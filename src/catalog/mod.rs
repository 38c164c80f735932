//! The catalog: products and provider accounts that ops declare in YAML files kept in git.
//!
//! - [`yaml`] reads text into a tree that knows where each node was written;
//! - [`parse`] and [`module`] check that tree into the domain types of [`model`], reporting every
//!   error at once as a [`Diagnostic`] (`path:line:column: error: message`);
//! - [`revision`] gives each product a content hash, [`diff`] compares two catalogs;
//! - [`source`] finds the files (a directory, or a directory at a git revision);
//! - [`watch`] keeps a running daemon's catalog current, keeping the last good one when an edit
//!   is invalid.

pub mod diag;
pub mod diff;
pub mod example;
mod fields;
pub mod model;
pub mod module;
pub mod notify;
pub mod parse;
pub mod revision;
pub mod source;
pub mod watch;
pub mod yaml;

use std::fmt;
use std::path::Path;

pub use diag::{Diagnostic, Severity};
pub use model::{
    AccountSettings, Catalog, Credential, GitInfo, Module, OrderRefusal, Origin, OsImage,
    PoolServer, Pricing, Product, ProductConfig, ProductType, ProviderAccount, Provisioning,
    RateLimit, Revision, SimSettings, SourceInfo, Specs, StorageType,
};
pub use parse::{SourceFile, API_VERSION};
pub use source::SourceError;

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The files could not be read (exit code 2 for `catalog validate`).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The files were read and the catalog has errors (exit code 1).
    #[error("{}", Invalid(.dir, .diagnostics))]
    Invalid {
        /// The catalog directory.
        dir: String,
        /// Every error and warning, sorted by place.
        diagnostics: Vec<Diagnostic>,
    },
}

struct Invalid<'a>(&'a str, &'a [Diagnostic]);

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (errors, _) = diag::count(self.1);
        write!(
            f,
            "catalog {} is invalid ({}):",
            self.0,
            diag::plural(errors, "error")
        )?;
        for d in self.1.iter().filter(|d| d.is_error()) {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

impl LoadError {
    /// The diagnostics of an invalid catalog; empty for I/O failures.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Invalid { diagnostics, .. } => diagnostics,
            LoadError::Source(_) => &[],
        }
    }
}

/// Whether an environment variable is set (and not empty) in this process's environment.
pub fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Loads and checks the catalog below `dir`, with credentials checked against this process's
/// environment, and records the git commit when `dir` is in a git work tree.
///
/// ```
/// let catalog = provisioner::catalog::load(std::path::Path::new("catalog"))?;
/// let product = catalog.product("sim-vps-small").expect("in the example catalog");
/// assert_eq!(catalog.account_of(product).unwrap().module.as_str(), "sim");
/// # Ok::<(), provisioner::catalog::LoadError>(())
/// ```
///
/// # Errors
/// [`LoadError::Source`] when files cannot be read, [`LoadError::Invalid`] with every diagnostic
/// when the catalog has errors.
pub fn load(dir: &Path) -> Result<Catalog, LoadError> {
    load_with_env(dir, &env_is_set)
}

/// [`load`] with the environment lookup given, for tests and tools.
///
/// # Errors
/// As [`load`].
pub fn load_with_env(
    dir: &Path,
    env_is_set: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Catalog, LoadError> {
    let files = source::read_dir(dir)?;
    let git = source::git_info(dir);
    from_files(&dir.display().to_string(), files, git, env_is_set)
}

/// Loads the catalog directory `PATH` as it was at git revision `REV`, from `REV:PATH`.
///
/// # Errors
/// As [`load`]; git failures are [`LoadError::Source`].
pub fn load_git(spec: &str) -> Result<Catalog, LoadError> {
    let files = source::read_git(spec)?;
    from_files(spec, files, None, &env_is_set)
}

/// Checks already-read files into a catalog.
///
/// # Errors
/// [`LoadError::Invalid`] when the catalog has errors, including when there are no files.
pub fn from_files(
    dir: &str,
    files: source::Files,
    git: Option<GitInfo>,
    env_is_set: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Catalog, LoadError> {
    let source::Files {
        files,
        diagnostics: mut read_problems,
    } = files;
    if files.is_empty() && read_problems.is_empty() {
        read_problems.push(Diagnostic {
            file: dir.to_owned(),
            line: 1,
            column: 1,
            severity: Severity::Error,
            message: "no catalog files: expected *.yaml or *.yml files in this directory or \
                      below it"
                .to_owned(),
        });
    }
    let checked = parse::check(&files, env_is_set);
    let mut diagnostics = read_problems;
    diagnostics.extend(checked.diagnostics);
    diagnostics.sort();
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(LoadError::Invalid {
            dir: dir.to_owned(),
            diagnostics,
        });
    }
    Ok(Catalog {
        products: checked.products,
        accounts: checked.accounts,
        webhooks: checked.webhooks,
        notifiers: checked.notifiers,
        source: SourceInfo {
            dir: dir.to_owned(),
            files: files.len(),
            git,
        },
        warnings: diagnostics,
    })
}
