//! Logging setup: the level comes from the config file; `RUST_LOG`, when
//! set, overrides it (same syntax as env_logger everywhere).

use log::LevelFilter;

/// Installs the global logger. Call once, after the config is read.
pub fn init(level: LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();
}
