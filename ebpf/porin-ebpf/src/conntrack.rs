//! Connection tracking: remembers allowed flows per endpoint so their later
//! packets and replies skip policy.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use porin_common::{
    datapath::{max_entries, CtKey, CtValue, Direction, DropReason},
    decide::{ct_hit_admits, ct_key, ct_refresh_due, ct_reply_key, ct_value},
    parse::Flow,
};

/// LRU: a full table evicts the least recently used flow instead of failing
/// inserts, so a flood of new flows cannot make allowed traffic drop.
#[map]
static PORIN_CT_V1: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(max_entries::CONNTRACK, 0);

/// Whether `flow` belongs to a connection endpoint `ifindex` already
/// allowed: its own tuple seen in this direction, or (if it may be a reply)
/// its reversed tuple seen in the other. A hit counts itself in the entry and
/// reads the clock only when a refresh is due (see `CtValue`).
#[inline(always)]
pub fn established(flow: &Flow, dir: Direction, ifindex: u32) -> bool {
    if hit(&ct_key(flow, ifindex), dir, false) {
        return true;
    }
    flow.may_be_reply && hit(&ct_reply_key(flow, ifindex), dir, true)
}

#[inline(always)]
fn hit(key: &CtKey, dir: Direction, reply: bool) -> bool {
    let Some(entry) = PORIN_CT_V1.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a pointer to the map value, valid for this program run; the
    // aligned 4- and 8-byte stores are atomic, so racing CPUs at worst lose
    // a hit count or store a time a little older.
    unsafe {
        if !ct_hit_admits((*entry).direction, dir, reply) {
            return false;
        }
        let hits = (*entry).hits;
        (*entry).hits = hits.wrapping_add(1);
        if ct_refresh_due(hits) {
            (*entry).last_seen_ns = bpf_ktime_get_ns();
        }
    }
    true
}

/// Records `flow` as allowed at endpoint `ifindex` in direction `dir`.
/// Failing to record it is an error: in enforce mode the packet drops
/// rather than pass with no state behind it.
#[inline(always)]
pub fn create(flow: &Flow, dir: Direction, ifindex: u32) -> Result<(), DropReason> {
    // SAFETY: no preconditions.
    let value = ct_value(unsafe { bpf_ktime_get_ns() }, dir);
    PORIN_CT_V1
        .insert(&ct_key(flow, ifindex), &value, 0)
        .map_err(|_| DropReason::Internal)
}
