//! MQTT rules in the HTTP stage: the connection's stream state, its
//! retransmission and urgent-data rules and the denial are the HTTP
//! stage's (`http.rs`, `porin_common::http_stream`); this module parses
//! and judges MQTT heads ([`porin_common::mqtt`]) where HTTP parses
//! request heads. The stage's entry tail-calls [`mqtt_parse`] for a
//! connection whose rule set is an MQTT one (`http::SET_MQTT`).
//!
//! A denied packet never reaches the broker: it becomes a RST to the
//! broker, and the client gets a CONNACK refusing its CONNECT (3.1.1:
//! return code 5; 5.0: reason 0x87), a DISCONNECT 0x87 (5.0), or a FIN
//! (3.1.1, which has no error for a PUBLISH or SUBSCRIBE).

use aya_ebpf::{
    macros::{classifier, map},
    maps::{HashMap, LruHashMap},
    programs::TcContext,
};
use porin_common::{
    datapath::{mode, tc_action, CtKey, DropReason},
    flow,
    http_stream::{conn_state, next, parsed, Next, MAX_TAILS},
    mqtt::{
        self, level, max_entries, ptype, MqttError, MqttHead, MqttKey, MqttNext, MqttSet, Session,
        CHUNK, MAX_HEAD,
    },
};

use crate::{
    http::{
        answer, conclude, copy, dir_of, drop_internal, finish, finish_start, hash_key,
        load_payload, scratch, stage_index, tail, Finish, Scratch, EV_AUDIT_DENIED, EV_REQUEST,
    },
    identity,
};

const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static PORIN_MQTTS_V1: HashMap<u32, MqttSet> =
    HashMap::with_max_entries(max_entries::SETS, BPF_F_NO_PREALLOC);

#[map]
static PORIN_MQTTT_V1: HashMap<MqttKey, MqttNext> =
    HashMap::with_max_entries(max_entries::EDGES, BPF_F_NO_PREALLOC);

/// The parser's state of heads that span segments, by connection (LRU: an
/// evicted head's connection is denied at its next segment).
#[map]
static PORIN_MQTTH_V1: LruHashMap<CtKey, MqttHead> =
    LruHashMap::with_max_entries(max_entries::HEADS, 0);

#[inline(always)]
fn reason(e: MqttError) -> DropReason {
    match e {
        MqttError::Malformed => DropReason::MqttMalformed,
        MqttError::TopicAlias => DropReason::MqttTopicAlias,
        MqttError::Unsupported | MqttError::TooLarge => DropReason::MqttUnsupported,
    }
}

/// Hands on to [`mqtt_finish`] with `what` to do.
#[inline(always)]
fn to_finish(
    ctx: &TcContext,
    s: &mut Scratch,
    what: u32,
    dir: porin_common::datapath::Direction,
) -> i32 {
    s.finish = what;
    s.tails += 1;
    tail(ctx, stage_index::MQTT_FINISH, dir)
}

#[inline(always)]
fn fail(
    ctx: &TcContext,
    s: &mut Scratch,
    e: MqttError,
    dir: porin_common::datapath::Direction,
) -> i32 {
    to_finish(ctx, s, finish::FAIL + e as u32, dir)
}

/// Consumes the segment's next bytes: skips the body of the packet before,
/// then parses at most one [`CHUNK`] of a head; then itself again, or the
/// finish (a head ended, an error, or every byte consumed).
#[classifier]
#[inline(always)]
pub fn mqtt_parse(ctx: TcContext) -> i32 {
    let Ok(s) = scratch() else {
        return tc_action::SHOT;
    };
    let dir = dir_of(s.dir);
    let len = s.t.payload_len;
    let mut step = next(&mut s.conn, s.off, len, MAX_HEAD);
    if let Next::Skipped(n) = step {
        s.off += n;
        step = next(&mut s.conn, s.off, len, MAX_HEAD);
    }
    let (begin, n) = match step {
        Next::Parse { begin, n } => (begin, n),
        Next::Done => return to_finish(&ctx, s, finish::PASS, dir),
        Next::TooLarge => return fail(&ctx, s, MqttError::TooLarge, dir),
        _ => return fail(&ctx, s, MqttError::Unsupported, dir),
    };
    if s.tails >= MAX_TAILS {
        // More head bytes than one packet's parse budget.
        return fail(&ctx, s, MqttError::Unsupported, dir);
    }
    // Through memory, volatile, as in `http_parse`: one state for the
    // verifier whichever way led here.
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
            return fail(&ctx, s, MqttError::Unsupported, dir);
        };
        // SAFETY: read at once.
        let Some(set) = (unsafe { PORIN_MQTTS_V1.get(&s.conn.set.id) }) else {
            return fail(&ctx, s, MqttError::Unsupported, dir);
        };
        let session = Session {
            level: s.conn.mqtt_level as u8,
            client: (s.conn.mqtt_has_client != 0).then_some(s.conn.mqtt_client),
        };
        mqtt::begin(&mut s.mhead, key, set, &session);
        s.restored = 1;
    } else if s.restored == 0 {
        // The head began in an earlier segment: its parser state is kept.
        // SAFETY: read at once.
        let Some(kept) = (unsafe { PORIN_MQTTH_V1.get(&s.ckey) }) else {
            // Evicted: where the head stands is unknown (fail closed).
            return fail(&ctx, s, MqttError::Unsupported, dir);
        };
        copy(&mut s.mhead, kept);
        s.restored = 1;
    }
    // `next` offers up to HTTP's chunk; this parse takes less.
    let n = if n > CHUNK as u32 { CHUNK as u32 } else { n };
    let Some(n) = load_payload::<{ CHUNK as u32 }>(&ctx, s, n) else {
        return drop_internal(&ctx, dir);
    };
    // SAFETY: values read at once.
    let lookup = |k: &MqttKey| unsafe { PORIN_MQTTT_V1.get(k) }.copied();
    match mqtt::feed(&s.buf, n as usize, &mut s.mhead, &lookup) {
        None => {
            parsed(&mut s.conn, n);
            s.off += n;
            s.tails += 1;
            tail(&ctx, stage_index::MQTT_PARSE, dir)
        }
        Some(Ok((k, j))) => {
            parsed(&mut s.conn, k as u32);
            s.off += k as u32;
            if j.allowed && j.ptype != ptype::CONNECT && j.ptype != ptype::SUBSCRIBE && !audit(&ctx)
            {
                // Allowed, and no event to send (enforce mode records
                // PUBLISH only when refused): on with the next packet at
                // the cost of one tail call, not two, so a segment of
                // many small packets stays within the budget.
                mqtt::allowed(&mut s.conn, j.body);
                s.tails += 1;
                return tail(&ctx, stage_index::MQTT_PARSE, dir);
            }
            s.m_ptype = u32::from(j.ptype);
            s.m_allowed = u32::from(j.allowed);
            s.m_body = j.body;
            to_finish(&ctx, s, finish::JUDGE, dir)
        }
        Some(Err(e)) => fail(&ctx, s, e, dir),
    }
}

/// Whether the packet's endpoint is in audit mode.
#[inline(always)]
fn audit(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    identity::endpoint(ifindex).is_some_and(|e| e.mode == mode::AUDIT)
}

/// Judges a complete head (and goes on with the segment's next bytes), or
/// concludes the packet: writes the connection's state back and passes,
/// or denies.
#[classifier]
#[inline(always)]
pub fn mqtt_finish(ctx: TcContext) -> i32 {
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
    s.ev_kind = u32::from(flow::kind::MQTT);
    let what = s.finish;
    let result = if what == finish::PASS {
        // Every byte consumed: the packet's view becomes the connection's.
        copy(conn, &s.conn);
        if s.conn.state == conn_state::HEAD {
            if PORIN_MQTTH_V1.insert(&s.ckey, &s.mhead, 0).is_err() {
                conn.state = conn_state::DENIED;
                s.answer = answer_for(s);
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
            let _ = PORIN_MQTTH_V1.remove(&s.ckey);
        }
        Ok(())
    } else if what == finish::JUDGE {
        let pt = s.m_ptype as u8;
        let audit = audit(&ctx);
        if pt == ptype::CONNECT {
            // The session every later head is parsed in.
            s.conn.mqtt_level = u32::from(s.mhead.level);
            s.conn.mqtt_has_client = u32::from(s.mhead.has_client);
            s.conn.mqtt_client = s.mhead.client;
        }
        let judged = pt == ptype::CONNECT || pt == ptype::PUBLISH || pt == ptype::SUBSCRIBE;
        if s.m_allowed == 0 && !audit {
            record(s);
            s.answer = answer_for(s);
            Err(DropReason::MqttDenied)
        } else {
            if s.m_allowed == 0 {
                // Audit mode: recorded as a packet enforce mode would
                // refuse; the connection goes on being judged.
                if s.ev != EV_AUDIT_DENIED {
                    record(s);
                    s.ev = EV_AUDIT_DENIED;
                }
            } else if judged && (pt != ptype::PUBLISH || audit) && s.ev != EV_AUDIT_DENIED {
                // CONNECT and SUBSCRIBE go out as events; PUBLISH only in
                // audit mode (what `porin flows` learns topics from), as
                // every packet is too many.
                record(s);
            }
            mqtt::allowed(&mut s.conn, s.m_body);
            s.tails += 1;
            return tail(&ctx, stage_index::MQTT_PARSE, dir);
        }
    } else {
        let e = MqttError::from_u32(what.wrapping_sub(finish::FAIL));
        if s.mhead.ptype != 0 {
            record(s);
        }
        s.answer = answer_for(s);
        Err(reason(e))
    };
    if result.is_err() {
        conn.state = conn_state::DENIED;
    }
    conclude(&ctx, &flow, dir, ifindex, &t, s, result, true)
}

/// What the client is told of a denial: a CONNACK for a CONNECT, a
/// DISCONNECT in MQTT 5, else the FIN alone.
#[inline(always)]
fn answer_for(s: &Scratch) -> u32 {
    if s.mhead.ptype == ptype::CONNECT {
        match s.mhead.level {
            level::V5 => answer::CONNACK_V5,
            level::V311 => answer::CONNACK_V311,
            _ => answer::FIN,
        }
    } else if s.conn.mqtt_level == u32::from(level::V5) {
        answer::DISCONNECT_V5
    } else {
        answer::FIN
    }
}

/// Makes the head in `s.mhead` the packet's event: its type, its text
/// (topic, filter or client id) and the policy whose rules judged it.
#[inline(always)]
fn record(s: &mut Scratch) {
    let mut w = 0;
    while w < s.path.len() {
        s.path[w] = s.mhead.text[w];
        w += 1;
    }
    let len = s.mhead.text_len;
    s.ev = EV_REQUEST;
    s.ev_method = u32::from(s.mhead.ptype);
    s.ev_path_len = if len > mqtt::TEXT_BYTES as u32 {
        mqtt::TEXT_BYTES as u32
    } else {
        len
    };
    s.ev_rule = s.mhead.rule;
}
