//! The rtnetlink wire format, as pure functions over byte slices: building
//! the few requests discovery sends and parsing what the kernel answers.
//!
//! Nothing here touches a socket, so every path (truncated messages, bad
//! lengths, multi-part dumps, kernel errors) is unit-tested on crafted
//! buffers. Every read is bounds-checked: garbage input gives an error, never
//! a panic, because a parsing bug must not take the gateway down.
//!
//! Netlink uses the host's byte order, and every header and attribute starts
//! on a 4-byte boundary (`NLMSG_ALIGN`, `RTA_ALIGN` in the uapi headers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// Constants from the kernel's uapi headers (linux/netlink.h, rtnetlink.h,
// if_link.h, if_addr.h, net_namespace.h). They are ABI and never change;
// spelling them out here keeps this file independent of which of them a
// given libc target happens to export.
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
/// Set on dump parts when the table changed while it was being dumped: the
/// dump may be inconsistent and should be repeated.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNSID: u16 = 88;
pub const RTM_GETNSID: u16 = 90;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

/// `IFF_LOOPBACK` in `ifinfomsg.ifi_flags`.
pub const IFF_LOOPBACK: u32 = 0x8;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The attribute type bits; the top two bits are the nested / byte-order
/// flags, which some kernels set on IFLA_LINKINFO.
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NLMSG_HDRLEN: usize = 16;
const RTA_HDRLEN: usize = 4;
/// `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;
/// `struct rtgenmsg` (one byte) padded to the netlink alignment.
const RTGENMSG_LEN: usize = 4;

/// Rounds up to the next multiple of 4; saturating so a huge length from
/// garbage input cannot overflow (callers cap it at the buffer anyway).
fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// What was wrong with a buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what} claims length {len}, outside 1 header..{available} bytes available")]
    BadLength {
        what: &'static str,
        len: usize,
        available: usize,
    },
}

fn need(what: &'static str, buf: &[u8], n: usize) -> Result<(), ParseError> {
    if buf.len() < n {
        Err(ParseError::Truncated {
            what,
            need: n,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    let b = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The sender's port id (`nlmsg_pid`).
    pub port: u32,
}

/// The netlink messages in one received datagram, in order. Stops after the
/// first error: once a length is wrong, nothing after it can be trusted.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(MsgHeader, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let buf = self.rest;
        let parsed = (|| {
            need("netlink message header", buf, NLMSG_HDRLEN)?;
            // The four reads below are in bounds: `need` checked 16 bytes.
            let hdr = MsgHeader {
                len: u32_at(buf, 0).unwrap_or(0),
                ty: u16_at(buf, 4).unwrap_or(0),
                flags: u16_at(buf, 6).unwrap_or(0),
                seq: u32_at(buf, 8).unwrap_or(0),
                port: u32_at(buf, 12).unwrap_or(0),
            };
            let len = hdr.len as usize;
            if len < NLMSG_HDRLEN || len > buf.len() {
                return Err(ParseError::BadLength {
                    what: "netlink message",
                    len,
                    available: buf.len(),
                });
            }
            // The last message of a datagram need not carry its padding.
            let next = align4(len).min(buf.len());
            Ok((hdr, &buf[NLMSG_HDRLEN..len], &buf[next..]))
        })();
        match parsed {
            Ok((hdr, payload, rest)) => {
                self.rest = rest;
                Some(Ok((hdr, payload)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// The attributes (`struct rtattr` + payload) in `buf`, type bits only
/// (nested / byte-order flags masked off). Stops after the first error.
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let buf = self.rest;
        let (Some(len), Some(ty)) = (u16_at(buf, 0), u16_at(buf, 2)) else {
            self.rest = &[];
            return Some(Err(ParseError::Truncated {
                what: "attribute header",
                need: RTA_HDRLEN,
                have: buf.len(),
            }));
        };
        let len = len as usize;
        if len < RTA_HDRLEN || len > buf.len() {
            self.rest = &[];
            return Some(Err(ParseError::BadLength {
                what: "attribute",
                len,
                available: buf.len(),
            }));
        }
        self.rest = &buf[align4(len).min(buf.len())..];
        Some(Ok((ty & NLA_TYPE_MASK, &buf[RTA_HDRLEN..len])))
    }
}

fn attr_u32(what: &'static str, payload: &[u8]) -> Result<u32, ParseError> {
    u32_at(payload, 0).ok_or(ParseError::Truncated {
        what,
        need: 4,
        have: payload.len(),
    })
}

/// A NUL-terminated string attribute (the terminator is optional here).
fn attr_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// How one message relates to the request being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// An answer record (e.g. `RTM_NEWLINK`), body without the netlink header.
    Data { ty: u16, payload: &'a [u8] },
    /// The end of a dump.
    Done,
    /// `NLMSG_ERROR` with code 0: the request was acknowledged.
    Ack,
    /// The kernel refused the request: a positive errno.
    Failed(i32),
    /// Nothing to act on (`NLMSG_NOOP`).
    Ignore,
}

/// Classifies one message; the payload of `NLMSG_ERROR` (and of
/// `NLMSG_DONE`, where newer kernels put a dump's error code) is the
/// negated errno as an `i32`.
pub fn classify<'a>(hdr: &MsgHeader, payload: &'a [u8]) -> Result<Reply<'a>, ParseError> {
    match hdr.ty {
        NLMSG_NOOP => Ok(Reply::Ignore),
        NLMSG_ERROR => {
            let code = attr_u32("NLMSG_ERROR code", payload)? as i32;
            Ok(if code == 0 {
                Reply::Ack
            } else {
                Reply::Failed(code.checked_neg().unwrap_or(i32::MAX))
            })
        }
        NLMSG_DONE => {
            // Old kernels may omit the code; then the dump simply ended.
            match u32_at(payload, 0).map(|c| c as i32) {
                Some(code) if code < 0 => Ok(Reply::Failed(code.checked_neg().unwrap_or(i32::MAX))),
                _ => Ok(Reply::Done),
            }
        }
        // The kernel dropped messages for us: the answer is incomplete.
        NLMSG_OVERRUN => Ok(Reply::Failed(libc::ENOBUFS)),
        ty => Ok(Reply::Data { ty, payload }),
    }
}

/// Why collecting the replies to a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed netlink reply: {0}")]
    Parse(#[from] ParseError),
    #[error("kernel refused the request: errno {0}")]
    Kernel(i32),
    /// A dump part carried `NLM_F_DUMP_INTR`: repeat the dump.
    #[error("dump interrupted by a concurrent change")]
    Interrupted,
}

/// Gathers the answer to one request across as many datagrams as the kernel
/// sends. A request ends at `NLMSG_DONE` (dumps) or `NLMSG_ERROR` (an ack,
/// asked for with `NLM_F_ACK` on single requests, or a refusal), so both
/// kinds are handled by the same loop.
#[derive(Debug)]
pub struct ReplyCollector {
    seq: u32,
    interrupted: bool,
    finished: bool,
}

impl ReplyCollector {
    pub fn new(seq: u32) -> Self {
        ReplyCollector {
            seq,
            interrupted: false,
            finished: false,
        }
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Feeds one datagram. `on_data` gets each data message of this request;
    /// messages answering another sequence number (left over from an
    /// earlier request) are skipped. Returns whether the request is complete.
    pub fn feed(
        &mut self,
        datagram: &[u8],
        mut on_data: impl FnMut(u16, &[u8]) -> Result<(), ParseError>,
    ) -> Result<bool, ReplyError> {
        for msg in messages(datagram) {
            let (hdr, payload) = msg?;
            if hdr.seq != self.seq || self.finished {
                continue;
            }
            if hdr.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match classify(&hdr, payload)? {
                Reply::Data { ty, payload } => on_data(ty, payload)?,
                Reply::Ignore => {}
                Reply::Failed(errno) => {
                    self.finished = true;
                    return Err(ReplyError::Kernel(errno));
                }
                Reply::Done | Reply::Ack => self.finished = true,
            }
        }
        if self.finished && self.interrupted {
            return Err(ReplyError::Interrupted);
        }
        Ok(self.finished)
    }
}

/// One interface, from an `RTM_NEWLINK` message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkRecord {
    pub index: u32,
    /// `ifi_flags` (`IFF_*`).
    pub flags: u32,
    pub name: String,
    /// The link-layer address when it is an Ethernet MAC (6 bytes).
    pub mac: Option<[u8; 6]>,
    /// `IFLA_LINK`: for a veth, its peer's ifindex (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: present when the `link` device lives in another
    /// namespace; the id that namespace has *in the namespace asked*.
    pub link_netnsid: Option<i32>,
    /// `IFLA_INFO_KIND`, e.g. "veth", "bridge"; none for physical devices.
    pub kind: Option<String>,
    /// `IFLA_MASTER`: the bridge (or bond, VRF) the interface is enslaved to.
    pub master: Option<u32>,
}

pub fn parse_link(payload: &[u8]) -> Result<LinkRecord, ParseError> {
    need("ifinfomsg", payload, IFINFOMSG_LEN)?;
    let mut link = LinkRecord {
        index: u32_at(payload, 4).unwrap_or(0),
        flags: u32_at(payload, 8).unwrap_or(0),
        ..LinkRecord::default()
    };
    for attr in attrs(&payload[IFINFOMSG_LEN..]) {
        let (ty, data) = attr?;
        match ty {
            IFLA_IFNAME => link.name = attr_string(data),
            IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(data).ok(),
            IFLA_LINK => link.link = Some(attr_u32("IFLA_LINK", data)?),
            IFLA_MASTER => link.master = Some(attr_u32("IFLA_MASTER", data)?),
            IFLA_LINK_NETNSID => {
                link.link_netnsid = Some(attr_u32("IFLA_LINK_NETNSID", data)? as i32)
            }
            IFLA_LINKINFO => {
                for inner in attrs(data) {
                    let (ty, data) = inner?;
                    if ty == IFLA_INFO_KIND {
                        link.kind = Some(attr_string(data));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

/// One address, from an `RTM_NEWADDR` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRecord {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// `None` for families other than IPv4 / IPv6 or a message without an
/// address. The local address is `IFA_LOCAL` when present: on
/// point-to-point links `IFA_ADDRESS` is the *peer's* address (this is what
/// `ip addr` shows too); otherwise the two are equal or only `IFA_ADDRESS`
/// is sent (IPv6).
pub fn parse_addr(payload: &[u8]) -> Result<Option<AddrRecord>, ParseError> {
    need("ifaddrmsg", payload, IFADDRMSG_LEN)?;
    let family = payload[0];
    let prefix_len = payload[1];
    let index = u32_at(payload, 4).unwrap_or(0);
    let (mut local, mut address) = (None, None);
    for attr in attrs(&payload[IFADDRMSG_LEN..]) {
        let (ty, data) = attr?;
        let ip = match family {
            AF_INET => <[u8; 4]>::try_from(data)
                .ok()
                .map(|b| IpAddr::from(Ipv4Addr::from(b))),
            AF_INET6 => <[u8; 16]>::try_from(data)
                .ok()
                .map(|b| IpAddr::from(Ipv6Addr::from(b))),
            _ => return Ok(None),
        };
        match ty {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
    }
    Ok(local.or(address).map(|addr| AddrRecord {
        index,
        addr,
        prefix_len,
    }))
}

/// The id from an `RTM_NEWNSID` answer; `None` when the namespace has no id
/// in the asking namespace (the kernel sends -1, `NETNSA_NSID_NOT_ASSIGNED`).
pub fn parse_nsid(payload: &[u8]) -> Result<Option<i32>, ParseError> {
    need("rtgenmsg", payload, RTGENMSG_LEN)?;
    for attr in attrs(&payload[RTGENMSG_LEN..]) {
        let (ty, data) = attr?;
        if ty == NETNSA_NSID {
            let id = attr_u32("NETNSA_NSID", data)? as i32;
            return Ok((id >= 0).then_some(id));
        }
    }
    Ok(None)
}

/// Builds one request: netlink header, fixed family header, attributes.
fn request(ty: u16, flags: u16, seq: u32, fixed: &[u8], attributes: &[(u16, &[u8])]) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDRLEN];
    msg.extend_from_slice(fixed);
    msg.resize(align4(msg.len()), 0);
    for (ty, data) in attributes {
        let len = (RTA_HDRLEN + data.len()) as u16;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(data);
        msg.resize(align4(msg.len()), 0);
    }
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&ty.to_ne_bytes());
    msg[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: the kernel fills in our port.
    msg
}

/// Every interface of the socket's namespace.
pub fn dump_links_request(seq: u32) -> Vec<u8> {
    request(RTM_GETLINK, NLM_F_DUMP, seq, &[0; IFINFOMSG_LEN], &[])
}

/// Every address of the socket's namespace, all families (`AF_UNSPEC`).
pub fn dump_addrs_request(seq: u32) -> Vec<u8> {
    let mut ifa = [0u8; IFADDRMSG_LEN];
    ifa[0] = AF_UNSPEC;
    request(RTM_GETADDR, NLM_F_DUMP, seq, &ifa, &[])
}

/// The one interface with this ifindex; acknowledged, so the answer ends
/// with an `NLMSG_ERROR` 0 (or the refusal, `ENODEV` when there is none).
pub fn get_link_request(seq: u32, index: u32) -> Vec<u8> {
    let mut ifi = [0u8; IFINFOMSG_LEN];
    ifi[4..8].copy_from_slice(&index.to_ne_bytes());
    request(RTM_GETLINK, NLM_F_ACK, seq, &ifi, &[])
}

/// `rtmsg` (family, dst_len, src_len, tos, table, protocol, scope, type,
/// flags: 12 bytes).
const RTMSG_LEN: usize = 12;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
/// `rtmsg.rtm_type` of a route to an address of the namespace itself.
const RTN_LOCAL: u8 = 2;

/// The route the socket's namespace would use to send to `addr` (what `ip
/// route get ADDR` asks); acknowledged.
pub fn get_route_request(seq: u32, addr: IpAddr) -> Vec<u8> {
    let mut rtm = [0u8; RTMSG_LEN];
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    rtm[0] = family;
    rtm[1] = (bytes.len() * 8) as u8;
    request(RTM_GETROUTE, NLM_F_ACK, seq, &rtm, &[(RTA_DST, &bytes)])
}

/// The output interface of an `RTM_NEWROUTE` answer, `None` for a route to
/// one of the namespace's own addresses (a local route leaves by `lo`, not
/// by the interface that owns the address) or one without `RTA_OIF`.
pub fn parse_route_oif(payload: &[u8]) -> Result<Option<u32>, ParseError> {
    need("rtmsg", payload, RTMSG_LEN)?;
    if payload[7] == RTN_LOCAL {
        return Ok(None);
    }
    let mut oif = None;
    for attr in attrs(&payload[RTMSG_LEN..]) {
        let (ty, data) = attr?;
        if ty == RTA_OIF {
            oif = Some(attr_u32("RTA_OIF", data)?);
        }
    }
    Ok(oif)
}

/// The id that the namespace behind file descriptor `ns_fd` has in the
/// socket's namespace.
pub fn get_nsid_request(seq: u32, ns_fd: u32) -> Vec<u8> {
    request(
        RTM_GETNSID,
        NLM_F_ACK,
        seq,
        &[AF_UNSPEC],
        &[(NETNSA_FD, &ns_fd.to_ne_bytes())],
    )
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
