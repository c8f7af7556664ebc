//! `from_uplink`'s cost: `cargo bench --bench datapath_xdp` (as root; nft).
//!
//! 1. ns per packet through `BPF_PROG_TEST_RUN` (median of several runs),
//!    with a deny list of [`DENY`] /24 prefixes, for each drop and pass
//!    path, next to `probe_frames` (a trivial XDP program that bumps one
//!    per-CPU counter) as the harness's own cost.
//! 2. Packets per second dropped on a veth uplink: two namespaces made by
//!    the benchmark, joined by a veth; one UDP sender thread in the
//!    "outside" namespace (setns) sends to the other end from a deny-listed
//!    address for [`SECONDS`]; drops are read from the filter's own
//!    counters. Compared in the same run with nftables on the same veth: a
//!    netdev-family ingress chain holding the same prefixes as one interval
//!    set (nftables at its best) and as plain rules (the matching one
//!    last), and with no filter at all (the stack drops the datagrams at a
//!    closed port). On a veth the receiver's work runs in the sender's
//!    softirq on the same core, so a cheaper drop shows as more packets
//!    per second.

use porin::maps::{self, MapDef};
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf,
};
use porin::{
    ebpf,
    testing::{netns::NsPair, packets, prog_run, require_root},
};
use porin_common::{
    datapath::{
        identity, mode, Counter, DatapathConfig, Direction, DropReason, EndpointInfo, Identity,
        PolicyKey, PolicyValue, CONFIG_READY,
    },
    decide::{ct4_key, ct_value},
    parse::Flow,
    uplink::{deny4_key, UplinkConfig},
};

const REPEAT: u32 = 2_000_000;
const SAMPLES: usize = 5;
/// Deny-listed /24 prefixes (the measured source's is one of them).
const DENY: u32 = 1000;
const SECONDS: u64 = 3;
const VETH: u32 = 77;
const WEB: Identity = identity::GROUP_BASE + 1;
const WEB_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 5);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const FAR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// Out of budget for the flood path.
const FLOODER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
const SUBNET: u8 = 237;

fn main() {
    require_root("the datapath_xdp benchmark");
    test_run_table();
    veth_table();
}

/// The `i`th deny-listed /24: 100.64.0.0/24 upwards (the shared address
/// space, never routed here).
fn deny_prefix(i: u32) -> [u8; 4] {
    let n = (100u32 << 24) | (64 << 16) | (i << 8);
    n.to_be_bytes()
}

fn load() -> Ebpf {
    let mut bpf = ebpf::open().expect("open eBPF object");
    ebpf::load_program::<Xdp>(&mut bpf, "from_uplink").expect("load from_uplink");
    bpf
}

fn hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    def: MapDef<K, V>,
) -> HashMap<&mut MapData, K, V> {
    maps::open_mut(bpf, def).expect("hash map")
}

/// Uplink `ifindex` configured with the deny list and `limits`.
fn configure(bpf: &mut Ebpf, ifindex: u32, limits: UplinkConfig) {
    hash(bpf, maps::UPLINK_CONFIG)
        .insert(ifindex, limits, 0)
        .unwrap();
    let mut t: LpmTrie<_, [u8; 8], Identity> = maps::open_mut(bpf, maps::UPLINK_DENY4).unwrap();
    for i in 0..DENY {
        t.insert(
            &Key::new(32 + 24, deny4_key(ifindex, deny_prefix(i))),
            identity::NETWORK_BASE + 1,
            0,
        )
        .unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(prog: &Xdp, frame: &[u8], want: u32, what: &str) -> f64 {
    median(
        (0..SAMPLES)
            .map(|_| {
                let (ret, d) = prog_run::timed(prog, frame, REPEAT);
                assert_eq!(ret, want, "{what}: unexpected verdict");
                d.as_nanos() as f64
            })
            .collect(),
    )
}

fn test_run_table() {
    let mut bpf = load();
    ebpf::load_program::<Xdp>(&mut bpf, "probe_frames").expect("load probe_frames");
    // Flood limits: a budget of nothing for SYNs (every SYN after the
    // first of a source drops), none for UDP.
    configure(
        &mut bpf,
        1,
        UplinkConfig {
            syn_cost_ns: u64::MAX / 4,
            syn_burst_ns: 0,
            udp_cost_ns: 0,
            udp_burst_ns: 0,
        },
    );
    hash(&mut bpf, maps::UPLINK_ENDPOINTS4)
        .insert(WEB_IP.octets(), VETH, 0)
        .unwrap();
    let ep = EndpointInfo::new(WEB, mode::ENFORCE);
    hash(&mut bpf, maps::ENDPOINTS).insert(VETH, ep, 0).unwrap();
    let key = PolicyKey::new(
        WEB,
        identity::WORLD,
        Direction::Ingress,
        packets::PROTO_TCP,
        80,
    );
    let allow = PolicyValue::allow(1);
    hash(&mut bpf, maps::POLICY).insert(key, allow, 0).unwrap();
    let mut cfg: Array<_, DatapathConfig> = maps::open_mut(&mut bpf, maps::CONFIG).unwrap();
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
    let out = Flow {
        saddr: v4(WEB_IP),
        daddr: v4(FAR),
        sport: 40000,
        dport: 443,
        family: 4,
        protocol: packets::PROTO_TCP,
        may_be_reply: false,
        tcp_flags: 0,
    };
    let l = ct4_key(&out, VETH);
    hash(&mut bpf, maps::CT4)
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

    let tcp = |src, dst, sport, dport, flags| {
        packets::frame_v4(
            src,
            dst,
            packets::PROTO_TCP,
            &packets::tcp(sport, dport, flags, &[]),
        )
    };
    let bad = Ipv4Addr::from(deny_prefix(DENY / 2)).octets();
    let bad = Ipv4Addr::new(bad[0], bad[1], bad[2], 9);
    let udp_from_bad = packets::frame_v4(
        bad,
        NODE,
        packets::PROTO_UDP,
        &packets::udp(1, 53, b"bench"),
    );
    let prog = |name| -> &Xdp { bpf.program(name).unwrap().try_into().unwrap() };
    let (drop, pass) = (1, 2);
    // The flooder's first SYN makes its bucket; the timed ones all drop.
    let flood = tcp(FLOODER, NODE, 1, 22, packets::TCP_SYN);
    prog_run::verdict(prog("from_uplink"), &flood);
    let rows = [
        (
            "baseline: probe_frames",
            "probe_frames",
            udp_from_bad.clone(),
            pass,
        ),
        (
            "drop: deny-listed source",
            "from_uplink",
            udp_from_bad.clone(),
            drop,
        ),
        (
            "drop: no policy to a container",
            "from_uplink",
            tcp(FAR, WEB_IP, 1, 22, packets::TCP_SYN),
            drop,
        ),
        ("drop: SYN flood", "from_uplink", flood, drop),
        (
            "pass: UDP to the node",
            "from_uplink",
            packets::frame_v4(
                FAR,
                NODE,
                packets::PROTO_UDP,
                &packets::udp(1, 53, b"bench"),
            ),
            pass,
        ),
        // Not a SYN: SYNs meet the zero SYN budget set above.
        (
            "pass: allowed by policy (no CT) to a container",
            "from_uplink",
            tcp(FAR, WEB_IP, 1, 80, packets::TCP_ACK),
            pass,
        ),
        (
            "pass: reply of an established connection",
            "from_uplink",
            tcp(FAR, WEB_IP, 443, 40000, packets::TCP_ACK),
            pass,
        ),
        (
            "pass: ARP",
            "from_uplink",
            packets::arp_request(FAR, NODE),
            pass,
        ),
    ];
    // The SYN-flood row needs a budget that never refills: the bucket's
    // cost is ~2^62 ns, so it does not within the run.
    println!(
        "\ndatapath_xdp: from_uplink ns/packet via BPF_PROG_TEST_RUN (median of {SAMPLES} runs \
         of repeat {REPEAT}; {DENY} deny-listed /24s)"
    );
    let mut base = 0.0;
    for (what, name, frame, want) in rows {
        let ns = time(prog(name), &frame, want, what);
        if name == "probe_frames" {
            base = ns;
            println!("{what:>44} | {ns:6.1}");
        } else {
            println!("{what:>44} | {ns:6.1} (+{:5.1})", ns - base);
        }
    }
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut x = [0; 16];
    x[..4].copy_from_slice(&a.octets());
    x
}

/// One pps measurement: what filtered, packets dropped by it per second
/// (`None` without a filter) and packets sent per second.
struct Rate {
    what: String,
    dropped: Option<f64>,
    sent: f64,
}

fn veth_table() {
    let pair = NsPair::new("xdpbench", SUBNET);
    // `a` is the node with its uplink `veth-a`; `b` is outside.
    let bad = Ipv4Addr::from(deny_prefix(DENY - 1)).octets();
    let src = Ipv4Addr::new(bad[0], bad[1], bad[2], 9);
    pair.b
        .exec_ok(&["ip", "addr", "add", &format!("{src}/32"), "dev", pair.if_b]);
    // The node answers ARP for its address only; the sender needs its MAC.
    pair.b
        .exec_ok(&["ping", "-c", "1", "-W", "1", &pair.ip_a.to_string()]);
    let target = SocketAddr::from((pair.ip_a, 9));
    let send = || -> f64 {
        pair.b.run_in(|| {
            let s = UdpSocket::bind((src, 0)).expect("bind sender");
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(SECONDS) {
                for _ in 0..256 {
                    if s.send_to(b"porin-bench", target).is_ok() {
                        sent += 1;
                    }
                }
            }
            sent as f64 / start.elapsed().as_secs_f64()
        })
    };
    let mut rates = Vec::new();

    rates.push(Rate {
        what: "no filter (stack: closed port)".into(),
        dropped: None,
        sent: send(),
    });

    for (mode, name) in [(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")] {
        let mut bpf = load();
        let ifindex = pair
            .a
            .run_in(|| porin::datapath::ifindex_of(pair.if_a))
            .unwrap();
        configure(&mut bpf, ifindex, UplinkConfig::default());
        let prog: &mut Xdp = bpf.program_mut("from_uplink").unwrap().try_into().unwrap();
        let link = match pair.a.run_in(|| prog.attach_to_if_index(ifindex, mode)) {
            Ok(l) => l,
            Err(e) => {
                println!("from_uplink {name}: cannot attach on veth: {e}");
                continue;
            }
        };
        let before = drops(&bpf);
        let sent = send();
        let dropped = (drops(&bpf) - before) as f64 / SECONDS as f64;
        let prog: &mut Xdp = bpf.program_mut("from_uplink").unwrap().try_into().unwrap();
        prog.detach(link).unwrap();
        rates.push(Rate {
            what: format!("from_uplink, {name} XDP, {DENY}-prefix LPM trie"),
            dropped: Some(dropped),
            sent,
        });
    }

    for (what, ruleset) in [
        (
            format!("nftables netdev ingress, {DENY}-element set"),
            nft_set(pair.if_a),
        ),
        (
            format!("nftables netdev ingress, {DENY} rules"),
            nft_rules(pair.if_a),
        ),
    ] {
        nft_load(&pair.a, &ruleset);
        let sent = send();
        let dropped = nft_counter(&pair.a) as f64 / SECONDS as f64;
        pair.a
            .exec_ok(&["nft", "delete", "table", "netdev", "porin_bench"]);
        rates.push(Rate {
            what,
            dropped: Some(dropped),
            sent,
        });
    }

    println!(
        "\ndatapath_xdp: UDP from a deny-listed source over a veth uplink, one sender thread, \
         {SECONDS} s each (packets per second)"
    );
    println!("{:>50} | {:>12} | {:>12}", "filter", "dropped/s", "sent/s");
    for r in rates {
        println!(
            "{:>50} | {:>12} | {:>12.0}",
            r.what,
            r.dropped.map_or("-".into(), |d| format!("{d:.0}")),
            r.sent
        );
    }
}

fn drops(bpf: &Ebpf) -> u64 {
    let arr: PerCpuArray<_, Counter> = maps::open(bpf, maps::DROPS).unwrap();
    arr.get(&(DropReason::UplinkDenyListed as u32), 0)
        .unwrap()
        .iter()
        .map(|c| c.packets)
        .sum()
}

fn prefixes() -> Vec<String> {
    (0..DENY)
        .map(|i| format!("{}/24", Ipv4Addr::from(deny_prefix(i))))
        .collect()
}

fn nft_set(dev: &str) -> String {
    format!(
        "table netdev porin_bench {{\n  set deny {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n  \
         chain ingress {{ type filter hook ingress device \"{dev}\" priority -500; policy accept;\n    \
         ip saddr @deny counter drop\n  }}\n}}\n",
        prefixes().join(", ")
    )
}

/// One rule per prefix; the sender's prefix is the last one (the worst
/// case a rule list has), and only it counts.
fn nft_rules(dev: &str) -> String {
    let p = prefixes();
    let mut s = format!(
        "table netdev porin_bench {{\n  chain ingress {{ type filter hook ingress device \"{dev}\" \
         priority -500; policy accept;\n"
    );
    for (i, pre) in p.iter().enumerate() {
        let counter = if i + 1 == p.len() { "counter " } else { "" };
        writeln!(s, "    ip saddr {pre} {counter}drop").unwrap();
    }
    s.push_str("  }\n}\n");
    s
}

fn nft_load(ns: &porin::testing::netns::Netns, ruleset: &str) {
    let path = std::env::temp_dir().join(format!("porin-bench-xdp-{}.nft", std::process::id()));
    std::fs::write(&path, ruleset).unwrap();
    ns.exec_ok(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
}

/// Packets counted by the ruleset's one counter.
fn nft_counter(ns: &porin::testing::netns::Netns) -> u64 {
    let out = ns.exec_ok(&["nft", "list", "table", "netdev", "porin_bench"]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a counter in the ruleset")
}
