//! The control socket: a Unix socket on which `porin status`, `porin
//! policy` and `porin flows` ask the running daemon ([`proto`] has the
//! protocol, [`server`] the daemon side, [`client`] the command side).

pub mod client;
pub mod proto;
pub mod server;
