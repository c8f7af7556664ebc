//! `from_uplink` end to end: `porin run` with an uplink that is the host
//! end of a veth into an "outside" namespace (the internet or the LAN, as
//! far as the test is concerned), a real Podman container behind it, and
//! real traffic: TCP to the container's port from an allowed and from a
//! deny-listed network, and a UDP flood from one source while another
//! source keeps sending. Needs root and podman.
//!
//! Addresses: 10.235.7.1/24 on the host end (`pu-up7`), .2-.5 in the
//! outside namespace, which routes Podman's subnet (10.88.0.0/16) through the host
//! (Podman enables forwarding). Nothing leaves the test's namespaces and
//! Podman's bridge.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::Daemon,
    netns::{ip_ok, Netns},
    podman::{PodmanContainer, Spec},
    require_root,
};

const UPLINK: &str = "pu-up7";
const HOST: Ipv4Addr = Ipv4Addr::new(10, 235, 7, 1);
/// In network `partner`.
const PARTNER: Ipv4Addr = Ipv4Addr::new(10, 235, 7, 2);
/// In network `blocklist`, the uplink's `deny_from`.
const BLOCKED: Ipv4Addr = Ipv4Addr::new(10, 235, 7, 3);
/// Two more partner addresses: the flooder and a well-behaved neighbour.
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 235, 7, 4);
const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(10, 235, 7, 5);
const UDP_PORT: u16 = 47_007;

fn config(socket: &Path) -> String {
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
networks:
  - name: partner
    cidrs: [10.235.7.2/32, 10.235.7.4/31]
  - name: blocklist
    cidrs: [10.235.7.3/32]
groups:
  - name: web
    select:
      labels: {{porin-e2e: uplink-web}}
policies:
  # The blocklist is allowed here on purpose: only the uplink's deny list
  # can stop it, so the test sees XDP at work and not TC.
  - name: partners-to-web
    from: [partner, blocklist]
    to: [web]
    protocol: tcp
    ports: [8080]
uplinks:
  - interface: {UPLINK}
    xdp_mode: auto
    deny_from: [blocklist]
    flood: {{udp_per_second: 200, burst: 200}}
  - interface: pu-missing7
"#,
        socket = socket.display()
    )
}

/// The outside namespace and its veth to the host, removed on drop.
struct Outside {
    ns: Netns,
}

impl Outside {
    fn new() -> Self {
        let ns = Netns::create("uplink-out");
        let _ = Command::new("ip").args(["link", "del", UPLINK]).output();
        ip_ok(&[
            "link",
            "add",
            UPLINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        ip_ok(&["addr", "add", &format!("{HOST}/24"), "dev", UPLINK]);
        ip_ok(&["link", "set", UPLINK, "up"]);
        for a in [PARTNER, BLOCKED, FLOODER, NEIGHBOUR] {
            ns.exec_ok(&["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
        }
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        let podman = porin::testing::podman::PodmanNetwork::default_network();
        ns.exec_ok(&[
            "ip",
            "route",
            "add",
            &format!("{}/{}", podman.subnet, podman.prefix),
            "via",
            &HOST.to_string(),
        ]);
        Outside { ns }
    }

    /// HTTP GET from source address `src`.
    fn http(&self, src: Ipv4Addr, url: &str) -> bool {
        self.ns
            .exec(&[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "2",
                "--interface",
                &src.to_string(),
                url,
            ])
            .status
            .success()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pair; this covers a failure
        // between creating the pair and moving on.
        let _ = Command::new("ip").args(["link", "del", UPLINK]).output();
    }
}

/// Polls `f` until it returns `want` or `within` passes.
fn eventually(within: Duration, want: bool, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() == want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `count` UDP datagrams from `src` to the host, `gap` apart.
fn send_udp(ns: &Netns, src: Ipv4Addr, count: u32, gap: Duration) {
    ns.run_in(|| {
        let s = UdpSocket::bind((src, 0)).expect("bind the sender");
        let to = SocketAddr::from((HOST, UDP_PORT));
        for _ in 0..count {
            // ENOBUFS under the flood is the sender's own queue: ignore.
            let _ = s.send_to(b"porin-flood", to);
            if !gap.is_zero() {
                thread::sleep(gap);
            }
        }
    });
}

#[test]
fn uplink_drops_deny_listed_and_flooding_sources_and_lets_partners_in() {
    require_root("uplink end-to-end test");
    let web = PodmanContainer::run(
        "upl-web",
        &Spec {
            labels: &[("porin-e2e", "uplink-web")],
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            ..Default::default()
        },
    );
    let web_ip = web.ipv4().expect("web has an address");
    let url = format!("http://{web_ip}:8080/");
    let outside = Outside::new();

    // Before Porin: both sources reach the container (the baseline is real).
    assert!(
        eventually(Duration::from_secs(5), true, || outside.http(PARTNER, &url)),
        "baseline: the partner reaches web across the uplink"
    );
    assert!(
        outside.http(BLOCKED, &url),
        "baseline: the blocked source reaches web without Porin"
    );

    let dir = std::env::temp_dir().join(format!("porin-t-uplink-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("porin.yaml");
    std::fs::write(&cfg, config(&dir.join("porin.sock"))).unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &cfg);
    let attached = daemon.wait_for(
        |l| l.contains(&format!("attached from_uplink to {UPLINK}")),
        Duration::from_secs(20),
    );
    assert!(
        attached.contains("native XDP") || attached.contains("generic XDP"),
        "the log says which XDP mode: {attached}"
    );
    daemon.wait_for(
        |l| l.contains("uplink pu-missing7: no such interface"),
        Duration::from_secs(5),
    );

    assert!(
        eventually(Duration::from_secs(15), false, || outside
            .http(BLOCKED, &url)),
        "the deny-listed source no longer reaches web"
    );
    assert!(
        eventually(Duration::from_secs(15), true, || outside
            .http(PARTNER, &url)),
        "the partner still reaches web:8080"
    );

    // A UDP flood from one source while another sends at half the limit.
    let rx = UdpSocket::bind((HOST, UDP_PORT)).expect("bind the receiver");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Resolve the host's MAC before the flood, so no datagram waits on ARP.
    outside
        .ns
        .exec_ok(&["ping", "-c", "1", "-W", "1", &HOST.to_string()]);
    let done = AtomicBool::new(false);
    let (mut from_flooder, mut from_neighbour) = (0u32, 0u32);
    let started = Instant::now();
    thread::scope(|s| {
        s.spawn(|| {
            thread::scope(|t| {
                t.spawn(|| send_udp(&outside.ns, FLOODER, 20_000, Duration::ZERO));
                t.spawn(|| send_udp(&outside.ns, NEIGHBOUR, 50, Duration::from_millis(10)));
            });
            done.store(true, Ordering::SeqCst);
        });
        let mut buf = [0u8; 64];
        loop {
            match rx.recv_from(&mut buf) {
                Ok((_, SocketAddr::V4(a))) if *a.ip() == FLOODER => from_flooder += 1,
                Ok((_, SocketAddr::V4(a))) if *a.ip() == NEIGHBOUR => from_neighbour += 1,
                Ok(_) => {}
                Err(_) if done.load(Ordering::SeqCst) => break,
                Err(_) => {}
            }
        }
    });
    let secs = started.elapsed().as_secs_f64();
    // The burst plus the rate over the run, with slack for timing.
    let limit = 200.0 + 200.0 * secs + 50.0;
    eprintln!(
        "flood: {from_flooder} of 20000 from the flooder, {from_neighbour} of 50 from the \
         neighbour in {secs:.2} s (limit about {limit:.0})"
    );
    assert!(
        f64::from(from_flooder) <= limit,
        "the flooder is limited: {from_flooder} datagrams in {secs:.2} s"
    );
    assert!(from_flooder >= 100, "the flooder's burst got through");
    assert!(
        from_neighbour >= 48,
        "the neighbour below the limit gets through: {from_neighbour} of 50"
    );
    assert!(
        outside.http(PARTNER, &url),
        "the partner still reaches web after the flood"
    );

    assert!(daemon.stop(), "porin run exits cleanly on SIGTERM");
    // Detached on stop: the deny-listed source gets in again.
    assert!(
        eventually(Duration::from_secs(5), true, || outside.http(BLOCKED, &url)),
        "after porin stops, the uplink no longer filters"
    );
    drop(web);
    std::fs::remove_dir_all(&dir).ok();
}
