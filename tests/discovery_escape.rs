//! A container that tries to fool discovery stays held back: `porin run` in
//! enforce mode with `unknown_workloads: quarantine`, an unlabelled Podman
//! container (so it is quarantined) whose first process ends its main
//! thread while a worker thread keeps sending (issue 17). The leader is then
//! a zombie, still listed in `cgroup.procs`, and its `/proc/PID/ns/net` is
//! gone; a daemon that read the namespace from the lowest PID in the cgroup
//! reported the container without interfaces after a restart and detached
//! its veth, and the container talked freely.
//!
//! The worker connects to a listener of the test's own on the address of
//! Podman's bridge every 500 ms; the test counts what the listener
//! accepted while the daemon runs, after a restart and after a SIGKILL and
//! another start. Also a container whose first process sends raw frames
//! (a packet socket) from its start: none reaches the bridge. Needs root,
//! podman and the `x86_64-unknown-linux-musl` Rust target (the helpers are
//! built from `tests/fixtures/escape/`).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use porin::{
    datapath::persist,
    discovery::cgroup::{CgroupFs, CgroupLayout},
    testing::{
        daemon::{Daemon, Exclusive},
        podman::{podman, PodmanContainer, PodmanNetwork, Spec},
        require_root,
    },
};

const TAG: &str = "hdi-escape";

/// The test's parent cgroup, bpffs directory and config; removes them (and
/// the gate) on drop. Declared before the container, so it goes first.
struct Fixture {
    parent: String,
    bpffs: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

fn unified() -> PathBuf {
    let fs = CgroupFs::detect(Path::new("/sys/fs/cgroup")).expect("cgroup filesystem");
    assert_ne!(fs.layout(), CgroupLayout::V1, "the gate needs cgroup v2");
    fs.dir().to_owned()
}

impl Fixture {
    /// For the container `porin-t-<tag>`.
    fn new(tag: &str) -> Fixture {
        let _ = podman(&["rm", "-f", "-t", "0", &format!("porin-t-{tag}")]);
        let dir = std::env::temp_dir().join(format!("porin-t-{tag}"));
        let f = Fixture {
            parent: format!("/porin-t-{tag}"),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/porin-t-{tag}")),
            config: dir.join("porin.yaml"),
            dir,
        };
        f.clean();
        std::fs::create_dir_all(&f.dir).unwrap();
        std::fs::write(
            &f.config,
            format!(
                "version: 1
bpffs: {bpffs}
control:
  socket: {sock}
enforcement:
  mode: enforce
  unknown_workloads: quarantine
  quarantine_cgroups: [{parent}]
groups:
  - name: app
    select:
      labels: {{porin-escape: labelled}}
ground_rules:
  same_group: allow
",
                bpffs = f.bpffs.display(),
                sock = f.dir.join("porin.sock").display(),
                parent = f.parent,
            ),
        )
        .unwrap();
        f
    }

    fn clean(&self) {
        persist::uninstall(&self.bpffs).expect("porin uninstall");
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir(unified().join(&self.parent[1..]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn daemon(&self) -> Daemon {
        Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &self.config)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Builds helper `name` (`tests/fixtures/escape/NAME.rs`) as a static
/// binary in `dir`.
fn build_helper(dir: &Path, name: &str) -> PathBuf {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/escape/{name}.rs"));
    let out = dir.join(name);
    let status = Command::new("rustc")
        .args(["--edition", "2021", "--target", "x86_64-unknown-linux-musl"])
        .args(["-O", "-C", "debuginfo=0", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(
        status.success(),
        "building the helper needs the x86_64-unknown-linux-musl target (.ci/setup adds it)"
    );
    out
}

/// The container's processes: the helper's worker is killed by PID (a
/// zombie leader's process ignores the runtime's kill), then the container
/// is removed.
struct Escapee {
    container: Option<PodmanContainer>,
    pid: u32,
}

impl Drop for Escapee {
    fn drop(&mut self) {
        // SAFETY: signalling the container's process by the PID Podman gave.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        thread::sleep(Duration::from_millis(200));
        if let Some(c) = self.container.take() {
            drop(c);
        }
    }
}

/// Accepted connections, timestamped.
fn listen(addr: std::net::Ipv4Addr) -> (u16, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind((addr, 0)).expect("listen on the bridge address");
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            if s.is_ok() {
                log.lock().unwrap().push(Instant::now());
            }
        }
    });
    (port, seen)
}

/// Watches for `window` and returns how many connections got through.
fn through(seen: &Mutex<Vec<Instant>>, window: Duration) -> usize {
    let from = Instant::now();
    thread::sleep(window);
    seen.lock().unwrap().iter().filter(|t| **t >= from).count()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("State:") && l.contains("Z"))
    })
}

#[test]
fn a_zombie_leader_container_stays_quarantined_across_restarts_and_a_sigkill() {
    require_root("discovery escape test");
    let _exclusive = Exclusive::acquire();
    let fx = Fixture::new(TAG);
    let helper = build_helper(&fx.dir, "zombie_leader");
    let net = PodmanNetwork::default_network();
    let (port, seen) = listen(net.gateway);

    let mut daemon = fx.daemon();
    let mount = format!("{}:/zl:ro", helper.display());
    let cgroup_parent = format!("--cgroup-parent={}", fx.parent);
    let target = format!("{}:{port}", net.gateway);
    let container = PodmanContainer::run(
        TAG,
        &Spec {
            labels: &[],
            args: &["-v", &mount, &cgroup_parent],
            cmd: &["/zl", &target, "300"],
        },
    );
    let escapee = Escapee {
        pid: container.pid(),
        container: Some(container),
    };
    daemon.wait_for(|l| l.contains("attached veth"), Duration::from_secs(20));
    thread::sleep(Duration::from_millis(500));
    assert!(
        is_zombie(escapee.pid),
        "the container's leader {} is a zombie",
        escapee.pid
    );
    assert!(
        !Path::new(&format!("/proc/{}/ns/net", escapee.pid)).exists(),
        "and its network namespace link is gone"
    );
    let window = Duration::from_secs(5);
    let running = through(&seen, window);

    // A clean restart: the new daemon reads the container afresh, past the
    // time discovery waits for a container that is not ready.
    assert!(daemon.stop(), "daemon exits 0");
    let mut daemon = fx.daemon();
    let restarted = through(&seen, Duration::from_secs(14));

    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait_exit(Duration::from_secs(10));
    drop(daemon);
    let down = through(&seen, Duration::from_secs(3));
    let daemon = fx.daemon();
    let killed = through(&seen, Duration::from_secs(14));
    let log: Vec<String> = daemon
        .seen()
        .iter()
        .cloned()
        .chain(daemon.lines.try_iter())
        .collect();
    for l in log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
    {
        println!("last daemon: {l}");
    }
    let log = log.join("\n");

    println!(
        "zombie-leader container, connections that got through (one attempt every 500 ms): \
         daemon running {running} in {window:?}; after a restart {restarted} in 14 s; \
         daemon SIGKILLed {down} in 3 s; after the next start {killed} in 14 s"
    );
    assert!(daemon.stop(), "daemon exits 0");
    drop(escapee);
    assert_eq!(
        (running, restarted, down, killed),
        (0, 0, 0, 0),
        "the quarantined container must never get through; last daemon's log:\n{log}"
    );
}

/// `tests/fixtures/arp_watch.py ROLE ARGS` with the host's python3.
fn arp_watch(role: &str, args: &[&str]) -> std::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arp_watch.py");
    Command::new("/usr/bin/python3")
        .arg(script)
        .arg(role)
        .args(args)
        .spawn()
        .expect("python3 arp_watch.py")
}

/// A container that sends raw frames from its very first process (a packet
/// socket, which the quarantine gate cannot see: a gratuitous ARP claiming
/// an address that is not the container's, every millisecond;
/// `tests/fixtures/escape/raw_arp.rs`) never gets one onto Podman's
/// bridge: its veth has the programs from the moment the runtime enslaves
/// it (`discovery::ports`), before the container is classified, and its
/// policy after. A watcher on the bridge counts the ARP frames claiming
/// that address by source MAC; a frame the test injects on the bridge
/// itself shows the watcher sees them. (On our test machine the daemon
/// classifies such a container about 100 ms after its veth appears, which
/// also came before its first frame in every run; the guard, attached
/// about 30 ms after, is what does not depend on that.)
#[test]
fn raw_frames_of_a_container_just_started_never_reach_the_bridge() {
    const RAW: &str = "hdi-raw";
    const CLAIMED: &str = "10.88.250.250";
    const CONTROL_MAC: &str = "02:00:00:00:be:ef";
    require_root("raw-socket guard test");
    let _exclusive = Exclusive::acquire();
    let fx = Fixture::new(RAW);
    let helper = build_helper(&fx.dir, "raw_arp");
    let net = PodmanNetwork::default_network();
    let out = fx.dir.join("arp.out");
    let stop = fx.dir.join("arp.stop");
    let mut watcher = arp_watch(
        "watch",
        &[
            &net.bridge,
            CLAIMED,
            out.to_str().unwrap(),
            stop.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&out).is_ok_and(|s| s.starts_with("ready")) {
        assert!(Instant::now() < deadline, "the watcher did not start");
        thread::sleep(Duration::from_millis(50));
    }

    let mut daemon = fx.daemon();
    let mount = format!("{}:/ra:ro", helper.display());
    let cgroup_parent = format!("--cgroup-parent={}", fx.parent);
    let container = PodmanContainer::run(
        RAW,
        &Spec {
            labels: &[],
            args: &["-v", &mount, &cgroup_parent],
            cmd: &["/ra", CLAIMED, "60"],
        },
    );
    // Guarded before classified: a wait consumes the lines before its
    // match, so an endpoint line first would fail the second wait.
    let guarded = daemon.wait_for(|l| l.contains("guarding "), Duration::from_secs(10));
    eprintln!("{guarded}");
    daemon.wait_for(|l| l.contains("endpoint +"), Duration::from_secs(10));
    thread::sleep(Duration::from_secs(2));
    let status = arp_watch("inject", &[&net.bridge, CLAIMED, CONTROL_MAC])
        .wait()
        .expect("inject");
    assert!(status.success(), "the control frame");
    thread::sleep(Duration::from_millis(300));
    std::fs::write(&stop, "").unwrap();
    assert!(watcher.wait().expect("the watcher ends").success());
    drop(container);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with("done\n"), "{text}");
    let macs: Vec<&str> = text
        .lines()
        .filter(|l| *l != "ready" && *l != "done")
        .collect();
    assert!(
        macs.iter().any(|l| l.starts_with(CONTROL_MAC)),
        "the watcher saw the control frame: {text}"
    );
    assert_eq!(
        macs.len(),
        1,
        "no ARP claiming {CLAIMED} from the container reached the bridge: {text}"
    );
    assert!(daemon.stop(), "porin run exits 0");
}
