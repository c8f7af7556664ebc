//! Getting the headers out of the skb for `porin_common::parse`.

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_skb_load_bytes, programs::TcContext};
use porin_common::{
    datapath::DropReason,
    packet::ETH_HLEN,
    parse::{parse, CopiedFrame, Frame, HeaderBuf, Parsed, HDR_BUF, ND_TARGET_OFF},
};

/// Parses the frame's headers: in place when the skb's linear part holds
/// the first `min(len, HDR_BUF)` bytes (the usual case), else from a copy.
///
/// Reading in place skips the copy (`bpf_skb_load_bytes` and zeroing a
/// stack buffer, about 20 ns per packet). The copy stays for headers that
/// sit in a non-linear part of the skb (GSO packets, some drivers), where a
/// direct read would misreport a valid packet as truncated.
#[inline(always)]
pub fn headers(ctx: &TcContext) -> Result<Parsed, DropReason> {
    let frame_len = ctx.len() as usize;
    if frame_len < ETH_HLEN {
        return Err(DropReason::Malformed);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let wanted = if frame_len > HDR_BUF {
        HDR_BUF
    } else {
        frame_len
    };
    if end >= start && end - start >= wanted {
        return parse(&PacketFrame {
            start,
            end,
            len: frame_len,
        });
    }
    copied(ctx, frame_len)
}

/// The frame read in place: `[start, end)` is the skb's linear data (or
/// the XDP buffer), `len` the whole frame's length.
pub struct PacketFrame {
    pub start: usize,
    pub end: usize,
    pub len: usize,
}

impl Frame for PacketFrame {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len
    }

    /// The pointer comparison the verifier needs before the reads below
    /// `end`.
    #[inline(always)]
    fn has(&self, end: usize) -> bool {
        self.start + end <= self.end
    }

    #[inline(always)]
    fn byte(&self, off: usize) -> u8 {
        // SAFETY: the parser reads only below an end `has` accepted, so the
        // byte lies in the linear data (the verifier checks this too).
        unsafe { *((self.start + off) as *const u8) }
    }
}

/// Copies the first `min(len, HDR_BUF)` bytes of the frame to the stack and
/// parses them.
#[inline(always)]
fn copied(ctx: &TcContext, frame_len: usize) -> Result<Parsed, DropReason> {
    // Zeroed so the whole buffer is initialised memory even when the frame
    // is shorter than it; the parser never reads past the frame's length.
    let mut slot = MaybeUninit::uninit();
    let hdr = HeaderBuf::init_zeroed(&mut slot);
    let n = if frame_len > HDR_BUF {
        HDR_BUF as u32
    } else {
        frame_len as u32
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
    parse(&CopiedFrame {
        hdr: hdr.bytes(),
        len: frame_len,
    })
}

/// A neighbour advertisement's target address (`Claim::in_target`), which
/// lies past the bytes the parser reads. The parser has checked the NA's
/// length, so the 16 bytes are in the frame; read with the helper (linear
/// data or not), only for NAs, into words (no zeroed byte array: see
/// `HeaderBuf`).
#[inline(always)]
pub fn nd_target(ctx: &TcContext) -> Result<[u8; 16], DropReason> {
    let mut words = MaybeUninit::<[u32; 4]>::uninit();
    // SAFETY: 16 bytes of room; the skb pointer is the context's.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ND_TARGET_OFF as u32,
            words.as_mut_ptr().cast(),
            16,
        )
    };
    if rc != 0 {
        // The parser checked the length: not the packet's fault.
        return Err(DropReason::Internal);
    }
    // SAFETY: the helper wrote all 16 bytes (rc 0); same size, any bytes.
    Ok(unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words.assume_init()) })
}
