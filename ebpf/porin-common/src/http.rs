//! HTTP/1.x request rules in the datapath: the request parser, the hashed
//! map keys and values, the matcher and the per-connection sequence
//! bookkeeping. Pure and `no_std`: the eBPF program runs this code on a
//! scratch copy of the segment's payload and the host tests (and the
//! differential test) run the very same functions.
//!
//! # What is parsed
//! A request's head must lie in the first [`WINDOW`] bytes of the segment
//! that starts it: `METHOD SP path[?query] SP HTTP/1.0|1.1 CRLF`, then header
//! lines `name: value CRLF`, then `CRLF`. One pass over the bytes hashes
//! (FNV-1a 64, [`fnv`]):
//! - the method (an index, [`method`]; any other token is [`method::OTHER`]);
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
//! # Maps (written by the manager, `src/datapath/http.rs`)
//! | map | type | key → value |
//! | --- | --- | --- |
//! | `PORIN_HTTPS_V1` | hash | [`crate::datapath::PolicyKey`] of an `ALLOW_HTTP` entry → [`HttpSet`] |
//! | `PORIN_HTTPR_V1` | hash | [`HttpKey`] (set, method, path hash) → [`HttpValue`] (up to [`ALTS`] rules) |
//! | `PORIN_HTTPC_V1` | LRU hash | conntrack key → [`HttpConn`] (where the next request starts) |
//!
//! Set ids are derived from the rules' content ([`set_id`]), so a reload
//! that keeps a set's rules keeps its id and its entries, and connections
//! that recorded it stay judged by the same rules.
//!
//! # Cost
//! Per request: one pass over at most [`WINDOW`] bytes, then one lookup for
//! the full path plus one per prefix depth the set's rules use
//! ([`HttpSet::depths`]), whatever the number of rules. Each hit holds up to
//! [`ALTS`] rules (the Host and header conditions of rules sharing method
//! and path), checked against the request's hashed headers.
//!
//! # Verdicts ([`Judgement`])
//! | input | verdict | reason |
//! | --- | --- | --- |
//! | head complete, a rule matches | allow, next request expected after head + Content-Length | — |
//! | head complete, no rule matches | deny | `HttpDenied` |
//! | first byte not a method token (garbage, TLS ClientHello `0x16`), bad request line, bad header line, bare LF, obs-fold, duplicate Content-Length | deny | `HttpMalformed` |
//! | head not ended within the segment (split request line or headers, 1-byte segments) | deny | `HttpUnsupported` |
//! | head longer than [`WINDOW`] bytes | deny | `HttpUnsupported` |
//! | `Transfer-Encoding` (chunked bodies), target not starting with `/` (absolute form, `*`), dot segments, `//`, `\`, `%2e`/`%2f`/`%5c` in the path (servers normalise these) | deny | `HttpUnsupported` |
//! | a second (pipelined) request in the same segment | deny | `HttpUnsupported` |
//! | segment starting after the next request's start (out of order) or straddling it | deny | `HttpUnsupported` |
//! | segment wholly before the next request's start (body, retransmission) | pass | — |
//!
//! # Hashes are not secret
//! FNV-1a is not collision resistant: a client that can compute a path
//! whose 64-bit hash equals an allowed path's would pass. Finding one costs
//! about 2^32 work per target for a determined attacker; keyed hashing is a
//! possible hardening (see README).

/// Bytes of a segment's payload examined for a request head.
pub const WINDOW: usize = 256;
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

/// One FNV-1a 64 step.
#[inline(always)]
pub fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// Map 0 (reserved for "none" in keys and conditions) to 1.
#[inline(always)]
pub fn nonzero(h: u64) -> u64 {
    if h == 0 {
        1
    } else {
        h
    }
}

/// FNV-1a 64 of `bytes` (never 0).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = FNV_BASIS;
    for &b in bytes {
        h = fnv_step(h, b);
    }
    nonzero(h)
}

/// Hash of a path (exact) or a prefix body (`/api` for `/api/*`, empty for
/// `/*`).
pub fn path_hash(path: &[u8]) -> u64 {
    fnv(path)
}

/// Presence condition: the lowercased header name.
pub fn header_name_hash(lower_name: &[u8]) -> u64 {
    fnv(lower_name)
}

/// Value condition: lowercased name, `:`, exact value.
pub fn header_value_hash(lower_name: &[u8], value: &[u8]) -> u64 {
    let mut h = FNV_BASIS;
    for &b in lower_name {
        h = fnv_step(h, b);
    }
    h = fnv_step(h, b':');
    for &b in value {
        h = fnv_step(h, b);
    }
    nonzero(h)
}

/// Host condition: the lowercase host value.
pub fn host_hash(host: &[u8]) -> u64 {
    fnv(host)
}

/// Set id of a rule set: a hash of its canonical text, never 0.
pub fn set_id(canonical: &[u8]) -> u32 {
    let h = fnv(canonical);
    let id = (h ^ (h >> 32)) as u32;
    if id == 0 {
        1
    } else {
        id
    }
}

/// [`fnv`] at compile time, for the names the parser recognises.
const fn const_fnv(bytes: &[u8]) -> u64 {
    let mut h = FNV_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        h = (h ^ bytes[i] as u64).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    if h == 0 {
        1
    } else {
        h
    }
}

const H_HOST: u64 = const_fnv(b"host");
const H_CONTENT_LENGTH: u64 = const_fnv(b"content-length");
const H_TRANSFER_ENCODING: u64 = const_fnv(b"transfer-encoding");
/// Hashes of `method::NAMES[1..10]`, compared with the method token's hash
/// (no byte-wise compares in the kernel).
const H_METHODS: [u64; 9] = [
    const_fnv(b"GET"),
    const_fnv(b"HEAD"),
    const_fnv(b"POST"),
    const_fnv(b"PUT"),
    const_fnv(b"DELETE"),
    const_fnv(b"PATCH"),
    const_fnv(b"OPTIONS"),
    const_fnv(b"CONNECT"),
    const_fnv(b"TRACE"),
];

/// Why a request was not judged by the rules (all deny).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Not an HTTP/1.x request head (garbage, TLS, bad syntax).
    Malformed,
    /// Well-formed as far as seen, but not something the datapath judges:
    /// head split across segments or longer than the window, chunked or
    /// other transfer codings, non-origin-form targets, paths servers would
    /// normalise, pipelining inside a segment, out-of-order segments.
    Unsupported,
}

/// A parsed request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// [`method`] index.
    pub method: u8,
    /// Where the path starts in the payload and its length (no query).
    pub path_start: u16,
    pub path_len: u16,
    /// [`path_hash`] of the whole path.
    pub path: u64,
    /// [`path_hash`] of the path before each of its first slashes:
    /// `prefixes[d]` is the prefix of depth `d` (before slash number `d`,
    /// 0-based; slash 0 gives the empty prefix).
    pub prefixes: [u64; MAX_SEGMENTS],
    /// Valid entries of `prefixes`.
    pub slashes: u8,
    /// [`host_hash`] of the Host value, 0 without one.
    pub host: u64,
    /// [`header_name_hash`] and [`header_value_hash`] of each header kept.
    pub names: [u64; MAX_HEADERS],
    pub values: [u64; MAX_HEADERS],
    pub headers: u8,
    /// Bytes of the head, the blank line included.
    pub head_len: u16,
    pub content_length: u32,
}

impl Request {
    const EMPTY: Request = Request {
        method: 0,
        path_start: 0,
        path_len: 0,
        path: 0,
        prefixes: [0; MAX_SEGMENTS],
        slashes: 0,
        host: 0,
        names: [0; MAX_HEADERS],
        values: [0; MAX_HEADERS],
        headers: 0,
        head_len: 0,
        content_length: 0,
    };

    /// Bytes of the request: head and body.
    pub fn total_len(&self) -> u32 {
        self.head_len as u32 + self.content_length
    }
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

/// Parser states, one byte at a time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Method,
    /// In the path; `seg` counts bytes of the current segment.
    Path,
    Query,
    Version,
    /// After the CR ending a line.
    Lf,
    /// At the start of a header line (or the blank line).
    LineStart,
    Name,
    /// Leading spaces of a value.
    ValueLead,
    Value,
    /// After the CR of the blank line.
    EndLf,
}

/// Parses the request head at the start of `buf` (the first bytes of a
/// segment's payload; `buf.len()` may exceed the payload only if `len`
/// says how much is payload). Never panics, reads only `buf[..min(len,
/// buf.len(), WINDOW)]`.
pub fn parse(buf: &[u8], len: usize) -> Result<Request, HttpError> {
    let n = if len < buf.len() { len } else { buf.len() };
    let n = if n > WINDOW { WINDOW } else { n };
    let mut r = Request::EMPTY;
    let mut st = St::Method;
    let mut after_lf = St::LineStart;
    let mut h: u64 = FNV_BASIS;
    // Value hash up to its last non-blank byte, and the name's hash.
    let mut h_trim: u64 = FNV_BASIS;
    let mut name_h: u64 = 0;
    let mut mlen: usize = 0;
    // Path checks: current segment as a small state (bytes seen, dots).
    let mut seg_len: u32 = 0;
    let mut seg_dots: u32 = 0;
    let mut pct: u8 = 0; // 0 none, 1 after '%', 2 after '%' + '2' or '5'
    let mut pct_hi: u8 = 0;
    let mut version: usize = 0;
    let mut cl_seen = false;
    let mut cl: u32 = 0;
    let mut cl_digits: u32 = 0;
    const VERSION: &[u8; 8] = b"HTTP/1.1";
    let mut i = 0;
    while i < WINDOW {
        if i >= n {
            break;
        }
        let b = buf[i];
        match st {
            St::Method => {
                if b == b' ' {
                    if mlen == 0 {
                        return Err(HttpError::Malformed);
                    }
                    r.method = method_index(nonzero(h));
                    st = St::Path;
                    r.path_start = (i + 1) as u16;
                    h = FNV_BASIS;
                } else if is_tchar(b) && mlen < MAX_METHOD {
                    h = fnv_step(h, b);
                    mlen += 1;
                } else {
                    return Err(HttpError::Malformed);
                }
            }
            St::Path => {
                let first = i == r.path_start as usize;
                if first && b != b'/' {
                    // Absolute form, authority form, `*`: not judged.
                    return if b > b' ' && b < 0x7f {
                        Err(HttpError::Unsupported)
                    } else {
                        Err(HttpError::Malformed)
                    };
                }
                if b == b' ' || b == b'?' {
                    if !seg_ok(seg_len, seg_dots) || pct != 0 {
                        return Err(HttpError::Unsupported);
                    }
                    r.path_len = (i - r.path_start as usize) as u16;
                    r.path = nonzero(h);
                    st = if b == b' ' { St::Version } else { St::Query };
                } else if b <= b' ' || b >= 0x7f || b == b'#' {
                    return Err(HttpError::Malformed);
                } else if b == b'\\' {
                    return Err(HttpError::Unsupported);
                } else {
                    if b == b'/' {
                        if !first && (seg_len == 0 || !seg_ok(seg_len, seg_dots)) {
                            // `//`, `/./`, `/../`
                            return Err(HttpError::Unsupported);
                        }
                        if pct != 0 {
                            return Err(HttpError::Unsupported);
                        }
                        let d = r.slashes as usize;
                        if d < MAX_SEGMENTS {
                            r.prefixes[d] = nonzero(h);
                            r.slashes += 1;
                        }
                        seg_len = 0;
                        seg_dots = 0;
                    } else {
                        seg_len += 1;
                        if b == b'.' {
                            seg_dots += 1;
                        }
                        // Encoded '.', '/', '\': %2e %2f %5c.
                        if pct == 1 {
                            pct = if b == b'2' || b == b'5' { 2 } else { 3 };
                            pct_hi = b;
                        } else if pct == 2 || pct == 3 {
                            let lo = b | 0x20;
                            if pct == 2
                                && ((pct_hi == b'2' && (lo == b'e' || lo == b'f'))
                                    || (pct_hi == b'5' && lo == b'c'))
                            {
                                return Err(HttpError::Unsupported);
                            }
                            pct = 0;
                        } else if b == b'%' {
                            pct = 1;
                        }
                    }
                    h = fnv_step(h, b);
                }
            }
            St::Query => {
                if b == b' ' {
                    st = St::Version;
                } else if b <= b' ' || b >= 0x7f {
                    return Err(HttpError::Malformed);
                }
            }
            St::Version => {
                if version < 7 {
                    if b != VERSION[version] {
                        return Err(HttpError::Malformed);
                    }
                    version += 1;
                } else if version == 7 {
                    if b != b'0' && b != b'1' {
                        return Err(HttpError::Malformed);
                    }
                    version += 1;
                } else if b == b'\r' {
                    st = St::Lf;
                    after_lf = St::LineStart;
                } else {
                    return Err(HttpError::Malformed);
                }
            }
            St::Lf => {
                if b != b'\n' {
                    return Err(HttpError::Malformed);
                }
                st = after_lf;
            }
            St::LineStart => {
                if b == b'\r' {
                    st = St::EndLf;
                } else if is_tchar(b) {
                    h = fnv_step(FNV_BASIS, b.to_ascii_lowercase());
                    st = St::Name;
                } else {
                    // obs-fold (leading space), bare LF, other bytes.
                    return Err(HttpError::Malformed);
                }
            }
            St::Name => {
                if b == b':' {
                    name_h = nonzero(h);
                    if name_h == H_TRANSFER_ENCODING {
                        return Err(HttpError::Unsupported);
                    }
                    if name_h == H_CONTENT_LENGTH {
                        if cl_seen {
                            return Err(HttpError::Malformed);
                        }
                        cl_seen = true;
                    }
                    h = fnv_step(h, b':');
                    h_trim = h;
                    st = St::ValueLead;
                } else if is_tchar(b) {
                    h = fnv_step(h, b.to_ascii_lowercase());
                } else {
                    return Err(HttpError::Malformed);
                }
            }
            St::ValueLead | St::Value => {
                if b == b'\r' {
                    finish_header(&mut r, name_h, h_trim);
                    if name_h == H_CONTENT_LENGTH {
                        if cl_digits == 0 {
                            return Err(HttpError::Malformed);
                        }
                        r.content_length = cl;
                    }
                    st = St::Lf;
                    after_lf = St::LineStart;
                } else if b == b' ' || b == b'\t' {
                    if st == St::Value {
                        h = fnv_step(h, b);
                    }
                } else if b < b' ' || b == 0x7f {
                    return Err(HttpError::Malformed);
                } else {
                    if name_h == H_CONTENT_LENGTH {
                        // Digits only, no blanks inside.
                        if !b.is_ascii_digit() || cl_digits >= 9 || (st == St::Value && h != h_trim)
                        {
                            return Err(HttpError::Malformed);
                        }
                        cl = cl * 10 + (b - b'0') as u32;
                        cl_digits += 1;
                    }
                    let c = if name_h == H_HOST {
                        b.to_ascii_lowercase()
                    } else {
                        b
                    };
                    h = fnv_step(h, c);
                    h_trim = h;
                    st = St::Value;
                }
            }
            St::EndLf => {
                if b != b'\n' {
                    return Err(HttpError::Malformed);
                }
                r.head_len = (i + 1) as u16;
                return Ok(r);
            }
        }
        i += 1;
    }
    // The head did not end inside what we saw (every byte so far was
    // valid): split across segments, or longer than the window.
    Err(HttpError::Unsupported)
}

/// A path segment other than `.` and `..`.
#[inline(always)]
fn seg_ok(len: u32, dots: u32) -> bool {
    !(len == dots && (len == 1 || len == 2))
}

#[inline(always)]
fn finish_header(r: &mut Request, name_h: u64, value_h: u64) {
    if name_h == H_HOST {
        // The value hash covers "host:" + value: rehash without the name
        // prefix is not possible incrementally, so Host conditions are
        // compiled with the same prefix ([`host_condition`]).
        if r.host == 0 {
            r.host = nonzero(value_h);
        }
        return;
    }
    if name_h == H_CONTENT_LENGTH {
        return;
    }
    let k = r.headers as usize;
    if k < MAX_HEADERS {
        r.names[k] = name_h;
        r.values[k] = nonzero(value_h);
        r.headers += 1;
    }
}

/// The hash a `host` rule field compiles to (matches [`Request::host`]).
pub fn host_condition(host: &[u8]) -> u64 {
    header_value_hash(b"host", host)
}

#[inline(always)]
fn method_index(h: u64) -> u8 {
    let mut k = 0;
    while k < H_METHODS.len() {
        if H_METHODS[k] == h {
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
    /// prefix), so prefix `d` of a request path is looked up.
    pub depths: u32,
}

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

/// `PORIN_HTTPC_V1` value: one HTTP-ruled connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HttpConn {
    /// TCP sequence number where the next request must start.
    pub next_seq: u32,
    /// The rule set ([`HttpSet`]) recorded when the connection was allowed.
    pub set: HttpSet,
    /// [`conn_state`] value.
    pub state: u32,
}

pub mod conn_state {
    /// Between requests: the next payload byte at `next_seq` starts one.
    pub const OPEN: u32 = 1;
    /// A request was denied: every later payload segment is denied too.
    pub const DENIED: u32 = 2;
}

/// The state of a connection whose SYN (sequence number `syn_seq`) was
/// allowed under `set`: its first request starts right after the SYN.
#[inline(always)]
pub fn conn_at_syn(syn_seq: u32, set: HttpSet) -> HttpConn {
    HttpConn {
        next_seq: syn_seq.wrapping_add(1),
        set,
        state: conn_state::OPEN,
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
        if set.depths & (1 << d) != 0 {
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

/// What to do with a client→server segment of an HTTP-ruled connection
/// ([`segment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes the rules already judged (a body, a retransmission): pass.
    Pass,
    /// A request starts here: parse and judge it.
    Request,
    /// Deny with this reason.
    Deny(HttpError),
}

/// Where `seq` lies against the next request's start: the segment `[seq,
/// seq + len)` must end at or before it, or start exactly at it.
#[inline(always)]
pub fn segment(conn: &HttpConn, seq: u32, len: u32) -> Segment {
    if len == 0 {
        // ACKs, FINs, RSTs: no request bytes.
        return Segment::Pass;
    }
    if conn.state != conn_state::OPEN {
        return Segment::Deny(HttpError::Unsupported);
    }
    if seq == conn.next_seq {
        return Segment::Request;
    }
    // Serial-number arithmetic: how far the segment's end lies before the
    // next request's start.
    let end = seq.wrapping_add(len);
    let before = conn.next_seq.wrapping_sub(end);
    if (before as i32) >= 0 && (conn.next_seq.wrapping_sub(seq) as i32) > 0 {
        Segment::Pass
    } else {
        Segment::Deny(HttpError::Unsupported)
    }
}

/// After a request at `seq` in a segment of `len` payload bytes was
/// judged: the connection's new state, or the reason to deny (a second
/// request inside the same segment).
#[inline(always)]
pub fn advance(conn: &mut HttpConn, seq: u32, len: u32, req: &Request) -> Result<(), HttpError> {
    let total = req.total_len();
    if len > total {
        return Err(HttpError::Unsupported);
    }
    conn.next_seq = seq.wrapping_add(total);
    Ok(())
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding.
    unsafe impl aya::Pod for super::HttpSet {}
    unsafe impl aya::Pod for super::HttpKey {}
    unsafe impl aya::Pod for super::HttpValue {}
    unsafe impl aya::Pod for super::HttpConn {}
}

const _: () = assert!(core::mem::size_of::<HttpSet>() == 8);
const _: () = assert!(core::mem::size_of::<HttpKey>() == 16);
const _: () = assert!(core::mem::size_of::<HttpAlt>() == 48);
const _: () = assert!(core::mem::size_of::<HttpValue>() == 48 * ALTS);
const _: () = assert!(core::mem::size_of::<HttpConn>() == 16);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn p(s: &[u8]) -> Result<Request, HttpError> {
        parse(s, s.len())
    }

    #[test]
    fn constants_are_the_hashes_of_their_names() {
        assert_eq!(H_HOST, fnv(b"host"));
        assert_eq!(H_CONTENT_LENGTH, fnv(b"content-length"));
        assert_eq!(H_METHODS[2], fnv(b"POST"));
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
        assert_eq!(r.path, path_hash(b"/api/v1/x"));
        assert_eq!(r.slashes, 3);
        assert_eq!(r.prefixes[0], path_hash(b""));
        assert_eq!(r.prefixes[1], path_hash(b"/api"));
        assert_eq!(r.prefixes[2], path_hash(b"/api/v1"));
        assert_eq!(r.host, host_condition(b"web.local:80"));
        assert_eq!(r.headers, 1);
        assert_eq!(r.names[0], header_name_hash(b"x-key"));
        assert_eq!(r.values[0], header_value_hash(b"x-key", b"abc"));
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
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Unsupported,
            ),
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
        let mut long = Vec::from(&b"GET /"[..]);
        long.resize(300, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(p(&long), Err(HttpError::Unsupported));
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
        };
        let mut map = std::collections::BTreeMap::new();
        let k = |m: u8, path: &[u8]| HttpKey {
            set: 7,
            method: m,
            _pad: [0; 3],
            path: path_hash(path),
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
        guarded.host = host_condition(b"web.local");
        guarded.headers[0] = header_name_hash(b"x-key");
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

    #[test]
    fn sequence_bookkeeping() {
        let mut c = conn_at_syn(u32::MAX, HttpSet::default());
        assert_eq!(c.next_seq, 0);
        assert_eq!(segment(&c, 0, 10), Segment::Request);
        assert_eq!(segment(&c, 1, 10), Segment::Deny(HttpError::Unsupported));
        assert_eq!(segment(&c, 5, 0), Segment::Pass);
        let r = p(b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n").unwrap();
        assert_eq!(advance(&mut c, 0, 200, &r), Err(HttpError::Unsupported));
        advance(&mut c, 0, 50, &r).unwrap();
        let end = r.total_len();
        assert_eq!(segment(&c, 50, end - 50), Segment::Pass);
        assert_eq!(
            segment(&c, 50, end - 49),
            Segment::Deny(HttpError::Unsupported)
        );
        assert_eq!(segment(&c, 0, 10), Segment::Pass); // retransmission
        assert_eq!(segment(&c, end, 1), Segment::Request);
        assert_eq!(
            segment(&c, end + 1, 1),
            Segment::Deny(HttpError::Unsupported)
        );
        c.state = conn_state::DENIED;
        assert_eq!(segment(&c, end, 1), Segment::Deny(HttpError::Unsupported));
    }
}
