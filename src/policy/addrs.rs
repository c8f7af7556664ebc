//! Address-side entries: endpoint entries (host veth → identity and mode),
//! exact address → identity entries, and named-network prefixes.
//!
//! # Which addresses get an identity
//! Endpoint and host addresses get an exact entry unless they are
//! link-local (`169.254.0.0/16`, `fe80::/10`), loopback, unspecified,
//! multicast or broadcast. A link-local address is only unique on its link:
//! every veth (container and host side) has an `fe80::` address and two
//! links may reuse one, but the address maps are node-wide, so an entry
//! could name the wrong container. Link-local peers therefore fall through
//! to the network tries and end up `WORLD` unless a named network covers
//! them. Applications talk over the global addresses; what link-local
//! traffic a container needs (IPv6 neighbour discovery) is the datapath's
//! business, not an identity's.
//!
//! # Conflicts
//! Two identities can claim one key: a pod's containers share a network
//! namespace (one veth, one set of addresses), or discovery saw stale data.
//! The claim with the lowest rank wins: the host, then groups in file order
//! (the same rule as selection), then unmanaged. A managed identity beating
//! `UNMANAGED` is the pod case (the unlabelled sandbox container) and is
//! silent; any other conflict is reported as a [`Warning::Conflict`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use porin_common::datapath::{identity as reserved, mode, EndpointInfo, Identity};

use crate::config::{Config, Mode};

use super::compiled::{Compiled, Member, Prefix, Reason, Unenforced, Warning};
use super::identity::Identities;
use super::select::{describe, Choice, Selection};

/// Whether `addr` gets an exact address entry (see the module notes).
pub fn has_identity(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_link_local()
                || a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_unicast_link_local()
                || a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast())
        }
    }
}

fn mode_value(m: Mode) -> u8 {
    match m {
        Mode::Enforce => mode::ENFORCE,
        Mode::Audit => mode::AUDIT,
    }
}

const HOST_RANK: usize = 0;
const UNMANAGED_RANK: usize = usize::MAX;

/// Someone's claim on a map key.
struct Claim<V> {
    value: V,
    identity: Identity,
    rank: usize,
    /// For warnings: `host` or `name (runtime:id)`.
    who: String,
}

/// Claims per key, resolved by rank as they arrive.
struct Claims<K, V> {
    won: BTreeMap<K, Claim<V>>,
}

impl<K: Ord + Copy, V> Claims<K, V> {
    fn new() -> Self {
        Claims {
            won: BTreeMap::new(),
        }
    }

    fn claim(
        &mut self,
        key: K,
        new: Claim<V>,
        what: impl Fn(K) -> String,
        warn: &mut Vec<Warning>,
    ) {
        let Some(old) = self.won.get(&key) else {
            self.won.insert(key, new);
            return;
        };
        if old.identity == new.identity {
            return;
        }
        let pod_sandbox = (old.identity == reserved::UNMANAGED
            || new.identity == reserved::UNMANAGED)
            && old.identity != reserved::HOST
            && new.identity != reserved::HOST;
        let (kept, dropped) = if new.rank < old.rank {
            (&new, old)
        } else {
            (old, &new)
        };
        if !pod_sandbox {
            warn.push(Warning::Conflict {
                what: what(key),
                kept: kept.who.clone(),
                dropped: dropped.who.clone(),
            });
        }
        if new.rank < old.rank {
            self.won.insert(key, new);
        }
    }

    fn into_map(self) -> BTreeMap<K, V> {
        self.won.into_iter().map(|(k, c)| (k, c.value)).collect()
    }
}

/// Endpoint entries and the address entries of endpoints and the host.
pub(super) fn endpoints(
    cfg: &Config,
    ids: &Identities,
    selection: &Selection,
    host_addrs: &[IpAddr],
    out: &mut Compiled,
) {
    let identity_of = |c: &Choice| -> (Identity, usize, u8) {
        if !c.endpoint.foreign_netns.is_empty() {
            // Part of the container talks where its veth cannot see: no
            // label may buy it any rule (see `Endpoint::foreign_netns`).
            let mode = c.group.map_or(cfg.enforcement.mode, |i| cfg.groups[i].mode);
            return (reserved::SPLIT_NETNS, UNMANAGED_RANK, mode_value(mode));
        }
        match c.group {
            Some(i) => {
                let g = &cfg.groups[i];
                let id = ids.group(&g.name).unwrap_or(reserved::UNMANAGED);
                (id, i + 1, mode_value(g.mode))
            }
            None => (
                reserved::UNMANAGED,
                UNMANAGED_RANK,
                mode_value(cfg.enforcement.mode),
            ),
        }
    };
    let mut veths = Claims::new();
    let mut addrs: Claims<IpAddr, Identity> = Claims::new();
    let mut warn = Vec::new();
    // The host first: it outranks every endpoint anyway, and its claims
    // then never show up as "dropped" when an endpoint comes first.
    for &addr in host_addrs.iter().filter(|a| has_identity(**a)) {
        let claim = Claim {
            value: reserved::HOST,
            identity: reserved::HOST,
            rank: HOST_RANK,
            who: "host".into(),
        };
        addrs.claim(addr, claim, |a| format!("address {a}"), &mut warn);
    }
    for choice in &selection.enforceable {
        let (identity, rank, mode) = identity_of(choice);
        let who = describe(choice.endpoint);
        let info = EndpointInfo::new(identity, mode);
        for veth in choice.endpoint.host_veths() {
            let claim = Claim {
                value: info,
                identity,
                rank,
                who: who.clone(),
            };
            veths.claim(
                veth.ifindex,
                claim,
                |i| format!("host veth ifindex {i}"),
                &mut warn,
            );
        }
        for addr in choice.endpoint.addresses().filter(|a| has_identity(*a)) {
            let claim = Claim {
                value: identity,
                identity,
                rank,
                who: who.clone(),
            };
            addrs.claim(addr, claim, |a| format!("address {a}"), &mut warn);
        }
    }
    for choice in &selection.host_network {
        out.unenforced.push(Unenforced {
            endpoint: describe(choice.endpoint),
            identity: identity_of(choice).0,
            reason: Reason::HostNetwork,
        });
    }

    let won_addrs: BTreeMap<IpAddr, Identity> = addrs.into_map();
    for choice in &selection.enforceable {
        let (identity, _, mode) = identity_of(choice);
        let ep = choice.endpoint;
        let addrs: Vec<IpAddr> = ep
            .addresses()
            .filter(|a| won_addrs.get(a) == Some(&identity))
            .collect();
        let own: Vec<(u32, String)> = ep
            .host_veths()
            .filter(|v| veths.won.get(&v.ifindex).map(|c| c.identity) == Some(identity))
            .map(|v| (v.ifindex, v.name.clone()))
            .collect();
        // Which veth carries which address: the interface's own host peer.
        let addr_veths: Vec<(IpAddr, u32)> = ep
            .interfaces
            .iter()
            .filter_map(|i| i.host_peer.as_ref().map(|p| (i, p.ifindex)))
            .filter(|(_, veth)| own.iter().any(|(o, _)| o == veth))
            .flat_map(|(i, veth)| i.addrs.iter().map(move |a| (a.addr, veth)))
            .filter(|(a, _)| addrs.contains(a))
            .collect();
        let bridges: Vec<(u32, u32)> = ep
            .host_veths()
            .filter(|v| own.iter().any(|(o, _)| *o == v.ifindex))
            .filter_map(|v| v.master.map(|m| (v.ifindex, m)))
            .collect();
        if ep.host_veths().next().is_none() {
            out.unenforced.push(Unenforced {
                endpoint: describe(ep),
                identity,
                reason: Reason::NoHostVeth,
            });
        } else {
            out.members.push(Member {
                endpoint: describe(ep),
                identity,
                mode,
                veths: own,
                addrs,
                addr_veths,
                bridges,
            });
        }
    }
    out.endpoints = veths.into_map();
    for (addr, identity) in won_addrs {
        match addr {
            IpAddr::V4(a) => out.ip4.insert(a.octets(), identity),
            IpAddr::V6(a) => out.ip6.insert(a.octets(), identity),
        };
    }
    out.warnings.extend(warn);
}

/// Network prefixes; a CIDR in two networks stays with the earlier one.
pub(super) fn networks(cfg: &Config, ids: &Identities, out: &mut Compiled) {
    let mut owner: BTreeMap<crate::config::Cidr, &str> = BTreeMap::new();
    for net in &cfg.networks {
        let Some(identity) = ids.network(&net.name) else {
            continue;
        };
        for &cidr in &net.cidrs {
            if let Some(first) = owner.get(&cidr) {
                if *first != net.name {
                    out.warnings.push(Warning::NetworkConflict {
                        cidr,
                        kept: (*first).to_owned(),
                        dropped: net.name.clone(),
                    });
                }
                continue;
            }
            owner.insert(cidr, &net.name);
            let len = cidr.prefix_len();
            match cidr.addr() {
                IpAddr::V4(a) => out.net4.insert(
                    Prefix {
                        addr: a.octets(),
                        len,
                    },
                    identity,
                ),
                IpAddr::V6(a) => out.net6.insert(
                    Prefix {
                        addr: a.octets(),
                        len,
                    },
                    identity,
                ),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_addresses_get_an_identity() {
        let table = [
            ("10.88.0.2", true),
            ("192.168.1.7", true),
            ("169.254.1.1", false),
            ("127.0.0.1", false),
            ("0.0.0.0", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("fd00:1::2", true),
            ("2001:db8::1", true),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", true),
            ("::1", false),
            ("::", false),
            ("ff02::1", false),
        ];
        for (text, want) in table {
            let addr: IpAddr = text.parse().unwrap();
            assert_eq!(has_identity(addr), want, "{text}");
        }
    }
}
