//! Types shared by Porin's eBPF programs and its userspace, and the pure logic
//! both sides run.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` without implicit padding, and
//! free of `bool`, `Option` and enums with data inside map types, so the same
//! bytes mean the same thing in the kernel and in the daemon. `aya::Pod` is
//! implemented only with the `user` feature (the userspace build).
#![no_std]

pub mod ct;
pub mod datapath;
pub mod dcache;
pub mod decide;
pub mod flow;
pub mod http;
pub mod http_stream;
pub mod layout;
pub mod maps;
pub mod mqtt;
pub mod packet;
pub mod parse;
pub mod probe;
pub mod sip;
pub mod spoof;
pub mod uplink;
