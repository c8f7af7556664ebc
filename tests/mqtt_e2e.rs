//! MQTT rules end to end: `porin run` in enforce mode, a broker container
//! (Debian's `mosquitto`, run in the container's network namespace) and a
//! camera container whose clients are Debian's `mosquitto_pub`,
//! `mosquitto_sub` and Python's paho-mqtt (MQTT 3.1.1 and 5.0), also run in
//! its namespace (`nsenter -t PID -n`), so their traffic crosses the
//! camera's veth, where Porin judges it.
//!
//! A subscriber to `#` on the broker's own loopback (which no veth sees)
//! records every message that reached the broker: allowed messages must be
//! there, denied ones never.
//!
//! Needs root, podman, `mosquitto`, `mosquitto-clients` and
//! `python3-paho-mqtt` (`.ci/setup` installs them); a missing one fails the
//! test instead of skipping it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::{Daemon, Exclusive},
    podman::{PodmanContainer, Spec},
    require_root,
};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const PUB: &str = "/usr/bin/mosquitto_pub";
const SUB: &str = "/usr/bin/mosquitto_sub";
const PYTHON: &str = "/usr/bin/python3";

const CONFIG: &str = r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  unknown_workloads: quarantine
groups:
  - name: broker
    select:
      labels: {porin-mqtt-e2e: broker}
  - name: cam
    select:
      labels: {porin-mqtt-e2e: cam}
ground_rules:
  internet_egress: deny
  same_group: allow
  cross_group: deny
  host_ingress: deny
  host_egress: deny
policies:
  - name: cams-to-broker
    from: [cam]
    to: [broker]
    ports: [1883]
    mqtt:
      client_id: "cam-*"
      publish: ["sensors/+/temperature", "cams/{client_id}/#"]
      subscribe: ["cmd/cams/#"]
      max_qos: 1
"#;

fn require_program(path: &str, package: &str) {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: install the Debian package `{package}` (.ci/setup does); \
         refusing to skip the test"
    );
}

/// Kills (SIGKILL) and reaps a process this test started, by its PID.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling a child this test spawned, by PID.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// `program args` in the network namespace of `c`, at most `secs`.
fn in_ns(c: &PodmanContainer, secs: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .args(["nsenter", "-t", &c.pid().to_string(), "-n", program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {program}: {e}"))
}

fn spawn_in_ns(c: &PodmanContainer, program: &str, args: &[&str], out: &Path) -> Proc {
    let f = std::fs::File::create(out).unwrap();
    Proc(
        Command::new("nsenter")
            .args(["-t", &c.pid().to_string(), "-n", program])
            .args(args)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nsenter {program}: {e}")),
    )
}

struct Lab {
    dir: PathBuf,
    broker: PodmanContainer,
    cam: PodmanContainer,
    broker_ip: String,
}

impl Lab {
    /// `mosquitto_pub` from the camera: MQTT `version` (`mqttv311`,
    /// `mqttv5`), client id, topic, QoS, message. Exit status and output.
    fn publish(&self, version: &str, id: &str, topic: &str, qos: u8, msg: &str) -> Output {
        let q = qos.to_string();
        in_ns(
            &self.cam,
            8,
            PUB,
            &[
                "-h",
                &self.broker_ip,
                "-p",
                "1883",
                "-V",
                version,
                "-i",
                id,
                "-t",
                topic,
                "-q",
                &q,
                "-m",
                msg,
            ],
        )
    }

    /// Every message that reached the broker so far (`topic payload`).
    fn seen(&self) -> String {
        std::fs::read_to_string(self.dir.join("seen.txt")).unwrap_or_default()
    }

    /// Waits until `line` reached the broker (or `within` passed).
    fn arrived(&self, line: &str, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.seen().lines().any(|l| l == line) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn mqtt_rules_are_enforced_on_real_clients() {
    require_root("MQTT rules end-to-end test");
    for (p, pkg) in [
        (MOSQUITTO, "mosquitto"),
        (PUB, "mosquitto-clients"),
        (SUB, "mosquitto-clients"),
        (PYTHON, "python3"),
    ] {
        require_program(p, pkg);
    }
    let paho = Command::new(PYTHON)
        .args(["-c", "import paho.mqtt.client"])
        .status()
        .unwrap();
    assert!(
        paho.success(),
        "python3-paho-mqtt is missing (.ci/setup installs it)"
    );
    let _exclusive = Exclusive::acquire();

    let dir = std::env::temp_dir().join(format!("porin-t-mqtt-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broker = PodmanContainer::run(
        "me-broker",
        &Spec {
            labels: &[("porin-mqtt-e2e", "broker")],
            cmd: &["sleep", "3600"],
            ..Default::default()
        },
    );
    let cam = PodmanContainer::run(
        "me-cam",
        &Spec {
            labels: &[("porin-mqtt-e2e", "cam")],
            cmd: &["sleep", "3600"],
            ..Default::default()
        },
    );
    let broker_ip = broker
        .ipv4()
        .expect("the broker has an address")
        .to_string();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\n",
    )
    .unwrap();
    let _mosquitto = spawn_in_ns(
        &broker,
        MOSQUITTO,
        &["-c", conf.to_str().unwrap()],
        &dir.join("mosquitto.log"),
    );
    let lab = Lab {
        dir: dir.clone(),
        broker,
        cam,
        broker_ip,
    };
    // The broker's own view: a subscriber to everything on its loopback.
    let t = Instant::now();
    let _seen = loop {
        std::thread::sleep(Duration::from_millis(200));
        let p = spawn_in_ns(
            &lab.broker,
            SUB,
            &["-h", "127.0.0.1", "-p", "1883", "-t", "#", "-v"],
            &dir.join("seen.txt"),
        );
        std::thread::sleep(Duration::from_millis(300));
        let mut p = p;
        if p.0.try_wait().unwrap().is_none() {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mosquitto did not start"
        );
    };
    // Baseline without Porin: anything goes.
    let o = lab.publish("mqttv311", "intruder", "secret/x", 0, "baseline");
    assert!(o.status.success(), "baseline publish: {}", text(&o));
    assert!(
        lab.arrived("secret/x baseline", Duration::from_secs(5)),
        "{}",
        lab.seen()
    );

    let config = dir.join("porin.yaml");
    let socket = dir.join("porin.sock");
    std::fs::write(
        &config,
        format!("{CONFIG}control:\n  socket: {}\n", socket.display()),
    )
    .unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    daemon.wait_for(
        |l| l.contains("2 endpoints enforced") && !l.contains("FAILED"),
        Duration::from_secs(30),
    );

    // Allowed: 3.1.1 and 5.0, QoS 0 and 1, `+` and `{client_id}`.
    let o = lab.publish(
        "mqttv311",
        "cam-1",
        "sensors/kitchen/temperature",
        0,
        "ok-311",
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = lab.publish("mqttv5", "cam-1", "cams/cam-1/status", 1, "ok-5");
    assert!(o.status.success(), "{}", text(&o));
    assert!(lab.arrived("sensors/kitchen/temperature ok-311", Duration::from_secs(5)));
    assert!(lab.arrived("cams/cam-1/status ok-5", Duration::from_secs(5)));

    // Refused: another camera's topic (5.0, QoS 1: the client is told with
    // a DISCONNECT 0x87 and fails), a topic no pattern covers (3.1.1), a
    // client id no pattern names (CONNACK "not authorised"), QoS 2.
    let o = lab.publish("mqttv5", "cam-1", "cams/cam-2/status", 1, "no-other-cam");
    assert!(!o.status.success(), "{}", text(&o));
    let o = lab.publish(
        "mqttv311",
        "cam-1",
        "sensors/kitchen/humidity",
        1,
        "no-humidity",
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = lab.publish(
        "mqttv311",
        "intruder",
        "sensors/kitchen/temperature",
        0,
        "no-id",
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).to_lowercase().contains("not authori"),
        "the CONNACK says why: {}",
        text(&o)
    );
    let o = lab.publish(
        "mqttv5",
        "intruder",
        "sensors/kitchen/temperature",
        0,
        "no-id-5",
    );
    assert!(!o.status.success(), "{}", text(&o));
    let o = lab.publish(
        "mqttv5",
        "cam-1",
        "sensors/kitchen/temperature",
        2,
        "no-qos2",
    );
    assert!(!o.status.success(), "{}", text(&o));

    // Subscriptions: within `cmd/cams/#` the camera gets its commands; a
    // wider filter is refused.
    let got = dir.join("cam-sub.txt");
    let cam_sub = spawn_in_ns(
        &lab.cam,
        SUB,
        &[
            "-h",
            &lab.broker_ip,
            "-p",
            "1883",
            "-V",
            "mqttv5",
            "-i",
            "cam-1",
            "-t",
            "cmd/cams/1",
            "-C",
            "1",
            "-v",
        ],
        &got,
    );
    std::thread::sleep(Duration::from_millis(800));
    let o = in_ns(
        &lab.broker,
        5,
        PUB,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-t",
            "cmd/cams/1",
            "-m",
            "reboot",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = Instant::now();
    while !std::fs::read_to_string(&got)
        .unwrap_or_default()
        .contains("cmd/cams/1 reboot")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the camera's command did not arrive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(cam_sub);
    // `#`: the SUBSCRIBE never reaches the broker, so nothing published
    // afterwards reaches this client.
    let wide = dir.join("cam-sub-all.txt");
    let all_sub = spawn_in_ns(
        &lab.cam,
        SUB,
        &[
            "-h",
            &lab.broker_ip,
            "-p",
            "1883",
            "-V",
            "mqttv5",
            "-i",
            "cam-1",
            "-t",
            "#",
            "-v",
        ],
        &wide,
    );
    std::thread::sleep(Duration::from_millis(800));
    let o = in_ns(
        &lab.broker,
        5,
        PUB,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-t",
            "secret/plans",
            "-m",
            "leak",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(800));
    drop(all_sub);
    let wide = std::fs::read_to_string(&wide).unwrap_or_default();
    assert!(
        !wide.contains("leak"),
        "a refused subscription got messages: {wide}"
    );

    // paho-mqtt, both versions: the allowed topic is acknowledged, the
    // other camera's is refused (5.0: DISCONNECT with reason 135, 0x87).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mqtt/paho_client.py");
    for version in ["5", "311"] {
        let id = format!("cam-paho{version}");
        let mine = format!("cams/{id}/reading");
        let o = in_ns(
            &lab.cam,
            15,
            PYTHON,
            &[
                script.to_str().unwrap(),
                &lab.broker_ip,
                "1883",
                version,
                &id,
                &mine,
                "cams/cam-9/reading",
            ],
        );
        let out = text(&o);
        assert!(out.contains("connack 0"), "paho {version}: {out}");
        assert!(
            out.contains(&format!("puback {mine}")),
            "paho {version}: {out}"
        );
        assert!(!out.contains("puback cams/cam-9"), "paho {version}: {out}");
        assert!(out.contains("disconnect"), "paho {version}: {out}");
        if version == "5" {
            assert!(out.contains("disconnect 135"), "paho 5 is told why: {out}");
        }
        assert!(lab.arrived(&format!("{mine} from-paho"), Duration::from_secs(5)));
    }

    // Nothing refused ever reached the broker.
    std::thread::sleep(Duration::from_millis(500));
    let seen = lab.seen();
    for refused in [
        "no-other-cam",
        "no-humidity",
        "no-id",
        "no-id-5",
        "no-qos2",
        "cams/cam-9",
    ] {
        assert!(
            !seen.contains(refused),
            "{refused} reached the broker:\n{seen}"
        );
    }

    // The refusals are flow events with the packet and its topic.
    let flows = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["flows", "--socket"])
        .arg(&socket)
        .args(["-o", "json", "-n", "1000", "--verdict", "DROPPED"])
        .output()
        .expect("porin flows");
    let flows = String::from_utf8_lossy(&flows.stdout);
    let denied: Vec<&str> = flows
        .lines()
        .filter(|l| l.contains("\"L7_MQTT\"") && l.contains("MQTT_DENIED"))
        .collect();
    assert!(
        denied
            .iter()
            .any(|l| l.contains("cams/cam-2/status") && l.contains("PUBLISH")),
        "{flows}"
    );
    assert!(
        denied
            .iter()
            .any(|l| l.contains("\"client_id\":\"intruder\"")),
        "{flows}"
    );
    assert!(
        denied
            .iter()
            .any(|l| l.contains("SUBSCRIBE") && l.contains("\"topic\":\"#\"")),
        "{flows}"
    );
    assert!(daemon.stop(), "the daemon stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
