//! Flow visibility end to end with real Podman containers: the metrics
//! counters against the packets a test sent, a denied connection in `porin
//! flows`, and a flood whose lost records are counted while the daemon's
//! memory stays flat. Needs root and podman.
//!
//! The last two run twice: with the transport the kernel offers (a ring
//! buffer here) and with `flows.events_transport: perf`, the perf event
//! array fallback for kernels before 5.8.

mod common;

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{free_port, metric, scrape};
use porin::testing::{
    daemon::Daemon,
    podman::{podman, PodmanContainer, Spec},
    require_root,
};

const CONFIG: &str = r#"version: 1
enforcement:
  mode: enforce
groups:
  - name: sensor
    select:
      labels: {porin-fe: sensor}
  - name: web
    select:
      labels: {porin-fe: web}
ground_rules:
  cross_group: deny
  host_ingress: deny
flows:
  history: 1024
  rate_limit: 2000
"#;

struct World {
    dir: PathBuf,
    socket: PathBuf,
    port: u16,
    daemon: Daemon,
    web: PodmanContainer,
    sensor: PodmanContainer,
}

/// One daemon at a time: two would both attach to every container's veth.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(tag: &str, transport: &str) -> World {
    let web = PodmanContainer::run(
        &format!("{tag}-web"),
        &Spec {
            labels: &[("porin-fe", "web")],
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            ..Default::default()
        },
    );
    let sensor = PodmanContainer::run(
        &format!("{tag}-sensor"),
        &Spec {
            labels: &[("porin-fe", "sensor")],
            // busybox ping needs a raw socket.
            args: &["--cap-add", "NET_RAW"],
            ..Default::default()
        },
    );
    let dir = std::env::temp_dir().join(format!("porin-t-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("porin.sock");
    let port = free_port();
    let config = dir.join("porin.yaml");
    std::fs::write(
        &config,
        format!(
            "{CONFIG}  events_transport: {transport}\n  log:\n    path: {}\n    max_size: 64KiB\n    keep: 2\ncontrol:\n  socket: {}\nmetrics:\n  listen: 127.0.0.1:{port}\n",
            dir.join("flows.jsonl").display(),
            socket.display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    // Other containers may be running on the machine: wait until ours are
    // both enforced (their veths attached).
    let mut attached = 0;
    while attached < 2 {
        let l = daemon.wait_for(
            |l| {
                l.contains("endpoint +")
                    && (l.contains(web.name.as_str()) || l.contains(sensor.name.as_str()))
            },
            Duration::from_secs(20),
        );
        let _ = l;
        attached += 1;
    }
    daemon.wait_for(
        |l| l.contains("policy generation") && !l.contains("FAILED"),
        Duration::from_secs(20),
    );
    World {
        dir,
        socket,
        port,
        daemon,
        web,
        sensor,
    }
}

/// `porin ARGS` printing one JSON document.
fn porin_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(args)
        .output()
        .expect("run porin");
    assert!(out.status.success(), "porin {args:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn porin_json_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(args)
        .output()
        .expect("run porin");
    assert!(
        out.status.success(),
        "porin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

const DENIED_P: &str = "porin_dropped_packets_total{reason=\"POLICY_DENIED\"}";
const DENIED_B: &str = "porin_dropped_bytes_total{reason=\"POLICY_DENIED\"}";

#[test]
fn the_drop_counters_match_the_packets_sent() {
    require_root("flows end-to-end test");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = start("fe-count", "auto");
    let web_ip = w.web.ipv4().expect("web address");
    let before = scrape(w.port);
    // Three echo requests, sensor -> web, denied at the sensor's egress.
    // busybox ping: 56 bytes of data, so 98-byte frames.
    let out = podman(&[
        "exec",
        &w.sensor.name,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &web_ip.to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 packets transmitted, 0 packets received"),
        "three pings sent, all denied: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = scrape(w.port);
    assert_eq!(
        metric(&after, DENIED_P) - metric(&before, DENIED_P),
        3.0,
        "each denied ping counted once"
    );
    assert_eq!(
        metric(&after, DENIED_B) - metric(&before, DENIED_B),
        3.0 * 98.0
    );
    assert!(w.daemon.stop());
    std::fs::remove_dir_all(&w.dir).ok();
}

#[test]
fn a_denied_connection_shows_in_porin_flows_within_a_second() {
    denied_connection_shows_in_porin_flows("fe-flow", "auto", "ring buffer");
}

#[test]
fn a_denied_connection_shows_in_porin_flows_within_a_second_perf() {
    denied_connection_shows_in_porin_flows("fe-flowp", "perf", "perf event array");
}

fn denied_connection_shows_in_porin_flows(tag: &str, transport: &str, expect: &str) {
    require_root("flows end-to-end test");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = start(tag, transport);
    // `porin status` names the transport in use.
    let status = porin_json(&[
        "status",
        "--socket",
        w.socket.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        status["kernel"]
            .as_array()
            .unwrap()
            .iter()
            .any(|kv| kv[0] == "flow events" && kv[1] == expect),
        "status says flow events go through a {expect}: {}",
        status["kernel"]
    );
    let web_ip = w.web.ipv4().expect("web address");
    let sensor_ip = w.sensor.ipv4().expect("sensor address");
    let sent = Instant::now();
    // One connection attempt (wget gives up after 1 s; its SYNs are denied).
    let mut wget = Command::new("podman")
        .args([
            "exec",
            &w.sensor.name,
            "timeout",
            "1",
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{web_ip}:8080/"),
        ])
        .spawn()
        .unwrap();
    let sock = w.socket.to_str().unwrap();
    let found = loop {
        let flows = porin_json_lines(&[
            "flows",
            "--socket",
            sock,
            "--verdict",
            "DROPPED",
            "--identity",
            "sensor",
            "-o",
            "json",
        ]);
        if let Some(f) = flows
            .into_iter()
            .find(|f| f["destination"]["port"] == 8080 && f["protocol"] == "TCP")
        {
            break f;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "no DROPPED flow sensor -> web:8080 in porin flows"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = wget.wait();
    // podman exec itself takes a few hundred ms to start wget: the flow
    // must be there within 1 s of the packet, 2 s of the exec.
    let when = found["time"].as_str().unwrap().to_string();
    assert_eq!(found["verdict"], "DROPPED");
    assert_eq!(found["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(found["traffic_direction"], "EGRESS");
    assert_eq!(found["source"]["identity_name"], "sensor");
    assert_eq!(found["source"]["container_name"], w.sensor.name.as_str());
    assert_eq!(found["source"]["container_id"], w.sensor.id.as_str());
    assert_eq!(found["source"]["ip"], sensor_ip.to_string());
    assert_eq!(found["destination"]["identity_name"], "web");
    assert_eq!(found["destination"]["container_name"], w.web.name.as_str());
    assert!(found["source"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l == "porin-fe=sensor"));
    assert!(found["interface"]["name"]
        .as_str()
        .unwrap()
        .starts_with("veth"));
    assert!(!when.is_empty());
    // The same record went to the flow log (other containers' flows may
    // have rotated it into an older file already).
    let mut log = String::new();
    for e in std::fs::read_dir(&w.dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("flows.jsonl") {
            log += &std::fs::read_to_string(e.path()).unwrap();
        }
    }
    assert!(
        log.lines().any(|l| l.contains("POLICY_DENIED")),
        "flow log: {log}"
    );
    assert!(w.daemon.stop());
    std::fs::remove_dir_all(&w.dir).ok();
}

#[test]
fn a_flood_loses_records_visibly_and_the_daemon_memory_stays_flat() {
    flood_loses_records_visibly("fe-flood", "auto");
}

#[test]
fn a_flood_loses_records_visibly_and_the_daemon_memory_stays_flat_perf() {
    flood_loses_records_visibly("fe-floodp", "perf");
}

fn flood_loses_records_visibly(tag: &str, transport: &str) {
    require_root("flows end-to-end test");
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let w = start(tag, transport);
    let web_ip = w.web.ipv4().expect("web address");
    // host -> web is denied (host_ingress: deny): every datagram is a drop
    // event at web's to_container, far above the 2000/s rate limit.
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    let flood = |n: usize| {
        for i in 0..n {
            let _ = udp.send_to(&(i as u32).to_le_bytes(), (web_ip, 9999));
        }
    };
    flood(50_000);
    std::thread::sleep(Duration::from_millis(500));
    let rss_1 = w.daemon.rss_kib();
    let m1 = scrape(w.port);
    flood(200_000);
    std::thread::sleep(Duration::from_millis(500));
    let rss_2 = w.daemon.rss_kib();
    let m2 = scrape(w.port);
    let lost = metric(&m2, "porin_flow_events_lost_total{cause=\"rate_limit\"}");
    let read = metric(&m2, "porin_flow_events_read_total");
    let dropped = metric(&m2, DENIED_P);
    eprintln!(
        "flood ({transport}): {dropped} packets dropped, {read} records read, {lost} lost to the rate limit; \
         daemon RSS {rss_1} KiB then {rss_2} KiB"
    );
    assert!(dropped >= 250_000.0, "the flood was dropped: {dropped}");
    assert!(
        lost > 100_000.0,
        "the rate limit's losses are counted: {lost}"
    );
    assert!(
        read + lost + metric(&m2, "porin_flow_events_lost_total{cause=\"ring_full\"}") >= dropped,
        "every drop is either a record or a counted loss"
    );
    assert!(
        metric(&m1, "porin_flow_events_read_total") < read,
        "records still flow during the flood"
    );
    assert!(
        rss_2 <= rss_1 + 1024,
        "daemon memory flat under the flood: {rss_1} KiB then {rss_2} KiB"
    );
    // The log stayed within its cap: 64 KiB × (1 + keep).
    let mut total = 0;
    for e in std::fs::read_dir(&w.dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("flows.jsonl") {
            total += e.metadata().unwrap().len();
        }
    }
    assert!(total <= 3 * 64 * 1024, "flow log within its cap: {total}");
    assert!(w.daemon.stop());
    drop(w.sensor);
    std::fs::remove_dir_all(&w.dir).ok();
}
