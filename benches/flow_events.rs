//! How many flow events per second the daemon's reader keeps up with on one
//! core: records are produced by `events_selftest` through
//! `BPF_PROG_TEST_RUN` (a ring's worth at a time, unthrottled), then drained
//! by the reader's own code (decode, enrich, history, optionally the JSON
//! flow log); only the draining is timed. Needs root.
//!
//! `cargo bench --bench flow_events`

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use aya::programs::SchedClassifier;
use porin::{
    ebpf,
    flows::{
        log::FlowLog,
        maps::EventMaps,
        reader::{drain, Clock, Sink},
    },
    state::Shared,
    testing::{packets, prog_run, require_root},
};

fn main() {
    require_root("flow_events benchmark");
    let mut bpf = ebpf::open().expect("open");
    ebpf::load_program::<SchedClassifier>(&mut bpf, "events_selftest").expect("load");
    let (mut ring, mut ctl) = EventMaps::open(&bpf).expect("maps").split();
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
            prog_run::timed(prog, &frame, 1500);
            let t = std::time::Instant::now();
            loop {
                let n = drain(&mut ring, &mut sink, &mut batch);
                events += n as u64;
                if n == 0 {
                    break;
                }
            }
            spent += t.elapsed();
        }
        println!(
            "reader{}: {events} events in {:.1} ms: {:.0} events/s on one core ({:.2} µs each)",
            if with_log { " + JSON flow log" } else { "" },
            spent.as_secs_f64() * 1e3,
            events as f64 / spent.as_secs_f64(),
            spent.as_secs_f64() * 1e6 / events as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
