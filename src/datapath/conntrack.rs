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

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashSet},
};

use aya::maps::HashMap as BpfHashMap;
use log::debug;
use porin_common::{
    ct::{self, state},
    datapath::{ct_origin, mode, proto, Ct4Key, CtClock, CtCount, CtKey, CtValue, Direction},
    decide::{ct4_key, ct6_key},
    http_stream::HttpConn,
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

/// The HTTP stream state whose connection has no conntrack entry left
/// (`orphans`), given the live entries' keys. Keys are the first packet's
/// tuple at the endpoint (`porin_common::http::conn_key`).
fn http_orphans(
    keys: impl Iterator<Item = CtKey>,
    live4: &HashSet<Ct4Key>,
    live6: &HashSet<CtKey>,
) -> HashSet<CtKey> {
    keys.filter(|k| {
        let flow = Flow {
            saddr: k.saddr,
            daddr: k.daddr,
            sport: k.sport,
            dport: k.dport,
            family: k.family,
            protocol: k.protocol,
            may_be_reply: false,
            tcp_flags: 0,
        };
        if k.family == 4 {
            !live4.contains(&ct4_key(&flow, k.ifindex).key)
        } else {
            !live6.contains(&ct6_key(&flow, k.ifindex).key)
        }
    })
    .collect()
}

impl Datapath {
    /// Sets the idle timeouts (seconds by `porin_common::ct::state`) and
    /// the most entries, and HTTP-ruled connections, per endpoint (0: no
    /// limit) that the next [`Self::tick_conntrack`] writes.
    pub fn set_conntrack_limits(
        &mut self,
        timeouts: [u32; ct::STATES],
        max_per_endpoint: u32,
        max_http_per_endpoint: u32,
    ) {
        self.ct_timeouts = timeouts;
        self.ct_max_per_endpoint = max_per_endpoint;
        self.ct_max_http_per_endpoint = max_http_per_endpoint;
    }

    fn ct_clock(&self) -> CtClock {
        CtClock {
            now_s: monotonic_s(),
            timeouts: self.ct_timeouts,
            max_per_endpoint: self.ct_max_per_endpoint,
            max_http_per_endpoint: self.ct_max_http_per_endpoint,
        }
    }

    /// Writes the clock (now), the timeouts and the quotas to
    /// `PORIN_CTCLK_V1`.
    pub fn tick_conntrack(&mut self) -> Result<(), DatapathError> {
        let clock = self.ct_clock();
        let mut a = map_mut!(self.bpf, maps::CT_CLOCK, aya::maps::Array<_, CtClock>);
        a.set(0, clock, 0)
            .map_err(map_err(maps::CT_CLOCK.name, "write"))
    }

    /// Deletes every connection idle longer than its state's timeout (see
    /// the module notes), then the HTTP stream state of connections gone,
    /// then sets each endpoint's counts in `PORIN_CTN_V1` to the entries
    /// it has left. Returns how many connections were deleted.
    pub fn sweep_connections(&mut self) -> Result<usize, DatapathError> {
        let clock = self.ct_clock();
        let counts = RefCell::new(BTreeMap::<u32, CtCount>::new());
        let live4 = RefCell::new(HashSet::new());
        let live6 = RefCell::new(HashSet::new());
        let keep = |ifindex: u32, v: &CtValue| {
            if ct::expired(v.state, v.seen_s, &clock) {
                return Step::Delete;
            }
            let mut counts = counts.borrow_mut();
            let c = counts.entry(ifindex).or_default();
            c.entries += 1;
            if v.l7 != 0 {
                c.http += 1;
            }
            Step::Keep
        };
        let v4 = walk(&mut self.bpf, maps::CT4, |k, v| {
            let s = keep(k.ifindex, v);
            if matches!(s, Step::Keep) {
                live4.borrow_mut().insert(*k);
            }
            s
        })?;
        let v6 = walk(&mut self.bpf, maps::CT6, |k, v| {
            let s = keep(k.ifindex, v);
            if matches!(s, Step::Keep) {
                live6.borrow_mut().insert(*k);
            }
            s
        })?;
        self.sweep_http_state(&live4.into_inner(), &live6.into_inner())?;
        self.write_counts(&counts.into_inner())?;
        let n = v4.deleted + v6.deleted;
        if n > 0 {
            debug!("conntrack: swept {n} idle connections");
        }
        Ok(n)
    }

    /// Deletes the HTTP stream state (`PORIN_HTTPC_V1`) of connections that
    /// have had no
    /// conntrack entry at two sweeps in a row: the programs delete only the
    /// conntrack entry of a stale connection, and the state must not wait
    /// for the LRU, which would evict live connections' state first if it
    /// is idler. Two sweeps, because a new connection's stream state is
    /// written just before its conntrack entry: one missing at a single
    /// walk may be one being made.
    fn sweep_http_state(
        &mut self,
        live4: &HashSet<Ct4Key>,
        live6: &HashSet<CtKey>,
    ) -> Result<(), DatapathError> {
        let mut conns = map_mut!(self.bpf, maps::HTTP_CONNS, BpfHashMap<_, CtKey, HttpConn>);
        let keys: Vec<CtKey> = conns.keys().filter_map(Result::ok).collect();
        let orphans = http_orphans(keys.into_iter(), live4, live6);
        let mut gone = 0;
        for k in orphans.intersection(&self.http_orphans) {
            if conns.remove(k).is_ok() {
                gone += 1;
            }
        }
        if gone > 0 {
            debug!("conntrack: swept the HTTP state of {gone} connections gone");
        }
        self.http_orphans = orphans;
        Ok(())
    }

    /// Sets `PORIN_CTN_V1` to `counts` (endpoints not listed: 0, those
    /// without an endpoint entry: removed). The programs' adds between the
    /// walk and this write are lost until the next sweep: the counts err
    /// low by the flows made meanwhile (a few, in milliseconds).
    fn write_counts(&mut self, counts: &BTreeMap<u32, CtCount>) -> Result<(), DatapathError> {
        let endpoints: Vec<u32> = self.applied.endpoints.keys().copied().collect();
        let mut m = map_mut!(self.bpf, maps::CT_COUNTS, BpfHashMap<_, u32, CtCount>);
        let present: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for i in present {
            if !endpoints.contains(&i) && !counts.contains_key(&i) {
                let _ = m.remove(&i);
            }
        }
        for i in endpoints.iter().chain(counts.keys()) {
            let n = counts.get(i).copied().unwrap_or_default();
            m.insert(i, n, 0)
                .map_err(map_err(maps::CT_COUNTS.name, "write"))?;
        }
        Ok(())
    }

    /// Each endpoint's conntrack entries as the programs count them
    /// (`PORIN_CTN_V1`), for `porin status`.
    pub fn connection_counts(&self) -> Result<Vec<(u32, CtCount)>, DatapathError> {
        let m: BpfHashMap<_, u32, CtCount> = maps::open(&self.bpf, maps::CT_COUNTS)?;
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

    fn http_key(family: u8, client: u8, sport: u16, ifindex: u32) -> CtKey {
        let addr = |last: u8| {
            let mut a = [0; 16];
            if family == 4 {
                a[..4].copy_from_slice(&[10, 0, 0, last]);
            } else {
                a[0] = 0xfd;
                a[15] = last;
            }
            a
        };
        CtKey {
            saddr: addr(client),
            daddr: addr(1),
            sport,
            dport: 80,
            protocol: proto::TCP,
            family,
            _pad: [0; 2],
            ifindex,
        }
    }

    /// An HTTP connection's state is an orphan when the canonical key of
    /// its first packet has no live entry at its endpoint; either order of
    /// addresses, both families.
    #[test]
    fn http_state_is_an_orphan_only_without_its_connection() {
        let flow = |k: &CtKey| Flow {
            saddr: k.saddr,
            daddr: k.daddr,
            sport: k.sport,
            dport: k.dport,
            family: k.family,
            protocol: k.protocol,
            may_be_reply: false,
            tcp_flags: 0,
        };
        // Client 10.0.0.2 sorts after the server: its key is reversed.
        let live4 = http_key(4, 2, 40000, 7);
        let live6 = http_key(6, 9, 40000, 7);
        let elsewhere = http_key(4, 2, 40000, 8);
        let gone = http_key(4, 3, 40001, 7);
        let l4: HashSet<Ct4Key> = [ct4_key(&flow(&live4), 7).key].into();
        let l6: HashSet<CtKey> = [ct6_key(&flow(&live6), 7).key].into();
        let orphans = http_orphans([live4, live6, elsewhere, gone].into_iter(), &l4, &l6);
        assert_eq!(orphans, [elsewhere, gone].into());
    }

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
