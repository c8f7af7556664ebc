//! MQTT messages per second from a client container to a broker container,
//! without any filter, through Porin with MQTT rules on the port, and
//! through the broker enforcing the same rule itself (Mosquitto's
//! `acl_file`), in rounds of the same run, for QoS 0 and QoS 1:
//! `cargo bench --bench mqtt_rate` (as root; needs podman, `mosquitto` and
//! `mosquitto-clients`; `PORIN_BENCH_ROUNDS=N`, default 3;
//! `PORIN_BENCH_MESSAGES=N` per window, default 20000).
//!
//! The client is Debian's `mosquitto_pub -l` (one message per stdin line,
//! Nagle on, as it runs by default) in the client container's network
//! namespace; the broker is Debian's `mosquitto` in the broker container's.
//! A window's time runs from the publisher's start until a subscriber on
//! the broker's loopback has received every message, so what counts is
//! what reached the broker.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::{Daemon, Exclusive},
    podman::{PodmanContainer, Spec},
    require_root,
};

const TOPIC: &str = "sensors/kitchen/temperature";

const CONFIG: &str = r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  unknown_workloads: quarantine
groups:
  - name: broker
    select:
      labels: {porin-mqtt-rate: broker}
  - name: cam
    select:
      labels: {porin-mqtt-rate: cam}
ground_rules:
  same_group: allow
  cross_group: deny
  host_ingress: deny
policies:
  - name: cams-to-broker
    from: [cam]
    to: [broker]
    ports: [1883]
    mqtt:
      client_id: "cam-*"
      publish: ["sensors/+/temperature"]
"#;

/// The same rule for the broker: anonymous clients may only publish to
/// `sensors/+/temperature` (and read, for the counting subscriber).
const ACL: &str = "topic write sensors/+/temperature\ntopic read sensors/#\n";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling a child this bench spawned, by PID.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

fn nsenter(c: &PodmanContainer) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &c.pid().to_string(), "-n"]);
    cmd
}

/// Mosquitto in the broker's namespace, with the ACL or without.
fn broker(c: &PodmanContainer, dir: &Path, acl: bool) -> Proc {
    let conf = dir.join(if acl { "acl.conf" } else { "open.conf" });
    let mut text = "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\n".to_string();
    if acl {
        let f = dir.join("acl");
        std::fs::write(&f, ACL).unwrap();
        text.push_str(&format!("acl_file {}\n", f.display()));
    }
    std::fs::write(&conf, text).unwrap();
    let p = Proc(
        nsenter(c)
            .args(["/usr/sbin/mosquitto", "-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    std::thread::sleep(Duration::from_millis(500));
    p
}

/// One window: `n` messages at `qos`; messages per second as the broker
/// received them, or why not.
fn window(
    broker: &PodmanContainer,
    cam: &PodmanContainer,
    ip: &str,
    n: usize,
    qos: u8,
) -> Result<f64, String> {
    let count = n.to_string();
    let sub = Proc(
        nsenter(broker)
            .args([
                "/usr/bin/mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-t",
                TOPIC,
            ])
            .args(["-C", &count, "-W", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut lines = String::with_capacity(n * 16);
    for i in 0..n {
        lines.push_str(&format!("reading={:05}\n", i % 100_000));
    }
    let start = Instant::now();
    let q = qos.to_string();
    let mut publisher = nsenter(cam)
        .args([
            "/usr/bin/mosquitto_pub",
            "-h",
            ip,
            "-p",
            "1883",
            "-i",
            "cam-1",
        ])
        .args(["-t", TOPIC, "-q", &q, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    // A refused connection closes the pipe early: the error shows below.
    let _ = publisher.stdin.take().unwrap().write_all(lines.as_bytes());
    let mut sub = sub;
    let got = loop {
        if let Some(st) = sub.0.try_wait().unwrap() {
            break st.success();
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = start.elapsed().as_secs_f64();
    let out = publisher.wait_with_output().expect("publisher");
    if !got {
        return Err(format!(
            "the broker did not receive all {n} messages (publisher: {}, {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(n as f64 / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root("mqtt_rate benchmark");
    let rounds = env_or("PORIN_BENCH_ROUNDS", 3);
    let n = env_or("PORIN_BENCH_MESSAGES", 20_000);
    let _exclusive = Exclusive::acquire();
    let dir: PathBuf = std::env::temp_dir().join(format!("porin-b-mqtt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let b = PodmanContainer::run(
        "mr-broker",
        &Spec {
            labels: &[("porin-mqtt-rate", "broker")],
            cmd: &["sleep", "3600"],
            ..Default::default()
        },
    );
    let cam = PodmanContainer::run(
        "mr-cam",
        &Spec {
            labels: &[("porin-mqtt-rate", "cam")],
            cmd: &["sleep", "3600"],
            ..Default::default()
        },
    );
    let ip = b.ipv4().expect("broker address").to_string();
    let config = dir.join("porin.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    // (path, QoS, each round's rate or why it failed)
    type Row = (String, u8, Vec<Result<f64, String>>);
    let mut results: Vec<Row> = Vec::new();
    for qos in [0u8, 1] {
        for path in ["no filter", "Porin MQTT rules", "mosquitto acl_file"] {
            results.push((path.to_string(), qos, Vec::new()));
        }
    }
    for round in 0..rounds {
        for (i, qos) in [0u8, 1].into_iter().enumerate() {
            {
                let _m = broker(&b, &dir, false);
                let r = window(&b, &cam, &ip, n, qos);
                results[i * 3].2.push(r);
            }
            {
                let _m = broker(&b, &dir, false);
                let mut d = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
                d.wait_for(
                    |l| l.contains("2 endpoints enforced"),
                    Duration::from_secs(30),
                );
                let r = window(&b, &cam, &ip, n, qos);
                results[i * 3 + 1].2.push(r);
                assert!(d.stop(), "the daemon stops cleanly");
            }
            {
                let _m = broker(&b, &dir, true);
                let r = window(&b, &cam, &ip, n, qos);
                results[i * 3 + 2].2.push(r);
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!("mqtt_rate: {n} messages of {} bytes to {TOPIC}, mosquitto_pub -l (Nagle on), {rounds} rounds", "reading=00000".len());
    for qos in [0u8, 1] {
        let base: Vec<f64> = results
            .iter()
            .filter(|(p, q, _)| *q == qos && p == "no filter")
            .flat_map(|(_, _, r)| r.iter().filter_map(|x| x.as_ref().ok().copied()))
            .collect();
        let base = if base.is_empty() {
            f64::NAN
        } else {
            median(base)
        };
        for (path, q, rs) in &results {
            if *q != qos {
                continue;
            }
            let ok: Vec<f64> = rs.iter().filter_map(|x| x.as_ref().ok().copied()).collect();
            let errs: Vec<&String> = rs.iter().filter_map(|x| x.as_ref().err()).collect();
            if ok.is_empty() {
                println!(
                    "  QoS {qos}  {path:<20} FAILED: {}",
                    errs.first().map_or("", |e| e.as_str())
                );
                continue;
            }
            let m = median(ok.clone());
            println!(
                "  QoS {qos}  {path:<20} {m:>9.0} msg/s  {:>5.1} % of no filter  (rounds: {})",
                100.0 * m / base,
                ok.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for e in errs {
                println!("        failed round: {e}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
