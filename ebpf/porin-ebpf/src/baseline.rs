//! `noop_tc`: a benchmark baseline, never attached by Porin. It returns
//! `TC_ACT_OK` and touches nothing, so `BPF_PROG_TEST_RUN` on it measures the
//! harness's own per-run cost, which `benches/datapath_tc.rs` subtracts to
//! get the datapath programs' overhead.

use aya_ebpf::{macros::classifier, programs::TcContext};
use porin_common::datapath::tc_action;

#[classifier]
pub fn noop_tc(_ctx: TcContext) -> i32 {
    tc_action::OK
}
