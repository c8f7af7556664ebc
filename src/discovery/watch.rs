//! inotify on cgroup directories: wakes discovery when a container cgroup is
//! created or removed, so new containers are seen in milliseconds rather than
//! at the next periodic resync. A netlink socket subscribed to the host's
//! link changes wakes it when an interface comes or goes: `podman network
//! connect` (or disconnect) gives a running container a new veth without
//! touching its cgroup, and would otherwise wait for the resync.
//!
//! cgroupfs reports `mkdir`/`rmdir` of child cgroups as IN_CREATE/IN_DELETE
//! on the parent directory. The watcher does not interpret events: any event
//! means "rescan now" (a scan is cheap), which keeps it simple and robust
//! against missed or reordered events; the periodic resync repairs the rest.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

/// Why [`Watcher::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A watched directory changed.
    Changed,
    /// A host interface was added, removed or changed: known containers'
    /// networks may have changed (rescan them, not only new cgroups).
    LinksChanged,
    /// The timeout passed.
    Timeout,
    /// [`Stopper::stop`] was called.
    Stop,
}

/// Watches a set of directories for child creation and removal.
pub struct Watcher {
    inotify: OwnedFd,
    /// `NETLINK_ROUTE` bound to `RTMGRP_LINK`.
    links: OwnedFd,
    stop_read: OwnedFd,
    watches: HashMap<PathBuf, i32>,
}

/// Wakes a [`Watcher`] from another thread and makes it return [`Wake::Stop`].
pub struct Stopper {
    stop_write: OwnedFd,
}

impl Stopper {
    pub fn stop(&self) {
        // A failed write means the watcher is already gone; nothing to do.
        // SAFETY: writing one byte from a valid buffer to a pipe we own.
        let _ = unsafe { libc::write(self.stop_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

impl Watcher {
    pub fn new() -> io::Result<(Self, Stopper)> {
        // SAFETY: plain syscalls; the returned fds are checked and owned.
        let inotify = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if inotify < 0 {
            return Err(io::Error::last_os_error());
        }
        let inotify = unsafe { OwnedFd::from_raw_fd(inotify) };
        let mut pipe = [0i32; 2];
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let (stop_read, stop_write) =
            unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
        let links = link_events()?;
        Ok((
            Watcher {
                inotify,
                links,
                stop_read,
                watches: HashMap::new(),
            },
            Stopper { stop_write },
        ))
    }

    /// Makes the watched set equal `dirs`. A directory that cannot be watched
    /// (it vanished meanwhile) is skipped: the next scan will not list it.
    pub fn set_dirs(&mut self, dirs: &[PathBuf]) {
        let wanted: std::collections::HashSet<&PathBuf> = dirs.iter().collect();
        let stale: Vec<PathBuf> = self
            .watches
            .keys()
            .filter(|d| !wanted.contains(d))
            .cloned()
            .collect();
        for dir in stale {
            if let Some(wd) = self.watches.remove(&dir) {
                // SAFETY: removing a watch descriptor of our own inotify fd;
                // EINVAL when the kernel already dropped it is harmless.
                unsafe { libc::inotify_rm_watch(self.inotify.as_raw_fd(), wd) };
            }
        }
        for dir in dirs {
            if self.watches.contains_key(dir) {
                continue;
            }
            if let Ok(wd) = self.add(dir) {
                self.watches.insert(dir.clone(), wd);
            } else {
                log::debug!("cannot watch {} (gone?)", dir.display());
            }
        }
    }

    fn add(&self, dir: &Path) -> io::Result<i32> {
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_ONLYDIR | libc::IN_DELETE_SELF;
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.inotify.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(wd)
        }
    }

    /// Number of directories watched.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Waits until a watched directory changes, `timeout` passes, or the
    /// stopper fires. Pending inotify events are drained before returning.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Wake> {
        let mut fds = [
            libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop_read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.links.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of three pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(Wake::Timeout);
            }
            return Err(err);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Stop);
        }
        // Links first: a link change needs the wider rescan, and a burst
        // that brings both kinds of event must not lose it.
        if fds[2].revents != 0 {
            drain(&self.links);
            if fds[0].revents != 0 {
                drain(&self.inotify);
            }
            return Ok(Wake::LinksChanged);
        }
        if fds[0].revents != 0 {
            drain(&self.inotify);
            return Ok(Wake::Changed);
        }
        Ok(Wake::Timeout)
    }
}

/// Reads everything pending on a non-blocking descriptor. Netlink
/// notifications are not interpreted: any of them means "rescan". An
/// overrun (`ENOBUFS`) is a lost notification, which a rescan covers too.
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8192];
    // SAFETY: reading into a buffer we own from a non-blocking fd.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// A non-blocking `NETLINK_ROUTE` socket that receives the calling thread's
/// namespace's (the host's) link notifications.
fn link_events() -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_on_a_new_subdirectory_and_on_stop() {
        let dir = std::env::temp_dir().join(format!("porin-watch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (mut w, stopper) = Watcher::new().unwrap();
        w.set_dirs(std::slice::from_ref(&dir));
        assert_eq!(w.len(), 1);
        assert_eq!(w.wait(Duration::from_millis(20)).unwrap(), Wake::Timeout);
        std::fs::create_dir(dir.join("libpod-x")).unwrap();
        assert_eq!(w.wait(Duration::from_secs(5)).unwrap(), Wake::Changed);
        std::fs::remove_dir(dir.join("libpod-x")).unwrap();
        assert_eq!(w.wait(Duration::from_secs(5)).unwrap(), Wake::Changed);
        stopper.stop();
        assert_eq!(w.wait(Duration::from_secs(5)).unwrap(), Wake::Stop);
        w.set_dirs(&[]);
        assert!(w.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
