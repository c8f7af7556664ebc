//! Revocation with a real `porin run` and real Podman containers (issue
//! 16): a keep-alive connection allowed by a rule sends a request every
//! 0.25 s; `porin reload` with the rule removed ends it within 1 s, both
//! ends see a reset, and a new connection on the same 4-tuple is judged
//! afresh (denied while the rule is gone, allowed once it is back). Also
//! the per-container shares: of conntrack entries (a UDP flood) and of
//! HTTP-ruled connections.
//!
//! Both ends are the host's `python3` (`tests/fixtures/revoke_peer.py`)
//! run in the containers' network namespaces (`nsenter -t PID -n`): their
//! traffic crosses the containers' veths. Needs root, podman and python3.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use porin::testing::{
    daemon::{Daemon, Exclusive},
    podman::{PodmanContainer, Spec},
    require_root,
};

const PYTHON: &str = "/usr/bin/python3";
const PORT: u16 = 9000;
/// The client's fixed source port, reused after the revocation.
const SPORT: u16 = 41234;

fn config(socket: &Path, bpffs: &Path, with_rule: bool) -> String {
    let policy = if with_rule {
        format!(
            "policies:
  - name: cli-to-srv
    from: [ct-cli]
    to: [ct-srv]
    protocol: tcp
    ports: [{PORT}]
"
        )
    } else {
        "policies: []\n".into()
    };
    format!(
        "version: 1
enforcement:
  mode: enforce
  unknown_workloads: allow
bpffs: {bpffs}
control:
  socket: {socket}
groups:
  - name: ct-srv
    select:
      labels: {{porin-ct: srv}}
  - name: ct-cli
    select:
      labels: {{porin-ct: cli}}
ground_rules:
  same_group: allow
  cross_group: deny
{policy}",
        bpffs = bpffs.display(),
        socket = socket.display(),
    )
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

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

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `revoke_peer.py ROLE ARGS` in `pid`'s network namespace.
fn peer(pid: u32, role: &str, args: &[&str]) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/revoke_peer.py");
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", PYTHON, "-u"])
        .arg(script)
        .arg(role)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nsenter python3")
}

/// The log's lines as (event, unix ns, rest).
fn events(path: &Path) -> Vec<(String, u128, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut w = l.split(' ');
            let what = w.next().unwrap_or("").to_string();
            let at = w.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            (what, at, w.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reload(sock: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["reload", "--socket", sock])
        .output()
        .expect("porin reload")
}

#[test]
fn a_reload_that_removes_the_rule_ends_the_connection_within_a_second() {
    require_root("live revocation test");
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing (Debian package python3; .ci/setup installs it)"
    );
    let _exclusive = Exclusive::acquire();
    let dir = Dir(std::env::temp_dir().join(format!("porin-t-ct-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let socket = dir.0.join("run/porin.sock");
    let sock = socket.to_str().unwrap();
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/porin-t-ct-{}", std::process::id()));
    let config_file = dir.0.join("porin.yaml");
    std::fs::write(&config_file, config(&socket, &bpffs, true)).unwrap();

    let srv = PodmanContainer::run(
        "ct-srv",
        &Spec {
            labels: &[("porin-ct", "srv")],
            ..Default::default()
        },
    );
    let cli = PodmanContainer::run(
        "ct-cli",
        &Spec {
            labels: &[("porin-ct", "cli")],
            ..Default::default()
        },
    );
    let srv_ip = srv.ipv4().expect("server address").to_string();
    assert!(
        srv_ip.starts_with("10.88."),
        "only Podman's bridge: {srv_ip}"
    );
    let server_log = dir.0.join("server.log");
    let _server = Proc(peer(
        srv.pid(),
        "server",
        &["0.0.0.0", &PORT.to_string(), server_log.to_str().unwrap()],
    ));
    wait_until("the server", Duration::from_secs(10), || {
        events(&server_log).iter().any(|e| e.0 == "listening")
    });

    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config_file);
    daemon.wait_enforcing(
        &[srv.name.as_str(), cli.name.as_str()],
        Duration::from_secs(20),
    );

    // A keep-alive connection under the rule.
    let client_log = dir.0.join("client.log");
    let sport = SPORT.to_string();
    let mut client = Proc(peer(
        cli.pid(),
        "client",
        &[
            &srv_ip,
            &PORT.to_string(),
            &sport,
            client_log.to_str().unwrap(),
        ],
    ));
    wait_until("8 requests served", Duration::from_secs(10), || {
        events(&client_log)
            .iter()
            .filter(|e| e.0 == "served")
            .count()
            >= 8
    });

    // The rule goes.
    std::fs::write(&config_file, config(&socket, &bpffs, false)).unwrap();
    let out = reload(sock);
    let returned = unix_ns();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "reload: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 connection revoked"), "{stdout}");

    wait_until(
        "the client to see its connection end",
        Duration::from_secs(8),
        || matches!(client.0.try_wait(), Ok(Some(_))),
    );
    let c = events(&client_log);
    let closed = c
        .iter()
        .find(|e| e.0 == "closed")
        .expect("the client's close");
    assert_eq!(
        closed.2, "ConnectionResetError",
        "the client got a RST: {c:?}"
    );
    assert!(
        closed.1 <= returned + 1_000_000_000,
        "the client saw the reset {} ms after reload returned",
        (closed.1 as i128 - returned as i128) / 1_000_000
    );
    eprintln!(
        "revocation: the client saw the reset {} ms after porin reload returned",
        (closed.1 as i128 - returned as i128) / 1_000_000
    );
    let last_served = c
        .iter()
        .filter(|e| e.0 == "served")
        .map(|e| e.1)
        .max()
        .unwrap();
    assert!(
        last_served <= returned + 1_000_000_000,
        "a request was served {} ms after reload returned",
        (last_served - returned) / 1_000_000
    );
    wait_until(
        "the server to see the reset",
        Duration::from_secs(5),
        || events(&server_log).iter().any(|e| e.0 == "closed"),
    );
    let s = events(&server_log);
    let srv_closed = s.iter().find(|e| e.0 == "closed").unwrap();
    assert_eq!(
        srv_closed.2, "ConnectionResetError",
        "the server got a RST: {s:?}"
    );
    assert!(srv_closed.1 <= returned + 1_000_000_000, "{s:?}");
    let srv_last = s
        .iter()
        .filter(|e| e.0 == "served")
        .map(|e| e.1)
        .max()
        .unwrap();
    assert!(
        srv_last <= returned + 1_000_000_000,
        "served after the revocation: {s:?}"
    );

    // The same 4-tuple again: judged afresh, denied without the rule.
    let again_log = dir.0.join("again.log");
    let mut again = Proc(peer(
        cli.pid(),
        "client",
        &[
            &srv_ip,
            &PORT.to_string(),
            &sport,
            again_log.to_str().unwrap(),
        ],
    ));
    let status = again.0.wait().expect("client exits");
    assert_eq!(status.code(), Some(3), "refused: {:?}", events(&again_log));

    // The rule back: the same tuple is allowed again.
    std::fs::write(&config_file, config(&socket, &bpffs, true)).unwrap();
    let out = reload(sock);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let back_log = dir.0.join("back.log");
    let _back = Proc(peer(
        cli.pid(),
        "client",
        &[
            &srv_ip,
            &PORT.to_string(),
            &sport,
            back_log.to_str().unwrap(),
        ],
    ));
    wait_until(
        "served under the rule again",
        Duration::from_secs(10),
        || events(&back_log).iter().filter(|e| e.0 == "served").count() >= 2,
    );
    drop(_back);
    assert!(daemon.stop(), "porin run exits 0");
}

fn flood_config(socket: &Path, bpffs: &Path, quota: u32) -> String {
    format!(
        "version: 1
enforcement:
  mode: enforce
  unknown_workloads: allow
bpffs: {bpffs}
control:
  socket: {socket}
conntrack:
  max_per_endpoint: {quota}
groups:
  - name: ctf-flood
    select:
      labels: {{porin-ctf: flood}}
  - name: ctf-srv
    select:
      labels: {{porin-ctf: srv}}
  - name: ctf-cli
    select:
      labels: {{porin-ctf: cli}}
ground_rules:
  same_group: allow
  cross_group: deny
policies:
  - name: flood-to-host
    from: [ctf-flood]
    to: [host]
    protocol: udp
  - name: cli-to-srv
    from: [ctf-cli]
    to: [ctf-srv]
    protocol: tcp
    ports: [{PORT}]
",
        bpffs = bpffs.display(),
        socket = socket.display(),
    )
}

/// 130,000 UDP flows from one container, each sent twice: it gets its
/// quota of conntrack entries, its other flows are refused as
/// `CONNTRACK_QUOTA` (counted in `porin status`), and an idle connection
/// between two other containers, made before the flood, still works after
/// it, the server speaking first (a push). Without the quota the flood
/// evicts that connection's entries (65,536 IPv4 entries in all) and the
/// server's push is judged as a new flow from the server and denied (a
/// client speaking first would make new entries that admit the answer).
#[test]
fn a_flooding_container_fills_only_its_share() {
    require_root("live conntrack flood test");
    assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing");
    const QUOTA: u32 = 8192;
    let _exclusive = Exclusive::acquire();
    let dir = Dir(std::env::temp_dir().join(format!("porin-t-ctf-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let socket = dir.0.join("run/porin.sock");
    let sock = socket.to_str().unwrap();
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/porin-t-ctf-{}", std::process::id()));
    let config_file = dir.0.join("porin.yaml");
    std::fs::write(&config_file, flood_config(&socket, &bpffs, QUOTA)).unwrap();

    let run = |tag: &str, role: &str| {
        PodmanContainer::run(
            tag,
            &Spec {
                labels: &[("porin-ctf", role)],
                ..Default::default()
            },
        )
    };
    let flooder = run("ctf-flood", "flood");
    let srv = run("ctf-srv", "srv");
    let cli = run("ctf-cli", "cli");
    let srv_ip = srv.ipv4().expect("server address").to_string();
    let gateway = porin::testing::podman::PodmanNetwork::default_network()
        .gateway
        .to_string();
    assert!(
        gateway.starts_with("10.88."),
        "only Podman's bridge: {gateway}"
    );
    let server_log = dir.0.join("server.log");
    let push = dir.0.join("push");
    let _server = Proc(peer(
        srv.pid(),
        "server",
        &[
            "0.0.0.0",
            &PORT.to_string(),
            server_log.to_str().unwrap(),
            push.to_str().unwrap(),
        ],
    ));
    wait_until("the server", Duration::from_secs(10), || {
        events(&server_log).iter().any(|e| e.0 == "listening")
    });
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config_file);
    daemon.wait_enforcing(
        &[flooder.name.as_str(), srv.name.as_str(), cli.name.as_str()],
        Duration::from_secs(20),
    );

    // The neighbours' connection: one exchange, then idle through the flood.
    let client_log = dir.0.join("client.log");
    let mut client = Proc(peer(
        cli.pid(),
        "client",
        &[
            &srv_ip,
            &PORT.to_string(),
            "0",
            client_log.to_str().unwrap(),
            "20",
        ],
    ));
    wait_until("the first exchange", Duration::from_secs(10), || {
        events(&client_log).iter().any(|e| e.0 == "idle")
    });

    let flood_log = dir.0.join("flood.log");
    let mut flood = Proc(peer(
        flooder.pid(),
        "flood",
        &[&gateway, "65000", flood_log.to_str().unwrap()],
    ));
    let status = flood.0.wait().expect("the flood ends");
    assert!(status.success(), "flood: {:?}", events(&flood_log));
    let flooded = events(&flood_log);
    assert_eq!(flooded.first().map(|e| e.1), Some(130_000), "{flooded:?}");

    // The neighbours' idle connection still works, the server first.
    std::fs::write(&push, "").unwrap();
    let status = client.0.wait().expect("the client ends");
    let c = events(&client_log);
    assert!(
        status.success()
            && c.iter().any(|e| e.0 == "pushed")
            && c.iter().filter(|e| e.0 == "served").count() == 2,
        "the idle connection after the flood: the server's push and one more exchange: {c:?}"
    );

    // The flooder got its share; the rest was refused and counted.
    let out = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["status", "--socket", sock, "-o", "json"])
        .output()
        .expect("porin status");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let ct = &s["conntrack"];
    assert_eq!(
        ct["max_per_endpoint"].as_u64(),
        Some(u64::from(QUOTA)),
        "{ct:#}"
    );
    let refused = ct["refused"].as_u64().unwrap_or(0);
    eprintln!("flood: 130000 flows sent twice, {refused} packets refused by the quota");
    assert!(
        refused >= 130_000 - u64::from(QUOTA) - 1000,
        "the flood's excess flows are refused as CONNTRACK_QUOTA: {refused}; {ct:#}"
    );
    let fullest = ct["per_endpoint"][0]["entries"].as_u64().unwrap_or(0);
    assert!(
        fullest <= u64::from(QUOTA),
        "no endpoint beyond its quota: {ct:#}"
    );
    let table = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["status", "--socket", sock])
        .output()
        .expect("porin status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("per-endpoint quota: 8192 entries; packets of new flows refused by it: "),
        "{table}"
    );
    assert!(daemon.stop(), "porin run exits 0");
}

fn http_quota_config(socket: &Path, bpffs: &Path, quota: u32) -> String {
    format!(
        "version: 1
enforcement:
  mode: enforce
  unknown_workloads: allow
bpffs: {bpffs}
control:
  socket: {socket}
conntrack:
  max_http_per_endpoint: {quota}
groups:
  - name: cth-srv
    select:
      labels: {{porin-cth: srv}}
  - name: cth-cli
    select:
      labels: {{porin-cth: cli}}
ground_rules:
  same_group: allow
  cross_group: deny
policies:
  - name: cli-to-srv
    from: [cth-cli]
    to: [cth-srv]
    protocol: tcp
    ports: [{PORT}]
    http:
      - method: GET
        path: /metrics
",
        bpffs = bpffs.display(),
        socket = socket.display(),
    )
}

/// Two clients of one HTTP-ruled server: one holds a keep-alive
/// connection, the other opens 30 with a quota of 10 HTTP-ruled
/// connections per container. The second gets its 10 and no more (the
/// rest refused as `HTTP_QUOTA`, counted in `porin status`); every held
/// connection, the neighbour's included, still carries requests after.
#[test]
fn a_container_gets_only_its_share_of_http_connections() {
    require_root("live HTTP quota test");
    assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing");
    const QUOTA: u32 = 10;
    let _exclusive = Exclusive::acquire();
    let dir = Dir(std::env::temp_dir().join(format!("porin-t-cth-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let socket = dir.0.join("run/porin.sock");
    let sock = socket.to_str().unwrap();
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/porin-t-cth-{}", std::process::id()));
    let config_file = dir.0.join("porin.yaml");
    std::fs::write(&config_file, http_quota_config(&socket, &bpffs, QUOTA)).unwrap();
    let run = |tag: &str, role: &str| {
        PodmanContainer::run(
            tag,
            &Spec {
                labels: &[("porin-cth", role)],
                ..Default::default()
            },
        )
    };
    let srv = run("cth-srv", "srv");
    let neighbour = run("cth-nb", "cli");
    let greedy = run("cth-greedy", "cli");
    let srv_ip = srv.ipv4().expect("server address").to_string();
    let server_log = dir.0.join("server.log");
    let _server = Proc(peer(
        srv.pid(),
        "echo",
        &["0.0.0.0", &PORT.to_string(), server_log.to_str().unwrap()],
    ));
    wait_until("the server", Duration::from_secs(10), || {
        events(&server_log).iter().any(|e| e.0 == "listening")
    });
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config_file);
    daemon.wait_enforcing(
        &[
            srv.name.as_str(),
            neighbour.name.as_str(),
            greedy.name.as_str(),
        ],
        Duration::from_secs(20),
    );
    let go = dir.0.join("go");
    let hold = |c: &PodmanContainer, n: u32, log: &Path| {
        Proc(peer(
            c.pid(),
            "hold",
            &[
                &srv_ip,
                &PORT.to_string(),
                &n.to_string(),
                log.to_str().unwrap(),
                go.to_str().unwrap(),
            ],
        ))
    };
    let count = |log: &Path, what: &str| {
        events(log)
            .iter()
            .find(|e| e.0 == what)
            .map(|e| (e.1, e.2.parse::<u128>().unwrap_or(u128::MAX)))
    };
    let nb_log = dir.0.join("neighbour.log");
    let mut nb = hold(&neighbour, 1, &nb_log);
    wait_until(
        "the neighbour's connection",
        Duration::from_secs(10),
        || count(&nb_log, "held").is_some(),
    );
    assert_eq!(
        count(&nb_log, "held"),
        Some((1, 0)),
        "the neighbour's request"
    );
    let greedy_log = dir.0.join("greedy.log");
    let mut g = hold(&greedy, 30, &greedy_log);
    wait_until(
        "the greedy client's connections",
        Duration::from_secs(60),
        || count(&greedy_log, "held").is_some(),
    );
    let held = count(&greedy_log, "held").unwrap();
    eprintln!("greedy: {} connections held, {} refused", held.0, held.1);
    // The server's veth counts its side of every connection against its
    // own share too (the neighbour's one included): 9 or 10 fit.
    assert!(
        held.0 <= u128::from(QUOTA) && held.0 >= u128::from(QUOTA) - 1 && held.0 + held.1 == 30,
        "the greedy client gets its share and no more: {held:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["status", "--socket", sock, "-o", "json"])
        .output()
        .expect("porin status");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let ct = &s["conntrack"];
    assert_eq!(
        ct["max_http_per_endpoint"].as_u64(),
        Some(u64::from(QUOTA)),
        "{ct:#}"
    );
    let refused = ct["http_refused"].as_u64().unwrap_or(0);
    assert!(
        refused as u128 >= held.1,
        "each refused connection's SYN counted as HTTP_QUOTA: {refused}; {ct:#}"
    );
    let rows = ct["per_endpoint"].as_array().cloned().unwrap_or_default();
    assert!(
        rows.iter()
            .all(|r| r["http"].as_u64().unwrap_or(u64::MAX) <= u64::from(QUOTA)),
        "no endpoint beyond its HTTP quota: {ct:#}"
    );
    let table = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["status", "--socket", sock])
        .output()
        .expect("porin status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!(
            "HTTP quota: {QUOTA} connections; packets of new HTTP-ruled connections refused by it: {refused}"
        )),
        "{table}"
    );

    // Every connection that was let in still carries requests.
    std::fs::write(&go, "").unwrap();
    for (p, log, n) in [(&mut nb, &nb_log, 1), (&mut g, &greedy_log, held.0)] {
        let status = p.0.wait().expect("the client ends");
        assert!(status.success(), "{:?}", events(log));
        assert_eq!(count(log, "again"), Some((n, 0)), "{:?}", events(log));
    }
    assert!(daemon.stop(), "porin run exits 0");
}
