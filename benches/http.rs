//! Per-packet cost of the HTTP stage through `BPF_PROG_TEST_RUN`:
//! `cargo bench --bench http` (as root). Prints ns per packet on
//! `to_container` for:
//! - `noop_tc` (a classifier that only returns OK), the baseline;
//! - plain L3/L4: an ACK of an established connection (conntrack hit);
//! - HTTP, no payload: an ACK of an HTTP-ruled connection (conntrack hit,
//!   tail call to the stage entry, sequence check);
//! - HTTP request allowed / denied: a request segment parsed and judged
//!   (entry, 2-3 parse chunks, finish), with 2 and with 1,002 rules in the
//!   set (the cost must not grow with the rules).
//!
//! - head sizes (2-rule set): a Prometheus-like 300-byte head in one
//!   segment; an 8 KiB head (a long `Cookie`) in 1,448-byte segments (an
//!   MSS of a 1500-byte MTU: each within one packet's parse budget), the
//!   request's time being the sum of its segments'; a 3 KiB head (a long
//!   `Cookie`, skipped by `http_value`) in one segment; and the verdict on
//!   a head whose parsed bytes are over one packet's budget in one segment
//!   (3 KiB of short headers). `BPF_PROG_TEST_RUN` takes at most a page
//!   per skb, so a whole 8 KiB segment cannot be run here.
//!
//! A judged request moves the connection's state on, so the request paths
//! are timed one run each (repeat = 1) with the state reset from userspace
//! between runs, and compared with `noop_tc` timed the same way; medians.

use porin::maps::{self, MapDef};
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::SchedClassifier,
    Ebpf,
};
use porin::{
    config::{HttpPath, HttpRule, Loc, Method},
    datapath::http::{ensure_key, load_stage},
    ebpf,
    policy::http::compile_rules,
    testing::{packets, prog_run, require_root},
};
use porin_common::{
    datapath::{
        action, identity, mode, tc_action, Counter, CtKey, DatapathConfig, Direction, DropReason,
        EndpointInfo, Identity, PolicyKey, PolicyValue, CONFIG_READY,
    },
    http::HttpSet,
    http_stream::conn_at_syn,
};

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: usize = 5_000;
const WEB: Identity = identity::GROUP_BASE + 1;
const CLI: Identity = identity::GROUP_BASE + 2;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const HTTP_PORT: u16 = 8080;
const PLAIN_PORT: u16 = 9000;
const OK: u32 = tc_action::OK as u32;

fn main() {
    require_root("the HTTP stage benchmark");
    for extra in [0usize, 1000] {
        let mut bpf = ebpf::open().expect("open");
        for name in ["to_container", "from_container", "noop_tc"] {
            ebpf::load_program::<SchedClassifier>(&mut bpf, name).expect(name);
        }
        load_stage(&mut bpf).expect("stage");
        let set = setup(&mut bpf, extra);
        let noop = prog(&bpf, "noop_tc");
        let tc = prog(&bpf, "to_container");
        let ack = |port: u16, seq: u32| seg(port, seq, packets::TCP_ACK, b"");
        // Open both connections (SYN from the client).
        for port in [HTTP_PORT, PLAIN_PORT] {
            assert_eq!(
                prog_run::verdict(tc, &seg(port, 99, packets::TCP_SYN, b"")),
                OK
            );
        }
        let noop_rep = prog_run::timed(noop, &ack(PLAIN_PORT, 100), REPEAT).1;
        let plain = prog_run::timed(tc, &ack(PLAIN_PORT, 100), REPEAT);
        let http_ack = prog_run::timed(tc, &ack(HTTP_PORT, 100), REPEAT);
        assert_eq!((plain.0, http_ack.0), (OK, OK));
        let get = seg(
            HTTP_PORT,
            100,
            packets::TCP_ACK | 0x08,
            b"GET /metrics HTTP/1.1\r\nHost: web.local\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n",
        );
        let post = seg(
            HTTP_PORT,
            100,
            packets::TCP_ACK | 0x08,
            b"POST /admin HTTP/1.1\r\nHost: web.local\r\nContent-Length: 0\r\n\r\n",
        );
        let noop_one = single(&mut bpf, "noop_tc", &get, set);
        let allowed = single(&mut bpf, "to_container", &get, set);
        let denied = single(&mut bpf, "to_container", &post, set);
        println!(
            "rules in set: {}\n  noop_tc (repeat {REPEAT}):        {:>7.1} ns\n  \
             plain L3/L4 CT hit:              {:>7.1} ns\n  \
             HTTP-ruled ACK (no payload):     {:>7.1} ns\n  \
             noop_tc (one run each, median):  {:>7.1} ns\n  \
             HTTP request allowed (median):   {:>7.1} ns  (+{:.1} over noop)\n  \
             HTTP request denied, audit:      {:>7.1} ns  (+{:.1} over noop)",
            2 + extra,
            noop_rep.as_nanos() as f64,
            plain.1.as_nanos() as f64,
            http_ack.1.as_nanos() as f64,
            noop_one,
            allowed,
            allowed - noop_one,
            denied,
            denied - noop_one,
        );
        if extra == 0 {
            head_sizes(&mut bpf, set);
        }
    }
}

/// Bytes per segment for heads split as a 1500-byte MTU would.
const MSS: usize = 1448;

/// Per-request ns for a 300-byte head and an 8 KiB head beside `noop_tc`
/// on the same segments, with the verdicts; and the verdict on a single
/// segment with more head bytes than one packet's parse budget.
fn head_sizes(bpf: &mut Ebpf, set: HttpSet) {
    println!("head sizes (2 rules; one run per segment, summed per request, median):");
    for (what, size, mss) in [
        ("300-byte head, 1 segment", 300, MSS),
        ("8 KiB head, 1,448-byte segments", 8192, MSS),
        ("3 KiB head (Cookie), 1 segment", 3072, 3072),
        ("3 KiB of short headers, 1 segment", 0, 3072),
    ] {
        // Size 0: the budget's case, 3 KiB of 12-byte headers.
        let (h, size) = if size == 0 {
            let h = short_headers(mss);
            let n = h.len();
            (h, n)
        } else {
            (head(size), size)
        };
        let frames = segments(&h, mss);
        let verdict = verdict_of(bpf, &frames, set);
        let noop = request_ns(bpf, "noop_tc", &frames, set);
        let tc = request_ns(bpf, "to_container", &frames, set);
        println!(
            "  {what:<40} {:>2} segment(s): noop_tc {noop:>7.1} ns, to_container {tc:>8.1} ns \
             (+{:.1}, {:.1} ns per head byte), verdict {verdict}",
            frames.len(),
            tc - noop,
            (tc - noop) / size as f64,
        );
    }
}

/// A `GET /metrics` head of exactly `size` bytes: a Prometheus 2.42
/// scrape's headers, padded with a `Cookie` (or `X-Pad` for short heads).
fn head(size: usize) -> Vec<u8> {
    let base = "GET /metrics HTTP/1.1\r\nHost: web.local\r\nUser-Agent: Prometheus/2.42.0\r\n\
                Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
                Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n";
    let name = if size > 1000 { "Cookie: " } else { "X-Pad: " };
    let pad = size
        .checked_sub(base.len() + name.len() + 4)
        .expect("a head at least as long as the scrape's");
    let h = format!("{base}{name}{}\r\n\r\n", "a".repeat(pad));
    assert_eq!(h.len(), size);
    h.into_bytes()
}

/// A `GET /metrics` head of `size` bytes made of short headers, all of
/// which the parser reads byte by byte.
fn short_headers(size: usize) -> Vec<u8> {
    let mut h = String::from("GET /metrics HTTP/1.1\r\nHost: web.local\r\n");
    let mut i = 0;
    while h.len() + 16 < size {
        h.push_str(&format!("X-{:04}: vvvv\r\n", i % 10_000));
        i += 1;
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// `head` as segments of at most `mss` bytes from sequence 100 (the
/// connection's SYN was 99), PSH on the last.
fn segments(head: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let n = head.len().div_ceil(mss);
    head.chunks(mss)
        .enumerate()
        .map(|(i, c)| {
            let psh = if i + 1 == n { 0x08 } else { 0 };
            seg(HTTP_PORT, 100 + (i * mss) as u32, packets::TCP_ACK | psh, c)
        })
        .collect()
}

/// The connection's state back to just after its SYN. A head kept in
/// `PORIN_HTTPH_V1` by an earlier run is never read again: the state says
/// no head has begun (and each timed request completes its head, which
/// removes the entry).
fn reset(bpf: &mut Ebpf, set: HttpSet) {
    hash(bpf, maps::HTTP_CONNS)
        .insert(conn_key(), conn_at_syn(99, set), 0)
        .unwrap();
}

/// Median over `SINGLE_RUNS` requests of the summed ns of one run of
/// `name` per segment, the state reset before each request.
fn request_ns(bpf: &mut Ebpf, name: &str, frames: &[Vec<u8>], set: HttpSet) -> f64 {
    let mut v = Vec::with_capacity(SINGLE_RUNS);
    for _ in 0..SINGLE_RUNS {
        reset(bpf, set);
        let mut sum = 0.0;
        for f in frames {
            sum += prog_run::timed(prog(bpf, name), f, 1).1.as_nanos() as f64;
        }
        v.push(sum);
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What the stage made of the request (audit mode counts drops and
/// passes): `pass`, or the drop reasons counted.
fn verdict_of(bpf: &mut Ebpf, frames: &[Vec<u8>], set: HttpSet) -> String {
    let drops = |bpf: &Ebpf| -> Vec<u64> {
        let arr: PerCpuArray<_, Counter> = maps::open(bpf, maps::DROPS).unwrap();
        DropReason::ALL
            .iter()
            .map(|r| {
                arr.get(&(*r as u32), 0)
                    .unwrap()
                    .iter()
                    .map(|c| c.packets)
                    .sum()
            })
            .collect()
    };
    reset(bpf, set);
    let before = drops(bpf);
    for f in frames {
        prog_run::verdict(prog(bpf, "to_container"), f);
    }
    let after = drops(bpf);
    let counted: Vec<&str> = DropReason::ALL
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a > b)
        .map(|(r, _)| r.name())
        .collect();
    if counted.is_empty() {
        "pass".into()
    } else {
        counted.join("+")
    }
}

fn conn_key() -> CtKey {
    CtKey {
        saddr: pad(CLIENT),
        daddr: pad(SERVER),
        sport: 40000,
        dport: HTTP_PORT,
        protocol: 6,
        family: 4,
        _pad: [0; 2],
        ifindex: 1,
    }
}

fn prog<'a>(bpf: &'a Ebpf, name: &str) -> &'a SchedClassifier {
    bpf.program(name).unwrap().try_into().unwrap()
}

/// Median ns of single runs of `name` on `frame`, the connection's state
/// reset before each so the request is judged every time.
fn single(bpf: &mut Ebpf, name: &str, frame: &[u8], set: HttpSet) -> f64 {
    let key = conn_key();
    let conn = conn_at_syn(99, set);
    let mut v = Vec::with_capacity(SINGLE_RUNS);
    for _ in 0..SINGLE_RUNS {
        hash(bpf, maps::HTTP_CONNS).insert(key, conn, 0).unwrap();
        let (_, d) = prog_run::timed(prog(bpf, name), frame, 1);
        v.push(d.as_nanos() as f64);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pad(a: Ipv4Addr) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a.octets());
    out
}

fn hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    def: MapDef<K, V>,
) -> HashMap<&mut MapData, K, V> {
    maps::open_mut(bpf, def).unwrap()
}

fn seg(dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = packets::tcp(40000, dport, flags, payload);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    packets::frame_v4(CLIENT, SERVER, packets::PROTO_TCP, &t)
}

fn key(port: u16) -> PolicyKey {
    PolicyKey::new(WEB, CLI, Direction::Ingress, 6, port)
}

/// Server WEB at ifindex 1 (audit mode, so denials pass and repeat),
/// client CLI; HTTP rules on 8080 (GET /metrics, POST /api/*, `extra`
/// more exact paths), plain allow on 9000.
fn setup(bpf: &mut Ebpf, extra: usize) -> HttpSet {
    hash(bpf, maps::ENDPOINTS)
        .insert(1, EndpointInfo::new(WEB, mode::AUDIT), 0)
        .unwrap();
    for (a, id) in [(SERVER, WEB), (CLIENT, CLI)] {
        hash(bpf, maps::IP4).insert(a.octets(), id, 0).unwrap();
    }
    // The server's address is the endpoint's (anti-spoofing checks the
    // destination's owner).
    hash(bpf, maps::UPLINK_ENDPOINTS4)
        .insert(SERVER.octets(), 1, 0)
        .unwrap();
    let mut cfg: Array<_, DatapathConfig> = maps::open_mut(bpf, maps::CONFIG).unwrap();
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
    for (port, act) in [(HTTP_PORT, action::ALLOW_HTTP), (PLAIN_PORT, action::ALLOW)] {
        hash(bpf, maps::POLICY)
            .insert(key(port), PolicyValue::new(act, 1), 0)
            .unwrap();
    }
    let rule = |m: Method, p: &str| HttpRule {
        method: m,
        path: HttpPath::parse(p).unwrap(),
        host: None,
        headers: vec![],
        loc: Loc { line: 1, column: 1 },
    };
    let mut rules = vec![rule(Method::Get, "/metrics"), rule(Method::Post, "/api/*")];
    rules.extend((0..extra).map(|i| rule(Method::Get, &format!("/r{i}"))));
    let (hash_key, _) = ensure_key(bpf).expect("the hash key");
    let mut map = BTreeMap::new();
    let set = compile_rules(&hash_key, b"bench", &[(1, "bench", &rules)], &mut map).unwrap();
    for (k, v) in map {
        hash(bpf, maps::HTTP_RULES).insert(k, v, 0).unwrap();
    }
    hash(bpf, maps::HTTP_SETS)
        .insert(key(HTTP_PORT), set, 0)
        .unwrap();
    set
}
