//! Latency from `podman run -d` returning to discovery reporting the
//! container, with real Podman containers (needs root and podman).
//!
//!   cargo bench --bench discovery_latency
//!
//! Prints p50, p99 and max over the runs. An event that arrives before
//! `podman run` has returned counts as 0 ms. Target (issue): p99 < 200 ms.

use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use porin::{
    config,
    discovery::{inventory::Event, live::LiveDiscovery, scanner::Scanner, watch::Watcher},
    testing::{
        podman::{PodmanContainer, Spec},
        require_root,
    },
};

const RUNS: usize = 40;

fn main() {
    require_root("discovery latency benchmark");
    let cfg = config::parse("version: 1\n", "<bench>").expect("defaults");
    let scanner = Scanner::new(&cfg.discovery).expect("scanner");
    let (watcher, stopper) = Watcher::new().expect("inotify");
    let (tx, rx) = mpsc::channel();
    let live = thread::spawn(move || {
        LiveDiscovery::new(scanner).run(watcher, Duration::from_secs(3600), tx)
    });
    // Timestamps are taken by a thread of their own as events arrive, not
    // when the benchmark gets round to looking.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    let collector = thread::spawn(move || {
        for ev in rx {
            if let Event::Added(e) = ev {
                seen2.lock().unwrap().insert(e.name, Instant::now());
            }
        }
    });
    thread::sleep(Duration::from_millis(300));

    let mut latencies = Vec::with_capacity(RUNS);
    let mut since_start = Vec::with_capacity(RUNS);
    let mut run_took = Vec::with_capacity(RUNS);
    let mut early = 0;
    for i in 0..RUNS {
        let started = Instant::now();
        let c = PodmanContainer::run(&format!("lat-{i}"), &Spec::default());
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(10);
        let reported = loop {
            if let Some(t) = seen.lock().unwrap().get(&c.name) {
                break *t;
            }
            assert!(
                Instant::now() < deadline,
                "{} not reported within 10 s",
                c.name
            );
            thread::sleep(Duration::from_millis(1));
        };
        latencies.push(reported.saturating_duration_since(returned));
        since_start.push(reported.saturating_duration_since(started));
        run_took.push(returned - started);
        if reported <= returned {
            early += 1;
        }
        c.remove();
    }
    stopper.stop();
    live.join().unwrap();
    collector.join().unwrap();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let line = |what: &str, mut v: Vec<Duration>| {
        v.sort();
        let pct = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
        println!(
            "  {what:<44} p50 {:7.1} ms   p99 {:7.1} ms   max {:7.1} ms",
            ms(pct(0.50)),
            ms(pct(0.99)),
            ms(*v.last().unwrap())
        );
    };
    println!("discovery latency with real Podman containers ({RUNS} runs):");
    line("podman run returned -> endpoint reported", latencies);
    line("podman run started -> endpoint reported", since_start);
    line("podman run duration (for reference)", run_took);
    println!("  reported before podman run returned: {early}/{RUNS}   (target: p99 of the first line < 200 ms)");
}
