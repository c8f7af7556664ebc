//! The control socket and the metrics endpoint of a real `porin run`:
//! `porin status`, `porin policy` and `porin flows` as a user runs them,
//! clients refused by file mode and by `SO_PEERCRED`, malformed, truncated,
//! oversized and stalled frames answered with errors while the daemon keeps
//! serving, and a Prometheus scrape. Needs root.

mod common;

use porin::maps;
use std::{
    io::Write,
    os::unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{free_port, metric, scrape};
use porin::{
    control::proto::{self, ErrorCode, Request, Response, MAX_RESPONSE},
    testing::{
        daemon::Daemon,
        podman::{PodmanContainer, Spec},
        require_root,
    },
};
use porin_common::datapath::max_entries;

fn porin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(args)
        .output()
        .expect("run porin")
}

struct Setup {
    dir: PathBuf,
    socket: PathBuf,
    port: u16,
    daemon: Daemon,
    _container: PodmanContainer,
}

fn start(tag: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("porin-t-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("run/porin.sock");
    let port = free_port();
    let config = dir.join("porin.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nflows:\n  history: 128\ncontrol:\n  socket: {}\nmetrics:\n  listen: 127.0.0.1:{port}\n",
            socket.display()
        ),
    )
    .unwrap();
    // One container, so the daemon has an endpoint and applies a policy.
    let container = PodmanContainer::run(tag, &Spec::default());
    let mut daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_porin")), &config);
    // Other containers may be running on the machine: wait for ours, then
    // for the apply that follows.
    let name = container.name.clone();
    daemon.wait_for(
        |l| l.contains("endpoint +") && l.contains(&name),
        Duration::from_secs(20),
    );
    daemon.wait_for(|l| l.contains("policy generation"), Duration::from_secs(20));
    Setup {
        dir,
        socket,
        port,
        daemon,
        _container: container,
    }
}

/// Sends raw bytes and reads one reply frame.
fn raw(socket: &Path, bytes: &[u8], shutdown: bool) -> Response {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if shutdown {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    proto::next_response(&mut s).expect("an error reply, not a hang-up")
}

fn error_code(r: Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn status_ok(socket: &Path) {
    let out = porin(&["status", "--socket", socket.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "porin status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_policy_and_flows_answer_and_bad_clients_are_refused() {
    require_root("control socket test (porin run)");
    let Setup {
        dir,
        socket,
        port,
        daemon,
        _container,
    } = start("control");
    let sock = socket.to_str().unwrap();

    // The socket file has the configured mode.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let out = porin(&["status", "--socket", sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("policy generation "), "{text}");
    assert!(
        text.contains("porin-t-control"),
        "the container is listed: {text}"
    );
    assert!(
        text.contains("ENDPOINTS") && text.contains("MAPS"),
        "{text}"
    );
    assert!(
        text.contains(maps::CT6.name) && text.contains(maps::CT4.name),
        "{text}"
    );
    assert!(text.contains("ring buffer:"), "kernel features: {text}");

    let out = porin(&["status", "--socket", sock, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(v["policy_generation"].as_u64().unwrap() >= 1);
    assert_eq!(v["history_capacity"], 128);

    let out = porin(&["policy", "--socket", sock]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("policy generation "), "{text}");
    assert!(text.contains("porin-t-control"), "{text}");
    let out = porin(&["policy", "--socket", sock, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("policy JSON");
    assert!(v["summary"].as_str().unwrap().contains("policy entries"));

    let out = porin(&["flows", "--socket", sock, "-n", "5", "--verdict", "dropped"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = porin(&["flows", "--socket", sock, "-o", "json"]);
    assert!(out.status.success());

    // --follow streams until the client goes away; the daemon notices.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_porin"))
        .args(["flows", "--socket", sock, "--follow"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "--follow keeps running"
    );
    follow.kill().unwrap();
    let _ = follow.wait();

    // A user that is neither root nor the daemon's: the file mode (0600)
    // refuses the connection ...
    // The client binary is copied where nobody may run it: the build tree
    // may sit under a private directory (CI clones into a 0700 mktemp -d).
    let client = dir.join("porin-client");
    std::fs::copy(env!("CARGO_BIN_EXE_porin"), &client).expect("copy porin for nobody");
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| {
        Command::new(&client)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run porin as nobody")
    };
    let out = nobody(&["status", "--socket", sock]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    // ... and with the file opened up, SO_PEERCRED still does.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = nobody(&["status", "--socket", sock]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the daemon refused: permission denied"),
        "{err}"
    );
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Garbage, truncated and oversized frames get an error reply.
    assert_eq!(
        error_code(raw(
            &socket,
            &[
                8,
                0,
                0,
                0,
                proto::VERSION as u8,
                250,
                250,
                250,
                250,
                250,
                250,
                250
            ],
            false
        )),
        ErrorCode::Malformed,
        "garbage payload"
    );
    assert_eq!(
        error_code(raw(&socket, &[100, 0, 0, 0, proto::VERSION as u8, 0], true)),
        ErrorCode::Malformed,
        "payload shorter than its header says"
    );
    assert_eq!(
        error_code(raw(&socket, &[1, 0], true)),
        ErrorCode::Malformed,
        "header cut short"
    );
    assert_eq!(
        error_code(raw(&socket, &u32::MAX.to_le_bytes(), false)),
        ErrorCode::TooLarge
    );
    let mut v9 = postcard::to_stdvec(&9u16).unwrap();
    v9.extend(postcard::to_stdvec(&Request::Status).unwrap());
    assert_eq!(
        error_code(raw(&socket, &proto::frame(&v9), false)),
        ErrorCode::Version
    );

    // A stalled client (half a header, then nothing) does not hold up
    // others, and is cut off after the timeout with an error reply.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    stalled.write_all(&[4, 0]).unwrap();
    let t = Instant::now();
    status_ok(&socket);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "served while another stalls"
    );
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let r = proto::next_response(&mut stalled).expect("a timeout reply");
    assert_eq!(error_code(r), ErrorCode::Timeout);

    // Several requests on one connection.
    let mut s = UnixStream::connect(&socket).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            proto::call(&mut s, &Request::Policy).unwrap(),
            Response::Policy(_)
        ));
    }
    let _ = MAX_RESPONSE;

    // Still serving after all of it, and the metrics count it.
    status_ok(&socket);
    let metrics = scrape(port);
    let entries = |map: &str| format!("porin_map_entries{{map=\"{map}\"}}");
    for name in [
        "porin_forwarded_packets_total{direction=\"egress\"}",
        "porin_dropped_packets_total{reason=\"POLICY_DENIED\"}",
        "porin_flow_events_lost_total{cause=\"rate_limit\"}",
        &entries(maps::CT6.name),
        &entries(maps::CT4.name),
        "porin_policy_generation ",
        "porin_endpoints ",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    // Each conntrack map with its own capacity (IPv4 and IPv6 differ).
    for (map, cap) in [
        (maps::CT4.name, max_entries::CONNTRACK),
        (maps::CT6.name, max_entries::CONNTRACK6),
    ] {
        let name = format!("porin_map_capacity_entries{{map=\"{map}\"}}");
        assert_eq!(metric(&metrics, &name), f64::from(cap), "{name}");
    }
    let refused = metric(&metrics, "porin_control_refused_total");
    assert_eq!(refused, 1.0, "one client refused by SO_PEERCRED");

    assert!(daemon.stop(), "porin run exits 0");
    assert!(!socket.exists(), "the socket file is removed on stop");
    std::fs::remove_dir_all(&dir).ok();
}
