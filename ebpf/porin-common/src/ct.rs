//! Conntrack states, idle timeouts and revocation: the pure part of what a
//! conntrack hit does (the eBPF crate's `conntrack.rs`) and of what the
//! manager's sweep does.
//!
//! # States
//! Every entry has a [`state`], set when it is made ([`initial_state`]) and
//! moved by the packets that hit it ([`on_hit`]):
//!
//! | state | entered by | default timeout |
//! | --- | --- | --- |
//! | `TCP_OPENING` | a TCP packet policy allowed (a SYN, or a connection picked up mid-stream) | 60 s |
//! | `TCP_ESTABLISHED` | a packet the other way while opening (the SYN-ACK) | 6 h |
//! | `TCP_CLOSING` | a FIN either way | 120 s |
//! | `TCP_CLOSED` | a RST either way | 10 s |
//! | `UDP`, `ICMP`, `OTHER` | the first packet | 60 s, 30 s, 60 s |
//! | `REVOKED` | the manager: an apply took away what allowed the connection (TCP only) | 10 s |
//!
//! A connection picked up mid-stream (an ACK with no SYN seen) starts as
//! opening, not established: only an answer the other way proves the other
//! end takes part, so one forged packet cannot buy a 6-hour entry.
//!
//! # Expiry without a walk on the packet path
//! An entry idle longer than its state's timeout ([`expired`], against the
//! clock in [`CtClock`]) is deleted by the first packet that meets it,
//! which then goes through policy as a new flow; the manager's sweep
//! deletes the idle entries no packet meets. A SYN (without ACK) the first
//! packet's way on an entry that is no longer opening is a new connection
//! reusing the 4-tuple: the old entry is deleted and the SYN judged afresh.
//!
//! # Revocation
//! After an apply, the manager judges every entry again under the new
//! policy; an entry the policy no longer allows is deleted, or, for TCP in
//! enforce mode, marked [`state::REVOKED`]: its next packet either way is
//! turned into a RST and a RST is sent back to its sender, so both ends
//! close at once instead of waiting for timeouts.

use crate::datapath::{proto, CtClock};

/// [`crate::datapath::CtValue::state`] values, also the index of their
/// timeout in [`CtClock::timeouts`].
pub mod state {
    /// TCP: allowed packets seen one way only (the SYN, or a connection
    /// picked up mid-stream).
    pub const TCP_OPENING: u8 = 0;
    /// TCP: packets seen both ways.
    pub const TCP_ESTABLISHED: u8 = 1;
    /// TCP: a FIN seen.
    pub const TCP_CLOSING: u8 = 2;
    /// TCP: a RST seen.
    pub const TCP_CLOSED: u8 = 3;
    pub const UDP: u8 = 4;
    /// ICMP and ICMPv6 (echo).
    pub const ICMP: u8 = 5;
    /// Any other protocol.
    pub const OTHER: u8 = 6;
    /// TCP: revoked by the manager; every packet is answered with RSTs.
    pub const REVOKED: u8 = 7;
}

/// Number of states (the length of [`CtClock::timeouts`]).
pub const STATES: usize = 8;

/// Names of the states, by value (for `porin flows` and errors).
pub const STATE_NAMES: [&str; STATES] = [
    "tcp_opening",
    "tcp_established",
    "tcp_closing",
    "tcp_closed",
    "udp",
    "icmp",
    "other",
    "revoked",
];

/// Default most entries per endpoint (`CtClock::max_per_endpoint`): an
/// eighth of the IPv4 table, so it takes eight endpoints at their limit
/// to fill it.
pub const DEFAULT_MAX_PER_ENDPOINT: u32 = crate::datapath::max_entries::CONNTRACK / 8;

/// Default most HTTP-ruled connections per endpoint
/// (`CtClock::max_http_per_endpoint`): an eighth of the HTTP stream state
/// table (`PORIN_HTTPC_V1`), likewise.
pub const DEFAULT_MAX_HTTP_PER_ENDPOINT: u32 = crate::http::max_entries::CONNS / 8;

/// Default idle timeouts in seconds, by state: near Cilium's and Linux
/// conntrack's (TCP established 6 h, SYN 60 s, close 10 s; UDP 60 s;
/// ICMP 30 s).
pub const DEFAULT_TIMEOUTS: [u32; STATES] = [60, 6 * 3600, 120, 10, 60, 30, 60, 10];

/// TCP flags (the header's flags byte).
mod flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// The state of a new entry made by a packet of `protocol` with TCP flags
/// `tcp_flags`.
#[inline(always)]
pub fn initial_state(protocol: u8, tcp_flags: u8) -> u8 {
    match protocol {
        proto::TCP => {
            if tcp_flags & flag::RST != 0 {
                state::TCP_CLOSED
            } else if tcp_flags & flag::FIN != 0 {
                state::TCP_CLOSING
            } else {
                state::TCP_OPENING
            }
        }
        proto::UDP => state::UDP,
        proto::ICMP | proto::ICMPV6 => state::ICMP,
        _ => state::OTHER,
    }
}

/// Whether an entry in `state` last seen at `seen_s` has been idle longer
/// than its timeout at `clock.now_s`. Never while the clock is unwritten
/// (0) or the timeout is 0, nor when the entry is younger than the clock
/// (made by the kernel's clock while the daemon stood still).
#[inline(always)]
pub fn expired(state: u8, seen_s: u32, clock: &CtClock) -> bool {
    let timeout = clock.timeouts[usize::from(state) & (STATES - 1)];
    clock.now_s > seen_s && timeout != 0 && clock.now_s - seen_s > timeout
}

/// What a conntrack hit does with the packet ([`on_hit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    /// The packet passes on the entry, whose state becomes this one.
    Pass(u8),
    /// The entry is stale (idle too long, or its 4-tuple reused by a new
    /// SYN): delete it and judge the packet as a new flow.
    Expired,
    /// A revoked TCP connection: answer with RSTs both ways.
    Revoked,
}

const _: () = assert!(STATES.is_power_of_two());

/// The conntrack hit of a packet (`protocol`, TCP flags `tcp_flags`, going
/// the first packet's way or the other: `reply`) on an entry in `state`
/// last seen at `seen_s`.
#[inline(always)]
pub fn on_hit(
    state: u8,
    seen_s: u32,
    clock: &CtClock,
    protocol: u8,
    tcp_flags: u8,
    reply: bool,
) -> Hit {
    if expired(state, seen_s, clock) {
        return Hit::Expired;
    }
    // A SYN without ACK the first packet's way: a connection opening.
    let opening =
        protocol == proto::TCP && tcp_flags & (flag::SYN | flag::ACK) == flag::SYN && !reply;
    if state == state::REVOKED {
        return if opening { Hit::Expired } else { Hit::Revoked };
    }
    if protocol != proto::TCP {
        return Hit::Pass(state);
    }
    if opening {
        // A retransmitted SYN keeps the entry; any other state means the
        // tuple is being reused by a new connection.
        return if state == state::TCP_OPENING {
            Hit::Pass(state)
        } else {
            Hit::Expired
        };
    }
    if tcp_flags & flag::RST != 0 {
        Hit::Pass(state::TCP_CLOSED)
    } else if tcp_flags & flag::FIN != 0 && state < state::TCP_CLOSING {
        Hit::Pass(state::TCP_CLOSING)
    } else if state == state::TCP_OPENING && reply {
        Hit::Pass(state::TCP_ESTABLISHED)
    } else {
        Hit::Pass(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = flag::SYN;
    const SYNACK: u8 = flag::SYN | flag::ACK;
    const ACK: u8 = flag::ACK;
    const FIN: u8 = flag::FIN | flag::ACK;
    const RST: u8 = flag::RST;

    fn clock(now_s: u32) -> CtClock {
        CtClock {
            now_s,
            timeouts: DEFAULT_TIMEOUTS,
            max_per_endpoint: 0,
            max_http_per_endpoint: 0,
        }
    }

    fn tcp(state: u8, flags: u8, reply: bool) -> Hit {
        on_hit(state, 100, &clock(100), proto::TCP, flags, reply)
    }

    #[test]
    fn a_tcp_connection_goes_through_its_states() {
        let mut s = initial_state(proto::TCP, SYN);
        assert_eq!(s, state::TCP_OPENING);
        for (flags, reply, want) in [
            (SYN, false, state::TCP_OPENING),
            (SYNACK, true, state::TCP_ESTABLISHED),
            (ACK, false, state::TCP_ESTABLISHED),
            (ACK, true, state::TCP_ESTABLISHED),
            (FIN, false, state::TCP_CLOSING),
            (FIN, true, state::TCP_CLOSING),
            (ACK, false, state::TCP_CLOSING),
            (RST, true, state::TCP_CLOSED),
            (FIN, false, state::TCP_CLOSED),
        ] {
            assert_eq!(
                tcp(s, flags, reply),
                Hit::Pass(want),
                "{flags:#x} reply {reply} from {s}"
            );
            s = want;
        }
    }

    #[test]
    fn only_an_answer_establishes() {
        // Picked up mid-stream: more packets the same way stay opening.
        let s = initial_state(proto::TCP, ACK);
        assert_eq!(s, state::TCP_OPENING);
        assert_eq!(tcp(s, ACK, false), Hit::Pass(state::TCP_OPENING));
        assert_eq!(tcp(s, ACK, true), Hit::Pass(state::TCP_ESTABLISHED));
        assert_eq!(initial_state(proto::TCP, RST), state::TCP_CLOSED);
        assert_eq!(initial_state(proto::TCP, FIN), state::TCP_CLOSING);
    }

    #[test]
    fn a_new_syn_on_a_used_tuple_is_judged_afresh() {
        for s in [
            state::TCP_ESTABLISHED,
            state::TCP_CLOSING,
            state::TCP_CLOSED,
            state::REVOKED,
        ] {
            assert_eq!(tcp(s, SYN, false), Hit::Expired, "state {s}");
            // A SYN the other way (simultaneous open) or with ACK is not.
            assert_ne!(tcp(s, SYN, true), Hit::Expired, "state {s}");
            assert_ne!(tcp(s, SYNACK, false), Hit::Expired, "state {s}");
        }
    }

    #[test]
    fn revoked_answers_every_packet_but_a_new_syn() {
        for (flags, reply) in [
            (ACK, false),
            (ACK, true),
            (FIN, true),
            (RST, false),
            (SYNACK, true),
        ] {
            assert_eq!(tcp(state::REVOKED, flags, reply), Hit::Revoked);
        }
    }

    #[test]
    fn other_protocols_keep_their_state() {
        for (p, s) in [
            (proto::UDP, state::UDP),
            (proto::ICMP, state::ICMP),
            (proto::ICMPV6, state::ICMP),
            (47, state::OTHER),
        ] {
            assert_eq!(initial_state(p, 0), s);
            // Flags mean nothing outside TCP.
            assert_eq!(on_hit(s, 100, &clock(100), p, SYN, false), Hit::Pass(s));
        }
    }

    #[test]
    fn idle_entries_expire_by_their_state() {
        let c = |now| clock(now);
        // UDP: 60 s.
        assert_eq!(
            on_hit(state::UDP, 100, &c(160), proto::UDP, 0, false),
            Hit::Pass(state::UDP)
        );
        assert_eq!(
            on_hit(state::UDP, 100, &c(161), proto::UDP, 0, true),
            Hit::Expired
        );
        // Established TCP: 6 h; opening: 60 s.
        assert!(!expired(state::TCP_ESTABLISHED, 100, &c(100 + 3600)));
        assert!(expired(state::TCP_ESTABLISHED, 100, &c(101 + 6 * 3600)));
        assert!(expired(state::TCP_OPENING, 100, &c(161)));
        // A revoked entry expires like a closed one, then a packet is new.
        assert_eq!(
            on_hit(state::REVOKED, 100, &c(111), proto::TCP, ACK, false),
            Hit::Expired
        );
    }

    #[test]
    fn nothing_expires_without_a_clock_or_timeout_or_in_the_future() {
        assert!(!expired(state::UDP, 100, &clock(0)));
        let mut forever = clock(1_000_000);
        forever.timeouts[usize::from(state::UDP)] = 0;
        assert!(!expired(state::UDP, 100, &forever));
        // Made by the kernel's clock after the manager's clock stopped.
        assert!(!expired(state::UDP, 5000, &clock(100)));
    }

    #[test]
    fn names_cover_every_state() {
        assert_eq!(STATE_NAMES[usize::from(state::REVOKED)], "revoked");
        assert_eq!(
            STATE_NAMES[usize::from(state::TCP_ESTABLISHED)],
            "tcp_established"
        );
    }
}
