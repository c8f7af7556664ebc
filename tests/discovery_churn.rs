//! Churn: 50 real Podman containers started and stopped in a loop while
//! `porin run` watches. Every container must be reported added and then
//! removed (none missed, none left behind), and the daemon's memory must not
//! grow with the number of containers it has seen. Needs root.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use porin::testing::{
    podman::{podman, PodmanContainer, Spec, NAME_PREFIX},
    require_root,
};

const CONTAINERS: usize = 50;

struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_porin"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start porin run");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let d = Daemon { child, lines };
        d.wait_for(|l| l.contains("ready;"), Duration::from_secs(20));
        d
    }

    fn wait_for(&self, pred: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("porin run did not log the expected line within {within:?}"),
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test started, by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn fifty_containers_come_and_go_without_leftovers_or_misses() {
    require_root("discovery churn test");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/porin.yaml");
    let daemon = Daemon::start(&config);
    let name = |i: usize| format!("{NAME_PREFIX}churn-{i}");
    let mut added = HashSet::new();
    let mut removed = HashSet::new();
    let mut rss_after_warmup = 0;
    let mut previous: Option<PodmanContainer> = None;
    for i in 0..CONTAINERS {
        let c = PodmanContainer::run(
            &format!("churn-{i}"),
            &Spec {
                labels: &[("app", "churn")],
                ..Default::default()
            },
        );
        // The previous container goes while this one starts: real churn.
        if let Some(p) = previous.take() {
            p.remove();
        }
        previous = Some(c);
        // Collect whatever the daemon reported so far.
        while let Ok(l) = daemon.lines.try_recv() {
            record(&l, &mut added, &mut removed);
        }
        if i == 9 {
            rss_after_warmup = daemon.rss_kib();
        }
    }
    if let Some(p) = previous.take() {
        p.remove();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (added.len() < CONTAINERS || removed.len() < CONTAINERS) && Instant::now() < deadline {
        if let Ok(l) = daemon.lines.recv_timeout(Duration::from_millis(200)) {
            record(&l, &mut added, &mut removed);
        }
    }
    let missed_add: Vec<String> = (0..CONTAINERS)
        .map(name)
        .filter(|n| !added.contains(n))
        .collect();
    let left: Vec<String> = (0..CONTAINERS)
        .map(name)
        .filter(|n| !removed.contains(n))
        .collect();
    assert!(
        missed_add.is_empty(),
        "never reported added: {missed_add:?}"
    );
    assert!(
        left.is_empty(),
        "never reported removed (left behind): {left:?}"
    );
    let rss_end = daemon.rss_kib();
    println!("porin run RSS: {rss_after_warmup} KiB after 10 containers, {rss_end} KiB after {CONTAINERS}");
    // Memory must not grow with containers seen: allow allocator noise only.
    assert!(
        rss_end <= rss_after_warmup + 1024,
        "RSS grew from {rss_after_warmup} KiB to {rss_end} KiB over {} more containers",
        CONTAINERS - 10
    );
    // Nothing of ours is still running.
    let out = podman(&["ps", "-a", "--format", "{{.Names}}"]);
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(
        !ps.lines()
            .any(|l| l.starts_with(&format!("{NAME_PREFIX}churn-"))),
        "{ps}"
    );
}

/// Notes `endpoint +... NAME` and `endpoint -... NAME` log lines.
fn record(line: &str, added: &mut HashSet<String>, removed: &mut HashSet<String>) {
    let Some(rest) = line.split("endpoint ").nth(1) else {
        return;
    };
    let mut words = rest.split_whitespace();
    let (Some(key), Some(name)) = (words.next(), words.next()) else {
        return;
    };
    if !name.starts_with(&format!("{NAME_PREFIX}churn-")) {
        return;
    }
    if key.starts_with('+') {
        added.insert(name.to_string());
    } else if key.starts_with('-') {
        removed.insert(name.to_string());
    }
}
