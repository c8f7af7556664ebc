//! HTTP/1.x request rules in the datapath: the request parser, the hashed
//! map keys and values, the matcher and the per-connection sequence
//! bookkeeping. Pure and `no_std`: the eBPF program runs this code on a
//! scratch copy of the segment's payload and the host tests (and the
//! differential test) run the very same functions.
//!
//! # What is parsed
//! A request head of at most [`MAX_HEAD`] bytes, in any number of
//! segments (the stream bookkeeping is [`crate::http_stream`]):
//! `METHOD SP path[?query] SP HTTP/1.0|1.1 CRLF`, then header lines
//! `name: value CRLF`, then `CRLF`. One pass over the bytes hashes
//! (SipHash-2-4 under the install's secret key, [`crate::sip`]):
//! - the method (an index, [`method`], recognised by its bytes; any other
//!   token is [`method::OTHER`]);
//! - the path up to `?` (exact key) and each prefix ending before one of
//!   its first [`MAX_SEGMENTS`] slashes (prefix keys on segment
//!   boundaries);
//! - the `Host` value (trimmed, lowercased);
//! - for the first [`MAX_HEADERS`] other headers, the lowercased name
//!   (presence conditions) and `name:value` (value conditions, value
//!   trimmed of spaces and tabs, case kept);
//! - `Content-Length` (decimal, at most 9 digits), so the bookkeeping knows
//!   where the next request on the connection starts.
//!
//! `Host`, `Content-Length` and `Transfer-Encoding` are recognised by
//! their bytes (the lowercased name, kept packed in the cursor), never by
//! a hash.
//!
//! # Maps (written by the manager, `src/datapath/http.rs`)
//! | map | type | key → value |
//! | --- | --- | --- |
//! | `PORIN_HTTPS_V1` | hash | [`crate::datapath::PolicyKey`] of an `ALLOW_HTTP` entry → [`HttpSet`] |
//! | `PORIN_HTTPR_V1` | hash | [`HttpKey`] (set, method, path hash) → [`HttpValue`] (up to [`ALTS`] rules) |
//! | `PORIN_HTTPC_V1` | LRU hash | conntrack key → [`crate::http_stream::HttpConn`] (the stream consumed so far) |
//! | `PORIN_HTTPH_V1` | LRU hash | conntrack key → [`Request`] (the parser's state of a head that spans segments) |
//! | `PORIN_HTTPK_V1` | array\[1\] | the hash key ([`crate::sip::SipKey`]; all zeroes: not written, every request denied `Internal`) |
//!
//! Set ids are derived from the rules' content ([`set_id`]), so a reload
//! that keeps a set's rules keeps its id and its entries, and connections
//! that recorded it stay judged by the same rules.
//!
//! # Cost
//! Per request: one pass over its head's bytes, then one lookup for
//! the full path plus one per prefix depth the set's rules use
//! ([`HttpSet::depths`]), whatever the number of rules. Each hit holds up to
//! [`ALTS`] rules (the Host and header conditions of rules sharing method
//! and path), checked against the request's hashed headers.
//!
//! # Verdicts
//! Every deny is, in enforce mode, answered by the eBPF stage: a 403 with
//! FIN cloned back to the client and the packet rewritten into a RST to the
//! server (the eBPF crate's `http.rs`); the connection's state becomes
//! `DENIED`, so any later payload is denied too.
//!
//! | input | verdict | reason |
//! | --- | --- | --- |
//! | head complete, a rule matches | allow, next request expected after head + Content-Length | — |
//! | head complete, no rule matches | deny | `HttpDenied` |
//! | first byte not a method token (garbage, TLS ClientHello `0x16`), bad request line, bad header line, bare LF, obs-fold, duplicate Content-Length | deny | `HttpMalformed` |
//! | segment ending inside a head (any split: 1-byte writes, headers over several writes) | pass (the server acts on no incomplete head) | — |
//! | several requests in one segment (pipelining) | each judged; one denial denies the segment | as for each |
//! | head longer than [`MAX_HEAD`] bytes | deny | `HttpHeadTooLarge` |
//! | more head bytes in one packet than the stage parses per packet (see the eBPF crate) | deny | `HttpUnsupported` |
//! | `Transfer-Encoding` (chunked bodies), target not starting with `/` (absolute form, `*`), dot segments, `//`, `\`, `%2e`/`%2f`/`%5c` in the path (servers normalise these) | deny | `HttpUnsupported` |
//! | urgent data (URG), data on a SYN (TCP Fast Open) | deny | `HttpStream` |
//! | retransmitted or overlapping bytes that touch head bytes already consumed, head bytes out of order | drop, no answer | `HttpStream` |
//! | retransmitted body bytes, out-of-order bytes inside the current body | pass | — |
//! | payload on a connection whose SYN was not seen (state lost, picked up mid-stream), or whose kept head state was evicted | deny | `HttpUnsupported` |
//! | segment without payload | pass | — |
//!
//! # In the kernel
//! The verifier walks a loop once per iteration, so the parser keeps its
//! state in memory ([`Cursor`], read and written volatile: unknown values to
//! the verifier, whose states then prune) and the stage parses the head
//! [`CHUNK`] bytes per tail call ([`feed`]).
//!
//! # Keyed hashes
//! A verdict depends on the hashes only, so they must not be predictable:
//! with an unkeyed hash (FNV-1a, before layout 4) a client could compute
//! offline a path or header value whose hash equals an allowed one's.
//! SipHash is a PRF keyed with 128 secret bits per install (getrandom(2)
//! at the first start, kept in the pinned `PORIN_HTTPK_V1` across restarts
//! and upgrades of the same layout): without the key, a request whose hash
//! equals an allowed key's but whose bytes differ is a 2^-64 chance per
//! lookup, and no offline search helps. The key never leaves the machine
//! (the maps are root-only); a reader of the maps (root) could of course
//! compute collisions, but could also rewrite the rules. Rule set ids
//! ([`set_id`]) come from the configuration, never from traffic, and stay
//! FNV-1a.
//!
//! The kernel keeps two SipHash states per request in the scratch (the
//! running one and, for a header value, the one before its trailing
//! blanks); each [`step`] records which hash to take, restart or extend,
//! and one shared tail ([`hash_phase`]) does it, so the SipHash code is
//! verified once per byte, not once per state.

use crate::{
    datapath::CtKey,
    flow::HTTP_PATH_BYTES,
    parse::Flow,
    sip::{Sip, SipKey},
};

/// Longest request head judged (the blank line included), by default:
/// a longer one is denied (`HttpHeadTooLarge`). Real heads are far
/// shorter (curl ~80 bytes, Prometheus ~290, a browser 400-800, a JWT
/// and cookies a few KiB); Apache and nginx refuse heads of 8 KiB lines too.
pub const MAX_HEAD: u32 = 8192;
/// Slashes of the path whose prefixes are hashed (prefix rules may be at
/// most this many segments deep: depth = slashes in the rule's prefix).
pub const MAX_SEGMENTS: usize = 8;
/// Headers (other than Host, Content-Length, Transfer-Encoding) hashed per
/// request; later ones are not seen, so a condition on them fails (closed).
pub const MAX_HEADERS: usize = 8;
/// Header conditions per rule.
pub const MAX_CONDITIONS: usize = 4;
/// Rules per (set, method, path) key.
pub const ALTS: usize = 4;
/// Longest method token accepted.
pub const MAX_METHOD: usize = 16;

/// `max_entries` of the L7 maps.
pub mod max_entries {
    /// `PORIN_HTTPS_V1`: like `PORIN_POL_V1` (both generations).
    pub const SETS: u32 = crate::datapath::max_entries::POLICY;
    /// `PORIN_HTTPR_V1`: rule entries of every set, during a reload the
    /// old and the new ones (the compiler allows half per configuration).
    pub const RULES: u32 = 8192;
    /// `PORIN_HTTPC_V1` (LRU: an evicted connection loses its state, and
    /// its next request is denied as `HttpUnsupported`).
    pub const CONNS: u32 = 16384;
    /// `PORIN_HTTPH_V1`: heads in progress across segments (LRU, 512
    /// bytes each: 2 MiB preallocated; an evicted head's connection is
    /// denied at its next segment, as `HttpUnsupported`).
    pub const HEADS: u32 = 4096;
}

/// Method indexes (as in `FlowEvent::http_method`).
pub mod method {
    pub const NONE: u8 = 0;
    pub const GET: u8 = 1;
    pub const HEAD: u8 = 2;
    pub const POST: u8 = 3;
    pub const PUT: u8 = 4;
    pub const DELETE: u8 = 5;
    pub const PATCH: u8 = 6;
    pub const OPTIONS: u8 = 7;
    pub const CONNECT: u8 = 8;
    pub const TRACE: u8 = 9;
    /// Any other token: only a `"*"` rule allows it.
    pub const OTHER: u8 = 10;
    /// Names by index (`OTHER` prints as `?`).
    pub const NAMES: [&str; 11] = [
        "", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "?",
    ];
}

const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Map 0 (reserved for "none" in keys and conditions) to 1.
#[inline(always)]
pub fn nonzero(h: u64) -> u64 {
    if h == 0 {
        1
    } else {
        h
    }
}

/// Keyed hash of `parts` concatenated (never 0): what the parser computes
/// from a request's bytes.
fn keyed(key: &SipKey, parts: &[&[u8]]) -> u64 {
    let mut s = Sip::new(key);
    for part in parts {
        for &b in *part {
            s.update(b);
        }
    }
    nonzero(s.finish())
}

/// Hash of a path (exact) or a prefix body (`/api` for `/api/*`, empty for
/// `/*`).
pub fn path_hash(key: &SipKey, path: &[u8]) -> u64 {
    keyed(key, &[path])
}

/// Presence condition: the lowercased header name.
pub fn header_name_hash(key: &SipKey, lower_name: &[u8]) -> u64 {
    keyed(key, &[lower_name])
}

/// Value condition: lowercased name, `:`, exact value.
pub fn header_value_hash(key: &SipKey, lower_name: &[u8], value: &[u8]) -> u64 {
    keyed(key, &[lower_name, b":", value])
}

/// The hash a `host` rule field compiles to (matches [`Request::host`]):
/// the value hash of a `host` header, the value lowercased.
pub fn host_condition(key: &SipKey, lower_host: &[u8]) -> u64 {
    header_value_hash(key, b"host", lower_host)
}

/// Set id of a rule set: a hash of its canonical text, never 0. Internal
/// (derived from the configuration, never from traffic), so unkeyed FNV-1a.
pub fn set_id(canonical: &[u8]) -> u32 {
    let mut h = FNV_BASIS;
    for &b in canonical {
        h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
    }
    let id = (h ^ (h >> 32)) as u32;
    if id == 0 {
        1
    } else {
        id
    }
}

/// Bytes of a token kept verbatim ([`Cursor::tok`]) to recognise methods
/// and header names exactly.
const TOK_BYTES: usize = 24;

/// `name` packed as the parser packs a token: byte `p` in bits `8 * (p %
/// 8)` of word `p / 8`, zero past the end. Tokens never hold a zero byte,
/// so equal packings of tokens up to [`TOK_BYTES`] long are equal tokens.
const fn pack(name: &[u8]) -> [u64; 3] {
    let mut w = [0u64; 3];
    let mut p = 0;
    while p < name.len() {
        w[p / 8] |= (name[p] as u64) << ((p % 8) * 8);
        p += 1;
    }
    w
}

/// The headers the parser handles itself ([`Cursor::known`]).
mod known {
    pub const NONE: u32 = 0;
    pub const HOST: u32 = 1;
    pub const CONTENT_LENGTH: u32 = 2;
    pub const TRANSFER_ENCODING: u32 = 3;
    pub const UPGRADE: u32 = 4;
}

const P_HOST: [u64; 3] = pack(b"host");
const P_UPGRADE: [u64; 3] = pack(b"upgrade");
const P_CONTENT_LENGTH: [u64; 3] = pack(b"content-length");
const P_TRANSFER_ENCODING: [u64; 3] = pack(b"transfer-encoding");
/// Packed `method::NAMES[1..10]` (one word each: none is longer than 7
/// bytes, so a token of 8 or more bytes, whose word has no zero byte,
/// never equals one).
const P_METHODS: [u64; 9] = [
    pack(b"GET")[0],
    pack(b"HEAD")[0],
    pack(b"POST")[0],
    pack(b"PUT")[0],
    pack(b"DELETE")[0],
    pack(b"PATCH")[0],
    pack(b"OPTIONS")[0],
    pack(b"CONNECT")[0],
    pack(b"TRACE")[0],
];

/// Why a request was not judged by the rules (all deny).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Not an HTTP/1.x request head (garbage, TLS, bad syntax).
    Malformed,
    /// Well-formed as far as seen, but not something the datapath judges:
    /// chunked or other transfer codings, non-origin-form targets, paths
    /// servers would normalise, more head bytes in one packet than the
    /// stage parses per packet, lost connection state.
    Unsupported,
    /// A head longer than the limit ([`MAX_HEAD`] by default).
    TooLarge,
    /// Segments that would make Porin's view of the stream differ from
    /// the server's: urgent data, data on a SYN (see
    /// [`crate::http_stream`]).
    Stream,
}

/// A parsed request head, or one being parsed: the parser's whole state,
/// which the kernel keeps between the segments of a head
/// (`PORIN_HTTPH_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`path_hash`] of the whole path.
    pub path: u64,
    /// The path's first [`HTTP_PATH_BYTES`] bytes (for flow events), packed
    /// little-endian into words, zero past its end.
    pub path_bytes: [u64; HTTP_PATH_BYTES / 8],
    /// [`path_hash`] of the path before each of its first slashes:
    /// `prefixes[d]` is the prefix of depth `d` (before slash number `d`,
    /// 0-based; slash 0 gives the empty prefix). Only the depths in
    /// `depths` are hashed; the other entries are stale.
    pub prefixes: [u64; MAX_SEGMENTS],
    /// [`host_condition`] of the Host value, 0 without one.
    pub host: u64,
    /// The `Transfer-Encoding` value's hash (name, colon and the value,
    /// lowercased, as [`header_value_hash`]), 0 without one: see
    /// [`framing`].
    pub te: u64,
    /// [`header_name_hash`] and [`header_value_hash`] of each header kept:
    /// the first [`MAX_HEADERS`] whose names the rule set may name
    /// (`wanted`).
    pub names: [u64; MAX_HEADERS],
    pub values: [u64; MAX_HEADERS],
    /// [`HttpSet::names`] of the set the head is parsed for: a header is
    /// kept (its value hashed) only if its name hash's bit is set. The
    /// values of the others are skipped unread ([`skip_value`]).
    pub wanted: u64,
    /// The hash key the head is parsed under ([`parse_begin`]).
    pub key: SipKey,
    /// The parser's working state ([`Cursor`]).
    pub cur: Cursor,
    /// Bit `d`: hash prefix `d` ([`parse_begin`]; the kernel passes the
    /// rule set's [`HttpSet::depths`], the only ones [`judge`] reads, and
    /// saves a SipHash finalisation per other slash).
    pub depths: u32,
    pub content_length: u32,
    /// Where the path starts in the head and its length (no query).
    pub path_start: u16,
    pub path_len: u16,
    /// Bytes of the head, the blank line included.
    pub head_len: u16,
    /// [`method`] index.
    pub method: u8,
    /// Slashes seen, at most [`MAX_SEGMENTS`].
    pub slashes: u8,
    pub headers: u8,
    /// 1: the body is chunked (`Transfer-Encoding: chunked`, the only
    /// coding judged; never with a `Content-Length`).
    pub chunked: u8,
    /// Explicit: no implicit padding in a map value.
    pub _pad: [u8; 6],
}

impl Request {
    pub const EMPTY: Request = Request {
        method: 0,
        path_start: 0,
        path_len: 0,
        path: 0,
        path_bytes: [0; HTTP_PATH_BYTES / 8],
        prefixes: [0; MAX_SEGMENTS],
        slashes: 0,
        depths: 0,
        host: 0,
        te: 0,
        names: [0; MAX_HEADERS],
        values: [0; MAX_HEADERS],
        headers: 0,
        chunked: 0,
        head_len: 0,
        content_length: 0,
        _pad: [0; 6],
        wanted: 0,
        key: SipKey::ZERO,
        cur: Cursor {
            st: 0,
            pos: 0,
            mlen: 0,
            seg_len: 0,
            seg_dots: 0,
            pct: 0,
            pct_hi: 0,
            version: 0,
            cl_seen: 0,
            cl: 0,
            cl_digits: 0,
            known: 0,
            blank: 0,
            fin: 0,
            reset: 0,
            absorb: 0,
            store: 0,
            value_at: 0,
            v10: 0,
            b: 0,
            _pad: [0; 7],
            name_h: 0,
            tok: [0; 3],
            sip: Sip {
                v: [0; 4],
                m: 0,
                n: 0,
            },
            trim: Sip {
                v: [0; 4],
                m: 0,
                n: 0,
            },
        },
    };
}

#[inline(always)]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Parser states, one byte at a time ([`Cursor::st`]).
mod st {
    pub const METHOD: u32 = 0;
    pub const PATH: u32 = 1;
    pub const QUERY: u32 = 2;
    pub const VERSION: u32 = 3;
    /// After the CR ending a line.
    pub const LF: u32 = 4;
    /// At the start of a header line (or the blank line).
    pub const LINE_START: u32 = 5;
    pub const NAME: u32 = 6;
    /// Leading blanks of a value.
    pub const VALUE_LEAD: u32 = 7;
    pub const VALUE: u32 = 8;
    /// After the CR of the blank line.
    pub const END_LF: u32 = 9;
}

/// Where the hash taken after a byte goes ([`Cursor::fin`]).
mod fin {
    pub const NONE: u32 = 0;
    /// [`super::Request::path`].
    pub const PATH: u32 = 1;
    /// The next [`super::Request::prefixes`] entry.
    pub const PREFIX: u32 = 2;
    /// [`super::Cursor::name_h`].
    pub const NAME: u32 = 3;
    /// The header's value ([`super::Request::host`] or the next
    /// `names`/`values` entry).
    pub const VALUE: u32 = 4;
}

/// The parser's state between bytes. It lives in memory (in the request,
/// which the kernel keeps in a map) and is read and written with volatile
/// accesses: the verifier then sees unknown values rather than constants
/// per path, so the states of one loop iteration prune each other and the
/// 256-byte loop stays far below the instruction limit.
///
/// Each byte is handled in two phases: the state machine decides, and
/// records in `fin`, `reset` and `absorb` what to do with the hash; then
/// one shared tail ([`hash_phase`]) does it. So the SipHash code appears
/// once in the loop body, after the branches of the state machine joined.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cursor {
    st: u32,
    /// Bytes of the head parsed so far: the offset of the next byte from
    /// the head's first, whatever segments carried them.
    pos: u32,
    /// Bytes of the current token (method, header name).
    mlen: u32,
    seg_len: u32,
    seg_dots: u32,
    /// 0 none, 1 after `%`, 2 after `%2`/`%5`, 3 after `%` + another digit.
    pct: u32,
    pct_hi: u32,
    version: u32,
    cl_seen: u32,
    cl: u32,
    cl_digits: u32,
    /// The header line's [`known`] name.
    known: u32,
    /// 1 while the value's last bytes are blanks: `trim` holds the hash
    /// state before them.
    blank: u32,
    /// [`fin`]: take the hash, and where it goes.
    fin: u32,
    /// 1: restart the hash (a new path or header name).
    reset: u32,
    /// 0x100 | a byte to hash, or 0.
    absorb: u32,
    /// 1 while in a header kept in [`Request::names`] (its value hashed).
    store: u32,
    /// Head position of the current header's value (after the colon).
    value_at: u32,
    /// 1: an HTTP/1.0 request.
    v10: u32,
    /// The byte being parsed (see `bb!`).
    b: u8,
    _pad: [u8; 7],
    /// Hash of the header line's lowercased name.
    name_h: u64,
    /// The current token's first [`TOK_BYTES`] bytes (header names
    /// lowercased), packed as [`pack`] does.
    tok: [u64; 3],
    sip: Sip,
    trim: Sip,
}

macro_rules! get {
    ($e:expr) => {
        // SAFETY: a plain field of a live `&mut Request`.
        unsafe { core::ptr::read_volatile(&$e) }
    };
}
/// The current byte, read afresh for each test: the verifier then never
/// sees a branch decided by an earlier test on the same value, which would
/// make it track the byte precisely and stop pruning states.
macro_rules! bb {
    ($r:expr) => {
        get!($r.cur.b)
    };
}
macro_rules! set {
    ($e:expr, $v:expr) => {{
        let v = $v;
        // SAFETY: a plain field of a live `&mut Request`.
        unsafe { core::ptr::write_volatile(&mut $e, v) }
    }};
}

/// Parses the request head at the start of `buf[..len]` (the whole head
/// in one buffer), hashing under `key`, [`CHUNK`] bytes per [`feed`] as
/// the kernel does. A head that does not end within the bytes given is
/// `Unsupported`. Never panics.
pub fn parse(buf: &[u8], len: usize, key: &SipKey) -> Result<Request, HttpError> {
    parse_for(buf, len, key, ALL_DEPTHS, ALL_NAMES)
}

/// [`parse`] as the kernel parses for a rule set: hashing only the
/// prefix `depths` and keeping only the `wanted` headers
/// ([`HttpSet::depths`], [`HttpSet::names`]); the values of the others
/// are skipped as the kernel skips them.
pub fn parse_for(
    buf: &[u8],
    len: usize,
    key: &SipKey,
    depths: u32,
    wanted: u64,
) -> Result<Request, HttpError> {
    let mut r = Request::EMPTY;
    parse_begin(&mut r, key, depths, wanted);
    let n = len.min(buf.len());
    let mut at = 0;
    while at < n {
        if value_skippable(&r) {
            let end = (at + VCHUNK).min(n);
            at += skip_value(&buf[at..end], end - at, &mut r)?;
            continue;
        }
        let end = (at + CHUNK).min(n);
        if let Some(done) = feed(&buf[at..end], end - at, &mut r) {
            done?;
            framing(&mut r)?;
            return Ok(r);
        }
        at = end;
    }
    Err(HttpError::Unsupported)
}

/// [`parse_begin`]'s `depths` for every prefix.
pub const ALL_DEPTHS: u32 = u32::MAX;

/// [`parse_begin`]'s `wanted` for keeping every header (up to
/// [`MAX_HEADERS`]).
pub const ALL_NAMES: u64 = u64::MAX;

/// The [`HttpSet::names`] bit of a header name's [`header_name_hash`].
#[inline(always)]
pub fn name_bit(name_hash: u64) -> u64 {
    1 << (name_hash & 63)
}

/// Resets `r` for a new head hashed under `key`, hashing the path
/// prefixes of the depths in `depths` and keeping the headers whose
/// names' bits ([`name_bit`]) are in `wanted`. Only the scalars and the
/// event path are reset: array entries past `slashes` and `headers` are
/// stale and never read.
#[inline(always)]
pub fn parse_begin(r: &mut Request, key: &SipKey, depths: u32, wanted: u64) {
    set!(r.method, method::NONE);
    set!(r.path_start, 0);
    set!(r.path_len, 0);
    set!(r.path, 0);
    let mut w = 0;
    while w < HTTP_PATH_BYTES / 8 {
        set!(r.path_bytes[w], 0);
        w += 1;
    }
    set!(r.slashes, 0);
    set!(r.depths, depths);
    set!(r.wanted, wanted);
    set!(r.host, 0);
    set!(r.headers, 0);
    set!(r.head_len, 0);
    set!(r.content_length, 0);
    set!(r.key.k0, key.k0);
    set!(r.key.k1, key.k1);
    set!(r.cur.st, st::METHOD);
    set!(r.cur.pos, 0);
    set!(r.cur.mlen, 0);
    set!(r.cur.seg_len, 0);
    set!(r.cur.seg_dots, 0);
    set!(r.cur.pct, 0);
    set!(r.cur.pct_hi, 0);
    set!(r.cur.version, 0);
    set!(r.cur.cl_seen, 0);
    set!(r.cur.cl, 0);
    set!(r.cur.cl_digits, 0);
    set!(r.cur.known, known::NONE);
    set!(r.cur.blank, 0);
    set!(r.cur.fin, fin::NONE);
    set!(r.cur.reset, 0);
    set!(r.cur.absorb, 0);
    set!(r.cur.store, 0);
    set!(r.cur.v10, 0);
    set!(r.te, 0);
    set!(r.chunked, 0);
    set!(r.cur.name_h, 0);
    set!(r.cur.tok[0], 0);
    set!(r.cur.tok[1], 0);
    set!(r.cur.tok[2], 0);
}

/// Most bytes one [`feed`] parses: one tail call of the kernel's HTTP
/// stage (the verifier walks a loop once per iteration, and a long loop
/// over this state machine is past its budget).
pub const CHUNK: usize = 64;

/// Bytes of the head parsed so far (of a head begun with [`parse_begin`]).
#[inline(always)]
pub fn head_pos(r: &Request) -> u32 {
    get!(r.cur.pos)
}

/// Feeds the head's next bytes, `buf[..min(n, buf.len(), CHUNK)]`, in
/// stream order, whatever segment they came in, to a head begun with
/// [`parse_begin`]. `Some(Ok(k))` once the head ended with byte `k - 1`
/// of `buf` (the bytes after it are the body or the next request),
/// `Some(Err(_))` on an error, `None` if every byte was valid and the head
/// goes on.
#[inline(always)]
pub fn feed(buf: &[u8], n: usize, r: &mut Request) -> Option<Result<usize, HttpError>> {
    let mut j = 0;
    while j < CHUNK {
        if j >= n {
            break;
        }
        // `get`, not indexing: no panic path for the verifier to refuse.
        let Some(&b) = buf.get(j) else {
            break;
        };
        let pos = get!(r.cur.pos);
        match step(r, b, pos as usize) {
            Err(e) => return Some(Err(e)),
            Ok(true) => {
                set!(r.cur.pos, pos + 1);
                set!(r.head_len, (pos + 1) as u16);
                return Some(Ok(j + 1));
            }
            Ok(false) => hash_phase(r),
        }
        set!(r.cur.pos, pos + 1);
        j += 1;
    }
    None
}

/// Decides a complete head's body framing: with a `Transfer-Encoding`,
/// the body is chunked if the coding is exactly `chunked` (any case,
/// blanks around it); any other coding or list of codings, and any in an
/// HTTP/1.0 request (whose framing RFC 9112 calls faulty then), is not
/// judged (`Unsupported`). Sets [`Request::chunked`]. Outside the byte
/// loop, so the parse's per-byte work stays one hash: the kernel calls it
/// before judging.
#[inline(always)]
pub fn framing(r: &mut Request) -> Result<(), HttpError> {
    let te = get!(r.te);
    if te == 0 {
        return Ok(());
    }
    let key = SipKey {
        k0: get!(r.key.k0),
        k1: get!(r.key.k1),
    };
    if get!(r.cur.v10) != 0 || te != header_value_hash(&key, b"transfer-encoding", b"chunked") {
        return Err(HttpError::Unsupported);
    }
    set!(r.chunked, 1);
    Ok(())
}

/// Most bytes one [`skip_value`] reads: one tail call of the kernel's
/// value program. Its loop is a byte test, not the state machine, so the
/// verifier walks 16 times [`CHUNK`] in a fraction of its budget.
pub const VCHUNK: usize = 1024;

/// Whether the parser stands at least [`CHUNK`] bytes deep inside the
/// value of a header it does not keep: neither Host nor Content-Length,
/// and no rule of the set names it (see [`Request::wanted`]). Cookies and
/// bearer tokens, the long part of long heads, are such values:
/// [`skip_value`] goes over them without the state machine. (Shorter
/// values stay with [`feed`]: handing over costs the kernel two tail
/// calls, worth it only for a value that likely goes on.)
#[inline(always)]
pub fn value_skippable(r: &Request) -> bool {
    let state = get!(r.cur.st);
    (state == st::VALUE_LEAD || state == st::VALUE)
        && get!(r.cur.known) == known::NONE
        && get!(r.cur.store) == 0
        && get!(r.cur.pos).wrapping_sub(get!(r.cur.value_at)) >= CHUNK as u32
}

/// Skips value bytes of a header [`value_skippable`] says is not kept:
/// from `buf[..min(n, buf.len(), VCHUNK)]`, the bytes up to the first CR
/// and that CR, which ends the value as in [`feed`] (the LF that must
/// follow is [`feed`]'s again). Checks what [`feed`] checks in a value: no
/// control byte but HTAB. The bytes consumed, or `Malformed`. Must only be
/// called where [`value_skippable`] holds; it no longer does after the CR.
#[inline(always)]
pub fn skip_value(buf: &[u8], n: usize, r: &mut Request) -> Result<usize, HttpError> {
    let mut j = 0;
    while j < VCHUNK {
        if j >= n {
            break;
        }
        let Some(&b) = buf.get(j) else {
            break;
        };
        if b == b'\r' {
            // What `value_byte` does at the CR of a value not kept.
            set!(r.cur.st, st::LF);
            j += 1;
            break;
        }
        if (b < b' ' && b != b'\t') || b == 0x7f {
            return Err(HttpError::Malformed);
        }
        if b != b' ' && b != b'\t' {
            // Past the leading blanks, as `value_byte` moves; a store, so
            // the verifier carries no flag from one byte to the next.
            set!(r.cur.st, st::VALUE);
        }
        j += 1;
    }
    set!(r.cur.pos, get!(r.cur.pos) + j as u32);
    Ok(j)
}

const VERSION: &[u8; 8] = b"HTTP/1.1";

/// Appends byte `c` at position `p` of the token ([`Cursor::tok`]).
#[inline(always)]
fn tok_push(r: &mut Request, p: u32, c: u8) {
    if p < TOK_BYTES as u32 {
        if let Some(w) = r.cur.tok.get_mut((p >> 3) as usize) {
            set!(*w, get!(*w) | (u64::from(c) << ((p & 7) * 8)));
        }
    }
}

/// Asks [`hash_phase`] to hash byte `c`.
#[inline(always)]
fn absorb(r: &mut Request, c: u8) {
    set!(r.cur.absorb, 0x100 | u32::from(c));
}

/// One byte at offset `i`; `Ok(true)` when it ends the head. Records in
/// the cursor what [`hash_phase`] then does.
#[inline(always)]
fn step(r: &mut Request, byte: u8, i: usize) -> Result<bool, HttpError> {
    set!(r.cur.b, byte);
    let state = get!(r.cur.st);
    if state == st::METHOD {
        let mlen = get!(r.cur.mlen);
        if bb!(r) == b' ' {
            if mlen == 0 {
                return Err(HttpError::Malformed);
            }
            set!(r.method, method_index(get!(r.cur.tok[0])));
            set!(r.cur.st, st::PATH);
            set!(r.path_start, (i + 1) as u16);
            set!(r.cur.reset, 1);
        } else if is_tchar(bb!(r)) && mlen < MAX_METHOD as u32 {
            tok_push(r, mlen, bb!(r));
            set!(r.cur.mlen, mlen + 1);
        } else {
            return Err(HttpError::Malformed);
        }
    } else if state == st::PATH {
        path_byte(r, i)?;
    } else if state == st::QUERY {
        if bb!(r) == b' ' {
            set!(r.cur.st, st::VERSION);
        } else if bb!(r) <= b' ' || bb!(r) >= 0x7f {
            return Err(HttpError::Malformed);
        }
    } else if state == st::VERSION {
        let v = get!(r.cur.version);
        if v < 7 {
            if Some(&bb!(r)) != VERSION.get(v as usize) {
                return Err(HttpError::Malformed);
            }
            set!(r.cur.version, v + 1);
        } else if v == 7 {
            if bb!(r) != b'0' && bb!(r) != b'1' {
                return Err(HttpError::Malformed);
            }
            set!(r.cur.version, 8);
            if bb!(r) == b'0' {
                set!(r.cur.v10, 1);
            }
        } else if bb!(r) == b'\r' {
            set!(r.cur.st, st::LF);
        } else {
            return Err(HttpError::Malformed);
        }
    } else if state == st::LF {
        if bb!(r) != b'\n' {
            return Err(HttpError::Malformed);
        }
        set!(r.cur.st, st::LINE_START);
    } else if state == st::LINE_START {
        if bb!(r) == b'\r' {
            set!(r.cur.st, st::END_LF);
        } else if is_tchar(bb!(r)) {
            let c = bb!(r).to_ascii_lowercase();
            set!(r.cur.tok[0], 0);
            set!(r.cur.tok[1], 0);
            set!(r.cur.tok[2], 0);
            tok_push(r, 0, c);
            set!(r.cur.mlen, 1);
            set!(r.cur.store, 0);
            set!(r.cur.reset, 1);
            absorb(r, c);
            set!(r.cur.st, st::NAME);
        } else {
            // obs-fold (leading blank), bare LF, other bytes.
            return Err(HttpError::Malformed);
        }
    } else if state == st::NAME {
        if bb!(r) == b':' {
            let k = known_header(r);
            set!(r.cur.known, k);
            if k == known::UPGRADE {
                // WebSocket, h2c: after the switch the stream is not
                // HTTP/1.x; no rule allows one yet.
                return Err(HttpError::Unsupported);
            }
            if k == known::CONTENT_LENGTH || k == known::TRANSFER_ENCODING {
                // Framing two ways (or twice) is how requests are
                // smuggled past a front end: refused.
                if get!(r.cur.cl_seen) != 0 {
                    return Err(HttpError::Malformed);
                }
                set!(r.cur.cl_seen, 1);
            }
            // The name's hash (conditions never name the headers the
            // parser handles), then ':' and the value go on the same hash.
            if k == known::NONE && (get!(r.headers) as usize) < MAX_HEADERS {
                set!(r.cur.fin, fin::NAME);
            }
            absorb(r, b':');
            set!(r.cur.value_at, (i + 1) as u32);
            set!(r.cur.blank, 0);
            set!(r.cur.st, st::VALUE_LEAD);
        } else if is_tchar(bb!(r)) {
            let c = bb!(r).to_ascii_lowercase();
            let mlen = get!(r.cur.mlen);
            tok_push(r, mlen, c);
            set!(r.cur.mlen, mlen.saturating_add(1));
            absorb(r, c);
        } else {
            return Err(HttpError::Malformed);
        }
    } else if state == st::VALUE_LEAD || state == st::VALUE {
        value_byte(r, state)?;
    } else if state == st::END_LF {
        if bb!(r) != b'\n' {
            return Err(HttpError::Malformed);
        }
        return Ok(true);
    } else {
        return Err(HttpError::Malformed);
    }
    Ok(false)
}

/// The hash work [`step`] recorded for its byte: take the hash (a path,
/// a prefix, a header name or value), restart it, hash the byte; in that
/// order.
#[inline(always)]
fn hash_phase(r: &mut Request) {
    let f = get!(r.cur.fin);
    if f != fin::NONE {
        set!(r.cur.fin, fin::NONE);
        if f == fin::VALUE && get!(r.cur.blank) != 0 {
            // Trailing blanks are not part of the value.
            copy_sip(&mut r.cur.sip, &r.cur.trim);
        }
        let h = nonzero(r.cur.sip.finish());
        if f == fin::PATH {
            set!(r.path, h);
        } else if f == fin::PREFIX {
            // `path_byte` counted the slash already.
            let d = (get!(r.slashes) as usize).wrapping_sub(1);
            if let Some(slot) = r.prefixes.get_mut(d) {
                set!(*slot, h);
            }
        } else if f == fin::NAME {
            set!(r.cur.name_h, h);
            if get!(r.wanted) & name_bit(h) != 0 {
                set!(r.cur.store, 1);
            }
        } else {
            finish_header(r, h);
        }
    }
    if get!(r.cur.reset) != 0 {
        set!(r.cur.reset, 0);
        let key = SipKey {
            k0: get!(r.key.k0),
            k1: get!(r.key.k1),
        };
        // Field by field, volatile: a struct store became a `memset` call
        // for the two zero words, a BPF-to-BPF call that 5.10's arm64 JIT
        // refuses next to tail calls.
        let fresh = Sip::new(&key);
        copy_sip(&mut r.cur.sip, &fresh);
    }
    let a = get!(r.cur.absorb);
    if a != 0 {
        set!(r.cur.absorb, 0);
        r.cur.sip.update(a as u8);
    }
}

#[inline(always)]
fn path_byte(r: &mut Request, i: usize) -> Result<(), HttpError> {
    let first = i == get!(r.path_start) as usize;
    if first && bb!(r) != b'/' {
        // Absolute form, authority form, `*`: not judged.
        return if bb!(r) > b' ' && bb!(r) < 0x7f {
            Err(HttpError::Unsupported)
        } else {
            Err(HttpError::Malformed)
        };
    }
    let seg_len = get!(r.cur.seg_len);
    let seg_dots = get!(r.cur.seg_dots);
    let pct = get!(r.cur.pct);
    if bb!(r) == b' ' || bb!(r) == b'?' {
        if !seg_ok(seg_len, seg_dots) || pct != 0 {
            return Err(HttpError::Unsupported);
        }
        set!(r.path_len, (i - get!(r.path_start) as usize) as u16);
        set!(r.cur.fin, fin::PATH);
        set!(
            r.cur.st,
            if bb!(r) == b' ' {
                st::VERSION
            } else {
                st::QUERY
            }
        );
        return Ok(());
    }
    if bb!(r) <= b' ' || bb!(r) >= 0x7f || bb!(r) == b'#' {
        return Err(HttpError::Malformed);
    }
    if bb!(r) == b'\\' {
        return Err(HttpError::Unsupported);
    }
    if bb!(r) == b'/' {
        if !first && (seg_len == 0 || !seg_ok(seg_len, seg_dots)) {
            // `//`, `/./`, `/../`
            return Err(HttpError::Unsupported);
        }
        if pct != 0 {
            return Err(HttpError::Unsupported);
        }
        // The prefix before this slash (if a rule may want it), then the
        // slash is hashed.
        let d = get!(r.slashes) as u32;
        if d < MAX_SEGMENTS as u32 {
            if get!(r.depths) & (1 << d) != 0 {
                set!(r.cur.fin, fin::PREFIX);
            }
            set!(r.slashes, (d + 1) as u8);
        }
        set!(r.cur.seg_len, 0);
        set!(r.cur.seg_dots, 0);
    } else {
        set!(r.cur.seg_len, seg_len + 1);
        if bb!(r) == b'.' {
            set!(r.cur.seg_dots, seg_dots + 1);
        }
        // Encoded '.', '/', '\': %2e %2f %5c.
        if pct == 1 {
            set!(
                r.cur.pct,
                if bb!(r) == b'2' || bb!(r) == b'5' {
                    2
                } else {
                    3
                }
            );
            set!(r.cur.pct_hi, bb!(r) as u32);
        } else if pct == 2 || pct == 3 {
            let lo = bb!(r) | 0x20;
            let hi = get!(r.cur.pct_hi);
            if pct == 2
                && ((hi == b'2' as u32 && (lo == b'e' || lo == b'f'))
                    || (hi == b'5' as u32 && lo == b'c'))
            {
                return Err(HttpError::Unsupported);
            }
            set!(r.cur.pct, 0);
        } else if bb!(r) == b'%' {
            set!(r.cur.pct, 1);
        }
    }
    // The path's first bytes for flow events.
    let k = i.wrapping_sub(get!(r.path_start) as usize);
    if k < HTTP_PATH_BYTES {
        if let Some(w) = r.path_bytes.get_mut(k >> 3) {
            set!(*w, get!(*w) | (u64::from(bb!(r)) << ((k & 7) * 8)));
        }
    }
    absorb(r, bb!(r));
    Ok(())
}

#[inline(always)]
fn value_byte(r: &mut Request, state: u32) -> Result<(), HttpError> {
    let k = get!(r.cur.known);
    if bb!(r) == b'\r' {
        if k == known::CONTENT_LENGTH {
            if get!(r.cur.cl_digits) == 0 {
                return Err(HttpError::Malformed);
            }
            set!(r.content_length, get!(r.cur.cl));
        } else if k == known::HOST || k == known::TRANSFER_ENCODING || get!(r.cur.store) != 0 {
            // Not for Content-Length (no condition names it) nor for the
            // headers not kept.
            set!(r.cur.fin, fin::VALUE);
        }
        set!(r.cur.st, st::LF);
    } else if bb!(r) == b' ' || bb!(r) == b'\t' {
        if state == st::VALUE {
            if get!(r.cur.blank) == 0 {
                // The value's hash if no other byte follows.
                let Cursor { sip, trim, .. } = &mut r.cur;
                copy_sip(trim, sip);
                set!(r.cur.blank, 1);
            }
            absorb(r, bb!(r));
        }
    } else if bb!(r) < b' ' || bb!(r) == 0x7f {
        return Err(HttpError::Malformed);
    } else {
        if k == known::CONTENT_LENGTH {
            // Digits only, no blanks inside.
            let digits = get!(r.cur.cl_digits);
            if !bb!(r).is_ascii_digit()
                || digits >= 9
                || (state == st::VALUE && get!(r.cur.blank) != 0)
            {
                return Err(HttpError::Malformed);
            }
            set!(r.cur.cl, get!(r.cur.cl) * 10 + (bb!(r) - b'0') as u32);
            set!(r.cur.cl_digits, digits + 1);
        }
        let c = if k == known::HOST || k == known::TRANSFER_ENCODING {
            bb!(r).to_ascii_lowercase()
        } else {
            bb!(r)
        };
        absorb(r, c);
        set!(r.cur.blank, 0);
        set!(r.cur.st, st::VALUE);
    }
    Ok(())
}

/// `*dst = *src` word by word, volatile so LLVM cannot merge it into a
/// `memcpy` call (see `parse::HeaderBuf`).
#[inline(always)]
fn copy_sip(dst: &mut Sip, src: &Sip) {
    set!(dst.v[0], get!(src.v[0]));
    set!(dst.v[1], get!(src.v[1]));
    set!(dst.v[2], get!(src.v[2]));
    set!(dst.v[3], get!(src.v[3]));
    set!(dst.m, get!(src.m));
    set!(dst.n, get!(src.n));
}

/// A path segment other than `.` and `..`.
#[inline(always)]
fn seg_ok(len: u32, dots: u32) -> bool {
    !(len == dots && (len == 1 || len == 2))
}

/// Which [`known`] header the token names (compared byte for byte, not by
/// hash: the name is the client's).
#[inline(always)]
fn known_header(r: &mut Request) -> u32 {
    let n = get!(r.cur.mlen);
    let t = [get!(r.cur.tok[0]), get!(r.cur.tok[1]), get!(r.cur.tok[2])];
    // Word by word: an array `==` may become a `bcmp` call, which eBPF
    // does not have.
    let eq = |p: &[u64; 3]| t[0] == p[0] && t[1] == p[1] && t[2] == p[2];
    if n == 4 && eq(&P_HOST) {
        known::HOST
    } else if n == 14 && eq(&P_CONTENT_LENGTH) {
        known::CONTENT_LENGTH
    } else if n == 17 && eq(&P_TRANSFER_ENCODING) {
        known::TRANSFER_ENCODING
    } else if n == 7 && eq(&P_UPGRADE) {
        known::UPGRADE
    } else {
        known::NONE
    }
}

#[inline(always)]
fn finish_header(r: &mut Request, value_h: u64) {
    let k = get!(r.cur.known);
    if k == known::HOST {
        // The value hash covers "host:" + value; `host_condition` hashes
        // rules' hosts the same way. The first Host counts.
        if get!(r.host) == 0 {
            set!(r.host, value_h);
        }
        return;
    }
    if k == known::TRANSFER_ENCODING {
        // Checked once the head is complete ([`framing`]).
        set!(r.te, value_h);
        return;
    }
    if k == known::CONTENT_LENGTH {
        return;
    }
    let name_h = get!(r.cur.name_h);
    let n = get!(r.headers) as usize;
    if let (Some(a), Some(v)) = (r.names.get_mut(n), r.values.get_mut(n)) {
        set!(*a, name_h);
        set!(*v, value_h);
        set!(r.headers, (n + 1) as u8);
    }
}

/// The [`method`] index of a method token packed in one word.
#[inline(always)]
fn method_index(word: u64) -> u8 {
    let mut k = 0;
    while k < P_METHODS.len() {
        if P_METHODS[k] == word {
            return (k + 1) as u8;
        }
        k += 1;
    }
    method::OTHER
}

/// `PORIN_HTTPS_V1` value: the rule set of an `ALLOW_HTTP` policy entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct HttpSet {
    /// [`set_id`] of the set.
    pub id: u32,
    /// Bit `d`: some prefix rule of the set has depth `d` (slashes in its
    /// prefix), so prefix `d` of a request path is looked up. [`SET_MQTT`]:
    /// the set is an MQTT rule set (`PORIN_MQTTS_V1` under `id`), and the
    /// connection's stream is judged by [`crate::mqtt`] instead.
    pub depths: u32,
    /// A one-word Bloom filter of the header names the set's conditions
    /// name: [`name_bit`] of each [`header_name_hash`]. The parser keeps
    /// (hashes the value of) only headers whose bit is set; a request
    /// with a 6 KiB cookie but no rule on cookies is parsed at the speed
    /// of [`skip_value`]. A false positive only keeps a header more.
    pub names: u64,
}

/// [`HttpSet::depths`] bit of an MQTT rule set (no HTTP prefix is this
/// deep: at most [`MAX_SEGMENTS`]).
pub const SET_MQTT: u32 = 1 << 31;

/// `PORIN_HTTPR_V1` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct HttpKey {
    pub set: u32,
    /// [`method`] index (a `"*"` rule is stored under every index).
    pub method: u8,
    pub _pad: [u8; 3],
    /// [`path_hash`] of the exact path or of the prefix body.
    pub path: u64,
}

/// What kind of path match an [`HttpAlt`] is.
pub mod alt_kind {
    pub const EXACT: u8 = 1;
    pub const PREFIX: u8 = 2;
}

/// One rule's remaining conditions under an [`HttpKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct HttpAlt {
    /// [`host_condition`], 0 = any host.
    pub host: u64,
    /// [`header_name_hash`] or [`header_value_hash`] conditions; 0 = unused.
    pub headers: [u64; MAX_CONDITIONS],
    /// 1-based policy index, for flow events.
    pub rule: u32,
    /// [`alt_kind`] bits; 0 = unused slot.
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// `PORIN_HTTPR_V1` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct HttpValue {
    pub alts: [HttpAlt; ALTS],
}

/// `PORIN_HTTPC_V1` key: the connection as its client→server packets
/// carry it (only those are judged), at endpoint `ifindex`.
#[inline(always)]
pub fn conn_key(flow: &Flow, ifindex: u32) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        family: flow.family,
        // Literal, not `[0; 2]`: see `parse::HeaderBuf` on memset.
        _pad: [0, 0],
        ifindex,
    }
}

/// Whether `alt` holds for `req`, given the path match `kind`
/// ([`alt_kind::EXACT`] for the full path, [`alt_kind::PREFIX`] for a
/// prefix).
#[inline(always)]
pub fn alt_matches(alt: &HttpAlt, kind: u8, req: &Request) -> bool {
    if alt.kind & kind == 0 {
        return false;
    }
    if alt.host != 0 && alt.host != req.host {
        return false;
    }
    let mut c = 0;
    while c < MAX_CONDITIONS {
        let want = alt.headers[c];
        if want != 0 && !has_header(req, want) {
            return false;
        }
        c += 1;
    }
    true
}

#[inline(always)]
fn has_header(req: &Request, want: u64) -> bool {
    let mut k = 0;
    while k < MAX_HEADERS {
        if k >= req.headers as usize {
            return false;
        }
        if req.names[k] == want || req.values[k] == want {
            return true;
        }
        k += 1;
    }
    false
}

/// The first rule of `v` that holds for `req` with path match `kind`, or 0.
#[inline(always)]
pub fn value_matches(v: &HttpValue, kind: u8, req: &Request) -> u32 {
    let mut a = 0;
    while a < ALTS {
        if alt_matches(&v.alts[a], kind, req) {
            return v.alts[a].rule;
        }
        a += 1;
    }
    0
}

/// Judges `req` under `set`: the rule (1-based policy index) that allows
/// it, or 0. `lookup` reads `PORIN_HTTPR_V1`. At most `1 +
/// popcount(set.depths)` lookups.
#[inline(always)]
pub fn judge<'a, F>(req: &Request, set: &HttpSet, mut lookup: F) -> u32
where
    F: FnMut(&HttpKey) -> Option<&'a HttpValue>,
{
    let mut key = HttpKey {
        set: set.id,
        method: req.method,
        _pad: [0; 3],
        path: req.path,
    };
    // The padding again, volatile: LLVM turns the three zero bytes above
    // into a `memset` call, a BPF-to-BPF call that 5.10's arm64 JIT
    // refuses in programs with tail calls; a volatile store it must keep
    // as it is, and the store above is then dead.
    // SAFETY: a field of a local.
    unsafe { core::ptr::write_volatile(&mut key._pad, [0, 0, 0]) };
    if let Some(v) = lookup(&key) {
        let rule = value_matches(v, alt_kind::EXACT | alt_kind::PREFIX, req);
        if rule != 0 {
            return rule;
        }
    }
    let mut d = 0;
    while d < MAX_SEGMENTS {
        if d >= req.slashes as usize {
            break;
        }
        // Only depths both wanted by `set` and hashed by the parse: the
        // parse hashed the depths of the set it was started with, and the
        // other entries of `prefixes` hold an earlier request's hashes
        // (the scratch is per CPU, not per connection). Should the
        // connection's set change between the parse and the judgement,
        // an unhashed depth is skipped, never read stale.
        if set.depths & req.depths & (1 << d) != 0 {
            key.path = req.prefixes[d];
            if let Some(v) = lookup(&key) {
                let rule = value_matches(v, alt_kind::PREFIX, req);
                if rule != 0 {
                    return rule;
                }
            }
        }
        d += 1;
    }
    0
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding.
    unsafe impl aya::Pod for super::HttpSet {}
    unsafe impl aya::Pod for super::HttpKey {}
    unsafe impl aya::Pod for super::HttpValue {}
}

const _: () = assert!(core::mem::size_of::<HttpSet>() == 16);
const _: () = assert!(core::mem::size_of::<HttpKey>() == 16);
const _: () = assert!(core::mem::size_of::<HttpAlt>() == 48);
const _: () = assert!(core::mem::size_of::<HttpValue>() == 48 * ALTS);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const K: SipKey = SipKey {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };

    fn p(s: &[u8]) -> Result<Request, HttpError> {
        parse(s, s.len(), &K)
    }

    #[test]
    fn methods_and_known_headers_are_recognised_by_their_bytes() {
        for (k, name) in method::NAMES[1..10].iter().enumerate() {
            let req = std::format!("{name} / HTTP/1.1\r\n\r\n");
            assert_eq!(p(req.as_bytes()).unwrap().method, (k + 1) as u8);
        }
        for other in ["GE", "GETT", "get", "OPTIONSX", "XGET"] {
            let req = std::format!("{other} / HTTP/1.1\r\n\r\n");
            assert_eq!(p(req.as_bytes()).unwrap().method, method::OTHER, "{other}");
        }
        // Names that share a prefix with a known one are ordinary headers.
        let r = p(b"GET / HTTP/1.1\r\nHost2: a\r\nhos: b\r\nContent-Lengthx: c\r\nTransfer-Encodin: d\r\n\r\n")
            .unwrap();
        assert_eq!((r.host, r.headers, r.content_length), (0, 4, 0));
        let r = p(b"GET / HTTP/1.1\r\nHOST: a\r\ncontent-LENGTH: 3\r\n\r\n").unwrap();
        assert_eq!(
            (r.host, r.headers, r.content_length),
            (host_condition(&K, b"a"), 0, 3)
        );
        assert_eq!(
            p(b"POST / HTTP/1.1\r\ntransfer-ENCODING: x\r\n\r\n"),
            Err(HttpError::Unsupported)
        );
    }

    #[test]
    fn hashes_depend_on_the_key() {
        let mut other = K;
        other.k0 ^= 1;
        let req = b"GET /api/x HTTP/1.1\r\nHost: web\r\nX-Key: 1\r\n\r\n";
        let (a, b) = (p(req).unwrap(), parse(req, req.len(), &other).unwrap());
        assert_ne!(a.path, b.path);
        assert_ne!(a.prefixes[1], b.prefixes[1]);
        assert_ne!(a.host, b.host);
        assert_ne!(a.names[0], b.names[0]);
        assert_ne!(a.values[0], b.values[0]);
        assert_eq!(b.path, path_hash(&other, b"/api/x"));
        assert_eq!(a.path, path_hash(&K, b"/api/x"));
        // The hashes are SipHash-2-4 of the bytes (see `sip`'s vectors).
        assert_eq!(
            path_hash(&K, b"/a"),
            nonzero(crate::sip::siphash(&K, b"/a"))
        );
    }

    #[test]
    fn only_the_wanted_prefix_depths_are_hashed() {
        let req = b"GET /api/v1/x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut r = Request::EMPTY;
        parse_begin(&mut r, &K, 1 << 1, ALL_NAMES);
        assert_eq!(feed(&req[..20], 20, &mut r), None);
        let rest = &req[20..];
        assert_eq!(feed(rest, rest.len(), &mut r), Some(Ok(rest.len())));
        assert_eq!(r.head_len as usize, req.len());
        assert_eq!(r.slashes, 3);
        assert_eq!(r.prefixes[1], path_hash(&K, b"/api"));
        assert_eq!((r.prefixes[0], r.prefixes[2]), (0, 0), "not hashed");
        assert_eq!(r.path, path_hash(&K, b"/api/v1/x"));
        assert_eq!(r.host, host_condition(&K, b"a"));
        // Deeper than MAX_SEGMENTS: counted up to it, never past.
        let deep = b"GET /1/2/3/4/5/6/7/8/9/10 HTTP/1.1\r\n\r\n";
        let r = p(deep).unwrap();
        assert_eq!(r.slashes as usize, MAX_SEGMENTS);
        assert_eq!(r.prefixes[7], path_hash(&K, b"/1/2/3/4/5/6/7"));
    }

    #[test]
    fn headers_past_the_kept_ones_are_ignored() {
        let mut req = std::string::String::from("GET / HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS + 2 {
            req.push_str(&std::format!("X-{i}: {i}\r\n"));
        }
        req.push_str("Host: h\r\n\r\n");
        let r = p(req.as_bytes()).unwrap();
        assert_eq!(r.headers as usize, MAX_HEADERS);
        assert_eq!(
            r.values[MAX_HEADERS - 1],
            header_value_hash(&K, b"x-7", b"7")
        );
        assert_eq!(
            r.host,
            host_condition(&K, b"h"),
            "Host after them still counts"
        );
    }

    #[test]
    fn value_trimming_and_blanks() {
        let v = |req: &[u8]| p(req).unwrap().values[0];
        let want = header_value_hash(&K, b"x-a", b"1 \t2");
        assert_eq!(v(b"GET / HTTP/1.1\r\nX-A: 1 \t2\r\n\r\n"), want);
        assert_eq!(v(b"GET / HTTP/1.1\r\nX-A:\t 1 \t2 \t \r\n\r\n"), want);
        assert_eq!(
            v(b"GET / HTTP/1.1\r\nX-A:   \r\n\r\n"),
            header_value_hash(&K, b"x-a", b"")
        );
        // Long values cross several SipHash words, trimmed or not.
        let long = b"GET / HTTP/1.1\r\nX-A: abcdefghijklmnopqrstuvwxyz0123456789  \r\n\r\n";
        assert_eq!(
            v(long),
            header_value_hash(&K, b"x-a", b"abcdefghijklmnopqrstuvwxyz0123456789")
        );
    }

    #[test]
    fn parses_a_request_head() {
        let req = b"GET /api/v1/x?q=1 HTTP/1.1\r\nHost: Web.Local:80\r\nX-Key:  abc \r\nContent-Length: 5\r\n\r\nhello";
        let r = p(req).unwrap();
        assert_eq!(r.method, method::GET);
        assert_eq!(
            &req[r.path_start as usize..(r.path_start + r.path_len) as usize],
            b"/api/v1/x"
        );
        assert_eq!(r.path, path_hash(&K, b"/api/v1/x"));
        assert_eq!(r.slashes, 3);
        assert_eq!(r.prefixes[0], path_hash(&K, b""));
        assert_eq!(r.prefixes[1], path_hash(&K, b"/api"));
        assert_eq!(r.prefixes[2], path_hash(&K, b"/api/v1"));
        assert_eq!(r.host, host_condition(&K, b"web.local:80"));
        assert_eq!(r.headers, 1);
        assert_eq!(r.names[0], header_name_hash(&K, b"x-key"));
        assert_eq!(r.values[0], header_value_hash(&K, b"x-key", b"abc"));
        assert_eq!(r.content_length, 5);
        assert_eq!(r.head_len as usize, req.len() - 5);
    }

    #[test]
    fn verdicts_of_bad_inputs() {
        use HttpError::*;
        let table: &[(&[u8], HttpError)] = &[
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Malformed),
            (b"\x00\x01garbage", Malformed),
            (b"G", Unsupported),
            (b"GET /metrics HTTP/1.1\r\n", Unsupported),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", Unsupported),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a/../admin HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a/./b HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a//b HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a/%2e%2e/b HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a%2Fb HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a\\b HTTP/1.1\r\n\r\n", Unsupported),
            (b"GET /a HTTP/2.0\r\n\r\n", Malformed),
            (b"GET /a HTTP/1.1\n\n", Malformed),
            (b"GET /a HTTP/1.1\r\n folded\r\n\r\n", Malformed),
            (b"GET /a HTTP/1.1\r\nNoColon\r\n\r\n", Malformed),
            // Framing: `chunked` alone, once, never beside a length.
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Unsupported,
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked x\r\n\r\n",
                Unsupported,
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunk ed\r\n\r\n",
                Unsupported,
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunkedchunked\r\n\r\n",
                Unsupported,
            ),
            (b"POST /a HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", Unsupported),
            (
                b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Unsupported,
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                Malformed,
            ),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Malformed,
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Malformed,
            ),
            // No protocol switch.
            (
                b"GET /a HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                Unsupported,
            ),
            (b"GET /a HTTP/1.1\r\nupgrade: h2c\r\n\r\n", Unsupported),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Malformed,
            ),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
                Malformed,
            ),
            (b"POST /a HTTP/1.1\r\nContent-Length: x\r\n\r\n", Malformed),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 1234567890\r\n\r\n",
                Malformed,
            ),
        ];
        for (input, want) in table {
            assert_eq!(
                p(input),
                Err(*want),
                "{:?}",
                std::string::String::from_utf8_lossy(input)
            );
        }
        for ok in [
            &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n",
        ] {
            let r = p(ok).unwrap();
            assert_eq!((r.chunked, r.content_length), (1, 0));
        }
        assert_eq!(p(b"GET /a HTTP/1.1\r\n\r\n").unwrap().chunked, 0);
        // A long path parses (the event keeps its first bytes).
        let mut long = Vec::from(&b"GET /"[..]);
        long.resize(3000, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        let r = p(&long).unwrap();
        assert_eq!(r.path_len, 2996);
        let mut want = [0u64; HTTP_PATH_BYTES / 8];
        for (k, b) in long[4..4 + HTTP_PATH_BYTES].iter().enumerate() {
            want[k / 8] |= u64::from(*b) << ((k % 8) * 8);
        }
        assert_eq!(r.path_bytes, want);
    }

    #[test]
    fn values_no_rule_reads_are_skipped_but_checked() {
        let mut head = std::vec::Vec::from(&b"GET /a HTTP/1.1\r\nCookie: "[..]);
        head.resize(3000, b'c');
        head.extend_from_slice(b"\r\nHost: web\r\nX-Key: 1\r\n\r\n");
        let x_key = header_name_hash(&K, b"x-key");
        let r = parse_for(&head, head.len(), &K, 0, name_bit(x_key)).unwrap();
        assert_eq!(r.head_len as usize, head.len());
        assert_eq!(r.host, host_condition(&K, b"web"));
        // Only X-Key is kept; the cookie went by `skip_value`.
        assert_eq!(r.headers, 1);
        assert_eq!(r.values[0], header_value_hash(&K, b"x-key", b"1"));
        let all = parse(&head, head.len(), &K).unwrap();
        assert_eq!((all.headers, all.host), (2, r.host));
        // What `feed` refuses in a value, `skip_value` refuses too: a
        // control byte, a bare LF; a CR without its LF is `feed`'s.
        for (at, bad) in [(1000, 0u8), (1000, b'\n'), (2999, 0x7f)] {
            let mut h = head.clone();
            h[at] = bad;
            let got = parse_for(&h, h.len(), &K, 0, 0);
            assert_eq!(got, Err(HttpError::Malformed), "{bad} at {at}");
        }
        let mut h = head.clone();
        h[1000] = b'\r';
        assert_eq!(parse_for(&h, h.len(), &K, 0, 0), Err(HttpError::Malformed));
        // Skipping stops at the CR: the next line is parsed, a Host after
        // a long value counts.
        let mut r = Request::EMPTY;
        parse_begin(&mut r, &K, 0, 0);
        assert_eq!(feed(&head[..64], 64, &mut r), None);
        assert!(!value_skippable(&r), "40 bytes into the value: not yet");
        assert_eq!(feed(&head[64..128], 64, &mut r), None);
        assert!(value_skippable(&r));
        let n = skip_value(&head[128..], 4000, &mut r).unwrap();
        assert_eq!(n, VCHUNK, "a full chunk without a CR");
        let mut at = 128 + n;
        while value_skippable(&r) {
            at += skip_value(&head[at..], 4000, &mut r).unwrap();
        }
        assert_eq!(at, 3001, "up to the CR, included");
        assert!(!value_skippable(&r));
    }

    #[test]
    fn feeding_stops_at_the_head_end() {
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut r = Request::EMPTY;
        parse_begin(&mut r, &K, ALL_DEPTHS, ALL_NAMES);
        let n = two.len().min(CHUNK);
        assert_eq!(feed(&two[..n], n, &mut r), Some(Ok(19)));
        assert_eq!(r.path, path_hash(&K, b"/a"));
        assert_eq!(head_pos(&r), 19);
        // Bytes past `n` are not read.
        parse_begin(&mut r, &K, ALL_DEPTHS, ALL_NAMES);
        assert_eq!(feed(two, 3, &mut r), None);
        assert_eq!(head_pos(&r), 3);
    }

    fn alt(kind: u8, rule: u32) -> HttpAlt {
        HttpAlt {
            kind,
            rule,
            ..Default::default()
        }
    }

    #[test]
    fn judge_exact_prefix_host_headers() {
        let set = HttpSet {
            id: 7,
            depths: 1 << 1,
            names: name_bit(header_name_hash(&K, b"x-key")),
        };
        let mut map = std::collections::BTreeMap::new();
        let k = |m: u8, path: &[u8]| HttpKey {
            set: 7,
            method: m,
            _pad: [0; 3],
            path: path_hash(&K, path),
        };
        map.insert(
            k(method::GET, b"/metrics"),
            HttpValue {
                alts: [
                    alt(alt_kind::EXACT, 1),
                    HttpAlt::default(),
                    HttpAlt::default(),
                    HttpAlt::default(),
                ],
            },
        );
        let mut guarded = alt(alt_kind::PREFIX, 2);
        guarded.host = host_condition(&K, b"web.local");
        guarded.headers[0] = header_name_hash(&K, b"x-key");
        map.insert(
            k(method::POST, b"/api"),
            HttpValue {
                alts: [
                    guarded,
                    HttpAlt::default(),
                    HttpAlt::default(),
                    HttpAlt::default(),
                ],
            },
        );
        let judge_s = |s: &[u8]| judge(&p(s).unwrap(), &set, |key| map.get(key));
        assert_eq!(judge_s(b"GET /metrics HTTP/1.1\r\n\r\n"), 1);
        assert_eq!(judge_s(b"GET /metrics/ HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(judge_s(b"POST /metrics HTTP/1.1\r\n\r\n"), 0);
        let ok = b"POST /api/x HTTP/1.1\r\nHost: WEB.local\r\nX-KEY: 1\r\n\r\n";
        assert_eq!(judge_s(ok), 2);
        assert_eq!(
            judge_s(b"POST /api HTTP/1.1\r\nHost: web.local\r\nx-key: 1\r\n\r\n"),
            2
        );
        assert_eq!(
            judge_s(b"POST /apix HTTP/1.1\r\nHost: web.local\r\nx-key: 1\r\n\r\n"),
            0
        );
        assert_eq!(
            judge_s(b"POST /api/x HTTP/1.1\r\nHost: web.local\r\n\r\n"),
            0
        );
        assert_eq!(
            judge_s(b"POST /api/x HTTP/1.1\r\nHost: other\r\nx-key: 1\r\n\r\n"),
            0
        );
    }
}
