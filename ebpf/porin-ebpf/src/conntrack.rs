//! Connection tracking: remembers allowed flows per endpoint so their later
//! packets and replies skip policy. One lookup per packet: see the datapath
//! module notes (`porin_common::datapath`) on canonical keys.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use porin_common::{
    datapath::{max_entries, Ct4Key, CtKey, CtValue, Direction, DropReason},
    decide::{ct4_key, ct6_key, ct_admits, ct_refresh_due, ct_value, CtLookup},
    parse::Flow,
};

/// `BPF_NOEXIST`: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
/// `-EEXIST` from a `BPF_NOEXIST` insert.
const EEXIST: i32 = -17;

/// IPv4 connections. LRU: a full table evicts the least recently used flow
/// instead of failing inserts, so a flood of new flows cannot make allowed
/// traffic drop.
#[map]
static PORIN_CT4_V1: LruHashMap<Ct4Key, CtValue> =
    LruHashMap::with_max_entries(max_entries::CONNTRACK, 0);

/// IPv6 connections (LRU likewise).
#[map]
static PORIN_CT_V1: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(max_entries::CONNTRACK6, 0);

/// [`established`]: not a known connection.
pub const MISS: u8 = 0;
/// [`established`]: a known connection, pass.
pub const HIT: u8 = 1;
/// [`established`]: a known HTTP-ruled connection, going the first
/// packet's way (client to server): the HTTP stage judges its payload.
pub const HIT_HTTP: u8 = 2;

/// Whether `flow` belongs to a connection endpoint `ifindex` already
/// allowed: its own tuple seen in this direction, or (if it may be a reply)
/// its reversed tuple seen in the other. A hit counts itself in the entry
/// and reads the clock only when a refresh is due (see `CtValue`).
/// Returns [`MISS`], [`HIT`] or [`HIT_HTTP`].
#[inline(always)]
pub fn established(flow: &Flow, dir: Direction, ifindex: u32) -> u8 {
    if flow.family == 4 {
        let l = ct4_key(flow, ifindex);
        admits(PORIN_CT4_V1.get_ptr_mut(&l.key), &l, flow, dir)
    } else {
        let l = ct6_key(flow, ifindex);
        admits(PORIN_CT_V1.get_ptr_mut(&l.key), &l, flow, dir)
    }
}

#[inline(always)]
fn admits<K>(entry: Option<*mut CtValue>, l: &CtLookup<K>, flow: &Flow, dir: Direction) -> u8 {
    let Some(entry) = entry else {
        return MISS;
    };
    // SAFETY: a pointer to the map value, valid for this program run; the
    // aligned 4- and 8-byte stores are atomic, so racing CPUs at worst lose
    // a hit count or store a time a little older.
    unsafe {
        if !ct_admits(&*entry, dir, l.origin, l.symmetric, flow.may_be_reply) {
            return MISS;
        }
        let hits = (*entry).hits;
        (*entry).hits = hits.wrapping_add(1);
        if ct_refresh_due(hits) {
            (*entry).last_seen_ns = bpf_ktime_get_ns();
        }
        // The one extra test for plain flows.
        if (*entry).l7 != 0 && l.origin == (*entry).origin {
            return HIT_HTTP;
        }
    }
    HIT
}

/// Records `flow` as allowed at endpoint `ifindex` in direction `dir`.
/// An entry already under the key (one that did not admit this packet,
/// e.g. the connection seen the other way) is kept: the packet passes on
/// policy's word alone. Failing to record otherwise is an error: in enforce
/// mode the packet drops rather than pass with no state behind it.
/// `l7` marks an HTTP-ruled connection (`CtValue::l7`).
#[inline(always)]
pub fn create(flow: &Flow, dir: Direction, ifindex: u32, l7: u8) -> Result<(), DropReason> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let rc = if flow.family == 4 {
        let l = ct4_key(flow, ifindex);
        PORIN_CT4_V1.insert(&l.key, &ct_value(now, dir, l.origin, l7), BPF_NOEXIST)
    } else {
        let l = ct6_key(flow, ifindex);
        PORIN_CT_V1.insert(&l.key, &ct_value(now, dir, l.origin, l7), BPF_NOEXIST)
    };
    match rc {
        Ok(()) => Ok(()),
        Err(e) if e == EEXIST => Ok(()),
        Err(_) => Err(DropReason::Internal),
    }
}
