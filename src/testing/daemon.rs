//! `porin run` as a child process for end-to-end tests: started with a
//! config file, its log lines readable as they come, stopped by PID on drop.
//!
//! The daemon pins its maps and keeps its programs attached after it stops
//! (`enforcement.on_stop: keep`). A config without a `bpffs:` line gets one
//! of its own here ([`test_bpffs`], named after the config's path), emptied
//! before the start and removed (`porin uninstall`) on drop, so parallel
//! tests never share pinned maps and nothing is left in the kernel. Tests
//! that set `bpffs` themselves (restarts, `tests/lifecycle.rs`) clean it up
//! themselves ([`BpffsGuard`]).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// A running `porin run`.
pub struct Daemon {
    child: Child,
    /// Every stderr line (the log), in order.
    pub lines: mpsc::Receiver<String>,
    /// Lines read so far, for failure messages.
    seen: Vec<String>,
    /// The bpffs directory this guard chose (removed when dropped, after
    /// the child is stopped).
    _auto_bpffs: Option<BpffsGuard>,
}

/// `/sys/fs/bpf/porin-test-<name>`: a test's own bpffs directory.
pub fn test_bpffs(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/porin-test-{name}"))
}

/// Removes everything Porin pinned or attached under a bpffs directory, at
/// creation (leftovers of an aborted run) and on drop.
pub struct BpffsGuard {
    pub dir: PathBuf,
}

impl BpffsGuard {
    pub fn new(dir: PathBuf) -> Self {
        let _ = crate::datapath::persist::uninstall(&dir);
        BpffsGuard { dir }
    }
}

impl Drop for BpffsGuard {
    fn drop(&mut self) {
        let _ = crate::datapath::persist::uninstall(&self.dir);
    }
}

/// Gives `config` a `bpffs:` line of its own if it has none.
fn own_bpffs(config: &Path) -> Option<BpffsGuard> {
    let text = std::fs::read_to_string(config).expect("read the test config");
    if text.lines().any(|l| l.starts_with("bpffs:")) {
        return None;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.hash(&mut h);
    let dir = test_bpffs(&format!("{:016x}", h.finish()));
    let sep = if text.ends_with('\n') || text.is_empty() {
        ""
    } else {
        "\n"
    };
    std::fs::write(config, format!("{text}{sep}bpffs: {}\n", dir.display()))
        .expect("write the test config");
    Some(BpffsGuard::new(dir))
}

impl Daemon {
    /// Starts `binary run --config config` and waits until it logs `ready;`.
    pub fn start(binary: &Path, config: &Path) -> Self {
        Self::start_with_env(binary, config, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(binary: &Path, config: &Path, env: &[(&str, &str)]) -> Self {
        let auto_bpffs = own_bpffs(config);
        let mut child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start porin run");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            lines,
            seen: Vec::new(),
            _auto_bpffs: auto_bpffs,
        };
        d.wait_for(|l| l.contains("ready;"), Duration::from_secs(30));
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line matching `pred` and returns it; panics with the
    /// log so far if none comes within `within`.
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "porin run did not log the expected line within {within:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling the child this guard started, by PID.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// Resident memory of the daemon in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("daemon status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// Stops the daemon with SIGTERM and returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        self.signal(libc::SIGTERM);
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Waits for the daemon to exit (after a signal or a crash) and returns
    /// its status, with the rest of its log.
    pub fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for porin") {
                let rest: Vec<String> = self.lines.try_iter().collect();
                self.seen.extend(rest.iter().cloned());
                return (status, self.seen.clone());
            }
            assert!(
                Instant::now() < deadline,
                "porin run did not exit within {within:?}; log:\n{}",
                self.seen.join("\n")
            );
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling the child this guard started, by PID.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}
