//! One discovery pass: cgroups, then runtime metadata, then network.
//!
//! The scanner is what `porin endpoints` runs once and what the watch loop
//! runs on every wake-up. Metadata and network information are cached per
//! container and re-read only for containers that are new, not ready yet,
//! or whose namespace source changed, and on a full refresh (the periodic
//! resync), so a scan of a busy node stays cheap.
//!
//! # Where the network is read from
//! A container's network namespace comes from its runtime's own record
//! ([`NetnsRecord`]): the namespace file the runtime keeps, else the init
//! process it recorded (which must be in the container's cgroup: a stale
//! record is not believed). Only for containers whose runtime keeps no
//! record (a runtime not enabled, Podman without its database) is
//! it the lowest PID in the cgroup. The processes in the cgroup are the
//! container's to shape: a leader that ends its main thread is a zombie
//! without namespaces while its other threads talk on (issue 17). A
//! process's namespace is read through a live thread when its leader has
//! none ([`netinfo::open_netns`]). A container whose namespace cannot be
//! read stays pending; what the enforcement does with its veth meanwhile
//! is in `crate::enforce` (it is never detached while it exists).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use log::debug;

use super::{
    cgroup::{CgroupError, CgroupFs, ContainerCgroup},
    containerd::{self, ContainerdInstance},
    docker,
    endpoint::{short_id, Endpoint, EndpointKey},
    netinfo::{self, NetInfo, NetnsSource},
    podman, NetnsRecord, Runtime, RuntimeMeta,
};
use crate::config;

/// Why a scan could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("scanning the cgroup hierarchy {dir}: {source}")]
    Walk {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A container found in the cgroups that is not ready to be reported yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// What is known so far.
    pub endpoint: Endpoint,
    /// Why it is not ready, for logs and `porin endpoints`.
    pub reason: String,
}

/// The result of one pass.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub ready: Vec<Endpoint>,
    pub pending: Vec<Pending>,
    /// Directories to watch for new containers.
    pub dirs: Vec<PathBuf>,
}

/// What is cached per container between scans.
#[derive(Clone, Debug)]
struct Cached {
    meta: RuntimeMeta,
    /// Where the network information was read from.
    source: NetnsSource,
    net: NetInfo,
}

/// Scans the node for containers. See the module notes.
pub struct Scanner {
    cgroups: CgroupFs,
    runtimes: Vec<Runtime>,
    podman_graphroots: Vec<PathBuf>,
    docker_root: PathBuf,
    containerd: Vec<ContainerdInstance>,
    cache: HashMap<EndpointKey, Cached>,
}

impl Scanner {
    /// A scanner for the node as `cfg` describes it (detects the cgroup
    /// layout under `cfg.cgroup_root`).
    pub fn new(cfg: &config::Discovery) -> Result<Self, ScanError> {
        Ok(Self::with_cgroups(CgroupFs::detect(&cfg.cgroup_root)?, cfg))
    }

    /// A scanner over an explicit hierarchy (tests use fixture trees).
    pub fn with_cgroups(cgroups: CgroupFs, cfg: &config::Discovery) -> Self {
        Scanner {
            cgroups,
            runtimes: cfg.runtimes.iter().copied().map(runtime_of).collect(),
            podman_graphroots: cfg.podman_graphroots.clone(),
            docker_root: cfg.docker_root.clone(),
            containerd: cfg.containerd.clone(),
            cache: HashMap::new(),
        }
    }

    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    /// One pass. With `refresh`, cached metadata and network information
    /// are re-read for every container (the periodic resync).
    pub fn scan(&mut self, refresh: bool) -> Result<ScanOutcome, ScanError> {
        let containerd_on = self.runtimes.contains(&Runtime::Containerd);
        let instances = &self.containerd;
        let confirm = |ns: &str, id: &str| {
            containerd_on && instances.iter().any(|i| containerd::task_exists(i, ns, id))
        };
        let scan = self
            .cgroups
            .scan_with(&confirm)
            .map_err(|source| ScanError::Walk {
                dir: self.cgroups.dir().to_path_buf(),
                source,
            })?;

        let mut podman_meta: Option<Result<HashMap<String, RuntimeMeta>, String>> = None;
        let mut outcome = ScanOutcome {
            dirs: scan.dirs,
            ..Default::default()
        };
        let mut seen = HashSet::new();
        for cg in scan.containers {
            let key = key_of(&cg);
            seen.insert(key.clone());
            let cached = self
                .cache
                .get(&key)
                .filter(|c| {
                    !refresh && netns_source(&c.meta.netns, &cg.pids) == Ok(c.source.clone())
                })
                .cloned();
            let result = match cached {
                Some(c) => Ok(c),
                None => self.read(&key, &cg.pids, &mut podman_meta),
            };
            match result {
                Ok(c) => {
                    let ep = endpoint(key.clone(), &cg, &c);
                    self.cache.insert(key, c);
                    if ep.network_ready() {
                        outcome.ready.push(ep);
                    } else {
                        self.cache.remove(&ep.key);
                        outcome.pending.push(Pending {
                            reason: "network not configured yet (no address)".into(),
                            endpoint: ep,
                        });
                    }
                }
                Err(reason) => {
                    self.cache.remove(&key);
                    let bare = Cached {
                        meta: fallback_meta(&key),
                        source: NetnsSource::Process(0),
                        net: NetInfo::default(),
                    };
                    outcome.pending.push(Pending {
                        endpoint: endpoint(key, &cg, &bare),
                        reason,
                    });
                }
            }
        }
        self.cache.retain(|k, _| seen.contains(k));
        Ok(outcome)
    }

    /// Reads metadata and network information of one container.
    fn read(
        &self,
        key: &EndpointKey,
        pids: &[u32],
        podman_meta: &mut Option<Result<HashMap<String, RuntimeMeta>, String>>,
    ) -> Result<Cached, String> {
        if pids.is_empty() {
            return Err("no process in its cgroup yet".into());
        }
        let meta = if self.runtimes.contains(&key.runtime) {
            self.meta(key, podman_meta)?
        } else {
            debug!(
                "{key}: runtime {} not enabled in the config: no metadata",
                key.runtime
            );
            fallback_meta(key)
        };
        let source = netns_source(&meta.netns, pids)?;
        let net = netinfo::net_info_of(&source).map_err(|e| e.to_string())?;
        Ok(Cached { meta, source, net })
    }

    fn meta(
        &self,
        key: &EndpointKey,
        podman_meta: &mut Option<Result<HashMap<String, RuntimeMeta>, String>>,
    ) -> Result<RuntimeMeta, String> {
        match key.runtime {
            Runtime::Podman => {
                // One read of Podman's database per scan, however many
                // containers need it.
                let all = podman_meta.get_or_insert_with(|| self.read_podman());
                match all {
                    Ok(map) => map.get(&key.id).cloned().ok_or_else(|| {
                        format!(
                            "Podman's state does not list container {} yet",
                            short_id(&key.id)
                        )
                    }),
                    Err(e) => Err(e.clone()),
                }
            }
            Runtime::Containerd => {
                let mut last = String::from("no containerd instance configured");
                for instance in &self.containerd {
                    if !containerd::task_exists(instance, &key.namespace, &key.id) {
                        continue;
                    }
                    let read = containerd::read_containerd(instance, &key.namespace, &key.id)
                        .and_then(|meta| {
                            let init_pid = containerd::init_pid(instance, &key.namespace, &key.id)?;
                            Ok(RuntimeMeta {
                                netns: NetnsRecord {
                                    init_pid,
                                    ..meta.netns.clone()
                                },
                                ..meta
                            })
                        });
                    match read {
                        Ok(meta) => return Ok(meta),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
            Runtime::Docker => {
                docker::read_docker(&self.docker_root, &key.id).map_err(|e| e.to_string())
            }
        }
    }

    fn read_podman(&self) -> Result<HashMap<String, RuntimeMeta>, String> {
        let mut all = HashMap::new();
        for root in &self.podman_graphroots {
            all.extend(podman::read_podman(root).map_err(|e| e.to_string())?);
        }
        Ok(all)
    }
}

fn runtime_of(r: config::Runtime) -> Runtime {
    match r {
        config::Runtime::Podman => Runtime::Podman,
        config::Runtime::Containerd => Runtime::Containerd,
        config::Runtime::Docker => Runtime::Docker,
    }
}

fn key_of(cg: &ContainerCgroup) -> EndpointKey {
    EndpointKey {
        runtime: cg.m.runtime,
        namespace: cg.m.namespace.clone().unwrap_or_default(),
        id: cg.m.id.clone(),
    }
}

/// Where to read a container's network from, given its runtime's record
/// and the processes in its cgroup (see the module notes): the recorded
/// namespace file, else the recorded init process if it is in the cgroup,
/// else (no record) the lowest PID in the cgroup.
fn netns_source(record: &NetnsRecord, pids: &[u32]) -> Result<NetnsSource, String> {
    if let Some(path) = &record.path {
        return Ok(NetnsSource::Path(path.clone()));
    }
    match record.init_pid {
        Some(pid) if pids.contains(&pid) => Ok(NetnsSource::Process(pid)),
        Some(pid) => Err(format!(
            "its runtime's init process {pid} is not in its cgroup (state not updated yet?)"
        )),
        None => pids
            .first()
            .map(|&pid| NetnsSource::Process(pid))
            .ok_or_else(|| "no process in its cgroup yet".into()),
    }
}

/// Metadata for a container whose runtime state is not read: its short id
/// as name, nothing else.
fn fallback_meta(key: &EndpointKey) -> RuntimeMeta {
    RuntimeMeta {
        name: short_id(&key.id).to_string(),
        ..Default::default()
    }
}

fn endpoint(key: EndpointKey, cg: &ContainerCgroup, c: &Cached) -> Endpoint {
    Endpoint {
        key,
        name: c.meta.name.clone(),
        image: c.meta.image.clone(),
        labels: c.meta.labels.clone(),
        annotations: c.meta.annotations.clone(),
        cgroup: cg.path.clone(),
        pids: cg.pids.clone(),
        netns_inode: c.net.netns_inode,
        host_network: c.net.host_network,
        interfaces: c.net.interfaces.clone(),
        labels_from: c.meta.source.clone(),
        netns_from: netns_from(&c.source, &c.meta.netns),
        foreign_netns: if c.net.netns_inode == 0 {
            Vec::new()
        } else {
            foreign_netns(&cg.pids, c.net.netns_inode)
        },
    }
}

/// The threads of `pids` whose network namespace is not `own` (inode).
/// Read afresh at every scan, unlike the cached network information: a
/// process may move at any time. Threads are checked one by one, since a
/// thread can `unshare(CLONE_NEWNET)` alone. A thread that has gone (or
/// a zombie leader, which has no namespaces) says nothing; a namespace
/// that exists but cannot be read counts as another one (fail closed).
/// Nor does one in the host's namespace (the daemon's own): a runtime's
/// `exec` helper is there for a moment after it joined the container's
/// cgroup and before it joins its namespaces, and an unprivileged
/// container cannot enter it.
fn foreign_netns(pids: &[u32], own: u64) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    // The daemon's own namespace never changes: read once, not per container.
    static HOST: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let host = *HOST.get_or_init(|| std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino()));
    let mut out = Vec::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            match std::fs::metadata(task.path().join("ns/net")) {
                Ok(m) if m.ino() != own && m.ino() != host => out.push(tid),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => out.push(tid),
            }
        }
    }
    out.sort_unstable();
    out
}

/// [`Endpoint::netns_from`] for a namespace read from `source`.
fn netns_from(source: &NetnsSource, record: &NetnsRecord) -> String {
    match source {
        NetnsSource::Path(p) => format!("runtime record: {}", p.display()),
        NetnsSource::Process(0) => String::new(),
        NetnsSource::Process(pid) if record.init_pid == Some(*pid) => {
            format!("runtime record: init pid {pid}")
        }
        NetnsSource::Process(pid) => format!("lowest pid {pid} in its cgroup (no runtime record)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_say_where_their_namespace_was_read_from() {
        let record = NetnsRecord {
            path: None,
            init_pid: Some(7),
        };
        let file = NetnsSource::Path("/run/netns/netns-1".into());
        assert_eq!(
            netns_from(&file, &record),
            "runtime record: /run/netns/netns-1"
        );
        assert_eq!(
            netns_from(&NetnsSource::Process(7), &record),
            "runtime record: init pid 7"
        );
        assert_eq!(
            netns_from(&NetnsSource::Process(3), &NetnsRecord::default()),
            "lowest pid 3 in its cgroup (no runtime record)"
        );
    }

    #[test]
    fn the_runtimes_record_wins_over_the_cgroups_processes() {
        let path = NetnsRecord {
            path: Some("/run/netns/netns-1".into()),
            init_pid: Some(7),
        };
        assert_eq!(
            netns_source(&path, &[3, 7]),
            Ok(NetnsSource::Path("/run/netns/netns-1".into()))
        );
        let init = NetnsRecord {
            path: None,
            init_pid: Some(7),
        };
        assert_eq!(netns_source(&init, &[3, 7]), Ok(NetnsSource::Process(7)));
        // Not in the cgroup: a stale record is not believed, nor replaced
        // by a process the container controls.
        assert!(netns_source(&init, &[3, 8]).is_err());
        assert!(netns_source(&init, &[]).is_err());
        // No record: the lowest PID.
        let none = NetnsRecord::default();
        assert_eq!(netns_source(&none, &[3, 7]), Ok(NetnsSource::Process(3)));
        assert!(netns_source(&none, &[]).is_err());
    }
}
