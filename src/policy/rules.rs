//! Policy entries: ground rules and policies expanded into `PORIN_POL_V1`
//! keys. The semantics are tabled in [`super`]'s documentation.
//!
//! Entries depend only on the configuration, never on which endpoints
//! exist: an endpoint coming or going changes the endpoint and address maps,
//! not the policy.

use std::collections::{BTreeMap, BTreeSet};

use porin_common::datapath::{
    identity as reserved, proto, Direction, Identity, PolicyKey, PolicyValue,
};

use crate::config::{
    Config, GroundRules, Loc, Peer, PeerKind, Policy, PortRange, Protocol, UnknownWorkloads,
    Verdict,
};

use super::compiled::HttpTarget;
use super::identity::Identities;

/// Entries `PORIN_POL_V1` holds.
pub const POLICY_MAP_ENTRIES: usize = 65_536;
/// Entries one policy may compile to: during a switch the map holds the old
/// and the new generation side by side, so each gets half.
pub const POLICY_ENTRIES_PER_GENERATION: usize = POLICY_MAP_ENTRIES / 2;

/// Protocols with a port-0 ("any") entry each for "all traffic".
const ALL_PROTOCOLS: [u8; 4] = [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6];

/// `PolicyValue::rule` of ground rules and the unmanaged rule.
pub const GROUND_RULE: u32 = 0;

/// What was being compiled when the policy map overflowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Culprit {
    GroundRules,
    Policy {
        name: String,
        loc: Loc,
        /// Entries the policy alone expands to (before removing repeats).
        entries: usize,
    },
}

/// The policy map would need more than [`POLICY_ENTRIES_PER_GENERATION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overflow {
    pub capacity: usize,
    pub culprit: Culprit,
}

/// The entry just added went over capacity.
#[derive(Debug)]
struct Full;

/// Collects entries; the first rule to produce a key keeps it (ground rules
/// come first, then policies in file order), so `rule` is deterministic.
pub(super) struct Entries {
    pub(super) map: BTreeMap<PolicyKey, PolicyValue>,
    pub(super) http: Vec<HttpTarget>,
    /// Keys some rule without HTTP rules produced: never HTTP restricted.
    pub(super) plain: BTreeSet<PolicyKey>,
    capacity: usize,
}

impl Entries {
    pub(super) fn new(capacity: usize) -> Self {
        Entries {
            map: BTreeMap::new(),
            http: Vec::new(),
            plain: BTreeSet::new(),
            capacity,
        }
    }

    /// Adds an allow entry; `Err(Full)` once the map is over capacity (the
    /// caller knows what it was compiling). Stopping at once keeps memory
    /// bounded even for a configuration that would expand to millions.
    fn allow(&mut self, key: PolicyKey, rule: u32) -> Result<(), Full> {
        self.plain.insert(key);
        self.allow_http(key, rule)
    }

    /// Adds an allow entry for a rule with HTTP rules (listed in `http` by
    /// the caller).
    fn allow_http(&mut self, key: PolicyKey, rule: u32) -> Result<(), Full> {
        self.map.entry(key).or_insert(PolicyValue::allow(rule));
        if self.map.len() > self.capacity {
            Err(Full)
        } else {
            Ok(())
        }
    }

    /// Port-0 entries for every protocol: "all traffic" with `peer`.
    fn allow_all(&mut self, subject: Identity, peer: Identity, dir: Direction) -> Result<(), Full> {
        for protocol in ALL_PROTOCOLS {
            self.allow(PolicyKey::new(subject, peer, dir, protocol, 0), GROUND_RULE)?;
        }
        Ok(())
    }
}

/// Every group's ground rules, then the unmanaged rule.
pub(super) fn ground_rules(
    cfg: &Config,
    ids: &Identities,
    out: &mut Entries,
) -> Result<(), Overflow> {
    let capacity = out.capacity;
    let overflow = |Full| Overflow {
        capacity,
        culprit: Culprit::GroundRules,
    };
    let groups: Vec<(&GroundRules, Identity)> = cfg
        .groups
        .iter()
        .filter_map(|g| Some((&g.ground_rules, ids.group(&g.name)?)))
        .collect();
    let all: Vec<Identity> = groups.iter().map(|(_, id)| *id).collect();
    for &(rules, gid) in &groups {
        group_ground_rules(rules, gid, &all, out).map_err(overflow)?;
    }
    if cfg.enforcement.unknown_workloads == UnknownWorkloads::Allow {
        out.allow_all(reserved::UNMANAGED, reserved::ANY, Direction::Egress)
            .map_err(overflow)?;
        out.allow_all(reserved::UNMANAGED, reserved::ANY, Direction::Ingress)
            .map_err(overflow)?;
    }
    Ok(())
}

fn group_ground_rules(
    rules: &GroundRules,
    gid: Identity,
    groups: &[Identity],
    out: &mut Entries,
) -> Result<(), Full> {
    let allow = |v: Verdict| v == Verdict::Allow;
    if allow(rules.same_group) {
        out.allow_all(gid, gid, Direction::Egress)?;
        out.allow_all(gid, gid, Direction::Ingress)?;
    }
    if allow(rules.cross_group) {
        for &other in groups.iter().filter(|&&h| h != gid) {
            out.allow_all(gid, other, Direction::Egress)?;
            out.allow_all(gid, other, Direction::Ingress)?;
        }
    }
    if allow(rules.internet_egress) {
        out.allow_all(gid, reserved::WORLD, Direction::Egress)?;
    }
    if allow(rules.host_ingress) {
        out.allow_all(gid, reserved::HOST, Direction::Ingress)?;
    }
    if allow(rules.host_egress) {
        out.allow_all(gid, reserved::HOST, Direction::Egress)?;
    }
    Ok(())
}

/// The protocols a policy's `protocol` stands for. `icmp` is both ICMP and
/// ICMPv6: the file has one word for "ping and friends" in both families.
fn protocols(p: Protocol) -> &'static [u8] {
    match p {
        Protocol::Tcp => &[proto::TCP],
        Protocol::Udp => &[proto::UDP],
        Protocol::Icmp => &[proto::ICMP, proto::ICMPV6],
        Protocol::Any => &ALL_PROTOCOLS,
    }
}

/// Destination ports as key values: `[0]` (any) without ranges or when the
/// ranges cover 1-65535 together (they never overlap: validation).
pub(super) fn ports(ranges: &[PortRange]) -> Vec<u16> {
    let covered: u32 = ranges
        .iter()
        .map(|r| u32::from(r.last) - u32::from(r.first) + 1)
        .sum();
    if ranges.is_empty() || covered >= 65_535 {
        return vec![0];
    }
    ranges.iter().flat_map(|r| r.first..=r.last).collect()
}

/// Every policy, in file order; rule = 1-based index.
pub(super) fn policies(cfg: &Config, ids: &Identities, out: &mut Entries) -> Result<(), Overflow> {
    let capacity = out.capacity;
    for (i, policy) in cfg.policies.iter().enumerate() {
        let rule = u32::try_from(i + 1).unwrap_or(u32::MAX);
        compile_policy(policy, rule, ids, out).map_err(|Full| Overflow {
            capacity,
            culprit: Culprit::Policy {
                name: policy.name.clone(),
                loc: policy.loc,
                entries: expansion(policy),
            },
        })?;
    }
    out.http.sort();
    out.http.dedup();
    Ok(())
}

/// Entries a policy expands to, repeats included (for the overflow message).
pub(super) fn expansion(p: &Policy) -> usize {
    let groups = |peers: &[Peer]| peers.iter().filter(|x| x.kind == PeerKind::Group).count();
    let pairs = groups(&p.to) * p.from.len() + groups(&p.from) * p.to.len();
    pairs * protocols(p.protocol).len() * ports(&p.ports).len()
}

fn compile_policy(p: &Policy, rule: u32, ids: &Identities, out: &mut Entries) -> Result<(), Full> {
    // Unresolvable peers cannot occur in a validated configuration;
    // `compile` checks them before this runs.
    let resolve = |peers: &[Peer]| -> Vec<(Identity, bool)> {
        peers
            .iter()
            .filter_map(|x| ids.peer(x).map(|id| (id, x.kind == PeerKind::Group)))
            .collect()
    };
    let from = resolve(&p.from);
    let to = resolve(&p.to);
    let ports = ports(&p.ports);
    let mut emit = |subject: Identity, peer: Identity, dir: Direction| -> Result<(), Full> {
        for &protocol in protocols(p.protocol) {
            let icmp = protocol == proto::ICMP || protocol == proto::ICMPV6;
            // ICMP has no ports: its entries are always port 0.
            let key_ports: &[u16] = if icmp { &[0] } else { &ports };
            for &port in key_ports {
                let k = PolicyKey::new(subject, peer, dir, protocol, port);
                if (!p.http.is_empty() || p.mqtt.is_some()) && protocol == proto::TCP {
                    out.allow_http(k, rule)?;
                    out.http.push(HttpTarget { key: k, rule });
                } else {
                    out.allow(k, rule)?;
                }
            }
        }
        Ok(())
    };
    // The receiving group admits each sender ...
    for &(b, _) in to.iter().filter(|(_, group)| *group) {
        for &(a, _) in &from {
            emit(b, a, Direction::Ingress)?;
        }
    }
    // ... and each sending group may send to each receiver.
    for &(a, _) in from.iter().filter(|(_, group)| *group) {
        for &(b, _) in &to {
            emit(a, b, Direction::Egress)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn port_expansion() {
        let table: Vec<(Vec<PortRange>, Vec<u16>)> = vec![
            (vec![], vec![0]),
            (vec![r(443, 443)], vec![443]),
            (vec![r(9187, 9188), r(9100, 9100)], vec![9187, 9188, 9100]),
            (vec![r(1, 65535)], vec![0]),
            (vec![r(1, 1000), r(1001, 65535)], vec![0]),
            (vec![r(2, 65535)], (2..=65535).collect()),
        ];
        for (ranges, want) in table {
            assert_eq!(ports(&ranges), want, "{ranges:?}");
        }
    }

    #[test]
    fn icmp_means_both_families_and_any_means_four_protocols() {
        assert_eq!(protocols(Protocol::Icmp), [proto::ICMP, proto::ICMPV6]);
        assert_eq!(
            protocols(Protocol::Any),
            [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6]
        );
    }
}
