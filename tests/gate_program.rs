//! The quarantine gate's programs without containers, so it also runs in the
//! QEMU VMs of `test-vm/` (kernel 5.10 and up): `gate_ingress` /
//! `gate_egress` through `BPF_PROG_TEST_RUN`, then attached to a real
//! cgroup v2 directory with real UDP sockets of this process in it, replaced
//! by a second gate without a gap, and uninstalled.
//!
//! Needs root. Where no cgroup2 hierarchy is mounted (the VMs), one is
//! mounted on a directory of the test's own and unmounted at the end.

use std::{
    fs,
    io::ErrorKind,
    net::{SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use aya::programs::CgroupSkb;
use porin::{
    datapath::gate::{self, Gate, GATE_EGRESS, GATE_INGRESS},
    discovery::cgroup::{CgroupFs, CgroupLayout},
    testing::{
        packets::{self, PROTO_UDP},
        prog_run,
        rawnet::RawPair,
        require_root,
    },
};

/// Both tests depend on which cgroup this process is in.
static SERIAL: Mutex<()> = Mutex::new(());

fn prog<'a>(g: &'a Gate, name: &str) -> &'a CgroupSkb {
    g.ebpf()
        .program(name)
        .expect("program in object")
        .try_into()
        .expect("cgroup_skb program")
}

/// A pinning directory of the test's own, removed (with the gate) on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new(tag: &str) -> Bpffs {
        let p = PathBuf::from(format!("/sys/fs/bpf/porin-t-gate-{tag}"));
        let b = Bpffs(p);
        b.clean();
        b
    }
    fn clean(&self) {
        gate::uninstall(&self.0).expect("uninstall a leftover gate");
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        self.clean();
    }
}

/// The cgroup2 hierarchy: the host's, or one mounted for the test.
struct Unified {
    dir: PathBuf,
    mounted: bool,
}

impl Unified {
    fn get() -> Unified {
        if let Ok(fs) = CgroupFs::detect(Path::new("/sys/fs/cgroup")) {
            if fs.layout() != CgroupLayout::V1 {
                return Unified {
                    dir: fs.dir().to_owned(),
                    mounted: false,
                };
            }
        }
        let dir = PathBuf::from("/tmp/porin-t-gate-cgroup2");
        fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting cgroup2: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Unified { dir, mounted: true }
    }

    /// This process's cgroup (relative), from `/proc/self/cgroup`.
    fn own(&self) -> String {
        fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            .expect("a cgroup v2 line in /proc/self/cgroup")
    }

    /// Moves this whole process into `rel`.
    fn enter(&self, rel: &str) {
        let procs = gate::cgroup_dir(&self.dir, Path::new(rel)).join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("moving into {}: {e}", procs.display()));
    }
}

impl Drop for Unified {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
        }
    }
}

#[test]
fn verdicts_follow_the_classified_map() {
    require_root("gate program test");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bpffs = Bpffs::new("verdicts");
    let unified = Unified::get();
    let mut g = Gate::load(&bpffs.0, &unified.dir).expect("load the gate programs");
    let net = RawPair::new("gtv0", "gtv1", 237);
    let frame = packets::frame_v4(net.ip_a, net.ip_b, PROTO_UDP, &packets::udp(1, 2, b"x"));
    let run = |g: &Gate, name: &str, ifindex: u32| {
        net.a
            .run_in(|| prog_run::verdict_on_ifindex(prog(g, name), &frame, ifindex))
    };
    for name in [GATE_INGRESS, GATE_EGRESS] {
        assert_eq!(
            run(&g, name, net.index_a),
            0,
            "{name}: unclassified is dropped"
        );
        assert_eq!(run(&g, name, 1), 1, "{name}: loopback passes");
    }
    // The test run's socket is in the root cgroup (5.10) or in this
    // process's cgroup (newer kernels): classify both.
    let own = gate::cgroup_id(&gate::cgroup_dir(&unified.dir, Path::new(&unified.own())))
        .expect("own cgroup id");
    let root = gate::cgroup_id(&unified.dir).expect("root cgroup id");
    g.set_classified(&[own, root].into_iter().collect(), &Default::default())
        .expect("classify");
    for name in [GATE_INGRESS, GATE_EGRESS] {
        assert_eq!(run(&g, name, net.index_a), 1, "{name}: classified passes");
    }
    g.set_classified(&Default::default(), &Default::default())
        .expect("unclassify");
    for name in [GATE_INGRESS, GATE_EGRESS] {
        assert_eq!(run(&g, name, net.index_a), 0, "{name}: unclassified again");
    }
}

/// Sends one datagram from `from` to `to`; whether it arrived.
fn delivered(from: &UdpSocket, to: &UdpSocket) -> bool {
    let addr: SocketAddrV4 = match to.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("unexpected address {other}"),
    };
    // A drop on egress is reported to the sender (EPERM): not delivered.
    if from.send_to(b"gate", addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    match to.recv_from(&mut buf) {
        Ok((n, _)) => &buf[..n] == b"gate",
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("recv: {e}"),
    }
}

fn udp(net: &porin::testing::rawnet::RawNetns, ip: std::net::Ipv4Addr) -> UdpSocket {
    net.run_in(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(ip, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    })
}

#[test]
fn attached_gate_holds_back_real_sockets_until_classified_and_survives_replacement() {
    require_root("gate program test");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bpffs = Bpffs::new("attach");
    let unified = Unified::get();
    let parent = format!("/porin-t-gate-prog-{}", std::process::id());
    let child = format!("{parent}/c");
    let nested = format!("{child}/n");
    let parent_dir = gate::cgroup_dir(&unified.dir, Path::new(&parent));
    let _ = fs::remove_dir(parent_dir.join("c/n"));
    let _ = fs::remove_dir(parent_dir.join("c"));
    let _ = fs::remove_dir(&parent_dir);
    let home = unified.own();
    let net = RawPair::new("gta0", "gta1", 238);

    // Sockets outside the gate, made before this process enters it.
    let outside = udp(&net.b, net.ip_b);

    let mut g = Gate::load(&bpffs.0, &unified.dir).expect("load");
    g.attach(&[PathBuf::from(&parent)])
        .expect("attach (creates the parent)");
    fs::create_dir(parent_dir.join("c")).unwrap();
    fs::create_dir(parent_dir.join("c/n")).unwrap();
    let child_id = gate::cgroup_id(&parent_dir.join("c")).unwrap();
    assert_eq!(pins(&bpffs.0), 2, "ingress and egress links pinned");

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        unified.enter(&child);
        let inside = udp(&net.a, net.ip_a);
        unified.enter(&nested);
        let deeper = udp(&net.a, net.ip_a);
        unified.enter(&home);

        assert!(
            !delivered(&inside, &outside),
            "unclassified: egress dropped"
        );
        assert!(
            !delivered(&outside, &inside),
            "unclassified: ingress dropped"
        );
        assert!(!delivered(&deeper, &outside), "a sub-cgroup too");

        g.set_classified(&[child_id].into_iter().collect(), &Default::default())
            .unwrap();
        assert!(delivered(&inside, &outside), "classified: egress passes");
        assert!(delivered(&outside, &inside), "classified: ingress passes");
        assert!(delivered(&deeper, &outside), "its sub-cgroup passes too");

        // A second daemon's gate takes over; the first goes away.
        let mut g2 = Gate::load(&bpffs.0, &unified.dir).expect("second load");
        g2.attach(&[PathBuf::from(&parent)]).expect("second attach");
        drop(g);
        assert_eq!(pins(&bpffs.0), 2, "the older links were replaced");
        assert!(
            delivered(&inside, &outside),
            "still classified (map reused)"
        );
        assert!(
            g2.status().classified >= 1,
            "the classification was adopted"
        );

        g2.set_classified(&Default::default(), &Default::default())
            .unwrap();
        // Adopted ids stay while their cgroup exists: only the first
        // call with the id classified confirms it, so classify and clear.
        g2.set_classified(&[child_id].into_iter().collect(), &Default::default())
            .unwrap();
        g2.set_classified(&Default::default(), &Default::default())
            .unwrap();
        assert!(!delivered(&inside, &outside), "unclassified again");

        let removed = gate::uninstall(&bpffs.0).expect("uninstall");
        assert_eq!(removed.links, 2);
        drop(g2);
        assert!(
            delivered(&inside, &outside),
            "after uninstall nothing is gated"
        );
        assert!(delivered(&outside, &inside), "both ways");
    }));
    unified.enter(&home);
    let _ = fs::remove_dir(parent_dir.join("c/n"));
    let _ = fs::remove_dir(parent_dir.join("c"));
    let _ = fs::remove_dir(&parent_dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn pins(bpffs: &Path) -> usize {
    fs::read_dir(bpffs.join(gate::LINK_DIR))
        .map(|d| d.count())
        .unwrap_or(0)
}
