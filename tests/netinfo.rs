//! `discovery::netinfo` against real namespaces: a "container" is a process
//! started inside a network namespace the test makes, connected to the host
//! by a veth pair the way Podman and CNI connect theirs.
//!
//! Needs root (CI runs as root); without it each test fails loudly.

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt,
    process::{Child, Command},
    time::{Duration, Instant},
};

use porin::{
    discovery::netinfo::{net_info, HostPeer, IpPrefix, NetnsSource, Operation},
    testing::{
        netns::{ip_ok, Netns},
        require_root,
    },
};

/// A process sleeping inside a namespace, killed (by its pid) on drop.
struct Sleeper(Child);

impl Sleeper {
    /// Starts `sleep 30` in `ns` and waits until it has entered it:
    /// `ip netns exec` runs in the host namespace until it calls setns, and
    /// then execs `sleep` under the same pid.
    fn start(ns: &Netns) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "30"])
            .spawn()
            .expect("spawn ip netns exec sleep");
        let sleeper = Sleeper(child);
        let want = ns_inode(&format!("/run/netns/{}", ns.name()));
        let path = format!("/proc/{}/ns/net", sleeper.pid());
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns_inode(&path) != want {
            assert!(
                Instant::now() < deadline,
                "sleep never entered {}",
                ns.name()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        sleeper
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A veth end in the host namespace, deleted (with its peer) on drop.
struct HostVeth(String);

impl Drop for HostVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn ns_inode(path: &str) -> u64 {
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect();
    bytes.try_into().expect("six bytes")
}

fn prefix(addr: &str, prefix_len: u8) -> IpPrefix {
    IpPrefix {
        addr: addr.parse::<IpAddr>().unwrap(),
        prefix_len,
    }
}

#[test]
fn a_container_on_a_host_veth_is_reported_with_its_peer() {
    require_root("a_container_on_a_host_veth_is_reported_with_its_peer");
    let ns = Netns::create("ni-veth");
    let host_if = format!("pni{}h", std::process::id() % 10000);
    // A leftover of an aborted run with the same name.
    let _ = Command::new("ip").args(["link", "del", &host_if]).output();
    // The container end is created directly inside the namespace, so an
    // "eth0" of the host never collides with it.
    ip_ok(&[
        "link",
        "add",
        &host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    let _veth = HostVeth(host_if.clone());
    ip_ok(&["link", "set", &host_if, "up"]);
    ns.exec_ok(&["ip", "addr", "add", "10.232.7.2/24", "dev", "eth0"]);
    ns.exec_ok(&[
        "ip",
        "addr",
        "add",
        "fd00:232:7::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
    // The host routes the two addresses to the veth (as a runtime's bridge
    // or a routed setup does); a third address, set inside only, is not
    // routed there and gets reported apart. The routes go with the veth.
    ip_ok(&["route", "add", "10.232.7.2/32", "dev", &host_if]);
    ip_ok(&["-6", "route", "add", "fd00:232:7::2/128", "dev", &host_if]);
    ns.exec_ok(&["ip", "addr", "add", "10.232.8.9/32", "dev", "eth0"]);

    let mac = parse_mac(&ns.exec_ok(&["cat", "/sys/class/net/eth0/address"]));
    let ifindex: u32 = ns
        .exec_ok(&["cat", "/sys/class/net/eth0/ifindex"])
        .trim()
        .parse()
        .unwrap();
    let host_ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{host_if}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let sleeper = Sleeper::start(&ns);
    let info = net_info(sleeper.pid()).expect("net_info");
    println!("net_info({}) = {info:#?}", sleeper.pid());

    assert!(!info.host_network);
    assert_eq!(
        info.netns_inode,
        ns_inode(&format!("/run/netns/{}", ns.name()))
    );
    assert_eq!(info.interfaces.len(), 1, "only eth0 besides lo");
    let eth0 = &info.interfaces[0];
    assert_eq!(eth0.name, "eth0");
    assert_eq!(eth0.ifindex, ifindex);
    assert_eq!(eth0.mac, Some(mac));
    for want in [prefix("10.232.7.2", 24), prefix("fd00:232:7::2", 64)] {
        assert!(eth0.addrs.contains(&want), "{want} in {:?}", eth0.addrs);
    }
    // Anything else can only be the IPv6 link-local address.
    for other in &eth0.addrs {
        let is_link_local = matches!(other.addr, IpAddr::V6(a) if a.segments()[0] == 0xfe80);
        assert!(
            other.addr.to_string().starts_with("10.232.7.2")
                || other.addr.to_string() == "fd00:232:7::2"
                || is_link_local,
            "unexpected address {other}"
        );
    }
    assert_eq!(
        eth0.host_peer,
        Some(HostPeer {
            ifindex: host_ifindex,
            name: host_if.clone(),
            master: None,
        })
    );
    assert_eq!(
        eth0.unrouted,
        vec![prefix("10.232.8.9", 32)],
        "an address the host does not route to the veth gets no identity"
    );

    // What one container costs discovery.
    const CALLS: u32 = 100;
    let start = Instant::now();
    for _ in 0..CALLS {
        let again = net_info(sleeper.pid()).expect("net_info");
        assert_eq!(again, info, "the answer is stable");
    }
    let per_call = start.elapsed() / CALLS;
    println!("net_info: {per_call:?} per call (average of {CALLS}, one veth, 3 addresses)");
}

#[test]
fn a_host_network_process_is_reported_as_such() {
    require_root("a_host_network_process_is_reported_as_such");
    let info = net_info(std::process::id()).expect("net_info of ourselves");
    assert!(info.host_network);
    assert!(
        info.interfaces.is_empty(),
        "the host's interfaces are not listed"
    );
    assert_eq!(info.netns_inode, ns_inode("/proc/self/ns/net"));
}

#[test]
fn a_namespace_with_only_loopback_has_no_interfaces() {
    require_root("a_namespace_with_only_loopback_has_no_interfaces");
    let ns = Netns::create("ni-empty");
    let sleeper = Sleeper::start(&ns);
    let info = net_info(sleeper.pid()).expect("net_info");
    assert!(!info.host_network);
    assert_eq!(
        info.netns_inode,
        ns_inode(&format!("/run/netns/{}", ns.name()))
    );
    assert_eq!(info.interfaces, vec![], "lo is not listed");
}

#[test]
fn a_veth_to_another_container_has_no_host_peer() {
    require_root("a_veth_to_another_container_has_no_host_peer");
    let a = Netns::create("ni-third-a");
    let b = Netns::create("ni-third-b");
    // No addresses needed: only the link's peer matters here.
    ip_ok(&[
        "link",
        "add",
        "eth0",
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ]);
    let sleeper = Sleeper::start(&a);
    let info = net_info(sleeper.pid()).expect("net_info");
    assert_eq!(info.interfaces.len(), 1);
    assert_eq!(info.interfaces[0].name, "eth0");
    assert_eq!(
        info.interfaces[0].host_peer, None,
        "the peer is in a third namespace, not on the host"
    );
}

#[test]
fn a_missing_pid_is_an_error_naming_it() {
    require_root("a_missing_pid_is_an_error_naming_it");
    // Above pid_max, so it cannot exist.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = pid_max + 1;
    let err = net_info(pid).expect_err("no such process");
    assert_eq!(err.netns, NetnsSource::Process(pid));
    assert_eq!(err.op, Operation::OpenNamespace);
    assert!(err.is_gone());
    let text = err.to_string();
    assert!(text.contains(&pid.to_string()), "{text}");
}
