//! Where the flow reader takes records from: the `PORIN_EVENTS_V1` ring
//! buffer (kernel 5.8+), or the same map as a perf event array with one perf
//! buffer per CPU (the `porin-perf` object, for older kernels). Both give
//! the same 144-byte `FlowEvent` records; perf buffers also report how many
//! records the kernel could not write for lack of room ([`Item::Lost`]).
//!
//! Memory is bounded either way: the ring is 256 KiB; the perf buffers
//! share the same budget across the CPUs ([`perf_pages`]).

use std::{
    io,
    ops::ControlFlow,
    os::fd::{AsFd, BorrowedFd},
};

use aya::maps::{
    perf::{PerfEvent, PerfEventArrayBuffer},
    Map, MapData, PerfEventArray, RingBuf,
};
use porin_common::flow::FlowEvent;

use crate::kernel::EventsTransport;

/// Bytes of perf buffer (all CPUs together) the reader maps, like the ring.
pub const PERF_BUDGET: usize = 256 * 1024;

const RECORD: usize = size_of::<FlowEvent>();

/// What one read yields.
#[derive(Debug)]
pub enum Item<'a> {
    /// One record's bytes (a `FlowEvent` when it is [`RECORD`] long).
    Record(&'a [u8]),
    /// The kernel could not write this many records (perf buffers only:
    /// a ring buffer's losses are counted by the programs).
    Lost(u64),
}

/// The flow events map, as the running object made it.
pub enum EventSource {
    Ring(RingBuf<MapData>),
    /// One buffer per online CPU.
    Perf(Vec<PerfEventArrayBuffer<MapData>>),
}

impl EventSource {
    /// Wraps `map` (`PORIN_EVENTS_V1`); a perf event array gets a buffer of
    /// [`perf_pages`] pages opened for every online CPU.
    pub fn new(map: Map) -> io::Result<Self> {
        match map {
            Map::RingBuf(_) => Ok(EventSource::Ring(RingBuf::try_from(map).map_err(other)?)),
            Map::PerfEventArray(_) => {
                let mut array = PerfEventArray::try_from(map).map_err(other)?;
                let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
                let pages = perf_pages(cpus.len(), page_size());
                let buffers = cpus
                    .iter()
                    .map(|&cpu| array.open(cpu, Some(pages)).map_err(other))
                    .collect::<io::Result<Vec<_>>>()?;
                Ok(EventSource::Perf(buffers))
            }
            _ => Err(io::Error::other(format!(
                "{} is neither a ring buffer nor a perf event array",
                crate::maps::EVENTS.name
            ))),
        }
    }

    pub fn transport(&self) -> EventsTransport {
        match self {
            EventSource::Ring(_) => EventsTransport::RingBuf,
            EventSource::Perf(_) => EventsTransport::Perf,
        }
    }

    /// Hands up to `max` records (and any loss reports met on the way) to
    /// `f`; returns the number of records.
    pub fn take(&mut self, max: usize, mut f: impl FnMut(Item<'_>)) -> usize {
        let mut n = 0;
        match self {
            EventSource::Ring(ring) => {
                while n < max {
                    let Some(item) = ring.next() else { break };
                    f(Item::Record(&item));
                    n += 1;
                }
            }
            EventSource::Perf(buffers) => {
                for b in buffers {
                    if n >= max {
                        break;
                    }
                    // `try_fold` moves the buffer's tail past what it handed
                    // out, also when it stops early.
                    let flow = b.try_fold(n, |n, event| match event {
                        PerfEvent::Sample { head, tail } => {
                            sample(head, tail, &mut f);
                            if n + 1 >= max {
                                ControlFlow::Break(n + 1)
                            } else {
                                ControlFlow::Continue(n + 1)
                            }
                        }
                        PerfEvent::Lost { count } => {
                            f(Item::Lost(count));
                            ControlFlow::Continue(n)
                        }
                    });
                    n = match flow {
                        ControlFlow::Break(n) | ControlFlow::Continue(n) => n,
                    };
                }
            }
        }
        n
    }

    /// The fds to wait on for readability.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            EventSource::Ring(r) => vec![r.as_fd()],
            EventSource::Perf(b) => b.iter().map(AsFd::as_fd).collect(),
        }
    }
}

/// Passes one perf sample on as a record: perf pads samples to 8 bytes
/// with their 4-byte size prefix (148 bytes for a 144-byte record), and a
/// sample may straddle the end of the buffer.
fn sample(head: &[u8], tail: &[u8], f: &mut impl FnMut(Item<'_>)) {
    let len = head.len() + tail.len();
    if !(RECORD..RECORD + 8).contains(&len) {
        // Not a FlowEvent: passed on whole so the reader counts it.
        let mut whole = Vec::with_capacity(len.min(4096));
        whole.extend_from_slice(head);
        whole.extend_from_slice(tail);
        f(Item::Record(&whole));
    } else if head.len() >= RECORD {
        f(Item::Record(&head[..RECORD]));
    } else {
        let mut buf = [0u8; RECORD];
        buf[..head.len()].copy_from_slice(head);
        buf[head.len()..].copy_from_slice(&tail[..RECORD - head.len()]);
        f(Item::Record(&buf));
    }
}

/// Pages per CPU buffer: the largest power of two (perf requires one) that
/// keeps all CPUs within [`PERF_BUDGET`], at least 2 pages (about 50
/// records) and at most 32 (128 KiB).
pub fn perf_pages(cpus: usize, page_size: usize) -> usize {
    let per_cpu = PERF_BUDGET / cpus.max(1) / page_size.max(1);
    let mut pages = 2;
    while pages * 2 <= per_cpu && pages < 32 {
        pages *= 2;
    }
    pages
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_buffers_share_the_ring_budget() {
        assert_eq!(perf_pages(1, 4096), 32);
        assert_eq!(perf_pages(2, 4096), 32);
        assert_eq!(perf_pages(4, 4096), 16);
        assert_eq!(perf_pages(6, 4096), 8, "a power of two below the share");
        assert_eq!(perf_pages(64, 4096), 2, "never below two pages");
        assert_eq!(perf_pages(1, 65536), 4, "64 KiB pages");
    }

    #[test]
    fn a_padded_sample_becomes_one_record_even_across_the_wrap() {
        let bytes: Vec<u8> = (0..148).map(|i| i as u8).collect();
        let mut got = Vec::new();
        let mut f = |i: Item<'_>| {
            if let Item::Record(r) = i {
                got.push(r.to_vec())
            }
        };
        sample(&bytes, &[], &mut f);
        sample(&bytes[..100], &bytes[100..], &mut f);
        sample(&bytes[..10], &[], &mut f);
        assert_eq!(got[0], &bytes[..RECORD]);
        assert_eq!(got[1], &bytes[..RECORD]);
        assert_eq!(got[2].len(), 10, "a short sample is passed on whole");
    }
}
