//! Compiler tests: one table per semantic of the module documentation, plus
//! the shipped example, capacity, determinism and diff. Also the endpoint
//! builder the other policy tests use.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use porin_common::datapath::{action, identity as reserved, mode, proto, Identity};

use super::compile::compile_small;
use super::http::ANY_KEY;
use super::identity::{group_identity, network_identity};
use super::*;
use crate::config::{parse, Config};
use crate::discovery::endpoint::{Endpoint, EndpointKey};
use crate::discovery::netinfo::{HostPeer, Interface, IpPrefix};
use crate::discovery::Runtime;

pub(crate) const IOT: &str = include_str!("../../configs/iot-gateway.yaml");

/// A hand-made endpoint, built up field by field.
pub(crate) struct EndpointSpec {
    name: String,
    id: String,
    runtime: Runtime,
    image: String,
    labels: BTreeMap<String, String>,
    host_network: bool,
    /// (host veth ifindex, or None for an interface without one; addresses)
    interfaces: Vec<(Option<u32>, Vec<IpAddr>)>,
}

impl EndpointSpec {
    pub(crate) fn new(name: &str) -> Self {
        EndpointSpec {
            name: name.into(),
            id: name.into(),
            runtime: Runtime::Podman,
            image: "localhost/app:1".into(),
            labels: BTreeMap::new(),
            host_network: false,
            interfaces: Vec::new(),
        }
    }
    pub(crate) fn id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }
    pub(crate) fn image(mut self, image: &str) -> Self {
        self.image = image.into();
        self
    }
    pub(crate) fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    pub(crate) fn runtime(mut self, r: Runtime) -> Self {
        self.runtime = r;
        self
    }
    pub(crate) fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }
    /// An interface whose veth peer in the host has `ifindex`.
    pub(crate) fn veth(mut self, ifindex: u32, addrs: &[&str]) -> Self {
        self.interfaces.push((Some(ifindex), parse_addrs(addrs)));
        self
    }
    /// An interface without a host-side veth (macvlan, ...).
    pub(crate) fn other_iface(mut self, addrs: &[&str]) -> Self {
        self.interfaces.push((None, parse_addrs(addrs)));
        self
    }
}

fn parse_addrs(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

pub(crate) fn endpoint(spec: EndpointSpec) -> Endpoint {
    let interfaces = spec
        .interfaces
        .into_iter()
        .enumerate()
        .map(|(i, (peer, addrs))| Interface {
            name: format!("eth{i}"),
            ifindex: 2 + i as u32,
            mac: None,
            addrs: addrs
                .into_iter()
                .map(|addr| IpPrefix {
                    addr,
                    prefix_len: if addr.is_ipv4() { 16 } else { 64 },
                })
                .collect(),
            unrouted: Vec::new(),
            host_peer: peer.map(|ifindex| HostPeer {
                ifindex,
                name: format!("veth{ifindex}"),
                master: None,
            }),
        })
        .collect();
    Endpoint {
        key: EndpointKey {
            runtime: spec.runtime,
            namespace: String::new(),
            id: spec.id,
        },
        name: spec.name,
        image: spec.image,
        labels: spec.labels,
        annotations: BTreeMap::new(),
        cgroup: String::new(),
        pids: vec![1],
        netns_inode: 1,
        host_network: spec.host_network,
        interfaces,
        labels_from: String::new(),
        netns_from: String::new(),
        foreign_netns: Vec::new(),
    }
}

fn cfg(yaml: &str) -> Config {
    match parse(yaml, "test.yaml") {
        Ok(c) => c,
        Err(e) => panic!("bad test configuration:\n{e}\n{yaml}"),
    }
}

fn ok(cfg: &Config, endpoints: &[Endpoint]) -> Compiled {
    match compile(cfg, endpoints, &[], &ANY_KEY) {
        Ok(c) => c,
        Err(e) => panic!("compile failed: {e}"),
    }
}

const E: char = 'E';
const I: char = 'I';

/// An entry as (subject, direction E/I, peer, protocol, port, rule).
type Entry = (Identity, char, Identity, u8, u16, u32);

fn entries(c: &Compiled) -> BTreeSet<Entry> {
    c.policy
        .iter()
        .map(|(k, v)| {
            assert_eq!(k.generation, 0, "the manager sets the generation");
            assert!(
                v.action == action::ALLOW || v.action == action::ALLOW_HTTP,
                "{v:?}"
            );
            let dir = if k.direction == 0 { E } else { I };
            (k.subject, dir, k.peer, k.protocol, k.port, v.rule)
        })
        .collect()
}

/// The four port-0 entries of "all traffic".
fn all(subject: Identity, dir: char, peer: Identity, rule: u32) -> Vec<Entry> {
    [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6]
        .into_iter()
        .map(|p| (subject, dir, peer, p, 0, rule))
        .collect()
}

fn set(parts: Vec<Vec<Entry>>) -> BTreeSet<Entry> {
    parts.into_iter().flatten().collect()
}

/// Two groups `a` and `b` (selecting names `a*`/`b*`), a network `lan`, all
/// ground rules deny unless `extra` (appended) says otherwise.
fn two_groups(extra: &str) -> Config {
    cfg(&format!(
        "\
version: 1
enforcement: {{mode: enforce, unknown_workloads: quarantine}}
networks:
  - name: lan
    cidrs: [192.168.1.0/24]
groups:
  - name: a
    select: {{name: \"a*\"}}
  - name: b
    select: {{name: \"b*\"}}
ground_rules:
  internet_egress: deny
  same_group: deny
  cross_group: deny
  host_ingress: deny
  host_egress: deny
{extra}"
    ))
}

fn a() -> Identity {
    group_identity("a")
}
fn b() -> Identity {
    group_identity("b")
}
fn lan() -> Identity {
    network_identity("lan")
}

#[test]
fn policy_semantics() {
    use reserved::{HOST, WORLD};
    let table: Vec<(&str, &str, Vec<Vec<Entry>>)> = vec![
        (
            "group to group: the sender's egress and the receiver's ingress",
            "policies: [{name: p, from: [a], to: [b], ports: [80]}]",
            vec![vec![
                (a(), E, b(), proto::TCP, 80, 1),
                (b(), I, a(), proto::TCP, 80, 1),
            ]],
        ),
        (
            "network to group: ingress only (a network is never a subject)",
            "policies: [{name: p, from: [lan], to: [a], protocol: udp, ports: [53]}]",
            vec![vec![(a(), I, lan(), proto::UDP, 53, 1)]],
        ),
        (
            "group to world and host: egress only",
            "policies: [{name: p, from: [a], to: [world, host], ports: [443]}]",
            vec![vec![
                (a(), E, WORLD, proto::TCP, 443, 1),
                (a(), E, HOST, proto::TCP, 443, 1),
            ]],
        ),
        (
            "world and host to a group",
            "policies: [{name: p, from: [world, host], to: [b], ports: [22]}]",
            vec![vec![
                (b(), I, WORLD, proto::TCP, 22, 1),
                (b(), I, HOST, proto::TCP, 22, 1),
            ]],
        ),
        (
            "no ports: port 0",
            "policies: [{name: p, from: [a], to: [b]}]",
            vec![vec![
                (a(), E, b(), proto::TCP, 0, 1),
                (b(), I, a(), proto::TCP, 0, 1),
            ]],
        ),
        (
            "a range expands per port",
            "policies: [{name: p, from: [lan], to: [a], ports: [\"8000-8002\", 9000]}]",
            vec![vec![
                (a(), I, lan(), proto::TCP, 8000, 1),
                (a(), I, lan(), proto::TCP, 8001, 1),
                (a(), I, lan(), proto::TCP, 8002, 1),
                (a(), I, lan(), proto::TCP, 9000, 1),
            ]],
        ),
        (
            "1-65535 is port 0",
            "policies: [{name: p, from: [lan], to: [a], protocol: udp, ports: [\"1-65535\"]}]",
            vec![vec![(a(), I, lan(), proto::UDP, 0, 1)]],
        ),
        (
            "icmp: ICMP and ICMPv6, port 0",
            "policies: [{name: p, from: [lan], to: [a], protocol: icmp}]",
            vec![vec![
                (a(), I, lan(), proto::ICMP, 0, 1),
                (a(), I, lan(), proto::ICMPV6, 0, 1),
            ]],
        ),
        (
            "any: four protocols, port 0",
            "policies: [{name: p, from: [lan], to: [a], protocol: any}]",
            vec![all(a(), I, lan(), 1)],
        ),
        (
            "several peers on both sides",
            "policies: [{name: p, from: [a, lan], to: [b, world], protocol: udp, ports: [5]}]",
            vec![vec![
                (b(), I, a(), proto::UDP, 5, 1),
                (b(), I, lan(), proto::UDP, 5, 1),
                (a(), E, b(), proto::UDP, 5, 1),
                (a(), E, WORLD, proto::UDP, 5, 1),
            ]],
        ),
        (
            "a group to itself",
            "policies: [{name: p, from: [a], to: [a], ports: [7]}]",
            vec![vec![
                (a(), E, a(), proto::TCP, 7, 1),
                (a(), I, a(), proto::TCP, 7, 1),
            ]],
        ),
        (
            "rule is the 1-based policy index; a repeated key keeps the first",
            "policies:
  - {name: p1, from: [lan], to: [a], ports: [1]}
  - {name: p2, from: [lan], to: [a], ports: [1, 2]}",
            vec![vec![
                (a(), I, lan(), proto::TCP, 1, 1),
                (a(), I, lan(), proto::TCP, 2, 2),
            ]],
        ),
    ];
    for (what, yaml, want) in table {
        let c = ok(&two_groups(yaml), &[]);
        assert_eq!(entries(&c), set(want), "{what}");
    }
}

#[test]
fn ground_rule_semantics() {
    use reserved::{HOST, WORLD};
    let table: Vec<(&str, &str, Vec<Vec<Entry>>)> = vec![
        ("all deny: nothing", "", vec![]),
        (
            "same_group",
            "groups:\n  - {name: a, select: {name: \"a*\"}, ground_rules: {same_group: allow}}\n  \
             - {name: b, select: {name: \"b*\"}}",
            vec![all(a(), E, a(), 0), all(a(), I, a(), 0)],
        ),
        (
            "cross_group on both groups",
            "groups:\n  - {name: a, select: {name: \"a*\"}, ground_rules: {cross_group: allow}}\n  \
             - {name: b, select: {name: \"b*\"}, ground_rules: {cross_group: allow}}",
            vec![
                all(a(), E, b(), 0),
                all(a(), I, b(), 0),
                all(b(), E, a(), 0),
                all(b(), I, a(), 0),
            ],
        ),
        (
            "cross_group on one group: only its own side (the other still denies)",
            "groups:\n  - {name: a, select: {name: \"a*\"}, ground_rules: {cross_group: allow}}\n  \
             - {name: b, select: {name: \"b*\"}}",
            vec![all(a(), E, b(), 0), all(a(), I, b(), 0)],
        ),
        (
            "internet_egress: egress to WORLD only (not to networks)",
            "groups:\n  - {name: a, select: {name: \"a*\"}, ground_rules: {internet_egress: allow}}\n  \
             - {name: b, select: {name: \"b*\"}}",
            vec![all(a(), E, WORLD, 0)],
        ),
        (
            "host_ingress",
            "groups:\n  - {name: a, select: {name: \"a*\"}, ground_rules: {host_ingress: allow}}\n  \
             - {name: b, select: {name: \"b*\"}}",
            vec![all(a(), I, HOST, 0)],
        ),
        (
            "host_egress",
            "groups:\n  - {name: a, select: {name: \"a*\"}, ground_rules: {host_egress: allow}}\n  \
             - {name: b, select: {name: \"b*\"}}",
            vec![all(a(), E, HOST, 0)],
        ),
    ];
    for (what, groups, want) in table {
        // `two_groups` with the test's own groups.
        let base = "\
version: 1
enforcement: {mode: enforce, unknown_workloads: quarantine}
networks:
  - name: lan
    cidrs: [192.168.1.0/24]
ground_rules:
  internet_egress: deny
  same_group: deny
  cross_group: deny
  host_ingress: deny
  host_egress: deny
";
        let groups = if groups.is_empty() {
            "groups:\n  - {name: a, select: {name: \"a*\"}}\n  - {name: b, select: {name: \"b*\"}}"
        } else {
            groups
        };
        let c = ok(&cfg(&format!("{base}{groups}\n")), &[]);
        assert_eq!(entries(&c), set(want), "{what}");
    }
}

#[test]
fn top_level_ground_rules_apply_to_every_group_and_cross_group_is_quadratic() {
    let c = ok(
        &cfg("\
version: 1
enforcement: {unknown_workloads: quarantine}
groups:
  - {name: a, select: {name: \"a*\"}}
  - {name: b, select: {name: \"b*\"}}
  - {name: c, select: {name: \"c*\"}}
ground_rules: {same_group: deny, cross_group: allow, host_ingress: deny}
"),
        &[],
    );
    // 8 entries per ordered pair: 3 groups, 6 pairs.
    assert_eq!(c.policy.len(), 8 * 3 * 2);
    assert!(
        entries(&c).iter().all(|e| e.0 != e.2),
        "no same-group entries"
    );
}

#[test]
fn unknown_workloads() {
    let allow = ok(
        &cfg("version: 1\nenforcement: {unknown_workloads: allow}\n"),
        &[],
    );
    assert_eq!(
        entries(&allow),
        set(vec![
            all(reserved::UNMANAGED, E, reserved::ANY, 0),
            all(reserved::UNMANAGED, I, reserved::ANY, 0),
        ])
    );
    let quarantine = ok(
        &cfg("version: 1\nenforcement: {unknown_workloads: quarantine}\n"),
        &[],
    );
    assert!(quarantine.policy.is_empty());
}

#[test]
fn modes_per_group_and_global_mode_for_unmanaged() {
    let c = ok(
        &cfg("\
version: 1
enforcement: {mode: enforce}
groups:
  - {name: a, select: {name: \"a*\"}, mode: audit}
  - {name: b, select: {name: \"b*\"}}
"),
        &[
            endpoint(EndpointSpec::new("a1").veth(10, &["10.88.0.10"])),
            endpoint(EndpointSpec::new("b1").veth(11, &["10.88.0.11"])),
            endpoint(EndpointSpec::new("x1").veth(12, &["10.88.0.12"])),
        ],
    );
    let info = |i: u32| (c.endpoints[&i].identity, c.endpoints[&i].mode);
    assert_eq!(info(10), (a(), mode::AUDIT));
    assert_eq!(info(11), (b(), mode::ENFORCE));
    assert_eq!(info(12), (reserved::UNMANAGED, mode::ENFORCE));

    let audit = ok(
        &cfg("version: 1\nenforcement: {mode: audit}\n"),
        &[endpoint(EndpointSpec::new("x1").veth(12, &["10.88.0.12"]))],
    );
    assert_eq!(audit.endpoints[&12].mode, mode::AUDIT);
}

/// A container with a thread in a network namespace of its own is held to
/// the strictest verdict: an identity no entry names, whatever its labels
/// and whatever `unknown_workloads` says, in its group's mode; its
/// addresses carry that identity too, so peers' rules do not apply to it.
#[test]
fn a_container_split_over_network_namespaces_gets_no_rule() {
    let yaml = "\
version: 1
enforcement: {mode: enforce, unknown_workloads: allow}
groups:
  - {name: a, select: {name: \"a*\"}, mode: audit}
  - {name: b, select: {name: \"b*\"}}
ground_rules: {same_group: allow, cross_group: allow, host_ingress: allow}
";
    let mut a2 = endpoint(EndpointSpec::new("a2").veth(13, &["10.88.0.13"]));
    a2.foreign_netns = vec![4321];
    let mut b2 = endpoint(EndpointSpec::new("b2").veth(14, &["10.88.0.14"]));
    b2.foreign_netns = vec![99];
    let mut x2 = endpoint(EndpointSpec::new("x2").veth(15, &["10.88.0.15"]));
    x2.foreign_netns = vec![7];
    let c = ok(
        &cfg(yaml),
        &[
            endpoint(EndpointSpec::new("a1").veth(10, &["10.88.0.10"])),
            a2,
            b2,
            x2,
        ],
    );
    let info = |i: u32| (c.endpoints[&i].identity, c.endpoints[&i].mode);
    assert_eq!(info(10), (a(), mode::AUDIT));
    assert_eq!(info(13), (reserved::SPLIT_NETNS, mode::AUDIT));
    assert_eq!(info(14), (reserved::SPLIT_NETNS, mode::ENFORCE));
    assert_eq!(info(15), (reserved::SPLIT_NETNS, mode::ENFORCE));
    assert_eq!(c.ip4[&[10, 88, 0, 14]], reserved::SPLIT_NETNS);
    for e in entries(&c) {
        assert!(
            e.0 != reserved::SPLIT_NETNS && e.2 != reserved::SPLIT_NETNS,
            "no entry names the split identity: {e:?}"
        );
    }
}

#[test]
fn address_entries() {
    let c = compile(
        &two_groups(""),
        &[
            endpoint(
                EndpointSpec::new("a1")
                    .veth(10, &["10.88.0.10", "fd00::10", "fe80::10", "169.254.3.3"])
                    .veth(20, &["10.89.0.10"]),
            ),
            endpoint(EndpointSpec::new("b1").veth(11, &["10.88.0.11"])),
            endpoint(EndpointSpec::new("x1").veth(12, &["10.88.0.12"])),
            endpoint(EndpointSpec::new("b-host").host_network()),
            endpoint(EndpointSpec::new("b-macvlan").other_iface(&["192.168.7.5"])),
        ],
        &[
            "10.88.0.1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            "fe80::1".parse().unwrap(),
        ],
        &ANY_KEY,
    )
    .unwrap();
    let v4 = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let want4: BTreeMap<[u8; 4], Identity> = [
        (v4("10.88.0.1"), reserved::HOST),
        (v4("10.88.0.10"), a()),
        (v4("10.89.0.10"), a()),
        (v4("10.88.0.11"), b()),
        (v4("10.88.0.12"), reserved::UNMANAGED),
        // No veth, but peers still recognise it.
        (v4("192.168.7.5"), b()),
    ]
    .into();
    assert_eq!(c.ip4, want4, "link-local 169.254/16 skipped");
    let want6: BTreeMap<[u8; 16], Identity> =
        [(v6("fd00::1"), reserved::HOST), (v6("fd00::10"), a())].into();
    assert_eq!(
        c.ip6, want6,
        "fe80::/10 skipped, for endpoints and the host"
    );

    let endpoints: Vec<(u32, Identity)> =
        c.endpoints.iter().map(|(i, e)| (*i, e.identity)).collect();
    assert_eq!(
        endpoints,
        [(10, a()), (11, b()), (12, reserved::UNMANAGED), (20, a())],
        "one entry per host veth; none for host-network or veth-less endpoints"
    );
    // The owners anti-spoofing checks addresses against: each address under
    // the veth of the interface that carries it (a1 has two), link-local
    // and veth-less addresses under none.
    let (owners4, owners6) = crate::datapath::uplink::endpoint_addresses(&c);
    let want4: BTreeMap<[u8; 4], u32> = [
        (v4("10.88.0.10"), 10),
        (v4("10.89.0.10"), 20),
        (v4("10.88.0.11"), 11),
        (v4("10.88.0.12"), 12),
    ]
    .into();
    assert_eq!(owners4, want4, "every address under its own veth");
    let want6: BTreeMap<[u8; 16], u32> = [(v6("fd00::10"), 10)].into();
    assert_eq!(owners6, want6);
    let unenforced: Vec<(String, Reason, Identity)> = c
        .unenforced
        .iter()
        .map(|u| (u.endpoint.clone(), u.reason, u.identity))
        .collect();
    assert_eq!(
        unenforced,
        [
            (
                "b-host (podman:b-host)".to_string(),
                Reason::HostNetwork,
                b()
            ),
            (
                "b-macvlan (podman:b-macvlan)".to_string(),
                Reason::NoHostVeth,
                b()
            ),
        ]
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let text = c.explain();
    assert!(
        text.contains(
            "x1 (podman:x1): unmanaged [0x00000003], enforce, veth veth12 (ifindex 12), \
             addresses 10.88.0.12\n  (no rules: all traffic denied)\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "not enforceable:\n  b-host (podman:b-host): host network (group b)\n  \
             b-macvlan (podman:b-macvlan): no host-side veth (group b)\n"
        ),
        "{text}"
    );
}

#[test]
fn address_conflicts() {
    let host: Vec<IpAddr> = vec!["10.88.0.1".parse().unwrap()];
    // (what, endpoints, identity kept for 10.88.0.1 / veth 10, warned)
    let table: Vec<(&str, Vec<EndpointSpec>, Identity, bool)> = vec![
        (
            "a container claiming the host's address: the host keeps it",
            vec![EndpointSpec::new("a1").veth(10, &["10.88.0.1"])],
            reserved::HOST,
            true,
        ),
        (
            "two groups on one address: the first group in the file keeps it",
            vec![
                EndpointSpec::new("b1").veth(11, &["10.88.0.1"]),
                EndpointSpec::new("a1").veth(10, &["10.88.0.1"]),
            ],
            reserved::HOST,
            true,
        ),
    ];
    for (what, eps, want, warned) in table {
        let eps: Vec<Endpoint> = eps.into_iter().map(endpoint).collect();
        let c = compile(&two_groups(""), &eps, &host, &ANY_KEY).unwrap();
        assert_eq!(c.ip4[&[10, 88, 0, 1]], want, "{what}");
        assert_eq!(!c.warnings.is_empty(), warned, "{what}: {:?}", c.warnings);
    }

    // A pod: the sandbox (unmanaged) and the app (group b) share the veth
    // and the address; the group wins, silently, whatever the order.
    for (sandbox_id, app_id) in [("0", "1"), ("1", "0")] {
        let eps = vec![
            endpoint(
                EndpointSpec::new("sandbox")
                    .id(sandbox_id)
                    .veth(30, &["10.88.0.30"]),
            ),
            endpoint(
                EndpointSpec::new("b-app")
                    .id(app_id)
                    .veth(30, &["10.88.0.30"]),
            ),
        ];
        let c = compile(&two_groups(""), &eps, &[], &ANY_KEY).unwrap();
        assert_eq!(c.endpoints[&30].identity, b());
        assert_eq!(c.ip4[&[10, 88, 0, 30]], b());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    // Two groups on one veth: reported, the first group keeps it.
    let eps = vec![
        endpoint(EndpointSpec::new("b1").veth(40, &["10.88.0.40"])),
        endpoint(EndpointSpec::new("a1").veth(40, &["10.88.0.40"])),
    ];
    let c = compile(&two_groups(""), &eps, &[], &ANY_KEY).unwrap();
    assert_eq!(c.endpoints[&40].identity, a());
    let text: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        text,
        [
            "host veth ifindex 40 is claimed by a1 (podman:a1) and b1 (podman:b1); \
             a1 (podman:a1) keeps it",
            "address 10.88.0.40 is claimed by a1 (podman:a1) and b1 (podman:b1); \
             a1 (podman:a1) keeps it",
        ]
    );
}

#[test]
fn network_prefixes() {
    let c = ok(
        &cfg("\
version: 1
networks:
  - name: lan
    cidrs: [192.168.1.0/24, \"fd00:1::/64\", 10.0.0.5]
  - name: other
    cidrs: [192.168.0.0/16, 192.168.1.0/24]
groups:
  - {name: a, select: {name: \"a*\"}}
"),
        &[],
    );
    let other = network_identity("other");
    let want4: BTreeMap<Prefix4, Identity> = [
        (
            Prefix {
                addr: [192, 168, 1, 0],
                len: 24,
            },
            lan(),
        ),
        (
            Prefix {
                addr: [10, 0, 0, 5],
                len: 32,
            },
            lan(),
        ),
        (
            Prefix {
                addr: [192, 168, 0, 0],
                len: 16,
            },
            other,
        ),
    ]
    .into();
    assert_eq!(c.net4, want4);
    let fd00: std::net::Ipv6Addr = "fd00:1::".parse().unwrap();
    assert_eq!(
        c.net6.into_iter().collect::<Vec<_>>(),
        [(
            Prefix {
                addr: fd00.octets(),
                len: 64
            },
            lan()
        )]
    );
    assert_eq!(
        c.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        ["192.168.1.0/24 is in networks `lan` and `other`; `lan` (the first in the file) keeps it"]
    );
}

#[test]
fn overlapping_groups_are_warned_about() {
    let c = ok(
        &cfg("\
version: 1
groups:
  - {name: a, select: {name: \"a*\"}}
  - {name: ab, select: {name: \"*b*\"}}
"),
        &[endpoint(EndpointSpec::new("abc").veth(10, &["10.88.0.10"]))],
    );
    assert_eq!(c.endpoints[&10].identity, a());
    assert_eq!(
        c.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        ["abc (podman:abc) is selected by groups `a`, `ab`; it belongs to `a` (the first in the file)"]
    );
}

#[test]
fn iot_gateway_example() {
    use reserved::{HOST, WORLD};
    let cfg = cfg(IOT);
    let (sensor, web, db) = (
        group_identity("sensor"),
        group_identity("web"),
        group_identity("db"),
    );
    // Groups without a container yet: their entries are there for when
    // one starts.
    let (broker, cam) = (group_identity("broker"), group_identity("cam"));
    let (lan, monitoring) = (network_identity("lan"), network_identity("monitoring"));
    let eps = vec![
        endpoint(
            EndpointSpec::new("sensor-1")
                .label("app", "sensor")
                .image("localhost/sensor:2")
                .veth(10, &["10.88.0.10"]),
        ),
        endpoint(
            EndpointSpec::new("web-1")
                .label("app", "web")
                .veth(11, &["10.88.0.11"]),
        ),
        endpoint(
            EndpointSpec::new("db")
                .label("app", "db")
                .veth(12, &["10.88.0.12"]),
        ),
    ];
    let c = compile(&cfg, &eps, &["10.88.0.1".parse().unwrap()], &ANY_KEY).unwrap();
    let got = entries(&c);
    let tcp = proto::TCP;
    let want = set(vec![
        // Ground rules: same_group for sensor and web (db denies it),
        // host_ingress for all three; quarantine: nothing for unmanaged.
        all(sensor, E, sensor, 0),
        all(sensor, I, sensor, 0),
        all(web, E, web, 0),
        all(web, I, web, 0),
        all(sensor, I, HOST, 0),
        all(web, I, HOST, 0),
        all(db, I, HOST, 0),
        all(broker, E, broker, 0),
        all(broker, I, broker, 0),
        all(cam, E, cam, 0),
        all(cam, I, cam, 0),
        all(broker, I, HOST, 0),
        all(cam, I, HOST, 0),
        vec![
            // 1 sensor-to-web: both sides.
            (sensor, E, web, tcp, 8080, 1),
            (web, I, sensor, tcp, 8080, 1),
            // 2 lan-to-web: tcp by default.
            (web, I, lan, tcp, 8080, 2),
            // 3 prometheus-scrape.
            (sensor, I, monitoring, tcp, 9100, 3),
            (sensor, I, monitoring, tcp, 9187, 3),
            (sensor, I, monitoring, tcp, 9188, 3),
            (web, I, monitoring, tcp, 9100, 3),
            (web, I, monitoring, tcp, 9187, 3),
            (web, I, monitoring, tcp, 9188, 3),
            (db, I, monitoring, tcp, 9100, 3),
            (db, I, monitoring, tcp, 9187, 3),
            (db, I, monitoring, tcp, 9188, 3),
            // 4 web-to-db.
            (web, E, db, tcp, 5432, 4),
            (db, I, web, tcp, 5432, 4),
            // 5 sensor-upload.
            (sensor, E, WORLD, tcp, 443, 5),
            // 6 dns.
            (sensor, E, HOST, proto::UDP, 53, 6),
            (web, E, HOST, proto::UDP, 53, 6),
            // 7 sensor-to-broker, 8 cam-to-broker (MQTT rules).
            (sensor, E, broker, tcp, 1883, 7),
            (broker, I, sensor, tcp, 1883, 7),
            (cam, E, broker, tcp, 1883, 8),
            (broker, I, cam, tcp, 1883, 8),
        ],
    ]);
    assert_eq!(got, want);
    assert_eq!(c.policy.len(), 45 + 28);

    // L7 (HTTP and MQTT): every TCP entry of policies 1-3 and 7-8 is
    // listed, nothing of 4-6.
    let http_rules: BTreeSet<u32> = c.http.iter().map(|t| t.rule).collect();
    assert_eq!(http_rules, [1, 2, 3, 7, 8].into());
    assert_eq!(c.http.len(), 2 + 1 + 9 + 4);
    assert!(c.http.iter().all(|t| c.policy[&t.key].rule == t.rule));
    // No plain rule covers them: all are enforced, each with its set.
    for t in &c.http {
        assert_eq!(c.policy[&t.key].action, action::ALLOW_HTTP, "{t:?}");
        assert!(c.http_maps.sets.contains_key(&t.key), "{t:?}");
    }
    assert_eq!(c.http_maps.sets.len(), 16);
    assert!(!c.http_maps.rules.is_empty());
    // Two MQTT sets, one per policy, each marked.
    assert_eq!(c.http_maps.mqtt.sets.len(), 2);
    let marked = c
        .http_maps
        .sets
        .values()
        .filter(|s| s.depths == porin_common::http::SET_MQTT)
        .count();
    assert_eq!(marked, 4);

    assert_eq!(c.endpoints.len(), 3);
    assert_eq!(c.endpoints[&11].identity, web);
    assert_eq!(c.ip4[&[10, 88, 0, 1]], HOST);
    assert_eq!(c.net4.len(), 4);
    assert_eq!(c.net6.len(), 2);
    let s = c.summary();
    assert_eq!(
        (s.endpoints, s.ip4, s.net4 + s.net6, s.policy, s.http),
        (3, 4, 6, 73, 16)
    );
    assert!(s.to_string().contains("73 of 32768 policy entries"), "{s}");

    let text = c.explain();
    for line in [
        "web-1 (podman:web-1): group web [0x0106ad94], enforce, veth veth11 (ifindex 11), \
         addresses 10.88.0.11",
        "  egress  tcp 5432                 to group db                policy web-to-db (#4)\n  \
         egress  any                      to group web               ground rule same_group\n  \
         egress  udp 53                   to host                    policy dns (#6)\n  \
         ingress tcp 8080                 from group sensor          policy sensor-to-web \
         (#1, HTTP rules)\n  \
         ingress any                      from group web             ground rule same_group\n  \
         ingress any                      from host                  ground rule host_ingress\n  \
         ingress tcp 8080                 from network lan           policy lan-to-web \
         (#2, HTTP rules)\n  \
         ingress tcp 9100,9187-9188       from network monitoring    policy prometheus-scrape \
         (#3, HTTP rules)\n",
        "to group broker            policy sensor-to-broker (#7, MQTT rules)",
    ] {
        assert!(text.contains(line), "explain lacks `{line}`:\n{text}");
    }
}

#[test]
fn output_is_deterministic_whatever_the_endpoint_order() {
    let cfg = cfg(IOT);
    let mut eps = vec![
        endpoint(
            EndpointSpec::new("web-1")
                .id("1")
                .label("app", "web")
                .veth(11, &["10.88.0.11"]),
        ),
        endpoint(
            EndpointSpec::new("web-2")
                .id("2")
                .label("app", "web")
                .veth(12, &["10.88.0.12"]),
        ),
        endpoint(
            EndpointSpec::new("x")
                .id("3")
                .veth(13, &["10.88.0.13", "fd00::13"]),
        ),
    ];
    let first = compile(&cfg, &eps, &[], &ANY_KEY).unwrap();
    eps.reverse();
    let second = compile(&cfg, &eps, &[], &ANY_KEY).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.explain(), second.explain());
}

#[test]
fn diff_lists_changes_per_map() {
    let cfg = two_groups("policies: [{name: p, from: [a], to: [b], ports: [80]}]");
    let old = ok(
        &cfg,
        &[
            endpoint(EndpointSpec::new("a1").veth(10, &["10.88.0.10"])),
            endpoint(EndpointSpec::new("x1").veth(12, &["10.88.0.12"])),
        ],
    );
    // x1 is relabelled into b (same veth, new identity), a1 left, b2 came.
    let new_eps = [
        endpoint(EndpointSpec::new("b-x1").id("x1").veth(12, &["10.88.0.12"])),
        endpoint(EndpointSpec::new("b2").veth(13, &["fd00::13"])),
    ];
    let new = ok(&cfg, &new_eps);
    let d = diff(&old, &new);
    assert_eq!(
        d.endpoints.add.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [13]
    );
    assert_eq!(
        d.endpoints
            .update
            .iter()
            .map(|(k, v)| (*k, v.identity))
            .collect::<Vec<_>>(),
        [(12, b())]
    );
    assert_eq!(d.endpoints.remove, [10]);
    assert_eq!(d.ip4.update, [([10, 88, 0, 12], b())]);
    assert_eq!(d.ip4.remove, [[10, 88, 0, 10]]);
    assert!(d.ip4.add.is_empty());
    assert_eq!(d.ip6.add.len(), 1);
    assert!(
        d.policy.is_empty() && d.net4.is_empty(),
        "policy depends on the config only"
    );
    assert!(!d.is_empty());
    assert!(diff(&new, &new).is_empty());

    let other = ok(
        &two_groups("policies: [{name: p, from: [a], to: [b], ports: [81]}]"),
        &new_eps,
    );
    let d = diff(&new, &other);
    assert_eq!((d.policy.add.len(), d.policy.remove.len()), (2, 2));
    assert!(d.endpoints.is_empty());
}

/// `n` policies over ten groups, each allowing one distinct port between
/// two groups (two entries each).
fn many_policies(n: usize) -> String {
    let mut yaml =
        String::from("version: 1\nenforcement: {unknown_workloads: quarantine}\ngroups:\n");
    for g in 0..10 {
        yaml += &format!("  - {{name: g{g}, select: {{name: \"g{g}-*\"}}}}\n");
    }
    yaml += "policies:\n";
    for i in 0..n {
        yaml += &format!(
            "  - {{name: p{i}, from: [g{}], to: [g{}], ports: [{}]}}\n",
            i % 10,
            (i / 10) % 10,
            1000 + i
        );
    }
    yaml
}

#[test]
fn ten_thousand_policies_fit() {
    let cfg = cfg(&many_policies(10_000));
    let c = ok(&cfg, &[]);
    // 2 per policy, plus same_group (8) and host_ingress (4) per group.
    assert_eq!(c.policy.len(), 20_000 + 10 * 12);
    assert!(c.policy.len() <= POLICY_ENTRIES_PER_GENERATION);
    assert_eq!(c.policy.values().map(|v| v.rule).max(), Some(10_000));
}

#[test]
fn capacity_overflow_names_the_policy() {
    let c = two_groups(
        "policies:
  - {name: fine, from: [a], to: [b], ports: [80]}
  - {name: huge, from: [a, lan], to: [b], ports: [\"1000-30000\"]}",
    );
    let err = compile(&c, &[], &[], &ANY_KEY).unwrap_err();
    let CompileError::Overflow(o) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(o.capacity, 32_768);
    assert!(
        matches!(&o.culprit, Culprit::Policy { name, entries, .. } if name == "huge" && *entries == 3 * 29_001),
        "{o:?}"
    );
    let text = err.to_string();
    assert!(text.contains("more than 32768 map entries"), "{text}");
    assert!(
        text.contains("policy `huge` (19:5), which expands to 87003 entries"),
        "{text}"
    );

    // Ground rules alone can overflow (cross_group is quadratic).
    let cross = cfg("\
version: 1
groups:
  - {name: a, select: {name: \"a*\"}}
  - {name: b, select: {name: \"b*\"}}
ground_rules: {cross_group: allow}
");
    let err = compile_small(&cross, &[], 20).unwrap_err();
    assert!(matches!(
        &err,
        CompileError::Overflow(Overflow {
            culprit: Culprit::GroundRules,
            ..
        })
    ));
    assert!(err.to_string().contains("ground rules alone"), "{err}");
}

#[test]
fn identity_collision_is_a_compile_error() {
    let c = cfg("\
version: 1
groups:
  - {name: g809, select: {name: a}}
  - {name: g45280, select: {name: b}}
");
    let err = compile(&c, &[], &[], &ANY_KEY).unwrap_err();
    let CompileError::Collision(mut e) = err else {
        panic!("{err:?}");
    };
    assert!(
        e.to_string()
            .starts_with("4:5: group `g45280` derives identity"),
        "{e}"
    );
    assert!(e.to_string().contains("group `g809` at 3:5"), "{e}");
    e.file = "porin.yaml".into();
    assert!(e.to_string().starts_with("porin.yaml:4:5: "), "{e}");
}

/// The manager parks addresses on `UPDATING` across a generation flip; that
/// is only safe because no compiled entry ever names it.
#[test]
fn no_policy_entry_names_the_updating_identity() {
    for yaml in [
        include_str!("../../configs/iot-gateway.yaml"),
        include_str!("../../configs/porin.yaml"),
        "version: 1\nenforcement: {unknown_workloads: allow}\ngroups:\n  - {name: a, select: {labels: {x: a}}}\n  - {name: b, select: {labels: {x: b}}}\nground_rules: {cross_group: allow, internet_egress: allow, host_ingress: allow, host_egress: allow}\n",
    ] {
        let c = ok(&cfg(yaml), &[]);
        assert!(!c.policy.is_empty(), "the check must see entries: {yaml}");
        for k in c.policy.keys() {
            assert_ne!(k.subject, reserved::UPDATING, "{k:?}");
            assert_ne!(k.peer, reserved::UPDATING, "{k:?}");
        }
    }
}

#[test]
fn veths_enslaved_to_a_bridge_are_listed_with_it() {
    let mut a1 = endpoint(
        EndpointSpec::new("a1")
            .veth(10, &["10.88.0.10"])
            .veth(20, &["10.89.0.10"]),
    );
    a1.interfaces[0]
        .host_peer
        .as_mut()
        .expect("a host peer")
        .master = Some(5);
    let c = compile(&two_groups(""), &[a1], &[], &ANY_KEY).unwrap();
    let want: BTreeMap<u32, u32> = [(10, 5)].into();
    assert_eq!(
        crate::datapath::uplink::veth_bridges(&c),
        want,
        "veth 10 on bridge 5; veth 20 on none"
    );
}
