//! The map registry: every BPF map of the programs' objects, declared once
//! with its name, key and value types, kind and capacity.
//!
//! The eBPF crate keeps its `#[map] static` declarations (aya-ebpf needs
//! them), sized from these entries; userspace opens maps only through them
//! (`src/maps.rs`: typed handles). A host test (`src/maps.rs` in the
//! `porin` crate) checks both compiled objects against [`ALL`]: same
//! names, kinds, key and value sizes, capacities and flags, nothing
//! missing on either side.
//!
//! Names are pinned in bpffs (`<bpffs>/maps/<name>`) and kernel names keep
//! about 15 characters: never rename one. A map whose key or value layout
//! changes gets a new `_Vn` name (a new map) or a `layout::LAYOUT` bump.
//!
//! Types only the programs know (their scratch buffers) are registered as
//! [`Opaque`] values of their size.

use core::{marker::PhantomData, mem::size_of};

use crate::{
    datapath::{
        max_entries as dp, Counter, Ct4Key, CtClock, CtCount, CtKey, CtValue, DatapathConfig,
        DenyEntry, EndpointInfo, Identity, PolicyKey, PolicyValue, DIRECTIONS, DROP_REASONS,
    },
    flow::{lost, EventConfig, FlowEvent, RateState},
    http::{max_entries as http, HttpKey, HttpSet, HttpValue, Request},
    http_stream::HttpConn,
    layout::MetaRecord,
    mqtt::{max_entries as mqtt, MqttHead, MqttKey, MqttNext, MqttSet},
    probe::FRAME_CLASSES,
    sip::SipKey,
    uplink::{max_entries as up, pass, FloodKey, FloodState, UplinkConfig},
};

/// The kernel's `bpf_map_type` of a map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    ProgArray = 3,
    PerfEventArray = 4,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

/// Which of the two objects (`build.rs`: flow events through a ring
/// buffer or through perf buffers) declares a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InObject {
    Both,
    Ring,
    Perf,
}

/// `BPF_F_NO_PREALLOC`: hash entries are allocated when inserted.
pub const NO_PREALLOC: u32 = 1;

/// A value only the programs read and write, `N` bytes (its type lives in
/// the eBPF crate).
#[repr(C)]
pub struct Opaque<const N: usize>([u8; N]);

/// One map: its name and kind, and its key and value types `K` and `V`
/// (for an LPM trie, `K` is the key's data without the prefix length).
pub struct MapDef<K, V> {
    pub name: &'static str,
    pub kind: MapKind,
    /// `max_entries` in the object (a ring buffer's bytes; 0 for a perf
    /// event array, which the loader sizes to the number of CPUs).
    pub max_entries: u32,
    /// `map_flags` in the object.
    pub flags: u32,
    pub object: InObject,
    types: PhantomData<fn() -> (K, V)>,
}

// By hand: a derive would require `K: Copy, V: Copy`.
impl<K, V> Clone for MapDef<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for MapDef<K, V> {}

impl<K, V> MapDef<K, V> {
    const fn new(name: &'static str, kind: MapKind, max_entries: u32) -> Self {
        MapDef {
            name,
            kind,
            max_entries,
            // The kernel refuses preallocated LPM tries (aya-ebpf sets it).
            flags: match kind {
                MapKind::LpmTrie => NO_PREALLOC,
                _ => 0,
            },
            object: InObject::Both,
            types: PhantomData,
        }
    }

    const fn flags(self, flags: u32) -> Self {
        MapDef { flags, ..self }
    }

    const fn only(self, object: InObject) -> Self {
        MapDef { object, ..self }
    }

    /// The entry without its types, as the kernel sees it.
    pub const fn spec(&self) -> MapSpec {
        let key = size_of::<K>() as u32;
        MapSpec {
            name: self.name,
            kind: self.kind,
            // The kernel's LPM key starts with the u32 prefix length.
            key_size: match self.kind {
                MapKind::LpmTrie => 4 + key,
                _ => key,
            },
            value_size: size_of::<V>() as u32,
            max_entries: self.max_entries,
            flags: self.flags,
            object: self.object,
        }
    }
}

/// A registry entry without its types: what the objects are checked
/// against, and what code that handles every map walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    pub object: InObject,
}

impl MapSpec {
    /// A hash, LRU hash or LPM trie map: kernel memory grows with
    /// `max_entries` (unless not preallocated), unlike the small arrays.
    pub const fn is_keyed(&self) -> bool {
        matches!(
            self.kind,
            MapKind::Hash | MapKind::LruHash | MapKind::LpmTrie
        )
    }
}

use MapKind::{Array, Hash, LpmTrie, LruHash, PerCpuArray};

// Identity and policy (`porin-ebpf` identity.rs, policy.rs).
/// Endpoints by host veth ifindex.
pub const ENDPOINTS: MapDef<u32, EndpointInfo> = MapDef::new("PORIN_ENDP_V1", Hash, dp::ENDPOINTS);
/// Identities of IPv4 addresses.
pub const IP4: MapDef<[u8; 4], Identity> = MapDef::new("PORIN_IP4_V1", Hash, dp::ADDRESSES);
/// Identities of IPv6 addresses.
pub const IP6: MapDef<[u8; 16], Identity> = MapDef::new("PORIN_IP6_V1", Hash, dp::ADDRESSES);
/// Identities of IPv4 networks.
pub const NET4: MapDef<[u8; 4], Identity> = MapDef::new("PORIN_NET4_V1", LpmTrie, dp::NETWORKS);
/// Identities of IPv6 networks.
pub const NET6: MapDef<[u8; 16], Identity> = MapDef::new("PORIN_NET6_V1", LpmTrie, dp::NETWORKS);
/// The policy, both generations.
pub const POLICY: MapDef<PolicyKey, PolicyValue> = MapDef::new("PORIN_POL_V1", Hash, dp::POLICY);
/// The active generation, readiness and deny-cache epoch (one entry).
pub const CONFIG: MapDef<u32, DatapathConfig> = MapDef::new("PORIN_CFG_V1", Array, 1);

// Connections and verdict caches (conntrack.rs, dcache.rs).
/// IPv4 connections.
pub const CT4: MapDef<Ct4Key, CtValue> = MapDef::new("PORIN_CT4_V1", LruHash, dp::CONNTRACK);
/// IPv6 connections (named from when it held both families).
pub const CT6: MapDef<CtKey, CtValue> = MapDef::new("PORIN_CT_V1", LruHash, dp::CONNTRACK6);
/// The conntrack clock, idle timeouts and quota (one entry, `crate::ct`).
pub const CT_CLOCK: MapDef<u32, CtClock> = MapDef::new("PORIN_CTCLK_V1", Array, 1);
/// Conntrack entries per endpoint (host veth ifindex), for the quota.
pub const CT_COUNTS: MapDef<u32, CtCount> = MapDef::new("PORIN_CTN_V1", Hash, dp::ENDPOINTS);
/// The per-CPU deny cache.
pub const DENY_CACHE: MapDef<u32, DenyEntry> =
    MapDef::new("PORIN_DCACHE_V1", PerCpuArray, dp::DENY_CACHE);

// Counters (counters.rs, probe.rs).
/// Dropped packets by `DropReason`.
pub const DROPS: MapDef<u32, Counter> = MapDef::new("PORIN_DROPS_V1", PerCpuArray, DROP_REASONS);
/// Passed packets by `Direction`.
pub const FORWARDED: MapDef<u32, Counter> = MapDef::new("PORIN_FWD_V1", PerCpuArray, DIRECTIONS);
/// `probe_frames`' frames by `FrameClass`.
pub const PROBE: MapDef<u32, u64> = MapDef::new("PORIN_PROBE_V1", PerCpuArray, FRAME_CLASSES);

// The quarantine gate and the pinned layout (gate.rs, meta.rs).
/// Classified container cgroup ids.
pub const GATE: MapDef<u64, u8> = MapDef::new("PORIN_GATE_V1", Hash, dp::GATE);
/// The layout record of the pinned maps (one entry).
pub const META: MapDef<u32, MetaRecord> = MapDef::new("PORIN_META_V1", Array, 1);

// Flow events (events.rs). One name, two kinds: one per object.
/// Flow events through a BPF ring buffer, 256 KiB (about 1800 records
/// between two reads).
pub const EVENTS: MapDef<(), ()> =
    MapDef::new("PORIN_EVENTS_V1", MapKind::RingBuf, 256 * 1024).only(InObject::Ring);
/// Flow events through perf buffers, one per CPU.
pub const EVENTS_PERF: MapDef<u32, u32> =
    MapDef::new(EVENTS.name, MapKind::PerfEventArray, 0).only(InObject::Perf);
/// Words of a flow record.
pub const EVENT_WORDS: usize = size_of::<FlowEvent>() / 8;
/// The record being written, for `bpf_perf_event_output` (one entry).
pub const EVENT_SCRATCH: MapDef<u32, [u64; EVENT_WORDS]> =
    MapDef::new("PORIN_EVSCR_V1", PerCpuArray, 1).only(InObject::Perf);
/// The event rate limit (one entry).
pub const EVENT_CONFIG: MapDef<u32, EventConfig> = MapDef::new("PORIN_EVCFG_V1", Array, 1);
/// Each CPU's event token bucket (one entry).
pub const EVENT_RATE: MapDef<u32, RateState> = MapDef::new("PORIN_EVRATE_V1", PerCpuArray, 1);
/// Records not emitted, by `flow::lost` cause.
pub const LOST: MapDef<u32, u64> = MapDef::new("PORIN_LOST_V1", PerCpuArray, lost::CAUSES);

// The HTTP stage (http.rs).
/// The stage's programs, by `Direction` (tail calls).
pub const HTTP_PROGRAMS: MapDef<u32, u32> = MapDef::new("PORIN_HTTPP_V1", MapKind::ProgArray, 10);
/// HTTP rule sets, under the policy key that names them.
pub const HTTP_SETS: MapDef<PolicyKey, HttpSet> =
    MapDef::new("PORIN_HTTPS_V1", Hash, http::SETS).flags(NO_PREALLOC);
/// HTTP rules of every set.
pub const HTTP_RULES: MapDef<HttpKey, HttpValue> =
    MapDef::new("PORIN_HTTPR_V1", Hash, http::RULES).flags(NO_PREALLOC);
/// Per-connection HTTP state: the client→server stream consumed so far.
pub const HTTP_CONNS: MapDef<CtKey, HttpConn> = MapDef::new("PORIN_HTTPC_V1", LruHash, http::CONNS);
/// The parser's state of request heads that span segments.
pub const HTTP_HEADS: MapDef<CtKey, Request> = MapDef::new("PORIN_HTTPH_V1", LruHash, http::HEADS);
/// The rule hash key (one entry).
pub const HTTP_KEY: MapDef<u32, SipKey> = MapDef::new("PORIN_HTTPK_V1", Array, 1);
/// Policies whose allowed HTTP requests are counted one by one (by policy
/// number, 1-based); requests allowed by a later one count in slot 0.
pub const HTTP_COUNTED_POLICIES: u32 = 1024;
/// Allowed HTTP requests, by the number of the policy that allowed them
/// (per CPU; the manager zeroes it when a reload renumbers policies).
pub const HTTP_ALLOWED: MapDef<u32, u64> =
    MapDef::new("PORIN_HTTPN_V1", PerCpuArray, HTTP_COUNTED_POLICIES);
// MQTT rules (mqtt.rs, in the HTTP stage's programs and stream state).
/// MQTT rule sets, by set id (`HttpSet::id` of a `SET_MQTT` set).
pub const MQTT_SETS: MapDef<u32, MqttSet> =
    MapDef::new("PORIN_MQTTS_V1", Hash, mqtt::SETS).flags(NO_PREALLOC);
/// The sets' topic automata and client-id rules.
pub const MQTT_EDGES: MapDef<MqttKey, MqttNext> =
    MapDef::new("PORIN_MQTTT_V1", Hash, mqtt::EDGES).flags(NO_PREALLOC);
/// The parser's state of MQTT heads that span segments.
pub const MQTT_HEADS: MapDef<CtKey, MqttHead> = MapDef::new("PORIN_MQTTH_V1", LruHash, mqtt::HEADS);
/// Bytes of the HTTP stage's per-CPU scratch (`Scratch` in the eBPF
/// crate's `http.rs`): the host test reports the new size when it changes.
pub const HTTP_SCRATCH_BYTES: usize = 2304;
/// The stage's per-CPU scratch buffer (one entry).
pub const HTTP_SCRATCH: MapDef<u32, Opaque<HTTP_SCRATCH_BYTES>> =
    MapDef::new("PORIN_HTTPB_V1", PerCpuArray, 1);

// Uplinks (uplink.rs).
/// Uplink configurations by ifindex.
pub const UPLINK_CONFIG: MapDef<u32, UplinkConfig> =
    MapDef::new("PORIN_UPCFG_V1", Hash, up::UPLINKS);
/// Denied IPv4 sources per uplink (`uplink::deny4_key`).
pub const UPLINK_DENY4: MapDef<[u8; 8], Identity> =
    MapDef::new("PORIN_UPDNY4_V1", LpmTrie, up::DENY_PREFIXES);
/// Denied IPv6 sources per uplink (`uplink::deny6_key`).
pub const UPLINK_DENY6: MapDef<[u8; 20], Identity> =
    MapDef::new("PORIN_UPDNY6_V1", LpmTrie, up::DENY_PREFIXES);
/// Container IPv4 addresses and the host veth that carries each: the
/// owner TC's anti-spoofing checks (`crate::spoof`), and the uplink's way
/// to a container's conntrack.
pub const UPLINK_ENDPOINTS4: MapDef<[u8; 4], u32> =
    MapDef::new("PORIN_UPEP4_V1", Hash, up::ENDPOINT_ADDRESSES);
/// Container IPv6 addresses and the host veth that carries each.
pub const UPLINK_ENDPOINTS6: MapDef<[u8; 16], u32> =
    MapDef::new("PORIN_UPEP6_V1", Hash, up::ENDPOINT_ADDRESSES);
/// Host veth ifindex → the bridge it is enslaved to: where a container's
/// packets come in when the host routes them (`crate::spoof`).
pub const VETH_BRIDGES: MapDef<u32, u32> = MapDef::new("PORIN_VBR_V1", Hash, dp::ENDPOINTS);
/// Flood limit buckets by source.
pub const UPLINK_FLOOD: MapDef<FloodKey, FloodState> =
    MapDef::new("PORIN_UPFLD_V1", LruHash, up::FLOOD_SOURCES);
/// Passed uplink packets by `uplink::pass` class.
pub const UPLINK_PASSED: MapDef<u32, Counter> =
    MapDef::new("PORIN_UPPASS_V1", PerCpuArray, pass::CLASSES);

/// Every entry, in the order above.
pub const ALL: &[MapSpec] = &[
    ENDPOINTS.spec(),
    IP4.spec(),
    IP6.spec(),
    NET4.spec(),
    NET6.spec(),
    POLICY.spec(),
    CONFIG.spec(),
    CT4.spec(),
    CT6.spec(),
    CT_CLOCK.spec(),
    CT_COUNTS.spec(),
    DENY_CACHE.spec(),
    DROPS.spec(),
    FORWARDED.spec(),
    PROBE.spec(),
    GATE.spec(),
    META.spec(),
    EVENTS.spec(),
    EVENTS_PERF.spec(),
    EVENT_SCRATCH.spec(),
    EVENT_CONFIG.spec(),
    EVENT_RATE.spec(),
    LOST.spec(),
    HTTP_PROGRAMS.spec(),
    HTTP_SETS.spec(),
    HTTP_RULES.spec(),
    HTTP_CONNS.spec(),
    HTTP_HEADS.spec(),
    HTTP_KEY.spec(),
    HTTP_SCRATCH.spec(),
    HTTP_ALLOWED.spec(),
    MQTT_SETS.spec(),
    MQTT_EDGES.spec(),
    MQTT_HEADS.spec(),
    UPLINK_CONFIG.spec(),
    UPLINK_DENY4.spec(),
    UPLINK_DENY6.spec(),
    UPLINK_ENDPOINTS4.spec(),
    UPLINK_ENDPOINTS6.spec(),
    VETH_BRIDGES.spec(),
    UPLINK_FLOOD.spec(),
    UPLINK_PASSED.spec(),
];

/// The entries of `object` (its maps, as the host test checks).
pub fn in_object(object: InObject) -> impl Iterator<Item = &'static MapSpec> {
    ALL.iter()
        .filter(move |m| m.object == InObject::Both || m.object == object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_object_and_fit_the_kernel() {
        for object in [InObject::Ring, InObject::Perf] {
            let mut names: [&str; 64] = [""; 64];
            for (n, m) in in_object(object).enumerate() {
                assert!(!names[..n].contains(&m.name), "{} twice", m.name);
                // BPF_OBJ_NAME_LEN is 16 with the NUL.
                assert!(m.name.len() <= 15, "{} is too long", m.name);
                assert!(m.name.starts_with("PORIN_"), "{}", m.name);
                names[n] = m.name;
            }
        }
    }

    #[test]
    fn lpm_keys_carry_the_prefix_length() {
        assert_eq!(NET4.spec().key_size, 8);
        assert_eq!(UPLINK_DENY6.spec().key_size, 24);
        assert_eq!(EVENTS.spec().key_size, 0);
        assert!(POLICY.spec().is_keyed() && !CONFIG.spec().is_keyed());
    }
}
