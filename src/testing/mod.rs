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
pub mod netns;
pub mod packets;
pub mod podman;
pub mod prog_run;
pub mod rawnet;
pub mod world;

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
