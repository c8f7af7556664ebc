//! HTTP rules end to end: `porin run` in enforce mode with real Podman
//! containers (busybox `httpd` as the server, a client container sending
//! requests with `wget` and raw ones with `printf | nc`). Needs root and
//! podman.

use std::{path::Path, time::Duration};

use porin::testing::{
    daemon::Daemon,
    podman::{podman, PodmanContainer, Spec},
    require_root,
};

const CONFIG: &str = r#"version: 1
log:
  level: info
enforcement:
  mode: enforce
  unknown_workloads: quarantine
groups:
  - name: web
    select:
      labels: {porin-http-e2e: web}
  - name: cli
    select:
      labels: {porin-http-e2e: cli}
ground_rules:
  internet_egress: deny
  same_group: allow
  cross_group: deny
  host_ingress: deny
  host_egress: deny
policies:
  - name: scrape
    from: [cli]
    to: [web]
    protocol: tcp
    ports: [8080, 9090]
    http:
      - method: GET
        path: /metrics
      - method: POST
        path: /api/*
        headers:
          - name: X-Key
"#;

/// Sends `script`'s output (a `printf` / `sleep` shell pipeline) to
/// `ip:port` with `nc` from `c`; returns what came back.
fn raw(c: &PodmanContainer, ip: impl std::fmt::Display, port: u16, script: &str) -> String {
    let cmd = format!("({script}) | timeout 5 nc {ip} {port}");
    let out = podman(&["exec", c_name(c), "sh", "-c", &cmd]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn c_name(c: &PodmanContainer) -> &str {
    &c.name
}

const DENIED: &str = "HTTP/1.1 403 Forbidden";

#[test]
fn http_rules_are_enforced_on_real_containers() {
    require_root("HTTP rules end-to-end test");
    let web = PodmanContainer::run(
        "he-web",
        &Spec {
            labels: &[("porin-http-e2e", "web")],
            cmd: &[
                "sh",
                "-c",
                "echo metrics-body > /www/metrics; httpd -p 8080 -h /www; \
                 sleep 3600 | nc -l -p 9090 > /tmp/got",
            ],
            ..Default::default()
        },
    );
    let cli = PodmanContainer::run(
        "he-cli",
        &Spec {
            labels: &[("porin-http-e2e", "cli")],
            ..Default::default()
        },
    );
    let ip = web.ipv4().expect("web has an address");
    let url = |p: &str| format!("http://{ip}:8080{p}");
    // Baseline without Porin: the server answers.
    assert!(cli.http_get(&url("/metrics"), 3), "baseline GET /metrics");

    let dir = std::env::temp_dir().join(format!("porin-t-http-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    let socket = dir.join("porin.sock");
    std::fs::write(
        &config,
        format!("{CONFIG}control:\n  socket: {}\n", socket.display()),
    )
    .unwrap();
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    daemon.wait_for(
        |l| l.contains("2 endpoints enforced") && !l.contains("FAILED"),
        Duration::from_secs(20),
    );

    // Allowed.
    assert!(cli.http_get(&url("/metrics"), 3), "GET /metrics -> 200");
    // Denied: the client reads Porin's 403 (no hang: `nc` only waits for
    // its input to end).
    let out = raw(
        &cli,
        ip,
        8080,
        r"printf 'POST /admin HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n'; sleep 1",
    );
    assert!(out.starts_with(DENIED), "POST /admin -> 403, got {out:?}");
    assert!(out.contains("Denied by Porin"), "{out:?}");
    // A required header missing, then present (httpd answers itself).
    let out = raw(
        &cli,
        ip,
        8080,
        r"printf 'POST /api/x HTTP/1.0\r\nContent-Length: 0\r\n\r\n'; sleep 2",
    );
    assert!(out.starts_with(DENIED), "missing X-Key -> 403, got {out:?}");
    let out = raw(
        &cli,
        ip,
        8080,
        r"printf 'POST /api/x HTTP/1.0\r\nX-Key: 1\r\nContent-Length: 0\r\n\r\n'; sleep 2",
    );
    assert!(
        out.starts_with("HTTP/1.") && !out.contains("Denied by Porin"),
        "with X-Key the server answers, got {out:?}"
    );
    // A head written in pieces (1-byte segments) is judged on the stream
    // the server reads: allowed, the server answers; denied, a 403.
    let out = raw(
        &cli,
        ip,
        8080,
        r"printf G; sleep 0.5; printf E; sleep 0.5; printf 'T /metrics HTTP/1.0\r\n\r\n'; sleep 2",
    );
    assert!(
        out.starts_with("HTTP/1.") && !out.contains("Denied by Porin"),
        "an allowed head in 1-byte segments -> the server's answer, got {out:?}"
    );
    let out = raw(
        &cli,
        ip,
        8080,
        r"printf G; sleep 0.5; printf E; sleep 0.5; printf 'T /admin HTTP/1.0\r\n\r\n'; sleep 2",
    );
    assert!(
        out.starts_with(DENIED),
        "a denied head in 1-byte segments -> 403, got {out:?}"
    );
    // Garbage, a TLS ClientHello: refused with a 403.
    let out = raw(&cli, ip, 8080, r"printf '\001\002garbage\r\n\r\n'; sleep 2");
    assert!(out.starts_with(DENIED), "garbage -> 403, got {out:?}");
    let out = raw(
        &cli,
        ip,
        8080,
        r"printf '\026\003\001\000\245\001\000\000\241\003\003'; sleep 2",
    );
    assert!(
        out.starts_with(DENIED),
        "TLS ClientHello -> 403, got {out:?}"
    );

    // Keep-alive: an allowed then a denied request on one connection. The
    // server (`nc -l` on 9090) keeps what reached it: the first request
    // only; the client got the 403.
    let out = raw(
        &cli,
        ip,
        9090,
        r"printf 'GET /metrics HTTP/1.1\r\nHost: web\r\n\r\n'; sleep 1; printf 'GET /admin HTTP/1.1\r\nHost: web\r\n\r\n'; sleep 2",
    );
    assert!(out.contains(DENIED), "second request -> 403, got {out:?}");
    let got = podman(&["exec", c_name(&web), "cat", "/tmp/got"]);
    let got = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.contains("GET /metrics"),
        "first request reached the server: {got:?}"
    );
    assert!(
        !got.contains("/admin"),
        "the denied request never reached it: {got:?}"
    );

    // Allowed and denied requests are in the flow events, with method
    // and path.
    let flows = std::process::Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["flows", "--socket"])
        .arg(&socket)
        .args(["-n", "200", "-o", "json"])
        .output()
        .expect("porin flows");
    let text = String::from_utf8_lossy(&flows.stdout);
    let http: Vec<&str> = text.lines().filter(|l| l.contains("L7_HTTP")).collect();
    assert!(
        http.iter()
            .any(|l| l.contains("FORWARDED") && l.contains("/metrics")),
        "an allowed request event: {text}"
    );
    assert!(
        http.iter()
            .any(|l| l.contains("HTTP_DENIED") && l.contains("/admin") && l.contains("POST")),
        "a denied request event: {text}"
    );

    // Every allowed request is counted in the kernel, also those that sent
    // no event (a connection's later requests): `porin flows` ends its
    // table with the counts per policy.
    let flows = std::process::Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["flows", "--socket"])
        .arg(&socket)
        .args(["-n", "1"])
        .output()
        .expect("porin flows");
    let table = String::from_utf8_lossy(&flows.stdout);
    let counted: u64 = table
        .lines()
        .skip_while(|l| !l.starts_with("POLICY"))
        .find(|l| l.starts_with("scrape "))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no count for policy scrape in:\n{table}"));
    let evented = http
        .iter()
        .filter(|l| l.contains("FORWARDED") && l.contains("\"scrape\""))
        .count() as u64;
    assert!(
        counted >= evented.max(1),
        "{counted} requests counted, {evented} allowed request events:\n{table}"
    );

    assert!(daemon.stop(), "daemon stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
