//! What Porin keeps in bpffs so enforcement outlives the daemon, and the
//! rules for finding it again.
//!
//! # Layout (`<bpffs>` is the config's `bpffs`, default `/sys/fs/bpf/porin`)
//! - `<bpffs>/maps/<MAP_NAME>`: every map of the eBPF object, pinned by the
//!   loader ([`open_pinned`]); the set comes from the object's own map list,
//!   so a map added to the object is pinned without edits here;
//! - `<bpffs>/maps/PORIN_META_V1`: the layout version and the version of the
//!   porin that wrote it ([`porin_common::layout`]);
//! - `<bpffs>/links/xdp-<native|generic>-<ifname>`: the uplinks' XDP
//!   `bpf_link`s (a link only outlives its process when pinned);
//! - `<bpffs>/links/tcx-<ingress|egress>-<ifindex>`: the container veths'
//!   TCX links, on kernels with TCX (6.6+);
//! - `<bpffs>/retired-<n>/`: maps of an older layout moved aside while a
//!   replacement takes over; removed after the first complete apply.
//!
//! TC programs on container veths, by kernel:
//! - with TCX (6.6+, e.g. 6.12): TCX links, attached first in the chain and
//!   pinned. A TCX program that returns a verdict ends the chain and the
//!   kernel then skips the legacy clsact filters, so on these kernels a
//!   netlink filter could be bypassed by any other TCX user; first in the
//!   TCX chain it cannot be. A pinned link outlives the process and its
//!   program is replaced atomically (`bpf_link_update`). A link whose veth
//!   went away is dead; its pin is removed when found (adoption, attach).
//! - without (5.10, 6.1): clsact + cls_bpf filters through netlink at a
//!   fixed priority and a handle derived from the bpffs directory
//!   ([`TC_PRIORITY`], [`tc_handle`]); such a filter stays attached after
//!   the process exits, is replaced atomically (same priority and handle,
//!   no create flag) and goes away with its veth.
//!
//! # Start-up decision ([`prepare`])
//! - nothing pinned: create and pin;
//! - same layout: adopt, after checking every pinned map's type, key and
//!   value size (and size where fixed) against the object: aya reuses a pin
//!   by name without looking at it, and a wrong map must not be run with;
//! - a newer layout: refuse to start (a downgrade would misread the maps);
//! - an older layout or no valid record: *replace*. The old maps are moved
//!   to `retired-<n>/` (the programs attached now keep them: they hold the
//!   maps, not the pins), new maps are created and filled by the first apply,
//!   and only then each attachment's program is replaced, atomically. No
//!   packet meets an empty map; established connections of the old layout
//!   are looked up in the new, empty conntrack and judged again by policy.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::tc::TcHandle,
    Ebpf, EbpfLoader,
};
use aya_obj::EbpfSectionKind;
use porin_common::layout::{self, Compat, MetaRecord, LAYOUT};

use crate::{ebpf::LoadError, maps};

/// Maps that carry no enforcement state: the programs only write them and
/// the daemon reads each record once. A pinned one of another shape (the
/// flow events map is a ring buffer or a perf event array depending on the
/// transport, which a restart may change) is unpinned and created anew
/// instead of refusing to start; the attached programs keep the old one
/// until their programs are replaced.
pub const TRANSIENT: &[&str] = &[maps::EVENTS.name];
/// cls_bpf priority of Porin's filters ("PR"): fixed, so a restarted daemon
/// (or `porin uninstall`) finds them again.
pub const TC_PRIORITY: u16 = 0x5052;
/// cls_bpf handle of the filters of the Porin pinned in `dir`: derived from
/// the directory, so daemons with different `bpffs` (tests, or two
/// installations) keep separate filters, each finding its own again.
pub fn tc_handle(dir: &Path) -> TcHandle {
    use std::os::unix::ffi::OsStrExt as _;
    // FNV-1a: stable across builds and architectures.
    let mut h: u32 = 0x811c_9dc5;
    for b in dir.as_os_str().as_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    TcHandle::new(0, (h % 0xFFFE) as u16 + 1)
}

/// Why the pinned state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{dir}: maps pinned by porin {writer} use layout {found}, newer than this porin's \
         layout {ours}: refusing to start (a downgrade would misread them). Run the newer \
         porin, or remove Porin from the kernel with `porin uninstall --bpffs {dir}` \
         (this drops enforcement until the next start)"
    )]
    Newer {
        dir: String,
        found: u32,
        ours: u32,
        writer: String,
    },
    #[error(
        "{path}: the pinned map does not match this porin's `{name}` ({what}); refusing to \
         run with a wrong map. Remove it with `porin uninstall --bpffs {dir}`"
    )]
    Mismatch {
        path: String,
        name: String,
        dir: String,
        what: String,
    },
    #[error("{path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: reading the pinned map: {source}")]
    Map {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("parsing the eBPF object's maps: {0}")]
    Object(String),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        path: path.display().to_string(),
        op,
        source,
    }
}

/// One map of the object, as declared.
#[derive(Clone, Debug)]
pub struct ObjectMap {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The object's maps that are pinned: all declared maps (`maps` and `.maps`
/// sections), not the `.data`/`.rodata`/`.bss` ones aya makes from globals
/// (those are per-load, and a frozen `.rodata` could not be reused).
pub fn object_maps(object: &[u8]) -> Result<Vec<ObjectMap>, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let mut maps: Vec<ObjectMap> = obj
        .maps
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.section_kind(),
                EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
            )
        })
        .map(|(name, m)| ObjectMap {
            name: name.clone(),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
        })
        .collect();
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(maps)
}

/// Paths under one bpffs directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub dir: PathBuf,
}

impl PinDir {
    pub fn new(dir: &Path) -> Self {
        PinDir {
            dir: dir.to_path_buf(),
        }
    }
    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }
    pub fn xdp_link(&self, mode: &str, ifname: &str) -> PathBuf {
        self.links().join(format!("xdp-{mode}-{ifname}"))
    }
    /// A container veth's TCX link (`ingress` or `egress`), by ifindex.
    pub fn tcx_link(&self, ingress: bool, ifindex: u32) -> PathBuf {
        let dir = if ingress { "ingress" } else { "egress" };
        self.links().join(format!("tcx-{dir}-{ifindex}"))
    }
}

/// Parses a `links/` entry name `xdp-<mode>-<ifname>`.
pub fn parse_xdp_link(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("xdp-")?;
    let (mode, ifname) = rest.split_once('-')?;
    matches!(mode, "native" | "generic").then_some((mode, ifname))
}

/// What [`prepare`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Fresh,
    /// Same layout, maps checked; the writer's version.
    Adopt {
        writer: String,
    },
    /// Older or unknown layout, moved to `retired`.
    Replace {
        retired: PathBuf,
        layout: Option<u32>,
    },
}

/// Reads the layout record pinned in `pins`, if any. Errors when the meta
/// map exists but is not the one this build expects.
pub fn read_meta(pins: &PinDir) -> Result<Option<MetaRecord>, PinError> {
    let path = pins.map(maps::META.name);
    if !path.exists() {
        return Ok(None);
    }
    let map_err = |source| PinError::Map {
        path: path.display().to_string(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    let info = data.info().map_err(map_err)?;
    if info.value_size() as usize != size_of::<MetaRecord>() || info.key_size() != 4 {
        // Not a record this build can read: an unknown layout.
        return Ok(Some(MetaRecord {
            magic: 0,
            layout: 0,
            writer: [0; layout::WRITER_LEN],
        }));
    }
    let arr: Array<MapData, MetaRecord> = Array::try_from(Map::Array(data)).map_err(map_err)?;
    Ok(Some(arr.get(&0, 0).map_err(map_err)?))
}

/// Decides what to do with what is pinned in `pins` (see the module notes)
/// and gets the directory ready for [`open_pinned`].
pub fn prepare(pins: &PinDir, maps: &[ObjectMap]) -> Result<Found, PinError> {
    let dir = pins.dir.display().to_string();
    let meta = read_meta(pins)?;
    let any_pinned = fs::read_dir(pins.maps())
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let decision = match (&meta, any_pinned) {
        (None, false) => Compat::Fresh,
        // Maps without a record: not written by a porin that knew layouts.
        (None, true) => Compat::Replace,
        (Some(m), _) => layout::compat(Some(m), LAYOUT),
    };
    let found = match decision {
        Compat::Fresh => Found::Fresh,
        Compat::Refuse => {
            let m = meta.expect("a record");
            return Err(PinError::Newer {
                dir,
                found: m.layout,
                ours: LAYOUT,
                writer: m.writer().to_string(),
            });
        }
        Compat::Adopt => {
            check_maps(pins, maps)?;
            Found::Adopt {
                writer: meta.map(|m| m.writer().to_string()).unwrap_or_default(),
            }
        }
        Compat::Replace => {
            let retired = retire(pins)?;
            Found::Replace {
                retired,
                layout: meta
                    .filter(|m| m.magic == layout::META_MAGIC)
                    .map(|m| m.layout),
            }
        }
    };
    for d in [pins.maps(), pins.links()] {
        fs::create_dir_all(&d).map_err(io_err(&d, "creating the directory"))?;
    }
    Ok(found)
}

/// Moves `maps/` aside to a fresh `retired-<n>/`.
fn retire(pins: &PinDir) -> Result<PathBuf, PinError> {
    let mut n = 0;
    let target = loop {
        let t = pins.dir.join(format!("retired-{n}"));
        if !t.exists() {
            break t;
        }
        n += 1;
    };
    let from = pins.maps();
    fs::rename(&from, &target).map_err(io_err(&from, "moving old maps aside"))?;
    Ok(target)
}

/// Checks every pinned map that the object declares against its
/// declaration.
pub fn check_maps(pins: &PinDir, maps: &[ObjectMap]) -> Result<(), PinError> {
    for m in maps {
        let path = pins.map(&m.name);
        if !path.exists() {
            continue; // new in this build: created and pinned at load
        }
        let map_err = |source| PinError::Map {
            path: path.display().to_string(),
            source,
        };
        let info = MapData::from_pin(&path)
            .and_then(|d| d.info())
            .map_err(map_err)?;
        let ty = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        // Ring buffers and perf arrays get their size from the kernel or
        // the CPU count at load; other sizes are part of the layout.
        let sized = m.max_entries != 0 && ![4u32, 27].contains(&m.map_type);
        let mut what = Vec::new();
        if ty != m.map_type {
            what.push(format!("type {ty}, expected {}", m.map_type));
        }
        if info.key_size() != m.key_size {
            what.push(format!(
                "key size {}, expected {}",
                info.key_size(),
                m.key_size
            ));
        }
        if info.value_size() != m.value_size {
            what.push(format!(
                "value size {}, expected {}",
                info.value_size(),
                m.value_size
            ));
        }
        if sized && info.max_entries() != m.max_entries {
            what.push(format!(
                "max entries {}, expected {}",
                info.max_entries(),
                m.max_entries
            ));
        }
        if !what.is_empty() && TRANSIENT.contains(&m.name.as_str()) {
            log::warn!(
                "{}: pinned with another shape ({}); replacing it",
                path.display(),
                what.join(", ")
            );
            fs::remove_file(&path).map_err(io_err(&path, "unpinning"))?;
            continue;
        }
        if !what.is_empty() {
            return Err(PinError::Mismatch {
                path: path.display().to_string(),
                name: m.name.clone(),
                dir: pins.dir.display().to_string(),
                what: what.join(", "),
            });
        }
    }
    Ok(())
}

/// Loads `object` with every map in `maps` pinned under `pins` (reusing
/// the pins that exist).
pub fn open_pinned(pins: &PinDir, maps: &[ObjectMap], object: &[u8]) -> Result<Ebpf, LoadError> {
    let paths: Vec<(String, PathBuf)> = maps
        .iter()
        .map(|m| (m.name.clone(), pins.map(&m.name)))
        .collect();
    let mut loader = EbpfLoader::new();
    // See `ebpf::open` for why BTF is skipped.
    loader.btf(None);
    for (name, path) in &paths {
        loader.map_pin_path(name.as_str(), path.as_path());
    }
    loader.load(object).map_err(LoadError::Object)
}

/// Writes this build's layout record.
pub fn write_meta(bpf: &mut Ebpf, writer: &str) -> Result<(), LoadError> {
    fn missing<E>(_: E) -> LoadError {
        LoadError::MissingMap {
            name: maps::META.name,
        }
    }
    let mut arr: Array<_, _> = maps::open_mut(bpf, maps::META).map_err(missing)?;
    arr.set(0, MetaRecord::new(LAYOUT, writer), 0)
        .map_err(missing)
}

/// Removes every pin under `dir` and the directories (after the
/// attachments are gone); returns the paths removed.
pub fn remove_pins(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    fn walk(d: &Path, removed: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, removed);
                let _ = fs::remove_dir(&p);
            } else if fs::remove_file(&p).is_ok() {
                removed.push(p.display().to_string());
            }
        }
    }
    walk(dir, &mut removed);
    let _ = fs::remove_dir(dir);
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{ENDPOINTS, META};

    #[test]
    fn handles_are_stable_nonzero_and_differ_by_directory() {
        let a = tc_handle(Path::new("/sys/fs/bpf/porin"));
        assert_eq!(a, tc_handle(Path::new("/sys/fs/bpf/porin")));
        assert_ne!(a, tc_handle(Path::new("/sys/fs/bpf/porin-test-x")));
        assert_ne!(u32::from(a), 0);
    }

    #[test]
    fn xdp_link_names_round_trip() {
        let p = PinDir::new(Path::new("/x"));
        let path = p.xdp_link("generic", "eth0.100");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_xdp_link(name), Some(("generic", "eth0.100")));
        assert_eq!(parse_xdp_link("xdp-weird-eth0"), None);
        assert_eq!(parse_xdp_link("cgroup-x"), None);
    }

    #[test]
    fn the_object_declares_the_meta_map_and_every_map_is_pinnable() {
        let Ok(obj) = crate::ebpf::object() else {
            return; // AYA_BUILD_SKIP build
        };
        let maps = object_maps(&obj).expect("parse");
        assert!(maps.iter().any(|m| m.name == META.name), "{maps:?}");
        assert!(maps.iter().any(|m| m.name == ENDPOINTS.name));
        assert!(maps.iter().all(|m| !m.name.starts_with('.')));
        let meta = maps.iter().find(|m| m.name == META.name).unwrap();
        assert_eq!(meta.value_size as usize, size_of::<MetaRecord>());
    }
}
