//! Flow visibility in the daemon: decoding the datapath's flow events
//! ([`reader`]), enriching them ([`record`]), keeping the last ones in memory
//! ([`history`]) and writing them to a rotated JSON-lines file ([`log`]).

pub mod history;
pub mod log;
pub mod maps;
pub mod reader;
pub mod record;
