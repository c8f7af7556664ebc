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
//! ([`conn_state::HEAD`], `PORIN_HTTPH_V1`), or a body byte
//! ([`conn_state::BODY`], `body_left` to go, by `Content-Length`).
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

use crate::http::{feed, head_pos, parse_begin, HttpError, HttpSet, Request, CHUNK};

/// Tail calls one packet may make from the kernel stage's parse and finish
/// programs before a parse is refused (see [`segment`], which counts them
/// the same way). The kernel allows 32 per packet (x86-64's JIT before
/// 5.19; 33 elsewhere), counting the main program's into the stage's entry
/// and the entry's into the parse; the chain after a refused parse takes
/// at most 4 more. So one packet parses at most about `MAX_TAILS *`
/// [`CHUNK`] head bytes (a single head of up to 1,664 bytes with 64-byte chunks); a segment
/// with more is denied (`HttpUnsupported`).
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
    /// Requests allowed on the connection so far.
    pub requests: u32,
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
    let first = syn_seq.wrapping_add(1);
    HttpConn {
        next_seq: first,
        body_from: first,
        body_left: 0,
        head_len: 0,
        set,
        state: conn_state::START,
        requests: 0,
    }
}

/// A connection picked up mid-stream (state evicted, daemon restarted):
/// where requests start is unknown, so every payload is denied.
#[inline(always)]
pub fn conn_lost(set: HttpSet) -> HttpConn {
    HttpConn {
        state: conn_state::DENIED,
        set,
        ..HttpConn::default()
    }
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
    if conn.state == conn_state::BODY && ahead < conn.body_left && len <= conn.body_left - ahead {
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
    if conn.state == conn_state::BODY {
        let n = if avail < conn.body_left {
            avail
        } else {
            conn.body_left
        };
        conn.body_left -= n;
        conn.next_seq = conn.next_seq.wrapping_add(n);
        if conn.body_left == 0 {
            conn.state = conn_state::START;
        }
        return Next::Skipped(n);
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

/// After [`feed`] parsed `consumed` bytes of the head: the connection
/// moves past them.
#[inline(always)]
pub fn parsed(conn: &mut HttpConn, consumed: u32) {
    conn.next_seq = conn.next_seq.wrapping_add(consumed);
    conn.head_len = conn.head_len.wrapping_add(consumed);
    conn.body_from = conn.next_seq;
}

/// After a head was judged and allowed: its body (by `Content-Length`)
/// comes next, then the next request.
#[inline(always)]
pub fn allowed(conn: &mut HttpConn, req: &Request) {
    conn.requests = conn.requests.wrapping_add(1);
    conn.body_from = conn.next_seq;
    conn.body_left = req.content_length;
    conn.head_len = 0;
    conn.state = if req.content_length == 0 {
        conn_state::START
    } else {
        conn_state::BODY
    };
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
    loop {
        match next(&mut work, off, len, max_head) {
            Next::Done => break,
            Next::Skipped(n) => off += n,
            Next::TooLarge => return refuse(conn, Verdict::Deny(HttpError::TooLarge)),
            Next::Parse { begin, n } => {
                if tails >= max_tails {
                    return refuse(conn, Verdict::Deny(HttpError::Unsupported));
                }
                if begin {
                    parse_begin(req, key, work.set.depths);
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

const _: () = assert!(core::mem::size_of::<HttpConn>() == 32);

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

    #[test]
    fn whole_heads_parse_as_before() {
        let head = b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n";
        let r = parse(head, head.len(), &K).unwrap();
        assert!(ok_only(&r));
        assert_eq!(r.head_len as usize, head.len());
    }
}
