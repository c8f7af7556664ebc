//! The identity policy: the active generation and the per-packet lookup.
//! A fixed number of hash lookups per packet (at most four), whatever the
//! number of rules.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use porin_common::{
    datapath::{
        action, max_entries, DatapathConfig, Direction, DropReason, Identity, PolicyKey,
        PolicyValue,
    },
    decide,
    parse::Flow,
};

#[map]
static PORIN_POL_V1: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(max_entries::POLICY, 0);

/// One entry: the active generation (see datapath.rs, atomic updates) and
/// the deny-cache epoch.
#[map]
static PORIN_CFG_V1: Array<DatapathConfig> =
    Array::with_max_entries(porin_common::maps::CONFIG.max_entries, 0);

/// The generation to look policy up in; `Internal` without a usable config.
#[inline(always)]
pub fn active_generation() -> Result<u8, DropReason> {
    match PORIN_CFG_V1.get(0) {
        Some(cfg) => decide::active_generation(cfg),
        None => Err(DropReason::Internal),
    }
}

/// The deny-cache epoch (`porin_common::dcache::epoch`), `None` while the
/// cache is off.
#[inline(always)]
pub fn cache_epoch() -> Option<u32> {
    PORIN_CFG_V1.get(0).and_then(porin_common::dcache::epoch)
}

/// Whether `subject`'s policy allows `flow` to or from `peer` (at L3/L4:
/// `ALLOW_HTTP` allows too).
#[inline(always)]
pub fn allows(
    subject: Identity,
    peer: Identity,
    flow: &Flow,
    dir: Direction,
    generation: u8,
) -> bool {
    lookup(subject, peer, flow, dir, generation).is_some()
}

/// The entry that allows `flow`, with the key it was found under: the
/// first entry found in the documented order decides; no entry, or a deny
/// entry, is `None`.
#[inline(always)]
pub fn lookup(
    subject: Identity,
    peer: Identity,
    flow: &Flow,
    dir: Direction,
    generation: u8,
) -> Option<(PolicyKey, u8)> {
    // One key on the stack, its peer and port rewritten per lookup.
    let mut key = decide::policy_key(subject, flow, dir, generation);
    let (lookups, n) = decide::policy_lookups(peer, flow);
    for (i, (peer, port)) in lookups.iter().enumerate() {
        if i >= n {
            break;
        }
        key.peer = *peer;
        key.port = *port;
        // SAFETY: the value is read at once, under RCU.
        if let Some(v) = unsafe { PORIN_POL_V1.get(&key) } {
            let a = v.action;
            return (a == action::ALLOW || a == action::ALLOW_HTTP).then_some((key, a));
        }
    }
    None
}
