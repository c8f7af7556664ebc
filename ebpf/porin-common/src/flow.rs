//! Flow events: the records the datapath programs emit (new flows, drops,
//! HTTP verdicts) for `porin flows`, the flow log and metrics. Layout
//! version 1 (`PORIN_EVENTS_V1`).
//!
//! Field names follow Hubble's flow schema where they fit (verdict,
//! drop_reason, traffic_direction, source/destination identity, L4 ports,
//! TCP flags, L7 HTTP method/url), so habits and tools carry over.

/// What an event reports ([`FlowEvent::kind`]).
pub mod kind {
    /// The first packet of a connection, allowed (a conntrack entry made).
    pub const NEW_FLOW: u8 = 1;
    /// A packet dropped (or, in audit mode, that would have been).
    pub const DROP: u8 = 2;
    /// An HTTP request judged by L7 rules.
    pub const HTTP: u8 = 3;
    /// An MQTT packet judged by MQTT rules: `http_method` holds the
    /// packet type, `http_path` the topic, filter or client id.
    pub const MQTT: u8 = 4;
}

/// [`FlowEvent::verdict`] values (Hubble: FORWARDED, DROPPED, AUDIT).
pub mod verdict {
    pub const FORWARDED: u8 = 1;
    pub const DROPPED: u8 = 2;
    /// Would have been dropped; passed because the endpoint is in audit mode.
    pub const AUDIT: u8 = 3;
}

/// `PORIN_EVCFG_V1` value: the per-CPU event rate limit, written by the
/// daemon. Userspace computes both fields so the programs do no division.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventConfig {
    /// Credit one event costs, in ns; 0 = events off.
    pub cost_ns: u64,
    /// Most credit a CPU may save up (the burst), in ns.
    pub burst_ns: u64,
}

/// `PORIN_EVRATE_V1` value: one CPU's token bucket, kept by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// Indexes of `PORIN_LOST_V1`: why a record was not emitted.
pub mod lost {
    /// The CPU's rate limit was exhausted.
    pub const RATE_LIMITED: u32 = 0;
    /// The ring buffer was full (the daemon is not keeping up).
    pub const RING_FULL: u32 = 1;
    pub const CAUSES: u32 = 2;
}

/// Bytes of the HTTP path kept in an event.
pub const HTTP_PATH_BYTES: usize = 64;

/// One event, as written into the ring buffer (or perf array on kernels
/// before 5.8). Addresses are in network byte order; IPv4 uses the first 4
/// bytes. `ts_ns` is `bpf_ktime_get_ns` (CLOCK_MONOTONIC); userspace turns it
/// into wall-clock time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order; 0 for ICMP.
    pub sport: u16,
    pub dport: u16,
    /// Host veth (TC) or uplink (XDP) ifindex.
    pub ifindex: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    /// Length of the packet on the wire.
    pub bytes: u32,
    /// 1-based policy rule that allowed it (0: ground rule or none).
    pub rule: u32,
    /// [`kind`] value.
    pub kind: u8,
    /// [`verdict`] value.
    pub verdict: u8,
    /// `DropReason` as u8 (meaningful for DROP and AUDIT).
    pub drop_reason: u8,
    /// `Direction` as u8 (0 egress, 1 ingress).
    pub direction: u8,
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// HTTP method index (0: none), for HTTP events.
    pub http_method: u8,
    /// Bytes used in `http_path`.
    pub http_path_len: u16,
    pub _pad: [u8; 6],
    pub http_path: [u8; HTTP_PATH_BYTES],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, valid for any
    // bytes.
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::EventConfig {}
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 144);
