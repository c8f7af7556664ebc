//! Porin's eBPF programs. Built for `bpfel-unknown-none` by the root
//! `build.rs` (aya-build) and embedded in the `porin` binary.
//!
//! Each entry point is a thin `#[xdp]` / `#[classifier]` function over a
//! `try_*` function returning `Result`; the decisions themselves live in
//! `porin-common`, where the host tests them.
#![no_std]
#![no_main]
// `core::intrinsics::atomic_xadd`: the per-endpoint conntrack counts.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod access;
mod baseline;
mod conntrack;
mod counters;
mod dcache;
mod events;
mod gate;
mod http;
mod identity;
mod meta;
mod mqtt;
mod parse;
mod policy;
mod probe;
mod tc;
mod uplink;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called;
    // a loop is the only body a `!` function can have without helpers.
    loop {}
}

// Dual license so the kernel lets the programs call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
