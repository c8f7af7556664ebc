//! HTTP requests per second from the host to a server container, without
//! Porin, through Porin with L7 rules on the port, and through the peers
//! (L7 proxies enforcing the same rule), in rounds of the same run:
//! `cargo bench --bench http_rps` (as root, needs podman, haproxy, nginx
//! and wrk; `PORIN_BENCH_ROUNDS=N`, default 3; `PORIN_BENCH_SECONDS=S`
//! per window, default 5; `PORIN_BENCH_MODE=connect`, `keepalive` or
//! `both`, the default). Two modes:
//! - `connect`: each request is a new connection (`HTTP/1.0`, like most
//!   scrapers) to a busybox `httpd`: SYN, the request (judged by the HTTP
//!   stage), the response. Connection setup dominates the cost.
//! - `keepalive`: `wrk` with 32 persistent `HTTP/1.1` connections, many
//!   requests each, to `nginx` run in the container's network namespace
//!   (busybox httpd closes after each answer): each request is one segment
//!   judged by the HTTP stage, so its per-request cost shows.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::{Daemon, Exclusive},
    podman::{PodmanContainer, Spec},
    require_root,
};

/// Seconds per measured window: `PORIN_BENCH_SECONDS`, default 5 (longer
/// windows average out more of a shared machine's swings).
fn seconds() -> u64 {
    std::env::var("PORIN_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(5)
}
const CLIENTS: usize = 4;

const CONFIG: &str = r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  unknown_workloads: quarantine
groups:
  - name: web
    select:
      labels: {porin-http-rps: web}
ground_rules:
  host_ingress: deny
policies:
  - name: scrape
    from: [host]
    to: [web]
    protocol: tcp
    ports: [8080]
    http:
      - method: GET
        path: /metrics
"#;

/// One request; the status line's code.
fn request(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    // One write: `write!` would send each piece as its own segment, a
    // split head, which the HTTP stage refuses (see README).
    let req = format!("GET {path} HTTP/1.0\r\nHost: web\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1)?.parse().ok()
}

/// Requests per second with `CLIENTS` threads for [`seconds`].
fn rps(addr: SocketAddr) -> f64 {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..CLIENTS {
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match request(addr, "/metrics") {
                        Some(200) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_secs(seconds()));
        stop.store(true, Ordering::Relaxed);
    });
    let f = failed.load(Ordering::Relaxed);
    assert_eq!(f, 0, "{f} requests failed");
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A new connection per request (`HTTP/1.0`, busybox httpd).
    Connect,
    /// Persistent `HTTP/1.1` connections (`wrk`, nginx).
    KeepAlive,
}

/// Persistent connections in keep-alive mode (wrk's default is 10; 32 as
/// in the issue's measurement).
const KA_CONNECTIONS: usize = 32;
/// Where the proxy peers listen (loopback).
const HAPROXY_PORT: u16 = 18481;
const NGINX_PROXY_PORT: u16 = 18482;

fn main() {
    require_root("the HTTP requests-per-second benchmark");
    let modes: &[Mode] = match std::env::var("PORIN_BENCH_MODE").as_deref() {
        Ok("connect") => &[Mode::Connect],
        Ok("keepalive") => &[Mode::KeepAlive],
        Ok("both") | Err(_) => &[Mode::Connect, Mode::KeepAlive],
        Ok(other) => panic!("PORIN_BENCH_MODE={other}: connect, keepalive or both"),
    };
    // No test daemon of another process may run meanwhile: each one
    // attaches to every container's veth, this bench's too.
    let _exclusive = Exclusive::acquire();
    let rounds: usize = std::env::var("PORIN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut summaries = Vec::new();
    for &mode in modes {
        summaries.push(match mode {
            Mode::Connect => connect_mode(rounds),
            Mode::KeepAlive => keepalive_mode(rounds),
        });
    }
    // Both summaries again at the end, together.
    for s in summaries {
        println!("{s}");
    }
}

/// One path of a round: its label in the summary and how to measure it.
type Measured<'a> = (String, Box<dyn Fn() -> f64 + 'a>);

/// Rounds of every path, each round starting with another path so none
/// always runs first (or last) in the machine's drift. 5 s windows on 2
/// shared cores swing by about 10 % from one to the next, so each figure
/// is the median of the rounds, each ratio the median of the per-round
/// ratios to the first path (a round's paths run minutes apart at most).
/// Returns the summary's lines.
fn run_rounds(name: &str, rounds: usize, paths: &[Measured<'_>]) -> String {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for round in 1..=rounds {
        let mut row = vec![0.0; paths.len()];
        for i in 0..row.len() {
            let p = (i + round - 1) % row.len();
            row[p] = (paths[p].1)();
        }
        let parts: Vec<String> = paths
            .iter()
            .zip(&row)
            .map(|((label, _), r)| format!("{label} {r:.0}"))
            .collect();
        println!("  {name} round {round}: {} requests/s", parts.join(", "));
        rows.push(row);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let width = paths.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (c, (label, _)) in paths.iter().enumerate() {
        let rate = median(rows.iter().map(|r| r[c]).collect());
        let label = format!("{label}:");
        out.push_str(&format!("\n  {label:<width$} {rate:>8.0} requests/s"));
        if c > 0 {
            let ratio = median(rows.iter().map(|r| 100.0 * r[c] / r[0]).collect());
            out.push_str(&format!(" ({ratio:.1} % of without)"));
        }
    }
    out
}

/// The per-connection mode: busybox httpd, `CLIENTS` threads each opening
/// a connection per request. Paths: no policy; Porin with flow events at
/// the default rate limit (10,000/s: each request is a new connection, so
/// a NEW_FLOW and an L7_HTTP event); Porin with events nearly off (the
/// datapath alone); HAProxy with one thread and one per core.
fn connect_mode(rounds: usize) -> String {
    let web = PodmanContainer::run(
        "hrps-web",
        &Spec {
            labels: &[("porin-http-rps", "web")],
            cmd: &[
                "sh",
                "-c",
                "echo metrics-body > /www/metrics; httpd -f -p 8080 -h /www",
            ],
            ..Default::default()
        },
    );
    let ip: Ipv4Addr = web.ipv4().expect("web has an address");
    let addr = SocketAddr::from((ip, 8080));
    std::thread::sleep(Duration::from_millis(500));
    let _ = rps(addr); // warm up
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m = Mode::Connect;
    let paths: Vec<Measured<'_>> = vec![
        ("without Porin".into(), Box::new(move || rps(addr))),
        (
            "through Porin, L7 rules, flow events (default)".into(),
            Box::new(move || through_porin(m, addr, "default")),
        ),
        (
            "through Porin, L7 rules, flow events at 1/s".into(),
            Box::new(move || through_porin(m, addr, "quiet")),
        ),
        (
            "through HAProxy, the same rule, 1 thread".into(),
            Box::new(move || through_haproxy(m, addr, 1)),
        ),
        (
            format!("through HAProxy, the same rule, {cpus} threads"),
            Box::new(move || through_haproxy(m, addr, cpus)),
        ),
    ];
    let lines = run_rounds("connect", rounds, &paths);
    let secs = seconds();
    format!(
        "HTTP/1.0 GET /metrics, a new connection per request, host -> busybox httpd container, \
         {CLIENTS} clients, {secs} s windows, medians of {rounds} rounds:{lines}"
    )
}

/// The keep-alive mode: nginx (one worker, keep-alive without a request
/// limit) in the container's network namespace, `wrk` with
/// `KA_CONNECTIONS` persistent connections from the host. Paths: no
/// policy; Porin with default flow events (only a connection's first
/// request is an event, so they hardly differ here) and at 1/s; Porin
/// with the port allowed by an L4 rule alone (the HTTP stage's share); the peers
/// at their best: HAProxy and nginx as reverse proxies enforcing the same
/// rule, keep-alive on both sides (server connections reused), with one
/// thread or worker and with one per core.
fn keepalive_mode(rounds: usize) -> String {
    let web = PodmanContainer::run(
        "hrps-ka-web",
        &Spec {
            labels: &[("porin-http-rps", "web")],
            ..Default::default()
        },
    );
    let ip: Ipv4Addr = web.ipv4().expect("web has an address");
    let addr = SocketAddr::from((ip, 8080));
    let _server = nginx_server(web.pid());
    let started = Instant::now();
    while keepalive_statuses(addr, &["/metrics"]).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not answer on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = wrk(addr, Duration::from_secs(2)); // warm up
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m = Mode::KeepAlive;
    let paths: Vec<Measured<'_>> = vec![
        ("without Porin".into(), Box::new(move || measure(m, addr))),
        (
            "through Porin, L7 rules, flow events (default)".into(),
            Box::new(move || through_porin(m, addr, "default")),
        ),
        (
            "through Porin, L7 rules, flow events at 1/s".into(),
            Box::new(move || through_porin(m, addr, "quiet")),
        ),
        (
            "through Porin, L4 rule only (no HTTP stage)".into(),
            Box::new(move || through_porin(m, addr, "l4")),
        ),
        (
            "through HAProxy, the same rule, 1 thread".into(),
            Box::new(move || through_haproxy(m, addr, 1)),
        ),
        (
            format!("through HAProxy, the same rule, {cpus} threads"),
            Box::new(move || through_haproxy(m, addr, cpus)),
        ),
        (
            "through nginx proxy, the same rule, 1 worker".into(),
            Box::new(move || through_nginx_proxy(addr, 1)),
        ),
        (
            format!("through nginx proxy, the same rule, {cpus} workers"),
            Box::new(move || through_nginx_proxy(addr, cpus)),
        ),
    ];
    let lines = run_rounds("keep-alive", rounds, &paths);
    let secs = seconds();
    format!(
        "HTTP/1.1 keep-alive GET /metrics, host (wrk, {KA_CONNECTIONS} connections, {cpus} threads) \
         -> nginx in a container, {secs} s windows, medians of {rounds} rounds:{lines}"
    )
}

/// Requests per second to `addr` in `mode` for [`seconds`].
fn measure(mode: Mode, addr: SocketAddr) -> f64 {
    match mode {
        Mode::Connect => rps(addr),
        Mode::KeepAlive => wrk(addr, Duration::from_secs(seconds())),
    }
}

/// Checks `mode`'s rule at `addr`: GET /metrics answered 200, GET /admin
/// 403; in keep-alive mode on one connection (each request is judged, not
/// only the first), after two allowed ones. `who` names the enforcer.
fn check_rule(mode: Mode, addr: SocketAddr, who: &str) {
    match mode {
        Mode::Connect => {
            assert_eq!(
                request(addr, "/metrics"),
                Some(200),
                "allowed through {who}"
            );
            assert_eq!(request(addr, "/admin"), Some(403), "denied by {who}'s rule");
        }
        Mode::KeepAlive => assert_eq!(
            keepalive_statuses(addr, &["/metrics", "/metrics", "/admin"]),
            Some(vec![200, 200, 403]),
            "GET /metrics twice then GET /admin on one connection through {who}"
        ),
    }
}

/// `GET` of each path in turn on one `HTTP/1.1` connection (each request
/// written in one write); the status codes, until the server closes.
fn keepalive_statuses(addr: SocketAddr, paths: &[&str]) -> Option<Vec<u16>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut codes = Vec::new();
    let mut buf = Vec::new();
    for path in paths {
        let req = format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
        // One response: the head, then Content-Length bytes of body.
        let mut chunk = [0u8; 4096];
        let code = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let code: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(Some(0), |v| v.trim().parse().ok())?;
                if buf.len() >= end + 4 + len {
                    buf.drain(..end + 4 + len);
                    break Some(code);
                }
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        match code {
            Some(c) => codes.push(c),
            None => break,
        }
    }
    (!codes.is_empty()).then_some(codes)
}

/// Requests per second from `wrk` (`KA_CONNECTIONS` connections, one
/// thread per core) for `window`; panics on any error or non-2xx answer.
fn wrk(addr: SocketAddr, window: Duration) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = std::process::Command::new("wrk")
        .args(["-t", &cpus.to_string(), "-c", &KA_CONNECTIONS.to_string()])
        .args(["-d", &format!("{}s", window.as_secs())])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk (the keep-alive client): run .ci/setup: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in ["Non-2xx or 3xx responses:", "Socket errors:"] {
        assert!(!text.contains(bad), "wrk saw errors: {text}");
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"))
}

/// A process this bench started, ended on drop by its PID (SIGTERM: nginx's
/// master stops its workers) and reaped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A temporary directory for one configuration, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("porin-b-http-rps-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx's configuration: `workers` processes (one without a master),
/// no logging, keep-alive without a request limit, its files in `dir`;
/// `server` is the `server {}` block (and an `upstream` before it).
fn nginx_config(dir: &Path, workers: usize, server: &str) -> String {
    let master = if workers == 1 { "off" } else { "on" };
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process {master};\nworker_processes {workers};\n\
         pid {d}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  default_type text/plain;\n{server}}}\n"
    )
}

/// Starts nginx with `config` (a file in `dir`), through `nsenter -n` into
/// the network namespace of `netns_pid` when given (nsenter execs nginx
/// without forking, so the child is nginx itself).
fn start_nginx(dir: &TempDir, config: &str, netns_pid: Option<u32>) -> Child {
    let path = dir.0.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let mut cmd = match netns_pid {
        Some(pid) => {
            let mut c = std::process::Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "nginx"]);
            c
        }
        None => std::process::Command::new("nginx"),
    };
    cmd.args(["-e", "stderr", "-p"])
        .arg(&dir.0)
        .arg("-c")
        .arg(&path)
        .stdout(std::process::Stdio::null());
    Child(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx (install it: .ci/setup): {e}")),
    )
}

/// The keep-alive server: nginx with one worker in the web container's
/// network namespace on port 8080, answering `GET /metrics` from memory.
fn nginx_server(netns_pid: u32) -> (Child, TempDir) {
    let dir = TempDir::new("nginx-server");
    let config = nginx_config(
        &dir.0,
        1,
        "  server {\n    listen 8080;\n    \
         location = /metrics { return 200 \"metrics-body\\n\"; }\n    \
         location / { return 404; }\n  }\n",
    );
    let child = start_nginx(&dir, &config, Some(netns_pid));
    // The child first: it is ended before its directory goes.
    (child, dir)
}

/// Waits until `listen` accepts connections, panicking if `child` exits.
fn wait_listening(child: &mut Child, listen: SocketAddr, what: &str) {
    let started = Instant::now();
    while TcpStream::connect(listen).is_err() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("{what} exited ({status}) before listening: see its messages above");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peer: an L7 proxy in front of the server enforcing the same rule
/// (GET /metrics, anything else 403), as a proxy-based gateway (Cilium's
/// Envoy) would. HAProxy 2.6 from Debian, tuned for this machine: no
/// logging, no health checks, generous limits, run with one thread and
/// with one per core (on 2 cores shared with the clients and the server
/// neither is always ahead, so both are reported). The clients connect to
/// it on loopback. HAProxy keeps connections alive on both sides and
/// reuses server connections (`http-reuse always`); in connect mode it
/// still opens one to the server per request (busybox httpd closes after
/// each answer).
fn through_haproxy(mode: Mode, backend: SocketAddr, threads: usize) -> f64 {
    let Ok(out) = std::process::Command::new("haproxy").arg("-v").output() else {
        panic!("haproxy is not installed (the benchmark's peer): run .ci/setup");
    };
    assert!(out.status.success(), "haproxy -v");
    let dir = TempDir::new("haproxy");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, HAPROXY_PORT));
    let config = format!(
        "global\n  nbthread {threads}\n  maxconn 4000\n\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  \
         timeout server 5s\n  timeout http-keep-alive 60s\n  option dontlognull\n  \
         option http-keep-alive\n  http-reuse always\n\n\
         frontend porin_bench\n  bind {listen}\n  \
         http-request deny deny_status 403 unless METH_GET {{ path /metrics }}\n  \
         default_backend web\n\n\
         backend web\n  server web {backend}\n"
    );
    let path = dir.0.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut child = Child(
        std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    wait_listening(&mut child, listen, "haproxy");
    check_rule(mode, listen, "HAProxy");
    measure(mode, listen)
}

/// The other peer (keep-alive mode only): nginx as a reverse proxy
/// enforcing the same rule, `workers` worker processes, on loopback, with
/// a pool of keep-alive connections to the server (`keepalive 64`,
/// `proxy_http_version 1.1`, no `Connection` header passed on).
fn through_nginx_proxy(backend: SocketAddr, workers: usize) -> f64 {
    let dir = TempDir::new("nginx-proxy");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, NGINX_PROXY_PORT));
    let server = format!(
        "  upstream web {{\n    server {backend};\n    keepalive 64;\n    \
         keepalive_requests 1000000;\n  }}\n  \
         server {{\n    listen {listen};\n    location = /metrics {{\n      \
         if ($request_method != GET) {{ return 403; }}\n      \
         proxy_pass http://web;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n    }}\n    \
         location / {{ return 403; }}\n  }}\n"
    );
    let config = nginx_config(&dir.0, workers, &server);
    let mut child = start_nginx(&dir, &config, None);
    wait_listening(&mut child, listen, "nginx (proxy)");
    check_rule(Mode::KeepAlive, listen, "the nginx proxy");
    measure(Mode::KeepAlive, listen)
}

/// The HTTP rules of `CONFIG`'s policy (what `"l4"` leaves out).
const HTTP_RULES: &str = "    http:\n      - method: GET\n        path: /metrics\n";

/// Requests per second in `mode` through a daemon enforcing `CONFIG`, with
/// flow events at the default rate limit (`"default"`) or at one per
/// second (`"quiet"`); or (`"l4"`, default events) the same policy
/// without its HTTP rules: the L3/L4 datapath alone on that port, no HTTP
/// stage, to tell the stage's share of the cost.
fn through_porin(mode: Mode, addr: SocketAddr, events: &str) -> f64 {
    let dir = TempDir::new(events);
    let config = dir.0.join("porin.yaml");
    let flows = if events == "quiet" {
        "flows:\n  rate_limit: 1\n"
    } else {
        ""
    };
    let policy = if events == "l4" {
        assert!(CONFIG.contains(HTTP_RULES));
        CONFIG.replace(HTTP_RULES, "")
    } else {
        CONFIG.to_string()
    };
    std::fs::write(
        &config,
        format!(
            "{policy}{flows}control:\n  socket: {}\n",
            dir.0.join("s").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    daemon.wait_for(
        |l| l.contains("1 endpoints enforced"),
        Duration::from_secs(20),
    );
    let first = request(addr, "/metrics");
    if first != Some(200) {
        let flows = std::process::Command::new(env!("CARGO_BIN_EXE_porin"))
            .args(["flows", "-n", "30", "--socket"])
            .arg(dir.0.join("s"))
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&flows.stdout));
    }
    if events == "l4" {
        assert_eq!(first, Some(200), "allowed through Porin (L4 rule)");
    } else {
        check_rule(mode, addr, "Porin");
    }
    let before = DaemonUse::of(daemon.pid());
    let start = Instant::now();
    let with = measure(mode, addr);
    let used = DaemonUse::of(daemon.pid()).since(&before);
    let requests = with * start.elapsed().as_secs_f64();
    println!(
        "  daemon ({events} events): {:.1} % of one CPU, {:.2} µs CPU and {:.3} wake-ups per request",
        100.0 * used.cpu_s / start.elapsed().as_secs_f64(),
        1e6 * used.cpu_s / requests,
        used.wakeups as f64 / requests,
    );
    assert!(daemon.stop(), "daemon stops");
    with
}

/// The daemon's CPU time (all threads) and voluntary context switches
/// (its wake-ups after blocking), from /proc.
struct DaemonUse {
    cpu_s: f64,
    wakeups: u64,
}

impl DaemonUse {
    fn of(pid: u32) -> Self {
        // SAFETY: sysconf has no memory effects.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // The process's own stat counts every thread, exited ones too:
        // utime and stime are the 12th and 13th fields after the command's
        // closing parenthesis.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        // Context switches are per thread only (threads alive now).
        let mut wakeups = 0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in status.lines() {
                if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                    wakeups += v.trim().parse::<u64>().unwrap();
                }
            }
        }
        DaemonUse {
            cpu_s: ticks / tick,
            wakeups,
        }
    }

    fn since(&self, before: &DaemonUse) -> DaemonUse {
        DaemonUse {
            cpu_s: self.cpu_s - before.cpu_s,
            wakeups: self.wakeups - before.wakeups,
        }
    }
}
