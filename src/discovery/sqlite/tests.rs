//! Tests of the SQLite reader on files written by the real SQLite library
//! (Python's `sqlite3` module, from Debian's python3): every serial type,
//! overflow chains and interior pages at three page sizes, commits that
//! live only in the WAL, a torn last commit, stale frames of an earlier WAL
//! generation, and mutated files that must never make it panic.

use std::process::Command;

use proptest::prelude::*;

use super::*;
use crate::discovery::testdir::TempDir;

/// Runs `script` with the database path as `sys.argv[1]`. python3 is one
/// of the test command's requirements (`.ci/setup`): without it the test
/// fails, it does not skip.
fn python(script: &str, db: &Path) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(db)
        .output()
        .expect("python3 (Debian's python3, installed by .ci/setup) writes the SQLite fixtures");
    assert!(
        out.status.success(),
        "fixture script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(v: &Value) -> String {
    String::from_utf8(v.bytes().expect("text").to_vec()).unwrap()
}

/// Row `i` of the `many` table, as both Python and this test compute it.
fn int_of(i: usize) -> i64 {
    // One value per serial type width: 8/9 (0, 1), 1, 2, 3, 4, 6, 8 bytes.
    [
        0,
        1,
        -1,
        127,
        -128,
        32767,
        -40000,
        1 << 23,
        1 << 31,
        -(1 << 40),
        1 << 62,
    ][i % 11]
}

const MANY: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute(f"PRAGMA page_size={PAGE}")
db.execute("PRAGMA journal_mode=DELETE")
db.execute('''CREATE TABLE Many(
    ID TEXT PRIMARY KEY NOT NULL,
    N  INTEGER,
    R  REAL,
    B  BLOB,
    J  TEXT NOT NULL,
    CHECK (N > -99999999999999999)
)''')
ints = [0, 1, -1, 127, -128, 32767, -40000, 1 << 23, 1 << 31, -(1 << 40), 1 << 62]
for i in range(300):
    db.execute("INSERT INTO Many VALUES (?,?,?,?,?)",
               (f"id{i:04}", ints[i % 11], i / 8 + 0.0625, bytes([i % 256]) * (i % 5), "x" * (i * 37 % 9000)))
db.commit()
db.close()
"#;

#[test]
fn reads_every_row_and_type_at_every_page_size() {
    for page in [512, 4096, 65536] {
        let dir = TempDir::new("sqlite-many");
        let path = dir.path().join("db.sql");
        python(&MANY.replace("{PAGE}", &page.to_string()), &path);
        let db = Sqlite::open(&path).unwrap();
        assert_eq!(db.page_size, page);
        let t = db.table("many").unwrap(); // case-insensitive, as in SQL
        assert_eq!(t.columns, ["ID", "N", "R", "B", "J"]);
        assert_eq!(t.rows.len(), 300, "page size {page}");
        for (i, row) in t.rows.iter().enumerate() {
            assert_eq!(text(&row[0]), format!("id{i:04}"), "page size {page}");
            assert_eq!(row[1], Value::Int(int_of(i)), "row {i}, page size {page}");
            // Not integral: SQLite stores integral reals as integers.
            assert_eq!(row[2], Value::Real(i as f64 / 8.0 + 0.0625), "row {i}");
            assert_eq!(row[3], Value::Blob(vec![i as u8; i % 5]), "row {i}");
            // Up to 8,999 bytes: overflow chains at 512 and 4096.
            assert_eq!(row[4], Value::Text(vec![b'x'; i * 37 % 9000]), "row {i}");
        }
        let err = db.table("Missing").unwrap_err().to_string();
        assert!(
            err.contains("db.sql") && err.contains("no table Missing"),
            "{err}"
        );
    }
}

/// Commits after a checkpoint: an update, a delete, an insert, each its
/// own transaction; the process ends without closing, so the WAL stays
/// (as it does while Podman runs).
const WAL: &str = r#"
import sqlite3, sys, os
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("CREATE TABLE ContainerConfig(ID TEXT PRIMARY KEY NOT NULL, JSON TEXT NOT NULL)")
db.execute("BEGIN")
for i in range(40):
    db.execute("INSERT INTO ContainerConfig VALUES (?, ?)", (f"c{i:02}", "old" * 100))
db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.execute("UPDATE ContainerConfig SET JSON='new' WHERE ID='c05'")
db.execute("DELETE FROM ContainerConfig WHERE ID='c06'")
db.execute("INSERT INTO ContainerConfig VALUES ('c99', 'wal-only')")
sys.stdout.flush()
os._exit(0)
"#;

fn rows_by_id(db: &Sqlite) -> HashMap<String, String> {
    db.table("ContainerConfig")
        .unwrap()
        .rows
        .iter()
        .map(|r| (text(&r[0]), text(&r[1])))
        .collect()
}

#[test]
fn commits_only_in_the_wal_are_read() {
    let dir = TempDir::new("sqlite-wal");
    let path = dir.path().join("db.sql");
    python(WAL, &path);
    let wal = wal_path(&path);
    assert!(
        fs::metadata(&wal).unwrap().len() > 0,
        "the WAL must hold the commits"
    );

    let rows = rows_by_id(&Sqlite::open(&path).unwrap());
    assert_eq!(rows.len(), 40);
    assert_eq!(rows["c05"], "new");
    assert!(!rows.contains_key("c06"));
    assert_eq!(rows["c99"], "wal-only");

    // The same database without its WAL is the checkpointed state: the
    // overlay above is what made the difference.
    fs::rename(&wal, dir.path().join("aside")).unwrap();
    let rows = rows_by_id(&Sqlite::open(&path).unwrap());
    assert_eq!(rows["c05"], "old".repeat(100));
    assert!(rows.contains_key("c06") && !rows.contains_key("c99"));
}

#[test]
fn a_torn_last_commit_is_left_out() {
    let dir = TempDir::new("sqlite-torn");
    let path = dir.path().join("db.sql");
    python(WAL, &path);
    let wal = wal_path(&path);
    let mut bytes = fs::read(&wal).unwrap();
    // The insert of c99 is the last commit: one frame (its leaf page).
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    fs::write(&wal, &bytes).unwrap();
    let rows = rows_by_id(&Sqlite::open(&path).unwrap());
    assert_eq!(rows["c05"], "new", "earlier commits stay");
    assert!(!rows.contains_key("c06"));
    assert!(!rows.contains_key("c99"), "the torn commit is not read");
}

/// Three WAL generations: a big commit (many frames), checkpointed; an
/// update of c05, checkpointed; then a small commit that restarts the WAL
/// again. Frames of the earlier generations stay in the file behind the
/// new one, with other salts: read, they would bring back c05's old value.
const GENERATIONS: &str = r#"
import sqlite3, sys, os
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")
db.execute("CREATE TABLE ContainerConfig(ID TEXT PRIMARY KEY NOT NULL, JSON TEXT NOT NULL)")
db.execute("BEGIN")
for i in range(200):
    db.execute("INSERT INTO ContainerConfig VALUES (?, ?)", (f"c{i:03}", "v1" * 200))
db.execute("COMMIT")
db.execute("PRAGMA wal_checkpoint(PASSIVE)")
db.execute("UPDATE ContainerConfig SET JSON='v2' WHERE ID='c005'")
db.execute("PRAGMA wal_checkpoint(PASSIVE)")
db.execute("INSERT INTO ContainerConfig VALUES ('c999', 'v3')")
sys.stdout.flush()
os._exit(0)
"#;

#[test]
fn frames_of_an_earlier_wal_generation_are_ignored() {
    let dir = TempDir::new("sqlite-gen");
    let path = dir.path().join("db.sql");
    python(GENERATIONS, &path);
    let db = Sqlite::open(&path).unwrap();
    let frames = db.wal.len().saturating_sub(WAL_HEADER) / (FRAME_HEADER + db.page_size);
    assert!(
        frames > db.wal_pages.len() + 10,
        "the fixture must leave old frames behind ({frames} frames, {} read)",
        db.wal_pages.len()
    );
    let rows = rows_by_id(&db);
    assert_eq!(rows.len(), 201);
    assert_eq!(rows["c005"], "v2");
    assert_eq!(rows["c999"], "v3");
}

#[test]
fn not_a_database_is_an_error_naming_the_file() {
    let dir = TempDir::new("sqlite-bad");
    let path = dir.path().join("db.sql");
    fs::write(&path, b"SQLite format 3\0").unwrap();
    let err = Sqlite::open(&path).err().expect("too short").to_string();
    assert!(
        err.contains("db.sql") && err.contains("bad header"),
        "{err}"
    );
    let err = Sqlite::open(&dir.path().join("absent"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

/// A leaf page whose cell pointers repeat one cell (each decode of a large
/// record would allocate again) is refused, not decoded over and over.
#[test]
fn repeated_cells_are_refused() {
    let dir = TempDir::new("sqlite-rep");
    let path = dir.path().join("db.sql");
    python(
        "import sqlite3, sys\n\
         db = sqlite3.connect(sys.argv[1])\n\
         db.execute('CREATE TABLE ContainerConfig(ID TEXT PRIMARY KEY NOT NULL, JSON TEXT)')\n\
         db.executemany('INSERT INTO ContainerConfig VALUES (?, ?)', [('a', 'x'), ('b', 'y'), ('c', 'z')])\n\
         db.commit()\n",
        &path,
    );
    assert_eq!(rows_by_id(&Sqlite::open(&path).unwrap()).len(), 3);
    // The table's root (page 2, a leaf): every pointer to the first cell.
    let mut bytes = fs::read(&path).unwrap();
    let page = be16(&bytes, 16).unwrap() as usize;
    assert_eq!(bytes[page], LEAF_TABLE, "the fixture's table is one leaf");
    let first = [bytes[page + 8], bytes[page + 9]];
    for i in 1..3 {
        bytes[page + 8 + 2 * i..page + 10 + 2 * i].copy_from_slice(&first);
    }
    fs::write(&path, &bytes).unwrap();
    let err = Sqlite::open(&path)
        .unwrap()
        .table("ContainerConfig")
        .unwrap_err()
        .to_string();
    assert!(err.contains("two cells"), "{err}");
}

#[test]
fn columns_of_podman_tables() {
    let sql = "CREATE TABLE ContainerConfig(
                ID              TEXT    PRIMARY KEY NOT NULL,
                Name            TEXT    UNIQUE NOT NULL,
                PodID           TEXT,
                JSON            TEXT    NOT NULL,
                FOREIGN KEY (ID)    REFERENCES IDNamespace(ID)    DEFERRABLE INITIALLY DEFERRED,
                FOREIGN KEY (PodID) REFERENCES PodConfig(ID)
        )";
    assert_eq!(columns_of(sql), ["ID", "Name", "PodID", "JSON"]);
    let sql = r#"CREATE TABLE "t"("a b" TEXT, [c] INT, CONSTRAINT x CHECK (c IN (1, 2)))"#;
    assert_eq!(columns_of(sql), ["a", "c"]);
    assert!(columns_of("CREATE TABLE t").is_empty());
}

#[test]
fn varints_of_every_length() {
    assert_eq!(varint(&[0x05], 0), Ok((5, 1)));
    assert_eq!(varint(&[0x81, 0x00], 0), Ok((128, 2)));
    assert_eq!(varint(&[0xff; 9], 0), Ok((u64::MAX, 9)));
    assert!(varint(&[0x81], 0).is_err());
}

/// Walks the table of a mutated copy: any result is fine, a panic is not.
fn read_mutated(dir: &Path, db: &[u8], wal: &[u8]) {
    let path = dir.join("m.sql");
    fs::write(&path, db).unwrap();
    fs::write(wal_path(&path), wal).unwrap();
    if let Ok(s) = Sqlite::open(&path) {
        let _ = s.table("ContainerConfig");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn mutated_files_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        thread_local! {
            static FIXTURE: (TempDir, Vec<u8>, Vec<u8>) = {
                let dir = TempDir::new("sqlite-mut");
                let path = dir.path().join("db.sql");
                python(GENERATIONS, &path);
                let db = fs::read(&path).unwrap();
                let wal = fs::read(wal_path(&path)).unwrap();
                (dir, db, wal)
            };
        }
        FIXTURE.with(|(dir, db, wal)| {
            let (mut db, mut wal) = (db.clone(), wal.clone());
            for (at, byte, in_wal) in flips {
                let target = if in_wal { &mut wal } else { &mut db };
                if !target.is_empty() {
                    let i = at % target.len();
                    target[i] = byte;
                }
            }
            if let Some(cut) = cut {
                let n = cut % (db.len() + 1);
                db.truncate(n);
            }
            read_mutated(dir.path(), &db, &wal);
        });
    }
}
