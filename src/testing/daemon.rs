//! `porin run` as a child process for end-to-end tests: started with a
//! config file, its log lines readable as they come, stopped by PID on drop.
//!
//! A daemon discovers every container on the host and attaches its programs
//! to all of their veths, so two daemons at once would judge each other's
//! test containers by the wrong policy. Every [`Daemon`] therefore holds
//! [`Exclusive`]: one test at a time, host-wide (other test binaries and
//! other checkouts included), runs daemons; one test may run several.
//!
//! The daemon pins its maps and keeps its programs attached after it stops
//! (`enforcement.on_stop: keep`). A config without a `bpffs:` line gets one
//! of its own here ([`test_bpffs`], named after the config's path), emptied
//! before the start and removed (`porin uninstall`) on drop, so parallel
//! tests never share pinned maps and nothing is left in the kernel. Tests
//! that set `bpffs` themselves (restarts, `tests/lifecycle.rs`) clean it up
//! themselves ([`BpffsGuard`]).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Condvar, Mutex},
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

/// The host-wide lock file (`flock`); released by the kernel when the
/// holder exits, so an aborted run never leaves it held.
const LOCK_FILE: &str = "/run/porin-test-daemons.lock";

/// Which thread (test) holds the lock, how many guards it has, and the
/// locked file.
struct Holder {
    thread: Option<ThreadId>,
    count: usize,
    file: Option<File>,
}

static HOLDER: Mutex<Holder> = Mutex::new(Holder {
    thread: None,
    count: 0,
    file: None,
});
static RELEASED: Condvar = Condvar::new();

/// The right to run daemons: held by one test thread at a time in this
/// process and by one process at a time on the host; reentrant within the
/// thread that holds it.
pub struct Exclusive(());

impl Exclusive {
    pub fn acquire() -> Self {
        let me = thread::current().id();
        let mut h = HOLDER.lock().unwrap_or_else(|e| e.into_inner());
        while h.thread.is_some_and(|t| t != me) {
            h = RELEASED.wait(h).unwrap_or_else(|e| e.into_inner());
        }
        if h.count == 0 {
            let file = File::create(LOCK_FILE)
                .unwrap_or_else(|e| panic!("{LOCK_FILE}: {e} (tests run as root)"));
            // SAFETY: flock on a descriptor this function owns; blocks until
            // no other process holds it.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            assert_eq!(rc, 0, "flock {LOCK_FILE}");
            h.file = Some(file);
            h.thread = Some(me);
        }
        h.count += 1;
        Exclusive(())
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        let mut h = HOLDER.lock().unwrap_or_else(|e| e.into_inner());
        h.count -= 1;
        if h.count == 0 {
            // Closing the file releases the flock.
            h.file = None;
            h.thread = None;
            RELEASED.notify_all();
        }
    }
}

/// A running `porin run`.
pub struct Daemon {
    child: Child,
    /// Every stderr line (the log), in order.
    pub lines: mpsc::Receiver<String>,
    /// Lines read so far, for failure messages.
    seen: Vec<String>,
    /// The bpffs directory this guard chose (removed when dropped, after
    /// the child is stopped, before the lock is released).
    _auto_bpffs: Option<BpffsGuard>,
    /// Dropped after the child is stopped (fields drop after `Drop::drop`).
    _exclusive: Exclusive,
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
    /// Waits first for any other test's daemons to be gone (see the module
    /// notes).
    pub fn start(binary: &Path, config: &Path) -> Self {
        Self::start_with_env(binary, config, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(binary: &Path, config: &Path, env: &[(&str, &str)]) -> Self {
        let exclusive = Exclusive::acquire();
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
            _exclusive: exclusive,
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

    /// Waits until discovery has reported every container in `names`
    /// (`endpoint +... NAME`, in any order; other containers may run on the
    /// machine), then for an apply that did not fail after them; each wait
    /// gets `within`.
    pub fn wait_enforcing(&mut self, names: &[&str], within: Duration) {
        let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
        self.wait_for(
            |l| {
                if l.contains("endpoint +") {
                    for n in names.iter().filter(|n| l.contains(**n)) {
                        seen.borrow_mut().insert(*n);
                    }
                }
                seen.borrow().len() == names.len()
            },
            within,
        );
        self.wait_for(
            |l| l.contains("policy generation") && !l.contains("FAILED"),
            within,
        );
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
