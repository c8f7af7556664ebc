//! The compiler's output: the entries of each datapath map, what could not
//! be enforced and why, and the differences between two outputs.
//!
//! Every map is a `BTreeMap`, so two compilations of the same input are
//! identical value for value and iterate in the same (sorted) order.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use porin_common::datapath::{EndpointInfo, Identity, PolicyKey, PolicyValue};

use crate::config::Cidr;

use super::select::Overlap;

/// Key of the network LPM tries (`PORIN_NET4_V1`: `N = 4`, `PORIN_NET6_V1`:
/// `N = 16`): a network address in network byte order and its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix<const N: usize> {
    pub addr: [u8; N],
    pub len: u8,
}

pub type Prefix4 = Prefix<4>;
pub type Prefix6 = Prefix<16>;

/// A policy entry whose policy carries HTTP rules: the L3/L4 part is in
/// [`Compiled::policy`], the HTTP part is for the L7 stage to enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpTarget {
    /// The entry (generation 0), always TCP. Its `PolicyValue::rule` may
    /// name an earlier rule that produced the same key without HTTP rules.
    pub key: PolicyKey,
    /// 1-based index of the policy in the configuration (its `http` list).
    pub rule: u32,
}

/// Why an endpoint gets no endpoint entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// It shares the host's network namespace: no veth of its own, and its
    /// traffic is the host's.
    HostNetwork,
    /// None of its interfaces is a veth with a peer in the host namespace
    /// (e.g. macvlan, or interfaces not set up yet). Its addresses still get
    /// its identity, so other endpoints' policies recognise it.
    NoHostVeth,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::HostNetwork => "host network",
            Reason::NoHostVeth => "no host-side veth",
        })
    }
}

/// An endpoint that is not enforceable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unenforced {
    /// `name (runtime:id)`.
    pub endpoint: String,
    /// The identity it would have.
    pub identity: Identity,
    pub reason: Reason,
}

/// An endpoint with an endpoint entry (for `explain` and status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `name (runtime:id)`.
    pub endpoint: String,
    pub identity: Identity,
    /// `datapath::mode` value.
    pub mode: u8,
    /// Host veths: (ifindex, name).
    pub veths: Vec<(u32, String)>,
    /// Addresses that got an IP entry.
    pub addrs: Vec<IpAddr>,
    /// Each of `addrs` that an interface with one of `veths` carries, with
    /// that veth's ifindex: the owner the datapath checks the address
    /// against (`PORIN_UPEP4_V1`/`PORIN_UPEP6_V1`, `porin_common::spoof`).
    pub addr_veths: Vec<(IpAddr, u32)>,
    /// Each of `veths` that is enslaved to a bridge: (veth, bridge
    /// ifindex), for `PORIN_VBR_V1`.
    pub bridges: Vec<(u32, u32)>,
}

/// Something the compiler decided that the user should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Several groups select one endpoint; the first one won.
    Overlap(Overlap),
    /// Two identities claim one map key (an address or a host veth); the
    /// kept one wins: the host, then groups in file order, then unmanaged.
    Conflict {
        what: String,
        kept: String,
        dropped: String,
    },
    /// The same CIDR is in two networks; the earlier network keeps it.
    NetworkConflict {
        cidr: Cidr,
        kept: String,
        dropped: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Overlap(o) => write!(
                f,
                "{} is selected by groups {}; it belongs to `{}` (the first in the file)",
                o.endpoint,
                o.groups
                    .iter()
                    .map(|g| format!("`{g}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                o.groups[0],
            ),
            Warning::Conflict {
                what,
                kept,
                dropped,
            } => write!(
                f,
                "{what} is claimed by {kept} and {dropped}; {kept} keeps it"
            ),
            Warning::NetworkConflict {
                cidr,
                kept,
                dropped,
            } => write!(
                f,
                "{cidr} is in networks `{kept}` and `{dropped}`; `{kept}` (the first in \
                 the file) keeps it"
            ),
        }
    }
}

/// Everything the manager writes into the maps, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compiled {
    /// `PORIN_ENDP_V1`: host veth ifindex → endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// `PORIN_IP4_V1`: endpoint and host addresses.
    pub ip4: BTreeMap<[u8; 4], Identity>,
    /// `PORIN_IP6_V1`.
    pub ip6: BTreeMap<[u8; 16], Identity>,
    /// `PORIN_NET4_V1`: named networks.
    pub net4: BTreeMap<Prefix4, Identity>,
    /// `PORIN_NET6_V1`.
    pub net6: BTreeMap<Prefix6, Identity>,
    /// `PORIN_POL_V1`, all with generation 0: the manager sets the
    /// generation it writes. Only allow entries (absence is deny).
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Policy entries that carry HTTP rules, sorted.
    pub http: Vec<HttpTarget>,
    /// The L7 maps: rule sets of `ALLOW_HTTP` entries and their rules.
    pub http_maps: super::http::HttpMaps,
    /// Endpoints with an endpoint entry, sorted by endpoint key.
    pub members: Vec<Member>,
    /// Endpoints without one, sorted by endpoint key.
    pub unenforced: Vec<Unenforced>,
    pub warnings: Vec<Warning>,
    /// People's names of every identity that appears: `group web`, `world`.
    pub names: BTreeMap<Identity, String>,
    /// Policy names by 1-based rule index (`rules[0]` is rule 1).
    pub rules: Vec<String>,
}

/// Entry counts, for logs and `porin status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub endpoints: usize,
    pub ip4: usize,
    pub ip6: usize,
    pub net4: usize,
    pub net6: usize,
    pub policy: usize,
    pub http: usize,
    pub unenforced: usize,
    pub warnings: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} endpoint entries, {} addresses ({} IPv4, {} IPv6), {} network prefixes, \
             {} of {} policy entries, {} HTTP targets, {} not enforceable, {} warnings",
            self.endpoints,
            self.ip4 + self.ip6,
            self.ip4,
            self.ip6,
            self.net4 + self.net6,
            self.policy,
            super::rules::POLICY_ENTRIES_PER_GENERATION,
            self.http,
            self.unenforced,
            self.warnings,
        )
    }
}

impl Compiled {
    pub fn summary(&self) -> Summary {
        Summary {
            endpoints: self.endpoints.len(),
            ip4: self.ip4.len(),
            ip6: self.ip6.len(),
            net4: self.net4.len(),
            net6: self.net6.len(),
            policy: self.policy.len(),
            http: self.http.len(),
            unenforced: self.unenforced.len(),
            warnings: self.warnings.len(),
        }
    }
}

/// What changes in one map, each list sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<K, V> {
    /// Keys only in the new output.
    pub add: Vec<(K, V)>,
    /// Keys in both whose value changed (the new value).
    pub update: Vec<(K, V)>,
    /// Keys only in the old output.
    pub remove: Vec<K>,
}

impl<K, V> Changes<K, V> {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

fn changes<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Changes<K, V> {
    let mut out = Changes {
        add: Vec::new(),
        update: Vec::new(),
        remove: Vec::new(),
    };
    for (k, v) in new {
        match old.get(k) {
            None => out.add.push((*k, *v)),
            Some(was) if was != v => out.update.push((*k, *v)),
            Some(_) => {}
        }
    }
    out.remove = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    out
}

/// Per-map changes from one output to the next. The manager applies the
/// endpoint, address and network changes in place; the policy map is
/// rewritten under the other generation, but its changes tell whether that
/// is needed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub endpoints: Changes<u32, EndpointInfo>,
    pub ip4: Changes<[u8; 4], Identity>,
    pub ip6: Changes<[u8; 16], Identity>,
    pub net4: Changes<Prefix4, Identity>,
    pub net6: Changes<Prefix6, Identity>,
    pub policy: Changes<PolicyKey, PolicyValue>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ip4.is_empty()
            && self.ip6.is_empty()
            && self.net4.is_empty()
            && self.net6.is_empty()
            && self.policy.is_empty()
    }
}

/// What to add, update and remove in each map to go from `old` to `new`.
pub fn diff(old: &Compiled, new: &Compiled) -> Diff {
    Diff {
        endpoints: changes(&old.endpoints, &new.endpoints),
        ip4: changes(&old.ip4, &new.ip4),
        ip6: changes(&old.ip6, &new.ip6),
        net4: changes(&old.net4, &new.net4),
        net6: changes(&old.net6, &new.net6),
        policy: changes(&old.policy, &new.policy),
    }
}
