//! The onboarding path end to end with real Podman containers: `porin run`
//! in audit mode while a scripted workload runs (curl GETs and POSTs on
//! several paths, a TCP database port, DNS over UDP, a TCP connection to
//! port 443 of a stand-in for the internet), then `porin policy suggest`,
//! `porin check-config`, `porin policy whatif`, and `porin run` in enforce
//! mode with the suggestion: the same workload passes, an unexpected
//! connection and an unexpected request are refused, and the drop
//! `whatif` predicted before enforcing is the one the kernel makes. Needs
//! root and podman.
//!
//! Other containers may run on the machine: the suggestion used for
//! enforcing is made from the flow log's records between this test's
//! containers and non-containers only (`--log`); the daemon-history path
//! (`-c`) is checked for a valid output.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use porin::testing::{
    daemon::{test_bpffs, BpffsGuard, Daemon},
    podman::{podman, PodmanContainer, Spec},
    require_root,
    world::WorldHost,
};

const PREFIX: &str = "porin-t-sg-";
/// The world host's address is `<podman subnet>.250.57`.
const WORLD_OCTET: u8 = 57;
const WORLD_PORT: u16 = 443;

fn audit_config(dir: &Path, bpffs: &Path) -> String {
    format!(
        r#"version: 1
bpffs: {bpffs}
enforcement:
  mode: audit
  unknown_workloads: allow
# Only to learn HTTP requests: the datapath reports them on ports with
# HTTP rules (one that matches everything).
groups:
  - name: learn-cli
    select: {{labels: {{porin-sg: cli}}}}
  - name: learn-web
    select: {{labels: {{porin-sg: web}}}}
policies:
  - name: learn-http
    from: [learn-cli]
    to: [learn-web]
    ports: [8080]
    http:
      - method: "*"
        path: /*
flows:
  history: 8192
  rate_limit: 20000
  log:
    path: {log}
control:
  socket: {socket}
"#,
        bpffs = bpffs.display(),
        log = dir.join("flows.jsonl").display(),
        socket = dir.join("porin.sock").display(),
    )
}

/// A UDP DNS responder run in a container's network namespace: answers
/// every A question with the world host's address, others with no answer.
const DNS_SERVER: &str = r#"
import socket, sys
ip = bytes(int(x) for x in sys.argv[1].split('.'))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 53))
while True:
    q, a = s.recvfrom(512)
    if len(q) < 17:
        continue
    i = 12
    while i < len(q) and q[i] != 0:
        i += q[i] + 1
    qtype = q[i + 1:i + 3]
    is_a = qtype == b'\x00\x01'
    head = q[:2] + b'\x81\x80' + q[4:6] + (b'\x00\x01' if is_a else b'\x00\x00') + b'\x00\x00\x00\x00'
    answer = b'\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04' + ip if is_a else b''
    s.sendto(head + q[12:i + 5] + answer, a)
"#;

/// A child process ended (by its PID) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Workload<'a> {
    cli: &'a PodmanContainer,
    web: &'a PodmanContainer,
    db: &'a PodmanContainer,
    dns: &'a PodmanContainer,
    world: &'a WorldHost,
}

/// The paths the client asks for, with their methods.
const REQUESTS: &[(&str, &str)] = &[
    ("GET", "/api/v1/readings/123"),
    ("GET", "/api/v1/readings/456"),
    ("GET", "/api/v1/readings/789"),
    ("POST", "/api/v1/readings"),
    ("GET", "/index.html"),
];

impl Workload<'_> {
    fn ip(c: &PodmanContainer) -> String {
        c.ipv4().expect("container address").to_string()
    }

    /// curl in the client's network namespace: the HTTP status, or None
    /// when no answer came.
    fn curl(&self, method: &str, path: &str) -> Option<u16> {
        let url = format!("http://{}:8080{path}", Self::ip(self.web));
        let pid = self.cli.pid().to_string();
        let mut args = vec![
            "-t",
            &pid,
            "-n",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            "-X",
            method,
        ];
        if method == "POST" {
            args.extend(["-d", "t=21.5"]);
        }
        args.push(&url);
        let out = Command::new("nsenter")
            .args(&args)
            .output()
            .expect("nsenter curl");
        let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        (out.status.success() && code != 0).then_some(code)
    }

    /// `nc` to the database port from `from`: true when the server's
    /// greeting arrived.
    fn db_from(&self, from: &PodmanContainer) -> bool {
        let out = podman(&[
            "exec",
            &from.name,
            "nc",
            "-w",
            "3",
            &Self::ip(self.db),
            "5432",
        ]);
        String::from_utf8_lossy(&out.stdout).contains("db-ok")
    }

    fn dns(&self) -> bool {
        let out = podman(&[
            "exec",
            &self.cli.name,
            "timeout",
            "5",
            "busybox",
            "nslookup",
            "-type=a",
            "hub.example",
            &Self::ip(self.dns),
        ]);
        String::from_utf8_lossy(&out.stdout).contains(&self.world.ip.to_string())
    }

    fn outbound(&self) -> bool {
        self.cli
            .http_get(&format!("http://{}:{WORLD_PORT}/", self.world.ip), 3)
    }

    /// Runs everything; returns what failed.
    fn run(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for (m, p) in REQUESTS {
            match self.curl(m, p) {
                Some(code) if code != 403 => {}
                other => failed.push(format!("{m} {p}: {other:?}")),
            }
        }
        if !self.db_from(self.cli) {
            failed.push("cli -> db:5432".into());
        }
        if !self.dns() {
            failed.push("cli -> dns:53 (udp)".into());
        }
        if !self.outbound() {
            failed.push(format!("cli -> world:{WORLD_PORT}"));
        }
        failed
    }
}

fn porin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run porin")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Copies the flow log's records between this test's containers and
/// non-containers, leaving out those `drop` says.
fn filtered(log: &Path, out: &Path, drop: impl Fn(&serde_json::Value) -> bool) -> usize {
    let ours = |side: &serde_json::Value| {
        let name = side["container_name"].as_str().unwrap_or_default();
        name.is_empty() || name.starts_with(PREFIX)
    };
    let mut kept = String::new();
    let mut n = 0;
    for line in std::fs::read_to_string(log).expect("flow log").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
        if ours(&v["source"]) && ours(&v["destination"]) && !drop(&v) {
            kept.push_str(line);
            kept.push('\n');
            n += 1;
        }
    }
    std::fs::write(out, kept).unwrap();
    n
}

#[test]
fn audit_suggest_whatif_enforce_with_real_containers() {
    require_root("policy suggest end-to-end test");
    let web_www = std::env::temp_dir().join("porin-t-sg-www");
    let _ = std::fs::remove_dir_all(&web_www);
    std::fs::create_dir_all(web_www.join("api/v1/readings")).unwrap();
    for f in ["index.html", "api/v1/readings/123", "api/v1/readings/456"] {
        std::fs::write(web_www.join(f), "reading\n").unwrap();
    }
    let mount = format!("{}:/www:ro", web_www.display());
    let web = PodmanContainer::run(
        "sg-web",
        &Spec {
            labels: &[("porin-sg", "web"), ("tier", "front")],
            args: &["-v", &mount],
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
        },
    );
    let db = PodmanContainer::run(
        "sg-db",
        &Spec {
            labels: &[("porin-sg", "db"), ("tier", "back")],
            cmd: &["nc", "-ll", "-p", "5432", "-e", "echo", "db-ok"],
            ..Default::default()
        },
    );
    let dns = PodmanContainer::run(
        "sg-dns",
        &Spec {
            labels: &[("porin-sg", "dns"), ("tier", "back")],
            ..Default::default()
        },
    );
    let cli = PodmanContainer::run(
        "sg-cli",
        &Spec {
            labels: &[("porin-sg", "cli"), ("tier", "front")],
            ..Default::default()
        },
    );
    let world = WorldHost::start("sg", WORLD_OCTET, WORLD_PORT);
    let _dns_server = Proc(
        Command::new("nsenter")
            .args([
                "-t",
                &dns.pid().to_string(),
                "-n",
                "python3",
                "-c",
                DNS_SERVER,
            ])
            .arg(world.ip.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the DNS responder"),
    );
    let names = [&cli.name, &web.name, &db.name, &dns.name].map(String::as_str);
    let w = Workload {
        cli: &cli,
        web: &web,
        db: &db,
        dns: &dns,
        world: &world,
    };

    let dir: PathBuf = std::env::temp_dir().join(format!("porin-t-sg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bpffs = BpffsGuard::new(test_bpffs("suggest-e2e"));
    let audit = dir.join("audit.yaml");
    std::fs::write(&audit, audit_config(&dir, &bpffs.dir)).unwrap();
    let audit_s = audit.to_str().unwrap();

    // 1. Audit mode: the workload, and one connection the operator does
    //    not expect (web -> db), which the suggestion will not be made from.
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &audit);
    daemon.wait_enforcing(&names, Duration::from_secs(30));
    let mut failed = w.run();
    for _ in 0..20 {
        if failed.is_empty() {
            break;
        }
        // The DNS responder may still be starting.
        std::thread::sleep(Duration::from_millis(250));
        failed = w.run();
    }
    assert!(
        failed.is_empty(),
        "audit mode lets everything pass: {failed:?}"
    );
    assert!(w.db_from(&web), "audit mode: web -> db passes");
    std::thread::sleep(Duration::from_millis(500));

    // `suggest` from the daemon's history and flow log: a valid config.
    let from_daemon = porin(&["policy", "suggest", "-c", audit_s]);
    assert!(from_daemon.status.success(), "{}", text(&from_daemon));
    let s = String::from_utf8_lossy(&from_daemon.stdout).into_owned();
    assert!(s.contains("\"porin-sg\": \"web\""), "{s}");
    let daemon_suggestion = dir.join("from-daemon.yaml");
    std::fs::write(&daemon_suggestion, &s).unwrap();
    let check = porin(&["check-config", daemon_suggestion.to_str().unwrap()]);
    assert!(check.status.success(), "{}\n{s}", text(&check));
    assert!(daemon.stop(), "the audit daemon stops cleanly");

    // 2. The suggestion from the test's own records, without web -> db.
    let log = dir.join("flows.jsonl");
    let all = dir.join("ours.jsonl");
    let seen = dir.join("seen.jsonl");
    let is_web_db = |v: &serde_json::Value| {
        let n = |side: &str| {
            v[side]["container_name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let pair = (n("source"), n("destination"));
        pair == (web.name.clone(), db.name.clone()) || pair == (db.name.clone(), web.name.clone())
    };
    let n_all = filtered(&log, &all, |_| false);
    let n_seen = filtered(&log, &seen, is_web_db);
    assert!(
        n_seen < n_all,
        "web -> db was recorded ({n_seen} of {n_all})"
    );
    let out = porin(&[
        "policy",
        "suggest",
        "-c",
        audit_s,
        "--log",
        seen.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let suggestion = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("suggested:\n{suggestion}");
    let file = dir.join("suggested.yaml");
    std::fs::write(&file, &suggestion).unwrap();
    let file_s = file.to_str().unwrap();
    for want in [
        "labels: {\"porin-sg\": \"cli\"}",
        "labels: {\"porin-sg\": \"web\"}",
        "labels: {\"porin-sg\": \"db\"}",
        "labels: {\"porin-sg\": \"dns\"}",
        "from: [cli]\n    to: [db]\n    protocol: tcp\n    ports: [5432]",
        "from: [cli]\n    to: [dns]\n    protocol: udp\n    ports: [53]",
        &format!("cidrs: [\"{}/32\"]", world.ip),
        "protocol: tcp\n    ports: [443]",
        "path: \"/api/v1/readings/*\"   # folded: /api/v1/readings/123, /api/v1/readings/456, /api/v1/readings/789",
        "method: \"POST\"\n        path: \"/api/v1/readings\"",
        "method: \"GET\"\n        path: \"/index.html\"",
    ] {
        assert!(suggestion.contains(want), "missing {want:?} in:\n{suggestion}");
    }
    assert!(!suggestion.contains("to: [learn"), "{suggestion}");

    // 3. check-config accepts it.
    let check = porin(&["check-config", file_s]);
    assert!(check.status.success(), "{}", text(&check));

    // 4. whatif: nothing of what it was made from would be dropped...
    let clean = porin(&["policy", "whatif", file_s, "--log", seen.to_str().unwrap()]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(
        String::from_utf8_lossy(&clean.stdout).contains("would be dropped: 0;"),
        "{}",
        text(&clean)
    );
    // ... and of all records, exactly web -> db would be.
    let predicted = porin(&["policy", "whatif", file_s, "--log", all.to_str().unwrap()]);
    assert_eq!(predicted.status.code(), Some(1), "{}", text(&predicted));
    let p = String::from_utf8_lossy(&predicted.stdout).into_owned();
    let rows: Vec<&str> = p
        .split("WOULD BE DROPPED\n")
        .nth(1)
        .expect("a table of drops")
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 1, "{p}");
    for want in ["group web", "group db", "tcp/5432", "POLICY_DENIED"] {
        assert!(rows[0].contains(want), "{want} in {p}");
    }

    // 5. Enforce mode with the suggestion: the workload passes.
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &file);
    daemon.wait_enforcing(&names, Duration::from_secs(30));
    let failed = w.run();
    assert!(
        failed.is_empty(),
        "enforce mode with the suggestion: {failed:?}\n{suggestion}"
    );

    std::thread::sleep(Duration::from_millis(300));
    let dropped = || {
        let out = porin(&[
            "flows",
            "-c",
            file_s,
            "--verdict",
            "DROPPED",
            "-n",
            "500",
            "-o",
            "json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let of = |records: &str, name: &str| -> Vec<String> {
        records
            .lines()
            .filter(|l| l.contains(&format!("\"container_name\":\"{name}\"")))
            .map(str::to_string)
            .collect()
    };
    let before = dropped();
    assert!(
        of(&before, &cli.name).is_empty(),
        "the workload had drops:\n{before}"
    );

    // 6. The unexpected connection is refused (as whatif predicted), and so
    //    are unexpected requests.
    assert!(!w.db_from(&web), "web -> db is dropped in enforce mode");
    assert_eq!(
        w.curl("GET", "/admin"),
        Some(403),
        "Porin answers an unseen path"
    );
    assert_eq!(w.curl("DELETE", "/api/v1/readings/123"), Some(403));
    std::thread::sleep(Duration::from_millis(300));
    let after = dropped();
    let web_db: Vec<String> = of(&after, &web.name)
        .into_iter()
        .filter(|l| l.contains("\"port\":5432"))
        .collect();
    assert!(
        !web_db.is_empty() && web_db.iter().all(|l| l.contains("POLICY_DENIED")),
        "the kernel dropped web -> db:5432 by policy:\n{after}"
    );
    assert!(daemon.stop(), "the enforcing daemon stops cleanly");
    drop(bpffs);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&web_www).ok();
}
