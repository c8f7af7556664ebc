//! A private dockerd and real Docker containers for tests.
//!
//! Debian's `docker.io` daemon runs with everything of its own under
//! `/tmp/porin-t-dk-<tag>/` (data root, exec root with its managed
//! containerd, socket, PID file), so a system dockerd, if any, is never
//! touched. It is told to leave the host alone: no iptables rules, no
//! forwarding or masquerading changes, no userland proxy, and containers on
//! a bridge the harness made (`pdk-<tag>`, gateway `10.234.<subnet>.1/24`)
//! instead of `docker0`. Dropping a container or the daemon removes what it
//! made; starting one first clears a leftover of an aborted run with the
//! same tag (processes found by the test directory in their command line).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use super::podman;

/// Debian's docker client, named by path: another `docker` earlier in
/// `PATH` may speak a newer API than Debian 12's dockerd 20.10.
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

/// A dockerd of the test's own, stopped by PID on drop.
#[derive(Debug)]
pub struct Dockerd {
    pub dir: PathBuf,
    /// `--data-root`: what `discovery.docker_root` names.
    pub data_root: PathBuf,
    host: String,
    bridge: String,
    child: Child,
}

impl Dockerd {
    /// Starts dockerd for `tag` (at most 8 characters: it names a bridge)
    /// with containers on `10.234.<subnet>.0/24`.
    pub fn start(tag: &str, subnet: u8) -> Self {
        assert!(
            tag.len() <= 8,
            "dockerd tag {tag:?} longer than 8 characters"
        );
        let dir = PathBuf::from(format!("/tmp/porin-t-dk-{tag}"));
        let bridge = format!("pdk-{tag}");
        clear_leftovers(&dir, &bridge);
        fs::create_dir_all(&dir).expect("create dockerd test dir");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.234.{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        let data_root = dir.join("root");
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let log = fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args(["-H", &host])
            .args(["--bridge", &bridge])
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                // Works on any backing filesystem; the image is tiny.
                "--storage-driver=vfs",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {DOCKERD} (install docker.io: .ci/setup): {e}")
            });
        let d = Dockerd {
            dir,
            data_root,
            host,
            bridge,
            child,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.docker(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "dockerd did not answer on {} within 30 s; log: {}",
            self.host,
            fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
        );
    }

    /// Loads the busybox test image (built by Podman) as
    /// [`podman::IMAGE`].
    pub fn load_image(&self) {
        podman::ensure_image();
        let archive = self.dir.join("bb-docker.tar");
        podman::podman_ok(&[
            "save",
            "--format",
            "docker-archive",
            "-o",
            archive.to_str().expect("utf-8"),
            podman::IMAGE,
        ]);
        self.docker_ok(&["load", "-i", archive.to_str().expect("utf-8")]);
    }

    /// Runs `docker -H SOCKET ARGS`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .args(["-H", &self.host])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {DOCKER}: {e}"))
    }

    /// [`Self::docker`], panicking with its output unless it succeeds;
    /// returns stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts container `name` with `labels`, running `sleep` (or `cmd`).
    pub fn run(&self, name: &str, labels: &[(&str, &str)], cmd: &[&str]) -> DockerContainer<'_> {
        let mut args = vec!["run".to_string(), "-d".into(), "--name".into(), name.into()];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        args.push(podman::IMAGE.into());
        if cmd.is_empty() {
            args.extend(["sleep".into(), "3600".into()]);
        } else {
            args.extend(cmd.iter().map(|s| s.to_string()));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.docker_ok(&argv);
        DockerContainer {
            d: self,
            name: name.into(),
            id,
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: signalling the dockerd this guard started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        clear_leftovers(&self.dir, &self.bridge);
    }
}

/// A running Docker container, force-removed on drop.
#[derive(Debug)]
pub struct DockerContainer<'a> {
    d: &'a Dockerd,
    pub name: String,
    pub id: String,
}

impl DockerContainer<'_> {
    fn inspect(&self, format: &str) -> String {
        self.d.docker_ok(&["inspect", "-f", format, &self.id])
    }

    /// PID of the container's init process.
    pub fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().expect("State.Pid")
    }

    /// The container's address on the test bridge.
    pub fn ipv4(&self) -> std::net::Ipv4Addr {
        self.inspect("{{.NetworkSettings.IPAddress}}")
            .parse()
            .expect("NetworkSettings.IPAddress")
    }

    /// `wget URL` inside the container, given up after `timeout_s`.
    pub fn http_get(&self, url: &str, timeout_s: u32) -> bool {
        let t = timeout_s.to_string();
        self.d
            .docker(&[
                "exec", &self.id, "timeout", &t, "wget", "-q", "-O", "-", url,
            ])
            .status
            .success()
    }

    /// The namespace file dockerd made (`NetworkSettings.SandboxKey`).
    pub fn sandbox_key(&self) -> String {
        self.inspect("{{.NetworkSettings.SandboxKey}}")
    }
}

impl Drop for DockerContainer<'_> {
    fn drop(&mut self) {
        let _ = self.d.docker(&["rm", "-f", &self.id]);
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes what a run with this directory left: its dockerd, containerd,
/// shims and container processes (found by the test directory in their
/// command line, so nothing else is touched), mounts under the directory,
/// the directory and the bridge.
fn clear_leftovers(dir: &Path, bridge: &str) {
    if dir.exists() {
        super::kill_leftovers(dir, &dir.join("exec/runtime-runc/moby"));
        let needle = format!("{}/", dir.display());
        // Namespace files and shm mounts dockerd left mounted.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&needle))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).output();
        }
        let _ = fs::remove_dir_all(dir);
    }
    let _ = Command::new("ip").args(["link", "del", bridge]).output();
}
