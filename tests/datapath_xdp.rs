//! `from_uplink` through `BPF_PROG_TEST_RUN`: every drop reason and every
//! pass path, with the maps filled by the test and the verdict, the drop
//! counters and the pass classes checked for each.
//!
//! `BPF_PROG_TEST_RUN` gives XDP programs the namespace's loopback as the
//! receiving interface, so the uplink under test is ifindex 1 ([`UPLINK`]).
//! Frames shorter than an Ethernet header are refused by the kernel itself
//! before the program runs; truncated IP headers are tested here.
//!
//! Needs root (CI runs as root); without it each test fails loudly.

use porin::maps::{self, MapDef};
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf,
};
use porin::{
    ebpf,
    flows::{maps::EventMaps, record::decode, source::Item},
    testing::{
        packets::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN},
        prog_run, require_root,
    },
};
use porin_common::{
    datapath::{
        identity, mode, Counter, DatapathConfig, Direction, DropReason, EndpointInfo, Identity,
        PolicyKey, PolicyValue, CONFIG_READY,
    },
    decide::{ct4_key, ct_value},
    flow::{kind, verdict},
    packet::ethertype,
    parse::Flow,
    uplink::{deny4_key, deny6_key, pass, UplinkConfig},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `BPF_PROG_TEST_RUN`'s receiving interface: the namespace's loopback.
const UPLINK: u32 = 1;
/// The container's host veth (any number: the program only uses it as a
/// key).
const VETH: u32 = 77;
const WEB: Identity = identity::GROUP_BASE + 1;
const LAN: Identity = identity::NETWORK_BASE + 1;
const BLOCKED: Identity = identity::NETWORK_BASE + 2;

/// A container (identity WEB) and the node.
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 5);
const WEB_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 5);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// In the LAN network (192.168.1.0/24).
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 40);
/// In no network: world.
const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const FAR2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 8);
const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
/// In the deny-listed network 198.51.100.0/24 and 2001:db8:bad::/48.
const BAD: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
const BAD6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 9);

struct Dp {
    bpf: Ebpf,
}

impl Dp {
    /// `from_uplink` loaded, [`UPLINK`] configured without flood limits,
    /// the deny list, the WEB container behind [`VETH`] in `mode`, the LAN
    /// network, generation 0 active with no policy.
    fn new(mode: u8) -> Self {
        let mut bpf = ebpf::open().expect("open eBPF object");
        ebpf::load_program::<Xdp>(&mut bpf, "from_uplink")
            .unwrap_or_else(|e| panic!("load from_uplink: {e:?}"));
        let mut dp = Dp { bpf };
        dp.uplink(UplinkConfig::default());
        let mut t4: LpmTrie<_, [u8; 8], Identity> =
            maps::open_mut(&mut dp.bpf, maps::UPLINK_DENY4).unwrap();
        t4.insert(
            &Key::new(32 + 24, deny4_key(UPLINK, [198, 51, 100, 0])),
            BLOCKED,
            0,
        )
        .unwrap();
        let mut t6: LpmTrie<_, [u8; 20], Identity> =
            maps::open_mut(&mut dp.bpf, maps::UPLINK_DENY6).unwrap();
        let net6 = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0).octets();
        t6.insert(&Key::new(32 + 48, deny6_key(UPLINK, &net6)), BLOCKED, 0)
            .unwrap();
        dp.hash(maps::UPLINK_ENDPOINTS4)
            .insert(WEB_IP.octets(), VETH, 0)
            .unwrap();
        dp.hash(maps::UPLINK_ENDPOINTS6)
            .insert(WEB_IP6.octets(), VETH, 0)
            .unwrap();
        let info = EndpointInfo::new(WEB, mode);
        dp.hash(maps::ENDPOINTS).insert(VETH, info, 0).unwrap();
        dp.hash(maps::IP4).insert(WEB_IP.octets(), WEB, 0).unwrap();
        dp.hash(maps::IP4)
            .insert(NODE.octets(), identity::HOST, 0)
            .unwrap();
        let mut nets: LpmTrie<_, [u8; 4], Identity> =
            maps::open_mut(&mut dp.bpf, maps::NET4).unwrap();
        nets.insert(&Key::new(24, [192, 168, 1, 0]), LAN, 0)
            .unwrap();
        let mut cfg: Array<_, DatapathConfig> = maps::open_mut(&mut dp.bpf, maps::CONFIG).unwrap();
        cfg.set(
            0,
            DatapathConfig {
                generation: 0,
                ready: CONFIG_READY,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        dp
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, def: MapDef<K, V>) -> HashMap<&mut MapData, K, V> {
        maps::open_mut(&mut self.bpf, def).expect("a hash map")
    }

    fn uplink(&mut self, cfg: UplinkConfig) {
        self.hash(maps::UPLINK_CONFIG)
            .insert(UPLINK, cfg, 0)
            .unwrap();
    }

    /// WEB's ingress policy allows `peer` on `proto`/`port` (generation 0).
    fn allow(&mut self, peer: Identity, protocol: u8, port: u16) {
        let key = PolicyKey::new(WEB, peer, Direction::Ingress, protocol, port);
        let value = PolicyValue::allow(1);
        self.hash(maps::POLICY).insert(key, value, 0).unwrap();
    }

    fn prog(&self) -> &Xdp {
        self.bpf.program("from_uplink").unwrap().try_into().unwrap()
    }

    fn run(&self, frame: &[u8]) -> u32 {
        prog_run::verdict(self.prog(), frame)
    }

    /// Asserts the verdict on `frame`.
    fn expect(&self, frame: &[u8], want: u32, what: &str) {
        let got = self.run(frame);
        assert_eq!(
            got,
            want,
            "{what}: want {}, got {got}",
            if want == XDP_DROP { "DROP" } else { "PASS" }
        );
    }

    fn sum(&self, map: MapDef<u32, Counter>, index: u32) -> Counter {
        let arr: PerCpuArray<_, _> = maps::open(&self.bpf, map).unwrap();
        arr.get(&index, 0)
            .unwrap()
            .iter()
            .fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
    }

    /// Non-zero drop counters, by reason value.
    fn drops(&self) -> Vec<(u32, u64)> {
        (0..porin_common::datapath::DROP_REASONS)
            .map(|r| (r, self.sum(maps::DROPS, r).packets))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Non-zero pass counters, by class.
    fn passes(&self) -> Vec<(u32, u64)> {
        (0..pass::CLASSES)
            .map(|c| (c, self.sum(maps::UPLINK_PASSED, c).packets))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn expect_counts(&self, drops: &[(DropReason, u64)], passes: &[(u32, u64)], what: &str) {
        let want: Vec<(u32, u64)> = drops.iter().map(|(r, n)| (*r as u32, *n)).collect();
        assert_eq!(self.drops(), want, "{what}: drop counters");
        assert_eq!(self.passes(), passes, "{what}: pass counters");
    }
}

fn syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    packets::frame_v4(
        src,
        dst,
        PROTO_TCP,
        &packets::tcp(40000, dport, TCP_SYN, &[]),
    )
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    packets::frame_v4(src, dst, PROTO_UDP, &packets::udp(40000, dport, b"x"))
}

#[test]
fn the_program_passes_everything_on_an_interface_without_uplink_config() {
    require_root("XDP uplink test");
    let mut dp = Dp::new(mode::ENFORCE);
    dp.hash(maps::UPLINK_CONFIG).remove(&UPLINK).unwrap();
    dp.expect(
        &syn(BAD, WEB_IP, 80),
        XDP_PASS,
        "deny-listed, not an uplink",
    );
    dp.expect(&syn(FAR, WEB_IP, 80), XDP_PASS, "no policy, not an uplink");
    dp.expect_counts(&[], &[(pass::NOT_IP, 2)], "unconfigured");
}

#[test]
fn deny_listed_sources_are_dropped_whatever_their_packets() {
    require_root("XDP uplink test");
    let mut dp = Dp::new(mode::ENFORCE);
    dp.allow(identity::ANY, PROTO_TCP, 0);
    dp.expect(&syn(BAD, WEB_IP, 80), XDP_DROP, "v4 SYN to a container");
    dp.expect(&udp(BAD, NODE, 53), XDP_DROP, "v4 UDP to the node");
    let frag = packets::frame_v4_with(
        BAD,
        NODE,
        PROTO_UDP,
        &packets::udp(1, 2, b"x"),
        &[],
        packets::IPV4_MF,
    );
    dp.expect(&frag, XDP_DROP, "a fragment");
    let opts = packets::frame_v4_with(BAD, NODE, PROTO_UDP, &packets::udp(1, 2, b"x"), &[1; 4], 0);
    dp.expect(&opts, XDP_DROP, "IPv4 with options");
    let v6 = packets::frame_v6(BAD6, WEB_IP6, PROTO_TCP, &packets::tcp(1, 80, TCP_SYN, &[]));
    dp.expect(&v6, XDP_DROP, "v6");
    // Even replies: deny_from is absolute.
    let reply = packets::frame_v4(
        BAD,
        NODE,
        PROTO_TCP,
        &packets::tcp(443, 40000, TCP_ACK, &[]),
    );
    dp.expect(&reply, XDP_DROP, "a reply from a deny-listed network");
    // Next door is fine.
    dp.expect(
        &syn(Ipv4Addr::new(198, 51, 101, 9), WEB_IP, 80),
        XDP_PASS,
        "outside the /24",
    );
    dp.expect_counts(
        &[(DropReason::UplinkDenyListed, 6)],
        &[(pass::ALLOWED, 1)],
        "deny list",
    );
}

#[test]
fn container_addresses_take_only_what_their_ingress_policy_allows() {
    require_root("XDP uplink test");
    let mut dp = Dp::new(mode::ENFORCE);
    dp.allow(identity::WORLD, PROTO_TCP, 80);
    dp.allow(LAN, PROTO_TCP, 22);
    dp.allow(LAN, PROTO_UDP, 0);
    dp.expect(&syn(FAR, WEB_IP, 80), XDP_PASS, "world -> web:80 allowed");
    dp.expect(
        &syn(FAR, WEB_IP, 22),
        XDP_DROP,
        "world -> web:22 not allowed",
    );
    dp.expect(
        &syn(LAN_HOST, WEB_IP, 22),
        XDP_PASS,
        "lan -> web:22 allowed",
    );
    dp.expect(
        &udp(LAN_HOST, WEB_IP, 5353),
        XDP_PASS,
        "lan -> web udp any port",
    );
    dp.expect(&udp(FAR, WEB_IP, 5353), XDP_DROP, "world -> web udp");
    let ping = packets::frame_v4(FAR, WEB_IP, PROTO_ICMP, &packets::icmp_echo(false));
    dp.expect(&ping, XDP_DROP, "world -> web ping");
    let v6 = packets::frame_v6(FAR6, WEB_IP6, PROTO_TCP, &packets::tcp(1, 80, TCP_SYN, &[]));
    dp.expect(&v6, XDP_PASS, "v6 world -> web:80");
    let v6 = packets::frame_v6(FAR6, WEB_IP6, PROTO_TCP, &packets::tcp(1, 81, TCP_SYN, &[]));
    dp.expect(&v6, XDP_DROP, "v6 world -> web:81");
    // Not a container: the node's own traffic is not this program's call.
    dp.expect(&syn(FAR, NODE, 22), XDP_PASS, "to the node");
    dp.expect_counts(
        &[(DropReason::UplinkNoPolicy, 4)],
        &[(pass::NOT_CONTAINER, 1), (pass::ALLOWED, 4)],
        "container policy",
    );
}

#[test]
fn replies_and_established_connections_pass_without_a_policy() {
    require_root("XDP uplink test");
    let mut dp = Dp::new(mode::ENFORCE);
    // The container connected out to FAR:443 (from_container made the
    // entry, direction egress, at its veth); no ingress policy at all.
    let out = Flow {
        saddr: v4(WEB_IP),
        daddr: v4(FAR),
        sport: 40000,
        dport: 443,
        family: 4,
        protocol: PROTO_TCP,
        may_be_reply: false,
        tcp_flags: 0,
    };
    let l = ct4_key(&out, VETH);
    dp.hash(maps::CT4)
        .insert(
            l.key,
            ct_value(
                1,
                porin_common::datapath::PEER_IN_UNVERIFIED,
                Direction::Egress,
                l.origin,
                0,
                porin_common::ct::state::TCP_ESTABLISHED,
            ),
            0,
        )
        .unwrap();
    let reply = |flags| {
        packets::frame_v4(
            FAR,
            WEB_IP,
            PROTO_TCP,
            &packets::tcp(443, 40000, flags, &[]),
        )
    };
    dp.expect(&reply(TCP_SYN | TCP_ACK), XDP_PASS, "SYN-ACK");
    dp.expect(&reply(TCP_ACK), XDP_PASS, "data");
    // A SYN is never a reply: the same tuple opening a connection inwards
    // is judged by policy.
    dp.expect(&reply(TCP_SYN), XDP_DROP, "a SYN with the reply's tuple");
    // Another port of the same peer: not that connection.
    let other = packets::frame_v4(
        FAR,
        WEB_IP,
        PROTO_TCP,
        &packets::tcp(443, 40001, TCP_ACK, &[]),
    );
    dp.expect(&other, XDP_DROP, "another connection");
    // Conntrack wins over the flood limit too.
    dp.uplink(UplinkConfig {
        syn_cost_ns: u64::MAX / 4,
        syn_burst_ns: 0,
        udp_cost_ns: u64::MAX / 4,
        udp_burst_ns: 0,
    });
    dp.expect(&reply(TCP_ACK), XDP_PASS, "data under a zero flood budget");
    dp.expect_counts(
        &[(DropReason::UplinkNoPolicy, 2)],
        &[(pass::ESTABLISHED, 3)],
        "established",
    );
}

#[test]
fn audit_mode_counts_and_passes() {
    require_root("XDP uplink test");
    let dp = Dp::new(mode::AUDIT);
    dp.expect(&syn(FAR, WEB_IP, 22), XDP_PASS, "audited");
    dp.expect(&syn(BAD, WEB_IP, 22), XDP_DROP, "deny list is not audited");
    dp.expect_counts(
        &[
            (DropReason::UplinkDenyListed, 1),
            (DropReason::UplinkNoPolicy, 1),
        ],
        &[(pass::AUDIT, 1)],
        "audit",
    );
}

#[test]
fn floods_are_limited_per_source_and_kind() {
    require_root("XDP uplink test");
    let mut dp = Dp::new(mode::ENFORCE);
    dp.allow(identity::WORLD, PROTO_TCP, 80);
    // One per hour, bursts of 3: nothing refills during the test.
    let (syn_cost_ns, syn_burst_ns) = UplinkConfig::limit(Some(1), 3);
    let (c, b) = (syn_cost_ns * 3600, syn_burst_ns * 3600);
    dp.uplink(UplinkConfig {
        syn_cost_ns: c,
        syn_burst_ns: b,
        udp_cost_ns: c / 2,
        udp_burst_ns: b,
    });
    for i in 0..3 {
        dp.expect(
            &syn(FAR, WEB_IP, 80),
            XDP_PASS,
            &format!("SYN {i} within the burst"),
        );
    }
    dp.expect(&syn(FAR, WEB_IP, 80), XDP_DROP, "SYN beyond the burst");
    dp.expect(
        &syn(FAR, NODE, 22),
        XDP_DROP,
        "the same source's SYN to the node",
    );
    dp.expect(&syn(FAR2, WEB_IP, 80), XDP_PASS, "another source");
    // Non-SYN TCP is not counted.
    let ack = packets::frame_v4(FAR, NODE, PROTO_TCP, &packets::tcp(1, 22, TCP_ACK, &[]));
    dp.expect(&ack, XDP_PASS, "ACK");
    // UDP has its own bucket: six at half the cost.
    for i in 0..6 {
        dp.expect(&udp(FAR, NODE, 53), XDP_PASS, &format!("UDP {i}"));
    }
    dp.expect(&udp(FAR, NODE, 53), XDP_DROP, "UDP beyond the burst");
    dp.expect_counts(
        &[(DropReason::UplinkFlood, 3)],
        &[(pass::NOT_CONTAINER, 7), (pass::ALLOWED, 4)],
        "flood",
    );
}

#[test]
fn non_ip_vlan_and_unparsable_frames_pass_to_the_stack() {
    require_root("XDP uplink test");
    let dp = Dp::new(mode::ENFORCE);
    dp.expect(&packets::arp_request(FAR, NODE), XDP_PASS, "ARP");
    // A VLAN-tagged frame from a deny-listed source: it belongs to a VLAN
    // interface, which would be an uplink of its own.
    let mut vlan = packets::eth(ethertype::VLAN);
    vlan.extend_from_slice(&[0, 10, 0x08, 0x00]);
    vlan.extend_from_slice(&packets::ipv4(
        BAD,
        WEB_IP,
        PROTO_UDP,
        &packets::udp(1, 2, b"x"),
    ));
    dp.expect(&vlan, XDP_PASS, "VLAN-tagged");
    let mut lldp = packets::eth(0x88cc);
    lldp.extend_from_slice(&[0; 32]);
    dp.expect(&lldp, XDP_PASS, "LLDP");
    let ns = packets::nd_frame(
        FAR6,
        WEB_IP6,
        &packets::icmpv6_neighbour_solicitation(WEB_IP6),
    );
    dp.expect(&ns, XDP_PASS, "neighbour solicitation");
    // Truncated IPv4 header (10 of 20 bytes).
    let full = syn(FAR, WEB_IP, 22);
    dp.expect(&full[..24], XDP_PASS, "truncated IPv4 header");
    let v6 = packets::frame_v6(FAR6, WEB_IP6, PROTO_TCP, &packets::tcp(1, 81, TCP_SYN, &[]));
    dp.expect(&v6[..40], XDP_PASS, "truncated IPv6 header");
    // Truncated TCP header to a container: TC drops it as Malformed.
    dp.expect(&full[..40], XDP_PASS, "truncated TCP header");
    let frag = packets::frame_v4_with(
        FAR,
        WEB_IP,
        PROTO_UDP,
        &packets::udp(1, 2, b"x"),
        &[],
        packets::IPV4_MF,
    );
    dp.expect(&frag, XDP_PASS, "a fragment from the world");
    dp.expect_counts(&[], &[(pass::NOT_IP, 4), (pass::UNPARSED, 4)], "pass paths");
}

#[test]
fn drops_emit_flow_events_on_the_uplink() {
    require_root("XDP uplink test");
    let dp = Dp::new(mode::ENFORCE);
    let maps = EventMaps::open(&dp.bpf).expect("event maps");
    let (mut source, mut ctl) = maps.split();
    ctl.set_cpu_rate(1000, 1_000_000_000).unwrap();
    dp.expect(&syn(BAD, WEB_IP, 80), XDP_DROP, "deny-listed");
    dp.expect(&syn(FAR, WEB_IP, 22), XDP_DROP, "no policy");
    let mut events = Vec::new();
    source.take(100, |item| {
        if let Item::Record(bytes) = item {
            events.push(decode(bytes).expect("a FlowEvent"));
        }
    });
    assert_eq!(events.len(), 2, "one event per drop");
    // The deny list is checked on the fixed IP header alone: no TCP flags.
    for (e, reason, src, flags) in [
        (&events[0], DropReason::UplinkDenyListed, BLOCKED, 0),
        (
            &events[1],
            DropReason::UplinkNoPolicy,
            identity::WORLD,
            0x02,
        ),
    ] {
        assert_eq!(e.kind, kind::DROP);
        assert_eq!(e.verdict, verdict::DROPPED);
        assert_eq!(e.drop_reason, reason as u8);
        assert_eq!(e.direction, Direction::Ingress as u8);
        assert_eq!(e.ifindex, UPLINK);
        assert_eq!(e.src_identity, src);
        assert_eq!(&e.daddr[..4], &WEB_IP.octets());
        assert_eq!(e.tcp_flags, flags, "{reason:?}");
    }
    assert_eq!(events[1].dst_identity, WEB);
    assert_eq!(events[1].dport, 22);
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut x = [0; 16];
    x[..4].copy_from_slice(&a.octets());
    x
}

#[test]
fn outside_packets_claiming_a_container_or_the_host_address_are_spoofed() {
    require_root("XDP uplink test");
    let mut dp = Dp::new(mode::ENFORCE);
    dp.allow(identity::WORLD, PROTO_TCP, 80);
    dp.allow(WEB, PROTO_TCP, 80);
    // From the uplink with a container's own address as the source: it
    // would be judged as that container (here, even allowed by a rule
    // naming its group), so it must not get past the uplink.
    dp.expect(&syn(WEB_IP, WEB_IP, 80), XDP_DROP, "source = a container");
    dp.expect(&syn(NODE, WEB_IP, 80), XDP_DROP, "source = the host");
    dp.expect(
        &udp(NODE, FAR, 53),
        XDP_DROP,
        "host source, not to a container",
    );
    // The genuine world source still passes.
    dp.expect(&syn(FAR, WEB_IP, 80), XDP_PASS, "world -> web:80");
    dp.expect_counts(
        &[(DropReason::SpoofedSource, 3)],
        &[(pass::ALLOWED, 1)],
        "spoofed sources",
    );
}
