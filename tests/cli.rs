//! The `porin` binary end to end: its subcommands as a user runs them.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use porin::testing::require_root;

fn porin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_porin"))
}

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn check_config_accepts_every_shipped_config() {
    let mut checked = 0;
    for entry in std::fs::read_dir(configs_dir()).expect("configs/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = porin()
                .arg("check-config")
                .arg(&path)
                .output()
                .expect("run porin");
            assert!(
                out.status.success(),
                "{} rejected:\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected the default and at least one example, found {checked}"
    );
}

#[test]
fn check_config_reports_every_error_with_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("porin-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        "version: 1\n\
         enforcement:\n  mode: enforced\n\
         networks:\n  - name: lan\n    cidrs: [192.168.1.0/33]\n",
    )
    .unwrap();
    let out = porin()
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run porin");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid config exits with status 1"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(file.to_str().unwrap()))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "both mistakes reported, each on its own line:\n{stderr}"
    );
    assert!(
        lines[0].starts_with(&format!("{}:3:9: ", file.display())),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("enforcement.mode"), "{}", lines[0]);
    assert!(
        lines[1].starts_with(&format!("{}:6:13: ", file.display())),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("networks[0].cidrs[0]"), "{}", lines[1]);
}

#[test]
fn check_config_names_a_missing_file() {
    let out = porin()
        .args(["check-config", "/nonexistent/porin.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/porin.yaml"));
}

#[test]
fn version_names_the_kernel_features_it_found() {
    require_root("version_names_the_kernel_features_it_found (map probes call bpf())");
    let out = porin().arg("version").output().expect("run porin");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("porin {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for feature in [
        "BTF:",
        "ring buffer:",
        "LPM trie:",
        "bpf_link XDP:",
        "TCX:",
        "TC attach:",
        "XDP attach:",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(feature))
            .unwrap_or_else(|| panic!("`{feature}` missing from:\n{text}"));
        // As root on a BPF-capable kernel every probe gives an answer.
        assert!(!line.contains("unknown"), "probe failed: {line}");
    }
}

#[test]
fn run_starts_with_the_default_config_and_stops_on_sigterm() {
    require_root("run_starts_with_the_default_config_and_stops_on_sigterm");
    // The shipped config with a bpffs directory of this test's own (the
    // default one is the device's), removed before and after.
    let bpffs =
        porin::testing::daemon::BpffsGuard::new(porin::testing::daemon::test_bpffs("cli-run"));
    let shipped = std::fs::read_to_string(configs_dir().join("porin.yaml")).unwrap();
    assert!(shipped.contains("bpffs: /sys/fs/bpf/porin\n"));
    let dir = std::env::temp_dir().join(format!("porin-t-cli-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("porin.yaml");
    std::fs::write(
        &config,
        shipped.replace(
            "bpffs: /sys/fs/bpf/porin\n",
            &format!("bpffs: {}\n", bpffs.dir.display()),
        ),
    )
    .unwrap();
    let mut child = porin()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start porin run");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let ready = loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let done = line.contains("ready");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "porin run did not report ready within 20 s:\n{}",
            seen.join("\n")
        );
    }
    assert!(
        seen.iter().any(|l| l.contains("self-test passed")),
        "{}",
        seen.join("\n")
    );
    // SAFETY: kill on the PID of the child this test started.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().expect("wait for porin");
    assert!(
        status.success(),
        "porin run exited with {status} after SIGTERM"
    );
    std::fs::remove_dir_all(&dir).ok();
}
