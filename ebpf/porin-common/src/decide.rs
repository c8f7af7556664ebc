//! The TC programs' decisions that do not touch maps: which keys to look up,
//! when a conntrack hit counts, and the one mapping from a result to a TC
//! verdict. Pure, so the host tests exactly what the kernel runs.
//!
//! # Verdicts (`from_container` / `to_container`)
//! | case | verdict | counted as |
//! | --- | --- | --- |
//! | no `PORIN_ENDP_V1` entry for the ifindex | `SHOT` (any mode) | drop `UnknownEndpoint` |
//! | ARP, ICMPv6 133-137 | `OK` | forwarded |
//! | conntrack hit (same direction, or reply) | `OK` | forwarded |
//! | policy allows | `OK` (CT entry made) | forwarded |
//! | policy denies / no entry | enforce: `SHOT`; audit: `OK` | drop `PolicyDenied` (+ forwarded in audit) |
//! | parse error ([`crate::parse`]) | enforce: `SHOT`; audit: `OK` | drop with its reason (+ forwarded in audit) |
//! | config not ready / bad generation, CT insert failed | enforce: `SHOT`; audit: `OK` | drop `Internal` (+ forwarded in audit) |
//!
//! Audit mode never changes what reaches the container: every would-be drop
//! is counted and the packet passes. Audited flows get no CT entry (only an
//! allowed packet makes one), so each of their packets is counted.

use crate::{
    datapath::{
        identity, mode, tc_action, CtKey, CtValue, DatapathConfig, Direction, DropReason, Identity,
        PolicyKey, CONFIG_READY, CT_REFRESH_EVERY,
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

/// The conntrack key of the packet's own tuple at endpoint `ifindex`.
#[inline(always)]
pub fn ct_key(flow: &Flow, ifindex: u32) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        family: flow.family,
        _pad: [0, 0],
        ifindex,
    }
}

/// The key the connection this packet replies to would have been stored
/// under: addresses and ports swapped.
#[inline(always)]
pub fn ct_reply_key(flow: &Flow, ifindex: u32) -> CtKey {
    CtKey {
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport: flow.dport,
        dport: flow.sport,
        protocol: flow.protocol,
        family: flow.family,
        _pad: [0, 0],
        ifindex,
    }
}

/// The conntrack value for a connection first seen now, in `dir`.
///
/// Built from two words: a struct literal's zero pad bytes became a call to
/// bpf-linker's byte-loop `memset` (see `parse::HeaderBuf`).
#[inline(always)]
pub fn ct_value(now_ns: u64, dir: Direction) -> CtValue {
    // Native byte order: the direction byte lands at offset 8 in memory; the
    // pad bytes and `hits` (offsets 9..16) are zero, on either endianness.
    let words: [u64; 2] = [now_ns, u64::from_ne_bytes([dir as u8, 0, 0, 0, 0, 0, 0, 0])];
    // SAFETY: `CtValue` is `repr(C)`, 16 bytes without implicit padding,
    // valid for any bytes (u64, u8, [u8; 3], u32).
    unsafe { core::mem::transmute::<[u64; 2], CtValue>(words) }
}

/// Whether a conntrack hit on an entry that had `hits_before` hits should
/// refresh its `last_seen_ns` (see [`CtValue`]).
#[inline(always)]
pub fn ct_refresh_due(hits_before: u32) -> bool {
    hits_before & (CT_REFRESH_EVERY - 1) == 0
}

/// Whether a conntrack hit admits the packet: a hit on the packet's own
/// tuple only in the direction the connection was first seen, a hit on the
/// reversed tuple only in the other one. Without this, a container could send
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
        let cfg = |generation, ready| DatapathConfig { generation, ready };
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

    #[test]
    fn reply_key_is_the_reversed_forward_key() {
        let f = flow(proto::TCP, 40000, 80);
        let k = ct_key(&f, 7);
        let r = ct_reply_key(&f, 7);
        assert_eq!((k.sport, k.dport, k.ifindex), (40000, 80, 7));
        assert_eq!((r.saddr, r.daddr), (k.daddr, k.saddr));
        assert_eq!((r.sport, r.dport), (80, 40000));
        // The reply's own reply key is the original forward key.
        let reply = Flow {
            saddr: f.daddr,
            daddr: f.saddr,
            sport: 80,
            dport: 40000,
            ..f
        };
        assert_eq!(ct_reply_key(&reply, 7), k);
    }

    #[test]
    fn ct_value_matches_the_struct_literal() {
        for dir in [Direction::Egress, Direction::Ingress] {
            assert_eq!(
                ct_value(0x0123_4567_89ab_cdef, dir),
                CtValue {
                    last_seen_ns: 0x0123_4567_89ab_cdef,
                    direction: dir as u8,
                    _pad: [0; 3],
                    hits: 0,
                }
            );
        }
    }

    #[test]
    fn last_seen_is_refreshed_on_the_first_hit_then_every_nth() {
        let due: [u32; 4] = [
            0,
            CT_REFRESH_EVERY,
            2 * CT_REFRESH_EVERY,
            0u32.wrapping_sub(CT_REFRESH_EVERY),
        ];
        for h in due {
            assert!(ct_refresh_due(h), "{h}");
        }
        for h in [1, 2, CT_REFRESH_EVERY - 1, CT_REFRESH_EVERY + 1, u32::MAX] {
            assert!(!ct_refresh_due(h), "{h}");
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
