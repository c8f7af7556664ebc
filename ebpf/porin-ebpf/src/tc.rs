//! The TC entry points on a container's host-side veth. Both run the same
//! steps, from the point of view of the container:
//!
//! 1. endpoint of the veth (`PORIN_ENDP_V1[skb->ifindex]`), none → drop;
//! 2. parse (ARP and IPv6 neighbour discovery pass here);
//! 3. conntrack: a flow this endpoint already allowed, or a reply to one,
//!    passes;
//! 4. peer identity and policy in the active generation; allowed → CT entry.
//!
//! `porin_common::decide::verdict` turns the result into the verdict (its
//! docs have the whole table) and every outcome is counted.

use aya_ebpf::{macros::classifier, programs::TcContext};
use porin_common::{
    datapath::{Direction, DropReason, EndpointInfo},
    decide::{self, peer_addr},
    parse::Parsed,
};

use crate::{conntrack, counters, identity, parse, policy};

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
    let endpoint = identity::endpoint(ifindex);
    let result = match &endpoint {
        Some(ep) => try_handle(ctx, dir, ifindex, ep),
        None => Err(DropReason::UnknownEndpoint),
    };
    let verdict = decide::verdict(result, endpoint.map(|ep| ep.mode));
    counters::record(&verdict, dir, ctx.len());
    verdict.action
}

#[inline(always)]
fn try_handle(
    ctx: &TcContext,
    dir: Direction,
    ifindex: u32,
    endpoint: &EndpointInfo,
) -> Result<(), DropReason> {
    let flow = match parse::headers(ctx)? {
        Parsed::Pass => return Ok(()),
        Parsed::Flow(flow) => flow,
    };
    if conntrack::established(&flow, dir, ifindex) {
        return Ok(());
    }
    let generation = policy::active_generation()?;
    let peer = identity::of_address(peer_addr(&flow, dir), flow.family);
    if !policy::allows(endpoint.identity, peer, &flow, dir, generation) {
        return Err(DropReason::PolicyDenied);
    }
    conntrack::create(&flow, dir, ifindex)
}
