//! The service files in dist/: the systemd unit passes `systemd-analyze
//! verify` (with the binary path pointed at the built `porin`, which verify
//! requires to exist) with no complaint about the unit, and a broken copy is
//! caught by the same check; the OpenRC and sysvinit scripts parse as POSIX
//! sh (and as BusyBox ash when busybox is installed).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn unit() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("dist/systemd/porin.service"))
        .expect("dist/systemd/porin.service")
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("porin-t-units-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `systemd-analyze verify` of `text` saved as porin.service: Ok, or the
/// complaints about it. Warnings (unknown keys, bad values) exit 0, so any
/// line naming the file counts as a failure.
fn verify(text: &str, tag: &str) -> Result<(), String> {
    let dir = scratch(tag);
    let file = dir.join("porin.service");
    std::fs::write(
        &file,
        text.replace("/usr/bin/porin", env!("CARGO_BIN_EXE_porin")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("porin.service") || l.contains("porin"))
        .collect();
    if out.status.success() && about_unit.is_empty() {
        Ok(())
    } else {
        Err(format!("exit {:?}:\n{stderr}", out.status.code()))
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !tool("systemd-analyze") {
        eprintln!(
            "\n*** SKIPPED: systemd-analyze is not installed, dist/systemd/porin.service \
             was NOT verified (apt-get install systemd; .ci/setup does) ***\n"
        );
        return;
    }
    let text = unit();
    verify(&text, "good").unwrap_or_else(|e| panic!("the unit does not verify: {e}"));
    // The check can fail: a misspelt value and an unknown key are caught.
    assert!(verify(&text.replace("Type=simple", "Type=simpel"), "bad1").is_err());
    assert!(verify(&text.replace("[Service]", "[Service]\nBogusKey=1"), "bad2").is_err());
}

#[test]
fn the_systemd_unit_keeps_its_hardening() {
    let text = unit();
    for line in [
        "ExecStart=/usr/bin/porin run --config /etc/porin/porin.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}`");
    }
    let filter = text
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("a syscall filter");
    assert!(
        filter.contains("@system-service") && filter.split(' ').any(|s| s == "bpf"),
        "the filter must allow bpf(): {filter}"
    );
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"] {
        assert!(bounding.contains(cap), "{cap} in {bounding}");
    }
    let rw = text
        .lines()
        .find_map(|l| l.strip_prefix("ReadWritePaths="))
        .expect("ReadWritePaths");
    assert!(rw.contains("/sys/fs/bpf"), "{rw}");
}

#[test]
fn the_init_scripts_parse_as_posix_sh() {
    for script in ["dist/openrc/porin", "dist/sysvinit/porin"] {
        let path = Path::new(ROOT).join(script);
        let mut shells = vec![vec!["sh", "-n"]];
        if tool("busybox") {
            shells.push(vec!["busybox", "sh", "-n"]);
        } else {
            eprintln!("*** busybox not installed: {script} checked with sh only ***");
        }
        for sh in shells {
            let out = Command::new(sh[0])
                .args(&sh[1..])
                .arg(&path)
                .output()
                .expect("run sh -n");
            assert!(
                out.status.success(),
                "{} {script}: {}",
                sh.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The check can fail: an unclosed `if` is a syntax error.
        let dir = scratch("sh");
        let broken = dir.join("broken");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&broken, format!("{text}\nif true; then\n")).unwrap();
        let out = Command::new("sh").arg("-n").arg(&broken).output().unwrap();
        assert!(!out.status.success(), "sh -n catches a broken {script}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
