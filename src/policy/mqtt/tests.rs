use proptest::prelude::*;

use super::*;
use crate::config::MqttRule;
use crate::testing::mqtt::{connect, pingreq, publish, rule, subscribe};
use porin_common::mqtt::{parse_stream, ptype, Judged, MqttError, Session};

const KEY: SipKey = SipKey { k0: 7, k1: 11 };

/// The verdicts of the heads of `stream`, or the error that stopped it.
fn judge(r: &MqttRule, stream: &[u8]) -> Result<Vec<Judged>, MqttError> {
    let mut edges = BTreeMap::new();
    let set = compile_set(42, &KEY, r, &mut edges).unwrap();
    let lookup = |k: &MqttKey| edges.get(k).copied();
    let mut out = Vec::new();
    let mut session = Session::default();
    parse_stream(stream, &KEY, &set, &mut session, &lookup, |_, j| {
        out.push(*j)
    })?;
    Ok(out)
}

/// Whether a client `id` (level `level`) may publish to `topic`.
fn may_publish(r: &MqttRule, level: u8, id: &str, topic: &str) -> bool {
    let mut s = connect(level, id);
    s.extend(publish(level, topic, 0, false, b"21.5"));
    let j = judge(r, &s).unwrap();
    assert_eq!(j.len(), 2);
    assert!(j[0].allowed, "CONNECT of {id:?}");
    j[1].allowed
}

fn may_subscribe(r: &MqttRule, level: u8, id: &str, filter: &str) -> bool {
    let mut s = connect(level, id);
    s.extend(subscribe(level, &[filter]));
    let j = judge(r, &s).unwrap();
    assert_eq!(j[1].ptype, ptype::SUBSCRIBE);
    j[1].allowed
}

#[test]
fn publish_topics() {
    let r = rule(
        &[],
        &[
            "sensors/+/temperature",
            "cams/{client_id}/#",
            "$SYS/x",
            "a/#",
        ],
        &[],
    );
    for level in [4, 5] {
        let ok = |t: &str| may_publish(&r, level, "cam-1", t);
        assert!(ok("sensors/kitchen/temperature"));
        assert!(!ok("sensors/kitchen/humidity"));
        assert!(!ok("sensors/kitchen/temperature/x"));
        assert!(!ok("sensors/temperature"));
        assert!(ok("cams/cam-1/frames"));
        assert!(ok("cams/cam-1"), "`#` covers its parent");
        assert!(!ok("cams/cam-2/frames"));
        assert!(!ok("cams/cam-1x/frames"));
        assert!(ok("a"));
        assert!(ok("a/b/c/d/e/f/g"));
        assert!(ok("$SYS/x"));
        assert!(!ok("$SYS/y"));
        assert!(!ok("b"));
        // A topic longer than one parse chunk.
        assert!(ok(&format!("a/{}", "x".repeat(200))));
        assert!(ok(&format!("cams/cam-1/{}z", "y/".repeat(60))));
    }
}

#[test]
fn wildcards_do_not_match_dollar_topics() {
    let r = rule(&[], &["#", "+/status"], &["#"]);
    assert!(may_publish(&r, 4, "c", "anything/at/all"));
    assert!(!may_publish(&r, 4, "c", "$SYS/broker/load"));
    assert!(!may_publish(&r, 4, "c", "$x/status"));
    assert!(may_subscribe(&r, 4, "c", "#"));
    assert!(!may_subscribe(&r, 4, "c", "$SYS/#"));
    // A client named like a `$` level gains nothing through {client_id}.
    let r = rule(&[], &["{client_id}/#"], &[]);
    assert!(may_publish(&r, 4, "cam", "cam/x"));
    assert!(!may_publish(&r, 4, "$SYS", "$SYS/x"));
}

#[test]
fn subscribe_filters_must_be_covered() {
    let r = rule(
        &[],
        &[],
        &["cmd/cams/#", "status/+/online", "{client_id}/cfg"],
    );
    let ok = |f: &str| may_subscribe(&r, 5, "cam-7", f);
    assert!(ok("cmd/cams/#"));
    assert!(ok("cmd/cams/7"));
    assert!(ok("cmd/cams/+/x"));
    assert!(ok("cmd/cams"), "`cmd/cams/#` covers `cmd/cams`");
    assert!(!ok("cmd/#"));
    assert!(!ok("cmd/+"));
    assert!(!ok("#"));
    assert!(ok("status/+/online"));
    assert!(ok("status/hub/online"));
    assert!(!ok("status/#"));
    assert!(!ok("status/+/+"));
    assert!(ok("cam-7/cfg"));
    assert!(!ok("cam-8/cfg"));
    assert!(
        !ok("+/cfg"),
        "`+` covers every client's, not only this one's"
    );
    // Every filter of one SUBSCRIBE must be covered.
    let mut s = connect(4, "cam-7");
    s.extend(subscribe(4, &["cmd/cams/1", "cmd/x"]));
    assert!(!judge(&r, &s).unwrap()[1].allowed);
    let mut s = connect(4, "cam-7");
    s.extend(subscribe(4, &["cmd/cams/1", "status/a/online"]));
    assert!(judge(&r, &s).unwrap()[1].allowed);
    // The refused filter ends the judgement: the event names it, and the
    // rest of the packet is skipped as its body (audit mode goes on
    // after it).
    let mut s = connect(4, "cam-7");
    s.extend(subscribe(4, &["cmd/x", "cmd/cams/1"]));
    s.extend(pingreq());
    let mut edges = BTreeMap::new();
    let set = compile_set(42, &KEY, &r, &mut edges).unwrap();
    let lookup = |k: &MqttKey| edges.get(k).copied();
    let mut texts = Vec::new();
    let mut session = Session::default();
    parse_stream(&s, &KEY, &set, &mut session, &lookup, |h, j| {
        let bytes: Vec<u8> = h.text.iter().flat_map(|w| w.to_le_bytes()).collect();
        texts.push((j.ptype, j.allowed, bytes[..h.text_len as usize].to_vec()));
    })
    .unwrap();
    assert_eq!(texts[1], (ptype::SUBSCRIBE, false, b"cmd/x".to_vec()));
    assert_eq!(texts[2].0, ptype::PINGREQ, "the next packet is found");
}

#[test]
fn client_ids() {
    let r = rule(&["cam-*", "hub"], &["#"], &[]);
    let connects = |id: &str| judge(&r, &connect(4, id)).unwrap()[0].allowed;
    assert!(connects("cam-1"));
    assert!(connects("cam-"));
    assert!(connects("hub"));
    assert!(!connects("hub2"));
    assert!(!connects("ca"));
    assert!(!connects("x-cam-1"));
    assert!(!connects(""), "an empty id matches no pattern");
    let any = rule(&[], &["#"], &[]);
    assert!(judge(&any, &connect(5, "")).unwrap()[0].allowed);
    let star = rule(&["*"], &["#"], &[]);
    assert!(judge(&star, &connect(5, "whatever")).unwrap()[0].allowed);
}

#[test]
fn qos_retain_and_size_limits() {
    let mut r = rule(&[], &["t"], &[]);
    r.max_qos = 1;
    r.retain = false;
    r.max_message_size = Some(100);
    let verdict = |qos, retain, len| {
        let mut s = connect(4, "c");
        s.extend(publish(4, "t", qos, retain, &vec![b'x'; len]));
        judge(&r, &s).unwrap()[1].allowed
    };
    assert!(verdict(0, false, 10));
    assert!(verdict(1, false, 10));
    assert!(!verdict(2, false, 10));
    assert!(!verdict(0, true, 10));
    // Remaining length: 2 + 1 (topic) + 97 = 100.
    assert!(verdict(0, false, 97));
    assert!(!verdict(0, false, 98));
}

#[test]
fn bodies_are_skipped_and_packets_follow_each_other() {
    let r = rule(&[], &["a"], &[]);
    let mut s = connect(5, "c");
    // A payload that looks like packets must not be parsed as them.
    let fake = subscribe(5, &["#"]);
    s.extend(publish(5, "a", 1, false, &fake));
    s.extend(pingreq());
    s.extend(publish(5, "a", 0, false, &vec![0x30; 5000]));
    let j = judge(&r, &s).unwrap();
    let types: Vec<u8> = j.iter().map(|j| j.ptype).collect();
    assert_eq!(
        types,
        [
            ptype::CONNECT,
            ptype::PUBLISH,
            ptype::PINGREQ,
            ptype::PUBLISH
        ]
    );
    assert!(j.iter().all(|j| j.allowed));
    // The property length (0) and the payload.
    assert_eq!(j[3].body, 5001);
}

#[test]
fn refused_streams() {
    let r = rule(&[], &["#"], &["#"]);
    let err = |s: &[u8]| judge(&r, s).unwrap_err();
    // Not CONNECT first: a PUBLISH, TLS, HTTP (WebSocket's upgrade).
    assert_eq!(err(&publish(4, "a", 0, false, b"")), MqttError::Malformed);
    assert_eq!(err(&[0x16, 0x03, 0x01, 0x02, 0x00]), MqttError::Malformed);
    assert_eq!(err(b"GET /mqtt HTTP/1.1\r\n"), MqttError::Malformed);
    // A second CONNECT.
    let mut s = connect(4, "c");
    s.extend(connect(4, "d"));
    assert_eq!(err(&s), MqttError::Malformed);
    // MQTT 3.1 (`MQIsdp`).
    let mut b = vec![0, 6];
    b.extend_from_slice(b"MQIsdp");
    b.extend([3, 2, 0, 60, 0, 1, b'c']);
    assert_eq!(
        err(&crate::testing::mqtt::packet(0x10, &b)),
        MqttError::Unsupported
    );
    // A Will (its topic is not judged), and AUTH before CONNECT.
    assert_eq!(
        err(&crate::testing::mqtt::connect_with_will(
            "c", "cmd/all", b"x"
        )),
        MqttError::Unsupported
    );
    assert_eq!(err(&[0xf0, 0x00]), MqttError::Malformed);
    // A topic alias stands for the topic.
    let mut s = connect(5, "c");
    s.extend(crate::testing::mqtt::packet(0x30, &[0, 0, 3, 0x23, 0, 1]));
    assert_eq!(err(&s), MqttError::TopicAlias);
    // An empty last level: not judged.
    let mut s = connect(4, "c");
    s.extend(publish(4, "a/", 0, false, b""));
    assert_eq!(err(&s), MqttError::Unsupported);
    // Wildcards in a PUBLISH topic; a remaining length of 5 bytes.
    let mut s = connect(4, "c");
    s.extend(publish(4, "a/+", 0, false, b""));
    assert_eq!(err(&s), MqttError::Malformed);
    let mut s = connect(4, "c");
    s.extend([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(err(&s), MqttError::Malformed);
    // A topic length past the packet's end.
    let mut s = connect(4, "c");
    s.extend([0x30, 0x03, 0x00, 0x09, b'a']);
    assert_eq!(err(&s), MqttError::Malformed);
    // Bad filters: `#` not last, `+` inside a level, empty.
    for f in ["a/#/b", "a+", "#a", ""] {
        let mut s = connect(4, "c");
        s.extend(subscribe(4, &[f]));
        assert_eq!(err(&s), MqttError::Malformed, "{f:?}");
    }
    // QoS 3, and DUP on QoS 0.
    let mut s = connect(4, "c");
    s.extend([0x36, 0x03, 0x00, 0x01, b'a']);
    assert_eq!(err(&s), MqttError::Malformed);
    let mut s = connect(4, "c");
    s.extend([0x38, 0x03, 0x00, 0x01, b'a']);
    assert_eq!(err(&s), MqttError::Malformed);
}

#[test]
fn long_heads_are_refused() {
    let r = rule(&[], &["#"], &[]);
    let mut s = connect(4, "c");
    s.extend(publish(4, &"a".repeat(1100), 0, false, b""));
    assert_eq!(judge(&r, &s).unwrap_err(), MqttError::TooLarge);
}

/// Topic text from a small alphabet, so patterns and topics meet often.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("".to_string()),
        Just("$s".to_string()),
        Just("id".to_string()),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        // An empty last level (`a/`) is refused (see `refused_streams`).
        .prop_filter("empty topic or last level", |t| {
            !t.is_empty() && !t.ends_with('/')
        })
}

fn pattern() -> impl Strategy<Value = TopicPattern> {
    (
        prop::collection::vec(
            prop_oneof![
                4 => level(),
                2 => Just("+".to_string()),
                1 => Just("{client_id}".to_string())
            ],
            0..4,
        ),
        any::<bool>(),
    )
        .prop_filter_map("empty", |(mut l, hash)| {
            if hash {
                l.push("#".into());
            }
            let text = l.join("/");
            (!text.is_empty() && !text.ends_with('/')).then(|| TopicPattern::parse(&text).unwrap())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The automaton walked by the parser agrees with MQTT's matching,
    /// written from the specification, on every topic.
    #[test]
    fn automaton_matches_the_reference(
        patterns in prop::collection::vec(pattern(), 1..6),
        topics in prop::collection::vec(topic(), 1..12),
    ) {
        let mut r = rule(&[], &[], &[]);
        r.publish = patterns.clone();
        for t in &topics {
            let want = patterns.iter().any(|p| reference_matches(p, t, Some("id")));
            prop_assert_eq!(may_publish(&r, 4, "id", t), want, "topic {:?}", t);
        }
    }

    /// A filter allowed to subscribe matches only allowed topics (sound),
    /// and a filter equal to a pattern is allowed (exact for one pattern).
    #[test]
    fn subscribe_is_sound(
        patterns in prop::collection::vec(pattern(), 1..5),
        filter in pattern(),
        topics in prop::collection::vec(topic(), 1..24),
    ) {
        let mut r = rule(&[], &[], &[]);
        r.subscribe = patterns.clone();
        let f = filter.to_string().replace("{client_id}", "id");
        let filter = TopicPattern::parse(&f).unwrap();
        if may_subscribe(&r, 4, "id", &f) {
            for t in &topics {
                if reference_matches(&filter, t, None) {
                    prop_assert!(
                        patterns.iter().any(|p| reference_matches(p, t, Some("id"))),
                        "filter {:?} allowed but topic {:?} is not", f, t
                    );
                }
            }
        }
        for p in &patterns {
            let text = p.to_string().replace("{client_id}", "id");
            prop_assert!(may_subscribe(&r, 5, "id", &text), "pattern {:?} as a filter", text);
        }
    }
}

mod compiled {
    use crate::config::parse;
    use crate::policy::{compile, http::ANY_KEY};
    use porin_common::datapath::{action, Direction};
    use porin_common::http::SET_MQTT;

    fn compiled(policies: &str) -> Result<crate::policy::Compiled, String> {
        let yaml = format!(
            "version: 1\ngroups:\n  - name: broker\n    select:\n      labels: {{app: b}}\n  \
             - name: cam\n    select:\n      labels: {{app: c}}\n\
             ground_rules:\n  same_group: deny\n  host_ingress: deny\n\
             policies:\n{policies}"
        );
        let cfg = parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        compile(&cfg, &[], &[], &ANY_KEY).map_err(|e| e.to_string())
    }

    const CAMS: &str = "  - name: cams\n    from: [cam]\n    to: [broker]\n    ports: [1883]\n    \
        mqtt:\n      publish: [\"a/#\"]\n";

    #[test]
    fn an_mqtt_policy_marks_its_entries_and_names_its_set() {
        let c = compiled(CAMS).unwrap();
        let tcp: Vec<_> = c.policy.iter().filter(|(k, _)| k.port == 1883).collect();
        assert!(!tcp.is_empty());
        for (k, v) in tcp {
            assert_eq!(v.action, action::ALLOW_HTTP, "{k:?}");
            let set = c.http_maps.sets[k];
            assert_eq!(set.depths, SET_MQTT);
            let m = c.http_maps.mqtt.sets[&set.id];
            assert_eq!(m.rule, 1, "the policy's number, for events");
        }
        assert!(c
            .http_maps
            .sets
            .keys()
            .any(|k| k.direction == Direction::Ingress as u8));
        assert!(!c.http_maps.mqtt.edges.is_empty());
    }

    /// An edit that moves a policy in the file keeps its set's id: live
    /// connections keep their rules across the reload.
    #[test]
    fn the_set_id_does_not_depend_on_the_rules_position() {
        let id = |p: &str| {
            let c = compiled(p).unwrap();
            let ids: Vec<u32> = c.http_maps.mqtt.sets.keys().copied().collect();
            ids
        };
        let moved = CAMS.replace("    mqtt:\n", "    # a comment\n    mqtt:\n");
        assert_ne!(moved, CAMS);
        assert_eq!(id(CAMS), id(&moved));
    }

    #[test]
    fn mqtt_rules_are_not_merged_nor_mixed_with_http() {
        let two = format!(
            "{CAMS}  - name: more\n    from: [cam]\n    to: [broker]\n    ports: [1883]\n    \
             mqtt:\n      publish: [b]\n"
        );
        let e = compiled(&two).unwrap_err();
        assert!(
            e.contains("`cams`") && e.contains("`more`") && e.contains("not merged"),
            "{e}"
        );
        let http = format!(
            "{CAMS}  - name: web\n    from: [cam]\n    to: [broker]\n    ports: [1883]\n    \
             http:\n      - method: GET\n        path: /\n"
        );
        let e = compiled(&http).unwrap_err();
        assert!(e.contains("one protocol"), "{e}");
        // A plain policy for the same port leaves it open (a union).
        let plain = format!("{CAMS}  - name: open\n    from: [cam]\n    to: [broker]\n");
        let c = compiled(&plain).unwrap();
        assert!(c.http_maps.sets.is_empty() && c.http_maps.mqtt.sets.is_empty());
    }
}
