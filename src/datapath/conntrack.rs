//! The manager's side of conntrack (`porin_common::ct`): the clock the
//! programs stamp entries with, the sweep of idle entries, and revocation
//! after an apply.
//!
//! * [`Datapath::tick_conntrack`] writes `PORIN_CTCLK_V1`: whole seconds
//!   of `CLOCK_MONOTONIC` (the clock of `bpf_ktime_get_ns`) and the idle
//!   timeouts. The daemon calls it every second and at every apply.
//! * [`Datapath::sweep_connections`] deletes the entries idle longer than
//!   their timeout. The programs delete a stale entry they meet; the
//!   sweep reclaims those no packet meets. It walks the tables from
//!   userspace, never on the packet path.
//! * Revocation, at the end of every apply: each entry is judged again by
//!   the new policy ([`Compiled::judge`], the slow path's steps). One the
//!   policy no longer allows, or allows with or without HTTP rules where
//!   it had the other, is revoked: a TCP entry of an enforce-mode endpoint
//!   is marked `REVOKED` (its next packet either way becomes RSTs), any
//!   other is deleted (its next packet is judged as new, and dropped).
//!
//! The walks copy the table first, then write: an entry a packet changes
//! meanwhile keeps the program's write, except the state of one marked
//! `REVOKED` at the moment a packet moves its TCP state. Marking checks
//! its write and tries again (a program writes the state only on a
//! transition, so a second write holds).

use aya::maps::HashMap as BpfHashMap;
use log::debug;
use porin_common::{
    ct::{self, state},
    datapath::{ct_origin, mode, proto, Ct4Key, CtClock, CtKey, CtValue, Direction},
    maps::MapDef,
    parse::Flow,
};

use super::{map_err, Datapath, DatapathError, LoadError};
use crate::{
    maps,
    policy::{Compiled, Judged},
};

/// How many connections an apply revoked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// TCP entries marked `REVOKED` (RSTs at their next packet).
    pub reset: usize,
    /// Other entries deleted (judged afresh at their next packet).
    pub deleted: usize,
    /// Distinct connections among them: a connection between two
    /// containers has an entry at each one's veth.
    pub connections: usize,
}

impl Revoked {
    pub fn total(&self) -> usize {
        self.connections
    }
}

/// Whole seconds of `CLOCK_MONOTONIC`, as the programs' `bpf_ktime_get_ns`
/// / 10^9.
pub fn monotonic_s() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// A conntrack key: its connection's first packet back from the canonical
/// tuple and the entry's origin.
trait ConnKey: aya::Pod + Eq + std::hash::Hash {
    fn ifindex(&self) -> u32;
    /// The key without its endpoint: the connection, wherever seen.
    fn tuple(&self) -> Self;
    fn first_packet(&self, v: &CtValue) -> Flow;
}

fn flow_of(
    (saddr, sport): ([u8; 16], u16),
    (daddr, dport): ([u8; 16], u16),
    family: u8,
    protocol: u8,
    origin: u8,
) -> Flow {
    let (s, d) = if origin == ct_origin::KEY_SOURCE {
        ((saddr, sport), (daddr, dport))
    } else {
        ((daddr, dport), (saddr, sport))
    };
    Flow {
        saddr: s.0,
        daddr: d.0,
        sport: s.1,
        dport: d.1,
        family,
        protocol,
        may_be_reply: false,
        tcp_flags: 0,
    }
}

impl ConnKey for Ct4Key {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }
    fn tuple(&self) -> Self {
        Ct4Key {
            ifindex: 0,
            ..*self
        }
    }
    fn first_packet(&self, v: &CtValue) -> Flow {
        let wide = |a: [u8; 4]| {
            let mut w = [0; 16];
            w[..4].copy_from_slice(&a);
            w
        };
        flow_of(
            (wide(self.saddr), self.sport),
            (wide(self.daddr), self.dport),
            4,
            self.protocol,
            v.origin,
        )
    }
}

impl ConnKey for CtKey {
    fn ifindex(&self) -> u32 {
        self.ifindex
    }
    fn tuple(&self) -> Self {
        CtKey {
            ifindex: 0,
            ..*self
        }
    }
    fn first_packet(&self, v: &CtValue) -> Flow {
        flow_of(
            (self.saddr, self.sport),
            (self.daddr, self.dport),
            6,
            self.protocol,
            v.origin,
        )
    }
}

/// What a walk does with one entry.
enum Step {
    Keep,
    Delete,
    MarkRevoked,
}

/// The revocation decision for one entry under `new`.
fn revocation<K: ConnKey>(new: &Compiled, k: &K, v: &CtValue) -> Step {
    if v.state == state::REVOKED {
        return Step::Keep;
    }
    let dir = if v.direction == Direction::Ingress as u8 {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let flow = k.first_packet(v);
    let still = match new.judge(k.ifindex(), &flow, dir) {
        // Removed endpoints' entries are forgotten by the apply itself.
        Judged::NoEndpoint => return Step::Keep,
        Judged::Allowed(a) => (a == porin_common::datapath::action::ALLOW_HTTP) == (v.l7 != 0),
        Judged::Denied => false,
    };
    if still {
        return Step::Keep;
    }
    let enforce = new
        .endpoints
        .get(&k.ifindex())
        .is_some_and(|e| e.mode == mode::ENFORCE);
    if flow.protocol == proto::TCP && enforce {
        Step::MarkRevoked
    } else {
        Step::Delete
    }
}

/// Walks conntrack table `def`, doing `step` with each entry; returns the
/// counts of deleted and marked entries.
fn walk<K: ConnKey>(
    bpf: &mut aya::Ebpf,
    def: MapDef<K, CtValue>,
    step: impl Fn(&K, &CtValue) -> Step,
) -> Result<Revoked, DatapathError> {
    let mut m = map_mut!(bpf, def, BpfHashMap<_, K, CtValue>);
    let entries: Vec<(K, CtValue)> = m.iter().filter_map(Result::ok).collect();
    let mut done = Revoked::default();
    let mut tuples = std::collections::HashSet::new();
    for (k, v) in entries {
        match step(&k, &v) {
            Step::Keep => {}
            Step::Delete => {
                // Gone already (expired, deleted by a packet): fine.
                if m.remove(&k).is_ok() {
                    done.deleted += 1;
                    tuples.insert(k.tuple());
                }
            }
            Step::MarkRevoked => {
                let mut marked_at = None;
                for attempt in 0..3 {
                    // Read again: keep the program's latest times.
                    let Ok(now) = m.get(&k, 0) else {
                        // Deleted meanwhile (stale, or a new SYN): its next
                        // packet is judged by the new policy anyway.
                        marked_at = Some(attempt);
                        break;
                    };
                    if now.state == state::REVOKED {
                        done.reset += 1;
                        tuples.insert(k.tuple());
                        marked_at = Some(attempt);
                        break;
                    }
                    let marked = CtValue {
                        state: state::REVOKED,
                        ..now
                    };
                    // BPF_EXIST: never recreate an entry deleted meanwhile.
                    m.insert(k, marked, 2)
                        .map_err(map_err(def.name, "mark revoked"))
                        .or_else(|e| match m.get(&k, 0) {
                            Err(_) => Ok(()),
                            Ok(_) => Err(e),
                        })?;
                }
                // Packets kept moving its state over every mark (three
                // transitions in a row): fail closed, delete it, so its
                // next packet is judged by the new policy.
                if marked_at.is_none() && m.remove(&k).is_ok() {
                    done.deleted += 1;
                    tuples.insert(k.tuple());
                }
            }
        }
    }
    done.connections = tuples.len();
    Ok(done)
}

impl Datapath {
    /// Sets the idle timeouts (seconds by `porin_common::ct::state`) and
    /// the most entries per endpoint (0: no limit) that the next
    /// [`Self::tick_conntrack`] writes.
    pub fn set_conntrack_limits(&mut self, timeouts: [u32; ct::STATES], max_per_endpoint: u32) {
        self.ct_timeouts = timeouts;
        self.ct_max_per_endpoint = max_per_endpoint;
    }

    fn ct_clock(&self) -> CtClock {
        CtClock {
            now_s: monotonic_s(),
            timeouts: self.ct_timeouts,
            max_per_endpoint: self.ct_max_per_endpoint,
        }
    }

    /// Writes the clock (now), the timeouts and the quota to
    /// `PORIN_CTCLK_V1`.
    pub fn tick_conntrack(&mut self) -> Result<(), DatapathError> {
        let clock = self.ct_clock();
        let mut a = map_mut!(self.bpf, maps::CT_CLOCK, aya::maps::Array<_, CtClock>);
        a.set(0, clock, 0)
            .map_err(map_err(maps::CT_CLOCK.name, "write"))
    }

    /// Deletes every connection idle longer than its state's timeout (see
    /// the module notes), then sets each endpoint's count in
    /// `PORIN_CTN_V1` to the entries it has left. Returns how many were
    /// deleted.
    pub fn sweep_connections(&mut self) -> Result<usize, DatapathError> {
        let clock = self.ct_clock();
        let idle = |v: &CtValue| {
            if ct::expired(v.state, v.seen_s, &clock) {
                Step::Delete
            } else {
                Step::Keep
            }
        };
        let counts = std::cell::RefCell::new(std::collections::BTreeMap::<u32, u32>::new());
        let keep = |ifindex: u32, v: &CtValue| {
            let s = idle(v);
            if matches!(s, Step::Keep) {
                *counts.borrow_mut().entry(ifindex).or_default() += 1;
            }
            s
        };
        let v4 = walk(&mut self.bpf, maps::CT4, |k, v| keep(k.ifindex, v))?;
        let v6 = walk(&mut self.bpf, maps::CT6, |k, v| keep(k.ifindex, v))?;
        self.write_counts(&counts.into_inner())?;
        let n = v4.deleted + v6.deleted;
        if n > 0 {
            debug!("conntrack: swept {n} idle connections");
        }
        Ok(n)
    }

    /// Sets `PORIN_CTN_V1` to `counts` (endpoints not listed: 0, those
    /// without an endpoint entry: removed). The programs' adds between the
    /// walk and this write are lost until the next sweep: the count errs
    /// low by the flows made meanwhile (a few, in milliseconds).
    fn write_counts(
        &mut self,
        counts: &std::collections::BTreeMap<u32, u32>,
    ) -> Result<(), DatapathError> {
        let endpoints: Vec<u32> = self.applied.endpoints.keys().copied().collect();
        let mut m = map_mut!(self.bpf, maps::CT_COUNTS, BpfHashMap<_, u32, u32>);
        let present: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for i in present {
            if !endpoints.contains(&i) && !counts.contains_key(&i) {
                let _ = m.remove(&i);
            }
        }
        for i in endpoints.iter().chain(counts.keys()) {
            let n = counts.get(i).copied().unwrap_or(0);
            m.insert(i, n, 0)
                .map_err(map_err(maps::CT_COUNTS.name, "write"))?;
        }
        Ok(())
    }

    /// Each endpoint's conntrack entries as the programs count them
    /// (`PORIN_CTN_V1`), for `porin status`.
    pub fn connection_counts(&self) -> Result<Vec<(u32, u32)>, DatapathError> {
        let m: BpfHashMap<_, u32, u32> = maps::open(&self.bpf, maps::CT_COUNTS)?;
        Ok(m.iter().filter_map(Result::ok).collect())
    }

    /// Judges every tracked connection under `new` and revokes those it no
    /// longer allows (see the module notes).
    pub(super) fn revoke_connections(&mut self, new: &Compiled) -> Result<Revoked, DatapathError> {
        let v4 = walk(&mut self.bpf, maps::CT4, |k, v| revocation(new, k, v))?;
        let v6 = walk(&mut self.bpf, maps::CT6, |k, v| revocation(new, k, v))?;
        Ok(Revoked {
            reset: v4.reset + v6.reset,
            deleted: v4.deleted + v6.deleted,
            connections: v4.connections + v6.connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_packet_comes_back_from_the_canonical_key() {
        let k = Ct4Key {
            saddr: [10, 0, 0, 1],
            daddr: [10, 0, 0, 2],
            sport: 80,
            dport: 40000,
            protocol: proto::TCP,
            _pad: [0; 3],
            ifindex: 7,
        };
        let mut v = CtValue {
            origin: ct_origin::KEY_DESTINATION,
            ..CtValue::default()
        };
        let f = k.first_packet(&v);
        assert_eq!((&f.saddr[..4], f.sport), (&[10, 0, 0, 2][..], 40000));
        assert_eq!((&f.daddr[..4], f.dport), (&[10, 0, 0, 1][..], 80));
        v.origin = ct_origin::KEY_SOURCE;
        let f = k.first_packet(&v);
        assert_eq!((&f.saddr[..4], f.dport), (&[10, 0, 0, 1][..], 40000));
        // The canonical key of the rebuilt packet is the key again.
        let l = porin_common::decide::ct4_key(&f, 7);
        assert_eq!((l.key, l.origin), (k, ct_origin::KEY_SOURCE));
    }
}
