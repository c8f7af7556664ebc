//! The quarantine gate: keeps containers that Porin has not classified yet
//! from talking, including containers started while the daemon is down.
//!
//! TC programs are attached per host veth, so a container whose veth
//! appears while the daemon is not running would talk freely. The gate
//! closes that hole one level up: `gate_ingress` / `gate_egress`
//! (`cgroup_skb`, in `ebpf/porin-ebpf/src/gate.rs`) are attached to the
//! runtimes' parent cgroups in the cgroup v2 hierarchy (e.g.
//! `/libpod_parent`, `/machine.slice`), which every new container cgroup is
//! created under, and they drop every packet of a socket whose cgroup (or an
//! ancestor of it) is not in `PORIN_GATE_V1`. The daemon adds a container's
//! cgroup id there once its veths carry the TC programs (the policy then
//! decides), and removes it when the container goes.
//!
//! # Surviving the daemon
//! The map is pinned at `<bpffs>/maps/PORIN_GATE_V1` and reused by the next
//! start, so classified containers keep talking across restarts. The links
//! are `bpf_link`s pinned at `<bpffs>/gate/<cgroup id>_<direction>_<nonce>`:
//! they stay attached without any process. A new daemon attaches its own
//! programs first (a cgroup runs all attached programs and a packet must
//! pass each), pins them, and only then detaches the older links
//! (`BPF_LINK_DETACH`) and removes their pins, so there is no moment without
//! a gate.
//!
//! # Limits
//! - cgroup v2 (unified or hybrid layout) is required; on v1-only hosts the
//!   daemon refuses to start in quarantine mode (see [`require_unified`]).
//! - Only traffic of sockets is seen: packets the kernel sends on the
//!   container's behalf from its own sockets (ICMP echo replies, TCP resets
//!   for closed ports, ARP/ND) pass. No payload of the container's leaves.
//! - A parent that does not exist yet is created when it is a plain
//!   directory (`/libpod_parent`, what the runtime's cgroupfs driver would
//!   create itself); a systemd slice (`*.slice`) is left to systemd and
//!   attached once it exists (see [`Gate::attach`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError},
    programs::{
        cgroup_skb::CgroupSkbAttachType,
        links::{CgroupAttachMode, FdLink},
        CgroupSkb, ProgramError,
    },
    Ebpf, EbpfLoader,
};
use log::{info, warn};

use crate::{
    config::{Config, Mode, Runtime, UnknownWorkloads},
    discovery::cgroup::{CgroupFs, CgroupLayout},
    ebpf,
    kernel::EventsTransport,
    maps,
};

pub const GATE_INGRESS: &str = "gate_ingress";
pub const GATE_EGRESS: &str = "gate_egress";

/// The object's hash, LRU and LPM maps the gate does not use (created with
/// one entry by the gate's loader): all but `PORIN_GATE_V1`.
fn unused_keyed_maps() -> impl Iterator<Item = &'static str> {
    maps::ALL
        .iter()
        .filter(|m| m.is_keyed() && m.name != maps::GATE.name)
        .map(|m| m.name)
}

/// Directory under `bpffs` holding the pinned links.
pub const LINK_DIR: &str = "gate";

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(
        "enforcement.unknown_workloads: quarantine needs the cgroup v2 hierarchy (unified or hybrid layout) to hold back containers Porin has not classified, and this host has cgroup v1 only; set unknown_workloads: allow, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)"
    )]
    NoUnified,
    #[error("loading the gate programs: {0}")]
    Load(#[from] ebpf::LoadError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map `{}`: {op}: {source}", maps::GATE.name)]
    Map {
        op: &'static str,
        #[source]
        source: MapError,
    },
    #[error("attaching `{program}` to cgroup {}: {source}", cgroup.display())]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: ProgramError,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GateError + 'a {
    move |source| GateError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Whether `cfg` asks for the gate: enforce mode with unknown workloads
/// quarantined. With `allow` (or in audit mode) an unclassified container
/// may talk anyway, so nothing is attached and a previous gate is removed.
pub fn wanted(cfg: &Config) -> bool {
    cfg.enforcement.mode == Mode::Enforce
        && cfg.enforcement.unknown_workloads == UnknownWorkloads::Quarantine
}

/// The runtimes' parent cgroups with their default drivers' placement:
/// Podman's cgroupfs (`/libpod_parent`) and systemd (`/machine.slice`)
/// parents, Docker's cgroupfs parent (`/docker`). containerd has no fixed
/// parent (`/<namespace>` with cgroupfs, `system.slice` with systemd, which
/// also holds every system service): name its parents in
/// `enforcement.quarantine_cgroups`.
pub fn default_parents(runtimes: &[Runtime]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for r in runtimes {
        match r {
            Runtime::Podman => out.extend(["/libpod_parent".into(), "/machine.slice".into()]),
            Runtime::Docker => out.push("/docker".into()),
            Runtime::Containerd => {}
        }
    }
    out
}

/// The parents the gate is attached to for `cfg`.
pub fn parents(cfg: &Config) -> Vec<PathBuf> {
    cfg.enforcement
        .quarantine_cgroups
        .clone()
        .unwrap_or_else(|| default_parents(&cfg.discovery.runtimes))
}

/// The cgroup v2 hierarchy's directory, or [`GateError::NoUnified`].
pub fn require_unified(cgroups: &CgroupFs) -> Result<PathBuf, GateError> {
    match cgroups.layout() {
        CgroupLayout::V1 => Err(GateError::NoUnified),
        CgroupLayout::V2 | CgroupLayout::Hybrid => Ok(cgroups.dir().to_owned()),
    }
}

/// The system's cgroup v2 hierarchy (under `/sys/fs/cgroup`), whatever
/// `discovery.cgroup_root` scans: the gate attaches to the real hierarchy.
pub fn system_unified() -> Result<PathBuf, GateError> {
    let fs = CgroupFs::detect(Path::new("/sys/fs/cgroup")).map_err(|_| GateError::NoUnified)?;
    require_unified(&fs)
}

/// A cgroup's id: its directory's inode number in the v2 hierarchy, the
/// value `bpf_skb_cgroup_id` returns for its sockets.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// `rel` (as in `/proc/PID/cgroup`) under the hierarchy directory.
pub fn cgroup_dir(unified: &Path, rel: &Path) -> PathBuf {
    unified.join(rel.strip_prefix("/").unwrap_or(rel))
}

/// Whether a missing parent is created by the gate: a plain directory
/// (what a cgroupfs driver creates with `mkdir -p` anyway), but never a
/// systemd unit's cgroup, which only systemd may create.
pub fn may_create(parent: &Path) -> bool {
    parent
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.ends_with(".slice") && !n.ends_with(".scope"))
}

/// A pinned link's file name: `<cgroup id>_<direction>_<nonce>` (bpffs
/// refuses names with a dot).
pub fn pin_name(id: u64, direction: &str, nonce: &str) -> String {
    format!("{id}_{direction}_{nonce}")
}

/// The cgroup id and nonce of a pin file name written by [`pin_name`].
pub fn parse_pin_name(name: &str) -> Option<(u64, &str)> {
    let mut parts = name.splitn(3, '_');
    let id = parts.next()?.parse().ok()?;
    let dir = parts.next()?;
    let nonce = parts.next()?;
    (dir == "ingress" || dir == "egress").then_some((id, nonce))
}

/// What the gate holds, for `porin status` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateStatus {
    /// Parent cgroups the gate is attached to.
    pub attached: Vec<String>,
    /// Configured parents that do not exist (yet).
    pub missing: Vec<String>,
    /// Container cgroups allowed through.
    pub classified: usize,
}

impl std::fmt::Display for GateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "holding back unclassified containers under {}; {} classified",
            if self.attached.is_empty() {
                "no cgroup".to_string()
            } else {
                self.attached.join(",")
            },
            self.classified
        )?;
        if !self.missing.is_empty() {
            write!(f, "; not existing yet: {}", self.missing.join(","))?;
        }
        Ok(())
    }
}

/// The loaded gate programs and map, and what this daemon attached.
pub struct Gate {
    bpf: Ebpf,
    bpffs: PathBuf,
    unified: PathBuf,
    /// Identifies this daemon's pins among older ones.
    nonce: String,
    /// Parent path → cgroup id, attached by this daemon.
    attached: BTreeMap<PathBuf, u64>,
    missing: BTreeSet<PathBuf>,
    /// Ids in the map that this daemon put there or confirmed.
    classified: BTreeSet<u64>,
    /// Ids found in the pinned map at start, not confirmed yet: kept (so
    /// containers classified before a restart keep talking) until their
    /// cgroup is gone.
    adopted: BTreeSet<u64>,
}

impl Gate {
    /// Loads the programs, with `PORIN_GATE_V1` pinned (or reused) at
    /// `<bpffs>/maps/PORIN_GATE_V1`. Attaches nothing yet.
    pub fn load(bpffs: &Path, unified: &Path) -> Result<Gate, GateError> {
        let pin_dir = bpffs.join("maps");
        fs::create_dir_all(&pin_dir).map_err(io_err("creating", &pin_dir))?;
        let links = bpffs.join(LINK_DIR);
        fs::create_dir_all(&links).map_err(io_err("creating", &links))?;
        let pin = pin_dir.join(maps::GATE.name);
        let mut loader = EbpfLoader::new();
        loader
            .btf(None)
            .map_pin_path(maps::GATE.name, pin.as_path());
        // This loader creates every map of the object, but the gate uses
        // only its own: the large ones are created at their smallest here
        // (until one loader serves the datapath and the gate).
        for name in unused_keyed_maps() {
            loader.map_max_entries(name, 1);
        }
        if ebpf::transport() == EventsTransport::RingBuf {
            // A ring buffer's size is a multiple of the page size.
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            loader.map_max_entries(maps::EVENTS.name, u32::try_from(page).unwrap_or(4096));
        }
        let mut bpf = loader
            .load(&ebpf::object()?)
            .map_err(ebpf::LoadError::Object)?;
        for name in [GATE_INGRESS, GATE_EGRESS] {
            let prog: &mut CgroupSkb = bpf
                .program_mut(name)
                .ok_or(ebpf::LoadError::MissingProgram { name })?
                .try_into()
                .map_err(|_| ebpf::LoadError::WrongProgramType { name })?;
            prog.load()
                .map_err(|source| ebpf::LoadError::Program { name, source })?;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut gate = Gate {
            bpf,
            bpffs: bpffs.to_owned(),
            unified: unified.to_owned(),
            nonce: format!("{}-{}", std::process::id(), now.as_nanos()),
            attached: BTreeMap::new(),
            missing: BTreeSet::new(),
            classified: BTreeSet::new(),
            adopted: BTreeSet::new(),
        };
        gate.adopted = gate.map()?.keys().filter_map(Result::ok).collect();
        if !gate.adopted.is_empty() {
            info!(
                "gate: {} classified cgroups adopted from {}",
                gate.adopted.len(),
                pin.display()
            );
        }
        Ok(gate)
    }

    fn map(&mut self) -> Result<BpfHashMap<&mut MapData, u64, u8>, GateError> {
        maps::open_mut(&mut self.bpf, maps::GATE).map_err(|e| match e {
            maps::OpenError::Missing(name) => ebpf::LoadError::MissingMap { name }.into(),
            maps::OpenError::Map { source, .. } => GateError::Map { op: "open", source },
        })
    }

    /// Attaches the gate to every parent in `parents` not attached yet by
    /// this daemon, replacing older pinned links without a gap, and detaches
    /// pinned links of cgroups no longer listed. A missing plain-directory
    /// parent is created (so the first container ever started there is
    /// gated too); a missing systemd slice is skipped until it exists.
    pub fn attach(&mut self, parents: &[PathBuf]) -> Result<(), GateError> {
        let mut keep = BTreeSet::new();
        for parent in parents {
            let dir = cgroup_dir(&self.unified, parent);
            if !dir.is_dir() {
                // Creating it can fail where the cgroup filesystem is
                // read-only to the daemon (systemd's ProtectControlGroups):
                // then it is missing like a slice, and reported.
                let created = may_create(parent)
                    && match fs::create_dir_all(&dir) {
                        Ok(()) => {
                            info!("gate: created parent cgroup {}", dir.display());
                            true
                        }
                        Err(e) => {
                            warn!("gate: cannot create parent cgroup {}: {e}", dir.display());
                            false
                        }
                    };
                if !created {
                    if self.missing.insert(parent.clone()) {
                        warn!(
                            "gate: parent cgroup {} does not exist yet; containers started there before the daemon sees it are not held back",
                            dir.display()
                        );
                    }
                    continue;
                }
            }
            self.missing.remove(parent);
            let id = cgroup_id(&dir).map_err(io_err("reading", &dir))?;
            keep.insert(id);
            if self.attached.get(parent) == Some(&id) {
                continue;
            }
            self.attach_one(parent, &dir, id)?;
            self.attached.insert(parent.clone(), id);
            info!("gate: attached to {} (cgroup id {id})", dir.display());
        }
        // Pins of cgroups no longer configured (or removed and recreated).
        self.attached.retain(|_, id| keep.contains(id));
        for (id, path) in pins(&self.bpffs)? {
            if !keep.contains(&id) {
                unpin_link(&path)?;
                info!("gate: detached from cgroup id {id}");
            }
        }
        Ok(())
    }

    /// Attaches both programs to `dir` and pins the links, then removes the
    /// older pins of the same cgroup (both stay attached in between).
    fn attach_one(&mut self, parent: &Path, dir: &Path, id: u64) -> Result<(), GateError> {
        let cgroup = fs::File::open(dir).map_err(io_err("opening cgroup", dir))?;
        for (name, kind, direction) in [
            (GATE_INGRESS, CgroupSkbAttachType::Ingress, "ingress"),
            (GATE_EGRESS, CgroupSkbAttachType::Egress, "egress"),
        ] {
            let attach_err = |source| GateError::Attach {
                program: name,
                cgroup: parent.to_owned(),
                source,
            };
            let prog: &mut CgroupSkb = self
                .bpf
                .program_mut(name)
                .ok_or(ebpf::LoadError::MissingProgram { name })?
                .try_into()
                .map_err(|_| ebpf::LoadError::WrongProgramType { name })?;
            // A bpf_link (kernel 5.7+) on a cgroup always shares it with
            // other programs (the kernel attaches links as ALLOW_MULTI and
            // refuses flags), which is what lets old and new overlap.
            let link_id = prog
                .attach(&cgroup, kind, CgroupAttachMode::Single)
                .map_err(attach_err)?;
            let link: FdLink = prog
                .take_link(link_id)
                .map_err(attach_err)?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| {
                    attach_err(ProgramError::IOError(io::Error::other(format!(
                        "not a bpf_link (kernel older than 5.7?): {e}"
                    ))))
                })?;
            let pin = self
                .bpffs
                .join(LINK_DIR)
                .join(pin_name(id, direction, &self.nonce));
            // The pinned link stays attached when the returned handle drops.
            link.pin(&pin).map_err(|e| GateError::Io {
                what: "pinning",
                path: pin.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        }
        for (old, path) in pins(&self.bpffs)? {
            let ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_pin_name)
                .is_some_and(|(_, nonce)| nonce == self.nonce);
            if old == id && !ours {
                unpin_link(&path)?;
            }
        }
        Ok(())
    }

    /// Makes the classified set equal `ids` (new ones inserted, gone ones
    /// deleted). Adopted ids not in `ids` stay while their cgroup exists,
    /// unless they are in `unclassified` (containers discovery reports and
    /// the enforcement does not let through): those are deleted now.
    pub fn set_classified(
        &mut self,
        ids: &BTreeSet<u64>,
        unclassified: &BTreeSet<u64>,
    ) -> Result<(), GateError> {
        let add: Vec<u64> = ids.difference(&self.classified).copied().collect();
        let mut gone: Vec<u64> = self.classified.difference(ids).copied().collect();
        self.adopted.retain(|id| !ids.contains(id));
        // Adopted, but discovery now knows the container and does not
        // classify it: withdrawn at once, not when its cgroup goes.
        // Taken out of `adopted` only once deleted from the map: after a
        // failed delete they are still adopted, so the next call deletes
        // them (out of both sets, they would stay let through).
        let mut withdrawn: Vec<u64> = self.adopted.intersection(unclassified).copied().collect();
        if !self.adopted.is_empty() {
            let live = self.live_cgroups();
            withdrawn.extend(self.adopted.iter().filter(|id| !live.contains(id)));
        }
        gone.extend(&withdrawn);
        let mut map = self.map()?;
        for id in &add {
            map.insert(id, 1, 0).map_err(|source| GateError::Map {
                op: "insert",
                source,
            })?;
        }
        for id in &gone {
            match map.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(GateError::Map {
                        op: "delete",
                        source,
                    })
                }
            }
        }
        for id in &withdrawn {
            self.adopted.remove(id);
        }
        self.classified = ids.clone();
        Ok(())
    }

    /// Ids of the cgroups under the attached parents (four levels deep:
    /// parent, pod, container, the container's own sub-cgroups).
    fn live_cgroups(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<(PathBuf, u32)> = self
            .attached
            .keys()
            .map(|p| (cgroup_dir(&self.unified, p), 0))
            .collect();
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(m) = e.metadata() {
                        out.insert(m.ino());
                    }
                    if depth < 4 {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
        out
    }

    /// The loaded object (for `BPF_PROG_TEST_RUN` in tests).
    pub fn ebpf(&self) -> &Ebpf {
        &self.bpf
    }

    pub fn status(&self) -> GateStatus {
        GateStatus {
            attached: self
                .attached
                .keys()
                .map(|p| p.display().to_string())
                .collect(),
            missing: self
                .missing
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            classified: self.classified.len() + self.adopted.len(),
        }
    }
}

/// Pinned gate links under `<bpffs>/gate`: (cgroup id, pin path).
fn pins(bpffs: &Path) -> Result<Vec<(u64, PathBuf)>, GateError> {
    let dir = bpffs.join(LINK_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", &dir)(e)),
    };
    Ok(entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let (id, _) = parse_pin_name(name.to_str()?)?;
            Some((id, e.path()))
        })
        .collect())
}

/// Detaches the link pinned at `path` and removes the pin. Removing the pin
/// alone would detach it too, but only once the kernel frees the link
/// (deferred past an RCU grace period: measurably later on 5.10), so the
/// link is detached first with `BPF_LINK_DETACH` (5.9+; where it fails the
/// pin's removal still detaches it, later).
fn unpin_link(path: &Path) -> Result<(), GateError> {
    if let Ok(fd) = bpf_obj_get(path) {
        if let Err(e) = bpf_link_detach(&fd) {
            warn!(
                "gate: BPF_LINK_DETACH of {} failed ({e}); it is detached when the kernel frees it",
                path.display()
            );
        }
    }
    fs::remove_file(path).map_err(io_err("unpinning", path))
}

/// `bpf(2)` commands (linux/bpf.h), not wrapped by aya 0.14 for links.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// A file descriptor for the object pinned at `path` (`BPF_OBJ_GET`).
fn bpf_obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags.
    let mut attr = [0u64; 2];
    attr[0] = name.as_ptr() as u64;
    // SAFETY: attr is a valid bpf_attr prefix of the size passed, and
    // `name` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches link `fd` from its hook now (`BPF_LINK_DETACH`).
fn bpf_link_detach(fd: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // union bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let mut attr = [fd.as_raw_fd() as u32, 0];
    // SAFETY: attr is a valid bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub map: bool,
}

/// Detaches the gate everywhere (removing the pins of its links detaches
/// them, as no process holds them) and unpins its map: for `porin
/// uninstall`, and when the configuration no longer quarantines. A gate
/// loaded by a running daemon must be dropped as well.
pub fn uninstall(bpffs: &Path) -> Result<Removed, GateError> {
    let mut removed = Removed::default();
    for (_, path) in pins(bpffs)? {
        unpin_link(&path)?;
        removed.links += 1;
    }
    let dir = bpffs.join(LINK_DIR);
    if dir.is_dir() {
        fs::remove_dir(&dir).map_err(io_err("removing", &dir))?;
    }
    let map = bpffs.join("maps").join(maps::GATE.name);
    match fs::remove_file(&map) {
        Ok(()) => removed.map = true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("unpinning", &map)(e)),
    }
    Ok(removed)
}

/// Whether any gate link is pinned under `bpffs`.
pub fn installed(bpffs: &Path) -> bool {
    pins(bpffs).is_ok_and(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        let s = GateStatus {
            attached: vec!["/libpod_parent".into()],
            missing: vec!["/machine.slice".into()],
            classified: 3,
        };
        assert_eq!(
            s.to_string(),
            "holding back unclassified containers under /libpod_parent; 3 classified; not existing yet: /machine.slice"
        );
    }

    #[test]
    fn pin_names_round_trip() {
        let n = pin_name(4026, "egress", "12-34");
        assert_eq!(n, "4026_egress_12-34");
        assert_eq!(parse_pin_name(&n), Some((4026, "12-34")));
        assert_eq!(parse_pin_name("4026_sideways_1"), None);
        assert_eq!(parse_pin_name("x_ingress_1"), None);
        assert_eq!(parse_pin_name("4026_ingress"), None);
    }

    #[test]
    fn only_plain_directories_are_created() {
        assert!(may_create(Path::new("/libpod_parent")));
        assert!(may_create(Path::new("/porin-t-gate")));
        assert!(!may_create(Path::new("/machine.slice")));
        assert!(!may_create(Path::new("/system.slice/x.scope")));
        assert!(!may_create(Path::new("/")));
    }

    #[test]
    fn default_parents_follow_the_runtimes() {
        assert_eq!(
            default_parents(&[Runtime::Podman]),
            vec![
                PathBuf::from("/libpod_parent"),
                PathBuf::from("/machine.slice")
            ]
        );
        assert!(default_parents(&[Runtime::Containerd]).is_empty());
        assert_eq!(
            default_parents(&[Runtime::Containerd, Runtime::Docker]),
            vec![PathBuf::from("/docker")]
        );
    }

    #[test]
    fn cgroup_dirs_join_under_the_hierarchy() {
        let u = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            cgroup_dir(u, Path::new("/libpod_parent/libpod-ab")),
            PathBuf::from("/sys/fs/cgroup/unified/libpod_parent/libpod-ab")
        );
    }

    #[test]
    fn v1_only_hosts_are_refused() {
        let v1 = CgroupFs::at("/sys/fs/cgroup/systemd".into(), CgroupLayout::V1);
        assert!(matches!(require_unified(&v1), Err(GateError::NoUnified)));
        let hybrid = CgroupFs::at("/sys/fs/cgroup/unified".into(), CgroupLayout::Hybrid);
        assert_eq!(
            require_unified(&hybrid).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }
}
