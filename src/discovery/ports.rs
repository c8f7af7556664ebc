//! New ports of the container runtimes' bridges, as netlink announces them
//! (issue 17).
//!
//! The quarantine gate holds a container's inet sockets until discovery
//! has classified it, but a raw `AF_PACKET` socket sends frames straight
//! onto its veth, which has no programs yet. So the daemon watches the
//! host's link notifications on a thread of its own, and the moment a veth
//! is enslaved to a runtime's bridge ([`bridge_runtime`]) the enforcer
//! attaches the programs to it (`Datapath::guard_port`). With no endpoint
//! entry they drop everything the veth carries (`UnknownEndpoint`), until
//! the apply that lists the container's endpoint gives it its policy.
//!
//! The runtimes enslave the veth while they set up the container's network,
//! before they start its first process, so the programs are usually there
//! before anything inside can send. This is a race the daemon normally
//! wins by a wide margin, not a guarantee: no runtime waits for it.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
        Arc,
    },
    time::Duration,
};

use log::{debug, warn};

use super::netinfo::netlink::{self, RTM_NEWLINK};
use crate::config::Runtime;

/// A veth just enslaved to a runtime's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
    /// The bridge's name.
    pub bridge: String,
    /// The runtime whose bridge it is ([`bridge_runtime`]).
    pub runtime: Runtime,
}

/// The runtime whose bridge `name` is, by the names the runtimes give the
/// bridges of their default and user-defined networks: Podman's `podman0`,
/// `podman1`, … (netavark) and `cni-podman0`, … (CNI); containerd's (the
/// CNI bridge plugin's `cni0`, nerdctl's `nerdctl0`, …); Docker's
/// `docker0` and `br-<network id>`. The enforcer guards only the bridges of
/// the runtimes discovery reads (`discovery.runtimes`): a port of another
/// runtime's container would never be listed, so never opened again.
pub fn bridge_runtime(name: &str) -> Option<Runtime> {
    let numbered = |prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if numbered("podman") || numbered("cni-podman") {
        Some(Runtime::Podman)
    } else if numbered("cni") || numbered("nerdctl") {
        Some(Runtime::Containerd)
    } else if numbered("docker")
        || name
            .strip_prefix("br-")
            .is_some_and(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        Some(Runtime::Docker)
    } else {
        None
    }
}

/// The veths enslaved to some interface in one netlink datagram:
/// (ifindex, name, master ifindex) of each `RTM_NEWLINK` of kind `veth`
/// with a master. Malformed messages are skipped (the daemon's periodic
/// discovery still finds the container).
pub fn enslaved_veths(buf: &[u8]) -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    for msg in netlink::messages(buf) {
        let Ok((hdr, payload)) = msg else { break };
        if hdr.ty != RTM_NEWLINK {
            continue;
        }
        let Ok(link) = netlink::parse_link(payload) else {
            continue;
        };
        if let (Some(master), Some("veth")) = (link.master, link.kind.as_deref()) {
            if master != 0 && link.index != 0 && !link.name.is_empty() {
                out.push((link.index, link.name, master));
            }
        }
    }
    out
}

/// The name of interface `ifindex` on the host, if it exists.
fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// A blocking `NETLINK_ROUTE` socket subscribed to the host's link changes.
fn link_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// The running watch thread; [`Ports::stop`] ends it.
pub struct Ports {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ports {
    /// Ends the thread (within [`POLL`]) and with it its sender: the
    /// enforcement loop ends when every sender is gone.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the thread looks at its stop flag while no link changes.
const POLL: Duration = Duration::from_millis(200);

/// Starts the thread that sends every new port of a runtime bridge to
/// `tx`, until [`Ports::stop`] or until `tx`'s receiver is gone. A receive
/// error (the socket's buffer overran in a burst of changes) is logged and
/// the thread goes on: the ports it missed get their programs at the apply
/// that lists their containers.
pub fn spawn<T: From<Port> + Send + 'static>(tx: Sender<T>) -> io::Result<Ports> {
    let sock = link_socket()?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    // SAFETY: setting a socket option from a valid timeval on our socket.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ports".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stopped.load(Ordering::Relaxed) {
                // SAFETY: reading into a buffer we own, of its length.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        warn!("link notifications: {e} (ports missed until the next apply)");
                    }
                    continue;
                }
                for (ifindex, name, master) in enslaved_veths(&buf[..n as usize]) {
                    let Some((bridge, runtime)) =
                        name_of(master).and_then(|b| bridge_runtime(&b).map(|r| (b, r)))
                    else {
                        continue;
                    };
                    debug!("{name} (ifindex {ifindex}) enslaved to {bridge}");
                    let port = Port {
                        ifindex,
                        name,
                        bridge,
                        runtime,
                    };
                    if tx.send(port.into()).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(Ports {
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_bridges_are_known_by_their_names() {
        for (name, runtime) in [
            ("podman0", Runtime::Podman),
            ("podman12", Runtime::Podman),
            ("cni-podman0", Runtime::Podman),
            ("cni0", Runtime::Containerd),
            ("nerdctl0", Runtime::Containerd),
            ("docker0", Runtime::Docker),
            ("br-0123456789ab", Runtime::Docker),
        ] {
            assert_eq!(bridge_runtime(name), Some(runtime), "{name}");
        }
        for no in [
            "podman",
            "podmanx",
            "eth0",
            "br0",
            "br-lan",
            "br-0123456789abc",
            "virbr0",
            "lxcbr0",
            "cni-podman",
        ] {
            assert_eq!(bridge_runtime(no), None, "{no}");
        }
    }

    /// An `RTM_NEWLINK` message: ifindex, name, kind, master.
    fn newlink(index: u32, name: &str, kind: Option<&str>, master: Option<u32>) -> Vec<u8> {
        fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
            let mut a = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
            a.extend(ty.to_ne_bytes());
            a.extend(data);
            while !a.len().is_multiple_of(4) {
                a.push(0);
            }
            a
        }
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        body.extend(attr(3, &n)); // IFLA_IFNAME
        if let Some(m) = master {
            body.extend(attr(10, &m.to_ne_bytes())); // IFLA_MASTER
        }
        if let Some(k) = kind {
            let mut k = k.as_bytes().to_vec();
            k.push(0);
            body.extend(attr(18, &attr(1, &k))); // IFLA_LINKINFO { IFLA_INFO_KIND }
        }
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend(RTM_NEWLINK.to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend(body);
        msg
    }

    #[test]
    fn only_enslaved_veths_are_ports() {
        let mut dgram = newlink(7, "veth1", Some("veth"), Some(3));
        dgram.extend(newlink(8, "veth2", Some("veth"), None));
        dgram.extend(newlink(9, "tap0", Some("tun"), Some(3)));
        dgram.extend(newlink(10, "eth1", None, Some(3)));
        dgram.extend(newlink(11, "veth3", Some("veth"), Some(4)));
        assert_eq!(
            enslaved_veths(&dgram),
            vec![(7, "veth1".to_string(), 3), (11, "veth3".to_string(), 4)]
        );
        let mut cut = newlink(12, "veth4", Some("veth"), Some(3));
        cut.truncate(cut.len() - 3);
        assert_eq!(enslaved_veths(&cut), vec![], "a cut message is skipped");
    }
}
