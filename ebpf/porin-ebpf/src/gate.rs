//! The quarantine gate: `cgroup_skb` programs attached to the container
//! runtimes' parent cgroups (cgroup v2). They pass a packet only when the
//! socket's cgroup, or one of its ancestors, is a container cgroup the
//! daemon has classified (`PORIN_GATE_V1`), so a container that starts while
//! the daemon is down cannot talk until the daemon has set up its policy.
//!
//! The decision needs no packet bytes, hence no parsing here: one map lookup
//! for the common case (the socket sits in the container's own cgroup).

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_skb, map},
    maps::HashMap,
    programs::SkBuffContext,
};
use porin_common::datapath::max_entries;

/// Classified container cgroup id (the cgroup directory's inode in the
/// unified hierarchy) → unused marker.
#[map]
static PORIN_GATE_V1: HashMap<u64, u8> = HashMap::with_max_entries(max_entries::GATE, 0);

/// `cgroup_skb` verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;

/// Every network namespace's loopback device has this ifindex.
const LOOPBACK_IFINDEX: u32 = 1;

/// Deepest ancestor level looked at (the root is level 0): container
/// cgroups sit at level 2-4 in practice, and their own sub-cgroups below.
const MAX_LEVEL: i32 = 12;

#[cgroup_skb(ingress)]
pub fn gate_ingress(ctx: SkBuffContext) -> i32 {
    verdict(ctx.skb.skb)
}

#[cgroup_skb(egress)]
pub fn gate_egress(ctx: SkBuffContext) -> i32 {
    verdict(ctx.skb.skb)
}

#[inline(always)]
fn verdict(skb: *mut __sk_buff) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel passed in.
    let ifindex = unsafe { (*skb).ifindex };
    // A container's own loopback never leaves its network namespace.
    if ifindex == LOOPBACK_IFINDEX {
        return PASS;
    }
    // SAFETY: helper calls on the program's context.
    let id = unsafe { bpf_skb_cgroup_id(skb) };
    if classified(id) {
        return PASS;
    }
    // A process in a sub-cgroup of its container (nested cgroups): the
    // container's cgroup is one of the socket cgroup's ancestors.
    let mut level = 1;
    while level < MAX_LEVEL {
        // SAFETY: as above; 0 means "deeper than the socket's cgroup".
        let a = unsafe { bpf_skb_ancestor_cgroup_id(skb, level) };
        if a == 0 || a == id {
            break;
        }
        if classified(a) {
            return PASS;
        }
        level += 1;
    }
    DROP
}

#[inline(always)]
fn classified(id: u64) -> bool {
    // SAFETY: only presence is checked; the value is not read.
    unsafe { PORIN_GATE_V1.get(&id).is_some() }
}
