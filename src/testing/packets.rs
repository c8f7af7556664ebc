//! Crafted packets for datapath tests: Ethernet frames carrying IPv4/IPv6 with
//! TCP, UDP or ICMP, with valid lengths and checksums unless a test breaks
//! them on purpose.

use std::net::{Ipv4Addr, Ipv6Addr};

use porin_common::packet::{ethertype, ETH_HLEN};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// IP protocol numbers.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// TCP flags.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet header with `ether_type`.
pub fn eth(ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// A UDP header plus payload (checksum left 0, which IPv4 allows).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

/// A 20-byte TCP header with `flags` plus payload (checksum left 0: the
/// datapath does not verify L4 checksums, the receiving stack does).
pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&1u32.to_be_bytes()); // seq
    s.extend_from_slice(&0u32.to_be_bytes()); // ack
    s.push(5 << 4); // data offset: 5 words
    s.push(flags);
    s.extend_from_slice(&65535u16.to_be_bytes()); // window
    s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    s.extend_from_slice(payload);
    s
}

/// An ICMP/ICMPv6 echo request.
pub fn icmp_echo(v6: bool) -> Vec<u8> {
    icmp_message(v6, if v6 { 128 } else { 8 }, &[0, 1, 0, 1])
}

/// An ICMP/ICMPv6 echo reply.
pub fn icmp_echo_reply(v6: bool) -> Vec<u8> {
    icmp_message(v6, if v6 { 129 } else { 0 }, &[0, 1, 0, 1])
}

/// An ICMPv6 neighbour solicitation for `target` (type 135). The ICMPv6
/// checksum covers a pseudo-header and is left 0: the datapath does not
/// verify it.
pub fn icmpv6_neighbour_solicitation(target: Ipv6Addr) -> Vec<u8> {
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&target.octets());
    icmp_message(true, 135, &rest)
}

/// An ICMPv6 neighbour advertisement for `target` (type 136), solicited
/// and override flags set: "`target` is at my MAC" (checksum 0, as above).
pub fn icmpv6_neighbour_advertisement(target: Ipv6Addr) -> Vec<u8> {
    let mut rest = vec![0x60, 0, 0, 0];
    rest.extend_from_slice(&target.octets());
    icmp_message(true, 136, &rest)
}

/// An ICMPv6 router solicitation (type 133).
pub fn icmpv6_router_solicitation() -> Vec<u8> {
    icmp_message(true, 133, &[0; 4])
}

/// An ICMPv6 router advertisement (type 134): hop limit, flags, router
/// lifetime 1800 s, reachable and retransmit timers.
pub fn icmpv6_router_advertisement() -> Vec<u8> {
    icmp_message(true, 134, &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0])
}

/// An ICMPv6 redirect (type 137) pointing `dst` at `target`.
pub fn icmpv6_redirect(target: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut rest = vec![0; 4];
    rest.extend_from_slice(&target.octets());
    rest.extend_from_slice(&dst.octets());
    icmp_message(true, 137, &rest)
}

/// A whole Ethernet + IPv6 frame carrying the neighbour discovery message
/// `icmp`, with hop limit 255 as RFC 4861 requires of every ND message.
pub fn nd_frame(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let mut f = frame_v6(src, dst, 58, icmp);
    f[ETH_HLEN + 7] = 255;
    f
}

/// An ICMP message of `kind`, code 0, with `rest` after the checksum field
/// (ICMPv4 checksum filled in).
fn icmp_message(v6: bool, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut s = vec![kind, 0, 0, 0];
    s.extend_from_slice(rest);
    if !v6 {
        let sum = checksum(&s);
        s[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    s
}

/// IPv4 DF flag (in the flags/fragment-offset field).
pub const IPV4_DF: u16 = 0x4000;
/// IPv4 more-fragments flag.
pub const IPV4_MF: u16 = 0x2000;

/// An IPv4 header (no options, DF, valid checksum) followed by `l4`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_with(src, dst, proto, l4, &[], IPV4_DF)
}

/// An IPv4 header with `options` (padded with end-of-list bytes to a
/// multiple of 4) and the flags/fragment-offset field `frag` (offset in
/// 8-byte units in the low 13 bits), valid checksum, followed by `l4`.
pub fn ipv4_with(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
    options: &[u8],
    frag: u16,
) -> Vec<u8> {
    let mut opts = options.to_vec();
    opts.resize(options.len().div_ceil(4) * 4, 0);
    let hlen = 20 + opts.len();
    assert!(hlen <= 60, "IPv4 options longer than 40 bytes");
    let total = (hlen + l4.len()) as u16;
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]); // id 1
    h.extend_from_slice(&frag.to_be_bytes());
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// An IPv6 header followed by `l4`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.push(next_header);
    h.push(64);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(l4);
    h
}

/// A whole Ethernet + IPv4 frame.
pub fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(ethertype::IPV4);
    f.extend_from_slice(&ipv4(src, dst, proto, l4));
    f
}

/// A whole Ethernet + IPv6 frame.
pub fn frame_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(ethertype::IPV6);
    f.extend_from_slice(&ipv6(src, dst, next_header, l4));
    f
}

/// A whole Ethernet + IPv4 frame with options and/or fragment fields (see
/// [`ipv4_with`]).
pub fn frame_v4_with(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
    options: &[u8],
    frag: u16,
) -> Vec<u8> {
    let mut f = eth(ethertype::IPV4);
    f.extend_from_slice(&ipv4_with(src, dst, proto, l4, options, frag));
    f
}

/// A whole Ethernet + IPv6 frame whose header is followed by one 8-byte
/// extension header of type `ext` (hop-by-hop, routing, destination options
/// or fragment: all have next-header and length first), then `l4` of
/// protocol `proto`.
pub fn frame_v6_ext(src: Ipv6Addr, dst: Ipv6Addr, ext: u8, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut payload = vec![proto, 0, 0, 0, 0, 0, 0, 0];
    if ext == 0 || ext == 60 {
        // Options: one PadN of 4 bytes filling the header.
        payload[2..4].copy_from_slice(&[1, 4]);
    }
    payload.extend_from_slice(l4);
    frame_v6(src, dst, ext, &payload)
}

/// An ARP request (who-has `target` tell `sender`).
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = eth(ethertype::ARP);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn ipv4_header_checksum_verifies() {
        let h = ipv4(A, B, PROTO_UDP, &udp(1, 2, b"x"));
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&h[..20]), 0);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]) as usize, h.len());
    }

    #[test]
    fn frame_lengths_add_up() {
        let f = frame_v4(A, B, PROTO_TCP, &tcp(1000, 80, TCP_SYN, b""));
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(f[23], PROTO_TCP);
        let f6 = frame_v6(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            PROTO_UDP,
            &udp(1, 2, b"ab"),
        );
        assert_eq!(f6.len(), 14 + 40 + 10);
        assert_eq!(u16::from_be_bytes([f6[18], f6[19]]), 10);
        assert_eq!(arp_request(A, B).len(), 14 + 28);
    }

    #[test]
    fn icmp_echo_checksum_verifies() {
        assert_eq!(checksum(&icmp_echo(false)), 0);
        assert_eq!(checksum(&icmp_echo_reply(false)), 0);
        assert_eq!(icmp_echo_reply(true)[0], 129);
        assert_eq!(icmpv6_neighbour_solicitation(Ipv6Addr::LOCALHOST).len(), 24);
    }

    #[test]
    fn ipv4_options_and_fragment_fields() {
        let h = ipv4_with(A, B, PROTO_UDP, &udp(1, 2, b""), &[0x94, 4, 0], IPV4_MF | 3);
        assert_eq!(h[0], 0x46, "one 4-byte option word");
        assert_eq!(checksum(&h[..24]), 0);
        assert_eq!(u16::from_be_bytes([h[6], h[7]]), 0x2003);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]) as usize, h.len());
    }

    #[test]
    fn ipv6_extension_header_chains_to_the_transport() {
        let f = frame_v6_ext(
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::LOCALHOST,
            0,
            PROTO_UDP,
            &udp(1, 2, b""),
        );
        assert_eq!(f.len(), 14 + 40 + 8 + 8);
        assert_eq!(f[20], 0, "IPv6 next header: hop-by-hop");
        assert_eq!(f[54], PROTO_UDP, "extension's next header");
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 16);
    }
}
