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
    datapath::{tc_action, CtKey, Direction, DropReason, PolicyKey},
    decide::{self, peer_addr},
    flow,
    flow::HTTP_PATH_BYTES,
    http::{
        advance, conn_at_syn, conn_key, conn_state, judge, max_entries, parse_begin, parse_range,
        segment, HttpConn, HttpError, HttpKey, HttpSet, HttpValue, Request, Segment, CHUNK, WINDOW,
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
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

#[map]
static PORIN_HTTPS_V1: HashMap<PolicyKey, HttpSet> =
    HashMap::with_max_entries(max_entries::SETS, BPF_F_NO_PREALLOC);

#[map]
static PORIN_HTTPR_V1: HashMap<HttpKey, HttpValue> =
    HashMap::with_max_entries(max_entries::RULES, BPF_F_NO_PREALLOC);

#[map]
static PORIN_HTTPC_V1: LruHashMap<CtKey, HttpConn> =
    LruHashMap::with_max_entries(max_entries::CONNS, 0);

/// The SipHash key of the rule hashes (`porin_common::sip`): the
/// manager writes it before any rule; all zeroes (not written) denies
/// every request (`Internal`).
#[map]
static PORIN_HTTPK_V1: Array<SipKey> =
    Array::with_max_entries(porin_common::maps::HTTP_KEY.max_entries, 0);

/// The hash key, or None while it is not written.
#[inline(always)]
fn hash_key() -> Option<&'static SipKey> {
    match PORIN_HTTPK_V1.get(0) {
        Some(k) if !k.is_zero() => Some(k),
        _ => None,
    }
}

/// Bytes of the payload copy: the window plus room to read the path's
/// event words past its end without a bounds check per byte.
const COPY: usize = WINDOW + HTTP_PATH_BYTES;

/// The 403 answer: 80 bytes (a multiple of 4, for `bpf_csum_diff`).
const FORBIDDEN: &[u8; 80] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\nConnection: close\r\n\r\nDenied by Porin";

/// Room for the answer: Ethernet (14) + IPv6 (40) + TCP (20) + 403 (80),
/// rounded up so offsets masked to 63 stay inside.
const OUT: usize = 192;

/// Per-CPU scratch: too large for the 512-byte stack.
#[repr(C)]
pub struct Scratch {
    buf: [u8; COPY],
    req: Request,
    /// The answer being built: Ethernet + IPv6 + TCP + 403 at most.
    out: [u8; OUT],
    /// IP + TCP headers of the packet.
    hdr: [u8; 64],
    /// The request path's first bytes for the event, zero past its end.
    pub path: [u64; HTTP_PATH_BYTES / 8],
    /// Carried from one stage program to the next (tail calls run on the
    /// same CPU, one after the other, so the scratch is theirs meanwhile).
    t: Tcp,
    dir: u32,
    /// Payload bytes copied into `buf`.
    n: u32,
    /// Next chunk to parse.
    chunk: u32,
    /// 0: parsed; 1 + `HttpError` as u32: failed.
    parsed: u32,
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
pub fn open(flow: &Flow, ifindex: u32, key: &PolicyKey, t: &Tcp) -> Result<(), DropReason> {
    // SAFETY: read at once.
    let Some(set) = (unsafe { PORIN_HTTPS_V1.get(key) }) else {
        return Err(DropReason::Internal);
    };
    let conn = if t.flags & u32::from(TCP_SYN | TCP_ACK) == u32::from(TCP_SYN) {
        conn_at_syn(t.seq, *set)
    } else {
        // Picked up mid-stream (state evicted, daemon restarted): where
        // requests start is unknown, so payload is denied.
        HttpConn {
            next_seq: 0,
            req_start: 0,
            set: *set,
            state: 0,
        }
    };
    PORIN_HTTPC_V1
        .insert(&conn_key(flow, ifindex), &conn, 0)
        .map_err(|_| DropReason::Internal)
}

#[inline(always)]
fn reason(e: HttpError) -> DropReason {
    match e {
        HttpError::Malformed => DropReason::HttpMalformed,
        HttpError::Unsupported => DropReason::HttpUnsupported,
    }
}

/// The path's first bytes as event words, zero past its end.
#[inline(always)]
fn path_words(buf: &[u8; COPY], req: &Request, path: &mut [u64; HTTP_PATH_BYTES / 8]) -> u16 {
    let start = (req.path_start as usize) & (WINDOW - 1);
    let len = if req.path_len as usize > HTTP_PATH_BYTES {
        HTTP_PATH_BYTES
    } else {
        req.path_len as usize
    };
    let mut w = 0;
    while w < HTTP_PATH_BYTES / 8 {
        let at = start + w * 8;
        // SAFETY: `start < WINDOW`, so `at + 8 <= WINDOW + 64 = COPY`.
        let word = unsafe { (buf.as_ptr().add(at) as *const u64).read_unaligned() };
        let have = len.saturating_sub(w * 8);
        path[w] = if have >= 8 {
            word
        } else if have == 0 {
            0
        } else {
            word & ((1u64 << (have * 8)) - 1)
        };
        w += 1;
    }
    len as u16
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
    let o = &mut s.out;
    let v4 = flow.family == 4;
    let l4: usize = if v4 { 34 } else { 54 };
    // SAFETY: `o` has room for the 14 bytes.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, o.as_mut_ptr().cast(), 14) } != 0 {
        return false;
    }
    // The answer: Ethernet addresses swapped, IP and TCP from the server.
    swap_macs(o);
    write_ip(o, flow, v4, true, 20 + FORBIDDEN.len());
    write_tcp(
        o,
        l4,
        flow.dport,
        flow.sport,
        t.ack,
        t.seq.wrapping_add(t.payload_len),
        TCP_ACK | TCP_PSH | TCP_FIN,
    );
    let mut k = 0;
    while k < FORBIDDEN.len() {
        o[l4 + 20 + k] = FORBIDDEN[k];
        k += 1;
    }
    if !put_packet(ctx, o, v4, l4, 20 + FORBIDDEN.len()) {
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
    write_tcp(o, l4, flow.sport, flow.dport, t.seq, 0, TCP_RST);
    put_packet(ctx, o, v4, l4, 20)
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
    if tcp_len != 20 && tcp_len != 20 + FORBIDDEN.len() {
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
}

/// Hands the packet to the HTTP stage entry for `dir` (a tail call, which
/// does not return). If that fails (the stage is not loaded), the packet
/// drops: `Internal`, fail closed.
#[inline(always)]
pub fn enter(ctx: &TcContext, dir: Direction) -> i32 {
    tail(ctx, dir as u32, dir)
}

/// Tail-calls stage program `index`; on failure drops (`Internal`).
#[inline(always)]
fn tail(ctx: &TcContext, index: u32, dir: Direction) -> i32 {
    // SAFETY: the context is the program's own.
    unsafe { PORIN_HTTPP_V1.tail_call(ctx, index) };
    drop_internal(ctx, dir)
}

/// HTTP stage entry for `from_container` (index 0).
#[classifier]
pub fn http_from_container(ctx: TcContext) -> i32 {
    entry(&ctx, Direction::Egress)
}

/// HTTP stage entry for `to_container` (index 1).
#[classifier]
pub fn http_to_container(ctx: TcContext) -> i32 {
    entry(&ctx, Direction::Ingress)
}

/// The packet's flow (the main program parsed it a moment ago).
#[inline(always)]
fn flow_of(ctx: &TcContext) -> Option<Flow> {
    match parse::headers(ctx) {
        Ok(Parsed::Flow(f)) => Some(f),
        _ => None,
    }
}

#[inline(always)]
fn dir_of(d: u32) -> Direction {
    if d == Direction::Ingress as u32 {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

/// Counts `result` (no endpoint mode: a pass or a drop, not audited) and
/// returns its action; for the stage's decisions that carry no event.
#[inline(always)]
fn settle(ctx: &TcContext, dir: Direction, result: Result<(), DropReason>) -> i32 {
    let verdict = decide::verdict(result, None);
    counters::record(&verdict, dir, ctx.len());
    verdict.action
}

#[inline(always)]
fn drop_internal(ctx: &TcContext, dir: Direction) -> i32 {
    settle(ctx, dir, Err(DropReason::Internal))
}

/// A packet of an HTTP-ruled connection going the client→server way
/// (`conntrack::HIT_HTTP`): where it lies against the next request's start
/// decides; packets without payload pass as conntrack hits; a request is
/// copied and parsed chunk by chunk ([`http_parse`]), then judged
/// ([`http_finish`]).
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
    let Some(conn) = PORIN_HTTPC_V1.get_ptr_mut(&conn_key(&flow, ifindex)) else {
        return conclude(
            ctx,
            &flow,
            dir,
            ifindex,
            &t,
            s,
            Err(DropReason::HttpUnsupported),
            None,
        );
    };
    // SAFETY: the map value, valid for this run.
    let conn = unsafe { &mut *conn };
    if t.flags & u32::from(TCP_SYN | TCP_ACK) == u32::from(TCP_SYN) {
        // A new connection on the same tuple (port reuse): start over.
        *conn = conn_at_syn(t.seq, conn.set);
    } else {
        match segment(conn, t.seq, t.payload_len) {
            Segment::Pass => {}
            Segment::Deny(e) => {
                conn.state = conn_state::DENIED;
                return conclude(ctx, &flow, dir, ifindex, &t, s, Err(reason(e)), None);
            }
            Segment::Request => {
                let Some(key) = hash_key() else {
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
                        None,
                    );
                };
                let n = if t.payload_len > WINDOW as u32 {
                    WINDOW as u32
                } else {
                    t.payload_len
                };
                // 1..=WINDOW in a form the verifier sees (a plain `n == 0`
                // test is optimised away: `segment` excluded empty
                // payloads), equal to `n` for every n in 1..=WINDOW.
                let n = (n.wrapping_sub(1) & (WINDOW as u32 - 1)) + 1;
                // SAFETY: `buf` has room for `n <= WINDOW` bytes.
                let rc = unsafe {
                    bpf_skb_load_bytes(
                        ctx.skb.skb as *const _,
                        t.payload_off,
                        s.buf.as_mut_ptr().cast(),
                        n,
                    )
                };
                if rc != 0 {
                    return drop_internal(ctx, dir);
                }
                parse_begin(&mut s.req, key, conn.set.depths);
                s.t = t;
                s.dir = dir as u32;
                s.n = n;
                s.chunk = 0;
                return tail(ctx, stage_index::PARSE, dir);
            }
        }
    }
    settle(ctx, dir, Ok(()))
}

/// One [`CHUNK`] of the request head; then itself again, or the finish.
#[classifier]
pub fn http_parse(ctx: TcContext) -> i32 {
    let Ok(s) = scratch() else {
        return tc_action::SHOT;
    };
    let dir = dir_of(s.dir);
    let k = s.chunk;
    let from = (k as usize * CHUNK) & (WINDOW - 1);
    let done = parse_range(&s.buf, s.n as usize, &mut s.req, from, CHUNK);
    let next = k + 1;
    match done {
        Some(Ok(())) => s.parsed = 0,
        Some(Err(e)) => s.parsed = 1 + e as u32,
        None if (next as usize) * CHUNK < WINDOW && (next as usize) * CHUNK < s.n as usize => {
            s.chunk = next;
            return tail(&ctx, stage_index::PARSE, dir);
        }
        // Out of bytes (or of window) before the head ended.
        None => s.parsed = 1 + HttpError::Unsupported as u32,
    }
    tail(&ctx, stage_index::FINISH, dir)
}

/// Judges the parsed request, moves the connection on, records and
/// answers.
#[classifier]
pub fn http_finish(ctx: TcContext) -> i32 {
    let Ok(s) = scratch() else {
        return tc_action::SHOT;
    };
    let dir = dir_of(s.dir);
    // SAFETY: the context pointer the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(flow) = flow_of(&ctx) else {
        return drop_internal(&ctx, dir);
    };
    let t = s.t;
    let Some(conn) = PORIN_HTTPC_V1.get_ptr_mut(&conn_key(&flow, ifindex)) else {
        return drop_internal(&ctx, dir);
    };
    // SAFETY: the map value, valid for this run.
    let conn = unsafe { &mut *conn };
    let result = if s.parsed != 0 {
        conn.state = conn_state::DENIED;
        let e = if s.parsed == 1 + HttpError::Malformed as u32 {
            HttpError::Malformed
        } else {
            HttpError::Unsupported
        };
        Err(reason(e))
    } else {
        // SAFETY: values read at once.
        let rule = judge(&s.req, &conn.set, |k| unsafe { PORIN_HTTPR_V1.get(k) });
        if rule == 0 {
            conn.state = conn_state::DENIED;
            Err(DropReason::HttpDenied)
        } else if let Err(e) = advance(conn, t.seq, t.payload_len, &s.req) {
            conn.state = conn_state::DENIED;
            Err(reason(e))
        } else {
            s.parsed = 0;
            Ok(rule)
        }
    };
    let method = s.req.method;
    let path_len = path_words(&s.buf, &s.req, &mut s.path);
    let rule = match result {
        Ok(r) => r,
        Err(_) => 0,
    };
    conclude(
        &ctx,
        &flow,
        dir,
        ifindex,
        &t,
        s,
        result.map(|_| ()),
        Some((method, path_len, rule)),
    )
}

/// Counts, records and (in enforce mode, for a denial) answers a decision
/// on a client→server packet; `request` is (method, path length, rule) of
/// a parsed request (an HTTP event), `None` for other decisions.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conclude(
    ctx: &TcContext,
    flow: &Flow,
    dir: Direction,
    ifindex: u32,
    t: &Tcp,
    s: &mut Scratch,
    result: Result<(), DropReason>,
    request: Option<(u8, u16, u32)>,
) -> i32 {
    // A decision worth an event: the endpoint's mode and both identities.
    let endpoint = identity::endpoint(ifindex);
    let mut verdict = decide::verdict(result, endpoint.map(|ep| ep.mode));
    counters::record(&verdict, dir, ctx.len());
    let subject = endpoint.map_or(0, |e| e.identity);
    let peer = identity::of_address(peer_addr(flow, dir), flow.family);
    let kind_verdict = events::flow_verdict(&verdict);
    let why = verdict.drop.map_or(0, |r| r as u8);
    match request {
        Some((method, path_len, rule)) => {
            let l7 = events::L7 {
                method,
                path_len,
                path: &s.path,
            };
            events::emit_http(
                ctx,
                kind_verdict,
                why,
                dir,
                flow,
                ifindex,
                subject,
                peer,
                ctx.len(),
                rule,
                &l7,
            );
        }
        None => events::emit(
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
        ),
    }
    if verdict.action == tc_action::SHOT && deny(ctx, flow, dir, ifindex, t, s) {
        // The packet is now a RST to the server; the client got a 403.
        verdict.action = tc_action::OK;
    }
    verdict.action
}
