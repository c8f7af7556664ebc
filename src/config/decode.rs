//! Schema version 1: decodes the typed [`Config`] from the spanned tree.
//!
//! Every reader reports into the [`Sink`] and the decoder keeps going with
//! defaults, so one run finds every mistake. The result is only used when
//! the sink stays empty.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::error::Sink;
use super::http::{self, HeaderMatch, HttpPath, Method, MAX_HEADERS};
use super::mqtt;
use super::read::{
    choice, entries, index_path, key_path, list, non_empty_list, non_empty_string, parsed, string,
    u32_in, Fields,
};
use super::tree::{Node, Value};
use super::types::*;
use super::units;
use super::validate::{self, Allowed, Declared, Names};
use crate::kernel::EventsTransport;

/// The only schema this build reads.
pub const SCHEMA_VERSION: u32 = 1;

const LOG_LEVELS: &[(&str, LogLevel)] = &[
    ("error", LogLevel::Error),
    ("warn", LogLevel::Warn),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
    ("trace", LogLevel::Trace),
];
const MODES: &[(&str, Mode)] = &[("enforce", Mode::Enforce), ("audit", Mode::Audit)];
const UNKNOWN_WORKLOADS: &[(&str, UnknownWorkloads)] = &[
    ("allow", UnknownWorkloads::Allow),
    ("quarantine", UnknownWorkloads::Quarantine),
];
const ON_STOP: &[(&str, OnStop)] = &[("keep", OnStop::Keep), ("detach", OnStop::Detach)];
const RUNTIMES: &[(&str, Runtime)] = &[
    ("podman", Runtime::Podman),
    ("containerd", Runtime::Containerd),
    ("docker", Runtime::Docker),
];
const XDP_MODES: &[(&str, XdpMode)] = &[
    ("auto", XdpMode::Auto),
    ("native", XdpMode::Native),
    ("generic", XdpMode::Generic),
];
const VERDICTS: &[(&str, Verdict)] = &[("allow", Verdict::Allow), ("deny", Verdict::Deny)];
const PROTOCOLS: &[(&str, Protocol)] = &[
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("icmp", Protocol::Icmp),
    ("any", Protocol::Any),
];

const RESYNC_MIN: Duration = Duration::from_secs(1);
const RESYNC_MAX: Duration = Duration::from_secs(24 * 3600);
const FLOW_LOG_MIN: u64 = 64 * 1024;
const FLOW_LOG_MAX: u64 = 4 * 1024 * 1024 * 1024;
const FLOOD_MAX: u32 = 10_000_000;

/// Decodes the whole document. `None` only when nothing sensible could be
/// read (not a mapping, or another schema version); errors are in `sink`.
pub(crate) fn decode(root: &Node, sink: &mut Sink) -> Option<Config> {
    if root.value == Value::Null {
        sink.error(
            root.loc,
            "",
            "the file is empty; it needs at least `version: 1`",
        );
        return None;
    }
    let mut f = Fields::new(root, "", sink)?;

    // Checked first: a file written for another schema would only produce
    // noise from the fields below.
    let version = match f.required("version", sink) {
        Some((node, path)) => match node.value {
            Value::Int(v) if v == i128::from(SCHEMA_VERSION) => SCHEMA_VERSION,
            Value::Int(v) => {
                sink.error(
                    node.loc,
                    &path,
                    format!(
                        "unsupported schema version {v}; this Porin reads version {SCHEMA_VERSION}"
                    ),
                );
                return None;
            }
            _ => {
                sink.error(
                    node.loc,
                    &path,
                    format!(
                        "expected the integer {SCHEMA_VERSION}, found {}",
                        node.value.kind()
                    ),
                );
                SCHEMA_VERSION
            }
        },
        None => SCHEMA_VERSION,
    };

    let log = Log {
        level: opt(&mut f, "log", sink, |n, p, s| {
            let mut g = Fields::new(n, p, s)?;
            let level = opt(&mut g, "level", s, |n, p, s| choice(n, p, s, LOG_LEVELS));
            g.finish(s);
            level
        })
        .unwrap_or(LogLevel::Info),
    };
    let enforcement = opt(&mut f, "enforcement", sink, enforcement).unwrap_or(DEFAULT_ENFORCEMENT);
    let bpffs =
        opt(&mut f, "bpffs", sink, absolute_path).unwrap_or_else(|| "/sys/fs/bpf/porin".into());
    let discovery = opt(&mut f, "discovery", sink, discovery).unwrap_or_else(default_discovery);
    let ground_rules = opt(&mut f, "ground_rules", sink, |n, p, s| {
        ground_rules(n, p, s, GroundRules::default())
    })
    .unwrap_or_default();

    // Groups and networks define the names that uplinks and policies use.
    let mut declared = Vec::new();
    let networks = items(&mut f, "networks", sink, |n, p, s| {
        network(n, p, s, &mut declared)
    });
    let groups = items(&mut f, "groups", sink, |n, p, s| {
        group(n, p, s, &enforcement, &ground_rules, &mut declared)
    });
    let names = Names::new(declared, sink);

    let uplinks = items(&mut f, "uplinks", sink, |n, p, s| uplink(n, p, s, &names));
    report_duplicate_uplinks(&uplinks, sink);
    let policies = items(&mut f, "policies", sink, |n, p, s| policy(n, p, s, &names));
    validate::report_duplicates(
        policies
            .iter()
            .map(|(p, path)| (p.name.as_str(), p.loc, path.as_str())),
        "policy name",
        sink,
    );

    let flows = opt(&mut f, "flows", sink, flows).unwrap_or_else(default_flows);
    let metrics = opt(&mut f, "metrics", sink, metrics);
    let control = opt(&mut f, "control", sink, control).unwrap_or_else(default_control);
    let conntrack = opt(&mut f, "conntrack", sink, conntrack).unwrap_or_default();
    f.finish(sink);

    Some(Config {
        version,
        log,
        enforcement,
        bpffs,
        discovery,
        uplinks: uplinks.into_iter().map(|(u, _)| u).collect(),
        networks: networks.into_iter().map(|(n, _)| n).collect(),
        groups: groups.into_iter().map(|(g, _)| g).collect(),
        ground_rules,
        policies: policies.into_iter().map(|(p, _)| p).collect(),
        flows,
        metrics,
        control,
        conntrack,
    })
}

const CT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const CT_TIMEOUT_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// `conntrack:`: `timeouts:` by state, each a duration in 1s-30d,
/// `max_per_endpoint` and `max_http_per_endpoint` (0: no limit).
fn conntrack(node: &Node, path: &str, sink: &mut Sink) -> Option<Conntrack> {
    let mut f = Fields::new(node, path, sink)?;
    let d = Conntrack::default();
    let t = opt(&mut f, "timeouts", sink, |n, p, s| {
        let mut g = Fields::new(n, p, s)?;
        let mut one = |name: &'static str, default: Duration, s: &mut Sink| {
            opt(&mut g, name, s, |n, p, s| {
                let v = parsed(n, p, s, units::parse_duration)?;
                if !(CT_TIMEOUT_MIN..=CT_TIMEOUT_MAX).contains(&v) {
                    s.error(
                        n.loc,
                        p,
                        format!(
                            "duration {} is out of range {}-{}",
                            units::format_duration(v),
                            units::format_duration(CT_TIMEOUT_MIN),
                            units::format_duration(CT_TIMEOUT_MAX)
                        ),
                    );
                    return None;
                }
                Some(v)
            })
            .unwrap_or(default)
        };
        let c = Conntrack {
            tcp_opening: one("tcp_opening", d.tcp_opening, s),
            tcp_established: one("tcp_established", d.tcp_established, s),
            tcp_closing: one("tcp_closing", d.tcp_closing, s),
            tcp_closed: one("tcp_closed", d.tcp_closed, s),
            udp: one("udp", d.udp, s),
            icmp: one("icmp", d.icmp, s),
            other: one("other", d.other, s),
            max_per_endpoint: d.max_per_endpoint,
            max_http_per_endpoint: d.max_http_per_endpoint,
        };
        g.finish(s);
        Some(c)
    })
    .unwrap_or(d);
    let max_per_endpoint = opt(&mut f, "max_per_endpoint", sink, |n, p, s| {
        u32_in(n, p, s, 0..=porin_common::datapath::max_entries::CONNTRACK)
    })
    .unwrap_or(d.max_per_endpoint);
    let max_http_per_endpoint = opt(&mut f, "max_http_per_endpoint", sink, |n, p, s| {
        u32_in(n, p, s, 0..=porin_common::http::max_entries::CONNS)
    })
    .unwrap_or(d.max_http_per_endpoint);
    f.finish(sink);
    Some(Conntrack {
        max_per_endpoint,
        max_http_per_endpoint,
        ..t
    })
}

/// Reads an optional field with `read`; `None` when absent or invalid.
fn opt<'n, T>(
    f: &mut Fields<'n>,
    name: &'static str,
    sink: &mut Sink,
    read: impl FnOnce(&'n Node, &str, &mut Sink) -> Option<T>,
) -> Option<T> {
    let (node, path) = f.optional(name)?;
    read(node, &path, sink)
}

/// Reads an optional list of items with `read`, keeping each item's path
/// for later cross-item messages. Invalid items are dropped (reported).
fn items<'n, T>(
    f: &mut Fields<'n>,
    name: &'static str,
    sink: &mut Sink,
    mut read: impl FnMut(&'n Node, &str, &mut Sink) -> Option<T>,
) -> Vec<(T, String)> {
    let Some((node, path)) = f.optional(name) else {
        return Vec::new();
    };
    let Some(nodes) = list(node, &path, sink) else {
        return Vec::new();
    };
    nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let item_path = index_path(&path, i);
            read(n, &item_path, sink).map(|v| (v, item_path))
        })
        .collect()
}

const DEFAULT_ENFORCEMENT: Enforcement = Enforcement {
    mode: Mode::Audit,
    unknown_workloads: UnknownWorkloads::Allow,
    on_stop: OnStop::Keep,
    quarantine_cgroups: None,
};

fn enforcement(node: &Node, path: &str, sink: &mut Sink) -> Option<Enforcement> {
    let mut f = Fields::new(node, path, sink)?;
    let d = DEFAULT_ENFORCEMENT;
    let e = Enforcement {
        mode: opt(&mut f, "mode", sink, |n, p, s| choice(n, p, s, MODES)).unwrap_or(d.mode),
        unknown_workloads: opt(&mut f, "unknown_workloads", sink, |n, p, s| {
            choice(n, p, s, UNKNOWN_WORKLOADS)
        })
        .unwrap_or(d.unknown_workloads),
        on_stop: opt(&mut f, "on_stop", sink, |n, p, s| choice(n, p, s, ON_STOP))
            .unwrap_or(d.on_stop),
        quarantine_cgroups: opt(&mut f, "quarantine_cgroups", sink, quarantine_cgroups),
    };
    f.finish(sink);
    Some(e)
}

/// An absolute path. `..` is refused because what it resolves to depends on
/// symlinks at run time; the configuration should say where things are.
fn absolute_path(node: &Node, path: &str, sink: &mut Sink) -> Option<PathBuf> {
    parsed(node, path, sink, |text| {
        let p = Path::new(text);
        if !p.is_absolute() {
            return Err(format!(
                "`{text}` must be an absolute path (starting with `/`)"
            ));
        }
        if text.contains('\0') {
            return Err("path contains a NUL character".into());
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("`{text}` must not contain `..`"));
        }
        Ok(p.to_path_buf())
    })
}

fn default_discovery() -> Discovery {
    Discovery {
        cgroup_root: "/sys/fs/cgroup".into(),
        resync_interval: Duration::from_secs(30),
        runtimes: vec![Runtime::Podman, Runtime::Containerd, Runtime::Docker],
        containerd: vec![ContainerdInstance::default()],
        podman_graphroots: vec!["/var/lib/containers/storage".into()],
        docker_root: crate::discovery::docker::DEFAULT_ROOT.into(),
    }
}

fn discovery(node: &Node, path: &str, sink: &mut Sink) -> Option<Discovery> {
    let mut f = Fields::new(node, path, sink)?;
    let d = default_discovery();
    let cgroup_root = opt(&mut f, "cgroup_root", sink, absolute_path).unwrap_or(d.cgroup_root);
    let resync_interval = opt(&mut f, "resync_interval", sink, |n, p, s| {
        let v = parsed(n, p, s, units::parse_duration)?;
        if !(RESYNC_MIN..=RESYNC_MAX).contains(&v) {
            s.error(
                n.loc,
                p,
                format!(
                    "duration {} is out of range {}-{}",
                    units::format_duration(v),
                    units::format_duration(RESYNC_MIN),
                    units::format_duration(RESYNC_MAX)
                ),
            );
            return None;
        }
        Some(v)
    })
    .unwrap_or(d.resync_interval);
    let runtimes = opt(&mut f, "runtimes", sink, |n, p, s| {
        let nodes = non_empty_list(n, p, s, "leave it out to use every runtime")?;
        let mut out: Vec<Runtime> = Vec::new();
        for (i, item) in nodes.iter().enumerate() {
            let ip = index_path(p, i);
            if let Some(r) = choice(item, &ip, s, RUNTIMES) {
                if out.contains(&r) {
                    s.error(item.loc, &ip, "runtime listed twice");
                } else {
                    out.push(r);
                }
            }
        }
        Some(out)
    })
    .unwrap_or(d.runtimes);
    let containerd = opt(&mut f, "containerd", sink, containerd_instances).unwrap_or(d.containerd);
    let podman_graphroots =
        opt(&mut f, "podman_graphroots", sink, graphroots).unwrap_or(d.podman_graphroots);
    let docker_root = opt(&mut f, "docker_root", sink, absolute_path).unwrap_or(d.docker_root);
    f.finish(sink);
    Some(Discovery {
        cgroup_root,
        resync_interval,
        runtimes,
        containerd,
        podman_graphroots,
        docker_root,
    })
}

/// `discovery.containerd`: one entry per containerd daemon, each field
/// defaulting to containerd's own default.
fn containerd_instances(
    node: &Node,
    path: &str,
    sink: &mut Sink,
) -> Option<Vec<ContainerdInstance>> {
    let nodes = non_empty_list(
        node,
        path,
        sink,
        "leave it out for the default instance, or drop containerd from discovery.runtimes",
    )?;
    let d = ContainerdInstance::default();
    let mut out = Vec::new();
    for (i, item) in nodes.iter().enumerate() {
        let ip = index_path(path, i);
        let Some(mut f) = Fields::new(item, &ip, sink) else {
            continue;
        };
        let state = f
            .optional("state_dir")
            .map(|(n, p)| (absolute_path(n, &p, sink), n.loc, p));
        let root_dir = opt(&mut f, "root_dir", sink, absolute_path);
        f.finish(sink);
        let (state_dir, loc, state_path) = match state {
            Some((Some(dir), loc, p)) => (dir, loc, p),
            Some((None, ..)) => continue,
            None => (d.state_dir.clone(), item.loc, ip),
        };
        out.push((
            ContainerdInstance {
                state_dir,
                root_dir: root_dir.unwrap_or_else(|| d.root_dir.clone()),
            },
            loc,
            state_path,
        ));
    }
    // Two entries with one state directory are one daemon read twice.
    let texts: Vec<String> = out
        .iter()
        .map(|(c, _, _)| c.state_dir.display().to_string())
        .collect();
    validate::report_duplicates(
        out.iter()
            .zip(&texts)
            .map(|((_, loc, p), t)| (t.as_str(), *loc, p.as_str())),
        "containerd state_dir",
        sink,
    );
    Some(out.into_iter().map(|(c, _, _)| c).collect())
}

/// `enforcement.quarantine_cgroups`: cgroup paths as `/proc/PID/cgroup`
/// shows them (absolute, no `..`), not the root itself, without repeats.
fn quarantine_cgroups(node: &Node, path: &str, sink: &mut Sink) -> Option<Vec<PathBuf>> {
    let nodes = non_empty_list(
        node,
        path,
        sink,
        "leave it out for the runtimes' default parents",
    )?;
    let dirs: Vec<(PathBuf, Loc, String)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let ip = index_path(path, i);
            let p = absolute_path(item, &ip, sink)?;
            if p == Path::new("/") {
                sink.error(
                    item.loc,
                    &ip,
                    "the root cgroup would gate every process of the host; name the runtimes' parent cgroups (e.g. /libpod_parent)",
                );
                return None;
            }
            Some((p, item.loc, ip))
        })
        .collect();
    let texts: Vec<String> = dirs
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    validate::report_duplicates(
        dirs.iter()
            .zip(&texts)
            .map(|((_, loc, p), t)| (t.as_str(), *loc, p.as_str())),
        "quarantine cgroup",
        sink,
    );
    Some(dirs.into_iter().map(|(p, _, _)| p).collect())
}

/// `discovery.podman_graphroots`: absolute, without repeats.
fn graphroots(node: &Node, path: &str, sink: &mut Sink) -> Option<Vec<PathBuf>> {
    let nodes = non_empty_list(
        node,
        path,
        sink,
        "leave it out for the default, or drop podman from discovery.runtimes",
    )?;
    let dirs: Vec<(PathBuf, Loc, String)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let ip = index_path(path, i);
            absolute_path(item, &ip, sink).map(|p| (p, item.loc, ip))
        })
        .collect();
    let texts: Vec<String> = dirs
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    validate::report_duplicates(
        dirs.iter()
            .zip(&texts)
            .map(|((_, loc, p), t)| (t.as_str(), *loc, p.as_str())),
        "graphroot",
        sink,
    );
    Some(dirs.into_iter().map(|(p, _, _)| p).collect())
}

/// Ground rules; every field falls back to `base` (the built-in defaults at
/// the top level, the top-level rules inside a group).
fn ground_rules(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    base: GroundRules,
) -> Option<GroundRules> {
    let mut f = Fields::new(node, path, sink)?;
    let mut verdict = |name: &'static str, default: Verdict, sink: &mut Sink| {
        opt(&mut f, name, sink, |n, p, s| choice(n, p, s, VERDICTS)).unwrap_or(default)
    };
    let rules = GroundRules {
        internet_egress: verdict("internet_egress", base.internet_egress, sink),
        same_group: verdict("same_group", base.same_group, sink),
        cross_group: verdict("cross_group", base.cross_group, sink),
        host_ingress: verdict("host_ingress", base.host_ingress, sink),
        host_egress: verdict("host_egress", base.host_egress, sink),
    };
    f.finish(sink);
    Some(rules)
}

/// The item's `name`: syntax-checked, and remembered for the namespace when
/// `kind` is given.
fn item_name(
    f: &mut Fields<'_>,
    sink: &mut Sink,
    kind: Option<PeerKind>,
    declared: &mut Vec<Declared>,
) -> Option<(String, Loc)> {
    let (node, path) = f.required("name", sink)?;
    let name = parsed(node, &path, sink, |t| {
        validate::check_name(t).map(|()| t.to_owned())
    })?;
    if let Some(kind) = kind {
        declared.push(Declared {
            kind,
            name: name.clone(),
            loc: node.loc,
            path,
        });
    }
    Some((name, node.loc))
}

fn network(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    declared: &mut Vec<Declared>,
) -> Option<Network> {
    let mut f = Fields::new(node, path, sink)?;
    let name = item_name(&mut f, sink, Some(PeerKind::Network), declared);
    let mut cidrs: Vec<(Cidr, Loc, String)> = Vec::new();
    if let Some((n, p)) = f.required("cidrs", sink) {
        if let Some(nodes) = non_empty_list(n, &p, sink, "a network needs at least one CIDR") {
            for (i, item) in nodes.iter().enumerate() {
                let ip = index_path(&p, i);
                if let Some(c) = parsed(item, &ip, sink, |t| t.parse::<Cidr>()) {
                    cidrs.push((c, item.loc, ip));
                }
            }
        }
    }
    let texts: Vec<String> = cidrs.iter().map(|(c, _, _)| c.to_string()).collect();
    validate::report_duplicates(
        cidrs
            .iter()
            .zip(&texts)
            .map(|((_, loc, p), t)| (t.as_str(), *loc, p.as_str())),
        "CIDR",
        sink,
    );
    f.finish(sink);
    Some(Network {
        name: name?.0,
        cidrs: cidrs.into_iter().map(|(c, _, _)| c).collect(),
        loc: node.loc,
    })
}

fn group(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    enforcement: &Enforcement,
    top_rules: &GroundRules,
    declared: &mut Vec<Declared>,
) -> Option<Group> {
    let mut f = Fields::new(node, path, sink)?;
    let name = item_name(&mut f, sink, Some(PeerKind::Group), declared);
    let select = f
        .required("select", sink)
        .and_then(|(n, p)| selector(n, &p, sink));
    let mode =
        opt(&mut f, "mode", sink, |n, p, s| choice(n, p, s, MODES)).unwrap_or(enforcement.mode);
    let ground_rules = opt(&mut f, "ground_rules", sink, |n, p, s| {
        ground_rules(n, p, s, *top_rules)
    })
    .unwrap_or(*top_rules);
    f.finish(sink);
    Some(Group {
        name: name?.0,
        select: select?,
        mode,
        ground_rules,
        loc: node.loc,
    })
}

fn selector(node: &Node, path: &str, sink: &mut Sink) -> Option<Selector> {
    let mut f = Fields::new(node, path, sink)?;
    let annotations = opt(&mut f, "annotations", sink, labels);
    let labels = opt(&mut f, "labels", sink, labels);
    let glob = |n: &Node, p: &str, s: &mut Sink| non_empty_string(n, p, s).map(Glob::new);
    let name = opt(&mut f, "name", sink, glob);
    let image = opt(&mut f, "image", sink, glob);
    let runtime = opt(&mut f, "runtime", sink, |n, p, s| choice(n, p, s, RUNTIMES));
    let loc = f.loc();
    let written = ["labels", "annotations", "name", "image", "runtime"]
        .iter()
        .any(|k| f.has(k));
    f.finish(sink);
    if !written {
        sink.error(
            loc,
            path,
            "needs at least one of labels, annotations, name, image, runtime (a group that selects \
             everything would be easy to create by mistake; use name: \"*\" to mean it)",
        );
        return None;
    }
    Some(Selector {
        // After a reported mistake the value no longer matters.
        labels: labels.unwrap_or_default(),
        annotations: annotations.unwrap_or_default(),
        name,
        image,
        runtime,
    })
}

fn labels(node: &Node, path: &str, sink: &mut Sink) -> Option<BTreeMap<String, String>> {
    let all = entries(node, path, sink)?;
    if all.is_empty() {
        sink.error(node.loc, path, "must not be empty; leave it out instead");
        return None;
    }
    let mut out = BTreeMap::new();
    for e in all {
        let p = key_path(path, e.key);
        if e.key.is_empty() {
            sink.error(e.key_loc, &p, "key must not be empty");
            continue;
        }
        if let Some(v) = non_empty_string(e.value, &p, sink) {
            out.insert(e.key.to_owned(), v.to_owned());
        }
    }
    Some(out)
}

fn uplink(node: &Node, path: &str, sink: &mut Sink, names: &Names) -> Option<Uplink> {
    let mut f = Fields::new(node, path, sink)?;
    let interface = f.required("interface", sink).and_then(|(n, p)| {
        parsed(n, &p, sink, |t| {
            validate::check_interface_name(t).map(|()| t.to_owned())
        })
    });
    let xdp_mode = opt(&mut f, "xdp_mode", sink, |n, p, s| {
        choice(n, p, s, XDP_MODES)
    })
    .unwrap_or(XdpMode::Auto);
    let deny_from = opt(&mut f, "deny_from", sink, |n, p, s| {
        references(n, p, s, names, Allowed::Networks)
    })
    .unwrap_or_default();
    let flood = opt(&mut f, "flood", sink, flood);
    f.finish(sink);
    Some(Uplink {
        interface: interface?,
        xdp_mode,
        deny_from,
        flood,
        loc: node.loc,
    })
}

fn report_duplicate_uplinks(uplinks: &[(Uplink, String)], sink: &mut Sink) {
    let paths: Vec<String> = uplinks
        .iter()
        .map(|(_, p)| format!("{p}.interface"))
        .collect();
    validate::report_duplicates(
        uplinks
            .iter()
            .zip(&paths)
            .map(|((u, _), p)| (u.interface.as_str(), u.loc, p.as_str())),
        "uplink interface",
        sink,
    );
}

fn flood(node: &Node, path: &str, sink: &mut Sink) -> Option<Flood> {
    let mut f = Fields::new(node, path, sink)?;
    let rate = |n: &Node, p: &str, s: &mut Sink| u32_in(n, p, s, 1..=FLOOD_MAX);
    let syn = opt(&mut f, "syn_per_second", sink, rate);
    let udp = opt(&mut f, "udp_per_second", sink, rate);
    let burst = opt(&mut f, "burst", sink, rate);
    let loc = f.loc();
    let written = f.has("syn_per_second") || f.has("udp_per_second");
    f.finish(sink);
    if !written {
        sink.error(
            loc,
            path,
            "set syn_per_second and/or udp_per_second (or remove `flood`)",
        );
        return None;
    }
    Some(Flood {
        // After a reported mistake the value no longer matters.
        syn_per_second: syn,
        udp_per_second: udp,
        // One second's worth of the highest rate absorbs normal bursts.
        burst: burst.unwrap_or_else(|| syn.max(udp).unwrap_or(1)),
    })
}

/// A list of names resolved against groups/networks; duplicates reported.
/// `None` when any entry is wrong.
fn references(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    names: &Names,
    allowed: Allowed,
) -> Option<Vec<Peer>> {
    let nodes = list(node, path, sink)?;
    let mut out = Vec::new();
    let mut all_ok = true;
    let mut written: Vec<(&str, Loc, String)> = Vec::new();
    for (i, item) in nodes.iter().enumerate() {
        let ip = index_path(path, i);
        let Some(name) = string(item, &ip, sink) else {
            all_ok = false;
            continue;
        };
        written.push((name, item.loc, ip.clone()));
        match names.resolve(name, item.loc, &ip, allowed, sink) {
            Some(peer) => out.push(peer),
            None => all_ok = false,
        }
    }
    validate::report_duplicates(
        written.iter().map(|(n, l, p)| (*n, *l, p.as_str())),
        "entry",
        sink,
    );
    all_ok.then_some(out)
}

fn policy(node: &Node, path: &str, sink: &mut Sink, names: &Names) -> Option<Policy> {
    let mut f = Fields::new(node, path, sink)?;
    let name = item_name(&mut f, sink, None, &mut Vec::new());
    let mut side = |field: &'static str, sink: &mut Sink| {
        let (n, p) = f.required(field, sink)?;
        non_empty_list(
            n,
            &p,
            sink,
            "name at least one group, network, `world` or `host`",
        )?;
        references(n, &p, sink, names, Allowed::Peers)
    };
    let from = side("from", sink);
    let to = side("to", sink);
    let protocol = opt(&mut f, "protocol", sink, |n, p, s| {
        choice(n, p, s, PROTOCOLS)
    })
    .unwrap_or(Protocol::Tcp);

    let ports_node = f.optional("ports");
    let ports = match &ports_node {
        Some((n, p)) => ports(n, p, sink, protocol).unwrap_or_default(),
        None => Vec::new(),
    };
    let http = match f.optional("http") {
        Some((n, p)) => {
            if protocol != Protocol::Tcp {
                sink.error(n.loc, &p, "HTTP rules need `protocol: tcp`");
            } else if ports_node.is_none() {
                sink.error(
                    n.loc,
                    &p,
                    "HTTP rules need explicit `ports` (the ports the HTTP server listens on)",
                );
            }
            http_rules(n, &p, sink)
        }
        None => Vec::new(),
    };
    let mqtt = f.optional("mqtt").and_then(|(n, p)| {
        if protocol != Protocol::Tcp {
            sink.error(n.loc, &p, "MQTT rules need `protocol: tcp`");
        } else if ports_node.is_none() {
            sink.error(
                n.loc,
                &p,
                "MQTT rules need explicit `ports` (the ports the broker listens on, e.g. [1883])",
            );
        } else if !http.is_empty() {
            sink.error(
                n.loc,
                &p,
                "a policy has `http` or `mqtt` rules, not both (a port speaks one protocol)",
            );
        }
        mqtt_rule(n, &p, sink)
    });
    f.finish(sink);

    // Checked only when both sides resolved: an unresolved name may well
    // have been the group, and it is already reported.
    let (from, to) = (from?, to?);
    validate::check_policy_subject(&from, &to, node.loc, path, sink);
    Some(Policy {
        name: name?.0,
        from,
        to,
        protocol,
        ports,
        http,
        mqtt,
        loc: node.loc,
    })
}

fn mqtt_rule(node: &Node, path: &str, sink: &mut Sink) -> Option<MqttRule> {
    let mut f = Fields::new(node, path, sink)?;
    let client_ids = opt(&mut f, "client_id", sink, |n, p, s| {
        one_or_list(n, p, s, ClientId::parse)
    })
    .unwrap_or_default();
    let topics = |field: &'static str, f: &mut Fields, sink: &mut Sink| {
        let list = opt(f, field, sink, |n, p, s| {
            let v = one_or_list(n, p, s, TopicPattern::parse)?;
            if v.len() > mqtt::MAX_TOPICS {
                s.error(
                    n.loc,
                    p,
                    format!("at most {} patterns, found {}", mqtt::MAX_TOPICS, v.len()),
                );
                return None;
            }
            Some(v)
        });
        list.unwrap_or_default()
    };
    let publish = topics("publish", &mut f, sink);
    let subscribe = topics("subscribe", &mut f, sink);
    let max_qos = opt(&mut f, "max_qos", sink, |n, p, s| u32_in(n, p, s, 0..=2)).unwrap_or(2);
    let retain = opt(&mut f, "retain", sink, |n, p, s| match &n.value {
        Value::Bool(b) => Some(*b),
        other => {
            s.error(
                n.loc,
                p,
                format!("expected true or false, found {}", other.kind()),
            );
            None
        }
    })
    .unwrap_or(true);
    let max_message_size = opt(&mut f, "max_message_size", sink, |n, p, s| {
        let v = match &n.value {
            Value::Int(_) => u32_in(n, p, s, 1..=MQTT_MAX_REMAINING).map(u64::from),
            _ => parsed(n, p, s, units::parse_size),
        }?;
        if !(1..=u64::from(MQTT_MAX_REMAINING)).contains(&v) {
            s.error(
                n.loc,
                p,
                format!("size {v} is out of range 1-{MQTT_MAX_REMAINING} (MQTT's largest packet)"),
            );
            return None;
        }
        Some(v as u32)
    });
    f.finish(sink);
    Some(MqttRule {
        client_ids,
        publish,
        subscribe,
        max_qos: max_qos as u8,
        retain,
        max_message_size,
        loc: node.loc,
    })
}

/// MQTT's largest remaining length (a 4-byte varint).
const MQTT_MAX_REMAINING: u32 = 268_435_455;

/// A string or a list of strings, each through `parse`; duplicates are
/// errors.
fn one_or_list<T: PartialEq>(
    node: &Node,
    path: &str,
    sink: &mut Sink,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<Vec<T>> {
    if let Value::Str(_) = &node.value {
        return parsed(node, path, sink, parse).map(|v| vec![v]);
    }
    let nodes = non_empty_list(node, path, sink, "leave the field out instead")?;
    let mut out: Vec<(T, &str, Loc, String)> = Vec::new();
    let mut ok = true;
    for (i, item) in nodes.iter().enumerate() {
        let ip = index_path(path, i);
        match parsed(item, &ip, sink, &parse) {
            Some(v) => out.push((v, string(item, &ip, sink).unwrap_or(""), item.loc, ip)),
            None => ok = false,
        }
    }
    validate::report_duplicates(
        out.iter().map(|(_, t, l, p)| (*t, *l, p.as_str())),
        "pattern",
        sink,
    );
    ok.then(|| out.into_iter().map(|(v, ..)| v).collect())
}

fn ports(node: &Node, path: &str, sink: &mut Sink, protocol: Protocol) -> Option<Vec<PortRange>> {
    if matches!(protocol, Protocol::Icmp | Protocol::Any) {
        let name = if protocol == Protocol::Icmp {
            "icmp"
        } else {
            "any"
        };
        sink.error(
            node.loc,
            path,
            format!("ports are not allowed with protocol {name} (only tcp and udp have ports)"),
        );
        return None;
    }
    let nodes = non_empty_list(node, path, sink, "leave `ports` out to allow every port")?;
    let mut out: Vec<(PortRange, String)> = Vec::new();
    for (i, item) in nodes.iter().enumerate() {
        let ip = index_path(path, i);
        let range = match &item.value {
            Value::Int(n) => units::check_port(*n).map(|p| PortRange { first: p, last: p }),
            Value::Str(s) => units::parse_port_range(s),
            other => Err(format!(
                "expected a port or a \"LOW-HIGH\" range, found {}",
                other.kind()
            )),
        };
        match range {
            Ok(r) => {
                if let Some((prev, prev_path)) = out.iter().find(|(o, _)| o.overlaps(&r)) {
                    let what = if *prev == r { "repeats" } else { "overlaps" };
                    sink.error(item.loc, &ip, format!("{r} {what} {prev} ({prev_path})"));
                } else {
                    out.push((r, ip));
                }
            }
            Err(message) => sink.error(item.loc, &ip, message),
        }
    }
    Some(out.into_iter().map(|(r, _)| r).collect())
}

fn http_rules(node: &Node, path: &str, sink: &mut Sink) -> Vec<HttpRule> {
    let Some(nodes) = non_empty_list(node, path, sink, "leave `http` out to allow any request")
    else {
        return Vec::new();
    };
    nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| http_rule(n, &index_path(path, i), sink))
        .collect()
}

fn http_rule(node: &Node, path: &str, sink: &mut Sink) -> Option<HttpRule> {
    let mut f = Fields::new(node, path, sink)?;
    let method = f
        .required("method", sink)
        .and_then(|(n, p)| parsed(n, &p, sink, Method::parse));
    let http_path = f
        .required("path", sink)
        .and_then(|(n, p)| parsed(n, &p, sink, HttpPath::parse));
    let host = opt(&mut f, "host", sink, |n, p, s| {
        parsed(n, p, s, http::parse_host)
    });
    let headers = opt(&mut f, "headers", sink, headers).unwrap_or_default();
    f.finish(sink);
    Some(HttpRule {
        method: method?,
        path: http_path?,
        host,
        headers,
        loc: node.loc,
    })
}

fn headers(node: &Node, path: &str, sink: &mut Sink) -> Option<Vec<HeaderMatch>> {
    let nodes = non_empty_list(node, path, sink, "leave `headers` out instead")?;
    if nodes.len() > MAX_HEADERS {
        sink.error(
            nodes[MAX_HEADERS].loc,
            path,
            format!(
                "at most {MAX_HEADERS} headers per HTTP rule, found {}",
                nodes.len()
            ),
        );
    }
    let mut out: Vec<(HeaderMatch, Loc, String)> = Vec::new();
    for (i, item) in nodes.iter().enumerate() {
        let ip = index_path(path, i);
        let Some(mut f) = Fields::new(item, &ip, sink) else {
            continue;
        };
        let name = f
            .required("name", sink)
            .and_then(|(n, p)| parsed(n, &p, sink, http::parse_header_name).map(|v| (v, n.loc, p)));
        let value = opt(&mut f, "value", sink, |n, p, s| {
            parsed(n, p, s, http::parse_header_value)
        });
        f.finish(sink);
        if let Some((name, loc, p)) = name {
            out.push((HeaderMatch { name, value }, loc, p));
        }
    }
    validate::report_duplicates(
        out.iter()
            .map(|(h, loc, p)| (h.name.as_str(), *loc, p.as_str())),
        "header",
        sink,
    );
    Some(out.into_iter().map(|(h, _, _)| h).collect())
}

fn default_flows() -> Flows {
    Flows {
        history: 4096,
        rate_limit: 10_000,
        events_transport: None,
        log: None,
    }
}

/// `flows.events_transport`; `auto` is None.
const EVENTS_TRANSPORTS: &[(&str, Option<EventsTransport>)] = &[
    ("auto", None),
    ("ringbuf", Some(EventsTransport::RingBuf)),
    ("perf", Some(EventsTransport::Perf)),
];

fn flows(node: &Node, path: &str, sink: &mut Sink) -> Option<Flows> {
    let mut f = Fields::new(node, path, sink)?;
    let d = default_flows();
    let history = opt(&mut f, "history", sink, |n, p, s| {
        u32_in(n, p, s, 16..=1_000_000)
    })
    .unwrap_or(d.history);
    let rate_limit = opt(&mut f, "rate_limit", sink, |n, p, s| {
        u32_in(n, p, s, 1..=u32::MAX)
    })
    .unwrap_or(d.rate_limit);
    let events_transport = opt(&mut f, "events_transport", sink, |n, p, s| {
        choice(n, p, s, EVENTS_TRANSPORTS)
    })
    .unwrap_or(d.events_transport);
    let log = opt(&mut f, "log", sink, flow_log);
    f.finish(sink);
    Some(Flows {
        history,
        rate_limit,
        events_transport,
        log,
    })
}

fn flow_log(node: &Node, path: &str, sink: &mut Sink) -> Option<FlowLog> {
    let mut f = Fields::new(node, path, sink)?;
    let file = f
        .required("path", sink)
        .and_then(|(n, p)| absolute_path(n, &p, sink));
    let max_size = opt(&mut f, "max_size", sink, |n, p, s| {
        let v = parsed(n, p, s, units::parse_size)?;
        if !(FLOW_LOG_MIN..=FLOW_LOG_MAX).contains(&v) {
            s.error(
                n.loc,
                p,
                format!(
                    "size {} is out of range {}-{}",
                    units::format_size(v),
                    units::format_size(FLOW_LOG_MIN),
                    units::format_size(FLOW_LOG_MAX)
                ),
            );
            return None;
        }
        Some(v)
    })
    .unwrap_or(16 * 1024 * 1024);
    let keep = opt(&mut f, "keep", sink, |n, p, s| u32_in(n, p, s, 1..=100)).unwrap_or(3);
    f.finish(sink);
    Some(FlowLog {
        path: file?,
        max_size,
        keep,
    })
}

fn metrics(node: &Node, path: &str, sink: &mut Sink) -> Option<Metrics> {
    let mut f = Fields::new(node, path, sink)?;
    let listen = f.required("listen", sink).and_then(|(n, p)| {
        parsed(n, &p, sink, |t| {
            let addr: SocketAddr = t.parse().map_err(|_| {
                format!("`{t}` is not a socket address (e.g. 127.0.0.1:9962 or [::1]:9962)")
            })?;
            if addr.port() == 0 {
                return Err(format!("`{t}` needs a port other than 0"));
            }
            Ok(addr)
        })
    });
    f.finish(sink);
    Some(Metrics { listen: listen? })
}

fn default_control() -> Control {
    Control {
        socket: "/run/porin/porin.sock".into(),
        mode: 0o600,
    }
}

fn control(node: &Node, path: &str, sink: &mut Sink) -> Option<Control> {
    let mut f = Fields::new(node, path, sink)?;
    let d = default_control();
    let socket = opt(&mut f, "socket", sink, absolute_path).unwrap_or(d.socket);
    let mode = opt(&mut f, "mode", sink, |n, p, s| {
        parsed(n, p, s, units::parse_file_mode)
    })
    .unwrap_or(d.mode);
    f.finish(sink);
    Some(Control { socket, mode })
}
