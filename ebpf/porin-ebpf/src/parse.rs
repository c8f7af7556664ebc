//! Getting the headers out of the skb for `porin_common::parse`.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use porin_common::{
    datapath::DropReason,
    packet::ETH_HLEN,
    parse::{parse_frame, HeaderBuf, Parsed, HDR_BUF},
};

/// Copies the first `min(len, HDR_BUF)` bytes of the frame to the stack and
/// parses them.
///
/// `bpf_skb_load_bytes` rather than direct packet access: it also reads
/// headers that sit in a non-linear part of the skb (GSO packets, some
/// drivers), where a direct read would misreport a valid packet as truncated.
#[inline(always)]
pub fn headers(ctx: &TcContext) -> Result<Parsed, DropReason> {
    let frame_len = ctx.len();
    if (frame_len as usize) < ETH_HLEN {
        return Err(DropReason::Malformed);
    }
    // Zeroed so the whole buffer is initialised memory even when the frame
    // is shorter than it; the parser never reads past the frame's length.
    let mut slot = MaybeUninit::uninit();
    let hdr = HeaderBuf::init_zeroed(&mut slot);
    let n = if frame_len > HDR_BUF as u32 {
        HDR_BUF as u32
    } else {
        frame_len
    };
    // Checked right before the call: the helper takes a length in 1..=size
    // of the buffer, and the verifier must see both bounds on this register.
    if n == 0 || n > HDR_BUF as u32 {
        return Err(DropReason::Malformed);
    }
    // SAFETY: `hdr` has room for `n` bytes; the skb pointer is the context's.
    let rc = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, hdr.as_mut_ptr().cast(), n) };
    if rc != 0 {
        // Cannot happen for n <= skb->len; not the packet's fault if it does.
        return Err(DropReason::Internal);
    }
    parse_frame(hdr.bytes(), frame_len as usize)
}
