//! The enforcement loop: turns discovery events and configuration reloads
//! into compiled policy applied to the datapath.
//!
//! Inputs arrive on one channel; after each one, everything already queued
//! is taken too and the policy is compiled and applied once, so a burst of
//! container starts costs one apply. A compile or apply failure keeps the
//! previously applied policy in force (the datapath never drops to "allow"
//! on an error) and is logged; it is retried every second (and on the next
//! input) until it succeeds, as is a veth that could not be attached. The
//! first apply happens at start, before any container is known.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        mpsc::{Receiver, RecvTimeoutError},
        Arc,
    },
    time::{Duration, Instant},
};

use log::{error, info, warn};

use crate::{
    config::Config,
    datapath::{
        gate::{self, Gate, GateError},
        uplink, ApplyReport, Datapath, DatapathError, Veth,
    },
    discovery::{
        endpoint::{Endpoint, EndpointKey},
        inventory::Event,
        netinfo::host_addresses,
    },
    policy::{self, CompileError},
    state::{self, Counters, Shared},
};

/// How soon a failed apply or attach is tried again without a new event.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What the enforcement loop reacts to.
pub enum Input {
    Discovery(Box<Event>),
    /// A validated new configuration (SIGHUP).
    Reload(Box<Config>),
}

impl From<Event> for Input {
    fn from(e: Event) -> Self {
        Input::Discovery(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("compiling the policy: {0}")]
    Compile(#[from] CompileError),
    #[error("applying the policy: {0}")]
    Apply(#[from] Box<DatapathError>),
    #[error("reading the host's addresses: {0}")]
    HostAddresses(#[source] std::io::Error),
    #[error("quarantine gate: {0}")]
    Gate(#[from] GateError),
}

/// The enforcement state: configuration, known endpoints, the datapath.
pub struct Enforcer {
    cfg: Config,
    file: String,
    datapath: Datapath,
    endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// Where `porin status`, `porin flows` and metrics read the applied
    /// state; updated after every apply.
    shared: Option<Arc<Shared>>,
    /// Successful applies so far (the generation `porin status` shows).
    applies: u64,
    /// The cgroup v2 hierarchy (None on v1-only hosts).
    unified: Option<PathBuf>,
    /// The quarantine gate, while the configuration asks for it.
    gate: Option<Gate>,
}

impl Enforcer {
    pub fn new(cfg: Config, file: String, datapath: Datapath) -> Self {
        Enforcer {
            cfg,
            file,
            datapath,
            endpoints: BTreeMap::new(),
            shared: None,
            applies: 0,
            unified: None,
            gate: None,
        }
    }

    /// The cgroup v2 hierarchy and, when the configuration quarantines, the
    /// gate already loaded (and attached) at start.
    pub fn with_gate(mut self, unified: Option<PathBuf>, gate: Option<Gate>) -> Self {
        self.unified = unified;
        self.gate = gate;
        self
    }

    pub fn gate(&self) -> Option<&Gate> {
        self.gate.as_ref()
    }

    /// Publishes the applied state to `shared` after every apply.
    pub fn with_shared(mut self, shared: Arc<Shared>) -> Self {
        self.shared = Some(shared);
        self
    }

    fn count(&self, pick: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64, n: u64) {
        if let Some(s) = &self.shared {
            Counters::add(pick(&s.counters), n);
        }
    }

    /// Hands the applied state to the control socket and metrics.
    fn publish(&mut self, report: &ApplyReport) {
        self.applies += 1;
        if let Some(s) = &self.shared {
            let mut snap = state::snapshot(
                self.applies,
                &self.endpoints,
                self.datapath.applied(),
                report,
                &self.datapath.attached(),
            );
            snap.gate = match &self.gate {
                Some(g) => g.status().to_string(),
                None => "off (unclassified containers are not held back: needs enforcement.mode: enforce and unknown_workloads: quarantine)".into(),
            };
            s.publish(snap);
        }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    /// Takes one input into account (no apply yet), with a log line per
    /// endpoint change.
    pub fn take(&mut self, input: Input) {
        let event = match input {
            Input::Reload(cfg) => {
                self.cfg = *cfg;
                return;
            }
            Input::Discovery(event) => *event,
        };
        self.count(|c| &c.discovery_events, 1);
        let (sign, ep) = match event {
            Event::Added(e) => {
                self.endpoints.insert(e.key.clone(), e.clone());
                ('+', e)
            }
            Event::Updated { new, .. } => {
                self.endpoints.insert(new.key.clone(), (*new).clone());
                ('~', *new)
            }
            Event::Removed(e) => {
                self.endpoints.remove(&e.key);
                ('-', e)
            }
        };
        info!(
            "endpoint {sign}{} [{} endpoints]",
            describe(&ep),
            self.endpoints.len()
        );
    }

    /// Compiles the policy for the current configuration and endpoints and
    /// applies it.
    pub fn sync(&mut self) -> Result<ApplyReport, EnforceError> {
        let endpoints: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        let host = host_addresses().map_err(EnforceError::HostAddresses)?;
        let compiled = policy::compile(&self.cfg, &endpoints, &host).map_err(|e| match e {
            CompileError::Collision(mut c) => {
                c.file = self.file.clone();
                CompileError::Collision(c)
            }
            other => other,
        })?;
        for w in &compiled.warnings {
            warn!("policy: {w}");
        }
        let veths: Vec<Veth> = endpoints
            .iter()
            .flat_map(|e| e.host_veths())
            .map(|p| Veth {
                ifindex: p.ifindex,
                name: p.name.clone(),
            })
            .collect();
        let report = self
            .datapath
            .apply(&compiled, &veths)
            .map_err(|e| EnforceError::Apply(Box::new(e)))?;
        // After the policy: the uplink program reads the endpoint and policy
        // maps just written. Missing interfaces are retried on every sync.
        self.datapath
            .apply_uplinks(&uplink::plan(&self.cfg))
            .map_err(|e| EnforceError::Apply(Box::new(e)))?;
        // Last: a container is let through the gate only once its veths
        // carry the programs just attached.
        self.sync_gate(&endpoints)?;
        Ok(report)
    }

    /// Attaches or removes the quarantine gate as the configuration says,
    /// and lets through exactly the classified containers.
    fn sync_gate(&mut self, endpoints: &[Endpoint]) -> Result<(), EnforceError> {
        if !gate::wanted(&self.cfg) {
            if self.gate.take().is_some() || gate::installed(&self.cfg.bpffs) {
                let removed = gate::uninstall(&self.cfg.bpffs)?;
                info!(
                    "gate: removed ({} links), unknown workloads are no longer quarantined",
                    removed.links
                );
            }
            return Ok(());
        }
        let unified = self.unified.clone().ok_or(GateError::NoUnified)?;
        if self.gate.is_none() {
            self.gate = Some(Gate::load(&self.cfg.bpffs, &unified)?);
        }
        let ids: BTreeSet<u64> = endpoints
            .iter()
            .filter(|e| classified(e, &self.datapath))
            .filter_map(|e| gate::cgroup_id(&gate::cgroup_dir(&unified, Path::new(&e.cgroup))).ok())
            .collect();
        let parents = gate::parents(&self.cfg);
        let gate = self.gate.as_mut().expect("loaded above");
        gate.attach(&parents)?;
        gate.set_classified(&ids)?;
        Ok(())
    }

    /// Runs until the sending side hangs up.
    pub fn run(mut self, rx: Receiver<Input>) {
        // Apply once right away: uplinks and ground rules need no container,
        // and a node may have none yet.
        let mut retry = !self.apply_and_log(false, Instant::now());
        loop {
            // After a failed apply or attach, try again on a timer too: on a
            // quiet node no other event may come to fix it.
            let first = if retry {
                match rx.recv_timeout(RETRY_INTERVAL) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return,
                }
            };
            let started = Instant::now();
            let mut reload = false;
            if let Some(first) = first {
                reload = matches!(first, Input::Reload(_));
                self.take(first);
                while let Ok(more) = rx.try_recv() {
                    reload |= matches!(more, Input::Reload(_));
                    self.take(more);
                }
            }
            retry = !self.apply_and_log(reload, started);
        }
    }

    /// Compiles and applies, logs the outcome; true when everything was
    /// applied and attached.
    fn apply_and_log(&mut self, reload: bool, started: Instant) -> bool {
        match self.sync() {
            Ok(report) => {
                self.count(|c| &c.attach_failures, report.attach_failures.len() as u64);
                self.publish(&report);
                let applied = self.datapath.applied();
                let audit = applied
                    .endpoints
                    .values()
                    .filter(|e| e.mode == porin_common::datapath::mode::AUDIT)
                    .count();
                info!(
                    "policy generation {}: {} endpoints enforced ({audit} in audit mode), {} not enforceable, {} policy entries{}{}{}",
                    report.generation,
                    applied.endpoints.len(),
                    applied.unenforced.len(),
                    report.policy_entries,
                    list(" attached", &report.attached),
                    list(" detached", &report.detached),
                    list(" FAILED to attach", &report.attach_failures),
                );
                if reload {
                    info!(
                        "reload enforced in {:.1} ms",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
                report.attach_failures.is_empty()
            }
            Err(e) => {
                self.count(|c| &c.applies_failed, 1);
                error!("{e}; the previously applied policy stays in force");
                false
            }
        }
    }
}

/// Whether the gate lets `e` through: its network is set up and each of
/// its host veths carries the TC programs (vacuously true for host-network
/// containers and ones without a host veth, which TC cannot enforce anyway).
fn classified(e: &Endpoint, datapath: &Datapath) -> bool {
    e.network_ready()
        && e.host_veths()
            .all(|p| datapath.is_attached(p.ifindex, &p.name))
}

fn list(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(";{what} {}", names.join(","))
    }
}

/// `runtime:id name (image) addresses via veth`, for the endpoint log lines.
fn describe(e: &Endpoint) -> String {
    let addrs: Vec<String> = e
        .addresses()
        .filter(|a| policy::has_identity(*a))
        .map(|a| a.to_string())
        .collect();
    let veth: Vec<&str> = e.host_veths().map(|p| p.name.as_str()).collect();
    format!(
        "{} {} ({}) {}{}",
        e.key,
        e.name,
        if e.image.is_empty() { "-" } else { &e.image },
        if e.host_network {
            "host-network".to_string()
        } else {
            addrs.join(",")
        },
        if veth.is_empty() {
            String::new()
        } else {
            format!(" via {}", veth.join(","))
        },
    )
}
