//! MQTT rules in the kernel through `BPF_PROG_TEST_RUN`: the stage's
//! verdicts on client→broker segments (allowed packets pass untouched, a
//! denied one becomes a RST to the broker), its drop reasons, the parser's
//! edge cases on the kernel side (a 4-byte remaining length, a zero-length
//! topic, malformed lengths, TLS, a head spanning three segments, several
//! packets in one segment), and a differential test against the host
//! parser over random segmentations of real packet streams.
//!
//! The broker is `BPF_PROG_TEST_RUN`'s loopback endpoint (ifindex 1),
//! judged at `to_container`. Needs root (CI runs as root); without it each
//! test fails loudly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use porin::{
    config::MqttRule,
    datapath::http::{load_stage, write_key},
    ebpf,
    maps::{self, MapDef},
    policy::mqtt::compile_set,
    testing::{
        mqtt::{connect, packet, pingreq, publish, rule, subscribe},
        packets::{self, PROTO_TCP},
        require_root,
    },
};
use porin_common::{
    datapath::{
        identity, mode, tc_action, Counter, DatapathConfig, Direction, DropReason, EndpointInfo,
        Identity, PolicyKey, PolicyValue, CONFIG_READY,
    },
    http::{HttpSet, SET_MQTT},
    mqtt::{parse_stream, MqttError, Session},
    sip::SipKey,
};
use proptest::prelude::*;

const OK: u32 = tc_action::OK as u32;
const EP: u32 = 1;
const BROKER_ID: Identity = identity::GROUP_BASE + 1;
const CAM: Identity = identity::GROUP_BASE + 2;
const BROKER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 1883;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const KEY: SipKey = SipKey {
    k0: 0x0102_0304_0506_0708,
    k1: 0x1112_1314_1516_1718,
};

/// The rules most tests use.
fn cams() -> MqttRule {
    rule(
        &["cam-*"],
        &["sensors/+/temperature", "cams/{client_id}/#"],
        &["cmd/cams/#"],
    )
}

struct Dp {
    bpf: Ebpf,
    rule: MqttRule,
}

impl Dp {
    /// The broker at [`EP`] in `mode`, the ingress entry (broker, cam,
    /// tcp/1883) MQTT-ruled by `rule`.
    fn new(mode: u8, rule: MqttRule) -> Self {
        let mut bpf = ebpf::open().expect("open eBPF object");
        for name in ["from_container", "to_container"] {
            ebpf::load_program::<SchedClassifier>(&mut bpf, name)
                .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
        }
        load_stage(&mut bpf).unwrap_or_else(|e| panic!("load the HTTP/MQTT stage: {e:?}"));
        write_key(&mut bpf, &KEY).expect("write the hash key");
        let mut dp = Dp { bpf, rule };
        dp.hash(maps::ENDPOINTS)
            .insert(EP, EndpointInfo::new(BROKER_ID, mode), 0)
            .unwrap();
        dp.hash(maps::IP4)
            .insert(BROKER.octets(), BROKER_ID, 0)
            .unwrap();
        dp.hash(maps::IP4).insert(CLIENT.octets(), CAM, 0).unwrap();
        dp.hash(maps::UPLINK_ENDPOINTS4)
            .insert(BROKER.octets(), EP, 0)
            .unwrap();
        let mut cfg: Array<_, DatapathConfig> = maps::open_mut(&mut dp.bpf, maps::CONFIG).unwrap();
        cfg.set(
            0,
            DatapathConfig {
                generation: 0,
                ready: CONFIG_READY,
                epoch: 1,
                _pad: 0,
            },
            0,
        )
        .unwrap();
        let key = PolicyKey::new(BROKER_ID, CAM, Direction::Ingress, PROTO_TCP, PORT);
        dp.hash(maps::POLICY)
            .insert(key, PolicyValue::allow_http(1), 0)
            .unwrap();
        let mut edges = BTreeMap::new();
        let mut set = compile_set(77, &KEY, &dp.rule, &mut edges).unwrap();
        set.rule = 1;
        for (k, v) in edges {
            dp.hash(maps::MQTT_EDGES).insert(k, v, 0).unwrap();
        }
        dp.hash(maps::MQTT_SETS).insert(77, set, 0).unwrap();
        dp.hash(maps::HTTP_SETS)
            .insert(
                key,
                HttpSet {
                    id: 77,
                    depths: SET_MQTT,
                    names: 0,
                },
                0,
            )
            .unwrap();
        dp
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, def: MapDef<K, V>) -> HashMap<&mut MapData, K, V> {
        maps::open_mut(&mut self.bpf, def).expect("a hash map")
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let prog: &SchedClassifier = self
            .bpf
            .program("to_container")
            .unwrap()
            .try_into()
            .unwrap();
        let r = prog
            .test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn drops(&self, reason: DropReason) -> u64 {
        let arr: PerCpuArray<_, Counter> = maps::open(&self.bpf, maps::DROPS).unwrap();
        arr.get(&(reason as u32), 0)
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .sum()
    }

    /// Opens a connection from `sport` (SYN with sequence `isn`).
    #[track_caller]
    fn open(&self, sport: u16, isn: u32) {
        let (v, _) = self.run(&segment(sport, isn, packets::TCP_SYN, b""));
        assert_eq!(v, OK, "SYN allowed at L3/L4");
    }

    /// Sends `segments` in order from `sport` (opened at `isn`): whether
    /// each passed untouched (`true`) or became a RST (`false`).
    #[track_caller]
    fn send(&self, sport: u16, isn: u32, segments: &[&[u8]]) -> Vec<bool> {
        let mut seq = isn.wrapping_add(1);
        let mut out = Vec::new();
        for s in segments {
            let frame = request(sport, seq, s);
            let (v, after) = self.run(&frame);
            assert_eq!(v, OK, "MQTT denials go on as RSTs");
            if after == frame {
                out.push(true);
            } else {
                assert_rst(&after, seq);
                out.push(false);
            }
            seq = seq.wrapping_add(s.len() as u32);
        }
        out
    }
}

fn segment(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = packets::tcp(sport, PORT, flags, payload);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&77u32.to_be_bytes());
    packets::frame_v4(CLIENT, BROKER, PROTO_TCP, &t)
}

fn request(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    segment(sport, seq, packets::TCP_ACK | TCP_PSH, payload)
}

/// `out` is a bare RST from the client to the broker at `seq`.
#[track_caller]
fn assert_rst(out: &[u8], seq: u32) {
    assert_eq!(out.len(), 14 + 20 + 20, "RST without payload: {out:?}");
    assert_eq!(&out[26..30], &CLIENT.octets());
    assert_eq!(&out[30..34], &BROKER.octets());
    assert_eq!(out[34 + 13], TCP_RST);
    assert_eq!(&out[38..42], &seq.to_be_bytes());
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn allowed_packets_pass_untouched() {
    require_root("allowed_packets_pass_untouched");
    let dp = Dp::new(mode::ENFORCE, cams());
    for (port, level) in [(41000, 4), (41001, 5)] {
        dp.open(port, 1000);
        let c = connect(level, "cam-1");
        let p1 = publish(level, "sensors/kitchen/temperature", 0, false, b"21.5");
        let p2 = publish(level, "cams/cam-1/frame", 1, false, &[0u8; 600]);
        let s = subscribe(level, &["cmd/cams/#"]);
        let ping = pingreq();
        assert_eq!(
            dp.send(port, 1000, &[&c, &p1, &p2, &s, &ping]),
            [true; 5],
            "level {level}"
        );
    }
    assert_eq!(dp.drops(DropReason::MqttDenied), 0);
}

#[test]
fn denied_publish_becomes_a_rst_and_the_connection_stays_denied() {
    require_root("denied_publish_becomes_a_rst_and_the_connection_stays_denied");
    let dp = Dp::new(mode::ENFORCE, cams());
    dp.open(41010, 1);
    let c = connect(5, "cam-1");
    let bad = publish(5, "cams/cam-2/frame", 0, false, b"x");
    let ok = publish(5, "cams/cam-1/frame", 0, false, b"x");
    assert_eq!(dp.send(41010, 1, &[&c, &bad]), [true, false]);
    assert_eq!(dp.drops(DropReason::MqttDenied), 1);
    // Anything later on the connection is denied too.
    let seq = 2 + c.len() as u32;
    let (_, out) = dp.run(&request(41010, seq, &ok));
    assert_rst(&out, seq);
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 1);
}

#[test]
fn connect_subscribe_qos_and_retain_are_judged() {
    require_root("connect_subscribe_qos_and_retain_are_judged");
    let mut r = cams();
    r.max_qos = 1;
    r.retain = false;
    let dp = Dp::new(mode::ENFORCE, r);
    let t = "sensors/a/temperature";
    let cases: [(&[u8], &str); 5] = [
        (&connect(4, "hub"), "a client id no pattern names"),
        (&subscribe(4, &["cmd/#"]), "a filter wider than allowed"),
        (
            &subscribe(4, &["cmd/cams/1", "$SYS/#"]),
            "one filter of two",
        ),
        (&publish(4, t, 2, false, b"1"), "QoS 2 over max_qos 1"),
        (&publish(4, t, 0, true, b"1"), "RETAIN refused"),
    ];
    for (i, (bad, why)) in cases.iter().enumerate() {
        let port = 41020 + i as u16;
        dp.open(port, 10);
        let c = connect(4, "cam-1");
        let verdicts = if i == 0 {
            dp.send(port, 10, &[bad])
        } else {
            dp.send(port, 10, &[&c, bad])
        };
        assert_eq!(verdicts.last(), Some(&false), "{why}");
        assert!(verdicts[..verdicts.len() - 1].iter().all(|v| *v), "{why}");
    }
    assert_eq!(dp.drops(DropReason::MqttDenied), 5);
}

#[test]
fn a_head_spanning_three_segments_is_judged_where_it_ends() {
    require_root("a_head_spanning_three_segments_is_judged_where_it_ends");
    let dp = Dp::new(mode::ENFORCE, cams());
    for (port, topic, last) in [
        (41030, "sensors/living-room/temperature", true),
        (41031, "sensors/living-room/humidity", false),
    ] {
        dp.open(port, 500);
        let c = connect(4, "cam-9");
        let p = publish(4, topic, 0, false, b"payload");
        // The fixed header, half the topic, the rest with the payload.
        let (a, rest) = p.split_at(2);
        let (b, d) = rest.split_at(12);
        assert_eq!(
            dp.send(port, 500, &[&c, a, b, d]),
            [true, true, true, last],
            "{topic}"
        );
    }
}

#[test]
fn several_packets_in_one_segment() {
    require_root("several_packets_in_one_segment");
    let dp = Dp::new(mode::ENFORCE, cams());
    dp.open(41040, 7);
    let good = cat(&[
        connect(5, "cam-3"),
        publish(5, "sensors/x/temperature", 0, false, b"1"),
        publish(5, "cams/cam-3/a", 1, false, b"2"),
        pingreq(),
    ]);
    assert_eq!(dp.send(41040, 7, &[&good]), [true]);
    dp.open(41041, 7);
    let bad = cat(&[
        connect(5, "cam-3"),
        publish(5, "sensors/x/temperature", 0, false, b"1"),
        publish(5, "cams/cam-4/a", 0, false, b"2"),
    ]);
    assert_eq!(dp.send(41041, 7, &[&bad]), [false]);
}

#[test]
fn a_four_byte_remaining_length_is_skipped_by_count() {
    require_root("a_four_byte_remaining_length_is_skipped_by_count");
    let dp = Dp::new(mode::ENFORCE, cams());
    dp.open(41050, 0);
    let c = connect(4, "cam-1");
    // Remaining length 2,097,152 + : four varint bytes. Only the head and
    // the first payload bytes are sent; the body is skipped by count, so
    // bytes inside it that look like packets are never parsed.
    let topic = b"sensors/a/temperature";
    let rl: u32 = 2 * 1024 * 1024 + 10;
    let mut head = vec![0x30];
    head.extend(porin::testing::mqtt::varint(rl));
    assert_eq!(head.len(), 5);
    head.extend((topic.len() as u16).to_be_bytes());
    head.extend(topic);
    head.extend(subscribe(4, &["#"]));
    assert_eq!(dp.send(41050, 0, &[&c, &head]), [true, true]);
    // A body byte after: still body.
    let seq = 1 + (c.len() + head.len()) as u32;
    let frame = request(41050, seq, &connect(4, "x"));
    assert_eq!(dp.run(&frame), (OK, frame));
}

#[test]
fn refused_streams_have_their_drop_reasons() {
    require_root("refused_streams_have_their_drop_reasons");
    let dp = Dp::new(mode::ENFORCE, cams());
    let c = connect(5, "cam-1");
    let cases: [(Vec<u8>, DropReason); 6] = [
        (
            // A Will: its topic would reach the broker unjudged.
            porin::testing::mqtt::connect_with_will("cam-1", "cmd/everyone", b"x"),
            DropReason::MqttUnsupported,
        ),
        (
            cat(&[c.clone(), packet(0x30, &[0, 0, 0, b'x'])]),
            DropReason::MqttTopicAlias,
        ),
        (
            cat(&[c.clone(), vec![0x30, 0x05, 0x00, 0x20, b'a']]),
            DropReason::MqttMalformed,
        ),
        (
            // A TLS ClientHello on the MQTT port.
            vec![0x16, 0x03, 0x01, 0x00, 0x2e, 0x01, 0x00, 0x00, 0x2a],
            DropReason::MqttMalformed,
        ),
        (
            b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec(),
            DropReason::MqttMalformed,
        ),
        (
            cat(&[c.clone(), publish(5, &"a/".repeat(600), 0, false, b"")]),
            DropReason::MqttUnsupported,
        ),
    ];
    for (i, (bytes, reason)) in cases.iter().enumerate() {
        let port = 41060 + i as u16;
        let before = dp.drops(*reason);
        dp.open(port, 100);
        assert_eq!(dp.send(port, 100, &[bytes]), [false], "{reason:?}");
        assert_eq!(dp.drops(*reason), before + 1, "{reason:?}");
    }
}

#[test]
fn audit_mode_passes_and_counts() {
    require_root("audit_mode_passes_and_counts");
    let dp = Dp::new(mode::AUDIT, cams());
    dp.open(41070, 3);
    let s = cat(&[
        connect(4, "cam-1"),
        publish(4, "secret/topic", 0, false, b"x"),
        publish(4, "sensors/x/temperature", 0, false, b"x"),
    ]);
    assert_eq!(dp.send(41070, 3, &[&s]), [true]);
    assert_eq!(dp.drops(DropReason::MqttDenied), 1);
}

/// A stream of real packets: connect, then publishes and subscribes to
/// allowed and refused topics.
fn stream() -> impl Strategy<Value = (u8, Vec<Vec<u8>>)> {
    let topic = prop_oneof![
        Just("sensors/a/temperature".to_string()),
        Just("sensors/b/humidity".to_string()),
        Just("cams/cam-5/frame".to_string()),
        Just("cams/cam-6/frame".to_string()),
        "[a-z/]{1,90}".prop_filter("no empty last level", |t| !t.ends_with('/')),
    ];
    let pkt = (topic, 0u8..3, 0usize..300, any::<bool>());
    (
        prop_oneof![Just(4u8), Just(5u8)],
        prop::collection::vec(pkt, 1..8),
    )
        .prop_map(|(level, pkts)| {
            let mut out = vec![connect(level, "cam-5")];
            for (t, kind, len, sub) in pkts {
                out.push(if sub {
                    subscribe(level, &[&t])
                } else {
                    publish(level, &t, kind, false, &vec![b'#'; len])
                });
            }
            (level, out)
        })
}

thread_local! {
    static SHARED: std::cell::OnceCell<Dp> = const { std::cell::OnceCell::new() };
}
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(42000);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The kernel denies exactly the segment holding the last byte of the
    /// first head the host parser refuses (and passes every other before
    /// it), for any cut of the stream into segments.
    #[test]
    fn the_kernel_agrees_with_the_host_parser(
        (_level, packets) in stream(),
        cuts in prop::collection::vec(1usize..400, 1..12),
    ) {
        require_root("the_kernel_agrees_with_the_host_parser");
        let bytes: Vec<u8> = packets.concat();
        // Host: where the first refused head ends.
        let mut edges = BTreeMap::new();
        let set = compile_set(77, &KEY, &cams(), &mut edges).unwrap();
        let lookup = |k: &porin_common::mqtt::MqttKey| edges.get(k).copied();
        let mut first_denied: Option<usize> = None;
        let mut ends = Vec::new();
        let mut offsets = Vec::new();
        let mut o = 0;
        for p in &packets {
            offsets.push(o);
            o += p.len();
        }
        let mut session = Session::default();
        let r = parse_stream(&bytes, &KEY, &set, &mut session, &lookup, |_, j| {
            ends.push(j.allowed);
        });
        prop_assert!(r.is_ok() || r == Err(MqttError::TooLarge) || r == Err(MqttError::Malformed) || r == Err(MqttError::Unsupported));
        for (i, allowed) in ends.iter().enumerate() {
            if !allowed && first_denied.is_none() {
                // The kernel judges a head at its last byte.
                let p = &packets[i];
                first_denied = Some(offsets[i] + head_len(p));
            }
        }
        if r.is_err() {
            // Refused streams are covered by the fixed cases above.
            return Ok(());
        }
        let mut segs: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        for c in cuts.iter().cycle() {
            if start >= bytes.len() {
                break;
            }
            let end = (start + c).min(bytes.len());
            segs.push(&bytes[start..end]);
            start = end;
        }
        // One loaded datapath for every case, a new connection each.
        let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let got = SHARED.with(|dp| {
            let dp = dp.get_or_init(|| Dp::new(mode::ENFORCE, cams()));
            dp.open(port, 9);
            dp.send(port, 9, &segs)
        });
        let mut want = Vec::new();
        let mut pos = 0;
        let mut denied = false;
        for s in &segs {
            let end = pos + s.len();
            let v = match first_denied {
                _ if denied => false,
                Some(d) if d > pos && d <= end => {
                    denied = true;
                    false
                }
                _ => true,
            };
            want.push(v);
            pos = end;
        }
        prop_assert_eq!(got, want);
    }
}

/// Bytes of refused packet `p`'s head as the parser reads it: the fixed
/// header, then through the topic (PUBLISH), through the refused filter
/// (SUBSCRIBE, here of one filter: all but its options byte), or the
/// whole packet (CONNECT here has no will, user or password).
fn head_len(p: &[u8]) -> usize {
    let mut i = 1;
    while p[i] & 0x80 != 0 {
        i += 1;
    }
    let fixed = i + 1;
    match p[0] >> 4 {
        3 => fixed + 2 + usize::from(u16::from_be_bytes([p[fixed], p[fixed + 1]])),
        8 => p.len() - 1,
        _ => p.len(),
    }
}

/// A segment of many small PUBLISH packets (a QoS 0 burst the client's
/// TCP coalesced): each costs one tail call, so 20 fit the per-packet
/// budget; past it the segment is refused, never passed unjudged.
#[test]
fn a_burst_of_small_publishes_in_one_segment() {
    require_root("a_burst_of_small_publishes_in_one_segment");
    let dp = Dp::new(mode::ENFORCE, cams());
    let burst = |n: usize| {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend(publish(
                4,
                "sensors/x/temperature",
                0,
                false,
                format!("{i}").as_bytes(),
            ));
        }
        v
    };
    dp.open(41080, 1);
    let c = connect(4, "cam-1");
    assert_eq!(dp.send(41080, 1, &[&c, &burst(20)]), [true, true]);
    dp.open(41081, 1);
    let before = dp.drops(DropReason::MqttUnsupported);
    assert_eq!(dp.send(41081, 1, &[&c, &burst(40)]), [true, false]);
    assert_eq!(dp.drops(DropReason::MqttUnsupported), before + 1);
}
