//! Packet header layouts and the constants the datapath parses with.
//!
//! Only the fields Porin reads are named; the layouts match the wire format so
//! that a bounds-checked pointer into the packet can be read as these structs.

/// Ethernet header length, also the minimum frame the parsers accept.
pub const ETH_HLEN: usize = 14;
/// Minimum IPv4 header (IHL = 5, no options).
pub const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;

/// EtherType values in host byte order.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86DD;
}

/// Ethernet II header as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order; use [`EthHdr::ethertype`].
    pub ether_type_be: [u8; 2],
}

impl EthHdr {
    /// The EtherType in host byte order.
    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(self.ether_type_be)
    }
}

/// The first 4 bytes of an IPv4 header: enough to learn the header length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Start {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len_be: [u8; 2],
}

impl Ipv4Start {
    /// IP version nibble.
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length in bytes (IHL * 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv4Start>() == 4);
