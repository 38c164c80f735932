//! Diagnostics: one problem of a catalog, with the file, line and column it was found at.

use std::fmt;

use serde::Serialize;

/// How bad a diagnostic is. Errors make a catalog invalid; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The catalog cannot be used.
    Error,
    /// Worth a look, but the catalog is usable (e.g. a credential not set in this environment).
    Warning,
}

impl Severity {
    /// The word printed in `path:line:column: <severity>: message`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem of a catalog, printed as `path:line:column: error: message`, the form compilers
/// use and CI annotation matchers understand.
///
/// Ordering is by file, then line, then column, so sorted diagnostics read top to bottom.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Diagnostic {
    /// The file, as the catalog directory was named plus the path below it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl Diagnostic {
    /// Whether this diagnostic makes the catalog invalid.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file,
            self.line,
            self.column,
            self.severity.as_str(),
            self.message
        )
    }
}

/// Counts errors and warnings of a list of diagnostics.
pub fn count(diagnostics: &[Diagnostic]) -> (usize, usize) {
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    (errors, diagnostics.len() - errors)
}

/// "1 error", "3 warnings": the English of a count.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic {
            file: "catalog/vps.yaml".into(),
            line: 12,
            column: 5,
            severity: Severity::Error,
            message: "unknown field `ram_gib`".into(),
        };
        assert_eq!(
            d.to_string(),
            "catalog/vps.yaml:12:5: error: unknown field `ram_gib`"
        );
    }
}
