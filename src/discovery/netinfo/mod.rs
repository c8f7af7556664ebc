//! How a container's process is connected: its network namespace, the
//! interfaces and addresses inside it, and for each veth the peer interface
//! in the host namespace (where Porin attaches its programs).
//!
//! The kernel is asked directly over rtnetlink ([`netlink`] parses,
//! [`socket`] talks): no `ip` command, no netlink crate, so the static
//! binary stays small.
//!
//! Looking inside a namespace needs a thread that has entered it: `setns`
//! changes only the calling thread, and a netlink socket answers for the
//! namespace it was opened in. A short-lived thread enters the container's
//! namespace, dumps links and addresses there and ends, so no thread of the
//! daemon is ever left in a container's namespace.
//!
//! The namespace is opened from a [`NetnsSource`]: a namespace file the
//! runtime keeps, or a process. A process's leader may have ended its own
//! thread while others of its threads run on (a zombie leader: it has no
//! namespaces any more, see issue 17); then a live thread's
//! `/proc/PID/task/TID/ns/net` is used, which is the same process's
//! namespace.

pub mod netlink;
mod socket;

use std::{
    fmt,
    fs::{self, File},
    io,
    net::IpAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

use netlink::{AddrRecord, LinkRecord, IFF_LOOPBACK};
use socket::NlSocket;

/// How a process is connected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetInfo {
    /// The process shares the host's network namespace (`podman run --network host`).
    pub host_network: bool,
    /// Inode of /proc/PID/ns/net (identifies the namespace).
    pub netns_inode: u64,
    /// Interfaces inside the namespace other than loopback (empty for
    /// host-network containers: we do not list the host's interfaces).
    pub interfaces: Vec<Interface>,
}

/// One interface inside a container's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Name inside the container, e.g. "eth0".
    pub name: String,
    /// Index inside the container's namespace.
    pub ifindex: u32,
    pub mac: Option<[u8; 6]>,
    /// IPv4 and IPv6 (global and link-local), in the kernel's order: the
    /// link-local ones, and the others the host routes to this interface's
    /// host peer (see [`net_info`] on why).
    pub addrs: Vec<IpPrefix>,
    /// Addresses set inside the container that the host does not route to
    /// this interface: never given the container's identity.
    pub unrouted: Vec<IpPrefix>,
    /// For a veth: its peer, when that peer is in the host namespace.
    pub host_peer: Option<HostPeer>,
}

/// The host-namespace end of a container's veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPeer {
    pub ifindex: u32,
    pub name: String,
    /// The bridge the host end is enslaved to, if any.
    pub master: Option<u32>,
}

/// An address with its prefix length, shown as `10.88.0.2/16` or
/// `fd00::2/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The step of [`net_info`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    OpenNamespace,
    OpenHostNamespace,
    EnterNamespace,
    /// Opening a netlink socket (inside the container or on the host).
    NetlinkSocket,
    DumpLinks,
    DumpAddrs,
    /// Asking a namespace which id it gives another (`RTM_GETNSID`).
    QueryNsid,
    QueryHostPeer,
    QueryRoute,
    /// The helper thread could not start or died.
    Thread,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::OpenNamespace => "open its network namespace",
            Operation::OpenHostNamespace => "open the host network namespace",
            Operation::EnterNamespace => "enter its network namespace",
            Operation::NetlinkSocket => "open a netlink socket",
            Operation::DumpLinks => "list interfaces",
            Operation::DumpAddrs => "list addresses",
            Operation::QueryNsid => "query a namespace id",
            Operation::QueryHostPeer => "look up a veth peer on the host",
            Operation::QueryRoute => "look up the host's route to a container address",
            Operation::Thread => "run the namespace helper thread",
        })
    }
}

/// Where a network namespace is opened from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSource {
    /// A namespace file (a bind mount of nsfs), e.g. `/run/netns/netns-…`.
    Path(PathBuf),
    /// A process in the namespace (its leader, or a live thread of it).
    Process(u32),
}

impl fmt::Display for NetnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsSource::Path(p) => write!(f, "netns file {}", p.display()),
            NetnsSource::Process(pid) => write!(f, "pid {pid}"),
        }
    }
}

/// Opens the namespace `source` names.
pub fn open_netns(source: &NetnsSource) -> io::Result<File> {
    match source {
        NetnsSource::Path(p) => File::open(p),
        NetnsSource::Process(pid) => match File::open(format!("/proc/{pid}/ns/net")) {
            // A zombie leader has no namespaces; a live thread of its
            // process has the process's.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                    return Err(e);
                };
                tasks
                    .flatten()
                    .find_map(|t| File::open(t.path().join("ns/net")).ok())
                    .ok_or(e)
            }
            other => other,
        },
    }
}

/// [`net_info`] failed for the namespace of `netns` while doing `op`.
#[derive(Debug, thiserror::Error)]
#[error("network info of {netns}: cannot {op}: {source}")]
pub struct NetInfoError {
    pub netns: NetnsSource,
    pub op: Operation,
    #[source]
    pub source: io::Error,
}

impl NetInfoError {
    /// Whether the process does not exist (any more): discovery treats that
    /// as a container that just went away, not as a failure.
    pub fn is_gone(&self) -> bool {
        self.op == Operation::OpenNamespace && self.source.kind() == io::ErrorKind::NotFound
    }
}

/// Reports how process `pid` is connected: [`net_info_of`] its process.
pub fn net_info(pid: u32) -> Result<NetInfo, NetInfoError> {
    net_info_of(&NetnsSource::Process(pid))
}

/// Reports how the namespace `netns` is connected. The calling thread must
/// be in the host network namespace (the daemon's).
///
/// An address is set inside the container, where a process with
/// `CAP_NET_ADMIN` can add any address it likes, e.g. a neighbour's or a
/// PLC's, to borrow that peer's identity. So only an address the *host*
/// routes to the container's host veth (directly or through the bridge it
/// is enslaved to) is reported in [`Interface::addrs`]; others go to
/// [`Interface::unrouted`], logged. Link-local addresses are kept without
/// the check: they never get an identity (see the policy's address rules).
pub fn net_info_of(netns: &NetnsSource) -> Result<NetInfo, NetInfoError> {
    let fail = |op| {
        move |source| NetInfoError {
            netns: netns.clone(),
            op,
            source,
        }
    };

    // Everything below uses this one descriptor, so a pid that exits (or is
    // reused) after this line cannot mix two namespaces into one answer.
    let ns = open_netns(netns).map_err(fail(Operation::OpenNamespace))?;
    let ns_meta = ns.metadata().map_err(fail(Operation::OpenNamespace))?;
    // The calling thread's namespace, not the process's (`/proc/self`
    // follows the main thread): host-side netlink queries below are made
    // from this thread, so "host" must mean this thread's namespace.
    let host =
        File::open("/proc/thread-self/ns/net").map_err(fail(Operation::OpenHostNamespace))?;
    let host_meta = host
        .metadata()
        .map_err(fail(Operation::OpenHostNamespace))?;

    // A namespace is identified by the nsfs inode together with its device.
    if (ns_meta.dev(), ns_meta.ino()) == (host_meta.dev(), host_meta.ino()) {
        return Ok(NetInfo {
            host_network: true,
            netns_inode: ns_meta.ino(),
            interfaces: Vec::new(),
        });
    }

    let inside = inspect_inside(&ns, &host).map_err(|(op, source)| fail(op)(source))?;

    let mut host_sock = None;
    let mut container_nsid_on_host = None;
    let mut interfaces = Vec::with_capacity(inside.links.len());
    for link in inside.links {
        let host_peer = if is_veth_to(&link, inside.host_nsid) {
            let sock = match &mut host_sock {
                Some(s) => s,
                None => host_sock.insert(NlSocket::open().map_err(fail(Operation::NetlinkSocket))?),
            };
            // Asked lazily and after the container's link dump, which is
            // what makes the kernel assign the ids in the first place.
            let nsid = match container_nsid_on_host {
                Some(id) => id,
                None => *container_nsid_on_host
                    .insert(sock.nsid(&ns).map_err(fail(Operation::QueryNsid))?),
            };
            verified_host_peer(sock, &link, nsid).map_err(fail(Operation::QueryHostPeer))?
        } else {
            None
        };
        let mut addrs = Vec::new();
        let mut unrouted = Vec::new();
        for a in inside.addrs.iter().filter(|a| a.index == link.index) {
            let prefix = IpPrefix {
                addr: a.addr,
                prefix_len: a.prefix_len,
            };
            let routed = match &host_peer {
                _ if is_link_local(a.addr) => true,
                None => false,
                Some(peer) => {
                    let sock = match &mut host_sock {
                        Some(s) => s,
                        None => host_sock
                            .insert(NlSocket::open().map_err(fail(Operation::NetlinkSocket))?),
                    };
                    let oif = sock
                        .route_oif(a.addr)
                        .map_err(fail(Operation::QueryRoute))?;
                    oif.is_some() && (oif == Some(peer.ifindex) || oif == peer.master)
                }
            };
            if routed {
                addrs.push(prefix);
            } else {
                log::warn!(
                    "{netns}: address {prefix} on {} is not routed to it by the host; \
                     it gets no identity",
                    link.name
                );
                unrouted.push(prefix);
            }
        }
        interfaces.push(Interface {
            name: link.name,
            ifindex: link.index,
            mac: link.mac,
            addrs,
            unrouted,
            host_peer,
        });
    }
    Ok(NetInfo {
        host_network: false,
        netns_inode: ns_meta.ino(),
        interfaces,
    })
}

/// What the helper thread found inside the container's namespace.
struct Inside {
    /// Non-loopback links, by ifindex.
    links: Vec<LinkRecord>,
    addrs: Vec<AddrRecord>,
    /// The id the host namespace has inside the container's namespace, if
    /// any (asked only when some veth points to another namespace).
    host_nsid: Option<i32>,
}

type StepError = (Operation, io::Error);

/// Runs the dumps on a thread that enters `ns` and ends afterwards.
fn inspect_inside(ns: &File, host: &File) -> Result<Inside, StepError> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("porin-netinfo".into())
            .spawn_scoped(s, || {
                // SAFETY: setns with a valid namespace descriptor changes
                // only this thread, which ends when the closure returns.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err((Operation::EnterNamespace, io::Error::last_os_error()));
                }
                dump_inside(host)
            })
            .map_err(|e| (Operation::Thread, e))?;
        worker.join().unwrap_or_else(|_| {
            Err((
                Operation::Thread,
                io::Error::other("namespace helper thread panicked"),
            ))
        })
    })
}

/// Runs in the container's namespace.
fn dump_inside(host: &File) -> Result<Inside, StepError> {
    let mut sock = NlSocket::open().map_err(|e| (Operation::NetlinkSocket, e))?;
    let mut links = sock.links().map_err(|e| (Operation::DumpLinks, e))?;
    links.retain(|l| l.flags & IFF_LOOPBACK == 0);
    links.sort_by_key(|l| l.index);
    let addrs = sock.addrs().map_err(|e| (Operation::DumpAddrs, e))?;
    let host_nsid = if links.iter().any(|l| l.link_netnsid.is_some()) {
        sock.nsid(host).map_err(|e| (Operation::QueryNsid, e))?
    } else {
        None
    };
    Ok(Inside {
        links,
        addrs,
        host_nsid,
    })
}

/// Container side of the peer check: a veth whose peer lives in another
/// namespace (`IFLA_LINK_NETNSID` present) and that namespace is the host's
/// (its id equals the id the host namespace has in the container's). Only
/// then is `IFLA_LINK` an ifindex in the host namespace.
fn is_veth_to(link: &LinkRecord, host_nsid: Option<i32>) -> bool {
    link.kind.as_deref() == Some("veth")
        && link.link.is_some()
        && link.link_netnsid.is_some()
        && link.link_netnsid == host_nsid
}

/// Host side of the peer check. The host interface with that ifindex is
/// reported only if it is a veth whose own `IFLA_LINK` is the container
/// interface's ifindex and whose `IFLA_LINK_NETNSID` is the id the
/// container's namespace has on the host. Together with the container-side
/// check this proves the two are the two ends of one pair; anything less
/// (e.g. an ifindex that was reused after the pair went away) gives `None`.
fn verified_host_peer(
    sock: &mut NlSocket,
    link: &LinkRecord,
    container_nsid_on_host: Option<i32>,
) -> io::Result<Option<HostPeer>> {
    let Some(peer_index) = link.link else {
        return Ok(None);
    };
    let Some(peer) = sock.link(peer_index)? else {
        log::debug!(
            "veth {}: peer ifindex {peer_index} not on the host",
            link.name
        );
        return Ok(None);
    };
    let matches = peer.kind.as_deref() == Some("veth")
        && peer.link == Some(link.index)
        && peer.link_netnsid.is_some()
        && peer.link_netnsid == container_nsid_on_host;
    if !matches {
        log::debug!(
            "veth {}: host ifindex {peer_index} ({}) is not its peer: {peer:?}",
            link.name,
            peer.name
        );
        return Ok(None);
    }
    Ok(Some(HostPeer {
        ifindex: peer.index,
        name: peer.name,
        master: peer.master,
    }))
}

fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests;

/// Every address of the calling thread's network namespace (the host's, for
/// the daemon): loopback, uplinks and container bridge gateways. The policy
/// gives them the reserved `host` identity.
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut sock = NlSocket::open()?;
    let mut addrs: Vec<IpAddr> = sock.addrs()?.into_iter().map(|a| a.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}
