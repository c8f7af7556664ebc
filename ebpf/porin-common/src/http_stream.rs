//! HTTP rules judged on the byte stream the server reads: the
//! per-connection bookkeeping of the client→server stream, pure and
//! `no_std`. The kernel's HTTP stage (the eBPF crate's `http.rs`) runs
//! these functions across its tail calls; [`segment`] composes them the
//! same way for the host tests and the model test (`tests/http_stream.rs`),
//! so what is tested is what runs.
//!
//! # The model
//! Porin consumes the stream in order, as the server's socket will read
//! it. `next_seq` is the first byte not consumed yet; the state says what
//! it is: the first byte of a head ([`conn_state::START`]), a byte inside
//! a head whose parser state is kept between segments
//! ([`conn_state::HEAD`], `PORIN_HTTPH_V1`), a body byte
//! ([`conn_state::BODY`], `body_left` to go, by `Content-Length`), or a
//! byte of a chunked body: its framing, read like head bytes
//! ([`chunk_feed`]), or a chunk's data, skipped like a body
//! ([`conn_state::CHUNK_DATA`]).
//!
//! - A segment that starts at `next_seq` is consumed: body bytes are
//!   skipped by count, head bytes parsed, every head judged when its blank
//!   line arrives, pipelined requests included. A segment that ends inside
//!   a head passes: an HTTP/1.x server acts on no request before its head
//!   is complete, and the one that completes it is judged. A denial turns
//!   the segment into a RST (the server drops the partial head with the
//!   connection) and answers the client 403.
//! - Bytes before `next_seq` were consumed already. Where the server has
//!   them, it keeps its first copy and discards a retransmission; where it
//!   dropped them (a bad checksum, out of window, PAWS: all a raw-socket
//!   sender can arrange), the retransmission's bytes are what it reads.
//!   A retransmission of body bytes passes (they are body bytes whatever
//!   they hold: the head fixed their count). One that touches head bytes
//!   is dropped without an answer: if the server has the bytes, the
//!   client's copy was redundant; if not, the connection stalls, and a
//!   request Porin did not judge is never complete.
//! - Bytes after `next_seq` (out of order) pass only inside the current
//!   body; others are dropped, and TCP sends them again in order.
//! - Urgent data: Linux takes the byte at the urgent pointer out of the
//!   stream (without `SO_OOBINLINE`), so the two views would part. Any
//!   segment with URG on an HTTP-ruled connection is denied.
//! - A SYN with data (TCP Fast Open) is denied; a SYN without starts the
//!   connection over (a new connection on the same 4-tuple).

use crate::http::{
    feed, framing, head_pos, parse_begin, skip_value, value_skippable, HttpError, HttpSet, Request,
    CHUNK, VCHUNK,
};

/// Tail calls one packet may make from the kernel stage's parse and finish
/// programs before a parse is refused (see [`segment`], which counts them
/// the same way). The kernel allows 32 per packet (x86-64's JIT before
/// 5.19; 33 elsewhere), counting the main program's into the stage's entry
/// and the entry's into the parse; the chain after a refused parse takes
/// at most 4 more. Each tail call parses one [`CHUNK`] of a head (64
/// bytes), or skips one [`VCHUNK`] of a header value no rule reads (1 KiB:
/// cookies, tokens); a segment with more work than that is denied
/// (`HttpUnsupported`). So one packet carries about 1.6 KiB of headers
/// the rules may read, with up to about 20 KiB of other values between
/// them.
pub const MAX_TAILS: u32 = 26;

/// `PORIN_HTTPC_V1` value: one HTTP-ruled connection's client→server
/// stream.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HttpConn {
    /// The first stream byte not consumed yet.
    pub next_seq: u32,
    /// Consumed bytes in `[body_from, next_seq)` are body bytes (the body
    /// being skipped, or the last request's); equal to `next_seq` after
    /// head bytes.
    pub body_from: u32,
    /// [`conn_state::BODY`]: body bytes still to come.
    pub body_left: u32,
    /// [`conn_state::HEAD`]: head bytes consumed so far.
    pub head_len: u32,
    /// The rule set ([`HttpSet`]) recorded when the connection was allowed.
    pub set: HttpSet,
    /// [`conn_state`] value.
    pub state: u32,
    /// Requests (MQTT: packets) allowed on the connection so far.
    pub requests: u32,
    /// MQTT-ruled connections: the protocol level of the CONNECT (0
    /// before it).
    pub mqtt_level: u32,
    /// 1 when [`HttpConn::mqtt_client`] is known (a non-empty client id).
    pub mqtt_has_client: u32,
    /// The keyed hash of the CONNECT's client id (`{client_id}` levels).
    pub mqtt_client: u64,
}

/// What the byte at [`HttpConn::next_seq`] is.
pub mod conn_state {
    /// The first byte of a request head.
    pub const START: u32 = 1;
    /// A request was denied: every later payload segment is denied too.
    pub const DENIED: u32 = 2;
    /// Inside a head; the parser's state is kept (`PORIN_HTTPH_V1`).
    pub const HEAD: u32 = 3;
    /// A body byte ([`super::HttpConn::body_left`] to go).
    pub const BODY: u32 = 4;
    /// A chunked body's framing, byte by byte ([`super::chunk_feed`]):
    /// the chunk-size line (hex digits so far in `head_len`, the size in
    /// `body_left`)...
    pub const CHUNK_SIZE: u32 = 5;
    /// ... its LF ...
    pub const CHUNK_SIZE_LF: u32 = 6;
    /// ... the chunk's data (`body_left` bytes to go, skipped like a
    /// body) ...
    pub const CHUNK_DATA: u32 = 7;
    /// ... the CR and LF after the data ...
    pub const CHUNK_DATA_CR: u32 = 8;
    pub const CHUNK_DATA_LF: u32 = 9;
    /// ... and after the last chunk (size 0), the CR and LF ending the
    /// body (a trailer field there is refused).
    pub const CHUNK_END: u32 = 10;
    pub const CHUNK_END_LF: u32 = 11;

    /// A state of a chunked body's framing lines.
    #[inline(always)]
    pub fn is_chunk_line(state: u32) -> bool {
        (CHUNK_SIZE..=CHUNK_END_LF).contains(&state) && state != CHUNK_DATA
    }
}

/// Most framing bytes of a chunked body one [`chunk_feed`] reads.
pub const LINE_CHUNK: usize = 16;

/// Hex digits a chunk size may have (at most 256 MiB - 1 per chunk).
pub const CHUNK_DIGITS: u32 = 7;

/// Steps ([`next`]: chunk data skipped, framing bytes fed) one run of
/// the kernel's chunk program takes before it hands back to the parse.
pub const STEPS: u32 = 8;

/// Inside a chunked body: its framing or a chunk's data.
#[inline(always)]
pub fn in_chunked_body(state: u32) -> bool {
    conn_state::is_chunk_line(state) || state == conn_state::CHUNK_DATA
}

/// TCP flags the stream looks at and the stage writes (the 403 and the RST).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// The state of a connection whose SYN (sequence number `syn_seq`) was
/// allowed under `set`: its first request starts right after the SYN.
#[inline(always)]
pub fn conn_at_syn(syn_seq: u32, set: HttpSet) -> HttpConn {
    let mut c = HttpConn::default();
    reset_at_syn(&mut c, syn_seq, set);
    c
}

/// A connection picked up mid-stream (state evicted, daemon restarted) by
/// a segment at `seq`: where requests start is unknown, so every payload
/// is denied. (`next_seq` is `seq`, so only a SYN from there on may start
/// a new connection on the 4-tuple, [`syn_may_restart`].)
#[inline(always)]
pub fn conn_lost(seq: u32, set: HttpSet) -> HttpConn {
    let mut c = HttpConn::default();
    reset_lost(&mut c, seq, set);
    c
}

/// [`conn_at_syn`] in place.
#[inline(always)]
pub fn reset_at_syn(c: &mut HttpConn, syn_seq: u32, set: HttpSet) {
    reset(c, syn_seq.wrapping_add(1), set, conn_state::START);
}

/// [`conn_lost`] in place.
#[inline(always)]
pub fn reset_lost(c: &mut HttpConn, seq: u32, set: HttpSet) {
    reset(c, seq, set, conn_state::DENIED);
}

/// Every field written, one volatile store each: the kernel's programs
/// make no BPF-to-BPF calls, and LLVM turns a run of zero stores (a
/// struct literal) into a call to `memset`.
#[inline(always)]
fn reset(c: &mut HttpConn, first: u32, set: HttpSet, state: u32) {
    macro_rules! put {
        ($e:expr, $v:expr) => {{
            let v = $v;
            // SAFETY: a plain field of a live `&mut HttpConn`.
            unsafe { core::ptr::write_volatile(&mut $e, v) }
        }};
    }
    put!(c.next_seq, first);
    put!(c.body_from, first);
    put!(c.body_left, 0);
    put!(c.head_len, 0);
    put!(c.set.id, set.id);
    put!(c.set.depths, set.depths);
    put!(c.set.names, set.names);
    put!(c.state, state);
    put!(c.requests, 0);
    put!(c.mqtt_level, 0);
    put!(c.mqtt_has_client, 0);
    put!(c.mqtt_client, 0);
}

/// What to do with a client→server segment, before its bytes are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No new bytes for the rules (no payload, a body retransmission,
    /// out-of-order body bytes): pass.
    Pass,
    /// A SYN without data on a known connection: a new connection on the
    /// same 4-tuple; start over ([`conn_at_syn`]) and pass.
    Restart,
    /// Would make Porin's view differ from the server's (a retransmission
    /// of head bytes, head bytes out of order): drop, no answer.
    Drop,
    /// Deny the connection (answered with 403 and RST in enforce mode).
    Deny(HttpError),
    /// New bytes from payload offset `skip` on: consume them ([`next`]).
    Consume { skip: u32 },
}

/// Whether a SYN at `seq` on a known connection may start it over (a new
/// connection on the same 4-tuple). The server's socket may still be the
/// old, established one: Linux answers such a SYN with a challenge ACK
/// and keeps its stream. A restart whose first byte lies at or after the
/// old `next_seq` is harmless: every byte before the new `next_seq` is
/// then dropped (before `body_from`), so the old socket never gets past
/// where it stands. One that moves back would let Porin read bytes the
/// server already has as a new head: dropped. (Linux reuses a 4-tuple
/// with an initial sequence number past the old connection's.)
#[inline(always)]
pub fn syn_may_restart(conn: &HttpConn, seq: u32) -> bool {
    !before(seq.wrapping_add(1), conn.next_seq)
}

/// `a` is before `b` in sequence space (serial-number arithmetic).
#[inline(always)]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Where the segment `[seq, seq + len)` with TCP `flags` lies against the
/// stream consumed so far.
#[inline(always)]
pub fn plan(conn: &HttpConn, seq: u32, len: u32, flags: u8) -> Plan {
    if flags & tcp_flag::URG != 0 {
        // The urgent pointer may name a byte of this segment or a later
        // one: either way the server's stream loses a byte Porin counts.
        return Plan::Deny(HttpError::Stream);
    }
    if flags & tcp_flag::SYN != 0 {
        if len != 0 {
            return Plan::Deny(HttpError::Stream);
        }
        return if syn_may_restart(conn, seq) {
            Plan::Restart
        } else {
            Plan::Drop
        };
    }
    if len == 0 {
        // ACKs, FINs, RSTs: no request bytes.
        return Plan::Pass;
    }
    if conn.state == conn_state::DENIED {
        return Plan::Deny(HttpError::Unsupported);
    }
    let end = seq.wrapping_add(len);
    if seq == conn.next_seq {
        return Plan::Consume { skip: 0 };
    }
    if before(seq, conn.next_seq) {
        // Its first bytes were consumed: they must all be body bytes.
        if before(seq, conn.body_from) {
            return Plan::Drop;
        }
        return if before(conn.next_seq, end) {
            Plan::Consume {
                skip: conn.next_seq.wrapping_sub(seq),
            }
        } else {
            Plan::Pass
        };
    }
    // Out of order: only bytes of the current body may go ahead (distance
    // from `next_seq` measured unsigned, so no wrap lets a far segment in).
    let ahead = seq.wrapping_sub(conn.next_seq);
    let in_body = conn.state == conn_state::BODY || conn.state == conn_state::CHUNK_DATA;
    if in_body && ahead < conn.body_left && len <= conn.body_left - ahead {
        Plan::Pass
    } else {
        Plan::Drop
    }
}

/// The next step over a segment's new bytes, `[off, len)` of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Every byte consumed.
    Done,
    /// `n` body bytes skipped (already applied to the connection).
    Skipped(u32),
    /// Parse the next `n` bytes (`1..=CHUNK`) with [`feed`], after
    /// [`parse_begin`] when `begin` (a new head), or on the kept state;
    /// then [`parsed`].
    Parse { begin: bool, n: u32 },
    /// Feed the next `n` bytes (`1..=LINE_CHUNK`) to [`chunk_feed`].
    Chunk { n: u32 },
    /// The head would pass `max_head` bytes.
    TooLarge,
}

/// Decides the next step at payload offset `off` of `len` bytes. A new
/// head moves the connection to [`conn_state::HEAD`].
#[inline(always)]
pub fn next(conn: &mut HttpConn, off: u32, len: u32, max_head: u32) -> Next {
    if off >= len {
        return Next::Done;
    }
    let avail = len - off;
    if conn.state == conn_state::BODY || conn.state == conn_state::CHUNK_DATA {
        let n = if avail < conn.body_left {
            avail
        } else {
            conn.body_left
        };
        conn.body_left -= n;
        conn.next_seq = conn.next_seq.wrapping_add(n);
        if conn.body_left == 0 {
            conn.state = if conn.state == conn_state::BODY {
                conn_state::START
            } else {
                conn_state::CHUNK_DATA_CR
            };
        }
        return Next::Skipped(n);
    }
    if conn_state::is_chunk_line(conn.state) {
        return Next::Chunk {
            n: if avail < LINE_CHUNK as u32 {
                avail
            } else {
                LINE_CHUNK as u32
            },
        };
    }
    let begin = conn.state != conn_state::HEAD;
    if begin {
        conn.state = conn_state::HEAD;
        conn.head_len = 0;
    }
    let room = max_head.saturating_sub(conn.head_len);
    if room == 0 {
        return Next::TooLarge;
    }
    let mut n = if avail < CHUNK as u32 {
        avail
    } else {
        CHUNK as u32
    };
    if n > room {
        n = room;
    }
    Next::Parse { begin, n }
}

/// How many bytes of `[off, len)` the next [`skip_value`] may read: at
/// most [`VCHUNK`], none past `max_head`. 0 when the head is at its limit
/// (then [`next`] says `TooLarge`).
#[inline(always)]
pub fn value_room(conn: &HttpConn, off: u32, len: u32, max_head: u32) -> u32 {
    let avail = len.saturating_sub(off);
    let room = max_head.saturating_sub(conn.head_len);
    let mut n = if avail < VCHUNK as u32 {
        avail
    } else {
        VCHUNK as u32
    };
    if n > room {
        n = room;
    }
    n
}

/// After [`feed`] or [`skip_value`] consumed `consumed` bytes of the head:
/// the connection moves past them.
#[inline(always)]
pub fn parsed(conn: &mut HttpConn, consumed: u32) {
    conn.next_seq = conn.next_seq.wrapping_add(consumed);
    conn.head_len = conn.head_len.wrapping_add(consumed);
    conn.body_from = conn.next_seq;
}

/// After a head was judged and allowed: its body (by `Content-Length`,
/// or chunked) comes next, then the next request.
#[inline(always)]
pub fn allowed(conn: &mut HttpConn, req: &Request) {
    conn.requests = conn.requests.wrapping_add(1);
    conn.body_from = conn.next_seq;
    conn.body_left = req.content_length;
    conn.head_len = 0;
    conn.state = if req.chunked != 0 {
        conn_state::CHUNK_SIZE
    } else if req.content_length == 0 {
        conn_state::START
    } else {
        conn_state::BODY
    };
}

/// Feeds a chunked body's framing bytes, `buf[..min(n, buf.len(),
/// LINE_CHUNK)]` at `next_seq`: chunk-size lines (hex digits and CRLF;
/// no extensions, no blanks), the CRLF after each chunk's data, the CRLF
/// after the last chunk. Stops where data starts ([`conn_state::CHUNK_DATA`],
/// which [`next`] skips) or the body ends (`START`). The bytes consumed,
/// or why the framing is refused: a chunk extension, a trailer field, a
/// size past [`CHUNK_DIGITS`] digits (`Unsupported`: servers part on
/// these, which is how requests are smuggled), anything else not in the
/// grammar (`Malformed`). Framing bytes, like head bytes, are never
/// retransmitted past Porin (`body_from` moves past them).
#[inline(always)]
pub fn chunk_feed(conn: &mut HttpConn, buf: &[u8], n: usize) -> Result<u32, HttpError> {
    let mut j = 0;
    let mut result = Ok(());
    while j < LINE_CHUNK {
        if j >= n {
            break;
        }
        let Some(&b) = buf.get(j) else {
            break;
        };
        let state = conn.state;
        j += 1;
        if state == conn_state::CHUNK_SIZE {
            let digit = match b {
                b'0'..=b'9' => Some(b - b'0'),
                b'a'..=b'f' => Some(b - b'a' + 10),
                b'A'..=b'F' => Some(b - b'A' + 10),
                _ => None,
            };
            if let Some(d) = digit {
                if conn.head_len >= CHUNK_DIGITS {
                    result = Err(HttpError::Unsupported);
                    break;
                }
                conn.body_left = conn.body_left * 16 + u32::from(d);
                conn.head_len += 1;
            } else if b == b'\r' && conn.head_len != 0 {
                conn.state = conn_state::CHUNK_SIZE_LF;
            } else if b == b';' && conn.head_len != 0 {
                result = Err(HttpError::Unsupported);
                break;
            } else {
                result = Err(HttpError::Malformed);
                break;
            }
        } else if state == conn_state::CHUNK_SIZE_LF
            || state == conn_state::CHUNK_DATA_LF
            || state == conn_state::CHUNK_END_LF
        {
            if b != b'\n' {
                result = Err(HttpError::Malformed);
                break;
            }
            if state == conn_state::CHUNK_DATA_LF {
                conn.state = conn_state::CHUNK_SIZE;
                conn.head_len = 0;
                conn.body_left = 0;
            } else if state == conn_state::CHUNK_END_LF {
                conn.state = conn_state::START;
                break;
            } else if conn.body_left == 0 {
                conn.state = conn_state::CHUNK_END;
            } else {
                conn.state = conn_state::CHUNK_DATA;
                break;
            }
        } else if state == conn_state::CHUNK_DATA_CR || state == conn_state::CHUNK_END {
            if b == b'\r' {
                conn.state = state + 1;
            } else if state == conn_state::CHUNK_END {
                // A trailer field.
                result = Err(HttpError::Unsupported);
                break;
            } else {
                result = Err(HttpError::Malformed);
                break;
            }
        } else {
            result = Err(HttpError::Malformed);
            break;
        }
    }
    result?;
    let k = j as u32;
    conn.next_seq = conn.next_seq.wrapping_add(k);
    conn.body_from = conn.next_seq;
    Ok(k)
}

/// What the stage decided for one segment ([`segment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass; `judged` requests were judged (and allowed) in it.
    Pass { judged: u32 },
    /// Drop without an answer.
    Drop,
    /// Deny the connection (the connection's state is `DENIED`).
    Deny(HttpError),
    /// A request was judged and no rule allowed it (state `DENIED`).
    Denied,
}

/// One client→server segment through the whole stage, as the kernel runs
/// it over its tail calls: [`plan`], then [`next`] / [`feed`] /
/// [`parsed`] / the judgement / [`allowed`] until the bytes are consumed.
/// `judge` returns whether a complete head is allowed. `max_tails` is the
/// kernel's budget of tail calls per packet ([`MAX_TAILS`], counted as
/// the kernel counts them); past it the segment is denied
/// (`Unsupported`). `req` is the connection's kept
/// parser state. On a deny the connection's state becomes `DENIED`; on a
/// drop it is left as it was.
#[allow(clippy::too_many_arguments)]
pub fn segment<F>(
    conn: &mut HttpConn,
    req: &mut Request,
    key: &crate::sip::SipKey,
    seq: u32,
    flags: u8,
    payload: &[u8],
    max_head: u32,
    max_tails: u32,
    mut judge: F,
) -> Verdict
where
    F: FnMut(&Request) -> bool,
{
    // Every refusal leaves the connection denied; the packet's work is lost.
    let refuse = |conn: &mut HttpConn, v: Verdict| {
        conn.state = conn_state::DENIED;
        v
    };
    let len = payload.len() as u32;
    let skip = match plan(conn, seq, len, flags) {
        Plan::Pass => return Verdict::Pass { judged: 0 },
        Plan::Restart => {
            *conn = conn_at_syn(seq, conn.set);
            return Verdict::Pass { judged: 0 };
        }
        Plan::Drop => return Verdict::Drop,
        Plan::Deny(e) => return refuse(conn, Verdict::Deny(e)),
        Plan::Consume { skip } => skip,
    };
    // The kernel works on a copy and writes it back only on a pass.
    let mut work = *conn;
    let mut off = skip;
    let mut tails = 0;
    let mut judged = 0;
    // Each turn is one run of the kernel's parse program: a body skipped,
    // then a head's next bytes, or a chunked body's framing handed to the
    // chunk program.
    loop {
        let mut step = next(&mut work, off, len, max_head);
        if let Next::Skipped(n) = step {
            off += n;
            step = next(&mut work, off, len, max_head);
        }
        match step {
            Next::Done => break,
            Next::Skipped(_) => unreachable!("a skip ends the body or the segment"),
            Next::TooLarge => return refuse(conn, Verdict::Deny(HttpError::TooLarge)),
            Next::Chunk { .. } => {
                if tails >= max_tails {
                    return refuse(conn, Verdict::Deny(HttpError::Unsupported));
                }
                // parse → chunk: up to `STEPS` framing feeds and data
                // skips, then chunk → parse.
                tails += 1;
                let mut steps = 0;
                while steps < STEPS && off < len && in_chunked_body(work.state) {
                    match next(&mut work, off, len, max_head) {
                        Next::Skipped(n) => off += n,
                        Next::Chunk { n } => {
                            let at = off as usize;
                            let bytes = &payload[at..at + n as usize];
                            match chunk_feed(&mut work, bytes, n as usize) {
                                Ok(k) => off += k,
                                Err(e) => return refuse(conn, Verdict::Deny(e)),
                            }
                        }
                        _ => unreachable!("inside a chunked body"),
                    }
                    steps += 1;
                }
                tails += 1;
            }
            Next::Parse { begin, n } => {
                if tails >= max_tails {
                    return refuse(conn, Verdict::Deny(HttpError::Unsupported));
                }
                if begin {
                    parse_begin(req, key, work.set.depths, work.set.names);
                }
                if value_skippable(req) {
                    // parse → value, value → value per full chunk, then
                    // value → parse, as the kernel's programs hand on.
                    tails += 1;
                    loop {
                        if tails >= max_tails {
                            return refuse(conn, Verdict::Deny(HttpError::Unsupported));
                        }
                        let n = value_room(&work, off, len, max_head);
                        if n == 0 {
                            tails += 1;
                            break;
                        }
                        let at = off as usize;
                        let bytes = &payload[at..at + n as usize];
                        let k = match skip_value(bytes, n as usize, req) {
                            Ok(k) => k as u32,
                            Err(e) => return refuse(conn, Verdict::Deny(e)),
                        };
                        parsed(&mut work, k);
                        off += k;
                        tails += 1;
                        if off >= len || !value_skippable(req) {
                            break;
                        }
                    }
                    continue;
                }
                let at = off as usize;
                let bytes = &payload[at..at + n as usize];
                match feed(bytes, n as usize, req) {
                    None => {
                        parsed(&mut work, n);
                        off += n;
                        tails += 1; // parse → parse
                    }
                    Some(Err(e)) => return refuse(conn, Verdict::Deny(e)),
                    Some(Ok(k)) => {
                        parsed(&mut work, k as u32);
                        off += k as u32;
                        if let Err(e) = framing(req) {
                            return refuse(conn, Verdict::Deny(e));
                        }
                        if !judge(req) {
                            return refuse(conn, Verdict::Denied);
                        }
                        judged += 1;
                        allowed(&mut work, req);
                        tails += 2; // parse → finish → parse
                    }
                }
            }
        }
    }
    debug_assert!(work.state != conn_state::HEAD || head_pos(req) == work.head_len);
    *conn = work;
    Verdict::Pass { judged }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding.
    unsafe impl aya::Pod for super::HttpConn {}
}

const _: () = assert!(core::mem::size_of::<HttpConn>() == 56);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{http::parse, sip::SipKey};

    const K: SipKey = SipKey { k0: 1, k1: 2 };
    const BUDGET: u32 = MAX_TAILS;

    /// Allows GET /ok only.
    fn ok_only(r: &Request) -> bool {
        r.method == crate::http::method::GET && r.path == crate::http::path_hash(&K, b"/ok")
    }

    fn run(conn: &mut HttpConn, req: &mut Request, seq: u32, flags: u8, p: &[u8]) -> Verdict {
        segment(conn, req, &K, seq, flags, p, 8192, BUDGET, ok_only)
    }

    #[test]
    fn a_head_split_anywhere_is_judged_when_it_completes() {
        let head = b"GET /ok HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n";
        for cut in 1..head.len() {
            let mut c = conn_at_syn(99, HttpSet::default());
            let mut r = Request::EMPTY;
            assert_eq!(
                run(&mut c, &mut r, 100, 0, &head[..cut]),
                Verdict::Pass { judged: 0 }
            );
            assert_eq!(c.state, conn_state::HEAD);
            assert_eq!(
                run(&mut c, &mut r, 100 + cut as u32, 0, &head[cut..]),
                Verdict::Pass { judged: 1 },
                "cut {cut}"
            );
            assert_eq!((c.state, c.requests), (conn_state::START, 1));
            assert_eq!(c.next_seq, 100 + head.len() as u32);
        }
        // One byte per segment, denied at the last byte.
        let bad = b"GET /admin HTTP/1.1\r\n\r\n";
        let mut c = conn_at_syn(0, HttpSet::default());
        let mut r = Request::EMPTY;
        for (i, b) in bad.iter().enumerate() {
            let v = run(&mut c, &mut r, 1 + i as u32, 0, &[*b]);
            if i + 1 < bad.len() {
                assert_eq!(v, Verdict::Pass { judged: 0 });
            } else {
                assert_eq!(v, Verdict::Denied);
            }
        }
    }

    #[test]
    fn pipelined_requests_and_bodies_are_judged_in_one_segment() {
        let mut s = Vec::new();
        s.extend_from_slice(b"GET /ok HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /");
        s.extend_from_slice(b"GET /ok HTTP/1.1\r\n\r\n");
        let mut c = conn_at_syn(0, HttpSet::default());
        let mut r = Request::EMPTY;
        assert_eq!(run(&mut c, &mut r, 1, 0, &s), Verdict::Pass { judged: 2 });
        // The body held a request's bytes: never parsed.
        let mut s2 = s.clone();
        s2.extend_from_slice(b"GET /admin HTTP/1.1\r\n\r\n");
        let mut c = conn_at_syn(0, HttpSet::default());
        assert_eq!(run(&mut c, &mut r, 1, 0, &s2), Verdict::Denied);
    }

    #[test]
    fn retransmissions_of_head_bytes_drop_and_of_body_bytes_pass() {
        let head = b"POST /ok HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
        let mut c = conn_at_syn(0, HttpSet::default());
        let mut r = Request::EMPTY;
        // "POST" is not allowed: use a rule-free judge for the shape only.
        let all = |_: &Request| true;
        let mut go = |c: &mut HttpConn, seq: u32, flags: u8, p: &[u8]| {
            segment(c, &mut r, &K, seq, flags, p, 8192, BUDGET, all)
        };
        assert_eq!(go(&mut c, 1, 0, head), Verdict::Pass { judged: 1 });
        let h = head.len() as u32;
        assert_eq!(go(&mut c, 1 + h, 0, b"01234"), Verdict::Pass { judged: 0 });
        // Body retransmitted, other bytes: pass.
        assert_eq!(go(&mut c, 1 + h, 0, b"xxxxx"), Verdict::Pass { judged: 0 });
        // Any head byte again: drop.
        assert_eq!(go(&mut c, 1, 0, head), Verdict::Drop);
        assert_eq!(go(&mut c, h, 0, b"\nxxxx"), Verdict::Drop);
        // Out of order inside the body: pass; past it: drop.
        assert_eq!(
            go(&mut c, 1 + h + 7, 0, b"789"),
            Verdict::Pass { judged: 0 }
        );
        assert_eq!(go(&mut c, 1 + h + 7, 0, b"789G"), Verdict::Drop);
        // Straddling: the old body part is skipped, the rest consumed.
        assert_eq!(
            go(&mut c, 1 + h + 3, 0, b"3456789GET /ok HTTP/1.1\r\n\r\n"),
            Verdict::Pass { judged: 1 }
        );
        assert_eq!(c.state, conn_state::START);
    }

    #[test]
    fn urgent_data_syn_data_and_limits_are_denied() {
        let mut r = Request::EMPTY;
        let mut c = conn_at_syn(0, HttpSet::default());
        assert_eq!(
            run(&mut c, &mut r, 1, tcp_flag::URG, b"G"),
            Verdict::Deny(HttpError::Stream)
        );
        assert_eq!(c.state, conn_state::DENIED);
        let mut c = conn_at_syn(0, HttpSet::default());
        assert_eq!(
            run(&mut c, &mut r, 1, tcp_flag::URG | tcp_flag::ACK, b""),
            Verdict::Deny(HttpError::Stream)
        );
        let mut c = conn_at_syn(0, HttpSet::default());
        assert_eq!(
            run(&mut c, &mut r, 7, tcp_flag::SYN, b"GET /admin"),
            Verdict::Deny(HttpError::Stream)
        );
        // A SYN without data: a restart only forward (a new connection on
        // the 4-tuple); backward it would re-read bytes the server has.
        let mut c = conn_at_syn(0, HttpSet::default());
        assert_eq!(
            run(&mut c, &mut r, 7, tcp_flag::SYN, b""),
            Verdict::Pass { judged: 0 }
        );
        assert_eq!(c.next_seq, 8);
        let half = b"GET /admin HTTP/1.1\r\nX: ";
        assert_eq!(run(&mut c, &mut r, 8, 0, half), Verdict::Pass { judged: 0 });
        let back = 8 + half.len() as u32 - 5;
        assert_eq!(
            run(&mut c, &mut r, back - 1, tcp_flag::SYN, b""),
            Verdict::Drop
        );
        assert_eq!(c.state, conn_state::HEAD, "unchanged");
        // Forward: every byte before the new start is dropped after it.
        let fwd = 8 + half.len() as u32 + 10;
        assert_eq!(
            run(&mut c, &mut r, fwd - 1, tcp_flag::SYN, b""),
            Verdict::Pass { judged: 0 }
        );
        assert_eq!(
            run(
                &mut c,
                &mut r,
                8 + half.len() as u32,
                0,
                b"GET /ok HTTP/1.1\r\n\r\n"
            ),
            Verdict::Drop
        );
        // The head limit, across segments.
        let mut c = conn_at_syn(0, HttpSet::default());
        let mut big = Vec::from(&b"GET /ok HTTP/1.1\r\nX: "[..]);
        big.resize(100, b'a');
        let v = segment(&mut c, &mut r, &K, 1, 0, &big, 120, BUDGET, ok_only);
        assert_eq!(v, Verdict::Pass { judged: 0 });
        let v = segment(&mut c, &mut r, &K, 101, 0, &big[..30], 120, BUDGET, ok_only);
        assert_eq!(v, Verdict::Deny(HttpError::TooLarge));
        // The per-packet budget.
        let mut c = conn_at_syn(0, HttpSet::default());
        let v = segment(&mut c, &mut r, &K, 1, 0, &big, 8192, 1, ok_only);
        assert_eq!(v, Verdict::Deny(HttpError::Unsupported));
    }

    /// Any request passes (the shape under test is the framing).
    fn any(_: &Request) -> bool {
        true
    }

    #[test]
    fn chunked_bodies_are_skipped_by_their_sizes_however_split() {
        let head = b"POST /ok HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The data holds a request's bytes: skipped, never parsed. Then
        // the next request is judged.
        let body = b"17\r\nGET /admin HTTP/1.1\r\n\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let next = b"GET /ok HTTP/1.1\r\n\r\n";
        let stream = [&head[..], body, next].concat();
        let judge_get = |r: &Request| r.method != crate::http::method::GET || ok_only(r);
        for cut in [1, 7, 50, 52, 55, 60, 75, 80, 90] {
            for size in [1usize, cut, stream.len()] {
                let mut c = conn_at_syn(0, HttpSet::default());
                let mut r = Request::EMPTY;
                let mut judged = 0;
                for (i, part) in stream.chunks(size).enumerate() {
                    let seq = 1 + (i * size) as u32;
                    let v = segment(&mut c, &mut r, &K, seq, 0, part, 8192, BUDGET, judge_get);
                    let Verdict::Pass { judged: j } = v else {
                        panic!("size {size}: {v:?} at {seq}");
                    };
                    judged += j;
                }
                assert_eq!(judged, 2, "size {size}");
                assert_eq!(c.state, conn_state::START);
                assert_eq!(c.next_seq, 1 + stream.len() as u32);
            }
        }
        // A forbidden request right after the last chunk is judged.
        let bad = [&head[..], b"1\r\nx\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"].concat();
        let mut c = conn_at_syn(0, HttpSet::default());
        let mut r = Request::EMPTY;
        let v = segment(&mut c, &mut r, &K, 1, 0, &bad, 8192, BUDGET, judge_get);
        assert_eq!(v, Verdict::Denied);
    }

    #[test]
    fn chunk_framing_that_servers_read_differently_is_refused() {
        let head = b"POST /ok HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: [(&[u8], HttpError); 8] = [
            (b"5;ext=1\r\nhello\r\n0\r\n\r\n", HttpError::Unsupported),
            (
                b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
                HttpError::Unsupported,
            ),
            (b"10000000\r\n", HttpError::Unsupported),
            (b"5 \r\nhello\r\n0\r\n\r\n", HttpError::Malformed),
            (b"5\nhello\r\n0\r\n\r\n", HttpError::Malformed),
            (b"5\r\nhelloX\r\n0\r\n\r\n", HttpError::Malformed),
            (b"\r\n", HttpError::Malformed),
            (b"-1\r\n", HttpError::Malformed),
        ];
        for (body, want) in cases {
            let mut c = conn_at_syn(0, HttpSet::default());
            let mut r = Request::EMPTY;
            let all = [&head[..], body].concat();
            let v = segment(&mut c, &mut r, &K, 1, 0, &all, 8192, BUDGET, any);
            assert_eq!(
                v,
                Verdict::Deny(want),
                "{}",
                std::string::String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn chunk_framing_is_never_retransmitted_past_porin() {
        let head = b"POST /ok HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut c = conn_at_syn(0, HttpSet::default());
        let mut r = Request::EMPTY;
        let mut go = |c: &mut HttpConn, seq: u32, p: &[u8]| {
            segment(c, &mut r, &K, seq, 0, p, 8192, BUDGET, any)
        };
        let h = head.len() as u32;
        assert_eq!(go(&mut c, 1, head), Verdict::Pass { judged: 1 });
        assert_eq!(
            go(&mut c, 1 + h, b"a\r\n01234"),
            Verdict::Pass { judged: 0 }
        );
        assert_eq!(c.state, conn_state::CHUNK_DATA);
        // Data again, other bytes: data whatever they hold.
        assert_eq!(go(&mut c, 1 + h + 3, b"xxxxx"), Verdict::Pass { judged: 0 });
        // The size line again (the server may have dropped it): drop.
        assert_eq!(go(&mut c, 1 + h, b"f\r\n01234"), Verdict::Drop);
        // Out of order inside the chunk: pass; past it: drop.
        assert_eq!(
            go(&mut c, 1 + h + 3 + 7, b"789"),
            Verdict::Pass { judged: 0 }
        );
        assert_eq!(go(&mut c, 1 + h + 3 + 7, b"789\r\n"), Verdict::Drop);
        assert_eq!(
            go(&mut c, 1 + h + 8, b"56789\r\n0\r\n\r\n"),
            Verdict::Pass { judged: 0 }
        );
        assert_eq!(c.state, conn_state::START);
    }

    #[test]
    fn whole_heads_parse_as_before() {
        let head = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n";
        let r = parse(head, head.len(), &K).unwrap();
        assert!(ok_only(&r));
        assert_eq!(r.head_len as usize, head.len());
    }
}
