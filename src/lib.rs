//! Porin: container network-security gateway for edge devices.
//!
//! The library holds everything the `porin` binary does, so integration tests
//! can drive the same code.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod control;
pub mod datapath;
pub mod discovery;
pub mod ebpf;
pub mod enforce;
pub mod flows;
pub mod kernel;
pub mod logging;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod selftest;
pub mod signals;
pub mod state;
pub mod suggest;
pub mod testing;

/// Porin's version, as printed by `porin version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
