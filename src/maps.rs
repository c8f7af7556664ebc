//! Typed handles on the programs' maps. The registry itself (names, types,
//! capacities) is `porin_common::maps`, re-exported here; this module opens
//! its entries in a loaded object. A handle's key and value types are the
//! entry's ([`Holds`]), so no caller spells a map name or can open a map
//! with another layout.
//!
//! The test below checks the registry against both compiled objects.

use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapError, PerCpuArray, ProgramArray},
    Ebpf, Pod,
};
pub use porin_common::maps::*;

/// Why a registry entry could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("map `{0}` is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map `{name}`: open: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// aya handle types holding keys `K` and values `V` (arrays: `u32`
/// indexes): ties a handle to a [`MapDef`]'s types.
pub trait Holds<K, V> {}
impl<T, K: Pod, V: Pod> Holds<K, V> for HashMap<T, K, V> {}
impl<T, K: Pod, V: Pod> Holds<K, V> for LpmTrie<T, K, V> {}
impl<T, V: Pod> Holds<u32, V> for Array<T, V> {}
impl<T, V: Pod> Holds<u32, V> for PerCpuArray<T, V> {}
impl<T> Holds<u32, u32> for ProgramArray<T> {}

/// `def` in `bpf`, read-only, as handle `H` (e.g. `HashMap<_, _, _>`: the
/// types come from `def`).
pub fn open<'a, K, V, H>(bpf: &'a Ebpf, def: MapDef<K, V>) -> Result<H, OpenError>
where
    H: Holds<K, V> + TryFrom<&'a Map, Error = MapError>,
{
    handle(bpf.map(def.name).ok_or(OpenError::Missing(def.name))?, def)
}

/// [`open`] for writing.
pub fn open_mut<'a, K, V, H>(bpf: &'a mut Ebpf, def: MapDef<K, V>) -> Result<H, OpenError>
where
    H: Holds<K, V> + TryFrom<&'a mut Map, Error = MapError>,
{
    handle(
        bpf.map_mut(def.name).ok_or(OpenError::Missing(def.name))?,
        def,
    )
}

/// `def` taken out of `bpf` (the handle owns the map).
pub fn take<K, V, H>(bpf: &mut Ebpf, def: MapDef<K, V>) -> Result<H, OpenError>
where
    H: Holds<K, V> + TryFrom<Map, Error = MapError>,
{
    handle(
        bpf.take_map(def.name).ok_or(OpenError::Missing(def.name))?,
        def,
    )
}

/// `map` (found under `def`'s name: borrowed, taken, or a new handle on
/// the same kernel map) as handle `H`.
pub fn handle<M, K, V, H>(map: M, def: MapDef<K, V>) -> Result<H, OpenError>
where
    H: Holds<K, V> + TryFrom<M, Error = MapError>,
{
    H::try_from(map).map_err(|source| OpenError::Map {
        name: def.name,
        source,
    })
}

#[cfg(test)]
mod tests {
    use aya_obj::EbpfSectionKind;

    use super::*;
    use crate::{ebpf::object_for, kernel::EventsTransport};

    /// Every declared map of both objects is in the registry with the
    /// same kind, sizes, capacity and flags, and every entry is in the
    /// object(s) it names: the eBPF crate and userspace cannot drift apart.
    #[test]
    fn the_registry_matches_both_objects() {
        let objects = [
            (EventsTransport::RingBuf, InObject::Ring),
            (EventsTransport::Perf, InObject::Perf),
        ];
        let mut wrong = Vec::new();
        for (t, which) in objects {
            let Ok(bytes) = object_for(t) else {
                // Host-only work (docs/DEVELOPING.md); CI always builds them.
                eprintln!("SKIPPED: no eBPF objects in an AYA_BUILD_SKIP build");
                return;
            };
            let obj = aya_obj::Object::parse(&bytes).expect("the object parses");
            let mut found = Vec::new();
            for (name, m) in &obj.maps {
                // `.data`/`.rodata`/`.bss` are globals, not declared maps.
                if !matches!(
                    m.section_kind(),
                    EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
                ) {
                    continue;
                }
                found.push(name.as_str());
                let Some(entry) = in_object(which).find(|e| e.name == name) else {
                    wrong.push(format!("{t:?} object: {name} is not in the registry"));
                    continue;
                };
                let actual = MapSpec {
                    kind: match m.map_type() {
                        ty if ty == entry.kind as u32 => entry.kind,
                        ty => {
                            wrong.push(format!("{t:?} object, {name}: map type {ty}"));
                            continue;
                        }
                    },
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                    ..*entry
                };
                if actual != *entry {
                    wrong.push(format!("{t:?} object: {actual:?}, registered {entry:?}"));
                }
            }
            for e in in_object(which).filter(|e| !found.contains(&e.name)) {
                wrong.push(format!("{t:?} object: no map {}", e.name));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
