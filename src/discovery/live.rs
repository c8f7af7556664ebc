//! Live discovery: scan, report what changed, sleep until the cgroups change
//! or a timer fires, repeat.
//!
//! - inotify on the cgroup directories wakes it when a container appears or
//!   goes away;
//! - containers not ready yet (no process, no address, metadata not written
//!   yet) are retried quickly (every [`RETRY_INTERVAL`]) until they are, or
//!   until [`PENDING_GRACE`] passes, after which they are reported with what
//!   is known (a `--network none` container has no address, ever; a
//!   container whose labels cannot be read is still an endpoint, just an
//!   unmanaged one: nothing is left out);
//! - a change of the host's interfaces (a veth added by `podman network
//!   connect`, say) brings the full rescan forward, since a known
//!   container's network changed without any cgroup event;
//! - a full rescan every `resync_interval` repairs anything an event missed.
//!
//! A failed scan keeps the last known endpoints (no removals are invented on
//! an error path) and is retried after [`ERROR_RETRY`].

use std::{
    collections::{HashMap, HashSet},
    sync::mpsc::Sender,
    time::{Duration, Instant},
};

use log::{error, warn};

use super::{
    endpoint::EndpointKey,
    inventory::{Event, Inventory},
    scanner::{ScanError, Scanner},
    watch::{Wake, Watcher},
};

/// How often a pending container is looked at again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// How long a container may stay pending before it is reported anyway.
pub const PENDING_GRACE: Duration = Duration::from_secs(10);
/// Wait after a failed scan.
pub const ERROR_RETRY: Duration = Duration::from_secs(1);

/// The discovery state between passes.
pub struct LiveDiscovery {
    scanner: Scanner,
    inventory: Inventory,
    pending_since: HashMap<EndpointKey, Instant>,
}

/// What one pass found besides the events.
#[derive(Debug, Default)]
pub struct PassInfo {
    pub pending: usize,
    pub dirs: Vec<std::path::PathBuf>,
}

impl LiveDiscovery {
    pub fn new(scanner: Scanner) -> Self {
        LiveDiscovery {
            scanner,
            inventory: Inventory::default(),
            pending_since: HashMap::new(),
        }
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// One pass at time `now`: returns the events it implies.
    pub fn pass(
        &mut self,
        refresh: bool,
        now: Instant,
    ) -> Result<(Vec<Event>, PassInfo), ScanError> {
        let outcome = self.scanner.scan(refresh)?;
        let mut report = outcome.ready;
        let mut still_pending = HashSet::new();
        for p in outcome.pending {
            let since = *self
                .pending_since
                .entry(p.endpoint.key.clone())
                .or_insert(now);
            if now.duration_since(since) >= PENDING_GRACE {
                warn!(
                    "{} ({}) still not ready after {:?}: {}; reporting it as it is",
                    p.endpoint.key, p.endpoint.name, PENDING_GRACE, p.reason
                );
                report.push(p.endpoint);
            } else if let Some(known) = self.inventory.get(&p.endpoint.key) {
                // Already reported: a transient failure (e.g. a metadata read
                // racing a write) must not make it vanish and come back.
                report.push(known.clone());
            } else {
                still_pending.insert(p.endpoint.key.clone());
            }
        }
        self.pending_since.retain(|k, _| still_pending.contains(k));
        let events = self.inventory.apply(report);
        Ok((
            events,
            PassInfo {
                pending: still_pending.len(),
                dirs: outcome.dirs,
            },
        ))
    }

    /// Runs until the watcher's stopper fires (or the receiver of `events`
    /// is dropped), sending every event.
    pub fn run<T: From<Event>>(
        mut self,
        mut watcher: Watcher,
        resync: Duration,
        events: Sender<T>,
    ) {
        let mut next_resync = Instant::now();
        loop {
            let now = Instant::now();
            let refresh = now >= next_resync;
            if refresh {
                next_resync = now + resync;
            }
            let timeout = match self.pass(refresh, now) {
                Ok((evs, info)) => {
                    watcher.set_dirs(&info.dirs);
                    for ev in evs {
                        if events.send(ev.into()).is_err() {
                            return;
                        }
                    }
                    if info.pending > 0 {
                        RETRY_INTERVAL
                    } else {
                        next_resync.saturating_duration_since(Instant::now())
                    }
                }
                Err(e) => {
                    error!("discovery scan failed (keeping the last known endpoints): {e}");
                    ERROR_RETRY
                }
            };
            match watcher.wait(timeout) {
                Ok(Wake::Stop) => return,
                Ok(Wake::LinksChanged) => next_resync = Instant::now(),
                Ok(Wake::Changed | Wake::Timeout) => {}
                Err(e) => {
                    error!("waiting for cgroup changes failed: {e}");
                    std::thread::sleep(ERROR_RETRY);
                }
            }
        }
    }
}
