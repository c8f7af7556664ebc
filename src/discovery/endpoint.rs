//! The endpoint record: one container as the rest of Porin sees it.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use super::{
    netinfo::{HostPeer, Interface},
    Runtime,
};

/// Identifies a container across scans: runtime, containerd namespace (empty
/// for the other runtimes) and container id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub runtime: Runtime,
    pub namespace: String,
    pub id: String,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}:{}", self.runtime, short_id(&self.id))
        } else {
            write!(
                f,
                "{}:{}/{}",
                self.runtime,
                self.namespace,
                short_id(&self.id)
            )
        }
    }
}

/// The first 12 characters of a 64-hex id (as runtimes print them); other
/// ids (containerd's are free-form) unchanged.
pub fn short_id(id: &str) -> &str {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..12]
    } else {
        id
    }
}

/// Everything discovery knows about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub key: EndpointKey,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// cgroup path relative to the hierarchy root.
    pub cgroup: String,
    /// Processes in the container's cgroup (sorted).
    pub pids: Vec<u32>,
    /// Inode of the container's network namespace.
    pub netns_inode: u64,
    /// The container shares the host's network namespace.
    pub host_network: bool,
    /// Interfaces inside the container (none for host-network containers).
    pub interfaces: Vec<Interface>,
    /// The runtime's file the name and labels came from (empty: none).
    pub labels_from: String,
    /// Threads of the container's processes that run in a network namespace
    /// other than the container's (`unshare -n`, `setns`): the container
    /// then has traffic its veth does not see, and is held to the strictest
    /// verdict (see `policy`). Empty for nearly every container.
    pub foreign_netns: Vec<u32>,
    /// Where the network namespace was read from: the runtime's record (a
    /// namespace file or its init PID) or, without one, the lowest PID in
    /// the cgroup.
    pub netns_from: String,
}

impl Endpoint {
    /// All addresses of the container's interfaces.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.interfaces
            .iter()
            .flat_map(|i| i.addrs.iter().map(|a| a.addr))
    }

    /// Host-side veths of the container's interfaces (where the TC programs
    /// attach).
    pub fn host_veths(&self) -> impl Iterator<Item = &HostPeer> + '_ {
        self.interfaces.iter().filter_map(|i| i.host_peer.as_ref())
    }

    /// Whether discovery has what the datapath needs: a process, and either
    /// the host's network or at least one interface with an address.
    pub fn network_ready(&self) -> bool {
        !self.pids.is_empty() && (self.host_network || self.addresses().next().is_some())
    }
}
