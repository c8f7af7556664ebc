//! The HTTP stage (`http_from_container` / `http_to_container`, tail-called
//! by the main TC programs) through `BPF_PROG_TEST_RUN`: connections opened
//! with a SYN, then request segments; verdicts, the rewritten packet (a RST
//! to the server after a denial), drop counters, and a differential test
//! against the host parser and matcher (both hashing under the key the
//! test writes to `PORIN_HTTPK_V1`).
//!
//! The endpoint under test is `BPF_PROG_TEST_RUN`'s loopback (ifindex 1):
//! the server of an ingress rule (`to_container`), or the client of an
//! egress rule toward a server outside, `world` or `host`
//! (`from_container`, [`Dp::client`]). A denial clones a 403 onto the
//! loopback (its ingress for `to_container`, its egress for
//! `from_container`; addresses 10.0.0.x, which the stack drops); the tests
//! that check the 403 itself run in a namespace of their own and read it
//! from a packet socket on that namespace's loopback.
//!
//! Needs root (CI runs as root); without it each test fails loudly.

mod http_gen;

use porin::maps::{self, MapDef};
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use porin::{
    config::{HeaderMatch, HttpPath, HttpRule, Loc, Method},
    datapath::http::{load_stage, write_key},
    ebpf,
    policy::http::compile_rules,
    testing::{
        packets::{self, PROTO_TCP},
        rawnet::RawNetns,
        require_root,
    },
};
use porin_common::{
    datapath::{
        identity, mode, tc_action, Counter, Ct4Key, CtClock, CtCount, CtKey, CtValue,
        DatapathConfig, Direction, DropReason, EndpointInfo, Identity, PolicyKey, PolicyValue,
        CONFIG_READY,
    },
    http::{HttpError, HttpKey, Request, MAX_HEAD},
    http_stream::{conn_at_syn, segment as host_segment, tcp_flag, Verdict, MAX_TAILS},
    sip::SipKey,
};
use proptest::prelude::*;

const OK: u32 = tc_action::OK as u32;
const SHOT: u32 = tc_action::SHOT as u32;
const EP: u32 = 1;
const WEB: Identity = identity::GROUP_BASE + 1;
const CLI: Identity = identity::GROUP_BASE + 2;
/// The server (endpoint, identity WEB) and the client (CLI).
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 8080;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;

struct Dp {
    bpf: Ebpf,
    /// The program the endpoint's requests go through: `to_container` on
    /// the server's veth, `from_container` on the client's.
    prog: &'static str,
    /// The `ALLOW_HTTP` entry the rules hang off.
    key: PolicyKey,
    /// The key in `PORIN_HTTPK_V1`, which `set_rules` compiles under.
    hash_key: SipKey,
}

/// The hash key the tests install (any non-zero key).
const KEY_A: SipKey = SipKey {
    k0: 0x1122_3344_5566_7788,
    k1: 0x99aa_bbcc_ddee_ff00,
};
const KEY_B: SipKey = SipKey {
    k0: 0x1122_3344_5566_7788,
    k1: 0x99aa_bbcc_ddee_ff01,
};

fn rule(
    method: Method,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, Option<&str>)],
) -> HttpRule {
    HttpRule {
        method,
        path: HttpPath::parse(path).unwrap(),
        host: host.map(str::to_owned),
        headers: headers
            .iter()
            .map(|(n, v)| HeaderMatch {
                name: n.to_string(),
                value: v.map(str::to_owned),
            })
            .collect(),
        loc: Loc { line: 1, column: 1 },
    }
}

/// GET /metrics; POST /api/* with an `x-key` header.
fn default_rules() -> Vec<HttpRule> {
    vec![
        rule(Method::Get, "/metrics", None, &[]),
        rule(Method::Post, "/api/*", None, &[("x-key", None)]),
    ]
}

impl Dp {
    /// Server WEB at [`EP`] in `mode`, client CLI, generation 0, the
    /// ingress entry (WEB, CLI, tcp/8080) `ALLOW_HTTP` with `rules`.
    fn new(mode: u8, rules: &[HttpRule]) -> Self {
        Self::with_stage(true, mode, rules)
    }

    /// [`Dp::new`], with or without the HTTP stage programs loaded.
    fn with_stage(stage: bool, mode: u8, rules: &[HttpRule]) -> Self {
        let mut dp = Dp {
            bpf: loaded(stage),
            prog: "to_container",
            key: key(),
            hash_key: KEY_A,
        };
        dp.endpoint(WEB, mode);
        dp.hash(maps::IP4).insert(SERVER.octets(), WEB, 0).unwrap();
        dp.hash(maps::IP4).insert(CLIENT.octets(), CLI, 0).unwrap();
        // The server's address is the endpoint's (`to_container` checks the
        // destination's owner).
        dp.hash(maps::UPLINK_ENDPOINTS4)
            .insert(SERVER.octets(), EP, 0)
            .unwrap();
        dp.configure(rules);
        dp
    }

    /// The client's side: the client CLI at [`EP`] in `mode`, the server
    /// outside (its address unknown: `world`, or the host's with `peer`
    /// [`identity::HOST`]), the egress entry (CLI, `peer`, tcp/8080)
    /// `ALLOW_HTTP` with `rules`, keyed as the compiler keys a policy
    /// `from: [cli] to: [world|host]`. Requests are judged at
    /// `from_container`.
    fn client(mode: u8, peer: Identity, rules: &[HttpRule]) -> Self {
        let mut dp = Dp {
            bpf: loaded(true),
            prog: "from_container",
            key: PolicyKey::new(CLI, peer, Direction::Egress, PROTO_TCP, PORT),
            hash_key: KEY_A,
        };
        dp.endpoint(CLI, mode);
        // The client's own address: `from_container` checks the source's
        // owner.
        dp.hash(maps::IP4).insert(CLIENT.octets(), CLI, 0).unwrap();
        dp.hash(maps::UPLINK_ENDPOINTS4)
            .insert(CLIENT.octets(), EP, 0)
            .unwrap();
        if peer == identity::HOST {
            dp.hash(maps::IP4)
                .insert(SERVER.octets(), identity::HOST, 0)
                .unwrap();
        }
        dp.configure(rules);
        dp
    }

    /// The endpoint at [`EP`].
    fn endpoint(&mut self, identity: Identity, mode: u8) {
        self.hash(maps::ENDPOINTS)
            .insert(EP, EndpointInfo::new(identity, mode), 0)
            .unwrap();
    }

    /// Generation 0 ready, the entry `ALLOW_HTTP` with `rules`.
    fn configure(&mut self, rules: &[HttpRule]) {
        let dp = self;
        let mut cfg: Array<_, DatapathConfig> = maps::open_mut(&mut dp.bpf, maps::CONFIG).unwrap();
        cfg.set(
            0,
            DatapathConfig {
                generation: 0,
                ready: CONFIG_READY,
                // The deny cache on, as the manager runs it.
                epoch: 1,
                _pad: 0,
            },
            0,
        )
        .unwrap();
        let key = dp.key;
        dp.hash(maps::POLICY)
            .insert(key, PolicyValue::allow_http(1), 0)
            .unwrap();
        dp.set_rules(rules)
            .expect("rules within the datapath's limits");
    }

    /// Replaces the rule set of the entry (compiled under the key the
    /// programs have).
    fn set_rules(&mut self, rules: &[HttpRule]) -> Option<()> {
        let hash_key = self.hash_key;
        self.set_rules_under(&hash_key, rules)
    }

    /// Replaces the rule set of the entry, compiled under `key`.
    fn set_rules_under(&mut self, hash_key: &SipKey, rules: &[HttpRule]) -> Option<()> {
        let mut map = std::collections::BTreeMap::new();
        let set = compile_rules(hash_key, b"t", &[(1, "p", rules)], &mut map).ok()?;
        let mut r = self.hash(maps::HTTP_RULES);
        let old: Vec<HttpKey> = r.keys().map(|k| k.unwrap()).collect();
        for k in old {
            r.remove(&k).unwrap();
        }
        for (k, v) in map {
            r.insert(k, v, 0).unwrap();
        }
        let key = self.key;
        self.hash(maps::HTTP_SETS).insert(key, set, 0).unwrap();
        Some(())
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, def: MapDef<K, V>) -> HashMap<&mut MapData, K, V> {
        maps::open_mut(&mut self.bpf, def).expect("a hash map")
    }

    fn prog(&self, name: &str) -> &SchedClassifier {
        self.bpf.program(name).unwrap().try_into().unwrap()
    }

    /// Runs the endpoint's request-side program on `frame`: the verdict
    /// and the packet after.
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_prog(self.prog, frame)
    }

    /// Runs program `name` on `frame`.
    fn run_prog(&self, name: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let r = self
            .prog(name)
            .test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {e}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Drops (or audited would-be drops) of every reason.
    fn all_drops(&self) -> u64 {
        let arr: PerCpuArray<_, Counter> = maps::open(&self.bpf, maps::DROPS).unwrap();
        (0..porin_common::datapath::DROP_REASONS)
            .map(|r| {
                arr.get(&r, 0)
                    .unwrap()
                    .iter()
                    .map(|c| c.packets)
                    .sum::<u64>()
            })
            .sum()
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
}

/// The object with both TC programs loaded, and the HTTP stage if `stage`.
fn loaded(stage: bool) -> Ebpf {
    let mut bpf = ebpf::open().expect("open eBPF object");
    for name in ["from_container", "to_container"] {
        ebpf::load_program::<SchedClassifier>(&mut bpf, name)
            .unwrap_or_else(|e| panic!("load {name}: {e:?}"));
    }
    if stage {
        load_stage(&mut bpf).unwrap_or_else(|e| panic!("load the HTTP stage: {e:?}"));
    }
    write_key(&mut bpf, &KEY_A).expect("write the hash key");
    bpf
}

fn key() -> PolicyKey {
    PolicyKey::new(WEB, CLI, Direction::Ingress, PROTO_TCP, PORT)
}

/// A client→server TCP segment.
fn segment(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = packets::tcp(sport, PORT, flags, payload);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&77u32.to_be_bytes());
    packets::frame_v4(CLIENT, SERVER, PROTO_TCP, &t)
}

/// A request segment (ACK + PSH).
fn request(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    segment(sport, seq, packets::TCP_ACK | TCP_PSH, payload)
}

/// Asserts `out` is a bare RST from the client to the server at `seq`.
#[track_caller]
fn assert_rst(out: &[u8], seq: u32) {
    assert_eq!(out.len(), 14 + 20 + 20, "RST without payload: {out:?}");
    assert_eq!(&out[26..30], &CLIENT.octets());
    assert_eq!(&out[30..34], &SERVER.octets());
    assert_eq!(out[34 + 13], TCP_RST);
    assert_eq!(&out[38..42], &seq.to_be_bytes());
    assert_eq!(packets::checksum(&out[14..34]), 0, "IPv4 header checksum");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&out[26..34]);
    pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
    pseudo.extend_from_slice(&out[34..54]);
    assert_eq!(packets::checksum(&pseudo), 0, "TCP checksum");
}

const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: web\r\n\r\n";

#[test]
fn allowed_get_passes_unchanged() {
    require_root("allowed_get_passes_unchanged");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    dp.open(40000, 1000);
    let frame = request(40000, 1001, GET_METRICS);
    let (v, out) = dp.run(&frame);
    assert_eq!(v, OK);
    assert_eq!(out, frame, "an allowed request is not touched");
    // A pure ACK and the server's reply pass as conntrack hits.
    assert_eq!(
        dp.run(&segment(
            40000,
            1001 + GET_METRICS.len() as u32,
            packets::TCP_ACK,
            b""
        ))
        .0,
        OK
    );
    assert_eq!(dp.drops(DropReason::HttpDenied), 0);
    assert_eq!(
        allowed_counts(&dp),
        [0, 1],
        "the request is counted under its policy (number 1)"
    );
}

/// `PORIN_HTTPN_V1`: allowed requests by policy number, summed over CPUs.
fn allowed_counts(dp: &Dp) -> Vec<u64> {
    porin::flows::maps::CounterMaps::open(&dp.bpf)
        .expect("counter maps")
        .http_allowed(1)
}

#[test]
fn denied_post_becomes_a_rst_to_the_server() {
    require_root("denied_post_becomes_a_rst_to_the_server");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    dp.open(40001, 5000);
    let (v, out) = dp.run(&request(
        40001,
        5001,
        b"POST /admin HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n",
    ));
    assert_eq!(v, OK, "the packet goes on, as a RST");
    assert_rst(&out, 5001);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    // Anything later on the connection is denied too.
    let (_, out) = dp.run(&request(40001, 5001, GET_METRICS));
    assert_rst(&out, 5001);
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 1);
}

#[test]
fn audit_mode_counts_and_passes() {
    require_root("audit_mode_counts_and_passes");
    let dp = Dp::new(mode::AUDIT, &default_rules());
    dp.open(40002, 1);
    let frame = request(40002, 2, b"DELETE /metrics HTTP/1.1\r\n\r\n");
    let (v, out) = dp.run(&frame);
    assert_eq!((v, out), (OK, frame));
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
}

/// Audit mode judges every request of a keep-alive connection, also after
/// one no rule allows (before, the connection stopped being judged at the
/// first would-be denial), and records each as an HTTP event: the would-be
/// denials as audited drops (rule 0), the allowed ones with their rule.
#[test]
fn audit_mode_judges_and_records_every_request_of_a_connection() {
    require_root("audit_mode_judges_and_records_every_request_of_a_connection");
    let dp = Dp::new(mode::AUDIT, &default_rules());
    let maps = porin::flows::maps::EventMaps::open(&dp.bpf).expect("event maps");
    let (mut source, mut ctl) = maps.split();
    ctl.set_cpu_rate(1000, 1_000_000_000).unwrap();
    dp.open(40010, 1);
    let requests: [&[u8]; 4] = [
        b"DELETE /metrics HTTP/1.1\r\nHost: web\r\n\r\n",
        GET_METRICS,
        b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n",
        GET_METRICS,
    ];
    let mut seq = 2u32;
    for r in requests {
        let frame = request(40010, seq, r);
        assert_eq!(dp.run(&frame), (OK, frame.clone()), "audit mode passes");
        seq += r.len() as u32;
    }
    assert_eq!(dp.drops(DropReason::HttpDenied), 2, "both denials judged");
    assert_eq!(
        dp.drops(DropReason::HttpUnsupported),
        0,
        "the connection was never given up"
    );
    assert_eq!(
        allowed_counts(&dp),
        [0, 2],
        "every allowed request counted, the audited denials not"
    );
    let mut events = Vec::new();
    while source.take(100, |item| {
        if let porin::flows::source::Item::Record(bytes) = item {
            events.push(porin::flows::record::decode(bytes).expect("a record"));
        }
    }) > 0
    {}
    let http: Vec<(String, u8, bool)> = events
        .iter()
        .filter(|e| e.kind == porin_common::flow::kind::HTTP)
        .map(|e| {
            let path = String::from_utf8_lossy(&e.http_path[..e.http_path_len as usize]);
            (path.into_owned(), e.verdict, e.rule != 0)
        })
        .collect();
    use porin_common::flow::verdict::{AUDIT, FORWARDED};
    assert_eq!(
        http,
        [
            ("/metrics".to_string(), AUDIT, false),
            ("/metrics".to_string(), FORWARDED, true),
            ("/admin".to_string(), AUDIT, false),
            ("/metrics".to_string(), FORWARDED, true),
        ],
        "{events:#?}"
    );
}

#[test]
fn missing_required_header_is_denied() {
    require_root("missing_required_header_is_denied");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    dp.open(40003, 1);
    let (_, out) = dp.run(&request(
        40003,
        2,
        b"POST /api/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    dp.open(40004, 1);
    let ok = request(
        40004,
        2,
        b"POST /api/x HTTP/1.1\r\nX-Key: 1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(dp.run(&ok), (OK, ok));
}

#[test]
fn keep_alive_allowed_then_denied_and_bodies() {
    require_root("keep_alive_allowed_then_denied_and_bodies");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    dp.open(40005, 100);
    let mut seq = 101u32;
    // A POST whose body spans two segments.
    let head = b"POST /api/v1 HTTP/1.1\r\nX-Key: k\r\nContent-Length: 10\r\n\r\n01234";
    let f = request(40005, seq, head);
    assert_eq!(dp.run(&f), (OK, f));
    seq += head.len() as u32;
    let f = request(40005, seq, b"56789");
    assert_eq!(dp.run(&f), (OK, f.clone()), "the rest of the body");
    // The body again, other bytes: they are body bytes whatever they hold.
    let f2 = request(40005, seq, b"GET /");
    assert_eq!(dp.run(&f2), (OK, f2), "a body retransmission");
    seq += 5;
    let f = request(40005, seq, GET_METRICS);
    assert_eq!(dp.run(&f), (OK, f.clone()), "second request");
    // A retransmission of head bytes is dropped without an answer: the
    // server has them (its first copy wins) or never gets them.
    let (v, _) = dp.run(&f);
    assert_eq!(v, SHOT, "a retransmission of head bytes");
    assert_eq!(dp.drops(DropReason::HttpStream), 1);
    seq += GET_METRICS.len() as u32;
    let (_, out) = dp.run(&request(40005, seq, b"GET /admin HTTP/1.1\r\n\r\n"));
    assert_rst(&out, seq);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
}

#[test]
fn pipelined_requests_in_one_segment_are_each_judged() {
    require_root("pipelined_requests_in_one_segment_are_each_judged");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    dp.open(40006, 1);
    // The body holds a forbidden request's bytes: skipped, never parsed.
    let body = b"GET /admin HTTP/1.1\r\n\r\n";
    let post = format!(
        "POST /api/x HTTP/1.1\r\nX-Key: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let ok = [GET_METRICS, post.as_bytes(), body, GET_METRICS].concat();
    let f = request(40006, 2, &ok);
    assert_eq!(dp.run(&f), (OK, f));
    assert_eq!(dp.all_drops(), 0);
    // An allowed request, then a denied one: the whole segment is refused.
    dp.open(40106, 1);
    let two = [GET_METRICS, b"GET /admin HTTP/1.1\r\n\r\n"].concat();
    let (_, out) = dp.run(&request(40106, 2, &two));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
}

#[test]
fn heads_split_across_segments_are_judged_when_complete() {
    require_root("heads_split_across_segments_are_judged_when_complete");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    // One byte per segment: every segment but the last passes, the last
    // completes the head and is judged.
    for (sport, head, allowed) in [
        (40020u16, GET_METRICS, true),
        (
            40021,
            &b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n"[..],
            false,
        ),
    ] {
        dp.open(sport, 1);
        for (i, b) in head.iter().enumerate() {
            let f = request(sport, 2 + i as u32, &[*b]);
            let (v, out) = dp.run(&f);
            if i + 1 < head.len() || allowed {
                assert_eq!((v, out), (OK, f), "byte {i} of {sport}");
            } else {
                assert_rst(&out, 2 + i as u32);
            }
        }
    }
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    // A long head (a Prometheus-sized one, ~300 bytes) in two writes that
    // split a header value: the parser's state crosses segments.
    let mut long = Vec::from(&b"GET /metrics HTTP/1.1\r\nHost: web\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\nAccept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n"[..]);
    long.extend_from_slice(b"\r\n");
    assert!(long.len() > 256);
    for cut in [1, 31, 32, 33, 100, long.len() - 1] {
        let sport = 40030 + cut as u16;
        dp.open(sport, 1);
        let a = request(sport, 2, &long[..cut]);
        assert_eq!(dp.run(&a), (OK, a), "first part, cut {cut}");
        let b = request(sport, 2 + cut as u32, &long[cut..]);
        assert_eq!(dp.run(&b), (OK, b), "second part, cut {cut}");
    }
    // The same in one segment.
    dp.open(40029, 1);
    let f = request(40029, 2, &long);
    assert_eq!(dp.run(&f), (OK, f));
    assert_eq!(dp.drops(DropReason::HttpDenied), 1, "no other denial");
}

#[test]
fn stream_evasions_are_refused() {
    require_root("stream_evasions_are_refused");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    // Urgent data: the server's socket would not read the urgent byte.
    dp.open(40040, 1);
    let mut urg = packets::tcp(
        40040,
        PORT,
        packets::TCP_ACK | TCP_PSH | tcp_flag::URG,
        b"GET /metrics",
    );
    urg[4..8].copy_from_slice(&2u32.to_be_bytes());
    urg[18..20].copy_from_slice(&1u16.to_be_bytes());
    let (_, out) = dp.run(&packets::frame_v4(CLIENT, SERVER, PROTO_TCP, &urg));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpStream), 1);
    // Data on a SYN of a known 4-tuple (TCP Fast Open).
    dp.open(40041, 1);
    let mut syn = packets::tcp(
        40041,
        PORT,
        packets::TCP_SYN,
        b"GET /admin HTTP/1.1\r\n\r\n",
    );
    syn[4..8].copy_from_slice(&50u32.to_be_bytes());
    let (_, out) = dp.run(&packets::frame_v4(CLIENT, SERVER, PROTO_TCP, &syn));
    assert_rst(&out, 50);
    assert_eq!(dp.drops(DropReason::HttpStream), 2);
    // Head bytes out of order (past the next byte): dropped, no answer,
    // and the connection goes on when they come in order.
    dp.open(40042, 1);
    let (v, _) = dp.run(&request(40042, 3, b"ET /metrics HTTP/1.1\r\n\r\n"));
    assert_eq!(v, SHOT);
    assert_eq!(dp.drops(DropReason::HttpStream), 3);
    let f = request(40042, 2, GET_METRICS);
    assert_eq!(dp.run(&f), (OK, f));
    // Half a head, then the same bytes again with other content: dropped.
    dp.open(40043, 1);
    let a = request(40043, 2, b"GET /metrics HTTP/1.1\r\n");
    assert_eq!(dp.run(&a), (OK, a));
    let (v, _) = dp.run(&request(40043, 2, b"GET /admin/ HTTP/1.1\r\n\r\n"));
    assert_eq!(v, SHOT);
    assert_eq!(dp.drops(DropReason::HttpStream), 4);
    // Garbage and TLS are refused at once.
    dp.open(40008, 1);
    let (_, out) = dp.run(&request(40008, 2, b"\x00\x01\x02garbage\r\n\r\n"));
    assert_rst(&out, 2);
    dp.open(40009, 1);
    let hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03";
    let (_, out) = dp.run(&request(40009, 2, hello));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpMalformed), 2);
}

#[test]
fn head_limits_are_enforced() {
    require_root("head_limits_are_enforced");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    // Past 8 KiB over many segments: HttpHeadTooLarge.
    dp.open(40050, 1);
    let mut seq = 2u32;
    let first = b"GET /metrics HTTP/1.1\r\nCookie: ";
    let f = request(40050, seq, first);
    assert_eq!(dp.run(&f), (OK, f));
    seq += first.len() as u32;
    let filler = [b'a'; 512];
    let mut denied = false;
    for _ in 0..20 {
        let f = request(40050, seq, &filler);
        let (v, out) = dp.run(&f);
        if out != f {
            assert_rst(&out, seq);
            assert_eq!(v, OK);
            denied = true;
            break;
        }
        seq += filler.len() as u32;
    }
    assert!(denied, "a head over 8 KiB is refused");
    assert!(seq - 2 + 512 > porin_common::http::MAX_HEAD);
    assert_eq!(dp.drops(DropReason::HttpHeadTooLarge), 1);
    // More head bytes in one packet than the stage parses per packet:
    // headers the parser must read byte by byte (names, short values),
    // 64 per tail call.
    dp.open(40051, 1);
    let mut big = Vec::from(&b"GET /metrics HTTP/1.1\r\n"[..]);
    for i in 0..250 {
        big.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert!(big.len() > 2000);
    let (_, out) = dp.run(&request(40051, 2, &big));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 1);
}

/// A head as a browser or an API client with a bearer token sends it:
/// `long` bytes of `Authorization` and cookies around the usual headers.
fn long_head(start: &str, extra: &str, long: usize) -> Vec<u8> {
    let token: String = (0..long / 2)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    format!(
        "{start}\r\nHost: web:8080\r\nConnection: keep-alive\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         HeadlessChrome/120.0.6099.224 Safari/537.36\r\n\
         Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
         Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.{token}\r\n\
         Accept-Encoding: gzip, deflate\r\n{extra}\
         Cookie: session={token}; theme=dark;  lang=en\r\n\
         Accept-Language: en-US,en;q=0.9\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn long_values_no_rule_reads_are_skipped() {
    require_root("long_values_no_rule_reads_are_skipped");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    // About 3 KiB in one packet (what BPF_PROG_TEST_RUN takes; the live
    // tests send 6 KiB and more): allowed, and passed untouched.
    let ok = long_head("GET /metrics HTTP/1.1", "", 2600);
    assert!(ok.len() > 3000, "{}", ok.len());
    dp.open(40060, 1);
    let f = request(40060, 2, &ok);
    assert_eq!(dp.run(&f), (OK, f));
    // The same values around a forbidden request line: judged, refused.
    dp.open(40061, 1);
    let bad = long_head("GET /admin HTTP/1.1", "", 2600);
    let (_, out) = dp.run(&request(40061, 2, &bad));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    // A header a rule names is still read after the skipped ones.
    let post = long_head(
        "POST /api/x HTTP/1.1",
        "X-Key: k\r\nContent-Length: 0\r\n",
        2600,
    );
    dp.open(40062, 1);
    let f = request(40062, 2, &post);
    assert_eq!(dp.run(&f), (OK, f));
    let no_key = long_head("POST /api/x HTTP/1.1", "Content-Length: 0\r\n", 2600);
    dp.open(40063, 1);
    let (_, out) = dp.run(&request(40063, 2, &no_key));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpDenied), 2);
    // Skipped is not unchecked: a control byte inside a long value.
    let mut nul = long_head("GET /metrics HTTP/1.1", "", 2600);
    let at = nul.len() - 500;
    nul[at] = 0;
    dp.open(40064, 1);
    let (_, out) = dp.run(&request(40064, 2, &nul));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpMalformed), 1);
    // Split inside a long value, at every 97th byte: each part passes
    // until the last, and the whole is judged once.
    dp.open(40065, 1);
    let mut seq = 2u32;
    for part in ok.chunks(97) {
        let f = request(40065, seq, part);
        assert_eq!(dp.run(&f), (OK, f), "part at {seq}");
        seq += part.len() as u32;
    }
    let (first, rest) = bad.split_at(1500);
    dp.open(40066, 1);
    let f = request(40066, 2, first);
    assert_eq!(dp.run(&f), (OK, f), "an incomplete head passes");
    let (_, out) = dp.run(&request(40066, 2 + 1500, rest));
    assert_rst(&out, 2 + 1500);
    assert_eq!(dp.drops(DropReason::HttpDenied), 3);
}

#[test]
fn chunked_bodies_are_skipped_and_odd_framing_refused() {
    require_root("chunked_bodies_are_skipped_and_odd_framing_refused");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    let head = b"POST /api/x HTTP/1.1\r\nX-Key: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Chunk data holding a forbidden request's bytes, many chunks, then
    // the next request: one segment, and the same split byte by byte.
    let mut body = Vec::new();
    body.extend_from_slice(b"17\r\nGET /admin HTTP/1.1\r\n\r\n\r\n");
    for _ in 0..10 {
        body.extend_from_slice(b"3\r\nabc\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let stream = [&head[..], &body, GET_METRICS].concat();
    dp.open(40070, 1);
    let f = request(40070, 2, &stream);
    assert_eq!(dp.run(&f), (OK, f), "one segment");
    dp.open(40071, 1);
    for (i, b) in stream.iter().enumerate() {
        let f = request(40071, 2 + i as u32, &[*b]);
        assert_eq!(dp.run(&f), (OK, f), "byte {i}");
    }
    assert_eq!(dp.all_drops(), 0);
    // The request after the body is judged.
    dp.open(40072, 1);
    let bad = [&head[..], b"1\r\nx\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"].concat();
    let (_, out) = dp.run(&request(40072, 2, &bad));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    // Framing servers read two ways: refused with its reason.
    let refused: [(&[u8], DropReason); 5] = [
        (b"5;ext\r\nhello\r\n0\r\n\r\n", DropReason::HttpUnsupported),
        (
            b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            DropReason::HttpUnsupported,
        ),
        (
            b"5\r\nhelloGET /admin HTTP/1.1\r\n\r\n",
            DropReason::HttpMalformed,
        ),
        (b"5\nhello\r\n0\r\n\r\n", DropReason::HttpMalformed),
        (b"ffffffff\r\n", DropReason::HttpUnsupported),
    ];
    for (i, (body, why)) in refused.iter().enumerate() {
        let sport = 40073 + i as u16;
        dp.open(sport, 1);
        let before = dp.drops(*why);
        let (_, out) = dp.run(&request(sport, 2, &[&head[..], body].concat()));
        assert_rst(&out, 2);
        assert_eq!(
            dp.drops(*why),
            before + 1,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Heads that frame two ways, or switch protocols.
    let heads: [(&[u8], DropReason); 3] = [
        (
            b"POST /api/x HTTP/1.1\r\nX-Key: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            DropReason::HttpMalformed,
        ),
        (
            b"POST /api/x HTTP/1.1\r\nX-Key: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            DropReason::HttpUnsupported,
        ),
        (
            b"GET /metrics HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            DropReason::HttpUnsupported,
        ),
    ];
    for (i, (h, why)) in heads.iter().enumerate() {
        let sport = 40080 + i as u16;
        dp.open(sport, 1);
        let before = dp.drops(*why);
        let (_, out) = dp.run(&request(sport, 2, h));
        assert_rst(&out, 2);
        assert_eq!(dp.drops(*why), before + 1, "{}", String::from_utf8_lossy(h));
    }
}

#[test]
fn mid_stream_payload_without_a_syn_is_refused() {
    require_root("mid_stream_payload_without_a_syn_is_refused");
    let dp = Dp::new(mode::ENFORCE, &default_rules());
    // No SYN seen: the connection is picked up by this very packet.
    let (v, _) = dp.run(&request(40011, 9, GET_METRICS));
    assert_eq!(v, SHOT);
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 1);
    // Its state says "unknown": later payload is refused as well.
    let (_, out) = dp.run(&request(40011, 9 + GET_METRICS.len() as u32, GET_METRICS));
    assert_rst(&out, 9 + GET_METRICS.len() as u32);
}

#[test]
fn stage_missing_fails_closed() {
    require_root("stage_missing_fails_closed");
    // Same maps as `Dp::new` but without loading the stage programs.
    let dp = Dp::with_stage(false, mode::ENFORCE, &default_rules());
    dp.open(40012, 1);
    let (v, _) = dp.run(&request(40012, 2, GET_METRICS));
    assert_eq!(v, SHOT, "no stage program: drop");
    assert_eq!(dp.drops(DropReason::Internal), 1);
}

#[test]
fn rules_compiled_under_another_key_do_not_match() {
    require_root("rules_compiled_under_another_key_do_not_match");
    let mut dp = Dp::new(mode::ENFORCE, &default_rules());
    // The kernel hashes under KEY_A; the rules are hashed under KEY_B.
    dp.set_rules_under(&KEY_B, &default_rules()).unwrap();
    dp.open(40020, 1);
    let (_, out) = dp.run(&request(40020, 2, GET_METRICS));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    // The same rules under the kernel's key allow it.
    dp.set_rules_under(&KEY_A, &default_rules()).unwrap();
    dp.open(40021, 1);
    let ok = request(40021, 2, GET_METRICS);
    assert_eq!(dp.run(&ok), (OK, ok));
    // And once the kernel's key is KEY_B, the KEY_B rules match.
    write_key(&mut dp.bpf, &KEY_B).unwrap();
    dp.set_rules_under(&KEY_B, &default_rules()).unwrap();
    dp.open(40022, 1);
    let ok = request(40022, 2, GET_METRICS);
    assert_eq!(dp.run(&ok), (OK, ok));
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
}

#[test]
fn zero_key_denies_every_request() {
    require_root("zero_key_denies_every_request");
    let mut dp = Dp::new(mode::ENFORCE, &default_rules());
    // All zeroes: the key was never written (rules compiled under a zero
    // key must not count either).
    write_key(&mut dp.bpf, &SipKey::ZERO).unwrap();
    dp.set_rules_under(&SipKey::ZERO, &default_rules()).unwrap();
    dp.open(40023, 1);
    let (v, out) = dp.run(&request(40023, 2, GET_METRICS));
    assert_eq!(v, OK, "the packet goes on, as a RST");
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::Internal), 1);
    // The connection stays denied once a key is there.
    write_key(&mut dp.bpf, &KEY_A).unwrap();
    let (_, out) = dp.run(&request(40023, 2, GET_METRICS));
    assert_rst(&out, 2);
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 1);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// The kernel and the host give the same verdict on the same bytes.
#[test]
fn differential_kernel_and_host_agree() {
    require_root("differential_kernel_and_host_agree");
    let dp = std::cell::RefCell::new(Dp::new(mode::AUDIT, &default_rules()));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    });
    let sport = std::cell::Cell::new(1024u16);
    let allowed = std::cell::Cell::new(0usize);
    runner
        .run(&(http_gen::rules(), http_gen::request()), |(rules, req)| {
            let bytes = req.render();
            let mut dp = dp.borrow_mut();
            let Some((set, _)) = http_gen::compile(&KEY_A, &rules) else {
                return Ok(());
            };
            if dp.set_rules(&rules).is_none() {
                return Ok(());
            }
            // Heads past one packet's parse budget are denied by design:
            // the host's composition of the stage says which.
            let mut conn = conn_at_syn(10, set);
            let mut r = Request::EMPTY;
            let flags = tcp_flag::ACK | TCP_PSH;
            let host_stage = host_segment(
                &mut conn,
                &mut r,
                &KEY_A,
                11,
                flags,
                &bytes,
                MAX_HEAD,
                MAX_TAILS,
                |_| true,
            );
            let over_budget = host_stage == Verdict::Deny(HttpError::Unsupported);
            let next = sport.get().wrapping_add(1).max(1024);
            sport.set(next);
            let sport = next;
            dp.open(sport, 10);
            let before = dp.all_drops();
            // Audit mode: the verdict shows in the counters, the packet
            // passes; allowed means no drop of any reason was counted.
            let unsupported = dp.drops(DropReason::HttpUnsupported);
            let (v, _) = dp.run(&request(sport, 11, &bytes));
            prop_assert_eq!(v, OK);
            let kernel = dp.all_drops() == before;
            prop_assert_eq!(
                dp.drops(DropReason::HttpUnsupported) > unsupported,
                over_budget,
                "over the budget: {:?} {}",
                host_stage,
                String::from_utf8_lossy(&bytes)
            );
            if over_budget {
                return Ok(());
            }
            let host = req.reference(&rules);
            allowed.set(allowed.get() + usize::from(host));
            prop_assert_eq!(kernel, host, "{}", String::from_utf8_lossy(&bytes));
            Ok(())
        })
        .unwrap();
    assert!(
        allowed.get() > 0,
        "the generator must produce allowed requests too"
    );
}

#[test]
fn ipv6_requests_are_judged_and_answered() {
    require_root("ipv6_requests_are_judged_and_answered");
    let server6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let client6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    let mut dp = Dp::new(mode::ENFORCE, &default_rules());
    dp.hash(maps::IP6).insert(server6.octets(), WEB, 0).unwrap();
    dp.hash(maps::IP6).insert(client6.octets(), CLI, 0).unwrap();
    dp.hash(maps::UPLINK_ENDPOINTS6)
        .insert(server6.octets(), EP, 0)
        .unwrap();
    let seg6 = |seq: u32, flags: u8, payload: &[u8]| {
        let mut t = packets::tcp(41000, PORT, flags, payload);
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        packets::frame_v6(client6, server6, PROTO_TCP, &t)
    };
    assert_eq!(dp.run(&seg6(7, packets::TCP_SYN, b"")).0, OK);
    let ok = seg6(8, packets::TCP_ACK | TCP_PSH, GET_METRICS);
    assert_eq!(dp.run(&ok), (OK, ok));
    let seq = 8 + GET_METRICS.len() as u32;
    let (v, out) = dp.run(&seg6(
        seq,
        packets::TCP_ACK | TCP_PSH,
        b"GET /admin HTTP/1.1\r\n\r\n",
    ));
    assert_eq!(v, OK);
    assert_eq!(out.len(), 14 + 40 + 20, "a bare RST: {out:?}");
    assert_eq!(&out[22..38], &client6.octets());
    assert_eq!(&out[38..54], &server6.octets());
    assert_eq!(out[54 + 13], TCP_RST);
    assert_eq!(&out[58..62], &seq.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&out[22..54]);
    pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, PROTO_TCP]);
    pseudo.extend_from_slice(&out[54..74]);
    assert_eq!(packets::checksum(&pseudo), 0, "TCP checksum");
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
}

// The client's side: egress rules toward a server outside (world, host),
// judged at `from_container`. A denial clones the 403 to the veth's egress
// (`bpf_clone_redirect` flags 0), which here is the loopback's; the tests
// that look at the 403 run in a namespace of their own and read it from a
// packet socket on that namespace's loopback.

const TCP_FIN: u8 = 0x01;
/// The server's sequence number (the client's acknowledgement number in
/// [`segment`]).
const SERVER_SEQ: u32 = 77;
const FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 15\r\nConnection: close\r\n\r\nDenied by Porin";
const POST_ADMIN: &[u8] = b"POST /admin HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n";

/// A server→client TCP segment.
fn reply(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = packets::tcp(PORT, sport, flags, payload);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    packets::frame_v4(SERVER, CLIENT, PROTO_TCP, &t)
}

fn peers() -> [(Identity, &'static str); 2] {
    [(identity::WORLD, "world"), (identity::HOST, "host")]
}

#[test]
fn client_side_allowed_get_passes_unchanged() {
    require_root("client_side_allowed_get_passes_unchanged");
    for (i, (peer, name)) in peers().into_iter().enumerate() {
        let dp = Dp::client(mode::ENFORCE, peer, &default_rules());
        let sport = 42000 + i as u16;
        dp.open(sport, 1000);
        let frame = request(sport, 1001, GET_METRICS);
        assert_eq!(dp.run(&frame), (OK, frame), "GET /metrics to {name}");
        let ack = segment(
            sport,
            1001 + GET_METRICS.len() as u32,
            packets::TCP_ACK,
            b"",
        );
        assert_eq!(dp.run(&ack), (OK, ack), "a pure ACK to {name}");
        // The server's answers reach the client untouched and unjudged
        // (`to_container`, a reply on the connection), even one that
        // looks like a denied request.
        for r in [
            reply(
                sport,
                SERVER_SEQ - 1,
                packets::TCP_SYN | packets::TCP_ACK,
                b"",
            ),
            reply(sport, SERVER_SEQ, packets::TCP_ACK | TCP_PSH, POST_ADMIN),
        ] {
            assert_eq!(
                dp.run_prog("to_container", &r),
                (OK, r),
                "a reply from {name}"
            );
        }
        assert_eq!(dp.drops(DropReason::HttpDenied), 0, "{name}");
        assert_eq!(dp.drops(DropReason::PolicyDenied), 0, "{name}");
    }
}

#[test]
fn client_side_denied_request_becomes_a_rst_to_the_server() {
    require_root("client_side_denied_request_becomes_a_rst_to_the_server");
    for (i, (peer, name)) in peers().into_iter().enumerate() {
        let dp = Dp::client(mode::ENFORCE, peer, &default_rules());
        let sport = 42010 + i as u16;
        dp.open(sport, 5000);
        let (v, out) = dp.run(&request(sport, 5001, POST_ADMIN));
        assert_eq!(v, OK, "to {name}: the packet goes on, as a RST");
        assert_rst(&out, 5001);
        assert_eq!(&out[34..36], &sport.to_be_bytes(), "from the client's port");
        assert_eq!(&out[36..38], &PORT.to_be_bytes(), "to the server's port");
        assert_eq!(dp.drops(DropReason::HttpDenied), 1, "{name}");
        // Anything later on the connection is denied too: a retransmission
        // and an allowed request after it.
        let (_, out) = dp.run(&request(sport, 5001, GET_METRICS));
        assert_rst(&out, 5001);
        let later = 5001 + POST_ADMIN.len() as u32;
        let (_, out) = dp.run(&request(sport, later, GET_METRICS));
        assert_rst(&out, later);
        assert_eq!(dp.drops(DropReason::HttpUnsupported), 2, "{name}");
        // The rule set is the entry's: a fresh connection is judged anew.
        dp.open(sport + 100, 1);
        let ok = request(sport + 100, 2, GET_METRICS);
        assert_eq!(dp.run(&ok), (OK, ok), "{name}");
    }
}

#[test]
fn client_side_audit_mode_counts_and_passes() {
    require_root("client_side_audit_mode_counts_and_passes");
    let dp = Dp::client(mode::AUDIT, identity::WORLD, &default_rules());
    dp.open(42020, 1);
    let frame = request(42020, 2, b"DELETE /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(dp.run(&frame), (OK, frame));
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    // The connection goes on being judged: the next request is allowed
    // (before, it was counted as a denied connection's later payload).
    let frame = request(42020, 2 + 28, GET_METRICS);
    assert_eq!(dp.run(&frame), (OK, frame));
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 0);
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
}

#[test]
fn client_side_mid_stream_payload_is_refused() {
    require_root("client_side_mid_stream_payload_is_refused");
    let dp = Dp::client(mode::ENFORCE, identity::WORLD, &default_rules());
    // No SYN seen (state lost): the first packet carries payload.
    let (v, _) = dp.run(&request(42030, 9, GET_METRICS));
    assert_eq!(v, SHOT);
    assert_eq!(dp.drops(DropReason::HttpUnsupported), 1);
}

/// A packet socket on the loopback of the calling thread's namespace.
struct Tap(OwnedFd);

impl Tap {
    fn open() -> Self {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain system calls on a descriptor owned here.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = 1;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind to lo: {}", io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 300_000,
            };
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
            Tap(fd)
        }
    }

    /// The frames seen until 300 ms pass without one.
    fn frames(&self) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let mut buf = vec![0u8; 2048];
            // SAFETY: `buf` has room for the length given.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return all;
            }
            buf.truncate(n as usize);
            all.push(buf);
        }
    }
}

/// Asserts `answer` is Porin's 403 to `request` (a client→server frame
/// with `payload_len` bytes of payload, IPv4 or IPv6): Ethernet addresses
/// swapped, IP addresses and ports swapped, the server's sequence number,
/// the request acknowledged, ACK+PSH+FIN, the 403 text, checksums right.
#[track_caller]
fn assert_forbidden(answer: &[u8], request: &[u8], payload_len: usize) {
    let v4 = request[12..14] == [0x08, 0x00];
    let (l3, addr, alen) = if v4 { (20, 26, 4) } else { (40, 22, 16) };
    let l4 = 14 + l3;
    assert_eq!(
        answer.len(),
        l4 + 20 + FORBIDDEN.len(),
        "the 403: {answer:?}"
    );
    assert_eq!(&answer[0..6], &request[6..12], "to the client's MAC");
    assert_eq!(&answer[6..12], &request[0..6], "from the server's MAC");
    assert_eq!(&answer[12..14], &request[12..14], "the same family");
    let (src, dst) = (addr..addr + alen, addr + alen..addr + 2 * alen);
    assert_eq!(
        &answer[src.clone()],
        &request[dst.clone()],
        "from the server"
    );
    assert_eq!(&answer[dst.clone()], &request[src.clone()], "to the client");
    assert_eq!(&answer[l4..l4 + 2], &request[l4 + 2..l4 + 4], "server port");
    assert_eq!(&answer[l4 + 2..l4 + 4], &request[l4..l4 + 2], "client port");
    assert_eq!(
        &answer[l4 + 4..l4 + 8],
        &request[l4 + 8..l4 + 12],
        "at the sequence number the client expects"
    );
    let seq = u32::from_be_bytes(request[l4 + 4..l4 + 8].try_into().unwrap());
    assert_eq!(
        &answer[l4 + 8..l4 + 12],
        &seq.wrapping_add(payload_len as u32).to_be_bytes(),
        "acknowledging the request"
    );
    assert_eq!(answer[l4 + 13], packets::TCP_ACK | TCP_PSH | TCP_FIN);
    assert_eq!(&answer[l4 + 20..], FORBIDDEN);
    let tcp_len = (20 + FORBIDDEN.len()) as u16;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&answer[addr..addr + 2 * alen]);
    if v4 {
        assert_eq!(
            packets::checksum(&answer[14..34]),
            0,
            "IPv4 header checksum"
        );
        pseudo.extend_from_slice(&[0, PROTO_TCP]);
        pseudo.extend_from_slice(&tcp_len.to_be_bytes());
    } else {
        pseudo.extend_from_slice(&[0, 0]);
        pseudo.extend_from_slice(&tcp_len.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
    }
    pseudo.extend_from_slice(&answer[l4..]);
    assert_eq!(packets::checksum(&pseudo), 0, "TCP checksum");
}

/// Runs a denial on `dp` in a namespace of its own: the verdict, the
/// packet after, and the frames cloned onto the loopback whose source
/// port is the server's.
fn deny_and_tap(
    make: impl FnOnce() -> Dp + Send,
    open: &[u8],
    denied: &[u8],
) -> (u32, Vec<u8>, Vec<Vec<u8>>) {
    RawNetns::new().run_in(|| {
        let dp = make();
        let tap = Tap::open();
        assert_eq!(dp.run(open).0, OK, "SYN allowed at L3/L4");
        let (v, out) = dp.run(denied);
        let v4 = denied[12..14] == [0x08, 0x00];
        let l4 = if v4 { 34 } else { 54 };
        let from_server = tap
            .frames()
            .into_iter()
            .filter(|f| f.len() > l4 + 2 && f[l4..l4 + 2] == PORT.to_be_bytes())
            .collect();
        (v, out, from_server)
    })
}

#[test]
fn client_side_denial_answers_the_client_with_a_403() {
    require_root("client_side_denial_answers_the_client_with_a_403");
    for (peer, name) in peers() {
        let denied = request(42040, 5001, POST_ADMIN);
        let (v, out, answers) = deny_and_tap(
            || Dp::client(mode::ENFORCE, peer, &default_rules()),
            &segment(42040, 5000, packets::TCP_SYN, b""),
            &denied,
        );
        assert_eq!(v, OK, "to {name}");
        assert_rst(&out, 5001);
        // Sent on the loopback's egress, a packet socket sees it going out
        // and coming back in: once or twice, never anything else.
        assert!(
            (1..=2).contains(&answers.len()),
            "to {name}: one 403 on the wire, got {answers:?}"
        );
        for a in &answers {
            assert_forbidden(a, &denied, POST_ADMIN.len());
        }
    }
}

#[test]
fn client_side_ipv6_requests_are_judged_and_answered() {
    require_root("client_side_ipv6_requests_are_judged_and_answered");
    let server6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let client6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    let make = || {
        let mut dp = Dp::client(mode::ENFORCE, identity::WORLD, &default_rules());
        // The server's address is in no map: `world`.
        dp.hash(maps::IP6).insert(client6.octets(), CLI, 0).unwrap();
        dp.hash(maps::UPLINK_ENDPOINTS6)
            .insert(client6.octets(), EP, 0)
            .unwrap();
        dp
    };
    let seg6 = |seq: u32, flags: u8, payload: &[u8]| {
        let mut t = packets::tcp(42050, PORT, flags, payload);
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&SERVER_SEQ.to_be_bytes());
        packets::frame_v6(client6, server6, PROTO_TCP, &t)
    };
    // Allowed, then denied, on one connection.
    let dp = make();
    assert_eq!(dp.run(&seg6(7, packets::TCP_SYN, b"")).0, OK);
    let ok = seg6(8, packets::TCP_ACK | TCP_PSH, GET_METRICS);
    assert_eq!(dp.run(&ok), (OK, ok));
    let seq = 8 + GET_METRICS.len() as u32;
    let (v, out) = dp.run(&seg6(
        seq,
        packets::TCP_ACK | TCP_PSH,
        b"GET /admin HTTP/1.1\r\n\r\n",
    ));
    assert_eq!(v, OK);
    assert_eq!(out.len(), 14 + 40 + 20, "a bare RST: {out:?}");
    assert_eq!(&out[22..38], &client6.octets());
    assert_eq!(&out[38..54], &server6.octets());
    assert_eq!(out[54 + 13], TCP_RST);
    assert_eq!(&out[58..62], &seq.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&out[22..54]);
    pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, PROTO_TCP]);
    pseudo.extend_from_slice(&out[54..74]);
    assert_eq!(packets::checksum(&pseudo), 0, "TCP checksum");
    assert_eq!(dp.drops(DropReason::HttpDenied), 1);
    drop(dp);
    // The 403 the client gets.
    let denied = seg6(8, packets::TCP_ACK | TCP_PSH, POST_ADMIN);
    let (v, _, answers) = deny_and_tap(make, &seg6(7, packets::TCP_SYN, b""), &denied);
    assert_eq!(v, OK);
    assert!((1..=2).contains(&answers.len()), "{answers:?}");
    for a in &answers {
        assert_forbidden(a, &denied, POST_ADMIN.len());
    }
}

/// The server's side answers through the same code with the other clone
/// direction (the veth's ingress): the same 403.
#[test]
fn server_side_denial_answers_the_client_with_a_403() {
    require_root("server_side_denial_answers_the_client_with_a_403");
    let denied = request(40050, 5001, POST_ADMIN);
    let (v, out, answers) = deny_and_tap(
        || Dp::new(mode::ENFORCE, &default_rules()),
        &segment(40050, 5000, packets::TCP_SYN, b""),
        &denied,
    );
    assert_eq!(v, OK);
    assert_rst(&out, 5001);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_forbidden(&answers[0], &denied, POST_ADMIN.len());
}

/// Marks the connection from `sport` at [`EP`] revoked, as the manager's
/// revocation does (`porin_common::ct`).
fn revoke(dp: &mut Dp, sport: u16) {
    let v4 = |a: Ipv4Addr| {
        let mut w = [0; 16];
        w[..4].copy_from_slice(&a.octets());
        w
    };
    let flow = porin_common::parse::Flow {
        saddr: v4(CLIENT),
        daddr: v4(SERVER),
        sport,
        dport: PORT,
        family: 4,
        protocol: PROTO_TCP,
        may_be_reply: false,
        tcp_flags: packets::TCP_SYN,
    };
    let l = porin_common::decide::ct4_key(&flow, EP);
    let mut ct = dp.hash(maps::CT4);
    let v = ct.get(&l.key, 0).expect("the connection's entry");
    let revoked = porin_common::datapath::CtValue {
        state: porin_common::ct::state::REVOKED,
        ..v
    };
    ct.insert(l.key, revoked, 0).expect("mark revoked");
}

#[test]
fn a_revoked_connection_is_answered_with_rsts_both_ways() {
    require_root("a_revoked_connection_is_answered_with_rsts_both_ways");
    let ack = segment(40060, 5001, packets::TCP_ACK, b"");
    let (v, out, answers) = RawNetns::new().run_in(|| {
        let mut dp = Dp::new(mode::ENFORCE, &default_rules());
        let tap = Tap::open();
        dp.open(40060, 5000);
        revoke(&mut dp, 40060);
        let (v, out) = dp.run(&ack);
        assert_eq!(dp.drops(DropReason::ConnectionRevoked), 1, "counted");
        let from_server: Vec<Vec<u8>> = tap
            .frames()
            .into_iter()
            .filter(|f| f.len() > 36 && f[34..36] == PORT.to_be_bytes())
            .collect();
        // The same tuple opened again: a new connection, judged afresh.
        let (again, _) = dp.run(&segment(40060, 9000, packets::TCP_SYN, b""));
        assert_eq!(
            again, OK,
            "a new SYN on the revoked tuple is judged (allowed here)"
        );
        let (next, after) = dp.run(&request(40060, 9001, GET_METRICS));
        assert_eq!(
            (next, after.len()),
            (OK, 14 + 20 + 20 + GET_METRICS.len()),
            "served again"
        );
        (v, out, from_server)
    });
    assert_eq!(v, OK, "the packet goes on as a RST");
    assert_rst(&out, 5001);
    assert_eq!(answers.len(), 1, "one RST back to the client: {answers:?}");
    let a = &answers[0];
    assert_eq!(a.len(), 14 + 20 + 20, "a bare RST: {a:?}");
    assert_eq!(&a[26..30], &SERVER.octets(), "from the server");
    assert_eq!(&a[30..34], &CLIENT.octets(), "to the client");
    assert_eq!(&a[36..38], &40060u16.to_be_bytes());
    assert_eq!(a[34 + 13], TCP_RST);
    assert_eq!(
        &a[38..42],
        &77u32.to_be_bytes(),
        "at the sequence number the client acknowledged"
    );
    assert_eq!(packets::checksum(&a[14..34]), 0, "IPv4 header checksum");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&a[26..34]);
    pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
    pseudo.extend_from_slice(&a[34..54]);
    assert_eq!(packets::checksum(&pseudo), 0, "TCP checksum");
}

#[test]
fn a_revoked_connection_in_audit_mode_passes_counted() {
    require_root("a_revoked_connection_in_audit_mode_passes_counted");
    let mut dp = Dp::new(mode::AUDIT, &default_rules());
    dp.open(40061, 5000);
    revoke(&mut dp, 40061);
    let ack = segment(40061, 5001, packets::TCP_ACK, b"");
    assert_eq!(dp.run(&ack), (OK, ack.clone()), "unchanged");
    assert_eq!(dp.drops(DropReason::ConnectionRevoked), 1, "counted");
}

/// Writes the conntrack clock at `now_s` (0: nothing expires) with at most
/// `max_http` HTTP-ruled connections per endpoint.
fn http_quota(dp: &mut Dp, now_s: u32, max_http: u32) {
    let mut a: Array<_, CtClock> = maps::open_mut(&mut dp.bpf, maps::CT_CLOCK).expect("clock map");
    let c = CtClock {
        now_s,
        timeouts: porin_common::ct::DEFAULT_TIMEOUTS,
        max_per_endpoint: 0,
        max_http_per_endpoint: max_http,
    };
    a.set(0, c, 0).expect("write the clock");
}

/// Endpoint `ifindex`'s counts as the programs keep them.
fn counts(dp: &Dp, ifindex: u32) -> CtCount {
    let m: HashMap<_, u32, CtCount> = maps::open(&dp.bpf, maps::CT_COUNTS).expect("counts");
    m.get(&ifindex, 0).unwrap_or_default()
}

/// An endpoint gets only its quota of HTTP-ruled connections (their
/// stream state is one LRU for all): one more is refused as `HttpQuota`
/// and leaves no state; its open connections still carry requests; a
/// stale one the programs delete gives its place back. Another endpoint at
/// its quota changes nothing here.
#[test]
fn an_endpoint_gets_only_its_quota_of_http_connections() {
    require_root("an_endpoint_gets_only_its_quota_of_http_connections");
    let mut dp = Dp::new(mode::ENFORCE, &default_rules());
    http_quota(&mut dp, 0, 2);
    let full = CtCount {
        entries: 2,
        http: 2,
    };
    dp.hash(maps::CT_COUNTS)
        .insert(EP + 1, full, 0)
        .expect("count");
    dp.open(41000, 1000);
    dp.open(41001, 1000);
    assert_eq!(counts(&dp, EP), full, "two HTTP-ruled connections");
    let third = segment(41002, 1000, packets::TCP_SYN, b"");
    assert_eq!(dp.run(&third).0, SHOT, "a third one: over the quota");
    assert_eq!(dp.drops(DropReason::HttpQuota), 1);
    assert_eq!(counts(&dp, EP), full, "nothing recorded for it");
    let conns: HashMap<_, CtKey, porin_common::http_stream::HttpConn> =
        maps::open(&dp.bpf, maps::HTTP_CONNS).expect("conns");
    assert_eq!(conns.keys().count(), 2, "no stream state for it");
    let (v, out) = dp.run(&request(41000, 1001, GET_METRICS));
    assert_eq!((v, out.len()), (OK, 14 + 40 + GET_METRICS.len()));
    // Connection 41001, still opening, goes stale (60 s): the packet that
    // meets it deletes it (its place given back) and is judged as new: a
    // pure ACK picked up mid-stream, recorded again (its payload would be
    // refused). Had the deletion not given the place back, the count
    // would now be 3, or the ACK refused.
    let seen = {
        let ct: HashMap<_, Ct4Key, CtValue> = maps::open(&dp.bpf, maps::CT4).expect("ct");
        ct.iter()
            .filter_map(Result::ok)
            .find(|(k, _)| k.sport == 41001 || k.dport == 41001)
            .expect("41001's entry")
            .1
            .seen_s
    };
    http_quota(&mut dp, seen + 61, 2);
    let late = segment(41001, 1001, packets::TCP_ACK, b"");
    assert_eq!(
        dp.run(&late).0,
        OK,
        "stale: judged afresh, within the quota"
    );
    assert_eq!(counts(&dp, EP), full, "one deleted, one made");
    assert_eq!(dp.run(&third).0, SHOT, "still no room for a third");
    // Without a quota (0), it fits.
    http_quota(&mut dp, seen + 61, 0);
    dp.open(41002, 1000);
    assert_eq!(counts(&dp, EP).http, 3);
    assert_eq!(dp.drops(DropReason::HttpQuota), 2, "the two refusals");
}
