//! Time of a full cgroup scan over a fixture tree with 500 Podman container
//! cgroups and some host noise: `cargo bench --bench discovery_scan`.
//!
//! The fixture lives in the temp dir, not in cgroupfs, so the figures are
//! for the walk and parsing, with the page cache's directory reads standing
//! in for the kernel's cgroupfs ones.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use porin::discovery::cgroup::{CgroupFs, CgroupLayout};

const CONTAINERS: usize = 500;
const RUNS: usize = 200;

fn main() {
    let root = std::env::temp_dir().join(format!("porin-bench-scan-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    build_fixture(&root);

    let cgroups = CgroupFs::at(root.clone(), CgroupLayout::V2);
    // Warm the dentry and page caches as a long-running watcher would have.
    for _ in 0..5 {
        cgroups.scan().expect("scan");
    }
    let mut times = Vec::with_capacity(RUNS);
    let mut found = 0;
    let mut watched = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let scan = cgroups.scan().expect("scan");
        times.push(start.elapsed());
        found = scan.containers.len();
        watched = scan.dirs.len();
    }
    fs::remove_dir_all(&root).expect("removing the fixture");

    assert_eq!(found, CONTAINERS, "containers found");
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "discovery_scan: {found} containers, {watched} watched dirs, {RUNS} runs: \
         median {}, p99 {}, min {}, max {}",
        ms(pct(50)),
        ms(pct(99)),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// 500 containers under Podman's cgroupfs parent, every fifth one split into
/// a `container` sub-cgroup, each with its conmon cgroup beside it; plus
/// systemd services, user sessions and a rootless user manager as noise.
fn build_fixture(root: &Path) {
    let cgroup = |rel: &str, pids: &[u32]| {
        let dir: PathBuf = root.join(rel);
        fs::create_dir_all(&dir).expect("fixture dir");
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        fs::write(dir.join("cgroup.procs"), text).expect("fixture cgroup.procs");
    };
    cgroup("", &[1]);
    cgroup("init.scope", &[1]);
    for i in 0..60 {
        cgroup(&format!("system.slice/svc{i}.service"), &[100 + i]);
    }
    for i in 0..20 {
        cgroup(
            &format!("user.slice/user-1000.slice/session-{i}.scope"),
            &[2000 + i],
        );
    }
    cgroup(
        "user.slice/user-1000.slice/user@1000.service/init.scope",
        &[3000],
    );
    for i in 0..CONTAINERS {
        let id = format!("{i:064x}");
        let pid = 10_000 + 3 * i as u32;
        cgroup(&format!("libpod_parent/libpod-conmon-{id}"), &[pid]);
        if i % 5 == 0 {
            cgroup(&format!("libpod_parent/libpod-{id}"), &[]);
            cgroup(
                &format!("libpod_parent/libpod-{id}/container"),
                &[pid + 1, pid + 2],
            );
        } else {
            cgroup(&format!("libpod_parent/libpod-{id}"), &[pid + 1, pid + 2]);
        }
    }
}
