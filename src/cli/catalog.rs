//! `provisioner catalog validate | show | diff`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use super::{CatalogCommand, Format, ShowFormat, EXIT_INVALID, EXIT_OK};
use crate::catalog::diag::{count, plural};
use crate::catalog::diff::{account_json, diff, CatalogDiff, FieldChange};
use crate::catalog::revision::normalized;
use crate::catalog::{self, Catalog, Diagnostic, LoadError};

pub(super) fn run(command: CatalogCommand) -> anyhow::Result<ExitCode> {
    match command {
        CatalogCommand::Validate { dir, format } => validate(&dir, format),
        CatalogCommand::Show { dir, format } => show(&dir, format),
        CatalogCommand::Diff { old, new, format } => diff_command(&old, &new, format),
    }
}

/// Loads a catalog, turning I/O failures into errors (exit 2) and an invalid catalog into
/// `Ok(Err(diagnostics))` (exit 1).
fn load_or_diagnostics(
    result: Result<Catalog, LoadError>,
) -> anyhow::Result<Result<Catalog, Vec<Diagnostic>>> {
    match result {
        Ok(c) => Ok(Ok(c)),
        Err(LoadError::Invalid { diagnostics, .. }) => Ok(Err(diagnostics)),
        Err(e @ LoadError::Source(_)) => Err(e.into()),
    }
}

fn validate(dir: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let shown = dir.display().to_string();
    let outcome = load_or_diagnostics(catalog::load(dir))?;
    let (diagnostics, catalog) = match &outcome {
        Ok(c) => (c.warnings.as_slice(), Some(c)),
        Err(d) => (d.as_slice(), None),
    };
    let (errors, warnings) = count(diagnostics);
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => {
            for d in diagnostics {
                writeln!(out, "{d}")?;
            }
            match catalog {
                Some(c) => {
                    let mut line = format!(
                        "{shown}: valid: {}, {} in {}",
                        plural(c.products.len(), "product"),
                        plural(c.accounts.len(), "account"),
                        plural(c.source.files, "file")
                    );
                    if !c.webhooks.is_empty() {
                        line.push_str(&format!(
                            ", {}",
                            plural(c.webhooks.len(), "webhook endpoint")
                        ));
                    }
                    if !c.notifiers.is_empty() {
                        line.push_str(&format!(
                            ", {}",
                            plural(c.notifiers.len(), "e-mail notifier")
                        ));
                    }
                    if warnings > 0 {
                        line.push_str(&format!(", {}", plural(warnings, "warning")));
                    }
                    if let Some(git) = &c.source.git {
                        let short: String = git.commit.chars().take(12).collect();
                        let dirty = if git.dirty {
                            " with uncommitted changes"
                        } else {
                            ""
                        };
                        line.push_str(&format!(" (git {short}{dirty})"));
                    }
                    writeln!(out, "{line}")?;
                }
                None => writeln!(
                    out,
                    "{shown}: invalid: {}, {}",
                    plural(errors, "error"),
                    plural(warnings, "warning")
                )?,
            }
        }
        Format::Json => {
            let report = json!({
                "dir": shown,
                "valid": catalog.is_some(),
                "errors": errors,
                "warnings": warnings,
                "products": catalog.map(|c| c.products.len()),
                "accounts": catalog.map(|c| c.accounts.len()),
                "webhook_endpoints": catalog.map(|c| c.webhooks.len()),
                "email_notifiers": catalog.map(|c| c.notifiers.len()),
                "files": catalog.map(|c| c.source.files),
                "git_commit": catalog.and_then(|c| c.source.git.as_ref().map(|g| g.commit.clone())),
                "git_dirty": catalog.and_then(|c| c.source.git.as_ref().map(|g| g.dirty)),
                "diagnostics": diagnostics,
            });
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::from(if catalog.is_some() {
        EXIT_OK
    } else {
        EXIT_INVALID
    }))
}

/// The resolved catalog as one JSON value: source, accounts, products with revisions.
pub fn resolved(c: &Catalog) -> Value {
    let products: Vec<Value> = c
        .products
        .values()
        .map(|p| {
            let mut v = normalized(p);
            if let Value::Object(m) = &mut v {
                m.insert("revision".into(), Value::String(p.revision.0.clone()));
                m.insert("defined_at".into(), Value::String(p.origin.to_string()));
            }
            v
        })
        .collect();
    let accounts: Vec<Value> = c
        .accounts
        .values()
        .map(|a| {
            let mut v = account_json(a);
            if let Value::Object(m) = &mut v {
                m.insert("defined_at".into(), Value::String(a.origin.to_string()));
            }
            v
        })
        .collect();
    json!({
        "source": {
            "dir": c.source.dir,
            "files": c.source.files,
            "git_commit": c.source.git.as_ref().map(|g| g.commit.clone()),
            "git_dirty": c.source.git.as_ref().map(|g| g.dirty),
        },
        "accounts": accounts,
        "products": products,
        "webhook_endpoints": c.webhooks.values().map(|w| w.to_json()).collect::<Vec<_>>(),
        "email_notifiers": c.notifiers.values().map(|n| n.to_json()).collect::<Vec<_>>(),
    })
}

fn print_invalid(name: &str, diagnostics: &[Diagnostic]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    for d in diagnostics {
        writeln!(out, "{d}")?;
    }
    let (errors, warnings) = count(diagnostics);
    writeln!(
        out,
        "{name}: invalid: {}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )?;
    Ok(ExitCode::from(EXIT_INVALID))
}

fn show(dir: &Path, format: ShowFormat) -> anyhow::Result<ExitCode> {
    let c = match load_or_diagnostics(catalog::load(dir))? {
        Ok(c) => c,
        Err(d) => return print_invalid(&dir.display().to_string(), &d),
    };
    for w in &c.warnings {
        eprintln!("{w}");
    }
    let value = resolved(&c);
    let mut out = std::io::stdout().lock();
    match format {
        ShowFormat::Yaml => {
            let text = crate::catalog::yaml::render(&value)
                .context("cannot render the catalog as YAML")?;
            out.write_all(text.as_bytes())?;
        }
        ShowFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &value)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn load_spec(spec: &str) -> Result<Catalog, LoadError> {
    if catalog::source::is_git_spec(spec) {
        catalog::load_git(spec)
    } else {
        catalog::load(Path::new(spec))
    }
}

fn diff_command(old: &str, new: &str, format: Format) -> anyhow::Result<ExitCode> {
    let old_catalog = match load_or_diagnostics(load_spec(old))? {
        Ok(c) => c,
        Err(d) => return print_invalid(old, &d),
    };
    let new_catalog = match load_or_diagnostics(load_spec(new))? {
        Ok(c) => c,
        Err(d) => return print_invalid(new, &d),
    };
    let d = diff(&old_catalog, &new_catalog);
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &d)?;
            writeln!(out)?;
        }
        Format::Text => write_diff(&mut out, &d)?,
    }
    Ok(ExitCode::from(EXIT_OK))
}

fn write_fields(out: &mut impl Write, fields: &[FieldChange]) -> std::io::Result<()> {
    for f in fields {
        writeln!(out, "      {}: {} -> {}", f.field, f.old, f.new)?;
    }
    Ok(())
}

fn write_diff(out: &mut impl Write, d: &CatalogDiff) -> std::io::Result<()> {
    if d.is_empty() {
        return writeln!(out, "no differences");
    }
    for e in &d.products_added {
        writeln!(out, "+ product {} (revision {})", e.id, e.detail)?;
    }
    for e in &d.products_removed {
        writeln!(out, "- product {} (revision {})", e.id, e.detail)?;
    }
    for c in &d.products_changed {
        writeln!(
            out,
            "~ product {} (revision {} -> {})",
            c.id, c.old_revision, c.new_revision
        )?;
        write_fields(out, &c.fields)?;
    }
    for e in &d.accounts_added {
        writeln!(out, "+ account {} (module {})", e.id, e.detail)?;
    }
    for e in &d.accounts_removed {
        writeln!(out, "- account {} (module {})", e.id, e.detail)?;
    }
    for c in &d.accounts_changed {
        writeln!(out, "~ account {}", c.id)?;
        write_fields(out, &c.fields)?;
    }
    if !d.products_changed.is_empty() {
        writeln!(
            out,
            "Servers already sold keep the revision they were sold under; changed products \
             apply to new orders."
        )?;
    }
    writeln!(out, "{}", d.summary())
}
