//! Flow events from the kernel to the daemon's history: `events_selftest`
//! (a test-only classifier in `events.rs` that emits one DROP event per
//! packet through the same `emit` the TC programs call) is run through
//! `BPF_PROG_TEST_RUN`; the test checks the record layout, the rate limit
//! and its lost-record counter, and the userspace reader (ring buffer or
//! perf buffers wrapped in `smol::Async`) delivering enriched records to the
//! history.
//!
//! Each test runs twice: with the ring buffer object (`porin`) and with the
//! perf event array object (`porin-perf`, the fallback for kernels before
//! 5.8), both loaded here whatever the kernel would choose.
//!
//! Needs root (CI runs as root); without it each test fails loudly.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::programs::SchedClassifier;
use porin::{
    control::server::Ctx,
    ebpf,
    flows::{
        maps::EventMaps,
        reader::{self, Clock, Sink},
        record::decode,
        source::{EventSource, Item},
    },
    kernel::EventsTransport::{self, Perf, RingBuf},
    state::Shared,
    testing::{packets, prog_run, require_root},
};
use porin_common::flow::{kind, verdict, FlowEvent};
use smol::future::FutureExt;

fn frame() -> Vec<u8> {
    let a = Ipv4Addr::new(192, 0, 2, 1);
    packets::frame_v4(a, a, packets::PROTO_UDP, &packets::udp(1, 2, b"events"))
}

/// `#[test]` functions running `body` with each transport.
macro_rules! both_transports {
    ($($ring:ident, $perf:ident => $body:ident;)*) => {$(
        #[test]
        fn $ring() {
            $body(RingBuf);
        }
        #[test]
        fn $perf() {
            $body(Perf);
        }
    )*};
}

both_transports! {
    records_have_the_shared_layout_and_the_rate_limit_counts_what_it_drops_ringbuf,
    records_have_the_shared_layout_and_the_rate_limit_counts_what_it_drops_perf
        => emitted_records_have_the_shared_layout_and_the_rate_limit_counts_what_it_drops;
    a_full_ring_is_counted_as_lost_ringbuf, a_full_buffer_is_counted_as_lost_perf
        => a_full_buffer_is_counted_as_lost;
    the_reader_wakes_on_new_records_and_fills_the_history_ringbuf,
    the_reader_wakes_on_new_records_and_fills_the_history_perf
        => the_reader_wakes_on_new_records_and_fills_the_history;
    a_steady_stream_is_read_in_batches_not_per_record_ringbuf,
    a_steady_stream_is_read_in_batches_not_per_record_perf
        => a_steady_stream_is_read_in_batches_not_per_record;
}

fn load(transport: EventsTransport) -> (aya::Ebpf, EventMaps) {
    let mut bpf = ebpf::open_with(transport).expect("open the eBPF object");
    ebpf::load_program::<SchedClassifier>(&mut bpf, "events_selftest")
        .expect("the kernel accepts events_selftest");
    let maps = EventMaps::open(&bpf).expect("event maps");
    assert_eq!(maps.events.transport(), transport);
    (bpf, maps)
}

/// Every record waiting, and the losses perf buffers reported.
fn read_all(source: &mut EventSource) -> (Vec<FlowEvent>, u64) {
    let (mut records, mut lost) = (Vec::new(), 0);
    while source.take(1000, |item| match item {
        Item::Record(bytes) => records.push(decode(bytes).expect("a 144-byte FlowEvent")),
        Item::Lost(n) => lost += n,
    }) > 0
    {}
    (records, lost)
}

/// Keeps this thread on CPU 0, so every test run writes into the same perf
/// buffer (BPF_PROG_TEST_RUN runs on the caller's CPU).
fn stay_on_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin the test thread to CPU 0"
        );
    }
}

fn prog(bpf: &aya::Ebpf) -> &SchedClassifier {
    bpf.program("events_selftest")
        .expect("program")
        .try_into()
        .expect("a classifier")
}

fn emitted_records_have_the_shared_layout_and_the_rate_limit_counts_what_it_drops(
    transport: EventsTransport,
) {
    require_root("flow event test (BPF_PROG_TEST_RUN)");
    let (bpf, maps) = load(transport);
    let (mut source, mut ctl) = maps.split();

    // Unconfigured (zeroed config): events are off, nothing is counted.
    prog_run::verdict(prog(&bpf), &frame());
    assert_eq!(
        read_all(&mut source),
        (vec![], 0),
        "no events before the daemon configures them"
    );
    assert_eq!(ctl.lost(), [0, 0]);

    // 10 events a second per CPU, a burst of one second: one run of 1000
    // packets (microseconds) emits the burst and loses the rest.
    ctl.set_cpu_rate(10, 1_000_000_000).unwrap();
    let (ret, _) = prog_run::timed(prog(&bpf), &frame(), 1000);
    assert_eq!(ret, 0, "TC_ACT_OK");
    let (records, perf_lost) = read_all(&mut source);
    assert_eq!(perf_lost, 0, "no buffer filled");
    let lost = ctl.lost();
    assert!(
        (10..=11).contains(&records.len()),
        "the burst of 10 (plus at most one refill) was emitted, got {}",
        records.len()
    );
    assert_eq!(
        records.len() as u64 + lost[0],
        1000,
        "every record not emitted is counted as rate limited: {lost:?}"
    );
    assert_eq!(lost[1], 0, "the ring never filled");

    let e = records[0];
    assert_eq!(e.kind, kind::DROP);
    assert_eq!(e.verdict, verdict::DROPPED);
    assert_eq!(e.family, 4);
    assert_eq!(e.protocol, 6);
    assert_eq!(&e.saddr[..4], &[10, 0, 0, 1]);
    assert_eq!(&e.daddr[..4], &[10, 0, 0, 2]);
    assert!(e.saddr[4..].iter().all(|b| *b == 0));
    assert_eq!((e.sport, e.dport), (1000, 2000));
    assert_eq!(e.ifindex, 7);
    assert_eq!(
        e.src_identity, 0x0100_0001,
        "egress: the endpoint is the source"
    );
    assert_eq!(e.dst_identity, 0x0100_0002);
    assert_eq!(e.bytes as usize, frame().len());
    assert_eq!(e.tcp_flags, 0x02);
    assert_eq!(e.http_path_len, 0);
    assert!(e.http_path.iter().all(|b| *b == 0));
    assert!(e.ts_ns > 0);
}

fn a_full_buffer_is_counted_as_lost(transport: EventsTransport) {
    require_root("flow event test (BPF_PROG_TEST_RUN)");
    stay_on_cpu0();
    let (bpf, maps) = load(transport);
    let (mut source, mut ctl) = maps.split();
    // No rate limit to speak of; 256 KiB hold about 1700 records of 152
    // bytes (with the ring's 8-byte headers), a 128 KiB perf buffer about
    // 800 (160 bytes each with perf's headers), so 5000 unread overflow
    // either.
    ctl.set_cpu_rate(1_000_000_000, u64::MAX / 2).unwrap();
    prog_run::timed(prog(&bpf), &frame(), 5000);
    let (read, lost) = match transport {
        RingBuf => {
            let (records, perf_lost) = read_all(&mut source);
            assert_eq!(perf_lost, 0);
            (records.len() as u64, ctl.lost()[1])
        }
        Perf => {
            // The kernel counts what found no room and reports it with the
            // next record that fits: read the buffer, emit one more.
            let (records, early) = read_all(&mut source);
            assert_eq!(ctl.lost(), [0, 0], "the program leaves ENOSPC to perf");
            prog_run::timed(prog(&bpf), &frame(), 1);
            let (more, reported) = read_all(&mut source);
            assert_eq!(more.len(), 1, "the record after the loss report");
            ((records.len() + more.len()) as u64 - 1, early + reported)
        }
    };
    assert!(
        (3000..5000).contains(&lost),
        "records that found no room are counted: {lost} ({transport:?})"
    );
    assert_eq!(read + lost, 5000, "every record read or counted as lost");
}

fn the_reader_wakes_on_new_records_and_fills_the_history(transport: EventsTransport) {
    require_root("flow event test (BPF_PROG_TEST_RUN)");
    let (bpf, maps) = load(transport);
    let (source, mut ctl) = maps.split();
    ctl.set_cpu_rate(1_000_000, 1_000_000_000).unwrap();
    let shared = Arc::new(Shared::new("test".into(), vec![], 64));
    let sink = Sink {
        shared: shared.clone(),
        log: None,
        clock: Clock::now(),
    };
    let reader = std::thread::spawn(move || {
        smol::block_on(async {
            let _ = reader::run(source, sink)
                .or(async {
                    smol::Timer::after(Duration::from_secs(10)).await;
                    Ok(())
                })
                .await;
        })
    });
    // Let the reader block in epoll first: the records below must wake it.
    std::thread::sleep(Duration::from_millis(200));
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    prog_run::timed(prog(&bpf), &frame(), 100);
    let started = Instant::now();
    // The first records come by the epoll wake-up, well before the reader's
    // safety tick (1 s) could have fetched them.
    while shared.history().next_seq() <= 1 {
        assert!(
            started.elapsed() < reader::SAFETY_TICK / 2,
            "no record within {:?}: the reader was not woken",
            reader::SAFETY_TICK / 2
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    while shared.history().next_seq() <= 100 {
        assert!(
            started.elapsed() < 3 * reader::SAFETY_TICK,
            "the reader delivered {} of 100 records within {:?}",
            shared.history().next_seq() - 1,
            3 * reader::SAFETY_TICK
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let h = shared.history();
    let r = h.iter().next().unwrap();
    assert!(
        r.time_ns >= before - 1_000_000_000 && r.time_ns <= before + 5_000_000_000,
        "monotonic time became wall-clock time: {} vs {before}",
        r.time_ns
    );
    let v = r.view();
    assert_eq!(v.verdict, "DROPPED");
    assert_eq!(v.source.ip, "10.0.0.1");
    assert_eq!(v.destination.port, 2000);
    assert_eq!(h.len(), 64, "the history keeps its capacity");
    assert_eq!(h.iter().last().unwrap().seq, 100);
    drop(h);
    drop(reader);
}

/// The calling thread's voluntary context switches: each is a wake-up
/// after blocking (in epoll, or on a timer).
fn own_wakeups() -> u64 {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("voluntary_ctxt_switches in /proc")
        .trim()
        .parse()
        .unwrap()
}

/// A record every 200 µs for 0.4 s (2,000 records, as from a busy HTTP
/// server): the reader takes them every `reader::COALESCE` instead of
/// waking for each (which cost the daemon CPU the workloads needed).
fn a_steady_stream_is_read_in_batches_not_per_record(transport: EventsTransport) {
    require_root("flow event test (BPF_PROG_TEST_RUN)");
    let (bpf, maps) = load(transport);
    let (source, mut ctl) = maps.split();
    ctl.set_cpu_rate(1_000_000, 1_000_000_000).unwrap();
    let shared = Arc::new(Shared::new("test".into(), vec![], 4096));
    let sink = Sink {
        shared: shared.clone(),
        log: None,
        clock: Clock::now(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        smol::block_on(async {
            let _ = reader::run(source, sink)
                .or(async {
                    // Wait until told the stream is over, then report.
                    let start = own_wakeups();
                    tx.send(start).unwrap();
                    smol::Timer::after(Duration::from_secs(3)).await;
                    tx.send(own_wakeups()).unwrap();
                    Ok(())
                })
                .await;
        })
    });
    let start_wakeups = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let records = 2000;
    let started = Instant::now();
    for i in 0..records {
        prog_run::timed(prog(&bpf), &frame(), 1);
        let due = started + Duration::from_micros(200 * (i + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let spent = started.elapsed();
    // Batched, not late: all of them in the history within a few pauses
    // of the last one (the safety tick, 1 s, would be far later).
    while shared.history().next_seq() <= records {
        assert!(
            started.elapsed() < spent + reader::SAFETY_TICK / 4,
            "{} of {records} records in the history {:?} after the last",
            shared.history().next_seq() - 1,
            started.elapsed() - spent
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let end_wakeups = rx.recv().unwrap();
    reader.join().unwrap();
    let wakeups = end_wakeups - start_wakeups;
    let read = shared.history().next_seq() - 1;
    assert_eq!(read, records, "every record read ({transport:?})");
    // One wake-up per `COALESCE` while records come (plus the odd one for
    // the safety tick and the test's own timer), not one per record.
    let bound = (spent.as_millis() / reader::COALESCE.as_millis()) as u64 * 3 + 20;
    eprintln!(
        "{records} records over {spent:?}: {wakeups} reader wake-ups ({transport:?}; bound {bound})"
    );
    assert!(
        wakeups <= bound,
        "{wakeups} reader wake-ups for {records} records over {spent:?} (at most {bound})"
    );
}

/// Perf only: a full perf buffer's losses, as the kernel reports them,
/// reach the daemon's `ring_full` cause through the reader's own `drain`
/// (what `porin status` and the metrics read).
#[test]
fn perf_losses_reach_the_ring_full_cause_through_the_reader() {
    require_root("flow event test (BPF_PROG_TEST_RUN)");
    stay_on_cpu0();
    let (bpf, maps) = load(Perf);
    let (mut source, mut ctl) = maps.split();
    ctl.set_cpu_rate(1_000_000_000, u64::MAX / 2).unwrap();
    let shared = Arc::new(Shared::new("test".into(), vec![], 64));
    let mut sink = Sink {
        shared: shared.clone(),
        log: None,
        clock: Clock::now(),
    };
    let mut batch = Vec::new();
    let mut drain_all = |source: &mut EventSource| {
        let mut n = 0;
        loop {
            let got = reader::drain(source, &mut sink, &mut batch);
            n += got;
            if got == 0 {
                break n;
            }
        }
    };
    prog_run::timed(prog(&bpf), &frame(), 5000);
    let mut read = drain_all(&mut source);
    prog_run::timed(prog(&bpf), &frame(), 1);
    read += drain_all(&mut source);
    let ctx = Ctx {
        shared: shared.clone(),
        events: Some(ctl),
        counters: None,
        reloader: None,
    };
    let lost = ctx.lost();
    assert!(
        (3000..5000).contains(&lost[1]),
        "perf's losses are counted as ring full: {lost:?}"
    );
    assert_eq!(lost[0], 0);
    assert_eq!(read as u64 + lost[1], 5001, "read or counted, each record");
    assert_eq!(
        shared.history().next_seq() - 1,
        read as u64,
        "the records read reached the history"
    );
}

/// Both objects' programs pass this kernel's verifier (the daemon loads
/// only one; the datapath tests load the default one).
#[test]
fn every_program_of_both_objects_loads() {
    require_root("flow event test (program load)");
    for transport in [RingBuf, Perf] {
        let mut bpf = ebpf::open_with(transport).expect("open the eBPF object");
        for name in ["from_container", "to_container", "events_selftest"] {
            ebpf::load_program::<SchedClassifier>(&mut bpf, name)
                .unwrap_or_else(|e| panic!("{transport:?}: {name}: {e}"));
        }
        for name in ["from_uplink", "probe_frames"] {
            ebpf::load_program::<aya::programs::Xdp>(&mut bpf, name)
                .unwrap_or_else(|e| panic!("{transport:?}: {name}: {e}"));
        }
        // The HTTP stage's tail-called programs, in both objects.
        porin::datapath::http::load_stage(&mut bpf)
            .unwrap_or_else(|e| panic!("{transport:?}: the HTTP stage: {e}"));
    }
}
