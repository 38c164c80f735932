//! Where catalog files come from: a directory tree, or a directory at a git revision.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::diag::{Diagnostic, Severity};
use super::model::GitInfo;
use super::parse::SourceFile;

/// Why the files of a catalog could not be read. These are I/O problems, not catalog errors:
/// `catalog validate` exits 2 for them.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory does not exist or is not a directory.
    #[error("catalog directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    /// Listing or reading failed.
    #[error("cannot read {path}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// `REV:PATH` could not be read from git.
    #[error("cannot read catalog {spec} from git: {reason}")]
    Git {
        /// The `REV:PATH` given.
        spec: String,
        /// What git said.
        reason: String,
    },
}

/// The files of a catalog and problems with individual files (such as invalid UTF-8) that are
/// catalog errors rather than I/O failures.
pub struct Files {
    /// Catalog files, sorted by path.
    pub files: Vec<SourceFile>,
    /// Problems found while reading.
    pub diagnostics: Vec<Diagnostic>,
}

/// Whether a file name is a catalog file: `*.yaml` or `*.yml`, not hidden (editors' swap and
/// backup files such as `.vps.yaml.swp` start with a dot or do not end in `.yaml`).
pub fn is_catalog_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Lists the catalog files below `dir`, recursively, in a stable order.
///
/// Hidden files and directories (`.git`, editor temporaries) are skipped. Symbolic links are
/// followed, each directory visited once.
///
/// # Errors
/// [`SourceError`] when `dir` is not a directory or something in it cannot be read.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if !dir.is_dir() {
        return Err(SourceError::NotADirectory(dir.to_owned()));
    }
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let canonical = current.canonicalize().map_err(|source| SourceError::Read {
            path: current.clone(),
            source,
        })?;
        if !visited.insert(canonical) {
            continue;
        }
        let entries = std::fs::read_dir(&current).map_err(|source| SourceError::Read {
            path: current.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| SourceError::Read {
                path: current.clone(),
                source,
            })?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            // `metadata` follows symlinks; a dangling link is skipped like a vanished file.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() && is_catalog_file(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The largest catalog file read. A catalog of 10,000 products is about 6 MiB in all.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most a whole catalog may hold; files past it are not read.
pub const MAX_CATALOG_BYTES: u64 = 16 * 1024 * 1024;

fn too_large(name: String, message: String) -> Diagnostic {
    Diagnostic {
        file: name,
        line: 1,
        column: 1,
        severity: Severity::Error,
        message,
    }
}

/// Reads at most `MAX_FILE_BYTES` + 1 of `path` (a file may grow while it is read).
fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads every catalog file below `dir`.
///
/// # Errors
/// [`SourceError`] when the directory or a file cannot be read.
pub fn read_dir(dir: &Path) -> Result<Files, SourceError> {
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    let mut total: u64 = 0;
    for path in list(dir)? {
        let bytes = match read_capped(&path) {
            Ok(b) => b,
            // Deleted between listing and reading (an editor's atomic save): skip it; the
            // watcher will reload again once the save is complete.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(SourceError::Read { path, source }),
        };
        let name = path.display().to_string();
        let size = bytes.len() as u64;
        if size > MAX_FILE_BYTES {
            diagnostics.push(too_large(
                name,
                format!(
                    "file is larger than {} MiB; split the catalog into smaller files",
                    MAX_FILE_BYTES / (1024 * 1024)
                ),
            ));
            continue;
        }
        total += size;
        if total > MAX_CATALOG_BYTES {
            diagnostics.push(too_large(
                name,
                format!(
                    "the catalog is larger than {} MiB from this file on; it is not read",
                    MAX_CATALOG_BYTES / (1024 * 1024)
                ),
            ));
            break;
        }
        match String::from_utf8(bytes) {
            Ok(text) => files.push(SourceFile { name, text }),
            Err(e) => diagnostics.push(Diagnostic {
                file: name,
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: format!(
                    "file is not valid UTF-8 (invalid byte at offset {}); catalog files are UTF-8 text",
                    e.utf8_error().valid_up_to()
                ),
            }),
        }
    }
    Ok(Files { files, diagnostics })
}

fn git(dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ok()
}

/// The git commit of the work tree `dir` is in, and whether files under `dir` have changed
/// since. `None` when `dir` is not in a git work tree or git is not installed.
pub fn git_info(dir: &Path) -> Option<GitInfo> {
    let head = git(dir, &["rev-parse", "--verify", "--quiet", "HEAD"])?;
    if !head.status.success() {
        return None;
    }
    let commit = String::from_utf8(head.stdout).ok()?.trim().to_owned();
    let status = git(dir, &["status", "--porcelain", "--", "."])?;
    let dirty = !status.status.success() || !status.stdout.is_empty();
    Some(GitInfo { commit, dirty })
}

/// Whether a `catalog diff` argument means a git revision (`REV:PATH`) rather than a directory.
pub fn is_git_spec(arg: &str) -> bool {
    !Path::new(arg).exists() && arg.contains(':')
}

/// Reads the catalog directory `PATH` as it was at revision `REV`, from `REV:PATH`, using the
/// git repository of the current directory.
///
/// # Errors
/// [`SourceError::Git`] when git cannot resolve the revision or path.
pub fn read_git(spec: &str) -> Result<Files, SourceError> {
    let fail = |reason: String| SourceError::Git {
        spec: spec.to_owned(),
        reason,
    };
    let (rev, path) = spec
        .split_once(':')
        .ok_or_else(|| fail("expected REV:PATH".into()))?;
    let path = if path.is_empty() { "." } else { path };
    let here = Path::new(".");
    let listing = git(
        here,
        &[
            "ls-tree",
            "-r",
            "-z",
            "--full-name",
            "--name-only",
            rev,
            "--",
            path,
        ],
    )
    .ok_or_else(|| fail("git is not installed".into()))?;
    if !listing.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&listing.stderr).trim().to_owned(),
        ));
    }
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut names: Vec<&str> = names.split('\0').filter(|n| !n.is_empty()).collect();
    names.sort_unstable();
    for name in names {
        let hidden = name.split('/').any(|part| part.starts_with('.'));
        if hidden || !is_catalog_file(Path::new(name)) {
            continue;
        }
        let blob = git(here, &["cat-file", "blob", &format!("{rev}:{name}")])
            .ok_or_else(|| fail("git is not installed".into()))?;
        if !blob.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&blob.stderr).trim().to_owned(),
            ));
        }
        let display = format!("{rev}:{name}");
        match String::from_utf8(blob.stdout) {
            Ok(text) => files.push(SourceFile {
                name: display,
                text,
            }),
            Err(_) => diagnostics.push(Diagnostic {
                file: display,
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: "file is not valid UTF-8; catalog files are UTF-8 text".into(),
            }),
        }
    }
    if files.is_empty() && diagnostics.is_empty() {
        return Err(fail(format!(
            "no *.yaml or *.yml files under `{path}` at `{rev}`"
        )));
    }
    Ok(Files { files, diagnostics })
}
