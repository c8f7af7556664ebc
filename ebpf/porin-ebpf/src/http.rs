//! HTTP rules in the TC programs. The parser, the keys, the matcher and the
//! verdict table are `porin_common::http`; this module reads the packet,
//! keeps the per-connection state and answers denied requests.
//!
//! # Where it runs
//! A policy entry with `action::ALLOW_HTTP` makes the connection's
//! conntrack entry carry `l7`: [`open`] records the rule set and where the
//! first request starts (the SYN's sequence number + 1). Every later packet
//! that goes the first packet's way (client → server) on that connection
//! is a `HIT_HTTP` and goes through [`check`]; replies and plain flows stay
//! one flag test. Server-side entries (`to_container`) judge requests from
//! any client; client-side egress entries to servers outside (world,
//! networks, the host) are judged at `from_container` the same way.
//!
//! # The hash key
//! Rule keys are SipHash values under a per-install secret key
//! (`PORIN_HTTPK_V1`, written by the manager before any rule). Until it is
//! written (all zeroes) every request is denied as `Internal`.
//!
//! # A denied request
//! In enforce mode the request never reaches the server: [`deny`] turns the
//! packet into an `HTTP/1.1 403` with FIN from the server, clones it back
//! toward the client (`bpf_clone_redirect`: to the veth's ingress for
//! `to_container`, its egress for `from_container`; the clone is a reply on
//! the connection, so conntrack passes it), then turns the original into a
//! RST toward the server, so the server's socket closes instead of
//! waiting. The connection's state becomes `DENIED`: any later payload is
//! denied too. In audit mode the request passes and is only counted.

use aya_ebpf::{
    helpers::{
        bpf_clone_redirect, bpf_csum_diff, bpf_l4_csum_replace, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
};
use porin_common::{
    datapath::{mode, tc_action, CtKey, Direction, DropReason, PolicyKey},
    decide::{self, peer_addr},
    flow,
    flow::HTTP_PATH_BYTES,
    http::{
        conn_key, feed, framing, judge, max_entries, parse_begin, skip_value, value_skippable,
        HttpError, HttpKey, HttpSet, HttpValue, Request, CHUNK, MAX_HEAD, SET_MQTT, VCHUNK,
    },
    http_stream::{
        allowed, chunk_feed, conn_state, in_chunked_body, next, parsed, plan, reset_at_syn,
        reset_lost, syn_may_restart, tcp_flag, value_room, HttpConn, Next, Plan, LINE_CHUNK,
        MAX_TAILS, STEPS,
    },
    packet::ETH_HLEN,
    parse::{Flow, Parsed},
    sip::SipKey,
};

use crate::{counters, events, identity, parse};

/// `PORIN_HTTPP_V1` indexes: the HTTP stage programs, by `Direction`.
/// The stage runs as a tail call: its own program, with its own stack and
/// verifier budget, so the main programs stay as they were.
#[map]
static PORIN_HTTPP_V1: ProgramArray =
    ProgramArray::with_max_entries(porin_common::maps::HTTP_PROGRAMS.max_entries, 0);

const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_F_INGRESS: u64 = 1;
/// `bpf_l4_csum_replace`: the change is to the pseudo-header.
const BPF_F_PSEUDO_HDR: u64 = 0x10;

#[map]
static PORIN_HTTPS_V1: HashMap<PolicyKey, HttpSet> =
    HashMap::with_max_entries(max_entries::SETS, BPF_F_NO_PREALLOC);

#[map]
static PORIN_HTTPR_V1: HashMap<HttpKey, HttpValue> =
    HashMap::with_max_entries(max_entries::RULES, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static PORIN_HTTPC_V1: LruHashMap<CtKey, HttpConn> =
    LruHashMap::with_max_entries(max_entries::CONNS, 0);

/// The parser's state of heads that span segments, by connection (LRU: an
/// evicted head's connection is denied at its next segment).
#[map]
static PORIN_HTTPH_V1: LruHashMap<CtKey, Request> =
    LruHashMap::with_max_entries(max_entries::HEADS, 0);

/// The SipHash key of the rule hashes (`porin_common::sip`): the
/// manager writes it before any rule; all zeroes (not written) denies
/// every request (`Internal`).
#[map]
static PORIN_HTTPK_V1: Array<SipKey> =
    Array::with_max_entries(porin_common::maps::HTTP_KEY.max_entries, 0);

/// Allowed requests by policy number (`porin_common::maps::HTTP_ALLOWED`):
/// every allowed request is counted here, events or not.
#[map]
static PORIN_HTTPN_V1: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(porin_common::maps::HTTP_COUNTED_POLICIES, 0);

/// Counts a request allowed by policy `rule` (1-based; past the array's
/// end in slot 0). Per CPU: a plain add.
#[inline(always)]
fn count_allowed(rule: u32) {
    let slot = if rule < porin_common::maps::HTTP_COUNTED_POLICIES {
        rule
    } else {
        0
    };
    if let Some(n) = PORIN_HTTPN_V1.get_ptr_mut(slot) {
        // SAFETY: this CPU's value, valid for this run.
        unsafe { *n += 1 };
    }
}

/// The hash key, or None while it is not written.
#[inline(always)]
pub(crate) fn hash_key() -> Option<&'static SipKey> {
    match PORIN_HTTPK_V1.get(0) {
        Some(k) if !k.is_zero() => Some(k),
        _ => None,
    }
}

/// The 403 answer: 80 bytes (a multiple of 4, for `bpf_csum_diff`).
const FORBIDDEN: &[u8; 80] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\nConnection: close\r\n\r\nDenied by Porin";

/// Room for the answer: Ethernet (14) + IPv6 (40) + TCP (20) + 403 (80),
/// rounded up so offsets masked to 63 stay inside.
const OUT: usize = 192;

/// Per-CPU scratch: too large for the 512-byte stack. Carried from one
/// stage program to the next (tail calls run on the same CPU, one after
/// the other, so the scratch is theirs meanwhile).
#[repr(C)]
pub struct Scratch {
    /// The payload bytes of one [`feed`] (the first [`CHUNK`]) or one
    /// [`skip_value`].
    pub(crate) buf: [u8; VCHUNK],
    /// The head being parsed (restored from `PORIN_HTTPH_V1` when it began
    /// in an earlier segment).
    pub(crate) req: Request,
    /// The connection's state as this packet moves it; written back to
    /// `PORIN_HTTPC_V1` only when the packet passes.
    pub(crate) conn: HttpConn,
    /// The connection's key.
    pub(crate) ckey: CtKey,
    /// The answer being built: Ethernet + IPv6 + TCP + 403 at most.
    pub(crate) out: [u8; OUT],
    /// IP + TCP headers of the packet.
    pub(crate) hdr: [u8; 64],
    /// The event's request path: its first bytes, zero past its end.
    pub path: [u64; HTTP_PATH_BYTES / 8],
    pub(crate) t: Tcp,
    pub(crate) dir: u32,
    /// Payload offset of the next byte to consume.
    pub(crate) off: u32,
    /// Tail calls into [`http_parse`] and [`http_finish`] so far.
    pub(crate) tails: u32,
    /// What [`http_finish`] does: [`finish::JUDGE`], [`finish::PASS`] or
    /// `finish::FAIL + HttpError`.
    pub(crate) finish: u32,
    /// 1 once `req` holds the current head's state (begun or restored in
    /// this packet).
    pub(crate) restored: u32,
    /// 1 when the connection was inside a head when the packet came.
    pub(crate) was_head: u32,
    /// The event to send with the verdict: [`EV_REQUEST`] for a request's
    /// (the connection's first, a denied one, or any in audit mode), or
    /// [`EV_AUDIT_DENIED`] for a request audit mode let through although no
    /// rule allows it; with these fields.
    pub(crate) ev: u32,
    pub(crate) ev_method: u32,
    pub(crate) ev_path_len: u32,
    pub(crate) ev_rule: u32,
    /// [`Next::Parse`]'s fields, through memory (see [`http_parse`]).
    pub(crate) step_begin: u32,
    pub(crate) step_n: u32,
    /// The event's kind: `flow::kind::HTTP` or `flow::kind::MQTT`.
    pub(crate) ev_kind: u32,
    /// What a denial answers the client ([`answer`]).
    pub(crate) answer: u32,
    /// Its length, written by [`put_answer`].
    pub(crate) answer_len: u32,
    /// The MQTT head being parsed (restored from `PORIN_MQTTH_V1` when it
    /// began in an earlier segment).
    pub(crate) mhead: porin_common::mqtt::MqttHead,
    /// The MQTT head just judged: packet type, verdict, body bytes.
    pub(crate) m_ptype: u32,
    pub(crate) m_allowed: u32,
    pub(crate) m_body: u32,
}

/// [`Scratch::answer`]: what [`deny`] sends the client before the RST
/// to the server.
pub mod answer {
    /// `HTTP/1.1 403` and FIN.
    pub const HTTP_403: u32 = 0;
    /// MQTT 3.1.1 CONNACK "not authorized" and FIN.
    pub const CONNACK_V311: u32 = 1;
    /// MQTT 5 CONNACK 0x87 and FIN.
    pub const CONNACK_V5: u32 = 2;
    /// MQTT 5 DISCONNECT 0x87 and FIN.
    pub const DISCONNECT_V5: u32 = 3;
    /// FIN alone (MQTT 3.1.1 has no error for a refused PUBLISH or
    /// SUBSCRIBE: the connection is closed).
    pub const FIN: u32 = 4;
}

/// [`Scratch::finish`] values.
pub(crate) mod finish {
    /// A head ended: judge it.
    pub const JUDGE: u32 = 0;
    /// Every byte consumed: write the state back and pass.
    pub const PASS: u32 = 1;
    /// Deny with `HttpError` `e`: `FAIL + e`.
    pub const FAIL: u32 = 16;
}

/// This CPU's scratch, or `Internal`.
#[inline(always)]
pub fn scratch() -> Result<&'static mut Scratch, DropReason> {
    match PORIN_HTTPB_V1.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs run with preemption disabled.
        Some(s) => Ok(unsafe { &mut *s }),
        None => Err(DropReason::Internal),
    }
}

#[map]
static PORIN_HTTPB_V1: PerCpuArray<Scratch> =
    PerCpuArray::with_max_entries(porin_common::maps::HTTP_SCRATCH.max_entries, 0);

/// The TCP facts of a packet, from its headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tcp {
    pub seq: u32,
    pub ack: u32,
    pub flags: u32,
    pub payload_off: u32,
    pub payload_len: u32,
}

/// Reads the TCP header of `flow`'s packet. IPv4 headers have no options
/// and IPv6 no extension headers here: the parser dropped those.
#[inline(always)]
pub fn tcp(ctx: &TcContext, family: u8, s: &mut Scratch) -> Result<Tcp, DropReason> {
    let (n, l3): (u32, u32) = if family == 4 { (40, 20) } else { (60, 40) };
    if n == 0 || n > 64 {
        return Err(DropReason::Internal);
    }
    // SAFETY: `hdr` has room for `n` bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            s.hdr.as_mut_ptr().cast(),
            n,
        )
    };
    if rc != 0 {
        return Err(DropReason::Malformed);
    }
    let b = &s.hdr;
    let ip_len = if family == 4 {
        u32::from(u16::from_be_bytes([b[2], b[3]]))
    } else {
        40 + u32::from(u16::from_be_bytes([b[4], b[5]]))
    };
    let t = l3 as usize;
    let seq = u32::from_be_bytes([b[t + 4], b[t + 5], b[t + 6], b[t + 7]]);
    let ack = u32::from_be_bytes([b[t + 8], b[t + 9], b[t + 10], b[t + 11]]);
    let doff = u32::from(b[t + 12] >> 4) * 4;
    let flags = u32::from(b[t + 13]);
    if doff < 20 || ip_len < l3 + doff {
        return Err(DropReason::Malformed);
    }
    Ok(Tcp {
        seq,
        ack,
        flags,
        payload_off: ETH_HLEN as u32 + l3 + doff,
        payload_len: ip_len - l3 - doff,
    })
}

/// Records a new HTTP-ruled connection allowed by the entry under `key`.
#[inline(always)]
pub fn open(
    flow: &Flow,
    ifindex: u32,
    key: &PolicyKey,
    t: &Tcp,
    s: &mut Scratch,
) -> Result<(), DropReason> {
    // SAFETY: read at once.
    let Some(set) = (unsafe { PORIN_HTTPS_V1.get(key) }) else {
        return Err(DropReason::Internal);
    };
    let ckey = conn_key(flow, ifindex);
    // Built in the scratch: the main programs' stack has no room for it.
    if t.flags & u32::from(tcp_flag::SYN | tcp_flag::ACK) == u32::from(tcp_flag::SYN) {
        // Conntrack lost the connection but the stream state is still
        // here: the same rule as a SYN on a known connection.
        // SAFETY: read at once.
        if let Some(old) = unsafe { PORIN_HTTPC_V1.get(&ckey) } {
            if !syn_may_restart(old, t.seq) {
                return Err(DropReason::HttpStream);
            }
        }
        reset_at_syn(&mut s.conn, t.seq, *set);
    } else {
        // Picked up mid-stream (state evicted, daemon restarted): where
        // requests start is unknown, so payload is denied.
        reset_lost(&mut s.conn, t.seq, *set);
    }
    PORIN_HTTPC_V1
        .insert(&ckey, &s.conn, 0)
        .map_err(|_| DropReason::Internal)
}

#[inline(always)]
fn reason(e: HttpError) -> DropReason {
    match e {
        HttpError::Malformed => DropReason::HttpMalformed,
        HttpError::Unsupported => DropReason::HttpUnsupported,
        HttpError::TooLarge => DropReason::HttpHeadTooLarge,
        HttpError::Stream => DropReason::HttpStream,
    }
}

/// [`HttpError`] from its `u32` (a [`Scratch::finish`] after `FAIL`).
#[inline(always)]
fn error_of(e: u32) -> HttpError {
    if e == HttpError::Malformed as u32 {
        HttpError::Malformed
    } else if e == HttpError::TooLarge as u32 {
        HttpError::TooLarge
    } else if e == HttpError::Stream as u32 {
        HttpError::Stream
    } else {
        HttpError::Unsupported
    }
}

/// Answers a denied request (enforce mode): a 403 + FIN cloned back to the
/// client, and the packet itself turned into a RST to the server. Returns
/// whether the packet may now go on (it is the RST); on any failure the
/// caller drops it.
#[inline(always)]
pub fn deny(
    ctx: &TcContext,
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    t: &Tcp,
    s: &mut Scratch,
) -> bool {
    let v4 = flow.family == 4;
    let l4: usize = if v4 { 34 } else { 54 };
    // SAFETY: `out` has room for the 14 bytes.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, s.out.as_mut_ptr().cast(), 14) } != 0
    {
        return false;
    }
    // The answer's bytes, and its length through memory: read back, it is
    // one unknown (bounded) length for the verifier, not one path per
    // answer through everything below.
    put_answer(&mut s.out, l4 + 20, s.answer, &mut s.answer_len);
    // SAFETY: a field of the scratch.
    let plen = (unsafe { core::ptr::read_volatile(&s.answer_len) } & 0x7c) as usize;
    if plen > FORBIDDEN.len() {
        return false;
    }
    let o = &mut s.out;
    // The answer: Ethernet addresses swapped, IP and TCP from the server.
    swap_macs(o);
    write_ip(o, flow, v4, true, 20 + plen);
    write_tcp(
        o,
        l4,
        flow.dport,
        flow.sport,
        t.ack,
        t.seq.wrapping_add(t.payload_len),
        tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN,
    );
    if !put_packet(ctx, o, v4, l4, 20 + plen) {
        return false;
    }
    let flags = match dir {
        // to_container: back up the veth, as if the server sent it.
        Direction::Ingress => BPF_F_INGRESS,
        // from_container: down the veth into the client.
        Direction::Egress => 0,
    };
    // SAFETY: the context's skb.
    if unsafe { bpf_clone_redirect(ctx.skb.skb, ifindex, flags) } != 0 {
        return false;
    }
    // The original: a RST from the client at the request's sequence
    // number, which the server accepts and closes on.
    swap_macs(o);
    write_ip(o, flow, v4, false, 20);
    write_tcp(o, l4, flow.sport, flow.dport, t.seq, 0, tcp_flag::RST);
    put_packet(ctx, o, v4, l4, 20)
}

/// Writes the [`answer`] `which` at `o[at..]` and its length to `len`.
#[inline(always)]
fn put_answer(o: &mut [u8; OUT], at: usize, which: u32, len: &mut u32) {
    use porin_common::mqtt::{CONNACK_V311, CONNACK_V5, DISCONNECT_V5};
    let n = if which == answer::HTTP_403 {
        put_bytes(o, at, FORBIDDEN)
    } else if which == answer::CONNACK_V311 {
        put_bytes(o, at, &CONNACK_V311)
    } else if which == answer::CONNACK_V5 {
        put_bytes(o, at, &CONNACK_V5)
    } else if which == answer::DISCONNECT_V5 {
        put_bytes(o, at, &DISCONNECT_V5)
    } else {
        0
    };
    // SAFETY: a plain `u32`.
    unsafe { core::ptr::write_volatile(len, n as u32) };
}

#[inline(always)]
fn put_bytes<const N: usize>(o: &mut [u8; OUT], at: usize, bytes: &[u8; N]) -> usize {
    let mut k = 0;
    while k < N {
        o[at + k] = bytes[k];
        k += 1;
    }
    N
}

/// Answers a packet of a revoked connection: a RST cloned back to its
/// sender at the sequence number the sender expects next (the packet's
/// acknowledgement; only when it carries one), then the packet itself
/// turned into a RST to its receiver at its own sequence number. Both ends
/// accept a RST at exactly the next expected sequence number, so both
/// close at once. The clone and the packet are RSTs without ACK: meeting
/// the revoked entry again on their way, they are made into themselves
/// and nothing is sent back (no loop). Returns whether the packet may now
/// go on (it is the RST); on any failure the caller drops it.
#[inline(always)]
fn reset_both(
    ctx: &TcContext,
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    t: &Tcp,
    s: &mut Scratch,
) -> bool {
    let o = &mut s.out;
    let v4 = flow.family == 4;
    let l4: usize = if v4 { 34 } else { 54 };
    // SAFETY: `o` has room for the 14 bytes.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, o.as_mut_ptr().cast(), 14) } != 0 {
        return false;
    }
    if t.flags & u32::from(tcp_flag::ACK) != 0 {
        swap_macs(o);
        write_ip(o, flow, v4, true, 20);
        write_tcp(o, l4, flow.dport, flow.sport, t.ack, 0, tcp_flag::RST);
        if !put_packet(ctx, o, v4, l4, 20) {
            return false;
        }
        let flags = match dir {
            Direction::Ingress => BPF_F_INGRESS,
            Direction::Egress => 0,
        };
        // SAFETY: the context's skb.
        if unsafe { bpf_clone_redirect(ctx.skb.skb, ifindex, flags) } != 0 {
            return false;
        }
        swap_macs(o);
    }
    write_ip(o, flow, v4, false, 20);
    write_tcp(o, l4, flow.sport, flow.dport, t.seq, 0, tcp_flag::RST);
    put_packet(ctx, o, v4, l4, 20)
}

/// Revocation stage for `from_container` (index `REVOKE` + 0).
#[classifier]
#[inline(always)]
pub fn revoked_from_container(ctx: TcContext) -> i32 {
    revoked(&ctx, Direction::Egress)
}

/// Revocation stage for `to_container` (index `REVOKE` + 1).
#[classifier]
#[inline(always)]
pub fn revoked_to_container(ctx: TcContext) -> i32 {
    revoked(&ctx, Direction::Ingress)
}

/// A packet of a connection the manager revoked: counted and evented as a
/// `ConnectionRevoked` drop; in enforce mode answered by [`reset_both`]
/// (audit mode: passes, counted).
#[inline(always)]
fn revoked(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: the context pointer the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(flow) = flow_of(ctx) else {
        return drop_internal(ctx, dir);
    };
    let Ok(s) = scratch() else {
        return drop_internal(ctx, dir);
    };
    let t = match tcp(ctx, flow.family, s) {
        Ok(t) => t,
        Err(r) => return settle(ctx, dir, Err(r)),
    };
    s.ev = 0;
    let result = Err(DropReason::ConnectionRevoked);
    let action = conclude(ctx, &flow, dir, ifindex, &t, s, result, false);
    if action == tc_action::SHOT && reset_both(ctx, &flow, dir, ifindex, &t, s) {
        return tc_action::OK;
    }
    action
}

/// Swaps the Ethernet destination and source of `o`.
#[inline(always)]
fn swap_macs(o: &mut [u8; OUT]) {
    let mut i = 0;
    while i < 6 {
        let a = o[i];
        o[i] = o[6 + i];
        o[6 + i] = a;
        i += 1;
    }
}

/// Makes the packet `o[..l4 + tcp_len]`: the IPv4 header checksum in `o`,
/// the bytes stored over the packet, then the TCP checksum in the form
/// the skb's checksum state needs ([`tcp_checksum`]).
#[inline(always)]
fn put_packet(ctx: &TcContext, o: &mut [u8; OUT], v4: bool, l4: usize, tcp_len: usize) -> bool {
    let Some(sums) = checksums(o, v4, l4, tcp_len) else {
        return false;
    };
    store(ctx, o, (l4 + tcp_len) as u32) && tcp_checksum(ctx, l4, sums)
}

/// Resizes the packet to `len` bytes and writes `o[..len]` over it.
#[inline(always)]
fn store(ctx: &TcContext, o: &[u8; OUT], len: u32) -> bool {
    if len == 0 || len > OUT as u32 {
        return false;
    }
    // SAFETY: the context's skb; `o` holds `len` bytes.
    unsafe {
        bpf_skb_change_tail(ctx.skb.skb, len, 0) == 0
            && bpf_skb_store_bytes(ctx.skb.skb, 0, o.as_ptr().cast(), len, 0) == 0
    }
}

/// Fills the IPv4 header checksum; returns the two parts of the TCP
/// checksum of the `tcp_len` bytes at `l4` (a multiple of 4, checksum field
/// zero): the pseudo-header's sum and the segment's, for [`tcp_checksum`].
#[inline(always)]
fn checksums(o: &mut [u8; OUT], v4: bool, l4: usize, tcp_len: usize) -> Option<(u32, u32)> {
    // Not zero-initialised: LLVM makes `[0u32; 10]` a call to `memset`, a
    // BPF-to-BPF call, and before 6.0 only x86-64's JIT allows those in a
    // program that also tail-calls (the HTTP entries do): arm64 5.10
    // refused the stage. Only the `plen` bytes written below are read.
    let mut pseudo = core::mem::MaybeUninit::<[u32; 10]>::uninit();
    let words = pseudo.as_mut_ptr().cast::<u32>();
    // SAFETY: index < 10, inside `pseudo`.
    let put = |i: usize, w: u32| unsafe { words.add(i).write_volatile(w) };
    let plen: u32;
    if v4 {
        let sum = csum(&o[14..34], 0)?;
        let c = fold(sum).to_ne_bytes();
        o[24] = c[0];
        o[25] = c[1];
        put(0, u32::from_ne_bytes([o[26], o[27], o[28], o[29]]));
        put(1, u32::from_ne_bytes([o[30], o[31], o[32], o[33]]));
        put(
            2,
            u32::from_ne_bytes([0, 6, (tcp_len >> 8) as u8, tcp_len as u8]),
        );
        plen = 12;
    } else {
        let mut w = 0;
        while w < 8 {
            let at = 22 + w * 4;
            put(
                w,
                u32::from_ne_bytes([o[at], o[at + 1], o[at + 2], o[at + 3]]),
            );
            w += 1;
        }
        put(
            8,
            u32::from_ne_bytes([0, 0, (tcp_len >> 8) as u8, tcp_len as u8]),
        );
        put(9, u32::from_ne_bytes([0, 0, 0, 6]));
        plen = 40;
    }
    // SAFETY: the first `plen` bytes of `pseudo` were written above.
    let p = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, words, plen, 0) };
    if p < 0 {
        return None;
    }
    let l4 = l4 & 63;
    // The header and an answer (a multiple of 4 bytes each, the 403 the
    // longest).
    if tcp_len < 20 || tcp_len > 20 + FORBIDDEN.len() || tcp_len % 4 != 0 {
        return None;
    }
    let segment = csum(&o[l4..l4 + tcp_len], 0)?;
    Some((p as u32, segment))
}

/// Writes the TCP checksum of the packet just stored (its field zero) from
/// its parts `(pseudo-header, segment)`, in the form the skb's checksum
/// state needs. The packet was a container's TCP segment, which on a veth
/// is usually `CHECKSUM_PARTIAL`: its field must hold only the
/// pseudo-header's sum, the device (or `skb_checksum_help` on the way out
/// of a port without offload, a real uplink's NIC) adds the segment's. A
/// whole checksum there came out corrupt wherever the sum was completed:
/// the RST never reset a server in the world. `bpf_l4_csum_replace` knows
/// the state: it adds the pseudo-header part (`BPF_F_PSEUDO_HDR`) in
/// either case, and the segment's only when the checksum is not partial.
#[inline(always)]
fn tcp_checksum(ctx: &TcContext, l4: usize, (pseudo, segment): (u32, u32)) -> bool {
    let at = ((l4 & 63) + 16) as u32;
    // SAFETY: the context's skb; the helper checks the offset.
    unsafe {
        bpf_l4_csum_replace(ctx.skb.skb, at, 0, u64::from(pseudo), BPF_F_PSEUDO_HDR) == 0
            && bpf_l4_csum_replace(ctx.skb.skb, at, 0, u64::from(segment), 0) == 0
    }
}

/// `bpf_csum_diff` over `bytes` (a multiple of 4 long) from `seed`.
#[inline(always)]
fn csum(bytes: &[u8], seed: u32) -> Option<u32> {
    let len = bytes.len() as u32;
    if len == 0 || len > OUT as u32 || len % 4 != 0 {
        return None;
    }
    // SAFETY: `bytes` holds `len` bytes; the helper only reads them.
    let r = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            bytes.as_ptr() as *mut u32,
            len,
            seed,
        )
    };
    (r >= 0).then_some(r as u32)
}

/// Folds a 32-bit ones' complement sum to the 16-bit checksum.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Writes the IP header at offset 14 of `o`: addresses swapped when
/// `reply`, `l4_len` bytes of TCP after it, checksum zero.
#[inline(always)]
fn write_ip(o: &mut [u8; OUT], flow: &Flow, v4: bool, reply: bool, l4_len: usize) {
    let (src, dst) = if reply {
        (&flow.daddr, &flow.saddr)
    } else {
        (&flow.saddr, &flow.daddr)
    };
    if v4 {
        o[12] = 0x08;
        o[13] = 0x00;
        let tot = (20 + l4_len) as u16;
        o[14] = 0x45;
        o[15] = 0;
        o[16] = (tot >> 8) as u8;
        o[17] = tot as u8;
        o[18] = 0;
        o[19] = 0;
        o[20] = 0x40; // DF
        o[21] = 0;
        o[22] = 64;
        o[23] = 6;
        o[24] = 0;
        o[25] = 0;
        let mut i = 0;
        while i < 4 {
            o[26 + i] = src[i];
            o[30 + i] = dst[i];
            i += 1;
        }
    } else {
        o[12] = 0x86;
        o[13] = 0xdd;
        let plen = l4_len as u16;
        o[14] = 0x60;
        o[15] = 0;
        o[16] = 0;
        o[17] = 0;
        o[18] = (plen >> 8) as u8;
        o[19] = plen as u8;
        o[20] = 6;
        o[21] = 64;
        let mut i = 0;
        while i < 16 {
            o[22 + i] = src[i];
            o[38 + i] = dst[i];
            i += 1;
        }
    }
}

/// Writes a 20-byte TCP header at `l4`, checksum zero.
#[inline(always)]
fn write_tcp(o: &mut [u8; OUT], l4: usize, sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) {
    let l4 = l4 & 63;
    let sp = sport.to_be_bytes();
    let dp = dport.to_be_bytes();
    let sq = seq.to_be_bytes();
    let ak = ack.to_be_bytes();
    o[l4] = sp[0];
    o[l4 + 1] = sp[1];
    o[l4 + 2] = dp[0];
    o[l4 + 3] = dp[1];
    let mut i = 0;
    while i < 4 {
        o[l4 + 4 + i] = sq[i];
        o[l4 + 8 + i] = ak[i];
        i += 1;
    }
    o[l4 + 12] = 5 << 4;
    o[l4 + 13] = flags;
    o[l4 + 14] = 0xff; // window 65535
    o[l4 + 15] = 0xff;
    o[l4 + 16] = 0;
    o[l4 + 17] = 0;
    o[l4 + 18] = 0;
    o[l4 + 19] = 0;
}

/// Stage program indexes in `PORIN_HTTPP_V1`.
pub mod stage_index {
    // 0 and 1: the entries, by `Direction` (`from_container`,
    // `to_container`).
    /// One chunk of the request parse, then itself or the finish.
    pub const PARSE: u32 = 2;
    /// Judge, record, answer.
    pub const FINISH: u32 = 3;
    /// A long run of a header value no rule reads, then itself or the
    /// parse.
    pub const VALUE: u32 = 4;
    /// A chunked body's framing and data, then the parse.
    pub const CHUNK: u32 = 5;
    /// A revoked connection's packet ([`revoke`]): 6 + `Direction`.
    pub const REVOKE: u32 = 6;
    /// One chunk of an MQTT head (`crate::mqtt::mqtt_parse`).
    pub const MQTT_PARSE: u32 = 8;
    /// Judge an MQTT head, record, answer (`crate::mqtt::mqtt_finish`).
    pub const MQTT_FINISH: u32 = 9;
}

/// Hands the packet to the HTTP stage entry for `dir` (a tail call, which
/// does not return). If that fails (the stage is not loaded), the packet
/// drops: `Internal`, fail closed.
#[inline(always)]
pub fn enter(ctx: &TcContext, dir: Direction) -> i32 {
    tail(ctx, dir as u32, dir)
}

/// Hands a packet of a revoked TCP connection (`conntrack::REVOKED`) to
/// the stage program that answers it with RSTs ([`revoked`]); if the tail
/// call fails, the packet drops (`Internal`).
#[inline(always)]
pub fn revoke(ctx: &TcContext, dir: Direction) -> i32 {
    tail(ctx, stage_index::REVOKE + dir as u32, dir)
}

/// Tail-calls stage program `index`; on failure drops (`Internal`).
#[inline(always)]
pub(crate) fn tail(ctx: &TcContext, index: u32, dir: Direction) -> i32 {
    // SAFETY: the context is the program's own.
    unsafe { PORIN_HTTPP_V1.tail_call(ctx, index) };
    drop_internal(ctx, dir)
}

/// HTTP stage entry for `from_container` (index 0).
#[classifier]
#[inline(always)]
pub fn http_from_container(ctx: TcContext) -> i32 {
    entry(&ctx, Direction::Egress)
}

/// HTTP stage entry for `to_container` (index 1).
#[classifier]
#[inline(always)]
pub fn http_to_container(ctx: TcContext) -> i32 {
    entry(&ctx, Direction::Ingress)
}

/// The packet's flow (the main program parsed it a moment ago).
#[inline(always)]
pub(crate) fn flow_of(ctx: &TcContext) -> Option<Flow> {
    match parse::headers(ctx) {
        Ok(Parsed::Flow(f)) => Some(f),
        _ => None,
    }
}

#[inline(always)]
pub(crate) fn dir_of(d: u32) -> Direction {
    if d == Direction::Ingress as u32 {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// Counts `result` (no endpoint mode: a pass or a drop, not audited) and
/// returns its action; for the stage's decisions that carry no event.
#[inline(always)]
pub(crate) fn settle(ctx: &TcContext, dir: Direction, result: Result<(), DropReason>) -> i32 {
    let verdict = decide::verdict(result, None);
    counters::record(&verdict, dir, ctx.len());
    verdict.action
}

#[inline(always)]
pub(crate) fn drop_internal(ctx: &TcContext, dir: Direction) -> i32 {
    settle(ctx, dir, Err(DropReason::Internal))
}

/// A packet of an HTTP-ruled connection going the client→server way
/// (`conntrack::HIT_HTTP`): [`plan`] decides from where it lies against
/// the stream consumed so far; new bytes are consumed chunk by chunk
/// ([`http_parse`]) and each complete head judged ([`http_finish`]).
#[inline(always)]
fn entry(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: the context pointer the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(flow) = flow_of(ctx) else {
        return drop_internal(ctx, dir);
    };
    let Ok(s) = scratch() else {
        return drop_internal(ctx, dir);
    };
    let t = match tcp(ctx, flow.family, s) {
        Ok(t) => t,
        Err(r) => return settle(ctx, dir, Err(r)),
    };
    s.ev = 0;
    s.ev_kind = u32::from(flow::kind::HTTP);
    s.answer = answer::HTTP_403;
    let ckey = conn_key(&flow, ifindex);
    let Some(conn) = PORIN_HTTPC_V1.get_ptr_mut(&ckey) else {
        return conclude(
            ctx,
            &flow,
            dir,
            ifindex,
            &t,
            s,
            Err(DropReason::HttpUnsupported),
            true,
        );
    };
    // SAFETY: the map value, valid for this run.
    let conn = unsafe { &mut *conn };
    if conn.set.depths & SET_MQTT != 0 {
        // An MQTT client is not sent an HTTP 403: a FIN ends it.
        s.answer = answer::FIN;
    }
    match plan(conn, t.seq, t.payload_len, t.flags as u8) {
        Plan::Pass => {}
        Plan::Restart => {
            let set = conn.set;
            reset_at_syn(conn, t.seq, set);
        }
        Plan::Drop => {
            // No answer: the client's TCP sends the bytes again in order,
            // or the connection stalls where the server lacks them.
            return conclude(
                ctx,
                &flow,
                dir,
                ifindex,
                &t,
                s,
                Err(DropReason::HttpStream),
                false,
            );
        }
        Plan::Deny(e) => {
            conn.state = conn_state::DENIED;
            return conclude(ctx, &flow, dir, ifindex, &t, s, Err(reason(e)), true);
        }
        Plan::Consume { skip } => {
            if hash_key().is_none() {
                // No key yet: nothing can be judged (fail closed).
                conn.state = conn_state::DENIED;
                return conclude(
                    ctx,
                    &flow,
                    dir,
                    ifindex,
                    &t,
                    s,
                    Err(DropReason::Internal),
                    true,
                );
            }
            copy(&mut s.conn, conn);
            copy(&mut s.ckey, &ckey);
            copy(&mut s.t, &t);
            s.dir = dir as u32;
            s.off = skip;
            s.tails = 0;
            s.restored = 0;
            s.was_head = u32::from(conn.state == conn_state::HEAD);
            if conn.set.depths & SET_MQTT != 0 {
                return tail(ctx, stage_index::MQTT_PARSE, dir);
            }
            return tail(ctx, stage_index::PARSE, dir);
        }
    }
    settle(ctx, dir, Ok(()))
}

/// Hands on to [`http_finish`] with `what` to do.
#[inline(always)]
fn to_finish(ctx: &TcContext, s: &mut Scratch, what: u32, dir: Direction) -> i32 {
    s.finish = what;
    s.tails += 1;
    tail(ctx, stage_index::FINISH, dir)
}

/// Consumes the segment's next bytes: skips body bytes, then parses at
/// most one [`CHUNK`] of a head; then itself again, or the finish (a head
/// ended, an error, or every byte consumed).
#[classifier]
#[inline(always)]
pub fn http_parse(ctx: TcContext) -> i32 {
    let Ok(s) = scratch() else {
        return tc_action::SHOT;
    };
    let dir = dir_of(s.dir);
    let len = s.t.payload_len;
    // A body ends at most once per step: skip it, then look again.
    let mut step = next(&mut s.conn, s.off, len, MAX_HEAD);
    if let Next::Skipped(n) = step {
        s.off += n;
        step = next(&mut s.conn, s.off, len, MAX_HEAD);
    }
    let (begin, n) = match step {
        Next::Parse { begin, n } => (begin, n),
        Next::Done => return to_finish(&ctx, s, finish::PASS, dir),
        Next::Chunk { .. } => {
            if s.tails >= MAX_TAILS {
                return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir);
            }
            s.tails += 1;
            return tail(&ctx, stage_index::CHUNK, dir);
        }
        // A skip ends the body or the segment: never twice in a row.
        Next::Skipped(_) => {
            return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir)
        }
        Next::TooLarge => {
            return to_finish(&ctx, s, finish::FAIL + HttpError::TooLarge as u32, dir)
        }
    };
    if s.tails >= MAX_TAILS {
        // More head bytes than one packet's parse budget.
        return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir);
    }
    // Through memory, volatile: the paths that led here ([`next`]'s body
    // and framing cases) then reach the head parse with the same state,
    // and the verifier walks it once rather than once per path.
    // SAFETY: fields of the scratch.
    let (begin, n) = unsafe {
        core::ptr::write_volatile(&mut s.step_begin, u32::from(begin));
        core::ptr::write_volatile(&mut s.step_n, n);
        (
            core::ptr::read_volatile(&s.step_begin) != 0,
            core::ptr::read_volatile(&s.step_n),
        )
    };
    if begin {
        let Some(key) = hash_key() else {
            return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir);
        };
        parse_begin(&mut s.req, key, s.conn.set.depths, s.conn.set.names);
        // The head's state is in the scratch from now on.
        s.restored = 1;
    } else if s.restored == 0 {
        // The head began in an earlier segment: its parser state is kept.
        // SAFETY: read at once.
        let Some(kept) = (unsafe { PORIN_HTTPH_V1.get(&s.ckey) }) else {
            // Evicted: where the head stands is unknown (fail closed).
            return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir);
        };
        copy(&mut s.req, kept);
        s.restored = 1;
    }
    if value_skippable(&s.req) {
        s.tails += 1;
        return tail(&ctx, stage_index::VALUE, dir);
    }
    // `next` never returns 0.
    let Some(n) = load_payload::<{ CHUNK as u32 }>(&ctx, s, n) else {
        return drop_internal(&ctx, dir);
    };
    match feed(&s.buf, n as usize, &mut s.req) {
        None => {
            parsed(&mut s.conn, n);
            s.off += n;
            s.tails += 1;
            tail(&ctx, stage_index::PARSE, dir)
        }
        Some(Ok(k)) => {
            parsed(&mut s.conn, k as u32);
            s.off += k as u32;
            to_finish(&ctx, s, finish::JUDGE, dir)
        }
        Some(Err(e)) => to_finish(&ctx, s, finish::FAIL + e as u32, dir),
    }
}

/// Skips up to [`VCHUNK`] bytes of a header value no rule reads
/// ([`skip_value`], entered from [`http_parse`] where
/// [`value_skippable`]); then itself while the value goes on, or the
/// parse.
#[classifier]
#[inline(always)]
pub fn http_value(ctx: TcContext) -> i32 {
    let Ok(s) = scratch() else {
        return tc_action::SHOT;
    };
    let dir = dir_of(s.dir);
    if s.tails >= MAX_TAILS {
        return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir);
    }
    let n = value_room(&s.conn, s.off, s.t.payload_len, MAX_HEAD);
    if n == 0 {
        // The head is at its limit: the parse says `TooLarge`.
        s.tails += 1;
        return tail(&ctx, stage_index::PARSE, dir);
    }
    let Some(n) = load_payload::<{ VCHUNK as u32 }>(&ctx, s, n) else {
        return drop_internal(&ctx, dir);
    };
    match skip_value(&s.buf, n as usize, &mut s.req) {
        Ok(k) => {
            parsed(&mut s.conn, k as u32);
            s.off += k as u32;
        }
        Err(e) => return to_finish(&ctx, s, finish::FAIL + e as u32, dir),
    }
    s.tails += 1;
    if s.off < s.t.payload_len && value_skippable(&s.req) {
        tail(&ctx, stage_index::VALUE, dir)
    } else {
        tail(&ctx, stage_index::PARSE, dir)
    }
}

/// A chunked body ([`chunk_feed`], entered from [`http_parse`]): up to
/// [`STEPS`] framing feeds and data skips, then the parse. Its own
/// program: the framing's small state machine next to the head parser
/// would multiply the paths the verifier walks.
#[classifier]
#[inline(always)]
pub fn http_chunk(ctx: TcContext) -> i32 {
    let Ok(s) = scratch() else {
        return tc_action::SHOT;
    };
    let dir = dir_of(s.dir);
    let len = s.t.payload_len;
    let mut steps = 0;
    while steps < STEPS {
        if s.off >= len || !in_chunked_body(s.conn.state) {
            break;
        }
        match next(&mut s.conn, s.off, len, MAX_HEAD) {
            Next::Skipped(n) => s.off += n,
            Next::Chunk { n } => {
                let Some(n) = load_payload::<{ LINE_CHUNK as u32 }>(&ctx, s, n) else {
                    return drop_internal(&ctx, dir);
                };
                match chunk_feed(&mut s.conn, &s.buf, n as usize) {
                    Ok(k) => s.off += k,
                    Err(e) => return to_finish(&ctx, s, finish::FAIL + e as u32, dir),
                }
            }
            _ => return to_finish(&ctx, s, finish::FAIL + HttpError::Unsupported as u32, dir),
        }
        steps += 1;
    }
    s.tails += 1;
    tail(&ctx, stage_index::PARSE, dir)
}

/// Loads the `n` payload bytes at the scratch's offset into `s.buf`, `n`
/// first brought into `1..=CAP` in a form the verifier sees (`CAP` a power
/// of two; callers pass `1..=CAP` already). Read back volatile first:
/// knowing `n`'s range, LLVM dropped the mask, and 5.10's verifier then
/// saw a length that might be 0. The length loaded, or None (the caller
/// drops: `Internal`).
#[inline(always)]
pub(crate) fn load_payload<const CAP: u32>(
    ctx: &TcContext,
    s: &mut Scratch,
    n: u32,
) -> Option<u32> {
    const { assert!(CAP.is_power_of_two() && CAP as usize <= VCHUNK) };
    // SAFETY: a local.
    let n = unsafe { core::ptr::read_volatile(&n) };
    let n = ((n.wrapping_sub(1)) & (CAP - 1)) + 1;
    // SAFETY: `buf` has room for `n <= CAP <= VCHUNK` bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            s.t.payload_off + s.off,
            s.buf.as_mut_ptr().cast(),
            n,
        )
    };
    (rc == 0).then_some(n)
}

/// `*dst = *src`, word by word and volatile: a struct copy may become a
/// `memcpy` call, a BPF-to-BPF call that 5.10's arm64 JIT refuses next to
/// tail calls. For the stage's plain-data structs (a multiple of 4 bytes
/// long, 4-aligned).
#[inline(always)]
pub(crate) fn copy<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let words = core::mem::size_of::<T>() / 4;
    let d = (dst as *mut T).cast::<u32>();
    let s = (src as *const T).cast::<u32>();
    let mut w = 0;
    while w < words {
        // SAFETY: both are whole `T`s, 4-aligned, `words` words long.
        unsafe { d.add(w).write_volatile(s.add(w).read_volatile()) };
        w += 1;
    }
}

/// Judges a complete head (and goes on with the segment's next bytes), or
/// concludes the packet: writes the connection's state back and passes,
/// or denies.
#[classifier]
#[inline(always)]
pub fn http_finish(ctx: TcContext) -> i32 {
    let (s, f) = match finish_start(&ctx) {
        Ok(v) => v,
        Err(action) => return action,
    };
    let Finish {
        dir,
        ifindex,
        flow,
        t,
        conn,
    } = f;
    let what = s.finish;
    let result = if what == finish::PASS {
        // Every byte consumed: the packet's view becomes the connection's.
        copy(conn, &s.conn);
        if s.conn.state == conn_state::HEAD {
            if PORIN_HTTPH_V1.insert(&s.ckey, &s.req, 0).is_err() {
                conn.state = conn_state::DENIED;
                return conclude(
                    &ctx,
                    &flow,
                    dir,
                    ifindex,
                    &t,
                    s,
                    Err(DropReason::Internal),
                    true,
                );
            }
        } else if s.was_head != 0 {
            let _ = PORIN_HTTPH_V1.remove(&s.ckey);
        }
        Ok(())
    } else if what == finish::JUDGE {
        if let Err(e) = framing(&mut s.req) {
            record_request(s, 0);
            conn.state = conn_state::DENIED;
            return conclude(&ctx, &flow, dir, ifindex, &t, s, Err(reason(e)), true);
        }
        // SAFETY: values read at once.
        let rule = judge(&s.req, &s.conn.set, |k| unsafe { PORIN_HTTPR_V1.get(k) });
        let audit = identity::endpoint(ifindex).is_some_and(|e| e.mode == mode::AUDIT);
        if rule == 0 && !audit {
            record_request(s, 0);
            Err(DropReason::HttpDenied)
        } else {
            if rule == 0 {
                // Audit mode: the request goes through, recorded as one
                // enforce mode would refuse, and the connection goes on
                // being judged, so every later request is seen too.
                if s.ev != EV_AUDIT_DENIED {
                    record_request(s, 0);
                    s.ev = EV_AUDIT_DENIED;
                }
            } else if (s.conn.requests == 0 || audit) && s.ev != EV_AUDIT_DENIED {
                // The connection's first request goes out as an event, and
                // in audit mode every one (what `porin policy suggest`
                // learns from); later ones in enforce mode are only counted.
                record_request(s, rule);
            }
            if rule != 0 {
                count_allowed(rule);
            }
            allowed(&mut s.conn, &s.req);
            // The segment's next bytes: a body, or a pipelined request.
            s.tails += 1;
            return tail(&ctx, stage_index::PARSE, dir);
        }
    } else {
        let e = error_of(what.wrapping_sub(finish::FAIL));
        if e == HttpError::Malformed || e == HttpError::Unsupported {
            record_request(s, 0);
        }
        Err(reason(e))
    };
    if result.is_err() {
        conn.state = conn_state::DENIED;
    }
    conclude(&ctx, &flow, dir, ifindex, &t, s, result, true)
}

/// What a finish program ([`http_finish`], `mqtt::mqtt_finish`) starts
/// from: the packet's direction, device, flow and TCP facts, and its
/// connection's stream state.
pub(crate) struct Finish {
    pub dir: Direction,
    pub ifindex: u32,
    pub flow: Flow,
    pub t: Tcp,
    pub conn: &'static mut HttpConn,
}

/// The scratch and [`Finish`], or the action to return (the packet
/// drops: `Internal`).
#[inline(always)]
pub(crate) fn finish_start(ctx: &TcContext) -> Result<(&'static mut Scratch, Finish), i32> {
    let Ok(s) = scratch() else {
        return Err(tc_action::SHOT);
    };
    let dir = dir_of(s.dir);
    // SAFETY: the context pointer the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(flow) = flow_of(ctx) else {
        return Err(drop_internal(ctx, dir));
    };
    // Field by field, volatile: a zero-filled or copied struct became a
    // `memset` / `memcpy` call (see [`copy`]).
    // SAFETY: fields of the scratch.
    let t = unsafe {
        Tcp {
            seq: core::ptr::read_volatile(&s.t.seq),
            ack: core::ptr::read_volatile(&s.t.ack),
            flags: core::ptr::read_volatile(&s.t.flags),
            payload_off: core::ptr::read_volatile(&s.t.payload_off),
            payload_len: core::ptr::read_volatile(&s.t.payload_len),
        }
    };
    let Some(conn) = PORIN_HTTPC_V1.get_ptr_mut(&s.ckey) else {
        return Err(drop_internal(ctx, dir));
    };
    // SAFETY: the map value, valid for this run.
    let conn = unsafe { &mut *conn };
    Ok((
        s,
        Finish {
            dir,
            ifindex,
            flow,
            t,
            conn,
        },
    ))
}

/// [`Scratch::ev`]: a request recorded.
pub(crate) const EV_REQUEST: u32 = 1;
/// [`Scratch::ev`]: a request no rule allows, passed by audit mode; it wins
/// over later requests of the same packet (one event per packet), so the
/// would-be denial is counted and evented.
pub(crate) const EV_AUDIT_DENIED: u32 = 2;

/// Makes the request in `s.req` the packet's event (`rule` 0: denied).
#[inline(always)]
fn record_request(s: &mut Scratch, rule: u32) {
    let mut w = 0;
    while w < HTTP_PATH_BYTES / 8 {
        s.path[w] = s.req.path_bytes[w];
        w += 1;
    }
    let len = s.req.path_len as u32;
    s.ev = EV_REQUEST;
    s.ev_method = u32::from(s.req.method);
    s.ev_path_len = if len > HTTP_PATH_BYTES as u32 {
        HTTP_PATH_BYTES as u32
    } else {
        len
    };
    s.ev_rule = rule;
}

/// Counts, records and (in enforce mode, for a denial with `answer`)
/// answers a decision on a client→server packet. A request recorded in
/// the scratch ([`record_request`]) goes out as an HTTP event; a denial
/// without one as a drop event; a pass without one has no event.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conclude(
    ctx: &TcContext,
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    t: &Tcp,
    s: &mut Scratch,
    result: Result<(), DropReason>,
    answer: bool,
) -> i32 {
    if result.is_ok() && s.ev == 0 {
        return settle(ctx, dir, result);
    }
    let result = if result.is_ok() && s.ev == EV_AUDIT_DENIED {
        Err(if s.ev_kind == u32::from(flow::kind::MQTT) {
            DropReason::MqttDenied
        } else {
            DropReason::HttpDenied
        })
    } else {
        result
    };
    // A decision worth an event: the endpoint's mode and both identities.
    let endpoint = identity::endpoint(ifindex);
    let mut verdict = decide::verdict(result, endpoint.map(|ep| ep.mode));
    counters::record(&verdict, dir, ctx.len());
    let subject = endpoint.map_or(0, |e| e.identity);
    let peer = identity::of_address(peer_addr(flow, dir), flow.family);
    let kind_verdict = events::flow_verdict(&verdict);
    let why = verdict.drop.map_or(0, |r| r as u8);
    if s.ev != 0 {
        let l7 = events::L7 {
            method: s.ev_method as u8,
            path_len: s.ev_path_len as u16,
            path: &s.path,
        };
        events::emit_l7(
            ctx,
            s.ev_kind as u8,
            kind_verdict,
            why,
            dir,
            flow,
            ifindex,
            subject,
            peer,
            ctx.len(),
            s.ev_rule,
            &l7,
        );
    } else {
        events::emit(
            ctx,
            flow::kind::DROP,
            kind_verdict,
            why,
            dir,
            Some(flow),
            ifindex,
            subject,
            peer,
            ctx.len(),
            0,
            t.flags as u8,
        );
    }
    if answer && verdict.action == tc_action::SHOT && deny(ctx, flow, dir, ifindex, t, s) {
        // The packet is now a RST to the server; the client got a 403.
        verdict.action = tc_action::OK;
    }
    verdict.action
}
