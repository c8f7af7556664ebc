//! Enforcement outlives the daemon: fault tests with continuous traffic.
//!
//! Real `porin run` in enforce mode, real Podman containers (client, server,
//! other), real TCP. The containers run under a cgroup parent of the test's
//! own, bind-mounted as the daemon's `discovery.cgroup_root`, so the daemon
//! sees only this test's containers (never another test's), and the daemon
//! pins under a bpffs directory of the test's own.
//!
//! A probe runs sockets inside the client container's network namespace
//! while the daemon is stopped, killed, crashes and restarts:
//! - one established connection client → server:8080 (allowed) sends a
//!   message every 10 ms and checks the echo;
//! - new connections client → server:8080 (allowed) every 50 ms;
//! - connections client → other:8080 and client → server:9090 (denied)
//!   every 50 ms, which must never connect.
//!
//! Every counted failure is a wrongly dropped or wrongly passed packet; the
//! test asserts there are none across SIGTERM (`on_stop: keep`), SIGKILL, a
//! forced panic, restarts, and a replacement of an older pinned layout.
//! Needs root and podman.

use porin::maps;
use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        SchedClassifier, TcAttachType,
    },
};
use porin::testing::{
    daemon::{test_bpffs, BpffsGuard, Daemon, Exclusive},
    podman::{PodmanContainer, Spec},
    require_root,
};
use porin_common::layout::MetaRecord;

fn porin_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_porin"))
}

/// Runs `f` on a new thread inside the network namespace of process `pid`.
fn in_netns_of<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/proc/{pid}/ns/net");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// A TCP echo server bound inside a container's namespace.
fn echo_server(pid: u32, port: u16, stop: Arc<AtomicBool>) {
    let listener = in_netns_of(pid, move || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind")
    });
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stop.load(SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    thread::spawn(move || {
                        let mut buf = [0u8; 64];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

/// The probe's counts.
#[derive(Default)]
struct Counts {
    echo_ok: AtomicU64,
    echo_failed: AtomicU64,
    new_ok: AtomicU64,
    new_failed: AtomicU64,
    denied_ok: AtomicU64,
    denied_passed: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "established echoes ok {} failed {}; new allowed ok {} failed {}; \
             denied refused {} PASSED {}",
            self.echo_ok.load(SeqCst),
            self.echo_failed.load(SeqCst),
            self.new_ok.load(SeqCst),
            self.new_failed.load(SeqCst),
            self.denied_ok.load(SeqCst),
            self.denied_passed.load(SeqCst)
        )
    }
    fn wrong(&self) -> u64 {
        self.echo_failed.load(SeqCst)
            + self.new_failed.load(SeqCst)
            + self.denied_passed.load(SeqCst)
    }
}

/// Continuous traffic from the client's namespace (see the module notes).
struct Probe {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Probe {
    fn start(client_pid: u32, allowed: SocketAddr, denied: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        // The established connection.
        let stream = in_netns_of(client_pid, move || {
            TcpStream::connect_timeout(&allowed, Duration::from_secs(2))
        })
        .expect("the established connection opens");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            let mut s = stream;
            threads.push(thread::spawn(move || {
                let mut n: u64 = 0;
                while !stop.load(SeqCst) {
                    n += 1;
                    let msg = n.to_be_bytes();
                    let mut back = [0u8; 8];
                    let ok =
                        s.write_all(&msg).is_ok() && s.read_exact(&mut back).is_ok() && back == msg;
                    if ok {
                        counts.echo_ok.fetch_add(1, SeqCst);
                    } else {
                        counts.echo_failed.fetch_add(1, SeqCst);
                        eprintln!("probe: established echo {n} failed");
                        return; // the connection is broken: counted once
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        // New connections, allowed and denied, from a thread that lives in
        // the client's namespace.
        {
            let (stop, counts) = (stop.clone(), counts.clone());
            let path = format!("/proc/{client_pid}/ns/net");
            let ns = File::open(path).unwrap();
            threads.push(thread::spawn(move || {
                // SAFETY: as in `in_netns_of`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0);
                while !stop.load(SeqCst) {
                    // An allowed SYN that is dropped costs a 1 s
                    // retransmission: a 900 ms timeout counts it.
                    match TcpStream::connect_timeout(&allowed, Duration::from_millis(900)) {
                        Ok(mut s) => {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                            let mut b = [0u8; 2];
                            if s.write_all(b"hi").is_ok()
                                && s.read_exact(&mut b).is_ok()
                                && &b == b"hi"
                            {
                                counts.new_ok.fetch_add(1, SeqCst);
                            } else {
                                counts.new_failed.fetch_add(1, SeqCst);
                                eprintln!("probe: new allowed connection got no echo");
                            }
                        }
                        Err(e) => {
                            counts.new_failed.fetch_add(1, SeqCst);
                            eprintln!("probe: new allowed connection failed: {e}");
                        }
                    }
                    for d in &denied {
                        match TcpStream::connect_timeout(d, Duration::from_millis(150)) {
                            Ok(_) => {
                                counts.denied_passed.fetch_add(1, SeqCst);
                                eprintln!("probe: denied connection to {d} PASSED");
                            }
                            Err(_) => {
                                counts.denied_ok.fetch_add(1, SeqCst);
                            }
                        }
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }));
        }
        Probe {
            stop,
            counts,
            threads,
        }
    }

    fn finish(self) -> Arc<Counts> {
        self.stop.store(true, SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        self.counts
    }
}

/// Whether a connection from the client's namespace to `to` opens.
fn connects(client_pid: u32, to: SocketAddr) -> bool {
    in_netns_of(client_pid, move || {
        TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok()
    })
}

/// Whether `f` holds within 3 s.
fn eventually(f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A private cgroup parent for this test's containers, bind-mounted where
/// the daemon's discovery looks.
struct CgroupScope {
    parent: String,
    mount: PathBuf,
    mounted: bool,
}

impl CgroupScope {
    fn new(tag: &str, dir: &Path) -> Self {
        let parent = format!("/porin-lc-{tag}");
        let mount = dir.join("cg");
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
        std::fs::create_dir_all(&mount).unwrap();
        let scope = CgroupScope {
            parent,
            mount,
            mounted: false,
        };
        scope.remove_parent(); // a leftover of an aborted run
        scope
    }

    /// The container-runtime argument.
    fn arg(&self) -> String {
        format!("--cgroup-parent={}", self.parent)
    }

    /// After the first container exists (podman created the parent).
    fn mount(&mut self) {
        let candidates = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ];
        let src = candidates
            .iter()
            .map(|c| PathBuf::from(format!("{c}{}", self.parent)))
            .find(|p| {
                std::fs::read_dir(p).is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("libpod-"))
                })
            })
            .expect("the containers' cgroup parent");
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(&src)
            .arg(&self.mount)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "bind-mount {} on {}",
            src.display(),
            self.mount.display()
        );
        self.mounted = true;
    }
}

impl CgroupScope {
    /// Removes the (empty) parent cgroup from every hierarchy.
    fn remove_parent(&self) {
        let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        // Children first (podman puts conmon in `<parent>/conmon`); a
        // cgroup directory goes with rmdir once it has no processes.
        fn rmdir_tree(d: &Path) {
            if let Ok(entries) = std::fs::read_dir(d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        rmdir_tree(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        for r in roots.flatten() {
            rmdir_tree(Path::new(&format!("{}{}", r.path().display(), self.parent)));
        }
        rmdir_tree(Path::new(&format!("/sys/fs/cgroup{}", self.parent)));
    }
}

impl Drop for CgroupScope {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        // After the containers (dropped first, declared first in `World`).
        self.remove_parent();
    }
}

fn config(dir: &Path, cg: &Path, bpffs: &Path, tag: &str, on_stop: &str) -> String {
    format!(
        r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  unknown_workloads: quarantine
  quarantine_cgroups: [/porin-lc-{tag}]
  on_stop: {on_stop}
discovery:
  cgroup_root: {cg}
  runtimes: [podman]
control:
  socket: {sock}
bpffs: {bpffs}
groups:
  - name: client
    select:
      labels: {{lc: client-{tag}}}
  - name: server
    select:
      labels: {{lc: server-{tag}}}
  - name: other
    select:
      labels: {{lc: other-{tag}}}
ground_rules:
  internet_egress: deny
  same_group: allow
  cross_group: deny
  host_ingress: deny
  host_egress: deny
policies:
  - name: client-to-server
    from: [client]
    to: [server]
    protocol: tcp
    ports: [8080]
"#,
        cg = cg.display(),
        sock = dir.join("porin.sock").display(),
        bpffs = bpffs.display(),
    )
}

/// Three containers under a private cgroup parent, echo servers, a config.
struct World {
    client: PodmanContainer,
    server: PodmanContainer,
    other: PodmanContainer,
    _cg: CgroupScope,
    bpffs: BpffsGuard,
    dir: PathBuf,
    config: PathBuf,
    stop_servers: Arc<AtomicBool>,
    allowed: SocketAddr,
    denied: Vec<SocketAddr>,
    /// The containers' host veths (name, ifindex).
    veths: Vec<(String, u32)>,
    /// The right to run daemons, for the whole test from before its
    /// containers exist: a quarantine-mode daemon of another test guards
    /// every new veth on the node (`discovery::ports`), which would fail
    /// this test's baseline. Last: dropped after everything above.
    _exclusive: Exclusive,
}

impl World {
    fn new(tag: &str) -> Self {
        let exclusive = Exclusive::acquire();
        let dir = std::env::temp_dir().join(format!("porin-t-lc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cg = CgroupScope::new(tag, &dir);
        let arg = cg.arg();
        let run = |role: &str| {
            let label = format!("{role}-{tag}");
            PodmanContainer::run(
                &format!("lc{tag}-{role}"),
                &Spec {
                    labels: &[("lc", &label)],
                    args: &[&arg],
                    ..Default::default()
                },
            )
        };
        let client = run("client");
        let server = run("server");
        let other = run("other");
        cg.mount();
        let bpffs = BpffsGuard::new(test_bpffs(&format!("lc-{tag}")));
        let config = dir.join("porin.yaml");
        std::fs::write(&config, config_text(&dir, &cg, &bpffs, tag, "keep")).unwrap();
        let stop_servers = Arc::new(AtomicBool::new(false));
        echo_server(server.pid(), 8080, stop_servers.clone());
        echo_server(server.pid(), 9090, stop_servers.clone());
        echo_server(other.pid(), 8080, stop_servers.clone());
        let sip = server.ipv4().expect("server address");
        let oip = other.ipv4().expect("other address");
        let allowed = SocketAddr::from((sip, 8080));
        let denied = vec![SocketAddr::from((oip, 8080)), SocketAddr::from((sip, 9090))];
        let veths = [&client, &server, &other]
            .iter()
            .map(|c| host_veth(c).expect("a host veth"))
            .collect();
        let w = World {
            veths,
            client,
            server,
            other,
            _cg: cg,
            bpffs,
            dir,
            config,
            stop_servers,
            allowed,
            denied,
            _exclusive: exclusive,
        };
        // Without Porin everything connects: the probe can fail. (Retried
        // for a moment: the containers' network may still be settling.)
        let foreign = "; is another porin daemon filtering every container on this node?";
        assert!(
            eventually(|| connects(w.client.pid(), w.allowed)),
            "baseline: allowed{foreign}"
        );
        for d in &w.denied {
            assert!(
                eventually(|| connects(w.client.pid(), *d)),
                "baseline: {d} reachable without Porin{foreign}"
            );
        }
        w
    }

    fn set_on_stop(&self, tag: &str, on_stop: &str) {
        std::fs::write(
            &self.config,
            config_text(&self.dir, &self._cg, &self.bpffs, tag, on_stop),
        )
        .unwrap();
    }

    fn start(&self) -> Daemon {
        self.start_env(&[])
    }

    fn start_env(&self, env: &[(&str, &str)]) -> Daemon {
        self.start_bin(porin_bin(), env)
    }

    fn start_bin(&self, bin: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::start_with_env(bin, &self.config, env);
        d.wait_for(
            |l| l.contains("3 endpoints enforced") && !l.contains("FAILED"),
            Duration::from_secs(30),
        );
        if std::env::var_os("LC_DEBUG").is_some() {
            eprintln!("--- daemon start:\n{}", d.seen().join("\n"));
        }
        d
    }

    fn enforced(&self) -> bool {
        connects(self.client.pid(), self.allowed)
            && self.denied.iter().all(|d| !connects(self.client.pid(), *d))
    }

    fn open(&self) -> bool {
        eventually(|| self.denied.iter().all(|d| connects(self.client.pid(), *d)))
    }

    /// Porin's attachments on the three containers' host veths: its pinned
    /// TCX links that the kernel lists on the veth (6.6+), or its netlink
    /// filters (older kernels). Other daemons' programs are not counted.
    fn filters(&self) -> usize {
        let mut n = 0;
        for (veth, ifindex) in &self.veths {
            for (dir, at) in [
                ("ingress", TcAttachType::Ingress),
                ("egress", TcAttachType::Egress),
            ] {
                let pin = self.bpffs.dir.join(format!("links/tcx-{dir}-{ifindex}"));
                if let Ok(link) = PinnedLink::from_pin(&pin) {
                    let ours = FdLink::from(link).info().map(|i| i.program_id()).ok();
                    let listed = SchedClassifier::query_tcx(veth, at)
                        .map(|(_, progs)| progs.iter().map(|p| p.id()).collect::<Vec<_>>())
                        .unwrap_or_default();
                    if ours.is_some_and(|id| listed.contains(&id)) {
                        n += 1;
                    }
                }
                let o = Command::new("tc")
                    .args(["filter", "show", "dev", veth, dir])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&o.stdout);
                if std::env::var_os("LC_DEBUG").is_some() {
                    eprintln!("tc filter show dev {veth} {dir}:\n{text}");
                }
                n += text
                    .lines()
                    .filter(|l| l.contains("from_container") || l.contains("to_container"))
                    .count();
            }
        }
        n
    }
}

fn config_text(
    dir: &Path,
    cg: &CgroupScope,
    bpffs: &BpffsGuard,
    tag: &str,
    on_stop: &str,
) -> String {
    config(dir, &cg.mount, &bpffs.dir, tag, on_stop)
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_servers.store(true, SeqCst);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host side of a container's veth (its eth0's peer). Read through
/// `podman exec`: a thread that only entered the network namespace still
/// sees the host's sysfs.
fn host_veth(c: &PodmanContainer) -> Option<(String, u32)> {
    let iflink =
        porin::testing::podman::podman_ok(&["exec", &c.name, "cat", "/sys/class/net/eth0/iflink"]);
    let iflink: u32 = iflink.trim().parse().ok()?;
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes.
    let p = unsafe { libc::if_indextoname(iflink, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: NUL-terminated on success.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some((name.to_string_lossy().into_owned(), iflink))
}

fn write_meta(bpffs: &Path, layout: u32, writer: &str) {
    let data = MapData::from_pin(bpffs.join("maps/PORIN_META_V1")).expect("meta pin");
    let mut a: Array<MapData, MetaRecord> = Array::try_from(Map::Array(data)).unwrap();
    a.set(0, MetaRecord::new(layout, writer), 0).unwrap();
}

/// Runs `porin run` expecting it to refuse to start; returns its stderr.
fn refused(config: &Path) -> String {
    let out = Command::new(porin_bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run porin");
    assert!(
        !out.status.success(),
        "porin run should have refused to start:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn down_for(d: Duration, w: &World) {
    // While the daemon is down the probe keeps counting; spot-check too.
    let end = Instant::now() + d;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.filters() >= 6,
        "filters stay attached while the daemon is down"
    );
}

#[test]
fn enforcement_survives_stop_kill_panic_restart_and_layout_replace_without_a_gap() {
    require_root("lifecycle fault test");
    let tag = "f";
    let w = World::new(tag);
    let mut d = w.start();
    assert!(w.enforced(), "policy enforced before the faults");
    let probe = Probe::start(w.client.pid(), w.allowed, w.denied.clone());
    thread::sleep(Duration::from_secs(1));
    let mut phases = Vec::new();

    // SIGTERM with on_stop: keep.
    d.signal(libc::SIGTERM);
    let (status, log) = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "clean stop: {status}");
    assert!(
        log.iter().any(|l| l.contains("on_stop: keep")),
        "{}",
        log.join("\n")
    );
    down_for(Duration::from_secs(1), &w);
    d = w.start();
    assert!(
        d.seen().iter().any(|l| l.contains("adopting the maps")),
        "restart adopts:\n{}",
        d.seen().join("\n")
    );
    phases.push(format!("SIGTERM+restart: {}", probe.counts.line()));
    thread::sleep(Duration::from_secs(1));

    // SIGKILL.
    d.signal(libc::SIGKILL);
    let (status, _) = d.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    down_for(Duration::from_secs(1), &w);
    d = w.start();
    phases.push(format!("SIGKILL+restart: {}", probe.counts.line()));
    thread::sleep(Duration::from_secs(1));

    // Plain restart (stop and start at once).
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
    d = w.start();
    phases.push(format!("restart: {}", probe.counts.line()));
    thread::sleep(Duration::from_secs(1));

    // A forced panic in a daemon thread: the process aborts.
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
    // Only `ready` is awaited: the panic may come before, during or after
    // the first apply, all of which must keep enforcement.
    let mut p = Daemon::start_with_env(
        porin_bin(),
        &w.config,
        &[("PORIN_TEST_PANIC_AFTER_MS", "1500")],
    );
    let (status, log) = p.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "a panic ends the daemon");
    assert!(
        log.iter().any(|l| l.contains("aborting")),
        "{}",
        log.join("\n")
    );
    down_for(Duration::from_secs(1), &w);
    d = w.start();
    phases.push(format!("panic+restart: {}", probe.counts.line()));
    thread::sleep(Duration::from_secs(1));

    // An older layout pinned: replaced (new maps filled first, then each
    // attachment's program swapped).
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
    write_meta(&w.bpffs.dir, 0, "0.0.0-old");
    d = w.start();
    assert!(
        d.seen().iter().any(|l| l.contains("older layout 0")),
        "replace:\n{}",
        d.seen().join("\n")
    );
    thread::sleep(Duration::from_secs(1));
    assert!(
        !w.bpffs.dir.join("retired-0").exists(),
        "retired maps removed after the first apply"
    );
    phases.push(format!("layout replace: {}", probe.counts.line()));

    let counts = probe.finish();
    for p in &phases {
        eprintln!("{p}");
    }
    assert!(
        counts.echo_ok.load(SeqCst) > 300,
        "the established connection carried traffic: {}",
        counts.line()
    );
    assert!(counts.new_ok.load(SeqCst) > 10, "{}", counts.line());
    assert!(counts.denied_ok.load(SeqCst) > 20, "{}", counts.line());
    assert_eq!(
        counts.wrong(),
        0,
        "wrongly dropped or passed across the faults: {}",
        counts.line()
    );
    assert!(w.enforced(), "still enforced at the end");
    assert!(d.stop());
}

#[test]
fn on_stop_detach_and_uninstall_remove_everything() {
    require_root("lifecycle removal test");
    let tag = "r";
    let w = World::new(tag);

    // on_stop: detach.
    w.set_on_stop(tag, "detach");
    let d = w.start();
    assert!(w.enforced());
    assert_eq!(w.filters(), 6, "two filters per veth");
    assert!(d.stop());
    assert_eq!(w.filters(), 0, "detach removes the filters");
    assert!(!w.bpffs.dir.exists(), "detach removes the pins");
    assert!(w.open(), "nothing filters after detach");

    // keep, then `porin uninstall` without a daemon.
    w.set_on_stop(tag, "keep");
    let d = w.start();
    assert!(d.stop());
    assert_eq!(w.filters(), 6, "keep leaves the filters");
    assert!(w.enforced(), "and they enforce without the daemon");
    let out = Command::new(porin_bin())
        .args(["uninstall", "--config"])
        .arg(&w.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // TCX links on 6.6+, netlink filters before.
    assert!(
        text.matches("tcx-").count() == 6 || text.matches("removed 2 TC filters").count() == 3,
        "{text}"
    );
    assert!(text.contains("map pins"), "{text}");
    assert_eq!(w.filters(), 0, "uninstall removes the filters");
    assert!(!w.bpffs.dir.exists(), "uninstall removes the pins");
    assert!(w.open(), "nothing filters after uninstall");
    let again = Command::new(porin_bin())
        .args(["uninstall", "--bpffs"])
        .arg(&w.bpffs.dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing removed"));
}

#[test]
fn a_newer_or_mismatched_pinned_layout_is_refused() {
    require_root("lifecycle refusal test");
    let tag = "n";
    let w = World::new(tag);
    let d = w.start();
    assert!(d.stop());

    // Another flow events transport: the events map changes type. It holds
    // no enforcement state, so it is replaced, not refused.
    let text = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        format!("{text}flows:\n  events_transport: perf\n"),
    )
    .unwrap();
    let d = w.start();
    assert!(
        d.seen()
            .iter()
            .any(|l| l.contains(&format!("{}: pinned with another shape", maps::EVENTS.name))),
        "{}",
        d.seen().join("\n")
    );
    assert!(d.seen().iter().any(|l| l.contains("adopting the maps")));
    assert!(w.enforced(), "enforced after the transport change");
    assert!(d.stop());
    std::fs::write(&w.config, text).unwrap();

    // Newer layout: a downgrade is refused, enforcement stays as it is.
    write_meta(&w.bpffs.dir, 99, "9.9.9");
    let err = refused(&w.config);
    let dir = w.bpffs.dir.display().to_string();
    assert!(
        err.contains(&dir) && err.contains("layout 99") && err.contains("newer"),
        "{err}"
    );
    assert!(w.enforced(), "a refused start leaves enforcement alone");

    // Same layout but a map of the wrong type under a name: refused.
    write_meta(&w.bpffs.dir, porin_common::layout::LAYOUT, "x");
    let pinned = w.bpffs.dir.join("maps");
    std::fs::rename(
        pinned.join(maps::CONFIG.name),
        pinned.join(maps::ENDPOINTS.name),
    )
    .unwrap();
    let err = refused(&w.config);
    assert!(
        err.contains(maps::ENDPOINTS.name) && err.contains("does not match"),
        "{err}"
    );
}

// Keeps the unused-field lint quiet for containers kept alive by `World`.
#[allow(dead_code)]
fn _keep(w: &World) -> (&PodmanContainer, &PodmanContainer) {
    (&w.server, &w.other)
}

/// Upgrade under traffic: the previous commit's binary (built by
/// `.ci/upgrade-test`, passed in `PORIN_UPGRADE_FROM_BIN`) runs, then this
/// build replaces it. Runs only when asked (it needs a second build).
///
/// A previous binary that predates pinning detaches everything when it
/// stops, so an upgrade from it necessarily has a gap: the test says so
/// loudly and checks a same-layout restart of this build instead.
#[test]
fn upgrade_from_the_previous_binary_under_traffic() {
    let Some(old) = std::env::var_os("PORIN_UPGRADE_FROM_BIN") else {
        eprintln!("upgrade test not run: set PORIN_UPGRADE_FROM_BIN (see .ci/upgrade-test)");
        return;
    };
    require_root("upgrade test");
    let old = PathBuf::from(old);
    assert!(
        old.exists(),
        "PORIN_UPGRADE_FROM_BIN={} does not exist",
        old.display()
    );
    let tag = "u";
    let w = World::new(tag);
    let old_daemon = w.start_bin(&old, &[]);
    assert!(w.enforced(), "the previous binary enforces");
    let pins = w.bpffs.dir.join("maps/PORIN_META_V1").exists();
    let mut d = if pins {
        eprintln!("upgrade: the previous binary pins its maps; upgrading under traffic");
        old_daemon
    } else {
        eprintln!(
            "\n!!!!! upgrade: the previous binary ({}) PREDATES PINNING: it detaches \
             everything when it stops, so an upgrade from it has a gap. Testing a \
             same-layout restart of this build instead. !!!!!\n",
            old.display()
        );
        assert!(old_daemon.stop());
        w.start()
    };
    let probe = Probe::start(w.client.pid(), w.allowed, w.denied.clone());
    thread::sleep(Duration::from_secs(1));
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
    d = w.start();
    // Same layout: adopted; an older one (a build from before a layout
    // bump): replaced, each attachment switching once its entries exist.
    // Either way the probe below must see no gap.
    assert!(
        d.seen()
            .iter()
            .any(|l| l.contains("adopting the maps") || l.contains("maps of the older layout")),
        "the new binary adopts or replaces:\n{}",
        d.seen().join("\n")
    );
    thread::sleep(Duration::from_secs(1));
    let counts = probe.finish();
    eprintln!("upgrade: {}", counts.line());
    assert!(counts.echo_ok.load(SeqCst) > 50, "{}", counts.line());
    assert_eq!(counts.wrong(), 0, "{}", counts.line());
    assert!(d.stop());
}

/// The id of the link pinned at `path` and of the program it runs.
fn pinned_link_ids(path: &Path) -> Option<(u32, u32)> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    let info = link.info().ok()?;
    Some((info.id(), info.program_id()))
}

/// An uplink's pinned XDP link outlives the datapath that made it, is taken
/// over by the next one (same link, new program: replaced in place), keeps
/// its deny entries, and is detached once the uplink leaves the config.
#[test]
fn a_pinned_uplink_xdp_link_is_taken_over_and_dropped_when_unconfigured() {
    use std::collections::BTreeMap;

    use porin::{
        config::XdpMode,
        datapath::{uplink::UplinkPlan, Datapath},
        kernel::TcAttach,
        policy::{Compiled, Prefix4},
        testing::netns::NsPair,
    };
    use porin_common::uplink::UplinkConfig;

    require_root("pinned XDP link test");
    let bpffs = BpffsGuard::new(test_bpffs("lc-xdp"));
    let net = NsPair::new("lcxdp", 211);
    let dir = bpffs.dir.clone();
    let iface = net.if_a;
    let plan = move |deny: bool| UplinkPlan {
        interface: iface.to_string(),
        mode: XdpMode::Generic,
        limits: UplinkConfig::default(),
        deny4: if deny {
            BTreeMap::from([(
                Prefix4 {
                    addr: [10, 9, 8, 0],
                    len: 24,
                },
                77,
            )])
        } else {
            BTreeMap::new()
        },
        deny6: BTreeMap::new(),
    };
    let link = dir.join(format!("links/xdp-generic-{iface}"));
    net.a.run_in(move || {
        let first = {
            let mut dp = Datapath::load(TcAttach::Tcx, Some(&dir)).expect("load");
            dp.apply(&Compiled::default(), &[]).expect("apply");
            let r = dp.apply_uplinks(&[plan(true)]).expect("uplinks");
            assert_eq!(r.attached, [format!("{iface} (generic)")]);
            pinned_link_ids(&link).expect("the XDP link is pinned")
        }; // dropped: a daemon that stopped
        assert_eq!(
            pinned_link_ids(&link).map(|(l, _)| l),
            Some(first.0),
            "the link outlives the datapath"
        );

        let mut dp = Datapath::load(TcAttach::Tcx, Some(&dir)).expect("load again");
        assert!(dp.adopted());
        dp.apply(&Compiled::default(), &[]).expect("apply");
        dp.apply_uplinks(&[plan(false)]).expect("uplinks");
        let second = pinned_link_ids(&link).expect("still pinned");
        assert_eq!(
            second.0, first.0,
            "the same link is taken over, not re-made"
        );
        assert_ne!(second.1, first.1, "its program is the new one");
        // The deny prefix the new plan dropped is gone from the map.
        let deny: aya::maps::LpmTrie<_, [u8; 8], u32> =
            maps::open(dp.ebpf(), maps::UPLINK_DENY4).unwrap();
        assert_eq!(deny.keys().count(), 0, "stale deny entries swept");
        drop(dp);

        let mut dp = Datapath::load(TcAttach::Tcx, Some(&dir)).expect("load a third time");
        dp.apply(&Compiled::default(), &[]).expect("apply");
        dp.apply_uplinks(&[]).expect("no uplinks");
        assert!(!link.exists(), "an unconfigured uplink's link is detached");
        let cfg: aya::maps::HashMap<_, u32, UplinkConfig> =
            maps::open(dp.ebpf(), maps::UPLINK_CONFIG).unwrap();
        assert_eq!(cfg.keys().count(), 0, "and its entries are gone");
    });
}

/// Porin's clsact filters on `ifname` as `tc` lists them: (direction, the
/// program id in the filter).
fn netlink_filters(ifname: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for dir in ["ingress", "egress"] {
        let o = Command::new("tc")
            .args(["filter", "show", "dev", ifname, dir])
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.contains("from_container") || l.contains("to_container") {
                let id = l
                    .split_whitespace()
                    .skip_while(|w| *w != "id")
                    .nth(1)
                    .unwrap_or("?")
                    .to_string();
                v.push((dir.to_string(), id));
            }
        }
    }
    v
}

/// The kernels without TCX (5.10, 6.1): persistent clsact filters at
/// Porin's priority and handle stay after the datapath is gone, are
/// adopted with their programs replaced in place, and are removed by
/// `remove_everything` (`on_stop: detach`). Forced here with
/// `TcAttach::ClsactNetlink` so the build machine covers that path too.
#[test]
fn persistent_clsact_filters_are_adopted_and_replaced_in_place() {
    use porin::{
        datapath::{Datapath, Veth},
        kernel::TcAttach,
        policy::Compiled,
        testing::netns::NsPair,
    };
    use porin_common::datapath::{mode, EndpointInfo};

    require_root("persistent clsact filter test");
    let bpffs = BpffsGuard::new(test_bpffs("lc-nl"));
    let net = NsPair::new("lcnl", 212);
    let dir = bpffs.dir.clone();
    let ifname = net.if_a;
    net.a.run_in(move || {
        let ifindex = porin::datapath::ifindex_of(ifname).expect("veth");
        let mut c = Compiled::default();
        c.endpoints
            .insert(ifindex, EndpointInfo::new(4242, mode::ENFORCE));
        let veth = [Veth {
            ifindex,
            name: ifname.to_string(),
        }];
        let key = {
            let mut dp = Datapath::load(TcAttach::ClsactNetlink, Some(&dir)).expect("load");
            let r = dp.apply(&c, &veth).expect("apply");
            assert_eq!(r.attached, [ifname.to_string()]);
            dp.http_key()
        };
        assert!(!key.is_zero(), "a fresh install gets an HTTP hash key");
        let before = netlink_filters(ifname);
        assert_eq!(
            before.len(),
            2,
            "both filters stay after the datapath: {before:?}"
        );

        let mut dp = Datapath::load(TcAttach::ClsactNetlink, Some(&dir)).expect("load again");
        assert!(dp.adopted());
        assert_eq!(dp.attached(), [ifname], "the veth is adopted");
        // The rule keys in the adopted maps were hashed under this key.
        assert_eq!(dp.http_key(), key, "adoption keeps the HTTP hash key");
        assert_eq!(
            porin::datapath::http::read_key(dp.ebpf()).expect("read the key map"),
            key,
            "and the programs read the same one"
        );
        let after = netlink_filters(ifname);
        assert_eq!(after.len(), 2, "still two filters, none added: {after:?}");
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(b.1, a.1, "{} runs the new program", b.0);
        }
        let r = dp.apply(&c, &veth).expect("apply after adoption");
        assert!(r.attached.is_empty() && r.detached.is_empty(), "{r:?}");
        dp.remove_everything();
        assert!(netlink_filters(ifname).is_empty(), "detach removes them");
        assert!(!dir.exists(), "and the pins");
        // A new install (nothing pinned) draws a new key.
        let mut dp = Datapath::load(TcAttach::ClsactNetlink, Some(&dir)).expect("fresh load");
        assert!(!dp.adopted());
        assert!(!dp.http_key().is_zero());
        assert_ne!(dp.http_key(), key, "a new install, a new key");
        dp.remove_everything();
    });
}
