//! The flow reader: drains the `PORIN_EVENTS_V1` ring buffer, or the
//! per-CPU perf buffers on kernels without ring buffers, when the kernel
//! says one is readable (epoll through `smol::Async`, no busy polling),
//! decodes each record, enriches it, and hands it to the history, the flow
//! log and the per-identity counters.
//!
//! A safety tick ([`SAFETY_TICK`]) drains the buffers too when no wake-up
//! came: a perf buffer's readiness is consumed by the kernel's poll, and a
//! wake-up for records written while the reader was between its drain and
//! re-arming its interest can be missed (seen as a few records stuck in a
//! perf buffer until the next one arrived). Once a second is no polling
//! cost, and bounds how late such a record can be.

use std::{
    future::poll_fn,
    io,
    os::fd::{AsFd, BorrowedFd},
    sync::Arc,
    task::Poll,
};

use log::warn;
use porin_common::flow::FlowEvent;
use smol::{future::FutureExt, Async};

use super::{
    log::FlowLog,
    record::{decode, FlowRecord},
    source::{EventSource, Item},
};
use crate::state::{Counters, Shared};

/// Records taken per wake-up before yielding to the other tasks.
const BATCH: usize = 512;

/// The longest a record can wait in a buffer when its wake-up was missed.
pub const SAFETY_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// After taking records, the reader looks again after this long instead of
/// waiting for the kernel's next wake-up. Each wake-up costs the daemon
/// two context switches (the reactor's, the reader task's): at thousands
/// of events a second (every new connection is one, every HTTP request
/// another) that was most of the daemon's CPU, taken from the workloads
/// on a small device. 10 ms at the default rate limit's steady 10,000
/// events/s is 100 records, well within the 256 KiB ring (about 1,700);
/// the token bucket's burst can be larger, so a pass that took [`BURST`]
/// or more drains again at once instead of pausing. What still overflows
/// (more than about 1,700 records within one pause, 170,000 events/s) is
/// counted as lost (`ring_full`), as before.
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);

/// Records in one pass that mark a burst: no pause before the next pass.
const BURST: usize = BATCH / 2;

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

/// Runs until an fd fails (never, in practice).
pub async fn run(mut source: EventSource, mut sink: Sink) -> io::Result<()> {
    // The reactor watches duplicates of the source's fds (the same ring or
    // perf event, so the same readiness); the source itself stays here to
    // be read, with no unsafe access through the `Async` wrapper.
    let watched = source
        .fds()
        .into_iter()
        .map(|fd| Async::new(Watch(fd.try_clone_to_owned()?)))
        .collect::<io::Result<Vec<_>>>()?;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wakes when any buffer has records (one wake-up covers all: every
        // buffer is drained below).
        let readable = poll_fn(|cx| {
            let mut ready = false;
            for w in &watched {
                match w.poll_readable(cx) {
                    Poll::Ready(Ok(())) => ready = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if ready {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        });
        readable
            .or(async {
                smol::Timer::after(SAFETY_TICK).await;
                Ok(())
            })
            .await?;
        // While records keep coming, take them every `COALESCE` rather
        // than on a wake-up each: one record after an idle spell still
        // wakes the reader at once.
        loop {
            let mut taken = 0;
            loop {
                let n = drain(&mut source, &mut sink, &mut batch);
                taken += n;
                if n < BATCH {
                    break;
                }
                // More may be waiting: let the control socket and metrics run.
                smol::future::yield_now().await;
            }
            if taken == 0 {
                break;
            }
            if taken >= BURST {
                // A burst: keep draining while it lasts rather than let the
                // ring fill during a pause.
                smol::future::yield_now().await;
                continue;
            }
            smol::Timer::after(COALESCE).await;
        }
    }
}

/// An fd registered for readiness only (a duplicate of the source's).
struct Watch(std::os::fd::OwnedFd);

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Takes up to [`BATCH`] records from the source into the sink; returns how
/// many it took (public for the benchmark). Perf buffers' loss reports are
/// counted in `Counters::flow_events_perf_lost`.
pub fn drain(source: &mut EventSource, sink: &mut Sink, batch: &mut Vec<FlowEvent>) -> usize {
    batch.clear();
    let (mut malformed, mut lost) = (0, 0);
    let n = source.take(BATCH, |item| match item {
        Item::Record(bytes) => match decode(bytes) {
            Some(e) => batch.push(e),
            None => {
                malformed += 1;
                warn!(
                    "flow event of {} bytes ignored (layout v1 is 144)",
                    bytes.len()
                );
            }
        },
        Item::Lost(count) => lost += count,
    });
    let counters = &sink.shared.counters;
    if malformed > 0 {
        Counters::add(&counters.flow_events_malformed, malformed);
    }
    if lost > 0 {
        Counters::add(&counters.flow_events_perf_lost, lost);
    }
    sink.take(batch);
    n
}
