//! Header parsing for the TC programs, as a pure function over a [`Frame`]
//! (the packet itself when its headers are in the skb's linear part, else a
//! copy of its first [`HDR_BUF`] bytes), so the host tests the same
//! decisions the kernel makes.
//!
//! Every offset read here is a constant: IPv4 headers with options and IPv6
//! extension headers are refused before the transport header is read, so the
//! transport header always starts at [`L4_OFF_V4`] or [`L4_OFF_V6`]. That
//! keeps the eBPF side free of variable-offset stack reads (which 5.10's
//! verifier rejects) and loops.
//!
//! # Decisions
//! | frame | result |
//! | --- | --- |
//! | shorter than Ethernet | `Malformed` |
//! | ARP for IPv4 over Ethernet (hardware type 1, protocol 0x0800, lengths 6 and 4), 28 bytes or more | [`Parsed::Neighbour`]: its sender protocol address is the claim |
//! | any other ARP (shorter, or not IPv4 over Ethernet) | `Malformed` |
//! | EtherType not IPv4/IPv6/ARP (VLAN included) | `UnsupportedL3` |
//! | IPv4: < 20 bytes, version ≠ 4, IHL < 5, IHL beyond the frame, total length < IHL or beyond the frame | `Malformed` |
//! | IPv4: IHL > 5 | `Ipv4Options` |
//! | IPv4: MF set or fragment offset ≠ 0 | `Fragment` |
//! | IPv6: < 40 bytes, version ≠ 6, payload length beyond the frame | `Malformed` |
//! | IPv6: next header is an extension header ([`is_ipv6_ext_header`]) | `Ipv6ExtHeader` |
//! | TCP: < 20 bytes, data offset < 5 or beyond the IP payload | `Malformed` |
//! | TCP SYN without ACK | a [`Flow`] that is never a reply |
//! | UDP: < 8 bytes | `Malformed` |
//! | ICMP (in IPv4) / ICMPv6 (in IPv6): < 8 bytes | `Malformed` |
//! | ICMPv6 types 133-137 (neighbour discovery) with IPv6 hop limit ≠ 255 | `Malformed` (RFC 4861: off-link, receivers discard it) |
//! | ICMPv6 133 (RS, 8 bytes or more), 135 (NS, 24 or more) | [`Parsed::Neighbour`]: the IPv6 source is the claim |
//! | ICMPv6 136 (NA, 24 bytes or more) | [`Parsed::Neighbour`]: the target is the claim, read by the caller at [`ND_TARGET_OFF`] |
//! | ICMPv6 NS or NA shorter than 24 bytes | `Malformed` |
//! | ICMPv6 134 (RA), 137 (redirect) | [`Parsed::RouterMessage`] (only a router may send them) |
//! | any other IP protocol (GRE, SCTP, ICMP in IPv6, ...) | a [`Flow`] with ports 0 |
//!
//! Lengths are taken from the IP header (not the frame), so Ethernet padding
//! after a short packet is never read as transport bytes; the exception is
//! a BIG TCP packet (length field 0, frame over 64 KiB), whose length is the
//! frame's (see [`big_tcp_len`]).

use crate::{
    datapath::{proto, DropReason},
    packet::{ethertype, ETH_HLEN, IPV4_MIN_HLEN, IPV6_HLEN},
};

/// Bytes of the frame the parser looks at: Ethernet + IPv6 + the TCP header
/// up to its flags byte (14 + 40 + 14 = 68), rounded up to 8.
pub const HDR_BUF: usize = 72;
/// Transport header offset in an IPv4 frame (options are refused).
pub const L4_OFF_V4: usize = ETH_HLEN + IPV4_MIN_HLEN;
/// Transport header offset in an IPv6 frame (extension headers are refused).
pub const L4_OFF_V6: usize = ETH_HLEN + IPV6_HLEN;

const TCP_MIN_HLEN: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const UDP_HLEN: usize = 8;
/// Type, code, checksum and the 4-byte rest-of-header every ICMP message has.
const ICMP_MIN_LEN: usize = 8;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Router solicitation .. redirect: what IPv6 needs to reach its neighbours.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;
/// Router advertisement and redirect: messages only a router sends.
const ICMPV6_RA: u8 = 134;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
/// Neighbour solicitations and advertisements: type, code, checksum, 4
/// reserved/flag bytes and the 16-byte target.
const ND_NS_NA_MIN_LEN: usize = 24;
/// Where a neighbour advertisement's target address starts in the frame
/// (past [`HDR_BUF`]: the eBPF side reads it on its own, only for NAs).
pub const ND_TARGET_OFF: usize = L4_OFF_V6 + 8;
/// ARP for IPv4 over Ethernet: 8 bytes of header, two MAC and two IPv4
/// addresses.
const ARP_LEN: usize = 28;
/// The ARP sender protocol (IPv4) address in the frame.
const ARP_SPA_OFF: usize = ETH_HLEN + 14;
const ARP_HTYPE_ETHERNET: u16 = 1;
const ICMPV6_REDIRECT: u8 = 137;
/// The hop limit every neighbour discovery message carries (RFC 4861): one
/// that arrives with less crossed a router and must be discarded.
const ND_HOP_LIMIT: u8 = 255;

// The deepest read (TCP flags in IPv6) must lie inside the buffer.
const _: () = assert!(L4_OFF_V6 + 13 < HDR_BUF);

/// The stack buffer the eBPF side copies the headers into, as nine words.
///
/// Why words and volatile stores: bpf-linker links `memset` in as an
/// ordinary BPF function (a byte loop), and LLVM turned every zeroed array
/// (`[0u8; 72]`, aligned or not, or nine zero words as a literal) into a call
/// of it: 72 loop iterations per packet. Volatile stores cannot be merged
/// into a `memset`, so zeroing stays nine 8-byte stores.
#[repr(C)]
pub struct HeaderBuf {
    words: [u64; HDR_BUF / 8],
}

const _: () = assert!(HDR_BUF.is_multiple_of(8));

impl HeaderBuf {
    /// Zeroes `slot` in place and returns it initialised. In place, because
    /// returning the buffer by value added a copy that LLVM again turned
    /// into a `memset` call.
    #[inline(always)]
    pub fn init_zeroed(slot: &mut core::mem::MaybeUninit<HeaderBuf>) -> &mut HeaderBuf {
        let words = slot.as_mut_ptr().cast::<u64>();
        // SAFETY: the nine writes cover the whole buffer, in bounds and
        // aligned, before it is assumed initialised.
        unsafe {
            words.write_volatile(0);
            words.add(1).write_volatile(0);
            words.add(2).write_volatile(0);
            words.add(3).write_volatile(0);
            words.add(4).write_volatile(0);
            words.add(5).write_volatile(0);
            words.add(6).write_volatile(0);
            words.add(7).write_volatile(0);
            words.add(8).write_volatile(0);
            slot.assume_init_mut()
        }
    }

    /// The buffer's bytes.
    #[inline(always)]
    pub fn bytes(&self) -> &[u8; HDR_BUF] {
        // SAFETY: same size; `u8` has no alignment or validity requirements
        // that `u64`'s initialised bytes do not meet.
        unsafe { &*(self as *const HeaderBuf).cast::<[u8; HDR_BUF]>() }
    }

    /// Where the eBPF side writes the copied bytes.
    #[inline(always)]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }
}

const _: () = assert!(HDR_BUF / 8 == 9, "HeaderBuf::init_zeroed writes nine words");

/// What the programs do with a frame after parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Link-level housekeeping (ARP, IPv6 router/neighbour solicitation,
    /// neighbour advertisement): passes without conntrack or policy, once
    /// its claim is checked when a container sends it (`crate::spoof`).
    Neighbour(Claim),
    /// An ICMPv6 router advertisement or redirect: housekeeping when it
    /// comes from the network, but a container sending one claims to be a
    /// router (rogue RA: it could take over its neighbours' IPv6 routes),
    /// so the programs decide by direction.
    RouterMessage,
    /// An IP packet to check against conntrack and policy.
    Flow(Flow),
}

/// The parts of an IP packet conntrack and policy look at.
///
/// Aligned, addresses first, so zeroing and copying the addresses compiles
/// to word stores and loads rather than byte loops (see [`HeaderBuf`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Addresses as in [`crate::datapath::CtKey`]: IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order; 0 for ICMP and protocols without ports.
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// Whether the packet may be a reply to a connection seen the other way
    /// (only then is the reversed tuple looked up). ICMP messages other than
    /// echo reply are not: with ports 0, a peer's echo request would
    /// otherwise match the endpoint's own ping as a reply. A TCP SYN without
    /// ACK is not either (and skips a lookup on every connection attempt).
    pub may_be_reply: bool,
    /// TCP: the header's flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK
    /// 0x10, ...), which conntrack's TCP states follow
    /// ([`crate::ct::on_hit`]); 0 otherwise. In what was the struct's tail
    /// padding: `Flow` stays 40 bytes.
    pub tcp_flags: u8,
}

const _: () = assert!(core::mem::size_of::<Flow>() == 40);

/// The address an ARP packet or a neighbour discovery message claims for
/// its sender: receivers note "this address is at my sender's MAC".
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// ARP: the sender protocol address (IPv4 in the first 4 bytes); RS
    /// and NS: the IPv6 source; NA: the IPv6 source, while the claim is the
    /// target (`in_target`).
    pub addr: [u8; 16],
    /// 4 (ARP) or 6.
    pub family: u8,
    /// A neighbour advertisement: the claimed address is its target, at
    /// [`ND_TARGET_OFF`] in the frame, beyond what the parser reads.
    pub in_target: bool,
}

/// Read access to the start of a frame, for [`parse`].
///
/// Two implementations: [`CopiedFrame`] (the first bytes copied to a
/// buffer) and, in the eBPF crate, the packet's linear data read in place.
/// The parser calls [`Frame::has`] before reading any byte below the given
/// end: for direct packet access that comparison against `data_end` is what
/// the verifier needs, and it must come before the reads it covers.
pub trait Frame {
    /// The whole frame's length (`skb->len`).
    fn frame_len(&self) -> usize;
    /// Whether bytes `[0, end)` can be read. The parser only asks for ends
    /// it has already checked against [`Frame::frame_len`], and the programs read
    /// in place only when the linear part covers the first
    /// `min(len, HDR_BUF)` bytes, so this fails only on a broken invariant;
    /// the parser then reports `Malformed` (fail closed).
    fn has(&self, end: usize) -> bool;
    /// The byte at `off`, below an end [`Frame::has`] accepted.
    fn byte(&self, off: usize) -> u8;

    /// Big-endian `u16` at `off` (below an accepted end, like `off + 1`).
    #[inline(always)]
    fn be16(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.byte(off), self.byte(off + 1)])
    }

    /// The four bytes at `off` as stored (an IPv4 address).
    #[inline(always)]
    fn bytes4(&self, off: usize) -> [u8; 4] {
        [
            self.byte(off),
            self.byte(off + 1),
            self.byte(off + 2),
            self.byte(off + 3),
        ]
    }
}

/// A frame's first `min(len, HDR_BUF)` bytes copied into a buffer (the rest
/// of the buffer is ignored).
pub struct CopiedFrame<'a> {
    pub hdr: &'a [u8; HDR_BUF],
    /// The whole frame's length.
    pub len: usize,
}

impl Frame for CopiedFrame<'_> {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn has(&self, end: usize) -> bool {
        end <= HDR_BUF && end <= self.len
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> u8 {
        self.hdr[off]
    }
}

/// Parses the frame whose first `min(frame_len, HDR_BUF)` bytes are in
/// `hdr` (the rest of `hdr` is ignored). `frame_len` is the whole frame's
/// length (`skb->len`).
#[inline(always)]
pub fn parse_frame(hdr: &[u8; HDR_BUF], frame_len: usize) -> Result<Parsed, DropReason> {
    parse(&CopiedFrame {
        hdr,
        len: frame_len,
    })
}

/// Parses `frame` (see the module docs for the decisions).
#[inline(always)]
pub fn parse<F: Frame>(frame: &F) -> Result<Parsed, DropReason> {
    let frame_len = frame.frame_len();
    if frame_len < ETH_HLEN || !frame.has(ETH_HLEN) {
        return Err(DropReason::Malformed);
    }
    let l3_len = frame_len - ETH_HLEN;
    match frame.be16(12) {
        ethertype::ARP => parse_arp(frame, l3_len),
        ethertype::IPV4 => parse_ipv4(frame, l3_len),
        ethertype::IPV6 => parse_ipv6(frame, l3_len),
        _ => Err(DropReason::UnsupportedL3),
    }
}

/// What the fixed IP header of a frame says, for checks that must not
/// depend on the rest of the header being acceptable (the uplink's deny
/// list applies to fragments and packets with options too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// Not IPv4 or IPv6 (ARP, VLAN-tagged, LLDP, ...).
    NotIp,
    /// IPv4 or IPv6 EtherType, but the fixed header does not fit.
    Truncated,
    /// The addresses and protocol (ports 0, `may_be_reply` true).
    Ip(Flow),
}

/// Reads the addresses of an untagged IPv4 or IPv6 frame from the fixed IP
/// header (no other check: see [`parse`] for the full one).
#[inline(always)]
pub fn ip_addresses<F: Frame>(f: &F) -> L3 {
    const IP: usize = ETH_HLEN;
    if f.frame_len() < ETH_HLEN || !f.has(ETH_HLEN) {
        return L3::NotIp;
    }
    let len = f.frame_len();
    match f.be16(12) {
        ethertype::IPV4 => {
            if len < IP + IPV4_MIN_HLEN || !f.has(IP + IPV4_MIN_HLEN) {
                return L3::Truncated;
            }
            L3::Ip(Flow {
                saddr: v4_addr(f.bytes4(IP + 12)),
                daddr: v4_addr(f.bytes4(IP + 16)),
                sport: 0,
                dport: 0,
                family: 4,
                protocol: f.byte(IP + 9),
                may_be_reply: true,
                tcp_flags: 0,
            })
        }
        ethertype::IPV6 => {
            if len < IP + IPV6_HLEN || !f.has(IP + IPV6_HLEN) {
                return L3::Truncated;
            }
            L3::Ip(Flow {
                saddr: v6_addr(f, IP + 8),
                daddr: v6_addr(f, IP + 24),
                sport: 0,
                dport: 0,
                family: 6,
                protocol: f.byte(IP + 6),
                may_be_reply: true,
                tcp_flags: 0,
            })
        }
        _ => L3::NotIp,
    }
}

/// Whether IPv6 next-header value `nh` is an extension header (or one of the
/// values reserved for them) rather than a transport protocol.
#[inline(always)]
pub fn is_ipv6_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        0       // hop-by-hop options
        | 43    // routing
        | 44    // fragment
        | 50    // ESP
        | 51    // AH
        | 60    // destination options
        | 135   // mobility
        | 139   // HIP
        | 140   // shim6
        | 253   // experimental
        | 254 // experimental
    )
}

/// ARP: only IPv4 over Ethernet, whose sender address is the claim.
#[inline(always)]
fn parse_arp<F: Frame>(f: &F, l3_len: usize) -> Result<Parsed, DropReason> {
    const ARP: usize = ETH_HLEN;
    if l3_len < ARP_LEN || !f.has(ARP + ARP_LEN) {
        return Err(DropReason::Malformed);
    }
    if f.be16(ARP) != ARP_HTYPE_ETHERNET
        || f.be16(ARP + 2) != ethertype::IPV4
        || f.byte(ARP + 4) != 6
        || f.byte(ARP + 5) != 4
    {
        return Err(DropReason::Malformed);
    }
    Ok(Parsed::Neighbour(Claim {
        addr: v4_addr(f.bytes4(ARP_SPA_OFF)),
        family: 4,
        in_target: false,
    }))
}

#[inline(always)]
fn parse_ipv4<F: Frame>(f: &F, l3_len: usize) -> Result<Parsed, DropReason> {
    const IP: usize = ETH_HLEN;
    if l3_len < IPV4_MIN_HLEN || !f.has(IP + IPV4_MIN_HLEN) {
        return Err(DropReason::Malformed);
    }
    let version_ihl = f.byte(IP);
    if version_ihl >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < IPV4_MIN_HLEN || ihl > l3_len {
        return Err(DropReason::Malformed);
    }
    if ihl > IPV4_MIN_HLEN {
        return Err(DropReason::Ipv4Options);
    }
    let total = big_tcp_len(f.be16(IP + 2), l3_len);
    if total < ihl || total > l3_len {
        return Err(DropReason::Malformed);
    }
    // Flags and offset: bit 0x2000 is MF, the low 13 bits the offset.
    if f.be16(IP + 6) & 0x3fff != 0 {
        return Err(DropReason::Fragment);
    }
    let flow = Flow {
        saddr: v4_addr(f.bytes4(IP + 12)),
        daddr: v4_addr(f.bytes4(IP + 16)),
        sport: 0,
        dport: 0,
        family: 4,
        protocol: f.byte(IP + 9),
        may_be_reply: true,
        tcp_flags: 0,
    };
    parse_l4(f, L4_OFF_V4, total - ihl, flow)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(f: &F, l3_len: usize) -> Result<Parsed, DropReason> {
    const IP: usize = ETH_HLEN;
    if l3_len < IPV6_HLEN || !f.has(IP + IPV6_HLEN) {
        return Err(DropReason::Malformed);
    }
    if f.byte(IP) >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    let payload = big_tcp_len(f.be16(IP + 4), l3_len - IPV6_HLEN);
    if payload > l3_len - IPV6_HLEN {
        return Err(DropReason::Malformed);
    }
    let next_header = f.byte(IP + 6);
    if is_ipv6_ext_header(next_header) {
        return Err(DropReason::Ipv6ExtHeader);
    }
    let flow = Flow {
        saddr: v6_addr(f, IP + 8),
        daddr: v6_addr(f, IP + 24),
        sport: 0,
        dport: 0,
        family: 6,
        protocol: next_header,
        may_be_reply: true,
        tcp_flags: 0,
    };
    parse_l4(f, L4_OFF_V6, payload, flow)
}

/// The length an IP header's 16-bit length `field` gives, where the frame
/// holds `avail` bytes from the same starting point. BIG TCP (Linux 5.19
/// for IPv6, 6.3 for IPv4) builds GSO packets larger than 64 KiB inside
/// the host and marks them with a length field of 0; only such a packet
/// can have a zero field and more than 65,535 bytes, so the frame's length
/// stands in for it. Any other zero field stays zero (and is malformed).
#[inline(always)]
fn big_tcp_len(field: u16, avail: usize) -> usize {
    // Branch-free: a branch here changed how LLVM laid out the TC
    // programs' stack enough for the verifier to reject them.
    let big = usize::from(field == 0) & usize::from(avail > 0xffff);
    usize::from(field) | (avail & big.wrapping_neg())
}

/// The IPv6 address at `off`, built from words (see [`HeaderBuf`]).
#[inline(always)]
fn v6_addr<F: Frame>(f: &F, off: usize) -> [u8; 16] {
    let words: [u32; 4] = [
        u32::from_ne_bytes(f.bytes4(off)),
        u32::from_ne_bytes(f.bytes4(off + 4)),
        u32::from_ne_bytes(f.bytes4(off + 8)),
        u32::from_ne_bytes(f.bytes4(off + 12)),
    ];
    // SAFETY: same size, every bit pattern is a valid byte array.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// An IPv4 address in the 16-byte form of [`Flow`] and the CT key, built
/// from words (see [`HeaderBuf`] on why not a zeroed byte array).
#[inline(always)]
fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    let words: [u32; 4] = [u32::from_ne_bytes(a), 0, 0, 0];
    // SAFETY: same size, every bit pattern is a valid byte array.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// Reads the transport header at the constant offset `off`; `l4_len` is the
/// IP payload length, already checked to lie inside the frame. Each branch
/// checks the length before it reads.
#[inline(always)]
fn parse_l4<F: Frame>(
    f: &F,
    off: usize,
    l4_len: usize,
    mut flow: Flow,
) -> Result<Parsed, DropReason> {
    let icmp = if flow.family == 4 {
        proto::ICMP
    } else {
        proto::ICMPV6
    };
    match flow.protocol {
        proto::TCP => {
            // Up to the flags byte.
            if l4_len < TCP_MIN_HLEN || !f.has(off + 14) {
                return Err(DropReason::Malformed);
            }
            let data_off = usize::from(f.byte(off + 12) >> 4) * 4;
            if data_off < TCP_MIN_HLEN || data_off > l4_len {
                return Err(DropReason::Malformed);
            }
            flow.sport = f.be16(off);
            flow.dport = f.be16(off + 2);
            // A SYN without ACK opens a connection; it never answers one.
            // (Simultaneous open, where it would, goes through policy.)
            let flags = f.byte(off + 13);
            flow.may_be_reply = !(flags & TCP_SYN != 0 && flags & TCP_ACK == 0);
            flow.tcp_flags = flags;
        }
        proto::UDP => {
            if l4_len < UDP_HLEN || !f.has(off + 4) {
                return Err(DropReason::Malformed);
            }
            flow.sport = f.be16(off);
            flow.dport = f.be16(off + 2);
        }
        p if p == icmp => {
            if l4_len < ICMP_MIN_LEN || !f.has(off + 1) {
                return Err(DropReason::Malformed);
            }
            let kind = f.byte(off);
            if flow.family == 6 && (ICMPV6_ND_FIRST..=ICMPV6_ND_LAST).contains(&kind) {
                if f.byte(ETH_HLEN + 7) != ND_HOP_LIMIT {
                    return Err(DropReason::Malformed);
                }
                if kind == ICMPV6_RA || kind == ICMPV6_REDIRECT {
                    return Ok(Parsed::RouterMessage);
                }
                if (kind == ICMPV6_NS || kind == ICMPV6_NA) && l4_len < ND_NS_NA_MIN_LEN {
                    return Err(DropReason::Malformed);
                }
                return Ok(Parsed::Neighbour(Claim {
                    addr: flow.saddr,
                    family: 6,
                    in_target: kind == ICMPV6_NA,
                }));
            }
            let echo_reply = if flow.family == 4 {
                ICMP_ECHO_REPLY
            } else {
                ICMPV6_ECHO_REPLY
            };
            flow.may_be_reply = kind == echo_reply;
        }
        // Other protocols: no ports to read; policy sees port 0, so only an
        // any-port entry for the protocol could allow them (the policy
        // compiler emits none, so they are denied).
        _ => {}
    }
    Ok(Parsed::Flow(flow))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    const SRC4: [u8; 4] = [10, 0, 0, 1];
    const DST4: [u8; 4] = [10, 0, 0, 2];

    /// A frame's header buffer and length, as the eBPF side would copy it.
    #[test]
    fn ip_addresses_reads_only_the_fixed_header() {
        let mut f = std::vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[14] = 0x46; // options: the full parser refuses, this one reads on
        f[14 + 9] = proto::UDP;
        f[26..30].copy_from_slice(&SRC4);
        f[30..34].copy_from_slice(&DST4);
        let (hdr, len) = buf(&f);
        let frame = CopiedFrame { hdr: &hdr, len };
        match ip_addresses(&frame) {
            L3::Ip(flow) => {
                assert_eq!(&flow.saddr[..4], &SRC4);
                assert_eq!(&flow.daddr[..4], &DST4);
                assert_eq!((flow.family, flow.protocol), (4, proto::UDP));
            }
            other => panic!("{other:?}"),
        }
        let (hdr, _) = buf(&f);
        let short = CopiedFrame { hdr: &hdr, len: 30 };
        assert_eq!(ip_addresses(&short), L3::Truncated);
        f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        let (hdr, len) = buf(&f);
        assert_eq!(ip_addresses(&CopiedFrame { hdr: &hdr, len }), L3::NotIp);
    }

    fn buf(frame: &[u8]) -> ([u8; HDR_BUF], usize) {
        let mut b = [0u8; HDR_BUF];
        let n = frame.len().min(HDR_BUF);
        b[..n].copy_from_slice(&frame[..n]);
        (b, frame.len())
    }

    fn parse(frame: &[u8]) -> Result<Parsed, DropReason> {
        let (b, n) = buf(frame);
        parse_frame(&b, n)
    }

    fn eth(et: u16) -> [u8; 14] {
        let mut e = [0u8; 14];
        e[12..].copy_from_slice(&et.to_be_bytes());
        e
    }

    fn v4(proto: u8, l4: &[u8]) -> [u8; 128] {
        let mut f = [0u8; 128];
        f[..14].copy_from_slice(&eth(ethertype::IPV4));
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        f[20] = 0x40; // DF
        f[23] = proto;
        f[26..30].copy_from_slice(&SRC4);
        f[30..34].copy_from_slice(&DST4);
        f[34..34 + l4.len()].copy_from_slice(l4);
        f
    }

    fn v4_len(l4: usize) -> usize {
        34 + l4
    }

    fn v6(nh: u8, l4: &[u8]) -> [u8; 128] {
        let mut f = [0u8; 128];
        f[..14].copy_from_slice(&eth(ethertype::IPV6));
        f[14] = 0x60;
        f[18..20].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        f[20] = nh;
        f[22] = 0xfd;
        f[37] = 1;
        f[38] = 0xfd;
        f[53] = 2;
        f[54..54 + l4.len()].copy_from_slice(l4);
        f
    }

    fn tcp(sport: u16, dport: u16) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t
    }

    fn udp(sport: u16, dport: u16) -> [u8; 8] {
        let mut u = [0u8; 8];
        u[..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&8u16.to_be_bytes());
        u
    }

    fn flow(r: Result<Parsed, DropReason>) -> Flow {
        match r {
            Ok(Parsed::Flow(f)) => f,
            other => panic!("expected a flow, got {other:?}"),
        }
    }

    /// The frame as the programs read it in place: exactly its bytes, and
    /// a read panics unless `has` accepted an end beyond it first (what
    /// the verifier enforces in the kernel).
    struct InPlace<'a> {
        bytes: &'a [u8],
        accepted: core::cell::Cell<usize>,
    }

    impl Frame for InPlace<'_> {
        fn frame_len(&self) -> usize {
            self.bytes.len()
        }
        fn has(&self, end: usize) -> bool {
            let ok = end <= self.bytes.len();
            if ok && end > self.accepted.get() {
                self.accepted.set(end);
            }
            ok
        }
        fn byte(&self, off: usize) -> u8 {
            assert!(off < self.accepted.get(), "read at {off} before has()");
            self.bytes[off]
        }
    }

    #[test]
    fn reading_in_place_decides_like_the_copy() {
        let mut frames: std::vec::Vec<std::vec::Vec<u8>> = std::vec::Vec::new();
        let mut add = |f: &[u8]| {
            // Every prefix from the Ethernet header on, so each length check
            // is crossed.
            for n in ETH_HLEN..=f.len() {
                frames.push(f[..n].to_vec());
            }
        };
        let mut syn = tcp(40000, 443);
        syn[13] = TCP_SYN;
        add(&v4(proto::TCP, &syn)[..v4_len(20)]);
        add(&v4(proto::UDP, &udp(1, 53))[..v4_len(8)]);
        add(&v4(proto::ICMP, &[8, 0, 0, 0, 0, 1, 0, 1])[..v4_len(8)]);
        add(&v4(47, &[0xff; 12])[..v4_len(12)]);
        add(&v6(proto::TCP, &syn)[..74]);
        add(&v6(proto::UDP, &udp(5353, 53))[..62]);
        add(&v6(proto::ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0])[..62]);
        add(&v6(proto::ICMPV6, &[129, 0, 0, 0, 0, 0, 0, 0])[..62]);
        add(&v6(44, &[proto::UDP, 0, 0, 0, 0, 0, 0, 0])[..62]);
        add(&eth(ethertype::ARP));
        add(&arp(SRC4));
        let mut na = [0u8; 24];
        na[0] = 136;
        let mut na = v6(proto::ICMPV6, &na);
        na[21] = 255;
        add(&na[..78]);
        add(&eth(ethertype::VLAN));
        let mut opts = v4(proto::UDP, &udp(1, 53));
        opts[14] = 0x46;
        add(&opts[..v4_len(8)]);
        let mut frag = v4(proto::UDP, &udp(1, 53));
        frag[20] = 0x20;
        add(&frag[..v4_len(8)]);
        // A 100-byte frame: the copy sees only its first HDR_BUF bytes.
        add(&v4(proto::UDP, &udp(1, 53))[..100]);
        let mut flows = 0;
        for f in &frames {
            let in_place = super::parse(&InPlace {
                bytes: f,
                accepted: core::cell::Cell::new(0),
            });
            assert_eq!(in_place, parse(f), "{} bytes: {f:02x?}", f.len());
            flows += usize::from(matches!(in_place, Ok(Parsed::Flow(_))));
        }
        assert!(flows > 20, "the corpus reaches the flows ({flows})");
    }

    #[test]
    fn header_buf_is_zeroed_and_bytes_see_writes() {
        let mut slot = core::mem::MaybeUninit::uninit();
        let b = HeaderBuf::init_zeroed(&mut slot);
        assert_eq!(b.bytes(), &[0u8; HDR_BUF]);
        // SAFETY: in bounds.
        unsafe { b.as_mut_ptr().add(HDR_BUF - 1).write(7) };
        assert_eq!(b.bytes()[HDR_BUF - 1], 7);
    }

    #[test]
    fn ipv4_tcp_gives_addresses_and_ports() {
        let f = v4(proto::TCP, &tcp(40000, 443));
        let fl = flow(parse(&f[..v4_len(20)]));
        assert_eq!(fl.family, 4);
        assert_eq!(fl.protocol, proto::TCP);
        assert_eq!(&fl.saddr[..4], &SRC4);
        assert_eq!(&fl.saddr[4..], &[0; 12]);
        assert_eq!(&fl.daddr[..4], &DST4);
        assert_eq!((fl.sport, fl.dport), (40000, 443));
        assert!(fl.may_be_reply);
    }

    #[test]
    fn only_a_syn_without_ack_is_never_a_reply() {
        for (flags, reply) in [
            (0x02u8, false),
            (0x12, true),
            (0x10, true),
            (0x11, true),
            (0, true),
        ] {
            let mut t = tcp(1, 80);
            t[13] = flags;
            let f4 = v4(proto::TCP, &t);
            assert_eq!(
                flow(parse(&f4[..v4_len(20)])).may_be_reply,
                reply,
                "{flags:#04x}"
            );
            let f6 = v6(proto::TCP, &t);
            assert_eq!(
                flow(parse(&f6[..74])).may_be_reply,
                reply,
                "v6 {flags:#04x}"
            );
        }
    }

    #[test]
    fn ethernet_padding_is_not_read_as_payload() {
        // A 20-byte IPv4 header claiming 8 bytes of UDP in a frame padded to
        // 60 bytes parses with the IP header's length.
        let f = v4(proto::UDP, &udp(1, 53));
        assert!(matches!(parse(&f[..60]), Ok(Parsed::Flow(_))));
        // But total length beyond the frame is a truncated packet.
        assert_eq!(parse(&f[..v4_len(7)]), Err(DropReason::Malformed));
    }

    #[test]
    fn ipv6_udp_gives_addresses_and_ports() {
        let f = v6(proto::UDP, &udp(5353, 53));
        let fl = flow(parse(&f[..54 + 8]));
        assert_eq!(fl.family, 6);
        assert_eq!((fl.saddr[0], fl.saddr[15]), (0xfd, 1));
        assert_eq!((fl.daddr[0], fl.daddr[15]), (0xfd, 2));
        assert_eq!((fl.sport, fl.dport), (5353, 53));
    }

    #[test]
    fn ipv6_tcp_data_offset_is_read_inside_the_buffer() {
        let mut t = tcp(1, 80);
        let f = v6(proto::TCP, &t);
        assert!(matches!(parse(&f[..74]), Ok(Parsed::Flow(_))));
        t[12] = 4 << 4;
        let f = v6(proto::TCP, &t);
        assert_eq!(parse(&f[..74]), Err(DropReason::Malformed));
    }

    /// An ARP request (IPv4 over Ethernet) from `spa`.
    fn arp(spa: [u8; 4]) -> [u8; 42] {
        let mut f = [0u8; 42];
        f[..14].copy_from_slice(&eth(ethertype::ARP));
        f[14..16].copy_from_slice(&1u16.to_be_bytes());
        f[16..18].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[18] = 6;
        f[19] = 4;
        f[21] = 1;
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&DST4);
        f
    }

    #[test]
    fn arp_claims_its_sender_address_and_other_ethertypes_are_unsupported() {
        let want = |a: [u8; 4]| {
            Ok(Parsed::Neighbour(Claim {
                addr: v4_addr(a),
                family: 4,
                in_target: false,
            }))
        };
        assert_eq!(parse(&arp(SRC4)), want(SRC4));
        assert_eq!(parse(&arp([0; 4])), want([0; 4]));
        // Padded to Ethernet's minimum: the same.
        let mut padded = [0u8; 60];
        padded[..42].copy_from_slice(&arp(SRC4));
        assert_eq!(parse(&padded), want(SRC4));
        // Short, or not IPv4 over Ethernet.
        assert_eq!(parse(&arp(SRC4)[..41]), Err(DropReason::Malformed));
        assert_eq!(parse(&eth(ethertype::ARP)), Err(DropReason::Malformed));
        for (at, byte) in [(15usize, 6u8), (16, 0x86), (18, 8), (19, 16)] {
            let mut f = arp(SRC4);
            f[at] = byte;
            assert_eq!(parse(&f), Err(DropReason::Malformed), "byte {at} = {byte}");
        }
        assert_eq!(parse(&eth(ethertype::VLAN)), Err(DropReason::UnsupportedL3));
        assert_eq!(parse(&eth(0x88cc)), Err(DropReason::UnsupportedL3));
    }

    #[test]
    fn truncated_headers_are_malformed() {
        let t4 = v4(proto::TCP, &tcp(1, 80));
        let u4 = v4(proto::UDP, &udp(1, 53));
        let i4 = v4(proto::ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]);
        let u6 = v6(proto::UDP, &udp(1, 53));
        let cases: [(&str, &[u8]); 7] = [
            ("ethernet", &t4[..13]),
            ("IPv4", &t4[..33]),
            ("IPv6", &u6[..53]),
            // The IP header's length is cut with the frame.
            (
                "TCP",
                &{
                    let mut f = v4(proto::TCP, &tcp(1, 80)[..19]);
                    f[34 + 12] = 5 << 4;
                    f
                }[..v4_len(19)],
            ),
            ("UDP", &v4(proto::UDP, &udp(1, 53)[..7])[..v4_len(7)]),
            ("ICMP", &v4(proto::ICMP, &[8, 0, 0, 0])[..v4_len(4)]),
            ("IPv6 UDP", &v6(proto::UDP, &udp(1, 2)[..4])[..58]),
        ];
        for (name, f) in cases {
            assert_eq!(parse(f), Err(DropReason::Malformed), "{name}");
        }
        // The untruncated versions parse.
        for f in [&t4[..v4_len(20)], &u4[..v4_len(8)], &i4[..v4_len(8)]] {
            assert!(matches!(parse(f), Ok(Parsed::Flow(_))));
        }
    }

    #[test]
    fn bad_ipv4_headers() {
        let base = v4(proto::UDP, &udp(1, 53));
        let n = v4_len(8);
        let with = |i: usize, b: u8| {
            let mut f = base;
            f[i] = b;
            f
        };
        assert_eq!(parse(&with(14, 0x44)[..n]), Err(DropReason::Malformed)); // IHL 4
        assert_eq!(parse(&with(14, 0x40)[..n]), Err(DropReason::Malformed)); // IHL 0
        assert_eq!(parse(&with(14, 0x65)[..n]), Err(DropReason::Malformed)); // version 6
        assert_eq!(parse(&with(14, 0x46)[..n]), Err(DropReason::Ipv4Options));
        // Options longer than the frame: malformed, not merely options.
        assert_eq!(parse(&with(14, 0x4f)[..n]), Err(DropReason::Malformed));
        // Total length shorter than the header.
        let mut f = base;
        f[16..18].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(parse(&f[..n]), Err(DropReason::Malformed));
    }

    #[test]
    fn ipv4_fragments() {
        let base = v4(proto::UDP, &udp(1, 53));
        let n = v4_len(8);
        for (flags_off, want) in [
            (0x4000u16, None),                    // DF only
            (0x2000, Some(DropReason::Fragment)), // MF, first fragment
            (0x0001, Some(DropReason::Fragment)), // last fragment, offset 8
            (0x3fff, Some(DropReason::Fragment)),
            (0x1000, Some(DropReason::Fragment)),
        ] {
            let mut f = base;
            f[20..22].copy_from_slice(&flags_off.to_be_bytes());
            match want {
                None => assert!(matches!(parse(&f[..n]), Ok(Parsed::Flow(_)))),
                Some(r) => assert_eq!(parse(&f[..n]), Err(r), "{flags_off:#06x}"),
            }
        }
    }

    #[test]
    fn bad_ipv6_headers() {
        let base = v6(proto::UDP, &udp(1, 53));
        let mut f = base;
        f[14] = 0x40;
        assert_eq!(parse(&f[..62]), Err(DropReason::Malformed));
        let mut f = base;
        f[18..20].copy_from_slice(&9u16.to_be_bytes()); // payload beyond frame
        assert_eq!(parse(&f[..62]), Err(DropReason::Malformed));
    }

    #[test]
    fn ipv6_extension_headers_are_refused() {
        for nh in [0u8, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254] {
            assert!(is_ipv6_ext_header(nh), "{nh}");
            let f = v6(nh, &[proto::UDP, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(parse(&f[..62]), Err(DropReason::Ipv6ExtHeader), "{nh}");
        }
        for nh in [proto::TCP, proto::UDP, proto::ICMPV6, 47, 59, 132] {
            assert!(!is_ipv6_ext_header(nh), "{nh}");
        }
    }

    #[test]
    fn big_tcp_zero_length_fields_take_the_frame_length() {
        let big = 100_000;
        let mut hdr = [0u8; HDR_BUF];
        let f4 = v4(proto::TCP, &tcp(40000, 80));
        hdr.copy_from_slice(&f4[..HDR_BUF]);
        hdr[16] = 0;
        hdr[17] = 0;
        let fl = flow(parse_frame(&hdr, big));
        assert_eq!((fl.family, fl.dport), (4, 80));
        // A zero field in a frame that fits 64 KiB is still malformed.
        assert_eq!(parse_frame(&hdr, 1000), Err(DropReason::Malformed));

        let f6 = v6(proto::TCP, &tcp(40000, 443));
        hdr.copy_from_slice(&f6[..HDR_BUF]);
        hdr[18] = 0;
        hdr[19] = 0;
        let fl = flow(parse_frame(&hdr, big));
        assert_eq!((fl.family, fl.dport), (6, 443));
        assert_eq!(parse_frame(&hdr, 1000), Err(DropReason::Malformed));
    }

    #[test]
    fn neighbour_discovery_claims_its_source_or_target_other_icmpv6_is_a_flow() {
        let src = flow(parse(&v6(proto::UDP, &udp(1, 2))[..62])).saddr;
        let claim = |in_target| {
            Parsed::Neighbour(Claim {
                addr: src,
                family: 6,
                in_target,
            })
        };
        for (kind, want) in [
            (133u8, claim(false)),
            (134, Parsed::RouterMessage),
            (135, claim(false)),
            (136, claim(true)),
            (137, Parsed::RouterMessage),
        ] {
            let mut m = [0u8; 24];
            m[0] = kind;
            let mut f = v6(proto::ICMPV6, &m);
            f[21] = 255;
            assert_eq!(parse(&f[..78]), Ok(want), "type {kind}");
            // Any other hop limit: it crossed a router, not ND.
            for hops in [0u8, 1, 64, 254] {
                f[21] = hops;
                assert_eq!(
                    parse(&f[..78]),
                    Err(DropReason::Malformed),
                    "type {kind}, hop limit {hops}"
                );
            }
        }
        // NS and NA need their target (24 bytes); RS does with 8.
        for (kind, want) in [
            (133u8, Ok(claim(false))),
            (135, Err(DropReason::Malformed)),
            (136, Err(DropReason::Malformed)),
        ] {
            let mut f = v6(proto::ICMPV6, &[kind, 0, 0, 0, 0, 0, 0, 0]);
            f[21] = 255;
            assert_eq!(parse(&f[..62]), want, "8-byte type {kind}");
        }
        // The NA's target sits where the eBPF side reads it.
        let mut na = [0u8; 24];
        na[0] = 136;
        na[8] = 0xfd;
        na[23] = 9;
        let f = v6(proto::ICMPV6, &na);
        assert_eq!((f[ND_TARGET_OFF], f[ND_TARGET_OFF + 15]), (0xfd, 9));
        for (kind, reply) in [(128u8, false), (129, true), (1, false), (138, false)] {
            let f = v6(proto::ICMPV6, &[kind, 0, 0, 0, 0, 0, 0, 0]);
            let fl = flow(parse(&f[..62]));
            assert_eq!((fl.sport, fl.dport), (0, 0));
            assert_eq!(fl.may_be_reply, reply, "type {kind}");
        }
    }

    #[test]
    fn icmp_echo_reply_may_be_a_reply_other_icmp_not() {
        for (kind, reply) in [(0u8, true), (8, false), (3, false), (11, false)] {
            let f = v4(proto::ICMP, &[kind, 0, 0, 0, 0, 1, 0, 1]);
            let fl = flow(parse(&f[..v4_len(8)]));
            assert_eq!(fl.protocol, proto::ICMP);
            assert_eq!(fl.may_be_reply, reply, "type {kind}");
        }
        // ND type numbers mean nothing in ICMPv4.
        let f = v4(proto::ICMP, &[135, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(parse(&f[..v4_len(8)]), Ok(Parsed::Flow(_))));
    }

    #[test]
    fn other_protocols_are_flows_with_port_zero() {
        for p in [47u8, 132] {
            let f = v4(p, &[0xff; 12]);
            let fl = flow(parse(&f[..v4_len(12)]));
            assert_eq!((fl.protocol, fl.sport, fl.dport), (p, 0, 0));
        }
        // ICMPv6's number inside IPv4 is just another protocol.
        let f = v4(proto::ICMPV6, &[135, 0, 0, 0]);
        let fl = flow(parse(&f[..v4_len(4)]));
        assert_eq!(fl.protocol, proto::ICMPV6);
    }
}
