//! Flow visibility in the daemon: taking the datapath's flow events from
//! a ring buffer or perf buffers ([`source`]), decoding them ([`reader`]),
//! enriching them ([`record`]), keeping the last ones in memory
//! ([`history`]) and writing them to a rotated JSON-lines file ([`log`]).

pub mod history;
pub mod log;
pub mod maps;
pub mod reader;
pub mod record;
pub mod source;
