//! The in-memory flow history: a ring of the last `flows.history` records.
//!
//! The ring's storage is allocated once, at its configured capacity, and
//! never grows: with fixed-size records (see [`FlowRecord`]) the history's
//! memory is capacity × record size, whatever the traffic. (heapless'
//! `HistoryBuffer` has the same behaviour but a compile-time capacity; the
//! capacity here comes from the configuration.)

use super::record::FlowRecord;
use crate::control::proto::FlowFilter;

pub struct History {
    buf: Vec<FlowRecord>,
    cap: usize,
    /// Index of the oldest record once the ring is full.
    head: usize,
    /// Sequence number of the next record.
    next_seq: u64,
}

impl History {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        History {
            buf: Vec::with_capacity(cap),
            cap,
            head: 0,
            next_seq: 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The sequence number the next pushed record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds a record (its `seq` is overwritten), evicting the oldest when
    /// full.
    pub fn push(&mut self, mut r: FlowRecord) {
        r.seq = self.next_seq;
        self.next_seq += 1;
        if self.buf.len() < self.cap {
            self.buf.push(r);
        } else {
            self.buf[self.head] = r;
            self.head = (self.head + 1) % self.cap;
        }
    }

    /// Records oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &FlowRecord> {
        let (newer, older) = self.buf.split_at(self.head);
        older.iter().chain(newer.iter())
    }

    /// The last `n` records matching `filter` with `seq >= since`, oldest
    /// first.
    pub fn query(&self, filter: &FlowFilter, since: u64, n: usize) -> Vec<&FlowRecord> {
        let mut out: Vec<&FlowRecord> = self
            .iter()
            .rev()
            .take_while(|r| r.seq >= since)
            .filter(|r| matches(filter, r))
            .take(n)
            .collect();
        out.reverse();
        out
    }
}

/// Whether `r` passes `f`: any of the verdicts, and either side has any of
/// the identities (by name, or number in decimal or `0x` hex).
pub fn matches(f: &FlowFilter, r: &FlowRecord) -> bool {
    let verdict_ok = f.verdicts.is_empty()
        || f.verdicts
            .iter()
            .any(|v| v.eq_ignore_ascii_case(r.verdict()));
    let side = |want: &str, name: &str, id: u32| {
        want == name
            || want.parse::<u32>().ok() == Some(id)
            || want
                .strip_prefix("0x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                == Some(id)
    };
    let identity_ok = f.identities.is_empty()
        || f.identities.iter().any(|want| {
            side(want, &r.src.name, r.event.src_identity)
                || side(want, &r.dst.name, r.event.dst_identity)
        });
    verdict_ok && identity_ok
}

#[cfg(test)]
mod tests {
    use porin_common::flow::verdict;

    use super::*;
    use crate::flows::record::tests::{directory, drop_event};

    fn record(port: u16, v: u8) -> FlowRecord {
        let mut e = drop_event();
        e.dport = port;
        e.verdict = v;
        FlowRecord::enrich(0, 0, e, &directory())
    }

    #[test]
    fn the_ring_keeps_the_last_capacity_records_without_growing() {
        let mut h = History::new(16);
        let cap = h.buf.capacity();
        for p in 0..100 {
            h.push(record(p, verdict::DROPPED));
        }
        assert_eq!(h.len(), 16);
        assert_eq!(h.buf.capacity(), cap, "storage never grows");
        let ports: Vec<u16> = h.iter().map(|r| r.event.dport).collect();
        assert_eq!(ports, (84..100).collect::<Vec<_>>());
        let seqs: Vec<u64> = h.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (85..=100).collect::<Vec<_>>());
        assert_eq!(h.next_seq(), 101);
    }

    #[test]
    fn queries_filter_by_verdict_identity_and_sequence() {
        let mut h = History::new(64);
        for p in 0..10 {
            let v = if p % 2 == 0 {
                verdict::DROPPED
            } else {
                verdict::FORWARDED
            };
            h.push(record(p, v));
        }
        let all = FlowFilter::default();
        assert_eq!(h.query(&all, 0, 3).len(), 3);
        assert_eq!(
            h.query(&all, 0, 3)[2].event.dport,
            9,
            "the last, oldest first"
        );
        let dropped = FlowFilter {
            verdicts: vec!["dropped".into()],
            ..Default::default()
        };
        let ports: Vec<u16> = h
            .query(&dropped, 0, 100)
            .iter()
            .map(|r| r.event.dport)
            .collect();
        assert_eq!(ports, [0, 2, 4, 6, 8]);
        assert_eq!(h.query(&dropped, 8, 100).len(), 1, "seq 9 is port 8");
        for name in ["web", "sensor", "16777217", "0x01000002"] {
            let f = FlowFilter {
                identities: vec![name.into()],
                ..Default::default()
            };
            assert_eq!(h.query(&f, 0, 100).len(), 10, "{name}");
        }
        let f = FlowFilter {
            identities: vec!["db".into()],
            ..Default::default()
        };
        assert!(h.query(&f, 0, 100).is_empty());
    }
}
