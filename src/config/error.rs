//! Configuration errors: each one positioned, all of them reported together.

use std::fmt;

use super::types::Loc;

/// One mistake in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to [`super::load`] or [`super::parse`].
    pub file: String,
    /// 1-based; 0 when the error is not about a position (e.g. I/O).
    pub line: u32,
    /// 1-based; 0 when the error is not about a position.
    pub column: u32,
    /// Starts with the field path, e.g. `policies[2].ports[0]: ...`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every mistake found in one file, in source order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false; present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn io(file: &str, message: String) -> Self {
        ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message,
            }],
        }
    }
}

impl fmt::Display for ConfigErrors {
    /// One `FILE:LINE:COLUMN: message` per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// Collects errors while decoding so one pass reports all of them.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    errors: Vec<(Loc, String)>,
}

impl Sink {
    /// Records `path: message` at `loc`; the path may be empty for
    /// document-level errors.
    pub(crate) fn error(&mut self, loc: Loc, path: &str, message: impl fmt::Display) {
        let text = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        self.errors.push((loc, text));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Sorted by position (stable, so equal positions keep discovery order),
    /// without exact repeats.
    pub(crate) fn into_errors(mut self, file: &str) -> ConfigErrors {
        self.errors.sort_by_key(|(loc, _)| *loc);
        self.errors.dedup();
        ConfigErrors {
            errors: self
                .errors
                .into_iter()
                .map(|(loc, message)| ConfigError {
                    file: file.to_owned(),
                    line: loc.line,
                    column: loc.column,
                    message,
                })
                .collect(),
        }
    }
}
