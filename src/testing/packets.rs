//! Crafted packets for datapath tests: Ethernet frames carrying IPv4/IPv6 with
//! TCP, UDP or ICMP, with valid lengths and checksums unless a test breaks
//! them on purpose.

use std::net::{Ipv4Addr, Ipv6Addr};

use porin_common::packet::ethertype;

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
    let kind = if v6 { 128 } else { 8 };
    let mut s = vec![kind, 0, 0, 0, 0, 1, 0, 1];
    if !v6 {
        let sum = checksum(&s);
        s[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    s
}

/// An IPv4 header (no options, valid checksum) followed by `l4`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
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
    }
}
