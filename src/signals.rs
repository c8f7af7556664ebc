//! Waiting for the signals that stop the daemon, without a signal-handler
//! crate: the signals are blocked in every thread and taken synchronously with
//! `sigwait`, so no handler runs in an arbitrary context.

use std::{io, mem::MaybeUninit};

/// The signals the daemon reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop.
    Stop(i32),
    /// SIGHUP: reload the configuration.
    Reload,
}

/// A blocked set of SIGTERM, SIGINT and SIGHUP. Create it in `main` before any
/// thread starts, so every thread inherits the mask.
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    pub fn block() -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset and
        // pthread_sigmask only read it.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            let mut set = set.assume_init();
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        Ok(Self { set })
    }

    /// Blocks until one of the signals arrives.
    pub fn wait(&self) -> io::Result<Signal> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` was initialised in `block`; `sig` is a valid out-pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(if sig == libc::SIGHUP {
            Signal::Reload
        } else {
            Signal::Stop(sig)
        })
    }
}
