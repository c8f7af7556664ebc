//! The configuration file: one YAML document, schema version 1.
//!
//! Reading happens in three steps so that one run reports every mistake:
//! 1. `tree` parses YAML into an untyped tree that keeps every position
//!    (only a YAML syntax error stops here);
//! 2. `decode` builds the typed [`Config`] from the tree with the generic
//!    readers of `read`, checking types, ranges and value syntax (`cidr`,
//!    `http`, `mqtt`, `units`) and collecting errors instead of stopping;
//! 3. `validate` checks what spans items: names, and what references
//!    point at.
//!
//! Nothing is loaded unless the whole file is valid. The schema is
//! documented in `configs/README.md`.

mod cidr;
mod decode;
mod error;
mod http;
mod mqtt;
mod read;
mod tree;
mod types;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use decode::SCHEMA_VERSION;
pub use error::{ConfigError, ConfigErrors};
pub use types::*;
pub use units::{format_duration, parse_duration};
pub use validate::{check_name, RESERVED_NAMES};

/// Reads and validates the configuration file at `path`. Errors (I/O
/// included) name the file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file_name = path.display().to_string();
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::io(&file_name, format!("cannot read the configuration: {e}")))?;
    parse(&source, &file_name)
}

/// Validates `source` and returns the typed configuration, or every mistake
/// found; `file_name` is only used in the messages.
pub fn parse(source: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let mut sink = error::Sink::default();
    let root = match tree::parse(source) {
        Ok(root) => root,
        Err(e) => {
            sink.error(e.loc, "", e.message);
            return Err(sink.into_errors(file_name));
        }
    };
    let config = decode::decode(&root, &mut sink);
    match config {
        Some(config) if sink.is_empty() => Ok(config),
        _ => Err(sink.into_errors(file_name)),
    }
}
