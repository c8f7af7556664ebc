//! HTTP rules on the client's side end to end: `porin run` in enforce mode,
//! a real Podman container as the client and a TCP server the test runs on
//! the host itself, bound to Podman's bridge address. The policy
//! `from: [cli] to: [host]` with `http:` rules is judged at the client's
//! `from_container`; a denied request is answered with Porin's 403 sent
//! down the client's veth and never reaches the server. Needs root and
//! podman.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use porin::testing::{
    daemon::{test_bpffs, BpffsGuard, Daemon, Exclusive},
    netns::Netns,
    podman::{podman, PodmanContainer, Spec},
    require_root,
    world::WorldHost,
};

/// The port the policy opens, and one next to it that no policy names.
/// Ports of this test's own (other tests' servers use others).
const PORT: u16 = 18431;
const CLOSED_PORT: u16 = 18432;
/// The world host's port with HTTP rules, and its httpd's (unused here).
const WORLD_PORT: u16 = 18433;
const WORLD_HTTPD_PORT: u16 = 18434;
const CGROUP: &str = "/porin-t-http-egress-e2e";

fn config(bpffs: &Path, socket: &Path) -> String {
    format!(
        r#"version: 1
log:
  level: info
bpffs: {bpffs}
enforcement:
  mode: enforce
  unknown_workloads: quarantine
  # The gate goes on a parent of this test's own: on /libpod_parent it
  # would hold back other tests' containers.
  quarantine_cgroups: [{CGROUP}]
groups:
  - name: cli
    select:
      labels: {{porin-http-egress-e2e: cli}}
ground_rules:
  internet_egress: deny
  same_group: allow
  cross_group: deny
  host_ingress: deny
  host_egress: deny
policies:
  - name: scrape-the-host
    from: [cli]
    to: [host]
    protocol: tcp
    ports: [{PORT}]
    http:
      - method: GET
        path: /metrics
  - name: scrape-the-world
    from: [cli]
    to: [world]
    protocol: tcp
    ports: [{WORLD_PORT}]
    http:
      - method: GET
        path: /metrics
control:
  socket: {socket}
"#,
        bpffs = bpffs.display(),
        socket = socket.display(),
    )
}

/// What one accepted connection received, and how it ended.
#[derive(Debug)]
struct Received {
    bytes: Vec<u8>,
    /// `eof`, `reset`, `timeout` or another error's kind.
    end: String,
}

impl Received {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// A TCP server on the host: answers `GET /metrics` with 200 and anything
/// else with 404, and reports what every accepted connection received.
/// Stopped (its thread joined) on drop.
struct HostServer {
    got: mpsc::Receiver<Received>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostServer {
    fn start(addr: SocketAddrV4) -> Self {
        Self::serve(TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (tx, got) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if tx.send(serve(stream)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
        HostServer {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// The next accepted connection's report, if one comes within `within`.
    fn next(&self, within: Duration) -> Option<Received> {
        self.got.recv_timeout(within).ok()
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a request head, answers it, then reads on until the client ends
/// the connection (or 3 s pass).
fn serve(mut s: TcpStream) -> Received {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut bytes = Vec::new();
    let mut answered = false;
    let mut buf = [0u8; 4096];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof".to_string(),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset".to_string(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break "timeout".to_string()
            }
            Err(e) => break format!("{:?}", e.kind()),
        }
        if !answered && bytes.windows(4).any(|w| w == b"\r\n\r\n") {
            answered = true;
            let answer: &[u8] = if bytes.starts_with(b"GET /metrics ") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nmetrics-body\n"
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = s.write_all(answer);
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    };
    Received { bytes, end }
}

/// Turns transmit checksum offload of `dev` off (`ETHTOOL_STXCSUM`, what
/// `ethtool -K DEV tx off` does), without needing ethtool.
fn tx_checksum_off(dev: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    assert!(dev.len() < libc::IFNAMSIZ, "{dev}: name too long");
    // SAFETY: plain system calls on a socket owned here; `ifr` points at
    // `value`, which outlives the call.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, b) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
            *d = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, 0, "{dev}: tx checksum off: {err}");
    }
}

/// The `Tcp:` lines of `/proc/net/snmp` in `ns`.
fn tcp_counters(ns: &Netns) -> String {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Tcp:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `Tcp:` lines of `/proc/net/snmp` in container `c`.
fn container_tcp_counters(c: &PodmanContainer) -> String {
    let out = podman(&["exec", &c.name, "cat", "/proc/net/snmp"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("Tcp:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last 200 flow events, as JSON lines.
fn flows(socket: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["flows", "--socket"])
        .arg(socket)
        .args(["-n", "200", "-o", "json"])
        .output()
        .expect("porin flows");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `script`'s output (a `printf` / `sleep` pipeline) to `ip:port`
/// with `nc` from `c`; returns what came back.
fn raw(c: &PodmanContainer, ip: Ipv4Addr, port: u16, script: &str) -> String {
    let cmd = format!("({script}) | timeout 5 nc {ip} {port}");
    let out = podman(&["exec", &c.name, "sh", "-c", &cmd]);
    if !out.stderr.is_empty() {
        eprintln!(
            "`{cmd}` ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const GET_METRICS: &str = r"printf 'GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n'; sleep 1";
const POST_ADMIN: &str =
    r"printf 'POST /admin HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\nhello'; sleep 1";
const DENIED: &str = "HTTP/1.1 403 Forbidden";

#[test]
fn client_side_http_rules_answer_403_and_keep_the_request_from_the_server() {
    require_root("client-side HTTP rules end-to-end test");
    // Held from the baseline on: another test's daemon would judge this
    // test's container by its own policy meanwhile.
    let _exclusive = Exclusive::acquire();
    let cli = PodmanContainer::run(
        "hx-cli",
        &Spec {
            labels: &[("porin-http-egress-e2e", "cli")],
            ..Default::default()
        },
    );
    // The host's address on Podman's bridge, as the container sees it.
    let gw: Ipv4Addr = cli
        .inspect("{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}")
        .parse()
        .expect("the container's gateway address");
    assert_eq!(
        gw.octets()[..2],
        [10, 88],
        "only Podman's bridge network is used"
    );
    let server = HostServer::start(SocketAddrV4::new(gw, PORT));
    let closed = HostServer::start(SocketAddrV4::new(gw, CLOSED_PORT));
    // A server in the world, behind a bridge port that computes TCP
    // checksums in software (`skb_checksum_help`, the computation a NIC's
    // checksum offload does on a real uplink): a packet whose checksum
    // field does not fit its checksum state arrives corrupt there.
    let world = WorldHost::start("hx", 43, WORLD_HTTPD_PORT);
    tx_checksum_off(world.veth());
    let world_server = HostServer::serve(world.netns.run_in(|| {
        TcpListener::bind(SocketAddrV4::new(world.ip, WORLD_PORT)).expect("bind in the world")
    }));

    // Baseline without Porin: both servers answer, and a POST reaches one.
    let out = raw(&cli, gw, PORT, GET_METRICS);
    assert!(out.contains("metrics-body"), "baseline GET: {out:?}");
    let out = raw(&cli, gw, PORT, POST_ADMIN);
    assert!(out.starts_with("HTTP/1.1 404"), "baseline POST: {out:?}");
    let out = raw(&cli, gw, CLOSED_PORT, GET_METRICS);
    assert!(out.contains("metrics-body"), "baseline other port: {out:?}");
    let out = raw(&cli, world.ip, WORLD_PORT, POST_ADMIN);
    assert!(out.starts_with("HTTP/1.1 404"), "baseline world: {out:?}");
    let seen: Vec<String> = [&server, &server, &closed, &world_server]
        .iter()
        .map(|s| s.next(Duration::from_secs(5)).expect("a connection").text())
        .collect();
    assert!(seen[1].contains("POST /admin"), "baseline: {seen:?}");
    assert!(seen[3].contains("POST /admin"), "baseline: {seen:?}");

    let bpffs = BpffsGuard::new(test_bpffs("http-egress-e2e"));
    // A gate left on this test's cgroup by an aborted run.
    porin::datapath::gate::uninstall(&bpffs.dir).expect("remove a leftover gate");
    let dir = std::env::temp_dir().join(format!("porin-t-http-egress-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("porin.yaml");
    let socket = dir.join("porin.sock");
    std::fs::write(&config_path, config(&bpffs.dir, &socket)).unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config_path);
    daemon.wait_for(
        |l| l.contains("endpoint +") && l.contains("porin-t-hx-cli "),
        Duration::from_secs(20),
    );
    daemon.wait_for(
        |l| l.contains("endpoints enforced") && !l.contains("FAILED"),
        Duration::from_secs(20),
    );

    // Allowed: the server's own answer.
    let out = raw(&cli, gw, PORT, GET_METRICS);
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.contains("metrics-body"),
        "GET /metrics -> 200 from the host's server, got {out:?}"
    );
    let got = server
        .next(Duration::from_secs(5))
        .expect("the allowed request's connection");
    assert!(got.text().starts_with("GET /metrics "), "{got:?}");

    // Denied: the client reads Porin's 403; the server's connection was
    // opened (the handshake is allowed at L4) but ends without the request.
    let out = raw(&cli, gw, PORT, POST_ADMIN);
    assert!(
        out.starts_with(DENIED),
        "POST /admin -> 403, got {out:?}; the client's TCP counters:\n{}\nflows:\n{}",
        container_tcp_counters(&cli),
        flows(&socket)
    );
    assert!(out.contains("Denied by Porin"), "{out:?}");
    let got = server
        .next(Duration::from_secs(5))
        .expect("the denied request's connection was accepted");
    assert!(
        got.bytes.is_empty() && got.end == "reset",
        "the server never receives the POST; it is reset: {got:?} ({:?})",
        got.text()
    );

    // The same toward the world: allowed, then denied with a 403, and the
    // server's connection is reset (a RST whose checksum survived the
    // software checksum on the way), not left waiting for the request.
    let out = raw(&cli, world.ip, WORLD_PORT, GET_METRICS);
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.contains("metrics-body"),
        "GET /metrics -> 200 from the world's server, got {out:?}"
    );
    let got = world_server.next(Duration::from_secs(5)).expect("allowed");
    assert!(got.text().starts_with("GET /metrics "), "{got:?}");
    let out = raw(&cli, world.ip, WORLD_PORT, POST_ADMIN);
    assert!(out.starts_with(DENIED), "POST /admin -> 403, got {out:?}");
    let got = world_server
        .next(Duration::from_secs(5))
        .expect("the denied request's connection was accepted");
    assert!(
        got.bytes.is_empty() && got.end == "reset",
        "the world's server is reset and never receives the POST: {got:?} ({:?}); \
         its TCP counters (InCsumErrors: a corrupt RST):\n{}",
        got.text(),
        tcp_counters(&world.netns)
    );

    // Only the policy opens the host: the port next to it stays closed.
    let out = raw(&cli, gw, CLOSED_PORT, GET_METRICS);
    assert!(out.is_empty(), "no policy for {CLOSED_PORT}: got {out:?}");
    // A connection that got through would have been reported by now (its
    // server gives up reading after 3 s).
    let got = closed.next(Duration::from_secs(4));
    assert!(got.is_none(), "the closed port saw a connection: {got:?}");

    // The decisions are in the flow events, egress, with method and path.
    let text = flows(&socket);
    let http: Vec<&str> = text.lines().filter(|l| l.contains("L7_HTTP")).collect();
    assert!(
        http.iter()
            .any(|l| l.contains("FORWARDED") && l.contains("/metrics")),
        "an allowed request event: {text}"
    );
    assert!(
        http.iter()
            .any(|l| l.contains("HTTP_DENIED") && l.contains("/admin") && l.contains("POST")),
        "a denied request event: {text}"
    );

    assert!(daemon.stop(), "daemon stops cleanly");
    drop(bpffs);
    let _ = std::fs::remove_dir_all(&dir);
}
