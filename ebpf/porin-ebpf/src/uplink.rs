//! `from_uplink`: the early filter on the node's uplinks (XDP).
//!
//! Attached with XDP (native where the driver supports it, else generic) to
//! every interface the config lists under `uplinks`. It drops what the rest
//! of the datapath would never accept, before the kernel allocates an skb
//! for it, and passes everything else unchanged: the TC programs on the
//! containers' veths still judge every packet that reaches a container.
//! When in doubt it passes.
//!
//! Per packet, for an interface with a `PORIN_UPCFG_V1` entry:
//! 1. not untagged IPv4/IPv6 (ARP, VLAN, LLDP, ...) → pass;
//!    fixed IP header truncated → pass (the stack drops and counts it);
//! 2. source in the uplink's `deny_from` networks → drop `UplinkDenyListed`
//!    (read from the fixed header alone, so fragments and options do not
//!    slip past);
//! 3. full parse (`porin_common::parse`); refused (options, fragments,
//!    extension headers, malformed L4) → pass: TC drops it if it is for a
//!    container, the stack judges the rest;
//! 4. destination is a container address (`PORIN_UPEP*_V1`, written by the
//!    manager): exactly what `to_container` would do, minus creating state:
//!    its conntrack (keyed by the container's veth ifindex) admits it →
//!    pass (replies to the container's own connections, established
//!    inbound ones); else its endpoint's ingress policy from the source's
//!    identity in the active generation; nothing allows it → drop
//!    `UplinkNoPolicy` (audit mode: counted and passed). No endpoint entry
//!    or no active generation → pass (TC decides);
//! 5. TCP SYN without ACK and UDP (not admitted by conntrack above) pay
//!    one token from the source's bucket; empty → drop `UplinkFlood`.
//!
//! Every outcome is counted (drops in `PORIN_DROPS_V1`, passes by class in
//! `PORIN_UPPASS_V1`); drops emit a flow event (direction ingress,
//! ifindex = the uplink). Map layout: `porin_common::uplink`.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use porin_common::{
    datapath::{
        identity::is_local as identity_is_local, mode, proto, Counter, Direction, DropReason,
        Identity,
    },
    flow,
    parse::{ip_addresses, parse, Flow, Parsed, L3},
    uplink::{
        deny4_key, flood_first, flood_kind, flood_step, max_entries, pass, FloodKey, FloodState,
        UplinkConfig,
    },
};

use crate::{conntrack, counters, events, identity, parse::PacketFrame, policy};

#[map]
static PORIN_UPCFG_V1: HashMap<u32, UplinkConfig> =
    HashMap::with_max_entries(max_entries::UPLINKS, 0);

#[map]
static PORIN_UPDNY4_V1: LpmTrie<[u8; 8], Identity> =
    LpmTrie::with_max_entries(max_entries::DENY_PREFIXES, 0);

#[map]
static PORIN_UPDNY6_V1: LpmTrie<[u8; 20], Identity> =
    LpmTrie::with_max_entries(max_entries::DENY_PREFIXES, 0);

// `PORIN_UPEP4_V1` / `PORIN_UPEP6_V1` (container address → host veth) are
// declared in `identity.rs`: the TC programs' anti-spoofing reads them too.

/// LRU: a spoofed-source flood evicts old buckets instead of filling the
/// map; an evicted source starts again with a full bucket.
#[map]
static PORIN_UPFLD_V1: LruHashMap<FloodKey, FloodState> =
    LruHashMap::with_max_entries(max_entries::FLOOD_SOURCES, 0);

#[map]
static PORIN_UPPASS_V1: PerCpuArray<Counter> = PerCpuArray::with_max_entries(pass::CLASSES, 0);

/// Attached with XDP to each configured uplink: traffic entering the node
/// from outside. Decides early drops only; see the module docs.
#[xdp]
pub fn from_uplink(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let (start, end) = (ctx.data(), ctx.data_end());
    // `data_end` is read a second time, volatile, for the length: LLVM
    // must not know that `len` and `end - start` are equal, or it drops the
    // parser's pointer comparisons as implied by its length checks, and the
    // verifier needs exactly those comparisons.
    // SAFETY: the context pointer the kernel passed in.
    let end_again = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
    let frame = PacketFrame {
        start,
        end,
        len: end_again.saturating_sub(start),
    };
    let bytes = frame.len as u32;
    let mut seen = Seen {
        flow: None,
        src: 0,
        dst: 0,
        audit: false,
    };
    let reason = match try_from_uplink(&frame, ifindex, &mut seen) {
        Ok(class) => {
            counters::add(&PORIN_UPPASS_V1, class, bytes);
            return xdp_action::XDP_PASS;
        }
        Err(reason) => reason,
    };
    counters::drop(reason, bytes);
    let verdict = if seen.audit {
        counters::add(&PORIN_UPPASS_V1, pass::AUDIT, bytes);
        flow::verdict::AUDIT
    } else {
        flow::verdict::DROPPED
    };
    let tcp_flags = match &seen.flow {
        // Only SYN-without-ACK is known from the parse (`may_be_reply`).
        Some(f) if f.protocol == proto::TCP && !f.may_be_reply => 0x02,
        _ => 0,
    };
    events::emit(
        &ctx,
        flow::kind::DROP,
        verdict,
        reason as u8,
        Direction::Ingress,
        seen.flow.as_ref(),
        ifindex,
        seen.dst,
        seen.src,
        bytes,
        0,
        tcp_flags,
    );
    if seen.audit {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// What the checks learnt, for the drop's flow event.
struct Seen {
    flow: Option<Flow>,
    /// Source identity (the deny-listed network, or the policy peer).
    src: Identity,
    /// Destination container's identity, 0 when not a container.
    dst: Identity,
    /// The destination endpoint is in audit mode: count, then pass.
    audit: bool,
}

/// `Ok(pass class)` or `Err(drop reason)`.
#[inline(always)]
fn try_from_uplink(frame: &PacketFrame, ifindex: u32, seen: &mut Seen) -> Result<u32, DropReason> {
    // SAFETY: copied out at once; hash map values are valid under RCU.
    let Some(cfg) = (unsafe { PORIN_UPCFG_V1.get(&ifindex).copied() }) else {
        return Ok(pass::NOT_IP);
    };
    let addrs = match ip_addresses(frame) {
        L3::NotIp => return Ok(pass::NOT_IP),
        L3::Truncated => return Ok(pass::UNPARSED),
        L3::Ip(f) => f,
    };
    if let Some(network) = deny_listed(ifindex, &addrs) {
        seen.flow = Some(addrs);
        seen.src = network;
        return Err(DropReason::UplinkDenyListed);
    }
    // Addresses of this node's containers and of the host never come from
    // outside: a packet claiming one would borrow that identity.
    let src = identity::of_address(&addrs.saddr, addrs.family);
    if identity_is_local(src) {
        seen.flow = Some(addrs);
        seen.src = src;
        return Err(DropReason::SpoofedSource);
    }
    let flow = match parse(frame) {
        Ok(Parsed::Flow(f)) => f,
        // ICMPv6 neighbour and router discovery.
        Ok(Parsed::Neighbour(_) | Parsed::RouterMessage) => return Ok(pass::NOT_IP),
        Err(_) => return Ok(pass::UNPARSED),
    };
    seen.flow = Some(flow);
    let class = match container_veth(&flow) {
        Some(veth) => {
            // A revoked connection passes too: `to_container` answers it
            // with RSTs both ways.
            if conntrack::established(&flow, Direction::Ingress, veth, ifindex) != conntrack::MISS {
                return Ok(pass::ESTABLISHED);
            }
            container_policy(&flow, veth, seen)?;
            pass::ALLOWED
        }
        None => pass::NOT_CONTAINER,
    };
    flood(&cfg, &flow, ifindex)?;
    Ok(class)
}

/// The identity of the deny-listed network `flow`'s source is in, if any.
#[inline(always)]
fn deny_listed(ifindex: u32, flow: &Flow) -> Option<Identity> {
    let s = &flow.saddr;
    if flow.family == 4 {
        let key = Key::new(64, deny4_key(ifindex, [s[0], s[1], s[2], s[3]]));
        PORIN_UPDNY4_V1.get(&key).copied()
    } else {
        // Listed element by element: a zeroed array plus copies became a
        // `memset` call (see `porin_common::parse::HeaderBuf`).
        let i = ifindex.to_be_bytes();
        let data = [
            i[0], i[1], i[2], i[3], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
            s[10], s[11], s[12], s[13], s[14], s[15],
        ];
        PORIN_UPDNY6_V1.get(&Key::new(160, data)).copied()
    }
}

/// The host veth ifindex of the container that owns `flow`'s destination.
#[inline(always)]
fn container_veth(flow: &Flow) -> Option<u32> {
    match identity::owner_of(&flow.daddr, flow.family) {
        0 => None,
        veth => Some(veth),
    }
}

/// The container's ingress policy, as `to_container` applies it.
#[inline(always)]
fn container_policy(flow: &Flow, veth: u32, seen: &mut Seen) -> Result<(), DropReason> {
    let Some(ep) = identity::endpoint(veth) else {
        return Ok(());
    };
    seen.dst = ep.identity;
    let Ok(generation) = policy::active_generation() else {
        return Ok(());
    };
    let peer = identity::of_address(&flow.saddr, flow.family);
    seen.src = peer;
    if policy::allows(ep.identity, peer, flow, Direction::Ingress, generation) {
        return Ok(());
    }
    seen.audit = ep.mode == mode::AUDIT;
    Err(DropReason::UplinkNoPolicy)
}

/// Takes a token from the source's SYN or UDP bucket on this uplink.
#[inline(always)]
fn flood(cfg: &UplinkConfig, flow: &Flow, ifindex: u32) -> Result<(), DropReason> {
    let (kind, cost, burst) = match flow.protocol {
        proto::TCP if !flow.may_be_reply => (flood_kind::SYN, cfg.syn_cost_ns, cfg.syn_burst_ns),
        proto::UDP => (flood_kind::UDP, cfg.udp_cost_ns, cfg.udp_burst_ns),
        _ => return Ok(()),
    };
    if cost == 0 {
        return Ok(());
    }
    let key = FloodKey {
        saddr: flow.saddr,
        ifindex,
        kind,
        family: flow.family,
        _pad: [0, 0],
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match PORIN_UPFLD_V1.get_ptr_mut(&key) {
        Some(state) => {
            // SAFETY: a pointer to the map value, valid for this run. CPUs
            // racing on one source may both spend the same credit: the limit
            // is approximate under contention, never stricter.
            let (next, ok) = unsafe { flood_step(*state, now, cost, burst) };
            unsafe { *state = next };
            if ok {
                Ok(())
            } else {
                Err(DropReason::UplinkFlood)
            }
        }
        None => {
            // A failed insert only forgets the source: pass.
            let _ = PORIN_UPFLD_V1.insert(&key, &flood_first(now, cost, burst), 0);
            Ok(())
        }
    }
}
