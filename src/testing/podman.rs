//! Real Podman containers for tests, removed on drop.
//!
//! Containers run the project's busybox image (`localhost/porin-bb:2`,
//! built locally from Debian's busybox-static: no registry is needed). Names
//! are `porin-t-<tag>`; a leftover of an aborted run with the same name is
//! removed before the container is started again.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Output},
    sync::OnceLock,
};

/// The image every test container runs.
pub const IMAGE: &str = "localhost/porin-bb:2";
/// Prefix of every container the harness starts.
pub const NAME_PREFIX: &str = "porin-t-";

/// Builds [`IMAGE`] if it is missing (once per test process).
pub fn ensure_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if podman(&["image", "exists", IMAGE]).status.success() {
            return;
        }
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: install busybox-static (.ci/setup does)"
        );
        let dir = std::env::temp_dir().join(format!("porin-bb-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir image/bin");
        std::fs::create_dir_all(dir.join("www")).expect("mkdir image/www");
        std::fs::create_dir_all(dir.join("tmp")).expect("mkdir image/tmp");
        std::fs::copy(busybox, dir.join("bin/busybox")).expect("copy busybox");
        for applet in [
            "sh", "httpd", "nc", "wget", "sleep", "cat", "ls", "ip", "ping", "echo", "printf",
            "timeout",
        ] {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))
                .expect("applet symlink");
        }
        std::fs::write(dir.join("www/index.html"), "porin test page\n").expect("index.html");
        let tar = dir.with_extension("tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        podman_ok(&["import", tar.to_str().expect("utf-8 path"), IMAGE]);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&tar);
    });
}

/// A running Podman container, force-removed on drop.
#[derive(Debug)]
pub struct PodmanContainer {
    pub name: String,
    pub id: String,
    removed: bool,
}

/// How to start a test container.
#[derive(Debug, Default, Clone)]
pub struct Spec<'a> {
    pub labels: &'a [(&'a str, &'a str)],
    /// Extra `podman run` arguments (e.g. `--network host`).
    pub args: &'a [&'a str],
    /// Command and arguments; default `sleep 3600`.
    pub cmd: &'a [&'a str],
}

impl PodmanContainer {
    /// Starts `porin-t-<tag>` detached.
    pub fn run(tag: &str, spec: &Spec<'_>) -> Self {
        ensure_image();
        let name = format!("{NAME_PREFIX}{tag}");
        let _ = podman(&["rm", "-f", "-t", "0", &name]);
        let mut args: Vec<String> = ["run", "-d", "--name", &name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // The build machines lack CAP_SYS_RESOURCE: podman's default rlimits
        // would fail in crun, so pass lowered ones.
        for ulimit in ["nofile=1000:1000", "nproc=1000:1000"] {
            args.extend(["--ulimit".to_string(), ulimit.to_string()]);
        }
        for (k, v) in spec.labels {
            args.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        args.extend(spec.args.iter().map(|s| s.to_string()));
        args.push(IMAGE.to_string());
        let cmd: &[&str] = if spec.cmd.is_empty() {
            &["sleep", "3600"]
        } else {
            spec.cmd
        };
        args.extend(cmd.iter().map(|s| s.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = podman_ok(&arg_refs).trim().to_owned();
        assert_eq!(id.len(), 64, "podman run printed an unexpected id: {id:?}");
        PodmanContainer {
            name,
            id,
            removed: false,
        }
    }

    /// PID of the container's init process (from `podman inspect`).
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().expect("pid")
    }

    /// IPv4 address on podman's default network, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
            .parse()
            .ok()
    }

    /// `podman inspect -f FORMAT`, trimmed.
    pub fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "-f", format, &self.name])
            .trim()
            .to_owned()
    }

    /// `wget` of `url` from inside the container, given `timeout_s` seconds:
    /// true when the body arrived. A denied connection times out (dropped
    /// packets), so keep the timeout short in tests that expect it. (The
    /// `timeout` applet, not `wget -T`: busybox 1.35's `wget -T` crashes.)
    pub fn http_get(&self, url: &str, timeout_s: u32) -> bool {
        let t = timeout_s.to_string();
        podman(&[
            "exec", &self.name, "timeout", &t, "wget", "-q", "-O", "-", url,
        ])
        .status
        .success()
    }

    /// Removes the container now (`podman rm -f`).
    pub fn remove(mut self) {
        podman_ok(&["rm", "-f", "-t", "0", &self.name]);
        self.removed = true;
    }
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        if !self.removed {
            let out = podman(&["rm", "-f", "-t", "0", &self.name]);
            if !out.status.success() {
                eprintln!(
                    "warning: could not remove container {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Runs `podman ARGS`.
pub fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (install it: .ci/setup): {e}"))
}

/// Runs `podman ARGS`; panics with stderr unless it succeeds. Returns stdout.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "`podman {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
