//! What the daemon's threads share: a snapshot of the applied state (written
//! by the enforcement loop after every apply, read by the control socket and
//! metrics), the flow history, and counters.
//!
//! The snapshot is an `Arc` swapped under a mutex: readers clone the `Arc`
//! and never hold the lock while they format a reply, so a slow client can
//! not stall the enforcement loop.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Instant, SystemTime},
};

use porin_common::datapath::{mode, Identity};

use crate::{
    control::proto::{EndpointStatus, MapFill, ReloadOutcome},
    datapath::ApplyReport,
    discovery::endpoint::{short_id, Endpoint, EndpointKey},
    flows::history::History,
    maps::{self, MapSpec},
    policy::{select::describe, Compiled},
};

/// Metadata a flow record carries about a container; shared by every
/// record of that container (one allocation per container, not per flow).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointMeta {
    pub name: String,
    /// Full container id.
    pub id: String,
    pub runtime: String,
    /// Image reference as the runtime reports it.
    pub image: String,
    /// `key=value`, sorted.
    pub labels: Vec<String>,
}

/// Lookups for enriching flow events in userspace.
#[derive(Debug, Default)]
pub struct Directory {
    pub by_addr: HashMap<IpAddr, Arc<EndpointMeta>>,
    /// Host veth ifindex → interface name.
    pub ifnames: HashMap<u32, Arc<str>>,
    /// Identity → short name (`web`, `lan`, `world`).
    pub names: HashMap<Identity, Arc<str>>,
    /// Policy names by 1-based rule number (`rules[0]` is rule 1).
    pub rules: Vec<Arc<str>>,
}

impl Directory {
    pub fn identity_name(&self, id: Identity) -> Arc<str> {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::from(format!("identity {id:#010x}")))
    }
}

/// The applied state as of the last successful apply.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Applies since start (0: nothing applied yet).
    pub generation: u64,
    /// Active datapath slot (0 or 1).
    pub datapath_slot: u32,
    pub endpoints: Vec<EndpointStatus>,
    pub identities: Vec<(Identity, String)>,
    pub attached: Vec<String>,
    pub attach_failures: Vec<String>,
    pub warnings: Vec<String>,
    pub summary: String,
    pub explain: String,
    pub rules: Vec<String>,
    /// Entries the manager wrote, per map (conntrack is counted at scrape).
    pub maps: Vec<MapFill>,
    pub directory: Arc<Directory>,
    /// The quarantine gate in one line (see `datapath::gate::GateStatus`).
    pub gate: String,
}

/// Daemon counters for metrics (monotonic since start).
#[derive(Debug, Default)]
pub struct Counters {
    pub discovery_events: AtomicU64,
    pub attach_failures: AtomicU64,
    pub applies_failed: AtomicU64,
    pub flow_events: AtomicU64,
    /// Ring-buffer records that did not decode (wrong size).
    pub flow_events_malformed: AtomicU64,
    /// Records the kernel could not write into a full perf buffer, from its
    /// `PERF_RECORD_LOST` reports (perf transport only).
    pub flow_events_perf_lost: AtomicU64,
    pub control_requests: AtomicU64,
    pub control_refused: AtomicU64,
    pub control_bad_frames: AtomicU64,
    pub flow_log_errors: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Everything shared; one per daemon, behind an `Arc`.
pub struct Shared {
    pub started: Instant,
    pub started_wall: SystemTime,
    pub config_file: String,
    /// `porin version`'s feature lines as (name, value).
    pub kernel: Vec<(String, String)>,
    snapshot: Mutex<Arc<Snapshot>>,
    pub history: Mutex<History>,
    pub counters: Counters,
    /// Flow events per (identity, verdict name), at most
    /// [`IDENTITY_SERIES`] identities (the rest under identity 0), so a
    /// churning node cannot grow the metrics without bound.
    /// Counts by verdict (`FORWARDED`, `DROPPED`, `AUDIT`).
    pub identity_flows: Mutex<HashMap<Identity, [u64; 3]>>,
    /// Lost flow records per cause, as last read from `PORIN_LOST_V1`.
    pub lost: Mutex<[u64; 2]>,
    /// The outcome of the last reload (SIGHUP or `porin reload`).
    last_reload: Mutex<Option<ReloadOutcome>>,
}

/// Bound on per-identity metric series.
pub const IDENTITY_SERIES: usize = 256;

impl Shared {
    pub fn new(config_file: String, kernel: Vec<(String, String)>, history: usize) -> Self {
        Shared {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            config_file,
            kernel,
            snapshot: Mutex::new(Arc::new(Snapshot::default())),
            history: Mutex::new(History::new(history)),
            counters: Counters::default(),
            identity_flows: Mutex::new(HashMap::new()),
            lost: Mutex::new([0; 2]),
            last_reload: Mutex::new(None),
        }
    }

    pub fn record_reload(&self, o: ReloadOutcome) {
        *lock(&self.last_reload) = Some(o);
    }

    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        lock(&self.last_reload).clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.snapshot).clone()
    }

    pub fn publish(&self, s: Snapshot) {
        *lock(&self.snapshot) = Arc::new(s);
    }

    pub fn history(&self) -> MutexGuard<'_, History> {
        lock(&self.history)
    }

    /// Counts one flow event for `identity` with bounded cardinality.
    /// `verdict` is the `flow::verdict` value (1..=3).
    pub fn count_identity(&self, identity: Identity, verdict: u8) {
        let mut m = lock(&self.identity_flows);
        let id = if m.contains_key(&identity) || m.len() < IDENTITY_SERIES {
            identity
        } else {
            0
        };
        let slot = usize::from(verdict.clamp(1, 3) - 1);
        m.entry(id).or_insert([0; 3])[slot] += 1;
    }
}

/// Locks, recovering from a poisoned mutex: the data are plain values that
/// a panicking holder cannot leave half-valid in a way that matters here.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Short identity name from `Compiled::names` (`group web` → `web`).
fn short(name: &str) -> &str {
    name.strip_prefix("group ")
        .or_else(|| name.strip_prefix("network "))
        .unwrap_or(name)
}

/// Builds the snapshot after an apply.
pub fn snapshot(
    generation: u64,
    endpoints: &BTreeMap<EndpointKey, Endpoint>,
    applied: &Compiled,
    report: &ApplyReport,
    attached: &[&str],
) -> Snapshot {
    let mut by_addr = HashMap::new();
    let mut ifnames = HashMap::new();
    let mut views = Vec::new();
    let members: HashMap<&str, _> = applied
        .members
        .iter()
        .map(|m| (m.endpoint.as_str(), m))
        .collect();
    let unenforced: HashMap<&str, _> = applied
        .unenforced
        .iter()
        .map(|u| (u.endpoint.as_str(), u))
        .collect();
    for ep in endpoints.values() {
        let meta = Arc::new(EndpointMeta {
            name: ep.name.clone(),
            id: ep.key.id.clone(),
            runtime: ep.key.runtime.to_string(),
            image: ep.image.clone(),
            labels: ep.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        });
        for a in ep.addresses() {
            by_addr.insert(a, meta.clone());
        }
        for v in ep.host_veths() {
            ifnames.insert(v.ifindex, Arc::from(v.name.as_str()));
        }
        let d = describe(ep);
        let (identity, mode) = if let Some(m) = members.get(d.as_str()) {
            let mode = if m.mode == mode::AUDIT {
                "audit"
            } else {
                "enforce"
            };
            (m.identity, mode.to_string())
        } else if let Some(u) = unenforced.get(d.as_str()) {
            (u.identity, format!("not enforced: {}", u.reason))
        } else {
            (0, "not enforced: no policy yet".to_string())
        };
        views.push(EndpointStatus {
            name: ep.name.clone(),
            id: short_id(&ep.key.id).to_string(),
            runtime: ep.key.runtime.to_string(),
            identity,
            identity_name: applied
                .names
                .get(&identity)
                .map(|n| short(n).to_string())
                .unwrap_or_default(),
            mode,
            addresses: ep.addresses().map(|a| a.to_string()).collect(),
            veths: ep.host_veths().map(|p| p.name.clone()).collect(),
        });
    }
    let names = applied
        .names
        .iter()
        .map(|(id, n)| (*id, Arc::from(short(n))))
        .collect();
    let s = applied.summary();
    let fill = |map: MapSpec, entries: usize| MapFill {
        name: map.name.into(),
        entries: entries as u64,
        capacity: u64::from(map.max_entries),
    };
    let maps = vec![
        fill(maps::ENDPOINTS.spec(), s.endpoints),
        fill(maps::IP4.spec(), s.ip4),
        fill(maps::IP6.spec(), s.ip6),
        fill(maps::NET4.spec(), s.net4),
        fill(maps::NET6.spec(), s.net6),
        fill(maps::POLICY.spec(), s.policy),
    ];
    Snapshot {
        gate: String::new(),
        generation,
        datapath_slot: report.generation,
        endpoints: views,
        identities: applied
            .names
            .iter()
            .map(|(id, n)| (*id, short(n).to_string()))
            .collect(),
        attached: attached.iter().map(|s| s.to_string()).collect(),
        attach_failures: report.attach_failures.clone(),
        warnings: applied.warnings.iter().map(|w| w.to_string()).collect(),
        summary: s.to_string(),
        explain: applied.explain(),
        rules: applied.rules.clone(),
        maps,
        directory: Arc::new(Directory {
            by_addr,
            ifnames,
            names,
            rules: applied
                .rules
                .iter()
                .map(|r| Arc::from(r.as_str()))
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_series_are_bounded() {
        let s = Shared::new(String::new(), vec![], 16);
        for id in 1..=(IDENTITY_SERIES as u32 + 50) {
            s.count_identity(id, 2);
        }
        s.count_identity(5, 1);
        let m = lock(&s.identity_flows);
        assert_eq!(m.len(), IDENTITY_SERIES + 1, "the overflow folds into 0");
        assert_eq!(m[&0], [0, 50, 0]);
        assert_eq!(m[&5], [1, 1, 0]);
    }
}
