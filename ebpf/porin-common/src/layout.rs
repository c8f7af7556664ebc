//! The pinned-map layout version: what `PORIN_META_V1` (array\[1\]) holds,
//! so a daemon that finds maps pinned by another one can tell whether it
//! may adopt them (same layout), must refuse (a newer layout: downgrade) or
//! replace them (an older or unknown layout).
//!
//! Bump [`LAYOUT`] whenever a pinned map's meaning changes in a way the
//! previous programs or manager would misread (key or value layout, a
//! map's role). A map whose name ends in a new `_Vn` is a new map and does
//! not need a bump by itself: it is created next to the old ones.

/// The layout this build writes and understands.
///
/// | layout | change |
/// | --- | --- |
/// | 1 | first pinned layout |
/// | 2 | `PORIN_CFG_V1`'s `DatapathConfig` grew the deny-cache epoch (8 → 16 bytes) |
/// | 3 | HTTP rules: three more drop reasons (`PORIN_DROPS_V1` 13 → 16 entries), `CtValue::l7`, `action::ALLOW_HTTP` |
/// | 4 | HTTP rule keys are SipHash-2-4 under the key in the new `PORIN_HTTPK_V1` (were FNV-1a: layout-3 rules would never match) |
/// | 5 | HTTP judged on the stream: `PORIN_HTTPC_V1`'s `HttpConn` 20 → 32 bytes, the new `PORIN_HTTPH_V1` (heads spanning segments), two more drop reasons (`PORIN_DROPS_V1` 16 → 18 entries) |
/// | 6 | Long header values skipped: `HttpSet` 8 → 16 bytes (the header-name filter), so `PORIN_HTTPS_V1`'s values and `PORIN_HTTPC_V1`'s `HttpConn` (32 → 40); `Request` (`PORIN_HTTPH_V1`) grew; `PORIN_HTTPP_V1` 4 → 6 slots (`http_value`, `http_chunk`); chunked bodies (`HttpConn` states 5-11) |
/// | 7 | Conntrack states and timeouts: `CtValue` times in seconds with a state byte (was a nanosecond time), the new `PORIN_CTCLK_V1` and `PORIN_CTN_V1` (per-endpoint counts); `PORIN_HTTPP_V1` 6 → 8 slots (revocation); two more drop reasons (`PORIN_DROPS_V1` 18 → 20 entries) |
/// | 8 | Anti-spoofing: three more drop reasons (`PORIN_DROPS_V1` 20 → 23 entries); `PORIN_UPEP4_V1`/`PORIN_UPEP6_V1` are read by the TC programs too (and list endpoints with several veths); the new `PORIN_VBR_V1` (host veth → bridge) |
/// | 9 | `CtValue::created_s` became `peer_in` (the way in checked for the peer; a `to_container` hit checks it); `PORIN_CTN_V1`'s values are `CtCount` (entries and HTTP-ruled ones), `CtClock::max_http_per_endpoint`; one more drop reason, `HttpQuota` (`PORIN_DROPS_V1` 23 → 24 entries) |
/// | 10 | MQTT rules: `HttpConn` 40 → 56 bytes (the MQTT session: protocol level, client id hash), the new `PORIN_MQTTS_V1`, `PORIN_MQTTT_V1` and `PORIN_MQTTH_V1`, `PORIN_HTTPP_V1` 8 → 10 slots (`mqtt_parse`, `mqtt_finish`), four more drop reasons (`PORIN_DROPS_V1` 24 → 28 entries) |
pub const LAYOUT: u32 = 10;

/// [`MetaRecord::magic`] of a written record ("PORM").
pub const META_MAGIC: u32 = 0x504F_524D;

/// Bytes of the writer's version string (NUL padded).
pub const WRITER_LEN: usize = 24;

/// `PORIN_META_V1`'s only entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaRecord {
    /// [`META_MAGIC`] once written; zero in a fresh map.
    pub magic: u32,
    /// The layout of the maps pinned next to this one.
    pub layout: u32,
    /// Version of the porin that last wrote the maps (for messages).
    pub writer: [u8; WRITER_LEN],
}

impl MetaRecord {
    pub fn new(layout: u32, writer: &str) -> Self {
        let mut w = [0u8; WRITER_LEN];
        let n = writer.len().min(WRITER_LEN);
        w[..n].copy_from_slice(&writer.as_bytes()[..n]);
        MetaRecord {
            magic: META_MAGIC,
            layout,
            writer: w,
        }
    }

    /// The writer's version as text (up to the first NUL).
    pub fn writer(&self) -> &str {
        let end = self
            .writer
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(WRITER_LEN);
        core::str::from_utf8(&self.writer[..end]).unwrap_or("?")
    }
}

/// What a starting daemon does with the maps it finds pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// Nothing pinned yet: create and pin.
    Fresh,
    /// Same layout: adopt the maps and what is attached.
    Adopt,
    /// A newer layout than this build knows: refuse to start (downgrade).
    Refuse,
    /// An older layout, or maps without a (valid) record: replace them.
    Replace,
}

/// Decides from the record found (None: no meta map pinned) and this
/// build's layout.
pub fn compat(found: Option<&MetaRecord>, ours: u32) -> Compat {
    match found {
        None => Compat::Fresh,
        Some(r) if r.magic != META_MAGIC => Compat::Replace,
        Some(r) if r.layout == ours => Compat::Adopt,
        Some(r) if r.layout > ours => Compat::Refuse,
        Some(_) => Compat::Replace,
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], 4 + 4 + 24 bytes without padding, valid for any bytes.
unsafe impl aya::Pod for MetaRecord {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_by_layout() {
        let at = |l| MetaRecord::new(l, "0.1.0");
        assert_eq!(compat(None, 2), Compat::Fresh);
        assert_eq!(compat(Some(&at(2)), 2), Compat::Adopt);
        assert_eq!(compat(Some(&at(3)), 2), Compat::Refuse);
        assert_eq!(compat(Some(&at(1)), 2), Compat::Replace);
        let zero = MetaRecord {
            magic: 0,
            layout: 2,
            writer: [0; WRITER_LEN],
        };
        assert_eq!(compat(Some(&zero), 2), Compat::Replace);
    }

    #[test]
    fn writer_round_trips_and_truncates() {
        assert_eq!(MetaRecord::new(1, "0.3.1").writer(), "0.3.1");
        let long = "x".repeat(40);
        assert_eq!(MetaRecord::new(1, &long).writer().len(), WRITER_LEN);
    }
}
