//! A blocking `NETLINK_ROUTE` socket: send one request, collect its answer.
//!
//! The socket belongs to the network namespace of the thread that opened
//! it, which is how discovery looks inside a container (open it on a thread
//! that has entered the container's namespace). All parsing is in
//! [`super::netlink`]; this file is only the system calls.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::netlink::{self, AddrRecord, LinkRecord, ReplyCollector, ReplyError};

/// A bug or a stuck kernel must never hang discovery: each receive gives up
/// after this long, and so does each request as a whole.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The kernel sizes dump datagrams to at most 32 KiB (or the reader's
/// buffer); twice that leaves room, and a datagram that still does not fit
/// is reported rather than silently cut.
const RECV_BUF: usize = 64 * 1024;

/// Dumps interrupted by a concurrent change are repeated this many times.
const DUMP_TRIES: usize = 3;

pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
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
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: RECV_TIMEOUT.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NlSocket {
            fd,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<LinkRecord>> {
        self.dump(netlink::dump_links_request, |ty, payload, out| {
            if ty == netlink::RTM_NEWLINK {
                out.push(netlink::parse_link(payload)?);
            }
            Ok(())
        })
    }

    /// Every IPv4 and IPv6 address of the namespace.
    pub fn addrs(&mut self) -> io::Result<Vec<AddrRecord>> {
        self.dump(netlink::dump_addrs_request, |ty, payload, out| {
            if ty == netlink::RTM_NEWADDR {
                out.extend(netlink::parse_addr(payload)?);
            }
            Ok(())
        })
    }

    /// The interface with this ifindex, `None` when there is none.
    pub fn link(&mut self, index: u32) -> io::Result<Option<LinkRecord>> {
        let mut found = None;
        let seq = self.next_seq();
        let result = self.exchange(&netlink::get_link_request(seq, index), seq, |ty, p| {
            if ty == netlink::RTM_NEWLINK {
                found = Some(netlink::parse_link(p)?);
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(found),
            Err(Failure::Reply(ReplyError::Kernel(libc::ENODEV))) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The interface this namespace routes `addr` out of; `None` when it
    /// has no route, or the address is one of its own.
    pub fn route_oif(&mut self, addr: std::net::IpAddr) -> io::Result<Option<u32>> {
        let mut oif = None;
        let seq = self.next_seq();
        let result = self.exchange(&netlink::get_route_request(seq, addr), seq, |ty, p| {
            if ty == netlink::RTM_NEWROUTE {
                oif = netlink::parse_route_oif(p)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(oif),
            // No route at all (ENETUNREACH, EHOSTUNREACH) is an answer too.
            Err(Failure::Reply(ReplyError::Kernel(libc::ENETUNREACH | libc::EHOSTUNREACH))) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The id that the namespace open as `ns_fd` has in this socket's
    /// namespace; `None` when it has none.
    pub fn nsid(&mut self, ns_fd: &impl AsRawFd) -> io::Result<Option<i32>> {
        let mut id = None;
        let seq = self.next_seq();
        let req = netlink::get_nsid_request(seq, ns_fd.as_raw_fd() as u32);
        self.exchange(&req, seq, |ty, p| {
            if ty == netlink::RTM_NEWNSID {
                id = netlink::parse_nsid(p)?;
            }
            Ok(())
        })?;
        Ok(id)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Runs a dump, repeating it when the kernel flags it as interrupted.
    fn dump<T>(
        &mut self,
        build: fn(u32) -> Vec<u8>,
        mut on_data: impl FnMut(u16, &[u8], &mut Vec<T>) -> Result<(), netlink::ParseError>,
    ) -> io::Result<Vec<T>> {
        for _ in 0..DUMP_TRIES {
            let mut out = Vec::new();
            let seq = self.next_seq();
            match self.exchange(&build(seq), seq, |ty, p| on_data(ty, p, &mut out)) {
                Ok(()) => return Ok(out),
                Err(Failure::Reply(ReplyError::Interrupted)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Failure::Reply(ReplyError::Interrupted).into())
    }

    /// Sends `req` and feeds every datagram to a collector until the answer
    /// is complete.
    fn exchange(
        &mut self,
        req: &[u8],
        seq: u32,
        mut on_data: impl FnMut(u16, &[u8]) -> Result<(), netlink::ParseError>,
    ) -> Result<(), Failure> {
        self.send(req).map_err(Failure::Io)?;
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut collector = ReplyCollector::new(seq);
        loop {
            let n = self.recv().map_err(Failure::Io)?;
            if collector
                .feed(&self.buf[..n], &mut on_data)
                .map_err(Failure::Reply)?
            {
                return Ok(());
            }
            // Only reached when datagrams keep coming without the end of
            // the answer (e.g. stale ones), which the receive timeout alone
            // would not catch.
            if Instant::now() > deadline {
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "netlink: answer did not complete in time",
                )));
            }
        }
    }

    fn send(&self, req: &[u8]) -> io::Result<()> {
        let addr = kernel_addr();
        loop {
            // SAFETY: `req` and `addr` are valid for the lengths passed.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    req.as_ptr().cast(),
                    req.len(),
                    0,
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Receives one datagram from the kernel into `self.buf`; returns its
    /// length. Datagrams from any other sender are dropped: only the kernel
    /// (port 0) answers our requests.
    fn recv(&mut self) -> io::Result<usize> {
        loop {
            let mut from = kernel_addr();
            let mut from_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: the buffer and address are valid for the lengths
            // passed; MSG_TRUNC makes the kernel return the datagram's full
            // length so an overlong one is detected below.
            let rc = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_nl).cast(),
                    &mut from_len,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // SO_RCVTIMEO expired.
                    Some(libc::EAGAIN) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "netlink: no answer from the kernel",
                        ))
                    }
                    _ => return Err(err),
                }
            }
            let n = rc as usize;
            if n > self.buf.len() {
                return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
            }
            if from.nl_pid != 0 {
                continue;
            }
            return Ok(n);
        }
    }
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (and
    // addresses the kernel, port 0).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// Why one request failed: the socket itself, or what the kernel answered
/// (kept apart so callers can react to particular answers, e.g. `ENODEV`).
enum Failure {
    Io(io::Error),
    Reply(ReplyError),
}

impl From<Failure> for io::Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Io(e) => e,
            Failure::Reply(ReplyError::Kernel(errno)) => io::Error::from_raw_os_error(errno),
            Failure::Reply(other) => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
