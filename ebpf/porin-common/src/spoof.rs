//! Anti-spoofing: which addresses a container may use, as pure decisions
//! over the owner of an address. The owner is the host veth ifindex the
//! manager wrote for the address in `PORIN_UPEP4_V1`/`PORIN_UPEP6_V1`
//! (every enforced endpoint's addresses, each under the veth of the
//! interface that carries it), 0 when the address is no container's.
//!
//! The checks compare addresses with the veth that owns them, never
//! identities: replicas of one group (and all unmanaged containers, which
//! share an identity) cannot use each other's addresses.
//!
//! # Decisions
//! | where | packet | allowed when | else |
//! | --- | --- | --- | --- |
//! | `from_container` | IP packet | the source's owner is this veth | `SpoofedSource` |
//! | `from_container` | ARP (sender address), IPv6 NS or RS (source), NA (target) | the claimed address is unspecified (DAD, ARP probe), IPv6 link-local, or its owner is this veth | `SpoofedNeighbour` |
//! | `to_container` | IP packet | the destination's owner is this veth, or it is a group address: multicast (`224.0.0.0/4`, `ff00::/8`) or the IPv4 limited broadcast `255.255.255.255` | `WrongDestination` |
//! | `to_container` | IP packet whose source is a container's | `skb->ingress_ifindex` is that container's veth, or the bridge that veth is enslaved to (`PORIN_VBR_V1`: the host routed the packet) | `SpoofedIngress` |
//! | both | packet to a group address allowed by policy | passes without a conntrack entry ([`tracks`]) | |
//!
//! ARP and neighbour discovery going *into* a container are not checked
//! here: every container's own claims are checked where it sends them.
//!
//! **Not verified:** IPv6 link-local addresses (`fe80::/10`) claimed in
//! neighbour discovery. They have no entry in the node-wide maps (they are
//! unique per link only, see `porin::policy` addrs), and IPv6 needs them for
//! neighbour discovery, so a container can still claim a neighbour's
//! link-local address. Link-local *IP traffic* (other than neighbour
//! discovery) from a container is refused as before (`SpoofedSource`: no
//! owner), and into one as `WrongDestination`, so no flow runs over a
//! claimed link-local address. IPv4 link-local and subnet-directed
//! broadcast addresses are no container's own either: an ARP claiming
//! `169.254.x.y` and packets to `10.88.255.255` are refused.

use crate::datapath::DropReason;

/// `0.0.0.0` / `::`, link-local IPv6 `fe80::/10`: claims neighbour
/// discovery needs that no map can verify (see the module notes). IPv4 in
/// the first 4 bytes (the rest zero) when `family` is 4.
#[inline(always)]
pub fn unverifiable_claim(addr: &[u8; 16], family: u8) -> bool {
    if family == 4 {
        return addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == 0;
    }
    // Two words, not a loop over the bytes (the eBPF side inlines this).
    let lo = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let hi = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let unspecified = lo | hi == 0;
    let link_local = addr[0] == 0xfe && addr[1] & 0xc0 == 0x80;
    unspecified || link_local
}

/// A destination every member of a link may receive: IPv4 multicast
/// (`224.0.0.0/4`) or the limited broadcast, IPv6 multicast (`ff00::/8`).
#[inline(always)]
pub fn is_group_address(addr: &[u8; 16], family: u8) -> bool {
    if family == 4 {
        addr[0] & 0xf0 == 0xe0
            || (addr[0] == 0xff && addr[1] == 0xff && addr[2] == 0xff && addr[3] == 0xff)
    } else {
        addr[0] == 0xff
    }
}

/// `from_container`, an IP packet: `owner` is its source's owner, `ifindex`
/// the veth the program runs on.
#[inline(always)]
pub fn check_source(owner: u32, ifindex: u32) -> Result<(), DropReason> {
    if owner == ifindex {
        Ok(())
    } else {
        Err(DropReason::SpoofedSource)
    }
}

/// `from_container`, ARP or neighbour discovery: `unverifiable` is
/// [`unverifiable_claim`] of the claimed address, `owner` its owner.
#[inline(always)]
pub fn check_claim(unverifiable: bool, owner: u32, ifindex: u32) -> Result<(), DropReason> {
    if unverifiable || owner == ifindex {
        Ok(())
    } else {
        Err(DropReason::SpoofedNeighbour)
    }
}

/// `to_container`: `group` is [`is_group_address`] of the destination,
/// `owner` the destination's owner.
#[inline(always)]
pub fn check_destination(group: bool, owner: u32, ifindex: u32) -> Result<(), DropReason> {
    if group || owner == ifindex {
        Ok(())
    } else {
        Err(DropReason::WrongDestination)
    }
}

/// `to_container`: `owner` is the source's owner (0: not a container's),
/// `ingress_ifindex` the interface the packet came in on, `owner_bridge`
/// the bridge the owner's veth is enslaved to (0: none, or not looked up).
///
/// Bridged between two containers, a packet keeps the sender's veth as its
/// ingress interface; routed by the host (containers on two bridges, a
/// published port reached from a container), it comes in again from the
/// bridge the sender's veth is enslaved to. That bridge is trusted as the
/// sender's: its ports are container veths whose own `from_container`
/// checked the source (a bridge that also holds a physical port or a VM's
/// tap extends this trust to them).
#[inline(always)]
pub fn check_ingress(
    owner: u32,
    ingress_ifindex: u32,
    owner_bridge: u32,
) -> Result<(), DropReason> {
    if owner == 0
        || owner == ingress_ifindex
        || (owner_bridge != 0 && owner_bridge == ingress_ifindex)
    {
        Ok(())
    } else {
        Err(DropReason::SpoofedIngress)
    }
}

/// Whether an allowed packet to `daddr` gets a conntrack entry: not when it
/// goes to a group address. No reply ever comes from a group address, so
/// such an entry would admit nothing legitimate, but its reversed tuple
/// would let the receiving container send with the group address as its
/// source on a conntrack hit (see the conntrack argument in `tc.rs`).
#[inline(always)]
pub fn tracks(daddr: &[u8; 16], family: u8) -> bool {
    !is_group_address(daddr, family)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn v6(s: &str) -> [u8; 16] {
        extern crate std;
        s.parse::<std::net::Ipv6Addr>().expect("v6").octets()
    }

    #[test]
    fn only_unspecified_and_ipv6_link_local_claims_are_unverifiable() {
        assert!(unverifiable_claim(&v4([0, 0, 0, 0]), 4));
        assert!(!unverifiable_claim(&v4([10, 88, 0, 5]), 4));
        assert!(!unverifiable_claim(&v4([169, 254, 1, 1]), 4));
        assert!(!unverifiable_claim(&v4([0, 0, 0, 1]), 4));
        assert!(unverifiable_claim(&v6("::"), 6));
        assert!(unverifiable_claim(&v6("fe80::1"), 6));
        assert!(unverifiable_claim(&v6("febf::1"), 6));
        assert!(!unverifiable_claim(&v6("fec0::1"), 6));
        assert!(!unverifiable_claim(&v6("::1"), 6));
        assert!(!unverifiable_claim(&v6("fd00::5"), 6));
        // The IPv4 test looks at the first 4 bytes only.
        assert!(!unverifiable_claim(&v6("fe80::1"), 4));
    }

    #[test]
    fn group_addresses_are_multicast_and_the_limited_broadcast() {
        for a in [[224, 0, 0, 251], [239, 255, 255, 250], [255, 255, 255, 255]] {
            assert!(is_group_address(&v4(a), 4), "{a:?}");
            assert!(!tracks(&v4(a), 4), "{a:?}");
        }
        for a in [
            [10, 88, 255, 255],
            [223, 255, 255, 255],
            [240, 0, 0, 1],
            [10, 88, 0, 2],
        ] {
            assert!(!is_group_address(&v4(a), 4), "{a:?}");
            assert!(tracks(&v4(a), 4), "{a:?}");
        }
        assert!(is_group_address(&v6("ff02::1"), 6));
        assert!(is_group_address(&v6("ff05::fb"), 6));
        assert!(!is_group_address(&v6("fe80::1"), 6));
        assert!(!is_group_address(&v6("fd00::1"), 6));
        assert!(tracks(&v6("fd00::1"), 6));
    }

    #[test]
    fn checks_compare_owners_not_identities() {
        let (me, other) = (7, 9);
        assert_eq!(check_source(me, me), Ok(()));
        assert_eq!(check_source(other, me), Err(DropReason::SpoofedSource));
        assert_eq!(check_source(0, me), Err(DropReason::SpoofedSource));

        assert_eq!(check_claim(false, me, me), Ok(()));
        assert_eq!(check_claim(true, 0, me), Ok(()));
        assert_eq!(check_claim(true, other, me), Ok(()));
        assert_eq!(
            check_claim(false, other, me),
            Err(DropReason::SpoofedNeighbour)
        );
        assert_eq!(check_claim(false, 0, me), Err(DropReason::SpoofedNeighbour));

        assert_eq!(check_destination(false, me, me), Ok(()));
        assert_eq!(check_destination(true, 0, me), Ok(()));
        assert_eq!(
            check_destination(false, other, me),
            Err(DropReason::WrongDestination)
        );
        assert_eq!(
            check_destination(false, 0, me),
            Err(DropReason::WrongDestination)
        );

        let bridge = 4;
        assert_eq!(check_ingress(0, 3, 0), Ok(()));
        assert_eq!(check_ingress(other, other, 0), Ok(()));
        assert_eq!(check_ingress(other, other, bridge), Ok(()));
        assert_eq!(check_ingress(other, bridge, bridge), Ok(()));
        assert_eq!(check_ingress(other, 3, 0), Err(DropReason::SpoofedIngress));
        assert_eq!(
            check_ingress(other, 3, bridge),
            Err(DropReason::SpoofedIngress)
        );
        assert_eq!(check_ingress(other, 0, 0), Err(DropReason::SpoofedIngress));
        // No bridge is no wildcard for "no ingress interface".
        assert_eq!(check_ingress(other, 0, 0), Err(DropReason::SpoofedIngress));
    }
}
