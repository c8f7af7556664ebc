//! Identity policy on real Docker containers: a private dockerd (Debian's
//! docker.io, `porin::testing::docker`), containers labelled at `docker run`,
//! `porin run` in enforce mode reading their labels from dockerd's
//! `config.v2.json` records, and real HTTP between them. Needs root.

use std::{path::Path, time::Duration};

use porin::testing::{daemon::Daemon, docker::Dockerd, require_root};

const CONFIG: &str = r#"version: 1
log:
  level: info
bpffs: /sys/fs/bpf/porin-t-docker-e2e
discovery:
  runtimes: [docker]
  docker_root: DOCKER_ROOT
enforcement:
  mode: enforce
groups:
  - name: sensor
    select:
      labels: {porin-dk: sensor}
  - name: web
    select:
      labels: {porin-dk: web}
  - name: other
    select:
      labels: {porin-dk: other}
ground_rules:
  same_group: allow
  cross_group: deny
policies:
  - name: sensor-to-web
    from: [sensor]
    to: [web]
    protocol: tcp
    ports: [8080]
"#;

#[test]
fn docker_labels_select_groups_and_their_policy_is_enforced() {
    require_root("docker policy end-to-end test");
    let dockerd = Dockerd::start("pol", 32);
    dockerd.load_image();
    let web = dockerd.run(
        "porin-t-dk-pe-web",
        &[("porin-dk", "web")],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let sensor = dockerd.run("porin-t-dk-pe-sensor", &[("porin-dk", "sensor")], &[]);
    let other = dockerd.run("porin-t-dk-pe-other", &[("porin-dk", "other")], &[]);
    let url = format!("http://{}:8080/", web.ipv4());

    // Before Porin: both reach the server (the baseline is real).
    assert!(sensor.http_get(&url, 2), "baseline: sensor reaches web");
    assert!(other.http_get(&url, 2), "baseline: other reaches web");

    let bpffs = Path::new("/sys/fs/bpf/porin-t-docker-e2e");
    std::fs::remove_dir_all(bpffs).ok();
    let dir = std::env::temp_dir().join(format!("porin-t-docker-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    let yaml = CONFIG.replace("DOCKER_ROOT", &dockerd.data_root.display().to_string());
    std::fs::write(&config, yaml).unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    daemon.wait_enforcing(
        &[
            "porin-t-dk-pe-web",
            "porin-t-dk-pe-sensor",
            "porin-t-dk-pe-other",
        ],
        Duration::from_secs(20),
    );

    assert!(
        sensor.http_get(&url, 2),
        "sensor -> web:8080 is allowed by the labels dockerd recorded"
    );
    assert!(!other.http_get(&url, 2), "other -> web is denied");

    assert!(daemon.stop(), "porin run exits cleanly on SIGTERM");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(bpffs).ok();
}
