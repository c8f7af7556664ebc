//! Policy between two network namespaces with real TCP traffic, through the
//! datapath manager (`Datapath::apply`), in a form that runs on any kernel of
//! the VM matrix (`test-vm/`) as well as on the build machine: namespaces,
//! veth and addresses are made with system calls and rtnetlink
//! ([`porin::testing::rawnet`]), servers and clients are std sockets opened
//! inside the namespaces, so no iproute2, ping or wget is needed.
//!
//! The layout: namespace `ctr` (the container, `eth0`) and namespace `node`
//! (where Porin runs; the veth's host end `hveth`), joined by the veth. The
//! node's address plays a server of group SERVER; the container is an
//! endpoint of group WEB on `hveth`.
//!
//! It also checks which attach mechanism the kernel got: TCX links on 6.6+,
//! clsact + cls_bpf through netlink before (no TCX link exists then), and
//! XDP through a `bpf_link` (5.9+) for `probe_frames` on the container side.
//!
//! Needs root (CI runs as root; the VMs' init is root).

use porin::maps;
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    maps::PerCpuArray,
    programs::{links::LinkType, loaded_links, Xdp, XdpMode},
    Ebpf,
};
use porin::{
    config::{HttpPath, HttpRule, Loc, Method},
    datapath::{Datapath, Veth, FROM_CONTAINER, TO_CONTAINER},
    ebpf,
    kernel::{KernelFeatures, Support, TcAttach},
    policy::{http::compile_rules, Compiled},
    testing::{rawnet::RawPair, require_root},
};
use porin_common::{
    datapath::{action, identity, mode, Counter, Direction, DropReason, EndpointInfo, Identity},
    datapath::{PolicyKey, PolicyValue},
    probe::FrameClass,
};

const WEB: Identity = identity::GROUP_BASE + 11;
const SERVER: Identity = identity::GROUP_BASE + 12;
const TCP: u8 = 6;
/// Served in `node`: allowed by the first policy.
const ALLOWED: u16 = 8080;
/// Served in `node`: never allowed.
const DENIED: u16 = 9090;
/// Served in `ctr`: allowed (ingress) by the second policy only.
const INGRESS_PORT: u16 = 7070;
/// Long enough for a handshake in a TCG VM; a dropped SYN times out.
const ALLOWED_TIMEOUT: Duration = Duration::from_secs(5);
const DENIED_TIMEOUT: Duration = Duration::from_millis(1500);

/// A TCP server that answers "ok" to every connection, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// `listener` was bound inside its namespace; the socket stays there.
    fn start(listener: TcpListener) -> Self {
        Self::serve(listener, |mut s| {
            let _ = s.write_all(b"ok");
        })
    }

    /// Runs `handle` on every accepted connection (blocking socket).
    fn serve(listener: TcpListener, handle: impl Fn(TcpStream) + Send + 'static) -> Self {
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        handle(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects to `ip:port` and reads the answer: Ok("ok") when the exchange
/// went through, the error otherwise (a dropped SYN gives `TimedOut`).
fn exchange(ip: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

fn endpoint(mode: u8) -> EndpointInfo {
    EndpointInfo::new(WEB, mode)
}

/// The container's record as the compiler makes it: its address carried
/// by its veth `ifindex` (the owner anti-spoofing checks).
fn member(ifindex: u32, addr: std::net::Ipv4Addr) -> porin::policy::Member {
    porin::policy::Member {
        endpoint: "ctr".into(),
        identity: WEB,
        mode: mode::ENFORCE,
        veths: vec![(ifindex, "hveth".into())],
        addrs: vec![addr.into()],
        addr_veths: vec![(addr.into(), ifindex)],
        bridges: Vec::new(),
    }
}

fn allow(dir: Direction, port: u16) -> (PolicyKey, PolicyValue) {
    (
        PolicyKey::new(WEB, SERVER, dir, TCP, port),
        PolicyValue::allow(1),
    )
}

fn drops(bpf: &Ebpf, reason: DropReason) -> u64 {
    let arr: PerCpuArray<_, Counter> = maps::open(bpf, maps::DROPS).expect("array");
    arr.get(&(reason as u32), 0)
        .expect("read counter")
        .iter()
        .map(|c| c.packets)
        .sum()
}

fn frames(bpf: &Ebpf, class: FrameClass) -> u64 {
    let arr: PerCpuArray<_, u64> = maps::open(bpf, maps::PROBE).expect("array");
    arr.get(&(class as u32), 0)
        .expect("read counter")
        .iter()
        .sum()
}

fn program_id(bpf: &Ebpf, name: &str) -> u32 {
    bpf.program(name)
        .unwrap_or_else(|| panic!("{name} in the object"))
        .info()
        .unwrap_or_else(|e| panic!("info of {name}: {e}"))
        .id()
}

/// Types of the kernel's links that belong to program `id`.
fn links_of(id: u32) -> Vec<LinkType> {
    loaded_links()
        .filter_map(Result::ok)
        .filter(|l| l.program_id() == id)
        .filter_map(|l| l.link_type().ok())
        .collect()
}

#[test]
fn policy_is_enforced_between_two_namespaces_with_the_kernels_attach_mode() {
    require_root("policy_is_enforced_between_two_namespaces_with_the_kernels_attach_mode");
    let features = KernelFeatures::probe();
    let strategy = features.attach_strategy();
    println!("{features}");

    let net = RawPair::new("eth0", "hveth", 1);
    let (ctr, node) = (&net.a, &net.b);
    let (ctr_ip, node_ip) = (net.ip_a, net.ip_b);
    let _allowed =
        Server::start(node.run_in(|| {
            TcpListener::bind((node_ip, ALLOWED)).expect("bind the allowed port in node")
        }));
    let _denied =
        Server::start(node.run_in(|| {
            TcpListener::bind((node_ip, DENIED)).expect("bind the denied port in node")
        }));
    let _ingress = Server::start(ctr.run_in(|| {
        TcpListener::bind((ctr_ip, INGRESS_PORT)).expect("bind the ingress port in ctr")
    }));
    let from_ctr = |port, timeout| ctr.run_in(|| exchange(node_ip, port, timeout));
    let from_node = |port, timeout| node.run_in(|| exchange(ctr_ip, port, timeout));

    // Without Porin everything answers: later failures are Porin's doing.
    for port in [ALLOWED, DENIED] {
        assert_eq!(
            from_ctr(port, ALLOWED_TIMEOUT).expect("baseline ctr → node"),
            "ok"
        );
    }
    assert_eq!(
        from_node(INGRESS_PORT, ALLOWED_TIMEOUT).expect("baseline node → ctr"),
        "ok"
    );

    // XDP on the container's end through the kernel's preferred mechanism.
    let mut probe = ebpf::open().expect("open eBPF object");
    ebpf::load_program::<Xdp>(&mut probe, "probe_frames").expect("load probe_frames");
    {
        let prog: &mut Xdp = probe
            .program_mut("probe_frames")
            .expect("probe_frames")
            .try_into()
            .expect("XDP");
        ctr.run_in(|| prog.attach(net.if_a, XdpMode::Skb))
            .expect("attach probe_frames to eth0");
    }
    let probe_links = links_of(program_id(&probe, "probe_frames"));
    if features.xdp_link == Support::Yes {
        assert_eq!(
            probe_links,
            [LinkType::Xdp],
            "XDP attached through a bpf_link"
        );
    } else {
        assert!(probe_links.is_empty(), "XDP attached through netlink");
    }

    // Policy 1: WEB may reach SERVER:8080; nothing else.
    let veths = [Veth {
        ifindex: net.index_b,
        name: net.if_b.to_owned(),
    }];
    let mut policy = Compiled::default();
    policy
        .endpoints
        .insert(net.index_b, endpoint(mode::ENFORCE));
    policy.ip4.insert(ctr_ip.octets(), WEB);
    policy.ip4.insert(node_ip.octets(), SERVER);
    policy.members.push(member(net.index_b, ctr_ip));
    policy.policy.extend([allow(Direction::Egress, ALLOWED)]);
    let mut dp = Datapath::load(strategy.tc, None).expect("load the datapath");
    let report = node.run_in(|| dp.apply(&policy, &veths).expect("apply policy 1"));
    assert_eq!(report.attached, ["hveth"], "{report:?}");
    assert!(report.attach_failures.is_empty(), "{report:?}");

    let tc_links: Vec<LinkType> = [FROM_CONTAINER, TO_CONTAINER]
        .into_iter()
        .flat_map(|p| links_of(program_id(dp.ebpf(), p)))
        .collect();
    match strategy.tc {
        TcAttach::Tcx => assert_eq!(tc_links, [LinkType::Tcx, LinkType::Tcx], "TCX links"),
        TcAttach::ClsactNetlink => assert!(
            tc_links.is_empty(),
            "clsact + cls_bpf through netlink: no bpf_link, found {tc_links:?}"
        ),
    }

    assert_eq!(
        from_ctr(ALLOWED, ALLOWED_TIMEOUT).expect("allowed egress (reply by conntrack)"),
        "ok"
    );
    let denied = from_ctr(DENIED, DENIED_TIMEOUT);
    assert!(
        matches!(&denied, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "ctr → node:{DENIED} must be dropped, got {denied:?}"
    );
    let denied_in = from_node(INGRESS_PORT, DENIED_TIMEOUT);
    assert!(
        matches!(&denied_in, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "node → ctr:{INGRESS_PORT} must be dropped (no ingress rule), got {denied_in:?}"
    );
    let denied_count = drops(dp.ebpf(), DropReason::PolicyDenied);
    assert!(denied_count >= 2, "PolicyDenied drops: {denied_count}");
    assert!(
        frames(&probe, FrameClass::Ipv4) >= 2,
        "probe_frames saw the replies on eth0"
    );

    // Policy 2, applied while attached: ingress 7070 opens, 8080 closes.
    policy.policy.clear();
    policy
        .policy
        .extend([allow(Direction::Ingress, INGRESS_PORT)]);
    node.run_in(|| dp.apply(&policy, &veths).expect("apply policy 2"));
    assert_eq!(
        from_node(INGRESS_PORT, ALLOWED_TIMEOUT).expect("ingress allowed by policy 2"),
        "ok"
    );
    let closed = from_ctr(ALLOWED, DENIED_TIMEOUT);
    assert!(
        matches!(&closed, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "ctr → node:{ALLOWED} must be dropped after policy 2, got {closed:?}"
    );

    // Audit mode: the same denial passes and is counted.
    policy.endpoints.insert(net.index_b, endpoint(mode::AUDIT));
    node.run_in(|| dp.apply(&policy, &veths).expect("apply audit mode"));
    let before = drops(dp.ebpf(), DropReason::PolicyDenied);
    assert_eq!(
        from_ctr(DENIED, ALLOWED_TIMEOUT).expect("audit mode passes"),
        "ok"
    );
    assert!(drops(dp.ebpf(), DropReason::PolicyDenied) > before);

    // No endpoints: the programs are detached and traffic flows again.
    let report = node.run_in(|| {
        dp.apply(&Compiled::default(), &[])
            .expect("apply the empty policy")
    });
    assert_eq!(report.detached, ["hveth"], "{report:?}");
    assert_eq!(
        from_ctr(ALLOWED, ALLOWED_TIMEOUT).expect("after detaching"),
        "ok"
    );
    for p in [FROM_CONTAINER, TO_CONTAINER] {
        assert!(links_of(program_id(dp.ebpf(), p)).is_empty(), "{p} links");
    }
}

/// An HTTP server inside a namespace: answers every request head with 200
/// and keeps what it received, so a test can tell a denied request never
/// reached it. Stopped on drop.
struct HttpServer {
    _server: Server,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn start(listener: TcpListener) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let server = Server::serve(listener, move |mut s| {
            let _ = s.set_read_timeout(Some(ALLOWED_TIMEOUT));
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            // Until the head's end, EOF, a reset or the timeout.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            if !head.is_empty() {
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        HttpServer {
            _server: server,
            seen,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Sends `request` in one write to `ip:port`; everything that came back.
fn http(ip: Ipv4Addr, port: u16, request: &str) -> std::io::Result<String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let mut s = TcpStream::connect_timeout(&addr, ALLOWED_TIMEOUT)?;
    s.set_read_timeout(Some(ALLOWED_TIMEOUT))?;
    s.write_all(request.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// HTTP rules on real connections through the veth, both ways: the
/// container as client (judged by `from_container`, the 403 sent down the
/// veth to it) and as server (judged by `to_container`, the 403 sent back
/// up the veth to the client). The denied request never reaches either
/// server. Runs on every kernel of the VM matrix.
#[test]
fn http_rules_answer_denied_requests_with_403_both_ways() {
    require_root("http_rules_answer_denied_requests_with_403_both_ways");
    let strategy = KernelFeatures::probe().attach_strategy();
    let net = RawPair::new("eth0", "hveth", 3);
    let (ctr, node) = (&net.a, &net.b);
    let (ctr_ip, node_ip) = (net.ip_a, net.ip_b);
    let in_node = HttpServer::start(
        node.run_in(|| TcpListener::bind((node_ip, ALLOWED)).expect("bind the HTTP port in node")),
    );
    let in_ctr =
        HttpServer::start(ctr.run_in(|| {
            TcpListener::bind((ctr_ip, INGRESS_PORT)).expect("bind the HTTP port in ctr")
        }));
    const GET: &str = "GET /metrics HTTP/1.0\r\nHost: web\r\n\r\n";
    const POST: &str = "POST /admin HTTP/1.0\r\nHost: web\r\nContent-Length: 0\r\n\r\n";
    let from_ctr = |req| ctr.run_in(|| http(node_ip, ALLOWED, req));
    let from_node = |req| node.run_in(|| http(ctr_ip, INGRESS_PORT, req));
    // Without Porin both requests are served: later refusals are Porin's.
    for req in [GET, POST] {
        assert!(from_ctr(req)
            .expect("baseline ctr → node")
            .contains("200 OK"));
        assert!(from_node(req)
            .expect("baseline node → ctr")
            .contains("200 OK"));
    }
    let served = (in_node.seen().len(), in_ctr.seen().len());

    let rules = vec![HttpRule {
        method: Method::Get,
        path: HttpPath::parse("/metrics").unwrap(),
        host: None,
        headers: vec![],
        loc: Loc { line: 1, column: 1 },
    }];
    let mut policy = Compiled::default();
    policy
        .endpoints
        .insert(net.index_b, endpoint(mode::ENFORCE));
    policy.ip4.insert(ctr_ip.octets(), WEB);
    policy.ip4.insert(node_ip.octets(), SERVER);
    policy.members.push(member(net.index_b, ctr_ip));
    let mut dp = Datapath::load(strategy.tc, None).expect("load the datapath");
    let set = compile_rules(
        &dp.http_key(),
        b"vm",
        &[(1, "scrape", &rules)],
        &mut policy.http_maps.rules,
    )
    .expect("compile the HTTP rules");
    for (dir, port) in [
        (Direction::Egress, ALLOWED),
        (Direction::Ingress, INGRESS_PORT),
    ] {
        let (key, mut value) = allow(dir, port);
        value.action = action::ALLOW_HTTP;
        policy.policy.insert(key, value);
        policy.http_maps.sets.insert(key, set);
    }
    let veths = [Veth {
        ifindex: net.index_b,
        name: net.if_b.to_owned(),
    }];
    node.run_in(|| dp.apply(&policy, &veths).expect("apply the HTTP policy"));

    for (side, client, ip, port, server, before) in [
        (
            "ctr → node (from_container)",
            ctr,
            node_ip,
            ALLOWED,
            &in_node,
            served.0,
        ),
        (
            "node → ctr (to_container)",
            node,
            ctr_ip,
            INGRESS_PORT,
            &in_ctr,
            served.1,
        ),
    ] {
        let ask = |req: &str| client.run_in(|| http(ip, port, req));
        let ok = ask(GET).unwrap_or_else(|e| panic!("{side}: allowed GET: {e}"));
        assert!(ok.contains("200 OK"), "{side}: allowed GET answered {ok:?}");
        let denied = ask(POST).unwrap_or_else(|e| panic!("{side}: denied POST: {e}"));
        assert!(
            denied.starts_with("HTTP/1.1 403 Forbidden"),
            "{side}: the client gets Porin's 403, got {denied:?}"
        );
        // What the server got under the policy.
        let seen = server.seen().split_off(before);
        assert!(
            seen.first().is_some_and(|r| r.starts_with("GET /metrics")),
            "{side}: the allowed request reached the server: {seen:?}"
        );
        assert!(
            !seen.iter().any(|r| r.starts_with("POST")),
            "{side}: the denied request reached the server: {seen:?}"
        );
    }
    assert_eq!(
        (in_node.seen().len(), in_ctr.seen().len()),
        (served.0 + 1, served.1 + 1),
        "each server got exactly the one allowed request under the policy"
    );
    assert!(drops(dp.ebpf(), DropReason::HttpDenied) >= 2);
}

/// The daemon's persistent mode on this kernel: after the datapath is
/// dropped (a daemon that stopped or crashed) its attachments keep
/// enforcing, the next load adopts them (programs replaced in place, no
/// re-attach), and `remove_everything` (`on_stop: detach`) removes them.
/// TCX kernels get pinned TCX links, older ones clsact filters.
#[test]
fn persistent_attachments_outlive_the_datapath_and_are_adopted() {
    require_root("persistent_attachments_outlive_the_datapath_and_are_adopted");
    let strategy = KernelFeatures::probe().attach_strategy();
    let net = RawPair::new("eth0", "hveth", 2);
    let (ctr, node) = (&net.a, &net.b);
    let (ctr_ip, node_ip) = (net.ip_a, net.ip_b);
    let _allowed =
        Server::start(node.run_in(|| {
            TcpListener::bind((node_ip, ALLOWED)).expect("bind the allowed port in node")
        }));
    let _denied =
        Server::start(node.run_in(|| {
            TcpListener::bind((node_ip, DENIED)).expect("bind the denied port in node")
        }));
    let from_ctr = |port, timeout| ctr.run_in(|| exchange(node_ip, port, timeout));
    assert_eq!(from_ctr(DENIED, ALLOWED_TIMEOUT).expect("baseline"), "ok");

    let dir = std::path::PathBuf::from("/sys/fs/bpf/porin-vm-persist");
    let _ = porin::datapath::persist::uninstall(&dir);
    let veths = [Veth {
        ifindex: net.index_b,
        name: net.if_b.to_owned(),
    }];
    let mut policy = Compiled::default();
    policy
        .endpoints
        .insert(net.index_b, endpoint(mode::ENFORCE));
    policy.ip4.insert(ctr_ip.octets(), WEB);
    policy.ip4.insert(node_ip.octets(), SERVER);
    policy.members.push(member(net.index_b, ctr_ip));
    policy.policy.extend([allow(Direction::Egress, ALLOWED)]);
    let enforced = || {
        from_ctr(ALLOWED, ALLOWED_TIMEOUT).ok().as_deref() == Some("ok")
            && matches!(from_ctr(DENIED, DENIED_TIMEOUT),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut)
    };
    node.run_in(|| {
        let mut dp = Datapath::load(strategy.tc, Some(&dir)).expect("load");
        let r = dp.apply(&policy, &veths).expect("apply");
        assert_eq!(r.attached, ["hveth"], "{r:?}");
    }); // dropped
    assert!(enforced(), "enforced with no datapath object left");

    let mut dp = node.run_in(|| Datapath::load(strategy.tc, Some(&dir)).expect("load again"));
    assert!(dp.adopted());
    assert_eq!(dp.attached(), ["hveth"], "the veth is adopted");
    let r = node.run_in(|| dp.apply(&policy, &veths).expect("apply after adoption"));
    assert!(r.attached.is_empty() && r.detached.is_empty(), "{r:?}");
    assert!(enforced(), "enforced after adoption");
    let tcx_pins =
        ["ingress", "egress"].map(|d| dir.join(format!("links/tcx-{d}-{}", net.index_b)).exists());
    match strategy.tc {
        TcAttach::Tcx => assert_eq!(tcx_pins, [true, true], "pinned TCX links"),
        TcAttach::ClsactNetlink => assert_eq!(tcx_pins, [false, false], "clsact filters"),
    }
    for p in [FROM_CONTAINER, TO_CONTAINER] {
        let links = links_of(program_id(dp.ebpf(), p));
        match strategy.tc {
            TcAttach::Tcx => assert_eq!(links, [LinkType::Tcx], "{p} runs in the adopted link"),
            TcAttach::ClsactNetlink => assert!(links.is_empty(), "{p}: {links:?}"),
        }
    }
    node.run_in(|| dp.remove_everything());
    assert_eq!(
        from_ctr(DENIED, ALLOWED_TIMEOUT).expect("nothing filters after removal"),
        "ok"
    );
    assert!(!dir.exists(), "pins removed");
}

/// Fails on purpose: `test-vm/run --inject-failure` runs it inside the VM to
/// prove that a failing test fails the VM and the run.
#[test]
#[ignore = "run only by test-vm/run --inject-failure (the harness self-check)"]
fn injected_failure() {
    panic!("injected failure (test-vm/run --inject-failure): the harness must report this VM as FAILED");
}
