//! Podman state: the committed database and storage fixtures laid out as a
//! graphroot, the format decisions, and one run against the live Podman.

use std::process::Command;

use super::*;
use crate::discovery::testdir::TempDir;

const WEB1: &str = "69d2571c3cbefb2b9a8dc1c84fb28a85dc1cb322d9c9ba6a4c954deaf7f0ed4c";
const FX1: &str = "a89d1cd68ddf8381ac747c3f647de0d51104e3c2b8ed7ef4453b7eb8fea6dda8";
const FX2: &str = "f07495f074f9ae8af145d413537cad3995fe07fda75bb820f6bf4553c52554f5";

fn fixture(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A graphroot holding `files` (destination under the root, fixture).
fn graphroot(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("podman");
    for (dest, src) in files {
        let dest = dir.path().join(dest);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(fixture(src), dest).unwrap();
    }
    dir
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn reads_every_container_from_the_bolt_database() {
    let root = graphroot(&[(BOLT_DB, "bolt/podman-bolt_state.db")]);
    let all = read_podman(root.path()).unwrap();
    assert_eq!(all.len(), 2, "{all:#?}");

    let web1 = &all[WEB1];
    assert_eq!(web1.name, "web1");
    // Started as `localhost/bb`: the resolved reference is preferred.
    assert_eq!(web1.image, "localhost/bb:latest");
    assert_eq!(web1.labels, labels(&[("app", "web"), ("tier", "front")]));
    assert_eq!(
        web1.annotations.get("io.podman.annotations.autoremove"),
        Some(&"FALSE".to_string())
    );

    let fx1 = &all[FX1];
    assert_eq!(fx1.name, "wst-fx1");
    assert_eq!(fx1.labels, labels(&[("app", "fixture"), ("tier", "back")]));
    assert_eq!(
        fx1.annotations.get("com.example.note"),
        Some(&"hello".to_string())
    );
    // Removed before the copy; its JSON survives only in freed pages.
    assert!(!all.contains_key(FX2));
}

/// Podman 5's tables (libpod/sqlite_state_internal.go), written by the real
/// SQLite library in WAL mode; the process ends without closing, so the
/// rows stay in `db.sql-wal` as they do while Podman runs.
const PODMAN5: &str = r#"
import sqlite3, sys, os, json
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA wal_autocheckpoint = 0")
db.executescript("""
CREATE TABLE IF NOT EXISTS IDNamespace(ID TEXT PRIMARY KEY NOT NULL);
CREATE TABLE IF NOT EXISTS ContainerConfig(
        ID              TEXT    PRIMARY KEY NOT NULL,
        Name            TEXT    UNIQUE NOT NULL,
        PodID           TEXT,
        JSON            TEXT    NOT NULL,
        FOREIGN KEY (ID)    REFERENCES IDNamespace(ID)    DEFERRABLE INITIALLY DEFERRED,
        FOREIGN KEY (ID)    REFERENCES ContainerState(ID) DEFERRABLE INITIALLY DEFERRED,
        FOREIGN KEY (PodID) REFERENCES PodConfig(ID)
);
CREATE TABLE IF NOT EXISTS ContainerState(
        ID       TEXT    PRIMARY KEY NOT NULL,
        State    INTEGER NOT NULL,
        ExitCode INTEGER,
        JSON     TEXT    NOT NULL,
        FOREIGN KEY (ID) REFERENCES ContainerConfig(ID) DEFERRABLE INITIALLY DEFERRED,
        CHECK (ExitCode BETWEEN -1 AND 255)
);
""")
def add(id, name, labels, state):
    config = {"id": id, "name": name, "rootfsImageName": "localhost/bb:latest",
              "RawImageName": "localhost/bb", "labels": labels,
              "spec": {"ociVersion": "1.2.0", "annotations": {"com.example.note": "hello"},
                       "process": {"env": ["PATH=/usr/bin"] * 200}}}
    db.execute("BEGIN")
    db.execute("INSERT INTO IDNamespace VALUES (?)", (id,))
    db.execute("INSERT INTO ContainerConfig VALUES (?, ?, NULL, ?)", (id, name, json.dumps(config)))
    db.execute("INSERT INTO ContainerState VALUES (?, 3, NULL, ?)", (id, json.dumps(state)))
    db.execute("COMMIT")
add(sys.argv[2], "web5", {"app": "web", "tier": "front"},
    {"state": 3, "pid": 4242, "netns": "/run/netns/netns-1b2c3d4e"})
add(sys.argv[3], "stopped5", None, {"state": 4})
sys.stdout.flush()
os._exit(0)
"#;

#[test]
fn reads_podman_5s_sqlite_database_with_its_wal() {
    let root = graphroot(&[]);
    let db = root.path().join(SQLITE_DB);
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let out = Command::new("python3")
        .args(["-c", PODMAN5])
        .arg(&db)
        .args([WEB1, FX1])
        .output()
        .expect("python3 (installed by .ci/setup) writes the SQLite fixture");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::metadata(root.path().join("db.sql-wal")).unwrap().len() > 0);

    let all = read_podman(root.path()).unwrap();
    assert_eq!(all.len(), 2, "{all:#?}");
    let web = &all[WEB1];
    assert_eq!(web.name, "web5");
    assert_eq!(web.image, "localhost/bb:latest");
    assert_eq!(web.labels, labels(&[("app", "web"), ("tier", "front")]));
    assert_eq!(
        web.annotations.get("com.example.note"),
        Some(&"hello".to_string())
    );
    assert_eq!(
        web.netns.path.as_deref(),
        Some(Path::new("/run/netns/netns-1b2c3d4e"))
    );
    assert_eq!(web.netns.init_pid, Some(4242));
    assert_eq!(web.source, db.display().to_string());
    // `labels: null` (Go's nil map) and a state without pid or netns.
    let stopped = &all[FX1];
    assert_eq!(stopped.name, "stopped5");
    assert!(stopped.labels.is_empty());
    assert_eq!(stopped.netns, NetnsRecord::default());

    // An existing BoltDB is what Podman 5 keeps using: it wins.
    fs::create_dir_all(root.path().join("libpod")).unwrap();
    fs::copy(
        fixture("bolt/podman-bolt_state.db"),
        root.path().join(BOLT_DB),
    )
    .unwrap();
    assert_eq!(read_podman(root.path()).unwrap()[WEB1].name, "web1");
}

/// The database a real Podman 5.4.2 wrote (how: tests/fixtures/podman5).
#[test]
fn reads_the_database_a_real_podman_5_wrote() {
    let root = graphroot(&[(SQLITE_DB, "podman5/db.sql")]);
    let all = read_podman(root.path()).unwrap();
    assert_eq!(all.len(), 2, "{all:#?}");
    let web = &all["6917e7af36331d68edbaa57f80a10143f95e32f47c193738ffc0a9bf12af9c60"];
    assert_eq!(web.name, "web5");
    assert_eq!(web.image, "localhost/bb:5");
    assert_eq!(web.labels, labels(&[("app", "web"), ("tier", "front")]));
    assert_eq!(
        web.annotations.get("com.example.note"),
        Some(&"hello".to_string())
    );
    // Running with `--network none`: Podman records the init pid only.
    assert_eq!(web.netns.init_pid, Some(13502));
    assert_eq!(web.netns.path, None);
    // Created, never started: no labels (`null`), no namespace record.
    let idle = &all["e46b8b6558938acf94fcaac7d87ab3be47e63547d04a4a5d005f40be45ee6ffe"];
    assert_eq!(idle.name, "idle5");
    assert!(idle.labels.is_empty());
    assert_eq!(idle.netns, NetnsRecord::default());
}

#[test]
fn a_damaged_sqlite_database_is_an_error_naming_it() {
    let root = graphroot(&[]);
    fs::write(root.path().join(SQLITE_DB), b"SQLite format 3\0").unwrap();
    let text = read_podman(root.path()).unwrap_err().to_string();
    assert!(text.contains("/db.sql:"), "{text}");
}

#[test]
fn storage_list_is_the_fallback_without_a_database() {
    let root = graphroot(&[(
        "overlay-containers/containers.json",
        "podman/containers.json",
    )]);
    let all = read_podman(root.path()).unwrap();
    let want = RuntimeMeta {
        name: "web1".into(),
        image: "localhost/bb:latest".into(),
        source: format!(
            "{} (no labels)",
            root.path()
                .join("overlay-containers/containers.json")
                .display()
        ),
        ..RuntimeMeta::default()
    };
    assert_eq!(all.get(WEB1), Some(&want), "{all:#?}");
}

#[test]
fn no_state_at_all_is_no_containers() {
    let root = graphroot(&[]);
    assert!(read_podman(root.path()).unwrap().is_empty());
    assert!(read_podman(&root.path().join("absent")).unwrap().is_empty());
}

#[test]
fn errors_name_the_file() {
    let root = graphroot(&[]);
    fs::create_dir_all(root.path().join("libpod")).unwrap();
    let data = fs::read(fixture("bolt/podman-bolt_state.db")).unwrap();
    fs::write(root.path().join(BOLT_DB), &data[..5000]).unwrap();
    let text = read_podman(root.path()).unwrap_err().to_string();
    assert!(text.contains("libpod/bolt_state.db"), "{text}");

    let root = graphroot(&[]);
    fs::create_dir_all(root.path().join("vfs-containers")).unwrap();
    fs::write(root.path().join("vfs-containers/containers.json"), b"[{").unwrap();
    let text = read_podman(root.path()).unwrap_err().to_string();
    assert!(text.contains("vfs-containers/containers.json"), "{text}");
}

#[test]
fn config_json_variants() {
    // Go writes nil maps as null; a missing rootfsImageName falls back.
    let meta = meta_from_config(
        br#"{"name":"a","RawImageName":"img","rootfsImageName":"","labels":null,"spec":{"annotations":null}}"#,
    )
    .unwrap();
    let want = RuntimeMeta {
        name: "a".into(),
        image: "img".into(),
        ..RuntimeMeta::default()
    };
    assert_eq!(meta, want);
    assert_eq!(meta_from_config(br#"{"name":"b"}"#).unwrap().image, "");
    assert!(
        meta_from_config(br#"{"labels":{}}"#).is_err(),
        "name is required"
    );
    assert!(meta_from_config(br#"{"name":"c","labels":{"k":1}}"#).is_err());
}

/// Removes the container when the test ends, passed or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.0]).output();
    }
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .output()
        .expect("podman runs");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn live_podman_container_is_read_from_the_database() {
    crate::testing::require_root("reading the live Podman database (podman create)");
    // The harness's image, built here if this is the machine's first container.
    crate::testing::podman::ensure_image();
    let image = crate::testing::podman::IMAGE;
    let name = format!("wst-{}", std::process::id());
    let id = podman(&[
        "create",
        "--name",
        &name,
        "--label",
        "app=wst",
        "--label",
        "porin.test=live",
        image,
        "sleep",
        "1",
    ]);
    let _guard = Container(name.clone());
    let graphroot = podman(&["info", "--format", "{{.Store.GraphRoot}}"]);

    let all = read_podman(Path::new(&graphroot)).unwrap();
    let meta = all
        .get(&id)
        .unwrap_or_else(|| panic!("{id} not in {all:#?}"));
    assert_eq!(meta.name, name);
    assert_eq!(meta.image, image);
    assert_eq!(
        meta.labels,
        labels(&[("app", "wst"), ("porin.test", "live")])
    );
}

#[test]
fn the_namespace_record_comes_from_the_netns_and_state_keys() {
    let rec = netns_record(
        Some(b"/run/netns/netns-2618f5fd"),
        Some(br#"{"state":3,"pid":13261,"conmonPid":13259}"#),
    );
    assert_eq!(
        rec.path.as_deref(),
        Some(Path::new("/run/netns/netns-2618f5fd"))
    );
    assert_eq!(rec.init_pid, Some(13261));
    // A stopped container (no pid, or 0), a relative path, junk: unknown.
    let rec = netns_record(Some(b"netns-x"), Some(br#"{"state":4}"#));
    assert_eq!(rec, NetnsRecord::default());
    assert_eq!(
        netns_record(None, Some(br#"{"pid":0}"#)),
        NetnsRecord::default()
    );
    assert_eq!(netns_record(None, Some(b"{")), NetnsRecord::default());
}
