//! How many flow events per second the daemon's reader keeps up with on one
//! core: records are produced by `events_selftest` through
//! `BPF_PROG_TEST_RUN` (a ring's worth at a time, unthrottled), then drained
//! by the reader's own code (decode, enrich, history, optionally the JSON
//! flow log); only the draining is timed. Measured for both transports:
//! the ring buffer and the perf event array fallback (kernels before 5.8).
//! Needs root.
//!
//! `cargo bench --bench flow_events`

use std::{
    net::Ipv4Addr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use aya::programs::SchedClassifier;
use porin::{
    ebpf,
    flows::{
        log::FlowLog,
        maps::EventMaps,
        reader::{drain, Clock, Sink},
    },
    kernel::EventsTransport,
    state::Shared,
    testing::{packets, prog_run, require_root},
};

fn main() {
    require_root("flow_events benchmark");
    // BPF_PROG_TEST_RUN writes into the perf buffer of the CPU it runs on:
    // stay on one so a run never fills a buffer the loop does not expect.
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
    for transport in [EventsTransport::RingBuf, EventsTransport::Perf] {
        bench(transport);
    }
}

fn bench(transport: EventsTransport) {
    let mut bpf = ebpf::open_with(transport).expect("open");
    ebpf::load_program::<SchedClassifier>(&mut bpf, "events_selftest").expect("load");
    let (mut source, mut ctl) = EventMaps::open(&bpf).expect("maps").split();
    ctl.set_cpu_rate(1_000_000_000, u64::MAX / 2).unwrap();
    let prog: &SchedClassifier = bpf.program("events_selftest").unwrap().try_into().unwrap();
    let a = Ipv4Addr::new(192, 0, 2, 1);
    let frame = packets::frame_v4(a, a, packets::PROTO_UDP, &packets::udp(1, 2, b"bench"));
    let dir = std::env::temp_dir().join(format!("porin-bench-flows-{}", std::process::id()));
    for with_log in [false, true] {
        let shared = Arc::new(Shared::new("bench".into(), vec![], 4096));
        let log = with_log.then(|| FlowLog::open(&dir.join("flows.jsonl"), 16 << 20, 1).unwrap());
        let mut sink = Sink {
            shared,
            log,
            clock: Clock::now(),
        };
        let mut batch = Vec::new();
        let (mut events, mut spent) = (0u64, Duration::ZERO);
        while events < 500_000 {
            // Fits the ring (about 1700) and a 2-CPU machine's 128 KiB perf
            // buffer (about 800).
            prog_run::timed(prog, &frame, 750);
            let t = std::time::Instant::now();
            loop {
                let n = drain(&mut source, &mut sink, &mut batch);
                events += n as u64;
                if n == 0 {
                    break;
                }
            }
            spent += t.elapsed();
        }
        let lost = sink.shared.counters.flow_events_perf_lost.load(Relaxed) + ctl.lost()[1];
        assert_eq!(lost, 0, "the bench never overfills a buffer");
        println!(
            "{transport} reader{}: {events} events in {:.1} ms: {:.0} events/s on one core ({:.2} µs each)",
            if with_log { " + JSON flow log" } else { "" },
            spent.as_secs_f64() * 1e3,
            events as f64 / spent.as_secs_f64(),
            spent.as_secs_f64() * 1e6 / events as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
