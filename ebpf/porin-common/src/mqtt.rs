//! MQTT rules judged on the byte stream the broker reads: the packet
//! parser, the rule automaton's map types and the verdicts, pure and
//! `no_std`. The kernel's MQTT stage (the eBPF crate's `mqtt.rs`) feeds
//! the client→broker stream through [`feed`], [`CHUNK`] bytes per tail
//! call, with the per-connection bookkeeping of
//! [`crate::http_stream`] (the same `PORIN_HTTPC_V1` entry, the same
//! rules for retransmissions, urgent data and out-of-order bytes); the
//! host tests and the model test run the same functions.
//!
//! # What is a head
//! MQTT is length-prefixed: a fixed header (type and flags, then the
//! remaining length, a varint of 1–4 bytes), then the packet's bytes.
//! Porin parses a packet's *head*, the bytes a rule reads, and skips the
//! rest by count, like an HTTP body:
//!
//! | packet | head | judged on |
//! | --- | --- | --- |
//! | CONNECT | through the client id | the client id ([`MqttSet::cid_prefixes`], `CID_*` keys) |
//! | PUBLISH | through the topic | the topic (publish automaton), QoS, retain, size |
//! | SUBSCRIBE | the whole packet | every filter (subscribe automaton, subset test) |
//! | UNSUBSCRIBE, PINGREQ, PUBACK, PUBREC, PUBREL, PUBCOMP, DISCONNECT, AUTH | the fixed header | allowed |
//! | CONNACK, SUBACK, UNSUBACK, PINGRESP (server packets), type 0 | — | `Malformed` |
//!
//! The first packet must be CONNECT (without a Will: its topic is not
//! judged, so it is refused), and only the first: anything else
//! on an MQTT-ruled port (TLS, WebSocket's HTTP upgrade, a second
//! CONNECT) is `Malformed`. A broker acts on no packet before all of it
//! arrived, so a segment that ends inside a head passes, and the one that
//! completes it is judged.
//!
//! # Topics and the automaton
//! A policy's `publish` patterns and `subscribe` patterns are compiled on
//! the host into one deterministic automaton each (subset construction
//! over the patterns' levels, `policy/mqtt.rs`); its edges are
//! `PORIN_MQTTT_V1` entries keyed by ([`MqttKey`]) the set, the node, the
//! edge's kind and the keyed SipHash of the level's bytes. The parser
//! hashes a topic level by level and takes one edge per level:
//! - the literal edge of the level's hash ([`kind::LIT`], or
//!   [`kind::LIT_CID`] when the level equals the connection's client id,
//!   for `{client_id}` levels), else
//! - the node's edge for any other level ([`kind::OTHER`] /
//!   [`kind::OTHER_CID`]: `+` levels);
//! - a node whose [`node_flag::ALL`] is set has a `#` below it: every
//!   topic from there on matches (the node's own included, as `a/#`
//!   matches `a`). [`node_flag::ACCEPT`]: a pattern ends there.
//!
//! A topic whose first level starts with `$` (`$SYS/...`) takes no
//! wildcard edge at the root, as MQTT's own matching says.
//!
//! A SUBSCRIBE filter is allowed only if every topic it can match is
//! allowed: a literal level walks as in a topic; a `+` level takes the
//! [`kind::OTHER`] edge only (the state that edge leads to is contained in
//! every literal's, so what it accepts every level accepts); a `#` level
//! needs [`node_flag::ALL`] where it stands. This is exact for one
//! pattern and sound for a union: a filter that only several patterns
//! together cover (`a` and `a/+/#` cover `a/#`) is refused.
//!
//! # MQTT 5
//! Properties of CONNECT and SUBSCRIBE are skipped by their length. A
//! PUBLISH with an empty topic (a topic alias stands for it) is refused,
//! [`MqttError::TopicAlias`]: the topic it stands for was judged on an
//! earlier packet, but Porin keeps no table of aliases. A PUBLISH that
//! *sets* an alias carries its topic and is judged on it.

use crate::http_stream::{conn_state, HttpConn};
use crate::sip::{Sip, SipKey};

/// Head bytes judged per tail call of the kernel's stage. Half of HTTP's:
/// the verifier's work grows with it (`tests/verifier_cost.rs` on 6.18:
/// 157,004 instructions at 32, 312,647 at 64, where 5.10, which prunes
/// less, refused HTTP's heavier programs near 300,000); a typical IoT
/// PUBLISH head (fixed header, a topic of up to 27 bytes) still takes one
/// call.
pub const CHUNK: usize = 32;
/// Longest head: CONNECT through the client id (properties included),
/// PUBLISH through the topic, a whole SUBSCRIBE. Longer is `TooLarge`.
pub const MAX_HEAD: u32 = 1024;
/// Bytes of a topic, filter or client id kept for the flow event.
pub const TEXT_BYTES: usize = 64;
/// Client-id prefix rules are at most this many bytes long (bits of
/// [`MqttSet::cid_prefixes`]).
pub const MAX_CID_PREFIX: usize = 63;

/// Packet types (the fixed header's high nibble).
pub mod ptype {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;

    /// The packet's name, for events and logs.
    pub fn name(t: u8) -> &'static str {
        match t {
            CONNECT => "CONNECT",
            CONNACK => "CONNACK",
            PUBLISH => "PUBLISH",
            PUBACK => "PUBACK",
            PUBREC => "PUBREC",
            PUBREL => "PUBREL",
            PUBCOMP => "PUBCOMP",
            SUBSCRIBE => "SUBSCRIBE",
            SUBACK => "SUBACK",
            UNSUBSCRIBE => "UNSUBSCRIBE",
            UNSUBACK => "UNSUBACK",
            PINGREQ => "PINGREQ",
            PINGRESP => "PINGRESP",
            DISCONNECT => "DISCONNECT",
            AUTH => "AUTH",
            _ => "?",
        }
    }
}

/// Protocol levels (CONNECT's level byte).
pub mod level {
    pub const V311: u8 = 4;
    pub const V5: u8 = 5;
}

/// Why a stream is refused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttError {
    /// Not MQTT 3.1.1 or 5.0 as a client sends it (bad lengths, flags,
    /// a packet before CONNECT, a server's packet, TLS, WebSocket).
    Malformed = 1,
    /// MQTT Porin does not judge: protocol 3.1 (`MQIsdp`), more head
    /// bytes in one packet than the stage parses, lost state.
    Unsupported = 2,
    /// A head longer than [`MAX_HEAD`].
    TooLarge = 3,
    /// A PUBLISH with an empty topic (MQTT 5 topic alias).
    TopicAlias = 4,
}

impl MqttError {
    /// From its `u32`; unknown values are `Unsupported`.
    #[inline(always)]
    pub fn from_u32(e: u32) -> MqttError {
        if e == MqttError::Malformed as u32 {
            MqttError::Malformed
        } else if e == MqttError::TooLarge as u32 {
            MqttError::TooLarge
        } else if e == MqttError::TopicAlias as u32 {
            MqttError::TopicAlias
        } else {
            MqttError::Unsupported
        }
    }
}

/// [`MqttSet::flags`].
pub mod set_flag {
    /// The highest QoS a PUBLISH may have: bits 0–1.
    pub const MAX_QOS: u32 = 0x3;
    /// A PUBLISH may set RETAIN.
    pub const RETAIN: u32 = 0x4;
    /// Any client id is allowed (no `client_id` rule).
    pub const ANY_CLIENT: u32 = 0x8;
}

/// [`MqttNext::flags`] and [`MqttSet`]'s root flags.
pub mod node_flag {
    /// A pattern ends here: a topic ending here matches.
    pub const ACCEPT: u32 = 1;
    /// A `#` is below: this topic and every one under it match.
    pub const ALL: u32 = 2;
}

/// [`MqttKey::kind`]: what an automaton entry is.
pub mod kind {
    /// A level's literal edge.
    pub const LIT: u16 = 1;
    /// A level's literal edge when the level equals the client id.
    pub const LIT_CID: u16 = 2;
    /// The edge for a level without a literal edge (`+`).
    pub const OTHER: u16 = 3;
    /// The same, when the level equals the client id.
    pub const OTHER_CID: u16 = 4;
    /// A client id allowed exactly (hash of the id; node 0).
    pub const CID_EXACT: u16 = 5;
    /// A client-id prefix (hash of the prefix; node 0).
    pub const CID_PREFIX: u16 = 6;
}

/// The publish automaton's root node.
pub const PUBLISH_ROOT: u16 = 0;
/// The subscribe automaton's root node.
pub const SUBSCRIBE_ROOT: u16 = 1;

/// `PORIN_MQTTS_V1` value, keyed by the set id: what a set allows besides
/// its automaton's edges.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct MqttSet {
    pub id: u32,
    /// [`set_flag`] bits.
    pub flags: u32,
    /// Largest PUBLISH (remaining length, bytes); 0: no limit.
    pub max_size: u32,
    /// [`node_flag`] bits of the publish root.
    pub publish_root: u32,
    /// [`node_flag`] bits of the subscribe root.
    pub subscribe_root: u32,
    /// The 1-based number of the policy whose rules these are (events).
    pub rule: u32,
    /// Bit `i`: some client-id rule is a prefix of `i` bytes
    /// ([`kind::CID_PREFIX`] entries hold their hashes).
    pub cid_prefixes: u64,
}

/// `PORIN_MQTTT_V1` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct MqttKey {
    pub set: u32,
    pub node: u16,
    /// [`kind`].
    pub kind: u16,
    /// The level's (or client id's) keyed hash; 0 for `OTHER*`.
    pub hash: u64,
}

/// `PORIN_MQTTT_V1` value: where an edge leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct MqttNext {
    pub node: u32,
    /// [`node_flag`] bits of `node`.
    pub flags: u32,
}

/// Map capacities.
pub mod max_entries {
    /// Rule sets.
    pub const SETS: u32 = 1024;
    /// Automaton edges and client-id entries of every set.
    pub const EDGES: u32 = 16384;
    /// Heads that span segments.
    pub const HEADS: u32 = 4096;
}

/// A node of no automaton: no edge leads on.
pub const DEAD: u32 = u32::MAX;

/// [`MqttHead::phase`]: what the next byte is.
pub mod phase {
    pub const TYPE: u8 = 0;
    pub const RLEN: u8 = 1;
    /// CONNECT: the protocol name, 6 bytes (`00 04 M Q T T`).
    pub const C_NAME: u8 = 2;
    pub const C_LEVEL: u8 = 3;
    pub const C_FLAGS: u8 = 4;
    pub const C_KEEPALIVE: u8 = 5;
    /// A varint: the properties' length (MQTT 5).
    pub const C_PROPLEN: u8 = 6;
    pub const C_PROPS: u8 = 7;
    pub const C_CIDLEN: u8 = 8;
    pub const C_CID: u8 = 9;
    pub const P_TLEN: u8 = 10;
    pub const P_TOPIC: u8 = 11;
    pub const S_PKTID: u8 = 12;
    pub const S_PROPLEN: u8 = 13;
    pub const S_PROPS: u8 = 14;
    pub const S_FLEN: u8 = 15;
    pub const S_FILTER: u8 = 16;
    pub const S_OPTS: u8 = 17;
}

/// The parser's state inside one packet's head; kept in
/// `PORIN_MQTTH_V1` while a head spans segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MqttHead {
    /// The current level's (or client id's) hash so far.
    pub sip: Sip,
    /// The hash key, for restarting `sip` at each level.
    pub key: SipKey,
    /// The connection's client id hash (`{client_id}` levels), when known.
    pub client: u64,
    /// [`MqttSet::cid_prefixes`].
    pub cid_prefixes: u64,
    /// Packet bytes after the current one (once the remaining length is
    /// known).
    pub left: u32,
    /// The packet's remaining length.
    pub rlen: u32,
    /// A length being read (varint or u16).
    pub acc: u32,
    /// Bytes left of the current field.
    pub field: u32,
    /// Automaton node and its [`node_flag`] bits.
    pub node: u32,
    pub nflags: u32,
    /// `MqttSet::flags` and `max_size` of the connection's set, and its id.
    pub set_flags: u32,
    pub max_size: u32,
    pub set: u32,
    /// The root flags of the automaton being walked.
    pub root: u32,
    pub subscribe_root: u32,
    /// Bytes of the current text (topic, filter, client id) so far.
    pub text_len: u32,
    /// [`MqttSet::rule`].
    pub rule: u32,
    /// [`phase`].
    pub phase: u8,
    /// The packet's type and flags (fixed header).
    pub ptype: u8,
    pub pflags: u8,
    /// Varint shift.
    pub shift: u8,
    /// Protocol level of the connection (0 before CONNECT).
    pub level: u8,
    /// 1 when [`MqttHead::client`] is known.
    pub has_client: u8,
    /// Index of the current level.
    pub depth: u8,
    /// First byte of the text is `$`.
    pub dollar: u8,
    /// The current filter level's wildcard: 0, `+` or `#`.
    pub wild: u8,
    /// 1 once a client-id rule matched.
    pub hit: u8,
    /// Filters of the SUBSCRIBE so far.
    pub filters: u8,
    /// The byte [`text_byte`] is at (read back from memory for each test).
    pub cur: u8,
    /// [`text_byte`]'s facts about that byte (`tb` bits), kept in memory.
    pub work: u32,
    pub _pad: u32,
    /// The first [`TEXT_BYTES`] bytes of the text, for the event, in
    /// little-endian words (zero past the text), as the event carries them.
    pub text: [u64; TEXT_BYTES / 8],
}

/// The connection facts a head's parse starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Session {
    /// Protocol level (0 before CONNECT).
    pub level: u8,
    /// The client id's hash, when it is known (non-empty).
    pub client: Option<u64>,
}

/// A head parsed to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    /// Packet type.
    pub ptype: u8,
    /// Whether the rules allow the packet.
    pub allowed: bool,
    /// Bytes of the packet after its head, to skip.
    pub body: u32,
}

/// A volatile store. The kernel's stage has no BPF-to-BPF calls (5.10's
/// arm64 JIT refuses them next to tail calls), and LLVM merges runs of
/// plain zero stores into a call to `memset`.
macro_rules! put {
    ($e:expr, $v:expr) => {{
        let v = $v;
        // SAFETY: a plain field of a live `&mut`.
        unsafe { core::ptr::write_volatile(&mut $e, v) }
    }};
}

/// Starts a head's parse under the connection's `set`.
#[inline(always)]
pub fn begin(h: &mut MqttHead, key: &SipKey, set: &MqttSet, s: &Session) {
    put!(h.key.k0, key.k0);
    put!(h.key.k1, key.k1);
    restart_hash(h);
    put!(h.client, s.client.unwrap_or(0));
    put!(h.has_client, u8::from(s.client.is_some()));
    put!(h.level, s.level);
    put!(h.left, 0);
    put!(h.rlen, 0);
    put!(h.acc, 0);
    put!(h.field, 0);
    put!(h.node, DEAD);
    put!(h.nflags, 0);
    put!(h.set, set.id);
    put!(h.rule, set.rule);
    put!(h.set_flags, set.flags);
    put!(h.max_size, set.max_size);
    put!(h.root, set.publish_root);
    put!(h.subscribe_root, set.subscribe_root);
    put!(h.cid_prefixes, set.cid_prefixes);
    put!(h.phase, phase::TYPE);
    put!(h.ptype, 0);
    put!(h.pflags, 0);
    put!(h.shift, 0);
    put!(h.hit, 0);
    put!(h.filters, 0);
    clear_text(h);
}

/// Starts the hash of a new level (or text) under the head's key.
#[inline(always)]
fn restart_hash(h: &mut MqttHead) {
    let fresh = Sip::new(&h.key);
    put!(h.sip.v[0], fresh.v[0]);
    put!(h.sip.v[1], fresh.v[1]);
    put!(h.sip.v[2], fresh.v[2]);
    put!(h.sip.v[3], fresh.v[3]);
    put!(h.sip.m, 0);
    put!(h.sip.n, 0);
}

/// Starts a new text (topic, filter, client id).
#[inline(always)]
fn clear_text(h: &mut MqttHead) {
    put!(h.text_len, 0);
    put!(h.depth, 0);
    put!(h.dollar, 0);
    put!(h.wild, 0);
    let mut w = 0;
    while w < TEXT_BYTES / 8 {
        put!(h.text[w], 0);
        w += 1;
    }
}

/// The outcome of one byte.
enum Step {
    /// The head goes on.
    More,
    /// The head ended with this byte.
    End(Judged),
}

/// Feeds `buf[..min(n, buf.len(), CHUNK)]` to the head parser. `lookup`
/// reads the set's automaton (`PORIN_MQTTT_V1`). `Some(Ok((k, j)))`: the
/// head ended with byte `k - 1` (the bytes after it are the packet's
/// body, then the next packet); `Some(Err(_))`: the stream is refused;
/// `None`: every byte was consumed and the head goes on.
#[inline(always)]
pub fn feed<F>(
    buf: &[u8],
    n: usize,
    h: &mut MqttHead,
    lookup: &F,
) -> Option<Result<(usize, Judged), MqttError>>
where
    F: Fn(&MqttKey) -> Option<MqttNext>,
{
    let mut j = 0;
    while j < CHUNK {
        if j >= n {
            break;
        }
        let Some(&b) = buf.get(j) else {
            break;
        };
        j += 1;
        match step(h, b, lookup) {
            Err(e) => return Some(Err(e)),
            Ok(Step::End(judged)) => return Some(Ok((j, judged))),
            Ok(Step::More) => {}
        }
    }
    None
}

/// Takes one byte of the packet after its fixed header (`left` counts
/// down); a field running past the packet is `Malformed`.
#[inline(always)]
fn take(h: &mut MqttHead) -> Result<(), MqttError> {
    if h.left == 0 {
        return Err(MqttError::Malformed);
    }
    h.left -= 1;
    Ok(())
}

/// The end of a head: the rest of the packet is body.
#[inline(always)]
fn end(h: &MqttHead, allowed: bool) -> Step {
    Step::End(Judged {
        ptype: h.ptype,
        allowed,
        body: h.left,
    })
}

#[inline(always)]
fn step<F>(h: &mut MqttHead, b: u8, lookup: &F) -> Result<Step, MqttError>
where
    F: Fn(&MqttKey) -> Option<MqttNext>,
{
    let ph = h.phase;
    if ph == phase::TYPE {
        let t = b >> 4;
        let f = b & 0xf;
        let connected = h.level != 0;
        let ok = match t {
            ptype::CONNECT => !connected && f == 0,
            ptype::PUBLISH => connected && (f >> 1) & 3 != 3 && !((f >> 1) & 3 == 0 && f & 8 != 0),
            ptype::PUBREL | ptype::SUBSCRIBE | ptype::UNSUBSCRIBE => connected && f == 2,
            ptype::PUBACK | ptype::PUBREC | ptype::PUBCOMP | ptype::PINGREQ | ptype::DISCONNECT => {
                connected && f == 0
            }
            // MQTT 5 only, after CONNECT (a broker might take it before).
            ptype::AUTH => f == 0 && h.level == level::V5,
            _ => false,
        };
        if !ok {
            return Err(MqttError::Malformed);
        }
        h.ptype = t;
        h.pflags = f;
        h.phase = phase::RLEN;
        h.acc = 0;
        h.shift = 0;
        return Ok(Step::More);
    }
    if ph == phase::RLEN || ph == phase::C_PROPLEN || ph == phase::S_PROPLEN {
        if ph != phase::RLEN {
            take(h)?;
        }
        if h.shift > 21 {
            return Err(MqttError::Malformed);
        }
        h.acc |= u32::from(b & 0x7f) << h.shift;
        if b & 0x80 != 0 {
            h.shift += 7;
            return Ok(Step::More);
        }
        let v = h.acc;
        h.acc = 0;
        h.shift = 0;
        if ph == phase::RLEN {
            h.left = v;
            h.rlen = v;
            return after_rlen(h);
        }
        h.field = v;
        if v > h.left {
            return Err(MqttError::Malformed);
        }
        h.phase = if ph == phase::C_PROPLEN {
            if v == 0 {
                h.field = 2;
                phase::C_CIDLEN
            } else {
                phase::C_PROPS
            }
        } else if v == 0 {
            h.field = 2;
            phase::S_FLEN
        } else {
            phase::S_PROPS
        };
        return Ok(Step::More);
    }
    take(h)?;
    if ph == phase::C_NAME {
        // `00 04 M Q T T`: byte 6 - field.
        const NAME: [u8; 6] = [0, 4, b'M', b'Q', b'T', b'T'];
        let i = (6 - h.field) as usize;
        let Some(&want) = NAME.get(i) else {
            return Err(MqttError::Malformed);
        };
        if b != want {
            // `00 06 MQIsdp`: MQTT 3.1.
            return Err(if i == 1 && b == 6 {
                MqttError::Unsupported
            } else {
                MqttError::Malformed
            });
        }
        h.field -= 1;
        if h.field == 0 {
            h.phase = phase::C_LEVEL;
        }
        return Ok(Step::More);
    }
    if ph == phase::C_LEVEL {
        if b != level::V311 && b != level::V5 {
            return Err(if b == 3 {
                MqttError::Unsupported
            } else {
                MqttError::Malformed
            });
        }
        h.level = b;
        h.phase = phase::C_FLAGS;
        return Ok(Step::More);
    }
    if ph == phase::C_FLAGS {
        if b & 1 != 0 {
            return Err(MqttError::Malformed);
        }
        if b & 0x04 != 0 {
            // A Will: a message the broker publishes for the client when
            // it goes (a RST from Porin included), to a topic in the
            // CONNECT's body, which is not judged. Refused rather than
            // passed unjudged.
            return Err(MqttError::Unsupported);
        }
        h.phase = phase::C_KEEPALIVE;
        h.field = 2;
        return Ok(Step::More);
    }
    if ph == phase::C_KEEPALIVE {
        h.field -= 1;
        if h.field == 0 {
            if h.level == level::V5 {
                h.phase = phase::C_PROPLEN;
            } else {
                h.phase = phase::C_CIDLEN;
                h.field = 2;
            }
        }
        return Ok(Step::More);
    }
    if ph == phase::C_PROPS || ph == phase::S_PROPS {
        h.field -= 1;
        if h.field == 0 {
            h.field = 2;
            h.phase = if ph == phase::C_PROPS {
                phase::C_CIDLEN
            } else {
                phase::S_FLEN
            };
        }
        return Ok(Step::More);
    }
    if ph == phase::C_CIDLEN || ph == phase::P_TLEN || ph == phase::S_FLEN {
        h.acc = (h.acc << 8) | u32::from(b);
        h.field -= 1;
        if h.field != 0 {
            return Ok(Step::More);
        }
        let len = h.acc;
        h.acc = 0;
        if len > h.left {
            return Err(MqttError::Malformed);
        }
        h.field = len;
        clear_text(h);
        restart_hash(h);
        if ph == phase::C_CIDLEN {
            h.phase = phase::C_CID;
            h.hit = 0;
            if len == 0 {
                // The broker assigns one: only `*` names it.
                h.has_client = 0;
                return Ok(end(h, h.set_flags & set_flag::ANY_CLIENT != 0));
            }
            return Ok(Step::More);
        }
        if ph == phase::P_TLEN {
            if len == 0 {
                return Err(MqttError::TopicAlias);
            }
            h.phase = phase::P_TOPIC;
            h.node = u32::from(PUBLISH_ROOT);
            h.nflags = h.root;
            return Ok(Step::More);
        }
        if len == 0 {
            // An empty filter.
            return Err(MqttError::Malformed);
        }
        h.phase = phase::S_FILTER;
        h.node = u32::from(SUBSCRIBE_ROOT);
        h.nflags = h.subscribe_root;
        return Ok(Step::More);
    }
    if ph == phase::S_PKTID {
        h.field -= 1;
        if h.field == 0 {
            if h.level == level::V5 {
                h.phase = phase::S_PROPLEN;
            } else {
                h.phase = phase::S_FLEN;
                h.field = 2;
            }
        }
        return Ok(Step::More);
    }
    if ph == phase::C_CID || ph == phase::P_TOPIC || ph == phase::S_FILTER {
        return text_byte(h, ph, b, lookup);
    }
    if ph == phase::S_OPTS {
        // Reserved bits: 2–7 in 3.1.1, 6–7 in 5.0; QoS 3 is invalid.
        let reserved = if h.level == level::V5 { 0xc0 } else { 0xfc };
        if b & reserved != 0 || b & 3 == 3 {
            return Err(MqttError::Malformed);
        }
        h.filters = h.filters.saturating_add(1);
        if h.left == 0 {
            // Every filter was covered (a refused one ends the head).
            return Ok(end(h, true));
        }
        h.phase = phase::S_FLEN;
        h.field = 2;
        return Ok(Step::More);
    }
    Err(MqttError::Malformed)
}

/// The remaining length is known: where the packet goes on.
#[inline(always)]
fn after_rlen(h: &mut MqttHead) -> Result<Step, MqttError> {
    match h.ptype {
        ptype::CONNECT => {
            h.phase = phase::C_NAME;
            h.field = 6;
            Ok(Step::More)
        }
        ptype::PUBLISH => {
            h.phase = phase::P_TLEN;
            h.field = 2;
            Ok(Step::More)
        }
        ptype::SUBSCRIBE => {
            h.phase = phase::S_PKTID;
            h.field = 2;
            Ok(Step::More)
        }
        _ => Ok(end(h, true)),
    }
}

/// Keeps byte `b` of the current text for the event.
#[inline(always)]
fn keep_text(h: &mut MqttHead, b: u8) {
    let i = h.text_len as usize;
    if let Some(w) = h.text.get_mut(i / 8) {
        *w |= u64::from(b) << ((i % 8) * 8);
    }
    h.text_len = h.text_len.wrapping_add(1);
}

/// [`MqttHead::work`] bits.
mod tb {
    pub const CID: u32 = 1;
    pub const FILTER: u32 = 2;
    pub const SLASH: u32 = 4;
    pub const LAST: u32 = 8;
    pub const PREFIX: u32 = 16;
    pub const HASH_WILD: u32 = 32;
    pub const LEVEL: u32 = 64;
}

/// A volatile load: what it reads is unknown to the verifier, so paths
/// that tested it differently still meet as one state (see [`text_byte`]).
macro_rules! get {
    ($e:expr) => {
        // SAFETY: a plain field of a live `&mut MqttHead`.
        unsafe { core::ptr::read_volatile(&$e) }
    };
}

/// One byte of a text: a client id, a topic or a filter. The verifier
/// walks this for every byte of a chunk, so everything costly (the hash's
/// finalisation, the lookups) has one site, taken at most once per byte (a
/// level ends at a `/` or with the text; a client id is looked up where a
/// prefix rule's length is reached and at its end), and the facts the
/// branches test (the byte, its class, the text's kind) are kept in
/// memory and read back for each test: held in registers, every
/// combination of them was a path of its own (5.10 refused the program).
#[inline(always)]
fn text_byte<F>(h: &mut MqttHead, ph: u8, b: u8, lookup: &F) -> Result<Step, MqttError>
where
    F: Fn(&MqttKey) -> Option<MqttNext>,
{
    put!(h.cur, b);
    put!(
        h.work,
        if ph == phase::C_CID {
            tb::CID
        } else if ph == phase::S_FILTER {
            tb::FILTER
        } else {
            0
        }
    );
    if get!(h.cur) == 0 {
        return Err(MqttError::Malformed);
    }
    if h.text_len == 0 && get!(h.cur) == b'$' {
        h.dollar = 1;
    }
    keep_text(h, get!(h.cur));
    let not_cid = get!(h.work) & tb::CID == 0;
    if not_cid && (get!(h.cur) == b'+' || get!(h.cur) == b'#') {
        // A wildcard is a whole level of a filter, and no part of a topic.
        if get!(h.work) & tb::FILTER == 0 || h.sip.n != 0 || h.wild != 0 {
            return Err(MqttError::Malformed);
        }
        h.wild = get!(h.cur);
    } else if get!(h.work) & tb::CID == 0 && get!(h.cur) == b'/' {
        if h.wild == b'#' {
            return Err(MqttError::Malformed);
        }
        put!(h.work, get!(h.work) | tb::SLASH);
    } else {
        if h.wild != 0 {
            // `+x`, `#x`.
            return Err(MqttError::Malformed);
        }
        h.sip.update(get!(h.cur));
    }
    h.field -= 1;
    if h.field == 0 {
        put!(h.work, get!(h.work) | tb::LAST);
    }
    if get!(h.work) & (tb::SLASH | tb::LAST) == tb::SLASH | tb::LAST {
        // An empty last level (`a/`) would need a second walk in this
        // byte; not judged.
        return Err(MqttError::Unsupported);
    }
    let n = h.text_len;
    if get!(h.work) & tb::CID != 0 && n <= MAX_CID_PREFIX as u32 && (h.cid_prefixes >> n) & 1 != 0 {
        put!(h.work, get!(h.work) | tb::PREFIX);
    }
    if get!(h.work) & (tb::FILTER | tb::LAST) == tb::FILTER | tb::LAST && h.wild == b'#' {
        put!(h.work, get!(h.work) | tb::HASH_WILD);
    }
    if get!(h.work) & tb::CID == 0
        && get!(h.work) & (tb::SLASH | tb::LAST) != 0
        && get!(h.work) & tb::HASH_WILD == 0
    {
        put!(h.work, get!(h.work) | tb::LEVEL);
    }
    if get!(h.work) & (tb::PREFIX | tb::LEVEL) != 0
        || get!(h.work) & (tb::CID | tb::LAST) == tb::CID | tb::LAST
    {
        let hash = h.sip.finish();
        if get!(h.work) & tb::CID != 0 {
            if get!(h.work) & tb::PREFIX != 0 && cid_lookup(h, kind::CID_PREFIX, hash, lookup) {
                h.hit = 1;
            }
            if get!(h.work) & tb::LAST != 0 && cid_lookup(h, kind::CID_EXACT, hash, lookup) {
                h.hit = 1;
            }
            h.client = hash;
        } else {
            restart_hash(h);
            let plus = h.wild == b'+';
            h.wild = 0;
            walk(h, hash, plus, lookup);
        }
    }
    if get!(h.work) & tb::LAST == 0 {
        return Ok(Step::More);
    }
    if get!(h.work) & tb::CID != 0 {
        h.has_client = 1;
        let allowed = h.set_flags & set_flag::ANY_CLIENT != 0 || h.hit != 0;
        return Ok(end(h, allowed));
    }
    if get!(h.work) & tb::FILTER == 0 {
        let qos = u32::from((h.pflags >> 1) & 3);
        let retain = h.pflags & 1 != 0;
        let allowed = h.nflags & (node_flag::ACCEPT | node_flag::ALL) != 0
            && qos <= h.set_flags & set_flag::MAX_QOS
            && (!retain || h.set_flags & set_flag::RETAIN != 0)
            && (h.max_size == 0 || h.rlen <= h.max_size);
        return Ok(end(h, allowed));
    }
    let whole = if get!(h.work) & tb::HASH_WILD != 0 {
        // `#` covers its parent and everything below: the node must
        // accept all of it.
        h.nflags & node_flag::ALL != 0
    } else {
        h.nflags & (node_flag::ACCEPT | node_flag::ALL) != 0
    };
    if !whole {
        // Refused: the packet ends here for the judgement (its other
        // filters are skipped as its body), and the event names this one.
        return Ok(end(h, false));
    }
    h.wild = 0;
    h.phase = phase::S_OPTS;
    Ok(Step::More)
}

/// Whether the set has a client-id entry of `kind` for `hash`.
#[inline(always)]
fn cid_lookup<F>(h: &MqttHead, kind: u16, hash: u64, lookup: &F) -> bool
where
    F: Fn(&MqttKey) -> Option<MqttNext>,
{
    let k = MqttKey {
        set: h.set,
        node: 0,
        kind,
        hash,
    };
    lookup(&k).is_some()
}

/// A level ended: one edge of the automaton. A literal level takes its
/// literal edge, else the node's edge for other levels (none at the root
/// for a `$` topic); a filter's `+` (`plus`) takes the other-level edge
/// only (see the module notes).
#[inline(always)]
fn walk<F>(h: &mut MqttHead, hash: u64, plus: bool, lookup: &F)
where
    F: Fn(&MqttKey) -> Option<MqttNext>,
{
    let at_root = h.depth == 0;
    h.depth = h.depth.saturating_add(1);
    let dollar_root = at_root && h.dollar != 0;
    if dollar_root {
        // `$` topics: no wildcard at the root matches them.
        h.nflags &= !node_flag::ALL;
    }
    if h.nflags & node_flag::ALL != 0 || h.node == DEAD {
        return;
    }
    let cid = !plus && h.has_client != 0 && hash == h.client;
    let node = h.node as u16;
    let first = MqttKey {
        set: h.set,
        node,
        kind: if plus {
            kind::OTHER
        } else if cid {
            kind::LIT_CID
        } else {
            kind::LIT
        },
        hash: if plus { 0 } else { hash },
    };
    let mut next = lookup(&first);
    if next.is_none() && !plus && !dollar_root {
        let other = MqttKey {
            set: h.set,
            node,
            kind: if cid { kind::OTHER_CID } else { kind::OTHER },
            hash: 0,
        };
        next = lookup(&other);
    }
    match next {
        Some(nx) => {
            h.node = nx.node;
            h.nflags = nx.flags;
        }
        None => {
            h.node = DEAD;
            h.nflags = 0;
        }
    }
}

/// Parses a stream of whole packets from `bytes` (for the host's tests
/// and tools): the heads judged, in order, until the bytes end or an
/// error. Bodies are skipped; a head that does not end within the bytes
/// is `Unsupported`.
pub fn parse_stream<F>(
    bytes: &[u8],
    key: &SipKey,
    set: &MqttSet,
    session: &mut Session,
    lookup: &F,
    mut out: impl FnMut(&MqttHead, &Judged),
) -> Result<(), MqttError>
where
    F: Fn(&MqttKey) -> Option<MqttNext>,
{
    let mut at = 0;
    let mut h = MqttHead::default();
    while at < bytes.len() {
        begin(&mut h, key, set, session);
        let mut head = 0u32;
        loop {
            if at >= bytes.len() {
                return Err(MqttError::Unsupported);
            }
            let n = (bytes.len() - at).min(CHUNK);
            let room = (MAX_HEAD - head) as usize;
            if room == 0 {
                return Err(MqttError::TooLarge);
            }
            let n = n.min(room);
            match feed(&bytes[at..], n, &mut h, lookup) {
                None => {
                    at += n;
                    head += n as u32;
                }
                Some(Err(e)) => return Err(e),
                Some(Ok((k, j))) => {
                    at += k;
                    out(&h, &j);
                    if j.ptype == ptype::CONNECT {
                        session.level = h.level;
                        session.client = (h.has_client != 0).then_some(h.client);
                    }
                    at = at.saturating_add(j.body as usize);
                    break;
                }
            }
        }
    }
    Ok(())
}

/// After a head was judged and allowed (or passed by audit mode): the
/// rest of the packet, `body` bytes, is skipped, then the next packet.
#[inline(always)]
pub fn allowed(conn: &mut HttpConn, body: u32) {
    conn.requests = conn.requests.wrapping_add(1);
    conn.body_from = conn.next_seq;
    conn.body_left = body;
    conn.head_len = 0;
    conn.state = if body == 0 {
        conn_state::START
    } else {
        conn_state::BODY
    };
}

/// The keyed hash of a topic level, a client id or a prefix, as the
/// parser takes it.
pub fn text_hash(key: &SipKey, bytes: &[u8]) -> u64 {
    crate::sip::siphash(key, bytes)
}

/// A CONNACK refusing a CONNECT (return code 5, "not authorized"), MQTT
/// 3.1.1.
pub const CONNACK_V311: [u8; 4] = [0x20, 0x02, 0x00, 0x05];
/// A CONNACK refusing a CONNECT, MQTT 5: reason 0x87 (Not authorized),
/// with the reason string "by Porin" (and 16 bytes long: the kernel
/// checksums answers in 4-byte words).
pub const CONNACK_V5: [u8; 16] = [
    0x20, 0x0e, 0x00, 0x87, 0x0b, 0x1f, 0x00, 0x08, b'b', b'y', b' ', b'P', b'o', b'r', b'i', b'n',
];
/// A DISCONNECT with reason 0x87 (Not authorized), MQTT 5, with the reason
/// string "Porin" (12 bytes). A reason string, not only the code: paho-mqtt
/// 1.6 reads a DISCONNECT's reason code only when properties follow it.
pub const DISCONNECT_V5: [u8; 12] = [
    0xe0, 0x0a, 0x87, 0x08, 0x1f, 0x00, 0x05, b'P', b'o', b'r', b'i', b'n',
];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, valid for any
    // bytes.
    unsafe impl aya::Pod for super::MqttSet {}
    unsafe impl aya::Pod for super::MqttKey {}
    unsafe impl aya::Pod for super::MqttNext {}
    unsafe impl aya::Pod for super::MqttHead {}
}

// Layout checks: the kernel and userspace must agree byte for byte.
const _: () = assert!(core::mem::size_of::<MqttSet>() == 32);
const _: () = assert!(core::mem::size_of::<MqttKey>() == 16);
const _: () = assert!(core::mem::size_of::<MqttNext>() == 8);
const _: () = assert!(core::mem::size_of::<MqttHead>() == 216);
