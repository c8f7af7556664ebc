//! The enforcement loop: turns discovery events and configuration reloads
//! into compiled policy applied to the datapath.
//!
//! Inputs arrive on one channel; after each one, everything already queued
//! is taken too and the policy is compiled and applied once, so a burst of
//! container starts costs one apply. A compile or apply failure keeps the
//! previously applied policy in force (the datapath never drops to "allow"
//! on an error) and is logged; it is retried every second (and on the next
//! input) until it succeeds, as is a veth that could not be attached. The
//! first apply waits for discovery's first complete scan
//! ([`Input::Scanned`]): a daemon that adopted pinned maps (see
//! `datapath::persist`) must not remove an endpoint for not having been
//! seen yet. When the loop ends (the daemon stops), `enforcement.on_stop:
//! detach` removes everything from the kernel; `keep` leaves it.
//!
//! Fail closed: the enforcer's datapath never detaches a veth that still
//! exists while no endpoint lists it (`Datapath::hold_live_veths`): a
//! running container that discovery cannot read keeps its veth's programs,
//! which then drop all its traffic, logged as an error at every apply. The
//! quarantine gate lets a container through only once it has a host veth
//! and all of its veths carry the programs (host-network containers, which
//! no veth program can judge, excepted); a gate entry adopted from an
//! earlier daemon is withdrawn as soon as discovery reports that container
//! unclassified.
//!
//! The loop wakes at least every second to write the conntrack clock, and
//! sweeps idle conntrack entries every 10 s (`datapath::conntrack`); every
//! apply also revokes the connections the new policy no longer allows.
//!
//! A reload ([`Input::Reload`], already validated by [`crate::reload`])
//! replaces the configuration and is settled by the next apply: its outcome
//! (applied with the reload-to-enforced time, or failed) is logged,
//! recorded for `porin status` and sent to whoever waits for it. A new file
//! whose policy does not compile with the endpoints that exist puts the
//! previous configuration back (nothing was written); a datapath failure
//! keeps the new file and retries it, and the reload counts as applied once
//! a retry succeeds.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        mpsc,
        mpsc::{Receiver, RecvTimeoutError},
        Arc,
    },
    time::{Duration, Instant},
};

use log::{error, info, warn};

use crate::{
    config::{Config, OnStop},
    control::proto::{ReloadOutcome, ReloadResult},
    datapath::{
        gate::{self, Gate, GateError},
        uplink, ApplyReport, Datapath, DatapathError, Veth,
    },
    discovery::{
        endpoint::{Endpoint, EndpointKey},
        inventory::Event,
        netinfo::{host_addresses, HostPeer},
        ports::Port,
    },
    policy::{self, CompileError},
    reload::ReloadRequest,
    state::{self, Counters, Shared},
};

/// How soon a failed apply or attach is tried again without a new event.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the conntrack clock is written (`datapath::conntrack`): the
/// unit of the programs' idle times.
const CLOCK_INTERVAL: Duration = Duration::from_secs(1);
/// How often idle conntrack entries no packet meets are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// What the enforcement loop reacts to.
pub enum Input {
    Discovery(Box<Event>),
    /// A validated new configuration (SIGHUP or `porin reload`).
    Reload(Box<ReloadRequest>),
    /// Discovery finished its first complete scan: every container that
    /// exists now has been reported.
    Scanned,
    /// A veth was just enslaved to a runtime's bridge (`discovery::ports`).
    Port(Port),
}

impl From<Event> for Input {
    fn from(e: Event) -> Self {
        Input::Discovery(Box::new(e))
    }
}

impl From<Port> for Input {
    fn from(p: Port) -> Self {
        Input::Port(p)
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
    /// A reload taken but not yet settled by an apply.
    pending: Option<PendingReload>,
    /// Host veths of containers that just left, with when: a stopping
    /// container's cgroup goes before its veth, so such a veth is held for
    /// a moment as a matter of course (logged as an error only later).
    departed: BTreeMap<String, Instant>,
}

/// How long a departed container's veth may outlive it before being held
/// is worth an error (its network is normally torn down within a second).
const VETH_TEARDOWN: Duration = Duration::from_secs(10);

struct PendingReload {
    trigger: &'static str,
    /// The earliest request this reload answers (several can coalesce).
    requested: Instant,
    requested_unix_ns: u64,
    /// The configuration before the reload, put back if the new one does
    /// not compile.
    previous: Config,
    /// Who waits for the outcome, with when each asked.
    waiters: Vec<(mpsc::Sender<ReloadOutcome>, Instant)>,
}

impl Enforcer {
    pub fn new(cfg: Config, file: String, mut datapath: Datapath) -> Self {
        datapath.hold_live_veths(true);
        Enforcer {
            cfg,
            file,
            datapath,
            endpoints: BTreeMap::new(),
            shared: None,
            applies: 0,
            unified: None,
            gate: None,
            pending: None,
            departed: BTreeMap::new(),
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
    /// endpoint change. Returns whether it needs an apply: a guarded port
    /// ([`Input::Port`]) does not, it is attached at once.
    pub fn take(&mut self, input: Input) -> bool {
        let event = match input {
            Input::Reload(req) => {
                let req = *req;
                let previous = std::mem::replace(&mut self.cfg, req.config);
                let waiter = req.reply.map(|tx| (tx, req.requested));
                match &mut self.pending {
                    // Coalesced with one not applied yet: the first one's
                    // configuration is the one to go back to.
                    Some(p) => {
                        p.trigger = req.trigger.name();
                        p.waiters.extend(waiter);
                    }
                    None => {
                        self.pending = Some(PendingReload {
                            trigger: req.trigger.name(),
                            requested: req.requested,
                            requested_unix_ns: req.requested_unix_ns,
                            previous,
                            waiters: waiter.into_iter().collect(),
                        })
                    }
                }
                return true;
            }
            Input::Discovery(event) => *event,
            Input::Scanned => return true,
            Input::Port(port) => {
                self.guard_port(&port);
                return false;
            }
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
                let now = Instant::now();
                self.departed
                    .retain(|_, at| now.duration_since(*at) < VETH_TEARDOWN);
                for v in e.host_veths() {
                    self.departed.insert(v.name.clone(), now);
                }
                ('-', e)
            }
        };
        info!(
            "endpoint {sign}{} [{} endpoints]",
            describe(&ep),
            self.endpoints.len()
        );
        if sign != '-' && !ep.foreign_netns.is_empty() {
            warn!(
                "endpoint {} {}: threads {:?} run in another network namespace than the \
                 container's, where its veth cannot see their traffic: held to the \
                 strictest verdict (no policy applies) until they leave",
                ep.key, ep.name, ep.foreign_netns
            );
        }
        true
    }

    /// A new port of a runtime's bridge, while unclassified containers are
    /// quarantined: its veth gets the programs now, which drop all its
    /// traffic until the apply that lists its container (see
    /// `discovery::ports`). A failure is logged; that apply attaches it.
    fn guard_port(&mut self, port: &Port) {
        if !gate::wanted(&self.cfg) || !self.cfg.discovery.runtimes.contains(&port.runtime) {
            return;
        }
        let veth = Veth {
            ifindex: port.ifindex,
            name: port.name.clone(),
        };
        match self.datapath.guard_port(&veth) {
            Ok(true) => info!(
                "guarding {} (ifindex {}), new on {}: all its traffic dropped until its \
                 container is classified",
                port.name, port.ifindex, port.bridge
            ),
            Ok(false) => {}
            Err(e) => warn!("guarding {}: {e}", port.name),
        }
    }

    /// Compiles the policy for the current configuration and endpoints and
    /// applies it.
    pub fn sync(&mut self) -> Result<ApplyReport, EnforceError> {
        let endpoints: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        let host = host_addresses().map_err(EnforceError::HostAddresses)?;
        let compiled = policy::compile(&self.cfg, &endpoints, &host, &self.datapath.http_key())
            .map_err(|e| match e {
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
        self.datapath.set_conntrack_limits(
            self.cfg.conntrack.timeouts(),
            self.cfg.conntrack.max_per_endpoint,
            self.cfg.conntrack.max_http_per_endpoint,
        );
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
        let id =
            |e: &Endpoint| gate::cgroup_id(&gate::cgroup_dir(&unified, Path::new(&e.cgroup))).ok();
        let (yes, no): (Vec<&Endpoint>, Vec<&Endpoint>) = endpoints
            .iter()
            .partition(|e| classified(e, &self.datapath));
        let ids: BTreeSet<u64> = yes.into_iter().filter_map(id).collect();
        let unclassified: BTreeSet<u64> = no.into_iter().filter_map(id).collect();
        let parents = gate::parents(&self.cfg);
        let gate = self.gate.as_mut().expect("loaded above");
        gate.attach(&parents)?;
        gate.set_classified(&ids, &unclassified)?;
        Ok(())
    }

    /// Runs until the sending side hangs up.
    pub fn run(mut self, rx: Receiver<Input>) {
        // Apply once discovery has seen every container that exists (a node
        // may have none: uplinks and ground rules need no container).
        loop {
            match rx.recv() {
                Ok(Input::Scanned) => break,
                Ok(input) => {
                    self.take(input);
                }
                Err(_) => return self.stop(),
            }
        }
        let mut retry = !self.apply_and_log();
        let mut clock = Instant::now();
        let mut swept = Instant::now();
        loop {
            // Wake at least every second: the conntrack clock, and after a
            // failed apply or attach a retry (on a quiet node no other
            // event may come to fix it).
            let wait = if retry {
                RETRY_INTERVAL.min(CLOCK_INTERVAL)
            } else {
                CLOCK_INTERVAL
            };
            let first = match rx.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return self.stop(),
            };
            if clock.elapsed() >= CLOCK_INTERVAL {
                clock = Instant::now();
                self.keep_conntrack(swept.elapsed() >= SWEEP_INTERVAL);
                if swept.elapsed() >= SWEEP_INTERVAL {
                    swept = Instant::now();
                }
            }
            if first.is_none() && !retry {
                continue;
            }
            let mut changed = false;
            if let Some(first) = first {
                changed |= self.take(first);
                while let Ok(more) = rx.try_recv() {
                    changed |= self.take(more);
                }
            }
            if changed || retry {
                retry = !self.apply_and_log();
            }
        }
    }

    /// Writes the conntrack clock and, with `sweep`, deletes idle entries
    /// (`datapath::conntrack`). A failure is logged: the programs then
    /// judge idleness by a clock that stands still (entries live longer,
    /// never shorter) until the next write succeeds.
    fn keep_conntrack(&mut self, sweep: bool) {
        if let Err(e) = self.datapath.tick_conntrack() {
            warn!("conntrack clock: {e}");
        }
        if sweep {
            if let Err(e) = self.datapath.sweep_connections() {
                warn!("conntrack sweep: {e}");
            }
        }
    }

    /// The daemon stops: `on_stop` decides what stays in the kernel.
    fn stop(mut self) {
        match self.cfg.enforcement.on_stop {
            OnStop::Keep if self.datapath.is_persistent() => info!(
                "on_stop: keep: programs stay attached and maps pinned; enforcement continues \
                 without the daemon (`porin uninstall` removes it)"
            ),
            OnStop::Keep => {}
            OnStop::Detach => {
                let done = self.datapath.remove_everything();
                info!("on_stop: detach: removed {}", done.join("; "));
            }
        }
    }

    /// Compiles and applies, logs the outcome, settles a pending reload;
    /// true when everything was applied and attached.
    pub fn apply_and_log(&mut self) -> bool {
        let result = self.sync();
        let done = Instant::now();
        let ok = match &result {
            Ok(report) => {
                self.count(|c| &c.attach_failures, report.attach_failures.len() as u64);
                self.publish(report);
                let applied = self.datapath.applied();
                let audit = applied
                    .endpoints
                    .values()
                    .filter(|e| e.mode == porin_common::datapath::mode::AUDIT)
                    .count();
                let revoked = if report.revoked.total() > 0 {
                    format!(
                        ", {} connections revoked ({} TCP entries reset, {} entries deleted)",
                        report.revoked.total(),
                        report.revoked.reset,
                        report.revoked.deleted
                    )
                } else {
                    String::new()
                };
                info!(
                    "policy generation {}: {} endpoints enforced ({audit} in audit mode), {} not enforceable, {} policy entries{revoked}{}{}{}{}",
                    report.generation,
                    applied.endpoints.len(),
                    applied.unenforced.len(),
                    report.policy_entries,
                    list(" attached", &report.attached),
                    list(" detached", &report.detached),
                    list(" FAILED to attach", &report.attach_failures),
                    list(" guarding (not classified yet)", &report.guarded),
                );
                let (tearing_down, held): (Vec<&String>, Vec<&String>) =
                    report.held.iter().partition(|v| {
                        self.departed
                            .get(*v)
                            .is_some_and(|at| at.elapsed() < VETH_TEARDOWN)
                    });
                if !tearing_down.is_empty() {
                    info!(
                        "veths {} of containers that just stopped still exist: held (all their \
                         traffic dropped) until they go",
                        join(&tearing_down)
                    );
                }
                if !held.is_empty() {
                    error!(
                        "veths {} still exist but no known container lists them (a container \
                         discovery cannot read, or one whose network is being torn down): they \
                         stay attached with no endpoint entry and all their traffic is dropped",
                        join(&held)
                    );
                }
                report.attach_failures.is_empty()
            }
            Err(e) => {
                self.count(|c| &c.applies_failed, 1);
                error!("{e}; the previously applied policy stays in force");
                false
            }
        };
        self.settle_reload(&result, done);
        ok
    }

    /// Ends a pending reload with the result of the apply that followed it
    /// (`done`: when that apply returned).
    fn settle_reload(&mut self, applied: &Result<ApplyReport, EnforceError>, done: Instant) {
        let revoked = applied.as_ref().map_or(0, |r| r.revoked.total() as u64);
        let Some(mut p) = self.pending.take() else {
            return;
        };
        // A datapath failure is retried with the new file; the reload is
        // settled again by the retry that succeeds.
        let retried = matches!(
            applied,
            Err(EnforceError::Apply(_) | EnforceError::HostAddresses(_))
        );
        let (result, errors) = match applied {
            Ok(_) => (ReloadResult::Applied, String::new()),
            Err(e @ EnforceError::Compile(_)) => {
                // Nothing was written: go back to the configuration that is
                // enforced, so later discovery events apply under it.
                self.cfg = p.previous.clone();
                (
                    ReloadResult::Failed,
                    format!("{e}; the previous configuration stays in force"),
                )
            }
            Err(e) => (
                ReloadResult::Failed,
                format!("{e}; the previous policy stays in force, the new file is retried"),
            ),
        };
        let applied = result == ReloadResult::Applied;
        let (generation, slot) = self
            .shared
            .as_ref()
            .map(|s| {
                let snap = s.snapshot();
                (snap.generation, snap.datapath_slot)
            })
            .unwrap_or((self.applies, self.datapath.generation()));
        let outcome = |requested: Instant| ReloadOutcome {
            result,
            trigger: p.trigger.into(),
            config_file: self.file.clone(),
            requested_unix_ns: p.requested_unix_ns,
            policy_generation: generation,
            datapath_slot: slot,
            enforced_us: if applied {
                done.saturating_duration_since(requested).as_micros() as u64
            } else {
                0
            },
            errors: errors.clone(),
            revoked,
        };
        let first = outcome(p.requested);
        if applied {
            info!(
                "reload enforced in {:.1} ms ({}, policy generation {generation}, datapath slot {slot})",
                first.enforced_us as f64 / 1e3,
                p.trigger
            );
        } else {
            error!("reload ({}) failed: {errors}", p.trigger);
        }
        for (tx, requested) in p.waiters.drain(..) {
            let _ = tx.send(outcome(requested));
        }
        if let Some(s) = &self.shared {
            s.record_reload(first);
        }
        if retried {
            self.pending = Some(p);
        }
    }
}

/// Whether the gate lets `e` through: its network is set up and it has a
/// host veth and every one carries the TC programs; or it shares the host's
/// network (which no veth program judges: the user chose that). A container
/// in its own namespace without any host veth (interfaces it made itself,
/// or a kind of network Porin cannot enforce) stays held back.
fn classified(e: &Endpoint, datapath: &Datapath) -> bool {
    gate_verdict(e, |p| datapath.is_attached(p.ifindex, &p.name))
}

/// [`classified`] with the attachment check given: pure, for the tests.
fn gate_verdict(e: &Endpoint, attached: impl Fn(&HostPeer) -> bool) -> bool {
    if !e.network_ready() {
        return false;
    }
    if e.host_network {
        return true;
    }
    let mut veths = e.host_veths().peekable();
    veths.peek().is_some() && veths.all(attached)
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::discovery::{
        netinfo::{Interface, IpPrefix},
        Runtime,
    };

    fn ep(interfaces: Vec<Interface>, host_network: bool) -> Endpoint {
        Endpoint {
            key: EndpointKey {
                runtime: Runtime::Podman,
                namespace: String::new(),
                id: "a".into(),
            },
            name: "a".into(),
            image: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            cgroup: "/libpod_parent/libpod-a".into(),
            pids: vec![1],
            netns_inode: 1,
            host_network,
            interfaces,
            labels_from: String::new(),
            netns_from: String::new(),
            foreign_netns: Vec::new(),
        }
    }

    fn iface(name: &str, addr: [u8; 4], veth: Option<u32>) -> Interface {
        Interface {
            name: name.into(),
            ifindex: 2,
            mac: None,
            addrs: vec![IpPrefix {
                addr: addr.into(),
                prefix_len: 16,
            }],
            unrouted: vec![],
            host_peer: veth.map(|i| HostPeer {
                ifindex: i,
                name: format!("veth{i}"),
                master: None,
            }),
        }
    }

    #[test]
    fn the_gate_lets_through_only_containers_whose_every_veth_is_enforced() {
        let all = |_: &HostPeer| true;
        let only_10 = |p: &HostPeer| p.ifindex == 10;
        let one = ep(vec![iface("eth0", [10, 88, 0, 2], Some(10))], false);
        assert!(gate_verdict(&one, all));
        let two = ep(
            vec![
                iface("eth0", [10, 88, 0, 2], Some(10)),
                iface("eth1", [10, 89, 0, 2], Some(11)),
            ],
            false,
        );
        assert!(gate_verdict(&two, all));
        assert!(!gate_verdict(&two, only_10), "one veth not enforced yet");
        // Its own namespace, an address (a link-local one is never checked
        // against the host's routes) but no host veth: held back.
        let no_veth = ep(vec![iface("dummy0", [169, 254, 1, 1], None)], false);
        assert!(no_veth.network_ready());
        assert!(!gate_verdict(&no_veth, all));
        // Nothing read (a namespace that could not be opened): held back.
        assert!(!gate_verdict(&ep(vec![], false), all));
        // The host's network: no veth to enforce, by the user's choice.
        assert!(gate_verdict(&ep(vec![], true), all));
    }
}
