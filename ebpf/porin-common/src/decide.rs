//! The TC programs' decisions that do not touch maps: which keys to look up,
//! when a conntrack hit counts, and the one mapping from a result to a TC
//! verdict. Pure, so the host tests exactly what the kernel runs.
//!
//! # Verdicts (`from_container` / `to_container`)
//! | case | verdict | counted as |
//! | --- | --- | --- |
//! | conntrack hit (same direction, or reply), checked first | `OK` | forwarded |
//! | conntrack hit on an HTTP-ruled connection (`CtValue::l7`), going the first packet's way | the HTTP stage decides ([`crate::http`]) | forwarded, or drop `Http*` |
//! | policy allows with `ALLOW_HTTP` | `OK` (CT entry with `l7`, HTTP state); payload without a seen SYN: drop `HttpUnsupported` | forwarded |
//! | deny-cache hit, checked next: the flow's earlier packet was dropped for `PolicyDenied` or `SpoofedSource` in enforce mode, under the current epoch ([`crate::dcache`]) | `SHOT` | drop with that reason (the same flow event) |
//! | no `PORIN_ENDP_V1` entry for the ifindex | `SHOT` (any mode) | drop `UnknownEndpoint` |
//! | ARP, ICMPv6 133/135/136 (hop limit 255) | `OK` | forwarded |
//! | ICMPv6 134/137 (RA, redirect; hop limit 255) | into the container `OK`; out of it `SHOT` (any mode but audit) | drop `RogueRouter` when sent by the container |
//! | policy allows | `OK` (CT entry made) | forwarded |
//! | policy denies / no entry | enforce: `SHOT`; audit: `OK` | drop `PolicyDenied` (+ forwarded in audit) |
//! | parse error ([`crate::parse`]) | enforce: `SHOT`; audit: `OK` | drop with its reason (+ forwarded in audit) |
//! | config not ready / bad generation, CT insert failed | enforce: `SHOT`; audit: `OK` | drop `Internal` (+ forwarded in audit) |
//!
//! Conntrack is checked before the endpoint lookup: CT entries are keyed by
//! the ifindex of the endpoint that allowed them, and the manager detaches
//! a removed endpoint's programs, deletes its endpoint entry, then its CT
//! entries; so "no endpoint entry" still drops everything a program sees
//! (see the eBPF crate's `tc.rs`).
//!
//! Audit mode never changes what reaches the container: every would-be drop
//! is counted and the packet passes. Audited flows get no CT entry (only an
//! allowed packet makes one), so each of their packets is counted.

use crate::{
    datapath::{
        ct_origin, identity, mode, tc_action, Ct4Key, CtKey, CtValue, DatapathConfig, Direction,
        DropReason, Identity, PolicyKey, CONFIG_READY,
    },
    parse::Flow,
};

/// The verdict for one packet and the drop reason to count, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `TC_ACT_OK` or `TC_ACT_SHOT`.
    pub action: i32,
    /// Counted in `PORIN_DROPS_V1` (also when audit mode passes the packet).
    pub drop: Option<DropReason>,
}

/// The one place that maps a packet's result to a verdict.
///
/// `endpoint_mode` is `None` when the endpoint is unknown. Errors drop unless
/// the endpoint is in audit mode; an unknown endpoint has no mode and always
/// drops; a mode value other than [`mode::AUDIT`] enforces (fail closed).
#[inline(always)]
pub fn verdict(result: Result<(), DropReason>, endpoint_mode: Option<u8>) -> Verdict {
    match result {
        Ok(()) => Verdict {
            action: tc_action::OK,
            drop: None,
        },
        Err(reason) => {
            let audit = reason != DropReason::UnknownEndpoint && endpoint_mode == Some(mode::AUDIT);
            Verdict {
                action: if audit {
                    tc_action::OK
                } else {
                    tc_action::SHOT
                },
                drop: Some(reason),
            }
        }
    }
}

/// The active policy generation from the `PORIN_CFG_V1` entry, or
/// `Internal` when the manager has not written it yet (a zeroed entry) or it
/// names a generation other than 0 or 1: enforcing an empty or unknown
/// generation would look like a policy decision when it is a fault.
#[inline(always)]
pub fn active_generation(cfg: &DatapathConfig) -> Result<u8, DropReason> {
    match (cfg.ready, cfg.generation) {
        (CONFIG_READY, g @ (0 | 1)) => Ok(g as u8),
        _ => Err(DropReason::Internal),
    }
}

/// The address whose identity policy is about: where the packet goes when
/// it leaves the container, where it comes from when it enters.
#[inline(always)]
pub fn peer_addr(flow: &Flow, dir: Direction) -> &[u8; 16] {
    match dir {
        Direction::Egress => &flow.daddr,
        Direction::Ingress => &flow.saddr,
    }
}

/// A packet's conntrack lookup: the canonical key of its connection, which
/// end of the key the packet comes from, and whether both ends are the same
/// (address and port: then the packet goes both ways at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtLookup<K> {
    pub key: K,
    /// [`ct_origin`] value of this packet.
    pub origin: u8,
    pub symmetric: bool,
}

/// The IPv4 conntrack lookup for `flow` at endpoint `ifindex` (see the
/// datapath module notes on canonical order).
#[inline(always)]
pub fn ct4_key(flow: &Flow, ifindex: u32) -> CtLookup<Ct4Key> {
    let s4 = [flow.saddr[0], flow.saddr[1], flow.saddr[2], flow.saddr[3]];
    let d4 = [flow.daddr[0], flow.daddr[1], flow.daddr[2], flow.daddr[3]];
    let src = (u32::from_be_bytes(s4), flow.sport);
    let dst = (u32::from_be_bytes(d4), flow.dport);
    let swapped = src > dst;
    let ((saddr, sport), (daddr, dport)) = if swapped {
        ((d4, flow.dport), (s4, flow.sport))
    } else {
        ((s4, flow.sport), (d4, flow.dport))
    };
    CtLookup {
        key: Ct4Key {
            saddr,
            daddr,
            sport,
            dport,
            protocol: flow.protocol,
            // Literal, not `[0; 3]`: see `parse::HeaderBuf` on memset.
            _pad: [0, 0, 0],
            ifindex,
        },
        origin: origin(swapped),
        symmetric: src == dst,
    }
}

/// The IPv6 conntrack lookup for `flow` at endpoint `ifindex`, like
/// [`ct4_key`].
#[inline(always)]
pub fn ct6_key(flow: &Flow, ifindex: u32) -> CtLookup<CtKey> {
    let halves = |a: &[u8; 16]| {
        let hi = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let lo = [a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]];
        (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
    };
    let src = (halves(&flow.saddr), flow.sport);
    let dst = (halves(&flow.daddr), flow.dport);
    let swapped = src > dst;
    let ((saddr, sport), (daddr, dport)) = if swapped {
        ((&flow.daddr, flow.dport), (&flow.saddr, flow.sport))
    } else {
        ((&flow.saddr, flow.sport), (&flow.daddr, flow.dport))
    };
    CtLookup {
        key: CtKey {
            saddr: *saddr,
            daddr: *daddr,
            sport,
            dport,
            protocol: flow.protocol,
            family: 6,
            _pad: [0, 0],
            ifindex,
        },
        origin: origin(swapped),
        symmetric: src == dst,
    }
}

#[inline(always)]
fn origin(swapped: bool) -> u8 {
    if swapped {
        ct_origin::KEY_DESTINATION
    } else {
        ct_origin::KEY_SOURCE
    }
}

/// Whether the conntrack `entry` found under a packet's key admits the
/// packet, which goes in `dir` from the key's end `origin`
/// ([`CtLookup`]): the first packet's way in its direction, or the other
/// way in the other direction (a reply) when the packet may be a reply
/// ([`Flow::may_be_reply`]). A symmetric tuple goes both ways, so either
/// counts.
#[inline(always)]
pub fn ct_admits(
    entry: &CtValue,
    dir: Direction,
    lookup_origin: u8,
    symmetric: bool,
    may_be_reply: bool,
) -> bool {
    let reply = lookup_origin != entry.origin;
    (ct_hit_admits(entry.direction, dir, reply) && (!reply || may_be_reply))
        || (symmetric && may_be_reply && ct_hit_admits(entry.direction, dir, !reply))
}

/// The conntrack value for a connection first seen at `now_s` (seconds
/// of `CLOCK_MONOTONIC`), in `dir`, from the key's end `origin`, in
/// `state` ([`crate::ct::initial_state`]), its peer's packets checked as
/// coming in by `peer_in` ([`CtValue::peer_in`]).
///
/// Built from two words: a struct literal's zero pad bytes became a call to
/// bpf-linker's byte-loop `memset` (see `parse::HeaderBuf`).
#[inline(always)]
pub fn ct_value(
    now_s: u32,
    peer_in: u32,
    dir: Direction,
    origin: u8,
    l7: u8,
    state: u8,
) -> CtValue {
    // Native byte order: `seen_s` then `peer_in`; direction, origin, l7
    // and state land at offsets 8..12 in memory and `hits` (offsets
    // 12..16) is zero, on either endianness.
    let t = now_s.to_ne_bytes();
    let p = peer_in.to_ne_bytes();
    let words: [u64; 2] = [
        u64::from_ne_bytes([t[0], t[1], t[2], t[3], p[0], p[1], p[2], p[3]]),
        u64::from_ne_bytes([dir as u8, origin, l7, state, 0, 0, 0, 0]),
    ];
    // SAFETY: `CtValue` is `repr(C)`, 16 bytes without implicit padding,
    // valid for any bytes (u32, u32, four u8, u32).
    unsafe { core::mem::transmute::<[u64; 2], CtValue>(words) }
}

/// Whether a conntrack hit admits the packet, given whether it goes the
/// reversed way (`reply`): the first packet's way only in the direction the
/// connection was first seen, the reversed way only in the other one. Without this, a container could send
/// packets forged to look like replies to its own connections (source and
/// destination swapped) and have them pass as established.
#[inline(always)]
pub fn ct_hit_admits(entry_direction: u8, dir: Direction, reply: bool) -> bool {
    (entry_direction == dir as u8) != reply
}

/// The policy key for `flow` with everything but the peer and port set;
/// [`policy_lookups`] gives the (peer, port) pairs to try in it.
#[inline(always)]
pub fn policy_key(subject: Identity, flow: &Flow, dir: Direction, generation: u8) -> PolicyKey {
    PolicyKey {
        subject,
        peer: identity::ANY,
        port: 0,
        protocol: flow.protocol,
        direction: dir as u8,
        generation,
        // Literal, not `[0; 3]`: see `parse::HeaderBuf` on memset.
        _pad: [0, 0, 0],
    }
}

/// The (peer, port) pairs to look up, in order (first hit wins), and how
/// many of them are distinct: `(peer, port)`, `(peer, 0)`, `(ANY, port)`,
/// `(ANY, 0)`. With port 0 (ICMP, portless protocols) only `(peer, 0)` and
/// `(ANY, 0)` remain.
#[inline(always)]
pub fn policy_lookups(peer: Identity, flow: &Flow) -> ([(Identity, u16); 4], usize) {
    let port = policy_port(flow);
    if port == 0 {
        let pairs = [(peer, 0), (identity::ANY, 0)];
        ([pairs[0], pairs[1], pairs[0], pairs[1]], 2)
    } else {
        (
            [
                (peer, port),
                (peer, 0),
                (identity::ANY, port),
                (identity::ANY, 0),
            ],
            4,
        )
    }
}

/// The port a policy entry names: the destination port for TCP and UDP (the
/// service, in either direction), 0 for everything else.
#[inline(always)]
pub fn policy_port(flow: &Flow) -> u16 {
    use crate::datapath::proto;
    match flow.protocol {
        proto::TCP | proto::UDP => flow.dport,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::datapath::proto;

    fn flow(protocol: u8, sport: u16, dport: u16) -> Flow {
        let mut saddr = [0; 16];
        let mut daddr = [0; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        Flow {
            family: 4,
            protocol,
            saddr,
            daddr,
            sport,
            dport,
            may_be_reply: true,
            tcp_flags: 0,
        }
    }

    #[test]
    fn verdict_table() {
        use DropReason::*;
        let (ok, shot) = (tc_action::OK, tc_action::SHOT);
        let e = Some(mode::ENFORCE);
        let a = Some(mode::AUDIT);
        assert_eq!(
            verdict(Ok(()), e),
            Verdict {
                action: ok,
                drop: None
            }
        );
        assert_eq!(
            verdict(Ok(()), a),
            Verdict {
                action: ok,
                drop: None
            }
        );
        for r in [
            PolicyDenied,
            Malformed,
            Ipv4Options,
            Fragment,
            Ipv6ExtHeader,
            UnsupportedL3,
            Internal,
        ] {
            assert_eq!(
                verdict(Err(r), e),
                Verdict {
                    action: shot,
                    drop: Some(r)
                },
                "{r:?}"
            );
            assert_eq!(
                verdict(Err(r), a),
                Verdict {
                    action: ok,
                    drop: Some(r)
                },
                "{r:?}"
            );
            // An unexpected mode value fails closed.
            assert_eq!(verdict(Err(r), Some(7)).action, shot, "{r:?}");
        }
        // Unknown endpoints drop whatever mode is passed along.
        for m in [None, e, a] {
            assert_eq!(
                verdict(Err(UnknownEndpoint), m),
                Verdict {
                    action: shot,
                    drop: Some(UnknownEndpoint)
                }
            );
        }
    }

    #[test]
    fn only_a_ready_config_with_generation_0_or_1_is_used() {
        let cfg = |generation, ready| DatapathConfig {
            generation,
            ready,
            ..Default::default()
        };
        assert_eq!(active_generation(&cfg(0, CONFIG_READY)), Ok(0));
        assert_eq!(active_generation(&cfg(1, CONFIG_READY)), Ok(1));
        for bad in [
            cfg(0, 0),
            cfg(1, 1),
            cfg(2, CONFIG_READY),
            cfg(u32::MAX, CONFIG_READY),
        ] {
            assert_eq!(
                active_generation(&bad),
                Err(DropReason::Internal),
                "{bad:?}"
            );
        }
        assert_eq!(
            active_generation(&DatapathConfig::default()),
            Err(DropReason::Internal)
        );
    }

    #[test]
    fn peer_is_destination_on_egress_source_on_ingress() {
        let f = flow(proto::TCP, 1, 2);
        assert_eq!(peer_addr(&f, Direction::Egress), &f.daddr);
        assert_eq!(peer_addr(&f, Direction::Ingress), &f.saddr);
    }

    /// The conntrack keys before canonical order: the packet's own tuple,
    /// and the reversed tuple a reply is looked up under. The model that
    /// [`ct_keys_match_the_two_lookup_model`] checks the one lookup against.
    fn old_key(f: &Flow, ifindex: u32, reversed: bool) -> ([u8; 16], [u8; 16], u16, u16, u8, u32) {
        if reversed {
            (f.daddr, f.saddr, f.dport, f.sport, f.protocol, ifindex)
        } else {
            (f.saddr, f.daddr, f.sport, f.dport, f.protocol, ifindex)
        }
    }

    fn lookup(f: &Flow, ifindex: u32) -> (std::vec::Vec<u8>, u8, bool) {
        if f.family == 4 {
            let l = ct4_key(f, ifindex);
            let k = l.key;
            let mut b = std::vec::Vec::new();
            b.extend_from_slice(&k.saddr);
            b.extend_from_slice(&k.daddr);
            b.extend_from_slice(&k.sport.to_ne_bytes());
            b.extend_from_slice(&k.dport.to_ne_bytes());
            b.extend_from_slice(&[k.protocol]);
            b.extend_from_slice(&k.ifindex.to_ne_bytes());
            (b, l.origin, l.symmetric)
        } else {
            let l = ct6_key(f, ifindex);
            let k = l.key;
            let mut b = std::vec::Vec::new();
            b.extend_from_slice(&k.saddr);
            b.extend_from_slice(&k.daddr);
            b.extend_from_slice(&k.sport.to_ne_bytes());
            b.extend_from_slice(&k.dport.to_ne_bytes());
            b.extend_from_slice(&[k.protocol, k.family]);
            b.extend_from_slice(&k.ifindex.to_ne_bytes());
            (b, l.origin, l.symmetric)
        }
    }

    fn flows(family: u8) -> std::vec::Vec<Flow> {
        // Addresses that differ in the first, a middle and the last byte,
        // so the order is checked byte by byte and across the v6 halves.
        let addrs: [[u8; 16]; 3] = if family == 4 {
            let a = |b: [u8; 4]| {
                let mut x = [0; 16];
                x[..4].copy_from_slice(&b);
                x
            };
            [a([10, 0, 0, 1]), a([10, 0, 0, 2]), a([9, 0, 0, 3])]
        } else {
            let mut a = [0xfd; 16];
            let mut b = a;
            b[15] = 0;
            let mut c = a;
            c[7] = 0xfe;
            a[0] = 0xfc;
            [a, b, c]
        };
        let mut v = std::vec::Vec::new();
        for saddr in addrs {
            for daddr in addrs {
                for sport in [1u16, 0x100, 2] {
                    for dport in [1u16, 0x100, 2] {
                        for protocol in [proto::TCP, proto::UDP] {
                            v.push(Flow {
                                saddr,
                                daddr,
                                sport,
                                dport,
                                family,
                                protocol,
                                may_be_reply: true,
                                tcp_flags: 0,
                            });
                        }
                    }
                }
            }
        }
        v
    }

    /// For one entry made by a first packet and any later packet, the one
    /// canonical lookup admits exactly what the two lookups (own tuple,
    /// reversed tuple) admitted.
    #[test]
    fn ct_keys_match_the_two_lookup_model() {
        let dirs = [Direction::Egress, Direction::Ingress];
        for family in [4, 6] {
            let all = flows(family);
            let mut admitted = 0;
            for first in &all {
                for &d0 in &dirs {
                    let (k0, o0, _) = lookup(first, 7);
                    let entry = ct_value(1, 0, d0, o0, 0, 0);
                    let stored = old_key(first, 7, false);
                    for f in &all {
                        for &dir in &dirs {
                            for may_be_reply in [false, true] {
                                for ifindex in [7, 8] {
                                    let f = Flow { may_be_reply, ..*f };
                                    let old = (old_key(&f, ifindex, false) == stored
                                        && ct_hit_admits(d0 as u8, dir, false))
                                        || (may_be_reply
                                            && old_key(&f, ifindex, true) == stored
                                            && ct_hit_admits(d0 as u8, dir, true));
                                    let (k, o, sym) = lookup(&f, ifindex);
                                    let new =
                                        k == k0 && ct_admits(&entry, dir, o, sym, may_be_reply);
                                    assert_eq!(
                                        new, old,
                                        "first {first:?} {d0:?}, then {f:?} {dir:?} at {ifindex}"
                                    );
                                    admitted += usize::from(new);
                                }
                            }
                        }
                    }
                }
            }
            assert!(admitted > 500, "the model admits some ({admitted})");
        }
    }

    #[test]
    fn a_reply_has_the_same_key_from_the_other_end() {
        let f = flow(proto::TCP, 40000, 80);
        let reply = Flow {
            saddr: f.daddr,
            daddr: f.saddr,
            sport: 80,
            dport: 40000,
            ..f
        };
        let (a, b) = (ct4_key(&f, 7), ct4_key(&reply, 7));
        assert_eq!(a.key, b.key);
        assert_ne!(a.origin, b.origin);
        // 10.0.0.1 sorts before 10.0.0.2: the first packet's tuple is the key.
        assert_eq!(a.origin, ct_origin::KEY_SOURCE);
        assert_eq!((a.key.sport, a.key.dport, a.key.ifindex), (40000, 80, 7));
        assert_eq!(a.key._pad, [0; 3]);
        assert!(!a.symmetric);
    }

    #[test]
    fn ct_value_matches_the_struct_literal() {
        for dir in [Direction::Egress, Direction::Ingress] {
            for origin in [ct_origin::KEY_SOURCE, ct_origin::KEY_DESTINATION] {
                for (l7, state) in [(0, 0), (1, 4), (0, 7)] {
                    assert_eq!(
                        ct_value(0x0123_4567, 0x89ab_cdef, dir, origin, l7, state),
                        CtValue {
                            seen_s: 0x0123_4567,
                            peer_in: 0x89ab_cdef,
                            direction: dir as u8,
                            origin,
                            l7,
                            state,
                            hits: 0,
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn ct_hits_admit_only_in_their_direction() {
        let eg = Direction::Egress as u8;
        let ing = Direction::Ingress as u8;
        assert!(ct_hit_admits(eg, Direction::Egress, false));
        assert!(ct_hit_admits(eg, Direction::Ingress, true));
        assert!(!ct_hit_admits(eg, Direction::Egress, true));
        assert!(!ct_hit_admits(eg, Direction::Ingress, false));
        assert!(ct_hit_admits(ing, Direction::Ingress, false));
        assert!(ct_hit_admits(ing, Direction::Egress, true));
        assert!(!ct_hit_admits(ing, Direction::Ingress, true));
    }

    #[test]
    fn policy_lookups_in_documented_order() {
        let f = flow(proto::TCP, 40000, 443);
        let (pairs, n) = policy_lookups(0x0100_0002, &f);
        assert_eq!(n, 4);
        assert_eq!(
            pairs,
            [(0x0100_0002, 443), (0x0100_0002, 0), (0, 443), (0, 0)]
        );
        let k = policy_key(0x0100_0001, &f, Direction::Egress, 1);
        assert_eq!(k.subject, 0x0100_0001);
        assert_eq!(k.protocol, proto::TCP);
        assert_eq!(k.direction, Direction::Egress as u8);
        assert_eq!(k.generation, 1);
        assert_eq!(k._pad, [0; 3]);
    }

    #[test]
    fn portless_protocols_use_only_any_port_lookups() {
        for p in [proto::ICMP, proto::ICMPV6, 47] {
            let (pairs, n) = policy_lookups(6, &flow(p, 0, 0));
            assert_eq!(n, 2);
            assert_eq!(&pairs[..2], &[(6, 0), (identity::ANY, 0)]);
        }
        // UDP to port 0 is just a port-0 lookup too.
        assert_eq!(policy_lookups(6, &flow(proto::UDP, 9, 0)).1, 2);
    }
}
