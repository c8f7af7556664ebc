//! Container discovery by cgroup scanning: which containers run on this node,
//! what they are (runtime, name, image, labels) and where their traffic flows
//! (network namespace, interfaces, addresses, host-side veth).
//!
//! No runtime API is called. The cgroup filesystem says which containers
//! exist and which processes they hold; the runtimes' on-disk state says what
//! they are; the kernel (netlink inside the container's network namespace)
//! says how they are connected.
//!
//! Module map, one job each:
//! - `cgroup`: cgroup layout detection (v1, v2, hybrid), path parsing
//!   (Podman, containerd, Docker; cgroupfs and systemd drivers), scanning.
//! - `bolt`: a minimal read-only BoltDB reader (Podman's and containerd's
//!   metadata databases).
//! - `podman`, `containerd`: each runtime's on-disk state to [`RuntimeMeta`];
//!   `state`: their shared error type.
//! - `netinfo`: network namespace, interfaces, addresses and host peer veth
//!   of a process.
//! - `endpoint`: the endpoint record assembled from the above.
//! - `scanner`: one discovery pass (cgroups, metadata, network), cached.
//! - `inventory`: the known endpoints and the add/update/remove events.
//! - `watch`, `live`: inotify on cgroup directories and the live loop
//!   (retries for containers not ready yet, periodic resync).

pub mod bolt;
pub mod cgroup;
pub mod containerd;
pub mod docker;
pub mod endpoint;
pub mod inventory;
pub mod live;
pub mod netinfo;
pub mod podman;
pub mod ports;
pub mod scanner;
pub mod sqlite;
pub mod state;
#[cfg(test)]
mod testdir;
pub mod watch;

pub use state::StateError;

use std::{collections::BTreeMap, fmt, path::PathBuf};

/// The container runtimes Porin recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Podman,
    Containerd,
    Docker,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::Docker => "docker",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a runtime's on-disk state says about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeMeta {
    /// Container name (`podman run --name`; the container id for containerd,
    /// whose containers have no separate name).
    pub name: String,
    /// Image reference as the user gave it, e.g. `localhost/bb:latest`.
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Where the runtime says the container's network namespace is.
    pub netns: NetnsRecord,
    /// The file the name and labels were read from (empty: none was).
    pub source: String,
}

/// The runtime's own record of a container's network namespace: what
/// discovery reads the network from, before any process it finds in the
/// container's cgroup (whose processes the container controls: a leader
/// that ends its main thread is a zombie without namespaces, see issue 17).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsRecord {
    /// A namespace file the runtime created and keeps (Podman's
    /// `/run/netns/netns-…`, its BoltDB key `netns`).
    pub path: Option<PathBuf>,
    /// The container's init process as the runtime recorded it (Podman's
    /// state `pid`, containerd's `init.pid`).
    pub init_pid: Option<u32>,
}
