//! The L7 maps of HTTP rules (layout in [`porin_common::http`]) and the
//! HTTP stage programs.
//!
//! * `http_from_container` / `http_to_container` (entries, indexes by
//!   `Direction`), `http_parse` (2: one chunk of the request head per
//!   call), `http_finish` (3), `http_value` (4: one long run of a
//!   header value no rule reads) and `http_chunk` (5: a chunked body's
//!   framing) are loaded with the main programs and put
//!   (with `revoked_from_container` / `revoked_to_container`, 6 and 7:
//!   the RSTs that end a revoked connection)
//!   and `mqtt_parse` / `mqtt_finish` (8 and 9: MQTT-ruled
//!   connections, whose sets are marked `SET_MQTT`)
//!   in `PORIN_HTTPP_V1`: the main programs tail-call the entries for
//!   HTTP-ruled connections. Without them those packets drop (`Internal`),
//!   never pass unjudged.
//! * The rule keys are hashed under a secret key per install
//!   ([`porin_common::sip`]), held in `PORIN_HTTPK_V1` ([`ensure_key`]):
//!   a fresh map gets 16 bytes from getrandom(2); adopted pinned maps keep
//!   theirs, so the rules in them stay valid. The stage denies every
//!   request while the key is all zeroes.
//! * Rule sets follow the policy generations: `PORIN_HTTPS_V1` is keyed by
//!   the policy key (generation included), so it is written under the
//!   inactive generation before the flip and purged after, with the policy.
//!   `PORIN_HTTPR_V1` is keyed by content-derived set ids: new sets' rules
//!   are written before the flip, rules no set uses any more deleted after.
//! * Rules are normally deleted by the difference between the previous
//!   and the new `Compiled`. When the map may hold rules no `Compiled`
//!   lists (maps adopted from an earlier daemon, which wrote rules this
//!   process never saw; a failed apply, which wrote new rules and then
//!   kept the old `Compiled`), the manager asks for a sweep: the map is
//!   walked and every rule the new state does not hold is deleted, those
//!   no live set uses before the flip (so leftovers cannot fill the map
//!   and make the new rules' writes fail), the others after it.

use std::collections::BTreeSet;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, ProgramArray},
    programs::SchedClassifier,
    Ebpf,
};
use porin_common::datapath::{Direction, PolicyKey};
use porin_common::http::{HttpKey, HttpSet, HttpValue};
use porin_common::mqtt::{MqttKey, MqttNext, MqttSet};
use porin_common::sip::SipKey;

use super::{map_err, purge, remove_hash, write_hash, DatapathError};
use crate::ebpf::{self, LoadError};
use crate::maps;
use crate::policy::Compiled;

pub const HTTP_FROM_CONTAINER: &str = "http_from_container";
pub const HTTP_TO_CONTAINER: &str = "http_to_container";
pub const HTTP_PARSE: &str = "http_parse";
pub const HTTP_FINISH: &str = "http_finish";
pub const HTTP_VALUE: &str = "http_value";
pub const HTTP_CHUNK: &str = "http_chunk";
pub const REVOKED_FROM_CONTAINER: &str = "revoked_from_container";
pub const REVOKED_TO_CONTAINER: &str = "revoked_to_container";
pub const MQTT_PARSE: &str = "mqtt_parse";
pub const MQTT_FINISH: &str = "mqtt_finish";

/// The hash key's map (one entry).
pub const KEY_MAP: &str = maps::HTTP_KEY.name;

/// 16 bytes from getrandom(2) (blocking until the kernel's pool is
/// initialised, which it is long before a daemon starts), never all zero.
pub fn random_key() -> Result<SipKey, DatapathError> {
    loop {
        let mut b = [0u8; 16];
        let mut got = 0;
        while got < b.len() {
            // SAFETY: writes at most `16 - got` bytes into `b[got..]`.
            let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DatapathError::Random(e));
            }
            got += n as usize;
        }
        let key = SipKey::from_bytes(b);
        if !key.is_zero() {
            return Ok(key);
        }
    }
}

/// The key in `PORIN_HTTPK_V1` (all zeroes: not written).
pub fn read_key(bpf: &Ebpf) -> Result<SipKey, DatapathError> {
    let map = bpf
        .map(KEY_MAP)
        .ok_or(LoadError::MissingMap { name: KEY_MAP })?;
    let a: Array<&MapData, SipKey> = Array::try_from(map).map_err(map_err(KEY_MAP, "open"))?;
    a.get(&0, 0).map_err(map_err(KEY_MAP, "read"))
}

/// Writes `key` to `PORIN_HTTPK_V1`.
pub fn write_key(bpf: &mut Ebpf, key: &SipKey) -> Result<(), DatapathError> {
    let map = bpf
        .map_mut(KEY_MAP)
        .ok_or(LoadError::MissingMap { name: KEY_MAP })?;
    let mut a: Array<&mut MapData, SipKey> =
        Array::try_from(map).map_err(map_err(KEY_MAP, "open"))?;
    a.set(0, key, 0).map_err(map_err(KEY_MAP, "write"))
}

/// The key the programs hash with: the one in the map if there is one
/// (adopted pinned maps: their rules were compiled under it), else a new
/// random one, written. Returns it and whether it was kept.
pub fn ensure_key(bpf: &mut Ebpf) -> Result<(SipKey, bool), DatapathError> {
    let found = read_key(bpf)?;
    if !found.is_zero() {
        return Ok((found, true));
    }
    let key = random_key()?;
    write_key(bpf, &key)?;
    Ok((key, false))
}

/// The stage's slots in `PORIN_HTTPP_V1`, as in the eBPF crate's
/// `http::stage_index`.
const STAGE_SLOTS: u32 = 10;

/// Loads the HTTP stage programs and registers them for the tail calls.
///
/// On failure the array is emptied: a pinned array adopted from an earlier
/// daemon may still hold that daemon's stage, and a failed load must leave
/// HTTP-ruled connections dropping (a tail call to an empty slot fails,
/// `Internal`), not judged by whatever programs were there before.
pub fn load_stage(bpf: &mut Ebpf) -> Result<(), DatapathError> {
    let result = register_stage(bpf);
    if result.is_err() {
        if let Some(map) = bpf.map_mut(maps::HTTP_PROGRAMS.name) {
            if let Ok(mut progs) = ProgramArray::<&mut MapData>::try_from(map) {
                for index in 0..STAGE_SLOTS {
                    // An empty slot answers ENOENT: nothing to clear.
                    let _ = progs.clear_index(&index);
                }
            }
        }
    }
    result
}

fn register_stage(bpf: &mut Ebpf) -> Result<(), DatapathError> {
    // Indexes as in the eBPF crate's `http::stage_index`.
    for (name, index) in [
        (HTTP_FROM_CONTAINER, Direction::Egress as u32),
        (HTTP_TO_CONTAINER, Direction::Ingress as u32),
        (HTTP_PARSE, 2),
        (HTTP_FINISH, 3),
        (HTTP_VALUE, 4),
        (HTTP_CHUNK, 5),
        // Not HTTP: the RSTs of a revoked connection (`porin_common::ct`),
        // a stage program for the same reasons (its own stack and budget).
        (REVOKED_FROM_CONTAINER, 6 + Direction::Egress as u32),
        (REVOKED_TO_CONTAINER, 6 + Direction::Ingress as u32),
        // MQTT rules: the same entries and stream state, MQTT's parse.
        (MQTT_PARSE, 8),
        (MQTT_FINISH, 9),
    ] {
        let fd = ebpf::load_program::<SchedClassifier>(bpf, name)?
            .fd()
            .map_err(|source| LoadError::Program { name, source })?
            .try_clone()
            .map_err(|e| LoadError::Program {
                name,
                source: aya::programs::ProgramError::IOError(e),
            })?;
        let map = bpf
            .map_mut(maps::HTTP_PROGRAMS.name)
            .ok_or(LoadError::MissingMap {
                name: maps::HTTP_PROGRAMS.name,
            })?;
        let mut progs: ProgramArray<&mut MapData> =
            ProgramArray::try_from(map).map_err(map_err(maps::HTTP_PROGRAMS.name, "open"))?;
        progs
            .set(index, &fd, 0)
            .map_err(map_err(maps::HTTP_PROGRAMS.name, "set"))?;
    }
    Ok(())
}

/// Whether the L7 maps must be rewritten (with a generation flip).
pub fn changed(old: &Compiled, new: &Compiled) -> bool {
    old.http_maps != new.http_maps
}

/// Before the flip to `next`: the new rules, and the new sets under `next`
/// (after removing any left there by a failed apply). With `sweep`, first
/// deletes every rule that neither a set of the live generation nor `new`
/// uses; returns how many.
pub fn write_before_flip(
    bpf: &mut Ebpf,
    new: &Compiled,
    next: u32,
    sweep: bool,
) -> Result<usize, DatapathError> {
    purge::<PolicyKey, HttpSet>(bpf, maps::HTTP_SETS, |k| u32::from(k.generation) == next)?;
    let mut swept = 0;
    if sweep {
        // What the live generation's sets use stays until the flip; the
        // rest (a retired set's rules, leftovers of a failed apply) no
        // policy entry leads to. Connections opened under a retired set
        // lose its rules, as they do after every flip.
        let live = live_sets(bpf, 1 - next)?;
        swept = purge::<HttpKey, HttpValue>(bpf, maps::HTTP_RULES, |k| {
            !live.contains(&k.set) && !new.http_maps.rules.contains_key(k)
        })?;
    }
    if sweep {
        let live = live_sets(bpf, 1 - next)?;
        let mqtt = &new.http_maps.mqtt;
        swept += purge::<u32, MqttSet>(bpf, maps::MQTT_SETS, |id| {
            !live.contains(id) && !mqtt.sets.contains_key(id)
        })?;
        swept += purge::<MqttKey, MqttNext>(bpf, maps::MQTT_EDGES, |k| {
            !live.contains(&k.set) && !mqtt.edges.contains_key(k)
        })?;
    }
    write_hash(
        bpf,
        maps::HTTP_RULES,
        "insert",
        new.http_maps.rules.iter().map(|(k, v)| (*k, *v)),
    )?;
    // MQTT automata before their sets, sets before the policy sets that
    // name them: a connection never meets a set without its edges.
    write_hash(
        bpf,
        maps::MQTT_EDGES,
        "insert",
        new.http_maps.mqtt.edges.iter().map(|(k, v)| (*k, *v)),
    )?;
    write_hash(
        bpf,
        maps::MQTT_SETS,
        "insert",
        new.http_maps.mqtt.sets.iter().map(|(k, v)| (*k, *v)),
    )?;
    let sets = new.http_maps.sets.iter().map(|(k, v)| {
        (
            PolicyKey {
                generation: next as u8,
                ..*k
            },
            *v,
        )
    });
    write_hash(bpf, maps::HTTP_SETS, "insert", sets)?;
    Ok(swept)
}

/// Ids of the sets in `PORIN_HTTPS_V1` under `generation`.
fn live_sets(bpf: &mut Ebpf, generation: u32) -> Result<BTreeSet<u32>, DatapathError> {
    let m = map_mut!(bpf, maps::HTTP_SETS, BpfHashMap<&mut MapData, PolicyKey, HttpSet>);
    let mut ids = BTreeSet::new();
    for r in m.iter() {
        // An unreadable map fails the apply: nothing is deleted unseen.
        let (k, set) = r.map_err(map_err(maps::HTTP_SETS.name, "read"))?;
        if u32::from(k.generation) == generation {
            ids.insert(set.id);
        }
    }
    Ok(ids)
}

/// After the flip to `active`: the old generation's sets, and the rules no
/// new set uses: those `old` lists, or with `sweep` every one in the map
/// (returns how many the sweep deleted).
pub fn clean_after_flip(
    bpf: &mut Ebpf,
    old: &Compiled,
    new: &Compiled,
    active: u32,
    sweep: bool,
) -> Result<usize, DatapathError> {
    purge::<PolicyKey, HttpSet>(bpf, maps::HTTP_SETS, |k| u32::from(k.generation) != active)?;
    let mqtt = &new.http_maps.mqtt;
    if sweep {
        let n = purge::<HttpKey, HttpValue>(bpf, maps::HTTP_RULES, |k| {
            !new.http_maps.rules.contains_key(k)
        })?;
        let m = purge::<u32, MqttSet>(bpf, maps::MQTT_SETS, |id| !mqtt.sets.contains_key(id))?;
        let e = purge::<MqttKey, MqttNext>(bpf, maps::MQTT_EDGES, |k| !mqtt.edges.contains_key(k))?;
        return Ok(n + m + e);
    }
    // Sets before their edges: a connection of a retired set whose edges
    // went first would only miss (deny), but none is left meeting either.
    let gone_sets: Vec<u32> = old
        .http_maps
        .mqtt
        .sets
        .keys()
        .filter(|id| !mqtt.sets.contains_key(id))
        .copied()
        .collect();
    remove_hash::<u32, MqttSet>(bpf, maps::MQTT_SETS, &gone_sets)?;
    let gone_edges: Vec<MqttKey> = old
        .http_maps
        .mqtt
        .edges
        .keys()
        .filter(|k| !mqtt.edges.contains_key(k))
        .copied()
        .collect();
    remove_hash::<MqttKey, MqttNext>(bpf, maps::MQTT_EDGES, &gone_edges)?;
    let gone: Vec<HttpKey> = old
        .http_maps
        .rules
        .keys()
        .filter(|k| !new.http_maps.rules.contains_key(k))
        .copied()
        .collect();
    remove_hash::<HttpKey, HttpValue>(bpf, maps::HTTP_RULES, &gone)?;
    Ok(0)
}

/// Zeroes `PORIN_HTTPN_V1` (allowed requests by policy number): done when
/// an apply changes the list of policies, so a count never carries over to
/// another policy under the same number (Prometheus reads the drop as a
/// counter reset).
pub fn reset_allowed_counts(bpf: &mut Ebpf) -> Result<(), DatapathError> {
    let def = maps::HTTP_ALLOWED;
    let map = bpf
        .map_mut(def.name)
        .ok_or(LoadError::MissingMap { name: def.name })?;
    let mut a: aya::maps::PerCpuArray<&mut MapData, u64> =
        aya::maps::PerCpuArray::try_from(map).map_err(map_err(def.name, "open"))?;
    // One value per possible CPU, as the kernel reads them back.
    let cpus = a.get(&0, 0).map_err(map_err(def.name, "read"))?.len();
    for i in 0..def.max_entries {
        let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]).map_err(|source| {
            DatapathError::MapValues {
                map: def.name,
                op: "reset",
                source,
            }
        })?;
        a.set(i, zeros, 0).map_err(map_err(def.name, "reset"))?;
    }
    Ok(())
}
