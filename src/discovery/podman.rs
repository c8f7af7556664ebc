//! Podman's on-disk state to [`RuntimeMeta`], for every container at once.
//!
//! Podman 4 keeps each container's configuration in its BoltDB state
//! database, `<graphroot>/libpod/bolt_state.db`: bucket `ctr`, one
//! sub-bucket per container id, key `config` holding JSON with `name`,
//! `labels`, `rootfsImageName`, `RawImageName` and the OCI `spec` (whose
//! `annotations` we take). Where the container's network namespace is
//! comes from the same bucket ([`NetnsRecord`]): key `netns`, the path of
//! the namespace file Podman created (absent for `--network host` and for
//! containers joining another's namespace), and key `state`, JSON whose
//! `pid` is the container's init process while it runs.
//!
//! Podman 5 creates an SQLite database instead (`<graphroot>/db.sql`, in
//! WAL mode in some versions; read by [`super::sqlite`] without locks): table `ContainerConfig`
//! (`ID`, `JSON`: the same config JSON as BoltDB's `config` key) and table
//! `ContainerState` (`ID`, `JSON`: the state, whose `netns` and `pid` are
//! the namespace record). Podman 5 keeps using an existing BoltDB, so that
//! one wins when both are there.
//!
//! Without either database, c/storage's `<driver>-containers/containers.json`
//! still names each container and its image (no labels or annotations).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::bolt::{Bolt, Value};
use super::sqlite::Sqlite;
use super::state::StateError;
use super::{NetnsRecord, RuntimeMeta};

const BOLT_DB: &str = "libpod/bolt_state.db";
/// Beside `libpod/`, not in it (seen with Podman 5.4: `tests/fixtures/podman5`).
const SQLITE_DB: &str = "db.sql";
const STORAGE_FILE: &str = "containers.json";

/// Every container Podman knows under `graphroot`, by full container id.
/// No state at all (Podman never ran there) is an empty map.
pub fn read_podman(graphroot: &Path) -> Result<HashMap<String, RuntimeMeta>, StateError> {
    let bolt = graphroot.join(BOLT_DB);
    // Podman 5 keeps using an existing BoltDB, so it wins over db.sql.
    if present(&bolt)? {
        return read_bolt(&bolt);
    }
    let sqlite = graphroot.join(SQLITE_DB);
    if present(&sqlite)? {
        return read_sqlite(&sqlite);
    }
    read_storage(graphroot)
}

/// Like `Path::exists`, but a permission problem is an error, not "absent".
fn present(path: &Path) -> Result<bool, StateError> {
    path.try_exists().map_err(|e| StateError::io(path, e))
}

fn read_bolt(path: &Path) -> Result<HashMap<String, RuntimeMeta>, StateError> {
    let db = Bolt::open(path)?;
    let ctrs = db
        .root()
        .bucket(b"ctr")
        .ok_or_else(|| StateError::missing(path, "no `ctr` bucket (not a Podman database?)"))?;
    let mut out = HashMap::new();
    for (key, value) in ctrs.iter() {
        let Value::Bucket(ctr) = value else { continue };
        let id = String::from_utf8_lossy(key);
        // One damaged entry must not hide the other containers.
        let Some(config) = ctr.get(b"config") else {
            log::warn!("{}: container {id} has no config", path.display());
            continue;
        };
        match meta_from_config(config) {
            Ok(mut meta) => {
                meta.netns = netns_record(ctr.get(b"netns"), ctr.get(b"state"));
                meta.source = path.display().to_string();
                out.insert(id.into_owned(), meta);
            }
            Err(e) => log::warn!("{}", StateError::json(path, format!("container {id}"), e)),
        }
    }
    Ok(out)
}

fn read_sqlite(path: &Path) -> Result<HashMap<String, RuntimeMeta>, StateError> {
    let db = Sqlite::open(path)?;
    let configs = db.table("ContainerConfig")?;
    let states = db.table("ContainerState")?;
    let column = |table: &super::sqlite::Table, name: &str, of: &str| {
        table
            .column(name)
            .ok_or_else(|| StateError::missing(path, format!("table {of} has no column {name}")))
    };
    let (c_id, c_json) = (
        column(&configs, "ID", "ContainerConfig")?,
        column(&configs, "JSON", "ContainerConfig")?,
    );
    let (s_id, s_json) = (
        column(&states, "ID", "ContainerState")?,
        column(&states, "JSON", "ContainerState")?,
    );
    let state_of: HashMap<&[u8], &[u8]> = states
        .rows
        .iter()
        .filter_map(|row| Some((cell(row, s_id)?, cell(row, s_json)?)))
        .collect();
    let mut out = HashMap::new();
    for row in &configs.rows {
        let Some(id) = cell(row, c_id) else { continue };
        let id = String::from_utf8_lossy(id);
        // One damaged row must not hide the other containers.
        let Some(config) = cell(row, c_json) else {
            log::warn!("{}: container {id} has no config", path.display());
            continue;
        };
        match meta_from_config(config) {
            Ok(mut meta) => {
                // Podman 5 keeps the namespace path in the state itself.
                let state = state_of.get(id.as_bytes()).and_then(|s| parse_state(s));
                meta.netns = match state {
                    Some(s) => record(s.netns.as_deref(), s.pid),
                    None => NetnsRecord::default(),
                };
                meta.source = path.display().to_string();
                out.insert(id.into_owned(), meta);
            }
            Err(e) => log::warn!("{}", StateError::json(path, format!("container {id}"), e)),
        }
    }
    Ok(out)
}

/// Column `i` of `row` as bytes (text or blob).
fn cell(row: &[super::sqlite::Value], i: usize) -> Option<&[u8]> {
    row.get(i).and_then(|v| v.bytes())
}

/// The parts of libpod's `ContainerConfig` Porin uses. Go writes nil maps
/// as `null`, hence the options.
#[derive(Deserialize)]
struct Config {
    name: String,
    #[serde(default, rename = "rootfsImageName")]
    rootfs_image_name: Option<String>,
    #[serde(default, rename = "RawImageName")]
    raw_image_name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    spec: Option<Spec>,
}

#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// Decodes one container's `config` JSON.
fn meta_from_config(json: &[u8]) -> Result<RuntimeMeta, serde_json::Error> {
    let c: Config = serde_json::from_slice(json)?;
    // rootfsImageName is the resolved reference (`localhost/bb:latest`);
    // RawImageName is what was typed (`localhost/bb`), and the only one
    // set for some containers.
    let image = [c.rootfs_image_name, c.raw_image_name]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    Ok(RuntimeMeta {
        name: c.name,
        image,
        labels: c.labels.unwrap_or_default(),
        annotations: c.spec.and_then(|s| s.annotations).unwrap_or_default(),
        netns: NetnsRecord::default(),
        source: String::new(),
    })
}

/// The parts of libpod's `ContainerState` Porin uses.
#[derive(Deserialize)]
struct State {
    #[serde(default)]
    pid: Option<u32>,
    /// Set in Podman 5's SQLite state; BoltDB keeps it under its own key.
    #[serde(default)]
    netns: Option<String>,
}

/// A container's namespace record from its `netns` and `state` keys. What
/// is absent or unreadable is not known (the scanner then falls back to
/// the container's processes); a pid of 0 means "not running".
fn netns_record(netns: Option<&[u8]>, state: Option<&[u8]>) -> NetnsRecord {
    record(
        netns.and_then(|p| std::str::from_utf8(p).ok()),
        state.and_then(parse_state).and_then(|s| s.pid),
    )
}

/// A `ContainerState` JSON, or None when it cannot be read.
fn parse_state(json: &[u8]) -> Option<State> {
    serde_json::from_slice(json).ok()
}

/// The record from a namespace path (absolute only) and an init pid (0 is
/// "not running").
fn record(path: Option<&str>, pid: Option<u32>) -> NetnsRecord {
    NetnsRecord {
        path: path
            .filter(|p| p.starts_with('/'))
            .map(std::path::PathBuf::from),
        init_pid: pid.filter(|&pid| pid > 0),
    }
}

/// One entry of c/storage's `containers.json`.
#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    /// JSON inside a string, written by Podman.
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize, Default)]
struct StorageMetadata {
    #[serde(default, rename = "image-name")]
    image_name: String,
    #[serde(default)]
    name: String,
}

/// The fallback without a libpod database: every graph driver's
/// `<driver>-containers/containers.json` under `graphroot`.
fn read_storage(graphroot: &Path) -> Result<HashMap<String, RuntimeMeta>, StateError> {
    let entries = match fs::read_dir(graphroot) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(StateError::io(graphroot, e)),
    };
    let mut out = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(graphroot, e))?;
        if !entry.file_name().to_string_lossy().ends_with("-containers") {
            continue;
        }
        let file = entry.path().join(STORAGE_FILE);
        if present(&file)? {
            let bytes = fs::read(&file).map_err(|e| StateError::io(&file, e))?;
            let source = format!("{} (no labels)", file.display());
            out.extend(
                metas_from_storage(&bytes)
                    .map_err(|e| StateError::json(&file, "container list", e))?
                    .into_iter()
                    .map(|(id, meta)| {
                        let source = source.clone();
                        (id, RuntimeMeta { source, ..meta })
                    }),
            );
        }
    }
    Ok(out)
}

fn metas_from_storage(json: &[u8]) -> Result<HashMap<String, RuntimeMeta>, serde_json::Error> {
    let containers: Vec<StorageContainer> = serde_json::from_slice(json)?;
    let mut out = HashMap::new();
    for c in containers {
        // Containers made by other tools may carry other metadata; what
        // is unreadable there is simply not known.
        let m: StorageMetadata = serde_json::from_str(&c.metadata).unwrap_or_default();
        let name = if m.name.is_empty() {
            c.names.into_iter().next().unwrap_or_default()
        } else {
            m.name
        };
        let meta = RuntimeMeta {
            name,
            image: m.image_name,
            ..RuntimeMeta::default()
        };
        out.insert(c.id, meta);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
