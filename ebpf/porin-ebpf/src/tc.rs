//! The TC entry points on a container's host-side veth. Both run the same
//! steps, from the point of view of the container:
//!
//! 1. parse;
//! 2. conntrack: a flow this endpoint (this ifindex) already allowed, or a
//!    reply to one, passes: one hash lookup on the hot path;
//! 3. deny cache (`dcache`): a repeated packet of a flow the steps below
//!    dropped (enforce mode, `PolicyDenied` or `SpoofedSource`) under the
//!    current epoch gets the same drop, counted and evented alike; a miss
//!    goes on, and a cacheable drop below is stored;
//! 4. endpoint of the veth (`PORIN_ENDP_V1[skb->ifindex]`), none → drop;
//!    ARP and IPv6 neighbour discovery pass here once the address they
//!    claim is the container's own (sent by it; `SpoofedNeighbour`), parse
//!    errors are judged with the endpoint's mode;
//! 5. anti-spoofing (`porin_common::spoof`, addresses against the veth
//!    that owns them in `PORIN_UPEP4_V1`/`PORIN_UPEP6_V1`): sent by the
//!    container, its own source address (`SpoofedSource`); into it, its own
//!    destination or a group address (`WrongDestination`), and a
//!    container's source address only if it came in from that container's
//!    veth or its bridge, `skb->ingress_ifindex` (`SpoofedIngress`);
//! 6. peer identity and policy in the active generation; allowed → CT entry
//!    (none for a group destination).
//!
//! Conntrack before the endpoint: a CT entry's key holds the ifindex of an
//! endpoint whose policy allowed the flow, and the manager detaches the
//! programs from a removed endpoint's veth before it deletes the endpoint
//! entry and then that endpoint's CT entries (`forget_connections`), so an
//! attached program never meets a CT entry at an ifindex without an
//! endpoint. Skipping the endpoint lookup on a hit saves a hash lookup
//! (about 30 ns here), the largest single cost left on the hot path.
//!
//! Revocation: a hit on an entry the manager revoked
//! (`conntrack::REVOKED`, TCP only) is handed to a stage program that
//! turns the packet into a RST and sends one back to its sender
//! (`http::revoke`).
//!
//! # Conntrack before anti-spoofing
//! Anti-spoofing runs only on a conntrack miss, so it costs nothing on the
//! hot path. What a hit can admit:
//!
//! **`from_container`: never a source that is not the container's own.**
//! An entry is found only under this veth's ifindex, and it admits the
//! tuple it was made with going the way it was made, or the reversed tuple
//! going the other way (`decide::ct_admits`). Every entry at this veth was
//! made by one of its two programs after the checks of step 5: made by
//! `from_container`, its tuple's source passed `check_source` (the
//! container's own), and that tuple can only go out again; made by
//! `to_container`, its destination passed `check_destination` and is the
//! container's own (group destinations make no entry, `spoof::tracks`), and
//! only its reversed tuple, whose source is that address, can go out. So a
//! hit on `from_container` admits only sources this veth owned when the
//! entry was made (an address moving to another container keeps its old
//! entries until they go, on the old owner's veth only).
//! `a_conntrack_hit_never_lets_a_container_send_from_an_address_not_its_own`
//! in `tests/datapath_tc.rs` tries each way.
//!
//! **`to_container`: the destination is the container's own** by the same
//! argument. **The way in is checked on a hit too, for one compare:** the
//! entry records the interface its peer's packets were checked to come in
//! by (`CtValue::peer_in`: the first packet's `skb->ingress_ifindex` for a
//! connection the container accepted, learnt from the first reply for one
//! it opened). A hit from another interface runs the check of step 5 again
//! (`identity::check_ingress`): passed (a route change, a peer that is no
//! container), the new way is recorded; failed, the hit is a miss, and the
//! packet meets step 5 and drops as `SpoofedIngress`, the connection left
//! as it was. So a packet forged with a container's source address and the
//! exact tuple of a known connection is refused wherever it comes in
//! (`a_conntrack_hit_refuses_a_forged_packet_of_a_known_connection`). One
//! way in passes unchecked: this veth itself. A packet that came in by it
//! was sent by this container, and going back into it means the stage
//! programs cloned it there (the 403 or RST answering a request or a
//! revoked connection at `from_container`); the bridge never sends a frame
//! back out of the port it came in by.
//!
//! HTTP rules: a conntrack hit on an HTTP-ruled connection going the
//! client→server way (`conntrack::HIT_HTTP`) is handed to the HTTP stage
//! by a tail call (`http::enter`); a policy entry `ALLOW_HTTP` records the
//! connection's rule set (`http::open`) with its CT entry. See `http.rs`.
//!
//! `porin_common::decide::verdict` turns the result into the verdict (its
//! docs have the whole table) and every outcome is counted. A new allowed
//! flow and every drop also emit a flow event (`events::emit`, rate limited,
//! losses counted).

use aya_ebpf::{macros::classifier, programs::TcContext};
use porin_common::{
    datapath::{action, Direction, DropReason, EndpointInfo, PEER_IN_UNVERIFIED},
    decide::{self, peer_addr},
    flow,
    parse::{Flow, Parsed},
    spoof,
};

use crate::{conntrack, counters, dcache, events, http, identity, parse, policy};

/// Attached at TC **ingress** of a container's host-side veth: packets
/// leaving the container (policy direction egress, peer = destination).
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Egress)
}

/// Attached at TC **egress** of a container's host-side veth: packets
/// entering the container (policy direction ingress, peer = source).
#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Ingress)
}

#[inline(always)]
fn handle(ctx: &TcContext, dir: Direction) -> i32 {
    // Both hooks sit on the host veth, so both see its ifindex.
    // SAFETY: the context pointer the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let parsed = parse::headers(ctx);
    // The deny-cache epoch read before the slow path (0: cache off).
    let mut cache_epoch = 0;
    let mut hit = dcache::Hit::NONE;
    if let Ok(Parsed::Flow(flow)) = &parsed {
        let ct = conntrack::established(flow, dir, ifindex, came_in(ctx, dir));
        if ct == conntrack::HIT {
            let verdict = decide::verdict(Ok(()), None);
            counters::record(&verdict, dir, ctx.len());
            return verdict.action;
        }
        // HTTP stage: a request-carrying way of an HTTP-ruled connection.
        if ct == conntrack::HIT_HTTP {
            return http::enter(ctx, dir);
        }
        // A revoked TCP connection: RSTs both ways (a stage program).
        if ct == conntrack::REVOKED {
            return http::revoke(ctx, dir);
        }
        cache_epoch = dcache::check(flow, dir, ifindex, &mut hit);
        if hit.found != 0 {
            return repeat_drop(ctx, &hit, flow, dir, ifindex);
        }
    }
    let (known, info) = identity::endpoint_or_zeroed(ifindex);
    let endpoint = known.then_some(info);
    // 0 without an endpoint, from a value written on every path.
    let subject = info.identity;
    let mut seen = Seen {
        // Zeroed, not `None`: with the HTTP path added, LLVM read the flow's
        // spilled bytes on paths that never wrote them, which 5.10's
        // verifier refuses (uninitialised stack); written on every path now.
        // SAFETY: `Flow` is plain data (bytes, u16s, a bool) valid all-zero.
        flow: unsafe { core::mem::transmute::<[u64; 5], Flow>([0; 5]) },
        has_flow: false,
        peer: 0,
        new_flow: false,
    };
    let result = match &endpoint {
        Some(ep) => try_handle(ctx, parsed, dir, ifindex, ep, &mut seen),
        None => Err(DropReason::UnknownEndpoint),
    };
    let verdict = decide::verdict(result, endpoint.map(|ep| ep.mode));
    counters::record(&verdict, dir, ctx.len());
    if seen.has_flow {
        dcache::store(
            &seen.flow,
            dir,
            ifindex,
            cache_epoch,
            &verdict,
            subject,
            seen.peer,
        );
    }
    // Flow events: a new allowed connection, or a drop (audited or not).
    // Conntrack hits returned above and emit nothing: one event per flow.
    if verdict.drop.is_some() || seen.new_flow {
        let kind = if verdict.drop.is_some() {
            flow::kind::DROP
        } else {
            flow::kind::NEW_FLOW
        };
        events::emit(
            ctx,
            kind,
            events::flow_verdict(&verdict),
            verdict.drop.map_or(0, |r| r as u8),
            dir,
            seen.has_flow.then_some(&seen.flow),
            ifindex,
            subject,
            seen.peer,
            ctx.len(),
            0,
            0,
        );
    }
    verdict.action
}

/// A deny-cache hit: the drop the slow path gave this flow's first packet,
/// with the same counters and flow event (rule 0, as there).
#[inline(always)]
fn repeat_drop(
    ctx: &TcContext,
    hit: &dcache::Hit,
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
) -> i32 {
    let (verdict, reason, subject, peer) = dcache::repeated(hit);
    counters::record(&verdict, dir, ctx.len());
    events::emit(
        ctx,
        flow::kind::DROP,
        events::flow_verdict(&verdict),
        reason as u8,
        dir,
        Some(flow),
        ifindex,
        subject,
        peer,
        ctx.len(),
        0,
        0,
    );
    verdict.action
}

/// What the policy step learnt about a packet, for its flow event.
struct Seen {
    /// Meaningful when `has_flow`.
    flow: Flow,
    has_flow: bool,
    /// The peer's identity, 0 when the packet never got that far.
    peer: u32,
    /// A conntrack entry was made: the first packet of an allowed flow.
    new_flow: bool,
}

/// The interface a packet into the container came in by
/// (`skb->ingress_ifindex`: 0 when the host sent it); 0 for a packet out
/// of it, whose way in is the container's own veth.
#[inline(always)]
fn came_in(ctx: &TcContext, dir: Direction) -> u32 {
    match dir {
        // SAFETY: the context pointer the kernel passed in.
        Direction::Ingress => unsafe { (*ctx.skb.skb).ingress_ifindex },
        Direction::Egress => 0,
    }
}

/// Everything after a conntrack miss, for a known endpoint.
#[inline(always)]
fn try_handle(
    ctx: &TcContext,
    parsed: Result<Parsed, DropReason>,
    dir: Direction,
    ifindex: u32,
    endpoint: &EndpointInfo,
    seen: &mut Seen,
) -> Result<(), DropReason> {
    let flow = match parsed? {
        // ARP and neighbour discovery: a container may only claim its own
        // addresses (`porin_common::spoof`); into a container they pass,
        // their senders' claims were checked where they were sent.
        Parsed::Neighbour(claim) => {
            if let Direction::Ingress = dir {
                return Ok(());
            }
            let addr = if claim.in_target {
                parse::nd_target(ctx)?
            } else {
                claim.addr
            };
            let unverifiable = spoof::unverifiable_claim(&addr, claim.family);
            let owner = if unverifiable {
                0
            } else {
                identity::owner_of(&addr, claim.family)
            };
            return spoof::check_claim(unverifiable, owner, ifindex);
        }
        // Router advertisements and redirects reach a container from its
        // network; sent by one, they would reroute its neighbours.
        Parsed::RouterMessage => {
            return match dir {
                Direction::Ingress => Ok(()),
                Direction::Egress => Err(DropReason::RogueRouter),
            }
        }
        Parsed::Flow(flow) => flow,
    };
    seen.flow = flow;
    seen.has_flow = true;
    let generation = policy::active_generation()?;
    // Addresses against the veth that owns them (`porin_common::spoof`),
    // never identities: replicas of a group have one identity. `peer_in`:
    // the way in checked for the peer, recorded with a new connection.
    let peer_in = match dir {
        // A container may only send from its own addresses: the receiving
        // side judges the sender by the source address.
        Direction::Egress => {
            spoof::check_source(identity::owner_of(&flow.saddr, flow.family), ifindex)?;
            PEER_IN_UNVERIFIED
        }
        // Only what is addressed to this container (or to a group), and a
        // container's address only from that container's veth.
        Direction::Ingress => {
            let group = spoof::is_group_address(&flow.daddr, flow.family);
            let owner = if group {
                0
            } else {
                identity::owner_of(&flow.daddr, flow.family)
            };
            spoof::check_destination(group, owner, ifindex)?;
            let came_in = came_in(ctx, dir);
            identity::check_ingress(&flow.saddr, flow.family, came_in)?;
            came_in
        }
    };
    let peer = identity::of_address(peer_addr(&flow, dir), flow.family);
    seen.peer = peer;
    let Some((key, action)) = policy::lookup(endpoint.identity, peer, &flow, dir, generation)
    else {
        return Err(DropReason::PolicyDenied);
    };
    // A new flow: within the endpoint's share of the tables.
    conntrack::room(ifindex, action == action::ALLOW_HTTP)?;
    if action == action::ALLOW_HTTP {
        // HTTP stage: record the rule set and where requests start.
        let s = http::scratch()?;
        let t = http::tcp(ctx, flow.family, s)?;
        http::open(&flow, ifindex, &key, &t, s)?;
        conntrack::create(&flow, dir, ifindex, 1, peer_in)?;
        seen.new_flow = true;
        if t.payload_len > 0 {
            // Data on the SYN (TCP Fast Open) would reach the server before
            // any head could be judged; otherwise picked up mid-stream:
            // where this payload stands is unknown.
            return Err(
                if t.flags & u32::from(porin_common::http_stream::tcp_flag::SYN) != 0 {
                    DropReason::HttpStream
                } else {
                    DropReason::HttpUnsupported
                },
            );
        }
        return Ok(());
    }
    // Nothing to remember of a packet to a group address (no reply comes
    // from one); its entry would let the receiver send from it.
    if spoof::tracks(&flow.daddr, flow.family) {
        conntrack::create(&flow, dir, ifindex, 0, peer_in)?;
        seen.new_flow = true;
    }
    Ok(())
}
