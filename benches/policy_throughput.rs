//! Container-to-container TCP throughput (iperf3) with 10,000 policy rules:
//! no policy at all, Porin, and nftables expressing the same rules both as a
//! plain rule chain and as a set, all in the same run.
//!
//!   cargo bench --bench policy_throughput
//!
//! Needs root, podman, iperf3 and nft (`.ci/setup` installs them). The two
//! containers sit on Podman's bridge; iperf3 runs inside their network
//! namespaces (`nsenter -n`), so only their traffic is measured. nftables
//! only sees bridged traffic with `net.bridge.bridge-nf-call-iptables=1`;
//! the benchmark sets it for the nftables runs and restores it afterwards
//! (and prints a baseline with it on and no rules, so its own cost shows).

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use porin::testing::{
    daemon::Daemon,
    podman::{PodmanContainer, Spec},
    require_root,
};

const RULES: u16 = 10_000;
const IPERF_PORT: u16 = 5201;
const SECONDS: u32 = 5;
const ROUNDS: usize = 3;
const BR_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
const NFT_TABLE: &str = "porin_bench";

fn main() {
    require_root("policy throughput benchmark");
    for tool in ["iperf3", "nft", "nsenter"] {
        assert!(
            Command::new("which")
                .arg(tool)
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: run .ci/setup"
        );
    }
    let web = PodmanContainer::run(
        "tp-web",
        &Spec {
            labels: &[("porin-bench", "web")],
            ..Default::default()
        },
    );
    let sensor = PodmanContainer::run(
        "tp-sensor",
        &Spec {
            labels: &[("porin-bench", "sensor")],
            ..Default::default()
        },
    );
    let web_ip = web.ipv4().expect("web address");
    let sensor_ip = sensor.ipv4().expect("sensor address");
    let ports: Vec<u16> = (0..RULES)
        .map(|i| {
            if i == RULES - 1 {
                IPERF_PORT
            } else {
                20_000 + i
            }
        })
        .collect();

    let dir = std::env::temp_dir().join(format!("porin-t-bench-tp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    std::fs::write(&config, porin_config(&ports)).unwrap();

    // Rounds interleave the variants so that drift on a shared machine hits
    // them all alike; the median of each is reported.
    let mut results: Vec<(String, Vec<f64>)> = Vec::new();
    let mut record = |what: String, bps: f64| match results.iter_mut().find(|(w, _)| *w == what) {
        Some((_, v)) => v.push(bps),
        None => results.push((what, vec![bps])),
    };
    for _ in 0..ROUNDS {
        record("no policy (baseline)".into(), iperf(&sensor, &web, web_ip));

        // Porin, enforce mode, 10,000 rules (the iperf3 port is the last one).
        let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
        daemon.wait_for(
            |l| l.contains("2 endpoints enforced") && !l.contains("FAILED"),
            Duration::from_secs(60),
        );
        assert_filters(&sensor, web_ip, "Porin");
        record(
            format!("Porin, {RULES} rules"),
            iperf(&sensor, &web, web_ip),
        );
        assert!(daemon.stop(), "porin run stopped cleanly");

        // nftables, bridged traffic through netfilter.
        let _brnf = BrNetfilter::enable();
        record(
            "bridge-nf-call-iptables=1, no rules".into(),
            iperf(&sensor, &web, web_ip),
        );
        nft_load(&nft_chain(sensor_ip, web_ip, &ports));
        assert_filters(&sensor, web_ip, "the nftables chain");
        record(
            format!("nftables, {RULES}-rule chain"),
            iperf(&sensor, &web, web_ip),
        );
        nft_delete();
        nft_load(&nft_set(sensor_ip, web_ip, &ports));
        assert_filters(&sensor, web_ip, "the nftables set");
        record(
            format!("nftables, {RULES}-element set"),
            iperf(&sensor, &web, web_ip),
        );
        nft_delete();
    }
    std::fs::remove_dir_all(&dir).ok();

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&results[0].1);
    println!("container-to-container TCP throughput, iperf3 -t {SECONDS}, one stream, median of {ROUNDS} rounds:");
    for (what, v) in &results {
        let m = median(v);
        let all: Vec<String> = v.iter().map(|b| format!("{:.2}", b / 1e9)).collect();
        println!(
            "  {what:<40} {:8.2} Gbit/s  {:6.1}% of baseline   (rounds: {})",
            m / 1e9,
            100.0 * m / base,
            all.join(", ")
        );
    }
}

/// Checks that `what` really filters: a port outside the rules must time
/// out (dropped), not be refused (which would mean the SYN got through).
fn assert_filters(client: &PodmanContainer, server_ip: Ipv4Addr, what: &str) {
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", client.pid())).expect("client netns");
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd, in a thread that ends here.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let addr = std::net::SocketAddr::from((server_ip, 5209));
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(|_| ())
        })
        .join()
        .unwrap()
    });
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => panic!(
            "{what} does not filter: a connection to a port outside the rules gave {other:?}"
        ),
    }
}

/// Throughput sensor -> web in bits per second (receiver side).
fn iperf(client: &PodmanContainer, server: &PodmanContainer, server_ip: Ipv4Addr) -> f64 {
    let mut srv: Child = Command::new("nsenter")
        .args([
            "-t",
            &server.pid().to_string(),
            "-n",
            "iperf3",
            "-s",
            "-1",
            "-p",
        ])
        .arg(IPERF_PORT.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("nsenter")
        .args(["-t", &client.pid().to_string(), "-n", "iperf3", "-J", "-c"])
        .arg(server_ip.to_string())
        .args(["-p", &IPERF_PORT.to_string(), "-t", &SECONDS.to_string()])
        .output()
        .expect("run iperf3 client");
    let _ = srv.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 failed: {}", json["error"]))
}

fn porin_config(ports: &[u16]) -> String {
    let mut c = String::from(
        "version: 1\nenforcement:\n  mode: enforce\n  unknown_workloads: allow\n\
         groups:\n  - name: sensor\n    select: {labels: {porin-bench: sensor}}\n\
         \x20 - name: web\n    select: {labels: {porin-bench: web}}\n\
         ground_rules:\n  same_group: allow\n  cross_group: deny\npolicies:\n",
    );
    for (i, p) in ports.iter().enumerate() {
        let _ = writeln!(
            c,
            "  - {{name: r{i}, from: [sensor], to: [web], protocol: tcp, ports: [{p}]}}"
        );
    }
    c
}

/// One rule per allowed flow, in the config's order (the measured flow is
/// the last rule); established traffic is accepted first, as any tuned
/// ruleset does.
fn nft_chain(src: Ipv4Addr, dst: Ipv4Addr, ports: &[u16]) -> String {
    let mut r = format!(
        "table inet {NFT_TABLE} {{\n chain fchain {{\n  type filter hook forward priority 0; policy accept;\n\
         \x20 ct state established,related accept\n"
    );
    for p in ports {
        let _ = writeln!(r, "  ip saddr {src} ip daddr {dst} tcp dport {p} accept");
    }
    let _ = writeln!(r, "  ip saddr {src} ip daddr {dst} drop\n }}\n}}");
    r
}

/// The same rules as one set lookup (nftables at its best).
fn nft_set(src: Ipv4Addr, dst: Ipv4Addr, ports: &[u16]) -> String {
    let elements: Vec<String> = ports
        .iter()
        .map(|p| format!("{src} . {dst} . {p}"))
        .collect();
    format!(
        "table inet {NFT_TABLE} {{\n set allowed {{\n  type ipv4_addr . ipv4_addr . inet_service\n  elements = {{ {} }}\n }}\n\
         \x20chain fchain {{\n  type filter hook forward priority 0; policy accept;\n\
         \x20 ct state established,related accept\n\
         \x20 ip saddr . ip daddr . tcp dport @allowed accept\n\
         \x20 ip saddr {src} ip daddr {dst} drop\n }}\n}}\n",
        elements.join(", ")
    )
}

fn nft_load(ruleset: &str) {
    let path = std::env::temp_dir().join(format!("porin-bench-{}.nft", std::process::id()));
    std::fs::write(&path, ruleset).unwrap();
    let out = Command::new("nft")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("nft");
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "nft -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft_delete() {
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", NFT_TABLE])
        .output();
}

/// Turns bridge-nf-call-iptables on and restores the old value on drop.
struct BrNetfilter(String);

impl BrNetfilter {
    fn enable() -> Self {
        let old = std::fs::read_to_string(BR_NF)
            .unwrap_or_else(|e| panic!("{BR_NF}: {e} (kernel without br_netfilter?)"));
        std::fs::write(BR_NF, "1").expect("enable bridge-nf-call-iptables");
        BrNetfilter(old.trim().to_string())
    }
}

impl Drop for BrNetfilter {
    fn drop(&mut self) {
        nft_delete();
        let _ = std::fs::write(BR_NF, &self.0);
    }
}
