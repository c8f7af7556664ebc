//! The frame classifier behind `probe_frames`, Porin's first and smallest
//! program: it proves the build, the loader, `BPF_PROG_TEST_RUN` and attaching
//! in network namespaces, and later serves `porin version` style self-tests.
//!
//! The decision is pure and lives here so the host tests it on the same code
//! the kernel runs.

use crate::packet::{ethertype, IPV4_MIN_HLEN, IPV6_HLEN};

/// What a frame looks like to the classifier. The discriminant is the index of
/// the frame's counter in the `PORIN_PROBE_V1` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameClass {
    Ipv4 = 0,
    Ipv6 = 1,
    Arp = 2,
    /// Any other EtherType (VLAN tags are counted here; the probe does not
    /// look inside them).
    Other = 3,
    /// Too short for its Ethernet header, or for the IP header its EtherType
    /// announces, or an IPv4 header whose IHL or version is impossible.
    Malformed = 4,
}

/// Number of counters (one per [`FrameClass`]).
pub const FRAME_CLASSES: u32 = 5;

/// Verdict of the probe: malformed frames are dropped, everything else passes.
/// Values are the kernel's `XDP_DROP` / `XDP_PASS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    Drop = 1,
    Pass = 2,
}

/// Classifies a frame from its EtherType, the bytes after the Ethernet header
/// and, for IPv4, the first header byte (version and IHL).
///
/// `l3_len` is the number of bytes available after the Ethernet header.
#[inline(always)]
pub fn classify(ether_type: u16, l3_len: usize, ipv4_version_ihl: u8) -> FrameClass {
    match ether_type {
        ethertype::IPV4 => {
            let ihl_bytes = ((ipv4_version_ihl & 0x0f) as usize) * 4;
            if l3_len < IPV4_MIN_HLEN
                || ipv4_version_ihl >> 4 != 4
                || ihl_bytes < IPV4_MIN_HLEN
                || ihl_bytes > l3_len
            {
                FrameClass::Malformed
            } else {
                FrameClass::Ipv4
            }
        }
        ethertype::IPV6 if l3_len < IPV6_HLEN => FrameClass::Malformed,
        ethertype::IPV6 => FrameClass::Ipv6,
        ethertype::ARP => FrameClass::Arp,
        _ => FrameClass::Other,
    }
}

/// The one place that maps a class to a verdict.
#[inline(always)]
pub fn verdict(class: FrameClass) -> ProbeVerdict {
    match class {
        FrameClass::Malformed => ProbeVerdict::Drop,
        _ => ProbeVerdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_each_kind_of_frame() {
        let cases = [
            (ethertype::IPV4, 20, 0x45, FrameClass::Ipv4),
            (ethertype::IPV4, 60, 0x4f, FrameClass::Ipv4),
            (ethertype::IPV4, 19, 0x45, FrameClass::Malformed),
            (ethertype::IPV4, 40, 0x44, FrameClass::Malformed), // IHL 16 bytes
            (ethertype::IPV4, 40, 0x46, FrameClass::Ipv4),      // 24-byte header fits
            (ethertype::IPV4, 20, 0x46, FrameClass::Malformed), // options cut off
            (ethertype::IPV4, 40, 0x65, FrameClass::Malformed), // version 6 in a v4 frame
            (ethertype::IPV6, 40, 0, FrameClass::Ipv6),
            (ethertype::IPV6, 39, 0, FrameClass::Malformed),
            (ethertype::ARP, 28, 0, FrameClass::Arp),
            (ethertype::ARP, 0, 0, FrameClass::Arp),
            (ethertype::VLAN, 4, 0, FrameClass::Other),
            (0x88cc, 0, 0, FrameClass::Other),
        ];
        for (et, len, b0, want) in cases {
            assert_eq!(
                classify(et, len, b0),
                want,
                "ethertype {et:#06x} len {len} b0 {b0:#04x}"
            );
        }
    }

    #[test]
    fn only_malformed_frames_drop() {
        assert_eq!(verdict(FrameClass::Malformed), ProbeVerdict::Drop);
        for c in [
            FrameClass::Ipv4,
            FrameClass::Ipv6,
            FrameClass::Arp,
            FrameClass::Other,
        ] {
            assert_eq!(verdict(c), ProbeVerdict::Pass);
        }
    }
}
