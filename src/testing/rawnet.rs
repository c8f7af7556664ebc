//! Network namespaces and veth pairs made with system calls and rtnetlink
//! only, for tests that must also run where no iproute2 exists (the QEMU VMs
//! of `test-vm/`, whose userland is busybox).
//!
//! A [`RawNetns`] is an anonymous namespace held by a file descriptor: it
//! has no name under `/run/netns`, so nothing can collide with it or be left
//! behind by an aborted run, and it disappears (with its interfaces) when the
//! descriptor is closed and no thread is inside. Work happens inside it on a
//! scoped thread that has entered it ([`RawNetns::run_in`]); sockets made
//! there stay in the namespace wherever they are used afterwards.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// An anonymous network namespace, gone when dropped.
#[derive(Debug)]
pub struct RawNetns {
    fd: OwnedFd,
}

impl RawNetns {
    /// Creates a namespace with its loopback up.
    pub fn new() -> Self {
        let fd = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare affects only this thread, which ends here.
                let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "unshare(CLONE_NEWNET) failed: {}",
                    io::Error::last_os_error()
                );
                let file = File::open(format!("/proc/self/task/{}/ns/net", gettid()))
                    .expect("open the new namespace");
                OwnedFd::from(file)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        let ns = RawNetns { fd };
        ns.run_in(|| {
            let mut nl = Rtnl::open().expect("netlink socket");
            nl.set_up(1).expect("loopback up");
        });
        ns
    }

    /// Runs `f` on a thread inside the namespace and returns its result
    /// (a panic in `f` is re-raised here).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace fd this value owns; it affects
                // only this thread, which ends when `f` returns.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns failed: {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Default for RawNetns {
    fn default() -> Self {
        Self::new()
    }
}

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// Two namespaces joined by a veth pair with IPv4 addresses, all up:
/// `a`'s end `if_a` has `ip_a`/24, `b`'s end `if_b` has `ip_b`/24.
#[derive(Debug)]
pub struct RawPair {
    pub a: RawNetns,
    pub b: RawNetns,
    pub if_a: &'static str,
    pub if_b: &'static str,
    pub index_a: u32,
    pub index_b: u32,
    pub ip_a: Ipv4Addr,
    pub ip_b: Ipv4Addr,
}

impl RawPair {
    /// Makes the namespaces and the veth (created in `b`, its peer moved
    /// into `a` by the same request). `subnet` picks `10.232.<subnet>.0/24`.
    pub fn new(if_a: &'static str, if_b: &'static str, subnet: u8) -> Self {
        let a = RawNetns::new();
        let b = RawNetns::new();
        let ip_a = Ipv4Addr::new(10, 232, subnet, 1);
        let ip_b = Ipv4Addr::new(10, 232, subnet, 2);
        let a_fd = a.fd().as_raw_fd();
        let index_b = b.run_in(|| {
            let mut nl = Rtnl::open().expect("netlink socket");
            nl.add_veth(if_b, if_a, a_fd)
                .unwrap_or_else(|e| panic!("create veth {if_b}/{if_a}: {e}"));
            let index = crate::datapath::ifindex_of(if_b).expect("ifindex of the new veth");
            nl.add_ipv4(index, ip_b, 24).expect("address on veth");
            nl.set_up(index).expect("veth up");
            index
        });
        let index_a = a.run_in(|| {
            let mut nl = Rtnl::open().expect("netlink socket");
            let index = crate::datapath::ifindex_of(if_a).expect("ifindex of the veth peer");
            nl.add_ipv4(index, ip_a, 24).expect("address on veth peer");
            nl.set_up(index).expect("veth peer up");
            index
        });
        RawPair {
            a,
            b,
            if_a,
            if_b,
            index_a,
            index_b,
            ip_a,
            ip_b,
        }
    }
}

// rtnetlink constants (linux/rtnetlink.h, if_link.h, veth.h); libc has
// the message types but not all attribute numbers on every target.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const IFF_UP: u32 = 1;

/// A minimal rtnetlink client: one request at a time, each acknowledged.
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2), result checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Rtnl { fd, seq: 0 })
    }

    /// `ip link add NAME type veth peer name PEER netns PEER_NS`.
    fn add_veth(&mut self, name: &str, peer: &str, peer_ns: i32) -> io::Result<()> {
        let mut peer_msg = ifinfomsg(0, 0, 0);
        nla_str(&mut peer_msg, IFLA_IFNAME, peer);
        nla(&mut peer_msg, IFLA_NET_NS_FD, &peer_ns.to_ne_bytes());
        let mut data = Vec::new();
        nla(&mut data, VETH_INFO_PEER | NLA_F_NESTED, &peer_msg);
        let mut info = Vec::new();
        nla_str(&mut info, IFLA_INFO_KIND, "veth");
        nla(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
        let mut body = ifinfomsg(0, 0, 0);
        nla_str(&mut body, IFLA_IFNAME, name);
        nla(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    /// `ip link set dev INDEX up`.
    fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.request(RTM_NEWLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP))
    }

    /// `ip addr add ADDR/PREFIX dev INDEX`.
    fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut body = vec![libc::AF_INET as u8, prefix, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        nla(&mut body, IFA_LOCAL, &addr.octets());
        nla(&mut body, IFA_ADDRESS, &addr.octets());
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sending a buffer of the given length on our socket (the
        // kernel is the default destination of a netlink socket).
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: receiving into a buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0;
            let n = n as usize;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4"));
                if mlen < 16 || off + mlen > n {
                    return Err(io::Error::other("truncated netlink reply"));
                }
                if mty == NLMSG_ERROR && mseq == self.seq {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-err))
                    };
                }
                off += (mlen + 3) & !3;
            }
        }
    }
}

/// struct ifinfomsg: family, pad, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut m = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&change.to_ne_bytes());
    m
}

/// Appends attribute `ty` with `payload`, padded to 4 bytes.
fn nla(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + ((4 - len % 4) % 4), 0);
}

fn nla_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut z = s.as_bytes().to_vec();
    z.push(0);
    nla(buf, ty, &z);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut b = Vec::new();
        nla_str(&mut b, IFLA_IFNAME, "eth0");
        assert_eq!(b.len(), 12, "4-byte header + 5 bytes, padded to 12");
        assert_eq!(
            u16::from_ne_bytes([b[0], b[1]]),
            9,
            "length excludes padding"
        );
        assert_eq!(&b[4..9], b"eth0\0");
    }

    #[test]
    fn ifinfomsg_is_sixteen_bytes() {
        let m = ifinfomsg(7, IFF_UP, IFF_UP);
        assert_eq!(m.len(), 16);
        assert_eq!(u32::from_ne_bytes(m[4..8].try_into().unwrap()), 7);
    }
}
