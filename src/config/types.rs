//! The typed configuration, as the rest of Porin sees it.
//!
//! Everything here has already been validated: names are unique, references
//! resolve, CIDRs/ports/paths are well formed and defaults are filled in.
//! Named items keep their source position ([`Loc`]) so later stages (policy
//! compiler, identity collision detection) can point back into the file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::cidr::Cidr;
pub use super::http::{HeaderMatch, HttpPath, Method};
pub use super::mqtt::{ClientId, Level, TopicPattern};

/// A position in the configuration file (both 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Loc {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The whole configuration file (schema version 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Always 1 for this schema.
    pub version: u32,
    pub log: Log,
    pub enforcement: Enforcement,
    /// Where maps, programs and links are pinned in bpffs.
    pub bpffs: PathBuf,
    pub discovery: Discovery,
    pub uplinks: Vec<Uplink>,
    pub networks: Vec<Network>,
    pub groups: Vec<Group>,
    /// The top-level ground rules (defaults for every group).
    pub ground_rules: GroundRules,
    pub policies: Vec<Policy>,
    pub flows: Flows,
    /// `None` when the metrics endpoint is off.
    pub metrics: Option<Metrics>,
    pub control: Control,
    pub conntrack: Conntrack,
}

/// `conntrack:`: idle timeouts of tracked connections, by state
/// (`porin_common::ct`). A revoked connection keeps the closed timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    pub tcp_opening: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub tcp_closed: Duration,
    pub udp: Duration,
    pub icmp: Duration,
    pub other: Duration,
    /// Most entries one endpoint may have (0: no limit).
    pub max_per_endpoint: u32,
    /// Most HTTP-ruled connections one endpoint may have (0: no limit).
    pub max_http_per_endpoint: u32,
}

impl Default for Conntrack {
    fn default() -> Self {
        let t = |state: u8| {
            Duration::from_secs(u64::from(
                porin_common::ct::DEFAULT_TIMEOUTS[usize::from(state)],
            ))
        };
        use porin_common::ct::state;
        Conntrack {
            tcp_opening: t(state::TCP_OPENING),
            tcp_established: t(state::TCP_ESTABLISHED),
            tcp_closing: t(state::TCP_CLOSING),
            tcp_closed: t(state::TCP_CLOSED),
            udp: t(state::UDP),
            icmp: t(state::ICMP),
            other: t(state::OTHER),
            max_per_endpoint: porin_common::ct::DEFAULT_MAX_PER_ENDPOINT,
            max_http_per_endpoint: porin_common::ct::DEFAULT_MAX_HTTP_PER_ENDPOINT,
        }
    }
}

impl Conntrack {
    /// The timeouts in seconds by state, as the programs read them
    /// (`CtClock::timeouts`).
    pub fn timeouts(&self) -> [u32; porin_common::ct::STATES] {
        let s = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        [
            s(self.tcp_opening),
            s(self.tcp_established),
            s(self.tcp_closing),
            s(self.tcp_closed),
            s(self.udp),
            s(self.icmp),
            s(self.other),
            // Revoked: as long as a closed connection.
            s(self.tcp_closed),
        ]
    }
}

impl Config {
    /// The configured log level, for the logger (`RUST_LOG` still wins).
    pub fn log_level(&self) -> log::LevelFilter {
        self.log.level.into()
    }

    /// One line for logs and `check-config`, e.g.
    /// `audit mode, 2 groups, 3 networks, 5 policies, 1 uplink`.
    pub fn summary(&self) -> String {
        fn count(n: usize, one: &str, many: &str) -> String {
            format!("{n} {}", if n == 1 { one } else { many })
        }
        let mode = match self.enforcement.mode {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        };
        format!(
            "{mode} mode, {}, {}, {}, {}",
            count(self.groups.len(), "group", "groups"),
            count(self.networks.len(), "network", "networks"),
            count(self.policies.len(), "policy", "policies"),
            count(self.uplinks.len(), "uplink", "uplinks"),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log {
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// Global default; groups may override it.
    pub mode: Mode,
    pub unknown_workloads: UnknownWorkloads,
    pub on_stop: OnStop,
    /// Parent cgroups (paths in the cgroup v2 hierarchy, e.g.
    /// `/libpod_parent`) where the quarantine gate is attached; `None` for
    /// the runtimes' defaults (see `datapath::gate::default_parents`).
    pub quarantine_cgroups: Option<Vec<PathBuf>>,
}

/// Whether verdicts are applied or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

/// What happens to containers that no group selects (or not yet classified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownWorkloads {
    Allow,
    Quarantine,
}

/// What a clean daemon stop does to the programs in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Leave pinned programs attached: protection survives restarts/upgrades.
    Keep,
    /// Detach and unpin everything.
    Detach,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub cgroup_root: PathBuf,
    pub resync_interval: Duration,
    /// Without duplicates, in file order.
    pub runtimes: Vec<Runtime>,
    /// The containerd daemons to read state from; never empty, no two with
    /// the same state directory.
    pub containerd: Vec<ContainerdInstance>,
    /// Podman storage roots (`graphroot`); never empty, no duplicates.
    pub podman_graphroots: Vec<PathBuf>,
    /// dockerd's `data-root` (container records under `containers/`).
    pub docker_root: PathBuf,
}

/// Where one containerd daemon keeps its state (`--state`, `state` in its
/// config.toml: task bundles) and its persistent data (`--root`, `root`:
/// the metadata database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdInstance {
    pub state_dir: PathBuf,
    pub root_dir: PathBuf,
}

impl Default for ContainerdInstance {
    /// containerd's own defaults.
    fn default() -> Self {
        ContainerdInstance {
            state_dir: "/run/containerd".into(),
            root_dir: "/var/lib/containerd".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Podman,
    Containerd,
    Docker,
}

/// An uplink interface (XDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub interface: String,
    pub xdp_mode: XdpMode,
    /// Networks dropped at the uplink; every peer has `kind == PeerKind::Network`.
    pub deny_from: Vec<Peer>,
    pub flood: Option<Flood>,
    pub loc: Loc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// Per-source flood limits at the uplink; `None` means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    pub syn_per_second: Option<u32>,
    pub udp_per_second: Option<u32>,
    /// Token-bucket depth (packets); defaults to the largest rate given.
    pub burst: u32,
}

/// A named set of CIDRs; each gets its own identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub cidrs: Vec<Cidr>,
    pub loc: Loc,
}

/// An identity group selecting containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub select: Selector,
    /// Effective mode: the group's override or `enforcement.mode`.
    pub mode: Mode,
    /// Effective ground rules: the group's overrides on top of the top-level ones.
    pub ground_rules: GroundRules,
    pub loc: Loc,
}

/// Container selection; every criterion given must match (AND). At least
/// one criterion is always present.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// Exact label key -> value matches.
    pub labels: BTreeMap<String, String>,
    /// Exact OCI annotation key -> value matches (the runtime-neutral
    /// source: the annotations of the container's OCI spec).
    pub annotations: BTreeMap<String, String>,
    pub name: Option<Glob>,
    pub image: Option<Glob>,
    pub runtime: Option<Runtime>,
}

/// A glob pattern in which only `*` is special (any run of characters,
/// including `/` and the empty string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: impl Into<String>) -> Self {
        Glob(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, text: &str) -> bool {
        let mut parts = self.0.split('*');
        // Without '*' there is one part and it must equal the text.
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        // Leftmost matching of the middle parts is optimal for '*'-only globs.
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Default verdicts for traffic no policy speaks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroundRules {
    /// To `world` (addresses in no named network and no container).
    pub internet_egress: Verdict,
    /// Between members of the same group.
    pub same_group: Verdict,
    /// To/from other groups when no policy matches.
    pub cross_group: Verdict,
    /// From the host to the group.
    pub host_ingress: Verdict,
    /// From the group to the host.
    pub host_egress: Verdict,
}

impl Default for GroundRules {
    fn default() -> Self {
        GroundRules {
            internet_egress: Verdict::Deny,
            same_group: Verdict::Allow,
            cross_group: Verdict::Deny,
            host_ingress: Verdict::Allow,
            host_egress: Verdict::Deny,
        }
    }
}

/// An allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub from: Vec<Peer>,
    pub to: Vec<Peer>,
    pub protocol: Protocol,
    /// Empty means all ports (always empty for icmp/any).
    pub ports: Vec<PortRange>,
    /// Empty means no HTTP restriction.
    pub http: Vec<HttpRule>,
    /// MQTT rules: every packet of the connection is judged by them.
    pub mqtt: Option<MqttRule>,
    pub loc: Loc,
}

/// A resolved reference to something traffic can come from or go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub kind: PeerKind,
    /// The name as written (`world`/`host` for the reserved peers).
    pub name: String,
    pub loc: Loc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    Group,
    Network,
    /// Addresses in no named network and no container.
    World,
    /// The gateway itself.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One HTTP request pattern; a request must match every field given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    pub method: Method,
    pub path: HttpPath,
    /// Exact Host header, lowercase.
    pub host: Option<String>,
    pub headers: Vec<HeaderMatch>,
    pub loc: Loc,
}

/// A policy's MQTT rules (the `mqtt:` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttRule {
    /// Client ids a CONNECT may carry; empty: any.
    pub client_ids: Vec<ClientId>,
    /// Topics a PUBLISH may name; empty: none.
    pub publish: Vec<TopicPattern>,
    /// What a SUBSCRIBE filter may cover; empty: none.
    pub subscribe: Vec<TopicPattern>,
    /// Highest QoS of a PUBLISH (0-2).
    pub max_qos: u8,
    /// Whether a PUBLISH may set RETAIN.
    pub retain: bool,
    /// Largest PUBLISH (remaining length, bytes).
    pub max_message_size: Option<u32>,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flows {
    pub history: u32,
    pub rate_limit: u32,
    /// `events_transport`: None for `auto` (ring buffer where the kernel has
    /// one, perf buffers otherwise).
    pub events_transport: Option<crate::kernel::EventsTransport>,
    pub log: Option<FlowLog>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLog {
    pub path: PathBuf,
    /// Bytes before rotation.
    pub max_size: u64,
    pub keep: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub socket: PathBuf,
    /// Permission bits of the socket file (e.g. 0o600).
    pub mode: u32,
}
