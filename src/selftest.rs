//! Start-up self-test: loads `probe_frames` into the running kernel and runs
//! it on a well-formed and a malformed frame through `BPF_PROG_TEST_RUN`.
//!
//! It proves, before the daemon reports ready, that the embedded object
//! matches this kernel's verifier and that programs give the verdicts the
//! host-side logic predicts.

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use porin_common::probe::ProbeVerdict;

use crate::{
    ebpf::{self, LoadError},
    testing::packets,
};

/// What went wrong in the self-test.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("BPF_PROG_TEST_RUN of `probe_frames` failed: {0}")]
    Run(#[source] aya::programs::ProgramError),
    #[error("`probe_frames` returned {got} for {case}, expected {want}")]
    WrongVerdict {
        case: &'static str,
        got: u32,
        want: u32,
    },
}

/// Runs the self-test; Ok means the kernel accepted and ran the programs.
pub fn run() -> Result<(), SelfTestError> {
    let mut bpf = ebpf::open()?;
    let prog: &mut Xdp = ebpf::load_program(&mut bpf, "probe_frames")?;
    let a = Ipv4Addr::new(192, 0, 2, 1);
    let good = packets::frame_v4(a, a, packets::PROTO_UDP, &packets::udp(1, 2, b"selftest"));
    let mut bad = good.clone();
    bad[14] = 0x4f; // IHL 60 bytes: longer than the frame
    for (case, frame, want) in [
        ("a valid IPv4 frame", &good, ProbeVerdict::Pass),
        (
            "an IPv4 header longer than its frame",
            &bad,
            ProbeVerdict::Drop,
        ),
    ] {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        };
        let got = prog
            .test_run(opts)
            .map_err(SelfTestError::Run)?
            .return_value;
        if got != want as u32 {
            return Err(SelfTestError::WrongVerdict {
                case,
                got,
                want: want as u32,
            });
        }
    }
    Ok(())
}
