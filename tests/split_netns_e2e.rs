//! A container split over network namespaces is held to the strictest
//! verdict (issue 17): a Podman container whose labels a policy allows, but
//! one of whose processes moved into a network namespace of its own with
//! `unshare -Urn` (no privileges needed: Podman's default seccomp profile
//! allows it), gets no rule while that process lives, and its rules back
//! once it is gone. Its twin without the extra namespace is served
//! throughout, so the policy itself is shown to allow the traffic. Needs
//! root and podman.

use std::{path::Path, time::Duration};

use porin::testing::{
    daemon::Daemon,
    podman::{podman_ok, PodmanContainer, Spec},
    require_root,
};

const CONFIG: &str = r#"version: 1
log:
  level: info
bpffs: /sys/fs/bpf/porin-t-split-e2e
discovery:
  # The exit of the namespaced process is seen at the next full scan.
  resync_interval: 1s
enforcement:
  mode: enforce
groups:
  - name: client
    select:
      labels: {porin-split: client}
  - name: web
    select:
      labels: {porin-split: web}
ground_rules:
  cross_group: deny
policies:
  - name: client-to-web
    from: [client]
    to: [web]
    protocol: tcp
    ports: [8080]
"#;

#[test]
fn a_container_with_a_process_in_its_own_network_namespace_is_held() {
    require_root("split network namespace end-to-end test");
    let web = PodmanContainer::run(
        "sp-web",
        &Spec {
            labels: &[("porin-split", "web")],
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            ..Default::default()
        },
    );
    let twin = PodmanContainer::run(
        "sp-twin",
        &Spec {
            labels: &[("porin-split", "client")],
            ..Default::default()
        },
    );
    let split = PodmanContainer::run(
        "sp-split",
        &Spec {
            labels: &[("porin-split", "client")],
            cmd: &[
                "sh",
                "-c",
                "unshare -Urn sleep 3600 & echo $! > /tmp/split.pid; exec sleep 3600",
            ],
            ..Default::default()
        },
    );
    let url = format!("http://{}:8080/", web.ipv4().expect("web has an address"));
    assert!(split.http_get(&url, 2), "baseline: reachable without Porin");

    let bpffs = Path::new("/sys/fs/bpf/porin-t-split-e2e");
    std::fs::remove_dir_all(bpffs).ok();
    let dir = std::env::temp_dir().join(format!("porin-t-split-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    daemon.wait_enforcing(
        &["porin-t-sp-web ", "porin-t-sp-twin ", "porin-t-sp-split "],
        Duration::from_secs(20),
    );
    assert!(
        daemon
            .seen()
            .iter()
            .any(|l| l.contains("held to the strictest verdict") && l.contains(&split.name)),
        "the split container is logged as held: {:#?}",
        daemon.seen()
    );

    assert!(twin.http_get(&url, 2), "the twin is allowed by the policy");
    assert!(
        !split.http_get(&url, 2),
        "a client with a process in its own network namespace is held"
    );

    // The namespaced process ends: the container gets its rules back.
    podman_ok(&[
        "exec",
        &split.name,
        "sh",
        "-c",
        "kill $(cat /tmp/split.pid)",
    ]);
    daemon.wait_for(
        |l| l.contains("endpoint ~") && l.contains("porin-t-sp-split "),
        Duration::from_secs(10),
    );
    daemon.wait_for(|l| l.contains("policy generation"), Duration::from_secs(10));
    assert!(
        split.http_get(&url, 2),
        "once the process is gone, the policy applies again"
    );

    assert!(daemon.stop(), "porin run exits cleanly on SIGTERM");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(bpffs).ok();
}
