//! Who is who: the endpoint a host veth belongs to, and the identity of the
//! address on the other side of a packet.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, HashMap, LpmTrie},
};
use porin_common::{
    datapath::{identity, max_entries, DropReason, EndpointInfo, Identity},
    spoof, uplink,
};

/// Host veth ifindex → the endpoint behind it.
#[map]
static PORIN_ENDP_V1: HashMap<u32, EndpointInfo> =
    HashMap::with_max_entries(max_entries::ENDPOINTS, 0);

/// Exact addresses (endpoints, the host's own addresses) → identity.
#[map]
static PORIN_IP4_V1: HashMap<[u8; 4], Identity> =
    HashMap::with_max_entries(max_entries::ADDRESSES, 0);
#[map]
static PORIN_IP6_V1: HashMap<[u8; 16], Identity> =
    HashMap::with_max_entries(max_entries::ADDRESSES, 0);

/// Named networks (CIDRs) → identity; the longest prefix wins.
#[map]
static PORIN_NET4_V1: LpmTrie<[u8; 4], Identity> =
    LpmTrie::with_max_entries(max_entries::NETWORKS, 0);
#[map]
static PORIN_NET6_V1: LpmTrie<[u8; 16], Identity> =
    LpmTrie::with_max_entries(max_entries::NETWORKS, 0);

/// Into a container: a container's source address `saddr` only from that
/// container's veth or its bridge, `came_in` being `skb->ingress_ifindex`
/// (`porin_common::spoof::check_ingress`). Two lookups at most.
#[inline(always)]
pub fn check_ingress(saddr: &[u8; 16], family: u8, came_in: u32) -> Result<(), DropReason> {
    let owner = owner_of(saddr, family);
    // The owner's bridge only when the veth is not the way in.
    let bridge = if owner != 0 && owner != came_in {
        bridge_of(owner)
    } else {
        0
    };
    spoof::check_ingress(owner, came_in, bridge)
}

/// Container addresses → the host veth of the interface that carries them
/// (written by the manager, `sync_endpoint_addresses`): the owner an
/// address is checked against (`porin_common::spoof`), and the uplink's
/// way to a container's conntrack.
#[map]
pub(crate) static PORIN_UPEP4_V1: HashMap<[u8; 4], u32> =
    HashMap::with_max_entries(uplink::max_entries::ENDPOINT_ADDRESSES, 0);
#[map]
pub(crate) static PORIN_UPEP6_V1: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(uplink::max_entries::ENDPOINT_ADDRESSES, 0);

/// Host veth → the bridge it is enslaved to (`porin_common::spoof`).
#[map]
static PORIN_VBR_V1: HashMap<u32, u32> = HashMap::with_max_entries(max_entries::ENDPOINTS, 0);

/// The bridge host veth `veth` is enslaved to, 0 for none.
#[inline(always)]
pub fn bridge_of(veth: u32) -> u32 {
    // SAFETY: copied out at once (see `endpoint`).
    match unsafe { PORIN_VBR_V1.get(&veth) } {
        Some(b) => *b,
        None => 0,
    }
}

/// The host veth ifindex of the container that owns `addr` (IPv4 in its
/// first 4 bytes when `family` is 4), 0 when it is no container's.
#[inline(always)]
pub fn owner_of(addr: &[u8; 16], family: u8) -> u32 {
    // SAFETY: copied out at once (see `endpoint`).
    let owner = unsafe {
        if family == 4 {
            PORIN_UPEP4_V1.get(&[addr[0], addr[1], addr[2], addr[3]])
        } else {
            PORIN_UPEP6_V1.get(addr)
        }
    };
    match owner {
        Some(v) => *v,
        None => 0,
    }
}

/// The endpoint whose host veth has `ifindex` (copied: the manager may
/// rewrite the entry while the packet is in flight).
#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<EndpointInfo> {
    // SAFETY: the value is copied out at once; hash map values stay valid
    // for the duration of the program (RCU).
    unsafe { PORIN_ENDP_V1.get(&ifindex).copied() }
}

/// Like [`endpoint`], as whether it exists and its entry, zeroed when it
/// does not: for the TC programs, where LLVM turned
/// `endpoint.map_or(0, |e| e.identity)` into a load of the payload and a
/// select, reading the unwritten payload of a `None` from the stack, which
/// kernels before about 5.19 refuse ("invalid read from stack", 5.10 in the
/// VM matrix). Here a value is written on both paths.
#[inline(always)]
pub fn endpoint_or_zeroed(ifindex: u32) -> (bool, EndpointInfo) {
    // SAFETY: as in `endpoint`.
    match unsafe { PORIN_ENDP_V1.get(&ifindex) } {
        Some(e) => (true, *e),
        None => (
            false,
            EndpointInfo {
                identity: 0,
                mode: 0,
                _pad: [0, 0, 0],
            },
        ),
    }
}

/// The identity of `addr` (IPv4 in its first 4 bytes when `family` is 4):
/// exact address first, then the longest matching network, else world.
#[inline(always)]
pub fn of_address(addr: &[u8; 16], family: u8) -> Identity {
    if family == 4 {
        let a = [addr[0], addr[1], addr[2], addr[3]];
        // SAFETY: copied out at once (see `endpoint`).
        if let Some(id) = unsafe { PORIN_IP4_V1.get(&a) } {
            return *id;
        }
        if let Some(id) = PORIN_NET4_V1.get(&Key::new(32, a)) {
            return *id;
        }
    } else {
        // SAFETY: copied out at once (see `endpoint`).
        if let Some(id) = unsafe { PORIN_IP6_V1.get(addr) } {
            return *id;
        }
        if let Some(id) = PORIN_NET6_V1.get(&Key::new(128, *addr)) {
            return *id;
        }
    }
    identity::WORLD
}
