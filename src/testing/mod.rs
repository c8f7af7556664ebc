//! Test harness shared by every datapath test: crafted packets, running a
//! loaded program on them through `BPF_PROG_TEST_RUN`, and network
//! namespaces joined by veth pairs that clean up after themselves.
//!
//! Tests that need root call [`require_root`] first: without root it panics
//! with a message saying what was skipped and why, so a missing privilege is
//! never reported as a pass.

pub mod containerd;
pub mod daemon;
pub mod docker;
pub mod mqtt;
pub mod netns;
pub mod packets;
pub mod podman;
pub mod prog_run;
pub mod rawnet;
pub mod world;

/// Clears what an aborted run of a test's private runtime left below its
/// test directory `dir`: kills every process whose command line names a
/// path under `dir` (the daemon, its shims), then has `runc` delete every
/// container it still lists under `runc_root` (those whose shim died).
/// Only `dir/...` matches, so another tag that starts with this one is
/// not touched.
pub(crate) fn kill_leftovers(dir: &std::path::Path, runc_root: &std::path::Path) {
    let needle = format!("{}/", dir.display());
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                // SAFETY: a process an earlier run of this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Ok(cs) = std::fs::read_dir(runc_root) {
        for c in cs.flatten() {
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(runc_root)
                .args(["delete", "-f"])
                .arg(c.file_name())
                .output();
        }
    }
}

/// Panics with a loud message unless the process runs as root.
///
/// CI runs as root, so these tests always run there; on a developer machine
/// without root they fail instead of silently passing.
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{what} needs root (BPF, bpffs, network namespaces); run the test suite as root \
         (README: test command). Refusing to report a pass without running it."
    );
}
