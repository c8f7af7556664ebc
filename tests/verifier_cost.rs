//! What each program costs the verifier on this kernel: instructions the
//! verifier processed (`verified_insns`, 6.0+), printed for every program
//! of both objects, against the limit of 1,000,000. Older kernels prune
//! less: 5.10 refused an `http_finish` this kernel verified in 299,243
//! instructions, and takes `http_parse` at 340,482 here. So no program may
//! pass 350,000 on the build machine: a program that grows past it is
//! likely to fail the VM matrix's 5.10 (run it: `test-vm/run --quick`).
//! Needs root (CI runs as root); fails loudly without it.

use aya::programs::{SchedClassifier, Xdp};
use porin::{datapath::http::load_stage, ebpf, kernel::EventsTransport, testing::require_root};

/// What 5.10 is known to take, measured here (see above).
const BUDGET: u32 = 350_000;

#[test]
fn every_program_stays_within_what_5_10_takes() {
    require_root("every_program_stays_within_what_5_10_takes");
    for t in [EventsTransport::RingBuf, EventsTransport::Perf] {
        let mut bpf = ebpf::open_with(t).expect("open eBPF object");
        for name in ["from_container", "to_container"] {
            ebpf::load_program::<SchedClassifier>(&mut bpf, name).unwrap();
        }
        ebpf::load_program::<Xdp>(&mut bpf, "from_uplink").unwrap();
        load_stage(&mut bpf).expect("the stage loads");
        let mut over = Vec::new();
        let mut counted = 0;
        for (name, prog) in bpf.programs() {
            let Ok(info) = prog.info() else { continue };
            let Some(n) = info.verified_instruction_count() else {
                continue;
            };
            counted += 1;
            println!("{t:?} {name:<28} {n:>8} instructions verified");
            if n > BUDGET {
                over.push(format!("{name}: {n}"));
            }
        }
        assert!(
            counted >= 13,
            "{t:?}: the kernel reported the cost of {counted} programs (it needs 6.0+ for \
             `verified_insns`): nothing was checked"
        );
        assert!(over.is_empty(), "{t:?}: over {BUDGET}: {over:?}");
    }
}
