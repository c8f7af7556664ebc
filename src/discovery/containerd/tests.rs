//! containerd state: the committed meta.db and task bundle laid out as one
//! daemon's root and state directories, fallbacks and damaged files.

use super::*;
use crate::discovery::testdir::TempDir;

fn fixture_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/containerd")
        .join(sub)
}

/// The private containerd the fixtures were taken from: `wst/wst-c1`
/// (running, labels app=x tier=back, annotation note=hello), `wst/wst-c2`
/// (created only, 300 labels) and `default/wst-c3` (running; its bundle
/// was not kept).
fn fixture() -> ContainerdInstance {
    ContainerdInstance {
        state_dir: fixture_dir("state"),
        root_dir: fixture_dir("root"),
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// ctr adds the image's stop signal to the labels given with `--label`.
const STOP_SIGNAL: (&str, &str) = ("io.containerd.image.config.stop-signal", "SIGTERM");

#[test]
fn running_container_from_database_and_bundle() {
    let meta = read_containerd(&fixture(), "wst", "wst-c1").unwrap();
    assert_eq!(
        meta,
        RuntimeMeta {
            name: "wst-c1".into(),
            image: "localhost/bb:latest".into(),
            labels: map(&[("app", "x"), STOP_SIGNAL, ("tier", "back")]),
            // ctr copies --label values into the spec next to --annotation.
            annotations: map(&[("app", "x"), ("note", "hello"), ("tier", "back")]),
            source: fixture()
                .root_dir
                .join("io.containerd.metadata.v1.bolt/meta.db")
                .display()
                .to_string(),
            ..RuntimeMeta::default()
        }
    );
    assert!(task_exists(&fixture(), "wst", "wst-c1"));
    assert_eq!(init_pid(&fixture(), "wst", "wst-c1").unwrap(), Some(26344));
}

#[test]
fn container_without_task() {
    let meta = read_containerd(&fixture(), "wst", "wst-c2").unwrap();
    assert_eq!(meta.labels.len(), 301);
    assert_eq!(meta.labels["k007"], "value-number-007");
    assert!(meta.annotations.is_empty());
    assert!(!task_exists(&fixture(), "wst", "wst-c2"));
    assert_eq!(init_pid(&fixture(), "wst", "wst-c2").unwrap(), None);
    // Namespaces are separate: wst-c3 lives in `default` only.
    assert_eq!(
        read_containerd(&fixture(), "default", "wst-c3")
            .unwrap()
            .labels,
        map(&[("app", "d"), STOP_SIGNAL])
    );
    let err = read_containerd(&fixture(), "wst", "wst-c3").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("meta.db"), "{text}");
    assert!(
        text.contains("no container `wst-c3` in namespace `wst`"),
        "{text}"
    );
}

#[test]
fn bulk_read_lists_every_namespace() {
    let all = read_containerd_all(&fixture()).unwrap();
    let keys: Vec<(&str, &str, Option<u32>)> = all
        .iter()
        .map(|c| (c.namespace.as_str(), c.id.as_str(), c.init_pid))
        .collect();
    assert_eq!(
        keys,
        [
            ("default", "wst-c3", None),
            ("wst", "wst-c1", Some(26344)),
            ("wst", "wst-c2", None)
        ]
    );
    let single = read_containerd(&fixture(), "wst", "wst-c1").unwrap();
    assert_eq!(all[1].meta, single);
}

#[test]
fn bundle_stands_in_without_the_database() {
    let empty_root = TempDir::new("containerd-root");
    let instance = ContainerdInstance {
        state_dir: fixture_dir("state"),
        root_dir: empty_root.path().to_owned(),
    };
    let annotations = map(&[("app", "x"), ("note", "hello"), ("tier", "back")]);
    let meta = read_containerd(&instance, "wst", "wst-c1").unwrap();
    assert_eq!(meta.name, "wst-c1");
    assert_eq!(meta.image, "");
    assert_eq!(meta.labels, annotations);
    assert_eq!(meta.annotations, annotations);
    assert!(
        meta.source.ends_with("wst-c1/config.json (annotations)"),
        "{}",
        meta.source
    );

    // The bulk reader finds the running task through its bundle alone.
    let all = read_containerd_all(&instance).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].namespace.as_str(), all[0].init_pid),
        ("wst", Some(26344))
    );
    assert_eq!(all[0].meta, meta);

    // A damaged database is an error naming the file, even for a container
    // whose bundle could stand in: annotations never replace labels that
    // exist but could not be read.
    let db = empty_root.path().join(META_DB);
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let bytes = fs::read(meta_db_path(&fixture())).unwrap();
    fs::write(&db, &bytes[..6000]).unwrap();
    for id in ["wst-c1", "wst-c2"] {
        let text = read_containerd(&instance, "wst", id)
            .unwrap_err()
            .to_string();
        assert!(text.contains(&db.display().to_string()), "{id}: {text}");
    }
    assert!(read_containerd_all(&instance).is_err());
}

#[test]
fn damaged_bundle_files_are_errors_naming_the_file() {
    let state = TempDir::new("containerd-state");
    let bundle = state.path().join(TASK_DIRS[0]).join("wst/wst-c1");
    fs::create_dir_all(&bundle).unwrap();
    fs::write(bundle.join("config.json"), b"{\"annotations\": [1]}").unwrap();
    fs::write(bundle.join("init.pid"), b"zero\n").unwrap();
    let instance = ContainerdInstance {
        state_dir: state.path().to_owned(),
        root_dir: fixture_dir("root"),
    };
    let text = read_containerd(&instance, "wst", "wst-c1")
        .unwrap_err()
        .to_string();
    assert!(text.contains("wst/wst-c1/config.json"), "{text}");
    let text = init_pid(&instance, "wst", "wst-c1")
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("wst/wst-c1/init.pid: `zero` is not a process id"),
        "{text}"
    );

    // The bulk reader logs them and keeps the database's view.
    let all = read_containerd_all(&instance).unwrap();
    let c1 = all.iter().find(|c| c.id == "wst-c1").unwrap();
    assert_eq!(c1.meta.image, "localhost/bb:latest");
    assert_eq!(c1.init_pid, None);

    // A bundle without its files yet (a task being created).
    fs::remove_file(bundle.join("config.json")).unwrap();
    fs::remove_file(bundle.join("init.pid")).unwrap();
    assert!(read_containerd(&instance, "wst", "wst-c1")
        .unwrap()
        .annotations
        .is_empty());
    assert_eq!(init_pid(&instance, "wst", "wst-c1").unwrap(), None);
}

#[test]
fn identifiers_cannot_escape_the_state_directories() {
    for good in ["wst-c1", "default", "k8s.io", "a_b.c-d", "A1"] {
        assert!(check_identifier(good).is_ok(), "{good}");
    }
    let long = "a".repeat(MAX_IDENTIFIER + 1);
    for bad in [
        "", "..", ".", "a/b", "../wst", "-a", "a-", "a..b", "a b", &long,
    ] {
        assert!(check_identifier(bad).is_err(), "{bad:?}");
        assert!(!task_exists(&fixture(), bad, "wst-c1"), "{bad:?}");
        assert!(!task_exists(&fixture(), "wst", bad), "{bad:?}");
        assert!(matches!(
            read_containerd(&fixture(), "wst", bad),
            Err(StateError::BadIdentifier(_))
        ));
    }
}
