//! A minimal, read-only BoltDB (bbolt) reader.
//!
//! Podman 4 (`libpod/bolt_state.db`) and containerd (`meta.db`) keep their
//! container metadata in BoltDB files. Porin only needs to look things up in
//! them, so this reads the whole file into memory once and walks the B+tree
//! from the newest valid meta page. It never writes and never takes the
//! database's file lock: containerd holds that lock for as long as it runs.
//!
//! The file is untrusted input (it may be truncated, half-written or
//! corrupt), so every offset is bounds-checked with checked arithmetic and
//! [`Bolt::open`] walks every reachable page once before handing out any
//! bucket: a page out of range, a malformed element, a page reached twice
//! (a cycle) or a tree deeper than [`MAX_DEPTH`] is an error there. The
//! lookups afterwards still check every access and simply find nothing if
//! an invariant were ever broken; nothing here can panic.
//!
//! Layout (all integers little-endian on the platforms Porin runs on):
//! - page header, 16 bytes: id u64, flags u16, count u16, overflow u32; a
//!   page spans `1 + overflow` pages of `page_size` bytes;
//! - meta (pages 0 and 1, after the header): magic u32, version u32,
//!   page_size u32, flags u32, root bucket {root u64, sequence u64},
//!   freelist u64, pgid u64 (pages in use), txid u64, checksum u64
//!   (FNV-1a 64 of the fields before it);
//! - branch element, 16 bytes: pos u32, ksize u32, pgid u64;
//! - leaf element, 16 bytes: flags u32, pos u32, ksize u32, vsize u32;
//!   `pos` counts from the element itself; flag 0x01 marks a sub-bucket,
//!   whose value starts with a bucket header {root u64, sequence u64}; a
//!   root of 0 means the bucket's single leaf page follows inline.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
/// Bytes of the meta fields covered by the checksum (magic up to txid).
const META_CHECKSUMMED: usize = 56;
const META_SIZE: usize = META_CHECKSUMMED + 8;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;

/// bbolt uses the OS page size: 4 KiB on x86_64, up to 64 KiB on arm64.
const MIN_PAGE_SIZE: usize = 512;
const MAX_PAGE_SIZE: usize = 64 * 1024;

/// Limit on nested pages (branch levels plus bucket nesting). Real files
/// are a handful of levels deep; the limit bounds recursion on bad input.
pub const MAX_DEPTH: usize = 64;

/// How often [`Bolt::open`] reads the file again when a writer committed
/// while it was being read.
const READ_ATTEMPTS: usize = 5;

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a usable BoltDB file: {problem}", path.display())]
    Invalid { path: PathBuf, problem: Problem },
}

/// What is wrong with the bytes of a database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no valid meta page (first: {first}; second: {second})")]
    NoValidMeta { first: String, second: String },
    #[error("page {page}: {reason}")]
    BadPage { page: u64, reason: String },
    #[error("page {0} is reached twice (a cycle or a shared page)")]
    PageReused(u64),
    #[error("the tree is deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the file kept changing while it was read ({READ_ATTEMPTS} attempts)")]
    Unstable,
}

/// An opened database: the file's bytes as of one committed transaction.
pub struct Bolt {
    data: Vec<u8>,
    page_size: usize,
    /// Pages in use (the meta's high-water mark); valid ids are below it.
    page_count: u64,
    root: u64,
    txid: u64,
}

/// A bucket: a page-based tree, or a small one stored inline in its
/// parent's leaf.
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    db: &'a Bolt,
    node: Node<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Node<'a> {
    Page(u64),
    /// The bytes of an inline leaf page (header included).
    Inline(&'a [u8]),
}

/// A bucket entry's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Bucket(Bucket<'a>),
    Data(&'a [u8]),
}

impl std::fmt::Debug for Bolt {
    // The bytes themselves would drown everything else.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bolt")
            .field("bytes", &self.data.len())
            .field("page_size", &self.page_size)
            .field("page_count", &self.page_count)
            .field("txid", &self.txid)
            .finish()
    }
}

impl Bolt {
    /// Reads and checks the database at `path`. Errors name the file.
    pub fn open(path: &Path) -> Result<Bolt, BoltError> {
        let io_err = |source| BoltError::Io {
            path: path.to_owned(),
            source,
        };
        let invalid = |problem| BoltError::Invalid {
            path: path.to_owned(),
            problem,
        };
        for _ in 0..READ_ATTEMPTS {
            let mut file = File::open(path).map_err(io_err)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(io_err)?;
            let db = Bolt::from_bytes(data).map_err(invalid)?;
            // A writer never overwrites pages reachable from the newest
            // committed meta, but once it commits, the next transaction may
            // reuse them. The meta pages were read first; if no newer
            // transaction committed by the end of the read, every page
            // read belongs to the snapshot of that meta.
            let mut head = vec![0u8; db.page_size.saturating_mul(2)];
            let mut file = File::open(path).map_err(io_err)?;
            file.read_exact(&mut head).map_err(io_err)?;
            if newest_txid(&head, db.page_size) == Some(db.txid) {
                return Ok(db);
            }
        }
        Err(invalid(Problem::Unstable))
    }

    /// Checks `data` (a whole database file) and walks every reachable page.
    pub fn from_bytes(data: Vec<u8>) -> Result<Bolt, Problem> {
        let meta = choose_meta(&data)?;
        let db = Bolt {
            data,
            page_size: meta.page_size,
            page_count: meta.page_count,
            root: meta.root,
            txid: meta.txid,
        };
        let mut seen = vec![false; usize::try_from(db.page_count).unwrap_or(usize::MAX)];
        db.check_tree(db.root, 0, &mut seen, Bounds::default())?;
        Ok(db)
    }

    /// The transaction id of the snapshot that was read.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The top-level bucket, whose entries are the named root buckets.
    pub fn root(&self) -> Bucket<'_> {
        Bucket {
            db: self,
            node: Node::Page(self.root),
        }
    }

    /// The page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Page<'_>, Problem> {
        let bad = |reason: String| Problem::BadPage { page: id, reason };
        // Pages 0 and 1 are the meta pages, never part of a tree.
        if id < 2 || id >= self.page_count {
            return Err(bad(format!(
                "page id out of range (the database has {} pages)",
                self.page_count
            )));
        }
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .ok_or_else(|| bad("page offset overflows".into()))?;
        let header = self
            .data
            .get(start..)
            .and_then(|rest| rest.get(..PAGE_HEADER))
            .ok_or_else(|| bad("page header beyond the end of the file".into()))?;
        let overflow = u64::from(le_u32(header, 12).unwrap_or(u32::MAX));
        if id
            .checked_add(overflow)
            .is_none_or(|last| last >= self.page_count)
        {
            return Err(bad(format!(
                "{overflow} overflow pages run past the {} pages in use",
                self.page_count
            )));
        }
        let len = usize::try_from(overflow + 1)
            .ok()
            .and_then(|n| n.checked_mul(self.page_size))
            .ok_or_else(|| bad("page length overflows".into()))?;
        let bytes = start
            .checked_add(len)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| bad("page runs past the end of the file".into()))?;
        Page::parse(id, bytes).ok_or_else(|| bad("page header unreadable".into()))
    }

    /// Walks the tree of pages under `id`, marking each page in `seen`.
    /// Keys must ascend and stay within `bounds`, so that a lookup (which
    /// trusts the order) finds every entry an iteration yields.
    fn check_tree<'a>(
        &'a self,
        id: u64,
        depth: usize,
        seen: &mut [bool],
        bounds: Bounds<'a>,
    ) -> Result<(), Problem> {
        if depth >= MAX_DEPTH {
            return Err(Problem::TooDeep);
        }
        let page = self.page(id)?;
        for i in id..=id.saturating_add(u64::from(page.overflow)) {
            let slot = usize::try_from(i).ok().and_then(|i| seen.get_mut(i));
            match slot {
                Some(s) if !*s => *s = true,
                Some(_) => return Err(Problem::PageReused(id)),
                None => {
                    return Err(Problem::BadPage {
                        page: id,
                        reason: "overflow runs out of range".into(),
                    })
                }
            }
        }
        match page.flags {
            BRANCH_PAGE => {
                if page.count == 0 {
                    return Err(page.bad("empty branch page"));
                }
                let keys = page.keys(bounds, |i| page.branch(i).map(|(k, _)| k))?;
                for i in 0..page.count {
                    let (_, child) = page.branch(i)?;
                    // Keys below the first branch key still go to the
                    // first child, so it keeps the inherited lower bound.
                    let low = if i == 0 {
                        bounds.low
                    } else {
                        keys.get(usize::from(i)).copied()
                    };
                    let high = keys.get(usize::from(i) + 1).copied().or(bounds.high);
                    self.check_tree(child, depth + 1, seen, Bounds { low, high })?;
                }
                Ok(())
            }
            LEAF_PAGE => self.check_leaf(&page, depth, seen, bounds),
            other => Err(page.bad(&format!("flags {other:#x}: expected a branch or leaf page"))),
        }
    }

    /// Checks a leaf's elements and the buckets they hold.
    fn check_leaf<'a>(
        &'a self,
        page: &Page<'a>,
        depth: usize,
        seen: &mut [bool],
        bounds: Bounds<'a>,
    ) -> Result<(), Problem> {
        page.keys(bounds, |i| page.leaf(i).map(|(_, k, _)| k))?;
        for i in 0..page.count {
            let (flags, _, value) = page.leaf(i)?;
            if flags & BUCKET_LEAF == 0 {
                continue;
            }
            match bucket_node(value).ok_or_else(|| page.bad("bucket value too short"))? {
                Node::Page(root) => self.check_tree(root, depth + 1, seen, Bounds::default())?,
                Node::Inline(bytes) => {
                    if depth + 1 >= MAX_DEPTH {
                        return Err(Problem::TooDeep);
                    }
                    let inline = Page::parse(page.id, bytes)
                        .ok_or_else(|| page.bad("inline bucket too short"))?;
                    if inline.flags != LEAF_PAGE {
                        return Err(page.bad("inline bucket is not a leaf page"));
                    }
                    self.check_leaf(&inline, depth + 1, seen, Bounds::default())?;
                }
            }
        }
        Ok(())
    }
}

/// The key range a page's keys must lie in: `low <= key < high`.
#[derive(Debug, Clone, Copy, Default)]
struct Bounds<'a> {
    low: Option<&'a [u8]>,
    high: Option<&'a [u8]>,
}

impl<'a> Bucket<'a> {
    /// The sub-bucket `name`; `None` when absent or when `name` holds data.
    pub fn bucket(&self, name: &[u8]) -> Option<Bucket<'a>> {
        match self.lookup(name)? {
            Value::Bucket(b) => Some(b),
            Value::Data(_) => None,
        }
    }

    /// The data stored under `key`; `None` when absent or a sub-bucket.
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        match self.lookup(key)? {
            Value::Data(d) => Some(d),
            Value::Bucket(_) => None,
        }
    }

    /// Every entry in key order.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            db: self.db,
            stack: self.start_page().map(|p| vec![(p, 0)]).unwrap_or_default(),
        }
    }

    fn start_page(&self) -> Option<Page<'a>> {
        match self.node {
            Node::Page(id) => self.db.page(id).ok(),
            Node::Inline(bytes) => Page::parse(0, bytes),
        }
    }

    fn lookup(&self, key: &[u8]) -> Option<Value<'a>> {
        let mut page = self.start_page()?;
        for _ in 0..MAX_DEPTH {
            match page.flags {
                BRANCH_PAGE => {
                    // Each branch key is the first key of its child: the
                    // key lives under the last child whose key is <= it.
                    let mut child = page.branch(0).ok()?.1;
                    for i in 1..page.count {
                        let (k, id) = page.branch(i).ok()?;
                        if k > key {
                            break;
                        }
                        child = id;
                    }
                    page = self.db.page(child).ok()?;
                }
                LEAF_PAGE => {
                    return (0..page.count).find_map(|i| {
                        let (flags, k, v) = page.leaf(i).ok()?;
                        (k == key).then(|| self.db.value(flags, v)).flatten()
                    });
                }
                _ => return None,
            }
        }
        None
    }
}

impl Bolt {
    fn value<'a>(&'a self, flags: u32, v: &'a [u8]) -> Option<Value<'a>> {
        if flags & BUCKET_LEAF == 0 {
            return Some(Value::Data(v));
        }
        Some(Value::Bucket(Bucket {
            db: self,
            node: bucket_node(v)?,
        }))
    }
}

/// Iterator over a bucket's entries, in key order.
pub struct Iter<'a> {
    db: &'a Bolt,
    /// The path from the bucket's root page to the current leaf, with the
    /// next element index of each page.
    stack: Vec<(Page<'a>, u16)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (page, next) = self.stack.last_mut()?;
            if *next >= page.count {
                self.stack.pop();
                continue;
            }
            let i = *next;
            *next += 1;
            let page = *page;
            let ok = match page.flags {
                BRANCH_PAGE if self.stack.len() < MAX_DEPTH => {
                    match page.branch(i).ok().and_then(|(_, c)| self.db.page(c).ok()) {
                        Some(child) => {
                            self.stack.push((child, 0));
                            continue;
                        }
                        None => None,
                    }
                }
                LEAF_PAGE => page
                    .leaf(i)
                    .ok()
                    .and_then(|(flags, k, v)| Some((k, self.db.value(flags, v)?))),
                _ => None,
            };
            // Only reachable on a broken invariant: end the iteration
            // rather than return a partial or wrong view.
            if ok.is_none() {
                self.stack.clear();
            }
            return ok;
        }
    }
}

/// A page's header and bytes (overflow pages included).
#[derive(Debug, Clone, Copy)]
struct Page<'a> {
    id: u64,
    flags: u16,
    count: u16,
    overflow: u32,
    bytes: &'a [u8],
}

impl<'a> Page<'a> {
    fn parse(id: u64, bytes: &'a [u8]) -> Option<Page<'a>> {
        Some(Page {
            id,
            flags: le_u16(bytes, 8)?,
            count: le_u16(bytes, 10)?,
            overflow: le_u32(bytes, 12)?,
            bytes,
        })
    }

    fn bad(&self, reason: &str) -> Problem {
        Problem::BadPage {
            page: self.id,
            reason: reason.to_owned(),
        }
    }

    /// The page's keys (read with `key`), checked to ascend strictly and
    /// to lie within `bounds`.
    fn keys(
        &self,
        bounds: Bounds<'a>,
        key: impl Fn(u16) -> Result<&'a [u8], Problem>,
    ) -> Result<Vec<&'a [u8]>, Problem> {
        let keys = (0..self.count).map(key).collect::<Result<Vec<_>, _>>()?;
        let ascending = keys.windows(2).all(|w| w[0] < w[1]);
        let above = |k: &&[u8]| bounds.low.is_none_or(|low| *k >= low);
        let below = |k: &&[u8]| bounds.high.is_none_or(|high| *k < high);
        if !ascending || !keys.iter().all(|k| above(k) && below(k)) {
            return Err(self.bad("keys out of order"));
        }
        Ok(keys)
    }

    /// Offset of element `i` and its 16 bytes.
    fn element(&self, i: u16) -> Result<(usize, &'a [u8]), Problem> {
        let at = PAGE_HEADER + usize::from(i) * ELEMENT;
        let bytes = self
            .bytes
            .get(at..at + ELEMENT)
            .ok_or_else(|| self.bad(&format!("element {i} beyond the page")))?;
        Ok((at, bytes))
    }

    /// `len` bytes at `pos` past the element at `at`.
    fn span(&self, at: usize, pos: u32, len: u32, i: u16) -> Result<&'a [u8], Problem> {
        let start = usize::try_from(pos).ok().and_then(|p| at.checked_add(p));
        let end = start.and_then(|s| s.checked_add(usize::try_from(len).ok()?));
        match (start, end) {
            (Some(s), Some(e)) => self.bytes.get(s..e),
            _ => None,
        }
        .ok_or_else(|| self.bad(&format!("element {i} points past the page")))
    }

    /// Branch element `i`: (key, child page id).
    fn branch(&self, i: u16) -> Result<(&'a [u8], u64), Problem> {
        let (at, e) = self.element(i)?;
        let (pos, ksize, child) = (le_u32(e, 0), le_u32(e, 4), le_u64(e, 8));
        let (Some(pos), Some(ksize), Some(child)) = (pos, ksize, child) else {
            return Err(self.bad("short branch element"));
        };
        Ok((self.span(at, pos, ksize, i)?, child))
    }

    /// Leaf element `i`: (flags, key, value).
    fn leaf(&self, i: u16) -> Result<(u32, &'a [u8], &'a [u8]), Problem> {
        let (at, e) = self.element(i)?;
        let fields = (le_u32(e, 0), le_u32(e, 4), le_u32(e, 8), le_u32(e, 12));
        let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = fields else {
            return Err(self.bad("short leaf element"));
        };
        let key = self.span(at, pos, ksize, i)?;
        let value = self.span(at, pos.saturating_add(ksize), vsize, i)?;
        Ok((flags, key, value))
    }
}

/// Where a bucket value's tree lives; `None` when the value is too short.
fn bucket_node(value: &[u8]) -> Option<Node<'_>> {
    match le_u64(value, 0)? {
        0 => value.get(BUCKET_HEADER..).map(Node::Inline),
        root => {
            // The header alone must be there even for a page bucket.
            value.get(..BUCKET_HEADER)?;
            Some(Node::Page(root))
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: usize,
    root: u64,
    page_count: u64,
    txid: u64,
}

/// The valid meta page with the highest transaction id.
fn choose_meta(data: &[u8]) -> Result<Meta, Problem> {
    let usable = |index, size| parse_meta(data, index, size).and_then(|m| m.fits(data.len()));
    let first = usable(0, 0);
    // The second meta page sits one page in; without a valid first page
    // its size is unknown, so try each plausible size.
    let second = match &first {
        Ok(m) => usable(1, m.page_size),
        Err(_) => {
            let mut tries = page_sizes().map(|size| usable(1, size));
            let mut reason = None;
            // The first error from a page that is a meta page says most.
            tries
                .find(|t| match t {
                    Ok(_) => true,
                    Err(e) => {
                        if e != NOT_META {
                            reason.get_or_insert_with(|| e.clone());
                        }
                        false
                    }
                })
                .unwrap_or_else(|| Err(reason.unwrap_or_else(|| "not found".into())))
        }
    };
    match (first, second) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(m), Err(_)) | (Err(_), Ok(m)) => Ok(m),
        (Err(first), Err(second)) => Err(Problem::NoValidMeta { first, second }),
    }
}

impl Meta {
    /// Whether the pages this meta uses are all in a file of `len` bytes.
    fn fits(self, len: usize) -> Result<Meta, String> {
        let file_pages = (len / self.page_size) as u64;
        if self.page_count > file_pages {
            return Err(format!(
                "{} pages in use but the file holds {file_pages} (truncated?)",
                self.page_count
            ));
        }
        Ok(self)
    }
}

const NOT_META: &str = "not a meta page";

/// The highest transaction id among the valid meta pages in `head`.
fn newest_txid(head: &[u8], page_size: usize) -> Option<u64> {
    let a = parse_meta(head, 0, 0).ok().map(|m| m.txid);
    let b = parse_meta(head, 1, page_size).ok().map(|m| m.txid);
    a.max(b)
}

fn page_sizes() -> impl Iterator<Item = usize> {
    (9..=16).map(|shift| 1usize << shift)
}

/// Meta page `index` (0 or 1), one `page_size` apart. For the first page
/// the size is read from the page itself.
fn parse_meta(data: &[u8], index: u64, page_size: usize) -> Result<Meta, String> {
    let start = if index == 0 { 0 } else { page_size };
    let page = data
        .get(start..)
        .and_then(|d| d.get(..PAGE_HEADER + META_SIZE))
        .ok_or("file too short")?;
    let header = Page::parse(index, page).ok_or("file too short")?;
    let m = &page[PAGE_HEADER..];
    let field32 = |off| le_u32(m, off).ok_or("file too short");
    let field64 = |off| le_u64(m, off).ok_or("file too short");
    if le_u64(page, 0) != Some(index) || header.flags != META_PAGE {
        return Err(NOT_META.into());
    }
    if field32(0)? != MAGIC {
        return Err("bad magic".into());
    }
    if field32(4)? != VERSION {
        return Err(format!("unsupported version {}", field32(4)?));
    }
    if fnv1a64(&m[..META_CHECKSUMMED]) != field64(META_CHECKSUMMED)? {
        return Err("checksum mismatch".into());
    }
    let size = usize::try_from(field32(8)?).map_err(|_| "bad page size")?;
    if !size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size) {
        return Err(format!("implausible page size {size}"));
    }
    if index == 1 && size != page_size {
        return Err(format!("page size {size} does not match its position"));
    }
    let (root, page_count, txid) = (field64(16)?, field64(40)?, field64(48)?);
    if root < 2 || root >= page_count {
        return Err(format!("root page {root} out of range"));
    }
    Ok(Meta {
        page_size: size,
        root,
        page_count,
        txid,
    })
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests;
