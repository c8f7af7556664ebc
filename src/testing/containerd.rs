//! A private containerd instance and real containerd containers for tests.
//!
//! Everything lives under `/tmp/porin-t-ctrd-<tag>/` (root, state, sockets,
//! runc root, FIFOs, IPAM) so the system's containerd, if any, is never
//! touched. Containers get a network namespace of the harness and a veth on
//! a bridge of the instance's own, through the CNI `bridge` plugin run by
//! hand. The bridge gets the subnet's gateway address (`isGateway`), so
//! the host routes the subnet to it, as a runtime's bridge network does:
//! discovery trusts a container address only where the host routes it (see
//! `discovery::netinfo::net_info`). No masquerading: nothing leaves the host.
//! Dropping a container or the instance removes what it made; starting an
//! instance first clears a leftover of an aborted run with the same tag.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use super::{netns::Netns, podman};

/// The containerd namespace test containers run in.
pub const NAMESPACE: &str = "porin-test";
const CNI_PATH: &str = "/usr/lib/cni";

/// A containerd daemon of the test's own, stopped by PID on drop.
#[derive(Debug)]
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
    bridge: String,
    subnet: u8,
    child: Child,
}

impl Containerd {
    /// Starts containerd for `tag` (at most 8 characters: it names a bridge)
    /// with containers on `10.233.<subnet>.0/24`.
    pub fn start(tag: &str, subnet: u8) -> Self {
        assert!(
            tag.len() <= 8,
            "containerd tag {tag:?} longer than 8 characters"
        );
        let dir = PathBuf::from(format!("/tmp/porin-t-ctrd-{tag}"));
        let bridge = format!("ptc-{tag}");
        clear_leftovers(&dir, &bridge);
        fs::create_dir_all(&dir).expect("create containerd test dir");
        let socket = dir.join("containerd.sock");
        let root_dir = dir.join("root");
        let state_dir = dir.join("state");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{dir}/ttrpc.sock\"\n\
                 [debug]\n  address = \"{dir}/debug.sock\"\n",
                root = root_dir.display(),
                state = state_dir.display(),
                sock = socket.display(),
                dir = dir.display(),
            ),
        )
        .expect("write containerd config");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd (install it: .ci/setup): {e}"));
        fs::write(dir.join("containerd.pid"), child.id().to_string()).expect("pid file");
        let ctrd = Containerd {
            dir,
            socket,
            root_dir,
            state_dir,
            bridge,
            subnet,
            child,
        };
        ctrd.wait_ready();
        ctrd
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ctr(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd did not answer on {} within 20 s; log: {}",
            self.socket.display(),
            fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
        );
    }

    /// Imports the busybox test image (built by Podman) as
    /// `localhost/porin-bb:3`.
    pub fn import_image(&self) {
        podman::ensure_image();
        let archive = self.dir.join("bb-oci.tar");
        if !archive.exists() {
            podman::podman_ok(&[
                "save",
                "--format",
                "oci-archive",
                "-o",
                archive.to_str().expect("utf-8"),
                podman::IMAGE,
            ]);
        }
        self.ctr_ok(&[
            "images",
            "import",
            "--base-name",
            "localhost/porin-bb",
            archive.to_str().expect("utf-8"),
        ]);
    }

    /// Runs `ctr -a SOCKET -n porin-test ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", NAMESPACE])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctr: {e}"))
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "`ctr {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts container `id` with `labels`, networked through the bridge
    /// (or in the host namespace with `host_network`), running `sleep 3600`.
    pub fn run(&self, id: &str, labels: &[(&str, &str)], host_network: bool) -> CtrContainer<'_> {
        let netns = (!host_network).then(|| {
            let ns = Netns::create(&format!("ctr-{id}"));
            self.cni("ADD", id, &ns);
            ns
        });
        let runc_root = self.dir.join("runc");
        let fifo_dir = self.dir.join("fifo");
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--runc-root".into(),
            runc_root.display().to_string(),
            "--fifo-dir".into(),
            fifo_dir.display().to_string(),
        ];
        match &netns {
            Some(ns) => args.extend([
                "--with-ns".into(),
                format!("network:/var/run/netns/{}", ns.name()),
            ]),
            None => args.push("--net-host".into()),
        }
        for (k, v) in labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.extend([
            podman::IMAGE.into(),
            id.into(),
            "sleep".into(),
            "3600".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_ok(&refs);
        CtrContainer {
            ctrd: self,
            id: id.to_owned(),
            netns,
            removed: false,
        }
    }

    fn cni(&self, command: &str, id: &str, ns: &Netns) -> Output {
        let conf = format!(
            r#"{{"cniVersion":"0.4.0","name":"porin-t-{bridge}","type":"bridge","bridge":"{bridge}",
"isGateway":true,"ipMasq":false,
"ipam":{{"type":"host-local","subnet":"10.233.{subnet}.0/24","dataDir":"{dir}/ipam"}}}}"#,
            bridge = self.bridge,
            subnet = self.subnet,
            dir = self.dir.display()
        );
        let mut child = Command::new(format!("{CNI_PATH}/bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", format!("/var/run/netns/{}", ns.name()))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run the CNI bridge plugin (containernetworking-plugins): {e}")
            });
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("write CNI config");
        let out = child.wait_with_output().expect("wait for CNI plugin");
        if command == "ADD" {
            assert!(
                out.status.success(),
                "CNI ADD for {id} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: signalling the containerd this guard started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A containerd container with its task, removed (with its network) on drop.
#[derive(Debug)]
pub struct CtrContainer<'a> {
    ctrd: &'a Containerd,
    pub id: String,
    pub netns: Option<Netns>,
    removed: bool,
}

impl CtrContainer<'_> {
    /// PID of the task's init process (from the bundle's `init.pid`).
    pub fn pid(&self) -> u32 {
        let path = self
            .ctrd
            .state_dir
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(&self.id)
            .join("init.pid");
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .parse()
            .expect("init.pid")
    }

    /// Stops and removes the container now.
    pub fn remove(mut self) {
        self.teardown();
        self.removed = true;
    }

    fn teardown(&mut self) {
        let c = self.ctrd;
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !c.ctr(&["task", "rm", "-f", &self.id]).status.success()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.ctr(&["container", "rm", &self.id]);
        if let Some(ns) = self.netns.take() {
            let _ = c.cni("DEL", &self.id, &ns);
        }
    }
}

impl Drop for CtrContainer<'_> {
    fn drop(&mut self) {
        if !self.removed {
            self.teardown();
        }
    }
}

/// Removes what an aborted run with the same directory left: its containerd,
/// shims and container processes (all found by the test directory in their
/// command line, so nothing else is touched), the bridge and the directory.
fn clear_leftovers(dir: &Path, bridge: &str) {
    if dir.exists() {
        super::kill_leftovers(dir, &dir.join("runc").join(NAMESPACE));
        let _ = fs::remove_dir_all(dir);
    }
    let _ = Command::new("ip").args(["link", "del", bridge]).output();
}
