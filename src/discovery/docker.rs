//! Docker's on-disk state to [`RuntimeMeta`], one container at a time.
//!
//! dockerd writes each container's record to
//! `<docker root>/containers/<id>/config.v2.json` (root `/var/lib/docker`
//! unless `data-root` moves it): `Name` (`/web1`), `Config.Image` (the image
//! as it was asked for), `Config.Labels`, `State.Running` and `State.Pid`
//! (the init process), and `NetworkSettings.SandboxKey`, the namespace file
//! dockerd created (`/var/run/docker/netns/<12 hex>`, empty for a container
//! that joins another's namespace). The file is replaced whole on each
//! change (write to a temporary file, then rename), so a read sees one
//! version or the other, never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::state::StateError;
use super::{NetnsRecord, RuntimeMeta};

/// Where dockerd keeps its state unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/docker";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    #[serde(default)]
    name: String,
    #[serde(default)]
    config: Option<Config>,
    #[serde(default)]
    state: Option<State>,
    #[serde(default)]
    network_settings: Option<NetworkSettings>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Config {
    #[serde(default)]
    image: String,
    /// Go writes a nil map as `null`.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct State {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    pid: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSettings {
    #[serde(default)]
    sandbox_key: String,
}

/// The record of container `id` (64 hex digits, as the cgroup path gives
/// it) under dockerd's `root`.
pub fn read_docker(root: &Path, id: &str) -> Result<RuntimeMeta, StateError> {
    let path = record_path(root, id)?;
    let bytes = fs::read(&path).map_err(|e| StateError::io(&path, e))?;
    let meta =
        meta_from_record(&bytes).map_err(|e| StateError::json(&path, "container record", e))?;
    Ok(RuntimeMeta {
        source: path.display().to_string(),
        ..meta
    })
}

fn record_path(root: &Path, id: &str) -> Result<PathBuf, StateError> {
    // The id becomes a path component: nothing but a container id may.
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StateError::BadIdentifier(id.to_string()));
    }
    Ok(root.join("containers").join(id).join("config.v2.json"))
}

fn meta_from_record(json: &[u8]) -> Result<RuntimeMeta, serde_json::Error> {
    let r: Record = serde_json::from_slice(json)?;
    let (image, labels) = r
        .config
        .map(|c| (c.image, c.labels.unwrap_or_default()))
        .unwrap_or_default();
    let path = r
        .network_settings
        .map(|n| n.sandbox_key)
        .filter(|k| k.starts_with('/'))
        .map(PathBuf::from);
    let init_pid = r.state.filter(|s| s.running && s.pid > 0).map(|s| s.pid);
    Ok(RuntimeMeta {
        name: r.name.trim_start_matches('/').to_string(),
        image,
        labels,
        annotations: BTreeMap::new(),
        netns: NetnsRecord { path, init_pid },
        source: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::testdir::TempDir;

    const ID: &str = "98ca8f25f1641d4b4f3c2cb360eaf8763abbf000541679f44c5c782eadbbfdcf";

    fn fixture() -> Vec<u8> {
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker/config.v2.json"))
            .expect("fixture")
    }

    #[test]
    fn reads_name_image_labels_and_namespace_record() {
        let root = TempDir::new("docker");
        let dir = root.path().join("containers").join(ID);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.v2.json"), fixture()).unwrap();
        let meta = read_docker(root.path(), ID).unwrap();
        assert_eq!(meta.name, "web1");
        assert_eq!(meta.image, "busybox:1.36");
        assert_eq!(
            meta.labels,
            BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("tier".to_string(), "front".to_string()),
            ])
        );
        assert_eq!(
            meta.netns.path.as_deref(),
            Some(Path::new("/var/run/docker/netns/87ca3fc53893"))
        );
        assert_eq!(meta.netns.init_pid, Some(31337));
        assert_eq!(
            meta.source,
            dir.join("config.v2.json").display().to_string()
        );
    }

    #[test]
    fn a_stopped_container_or_a_shared_namespace_has_no_record() {
        let json = br#"{"Name":"/db","Config":{"Image":"pg","Labels":null},
            "State":{"Running":false,"Pid":0},"NetworkSettings":{"SandboxKey":""}}"#;
        let meta = meta_from_record(json).unwrap();
        assert_eq!(meta.name, "db");
        assert!(meta.labels.is_empty());
        assert_eq!(meta.netns, NetnsRecord::default());
    }

    #[test]
    fn errors_name_the_file_and_ids_cannot_leave_the_root() {
        let root = TempDir::new("docker-err");
        let err = read_docker(root.path(), ID).unwrap_err().to_string();
        assert!(
            err.contains(&format!("containers/{ID}/config.v2.json")),
            "{err}"
        );
        let dir = root.path().join("containers").join(ID);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.v2.json"), b"{\"Name\": 5}").unwrap();
        let err = read_docker(root.path(), ID).unwrap_err().to_string();
        assert!(
            err.contains("config.v2.json") && err.contains("container record"),
            "{err}"
        );
        for bad in ["../../../etc/passwd", "abc", &format!("{}/..", &ID[..61])] {
            assert!(matches!(
                read_docker(root.path(), bad),
                Err(StateError::BadIdentifier(_))
            ));
        }
    }
}
