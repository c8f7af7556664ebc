//! Live reload of a real `porin run` with real Podman containers: `porin
//! reload` with a broken file changes nothing (exit 1, errors printed with
//! line and column, the old policy still decides real traffic, `porin
//! status` shows the error), SIGHUP with a broken file is recorded the same
//! way, and a valid file is enforced before `porin reload` returns (the new
//! policy decides real traffic at once; status shows the success). Needs
//! root and podman.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use porin::testing::{
    daemon::Daemon,
    podman::{PodmanContainer, Spec},
    require_root,
};
use serde_json::Value;

/// `client` may reach `web` on `port` only.
fn config(socket: &Path, bpffs: &Path, port: u16) -> String {
    format!(
        r#"version: 1
enforcement:
  mode: enforce
  unknown_workloads: allow
bpffs: {bpffs}
control:
  socket: {socket}
groups:
  - name: rl-web
    select:
      labels: {{porin-reload: web}}
  - name: rl-client
    select:
      labels: {{porin-reload: client}}
ground_rules:
  same_group: allow
  cross_group: deny
policies:
  - name: client-to-web-{port}
    from: [rl-client]
    to: [rl-web]
    protocol: tcp
    ports: [{port}]
"#,
        bpffs = bpffs.display(),
        socket = socket.display(),
    )
}

fn porin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(args)
        .output()
        .expect("run porin")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn status_json(socket: &str) -> Value {
    let out = porin(&["status", "--socket", socket, "-o", "json"]);
    assert!(out.status.success(), "porin status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn status_table(socket: &str) -> String {
    let out = porin(&["status", "--socket", socket]);
    assert!(out.status.success(), "porin status: {}", text(&out.stderr));
    text(&out.stdout)
}

fn policy_text(socket: &str) -> String {
    let out = porin(&["policy", "--socket", socket]);
    assert!(out.status.success(), "porin policy: {}", text(&out.stderr));
    text(&out.stdout)
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_broken_file_changes_nothing_and_a_valid_one_is_enforced_when_reload_returns() {
    require_root("live reload test");
    let dir = Dir(std::env::temp_dir().join(format!("porin-t-reload-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let socket = dir.0.join("run/porin.sock");
    let sock = socket.to_str().unwrap();
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/porin-t-reload-{}", std::process::id()));
    let config_file = dir.0.join("porin.yaml");
    let file = config_file.display().to_string();
    std::fs::write(&config_file, config(&socket, &bpffs, 8080)).unwrap();

    let web = PodmanContainer::run(
        "rl-web",
        &Spec {
            labels: &[("porin-reload", "web")],
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            ..Default::default()
        },
    );
    let client = PodmanContainer::run(
        "rl-client",
        &Spec {
            labels: &[("porin-reload", "client")],
            ..Default::default()
        },
    );
    let web_ip = web.ipv4().expect("web has an address");
    let url = format!("http://{web_ip}:8080/");
    assert!(
        client.http_get(&url, 2),
        "baseline: reachable without Porin"
    );

    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config_file);
    daemon.wait_enforcing(
        &[web.name.as_str(), client.name.as_str()],
        Duration::from_secs(20),
    );
    assert!(client.http_get(&url, 2), "client -> web:8080 is allowed");
    let before = status_json(sock);
    assert!(before["last_reload"].is_null(), "no reload yet: {before:#}");
    assert!(
        status_table(sock).contains("last reload: none since start"),
        "status table before any reload"
    );
    let policy_before = policy_text(sock);
    assert!(
        policy_before.contains("client-to-web-8080"),
        "{policy_before}"
    );

    // A broken file that, were it applied, would deny port 8080.
    let broken = config(&socket, &bpffs, 8081).replace("mode: enforce", "mode: enforced");
    assert!(broken.lines().nth(2) == Some("  mode: enforced"), "line 3");
    std::fs::write(&config_file, broken).unwrap();
    let generation = status_json(sock)["policy_generation"].as_u64().unwrap();
    let out = porin(&["reload", "--socket", sock]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "invalid file: exit 1; {err}");
    assert!(
        err.contains(&format!("{file}:3:9: enforcement.mode")),
        "errors with FILE:LINE:COL: {err}"
    );
    assert!(err.contains("reload refused"), "{err}");
    assert!(
        client.http_get(&url, 2),
        "the old policy is still enforced: client -> web:8080 passes"
    );
    assert_eq!(policy_text(sock), policy_before, "porin policy unchanged");
    let s = status_json(sock);
    let last = &s["last_reload"];
    assert_eq!(last["result"], "invalid", "{s:#}");
    assert_eq!(last["trigger"], "porin reload");
    assert_eq!(last["policy_generation"].as_u64(), Some(generation));
    assert!(
        last["errors"]
            .as_str()
            .unwrap()
            .contains(&format!("{file}:3:9: enforcement.mode")),
        "{s:#}"
    );
    let table = status_table(sock);
    assert!(
        table.contains("last reload: INVALID FILE")
            && table.contains(&format!("  {file}:3:9: enforcement.mode")),
        "{table}"
    );

    // SIGHUP with the same file: also refused and recorded.
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(
        |l| l.contains("reload (SIGHUP)") && l.contains("is invalid"),
        Duration::from_secs(10),
    );
    let s = status_json(sock);
    assert_eq!(s["last_reload"]["result"], "invalid", "{s:#}");
    assert_eq!(s["last_reload"]["trigger"], "SIGHUP", "{s:#}");
    assert!(client.http_get(&url, 2), "still the old policy");

    // The valid file: enforced by the time `porin reload` returns.
    std::fs::write(&config_file, config(&socket, &bpffs, 8081)).unwrap();
    let out = porin(&["reload", "--socket", sock]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "valid file: exit 0; {stdout}{}",
        text(&out.stderr)
    );
    assert!(stdout.starts_with("reload applied: "), "{stdout}");
    let ms: f64 = stdout
        .trim_end()
        .strip_suffix(" ms")
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the time in {stdout:?}"));
    assert!(ms > 0.0 && ms < 10_000.0, "{ms} ms");
    assert!(
        !client.http_get(&url, 2),
        "the new policy is enforced: client -> web:8080 is denied"
    );
    let s = status_json(sock);
    let last = &s["last_reload"];
    assert_eq!(last["result"], "applied", "{s:#}");
    assert!(last["enforced_us"].as_u64().unwrap() > 0, "{s:#}");
    assert!(
        last["policy_generation"].as_u64().unwrap() > generation,
        "a new generation: {s:#}"
    );
    assert_eq!(last["errors"], "");
    assert!(policy_text(sock).contains("client-to-web-8081"));
    assert!(
        status_table(sock).contains("last reload: OK at "),
        "status table after a reload"
    );
    daemon.wait_for(
        |l| l.contains("reload enforced in") && l.contains("porin reload"),
        Duration::from_secs(5),
    );

    assert!(daemon.stop(), "porin run exits 0");
}

#[test]
fn reload_without_a_daemon_fails_with_the_socket_named() {
    let dir = std::env::temp_dir().join(format!("porin-t-reload-nod-{}", std::process::id()));
    let socket = dir.join("none.sock");
    let out = porin(&["reload", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("none.sock"), "{err}");
}
