//! Per-CPU packet and byte counters: one per drop reason, one per direction
//! for passed packets. Userspace sums the CPUs.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use porin_common::{
    datapath::{tc_action, Counter, Direction, DIRECTIONS, DROP_REASONS},
    decide::Verdict,
};

/// Dropped (or, in audit mode, would-be dropped) packets by `DropReason`.
#[map]
static PORIN_DROPS_V1: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// Passed packets by `Direction`, audited would-be drops included.
#[map]
static PORIN_FWD_V1: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DIRECTIONS, 0);

/// Counts one packet of `bytes` under its verdict.
#[inline(always)]
pub fn record(verdict: &Verdict, dir: Direction, bytes: u32) {
    if let Some(reason) = verdict.drop {
        add(&PORIN_DROPS_V1, reason as u32, bytes);
    }
    if verdict.action == tc_action::OK {
        add(&PORIN_FWD_V1, dir as u32, bytes);
    }
}

/// Counts one dropped packet of `bytes` under `reason` (the uplink
/// program, which has no `Verdict` to pass).
#[inline(always)]
pub fn drop(reason: porin_common::datapath::DropReason, bytes: u32) {
    add(&PORIN_DROPS_V1, reason as u32, bytes);
}

#[inline(always)]
pub fn add(map: &PerCpuArray<Counter>, index: u32, bytes: u32) {
    // The lookup only fails for an index beyond the array, which the enums'
    // sizes rule out; a counter is not worth a verdict change either way.
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; the program runs with preemption disabled
        // on this CPU, so plain adds do not race.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(bytes);
        }
    }
}
