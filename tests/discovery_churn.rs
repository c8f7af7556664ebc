//! Churn: 50 real Podman containers started and stopped in a loop while
//! `porin run` watches. Every container must be reported added and then
//! removed (none missed, none left behind), and the daemon's memory must not
//! grow with the number of containers it has seen. Needs root.

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use porin::testing::{
    daemon::Daemon,
    podman::{podman, PodmanContainer, Spec, NAME_PREFIX},
    require_root,
};

const CONTAINERS: usize = 50;

#[test]
fn fifty_containers_come_and_go_without_leftovers_or_misses() {
    require_root("discovery churn test");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/porin.yaml");
    let daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
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
