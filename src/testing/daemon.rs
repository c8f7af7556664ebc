//! `porin run` as a child process for end-to-end tests: started with a
//! config file, its log lines readable as they come, stopped by PID on drop.

use std::{
    io::{BufRead, BufReader},
    path::Path,
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
}

impl Daemon {
    /// Starts `binary run --config config` and waits until it logs `ready;`.
    pub fn start(binary: &Path, config: &Path) -> Self {
        let mut child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
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
