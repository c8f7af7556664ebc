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

/// Runs skb program `prog` once on `packet` as if it arrived on interface
/// `ifindex` (which must exist in the calling thread's network namespace)
/// and returns its verdict. Without this, `BPF_PROG_TEST_RUN` gives skb
/// programs the namespace's loopback (ifindex 1).
pub fn verdict_on_ifindex<P>(prog: &P, packet: &[u8], ifindex: u32) -> u32
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    verdict_on_ifindex_from(prog, packet, ifindex, 0)
}

/// Like [`verdict_on_ifindex`], with `skb->ingress_ifindex` set to
/// `ingress_ifindex`: the interface the packet came in on before it was
/// forwarded to `ifindex` (0, as without a context: none).
///
/// Debian's 5.10 refuses a test run with this context (the run fails, and
/// so does the caller's test; 6.1 and newer take it): `test-vm/init` skips
/// the tests that need it on 5.10.
pub fn verdict_on_ifindex_from<P>(
    prog: &P,
    packet: &[u8],
    ifindex: u32,
    ingress_ifindex: u32,
) -> u32
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut ctx = skb_ctx(ifindex);
    ctx[SKB_INGRESS_IFINDEX_OFFSET..SKB_IFINDEX_OFFSET]
        .copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let opts = TestRunOptions {
        data_in: Some(packet),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    prog.test_run(opts)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on ifindex {ifindex} failed: {e}"))
        .return_value
}

/// Offset of `ifindex` in the UAPI `struct __sk_buff` (after len, pkt_type,
/// mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto,
/// priority, ingress_ifindex: ten `__u32`s). The layout is kernel ABI.
const SKB_IFINDEX_OFFSET: usize = 40;
/// `ingress_ifindex`, the `__u32` before it (the kernel takes it from a
/// test run's context as `skb->skb_iif`).
const SKB_INGRESS_IFINDEX_OFFSET: usize = 36;

/// A `__sk_buff` prefix up to and including `ifindex`, all else zero (the
/// kernel requires the fields it does not take from userspace to be zero and
/// treats a shorter context as zero-extended).
fn skb_ctx(ifindex: u32) -> [u8; SKB_IFINDEX_OFFSET + 4] {
    let mut ctx = [0u8; SKB_IFINDEX_OFFSET + 4];
    ctx[SKB_IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
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
