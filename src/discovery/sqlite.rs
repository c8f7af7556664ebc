//! A minimal, read-only SQLite reader: the rows of one table.
//!
//! Podman 5 keeps its state in SQLite (`<graphroot>/db.sql`), in WAL mode in
//! some versions (the state code sets `journal_mode = WAL`), so the
//! newest rows are often only in the write-ahead log `db.sql-wal`, not yet
//! checkpointed into the database file. This reads both files into memory
//! and overlays the WAL's committed pages on the database's, as a reader
//! at the newest commit would see them. It never writes, never opens the
//! WAL index (`-shm`) and takes no lock, so it cannot stall Podman.
//!
//! Both files are untrusted input (truncated, half-written, corrupt), so
//! every offset is checked and every walk bounded: a page out of range, a
//! page reached twice (a cycle), a tree deeper than [`MAX_DEPTH`] or a
//! malformed cell is an error, never a panic.
//!
//! Format (<https://www.sqlite.org/fileformat2.html>), what is used here:
//! - database header, 100 bytes at the start of page 1: the magic string,
//!   page size (u16 BE at 16; 1 means 65,536), reserved bytes per page (18
//!   bytes after the magic, offset 20), page count (u32 BE at 28, valid when
//!   the change counter at 24 equals the one at 92), text encoding (u32 BE
//!   at 56, 1 = UTF-8);
//! - b-tree page: type byte (5 interior table, 13 leaf table), cell count
//!   (u16 at 3), right-most child (u32 at 8, interior only), then 2-byte
//!   cell offsets; page 1's header starts after the database header;
//! - table leaf cell: payload size and rowid (varints), the payload's local
//!   part, then the first overflow page (u32) if it spills; each overflow
//!   page is the next page's number (u32) and `usable - 4` bytes;
//! - record: header size, one serial type per column (varints), values;
//! - `sqlite_schema` is the table rooted at page 1: (type, name, tbl_name,
//!   rootpage, sql);
//! - a column declared `INTEGER PRIMARY KEY` is the rowid and is stored as
//!   NULL in the record: this reader returns NULL for it (Podman's tables
//!   read here have none: their keys are `TEXT PRIMARY KEY`);
//! - WAL: 32-byte header (magic 0x377f0682/3, the low bit naming the
//!   checksum's word order; page size; salts; checksum), then frames: a
//!   24-byte header (page number, database size in pages for a commit
//!   frame, salts, checksum) and the page. A frame counts when its salts
//!   match the header's and the running checksum over the header and every
//!   frame so far matches; only frames up to the last valid commit count,
//!   and the last copy of a page wins.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::state::StateError;

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const DB_HEADER: usize = 100;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const WAL_MAGIC: u32 = 0x377f_0682;

const INTERIOR_TABLE: u8 = 5;
const LEAF_TABLE: u8 = 13;

/// Tree depth limit: a table of millions of rows is 4-5 levels deep.
pub const MAX_DEPTH: usize = 32;
/// Most columns a record may have (SQLite's own hard limit).
const MAX_COLUMNS: usize = 32_767;
/// Most memory the rows of one table may take once decoded (values and
/// their bookkeeping): a crafted file whose cells repeat one large record
/// must not make the daemon allocate without bound.
const MAX_DECODED: usize = 256 << 20;

/// How often [`Sqlite::open`] reads the files again when the WAL changed
/// while they were being read (a commit or a checkpoint in between).
const READ_ATTEMPTS: usize = 5;

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Value {
    /// The bytes of a text (or blob) value.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Text(b) | Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}

/// A table's rows, in rowid order, with the column names of its schema.
#[derive(Debug)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// The position of column `name` (case-insensitive, as in SQL).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
    }
}

/// A database as of its newest commit.
pub struct Sqlite {
    path: PathBuf,
    db: Vec<u8>,
    wal: Vec<u8>,
    /// Page number to the offset of its newest committed copy in `wal`.
    wal_pages: HashMap<u32, usize>,
    page_size: usize,
    usable: usize,
    page_count: u32,
}

impl Sqlite {
    /// Reads `path` and its WAL (`<path>-wal`, if any).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let wal_path = wal_path(path);
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            let wal_before = read_optional(&wal_path)?;
            let db = fs::read(path).map_err(|e| StateError::io(path, e))?;
            let wal = read_optional(&wal_path)?;
            // A commit or checkpoint between the reads: the two files may
            // not belong together.
            if wal.len() != wal_before.len()
                || wal.get(..WAL_HEADER) != wal_before.get(..WAL_HEADER)
            {
                last = Some("the write-ahead log changed while it was read".to_string());
                continue;
            }
            match Self::parse(path, db, wal) {
                Ok(s) => return Ok(s),
                Err(problem) => last = Some(problem),
            }
        }
        Err(StateError::invalid(
            path,
            last.unwrap_or_else(|| "unreadable".into()),
        ))
    }

    fn parse(path: &Path, db: Vec<u8>, wal: Vec<u8>) -> Result<Self, String> {
        if db.len() < DB_HEADER || &db[..16] != MAGIC {
            return Err("not an SQLite database (bad header)".into());
        }
        let page_size = match be16(&db, 16)? {
            1 => 65536,
            n => n as usize,
        };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("bad page size {page_size}"));
        }
        let reserved = db[20] as usize;
        let usable = page_size - reserved;
        if usable < 480 {
            return Err(format!("bad usable page size {usable}"));
        }
        if be32(&db, 56)? > 1 {
            return Err("text encoding is UTF-16; only UTF-8 is read".into());
        }
        let mut page_count = if be32(&db, 24)? == be32(&db, 92)? && be32(&db, 28)? > 0 {
            be32(&db, 28)?
        } else {
            u32::try_from(db.len() / page_size).map_err(|_| "database too large")?
        };
        let (wal_pages, wal_count) = wal_index(&wal, page_size)?;
        if let Some(n) = wal_count {
            page_count = n;
        }
        Ok(Self {
            path: path.to_owned(),
            db,
            wal,
            wal_pages,
            page_size,
            usable,
            page_count,
        })
    }

    /// Every row of table `name` (case-insensitive).
    pub fn table(&self, name: &str) -> Result<Table, StateError> {
        self.table_inner(name)
            .map_err(|problem| StateError::invalid(&self.path, problem))
    }

    fn table_inner(&self, name: &str) -> Result<Table, String> {
        let schema = self.rows(1)?;
        for row in schema {
            let text = |i: usize| row.get(i).and_then(Value::bytes).unwrap_or_default();
            if text(0) != b"table" || !text(1).eq_ignore_ascii_case(name.as_bytes()) {
                continue;
            }
            let Some(Value::Int(root)) = row.get(3) else {
                return Err(format!("table {name}: no root page in the schema"));
            };
            let root = u32::try_from(*root).map_err(|_| format!("table {name}: bad root page"))?;
            let sql = String::from_utf8_lossy(text(4)).into_owned();
            let columns = columns_of(&sql);
            if columns.is_empty() {
                return Err(format!(
                    "table {name}: cannot read its columns from `{sql}`"
                ));
            }
            return Ok(Table {
                columns,
                rows: self.rows(root)?,
            });
        }
        Err(format!("no table {name}"))
    }

    /// The records of the table b-tree rooted at `root`, in rowid order.
    fn rows(&self, root: u32) -> Result<Vec<Vec<Value>>, String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut budget = MAX_DECODED;
        self.walk(root, 0, &mut seen, &mut budget, &mut out)?;
        Ok(out)
    }

    fn walk(
        &self,
        page_no: u32,
        depth: usize,
        seen: &mut HashSet<u32>,
        budget: &mut usize,
        out: &mut Vec<Vec<Value>>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("b-tree deeper than {MAX_DEPTH} at page {page_no}"));
        }
        if !seen.insert(page_no) {
            return Err(format!("page {page_no} is reached twice (a cycle)"));
        }
        let page = self.page(page_no)?;
        let header = if page_no == 1 { DB_HEADER } else { 0 };
        let kind = *page.get(header).ok_or("short page")?;
        let cells = be16(page, header + 3)? as usize;
        let pointers = header + if kind == INTERIOR_TABLE { 12 } else { 8 };
        let cell_at = |i: usize| -> Result<usize, String> {
            let off = be16(page, pointers + 2 * i)? as usize;
            if off >= page.len() {
                return Err(format!("page {page_no}: cell {i} out of the page"));
            }
            Ok(off)
        };
        match kind {
            INTERIOR_TABLE => {
                for i in 0..cells {
                    let child = be32(page, cell_at(i)?)?;
                    self.walk(child, depth + 1, seen, budget, out)?;
                }
                self.walk(be32(page, header + 8)?, depth + 1, seen, budget, out)
            }
            LEAF_TABLE => {
                let mut cells_seen = HashSet::new();
                for i in 0..cells {
                    let at = cell_at(i)?;
                    // Cells never share bytes: a repeat is a crafted page.
                    if !cells_seen.insert(at) {
                        return Err(format!("page {page_no}: two cells at offset {at}"));
                    }
                    let payload = self.leaf_payload(page, at, seen)?;
                    let row = decode_record(&payload)?;
                    let cost = payload.len() + (row.len() + 1) * size_of::<Value>();
                    *budget = budget
                        .checked_sub(cost)
                        .ok_or("the table decodes to more than 256 MiB")?;
                    out.push(row);
                }
                Ok(())
            }
            k => Err(format!(
                "page {page_no}: type {k} is not a table b-tree page"
            )),
        }
    }

    /// The whole payload of the table leaf cell at `off`, overflow included.
    fn leaf_payload(
        &self,
        page: &[u8],
        off: usize,
        seen: &mut HashSet<u32>,
    ) -> Result<Vec<u8>, String> {
        let (size, n) = varint(page, off)?;
        let (_rowid, m) = varint(page, off + n)?;
        let start = off + n + m;
        let size = usize::try_from(size).map_err(|_| "payload too large")?;
        // Far beyond anything a container's config holds, and bounds the
        // memory a corrupt length could ask for.
        if size > 64 << 20 {
            return Err(format!("payload of {size} bytes"));
        }
        let u = self.usable;
        let max_local = u - 35;
        let local = if size <= max_local {
            size
        } else {
            let min_local = (u - 12) * 32 / 255 - 23;
            let k = min_local + (size - min_local) % (u - 4);
            if k <= max_local {
                k
            } else {
                min_local
            }
        };
        let mut payload = page
            .get(start..start + local)
            .ok_or("cell payload out of the page")?
            .to_vec();
        if local < size {
            let mut next = be32(page, start + local)?;
            while payload.len() < size {
                if next == 0 || !seen.insert(next) {
                    return Err(format!("overflow chain broken at page {next}"));
                }
                let ovf = self.page(next)?;
                next = be32(ovf, 0)?;
                let take = (size - payload.len()).min(u - 4);
                payload.extend_from_slice(ovf.get(4..4 + take).ok_or("short overflow page")?);
            }
        }
        Ok(payload)
    }

    /// Page `n` (1-based) as of the newest commit.
    fn page(&self, n: u32) -> Result<&[u8], String> {
        if n == 0 || n > self.page_count {
            return Err(format!(
                "page {n} is beyond the database's {} pages",
                self.page_count
            ));
        }
        let (bytes, start) = match self.wal_pages.get(&n) {
            Some(&off) => (&self.wal, off),
            None => (&self.db, (n as usize - 1) * self.page_size),
        };
        bytes
            .get(start..start + self.page_size)
            .ok_or_else(|| format!("page {n} is missing (file truncated?)"))
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn read_optional(path: &Path) -> Result<Vec<u8>, StateError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StateError::io(path, e)),
    }
}

/// The newest committed copy of each page in `wal` and the database size
/// of the last commit (`None`: no committed frame, or no WAL at all).
fn wal_index(wal: &[u8], page_size: usize) -> Result<(HashMap<u32, usize>, Option<u32>), String> {
    let mut pages = HashMap::new();
    if wal.len() < WAL_HEADER {
        return Ok((pages, None));
    }
    // A header that is not valid (being written, or not a WAL) makes the
    // whole log void, as it does for SQLite's own readers.
    let magic = be32(wal, 0)?;
    if magic & !1 != WAL_MAGIC {
        return Ok((pages, None));
    }
    let big_endian = magic & 1 == 1;
    let salts = &wal[16..24];
    let mut sum = checksum((0, 0), &wal[..24], big_endian);
    if sum != (be32(wal, 24)?, be32(wal, 28)?) || be32(wal, 8)? as usize != page_size {
        return Ok((pages, None));
    }
    let mut pending = Vec::new();
    let mut committed = None;
    let mut off = WAL_HEADER;
    while let Some(frame) = wal.get(off..off + FRAME_HEADER + page_size) {
        if &frame[8..16] != salts {
            break;
        }
        sum = checksum(sum, &frame[..8], big_endian);
        sum = checksum(sum, &frame[FRAME_HEADER..], big_endian);
        if sum != (be32(frame, 16)?, be32(frame, 20)?) {
            break;
        }
        pending.push((be32(frame, 0)?, off + FRAME_HEADER));
        let size_after_commit = be32(frame, 4)?;
        if size_after_commit != 0 {
            pages.extend(pending.drain(..));
            committed = Some(size_after_commit);
        }
        off += FRAME_HEADER + page_size;
    }
    Ok((pages, committed))
}

/// SQLite's WAL checksum: Fibonacci-weighted sums of 32-bit word pairs.
fn checksum(mut s: (u32, u32), data: &[u8], big_endian: bool) -> (u32, u32) {
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s.0 = s.0.wrapping_add(word(&pair[..4])).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(word(&pair[4..])).wrapping_add(s.0);
    }
    s
}

/// One record (a row's columns).
fn decode_record(p: &[u8]) -> Result<Vec<Value>, String> {
    let (header_len, mut pos) = varint(p, 0)?;
    let header_len = usize::try_from(header_len).map_err(|_| "bad record header")?;
    if header_len > p.len() || header_len < pos {
        return Err("record header out of the record".into());
    }
    let mut body = header_len;
    let mut out = Vec::new();
    while pos < header_len {
        if out.len() == MAX_COLUMNS {
            return Err(format!("a record of more than {MAX_COLUMNS} columns"));
        }
        let (serial, n) = varint(p, pos)?;
        pos += n;
        let len = match serial {
            0 | 8 | 9 => 0,
            1..=4 => serial as usize,
            5 => 6,
            6 | 7 => 8,
            10 | 11 => return Err(format!("reserved serial type {serial}")),
            n => usize::try_from((n - 12) / 2).map_err(|_| "value too large")?,
        };
        let v = p
            .get(body..body + len)
            .ok_or("record value out of the record")?;
        body += len;
        out.push(match serial {
            0 => Value::Null,
            8 => Value::Int(0),
            9 => Value::Int(1),
            1..=6 => {
                // Big-endian two's complement of 1, 2, 3, 4, 6 or 8 bytes.
                let mut x: i64 = if v[0] & 0x80 != 0 { -1 } else { 0 };
                for &b in v {
                    x = (x << 8) | i64::from(b);
                }
                Value::Int(x)
            }
            7 => Value::Real(f64::from_bits(u64::from_be_bytes(
                v.try_into().map_err(|_| "bad real")?,
            ))),
            n if n % 2 == 0 => Value::Blob(v.to_vec()),
            _ => Value::Text(v.to_vec()),
        });
    }
    Ok(out)
}

/// SQLite's varint: 1-9 bytes, big-endian groups of 7 bits, the ninth
/// byte whole. Returns the value and its length.
fn varint(b: &[u8], at: usize) -> Result<(u64, usize), String> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = *b.get(at + i).ok_or("varint out of the page")?;
        if i == 8 {
            return Ok(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    unreachable!("the loop returns by its ninth byte")
}

fn be16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("read past the end at {at}"))
}

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("read past the end at {at}"))
}

/// The column names of a `CREATE TABLE` statement, in order: the first
/// word of each top-level definition, table constraints left out.
fn columns_of(sql: &str) -> Vec<String> {
    let Some(open) = sql.find('(') else {
        return Vec::new();
    };
    let mut defs = Vec::new();
    let (mut depth, mut start) = (0usize, open + 1);
    for (i, c) in sql.char_indices().skip_while(|&(i, _)| i <= open) {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => {
                defs.push(&sql[start..i]);
                break;
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                defs.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    const CONSTRAINTS: [&str; 5] = ["constraint", "primary", "unique", "check", "foreign"];
    defs.iter()
        .filter_map(|d| d.split_whitespace().next())
        .map(|w| w.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']')))
        .filter(|w| !CONSTRAINTS.iter().any(|k| w.eq_ignore_ascii_case(k)))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests;
