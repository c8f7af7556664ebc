//! Tests of the BoltDB reader: the real files Podman and containerd wrote on
//! the build machine (fixtures), hand-built files for each page kind and
//! each kind of corruption, and a mutation loop that must never panic.

use super::*;

const PODMAN: &str = "tests/fixtures/bolt/podman-bolt_state.db";
const CONTAINERD: &str = "tests/fixtures/containerd/root/io.containerd.metadata.v1.bolt/meta.db";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("fixture")
}

fn open(path: &str) -> Bolt {
    Bolt::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("fixture opens")
}

#[track_caller]
fn invalid(data: Vec<u8>) -> Problem {
    match Bolt::from_bytes(data) {
        Ok(db) => panic!("expected an error, got {db:?}"),
        Err(p) => p,
    }
}

/// Walks every bucket and looks every key up again; returns the number of
/// entries seen. Used on mutated files, where it must simply not panic.
fn walk(b: Bucket<'_>, depth: usize) -> usize {
    if depth > MAX_DEPTH {
        return 0;
    }
    let mut n = 0;
    for (k, v) in b.iter() {
        n += 1;
        match v {
            Value::Bucket(sub) => {
                assert!(b.bucket(k).is_some());
                n += walk(sub, depth + 1);
            }
            Value::Data(d) => assert_eq!(b.get(k), Some(d)),
        }
    }
    n
}

// ---- a tiny writer for hand-built files --------------------------------

const PS: usize = 4096;

fn put_header(out: &mut Vec<u8>, id: u64, flags: u16, count: usize) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // overflow, set by `pad`
}

/// Pads a page to whole pages and records its overflow count.
fn pad(mut page: Vec<u8>) -> Vec<u8> {
    let pages = page.len().div_ceil(PS).max(1);
    page.resize(pages * PS, 0);
    page[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
    page
}

/// An unpadded leaf page: (flags, key, value) elements.
fn leaf_bytes(id: u64, elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, id, LEAF_PAGE, elems.len());
    let mut data_at = PAGE_HEADER + elems.len() * ELEMENT;
    for (i, (flags, k, v)) in elems.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&((data_at - at) as u32).to_le_bytes());
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        data_at += k.len() + v.len();
    }
    for (_, k, v) in elems {
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    out
}

fn leaf(id: u64, elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
    pad(leaf_bytes(id, elems))
}

fn branch(id: u64, elems: &[(&[u8], u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, id, BRANCH_PAGE, elems.len());
    let mut data_at = PAGE_HEADER + elems.len() * ELEMENT;
    for (i, (k, child)) in elems.iter().enumerate() {
        let at = PAGE_HEADER + i * ELEMENT;
        out.extend_from_slice(&((data_at - at) as u32).to_le_bytes());
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&child.to_le_bytes());
        data_at += k.len();
    }
    for (k, _) in elems {
        out.extend_from_slice(k);
    }
    pad(out)
}

fn page_bucket(root: u64) -> Vec<u8> {
    let mut v = root.to_le_bytes().to_vec();
    v.extend_from_slice(&0u64.to_le_bytes());
    v
}

fn inline_bucket(elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
    let mut v = page_bucket(0);
    v.extend_from_slice(&leaf_bytes(0, elems));
    v
}

fn meta(id: u64, root: u64, pages: u64, txid: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(&mut out, id, META_PAGE, 0);
    let mut m = Vec::new();
    m.extend_from_slice(&MAGIC.to_le_bytes());
    m.extend_from_slice(&VERSION.to_le_bytes());
    m.extend_from_slice(&(PS as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&page_bucket(root));
    m.extend_from_slice(&u64::MAX.to_le_bytes()); // no freelist page
    m.extend_from_slice(&pages.to_le_bytes());
    m.extend_from_slice(&txid.to_le_bytes());
    m.extend_from_slice(&fnv1a64(&m).to_le_bytes());
    out.extend_from_slice(&m);
    pad(out)
}

/// A file whose both meta pages point at root page 2, holding `pages`
/// (id, padded bytes); `extra` pages are added to the count in use.
fn file(pages: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let count = pages
        .iter()
        .map(|(id, p)| *id as usize + p.len() / PS)
        .max()
        .unwrap_or(3)
        .max(3);
    let mut out = vec![0u8; count * PS];
    out[..PS].copy_from_slice(&meta(0, 2, count as u64, 1));
    out[PS..2 * PS].copy_from_slice(&meta(1, 2, count as u64, 2));
    for (id, p) in pages {
        let at = *id as usize * PS;
        out[at..at + p.len()].copy_from_slice(p);
    }
    out
}

// ---- reading ----------------------------------------------------------------

#[test]
fn hand_built_file_with_every_page_kind() {
    let big = vec![b'x'; 6000];
    let inline = inline_bucket(&[(0, b"ik", b"iv")]);
    let data = file(&[
        (
            2,
            leaf(
                2,
                &[
                    (BUCKET_LEAF, b"a", &page_bucket(3)),
                    (BUCKET_LEAF, b"b", &inline),
                    (0, b"c", b"plain"),
                ],
            ),
        ),
        (3, branch(3, &[(b"k1", 4), (b"k3", 5)])),
        (4, leaf(4, &[(0, b"k1", b"v1"), (0, b"k2", b"v2")])),
        // Spans pages 5 and 6: the value runs into the overflow page.
        (5, leaf(5, &[(0, b"k3", &big)])),
    ]);
    let db = Bolt::from_bytes(data).expect("valid");
    assert_eq!(db.txid(), 2);
    let root = db.root();

    let a = root.bucket(b"a").expect("page bucket");
    assert_eq!(a.get(b"k1"), Some(&b"v1"[..]));
    assert_eq!(a.get(b"k2"), Some(&b"v2"[..]));
    assert_eq!(a.get(b"k3"), Some(&big[..]));
    assert_eq!(a.get(b"k0"), None, "before the first branch key");
    assert_eq!(a.get(b"k25"), None, "between keys");
    let keys: Vec<&[u8]> = a.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [&b"k1"[..], b"k2", b"k3"]);

    let b = root.bucket(b"b").expect("inline bucket");
    assert_eq!(b.get(b"ik"), Some(&b"iv"[..]));
    assert_eq!(b.iter().count(), 1);

    assert_eq!(root.get(b"c"), Some(&b"plain"[..]));
    assert!(root.get(b"a").is_none(), "get does not return buckets");
    assert!(root.bucket(b"c").is_none(), "bucket does not return data");
    assert!(root.bucket(b"zz").is_none());
    assert_eq!(walk(root, 0), 3 + 3 + 1);
}

#[test]
fn podman_fixture_has_the_containers_and_not_the_removed_one() {
    let db = open(PODMAN);
    let ctr = db.root().bucket(b"ctr").expect("ctr bucket");
    let ids: Vec<String> = ctr
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "69d2571c3cbefb2b9a8dc1c84fb28a85dc1cb322d9c9ba6a4c954deaf7f0ed4c",
            "a89d1cd68ddf8381ac747c3f647de0d51104e3c2b8ed7ef4453b7eb8fea6dda8"
        ]
    );
    // web1's bucket is a branch page; wst-fx1's config runs into overflow
    // pages: both must read back as whole JSON documents.
    for (id, name) in [(&ids[0], "web1"), (&ids[1], "wst-fx1")] {
        let config = ctr
            .bucket(id.as_bytes())
            .and_then(|c| c.get(b"config"))
            .expect("config");
        let json: serde_json::Value = serde_json::from_slice(config).expect("whole JSON");
        assert_eq!(json["name"], name);
    }
    // `wst-fx2` was created and removed before the copy: its JSON is still
    // in freed pages, but no live bucket reaches it.
    let raw = fixture(PODMAN);
    assert!(
        raw.windows(7).any(|w| w == b"wst-fx2"),
        "stale copy present"
    );
    let names = db.root().bucket(b"name-registry").expect("names");
    assert_eq!(names.iter().count(), 2);
    assert!(names.get(b"wst-fx2").is_none());
}

#[test]
fn containerd_fixture_reads_a_bucket_split_over_a_branch_page() {
    let db = open(CONTAINERD);
    let containers = db
        .root()
        .bucket(b"v1")
        .and_then(|v| v.bucket(b"wst"))
        .and_then(|ns| ns.bucket(b"containers"))
        .expect("v1/wst/containers");
    let c2 = containers.bucket(b"wst-c2").expect("wst-c2");
    assert_eq!(c2.get(b"image"), Some(&b"localhost/bb:latest"[..]));
    let labels = c2.bucket(b"labels").expect("labels");
    assert!(matches!(labels.node, Node::Page(_)), "too big to be inline");
    // 300 labels from `ctr --label` plus the one ctr adds itself.
    assert_eq!(labels.iter().count(), 301);
    for i in [1, 150, 300] {
        let key = format!("k{i:03}");
        let want = format!("value-number-{i:03}");
        assert_eq!(labels.get(key.as_bytes()), Some(want.as_bytes()), "{key}");
    }
    let keys: Vec<&[u8]> = labels.iter().map(|(k, _)| k).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order");
}

// ---- corruption -------------------------------------------------------------

#[test]
fn missing_file_error_names_it() {
    let err = Bolt::open(Path::new("/nonexistent/porin/meta.db")).unwrap_err();
    assert!(matches!(err, BoltError::Io { .. }));
    assert!(
        err.to_string().contains("/nonexistent/porin/meta.db"),
        "{err}"
    );
}

#[test]
fn truncated_file() {
    let data = fixture(PODMAN);
    assert!(matches!(
        invalid(data[..10].to_vec()),
        Problem::NoValidMeta { .. }
    ));
    // Both meta pages survive but claim pages past the new end.
    let p = invalid(data[..5 * PS].to_vec());
    let Problem::NoValidMeta { first, second } = p else {
        panic!("{p:?}")
    };
    assert!(first.contains("truncated"), "{first}");
    assert!(second.contains("truncated"), "{second}");
}

#[test]
fn bad_magic_on_both_meta_pages() {
    let mut data = fixture(CONTAINERD);
    data[PAGE_HEADER] ^= 0xff;
    data[PS + PAGE_HEADER] ^= 0xff;
    let p = invalid(data);
    assert!(p.to_string().contains("bad magic"), "{p}");
}

#[test]
fn bad_checksum_falls_back_to_the_other_meta_page() {
    let data = fixture(PODMAN);
    let newest = Bolt::from_bytes(data.clone()).unwrap().txid();
    // The newer of the two meta pages: corrupt one field it checksums.
    let newer_at = if le_u64(&data, PAGE_HEADER + 48) == Some(newest) {
        0
    } else {
        PS
    };
    let mut bad = data.clone();
    bad[newer_at + PAGE_HEADER + 40] ^= 0x01; // page count
    let db = Bolt::from_bytes(bad).expect("the older meta page is used");
    assert_eq!(db.txid(), newest - 1);
    assert!(db.root().bucket(b"ctr").is_some());
}

#[test]
fn page_id_out_of_range() {
    let data = file(&[(2, leaf(2, &[(BUCKET_LEAF, b"a", &page_bucket(99))]))]);
    let p = invalid(data);
    assert!(
        matches!(&p, Problem::BadPage { page: 99, reason } if reason.contains("out of range")),
        "{p:?}"
    );
    // The meta pages are never part of a tree.
    let data = file(&[(2, leaf(2, &[(BUCKET_LEAF, b"a", &page_bucket(1))]))]);
    assert!(matches!(invalid(data), Problem::BadPage { page: 1, .. }));
}

#[test]
fn cycles_are_errors() {
    // A branch page that is its own child.
    let data = file(&[(2, branch(2, &[(b"a", 2)]))]);
    assert_eq!(invalid(data), Problem::PageReused(2));
    // Two branch pages pointing at each other.
    let data = file(&[(2, branch(2, &[(b"a", 3)])), (3, branch(3, &[(b"a", 2)]))]);
    assert_eq!(invalid(data), Problem::PageReused(2));
    // A bucket whose root is the page holding it.
    let data = file(&[(2, leaf(2, &[(BUCKET_LEAF, b"a", &page_bucket(2))]))]);
    assert_eq!(invalid(data), Problem::PageReused(2));
}

#[test]
fn too_deep_is_an_error() {
    let levels = MAX_DEPTH as u64 + 2;
    let mut pages: Vec<(u64, Vec<u8>)> = (2..2 + levels)
        .map(|id| (id, branch(id, &[(b"a", id + 1)])))
        .collect();
    pages.push((2 + levels, leaf(2 + levels, &[(0, b"a", b"1")])));
    assert_eq!(invalid(file(&pages)), Problem::TooDeep);
}

#[test]
fn malformed_pages() {
    // Overflow pages past the pages in use.
    let mut page = leaf(2, &[(0, b"k", b"v")]);
    page[12..16].copy_from_slice(&1000u32.to_le_bytes());
    let p = invalid(file(&[(2, page)]));
    assert!(matches!(p, Problem::BadPage { page: 2, .. }), "{p:?}");

    // A key size that runs past the page.
    let mut page = leaf(2, &[(0, b"k", b"v")]);
    page[PAGE_HEADER + 8..PAGE_HEADER + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = invalid(file(&[(2, page)]));
    assert!(p.to_string().contains("points past the page"), "{p}");

    // More elements than an inline page holds.
    let mut inline = inline_bucket(&[(0, b"k", b"v")]);
    inline[BUCKET_HEADER + 10..BUCKET_HEADER + 12].copy_from_slice(&2u16.to_le_bytes());
    let p = invalid(file(&[(2, leaf(2, &[(BUCKET_LEAF, b"a", &inline)]))]));
    assert!(p.to_string().contains("element 1 beyond the page"), "{p}");

    // Keys out of order in a leaf, and a child key outside its branch
    // key's range (a lookup would miss it).
    let p = invalid(file(&[(2, leaf(2, &[(0, b"b", b""), (0, b"a", b"")]))]));
    assert!(p.to_string().contains("keys out of order"), "{p}");
    let p = invalid(file(&[
        (2, branch(2, &[(b"a", 3), (b"m", 4)])),
        (3, leaf(3, &[(0, b"a", b"")])),
        (4, leaf(4, &[(0, b"b", b"")])),
    ]));
    assert_eq!(p.to_string(), "page 4: keys out of order");

    // A freelist page where a leaf belongs.
    let mut page = leaf(2, &[(0, b"k", b"v")]);
    page[8..10].copy_from_slice(&0x10u16.to_le_bytes());
    let p = invalid(file(&[(2, page)]));
    assert!(
        p.to_string().contains("expected a branch or leaf page"),
        "{p}"
    );

    // A bucket value shorter than its header.
    let p = invalid(file(&[(2, leaf(2, &[(BUCKET_LEAF, b"a", b"short")]))]));
    assert!(p.to_string().contains("bucket value too short"), "{p}");
}

/// xorshift64: deterministic, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut opened = 0;
    for path in [PODMAN, CONTAINERD] {
        let original = fixture(path);
        let used = Bolt::from_bytes(original.clone()).unwrap().page_count as usize * PS;
        for _ in 0..1000 {
            let mut data = original.clone();
            match rng.below(4) {
                0 => data.truncate(rng.below(used)),
                1 => {
                    for _ in 0..1 + rng.below(16) {
                        let at = rng.below(used);
                        data[at] ^= 1 << rng.below(8);
                    }
                }
                // Small numbers where ids, counts and offsets live make
                // plausible-looking but wrong pages.
                2 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(used - 8) & !3;
                        let small = rng.below(64) as u64;
                        data[at..at + 8].copy_from_slice(&small.to_le_bytes());
                    }
                }
                _ => {
                    // Mutate only page headers and elements of tree pages.
                    for _ in 0..1 + rng.below(8) {
                        let page = 2 + rng.below(used / PS - 2);
                        let at = page * PS + rng.below(PAGE_HEADER + 4 * ELEMENT);
                        data[at] = rng.next() as u8;
                    }
                }
            }
            if let Ok(db) = Bolt::from_bytes(data) {
                opened += 1;
                walk(db.root(), 0);
            }
        }
    }
    // Most single flips land in unused or value bytes: the loop must have
    // exercised the readers, not only the meta checks.
    assert!(opened > 100, "only {opened} mutated files opened");
}
