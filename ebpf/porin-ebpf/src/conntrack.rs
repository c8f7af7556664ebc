//! Connection tracking: remembers allowed flows per endpoint so their later
//! packets and replies skip policy. One lookup per packet: see the datapath
//! module notes (`porin_common::datapath`) on canonical keys, and
//! `porin_common::ct` for the states, idle timeouts and revocation.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use porin_common::{
    ct::{self, Hit},
    datapath::{max_entries, Ct4Key, CtClock, CtCount, CtKey, CtValue, Direction, DropReason},
    decide::{ct4_key, ct6_key, ct_admits, ct_value, CtLookup},
    parse::Flow,
};

use crate::identity;

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

/// The clock, idle timeouts and quota (`CtClock`), written by the manager.
#[map]
static PORIN_CTCLK_V1: Array<CtClock> = Array::with_max_entries(1, 0);

/// Entries per endpoint (host veth ifindex), IPv4 and IPv6 together, and
/// the HTTP-ruled ones among them (`CtCount`): the programs add one per
/// entry they make and take one per stale entry they delete (atomic adds:
/// every CPU writes it); the manager's sweep sets them to what the tables
/// hold, which also accounts for the entries the manager deletes and those
/// the LRU evicts.
#[map]
static PORIN_CTN_V1: HashMap<u32, CtCount> = HashMap::with_max_entries(max_entries::ENDPOINTS, 0);

/// Adds `delta` (wrapping: `u32::MAX` takes one) to endpoint `ifindex`'s
/// entries, and to its HTTP-ruled ones if `l7`, atomically:
/// `core::sync::atomic` has no atomics for the BPF target, so the
/// intrinsic. Its result is unused, so LLVM emits the plain atomic add
/// (`BPF_XADD`, no fetch), which every kernel we support (5.10 included)
/// has.
#[inline(always)]
fn count_add(ifindex: u32, delta: u32, l7: bool) {
    use core::intrinsics::{atomic_xadd, AtomicOrdering};
    if let Some(c) = PORIN_CTN_V1.get_ptr_mut(&ifindex) {
        // SAFETY: pointers into the map value, valid for this run, aligned.
        unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*c).entries),
                delta,
            );
            if l7 {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
                    core::ptr::addr_of_mut!((*c).http),
                    delta,
                );
            }
        }
    }
}

/// Whether endpoint `ifindex` may have one more entry, an HTTP-ruled one
/// if `l7`: under its quotas (`CtClock::max_per_endpoint`,
/// `CtClock::max_http_per_endpoint`, 0 for none). Starts its count if it
/// has none yet. Checked once before a new flow is recorded (HTTP state
/// included), so a refused flow leaves nothing behind.
#[inline(always)]
pub fn room(ifindex: u32, l7: bool) -> Result<(), DropReason> {
    let (quota, http_quota) = PORIN_CTCLK_V1
        .get(0)
        .map_or((0, 0), |c| (c.max_per_endpoint, c.max_http_per_endpoint));
    let Some(c) = PORIN_CTN_V1.get_ptr_mut(&ifindex) else {
        let zero = CtCount {
            entries: 0,
            http: 0,
        };
        let _ = PORIN_CTN_V1.insert(&ifindex, &zero, BPF_NOEXIST);
        return Ok(());
    };
    // SAFETY: as in `count_add`; a racing add at worst lets one more in.
    let (entries, http) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*c).entries)),
            core::ptr::read_volatile(core::ptr::addr_of!((*c).http)),
        )
    };
    // A count the sweep set just before an entry it did not see was made
    // and then deleted again wraps below zero (there is no compare-and-swap
    // on 5.10 to clamp it); read as 0 until the next sweep, not as full.
    let low = |n: u32| if n & 0x8000_0000 != 0 { 0 } else { n };
    let (entries, http) = (low(entries), low(http));
    if quota != 0 && entries >= quota {
        return Err(DropReason::ConntrackQuota);
    }
    if l7 && http_quota != 0 && http >= http_quota {
        return Err(DropReason::HttpQuota);
    }
    Ok(())
}

/// [`established`]: not a known connection (or a stale entry, deleted).
pub const MISS: u8 = 0;
/// [`established`]: a known connection, pass.
pub const HIT: u8 = 1;
/// [`established`]: a known HTTP-ruled connection, going the first
/// packet's way (client to server): the HTTP stage judges its payload.
pub const HIT_HTTP: u8 = 2;
/// [`established`]: a TCP connection the manager revoked: the packet is
/// answered with RSTs both ways (`http::revoke`).
pub const REVOKED: u8 = 3;

/// Whether `flow` belongs to a connection endpoint `ifindex` already
/// allowed: its own tuple seen in this direction, or (if it may be a reply)
/// its reversed tuple seen in the other. A hit moves the entry's state and
/// stamps it with the manager's clock; a stale entry (`Hit::Expired`) is
/// deleted here and the packet is a miss.
///
/// Into the container (`dir` ingress), `came_in` is the packet's
/// `skb->ingress_ifindex`: a hit needs it to be the way the peer's packets
/// were checked to come in by (`CtValue::peer_in`); another way is checked
/// again (`identity::check_ingress`), recorded if it passes, a miss if not
/// (the slow path then drops it as `SpoofedIngress`); `came_in` =
/// `ifindex` (the stage programs' answers) passes. Unused out of it.
/// Returns [`MISS`], [`HIT`], [`HIT_HTTP`] or [`REVOKED`].
#[inline(always)]
pub fn established(flow: &Flow, dir: Direction, ifindex: u32, came_in: u32) -> u8 {
    if flow.family == 4 {
        let l = ct4_key(flow, ifindex);
        let r = admits(
            PORIN_CT4_V1.get_ptr_mut(&l.key),
            &l,
            flow,
            dir,
            ifindex,
            came_in,
        );
        if r == STALE || r == STALE_HTTP {
            if PORIN_CT4_V1.remove(&l.key).is_ok() {
                count_add(ifindex, u32::MAX, r == STALE_HTTP);
            }
            return MISS;
        }
        r
    } else {
        let l = ct6_key(flow, ifindex);
        let r = admits(
            PORIN_CT_V1.get_ptr_mut(&l.key),
            &l,
            flow,
            dir,
            ifindex,
            came_in,
        );
        if r == STALE || r == STALE_HTTP {
            if PORIN_CT_V1.remove(&l.key).is_ok() {
                count_add(ifindex, u32::MAX, r == STALE_HTTP);
            }
            return MISS;
        }
        r
    }
}

/// [`admits`]: the entry is stale, delete it.
const STALE: u8 = 255;
/// [`admits`]: the entry is stale and HTTP-ruled, delete it.
const STALE_HTTP: u8 = 254;

#[inline(always)]
fn admits<K>(
    entry: Option<*mut CtValue>,
    l: &CtLookup<K>,
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    came_in: u32,
) -> u8 {
    let Some(entry) = entry else {
        return MISS;
    };
    let clock = match PORIN_CTCLK_V1.get(0) {
        Some(c) => c,
        None => return MISS,
    };
    // SAFETY: a pointer to the map value, valid for this program run; the
    // aligned 1- and 4-byte stores are atomic, so racing CPUs at worst lose
    // a hit count or store a time a second older.
    unsafe {
        let seen = (*entry).seen_s;
        let state = (*entry).state;
        // Expired entries go whether or not they admit this packet: a
        // stale entry must not keep a new connection from being recorded.
        let stale = if (*entry).l7 != 0 { STALE_HTTP } else { STALE };
        if ct::expired(state, seen, clock) {
            return stale;
        }
        if !ct_admits(&*entry, dir, l.origin, l.symmetric, flow.may_be_reply) {
            return MISS;
        }
        // A container's address only by its own way in, on a hit too: one
        // compare while the way stays the same. A packet that came in by
        // this very veth was sent by this container: one of the answers
        // the stage programs clone back into it from `from_container` (a
        // 403, a RST), as the bridge never sends a frame back out of the
        // port it came in by.
        if let Direction::Ingress = dir {
            if (*entry).peer_in != came_in && came_in != ifindex {
                if identity::check_ingress(&flow.saddr, flow.family, came_in).is_err() {
                    return MISS;
                }
                (*entry).peer_in = came_in;
            }
        }
        let reply = l.origin != (*entry).origin;
        match ct::on_hit(state, seen, clock, flow.protocol, flow.tcp_flags, reply) {
            Hit::Pass(next) => {
                if next != state {
                    (*entry).state = next;
                }
            }
            Hit::Expired => return stale,
            Hit::Revoked => return REVOKED,
        }
        (*entry).hits = (*entry).hits.wrapping_add(1);
        if clock.now_s > seen {
            (*entry).seen_s = clock.now_s;
        }
        // The one extra test for plain flows.
        if (*entry).l7 != 0 && !reply {
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
/// `l7` marks an HTTP-ruled connection (`CtValue::l7`); `peer_in` is the
/// way in the slow path checked for the peer (`CtValue::peer_in`). The
/// caller checked [`room`] first.
#[inline(always)]
pub fn create(
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    l7: u8,
    peer_in: u32,
) -> Result<(), DropReason> {
    // SAFETY: no preconditions.
    let now_s = (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32;
    let state = ct::initial_state(flow.protocol, flow.tcp_flags);
    let rc = if flow.family == 4 {
        let l = ct4_key(flow, ifindex);
        PORIN_CT4_V1.insert(
            &l.key,
            &ct_value(now_s, peer_in, dir, l.origin, l7, state),
            BPF_NOEXIST,
        )
    } else {
        let l = ct6_key(flow, ifindex);
        PORIN_CT_V1.insert(
            &l.key,
            &ct_value(now_s, peer_in, dir, l.origin, l7, state),
            BPF_NOEXIST,
        )
    };
    match rc {
        Ok(()) => {
            count_add(ifindex, 1, l7 != 0);
            Ok(())
        }
        Err(e) if e == EEXIST => Ok(()),
        Err(_) => Err(DropReason::Internal),
    }
}
