//! The uplink XDP program's shared vocabulary (`from_uplink`): its maps'
//! keys and values, what it counts when it passes a packet, and the pure
//! token-bucket step of its flood limit. Layout version 1.
//!
//! # Maps (written by the manager unless said otherwise)
//! | map | type | key → value |
//! | --- | --- | --- |
//! | `PORIN_UPCFG_V1` | hash | uplink ifindex `u32` → [`UplinkConfig`]; no entry: the program passes everything |
//! | `PORIN_UPDNY4_V1` | LPM trie | [`deny4_key`] (ifindex, IPv4 prefix) → network identity |
//! | `PORIN_UPDNY6_V1` | LPM trie | [`deny6_key`] (ifindex, IPv6 prefix) → network identity |
//! | `PORIN_UPEP4_V1` | hash | endpoint IPv4 address → its host veth ifindex |
//! | `PORIN_UPEP6_V1` | hash | endpoint IPv6 address → its host veth ifindex |
//! | `PORIN_UPFLD_V1` | LRU hash | [`FloodKey`] → [`FloodState`] (written by the program) |
//! | `PORIN_UPPASS_V1` | per-CPU array | [`pass`] class → `Counter` (written by the program) |
//!
//! Drops are counted in `PORIN_DROPS_V1` under their own reasons
//! (`UplinkDenyListed`, `UplinkNoPolicy`, `UplinkFlood`), like the TC
//! programs' drops.
//!
//! The deny tries are keyed by (uplink ifindex, prefix) so that each uplink
//! has its own `deny_from` list in one map: the ifindex is the key's first
//! 32 bits and every entry's prefix length is at least 32, so a lookup only
//! ever matches entries of its own uplink.
//!
//! The container-address check needs no map of its own for policy: it looks
//! up `PORIN_ENDP_V1` (through the address → veth map above) and
//! `PORIN_POL_V1` exactly as `to_container` does, so the generation flip and
//! the identity parking of a reload apply to it unchanged.

/// `PORIN_UPCFG_V1` value: one uplink's flood limits, computed by userspace
/// so the program does no division. A cost of 0 turns that limit off.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UplinkConfig {
    /// ns of credit one TCP SYN (without ACK) costs: 1e9 / `syn_per_second`.
    pub syn_cost_ns: u64,
    /// Most SYN credit a source may save up: `burst` × `syn_cost_ns`.
    pub syn_burst_ns: u64,
    /// Likewise for UDP packets.
    pub udp_cost_ns: u64,
    pub udp_burst_ns: u64,
}

impl UplinkConfig {
    /// The limits for `rate` packets per second with a bucket of `burst`
    /// packets (`None`: no limit).
    pub fn limit(rate: Option<u32>, burst: u32) -> (u64, u64) {
        match rate {
            Some(r) if r > 0 => {
                let cost = (1_000_000_000 / u64::from(r)).max(1);
                (cost, cost * u64::from(burst.max(1)))
            }
            _ => (0, 0),
        }
    }
}

/// Which flood limit a packet is counted against ([`FloodKey::kind`]).
pub mod flood_kind {
    pub const SYN: u8 = 1;
    pub const UDP: u8 = 2;
}

/// `PORIN_UPFLD_V1` key: one source address's bucket of one kind on one
/// uplink. IPv4 addresses use the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FloodKey {
    pub saddr: [u8; 16],
    pub ifindex: u32,
    /// [`flood_kind`] value.
    pub kind: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `PORIN_UPFLD_V1` value: a token bucket kept in ns of credit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloodState {
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// One token-bucket step: credit grows with the time since the last packet
/// up to `burst_ns`; the packet passes if it can pay `cost_ns`. Returns the
/// new state and whether the packet passes. A clock that went backwards
/// (another CPU stored a later time) adds nothing.
#[inline(always)]
pub fn flood_step(state: FloodState, now: u64, cost_ns: u64, burst_ns: u64) -> (FloodState, bool) {
    let elapsed = now.saturating_sub(state.last_ns);
    let mut credit = state.credit_ns.saturating_add(elapsed);
    if credit > burst_ns {
        credit = burst_ns;
    }
    let last_ns = if now > state.last_ns {
        now
    } else {
        state.last_ns
    };
    if credit < cost_ns {
        (
            FloodState {
                credit_ns: credit,
                last_ns,
            },
            false,
        )
    } else {
        (
            FloodState {
                credit_ns: credit - cost_ns,
                last_ns,
            },
            true,
        )
    }
}

/// The state of a source seen for the first time: a full bucket minus this
/// packet.
#[inline(always)]
pub fn flood_first(now: u64, cost_ns: u64, burst_ns: u64) -> FloodState {
    FloodState {
        credit_ns: burst_ns.saturating_sub(cost_ns),
        last_ns: now,
    }
}

/// Why `from_uplink` passed a packet: index into `PORIN_UPPASS_V1`, so
/// tests and operators can tell the pass paths apart.
pub mod pass {
    /// Not IPv4/IPv6 (ARP, VLAN-tagged, LLDP, ...), or the interface has
    /// no uplink configuration.
    pub const NOT_IP: u32 = 0;
    /// An IP packet whose headers the parser refuses (truncated, options,
    /// fragments, extension headers): the stack and TC judge it.
    pub const UNPARSED: u32 = 1;
    /// Not to a container address (the host itself, NATed or published
    /// ports, routed elsewhere), within the flood limits.
    pub const NOT_CONTAINER: u32 = 2;
    /// To a container, part of a connection its conntrack knows.
    pub const ESTABLISHED: u32 = 3;
    /// To a container, allowed by its ingress policy (or unknown to the
    /// datapath: TC decides), within the flood limits.
    pub const ALLOWED: u32 = 4;
    /// Would have been dropped, passed because the endpoint is in audit
    /// mode (also counted as the drop reason).
    pub const AUDIT: u32 = 5;
    pub const CLASSES: u32 = 6;
}

/// Maximum entries of the uplink maps.
pub mod max_entries {
    /// `PORIN_UPCFG_V1`: uplinks on one node.
    pub const UPLINKS: u32 = 64;
    /// `PORIN_UPDNY4_V1` and `PORIN_UPDNY6_V1` each.
    pub const DENY_PREFIXES: u32 = 16384;
    /// `PORIN_UPEP4_V1` and `PORIN_UPEP6_V1` each.
    pub const ENDPOINT_ADDRESSES: u32 = 16384;
    /// `PORIN_UPFLD_V1` (LRU: the least recently seen source makes room).
    pub const FLOOD_SOURCES: u32 = 65536;
}

/// The `PORIN_UPDNY4_V1` key data for an address (or prefix) on uplink
/// `ifindex`; its prefix length is 32 + the address prefix length.
#[inline(always)]
pub fn deny4_key(ifindex: u32, addr: [u8; 4]) -> [u8; 8] {
    let i = ifindex.to_be_bytes();
    [i[0], i[1], i[2], i[3], addr[0], addr[1], addr[2], addr[3]]
}

/// The `PORIN_UPDNY6_V1` key data, like [`deny4_key`].
#[inline(always)]
pub fn deny6_key(ifindex: u32, addr: &[u8; 16]) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&ifindex.to_be_bytes());
    k[4..].copy_from_slice(addr);
    k
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, valid for any
    // bytes.
    unsafe impl aya::Pod for super::UplinkConfig {}
    unsafe impl aya::Pod for super::FloodKey {}
    unsafe impl aya::Pod for super::FloodState {}
}

const _: () = assert!(core::mem::size_of::<UplinkConfig>() == 32);
const _: () = assert!(core::mem::size_of::<FloodKey>() == 24);
const _: () = assert!(core::mem::size_of::<FloodState>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        // 10 per second, burst 3.
        let (cost, burst) = UplinkConfig::limit(Some(10), 3);
        assert_eq!((cost, burst), (100_000_000, 300_000_000));
        let mut s = flood_first(0, cost, burst);
        let mut passed = 1;
        for _ in 0..10 {
            let (n, ok) = flood_step(s, 0, cost, burst);
            s = n;
            passed += u32::from(ok);
        }
        assert_eq!(passed, 3, "the burst, all at once");
        // One second later: ten more at most (the bucket holds three).
        let mut later = 0;
        for i in 0..100u64 {
            let (n, ok) = flood_step(s, 1_000_000_000 + i, cost, burst);
            s = n;
            later += u32::from(ok);
        }
        assert_eq!(later, 3);
        // Evenly spaced at the rate: all pass.
        let mut t = 2_000_000_000;
        for _ in 0..50 {
            t += cost;
            let (n, ok) = flood_step(s, t, cost, burst);
            s = n;
            assert!(ok);
        }
    }

    #[test]
    fn no_rate_means_no_limit_and_time_never_runs_backwards() {
        assert_eq!(UplinkConfig::limit(None, 5), (0, 0));
        let s = FloodState {
            credit_ns: 0,
            last_ns: 100,
        };
        let (n, ok) = flood_step(s, 50, 10, 100);
        assert!(!ok);
        assert_eq!(n.last_ns, 100);
    }

    #[test]
    fn deny_keys_put_the_ifindex_first() {
        assert_eq!(
            deny4_key(0x0102_0304, [10, 0, 0, 1]),
            [1, 2, 3, 4, 10, 0, 0, 1]
        );
        let k = deny6_key(7, &[0xfd; 16]);
        assert_eq!(&k[..4], &[0, 0, 0, 7]);
        assert_eq!(&k[4..], &[0xfd; 16]);
    }
}
