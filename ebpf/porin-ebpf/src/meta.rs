//! `PORIN_META_V1`: the layout version of the pinned maps (see
//! `porin_common::layout`). Only the manager reads and writes it; the
//! program below references it so the linker keeps the map in the object.

use aya_ebpf::{macros::map, maps::Array};
use porin_common::layout::MetaRecord;

#[map]
pub static PORIN_META_V1: Array<MetaRecord> =
    Array::with_max_entries(porin_common::maps::META.max_entries, 0);
