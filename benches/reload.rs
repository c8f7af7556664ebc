//! Reload-to-enforced time.
//!
//!   cargo bench --bench reload
//!
//! 1. The datapath manager against the real kernel: `Datapath::load`, then
//!    `apply` of a compiled policy of N rules that changes completely on
//!    every reload (each rule `from: [a] to: [b]` on its own port is two
//!    entries: a's egress and b's ingress), so every reload writes the whole
//!    new generation, switches, and deletes the old one. N = 10, 1,000
//!    (target: median and p99 under 50 ms) and 10,000; 30 reloads each.
//!    Then N = 1,000 again with the IPv4 conntrack table full (65,536
//!    connections between the two endpoints, all allowed by both
//!    policies): every apply also judges each of them again (revocation,
//!    `datapath::conntrack`), which is the walk's cost; the sweep of idle
//!    entries walks the same way, timed alone.
//! 2. Once through the real daemon: `porin run` with two Podman containers
//!    and 1,000 rules, `porin reload` alternating between two files whose
//!    ports differ, timed from spawning `porin reload` to its exit (client
//!    side: process start, validation, compilation, apply, reply), next to
//!    the daemon's own request-to-enforced figure from the reply.
//!
//! Needs root (and podman for part 2; `PORIN_BENCH_NO_DAEMON=1` skips it).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use porin::{
    datapath::Datapath,
    kernel::KernelFeatures,
    policy::Compiled,
    testing::{
        daemon::Daemon,
        podman::{PodmanContainer, Spec},
        require_root,
    },
};
use porin_common::datapath::{
    identity, mode, Direction, EndpointInfo, Identity, PolicyKey, PolicyValue,
};

const RELOADS: usize = 30;
const DAEMON_RELOADS: usize = 20;
const DAEMON_RULES: u16 = 1_000;
const TARGET_MS: f64 = 50.0;

fn main() {
    require_root("reload benchmark");
    let tc = KernelFeatures::probe().attach_strategy().tc;
    println!("reload to enforced through Datapath::apply (real kernel maps), {RELOADS} reloads each, every reload replaces the whole policy:");
    for rules in [10u32, 1_000, 10_000] {
        let mut dp = Datapath::load(tc, None).expect("load the datapath");
        let a = compiled(rules, 20_000);
        let b = compiled(rules, 40_000);
        // The first apply fills the maps from empty; not a reload.
        dp.apply(&a, &[]).expect("first apply");
        let mut ms = Vec::with_capacity(RELOADS);
        for i in 0..RELOADS {
            let next = if i % 2 == 0 { &b } else { &a };
            let t = Instant::now();
            let report = dp.apply(next, &[]).expect("apply");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(report.policy_entries, 2 * rules as usize);
        }
        let (median, p99) = stats(&mut ms);
        println!(
            "  {rules:>6} rules ({:>6} policy entries): median {median:7.2} ms  p99 {p99:7.2} ms  max {:7.2} ms{}",
            2 * rules,
            ms[ms.len() - 1],
            if rules == 1_000 {
                verdict(median.max(p99))
            } else {
                String::new()
            }
        );
    }
    full_conntrack(tc);
    if std::env::var_os("PORIN_BENCH_NO_DAEMON").is_some() {
        println!("daemon part skipped (PORIN_BENCH_NO_DAEMON)");
        return;
    }
    daemon_reloads();
}

/// Reloads of 1,000 rules with 65,536 tracked connections that both
/// policies allow (ports `[20000, 40000) ∪ ...`: a port both generations
/// list is not there, so the connections use the any-port rule added to
/// both), and the sweep alone.
fn full_conntrack(tc: porin::kernel::TcAttach) {
    use aya::maps::HashMap;
    use porin_common::datapath::{Ct4Key, CtValue};
    let mut dp = Datapath::load(tc, None).expect("load the datapath");
    let with_any = |mut c: Compiled| {
        for (subject, peer, direction) in [(A, B, Direction::Egress), (B, A, Direction::Ingress)] {
            c.policy.insert(
                PolicyKey::new(subject, peer, direction, 17, 0),
                PolicyValue::allow(9999),
            );
        }
        c
    };
    let a = with_any(compiled(1_000, 20_000));
    let b = with_any(compiled(1_000, 40_000));
    dp.apply(&a, &[]).expect("first apply");
    let n = porin_common::datapath::max_entries::CONNTRACK;
    {
        let mut ct: HashMap<_, Ct4Key, CtValue> =
            porin::maps::open_mut(dp.ebpf_mut(), porin::maps::CT4).expect("CT4");
        let now = porin::datapath::conntrack::monotonic_s();
        for i in 0..n {
            let flow = porin_common::parse::Flow {
                saddr: v4([10, 231, 251, 1]),
                daddr: v4([10, 231, 251, 2]),
                sport: 1024 + (i % 60_000) as u16,
                dport: 5000 + (i / 60_000) as u16,
                family: 4,
                protocol: 17,
                may_be_reply: false,
                tcp_flags: 0,
            };
            let l = porin_common::decide::ct4_key(&flow, 7_100_001);
            let v = porin_common::decide::ct_value(
                now,
                porin_common::datapath::PEER_IN_UNVERIFIED,
                Direction::Egress,
                l.origin,
                0,
                porin_common::ct::state::UDP,
            );
            ct.insert(l.key, v, 0).expect("a connection");
        }
    }
    let mut ms = Vec::with_capacity(RELOADS);
    for i in 0..RELOADS {
        let next = if i % 2 == 0 { &b } else { &a };
        let t = Instant::now();
        let report = dp.apply(next, &[]).expect("apply");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(report.revoked.total(), 0, "every connection still allowed");
    }
    let (median, p99) = stats(&mut ms);
    println!(
        "    1000 rules with {n} tracked connections (each judged again): median {median:7.2} ms  p99 {p99:7.2} ms"
    );
    let mut sweep = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let gone = dp.sweep_connections().expect("sweep");
        sweep.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(gone, 0, "none idle");
    }
    let (median, _) = stats(&mut sweep);
    println!("  sweep of {n} tracked connections (none idle): median {median:7.2} ms");
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut w = [0; 16];
    w[..4].copy_from_slice(&a);
    w
}

fn verdict(worst: f64) -> String {
    if worst < TARGET_MS {
        format!("  (target < {TARGET_MS} ms: met)")
    } else {
        format!("  (target < {TARGET_MS} ms: MISSED)")
    }
}

/// Sorts `v`; (median, p99) by nearest rank.
fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.5), rank(0.99))
}

const A: Identity = identity::GROUP_BASE + 101;
const B: Identity = identity::GROUP_BASE + 102;

/// `rules` rules `from: [A] to: [B]`, TCP ports `base..base+rules`: A's
/// egress and B's ingress entry each, two endpoints, two addresses.
fn compiled(rules: u32, base: u32) -> Compiled {
    let mut c = Compiled::default();
    for (ifindex, id) in [(7_100_001u32, A), (7_100_002, B)] {
        c.endpoints
            .insert(ifindex, EndpointInfo::new(id, mode::ENFORCE));
    }
    c.ip4.insert(Ipv4Addr::new(10, 231, 251, 1).octets(), A);
    c.ip4.insert(Ipv4Addr::new(10, 231, 251, 2).octets(), B);
    for i in 0..rules {
        let port = u16::try_from(base + i).expect("ports fit");
        for (subject, peer, direction) in [(A, B, Direction::Egress), (B, A, Direction::Ingress)] {
            c.policy.insert(
                PolicyKey::new(subject, peer, direction, 6, port),
                PolicyValue::allow(i + 1),
            );
        }
    }
    c
}

fn daemon_config(socket: &Path, base: u16) -> String {
    let mut s = format!(
        "version: 1\nenforcement:\n  mode: enforce\n  unknown_workloads: allow\ncontrol:\n  socket: {}\n\
         groups:\n  - name: rb-web\n    select:\n      labels: {{porin-bench-reload: web}}\n\
         \x20 - name: rb-client\n    select:\n      labels: {{porin-bench-reload: client}}\npolicies:\n",
        socket.display()
    );
    for i in 0..DAEMON_RULES {
        s.push_str(&format!(
            "  - name: r{i}\n    from: [rb-client]\n    to: [rb-web]\n    protocol: tcp\n    ports: [{}]\n",
            base + i
        ));
    }
    s
}

fn daemon_reloads() {
    let dir = std::env::temp_dir().join(format!("porin-t-bench-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("porin.sock");
    let config = dir.join("porin.yaml");
    std::fs::write(&config, daemon_config(&socket, 20_000)).unwrap();
    let web = PodmanContainer::run(
        "rb-web",
        &Spec {
            labels: &[("porin-bench-reload", "web")],
            ..Default::default()
        },
    );
    let client = PodmanContainer::run(
        "rb-client",
        &Spec {
            labels: &[("porin-bench-reload", "client")],
            ..Default::default()
        },
    );
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    // Both endpoints, in whichever order discovery reports them.
    let seen = std::cell::RefCell::new(Vec::new());
    daemon.wait_for(
        |l| {
            for n in [&web.name, &client.name] {
                if l.contains("endpoint +") && l.contains(n.as_str()) {
                    seen.borrow_mut().push(n.clone());
                }
            }
            seen.borrow().len() >= 2
        },
        Duration::from_secs(30),
    );
    daemon.wait_for(|l| l.contains("policy generation"), Duration::from_secs(30));
    let mut client_ms = Vec::new();
    let mut daemon_ms = Vec::new();
    for i in 0..DAEMON_RELOADS {
        let base = if i % 2 == 0 { 40_000 } else { 20_000 };
        std::fs::write(&config, daemon_config(&socket, base)).unwrap();
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_porin"))
            .args(["reload", "--socket", socket.to_str().unwrap()])
            .output()
            .expect("porin reload");
        client_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "porin reload: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // "... in 3.2 ms"
        let reported: f64 = stdout
            .trim_end()
            .strip_suffix(" ms")
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no time in {stdout:?}"));
        daemon_ms.push(reported);
    }
    let status = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["policy", "--socket", socket.to_str().unwrap()])
        .output()
        .expect("porin policy");
    let summary = String::from_utf8_lossy(&status.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(daemon.stop(), "porin run stopped cleanly");
    std::fs::remove_dir_all(&dir).ok();
    let (cm, cp) = stats(&mut client_ms);
    let (dm, dpp) = stats(&mut daemon_ms);
    println!(
        "through the daemon (release build), {DAEMON_RULES} rules, {DAEMON_RELOADS} reloads with `porin reload` ({summary}):"
    );
    println!(
        "  daemon, request read -> enforced (reply's figure): median {dm:7.2} ms  p99 {dpp:7.2} ms"
    );
    println!(
        "  client, `porin reload` spawned -> exited:          median {cm:7.2} ms  p99 {cp:7.2} ms"
    );
}
