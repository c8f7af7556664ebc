//! The policy datapath manager: loads `from_container` / `to_container`,
//! keeps the identity-policy maps equal to a compiled policy
//! ([`Compiled`]), and attaches
//! the programs to endpoints' host veths as discovery reports them; and
//! `from_uplink` on the configured uplinks ([`uplink`]).
//!
//! # Update order (why there is no half-written policy)
//! [`Datapath::apply`] goes from the current contents to the new ones in
//! this order:
//! 1. addresses and networks that are new get their identity (nothing that
//!    existed changes meaning);
//! 2. addresses, networks and endpoints whose identity changes are parked on
//!    the reserved identity `UPDATING`, which no policy entry names: while
//!    parked, they match only wildcard entries (which would have matched
//!    their old and their new identity alike), so no flow can pass that
//!    either the old or the new policy denies;
//! 3. the complete new policy is written under the inactive generation, the
//!    active generation in `PORIN_CFG_V1` is flipped with one write, and the
//!    old generation's entries are deleted: every packet is judged by the
//!    old or the new policy, never by a mix;
//! 4. parked entries get their new identity, entries that are gone are
//!    deleted;
//! 5. programs are attached to new endpoints (whose entries exist by now)
//!    and detached from endpoints that went away, then those endpoints'
//!    entries and connections are deleted.
//!
//!    With [`Datapath::hold_live_veths`] (the daemon), an attached veth
//!    that no endpoint lists but that still exists is not detached: its
//!    endpoint entry goes, so its programs drop all its traffic
//!    (`UnknownEndpoint`), until it is gone or listed again. Discovery may
//!    fail to read a running container (its namespace cannot be opened,
//!    issue 17); a veth is never opened up for what discovery cannot read.
//!
//! 6. the deny-cache epoch is bumped ([`Datapath::bump_epoch`]), after
//!    every step above and also when a step failed midway: every drop the
//!    programs cached from the maps as they were before is forgotten, so
//!    a flow the new maps allow passes from its next packet. Until the
//!    bump a cached drop may repeat the old policy's verdict, as an
//!    in-flight packet judged by the old generation would.
//!
//! Established connections keep passing throughout (conntrack). A new
//! connection of a parked address or endpoint may be refused for the
//! moment it is parked (fail closed); the client's retransmission succeeds.
//!
//! # Persistence
//! [`Datapath::load`] with a bpffs directory (the daemon) pins every map and
//! makes attachments that outlive the process; a later load adopts them and
//! its first apply is an ordinary diff against what the maps hold, except
//! for the HTTP maps, which it sweeps with a forced generation flip (see
//! [`pin`] for the layout and the start-up decision, [`persist`] for
//! adoption and removal, [`http`] for the sweep). Without one (tests,
//! benches) everything is private to the object and goes away with it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap as BpfHashMap, LpmTrie, MapError},
    programs::{tc, SchedClassifier, TcAttachType, Xdp},
    Ebpf,
};
use log::{debug, info, warn};
use porin_common::{
    datapath::{
        identity::UPDATING, DatapathConfig, EndpointInfo, Identity, PolicyKey, CONFIG_READY,
    },
    dcache::next_epoch,
    sip::SipKey,
};

use crate::{
    ebpf::{self, LoadError},
    kernel::TcAttach,
    maps::{self, MapDef},
    policy::{diff, Compiled, Diff, Prefix},
};

/// Program names in the eBPF object.
pub const FROM_CONTAINER: &str = "from_container";
pub const TO_CONTAINER: &str = "to_container";

/// Errors of the datapath manager; each names the map or interface.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("map `{map}`: {op}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map `{map}`: {op}: {source}")]
    MapValues {
        map: &'static str,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("getrandom(2) for the HTTP hash key: {0}")]
    Random(#[source] std::io::Error),
    #[error("attaching `{program}` to {ifname} (ifindex {ifindex}): {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        ifindex: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
}

impl From<maps::OpenError> for DatapathError {
    fn from(e: maps::OpenError) -> Self {
        match e {
            maps::OpenError::Missing(name) => LoadError::MissingMap { name }.into(),
            maps::OpenError::Map { name, source } => DatapathError::Map {
                map: name,
                op: "open",
                source,
            },
        }
    }
}

/// How an endpoint's veth is known to the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    pub ifindex: u32,
    pub name: String,
}

/// The loaded programs, their maps, and what is applied.
pub struct Datapath {
    bpf: Ebpf,
    tc: TcAttach,
    generation: u32,
    applied: Compiled,
    /// ifindex → (name, from_container link, to_container link).
    attached: HashMap<u32, Attached>,
    /// Uplink interface name → its `from_uplink` attachment.
    uplinks: BTreeMap<String, uplink::AttachedUplink>,
    /// Configured uplinks whose interface was missing at the last apply
    /// (logged once, not at every retry).
    missing_uplinks: BTreeSet<String>,
    /// Set when maps and attachments outlive the process (`porin run`):
    /// see [`pin`] and [`persist`].
    persist: Option<persist::Persist>,
    /// The generation-bound maps may hold entries `applied` does not list:
    /// adopted from an earlier daemon (whose HTTP rules this process never
    /// saw), or written by an apply that then failed. The next apply flips
    /// the generation even when nothing changed and sweeps the HTTP rules
    /// ([`http`]); cleared by a successful apply.
    sweep: bool,
    /// The HTTP rule hash key in `PORIN_HTTPK_V1` ([`http::ensure_key`]).
    http_key: SipKey,
    /// Keep unlisted veths that still exist attached ([`Self::hold_live_veths`]).
    hold_live: bool,
    /// Conntrack idle timeouts by state, written with the clock
    /// ([`conntrack`]).
    ct_timeouts: [u32; porin_common::ct::STATES],
    /// Most conntrack entries per endpoint (0: no limit).
    ct_max_per_endpoint: u32,
    /// Most HTTP-ruled connections per endpoint (0: no limit).
    ct_max_http_per_endpoint: u32,
    /// Attached veths that are new runtime-bridge ports no endpoint lists
    /// yet ([`Datapath::guard_port`]).
    guarded: BTreeSet<u32>,
    /// HTTP stream state found without its connection at the last sweep
    /// (`conntrack::sweep_http_state`).
    http_orphans: std::collections::HashSet<porin_common::datapath::CtKey>,
}

struct Attached {
    name: String,
    ifindex: u32,
    /// aya's links, or None for a persistent attachment aya does not own
    /// (a pinned TCX link, or a netlink filter found by
    /// [`pin::TC_PRIORITY`] and [`pin::tc_handle`]).
    links: Option<(
        aya::programs::tc::SchedClassifierLinkId,
        aya::programs::tc::SchedClassifierLinkId,
    )>,
}

/// What one [`Datapath::apply`] did, for logs and benchmarks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub policy_entries: usize,
    pub generation: u32,
    /// Veths that carry their endpoint's policy from this apply on: new
    /// attachments, and guarded ports ([`Datapath::guard_port`]) whose
    /// container is listed now.
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    /// Veths that could not be attached (e.g. gone already): their
    /// endpoints stay unenforced until the next apply retries them.
    pub attach_failures: Vec<String>,
    /// Veths no endpoint lists that still exist, kept attached without an
    /// endpoint entry (all their traffic dropped): see
    /// [`Datapath::hold_live_veths`].
    pub held: Vec<String>,
    /// New ports of a runtime's bridge guarded until their container is
    /// classified ([`Datapath::guard_port`]), likewise kept.
    pub guarded: Vec<String>,
    /// Connections the new policy no longer allows ([`conntrack`]).
    pub revoked: conntrack::Revoked,
}

/// What an apply does with an attachment (veth `name` at `ifindex`) whose
/// ifindex the new endpoints do not list under that name (`wanted`: the
/// veth they list at that ifindex, if any; `now`: the ifindex the name has
/// on the host now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unlisted {
    Detach,
    /// Still there and not listed: kept, with no endpoint entry.
    Hold,
}

fn unlisted(ifindex: u32, wanted: Option<&Veth>, now: Option<u32>, hold_live: bool) -> Unlisted {
    if hold_live && wanted.is_none() && now == Some(ifindex) {
        Unlisted::Hold
    } else {
        Unlisted::Detach
    }
}

/// Opens registry entry `$def` (`crate::maps`) of `$bpf` for writing as
/// handle `$ty`, whose key and value types must be the entry's.
macro_rules! map_mut {
    ($bpf:expr, $def:expr, $ty:ty) => {{
        let def = $def;
        let map = $bpf
            .map_mut(def.name)
            .ok_or(LoadError::MissingMap { name: def.name })?;
        let handle: $ty = crate::maps::handle(map, def)?;
        handle
    }};
}

// After `map_mut!`, which they use.
pub mod conntrack;
pub mod gate;
pub mod http;
pub mod persist;
pub mod pin;
pub mod uplink;

impl Datapath {
    /// Loads the programs and initialises the active generation (0, with an
    /// empty policy: everything is denied until the first apply, and nothing
    /// is attached yet).
    ///
    /// With `pins` (the daemon), every map is pinned in that bpffs
    /// directory and attachments outlive the process; what is pinned there
    /// already is adopted, replaced or refused (see [`pin`]). Without
    /// (tests, benches), the maps are private to this object and everything
    /// goes away when it is dropped.
    pub fn load(tc: TcAttach, pins: Option<&std::path::Path>) -> Result<Self, DatapathError> {
        let (mut bpf, found) = match pins {
            None => (ebpf::open()?, None),
            Some(dir) => {
                let (bpf, p) = persist::open(dir)?;
                (bpf, Some(p))
            }
        };
        ebpf::load_program::<SchedClassifier>(&mut bpf, FROM_CONTAINER)?;
        ebpf::load_program::<SchedClassifier>(&mut bpf, TO_CONTAINER)?;
        ebpf::load_program::<Xdp>(&mut bpf, uplink::FROM_UPLINK)?;
        // Without the HTTP stage, HTTP-ruled connections drop (the main
        // programs' tail call fails: `Internal`): their ports are closed,
        // never open to any request.
        if let Err(e) = http::load_stage(&mut bpf) {
            warn!("HTTP stage not loaded, ports with HTTP rules are closed: {e}");
        }
        let mut dp = Datapath {
            bpf,
            tc,
            generation: 0,
            applied: Compiled::default(),
            attached: HashMap::new(),
            uplinks: BTreeMap::new(),
            missing_uplinks: BTreeSet::new(),
            persist: None,
            sweep: false,
            http_key: SipKey::ZERO,
            hold_live: false,
            ct_timeouts: porin_common::ct::DEFAULT_TIMEOUTS,
            ct_max_per_endpoint: porin_common::ct::DEFAULT_MAX_PER_ENDPOINT,
            ct_max_http_per_endpoint: porin_common::ct::DEFAULT_MAX_HTTP_PER_ENDPOINT,
            http_orphans: Default::default(),
            guarded: BTreeSet::new(),
        };
        match found {
            None => dp.set_generation(0)?,
            Some(p) => dp.start_persistent(p)?,
        }
        // Before any rule is written (the first apply): adopted maps keep
        // their key, so the rule keys in them stay valid.
        let (key, kept) = http::ensure_key(&mut dp.bpf)?;
        if pins.is_some() {
            info!(
                "HTTP rule hash key: {}",
                if kept {
                    "kept from the pinned maps"
                } else {
                    "new"
                }
            );
        }
        dp.http_key = key;
        // Whatever the deny cache holds (maps adopted from an earlier run)
        // was made under other maps.
        dp.bump_epoch()?;
        Ok(dp)
    }

    /// Fail closed on veths: from now on an apply does not detach an
    /// attached veth that no endpoint lists while that veth still exists
    /// on the host (same name, same ifindex); it keeps its programs
    /// without an endpoint entry, so all its traffic is dropped, and is
    /// reported in [`ApplyReport::held`]. Detached once it is gone. Off by
    /// default (tests detach by leaving a veth out); the daemon turns it on.
    pub fn hold_live_veths(&mut self, on: bool) {
        self.hold_live = on;
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.bpf
    }

    /// The loaded object, mutable: for tests that seed maps the way a
    /// failed or foreign writer could have left them.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.bpf
    }

    /// The key HTTP rules must be compiled under
    /// ([`crate::policy::compile`]) for this datapath's programs.
    pub fn http_key(&self) -> SipKey {
        self.http_key
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn applied(&self) -> &Compiled {
        &self.applied
    }

    /// Makes the maps equal `new` and the attachments equal `veths` (see the
    /// module notes for the order).
    pub fn apply(&mut self, new: &Compiled, veths: &[Veth]) -> Result<ApplyReport, DatapathError> {
        let old = std::mem::take(&mut self.applied);
        // Restore what is applied if any step fails midway, so the next
        // apply computes its delta from the truth as far as it is known.
        let mut result = self.apply_steps(&old, new, veths);
        // After the maps changed, whether or not every step succeeded.
        if let Err(e) = self.bump_epoch() {
            if result.is_ok() {
                result = Err(e);
            }
        }
        // Last, with the new policy in force: the connections it no longer
        // allows end (a failure fails the apply, which is retried).
        if let Ok(report) = &mut result {
            match self
                .tick_conntrack()
                .and_then(|()| self.revoke_connections(new))
            {
                Ok(r) => report.revoked = r,
                Err(e) => result = Err(e),
            }
        }
        // Counts are by policy number: renumbered policies start at 0.
        if result.is_ok() && old.rules != new.rules {
            if let Err(e) = http::reset_allowed_counts(&mut self.bpf) {
                log::warn!("{e}: HTTP request counts may be credited to the wrong policy");
            }
        }
        self.applied = match &result {
            Ok(_) => new.clone(),
            // What the maps hold now: a failed step may have left some of
            // `new`'s entries (addresses added, identities parked on
            // UPDATING) that `old` does not list; diffing from `old` would
            // leave them, and parked addresses would stay parked if the
            // next config equals `old`. Keeps the rest of `old`'s
            // bookkeeping (names, rules, members) for reports.
            Err(_) => match self.read_back() {
                Ok(held) => Compiled {
                    endpoints: held.endpoints,
                    ip4: held.ip4,
                    ip6: held.ip6,
                    net4: held.net4,
                    net6: held.net6,
                    policy: held.policy,
                    ..old
                },
                Err(e) => {
                    warn!("reading back the maps after a failed apply: {e}");
                    old
                }
            },
        };
        // A failed apply may have written entries of `new` that neither
        // `old` nor a later `Compiled` lists.
        self.sweep = result.is_err();
        if result.is_ok() {
            self.applied_once();
        }
        result
    }

    fn apply_steps(
        &mut self,
        old: &Compiled,
        new: &Compiled,
        veths: &[Veth],
    ) -> Result<ApplyReport, DatapathError> {
        let d = diff(old, new);

        // 1. New addresses and networks.
        write_hash(
            &mut self.bpf,
            maps::IP4,
            "insert",
            d.ip4.add.iter().copied(),
        )?;
        write_hash(
            &mut self.bpf,
            maps::IP6,
            "insert",
            d.ip6.add.iter().copied(),
        )?;
        write_lpm(&mut self.bpf, maps::NET4, &d.net4.add)?;
        write_lpm(&mut self.bpf, maps::NET6, &d.net6.add)?;

        // 2. Park what changes identity (see the module notes).
        self.park(old, &d)?;

        // 3. Policy: new generation, flip, delete the old one. Both
        // deletions go by the generation found in the map, not by what is
        // believed applied: a failed apply may have left entries that no
        // `Compiled` lists, and they must never become active. One walk of
        // the map before writing finds both sets: only this manager writes
        // the policy map (the programs only read it), so what the walk saw
        // under the active generation is what the switch retires, and a
        // second walk after it would cost as much as the writes (one
        // syscall per key). With `sweep` the flip happens even when nothing
        // changed: the HTTP rules are only swept along with one.
        if !d.policy.is_empty() || http::changed(old, new) || self.sweep {
            let next = 1 - self.generation;
            let keys = policy_keys(&mut self.bpf)?;
            let at = |generation: u32| -> Vec<PolicyKey> {
                keys.iter()
                    .filter(|k| u32::from(k.generation) == generation)
                    .copied()
                    .collect()
            };
            let (stale, retired) = (at(next), at(1 - next));
            remove_hash(&mut self.bpf, maps::POLICY, &stale)?;
            // HTTP rule sets of the new generation (`http`).
            let mut swept = http::write_before_flip(&mut self.bpf, new, next, self.sweep)?;
            let entries = new.policy.iter().map(|(k, v)| {
                let key = k.at(next as u8);
                (key, *v)
            });
            write_hash(&mut self.bpf, maps::POLICY, "insert", entries)?;
            self.set_generation(next)?;
            remove_hash(&mut self.bpf, maps::POLICY, &retired)?;
            swept += http::clean_after_flip(&mut self.bpf, old, new, next, self.sweep)?;
            if swept > 0 {
                info!("deleted {swept} HTTP rule entries no applied policy listed");
            }
        }

        // 4. Changed and removed addresses, networks and endpoints.
        write_hash(
            &mut self.bpf,
            maps::IP4,
            "update",
            d.ip4.update.iter().copied(),
        )?;
        write_hash(
            &mut self.bpf,
            maps::IP6,
            "update",
            d.ip6.update.iter().copied(),
        )?;
        remove_hash(&mut self.bpf, maps::IP4, &d.ip4.remove)?;
        remove_hash(&mut self.bpf, maps::IP6, &d.ip6.remove)?;
        write_lpm(&mut self.bpf, maps::NET4, &d.net4.update)?;
        write_lpm(&mut self.bpf, maps::NET6, &d.net6.update)?;
        remove_lpm(&mut self.bpf, maps::NET4, &d.net4.remove)?;
        remove_lpm(&mut self.bpf, maps::NET6, &d.net6.remove)?;
        let endpoints = d.endpoints.add.iter().chain(&d.endpoints.update).copied();
        write_hash(&mut self.bpf, maps::ENDPOINTS, "insert", endpoints)?;
        // The uplink's container-address map: new entries once their
        // endpoint entries exist, gone ones before those are deleted.
        let upep_old = self.upep_old(old);
        self.sync_endpoint_addresses(&upep_old, new, true)?;
        self.sync_endpoint_addresses(&upep_old, new, false)?;

        // 5. Attachments.
        let mut report = ApplyReport {
            policy_entries: new.policy.len(),
            generation: self.generation,
            ..Default::default()
        };
        let wanted: BTreeMap<u32, &Veth> = veths
            .iter()
            .filter(|v| new.endpoints.contains_key(&v.ifindex))
            .map(|v| (v.ifindex, v))
            .collect();
        // Gone, or the ifindex now belongs to another veth (a container
        // went and a new one got its number between two applies): the old
        // attachment is dead, and the old connections must not carry over.
        let mut gone = Vec::new();
        for (i, a) in &self.attached {
            let listed = wanted.get(i).copied();
            if listed.is_some_and(|v| v.name == a.name) {
                // A guarded port whose container is listed now: its
                // programs enforce its endpoint from this apply on.
                if self.guarded.contains(i) {
                    report.attached.push(a.name.clone());
                }
                continue;
            }
            let now = if self.hold_live {
                ifindex_of(&a.name)
            } else {
                None
            };
            match unlisted(*i, listed, now, self.hold_live) {
                Unlisted::Hold if self.guarded.contains(i) => report.guarded.push(a.name.clone()),
                Unlisted::Hold => report.held.push(a.name.clone()),
                Unlisted::Detach => gone.push(*i),
            }
        }
        // A guarded port an endpoint lists now is an endpoint's veth.
        self.guarded
            .retain(|i| !wanted.contains_key(i) && self.attached.contains_key(i));
        let mut reused = Vec::new();
        for ifindex in gone {
            self.guarded.remove(&ifindex);
            if let Some(a) = self.attached.remove(&ifindex) {
                report.detached.push(a.name.clone());
                self.detach(a);
                if wanted.contains_key(&ifindex) {
                    reused.push(ifindex);
                }
            }
        }
        if !reused.is_empty() {
            self.forget_connections(&reused)?;
        }
        for (ifindex, veth) in wanted {
            if self.attached.contains_key(&ifindex) {
                continue;
            }
            match self.attach(veth) {
                Ok(a) => {
                    report.attached.push(veth.name.clone());
                    self.attached.insert(ifindex, a);
                }
                Err(e) => {
                    warn!("{e}");
                    report.attach_failures.push(veth.name.clone());
                }
            }
        }
        // Endpoint entries go last: until here a removed endpoint's veth
        // still had its program, which needs the entry (no entry = drop).
        {
            let mut m = map_mut!(self.bpf, maps::ENDPOINTS, BpfHashMap<_, _, _>);
            for k in &d.endpoints.remove {
                let _ = m.remove(k);
            }
        }
        // Its connections go with it: ifindexes are reused, and a new veth
        // with an old one's number must not inherit its established flows.
        // The programs check conntrack before the endpoint entry, which is
        // safe because of this order: detached (above), endpoint entry
        // deleted, then CT entries; no attached program ever meets a CT
        // entry whose ifindex has no endpoint entry.
        if !d.endpoints.remove.is_empty() {
            self.forget_connections(&d.endpoints.remove)?;
        }
        Ok(report)
    }

    /// Moves every address, network and endpoint whose identity changes in
    /// `d` to `identity::UPDATING` (mode unchanged).
    fn park(&mut self, old: &Compiled, d: &Diff) -> Result<(), DatapathError> {
        fn parked<K: Copy>(&(k, _): &(K, Identity)) -> (K, Identity) {
            (k, UPDATING)
        }
        write_hash(
            &mut self.bpf,
            maps::IP4,
            "park",
            d.ip4.update.iter().map(parked),
        )?;
        write_hash(
            &mut self.bpf,
            maps::IP6,
            "park",
            d.ip6.update.iter().map(parked),
        )?;
        let parked4: Vec<_> = d.net4.update.iter().map(parked).collect();
        let parked6: Vec<_> = d.net6.update.iter().map(parked).collect();
        write_lpm(&mut self.bpf, maps::NET4, &parked4)?;
        write_lpm(&mut self.bpf, maps::NET6, &parked6)?;
        let endpoints = d.endpoints.update.iter().filter_map(|(k, new)| {
            let before = old.endpoints.get(k).copied().unwrap_or(*new);
            (before.identity != new.identity).then_some((
                *k,
                EndpointInfo {
                    identity: UPDATING,
                    ..before
                },
            ))
        });
        write_hash(&mut self.bpf, maps::ENDPOINTS, "park", endpoints)
    }

    /// Deletes the conntrack entries made at the given host veths, IPv4
    /// (`PORIN_CT4_V1`) and IPv6 (`PORIN_CT_V1`).
    fn forget_connections(&mut self, ifindexes: &[u32]) -> Result<(), DatapathError> {
        let at = |ifindex: u32| ifindexes.contains(&ifindex);
        let v4 = purge(&mut self.bpf, maps::CT4, |k| at(k.ifindex))?;
        let v6 = purge(&mut self.bpf, maps::CT6, |k| at(k.ifindex))?;
        purge(&mut self.bpf, maps::CT_COUNTS, |i| at(*i))?;
        debug!("forgot {v4} IPv4 and {v6} IPv6 connections of removed endpoints");
        Ok(())
    }

    fn set_generation(&mut self, generation: u32) -> Result<(), DatapathError> {
        let mut cfg = map_mut!(self.bpf, maps::CONFIG, Array<_, _>);
        // The epoch is rewritten as it is: each write changes one field.
        let current = cfg.get(&0, 0).map_err(map_err(maps::CONFIG.name, "get"))?;
        cfg.set(
            0,
            DatapathConfig {
                generation,
                ready: CONFIG_READY,
                ..current
            },
            0,
        )
        .map_err(map_err(maps::CONFIG.name, "set"))?;
        self.generation = generation;
        Ok(())
    }

    /// Invalidates every drop the programs cached (`PORIN_DCACHE_V1`): the
    /// next epoch, read from the map itself (not remembered here), so it
    /// is new even when the maps outlive this process. Call it after every
    /// change to a map a verdict depends on. Returns the new epoch.
    pub fn bump_epoch(&mut self) -> Result<u32, DatapathError> {
        let mut cfg = map_mut!(self.bpf, maps::CONFIG, Array<_, _>);
        let current = cfg.get(&0, 0).map_err(map_err(maps::CONFIG.name, "get"))?;
        let epoch = next_epoch(current.epoch);
        cfg.set(0, DatapathConfig { epoch, ..current }, 0)
            .map_err(map_err(maps::CONFIG.name, "bump epoch"))?;
        Ok(epoch)
    }

    /// The current deny-cache epoch (`PORIN_CFG_V1`).
    pub fn epoch(&self) -> Result<u32, DatapathError> {
        let cfg: Array<_, _> = maps::open(&self.bpf, maps::CONFIG)?;
        Ok(cfg
            .get(&0, 0)
            .map_err(map_err(maps::CONFIG.name, "get"))?
            .epoch)
    }

    fn attach(&mut self, veth: &Veth) -> Result<Attached, DatapathError> {
        if self.persist.is_some() || self.tc == TcAttach::ClsactNetlink {
            // EEXIST (already there) is fine; other errors show at attach.
            let _ = tc::qdisc_add_clsact(&veth.name);
        }
        let attach = |bpf: &mut Ebpf, program: &'static str, at: TcAttachType| {
            let prog: &mut SchedClassifier = bpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok())
                .ok_or(LoadError::MissingProgram { name: program })?;
            prog.attach(&veth.name, at)
                .map_err(|source| DatapathError::Attach {
                    program,
                    ifname: veth.name.clone(),
                    ifindex: veth.ifindex,
                    source,
                })
        };
        // The interface name must still mean the veth discovery saw.
        let now = ifindex_of(&veth.name);
        if now != Some(veth.ifindex) {
            return Err(DatapathError::Attach {
                program: FROM_CONTAINER,
                ifname: veth.name.clone(),
                ifindex: veth.ifindex,
                source: aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                    call: "if_nametoindex",
                    io_error: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("the name now has ifindex {now:?}"),
                    ),
                }),
            });
        }
        if self.persist.is_some() {
            self.attach_persistent(veth)?;
            info!(
                "attached from_container/to_container to {} (ifindex {}), persistent",
                veth.name, veth.ifindex
            );
            return Ok(Attached {
                name: veth.name.clone(),
                ifindex: veth.ifindex,
                links: None,
            });
        }
        let from = attach(&mut self.bpf, FROM_CONTAINER, TcAttachType::Ingress)?;
        let to = match attach(&mut self.bpf, TO_CONTAINER, TcAttachType::Egress) {
            Ok(to) => to,
            Err(e) => {
                if let Some(p) = self.classifier(FROM_CONTAINER) {
                    let _ = p.detach(from);
                }
                return Err(e);
            }
        };
        info!(
            "attached from_container/to_container to {} (ifindex {})",
            veth.name, veth.ifindex
        );
        Ok(Attached {
            name: veth.name.clone(),
            ifindex: veth.ifindex,
            links: Some((from, to)),
        })
    }

    fn detach(&mut self, a: Attached) {
        // A veth that went away with its container took the attachment with
        // it; detaching then fails harmlessly.
        let Some((from, to)) = a.links else {
            self.detach_persistent(a.ifindex, &a.name);
            debug!("detached from {}", a.name);
            return;
        };
        if let Some(p) = self.classifier(FROM_CONTAINER) {
            let _ = p.detach(from);
        }
        if let Some(p) = self.classifier(TO_CONTAINER) {
            let _ = p.detach(to);
        }
        debug!("detached from {}", a.name);
    }

    fn classifier(&mut self, name: &str) -> Option<&mut SchedClassifier> {
        self.bpf.program_mut(name).and_then(|p| p.try_into().ok())
    }

    /// Attaches the programs to `veth`, a new port of a container runtime's
    /// bridge that no endpoint lists yet (`discovery::ports`): with no
    /// endpoint entry they drop all its traffic until an apply lists its
    /// container. Until then applies keep it attached while it exists (in
    /// [`ApplyReport::guarded`]). Returns whether it was attached now:
    /// not when it already is, nor when its ifindex still has another
    /// veth's attachment or endpoint entry (a number reused before the
    /// apply that clears the old one: attaching now would give the new
    /// veth the old one's identity; that apply attaches it if listed).
    pub fn guard_port(&mut self, veth: &Veth) -> Result<bool, DatapathError> {
        if let Some(a) = self.attached.get(&veth.ifindex) {
            if a.name != veth.name {
                debug!(
                    "not guarding {}: ifindex {} still has {}'s attachment",
                    veth.name, veth.ifindex, a.name
                );
            }
            return Ok(false);
        }
        if self.applied.endpoints.contains_key(&veth.ifindex) {
            debug!(
                "not guarding {}: ifindex {} still has an endpoint entry",
                veth.name, veth.ifindex
            );
            return Ok(false);
        }
        let a = self.attach(veth)?;
        self.attached.insert(veth.ifindex, a);
        self.guarded.insert(veth.ifindex);
        Ok(true)
    }

    /// Names of the veths programs are attached to.
    /// Whether veth `name` with `ifindex` carries the programs now (by
    /// ifindex and name: a name alone may belong to a veth that went away).
    pub fn is_attached(&self, ifindex: u32, name: &str) -> bool {
        self.attached.get(&ifindex).is_some_and(|a| a.name == name)
    }

    pub fn attached(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.attached.values().map(|a| a.name.as_str()).collect();
        v.sort_unstable();
        v
    }
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, op, source }
}

/// Inserts or overwrites `entries` in hash map `name`.
fn write_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    def: MapDef<K, V>,
    op: &'static str,
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<(), DatapathError> {
    let mut m = map_mut!(bpf, def, BpfHashMap<_, _, _>);
    for (k, v) in entries {
        m.insert(k, v, 0).map_err(map_err(def.name, op))?;
    }
    Ok(())
}

/// Deletes every entry of hash map `name` whose key `stale` picks; returns
/// how many.
fn purge<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    def: MapDef<K, V>,
    stale: impl Fn(&K) -> bool,
) -> Result<usize, DatapathError> {
    let mut ct = map_mut!(bpf, def, BpfHashMap<_, _, _>);
    let keys: Vec<K> = ct
        .keys()
        .filter_map(Result::ok)
        .filter(|k| stale(k))
        .collect();
    for k in &keys {
        let _ = ct.remove(k);
    }
    Ok(keys.len())
}

/// [`purge`] for an LPM trie of `N`-byte keys (identity values).
fn purge_lpm<const N: usize>(
    bpf: &mut Ebpf,
    def: MapDef<[u8; N], Identity>,
    stale: impl Fn(&Key<[u8; N]>) -> bool,
) -> Result<usize, DatapathError> {
    let mut t = map_mut!(bpf, def, LpmTrie<_, _, _>);
    let keys: Vec<Key<[u8; N]>> = t
        .keys()
        .filter_map(Result::ok)
        .filter(|k| stale(k))
        .collect();
    for k in &keys {
        let _ = t.remove(k);
    }
    Ok(keys.len())
}

/// Every key of the policy map.
fn policy_keys(bpf: &mut Ebpf) -> Result<Vec<PolicyKey>, DatapathError> {
    let m = map_mut!(bpf, maps::POLICY, BpfHashMap<_, _, _>);
    Ok(m.keys().filter_map(Result::ok).collect())
}

/// Deletes `keys` from hash map `name`; a key that is already gone is fine.
fn remove_hash<K: aya::Pod, V: aya::Pod>(
    bpf: &mut Ebpf,
    def: MapDef<K, V>,
    keys: &[K],
) -> Result<(), DatapathError> {
    let mut m = map_mut!(bpf, def, BpfHashMap<_, _, _>);
    for k in keys {
        let _ = m.remove(k);
    }
    Ok(())
}

fn write_lpm<const N: usize>(
    bpf: &mut Ebpf,
    def: MapDef<[u8; N], Identity>,
    entries: &[(Prefix<N>, Identity)],
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut m = map_mut!(bpf, def, LpmTrie<_, _, _>);
    for (p, id) in entries {
        m.insert(&Key::new(u32::from(p.len), p.addr), id, 0)
            .map_err(map_err(def.name, "insert"))?;
    }
    Ok(())
}

fn remove_lpm<const N: usize>(
    bpf: &mut Ebpf,
    def: MapDef<[u8; N], Identity>,
    keys: &[Prefix<N>],
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut m = map_mut!(bpf, def, LpmTrie<_, _, _>);
    for p in keys {
        let _ = m.remove(&Key::new(u32::from(p.len), p.addr));
    }
    Ok(())
}

/// `if_nametoindex`, None when there is no such interface.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The name of interface `ifindex` on the host, or `ifindex N` when it has
/// none (gone).
pub fn veth_name(ifindex: u32) -> String {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_unlisted_veth_is_held_only_when_asked_and_still_the_same() {
        let other = Veth {
            ifindex: 7,
            name: "veth-new".into(),
        };
        // Still there, listed nowhere: held by the daemon, detached by tests.
        assert_eq!(unlisted(7, None, Some(7), true), Unlisted::Hold);
        assert_eq!(unlisted(7, None, Some(7), false), Unlisted::Detach);
        // Gone, or its name now has another ifindex: nothing to hold.
        assert_eq!(unlisted(7, None, None, true), Unlisted::Detach);
        assert_eq!(unlisted(7, None, Some(9), true), Unlisted::Detach);
        // The ifindex belongs to another veth now: the old attachment is dead.
        assert_eq!(unlisted(7, Some(&other), Some(7), true), Unlisted::Detach);
    }
}
