//! Numeric identities of groups and networks, derived from their names.
//!
//! Every node must give a group the same number, before and after a restart,
//! without asking anyone: policy entries, flow records and (later) other
//! nodes refer to it. So the number is a pure function of the name:
//!
//! ```text
//! group   identity = GROUP_BASE   + (FNV-1a-32("group:"   + name) & 0xFF_FFFF)
//! network identity = NETWORK_BASE + (FNV-1a-32("network:" + name) & 0xFF_FFFF)
//! ```
//!
//! The reserved identities (`ANY`, `HOST`, `WORLD`, `UNMANAGED`) and the two
//! derived ranges are listed in [`porin_common::datapath::identity`]; derived
//! values never fall below `GROUP_BASE`, so they cannot meet a reserved one.
//!
//! 24 bits leave room for collisions: with n names the chance is about
//! n² / 2²⁵ (100 groups: 0.03 %). A collision would silently merge two
//! groups' policies, so [`Identities::derive`] refuses the configuration and
//! names both items; renaming either one resolves it. The hash must never
//! change: identities of a running datapath (and the pinned golden values in
//! the tests) depend on it.

use std::collections::BTreeMap;
use std::fmt;

use porin_common::datapath::{identity as reserved, Identity};

use crate::config::{Config, Loc, Peer, PeerKind};

/// FNV-1a, 32 bits. Written out (it is tiny) so the value can never change
/// with a dependency's version.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(PRIME)
    })
}

/// What a derived identity names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Group,
    Network,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Group => "group",
            Kind::Network => "network",
        }
    }

    fn base(self) -> Identity {
        match self {
            Kind::Group => reserved::GROUP_BASE,
            Kind::Network => reserved::NETWORK_BASE,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of the item `kind` named `name`.
pub fn derive_one(kind: Kind, name: &str) -> Identity {
    // The kind prefix makes the hash input say what it is for; the ranges
    // already keep groups and networks apart.
    let hash = fnv1a32(format!("{}:{name}", kind.as_str()).as_bytes());
    kind.base() + (hash & reserved::DERIVED_MASK)
}

/// The identity of group `name`.
pub fn group_identity(name: &str) -> Identity {
    derive_one(Kind::Group, name)
}

/// The identity of network `name`.
pub fn network_identity(name: &str) -> Identity {
    derive_one(Kind::Network, name)
}

/// A group or network as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: Kind,
    pub name: String,
    pub loc: Loc,
}

/// Two items whose names derive the same identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub identity: Identity,
    /// Earlier in the file.
    pub first: Item,
    pub second: Item,
}

/// Every collision in a configuration (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollisionError {
    /// The configuration file's name, for the message; may be empty.
    pub file: String,
    pub collisions: Vec<Collision>,
}

impl CollisionError {
    /// `FILE:LINE:COL`, or `LINE:COL` without a file name.
    fn at(&self, loc: Loc) -> String {
        if self.file.is_empty() {
            loc.to_string()
        } else {
            format!("{}:{loc}", self.file)
        }
    }
}

impl fmt::Display for CollisionError {
    /// One line per collision, positioned like configuration errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.collisions.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "{}: {} `{}` derives identity {:#010x}, the same as {} `{}` at {}; \
                 rename one of them",
                self.at(c.second.loc),
                c.second.kind,
                c.second.name,
                c.identity,
                c.first.kind,
                c.first.name,
                self.at(c.first.loc),
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for CollisionError {}

/// The identities of a configuration's groups and networks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identities {
    groups: BTreeMap<String, Identity>,
    networks: BTreeMap<String, Identity>,
    /// The reverse of both maps.
    names: BTreeMap<Identity, Item>,
}

impl Identities {
    /// Derives every group's and network's identity; fails when two collide.
    /// `file` is only used in the message.
    pub fn derive(cfg: &Config, file: &str) -> Result<Identities, CollisionError> {
        Self::derive_with(cfg, file, derive_one)
    }

    /// [`Self::derive`] with the hash replaced, so tests can force collisions.
    fn derive_with(
        cfg: &Config,
        file: &str,
        derive: impl Fn(Kind, &str) -> Identity,
    ) -> Result<Identities, CollisionError> {
        // In file order, so the earlier item keeps the identity and the
        // later one is the one reported.
        let mut items: Vec<Item> = cfg
            .groups
            .iter()
            .map(|g| (Kind::Group, &g.name, g.loc))
            .chain(cfg.networks.iter().map(|n| (Kind::Network, &n.name, n.loc)))
            .map(|(kind, name, loc)| Item {
                kind,
                name: name.clone(),
                loc,
            })
            .collect();
        items.sort_by_key(|item| item.loc);
        let mut ids = Identities::default();
        let mut collisions = Vec::new();
        for item in items {
            let identity = derive(item.kind, &item.name);
            if let Some(first) = ids.names.get(&identity) {
                collisions.push(Collision {
                    identity,
                    first: first.clone(),
                    second: item,
                });
                continue;
            }
            let map = match item.kind {
                Kind::Group => &mut ids.groups,
                Kind::Network => &mut ids.networks,
            };
            map.insert(item.name.clone(), identity);
            ids.names.insert(identity, item);
        }
        if collisions.is_empty() {
            Ok(ids)
        } else {
            Err(CollisionError {
                file: file.to_owned(),
                collisions,
            })
        }
    }

    pub fn group(&self, name: &str) -> Option<Identity> {
        self.groups.get(name).copied()
    }

    pub fn network(&self, name: &str) -> Option<Identity> {
        self.networks.get(name).copied()
    }

    /// The identity of a policy peer; `None` only for a name the
    /// configuration does not define (validation rules that out).
    pub fn peer(&self, peer: &Peer) -> Option<Identity> {
        match peer.kind {
            PeerKind::Group => self.group(&peer.name),
            PeerKind::Network => self.network(&peer.name),
            PeerKind::World => Some(reserved::WORLD),
            PeerKind::Host => Some(reserved::HOST),
        }
    }

    /// Every group identity, by name.
    pub fn groups(&self) -> impl Iterator<Item = (&str, Identity)> + '_ {
        self.groups.iter().map(|(n, id)| (n.as_str(), *id))
    }

    /// A name for people: `group web`, `network lan`, `world`, ...
    pub fn describe(&self, identity: Identity) -> String {
        match identity {
            reserved::ANY => return "any".into(),
            reserved::HOST => return "host".into(),
            reserved::WORLD => return "world".into(),
            reserved::UNMANAGED => return "unmanaged".into(),
            reserved::SPLIT_NETNS => return "held (split network namespaces)".into(),
            _ => {}
        }
        match self.names.get(&identity) {
            Some(item) => format!("{} {}", item.kind, item.name),
            None => format!("identity {identity:#010x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    /// Pinned once: a change here changes every identity in every running
    /// datapath and every stored flow record.
    #[test]
    fn golden_identities() {
        let table = [
            (Kind::Group, "sensor", 0x01c3_e6e4),
            (Kind::Group, "web", 0x0106_ad94),
            (Kind::Group, "db", 0x0131_a650),
            (Kind::Network, "lan", 0x0244_ed48),
            (Kind::Network, "monitoring", 0x0208_2abf),
            (Kind::Network, "blocklist", 0x020a_21e6),
        ];
        for (kind, name, want) in table {
            assert_eq!(derive_one(kind, name), want, "{kind} {name}");
        }
        assert_eq!(group_identity("web"), 0x0106_ad94);
        assert_eq!(network_identity("lan"), 0x0244_ed48);
    }

    #[test]
    fn derived_identities_stay_in_their_ranges() {
        for i in 0..5000 {
            let name = format!("n{i}");
            let g = group_identity(&name);
            let n = network_identity(&name);
            assert!((reserved::GROUP_BASE..=0x01FF_FFFF).contains(&g), "{g:#x}");
            assert!(
                (reserved::NETWORK_BASE..=0x02FF_FFFF).contains(&n),
                "{n:#x}"
            );
        }
    }

    const TWO_GROUPS: &str = "\
version: 1
networks:
  - name: lan
    cidrs: [192.168.1.0/24]
groups:
  - name: g809
    select: {name: a}
  - name: g45280
    select: {name: b}
";

    #[test]
    fn real_collision_is_refused_naming_both_groups_and_lines() {
        // Found by brute force over g0, g1, ...: the first pair whose hashes
        // agree in the low 24 bits.
        assert_eq!(group_identity("g809"), group_identity("g45280"));
        let cfg = parse(TWO_GROUPS, "test.yaml").unwrap();
        let err = Identities::derive(&cfg, "porin.yaml").unwrap_err();
        assert_eq!(err.collisions.len(), 1);
        let c = &err.collisions[0];
        assert_eq!((c.first.name.as_str(), c.first.loc.line), ("g809", 6));
        assert_eq!((c.second.name.as_str(), c.second.loc.line), ("g45280", 8));
        assert_eq!(
            err.to_string(),
            format!(
                "porin.yaml:8:5: group `g45280` derives identity {:#010x}, the same as \
                 group `g809` at porin.yaml:6:5; rename one of them",
                group_identity("g809")
            )
        );
    }

    #[test]
    fn injected_collision_between_a_group_and_a_network() {
        let cfg = parse(TWO_GROUPS, "test.yaml").unwrap();
        // Everything hashes to one value: both groups collide with `lan`,
        // the first item in the file.
        let err = Identities::derive_with(&cfg, "", |_, _| 0x0100_0001).unwrap_err();
        assert_eq!(err.collisions.len(), 2);
        assert_eq!(err.collisions[0].first.name, "lan");
        assert_eq!(err.collisions[0].second.name, "g809");
        assert!(err.to_string().starts_with("6:5: group `g809`"), "{err}");
        assert!(err.to_string().contains("network `lan` at 3:5"), "{err}");
        assert_eq!(err.collisions[1].first.name, "lan");
        assert_eq!(err.collisions[1].second.name, "g45280");
    }

    #[test]
    fn no_collision_resolves_every_peer_kind() {
        let cfg = parse(crate::policy::tests::IOT, "iot.yaml").unwrap();
        let ids = Identities::derive(&cfg, "iot.yaml").unwrap();
        let peer = |kind, name: &str| Peer {
            kind,
            name: name.into(),
            loc: Loc::default(),
        };
        assert_eq!(ids.peer(&peer(PeerKind::Group, "web")), Some(0x0106_ad94));
        assert_eq!(ids.peer(&peer(PeerKind::Network, "lan")), Some(0x0244_ed48));
        assert_eq!(
            ids.peer(&peer(PeerKind::World, "world")),
            Some(reserved::WORLD)
        );
        assert_eq!(
            ids.peer(&peer(PeerKind::Host, "host")),
            Some(reserved::HOST)
        );
        assert_eq!(ids.peer(&peer(PeerKind::Group, "nope")), None);
        assert_eq!(ids.describe(0x0106_ad94), "group web");
        assert_eq!(ids.describe(0x0244_ed48), "network lan");
        assert_eq!(ids.describe(reserved::UNMANAGED), "unmanaged");
    }
}
