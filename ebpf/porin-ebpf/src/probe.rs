//! `probe_frames`: counts frames by class and drops malformed ones.
//!
//! Attached with XDP to any interface (tests attach it to a veth in a
//! namespace they create); it decides nothing about policy. It exists to prove
//! the toolchain, the loader, the test harness and attaching end to end.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use porin_common::{
    packet::{EthHdr, ETH_HLEN},
    probe::{classify, verdict, FrameClass, FRAME_CLASSES},
};

use crate::access::ptr_at;

/// Frames seen, indexed by `FrameClass`.
#[map]
static PORIN_PROBE_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(FRAME_CLASSES, 0);

#[xdp]
pub fn probe_frames(ctx: XdpContext) -> u32 {
    let class = try_classify(&ctx).unwrap_or(FrameClass::Malformed);
    if let Some(counter) = PORIN_PROBE_V1.get_ptr_mut(class as u32) {
        // Per-CPU slot: no other CPU writes it, a plain add is enough.
        unsafe { *counter += 1 };
    }
    verdict(class) as u32
}

#[inline(always)]
fn try_classify(ctx: &XdpContext) -> Result<FrameClass, ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    let ether_type = unsafe { (*eth).ethertype() };
    let l3_len = end.saturating_sub(start + ETH_HLEN);
    let first_byte = match ptr_at::<u8>(start, end, ETH_HLEN) {
        Ok(p) => unsafe { *p },
        Err(()) => 0,
    };
    Ok(classify(ether_type, l3_len, first_byte))
}

// Keeps the action constants the verdict enum mirrors checked at build time.
const _: () = assert!(xdp_action::XDP_DROP == porin_common::probe::ProbeVerdict::Drop as u32);
const _: () = assert!(xdp_action::XDP_PASS == porin_common::probe::ProbeVerdict::Pass as u32);
