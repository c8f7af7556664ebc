//! Flow events: records of new flows, drops and audits for `porin flows`,
//! the flow log and metrics, written into `PORIN_EVENTS_V1` in the
//! `porin_common::flow::FlowEvent` layout.
//!
//! # Two transports, two objects
//! `PORIN_EVENTS_V1` is a BPF ring buffer (kernel 5.8+) by default. Built
//! with the cargo feature `perf-events` it is a perf event array instead
//! (one perf buffer per CPU, any kernel Porin supports), and the record is
//! written into a per-CPU scratch value and copied out with
//! `bpf_perf_event_output`. The two cannot share one object: the kernel
//! creates every map an object names before it verifies a program, and a
//! ring buffer cannot be created before 5.8. `build.rs` builds this crate
//! twice (objects `porin` and `porin-perf`); the daemon picks one at load
//! time (`src/ebpf.rs`).
//!
//! # Maps
//! | map | type | content | written by |
//! | --- | --- | --- | --- |
//! | `PORIN_EVENTS_V1` | ring buffer, 256 KiB (or perf event array, one buffer per CPU) | `FlowEvent` records | programs |
//! | `PORIN_EVSCR_V1` | per-CPU array\[1\], perf object only | the record being written | programs |
//! | `PORIN_EVCFG_V1` | array\[1\] | [`EventConfig`]: the rate limit | manager |
//! | `PORIN_EVRATE_V1` | per-CPU array\[1\] | [`RateState`]: token bucket | programs |
//! | `PORIN_LOST_V1` | per-CPU array\[2\] | `u64` records not emitted, by [`lost`] cause | programs |
//!
//! # Rate limit
//! A flood must not turn into a flood of events: each CPU has a token bucket
//! kept in nanoseconds of credit. Credit grows with time up to
//! `EventConfig::burst_ns`; an event costs `EventConfig::cost_ns` (one
//! second divided by the events per second allowed on one CPU). Userspace
//! computes both, so the program does no division. A record not emitted, for
//! lack of credit or of room in the ring, is counted in `PORIN_LOST_V1`:
//! lost records are visible, never silent. A zeroed `PORIN_EVCFG_V1` (no
//! daemon configured it) means events are off, and nothing is counted.
//!
//! With perf buffers a full buffer is counted by the kernel itself: it keeps
//! the number of samples it could not write and reports it in a
//! `PERF_RECORD_LOST` record the next time there is room, which the reader
//! adds to the `ring_full` cause. The program therefore counts only the
//! other failures of `bpf_perf_event_output` (e.g. no perf buffer open for
//! this CPU), so no loss is counted twice.
//!
//! # Why the record is written word by word
//! The record is reserved in the ring (or the perf scratch value) and filled
//! in place with eighteen 8-byte volatile stores: no 144-byte copy on the
//! stack, and no zeroed array for LLVM to turn into a call of bpf-linker's
//! byte-loop `memset` (see `porin_common::parse::HeaderBuf`).

use core::mem::offset_of;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, PerCpuArray},
    programs::TcContext,
    EbpfContext,
};
use porin_common::{
    datapath::{tc_action, Direction},
    decide::Verdict,
    flow::{lost, verdict, EventConfig, FlowEvent, RateState},
    maps,
    parse::Flow,
};

#[cfg(not(feature = "perf-events"))]
#[map]
static PORIN_EVENTS_V1: aya_ebpf::maps::RingBuf =
    aya_ebpf::maps::RingBuf::with_byte_size(maps::EVENTS.max_entries, 0);

/// max_entries 0: the loader sizes it to the number of CPUs.
#[cfg(feature = "perf-events")]
#[map]
static PORIN_EVENTS_V1: aya_ebpf::maps::PerfEventArray<FlowEvent> =
    aya_ebpf::maps::PerfEventArray::new(0);

#[cfg(feature = "perf-events")]
#[map]
static PORIN_EVSCR_V1: PerCpuArray<[u64; WORDS]> =
    PerCpuArray::with_max_entries(maps::EVENT_SCRATCH.max_entries, 0);

#[map]
static PORIN_EVCFG_V1: Array<EventConfig> =
    Array::with_max_entries(maps::EVENT_CONFIG.max_entries, 0);

#[map]
static PORIN_EVRATE_V1: PerCpuArray<RateState> =
    PerCpuArray::with_max_entries(maps::EVENT_RATE.max_entries, 0);

#[map]
static PORIN_LOST_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::CAUSES, 0);

/// The `FlowEvent::verdict` of a counted verdict: passed without a drop
/// reason is FORWARDED, a drop reason with `TC_ACT_OK` is AUDIT.
#[inline(always)]
pub fn flow_verdict(v: &Verdict) -> u8 {
    match v.drop {
        None => verdict::FORWARDED,
        Some(_) if v.action == tc_action::OK => verdict::AUDIT,
        Some(_) => verdict::DROPPED,
    }
}

/// Emits one flow event, unless the rate limit or a full ring stops it
/// (then it is counted in `PORIN_LOST_V1`).
///
/// * `kind`: `flow::kind::NEW_FLOW` or `flow::kind::DROP`;
/// * `verdict`: a `flow::verdict` value ([`flow_verdict`]);
/// * `drop_reason`: `DropReason as u8` (ignored by readers for FORWARDED);
/// * `flow`: the parsed packet, `None` when parsing failed (addresses,
///   ports, protocol and family are then zero);
/// * `endpoint_identity` / `peer_identity`: the identities as the program
///   sees them; the source and destination follow from `dir` (egress: the
///   endpoint sends);
/// * `rule`: `PolicyValue::rule` of the allowing entry, 0 otherwise;
/// * `tcp_flags`: the TCP flags byte; 0 takes the flow's own
///   (`Flow::tcp_flags`, 0 for other protocols);
/// * `ctx` (first): the program's context, for `bpf_perf_event_output`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn emit<C: EbpfContext>(
    ctx: &C,
    kind: u8,
    verdict: u8,
    drop_reason: u8,
    dir: Direction,
    flow: Option<&Flow>,
    ifindex: u32,
    endpoint_identity: u32,
    peer_identity: u32,
    bytes: u32,
    rule: u32,
    tcp_flags: u8,
) {
    emit_with(
        ctx,
        kind,
        verdict,
        drop_reason,
        dir,
        flow,
        ifindex,
        endpoint_identity,
        peer_identity,
        bytes,
        rule,
        tcp_flags,
        None,
    )
}

/// The HTTP part of an `HTTP` event.
pub struct L7<'a> {
    /// `porin_common::http::method` index.
    pub method: u8,
    pub path_len: u16,
    /// The path's first bytes, zero past `path_len`.
    pub path: &'a [u64; 8],
}

/// [`emit`] with the L7 fields filled (`kind` is `flow::kind::HTTP` or
/// `flow::kind::MQTT`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn emit_l7<C: EbpfContext>(
    ctx: &C,
    kind: u8,
    verdict: u8,
    drop_reason: u8,
    dir: Direction,
    flow: &Flow,
    ifindex: u32,
    endpoint_identity: u32,
    peer_identity: u32,
    bytes: u32,
    rule: u32,
    l7: &L7,
) {
    emit_with(
        ctx,
        kind,
        verdict,
        drop_reason,
        dir,
        Some(flow),
        ifindex,
        endpoint_identity,
        peer_identity,
        bytes,
        rule,
        0,
        Some(l7),
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit_with<C: EbpfContext>(
    ctx: &C,
    kind: u8,
    verdict: u8,
    drop_reason: u8,
    dir: Direction,
    flow: Option<&Flow>,
    ifindex: u32,
    endpoint_identity: u32,
    peer_identity: u32,
    bytes: u32,
    rule: u32,
    tcp_flags: u8,
    l7: Option<&L7>,
) {
    let Some(now) = admit() else {
        return;
    };
    let Some(mut entry) = reserve() else {
        count_lost(lost::RING_FULL);
        return;
    };
    let (src, dst) = match dir {
        Direction::Egress => (endpoint_identity, peer_identity),
        Direction::Ingress => (peer_identity, endpoint_identity),
    };
    // The packet's own TCP flags when the caller has none to give (the
    // TC programs' slow path: they tell a connection's SYN from the rest).
    let (addrs, ports, proto, family, seen_flags) = match flow {
        Some(f) => {
            // SAFETY: `Flow` is repr(C, align(8)) with both addresses first:
            // its first 32 bytes are four aligned words.
            let w = (f as *const Flow).cast::<u64>();
            let a = unsafe { [*w, *w.add(1), *w.add(2), *w.add(3)] };
            (
                a,
                u64::from(f.sport) | u64::from(f.dport) << 16,
                f.protocol,
                f.family,
                f.tcp_flags,
            )
        }
        None => ([0; 4], 0, 0, 0, 0),
    };
    let tcp_flags = if tcp_flags == 0 {
        seen_flags
    } else {
        tcp_flags
    };
    let flags = u64::from(kind)
        | u64::from(verdict) << 8
        | u64::from(drop_reason) << 16
        | u64::from(dir as u8) << 24
        | u64::from(proto) << 32
        | u64::from(family) << 40
        | u64::from(tcp_flags) << 48
        | u64::from(l7.map_or(0, |h| h.method)) << 56;
    let p = entry.as_mut_ptr();
    // SAFETY: the reserved record is WORDS aligned words; every one is
    // written before it is submitted.
    unsafe {
        p.write_volatile(now);
        p.add(1).write_volatile(addrs[0]);
        p.add(2).write_volatile(addrs[1]);
        p.add(3).write_volatile(addrs[2]);
        p.add(4).write_volatile(addrs[3]);
        p.add(5).write_volatile(ports | u64::from(ifindex) << 32);
        p.add(6)
            .write_volatile(u64::from(src) | u64::from(dst) << 32);
        p.add(7)
            .write_volatile(u64::from(bytes) | u64::from(rule) << 32);
        p.add(8).write_volatile(flags);
        // http_path_len, _pad, http_path (zero without HTTP data).
        match l7 {
            Some(h) => {
                p.add(9).write_volatile(u64::from(h.path_len));
                let mut w = 0;
                while w < 8 {
                    p.add(10 + w).write_volatile(h.path[w]);
                    w += 1;
                }
            }
            None => {
                let mut w = 9;
                while w < WORDS {
                    p.add(w).write_volatile(0);
                    w += 1;
                }
            }
        }
    }
    entry.submit(ctx);
}

const WORDS: usize = maps::EVENT_WORDS;

/// A record being written: a ring buffer reservation.
#[cfg(not(feature = "perf-events"))]
struct Entry(aya_ebpf::maps::ring_buf::RingBufEntry<[u64; WORDS]>);

#[cfg(not(feature = "perf-events"))]
#[inline(always)]
fn reserve() -> Option<Entry> {
    PORIN_EVENTS_V1.reserve::<[u64; WORDS]>(0).map(Entry)
}

#[cfg(not(feature = "perf-events"))]
impl Entry {
    #[inline(always)]
    fn as_mut_ptr(&mut self) -> *mut u64 {
        self.0.as_mut_ptr().cast::<u64>()
    }

    #[inline(always)]
    fn submit<C: EbpfContext>(self, _ctx: &C) {
        self.0.submit(0);
    }
}

/// A record being written: this CPU's scratch value, copied into this
/// CPU's perf buffer on submit.
#[cfg(feature = "perf-events")]
struct Entry(*mut [u64; WORDS]);

#[cfg(feature = "perf-events")]
#[inline(always)]
fn reserve() -> Option<Entry> {
    PORIN_EVSCR_V1.get_ptr_mut(0).map(Entry)
}

#[cfg(feature = "perf-events")]
impl Entry {
    #[inline(always)]
    fn as_mut_ptr(&mut self) -> *mut u64 {
        self.0.cast::<u64>()
    }

    #[inline(always)]
    fn submit<C: EbpfContext>(self, ctx: &C) {
        use aya_ebpf::{bindings::BPF_F_CURRENT_CPU, helpers::bpf_perf_event_output};
        // The map argument is the map definition's address, as for every
        // map helper (aya-ebpf's own `output` discards the result we need).
        let map = core::ptr::addr_of!(PORIN_EVENTS_V1).cast_mut().cast();
        // SAFETY: a valid context, map and WORDS * 8 readable bytes.
        let ret = unsafe {
            bpf_perf_event_output(
                ctx.as_ptr(),
                map,
                u64::from(BPF_F_CURRENT_CPU),
                self.0.cast(),
                (WORDS * 8) as u64,
            )
        };
        // -ENOSPC (buffer full) is counted by the kernel and reported to the
        // reader in PERF_RECORD_LOST; count only the other failures here.
        const ENOSPC: i64 = 28;
        if ret < 0 && ret != -ENOSPC {
            count_lost(lost::RING_FULL);
        }
    }
}

// The word layout above, checked against the shared struct (little endian:
// the eBPF target is bpfel, and lower fields sit in lower bits).
const _: () = assert!(core::mem::size_of::<FlowEvent>() == WORDS * 8);
const _: () = assert!(offset_of!(FlowEvent, saddr) == 8);
const _: () = assert!(offset_of!(FlowEvent, daddr) == 24);
const _: () = assert!(offset_of!(FlowEvent, sport) == 40);
const _: () = assert!(offset_of!(FlowEvent, dport) == 42);
const _: () = assert!(offset_of!(FlowEvent, ifindex) == 44);
const _: () = assert!(offset_of!(FlowEvent, src_identity) == 48);
const _: () = assert!(offset_of!(FlowEvent, dst_identity) == 52);
const _: () = assert!(offset_of!(FlowEvent, bytes) == 56);
const _: () = assert!(offset_of!(FlowEvent, rule) == 60);
const _: () = assert!(offset_of!(FlowEvent, kind) == 64);
const _: () = assert!(offset_of!(FlowEvent, verdict) == 65);
const _: () = assert!(offset_of!(FlowEvent, drop_reason) == 66);
const _: () = assert!(offset_of!(FlowEvent, direction) == 67);
const _: () = assert!(offset_of!(FlowEvent, protocol) == 68);
const _: () = assert!(offset_of!(FlowEvent, family) == 69);
const _: () = assert!(offset_of!(FlowEvent, tcp_flags) == 70);
const _: () = assert!(offset_of!(FlowEvent, http_method) == 71);
const _: () = assert!(offset_of!(FlowEvent, http_path_len) == 72);
const _: () = assert!(offset_of!(FlowEvent, http_path) == 80);
const _: () = assert!(offset_of!(Flow, saddr) == 0 && offset_of!(Flow, daddr) == 16);

/// Takes one event's credit from this CPU's bucket and returns the time
/// for the record; counts a rate-limited record when there is not enough.
///
/// The clock is read only once events are known to be on: it costs about
/// 20-30 ns on the VMs we measure, as much as the rest of a cached drop
/// (`dcache.rs`), and with events off nothing needs it.
#[inline(always)]
fn admit() -> Option<u64> {
    let cfg = PORIN_EVCFG_V1.get(0)?;
    let (cost, burst) = (cfg.cost_ns, cfg.burst_ns);
    if cost == 0 {
        return None;
    }
    let state = PORIN_EVRATE_V1.get_ptr_mut(0)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot; programs run with preemption disabled, so
    // nothing else touches it meanwhile.
    unsafe {
        let elapsed = now.saturating_sub((*state).last_ns);
        let mut credit = (*state).credit_ns.saturating_add(elapsed);
        if credit > burst {
            credit = burst;
        }
        (*state).last_ns = now;
        if credit < cost {
            (*state).credit_ns = credit;
            count_lost(lost::RATE_LIMITED);
            return None;
        }
        (*state).credit_ns = credit - cost;
    }
    Some(now)
}

#[inline(always)]
fn count_lost(cause: u32) {
    if let Some(c) = PORIN_LOST_V1.get_ptr_mut(cause) {
        // SAFETY: this CPU's slot (see `admit`).
        unsafe { *c += 1 };
    }
}

/// Test-only entry point (never attached): emits one DROP event per packet
/// from 10.0.0.1:1000 to 10.0.0.2:2000 over TCP, with `skb->len` as bytes,
/// so tests can check the ring buffer, the record layout and the rate limit
/// through `BPF_PROG_TEST_RUN` before the real programs emit events.
#[classifier]
pub fn events_selftest(ctx: TcContext) -> i32 {
    let flow = Flow {
        saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport: 1000,
        dport: 2000,
        family: 4,
        protocol: 6,
        may_be_reply: false,
        tcp_flags: 0,
    };
    emit(
        &ctx,
        porin_common::flow::kind::DROP,
        verdict::DROPPED,
        0,
        Direction::Egress,
        Some(&flow),
        7,
        0x0100_0001,
        0x0100_0002,
        ctx.len(),
        0,
        0x02,
    );
    tc_action::OK
}
