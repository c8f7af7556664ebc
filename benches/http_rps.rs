//! HTTP requests per second from the host to a busybox `httpd` container,
//! without Porin and then through Porin with L7 rules on the port, in the
//! same run: `cargo bench --bench http_rps` (as root, needs podman).
//! Each request is a new connection (`HTTP/1.0`, like most scrapers):
//! SYN, the request (judged by the HTTP stage), the response.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::Daemon,
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
    let without = rps(addr);

    // Flow events at the default rate limit (10,000/s: each request is a
    // new connection, so a NEW_FLOW and an L7_HTTP event), then nearly off:
    // the difference is the daemon's event handling competing for the
    // cores with the clients and the server, not the datapath.
    let with = through_porin(addr, "default");
    let quiet = through_porin(addr, "quiet");
    println!(
        "HTTP/1.0 GET /metrics, host -> busybox httpd container, {CLIENTS} clients, {SECONDS} s each:\n  \
         without Porin:                                  {without:>8.0} requests/s\n  \
         through Porin, L7 rules, flow events (default): {with:>8.0} requests/s ({:.1} % of without)\n  \
         through Porin, L7 rules, flow events at 1/s:    {quiet:>8.0} requests/s ({:.1} % of without)",
        100.0 * with / without,
        100.0 * quiet / without
    );
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
        let mut cpu_s = 0.0;
        let mut wakeups = 0;
        let tick = 100.0; // USER_HZ on Linux
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: utime is the
            // 12th, stime the 13th.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 {
                let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
                cpu_s += ticks / tick;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in status.lines() {
                if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                    wakeups += v.trim().parse::<u64>().unwrap();
                }
            }
        }
        DaemonUse { cpu_s, wakeups }
    }

    fn since(&self, before: &DaemonUse) -> DaemonUse {
        DaemonUse {
            cpu_s: self.cpu_s - before.cpu_s,
            wakeups: self.wakeups - before.wakeups,
        }
    }
}
