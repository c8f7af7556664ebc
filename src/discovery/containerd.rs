//! containerd's on-disk state to [`RuntimeMeta`].
//!
//! Two places, per daemon ([`ContainerdInstance`]):
//! - the metadata database `<root_dir>/io.containerd.metadata.v1.bolt/meta.db`
//!   (BoltDB): bucket path `v1/<namespace>/containers/<id>`, with the
//!   key `image` and a `labels` sub-bucket. It holds every container,
//!   running or not.
//! - the task bundle `<state_dir>/io.containerd.runtime.v2.task/<ns>/<id>/`,
//!   present while the task runs: `config.json` (the OCI spec, whose
//!   `annotations` we take) and `init.pid`.
//!
//! containerd containers have no name apart from their id, so the id is the
//! name. When there is no database, or it does not list the container, a
//! running task's bundle annotations stand in for the labels (`ctr run
//! --label` copies labels there). A database that exists but cannot be read
//! is an error (the container stays unclassified until a retry reads it):
//! annotations may differ from the labels, and an identity must not depend
//! on which file happened to be readable.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::config::ContainerdInstance;

use super::bolt::{Bolt, Bucket, Value};
use super::state::StateError;
use super::RuntimeMeta;

const META_DB: &str = "io.containerd.metadata.v1.bolt/meta.db";
/// Task bundle roots: the v2 shim runtime, then the legacy v1 `linux`
/// runtime that containerd 1.x still offers.
const TASK_DIRS: &[&str] = &[
    "io.containerd.runtime.v2.task",
    "io.containerd.runtime.v1.linux",
];
/// containerd's identifier length limit.
const MAX_IDENTIFIER: usize = 76;

/// One container as the bulk reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdContainer {
    pub namespace: String,
    pub id: String,
    pub meta: RuntimeMeta,
    /// The task's first process, when a task runs.
    pub init_pid: Option<u32>,
}

/// The metadata database of `instance`.
pub fn meta_db_path(instance: &ContainerdInstance) -> PathBuf {
    instance.root_dir.join(META_DB)
}

/// What containerd keeps about container `id` in `namespace`. This reads
/// the whole metadata database: when asking about many containers, use
/// [`read_containerd_all`].
pub fn read_containerd(
    instance: &ContainerdInstance,
    namespace: &str,
    id: &str,
) -> Result<RuntimeMeta, StateError> {
    check_identifier(namespace)?;
    check_identifier(id)?;
    let db_path = meta_db_path(instance);
    let from_db = open_db(&db_path)
        .map(|db| db.and_then(|db| container(&db, namespace, id).map(|c| container_meta(id, c))));
    let bundle = match bundle_dir(instance, namespace, id) {
        Some(dir) => Some((read_annotations(&dir)?, dir)),
        None => None,
    };
    match (from_db, bundle) {
        (Ok(Some(mut meta)), bundle) => {
            meta.annotations = bundle.map(|(a, _)| a).unwrap_or_default();
            meta.source = db_path.display().to_string();
            Ok(meta)
        }
        // A database that exists but cannot be read is an error, not a
        // reason to classify by annotations: they may hold keys the real
        // labels do not, so the container could flap into another group
        // (and its policy) while the file is being rewritten. The caller
        // retries; until then the container has no identity.
        (Err(e), _) => Err(e),
        (Ok(None), Some((annotations, dir))) => Ok(meta_from_bundle(id, annotations, &dir)),
        (Ok(None), None) => Err(StateError::missing(
            &db_path,
            format!("no container `{id}` in namespace `{namespace}` and no running task"),
        )),
    }
}

/// Every container of every namespace in `instance`'s metadata database,
/// plus running tasks the database does not list (see the module notes).
/// One read of the database; one bundle read per running task.
pub fn read_containerd_all(
    instance: &ContainerdInstance,
) -> Result<Vec<ContainerdContainer>, StateError> {
    let db_path = meta_db_path(instance);
    let mut out = Vec::new();
    if let Some(db) = open_db(&db_path)? {
        if let Some(v1) = db.root().bucket(b"v1") {
            for (ns, value) in v1.iter() {
                let (Value::Bucket(ns_bucket), Ok(ns)) = (value, std::str::from_utf8(ns)) else {
                    continue;
                };
                let Some(containers) = ns_bucket.bucket(b"containers") else {
                    continue;
                };
                for (id, value) in containers.iter() {
                    let (Value::Bucket(c), Ok(id)) = (value, std::str::from_utf8(id)) else {
                        continue;
                    };
                    out.push(ContainerdContainer {
                        namespace: ns.to_owned(),
                        id: id.to_owned(),
                        meta: RuntimeMeta {
                            source: db_path.display().to_string(),
                            ..container_meta(id, c)
                        },
                        init_pid: None,
                    });
                }
            }
        }
    }
    for c in &mut out {
        if let Some(dir) = bundle_dir(instance, &c.namespace, &c.id) {
            (c.meta.annotations, c.init_pid) = bundle_or_warn(&dir);
        }
    }
    for (namespace, id, dir) in running_tasks(instance)? {
        if out.iter().any(|c| c.namespace == namespace && c.id == id) {
            continue;
        }
        let (annotations, init_pid) = bundle_or_warn(&dir);
        out.push(ContainerdContainer {
            meta: meta_from_bundle(&id, annotations, &dir),
            namespace,
            id,
            init_pid,
        });
    }
    Ok(out)
}

/// A bundle's annotations and init pid; what cannot be read is logged and
/// left empty, so one damaged bundle does not hide the other containers.
fn bundle_or_warn(dir: &Path) -> (BTreeMap<String, String>, Option<u32>) {
    let annotations = read_annotations(dir).unwrap_or_else(|e| {
        log::warn!("{e}");
        BTreeMap::new()
    });
    let pid = read_init_pid(dir).unwrap_or_else(|e| {
        log::warn!("{e}");
        None
    });
    (annotations, pid)
}

/// Whether container `id` in `namespace` has a running task (its bundle
/// exists). Confirms that a `/<ns>/<id>` cgroup belongs to containerd.
pub fn task_exists(instance: &ContainerdInstance, namespace: &str, id: &str) -> bool {
    check_identifier(namespace).is_ok()
        && check_identifier(id).is_ok()
        && bundle_dir(instance, namespace, id).is_some()
}

/// The task's first process, from the bundle's `init.pid`; `None` without
/// a running task.
pub fn init_pid(
    instance: &ContainerdInstance,
    namespace: &str,
    id: &str,
) -> Result<Option<u32>, StateError> {
    check_identifier(namespace)?;
    check_identifier(id)?;
    match bundle_dir(instance, namespace, id) {
        Some(dir) => read_init_pid(&dir),
        None => Ok(None),
    }
}

/// containerd's identifier rule (alphanumerics joined by single `.`, `_`
/// or `-`). Namespaces and ids come from cgroup paths here; checking them
/// also keeps `..` and `/` out of the paths built from them.
fn check_identifier(s: &str) -> Result<(), StateError> {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    let ok = !s.is_empty()
        && s.len() <= MAX_IDENTIFIER
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || b"._-".contains(b))
        && !bytes.windows(2).any(|w| !alnum(&w[0]) && !alnum(&w[1]));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadIdentifier(s.to_owned()))
    }
}

/// The database, or `None` when this containerd never created one.
fn open_db(path: &Path) -> Result<Option<Bolt>, StateError> {
    match Bolt::open(path) {
        Ok(db) => Ok(Some(db)),
        Err(super::bolt::BoltError::Io { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn container<'a>(db: &'a Bolt, namespace: &str, id: &str) -> Option<Bucket<'a>> {
    db.root()
        .bucket(b"v1")?
        .bucket(namespace.as_bytes())?
        .bucket(b"containers")?
        .bucket(id.as_bytes())
}

/// Name, image and labels from a container's bucket.
fn container_meta(id: &str, c: Bucket<'_>) -> RuntimeMeta {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let labels = c
        .bucket(b"labels")
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| match v {
                    Value::Data(v) => Some((text(k), text(v))),
                    Value::Bucket(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    RuntimeMeta {
        name: id.to_owned(),
        image: c.get(b"image").map(text).unwrap_or_default(),
        labels,
        ..RuntimeMeta::default()
    }
}

/// A container only its running task's bundle (`dir`) describes: its
/// annotations stand in for labels.
fn meta_from_bundle(id: &str, annotations: BTreeMap<String, String>, dir: &Path) -> RuntimeMeta {
    RuntimeMeta {
        source: format!("{} (annotations)", dir.join("config.json").display()),
        name: id.to_owned(),
        image: String::new(),
        labels: annotations.clone(),
        annotations,
        ..RuntimeMeta::default()
    }
}

/// The running task's bundle directory, if there is one.
fn bundle_dir(instance: &ContainerdInstance, namespace: &str, id: &str) -> Option<PathBuf> {
    TASK_DIRS
        .iter()
        .map(|t| instance.state_dir.join(t).join(namespace).join(id))
        .find(|dir| dir.is_dir())
}

/// Every bundle under the task directories: (namespace, id, directory).
fn running_tasks(
    instance: &ContainerdInstance,
) -> Result<Vec<(String, String, PathBuf)>, StateError> {
    let mut out = Vec::new();
    for task_dir in TASK_DIRS.iter().map(|t| instance.state_dir.join(t)) {
        for ns in sub_dirs(&task_dir)? {
            for id in sub_dirs(&task_dir.join(&ns))? {
                let dir = task_dir.join(&ns).join(&id);
                out.push((ns.clone(), id, dir));
            }
        }
    }
    Ok(out)
}

/// Names of the valid-identifier directories in `dir`; none when `dir`
/// does not exist.
fn sub_dirs(dir: &Path) -> Result<Vec<String>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) && check_identifier(&name).is_ok() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The bundle's `config.json` annotations. A bundle without config.json
/// (a task being created or torn down) has none.
fn read_annotations(bundle: &Path) -> Result<BTreeMap<String, String>, StateError> {
    let path = bundle.join("config.json");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(StateError::io(&path, e)),
    };
    let spec: Spec = serde_json::from_slice(&bytes)
        .map_err(|e| StateError::json(&path, "OCI runtime spec", e))?;
    Ok(spec.annotations.unwrap_or_default())
}

/// The bundle's `init.pid` (written by the shim once the task started).
fn read_init_pid(bundle: &Path) -> Result<Option<u32>, StateError> {
    let path = bundle.join("init.pid");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io(&path, e)),
    };
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => Err(StateError::invalid(
            &path,
            format!("`{}` is not a process id", text.trim()),
        )),
    }
}

#[cfg(test)]
mod tests;
