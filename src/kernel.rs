//! What the running kernel offers Porin, and which attach strategy follows.
//!
//! Map support is probed for real (aya creates a tiny map of the type); the
//! link-based attach modes are decided by kernel version, as aya itself does
//! when it chooses TCX, because probing them would mean attaching to a real
//! interface.

use std::{fmt, path::Path};

use aya::{maps::MapType, sys::is_map_supported, util::KernelVersion};

/// TCX (`bpf_link` for TC, kernel 6.6).
const TCX_SINCE: KernelVersion = KernelVersion::new(6, 6, 0);
/// `bpf_link` for XDP (kernel 5.9).
const XDP_LINK_SINCE: KernelVersion = KernelVersion::new(5, 9, 0);

/// How the programs hand flow events to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsTransport {
    /// `BPF_MAP_TYPE_RINGBUF` (5.8+): the `porin` object.
    RingBuf,
    /// `BPF_MAP_TYPE_PERF_EVENT_ARRAY`, one perf buffer per CPU: the
    /// `porin-perf` object, for kernels without ring buffers.
    Perf,
}

impl EventsTransport {
    /// The config's spelling (`flows.events_transport`).
    pub fn name(self) -> &'static str {
        match self {
            EventsTransport::RingBuf => "ringbuf",
            EventsTransport::Perf => "perf",
        }
    }
}

impl fmt::Display for EventsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventsTransport::RingBuf => "ring buffer",
            EventsTransport::Perf => "perf event array",
        })
    }
}

/// One probe's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    No,
    /// The probe itself failed (e.g. no permission to call `bpf()`).
    Unknown,
}

impl Support {
    fn from_probe<E>(result: Result<bool, E>) -> Self {
        match result {
            Ok(true) => Support::Yes,
            Ok(false) => Support::No,
            Err(_) => Support::Unknown,
        }
    }

    fn from_bool(b: bool) -> Self {
        if b {
            Support::Yes
        } else {
            Support::No
        }
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Support::Yes => "yes",
            Support::No => "no",
            Support::Unknown => "unknown (probe failed; run as root?)",
        })
    }
}

/// The kernel features Porin's datapath depends on or adapts to.
#[derive(Clone, Debug)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// Parsed version, if the release string allowed it.
    pub version: Option<KernelVersion>,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: Support,
    /// `BPF_MAP_TYPE_RINGBUF` (5.8); the flow events fall back to a perf array.
    pub ring_buffer: Support,
    /// `BPF_MAP_TYPE_LPM_TRIE` (4.11); needed for CIDR networks.
    pub lpm_trie: Support,
    /// `BPF_MAP_TYPE_LRU_HASH` (4.10); needed for connection tracking.
    pub lru_hash: Support,
    /// XDP through `bpf_link` (5.9); otherwise netlink.
    pub xdp_link: Support,
    /// TC through TCX links (6.6); otherwise clsact through netlink.
    pub tcx: Support,
}

/// How programs will be attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachStrategy {
    pub tc: TcAttach,
    pub xdp: XdpAttach,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    Tcx,
    ClsactNetlink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttach {
    BpfLink,
    Netlink,
}

impl KernelFeatures {
    /// Probes the running kernel.
    pub fn probe() -> Self {
        let version = KernelVersion::current().ok();
        Self::from_parts(
            kernel_release(),
            version,
            Path::new("/sys/kernel/btf/vmlinux").exists(),
            Support::from_probe(is_map_supported(MapType::RingBuf)),
            Support::from_probe(is_map_supported(MapType::LpmTrie)),
            Support::from_probe(is_map_supported(MapType::LruHash)),
        )
    }

    /// Builds the record from probe results; the version-gated features are
    /// derived here so the rule is testable without a kernel.
    pub fn from_parts(
        release: String,
        version: Option<KernelVersion>,
        btf: bool,
        ring_buffer: Support,
        lpm_trie: Support,
        lru_hash: Support,
    ) -> Self {
        let at_least = |min: KernelVersion| match version {
            Some(v) => Support::from_bool(v >= min),
            None => Support::Unknown,
        };
        Self {
            release,
            version,
            btf: Support::from_bool(btf),
            ring_buffer,
            lpm_trie,
            lru_hash,
            xdp_link: at_least(XDP_LINK_SINCE),
            tcx: at_least(TCX_SINCE),
        }
    }

    /// The flow events transport: `forced` when the config names one,
    /// otherwise the ring buffer where the probe found it. Unknown counts as
    /// absent: perf buffers work everywhere ring buffers do.
    pub fn events_transport(&self, forced: Option<EventsTransport>) -> EventsTransport {
        forced.unwrap_or(if self.ring_buffer == Support::Yes {
            EventsTransport::RingBuf
        } else {
            EventsTransport::Perf
        })
    }

    /// The attach strategy these features imply. Unknown counts as absent:
    /// the older mechanism works everywhere the newer one does.
    pub fn attach_strategy(&self) -> AttachStrategy {
        AttachStrategy {
            tc: if self.tcx == Support::Yes {
                TcAttach::Tcx
            } else {
                TcAttach::ClsactNetlink
            },
            xdp: if self.xdp_link == Support::Yes {
                XdpAttach::BpfLink
            } else {
                XdpAttach::Netlink
            },
        }
    }
}

impl fmt::Display for TcAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcAttach::Tcx => "TCX links",
            TcAttach::ClsactNetlink => "clsact qdisc + cls_bpf through netlink",
        })
    }
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttach::BpfLink => "bpf_link",
            XdpAttach::Netlink => "netlink",
        })
    }
}

impl fmt::Display for KernelFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let strategy = self.attach_strategy();
        writeln!(f, "kernel:        {}", self.release)?;
        writeln!(f, "BTF:           {}", self.btf)?;
        writeln!(f, "ring buffer:   {}", self.ring_buffer)?;
        writeln!(f, "LPM trie:      {}", self.lpm_trie)?;
        writeln!(f, "LRU hash:      {}", self.lru_hash)?;
        writeln!(f, "bpf_link XDP:  {}", self.xdp_link)?;
        writeln!(f, "TCX:           {}", self.tcx)?;
        writeln!(f, "TC attach:     {}", strategy.tc)?;
        writeln!(f, "flow events:   {}", self.events_transport(None))?;
        write!(f, "XDP attach:    {}", strategy.xdp)
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(version: Option<(u8, u8, u16)>) -> KernelFeatures {
        let version = version.map(|(a, b, c)| KernelVersion::new(a, b, c));
        KernelFeatures::from_parts(
            "x".into(),
            version,
            true,
            Support::Yes,
            Support::Yes,
            Support::Yes,
        )
    }

    #[test]
    fn old_kernels_use_netlink_for_both() {
        let f = features(Some((5, 4, 0)));
        assert_eq!(f.tcx, Support::No);
        assert_eq!(f.xdp_link, Support::No);
        let s = f.attach_strategy();
        assert_eq!(s.tc, TcAttach::ClsactNetlink);
        assert_eq!(s.xdp, XdpAttach::Netlink);
    }

    #[test]
    fn kernel_5_10_links_xdp_but_not_tc() {
        let s = features(Some((5, 10, 0))).attach_strategy();
        assert_eq!(s.tc, TcAttach::ClsactNetlink);
        assert_eq!(s.xdp, XdpAttach::BpfLink);
    }

    #[test]
    fn kernel_6_6_uses_tcx() {
        let s = features(Some((6, 6, 0))).attach_strategy();
        assert_eq!(s.tc, TcAttach::Tcx);
        assert_eq!(s.xdp, XdpAttach::BpfLink);
    }

    #[test]
    fn flow_events_use_perf_buffers_without_a_ring_buffer_unless_forced() {
        let mut f = features(Some((5, 4, 0)));
        assert_eq!(f.events_transport(None), EventsTransport::RingBuf);
        assert_eq!(
            f.events_transport(Some(EventsTransport::Perf)),
            EventsTransport::Perf
        );
        f.ring_buffer = Support::No;
        assert_eq!(f.events_transport(None), EventsTransport::Perf);
        f.ring_buffer = Support::Unknown;
        assert_eq!(f.events_transport(None), EventsTransport::Perf);
        assert_eq!(
            f.events_transport(Some(EventsTransport::RingBuf)),
            EventsTransport::RingBuf,
            "a forced choice is kept (and fails to load if the kernel lacks it)"
        );
    }

    #[test]
    fn unknown_version_falls_back_to_netlink() {
        let f = features(None);
        assert_eq!(f.tcx, Support::Unknown);
        assert_eq!(f.attach_strategy().tc, TcAttach::ClsactNetlink);
    }
}
