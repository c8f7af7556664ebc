//! Bounds-checked packet access: the one way programs read packet bytes
//! directly.

/// Returns a pointer to a `T` at `offset` bytes into the packet
/// `[start, end)`, or `Err(())` if it does not fit. The explicit comparison
/// against `end` is what lets the verifier accept the later read.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*const T, ()> {
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}
