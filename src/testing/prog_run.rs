//! Running a loaded program on crafted packets through `BPF_PROG_TEST_RUN`.

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions, TestRunResult};

/// Runs `prog` once on `packet` and returns its return value (the verdict).
///
/// Panics with the kernel's error if the run itself fails: a test must never
/// read a missing verdict as a pass.
pub fn verdict<P>(prog: &P, packet: &[u8]) -> u32
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    run(prog, packet, 1).return_value
}

/// Runs `prog` `repeat` times on `packet` and returns the kernel's average
/// time per run with the verdict. Used by benchmarks (large `repeat`).
pub fn timed<P>(prog: &P, packet: &[u8], repeat: u32) -> (u32, Duration)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let result = run(prog, packet, repeat);
    (result.return_value, result.duration)
}

fn run<P>(prog: &P, packet: &[u8], repeat: u32) -> TestRunResult
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let opts = TestRunOptions {
        data_in: Some(packet),
        repeat,
        ..Default::default()
    };
    prog.test_run(opts).unwrap_or_else(|e| {
        panic!(
            "BPF_PROG_TEST_RUN failed on a {}-byte packet: {e}",
            packet.len()
        )
    })
}
