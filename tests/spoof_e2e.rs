//! Anti-spoofing end to end (issue 16): `porin run` with two real Podman
//! containers, `victim` and `attacker` (the policy lets attacker send UDP
//! to victim's port 9000), and real frames:
//!
//! * the attacker's network namespace sends an ARP request claiming the
//!   victim's address (a raw `AF_PACKET` socket on its `eth0`, as `arping`
//!   would): without Porin the host's neighbour entry for the victim moves
//!   to the attacker's MAC; with Porin it stays, the drop is counted as
//!   `SPOOFED_NEIGHBOUR`, and an ARP for the attacker's own address still
//!   works;
//! * a LAN host (a namespace of the test's own behind the host end of a
//!   veth, `pu-sp9`, which is *not* listed as an uplink: the default
//!   config lists none) routes Podman's subnet through the node and sends
//!   UDP to the victim with the attacker's address as its source: without
//!   Porin the victim receives it; with Porin it does not (counted as
//!   `SPOOFED_INGRESS`), while the attacker's own datagrams still arrive.
//!
//! Addresses: 10.236.9.1/24 on the host end, .2 in the LAN namespace.
//! Nothing leaves the test's namespaces and Podman's bridge. Needs root and
//! podman.

mod common;

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{free_port, metric, scrape};
use porin::testing::{
    daemon::Daemon,
    netns::{ip_ok, Netns},
    podman::{PodmanContainer, PodmanNetwork, Spec},
    require_root,
};

const LAN_LINK: &str = "pu-sp9";
const HOST: Ipv4Addr = Ipv4Addr::new(10, 236, 9, 1);
const LAN: Ipv4Addr = Ipv4Addr::new(10, 236, 9, 2);
const PORT: u16 = 9000;
const NEIGHBOUR_SPOOF: &str = "porin_dropped_packets_total{reason=\"SPOOFED_NEIGHBOUR\"}";
const INGRESS_SPOOF: &str = "porin_dropped_packets_total{reason=\"SPOOFED_INGRESS\"}";

fn config(socket: &Path, metrics_port: u16) -> String {
    format!(
        r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  # Other containers on the machine are none of this test's business.
  unknown_workloads: allow
control:
  socket: {socket}
metrics:
  listen: 127.0.0.1:{metrics_port}
groups:
  - name: victim
    select:
      labels: {{porin-e2e: spoof-victim}}
  - name: attacker
    select:
      labels: {{porin-e2e: spoof-attacker}}
policies:
  - name: attacker-to-victim
    from: [attacker]
    to: [victim]
    protocol: udp
    ports: [{PORT}]
"#,
        socket = socket.display()
    )
}

/// Runs `f` on a thread inside the network namespace of process `pid`
/// (a container's): sockets it creates belong to that namespace.
fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/proc/{pid}/ns/net");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The MAC of `eth0` in the network namespace of `pid`.
fn eth0_mac(pid: u32) -> [u8; 6] {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-o",
            "link",
            "show",
            "eth0",
        ])
        .output()
        .expect("nsenter ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"));
    parse_mac(mac)
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, b) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("MAC {s}"));
    }
    mac
}

/// Sends one broadcast ARP request from the container of `pid` (its
/// `eth0`, its MAC) claiming `sender` and asking for `target`: what
/// `arping -s SENDER TARGET` sends.
fn send_arp(pid: u32, sender: Ipv4Addr, target: Ipv4Addr) {
    let mac = eth0_mac(pid);
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    in_netns_of(pid, || {
        // SAFETY: plain socket calls on a descriptor this closure owns and
        // closes; the address is a zeroed, filled-in sockaddr_ll.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex > 0, "eth0 in the container");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(n, f.len() as isize, "sendto: {err}");
        }
    });
}

/// The host's neighbour entry for `ip` on `bridge`: its MAC, if any.
fn host_neighbour(ip: Ipv4Addr, bridge: &str) -> Option<[u8; 6]> {
    let out = Command::new("ip")
        .args(["neigh", "show", &ip.to_string(), "dev", bridge])
        .output()
        .expect("ip neigh");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(parse_mac)
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sets the host's entry for `ip` to `mac` (reachable: an ARP may update
/// it), the truth before each attempt.
fn set_host_neighbour(ip: Ipv4Addr, mac: [u8; 6], bridge: &str) {
    ip_ok(&[
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &mac_str(mac),
        "dev",
        bridge,
        "nud",
        "reachable",
    ]);
}

/// Whether the ARP claim `claimed` sent by `pid` moves the host's entry for
/// it to the sender's MAC (entry set to `truth` first).
fn arp_claim_moves_entry(pid: u32, claimed: Ipv4Addr, truth: [u8; 6], net: &PodmanNetwork) -> bool {
    set_host_neighbour(claimed, truth, &net.bridge);
    send_arp(pid, claimed, net.gateway);
    let mine = eth0_mac(pid);
    // The host handles the ARP at once; give it a moment.
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if host_neighbour(claimed, &net.bridge) == Some(mine) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The LAN host: a namespace behind `pu-sp9` that routes Podman's subnet
/// through the node and also uses `spoofed` as a source address. The node
/// gets a host route on Podman's bridge for each of `containers`: a stale
/// bridge of another backend with the same subnet (`cni-podman0` left by a
/// CNI pass) would otherwise take the forwarded packets, and discovery
/// would find the containers' addresses not routed to them.
struct Lan {
    ns: Netns,
    routes: Vec<[String; 3]>,
}

impl Lan {
    fn new(spoofed: Ipv4Addr, containers: &[Ipv4Addr], net: &PodmanNetwork) -> Self {
        let routes: Vec<[String; 3]> = containers
            .iter()
            .map(|c| [format!("{c}/32"), "dev".to_string(), net.bridge.clone()])
            .collect();
        for r in &routes {
            let _ = Command::new("ip").args(["route", "del"]).args(r).output();
            ip_ok(&["route", "add", &r[0], &r[1], &r[2]]);
        }
        let ns = Netns::create("spoof-lan");
        let _ = Command::new("ip").args(["link", "del", LAN_LINK]).output();
        ip_ok(&[
            "link",
            "add",
            LAN_LINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        ip_ok(&["addr", "add", &format!("{HOST}/24"), "dev", LAN_LINK]);
        ip_ok(&["link", "set", LAN_LINK, "up"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{LAN}/24"), "dev", "eth0"]);
        ns.exec_ok(&["ip", "addr", "add", &format!("{spoofed}/32"), "dev", "eth0"]);
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        ns.exec_ok(&[
            "ip",
            "route",
            "add",
            &format!("{}/{}", net.subnet, net.prefix),
            "via",
            &HOST.to_string(),
        ]);
        Lan { ns, routes }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for r in &self.routes {
            let _ = Command::new("ip").args(["route", "del"]).args(r).output();
        }
        // Deleting the namespace deletes the pair; this covers a failure
        // between creating the pair and moving on.
        let _ = Command::new("ip").args(["link", "del", LAN_LINK]).output();
    }
}

/// A UDP socket on port [`PORT`] inside the victim's namespace.
fn victim_socket(pid: u32) -> UdpSocket {
    let s = in_netns_of(pid, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .expect("bind in the victim's namespace");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Whether `rx` gets a datagram carrying `tag` within `within` while
/// `send` runs every 100 ms (a first packet may wait on ARP).
fn arrives(rx: &UdpSocket, tag: &[u8], within: Duration, send: impl Fn()) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        send();
        while let Ok((n, _)) = rx.recv_from(&mut buf) {
            if &buf[..n] == tag {
                return true;
            }
        }
    }
    false
}

fn send_from_lan(lan: &Lan, src: Ipv4Addr, to: SocketAddr, tag: &[u8]) {
    lan.ns.run_in(|| {
        let s = UdpSocket::bind((src, 0)).expect("bind in the LAN namespace");
        let _ = s.send_to(tag, to);
    });
}

fn send_from_container(pid: u32, to: SocketAddr, tag: &[u8]) {
    in_netns_of(pid, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind in the container");
        let _ = s.send_to(tag, to);
    });
}

#[test]
fn arp_spoofing_and_spoofed_sources_from_the_lan_are_refused() {
    require_root("anti-spoofing end-to-end test");
    let net = PodmanNetwork::default_network();
    let victim = PodmanContainer::run(
        "spf-victim",
        &Spec {
            labels: &[("porin-e2e", "spoof-victim")],
            ..Default::default()
        },
    );
    let attacker = PodmanContainer::run(
        "spf-attacker",
        &Spec {
            labels: &[("porin-e2e", "spoof-attacker")],
            ..Default::default()
        },
    );
    let (victim_ip, attacker_ip) = (
        victim.ipv4().expect("victim address"),
        attacker.ipv4().expect("attacker address"),
    );
    let (victim_pid, attacker_pid) = (victim.pid(), attacker.pid());
    let victim_mac = eth0_mac(victim_pid);
    let attacker_mac = eth0_mac(attacker_pid);
    let lan = Lan::new(attacker_ip, &[victim_ip, attacker_ip], net);
    let rx = victim_socket(victim_pid);
    let to_victim = SocketAddr::from((victim_ip, PORT));
    let spoof = || send_from_lan(&lan, attacker_ip, to_victim, b"from-lan");
    let genuine = || send_from_container(attacker_pid, to_victim, b"from-attacker");

    // Without Porin both attacks work (the baseline is real).
    assert!(
        arp_claim_moves_entry(attacker_pid, victim_ip, victim_mac, net),
        "baseline: the attacker's ARP claim moves the host's entry for the victim"
    );
    set_host_neighbour(victim_ip, victim_mac, &net.bridge);
    assert!(
        arrives(&rx, b"from-lan", Duration::from_secs(5), spoof),
        "baseline: the LAN host's datagram from the attacker's address reaches the victim"
    );

    let dir = std::env::temp_dir().join(format!("porin-t-spoof-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("porin.yaml");
    let port = free_port();
    std::fs::write(&cfg, config(&dir.join("porin.sock"), port)).unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &cfg);
    // Other containers may be running on the machine: wait until ours are
    // both enforced (their veths attached).
    let mut enforced = 0;
    while enforced < 2 {
        daemon.wait_for(
            |l| {
                l.contains("endpoint +")
                    && (l.contains(victim.name.as_str()) || l.contains(attacker.name.as_str()))
            },
            Duration::from_secs(20),
        );
        enforced += 1;
    }
    daemon.wait_for(
        |l| l.contains("policy generation") && !l.contains("FAILED"),
        Duration::from_secs(20),
    );
    // Enforced once the policy lets the attacker's own datagrams through.
    assert!(
        arrives(&rx, b"from-attacker", Duration::from_secs(20), genuine),
        "the attacker's own datagrams reach the victim (the policy allows them)"
    );

    // ARP: the claim of the victim's address is dropped at the attacker's
    // veth; its own address is still announced.
    assert!(
        !arp_claim_moves_entry(attacker_pid, victim_ip, victim_mac, net),
        "the attacker's ARP claim for the victim's address is refused"
    );
    assert_eq!(
        host_neighbour(victim_ip, &net.bridge),
        Some(victim_mac),
        "the host still has the victim's MAC"
    );
    let _ = Command::new("ip")
        .args(["neigh", "del", &attacker_ip.to_string(), "dev", &net.bridge])
        .output();
    assert!(
        arp_claim_moves_entry(attacker_pid, attacker_ip, [0x02, 0, 0, 0, 0, 9], net),
        "the attacker's ARP for its own address still works"
    );
    assert_eq!(host_neighbour(attacker_ip, &net.bridge), Some(attacker_mac));
    let metrics = scrape(port);
    assert!(
        metric(&metrics, NEIGHBOUR_SPOOF) >= 1.0,
        "the refused claim is counted: {NEIGHBOUR_SPOOF}"
    );

    // The LAN host using the attacker's address: refused at the victim's
    // veth (it did not come in from the attacker's), though the policy
    // allows the attacker's identity; the attacker itself still gets in.
    assert!(
        !arrives(&rx, b"from-lan", Duration::from_secs(2), spoof),
        "the LAN host's datagram from the attacker's address is refused"
    );
    assert!(
        arrives(&rx, b"from-attacker", Duration::from_secs(5), genuine),
        "the attacker's own datagrams still arrive"
    );
    let metrics = scrape(port);
    assert!(
        metric(&metrics, INGRESS_SPOOF) >= 1.0,
        "the forged source is counted: {INGRESS_SPOOF}"
    );

    assert!(daemon.stop(), "porin run exits cleanly on SIGTERM");
    for ip in [victim_ip, attacker_ip] {
        let _ = Command::new("ip")
            .args(["neigh", "del", &ip.to_string(), "dev", &net.bridge])
            .output();
    }
    drop(lan);
    drop(victim);
    drop(attacker);
    std::fs::remove_dir_all(&dir).ok();
}
