//! The deny cache (`PORIN_DCACHE_V1`): repeated packets of a flow the slow
//! path dropped get the same drop from one per-CPU array lookup instead of
//! an endpoint, two identity and up to four policy lookups. Never a pass:
//! only enforce-mode `PolicyDenied` and `SpoofedSource` drops are stored.
//! What counts as a hit, and why entries go stale with the epoch, is
//! `porin_common::dcache` and the datapath module notes ("Deny cache").

use aya_ebpf::{macros::map, maps::PerCpuArray};
use porin_common::{
    datapath::{max_entries, DenyEntry, Direction, DropReason},
    dcache::{self, ENTRY_WORDS},
    decide::Verdict,
    parse::Flow,
};

use crate::policy;

/// Per CPU: an entry is only ever written and read by its own CPU, so it
/// is never torn. (Array maps cannot shrink or evict: a direct-mapped slot
/// is simply overwritten by the next drop that hashes there.)
#[map]
static PORIN_DCACHE_V1: PerCpuArray<DenyEntry> =
    PerCpuArray::with_max_entries(max_entries::DENY_CACHE, 0);

/// A repeated drop, filled in by `check`: entry words 6 and 7 (reason and
/// identities, `porin_common::dcache`), `found` non-zero on a hit.
///
/// Plain words, zeroed before the lookup, rather than an enum or `Option`:
/// LLVM merged the hit's flow event with the slow path's and read the
/// hit's fields on paths where they were never written, which kernels
/// before about 5.19 refuse ("invalid read from stack"; 5.10 in the VM
/// matrix).
pub struct Hit {
    pub found: u64,
    pub w6: u64,
    pub w7: u64,
}

impl Hit {
    pub const NONE: Hit = Hit {
        found: 0,
        w6: 0,
        w7: 0,
    };
}

/// Looks `flow` up: on a hit, fills `hit` (`found` set) and returns 0; on
/// a miss returns the epoch `store` must use afterwards (0: cache off).
///
/// The epoch is read here, before the slow path reads any map, and handed
/// to `store`: the manager bumps the epoch after it changed the maps, so a
/// packet that was judged (partly) with the old maps is stored under the
/// old epoch, which is no longer current. Reading it after the slow path
/// could store an old-maps verdict under the new epoch and repeat it for
/// good.
///
/// A plain `u32` rather than the probe: an `Option<DenyProbe>` kept across
/// the slow path was read uninitialised too (see `Hit`). `store` computes
/// the probe again, on the slow path only.
#[inline(always)]
pub fn check(flow: &Flow, dir: Direction, ifindex: u32, hit: &mut Hit) -> u32 {
    let Some(epoch) = policy::cache_epoch() else {
        return 0;
    };
    let probe = dcache::probe(flow, dir, ifindex, epoch);
    let Some(entry) = PORIN_DCACHE_V1.get_ptr_mut(probe.slot) else {
        return 0;
    };
    let w = entry.cast::<u64>();
    // SAFETY: this CPU's slot, a 64-byte, 8-aligned map value valid for
    // the program run; nothing else writes it meanwhile (per CPU, and the
    // program runs with preemption disabled).
    let words: [u64; ENTRY_WORDS] = unsafe {
        [
            *w,
            *w.add(1),
            *w.add(2),
            *w.add(3),
            *w.add(4),
            *w.add(5),
            *w.add(6),
            *w.add(7),
        ]
    };
    if dcache::hit(&words, &probe).is_none() {
        return epoch;
    }
    // SAFETY: as above.
    unsafe { (*entry).hits = (*entry).hits.wrapping_add(1) };
    hit.found = 1;
    hit.w6 = words[6];
    hit.w7 = words[7];
    0
}

/// The verdict, reason and identities of a hit (`found` set).
#[inline(always)]
pub fn repeated(hit: &Hit) -> (Verdict, DropReason, u32, u32) {
    let reason = dcache::stored_reason(hit.w6);
    let words = [0, 0, 0, 0, 0, 0, hit.w6, hit.w7];
    let (subject, peer) = dcache::identities(&words);
    (dcache::hit_verdict(reason), reason, subject, peer)
}

/// Remembers the slow path's `verdict` for `flow` under `epoch` (from
/// `check`; 0 = cache off) if it is a drop the cache may repeat
/// (`dcache::cacheable`), overwriting the slot.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn store(
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    epoch: u32,
    verdict: &Verdict,
    subject: u32,
    peer: u32,
) {
    if epoch == 0 {
        return;
    }
    let Some(reason) = dcache::cacheable(verdict) else {
        return;
    };
    let probe = dcache::probe(flow, dir, ifindex, epoch);
    let Some(entry) = PORIN_DCACHE_V1.get_ptr_mut(probe.slot) else {
        return;
    };
    let words = dcache::entry_words(&probe, reason, subject, peer);
    let w = entry.cast::<u64>();
    // SAFETY: as in `check`; word by word (see `porin_common::dcache`).
    unsafe {
        w.write_volatile(words[0]);
        w.add(1).write_volatile(words[1]);
        w.add(2).write_volatile(words[2]);
        w.add(3).write_volatile(words[3]);
        w.add(4).write_volatile(words[4]);
        w.add(5).write_volatile(words[5]);
        w.add(6).write_volatile(words[6]);
        w.add(7).write_volatile(words[7]);
    }
}
