//! The flow reader: drains the `PORIN_EVENTS_V1` ring buffer when the
//! kernel says it is readable (epoll through `smol::Async`, no busy
//! polling), decodes each record, enriches it, and hands it to the history,
//! the flow log and the per-identity counters.

use std::{io, sync::Arc};

use aya::maps::{MapData, RingBuf};
use log::warn;
use porin_common::flow::FlowEvent;
use smol::Async;

use super::{
    log::FlowLog,
    record::{decode, FlowRecord},
};
use crate::state::{Counters, Shared};

/// Records taken per wake-up before yielding to the other tasks.
const BATCH: usize = 512;

/// Turns `bpf_ktime_get_ns` (CLOCK_MONOTONIC) into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus monotonic at start, in ns.
    offset: i128,
}

impl Clock {
    pub fn now() -> Self {
        let ns = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock id and a pointer to a timespec.
            unsafe { libc::clock_gettime(id, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        Clock {
            offset: ns(libc::CLOCK_REALTIME) - ns(libc::CLOCK_MONOTONIC),
        }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset).max(0) as u64
    }
}

/// Where decoded events go.
pub struct Sink {
    pub shared: Arc<Shared>,
    pub log: Option<FlowLog>,
    pub clock: Clock,
}

impl Sink {
    /// Takes a batch of events: one history lock, one log flush.
    pub fn take(&mut self, events: &[FlowEvent]) {
        if events.is_empty() {
            return;
        }
        let dir = self.shared.snapshot().directory.clone();
        let records: Vec<FlowRecord> = events
            .iter()
            .map(|e| FlowRecord::enrich(0, self.clock.wall_ns(e.ts_ns), *e, &dir))
            .collect();
        for e in events {
            // The endpoint's side: source on egress, destination on ingress.
            let id = if e.direction == 0 {
                e.src_identity
            } else {
                e.dst_identity
            };
            self.shared.count_identity(id, e.verdict);
        }
        Counters::add(&self.shared.counters.flow_events, events.len() as u64);
        if let Some(log) = &mut self.log {
            let mut failed = 0;
            for r in &records {
                if log.write(&r.view()).is_err() {
                    failed += 1;
                }
            }
            if log.flush().is_err() {
                failed += 1;
            }
            if failed > 0 {
                Counters::add(&self.shared.counters.flow_log_errors, failed);
            }
        }
        let mut h = self.shared.history();
        for r in records {
            h.push(r);
        }
    }
}

/// Runs until the ring's fd fails (never, in practice).
pub async fn run(ring: RingBuf<MapData>, mut sink: Sink) -> io::Result<()> {
    let mut ring = Async::new(ring)?;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        ring.readable().await?;
        // SAFETY: `get_mut` only forbids swapping the I/O source out;
        // reading records does not.
        while drain(unsafe { ring.get_mut() }, &mut sink, &mut batch) == BATCH {
            // More may be waiting: let the control socket and metrics run.
            smol::future::yield_now().await;
        }
    }
}

/// Takes up to [`BATCH`] records from the ring into the sink; returns how
/// many it took (public for the benchmark).
pub fn drain(ring: &mut RingBuf<MapData>, sink: &mut Sink, batch: &mut Vec<FlowEvent>) -> usize {
    batch.clear();
    while batch.len() < BATCH {
        let Some(item) = ring.next() else { break };
        match decode(&item) {
            Some(e) => batch.push(e),
            None => {
                Counters::add(&sink.shared.counters.flow_events_malformed, 1);
                warn!(
                    "flow event of {} bytes ignored (layout v1 is 144)",
                    item.len()
                );
            }
        }
    }
    sink.take(batch);
    batch.len()
}
