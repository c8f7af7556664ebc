//! Real HTTP clients through Porin's HTTP rules, end to end: `porin run` in
//! enforce mode, a server container (`web`) whose port is opened to a client
//! container (`cli`) for `GET /metrics` and `GET /` only, and Debian's own
//! programs as the clients: Prometheus scraping, headless Chromium, curl
//! (also two URLs on one keep-alive connection), Python's `http.client` on a
//! persistent connection, raw pipelined and oddly split request streams, and
//! a ~6 KiB request head (a long bearer token and cookies) written at once.
//!
//! The test image is busybox only, so the server (a keep-alive Python
//! `http.server`, `tests/fixtures/http_clients/server.py`) and every client
//! run from the host inside the containers' network namespaces
//! (`nsenter -t PID -n`): their traffic leaves through the containers'
//! veths, where Porin judges it. The server logs every chunk of bytes it
//! receives and every request head it parses, so each test asserts both
//! what the client got and that no forbidden request ever reached the
//! server. Without Porin (the baseline each test checks first) the server
//! answers `/admin` too, with metrics a scrape would accept.
//!
//! Needs root, podman and the client programs (`.ci/setup` installs
//! `prometheus`, `chromium`, `python3` and `curl`); a missing one fails the
//! test with that message instead of skipping it.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::{Daemon, Exclusive},
    podman::{PodmanContainer, Spec},
    require_root,
};

const PYTHON: &str = "/usr/bin/python3";
const CURL: &str = "/usr/bin/curl";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Porin's answer to a denied request.
const DENIED: &str = "HTTP/1.1 403 Forbidden";
const DENIED_BODY: &str = "Denied by Porin";
/// What the server's `/metrics` and `/admin` bodies contain.
const METRICS_BODY: &str = "hcl_metrics_up 1";
const ADMIN_BODY: &str = "hcl_admin_secret 42";
const PAGE_MARKER: &str = "hcl-allowed-page";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/http_clients")
        .join(name)
}

/// Fails loudly when a client program is missing: the test is never
/// reported as passed without running it.
fn require_program(path: &str, package: &str) {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: install the Debian package `{package}` (run .ci/setup, \
         which installs every client these tests use); refusing to skip the test"
    );
}

/// Kills (SIGKILL) and reaps a process this test started, by its PID, on
/// drop.
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

/// What the server logged: bytes per connection (as received) and the
/// request lines of the heads it parsed, per connection.
#[derive(Debug, Default)]
struct ServerLog {
    bytes: BTreeMap<u32, Vec<u8>>,
    requests: Vec<(u32, String)>,
}

impl ServerLog {
    fn parse(text: &str) -> Self {
        let mut log = ServerLog::default();
        for line in text.lines() {
            let mut f = line.splitn(3, ' ');
            match (f.next(), f.next(), f.next()) {
                (Some("chunk"), Some(conn), Some(hex)) => {
                    let conn = conn.parse().expect("connection id");
                    log.bytes.entry(conn).or_default().extend(unhex(hex));
                }
                (Some("req"), Some(conn), Some(req)) => {
                    log.requests
                        .push((conn.parse().expect("connection id"), req.to_owned()));
                }
                _ => {}
            }
        }
        log
    }

    /// The part of the log about connections after `mark` (a connection id
    /// from [`ServerLog::last_conn`]).
    fn since(mut self, mark: u32) -> Self {
        self.bytes.retain(|c, _| *c > mark);
        self.requests.retain(|(c, _)| *c > mark);
        self
    }

    fn last_conn(&self) -> u32 {
        let b = self.bytes.keys().next_back().copied().unwrap_or(0);
        let r = self.requests.iter().map(|(c, _)| *c).max().unwrap_or(0);
        b.max(r)
    }

    fn request_lines(&self) -> Vec<&str> {
        self.requests.iter().map(|(_, r)| r.as_str()).collect()
    }

    /// How many heads with this request line the server parsed.
    fn count(&self, request_line: &str) -> usize {
        self.requests
            .iter()
            .filter(|(_, r)| r == request_line)
            .count()
    }

    /// Every connection's bytes, readable, for failure messages.
    fn dump(&self) -> String {
        let mut s = String::new();
        for (c, b) in &self.bytes {
            s.push_str(&format!("  conn {c}: {:?}\n", String::from_utf8_lossy(b)));
        }
        s.push_str(&format!("  parsed heads: {:?}", self.requests));
        s
    }

    /// Asserts that the server never parsed a head for `path` and that no
    /// connection's byte stream holds `needle` (e.g. `/admin`, or a
    /// forbidden head in full).
    fn assert_never_reached(&self, path: &str, needle: &[u8], what: &str) {
        assert!(
            !self
                .requests
                .iter()
                .any(|(_, r)| r.split(' ').nth(1) == Some(path)),
            "{what}: the server parsed a request for {path}:\n{}",
            self.dump()
        );
        assert!(
            !self
                .bytes
                .values()
                .any(|b| b.windows(needle.len()).any(|w| w == needle)),
            "{what}: {:?} reached the server:\n{}",
            String::from_utf8_lossy(needle),
            self.dump()
        );
    }
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A server container with the logging HTTP server in its netns, a client
/// container, and `porin run` enforcing the policy between them. Fields
/// drop in order: the server, the daemon, the containers, the directory,
/// the lock.
struct Setup {
    _server: Proc,
    daemon: Option<Daemon>,
    cli: PodmanContainer,
    web: PodmanContainer,
    web_ip: Ipv4Addr,
    port: u16,
    log_path: PathBuf,
    /// The last connection of the baseline: [`Setup::server_log`] starts
    /// after it.
    baseline: u32,
    dir: TestDir,
    /// Held from the baseline on: another test's daemon would judge these
    /// containers by its own policy meanwhile.
    _exclusive: Exclusive,
}

impl Setup {
    /// Containers `porin-t-hcl-<tag>-web` / `-cli` (labels
    /// `porin-hcl-<tag>: web|cli`), the server on `port`, the baseline
    /// (without Porin the server answers `GET /admin`), then the daemon.
    fn start(tag: &str, port: u16) -> Setup {
        require_root("real HTTP clients end-to-end test");
        require_program(PYTHON, "python3");
        require_program(CURL, "curl");
        let exclusive = Exclusive::acquire();
        let label = format!("porin-hcl-{tag}");
        let web = PodmanContainer::run(
            &format!("hcl-{tag}-web"),
            &Spec {
                labels: &[(label.as_str(), "web")],
                ..Default::default()
            },
        );
        let cli = PodmanContainer::run(
            &format!("hcl-{tag}-cli"),
            &Spec {
                labels: &[(label.as_str(), "cli")],
                ..Default::default()
            },
        );
        let web_ip = web.ipv4().expect("web has an address");
        assert_eq!(web_ip.octets()[..2], [10, 88], "only Podman's bridge");
        let dir = TestDir::new(&format!("porin-t-hcl-{tag}-{}", std::process::id()));
        let log_path = dir.join("server.log");
        let child = Command::new("nsenter")
            .args(["-t", &web.pid().to_string(), "-n", PYTHON, "-u"])
            .arg(fixture("server.py"))
            .args(["0.0.0.0", &port.to_string()])
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server (nsenter python3)");
        let server = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log_path).is_ok_and(|l| l.starts_with("listening")) {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut s = Setup {
            _server: server,
            daemon: None,
            cli,
            web,
            web_ip,
            port,
            log_path,
            baseline: 0,
            dir,
            _exclusive: exclusive,
        };

        // Baseline: without Porin the forbidden path is served.
        let out = s.curl(&["-sS", &s.url("/admin")]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(ADMIN_BODY),
            "baseline: the server answers GET /admin without Porin: {}",
            show(&out)
        );
        s.baseline = s.server_log().last_conn();
        assert!(s.baseline > 0, "the baseline request was logged");

        let config = s.dir.join("porin.yaml");
        std::fs::write(&config, s.config(&label)).unwrap();
        let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
        let mut missing = vec![s.web.name.clone(), s.cli.name.clone()];
        while !missing.is_empty() {
            let line = daemon.wait_for(
                |l| l.contains("endpoint +") && l.contains("porin-t-hcl-"),
                Duration::from_secs(20),
            );
            missing.retain(|n| !line.contains(&format!("{n} ")));
        }
        daemon.wait_for(
            |l| l.contains("endpoints enforced") && !l.contains("FAILED"),
            Duration::from_secs(20),
        );
        s.daemon = Some(daemon);
        s
    }

    fn config(&self, label: &str) -> String {
        format!(
            r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  # No gate: other containers on the host are left alone.
  unknown_workloads: allow
groups:
  - name: web
    select:
      labels: {{{label}: web}}
  - name: cli
    select:
      labels: {{{label}: cli}}
ground_rules:
  internet_egress: deny
  same_group: allow
  cross_group: deny
  host_ingress: deny
  host_egress: deny
policies:
  - name: scrape-and-browse
    from: [cli]
    to: [web]
    protocol: tcp
    ports: [{port}]
    http:
      - method: GET
        path: /metrics
      - method: GET
        path: /
control:
  socket: {socket}
"#,
            port = self.port,
            socket = self.dir.join("porin.sock").display(),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.web_ip, self.port)
    }

    /// Runs `program args` in the client container's network namespace,
    /// ended after `timeout_s` seconds.
    fn in_cli(&self, timeout_s: u32, program: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.cli.pid().to_string(), "-n"])
            .args(["timeout", &timeout_s.to_string(), program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {program}: {e}"))
    }

    fn curl(&self, args: &[&str]) -> Output {
        self.in_cli(15, CURL, args)
    }

    /// What the server logged since the baseline (with the daemon on).
    fn server_log(&self) -> ServerLog {
        ServerLog::parse(&std::fs::read_to_string(&self.log_path).expect("server log"))
            .since(self.baseline)
    }

    /// The daemon's last 200 flow events (JSON lines), for failure
    /// messages.
    fn flows(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_porin"))
            .args(["flows", "--socket"])
            .arg(self.dir.join("porin.sock"))
            .args(["-n", "200", "-o", "json"])
            .output()
            .expect("porin flows");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `chunks` on one connection from the client's netns, each in
    /// one write, 0.3 s apart (`rawclient.py`); returns what came back and
    /// how the connection ended.
    fn raw(&self, chunks: &[&[u8]]) -> (String, String) {
        let mut args = vec![
            fixture("rawclient.py").display().to_string(),
            self.web_ip.to_string(),
            self.port.to_string(),
        ];
        args.extend(chunks.iter().map(|c| hex(c)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.in_cli(15, PYTHON, &args);
        assert!(out.status.success(), "rawclient.py: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (got, end) = text
            .rsplit_once("\n#END ")
            .unwrap_or_else(|| panic!("rawclient.py output: {text:?}"));
        (got.to_owned(), end.trim().to_owned())
    }

    /// Stops the daemon (asserting a clean exit) and removes the test's
    /// directory.
    fn finish(mut self) {
        let daemon = self.daemon.take().expect("daemon");
        assert!(daemon.stop(), "daemon stops cleanly");
    }
}

/// A test's directory under the temp dir (config, logs, Prometheus's
/// data, Chromium's profile), removed on drop; kept when the test fails.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for the failure: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The daemon's `L7_HTTP` flow events, one short line each (verdict, drop
/// reason, bytes of the packet, method and path), for failure messages.
fn http_events(s: &Setup) -> String {
    // Give the daemon a moment to read the events' ring buffer.
    std::thread::sleep(Duration::from_secs(1));
    s.flows()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event_type"] == "L7_HTTP")
        .map(|e| {
            format!(
                "  {} {} {} bytes {} {} ({})",
                e["verdict"].as_str().unwrap_or("?"),
                e["drop_reason_desc"].as_str().unwrap_or("-"),
                e["bytes"],
                e["l7_http"]["method"].as_str().unwrap_or("?"),
                e["l7_http"]["url"].as_str().unwrap_or("?"),
                e["traffic_direction"].as_str().unwrap_or("?"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn show(out: &Output) -> String {
    format!(
        "{}; stdout: {:?}; stderr: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Prometheus (Debian's 2.42) scrapes `/metrics` through the rule every
/// second; a second job scraping `/admin` from the same target fails (403)
/// and that request never reaches the server.
#[test]
fn prometheus_scrapes_the_allowed_path_and_fails_the_forbidden_one() {
    require_program(PROMETHEUS, "prometheus");
    let s = Setup::start("prom", 18561);
    let target = format!("{}:{}", s.web_ip, s.port);
    let prom_dir = s.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let yml = prom_dir.join("prometheus.yml");
    std::fs::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: allowed\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{target}']\n\
             \x20 - job_name: forbidden\n    metrics_path: /admin\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let api = "127.0.0.1:18562";
    let prom_log = prom_dir.join("log");
    let child = Command::new("nsenter")
        .args(["-t", &s.cli.pid().to_string(), "-n", PROMETHEUS])
        .arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={api}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&prom_log).unwrap())
        .spawn()
        .expect("start prometheus");
    let prom = Proc(child);

    // Its targets API on loopback (in the client's netns): both targets
    // scraped at least once, `allowed` up and `forbidden` down.
    let targets = |s: &Setup| -> Vec<serde_json::Value> {
        let out = s.curl(&["-sS", &format!("http://{api}/api/v1/targets")]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
    };
    let health = |ts: &[serde_json::Value], job: &str| -> (String, String) {
        ts.iter()
            .find(|t| t["labels"]["job"] == job)
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or("").to_owned(),
                    t["lastError"].as_str().unwrap_or("").to_owned(),
                )
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let (allowed, forbidden) = loop {
        let ts = targets(&s);
        let (a, f) = (health(&ts, "allowed"), health(&ts, "forbidden"));
        // Two scrapes of each at least (the first may be in flight).
        if a.0 != "unknown" && !a.0.is_empty() && f.0 != "unknown" && !f.0.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
            let ts = targets(&s);
            break (health(&ts, "allowed"), health(&ts, "forbidden"));
        }
        assert!(
            Instant::now() < deadline,
            "prometheus scraped nothing within 40 s: {ts:?}; its log:\n{}",
            std::fs::read_to_string(&prom_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("prometheus: allowed {allowed:?}, forbidden {forbidden:?}");
    assert_eq!(
        allowed.0, "up",
        "the /metrics scrape through the rule succeeds: {allowed:?}"
    );
    assert_eq!(
        forbidden.0, "down",
        "the /admin scrape is refused: {forbidden:?}"
    );
    assert!(
        forbidden.1.contains("403") || forbidden.1.contains("reset"),
        "the /admin scrape fails with Porin's 403 (or a reset): {forbidden:?}"
    );
    // The scraped samples: the allowed job's series is stored, the
    // forbidden one's never.
    let query = |q: &str| -> String {
        let out = s.curl(&["-sS", &format!("http://{api}/api/v1/query?query={q}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let up = query("hcl_metrics_up");
    assert!(
        up.contains(r#""job":"allowed""#),
        "the allowed scrape's samples are stored: {up}"
    );
    let secret = query("hcl_admin_secret");
    assert!(
        secret.contains(r#""result":[]"#),
        "nothing scraped from /admin: {secret}"
    );
    drop(prom);

    let log = s.server_log();
    assert!(
        log.count("GET /metrics HTTP/1.1") >= 2,
        "Prometheus's scrapes reached the server: {:?}",
        log.request_lines()
    );
    log.assert_never_reached("/admin", b"/admin", "Prometheus");
    s.finish();
}

/// Headless Chromium loads the allowed page (its DOM is dumped) and not the
/// forbidden one (it gets Porin's 403 page; the server never sees it).
#[test]
fn chromium_loads_the_allowed_page_and_not_the_forbidden_one() {
    require_program(CHROMIUM, "chromium");
    let s = Setup::start("chr", 18571);
    let profile = s.dir.join("chromium");
    let chromium = |url: &str| -> Output {
        let started = Instant::now();
        let out = s.in_cli(
            90,
            CHROMIUM,
            &[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.display()),
                "--dump-dom",
                url,
            ],
        );
        eprintln!("chromium {url}: {:?}", started.elapsed());
        out
    };

    let out = chromium(&s.url("/"));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains(PAGE_MARKER),
        "the allowed page's DOM: {}",
        show(&out)
    );
    let log = s.server_log();
    assert_eq!(
        log.count("GET / HTTP/1.1"),
        1,
        "chromium's request reached the server: {:?}",
        log.request_lines()
    );
    let mark = log.last_conn();

    let out = chromium(&s.url("/admin"));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        !dom.contains(ADMIN_BODY),
        "the forbidden page's content must not load: {}",
        show(&out)
    );
    assert!(
        dom.contains(DENIED_BODY),
        "chromium shows Porin's 403 body: {}",
        show(&out)
    );
    s.server_log()
        .since(mark)
        .assert_never_reached("/admin", b"/admin", "chromium");
    s.finish();
}

/// curl, one request per connection and then two URLs on one keep-alive
/// connection: the first (allowed) is served, the second (forbidden) gets
/// the 403 on the same connection and never reaches the server.
#[test]
fn curl_is_served_when_allowed_and_refused_on_a_kept_alive_connection() {
    let s = Setup::start("curl", 18581);
    let fmt = "\n@STAT %{http_code} %{num_connects} %{local_port}\n";

    let out = s.curl(&["-sS", "-w", fmt, &s.url("/metrics")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(METRICS_BODY) && text.contains("@STAT 200 1 "),
        "curl GET /metrics is served: {}",
        show(&out)
    );
    let mark = s.server_log().last_conn();
    let out = s.curl(&["-sS", "-w", fmt, &s.url("/admin")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(DENIED_BODY) && text.contains("@STAT 403 1 "),
        "curl GET /admin gets Porin's 403: {}",
        show(&out)
    );
    s.server_log()
        .since(mark)
        .assert_never_reached("/admin", b"/admin", "curl");

    // Two URLs, one connection.
    let mark = s.server_log().last_conn();
    let out = s.curl(&[
        "-sS",
        "-v",
        "--http1.1",
        "-H",
        "Connection: keep-alive",
        "-w",
        fmt,
        &s.url("/metrics"),
        &s.url("/admin"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let stats: Vec<&str> = text.lines().filter(|l| l.starts_with("@STAT ")).collect();
    assert_eq!(stats.len(), 2, "two transfers: {}", show(&out));
    let port = |l: &str| l.rsplit(' ').next().unwrap_or("").to_owned();
    assert!(
        stats[0].starts_with("@STAT 200 1 ") && stats[1].starts_with("@STAT 403 0 "),
        "the first served (one connect), the second refused on the same \
         connection (no new connect): {stats:?}; {}",
        show(&out)
    );
    assert_eq!(port(stats[0]), port(stats[1]), "one connection: {stats:?}");
    assert!(
        text.contains(METRICS_BODY) && text.contains(DENIED_BODY),
        "{}",
        show(&out)
    );
    let log = s.server_log().since(mark);
    assert_eq!(
        log.request_lines(),
        ["GET /metrics HTTP/1.1"],
        "only the allowed request reached the server: {}",
        log.dump()
    );
    assert_eq!(log.bytes.len(), 1, "one connection: {}", log.dump());
    log.assert_never_reached("/admin", b"/admin", "curl keep-alive");
    s.finish();
}

/// Python's `http.client` keeps one connection for several allowed
/// requests; the forbidden one on it gets the 403 (which closes it), and
/// the client's next request is served on a new connection.
#[test]
fn python_http_client_keeps_one_connection_and_is_refused_the_forbidden_request() {
    let s = Setup::start("py", 18591);
    let client = fixture("keepalive_client.py").display().to_string();
    let (ip, port) = (s.web_ip.to_string(), s.port.to_string());
    let out = s.in_cli(
        30,
        PYTHON,
        &[
            &client, &ip, &port, "/metrics", "/metrics", "/metrics", "/admin", "/metrics",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}");
    // PATH LOCALPORT STATUS BODY
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.splitn(4, ' ').collect::<Vec<_>>())
        .collect();
    assert_eq!(rows.len(), 5, "five requests: {}", show(&out));
    for r in &rows[..3] {
        assert!(
            r[2] == "200" && r[3].contains(METRICS_BODY),
            "GET /metrics is served: {text}"
        );
    }
    assert!(
        rows[3][2] == "403" && rows[3][3].contains(DENIED_BODY),
        "GET /admin gets Porin's 403: {text}"
    );
    let local: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    assert!(
        local[..4].iter().all(|p| *p == local[0]),
        "the first four requests share one connection: {text}"
    );
    assert!(
        rows[4][2] == "200" && local[4] != local[0],
        "after the 403 closed it, a new connection is served: {text}"
    );
    let log = s.server_log();
    assert_eq!(
        log.count("GET /metrics HTTP/1.1"),
        4,
        "the four allowed requests reached the server: {}",
        log.dump()
    );
    let conns: Vec<u32> = log.requests.iter().map(|(c, _)| *c).collect();
    assert!(
        conns[..3].iter().all(|c| *c == conns[0]) && conns[3] != conns[0],
        "three on the first connection, one on a second: {}",
        log.dump()
    );
    log.assert_never_reached("/admin", b"/admin", "http.client");
    s.finish();
}

/// Pipelined requests in one write, and request streams split in odd
/// places, from a raw client: every forbidden request is refused and the
/// server never receives its complete head (so never parses it); allowed
/// requests before it in earlier segments are served.
#[test]
fn pipelined_and_oddly_split_requests_never_deliver_a_forbidden_head() {
    let s = Setup::start("pipe", 18601);
    const OK: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: web\r\n\r\n";
    const BAD: &[u8] = b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n";
    let cat = |parts: &[&[u8]]| -> Vec<u8> { parts.concat() };

    struct Case {
        name: &'static str,
        chunks: Vec<Vec<u8>>,
        /// The allowed request is served before the 403.
        served_first: bool,
        /// No byte of the forbidden head's path reaches the server (false
        /// where the split leaves part of the forbidden head in an earlier,
        /// incomplete segment: such bytes pass, but never the whole head).
        no_admin_bytes: bool,
    }
    let cases = [
        Case {
            name: "allowed + forbidden pipelined in one write",
            chunks: vec![cat(&[OK, BAD])],
            served_first: false,
            no_admin_bytes: true,
        },
        Case {
            name: "forbidden + allowed pipelined in one write",
            chunks: vec![cat(&[BAD, OK])],
            served_first: false,
            no_admin_bytes: true,
        },
        Case {
            name: "split inside the forbidden path (GET /ad|min)",
            chunks: vec![
                cat(&[OK, b"GET /ad"]),
                b"min HTTP/1.1\r\nHost: web\r\n\r\n".to_vec(),
            ],
            served_first: true,
            no_admin_bytes: true,
        },
        Case {
            name: "split after the forbidden method's first byte (G|ET /admin)",
            chunks: vec![cat(&[OK, b"G"]), BAD[1..].to_vec()],
            served_first: true,
            no_admin_bytes: true,
        },
        Case {
            name: "split inside the allowed head's final CRLF (\\r|\\n + forbidden)",
            chunks: vec![OK[..OK.len() - 1].to_vec(), cat(&[b"\n", BAD])],
            served_first: false,
            no_admin_bytes: true,
        },
        Case {
            name: "split inside the forbidden head's final CRLF (... \\r|\\n)",
            chunks: vec![cat(&[OK, &BAD[..BAD.len() - 1]]), b"\n".to_vec()],
            served_first: true,
            no_admin_bytes: false,
        },
        Case {
            name: "forbidden head in four pieces (GET /a|dmin HT|TP/1.1...|\\n)",
            chunks: vec![
                cat(&[OK, b"GET /a"]),
                b"dmin HT".to_vec(),
                b"TP/1.1\r\nHost: web\r\n\r".to_vec(),
                b"\n".to_vec(),
            ],
            served_first: true,
            no_admin_bytes: false,
        },
    ];
    for case in &cases {
        let mark = s.server_log().last_conn();
        let chunks: Vec<&[u8]> = case.chunks.iter().map(Vec::as_slice).collect();
        let (got, end) = s.raw(&chunks);
        eprintln!("{}: {end}: {got:?}", case.name);
        assert!(
            got.contains(DENIED) && got.contains(DENIED_BODY),
            "{}: the client gets Porin's 403: {got:?} ({end})",
            case.name
        );
        assert!(
            !got.contains(ADMIN_BODY),
            "{}: /admin was served: {got:?}",
            case.name
        );
        if case.served_first {
            assert!(
                got.starts_with("HTTP/1.1 200 OK") && got.contains(METRICS_BODY),
                "{}: the allowed request in the earlier segment is served: {got:?}",
                case.name
            );
        }
        // Let the server log what it received.
        std::thread::sleep(Duration::from_millis(200));
        let log = s.server_log().since(mark);
        log.assert_never_reached("/admin", BAD, case.name);
        if case.no_admin_bytes {
            log.assert_never_reached("/admin", b"/admin", case.name);
        }
        if case.served_first {
            assert_eq!(
                log.request_lines(),
                ["GET /metrics HTTP/1.1"],
                "{}: {}",
                case.name,
                log.dump()
            );
        }
    }
    s.finish();
}

/// A ~6 KiB request head (a JWT-like bearer token and cookies) that curl
/// writes at once: allowed, it is served; to a forbidden path, refused.
/// curl's single write leaves the client's veth as one ~6.3 KiB GSO
/// packet: the stage skips the token's and cookies' values (no rule reads
/// them) 1 KiB per tail call (README "How").
#[test]
fn a_six_kib_request_head_written_at_once_is_judged() {
    let s = Setup::start("big", 18611);
    // A JWT-like token: base64url header.payload.signature, ~6 KiB.
    let b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let filler = |n: usize, seed: usize| -> String {
        (0..n)
            .map(|i| b64.as_bytes()[(i * 7 + seed * 13 + i / 5) % 64] as char)
            .collect()
    };
    let token = format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}",
        filler(5400, 1),
        filler(342, 2)
    );
    let cookie = format!(
        "session={}; theme=dark; csrf={}",
        filler(300, 3),
        filler(64, 4)
    );
    let auth = format!("Authorization: Bearer {token}");
    let cookie = format!("Cookie: {cookie}");
    let fmt = "\n@STAT %{http_code} %{size_request}\n";
    let get = |path: &str| -> (Output, String) {
        let out = s.curl(&["-sS", "-H", &auth, "-H", &cookie, "-w", fmt, &s.url(path)]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out, text)
    };

    let (out, text) = get("/metrics");
    let stats = text.lines().last().unwrap_or("");
    eprintln!("6 KiB head: {stats}");
    let head_bytes: usize = stats
        .split(' ')
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(head_bytes > 6000, "a head over 6000 bytes: {stats}");
    assert!(
        text.contains(METRICS_BODY) && stats.starts_with("@STAT 200 "),
        "an allowed request with a {head_bytes}-byte head is served: {}; Porin's HTTP events:\n{}",
        show(&out),
        http_events(&s)
    );
    let log = s.server_log();
    assert_eq!(log.count("GET /metrics HTTP/1.1"), 1, "{}", log.dump());
    let mark = log.last_conn();

    let (out, text) = get("/admin");
    assert!(
        text.contains(DENIED_BODY) && text.contains("@STAT 403 "),
        "a forbidden request with a long head gets the 403: {}",
        show(&out)
    );
    s.server_log()
        .since(mark)
        .assert_never_reached("/admin", b"/admin", "6 KiB head");
    s.finish();
}
