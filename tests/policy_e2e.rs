//! Identity policy end to end: `porin run` in enforce mode with real Podman
//! containers, real traffic between them and to a stand-in for the internet
//! (a namespace on Podman's bridge), and a policy change applied while the
//! daemon runs. Needs root and podman.

use std::{path::Path, time::Duration};

use porin::testing::{
    daemon::Daemon,
    podman::{PodmanContainer, Spec},
    require_root,
    world::WorldHost,
};

const BASE_CONFIG: &str = r#"version: 1
log:
  level: info
bpffs: /sys/fs/bpf/porin-t-policy-e2e
enforcement:
  mode: enforce
  unknown_workloads: quarantine
  # The gate goes on a parent of this test's own: on /libpod_parent it
  # would hold back other tests' containers (tests/gate.rs tests the gate).
  quarantine_cgroups: [/porin-t-policy-e2e]
groups:
  - name: sensor
    select:
      labels: {porin-e2e: sensor}
  - name: web
    select:
      labels: {porin-e2e: web}
  - name: other
    select:
      labels: {porin-e2e: other}
ground_rules:
  internet_egress: deny
  same_group: allow
  cross_group: deny
  host_ingress: deny
  host_egress: deny
policies:
  - name: sensor-to-web
    from: [sensor]
    to: [web]
    protocol: tcp
    ports: [8080]
  - name: sensor-to-internet
    from: [sensor]
    to: [world]
    protocol: tcp
    ports: [443]
"#;

const OTHER_TO_WEB: &str = r#"  - name: other-to-web
    from: [other]
    to: [web]
    protocol: tcp
    ports: [8080]
"#;

fn http(c: &PodmanContainer, ip: impl std::fmt::Display, port: u16) -> bool {
    // A denied request is dropped: wget gives up after its timeout.
    c.http_get(&format!("http://{ip}:{port}/"), 2)
}

#[test]
fn identity_policy_is_enforced_on_real_containers_and_follows_a_reload() {
    require_root("identity policy end-to-end test");
    let web = PodmanContainer::run(
        "pe-web",
        &Spec {
            labels: &[("porin-e2e", "web")],
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            ..Default::default()
        },
    );
    let sensor = PodmanContainer::run(
        "pe-sensor",
        &Spec {
            labels: &[("porin-e2e", "sensor")],
            ..Default::default()
        },
    );
    let other = PodmanContainer::run(
        "pe-other",
        &Spec {
            labels: &[("porin-e2e", "other")],
            ..Default::default()
        },
    );
    let stranger = PodmanContainer::run("pe-stranger", &Spec::default());
    let world = WorldHost::start("pe", 1, 443);
    let web_ip = web.ipv4().expect("web has an address");

    // Before Porin: everything is reachable (the test's baseline is real).
    assert!(
        http(&other, web_ip, 8080),
        "baseline: other reaches web without Porin"
    );
    assert!(
        http(&web, world.ip, 443),
        "baseline: web reaches the world without Porin"
    );

    // A gate left by an aborted run.
    porin::datapath::gate::uninstall(Path::new("/sys/fs/bpf/porin-t-policy-e2e"))
        .expect("remove a leftover gate");
    let dir = std::env::temp_dir().join(format!("porin-t-policy-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    std::fs::write(&config, BASE_CONFIG).unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    // All four containers discovered and their veths attached (other
    // tests' containers on the node may be counted too).
    let mut missing = vec![
        "porin-t-pe-web ",
        "porin-t-pe-sensor ",
        "porin-t-pe-other ",
        "porin-t-pe-stranger ",
    ];
    while !missing.is_empty() {
        let l = daemon.wait_for(|l| l.contains("endpoint +"), Duration::from_secs(20));
        missing.retain(|n| !l.contains(n));
    }
    daemon.wait_for(
        |l| l.contains("endpoints enforced") && !l.contains("FAILED"),
        Duration::from_secs(20),
    );

    assert!(
        http(&sensor, web_ip, 8080),
        "sensor -> web:8080 is allowed (and the replies flow)"
    );
    assert!(!http(&other, web_ip, 8080), "other -> web is denied");
    assert!(
        !http(&stranger, web_ip, 8080),
        "an unmanaged container is quarantined"
    );
    assert!(!http(&web, world.ip, 443), "web -> internet is denied");
    assert!(
        http(&sensor, world.ip, 443),
        "sensor -> internet:443 is allowed"
    );

    // A policy change while the daemon runs: no restart.
    std::fs::write(&config, format!("{BASE_CONFIG}{OTHER_TO_WEB}")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(|l| l.contains("reload enforced"), Duration::from_secs(10));
    assert!(
        http(&other, web_ip, 8080),
        "after the reload, other -> web is allowed"
    );
    assert!(http(&sensor, web_ip, 8080), "sensor -> web still allowed");
    assert!(!http(&web, world.ip, 443), "web -> internet still denied");

    // An invalid file changes nothing.
    std::fs::write(&config, "version: 1\nenforcement: {mode: sometimes}\n").unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(
        |l| l.contains("keeping the running config"),
        Duration::from_secs(10),
    );
    assert!(
        !http(&web, world.ip, 443),
        "a broken reload keeps the policy: web -> internet denied"
    );
    assert!(
        http(&other, web_ip, 8080),
        "a broken reload keeps the policy: other -> web allowed"
    );

    assert!(daemon.stop(), "porin run exits cleanly on SIGTERM");
    std::fs::remove_dir_all(&dir).ok();
    // The gate is kept across stops: remove it and its parent cgroup.
    let bpffs = Path::new("/sys/fs/bpf/porin-t-policy-e2e");
    porin::datapath::gate::uninstall(bpffs).expect("remove the gate");
    std::fs::remove_dir_all(bpffs).ok();
    if let Ok(fs) = porin::discovery::cgroup::CgroupFs::detect(Path::new("/sys/fs/cgroup")) {
        std::fs::remove_dir(fs.dir().join("porin-t-policy-e2e")).ok();
    }
}
