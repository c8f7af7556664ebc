//! HTTP requests per second from the host to a busybox `httpd` container,
//! without Porin, through Porin with L7 rules on the port, and through the
//! peer (HAProxy enforcing the same rule), in rounds of the same run:
//! `cargo bench --bench http_rps` (as root, needs podman and haproxy;
//! `PORIN_BENCH_ROUNDS=N`, default 3). Each request is a new connection
//! (`HTTP/1.0`, like most scrapers): SYN, the request (judged by the HTTP
//! stage), the response.

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

const SECONDS: u64 = 5;
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

/// Requests per second with `CLIENTS` threads for `SECONDS`.
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
        std::thread::sleep(Duration::from_secs(SECONDS));
        stop.store(true, Ordering::Relaxed);
    });
    let f = failed.load(Ordering::Relaxed);
    assert_eq!(f, 0, "{f} requests failed");
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    require_root("the HTTP requests-per-second benchmark");
    // No test daemon of another process may run meanwhile: each one
    // attaches to every container's veth, this bench's too.
    let _exclusive = Exclusive::acquire();
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

    // Rounds of: no policy; Porin with flow events at the default rate
    // limit (10,000/s: each request is a new connection, so a NEW_FLOW and
    // an L7_HTTP event); Porin with events nearly off (the datapath alone);
    // the proxy peer. 5 s windows on 2 shared cores swing by about 10 %
    // from one to the next, so each figure is the median of the rounds,
    // each ratio the median of the per-round ratios (a round's paths run
    // minutes apart at most).
    let rounds: usize = std::env::var("PORIN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows: Vec<[f64; 5]> = Vec::new();
    for round in 1..=rounds {
        // Each round starts with another path, so none always runs first
        // (or last) in the machine's drift.
        let mut row = [0.0; 5];
        for i in 0..row.len() {
            let path = (i + round - 1) % row.len();
            row[path] = match path {
                0 => rps(addr),
                1 => through_porin(addr, "default"),
                2 => through_porin(addr, "quiet"),
                3 => through_haproxy(addr, 1),
                _ => through_haproxy(addr, cpus),
            };
        }
        println!(
            "  round {round}: without {:.0}, Porin (events default) {:.0}, Porin (events at 1/s) {:.0}, \
             HAProxy (1 thread) {:.0}, HAProxy ({cpus} threads) {:.0} requests/s",
            row[0], row[1], row[2], row[3], row[4]
        );
        rows.push(row);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |c: usize| median(rows.iter().map(|r| r[c]).collect());
    let ratio = |c: usize| median(rows.iter().map(|r| 100.0 * r[c] / r[0]).collect());
    println!(
        "HTTP/1.0 GET /metrics, host -> busybox httpd container, {CLIENTS} clients, {SECONDS} s \
         windows, medians of {rounds} rounds:\n  \
         without Porin:                                  {:>8.0} requests/s\n  \
         through Porin, L7 rules, flow events (default): {:>8.0} requests/s ({:.1} % of without)\n  \
         through Porin, L7 rules, flow events at 1/s:    {:>8.0} requests/s ({:.1} % of without)\n  \
         through HAProxy, the same rule, 1 thread:       {:>8.0} requests/s ({:.1} % of without)\n  \
         through HAProxy, the same rule, {cpus} threads:      {:>8.0} requests/s ({:.1} % of without)",
        rate(0),
        rate(1),
        ratio(1),
        rate(2),
        ratio(2),
        rate(3),
        ratio(3),
        rate(4),
        ratio(4)
    );
}

/// The peer: an L7 proxy in front of the server enforcing the same rule
/// (GET /metrics, anything else 403), as a proxy-based gateway (Cilium's
/// Envoy) would. HAProxy 2.6 from Debian, tuned for this machine: no
/// logging, no health checks, generous limits, run with one thread and
/// with one per core (on 2 cores shared with the clients and the server
/// neither is always ahead, so both are reported). The
/// clients connect to it on loopback; it opens a connection to the server
/// per request (busybox httpd closes after each answer).
fn through_haproxy(backend: SocketAddr, threads: usize) -> f64 {
    let Ok(out) = std::process::Command::new("haproxy").arg("-v").output() else {
        panic!("haproxy is not installed (the benchmark's peer): run .ci/setup");
    };
    assert!(out.status.success(), "haproxy -v");
    let dir = std::env::temp_dir().join(format!("porin-b-http-rps-{}-haproxy", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 18481));
    let config = format!(
        "global\n  nbthread {threads}\n  maxconn 4000\n\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  \
         timeout server 5s\n  option dontlognull\n  http-reuse always\n\n\
         frontend porin_bench\n  bind {listen}\n  \
         http-request deny deny_status 403 unless METH_GET {{ path /metrics }}\n  \
         default_backend web\n\n\
         backend web\n  server web {backend}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let mut child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start haproxy");
    let started = Instant::now();
    while TcpStream::connect(listen).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("haproxy exited ({status}) before listening: see its messages above");
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "haproxy did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        request(listen, "/metrics"),
        Some(200),
        "allowed through HAProxy"
    );
    assert_eq!(
        request(listen, "/admin"),
        Some(403),
        "denied by HAProxy's rule"
    );
    let rate = rps(listen);
    // Ends only the process this bench started, by its PID.
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// Requests per second through a daemon enforcing `CONFIG`, with flow
/// events at the default rate limit (`"default"`) or at one per second
/// (`"quiet"`).
fn through_porin(addr: SocketAddr, events: &str) -> f64 {
    let dir =
        std::env::temp_dir().join(format!("porin-b-http-rps-{}-{events}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    let flows = if events == "quiet" {
        "flows:\n  rate_limit: 1\n"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "{CONFIG}{flows}control:\n  socket: {}\n",
            dir.join("s").display()
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
            .arg(dir.join("s"))
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&flows.stdout));
    }
    assert_eq!(first, Some(200), "allowed through Porin");
    assert_eq!(
        request(addr, "/admin"),
        Some(403),
        "denied by the HTTP rules"
    );
    let before = DaemonUse::of(daemon.pid());
    let start = Instant::now();
    let with = rps(addr);
    let used = DaemonUse::of(daemon.pid()).since(&before);
    let requests = with * start.elapsed().as_secs_f64();
    println!(
        "  daemon ({events} events): {:.1} % of one CPU, {:.2} µs CPU and {:.2} wake-ups per request",
        100.0 * used.cpu_s / start.elapsed().as_secs_f64(),
        1e6 * used.cpu_s / requests,
        used.wakeups as f64 / requests,
    );
    assert!(daemon.stop(), "daemon stops");
    let _ = std::fs::remove_dir_all(&dir);
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
