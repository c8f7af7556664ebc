//! Reloading the configuration while the daemon runs: one path for SIGHUP
//! and `porin reload`.
//!
//! The file the daemon was started with is read and validated in the
//! caller's thread (the signal loop, or a blocking task of the control
//! socket), with the same checks as `porin check-config`. An invalid file
//! changes nothing: the errors are logged, recorded for `porin status` and
//! returned. A valid one goes to the enforcement loop as an
//! [`Input::Reload`], which compiles it, applies it as one generation switch
//! and records the outcome (see [`crate::enforce`]); a caller that wants the
//! outcome waits for it on a channel of its own.
//!
//! The reload-to-enforced time runs from the moment the request arrived
//! (the signal was taken, or the control request was read) to the moment
//! the datapath apply returned: validation, queueing behind an apply in
//! progress, compilation, map writes, the generation switch and attachments.

use std::{
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{error, info};

use crate::{
    cmd::load_checked,
    config::Config,
    control::proto::{ReloadOutcome, ReloadResult},
    enforce::Input,
    state::{lock, Shared},
};

/// How long `porin reload` waits for the enforcement loop to apply a valid
/// file before it answers [`ReloadResult::Pending`].
pub const APPLY_WAIT: Duration = Duration::from_secs(30);

/// Who asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    Control,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Control => "porin reload",
        }
    }
}

/// A validated configuration on its way to the enforcement loop.
pub struct ReloadRequest {
    pub config: Config,
    pub trigger: Trigger,
    pub requested: Instant,
    pub requested_unix_ns: u64,
    /// Where the outcome goes (None: nobody waits, as for SIGHUP).
    pub reply: Option<mpsc::Sender<ReloadOutcome>>,
}

/// Validates the daemon's config file and hands it to the enforcement loop.
pub struct Reloader {
    path: PathBuf,
    /// None once the daemon stops ([`Reloader::close`]).
    tx: Mutex<Option<mpsc::Sender<Input>>>,
    shared: Arc<Shared>,
}

impl Reloader {
    pub fn new(path: PathBuf, tx: mpsc::Sender<Input>, shared: Arc<Shared>) -> Self {
        Reloader {
            path,
            tx: Mutex::new(Some(tx)),
            shared,
        }
    }

    /// Drops the sender to the enforcement loop, so the loop can end while
    /// copies of the reloader are still referenced (the I/O thread's tasks
    /// are not guaranteed to be dropped); later requests are refused.
    pub fn close(&self) {
        lock(&self.tx).take();
    }

    /// Validates the file and, if it is valid, queues it for the
    /// enforcement loop: returns where its outcome will arrive. An invalid
    /// file (or a daemon that is stopping) gives the outcome at once.
    pub fn request(
        &self,
        trigger: Trigger,
        requested: Instant,
        wants_reply: bool,
    ) -> Result<Option<mpsc::Receiver<ReloadOutcome>>, ReloadOutcome> {
        let requested_unix_ns = unix_ns(SystemTime::now());
        let file = self.path.display().to_string();
        let refused = |result, errors: String| {
            let snap = self.shared.snapshot();
            let o = ReloadOutcome {
                result,
                trigger: trigger.name().into(),
                config_file: file.clone(),
                requested_unix_ns,
                policy_generation: snap.generation,
                datapath_slot: snap.datapath_slot,
                enforced_us: 0,
                errors,
                revoked: 0,
            };
            self.shared.record_reload(o.clone());
            o
        };
        let config = match load_checked(&self.path) {
            Ok(c) => c,
            Err(errors) => {
                error!(
                    "reload ({}): {file} is invalid, keeping the running config:\n{errors}",
                    trigger.name()
                );
                return Err(refused(ReloadResult::Invalid, errors));
            }
        };
        info!(
            "reload ({}): {file} is valid ({}); applying",
            trigger.name(),
            config.summary()
        );
        // The I/O side keeps the settings it started with.
        info!("reload: changes to flows, metrics and control take effect at the next start");
        let (reply, outcome) = if wants_reply {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let req = ReloadRequest {
            config,
            trigger,
            requested,
            requested_unix_ns,
            reply,
        };
        let sent = match &*lock(&self.tx) {
            Some(tx) => tx.send(Input::Reload(Box::new(req))).is_ok(),
            None => false,
        };
        if !sent {
            return Err(refused(
                ReloadResult::Failed,
                "the daemon is stopping; nothing was applied".into(),
            ));
        }
        Ok(outcome)
    }

    /// [`Reloader::request`], then waits (blocking, up to [`APPLY_WAIT`])
    /// for the outcome.
    pub fn reload(&self, trigger: Trigger, requested: Instant) -> ReloadOutcome {
        let rx = match self.request(trigger, requested, true) {
            Ok(Some(rx)) => rx,
            Ok(None) => unreachable!("a reply was asked for"),
            Err(outcome) => return outcome,
        };
        rx.recv_timeout(APPLY_WAIT).unwrap_or_else(|_| {
            let snap = self.shared.snapshot();
            ReloadOutcome {
                result: ReloadResult::Pending,
                trigger: trigger.name().into(),
                config_file: self.path.display().to_string(),
                requested_unix_ns: unix_ns(SystemTime::now()),
                policy_generation: snap.generation,
                datapath_slot: snap.datapath_slot,
                enforced_us: 0,
                errors: format!(
                    "the file is valid but was not applied within {APPLY_WAIT:?}; \
                     `porin status` shows the outcome when it is"
                ),
                revoked: 0,
            }
        })
    }
}

/// Nanoseconds since the epoch (0 before it).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
