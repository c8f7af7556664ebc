//! The subcommands, one module each; `main.rs` only dispatches.

pub mod endpoints;
pub mod flows;
pub mod io;
pub mod reload;
pub mod run;
pub mod status;
pub mod suggest;
pub mod uninstall;

use std::path::Path;

use crate::{cli::DEFAULT_CONFIG, config};

/// Exit status for an invalid configuration.
pub const EXIT_CONFIG: u8 = 1;
/// Exit status for a failure to start or run.
pub const EXIT_RUNTIME: u8 = 2;

/// The configuration for commands that can run without one: the file given,
/// else the default file if it exists, else the built-in defaults.
pub fn config_or_defaults(path: Option<&Path>) -> Result<config::Config, config::ConfigErrors> {
    match path {
        Some(p) => config::load(p),
        None if Path::new(DEFAULT_CONFIG).exists() => config::load(Path::new(DEFAULT_CONFIG)),
        // The schema's own defaults, through the same decoder as any file.
        None => config::parse("version: 1\n", "<built-in defaults>"),
    }
}

/// Loads `path` and checks what only the policy compiler can tell
/// (identity collisions, a policy larger than the datapath's maps), so a
/// file that would fail at the first apply is refused up front: by
/// `check-config`, at start, and on reload. The error is ready to print.
pub fn load_checked(path: &Path) -> Result<config::Config, String> {
    let cfg = config::load(path).map_err(|errors| errors.to_string())?;
    match crate::policy::compile(&cfg, &[], &[], &crate::policy::http::ANY_KEY) {
        Ok(_) => Ok(cfg),
        Err(crate::policy::CompileError::Collision(mut c)) => {
            c.file = path.display().to_string();
            Err(c.to_string())
        }
        Err(other) => Err(format!("{}: {other}", path.display())),
    }
}
