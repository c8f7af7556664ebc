//! The quarantine gate end to end: `porin run` in enforce mode with
//! `unknown_workloads: quarantine`, real Podman containers placed under a
//! parent cgroup of the test's own (`--cgroup-parent`), and the daemon
//! killed and restarted. Needs root and podman.
//!
//! Each test gates only its own parent cgroup and pins under its own bpffs
//! directory, so containers of other tests (under `/libpod_parent`) are
//! never held back. Each test holds the host-wide daemon lock throughout
//! (a daemon attaches its TC programs to every container on the host), so
//! no other test's daemon runs while this one's is killed and restarted.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{HashMap as BpfHashMap, MapData};

use porin::{
    datapath::{gate, persist},
    discovery::cgroup::{CgroupFs, CgroupLayout},
    testing::{
        daemon::{Daemon, Exclusive},
        podman::{podman, PodmanContainer, Spec},
        require_root,
    },
};

/// A test's parent cgroup, bpffs directory and config; removes them (and
/// the gate) on drop. Declared before the containers, so they go first.
struct Fixture {
    tag: String,
    parent: String,
    bpffs: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

/// The cgroup v2 hierarchy of this host (`/sys/fs/cgroup/unified` on the
/// build machine's hybrid layout).
fn unified() -> PathBuf {
    let fs = CgroupFs::detect(Path::new("/sys/fs/cgroup")).expect("cgroup filesystem");
    assert_ne!(fs.layout(), CgroupLayout::V1, "the gate needs cgroup v2");
    fs.dir().to_owned()
}

impl Fixture {
    fn new(tag: &str, containers: &[&str], unknown: &str) -> Fixture {
        let parent = format!("/porin-t-gate-{tag}");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/porin-t-gate-{tag}"));
        let dir = std::env::temp_dir().join(format!("porin-t-gate-{tag}"));
        // Leftovers of an aborted run: its containers, gate and cgroup.
        for c in containers {
            let _ = podman(&["rm", "-f", "-t", "0", &format!("porin-t-{c}")]);
        }
        let f = Fixture {
            config: dir.join("porin.yaml"),
            tag: tag.to_owned(),
            parent,
            bpffs,
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
  unknown_workloads: {unknown}
  quarantine_cgroups: [{parent}]
groups:
  - name: app
    select:
      labels: {{porin-gate: {tag}}}
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
        // Everything the daemons pinned or attached (the gate included).
        persist::uninstall(&self.bpffs).expect("porin uninstall");
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir(unified().join(&self.parent[1..]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A container of the test's group under the gated parent, serving HTTP.
    fn container(&self, name: &str) -> PodmanContainer {
        let label = [("porin-gate", self.tag.as_str())];
        let cgroup_parent = format!("--cgroup-parent={}", self.parent);
        PodmanContainer::run(
            name,
            &Spec {
                labels: &label,
                args: &[&cgroup_parent],
                cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            },
        )
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

fn http(from: &PodmanContainer, to: &PodmanContainer) -> bool {
    let ip = to.ipv4().expect("container address");
    from.http_get(&format!("http://{ip}:8080/"), 2)
}

/// An HTTP GET from the host to `to` (no TC program judges the host's own
/// sockets, so only the gate can stop it): whether the page arrived.
fn host_http(to: &PodmanContainer) -> bool {
    use std::io::{Read, Write};
    let ip = to.ipv4().expect("container address");
    let addr = std::net::SocketAddr::from((ip, 8080));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("porin test page")
}

/// Polls [`host_http`] for up to `within`.
fn until_host_http(to: &PodmanContainer, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if host_http(to) {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Polls until `from` gets `to`'s page; the time it took, or None.
fn until_http(from: &PodmanContainer, to: &PodmanContainer, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let ip = to.ipv4().expect("container address");
    while start.elapsed() < within {
        if from.http_get(&format!("http://{ip}:8080/"), 1) {
            return Some(start.elapsed());
        }
    }
    None
}

/// Watches the gated parent and the pinned map (every 2 ms) to time how long
/// a new container is held back: from its cgroup's creation (the directory's
/// mtime, set by kernfs at mkdir) to its id appearing in `PORIN_GATE_V1`.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<HashMap<String, Duration>>>,
}

impl Watch {
    fn start(fx: &Fixture) -> Watch {
        let parent = unified().join(&fx.parent[1..]);
        let map = fx.bpffs.join("maps").join(porin::maps::GATE.name);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let data = MapData::from_pin(&map).expect("pinned gate map");
            let map: BpfHashMap<_, u64, u8> =
                BpfHashMap::try_from(aya::maps::Map::HashMap(data)).expect("hash map");
            let mut created: HashMap<String, (u64, SystemTime)> = HashMap::new();
            let mut gated = HashMap::new();
            while !flag.load(Ordering::Relaxed) {
                // Entries may vanish while listed (a container going away).
                let entries = std::fs::read_dir(&parent).into_iter().flatten().flatten();
                for e in entries {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(id) = name.strip_prefix("libpod-") else {
                        continue;
                    };
                    if created.contains_key(id) {
                        continue;
                    }
                    if let Ok((ino, Ok(at))) = e.metadata().map(|m| (m.ino(), m.modified())) {
                        created.insert(id.to_owned(), (ino, at));
                    }
                }
                for (id, (ino, at)) in &created {
                    if !gated.contains_key(id) && map.get(ino, 0).is_ok() {
                        let held = SystemTime::now().duration_since(*at).unwrap_or_default();
                        gated.insert(id.clone(), held);
                    }
                }
                thread::sleep(Duration::from_millis(2));
            }
            gated
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    /// How long the container `id` was held back.
    fn gated(mut self, id: &str) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let gated = self.thread.take().unwrap().join().expect("watch thread");
        *gated
            .get(id)
            .unwrap_or_else(|| panic!("container {id} was never seen classified: {gated:?}"))
    }
}

/// Kills the daemon with SIGKILL: no clean-up code of its own runs.
fn kill(daemon: Daemon) {
    daemon.signal(libc::SIGKILL);
    drop(daemon);
}

#[test]
fn a_container_started_with_the_daemon_running_talks_once_classified() {
    require_root("quarantine gate test");
    let _exclusive = Exclusive::acquire();
    let fx = Fixture::new("a", &["ga-peer", "ga-new"], "quarantine");
    let mut daemon = fx.daemon();
    let peer = fx.container("ga-peer");
    daemon.wait_for(|l| l.contains("attached veth"), Duration::from_secs(20));
    let started = Instant::now();
    let watch = Watch::start(&fx);
    let new = fx.container("ga-new");
    let run = started.elapsed();
    let open = until_http(&peer, &new, Duration::from_secs(15))
        .expect("the new container becomes reachable once classified");
    assert!(http(&new, &peer), "and it can send per policy");
    let gated = watch.gated(&new.id);
    println!(
        "gated after start: {:.0} ms from the container cgroup's creation to its classification (podman run took {:.0} ms; the peer's first request got through {:.0} ms after podman run returned)",
        gated.as_secs_f64() * 1e3,
        run.as_secs_f64() * 1e3,
        open.as_secs_f64() * 1e3,
    );
    assert!(daemon.stop(), "daemon exits 0");
}

#[test]
fn a_container_started_while_the_daemon_is_down_is_quarantined_until_classified() {
    require_root("quarantine gate test");
    let _exclusive = Exclusive::acquire();
    let fx = Fixture::new("b", &["gb-peer", "gb-new", "gb-after"], "quarantine");
    let mut daemon = fx.daemon();
    let peer = fx.container("gb-peer");
    daemon.wait_for(|l| l.contains("attached veth"), Duration::from_secs(20));
    assert!(
        peer.http_get("http://127.0.0.1:8080/", 2),
        "the peer serves HTTP"
    );

    kill(daemon);
    let new = fx.container("gb-new");
    assert!(
        !http(&new, &peer),
        "while the daemon is down, the new container cannot send"
    );
    assert!(!http(&peer, &new), "and a peer cannot reach it");
    assert!(!host_http(&new), "nor the host");
    assert!(
        new.http_get("http://127.0.0.1:8080/", 2),
        "its own loopback still works (the gate passes the loopback device)"
    );

    let daemon = fx.daemon();
    let open = until_http(&peer, &new, Duration::from_secs(15))
        .expect("once the daemon is back and classifies it, the peer reaches it");
    assert!(http(&new, &peer), "and it reaches the peer");
    println!(
        "quarantined until classified: reachable {:.0} ms after the daemon was ready",
        open.as_secs_f64() * 1e3
    );

    // A clean stop keeps the gate; uninstalling removes it.
    assert!(daemon.stop(), "daemon exits 0");
    assert!(gate::installed(&fx.bpffs), "the gate outlives the daemon");
    let removed = gate::uninstall(&fx.bpffs).expect("uninstall");
    assert_eq!(removed.links, 2, "ingress and egress links were pinned");
    assert!(removed.map, "the map was pinned");
    // (The peer's TC programs, pinned, still judge it by the policy.)
    let after = fx.container("gb-after");
    assert!(
        until_host_http(&after, Duration::from_secs(5)),
        "after uninstall nothing is gated"
    );
}

#[test]
fn with_unknown_workloads_allow_nothing_is_gated() {
    require_root("quarantine gate test");
    let _exclusive = Exclusive::acquire();
    let fx = Fixture::new("c", &["gc-peer", "gc-new"], "allow");
    let mut daemon = fx.daemon();
    let peer = fx.container("gc-peer");
    daemon.wait_for(|l| l.contains("attached veth"), Duration::from_secs(20));
    kill(daemon);
    assert!(
        !gate::installed(&fx.bpffs),
        "no gate is attached with allow"
    );
    let new = fx.container("gc-new");
    assert!(
        until_host_http(&new, Duration::from_secs(5)),
        "a container started while the daemon is down talks (the control case of the quarantine test)"
    );
    drop(peer);
}
