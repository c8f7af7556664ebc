//! The identity-policy datapath's shared vocabulary: identities, map keys and
//! values, verdicts and drop reasons. Layout version 1 (map names end `_V1`;
//! a changed layout gets a new name, a retired field is renamed `_retired`
//! rather than reused).
//!
//! # Maps (kernel names ≤ 15 characters)
//! | map | type | key → value | written by |
//! | --- | --- | --- | --- |
//! | `PORIN_ENDP_V1` | hash | host veth ifindex `u32` → [`EndpointInfo`] | manager |
//! | `PORIN_IP4_V1` | hash | IPv4 `[u8; 4]` → identity `u32` | manager (endpoint and host addresses) |
//! | `PORIN_IP6_V1` | hash | IPv6 `[u8; 16]` → identity `u32` | manager |
//! | `PORIN_NET4_V1` | LPM trie | prefix + IPv4 → identity | manager (named networks) |
//! | `PORIN_NET6_V1` | LPM trie | prefix + IPv6 → identity | manager |
//! | `PORIN_POL_V1` | hash | [`PolicyKey`] → [`PolicyValue`] | manager, per generation |
//! | `PORIN_CFG_V1` | array\[1\] | 0 → [`DatapathConfig`] (active generation, ready, deny-cache epoch) | manager |
//! | `PORIN_CT4_V1` | LRU hash | [`Ct4Key`] (IPv4) → [`CtValue`] | programs (the manager deletes a removed endpoint's entries) |
//! | `PORIN_CT_V1` | LRU hash | [`CtKey`] (IPv6) → [`CtValue`] | programs (likewise) |
//! | `PORIN_CTCLK_V1` | array\[1\] | [`CtClock`]: the clock, idle timeouts, quota | manager (every second) |
//! | `PORIN_CTN_V1` | hash | host veth ifindex → entries (u32) | programs (atomic adds), manager (sweep) |
//! | `PORIN_DROPS_V1` | per-CPU array | [`DropReason`] → [`Counter`] | programs |
//! | `PORIN_FWD_V1` | per-CPU array | [`Direction`] → [`Counter`] | programs |
//! | `PORIN_DCACHE_V1` | per-CPU array\[[`max_entries::DENY_CACHE`]\] | slot → [`DenyEntry`] (deny cache) | programs (the manager invalidates it by bumping [`DatapathConfig::epoch`]) |
//! | `PORIN_HTTPS_V1`, `PORIN_HTTPR_V1`, `PORIN_HTTPC_V1` | HTTP rule sets, rules, connection state | see [`crate::http`] | manager / programs |
//! | `PORIN_HTTPP_V1`, `PORIN_HTTPB_V1` | program array (HTTP stage), per-CPU scratch | see the eBPF crate's `http.rs` | manager / programs |
//!
//! # Atomic policy updates
//! Policy entries carry a generation (0 or 1). The programs read the active
//! generation from `PORIN_CFG_V1` once per packet and only look up entries of
//! that generation. The manager writes a complete new policy under the other
//! generation, flips `PORIN_CFG_V1` (one 4-byte write), then deletes the old
//! generation's entries: no packet ever sees a half-written policy.
//!
//! # Conntrack
//! `PORIN_CT4_V1` (IPv4, 20-byte key) and `PORIN_CT_V1` (IPv6, 44-byte
//! key) are checked before policy: a packet whose tuple matches an entry
//! made at the same endpoint in the same direction, or whose reversed tuple
//! matches one made in the other direction (a reply), passes.
//!
//! One lookup per packet: a connection is stored once, under its tuple in
//! canonical order (the (address, port) end that sorts first, addresses
//! compared as big-endian numbers, is the key's source), and the entry's
//! [`CtValue::origin`] says whether the first packet went from the key's
//! source or its destination. A packet computes the same key whichever way
//! it goes, and is a reply exactly when it goes the other way than the
//! first packet ([`crate::decide::ct_admits`]). Inserts do not overwrite:
//! a packet that matches an entry without being admitted by it (e.g. the
//! reversed tuple in the same direction) goes through policy, and if policy
//! allows it, it passes without replacing the entry, so no packet can turn
//! an established connection's entry around.
//!
//! Entries are keyed by the host veth's ifindex, so the manager deletes an
//! endpoint's entries when it removes the endpoint (ifindexes are reused).
//! Entries do not record the policy generation: after every apply the
//! manager judges each entry again under the new policy and revokes those
//! it no longer allows. Entries have states and idle timeouts, and each
//! endpoint a quota of entries: see [`crate::ct`] (`PORIN_CTCLK_V1`,
//! `PORIN_CTN_V1`).
//!
//! # Deny cache
//! Repeated packets of a denied flow would pay the whole slow path every
//! time (conntrack miss, endpoint, two identities, up to four policy
//! lookups: about 250 ns). `PORIN_DCACHE_V1` remembers recent drops: a
//! direct-mapped cache, one [`DenyEntry`] per slot, per CPU (no entry is
//! ever written by two CPUs, so none is torn), the slot picked by a hash of
//! (ifindex, direction, addresses, ports, protocol, family)
//! ([`crate::dcache`]). It is checked after a conntrack miss; an entry
//! counts only when its whole key equals the packet's and its epoch equals
//! the current [`DatapathConfig::epoch`]. A hit repeats the drop, counted
//! and evented as the slow path would.
//!
//! Only enforce-mode `PolicyDenied` and `SpoofedSource` drops are stored:
//! the cache never lets a packet through, it can only repeat a drop the
//! maps decided. Audit-mode verdicts, parse errors, `UnknownEndpoint` and
//! `Internal` always take the slow path.
//!
//! Invalidation: the manager bumps the epoch after every change to the maps
//! a verdict depends on (endpoints, addresses, networks, policy,
//! generation), so every entry made before the change stops counting at
//! once. The programs read the epoch before the slow path and store the
//! value they read: a packet judged with the old maps is never stored under
//! the new epoch. Epoch 0 means "cache off" (a fresh, never bumped map).
//! (The bump is its own syscall, made after the map writes' syscalls have
//! returned: a program that reads the new epoch and then looks the maps up
//! sees the written entries; hash-map updates are published with release
//! semantics under RCU.)
//!
//! # Peer identity
//! The peer's address is looked up in the exact maps (endpoints and host
//! addresses) first, then in the network LPM tries; an address in none of
//! them is [`identity::WORLD`].

/// Identities: numeric names for who is talking. See [`identity`].
pub type Identity = u32;

/// Reserved identities and the ranges of derived ones.
///
/// | value | name | meaning |
/// | --- | --- | --- |
/// | 0 | `ANY` | wildcard peer in policy keys; never an endpoint's identity |
/// | 1 | `HOST` | the node itself (its addresses, including bridge gateways) |
/// | 2 | `WORLD` | any address that is not an endpoint, the host, or in a named network |
/// | 3 | `UNMANAGED` | a container no group selects |
/// | 4 | `UPDATING` | an address or endpoint whose identity is being changed; no policy entry ever names it, so only wildcard (`ANY`) entries apply while it is set |
/// | 5 | `SPLIT_NETNS` | a container with threads in another network namespace (traffic its veth does not see); no policy entry names it either: the strictest verdict |
/// | 0x0100_0000..=0x01FF_FFFF | groups | derived from the group name |
/// | 0x0200_0000..=0x02FF_FFFF | networks | derived from the network name |
pub mod identity {
    use super::Identity;

    pub const ANY: Identity = 0;
    pub const HOST: Identity = 1;
    pub const WORLD: Identity = 2;
    pub const UNMANAGED: Identity = 3;
    /// Held by an address or endpoint while a reload moves it to another
    /// identity, across the policy generation flip (see the manager).
    pub const UPDATING: Identity = 4;
    /// A container some of whose threads run in a network namespace of
    /// their own; like `UPDATING`, no policy entry ever names it.
    pub const SPLIT_NETNS: Identity = 5;
    /// First value of the derived ranges; everything below is reserved.
    pub const GROUP_BASE: Identity = 0x0100_0000;
    pub const NETWORK_BASE: Identity = 0x0200_0000;
    /// Derived identities use the low 24 bits.
    pub const DERIVED_MASK: Identity = 0x00FF_FFFF;

    /// Whether `id` belongs to something on this node (the host, a group's
    /// container, an unmanaged container): such an address never
    /// legitimately arrives from outside.
    #[inline(always)]
    pub fn is_local(id: Identity) -> bool {
        id == HOST
            || id == UNMANAGED
            || id == SPLIT_NETNS
            || (GROUP_BASE..NETWORK_BASE).contains(&id)
    }
}

/// `max_entries` of each map. Userspace reads them to refuse (rather than
/// half-apply) a configuration that does not fit.
pub mod max_entries {
    /// `PORIN_ENDP_V1`: endpoints (host veths) on one node.
    pub const ENDPOINTS: u32 = 4096;
    /// `PORIN_IP4_V1` and `PORIN_IP6_V1` each.
    pub const ADDRESSES: u32 = 16384;
    /// `PORIN_NET4_V1` and `PORIN_NET6_V1` each.
    pub const NETWORKS: u32 = 4096;
    /// `PORIN_POL_V1`, both generations together.
    pub const POLICY: u32 = 65536;
    /// `PORIN_CT4_V1` (LRU: the least recently used entry makes room).
    pub const CONNTRACK: u32 = 65536;
    /// `PORIN_CT_V1`, IPv6 connections (LRU too).
    pub const CONNTRACK6: u32 = 16384;
    /// `PORIN_DCACHE_V1` slots per CPU (a power of two; 64 bytes each, so
    /// 64 KiB per CPU).
    pub const DENY_CACHE: u32 = 1024;
    /// `PORIN_GATE_V1`: classified container cgroups on one node.
    pub const GATE: u32 = 8192;
}

const _: () = assert!(max_entries::DENY_CACHE.is_power_of_two());

/// Traffic direction as seen from the endpoint the program is attached for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Leaving the container (`from_container`, host veth TC ingress).
    Egress = 0,
    /// Entering the container (`to_container`, host veth TC egress).
    Ingress = 1,
}

/// Number of [`Direction`] values (size of `PORIN_FWD_V1`).
pub const DIRECTIONS: u32 = 2;

/// Enforcement mode of an endpoint, [`EndpointInfo::mode`].
pub mod mode {
    /// Denied packets are dropped.
    pub const ENFORCE: u8 = 0;
    /// Denied packets are counted (as if dropped) and passed.
    pub const AUDIT: u8 = 1;
}

/// IP protocol numbers the policy knows. Port 0 in a policy key means "any
/// port"; ICMP entries always use port 0.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// `PORIN_ENDP_V1` value: what the programs need to know about the endpoint
/// whose host veth they run on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointInfo {
    pub identity: Identity,
    /// [`mode::ENFORCE`] or [`mode::AUDIT`].
    pub mode: u8,
    pub _pad: [u8; 3],
}

impl EndpointInfo {
    /// An endpoint of `identity` in `mode` ([`mode::ENFORCE`] or
    /// [`mode::AUDIT`]).
    pub const fn new(identity: Identity, mode: u8) -> Self {
        EndpointInfo {
            identity,
            mode,
            _pad: [0; 3],
        }
    }
}

/// `PORIN_POL_V1` key. Lookup order per packet (first hit wins):
/// `(peer, port)`, `(peer, 0)`, `(ANY, port)`, `(ANY, 0)`, all with the
/// packet's exact protocol, direction, subject and the active generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The endpoint's identity (whose policy this is).
    pub subject: Identity,
    /// The other side's identity, or [`identity::ANY`].
    pub peer: Identity,
    /// Destination port in host byte order, 0 = any.
    pub port: u16,
    /// IP protocol number ([`proto`]).
    pub protocol: u8,
    /// [`Direction`] as u8.
    pub direction: u8,
    /// 0 or 1; see the module notes.
    pub generation: u8,
    pub _pad: [u8; 3],
}

impl PolicyKey {
    /// `subject`'s entry for `protocol` traffic with `peer` to `port`
    /// ([`identity::ANY`] and 0 are the wildcards), in generation 0: the
    /// manager writes it under the generation it fills ([`Self::at`]).
    pub const fn new(
        subject: Identity,
        peer: Identity,
        direction: Direction,
        protocol: u8,
        port: u16,
    ) -> Self {
        PolicyKey {
            subject,
            peer,
            port,
            protocol,
            direction: direction as u8,
            generation: 0,
            _pad: [0; 3],
        }
    }

    /// The same key in `generation`.
    pub const fn at(self, generation: u8) -> Self {
        PolicyKey { generation, ..self }
    }
}

/// `PORIN_POL_V1` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyValue {
    /// [`action::ALLOW`] or [`action::DENY`].
    pub action: u8,
    pub _pad: [u8; 3],
    /// Index of the rule that produced the entry, for flow events and
    /// `porin policy` (0 = a ground rule).
    pub rule: u32,
}

impl PolicyValue {
    /// `action` ([`action`]) by rule `rule`.
    pub const fn new(action: u8, rule: u32) -> Self {
        PolicyValue {
            action,
            _pad: [0; 3],
            rule,
        }
    }

    /// Allowed by rule `rule`.
    pub const fn allow(rule: u32) -> Self {
        Self::new(action::ALLOW, rule)
    }

    /// Denied by rule `rule`.
    pub const fn deny(rule: u32) -> Self {
        Self::new(action::DENY, rule)
    }

    /// Allowed at L3/L4 by rule `rule`, requests judged by its HTTP rules.
    pub const fn allow_http(rule: u32) -> Self {
        Self::new(action::ALLOW_HTTP, rule)
    }
}

pub mod action {
    pub const DENY: u8 = 0;
    pub const ALLOW: u8 = 1;
    /// Allowed at L3/L4, and every request on the connection is judged by
    /// the HTTP rule set `PORIN_HTTPS_V1` holds under the same key (see
    /// [`crate::http`]).
    pub const ALLOW_HTTP: u8 = 2;
}

/// `PORIN_CFG_V1` value.
///
/// An array map's entry always exists (zeroed until written), so "no
/// configuration yet" cannot be told by a failed lookup: `ready` tells it.
/// A zeroed entry, or a generation other than 0 or 1, makes the programs drop
/// with [`DropReason::Internal`] instead of enforcing an empty generation 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// Active policy generation (0 or 1).
    pub generation: u32,
    /// [`CONFIG_READY`] once the manager has written the first complete
    /// policy generation; never cleared afterwards (a generation flip writes
    /// the same value again), so flipping stays one aligned 4-byte change.
    pub ready: u32,
    /// Deny-cache epoch (see the module notes): a [`DenyEntry`] counts only
    /// while its epoch equals this one. The manager bumps it after every
    /// change of a map a verdict depends on, never to 0 (0 = cache off).
    /// Alone in an aligned 8-byte word with `_pad`, and every write changes
    /// one field only (a generation flip or an epoch bump, rewriting the
    /// others with their current values), so a reader sees either the old
    /// or the new epoch, never a mix of their bytes.
    pub epoch: u32,
    pub _pad: u32,
}

/// [`DatapathConfig::ready`] value of a written configuration. Not 1, so a
/// stray small integer is not mistaken for it.
pub const CONFIG_READY: u32 = 0x504F_5231; // "POR1"

/// `PORIN_CT4_V1` key: an IPv4 connection at one endpoint, its tuple in
/// canonical order (see the module notes; [`crate::decide::ct4_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ct4Key {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host byte order; 0 for ICMP (echo id is not tracked).
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
    /// Host veth ifindex of the endpoint that saw and allowed the first
    /// packet: each endpoint keeps its own view, so A allowing A→B never
    /// lets the packet past B's ingress policy.
    pub ifindex: u32,
}

/// `PORIN_CT_V1` key: an IPv6 connection at one endpoint, its tuple in
/// canonical order (see the module notes; [`crate::decide::ct6_key`]).
/// (Layout from when it held IPv4 too: `family` is always 6 now.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order; 0 for ICMPv6 (echo id is not tracked).
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// 6.
    pub family: u8,
    pub _pad: [u8; 2],
    /// As in [`Ct4Key::ifindex`].
    pub ifindex: u32,
}

/// `PORIN_CT4_V1` and `PORIN_CT_V1` value.
///
/// # Times are whole seconds of `CLOCK_MONOTONIC`
/// `bpf_ktime_get_ns` costs about 30 ns per call on the VMs we measure (a
/// paravirtual clock), as much as the conntrack lookup itself. A hit does
/// not read it: it copies [`CtClock::now_s`], which the manager writes
/// every second, into `seen_s` (an array read the verifier inlines). Only a
/// new entry (the slow path) reads the clock, for its first `seen_s`. See
/// [`crate::ct`] for the states and how an entry expires.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// Seconds of `CLOCK_MONOTONIC` at the last packet (see above).
    pub seen_s: u32,
    /// The interface the peer's packets into this endpoint have come in by
    /// (`skb->ingress_ifindex`), checked by the anti-spoofing rule for a
    /// container's source address (`crate::spoof::check_ingress`);
    /// [`PEER_IN_UNVERIFIED`] until a packet of the peer has been checked.
    /// A `to_container` hit from another interface is checked again (a
    /// route change passes and is recorded; a forgery is a miss), so the
    /// hit costs one compare, not the owner lookup.
    pub peer_in: u32,
    /// [`Direction`] of the first packet as u8.
    pub direction: u8,
    /// [`ct_origin::KEY_SOURCE`] or [`ct_origin::KEY_DESTINATION`]: which
    /// end of the key sent the first packet.
    pub origin: u8,
    /// Non-zero: an HTTP-ruled connection (`action::ALLOW_HTTP`): every
    /// packet going the first packet's way is checked by the HTTP stage
    /// ([`crate::http`]). One byte test on the hot path.
    pub l7: u8,
    /// [`crate::ct::state`]: what the connection's packets have shown so
    /// far (TCP handshake, closing) or that the manager revoked it.
    pub state: u8,
    /// Hits since creation (wrapping; unsynchronised, so concurrent hits on
    /// several CPUs may count once): shown, never relied on.
    pub hits: u32,
}

/// [`CtValue::peer_in`] of an entry no packet from its peer has been
/// checked for yet (made by `from_container`). Never an ifindex (they are
/// positive `int`s), nor 0 (a packet the host itself sends).
pub const PEER_IN_UNVERIFIED: u32 = u32::MAX;

/// `PORIN_CTCLK_V1` (array\[1\]): the conntrack clock, idle timeouts and
/// per-endpoint quota, written by the manager ([`crate::ct`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtClock {
    /// Whole seconds of `CLOCK_MONOTONIC`, rewritten every second while
    /// the daemon runs. 0 (never written): nothing expires on the packet
    /// path. While the daemon is stopped it stands still, so entries made
    /// meanwhile (stamped by the kernel's clock) look younger than it and
    /// never expire early; hits stamp the stale time, which the sweep of
    /// the next daemon judges (a flow idle longer than its timeout since
    /// the daemon stopped is re-judged by policy, nothing worse).
    pub now_s: u32,
    /// Idle timeout in seconds by [`crate::ct::state`]; 0: never.
    pub timeouts: [u32; crate::ct::STATES],
    /// Most conntrack entries one endpoint (host veth) may have, IPv4 and
    /// IPv6 together (`PORIN_CTN_V1` counts them); 0: no limit. A new flow
    /// beyond it is refused ([`DropReason::ConntrackQuota`]), so one
    /// container cannot fill the shared tables with its flows.
    pub max_per_endpoint: u32,
    /// Most HTTP-ruled connections one endpoint may have
    /// ([`CtCount::http`]); 0: no limit. A new one beyond it is refused
    /// ([`DropReason::HttpQuota`]), so one container cannot evict the
    /// others' HTTP stream state (`PORIN_HTTPC_V1`, a shared LRU).
    pub max_http_per_endpoint: u32,
}

/// `PORIN_CTN_V1` value: one endpoint's conntrack entries, for the quotas
/// in [`CtClock`]. The programs add one per entry they make and take one
/// per stale entry they delete (atomic adds); the manager's sweep sets
/// both to what the table holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtCount {
    /// Entries, IPv4 and IPv6 together.
    pub entries: u32,
    /// Entries of HTTP-ruled connections ([`CtValue::l7`]) among them:
    /// each has its HTTP stream state.
    pub http: u32,
}

/// Which end of a canonical conntrack key sent a packet
/// ([`CtValue::origin`]).
pub mod ct_origin {
    /// From the key's `saddr`/`sport` to its `daddr`/`dport`.
    pub const KEY_SOURCE: u8 = 0;
    /// From the key's `daddr`/`dport` (the tuple was reversed for the key).
    pub const KEY_DESTINATION: u8 = 1;
}

/// `PORIN_DCACHE_V1` value: one cached drop ([`crate::dcache`]).
///
/// The first six words are the key and the epoch, compared as words: the
/// first five follow [`Flow`](crate::parse::Flow)'s layout (addresses,
/// ports, family, protocol) with the direction where `Flow` keeps
/// `may_be_reply`; the sixth is the ifindex and the epoch. The rest is what
/// the repeated drop needs for its counters and flow event. A zeroed slot
/// never matches: no packet has ifindex 0 and epoch 0 is never current.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DenyEntry {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order, as in `Flow`.
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    pub protocol: u8,
    /// [`Direction`] as u8.
    pub direction: u8,
    pub _pad0: u8,
    /// Host veth ifindex of the endpoint whose program dropped the packet.
    pub ifindex: u32,
    /// [`DatapathConfig::epoch`] read before the packet was judged.
    pub epoch: u32,
    /// [`DropReason`] as u8: `PolicyDenied` or `SpoofedSource`.
    pub reason: u8,
    pub _pad1: [u8; 3],
    /// The endpoint's identity, for the flow event.
    pub subject: Identity,
    /// The peer's identity as the slow path saw it (0 when it stopped
    /// before, as for `SpoofedSource`), for the flow event.
    pub peer: Identity,
    /// Hits since the entry was stored (this CPU's; wrapping).
    pub hits: u32,
}

/// Packet and byte counters (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a packet was dropped (or, in audit mode, would have been). Index
/// into `PORIN_DROPS_V1`. Values are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No policy entry allows the flow.
    PolicyDenied = 0,
    /// A header is shorter than its fixed part or than its length field says.
    Malformed = 1,
    /// IPv4 header with options (IHL > 5).
    Ipv4Options = 2,
    /// IPv4 fragment (MF set or non-zero offset): L4 ports cannot be checked.
    Fragment = 3,
    /// IPv6 extension header (hop-by-hop, routing, fragment, destination
    /// options, ...) before the transport header.
    Ipv6ExtHeader = 4,
    /// The host veth has no endpoint entry (being set up or torn down).
    UnknownEndpoint = 5,
    /// EtherType other than IPv4, IPv6 and ARP.
    UnsupportedL3 = 6,
    /// An internal error (map or helper failure): never let through.
    Internal = 7,
    /// `from_uplink`: the source is in a network the uplink's `deny_from`
    /// lists.
    UplinkDenyListed = 8,
    /// `from_uplink`: to a container address whose ingress policy allows
    /// nothing from the source (and no connection of its conntrack).
    UplinkNoPolicy = 9,
    /// `from_uplink`: the source sent more TCP SYNs or UDP packets than the
    /// uplink's `flood` limit allows.
    UplinkFlood = 10,
    /// A source address its sender may not use: `from_container`, a
    /// container sending from an address that is not its own (the address
    /// is not owned by its veth, see `crate::spoof`: another container's,
    /// a replica's of its group included, or no container's);
    /// `from_uplink`, an outside packet claiming the address of a container
    /// or of the host.
    SpoofedSource = 11,
    /// `from_container`: an ICMPv6 router advertisement or redirect sent
    /// by a container (rogue RA): containers are not routers.
    RogueRouter = 12,
    /// An HTTP request on an HTTP-ruled connection that no HTTP rule of
    /// its policy allows (see [`crate::http`]).
    HttpDenied = 13,
    /// Payload on an HTTP-ruled connection that is not an HTTP/1.x request
    /// head (garbage, TLS, bad syntax).
    HttpMalformed = 14,
    /// An HTTP request the datapath does not judge, denied (chunked body,
    /// paths servers normalise, more head bytes in one packet than the
    /// stage parses per packet, lost connection state).
    HttpUnsupported = 15,
    /// An HTTP request head longer than the limit (8 KiB by default).
    HttpHeadTooLarge = 16,
    /// A segment that would make Porin's view of an HTTP-ruled stream
    /// differ from the server's: urgent data or data on a SYN (denied), a
    /// retransmission touching head bytes or head bytes out of order
    /// (dropped without an answer). See `crate::http_stream`.
    HttpStream = 17,
    /// A packet of a TCP connection an apply revoked (the policy no longer
    /// allows it): answered with RSTs both ways (see [`crate::ct`]).
    ConnectionRevoked = 18,
    /// A new flow of an endpoint that already has as many conntrack
    /// entries as `conntrack.max_per_endpoint` allows ([`CtClock`]).
    ConntrackQuota = 19,
    /// `from_container`: an ARP packet or an IPv6 neighbour/router
    /// solicitation or neighbour advertisement claiming an address that is
    /// not the container's own (ARP sender address, NS/RS source, NA target;
    /// see `crate::spoof`): it would take over a neighbour's address on the
    /// bridge.
    SpoofedNeighbour = 20,
    /// `to_container`: the destination is neither one of the container's
    /// own addresses nor a multicast address or the IPv4 limited broadcast
    /// (traffic meant for another address, see `crate::spoof`).
    WrongDestination = 21,
    /// `to_container`: the source is a container's address but the packet
    /// did not come in from that container's host veth
    /// (`skb->ingress_ifindex`): a forged or routed-in copy of its address.
    SpoofedIngress = 22,
    /// A new HTTP-ruled connection of an endpoint that already has as many
    /// as `conntrack.max_http_per_endpoint` allows ([`CtClock`]): their
    /// stream state (`PORIN_HTTPC_V1`) is shared by every container.
    HttpQuota = 23,
    /// An MQTT packet on an MQTT-ruled connection that the connection's
    /// MQTT rules refuse (client id, topic, filter, QoS, retain, size;
    /// see [`crate::mqtt`]).
    MqttDenied = 24,
    /// Payload on an MQTT-ruled connection that is not MQTT 3.1.1 or 5.0
    /// as a client sends it (no CONNECT first, bad lengths or flags, TLS,
    /// WebSocket).
    MqttMalformed = 25,
    /// MQTT the datapath does not judge, denied: protocol 3.1, a head
    /// over the size limit or more head bytes in one packet than the stage
    /// parses, lost connection state.
    MqttUnsupported = 26,
    /// An MQTT 5 PUBLISH whose topic is given by a topic alias (an empty
    /// topic): Porin keeps no table of aliases.
    MqttTopicAlias = 27,
}

/// Number of drop reasons (size of `PORIN_DROPS_V1`).
pub const DROP_REASONS: u32 = 28;

impl DropReason {
    /// Every reason, in index order (for counters read by index).
    pub const ALL: [DropReason; DROP_REASONS as usize] = [
        DropReason::PolicyDenied,
        DropReason::Malformed,
        DropReason::Ipv4Options,
        DropReason::Fragment,
        DropReason::Ipv6ExtHeader,
        DropReason::UnknownEndpoint,
        DropReason::UnsupportedL3,
        DropReason::Internal,
        DropReason::UplinkDenyListed,
        DropReason::UplinkNoPolicy,
        DropReason::UplinkFlood,
        DropReason::SpoofedSource,
        DropReason::RogueRouter,
        DropReason::HttpDenied,
        DropReason::HttpMalformed,
        DropReason::HttpUnsupported,
        DropReason::HttpHeadTooLarge,
        DropReason::HttpStream,
        DropReason::ConnectionRevoked,
        DropReason::ConntrackQuota,
        DropReason::SpoofedNeighbour,
        DropReason::WrongDestination,
        DropReason::SpoofedIngress,
        DropReason::HttpQuota,
        DropReason::MqttDenied,
        DropReason::MqttMalformed,
        DropReason::MqttUnsupported,
        DropReason::MqttTopicAlias,
    ];

    /// The reason stored as `index` (in events and the deny cache).
    pub fn from_index(index: u8) -> Option<DropReason> {
        Self::ALL.get(usize::from(index)).copied()
    }

    /// Hubble-style name, as flows and metrics show it.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "POLICY_DENIED",
            DropReason::Malformed => "MALFORMED",
            DropReason::Ipv4Options => "IPV4_OPTIONS",
            DropReason::Fragment => "FRAGMENT",
            DropReason::Ipv6ExtHeader => "IPV6_EXT_HEADER",
            DropReason::UnknownEndpoint => "UNKNOWN_ENDPOINT",
            DropReason::UnsupportedL3 => "UNSUPPORTED_L3",
            DropReason::Internal => "INTERNAL",
            DropReason::UplinkDenyListed => "UPLINK_DENY_LISTED",
            DropReason::UplinkNoPolicy => "UPLINK_NO_POLICY",
            DropReason::UplinkFlood => "UPLINK_FLOOD",
            DropReason::SpoofedSource => "SPOOFED_SOURCE",
            DropReason::RogueRouter => "ROGUE_ROUTER",
            DropReason::HttpDenied => "HTTP_DENIED",
            DropReason::HttpMalformed => "HTTP_MALFORMED",
            DropReason::HttpUnsupported => "HTTP_UNSUPPORTED",
            DropReason::HttpHeadTooLarge => "HTTP_HEAD_TOO_LARGE",
            DropReason::HttpStream => "HTTP_STREAM",
            DropReason::ConnectionRevoked => "CONNECTION_REVOKED",
            DropReason::ConntrackQuota => "CONNTRACK_QUOTA",
            DropReason::SpoofedNeighbour => "SPOOFED_NEIGHBOUR",
            DropReason::WrongDestination => "WRONG_DESTINATION",
            DropReason::SpoofedIngress => "SPOOFED_INGRESS",
            DropReason::HttpQuota => "HTTP_QUOTA",
            DropReason::MqttDenied => "MQTT_DENIED",
            DropReason::MqttMalformed => "MQTT_MALFORMED",
            DropReason::MqttUnsupported => "MQTT_UNSUPPORTED",
            DropReason::MqttTopicAlias => "MQTT_TOPIC_ALIAS",
        }
    }

    /// [`Self::name`] of the reason stored as `index`, `UNKNOWN_REASON`
    /// for an index no reason has (a newer program's).
    pub fn name_of(index: u8) -> &'static str {
        Self::from_index(index).map_or("UNKNOWN_REASON", Self::name)
    }
}

/// TC verdicts (`TC_ACT_*`) the programs return.
pub mod tc_action {
    pub const OK: i32 = 0;
    pub const SHOT: i32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain data without implicit padding (each
    // has explicit `_pad` fields up to its alignment), valid for any bytes.
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::Ct4Key {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::CtClock {}
    unsafe impl aya::Pod for super::CtCount {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DenyEntry {}
}

// Layout checks: the kernel and userspace must agree byte for byte.
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 16);
const _: () = assert!(core::mem::offset_of!(DatapathConfig, epoch) == 8);
const _: () = assert!(core::mem::size_of::<DenyEntry>() == 64);
const _: () = assert!(core::mem::size_of::<Ct4Key>() == 20);
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);
const _: () = assert!(core::mem::size_of::<CtClock>() == 44);
const _: () = assert!(core::mem::size_of::<CtCount>() == 8);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_has_its_own_name_and_index() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
            assert_eq!(DropReason::from_index(i as u8), Some(*r));
            let n = r.name();
            let twice = DropReason::ALL.iter().filter(|o| o.name() == n).count();
            assert_eq!(twice, 1, "{n} names two reasons");
        }
        assert_eq!(DropReason::RogueRouter.name(), "ROGUE_ROUTER");
        assert_eq!(DropReason::name_of(15), "HTTP_UNSUPPORTED");
        assert_eq!(DropReason::name_of(DROP_REASONS as u8), "UNKNOWN_REASON");
    }

    #[test]
    fn constructors_zero_the_padding() {
        let k = PolicyKey::new(7, identity::ANY, Direction::Ingress, proto::TCP, 80).at(1);
        assert_eq!((k.direction, k.generation, k._pad), (1, 1, [0; 3]));
        assert_eq!(PolicyValue::allow(3).action, action::ALLOW);
        assert_eq!(EndpointInfo::new(7, mode::AUDIT)._pad, [0; 3]);
    }
}
