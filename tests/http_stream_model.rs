//! The stream model test: random segment sequences, honest and hostile,
//! go through the HTTP stage's own logic (`porin_common::http_stream::
//! segment`, what the kernel runs over its tail calls) and through a
//! model of the Linux receive path; no request the rules deny may ever be
//! complete in the bytes the server's socket delivers.
//!
//! The client's stream is a run of requests (allowed: `GET /ok`, `POST /ok`
//! with a body; denied: anything else). A schedule then sends it in random
//! segments and mixes in what a sender with `CAP_NET_RAW` can do:
//! retransmissions of any range with other bytes, segments out of order,
//! segments the receiver drops (a bad checksum: the stage cannot tell),
//! urgent data. The receiver model keeps the first copy of in-order
//! bytes, and for overlapping out-of-order bytes lets the adversary pick
//! which copy wins (Linux keeps one or the other depending on how the
//! segments overlap); a denial reaches it as a RST at the segment's
//! sequence number, which resets only if it is exactly the next byte.
//!
//! Pure host code: no root needed. `PROPTEST_CASES` raises the count.

use std::collections::BTreeMap;

use porin_common::{
    http::{self, method, Request, MAX_HEAD},
    http_stream::{conn_at_syn, segment, tcp_flag, HttpConn, Verdict, MAX_TAILS},
    sip::SipKey,
};
use proptest::prelude::*;

const KEY: SipKey = SipKey {
    k0: 0x0123_4567_89ab_cdef,
    k1: 0x0fed_cba9_8765_4321,
};
const ISN: u32 = 0xffff_ff00; // close to the wrap, on purpose

fn allowed(r: &Request) -> bool {
    (r.method == method::GET || r.method == method::POST) && r.path == http::path_hash(&KEY, b"/ok")
}

/// One request of the client's stream.
#[derive(Clone, Debug)]
enum Req {
    Get { pad: usize },
    Post { body: Vec<u8> },
    Denied { path: &'static str },
}

impl Req {
    fn render(&self) -> Vec<u8> {
        match self {
            Req::Get { pad } => format!(
                "GET /ok HTTP/1.1\r\nHost: web\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(*pad)
            )
            .into_bytes(),
            Req::Post { body } => {
                let mut v = format!(
                    "POST /ok HTTP/1.1\r\nHost: web\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                v.extend_from_slice(body);
                v
            }
            Req::Denied { path } => {
                format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").into_bytes()
            }
        }
    }
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![
        (0usize..200).prop_map(|pad| Req::Get { pad }),
        // Bodies that look like requests: they must stay bodies.
        prop::sample::select(vec![
            b"GET /admin HTTP/1.1\r\n\r\n".to_vec(),
            b"x".to_vec(),
            b"\r\n\r\nGET /secret HTTP/1.1\r\n\r\n".to_vec(),
        ])
        .prop_map(|body| Req::Post { body }),
        prop::sample::select(vec!["/admin", "/ok/../admin", "/okx", "/"])
            .prop_map(|path| Req::Denied { path }),
    ]
}

/// What the sender does next.
#[derive(Clone, Debug)]
enum Op {
    /// The next `len` bytes of the honest stream, in order.
    Next { len: usize },
    /// A copy of `[from, from + len)` (offsets into what was sent so
    /// far), its bytes replaced by a forbidden head's where `evil`.
    Again { from: usize, len: usize, evil: bool },
    /// Bytes ahead of what was sent: `skip` further on, `len` long.
    Ahead { skip: usize, len: usize, evil: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..120).prop_map(|len| Op::Next { len }),
        2 => (any::<usize>(), 1usize..60, any::<bool>())
            .prop_map(|(from, len, evil)| Op::Again { from, len, evil }),
        1 => (1usize..40, 1usize..60, any::<bool>())
            .prop_map(|(skip, len, evil)| Op::Ahead { skip, len, evil }),
    ]
}

/// A packet: stream offset, bytes, flags, and whether the receiver drops
/// it (a bad checksum).
#[derive(Clone, Debug)]
struct Packet {
    off: usize,
    bytes: Vec<u8>,
    flags: u8,
    bad: bool,
}

const EVIL: &[u8] = b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n";

fn evil_bytes(len: usize, shift: usize) -> Vec<u8> {
    (0..len).map(|i| EVIL[(i + shift) % EVIL.len()]).collect()
}

/// `len` bytes (at most to the stream's end) for stream offset `from`: the
/// client's own, or the forbidden head's where `evil`.
fn copy_or_evil(stream: &[u8], from: usize, len: usize, evil: bool) -> (usize, Vec<u8>) {
    let len = len.min(stream.len() - from);
    let bytes = if evil {
        evil_bytes(len, from)
    } else {
        stream[from..from + len].to_vec()
    };
    (from, bytes)
}

/// The packets of a schedule over `stream`; `marks` picks, per packet,
/// a bad checksum (bit 0) and urgent data (bit 1, rarely).
fn packets(stream: &[u8], ops: &[Op], marks: &[u8]) -> Vec<Packet> {
    let mut sent = 0usize;
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let m = marks.get(i).copied().unwrap_or(0);
        let (off, bytes) = match *op {
            Op::Next { len } => {
                if sent >= stream.len() {
                    continue;
                }
                let end = (sent + len).min(stream.len());
                let p = (sent, stream[sent..end].to_vec());
                sent = end;
                p
            }
            Op::Again { from, len, evil } => {
                if sent == 0 {
                    continue;
                }
                copy_or_evil(stream, from % sent, len, evil)
            }
            Op::Ahead { skip, len, evil } => {
                let from = sent + skip;
                if from >= stream.len() {
                    continue;
                }
                copy_or_evil(stream, from, len, evil)
            }
        };
        out.push(Packet {
            off,
            bytes,
            flags: (if m & 0x1e == 0x1e { tcp_flag::URG } else { 0 }) | tcp_flag::ACK,
            bad: m & 1 == 1 && m & 0x40 == 0,
        });
    }
    // Then the rest in order, as an honest client's TCP would.
    while sent < stream.len() {
        let end = (sent + 97).min(stream.len());
        out.push(Packet {
            off: sent,
            bytes: stream[sent..end].to_vec(),
            flags: tcp_flag::ACK,
            bad: false,
        });
        sent = end;
    }
    out
}

/// The Linux receive path, as far as the property needs it: in-order
/// bytes are delivered; bytes before `rcv_nxt` are discarded (its first
/// copy wins); out-of-order bytes wait, and where two copies overlap the
/// adversary (`pick`) says which one stays.
struct Receiver {
    delivered: Vec<u8>,
    /// The next sequence offset expected (urgent bytes count here but
    /// are not delivered).
    rcv_nxt: usize,
    /// Out-of-order bytes; `None` for an urgent byte.
    ofo: BTreeMap<usize, Option<u8>>,
    reset: bool,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            delivered: Vec::new(),
            rcv_nxt: 0,
            ofo: BTreeMap::new(),
            reset: false,
        }
    }

    fn data(&mut self, off: usize, bytes: &[u8], urgent: bool, pick: &mut impl FnMut() -> bool) {
        if self.reset {
            return;
        }
        for (i, b) in bytes.iter().enumerate() {
            let at = off + i;
            if at < self.rcv_nxt {
                continue;
            }
            // Without SO_OOBINLINE the urgent byte (the segment's last, as
            // the urgent pointer sent here says) never reaches the stream.
            let byte = if urgent && i + 1 == bytes.len() {
                None
            } else {
                Some(*b)
            };
            match self.ofo.get(&at) {
                Some(_) if !pick() => {}
                _ => {
                    self.ofo.insert(at, byte);
                }
            }
        }
        while let Some(b) = self.ofo.remove(&self.rcv_nxt) {
            self.rcv_nxt += 1;
            if let Some(b) = b {
                self.delivered.push(b);
            }
        }
    }

    fn rst(&mut self, off: usize) {
        // RFC 5961: only a RST at exactly rcv_nxt resets.
        if off == self.rcv_nxt {
            self.reset = true;
        }
    }
}

/// The complete request heads in `delivered`, by an independent reading:
/// heads end at the first blank line, bodies follow Content-Length.
fn complete_heads(delivered: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < delivered.len() {
        let Some(end) = delivered[at..].windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = delivered[at..at + end + 4].to_vec();
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let body: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push(head);
        at += end + 4 + body;
    }
    out
}

/// Whether `head` is, byte for byte, the head of an allowed request the
/// client rendered (`X-Pad: p*`, any Content-Length): anything else at the
/// receiver means its view and the stage's parted.
fn head_allowed(head: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(head) else {
        return false;
    };
    if let Some(rest) = text.strip_prefix("GET /ok HTTP/1.1\r\nHost: web\r\nX-Pad: ") {
        return rest
            .strip_suffix("\r\n\r\n")
            .is_some_and(|pad| pad.bytes().all(|b| b == b'p'));
    }
    if let Some(rest) = text.strip_prefix("POST /ok HTTP/1.1\r\nHost: web\r\nContent-Length: ") {
        return rest
            .strip_suffix("\r\n\r\n")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    }
    false
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
        ..ProptestConfig::default()
    }
}

/// Runs a schedule; returns what the receiver delivered and how many
/// requests the stage judged.
fn run(stream: &[u8], pkts: &[Packet], picks: &[bool]) -> (Receiver, u32) {
    let mut conn: HttpConn = conn_at_syn(ISN, Default::default());
    let mut req = Request::EMPTY;
    let mut rx = Receiver::new();
    let mut judged = 0;
    let mut k = 0usize;
    let mut pick = || {
        k += 1;
        picks.get(k % picks.len().max(1)).copied().unwrap_or(false)
    };
    for p in pkts {
        let seq = ISN.wrapping_add(1).wrapping_add(p.off as u32);
        let v = segment(
            &mut conn, &mut req, &KEY, seq, p.flags, &p.bytes, MAX_HEAD, MAX_TAILS, allowed,
        );
        match v {
            Verdict::Pass { judged: n } => {
                judged += n;
                if !p.bad {
                    rx.data(p.off, &p.bytes, p.flags & tcp_flag::URG != 0, &mut pick);
                }
            }
            Verdict::Drop => {}
            Verdict::Deny(_) | Verdict::Denied => rx.rst(p.off),
        }
    }
    let _ = stream;
    (rx, judged)
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the schedule, every head the server can read is allowed.
    #[test]
    fn no_denied_request_is_ever_complete_at_the_receiver(
        reqs in prop::collection::vec(request(), 1..6),
        ops in prop::collection::vec(op(), 0..40),
        marks in prop::collection::vec(any::<u8>(), 0..40),
        picks in prop::collection::vec(any::<bool>(), 1..16),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(Req::render).collect();
        let pkts = packets(&stream, &ops, &marks);
        let (rx, _) = run(&stream, &pkts, &picks);
        for head in complete_heads(&rx.delivered) {
            prop_assert!(head_allowed(&head), "delivered {:?}\nfrom {:?}",
                String::from_utf8_lossy(&head), pkts);
        }
    }

    /// An honest client (in order, any segmentation, nothing dropped) of
    /// allowed requests only gets every byte through, every request judged.
    #[test]
    fn honest_clients_of_allowed_requests_pass_whole(
        reqs in prop::collection::vec(request().prop_filter("allowed", |r| !matches!(r, Req::Denied { .. })), 1..6),
        cuts in prop::collection::vec(1usize..200, 1..30),
    ) {
        let stream: Vec<u8> = reqs.iter().flat_map(Req::render).collect();
        let ops: Vec<Op> = cuts.iter().map(|&len| Op::Next { len }).collect();
        let pkts = packets(&stream, &ops, &[]);
        let (rx, judged) = run(&stream, &pkts, &[false]);
        prop_assert_eq!(&rx.delivered, &stream);
        prop_assert_eq!(judged as usize, reqs.len());
        prop_assert!(!rx.reset);
    }
}

/// The model can fail: a stage that passed retransmitted head bytes (the
/// bookkeeping before this model existed) lets a denied request through.
#[test]
fn the_model_catches_a_stage_that_trusts_retransmissions() {
    let ok = Req::Get { pad: 0 }.render();
    // The honest head goes out with a bad checksum (the receiver drops
    // it), then the same range again with the forbidden head's bytes.
    let evil_same_len = {
        let mut e = b"GET /admin HTTP/1.1\r\nHost: web\r\nX-Pad: ".to_vec();
        e.resize(ok.len() - 4, b'a');
        e.extend_from_slice(b"\r\n\r\n");
        e
    };
    assert_eq!(evil_same_len.len(), ok.len());
    let mut rx = Receiver::new();
    // A naive stage: judges the first copy, passes every later one.
    rx.data(0, &evil_same_len, false, &mut || false);
    let heads = complete_heads(&rx.delivered);
    assert!(
        heads.iter().any(|h| !head_allowed(h)),
        "the model sees the evasion"
    );
    // The real stage drops the second copy.
    let pkts = vec![
        Packet {
            off: 0,
            bytes: ok.clone(),
            flags: tcp_flag::ACK,
            bad: true,
        },
        Packet {
            off: 0,
            bytes: evil_same_len,
            flags: tcp_flag::ACK,
            bad: false,
        },
    ];
    let (rx, judged) = run(&ok, &pkts, &[false]);
    assert_eq!(judged, 1);
    assert!(rx.delivered.is_empty(), "nothing reaches the server");
}
