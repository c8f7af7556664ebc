//! The first real program, `probe_frames`, through both tiers of the harness:
//! `BPF_PROG_TEST_RUN` on crafted frames, and attached with XDP to a veth in a
//! pair of network namespaces with real pings crossing it.
//!
//! Needs root (CI runs as root); without it each test fails loudly.

use porin::maps;
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
    Ebpf,
};
use porin::{
    ebpf,
    testing::{
        netns::{Netns, NsPair},
        packets::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
        prog_run, require_root,
    },
};
use porin_common::{
    packet::ethertype,
    probe::{FrameClass, ProbeVerdict},
};

const PASS: u32 = ProbeVerdict::Pass as u32;
const DROP: u32 = ProbeVerdict::Drop as u32;

fn load_probe() -> Ebpf {
    let mut bpf = ebpf::open().expect("open eBPF object");
    ebpf::load_program::<Xdp>(&mut bpf, "probe_frames").expect("load probe_frames");
    bpf
}

fn probe(bpf: &Ebpf) -> &Xdp {
    bpf.program("probe_frames")
        .expect("probe_frames in object")
        .try_into()
        .expect("probe_frames is XDP")
}

/// Sum over CPUs of the counter for `class`.
fn count(bpf: &Ebpf, class: FrameClass) -> u64 {
    let map: PerCpuArray<_, u64> = maps::open(bpf, maps::PROBE).expect("per-CPU array");
    map.get(&(class as u32), 0)
        .expect("read counter")
        .iter()
        .sum()
}

#[test]
fn test_run_gives_the_verdict_for_each_kind_of_frame() {
    require_root("test_run_gives_the_verdict_for_each_kind_of_frame");
    let bpf = load_probe();
    let prog = probe(&bpf);
    let a = Ipv4Addr::new(10, 0, 0, 1);
    let b = Ipv4Addr::new(10, 0, 0, 2);
    let udp4 = packets::frame_v4(a, b, PROTO_UDP, &packets::udp(1234, 53, b"q"));
    let tcp6 = packets::frame_v6(
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::LOCALHOST,
        PROTO_TCP,
        &packets::tcp(1234, 80, packets::TCP_SYN, b""),
    );
    let arp = packets::arp_request(a, b);
    let mut vlan = packets::eth(ethertype::VLAN);
    vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&packets::ipv4(a, b, PROTO_ICMP, &packets::icmp_echo(false)));
    let mut v4_cut = udp4.clone();
    v4_cut.truncate(14 + 19); // one byte short of the minimal IPv4 header
    let mut v4_ihl_too_long = udp4.clone();
    v4_ihl_too_long[14] = 0x4f; // 60-byte header in a 43-byte frame
    let mut v4_bad_version = udp4.clone();
    v4_bad_version[14] = 0x65;
    let mut v6_cut = tcp6.clone();
    v6_cut.truncate(14 + 39);

    let cases: [(&str, &[u8], u32); 8] = [
        ("IPv4 UDP", &udp4, PASS),
        ("IPv6 TCP SYN", &tcp6, PASS),
        ("ARP request", &arp, PASS),
        ("VLAN-tagged IPv4", &vlan, PASS),
        ("IPv4 header cut short", &v4_cut, DROP),
        ("IPv4 IHL beyond the frame", &v4_ihl_too_long, DROP),
        ("IPv4 EtherType with version 6", &v4_bad_version, DROP),
        ("IPv6 header cut short", &v6_cut, DROP),
    ];
    for (name, frame, want) in cases {
        assert_eq!(prog_run::verdict(prog, frame), want, "verdict for {name}");
    }

    // The counters show the program classified (not merely returned) them.
    assert_eq!(count(&bpf, FrameClass::Ipv4), 1);
    assert_eq!(count(&bpf, FrameClass::Ipv6), 1);
    assert_eq!(count(&bpf, FrameClass::Arp), 1);
    assert_eq!(count(&bpf, FrameClass::Other), 1);
    assert_eq!(count(&bpf, FrameClass::Malformed), 4);
}

#[test]
fn attached_to_a_veth_it_sees_real_pings() {
    require_root("attached_to_a_veth_it_sees_real_pings");
    let net = NsPair::new("probe", 1);
    let names = (net.a.name().to_owned(), net.b.name().to_owned());
    let mut bpf = load_probe();
    {
        let prog: &mut Xdp = bpf
            .program_mut("probe_frames")
            .expect("probe_frames")
            .try_into()
            .expect("XDP");
        // Generic (skb) mode: veth has native XDP only for frames it receives
        // from a peer that also runs XDP; generic works everywhere.
        net.b
            .run_in(|| prog.attach(net.if_b, XdpMode::Skb))
            .expect("attach XDP to veth in netns b");
    }
    assert_eq!(count(&bpf, FrameClass::Ipv4), 0, "no traffic yet");

    net.a.exec_ok(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        &net.ip_b.to_string(),
    ]);
    net.a.exec_ok(&[
        "ping",
        "-6",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        &net.ip6_b.to_string(),
    ]);

    // Three echo requests (and possibly more IPv4 frames) reached b; ARP
    // resolved the neighbour first; the IPv6 echoes plus neighbour discovery
    // arrive as IPv6.
    assert!(
        count(&bpf, FrameClass::Ipv4) >= 3,
        "IPv4 frames seen: {}",
        count(&bpf, FrameClass::Ipv4)
    );
    assert!(count(&bpf, FrameClass::Arp) >= 1, "ARP frames seen");
    assert!(count(&bpf, FrameClass::Ipv6) >= 2, "IPv6 frames seen");
    assert_eq!(
        count(&bpf, FrameClass::Malformed),
        0,
        "nothing malformed on the wire"
    );

    drop(bpf);
    drop(net);
    assert!(
        !Netns::exists(&names.0) && !Netns::exists(&names.1),
        "namespaces removed on drop"
    );
}

#[test]
fn netns_guard_replaces_a_leftover_of_an_aborted_run() {
    require_root("netns_guard_replaces_a_leftover_of_an_aborted_run");
    // Simulate an aborted run: a namespace with the same name left behind.
    let leftover = Netns::create("leftover");
    let name = leftover.name().to_owned();
    leftover.exec_ok(&[
        "ip", "link", "add", "stale0", "type", "veth", "peer", "name", "stale1",
    ]);
    std::mem::forget(leftover);

    let fresh = Netns::create("leftover");
    let links = fresh.exec_ok(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("stale0"),
        "the leftover namespace was replaced: {links}"
    );
    drop(fresh);
    assert!(!Netns::exists(&name));
}
