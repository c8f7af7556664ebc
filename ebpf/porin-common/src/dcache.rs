//! The deny cache's pure logic: a packet's key and slot, when an entry
//! counts, which verdicts are stored, and the next epoch. The map, its
//! invalidation and why it is safe are described in the datapath module
//! notes ([`crate::datapath`], "Deny cache"); the eBPF side (`dcache.rs`
//! there) only reads and writes words.
//!
//! Entries are compared as six 64-bit words (key and epoch) and written as
//! eight: a handful of loads and compares per packet, and no struct copies
//! that LLVM could turn into bpf-linker's byte-loop `memcpy`/`memset` (see
//! `parse::HeaderBuf`). The word layout is [`DenyEntry`]'s in memory on a
//! little-endian machine (the eBPF target is `bpfel`; so are x86_64 and
//! aarch64), checked below.

use crate::{
    datapath::{max_entries, tc_action, DatapathConfig, DenyEntry, Direction, DropReason},
    decide::Verdict,
    parse::Flow,
};

const _: () = assert!(cfg!(target_endian = "little"));

/// Words of a [`DenyEntry`] compared on lookup: the key and the epoch.
pub const KEY_WORDS: usize = 6;
/// Words of a whole [`DenyEntry`].
pub const ENTRY_WORDS: usize = 8;

const _: () = assert!(core::mem::size_of::<DenyEntry>() == ENTRY_WORDS * 8);
const _: () = assert!(core::mem::offset_of!(DenyEntry, sport) == 32);
const _: () = assert!(core::mem::offset_of!(DenyEntry, direction) == 38);
const _: () = assert!(core::mem::offset_of!(DenyEntry, ifindex) == 40);
const _: () = assert!(core::mem::offset_of!(DenyEntry, epoch) == 44);
const _: () = assert!(core::mem::offset_of!(DenyEntry, reason) == 48);
const _: () = assert!(core::mem::offset_of!(DenyEntry, subject) == 52);
const _: () = assert!(core::mem::offset_of!(DenyEntry, peer) == 56);
const _: () = assert!(core::mem::offset_of!(DenyEntry, hits) == 60);
// `Flow`'s first five words hold what the key takes from it, at the same
// offsets (see `probe`).
const _: () = assert!(core::mem::offset_of!(Flow, saddr) == 0);
const _: () = assert!(core::mem::offset_of!(Flow, daddr) == 16);
const _: () = assert!(core::mem::offset_of!(Flow, sport) == 32);
const _: () = assert!(core::mem::offset_of!(Flow, dport) == 34);
const _: () = assert!(core::mem::offset_of!(Flow, family) == 36);
const _: () = assert!(core::mem::offset_of!(Flow, protocol) == 37);
const _: () = assert!(core::mem::align_of::<Flow>() == 8);

/// `log2(max_entries::DENY_CACHE)`.
const SLOT_BITS: u32 = max_entries::DENY_CACHE.trailing_zeros();

/// A packet's deny-cache lookup: its key words (the sixth with the epoch
/// read before the packet was judged) and its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyProbe {
    pub words: [u64; KEY_WORDS],
    /// Index into `PORIN_DCACHE_V1`, below `max_entries::DENY_CACHE`.
    pub slot: u32,
}

/// The epoch the cache is used with, from the `PORIN_CFG_V1` entry; `None`
/// (cache off: no lookup, no store) when the manager has not written a
/// configuration or not bumped the epoch yet.
#[inline(always)]
pub fn epoch(cfg: &DatapathConfig) -> Option<u32> {
    if cfg.ready == crate::datapath::CONFIG_READY && cfg.epoch != 0 {
        Some(cfg.epoch)
    } else {
        None
    }
}

/// The epoch after `epoch`: wraps around past `u32::MAX` and skips 0 (cache
/// off). Wrapping would take four billion applies, and an entry of the same
/// epoch number from then would also need to survive in its slot.
#[inline(always)]
pub fn next_epoch(epoch: u32) -> u32 {
    match epoch.wrapping_add(1) {
        0 => 1,
        e => e,
    }
}

/// The lookup for `flow` seen at `ifindex` in `dir` under `epoch`.
///
/// The key is everything the slow path's verdict depends on besides the
/// maps: the endpoint (ifindex), the direction, the addresses, ports,
/// protocol and family. Not `may_be_reply`: it only matters for conntrack,
/// which was checked before.
#[inline(always)]
pub fn probe(flow: &Flow, dir: Direction, ifindex: u32, epoch: u32) -> DenyProbe {
    let w = (flow as *const Flow).cast::<u64>();
    // SAFETY: `Flow` is repr(C, align(8)) with its addresses first (checked
    // above): its first 32 bytes are four aligned, initialised words.
    let a = unsafe { [*w, *w.add(1), *w.add(2), *w.add(3)] };
    let ports_family = u64::from(flow.sport)
        | u64::from(flow.dport) << 16
        | u64::from(flow.family) << 32
        | u64::from(flow.protocol) << 40
        | u64::from(dir as u8) << 48;
    let words = [
        a[0],
        a[1],
        a[2],
        a[3],
        ports_family,
        u64::from(ifindex) | u64::from(epoch) << 32,
    ];
    DenyProbe {
        slot: slot(&words),
        words,
    }
}

/// The slot of a key: a multiplicative hash of its words (the epoch left
/// out, so a flow keeps its slot across epochs), top bits kept.
#[inline(always)]
fn slot(words: &[u64; KEY_WORDS]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = 0;
    h = (h ^ words[0]).wrapping_mul(K);
    h = (h ^ words[1]).wrapping_mul(K);
    h = (h ^ words[2]).wrapping_mul(K);
    h = (h ^ words[3]).wrapping_mul(K);
    h = (h ^ words[4]).wrapping_mul(K);
    h = (h ^ (words[5] & 0xFFFF_FFFF)).wrapping_mul(K);
    (h >> (64 - SLOT_BITS)) as u32
}

/// The cached drop for `probe` in `entry` (its slot), if the entry was made
/// for exactly this key under the current epoch and holds a reason the
/// cache may repeat; `None` sends the packet down the slow path.
#[inline(always)]
pub fn hit(entry: &[u64; ENTRY_WORDS], probe: &DenyProbe) -> Option<DropReason> {
    let p = &probe.words;
    if entry[0] != p[0]
        || entry[1] != p[1]
        || entry[2] != p[2]
        || entry[3] != p[3]
        || entry[4] != p[4]
        || entry[5] != p[5]
    {
        return None;
    }
    // Only the reasons `cacheable` stores; anything else (a slot some
    // other writer filled) is not trusted.
    match entry[6] as u8 {
        r if r == DropReason::PolicyDenied as u8 => Some(DropReason::PolicyDenied),
        r if r == DropReason::SpoofedSource as u8 => Some(DropReason::SpoofedSource),
        _ => None,
    }
}

/// The reason in word 6 of an entry that [`hit`]: `SpoofedSource` or
/// `PolicyDenied` (the only two stored; anything else reads as the latter,
/// a drop either way).
#[inline(always)]
pub fn stored_reason(word6: u64) -> DropReason {
    if word6 as u8 == DropReason::SpoofedSource as u8 {
        DropReason::SpoofedSource
    } else {
        DropReason::PolicyDenied
    }
}

/// The subject and peer identities an entry (that [`hit`]) recorded, for
/// the repeated drop's flow event.
#[inline(always)]
pub fn identities(entry: &[u64; ENTRY_WORDS]) -> (u32, u32) {
    ((entry[6] >> 32) as u32, entry[7] as u32)
}

/// The verdict a hit gives: the drop, enforced (only enforce-mode drops are
/// stored), exactly what [`crate::decide::verdict`] gave the first packet.
#[inline(always)]
pub fn hit_verdict(reason: DropReason) -> Verdict {
    Verdict {
        action: tc_action::SHOT,
        drop: Some(reason),
    }
}

/// The reason to store for a slow-path `verdict`, or `None` when it must
/// not be cached: only drops (never a pass, so never an audited drop) for a
/// reason that depends on nothing but the key and the maps the epoch
/// covers. Parse errors, unknown endpoints and internal errors are judged
/// afresh every time.
#[inline(always)]
pub fn cacheable(verdict: &Verdict) -> Option<DropReason> {
    if verdict.action != tc_action::SHOT {
        return None;
    }
    match verdict.drop {
        Some(r @ (DropReason::PolicyDenied | DropReason::SpoofedSource)) => Some(r),
        _ => None,
    }
}

/// The words of the entry to store for `probe` (its epoch included),
/// dropped for `reason`, with the identities for later flow events and no
/// hits yet.
#[inline(always)]
pub fn entry_words(
    probe: &DenyProbe,
    reason: DropReason,
    subject: u32,
    peer: u32,
) -> [u64; ENTRY_WORDS] {
    let p = &probe.words;
    [
        p[0],
        p[1],
        p[2],
        p[3],
        p[4],
        p[5],
        u64::from(reason as u8) | u64::from(subject) << 32,
        u64::from(peer),
    ]
}

/// The typed view of stored words (userspace and tests).
pub fn entry_from_words(words: [u64; ENTRY_WORDS]) -> DenyEntry {
    // SAFETY: `DenyEntry` is repr(C, align(8)), 64 bytes of plain integers
    // without implicit padding, valid for any bytes.
    unsafe { core::mem::transmute::<[u64; ENTRY_WORDS], DenyEntry>(words) }
}

/// The slot `flow` at `ifindex` in `dir` uses (userspace and tests).
pub fn slot_of(flow: &Flow, dir: Direction, ifindex: u32) -> u32 {
    probe(flow, dir, ifindex, 0).slot
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::HashSet;

    use super::*;
    use crate::datapath::{proto, CONFIG_READY};

    fn flow4(s: [u8; 4], sport: u16, d: [u8; 4], dport: u16, protocol: u8) -> Flow {
        let mut saddr = [0; 16];
        let mut daddr = [0; 16];
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
        Flow {
            saddr,
            daddr,
            sport,
            dport,
            family: 4,
            protocol,
            may_be_reply: false,
            tcp_flags: 0,
        }
    }

    fn denied() -> Verdict {
        hit_verdict(DropReason::PolicyDenied)
    }

    fn stored(f: &Flow, dir: Direction, ifindex: u32, epoch: u32) -> [u64; ENTRY_WORDS] {
        let p = probe(f, dir, ifindex, epoch);
        entry_words(&p, DropReason::PolicyDenied, 0x0100_0001, 0x0100_0002)
    }

    #[test]
    fn entry_words_are_the_typed_entry() {
        let f = flow4([10, 0, 0, 1], 40000, [10, 0, 0, 3], 53, proto::UDP);
        let p = probe(&f, Direction::Ingress, 7, 42);
        let e = entry_from_words(entry_words(
            &p,
            DropReason::SpoofedSource,
            0x0100_0001,
            0x0100_0002,
        ));
        assert_eq!(e.saddr, f.saddr);
        assert_eq!(e.daddr, f.daddr);
        assert_eq!((e.sport, e.dport), (40000, 53));
        assert_eq!((e.family, e.protocol), (4, proto::UDP));
        assert_eq!(e.direction, Direction::Ingress as u8);
        assert_eq!((e.ifindex, e.epoch), (7, 42));
        assert_eq!(e.reason, DropReason::SpoofedSource as u8);
        assert_eq!((e.subject, e.peer, e.hits), (0x0100_0001, 0x0100_0002, 0));
        assert_eq!((e._pad0, e._pad1), (0, [0; 3]));
    }

    #[test]
    fn a_stored_drop_hits_its_own_key_and_epoch_only() {
        let f = flow4([10, 0, 0, 1], 40000, [10, 0, 0, 3], 53, proto::UDP);
        let e = stored(&f, Direction::Egress, 1, 5);
        assert_eq!(
            hit(&e, &probe(&f, Direction::Egress, 1, 5)),
            Some(DropReason::PolicyDenied)
        );
        assert_eq!(
            identities(&e),
            (0x0100_0001, 0x0100_0002),
            "identities for the event"
        );
        // `may_be_reply` is not part of the key (conntrack came first).
        let mut ack = f;
        ack.may_be_reply = true;
        assert!(hit(&e, &probe(&ack, Direction::Egress, 1, 5)).is_some());

        // Every field of the key, and the epoch, must match.
        let mut others = std::vec![
            (probe(&f, Direction::Egress, 1, 6), "newer epoch"),
            (probe(&f, Direction::Egress, 1, 4), "older epoch"),
            (probe(&f, Direction::Ingress, 1, 5), "direction"),
            (probe(&f, Direction::Egress, 2, 5), "ifindex"),
        ];
        let mut g = f;
        g.sport = 40001;
        others.push((probe(&g, Direction::Egress, 1, 5), "source port"));
        let mut g = f;
        g.dport = 54;
        others.push((probe(&g, Direction::Egress, 1, 5), "destination port"));
        let mut g = f;
        g.protocol = proto::TCP;
        others.push((probe(&g, Direction::Egress, 1, 5), "protocol"));
        let mut g = f;
        g.family = 6;
        others.push((probe(&g, Direction::Egress, 1, 5), "family"));
        let mut g = f;
        g.saddr[3] = 9;
        others.push((probe(&g, Direction::Egress, 1, 5), "source address"));
        let mut g = f;
        g.daddr[15] = 1;
        others.push((probe(&g, Direction::Egress, 1, 5), "destination address"));
        let g = flow4([10, 0, 0, 3], 53, [10, 0, 0, 1], 40000, proto::UDP);
        others.push((probe(&g, Direction::Egress, 1, 5), "reversed tuple"));
        for (p, what) in others {
            assert_eq!(hit(&e, &p), None, "{what}");
        }
    }

    #[test]
    fn a_zeroed_slot_never_hits() {
        let f = flow4([0; 4], 0, [0; 4], 0, 0);
        let mut zero = f;
        zero.family = 0;
        for epoch in [0, 1] {
            for ifindex in [0, 1] {
                let p = probe(&zero, Direction::Egress, ifindex, epoch);
                // Only the all-zero key under epoch 0 equals a zeroed slot,
                // and epoch 0 is never used (`epoch`).
                let want = (ifindex == 0 && epoch == 0).then_some(DropReason::PolicyDenied);
                assert_eq!(hit(&[0; ENTRY_WORDS], &p), want);
            }
        }
        assert_eq!(
            epoch(&DatapathConfig::default()),
            None,
            "zeroed config: off"
        );
    }

    #[test]
    fn only_reasons_it_stores_are_repeated() {
        let f = flow4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, proto::TCP);
        let p = probe(&f, Direction::Egress, 1, 1);
        for r in DropReason::ALL {
            let e = entry_words(&p, r, 0, 0);
            let want = matches!(r, DropReason::PolicyDenied | DropReason::SpoofedSource);
            assert_eq!(hit(&e, &p), want.then_some(r), "{r:?}");
            if want {
                assert_eq!(stored_reason(e[6]), r);
            }
        }
    }

    #[test]
    fn only_enforced_policy_and_spoofing_drops_are_stored() {
        use crate::{datapath::mode, decide::verdict};
        for r in DropReason::ALL {
            let enforced = verdict(Err(r), Some(mode::ENFORCE));
            let want = matches!(r, DropReason::PolicyDenied | DropReason::SpoofedSource);
            assert_eq!(cacheable(&enforced), want.then_some(r), "{r:?}");
            // Audit mode passes and counts: never stored.
            assert_eq!(cacheable(&verdict(Err(r), Some(mode::AUDIT))), None);
        }
        assert_eq!(cacheable(&verdict(Ok(()), Some(mode::ENFORCE))), None);
        assert_eq!(hit_verdict(DropReason::PolicyDenied), denied());
        assert_eq!(
            hit_verdict(DropReason::SpoofedSource),
            verdict(Err(DropReason::SpoofedSource), Some(mode::ENFORCE)),
            "a hit gives what the slow path gave"
        );
    }

    #[test]
    fn epochs_are_nonzero_and_need_a_ready_config() {
        let cfg = |ready, epoch| DatapathConfig {
            generation: 0,
            ready,
            epoch,
            _pad: 0,
        };
        assert_eq!(epoch(&cfg(CONFIG_READY, 3)), Some(3));
        assert_eq!(epoch(&cfg(CONFIG_READY, 0)), None);
        assert_eq!(epoch(&cfg(0, 3)), None);
        assert_eq!(next_epoch(1), 2);
        assert_eq!(next_epoch(0), 1);
        assert_eq!(next_epoch(u32::MAX), 1, "wraps past 0");
    }

    #[test]
    fn slots_are_in_range_and_spread() {
        let mut seen = HashSet::new();
        let n = 4096u32;
        for i in 0..n {
            let f = flow4(
                [10, 0, (i >> 8) as u8, i as u8],
                40000 + (i % 7) as u16,
                [10, 0, 0, 3],
                53,
                proto::UDP,
            );
            let s = slot_of(&f, Direction::Egress, 1);
            assert!(s < max_entries::DENY_CACHE);
            seen.insert(s);
        }
        // 4096 keys into 1024 slots: a decent hash fills nearly all.
        assert!(
            seen.len() > (max_entries::DENY_CACHE as usize) * 9 / 10,
            "{} slots used",
            seen.len()
        );
        // Source ports alone spread too (the benchmark's first packets).
        let ports: HashSet<u32> = (0..1024u16)
            .map(|p| {
                let f = flow4([10, 0, 0, 1], 1024 + p, [10, 0, 0, 3], 53, proto::UDP);
                slot_of(&f, Direction::Egress, 1)
            })
            .collect();
        assert!(ports.len() > 600, "{} slots for 1024 ports", ports.len());
        // The epoch does not move a flow.
        let f = flow4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, proto::TCP);
        assert_eq!(
            probe(&f, Direction::Egress, 1, 1).slot,
            probe(&f, Direction::Egress, 1, 99).slot
        );
    }
}
